//! Object versions in fixed-size blocks: in memory (an LRU of recent blocks, what read-ahead
//! fills and sequential readers drain), on the workstation's disk (`--cache-dir`, bounded by
//! `--cache-size`, reused across mounts), and from the office through [`Remote::read`] with
//! one fetch per block however many readers want it at once.
//!
//! A block is named by its object version's identity (bucket, key, ETag) and its index, so a
//! new version of a key never meets an old block. On disk each block ends in a CRC-32C of
//! its bytes, checked on every read from disk: a block torn by a crash or damaged on disk is
//! dropped and fetched again, never served.

use std::collections::HashMap;
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use sha2::{Digest as _, Sha256};
use tokio::sync::{OnceCell, Semaphore};

use crate::remote::{with_retries, Remote, RemoteError, RemoteFile};

/// Bytes per block: one ranged GET. Small enough that a random 4 KiB read costs little,
/// large enough that a sequential reader's requests are few.
pub const BLOCK_SIZE: u64 = 1 << 20;

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

/// Counters for `--stats` and the tests.
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
    /// Most bytes the disk cache holds; the least recently used blocks go first.
    pub disk_bytes: u64,
    /// Blocks fetched from the office at once.
    pub fetch_concurrency: usize,
    /// How long transient failures are retried before a read fails.
    pub retry_for: Duration,
}

pub struct BlockCache {
    remote: Arc<dyn Remote>,
    memory: Mutex<LruCache<BlockId, Bytes>>,
    in_flight: Mutex<HashMap<BlockId, Arc<OnceCell<Bytes>>>>,
    disk: Option<DiskBlocks>,
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

impl BlockCache {
    pub fn open(remote: Arc<dyn Remote>, settings: &BlockSettings) -> std::io::Result<BlockCache> {
        let disk = match &settings.disk_dir {
            Some(dir) => Some(DiskBlocks::open(dir, settings.disk_bytes)?),
            None => None,
        };
        Ok(BlockCache {
            remote,
            memory: Mutex::new(LruCache::new(
                NonZeroUsize::new(settings.memory_blocks.max(1)).expect("at least one"),
            )),
            in_flight: Mutex::new(HashMap::new()),
            disk,
            fetches: Semaphore::new(settings.fetch_concurrency.max(1)),
            retry_for: settings.retry_for,
            stats: BlockStats::default(),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, LruCache<BlockId, Bytes>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether block `index` is in memory or being fetched (read-ahead skips those).
    fn is_underway(&self, id: &BlockId) -> bool {
        self.memory().contains(id)
            || self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(id)
    }

    /// Block `index` of `file`: from memory, from disk, or fetched once for every caller.
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
        if let Some(bytes) = self.memory().get(&id) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(bytes.clone());
        }
        let cell = Arc::clone(
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id.clone())
                .or_default(),
        );
        let result = cell.get_or_try_init(|| self.load(file, &id)).await.cloned();
        if let Ok(bytes) = &result {
            self.memory().put(id.clone(), bytes.clone());
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // Done with (a success is in memory now; after a failure the next caller starts
        // afresh), unless a newer fetch of the same block has taken the slot.
        if in_flight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(&id);
        }
        result
    }

