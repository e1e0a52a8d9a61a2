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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use futures::stream::BoxStream;
use futures::StreamExt as _;
use milepost_schema::entity::{dataset, reservation};
use milepost_schema::enums::ReservationState;
use milepost_schema::ids::new_id;
use milepost_schema::{DbError, ErrorKind as DbErrorKind};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, Condition, DatabaseConnection, EntityTrait as _,
    PaginatorTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::cache::{CacheError, CacheErrorKind, FetchContext, ObjectKey, OfficeCache};
use crate::datasets::{all_members, DatasetError, DatasetErrorKind, TrimSpec};
use crate::trimmed;

/// How many failed objects a reservation's `error` names before "and N more".
pub const MAX_NAMED_FAILURES: usize = 10;

/// The longest `purpose`, in characters.
pub const MAX_PURPOSE_LEN: usize = 1024;

/// The most rows [`Reservations::list`] returns at once.
pub const MAX_PAGE: u64 = 1000;

/// Reservations expired per database round trip of [`Reservations::expire_due`].
const EXPIRY_BATCH: u64 = 100;

/// The kind of [`list`](Reservations::list) cursors.
const CURSOR_KIND: &str = "res";

/// States in which a reservation holds pins (and may still change).
const ACTIVE: [ReservationState; 3] = [
    ReservationState::Pending,
    ReservationState::Materializing,
    ReservationState::Ready,
];

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
}

impl Default for ReservationSettings {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            progress_interval: Duration::from_millis(250),
            expiry_check: Duration::from_secs(30),
            concurrency_objects: 8,
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

/// What a caller can do about a [`ReservationError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationErrorKind {
    /// The input is wrong; [`ReservationError::field`] names the field.
    Invalid,
    /// The reservation does not exist.
    NotFound,
    /// Only its owner or an admin may do that.
    Forbidden,
    /// The reservation's state does not allow it, or the cache has no room for it now.
    Conflict,
    /// The database (or the service, shutting down) is unavailable; retrying may succeed.
    Unavailable,
    /// A bug or broken stored data.
    Internal,
}

/// An error of [`Reservations`]. Branch on [`kind`](Self::kind). Messages of
/// [`Invalid`](Self::Invalid), [`NotFound`](Self::NotFound), [`Forbidden`](Self::Forbidden),
/// [`NotActive`](Self::NotActive) and [`NoRoom`](Self::NoRoom) are for clients; the others
/// are for logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReservationError {
    /// A field of the input was rejected.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (GraphQL spelling): `ttlSeconds`, `purpose`, `after`, `dataset`.
        field: &'static str,
        /// What is wrong, naming the value.
        message: String,
    },
    /// No reservation with this id.
    #[error("reservation `{id}` not found")]
    NotFound {
        /// The id looked up.
        id: String,
    },
    /// Not the owner, not an admin.
    #[error("reservation `{id}` belongs to `{owner}`: only its owner or an admin may {action} it")]
    Forbidden {
        /// The reservation.
        id: String,
        /// Its owner.
        owner: String,
        /// `release`, `extend`.
        action: &'static str,
    },
    /// The reservation is in a final state.
    #[error("reservation `{id}` is {state}: it cannot be {action}")]
    NotActive {
        /// The reservation.
        id: String,
        /// Its state.
        state: ReservationState,
        /// `extended`.
        action: &'static str,
    },
    /// The cache cannot hold the dataset next to what live reservations pin.
    #[error("{0}")]
    NoRoom(String),
    /// The service is shutting down.
    #[error("the reservation service is shutting down")]
    ShuttingDown,
    /// The database failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// Reading the dataset failed.
    #[error("{0}")]
    Dataset(#[from] DatasetError),
}

impl From<sea_orm::DbErr> for ReservationError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Db(DbError::from(err))
    }
}

impl ReservationError {
    /// What the caller can do about it.
    pub fn kind(&self) -> ReservationErrorKind {
        match self {
            Self::Invalid { .. } => ReservationErrorKind::Invalid,
            Self::NotFound { .. } => ReservationErrorKind::NotFound,
            Self::Forbidden { .. } => ReservationErrorKind::Forbidden,
            Self::NotActive { .. } | Self::NoRoom(_) => ReservationErrorKind::Conflict,
            Self::ShuttingDown => ReservationErrorKind::Unavailable,
            Self::Db(err) => match err.kind() {
                DbErrorKind::NotFound => ReservationErrorKind::NotFound,
                DbErrorKind::Conflict => ReservationErrorKind::Conflict,
                DbErrorKind::Unavailable => ReservationErrorKind::Unavailable,
                DbErrorKind::Corrupt | DbErrorKind::Invalid => ReservationErrorKind::Internal,
            },
            Self::Dataset(err) => match err.kind() {
                DatasetErrorKind::Unavailable => ReservationErrorKind::Unavailable,
                DatasetErrorKind::NotFound => ReservationErrorKind::NotFound,
                DatasetErrorKind::Conflict => ReservationErrorKind::Conflict,
                DatasetErrorKind::Invalid | DatasetErrorKind::Corrupt => {
                    ReservationErrorKind::Internal
                }
            },
        }
    }

