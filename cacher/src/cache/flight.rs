//! One download of one object: the single-flight unit every caller needing the object
//! shares. Parallel ranged GETs of `part_size` bytes, each under a permit of the global limit
//! and pinned by `If-Match`, written at their offsets into a staging file; per-part progress
//! published through a `watch` channel (read-through readers and the MD5 check follow it);
//! then verification, fsync, atomic rename into the content store and the `cache_entries`
//! row (written behind by the recorder).
//!
//! In an office cluster the download runs under a claim on the object (one node of the office
//! at a time), and its row is written before the claim ends; a node that finds the row under
//! the claim copies the object from the office tier instead of downloading it.
//!
//! An entry that is a byte range of an object the office holds whole (cached, or being
//! downloaded whole) is not fetched: its bytes are copied from the whole object's file as they
//! are there ([`Local`]), so that no byte is fetched from upstream twice.
//!
//! (Over 600 lines: one download as one state machine (parts, progress, verification, install); its steps share the flight's state.)

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::watch;

use super::content::{InstallKind, Opened};
use super::entries;
use super::{CacheError, CacheErrorKind, FetchContext, Inner, Layout, ObjectKey, Victim};
use crate::digest::lanes::{self, LaneStream};
use crate::digest::Md5;
use milepost_schema::enums::CacheEntryState;
use milepost_store::{ByteRange, StoreError, Target};

/// The object an entry that is a byte range of it is read from
/// ([`OfficeCache::fetch_range`](super::OfficeCache::fetch_range)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RangeOrigin {
    /// The upstream key (same bucket and ETag as the entry).
    pub key: String,
    /// Where the entry's first byte is in it.
    pub offset: u64,
    /// Its size.
    pub source_size: u64,
}

impl RangeOrigin {
    /// The whole object `entry` (a byte range of it) is read from.
    pub fn whole(&self, entry: &ObjectKey) -> ObjectKey {
        ObjectKey::new(
            entry.bucket.clone(),
            self.key.clone(),
            entry.etag.clone(),
            self.source_size,
        )
    }
}

/// Where the bytes of a byte-range entry are copied from instead of upstream: the whole object
/// it is a range of, as the office holds it at the lookup.
#[derive(Debug)]
pub(super) enum Local {
    /// Cached (this whole object). Evicted before the copy opens it, the range is downloaded.
    Cached(ObjectKey),
    /// Being downloaded: the bytes are copied from its staging file as they land (waiting
    /// for the ones needed); its failure is the range's.
    Flight(Arc<Flight>),
}

/// How a download ended: the bytes it took from upstream, or its error (shared by every
/// caller waiting for it).
pub(super) type FlightEnd = Result<u64, Arc<CacheError>>;

/// Bytes gathered from a part's body before one positional write.
const WRITE_BATCH: usize = 512 * 1024;
/// Bytes hashed per blocking call by the MD5 check.
const HASH_CHUNK: u64 = 4 * 1024 * 1024;
/// Landed bytes after which the staging file is flushed to disk while the download goes on.
const FLUSH_BEHIND: u64 = 16 * 1024 * 1024;
/// Bytes copied per blocking call when a byte range is copied from the whole object.
const COPY_CHUNK: u64 = 4 * 1024 * 1024;
/// Bytes read per item of the stream that installs a download in the office tier as it lands.
const FOLLOW_CHUNK: u64 = 4 * 1024 * 1024;

/// How the bytes of a one-part download are hashed as they land.
enum Md5Check {
    /// Handed to the lane scheduler, hashed eight downloads abreast on its thread.
    Lanes(LaneStream),
    /// In the blocking call that writes them (a CPU without AVX2).
    Inline(Md5),
}

impl Md5Check {
    fn new() -> Self {
        match lanes::global() {
            Some(lanes) => Self::Lanes(lanes.stream()),
            None => Self::Inline(Md5::new()),
        }
    }

    async fn finish(self) -> std::io::Result<[u8; 16]> {
        match self {
            Self::Lanes(stream) => stream.finish().await,
            Self::Inline(md5) => md5.finish(),
        }
    }
}

