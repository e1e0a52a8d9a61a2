//! Reservations: Reserve, the progress page (a live bar until READY, then where the data is
//! and how to get it), progress as JSON for app.js, my reservations, extend and release.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::datasets::{
    load, ready_by, render_dataset, reserve as reserve_dataset, ttl_seconds, ReserveForm,
};
use super::{error_for, fetch, mutate};
use crate::html::{self, esc, field_error, invalid_attrs, url, url_path};
use crate::layout::{frame, frame_with_head, not_found, status_of, Me, Nav, ME};
use crate::session::{check_post, Form, Session};
use crate::{html_response, see_other, w, GraphqlError, UiState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub id: String,
    pub state: String,
    pub owner: String,
    pub purpose: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub objects_total: i64,
    pub objects_done: i64,
    pub bytes_total: i64,
    pub bytes_done: i64,
    pub bytes_from_upstream: i64,
    pub local_path: Option<String>,
    pub error: Option<String>,
    #[serde(default)]
    pub ready_by: Option<DateTime<Utc>>,
    #[serde(default)]
    pub scheduled_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub estimated_ready_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub deadline_warning: Option<String>,
    pub dataset: ReservedDataset,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedDataset {
    pub name: String,
    pub version: i32,
    pub manifest_key: String,
    pub manifest_bucket: String,
    pub objects: super::entities::Objects,
}

#[derive(Debug, Deserialize)]
pub struct ReservationData {
    pub me: Me,
    pub reservation: Option<Reservation>,
}

const FIELDS: &str = "id state owner purpose createdAt expiresAt objectsTotal objectsDone bytesTotal bytesDone bytesFromUpstream localPath error readyBy scheduledStart estimatedReadyAt deadlineWarning";

fn is_final(state: &str) -> bool {
    matches!(state, "READY" | "FAILED" | "RELEASED" | "EXPIRED")
}

async fn load_reservation(
    ui: &UiState,
    session: &Session,
    id: &str,
) -> Result<ReservationData, Response> {
    let query = format!(
        r#"query($id: ID!) {{ {ME} reservation(id: $id) {{ {FIELDS}
    dataset {{ name version manifestKey manifestBucket objects(first: 1) {{ totalCount edges {{ node {{ bucket key size cached }} }} }} }} }} }}"#
    );
    fetch(ui, session, &query, json!({ "id": id })).await
}

