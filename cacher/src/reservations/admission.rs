//! Admission: who may reserve, extend and release (authorization), for how long (the TTL and
//! `expires_at`), and whether the cache has room.
//!
//! Room is asked of the cache's book, the one count of pins
//! ([`OfficeCache::admit_pins`](crate::OfficeCache::admit_pins)): a reservation is admitted
//! when every pinned object, cached or not, still fits in the cache with its objects. So
//! what other holders pin counts too: office writes not yet in S3 and multipart parts are
//! on the cache's disk and cannot be evicted either, and a reservation admitted beside them
//! would only fail later, half-materialized. A trimmed log is counted at its planned size
//! until it is built, then at its built size (see [`trimmed`](crate::trimmed)).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use milepost_schema::entity::{dataset, reservation};
use milepost_schema::enums::ReservationState;
use milepost_schema::ids::new_id;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, EntityTrait as _};

use super::lifecycle::{is_final, now, ACTIVE};
use super::materialize::Member;
use super::schedule::plan_deadline;
use super::{Actor, Inner, ReservationError, Reservations};
use crate::cache::{ObjectKey, Overcommitted};
use crate::trimmed;

/// The longest `purpose`, in characters.
pub const MAX_PURPOSE_LEN: usize = 1024;

/// A time-to-live given in seconds (GraphQL `ttlSeconds`), checked positive; the upper bound
/// is checked by [`Reservations::reserve`] and [`Reservations::extend`].
pub fn ttl_from_seconds(seconds: i64) -> Result<Duration, ReservationError> {
    u64::try_from(seconds)
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ReservationError::invalid(
                "ttlSeconds",
                format!("{seconds} is not a positive number of seconds"),
            )
        })
}

impl Reservations {
    /// Reserves `dataset` for `owner` for `ttl`: records it `pending` with the dataset's
    /// totals, pins its objects and starts materializing it in the background. Returns the
    /// `pending` row.
    ///
    /// Errors: `ttl` zero or above [`max_ttl`](ReservationSettings::max_ttl) (field
    /// `ttlSeconds`), `purpose` too long (`purpose`), a dataset larger than the cache
    /// (`dataset`); [`NoRoom`](ReservationError::NoRoom) (Conflict) when live reservations
    /// pin too much of the cache; [`ShuttingDown`](ReservationError::ShuttingDown).
    pub async fn reserve(
        &self,
        dataset: &dataset::Model,
        owner: &str,
        purpose: Option<String>,
        ttl: Duration,
    ) -> Result<reservation::Model, ReservationError> {
        self.reserve_by(dataset, owner, purpose, ttl, None).await
    }

    /// [`reserve`](Self::reserve), ready by `ready_by` when given: the reservation is
    /// admitted and pinned now, and materialized within the download windows at their rates
    /// (see "Deadlines" in the [module docs](crate::reservations)). A deadline that is past,
    /// after the expiry, or that the windows cannot meet for the bytes the office does not
    /// hold yet is refused (field `readyBy`), with the earliest time it could be met.
    pub async fn reserve_by(
        &self,
        dataset: &dataset::Model,
        owner: &str,
        purpose: Option<String>,
        ttl: Duration,
        ready_by: Option<DateTime<Utc>>,
    ) -> Result<reservation::Model, ReservationError> {
        if self.inner.stop.is_cancelled() {
            return Err(ReservationError::ShuttingDown);
        }
        let expires_at = self.expiry(ttl)?;
        if let Some(p) = &purpose {
            let chars = p.chars().count();
            if chars > MAX_PURPOSE_LEN {
                return Err(ReservationError::invalid(
                    "purpose",
                    format!("{chars} characters is too long (at most {MAX_PURPOSE_LEN})"),
                ));
            }
        }
        let members = self.inner.members(dataset.id).await?;
        let objects = self.inner.pin_keys(&members);
        let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
        let capacity = self.inner.cache.settings().capacity;
        let label = format!("dataset `{}` version {}", dataset.name, dataset.version);
        if total_bytes > capacity {
            return Err(ReservationError::invalid(
                "dataset",
                format!(
                    "{label} is {total_bytes} bytes ({}); the office cache holds at most \
                     {capacity} bytes ({})",
                    human(total_bytes),
                    human(capacity)
                ),
            ));
        }
        let scheduled_start = match ready_by {
            Some(ready_by) => Some(plan_deadline(
                &self.inner.settings.download_schedule,
                &label,
                self.inner.missing_bytes(&objects),
                ready_by,
                expires_at,
            )?),
            None => None,
        };
        let id = new_id("res");
        if let Err(refused) = self.inner.cache.admit_pins(&id, &objects) {
            let Overcommitted {
                additional: more,
                committed: held,
                capacity,
            } = refused;
            let free = capacity.saturating_sub(held);
            return Err(ReservationError::NoRoom(format!(
                "no room in the office cache for {label}: it needs {more} more bytes ({}) \
                 pinned, but of the cache's {capacity} bytes ({}) {held} ({}) are pinned \
                 already by live reservations and office writes not yet in S3, leaving {free} \
                 ({}); release or wait for other reservations",
                human(more),
                human(capacity),
                human(held),
                human(free)
            )));
        }

        let created = now();
        let row = reservation::ActiveModel {
            id: Set(id.clone()),
            dataset_id: Set(dataset.id),
            owner: Set(owner.to_owned()),
            purpose: Set(purpose),
            state: Set(ReservationState::Pending),
            created_at: Set(created),
            updated_at: Set(created),
            expires_at: Set(expires_at),
            objects_total: Set(i64::try_from(objects.len()).unwrap_or(i64::MAX)),
            objects_done: Set(0),
            bytes_total: Set(i64::try_from(total_bytes).unwrap_or(i64::MAX)),
            bytes_done: Set(0),
            bytes_from_upstream: Set(0),
            local_path: Set(None),
            error: Set(None),
            notes: Set(None),
            ready_by: Set(ready_by),
            scheduled_start: Set(scheduled_start),
        };
        let inserted = match reservation::Entity::insert(row)
            .exec_with_returning(&self.inner.db)
            .await
        {
            Ok(row) => row,
            Err(err) => {
                self.inner.unpin(&id);
                return Err(err.into());
            }
        };
        tracing::info!(
            reservation = %id,
            dataset = %dataset.name,
            version = dataset.version,
            owner,
            objects = objects.len(),
            bytes = total_bytes,
            ready_by = ?ready_by,
            scheduled_start = ?scheduled_start,
            "reserved"
        );
        self.inner.hold(&id).await;
        Inner::spawn(&self.inner, id, false);
        Ok(inserted)
    }

