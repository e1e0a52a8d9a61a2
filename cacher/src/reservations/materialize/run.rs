//! One materialization run, step by step: read what to materialize ([`Plan`]), move the
//! reservation to `materializing`, fetch its members a few at a time while writing progress
//! ([`Inner::gather`]), then either record the failures or build the view and make the
//! reservation `ready`.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt as _;
use milepost_schema::entity::{dataset, reservation};
use milepost_schema::enums::ReservationState;
use sea_orm::sea_query::Expr;
use sea_orm::EntityTrait as _;
use tokio_util::sync::CancellationToken;

use super::failures::{failure_message, is_interrupted, is_object_specific};
use super::{Ended, Member};
use crate::cache::{CacheError, CacheErrorKind, FetchContext, ObjectKey, OfficeCache};
use crate::datasets::{DatasetError, TrimSpec};
use crate::reservations::schedule::estimate;
use crate::reservations::{Inner, ReservationError};
use crate::transfer_policy::DownloadGate;
use crate::trimmed;

/// A member materialized.
#[derive(Debug)]
struct Done {
    /// What goes into the view.
    view: ObjectKey,
    /// Bytes it took from upstream.
    upstream: u64,
    /// What the reservation should say about it.
    note: Option<String>,
}

/// Progress counters of one materialization run, shared by its fetches.
#[derive(Debug, Default)]
struct Progress {
    objects_done: AtomicU64,
    /// Sizes of the objects done.
    bytes_done: AtomicU64,
    /// Bytes landed of the downloads in progress.
    in_flight: AtomicU64,
    /// Bytes this run caused to come from upstream.
    upstream: AtomicU64,
}

impl Progress {
    /// (objects done, bytes done, bytes from upstream), bytes done capped at `total_bytes`.
    fn snapshot(&self, total_bytes: u64) -> (u64, u64, u64) {
        let done = self.bytes_done.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed);
        (
            self.objects_done.load(Ordering::Relaxed),
            done.min(total_bytes),
            self.upstream.load(Ordering::Relaxed),
        )
    }

    /// Counts a member done: `bytes` of it in the view, `upstream` of them downloaded.
    fn member_done(&self, bytes: u64, upstream: u64) {
        self.objects_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.upstream.fetch_add(upstream, Ordering::Relaxed);
    }
}

/// What a run materializes, read from the database when it starts.
struct Plan {
    /// The reservation's row as the run found it.
    row: reservation::Model,
    /// Its dataset.
    dataset: dataset::Model,
    members: Vec<Member>,
    /// What admission counted for the members (their sizes make the progress total).
    objects: Arc<[ObjectKey]>,
    total_bytes: u64,
    /// Bytes from upstream recorded by earlier runs (before a restart).
    base_upstream: u64,
}

/// What the fetches of a run gathered.
#[derive(Debug, Default)]
struct Gathered {
    /// What goes into the view, one per member done.
    views: Vec<ObjectKey>,
    notes: Vec<String>,
    failures: Vec<(ObjectKey, CacheError)>,
    /// Members not attempted after a failure that stops new fetches.
    skipped: usize,
}

/// The outcome of one member's fetch: `None` when it was skipped after a failure.
type Fetched = (Member, Option<Result<Done, CacheError>>);

impl Inner {
    /// One materialization run; see the [module docs](crate::reservations).
    pub(super) async fn materialize(
        &self,
        id: &str,
        repair: bool,
        cancel: &CancellationToken,
    ) -> Result<Ended, ReservationError> {
        let Some(plan) = self.plan(id).await? else {
            return Ok(Ended::Stopped);
        };
        // A reservation with a deadline stays pending until a download window opens.
        if !repair && plan.row.ready_by.is_some() && !self.gate.wait_open(cancel).await {
            return Ok(Ended::Stopped);
        }
        if !repair && !self.start_materializing(id).await? {
            return Ok(Ended::Stopped);
        }
        let progress = Arc::new(Progress::default());
        let Some(mut gathered) = self.gather(id, &plan, repair, cancel, &progress).await else {
            return Ok(Ended::Stopped);
        };
        if cancel.is_cancelled() {
            return Ok(Ended::Stopped);
        }
        let snapshot = progress.snapshot(plan.total_bytes);
        if !gathered.failures.is_empty() {
            self.fail_objects(id, &plan, &gathered, snapshot, repair)
                .await;
            return Ok(Ended::Failed);
        }
        let Some(path) = self.build_view(id, &gathered.views, repair).await else {
            return Ok(Ended::Failed);
        };
        gathered.notes.sort();
        self.become_ready(id, &plan, gathered, path, snapshot.2, repair)
            .await
    }

