//! Start-up reconciliation: the disk and the `cache_entries` table are made to agree, and
//! the bookkeeping is rebuilt from what survives. The disk wins for bytes (a row whose file
//! is missing or has the wrong size is dropped), the table wins for existence (a content file
//! without a row is removed: nothing proves it was verified).

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use milepost_schema::entity::cache_entry;
use milepost_schema::enums::CacheEntryState;
use sea_orm::DatabaseConnection;

use super::content::TierContent;
use super::durability::{self, Recovery};
use super::flight::blocking;
use super::layout::{Layout, OBJECTS};
use super::{entries, CacheBook, CacheError, ObjectKey, WRITE_BACK_HOLDER};

/// What reconciliation fixed, for the log.
#[derive(Debug, Default)]
struct Fixed {
    staging_removed: usize,
    view_temps_removed: usize,
    rows_staging: usize,
    rows_missing_file: usize,
    rows_wrong_size: usize,
    orphans_removed: usize,
    /// Dropped: installed without an fsync before an unclean reboot.
    rows_unsynced: usize,
    /// Views removed because they linked a dropped unsynced entry.
    views_unsynced: usize,
}

/// A row checked against the disk.
enum Verdict {
    Keep,
    MissingFile,
    WrongSize(u64),
}

/// Creates the cache's directories, reconciles them with the table and returns `book` filled
/// with the entries that survive. `boot_id` is this boot's, `None` where unknown.
pub(super) async fn reconcile(
    layout: &Layout,
    db: &DatabaseConnection,
    mut book: CacheBook,
    boot_id: Option<String>,
) -> Result<CacheBook, CacheError> {
    let mut fixed = Fixed::default();
    let (objects, staging, views) = (
        layout.objects.clone(),
        layout.staging.clone(),
        layout.views.clone(),
    );
    let fan_out: Vec<_> = layout.fan_out_dirs().collect();
    let root = layout.root.display().to_string();
    (fixed.staging_removed, fixed.view_temps_removed) =
        blocking(format!("preparing the cache directory {root}"), move || {
            for dir in [&objects, &staging, &views] {
                std::fs::create_dir_all(dir)?;
            }
            for dir in &fan_out {
                match std::fs::create_dir(dir) {
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                    other => other?,
                }
            }
            let staging_removed = clear_dir(&staging)?;
            let view_temps_removed = remove_view_temps(&views)?;
            Ok((staging_removed, view_temps_removed))
        })
        .await?;
    let marker_root = layout.root.clone();
    let recovery = blocking(
        format!("reading the unsynced marker in {root}"),
        move || durability::read_marker(&marker_root, boot_id.as_deref()),
    )
    .await?;
    let covered_from = recovery.covers_from();

    let rows = entries::load_all(db).await?;
    let (rows_staging, rows): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|row| row.state == CacheEntryState::Staging);
    fixed.rows_staging = rows_staging.len();
    for row in &rows_staging {
        tracing::info!(bucket = %row.bucket, key = %row.key, etag = %row.etag, "dropping a cache entry left in state staging");
    }

    // Check each row's file; the expected path is derived from the key, whatever the row says.
    let checks: Vec<_> = rows
        .iter()
        .map(|row| {
            let object = object_of(row);
            let relative = Layout::content_relative(&object);
            (layout.root.join(&relative), row.size)
        })
        .collect();
    let verdicts = blocking(
        format!("checking the cache files under {root}"),
        move || {
            checks
                .into_iter()
                .map(|(path, size)| check_file(&path, size))
                .collect::<io::Result<Vec<_>>>()
        },
    )
    .await?;

    let mut drop_ids: Vec<i64> = rows_staging.iter().map(|row| row.id).collect();
    let mut kept = Vec::new();
    // Entries the marker covers: installed without an fsync while it stood.
    let mut unsynced = Vec::new();
    for (row, verdict) in rows.into_iter().zip(verdicts) {
        let object = object_of(&row);
        match verdict {
            Verdict::Keep
                if row.state == CacheEntryState::Ready
                    && covered_from.is_some_and(|from| row.created_at >= from) =>
            {
                let path = layout.content_path(&object);
                if matches!(recovery, Recovery::Unclean { .. }) {
                    fixed.rows_unsynced += 1;
                    drop_ids.push(row.id);
                } else {
                    kept.push((object, row.state));
                }
                unsynced.push(path);
            }
            Verdict::Keep => kept.push((object, row.state)),
            Verdict::MissingFile => {
                tracing::warn!(object = %object, etag = %object.etag, "dropping a cache entry whose file is missing");
                fixed.rows_missing_file += 1;
                drop_ids.push(row.id);
            }
            Verdict::WrongSize(actual) => {
                tracing::warn!(object = %object, etag = %object.etag, expected = row.size, actual, "dropping a cache entry whose file has the wrong size");
                fixed.rows_wrong_size += 1;
                drop_ids.push(row.id);
            }
        }
    }
    let known: HashSet<String> = kept
        .iter()
        .map(|(object, _)| Layout::content_relative(object))
        .collect();
    match &recovery {
        Recovery::Clean => {}
        Recovery::SameBoot { .. } => {
            // The kernel still has every byte written before the process stopped.
            let count = unsynced.len();
            blocking(
                format!("syncing the {count} cache files installed before the last stop"),
                move || {
                    for path in &unsynced {
                        std::fs::File::open(path)?.sync_data()?;
                    }
                    Ok(())
                },
            )
            .await?;
            if count > 0 {
                tracing::info!(
                    count,
                    "synced the cache entries installed before the process stopped"
                );
            }
        }
        Recovery::Unclean { why, .. } => {
            tracing::warn!(
                root,
                entries = unsynced.len(),
                "{why}: dropping the cache entries that may not have reached the disk"
            );
            // The views first: once the rows are gone nothing says which views link the
            // dropped files, and a crash here only repeats this at the next start-up. Files
            // whose row was never written may be unsynced too, and go the same way.
            let (views, objects, known) =
                (layout.views.clone(), layout.objects.clone(), known.clone());
            fixed.views_unsynced = blocking(
                format!("removing the views of unsynced cache entries under {root}"),
                move || remove_views_linking(&views, &unknown_content_files(&objects, &known)?),
            )
            .await?;
        }
    }
    entries::delete_ids(db, &drop_ids).await?;

    // Remove content files no kept row accounts for (their rows were dropped above, or never
    // written: a crash between the rename and the insert).
    let objects = layout.objects.clone();
    fixed.orphans_removed = blocking(
        format!("removing orphan cache files under {root}"),
        move || remove_orphans(&objects, &known),
    )
    .await?;
    if recovery != Recovery::Clean {
        let marker_root = layout.root.clone();
        blocking(
            format!("removing the unsynced marker in {root}"),
            move || durability::remove_marker(&marker_root),
        )
        .await?;
    }

    let mut write_back = Vec::new();
    for (object, state) in kept {
        let size = object.size;
        if state == CacheEntryState::Dirty {
            write_back.push(object.clone());
        }
        book.insert(object, size);
    }
    book.pin(WRITE_BACK_HOLDER, &write_back);

    let Fixed {
        staging_removed,
        view_temps_removed,
        rows_staging,
        rows_missing_file,
        rows_wrong_size,
        orphans_removed,
        rows_unsynced,
        views_unsynced,
    } = fixed;
    let repaired = staging_removed
        + view_temps_removed
        + rows_staging
        + rows_missing_file
        + rows_wrong_size
        + orphans_removed
        + rows_unsynced
        + views_unsynced;
    let entries = book.ready_count();
    let used = book.used();
    if repaired > 0 {
        tracing::info!(
            root,
            entries,
            used,
            staging_removed,
            view_temps_removed,
            rows_staging,
            rows_missing_file,
            rows_wrong_size,
            orphans_removed,
            rows_unsynced,
            views_unsynced,
            "office cache reconciled, repairs made"
        );
    } else {
        tracing::info!(
            root,
            entries,
            used,
            "office cache opened, disk and table agree"
        );
    }
    Ok(book)
}

