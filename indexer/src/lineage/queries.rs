//! The batch reads behind [`super::lineage`]: each takes every id of one level of the graph
//! and answers in one query, so the number of queries grows with the graph's depth, never
//! with the number of runs, drives or datasets. Each read is capped (`cap` rows) so that a
//! drive used by a million runs costs a bounded read; the graph is then marked truncated.
//!
//! Indexes: `run_inputs (input_id)`, `run_input_windows (drive_id, start_time)`,
//! `scenarios (drive_id)`, `objects (drive_id, id)`, `objects (run_id, id)`,
//! `objects (bucket, key)`, `dataset_members (bucket, key)`, `reservations (dataset_id)`.

use milepost_schema::entity::{
    dataset, dataset_member, object, reservation, run_input, run_input_window, scenario,
};
use milepost_schema::enums::InputKind;
use sea_orm::sea_query::{Alias, Condition, Expr, Order, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::catalog::Window;
use crate::error::CatalogResult;

use super::db;

/// Runs that name one of `ids` (of `kind`) among their whole inputs.
pub(super) async fn runs_using(
    conn: &impl ConnectionTrait,
    ids: &[String],
    kind: InputKind,
    cap: u64,
) -> CatalogResult<Vec<run_input::Model>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    db(run_input::Entity::find()
        .filter(run_input::Column::InputId.is_in(ids.iter().cloned()))
        .filter(run_input::Column::InputKind.eq(kind))
        .order_by_asc(run_input::Column::RunId)
        .order_by_asc(run_input::Column::Position)
        .limit(cap)
        .all(conn)
        .await)
}

/// Input windows on the drives `ids`, only those overlapping `window` when given.
pub(super) async fn windows_on(
    conn: &impl ConnectionTrait,
    ids: &[String],
    window: Option<Window>,
    cap: u64,
) -> CatalogResult<Vec<run_input_window::Model>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = run_input_window::Entity::find()
        .filter(run_input_window::Column::DriveId.is_in(ids.iter().cloned()));
    if let Some(w) = window {
        // Half-open overlap: it starts before `w` ends and ends after `w` starts.
        query = query
            .filter(run_input_window::Column::StartTime.lt(w.end))
            .filter(run_input_window::Column::EndTime.gt(w.start));
    }
    db(query
        .order_by_asc(run_input_window::Column::RunId)
        .order_by_asc(run_input_window::Column::Position)
        .limit(cap)
        .all(conn)
        .await)
}

/// A scenario of a drive that a run names among its inputs.
#[derive(Debug, FromQueryResult)]
pub(super) struct ScenarioUse {
    pub scenario_id: String,
    pub drive_id: String,
    pub run_id: String,
}

/// Scenarios of the drives `ids` (overlapping `window` when given) that runs used, with
/// those runs: `run_inputs` joined to `scenarios` on the input id.
pub(super) async fn scenario_uses(
    conn: &impl ConnectionTrait,
    ids: &[String],
    window: Option<Window>,
    cap: u64,
) -> CatalogResult<Vec<ScenarioUse>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut condition = Condition::all()
        .add(Expr::col((scenario::Entity, scenario::Column::DriveId)).is_in(ids.iter().cloned()))
        .add(
            Expr::col((run_input::Entity, run_input::Column::InputKind))
                .eq(InputKind::Scenario.as_str()),
        );
    if let Some(w) = window {
        condition = condition
            .add(Expr::col((scenario::Entity, scenario::Column::StartTime)).lt(w.end))
            .add(Expr::col((scenario::Entity, scenario::Column::EndTime)).gt(w.start));
    }
    let statement = Query::select()
        .distinct()
        .expr_as(
            Expr::col((scenario::Entity, scenario::Column::Id)),
            Alias::new("scenario_id"),
        )
        .expr_as(
            Expr::col((scenario::Entity, scenario::Column::DriveId)),
            Alias::new("drive_id"),
        )
        .expr_as(
            Expr::col((run_input::Entity, run_input::Column::RunId)),
            Alias::new("run_id"),
        )
        .from(run_input::Entity)
        .inner_join(
            scenario::Entity,
            Expr::col((scenario::Entity, scenario::Column::Id))
                .equals((run_input::Entity, run_input::Column::InputId)),
        )
        .cond_where(condition)
        .order_by((run_input::Entity, run_input::Column::RunId), Order::Asc)
        .order_by((scenario::Entity, scenario::Column::Id), Order::Asc)
        .limit(cap)
        .to_owned();
    db(
        ScenarioUse::find_by_statement(conn.get_database_backend().build(&statement))
            .all(conn)
            .await,
    )
}

/// Whose objects a dataset holds: a drive or a run.
#[derive(Clone, Copy, Debug)]
pub(super) enum OwnerColumn {
    Drive,
    Run,
}

impl OwnerColumn {
    fn column(self) -> object::Column {
        match self {
            OwnerColumn::Drive => object::Column::DriveId,
            OwnerColumn::Run => object::Column::RunId,
        }
    }
}

