//! Object versions in fixed-size blocks: in memory (an LRU of recent blocks, what read-ahead
//! fills and sequential readers drain), on the workstation's disk (`--cache-dir`, bounded by
//! `--cache-size`, reused across mounts), and from the office through [`Remote::read`] with
//! one fetch per block however many readers want it at once.
//!
//! A block is named by its object version's identity (bucket, key, ETag) and its index, so a
//! new version of a key never meets an old block. A random reader costs one block (256 KiB)
//! per miss; a sequential reader's read-ahead fetches runs of missing blocks in one ranged GET
//! of up to [`SPAN_BLOCKS`] blocks.
//!
//! On disk each object version is one sparse file of its blocks at their offsets, beside a
//! table of one 8-byte entry per block: present, and the block's CRC-32C. The entry is
//! written after the block, and checked on every read from disk: a block torn by a crash or
//! damaged on disk is dropped and fetched again, never served. Whole object versions are
//! evicted, least recently used first.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use sha2::{Digest as _, Sha256};
use tokio::sync::{watch, Semaphore};

use crate::remote::{with_retries, Remote, RemoteError, RemoteFile};

/// Bytes per block: what a random read costs, and the unit of the caches.
pub const BLOCK_SIZE: u64 = 256 << 10;

/// Most blocks one GET fetches for a sequential reader (4 MiB).
pub const SPAN_BLOCKS: u64 = 16;

/// Blocks queued for the disk writer at most (16 MiB); beyond, a block stays in memory only.
const WRITES_IN_FLIGHT: usize = 64;

