//! `GET /data/{bucket}/{*key}` and `HEAD`: objects served from the office cache, or read
//! through it (streamed to the client while the cache fills, one upstream fetch however many
//! readers). Range requests (206, Content-Range, 416), ETag / Last-Modified, If-None-Match (304).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use milepost_cacher::cache::{CacheErrorKind, FetchContext, ObjectKey};
use milepost_cacher::{ByteRange, StoreErrorKind};
use milepost_schema::entity::object;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::error::{graphql_error_body, ApiError, ErrorCode};
use crate::server::HttpState;

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(graphql_error_body(code, message))).into_response()
}

/// Parses a single-range `Range` header. `None`: no usable range (serve the whole object, as
/// RFC 9110 allows for syntax it does not understand or multiple ranges).
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.trim().split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", suffix) => suffix.parse().ok().map(ByteRange::Suffix),
        (start, "") => start.parse().ok().map(ByteRange::From),
        (start, end) => {
            let (start, end_inclusive): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            (end_inclusive >= start).then_some(ByteRange::Bounded {
                start,
                end_inclusive,
            })
        }
    }
}

fn http_date(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The object as the catalog knows it, or as upstream says when it is not cataloged.
async fn resolve(
    http: &HttpState,
    bucket: &str,
    key: &str,
) -> Result<(ObjectKey, Option<chrono::DateTime<chrono::Utc>>), Response> {
    let app = &http.app;
    // Written or deleted in the office and not yet in S3: the office's version is the object.
    if let Some(version) = app.write_back.version(bucket, key) {
        return match version {
            milepost_cacher::writeback::OfficeVersion::Written {
                object,
                last_modified,
                ..
            } => Ok((object, Some(last_modified))),
            milepost_cacher::writeback::OfficeVersion::Deleted { .. } => Err(error(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                &format!("s3://{bucket}/{key} not found"),
            )),
        };
    }
    let row = object::Entity::find()
        .filter(object::Column::Bucket.eq(bucket))
        .filter(object::Column::Key.eq(key))
        .filter(object::Column::DeletedAt.is_null())
        .one(&app.db)
        .await
        .map_err(|err| {
            let err = ApiError::from(milepost_schema::DbError::from(err));
            error(err.code().http_status(), err.code(), &err.client_message())
        })?;
    if let Some(row) = row {
        let object = ObjectKey {
            bucket: row.bucket,
            key: row.key,
            etag: row.etag,
            size: row.size as u64,
        };
        return Ok((object, row.last_modified));
    }
    match app.store.head(bucket, key).await {
        Ok(meta) => Ok((
            ObjectKey {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                etag: meta.etag,
                size: meta.size,
            },
            meta.last_modified,
        )),
        Err(err) if err.kind() == StoreErrorKind::NotFound => Err(error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            &format!("s3://{bucket}/{key} not found"),
        )),
        Err(err) => {
            tracing::warn!(error = %err, "upstream head failed");
            Err(error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable,
                &format!("cannot reach upstream for s3://{bucket}/{key}, try again shortly"),
            ))
        }
    }
}

pub async fn serve_object(
    State(http): State<HttpState>,
    method: Method,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let app = Arc::clone(&http.app);
    let principal = match crate::graphql::authenticate(&app, &headers).await {
        Ok(principal) => principal,
        Err(err) => return error(err.code().http_status(), err.code(), &err.client_message()),
    };
    // The boundary: a bucket the office does not serve is not found, whatever the service's
    // own credentials could reach, and costs no upstream request.
    if !app.served.serves(&bucket) {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            &format!("bucket {bucket} is not served by this office"),
        );
    }
    if let Err(problem) = milepost_cacher::objects::check_key(&key) {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadInput,
            &format!("key: {problem}"),
        );
    }
    let (object, last_modified) = match resolve(&http, &bucket, &key).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let etag = format!("\"{}\"", object.etag);
    let mut common = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        common.insert(header::ETAG, value);
    }
    if let Some(at) = last_modified {
        if let Ok(value) = HeaderValue::from_str(&http_date(at)) {
            common.insert(header::LAST_MODIFIED, value);
        }
    }
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );

    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if not_modified {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let Some(resolved) = range
        .unwrap_or(ByteRange::All)
        .resolve(object.size)
        .or_else(|| {
            // An empty object has no satisfiable range but is still served whole.
            (object.size == 0 && range.is_none()).then_some((0, 0))
        })
    else {
        common.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{}", object.size))
                .unwrap_or(HeaderValue::from_static("bytes */0")),
        );
        return (StatusCode::RANGE_NOT_SATISFIABLE, common).into_response();
    };
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let length = if object.size == 0 {
        0
    } else {
        resolved.1 - resolved.0 + 1
    };
    if range.is_some() {
        let value = format!("bytes {}-{}/{}", resolved.0, resolved.1, object.size);
        if let Ok(value) = HeaderValue::from_str(&value) {
            common.insert(header::CONTENT_RANGE, value);
        }
    }
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if method == Method::HEAD || length == 0 {
        return (status, common).into_response();
    }
    let ctx = FetchContext {
        dataset: None,
        owner: Some(principal.name.clone()),
    };
    match app
        .cache
        .read(&object, range.unwrap_or(ByteRange::All), &ctx)
        .await
    {
        Ok(read) => {
            let body = Body::from_stream(read.body.map_err(|err| {
                tracing::warn!(error = %err, "object stream failed mid-way");
                std::io::Error::other(err.to_string())
            }));
            (status, common, body).into_response()
        }
        Err(err) => {
            let (status, code) = match err.kind() {
                CacheErrorKind::InvalidRange => {
                    (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BadInput)
                }
                CacheErrorKind::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
                CacheErrorKind::PreconditionFailed => (StatusCode::CONFLICT, ErrorCode::Conflict),
                CacheErrorKind::Invalid => (StatusCode::BAD_REQUEST, ErrorCode::BadInput),
                CacheErrorKind::Full | CacheErrorKind::Upstream | CacheErrorKind::Io => {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                }
                CacheErrorKind::Corrupt => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
            };
            tracing::warn!(error = %err, "cannot serve object");
            error(status, code, &err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-0"),
            Some(ByteRange::Bounded {
                start: 0,
                end_inclusive: 0
            })
        );
        assert_eq!(parse_range("bytes=10-"), Some(ByteRange::From(10)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=5-1"), None);
        assert_eq!(parse_range("bytes=0-1,4-5"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }
}