/// [`reconcile`] with the content store in the office tier: the local staging and view
/// temporaries are cleared as on disk; the tier's listing wins for bytes (a row whose tier
/// object is missing or has the wrong size is dropped) and the table for existence (a tier
/// object without a row is deleted). There is no unsynced marker: the tier acknowledges an
/// install only once it holds the bytes.
pub(super) async fn reconcile_tier(
    layout: &Layout,
    db: &DatabaseConnection,
    mut book: CacheBook,
    tier: &TierContent,
    cluster: bool,
) -> Result<CacheBook, CacheError> {
    let mut fixed = Fixed::default();
    let (staging, views) = (layout.staging.clone(), layout.views.clone());
    let root = layout.root.display().to_string();
    (fixed.staging_removed, fixed.view_temps_removed) =
        blocking(format!("preparing the cache directory {root}"), move || {
            for dir in [&staging, &views] {
                std::fs::create_dir_all(dir)?;
            }
            Ok((clear_dir(&staging)?, remove_view_temps(&views)?))
        })
        .await?;
    // Rows first: a row is written only once its object is in the tier, so an object listed
    // after its row was read is surely there (in a cluster, other nodes keep installing).
    let rows = entries::load_all(db).await?;
    let listed = tier.list().await?;
    let mut drop_ids = Vec::new();
    let mut known = HashSet::new();
    let mut write_back = Vec::new();
    for row in rows {
        let object = object_of(&row);
        let relative = Layout::content_relative(&object);
        if row.state == CacheEntryState::Staging {
            fixed.rows_staging += 1;
            drop_ids.push(row.id);
            continue;
        }
        match listed.get(&relative) {
            None => {
                tracing::warn!(object = %object, etag = %object.etag, "dropping a cache entry missing from the office tier");
                fixed.rows_missing_file += 1;
                drop_ids.push(row.id);
            }
            Some(&size) if size != object.size => {
                tracing::warn!(object = %object, etag = %object.etag, expected = object.size, actual = size, "dropping a cache entry whose tier object has the wrong size");
                fixed.rows_wrong_size += 1;
                drop_ids.push(row.id);
            }
            Some(_) => {
                known.insert(relative);
                if row.state == CacheEntryState::Dirty {
                    write_back.push(object.clone());
                }
                let size = object.size;
                book.insert(object, size);
            }
        }
    }
    entries::delete_ids(db, &drop_ids).await?;
    // In a cluster an object without a row may be another node's install in progress: only
    // a lone node removes orphans.
    for relative in listed
        .keys()
        .filter(|relative| !cluster && !known.contains(*relative))
    {
        tracing::debug!(object = %relative, "removing an orphan from the office tier");
        tier.remove_relative(relative).await?;
        fixed.orphans_removed += 1;
    }
    book.pin(WRITE_BACK_HOLDER, &write_back);
    tracing::info!(
        root,
        entries = book.ready_count(),
        used = book.used(),
        staging_removed = fixed.staging_removed,
        view_temps_removed = fixed.view_temps_removed,
        rows_staging = fixed.rows_staging,
        rows_missing = fixed.rows_missing_file,
        rows_wrong_size = fixed.rows_wrong_size,
        orphans_removed = fixed.orphans_removed,
        "office cache opened on the office tier"
    );
    Ok(book)
}

