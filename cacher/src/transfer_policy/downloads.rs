//! The download schedule: when materializations scheduled with a deadline (`readyBy`) may
//! fetch from upstream, and how fast.
//!
//! `[transfer] download_schedule` has the grammar of the upload schedule
//! ([`schedule`](super::schedule)), read as **windows**: a time some rule matches is open, at
//! that rule's rate (`off` = as fast as the link goes); a time no rule matches is closed. So
//! `Mon-Fri 20:00-06:00 50MiB; Sat,Sun off` prefetches on weeknights at 50 MiB/s and all
//! weekend at full speed, and never during working hours. The default, `* off`, is always
//! open. Reservations asked for now (no `readyBy`) are not held by it: an engineer who
//! reserves a dataset wants it now.
//!
//! - [`DownloadSchedule::plan`] gives a deadline's plan: when the fetch can start (the first
//!   open minute) and when it can finish at the windows' rates, or the earliest finish when
//!   the deadline cannot be met. A window without a rate is taken as fast enough.
//! - [`DownloadGate`] holds a scheduled materialization's fetches to the windows: it waits
//!   while they are closed and paces objects at the window's rate (object by object: each
//!   object is let through once the bytes before it have had their time at the rate, so the
//!   rate holds on average over objects, not within one).
//!
//! Times are the office's local wall-clock time (the process time zone, as for uploads); the
//! plan itself is pure over a given local time. Across a daylight-saving change the plan may
//! be an hour off for that night.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone as _, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::schedule::{format_rate, Schedule};
use super::PolicyError;

/// How far ahead a plan looks for windows and bytes: a deadline further away than this is
/// not a schedule but a wish.
const HORIZON: chrono::Duration = chrono::Duration::days(366);
/// Longest sleep of a closed gate between looks at the clock (a changed clock or a woken
/// laptop is noticed within it).
const RECHECK: Duration = Duration::from_secs(30);

/// Whether scheduled downloads may run at a time, and how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownloadWindow {
    /// No rule matches: scheduled downloads wait.
    Closed,
    /// Open at `rate` bytes per second (`None`: as fast as the link goes).
    Open { rate: Option<u64> },
}

/// A deadline's plan: when its bytes can start and finish under the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownloadPlan {
    /// The first open minute at or after the plan's "now" (office local time).
    pub start: NaiveDateTime,
    /// When the bytes are all fetched at the windows' rates (office local time).
    pub finish: NaiveDateTime,
}

/// Why a plan has no finish: the schedule never opens, or not within [`HORIZON`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unplannable {
    /// No rule matches at any time of the week.
    NeverOpen,
    /// The bytes take more than a year of windows.
    BeyondHorizon,
}

/// The office's download schedule (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadSchedule {
    schedule: Schedule,
}

impl Default for DownloadSchedule {
    /// Always open, unlimited (`* off`).
    fn default() -> Self {
        DownloadSchedule {
            schedule: Schedule::unlimited(),
        }
    }
}

impl fmt::Display for DownloadSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.schedule.fmt(f)
    }
}

impl DownloadSchedule {
    /// Parses the upload schedule's grammar; errors name the rule and the token.
    pub fn parse(text: &str) -> Result<DownloadSchedule, PolicyError> {
        Ok(DownloadSchedule {
            schedule: Schedule::parse(text)?,
        })
    }

    /// The window at office local time `local`.
    pub fn window_at(&self, local: NaiveDateTime) -> DownloadWindow {
        match self.schedule.rule_at(local) {
            Some(rule) => DownloadWindow::Open { rate: rule.rate() },
            None => DownloadWindow::Closed,
        }
    }

    /// When the window at `local` next changes (opens, closes or changes rate); `None` when
    /// it never does.
    pub fn next_change_after(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        self.schedule.next_rule_change_after(local)
    }

    /// The first open time at or after `local`, or `None` when the schedule never opens.
    pub fn next_opening(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut at = local;
        // Each step crosses one change; a week holds at most two per rule and day.
        for _ in 0..=(self.schedule.rules().len() * 14 + 1) {
            if self.window_at(at) != DownloadWindow::Closed {
                return Some(at);
            }
            at = self.next_change_after(at)?;
        }
        None
    }