    fn expiry(&self, ttl: Duration) -> Result<DateTime<Utc>, ReservationError> {
        let max = self.inner.settings.max_ttl;
        if ttl.is_zero() || ttl > max {
            return Err(ReservationError::invalid(
                "ttlSeconds",
                format!(
                    "{} is out of range: expected 1 to {} seconds",
                    ttl.as_secs(),
                    max.as_secs()
                ),
            ));
        }
        chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| now().checked_add_signed(ttl))
            .ok_or_else(|| {
                ReservationError::invalid("ttlSeconds", format!("{} is too long", ttl.as_secs()))
            })
    }

    /// Releases reservation `id`: stops its materialization, removes its view, unpins its
    /// objects and records it `released`. Only its owner or an admin may
    /// ([`Forbidden`](ReservationErrorKind::Forbidden)). Releasing a reservation that is
    /// already released, failed or expired changes nothing and returns it as it is.
    pub async fn release(
        &self,
        id: &str,
        by: Actor<'_>,
    ) -> Result<reservation::Model, ReservationError> {
        let row = self.get(id).await?;
        authorize(&row, by, "release")?;
        if is_final(row.state) {
            return Ok(row);
        }
        match self
            .inner
            .end(&row, ReservationState::Released, None)
            .await?
        {
            Some(row) => {
                tracing::info!(reservation = %id, by = by.name, "released");
                Ok(row)
            }
            None => self.get(id).await,
        }
    }

    /// Extends reservation `id`: it now expires `ttl` from now (checked like
    /// [`reserve`](Self::reserve)'s). Only its owner or an admin may; a released, failed or
    /// expired reservation cannot be extended ([`Conflict`](ReservationErrorKind::Conflict),
    /// naming its state).
    pub async fn extend(
        &self,
        id: &str,
        ttl: Duration,
        by: Actor<'_>,
    ) -> Result<reservation::Model, ReservationError> {
        let expires_at = self.expiry(ttl)?;
        let row = self.get(id).await?;
        authorize(&row, by, "extend")?;
        let not_active = |state| ReservationError::NotActive {
            id: id.to_owned(),
            state,
            action: "extended",
        };
        if is_final(row.state) {
            return Err(not_active(row.state));
        }
        let updated = self
            .inner
            .update(id, &ACTIVE, None, |q| {
                q.col_expr(reservation::Column::ExpiresAt, Expr::value(expires_at))
            })
            .await?;
        match updated {
            Some(row) => {
                self.inner.publish(row.clone());
                Ok(row)
            }
            None => Err(not_active(self.get(id).await?.state)),
        }
    }
}

impl Inner {
    /// What pins and admission count for `members`: whole objects, and for trimmed logs the
    /// trimmed file when it is cached already, else a stand-in of its planned size.
    pub(super) fn pin_keys(&self, members: &[Member]) -> Arc<[ObjectKey]> {
        members
            .iter()
            .map(|m| match m {
                Member::Whole(object) => object.clone(),
                Member::Trim { source, spec } => trimmed::find_built(&self.cache, source, spec)
                    .unwrap_or_else(|| trimmed::planned_key(source, spec)),
            })
            .collect()
    }

    /// Unpins `id`'s objects. Returns what it held, for [`restore_pins`](Self::restore_pins).
    pub(super) fn unpin(&self, id: &str) -> Vec<ObjectKey> {
        self.cache.unpin_all(id)
    }

    /// Gives `id` back the pins [`unpin`](Self::unpin) took, when the final state they were
    /// released for was not written and the reservation may still be live (no admission
    /// check: it was admitted before).
    pub(super) fn restore_pins(&self, id: &str, held: &[ObjectKey]) {
        self.cache.pin(id, held);
    }
}

fn authorize(
    row: &reservation::Model,
    by: Actor<'_>,
    action: &'static str,
) -> Result<(), ReservationError> {
    if by.admin || by.name == row.owner {
        Ok(())
    } else {
        Err(ReservationError::Forbidden {
            id: row.id.clone(),
            owner: row.owner.clone(),
            action,
        })
    }
}

/// `bytes` in binary units, for messages: `1.5 GiB`.
pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_seconds_must_be_positive() {
        assert_eq!(ttl_from_seconds(60).expect("ok"), Duration::from_secs(60));
        for bad in [0, -1, i64::MIN] {
            let err = ttl_from_seconds(bad).expect_err("bad");
            assert_eq!(err.field(), Some("ttlSeconds"));
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
