//! The office cache: a content store (local disk, or the office S3 tier: `content/`) keyed
//! by (bucket, key, ETag), filled from the upstream store with parallel ranged GETs, one
//! download per object however many callers need it (single-flight), read through while it
//! downloads, evicted in LRU order among unpinned entries, with views of hard links for
//! reservations (on local disk) and an egress ledger.
//!
//! - [`OfficeCache`] is the service object; `mod.rs` holds its public calls.
//! - [`CacheBook`] (`book.rs`) is the bookkeeping as a pure structure with its invariants.
//! - `flight.rs` downloads one object (the single-flight unit), `stream.rs` streams byte
//!   ranges from content and staging files, `views.rs` builds views, `reconcile.rs` makes
//!   the disk and the `cache_entries` table agree at start-up, `recorder.rs` writes the
//!   egress ledger and access times in the background, and `held.rs` counts bytes kept
//!   beside the content store (the gateway's multipart parts) against the capacity.
//!
//! # Lifecycle of an entry
//!
//! A missing object is admitted (space planned, [`Full`](CacheErrorKind::Full) if it cannot
//! fit, least recently used unpinned entries evicted to make room), downloaded into
//! `staging/`, verified (size; MD5 for a single-part ETag), renamed into
//! `objects/<xx>/<sha256>` and recorded as a `cache_entries` row in state `ready`; its
//! fsync comes before the rename or, by default, behind it (`durability.rs`: after an unclean
//! reboot the entries that may not have reached the disk are dropped). Nothing half-written
//! is ever under `objects/`. The watermark check happens at admission, with the
//! incoming bytes counted (they are reserved while downloading, so the insert itself does not
//! change the used bytes): if used + incoming exceeds the high watermark, unpinned entries
//! are evicted in LRU order down to the low watermark, before the download writes a byte.
//!
//! Downloads in progress cannot be evicted. When only unpinned ones stand in the way (the
//! object would fit next to the pinned bytes), admission waits for a download to end (it is
//! then evictable, or gone) and plans again; it fails with `Full` at once only when the object
//! cannot fit even once every download has ended.
//!
//! (Over 600 lines: `OfficeCache`, the cache's public API as one type; the book, flights, views, entries, recorder and durability are its submodules.)

mod book;
mod buffers;
mod content;
mod durability;
mod entries;
mod error;
mod flight;
mod held;
mod layout;
mod office_pins;
mod reconcile;
mod recorder;
mod stream;
mod types;
mod views;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::stream::BoxStream;
use sea_orm::DatabaseConnection;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use milepost_cluster::ClusterNode;
use milepost_schema::enums::CacheEntryState;

/// Crate-internal shorthand: the object identity is the store's.
pub(crate) use milepost_store::ObjectKey;
use milepost_store::{ByteRange, ObjectStore};

pub use book::{CacheBook, EntryState, Full, Overcommitted};
pub use content::TierSettings;
pub use durability::Durability;
pub use error::{CacheError, CacheErrorKind};
pub use held::{Held, HELD_HOLDER};
pub use types::{CacheRead, CacheSettings, CacheStatsSnapshot, FetchContext, FetchOutcome};

use buffers::ChunkPool;
use content::{ContentStore, DiskContent, InstallKind, Opened, TierContent};
use durability::Syncer;
use flight::{Flight, FlightEnd, Local, RangeOrigin};
use layout::Layout;
use recorder::{Recorder, ServeRecord};
use stream::Source;

/// The holder that pins `dirty` entries found at start-up (written locally, not yet in S3),
/// so that they are never evicted.
pub const WRITE_BACK_HOLDER: &str = "write-back";

/// The office cache; see the [module documentation](self). Shared as `Arc<OfficeCache>`;
/// every call takes `&self`.
pub struct OfficeCache {
    inner: Arc<Inner>,
}

/// The state shared by the cache and its background tasks.
struct Inner {
    settings: CacheSettings,
    layout: Layout,
    db: DatabaseConnection,
    store: Arc<dyn ObjectStore>,
    /// The global limit of ranged GETs in flight.
    permits: Semaphore,
    /// The buffers reads of cached bytes reuse.
    read_buffers: Arc<ChunkPool>,
    state: Mutex<State>,
    counters: Counters,
    recorder: Recorder,
    /// Where installed entries' bytes are: local files or the office tier.
    content: Arc<dyn ContentStore>,
    /// Downloads and deletions in progress.
    tasks: TaskTracker,
    /// Stops downloads at shutdown.
    stop: CancellationToken,
    /// Signalled whenever a download ends (completed or failed): admissions held back by
    /// unpinned downloads in progress wait for it, then plan again.
    downloads_ended: watch::Sender<()>,
    /// In an office cluster: this node. The office tier and `cache_entries` are then shared
    /// with the other nodes (see [`open_cluster`](OfficeCache::open_cluster)).
    cluster: Option<Arc<ClusterNode>>,
}

/// What the cache holds and does now, under one lock held only for bookkeeping (no I/O).
struct State {
    book: CacheBook,
    /// Downloads in progress, by object: the single-flight map.
    flights: HashMap<ObjectKey, Arc<Flight>>,
    /// Entries being deleted (evicted): a new download of the same object waits for the
    /// deletion, so that a late delete never removes its file or row. The sender is dropped
    /// when the deletion is done.
    deleting: HashMap<ObjectKey, watch::Receiver<()>>,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_served: AtomicU64,
    bytes_from_upstream: AtomicU64,
}

/// An entry chosen for eviction, with the gate that holds back new downloads of it until
/// its file and row are deleted.
struct Victim {
    object: ObjectKey,
    _gate: watch::Sender<()>,
}