    /// The plan for fetching `bytes` from office local time `now`: the first open minute and
    /// the time the bytes are all fetched, window after window at their rates.
    pub fn plan(&self, now: NaiveDateTime, bytes: u64) -> Result<DownloadPlan, Unplannable> {
        let start = self.next_opening(now).ok_or(Unplannable::NeverOpen)?;
        let horizon = now + HORIZON;
        let mut at = start;
        let mut left = bytes as f64;
        while at < horizon {
            let next = self.next_change_after(at);
            match self.window_at(at) {
                DownloadWindow::Closed => {}
                DownloadWindow::Open { rate: None } => {
                    return Ok(DownloadPlan { start, finish: at })
                }
                DownloadWindow::Open { rate: Some(rate) } => {
                    let needed = seconds(left / rate as f64);
                    let end = at + needed;
                    if next.is_none_or(|next| end <= next) {
                        return if end < horizon {
                            Ok(DownloadPlan { start, finish: end })
                        } else {
                            Err(Unplannable::BeyondHorizon)
                        };
                    }
                }
            }
            let Some(next) = next else {
                break;
            };
            if let DownloadWindow::Open { rate: Some(rate) } = self.window_at(at) {
                left -= (next - at).num_milliseconds() as f64 / 1000.0 * rate as f64;
            }
            at = next;
        }
        Err(Unplannable::BeyondHorizon)
    }

    /// The rate of the window at `local`, for messages: `20MiB/s`, `unlimited`, `closed`.
    pub fn describe_at(&self, local: NaiveDateTime) -> String {
        match self.window_at(local) {
            DownloadWindow::Closed => "closed".to_owned(),
            DownloadWindow::Open { rate: None } => "unlimited".to_owned(),
            DownloadWindow::Open { rate } => format!("{}/s", format_rate(rate)),
        }
    }
}

fn seconds(seconds: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((seconds * 1000.0).ceil().min(i64::MAX as f64 / 2.0) as i64)
}

/// The office's local time now.
pub fn local_now() -> NaiveDateTime {
    Local::now().naive_local()
}

/// An office local time as UTC; in a daylight-saving gap, the first instant after it.
pub fn local_to_utc(local: NaiveDateTime) -> DateTime<Utc> {
    Local
        .from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            Local
                .from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
        })
        .map_or_else(|| local.and_utc(), |at| at.with_timezone(&Utc))
}

/// Holds the fetches of scheduled materializations to the download windows (see the
/// [module docs](self)); one per office, shared by every scheduled reservation so that
/// together they keep to the window's rate.
#[derive(Debug)]
pub struct DownloadGate {
    schedule: DownloadSchedule,
    /// When the bytes let through so far have had their time at the rate.
    paced_until: Mutex<Option<Instant>>,
}

impl DownloadGate {
    pub fn new(schedule: DownloadSchedule) -> Arc<DownloadGate> {
        Arc::new(DownloadGate {
            schedule,
            paced_until: Mutex::new(None),
        })
    }

    pub fn schedule(&self) -> &DownloadSchedule {
        &self.schedule
    }

