//! The values exchanged with an [`OfficeCache`](super::OfficeCache).

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::{CacheError, Durability};

/// How an [`OfficeCache`](super::OfficeCache) is laid out and behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    /// The cache directory: `objects/` (the content store), `staging/` (downloads in
    /// progress), `views/` (reservation views). Created if missing.
    pub root: PathBuf,
    /// The most bytes the content store may hold (downloads in progress included).
    pub capacity: u64,
    /// Eviction starts when an insert takes the used bytes above this fraction of the
    /// capacity (0.95)...
    pub high_watermark: f64,
    /// ...and evicts least recently used unpinned entries down to this fraction (0.85).
    pub low_watermark: f64,
    /// The size of each ranged GET of a download (8 MiB).
    pub part_size: u64,
    /// The most ranged GETs in flight at once, over all downloads (16).
    pub concurrency: usize,
    /// This deployment's office name, recorded in the egress ledger.
    pub office: String,
    /// When downloaded bytes must be on disk (deferred: fsynced behind the install).
    pub durability: Durability,
}

impl CacheSettings {
    /// Settings for a cache in `root` holding at most `capacity` bytes, with the defaults
    /// for everything else (watermarks 0.95 and 0.85, 8 MiB parts, 16 GETs in flight,
    /// office `default`).
    pub fn new(root: impl Into<PathBuf>, capacity: u64) -> Self {
        Self {
            root: root.into(),
            capacity,
            high_watermark: 0.95,
            low_watermark: 0.85,
            part_size: 8 * 1024 * 1024,
            concurrency: 16,
            office: "default".to_owned(),
            durability: Durability::Deferred,
        }
    }

    /// Refuses settings the cache cannot work with, naming the setting.
    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        let bad = |what: &str, value: String, reason: &str| {
            Err(CacheError::invalid(
                format!("cache setting {what} = {value}"),
                reason,
            ))
        };
        if self.capacity == 0 {
            return bad("capacity", "0".into(), "expected more than 0 bytes");
        }
        if !(self.high_watermark > 0.0 && self.high_watermark <= 1.0) {
            return bad(
                "high_watermark",
                self.high_watermark.to_string(),
                "expected a fraction in (0, 1]",
            );
        }
        if !(self.low_watermark >= 0.0 && self.low_watermark <= self.high_watermark) {
            return bad(
                "low_watermark",
                self.low_watermark.to_string(),
                "expected a fraction in [0, high_watermark]",
            );
        }
        if self.part_size == 0 {
            return bad("part_size", "0".into(), "expected more than 0 bytes");
        }
        if self.concurrency == 0 {
            return bad("concurrency", "0".into(), "expected at least 1");
        }
        Ok(())
    }
}

/// Who a fetch or read is for, recorded in the egress ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchContext {
    /// The dataset, when materializing a reservation.
    pub dataset: Option<String>,
    /// The token name of the caller, when known.
    pub owner: Option<String>,
}

/// The result of [`OfficeCache::fetch`](super::OfficeCache::fetch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The content file (read-only; never write to it), when the content store keeps local
    /// files (not with the office tier).
    pub path: Option<PathBuf>,
    /// Bytes this call caused to come from upstream: 0 on a hit, or when it joined a fetch
    /// another caller started.
    pub bytes_from_upstream: u64,
    /// Whether the object was cached when the call came.
    pub hit: bool,
}

/// The result of [`OfficeCache::read`](super::OfficeCache::read): a byte range as a stream.
pub struct CacheRead {
    /// The size of the whole object.
    pub total_size: u64,
    /// The bytes the body carries, inclusive (resolved from the range asked for).
    pub range: (u64, u64),
    /// Whether the object was cached when the call came (otherwise the body reads through
    /// a download).
    pub hit: bool,
    /// Exactly the bytes of `range`, or an error.
    pub body: BoxStream<'static, Result<Bytes, CacheError>>,
}

impl CacheRead {
    /// How many bytes the body carries.
    pub fn content_length(&self) -> u64 {
        self.range.1 - self.range.0 + 1
    }
}

impl fmt::Debug for CacheRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheRead")
            .field("total_size", &self.total_size)
            .field("range", &self.range)
            .field("hit", &self.hit)
            .finish_non_exhaustive()
    }
}

/// The cache's state and counters at one moment; see
/// [`OfficeCache::stats`](super::OfficeCache::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStatsSnapshot {
    /// The capacity, in bytes.
    pub capacity_bytes: u64,
    /// Bytes held by cached objects and downloads in progress.
    pub used_bytes: u64,
    /// Bytes held by pinned objects.
    pub pinned_bytes: u64,
    /// Cached objects.
    pub objects: u64,
    /// `fetch` and `read` calls that found the object cached, since start.
    pub hits: u64,
    /// `fetch` and `read` calls that did not (they started or joined a download), since start.
    pub misses: u64,
    /// Bytes streamed by `read`, since start.
    pub bytes_served: u64,
    /// Bytes downloaded from upstream, since start.
    pub bytes_from_upstream: u64,
}
