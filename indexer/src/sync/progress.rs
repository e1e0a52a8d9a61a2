//! How far the running (or the last) sync pass got: shared by the pass, which counts, and by
//! whoever shows it (`syncStatus`, the CLI's progress bar, the web catalog).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// The stage a pass is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SyncPhase {
    /// No pass has run since the process started.
    Idle = 0,
    /// Listing the bucket and comparing it with the catalog.
    Listing = 1,
    /// Reading sidecars and footers of what changed.
    Reading = 2,
    /// Writing objects, records and descriptions to the catalog.
    Writing = 3,
    /// Bringing the search index up to date.
    Indexing = 4,
    /// The last pass finished (or failed: see [`SyncStatus::failure`]).
    Done = 5,
}

impl SyncPhase {
    fn from_u8(value: u8) -> SyncPhase {
        match value {
            1 => SyncPhase::Listing,
            2 => SyncPhase::Reading,
            3 => SyncPhase::Writing,
            4 => SyncPhase::Indexing,
            5 => SyncPhase::Done,
            _ => SyncPhase::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncPhase::Idle => "idle",
            SyncPhase::Listing => "listing",
            SyncPhase::Reading => "reading",
            SyncPhase::Writing => "writing",
            SyncPhase::Indexing => "indexing",
            SyncPhase::Done => "done",
        }
    }
}

/// The counters of the current pass (reset when a pass starts).
#[derive(Debug, Default)]
pub struct SyncProgress {
    phase: AtomicU8,
    seen: AtomicU64,
    changed: AtomicU64,
    read: AtomicU64,
    errors: AtomicU64,
    times: Mutex<Times>,
}

#[derive(Debug, Default)]
struct Times {
    started: Option<(Instant, DateTime<Utc>)>,
    finished: Option<(Instant, DateTime<Utc>)>,
    targeted: bool,
    failure: Option<String>,
}

/// A snapshot of [`SyncProgress`].
#[derive(Clone, Debug, PartialEq)]
pub struct SyncStatus {
    pub phase: SyncPhase,
    /// Whether the pass covers only some prefixes (events, office writes).
    pub targeted: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Objects listed so far, and those new or changed among them.
    pub objects_seen: u64,
    pub objects_changed: u64,
    /// Sidecars and footers read so far.
    pub files_read: u64,
    pub errors: u64,
    /// Objects listed per second, over the pass so far (or the whole finished pass).
    pub objects_per_second: f64,
    /// Why the last pass stopped, if it failed.
    pub failure: Option<String>,
}

impl SyncProgress {
    pub fn new() -> SyncProgress {
        SyncProgress::default()
    }

    pub(super) fn start(&self, targeted: bool) {
        for counter in [&self.seen, &self.changed, &self.read, &self.errors] {
            counter.store(0, Ordering::Relaxed);
        }
        *self.times() = Times {
            started: Some((Instant::now(), Utc::now())),
            finished: None,
            targeted,
            failure: None,
        };
        self.set_phase(SyncPhase::Listing);
    }

    pub(super) fn finish(&self, failure: Option<String>) {
        let mut times = self.times();
        times.finished = Some((Instant::now(), Utc::now()));
        times.failure = failure;
        self.set_phase(SyncPhase::Done);
    }

    pub(super) fn set_phase(&self, phase: SyncPhase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub(super) fn add_listed(&self, seen: u64, changed: u64) {
        self.seen.fetch_add(seen, Ordering::Relaxed);
        self.changed.fetch_add(changed, Ordering::Relaxed);
    }

    pub(super) fn add_read(&self, files: u64) {
        self.read.fetch_add(files, Ordering::Relaxed);
    }

    pub(super) fn add_errors(&self, errors: u64) {
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }

    pub(super) fn set_errors(&self, errors: u64) {
        self.errors.store(errors, Ordering::Relaxed);
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> SyncStatus {
        let times = self.times();
        let seen = self.seen.load(Ordering::Relaxed);
        let elapsed = match (times.started, times.finished) {
            (Some((start, _)), Some((end, _))) => end.duration_since(start),
            (Some((start, _)), None) => start.elapsed(),
            _ => Default::default(),
        };
        SyncStatus {
            phase: SyncPhase::from_u8(self.phase.load(Ordering::Acquire)),
            targeted: times.targeted,
            started_at: times.started.map(|(_, at)| at),
            finished_at: times.finished.map(|(_, at)| at),
            objects_seen: seen,
            objects_changed: self.changed.load(Ordering::Relaxed),
            files_read: self.read.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            objects_per_second: if elapsed.as_secs_f64() > 0.0 {
                seen as f64 / elapsed.as_secs_f64()
            } else {
                0.0
            },
            failure: times.failure.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_resets_the_counters_and_reports_its_phase() {
        let progress = SyncProgress::new();
        assert_eq!(progress.status().phase, SyncPhase::Idle);
        progress.start(false);
        progress.add_listed(1000, 10);
        progress.add_read(3);
        progress.add_errors(1);
        let status = progress.status();
        assert_eq!(status.phase, SyncPhase::Listing);
        assert_eq!(
            (
                status.objects_seen,
                status.objects_changed,
                status.files_read,
                status.errors
            ),
            (1000, 10, 3, 1)
        );
        progress.finish(Some("bucket gone".into()));
        let status = progress.status();
        assert_eq!(status.phase, SyncPhase::Done);
        assert_eq!(status.failure.as_deref(), Some("bucket gone"));
        assert!(status.finished_at.is_some());
        progress.start(true);
        let status = progress.status();
        assert_eq!((status.objects_seen, status.targeted), (0, true));
        assert!(status.failure.is_none() && status.finished_at.is_none());
    }
}
