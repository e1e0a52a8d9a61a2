//! Persistence: every change of a reservation row is a conditional `UPDATE` on its current
//! state (a compare and set), read back and published to its subscribers; the final-state
//! transitions (released, expired) and progress writes are built on it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use milepost_schema::entity::reservation;
use milepost_schema::enums::ReservationState;
use milepost_schema::DbError;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};

use super::lifecycle::{ends_stream, is_final, is_newer, now, ACTIVE};
use super::{Inner, ReservationError};

type Update = sea_orm::UpdateMany<reservation::Entity>;

impl Inner {
    /// Sends `row` to its subscribers if it is newer than what they have; forgets the channel
    /// after a row that ends streams.
    pub(super) fn publish(&self, row: reservation::Model) {
        let mut state = self.lock();
        let Some(sender) = state.channels.get(&row.id) else {
            return;
        };
        let end = ends_stream(row.state);
        let id = row.id.clone();
        sender.send_if_modified(|current| {
            if is_newer(&row, current) {
                *current = row;
                true
            } else {
                false
            }
        });
        if end || ends_stream(sender.borrow().state) {
            state.channels.remove(&id);
        }
    }

    /// The conditional update of reservation `id`: only if its state is one of `from` (and,
    /// with `expired_before`, if it expires before that instant). Sets `updated_at` and reads
    /// the row back; `None` when the condition did not hold. A caller writing a final state
    /// unpins before (whoever reads the final row, from the database or a subscription, finds
    /// the pins released) and publishes the row once its other side effects are done.
    pub(super) async fn update(
        &self,
        id: &str,
        from: &[ReservationState],
        expired_before: Option<DateTime<Utc>>,
        set: impl FnOnce(Update) -> Update,
    ) -> Result<Option<reservation::Model>, DbError> {
        let mut query = reservation::Entity::update_many()
            .filter(reservation::Column::Id.eq(id))
            .filter(reservation::Column::State.is_in(from.iter().copied()));
        if let Some(cutoff) = expired_before {
            query = query.filter(reservation::Column::ExpiresAt.lt(cutoff));
        }
        let query = set(query).col_expr(reservation::Column::UpdatedAt, Expr::value(now()));
        if query.exec(&self.db).await?.rows_affected == 0 {
            return Ok(None);
        }
        Ok(reservation::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Stops the materialization of `id`, if one runs, and waits until it has ended.
    pub(super) async fn stop_task(&self, id: &str) {
        let running = self.lock().running.get(id).cloned();
        if let Some(running) = running {
            running.cancel.cancel();
            running.done.cancelled().await;
        }
    }

    /// Moves `row` to the final state `to` (released or expired; with `expired_before`, only
    /// if it still expires before it): stops its materialization, removes its view, unpins,
    /// writes the state. `None` if another change won (the reservation is then pinned and
    /// taken over again if it is still live, e.g. extended while expiring).
    pub(super) async fn end(
        self: &Arc<Self>,
        row: &reservation::Model,
        to: ReservationState,
        expired_before: Option<DateTime<Utc>>,
    ) -> Result<Option<reservation::Model>, ReservationError> {
        let id = row.id.as_str();
        self.stop_task(id).await;
        // Before the state is written: if this process dies in between, the reservation is
        // still live at the next start and its view is rebuilt, rather than a view left behind
        // for a reservation that is over.
        if let Err(err) = self.cache.remove_view(id).await {
            tracing::warn!(reservation = %id, error = %err, "cannot remove a reservation's view");
        }
        // Before the state is written too: whoever reads the final row finds the pins
        // released. Given back below if the reservation turns out to be still live.
        let held = self.unpin(id);
        let ended = self
            .update(id, &ACTIVE, expired_before, |q| {
                q.col_expr(reservation::Column::State, Expr::value(to))
                    .col_expr(reservation::Column::LocalPath, Expr::value(None::<String>))
            })
            .await;
        match ended {
            Ok(Some(row)) => {
                self.publish(row.clone());
                Ok(Some(row))
            }
            Ok(None) => {
                // Someone else ended it (nothing to undo), or it was extended meanwhile: then
                // it is live, and its pins, materialization or view must come back.
                let current = match reservation::Entity::find_by_id(id).one(&self.db).await {
                    Ok(current) => current,
                    Err(err) => {
                        self.restore_pins(id, &held);
                        return Err(err.into());
                    }
                };
                if let Some(current) = current.filter(|c| !is_final(c.state)) {
                    self.restore_pins(id, &held);
                    self.adopt(&current).await?;
                }
                Ok(None)
            }
            Err(err) => {
                match reservation::Entity::find_by_id(id).one(&self.db).await {
                    Ok(Some(current)) if !is_final(current.state) => {
                        self.restore_pins(id, &held);
                        let _ = self.adopt(&current).await;
                    }
                    Ok(_) => {}
                    // Unknown: keep it protected, as it was.
                    Err(_) => self.restore_pins(id, held.as_ref()),
                }
                Err(err.into())
            }
        }
    }

    /// Writes progress `(objects done, bytes done, bytes from upstream this run)` of a
    /// materializing reservation; with `ready_at` (view, notes), also moves it to `ready` with
    /// that view (none when the content store keeps no local files), the bytes done as its total (trimmed files are only sized once built) and
    /// the notes. `false` when it is no longer materializing.
    pub(super) async fn write_progress(
        &self,
        id: &str,
        (objects, bytes, upstream): (u64, u64, u64),
        base_upstream: u64,
        ready_at: Option<(Option<String>, Vec<String>)>,
    ) -> Result<bool, DbError> {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let upstream = as_i64(base_upstream.saturating_add(upstream));
        let updated = self
            .update(id, &[ReservationState::Materializing], None, |q| {
                let q = q
                    .col_expr(
                        reservation::Column::ObjectsDone,
                        Expr::value(as_i64(objects)),
                    )
                    .col_expr(reservation::Column::BytesDone, Expr::value(as_i64(bytes)))
                    .col_expr(
                        reservation::Column::BytesFromUpstream,
                        Expr::value(upstream),
                    );
                match ready_at {
                    Some((path, notes)) => q
                        .col_expr(
                            reservation::Column::State,
                            Expr::value(ReservationState::Ready),
                        )
                        .col_expr(reservation::Column::LocalPath, Expr::value(path))
                        .col_expr(reservation::Column::BytesTotal, Expr::value(as_i64(bytes)))
                        .col_expr(
                            reservation::Column::Notes,
                            Expr::value((!notes.is_empty()).then(|| serde_json::json!(notes))),
                        ),
                    None => q,
                }
            })
            .await?;
        Ok(updated.map(|row| self.publish(row)).is_some())
    }
}
