//! The one runner for background workers (catalog syncs, reservation expiry, ...).
//!
//! A [`Worker`] does one step at a time: wait for its next piece of work, do it, return. The
//! runner ([`Workers`]) owns the single shutdown token every worker watches, calls each
//! worker's step in a loop on its own task, and records what it sees: the worker's
//! [`WorkerState`], its last error, how many runs it made and how many failed. A failed step
//! is retried after a backoff rather than ending the worker. [`Workers::shutdown`] cancels
//! the token and waits at most the grace period for every worker to return, then abandons
//! the rest. The records are what `/metrics` and the GraphQL `workers` query show.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a worker is doing, as the runner last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Waiting for work.
    Idle,
    /// Doing a piece of work.
    Busy,
    /// Has work but is held back (a limit, a schedule).
    Throttled,
    /// The last step failed with this error; the worker is waiting to retry.
    Failed(String),
    /// Will not run again: the runner was shut down.
    Stopped,
}

impl WorkerState {
    /// The names [`name`](Self::name) returns, in a fixed order (one metric series each).
    pub const NAMES: [&'static str; 5] = ["idle", "busy", "throttled", "failed", "stopped"];

    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Throttled => "throttled",
            WorkerState::Failed(_) => "failed",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// One worker's record, as [`Workers::reports`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    pub name: String,
    pub state: WorkerState,
    /// The most recent failure, kept after the worker recovers.
    pub last_error: Option<String>,
    /// Steps that did work (went busy) or failed.
    pub runs: u64,
    pub failures: u64,
}

/// A background job the runner drives.
#[async_trait]
pub trait Worker: Send + 'static {
    fn name(&self) -> &str;

    /// Waits for the next piece of work and does it. While it waits the worker shows as idle
    /// (or still failed, after a failure); call [`Step::busy`] when the work starts. Return
    /// soon after [`Step::stop`] is cancelled; the runner then calls no further step. An
    /// error marks the worker failed and the runner retries after a backoff.
    async fn step(&mut self, step: &Step) -> anyhow::Result<()>;
}

/// What a step may tell the runner, and the token it must watch.
#[derive(Debug)]
pub struct Step {
    stop: CancellationToken,
    slot: Arc<Slot>,
}

impl Step {
    /// Cancelled when the runner shuts down.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// The work has started: counts a run and shows the worker busy.
    pub fn busy(&self) {
        let mut record = self.slot.lock();
        if !record.went_busy {
            record.went_busy = true;
            record.runs += 1;
        }
        record.state = WorkerState::Busy;
    }

    /// The work is held back by a limit; [`busy`](Self::busy) again when it proceeds.
    pub fn throttled(&self) {
        self.slot.lock().state = WorkerState::Throttled;
    }
}

#[derive(Debug)]
struct Record {
    state: WorkerState,
    last_error: Option<String>,
    runs: u64,
    failures: u64,
    /// Whether the current step has counted its run yet.
    went_busy: bool,
}

#[derive(Debug)]
struct Slot {
    name: String,
    record: Mutex<Record>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Record> {
        // Only counters and a state behind it: still meaningful after a panic elsewhere.
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn report(&self) -> WorkerReport {
        let record = self.lock();
        WorkerReport {
            name: self.name.clone(),
            state: record.state.clone(),
            last_error: record.last_error.clone(),
            runs: record.runs,
            failures: record.failures,
        }
    }
}

/// How the runner retries a failed step: after `first`, doubling up to `max` while the
/// failures go on.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // A failing sync or expiry pass usually means the database or S3 is away: retrying
        // at once would only flood the log.
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// The runner: one shutdown token, one task per worker, one record per worker.
#[derive(Debug)]
pub struct Workers {
    stop: CancellationToken,
    backoff: Backoff,
    slots: Mutex<Vec<Arc<Slot>>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers::new(Backoff::default())
    }
}

impl Workers {
    pub fn new(backoff: Backoff) -> Workers {
        Workers {
            stop: CancellationToken::new(),
            backoff,
            slots: Mutex::default(),
            tasks: Mutex::default(),
        }
    }

    /// Starts driving `worker` on the current Tokio runtime. After shutdown the worker is
    /// recorded as stopped and never runs.
    pub fn spawn(&self, worker: impl Worker) {
        let slot = Arc::new(Slot {
            name: worker.name().to_owned(),
            record: Mutex::new(Record {
                state: WorkerState::Idle,
                last_error: None,
                runs: 0,
                failures: 0,
                went_busy: false,
            }),
        });
        lock(&self.slots).push(slot.clone());
        let step = Step {
            stop: self.stop.clone(),
            slot,
        };
        lock(&self.tasks).spawn(drive(Box::new(worker), step, self.backoff));
    }

