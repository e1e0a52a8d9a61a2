//! Lineage: what a drive, scenario, run or dataset was made from (upstream) and what was made
//! from it (downstream), as a bounded graph a client or the web catalog can draw.
//!
//! Edges point the way data flows: a drive (or a window of it, on the edge) or a scenario is
//! `INPUT_OF` a run; a scenario is `PART_OF` its drive; a drive or run is `HELD_BY` a dataset
//! holding some of its objects; a dataset is `RESERVED_AS` a reservation.
//!
//! - a **drive**, optionally narrowed to a window `[start, end)`: the runs that used it whole,
//!   a window of it overlapping the given one, or a scenario of it overlapping the given one;
//!   the datasets holding its objects; then onwards from those runs.
//! - a **scenario**: its drive upstream; the runs that used it, the drive whole, or a window
//!   of the drive overlapping the scenario's span.
//! - a **run**: its inputs and input windows upstream (and theirs, run by run); the runs that
//!   used it and the datasets holding its outputs downstream.
//! - a **dataset** (`name@version`, or `name` for the latest): the drives and runs it holds
//!   objects of upstream, the runs that used those drives and runs beside it, and its
//!   reservations downstream.
//!
//! Downstream of every dataset in the graph are its reservations. Reads are batched per level
//! ([`queries`]); the graph holds at most `limit` nodes and says when it was cut
//! ([`Graph::truncated`]). Lineage reads the dataset and reservation tables and writes nothing.

mod queries;

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use milepost_schema::entity::{drive, run, scenario};
use milepost_schema::enums::InputKind;
use milepost_schema::DbError;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::catalog::Window;
use crate::error::{CatalogError, CatalogResult};
use queries::OwnerColumn;

/// Levels followed up or down from the entity: enough for pipelines of runs of runs, bounded
/// so that a cycle of runs naming each other ends.
pub const MAX_DEPTH: i32 = 8;

/// Most nodes a graph may be asked for.
pub const MAX_NODES: usize = 500;

