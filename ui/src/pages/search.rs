//! The search page: query box with syntax help and autocomplete data, facet sidebar (a click
//! adds `field:value` to the query, a second click removes it), results, pagination. The URL
//! holds the whole state (`?q=...&after=...&start=...`), so a search can be shared.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::fetch;
use crate::html::{self, esc, field_error, invalid_attrs, query_string, url};
use crate::layout::{api_error, frame, Me, Nav, ME};
use crate::session::Session;
use crate::{html_response, w, UiState};

pub const PAGE_SIZE: i64 = 20;

/// Field names of the query language (the indexer's `search::FIELDS`), for autocomplete.
pub const QUERY_FIELDS: &[&str] = &[
    "kind", "vehicle", "city", "weather", "tag", "software", "pipeline", "status", "topic", "id",
    "label", "drive", "after", "before",
];

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub after: String,
    #[serde(default)]
    pub start: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchData {
    pub me: Me,
    pub search: SearchResult,
    #[serde(default)]
    pub sync_status: Option<SyncLine>,
}

/// The catalog sync's state, for the line under the search box.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncLine {
    pub phase: String,
    pub targeted: bool,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub objects_seen: i64,
    pub objects_changed: i64,
    pub objects_per_second: f64,
    pub errors: i64,
    pub failure: Option<String>,
}

