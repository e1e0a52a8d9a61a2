//! Drive, scenario and run pages, and "tag a scenario".
//!
//! (Over 600 lines: drive, scenario and run pages share their layout fragments and the tag form.)

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error_for, fetch, mutate};
use crate::html::{self, esc, field_error, invalid_attrs, query_string, url, url_path};
use crate::layout::{frame, not_found, Me, Nav, ME};
use crate::session::{check_post, Form, Session};
use crate::{html_response, see_other, w, GraphqlError, UiState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectNode {
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub cached: bool,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ObjectEdge {
    pub node: ObjectNode,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Objects {
    pub total_count: i64,
    pub edges: Vec<ObjectEdge>,
}

#[derive(Debug, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioRow {
    pub id: String,
    pub label: String,
    pub tags: Vec<String>,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drive {
    pub id: String,
    pub vehicle: String,
    pub city: Option<String>,
    pub route: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub distance_km: Option<f64>,
    pub software_version: Option<String>,
    pub weather: Option<String>,
    pub tags: Vec<String>,
    pub bucket: String,
    pub prefix: String,
    pub events: Vec<Event>,
    pub topics: Vec<String>,
    pub scenarios: Vec<ScenarioRow>,
    pub total_bytes: i64,
    pub cached_bytes: i64,
    pub objects: Objects,
    /// The "Lineage" section, read after the drive (`lineage::section`).
    #[serde(skip)]
    pub lineage: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct DriveData {
    pub me: Me,
    pub drive: Option<Drive>,
}

/// Files listed on an entity page; the rest are counted.
const FILES_SHOWN: i64 = 200;

fn drive_query() -> String {
    format!(
        r#"query($id: ID!) {{ {ME} drive(id: $id) {{ id vehicle city route startedAt endedAt
    distanceKm softwareVersion weather tags bucket prefix events {{ at kind label }} topics
    scenarios {{ id label tags startTime endTime description }} totalBytes cachedBytes
    objects(first: {FILES_SHOWN}) {{ totalCount edges {{ node {{ bucket key size cached metadata }} }} }} }} }}"#
    )
}

/// What the "tag a scenario" form held, to show it again with an error.
#[derive(Debug, Default)]
pub struct TagForm {
    pub label: String,
    pub start: String,
    pub end: String,
    pub tags: String,
    pub description: String,
}

pub async fn drive(
    State(ui): State<UiState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let data: DriveData = match fetch(&ui, &session, &drive_query(), json!({ "id": id })).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let Some(mut drive) = data.drive else {
        return not_found(&format!("Drive {id}"));
    };
    drive.lineage = Some(super::lineage::section(&ui, &session, &drive.id).await);
    html_response(
        StatusCode::OK,
        render_drive(
            &session,
            &data.me,
            &drive,
            &TagForm::default(),
            None,
            &ui.settings.viewer_names(),
        ),
    )
}

/// The selection query that picks exactly one entity.
pub fn id_query(id: &str) -> String {
    format!("id:\"{}\"", id.replace('"', ""))
}

/// A dataset name derived from an entity id (lowercase, allowed characters only).
pub fn dataset_name_for(prefix: &str, id: &str) -> String {
    let cleaned: String = id
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{prefix}-{cleaned}");
    name.truncate(100);
    name
}

/// "Reserve" on an entity page: a dataset of exactly this entity, created and reserved in
/// one step through the new-dataset form's handler.
pub fn reserve_form(b: &mut String, session: &Session, query: &str, name: &str) {
    w!(
        b,
        r#"<details class="panel"><summary>Reserve</summary><form method="post" action="/new-dataset" class="stack"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="q" value="{}"><input type="hidden" name="action" value="reserve"><label for="r-name">Dataset name</label><input id="r-name" name="name" value="{}" required pattern="[a-z0-9][a-z0-9._-]*"><label for="r-ttl">Keep for (hours)</label><input id="r-ttl" name="ttl_hours" type="number" min="1" value="24" required><label for="r-purpose">Purpose</label><input id="r-purpose" name="purpose" placeholder="e.g. replay for the cut-in regression"><button type="submit">Create dataset and reserve</button></form><p><a href="/new-dataset{}">More options: description, file globs, size preview</a></p></details>"#,
        esc(&session.csrf),
        esc(query),
        esc(name),
        query_string(&[("q", query), ("name", name)])
    );
}

