//! Write-back: office uploads first, S3 in the background.
//!
//! A write (a PUT through the S3 gateway, a completed multipart upload, a record the catalog
//! writes) is staged on local disk, fsynced, installed in the office cache as a **dirty**
//! entry (pinned: never evicted) and journaled in the `transfers` table; only then is it
//! acknowledged. From that moment the object is readable in the office ([`OfficeStore`]
//! overlays the journal on the upstream store for every reader: the gateway, `/data`,
//! datasets, the indexer). The uploader ([`uploader`]) moves journaled writes to S3 in
//! priority order, throttled by the transfer policy, verifies what S3 stored, then marks the
//! entry clean (evictable) and the transfer done. Deletes are journaled the same way.
//!
//! A write carries its [`ObjectMetadata`] (Content-Type and the other representation headers,
//! `x-amz-meta-*`; [`WriteBack::commit_put_with`], [`Multipart::create_with`]): journaled with
//! the write, served with the office's version ([`OfficeVersion::Written`]) and given to S3
//! with the upload.
//!
//! # Ordering
//!
//! For one key, the last acknowledged write wins in S3, always. Each acknowledged write or
//! delete gets a sequence number (its journal id, in the order of acknowledgement per key);
//! only the newest row of a key may still run: journaling a write or delete supersedes the
//! queued and failed transfers of the key, a transfer whose attempt ends in a retry or a
//! failure after a newer one was journaled is superseded instead of queued again, and so is
//! any such row at start-up ([`journal`]). The uploader never runs two transfers of one key
//! at once, so a transfer already uploading finishes before the next one of its key starts.
//! The overlay keeps, per key, the version of the newest transfer only.
//!
//! # Crashes
//!
//! Nothing is acknowledged before its bytes are fsynced and its journal row committed. At
//! start-up, transfers left `uploading` (or `failed`) are queued again, and dirty entries that
//! no active transfer needs (a crash between the install and the journal row: never
//! acknowledged) become ordinary entries.
//!
//! (Over 600 lines: `WriteBack`, the write path's public API (stage, install, journal, acknowledge) as one type; staging, journal, multipart and the uploader are its submodules.)

mod error;
mod journal;
pub mod multipart;
mod office_store;
mod staging;
mod uploader;

pub use uploader::{Uploader, UploaderStep};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use milepost_schema::entity::transfer;
use milepost_schema::enums::{TransferOp, TransferState};
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{ObjectKey, OfficeCache};
use milepost_store::{ObjectMeta, ObjectMetadata, ObjectStore};

pub use error::{WriteBackError, WriteBackErrorKind};
pub use multipart::{Multipart, PartInfo, UploadInfo};
pub use office_store::OfficeStore;
pub use staging::{multipart_etag, BodyChecks, StagedFile};

/// How the uploader works.
#[derive(Clone, Debug)]
pub struct WriteBackSettings {
    /// Transfers uploading at once.
    pub concurrency: usize,
    /// Part size of multipart uploads to S3; objects up to this size go in one PUT.
    pub part_size: usize,
    /// First delay before retrying a failed transfer; doubles per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// How long an unfinished multipart upload of the gateway is kept after it started.
    pub multipart_expiry: Duration,
    /// In an office cluster: this node. Uploads then run under its lease, uploads of nodes
    /// that are gone are taken over, and start-up leaves other nodes' work alone.
    pub cluster: Option<Arc<milepost_cluster::ClusterNode>>,
}

impl Default for WriteBackSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            part_size: milepost_store::DEFAULT_PART_SIZE,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            multipart_expiry: Duration::from_secs(7 * 24 * 3600),
            cluster: None,
        }
    }
}

/// What decides the order and the pace of uploads: the transfer policy's priorities and its
/// bandwidth schedule. The write-back path only asks; it knows nothing of schedules.
pub trait UploadShaper: Send + Sync + fmt::Debug + 'static {
    /// Lower uploads first: the index of the first priority glob matching `key`.
    fn priority_of(&self, key: &str) -> i32;
    /// Wraps an upload body so that its bytes flow at the allowed rate.
    fn shape(
        &self,
        body: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> BoxStream<'static, Result<Bytes, std::io::Error>>;
}

