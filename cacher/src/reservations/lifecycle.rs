//! The reservation state machine: the states and their order (`pending → materializing →
//! ready → released | expired`, `failed`), which rows are newer than others, the
//! [`subscribe`](Reservations::subscribe) streams that carry them, and the
//! [`list`](Reservations::list) cursors.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use futures::stream::BoxStream;
use futures::StreamExt as _;
use milepost_schema::entity::reservation;
use milepost_schema::enums::ReservationState;
use tokio::sync::watch;

use super::{ReservationError, Reservations};

/// The kind of [`list`](Reservations::list) cursors.
const CURSOR_KIND: &str = "res";

/// States in which a reservation holds pins (and may still change).
pub(super) const ACTIVE: [ReservationState; 3] = [
    ReservationState::Pending,
    ReservationState::Materializing,
    ReservationState::Ready,
];

/// The opaque [`list`](Reservations::list) cursor of `row` (its position: creation time, id).
pub fn reservation_cursor(row: &reservation::Model) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{CURSOR_KIND}:{}:{}",
        row.created_at.timestamp_micros(),
        row.id
    ))
}

pub(super) fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim_end_matches('=')).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix(CURSOR_KIND)?.strip_prefix(':')?;
    let (micros, id) = rest.split_once(':')?;
    if micros.starts_with('+') || id.is_empty() {
        return None;
    }
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some((at, id.to_owned()))
}

/// Now, at the microsecond precision both database backends keep.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Whether a subscription stream ends after a row in `state`.
pub(super) fn ends_stream(state: ReservationState) -> bool {
    !matches!(
        state,
        ReservationState::Pending | ReservationState::Materializing
    )
}

/// Whether `state` is final: nothing changes after it.
pub(super) fn is_final(state: ReservationState) -> bool {
    !ACTIVE.contains(&state)
}

/// Lifecycle order, for deciding which of two rows of one reservation is newer.
fn rank(state: ReservationState) -> u8 {
    match state {
        ReservationState::Pending => 0,
        ReservationState::Materializing => 1,
        ReservationState::Ready => 2,
        ReservationState::Failed | ReservationState::Released | ReservationState::Expired => 3,
    }
}

pub(super) fn is_newer(candidate: &reservation::Model, current: &reservation::Model) -> bool {
    candidate != current
        && (rank(candidate.state), candidate.updated_at)
            >= (rank(current.state), current.updated_at)
        && !(is_final(current.state) && current.state != candidate.state)
}

/// A stream of a reservation's rows: the current one, then every change published, ending
/// after a row in a state that ends streams ([`Reservations::subscribe`]).
pub type ReservationStream = BoxStream<'static, reservation::Model>;

pub(super) fn watch_stream(rx: watch::Receiver<reservation::Model>) -> ReservationStream {
    futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            // The service stopped publishing (shut down) before a final row.
            return None;
        }
        let row = rx.borrow_and_update().clone();
        let end = ends_stream(row.state);
        Some((row, (rx, false, end)))
    })
    .boxed()
}

impl Reservations {
    /// The rows of reservation `id` as it changes: the current row first, then each change,
    /// ending after a row in state `ready`, `failed`, `released` or `expired` (at once if it is
    /// in one already). Backed by a `tokio::sync::watch` channel: a subscriber that reads
    /// slowly skips intermediate progress rows, never the last one. The stream also ends (early)
    /// if the service shuts down. [`NotFound`](ReservationErrorKind::NotFound) for an unknown
    /// id.
    pub async fn subscribe(&self, id: &str) -> Result<ReservationStream, ReservationError> {
        if let Some(rx) = self
            .inner
            .lock()
            .channels
            .get(id)
            .map(watch::Sender::subscribe)
        {
            return Ok(watch_stream(rx));
        }
        let row = self.get(id).await?;
        if ends_stream(row.state) || self.inner.stop.is_cancelled() {
            // Finished, or nothing will change it any more here.
            return Ok(futures::stream::iter([row]).boxed());
        }
        let rx = self
            .inner
            .lock()
            .channels
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(row).0)
            .subscribe();
        // A change written between the read above and the channel's creation was published
        // to nobody: read again (changes written from now on reach the channel).
        if let Some(fresh) = self.find(id).await? {
            self.inner.publish(fresh);
        }
        Ok(watch_stream(rx))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = DateTime::from_timestamp_micros(1_790_000_000_123_456).expect("time");
        let row = reservation::Model {
            id: "res_abc".into(),
            dataset_id: 1,
            owner: "o".into(),
            purpose: None,
            state: ReservationState::Pending,
            created_at: at,
            updated_at: at,
            expires_at: at,
            objects_total: 0,
            objects_done: 0,
            bytes_total: 0,
            bytes_done: 0,
            bytes_from_upstream: 0,
            local_path: None,
            error: None,
            notes: None,
            ready_by: None,
            scheduled_start: None,
        };
        let cursor = reservation_cursor(&row);
        assert_eq!(decode_cursor(&cursor), Some((at, "res_abc".to_owned())));
        for bad in [
            "",
            "!!",
            "cmVz",
            &URL_SAFE_NO_PAD.encode("obj:1:x"),
            &URL_SAFE_NO_PAD.encode("res:x:y"),
            &URL_SAFE_NO_PAD.encode("res:1:"),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn newer_rows_win_and_final_rows_stay() {
        let at = Utc::now();
        let base = reservation::Model {
            id: "r".into(),
            dataset_id: 1,
            owner: "o".into(),
            purpose: None,
            state: ReservationState::Materializing,
            created_at: at,
            updated_at: at,
            expires_at: at,
            objects_total: 2,
            objects_done: 1,
            bytes_total: 2,
            bytes_done: 1,
            bytes_from_upstream: 0,
            local_path: None,
            error: None,
            notes: None,
            ready_by: None,
            scheduled_start: None,
        };
        let later = reservation::Model {
            updated_at: at + chrono::Duration::milliseconds(1),
            objects_done: 2,
            ..base.clone()
        };
        assert!(is_newer(&later, &base));
        assert!(!is_newer(&base, &later));
        let ready = reservation::Model {
            state: ReservationState::Ready,
            ..base.clone()
        };
        assert!(is_newer(&ready, &later));
        let released = reservation::Model {
            state: ReservationState::Released,
            ..base.clone()
        };
        assert!(is_newer(&released, &ready));
        let expired = reservation::Model {
            state: ReservationState::Expired,
            updated_at: at + chrono::Duration::seconds(5),
            ..base
        };
        assert!(!is_newer(&expired, &released));
    }
}
