//! Reservations: a dataset made local in the office cache, pinned for a while.
//!
//! [`Reservations`] is the service. [`reserve`](Reservations::reserve) records a reservation
//! in state `pending`, pins the dataset's objects in the [`OfficeCache`] (holder: the
//! reservation id) and starts its materialization in the background:
//!
//! ```text
//! pending → materializing → ready → released | expired
//!                  ↘ failed             (released | expired from any non-final state too)
//! ```
//!
//! Materialization fetches the members through [`OfficeCache::fetch`], a few objects at a
//! time ([`ReservationSettings::concurrency_objects`]); the cache's single-flight makes
//! concurrent reservations of one dataset share each download, and only the reservation whose
//! call started a download is credited with its bytes (`bytes_from_upstream`), so reserving a
//! cached dataset reports 0. Progress (`objects_done`, `bytes_done` including bytes of
//! downloads in progress, `bytes_from_upstream`) is written at most every
//! [`progress_interval`](ReservationSettings::progress_interval). When every object is cached,
//! the view `views/<reservation id>/<bucket>/<key>` is built and the reservation becomes
//! `ready` with it as `local_path`. If any object fails, the reservation becomes `failed` with
//! an `error` naming the objects and why, and its pins are released.
//!
//! A dataset member that is an MCAP log trimmed to a scenario's window
//! ([`TrimSpec`]) is materialized by [`crate::trimmed`]: only the log's summary and overlapping
//! chunks are fetched, the trimmed file is built in the office and pinned by the reservation
//! once its size is known (admission counts its planned size until then). `bytes_total` becomes
//! the view's real size when the reservation is ready, and `notes` says when a log came whole
//! (no chunk index) or a window held no message.
//!
//! The pins hold until [`release`](Reservations::release) or expiry (`expires_at`, moved by
//! [`extend`](Reservations::extend)); either removes the view and unpins. [`start`](Reservations::start)
//! resumes what a previous process left (pending and materializing reservations are
//! materialized again: cached objects are hits; ready ones are pinned again, their view
//! rebuilt if missing) and runs the expiry loop.
//!
//! # Deadlines
//!
//! A reservation may say when it must be ready ([`reserve_by`](Reservations::reserve_by),
//! GraphQL `readyBy`). It is admitted (pinned) at once, but its materialization waits for
//! the office's download windows
//! ([`download_schedule`](ReservationSettings::download_schedule)) and is paced at their
//! rates ([`DownloadGate`]). Admission plans it: the bytes not yet in the office, from the
//! first open minute (`scheduled_start`) at the windows' rates; a deadline the plan cannot
//! meet is refused with the earliest time it could. [`estimate`] gives the live estimate
//! of a reservation in progress.
//!
//! # Admission
//!
//! A reservation is refused when its dataset is larger than the cache's capacity
//! ([`Invalid`](ReservationErrorKind::Invalid), field `dataset`), or when the objects it
//! would add to those pinned by live reservations of this service do not fit in the capacity
//! ([`Conflict`](ReservationErrorKind::Conflict)); both messages give the numbers. Objects
//! shared with other live reservations count once.
//!
//! # State changes and progress streams
//!
//! Every change is a conditional `UPDATE` on the reservation's current state (a compare and
//! set), so that concurrent release, expiry, extension and materialization never overwrite
//! each other: the first to move a reservation to a final state wins. After each successful
//! change the row is read back and published to the reservation's
//! [`subscribe`](Reservations::subscribe) streams (a `tokio::sync::watch` channel per
//! reservation with subscribers: a slow subscriber skips intermediate progress, never the last
//! value).
//!
//! # Layout
//!
//! - `lifecycle`: the states, their order and the subscription streams and list cursors;
//! - `admission`: reserve, release and extend (authorization, TTL, the pin accounting);
//! - `persistence`: the conditional row updates and their publication;
//! - `materialize`: the background runs that make a reservation's dataset local;
//! - `expiry`: start-up resumption and the expiry loop;
//! - `error`: [`ReservationError`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use milepost_schema::entity::reservation;
use milepost_schema::enums::ReservationState;
use sea_orm::{
    ColumnTrait as _, Condition, DatabaseConnection, EntityTrait as _, PaginatorTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::OfficeCache;
use crate::transfer_policy::{DownloadGate, DownloadSchedule};

mod admission;
mod cluster;
mod error;
mod expiry;
mod lifecycle;
mod materialize;
mod persistence;
mod schedule;

pub use admission::{ttl_from_seconds, MAX_PURPOSE_LEN};
pub use error::{ReservationError, ReservationErrorKind};
use lifecycle::decode_cursor;
pub use lifecycle::{reservation_cursor, ReservationStream};
use materialize::Running;
pub use materialize::MAX_NAMED_FAILURES;
pub use schedule::{estimate, Estimate};

/// The most rows [`Reservations::list`] returns at once.
pub const MAX_PAGE: u64 = 1000;

/// How a [`Reservations`] service behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationSettings {
    /// The longest time-to-live a reservation may ask for (30 days).
    pub max_ttl: Duration,
    /// Progress is written (and published) at most this often (250 ms).
    pub progress_interval: Duration,
    /// How often expired reservations are looked for (30 s).
    pub expiry_check: Duration,
    /// Objects materialized at once per reservation (8); the cache limits the ranged GETs
    /// over all downloads.
    pub concurrency_objects: usize,
    /// When reservations with a deadline (`readyBy`) may fetch, and how fast (`* off`:
    /// always, at full speed). Reservations asked for now are not held by it.
    pub download_schedule: DownloadSchedule,
}

