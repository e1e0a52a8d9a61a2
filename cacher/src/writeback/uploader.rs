//! The uploader: moves journaled writes and deletes to S3, in priority order, at most
//! `concurrency` at once and never two of one key at once, through the upload shaper (the
//! bandwidth schedule), verifying what S3 stored. Retryable failures go back to the queue
//! with exponential backoff and jitter; permanent ones (the bucket is gone, access denied)
//! leave the transfer `failed`, its bytes still dirty in the office, retried at the next start.
//!
//! (Over 600 lines: one transfer from queue to verified upload and its bookkeeping; the
//! ordering rules it keeps, never two of one key and never an older write after a newer
//! one, are easier to check in one file.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::digest::Md5;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use milepost_schema::entity::transfer;
use milepost_schema::enums::{TransferOp, TransferState};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

use super::{journal, multipart_etag, Inner, WriteBackError};
use crate::cache::ObjectKey;
use milepost_store::{
    put_stream_with, Backoff, Jitter, ObjectMetadata, StoreError, StoreErrorKind, UploadOptions,
};

/// How often an upload in progress records its bytes in the journal.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The longest the uploader sleeps without being woken.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Bytes per read of the office copy.
const READ_CHUNK: usize = 1024 * 1024;

/// How one attempt of a transfer ended.
enum Attempt {
    Done,
    /// Try again after the backoff.
    Retry(String),
    /// Will not succeed by retrying.
    Failed(String),
    /// Stopped because this node's cluster lease lapsed: another node may be taking the row
    /// over, so nothing of the attempt is recorded.
    Fenced,
}

/// The uploader loop as its own task ([`WriteBack::start`](super::WriteBack::start)); returns
/// when the write-back stops.
pub(super) async fn run(inner: Arc<Inner>) {
    let stop = inner.stop.clone();
    let mut uploader = Uploader::new(inner);
    while uploader.step(&stop).await != UploaderStep::Stopped {}
    uploader.finish().await;
}

/// What one [`Uploader::step`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploaderStep {
    /// Transfers are running (this many).
    Uploading(usize),
    /// Nothing is running: the queue is empty, or what is queued waits for its backoff.
    Idle,
    /// The write-back or the caller's stop token stopped it.
    Stopped,
}

/// The uploader, driven one step at a time by whoever runs it: its own task
/// ([`WriteBack::start`](super::WriteBack::start)) or a host's worker runner
/// ([`WriteBack::uploader`](super::WriteBack::uploader)). Dropping it aborts the uploads in
/// flight: their rows stay `uploading`, and start-up queues them again.
pub struct Uploader {
    inner: Arc<Inner>,
    running: JoinSet<(transfer::Model, Attempt)>,
    /// (bucket, key) of the running transfers: never two of one key at once.
    busy: HashSet<(String, String)>,
    /// Transfers backing off: when they may run again, and how many failures so far.
    not_before: HashMap<i64, (Instant, u32)>,
    /// In an office cluster: when the uploads of nodes that are gone were last looked for.
    last_take_over: Instant,
    /// In an office cluster: transfers stopped when this node's lease lapsed, to queue again
    /// once it holds its lease again (unless another node took them over meanwhile).
    fenced: Vec<i64>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("running", &self.running.len())
            .field("backing_off", &self.not_before.len())
            .finish_non_exhaustive()
    }
}

impl Uploader {
    pub(super) fn new(inner: Arc<Inner>) -> Uploader {
        Uploader {
            inner,
            running: JoinSet::new(),
            busy: HashSet::new(),
            not_before: HashMap::new(),
            last_take_over: Instant::now(),
            fenced: Vec::new(),
        }
    }

