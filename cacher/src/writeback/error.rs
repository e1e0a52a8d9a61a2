//! Errors of the write-back path.
//!
//! Policy (as for the rest of the cacher): every variant names the object and what was wrong;
//! [`WriteBackError::kind`] says what a caller can do about it, and the api maps each kind
//! exhaustively to an HTTP status, a GraphQL code and an S3 error code. Nothing here is a
//! catch-all: a new failure gets a variant.

use std::fmt;

use crate::cache::{CacheError, CacheErrorKind};
use milepost_store::{StoreError, StoreErrorKind};

/// What a caller can do about a [`WriteBackError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteBackErrorKind {
    /// The request was wrong (a body shorter or longer than announced, a digest that does not
    /// match, an unknown part): fix it and send again.
    Invalid,
    /// The object, upload or part does not exist.
    NotFound,
    /// The office cache has no room for the bytes (pinned or dirty data fills it, or the disk
    /// is full): try later or free space.
    Full,
    /// Local disk or database trouble: retry later; nothing was acknowledged.
    Unavailable,
    /// A conditional write's condition (`If-None-Match: *`, `If-Match`) does not hold: nothing
    /// was written.
    PreconditionFailed,
}

impl fmt::Display for WriteBackErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Invalid => "invalid",
            Self::NotFound => "not found",
            Self::Full => "full",
            Self::Unavailable => "unavailable",
            Self::PreconditionFailed => "precondition failed",
        })
    }
}

/// A write the office could not accept, or a read of an office object that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteBackError {
    #[error("the body of s3://{bucket}/{key} has {received} bytes, but {expected} were announced")]
    WrongLength {
        bucket: String,
        key: String,
        expected: u64,
        received: u64,
    },
    #[error("the body of s3://{bucket}/{key} does not match its Content-MD5 (sent {sent}, computed {computed})")]
    BadDigest {
        bucket: String,
        key: String,
        sent: String,
        computed: String,
    },
    /// An additional checksum (`x-amz-checksum-*`) that does not match the body, is
    /// malformed, or was announced as a trailer and not sent.
    #[error("the body of s3://{bucket}/{key}: {source}")]
    Checksum {
        bucket: String,
        key: String,
        source: crate::checksum::ChecksumError,
    },
    #[error("reading the body of s3://{bucket}/{key} failed: {source}")]
    Body {
        bucket: String,
        key: String,
        source: milepost_store::BoxError,
    },
    #[error("multipart upload {upload_id} does not exist (completed, aborted or never started)")]
    NoSuchUpload { upload_id: String },
    #[error("multipart upload {upload_id}: {problem}")]
    InvalidPart { upload_id: String, problem: String },
    #[error(
        "multipart upload {upload_id}: parts must be listed in ascending order of part number"
    )]
    PartOrder { upload_id: String },
    #[error("multipart upload {upload_id}: part {part} has {size} bytes; every part but the last needs at least {min}")]
    PartTooSmall {
        upload_id: String,
        part: i32,
        size: u64,
        min: u64,
    },
    #[error("s3://{bucket}/{key} does not exist, and the write was conditional on its ETag (If-Match); nothing was written")]
    ConditionOnMissingKey { bucket: String, key: String },
    #[error("s3://{bucket}/{key}: {condition}; nothing was written")]
    PreconditionFailed {
        bucket: String,
        key: String,
        /// The condition and how it failed, in words.
        condition: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Database {
        what: String,
        source: sea_orm::DbErr,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WriteBackError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn db(what: impl Into<String>, source: sea_orm::DbErr) -> Self {
        Self::Database {
            what: what.into(),
            source,
        }
    }

    /// What the caller can do; see [`WriteBackErrorKind`].
    pub fn kind(&self) -> WriteBackErrorKind {
        match self {
            Self::WrongLength { .. }
            | Self::BadDigest { .. }
            | Self::Checksum { .. }
            | Self::Body { .. }
            | Self::InvalidPart { .. }
            | Self::PartOrder { .. }
            | Self::PartTooSmall { .. } => WriteBackErrorKind::Invalid,
            Self::NoSuchUpload { .. } | Self::ConditionOnMissingKey { .. } => {
                WriteBackErrorKind::NotFound
            }
            Self::PreconditionFailed { .. } => WriteBackErrorKind::PreconditionFailed,
            Self::Io { source, .. } if is_disk_full(source) => WriteBackErrorKind::Full,
            Self::Io { .. } | Self::Database { .. } => WriteBackErrorKind::Unavailable,
            Self::Cache(err) => match err.kind() {
                CacheErrorKind::Full => WriteBackErrorKind::Full,
                CacheErrorKind::NotFound => WriteBackErrorKind::NotFound,
                CacheErrorKind::Invalid | CacheErrorKind::InvalidRange => {
                    WriteBackErrorKind::Invalid
                }
                CacheErrorKind::PreconditionFailed
                | CacheErrorKind::Io
                | CacheErrorKind::Upstream
                | CacheErrorKind::Corrupt => WriteBackErrorKind::Unavailable,
            },
            Self::Store(err) => match err.kind() {
                StoreErrorKind::NotFound => WriteBackErrorKind::NotFound,
                StoreErrorKind::Invalid | StoreErrorKind::InvalidRange => {
                    WriteBackErrorKind::Invalid
                }
                _ => WriteBackErrorKind::Unavailable,
            },
        }
    }
}

/// ENOSPC or EDQUOT: the disk (or the quota) is full.
pub(crate) fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(28) | Some(122))
}