pub async fn page_handler(
    ui: &UiState,
    session: &Session,
    headers: &HeaderMap,
    id: &str,
    error: Option<&GraphqlError>,
    ttl_form: &str,
) -> Response {
    let data = match load_reservation(ui, session, id).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let Some(r) = &data.reservation else {
        return not_found(&format!("Reservation {id}"));
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html_response(
        status,
        render(ui, session, headers, &data.me, r, error, ttl_form),
    )
}

pub async fn page(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    page_handler(&ui, &session, &headers, &id, None, "24").await
}

/// Average rate since the reservation was made, and the time left at that rate.
fn rate_and_eta(r: &Reservation) -> (String, String) {
    let elapsed = (Utc::now() - r.created_at).num_milliseconds().max(1) as f64 / 1000.0;
    let rate = r.bytes_done as f64 / elapsed;
    let left = (r.bytes_total - r.bytes_done).max(0) as f64;
    let eta = if r.state == "READY" || left == 0.0 {
        "done".to_owned()
    } else if rate > 0.0 {
        html::duration((left / rate).ceil() as i64)
    } else {
        "unknown".to_owned()
    };
    (format!("{}/s", html::bytes(rate as i64)), eta)
}

/// A reservation with a deadline: when it must be ready, when its download starts and the
/// live estimate; a warning when the estimate slips past the deadline.
fn schedule_line(b: &mut String, r: &Reservation, ready_by: &DateTime<Utc>) {
    w!(
        b,
        r#"<p class="meta" id="res-schedule">Ready by <strong>{}</strong>{}{}</p>"#,
        html::time(ready_by),
        r.scheduled_start
            .map(|at| format!(" · download window from {}", html::time(&at)))
            .unwrap_or_default(),
        r.estimated_ready_at
            .map(|at| format!(
                r#" · estimated <span id="res-estimate">{}</span>"#,
                html::time(&at)
            ))
            .unwrap_or_default()
    );
    if let Some(warning) = &r.deadline_warning {
        w!(
            b,
            r#"<p class="error-box" role="alert" id="res-deadline-warning">Deadline at risk: {}</p>"#,
            esc(warning)
        );
    }
}

fn command(b: &mut String, id: &str, label: &str, text: &str) {
    w!(
        b,
        r#"<div class="command"><div class="command-head"><span>{}</span><button type="button" class="copy secondary" data-copy="{}">Copy</button></div><pre><code id="{}">{}</code></pre></div>"#,
        esc(label),
        esc(id),
        esc(id),
        esc(text)
    );
}

/// Single quotes for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn render(
    ui: &UiState,
    session: &Session,
    headers: &HeaderMap,
    me: &Me,
    r: &Reservation,
    error: Option<&GraphqlError>,
    ttl_form: &str,
) -> String {
    let mut b = String::with_capacity(12 * 1024);
    w!(
        &mut b,
        r#"<p class="crumbs"><a href="/reservations">My reservations</a> / {}</p><h1>Reservation of <a href="/datasets/{}?version={}">{}@{}</a></h1><p class="meta"><span class="state {}" id="res-state">{}</span> <span class="mono">{}</span> · by {} · expires {}{}</p>"#,
        esc(&r.id),
        url(&r.dataset.name),
        r.dataset.version,
        esc(&r.dataset.name),
        r.dataset.version,
        esc(&r.state.to_ascii_lowercase()),
        esc(&r.state),
        esc(&r.id),
        esc(&r.owner),
        html::time(&r.expires_at),
        r.purpose
            .as_deref()
            .map(|p| format!(" · {}", esc(p)))
            .unwrap_or_default()
    );
    if let Some(ready_by) = &r.ready_by {
        schedule_line(&mut b, r, ready_by);
    }
    let (rate, eta) = rate_and_eta(r);
    w!(
        &mut b,
        r#"<section class="progress-panel" id="progress" data-id="{}" data-state="{}" aria-labelledby="progress-title"><h2 id="progress-title">Progress</h2><progress id="progress-bar" max="{}" value="{}" aria-describedby="progress-text">{}</progress><p id="progress-text" aria-live="polite"><span id="bytes-done">{}</span> of <span id="bytes-total">{}</span> · <span id="objects-done">{}</span>/<span id="objects-total">{}</span> files · <span id="rate">{}</span> · ETA <span id="eta">{}</span></p><p class="muted">Already in the office: <span id="bytes-local">{}</span> · fetched from upstream so far: <span id="bytes-upstream">{}</span>.</p></section>"#,
        esc(&r.id),
        esc(&r.state),
        r.bytes_total.max(1),
        if r.bytes_total == 0 && r.state == "READY" {
            1
        } else {
            r.bytes_done
        },
        html::percent(r.bytes_done, r.bytes_total),
        html::bytes(r.bytes_done),
        html::bytes(r.bytes_total),
        r.objects_done,
        r.objects_total,
        rate,
        eta,
        html::bytes((r.bytes_done - r.bytes_from_upstream).max(0)),
        html::bytes(r.bytes_from_upstream)
    );
    if let Some(message) = &r.error {
        w!(
            &mut b,
            r#"<p class="error-box" role="alert">{}</p>"#,
            esc(message)
        );
    }
    if let (Some(path), "READY") = (&r.local_path, r.state.as_str()) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        b.push_str(r#"<section id="ready"><h2>Ready</h2>"#);
        w!(
            &mut b,
            r#"<p>The files are in <code id="local-path">{}</code> on the office server, laid out as in the bucket.</p>"#,
            esc(path)
        );
        command(
            &mut b,
            "cmd-path",
            "Copy the files",
            &format!("cp -r {} ./{}", shell_quote(path), r.dataset.name),
        );
        if let Some(first) = r.dataset.objects.edges.first() {
            command(
                &mut b,
                "cmd-data",
                "Or read any file over HTTP from the office cache (/data)",
                &format!(
                    "curl -fH \"Authorization: Bearer $MILEPOST_TOKEN\" -O http://{host}/data/{}/{}",
                    url(&first.node.bucket),
                    url_path(&first.node.key)
                ),
            );
        }
        let endpoint = ui
            .settings
            .s3_endpoint
            .as_deref()
            .map(|e| format!(" --endpoint-url {e}"))
            .unwrap_or_default();
        command(
            &mut b,
            "cmd-aws",
            "The manifest (bucket, key, size, ETag of every file) from upstream S3",
            &format!(
                "aws s3 cp{endpoint} s3://{}/{} ./{}-v{}.parquet",
                r.dataset.manifest_bucket,
                r.dataset.manifest_key,
                r.dataset.name,
                r.dataset.version
            ),
        );
        b.push_str("</section>");
    }
    let may_change = me.can_write()
        && (me.is_admin() || me.name == r.owner)
        && matches!(r.state.as_str(), "PENDING" | "MATERIALIZING" | "READY");
    if may_change {
        actions(&mut b, session, &r.id, error, ttl_form, "page");
    }
    let head = if is_final(&r.state) {
        ""
    } else {
        // Without JavaScript the page refreshes itself until the reservation settles.
        r#"<noscript><meta http-equiv="refresh" content="2"></noscript>"#
    };
    frame_with_head(
        "Reservation",
        Nav::Reservations,
        Some((me, session)),
        &b,
        head,
    )
}