/// What a caller needing an object finds.
enum Lookup {
    /// Cached.
    Hit,
    /// Downloading (`started`: by this caller).
    Flight { flight: Arc<Flight>, started: bool },
    /// Being deleted, or no room until an unpinned download in progress ends: wait for the
    /// receiver to change or close, then look again.
    Wait(watch::Receiver<()>),
}

impl fmt::Debug for OfficeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfficeCache")
            .field("root", &self.inner.layout.root)
            .field("office", &self.inner.settings.office)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl OfficeCache {
    /// Opens the cache in `settings.root` (creating `objects/`, `staging/` and `views/`),
    /// makes the disk and the `cache_entries` table agree (staging files removed, content
    /// files without a row removed, rows whose file is missing or has the wrong size dropped,
    /// rows in state `staging` dropped), rebuilds the bookkeeping from the rows (LRU order by
    /// their last access; `dirty` entries pinned by [`WRITE_BACK_HOLDER`]) and logs what it
    /// fixed. Must be called within a tokio runtime: it starts the ledger writer.
    pub async fn open(
        settings: CacheSettings,
        db: DatabaseConnection,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<OfficeCache>, CacheError> {
        Self::open_with(settings, db, store, None).await
    }

    /// [`open`](Self::open) with the content store in the office tier `tier` when given
    /// (`[cache] tier = "s3"`) instead of `objects/` under the root; staging stays on the
    /// local disk, and there are no views (see [`keeps_views`](Self::keeps_views)).
    /// Reconciliation compares the tier's listing with the table.
    pub async fn open_with(
        settings: CacheSettings,
        db: DatabaseConnection,
        store: Arc<dyn ObjectStore>,
        tier: Option<TierSettings>,
    ) -> Result<Arc<OfficeCache>, CacheError> {
        Self::open_inner(settings, db, store, tier, None).await
    }

    /// [`open_with`](Self::open_with) the office tier, as `node` of an office cluster: the
    /// tier and the `cache_entries` rows are shared with the other nodes.
    ///
    /// - One download per object in the office: a node downloads an object under a claim
    ///   (`node.claim`, keyed by bucket, key and ETag) and writes its row before releasing
    ///   it; a node that needed it meanwhile waits for the claim, finds the row, and reads
    ///   the object from the tier instead of the upstream.
    /// - Entries installed by other nodes are learnt when needed (a row found for a miss);
    ///   one removed by another node is forgotten when its tier object is found missing.
    /// - Start-up never removes tier objects without a row (another node may be installing
    ///   them), and eviction spares entries another node needs (dirty, or in an active
    ///   reservation's dataset).
    /// - The capacity bounds what each node admits; the book of one node counts the entries
    ///   it has learnt, so the office tier holds at most the capacity per node.
    pub async fn open_cluster(
        settings: CacheSettings,
        db: DatabaseConnection,
        store: Arc<dyn ObjectStore>,
        tier: TierSettings,
        node: Arc<ClusterNode>,
    ) -> Result<Arc<OfficeCache>, CacheError> {
        Self::open_inner(settings, db, store, Some(tier), Some(node)).await
    }

    async fn open_inner(
        settings: CacheSettings,
        db: DatabaseConnection,
        store: Arc<dyn ObjectStore>,
        tier: Option<TierSettings>,
        cluster: Option<Arc<ClusterNode>>,
    ) -> Result<Arc<OfficeCache>, CacheError> {
        settings.validate()?;
        let layout = Layout::new(&settings.root);
        let book = CacheBook::new(
            settings.capacity,
            settings.high_watermark,
            settings.low_watermark,
        );
        let (book, content): (_, Arc<dyn ContentStore>) = match tier {
            None => {
                let boot_id = durability::boot_id();
                let book = reconcile::reconcile(&layout, &db, book, boot_id.clone()).await?;
                let syncer = match (settings.durability, boot_id) {
                    (Durability::Deferred, Some(boot_id)) => {
                        Some(Syncer::start(layout.root.clone(), boot_id))
                    }
                    (Durability::Deferred, None) => {
                        tracing::warn!("the kernel gives no boot id: every download is fsynced before it is installed (cache durability immediate)");
                        None
                    }
                    (Durability::Immediate, _) => None,
                };
                (
                    book,
                    Arc::new(DiskContent::new(layout.root.clone(), syncer)),
                )
            }
            Some(tier) => {
                tier.validate()?;
                let tier = TierContent::new(tier);
                tier.check().await?;
                let book =
                    reconcile::reconcile_tier(&layout, &db, book, &tier, cluster.is_some()).await?;
                (book, Arc::new(tier))
            }
        };
        tracing::info!(content = %content.describe(), "office cache content store");
        let recorder = Recorder::start(db.clone(), settings.office.clone());
        let inner = Arc::new(Inner {
            permits: Semaphore::new(settings.concurrency),
            read_buffers: ChunkPool::new(
                usize::try_from(stream::READ_CHUNK).unwrap_or(usize::MAX),
                stream::IDLE_READ_BUFFERS,
            ),
            layout,
            db,
            store,
            state: Mutex::new(State {
                book,
                flights: HashMap::new(),
                deleting: HashMap::new(),
            }),
            counters: Counters::default(),
            recorder,
            content,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            downloads_ended: watch::channel(()).0,
            cluster,
            settings,
        });
        // The capacity may have shrunk since the entries were written.
        let victims = {
            let mut state = inner.lock();
            let planned = state
                .book
                .plan_eviction(0)
                .unwrap_or_else(|_| state.book.evictable().map(|(key, _)| key.clone()).collect());
            inner.take_victims(&mut state, planned)
        };
        if !victims.is_empty() {
            tracing::info!(
                count = victims.len(),
                "office cache above its high watermark at start-up, evicting"
            );
            inner.delete_victims(victims).await;
        }
        Ok(Arc::new(OfficeCache { inner }))
    }

    /// Makes `object` cached and returns its content file. Concurrent callers needing the
    /// same missing object share one download (single-flight); the caller that started it is
    /// credited with its bytes in [`FetchOutcome::bytes_from_upstream`] and the egress
    /// ledger. `progress`, if given, is called with the bytes downloaded so far as they land
    /// (also when joining another caller's download). The download goes on if this call is
    /// dropped.
    ///
    /// When the object fits only once unpinned downloads in progress have ended (they cannot
    /// be evicted before), this waits for them.
    ///
    /// Errors: [`Full`](CacheErrorKind::Full) before any download when the object cannot fit
    /// even after evicting every unpinned entry; [`NotFound`](CacheErrorKind::NotFound),
    /// [`PreconditionFailed`](CacheErrorKind::PreconditionFailed) (the object changed
    /// upstream), [`Upstream`](CacheErrorKind::Upstream), [`Corrupt`](CacheErrorKind::Corrupt)
    /// (verification failed) or [`Io`](CacheErrorKind::Io); nothing is cached then.
    pub async fn fetch(
        &self,
        object: &ObjectKey,
        ctx: &FetchContext,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<FetchOutcome, CacheError> {
        self.fetch_from(object, None, ctx, progress).await
    }

    async fn fetch_from(
        &self,
        object: &ObjectKey,
        origin: Option<&RangeOrigin>,
        ctx: &FetchContext,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<FetchOutcome, CacheError> {
        loop {
            match self.inner.lookup(object, origin, ctx)? {
                Lookup::Hit => {
                    self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(FetchOutcome {
                        path: self.inner.content.local_path(object),
                        bytes_from_upstream: 0,
                        hit: true,
                    });
                }
                Lookup::Wait(mut gate) => {
                    // The deletion is done, or a download ended: look again.
                    let _ = gate.changed().await;
                }
                Lookup::Flight { flight, started } => {
                    self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                    let downloaded = flight.wait(progress).await?;
                    return Ok(FetchOutcome {
                        path: self.inner.content.local_path(object),
                        bytes_from_upstream: if started { downloaded } else { 0 },
                        hit: false,
                    });
                }
            }
        }
    }

    /// Reads `range` of `object`: from its content file when cached (counts as an access for
    /// LRU), otherwise through the download (started or joined, single-flight): the body
    /// streams the requested bytes as they land, without buffering the object and without a
    /// second upstream request. Returns once the first requested bytes are available, so
    /// that an upstream failure is an error here rather than a broken body. Dropping the body
    /// does not stop the download. Each read adds a row to the egress ledger when its body is
    /// dropped, with the bytes it served.
    ///
    /// Errors: [`InvalidRange`](CacheErrorKind::InvalidRange) before any upstream traffic
    /// when `range` cannot be satisfied for `object.size` (any range of an empty object);
    /// otherwise those of [`fetch`](Self::fetch).
    pub async fn read(
        &self,
        object: &ObjectKey,
        range: ByteRange,
        ctx: &FetchContext,
    ) -> Result<CacheRead, CacheError> {
        let Some((start, end)) = range.resolve(object.size) else {
            return Err(CacheError::InvalidRange {
                object: object.to_string(),
                range: range.to_string(),
                size: object.size,
            });
        };
        let mut vanished = 0;
        loop {
            let (source, hit) = match self.inner.lookup(object, None, ctx)? {
                Lookup::Hit => match self.inner.content.open(object, start, end + 1).await {
                    Ok(Opened::File(file)) => (Source::File(file), true),
                    Ok(Opened::Stream(stream)) => (Source::Stream(stream), true),
                    // Evicted between the lookup and the open (by another node of a cluster:
                    // forgotten here too): look again.
                    Err(err) if err.kind() == CacheErrorKind::NotFound && vanished < 3 => {
                        vanished += 1;
                        self.inner.forget_vanished(object);
                        continue;
                    }
                    Err(err) => return Err(err),
                },
                Lookup::Wait(mut gate) => {
                    let _ = gate.changed().await;
                    continue;
                }
                Lookup::Flight { flight, .. } => {
                    let mut progress = flight.subscribe();
                    flight::available_from(&mut progress, &flight, start).await?;
                    (Source::Flight { flight, progress }, false)
                }
            };
            let counter = if hit {
                &self.inner.counters.hits
            } else {
                &self.inner.counters.misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let record =
                ServeRecord::new(Arc::clone(&self.inner), object.clone(), ctx.clone(), hit);
            return Ok(CacheRead {
                total_size: object.size,
                range: (start, end),
                hit,
                body: stream::range_stream(
                    source,
                    object.clone(),
                    start,
                    end,
                    Some(record),
                    Arc::clone(&self.inner.read_buffers),
                ),
            });
        }
    }

    /// The entry under which [`fetch_range`](Self::fetch_range) caches bytes
    /// `start..start + len` of `source`: same bucket and ETag, key
    /// `<key>#bytes=<start>-<end inclusive>` (no S3 key of a view can collide with it: views
    /// never hold these entries), size `len`.
    pub fn range_key(source: &ObjectKey, start: u64, len: u64) -> ObjectKey {
        ObjectKey::new(
            source.bucket.clone(),
            format!(
                "{}#bytes={start}-{}",
                source.key,
                start + len.saturating_sub(1)
            ),
            source.etag.clone(),
            len,
        )
    }

    /// Makes bytes `start..start + len` of `source` cached as an entry of their own
    /// ([`range_key`](Self::range_key)). When the office holds `source` whole (cached, or
    /// being downloaded whole) they are copied from it, waiting for the bytes needed of a
    /// download in progress, without any upstream request (`bytes_from_upstream` 0, no
    /// ledger row); otherwise they are read from upstream with ranged GETs carrying
    /// `If-Match: <source etag>` (a changed source is
    /// [`PreconditionFailed`](CacheErrorKind::PreconditionFailed)). Everything else is as
    /// [`fetch`](Self::fetch): single-flight, the egress ledger, LRU, pins by that key. Used to
    /// read the summary and the chunks of MCAP logs a scenario needs, so that overlapping
    /// scenarios of one log never fetch a chunk twice.
    ///
    /// Errors: [`InvalidRange`](CacheErrorKind::InvalidRange) for an empty range or one past
    /// `source.size`; otherwise those of [`fetch`](Self::fetch).
    pub async fn fetch_range(
        &self,
        source: &ObjectKey,
        start: u64,
        len: u64,
        ctx: &FetchContext,
    ) -> Result<(ObjectKey, FetchOutcome), CacheError> {
        if len == 0 || start.checked_add(len).is_none_or(|end| end > source.size) {
            return Err(CacheError::InvalidRange {
                object: source.to_string(),
                range: format!(
                    "bytes={start}-{}",
                    start.saturating_add(len).saturating_sub(1)
                ),
                size: source.size,
            });
        }
        let entry = Self::range_key(source, start, len);
        let origin = RangeOrigin {
            key: source.key.clone(),
            offset: start,
            source_size: source.size,
        };
        let outcome = self.fetch_from(&entry, Some(&origin), ctx, None).await?;
        Ok((entry, outcome))
    }

    /// The cached entry of (`bucket`, `key`, `etag`) whatever its size, for files built in the
    /// office ([`insert_file`](Self::insert_file)) whose size is known only once built. Counts
    /// as an access.
    pub fn find_built(&self, bucket: &str, key: &str, etag: &str) -> Option<ObjectKey> {
        let mut state = self.inner.lock();
        let found = state.book.find_ready(bucket, key, etag).cloned()?;
        state.book.touch(&found);
        drop(state);
        self.inner.recorder.touch(&found);
        Some(found)
    }

    /// A new staging path for a file built in the office that [`insert_file`](Self::insert_file)
    /// will take (left-over staging files are removed at start-up).
    pub fn staging_path(&self, object: &ObjectKey) -> PathBuf {
        self.inner.layout.staging_path(object)
    }

    /// Puts a file built in the office (not downloaded: a trimmed log) into the content store
    /// as `object` (its `size` must be the file's): admission and eviction as for a download,
    /// then fsync, read-only, rename from `staging` and the `cache_entries` row. If `object`
    /// is cached already (built by someone else meanwhile), the staging file is removed and
    /// the cached one kept. Errors: [`Full`](CacheErrorKind::Full), [`Io`](CacheErrorKind::Io).
    pub async fn insert_file(
        &self,
        object: &ObjectKey,
        staging: PathBuf,
    ) -> Result<(), CacheError> {
        self.install_built(object, staging, false).await
    }

    /// Puts a file written in the office (an upload through the gateway: fsynced, verified by
    /// the caller) into the content store as `object`, `dirty`: its row says so and
    /// [`WRITE_BACK_HOLDER`] pins it, so it is never evicted before
    /// [`mark_clean`](Self::mark_clean) (S3 has it) or [`discard_dirty`](Self::discard_dirty)
    /// (a later write replaced it). Admission, eviction and errors as
    /// [`insert_file`](Self::insert_file); the same bytes already cached become dirty.
    pub async fn insert_dirty(
        &self,
        object: &ObjectKey,
        staging: PathBuf,
    ) -> Result<(), CacheError> {
        self.install_built(object, staging, true).await
    }

    /// `object`, written in the office, is now in S3 with `upstream_etag`: its entry becomes
    /// an ordinary (evictable) one. When S3 gave it another ETag than the office did (S3's
    /// multipart ETags depend on the part size), the same content is also entered under the
    /// upstream ETag (a hard link: one file on disk, counted twice, which errs on the safe
    /// side), so that readers resolving the object through S3 find it cached while datasets
    /// frozen with the office ETag still do too. Returns the upstream entry's key.
    pub async fn mark_clean(
        &self,
        object: &ObjectKey,
        upstream_etag: &str,
    ) -> Result<ObjectKey, CacheError> {
        let inner = &self.inner;
        inner.settle_entry_rows().await;
        entries::set_state(&inner.db, object, CacheEntryState::Ready).await?;
        inner.lock().book.unpin(WRITE_BACK_HOLDER, object);
        if upstream_etag == object.etag {
            return Ok(object.clone());
        }
        let upstream = ObjectKey::new(
            object.bucket.clone(),
            object.key.clone(),
            upstream_etag.to_owned(),
            object.size,
        );
        {
            let mut state = inner.lock();
            if state.book.state(&upstream).is_some() {
                return Ok(upstream);
            }
            // Admitted like any insert, so that the capacity accounting stays true.
            match state.book.plan_eviction(upstream.size) {
                Ok(planned) if planned.is_empty() => {
                    state.book.begin(upstream.clone(), upstream.size);
                }
                // No room without evicting: leave it; a reader will fetch it if needed.
                _ => return Ok(upstream),
            }
        }
        let linked = inner.content.alias(object, &upstream).await;
        let recorded = match linked {
            Ok(()) => {
                entries::upsert_ready(&inner.db, &upstream, &Layout::content_relative(&upstream))
                    .await
            }
            Err(err) => Err(err),
        };
        {
            let mut state = inner.lock();
            if recorded.is_ok() {
                state.book.complete(&upstream);
            } else {
                state.book.remove(&upstream);
            }
        }
        inner.downloads_ended.send_replace(());
        recorded.map(|()| upstream)
    }

    /// `object`, written in the office, was replaced by a later write of its key before it
    /// reached S3: it will never be uploaded, so it becomes an ordinary entry, evicted in its
    /// turn.
    pub async fn discard_dirty(&self, object: &ObjectKey) -> Result<(), CacheError> {
        self.inner.settle_entry_rows().await;
        entries::set_state(&self.inner.db, object, CacheEntryState::Ready).await?;
        self.inner.lock().book.unpin(WRITE_BACK_HOLDER, object);
        Ok(())
    }

    /// The entries that are dirty (recorded so in the database): written in the office and
    /// not yet in S3.
    pub async fn dirty_entries(&self) -> Result<Vec<ObjectKey>, CacheError> {
        entries::dirty(&self.inner.db).await
    }

    async fn install_built(
        &self,
        object: &ObjectKey,
        staging: PathBuf,
        dirty: bool,
    ) -> Result<(), CacheError> {
        enum Step {
            Cached,
            Wait(watch::Receiver<()>),
            Admitted(Vec<Victim>),
            Full(CacheError),
        }
        let inner = &self.inner;
        let victims = loop {
            let step = {
                let mut state = inner.lock();
                if dirty {
                    // Before admission, so that the entry is protected from the moment it
                    // exists (pinning twice is pinning once).
                    state.book.pin(WRITE_BACK_HOLDER, [object]);
                }
                if state.book.is_ready(object) {
                    state.book.touch(object);
                    Step::Cached
                } else if let Some(gate) = state.deleting.get(object) {
                    Step::Wait(gate.clone())
                } else if state.book.state(object).is_some() {
                    // Being inserted by another caller: wait for it to end.
                    Step::Wait(inner.downloads_ended.subscribe())
                } else {
                    match state.book.plan_eviction(object.size) {
                        Ok(planned) => {
                            let victims = inner.take_victims(&mut state, planned);
                            state.book.begin(object.clone(), object.size);
                            Step::Admitted(victims)
                        }
                        Err(full) if full.fits_once_downloads_end() => {
                            Step::Wait(inner.downloads_ended.subscribe())
                        }
                        Err(full) => Step::Full(CacheError::Full {
                            object: object.to_string(),
                            needed: object.size,
                            capacity: full.capacity,
                            used: full.used,
                            pinned: full.pinned,
                            unevictable: full.unevictable,
                        }),
                    }
                }
            };
            match step {
                Step::Cached => {
                    flight::remove_quietly(staging).await;
                    if dirty {
                        // The same bytes are cached already, perhaps as a download whose file
                        // and name are not on disk yet (deferred durability): they are the
                        // office's only copy from now on.
                        inner.content.make_durable(object).await?;
                        let relative = Layout::content_relative(object);
                        inner.settle_entry_rows().await;
                        entries::upsert(&inner.db, object, &relative, CacheEntryState::Dirty)
                            .await?;
                    }
                    return Ok(());
                }
                Step::Wait(mut gate) => {
                    let _ = gate.changed().await;
                }
                Step::Admitted(victims) => break victims,
                Step::Full(err) => {
                    if dirty {
                        inner.lock().book.unpin(WRITE_BACK_HOLDER, object);
                    }
                    flight::remove_quietly(staging).await;
                    return Err(err);
                }
            }
        };
        // Admitted: the rest runs as a task of its own, so that a caller dropped half-way
        // (a released reservation) never leaves a pending entry in the book.
        let task = {
            let (inner, object) = (Arc::clone(inner), object.clone());
            self.inner.tasks.spawn(async move {
                inner.delete_victims(victims).await;
                let installed = async {
                    let file = flight::blocking(format!("opening the built file of {object}"), {
                        let staging = staging.clone();
                        move || std::fs::File::open(staging)
                    })
                    .await?;
                    // The only copy until written back: durable before it is installed.
                    let kind = if dirty {
                        InstallKind::Upload
                    } else {
                        InstallKind::Built
                    };
                    inner
                        .content
                        .install(&object, &Arc::new(file), &staging, kind)
                        .await?;
                    let relative = Layout::content_relative(&object);
                    inner.settle_entry_rows().await;
                    if dirty {
                        // A dirty entry without its row would be lost at the next start-up:
                        // the upload is not acknowledged unless the row is written.
                        entries::upsert(&inner.db, &object, &relative, CacheEntryState::Dirty)
                            .await?;
                    } else if let Err(err) = entries::upsert_ready(&inner.db, &object, &relative).await
                    {
                        // As for downloads: the file is in place; without its row the next
                        // start-up removes it as an orphan.
                        tracing::error!(object = %object, error = %err, "cannot record a cache entry");
                    }
                    Ok::<(), CacheError>(())
                }
                .await;
                {
                    let mut state = inner.lock();
                    if installed.is_ok() {
                        state.book.complete(&object);
                    } else {
                        state.book.remove(&object);
                        if dirty {
                            state.book.unpin(WRITE_BACK_HOLDER, &object);
                        }
                    }
                }
                inner.downloads_ended.send_replace(());
                match installed {
                    Ok(()) => Ok(()),
                    Err(err) => {
                        flight::remove_quietly(staging).await;
                        Err(err)
                    }
                }
            })
        };
        task.await.map_err(|err| {
            CacheError::io(
                format!("installing the built file of {object}"),
                std::io::Error::other(err),
            )
        })?
    }

    /// `holder` (a reservation id) pins `objects`: they are never evicted until
    /// [`unpin_all`](Self::unpin_all). Objects not cached yet may be pinned: they are
    /// protected once they land.
    pub fn pin(&self, holder: &str, objects: &[ObjectKey]) {
        self.inner.lock().book.pin(holder, objects);
    }

    /// `holder` pins `objects` if every pinned object (by any holder, cached or not) still
    /// fits in the cache with them; otherwise nothing changes. Check and pin happen under
    /// the cache's lock, so two admissions cannot both take the last room. This is how
    /// reservations are admitted: the cache's book is the one count of pins.
    pub fn admit_pins(&self, holder: &str, objects: &[ObjectKey]) -> Result<(), Overcommitted> {
        self.inner.lock().book.admit_pins(holder, objects)
    }

    /// `holder` releases `object` alone (another holder's pin on it stays).
    pub fn unpin(&self, holder: &str, object: &ObjectKey) {
        self.inner.lock().book.unpin(holder, object);
    }

    /// `holder` releases every object it pins. Returns them, to pin them again if what they
    /// were released for does not happen.
    pub fn unpin_all(&self, holder: &str) -> Vec<ObjectKey> {
        let released = self.inner.lock().book.unpin_all(holder);
        tracing::debug!(holder, released = released.len(), "unpinned");
        released
    }

    /// Makes the view `name`: `root/views/<name>/<bucket>/<key>` hard links to the content
    /// files of `objects`, replacing any view of that name (the new tree appears at once,
    /// complete). Every object must be cached ([`NotFound`](CacheErrorKind::NotFound)
    /// otherwise); a name or key that could escape the view directory (`..`, `.` or empty
    /// segments, absolute, NUL, backslash) is refused with
    /// [`Invalid`](CacheErrorKind::Invalid). Returns the view's directory.
    pub async fn create_view(
        &self,
        name: &str,
        objects: &[ObjectKey],
    ) -> Result<PathBuf, CacheError> {
        views::create(&self.inner, name, objects).await
    }

    /// Removes the view `name` (the content files stay). Removing a missing view succeeds.
    pub async fn remove_view(&self, name: &str) -> Result<(), CacheError> {
        views::remove(&self.inner, name).await
    }

    /// Whether `object` is in the content store.
    pub fn is_cached(&self, object: &ObjectKey) -> bool {
        self.inner.lock().book.is_ready(object)
    }

    /// The content file of `object`, if it is cached and the content store keeps local files
    /// (not with the office tier: see [`read_content`](Self::read_content) and
    /// [`local_file`](Self::local_file)).
    pub fn content_path(&self, object: &ObjectKey) -> Option<PathBuf> {
        if !self.is_cached(object) {
            return None;
        }
        self.inner.content.local_path(object)
    }

    /// The name of `object`'s content in the content store (`objects/<xx>/<sha256>`, under
    /// the root or the tier's prefix), as `cache_entries` and the write-back journal record it.
    pub fn content_name(object: &ObjectKey) -> String {
        Layout::content_relative(object)
    }

    /// Whether reservations get views (directories of hard links): only when the content
    /// store keeps local files.
    pub fn keeps_views(&self) -> bool {
        self.inner
            .content
            .local_path(&ObjectKey::new("", "", "", 0))
            .is_some()
    }

    /// Whether `a` and `b` are cached as one content (an office write S3 named with another
    /// ETag: [`mark_clean`](Self::mark_clean)).
    pub async fn same_content(&self, a: &ObjectKey, b: &ObjectKey) -> bool {
        self.is_cached(a) && self.is_cached(b) && self.inner.content.same_content(a, b).await
    }

    /// Bytes `start..=end` of `object` as a stream, if it is cached: from its content (a local
    /// file or the office tier), without an upstream request, a ledger row or an access. For
    /// the write-back's uploads and the gateway's reads of office writes. `None` when it is not
    /// cached (evicted meanwhile).
    pub async fn read_content(
        &self,
        object: &ObjectKey,
        start: u64,
        end: u64,
    ) -> Result<Option<BoxStream<'static, Result<bytes::Bytes, CacheError>>>, CacheError> {
        if start > end || end >= object.size {
            return Err(CacheError::InvalidRange {
                object: object.to_string(),
                range: format!("bytes={start}-{end}"),
                size: object.size,
            });
        }
        if !self.inner.holds(object).await? {
            return Ok(None);
        }
        let source = match self.inner.content.open(object, start, end + 1).await {
            Ok(Opened::File(file)) => Source::File(file),
            Ok(Opened::Stream(stream)) => Source::Stream(stream),
            Err(err) if err.kind() == CacheErrorKind::NotFound => {
                self.inner.forget_vanished(object);
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        Ok(Some(stream::range_stream(
            source,
            object.clone(),
            start,
            end,
            None,
            Arc::clone(&self.inner.read_buffers),
        )))
    }

    /// `object`'s content as a local file, if it is cached: its content file, or with the
    /// office tier a copy in `staging/` removed when the returned value is dropped. For readers
    /// that need a file (the trimmer's writer, multipart uploads). `None` when it is not cached.
    pub async fn local_file(&self, object: &ObjectKey) -> Result<Option<LocalFile>, CacheError> {
        if !self.inner.holds(object).await? {
            return Ok(None);
        }
        if let Some(path) = self.inner.content.local_path(object) {
            return Ok(Some(LocalFile {
                path,
                scratch: false,
            }));
        }
        let path = self.inner.layout.staging_path(object);
        let mut scratch = LocalFile {
            path: path.clone(),
            scratch: true,
        };
        let stream = if object.size == 0 {
            None
        } else {
            match self.read_content(object, 0, object.size - 1).await? {
                Some(stream) => Some(stream),
                None => {
                    scratch.scratch = false;
                    return Ok(None);
                }
            }
        };
        let mut file = tokio::fs::File::create(&path).await.map_err(|err| {
            CacheError::io(format!("copying {object} to {}", path.display()), err)
        })?;
        if let Some(mut stream) = stream {
            use futures::StreamExt as _;
            use tokio::io::AsyncWriteExt as _;
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk?).await.map_err(|err| {
                    CacheError::io(format!("copying {object} to {}", path.display()), err)
                })?;
            }
        }
        // tokio's file writes in the background: done only once flushed.
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|err| {
                CacheError::io(format!("copying {object} to {}", path.display()), err)
            })?;
        Ok(Some(scratch))
    }

    /// Bytes `start..end_exclusive` of `object` if it is in the content store (an office
    /// write, not yet uploaded or uploaded, or a download), read from its content file: no
    /// upstream request, no ledger row, and not an access (a look at a log's footer does not
    /// make the log recently used). `None` when it is not cached, or was evicted meanwhile.
    /// For readers that must not start a download (the catalog sync's footer reads).
    ///
    /// Errors: [`InvalidRange`](CacheErrorKind::InvalidRange) for a range past `object.size`;
    /// [`Io`](CacheErrorKind::Io) when the content file cannot be read.
    pub async fn read_cached(
        &self,
        object: &ObjectKey,
        start: u64,
        end_exclusive: u64,
    ) -> Result<Option<bytes::Bytes>, CacheError> {
        if start > end_exclusive || end_exclusive > object.size {
            return Err(CacheError::InvalidRange {
                object: object.to_string(),
                range: format!("bytes={start}-{}", end_exclusive.saturating_sub(1)),
                size: object.size,
            });
        }
        if !self.is_cached(object) {
            return Ok(None);
        }
        let len = usize::try_from(end_exclusive - start).map_err(|err| {
            CacheError::io(format!("reading {object}"), std::io::Error::other(err))
        })?;
        self.inner.content.read_at(object, start, len).await
    }

    /// Capacity, usage and the counters since start (the api adds the ledger's totals).
    pub fn stats(&self) -> CacheStatsSnapshot {
        let (used, pinned, objects) = {
            let state = self.inner.lock();
            (
                state.book.used(),
                state.book.pinned(),
                state.book.ready_count() as u64,
            )
        };
        let counters = &self.inner.counters;
        CacheStatsSnapshot {
            capacity_bytes: self.inner.settings.capacity,
            used_bytes: used,
            pinned_bytes: pinned,
            objects,
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            bytes_served: counters.bytes_served.load(Ordering::Relaxed),
            bytes_from_upstream: counters.bytes_from_upstream.load(Ordering::Relaxed),
        }
    }

    /// The settings the cache was opened with.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// Waits until the `cache_entries` rows of the downloads ended so far, the ledger rows
    /// and the access times recorded so far are written (or their failures logged).
    pub async fn flush(&self) {
        self.inner.recorder.flush().await;
    }

    /// Stops: downloads in progress end with an error (their staging files removed),
    /// deletions finish, the ledger is flushed, and installed files not yet fsynced are.
    /// Calls after this may fail.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.recorder.shutdown().await;
        self.inner.content.shutdown().await;
    }
}

/// A cached object's content as a local file ([`OfficeCache::local_file`]); a scratch copy
/// is removed on drop.
#[derive(Debug)]
pub struct LocalFile {
    pub path: PathBuf,
    scratch: bool,
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if self.scratch {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot remove a scratch copy of a cache entry");
            }
        }
    }
}

