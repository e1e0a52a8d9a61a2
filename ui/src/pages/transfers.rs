//! The transfers page: the write-back queue (rate, limit, ETA, the transfers in upload order),
//! the transfer policy, which an ADMIN can replace here (`setTransferPolicy`), and the
//! planned downloads (reservations with a deadline) under the download windows.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{error_for, fetch, mutate};
use crate::html::{self, esc, field_error, invalid_attrs, query_string};
use crate::layout::{frame, Me, Nav, ME};
use crate::session::{check_post, Form, Session};
use crate::{html_response, see_other, w, GraphqlError, UiState};

/// Transfers listed per page.
const PAGE: i64 = 50;

const STATES: [(&str, &str, &str); 6] = [
    ("", "", "All"),
    ("queued", "QUEUED", "Queued"),
    ("uploading", "UPLOADING", "Uploading"),
    ("done", "DONE", "Done"),
    ("failed", "FAILED", "Failed"),
    ("superseded", "SUPERSEDED", "Superseded"),
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub upload_schedule: String,
    pub priorities: Vec<String>,
    pub limit_bytes_per_second: Option<i64>,
    pub next_change_at: Option<DateTime<Utc>>,
    pub download_schedule: String,
    pub download_window: String,
}

#[derive(Debug, Deserialize)]
pub struct PlannedDataset {
    pub name: String,
    pub version: i32,
}

/// A reservation with a deadline, not READY yet.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    pub id: String,
    pub state: String,
    pub bytes_total: i64,
    pub bytes_done: i64,
    pub ready_by: Option<DateTime<Utc>>,
    pub scheduled_start: Option<DateTime<Utc>>,
    pub estimated_ready_at: Option<DateTime<Utc>>,
    pub deadline_warning: Option<String>,
    pub dataset: PlannedDataset,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub queued_count: i64,
    pub queued_bytes: i64,
    pub uploading_count: i64,
    pub uploading_bytes: i64,
    pub done_count: i64,
    pub failed_count: i64,
    pub rate_bytes_per_second: f64,
    pub limit_bytes_per_second: Option<i64>,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub id: String,
    pub op: String,
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub state: String,
    pub priority: i32,
    pub bytes_done: i64,
    pub attempts: i32,
    pub enqueued_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Edge {
    pub node: Transfer,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub total_count: i64,
    pub summary: Summary,
    pub edges: Vec<Edge>,
    pub page_info: PageInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageData {
    pub me: Me,
    pub transfer_policy: Policy,
    pub transfers: Connection,
    pub planned_downloads: Vec<Planned>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub after: String,
}

/// What an admin typed into the policy form, shown again with the error when it is refused.
#[derive(Debug, Default)]
struct Submitted<'a> {
    schedule: &'a str,
    priorities: &'a str,
    error: Option<&'a GraphqlError>,
}

pub async fn page(
    State(ui): State<UiState>,
    session: Session,
    Query(params): Query<Params>,
) -> Response {
    render_page(&ui, &session, &params, None).await
}

/// `POST /transfers/policy`: replaces the policy; a refused value comes back to its field.
pub async fn set_policy(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(refused) = check_post(&session, &headers, &form) {
        return refused;
    }
    let priorities: Vec<&str> = form
        .get("priorities")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let input = json!({ "uploadSchedule": form.get("schedule"), "priorities": priorities });
    let error = match mutate::<serde_json::Value>(
        &ui,
        &session,
        "mutation($input: TransferPolicyInput!) { setTransferPolicy(input: $input) { uploadSchedule } }",
        json!({ "input": input }),
    )
    .await
    {
        Ok(Ok(_)) => return see_other("/transfers"),
        Ok(Err(error)) => error,
        Err(response) => return response,
    };
    let submitted = Submitted {
        schedule: form.get("schedule"),
        priorities: form.get("priorities"),
        error: Some(&error),
    };
    render_page(&ui, &session, &Params::default(), Some(submitted)).await
}