/// Extend and Release for one reservation; `back` says where to return ("page" or "list").
fn actions(
    b: &mut String,
    session: &Session,
    id: &str,
    error: Option<&GraphqlError>,
    ttl: &str,
    back: &str,
) {
    let ttl_error = error_for(error, &["ttlSeconds", "ttl"]);
    let field = format!("extend-{id}");
    w!(
        b,
        r#"<div class="actions"><form method="post" action="/reservations/{}/extend" class="inline-form" novalidate><input type="hidden" name="csrf" value="{}"><input type="hidden" name="back" value="{}"><div><label for="{}">Extend to (hours from now)</label><input id="{}" name="ttl_hours" type="number" step="any" value="{}" class="short"{}>"#,
        url(id),
        esc(&session.csrf),
        esc(back),
        esc(&field),
        esc(&field),
        esc(ttl),
        invalid_attrs(&field, ttl_error)
    );
    field_error(b, &field, ttl_error);
    w!(
        b,
        r#"</div><button type="submit" class="secondary">Extend</button></form><form method="post" action="/reservations/{}/release" class="inline-form"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="back" value="{}"><button type="submit" class="danger">Release</button></form></div>"#,
        url(id),
        esc(&session.csrf),
        esc(back)
    );
    if let Some(e) = error.filter(|_| ttl_error.is_none()) {
        w!(
            b,
            r#"<p class="error-box" role="alert">{}</p>"#,
            esc(&e.message)
        );
    }
}

