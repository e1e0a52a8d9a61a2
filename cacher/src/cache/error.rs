//! Errors of the office cache.
//!
//! # Policy
//!
//! Every fallible [`OfficeCache`](super::OfficeCache) call returns [`CacheError`]. Callers
//! branch on [`CacheError::kind`], never on the message:
//!
//! | kind | meaning for the caller | typical client answer |
//! | --- | --- | --- |
//! | [`NotFound`](CacheErrorKind::NotFound) | the object does not exist upstream, or (views) is not cached | NOT_FOUND / 404 |
//! | [`PreconditionFailed`](CacheErrorKind::PreconditionFailed) | the object changed upstream: its ETag is not the one asked for; nothing was cached | CONFLICT / 412 |
//! | [`InvalidRange`](CacheErrorKind::InvalidRange) | the byte range cannot be satisfied for this object; checked before any upstream traffic | 416 |
//! | [`Full`](CacheErrorKind::Full) | the object cannot fit even after evicting every unpinned entry, or the cache disk ran out of space | UNAVAILABLE / 507 |
//! | [`Io`](CacheErrorKind::Io) | the cache's disk or database failed, or a download was interrupted by shutdown | INTERNAL / 500 |
//! | [`Upstream`](CacheErrorKind::Upstream) | S3 failed, refused us, or answered inconsistently (after the store's retries) | UNAVAILABLE / 502 |
//! | [`Corrupt`](CacheErrorKind::Corrupt) | the downloaded bytes failed verification (size or MD5 against the ETag); nothing was cached | INTERNAL / 502 |
//! | [`Invalid`](CacheErrorKind::Invalid) | the input cannot be used as given: a key or view name that would escape its directory, bad settings | BAD_INPUT / 400 |
//!
//! Messages are lowercase, have no trailing period and name the object
//! (`s3://bucket/key`). The [`Display`](std::fmt::Display) text is for logs and operators: it
//! may contain file paths and upstream or database error text, so clients get a message
//! written by the api crate from the kind.

use std::fmt;
use std::io;
use std::sync::Arc;

use milepost_schema::DbError;

use milepost_store::{StoreError, StoreErrorKind};

/// What a caller can do about a [`CacheError`]; see the module documentation for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheErrorKind {
    /// The object does not exist upstream, or is not cached where it must be.
    NotFound,
    /// The object changed upstream (its ETag is not the one asked for).
    PreconditionFailed,
    /// The byte range cannot be satisfied.
    InvalidRange,
    /// The cache cannot make room for the object, or its disk is full.
    Full,
    /// The cache's disk or database failed.
    Io,
    /// The upstream failed or answered inconsistently.
    Upstream,
    /// Downloaded bytes failed verification.
    Corrupt,
    /// The input cannot be used as given.
    Invalid,
}

impl CacheErrorKind {
    /// A short lowercase name, e.g. `not found`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::PreconditionFailed => "precondition failed",
            Self::InvalidRange => "invalid range",
            Self::Full => "full",
            Self::Io => "i/o error",
            Self::Upstream => "upstream error",
            Self::Corrupt => "corrupt",
            Self::Invalid => "invalid",
        }
    }
}

