//! Input windows of runs: the time windows of drives a run read (`inputWindows` in the API,
//! `input_windows[]` in `run.json`), validated and stored in `run_input_windows`.
//!
//! A window is half-open, `[start, end)`, and never empty. Two windows overlap when each
//! starts before the other ends ([`Window::overlaps`]): 14:02–14:05 and 14:05–14:07 share no
//! instant. A window may name a drive the catalog does not have yet (the run's sidecar may be
//! synced before the drive's); when the drive is cataloged, the window must share some time
//! with it.

use chrono::{DateTime, SecondsFormat, Utc};
use milepost_schema::entity::{drive, run_input_window};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::{db, validate};
use crate::error::{CatalogError, CatalogResult};

/// A half-open time window `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// A window, or what is wrong with it (`field` names the input in the client's terms).
    pub fn new(field: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> CatalogResult<Window> {
        if start >= end {
            return Err(CatalogError::bad_input(
                format!("{field}.end"),
                format!(
                    "{} is not after start {}: a window is [start, end) and must not be empty",
                    rfc3339(end),
                    rfc3339(start)
                ),
            ));
        }
        Ok(Window { start, end })
    }

    /// Whether the two half-open windows share an instant.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether the window shares an instant with a drive that runs from `started` to `ended`,
    /// both included (a drive's times are instants of its log, the last one recorded too).
    pub fn meets_span(&self, started: DateTime<Utc>, ended: DateTime<Utc>) -> bool {
        self.start <= ended && started < self.end
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", rfc3339(self.start), rfc3339(self.end))
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// One input window of a run: a drive, by id, and a window of its time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowRecord {
    pub drive_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Checks a run's input windows (`field` is the list's input path, e.g. `input.inputWindows`)
/// and returns them without repeats, in order. The drives they name are read in one query.
pub async fn check_windows(
    conn: &impl ConnectionTrait,
    field: &str,
    windows: &[WindowRecord],
) -> CatalogResult<Vec<WindowRecord>> {
    validate::list_len(field, windows)?;
    let mut out: Vec<WindowRecord> = Vec::with_capacity(windows.len());
    for (i, w) in windows.iter().enumerate() {
        let item = format!("{field}[{i}]");
        validate::identifier(&format!("{item}.driveId"), &w.drive_id)?;
        Window::new(&item, w.start, w.end)?;
        if !out.contains(w) {
            out.push(w.clone());
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    let mut ids: Vec<&str> = out.iter().map(|w| w.drive_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let drives = db(drive::Entity::find()
        .filter(drive::Column::Id.is_in(ids))
        .all(conn)
        .await)?;
    for (i, w) in windows.iter().enumerate() {
        let Some(drive) = drives.iter().find(|d| d.id == w.drive_id) else {
            continue; // not cataloged yet: nothing to check against
        };
        let window = Window {
            start: w.start,
            end: w.end,
        };
        if !window.meets_span(drive.started_at, drive.ended_at) {
            return Err(CatalogError::bad_input(
                format!("{field}[{i}]"),
                format!(
                    "window {window} is outside drive {:?} ({} to {})",
                    drive.id,
                    rfc3339(drive.started_at),
                    rfc3339(drive.ended_at)
                ),
            ));
        }
    }
    Ok(out)
}

/// Replaces the input windows of `run_id` (inside the registration's transaction).
pub(super) async fn replace_windows(
    conn: &impl ConnectionTrait,
    run_id: &str,
    windows: Vec<WindowRecord>,
) -> CatalogResult<()> {
    db(run_input_window::Entity::delete_many()
        .filter(run_input_window::Column::RunId.eq(run_id))
        .exec(conn)
        .await)?;
    if windows.is_empty() {
        return Ok(());
    }
    let rows = windows
        .into_iter()
        .enumerate()
        .map(|(position, w)| run_input_window::ActiveModel {
            run_id: Set(run_id.to_owned()),
            position: Set(position as i32),
            drive_id: Set(w.drive_id),
            start_time: Set(w.start),
            end_time: Set(w.end),
        });
    db(run_input_window::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await)?;
    Ok(())
}

/// The input windows of a run, in order.
pub async fn run_windows(
    conn: &impl ConnectionTrait,
    run_id: &str,
) -> CatalogResult<Vec<run_input_window::Model>> {
    db(run_input_window::Entity::find()
        .filter(run_input_window::Column::RunId.eq(run_id))
        .order_by_asc(run_input_window::Column::Position)
        .all(conn)
        .await)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, h, m, 0)
            .single()
            .expect("a UTC time")
    }

    fn w(a: (u32, u32), b: (u32, u32)) -> Window {
        Window::new("w", at(a.0, a.1), at(b.0, b.1)).expect("a window")
    }

    #[test]
    fn overlap_is_half_open_and_symmetric() {
        let used = w((14, 2), (14, 5));
        let cases = [
            (w((14, 0), (14, 3)), true),  // straddles the start
            (w((14, 4), (14, 9)), true),  // straddles the end
            (w((14, 3), (14, 4)), true),  // inside
            (w((13, 0), (15, 0)), true),  // around
            (w((14, 2), (14, 5)), true),  // the same
            (w((14, 5), (14, 7)), false), // starts where it ends
            (w((13, 0), (14, 2)), false), // ends where it starts
            (w((15, 0), (16, 0)), false), // after
        ];
        for (other, expected) in cases {
            assert_eq!(used.overlaps(&other), expected, "{used} and {other}");
            assert_eq!(other.overlaps(&used), expected, "{other} and {used}");
        }
    }

    #[test]
    fn empty_and_reversed_windows_are_refused_naming_the_end() {
        for (start, end) in [(at(14, 5), at(14, 5)), (at(14, 5), at(14, 2))] {
            let err = Window::new("input.inputWindows[1]", start, end).expect_err("refused");
            assert_eq!(err.field(), Some("input.inputWindows[1].end"));
            assert!(err.to_string().contains("must not be empty"), "{err}");
        }
    }

    #[test]
    fn a_window_meets_a_drive_that_includes_its_last_instant() {
        let drive = (at(14, 0), at(14, 30));
        assert!(w((14, 29), (14, 40)).meets_span(drive.0, drive.1));
        assert!(w((14, 30), (14, 40)).meets_span(drive.0, drive.1));
        assert!(!w((14, 31), (14, 40)).meets_span(drive.0, drive.1));
        assert!(!w((13, 0), (14, 0)).meets_span(drive.0, drive.1));
        assert!(w((13, 0), (14, 1)).meets_span(drive.0, drive.1));
    }
}