/// A dataset holding an object of a drive or run.
#[derive(Debug, FromQueryResult)]
pub(super) struct Holding {
    pub owner_id: String,
    pub dataset_id: i64,
}

/// Datasets holding objects of the drives or runs `ids`: `objects` of the owners joined to
/// `dataset_members` on bucket and key.
pub(super) async fn datasets_holding(
    conn: &impl ConnectionTrait,
    owner: OwnerColumn,
    ids: &[String],
    cap: u64,
) -> CatalogResult<Vec<Holding>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = Query::select()
        .distinct()
        .expr_as(
            Expr::col((object::Entity, owner.column())),
            Alias::new("owner_id"),
        )
        .expr_as(
            Expr::col((dataset_member::Entity, dataset_member::Column::DatasetId)),
            Alias::new("dataset_id"),
        )
        .from(object::Entity)
        .inner_join(dataset_member::Entity, members_join())
        .cond_where(Expr::col((object::Entity, owner.column())).is_in(ids.iter().cloned()))
        .order_by(
            (dataset_member::Entity, dataset_member::Column::DatasetId),
            Order::Asc,
        )
        .order_by((object::Entity, owner.column()), Order::Asc)
        .limit(cap)
        .to_owned();
    db(
        Holding::find_by_statement(conn.get_database_backend().build(&statement))
            .all(conn)
            .await,
    )
}

fn members_join() -> Condition {
    Condition::all()
        .add(
            Expr::col((dataset_member::Entity, dataset_member::Column::Bucket))
                .equals((object::Entity, object::Column::Bucket)),
        )
        .add(
            Expr::col((dataset_member::Entity, dataset_member::Column::Key))
                .equals((object::Entity, object::Column::Key)),
        )
}

/// The drive or run owning objects a dataset holds.
#[derive(Debug, FromQueryResult)]
pub(super) struct MemberOwner {
    pub drive_id: Option<String>,
    pub run_id: Option<String>,
}

/// The drives and runs whose objects the dataset `dataset_id` holds.
pub(super) async fn member_owners(
    conn: &impl ConnectionTrait,
    dataset_id: i64,
    cap: u64,
) -> CatalogResult<Vec<MemberOwner>> {
    let statement = Query::select()
        .distinct()
        .column((object::Entity, object::Column::DriveId))
        .column((object::Entity, object::Column::RunId))
        .from(dataset_member::Entity)
        .inner_join(object::Entity, members_join())
        .cond_where(
            Condition::all()
                .add(
                    Expr::col((dataset_member::Entity, dataset_member::Column::DatasetId))
                        .eq(dataset_id),
                )
                .add(
                    Condition::any()
                        .add(Expr::col((object::Entity, object::Column::DriveId)).is_not_null())
                        .add(Expr::col((object::Entity, object::Column::RunId)).is_not_null()),
                ),
        )
        .order_by((object::Entity, object::Column::DriveId), Order::Asc)
        .order_by((object::Entity, object::Column::RunId), Order::Asc)
        .limit(cap)
        .to_owned();
    db(
        MemberOwner::find_by_statement(conn.get_database_backend().build(&statement))
            .all(conn)
            .await,
    )
}

/// Datasets by primary key.
pub(super) async fn datasets(
    conn: &impl ConnectionTrait,
    ids: &[i64],
) -> CatalogResult<Vec<dataset::Model>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    db(dataset::Entity::find()
        .filter(dataset::Column::Id.is_in(ids.iter().copied()))
        .order_by_asc(dataset::Column::Name)
        .order_by_asc(dataset::Column::Version)
        .all(conn)
        .await)
}

/// Reservations of the datasets `ids`, newest first.
pub(super) async fn reservations_of(
    conn: &impl ConnectionTrait,
    ids: &[i64],
    cap: u64,
) -> CatalogResult<Vec<reservation::Model>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    db(reservation::Entity::find()
        .filter(reservation::Column::DatasetId.is_in(ids.iter().copied()))
        .order_by_desc(reservation::Column::CreatedAt)
        .order_by_asc(reservation::Column::Id)
        .limit(cap)
        .all(conn)
        .await)
}

/// Whole inputs of the runs `ids`.
pub(super) async fn inputs_of(
    conn: &impl ConnectionTrait,
    ids: &[String],
    cap: u64,
) -> CatalogResult<Vec<run_input::Model>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    db(run_input::Entity::find()
        .filter(run_input::Column::RunId.is_in(ids.iter().cloned()))
        .order_by_asc(run_input::Column::RunId)
        .order_by_asc(run_input::Column::Position)
        .limit(cap)
        .all(conn)
        .await)
}

/// Input windows of the runs `ids`.
pub(super) async fn windows_of(
    conn: &impl ConnectionTrait,
    ids: &[String],
    cap: u64,
) -> CatalogResult<Vec<run_input_window::Model>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    db(run_input_window::Entity::find()
        .filter(run_input_window::Column::RunId.is_in(ids.iter().cloned()))
        .order_by_asc(run_input_window::Column::RunId)
        .order_by_asc(run_input_window::Column::Position)
        .limit(cap)
        .all(conn)
        .await)
}