impl fmt::Display for CacheErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the office cache. Branch on [`kind`](Self::kind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// An upstream call failed; the message names the operation, bucket and key.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The byte range cannot be satisfied for this object.
    #[error("range {range} of {object} is not satisfiable: the object has {size} bytes")]
    InvalidRange {
        /// The object, `s3://bucket/key`.
        object: String,
        /// The range asked for, as an HTTP `Range` value.
        range: String,
        /// The object's size.
        size: u64,
    },
    /// The object cannot fit even after evicting every unpinned entry.
    #[error(
        "cache full: {object} needs {needed} bytes; capacity {capacity} bytes, used {used}, \
         pinned {pinned}, not evictable now (pinned or downloading) {unevictable}"
    )]
    Full {
        /// The object, `s3://bucket/key`.
        object: String,
        /// Its size.
        needed: u64,
        /// The cache's capacity.
        capacity: u64,
        /// Bytes held by entries, ready and downloading.
        used: u64,
        /// Bytes held by pinned entries.
        pinned: u64,
        /// Bytes held by pinned entries and downloads in progress.
        unevictable: u64,
    },
    /// The cache disk has no space left (`ENOSPC`).
    #[error("no space left on the cache disk while {context}")]
    DiskFull {
        /// What was being done, naming the object or file.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file operation of the cache failed.
    #[error("cache i/o failed while {context}: {source}")]
    Io {
        /// What was being done, naming the object or file.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A database operation of the cache failed.
    #[error("cache database failed while {context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: DbError,
    },
    /// The office cluster's coordination failed (a claim on the object's download).
    #[error("office cluster coordination failed while {context}: {source}")]
    Cluster {
        /// What was being done, naming the object.
        context: String,
        /// The error.
        #[source]
        source: milepost_cluster::ClusterError,
    },
    /// The object must be cached for this operation and is not.
    #[error("{object} is not cached")]
    NotCached {
        /// The object, `s3://bucket/key`.
        object: String,
    },
    /// The downloaded bytes failed verification; nothing was cached.
    #[error("{object} failed verification: {reason}")]
    Corrupt {
        /// The object, `s3://bucket/key`.
        object: String,
        /// What did not match.
        reason: String,
    },
    /// The input cannot be used as given.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was rejected, with its value.
        what: String,
        /// Why.
        reason: String,
    },
    /// A download stopped before finishing: the cache is shutting down, or its task failed.
    #[error("fetching {object} was interrupted: {reason}")]
    Interrupted {
        /// The object, `s3://bucket/key`.
        object: String,
        /// Why.
        reason: &'static str,
    },
    /// The error of a download this call joined (single-flight): every caller waiting for
    /// the same object gets the same error.
    #[error(transparent)]
    Shared(Arc<CacheError>),
}

impl CacheError {
    /// What the caller can do about this error.
    pub fn kind(&self) -> CacheErrorKind {
        match self {
            Self::Store(err) => match err.kind() {
                StoreErrorKind::NotFound => CacheErrorKind::NotFound,
                StoreErrorKind::PreconditionFailed => CacheErrorKind::PreconditionFailed,
                StoreErrorKind::InvalidRange => CacheErrorKind::InvalidRange,
                StoreErrorKind::Invalid => CacheErrorKind::Invalid,
                StoreErrorKind::Denied
                | StoreErrorKind::Throttled
                | StoreErrorKind::Unavailable
                | StoreErrorKind::TooLarge
                | StoreErrorKind::Corrupt => CacheErrorKind::Upstream,
            },
            Self::InvalidRange { .. } => CacheErrorKind::InvalidRange,
            Self::Full { .. } | Self::DiskFull { .. } => CacheErrorKind::Full,
            Self::Io { .. }
            | Self::Database { .. }
            | Self::Cluster { .. }
            | Self::Interrupted { .. } => CacheErrorKind::Io,
            Self::NotCached { .. } => CacheErrorKind::NotFound,
            Self::Corrupt { .. } => CacheErrorKind::Corrupt,
            Self::Invalid { .. } => CacheErrorKind::Invalid,
            Self::Shared(inner) => inner.kind(),
        }
    }

    /// A file error while doing `context`: [`DiskFull`](Self::DiskFull) for `ENOSPC`,
    /// [`Io`](Self::Io) otherwise.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if source.kind() == io::ErrorKind::StorageFull {
            Self::DiskFull { context, source }
        } else {
            Self::Io { context, source }
        }
    }

    pub(crate) fn database(context: impl Into<String>, source: impl Into<DbError>) -> Self {
        Self::Database {
            context: context.into(),
            source: source.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use milepost_store::Target;

    #[test]
    fn store_errors_keep_their_meaning() {
        let err = CacheError::from(StoreError::PreconditionFailed {
            target: Target::new("get", "fleet", "a.mcap"),
            detail: "asked for etag x, the upstream answered with etag y".into(),
        });
        assert_eq!(err.kind(), CacheErrorKind::PreconditionFailed);
        assert!(err.to_string().contains("s3://fleet/a.mcap"), "{err}");
        let err = CacheError::from(StoreError::unavailable(
            Target::new("get", "b", "k"),
            "reset",
        ));
        assert_eq!(err.kind(), CacheErrorKind::Upstream);
        let shared = CacheError::Shared(Arc::new(err));
        assert_eq!(shared.kind(), CacheErrorKind::Upstream);
    }

    #[test]
    fn a_full_disk_is_full() {
        let err = CacheError::io(
            "writing s3://b/k to the staging file",
            io::Error::from(io::ErrorKind::StorageFull),
        );
        assert_eq!(err.kind(), CacheErrorKind::Full);
        assert!(err
            .to_string()
            .starts_with("no space left on the cache disk while writing s3://b/k"));
        let err = CacheError::io("reading", io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(err.kind(), CacheErrorKind::Io);
    }
}
