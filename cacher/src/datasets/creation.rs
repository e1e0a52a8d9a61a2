//! Dataset creation: checking the name and entries, choosing the next version under a lock
//! per name, writing the manifest and committing the rows (see the [module docs](super) for
//! why the order differs between SQLite and PostgreSQL).

use chrono::{SubsecRound as _, Utc};
use milepost_schema::entity::{dataset, dataset_member};
use milepost_schema::{DbError, ErrorKind as DbErrorKind};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait as _, ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, Statement, TransactionTrait as _,
};

use super::manifest::{manifest_key, write_manifest};
use super::queries::{all_members, find_dataset};
use super::{DatasetError, ManifestEntry};
use milepost_store::ObjectStore;

/// The longest dataset name.
pub const MAX_NAME_LEN: usize = 128;

/// The longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 4096;

/// Members inserted per statement (6 parameters each: far below every backend's limit).
pub const INSERT_BATCH: usize = 500;

/// How many times [`create_dataset`] tries a new version after a `(name, version)` conflict.
const VERSION_ATTEMPTS: usize = 5;

/// Prefix of the PostgreSQL advisory lock key of a dataset name (see the [module docs](super)).
const LOCK_NAMESPACE: &str = "milepost.dataset:";

/// Checks a dataset name: `[a-z0-9][a-z0-9._-]{0,127}`. The error (field `name`) names it.
pub fn validate_name(name: &str) -> Result<(), DatasetError> {
    let bad = |why: &str| {
        Err(DatasetError::invalid(
            "name",
            format!(
                "invalid dataset name `{name}`: {why} (expected 1 to {MAX_NAME_LEN} of a-z, 0-9, \
                 `.`, `_`, `-`, starting with a letter or digit)"
            ),
        ))
    };
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("it must start with a lowercase letter or a digit");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!("`{c}` is not allowed"));
    }
    Ok(())
}

/// Validates the entries of a new dataset, then sorts them by (bucket, key) and removes
/// duplicates (the first occurrence of a (bucket, key) wins). Errors name the field `objects`
/// and the object.
pub fn normalize_entries(
    mut entries: Vec<ManifestEntry>,
) -> Result<Vec<ManifestEntry>, DatasetError> {
    if entries.is_empty() {
        return Err(DatasetError::invalid(
            "objects",
            "a dataset needs at least one object; the selection matched none",
        ));
    }
    for e in &entries {
        if e.bucket.is_empty() || e.bucket.contains('/') {
            return Err(DatasetError::invalid(
                "objects",
                format!("{}: invalid bucket name `{}`", e.uri(), e.bucket),
            ));
        }
        if let Err(problem) = crate::objects::check_key(e.view_key()) {
            return Err(DatasetError::invalid(
                "objects",
                format!(
                    "{}: {problem}, so it cannot be materialized as a file",
                    e.uri()
                ),
            ));
        }
        if e.etag.is_empty() {
            return Err(DatasetError::invalid(
                "objects",
                format!(
                    "{}: no etag; a dataset freezes each object's etag (head the object first)",
                    e.uri()
                ),
            ));
        }
        if i64::try_from(e.size).is_err() {
            return Err(DatasetError::invalid(
                "objects",
                format!("{}: size {} is too large", e.uri(), e.size),
            ));
        }
    }
    // Stable: among duplicates the first given stays first, and dedup keeps it. Members are
    // identified by their place in views: a log and its trims are different members.
    entries.sort_by(|a, b| (&a.bucket, a.view_key()).cmp(&(&b.bucket, b.view_key())));
    entries.dedup_by(|later, first| {
        let same = later.bucket == first.bucket && later.view_key() == first.view_key();
        if same && (later.etag != first.etag || later.size != first.size) {
            tracing::debug!(
                object = %first.uri(),
                kept = %first.etag,
                dropped = %later.etag,
                "duplicate dataset entry with another version ignored"
            );
        }
        same
    });
    // Found before anything is downloaded: a view cannot hold a file `a` and a directory `a`.
    let mut start = 0;
    while start < entries.len() {
        let bucket = &entries[start].bucket;
        let end = start
            + entries[start..]
                .iter()
                .take_while(|e| &e.bucket == bucket)
                .count();
        let keys: Vec<&str> = entries[start..end].iter().map(|e| e.view_key()).collect();
        if let Some((file, under)) = crate::objects::file_directory_clash(&keys) {
            return Err(DatasetError::invalid(
                "objects",
                format!(
                    "s3://{bucket}/{file} and s3://{bucket}/{under}: a view cannot hold a file and a directory of the same name"
                ),
            ));
        }
        start = end;
    }
    Ok(entries)
}