    /// The rejected field, for [`Invalid`](ReservationErrorKind::Invalid) errors.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

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

/// The opaque [`list`](Reservations::list) cursor of `row` (its position: creation time, id).
pub fn reservation_cursor(row: &reservation::Model) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{CURSOR_KIND}:{}:{}",
        row.created_at.timestamp_micros(),
        row.id
    ))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
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
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Whether a subscription stream ends after a row in `state`.
fn ends_stream(state: ReservationState) -> bool {
    !matches!(
        state,
        ReservationState::Pending | ReservationState::Materializing
    )
}

/// Whether `state` is final: nothing changes after it.
fn is_final(state: ReservationState) -> bool {
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

fn is_newer(candidate: &reservation::Model, current: &reservation::Model) -> bool {
    candidate != current
        && (rank(candidate.state), candidate.updated_at)
            >= (rank(current.state), current.updated_at)
        && !(is_final(current.state) && current.state != candidate.state)
}

/// A stream of a reservation's rows: the current one, then every change published, ending
/// after a row in a state that ends streams ([`Reservations::subscribe`]).
pub type ReservationStream = BoxStream<'static, reservation::Model>;

fn watch_stream(rx: watch::Receiver<reservation::Model>) -> ReservationStream {
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

/// The objects pinned by the live reservations of this service, each counted once, for
/// admission ([module docs](self)).
#[derive(Debug, Default)]
struct PinLedger {
    counts: HashMap<ObjectKey, u32>,
    bytes: u64,
    holders: HashMap<String, Arc<[ObjectKey]>>,
}

impl PinLedger {
    /// Bytes of `objects` not pinned yet by a live reservation.
    fn additional(&self, objects: &[ObjectKey]) -> u64 {
        objects
            .iter()
            .filter(|o| !self.counts.contains_key(*o))
            .map(|o| o.size)
            .sum()
    }

    fn hold(&mut self, holder: &str, objects: Arc<[ObjectKey]>) {
        if self.holders.contains_key(holder) {
            return;
        }
        for object in objects.iter() {
            let count = self.counts.entry(object.clone()).or_insert(0);
            if *count == 0 {
                self.bytes += object.size;
            }
            *count += 1;
        }
        self.holders.insert(holder.to_owned(), objects);
    }

    fn release(&mut self, holder: &str) {
        let Some(objects) = self.holders.remove(holder) else {
            return;
        };
        for object in objects.iter() {
            if let Some(count) = self.counts.get_mut(object) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(object);
                    self.bytes -= object.size;
                }
            }
        }
    }
}

/// A materialization task in progress.
#[derive(Clone, Debug)]
struct Running {
    generation: u64,
    /// Stops it (a child of the service's stop token).
    cancel: CancellationToken,
    /// Cancelled when it has ended.
    done: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    channels: HashMap<String, watch::Sender<reservation::Model>>,
    running: HashMap<String, Running>,
    pins: PinLedger,
    generation: u64,
}

struct Inner {
    db: DatabaseConnection,
    cache: Arc<OfficeCache>,
    settings: ReservationSettings,
    state: Mutex<State>,
    tasks: TaskTracker,
    stop: CancellationToken,
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
            .field("pinned_bytes", &state.pins.bytes)
            .finish_non_exhaustive()
    }
}

/// How a materialization run ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Ready,
    Failed,
    /// Cancelled, or the reservation left `materializing` under it, or the cache shut down:
    /// nothing to write.
    Stopped,
}