    /// Starts what the queue allows, then waits for one event: a transfer ended, a write was
    /// journaled, a backoff ran out, the idle poll, or a stop (the write-back's or `stop`).
    /// Returns what it saw once that event is handled.
    pub async fn step(&mut self, stop: &tokio_util::sync::CancellationToken) -> UploaderStep {
        let inner = Arc::clone(&self.inner);
        if inner.stop.is_cancelled() || stop.is_cancelled() {
            return UploaderStep::Stopped;
        }
        self.fill().await;
        let running = self.running.len();
        tokio::select! {
            () = inner.stop.cancelled() => return UploaderStep::Stopped,
            () = stop.cancelled() => return UploaderStep::Stopped,
            () = inner.wake.notified() => {}
            Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                if let Ok((row, outcome)) = joined {
                    self.busy.remove(&(row.bucket.clone(), row.key.clone()));
                    end(&inner, &row, outcome, &mut self.not_before, &mut self.fenced).await;
                }
            }
            // A transfer backing off becomes due; otherwise a slow poll, in case a row was
            // queued by another process sharing the database.
            () = tokio::time::sleep_until(next_due(&self.not_before)) => {}
        }
        if running == 0 {
            UploaderStep::Idle
        } else {
            UploaderStep::Uploading(running)
        }
    }

    /// Starts queued transfers up to the concurrency, skipping keys in flight and transfers
    /// backing off.
    async fn fill(&mut self) {
        let inner = &self.inner;
        let concurrency = inner.settings.concurrency.max(1);
        if self.running.len() >= concurrency {
            return;
        }
        let owner = match &inner.settings.cluster {
            Some(node) => {
                if !node.holds_lease() {
                    // Another node may be taking this node's work over: start nothing.
                    tracing::warn!(node = %node.id(), "cluster lease not renewed lately; no upload starts");
                    return;
                }
                if !self.fenced.is_empty() {
                    match journal::take_back(&inner.db, node.id(), &self.fenced).await {
                        Ok(_) => self.fenced.clear(),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot queue again the uploads stopped when the lease lapsed");
                            return;
                        }
                    }
                }
                if self.last_take_over.elapsed() >= node.lease() / 2 {
                    self.last_take_over = Instant::now();
                    if let Err(err) = journal::take_over(&inner.db, node.id(), false).await {
                        tracing::warn!(error = %err, "cannot look for uploads of nodes that are gone");
                    }
                }
                Some(node.id())
            }
            None => None,
        };
        let want = (concurrency * 4 + self.busy.len()) as u64;
        let rows = match journal::next_queued(&inner.db, want).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the upload queue");
                return;
            }
        };
        let now = Instant::now();
        for row in rows {
            if self.running.len() >= concurrency {
                break;
            }
            let id = (row.bucket.clone(), row.key.clone());
            if self.busy.contains(&id)
                || self
                    .not_before
                    .get(&row.id)
                    .is_some_and(|(at, _)| *at > now)
            {
                continue;
            }
            match journal::start(&inner.db, &row, owner).await {
                Ok(true) => {}
                Ok(false) => {
                    // Superseded meanwhile, or a newer write of its key exists: this one
                    // must never land after it.
                    retire_if_stale(inner, &row).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start a transfer");
                    break;
                }
            }
            self.busy.insert(id);
            let inner = Arc::clone(inner);
            self.running.spawn(async move {
                // In a cluster an upload must not outlive this node's lease: once it lapses
                // another node may upload the row, and a newer write of its key after it,
                // which this upload would then overwrite with older bytes. Dropped, the
                // request is cut before its body ends, so S3 never stores it.
                let attempt = match inner.settings.cluster.clone() {
                    Some(node) => tokio::select! {
                        attempt = attempt(&inner, &row) => attempt,
                        () = node.lease_lapsed() => Attempt::Fenced,
                    },
                    None => attempt(&inner, &row).await,
                };
                (row, attempt)
            });
        }
    }

    /// Stops: the uploads in flight are aborted (their rows stay `uploading`; start-up
    /// queues them again) and awaited.
    pub async fn finish(mut self) {
        self.running.abort_all();
        while self.running.join_next().await.is_some() {}
    }
}

/// When the uploader must look at the queue again without being woken: when the first
/// transfer backing off is due, and at least every few seconds.
fn next_due(not_before: &HashMap<i64, (Instant, u32)>) -> Instant {
    let idle = Instant::now() + IDLE_POLL;
    not_before
        .values()
        .map(|(at, _)| *at)
        .filter(|at| *at > Instant::now())
        .min()
        .map_or(idle, |at| at.min(idle))
}