/// A new dataset, as [`create_dataset`] takes it.
#[derive(Clone, Debug)]
pub struct NewDataset {
    /// The name ([`validate_name`]); an existing name gets its next version.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Name of the token creating it.
    pub created_by: String,
    /// The objects, in any order, duplicates allowed ([`normalize_entries`]).
    pub entries: Vec<ManifestEntry>,
    /// How it was built (query, entity ids or objects, include globs), stored as is.
    pub selection: serde_json::Value,
}

/// Serializes dataset creation in this process (see the [module docs](super)).
static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates a dataset (the next version of its name) from `entries`, frozen as given: their
/// ETags are the versions that reservations will materialize.
///
/// Refuses an invalid name (field `name`), a description longer than
/// [`MAX_DESCRIPTION_LEN`] (`description`), no objects or an object that cannot be
/// materialized (`objects`). Entries are deduplicated by (bucket, key) and sorted; their
/// positions in the `dataset_members` table follow that order from 0. The manifest is written
/// to `manifest_bucket` under [`manifest_key`]; the rows are committed in one transaction
/// (members inserted [`INSERT_BATCH`] at a time). See the [module docs](super) for concurrency.
pub async fn create_dataset(
    db: &DatabaseConnection,
    store: &dyn ObjectStore,
    manifest_bucket: &str,
    new: NewDataset,
) -> Result<dataset::Model, DatasetError> {
    let NewDataset {
        name,
        description,
        created_by,
        entries,
        selection,
    } = new;
    validate_name(&name)?;
    if let Some(d) = &description {
        let chars = d.chars().count();
        if chars > MAX_DESCRIPTION_LEN {
            return Err(DatasetError::invalid(
                "description",
                format!("{chars} characters is too long (at most {MAX_DESCRIPTION_LEN})"),
            ));
        }
    }
    let entries = normalize_entries(entries)?;
    let total_bytes = entries
        .iter()
        .try_fold(0i64, |acc, e| {
            i64::try_from(e.planned_bytes())
                .ok()
                .and_then(|s| acc.checked_add(s))
        })
        .ok_or_else(|| DatasetError::invalid("objects", "the total size overflows"))?;
    let object_count = i64::try_from(entries.len())
        .map_err(|_| DatasetError::invalid("objects", "too many objects"))?;
    let manifest = write_manifest(&entries)?;
    let postgres = db.get_database_backend() == DatabaseBackend::Postgres;

    let _local = CREATE_LOCK.lock().await;
    for attempt in 1..=VERSION_ATTEMPTS {
        let txn = db.begin().await?;
        if postgres {
            txn.execute(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [name_lock_key(&name).into()],
            ))
            .await?;
        }
        // On SQLite, read outside the transaction: a read would pin its snapshot, and the
        // later write could not upgrade it once another connection has written (and the
        // writer lock must not be held across the S3 request anyway).
        let version = if postgres {
            next_version(&txn, &name).await?
        } else {
            next_version(db, &name).await?
        };
        let key = manifest_key(&name, version);
        if !postgres {
            store
                .put(manifest_bucket, &key, manifest.clone())
                .await
                .map_err(DatasetError::WriteManifest)?;
        }
        let row = dataset::ActiveModel {
            id: NotSet,
            name: Set(name.clone()),
            version: Set(version),
            description: Set(description.clone()),
            created_at: Set(Utc::now().trunc_subsecs(6)),
            created_by: Set(created_by.clone()),
            manifest_bucket: Set(manifest_bucket.to_owned()),
            manifest_key: Set(key.clone()),
            object_count: Set(object_count),
            total_bytes: Set(total_bytes),
            selection: Set(selection.clone()),
        };
        let inserted = match insert_rows(&txn, row, &entries).await {
            Ok(model) => model,
            Err(err) if is_conflict(&err) => {
                drop(txn);
                tracing::info!(name, version, attempt, "dataset version taken; retrying");
                if !postgres {
                    repair_manifest(db, store, &name, version).await;
                }
                continue;
            }
            Err(err) => return Err(err),
        };
        if postgres {
            // Inside the transaction (and the name's advisory lock): nobody else writes this
            // version's manifest. A failure rolls the rows back.
            store
                .put(manifest_bucket, &key, manifest.clone())
                .await
                .map_err(DatasetError::WriteManifest)?;
        }
        match txn.commit().await {
            Ok(()) => {
                tracing::info!(
                    name,
                    version,
                    objects = object_count,
                    bytes = total_bytes,
                    "dataset created"
                );
                return Ok(inserted);
            }
            Err(err) => {
                let err = DbError::from(err);
                if err.kind() != DbErrorKind::Conflict {
                    return Err(err.into());
                }
                tracing::info!(name, version, attempt, "dataset version taken; retrying");
                if !postgres {
                    repair_manifest(db, store, &name, version).await;
                }
            }
        }
    }
    Err(DatasetError::VersionRace {
        name,
        attempts: VERSION_ATTEMPTS,
    })
}