impl Reservations {
    /// A service over `db` and `cache`. Zero durations and concurrency are raised to the
    /// smallest usable values. Nothing runs until [`reserve`](Self::reserve) or
    /// [`start`](Self::start).
    pub fn new(
        db: DatabaseConnection,
        cache: Arc<OfficeCache>,
        mut settings: ReservationSettings,
    ) -> Arc<Self> {
        settings.concurrency_objects = settings.concurrency_objects.max(1);
        settings.progress_interval = settings.progress_interval.max(Duration::from_millis(1));
        settings.expiry_check = settings.expiry_check.max(Duration::from_millis(1));
        Arc::new(Self {
            inner: Arc::new(Inner {
                db,
                cache,
                settings,
                state: Mutex::new(State::default()),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &ReservationSettings {
        &self.inner.settings
    }

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
        let id = new_id("res");
        {
            let mut state = self.inner.lock();
            let more = state.pins.additional(&objects);
            let held = state.pins.bytes;
            if held + more > capacity {
                let free = capacity.saturating_sub(held);
                return Err(ReservationError::NoRoom(format!(
                    "no room in the office cache for {label}: it needs {more} more bytes ({}) \
                     pinned, but of the cache's {capacity} bytes ({}) live reservations pin \
                     {held} ({}), leaving {free} ({}); release or wait for other reservations",
                    human(more),
                    human(capacity),
                    human(held),
                    human(free)
                )));
            }
            state.pins.hold(&id, Arc::clone(&objects));
        }
        self.inner.cache.pin(&id, &objects);

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
            "reserved"
        );
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

    /// Runs the service until `shutdown` is cancelled: resumes what a previous process left
    /// ([`resume`](Self::resume), retried at every expiry check until it succeeds), then
    /// expires due reservations every [`expiry_check`](ReservationSettings::expiry_check).
    /// On `shutdown`, stops every materialization and returns once they have ended
    /// ([`shutdown`](Self::shutdown)). Errors are logged, never fatal.
    pub async fn start(&self, shutdown: CancellationToken) {
        let mut resumed = false;
        let mut ticks = tokio::time::interval(self.inner.settings.expiry_check);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.inner.stop.cancelled() => break,
                _ = ticks.tick() => {
                    if let Err(err) = self.expire_due().await {
                        tracing::warn!(error = %err, "expiring reservations failed");
                    }
                    if !resumed {
                        match self.resume().await {
                            Ok(count) => {
                                resumed = true;
                                if count > 0 {
                                    tracing::info!(count, "reservations resumed");
                                }
                            }
                            Err(err) => tracing::warn!(error = %err, "resuming reservations failed; retrying"),
                        }
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// Takes over the live reservations in the database that this service does not drive
    /// yet: pending and materializing ones are pinned and materialized again (cached objects
    /// are hits, so only what is missing is fetched); ready ones are pinned again, and their
    /// view rebuilt if its directory is missing (objects no longer cached are fetched again
    /// first). Returns how many were taken over.
    pub async fn resume(&self) -> Result<usize, ReservationError> {
        let rows = reservation::Entity::find()
            .filter(reservation::Column::State.is_in(ACTIVE))
            .order_by_asc(reservation::Column::CreatedAt)
            .all(&self.inner.db)
            .await?;
        let mut count = 0;
        for row in rows {
            if self.inner.stop.is_cancelled() {
                return Err(ReservationError::ShuttingDown);
            }
            if self.inner.adopt(&row).await? {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Expires every live reservation past its `expires_at` (view removed, pins released,
    /// state `expired`). Returns how many.
    pub async fn expire_due(&self) -> Result<usize, ReservationError> {
        let mut count = 0;
        let mut skip = HashSet::new();
        loop {
            let due = reservation::Entity::find()
                .filter(reservation::Column::State.is_in(ACTIVE))
                .filter(reservation::Column::ExpiresAt.lt(now()))
                .order_by_asc(reservation::Column::ExpiresAt)
                .limit(EXPIRY_BATCH + skip.len() as u64)
                .all(&self.inner.db)
                .await?;
            let batch: Vec<_> = due.into_iter().filter(|r| !skip.contains(&r.id)).collect();
            if batch.is_empty() {
                return Ok(count);
            }
            for row in batch {
                skip.insert(row.id.clone());
                let cutoff = now();
                if self
                    .inner
                    .end(&row, ReservationState::Expired, Some(cutoff))
                    .await?
                    .is_some()
                {
                    tracing::info!(reservation = %row.id, owner = %row.owner, "expired");
                    count += 1;
                }
            }
        }
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
fn human(bytes: u64) -> String {
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

/// Removes a materialization from the running map when it ends (also if it is aborted), and
/// signals its end.
struct TaskGuard {
    inner: Arc<Inner>,
    id: String,
    generation: u64,
    _done: DropGuard,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state
            .running
            .get(&self.id)
            .is_some_and(|r| r.generation == self.generation)
        {
            state.running.remove(&self.id);
        }
    }
}

/// One member of a reservation's dataset.
#[derive(Clone, Debug)]
enum Member {
    /// An object materialized as it is.
    Whole(ObjectKey),
    /// An MCAP log trimmed to a window ([`trimmed`]).
    Trim {
        /// The source log.
        source: ObjectKey,
        /// What to keep.
        spec: TrimSpec,
    },
}

impl Member {
    /// The object named in failures: the object, or the source log.
    fn object(&self) -> &ObjectKey {
        match self {
            Self::Whole(object) => object,
            Self::Trim { source, .. } => source,
        }
    }
}

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
}

/// Whether `err` means the cache is shutting down (not the object's fault).
fn is_interrupted(err: &CacheError) -> bool {
    match err {
        CacheError::Interrupted { .. } => true,
        CacheError::Shared(inner) => is_interrupted(inner),
        _ => false,
    }
}

/// What a client reads about a failed object: no paths, no internals (logged instead).
fn describe_failure(object: &ObjectKey, err: &CacheError) -> String {
    let why = match err.kind() {
        CacheErrorKind::PreconditionFailed => format!(
            "changed upstream since the manifest was frozen (the manifest has etag {})",
            object.etag
        ),
        CacheErrorKind::NotFound => "no longer exists upstream".to_owned(),
        CacheErrorKind::Corrupt => {
            "the downloaded bytes failed verification (size or checksum)".to_owned()
        }
        CacheErrorKind::Full => err.to_string(),
        CacheErrorKind::Upstream => {
            "the upstream store failed (unavailable, throttled or denied) after retries".to_owned()
        }
        CacheErrorKind::InvalidRange | CacheErrorKind::Invalid => err.to_string(),
        CacheErrorKind::Io => "the office cache's disk or database failed".to_owned(),
    };
    format!("{object}: {why}")
}

/// Failures that say nothing about the other objects: keep going to name them all. Others
/// (cache full, disk, upstream down) stop new fetches.
fn is_object_specific(kind: CacheErrorKind) -> bool {
    matches!(
        kind,
        CacheErrorKind::PreconditionFailed
            | CacheErrorKind::NotFound
            | CacheErrorKind::Corrupt
            | CacheErrorKind::InvalidRange
            | CacheErrorKind::Invalid
    )
}

fn failure_message(total: usize, failures: &[(ObjectKey, CacheError)], skipped: usize) -> String {
    let mut message = format!(
        "{} of {total} objects could not be materialized: ",
        failures.len()
    );
    let named: Vec<String> = failures
        .iter()
        .take(MAX_NAMED_FAILURES)
        .map(|(object, err)| describe_failure(object, err))
        .collect();
    message.push_str(&named.join("; "));
    if failures.len() > MAX_NAMED_FAILURES {
        message.push_str(&format!(
            "; and {} more",
            failures.len() - MAX_NAMED_FAILURES
        ));
    }
    if skipped > 0 {
        message.push_str(&format!(
            " ({skipped} objects were not attempted after that failure)"
        ));
    }
    message
}

type Update = sea_orm::UpdateMany<reservation::Entity>;

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn members(&self, dataset_id: i64) -> Result<Vec<Member>, ReservationError> {
        let members = all_members(&self.db, dataset_id).await?;
        Ok(members
            .into_iter()
            .map(|m| {
                let object = ObjectKey::new(m.bucket, m.key, m.etag, m.size);
                match m.trim {
                    Some(spec) => Member::Trim {
                        source: object,
                        spec,
                    },
                    None => Member::Whole(object),
                }
            })
            .collect())
    }

    /// What pins and admission count for `members`: whole objects, and for trimmed logs the
    /// trimmed file when it is cached already, else a stand-in of its planned size.
    fn pin_keys(&self, members: &[Member]) -> Arc<[ObjectKey]> {
        members
            .iter()
            .map(|m| match m {
                Member::Whole(object) => object.clone(),
                Member::Trim { source, spec } => trimmed::find_built(&self.cache, source, spec)
                    .unwrap_or_else(|| trimmed::planned_key(source, spec)),
            })
            .collect()
    }

    /// Sends `row` to its subscribers if it is newer than what they have; forgets the channel
    /// after a row that ends streams.
    fn publish(&self, row: reservation::Model) {
        let mut state = self.lock();
        let Some(sender) = state.channels.get(&row.id) else {
            return;
        };
        let end = ends_stream(row.state);
        let id = row.id.clone();
        sender.send_if_modified(|current| {
            if is_newer(&row, current) {
                *current = row;
                true
            } else {
                false
            }
        });
        if end || ends_stream(sender.borrow().state) {
            state.channels.remove(&id);
        }
    }

    /// Unpins `id`'s objects in the cache and in the admission ledger. Returns what it held
    /// in the ledger, for [`restore_pins`](Self::restore_pins).
    fn unpin(&self, id: &str) -> Option<Arc<[ObjectKey]>> {
        self.cache.unpin_all(id);
        let mut state = self.lock();
        let held = state.pins.holders.get(id).cloned();
        state.pins.release(id);
        held
    }

    /// Gives `id` back the pins [`unpin`](Self::unpin) took, when the final state they were
    /// released for was not written and the reservation may still be live.
    fn restore_pins(&self, id: &str, held: Option<&Arc<[ObjectKey]>>) {
        if let Some(objects) = held {
            self.repin(id, objects);
        }
    }

    /// Pins `objects` for `id` in the cache and the ledger (no admission check: it was
    /// admitted before).
    fn repin(&self, id: &str, objects: &Arc<[ObjectKey]>) {
        self.lock().pins.hold(id, Arc::clone(objects));
        self.cache.pin(id, objects);
    }

    /// The conditional update of reservation `id`: only if its state is one of `from` (and,
    /// with `expired_before`, if it expires before that instant). Sets `updated_at` and reads
    /// the row back; `None` when the condition did not hold. A caller writing a final state
    /// unpins before (whoever reads the final row, from the database or a subscription, finds
    /// the pins released) and publishes the row once its other side effects are done.
    async fn update(
        &self,
        id: &str,
        from: &[ReservationState],
        expired_before: Option<DateTime<Utc>>,
        set: impl FnOnce(Update) -> Update,
    ) -> Result<Option<reservation::Model>, DbError> {
        let mut query = reservation::Entity::update_many()
            .filter(reservation::Column::Id.eq(id))
            .filter(reservation::Column::State.is_in(from.iter().copied()));
        if let Some(cutoff) = expired_before {
            query = query.filter(reservation::Column::ExpiresAt.lt(cutoff));
        }
        let query = set(query).col_expr(reservation::Column::UpdatedAt, Expr::value(now()));
        if query.exec(&self.db).await?.rows_affected == 0 {
            return Ok(None);
        }
        Ok(reservation::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Stops the materialization of `id`, if one runs, and waits until it has ended.
    async fn stop_task(&self, id: &str) {
        let running = self.lock().running.get(id).cloned();
        if let Some(running) = running {
            running.cancel.cancel();
            running.done.cancelled().await;
        }
    }

    /// Moves `row` to the final state `to` (released or expired; with `expired_before`, only
    /// if it still expires before it): stops its materialization, removes its view, unpins,
    /// writes the state. `None` if another change won (the reservation is then pinned and
    /// taken over again if it is still live, e.g. extended while expiring).
    async fn end(
        self: &Arc<Self>,
        row: &reservation::Model,
        to: ReservationState,
        expired_before: Option<DateTime<Utc>>,
    ) -> Result<Option<reservation::Model>, ReservationError> {
        let id = row.id.as_str();
        self.stop_task(id).await;
        // Before the state is written: if this process dies in between, the reservation is
        // still live at the next start and its view is rebuilt, rather than a view left behind
        // for a reservation that is over.
        if let Err(err) = self.cache.remove_view(id).await {
            tracing::warn!(reservation = %id, error = %err, "cannot remove a reservation's view");
        }
        // Before the state is written too: whoever reads the final row finds the pins
        // released. Given back below if the reservation turns out to be still live.
        let held = self.unpin(id);
        let ended = self
            .update(id, &ACTIVE, expired_before, |q| {
                q.col_expr(reservation::Column::State, Expr::value(to))
                    .col_expr(reservation::Column::LocalPath, Expr::value(None::<String>))
            })
            .await;
        match ended {
            Ok(Some(row)) => {
                self.publish(row.clone());
                Ok(Some(row))
            }
            Ok(None) => {
                // Someone else ended it (nothing to undo), or it was extended meanwhile: then
                // it is live, and its pins, materialization or view must come back.
                let current = match reservation::Entity::find_by_id(id).one(&self.db).await {
                    Ok(current) => current,
                    Err(err) => {
                        self.restore_pins(id, held.as_ref());
                        return Err(err.into());
                    }
                };
                if let Some(current) = current.filter(|c| !is_final(c.state)) {
                    self.restore_pins(id, held.as_ref());
                    self.adopt(&current).await?;
                }
                Ok(None)
            }
            Err(err) => {
                match reservation::Entity::find_by_id(id).one(&self.db).await {
                    Ok(Some(current)) if !is_final(current.state) => {
                        self.restore_pins(id, held.as_ref());
                        let _ = self.adopt(&current).await;
                    }
                    Ok(_) => {}
                    // Unknown: keep it protected, as it was.
                    Err(_) => self.restore_pins(id, held.as_ref()),
                }
                Err(err.into())
            }
        }
    }

    /// Takes over a live reservation: pins it, and materializes it (pending, materializing)
    /// or makes sure its view exists (ready). `false` when a materialization of it already
    /// runs here.
    async fn adopt(self: &Arc<Self>, row: &reservation::Model) -> Result<bool, ReservationError> {
        if self.lock().running.contains_key(&row.id) {
            return Ok(false);
        }
        let members = self.members(row.dataset_id).await?;
        let objects = self.pin_keys(&members);
        self.repin(&row.id, &objects);
        match row.state {
            ReservationState::Pending | ReservationState::Materializing => {
                Inner::spawn(self, row.id.clone(), false);
            }
            ReservationState::Ready => {
                let view_ok = match &row.local_path {
                    Some(path) => tokio::fs::metadata(path)
                        .await
                        .map(|m| m.is_dir())
                        .unwrap_or(false),
                    None => false,
                };
                if !view_ok {
                    tracing::info!(reservation = %row.id, "view missing; rebuilding it");
                    Inner::spawn(self, row.id.clone(), true);
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// Starts materializing `id` in the background (`repair`: a ready reservation whose view
    /// must be rebuilt; its state stays `ready`), unless a materialization of it runs already
    /// (start-up resuming a reservation that `reserve` is about to start).
    fn spawn(self: &Arc<Self>, id: String, repair: bool) {
        let (cancel, done, generation) = {
            let mut state = self.lock();
            if state
                .running
                .get(&id)
                .is_some_and(|r| !r.done.is_cancelled())
            {
                return;
            }
            state.generation += 1;
            let running = Running {
                generation: state.generation,
                cancel: self.stop.child_token(),
                done: CancellationToken::new(),
            };
            state.running.insert(id.clone(), running.clone());
            (running.cancel, running.done, running.generation)
        };
        let guard = TaskGuard {
            inner: Arc::clone(self),
            id: id.clone(),
            generation,
            _done: done.drop_guard(),
        };
        let inner = Arc::clone(self);
        self.tasks.spawn(async move {
            let _guard = guard;
            match inner.materialize(&id, repair, &cancel).await {
                Ok(ended) => tracing::debug!(reservation = %id, ?ended, "materialization ended"),
                Err(err) => {
                    tracing::error!(reservation = %id, error = %err, "materialization failed");
                    let message = format!(
                        "materialization stopped: {}",
                        match err.kind() {
                            ReservationErrorKind::Unavailable =>
                                "the catalog database was unavailable",
                            _ => "an internal error (see the server log)",
                        }
                    );
                    inner.fail(&id, message, repair).await;
                }
            }
        });
    }

    /// Records `id` as failed with `message` (from materializing, or from ready when
    /// repairing) and unpins it.
    async fn fail(&self, id: &str, message: String, repair: bool) {
        let from: &[ReservationState] = if repair {
            &[ReservationState::Ready]
        } else {
            &[ReservationState::Pending, ReservationState::Materializing]
        };
        // Before the failed row is written, so that whoever reads it (from the database or a
        // subscription) finds the pins released; given back if the write fails.
        let held = self.unpin(id);
        match self
            .update(id, from, None, |q| {
                q.col_expr(
                    reservation::Column::State,
                    Expr::value(ReservationState::Failed),
                )
                .col_expr(reservation::Column::Error, Expr::value(Some(message)))
                .col_expr(reservation::Column::LocalPath, Expr::value(None::<String>))
            })
            .await
        {
            Ok(Some(row)) => {
                if let Err(err) = self.cache.remove_view(id).await {
                    tracing::warn!(reservation = %id, error = %err, "cannot remove a failed reservation's view");
                }
                self.publish(row);
            }
            // Released or expired meanwhile: its pins go with it.
            Ok(None) => {}
            Err(err) => {
                // Still live in the database: keep it protected, as it was.
                self.restore_pins(id, held.as_ref());
                tracing::error!(reservation = %id, error = %err, "cannot record a failed reservation");
            }
        }
    }

    /// One materialization run; see the [module docs](self).
    async fn materialize(
        &self,
        id: &str,
        repair: bool,
        cancel: &CancellationToken,
    ) -> Result<Ended, ReservationError> {
        let Some(row) = reservation::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(Ended::Stopped);
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
        if !repair {
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
                Some(row) => self.publish(row),
                None => return Ok(Ended::Stopped),
            }
        }
        let ctx = FetchContext {
            dataset: Some(dataset.name.clone()),
            owner: Some(row.owner.clone()),
        };
        let progress = Arc::new(Progress::default());
        let halt = Arc::new(AtomicBool::new(false));
        let fetches = futures::stream::iter(members.iter().cloned())
            .map(|member| {
                let (cache, ctx) = (Arc::clone(&self.cache), ctx.clone());
                let (progress, halt) = (Arc::clone(&progress), Arc::clone(&halt));
                let holder = id.to_owned();
                async move {
                    if halt.load(Ordering::Relaxed) {
                        return (member, None);
                    }
                    let object = match &member {
                        Member::Whole(object) => object.clone(),
                        Member::Trim { source, spec } => {
                            let result = trimmed::build(&cache, source, spec, &ctx, &holder)
                                .await
                                .map(|built| Done {
                                    view: built.view,
                                    upstream: built.bytes_from_upstream,
                                    note: built.note,
                                });
                            if let Ok(done) = &result {
                                progress.objects_done.fetch_add(1, Ordering::Relaxed);
                                progress
                                    .bytes_done
                                    .fetch_add(done.view.size, Ordering::Relaxed);
                                progress
                                    .upstream
                                    .fetch_add(done.upstream, Ordering::Relaxed);
                            }
                            return (member, Some(result));
                        }
                    };
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
                    let result = cache.fetch(&object, &ctx, Some(&on_progress)).await;
                    progress
                        .in_flight
                        .fetch_sub(seen.load(Ordering::Relaxed), Ordering::Relaxed);
                    if let Ok(outcome) = &result {
                        progress.objects_done.fetch_add(1, Ordering::Relaxed);
                        progress
                            .bytes_done
                            .fetch_add(object.size, Ordering::Relaxed);
                        progress
                            .upstream
                            .fetch_add(outcome.bytes_from_upstream, Ordering::Relaxed);
                    }
                    let result = result.map(|outcome| Done {
                        view: object,
                        upstream: outcome.bytes_from_upstream,
                        note: None,
                    });
                    (member, Some(result))
                }
            })
            .buffer_unordered(self.settings.concurrency_objects);
        let mut fetches = pin!(fetches);
        let mut ticks = tokio::time::interval(self.settings.progress_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut written = (0, 0, 0);
        let mut failures: Vec<(ObjectKey, CacheError)> = Vec::new();
        let mut views: Vec<ObjectKey> = Vec::with_capacity(members.len());
        let mut notes: Vec<String> = Vec::new();
        let mut skipped = 0usize;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(Ended::Stopped),
                next = fetches.next() => match next {
                    None => break,
                    Some((_, None)) => skipped += 1,
                    Some((_, Some(Ok(done)))) => {
                        views.push(done.view);
                        notes.extend(done.note);
                    }
                    Some((member, Some(Err(err)))) => {
                        let object = member.object().clone();
                        if is_interrupted(&err) {
                            tracing::info!(reservation = %id, "cache shutting down; materialization stops");
                            return Ok(Ended::Stopped);
                        }
                        tracing::warn!(reservation = %id, object = %object, error = %err, "object could not be materialized");
                        if !is_object_specific(err.kind()) {
                            halt.store(true, Ordering::Relaxed);
                        }
                        failures.push((object, err));
                    }
                },
                _ = ticks.tick(), if !repair => {
                    let now = progress.snapshot(total_bytes);
                    if now != written {
                        match self.write_progress(id, now, base_upstream, None).await {
                            Ok(true) => written = now,
                            Ok(false) => return Ok(Ended::Stopped),
                            Err(err) => tracing::warn!(reservation = %id, error = %err, "cannot record progress"),
                        }
                    }
                }
            }
        }
        if cancel.is_cancelled() {
            return Ok(Ended::Stopped);
        }
        let snapshot = progress.snapshot(total_bytes);
        if !failures.is_empty() {
            let message = failure_message(objects.len(), &failures, skipped);
            if !repair {
                // The final counters, then the failure.
                let _ = self.write_progress(id, snapshot, base_upstream, None).await;
            }
            self.fail(id, message, repair).await;
            return Ok(Ended::Failed);
        }
        // READY promises the objects stay cached: their rows, written behind, must be in the
        // database before it is said.
        self.cache.flush().await;
        let path = match self.cache.create_view(id, &views).await {
            Ok(path) => path,
            Err(err) => {
                tracing::error!(reservation = %id, error = %err, "cannot build a reservation's view");
                let message = match err.kind() {
                    CacheErrorKind::NotFound => {
                        format!("the view could not be built: {err} (evicted while materializing?)")
                    }
                    _ => "the view could not be built: the office cache's disk failed".to_owned(),
                };
                self.fail(id, message, repair).await;
                return Ok(Ended::Failed);
            }
        };
        let path = path.to_string_lossy().into_owned();
        // The view's real size: trimmed files are known once built.
        let view_bytes: u64 = views.iter().map(|o| o.size).sum();
        notes.sort();
        let became_ready = if repair {
            let upstream = i64::try_from(base_upstream + snapshot.2).unwrap_or(i64::MAX);
            let updated = self
                .update(id, &[ReservationState::Ready], None, |q| {
                    q.col_expr(reservation::Column::LocalPath, Expr::value(Some(path)))
                        .col_expr(
                            reservation::Column::BytesFromUpstream,
                            Expr::value(upstream),
                        )
                })
                .await?;
            updated.map(|row| self.publish(row)).is_some()
        } else {
            let done = (members.len() as u64, view_bytes, snapshot.2);
            self.write_progress(id, done, base_upstream, Some((path, notes)))
                .await?
        };
        if !became_ready {
            // Released or expired meanwhile: whoever did it removes the view.
            return Ok(Ended::Stopped);
        }
        tracing::info!(
            reservation = %id,
            objects = members.len(),
            bytes = view_bytes,
            bytes_from_upstream = snapshot.2,
            "reservation ready"
        );
        Ok(Ended::Ready)
    }

    /// Writes progress `(objects done, bytes done, bytes from upstream this run)` of a
    /// materializing reservation; with `ready_at` (view, notes), also moves it to `ready` with
    /// that view, the bytes done as its total (trimmed files are only sized once built) and
    /// the notes. `false` when it is no longer materializing.
    async fn write_progress(
        &self,
        id: &str,
        (objects, bytes, upstream): (u64, u64, u64),
        base_upstream: u64,
        ready_at: Option<(String, Vec<String>)>,
    ) -> Result<bool, DbError> {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let upstream = as_i64(base_upstream.saturating_add(upstream));
        let updated = self
            .update(id, &[ReservationState::Materializing], None, |q| {
                let q = q
                    .col_expr(
                        reservation::Column::ObjectsDone,
                        Expr::value(as_i64(objects)),
                    )
                    .col_expr(reservation::Column::BytesDone, Expr::value(as_i64(bytes)))
                    .col_expr(
                        reservation::Column::BytesFromUpstream,
                        Expr::value(upstream),
                    );
                match ready_at {
                    Some((path, notes)) => q
                        .col_expr(
                            reservation::Column::State,
                            Expr::value(ReservationState::Ready),
                        )
                        .col_expr(reservation::Column::LocalPath, Expr::value(Some(path)))
                        .col_expr(reservation::Column::BytesTotal, Expr::value(as_i64(bytes)))
                        .col_expr(
                            reservation::Column::Notes,
                            Expr::value((!notes.is_empty()).then(|| serde_json::json!(notes))),
                        ),
                    None => q,
                }
            })
            .await?;
        Ok(updated.map(|row| self.publish(row)).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, size: u64) -> ObjectKey {
        ObjectKey::new("b", name, "e", size)
    }

    #[test]
    fn pin_ledger_counts_shared_objects_once() {
        let mut ledger = PinLedger::default();
        let a: Arc<[ObjectKey]> = vec![key("1", 10), key("2", 20)].into();
        let b: Arc<[ObjectKey]> = vec![key("2", 20), key("3", 30)].into();
        assert_eq!(ledger.additional(&a), 30);
        ledger.hold("r1", Arc::clone(&a));
        ledger.hold("r1", Arc::clone(&a)); // idempotent
        assert_eq!(ledger.bytes, 30);
        assert_eq!(ledger.additional(&b), 30);
        ledger.hold("r2", Arc::clone(&b));
        assert_eq!(ledger.bytes, 60);
        ledger.release("r1");
        assert_eq!(ledger.bytes, 50);
        ledger.release("r1");
        ledger.release("r2");
        assert_eq!(ledger.bytes, 0);
        assert!(ledger.counts.is_empty());
    }

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
    fn ttl_seconds_must_be_positive() {
        assert_eq!(ttl_from_seconds(60).expect("ok"), Duration::from_secs(60));
        for bad in [0, -1, i64::MIN] {
            let err = ttl_from_seconds(bad).expect_err("bad");
            assert_eq!(err.field(), Some("ttlSeconds"));
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn failure_messages_name_at_most_ten_objects() {
        let failures: Vec<_> = (0..13)
            .map(|i| {
                (
                    key(&format!("k{i}"), 1),
                    CacheError::NotCached {
                        object: format!("s3://b/k{i}"),
                    },
                )
            })
            .collect();
        let message = failure_message(20, &failures, 2);
        assert!(
            message.starts_with(
                "13 of 20 objects could not be materialized: s3://b/k0: no longer exists upstream"
            ),
            "{message}"
        );
        assert!(message.contains("s3://b/k9"), "{message}");
        assert!(!message.contains("s3://b/k10"), "{message}");
        assert!(message.contains("and 3 more"), "{message}");
        assert!(
            message.contains("2 objects were not attempted"),
            "{message}"
        );
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

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