fn db<T>(result: Result<T, sea_orm::DbErr>) -> CatalogResult<T> {
    result.map_err(|err| CatalogError::from(DbError::from(err)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    Drive,
    Scenario,
    Run,
    Dataset,
    Reservation,
}

/// Where a node stands from the entity asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Upstream,
    Focus,
    Downstream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    /// A drive (whole or a window of it), a scenario or a run read by a run.
    InputOf,
    /// A scenario is a span of its drive.
    PartOf,
    /// A dataset holds objects of a drive or run.
    HeldBy,
    /// A reservation of a dataset.
    ReservedAs,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The entity's id: a drive, scenario or run id, `name@version` for a dataset, a
    /// reservation id. Unique in the graph.
    pub id: String,
    pub kind: NodeKind,
    pub label: String,
    /// The window asked about (the focus drive) or the scenario's span.
    pub window: Option<Window>,
    pub side: Side,
    /// Column in a left-to-right drawing: 0 for the entity, negative upstream, positive
    /// downstream; every edge goes from a lower column to a higher one, cycles aside.
    pub depth: i32,
    /// False for an id that runs name but the catalog does not have (yet).
    pub cataloged: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub relation: Relation,
    /// For a run's input window: the window of the drive it read.
    pub window: Option<Window>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// The id of the entity asked about (the focus node).
    pub focus: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Whether nodes were left out to stay within the limit.
    pub truncated: bool,
}

/// The entity whose lineage is asked for.
#[derive(Clone, Debug)]
pub enum Subject {
    Drive { id: String, window: Option<Window> },
    Scenario(scenario::Model),
    Run(String),
    Dataset(milepost_schema::entity::dataset::Model),
}

/// Finds what `id` names: a drive, a scenario, a run (in that order), then a dataset
/// (`name@version` or `name` for its latest version). A drive only runs name (through input
/// windows or inputs) counts as a drive not cataloged yet. `window` narrows a drive.
pub async fn resolve(
    conn: &impl ConnectionTrait,
    id: &str,
    window: Option<Window>,
) -> CatalogResult<Subject> {
    let subject = if let Some(d) = db(drive::Entity::find_by_id(id).one(conn).await)? {
        Subject::Drive { id: d.id, window }
    } else if let Some(s) = db(scenario::Entity::find_by_id(id).one(conn).await)? {
        Subject::Scenario(s)
    } else if let Some(r) = db(run::Entity::find_by_id(id).one(conn).await)? {
        Subject::Run(r.id)
    } else if let Some(ds) = find_dataset(conn, id).await? {
        Subject::Dataset(ds)
    } else if is_named_drive(conn, id).await? {
        Subject::Drive {
            id: id.to_owned(),
            window,
        }
    } else {
        return Err(CatalogError::not_found(format!(
            "drive, scenario, run or dataset {id:?}"
        )));
    };
    if window.is_some() && !matches!(subject, Subject::Drive { .. }) {
        return Err(CatalogError::bad_input(
            "window",
            format!("{id:?} is not a drive: only a drive's lineage can be narrowed to a window"),
        ));
    }
    Ok(subject)
}

async fn find_dataset(
    conn: &impl ConnectionTrait,
    id: &str,
) -> CatalogResult<Option<milepost_schema::entity::dataset::Model>> {
    use milepost_schema::entity::dataset;
    use sea_orm::QueryOrder as _;
    let (name, version) = match id.rsplit_once('@') {
        Some((name, v)) => match v.parse::<i32>() {
            Ok(v) => (name, Some(v)),
            Err(_) => (id, None),
        },
        None => (id, None),
    };
    let mut query = dataset::Entity::find().filter(dataset::Column::Name.eq(name));
    if let Some(v) = version {
        query = query.filter(dataset::Column::Version.eq(v));
    }
    db(query
        .order_by_desc(dataset::Column::Version)
        .one(conn)
        .await)
}

async fn is_named_drive(conn: &impl ConnectionTrait, id: &str) -> CatalogResult<bool> {
    use milepost_schema::entity::{run_input, run_input_window};
    let window = db(run_input_window::Entity::find()
        .filter(run_input_window::Column::DriveId.eq(id))
        .limit(1)
        .one(conn)
        .await)?;
    if window.is_some() {
        return Ok(true);
    }
    let input = db(run_input::Entity::find()
        .filter(run_input::Column::InputId.eq(id))
        .filter(run_input::Column::InputKind.eq(InputKind::Drive))
        .limit(1)
        .one(conn)
        .await)?;
    Ok(input.is_some())
}

/// The lineage graph of `subject`, at most `limit` nodes (1 to [`MAX_NODES`]).
pub async fn lineage(
    conn: &impl ConnectionTrait,
    subject: &Subject,
    limit: usize,
) -> CatalogResult<Graph> {
    if !(1..=MAX_NODES).contains(&limit) {
        return Err(CatalogError::bad_input(
            "first",
            format!("expected 1 to {MAX_NODES} nodes, got {limit}"),
        ));
    }
    let mut b = Builder::new(limit);
    match subject {
        Subject::Drive { id, window } => {
            b.node(id, NodeKind::Drive, Side::Focus, 0);
            b.window(id, *window);
            let level = Level {
                drives: vec![id.clone()],
                ..Level::default()
            };
            downstream(conn, &mut b, level, *window, true).await?;
        }
        Subject::Scenario(s) => {
            let span = Window {
                start: s.start_time,
                end: s.end_time,
            };
            b.node(&s.id, NodeKind::Scenario, Side::Focus, 0);
            b.window(&s.id, Some(span));
            b.node(&s.drive_id, NodeKind::Drive, Side::Upstream, -1);
            b.edge(&s.drive_id, &s.id, Relation::PartOf, None);
            // The scenario's own runs, and the runs that read its span of the drive.
            let level = Level {
                drives: vec![s.drive_id.clone()],
                scenarios: vec![s.id.clone()],
                ..Level::default()
            };
            downstream(conn, &mut b, level, Some(span), false).await?;
        }
        Subject::Run(id) => {
            b.node(id, NodeKind::Run, Side::Focus, 0);
            upstream(conn, &mut b, vec![id.clone()]).await?;
            let level = Level {
                runs: vec![id.clone()],
                ..Level::default()
            };
            downstream(conn, &mut b, level, None, false).await?;
        }
        Subject::Dataset(ds) => {
            let focus = dataset_node_id(ds);
            b.node(&focus, NodeKind::Dataset, Side::Focus, 0);
            b.datasets.insert(ds.id, focus.clone());
            b.dataset_rows.insert(ds.id, ds.clone());
            let owners = queries::member_owners(conn, ds.id, b.cap()).await?;
            b.cut_if_full(owners.len());
            let mut level = Level::default();
            for owner in owners {
                if let Some(d) = owner.drive_id {
                    if b.node(&d, NodeKind::Drive, Side::Upstream, -1) {
                        b.edge(&d, &focus, Relation::HeldBy, None);
                        level.drives.push(d);
                    }
                } else if let Some(r) = owner.run_id {
                    if b.node(&r, NodeKind::Run, Side::Upstream, -1) {
                        b.edge(&r, &focus, Relation::HeldBy, None);
                        level.runs.push(r);
                    }
                }
            }
            // Beside the dataset: the runs that read what it holds (and the other datasets
            // holding those drives and runs, which stay out: they are not this one's lineage).
            level.dedup();
            uses(conn, &mut b, &level, None, true).await?;
        }
    }
    reservations(conn, &mut b).await?;
    b.finish(conn).await
}

/// `name@version`, the id the API gives a dataset.
pub fn dataset_node_id(ds: &milepost_schema::entity::dataset::Model) -> String {
    format!("{}@{}", ds.name, ds.version)
}

/// The ids of one level of the graph, by kind.
#[derive(Debug, Default)]
struct Level {
    drives: Vec<String>,
    scenarios: Vec<String>,
    runs: Vec<String>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.drives.is_empty() && self.scenarios.is_empty() && self.runs.is_empty()
    }

    fn dedup(&mut self) {
        for ids in [&mut self.drives, &mut self.scenarios, &mut self.runs] {
            ids.sort_unstable();
            ids.dedup();
        }
    }
}