/// A download in progress.
#[derive(Debug)]
pub(super) struct Flight {
    object: ObjectKey,
    /// Where the bytes come from when the entry is a byte range of another object.
    origin: Option<RangeOrigin>,
    /// The whole object the office holds, when the entry is a byte range of it: the bytes are
    /// copied from it, not fetched.
    local: Option<Local>,
    part_size: u64,
    progress: watch::Sender<Progress>,
    /// Bytes taken from upstream (a copy from [`Local`] lands bytes without any).
    upstream_bytes: AtomicU64,
}

/// What a download has done so far.
#[derive(Debug)]
pub(super) struct Progress {
    /// The staging file, once created (it stays readable through this handle after the
    /// rename into the content store).
    file: Option<Arc<File>>,
    /// Bytes written of each part, from the part's start.
    landed: Vec<u64>,
    /// Bytes written in all.
    total: u64,
    /// Set once, when the download ends.
    end: Option<FlightEnd>,
}

impl Flight {
    pub fn new(
        object: ObjectKey,
        origin: Option<RangeOrigin>,
        local: Option<Local>,
        part_size: u64,
    ) -> Self {
        let parts = usize::try_from(object.size.div_ceil(part_size)).unwrap_or(usize::MAX);
        let (progress, _) = watch::channel(Progress {
            file: None,
            landed: vec![0; parts],
            total: 0,
            end: None,
        });
        Self {
            object,
            origin,
            local,
            part_size,
            progress,
            upstream_bytes: AtomicU64::new(0),
        }
    }

    /// The upstream key, the offset of the entry's first byte in it, and its size.
    fn source(&self) -> (&str, u64, u64) {
        match &self.origin {
            Some(origin) => (&origin.key, origin.offset, origin.source_size),
            None => (&self.object.key, 0, self.object.size),
        }
    }

    pub fn object(&self) -> &ObjectKey {
        &self.object
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn parts(&self) -> u64 {
        self.object.size.div_ceil(self.part_size)
    }

    /// Bytes landed so far, from upstream or copied.
    fn downloaded(&self) -> u64 {
        self.progress.borrow().total
    }

    /// Bytes taken from upstream so far.
    fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes.load(Ordering::Relaxed)
    }

    fn set_file(&self, file: Arc<File>) {
        self.progress.send_modify(|p| p.file = Some(file));
    }

    fn landed(&self, part: u64, len: u64) {
        self.progress.send_modify(|p| {
            if let Some(landed) = usize::try_from(part).ok().and_then(|i| p.landed.get_mut(i)) {
                *landed += len;
            }
            p.total += len;
        });
    }

    pub fn finish(&self, end: &FlightEnd) {
        self.progress.send_modify(|p| p.end = Some(end.clone()));
    }

    /// Waits for the end of the download, calling `progress` with the bytes landed so far
    /// whenever they change. Returns the bytes the download took from upstream (none for a
    /// range copied from the whole object).
    pub async fn wait(
        &self,
        progress: Option<&(dyn Fn(u64) + Send + Sync)>,
    ) -> Result<u64, CacheError> {
        let mut rx = self.subscribe();
        let mut reported = None;
        loop {
            let (total, end) = {
                let p = rx.borrow_and_update();
                (p.total, p.end.clone())
            };
            if let Some(report) = progress {
                if reported != Some(total) {
                    report(total);
                    reported = Some(total);
                }
            }
            match end {
                Some(Ok(downloaded)) => return Ok(downloaded),
                Some(Err(err)) => return Err(CacheError::Shared(err)),
                None => {}
            }
            if rx.changed().await.is_err() {
                return Err(self.interrupted());
            }
        }
    }

    fn interrupted(&self) -> CacheError {
        CacheError::Interrupted {
            object: self.object.to_string(),
            reason: "the download task ended without a result",
        }
    }
}