fn object_of(row: &cache_entry::Model) -> ObjectKey {
    ObjectKey {
        bucket: row.bucket.clone(),
        key: row.key.clone(),
        etag: row.etag.clone(),
        size: u64::try_from(row.size).unwrap_or(u64::MAX),
    }
}

fn check_file(path: &Path, expected: i64) -> io::Result<Verdict> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Ok(Verdict::MissingFile),
        Ok(meta) if i64::try_from(meta.len()).ok() == Some(expected) => Ok(Verdict::Keep),
        Ok(meta) => Ok(Verdict::WrongSize(meta.len())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Verdict::MissingFile),
        Err(err) => Err(err),
    }
}

/// Removes everything in `dir`; returns how many entries it removed.
fn clear_dir(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        tracing::debug!(path = %path.display(), "removing a leftover staging file");
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// Removes the temporary directories of views that were being built.
fn remove_view_temps(views: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(views)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            tracing::debug!(path = %entry.path().display(), "removing a half-built view");
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes every view (a directory under `views`) holding a hard link to one of `files`;
/// returns how many it removed.
fn remove_views_linking(views: &Path, files: &[PathBuf]) -> io::Result<usize> {
    let mut inodes = HashSet::new();
    for path in files {
        match std::fs::metadata(path) {
            Ok(meta) => {
                inodes.insert((meta.dev(), meta.ino()));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    if inodes.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    for view in std::fs::read_dir(views)? {
        let view = view?;
        if !view.file_type()?.is_dir() || !links_any(&view.path(), &inodes)? {
            continue;
        }
        tracing::info!(view = %view.path().display(), "removing a view of unsynced cache entries; its reservation rebuilds it");
        std::fs::remove_dir_all(view.path())?;
        removed += 1;
    }
    Ok(removed)
}

/// Whether a file under `dir` is one of `inodes`.
fn links_any(dir: &Path, inodes: &HashSet<(u64, u64)>) -> io::Result<bool> {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let meta = entry.metadata()?;
                if inodes.contains(&(meta.dev(), meta.ino())) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The content files under `objects` (`<xx>/<name>`) whose path relative to the root is not
/// in `known`.
fn unknown_content_files(objects: &Path, known: &HashSet<String>) -> io::Result<Vec<PathBuf>> {
    let mut unknown = Vec::new();
    for shard in std::fs::read_dir(objects)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(shard.path())? {
            let file = file?;
            let name = file.file_name().to_string_lossy().into_owned();
            if file.file_type()?.is_file()
                && !known.contains(&format!("{OBJECTS}/{shard_name}/{name}"))
            {
                unknown.push(file.path());
            }
        }
    }
    Ok(unknown)
}

/// Removes the files under `objects` (`<xx>/<name>`) whose path relative to the root is not
/// in `known`; returns how many it removed.
fn remove_orphans(objects: &Path, known: &HashSet<String>) -> io::Result<usize> {
    let mut removed = 0;
    for shard in std::fs::read_dir(objects)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            tracing::debug!(path = %shard.path().display(), "removing a stray file in the content store");
            std::fs::remove_file(shard.path())?;
            removed += 1;
            continue;
        }
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(shard.path())? {
            let file = file?;
            let name = file.file_name().to_string_lossy().into_owned();
            let relative = format!("{OBJECTS}/{shard_name}/{name}");
            if known.contains(&relative) {
                continue;
            }
            tracing::info!(path = %file.path().display(), "removing a content file without a cache entry");
            if file.file_type()?.is_dir() {
                std::fs::remove_dir_all(file.path())?;
            } else {
                std::fs::remove_file(file.path())?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}