    /// Every worker's record, in the order they were spawned.
    pub fn reports(&self) -> Vec<WorkerReport> {
        lock(&self.slots).iter().map(|slot| slot.report()).collect()
    }

    /// Asks every worker to stop without waiting (see [`shutdown`](Self::shutdown)).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops every worker: cancels the token, waits at most `grace` for them all to return,
    /// then abandons those still running. Returns whether all returned in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_ok();
        if !drained {
            tracing::warn!(
                ?grace,
                "background workers still busy after the grace period; abandoning them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        for slot in lock(&self.slots).iter() {
            slot.lock().state = WorkerState::Stopped;
        }
        drained
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One worker's loop: step, record, back off after a failure, until the token is cancelled.
async fn drive(mut worker: Box<dyn Worker>, step: Step, backoff: Backoff) {
    let name = worker.name().to_owned();
    let mut delay = backoff.first;
    while !step.stop.is_cancelled() {
        step.slot.lock().went_busy = false;
        // A panicking step is a failed step, not a dead worker.
        let result = std::panic::AssertUnwindSafe(worker.step(&step))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(anyhow::anyhow!("panicked: {}", panic_text(&panic))));
        match result {
            Ok(()) => {
                delay = backoff.first;
                let mut record = step.slot.lock();
                // A step cut short by shutdown before any work leaves a failure on show.
                if record.went_busy || !matches!(record.state, WorkerState::Failed(_)) {
                    record.state = WorkerState::Idle;
                }
            }
            Err(err) => {
                let message = format!("{err:#}");
                tracing::warn!(worker = %name, error = %message, retry_in = ?delay, "background worker failed");
                {
                    let mut record = step.slot.lock();
                    if !record.went_busy {
                        record.runs += 1;
                    }
                    record.failures += 1;
                    record.last_error = Some(message.clone());
                    record.state = WorkerState::Failed(message);
                }
                tokio::select! {
                    () = step.stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
    step.slot.lock().state = WorkerState::Stopped;
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic payload")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    const QUICK: Backoff = Backoff {
        first: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };

    /// A worker scripted by the test: each message is one piece of work and how it ends.
    enum Job {
        Succeed,
        Fail(&'static str),
        Throttle,
        Panic,
    }

    struct Scripted {
        jobs: mpsc::UnboundedReceiver<Job>,
        /// Held until the test releases it, so the test can see the worker mid-work.
        gate: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait]
    impl Worker for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
            let job = tokio::select! {
                () = step.stop().cancelled() => return Ok(()),
                job = self.jobs.recv() => match job {
                    Some(job) => job,
                    None => { step.stop().cancelled().await; return Ok(()) }
                },
            };
            if let Job::Throttle = job {
                step.throttled();
            } else {
                step.busy();
            }
            // Each permit the test adds lets exactly one piece of work finish.
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            match job {
                Job::Succeed | Job::Throttle => Ok(()),
                Job::Fail(message) => Err(anyhow::anyhow!(message)),
                Job::Panic => panic!("scripted panic"),
            }
        }
    }

    fn scripted(workers: &Workers) -> (mpsc::UnboundedSender<Job>, Arc<tokio::sync::Semaphore>) {
        let (send, jobs) = mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        workers.spawn(Scripted {
            jobs,
            gate: gate.clone(),
        });
        (send, gate)
    }

    async fn wait_for(workers: &Workers, what: impl Fn(&WorkerReport) -> bool) -> WorkerReport {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let report = workers.reports().remove(0);
            if what(&report) {
                return report;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker never got there; last report {report:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn states_follow_the_work() {
        let workers = Workers::new(QUICK);
        let (jobs, gate) = scripted(&workers);
        let report = workers.reports().remove(0);
        assert_eq!(report.name, "scripted");
        assert_eq!(report.state, WorkerState::Idle);
        assert_eq!(report.runs, 0);

        jobs.send(Job::Succeed).expect("the worker is running");
        let report = wait_for(&workers, |r| r.state == WorkerState::Busy).await;
        assert_eq!(report.runs, 1);
        gate.add_permits(1);
        let report = wait_for(&workers, |r| r.state == WorkerState::Idle).await;
        assert_eq!((report.runs, report.failures), (1, 0));

        jobs.send(Job::Throttle).expect("the worker is running");
        wait_for(&workers, |r| r.state == WorkerState::Throttled).await;
        gate.add_permits(1);
        wait_for(&workers, |r| r.state == WorkerState::Idle).await;

        assert!(workers.shutdown(Duration::from_secs(1)).await);
        let report = workers.reports().remove(0);
        assert_eq!(report.state, WorkerState::Stopped);
        assert_eq!(report.last_error, None);
    }

    #[tokio::test]
    async fn a_failure_is_reported_then_retried() {
        let workers = Workers::new(QUICK);
        let (jobs, gate) = scripted(&workers);
        gate.add_permits(100);
        jobs.send(Job::Fail("bucket unreachable"))
            .expect("the worker is running");
        let report = wait_for(&workers, |r| r.failures == 1).await;
        assert_eq!(
            report.state,
            WorkerState::Failed("bucket unreachable".to_owned())
        );
        assert_eq!(report.last_error.as_deref(), Some("bucket unreachable"));
        assert_eq!(report.runs, 1);
        // Still failed while it waits for the next piece of work...
        tokio::time::sleep(QUICK.max * 3).await;
        assert!(matches!(workers.reports()[0].state, WorkerState::Failed(_)));
        // ...and stepped again after the backoff: the retry succeeds and clears the state,
        // not the memory of the error.
        jobs.send(Job::Succeed).expect("the worker is running");
        let report = wait_for(&workers, |r| r.state == WorkerState::Idle).await;
        assert_eq!((report.runs, report.failures), (2, 1));
        assert_eq!(report.last_error.as_deref(), Some("bucket unreachable"));

        jobs.send(Job::Panic).expect("the worker is running");
        let report = wait_for(&workers, |r| r.failures == 2).await;
        assert_eq!(
            report.state,
            WorkerState::Failed("panicked: scripted panic".to_owned())
        );
        jobs.send(Job::Succeed).expect("the worker is running");
        let report = wait_for(&workers, |r| r.runs == 4 && r.state == WorkerState::Idle).await;
        assert_eq!(report.failures, 2);
        workers.shutdown(Duration::from_secs(1)).await;
    }

    /// Fails its first `failures` steps, then succeeds once and waits for the stop.
    struct Flaky {
        failures: u32,
    }

    #[async_trait]
    impl Worker for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }

        async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
            if self.failures == 0 {
                step.busy();
                self.failures = u32::MAX;
                return Ok(());
            }
            if self.failures == u32::MAX {
                step.stop().cancelled().await;
                return Ok(());
            }
            step.busy();
            self.failures -= 1;
            anyhow::bail!("attempt failed, {} to go", self.failures)
        }
    }

    #[tokio::test]
    async fn the_runner_retries_a_failed_step_after_a_growing_backoff() {
        let workers = Workers::new(QUICK);
        let started = tokio::time::Instant::now();
        workers.spawn(Flaky { failures: 2 });
        let report = wait_for(&workers, |r| r.runs == 3 && r.state == WorkerState::Idle).await;
        // Two waits: `first`, then twice that (capped at `max`).
        assert!(started.elapsed() >= QUICK.first + QUICK.max);
        assert_eq!(report.failures, 2);
        assert_eq!(
            report.last_error.as_deref(),
            Some("attempt failed, 0 to go")
        );
        workers.shutdown(Duration::from_secs(1)).await;
    }

    /// Returns only when stopped, after `linger`.
    struct Lingering {
        name: &'static str,
        linger: Duration,
    }

    #[async_trait]
    impl Worker for Lingering {
        fn name(&self) -> &str {
            self.name
        }

        async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
            step.busy();
            step.stop().cancelled().await;
            tokio::time::sleep(self.linger).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn shutdown_stops_every_worker_within_the_grace() {
        let workers = Workers::new(QUICK);
        for name in ["a", "b", "c"] {
            workers.spawn(Lingering {
                name,
                linger: Duration::from_millis(20),
            });
        }
        let started = tokio::time::Instant::now();
        while workers
            .reports()
            .iter()
            .any(|r| r.state != WorkerState::Busy)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(workers.shutdown(Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        let reports = workers.reports();
        assert_eq!(reports.len(), 3);
        assert!(reports.iter().all(|r| r.state == WorkerState::Stopped));
        assert!(reports.iter().all(|r| r.runs == 1 && r.failures == 0));
    }

    #[tokio::test]
    async fn a_worker_that_ignores_the_token_is_abandoned_after_the_grace() {
        let workers = Workers::new(QUICK);
        workers.spawn(Lingering {
            name: "slow",
            linger: Duration::from_secs(3600),
        });
        workers.spawn(Lingering {
            name: "quick",
            linger: Duration::ZERO,
        });
        while workers
            .reports()
            .iter()
            .any(|r| r.state != WorkerState::Busy)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let started = tokio::time::Instant::now();
        assert!(!workers.shutdown(Duration::from_millis(100)).await);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(workers
            .reports()
            .iter()
            .all(|r| r.state == WorkerState::Stopped));
    }

    #[tokio::test]
    async fn a_worker_spawned_after_shutdown_never_runs() {
        let workers = Workers::new(QUICK);
        workers.shutdown(Duration::from_millis(10)).await;
        workers.spawn(Lingering {
            name: "late",
            linger: Duration::ZERO,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = workers.reports().remove(0);
        assert_eq!((report.runs, &report.state), (0, &WorkerState::Stopped));
    }
}
