//! Expiry and start-up: [`start`](Reservations::start) resumes what a previous process left
//! ([`resume`](Reservations::resume)) and runs the loop that expires reservations past their
//! `expires_at` ([`expire_due`](Reservations::expire_due)).

use std::collections::HashSet;

use milepost_schema::entity::reservation;
use milepost_schema::enums::ReservationState;
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{now, ACTIVE};
use super::{ReservationError, Reservations};

/// Reservations expired per database round trip of [`Reservations::expire_due`].
const EXPIRY_BATCH: u64 = 100;

impl Reservations {
    /// Runs the service until `shutdown` is cancelled: resumes what a previous process left
    /// ([`resume`](Self::resume), retried at every expiry check until it succeeds), then
    /// expires due reservations every [`expiry_check`](ReservationSettings::expiry_check).
    /// On `shutdown`, stops every materialization and returns once they have ended
    /// ([`shutdown`](Self::shutdown)). Errors are logged, never fatal.
    pub async fn start(&self, shutdown: CancellationToken) {
        let mut resumed = false;
        let mut ticks = tokio::time::interval(self.inner.settings.expiry_check);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.inner.stop.cancelled() => break,
                _ = ticks.tick() => {
                    if let Err(err) = self.upkeep(&mut resumed).await {
                        tracing::warn!(error = %err, "reservation upkeep failed; retrying at the next check");
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// One pass of upkeep, run every [`expiry_check`](ReservationSettings::expiry_check) by
    /// [`start`](Self::start) or by the service's worker runner: expires what is due, and
    /// resumes what a previous process left until that has worked once (`resumed` remembers
    /// it). Both run at every pass: a failed expiry does not hold the resume back. Returns the
    /// first error after both have run.
    pub async fn upkeep(&self, resumed: &mut bool) -> Result<(), ReservationError> {
        let expired = self.expire_due().await;
        if !*resumed {
            let count = self.resume().await?;
            *resumed = true;
            if count > 0 {
                tracing::info!(count, "reservations resumed");
            }
        } else {
            // In a cluster: reservations whose node is gone, at every pass.
            self.take_over(false).await?;
        }
        expired.map(|_| ())
    }

    /// Takes over the live reservations in the database that this service does not drive
    /// yet: pending and materializing ones are pinned and materialized again (cached objects
    /// are hits, so only what is missing is fetched); ready ones are pinned again, and their
    /// view rebuilt if its directory is missing (objects no longer cached are fetched again
    /// first). Returns how many were taken over.
    ///
    /// In an office cluster, ready reservations are pinned here too (every node keeps the
    /// office's reservations from eviction), but only the pending and materializing ones of
    /// this node from before its restart, or of nodes that are gone, are materialized here.
    pub async fn resume(&self) -> Result<usize, ReservationError> {
        if self.inner.cluster.is_some() {
            let taken = self.take_over(true).await?;
            let ready = reservation::Entity::find()
                .filter(reservation::Column::State.eq(ReservationState::Ready))
                .order_by_asc(reservation::Column::CreatedAt)
                .all(&self.inner.db)
                .await?;
            let mut count = taken;
            for row in ready {
                if self.inner.adopt(&row).await? {
                    count += 1;
                }
            }
            return Ok(count);
        }
        let rows = reservation::Entity::find()
            .filter(reservation::Column::State.is_in(ACTIVE))
            .order_by_asc(reservation::Column::CreatedAt)
            .all(&self.inner.db)
            .await?;
        let mut count = 0;
        for row in rows {
            if self.inner.stop.is_cancelled() {
                return Err(ReservationError::ShuttingDown);
            }
            if self.inner.adopt(&row).await? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Expires every live reservation past its `expires_at` (view removed, pins released,
    /// state `expired`). Returns how many.
    pub async fn expire_due(&self) -> Result<usize, ReservationError> {
        let mut count = 0;
        let mut skip = HashSet::new();
        loop {
            let due = reservation::Entity::find()
                .filter(reservation::Column::State.is_in(ACTIVE))
                .filter(reservation::Column::ExpiresAt.lt(now()))
                .order_by_asc(reservation::Column::ExpiresAt)
                .limit(EXPIRY_BATCH + skip.len() as u64)
                .all(&self.inner.db)
                .await?;
            let batch: Vec<_> = due.into_iter().filter(|r| !skip.contains(&r.id)).collect();
            if batch.is_empty() {
                return Ok(count);
            }
            for row in batch {
                skip.insert(row.id.clone());
                let cutoff = now();
                if self
                    .inner
                    .end(&row, ReservationState::Expired, Some(cutoff))
                    .await?
                    .is_some()
                {
                    tracing::info!(reservation = %row.id, owner = %row.owner, "expired");
                    count += 1;
                }
            }
        }
    }
}