/// Waits until the byte at `pos` (< the object's size) has landed; returns the file to read
/// it from and the end (exclusive) of the bytes available from `pos` on. Fails with the
/// download's error if it fails first.
pub(super) async fn available_from(
    rx: &mut watch::Receiver<Progress>,
    flight: &Flight,
    pos: u64,
) -> Result<(Arc<File>, u64), CacheError> {
    loop {
        {
            let p = rx.borrow_and_update();
            match &p.end {
                Some(Err(err)) => return Err(CacheError::Shared(Arc::clone(err))),
                Some(Ok(_)) => {
                    if let Some(file) = &p.file {
                        return Ok((Arc::clone(file), flight.object.size));
                    }
                    return Err(flight.interrupted());
                }
                None => {}
            }
            if let Some(file) = &p.file {
                let part = pos / flight.part_size;
                let landed = usize::try_from(part)
                    .ok()
                    .and_then(|i| p.landed.get(i))
                    .copied()
                    .unwrap_or(0);
                let available = part * flight.part_size + landed;
                if available > pos {
                    return Ok((Arc::clone(file), available));
                }
            }
        }
        if rx.changed().await.is_err() {
            return Err(flight.interrupted());
        }
    }
}

impl Inner {
    /// The task of one download: deletes what admission evicted, downloads, records the
    /// egress, and tells the book and the waiters how it ended.
    pub(super) async fn run_flight(
        self: Arc<Self>,
        flight: Arc<Flight>,
        ctx: FetchContext,
        victims: Vec<Victim>,
    ) {
        let mut guard = EndGuard {
            inner: Arc::clone(&self),
            flight: Arc::clone(&flight),
            ended: false,
        };
        self.delete_victims(victims).await;
        let object = flight.object().clone();
        let staging = self.layout.staging_path(&object);
        let result = tokio::select! {
            result = self.download(&flight, &staging) => result,
            () = self.stop.cancelled() => Err(CacheError::Interrupted {
                object: object.to_string(),
                reason: "the cache is shutting down",
            }),
        };
        // Only what came from upstream is egress: a range copied from the whole object the
        // office holds costs none, and gets no ledger row.
        let downloaded = flight.upstream_bytes();
        if downloaded > 0 {
            self.recorder.downloaded(&object, &ctx, downloaded);
        }
        match &result {
            Ok(()) => {
                tracing::debug!(object = %object, etag = %object.etag, bytes = downloaded, "cached")
            }
            Err(err) => {
                tracing::warn!(object = %object, etag = %object.etag, error = %err, "download failed");
                remove_quietly(staging).await;
            }
        }
        let end = result.map(|()| downloaded).map_err(Arc::new);
        self.finish_flight(&flight, &end);
        guard.ended = true;
    }

    /// Downloads, verifies and installs `flight`'s object.
    async fn download(
        self: &Arc<Self>,
        flight: &Arc<Flight>,
        staging: &Path,
    ) -> Result<(), CacheError> {
        let object = flight.object();
        if object.size == 0 {
            // No range of an empty object can be read: check that it still is what we expect.
            let meta = self.store.head(&object.bucket, &object.key).await?;
            check_meta(object, &meta.etag, meta.size, object.size)?;
        }
        let file = blocking(format!("creating the staging file for {object}"), {
            let staging = staging.to_owned();
            move || {
                File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(staging)
            }
        })
        .await?;
        let file = Arc::new(file);
        flight.set_file(Arc::clone(&file));

        let copied = match &flight.local {
            Some(local) => self.copy_local(flight, &file, local).await?,
            None => false,
        };
        // In an office cluster one node at a time downloads an object: under the claim, an
        // object another node installed meanwhile is copied from the office tier instead.
        let claim = match (&self.cluster, copied) {
            (Some(node), false) => Some(
                node.claim(&format!("cache:{}", Layout::content_relative(object)))
                    .await
                    .map_err(|source| CacheError::Cluster {
                        context: format!("claiming the download of {object}"),
                        source,
                    })?,
            ),
            _ => None,
        };
        if let Some(claim) = claim {
            let adopted = self.adopt_installed(flight, &file).await;
            if !matches!(adopted, Ok(false)) {
                claim.release().await;
                if adopted.is_ok() {
                    remove_quietly(staging.to_owned()).await;
                }
                return adopted.map(drop);
            }
            let fetched = self.fetch_and_install(flight, &file, staging, copied).await;
            let recorded = match fetched {
                // Before the claim ends: the next node to look must find the row.
                Ok(()) => {
                    entries::upsert_ready(&self.db, object, &Layout::content_relative(object)).await
                }
                Err(err) => Err(err),
            };
            claim.release().await;
            return recorded;
        }
        self.fetch_and_install(flight, &file, staging, copied)
            .await?;
        // Written behind, in a batch (see the recorder's docs): the bytes are verified and
        // in place, and a file whose row is lost is removed at the next start-up.
        self.recorder
            .entry_ready(object, Layout::content_relative(object));
        Ok(())
    }