/// Every upload at once, at full speed: for tests and tools without a transfer policy.
#[derive(Debug, Default)]
pub struct Unshaped;

impl UploadShaper for Unshaped {
    fn priority_of(&self, _key: &str) -> i32 {
        0
    }

    fn shape(
        &self,
        body: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        body
    }
}

/// The condition a write of a key is made on, checked against the office's current version of
/// the key (its own write not yet uploaded, or else S3's) at the moment the write is
/// journaled, with every other write of the key held off meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteCondition {
    /// Unconditional.
    #[default]
    Always,
    /// `If-None-Match: *`: only if the key does not exist.
    IfAbsent,
    /// `If-Match: <etag>`: only if the key exists with this ETag (`None`: `If-Match: *`, only
    /// if it exists).
    IfMatch(Option<String>),
    /// `If-None-Match: <etag>`: only if the key does not exist with this ETag.
    IfNoneMatch(String),
}

/// Writes of one key take one of these in turn (striped by key: a fixed set, no growth).
const KEY_LOCK_STRIPES: usize = 256;

/// The office's version of a key, while S3 does not have it yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfficeVersion {
    /// Written in the office: these bytes, with these metadata, are the object now.
    Written {
        object: ObjectKey,
        last_modified: DateTime<Utc>,
        transfer: i64,
        /// Content-Type, the other representation headers and the user metadata the write
        /// gave the object (S3 gets them with the upload).
        metadata: ObjectMetadata,
    },
    /// Deleted in the office: the key does not exist now.
    Deleted { transfer: i64 },
}

impl OfficeVersion {
    fn transfer(&self) -> i64 {
        match self {
            Self::Written { transfer, .. } | Self::Deleted { transfer } => *transfer,
        }
    }

    /// The object's metadata as S3 will describe it (the ETag may change when S3 stores it
    /// as a multipart upload), or `None` for a delete.
    pub fn meta(&self) -> Option<ObjectMeta> {
        match self {
            Self::Written {
                object,
                last_modified,
                metadata,
                ..
            } => Some(ObjectMeta {
                bucket: object.bucket.clone(),
                key: object.key.clone(),
                size: object.size,
                etag: object.etag.clone(),
                last_modified: Some(*last_modified),
                metadata: metadata.clone(),
            }),
            Self::Deleted { .. } => None,
        }
    }
}

