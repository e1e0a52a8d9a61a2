//! Errors of the upstream object store.
//!
//! # Policy
//!
//! Every [`ObjectStore`](super::ObjectStore) call returns [`StoreError`]. Callers branch on
//! [`StoreError::kind`], never on the message or on the variant's text fields:
//!
//! | kind | meaning for the caller | retried by [`RetryingStore`](super::RetryingStore) |
//! | --- | --- | --- |
//! | [`NotFound`](StoreErrorKind::NotFound) | the bucket, the object or the multipart upload does not exist (now) | no |
//! | [`PreconditionFailed`](StoreErrorKind::PreconditionFailed) | the object no longer has the ETag the caller pinned with `If-Match`: it changed, fetch its new metadata | no |
//! | [`InvalidRange`](StoreErrorKind::InvalidRange) | the byte range cannot be satisfied for this object (starts past its end, or the object is empty) | no |
//! | [`Denied`](StoreErrorKind::Denied) | the credentials are missing, wrong, expired or not allowed to do this | no |
//! | [`Throttled`](StoreErrorKind::Throttled) | the upstream asked us to slow down (`503 SlowDown`, `429`) | yes |
//! | [`Unavailable`](StoreErrorKind::Unavailable) | the upstream could not be reached or failed (5xx, timeouts, connection refused or reset, a body cut off) | yes |
//! | [`Invalid`](StoreErrorKind::Invalid) | the request cannot be made as given (a bad name, part number or endpoint, a rejected argument, an upload body that failed to read) | no |
//! | [`TooLarge`](StoreErrorKind::TooLarge) | a body is larger than the caller's limit ([`GetResponse::collect`](super::GetResponse::collect)) | no |
//! | [`Corrupt`](StoreErrorKind::Corrupt) | the upstream answered something inconsistent (a missing ETag, a wrong `Content-Range`, more bytes than announced, a digest mismatch) | no |
//!
//! Messages are lowercase, have no trailing period and name the operation, bucket and key
//! (`get s3://fleet/drives/a.mcap: not found (no such key)`). They may contain the upstream's
//! error code and message, never credentials: the secret key is only ever handed to the SDK's
//! signer. They are for logs and operators; the api crate maps [`StoreErrorKind`] to client
//! codes and writes its own client-facing text.

use std::fmt;

/// A boxed error, as wrapped by [`StoreError::Body`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a caller can do about a [`StoreError`]; see the module documentation for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The bucket, object or multipart upload does not exist.
    NotFound,
    /// The object's ETag is not the one pinned with `If-Match`: the object changed.
    PreconditionFailed,
    /// The byte range cannot be satisfied for this object.
    InvalidRange,
    /// The credentials are missing, wrong or not allowed to do this.
    Denied,
    /// The upstream asked to slow down; retrying later may succeed.
    Throttled,
    /// The upstream could not be reached or failed; retrying later may succeed.
    Unavailable,
    /// The request cannot be made as given.
    Invalid,
    /// A body is larger than the caller's limit.
    TooLarge,
    /// The upstream's answer is inconsistent.
    Corrupt,
}

impl StoreErrorKind {
    /// A short lowercase name, e.g. `not found`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::PreconditionFailed => "precondition failed",
            Self::InvalidRange => "invalid range",
            Self::Denied => "denied",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Invalid => "invalid",
            Self::TooLarge => "too large",
            Self::Corrupt => "corrupt",
        }
    }

    /// Whether an identical call may succeed later: [`Throttled`](Self::Throttled) and
    /// [`Unavailable`](Self::Unavailable).
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable)
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The call an error is about: operation, bucket and key (or prefix). Displayed as
/// `get s3://bucket/key`, `ensure_bucket s3://bucket`, or just the operation when there is no
/// bucket (building a store from settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The operation: `list`, `head`, `get`, `put`, `create_multipart`, `upload_part`,
    /// `complete_multipart`, `abort_multipart`, `delete`, `ensure_bucket`, or `configure`
    /// for settings rejected by [`S3Store::new`](super::S3Store::new).
    pub op: &'static str,
    /// The bucket.
    pub bucket: String,
    /// The key; the prefix for `list`; empty for bucket operations.
    pub key: String,
}

impl Target {
    /// A target for `op` on `bucket`/`key`.
    pub fn new(op: &'static str, bucket: &str, key: &str) -> Self {
        Self {
            op,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.bucket.is_empty(), self.key.is_empty()) {
            (true, _) => f.write_str(self.op),
            (false, true) => write!(f, "{} s3://{}", self.op, self.bucket),
            (false, false) => write!(f, "{} s3://{}/{}", self.op, self.bucket, self.key),
        }
    }
}