    /// In an office cluster, under the object's claim: if another node installed `flight`'s
    /// object in the office tier (its row says so), copies it from there into `file` as the
    /// download would have, and returns true; false when the office does not hold it (or
    /// its tier object vanished: evicted meanwhile).
    async fn adopt_installed(&self, flight: &Flight, file: &Arc<File>) -> Result<bool, CacheError> {
        let object = flight.object();
        let state = match entries::find_state(&self.db, object).await? {
            Some(state) if state != CacheEntryState::Staging => state,
            _ => return Ok(false),
        };
        if object.size > 0 {
            match self.content.open(object, 0, object.size).await {
                Ok(Opened::Stream(stream)) => self.copy_stream(flight, file, stream).await?,
                Ok(Opened::File(_)) => {
                    return Err(CacheError::invalid(
                        "office cluster",
                        "the cache of a cluster node is the office tier, not a local disk",
                    ))
                }
                Err(err) if err.kind() == CacheErrorKind::NotFound => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        if state == CacheEntryState::Dirty {
            // Written in the office by another node and not yet in S3: never evicted here.
            self.lock().book.pin(super::WRITE_BACK_HOLDER, [object]);
        }
        tracing::debug!(object = %object, "read from the office tier: another node downloaded it");
        Ok(true)
    }

    /// Downloads `flight`'s object into `file` (unless `copied` from the whole object
    /// already), verifies it and installs it in the content store.
    async fn fetch_and_install(
        self: &Arc<Self>,
        flight: &Arc<Flight>,
        file: &Arc<File>,
        staging: &Path,
        copied: bool,
    ) -> Result<(), CacheError> {
        let object = flight.object();
        let file = Arc::clone(file);
        // The office tier installs the bytes as they land (a byte range copied from the whole
        // object is all there already, and is installed from the file).
        let follow = !copied && object.size > 0 && self.content.follows_downloads();

        // Only a staging file that becomes the content file is flushed (see `flush_behind`).
        let flush = self.content.flushes_behind();
        // A byte range says nothing about the MD5 of the object its ETag names.
        let single_part_md5 = flight
            .origin
            .is_none()
            .then(|| expected_md5(&object.etag))
            .flatten();
        let digest = if copied {
            // A byte range: nothing to hash (see `single_part_md5`).
            None
        } else if flight.parts() <= 1 {
            // One ranged GET (every small object): its bytes are hashed as they are written
            // instead of being read back from the staging file.
            let hasher = single_part_md5.map(|_| Md5Check::new());
            let hasher = match flight.parts() {
                0 => hasher,
                _ => {
                    let part = self.download_part(flight, &file, 0, hasher);
                    let install = self.follow_install(flight, follow);
                    tokio::try_join!(part, flush_behind(flight, flush), install)?.0
                }
            };
            match hasher {
                Some(hasher) => Some(
                    hasher
                        .finish()
                        .await
                        .map_err(|err| CacheError::io(format!("hashing {object}"), err))?,
                ),
                None => None,
            }
        } else {
            // Owned handles in each part's future: borrowed ones make the task's future fail
            // the `Send` check (higher-ranked lifetimes of closures returning futures).
            let parts = futures::stream::iter(0..flight.parts())
                .map(Ok)
                .try_for_each_concurrent(self.settings.concurrency, |part| {
                    let (inner, flight, file) =
                        (Arc::clone(self), Arc::clone(flight), Arc::clone(&file));
                    async move {
                        inner
                            .download_part(&flight, &file, part, None)
                            .await
                            .map(drop)
                    }
                });
            // Parts land out of order: the hash follows the landed prefix, reading it back.
            let digest = async {
                match single_part_md5 {
                    Some(_) => md5_follow(flight).await.map(Some),
                    None => Ok(None),
                }
            };
            let install = self.follow_install(flight, follow);
            let ((), digest, (), ()) =
                tokio::try_join!(parts, digest, flush_behind(flight, flush), install)?;
            digest
        };

        let verified = verify(object, flight.downloaded(), single_part_md5, digest);
        if follow {
            // Installed already; bytes that fail verification must not stay.
            if let Err(err) = verified {
                self.content.remove(object).await;
                return Err(err);
            }
            remove_quietly(staging.to_owned()).await;
        } else {
            verified?;
            self.content
                .install(object, &file, staging, InstallKind::Download)
                .await?;
        }
        Ok(())
    }

    /// Copies `flight`'s entry, a byte range of an object the office holds whole, from `local`
    /// into `file`, publishing each piece as landed, without any upstream request. Returns
    /// `false`, having copied nothing, when the cached whole object is gone (evicted since the
    /// lookup): the range is downloaded instead. A whole download that fails before the bytes
    /// needed have landed fails the range with its error.
    ///
    /// The bytes are those of the same version (bucket, key, ETag) that a ranged GET with
    /// `If-Match` would return: every part of the whole download was checked against the ETag
    /// and size like the range's own GETs would be.
    async fn copy_local(
        &self,
        flight: &Flight,
        file: &Arc<File>,
        local: &Local,
    ) -> Result<bool, CacheError> {
        enum From<'a> {
            File(Arc<File>),
            Flight(&'a Flight, watch::Receiver<Progress>),
        }
        let object = flight.object();
        let (_, base, _) = flight.source();
        let mut from = match local {
            Local::Cached(whole) => {
                match self.content.open(whole, base, base + object.size).await {
                    Ok(Opened::File(file)) => From::File(file),
                    Ok(Opened::Stream(stream)) => {
                        self.copy_stream(flight, file, stream).await?;
                        return Ok(true);
                    }
                    Err(err) if err.kind() == CacheErrorKind::NotFound => return Ok(false),
                    Err(err) => return Err(err),
                }
            }
            Local::Flight(whole) => From::Flight(whole, whole.subscribe()),
        };
        let mut pos = 0;
        while pos < object.size {
            let part = pos / flight.part_size;
            let part_end = ((part + 1) * flight.part_size).min(object.size);
            // Where the bytes are (in the whole object) and how far they are there.
            let (source, available) = match &mut from {
                From::File(file) => (Arc::clone(file), base + part_end),
                From::Flight(whole, progress) => {
                    available_from(progress, whole, base + pos).await?
                }
            };
            let len = (available.min(base + part_end) - (base + pos)).min(COPY_CHUNK);
            let target = Arc::clone(file);
            blocking(
                format!("copying {object} from the whole object"),
                move || {
                    let mut buf = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
                    source.read_exact_at(&mut buf, base + pos)?;
                    target.write_all_at(&buf, pos)
                },
            )
            .await?;
            flight.landed(part, len);
            pos += len;
        }
        Ok(true)
    }

    /// With `follow`, installs `flight`'s object in the content store from its staging file as
    /// the bytes land, in order ([`ContentStore::install_stream`](super::content::ContentStore::install_stream)); ends
    /// once every byte is installed. A download that fails first drops it: the tier's
    /// incomplete multipart upload stays until the tier's cleanup of incomplete uploads.
    async fn follow_install(&self, flight: &Arc<Flight>, follow: bool) -> Result<(), CacheError> {
        if !follow {
            return Ok(());
        }
        self.content
            .install_stream(flight.object(), follow_stream(Arc::clone(flight)))
            .await
    }

    /// Writes the bytes of `flight`'s entry, read from the office tier as `stream`, into
    /// `file`, publishing each piece as landed.
    async fn copy_stream(
        &self,
        flight: &Flight,
        file: &Arc<File>,
        mut stream: futures::stream::BoxStream<'static, Result<Bytes, CacheError>>,
    ) -> Result<(), CacheError> {
        let object = flight.object();
        let mut pos = 0;
        while let Some(chunk) = stream.next().await {
            let mut chunk = chunk?;
            while !chunk.is_empty() {
                // Landed per part, as the read-through readers follow parts.
                let part = pos / flight.part_size;
                let part_end = ((part + 1) * flight.part_size).min(object.size);
                let take = usize::try_from(part_end - pos)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let piece = chunk.split_to(take);
                let target = Arc::clone(file);
                let at = pos;
                blocking(
                    format!("copying {object} from the office tier"),
                    move || target.write_all_at(&piece, at),
                )
                .await?;
                flight.landed(part, take as u64);
                pos += take as u64;
            }
        }
        if pos != object.size {
            return Err(CacheError::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "copied {pos} bytes from the office tier, expected {}",
                    object.size
                ),
            });
        }
        Ok(())
    }