impl Default for ReservationSettings {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            progress_interval: Duration::from_millis(250),
            expiry_check: Duration::from_secs(30),
            concurrency_objects: 8,
            download_schedule: DownloadSchedule::default(),
        }
    }
}

/// Who asks to release or extend a reservation: its owner (a token name), or an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor<'a> {
    /// The token name.
    pub name: &'a str,
    /// Whether the token has the admin role (may act on anyone's reservation).
    pub admin: bool,
}

impl<'a> Actor<'a> {
    /// A non-admin token named `name`.
    pub fn user(name: &'a str) -> Self {
        Self { name, admin: false }
    }

    /// An admin token named `name`.
    pub fn admin(name: &'a str) -> Self {
        Self { name, admin: true }
    }
}

/// What the service keeps in memory, under one lock: subscription channels, running
/// materializations. (Pins are the cache's: [`OfficeCache::admit_pins`].)
#[derive(Debug, Default)]
struct State {
    channels: HashMap<String, watch::Sender<reservation::Model>>,
    running: HashMap<String, Running>,
    generation: u64,
}

/// The service's shared core: the materialization tasks hold it too.
struct Inner {
    db: DatabaseConnection,
    cache: Arc<OfficeCache>,
    settings: ReservationSettings,
    /// Holds the fetches of reservations with a deadline to the download schedule.
    gate: Arc<DownloadGate>,
    state: Mutex<State>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// In an office cluster: this node (see `cluster.rs`).
    cluster: Option<Arc<milepost_cluster::ClusterNode>>,
}

/// The reservation service; see the [module documentation](self). Shared as
/// `Arc<Reservations>`; every call takes `&self`.
pub struct Reservations {
    inner: Arc<Inner>,
}

impl fmt::Debug for Reservations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Reservations")
            .field("settings", &self.inner.settings)
            .field("running", &state.running.len())
            .field("subscribed", &state.channels.len())
            .finish_non_exhaustive()
    }
}

impl Reservations {
    /// A service over `db` and `cache`. Zero durations and concurrency are raised to the
    /// smallest usable values. Nothing runs until [`reserve`](Self::reserve) or
    /// [`start`](Self::start).
    pub fn new(
        db: DatabaseConnection,
        cache: Arc<OfficeCache>,
        settings: ReservationSettings,
    ) -> Arc<Self> {
        Self::open_inner(db, cache, settings, None)
    }

    /// [`new`](Self::new) as `node` of an office cluster: reservations admitted here are
    /// this node's work under its lease, and those of nodes that are gone are taken over by
    /// the upkeep (`cluster.rs`).
    pub fn new_in_cluster(
        db: DatabaseConnection,
        cache: Arc<OfficeCache>,
        settings: ReservationSettings,
        node: Arc<milepost_cluster::ClusterNode>,
    ) -> Arc<Self> {
        Self::open_inner(db, cache, settings, Some(node))
    }

