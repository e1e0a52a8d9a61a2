//! Opening an MCAP log in a browser viewer (Foxglove, Lichtblick): the links on file rows
//! lead here, and the URL is presigned only when clicked (`presignData`), so rendering a page
//! signs nothing and every URL handed out is fresh.
//!
//! - `/open/{viewer}/{bucket}/{*key}`: 303 to the viewer's URL template (`ui.viewer_urls`)
//!   with the log's presigned `/data` URL in it.
//! - `/presign/{bucket}/{*key}`: the presigned URL as text, for the "Copy URL" button.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::fetch;
use crate::html::{esc, url, url_path};
use crate::layout::not_found;
use crate::session::Session;
use crate::{see_other, w, UiState};

/// How long a URL handed to a viewer stays valid: a working session in the viewer.
const VIEWER_TTL_SECONDS: i64 = 12 * 3600;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PresignData {
    presign_data: Presigned,
}

#[derive(Debug, Deserialize)]
struct Presigned {
    path: String,
}

/// Whether a key is an MCAP log the viewers open.
pub fn is_mcap(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with(".mcap")
}

/// The viewer links and the copy button of a file row (nothing for files that are not MCAP).
pub fn links(b: &mut String, viewers: &[String], bucket: &str, key: &str) {
    if !is_mcap(key) || viewers.is_empty() {
        return;
    }
    for name in viewers {
        w!(
            b,
            r#"<a class="open-viewer" href="/open/{}/{}/{}" target="_blank" rel="noopener">Open in {}</a> "#,
            url(name),
            url(bucket),
            url_path(key),
            esc(name)
        );
    }
    w!(
        b,
        r#"<button type="button" class="copy-url" data-presign="/presign/{}/{}">Copy URL</button>"#,
        url(bucket),
        url_path(key)
    );
}

/// The absolute presigned URL of `bucket/key` for the session's token.
async fn presign(
    ui: &UiState,
    session: &Session,
    headers: &HeaderMap,
    bucket: &str,
    key: &str,
) -> Result<String, Response> {
    let data: PresignData = fetch(
        ui,
        session,
        "query($bucket: String!, $key: String!, $ttl: Int) { presignData(bucket: $bucket, key: $key, ttlSeconds: $ttl) { path } }",
        json!({ "bucket": bucket, "key": key, "ttl": VIEWER_TTL_SECONDS }),
    )
    .await?;
    let base = match &ui.settings.public_url {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    Ok(format!("{base}{}", data.presign_data.path))
}

pub async fn open(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Path((viewer, bucket, key)): Path<(String, String, String)>,
) -> Response {
    let Some((_, template)) = ui.settings.viewers.iter().find(|(name, _)| *name == viewer) else {
        return not_found(&format!("Viewer {viewer}"));
    };
    match presign(&ui, &session, &headers, &bucket, &key).await {
        Ok(signed) => see_other(&template.replace("{url}", &url(&signed))),
        Err(response) => response,
    }
}

pub async fn presigned(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    match presign(&ui, &session, &headers, &bucket, &key).await {
        Ok(signed) => {
            let mut response = (StatusCode::OK, signed).into_response();
            let out = response.headers_mut();
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(response) => response,
    }
}
