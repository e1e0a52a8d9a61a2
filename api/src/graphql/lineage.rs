//! `lineage(id, window)`: what a drive (or a window of it), scenario, run or dataset was made
//! from and what was made from it, as a bounded graph of nodes and edges
//! (`milepost_indexer::lineage`). Read-only; any principal that may read the catalog.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use milepost_indexer::catalog::{Window, WindowRecord};
use milepost_indexer::lineage::{self, Graph, NodeKind, Relation, Side};

use super::state;
use crate::error::{ApiError, GqlResultExt};
use async_graphql::Result as GqlResult;

/// A window `[start, end)` of a drive's time.
#[derive(InputObject, Debug, Clone)]
pub struct DriveWindowInput {
    pub drive_id: ID,
    pub start: DateTime<Utc>,
    /// Excluded: 14:02–14:05 and 14:05–14:07 do not overlap.
    pub end: DateTime<Utc>,
}

impl From<DriveWindowInput> for WindowRecord {
    fn from(input: DriveWindowInput) -> Self {
        WindowRecord {
            drive_id: input.drive_id.0,
            start: input.start,
            end: input.end,
        }
    }
}

/// A window of a drive a run read.
#[derive(SimpleObject, Debug)]
pub struct DriveWindow {
    pub drive_id: ID,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A half-open time window `[start, end)`.
#[derive(SimpleObject, Debug, Clone, Copy)]
pub struct TimeWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl From<Window> for TimeWindow {
    fn from(w: Window) -> Self {
        TimeWindow {
            start: w.start,
            end: w.end,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum LineageNodeKind {
    Drive,
    Scenario,
    Run,
    Dataset,
    Reservation,
}

/// Where a node stands from the entity asked about.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum LineageSide {
    Upstream,
    Focus,
    Downstream,
}

/// Edges point the way data flows.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum LineageRelation {
    /// A drive (whole, or the edge's window of it), a scenario or a run read by a run.
    InputOf,
    /// A scenario is a span of its drive.
    PartOf,
    /// A dataset holds objects of a drive or run.
    HeldBy,
    /// A reservation of a dataset.
    ReservedAs,
}

#[derive(SimpleObject, Debug)]
pub struct LineageNode {
    /// The entity's id: drive, scenario or run id, `name@version` for a dataset, reservation
    /// id. Unique in the graph; edges name nodes by it.
    pub id: ID,
    pub kind: LineageNodeKind,
    pub label: String,
    /// The window asked about (on the focus drive) or a scenario's span.
    pub window: Option<TimeWindow>,
    pub side: LineageSide,
    /// Column for a left-to-right drawing: 0 for the entity asked about, negative upstream,
    /// positive downstream.
    pub depth: i32,
    /// False for an id that runs name but the catalog does not have (yet).
    pub cataloged: bool,
}

#[derive(SimpleObject, Debug)]
pub struct LineageEdge {
    pub from: ID,
    pub to: ID,
    pub relation: LineageRelation,
    /// For a run's input window: the window of the drive it read.
    pub window: Option<TimeWindow>,
}

#[derive(SimpleObject, Debug)]
pub struct Lineage {
    /// The id of the node of the entity asked about.
    pub focus: ID,
    pub nodes: Vec<LineageNode>,
    pub edges: Vec<LineageEdge>,
    /// Whether nodes were left out to stay within `first`.
    pub truncated: bool,
}

impl From<Graph> for Lineage {
    fn from(graph: Graph) -> Self {
        Lineage {
            focus: ID(graph.focus),
            nodes: graph
                .nodes
                .into_iter()
                .map(|n| LineageNode {
                    id: ID(n.id),
                    kind: match n.kind {
                        NodeKind::Drive => LineageNodeKind::Drive,
                        NodeKind::Scenario => LineageNodeKind::Scenario,
                        NodeKind::Run => LineageNodeKind::Run,
                        NodeKind::Dataset => LineageNodeKind::Dataset,
                        NodeKind::Reservation => LineageNodeKind::Reservation,
                    },
                    label: n.label,
                    window: n.window.map(TimeWindow::from),
                    side: match n.side {
                        Side::Upstream => LineageSide::Upstream,
                        Side::Focus => LineageSide::Focus,
                        Side::Downstream => LineageSide::Downstream,
                    },
                    depth: n.depth,
                    cataloged: n.cataloged,
                })
                .collect(),
            edges: graph
                .edges
                .into_iter()
                .map(|e| LineageEdge {
                    from: ID(e.from),
                    to: ID(e.to),
                    relation: match e.relation {
                        Relation::InputOf => LineageRelation::InputOf,
                        Relation::PartOf => LineageRelation::PartOf,
                        Relation::HeldBy => LineageRelation::HeldBy,
                        Relation::ReservedAs => LineageRelation::ReservedAs,
                    },
                    window: e.window.map(TimeWindow::from),
                })
                .collect(),
            truncated: graph.truncated,
        }
    }
}

#[derive(Debug, Default)]
pub struct LineageQuery;

#[Object]
impl LineageQuery {
    /// Upstream and downstream of a drive (optionally only what overlaps `window` of it), a
    /// scenario, a run or a dataset (`name@version`, or `name` for the latest version): at
    /// most `first` nodes (1 to 500), `truncated` when some were left out.
    async fn lineage(
        &self,
        ctx: &Context<'_>,
        id: ID,
        window: Option<DriveWindowInput>,
        #[graphql(default = 100)] first: Option<i32>,
    ) -> GqlResult<Lineage> {
        let first = first.unwrap_or(100);
        let limit = usize::try_from(first)
            .ok()
            .filter(|n| (1..=lineage::MAX_NODES).contains(n))
            .ok_or_else(|| {
                ApiError::bad_input(
                    "first",
                    format!("expected 1 to {} nodes, got {first}", lineage::MAX_NODES),
                )
            })
            .gql()?;
        let window = match window {
            None => None,
            Some(w) => {
                if w.drive_id.0 != id.0 {
                    return Err(ApiError::bad_input(
                        "window.driveId",
                        format!(
                            "{:?} is not the drive asked about ({:?})",
                            w.drive_id.0, id.0
                        ),
                    ))
                    .gql();
                }
                Some(Window::new("window", w.start, w.end).gql()?)
            }
        };
        let db = &state(ctx).db;
        let subject = lineage::resolve(db, &id, window).await.gql()?;
        let graph = lineage::lineage(db, &subject, limit).await.gql()?;
        Ok(graph.into())
    }
}
