//! The "Lineage" section of the drive, run and dataset pages: the API's `lineage` graph drawn
//! server-side as an inline SVG, upstream on the left, the entity in the middle, downstream
//! to the right (one column per `depth`). Nodes link to their pages; no script is involved.
//! Colors come from classes in `app.css` (the page's CSP allows no inline styles).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::html::{esc, url};
use crate::session::Session;
use crate::{w, UiState};

/// Most nodes drawn; the API says when there were more.
const NODES_SHOWN: i32 = 60;

const QUERY: &str = "query($id: ID!, $first: Int) { lineage(id: $id, first: $first) {
  focus truncated
  nodes { id kind label side depth cataloged window { start end } }
  edges { from to relation window { start end } } } }";

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub struct Node {
    pub id: String,
    pub kind: String,
    pub label: String,
    pub side: String,
    pub depth: i32,
    pub cataloged: bool,
    pub window: Option<Window>,
}

#[derive(Debug, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub relation: String,
    pub window: Option<Window>,
}

#[derive(Debug, Deserialize)]
pub struct Graph {
    pub focus: String,
    pub truncated: bool,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    lineage: Graph,
}

/// The section for the entity `id` (a drive or run id, or `name@version`). An error reading
/// the graph is said in the section; it never fails the page.
pub async fn section(ui: &UiState, session: &Session, id: &str) -> String {
    let answer = ui
        .exec
        .execute(
            &session.token,
            QUERY,
            json!({ "id": id, "first": NODES_SHOWN }),
        )
        .await
        .into_result::<Envelope>();
    let mut b = String::with_capacity(8 * 1024);
    b.push_str(
        r#"<section id="lineage" aria-labelledby="lineage-title"><h2 id="lineage-title">Lineage</h2>"#,
    );
    match answer {
        Ok(envelope) => render(&mut b, &envelope.lineage),
        Err(error) => w!(
            &mut b,
            r#"<p class="muted">The lineage could not be read: {}</p>"#,
            esc(&error.message)
        ),
    }
    b.push_str("</section>");
    b
}

/// The page of a node, if it has one.
fn href(node: &Node) -> Option<String> {
    if !node.cataloged {
        return None;
    }
    Some(match node.kind.as_str() {
        "DRIVE" => format!("/drives/{}", url(&node.id)),
        "SCENARIO" => format!("/scenarios/{}", url(&node.id)),
        "RUN" => format!("/runs/{}", url(&node.id)),
        "DATASET" => match node.id.rsplit_once('@') {
            Some((name, version)) => format!("/datasets/{}?version={}", url(name), url(version)),
            None => format!("/datasets/{}", url(&node.id)),
        },
        "RESERVATION" => format!("/reservations/{}", url(&node.id)),
        _ => return None,
    })
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "DRIVE" => "Drive",
        "SCENARIO" => "Scenario",
        "RUN" => "Run",
        "DATASET" => "Dataset",
        "RESERVATION" => "Reservation",
        _ => "Entity",
    }
}

fn relation_name(relation: &str) -> &'static str {
    match relation {
        "INPUT_OF" => "input of",
        "PART_OF" => "part of",
        "HELD_BY" => "held by",
        "RESERVED_AS" => "reserved as",
        _ => "related to",
    }
}

