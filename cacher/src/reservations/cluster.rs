//! Reservations in an office cluster: the node materializing a reservation holds it under its
//! lease (`reservations.lease_owner`); when that node is gone, the next node's upkeep takes
//! the reservation over and finishes it (objects already in the office tier are not fetched
//! again).

use milepost_cluster::LIVE_NODES;
use milepost_schema::entity::reservation;
use sea_orm::{
    ColumnTrait as _, ConnectionTrait as _, DatabaseBackend, EntityTrait as _, QueryFilter as _,
    Statement,
};

use super::{Inner, ReservationError, Reservations};

impl Inner {
    /// In a cluster: marks reservation `id`, just admitted here, as this node's work. A
    /// failure is logged: the reservation is then taken over by a node that finds it
    /// without an owner for a whole lease, while this node goes on with it.
    pub(super) async fn hold(&self, id: &str) {
        let Some(node) = &self.cluster else {
            return;
        };
        if let Err(err) = self
            .db
            .execute(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "UPDATE reservations SET lease_owner = $1 WHERE id = $2",
                [node.id().into(), id.into()],
            ))
            .await
        {
            tracing::warn!(reservation = %id, error = %err, "cannot mark a reservation as this node's work");
        }
    }
}

impl Reservations {
    /// In a cluster: takes over the pending and materializing reservations whose node is
    /// gone, and at start-up (`at_start`) this node's own from before its restart, and
    /// materializes them here. Returns how many. A reservation without an owner is taken only
    /// once it has not changed for a whole lease (its admitting node marks it right after
    /// admission).
    pub(super) async fn take_over(&self, at_start: bool) -> Result<usize, ReservationError> {
        let Some(node) = &self.inner.cluster else {
            return Ok(0);
        };
        let lease_ms = i64::try_from(node.lease().as_millis()).unwrap_or(i64::MAX);
        let own = if at_start { "lease_owner = $1 OR " } else { "" };
        let rows = self
            .inner
            .db
            .query_all(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                format!(
                    "UPDATE reservations SET lease_owner = $1 \
                     WHERE state IN ('pending', 'materializing') AND ({own}\
                     (lease_owner <> $1 AND lease_owner NOT IN ({LIVE_NODES})) \
                     OR (lease_owner IS NULL \
                         AND updated_at + $2 * interval '1 millisecond' < now())) \
                     RETURNING id"
                ),
                [node.id().into(), lease_ms.into()],
            ))
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            ids.push(row.try_get::<String>("", "id")?);
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let rows = reservation::Entity::find()
            .filter(reservation::Column::Id.is_in(ids))
            .all(&self.inner.db)
            .await?;
        let mut count = 0;
        for row in rows {
            tracing::info!(reservation = %row.id, node = %node.id(), "taking over a reservation from a node that is gone");
            if self.inner.adopt(&row).await? {
                count += 1;
            }
        }
        Ok(count)
    }
}