/// Progress as JSON for app.js, read through the same API with the session's token.
pub async fn progress(
    State(ui): State<UiState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let query = format!("query($id: ID!) {{ reservation(id: $id) {{ {FIELDS} }} }}");
    let response = ui
        .exec
        .execute(&session.token, &query, json!({ "id": id }))
        .await;
    if let Some(error) = response.errors.first() {
        return (
            status_of(&error.code),
            axum::Json(json!({ "error": error.message, "code": error.code })),
        )
            .into_response();
    }
    let body = &response.data["reservation"];
    if body.is_null() {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "no such reservation", "code": "NOT_FOUND" })),
        )
            .into_response();
    }
    let mut response = axum::Json(body.clone()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

pub async fn reserve(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = check_post(&session, &headers, &form) {
        return refused;
    }
    let name = form.get("dataset");
    let version = form.get("version").parse::<i32>().ok();
    let purpose = Some(form.get("purpose").trim()).filter(|p| !p.is_empty());
    let checked = ttl_seconds(form.get("ttl_hours"))
        .and_then(|ttl| Ok((ttl, ready_by(form.get("ready_by"))?)));
    let result = match checked {
        Ok((ttl, ready_by)) => match version {
            Some(v) => reserve_dataset(&ui, &session, name, v, ttl, purpose, ready_by).await,
            None => Ok(Err(GraphqlError {
                message: "the form names no dataset version; reload the page".into(),
                code: "BAD_INPUT".into(),
                field: None,
            })),
        },
        Err(e) => Ok(Err(e)),
    };
    let error = match result {
        Ok(Ok(id)) => return see_other(&format!("/reservations/{}", url(&id))),
        Ok(Err(e)) => e,
        Err(response) => return response,
    };
    let data = match load(&ui, &session, name, version).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    match &data.dataset {
        Some(d) => html_response(
            StatusCode::BAD_REQUEST,
            render_dataset(
                &session,
                &data,
                d,
                &ReserveForm {
                    ttl_hours: form.get("ttl_hours").to_owned(),
                    purpose: form.get("purpose").to_owned(),
                    ready_by: form.get("ready_by").to_owned(),
                },
                Some(&error),
                &ui.settings.viewer_names(),
            ),
        ),
        None => not_found(&format!("Dataset {name}")),
    }
}

fn back_to(form: &Form, id: &str) -> String {
    if form.get("back") == "list" {
        "/reservations".to_owned()
    } else {
        format!("/reservations/{}", url(id))
    }
}

pub async fn extend(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = check_post(&session, &headers, &form) {
        return refused;
    }
    let error = match ttl_seconds(form.get("ttl_hours")) {
        Ok(ttl) => {
            match mutate::<serde_json::Value>(
                &ui,
                &session,
                "mutation($id: ID!, $ttl: Int!) { extendReservation(id: $id, ttlSeconds: $ttl) { id } }",
                json!({ "id": id, "ttl": ttl.min(i64::from(i32::MAX)) }),
            )
            .await
            {
                Ok(Ok(_)) => return see_other(&back_to(&form, &id)),
                Ok(Err(e)) => e,
                Err(response) => return response,
            }
        }
        Err(e) => e,
    };
    if form.get("back") == "list" {
        return list_page(&ui, &session, Some((&id, &error, form.get("ttl_hours")))).await;
    }
    page_handler(
        &ui,
        &session,
        &headers,
        &id,
        Some(&error),
        form.get("ttl_hours"),
    )
    .await
}

pub async fn release(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = check_post(&session, &headers, &form) {
        return refused;
    }
    match mutate::<serde_json::Value>(
        &ui,
        &session,
        "mutation($id: ID!) { releaseReservation(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await
    {
        Ok(Ok(_)) => see_other(&back_to(&form, &id)),
        Ok(Err(e)) => page_handler(&ui, &session, &headers, &id, Some(&e), "24").await,
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListData {
    pub me: Me,
    pub reservations: ListConnection,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListConnection {
    pub total_count: i64,
    pub edges: Vec<ListEdge>,
}

#[derive(Debug, Deserialize)]
pub struct ListEdge {
    pub node: super::datasets::ReservationRow,
}

pub async fn list(State(ui): State<UiState>, session: Session) -> Response {
    list_page(&ui, &session, None).await
}

async fn list_page(
    ui: &UiState,
    session: &Session,
    error: Option<(&str, &GraphqlError, &str)>,
) -> Response {
    let query = format!(
        "{{ {ME} reservations(first: 100) {{ totalCount edges {{ node {{ {} }} }} }} }}",
        super::datasets::RESERVATION_FIELDS
    );
    let data: ListData = match fetch(ui, session, &query, json!({})).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let me = &data.me;
    let mut b = String::with_capacity(16 * 1024);
    w!(
        &mut b,
        r#"<h1>{}</h1>"#,
        if me.is_admin() {
            "All reservations"
        } else {
            "My reservations"
        }
    );
    if data.reservations.edges.is_empty() {
        b.push_str(r#"<p class="empty">No reservations yet. Open a dataset, drive or run and choose Reserve.</p>"#);
    } else {
        w!(
            &mut b,
            r#"<p class="muted">{} in all, newest first.</p><ul class="cards" id="reservation-list">"#,
            data.reservations.total_count
        );
        for edge in &data.reservations.edges {
            let r = &edge.node;
            w!(
                &mut b,
                r#"<li class="card"><div class="card-head"><a href="/reservations/{}" class="mono">{}</a> <span class="state {}">{}</span></div><p><a href="/datasets/{}?version={}">{}@{}</a>{} · {} · {} done · expires {}</p>"#,
                url(&r.id),
                esc(&r.id),
                esc(&r.state.to_ascii_lowercase()),
                esc(&r.state),
                url(&r.dataset.name),
                r.dataset.version,
                esc(&r.dataset.name),
                r.dataset.version,
                r.purpose
                    .as_deref()
                    .map(|p| format!(" · {}", esc(p)))
                    .unwrap_or_default(),
                html::bytes(r.bytes_total),
                html::percent(r.bytes_done, r.bytes_total),
                html::time(&r.expires_at)
            );
            let live = matches!(r.state.as_str(), "PENDING" | "MATERIALIZING" | "READY");
            if me.can_write() && live && (me.is_admin() || me.name == r.owner) {
                let (this_error, ttl) = match error {
                    Some((id, e, ttl)) if id == r.id => (Some(e), ttl),
                    _ => (None, "24"),
                };
                actions(&mut b, session, &r.id, this_error, ttl, "list");
            }
            b.push_str("</li>");
        }
        b.push_str("</ul>");
    }
    html_response(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        frame("Reservations", Nav::Reservations, Some((me, session)), &b),
    )
}
