//! `GET /data/{bucket}/{*key}` and `HEAD`: a transport adapter over the office's one object
//! API ([`OfficeObjects`](milepost_cacher::objects::OfficeObjects)), which authorizes the
//! bucket and key, resolves the object, evaluates conditions and ranges and reads through
//! the cache. Here: the bearer token (or a presigned URL's proof, see
//! [`crate::auth::presign`]), HTTP headers in and out, CORS for browser-based viewers
//! (`server.cors_origins`), and errors as the GraphQL contract's JSON body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use milepost_cacher::objects::{
    parse_range_header, EtagMatch, ObjectError, ObjectErrorKind, ReadConditions, ReadRequest,
};
use milepost_cacher::FetchContext;

use crate::app::AppState;
use crate::error::{graphql_error_body, object_error_code, ErrorCode};

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(graphql_error_body(code, message))).into_response()
}

fn http_date(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An HTTP date of a request header; one that does not parse is ignored, as RFC 9110 section
/// 13.1.3 asks.
fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<chrono::DateTime<chrono::Utc>> {
    let value = header_text(headers, name)?;
    chrono::DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|at| at.with_timezone(&chrono::Utc))
}

fn read_request(headers: &HeaderMap) -> ReadRequest {
    ReadRequest {
        range: header_text(headers, &header::RANGE).and_then(parse_range_header),
        part_number: None,
        conditions: ReadConditions {
            if_match: header_text(headers, &header::IF_MATCH).and_then(EtagMatch::parse_header),
            if_none_match: header_text(headers, &header::IF_NONE_MATCH)
                .and_then(EtagMatch::parse_header),
            if_modified_since: header_date(headers, &header::IF_MODIFIED_SINCE),
            if_unmodified_since: header_date(headers, &header::IF_UNMODIFIED_SINCE),
        },
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The answer to an [`ObjectError`]: its status, the contract's JSON body, and what HTTP
/// wants beside it (a 304's validators, a 416's `Content-Range`).
fn object_error(err: &ObjectError) -> Response {
    let status =
        StatusCode::from_u16(err.kind().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    if let Some(unchanged) = err.unchanged() {
        insert(
            &mut headers,
            header::ETAG,
            &format!("\"{}\"", unchanged.etag),
        );
        if let Some(at) = unchanged.last_modified {
            insert(&mut headers, header::LAST_MODIFIED, &http_date(at));
        }
        return (status, headers).into_response();
    }
    if err.kind() == ObjectErrorKind::InvalidRange {
        if let Some(size) = err.object_size() {
            insert(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
        }
    }
    let body = graphql_error_body(object_error_code(err.kind()), err.message());
    (status, headers, Json(body)).into_response()
}

/// The `/data` path of an object, each segment percent-encoded (RFC 3986 unreserved
/// characters stay): what `pull` requests and presigned URLs sign.
pub fn data_path(bucket: &str, key: &str) -> String {
    format!(
        "/data/{}/{}",
        milepost_ui::html::url(bucket),
        milepost_ui::html::url_path(key)
    )
}

/// Request headers a cross-origin page may send to `/data`.
const CORS_ALLOW_HEADERS: &str =
    "Authorization, Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since";
/// Response headers a cross-origin page may read: what a ranged reader needs.
const CORS_EXPOSE_HEADERS: &str =
    "Content-Range, Accept-Ranges, ETag, Content-Length, Content-Type, Last-Modified";

/// The CORS headers for a request from `origin`, when `server.cors_origins` allows it.
fn cors_headers(app: &AppState, request: &HeaderMap, headers: &mut HeaderMap) {
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = header_text(request, &header::ORIGIN) else {
        return;
    };
    if app.config.server.cors_allows(origin) {
        insert(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        );
    }
}

/// `OPTIONS /data/...`: the CORS preflight of a viewer's ranged reads. An origin that
/// `server.cors_origins` does not allow gets no `Access-Control-Allow-Origin`, so the
/// browser refuses the read.
pub async fn preflight(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut out = HeaderMap::new();
    cors_headers(&app, &headers, &mut out);
    if out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_ALLOW_HEADERS),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    (StatusCode::NO_CONTENT, out).into_response()
}

pub async fn serve_object(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let mut response = read_object(&app, method, &headers, query.as_deref(), bucket, key).await;
    cors_headers(&app, &headers, response.headers_mut());
    response
}

async fn read_object(
    app: &AppState,
    method: Method,
    headers: &HeaderMap,
    query: Option<&str>,
    bucket: String,
    key: String,
) -> Response {
    let principal = match app
        .authenticate_data_read(headers, query, &bucket, &key)
        .await
    {
        Ok(principal) => principal,
        Err(err) => return error(err.code().http_status(), err.code(), &err.client_message()),
    };
    let request = read_request(headers);
    let reader = FetchContext {
        dataset: None,
        owner: Some(principal.name.clone()),
    };
    let (head, body) = if method == Method::HEAD {
        match app.objects.head(&bucket, &key, &request).await {
            Ok(head) => (head, None),
            Err(err) => return object_error(&err),
        }
    } else {
        match app.objects.get(&bucket, &key, &request, &reader).await {
            Ok(read) => (read.head, Some(read.body)),
            Err(err) => return object_error(&err),
        }
    };
    let mut common = HeaderMap::new();
    insert(&mut common, header::ETAG, &format!("\"{}\"", head.etag()));
    if let Some(at) = head.resolved.last_modified {
        insert(&mut common, header::LAST_MODIFIED, &http_date(at));
    }
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The representation headers the object was written with, as S3 answers them.
    let metadata = &head.resolved.metadata;
    insert(
        &mut common,
        header::CONTENT_TYPE,
        metadata
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    for (name, value) in [
        (header::CACHE_CONTROL, &metadata.cache_control),
        (header::CONTENT_DISPOSITION, &metadata.content_disposition),
        (header::CONTENT_ENCODING, &metadata.content_encoding),
        (header::CONTENT_LANGUAGE, &metadata.content_language),
        (header::EXPIRES, &metadata.expires),
    ] {
        if let Some(value) = value {
            insert(&mut common, name, value);
        }
    }
    if let Some(range) = head.content_range() {
        insert(&mut common, header::CONTENT_RANGE, &range);
    }
    common.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(head.content_length),
    );
    let status = if head.range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    match body {
        Some(body) if head.content_length > 0 => {
            (status, common, Body::from_stream(body)).into_response()
        }
        _ => (status, common).into_response(),
    }
}