    /// Reads the reservation, its dataset and members. `None` if the reservation is gone.
    async fn plan(&self, id: &str) -> Result<Option<Plan>, ReservationError> {
        let Some(row) = reservation::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        let dataset = dataset::Entity::find_by_id(row.dataset_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                ReservationError::Dataset(DatasetError::NotFound {
                    name: format!("#{}", row.dataset_id),
                    version: None,
                })
            })?;
        let members = self.members(dataset.id).await?;
        let objects = self.pin_keys(&members);
        let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
        let base_upstream = u64::try_from(row.bytes_from_upstream).unwrap_or(0);
        Ok(Some(Plan {
            row,
            dataset,
            members,
            objects,
            total_bytes,
            base_upstream,
        }))
    }

    /// Moves `id` (pending, or materializing in a previous run) to `materializing` with its
    /// counters reset. `false` when it is in neither state any more.
    async fn start_materializing(&self, id: &str) -> Result<bool, ReservationError> {
        let started = self
            .update(
                id,
                &[ReservationState::Pending, ReservationState::Materializing],
                None,
                |q| {
                    q.col_expr(
                        reservation::Column::State,
                        Expr::value(ReservationState::Materializing),
                    )
                    .col_expr(reservation::Column::ObjectsDone, Expr::value(0i64))
                    .col_expr(reservation::Column::BytesDone, Expr::value(0i64))
                },
            )
            .await?;
        match started {
            Some(row) => {
                self.publish(row);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Fetches the members, [`concurrency_objects`](crate::reservations::ReservationSettings::concurrency_objects)
    /// at a time, writing progress every tick (not when repairing). A failure that says
    /// nothing about the other objects lets the others go on; any other stops new fetches.
    /// `None` when the run must stop: cancelled, the cache shutting down, or the reservation
    /// no longer materializing.
    async fn gather(
        &self,
        id: &str,
        plan: &Plan,
        repair: bool,
        cancel: &CancellationToken,
        progress: &Arc<Progress>,
    ) -> Option<Gathered> {
        let ctx = FetchContext {
            dataset: Some(plan.dataset.name.clone()),
            owner: Some(plan.row.owner.clone()),
        };
        let halt = Arc::new(AtomicBool::new(false));
        // Held to the download windows when it has a deadline (never when repairing a view).
        let gate = plan.row.ready_by.filter(|_| !repair).map(|_| Gate {
            gate: Arc::clone(&self.gate),
            cancel: cancel.clone(),
        });
        let fetches = futures::stream::iter(
            plan.members
                .iter()
                .cloned()
                .zip(plan.objects.iter().cloned()),
        )
        .map(|(member, counted)| {
            let (cache, ctx) = (Arc::clone(&self.cache), ctx.clone());
            let (progress, halt) = (Arc::clone(progress), Arc::clone(&halt));
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    if !cache.is_cached(&counted)
                        && !gate.gate.admit(counted.size, &gate.cancel).await
                    {
                        return (member, None);
                    }
                }
                fetch_member(cache, member, ctx, id.to_owned(), progress, halt).await
            }
        })
        .buffer_unordered(self.settings.concurrency_objects);
        let mut fetches = pin!(fetches);
        let mut ticks = tokio::time::interval(self.settings.progress_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut written = (0, 0, 0);
        let mut slipped = false;
        let mut gathered = Gathered {
            views: Vec::with_capacity(plan.members.len()),
            ..Gathered::default()
        };
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                next = fetches.next() => match next {
                    None => break,
                    Some((_, None)) => gathered.skipped += 1,
                    Some((_, Some(Ok(done)))) => {
                        gathered.views.push(done.view);
                        gathered.notes.extend(done.note);
                    }
                    Some((member, Some(Err(err)))) => {
                        let object = member.object().clone();
                        if is_interrupted(&err) {
                            tracing::info!(reservation = %id, "cache shutting down; materialization stops");
                            return None;
                        }
                        tracing::warn!(reservation = %id, object = %object, error = %err, "object could not be materialized");
                        if !is_object_specific(err.kind()) {
                            halt.store(true, Ordering::Relaxed);
                        }
                        gathered.failures.push((object, err));
                    }
                },
                _ = ticks.tick(), if !repair => {
                    let now = progress.snapshot(plan.total_bytes);
                    if !slipped {
                        slipped = self.warn_if_late(id, plan, now.1);
                    }
                    if now != written {
                        match self.write_progress(id, now, plan.base_upstream, None).await {
                            Ok(true) => written = now,
                            Ok(false) => return None,
                            Err(err) => tracing::warn!(reservation = %id, error = %err, "cannot record progress"),
                        }
                    }
                }
            }
        }
        Some(gathered)
    }

    /// Warns, once, when a reservation with a deadline is estimated to miss it with
    /// `bytes_done` of its bytes done. `true` when it is late (or has no deadline).
    fn warn_if_late(&self, id: &str, plan: &Plan, bytes_done: u64) -> bool {
        let Some(ready_by) = plan.row.ready_by else {
            return true;
        };
        let mut row = plan.row.clone();
        row.state = ReservationState::Materializing;
        let left = plan.total_bytes.saturating_sub(bytes_done);
        match estimate(&row, &self.settings.download_schedule, left) {
            Some(estimate) if !estimate.on_time => {
                tracing::warn!(
                    reservation = %id,
                    dataset = %plan.dataset.name,
                    %ready_by,
                    estimated_ready_at = %estimate.ready_at,
                    bytes_left = left,
                    "reservation is estimated to miss its readyBy deadline"
                );
                true
            }
            _ => false,
        }
    }

    /// Records `id` failed, naming the objects that could not be materialized (after writing
    /// the final counters, unless repairing).
    async fn fail_objects(
        &self,
        id: &str,
        plan: &Plan,
        gathered: &Gathered,
        snapshot: (u64, u64, u64),
        repair: bool,
    ) {
        let message = failure_message(plan.objects.len(), &gathered.failures, gathered.skipped);
        if !repair {
            // The final counters, then the failure.
            let _ = self
                .write_progress(id, snapshot, plan.base_upstream, None)
                .await;
        }
        self.fail(id, message, repair).await;
    }

    /// Builds the view of `views` (every member cached) and returns its path (`None`: the
    /// content store keeps no local files, so there is no view); when it cannot be built, records `id` failed and returns `None`.
    async fn build_view(
        &self,
        id: &str,
        views: &[ObjectKey],
        repair: bool,
    ) -> Option<Option<String>> {
        // READY promises the objects stay cached: their rows, written behind, must be in the
        // database before it is said.
        self.cache.flush().await;
        if !self.cache.keeps_views() {
            // The office tier: the reservation is read through `/data`, the gateway and
            // `milepost mount`, and has no directory on this node.
            return Some(None);
        }
        match self.cache.create_view(id, views).await {
            Ok(path) => Some(Some(path.to_string_lossy().into_owned())),
            Err(err) => {
                tracing::error!(reservation = %id, error = %err, "cannot build a reservation's view");
                let message = match err.kind() {
                    CacheErrorKind::NotFound => {
                        format!("the view could not be built: {err} (evicted while materializing?)")
                    }
                    _ => "the view could not be built: the office cache's disk failed".to_owned(),
                };
                self.fail(id, message, repair).await;
                None
            }
        }
    }

    /// Makes `id` ready with the view at `path` (or, repairing, records the rebuilt view of a
    /// reservation that stays ready). `upstream` is this run's bytes from upstream.
    async fn become_ready(
        &self,
        id: &str,
        plan: &Plan,
        gathered: Gathered,
        path: Option<String>,
        upstream: u64,
        repair: bool,
    ) -> Result<Ended, ReservationError> {
        // The view's real size: trimmed files are known once built.
        let view_bytes: u64 = gathered.views.iter().map(|o| o.size).sum();
        let became_ready = if repair {
            let upstream = i64::try_from(plan.base_upstream + upstream).unwrap_or(i64::MAX);
            let updated = self
                .update(id, &[ReservationState::Ready], None, |q| {
                    q.col_expr(reservation::Column::LocalPath, Expr::value(path))
                        .col_expr(
                            reservation::Column::BytesFromUpstream,
                            Expr::value(upstream),
                        )
                })
                .await?;
            updated.map(|row| self.publish(row)).is_some()
        } else {
            let done = (plan.members.len() as u64, view_bytes, upstream);
            self.write_progress(id, done, plan.base_upstream, Some((path, gathered.notes)))
                .await?
        };
        if !became_ready {
            // Released or expired meanwhile: whoever did it removes the view.
            return Ok(Ended::Stopped);
        }
        tracing::info!(
            reservation = %id,
            objects = plan.members.len(),
            bytes = view_bytes,
            bytes_from_upstream = upstream,
            "reservation ready"
        );
        Ok(Ended::Ready)
    }
}