    /// Downloads part `part` of `flight`'s object into `file`, feeding its bytes, in order, to
    /// `hasher` if given (returned at the end).
    async fn download_part(
        &self,
        flight: &Flight,
        file: &Arc<File>,
        part: u64,
        mut hasher: Option<Md5Check>,
    ) -> Result<Option<Md5Check>, CacheError> {
        let object = flight.object();
        let start = part * flight.part_size;
        let end = (start + flight.part_size).min(object.size) - 1;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CacheError::Interrupted {
                object: object.to_string(),
                reason: "the cache is shutting down",
            })?;
        let (source_key, base, source_size) = flight.source();
        let range = ByteRange::Bounded {
            start: base + start,
            end_inclusive: base + end,
        };
        let response = self
            .store
            .get(&object.bucket, source_key, range, Some(&object.etag))
            .await?;
        check_meta(object, &response.meta.etag, response.meta.size, source_size)?;
        let whole = base == 0 && start == 0 && end + 1 == source_size;
        if !(response.range == Some((base + start, base + end))
            || (response.range.is_none() && whole))
        {
            return Err(StoreError::corrupt(
                Target::new("get", &object.bucket, &object.key),
                format!(
                    "asked for bytes {start}-{end}, the answer carries {:?}",
                    response.range
                ),
            )
            .into());
        }
        let mut body = response.body;
        let mut offset = start;
        let mut batch = Vec::new();
        let mut batch_len = 0u64;
        loop {
            let chunk = body.next().await.transpose()?;
            let finished = chunk.is_none();
            if let Some(chunk) = chunk {
                batch_len += chunk.len() as u64;
                batch.push(chunk);
                if offset + batch_len > end + 1 {
                    return Err(StoreError::corrupt(
                        Target::new("get", &object.bucket, &object.key),
                        format!("the body of bytes {start}-{end} is longer than asked"),
                    )
                    .into());
                }
                if batch_len < WRITE_BATCH as u64 {
                    continue;
                }
            }
            if batch_len > 0 {
                hasher = self
                    .write_batch(
                        flight,
                        file,
                        part,
                        offset,
                        std::mem::take(&mut batch),
                        hasher,
                    )
                    .await?;
                offset += batch_len;
                batch_len = 0;
            }
            if finished {
                break;
            }
        }
        if offset != end + 1 {
            return Err(StoreError::unavailable(
                Target::new("get", &object.bucket, &object.key),
                format!("the body of bytes {start}-{end} ended at {offset}"),
            )
            .into());
        }
        Ok(hasher)
    }

    /// Writes `chunks` at `offset`, hashing them into `hasher` if given, and publishes them
    /// as landed.
    async fn write_batch(
        &self,
        flight: &Flight,
        file: &Arc<File>,
        part: u64,
        offset: u64,
        chunks: Vec<Bytes>,
        hasher: Option<Md5Check>,
    ) -> Result<Option<Md5Check>, CacheError> {
        let object = flight.object();
        let file = Arc::clone(file);
        let (mut inline, lanes) = match hasher {
            Some(Md5Check::Inline(md5)) => (Some(md5), None),
            Some(Md5Check::Lanes(stream)) => (None, Some((stream, chunks.clone()))),
            None => (None, None),
        };
        let (len, inline) = blocking(format!("writing {object} to its staging file"), move || {
            let mut at = offset;
            for chunk in &chunks {
                file.write_all_at(chunk, at)?;
                // Hashed while the bytes are in the CPU's caches.
                if let Some(md5) = &mut inline {
                    md5.update(chunk)?;
                }
                at += chunk.len() as u64;
            }
            Ok((at - offset, inline))
        })
        .await?;
        let hasher = match (inline, lanes) {
            (Some(md5), _) => Some(Md5Check::Inline(md5)),
            (None, Some((stream, chunks))) => {
                for chunk in chunks {
                    stream
                        .update(chunk)
                        .await
                        .map_err(|err| CacheError::io(format!("hashing {object}"), err))?;
                }
                Some(Md5Check::Lanes(stream))
            }
            (None, None) => None,
        };
        flight.landed(part, len);
        flight.upstream_bytes.fetch_add(len, Ordering::Relaxed);
        self.counters
            .bytes_from_upstream
            .fetch_add(len, Ordering::Relaxed);
        Ok(hasher)
    }
}

