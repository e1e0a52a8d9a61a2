//! One vocabulary for every way an office object operation can fail, whichever door the
//! client came in by (`/data`, the S3 gateway). Each [`ObjectErrorKind`] has one HTTP status
//! and one S3 error code, both chosen here in exhaustive matches, so a new kind must choose
//! before anything compiles. The engine's own errors (upstream, cache, write-back, key rules)
//! become an [`ObjectError`] here too, and only here.
//!
//! A client reads a message it can act on. When the fault is the office's (its disk, its
//! database, its upstream), the full error is logged with an incident id and the client gets a
//! generic message carrying that id: no paths, SQL or SDK text leave the process.

use std::fmt;

use chrono::{DateTime, Utc};

use super::key::KeyProblem;
use crate::cache::{CacheError, CacheErrorKind};
use crate::writeback::{WriteBackError, WriteBackErrorKind};
use milepost_store::{StoreError, StoreErrorKind};

/// What failed, in the terms a client of S3 knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectErrorKind {
    /// The bucket is not served by this office (or does not exist).
    NoSuchBucket,
    /// The object does not exist (or was deleted in the office).
    NoSuchKey,
    /// The multipart upload does not exist (completed, aborted, expired or never started).
    NoSuchUpload,
    /// The key breaks one of the office's key rules.
    InvalidKey,
    /// The key is longer than S3 allows.
    KeyTooLong,
    /// An argument of the request is malformed or out of range.
    InvalidArgument,
    /// The request is well formed but cannot be done as asked.
    InvalidRequest,
    /// A feature the office does not offer.
    NotImplemented,
    /// A condition (`If-Match`, `If-None-Match: *`, `If-Unmodified-Since`, a copy source's
    /// conditions) does not hold: nothing was read or written.
    PreconditionFailed,
    /// A conditional read whose object has not changed (304).
    NotModified,
    /// The byte range cannot be satisfied for this object.
    InvalidRange,
    /// The part number is past the object's parts.
    InvalidPartNumber,
    /// The body does not match its Content-MD5 or additional checksum.
    BadDigest,
    /// The body is shorter or longer than announced, or broke off.
    IncompleteBody,
    /// A part named in a completion was not uploaded, or has another ETag.
    InvalidPart,
    /// The parts of a completion are not in ascending order.
    InvalidPartOrder,
    /// A part other than the last is smaller than S3's minimum.
    EntityTooSmall,
    /// A body larger than the office accepts.
    EntityTooLarge,
    /// User metadata over S3's 2 KiB.
    MetadataTooLarge,
    /// The upstream asks the office to slow down: retry later.
    SlowDown,
    /// The office has no room for the bytes (its disk, or a cache full of pinned and
    /// not-yet-uploaded data).
    InsufficientStorage,
    /// The office cannot do it now (its disk, database or upstream failed): retry later.
    Unavailable,
    /// A fault of the office itself.
    Internal,
}