    /// Waits until a window is open. `false` when `cancel` fired first.
    pub async fn wait_open(&self, cancel: &CancellationToken) -> bool {
        loop {
            let now = local_now();
            if self.schedule.window_at(now) != DownloadWindow::Closed {
                return true;
            }
            let wait = self
                .schedule
                .next_opening(now)
                .and_then(|at| (at - now).to_std().ok())
                .unwrap_or(RECHECK)
                .min(RECHECK);
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits until `bytes` may be fetched: a window is open and the bytes let through before
    /// have had their time at its rate. `false` when `cancel` fired first.
    pub async fn admit(&self, bytes: u64, cancel: &CancellationToken) -> bool {
        loop {
            if !self.wait_open(cancel).await {
                return false;
            }
            let DownloadWindow::Open { rate } = self.schedule.window_at(local_now()) else {
                continue;
            };
            let Some(rate) = rate else {
                return true;
            };
            let turn = {
                let mut paced = self
                    .paced_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                let turn = paced.filter(|at| *at > now).unwrap_or(now);
                *paced = Some(turn + Duration::from_secs_f64(bytes as f64 / rate as f64));
                turn
            };
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep_until(turn) => {}
            }
            // The window may have closed while this object waited for its turn.
            if self.schedule.window_at(local_now()) != DownloadWindow::Closed {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn at(day: u32, hour: u32, minute: u32) -> NaiveDateTime {
        // 2026-12-07 is a Monday.
        NaiveDate::from_ymd_opt(2026, 12, 7 + day)
            .expect("test value")
            .and_hms_opt(hour, minute, 0)
            .expect("test value")
    }

    #[test]
    fn unmatched_times_are_closed() {
        let s =
            DownloadSchedule::parse("Mon-Fri 20:00-06:00 1MiB; Sat,Sun off").expect("test value");
        assert_eq!(s.window_at(at(0, 12, 0)), DownloadWindow::Closed);
        assert_eq!(
            s.window_at(at(0, 21, 0)),
            DownloadWindow::Open {
                rate: Some(1 << 20)
            }
        );
        // The part after midnight belongs to the day the window starts on (Friday night).
        assert_eq!(
            s.window_at(at(5, 3, 0)),
            DownloadWindow::Open {
                rate: Some(1 << 20)
            }
        );
        assert_eq!(
            s.window_at(at(5, 12, 0)),
            DownloadWindow::Open { rate: None }
        );
        assert_eq!(s.next_opening(at(0, 12, 0)), Some(at(0, 20, 0)));
        assert_eq!(s.next_opening(at(0, 21, 0)), Some(at(0, 21, 0)));
    }

    #[test]
    fn default_is_always_open_and_instant() {
        let s = DownloadSchedule::default();
        let plan = s.plan(at(2, 10, 30), 1 << 40).expect("test value");
        assert_eq!(plan.start, at(2, 10, 30));
        assert_eq!(plan.finish, at(2, 10, 30));
    }

    #[test]
    fn plan_starts_at_the_window_and_spans_windows() {
        // 1 MiB/s from 20:00 to 22:00 on weekdays: 7200 MiB a night.
        let s = DownloadSchedule::parse("Mon-Fri 20:00-22:00 1MiB").expect("test value");
        let plan = s.plan(at(0, 12, 0), 3600 << 20).expect("test value");
        assert_eq!(plan.start, at(0, 20, 0));
        assert_eq!(plan.finish, at(0, 21, 0));
        // 10,800 MiB: the first night's 7200, then 3600 the next night.
        let plan = s.plan(at(0, 12, 0), 10_800 << 20).expect("test value");
        assert_eq!(plan.finish, at(1, 21, 0));
        // Friday's window, then Monday's.
        let plan = s.plan(at(4, 21, 0), 7200 << 20).expect("test value");
        assert_eq!(plan.start, at(4, 21, 0));
        assert_eq!(plan.finish, at(7, 21, 0));
    }

    #[test]
    fn plan_of_nothing_finishes_at_the_start() {
        let s = DownloadSchedule::parse("* 02:00-03:00 1KiB").expect("test value");
        let plan = s.plan(at(0, 1, 0), 0).expect("test value");
        assert_eq!((plan.start, plan.finish), (at(0, 2, 0), at(0, 2, 0)));
    }

    #[test]
    fn a_window_with_a_later_unlimited_rule_finishes_there() {
        let s =
            DownloadSchedule::parse("* 01:00-02:00 1KiB; * 03:00-04:00 off").expect("test value");
        let plan = s.plan(at(0, 0, 0), 100 << 20).expect("test value");
        assert_eq!(plan.start, at(0, 1, 0));
        assert_eq!(plan.finish, at(0, 3, 0));
    }

    #[test]
    fn unplannable_schedules_say_why() {
        let s = DownloadSchedule::parse("* 01:00-01:01 1B").expect("test value");
        assert_eq!(
            s.plan(at(0, 0, 0), 1 << 40),
            Err(Unplannable::BeyondHorizon)
        );
    }

    #[tokio::test]
    async fn an_open_unlimited_gate_admits_at_once() {
        let gate = DownloadGate::new(DownloadSchedule::default());
        let cancel = CancellationToken::new();
        assert!(gate.admit(1 << 30, &cancel).await);
        assert!(gate.admit(1 << 30, &cancel).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_limited_gate_paces_objects() {
        let gate = DownloadGate::new(DownloadSchedule::parse("* 1MiB").expect("test value"));
        let cancel = CancellationToken::new();
        let started = Instant::now();
        assert!(gate.admit(2 << 20, &cancel).await);
        assert!(gate.admit(1 << 20, &cancel).await);
        assert!(gate.admit(1, &cancel).await);
        // The third object waits for the first two's 3 MiB at 1 MiB/s.
        assert_eq!(Instant::now().duration_since(started).as_secs(), 3);
    }

    #[tokio::test]
    async fn a_closed_gate_is_cancellable() {
        // A one-minute window eleven hours from now: closed now.
        let opens = local_now() + chrono::Duration::hours(11);
        let closes = opens + chrono::Duration::minutes(1);
        let text = format!(
            "* {}-{} 1MiB",
            opens.format("%H:%M"),
            closes.format("%H:%M")
        );
        let gate = DownloadGate::new(DownloadSchedule::parse(&text).expect("test value"));
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!gate.admit(1, &cancel).await);
    }
}
