//! Deadlines: the plan that admits a reservation with `readyBy` ([`plan_deadline`]) and the
//! live estimate of one in progress ([`estimate`]); see "Deadlines" in the
//! [module docs](crate::reservations).

use chrono::{DateTime, SecondsFormat, Utc};
use milepost_schema::entity::reservation;
use milepost_schema::enums::ReservationState;
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};

use super::admission::human;
use super::{ReservationError, Reservations};
use crate::cache::ObjectKey;
use crate::transfer_policy::downloads::{local_now, local_to_utc, Unplannable};
use crate::transfer_policy::DownloadSchedule;

/// When a reservation with a deadline is expected to be ready, as of now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// When its bytes are expected to be all in the office.
    pub ready_at: DateTime<Utc>,
    /// When its materialization may start (the next open window), if it has not yet.
    pub start_at: DateTime<Utc>,
    /// Whether `ready_at` is before its `ready_by`.
    pub on_time: bool,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Plans fetching `missing` bytes (what the office does not hold yet of `label`) to be done
/// by `ready_by`, under `schedule`, for a reservation expiring at `expires_at`. Returns when
/// its materialization may start; refuses (field `readyBy`) a deadline in the past, after the
/// expiry, or that the windows' rates cannot meet, giving the earliest time they can.
pub(super) fn plan_deadline(
    schedule: &DownloadSchedule,
    label: &str,
    missing: u64,
    ready_by: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ReservationError> {
    let now = Utc::now();
    if ready_by <= now {
        return Err(ReservationError::invalid(
            "readyBy",
            format!("{} is not in the future", rfc3339(ready_by)),
        ));
    }
    if ready_by > expires_at {
        return Err(ReservationError::invalid(
            "readyBy",
            format!(
                "{} is after the reservation would expire ({}); ask for a longer ttlSeconds",
                rfc3339(ready_by),
                rfc3339(expires_at)
            ),
        ));
    }
    let local = local_now();
    let plan = schedule.plan(local, missing).map_err(|why| {
        let problem = match why {
            Unplannable::NeverOpen => "has no open window at any time of the week",
            Unplannable::BeyondHorizon => "cannot fetch them within a year",
        };
        ReservationError::invalid(
            "readyBy",
            format!(
                "{label} needs {missing} bytes ({}) from upstream, and the download schedule \
                 `{schedule}` {problem}",
                human(missing)
            ),
        )
    })?;
    let (start, finish) = (local_to_utc(plan.start), local_to_utc(plan.finish));
    if finish > ready_by {
        return Err(ReservationError::invalid(
            "readyBy",
            format!(
                "{label} needs {missing} bytes ({}) from upstream; under the download schedule \
                 `{schedule}` (from {}, {}) the earliest it can be ready is {}, after readyBy {}",
                human(missing),
                rfc3339(start),
                schedule.describe_at(plan.start),
                rfc3339(finish),
                rfc3339(ready_by)
            ),
        ));
    }
    Ok(start)
}

/// The live estimate of `row`, when it has a deadline and is not ready yet: its bytes still
/// to come (`missing`, see [`Reservations::estimate`]) from now under `schedule`.
pub fn estimate(
    row: &reservation::Model,
    schedule: &DownloadSchedule,
    missing: u64,
) -> Option<Estimate> {
    let ready_by = row.ready_by?;
    if !matches!(
        row.state,
        ReservationState::Pending | ReservationState::Materializing
    ) {
        return None;
    }
    let plan = schedule.plan(local_now(), missing).ok()?;
    let ready_at = local_to_utc(plan.finish);
    Some(Estimate {
        ready_at,
        start_at: local_to_utc(plan.start),
        on_time: ready_at <= ready_by,
    })
}

impl Reservations {
    /// The live estimate of `row` ([`estimate`]): a pending reservation still needs the bytes
    /// of its objects the office does not hold; one materializing needs what it has not done.
    /// `None` without a deadline, once ready or ended, or when the schedule cannot plan it.
    pub async fn estimate(
        &self,
        row: &reservation::Model,
    ) -> Result<Option<Estimate>, ReservationError> {
        if row.ready_by.is_none() {
            return Ok(None);
        }
        let missing = match row.state {
            ReservationState::Pending => {
                let members = self.inner.members(row.dataset_id).await?;
                self.inner.missing_bytes(&self.inner.pin_keys(&members))
            }
            _ => u64::try_from(row.bytes_total.saturating_sub(row.bytes_done)).unwrap_or(0),
        };
        Ok(estimate(
            row,
            &self.inner.settings.download_schedule,
            missing,
        ))
    }

    /// Reservations with a deadline not ready yet (pending or materializing), soonest
    /// scheduled start first; at most `limit` (capped at [`MAX_PAGE`](super::MAX_PAGE)).
    pub async fn planned(&self, limit: u64) -> Result<Vec<reservation::Model>, ReservationError> {
        Ok(reservation::Entity::find()
            .filter(reservation::Column::ReadyBy.is_not_null())
            .filter(
                reservation::Column::State
                    .is_in([ReservationState::Pending, ReservationState::Materializing]),
            )
            .order_by_asc(reservation::Column::ScheduledStart)
            .order_by_asc(reservation::Column::Id)
            .limit(limit.min(super::MAX_PAGE))
            .all(&self.inner.db)
            .await?)
    }

    /// The download schedule reservations with a deadline keep to.
    pub fn download_schedule(&self) -> &DownloadSchedule {
        &self.inner.settings.download_schedule
    }
}

impl super::Inner {
    /// Bytes of `objects` the office cache does not hold.
    pub(super) fn missing_bytes(&self, objects: &[ObjectKey]) -> u64 {
        objects
            .iter()
            .filter(|object| !self.cache.is_cached(object))
            .map(|object| object.size)
            .sum()
    }
}
