//! Datasets: named, versioned, frozen lists of objects, with a Parquet manifest in S3.
//!
//! A dataset is created once and never changes. Its manifest names every object with the size
//! and ETag it had at creation; materializing a reservation fetches exactly those versions (a
//! changed object fails the reservation instead of mixing versions). Creating the same name
//! again makes the next version.
//!
//! - [`create_dataset`] validates, deduplicates and sorts the entries, writes the manifest to
//!   S3 under [`manifest_key`] (`.milepost/datasets/<name>/v<version>.parquet`) and records the
//!   `datasets` row and its `dataset_members` in one transaction.
//! - [`find_dataset`], [`members`] and [`all_members`] read them back.
//! - [`write_manifest`] and [`read_manifest`] are the manifest format: one row per object,
//!   columns `bucket` (UTF-8), `key` (UTF-8), `size` (INT64), `etag` (UTF-8), zstd-compressed;
//!   [`load_manifest`] reads one from the store (another office rebuilding its catalog).
//!
//! # Versions under concurrency
//!
//! Two creators of one name must not both write `v<N>.parquet`: S3 keeps the last write, so
//! the manifest of the version that won the database row could be overwritten by the loser's.
//! Creators are therefore serialized per name before the version is chosen: by a lock in this
//! process (enough for SQLite, which one process serves), and on PostgreSQL also by a
//! transaction-scoped advisory lock on the name, held until the rows are committed (several
//! nodes). On PostgreSQL the manifest is written inside that transaction, after the rows are
//! inserted and before the commit; on SQLite it is written before the (short) transaction, so
//! that the single SQLite writer lock is never held across an S3 request. Should a unique
//! `(name, version)` conflict still happen (another process writing the same SQLite file),
//! creation retries with the next version, after rewriting the winner's manifest from its
//! committed rows.
//!
//! # Layout
//!
//! - `manifest.rs`: the Parquet manifest format, and loading one from a store;
//! - `creation.rs`: names, entries, versions and the creating transaction;
//! - `queries.rs`: reading datasets and their members back;
//! - `diff.rs`: what changed between two versions ([`diff`]);
//! - `error.rs`: [`DatasetError`].

use milepost_schema::entity::dataset_member;

mod creation;
mod diff;
mod error;
mod manifest;
mod queries;

pub use creation::{
    create_dataset, normalize_entries, validate_name, NewDataset, INSERT_BATCH,
    MAX_DESCRIPTION_LEN, MAX_NAME_LEN,
};
pub use diff::{diff, ChangedMember, DatasetDiff};
pub use error::{DatasetError, DatasetErrorKind};
pub use manifest::{
    load_manifest, manifest_key, read_manifest, write_manifest, MANIFEST_PREFIX, MAX_MANIFEST_BYTES,
};
pub use queries::{all_members, find_dataset, get_dataset, members};

/// One object of a dataset, frozen at the ETag it had when the dataset was created: whole,
/// or (with [`trim`](Self::trim)) an MCAP log trimmed to a scenario's window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManifestEntry {
    /// The bucket.
    pub bucket: String,
    /// The key (of the source log, for a trimmed member).
    pub key: String,
    /// The object's size in bytes (of the source log, for a trimmed member).
    pub size: u64,
    /// The object's ETag, without quotes (of the source log, for a trimmed member).
    pub etag: String,
    /// For a trimmed MCAP log: what to keep of it and what the file is called in views.
    pub trim: Option<TrimSpec>,
}

/// What a trimmed member keeps of its source log, and where it appears in views. The
/// provenance of the trimmed file: source (the entry's bucket, key, ETag), window, topics.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TrimSpec {
    /// The scenario whose span (with padding) is the window.
    pub scenario_id: String,
    /// The window of log times kept, nanoseconds since the epoch, both ends included.
    pub start_ns: u64,
    /// See [`start_ns`](Self::start_ns).
    pub end_ns: u64,
    /// The topics kept, sorted; empty: all.
    pub topics: Vec<String>,
    /// The trimmed file's key in views (same bucket): it names the scenario and the span.
    pub view_key: String,
    /// What the trimmed file is expected to weigh at most (the source chunks overlapping the
    /// window, from the catalog's copy of its summary; the whole log when unknown), for
    /// admission before it is built.
    pub planned_bytes: u64,
}

impl ManifestEntry {
    /// `s3://bucket/key`, for messages.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// The key the member has in views: the trimmed file's name, or the key.
    pub fn view_key(&self) -> &str {
        self.trim.as_ref().map_or(&self.key, |t| &t.view_key)
    }

    /// The bytes the member is expected to take in the cache.
    pub fn planned_bytes(&self) -> u64 {
        self.trim.as_ref().map_or(self.size, |t| t.planned_bytes)
    }
}

impl From<dataset_member::Model> for ManifestEntry {
    fn from(m: dataset_member::Model) -> Self {
        Self {
            bucket: m.bucket,
            key: m.key,
            // Sizes are checked non-negative when they are written.
            size: u64::try_from(m.size).unwrap_or(0),
            etag: m.etag,
            // Written by this module from a TrimSpec; unreadable JSON would be a bug.
            trim: m.trim.and_then(|t| serde_json::from_value(t).ok()),
        }
    }
}