/// Records how an attempt ended and settles the office version when S3 has it.
async fn end(
    inner: &Arc<Inner>,
    row: &transfer::Model,
    outcome: Attempt,
    not_before: &mut HashMap<i64, (Instant, u32)>,
    fenced: &mut Vec<i64>,
) {
    let size = u64::try_from(row.size).unwrap_or(0);
    if matches!(outcome, Attempt::Retry(_) | Attempt::Failed(_))
        && retire_if_stale(inner, row).await
    {
        // A newer write or delete of the key was acknowledged while this one was uploading:
        // it carries the key's final state, and this one must not land after it.
        not_before.remove(&row.id);
        inner.ended.send_replace(());
        return;
    }
    let recorded = match outcome {
        Attempt::Done => {
            not_before.remove(&row.id);
            journal::finish(&inner.db, row.id, TransferState::Done, size, None).await
        }
        Attempt::Retry(error) => {
            let failures = not_before.get(&row.id).map_or(0, |(_, n)| *n) + 1;
            let delay = backoff(&inner.settings, failures);
            tracing::warn!(transfer = row.id, bucket = %row.bucket, key = %row.key, attempt = row.attempts + 1, retry_in = ?delay, error = %error, "upload failed, will retry");
            not_before.insert(row.id, (Instant::now() + delay, failures));
            journal::finish(&inner.db, row.id, TransferState::Queued, 0, Some(error)).await
        }
        Attempt::Fenced => {
            // Nothing is written: the row may be another node's by now.
            tracing::warn!(transfer = row.id, bucket = %row.bucket, key = %row.key, "cluster lease lapsed: upload stopped, for this node or another to run again");
            not_before.remove(&row.id);
            fenced.push(row.id);
            return;
        }
        Attempt::Failed(error) => {
            not_before.remove(&row.id);
            tracing::error!(transfer = row.id, bucket = %row.bucket, key = %row.key, error = %error, "upload failed for good; the office copy stays until the next start retries it");
            journal::finish(&inner.db, row.id, TransferState::Failed, 0, Some(error)).await
        }
    };
    if let Err(err) = recorded {
        tracing::error!(transfer = row.id, error = %err, "cannot record the end of a transfer");
    }
    inner.ended.send_replace(());
}

/// Supersedes `row` if a newer transfer of its key exists, releasing its dirty entry; returns
/// whether it did. On a database error the row is left as it is (and reported): the next
/// look at it checks again.
async fn retire_if_stale(inner: &Inner, row: &transfer::Model) -> bool {
    match journal::supersede_if_stale(&inner.db, row).await {
        Ok(true) => {
            tracing::info!(transfer = row.id, bucket = %row.bucket, key = %row.key, "superseded by a newer write of its key");
            inner
                .release_superseded(std::slice::from_ref(row), None)
                .await;
            true
        }
        Ok(false) => false,
        Err(err) => {
            tracing::warn!(transfer = row.id, error = %err, "cannot check a transfer against newer writes of its key");
            false
        }
    }
}

/// The uploader's delay before retrying after `failures` failures: the shared [`Backoff`] with
/// the uploader's own limits, at most 15 doublings, between half and all of the ceiling.
fn backoff(settings: &super::WriteBackSettings, failures: u32) -> Duration {
    Backoff {
        base: settings.retry_base,
        max: settings.retry_max,
        max_doublings: 15,
        jitter: Jitter::Equal,
    }
    .delay(failures)
}