fn timeline(b: &mut String, drive: &Drive) {
    let span = (drive.ended_at - drive.started_at)
        .num_milliseconds()
        .max(1) as f64;
    let x = |at: &DateTime<Utc>| -> f64 {
        ((*at - drive.started_at).num_milliseconds() as f64 / span * 1000.0).clamp(0.0, 1000.0)
    };
    let lanes = drive.scenarios.len().min(12);
    let height = 40 + lanes * 16;
    w!(
        b,
        r#"<figure class="timeline"><svg viewBox="0 0 1000 {height}" role="img" aria-labelledby="timeline-title"><title id="timeline-title">Timeline: {} events and {} scenarios over {}</title><rect class="axis" x="0" y="18" width="1000" height="4"/>"#,
        drive.events.len(),
        drive.scenarios.len(),
        html::duration((drive.ended_at - drive.started_at).num_seconds())
    );
    for event in &drive.events {
        w!(
            b,
            r#"<g class="event"><line x1="{x:.1}" x2="{x:.1}" y1="6" y2="34"/><title>{} {}{}</title></g>"#,
            event.at.format("%H:%M:%S"),
            esc(&event.kind),
            event
                .label
                .as_deref()
                .map(|l| format!(": {}", esc(l)))
                .unwrap_or_default(),
            x = x(&event.at)
        );
    }
    for (lane, scenario) in drive.scenarios.iter().take(lanes).enumerate() {
        let (x0, x1) = (x(&scenario.start_time), x(&scenario.end_time));
        w!(
            b,
            r#"<g class="span"><rect x="{x0:.1}" y="{}" width="{:.1}" height="12" rx="2"/><text x="{:.1}" y="{}" text-anchor="{}">{}</text><title>{} ({})</title></g>"#,
            40 + lane * 16,
            (x1 - x0).max(2.0),
            if x1 < 800.0 { x1 + 6.0 } else { x0 - 6.0 },
            50 + lane * 16,
            if x1 < 800.0 { "start" } else { "end" },
            esc(&scenario.label),
            esc(&scenario.label),
            html::duration((scenario.end_time - scenario.start_time).num_seconds())
        );
    }
    w!(
        b,
        r#"</svg><figcaption><span>{}</span><span>{}</span></figcaption></figure>"#,
        drive.started_at.format("%H:%M:%S"),
        drive.ended_at.format("%H:%M:%S UTC")
    );
}

/// Message counts per topic, summed over the MCAP summaries sync stored for the files.
fn topic_counts(drive: &Drive) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = drive.topics.iter().map(|t| (t.clone(), 0)).collect();
    for edge in &drive.objects.edges {
        let topics = edge
            .node
            .metadata
            .as_ref()
            .and_then(|m| m["mcap"]["topics"].as_array());
        for topic in topics.into_iter().flatten() {
            if let Some(name) = topic["topic"].as_str() {
                *counts.entry(name.to_owned()).or_default() +=
                    topic["message_count"].as_u64().unwrap_or(0);
            }
        }
    }
    counts
}