impl ObjectErrorKind {
    /// The HTTP status of the answer.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::NoSuchBucket | Self::NoSuchKey | Self::NoSuchUpload => 404,
            Self::InvalidKey
            | Self::KeyTooLong
            | Self::InvalidArgument
            | Self::InvalidRequest
            | Self::BadDigest
            | Self::IncompleteBody
            | Self::InvalidPart
            | Self::InvalidPartOrder
            | Self::EntityTooSmall
            | Self::EntityTooLarge
            | Self::MetadataTooLarge => 400,
            Self::NotImplemented => 501,
            Self::PreconditionFailed => 412,
            Self::NotModified => 304,
            Self::InvalidRange | Self::InvalidPartNumber => 416,
            Self::SlowDown | Self::Unavailable => 503,
            Self::InsufficientStorage => 507,
            Self::Internal => 500,
        }
    }

    /// The S3 error code (`<Code>` of the XML error). `InsufficientStorage` is not S3's (S3
    /// has no code for a full disk); it is MinIO's, with 507.
    pub const fn s3_code(self) -> &'static str {
        match self {
            Self::NoSuchBucket => "NoSuchBucket",
            Self::NoSuchKey => "NoSuchKey",
            Self::NoSuchUpload => "NoSuchUpload",
            Self::InvalidKey | Self::InvalidArgument => "InvalidArgument",
            Self::KeyTooLong => "KeyTooLongError",
            Self::InvalidRequest => "InvalidRequest",
            Self::NotImplemented => "NotImplemented",
            Self::PreconditionFailed => "PreconditionFailed",
            Self::NotModified => "NotModified",
            Self::InvalidRange => "InvalidRange",
            Self::InvalidPartNumber => "InvalidPartNumber",
            Self::BadDigest => "BadDigest",
            Self::IncompleteBody => "IncompleteBody",
            Self::InvalidPart => "InvalidPart",
            Self::InvalidPartOrder => "InvalidPartOrder",
            Self::EntityTooSmall => "EntityTooSmall",
            Self::EntityTooLarge => "EntityTooLarge",
            Self::MetadataTooLarge => "MetadataTooLarge",
            Self::SlowDown => "SlowDown",
            Self::InsufficientStorage => "InsufficientStorage",
            Self::Unavailable => "ServiceUnavailable",
            Self::Internal => "InternalError",
        }
    }
}

impl fmt::Display for ObjectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.s3_code())
    }
}

/// The version a "not modified" answer must name (RFC 9110 section 15.4.5: a 304 carries the
/// ETag and Last-Modified a 200 would have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unchanged {
    pub etag: String,
    pub last_modified: Option<DateTime<Utc>>,
}

/// An office object operation that failed; see the module documentation.
#[derive(Clone, Debug)]
pub struct ObjectError {
    kind: ObjectErrorKind,
    message: String,
    unchanged: Option<Box<Unchanged>>,
    incident: Option<String>,
    /// For [`InvalidRange`](ObjectErrorKind::InvalidRange): the object's size, when known
    /// (HTTP's 416 names it in `Content-Range: bytes */size`).
    size: Option<u64>,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ObjectError {}

/// What an upstream "not found" is about: the operation's own subject decides, never the
/// error's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Object,
    Bucket,
    Upload,
}