/// The write-back service; see the [module documentation](self).
pub struct WriteBack {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    cache: Arc<OfficeCache>,
    /// The upstream store the uploads go to (not the overlay).
    upstream: Arc<dyn ObjectStore>,
    settings: WriteBackSettings,
    shaper: Arc<dyn UploadShaper>,
    /// The office's versions of keys not yet in S3, by (bucket, key).
    overlay: Mutex<BTreeMap<(String, String), OfficeVersion>>,
    /// Held from a write's condition check to its journal row: conditional writes see every
    /// write of their key acknowledged before them, and none in between.
    key_locks: Vec<tokio::sync::Mutex<()>>,
    /// Per stripe of keys (the locks' stripes), the sequence number of the last office
    /// version installed for one of them: what tells an upstream answer remembered before it
    /// from one after ([`WriteBack::write_mark`]).
    write_marks: Vec<AtomicU64>,
    marks: AtomicU64,
    multipart: Multipart,
    /// Wakes the uploader: something was journaled.
    wake: Notify,
    /// Signalled whenever a transfer ends.
    ended: tokio::sync::watch::Sender<()>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBack")
            .field("settings", &self.inner.settings)
            .field("office_versions", &self.inner.overlay().len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn overlay(&self) -> MutexGuard<'_, BTreeMap<(String, String), OfficeVersion>> {
        self.overlay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the office version of `bucket/key` if it is still the one of `transfer`
    /// (S3 has it now, or a later transfer replaced it).
    fn settle(&self, bucket: &str, key: &str, transfer: i64) {
        let mut overlay = self.overlay();
        let id = (bucket.to_owned(), key.to_owned());
        if overlay.get(&id).is_some_and(|v| v.transfer() == transfer) {
            overlay.remove(&id);
        }
    }

    /// Holds off every other write of `bucket/key` (and of the keys sharing its stripe) while
    /// the guard lives.
    async fn lock_key(&self, bucket: &str, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.key_locks[key_stripe(bucket, key)].lock().await
    }

    /// Marks `bucket/key` as written by the office now (see [`WriteBack::write_mark`]).
    fn mark_written(&self, bucket: &str, key: &str) {
        let mark = self.marks.fetch_add(1, Ordering::AcqRel) + 1;
        self.write_marks[key_stripe(bucket, key)].fetch_max(mark, Ordering::AcqRel);
    }

    /// Checks `condition` against the key's current version: the office's own while S3 does
    /// not have it, or else S3's. Call with the key's lock held.
    async fn check_condition(
        &self,
        bucket: &str,
        key: &str,
        condition: &WriteCondition,
    ) -> Result<(), WriteBackError> {
        if *condition == WriteCondition::Always {
            return Ok(());
        }
        let office = self
            .overlay()
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned();
        let current_etag = match office {
            Some(version) => version.meta().map(|m| m.etag),
            None => match self.upstream.head(bucket, key).await {
                Ok(meta) => Some(meta.etag),
                Err(err) if err.kind() == milepost_store::StoreErrorKind::NotFound => None,
                Err(err) => return Err(WriteBackError::Store(err)),
            },
        };
        let failed = |what: String| {
            Err(WriteBackError::PreconditionFailed {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                condition: what,
            })
        };
        match (condition, current_etag) {
            (WriteCondition::Always, _) => Ok(()),
            (WriteCondition::IfAbsent, None) => Ok(()),
            (WriteCondition::IfAbsent, Some(etag)) => {
                failed(format!("If-None-Match: * but the key exists (ETag {etag})"))
            }
            // S3 answers 404 NoSuchKey here, not 412.
            (WriteCondition::IfMatch(_), None) => Err(WriteBackError::ConditionOnMissingKey {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }),
            (WriteCondition::IfMatch(None), Some(_)) => Ok(()),
            (WriteCondition::IfMatch(Some(wanted)), Some(etag)) => {
                if milepost_store::bare_etag(wanted) == etag {
                    Ok(())
                } else {
                    failed(format!("If-Match {wanted} but the key's ETag is {etag}"))
                }
            }
            (WriteCondition::IfNoneMatch(_), None) => Ok(()),
            (WriteCondition::IfNoneMatch(unwanted), Some(etag)) => {
                if milepost_store::bare_etag(unwanted) == etag {
                    failed(format!(
                        "If-None-Match {unwanted} and the key has that ETag"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Makes `version` the office's version of `bucket/key` unless a newer transfer's version
    /// is there already (two writes of one key acknowledged close together may get here in
    /// either order; the newer one, by journal id, is what the office serves).
    fn install_version(&self, bucket: &str, key: &str, version: OfficeVersion) {
        let mut overlay = self.overlay();
        let id = (bucket.to_owned(), key.to_owned());
        match overlay.get(&id) {
            Some(current) if current.transfer() > version.transfer() => {}
            _ => {
                overlay.insert(id, version);
            }
        }
        // Marked once the version is in place: a resolve that sees the new mark finds the
        // version (marked first, a resolve could read the new mark, miss the version and
        // remember S3's older answer under the new mark).
        self.mark_written(bucket, key);
    }

    /// Dirty entries of superseded puts will never be uploaded: they become ordinary entries
    /// (unless `keep` is the same bytes, written again).
    async fn release_superseded(
        &self,
        superseded: &[milepost_schema::entity::transfer::Model],
        keep: Option<&ObjectKey>,
    ) {
        for row in superseded {
            if row.op != TransferOp::Put {
                continue;
            }
            let object = ObjectKey::new(
                row.bucket.clone(),
                row.key.clone(),
                row.etag.clone().unwrap_or_default(),
                u64::try_from(row.size).unwrap_or(0),
            );
            if Some(&object) == keep {
                continue;
            }
            match journal::other_put_of(&self.db, row.id, &object).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(object = %object, error = %err, "cannot check a superseded write; its entry stays dirty");
                    continue;
                }
            }
            if let Err(err) = self.cache.discard_dirty(&object).await {
                tracing::warn!(object = %object, error = %err, "cannot release a superseded write");
            }
        }
    }
}

/// The object a put row writes.
fn put_object(row: &transfer::Model) -> ObjectKey {
    ObjectKey::new(
        row.bucket.clone(),
        row.key.clone(),
        row.etag.clone().unwrap_or_default(),
        u64::try_from(row.size).unwrap_or(0),
    )
}

/// The office versions the active transfers `active` (oldest first) make: the newest of each
/// key.
fn overlay_of(
    active: &[transfer::Model],
    mut metadata: HashMap<i64, Result<ObjectMetadata, WriteBackError>>,
) -> BTreeMap<(String, String), OfficeVersion> {
    let mut overlay = BTreeMap::new();
    for row in active {
        let version = match row.op {
            TransferOp::Put => {
                let metadata = match metadata.remove(&row.id) {
                    None => ObjectMetadata::default(),
                    Some(Ok(metadata)) => metadata,
                    Some(Err(err)) => {
                        // The upload of this row fails on it too (and says so); the bytes
                        // are still served.
                        tracing::error!(transfer = row.id, error = %err, "an office write's metadata is unreadable; serving it without");
                        ObjectMetadata::default()
                    }
                };
                OfficeVersion::Written {
                    object: put_object(row),
                    last_modified: row.enqueued_at,
                    transfer: row.id,
                    metadata,
                }
            }
            TransferOp::Delete => OfficeVersion::Deleted { transfer: row.id },
        };
        // Rows come oldest first: the newest of a key wins.
        overlay.insert((row.bucket.clone(), row.key.clone()), version);
    }
    overlay
}

/// The stripe of `bucket/key` among [`KEY_LOCK_STRIPES`].
fn key_stripe(bucket: &str, key: &str) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (bucket, key).hash(&mut hasher);
    usize::try_from(hasher.finish() % KEY_LOCK_STRIPES as u64).unwrap_or(0)
}

/// How often a node of an office cluster reads the journal again for the other nodes'
/// writes (and the ends of their uploads).
const OVERLAY_REFRESH: Duration = Duration::from_millis(500);

impl Inner {
    /// In an office cluster: brings this node's overlay in step with the shared journal. The
    /// other nodes' writes not yet in S3 are laid over upstream here too (their bytes are in
    /// the office tier), and versions whose transfer another node finished (uploaded or
    /// superseded) are dropped. A version this node wrote meanwhile is never replaced by an
    /// older one: per key, the newest transfer wins.
    async fn refresh_overlay(&self) -> Result<(), WriteBackError> {
        let active = journal::active(&self.db).await?;
        let metadata = journal::active_metadata(&self.db).await?;
        let fresh = overlay_of(&active, metadata);
        let known: Vec<i64> = self
            .overlay()
            .values()
            .map(OfficeVersion::transfer)
            .collect();
        let ended = journal::ended_among(&self.db, &known).await?;
        let mut overlay = self.overlay();
        overlay.retain(|_, version| !ended.contains(&version.transfer()));
        for (key, version) in fresh {
            match overlay.get(&key) {
                Some(current) if current.transfer() >= version.transfer() => {}
                _ => {
                    let (bucket, name) = (key.0.clone(), key.1.clone());
                    overlay.insert(key, version);
                    // After the insert, as in `install_version`.
                    self.mark_written(&bucket, &name);
                }
            }
        }
        Ok(())
    }

    /// Runs [`refresh_overlay`](Self::refresh_overlay) every [`OVERLAY_REFRESH`] until the
    /// write-back stops.
    async fn refresh_overlay_until_stopped(&self) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(OVERLAY_REFRESH) => {}
            }
            if let Err(err) = self.refresh_overlay().await {
                tracing::warn!(error = %err, "cannot read the other nodes' writes from the journal");
            }
        }
    }
}

impl WriteBack {
    /// Opens the write-back journal: requeues transfers a stop or crash interrupted, loads the
    /// office versions of keys from the active transfers, and releases dirty entries no
    /// active transfer needs. Call [`start`](Self::start) to run the uploader.
    pub async fn open(
        db: DatabaseConnection,
        cache: Arc<OfficeCache>,
        upstream: Arc<dyn ObjectStore>,
        settings: WriteBackSettings,
        shaper: Arc<dyn UploadShaper>,
    ) -> Result<Arc<WriteBack>, WriteBackError> {
        let requeued = match &settings.cluster {
            Some(node) => journal::take_over(&db, node.id(), true).await?,
            None => journal::requeue_interrupted(&db).await?,
        };
        let active = journal::active(&db).await?;
        let metadata = journal::active_metadata(&db).await?;
        let needed: std::collections::HashSet<ObjectKey> = active
            .iter()
            .filter(|row| row.op == TransferOp::Put)
            .map(put_object)
            .collect();
        let overlay = overlay_of(&active, metadata);
        let mut released = 0;
        // In a cluster a dirty entry without an active transfer may be another node's write
        // between its entry and its journal row: left alone.
        let dirty = match settings.cluster {
            Some(_) => Vec::new(),
            None => cache.dirty_entries().await?,
        };
        for object in dirty {
            if !needed.contains(&object) {
                cache.discard_dirty(&object).await?;
                released += 1;
            }
        }
        if requeued > 0 || released > 0 || !active.is_empty() {
            tracing::info!(
                queued = active.len(),
                requeued,
                released,
                "write-back journal opened"
            );
        }
        let multipart = Multipart::open(
            cache.settings().root.join("multipart"),
            Arc::clone(&cache),
            settings.multipart_expiry,
        )
        .await?;
        Ok(Arc::new(WriteBack {
            inner: Arc::new(Inner {
                db,
                cache,
                upstream,
                settings,
                shaper,
                overlay: Mutex::new(overlay),
                key_locks: (0..KEY_LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                write_marks: (0..KEY_LOCK_STRIPES).map(|_| AtomicU64::new(0)).collect(),
                marks: AtomicU64::new(0),
                multipart,
                wake: Notify::new(),
                ended: tokio::sync::watch::channel(()).0,
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }))
    }

    /// Starts the uploader and the expiry of unfinished multipart uploads on tasks of their
    /// own. They run until [`shutdown`](Self::shutdown).
    pub fn start(&self) {
        let inner = Arc::clone(&self.inner);
        self.inner.tasks.spawn(uploader::run(inner));
        self.start_expiry();
    }

    /// Starts only the expiry of unfinished multipart uploads, for a host that runs the
    /// uploader on its own worker runner ([`uploader`](Self::uploader)).
    pub fn start_expiry(&self) {
        let inner = Arc::clone(&self.inner);
        self.inner.tasks.spawn(async move {
            inner.multipart.expire_until(inner.stop.clone()).await;
        });
        if self.inner.settings.cluster.is_some() {
            // The other nodes' writes, seen here within OVERLAY_REFRESH.
            let inner = Arc::clone(&self.inner);
            self.inner
                .tasks
                .spawn(async move { inner.refresh_overlay_until_stopped().await });
        }
    }

    /// The uploader, to be stepped by a host's worker runner instead of
    /// [`start`](Self::start) (use one or the other: two uploaders of one journal would only
    /// compete for its rows). It stops at [`shutdown`](Self::shutdown) too.
    pub fn uploader(&self) -> Uploader {
        Uploader::new(Arc::clone(&self.inner))
    }

    /// The multipart uploads the gateway receives.
    pub fn multipart(&self) -> &Multipart {
        &self.inner.multipart
    }

    /// The office cache the writes land in.
    pub fn cache(&self) -> &Arc<OfficeCache> {
        &self.inner.cache
    }

    /// The store uploads go to.
    pub fn upstream(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.upstream
    }

    /// A new staging path for a body of `bucket/key`.
    pub fn staging_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.inner
            .cache
            .staging_path(&ObjectKey::new(bucket, key, "upload", 0))
    }

    /// Stages `body` for `bucket/key` on local disk, checked and fsynced; see
    /// [`commit_put`](Self::commit_put).
    pub async fn stage<St, E>(
        &self,
        bucket: &str,
        key: &str,
        body: St,
        checks: &BodyChecks,
    ) -> Result<StagedFile, WriteBackError>
    where
        St: futures::Stream<Item = Result<Bytes, E>> + Send,
        E: Into<milepost_store::BoxError>,
    {
        let path = self.staging_path(bucket, key);
        staging::stage(path, bucket, key, body, checks).await
    }

    /// Makes a staged body (fsynced, `size` bytes) the office's version of `bucket/key` with
    /// ETag `etag`: installed in the cache as a dirty entry, journaled for upload. When this
    /// returns, the write is durable and may be acknowledged. Returns the object's metadata.
    pub async fn commit_put(
        &self,
        bucket: &str,
        key: &str,
        staged: PathBuf,
        size: u64,
        etag: String,
    ) -> Result<ObjectMeta, WriteBackError> {
        self.commit_put_if(bucket, key, staged, size, etag, &WriteCondition::Always)
            .await
    }

    /// [`commit_put`](Self::commit_put) on `condition`; when it does not hold, the staged file
    /// is removed and nothing is written
    /// ([`PreconditionFailed`](WriteBackErrorKind::PreconditionFailed)). The object has no
    /// [`ObjectMetadata`]; see [`commit_put_with`](Self::commit_put_with).
    pub async fn commit_put_if(
        &self,
        bucket: &str,
        key: &str,
        staged: PathBuf,
        size: u64,
        etag: String,
        condition: &WriteCondition,
    ) -> Result<ObjectMeta, WriteBackError> {
        self.commit_put_with(
            bucket,
            key,
            staged,
            size,
            etag,
            condition,
            ObjectMetadata::default(),
        )
        .await
    }

    /// [`commit_put_if`](Self::commit_put_if) of an object with `metadata` (Content-Type, the
    /// other representation headers, `x-amz-meta-*`): journaled with the write, served with
    /// the office's version ([`OfficeVersion::Written`], [`OfficeStore`]'s `head` and `get`)
    /// and given to S3 with the upload, single PUT or multipart. The returned
    /// [`ObjectMeta::metadata`] is `metadata`.
    #[expect(
        clippy::too_many_arguments,
        reason = "commit_put_if's arguments, as its callers hold them, and the metadata"
    )]
    pub async fn commit_put_with(
        &self,
        bucket: &str,
        key: &str,
        staged: PathBuf,
        size: u64,
        etag: String,
        condition: &WriteCondition,
        metadata: ObjectMetadata,
    ) -> Result<ObjectMeta, WriteBackError> {
        let inner = &self.inner;
        let _key_lock = inner.lock_key(bucket, key).await;
        if let Err(err) = inner.check_condition(bucket, key, condition).await {
            if let Err(remove) = tokio::fs::remove_file(&staged).await {
                tracing::warn!(path = %staged.display(), error = %remove, "cannot remove a refused write's staging file");
            }
            return Err(err);
        }
        let object = ObjectKey::new(bucket, key, etag, size);
        inner.cache.insert_dirty(&object, staged).await?;
        let relative = Some(OfficeCache::content_name(&object));
        let (row, superseded) = journal::enqueue(
            &inner.db,
            journal::NewTransfer {
                op: TransferOp::Put,
                bucket,
                key,
                object: Some(&object),
                path: relative,
                metadata: Some(&metadata),
                priority: inner.shaper.priority_of(key),
            },
        )
        .await?;
        let last_modified = row.enqueued_at;
        inner.install_version(
            bucket,
            key,
            OfficeVersion::Written {
                object: object.clone(),
                last_modified,
                transfer: row.id,
                metadata: metadata.clone(),
            },
        );
        inner.release_superseded(&superseded, Some(&object)).await;
        inner.wake.notify_one();
        Ok(ObjectMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            etag: object.etag,
            last_modified: Some(last_modified),
            metadata,
        })
    }

