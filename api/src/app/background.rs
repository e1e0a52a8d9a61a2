//! The office's background work, wired over [`AppState`] and run by the one runner
//! ([`crate::workers`]): the write-back uploader, the periodic catalog sync, the sync office
//! uploads ask for, the catalog bucket's S3 events, the reservations' resume and expiry,
//! and the pruning of old raw ledger rows. (The expiry of unfinished multipart uploads stays
//! a task of the write-back itself.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use milepost_cacher::reservations::Reservations;
use milepost_cacher::transfer_policy::UploadLimiter;
use milepost_cacher::writeback::{Uploader, UploaderStep};
use milepost_indexer::sync::{SyncReport, SyncScope};
use tokio::time::{Interval, MissedTickBehavior};

use super::AppState;
use crate::workers::{Step, Worker};

/// How long writes must pause before the sync they asked for runs (a drive's files arrive
/// together; one pass catalogs them all).
pub const SYNC_DEBOUNCE: Duration = Duration::from_millis(300);

/// Starts every background worker on `state.workers`.
pub fn start_workers(state: &Arc<AppState>) {
    state.write_back.start_expiry();
    state.workers.spawn(Uploads {
        uploader: state.write_back.uploader(),
        limiter: state.upload_limiter.clone(),
        uploading: false,
    });
    if let Some(every) = state.config.catalog.sync_interval.0 {
        state.workers.spawn(PeriodicSync {
            state: state.clone(),
            ticks: ticker(every),
        });
    }
    state.workers.spawn(SyncWhenAsked {
        state: state.clone(),
    });
    if let Some(queue) = &state.events {
        state.workers.spawn(CatalogEvents {
            state: state.clone(),
            queue: queue.clone(),
        });
    }
    state.workers.spawn(SearchFeed {
        state: state.clone(),
        ticks: ticker(milepost_indexer::feed::FOLLOW_EVERY),
        pruned: None,
    });
    if let Some(keep) = state.config.cache.ledger_raw_retention.0 {
        state.workers.spawn(LedgerPrune {
            state: state.clone(),
            keep,
            ticks: ticker(LEDGER_PRUNE_EVERY),
        });
    }
    state.workers.spawn(ReservationUpkeep {
        reservations: state.reservations.clone(),
        ticks: ticker(state.config.cache.expiry_check.0),
        resumed: false,
    });
}

