//! The content store: where the cache keeps the bytes of its installed entries, behind one
//! contract with two backends.
//!
//! - [`DiskContent`] (`disk.rs`, the default): `objects/<xx>/<sha256>` under the cache root,
//!   read-only files, durable as [`Durability`](super::Durability) says. Views (hard links) are
//!   possible because the content is a local file.
//! - [`TierContent`] (`tier.rs`, `[cache] tier = "s3"`): an S3-compatible office store (Garage,
//!   Ceph RGW, any S3 the office runs), one object per entry at
//!   `<prefix>objects/<xx>/<sha256>` of the tier's bucket. The tier replicates what it holds:
//!   an install acknowledged by it survives the loss of this node's disk.
//!
//! # The contract
//!
//! Everything above it (admission, single flight, verification, pins, LRU, the
//! `cache_entries` rows, write-back) is the cache's and does not change with the backend. A
//! backend only keeps bytes under the entry's identity (bucket, key, ETag):
//!
//! 1. [`install`](ContentStore::install) takes a verified staging file (local: downloads and
//!    uploads always land on the node's disk first) and makes it the entry's content,
//!    whole or not at all. When it returns, the content is readable by every later
//!    [`open`](ContentStore::open); for [`InstallKind::Upload`] it is also durable (it
//!    survives a power cut, and with the tier the loss of the node).
//! 2. Installed content never changes. [`open`](ContentStore::open) and
//!    [`read_at`](ContentStore::read_at) give exactly its bytes; content that is missing
//!    (evicted, or lost) is [`NotCached`](super::CacheError::NotCached) / `None`, never other
//!    bytes.
//! 3. [`remove`](ContentStore::remove) deletes it; removing missing content succeeds.
//! 4. [`alias`](ContentStore::alias) makes the same bytes the content of a second identity
//!    (an office upload that S3 named with another ETag), and
//!    [`same_content`](ContentStore::same_content) tells whether two identities hold one
//!    installed content.
//! 5. [`local_path`](ContentStore::local_path) is the content as a local file, where there is
//!    one; only then can views be built.
//!
//! `cacher/tests/engine/content_contract.rs` runs one behavioural suite against both.

mod disk;
mod tier;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::{CacheError, ObjectKey};

pub(super) use disk::DiskContent;
pub(super) use tier::TierContent;
pub use tier::TierSettings;

/// What is installed, which decides what must be durable when the install returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InstallKind {
    /// A verified download: its bytes may reach the disk behind the install (deferred
    /// durability), and a lost name is a cache miss, never wrong bytes.
    Download,
    /// A file built in the office (a trimmed log): its bytes are made durable first.
    Built,
    /// The only copy of an office upload, about to be acknowledged: bytes and name durable
    /// before the install returns.
    Upload,
}

/// Installed content opened for reading.
pub(super) enum Opened {
    /// A local, complete, read-only file (read with mappings and positional reads).
    File(Arc<File>),
    /// The bytes asked for, as they arrive.
    Stream(BoxStream<'static, Result<Bytes, CacheError>>),
}

/// Where the cache keeps installed content; see the [module documentation](self).
#[async_trait::async_trait]
pub(super) trait ContentStore: Send + Sync + fmt::Debug {
    /// For logs: where the content is.
    fn describe(&self) -> String;

    /// The content of `object` as a local file, when this backend keeps one (whether it is
    /// installed is the book's to say).
    fn local_path(&self, object: &ObjectKey) -> Option<PathBuf>;

    /// Whether a download's staging file should be flushed to disk while it lands, because
    /// it becomes the content file, fsynced by the install before it counts or right behind
    /// it (see `flight.rs` `flush_behind`).
    fn flushes_behind(&self) -> bool;

    /// Whether a download is installed as it lands ([`install_stream`](Self::install_stream),
    /// following the landed prefix of the staging file) rather than from the whole file at the
    /// end: the tier, where an install is a copy over the network that would otherwise start
    /// only once the download ended.
    fn follows_downloads(&self) -> bool;

    /// Installs `object` from `body`, its bytes in order (a download as it lands). The caller
    /// verifies the bytes meanwhile and [`remove`](Self::remove)s the content if they fail;
    /// until the cache's book says the entry is installed nobody reads it.
    async fn install_stream(
        &self,
        object: &ObjectKey,
        body: BoxStream<'static, Result<Bytes, CacheError>>,
    ) -> Result<(), CacheError>;

    /// Makes the verified staging file `file` (at `staging`, holding `object.size` bytes) the
    /// content of `object`; the staging file is gone afterwards (renamed or removed), while
    /// `file` stays readable. Errors leave no content behind.
    async fn install(
        &self,
        object: &ObjectKey,
        file: &Arc<File>,
        staging: &Path,
        kind: InstallKind,
    ) -> Result<(), CacheError>;

    /// Opens bytes `start..end_exclusive` of `object`'s content. A
    /// [`File`](Opened::File) is the whole content; a [`Stream`](Opened::Stream) carries just
    /// those bytes. Missing content is [`NotCached`](CacheError::NotCached).
    async fn open(
        &self,
        object: &ObjectKey,
        start: u64,
        end_exclusive: u64,
    ) -> Result<Opened, CacheError>;

    /// `len` bytes at `start` of `object`'s content, `None` when it is missing.
    async fn read_at(
        &self,
        object: &ObjectKey,
        start: u64,
        len: usize,
    ) -> Result<Option<Bytes>, CacheError>;

    /// Makes `object`'s installed content durable (it becomes an office upload's only copy).
    async fn make_durable(&self, object: &ObjectKey) -> Result<(), CacheError>;

    /// Makes `from`'s content also the content of `to` (same bytes, another identity).
    async fn alias(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), CacheError>;

    /// Whether `a` and `b` are one installed content (made so by [`alias`](Self::alias)).
    async fn same_content(&self, a: &ObjectKey, b: &ObjectKey) -> bool;

    /// Deletes `object`'s content, logging failures (a leftover is an orphan that start-up
    /// reconciliation removes).
    async fn remove(&self, object: &ObjectKey);

    /// Finishes what runs behind installs (fsyncs) before the cache stops.
    async fn shutdown(&self);
}

/// Reads a [`Opened::Stream`] into memory, exactly `len` bytes.
pub(super) async fn collect(
    object: &ObjectKey,
    mut stream: BoxStream<'static, Result<Bytes, CacheError>>,
    len: usize,
) -> Result<Bytes, CacheError> {
    use futures::StreamExt as _;
    let mut out = bytes::BytesMut::with_capacity(len);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    if out.len() != len {
        return Err(CacheError::Corrupt {
            object: object.to_string(),
            reason: format!("read {} bytes of its content, expected {len}", out.len()),
        });
    }
    Ok(out.freeze())
}
