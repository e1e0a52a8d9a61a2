//! Datasets: the list, a dataset's page (versions, objects, manifest, reservations, Reserve),
//! and "create dataset from this search" with a size preview before creating.
//!
//! (Over 600 lines: three pages of one entity (list, dataset, create-from-search) sharing their fragments.)

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::entities::{files_table, Objects};
use super::{error_for, fetch, mutate};
use crate::html::{self, esc, field_error, invalid_attrs, query_string, url, url_path};
use crate::layout::{frame, not_found, Me, Nav, ME};
use crate::session::{check_post, Form, Session};
use crate::{html_response, see_other, w, GraphqlError, UiState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSummary {
    pub name: String,
    pub version: i32,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub object_count: i64,
    pub total_bytes: i64,
}

#[derive(Debug, Deserialize)]
pub struct ListData {
    pub me: Me,
    pub datasets: Vec<DatasetSummary>,
}

pub async fn list(State(ui): State<UiState>, session: Session) -> Response {
    let query = format!(
        "{{ {ME} datasets(first: 100) {{ name version description createdAt createdBy objectCount totalBytes }} }}"
    );
    let data: ListData = match fetch(&ui, &session, &query, json!({})).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    let mut b = String::from("<h1>Datasets</h1>");
    if data.datasets.is_empty() {
        b.push_str(r#"<p class="empty">No datasets yet. Search for what you need and choose "Create dataset from this search".</p>"#);
    } else {
        b.push_str(r#"<div class="table-wrap"><table><thead><tr><th scope="col">Name</th><th scope="col">Version</th><th scope="col" class="num">Files</th><th scope="col" class="num">Size</th><th scope="col">Created</th></tr></thead><tbody>"#);
        for d in &data.datasets {
            w!(
                &mut b,
                r#"<tr><td><a href="/datasets/{}">{}</a>{}</td><td>v{}</td><td class="num">{}</td><td class="num">{}</td><td>{} by {}</td></tr>"#,
                url(&d.name),
                esc(&d.name),
                d.description
                    .as_deref()
                    .map(|x| format!(r#"<br><small class="muted">{}</small>"#, esc(x)))
                    .unwrap_or_default(),
                d.version,
                d.object_count,
                html::bytes(d.total_bytes),
                html::time(&d.created_at),
                esc(&d.created_by)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    html_response(
        StatusCode::OK,
        frame("Datasets", Nav::Datasets, Some((&data.me, &session)), &b),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    pub name: String,
    pub version: i32,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub object_count: i64,
    pub total_bytes: i64,
    pub cached_bytes: i64,
    pub manifest_key: String,
    pub manifest_bucket: String,
    pub versions: Vec<i32>,
    pub selection: Option<Value>,
    pub objects: Objects,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationRow {
    pub id: String,
    pub state: String,
    pub owner: String,
    pub purpose: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub bytes_total: i64,
    pub bytes_done: i64,
    pub dataset: DatasetRef,
}

#[derive(Debug, Deserialize)]
pub struct DatasetRef {
    pub name: String,
    pub version: i32,
}

#[derive(Debug, Deserialize)]
pub struct ReservationEdge {
    pub node: ReservationRow,
}

#[derive(Debug, Deserialize)]
pub struct Reservations {
    pub edges: Vec<ReservationEdge>,
}

#[derive(Debug, Deserialize)]
pub struct DatasetData {
    pub me: Me,
    pub dataset: Option<Dataset>,
    pub reservations: Reservations,
    /// What changed from the version before (none for a first version).
    #[serde(skip)]
    pub diff: Option<DiffData>,
    /// The "Lineage" section (`lineage::section`).
    #[serde(skip)]
    pub lineage: Option<String>,
}

/// `datasetDiff` against the previous version, as the page shows it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffData {
    pub from: i32,
    pub added_count: i64,
    pub removed_count: i64,
    pub changed_count: i64,
    pub unchanged_count: i64,
    pub added_bytes: i64,
    pub removed_bytes: i64,
    pub changed_bytes: i64,
    pub added: Vec<DiffMember>,
    pub removed: Vec<DiffMember>,
    pub changed: Vec<DiffChange>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffMember {
    pub view_key: String,
    pub bytes: i64,
}

#[derive(Debug, Deserialize)]
pub struct DiffChange {
    pub to: DiffMember,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DiffEnvelope {
    dataset_diff: DiffData,
}

/// Rows of each kind of change the page lists.
const DIFF_ROWS: i32 = 20;

#[derive(Debug, Default, Deserialize)]
pub struct VersionParam {
    #[serde(default)]
    pub version: Option<i32>,
}

pub const RESERVATION_FIELDS: &str =
    "id state owner purpose expiresAt bytesTotal bytesDone dataset { name version }";

pub async fn load(
    ui: &UiState,
    session: &Session,
    name: &str,
    version: Option<i32>,
) -> Result<DatasetData, Response> {
    let query = format!(
        r#"query($name: String!, $version: Int) {{ {ME}
  dataset(name: $name, version: $version) {{ name version description createdAt createdBy
    objectCount totalBytes cachedBytes manifestKey manifestBucket versions selection
    objects(first: 200) {{ totalCount edges {{ node {{ bucket key size cached }} }} }} }}
  reservations(first: 100) {{ edges {{ node {{ {RESERVATION_FIELDS} }} }} }} }}"#
    );
    let mut data: DatasetData = fetch(
        ui,
        session,
        &query,
        json!({ "name": name, "version": version }),
    )
    .await?;
    if let Some(d) = data.dataset.as_ref().filter(|d| d.version > 1) {
        let diff: DiffEnvelope = fetch(
            ui,
            session,
            "query($name: String!, $to: Int, $first: Int) { datasetDiff(name: $name, to: $to, first: $first) {
               from addedCount removedCount changedCount unchangedCount addedBytes removedBytes changedBytes
               added { viewKey bytes } removed { viewKey bytes } changed { to { viewKey bytes } } } }",
            json!({ "name": d.name, "to": d.version, "first": DIFF_ROWS }),
        )
        .await?;
        data.diff = Some(diff.dataset_diff);
    }
    if let Some(d) = &data.dataset {
        let id = format!("{}@{}", d.name, d.version);
        data.lineage = Some(super::lineage::section(ui, session, &id).await);
    }
    Ok(data)
}

/// The "Changes from v<N>" section: counts and bytes, then the first changes of each kind.
fn changes_section(b: &mut String, diff: &DiffData) {
    w!(
        b,
        r#"<section id="changes" aria-labelledby="changes-title"><h2 id="changes-title">Changes from v{}</h2><p><span id="diff-added">+{} files ({})</span> · <span id="diff-removed">−{} files ({})</span> · <span id="diff-changed">{} changed ({})</span> · <span id="diff-unchanged">{} unchanged</span></p>"#,
        diff.from,
        diff.added_count,
        html::bytes(diff.added_bytes),
        diff.removed_count,
        html::bytes(diff.removed_bytes),
        diff.changed_count,
        html::bytes(diff.changed_bytes),
        diff.unchanged_count
    );
    let rows = diff
        .added
        .iter()
        .map(|m| ("added", m))
        .chain(diff.removed.iter().map(|m| ("removed", m)))
        .chain(diff.changed.iter().map(|c| ("changed", &c.to)));
    let mut any = false;
    for (change, member) in rows {
        if !any {
            w!(
                b,
                r#"<div class="table-wrap"><table id="diff-rows"><caption>The first {DIFF_ROWS} changes of each kind</caption><thead><tr><th scope="col">Change</th><th scope="col">File</th><th scope="col" class="num">Size</th></tr></thead><tbody>"#
            );
            any = true;
        }
        w!(
            b,
            r#"<tr class="diff-{change}"><td>{change}</td><td class="mono">{}</td><td class="num">{}</td></tr>"#,
            esc(&member.view_key),
            html::bytes(member.bytes)
        );
    }
    if any {
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");
}

pub async fn page_handler(
    ui: &UiState,
    session: &Session,
    name: &str,
    version: Option<i32>,
) -> Response {
    let data = match load(ui, session, name, version).await {
        Ok(data) => data,
        Err(response) => return response,
    };
    match &data.dataset {
        Some(dataset) => html_response(
            StatusCode::OK,
            render_dataset(
                session,
                &data,
                dataset,
                &ReserveForm::default(),
                None,
                &ui.settings.viewer_names(),
            ),
        ),
        None => not_found(&format!("Dataset {name}")),
    }
}

pub async fn page(
    State(ui): State<UiState>,
    session: Session,
    Path(name): Path<String>,
    Query(v): Query<VersionParam>,
) -> Response {
    page_handler(&ui, &session, &name, v.version).await
}

/// What a Reserve form held, to show it again with an error.
#[derive(Debug)]
pub struct ReserveForm {
    pub ttl_hours: String,
    pub purpose: String,
    /// `datetime-local` text in office time (`2026-12-08T02:00`), empty for "now".
    pub ready_by: String,
}

impl Default for ReserveForm {
    fn default() -> Self {
        ReserveForm {
            ttl_hours: "24".to_owned(),
            purpose: String::new(),
            ready_by: String::new(),
        }
    }
}

/// The TTL field in hours as the API's seconds; a clear message otherwise.
pub fn ttl_seconds(hours: &str) -> Result<i64, GraphqlError> {
    let fail = |message: String| GraphqlError {
        message,
        code: "BAD_INPUT".to_owned(),
        field: Some("ttlSeconds".to_owned()),
    };
    match hours.trim().parse::<f64>() {
        Ok(h) if h.is_finite() && h > 0.0 => Ok((h * 3600.0).round().max(1.0) as i64),
        Ok(_) => Err(fail(format!(
            "expected a positive number of hours, got {}",
            hours.trim()
        ))),
        Err(_) if hours.trim().is_empty() => Err(fail("enter how many hours to keep it".into())),
        Err(_) => Err(fail(format!(
            "expected a number of hours, got {:?}",
            hours.trim()
        ))),
    }
}

/// The form's "ready by" (`datetime-local` text, office time, i.e. the server's time zone) as
/// the RFC 3339 instant `readyBy` wants; `None` when empty.
pub fn ready_by(text: &str) -> Result<Option<String>, GraphqlError> {
    use chrono::TimeZone as _;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let fail = |message: String| GraphqlError {
        message,
        code: "BAD_INPUT".to_owned(),
        field: Some("readyBy".to_owned()),
    };
    let local = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| {
            fail(format!(
                "expected a date and time such as 2026-12-08T02:00, got {text:?}"
            ))
        })?;
    let at = chrono::Local
        .from_local_datetime(&local)
        .earliest()
        .ok_or_else(|| {
            fail(format!(
                "{text} does not exist in office time (a clock change)"
            ))
        })?;
    Ok(Some(at.with_timezone(&chrono::Utc).to_rfc3339()))
}

pub fn reservation_rows(b: &mut String, rows: &[&ReservationRow], with_dataset: bool) {
    b.push_str(r#"<div class="table-wrap"><table><thead><tr><th scope="col">Reservation</th>"#);
    if with_dataset {
        b.push_str(r#"<th scope="col">Dataset</th>"#);
    }
    b.push_str(r#"<th scope="col">State</th><th scope="col">Owner</th><th scope="col" class="num">Progress</th><th scope="col">Expires</th></tr></thead><tbody>"#);
    for r in rows {
        w!(
            b,
            r#"<tr><td><a href="/reservations/{}" class="mono">{}</a>{}</td>"#,
            url(&r.id),
            esc(&r.id),
            r.purpose
                .as_deref()
                .map(|p| format!(r#"<br><small class="muted">{}</small>"#, esc(p)))
                .unwrap_or_default()
        );
        if with_dataset {
            w!(
                b,
                r#"<td><a href="/datasets/{}?version={}">{}@{}</a></td>"#,
                url(&r.dataset.name),
                r.dataset.version,
                esc(&r.dataset.name),
                r.dataset.version
            );
        }
        w!(
            b,
            r#"<td><span class="state {}">{}</span></td><td>{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&r.state.to_ascii_lowercase()),
            esc(&r.state),
            esc(&r.owner),
            html::percent(r.bytes_done, r.bytes_total),
            html::time(&r.expires_at)
        );
    }
    b.push_str("</tbody></table></div>");
}

pub fn render_dataset(
    session: &Session,
    data: &DatasetData,
    d: &Dataset,
    form: &ReserveForm,
    error: Option<&GraphqlError>,
    viewers: &[String],
) -> String {
    let me = &data.me;
    let mut b = String::with_capacity(24 * 1024);
    w!(
        &mut b,
        r#"<p class="crumbs"><a href="/datasets">Datasets</a> / {}</p><h1><span class="badge dataset">Dataset</span> {} <small>v{}</small></h1>"#,
        esc(&d.name),
        esc(&d.name),
        d.version
    );
    if let Some(description) = &d.description {
        w!(&mut b, "<p>{}</p>", esc(description));
    }
    if d.versions.len() > 1 {
        b.push_str(r#"<nav class="versions" aria-label="Versions"><span>Versions:</span> "#);
        for v in &d.versions {
            if *v == d.version {
                w!(
                    &mut b,
                    r#"<a aria-current="page" href="/datasets/{}?version={v}">v{v}</a> "#,
                    url(&d.name)
                );
            } else {
                w!(
                    &mut b,
                    r#"<a href="/datasets/{}?version={v}">v{v}</a> "#,
                    url(&d.name)
                );
            }
        }
        b.push_str("</nav>");
    }
    b.push_str(r#"<dl class="facts-grid">"#);
    w!(
        &mut b,
        r#"<div><dt>Files</dt><dd id="dataset-objects">{}</dd></div><div><dt>Size</dt><dd id="dataset-size">{}</dd></div><div><dt>Cached now</dt><dd>{} ({})</dd></div><div><dt>Created</dt><dd>{} by {}</dd></div>"#,
        d.object_count,
        html::bytes(d.total_bytes),
        html::bytes(d.cached_bytes),
        html::percent(d.cached_bytes, d.total_bytes),
        html::time(&d.created_at),
        esc(&d.created_by)
    );
    if let Some(query) = d.selection.as_ref().and_then(|s| s["query"].as_str()) {
        w!(
            &mut b,
            r#"<div><dt>Selected by</dt><dd><a href="/{}"><code>{}</code></a></dd></div>"#,
            query_string(&[("q", query)]),
            esc(query)
        );
    }
    w!(
        &mut b,
        r#"<div><dt>Manifest</dt><dd><a id="manifest-link" href="/files/{}/{}" download>Download (Parquet)</a> <code>s3://{}/{}</code></dd></div></dl>"#,
        url(&d.manifest_bucket),
        url_path(&d.manifest_key),
        esc(&d.manifest_bucket),
        esc(&d.manifest_key)
    );
    if let Some(diff) = &data.diff {
        changes_section(&mut b, diff);
    }
    if me.can_write() {
        reserve_panel(&mut b, session, &d.name, d.version, form, error);
    }
    let mine: Vec<&ReservationRow> = data
        .reservations
        .edges
        .iter()
        .map(|e| &e.node)
        .filter(|r| r.dataset.name == d.name && r.dataset.version == d.version)
        .collect();
    b.push_str("<section><h2>Reservations</h2>");
    if mine.is_empty() {
        b.push_str(r#"<p class="muted">None of yours.</p>"#);
    } else {
        reservation_rows(&mut b, &mine, false);
    }
    b.push_str("</section>");
    b.push_str(data.lineage.as_deref().unwrap_or_default());
    b.push_str("<section><h2>Objects</h2>");
    files_table(&mut b, &d.objects, "", viewers);
    b.push_str("</section>");
    frame(&d.name, Nav::Datasets, Some((me, session)), &b)
}

fn reserve_panel(
    b: &mut String,
    session: &Session,
    name: &str,
    version: i32,
    form: &ReserveForm,
    error: Option<&GraphqlError>,
) {
    let ttl_error = error_for(error, &["ttlSeconds", "ttl"]);
    let purpose_error = error_for(error, &["purpose"]);
    let ready_by_error = error_for(error, &["readyBy"]);
    w!(
        b,
        r#"<section class="panel" aria-labelledby="reserve-title"><h2 id="reserve-title">Reserve</h2><p class="muted">Copies the dataset into this office's cache and keeps it there until the reservation expires.</p><form method="post" action="/reserve" class="stack inline-form" id="reserve-form" novalidate><input type="hidden" name="csrf" value="{}"><input type="hidden" name="dataset" value="{}"><input type="hidden" name="version" value="{}">"#,
        esc(&session.csrf),
        esc(name),
        version
    );
    if let Some(e) =
        error.filter(|_| ttl_error.is_none() && purpose_error.is_none() && ready_by_error.is_none())
    {
        w!(
            b,
            r#"<p class="error-box" role="alert">{}</p>"#,
            esc(&e.message)
        );
    }
    w!(
        b,
        r#"<div><label for="ttl">Keep for (hours)</label><input id="ttl" name="ttl_hours" type="number" step="any" value="{}"{}>"#,
        esc(&form.ttl_hours),
        invalid_attrs("ttl", ttl_error)
    );
    field_error(b, "ttl", ttl_error);
    w!(
        b,
        r#"</div><div><label for="purpose">Purpose</label><input id="purpose" name="purpose" value="{}" placeholder="what it is for"{}>"#,
        esc(&form.purpose),
        invalid_attrs("purpose", purpose_error)
    );
    field_error(b, "purpose", purpose_error);
    w!(
        b,
        r#"</div><div><label for="ready-by">Ready by (office time, optional)</label><input id="ready-by" name="ready_by" type="datetime-local" value="{}"{}>"#,
        esc(&form.ready_by),
        invalid_attrs("ready-by", ready_by_error)
    );
    field_error(b, "ready-by", ready_by_error);
    b.push_str(
        r#"</div><button type="submit" id="reserve-button">Reserve</button></form><p class="hint">With a deadline it downloads within the office's download windows, and is refused if they cannot make it.</p></section>"#,
    );
}

/// The new-dataset form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct NewDataset {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub include: String,
    #[serde(default)]
    pub ttl_hours: String,
    #[serde(default)]
    pub purpose: String,
}

impl NewDataset {
    fn from_form(form: &Form) -> NewDataset {
        NewDataset {
            q: form.get("q").to_owned(),
            name: form.get("name").trim().to_owned(),
            description: form.get("description").to_owned(),
            include: form.get("include").to_owned(),
            ttl_hours: form.get("ttl_hours").to_owned(),
            purpose: form.get("purpose").to_owned(),
        }
    }

    fn globs(&self) -> Vec<&str> {
        self.include
            .lines()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub object_count: i64,
    pub total_bytes: i64,
    pub cached_bytes: i64,
}

async fn preview(
    ui: &UiState,
    session: &Session,
    form: &NewDataset,
) -> Result<Result<Preview, GraphqlError>, Response> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        preview_dataset: Preview,
    }
    let result = mutate::<Data>(
        ui,
        session,
        "query($q: String!, $include: [String!]) { previewDataset(query: $q, include: $include) { objectCount totalBytes cachedBytes } }",
        json!({ "q": form.q, "include": form.globs() }),
    )
    .await?;
    Ok(result.map(|d| d.preview_dataset))
}

async fn me(ui: &UiState, session: &Session) -> Result<Me, Response> {
    #[derive(Deserialize)]
    struct Data {
        me: Me,
    }
    Ok(
        fetch::<Data>(ui, session, &format!("{{ {ME} }}"), json!({}))
            .await?
            .me,
    )
}

fn render_new(
    session: &Session,
    me: &Me,
    form: &NewDataset,
    preview: Option<&Preview>,
    error: Option<&GraphqlError>,
) -> String {
    let q_error = error_for(error, &["query", "q"]);
    let name_error = error_for(error, &["name"]);
    let description_error = error_for(error, &["description"]);
    let include_error = error_for(error, &["include"]);
    let ttl_error = error_for(error, &["ttlSeconds", "ttl"]);
    let purpose_error = error_for(error, &["purpose"]);
    let mut b = String::with_capacity(8 * 1024);
    b.push_str(
        r#"<p class="crumbs"><a href="/datasets">Datasets</a> / new</p><h1>Create a dataset</h1>"#,
    );
    if let Some(e) = error.filter(|_| {
        [
            q_error,
            name_error,
            description_error,
            include_error,
            ttl_error,
            purpose_error,
        ]
        .iter()
        .all(Option::is_none)
    }) {
        w!(
            &mut b,
            r#"<p class="error-box" role="alert">{}</p>"#,
            esc(&e.message)
        );
    }
    w!(
        &mut b,
        r#"<form method="post" action="/new-dataset" class="stack" id="new-dataset" novalidate><input type="hidden" name="csrf" value="{}"><label for="nd-q">Search query</label><input id="nd-q" name="q" value="{}" class="mono"{}>"#,
        esc(&session.csrf),
        esc(&form.q),
        invalid_attrs("nd-q", q_error)
    );
    field_error(&mut b, "nd-q", q_error);
    w!(
        &mut b,
        r#"<p class="hint"><a href="/{}">See what it matches</a></p><label for="nd-name">Name</label><input id="nd-name" name="name" value="{}" placeholder="rainy-cut-ins" autocapitalize="none" spellcheck="false"{}>"#,
        query_string(&[("q", &form.q)]),
        esc(&form.name),
        invalid_attrs("nd-name", name_error)
    );
    field_error(&mut b, "nd-name", name_error);
    b.push_str(r#"<p class="hint">a-z, 0-9, <code>.</code> <code>_</code> <code>-</code>; an existing name gets a new version.</p>"#);
    w!(
        &mut b,
        r#"<label for="nd-description">Description</label><textarea id="nd-description" name="description" rows="2"{}>{}</textarea>"#,
        invalid_attrs("nd-description", description_error),
        esc(&form.description)
    );
    field_error(&mut b, "nd-description", description_error);
    w!(
        &mut b,
        r#"<label for="nd-include">Only files matching (one glob per line, optional)</label><textarea id="nd-include" name="include" rows="2" class="mono" placeholder="*.mcap&#10;camera/front/*"{}>{}</textarea>"#,
        invalid_attrs("nd-include", include_error),
        esc(&form.include)
    );
    field_error(&mut b, "nd-include", include_error);
    match preview {
        Some(p) => w!(
            &mut b,
            r#"<p class="preview" id="preview" role="status">Holds <strong id="preview-count">{}</strong> files, <strong id="preview-size">{}</strong>; {} of it cached in this office now.</p>"#,
            p.object_count,
            html::bytes(p.total_bytes),
            html::percent(p.cached_bytes, p.total_bytes)
        ),
        None => b.push_str(
            r#"<p class="preview muted" role="status">Preview the size before creating.</p>"#,
        ),
    }
    b.push_str(r#"<div class="buttons"><button type="submit" name="action" value="preview" class="secondary" id="preview-button">Preview size</button><button type="submit" name="action" value="create" id="create-button">Create dataset</button></div><fieldset><legend>Or create and reserve at once</legend>"#);
    let ttl = if form.ttl_hours.is_empty() {
        "24"
    } else {
        form.ttl_hours.as_str()
    };
    w!(
        &mut b,
        r#"<div class="row"><div><label for="nd-ttl">Keep for (hours)</label><input id="nd-ttl" name="ttl_hours" type="number" step="any" value="{}"{}>"#,
        esc(ttl),
        invalid_attrs("nd-ttl", ttl_error)
    );
    field_error(&mut b, "nd-ttl", ttl_error);
    w!(
        &mut b,
        r#"</div><div><label for="nd-purpose">Purpose</label><input id="nd-purpose" name="purpose" value="{}"{}>"#,
        esc(&form.purpose),
        invalid_attrs("nd-purpose", purpose_error)
    );
    field_error(&mut b, "nd-purpose", purpose_error);
    b.push_str(r#"</div></div><button type="submit" name="action" value="reserve" id="create-reserve-button">Create and reserve</button></fieldset></form>"#);
    frame("New dataset", Nav::Datasets, Some((me, session)), &b)
}

pub async fn new_form(
    State(ui): State<UiState>,
    session: Session,
    Query(form): Query<NewDataset>,
) -> Response {
    let me = match me(&ui, &session).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    // The size preview is shown straight away for the query the user came with.
    let (shown, error) = if form.q.trim().is_empty() {
        (None, None)
    } else {
        match preview(&ui, &session, &form).await {
            Ok(Ok(p)) => (Some(p), None),
            Ok(Err(e)) => (None, Some(e)),
            Err(response) => return response,
        }
    };
    html_response(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        render_new(&session, &me, &form, shown.as_ref(), error.as_ref()),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    create_dataset: DatasetRef,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reserved {
    reserve_dataset: super::entities::IdOnly,
}

pub async fn new_submit(
    State(ui): State<UiState>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = Form::parse(&body);
    if let Err(refused) = check_post(&session, &headers, &raw) {
        return refused;
    }
    let form = NewDataset::from_form(&raw);
    let action = raw.get("action");
    let me = match me(&ui, &session).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let refused = |preview: Option<&Preview>, error: GraphqlError| {
        html_response(
            StatusCode::BAD_REQUEST,
            render_new(&session, &me, &form, preview, Some(&error)),
        )
    };
    if action == "preview" {
        return match preview(&ui, &session, &form).await {
            Ok(Ok(p)) => html_response(
                StatusCode::OK,
                render_new(&session, &me, &form, Some(&p), None),
            ),
            Ok(Err(e)) => refused(None, e),
            Err(response) => response,
        };
    }
    // Checked before anything is created, so a bad TTL does not leave a dataset behind.
    let ttl = if action == "reserve" {
        match ttl_seconds(&form.ttl_hours) {
            Ok(ttl) => Some(ttl),
            Err(e) => return refused(None, e),
        }
    } else {
        None
    };
    let globs = form.globs();
    let input = json!({
        "name": form.name,
        "description": Some(form.description.trim()).filter(|d| !d.is_empty()),
        "query": form.q,
        "include": if globs.is_empty() { None } else { Some(globs) },
    });
    let created = match mutate::<Created>(
        &ui,
        &session,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name version } }",
        json!({ "input": input }),
    )
    .await
    {
        Ok(Ok(created)) => created.create_dataset,
        Ok(Err(e)) => return refused(None, e),
        Err(response) => return response,
    };
    let Some(ttl) = ttl else {
        return see_other(&format!(
            "/datasets/{}?version={}",
            url(&created.name),
            created.version
        ));
    };
    let purpose = Some(form.purpose.trim()).filter(|p| !p.is_empty());
    match reserve(
        &ui,
        &session,
        &created.name,
        created.version,
        ttl,
        purpose,
        None,
    )
    .await
    {
        Ok(Ok(id)) => see_other(&format!("/reservations/{}", url(&id))),
        // The dataset exists now; its page shows the reservation error next to the form.
        Ok(Err(e)) => match load(&ui, &session, &created.name, Some(created.version)).await {
            Ok(data) => match &data.dataset {
                Some(d) => html_response(
                    StatusCode::BAD_REQUEST,
                    render_dataset(
                        &session,
                        &data,
                        d,
                        &ReserveForm {
                            ttl_hours: form.ttl_hours.clone(),
                            purpose: form.purpose.clone(),
                            ready_by: String::new(),
                        },
                        Some(&e),
                        &ui.settings.viewer_names(),
                    ),
                ),
                None => not_found(&format!("Dataset {}", created.name)),
            },
            Err(response) => response,
        },
        Err(response) => response,
    }
}

/// `reserveDataset`; the reservation id, or an error for the form.
pub async fn reserve(
    ui: &UiState,
    session: &Session,
    name: &str,
    version: i32,
    ttl_seconds: i64,
    purpose: Option<&str>,
    ready_by: Option<String>,
) -> Result<Result<String, GraphqlError>, Response> {
    let input = json!({
        "dataset": name,
        "version": version,
        "ttlSeconds": ttl_seconds.min(i64::from(i32::MAX)),
        "purpose": purpose,
        "readyBy": ready_by,
    });
    Ok(mutate::<Reserved>(
        ui,
        session,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": input }),
    )
    .await?
    .map(|r| r.reserve_dataset.id))
}

/// `/files/{bucket}/{*key}`: an object through the office cache, for links on pages (the
/// browser cannot add the `Authorization` header `/data` wants).
pub async fn file(
    State(ui): State<UiState>,
    session: Session,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    ui.exec.object(&session.token, &bucket, &key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_by_is_office_time_or_nothing() {
        assert_eq!(ready_by("  ").expect("test value"), None);
        let at = ready_by("2026-12-08T02:00")
            .expect("test value")
            .expect("test value");
        let parsed = chrono::DateTime::parse_from_rfc3339(&at).expect("test value");
        let local = parsed.with_timezone(&chrono::Local).naive_local();
        assert_eq!(local.to_string(), "2026-12-08 02:00:00");
        assert!(ready_by("2026-12-08T02:00:30")
            .expect("test value")
            .is_some());
        let refused = ready_by("tomorrow 2am").expect_err("refused");
        assert_eq!(refused.field.as_deref(), Some("readyBy"));
        assert!(
            refused.message.contains("\"tomorrow 2am\""),
            "{}",
            refused.message
        );
    }
}
