//! The diff stage: listed pages against the catalog's rows, as the pages arrive.
//!
//! The rows of the scope are loaded once (a few columns each, while the first pages are
//! listed); each listed object either matches its row (and is forgotten), or is new or
//! changed. What is left of the rows when the listing ends is gone from the bucket.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use milepost_schema::entity::object;
use milepost_store::{ObjectMeta, ObjectStore};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use tokio::sync::mpsc;

use super::{in_scope, listing, read, sidecars, KeySet, SyncError, SyncOptions, SyncScope};

/// Pages buffered between the listing and the diff.
const PAGES_IN_FLIGHT: usize = 64;
/// HEADs in flight for listings without ETags.
const HEAD_CONCURRENCY: usize = 16;

/// What a listing found, compared with the catalog.
pub(super) struct Diff {
    /// New objects, and objects whose version changed (or that were marked deleted).
    pub changed: Vec<ObjectMeta>,
    /// Unchanged objects that want reading but were never read (an interrupted pass).
    pub unread: Vec<ObjectMeta>,
    /// Live rows whose object is no longer listed.
    pub gone: Vec<GoneRow>,
    /// The sidecar keys listed (`drive.json`, `run.json`).
    pub sidecar_keys: KeySet,
    /// Objects listed, unsafe keys included.
    pub seen: u64,
    /// Problems with single objects (unsafe keys, missing ETags).
    pub errors: Vec<String>,
}

/// A row whose object is gone, with the owner whose documents change.
pub(super) struct GoneRow {
    pub id: i64,
    pub drive_id: Option<String>,
    pub run_id: Option<String>,
}

/// The columns of a row the diff needs.
struct KnownRow {
    id: i64,
    size: i64,
    etag: String,
    last_modified: Option<DateTime<Utc>>,
    deleted: bool,
    unread: bool,
    drive_id: Option<String>,
    run_id: Option<String>,
}

/// Lists the scope's `prefixes` and diffs each page as it arrives.
pub(super) async fn list_and_diff(
    db: &DatabaseConnection,
    store: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
    prefixes: &[String],
) -> Result<Diff, SyncError> {
    let (sender, mut pages) = mpsc::channel(PAGES_IN_FLIGHT);
    let lister = tokio::spawn(listing::list(
        store.clone(),
        options.bucket.clone(),
        prefixes.to_vec(),
        options.scope == SyncScope::Whole,
        sender,
    ));
    // The rows load while the first pages are listed.
    let known = load_known(db, &options.bucket, prefixes).await;
    let mut known = match known {
        Ok(known) => known,
        Err(err) => {
            lister.abort();
            return Err(err);
        }
    };
    let progress = &options.progress;
    let mut diff = Diff {
        changed: Vec::new(),
        unread: Vec::new(),
        gone: Vec::new(),
        sidecar_keys: KeySet::new(),
        seen: 0,
        errors: Vec::new(),
    };
    while let Some(page) = pages.recv().await {
        let page_len = page.len() as u64;
        let changed_before = diff.changed.len();
        for meta in page {
            diff.seen += 1;
            // Keys that could escape a directory when materialized are never cataloged.
            if let Some(reason) = unsafe_key(&meta.key) {
                diff.errors.push(format!(
                    "{}: unsafe key ({reason}); not cataloged",
                    meta.key
                ));
                continue;
            }
            if sidecars::is_any_sidecar(&meta.key, options) {
                diff.sidecar_keys.insert(meta.key.clone());
            }
            match known.remove(&meta.key) {
                Some(row) if !row.deleted && same_version(&row, &meta) => {
                    if row.unread && read::wants_read(&meta.key) {
                        diff.unread.push(ObjectMeta {
                            size: row.size as u64,
                            etag: row.etag,
                            last_modified: row.last_modified,
                            ..meta
                        });
                    }
                }
                _ => diff.changed.push(meta),
            }
        }
        progress.add_listed(page_len, (diff.changed.len() - changed_before) as u64);
    }
    lister.await.map_err(|err| {
        SyncError::Catalog(crate::error::CatalogError::Background(err.to_string()))
    })??;
    diff.gone = known
        .into_values()
        .filter(|row| !row.deleted)
        .map(|row| GoneRow {
            id: row.id,
            drive_id: row.drive_id,
            run_id: row.run_id,
        })
        .collect();
    head_missing_etags(store, &options.bucket, &mut diff).await;
    Ok(diff)
}

