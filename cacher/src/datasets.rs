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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ::parquet::basic::{Compression, Type as PhysicalType, ZstdLevel};
use ::parquet::column::reader::ColumnReader;
use ::parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use ::parquet::errors::ParquetError;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::schema::parser::parse_message_type;
use bytes::Bytes;
use chrono::{SubsecRound as _, Utc};
use milepost_schema::entity::{dataset, dataset_member};
use milepost_schema::{DbError, ErrorKind as DbErrorKind};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait as _, ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, Statement, TransactionTrait as _,
};

use crate::upstream::{ByteRange, ObjectStore, StoreError, StoreErrorKind};

/// Where manifests live in the manifest bucket: `<prefix><name>/v<version>.parquet`.
pub const MANIFEST_PREFIX: &str = ".milepost/datasets/";

/// The longest dataset name.
pub const MAX_NAME_LEN: usize = 128;

/// The longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 4096;

/// Members inserted per statement (6 parameters each: far below every backend's limit).
pub const INSERT_BATCH: usize = 500;

/// How many times [`create_dataset`] tries a new version after a `(name, version)` conflict.
const VERSION_ATTEMPTS: usize = 5;

/// Rows per Parquet row group of a manifest.
const ROWS_PER_GROUP: usize = 64 * 1024;

/// The largest manifest [`load_manifest`] reads (256 MiB: millions of objects).
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024 * 1024;

/// Prefix of the PostgreSQL advisory lock key of a dataset name (see the module docs).
const LOCK_NAMESPACE: &str = "milepost.dataset:";

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

/// What a caller can do about a [`DatasetError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetErrorKind {
    /// The input is wrong; [`DatasetError::field`] names the field when there is one.
    Invalid,
    /// The dataset (or its manifest) does not exist.
    NotFound,
    /// The write lost a race it could not resolve by retrying.
    Conflict,
    /// The database or the object store cannot be reached or is busy; retrying later may
    /// succeed.
    Unavailable,
    /// Stored data is not what it should be (an unreadable manifest, an inconsistent row), or a
    /// bug: not the caller's fault, and retrying will not help.
    Corrupt,
}

/// An error of [`crate::datasets`]. Branch on [`kind`](Self::kind). Messages are lowercase and
/// name what was rejected; [`Db`](Self::Db) and [`Store`](Self::Store) messages are for logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A field of the input was rejected.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (GraphQL spelling): `name`, `objects`, `description`.
        field: &'static str,
        /// What is wrong, naming the value.
        message: String,
    },
    /// No dataset with that name (and version).
    #[error("dataset `{name}`{} not found", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound {
        /// The name looked up.
        name: String,
        /// The version looked up, `None` for the latest.
        version: Option<i32>,
    },
    /// Another creator kept taking the next version of this name.
    #[error("dataset `{name}`: could not claim a new version after {attempts} attempts (concurrent creations of the same name)")]
    VersionRace {
        /// The name.
        name: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A manifest could not be encoded or decoded.
    #[error("manifest {what}: {reason}")]
    Manifest {
        /// Which manifest, or `encode` / `decode`.
        what: String,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// Reading a manifest from the object store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Writing a new dataset's manifest failed: the manifest bucket is missing or forbidden,
    /// or the store is unreachable. The deployment's problem, not the caller's.
    #[error("cannot write the dataset manifest: {0}")]
    WriteManifest(#[source] StoreError),
}

impl From<sea_orm::DbErr> for DatasetError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Db(DbError::from(err))
    }
}