/// One attempt of one transfer.
async fn attempt(inner: &Arc<Inner>, row: &transfer::Model) -> Attempt {
    match row.op {
        TransferOp::Delete => match inner.upstream.delete(&row.bucket, &row.key).await {
            Ok(()) => {
                inner.settle(&row.bucket, &row.key, row.id);
                Attempt::Done
            }
            Err(err) => classify(err),
        },
        TransferOp::Put => {
            let object = ObjectKey::new(
                row.bucket.clone(),
                row.key.clone(),
                row.etag.clone().unwrap_or_default(),
                u64::try_from(row.size).unwrap_or(0),
            );
            let metadata = match journal::metadata(&inner.db, row.id).await {
                Ok(metadata) => metadata,
                Err(err @ WriteBackError::Database { .. }) => {
                    return Attempt::Retry(err.to_string())
                }
                // Unreadable: uploading without would lose it in S3 for good.
                Err(err) => return Attempt::Failed(err.to_string()),
            };
            match upload(inner, row.id, &object, &metadata).await {
                Ok(upstream_etag) => {
                    match journal::other_put_of(&inner.db, row.id, &object).await {
                        Ok(true) => {}
                        Ok(false) => {
                            if let Err(err) = inner.cache.mark_clean(&object, &upstream_etag).await
                            {
                                // S3 has the bytes; the entry just stays pinned until restart.
                                tracing::warn!(object = %object, error = %err, "cannot mark an uploaded entry clean");
                            }
                        }
                        Err(err) => {
                            tracing::warn!(object = %object, error = %err, "cannot check the journal; the entry stays dirty");
                        }
                    }
                    inner.settle(&row.bucket, &row.key, row.id);
                    Attempt::Done
                }
                Err(UploadError::Store(err)) => classify(err),
                Err(UploadError::Local(err)) => Attempt::Failed(err.to_string()),
                Err(UploadError::Mismatch(what)) => Attempt::Retry(what),
            }
        }
    }
}

fn classify(err: StoreError) -> Attempt {
    match err.kind() {
        StoreErrorKind::Throttled
        | StoreErrorKind::Unavailable
        | StoreErrorKind::Corrupt
        | StoreErrorKind::PreconditionFailed => Attempt::Retry(err.to_string()),
        // A body error is the office copy failing to read: retrying may help (a transient
        // I/O error); a missing file is caught before the upload starts.
        StoreErrorKind::Invalid if matches!(err, StoreError::Body { .. }) => {
            Attempt::Retry(err.to_string())
        }
        StoreErrorKind::NotFound
        | StoreErrorKind::Denied
        | StoreErrorKind::Invalid
        | StoreErrorKind::InvalidRange
        | StoreErrorKind::TooLarge => Attempt::Failed(err.to_string()),
    }
}

enum UploadError {
    Store(StoreError),
    Local(WriteBackError),
    /// S3 stored something else than was sent.
    Mismatch(String),
}

/// Hashing what was sent failed (OpenSSL's context broke): the upload cannot be verified.
fn hashing(err: std::io::Error) -> UploadError {
    UploadError::Local(WriteBackError::io("hashing an upload".to_owned(), err))
}

/// MD5s of the whole body and of each part, computed as the body streams out.
struct Digests {
    whole: Md5,
    part: Md5,
    part_len: u64,
    part_size: u64,
    parts: Vec<[u8; 16]>,
}

impl Digests {
    fn update(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.whole.update(bytes)?;
        while !bytes.is_empty() {
            let room = usize::try_from(self.part_size - self.part_len).unwrap_or(usize::MAX);
            let take = room.min(bytes.len());
            self.part.update(&bytes[..take])?;
            self.part_len += take as u64;
            bytes = &bytes[take..];
            if self.part_len == self.part_size {
                let done = std::mem::take(&mut self.part);
                self.parts.push(done.finish()?);
                self.part_len = 0;
            }
        }
        Ok(())
    }
}

