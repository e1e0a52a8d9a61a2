//! `GET /data/{bucket}/{*key}` and `HEAD`: a transport adapter over the office's one object
//! API ([`OfficeObjects`](milepost_cacher::objects::OfficeObjects)), which authorizes the
//! bucket and key, resolves the object, evaluates conditions and ranges and reads through
//! the cache. Here: the bearer token, HTTP headers in and out, and errors as the GraphQL
//! contract's JSON body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
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

pub async fn serve_object(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let principal = match app.authenticate(&headers).await {
        Ok(principal) => principal,
        Err(err) => return error(err.code().http_status(), err.code(), &err.client_message()),
    };
    let request = read_request(&headers);
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