/// An object version's identity as the blocks' name: hex of a digest of bucket, key and ETag.
pub fn object_id(file: &RemoteFile) -> Arc<str> {
    let mut hasher = Sha256::new();
    for part in [&file.bucket, &file.key, &file.etag] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    Arc::from(hex::encode(&hasher.finalize()[..16]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockId {
    object: Arc<str>,
    index: u64,
}

/// Counters for the mount's report and the tests.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub fetched_blocks: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub damaged_on_disk: AtomicU64,
}

/// How the block cache is set up.
#[derive(Debug, Clone)]
pub struct BlockSettings {
    /// Blocks kept in memory.
    pub memory_blocks: usize,
    /// Where blocks persist between reads and mounts; none keeps them in memory only.
    pub disk_dir: Option<PathBuf>,
    /// Most bytes the disk cache holds; the least recently used object versions go first.
    pub disk_bytes: u64,
    /// Ranged GETs to the office at once.
    pub fetch_concurrency: usize,
    /// How long transient failures are retried before a read fails.
    pub retry_for: Duration,
}

/// A block for the disk writer, with the permit that counts it as queued.
type DiskWrite = (BlockId, Bytes, tokio::sync::OwnedSemaphorePermit);

/// A block being fetched: its bytes (or why not) once there.
type Pending = watch::Receiver<Option<Result<Bytes, RemoteError>>>;
type Promise = watch::Sender<Option<Result<Bytes, RemoteError>>>;

pub struct BlockCache {
    remote: Arc<dyn Remote>,
    memory: Mutex<LruCache<BlockId, Bytes>>,
    in_flight: Mutex<HashMap<BlockId, Pending>>,
    disk: Option<Arc<DiskBlocks>>,
    /// The one thread that writes blocks to disk, in the order fetched: concurrent writes
    /// into one file would contend for its inode lock (and spin on it, burning CPU).
    disk_writer: Option<std::sync::mpsc::Sender<DiskWrite>>,
    /// Blocks being written to disk in the background, at most [`WRITES_IN_FLIGHT`].
    writes: Arc<Semaphore>,
    fetches: Semaphore,
    retry_for: Duration,
    pub stats: BlockStats,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("disk", &self.disk)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The length of block `index` of an object of `size` bytes.
fn block_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * BLOCK_SIZE).min(BLOCK_SIZE)
}

/// Where a block comes from, decided while holding the in-flight table.
enum Claim {
    Memory(Bytes),
    Wait(Pending),
    Fetch(Promise),
}

impl BlockCache {
    pub fn open(remote: Arc<dyn Remote>, settings: &BlockSettings) -> std::io::Result<BlockCache> {
        let disk = match &settings.disk_dir {
            Some(dir) => Some(Arc::new(DiskBlocks::open(dir, settings.disk_bytes)?)),
            None => None,
        };
        let disk_writer = match &disk {
            Some(disk) => {
                let (tx, rx) = std::sync::mpsc::channel::<DiskWrite>();
                let disk = Arc::clone(disk);
                std::thread::Builder::new()
                    .name("milepost-blocks".into())
                    .spawn(move || {
                        for (id, bytes, permit) in rx {
                            disk.put(&id, &bytes);
                            drop(permit);
                        }
                    })?;
                Some(tx)
            }
            None => None,
        };
        Ok(BlockCache {
            remote,
            memory: Mutex::new(LruCache::new(
                NonZeroUsize::new(settings.memory_blocks.max(1)).expect("at least one"),
            )),
            in_flight: Mutex::new(HashMap::new()),
            disk,
            disk_writer,
            writes: Arc::new(Semaphore::new(WRITES_IN_FLIGHT)),
            fetches: Semaphore::new(settings.fetch_concurrency.max(1)),
            retry_for: settings.retry_for,
            stats: BlockStats::default(),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, LruCache<BlockId, Bytes>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<BlockId, Pending>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// In memory, being fetched, or ours to fetch. `peek` leaves the memory LRU's order
    /// alone (read-ahead asking, not a reader reading).
    fn claim(&self, id: &BlockId, peek: bool) -> Claim {
        let mut in_flight = self.in_flight();
        {
            let mut memory = self.memory();
            let hit = if peek {
                memory.peek(id)
            } else {
                memory.get(id)
            };
            if let Some(bytes) = hit {
                return Claim::Memory(bytes.clone());
            }
        }
        if let Some(pending) = in_flight.get(id) {
            return Claim::Wait(pending.clone());
        }
        let (promise, pending) = watch::channel(None);
        in_flight.insert(id.clone(), pending);
        Claim::Fetch(promise)
    }

    /// Block `index` of `file`: from memory, from a fetch underway, from disk, or fetched.
    async fn block(
        &self,
        file: &RemoteFile,
        object: &Arc<str>,
        index: u64,
    ) -> Result<Bytes, RemoteError> {
        let id = BlockId {
            object: Arc::clone(object),
            index,
        };
        match self.claim(&id, false) {
            Claim::Memory(bytes) => {
                self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
                Ok(bytes)
            }
            Claim::Wait(mut pending) => match pending.wait_for(Option::is_some).await {
                Ok(done) => done.clone().expect("waited for a value"),
                Err(_) => Err(RemoteError::Transient("a fetch was abandoned".into())),
            },
            Claim::Fetch(promise) => {
                let outcome = promise.subscribe();
                self.fetch(file, object, index, vec![promise]).await;
                let done = outcome.borrow().clone();
                done.unwrap_or_else(|| Err(RemoteError::Transient("a fetch was abandoned".into())))
            }
        }
    }

    /// Fetches the blocks `first .. first + promises.len()` of `file` (claimed by the
    /// caller): each from disk when it is there, the rest in one ranged GET per run; keeps
    /// them in memory (and on disk) and keeps every promise.
    async fn fetch(
        &self,
        file: &RemoteFile,
        object: &Arc<str>,
        first: u64,
        promises: Vec<Promise>,
    ) {
        let mut missing = Vec::new();
        for (index, promise) in (first..).zip(promises) {
            let id = BlockId {
                object: Arc::clone(object),
                index,
            };
            let len = block_len(file.size, index);
            let from_disk = match &self.disk {
                Some(disk) => disk.get(&id, len).await,
                None => DiskRead::Miss,
            };
            match from_disk {
                DiskRead::Hit(bytes) => {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    self.deliver(id, Ok(bytes), promise, false);
                }
                DiskRead::Damaged => {
                    self.stats.damaged_on_disk.fetch_add(1, Ordering::Relaxed);
                    missing.push((id, promise));
                }
                DiskRead::Miss => missing.push((id, promise)),
            }
        }
        // Runs of consecutive missing blocks, one GET each.
        let mut runs: Vec<Vec<(BlockId, Promise)>> = Vec::new();
        for (id, promise) in missing {
            match runs.last_mut() {
                Some(run)
                    if run
                        .last()
                        .is_some_and(|(last, _)| last.index + 1 == id.index) =>
                {
                    run.push((id, promise))
                }
                _ => runs.push(vec![(id, promise)]),
            }
        }
        for run in runs {
            let start = run[0].0.index * BLOCK_SIZE;
            let end = (run[run.len() - 1].0.index * BLOCK_SIZE + BLOCK_SIZE).min(file.size);
            let len = end - start;
            let what = format!("s3://{}/{} bytes {start}+{len}", file.bucket, file.key);
            let fetched = with_retries(&what, self.retry_for, || async {
                let _permit = self
                    .fetches
                    .acquire()
                    .await
                    .map_err(|_| RemoteError::Permanent("the mount is shutting down".into()))?;
                let bytes = self.remote.read(file, start, len).await?;
                if bytes.len() as u64 != len {
                    // A body cut short by a server going away mid-response.
                    return Err(RemoteError::Transient(format!(
                        "got {} of {len} bytes",
                        bytes.len()
                    )));
                }
                Ok(bytes)
            })
            .await;
            match fetched {
                Ok(bytes) => {
                    self.stats
                        .fetched_blocks
                        .fetch_add(run.len() as u64, Ordering::Relaxed);
                    self.stats.fetched_bytes.fetch_add(len, Ordering::Relaxed);
                    for (id, promise) in run {
                        let from = (id.index * BLOCK_SIZE - start) as usize;
                        let to = ((id.index * BLOCK_SIZE + BLOCK_SIZE).min(end) - start) as usize;
                        self.deliver(id, Ok(bytes.slice(from..to)), promise, true);
                    }
                }
                Err(err) => {
                    for (id, promise) in run {
                        self.deliver(id, Err(err.clone()), promise, false);
                    }
                }
            }
        }
    }

    /// Keeps a fetched block (in memory, and on disk when `keep` and a disk cache is set up),
    /// tells whoever waits on it, and ends its fetch.
    fn deliver(
        &self,
        id: BlockId,
        result: Result<Bytes, RemoteError>,
        promise: Promise,
        keep: bool,
    ) {
        if let Ok(bytes) = &result {
            self.memory().put(id.clone(), bytes.clone());
            if keep {
                self.keep_on_disk(&id, bytes);
            }
        }
        self.in_flight().remove(&id);
        // Nobody waiting is fine: the block is in memory for the next reader.
        let _ = promise.send(Some(result));
    }

    /// Writes a block to disk off the reader's path: the block is in memory meanwhile. A disk
    /// slower than the network holds fetches back here rather than piling blocks up.
    fn keep_on_disk(&self, id: &BlockId, bytes: &Bytes) {
        let Some(writer) = &self.disk_writer else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            tracing::debug!("the disk cache is behind; a block is kept in memory only");
            return;
        };
        // The writer ends only with this cache; a send cannot fail before.
        let _ = writer.send((id.clone(), bytes.clone(), permit));
    }

    /// Waits until every block fetched so far is on disk.
    pub async fn settle(&self) {
        let _all = self.writes.acquire_many(WRITES_IN_FLIGHT as u32).await;
    }

    /// Bytes `offset .. offset + size` of `file` when every block they lie in is in memory:
    /// what a sequential reader behind its read-ahead mostly asks for, answered without a
    /// task or a wake-up.
    pub fn read_now(
        &self,
        file: &RemoteFile,
        object: &Arc<str>,
        offset: u64,
        size: u64,
    ) -> Option<Bytes> {
        let end = offset.saturating_add(size).min(file.size);
        if offset >= end {
            return Some(Bytes::new());
        }
        let (first, last) = (offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        let blocks: Vec<Bytes> = {
            let mut memory = self.memory();
            (first..=last)
                .map(|index| {
                    memory
                        .get(&BlockId {
                            object: Arc::clone(object),
                            index,
                        })
                        .cloned()
                })
                .collect::<Option<_>>()?
        };
        self.stats
            .memory_hits
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        if let [block] = &blocks[..] {
            let start = (offset - first * BLOCK_SIZE) as usize;
            return Some(block.slice(start..start + (end - offset) as usize));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (index, block) in (first..=last).zip(&blocks) {
            let block_start = index * BLOCK_SIZE;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + block.len() as u64) - block_start;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Some(out.freeze())
    }

    /// Bytes `offset .. offset + size` of `file` (fewer at its end).
    pub async fn read(
        &self,
        file: &RemoteFile,
        object: &Arc<str>,
        offset: u64,
        size: u64,
    ) -> Result<Bytes, RemoteError> {
        let end = offset.saturating_add(size).min(file.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        if first == last {
            let block = self.block(file, object, first).await?;
            let start = (offset - first * BLOCK_SIZE) as usize;
            return Ok(block.slice(start..start + (end - offset) as usize));
        }
        let blocks = futures::future::try_join_all(
            (first..=last).map(|index| self.block(file, object, index)),
        )
        .await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (index, block) in (first..=last).zip(blocks) {
            let block_start = index * BLOCK_SIZE;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + block.len() as u64) - block_start;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// Starts fetching the blocks `from .. from + count` of `file` that are neither in memory
    /// nor underway, in runs within aligned spans of [`SPAN_BLOCKS`], without waiting for
    /// them.
    pub fn read_ahead(
        self: &Arc<Self>,
        file: &Arc<RemoteFile>,
        object: &Arc<str>,
        from: u64,
        count: u64,
    ) {
        let blocks = file.size.div_ceil(BLOCK_SIZE);
        let mut run: Vec<Promise> = Vec::new();
        let mut run_start = from;
        for index in from..(from + count).min(blocks) {
            let id = BlockId {
                object: Arc::clone(object),
                index,
            };
            let claimed = match self.claim(&id, true) {
                Claim::Fetch(promise) => Some(promise),
                Claim::Memory(_) | Claim::Wait(_) => None,
            };
            // Runs end at span boundaries: a reader moving on by one block then claims a
            // whole span further ahead, never a run of one.
            let boundary = index % SPAN_BLOCKS == 0;
            if claimed.is_none() || boundary {
                self.spawn_fetch(file, object, run_start, std::mem::take(&mut run));
            }
            if let Some(promise) = claimed {
                if run.is_empty() {
                    run_start = index;
                }
                run.push(promise);
            }
        }
        self.spawn_fetch(file, object, run_start, run);
    }

    fn spawn_fetch(
        self: &Arc<Self>,
        file: &Arc<RemoteFile>,
        object: &Arc<str>,
        first: u64,
        run: Vec<Promise>,
    ) {
        if run.is_empty() {
            return;
        }
        let (cache, file, object) = (Arc::clone(self), Arc::clone(file), Arc::clone(object));
        tokio::spawn(async move { cache.fetch(&file, &object, first, run).await });
    }
}

enum DiskRead {
    Hit(Bytes),
    Miss,
    Damaged,
}

/// A block's entry in an object's table: present, and its CRC-32C.
const PRESENT: u64 = 1 << 32;

/// What the disk holds of one object version.
#[derive(Debug, Default)]
struct OnDisk {
    /// The table's entries, read when the object is first touched in this mount.
    entries: Option<Vec<u64>>,
    /// Bytes its blocks take.
    bytes: u64,
}

/// The disk cache: `DIR/<first two hex digits>/<object id>.blocks` (the blocks at their
/// offsets, a sparse file) and `.table` (one little-endian u64 per block).
#[derive(Debug)]
struct DiskBlocks {
    dir: PathBuf,
    limit: u64,
    index: Mutex<DiskIndex>,
}

#[derive(Debug)]
struct DiskIndex {
    used: u64,
    /// Object id → what is on disk, least recently used first out.
    objects: LruCache<Arc<str>, OnDisk>,
}

impl DiskBlocks {
    fn open(dir: &Path, limit: u64) -> std::io::Result<DiskBlocks> {
        std::fs::create_dir_all(dir)?;
        // What earlier mounts left, least recently written first, so that it goes first.
        let mut found = Vec::new();
        for shard in std::fs::read_dir(dir)?.flatten() {
            for entry in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "blocks") {
                    continue;
                }
                let (Some(id), Ok(meta)) =
                    (path.file_stem().and_then(|s| s.to_str()), entry.metadata())
                else {
                    continue;
                };
                // Allocated bytes: the file is sparse.
                found.push((
                    meta.modified().ok(),
                    Arc::<str>::from(id),
                    meta.blocks() * 512,
                ));
            }
        }
        found.sort();
        let mut objects = LruCache::unbounded();
        let mut used = 0;
        for (_, id, bytes) in found {
            used += bytes;
            objects.put(
                id,
                OnDisk {
                    entries: None,
                    bytes,
                },
            );
        }
        let blocks = DiskBlocks {
            dir: dir.to_owned(),
            limit,
            index: Mutex::new(DiskIndex { used, objects }),
        };
        blocks.evict(&mut blocks.index(), None);
        Ok(blocks)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, DiskIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, object: &str, extension: &str) -> PathBuf {
        let shard = object.get(..2).unwrap_or("00");
        self.dir.join(shard).join(format!("{object}.{extension}"))
    }

    /// Removes least recently used objects (never `keep`) until within the limit.
    fn evict(&self, index: &mut DiskIndex, keep: Option<&str>) {
        while index.used > self.limit {
            let victim = index
                .objects
                .iter()
                .rev()
                .map(|(id, _)| Arc::clone(id))
                .find(|id| Some(&**id) != keep);
            let Some(id) = victim else { break };
            if let Some(gone) = index.objects.pop(&id) {
                index.used = index.used.saturating_sub(gone.bytes);
            }
            let _ = std::fs::remove_file(self.path(&id, "blocks"));
            let _ = std::fs::remove_file(self.path(&id, "table"));
        }
    }

    /// The table entry of block `index` of `object` (0 when absent), loading the table from
    /// disk the first time.
    fn entry(&self, object: &Arc<str>, index: u64) -> u64 {
        let mut disk = self.index();
        let Some(on_disk) = disk.objects.get_mut(object) else {
            return 0;
        };
        let entries = on_disk.entries.get_or_insert_with(|| {
            std::fs::read(self.path(object, "table"))
                .map(|bytes| {
                    bytes
                        .chunks_exact(8)
                        .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")))
                        .collect()
                })
                .unwrap_or_default()
        });
        entries.get(index as usize).copied().unwrap_or(0)
    }

    fn set_entry(&self, object: &Arc<str>, index: u64, entry: u64, bytes_delta: i64) {
        let mut disk = self.index();
        let on_disk = disk
            .objects
            .get_or_insert_mut(Arc::clone(object), OnDisk::default);
        let entries = on_disk.entries.get_or_insert_with(Vec::new);
        if entries.len() <= index as usize {
            entries.resize(index as usize + 1, 0);
        }
        entries[index as usize] = entry;
        on_disk.bytes = on_disk.bytes.saturating_add_signed(bytes_delta);
        disk.used = disk.used.saturating_add_signed(bytes_delta);
    }

    async fn get(&self, id: &BlockId, len: u64) -> DiskRead {
        let entry = self.entry(&id.object, id.index);
        if entry & PRESENT == 0 {
            return DiskRead::Miss;
        }
        let path = self.path(&id.object, "blocks");
        let offset = id.index * BLOCK_SIZE;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let file = std::fs::File::open(path)?;
            let mut data = vec![0u8; len as usize];
            file.read_exact_at(&mut data, offset)?;
            Ok(data)
        })
        .await;
        match read {
            Ok(Ok(data)) if crc32c::crc32c(&data) == entry as u32 => {
                DiskRead::Hit(Bytes::from(data))
            }
            _ => {
                tracing::warn!(object = %id.object, index = id.index, "a cached block failed its check; fetching it again");
                self.forget(id, len);
                DiskRead::Damaged
            }
        }
    }

    fn forget(&self, id: &BlockId, len: u64) {
        self.set_entry(&id.object, id.index, 0, -(len as i64));
        if let Ok(table) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(&id.object, "table"))
        {
            let _ = table.write_all_at(&0u64.to_le_bytes(), id.index * 8);
        }
    }

    /// Keeps `bytes` as block `id` (blocking: run off the async threads). The table entry is
    /// written after the block, so a crash between the two leaves it absent; a full or
    /// failing disk only costs the cache.
    fn put(&self, id: &BlockId, bytes: &Bytes) {
        if self.entry(&id.object, id.index) & PRESENT != 0 {
            return;
        }
        let written = (|| -> std::io::Result<()> {
            let data = self.path(&id.object, "blocks");
            std::fs::create_dir_all(data.parent().expect("a shard directory"))?;
            let open = |path: &Path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
            };
            open(&data)?.write_all_at(bytes, id.index * BLOCK_SIZE)?;
            let entry = PRESENT | u64::from(crc32c::crc32c(bytes));
            open(&self.path(&id.object, "table"))?
                .write_all_at(&entry.to_le_bytes(), id.index * 8)?;
            self.set_entry(&id.object, id.index, entry, bytes.len() as i64);
            Ok(())
        })();
        match written {
            Ok(()) => self.evict(&mut self.index(), Some(&id.object)),
            Err(err) => tracing::warn!(%err, "cannot keep a block on disk"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicU32;

    use crate::remote::{Shown, VersionRef};

    /// An object held in memory standing in for the office in these unit tests of the block
    /// arithmetic; the mount as a whole is tested against the real server
    /// (`api/tests/binary/mount.rs`).
    struct InMemory {
        bytes: Vec<u8>,
        reads: AtomicU32,
        fail_first: AtomicU32,
    }

    #[async_trait]
    impl Remote for InMemory {
        async fn shown(&self) -> Result<Vec<Shown>, RemoteError> {
            Ok(Vec::new())
        }
        async fn manifest(&self, _: &VersionRef) -> Result<Vec<RemoteFile>, RemoteError> {
            Ok(Vec::new())
        }
        async fn read(&self, _: &RemoteFile, offset: u64, len: u64) -> Result<Bytes, RemoteError> {
            if self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(RemoteError::Transient("connection refused".into()));
            }
            self.reads.fetch_add(1, Ordering::SeqCst);
            let (offset, len) = (offset as usize, len as usize);
            Ok(Bytes::copy_from_slice(&self.bytes[offset..offset + len]))
        }
    }

    fn setup(
        size: usize,
        dir: Option<&Path>,
        fail_first: u32,
    ) -> (Arc<InMemory>, BlockCache, RemoteFile) {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let remote = Arc::new(InMemory {
            bytes,
            reads: AtomicU32::new(0),
            fail_first: AtomicU32::new(fail_first),
        });
        let cache = BlockCache::open(
            remote.clone(),
            &BlockSettings {
                memory_blocks: 4,
                disk_dir: dir.map(Path::to_owned),
                disk_bytes: 3 * (BLOCK_SIZE + 4),
                fetch_concurrency: 4,
                retry_for: Duration::from_secs(5),
            },
        )
        .expect("cache");
        let file = RemoteFile {
            bucket: "fleet".into(),
            key: "big.bin".into(),
            size: size as u64,
            etag: "e1".into(),
        };
        (remote, cache, file)
    }

    #[tokio::test]
    async fn reads_across_blocks_are_exact_and_each_block_is_fetched_once() {
        let size = 3 * BLOCK_SIZE as usize + 1000;
        let (remote, cache, file) = setup(size, None, 2);
        let id = object_id(&file);
        for (offset, len) in [
            (0, 10),
            (BLOCK_SIZE - 5, 10),
            (100, 2 * BLOCK_SIZE),
            (size as u64 - 10, 4096),
        ] {
            let got = cache.read(&file, &id, offset, len).await.expect("read");
            let end = (offset + len).min(size as u64) as usize;
            assert_eq!(
                &got[..],
                &remote.bytes[offset as usize..end],
                "{offset}+{len}"
            );
        }
        assert_eq!(
            remote.reads.load(Ordering::SeqCst),
            4,
            "four blocks, each once"
        );
        assert!(cache
            .read(&file, &id, size as u64, 10)
            .await
            .expect("eof")
            .is_empty());
    }

    #[tokio::test]
    async fn blocks_on_disk_are_reused_and_a_damaged_one_is_fetched_again() {
        let dir = tempfile::tempdir().expect("dir");
        let size = 2 * BLOCK_SIZE as usize;
        let (remote, cache, file) = setup(size, Some(dir.path()), 0);
        let id = object_id(&file);
        cache.read(&file, &id, 0, size as u64).await.expect("read");
        assert_eq!(remote.reads.load(Ordering::SeqCst), 2);
        cache.settle().await;
        drop(cache);

        // A new mount over the same directory: from disk, no fetch.
        let (remote, cache, _) = setup(size, Some(dir.path()), 0);
        let got = cache.read(&file, &id, 0, size as u64).await.expect("read");
        assert_eq!(&got[..], &remote.bytes[..]);
        assert_eq!(remote.reads.load(Ordering::SeqCst), 0);
        drop(cache);

        // One byte of block 1 flipped on disk: caught by its checksum, fetched again.
        let path = dir.path().join(&id[..2]).join(format!("{id}.blocks"));
        let mut data = std::fs::read(&path).expect("blocks file");
        data[BLOCK_SIZE as usize + 10] ^= 1;
        std::fs::write(&path, data).expect("damage");
        let (remote, cache, _) = setup(size, Some(dir.path()), 0);
        let got = cache.read(&file, &id, 0, size as u64).await.expect("read");
        assert_eq!(&got[..], &remote.bytes[..]);
        assert_eq!(remote.reads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats.damaged_on_disk.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn read_ahead_fetches_a_run_of_blocks_in_one_request() {
        let size = 20 * BLOCK_SIZE as usize + 7;
        let (remote, cache, file) = setup(size, None, 0);
        let cache = Arc::new(BlockCache {
            memory: Mutex::new(LruCache::new(NonZeroUsize::new(64).expect("64"))),
            ..cache
        });
        let id = object_id(&file);
        let file = Arc::new(file);
        cache.read_ahead(&file, &id, 1, 20);
        let got = cache.read(&file, &id, 0, size as u64).await.expect("read");
        assert_eq!(&got[..], &remote.bytes[..]);
        // Block 0 by the reader; 1..=15 and 16..=20 (spans are aligned) by read-ahead, which
        // the reader waited on.
        assert_eq!(remote.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_disk_cache_evicts_the_least_recently_used_objects() {
        let dir = tempfile::tempdir().expect("dir");
        let size = 2 * BLOCK_SIZE as usize;
        let (_, cache, file) = setup(size, Some(dir.path()), 0);
        let versions: Vec<RemoteFile> = (1..=3)
            .map(|v| RemoteFile {
                etag: format!("e{v}"),
                ..file.clone()
            })
            .collect();
        for version in &versions {
            cache
                .read(version, &object_id(version), 0, size as u64)
                .await
                .expect("read");
            cache.settle().await;
        }
        // The limit is three blocks: only the newest object's two are left.
        let disk = cache.disk.as_ref().expect("disk");
        let index = disk.index();
        assert_eq!(index.used, 2 * BLOCK_SIZE);
        assert_eq!(index.objects.len(), 1);
        assert!(index.objects.contains(&object_id(&versions[2])));
        let first = object_id(&versions[0]);
        assert!(!dir
            .path()
            .join(&first[..2])
            .join(format!("{first}.blocks"))
            .exists());
    }
}