/// Uploads the office copy of `object` with `metadata` and verifies S3's ETag against the
/// bytes sent. Returns the upstream ETag.
async fn upload(
    inner: &Arc<Inner>,
    id: i64,
    object: &ObjectKey,
    metadata: &ObjectMetadata,
) -> Result<String, UploadError> {
    // With the office tier, a scratch copy on this node's disk, removed when the upload ends.
    let local = inner
        .cache
        .local_file(object)
        .await
        .map_err(|err| UploadError::Local(WriteBackError::Cache(err)))?;
    let Some(local) = local else {
        return Err(UploadError::Local(WriteBackError::io(
            format!("reading the office copy of {object}"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "not in the office cache"),
        )));
    };
    let path = local.path.clone();
    let file = tokio::fs::File::open(&path).await.map_err(|err| {
        UploadError::Local(WriteBackError::io(
            format!("opening the office copy of {object}"),
            err,
        ))
    })?;
    let part_size = inner.settings.part_size.max(milepost_store::MIN_PART_SIZE);
    let part_size = part_size.max(
        usize::try_from(object.size.div_ceil(milepost_store::MAX_PARTS as u64))
            .unwrap_or(usize::MAX),
    );
    if object.size > part_size as u64 {
        drop(file);
        return upload_parts(inner, id, object, metadata, &path, part_size as u64).await;
    }
    let digests = Arc::new(Mutex::new(Digests {
        whole: Md5::new(),
        part: Md5::new(),
        part_len: 0,
        part_size: part_size as u64,
        parts: Vec::new(),
    }));
    let sent = Arc::new(AtomicU64::new(0));
    let body = ReaderStream::with_capacity(file, READ_CHUNK).boxed();
    let body = inner.shaper.shape(body);
    let body = {
        let (digests, sent) = (Arc::clone(&digests), Arc::clone(&sent));
        body.and_then(move |chunk: Bytes| {
            let (digests, sent) = (Arc::clone(&digests), Arc::clone(&sent));
            async move {
                let len = chunk.len() as u64;
                let hashed = chunk.clone();
                tokio::task::spawn_blocking(move || {
                    digests
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .update(&hashed)
                })
                .await
                .map_err(std::io::Error::other)??;
                sent.fetch_add(len, Ordering::Relaxed);
                Ok(chunk)
            }
        })
    };
    let options = UploadOptions { part_size };
    let upload = put_stream_with(
        inner.upstream.as_ref(),
        &object.bucket,
        &object.key,
        body,
        &options,
        metadata,
    );
    tokio::pin!(upload);
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let meta = loop {
        tokio::select! {
            result = &mut upload => break result.map_err(UploadError::Store)?,
            _ = ticker.tick() => {
                if let Err(err) = journal::progress(&inner.db, id, sent.load(Ordering::Relaxed)).await {
                    tracing::debug!(error = %err, "cannot record upload progress");
                }
            }
        }
    };
    let sent = sent.load(Ordering::Relaxed);
    if sent != object.size {
        return Err(UploadError::Mismatch(format!(
            "sent {sent} bytes of {object}, which has {}",
            object.size
        )));
    }
    let expected = {
        let mut digests = digests.lock().unwrap_or_else(PoisonError::into_inner);
        if meta.etag.contains('-') {
            if digests.part_len > 0 || digests.parts.is_empty() {
                let last = std::mem::take(&mut digests.part);
                digests.parts.push(last.finish().map_err(hashing)?);
                digests.part_len = 0;
            }
            multipart_etag(&digests.parts).map_err(hashing)?
        } else {
            hex::encode(
                std::mem::take(&mut digests.whole)
                    .finish()
                    .map_err(hashing)?,
            )
        }
    };
    if !meta.etag.is_empty() && meta.etag != expected {
        return Err(UploadError::Mismatch(format!(
            "S3 stored {object} with ETag {}, but the bytes sent give {expected}",
            meta.etag
        )));
    }
    let etag = if meta.etag.is_empty() {
        expected
    } else {
        meta.etag
    };
    Ok(etag)
}

/// Parts of one object uploading at once: a single large object would otherwise go one part
/// at a time, a round trip per part with the link idle in between.
const PARTS_IN_FLIGHT: usize = 4;