impl DatasetError {
    /// What the caller can do about it.
    pub fn kind(&self) -> DatasetErrorKind {
        match self {
            Self::Invalid { .. } => DatasetErrorKind::Invalid,
            Self::NotFound { .. } => DatasetErrorKind::NotFound,
            Self::VersionRace { .. } => DatasetErrorKind::Conflict,
            Self::Manifest { .. } => DatasetErrorKind::Corrupt,
            Self::Db(err) => match err.kind() {
                DbErrorKind::NotFound => DatasetErrorKind::NotFound,
                DbErrorKind::Conflict => DatasetErrorKind::Conflict,
                DbErrorKind::Unavailable => DatasetErrorKind::Unavailable,
                DbErrorKind::Corrupt | DbErrorKind::Invalid => DatasetErrorKind::Corrupt,
            },
            Self::Store(err) => match err.kind() {
                StoreErrorKind::NotFound => DatasetErrorKind::NotFound,
                StoreErrorKind::Corrupt => DatasetErrorKind::Corrupt,
                _ => DatasetErrorKind::Unavailable,
            },
            Self::WriteManifest(_) => DatasetErrorKind::Unavailable,
        }
    }

    /// The rejected field, for [`Invalid`](DatasetErrorKind::Invalid) errors.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

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

/// The S3 key of a dataset's manifest: `.milepost/datasets/<name>/v<version>.parquet`. The name
/// is expected valid ([`validate_name`]).
pub fn manifest_key(name: &str, version: i32) -> String {
    format!("{MANIFEST_PREFIX}{name}/v{version}.parquet")
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

fn encode_error(err: ParquetError) -> DatasetError {
    DatasetError::Manifest {
        what: "encode".to_owned(),
        reason: err.to_string().to_lowercase(),
    }
}

/// Encodes a manifest: Parquet, one row per entry in the given order, columns `bucket`, `key`,
/// `etag` (UTF-8 strings) and `size` (INT64), then the provenance of trimmed members
/// (null for whole objects): `view_key` and `scenario_id` (strings), `window_start_ns` and
/// `window_end_ns` (INT64, both included) and `topics` (a JSON array; `[]`: all);
/// zstd-compressed.
pub fn write_manifest(entries: &[ManifestEntry]) -> Result<Bytes, DatasetError> {
    let schema = parse_message_type(
        "message manifest {
            required binary bucket (STRING);
            required binary key (STRING);
            required int64 size;
            required binary etag (STRING);
            optional binary view_key (STRING);
            optional binary scenario_id (STRING);
            optional int64 window_start_ns;
            optional int64 window_end_ns;
            optional binary topics (STRING);
        }",
    )
    .map_err(encode_error)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("milepost {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(props))
        .map_err(encode_error)?;
    let too_large = |e: &ManifestEntry, n: u64| {
        DatasetError::invalid("objects", format!("{}: {n} is too large", e.uri()))
    };
    for group in entries.chunks(ROWS_PER_GROUP) {
        let mut rg = writer.next_row_group().map_err(encode_error)?;
        let defs: Vec<i16> = group.iter().map(|e| i16::from(e.trim.is_some())).collect();
        let trims = || group.iter().filter_map(|e| e.trim.as_ref().map(|t| (e, t)));
        let mut column = 0;
        while let Some(mut col) = rg.next_column().map_err(encode_error)? {
            match column {
                2 => {
                    let sizes = group
                        .iter()
                        .map(|e| i64::try_from(e.size).map_err(|_| too_large(e, e.size)))
                        .collect::<Result<Vec<i64>, _>>()?;
                    col.typed::<Int64Type>()
                        .write_batch(&sizes, None, None)
                        .map_err(encode_error)?;
                }
                0 | 1 | 3 => {
                    let values: Vec<ByteArray> = group
                        .iter()
                        .map(|e| {
                            ByteArray::from(match column {
                                0 => e.bucket.as_str(),
                                1 => e.key.as_str(),
                                _ => e.etag.as_str(),
                            })
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, None, None)
                        .map_err(encode_error)?;
                }
                6 | 7 => {
                    let values = trims()
                        .map(|(e, t)| {
                            let ns = if column == 6 { t.start_ns } else { t.end_ns };
                            i64::try_from(ns).map_err(|_| too_large(e, ns))
                        })
                        .collect::<Result<Vec<i64>, _>>()?;
                    col.typed::<Int64Type>()
                        .write_batch(&values, Some(&defs), None)
                        .map_err(encode_error)?;
                }
                _ => {
                    let values: Vec<ByteArray> = trims()
                        .map(|(_, t)| match column {
                            4 => ByteArray::from(t.view_key.as_str()),
                            5 => ByteArray::from(t.scenario_id.as_str()),
                            _ => ByteArray::from(
                                serde_json::to_string(&t.topics)
                                    .unwrap_or_else(|_| "[]".to_owned())
                                    .into_bytes(),
                            ),
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)
                        .map_err(encode_error)?;
                }
            }
            col.close().map_err(encode_error)?;
            column += 1;
        }
        rg.close().map_err(encode_error)?;
    }
    let bytes = writer.into_inner().map_err(encode_error)?;
    Ok(Bytes::from(bytes))
}

/// Decodes a manifest written by [`write_manifest`] (or by any writer with columns `bucket`,
/// `key`, `etag` as strings and `size` as INT64, in any order, other columns ignored). Never
/// panics on malformed input: it is reported as [`Corrupt`](DatasetErrorKind::Corrupt).
pub fn read_manifest(bytes: Bytes) -> Result<Vec<ManifestEntry>, DatasetError> {
    match catch_unwind(AssertUnwindSafe(|| decode_manifest(bytes))) {
        Ok(result) => result,
        Err(_) => Err(corrupt("the parquet decoder failed")),
    }
}

fn corrupt(reason: impl Into<String>) -> DatasetError {
    DatasetError::Manifest {
        what: "decode".to_owned(),
        reason: reason.into(),
    }
}

fn decode_manifest(bytes: Bytes) -> Result<Vec<ManifestEntry>, DatasetError> {
    let pq = |err: ParquetError| corrupt(err.to_string().to_lowercase());
    let reader = SerializedFileReader::new(bytes).map_err(pq)?;
    let metadata = reader.metadata();
    let schema = metadata.file_metadata().schema_descr();
    let lookup = |name: &str, physical: PhysicalType| -> Result<Option<usize>, DatasetError> {
        let Some(index) =
            (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == name)
        else {
            return Ok(None);
        };
        let found = schema.column(index).physical_type();
        if found != physical {
            return Err(corrupt(format!(
                "column `{name}` is {found}, expected {physical}"
            )));
        }
        Ok(Some(index))
    };
    let find = |name: &str, physical: PhysicalType| -> Result<usize, DatasetError> {
        lookup(name, physical)?.ok_or_else(|| corrupt(format!("no `{name}` column")))
    };
    let bucket_col = find("bucket", PhysicalType::BYTE_ARRAY)?;
    let key_col = find("key", PhysicalType::BYTE_ARRAY)?;
    let size_col = find("size", PhysicalType::INT64)?;
    let etag_col = find("etag", PhysicalType::BYTE_ARRAY)?;
    // Provenance of trimmed members; manifests of datasets without any lack them.
    let view_key_col = lookup("view_key", PhysicalType::BYTE_ARRAY)?;
    let scenario_col = lookup("scenario_id", PhysicalType::BYTE_ARRAY)?;
    let start_col = lookup("window_start_ns", PhysicalType::INT64)?;
    let end_col = lookup("window_end_ns", PhysicalType::INT64)?;
    let topics_col = lookup("topics", PhysicalType::BYTE_ARRAY)?;

    let total = metadata.file_metadata().num_rows();
    let mut entries = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(1 << 20));
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(pq)?;
        let rows = usize::try_from(rg.metadata().num_rows())
            .map_err(|_| corrupt(format!("row group {g} has a negative row count")))?;
        // Values by row, `None` where null (a required column has no nulls).
        let spread = |name: &str,
                      defs: Vec<i16>,
                      values: usize|
         -> Result<Vec<Option<usize>>, DatasetError> {
            if defs.is_empty() {
                if values != rows {
                    return Err(corrupt(format!(
                        "column `{name}` of row group {g} has {values} values for {rows} rows"
                    )));
                }
                return Ok((0..rows).map(Some).collect());
            }
            if defs.len() != rows {
                return Err(corrupt(format!(
                    "column `{name}` of row group {g} has {} levels for {rows} rows",
                    defs.len()
                )));
            }
            let mut next = 0;
            let out: Vec<Option<usize>> = defs
                .iter()
                .map(|&d| {
                    (d > 0).then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            if next != values {
                return Err(corrupt(format!(
                    "column `{name}` of row group {g} has {values} values for {next} non-null rows"
                )));
            }
            Ok(out)
        };
        let strings = |col: usize, name: &str| -> Result<Vec<Option<String>>, DatasetError> {
            let ColumnReader::ByteArrayColumnReader(mut r) =
                rg.get_column_reader(col).map_err(pq)?
            else {
                return Err(corrupt(format!("column `{name}` is not a byte array")));
            };
            let mut values = Vec::with_capacity(rows);
            let mut defs = Vec::with_capacity(rows);
            r.read_records(rows, Some(&mut defs), None, &mut values)
                .map_err(pq)?;
            let values: Vec<String> = values
                .into_iter()
                .map(|v| {
                    String::from_utf8(v.data().to_vec())
                        .map_err(|_| corrupt(format!("column `{name}` holds invalid utf-8")))
                })
                .collect::<Result<_, _>>()?;
            let count = values.len();
            Ok(spread(name, defs, count)?
                .into_iter()
                .map(|i| i.map(|i| values[i].clone()))
                .collect())
        };
        let ints = |col: usize, name: &str| -> Result<Vec<Option<i64>>, DatasetError> {
            let ColumnReader::Int64ColumnReader(mut r) = rg.get_column_reader(col).map_err(pq)?
            else {
                return Err(corrupt(format!("column `{name}` is not int64")));
            };
            let mut values = Vec::with_capacity(rows);
            let mut defs = Vec::with_capacity(rows);
            r.read_records(rows, Some(&mut defs), None, &mut values)
                .map_err(pq)?;
            let count = values.len();
            Ok(spread(name, defs, count)?
                .into_iter()
                .map(|i| i.map(|i| values[i]))
                .collect())
        };
        let required =
            |column: Vec<Option<String>>, name: &str| -> Result<Vec<String>, DatasetError> {
                column
                    .into_iter()
                    .map(|v| v.ok_or_else(|| corrupt(format!("column `{name}` holds a null"))))
                    .collect()
            };
        let buckets = required(strings(bucket_col, "bucket")?, "bucket")?;
        let keys = required(strings(key_col, "key")?, "key")?;
        let etags = required(strings(etag_col, "etag")?, "etag")?;
        let sizes: Vec<i64> = ints(size_col, "size")?
            .into_iter()
            .map(|v| v.ok_or_else(|| corrupt("column `size` holds a null")))
            .collect::<Result<_, _>>()?;
        let optional_strings = |col: Option<usize>, name: &str| match col {
            Some(col) => strings(col, name),
            None => Ok(vec![None; rows]),
        };
        let optional_ints = |col: Option<usize>, name: &str| match col {
            Some(col) => ints(col, name),
            None => Ok(vec![None; rows]),
        };
        let view_keys = optional_strings(view_key_col, "view_key")?;
        let scenarios = optional_strings(scenario_col, "scenario_id")?;
        let starts = optional_ints(start_col, "window_start_ns")?;
        let ends = optional_ints(end_col, "window_end_ns")?;
        let topics = optional_strings(topics_col, "topics")?;
        for (i, (((bucket, key), size), etag)) in buckets
            .into_iter()
            .zip(keys)
            .zip(sizes)
            .zip(etags)
            .enumerate()
        {
            let size = u64::try_from(size)
                .map_err(|_| corrupt(format!("s3://{bucket}/{key} has a negative size")))?;
            let trim = match (&view_keys[i], &scenarios[i], starts[i], ends[i], &topics[i]) {
                (Some(view_key), Some(scenario), Some(start), Some(end), Some(topics)) => {
                    let bad = || corrupt(format!("s3://{bucket}/{key} has an invalid trim window"));
                    Some(TrimSpec {
                        scenario_id: scenario.clone(),
                        start_ns: u64::try_from(start).map_err(|_| bad())?,
                        end_ns: u64::try_from(end).map_err(|_| bad())?,
                        topics: serde_json::from_str(topics).map_err(|_| {
                            corrupt(format!("s3://{bucket}/{key} has unreadable topics"))
                        })?,
                        view_key: view_key.clone(),
                        // Admission estimate, not provenance: not in the manifest.
                        planned_bytes: size,
                    })
                }
                (None, None, None, None, None) => None,
                _ => {
                    return Err(corrupt(format!(
                        "s3://{bucket}/{key} has some trim columns but not all"
                    )))
                }
            };
            entries.push(ManifestEntry {
                bucket,
                key,
                size,
                etag,
                trim,
            });
        }
    }
    if i64::try_from(entries.len()).ok() != Some(total) {
        return Err(corrupt(format!(
            "the footer announces {total} rows, the row groups hold {}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// Reads and decodes the manifest `bucket/key` from `store` (at most
/// [`MAX_MANIFEST_BYTES`]).
pub async fn load_manifest(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
) -> Result<Vec<ManifestEntry>, DatasetError> {
    let bytes = store
        .get(bucket, key, ByteRange::All, None)
        .await?
        .collect(MAX_MANIFEST_BYTES)
        .await?;
    read_manifest(bytes).map_err(|err| match err {
        DatasetError::Manifest { reason, .. } => DatasetError::Manifest {
            what: format!("s3://{bucket}/{key}"),
            reason,
        },
        other => other,
    })
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

/// Serializes dataset creation in this process (see the module docs).
static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates a dataset (the next version of its name) from `entries`, frozen as given: their
/// ETags are the versions that reservations will materialize.
///
/// Refuses an invalid name (field `name`), a description longer than
/// [`MAX_DESCRIPTION_LEN`] (`description`), no objects or an object that cannot be
/// materialized (`objects`). Entries are deduplicated by (bucket, key) and sorted; their
/// positions in the `dataset_members` table follow that order from 0. The manifest is written
/// to `manifest_bucket` under [`manifest_key`]; the rows are committed in one transaction
/// (members inserted [`INSERT_BATCH`] at a time). See the module docs for concurrency.
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

/// The dataset `name` at `version`, or its latest version when `version` is `None`.
pub async fn find_dataset(
    db: &impl ConnectionTrait,
    name: &str,
    version: Option<i32>,
) -> Result<Option<dataset::Model>, DatasetError> {
    let query = dataset::Entity::find().filter(dataset::Column::Name.eq(name));
    let found = match version {
        Some(v) => query.filter(dataset::Column::Version.eq(v)).one(db).await?,
        None => {
            query
                .order_by_desc(dataset::Column::Version)
                .one(db)
                .await?
        }
    };
    Ok(found)
}

/// Like [`find_dataset`], but a missing dataset is a [`NotFound`](DatasetErrorKind::NotFound)
/// error.
pub async fn get_dataset(
    db: &impl ConnectionTrait,
    name: &str,
    version: Option<i32>,
) -> Result<dataset::Model, DatasetError> {
    find_dataset(db, name, version)
        .await?
        .ok_or_else(|| DatasetError::NotFound {
            name: name.to_owned(),
            version,
        })
}

/// A page of a dataset's members in manifest order: positions after `after_position` (from
/// the start when `None`), at most `limit`.
pub async fn members(
    db: &impl ConnectionTrait,
    dataset_id: i64,
    after_position: Option<i64>,
    limit: u64,
) -> Result<Vec<dataset_member::Model>, DatasetError> {
    let mut query = dataset_member::Entity::find()
        .filter(dataset_member::Column::DatasetId.eq(dataset_id))
        .order_by_asc(dataset_member::Column::Position)
        // PostgreSQL takes LIMIT as a signed 64-bit integer.
        .limit(limit.min(i64::MAX as u64));
    if let Some(after) = after_position {
        query = query.filter(dataset_member::Column::Position.gt(after));
    }
    Ok(query.all(db).await?)
}

/// Every member of a dataset, in manifest order.
pub async fn all_members(
    db: &impl ConnectionTrait,
    dataset_id: i64,
) -> Result<Vec<ManifestEntry>, DatasetError> {
    const PAGE: u64 = 10_000;
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = members(db, dataset_id, after, PAGE).await?;
        let full = page.len() as u64 == PAGE;
        after = page.last().map(|m| m.position);
        out.extend(page.into_iter().map(ManifestEntry::from));
        if !full {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn manifest_keys() {
        assert_eq!(
            manifest_key("rain-cut-ins", 3),
            ".milepost/datasets/rain-cut-ins/v3.parquet"
        );
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
    fn manifests_round_trip() {
        let entries = vec![
            entry(
                "fleet",
                "drives/2026-11-01/gz-004/d1/drive.json",
                0,
                "d41d8cd98f00b204e9800998ecf8427e",
            ),
            entry(
                "fleet",
                "drives/2026-11-01/gz-004/d1/log.mcap",
                5 * 1024 * 1024 * 1024 + 7,
                "abc-3",
            ),
            entry("other", "广州/雨.mcap", 42, "e"),
        ];
        let bytes = write_manifest(&entries).expect("write");
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(read_manifest(bytes).expect("read"), entries);
        // Several row groups.
        let many: Vec<_> = (0..(ROWS_PER_GROUP + 10))
            .map(|i| entry("b", &format!("k/{i:08}"), i as u64, &format!("{i:x}")))
            .collect();
        assert_eq!(
            read_manifest(write_manifest(&many).expect("write")).expect("read"),
            many
        );
    }

    #[test]
    fn trimmed_members_keep_their_provenance_in_the_manifest() {
        let trimmed = ManifestEntry {
            trim: Some(TrimSpec {
                scenario_id: "sc-0123456789abcdef".into(),
                start_ns: 1_790_000_000_000_000_000,
                end_ns: 1_790_000_034_000_000_000,
                topics: vec!["/lidar/points".into()],
                view_key: "drives/d/logs/a.sc-0123456789abcdef.20261101T100030Z-20261101T100100Z.pad2s.mcap".into(),
                planned_bytes: 7,
            }),
            ..entry("fleet", "drives/d/logs/a.mcap", 7, "e-2")
        };
        let entries = vec![
            entry("fleet", "drives/d/drive.json", 3, "e1"),
            trimmed.clone(),
            entry("fleet", "drives/d/logs/a.mcap", 7, "e-2"),
        ];
        // A log and its trim are two members.
        assert_eq!(normalize_entries(entries.clone()).expect("valid").len(), 3);
        let back = read_manifest(write_manifest(&entries).expect("write")).expect("read");
        assert_eq!(back, entries);
        assert_eq!(
            back[1].view_key(),
            trimmed.trim.as_ref().map_or("", |t| &t.view_key)
        );
    }

    #[test]
    fn malformed_manifests_are_corrupt_not_panics() {
        let good = write_manifest(&[entry("b", "k", 1, "e")]).expect("write");
        for bad in [
            Bytes::new(),
            Bytes::from_static(b"PAR1garbagePAR1"),
            good.slice(..good.len() / 2),
            {
                let mut v = good.to_vec();
                let mid = v.len() / 3;
                for b in &mut v[mid..mid + 16] {
                    *b ^= 0x5a;
                }
                Bytes::from(v)
            },
        ] {
            if let Err(err) = read_manifest(bad) {
                assert_eq!(err.kind(), DatasetErrorKind::Corrupt, "{err}");
            }
        }
    }

    #[test]
    fn lock_keys_are_stable() {
        assert_eq!(name_lock_key("a"), name_lock_key("a"));
        assert_ne!(name_lock_key("a"), name_lock_key("b"));
    }
}