/// How often raw ledger rows past `cache.ledger_raw_retention` are deleted.
const LEDGER_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Ticks every `every`, the first at once; a late tick delays the next rather than bunching.
fn ticker(every: Duration) -> Interval {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// One sync pass, abandoned at shutdown. Problems with single objects are logged and do not
/// fail the step: the pass itself worked, and the next one looks at them again.
async fn sync_pass(state: &AppState, step: &Step, why: &str) -> anyhow::Result<()> {
    step.busy();
    let report: SyncReport = tokio::select! {
        () = step.stop().cancelled() => return Ok(()),
        result = state.sync_catalog() => result?,
    };
    if !report.errors.is_empty() {
        tracing::warn!(errors = ?report.errors, "catalog sync {why} reported problems");
    }
    Ok(())
}

/// The write-back uploader. One step is one stretch of uploading: busy (throttled while a
/// bandwidth limit is in force) from the first transfer started until none runs. Stopping
/// the runner aborts the uploads in flight; the journal runs them again at the next start.
struct Uploads {
    uploader: Uploader,
    limiter: Arc<UploadLimiter>,
    uploading: bool,
}

#[async_trait]
impl Worker for Uploads {
    fn name(&self) -> &str {
        "uploader"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        loop {
            match self.uploader.step(step.stop()).await {
                UploaderStep::Uploading(_) => {
                    self.uploading = true;
                    step.busy();
                    if self.limiter.limit().is_some() {
                        step.throttled();
                    }
                }
                UploaderStep::Idle if self.uploading => {
                    self.uploading = false;
                    return Ok(());
                }
                UploaderStep::Idle => {}
                UploaderStep::Stopped => {
                    // The write-back was shut down on its own (tests do): nothing to do
                    // until the runner stops too.
                    step.stop().cancelled().await;
                    return Ok(());
                }
            }
        }
    }
}

/// Syncs the catalog every `catalog.sync_interval`; a failed pass is retried by the runner.
struct PeriodicSync {
    state: Arc<AppState>,
    ticks: Interval,
}

#[async_trait]
impl Worker for PeriodicSync {
    fn name(&self) -> &str {
        "sync"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        tokio::select! {
            () = step.stop().cancelled() => return Ok(()),
            _ = self.ticks.tick() => {}
        }
        sync_pass(&self.state, step, "").await
    }
}

/// Syncs the folders office writes touched under the catalog's prefixes
/// (`AppState::sync_keys_soon`), once writes have paused for [`SYNC_DEBOUNCE`]: a targeted
/// pass that lists those folders only, never the whole bucket.
struct SyncWhenAsked {
    state: Arc<AppState>,
}

#[async_trait]
impl Worker for SyncWhenAsked {
    fn name(&self) -> &str {
        "sync_when_asked"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        let stop = step.stop();
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = self.state.sync_soon.notified() => {}
        }
        // Let a burst of writes settle.
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = self.state.sync_soon.notified() => continue,
                () = tokio::time::sleep(SYNC_DEBOUNCE) => break,
            }
        }
        let folders = std::mem::take(
            &mut *self
                .state
                .sync_pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if folders.is_empty() {
            return Ok(());
        }
        step.busy();
        let scope = SyncScope::Prefixes(folders.iter().cloned().collect());
        let report = tokio::select! {
            () = step.stop().cancelled() => return Ok(()),
            result = self.state.sync(scope) => result,
        };
        match report {
            Ok(report) => {
                if !report.errors.is_empty() {
                    tracing::warn!(errors = ?report.errors, "catalog sync after office uploads reported problems");
                }
                Ok(())
            }
            Err(err) => {
                // Asked again for the next step (after the runner's backoff).
                self.state
                    .sync_pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(folders);
                self.state.sync_soon.notify_one();
                Err(err.into())
            }
        }
    }
}

/// Keeps this node's search index in step with catalog changes made by other nodes (and by
/// `milepost` commands on this host): applies the change feed every
/// [`FOLLOW_EVERY`](milepost_indexer::feed::FOLLOW_EVERY). Changes made through this process
/// are applied by the call that makes them.
struct SearchFeed {
    state: Arc<AppState>,
    ticks: Interval,
    /// When the feed was last pruned of changes older than `feed::KEEP_CHANGES`.
    pruned: Option<std::time::Instant>,
}

#[async_trait]
impl Worker for SearchFeed {
    fn name(&self) -> &str {
        "search_feed"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        tokio::select! {
            () = step.stop().cancelled() => return Ok(()),
            _ = self.ticks.tick() => {}
        }
        let applied = self.state.catalog.catch_up().await?;
        // Hourly (any node may: deleting old rows twice is harmless).
        if self
            .pruned
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(3600))
        {
            let pruned = milepost_indexer::feed::prune(
                &self.state.catalog.db,
                milepost_indexer::feed::KEEP_CHANGES,
            )
            .await?;
            if pruned > 0 {
                tracing::info!(pruned, "old changes pruned from the catalog's change feed");
            }
            self.pruned = Some(std::time::Instant::now());
        }
        if applied > 0 {
            tracing::debug!(
                applied,
                position = self.state.catalog.feed_position(),
                "search index followed the change feed"
            );
        }
        Ok(())
    }
}

/// The reservations' upkeep, as `Reservations::start` does it in cacher, one step per
/// `cache.expiry_check`: expire what is due, and take over what a previous process left
/// (until that succeeds once). At shutdown it stops the materializations in progress.
struct ReservationUpkeep {
    reservations: Arc<Reservations>,
    ticks: Interval,
    resumed: bool,
}