/// An error of the upstream object store. Branch on [`kind`](Self::kind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bucket, object or multipart upload does not exist.
    #[error("{target}: not found ({what})")]
    NotFound {
        /// The failed call.
        target: Target,
        /// What is missing, e.g. `no such key`, `no such bucket`, `no such upload`.
        what: String,
    },
    /// The object's ETag is not the one the caller pinned.
    #[error("{target}: precondition failed: {detail}")]
    PreconditionFailed {
        /// The failed call.
        target: Target,
        /// Which ETag was expected (and found, when known).
        detail: String,
    },
    /// The byte range cannot be satisfied.
    #[error("{target}: range {range} is not satisfiable")]
    InvalidRange {
        /// The failed call.
        target: Target,
        /// The range asked for, as an HTTP `Range` value.
        range: String,
    },
    /// The credentials are missing, wrong or not allowed to do this.
    #[error("{target}: access denied ({code})")]
    Denied {
        /// The failed call.
        target: Target,
        /// The upstream's error code (e.g. `AccessDenied`, `SignatureDoesNotMatch`) or status.
        code: String,
    },
    /// The upstream asked to slow down.
    #[error("{target}: throttled by the upstream ({code})")]
    Throttled {
        /// The failed call.
        target: Target,
        /// The upstream's error code (e.g. `SlowDown`) or status.
        code: String,
    },
    /// The upstream could not be reached or failed.
    #[error("{target}: upstream unavailable: {reason}")]
    Unavailable {
        /// The failed call.
        target: Target,
        /// What happened: a status and code, a timeout, a connection error chain.
        reason: String,
    },
    /// The request cannot be made as given.
    #[error("{target}: invalid request: {reason}")]
    Invalid {
        /// The failed call.
        target: Target,
        /// What is wrong, or what the upstream said.
        reason: String,
    },
    /// Reading the body to upload failed (a local file or a client stream).
    #[error("{target}: reading the body to upload failed: {source}")]
    Body {
        /// The failed call.
        target: Target,
        /// The reader's error.
        #[source]
        source: BoxError,
    },
    /// A body is larger than the caller's limit.
    #[error("{target}: body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The failed call.
        target: Target,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The upstream answered something inconsistent.
    #[error("{target}: unexpected answer from the upstream: {reason}")]
    Corrupt {
        /// The failed call.
        target: Target,
        /// What is inconsistent.
        reason: String,
    },
}

impl StoreError {
    /// What the caller can do about this error.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::NotFound { .. } => StoreErrorKind::NotFound,
            Self::PreconditionFailed { .. } => StoreErrorKind::PreconditionFailed,
            Self::InvalidRange { .. } => StoreErrorKind::InvalidRange,
            Self::Denied { .. } => StoreErrorKind::Denied,
            Self::Throttled { .. } => StoreErrorKind::Throttled,
            Self::Unavailable { .. } => StoreErrorKind::Unavailable,
            Self::Invalid { .. } | Self::Body { .. } => StoreErrorKind::Invalid,
            Self::TooLarge { .. } => StoreErrorKind::TooLarge,
            Self::Corrupt { .. } => StoreErrorKind::Corrupt,
        }
    }

    /// Whether an identical call may succeed later (the kind is
    /// [`Throttled`](StoreErrorKind::Throttled) or [`Unavailable`](StoreErrorKind::Unavailable)).
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// The call this error is about.
    pub fn target(&self) -> &Target {
        match self {
            Self::NotFound { target, .. }
            | Self::PreconditionFailed { target, .. }
            | Self::InvalidRange { target, .. }
            | Self::Denied { target, .. }
            | Self::Throttled { target, .. }
            | Self::Unavailable { target, .. }
            | Self::Invalid { target, .. }
            | Self::Body { target, .. }
            | Self::TooLarge { target, .. }
            | Self::Corrupt { target, .. } => target,
        }
    }

    /// An [`Unavailable`](Self::Unavailable) error.
    pub fn unavailable(target: Target, reason: impl Into<String>) -> Self {
        Self::Unavailable {
            target,
            reason: reason.into(),
        }
    }

    /// An [`Invalid`](Self::Invalid) error.
    pub fn invalid(target: Target, reason: impl Into<String>) -> Self {
        Self::Invalid {
            target,
            reason: reason.into(),
        }
    }

    /// A [`Corrupt`](Self::Corrupt) error.
    pub fn corrupt(target: Target, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            target,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_throttled_and_unavailable_are_retryable() {
        let retryable: Vec<_> = [
            StoreErrorKind::NotFound,
            StoreErrorKind::PreconditionFailed,
            StoreErrorKind::InvalidRange,
            StoreErrorKind::Denied,
            StoreErrorKind::Throttled,
            StoreErrorKind::Unavailable,
            StoreErrorKind::Invalid,
            StoreErrorKind::TooLarge,
            StoreErrorKind::Corrupt,
        ]
        .into_iter()
        .filter(|k| k.is_retryable())
        .collect();
        assert_eq!(
            retryable,
            [StoreErrorKind::Throttled, StoreErrorKind::Unavailable]
        );
    }

    #[test]
    fn messages_name_operation_bucket_and_key() {
        let err = StoreError::NotFound {
            target: Target::new("get", "fleet", "drives/a.mcap"),
            what: "no such key".into(),
        };
        assert_eq!(
            err.to_string(),
            "get s3://fleet/drives/a.mcap: not found (no such key)"
        );
        assert_eq!(err.kind(), StoreErrorKind::NotFound);
        assert!(!err.is_retryable());
    }
}