async fn render_page(
    ui: &UiState,
    session: &Session,
    params: &Params,
    submitted: Option<Submitted<'_>>,
) -> Response {
    let (state_key, state_arg, _) = STATES
        .iter()
        .copied()
        .find(|(key, _, _)| *key == params.state)
        .unwrap_or(STATES[0]);
    let query = format!(
        r#"query($state: TransferState, $first: Int, $after: String) {{ {ME}
  transferPolicy {{ uploadSchedule priorities limitBytesPerSecond nextChangeAt downloadSchedule downloadWindow }}
  plannedDownloads(first: $first) {{ id state bytesTotal bytesDone readyBy scheduledStart estimatedReadyAt deadlineWarning dataset {{ name version }} }}
  transfers(state: $state, first: $first, after: $after) {{
    totalCount pageInfo {{ hasNextPage endCursor }}
    summary {{ queuedCount queuedBytes uploadingCount uploadingBytes doneCount failedCount rateBytesPerSecond limitBytesPerSecond etaSeconds }}
    edges {{ node {{ id op bucket key size state priority bytesDone attempts enqueuedAt finishedAt error }} }} }} }}"#
    );
    let variables = json!({
        "state": (!state_arg.is_empty()).then_some(state_arg),
        "first": PAGE,
        "after": (!params.after.is_empty()).then_some(params.after.as_str()),
    });
    let data: PageData = match fetch(ui, session, &query, variables).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let status = if submitted.as_ref().is_some_and(|s| s.error.is_some()) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut b = String::with_capacity(16 * 1024);
    b.push_str("<h1>Transfers</h1>");
    summary_tiles(&mut b, &data.transfers.summary);
    policy_panel(&mut b, &data, session, submitted.as_ref());
    transfer_table(&mut b, &data.transfers, state_key, params);
    planned_downloads(&mut b, &data);
    html_response(
        status,
        frame("Transfers", Nav::Transfers, Some((&data.me, session)), &b),
    )
}

fn rate(bytes_per_second: Option<i64>) -> String {
    match bytes_per_second {
        Some(rate) => format!("{}/s", html::bytes(rate)),
        None => "unlimited".to_owned(),
    }
}