#[async_trait]
impl Worker for ReservationUpkeep {
    fn name(&self) -> &str {
        "reservations"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        tokio::select! {
            biased;
            () = step.stop().cancelled() => {
                self.reservations.shutdown().await;
                return Ok(());
            }
            _ = self.ticks.tick() => {}
        }
        step.busy();
        self.reservations
            .upkeep(&mut self.resumed)
            .await
            .map_err(|err| anyhow::anyhow!("reservation upkeep failed: {err}"))
    }
}

/// Deletes raw egress ledger rows older than `cache.ledger_raw_retention`, hourly (any node of
/// a cluster may: deleting old rows twice is harmless). The aggregates the reports read keep
/// what the rows counted.
struct LedgerPrune {
    state: Arc<AppState>,
    keep: Duration,
    ticks: Interval,
}

#[async_trait]
impl Worker for LedgerPrune {
    fn name(&self) -> &str {
        "ledger_prune"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        tokio::select! {
            () = step.stop().cancelled() => return Ok(()),
            _ = self.ticks.tick() => {}
        }
        step.busy();
        let keep = chrono::Duration::from_std(self.keep)?;
        let before = chrono::Utc::now() - keep;
        let pruned = tokio::select! {
            () = step.stop().cancelled() => return Ok(()),
            pruned = milepost_schema::egress::prune_raw(&self.state.db, before) => pruned?,
        };
        if pruned > 0 {
            tracing::info!(pruned, %before, "raw egress ledger rows past their retention deleted");
        }
        Ok(())
    }
}

/// Messages gathered into one targeted sync at most: a burst of uploads becomes a few passes,
/// each listing only the folders its keys are in.
const EVENTS_PER_PASS: usize = 100;

/// Applies the catalog bucket's S3 events (`catalog.events`): each batch of messages becomes
/// one targeted sync of the folders its keys are in, and the messages are deleted from the
/// queue only once that sync has succeeded (a failure leaves them to come back after the
/// queue's visibility timeout). In a cluster every node polls the queue; the queue hands each
/// message to one of them, and the others follow through the catalog's change feed.
struct CatalogEvents {
    state: Arc<AppState>,
    queue: Arc<milepost_events::EventQueue>,
}

#[async_trait]
impl Worker for CatalogEvents {
    fn name(&self) -> &str {
        "catalog_events"
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        let mut deliveries = tokio::select! {
            () = step.stop().cancelled() => return Ok(()),
            received = self.queue.receive(None) => received?,
        };
        if deliveries.is_empty() {
            return Ok(());
        }
        step.busy();
        // Whatever else is waiting already joins this pass.
        while deliveries.len() < EVENTS_PER_PASS {
            let more = tokio::select! {
                () = step.stop().cancelled() => return Ok(()),
                received = self.queue.receive(Some(Duration::ZERO)) => received?,
            };
            if more.is_empty() {
                break;
            }
            deliveries.extend(more);
        }
        let catalog = &self.state.config.catalog;
        let mut folders = std::collections::BTreeSet::new();
        for delivery in &deliveries {
            if let Some(problem) = &delivery.problem {
                tracing::warn!(message = %delivery.message_id, problem, "catalog event not understood, dropped (the periodic listing repairs what it described)");
            }
            for event in &delivery.events {
                if event.bucket == catalog.bucket
                    && (event.key.starts_with(&catalog.drives_prefix)
                        || event.key.starts_with(&catalog.runs_prefix))
                {
                    tracing::debug!(key = %event.key, kind = ?event.kind, "catalog event");
                    folders.insert(super::folder_of(&event.key));
                }
            }
        }
        if !folders.is_empty() {
            let scope = SyncScope::Prefixes(folders.into_iter().collect());
            let report = tokio::select! {
                () = step.stop().cancelled() => return Ok(()),
                report = self.state.sync(scope) => report?,
            };
            if !report.errors.is_empty() {
                tracing::warn!(errors = ?report.errors, "catalog sync of S3 events reported problems");
            }
        }
        self.queue.acknowledge(&deliveries).await?;
        Ok(())
    }
}
