//! The `workers` query (an addition to the contract): the office's background workers as the
//! runner records them (see [`crate::workers`]), for `milepost status` and dashboards.

use async_graphql::{Context, Enum, Object, SimpleObject};

use super::scalars::Long;
use super::state;
use crate::workers::{WorkerReport, WorkerState};

/// What a background worker is doing.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "WorkerState")]
pub enum WorkerStateView {
    Idle,
    Busy,
    Throttled,
    /// The last step failed (see `lastError`); the worker retries.
    Failed,
    Stopped,
}

impl From<&WorkerState> for WorkerStateView {
    fn from(state: &WorkerState) -> Self {
        match state {
            WorkerState::Idle => WorkerStateView::Idle,
            WorkerState::Busy => WorkerStateView::Busy,
            WorkerState::Throttled => WorkerStateView::Throttled,
            WorkerState::Failed(_) => WorkerStateView::Failed,
            WorkerState::Stopped => WorkerStateView::Stopped,
        }
    }
}

/// One background worker (catalog syncs, reservation upkeep).
#[derive(SimpleObject, Debug)]
#[graphql(name = "Worker")]
pub struct WorkerView {
    name: String,
    state: WorkerStateView,
    /// The most recent failure, kept after the worker recovers.
    last_error: Option<String>,
    /// Steps that did work or failed.
    runs: Long,
    failures: Long,
}

impl From<WorkerReport> for WorkerView {
    fn from(report: WorkerReport) -> Self {
        WorkerView {
            state: (&report.state).into(),
            name: report.name,
            last_error: report.last_error,
            runs: Long(i64::try_from(report.runs).unwrap_or(i64::MAX)),
            failures: Long(i64::try_from(report.failures).unwrap_or(i64::MAX)),
        }
    }
}

#[derive(Debug, Default)]
pub struct WorkersQuery;

#[Object]
impl WorkersQuery {
    /// The background workers of this office, in the order they were started.
    async fn workers(&self, ctx: &Context<'_>) -> Vec<WorkerView> {
        state(ctx)
            .workers
            .reports()
            .into_iter()
            .map(WorkerView::from)
            .collect()
    }
}
