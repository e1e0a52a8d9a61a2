//! Where the cache keeps things under its root: the content store, staging and views.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::ObjectKey;

/// The content store's directory under the root.
pub(crate) const OBJECTS: &str = "objects";
/// Downloads in progress.
pub(crate) const STAGING: &str = "staging";
/// Reservation views.
pub(crate) const VIEWS: &str = "views";

/// Paths under the cache root.
#[derive(Debug)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub objects: PathBuf,
    pub staging: PathBuf,
    pub views: PathBuf,
    /// Makes staging and temporary names unique within this process; a new process starts
    /// with an empty staging directory (reconciliation clears it).
    counter: AtomicU64,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            objects: root.join(OBJECTS),
            staging: root.join(STAGING),
            views: root.join(VIEWS),
            counter: AtomicU64::new(0),
        }
    }

    /// The content file of `object`, relative to the root:
    /// `objects/<xx>/<sha256(bucket NUL key NUL etag)>`, `xx` the hash's first two hex digits.
    pub fn content_relative(object: &ObjectKey) -> String {
        let id = content_id(object);
        format!("{OBJECTS}/{}/{id}", &id[..2])
    }

    /// Every fan-out directory of the content store (`objects/00` to `objects/ff`), made at
    /// start-up so that installing an object is one rename rather than a `mkdir` as well.
    pub fn fan_out_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (0..=u8::MAX).map(|b| self.objects.join(format!("{b:02x}")))
    }

    /// The content file of `object`.
    pub fn content_path(&self, object: &ObjectKey) -> PathBuf {
        self.root.join(Self::content_relative(object))
    }

    /// A new, unique staging file name for a download of `object`.
    pub fn staging_path(&self, object: &ObjectKey) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.staging.join(format!(
            "{}.{}.{n}.part",
            content_id(object),
            std::process::id()
        ))
    }

    /// A new, unique temporary directory name for building the view `name`; names starting
    /// with a dot are refused as view names, so it never collides with a view.
    pub fn view_temp_path(&self, name: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.views
            .join(format!(".tmp-{name}.{}.{n}", std::process::id()))
    }
}

/// The content store's name for `object`: SHA-256 of `bucket NUL key NUL etag`, in hex.
pub(crate) fn content_id(object: &ObjectKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(object.bucket.as_bytes());
    hasher.update([0]);
    hasher.update(object.key.as_bytes());
    hasher.update([0]);
    hasher.update(object.etag.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_names_separate_bucket_key_and_etag() {
        let a = ObjectKey::new("ab", "c", "e", 1);
        let b = ObjectKey::new("a", "bc", "e", 1);
        assert_ne!(content_id(&a), content_id(&b));
        let rel = Layout::content_relative(&a);
        let id = content_id(&a);
        assert_eq!(rel, format!("objects/{}/{id}", &id[..2]));
        assert_eq!(id.len(), 64);
        // The size is not part of the name: one version of one key, one file.
        assert_eq!(
            content_id(&a),
            content_id(&ObjectKey::new("ab", "c", "e", 2))
        );
    }
}
