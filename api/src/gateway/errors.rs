//! Mapping of the office's errors to S3 error codes: every kind of every error the gateway
//! can meet has one code (the match arms are exhaustive, so a new kind must choose). Messages
//! name the object and what was wrong; internals (paths, SQL) are logged, never sent.

use milepost_cacher::writeback::{WriteBackError, WriteBackErrorKind};
use milepost_cacher::{CacheError, CacheErrorKind, StoreError, StoreErrorKind};
use s3s::dto::{Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode};

/// An upstream or overlay store error as an S3 error.
pub fn store(err: StoreError) -> S3Error {
    let code = match err.kind() {
        StoreErrorKind::NotFound => {
            if err.to_string().contains("bucket") {
                S3ErrorCode::NoSuchBucket
            } else {
                S3ErrorCode::NoSuchKey
            }
        }
        StoreErrorKind::PreconditionFailed => S3ErrorCode::PreconditionFailed,
        StoreErrorKind::InvalidRange => S3ErrorCode::InvalidRange,
        StoreErrorKind::Denied => S3ErrorCode::AccessDenied,
        StoreErrorKind::Throttled => S3ErrorCode::SlowDown,
        StoreErrorKind::Unavailable | StoreErrorKind::Corrupt => S3ErrorCode::ServiceUnavailable,
        StoreErrorKind::Invalid => S3ErrorCode::InvalidRequest,
        StoreErrorKind::TooLarge => S3ErrorCode::EntityTooLarge,
    };
    if matches!(code, S3ErrorCode::ServiceUnavailable) {
        tracing::warn!(error = %err, "s3 gateway: upstream failed");
    }
    S3Error::with_message(code, err.to_string())
}

/// An office cache error as an S3 error.
pub fn cache(err: CacheError) -> S3Error {
    let code = match err.kind() {
        CacheErrorKind::NotFound => S3ErrorCode::NoSuchKey,
        CacheErrorKind::PreconditionFailed => S3ErrorCode::PreconditionFailed,
        CacheErrorKind::InvalidRange => S3ErrorCode::InvalidRange,
        CacheErrorKind::Invalid => S3ErrorCode::InvalidRequest,
        CacheErrorKind::Full => return full(err.to_string()),
        CacheErrorKind::Io | CacheErrorKind::Upstream | CacheErrorKind::Corrupt => {
            tracing::warn!(error = %err, "s3 gateway: cache read failed");
            return S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "the office cache cannot serve this object now, try again shortly",
            );
        }
    };
    S3Error::with_message(code, err.to_string())
}

/// A write-back error as an S3 error.
pub fn write_back(err: WriteBackError) -> S3Error {
    if err.kind() == WriteBackErrorKind::Full {
        tracing::warn!(error = %err, "s3 gateway: no room for a write");
        return full(err.to_string());
    }
    let code = match &err {
        WriteBackError::WrongLength { .. } | WriteBackError::Body { .. } => {
            S3ErrorCode::IncompleteBody
        }
        WriteBackError::BadDigest { .. } => S3ErrorCode::BadDigest,
        WriteBackError::Checksum { source, .. } if source.is_mismatch() => S3ErrorCode::BadDigest,
        // Malformed, or a trailer announced and not sent.
        WriteBackError::Checksum { .. } => S3ErrorCode::InvalidRequest,
        WriteBackError::PreconditionFailed { .. } => S3ErrorCode::PreconditionFailed,
        WriteBackError::NoSuchUpload { .. } => S3ErrorCode::NoSuchUpload,
        WriteBackError::InvalidPart { problem, .. } if problem.contains("ascending") => {
            S3ErrorCode::InvalidPartOrder
        }
        WriteBackError::InvalidPart { .. } => S3ErrorCode::InvalidPart,
        WriteBackError::PartTooSmall { .. } => S3ErrorCode::EntityTooSmall,
        WriteBackError::Store(_) | WriteBackError::Cache(_) => match err.kind() {
            WriteBackErrorKind::NotFound => S3ErrorCode::NoSuchKey,
            WriteBackErrorKind::Invalid => S3ErrorCode::InvalidRequest,
            WriteBackErrorKind::PreconditionFailed => S3ErrorCode::PreconditionFailed,
            WriteBackErrorKind::Full | WriteBackErrorKind::Unavailable => {
                S3ErrorCode::ServiceUnavailable
            }
        },
        _ => match err.kind() {
            WriteBackErrorKind::Invalid => S3ErrorCode::InvalidRequest,
            WriteBackErrorKind::NotFound => S3ErrorCode::NoSuchKey,
            WriteBackErrorKind::PreconditionFailed => S3ErrorCode::PreconditionFailed,
            WriteBackErrorKind::Full | WriteBackErrorKind::Unavailable => {
                tracing::error!(error = %err, "s3 gateway: cannot store a write");
                return S3Error::with_message(
                    S3ErrorCode::ServiceUnavailable,
                    "the office cannot store this write now; nothing was stored, try again",
                );
            }
        },
    };
    S3Error::with_message(code, err.to_string())
}

/// 304 Not Modified of a conditional GET or HEAD: no body, and the object's ETag and
/// Last-Modified, as a 304 must carry (RFC 7232 section 4.1).
pub fn not_modified(etag: &str, last_modified: Option<&Timestamp>) -> S3Error {
    let mut err = S3Error::new(S3ErrorCode::NotModified);
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&format!("\"{etag}\"")) {
        headers.insert(http::header::ETAG, value);
    }
    if let Some(at) = last_modified {
        let mut date = Vec::new();
        if at.format(TimestampFormat::HttpDate, &mut date).is_ok() {
            if let Ok(value) = http::HeaderValue::from_bytes(&date) {
                headers.insert(http::header::LAST_MODIFIED, value);
            }
        }
    }
    err.set_headers(headers);
    err
}

/// A `partNumber` past the object's parts: S3's `InvalidPartNumber` with 416 (s3s has no
/// such code).
pub fn invalid_part_number(part: i32) -> S3Error {
    let mut err = S3Error::with_message(
        S3ErrorCode::Custom("InvalidPartNumber".into()),
        format!("the requested part number {part} is not satisfiable"),
    );
    err.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
    err
}

/// The office has no room (the disk, or a cache full of pinned and dirty data): S3 has no
/// code for it, so `InsufficientStorage` with 507, as MinIO does.
fn full(message: String) -> S3Error {
    let mut err = S3Error::with_message(S3ErrorCode::Custom("InsufficientStorage".into()), message);
    err.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
    err
}
