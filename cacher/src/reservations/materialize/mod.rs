//! Materialization: the background runs that make a reservation's dataset local
//! ([`Inner::spawn`]), their failure ([`Inner::fail`]) and the taking over of live
//! reservations at start-up or after a lost race ([`Inner::adopt`]). One run is in [`run`];
//! what a failure tells the client is in [`failures`].

use std::sync::Arc;

use milepost_schema::entity::reservation;
use milepost_schema::enums::ReservationState;
use sea_orm::sea_query::Expr;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Inner, ReservationError, ReservationErrorKind};
use crate::cache::ObjectKey;
use crate::datasets::{all_members, TrimSpec};

mod failures;
mod run;

pub use failures::MAX_NAMED_FAILURES;

/// A materialization task in progress.
#[derive(Clone, Debug)]
pub(super) struct Running {
    pub(super) generation: u64,
    /// Stops it (a child of the service's stop token).
    pub(super) cancel: CancellationToken,
    /// Cancelled when it has ended.
    pub(super) done: CancellationToken,
}

/// How a materialization run ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Ready,
    Failed,
    /// Cancelled, or the reservation left `materializing` under it, or the cache shut down:
    /// nothing to write.
    Stopped,
}

/// Removes a materialization from the running map when it ends (also if it is aborted), and
/// signals its end.
struct TaskGuard {
    inner: Arc<Inner>,
    id: String,
    generation: u64,
    _done: DropGuard,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state
            .running
            .get(&self.id)
            .is_some_and(|r| r.generation == self.generation)
        {
            state.running.remove(&self.id);
        }
    }
}

/// One member of a reservation's dataset.
#[derive(Clone, Debug)]
pub(in crate::reservations) enum Member {
    /// An object materialized as it is.
    Whole(ObjectKey),
    /// An MCAP log trimmed to a window ([`crate::trimmed`]).
    Trim {
        /// The source log.
        source: ObjectKey,
        /// What to keep.
        spec: TrimSpec,
    },
}

impl Member {
    /// The object named in failures: the object, or the source log.
    pub(super) fn object(&self) -> &ObjectKey {
        match self {
            Self::Whole(object) => object,
            Self::Trim { source, .. } => source,
        }
    }
}

impl Inner {
    pub(in crate::reservations) async fn members(
        &self,
        dataset_id: i64,
    ) -> Result<Vec<Member>, ReservationError> {
        let members = all_members(&self.db, dataset_id).await?;
        Ok(members
            .into_iter()
            .map(|m| {
                let object = ObjectKey::new(m.bucket, m.key, m.etag, m.size);
                match m.trim {
                    Some(spec) => Member::Trim {
                        source: object,
                        spec,
                    },
                    None => Member::Whole(object),
                }
            })
            .collect())
    }

    /// Takes over a live reservation: pins it, and materializes it (pending, materializing)
    /// or makes sure its view exists (ready). `false` when a materialization of it already
    /// runs here.
    pub(super) async fn adopt(
        self: &Arc<Self>,
        row: &reservation::Model,
    ) -> Result<bool, ReservationError> {
        if self.lock().running.contains_key(&row.id) {
            return Ok(false);
        }
        let members = self.members(row.dataset_id).await?;
        let objects = self.pin_keys(&members);
        self.restore_pins(&row.id, &objects);
        match row.state {
            ReservationState::Pending | ReservationState::Materializing => {
                Inner::spawn(self, row.id.clone(), false);
            }
            ReservationState::Ready => {
                let view_ok = match &row.local_path {
                    Some(path) => tokio::fs::metadata(path)
                        .await
                        .map(|m| m.is_dir())
                        .unwrap_or(false),
                    // No view on the office tier.
                    None => !self.cache.keeps_views(),
                };
                if !view_ok {
                    tracing::info!(reservation = %row.id, "view missing; rebuilding it");
                    Inner::spawn(self, row.id.clone(), true);
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// Starts materializing `id` in the background (`repair`: a ready reservation whose view
    /// must be rebuilt; its state stays `ready`), unless a materialization of it runs already
    /// (start-up resuming a reservation that `reserve` is about to start).
    pub(super) fn spawn(self: &Arc<Self>, id: String, repair: bool) {
        let (cancel, done, generation) = {
            let mut state = self.lock();
            if state
                .running
                .get(&id)
                .is_some_and(|r| !r.done.is_cancelled())
            {
                return;
            }
            state.generation += 1;
            let running = Running {
                generation: state.generation,
                cancel: self.stop.child_token(),
                done: CancellationToken::new(),
            };
            state.running.insert(id.clone(), running.clone());
            (running.cancel, running.done, running.generation)
        };
        let guard = TaskGuard {
            inner: Arc::clone(self),
            id: id.clone(),
            generation,
            _done: done.drop_guard(),
        };
        let inner = Arc::clone(self);
        self.tasks.spawn(async move {
            let _guard = guard;
            match inner.materialize(&id, repair, &cancel).await {
                Ok(ended) => tracing::debug!(reservation = %id, ?ended, "materialization ended"),
                Err(err) => {
                    tracing::error!(reservation = %id, error = %err, "materialization failed");
                    let message = format!(
                        "materialization stopped: {}",
                        match err.kind() {
                            ReservationErrorKind::Unavailable =>
                                "the catalog database was unavailable",
                            _ => "an internal error (see the server log)",
                        }
                    );
                    inner.fail(&id, message, repair).await;
                }
            }
        });
    }

    /// Records `id` as failed with `message` (from materializing, or from ready when
    /// repairing) and unpins it.
    pub(super) async fn fail(&self, id: &str, message: String, repair: bool) {
        let from: &[ReservationState] = if repair {
            &[ReservationState::Ready]
        } else {
            &[ReservationState::Pending, ReservationState::Materializing]
        };
        // Before the failed row is written, so that whoever reads it (from the database or a
        // subscription) finds the pins released; given back if the write fails.
        let held = self.unpin(id);
        match self
            .update(id, from, None, |q| {
                q.col_expr(
                    reservation::Column::State,
                    Expr::value(ReservationState::Failed),
                )
                .col_expr(reservation::Column::Error, Expr::value(Some(message)))
                .col_expr(reservation::Column::LocalPath, Expr::value(None::<String>))
            })
            .await
        {
            Ok(Some(row)) => {
                if let Err(err) = self.cache.remove_view(id).await {
                    tracing::warn!(reservation = %id, error = %err, "cannot remove a failed reservation's view");
                }
                self.publish(row);
            }
            // Released or expired meanwhile: its pins go with it.
            Ok(None) => {}
            Err(err) => {
                // Still live in the database: keep it protected, as it was.
                self.restore_pins(id, &held);
                tracing::error!(reservation = %id, error = %err, "cannot record a failed reservation");
            }
        }
    }
}