/// Uploads the office copy at `path` of `object`, with `metadata`, as a multipart upload of
/// `part_size` parts, [`PARTS_IN_FLIGHT`] at a time, each read from the file through the
/// upload shaper (so the bandwidth schedule holds across parts) and hashed; aborts the upload
/// on any failure, and checks S3's ETag against the MD5s of the parts sent. Returns the
/// upstream ETag.
async fn upload_parts(
    inner: &Arc<Inner>,
    id: i64,
    object: &ObjectKey,
    metadata: &ObjectMetadata,
    path: &std::path::Path,
    part_size: u64,
) -> Result<String, UploadError> {
    let store = &inner.upstream;
    let upload_id = store
        .create_multipart_with(&object.bucket, &object.key, metadata)
        .await
        .map_err(UploadError::Store)?;
    let sent = Arc::new(AtomicU64::new(0));
    let parts = object.size.div_ceil(part_size);
    let uploads = futures::stream::iter(0..parts)
        .map(|index| {
            let (sent, upload_id) = (Arc::clone(&sent), upload_id.as_str());
            async move {
                let start = index * part_size;
                let len = part_size.min(object.size - start);
                let (bytes, md5) = read_part(inner, object, path, start, len, &sent).await?;
                let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
                let etag = store
                    .upload_part(&object.bucket, &object.key, upload_id, number, bytes)
                    .await
                    .map_err(UploadError::Store)?;
                Ok::<_, UploadError>((number, etag, md5))
            }
        })
        .buffered(PARTS_IN_FLIGHT)
        .try_collect::<Vec<_>>();
    tokio::pin!(uploads);
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let uploaded = loop {
        tokio::select! {
            result = &mut uploads => break result,
            _ = ticker.tick() => {
                if let Err(err) = journal::progress(&inner.db, id, sent.load(Ordering::Relaxed)).await {
                    tracing::debug!(error = %err, "cannot record upload progress");
                }
            }
        }
    };
    let completed = match uploaded {
        Ok(parts) => {
            let md5s: Vec<[u8; 16]> = parts.iter().map(|(_, _, md5)| *md5).collect();
            let etags = parts.into_iter().map(|(n, etag, _)| (n, etag)).collect();
            store
                .complete_multipart(&object.bucket, &object.key, &upload_id, etags)
                .await
                .map(|meta| (meta, md5s))
                .map_err(UploadError::Store)
        }
        Err(err) => Err(err),
    };
    let (meta, md5s) = match completed {
        Ok(done) => done,
        Err(err) => {
            if let Err(abort) = store
                .abort_multipart(&object.bucket, &object.key, &upload_id)
                .await
            {
                tracing::warn!(object = %object, upload_id, error = %abort, "aborting a failed multipart upload failed");
            }
            return Err(err);
        }
    };
    let expected = multipart_etag(&md5s).map_err(hashing)?;
    if !meta.etag.is_empty() && meta.etag != expected {
        return Err(UploadError::Mismatch(format!(
            "S3 stored {object} with ETag {}, but the parts sent give {expected}",
            meta.etag
        )));
    }
    Ok(if meta.etag.is_empty() {
        expected
    } else {
        meta.etag
    })
}

/// Reads `len` bytes at `start` of the office copy through the upload shaper, counting them
/// in `sent`; returns them with their MD5.
async fn read_part(
    inner: &Arc<Inner>,
    object: &ObjectKey,
    path: &std::path::Path,
    start: u64,
    len: u64,
    sent: &AtomicU64,
) -> Result<(Bytes, [u8; 16]), UploadError> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let local = |err: std::io::Error| {
        UploadError::Local(WriteBackError::io(
            format!("reading the office copy of {object}"),
            err,
        ))
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(local)?;
    let chunks = ReaderStream::with_capacity(file.take(len), READ_CHUNK).boxed();
    let mut chunks = inner.shaper.shape(chunks);
    let mut part = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(local)?;
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        part.extend_from_slice(&chunk);
    }
    if part.len() as u64 != len {
        return Err(UploadError::Mismatch(format!(
            "read {} bytes of {object} at {start}, expected {len}",
            part.len()
        )));
    }
    let part = part.freeze();
    let hashed = part.clone();
    let md5 = tokio::task::spawn_blocking(move || Md5::digest(&hashed))
        .await
        .map_err(|err| local(std::io::Error::other(err)))?
        .map_err(local)?;
    Ok((part, md5))
}