impl SyncLine {
    /// `Catalog sync: listing · 42000 objects seen, 1203 changed · 3100 objects/s`, or the
    /// last whole pass's outcome; nothing before the first pass.
    fn render(&self, b: &mut String) {
        let text = match self.phase.as_str() {
            "idle" => return,
            "done" => {
                let at = self
                    .finished_at
                    .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_default();
                match &self.failure {
                    Some(failure) => format!("Catalog sync failed at {at}: {failure}"),
                    None => format!(
                        "Catalog {} at {at}: {} objects seen, {} changed, {} problems",
                        if self.targeted {
                            "updated"
                        } else {
                            "synced"
                        },
                        self.objects_seen,
                        self.objects_changed,
                        self.errors
                    ),
                }
            }
            phase => format!(
                "Catalog sync: {phase} · {} objects seen, {} changed · {:.0} objects/s · {} problems",
                self.objects_seen, self.objects_changed, self.objects_per_second, self.errors
            ),
        };
        w!(b, r#"<p class="muted" id="sync-status">{}</p>"#, esc(&text));
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    pub total_count: i64,
    pub edges: Vec<Edge>,
    pub page_info: PageInfo,
    pub facets: Vec<Facet>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Facet {
    pub field: String,
    pub values: Vec<FacetValue>,
}

#[derive(Debug, Deserialize)]
pub struct FacetValue {
    pub value: String,
    pub count: i64,
}

#[derive(Debug, Deserialize)]
pub struct Edge {
    pub node: Entity,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "__typename")]
pub enum Entity {
    Drive(DriveHit),
    Scenario(ScenarioHit),
    Run(RunHit),
    /// A kind this page does not know yet (datasets are not indexed today).
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriveHit {
    pub id: String,
    pub vehicle: String,
    pub city: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub software_version: Option<String>,
    pub weather: Option<String>,
    pub tags: Vec<String>,
    pub total_bytes: i64,
    pub cached_bytes: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioHit {
    pub id: String,
    pub label: String,
    pub tags: Vec<String>,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub drive: DriveHit,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunHit {
    pub id: String,
    pub kind: String,
    pub pipeline: String,
    pub status: String,
    pub commit: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub total_bytes: i64,
}

const DRIVE_FIELDS: &str =
    "id vehicle city startedAt endedAt softwareVersion weather tags totalBytes cachedBytes";

pub fn search_query() -> String {
    format!(
        r#"query($q: String!, $first: Int, $after: String) {{ {ME}
  search(query: $q, first: $first, after: $after) {{
    totalCount pageInfo {{ hasNextPage endCursor }} facets {{ field values {{ value count }} }}
    edges {{ node {{ __typename
      ... on Drive {{ {DRIVE_FIELDS} }}
      ... on Scenario {{ id label tags startTime endTime drive {{ {DRIVE_FIELDS} }} }}
      ... on Run {{ id kind pipeline status commit startedAt finishedAt tags totalBytes }}
    }} }} }}
  syncStatus {{ phase targeted finishedAt objectsSeen objectsChanged objectsPerSecond errors failure }} }}"#
    )
}

/// Splits a query into its terms, keeping `"quoted words"` (and `field:"quoted"`) whole.
pub fn terms(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in query.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The term that filters `field` to exactly `value`.
pub fn facet_term(field: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || "-_./+@".contains(c));
    if plain {
        format!("{field}:{value}")
    } else {
        format!("{field}:\"{value}\"")
    }
}

/// The query with `term` added, or removed when it is already there (case-insensitively).
pub fn toggle(query: &str, term: &str) -> (String, bool) {
    let all = terms(query);
    let present = all.iter().any(|t| t.eq_ignore_ascii_case(term));
    let kept: Vec<String> = if present {
        all.into_iter()
            .filter(|t| !t.eq_ignore_ascii_case(term))
            .collect()
    } else {
        all.into_iter().chain([term.to_owned()]).collect()
    };
    (kept.join(" "), present)
}

pub async fn page(
    State(ui): State<UiState>,
    session: Session,
    Query(params): Query<Params>,
) -> Response {
    let mut variables = json!({ "q": params.q, "first": PAGE_SIZE });
    if !params.after.is_empty() {
        variables["after"] = json!(params.after);
    }
    let response = ui
        .exec
        .execute(&session.token, &search_query(), variables)
        .await;
    match response.into_result::<SearchData>() {
        Ok(data) => html_response(
            StatusCode::OK,
            render(
                &session,
                &data.me,
                &params,
                Some(&data.search),
                data.sync_status.as_ref(),
                None,
            ),
        ),
        Err(error) if error.code == "BAD_INPUT" => {
            // The query (or cursor) is what was wrong: show the page with the message under
            // the box rather than an error page.
            let me = match fetch::<MeOnly>(&ui, &session, &format!("{{ {ME} }}"), json!({})).await {
                Ok(me) => me.me,
                Err(response) => return response,
            };
            html_response(
                StatusCode::BAD_REQUEST,
                render(&session, &me, &params, None, None, Some(&error.message)),
            )
        }
        Err(error) => api_error(error),
    }
}

#[derive(Debug, Deserialize)]
pub struct MeOnly {
    pub me: Me,
}

/// Renders the page; `result` is `None` when the query was refused with `error`.
pub fn render(
    session: &Session,
    me: &Me,
    params: &Params,
    result: Option<&SearchResult>,
    sync: Option<&SyncLine>,
    error: Option<&str>,
) -> String {
    let q = params.q.as_str();
    let mut b = String::with_capacity(32 * 1024);
    w!(
        &mut b,
        r#"<h1 class="sr-only">Search the catalog</h1><form class="searchbar" role="search" method="get" action="/"><label for="q">Search drives, scenarios and runs</label><div class="ac"><input id="q" name="q" type="search" value="{}" autocomplete="off" spellcheck="false" placeholder="cut-in city:guangzhou weather:rain after:2026-10-01" role="combobox" aria-autocomplete="list" aria-expanded="false" aria-controls="q-suggestions"{}><ul id="q-suggestions" role="listbox" hidden></ul><button type="submit">Search</button></div>"#,
        esc(q),
        invalid_attrs("q", error)
    );
    field_error(&mut b, "q", error);
    b.push_str(r#"<details class="syntax"><summary>Query syntax</summary><ul><li>Words are free text; all terms must match. <code>cut-in</code> and <code>"unprotected left"</code> are phrases, <code>ped*</code> a prefix.</li><li><code>field:value</code> matches a field exactly: "#);
    for (i, field) in QUERY_FIELDS.iter().enumerate() {
        if i > 0 {
            b.push_str(", ");
        }
        w!(&mut b, "<code>{field}</code>");
    }
    b.push_str(r#". <code>software:av-3.14*</code> matches a prefix, <code>city:*</code> any value.</li><li><code>after:2026-10-01</code> (inclusive) and <code>before:2026-11-01</code> (exclusive) bound the start time.</li><li><code>-tag:highway</code> excludes.</li></ul></details></form>"#);
    if let Some(sync) = sync {
        sync.render(&mut b);
    }

    let Some(result) = result else {
        return frame("Search", Nav::Search, Some((me, session)), &b);
    };
    // Autocomplete data for app.js: field names and the values the facets know.
    let mut values = serde_json::Map::new();
    for facet in &result.facets {
        values.insert(
            facet.field.clone(),
            json!(facet.values.iter().map(|v| &v.value).collect::<Vec<_>>()),
        );
    }
    let data = json!({ "fields": QUERY_FIELDS, "values": values }).to_string();
    // `<` is escaped so no value can close the script element.
    w!(
        &mut b,
        r#"<script type="application/json" id="ac-data">{}</script>"#,
        data.replace('<', "\\u003c")
    );

    b.push_str(r#"<div class="with-sidebar"><aside class="facets" aria-label="Filters">"#);
    for facet in &result.facets {
        if facet.values.is_empty() {
            continue;
        }
        w!(&mut b, r#"<section><h2>{}</h2><ul>"#, esc(&facet.field));
        for value in &facet.values {
            let term = facet_term(&facet.field, &value.value);
            let (next, on) = toggle(q, &term);
            w!(
                &mut b,
                r#"<li><a class="facet{}" href="/{}" aria-pressed="{}" title="{}"><span>{}</span> <span class="count">{}</span></a></li>"#,
                if on { " on" } else { "" },
                query_string(&[("q", &next)]),
                on,
                if on {
                    "Remove this filter"
                } else {
                    "Filter by this value"
                },
                esc(&value.value),
                value.count
            );
        }
        b.push_str("</ul></section>");
    }
    b.push_str(r#"</aside><section class="results" aria-labelledby="results-title">"#);
    let shown_from = params.start.max(0) + 1;
    let shown_to = params.start.max(0) + result.edges.len() as i64;
    w!(
        &mut b,
        r#"<div class="results-head"><h2 id="results-title"><span id="total-count">{}</span> results{}</h2>"#,
        result.total_count,
        if result.edges.is_empty() {
            String::new()
        } else {
            format!(" <small>({shown_from}–{shown_to})</small>")
        }
    );
    if me.can_write() && result.total_count > 0 {
        w!(
            &mut b,
            r#"<a class="button" id="create-dataset" href="/new-dataset{}">Create dataset from this search</a>"#,
            query_string(&[("q", q)])
        );
    }
    b.push_str("</div>");
    if result.edges.is_empty() {
        b.push_str(r#"<p class="empty">Nothing matches. Remove a filter or try fewer words.</p>"#);
    }
    b.push_str(r#"<ol class="hits">"#);
    for edge in &result.edges {
        render_hit(&mut b, &edge.node);
    }
    b.push_str("</ol>");
    if params.start > 0 || result.page_info.has_next_page {
        b.push_str(r#"<nav class="pager" aria-label="Pages">"#);
        if params.start > 0 {
            w!(
                &mut b,
                r#"<a href="/{}">First page</a>"#,
                query_string(&[("q", q)])
            );
        }
        if let (true, Some(cursor)) = (
            result.page_info.has_next_page,
            result.page_info.end_cursor.as_deref(),
        ) {
            let start = (params.start.max(0) + PAGE_SIZE).to_string();
            w!(
                &mut b,
                r#"<a rel="next" id="next-page" href="/{}">Next page</a>"#,
                query_string(&[("q", q), ("after", cursor), ("start", &start)])
            );
        }
        b.push_str("</nav>");
    }
    b.push_str("</section></div>");
    frame("Search", Nav::Search, Some((me, session)), &b)
}

fn size_facts(b: &mut String, total: i64, cached: Option<i64>) {
    match cached {
        Some(cached) => w!(
            b,
            r#"<span class="size">{} <meter min="0" max="{}" value="{}" title="{} cached"></meter> {} cached</span>"#,
            html::bytes(total),
            total.max(1),
            cached,
            html::percent(cached, total),
            html::percent(cached, total)
        ),
        None => w!(b, r#"<span class="size">{}</span>"#, html::bytes(total)),
    }
}

fn tags(b: &mut String, tags: &[String]) {
    if tags.is_empty() {
        return;
    }
    b.push_str(r#"<ul class="tags">"#);
    for tag in tags.iter().take(8) {
        w!(b, "<li>{}</li>", esc(tag));
    }
    b.push_str("</ul>");
}

fn drive_facts(b: &mut String, d: &DriveHit) {
    w!(b, "<li>{}</li>", esc(&d.vehicle));
    if let Some(city) = &d.city {
        w!(b, "<li>{}</li>", esc(city));
    }
    w!(b, "<li>{}</li>", html::date(&d.started_at));
    w!(
        b,
        "<li>{}</li>",
        html::duration((d.ended_at - d.started_at).num_seconds())
    );
    if let Some(software) = &d.software_version {
        w!(b, "<li>{}</li>", esc(software));
    }
    if let Some(weather) = &d.weather {
        w!(b, "<li>{}</li>", esc(weather));
    }
}

fn render_hit(b: &mut String, entity: &Entity) {
    match entity {
        Entity::Drive(d) => {
            w!(
                b,
                r#"<li class="hit"><span class="badge drive">Drive</span> <a class="hit-title" href="/drives/{}">{}</a><ul class="facts">"#,
                url(&d.id),
                esc(&d.id)
            );
            drive_facts(b, d);
            b.push_str("</ul>");
            size_facts(b, d.total_bytes, Some(d.cached_bytes));
            tags(b, &d.tags);
        }
        Entity::Scenario(s) => {
            w!(
                b,
                r#"<li class="hit"><span class="badge scenario">Scenario</span> <a class="hit-title" href="/drives/{}#scenario-{}">{}</a> <span class="muted">in {} · {}</span><ul class="facts">"#,
                url(&s.drive.id),
                esc(&s.id),
                esc(&s.label),
                esc(&s.drive.id),
                html::duration((s.end_time - s.start_time).num_seconds())
            );
            drive_facts(b, &s.drive);
            b.push_str("</ul>");
            size_facts(b, s.drive.total_bytes, Some(s.drive.cached_bytes));
            tags(b, &s.tags);
        }
        Entity::Run(r) => {
            w!(
                b,
                r#"<li class="hit"><span class="badge run">Run</span> <a class="hit-title" href="/runs/{}">{}</a><ul class="facts"><li>{}</li><li>{}</li><li><span class="status {}">{}</span></li>"#,
                url(&r.id),
                esc(&r.id),
                esc(&r.pipeline),
                esc(&r.kind),
                esc(&r.status.to_ascii_lowercase()),
                esc(&r.status)
            );
            if let Some(at) = &r.started_at {
                w!(b, "<li>{}</li>", html::date(at));
            }
            if let (Some(a), Some(z)) = (&r.started_at, &r.finished_at) {
                w!(b, "<li>{}</li>", html::duration((*z - *a).num_seconds()));
            }
            if let Some(commit) = &r.commit {
                let short: String = commit.chars().take(10).collect();
                w!(b, "<li><code>{}</code></li>", esc(&short));
            }
            b.push_str("</ul>");
            size_facts(b, r.total_bytes, None);
            tags(b, &r.tags);
        }
        Entity::Other => b.push_str(r#"<li class="hit">"#),
    }
    b.push_str("</li>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facets_toggle_terms() {
        assert_eq!(
            toggle("cut-in", "city:munich"),
            ("cut-in city:munich".into(), false)
        );
        assert_eq!(
            toggle("cut-in City:Munich", "city:munich"),
            ("cut-in".into(), true)
        );
        assert_eq!(
            toggle(r#""lane merge" tag:"left turn""#, r#"tag:"left turn""#),
            (r#""lane merge""#.into(), true)
        );
        assert_eq!(facet_term("tag", "left turn"), r#"tag:"left turn""#);
        assert_eq!(facet_term("software", "av-3.14.2"), "software:av-3.14.2");
    }
}