/// The download gate a scheduled run's fetches wait on, with the run's cancellation.
#[derive(Clone)]
struct Gate {
    gate: Arc<DownloadGate>,
    cancel: CancellationToken,
}

/// Fetches one member for `holder` (the reservation), counting it in `progress`; skipped
/// (`None`) once `halt` is set.
async fn fetch_member(
    cache: Arc<OfficeCache>,
    member: Member,
    ctx: FetchContext,
    holder: String,
    progress: Arc<Progress>,
    halt: Arc<AtomicBool>,
) -> Fetched {
    if halt.load(Ordering::Relaxed) {
        return (member, None);
    }
    let result = match &member {
        Member::Whole(object) => fetch_whole(&cache, object.clone(), &ctx, &progress).await,
        Member::Trim { source, spec } => {
            fetch_trimmed(&cache, source, spec, &ctx, &holder, &progress).await
        }
    };
    (member, Some(result))
}

/// Builds a trimmed member ([`trimmed::build`]), pinned by `holder`.
async fn fetch_trimmed(
    cache: &OfficeCache,
    source: &ObjectKey,
    spec: &TrimSpec,
    ctx: &FetchContext,
    holder: &str,
    progress: &Progress,
) -> Result<Done, CacheError> {
    let result = trimmed::build(cache, source, spec, ctx, holder)
        .await
        .map(|built| Done {
            view: built.view,
            upstream: built.bytes_from_upstream,
            note: built.note,
        });
    if let Ok(done) = &result {
        progress.member_done(done.view.size, done.upstream);
    }
    result
}

/// Fetches a whole object into the cache, its landed bytes counted in progress meanwhile.
async fn fetch_whole(
    cache: &OfficeCache,
    object: ObjectKey,
    ctx: &FetchContext,
    progress: &Progress,
) -> Result<Done, CacheError> {
    let seen = AtomicU64::new(0);
    let on_progress = |landed: u64| {
        let before = seen.swap(landed, Ordering::Relaxed);
        if landed >= before {
            progress
                .in_flight
                .fetch_add(landed - before, Ordering::Relaxed);
        } else {
            progress
                .in_flight
                .fetch_sub(before - landed, Ordering::Relaxed);
        }
    };
    let result = cache.fetch(&object, ctx, Some(&on_progress)).await;
    progress
        .in_flight
        .fetch_sub(seen.load(Ordering::Relaxed), Ordering::Relaxed);
    if let Ok(outcome) = &result {
        progress.member_done(object.size, outcome.bytes_from_upstream);
    }
    result.map(|outcome| Done {
        view: object,
        upstream: outcome.bytes_from_upstream,
        note: None,
    })
}