    /// Reads a block from disk or, failing that, from the office (then keeps it on disk).
    async fn load(&self, file: &RemoteFile, id: &BlockId) -> Result<Bytes, RemoteError> {
        let len = block_len(file.size, id.index);
        if let Some(disk) = &self.disk {
            match disk.get(id, len).await {
                DiskRead::Hit(bytes) => {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(bytes);
                }
                DiskRead::Damaged => {
                    self.stats.damaged_on_disk.fetch_add(1, Ordering::Relaxed);
                }
                DiskRead::Miss => {}
            }
        }
        let offset = id.index * BLOCK_SIZE;
        let what = format!("s3://{}/{} bytes {offset}+{len}", file.bucket, file.key);
        let bytes = with_retries(&what, self.retry_for, || async {
            let _permit = self
                .fetches
                .acquire()
                .await
                .map_err(|_| RemoteError::Permanent("the mount is shutting down".into()))?;
            let bytes = self.remote.read(file, offset, len).await?;
            if bytes.len() as u64 != len {
                // A body cut short by a server going away mid-response.
                return Err(RemoteError::Transient(format!(
                    "got {} of {len} bytes",
                    bytes.len()
                )));
            }
            Ok(bytes)
        })
        .await?;
        self.stats.fetched_blocks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fetched_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Some(disk) = &self.disk {
            disk.put(id, bytes.clone()).await;
        }
        Ok(bytes)
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

    /// Starts fetching blocks `from .. from + count` of `file` that are neither in memory nor
    /// underway, without waiting for them.
    pub fn read_ahead(
        self: &Arc<Self>,
        file: &Arc<RemoteFile>,
        object: &Arc<str>,
        from: u64,
        count: u64,
    ) {
        let blocks = file.size.div_ceil(BLOCK_SIZE);
        for index in from..(from + count).min(blocks) {
            let id = BlockId {
                object: Arc::clone(object),
                index,
            };
            if self.is_underway(&id) {
                continue;
            }
            let (cache, file, object) = (Arc::clone(self), Arc::clone(file), Arc::clone(object));
            tokio::spawn(async move {
                if let Err(err) = cache.block(&file, &object, index).await {
                    tracing::debug!(key = %file.key, index, %err, "read-ahead failed; the reader will retry");
                }
            });
        }
    }
}

enum DiskRead {
    Hit(Bytes),
    Miss,
    Damaged,
}

/// Blocks on disk: `DIR/<first two hex digits>/<object id>/<index>`, each the block's bytes
/// followed by their CRC-32C (little-endian).
#[derive(Debug)]
struct DiskBlocks {
    dir: PathBuf,
    limit: u64,
    index: Mutex<DiskIndex>,
}

#[derive(Debug)]
struct DiskIndex {
    used: u64,
    /// Relative path → bytes on disk, least recently used first out.
    files: LruCache<PathBuf, u64>,
}

impl DiskBlocks {
    fn open(dir: &Path, limit: u64) -> std::io::Result<DiskBlocks> {
        std::fs::create_dir_all(dir)?;
        // What earlier mounts left, oldest first, so that they are evicted first.
        let mut found = Vec::new();
        for shard in std::fs::read_dir(dir)?.flatten() {
            for object in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for block in std::fs::read_dir(object.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let Ok(meta) = block.metadata() else { continue };
                    let path = block.path();
                    if path.extension().is_some_and(|e| e == "tmp") {
                        // Cut short by a crash before its rename.
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    let Ok(relative) = path.strip_prefix(dir) else {
                        continue;
                    };
                    found.push((meta.modified().ok(), relative.to_owned(), meta.len()));
                }
            }
        }
        found.sort();
        let mut files = LruCache::unbounded();
        let mut used = 0;
        for (_, path, len) in found {
            used += len;
            files.put(path, len);
        }
        let blocks = DiskBlocks {
            dir: dir.to_owned(),
            limit,
            index: Mutex::new(DiskIndex { used, files }),
        };
        blocks.evict(&mut blocks.index());
        Ok(blocks)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, DiskIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn relative(id: &BlockId) -> PathBuf {
        let shard = id.object.get(..2).unwrap_or("00");
        PathBuf::from(shard)
            .join(&*id.object)
            .join(id.index.to_string())
    }

    fn evict(&self, index: &mut DiskIndex) {
        while index.used > self.limit {
            let Some((path, len)) = index.files.pop_lru() else {
                break;
            };
            index.used = index.used.saturating_sub(len);
            let _ = std::fs::remove_file(self.dir.join(path));
        }
    }

    async fn get(&self, id: &BlockId, len: u64) -> DiskRead {
        let relative = Self::relative(id);
        if self.index().files.get(&relative).is_none() {
            return DiskRead::Miss;
        }
        let path = self.dir.join(&relative);
        let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        let Ok(Ok(mut data)) = read else {
            self.forget(&relative);
            return DiskRead::Miss;
        };
        let sound = data.len() as u64 == len + 4 && {
            let (bytes, crc) = data.split_at(len as usize);
            crc == crc32c::crc32c(bytes).to_le_bytes()
        };
        if !sound {
            tracing::warn!(path = %relative.display(), "a cached block failed its checksum; fetching it again");
            self.forget(&relative);
            let _ = std::fs::remove_file(self.dir.join(&relative));
            return DiskRead::Damaged;
        }
        data.truncate(len as usize);
        DiskRead::Hit(Bytes::from(data))
    }

    fn forget(&self, relative: &Path) {
        let mut index = self.index();
        if let Some(len) = index.files.pop(relative) {
            index.used = index.used.saturating_sub(len);
        }
    }

    /// Keeps `bytes` on disk (written to a temporary name, then renamed, so that a reader
    /// never sees half a block). A full or failing disk only costs the cache.
    async fn put(&self, id: &BlockId, bytes: Bytes) {
        let relative = Self::relative(id);
        let path = self.dir.join(&relative);
        let len = bytes.len() as u64 + 4;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let parent = path.parent().expect("a block has a directory");
            std::fs::create_dir_all(parent)?;
            let tmp = path.with_extension("tmp");
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.write_all(&crc32c::crc32c(&bytes).to_le_bytes())?;
            drop(file);
            std::fs::rename(&tmp, &path)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                let mut index = self.index();
                if let Some(old) = index.files.put(relative, len) {
                    index.used = index.used.saturating_sub(old);
                }
                index.used += len;
                self.evict(&mut index);
            }
            Ok(Err(err)) => tracing::warn!(%err, "cannot keep a block on disk"),
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
        drop(cache);

        // A new mount over the same directory: from disk, no fetch.
        let (remote, cache, _) = setup(size, Some(dir.path()), 0);
        let got = cache.read(&file, &id, 0, size as u64).await.expect("read");
        assert_eq!(&got[..], &remote.bytes[..]);
        assert_eq!(remote.reads.load(Ordering::SeqCst), 0);
        drop(cache);

        // One byte of block 1 flipped on disk: caught by its checksum, fetched again.
        let path = dir.path().join(DiskBlocks::relative(&BlockId {
            object: id.clone(),
            index: 1,
        }));
        let mut data = std::fs::read(&path).expect("block file");
        data[10] ^= 1;
        std::fs::write(&path, data).expect("damage");
        let (remote, cache, _) = setup(size, Some(dir.path()), 0);
        let got = cache.read(&file, &id, 0, size as u64).await.expect("read");
        assert_eq!(&got[..], &remote.bytes[..]);
        assert_eq!(remote.reads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats.damaged_on_disk.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_disk_cache_stays_within_its_size() {
        let dir = tempfile::tempdir().expect("dir");
        let size = 6 * BLOCK_SIZE as usize;
        let (_, cache, file) = setup(size, Some(dir.path()), 0);
        let id = object_id(&file);
        cache.read(&file, &id, 0, size as u64).await.expect("read");
        let index = cache.disk.as_ref().expect("disk").index();
        assert!(index.used <= 3 * (BLOCK_SIZE + 4), "{}", index.used);
        assert_eq!(index.files.len(), 3);
    }
}
