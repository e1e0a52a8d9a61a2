//! Views: directory trees of hard links to content files, named like the S3 keys
//! (`views/<name>/<bucket>/<key>`), so a reservation's files open with ordinary tools.
//! A view is built in a temporary directory and renamed into place, so it appears complete.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::flight::blocking;
use super::{CacheError, Inner, ObjectKey};

/// Builds the view `name` of `objects`; see [`OfficeCache::create_view`](super::OfficeCache::create_view).
pub(super) async fn create(
    inner: &Arc<Inner>,
    name: &str,
    objects: &[ObjectKey],
) -> Result<PathBuf, CacheError> {
    check_view_name(name)?;
    let mut by_path: HashMap<PathBuf, &ObjectKey> = HashMap::new();
    for object in objects {
        let relative = view_relative_path(object)?;
        if let Some(other) = by_path.insert(relative, object) {
            if other != object {
                return Err(CacheError::invalid(
                    format!("objects for view `{name}`"),
                    format!(
                        "{object} is listed twice, with etags {} and {}",
                        other.etag, object.etag
                    ),
                ));
            }
        }
    }
    let links: Vec<(PathBuf, PathBuf, String)> = {
        let state = inner.lock();
        let missing: Vec<_> = by_path
            .values()
            .filter(|o| !state.book.is_ready(o))
            .collect();
        if let Some(first) = missing.first() {
            let more = match missing.len() {
                1 => String::new(),
                n => format!(" (and {} more objects of view `{name}`)", n - 1),
            };
            return Err(CacheError::NotCached {
                object: format!("{first}{more}"),
            });
        }
        let mut links = Vec::with_capacity(by_path.len());
        for (relative, object) in &by_path {
            let Some(content) = inner.content.local_path(object) else {
                return Err(CacheError::invalid(
                    format!("view `{name}`"),
                    format!(
                        "the content store ({}) keeps no local files to link",
                        inner.content.describe()
                    ),
                ));
            };
            links.push((content, relative.clone(), object.to_string()));
        }
        links
    };
    let temp = inner.layout.view_temp_path(name);
    let target = inner.layout.views.join(name);
    let context = format!("building view `{name}`");
    let built = {
        let (temp, target, name) = (temp.clone(), target.clone(), name.to_owned());
        blocking(context.clone(), move || {
            build(&temp, &target, &links, &name)
        })
        .await
    };
    match built {
        Ok(Ok(())) => Ok(target),
        Ok(Err(not_cached)) => {
            let _ = blocking(context, move || std::fs::remove_dir_all(temp)).await;
            Err(CacheError::NotCached { object: not_cached })
        }
        Err(err) => {
            let _ = blocking(context, move || std::fs::remove_dir_all(temp)).await;
            Err(err)
        }
    }
}

/// Links every content file into `temp`, then swaps `temp` in as `target`. The inner error
/// names an object whose content file vanished (evicted meanwhile).
fn build(
    temp: &Path,
    target: &Path,
    links: &[(PathBuf, PathBuf, String)],
    name: &str,
) -> io::Result<Result<(), String>> {
    std::fs::create_dir_all(temp)?;
    for (content, relative, object) in links {
        let link = temp.join(relative);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("making the directory of {object}: {err}"),
                )
            })?;
        }
        match std::fs::hard_link(content, &link) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound && !content.exists() => {
                return Ok(Err(object.clone()));
            }
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("linking {object}: {err}"),
                ));
            }
        }
    }
    // Replace an older view of the same name: move it aside, move the new one in.
    let old = temp.with_extension("old");
    let replaced = match std::fs::rename(target, &old) {
        Ok(()) => true,
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(err),
    };
    std::fs::rename(temp, target)?;
    if replaced {
        std::fs::remove_dir_all(&old)?;
    }
    tracing::debug!(view = name, objects = links.len(), "view created");
    Ok(Ok(()))
}

/// Removes the view `name`; see [`OfficeCache::remove_view`](super::OfficeCache::remove_view).
pub(super) async fn remove(inner: &Arc<Inner>, name: &str) -> Result<(), CacheError> {
    check_view_name(name)?;
    let target = inner.layout.views.join(name);
    blocking(
        format!("removing view `{name}`"),
        move || match std::fs::remove_dir_all(target) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    )
    .await
}

/// A view name is one visible path segment: not empty, no `/`, `\` or NUL, not starting
/// with a dot (which also rules out `.` and `..`, and leaves dot names to temporaries).
fn check_view_name(name: &str) -> Result<(), CacheError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if name.contains(['/', '\\', '\0']) {
        "it contains a slash, a backslash or a nul byte"
    } else {
        return Ok(());
    };
    Err(CacheError::invalid(
        format!("view name `{}`", name.escape_debug()),
        reason,
    ))
}

/// The path of `object` inside a view, `<bucket>/<key>`, refusing anything that could
/// escape the view or that a file system cannot represent as the key's own path.
pub(crate) fn view_relative_path(object: &ObjectKey) -> Result<PathBuf, CacheError> {
    let bad = |reason: &str| {
        Err(CacheError::invalid(
            format!(
                "key `{}` of bucket `{}` for a view",
                object.key.escape_debug(),
                object.bucket.escape_debug()
            ),
            reason,
        ))
    };
    if object.bucket.is_empty()
        || matches!(object.bucket.as_str(), "." | "..")
        || object.bucket.contains(['/', '\\', '\0'])
    {
        return bad("the bucket name is not a single path segment");
    }
    if let Err(problem) = crate::objects::check_key(&object.key) {
        return bad(&problem.to_string());
    }
    let mut path = PathBuf::from(&object.bucket);
    path.extend(object.key.split('/'));
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheErrorKind;

    fn key(key: &str) -> ObjectKey {
        ObjectKey::new("fleet", key, "e", 1)
    }

    #[test]
    fn keys_map_to_paths_inside_the_view() {
        assert_eq!(
            view_relative_path(&key("drives/a/b.mcap")).expect("valid"),
            PathBuf::from("fleet/drives/a/b.mcap")
        );
        assert_eq!(
            view_relative_path(&key("..foo/x..y")).expect("dots inside a name are fine"),
            PathBuf::from("fleet/..foo/x..y")
        );
    }

    #[test]
    fn keys_that_could_escape_are_refused_naming_the_key() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "a/./b",
            "a//b",
            "a/",
            "",
            "a\\..\\b",
            "a\0b",
            "..",
        ] {
            let err = view_relative_path(&key(bad)).expect_err(bad);
            assert_eq!(err.kind(), CacheErrorKind::Invalid, "{bad}");
            assert!(
                err.to_string().contains(&bad.escape_debug().to_string()),
                "{err} names {bad}"
            );
        }
        let err = view_relative_path(&ObjectKey::new("..", "k", "e", 1)).expect_err("bucket");
        assert_eq!(err.kind(), CacheErrorKind::Invalid);
    }

    #[test]
    fn view_names_are_single_visible_segments() {
        assert!(check_view_name("r-42").is_ok());
        for bad in ["", ".", "..", ".tmp-x", "a/b", "a\\b", "a\0b"] {
            assert!(check_view_name(bad).is_err(), "{bad}");
        }
    }
}