/// `14:02:00–14:05:00`, with the date when the window spans days.
pub fn window_text(w: &Window) -> String {
    if w.start.date_naive() == w.end.date_naive() {
        format!(
            "{}–{}",
            w.start.format("%H:%M:%S"),
            w.end.format("%H:%M:%S")
        )
    } else {
        format!(
            "{}–{}",
            w.start.format("%Y-%m-%d %H:%M"),
            w.end.format("%Y-%m-%d %H:%M")
        )
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

const BOX_W: i32 = 210;
const BOX_H: i32 = 52;
/// Wide enough for a window (`14:02:00–14:05:00`) written on the arrow before its target.
const COL_GAP: i32 = 120;
const ROW_GAP: i32 = 14;
const PAD: i32 = 12;

/// Draws the graph (or says there is nothing to draw) into `b`.
pub fn render(b: &mut String, g: &Graph) {
    if g.nodes.len() <= 1 {
        b.push_str(r#"<p class="muted" id="lineage-empty">Nothing recorded yet: no run used it and no dataset holds it.</p>"#);
        return;
    }
    // Columns by depth, nodes in a column in the API's order (found order, stable).
    let mut columns: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        columns.entry(n.depth).or_default().push(i);
    }
    let rows = columns.values().map(Vec::len).max().unwrap_or(1) as i32;
    let width = PAD * 2 + columns.len() as i32 * (BOX_W + COL_GAP) - COL_GAP;
    let height = PAD * 2 + rows * (BOX_H + ROW_GAP) - ROW_GAP;
    let mut at: HashMap<&str, (i32, i32)> = HashMap::new();
    for (c, (_, members)) in columns.iter().enumerate() {
        // Centre short columns vertically.
        let used = members.len() as i32 * (BOX_H + ROW_GAP) - ROW_GAP;
        let top = PAD + (height - 2 * PAD - used) / 2;
        for (r, &i) in members.iter().enumerate() {
            let x = PAD + c as i32 * (BOX_W + COL_GAP);
            let y = top + r as i32 * (BOX_H + ROW_GAP);
            at.insert(g.nodes[i].id.as_str(), (x, y));
        }
    }
    let upstream = g.nodes.iter().filter(|n| n.side == "UPSTREAM").count();
    let downstream = g.nodes.iter().filter(|n| n.side == "DOWNSTREAM").count();
    w!(
        b,
        r#"<figure class="lineage"><div class="lineage-scroll"><svg id="lineage-graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="group" aria-labelledby="lineage-caption"><defs><marker id="lineage-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" class="arrow"/></marker></defs>"#
    );
    for e in &g.edges {
        let (Some(&(fx, fy)), Some(&(tx, ty))) = (at.get(e.from.as_str()), at.get(e.to.as_str()))
        else {
            continue;
        };
        let (x1, y1) = (fx + BOX_W, fy + BOX_H / 2);
        let (x2, y2) = (tx, ty + BOX_H / 2);
        let bend = ((x2 - x1).abs() / 2).max(30);
        let window = e.window.as_ref().map(window_text);
        w!(
            b,
            r#"<g class="edge {}"><title>{} {} {}{}</title><path d="M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}" marker-end="url(#lineage-arrow)"/>"#,
            esc(&e.relation.to_ascii_lowercase().replace('_', "-")),
            esc(&e.from),
            relation_name(&e.relation),
            esc(&e.to),
            window
                .as_deref()
                .map(|w| format!(" over {w}"))
                .map(|s| esc(&s).to_string())
                .unwrap_or_default(),
            x1 + bend,
            x2 - bend,
        );
        if let Some(window) = &window {
            // On the arrow's last stretch, which is level, just before the target.
            w!(
                b,
                r#"<text class="edge-label" x="{}" y="{}" text-anchor="end">{}</text>"#,
                x2 - 8,
                y2 - 5,
                esc(window)
            );
        }
        b.push_str("</g>");
    }
    for n in &g.nodes {
        let Some(&(x, y)) = at.get(n.id.as_str()) else {
            continue;
        };
        let link = href(n);
        let focus = n.id == g.focus;
        if let Some(link) = &link {
            w!(b, r#"<a href="{}">"#, esc(link));
        }
        let detail = match &n.window {
            Some(window) => window_text(window),
            None if !n.cataloged => "not in the catalog".to_owned(),
            None => n.id.clone(),
        };
        w!(
            b,
            r#"<g class="node {}{}{}" data-id="{}" data-kind="{}"><title>{} {}</title><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/><text x="{}" y="{}" class="kind">{}</text><text x="{}" y="{}" class="label">{}</text><text x="{}" y="{}" class="detail">{}</text></g>"#,
            esc(&n.kind.to_ascii_lowercase()),
            if focus { " focus" } else { "" },
            if n.cataloged { "" } else { " missing" },
            esc(&n.id),
            esc(&n.kind),
            kind_name(&n.kind),
            esc(&n.id),
            x + 10,
            y + 15,
            kind_name(&n.kind),
            x + 10,
            y + 31,
            esc(&clip(&n.label, 26)),
            x + 10,
            y + 45,
            esc(&clip(&detail, 30)),
        );
        if link.is_some() {
            b.push_str("</a>");
        }
    }
    w!(
        b,
        r#"</svg></div><figcaption id="lineage-caption">{} upstream, {} downstream{}. Arrows point the way data flows; windows of drives are on the arrows.</figcaption></figure>"#,
        upstream,
        downstream,
        if g.truncated {
            format!(" (the first {NODES_SHOWN} shown)")
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, kind: &str, side: &str, depth: i32) -> Node {
        Node {
            id: id.to_owned(),
            kind: kind.to_owned(),
            label: format!("<{id}>"),
            side: side.to_owned(),
            depth,
            cataloged: true,
            window: None,
        }
    }

    #[test]
    fn draws_every_node_with_a_link_and_escapes_text() {
        let at = |m: u32| {
            DateTime::parse_from_rfc3339(&format!("2026-11-02T14:{m:02}:00Z"))
                .expect("rfc3339")
                .with_timezone(&Utc)
        };
        let g = Graph {
            focus: "d<1>".to_owned(),
            truncated: true,
            nodes: vec![
                node("d<1>", "DRIVE", "FOCUS", 0),
                node("r&1", "RUN", "DOWNSTREAM", 1),
                node("nightly@2", "DATASET", "DOWNSTREAM", 1),
            ],
            edges: vec![Edge {
                from: "d<1>".to_owned(),
                to: "r&1".to_owned(),
                relation: "INPUT_OF".to_owned(),
                window: Some(Window {
                    start: at(2),
                    end: at(5),
                }),
            }],
        };
        let mut b = String::new();
        render(&mut b, &g);
        assert!(b.contains(r#"<svg id="lineage-graph""#));
        assert!(b.contains(r#"href="/runs/r%261""#), "{b}");
        assert!(b.contains(r#"href="/datasets/nightly?version=2""#), "{b}");
        assert!(b.contains("14:02:00–14:05:00"));
        assert!(b.contains("&lt;d&lt;1&gt;&gt;"), "labels are escaped");
        assert!(!b.contains("<d<1>"), "{b}");
        assert!(b.contains("the first 60 shown"));
    }

    #[test]
    fn a_lone_node_says_nothing_is_recorded() {
        let g = Graph {
            focus: "d".to_owned(),
            truncated: false,
            nodes: vec![node("d", "DRIVE", "FOCUS", 0)],
            edges: vec![],
        };
        let mut b = String::new();
        render(&mut b, &g);
        assert!(b.contains("lineage-empty"));
    }
}