    /// Writes `body` as the office's version of `bucket/key` (stage, then
    /// [`commit_put`](Self::commit_put)); the ETag is the MD5, as S3 gives a single PUT.
    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
    ) -> Result<ObjectMeta, WriteBackError> {
        self.put_bytes_with(bucket, key, body, ObjectMetadata::default())
            .await
    }

    /// [`put_bytes`](Self::put_bytes) of an object with `metadata`; see
    /// [`commit_put_with`](Self::commit_put_with).
    pub async fn put_bytes_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: ObjectMetadata,
    ) -> Result<ObjectMeta, WriteBackError> {
        let checks = BodyChecks {
            length: Some(body.len() as u64),
            ..BodyChecks::default()
        };
        let staged = self
            .stage(
                bucket,
                key,
                futures::stream::iter([Ok::<_, std::io::Error>(body)]),
                &checks,
            )
            .await?;
        let etag = staged.md5_hex();
        self.commit_put_with(
            bucket,
            key,
            staged.path,
            staged.size,
            etag,
            &WriteCondition::Always,
            metadata,
        )
        .await
    }

    /// Deletes `bucket/key` in the office now and in S3 in the background (after any write of
    /// the key already uploading).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), WriteBackError> {
        let inner = &self.inner;
        let _key_lock = inner.lock_key(bucket, key).await;
        let (row, superseded) = journal::enqueue(
            &inner.db,
            journal::NewTransfer {
                op: TransferOp::Delete,
                bucket,
                key,
                object: None,
                path: None,
                metadata: None,
                priority: inner.shaper.priority_of(key),
            },
        )
        .await?;
        inner.install_version(bucket, key, OfficeVersion::Deleted { transfer: row.id });
        inner.release_superseded(&superseded, None).await;
        inner.wake.notify_one();
        Ok(())
    }

    /// A number that grows whenever the office installs a version of `bucket/key` (its own
    /// write or delete, or in a cluster another node's): an answer about the key read from
    /// upstream while the mark was lower may predate that write. Keys share marks by stripe,
    /// so a write of another key may move it too (costing only a fresh upstream answer).
    pub fn write_mark(&self, bucket: &str, key: &str) -> u64 {
        self.inner.write_marks[key_stripe(bucket, key)].load(Ordering::Acquire)
    }

    /// The office's version of `bucket/key` if S3 does not have it yet.
    pub fn version(&self, bucket: &str, key: &str) -> Option<OfficeVersion> {
        self.inner
            .overlay()
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }

    /// The office versions of keys of `bucket` starting with `prefix`, after `after` (all
    /// when `None`), in key order, at most `limit`.
    pub fn versions_in(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, OfficeVersion)> {
        let overlay = self.inner.overlay();
        let start = match after {
            Some(after) if after >= prefix => {
                Bound::Excluded((bucket.to_owned(), after.to_owned()))
            }
            _ => Bound::Included((bucket.to_owned(), prefix.to_owned())),
        };
        overlay
            .range((start, Bound::Unbounded))
            .take_while(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many keys have an office version not yet in S3.
    pub fn pending_keys(&self) -> usize {
        self.inner.overlay().len()
    }

    /// Recomputes the priority of every queued transfer (after a policy change).
    pub async fn reprioritize(&self) -> Result<u64, WriteBackError> {
        let shaper = Arc::clone(&self.inner.shaper);
        let changed =
            journal::reprioritize(&self.inner.db, &move |key| shaper.priority_of(key)).await?;
        self.inner.wake.notify_one();
        Ok(changed)
    }

    /// Waits until no transfer is queued or uploading (a failed one counts as settled), or
    /// `timeout` passes; returns whether the queue drained.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ended = self.inner.ended.subscribe();
        loop {
            match journal::active(&self.inner.db).await {
                Ok(rows) if rows.iter().all(|r| r.state == TransferState::Failed) => return true,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "cannot read the upload queue"),
            }
            if tokio::time::timeout_at(deadline, ended.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Stops the uploader: transfers in progress are cut short and run again at the next
    /// start (their rows stay `uploading`, which start-up requeues).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