/// The sync reads footers of what the office holds through this, without a download.
#[async_trait::async_trait]
impl milepost_store::LocalCopies for OfficeCache {
    async fn read_local(
        &self,
        object: &ObjectKey,
        start: u64,
        end_exclusive: u64,
    ) -> Result<Option<bytes::Bytes>, milepost_store::BoxError> {
        Ok(self.read_cached(object, start, end_exclusive).await?)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the rows of downloaded entries queued so far are written: every other
    /// write of `cache_entries` comes after it, so that a row written behind never lands
    /// after a later delete or state change of its entry.
    async fn settle_entry_rows(&self) {
        self.recorder.flush().await;
    }

    /// Finds `object`, or admits it and starts its download.
    fn lookup(
        self: &Arc<Self>,
        object: &ObjectKey,
        origin: Option<&RangeOrigin>,
        ctx: &FetchContext,
    ) -> Result<Lookup, CacheError> {
        let mut state = self.lock();
        if state.book.is_ready(object) {
            state.book.touch(object);
            drop(state);
            self.recorder.touch(object);
            return Ok(Lookup::Hit);
        }
        if let Some(flight) = state.flights.get(object) {
            return Ok(Lookup::Flight {
                flight: Arc::clone(flight),
                started: false,
            });
        }
        if let Some(gate) = state.deleting.get(object) {
            return Ok(Lookup::Wait(gate.clone()));
        }
        // A byte range of an object the office holds whole, or is downloading whole, is
        // copied from it: no byte is fetched from upstream twice. Touched first, so that the
        // room the range needs is not made by evicting what it is copied from.
        let whole = origin.map(|origin| origin.whole(object));
        let mut local = None;
        if let Some(whole) = &whole {
            if state.book.is_ready(whole) {
                state.book.touch(whole);
                local = Some(Local::Cached(whole.clone()));
            } else if let Some(flight) = state.flights.get(whole) {
                local = Some(Local::Flight(Arc::clone(flight)));
            }
        }
        let planned = match state.book.plan_eviction(object.size) {
            Ok(planned) => planned,
            // Only unpinned downloads in progress are in the way: each becomes evictable (or
            // goes away) when it ends. Subscribed under the lock, so no ending is missed.
            Err(full) if full.fits_once_downloads_end() => {
                return Ok(Lookup::Wait(self.downloads_ended.subscribe()));
            }
            Err(full) => {
                return Err(CacheError::Full {
                    object: object.to_string(),
                    needed: object.size,
                    capacity: full.capacity,
                    used: full.used,
                    pinned: full.pinned,
                    unevictable: full.unevictable,
                })
            }
        };
        let copied_from = match (&local, &whole) {
            // The range fits only by evicting the object it would be copied from (a cache
            // too small for both): it is downloaded instead.
            (Some(Local::Cached(_)), Some(whole)) if planned.contains(whole) => {
                local = None;
                None
            }
            (Some(Local::Cached(_)), whole) => whole.clone(),
            _ => None,
        };
        let victims = self.take_victims(&mut state, planned);
        state.book.begin(object.clone(), object.size);
        let flight = Arc::new(Flight::new(
            object.clone(),
            origin.cloned(),
            local,
            self.settings.part_size,
        ));
        state.flights.insert(object.clone(), Arc::clone(&flight));
        drop(state);
        if let Some(whole) = copied_from {
            self.recorder.touch(&whole);
        }
        let started = Arc::clone(&flight);
        self.tasks
            .spawn(Arc::clone(self).run_flight(flight, ctx.clone(), victims));
        Ok(Lookup::Flight {
            flight: started,
            started: true,
        })
    }

    /// Removes `planned` from the book and gates new downloads of them until
    /// [`delete_victims`](Self::delete_victims) is done.
    fn take_victims(&self, state: &mut State, planned: Vec<ObjectKey>) -> Vec<Victim> {
        planned
            .into_iter()
            .map(|object| {
                state.book.remove(&object);
                let (gate, waiters) = watch::channel(());
                state.deleting.insert(object.clone(), waiters);
                Victim {
                    object,
                    _gate: gate,
                }
            })
            .collect()
    }

    /// Deletes the files and rows of evicted entries, then lets waiting downloads of them
    /// go. Failures are logged: the entries are already out of the book, and a file left
    /// behind without its row is removed at the next start-up.
    async fn delete_victims(&self, victims: Vec<Victim>) {
        if victims.is_empty() {
            return;
        }
        self.settle_entry_rows().await;
        for victim in victims {
            if self.needed_elsewhere(&victim.object).await {
                // Out of this node's book (its bytes no longer count here), left in the tier.
                tracing::debug!(object = %victim.object, "not evicted: another node of the cluster needs it");
                self.lock().deleting.remove(&victim.object);
                continue;
            }
            self.content.remove(&victim.object).await;
            if let Err(err) = entries::delete(&self.db, &victim.object).await {
                tracing::warn!(object = %victim.object, error = %err, "cannot delete an evicted cache entry's row");
            }
            tracing::debug!(object = %victim.object, size = victim.object.size, "evicted");
            self.lock().deleting.remove(&victim.object);
            // Dropping the victim drops its gate: waiting downloads look again.
        }
    }

    /// In an office cluster: whether `object`, chosen for eviction here, is needed by another
    /// node: dirty (written in the office, not yet in S3), or a member of a dataset an active
    /// reservation holds. A database failure counts as needed: evicting is never urgent
    /// enough to risk a pinned entry.
    async fn needed_elsewhere(&self, object: &ObjectKey) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        match office_pins::needed(&self.db, object).await {
            Ok(needed) => needed,
            Err(err) => {
                tracing::warn!(object = %object, error = %err, "cannot check the office's pins; not evicting");
                true
            }
        }
    }

