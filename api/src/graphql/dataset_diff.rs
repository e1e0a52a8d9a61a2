//! `datasetDiff(name, from, to)`: what changed between two versions of a dataset (added,
//! removed and changed members, with bytes), for pipelines that want to know what a new
//! version brings and for the dataset page.

use async_graphql::{Context, Object, SimpleObject};
use milepost_cacher::datasets::{self, ManifestEntry};

use super::scalars::Long;
use super::{page_limit, state};
use crate::error::{ApiError, GqlResultExt};
use async_graphql::Result as GqlResult;

#[derive(Debug, Default)]
pub struct DatasetDiffQuery;

/// One member of a dataset version.
#[derive(SimpleObject, Debug)]
#[graphql(name = "DatasetMember")]
pub struct DiffMember {
    pub bucket: String,
    /// The object's key (a trimmed log's source key).
    pub key: String,
    /// Where it appears in a reservation's view (differs from `key` for a trimmed log).
    pub view_key: String,
    pub size: Long,
    pub etag: String,
    /// What it weighs in the office (a trimmed log's planned size).
    pub bytes: Long,
}

impl From<&ManifestEntry> for DiffMember {
    fn from(entry: &ManifestEntry) -> Self {
        DiffMember {
            bucket: entry.bucket.clone(),
            key: entry.key.clone(),
            view_key: entry.view_key().to_owned(),
            size: Long(i64::try_from(entry.size).unwrap_or(i64::MAX)),
            etag: entry.etag.clone(),
            bytes: long(entry.planned_bytes()),
        }
    }
}

/// A member in both versions with other contents.
#[derive(SimpleObject, Debug)]
#[graphql(name = "DatasetMemberChange")]
pub struct DiffChange {
    pub from: DiffMember,
    pub to: DiffMember,
}

/// What changed from version `from` to version `to`. The lists hold at most `first` members
/// each, in (bucket, view key) order; the counts and bytes are complete.
#[derive(SimpleObject, Debug)]
#[graphql(name = "DatasetDiff")]
pub struct DiffResult {
    pub name: String,
    pub from: i32,
    pub to: i32,
    pub added_count: i32,
    pub removed_count: i32,
    pub changed_count: i32,
    pub unchanged_count: i32,
    pub added_bytes: Long,
    pub removed_bytes: Long,
    /// Bytes of the changed members as `to` has them.
    pub changed_bytes: Long,
    pub unchanged_bytes: Long,
    pub added: Vec<DiffMember>,
    pub removed: Vec<DiffMember>,
    pub changed: Vec<DiffChange>,
}

fn long(bytes: u64) -> Long {
    Long(i64::try_from(bytes).unwrap_or(i64::MAX))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[Object]
impl DatasetDiffQuery {
    /// What changed in dataset `name` from version `from` to version `to`. `to` defaults to
    /// the latest version and `from` to the one before `to`. NOT_FOUND names a version that
    /// does not exist.
    async fn dataset_diff(
        &self,
        ctx: &Context<'_>,
        name: String,
        from: Option<i32>,
        to: Option<i32>,
        #[graphql(default = 100)] first: Option<i32>,
    ) -> GqlResult<DiffResult> {
        let db = &state(ctx).db;
        let limit = page_limit(first).gql()? as usize;
        let newer = datasets::get_dataset(db, &name, to)
            .await
            .map_err(ApiError::from)
            .gql()?;
        let from = match from {
            Some(v) => v,
            None if newer.version > 1 => newer.version - 1,
            None => {
                return Err(ApiError::bad_input(
                    "from",
                    format!(
                        "dataset `{name}` version {} has no earlier version to compare with",
                        newer.version
                    ),
                ))
                .gql()
            }
        };
        let older = datasets::get_dataset(db, &name, Some(from))
            .await
            .map_err(ApiError::from)
            .gql()?;
        let before = datasets::all_members(db, older.id)
            .await
            .map_err(ApiError::from)
            .gql()?;
        let after = datasets::all_members(db, newer.id)
            .await
            .map_err(ApiError::from)
            .gql()?;
        let diff = datasets::diff(&before, &after);
        Ok(DiffResult {
            name,
            from: older.version,
            to: newer.version,
            added_count: count(diff.added.len()),
            removed_count: count(diff.removed.len()),
            changed_count: count(diff.changed.len()),
            unchanged_count: i32::try_from(diff.unchanged_count).unwrap_or(i32::MAX),
            added_bytes: long(diff.added_bytes()),
            removed_bytes: long(diff.removed_bytes()),
            changed_bytes: long(diff.changed_bytes()),
            unchanged_bytes: long(diff.unchanged_bytes),
            added: diff
                .added
                .iter()
                .take(limit)
                .map(DiffMember::from)
                .collect(),
            removed: diff
                .removed
                .iter()
                .take(limit)
                .map(DiffMember::from)
                .collect(),
            changed: diff
                .changed
                .iter()
                .take(limit)
                .map(|c| DiffChange {
                    from: DiffMember::from(&c.from),
                    to: DiffMember::from(&c.to),
                })
                .collect(),
        })
    }
}