/// Ends a download whose task stopped without ending it (dropped with its runtime, or
/// panicked), so that its waiters get an error instead of waiting for ever and the book
/// releases its bytes. The staging file is left for the next start-up to remove.
struct EndGuard {
    inner: Arc<Inner>,
    flight: Arc<Flight>,
    ended: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.ended {
            let err = CacheError::Interrupted {
                object: self.flight.object().to_string(),
                reason: "the download task stopped",
            };
            self.inner.finish_flight(&self.flight, &Err(Arc::new(err)));
        }
    }
}

/// Refuses an answer about another version of `object`.
fn check_meta(
    object: &ObjectKey,
    etag: &str,
    size: u64,
    expected_size: u64,
) -> Result<(), CacheError> {
    if etag != object.etag {
        return Err(StoreError::PreconditionFailed {
            target: Target::new("get", &object.bucket, &object.key),
            detail: format!(
                "asked for etag {}, the upstream has etag {etag}",
                object.etag
            ),
        }
        .into());
    }
    if size != expected_size {
        return Err(CacheError::Corrupt {
            object: object.to_string(),
            reason: format!(
                "the upstream object with etag {etag} has {size} bytes, expected {expected_size}"
            ),
        });
    }
    Ok(())
}

/// Checks a download's size and, for a single-part ETag, its MD5.
fn verify(
    object: &ObjectKey,
    written: u64,
    expected_md5: Option<[u8; 16]>,
    digest: Option<[u8; 16]>,
) -> Result<(), CacheError> {
    if written != object.size {
        return Err(CacheError::Corrupt {
            object: object.to_string(),
            reason: format!("downloaded {written} bytes, expected {}", object.size),
        });
    }
    if let (Some(expected), Some(actual)) = (expected_md5, digest) {
        if expected != actual {
            return Err(CacheError::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "the md5 of the bytes is {}, the etag {} says otherwise",
                    hex::encode(actual),
                    object.etag
                ),
            });
        }
    }
    Ok(())
}