fn summary_tiles(b: &mut String, s: &Summary) {
    b.push_str(r#"<div class="tiles" id="transfer-summary">"#);
    w!(
        b,
        r#"<section class="tile"><h2>Upload rate</h2><p class="big" id="upload-rate">{}/s</p><p class="muted">over the last 5 s · limit now <span id="limit-now">{}</span></p></section>"#,
        html::bytes(s.rate_bytes_per_second as i64),
        rate(s.limit_bytes_per_second)
    );
    w!(
        b,
        r#"<section class="tile"><h2>Queue</h2><p class="big"><span id="queued-count">{}</span> <small>queued</small></p><p class="muted">{} to upload · {} uploading, {} left</p></section>"#,
        s.queued_count,
        html::bytes(s.queued_bytes),
        s.uploading_count,
        html::bytes(s.uploading_bytes)
    );
    let eta = match s.eta_seconds {
        _ if s.queued_count + s.uploading_count == 0 => "nothing queued".to_owned(),
        Some(seconds) => html::duration(seconds.ceil() as i64),
        None => "unknown".to_owned(),
    };
    w!(
        b,
        r#"<section class="tile"><h2>Done in</h2><p class="big" id="eta">{}</p><p class="muted">at the current rate, or the limit while nothing moves</p></section>"#,
        esc(&eta)
    );
    w!(
        b,
        r#"<section class="tile"><h2>Finished</h2><p class="big"><span id="done-count">{}</span> <small>done</small></p><p class="muted"><span id="failed-count">{}</span> failed</p></section></div>"#,
        s.done_count,
        s.failed_count
    );
}

fn policy_panel(b: &mut String, data: &PageData, session: &Session, submitted: Option<&Submitted>) {
    let p = &data.transfer_policy;
    b.push_str(r#"<section class="panel" id="transfer-policy" aria-labelledby="policy-title"><h2 id="policy-title">Transfer policy</h2>"#);
    w!(
        b,
        r#"<p>Schedule <code id="policy-schedule">{}</code> · limit now <strong>{}</strong>{}</p>"#,
        esc(&p.upload_schedule),
        rate(p.limit_bytes_per_second),
        p.next_change_at
            .map(|at| format!(", changes at {}", html::time(&at)))
            .unwrap_or_default()
    );
    if p.priorities.is_empty() {
        b.push_str(r#"<p class="muted">No priorities: the oldest upload goes first.</p>"#);
    } else {
        b.push_str(r#"<p>Priorities, first match uploads first, then the oldest:</p><ol id="policy-priorities">"#);
        for glob in &p.priorities {
            w!(b, "<li><code>{}</code></li>", esc(glob));
        }
        b.push_str("</ol>");
    }
    if data.me.is_admin() {
        let error = submitted.and_then(|s| s.error);
        let schedule_error = error_for(error, &["uploadSchedule"]);
        let priorities_error = error_for(error, &["priorities"]);
        // An error about neither field (there should be none) still has to show.
        let other_error = error
            .filter(|_| schedule_error.is_none() && priorities_error.is_none())
            .map(|e| e.message.as_str());
        let schedule = submitted.map_or(p.upload_schedule.as_str(), |s| s.schedule);
        let priorities =
            submitted.map_or_else(|| p.priorities.join("\n"), |s| s.priorities.to_owned());
        w!(
            b,
            r#"<details class="panel"{}><summary>Change the policy</summary><form method="post" action="/transfers/policy" class="stack" id="policy-form" novalidate><input type="hidden" name="csrf" value="{}">"#,
            if error.is_some() { " open" } else { "" },
            esc(&session.csrf)
        );
        w!(
            b,
            r#"<label for="tp-schedule">Upload schedule</label><input id="tp-schedule" name="schedule" class="mono" value="{}"{}>"#,
            esc(schedule),
            invalid_attrs("tp-schedule", schedule_error)
        );
        field_error(b, "tp-schedule", schedule_error);
        b.push_str(r#"<p class="hint">Rules separated by <code>;</code>, each <code>DAYS [HH:MM-HH:MM] RATE</code> in office time, the first match wins, e.g. <code>Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off</code>. Days: <code>*</code>, <code>Mon</code>, <code>Mon-Fri</code>, <code>Sat,Sun</code>; a window may wrap midnight; rate <code>off</code> is unlimited.</p>"#);
        w!(
            b,
            r#"<label for="tp-priorities">Priorities (one key glob per line)</label><textarea id="tp-priorities" name="priorities" rows="4" class="mono"{}>{}</textarea>"#,
            invalid_attrs("tp-priorities", priorities_error),
            esc(&priorities)
        );
        field_error(b, "tp-priorities", priorities_error);
        b.push_str(r#"<p class="hint">Matched against the whole key: <code>*</code> is any characters, <code>/</code> included; <code>?</code> one character. E.g. <code>*.json</code>, <code>drives/*/camera/*</code>.</p>"#);
        field_error(b, "tp-form", other_error);
        b.push_str(r#"<button type="submit">Save policy</button></form></details>"#);
    }
    b.push_str("</section>");
}

fn planned_downloads(b: &mut String, data: &PageData) {
    let p = &data.transfer_policy;
    w!(
        b,
        r#"<section aria-labelledby="planned-title"><h2 id="planned-title">Planned downloads</h2><p>Reservations with a deadline download within the windows <code id="download-schedule">{}</code> (office time; other times are closed) · now <strong id="download-window">{}</strong></p>"#,
        esc(&p.download_schedule),
        esc(&p.download_window)
    );
    if data.planned_downloads.is_empty() {
        b.push_str(r#"<p class="empty" id="planned-empty">No planned downloads. Reserve a dataset with a deadline (<code>readyBy</code>) to schedule one.</p></section>"#);
        return;
    }
    b.push_str(r#"<div class="table-wrap"><table id="planned-downloads"><thead><tr><th scope="col">Reservation</th><th scope="col">Dataset</th><th scope="col">State</th><th scope="col" class="num">Size</th><th scope="col" class="num">Done</th><th scope="col">Starts</th><th scope="col">Ready by</th><th scope="col">Estimate</th></tr></thead><tbody>"#);
    let time = |at: &Option<DateTime<Utc>>| at.as_ref().map_or_else(|| "-".to_owned(), html::time);
    for r in &data.planned_downloads {
        let name = format!("{}@{}", r.dataset.name, r.dataset.version);
        w!(
            b,
            r#"<tr data-id="{id}"><td><a href="/reservations/{href}">{id}</a></td><td>{name}</td><td>{state}</td><td class="num">{size}</td><td class="num">{done}</td><td>{start}</td><td>{by}</td><td>{estimate}{warning}</td></tr>"#,
            id = esc(&r.id),
            href = html::url(&r.id),
            name = esc(&name),
            state = esc(&r.state.to_lowercase()),
            size = html::bytes(r.bytes_total),
            done = html::bytes(r.bytes_done),
            start = time(&r.scheduled_start),
            by = time(&r.ready_by),
            estimate = time(&r.estimated_ready_at),
            warning = r
                .deadline_warning
                .as_deref()
                .map(|w| format!(
                    r#"<p class="error-box" role="status">At risk: {}</p>"#,
                    esc(w)
                ))
                .unwrap_or_default(),
        );
    }
    b.push_str("</tbody></table></div></section>");
}

fn transfer_table(b: &mut String, list: &Connection, state_key: &str, params: &Params) {
    b.push_str(
        r#"<section><div class="section-head"><h2>Queue</h2><nav aria-label="State" class="tabs">"#,
    );
    for (key, _, label) in STATES {
        w!(
            b,
            r#"<a href="/transfers{}"{}>{label}</a>"#,
            query_string(&[("state", key)]),
            if key == state_key {
                r#" aria-current="page""#
            } else {
                ""
            }
        );
    }
    b.push_str("</nav></div>");
    if list.edges.is_empty() {
        b.push_str(if params.after.is_empty() {
            r#"<p class="empty" id="transfers-empty">No transfers here. Uploads written to the office S3 gateway are queued here until they are in S3.</p>"#
        } else {
            r#"<p class="empty" id="transfers-empty">No more transfers.</p>"#
        });
    } else {
        b.push_str(r#"<div class="table-wrap"><table id="transfers"><thead><tr><th scope="col" class="num">Id</th><th scope="col">State</th><th scope="col" class="num">Priority</th><th scope="col">Key</th><th scope="col" class="num">Size</th><th scope="col">Uploaded</th><th scope="col" class="num">Attempts</th><th scope="col">Queued at</th></tr></thead><tbody>"#);
        for edge in &list.edges {
            let t = &edge.node;
            let state = t.state.to_lowercase();
            w!(
                b,
                r#"<tr><td class="num mono">{}</td><td><span class="state {}">{}</span></td><td class="num">{}</td><td class="mono">{}s3://{}/{}</td><td class="num">{}</td><td><meter min="0" max="{}" value="{}" aria-label="Uploaded"></meter> {}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&t.id),
                esc(&state),
                esc(&state),
                t.priority,
                if t.op == "DELETE" { "delete " } else { "" },
                esc(&t.bucket),
                esc(&t.key),
                html::bytes(t.size),
                t.size.max(1),
                t.bytes_done.clamp(0, t.size.max(1)),
                html::percent(t.bytes_done, t.size),
                t.attempts,
                html::time(&t.enqueued_at),
            );
            if let Some(error) = &t.error {
                w!(
                    b,
                    r#"<tr class="transfer-error"><td></td><td colspan="7" class="field-error">{}{}</td></tr>"#,
                    esc(error),
                    t.finished_at
                        .map(|at| format!(" · {}", html::time(&at)))
                        .unwrap_or_default()
                );
            }
        }
        b.push_str("</tbody></table></div>");
    }
    w!(
        b,
        r#"<nav class="pager" aria-label="Pages"><span class="muted">{} transfers</span>"#,
        list.total_count
    );
    if !params.after.is_empty() {
        w!(
            b,
            r#"<a href="/transfers{}">First page</a>"#,
            query_string(&[("state", state_key)])
        );
    }
    if let (true, Some(cursor)) = (list.page_info.has_next_page, &list.page_info.end_cursor) {
        w!(
            b,
            r#"<a href="/transfers{}" rel="next" id="next-page">Next page</a>"#,
            query_string(&[("state", state_key), ("after", cursor)])
        );
    }
    b.push_str("</nav></section>");
}