/// The scope's rows by key. A whole pass loads the bucket's rows under the drives and runs
/// prefixes; a targeted one only those under its prefixes.
async fn load_known(
    db: &DatabaseConnection,
    bucket: &str,
    prefixes: &[String],
) -> Result<HashMap<String, KnownRow>, SyncError> {
    let mut under = Condition::any();
    for prefix in prefixes {
        // LIKE's wildcards in a key only widen the match; the scope is checked again below.
        under = under.add(object::Column::Key.starts_with(prefix));
    }
    type Row = (
        i64,
        String,
        i64,
        String,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        bool,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = object::Entity::find()
        .select_only()
        .columns([
            object::Column::Id,
            object::Column::Key,
            object::Column::Size,
            object::Column::Etag,
            object::Column::LastModified,
            object::Column::DeletedAt,
        ])
        .column_as(Expr::col(object::Column::Metadata).is_null(), "unread")
        .columns([object::Column::DriveId, object::Column::RunId])
        .filter(object::Column::Bucket.eq(bucket))
        .filter(under)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| in_scope(prefixes, &row.1))
        .map(
            |(id, key, size, etag, last_modified, deleted_at, unread, drive_id, run_id)| {
                (
                    key,
                    KnownRow {
                        id,
                        size,
                        etag,
                        last_modified,
                        deleted: deleted_at.is_some(),
                        unread,
                        drive_id,
                        run_id,
                    },
                )
            },
        )
        .collect())
}

/// Listings without ETags: asks for them, for the changed objects only. An object whose ETag
/// cannot be had is reported and left out of the pass.
async fn head_missing_etags(store: &Arc<dyn ObjectStore>, bucket: &str, diff: &mut Diff) {
    if diff.changed.iter().all(|meta| !meta.etag.is_empty()) {
        return;
    }
    let changed = std::mem::take(&mut diff.changed);
    let mut heads = futures::stream::iter(changed)
        .map(|mut meta| {
            let (store, bucket) = (store.clone(), bucket.to_owned());
            async move {
                if !meta.etag.is_empty() {
                    return Ok(meta);
                }
                match store.head(&bucket, &meta.key).await {
                    Ok(head) => {
                        meta.etag = head.etag;
                        meta.size = head.size;
                        meta.last_modified = head.last_modified.or(meta.last_modified);
                        Ok(meta)
                    }
                    Err(err) => Err(format!("{}: cannot read its etag: {err}", meta.key)),
                }
            }
        })
        .buffered(HEAD_CONCURRENCY);
    while let Some(result) = heads.next().await {
        match result {
            Ok(meta) if !meta.etag.is_empty() => diff.changed.push(meta),
            Ok(_) => {}
            Err(message) => diff.errors.push(message),
        }
    }
}

fn same_version(row: &KnownRow, meta: &ObjectMeta) -> bool {
    if !meta.etag.is_empty() {
        return row.etag == meta.etag && row.size == meta.size as i64;
    }
    row.size == meta.size as i64 && same_instant(row.last_modified, meta.last_modified)
}

fn same_instant(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.timestamp() == b.timestamp(),
        _ => false,
    }
}

/// Why a key must not be cataloged: it could name a path outside a view directory.
pub(super) fn unsafe_key(key: &str) -> Option<&'static str> {
    if key.starts_with('/') {
        Some("absolute path")
    } else if key.contains('\0') {
        Some("contains a NUL byte")
    } else if key.contains('\\') {
        Some("contains a backslash")
    } else if key.split('/').any(|step| step == "..") {
        Some("contains a `..` step")
    } else if key.split('/').any(|step| step == ".") {
        Some("contains a `.` step")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_are_unsafe() {
        assert_eq!(
            unsafe_key("drives/a/../../etc/passwd"),
            Some("contains a `..` step")
        );
        assert_eq!(unsafe_key("/etc/passwd"), Some("absolute path"));
        assert_eq!(unsafe_key("drives/a\\b"), Some("contains a backslash"));
        assert_eq!(unsafe_key("drives/a\0b"), Some("contains a NUL byte"));
        assert_eq!(unsafe_key("drives/./x"), Some("contains a `.` step"));
        assert_eq!(unsafe_key("drives/a..b/c.mcap"), None);
    }
}