    /// In an office cluster: whether `object` is cached in the office, learning of an entry
    /// another node installed (its row) if this node's book does not have it yet. On a single
    /// node: whether the book has it.
    async fn holds(&self, object: &ObjectKey) -> Result<bool, CacheError> {
        if self.lock().book.is_ready(object) {
            return Ok(true);
        }
        if self.cluster.is_none() {
            return Ok(false);
        }
        let Some(state) = entries::find_state(&self.db, object).await? else {
            return Ok(false);
        };
        if state == CacheEntryState::Staging {
            return Ok(false);
        }
        self.learn(object, state);
        Ok(true)
    }

    /// Adds `object`, installed in the office tier by another node, to this node's book
    /// (pinned for the write-back when `dirty`); nothing if the book has it already.
    fn learn(&self, object: &ObjectKey, state: CacheEntryState) {
        let mut state_now = self.lock();
        if state_now.book.state(object).is_some() || state_now.deleting.contains_key(object) {
            return;
        }
        if state == CacheEntryState::Dirty {
            state_now.book.pin(WRITE_BACK_HOLDER, [object]);
        }
        state_now.book.insert(object.clone(), object.size);
    }

    /// In an office cluster: `object`, ready in this node's book, is missing from the office
    /// tier (another node evicted it): forgotten, so that the next lookup fetches it again.
    /// Unpinned entries only: a pinned one missing is an error worth seeing.
    fn forget_vanished(&self, object: &ObjectKey) {
        if self.cluster.is_none() {
            return;
        }
        let mut state = self.lock();
        if state.book.is_ready(object) && !state.book.is_pinned(object) {
            tracing::debug!(object = %object, "forgetting an entry another node evicted");
            state.book.remove(object);
        }
    }

    /// Ends a download: the book and the single-flight map learn the outcome, then the
    /// admissions waiting for room and the download's waiters. No eviction is needed here:
    /// admission reserved the object's bytes and evicted for them (the watermark check counts
    /// the incoming bytes), so completing it does not change the used bytes.
    fn finish_flight(&self, flight: &Flight, end: &FlightEnd) {
        let object = flight.object();
        {
            let mut state = self.lock();
            state.flights.remove(object);
            if end.is_ok() {
                state.book.complete(object);
            } else {
                state.book.remove(object);
            }
        }
        self.downloads_ended.send_replace(());
        flight.finish(end);
    }
}