/// The bytes of `flight`'s object in order, read from its staging file as they land (up to
/// [`FOLLOW_CHUNK`] per item); the download's error if it fails first.
fn follow_stream(
    flight: Arc<Flight>,
) -> futures::stream::BoxStream<'static, Result<Bytes, CacheError>> {
    let progress = flight.subscribe();
    futures::stream::unfold(
        (flight, progress, 0u64),
        |(flight, mut progress, pos)| async move {
            let size = flight.object().size;
            if pos >= size {
                return None;
            }
            let read = async {
                let (file, available) = available_from(&mut progress, &flight, pos).await?;
                let len = (available - pos).min(FOLLOW_CHUNK);
                let object = flight.object().to_string();
                blocking(format!("reading the staging file of {object}"), move || {
                    let mut buf = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
                    file.read_exact_at(&mut buf, pos)?;
                    Ok(Bytes::from(buf))
                })
                .await
            }
            .await;
            match read {
                Ok(bytes) => {
                    let next = pos + bytes.len() as u64;
                    Some((Ok(bytes), (flight, progress, next)))
                }
                // The stream ends after its error.
                Err(err) => Some((Err(err), (flight, progress, size))),
            }
        },
    )
    .boxed()
}

/// The MD5 a single-part ETag (32 hex digits) states, or `None` for other ETags (multipart:
/// `<hex>-<parts>`), which say nothing checkable about the bytes.
pub(super) fn expected_md5(etag: &str) -> Option<[u8; 16]> {
    if etag.len() != 32 {
        return None;
    }
    let mut digest = [0u8; 16];
    hex::decode_to_slice(etag, &mut digest).ok()?;
    Some(digest)
}