/// The runs that used the level's drives (whole, a window overlapping `window`, or, with
/// `scenarios_of_drives`, a scenario overlapping it), scenarios and runs; returns those runs.
async fn uses(
    conn: &impl ConnectionTrait,
    b: &mut Builder,
    level: &Level,
    window: Option<Window>,
    scenarios_of_drives: bool,
) -> CatalogResult<Vec<String>> {
    let mut found = Vec::new();
    let cap = b.cap();
    let mut whole = queries::runs_using(conn, &level.drives, InputKind::Drive, cap).await?;
    whole.extend(queries::runs_using(conn, &level.scenarios, InputKind::Scenario, cap).await?);
    whole.extend(queries::runs_using(conn, &level.runs, InputKind::Run, cap).await?);
    b.cut_if_full(whole.len());
    for row in whole {
        if b.downstream_run(&row.run_id, &row.input_id) {
            b.edge(&row.input_id, &row.run_id, Relation::InputOf, None);
            found.push(row.run_id);
        }
    }
    let windows = queries::windows_on(conn, &level.drives, window, cap).await?;
    b.cut_if_full(windows.len());
    for row in windows {
        if b.downstream_run(&row.run_id, &row.drive_id) {
            let used = Window {
                start: row.start_time,
                end: row.end_time,
            };
            b.edge(&row.drive_id, &row.run_id, Relation::InputOf, Some(used));
            found.push(row.run_id);
        }
    }
    if scenarios_of_drives {
        let rows = queries::scenario_uses(conn, &level.drives, window, cap).await?;
        b.cut_if_full(rows.len());
        for row in rows {
            let depth = b.depth_of(&row.drive_id) + 1;
            if b.node(
                &row.scenario_id,
                NodeKind::Scenario,
                Side::Downstream,
                depth,
            ) {
                b.edge(&row.drive_id, &row.scenario_id, Relation::PartOf, None);
                if b.downstream_run(&row.run_id, &row.scenario_id) {
                    b.edge(&row.scenario_id, &row.run_id, Relation::InputOf, None);
                    found.push(row.run_id);
                }
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// Follows the level downstream: runs that used it, the datasets holding its drives and runs,
/// then the same from those runs, level by level.
async fn downstream(
    conn: &impl ConnectionTrait,
    b: &mut Builder,
    mut level: Level,
    window: Option<Window>,
    scenarios_of_drives: bool,
) -> CatalogResult<()> {
    let mut seen: HashSet<String> = level.runs.iter().cloned().collect();
    for step in 0..MAX_DEPTH {
        if level.is_empty() || b.full() {
            break;
        }
        let (window, scenarios) = if step == 0 {
            (window, scenarios_of_drives)
        } else {
            (None, false)
        };
        let runs = uses(conn, b, &level, window, scenarios).await?;
        held_by(conn, b, OwnerColumn::Drive, &level.drives).await?;
        held_by(conn, b, OwnerColumn::Run, &level.runs).await?;
        level = Level {
            runs: runs
                .into_iter()
                .filter(|r| seen.insert(r.clone()))
                .collect(),
            ..Level::default()
        };
    }
    Ok(())
}

/// Datasets holding objects of `ids`, as `HELD_BY` edges.
async fn held_by(
    conn: &impl ConnectionTrait,
    b: &mut Builder,
    owner: OwnerColumn,
    ids: &[String],
) -> CatalogResult<()> {
    let rows = queries::datasets_holding(conn, owner, ids, b.cap()).await?;
    b.cut_if_full(rows.len());
    let wanted: Vec<i64> = rows
        .iter()
        .map(|h| h.dataset_id)
        .filter(|id| !b.dataset_rows.contains_key(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for ds in queries::datasets(conn, &wanted).await? {
        b.dataset_rows.insert(ds.id, ds);
    }
    for row in rows {
        let Some(ds) = b.dataset_rows.get(&row.dataset_id) else {
            continue;
        };
        let id = dataset_node_id(ds);
        let depth = b.depth_of(&row.owner_id) + 1;
        if b.node(&id, NodeKind::Dataset, Side::Downstream, depth) {
            b.datasets.insert(row.dataset_id, id.clone());
            b.edge(&row.owner_id, &id, Relation::HeldBy, None);
        }
    }
    Ok(())
}

/// Follows runs upstream: their inputs and input windows, the drives of scenario inputs, and
/// the inputs of input runs, level by level.
async fn upstream(
    conn: &impl ConnectionTrait,
    b: &mut Builder,
    mut runs: Vec<String>,
) -> CatalogResult<()> {
    let mut seen: HashSet<String> = runs.iter().cloned().collect();
    for _ in 0..MAX_DEPTH {
        if runs.is_empty() || b.full() {
            break;
        }
        let mut next = Vec::new();
        let mut scenarios = Vec::new();
        let inputs = queries::inputs_of(conn, &runs, b.cap()).await?;
        b.cut_if_full(inputs.len());
        for input in inputs {
            let kind = match input.input_kind {
                InputKind::Drive => NodeKind::Drive,
                InputKind::Scenario => NodeKind::Scenario,
                InputKind::Run => NodeKind::Run,
                InputKind::Dataset => NodeKind::Dataset,
            };
            let depth = b.depth_of(&input.run_id) - 1;
            if b.node(&input.input_id, kind, Side::Upstream, depth) {
                b.edge(&input.input_id, &input.run_id, Relation::InputOf, None);
                match kind {
                    NodeKind::Run if seen.insert(input.input_id.clone()) => {
                        next.push(input.input_id)
                    }
                    NodeKind::Scenario => scenarios.push(input.input_id),
                    _ => {}
                }
            }
        }
        let windows = queries::windows_of(conn, &runs, b.cap()).await?;
        b.cut_if_full(windows.len());
        for w in windows {
            let depth = b.depth_of(&w.run_id) - 1;
            if b.node(&w.drive_id, NodeKind::Drive, Side::Upstream, depth) {
                let used = Window {
                    start: w.start_time,
                    end: w.end_time,
                };
                b.edge(&w.drive_id, &w.run_id, Relation::InputOf, Some(used));
            }
        }
        if !scenarios.is_empty() {
            let rows = db(scenario::Entity::find()
                .filter(scenario::Column::Id.is_in(scenarios))
                .all(conn)
                .await)?;
            for s in rows {
                let depth = b.depth_of(&s.id) - 1;
                if b.node(&s.drive_id, NodeKind::Drive, Side::Upstream, depth) {
                    b.edge(&s.drive_id, &s.id, Relation::PartOf, None);
                }
                b.scenario_rows.insert(s.id.clone(), s);
            }
        }
        runs = next;
    }
    Ok(())
}

/// Reservations of every dataset in the graph.
async fn reservations(conn: &impl ConnectionTrait, b: &mut Builder) -> CatalogResult<()> {
    let ids: Vec<i64> = b.datasets.keys().copied().collect();
    let rows = queries::reservations_of(conn, &ids, b.cap()).await?;
    b.cut_if_full(rows.len());
    for r in rows {
        let Some(ds) = b.datasets.get(&r.dataset_id).cloned() else {
            continue;
        };
        let depth = b.depth_of(&ds) + 1;
        if b.node(&r.id, NodeKind::Reservation, Side::Downstream, depth) {
            b.edge(&ds, &r.id, Relation::ReservedAs, None);
            b.labels
                .insert(r.id.clone(), format!("{} · {}", r.owner, r.state.as_str()));
        }
    }
    Ok(())
}

/// The graph being built: nodes in the order found, each once; edges between nodes only.
struct Builder {
    limit: usize,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    edges: Vec<Edge>,
    edge_set: HashSet<(String, String, Relation, Option<Window>)>,
    truncated: bool,
    /// Dataset primary key to node id, for datasets in the graph.
    datasets: std::collections::BTreeMap<i64, String>,
    dataset_rows: HashMap<i64, milepost_schema::entity::dataset::Model>,
    scenario_rows: HashMap<String, scenario::Model>,
    labels: HashMap<String, String>,
}

impl Builder {
    fn new(limit: usize) -> Builder {
        Builder {
            limit,
            nodes: Vec::new(),
            index: HashMap::new(),
            edges: Vec::new(),
            edge_set: HashSet::new(),
            truncated: false,
            datasets: Default::default(),
            dataset_rows: HashMap::new(),
            scenario_rows: HashMap::new(),
            labels: HashMap::new(),
        }
    }

    /// Rows to read at most in one batch: one more than fits, so a cut is noticed.
    fn cap(&self) -> u64 {
        (self.limit + 1) as u64
    }

    /// A read that returned as many rows as it may was cut short.
    fn cut_if_full(&mut self, rows: usize) {
        if rows as u64 >= self.cap() {
            self.truncated = true;
        }
    }

    fn full(&self) -> bool {
        self.nodes.len() >= self.limit
    }

    fn depth_of(&self, id: &str) -> i32 {
        self.index.get(id).map_or(0, |&i| self.nodes[i].depth)
    }

    /// Adds a node unless present; false when it is not in the graph (the limit is reached).
    fn node(&mut self, id: &str, kind: NodeKind, side: Side, depth: i32) -> bool {
        if self.index.contains_key(id) {
            return true;
        }
        if self.full() {
            self.truncated = true;
            return false;
        }
        // Upstream left of the entity, downstream right of it, whatever it was reached from.
        let depth = match side {
            Side::Upstream => depth.min(-1),
            Side::Focus => 0,
            Side::Downstream => depth.max(1),
        };
        self.index.insert(id.to_owned(), self.nodes.len());
        self.nodes.push(Node {
            id: id.to_owned(),
            kind,
            label: id.to_owned(),
            window: None,
            side,
            depth,
            cataloged: true,
        });
        true
    }

    /// A run found downstream of `from`.
    fn downstream_run(&mut self, run: &str, from: &str) -> bool {
        let depth = self.depth_of(from) + 1;
        self.node(run, NodeKind::Run, Side::Downstream, depth)
    }

    fn window(&mut self, id: &str, window: Option<Window>) {
        if let Some(&i) = self.index.get(id) {
            self.nodes[i].window = window;
        }
    }

    fn edge(&mut self, from: &str, to: &str, relation: Relation, window: Option<Window>) {
        if from == to || !self.index.contains_key(from) || !self.index.contains_key(to) {
            return;
        }
        let key = (from.to_owned(), to.to_owned(), relation, window);
        if self.edge_set.insert(key) {
            self.edges.push(Edge {
                from: from.to_owned(),
                to: to.to_owned(),
                relation,
                window,
            });
        }
    }

    /// Layers the nodes so that edges go left to right, labels them, and returns the graph.
    async fn finish(mut self, conn: &impl ConnectionTrait) -> CatalogResult<Graph> {
        self.layer();
        self.label(conn).await?;
        let focus = self
            .nodes
            .iter()
            .find(|n| n.side == Side::Focus)
            .map(|n| n.id.clone())
            .unwrap_or_default();
        Ok(Graph {
            focus,
            nodes: self.nodes,
            edges: self.edges,
            truncated: self.truncated,
        })
    }

    /// Longest-path layering: a downstream node sits right of everything it comes from, an
    /// upstream node left of everything it feeds; the focus stays at 0. Bounded passes, so a
    /// cycle of runs cannot loop.
    fn layer(&mut self) {
        let edges: Vec<(usize, usize)> = self
            .edges
            .iter()
            .map(|e| (self.index[&e.from], self.index[&e.to]))
            .collect();
        for _ in 0..=self.nodes.len().min(2 * MAX_DEPTH as usize + 4) {
            let mut changed = false;
            for &(from, to) in &edges {
                let (f, t) = (&self.nodes[from], &self.nodes[to]);
                if t.side == Side::Downstream && t.depth <= f.depth {
                    self.nodes[to].depth = f.depth + 1;
                    changed = true;
                } else if f.side == Side::Upstream && f.depth >= t.depth {
                    self.nodes[from].depth = t.depth - 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Labels from the rows: one query per kind for the whole graph.
    async fn label(&mut self, conn: &impl ConnectionTrait) -> CatalogResult<()> {
        let ids = |kind: NodeKind| -> Vec<String> {
            self.nodes
                .iter()
                .filter(|n| n.kind == kind)
                .map(|n| n.id.clone())
                .collect()
        };
        let (drive_ids, run_ids) = (ids(NodeKind::Drive), ids(NodeKind::Run));
        let scenario_ids: Vec<String> = ids(NodeKind::Scenario)
            .into_iter()
            .filter(|id| !self.scenario_rows.contains_key(id))
            .collect();
        let mut labels = std::mem::take(&mut self.labels);
        if !drive_ids.is_empty() {
            for d in db(drive::Entity::find()
                .filter(drive::Column::Id.is_in(drive_ids))
                .all(conn)
                .await)?
            {
                labels.insert(d.id.clone(), drive_label(&d.vehicle, d.started_at));
            }
        }
        if !run_ids.is_empty() {
            for r in db(run::Entity::find()
                .filter(run::Column::Id.is_in(run_ids))
                .all(conn)
                .await)?
            {
                labels.insert(
                    r.id.clone(),
                    format!("{} · {}", r.pipeline, r.status.as_str()),
                );
            }
        }
        if !scenario_ids.is_empty() {
            for s in db(scenario::Entity::find()
                .filter(scenario::Column::Id.is_in(scenario_ids))
                .all(conn)
                .await)?
            {
                self.scenario_rows.insert(s.id.clone(), s);
            }
        }
        for s in self.scenario_rows.values() {
            labels.insert(s.id.clone(), s.label.clone());
        }
        for ds in self.dataset_rows.values() {
            labels.insert(dataset_node_id(ds), format!("{} v{}", ds.name, ds.version));
        }
        for node in &mut self.nodes {
            match labels.remove(&node.id) {
                Some(label) => node.label = label,
                None => node.cataloged = false,
            }
            if node.kind == NodeKind::Scenario && node.window.is_none() {
                if let Some(s) = self.scenario_rows.get(&node.id) {
                    node.window = Some(Window {
                        start: s.start_time,
                        end: s.end_time,
                    });
                }
            }
        }
        Ok(())
    }
}

fn drive_label(vehicle: &str, started_at: DateTime<Utc>) -> String {
    format!("{vehicle} · {}", started_at.format("%Y-%m-%d %H:%M"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_added_once_and_the_limit_truncates() {
        let mut b = Builder::new(3);
        assert!(b.node("d", NodeKind::Drive, Side::Focus, 0));
        assert!(b.node("r1", NodeKind::Run, Side::Downstream, 1));
        assert!(b.node("r1", NodeKind::Run, Side::Downstream, 1));
        assert!(b.node("r2", NodeKind::Run, Side::Downstream, 1));
        assert!(!b.truncated);
        assert!(!b.node("r3", NodeKind::Run, Side::Downstream, 1));
        assert!(b.truncated);
        b.edge("d", "r1", Relation::InputOf, None);
        b.edge("d", "r1", Relation::InputOf, None);
        b.edge("d", "r3", Relation::InputOf, None);
        assert_eq!(b.edges.len(), 1, "no repeats, no edges to nodes left out");
    }

    #[test]
    fn layering_puts_every_edge_left_to_right() {
        let mut b = Builder::new(10);
        b.node("ds", NodeKind::Dataset, Side::Focus, 0);
        b.node("d", NodeKind::Drive, Side::Upstream, -1);
        b.node("s", NodeKind::Scenario, Side::Downstream, 1);
        b.node("r", NodeKind::Run, Side::Downstream, 1);
        b.node("r2", NodeKind::Run, Side::Downstream, 1);
        b.edge("d", "ds", Relation::HeldBy, None);
        b.edge("d", "s", Relation::PartOf, None);
        b.edge("s", "r", Relation::InputOf, None);
        b.edge("r", "r2", Relation::InputOf, None);
        // A cycle of runs naming each other must not loop.
        b.edge("r2", "r", Relation::InputOf, None);
        b.layer();
        let depth = |id: &str| b.nodes[b.index[id]].depth;
        assert_eq!(depth("ds"), 0);
        assert_eq!(depth("d"), -1);
        assert!(depth("s") > depth("d"));
        assert!(depth("r") > depth("s"));
    }
}