fn is_conflict(err: &DatasetError) -> bool {
    matches!(err, DatasetError::Db(e) if e.kind() == DbErrorKind::Conflict)
}

/// FNV-1a of the name in [`LOCK_NAMESPACE`], as a PostgreSQL advisory lock key.
fn name_lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in LOCK_NAMESPACE.bytes().chain(name.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

async fn next_version(conn: &impl ConnectionTrait, name: &str) -> Result<i32, DatasetError> {
    let latest: Option<i32> = dataset::Entity::find()
        .select_only()
        .column(dataset::Column::Version)
        .filter(dataset::Column::Name.eq(name))
        .order_by_desc(dataset::Column::Version)
        .limit(1)
        .into_tuple()
        .one(conn)
        .await?;
    latest.unwrap_or(0).checked_add(1).ok_or_else(|| {
        DatasetError::invalid("name", format!("dataset `{name}` has too many versions"))
    })
}

async fn insert_rows(
    txn: &impl ConnectionTrait,
    row: dataset::ActiveModel,
    entries: &[ManifestEntry],
) -> Result<dataset::Model, DatasetError> {
    let inserted = dataset::Entity::insert(row)
        .exec_with_returning(txn)
        .await?;
    let mut position: i64 = 0;
    for batch in entries.chunks(INSERT_BATCH) {
        let rows: Vec<dataset_member::ActiveModel> = batch
            .iter()
            .map(|e| {
                let row = dataset_member::ActiveModel {
                    dataset_id: Set(inserted.id),
                    position: Set(position),
                    bucket: Set(e.bucket.clone()),
                    key: Set(e.key.clone()),
                    // Checked by normalize_entries.
                    size: Set(i64::try_from(e.size).unwrap_or(i64::MAX)),
                    etag: Set(e.etag.clone()),
                    trim: Set(e.trim.as_ref().and_then(|t| serde_json::to_value(t).ok())),
                };
                position += 1;
                row
            })
            .collect();
        dataset_member::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(inserted)
}

/// Rewrites the manifest of `name` version `version` from its committed rows, after this
/// process may have overwritten it while losing the race for that version (SQLite only; see
/// the module docs). Best effort: failures are logged.
async fn repair_manifest(
    db: &DatabaseConnection,
    store: &dyn ObjectStore,
    name: &str,
    version: i32,
) {
    let result = async {
        let Some(winner) = find_dataset(db, name, Some(version)).await? else {
            return Ok(());
        };
        let entries = all_members(db, winner.id).await?;
        let bytes = write_manifest(&entries)?;
        store
            .put(&winner.manifest_bucket, &winner.manifest_key, bytes)
            .await?;
        Ok::<_, DatasetError>(())
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(name, version, error = %err, "could not rewrite a dataset manifest after a version race");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::DatasetErrorKind;

    fn entry(bucket: &str, key: &str, size: u64, etag: &str) -> ManifestEntry {
        ManifestEntry {
            bucket: bucket.into(),
            key: key.into(),
            size,
            etag: etag.into(),
            trim: None,
        }
    }

    #[test]
    fn names_are_validated_and_named_in_errors() {
        for good in [
            "a",
            "0",
            "rain-cut-ins",
            "gz.night_2026-11",
            &"a".repeat(128),
        ] {
            validate_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "rain cut",
            "a/b",
            "naïve",
            &"a".repeat(129),
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert_eq!(err.kind(), DatasetErrorKind::Invalid);
            assert_eq!(err.field(), Some("name"));
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn keys_that_cannot_be_view_paths_are_refused_before_anything_is_fetched() {
        for bad in ["a\\b", "a//b", "a/..", &format!("a/{}", "s".repeat(256))] {
            let err = normalize_entries(vec![entry("b", bad, 1, "e")]).expect_err(bad);
            assert!(
                err.to_string().contains("cannot be materialized as a file"),
                "{bad:?}: {err}"
            );
        }
        let err = normalize_entries(vec![
            entry("b", "x/a/b", 1, "e"),
            entry("b", "x/a!", 1, "e"),
            entry("b", "x/a", 1, "e"),
            entry("c", "x/a/b", 1, "e"),
        ])
        .expect_err("a file beside a directory of its name");
        assert!(
            err.to_string()
                .contains("s3://b/x/a and s3://b/x/a/b: a view cannot hold a file and a directory"),
            "{err}"
        );
        // The same names in two buckets are two trees.
        normalize_entries(vec![entry("b", "x/a", 1, "e"), entry("c", "x/a/b", 1, "e")])
            .expect("no clash across buckets");
    }

    #[test]
    fn entries_are_sorted_and_deduplicated_first_wins() {
        let got = normalize_entries(vec![
            entry("b", "z", 1, "e1"),
            entry("a", "y", 2, "e2"),
            entry("b", "z", 9, "other"),
            entry("a", "x", 3, "e3"),
        ])
        .expect("valid");
        assert_eq!(
            got,
            vec![
                entry("a", "x", 3, "e3"),
                entry("a", "y", 2, "e2"),
                entry("b", "z", 1, "e1"),
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_objects() {
        let err = normalize_entries(vec![]).expect_err("empty");
        assert_eq!(err.field(), Some("objects"));
        for (bad, needle) in [
            (entry("b", "a/../c", 1, "e"), "s3://b/a/../c"),
            (entry("b", "k", 1, ""), "no etag"),
            (entry("", "k", 1, "e"), "bucket"),
            (entry("b", "k", u64::MAX, "e"), "too large"),
        ] {
            let err = normalize_entries(vec![entry("b", "ok", 1, "e"), bad]).expect_err(needle);
            assert_eq!(err.kind(), DatasetErrorKind::Invalid);
            assert_eq!(err.field(), Some("objects"));
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn lock_keys_are_stable() {
        assert_eq!(name_lock_key("a"), name_lock_key("a"));
        assert_ne!(name_lock_key("a"), name_lock_key("b"));
    }
}