/// The MD5 of the object, computed as its bytes land, in order (overlapping the download).
async fn md5_follow(flight: &Flight) -> Result<[u8; 16], CacheError> {
    let object = flight.object();
    let mut rx = flight.subscribe();
    let mut hasher = Md5::new();
    let mut buf = Vec::new();
    let mut pos = 0;
    while pos < object.size {
        let (file, available) = available_from(&mut rx, flight, pos).await?;
        let len = (available - pos).min(HASH_CHUNK);
        let (h, b) = blocking(format!("hashing the staging file of {object}"), move || {
            buf.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
            file.read_exact_at(&mut buf, pos)?;
            hasher.update(&buf)?;
            Ok((hasher, buf))
        })
        .await?;
        (hasher, buf) = (h, b);
        pos += len;
    }
    hasher
        .finish()
        .map_err(|err| CacheError::io(format!("hashing {object}"), err))
}

/// With `flush` (the content store keeps the staging file as the object's content file,
/// which is fsynced before the object counts or right behind its install), flushes the
/// staging file of a large object to disk every [`FLUSH_BEHIND`] landed bytes
/// while the download goes on, so that the final `fsync` only has the tail left to write:
/// without it, a large object's bytes start reaching the disk only after the last one
/// arrived (about a second per GiB here). With immediate durability the install waits for
/// that `fsync`. With deferred durability nothing waits for it, yet flushing behind is
/// faster there too: in one `bench_cacher` run (5 rounds) a 1 GiB object took 2.38 s
/// (median) left to the syncer and 1.84 s flushed behind with immediate durability; flushed
/// behind, deferred took 1.63 s in the next run, for the same client CPU. A gigabyte left
/// dirty is written while the reservation's last steps run, and they wait behind it.
/// Ends once every byte has landed.
async fn flush_behind(flight: &Flight, flush: bool) -> Result<(), CacheError> {
    let object = flight.object();
    if !flush || object.size < 2 * FLUSH_BEHIND {
        return Ok(());
    }
    let mut rx = flight.subscribe();
    let mut flushed = 0;
    loop {
        let (file, total) = {
            let p = rx.borrow_and_update();
            (p.file.clone(), p.total)
        };
        if total >= object.size {
            return Ok(());
        }
        if let Some(file) = file.filter(|_| total >= flushed + FLUSH_BEHIND) {
            blocking(
                format!("flushing the staging file of {object}"),
                move || file.sync_data(),
            )
            .await?;
            flushed = total;
            continue;
        }
        if rx.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Runs blocking file I/O off the runtime; errors name `context`.
pub(super) async fn blocking<T, F>(context: String, op: F) -> Result<T, CacheError>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result.map_err(|err| CacheError::io(context, err)),
        Err(join) => Err(CacheError::io(context, std::io::Error::other(join))),
    }
}

/// Removes a file, logging failures other than "already gone".
pub(super) async fn remove_quietly(path: PathBuf) {
    let shown = path.display().to_string();
    let result = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(err)) => tracing::warn!(path = %shown, error = %err, "cannot remove a cache file"),
        Err(err) => tracing::warn!(path = %shown, error = %err, "removing a cache file failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::expected_md5;

    #[test]
    fn only_single_part_etags_state_an_md5() {
        assert!(expected_md5("d41d8cd98f00b204e9800998ecf8427e").is_some());
        assert!(expected_md5("D41D8CD98F00B204E9800998ECF8427E").is_some());
        assert!(expected_md5("d41d8cd98f00b204e9800998ecf8427e-3").is_none());
        assert!(expected_md5("zz1d8cd98f00b204e9800998ecf8427e").is_none());
        assert!(expected_md5("").is_none());
    }
}