impl ObjectError {
    /// An error whose `message` a client may read.
    pub fn new(kind: ObjectErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            unchanged: None,
            incident: None,
            size: None,
        }
    }

    /// A range that `size` bytes cannot satisfy.
    pub fn unsatisfiable(range: impl fmt::Display, size: u64) -> Self {
        Self {
            size: Some(size),
            ..Self::new(
                ObjectErrorKind::InvalidRange,
                format!("range {range} is not satisfiable: the object has {size} bytes"),
            )
        }
    }

    /// A fault of the office (`kind` is `Unavailable`, `Internal` or `InsufficientStorage`):
    /// `cause` is logged in full under a new incident id; the client reads `what` and the id.
    pub fn incident(kind: ObjectErrorKind, what: &str, cause: &dyn fmt::Display) -> Self {
        let incident = milepost_schema::ids::new_id("err");
        tracing::error!(incident = %incident, error = %cause, kind = %kind, "{what}");
        Self {
            kind,
            message: format!("{what} (incident {incident})"),
            unchanged: None,
            incident: Some(incident),
            size: None,
        }
    }

    /// A conditional read of an object that has not changed.
    pub fn not_modified(etag: &str, last_modified: Option<DateTime<Utc>>) -> Self {
        Self {
            kind: ObjectErrorKind::NotModified,
            message: "not modified".to_owned(),
            unchanged: Some(Box::new(Unchanged {
                etag: etag.to_owned(),
                last_modified,
            })),
            incident: None,
            size: None,
        }
    }

    pub fn no_such_key(bucket: &str, key: &str) -> Self {
        Self::new(
            ObjectErrorKind::NoSuchKey,
            format!("s3://{bucket}/{key} not found"),
        )
    }

    pub fn no_such_bucket(bucket: &str) -> Self {
        Self::new(
            ObjectErrorKind::NoSuchBucket,
            format!("bucket {bucket} is not served by this office"),
        )
    }

    pub fn precondition_failed(what: impl Into<String>) -> Self {
        Self::new(ObjectErrorKind::PreconditionFailed, what)
    }

    pub fn kind(&self) -> ObjectErrorKind {
        self.kind
    }

    /// What the client reads.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For [`NotModified`](ObjectErrorKind::NotModified): the version that did not change.
    pub fn unchanged(&self) -> Option<&Unchanged> {
        self.unchanged.as_deref()
    }

    /// For [`InvalidRange`](ObjectErrorKind::InvalidRange): the object's size, when known.
    pub fn object_size(&self) -> Option<u64> {
        self.size
    }

    /// The incident id logged with the full cause, for the office's faults.
    pub fn incident_id(&self) -> Option<&str> {
        self.incident.as_deref()
    }

    /// An upstream error of an operation on `subject`.
    pub fn from_store(err: StoreError, subject: Subject) -> Self {
        let kind = match err.kind() {
            StoreErrorKind::NotFound => match subject {
                Subject::Object => ObjectErrorKind::NoSuchKey,
                Subject::Bucket => ObjectErrorKind::NoSuchBucket,
                Subject::Upload => ObjectErrorKind::NoSuchUpload,
            },
            StoreErrorKind::PreconditionFailed => ObjectErrorKind::PreconditionFailed,
            StoreErrorKind::InvalidRange => ObjectErrorKind::InvalidRange,
            StoreErrorKind::TooLarge => ObjectErrorKind::EntityTooLarge,
            StoreErrorKind::Throttled => {
                return Self::new(
                    ObjectErrorKind::SlowDown,
                    "the upstream object store asks the office to slow down; retry shortly",
                )
            }
            // The office's own credentials or requests were refused: the office's fault,
            // not the client's, and nothing the client should read about.
            StoreErrorKind::Denied | StoreErrorKind::Invalid => {
                return Self::incident(
                    ObjectErrorKind::Internal,
                    "the office's request to its upstream object store was refused",
                    &err,
                )
            }
            StoreErrorKind::Unavailable | StoreErrorKind::Corrupt => {
                return Self::incident(
                    ObjectErrorKind::Unavailable,
                    "the office cannot reach its upstream object store now; retry shortly",
                    &err,
                )
            }
        };
        // `StoreError`'s text names the operation and s3://bucket/key, nothing internal.
        Self::new(kind, err.to_string())
    }
}

impl From<KeyProblem> for ObjectError {
    fn from(problem: KeyProblem) -> Self {
        let kind = match problem {
            KeyProblem::TooLong { .. } => ObjectErrorKind::KeyTooLong,
            KeyProblem::Empty
            | KeyProblem::ControlCharacter
            | KeyProblem::Backslash
            | KeyProblem::Absolute
            | KeyProblem::DirectoryMarker
            | KeyProblem::EmptySegment
            | KeyProblem::DotSegment
            | KeyProblem::BlankSegment
            | KeyProblem::SegmentTooLong { .. } => ObjectErrorKind::InvalidKey,
        };
        Self::new(kind, format!("key: {problem}"))
    }
}

impl From<CacheError> for ObjectError {
    fn from(err: CacheError) -> Self {
        let kind = match err.kind() {
            CacheErrorKind::NotFound => ObjectErrorKind::NoSuchKey,
            CacheErrorKind::PreconditionFailed => ObjectErrorKind::PreconditionFailed,
            CacheErrorKind::InvalidRange => ObjectErrorKind::InvalidRange,
            CacheErrorKind::Invalid => ObjectErrorKind::InvalidRequest,
            CacheErrorKind::Full => {
                return Self::incident(
                    ObjectErrorKind::InsufficientStorage,
                    "the office cache has no room for this object now",
                    &err,
                )
            }
            CacheErrorKind::Io | CacheErrorKind::Upstream | CacheErrorKind::Corrupt => {
                return Self::incident(
                    ObjectErrorKind::Unavailable,
                    "the office cache cannot serve this object now; retry shortly",
                    &err,
                )
            }
        };
        Self::new(kind, err.to_string())
    }
}