/// The files of a drive, run or dataset; MCAP logs get links to open them in `viewers`
/// ([`super::viewers`]).
pub fn files_table(b: &mut String, objects: &Objects, prefix: &str, viewers: &[String]) {
    let any_log = objects
        .edges
        .iter()
        .any(|e| super::viewers::is_mcap(&e.node.key));
    let open_column = any_log && !viewers.is_empty();
    w!(
        b,
        r#"<div class="table-wrap"><table><caption>{} files{}</caption><thead><tr><th scope="col">File</th><th scope="col" class="num">Size</th><th scope="col">Cached</th>{}</tr></thead><tbody>"#,
        objects.total_count,
        if objects.total_count > objects.edges.len() as i64 {
            format!(" (first {} shown)", objects.edges.len())
        } else {
            String::new()
        },
        if open_column {
            r#"<th scope="col">Open</th>"#
        } else {
            ""
        }
    );
    for edge in &objects.edges {
        let o = &edge.node;
        let shown = o.key.strip_prefix(prefix).unwrap_or(&o.key);
        w!(
            b,
            r#"<tr><td><a href="/files/{}/{}" class="mono">{}</a></td><td class="num">{}</td><td>{}</td>"#,
            url(&o.bucket),
            url_path(&o.key),
            esc(shown),
            html::bytes(o.size),
            if o.cached {
                r#"<span class="yes">cached</span>"#
            } else {
                r#"<span class="no">not cached</span>"#
            }
        );
        if open_column {
            b.push_str("<td>");
            super::viewers::links(b, viewers, &o.bucket, &o.key);
            b.push_str("</td>");
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table></div>");
}

fn fact(b: &mut String, name: &str, value: &str) {
    w!(b, "<div><dt>{name}</dt><dd>{value}</dd></div>");
}

pub fn render_drive(
    session: &Session,
    me: &Me,
    drive: &Drive,
    form: &TagForm,
    error: Option<&GraphqlError>,
    viewers: &[String],
) -> String {
    let mut b = String::with_capacity(32 * 1024);
    w!(
        &mut b,
        r#"<p class="crumbs"><a href="/">Search</a> / drive</p><h1><span class="badge drive">Drive</span> {}</h1><dl class="facts-grid">"#,
        esc(&drive.id)
    );
    fact(&mut b, "Vehicle", &esc(&drive.vehicle).to_string());
    if let Some(city) = &drive.city {
        fact(&mut b, "City", &esc(city).to_string());
    }
    if let Some(route) = &drive.route {
        fact(&mut b, "Route", &esc(route).to_string());
    }
    fact(&mut b, "Started", &html::time(&drive.started_at));
    fact(
        &mut b,
        "Duration",
        &html::duration((drive.ended_at - drive.started_at).num_seconds()),
    );
    if let Some(km) = drive.distance_km {
        fact(&mut b, "Distance", &format!("{km:.1} km"));
    }
    if let Some(software) = &drive.software_version {
        fact(&mut b, "Software", &esc(software).to_string());
    }
    if let Some(weather) = &drive.weather {
        fact(&mut b, "Weather", &esc(weather).to_string());
    }
    fact(
        &mut b,
        "Size",
        &format!(
            r#"<span id="drive-size">{}</span>, {} cached"#,
            html::bytes(drive.total_bytes),
            html::percent(drive.cached_bytes, drive.total_bytes)
        ),
    );
    fact(
        &mut b,
        "Location",
        &format!(
            "<code>s3://{}/{}</code>",
            esc(&drive.bucket),
            esc(&drive.prefix)
        ),
    );
    if !drive.tags.is_empty() {
        let tags: Vec<String> = drive.tags.iter().map(|t| esc(t).to_string()).collect();
        fact(&mut b, "Tags", &tags.join(", "));
    }
    b.push_str("</dl>");
    if me.can_write() {
        reserve_form(
            &mut b,
            session,
            &id_query(&drive.id),
            &dataset_name_for("drive", &drive.id),
        );
    }

    b.push_str(r#"<section><h2>Timeline</h2>"#);
    timeline(&mut b, drive);
    if !drive.scenarios.is_empty() {
        b.push_str(r#"<div class="table-wrap"><table><caption>Scenarios (minutes:seconds from the start)</caption><thead><tr><th scope="col">Label</th><th scope="col" class="num">From</th><th scope="col" class="num">To</th><th scope="col">Tags</th></tr></thead><tbody>"#);
        for s in &drive.scenarios {
            let offset = |at: &DateTime<Utc>| {
                let s = (*at - drive.started_at).num_seconds().max(0);
                format!("{}:{:02}", s / 60, s % 60)
            };
            w!(
                &mut b,
                r#"<tr id="scenario-{}"><td>{}{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&s.id),
                esc(&s.label),
                s.description
                    .as_deref()
                    .map(|d| format!(r#"<br><small class="muted">{}</small>"#, esc(d)))
                    .unwrap_or_default(),
                offset(&s.start_time),
                offset(&s.end_time),
                esc(&s.tags.join(", "))
            );
        }
        b.push_str("</tbody></table></div>");
    }
    if !drive.events.is_empty() {
        b.push_str(r#"<details><summary>Events</summary><ul class="events">"#);
        for e in &drive.events {
            w!(
                &mut b,
                "<li>{} <strong>{}</strong> {}</li>",
                html::time(&e.at),
                esc(&e.kind),
                esc(e.label.as_deref().unwrap_or_default())
            );
        }
        b.push_str("</ul></details>");
    }
    b.push_str("</section>");

    if me.can_write() {
        tag_form(&mut b, session, drive, form, error);
    }

    let topics = topic_counts(drive);
    if !topics.is_empty() {
        b.push_str(r#"<section><h2>Topics</h2><div class="table-wrap"><table id="topics"><thead><tr><th scope="col">Topic</th><th scope="col" class="num">Messages</th></tr></thead><tbody>"#);
        for (topic, count) in &topics {
            w!(
                &mut b,
                r#"<tr><td class="mono">{}</td><td class="num">{}</td></tr>"#,
                esc(topic),
                count
            );
        }
        b.push_str("</tbody></table></div></section>");
    }
    b.push_str(drive.lineage.as_deref().unwrap_or_default());
    b.push_str("<section><h2>Files</h2>");
    files_table(&mut b, &drive.objects, &drive.prefix, viewers);
    b.push_str("</section>");
    frame(&drive.id, Nav::Search, Some((me, session)), &b)
}

fn tag_form(
    b: &mut String,
    session: &Session,
    drive: &Drive,
    form: &TagForm,
    error: Option<&GraphqlError>,
) {
    let label_error = error_for(error, &["label"]);
    let start_error = error_for(error, &["start", "startTime"]);
    let end_error = error_for(error, &["end", "endTime"]);
    let tags_error = error_for(error, &["tags"]);
    let description_error = error_for(error, &["description"]);
    let other = error.filter(|_| {
        label_error.is_none()
            && start_error.is_none()
            && end_error.is_none()
            && tags_error.is_none()
            && description_error.is_none()
    });
    let length = (drive.ended_at - drive.started_at).num_milliseconds() as f64 / 1000.0;
    w!(
        b,
        r#"<section><details class="panel"{}><summary>Tag a scenario</summary><form method="post" action="/drives/{}/tag" class="stack" novalidate><input type="hidden" name="csrf" value="{}">"#,
        if error.is_some() { " open" } else { "" },
        url(&drive.id),
        esc(&session.csrf)
    );
    if let Some(e) = other {
        w!(
            b,
            r#"<p class="error-box" role="alert">{}</p>"#,
            esc(&e.message)
        );
    }
    w!(
        b,
        r#"<label for="tag-label">Label</label><input id="tag-label" name="label" value="{}" placeholder="cut-in"{}>"#,
        esc(&form.label),
        invalid_attrs("tag-label", label_error)
    );
    field_error(b, "tag-label", label_error);
    w!(
        b,
        r#"<div class="row"><div><label for="tag-start">From (seconds after start)</label><input id="tag-start" name="start" inputmode="decimal" value="{}" placeholder="0"{}>"#,
        esc(&form.start),
        invalid_attrs("tag-start", start_error)
    );
    field_error(b, "tag-start", start_error);
    w!(
        b,
        r#"</div><div><label for="tag-end">To (seconds, drive is {length:.1} s)</label><input id="tag-end" name="end" inputmode="decimal" value="{}"{}>"#,
        esc(&form.end),
        invalid_attrs("tag-end", end_error)
    );
    field_error(b, "tag-end", end_error);
    w!(
        b,
        r#"</div></div><label for="tag-tags">Tags (comma separated)</label><input id="tag-tags" name="tags" value="{}"{}>"#,
        esc(&form.tags),
        invalid_attrs("tag-tags", tags_error)
    );
    field_error(b, "tag-tags", tags_error);
    w!(
        b,
        r#"<label for="tag-description">Description</label><input id="tag-description" name="description" value="{}"{}>"#,
        esc(&form.description),
        invalid_attrs("tag-description", description_error)
    );
    field_error(b, "tag-description", description_error);
    b.push_str(r#"<button type="submit">Tag scenario</button></form></details></section>"#);
}

fn local_error(field: &str, message: &str) -> GraphqlError {
    GraphqlError {
        message: message.to_owned(),
        code: "BAD_INPUT".to_owned(),
        field: Some(field.to_owned()),
    }
}

fn seconds(value: &str, field: &str) -> Result<f64, GraphqlError> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ if value.trim().is_empty() => Err(local_error(field, "enter a number of seconds")),
        _ => Err(local_error(
            field,
            &format!(
                "expected a number of seconds (0 or more), got {:?}",
                value.trim()
            ),
        )),
    }
}

pub async fn tag_scenario(
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
    let data: DriveData = match fetch(&ui, &session, &drive_query(), json!({ "id": id })).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let Some(drive) = data.drive else {
        return not_found(&format!("Drive {id}"));
    };
    let tag = TagForm {
        label: form.get("label").to_owned(),
        start: form.get("start").to_owned(),
        end: form.get("end").to_owned(),
        tags: form.get("tags").to_owned(),
        description: form.get("description").to_owned(),
    };
    let checked = (|| {
        if tag.label.trim().is_empty() {
            return Err(local_error("label", "enter a label, e.g. cut-in"));
        }
        let start = seconds(&tag.start, "start")?;
        let end = seconds(&tag.end, "end")?;
        let at = |s: f64| drive.started_at + Duration::milliseconds((s * 1000.0).round() as i64);
        Ok((at(start), at(end)))
    })();
    let refused = |error: GraphqlError| {
        html_response(
            StatusCode::BAD_REQUEST,
            render_drive(
                &session,
                &data.me,
                &drive,
                &tag,
                Some(&error),
                &ui.settings.viewer_names(),
            ),
        )
    };
    let (start, end) = match checked {
        Ok(span) => span,
        Err(error) => return refused(error),
    };
    let tags: Vec<&str> = tag
        .tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let description = Some(tag.description.trim()).filter(|d| !d.is_empty());
    let input = json!({
        "driveId": drive.id,
        "label": tag.label.trim(),
        "start": start.to_rfc3339(),
        "end": end.to_rfc3339(),
        "tags": tags,
        "description": description,
    });
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Tagged {
        tag_scenario: IdOnly,
    }
    match mutate::<Tagged>(
        &ui,
        &session,
        "mutation($input: TagScenarioInput!) { tagScenario(input: $input) { id } }",
        json!({ "input": input }),
    )
    .await
    {
        Ok(Ok(tagged)) => see_other(&format!(
            "/drives/{}#scenario-{}",
            url(&drive.id),
            url(&tagged.tag_scenario.id)
        )),
        Ok(Err(error)) => refused(error),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioData {
    pub scenario: Option<ScenarioDrive>,
}

#[derive(Debug, Deserialize)]
pub struct ScenarioDrive {
    pub drive: IdOnly,
}

/// A scenario lives on its drive's page.
pub async fn scenario(
    State(ui): State<UiState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let data: ScenarioData = match fetch(
        &ui,
        &session,
        "query($id: ID!) { scenario(id: $id) { drive { id } } }",
        json!({ "id": id }),
    )
    .await
    {
        Ok(data) => data,
        Err(response) => return response,
    };
    match data.scenario {
        Some(s) => see_other(&format!(
            "/drives/{}#scenario-{}",
            url(&s.drive.id),
            url(&id)
        )),
        None => not_found(&format!("Scenario {id}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    pub kind: String,
    pub pipeline: String,
    pub commit: Option<String>,
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub metrics: Option<Value>,
    pub prefix: String,
    pub total_bytes: i64,
    pub inputs: Vec<Input>,
    #[serde(default)]
    pub input_windows: Vec<InputWindow>,
    pub objects: Objects,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputWindow {
    pub drive_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "__typename")]
pub enum Input {
    Drive {
        id: String,
    },
    Scenario {
        id: String,
        label: String,
    },
    Run {
        id: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub struct RunData {
    pub me: Me,
    pub run: Option<Run>,
}

pub async fn run(State(ui): State<UiState>, session: Session, Path(id): Path<String>) -> Response {
    let query = format!(
        r#"query($id: ID!) {{ {ME} run(id: $id) {{ id kind pipeline commit status startedAt finishedAt
    tags metrics prefix totalBytes
    inputs {{ __typename ... on Drive {{ id }} ... on Scenario {{ id label }} ... on Run {{ id }} }}
    inputWindows {{ driveId start end }}
    objects(first: {FILES_SHOWN}) {{ totalCount edges {{ node {{ bucket key size cached }} }} }} }} }}"#
    );
    let data: RunData = match fetch(&ui, &session, &query, json!({ "id": id })).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let Some(run) = data.run else {
        return not_found(&format!("Run {id}"));
    };
    let me = &data.me;
    let mut b = String::with_capacity(16 * 1024);
    w!(
        &mut b,
        r#"<p class="crumbs"><a href="/">Search</a> / run</p><h1><span class="badge run">Run</span> {} <span class="status {}" id="run-status">{}</span></h1><dl class="facts-grid">"#,
        esc(&run.id),
        esc(&run.status.to_ascii_lowercase()),
        esc(&run.status)
    );
    fact(&mut b, "Pipeline", &esc(&run.pipeline).to_string());
    fact(&mut b, "Kind", &esc(&run.kind).to_string());
    if let Some(commit) = &run.commit {
        fact(&mut b, "Commit", &format!("<code>{}</code>", esc(commit)));
    }
    if let Some(at) = &run.started_at {
        fact(&mut b, "Started", &html::time(at));
    }
    if let Some(at) = &run.finished_at {
        fact(&mut b, "Finished", &html::time(at));
    }
    fact(&mut b, "Outputs", &html::bytes(run.total_bytes));
    if !run.tags.is_empty() {
        fact(&mut b, "Tags", &esc(&run.tags.join(", ")).to_string());
    }
    b.push_str("</dl>");
    if me.can_write() {
        reserve_form(
            &mut b,
            &session,
            &id_query(&run.id),
            &dataset_name_for("run", &run.id),
        );
    }
    b.push_str("<section><h2>Metrics</h2>");
    metrics_table(&mut b, run.metrics.as_ref());
    b.push_str("</section><section><h2>Inputs</h2>");
    if run.inputs.is_empty() && run.input_windows.is_empty() {
        b.push_str(r#"<p class="muted">No inputs recorded.</p>"#);
    } else {
        b.push_str(r#"<ul class="inputs">"#);
        for window in &run.input_windows {
            w!(
                &mut b,
                r#"<li><span class="badge drive">Drive</span> <a href="/drives/{}">{}</a> <span class="mono">{}</span></li>"#,
                url(&window.drive_id),
                esc(&window.drive_id),
                esc(&super::lineage::window_text(&super::lineage::Window {
                    start: window.start,
                    end: window.end,
                }))
            );
        }
        for input in &run.inputs {
            match input {
                Input::Drive { id } => w!(
                    &mut b,
                    r#"<li><span class="badge drive">Drive</span> <a href="/drives/{}">{}</a></li>"#,
                    url(id),
                    esc(id)
                ),
                Input::Scenario { id, label } => w!(
                    &mut b,
                    r#"<li><span class="badge scenario">Scenario</span> <a href="/scenarios/{}">{}</a> <span class="muted">{}</span></li>"#,
                    url(id),
                    esc(label),
                    esc(id)
                ),
                Input::Run { id } => w!(
                    &mut b,
                    r#"<li><span class="badge run">Run</span> <a href="/runs/{}">{}</a></li>"#,
                    url(id),
                    esc(id)
                ),
                Input::Other => {}
            }
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    b.push_str(&super::lineage::section(&ui, &session, &run.id).await);
    b.push_str("<section><h2>Outputs</h2>");
    files_table(
        &mut b,
        &run.objects,
        &run.prefix,
        &ui.settings.viewer_names(),
    );
    b.push_str("</section>");
    html_response(
        StatusCode::OK,
        frame(&run.id, Nav::Search, Some((me, &session)), &b),
    )
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        Value::String(s) => esc(s).to_string(),
        Value::Null => String::new(),
        other => esc(&other.to_string()).to_string(),
    }
}

/// Metrics as a table: one row per metric; a metric that is an object (count, mean, min,
/// max...) gets one column per key.
fn metrics_table(b: &mut String, metrics: Option<&Value>) {
    let Some(Value::Object(map)) = metrics else {
        b.push_str(r#"<p class="muted">No metrics recorded.</p>"#);
        return;
    };
    let mut columns: Vec<String> = Vec::new();
    for value in map.values() {
        if let Value::Object(inner) = value {
            for key in inner.keys() {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    b.push_str(
        r#"<div class="table-wrap"><table id="metrics"><thead><tr><th scope="col">Metric</th>"#,
    );
    if columns.is_empty() {
        b.push_str(r#"<th scope="col" class="num">Value</th>"#);
    }
    for column in &columns {
        w!(b, r#"<th scope="col" class="num">{}</th>"#, esc(column));
    }
    b.push_str("</tr></thead><tbody>");
    for (name, value) in map {
        w!(b, r#"<tr><th scope="row" class="mono">{}</th>"#, esc(name));
        match value {
            Value::Object(inner) => {
                for column in &columns {
                    w!(
                        b,
                        r#"<td class="num">{}</td>"#,
                        inner.get(column).map(scalar).unwrap_or_default()
                    );
                }
            }
            other => {
                w!(b, r#"<td class="num">{}</td>"#, scalar(other));
                for _ in 1..columns.len() {
                    b.push_str("<td></td>");
                }
            }
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table></div>");
}
