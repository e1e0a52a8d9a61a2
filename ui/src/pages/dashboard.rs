//! The cache dashboard (capacity, hit ratio, egress saved, the egress ledger over time, top
//! datasets, and in an office cluster its nodes). The transfers page is `transfers.rs`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::fetch;
use crate::html::{self, esc, url};
use crate::layout::{frame, Me, Nav, ME};
use crate::session::Session;
use crate::{html_response, w, UiState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    pub office: String,
    pub capacity_bytes: i64,
    pub used_bytes: i64,
    pub pinned_bytes: i64,
    pub objects: i64,
    pub hits: i64,
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
    pub bytes_delivered: i64,
    pub egress_saved_usd: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub start: DateTime<Utc>,
    pub hits: i64,
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
    pub bytes_reserved: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub name: String,
    pub reservations: i64,
    pub bytes_reserved: i64,
    pub bytes_from_upstream: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    pub node_id: String,
    pub address: String,
    pub alive: bool,
    pub heartbeat_age_ms: i64,
    pub uploads_held: i64,
    pub reservations_held: i64,
}

/// The office cluster, when the office runs as one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub this_node: String,
    pub nodes: Vec<ClusterNode>,
    pub dirty_bytes: i64,
    pub uploads_queued: i64,
    pub uploads_orphaned: i64,
    pub reservations_orphaned: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheData {
    pub me: Me,
    pub cache_stats: CacheStats,
    pub cache_history: Vec<Point>,
    pub top_datasets: Vec<Usage>,
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Range {
    #[serde(default)]
    pub range: String,
}

const RANGES: [(&str, &str, i64, i64); 3] = [
    ("hour", "Last hour", 60, 60),
    ("day", "Last day", 3600, 24),
    ("month", "Last 30 days", 86_400, 30),
];

pub async fn cache(
    State(ui): State<UiState>,
    session: Session,
    Query(range): Query<Range>,
) -> Response {
    let (key, _, width, buckets) = RANGES
        .iter()
        .copied()
        .find(|r| r.0 == range.range)
        .unwrap_or(RANGES[1]);
    let query = format!(
        r#"query($w: Int!, $n: Int!) {{ {ME}
  cacheStats {{ office capacityBytes usedBytes pinnedBytes objects hits misses bytesServed bytesFromUpstream bytesDelivered egressSavedUsd }}
  cacheHistory(bucketSeconds: $w, buckets: $n) {{ start hits misses bytesServed bytesFromUpstream bytesReserved }}
  topDatasets(first: 5) {{ name reservations bytesReserved bytesFromUpstream }}
  cluster {{ thisNode dirtyBytes uploadsQueued uploadsOrphaned reservationsOrphaned
    nodes {{ nodeId address alive heartbeatAgeMs uploadsHeld reservationsHeld }} }} }}"#
    );
    let data: CacheData =
        match fetch(&ui, &session, &query, json!({ "w": width, "n": buckets })).await {
            Ok(data) => data,
            Err(response) => return response,
        };
    let s = &data.cache_stats;
    let mut b = String::with_capacity(16 * 1024);
    w!(
        &mut b,
        r#"<h1>Cache <small>{}</small></h1><div class="tiles">"#,
        esc(&s.office)
    );
    w!(
        &mut b,
        r#"<section class="tile"><h2>Capacity</h2><p class="big"><span id="used-bytes">{}</span> <small>of {}</small></p><meter min="0" max="{}" value="{}" aria-label="Used"></meter><p class="muted">{} pinned by reservations · {} files</p></section>"#,
        html::bytes(s.used_bytes),
        html::bytes(s.capacity_bytes),
        s.capacity_bytes.max(1),
        s.used_bytes,
        html::bytes(s.pinned_bytes),
        s.objects
    );
    let delivered = s.bytes_delivered.max(0);
    let from_cache = (delivered - s.bytes_from_upstream).max(0);
    w!(
        &mut b,
        r#"<section class="tile"><h2>Hit ratio</h2><p class="big" id="hit-ratio">{}</p><p class="muted">of bytes delivered came from the cache · <span id="hits">{}</span> hits on /data reads, <span id="misses">{}</span> downloads</p></section>"#,
        html::percent(from_cache, delivered),
        s.hits,
        s.misses
    );
    w!(
        &mut b,
        r#"<section class="tile"><h2>Served vs fetched</h2><p class="big"><span id="bytes-delivered">{}</span> <small>delivered</small></p><p class="muted"><span id="bytes-fetched">{}</span> fetched from upstream · {} served over /data</p></section>"#,
        html::bytes(delivered),
        html::bytes(s.bytes_from_upstream),
        html::bytes(s.bytes_served)
    );
    w!(
        &mut b,
        r#"<section class="tile"><h2>Egress saved</h2><p class="big" id="egress-saved">{}</p><p class="muted">at the configured price per GiB</p></section></div>"#,
        dollars(s.egress_saved_usd)
    );

    b.push_str(r#"<section><div class="section-head"><h2>Over time</h2><nav aria-label="Range" class="tabs">"#);
    for (k, label, _, _) in RANGES {
        w!(
            &mut b,
            r#"<a href="/cache?range={k}"{}>{label}</a>"#,
            if k == key {
                r#" aria-current="page""#
            } else {
                ""
            }
        );
    }
    b.push_str("</nav></div>");
    chart(&mut b, &data.cache_history, width);
    b.push_str("</section><section><h2>Top datasets</h2>");
    if data.top_datasets.is_empty() {
        b.push_str(r#"<p class="muted">No reservations yet.</p>"#);
    } else {
        b.push_str(r#"<div class="table-wrap"><table id="top-datasets"><thead><tr><th scope="col">Dataset</th><th scope="col" class="num">Reservations</th><th scope="col" class="num">Reserved</th><th scope="col" class="num">From upstream</th></tr></thead><tbody>"#);
        for d in &data.top_datasets {
            let (name, version) = d.name.rsplit_once('@').unwrap_or((&d.name, ""));
            w!(
                &mut b,
                r#"<tr><td><a href="/datasets/{}?version={}">{}</a></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
                url(name),
                url(version),
                esc(&d.name),
                d.reservations,
                html::bytes(d.bytes_reserved),
                html::bytes(d.bytes_from_upstream)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");
    if let Some(cluster) = &data.cluster {
        cluster_section(&mut b, cluster);
    }
    html_response(
        StatusCode::OK,
        frame("Cache", Nav::Cache, Some((&data.me, &session)), &b),
    )
}

/// The office cluster's nodes and the work waiting to be taken over.
fn cluster_section(b: &mut String, cluster: &Cluster) {
    w!(
        b,
        r#"<section id="cluster"><h2>Office cluster</h2><p class="muted">Answered by node {} · {} not yet in S3 · {} uploads queued · waiting to be taken over from nodes that are gone: {} uploads, {} reservations</p>"#,
        esc(&cluster.this_node),
        html::bytes(cluster.dirty_bytes),
        cluster.uploads_queued,
        cluster.uploads_orphaned,
        cluster.reservations_orphaned
    );
    b.push_str(r#"<div class="table-wrap"><table id="cluster-nodes"><thead><tr><th scope="col">Node</th><th scope="col">Address</th><th scope="col">State</th><th scope="col" class="num">Last heartbeat</th><th scope="col" class="num">Uploads</th><th scope="col" class="num">Reservations</th></tr></thead><tbody>"#);
    for node in &cluster.nodes {
        w!(
            b,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{:.1} s ago</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&node.node_id),
            esc(&node.address),
            if node.alive { "alive" } else { "gone" },
            node.heartbeat_age_ms as f64 / 1000.0,
            node.uploads_held,
            node.reservations_held
        );
    }
    b.push_str("</tbody></table></div></section>");
}

/// Cents for real sums; small sums (a test fleet, a new office) keep enough digits to move.
fn dollars(usd: f64) -> String {
    if usd >= 1.0 || usd == 0.0 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.4}")
    }
}

/// Bytes delivered (into reservations and over /data) and fetched from upstream per bucket,
/// as paired bars: the gap between them is what the cache saved.
fn chart(b: &mut String, points: &[Point], width: i64) {
    if points.is_empty() {
        return;
    }
    let max = points
        .iter()
        .map(|p| (p.bytes_served + p.bytes_reserved).max(p.bytes_from_upstream))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (w, h, top, bottom) = (1000.0, 220.0, 10.0, 24.0);
    let slot = w / points.len() as f64;
    let bar = (slot * 0.4).max(1.0);
    let scale = |v: i64| (v as f64 / max) * (h - top - bottom);
    let format = if width >= 86_400 { "%m-%d" } else { "%H:%M" };
    w!(
        b,
        r#"<figure class="chart"><svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="chart-title"><title id="chart-title">Bytes delivered and fetched from upstream, per {}; the tallest bar is {}</title><line class="baseline" x1="0" x2="{w}" y1="{}" y2="{}"/>"#,
        html::duration(width),
        html::bytes(max as i64),
        h - bottom,
        h - bottom
    );
    for (i, p) in points.iter().enumerate() {
        let x = i as f64 * slot + slot * 0.1;
        let delivered = p.bytes_served + p.bytes_reserved;
        let (hs, hu) = (scale(delivered), scale(p.bytes_from_upstream));
        w!(
            b,
            r#"<g><rect class="served" x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{hs:.1}"/><rect class="fetched" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{hu:.1}"/><title>{}: {} delivered, {} fetched; {} hits, {} downloads</title></g>"#,
            h - bottom - hs,
            x + bar,
            h - bottom - hu,
            p.start.format("%Y-%m-%d %H:%M UTC"),
            html::bytes(delivered),
            html::bytes(p.bytes_from_upstream),
            p.hits,
            p.misses
        );
    }
    let label_every = (points.len() / 6).max(1);
    for (i, p) in points.iter().enumerate().step_by(label_every) {
        w!(
            b,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            i as f64 * slot + 2.0,
            h - 6.0,
            p.start.format(format)
        );
    }
    b.push_str(r#"</svg><figcaption><span class="key served"></span> delivered (reservations and /data) <span class="key fetched"></span> fetched from upstream</figcaption></figure>"#);
}