impl From<WriteBackError> for ObjectError {
    fn from(err: WriteBackError) -> Self {
        let kind = match &err {
            WriteBackError::WrongLength { .. } | WriteBackError::Body { .. } => {
                ObjectErrorKind::IncompleteBody
            }
            WriteBackError::BadDigest { .. } => ObjectErrorKind::BadDigest,
            WriteBackError::Checksum { source, .. } if source.is_mismatch() => {
                ObjectErrorKind::BadDigest
            }
            // Malformed, or a trailer announced and not sent.
            WriteBackError::Checksum { .. } => ObjectErrorKind::InvalidRequest,
            WriteBackError::PreconditionFailed { .. } => ObjectErrorKind::PreconditionFailed,
            WriteBackError::NoSuchUpload { .. } => ObjectErrorKind::NoSuchUpload,
            WriteBackError::ConditionOnMissingKey { .. } => ObjectErrorKind::NoSuchKey,
            WriteBackError::PartOrder { .. } => ObjectErrorKind::InvalidPartOrder,
            WriteBackError::InvalidPart { .. } => ObjectErrorKind::InvalidPart,
            WriteBackError::PartTooSmall { .. } => ObjectErrorKind::EntityTooSmall,
            WriteBackError::Cache(_)
            | WriteBackError::Store(_)
            | WriteBackError::Io { .. }
            | WriteBackError::Database { .. } => match err.kind() {
                WriteBackErrorKind::NotFound => ObjectErrorKind::NoSuchKey,
                WriteBackErrorKind::Invalid => ObjectErrorKind::InvalidRequest,
                WriteBackErrorKind::PreconditionFailed => ObjectErrorKind::PreconditionFailed,
                WriteBackErrorKind::Full => {
                    return Self::incident(
                        ObjectErrorKind::InsufficientStorage,
                        "the office has no room for this write now; nothing was stored",
                        &err,
                    )
                }
                WriteBackErrorKind::Unavailable => {
                    return Self::incident(
                        ObjectErrorKind::Unavailable,
                        "the office cannot store this write now; nothing was stored, retry",
                        &err,
                    )
                }
            },
        };
        Self::new(kind, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_hides_its_cause() {
        let err = ObjectError::incident(
            ObjectErrorKind::Unavailable,
            "the office cannot store this write now",
            &"disk /var/lib/milepost/cache/objects/ab: EIO",
        );
        assert!(!err.message().contains("/var/lib"), "{}", err.message());
        let id = err.incident_id().expect("an incident id");
        assert!(err.message().contains(id));
        assert_eq!(err.kind().http_status(), 503);
    }

    #[test]
    fn upstream_not_found_is_decided_by_the_subject() {
        let missing = || StoreError::NotFound {
            target: milepost_store::Target::new("head", "b", "k"),
            what: "http 404".to_owned(),
        };
        assert_eq!(
            ObjectError::from_store(missing(), Subject::Object).kind(),
            ObjectErrorKind::NoSuchKey
        );
        assert_eq!(
            ObjectError::from_store(missing(), Subject::Bucket).kind(),
            ObjectErrorKind::NoSuchBucket
        );
    }

    #[test]
    fn key_problems_have_their_codes() {
        let long = ObjectError::from(KeyProblem::TooLong { bytes: 2000 });
        assert_eq!(long.kind().s3_code(), "KeyTooLongError");
        let dot = ObjectError::from(KeyProblem::DotSegment);
        assert_eq!(dot.kind().s3_code(), "InvalidArgument");
        assert_eq!(dot.kind().http_status(), 400);
    }
}