    fn open_inner(
        db: DatabaseConnection,
        cache: Arc<OfficeCache>,
        mut settings: ReservationSettings,
        cluster: Option<Arc<milepost_cluster::ClusterNode>>,
    ) -> Arc<Self> {
        settings.concurrency_objects = settings.concurrency_objects.max(1);
        settings.progress_interval = settings.progress_interval.max(Duration::from_millis(1));
        settings.expiry_check = settings.expiry_check.max(Duration::from_millis(1));
        let gate = DownloadGate::new(settings.download_schedule.clone());
        Arc::new(Self {
            inner: Arc::new(Inner {
                db,
                cache,
                settings,
                gate,
                state: Mutex::new(State::default()),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
                cluster,
            }),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &ReservationSettings {
        &self.inner.settings
    }

    /// The reservation `id`, or `None`.
    pub async fn find(&self, id: &str) -> Result<Option<reservation::Model>, ReservationError> {
        Ok(reservation::Entity::find_by_id(id)
            .one(&self.inner.db)
            .await?)
    }

    /// The reservation `id`; [`NotFound`](ReservationErrorKind::NotFound) if there is none.
    pub async fn get(&self, id: &str) -> Result<reservation::Model, ReservationError> {
        self.find(id)
            .await?
            .ok_or_else(|| ReservationError::NotFound { id: id.to_owned() })
    }

    /// A page of reservations, newest first (by creation time, then id, both descending),
    /// optionally only `owner`'s and only in `state`, starting after the cursor `after` (a
    /// [`reservation_cursor`]); at most `limit` (capped at [`MAX_PAGE`]). Returns the rows
    /// and whether more follow.
    pub async fn list(
        &self,
        owner: Option<&str>,
        state: Option<ReservationState>,
        after: Option<&str>,
        limit: u64,
    ) -> Result<(Vec<reservation::Model>, bool), ReservationError> {
        let limit = limit.min(MAX_PAGE);
        let mut query = reservation::Entity::find()
            .filter(filters(owner, state))
            .order_by_desc(reservation::Column::CreatedAt)
            .order_by_desc(reservation::Column::Id)
            .limit(limit + 1);
        if let Some(cursor) = after {
            let (at, id) = decode_cursor(cursor).ok_or_else(|| {
                ReservationError::invalid(
                    "after",
                    format!("`{cursor}` is not a reservations cursor"),
                )
            })?;
            query = query.filter(
                Condition::any()
                    .add(reservation::Column::CreatedAt.lt(at))
                    .add(
                        Condition::all()
                            .add(reservation::Column::CreatedAt.eq(at))
                            .add(reservation::Column::Id.lt(id)),
                    ),
            );
        }
        let mut rows = query.all(&self.inner.db).await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok((rows, more))
    }

    /// How many reservations [`list`](Self::list) would go through with these filters.
    pub async fn count(
        &self,
        owner: Option<&str>,
        state: Option<ReservationState>,
    ) -> Result<u64, ReservationError> {
        Ok(reservation::Entity::find()
            .filter(filters(owner, state))
            .count(&self.inner.db)
            .await?)
    }

    /// Stops every materialization in progress and waits for them to end. Their reservations
    /// stay `pending` or `materializing` in the database, to be resumed by the next
    /// [`start`](Self::start). Later [`reserve`](Self::reserve) calls fail with
    /// [`ShuttingDown`](ReservationError::ShuttingDown). Call it before shutting the cache
    /// down.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Streams end: their senders are dropped.
        self.inner.lock().channels.clear();
    }
}

fn filters(owner: Option<&str>, state: Option<ReservationState>) -> Condition {
    let mut condition = Condition::all();
    if let Some(owner) = owner {
        condition = condition.add(reservation::Column::Owner.eq(owner));
    }
    if let Some(state) = state {
        condition = condition.add(reservation::Column::State.eq(state));
    }
    condition
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
