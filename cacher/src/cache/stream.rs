//! Byte ranges as streams: from a content file, or from a download's staging file as its
//! bytes land (read-through).
//!
//! A content file is complete and never changes: it is served in windows mapped into memory
//! ([`map_window`]), each handed to the HTTP layer as it is and unmapped once written, the
//! next one mapped while the last is sent. Copying through a buffer instead costs a copy of
//! every byte out of the page cache before the copy into the socket: measured here, that
//! first copy was 40 % of the server's CPU for a hot 1 GiB read, and the socket's copy 29 %.
//! Only mapped windows count towards the server's memory, so a reader holds at most two of
//! them beside what the HTTP layer is writing. A short range (at most [`SHORT_RANGE`], what
//! a mount's or a viewer's random reads ask for) is read instead with one positional read
//! into a pooled buffer: mapping, faulting in and unmapping a window costs more than copying
//! that little once (an unmap also interrupts every other core to flush its TLB).
//!
//! A staging file is still being written: positional reads in blocking tasks into pooled
//! buffers ([`ChunkPool`]), each of bytes that have landed.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::buffers::ChunkPool;
use super::flight::{self, Flight, Progress};
use super::recorder::ServeRecord;
use super::{CacheError, ObjectKey};

/// Bytes read per blocking call and yielded per stream item from a staging file.
pub(super) const READ_CHUNK: u64 = 1024 * 1024;
/// Bytes mapped per window of a content file.
const MAP_WINDOW: u64 = 2 * 1024 * 1024;
/// A content file's range this short is read into a buffer, not mapped.
const SHORT_RANGE: u64 = 512 * 1024;
/// Idle read buffers the cache keeps for reuse (a few for each of 8 concurrent readers).
pub(super) const IDLE_READ_BUFFERS: usize = 24;

/// Where a read's bytes come from.
pub(super) enum Source {
    /// A content file, complete.
    File(Arc<File>),
    /// A download in progress: its staging file, as the bytes land.
    Flight {
        flight: Arc<Flight>,
        progress: watch::Receiver<Progress>,
    },
    /// Exactly the bytes asked for, as they arrive (content in the office tier).
    Stream(BoxStream<'static, Result<Bytes, CacheError>>),
}

struct Reader {
    source: Source,
    object: ObjectKey,
    /// The next byte to yield.
    pos: u64,
    /// One past the last byte to yield.
    end: u64,
    /// Counts what a client is served (none for the cache's own reads).
    record: Option<ServeRecord>,
    failed: bool,
    pool: Arc<ChunkPool>,
    /// The mapping of the window at `pos` of a content file, started when the one before it
    /// was yielded.
    ahead: Option<JoinHandle<std::io::Result<Bytes>>>,
}

/// The bytes `start..=end` of `object` from `source`, counted into `record`.
pub(super) fn range_stream(
    source: Source,
    object: ObjectKey,
    start: u64,
    end: u64,
    record: Option<ServeRecord>,
    pool: Arc<ChunkPool>,
) -> BoxStream<'static, Result<Bytes, CacheError>> {
    let reader = Reader {
        source,
        object,
        pos: start,
        end: end + 1,
        record,
        failed: false,
        pool,
        ahead: None,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        if reader.failed || reader.pos >= reader.end {
            return None;
        }
        match reader.next_chunk().await {
            Ok(chunk) => {
                reader.pos += chunk.len() as u64;
                if let Some(record) = &mut reader.record {
                    record.served(chunk.len() as u64);
                }
                Some((Ok(chunk), reader))
            }
            Err(err) => {
                reader.failed = true;
                Some((Err(err), reader))
            }
        }
    })
    .boxed()
}

impl Reader {
    async fn next_chunk(&mut self) -> Result<Bytes, CacheError> {
        if let Source::Stream(stream) = &mut self.source {
            let chunk = stream.next().await.unwrap_or_else(|| {
                Err(CacheError::Corrupt {
                    object: self.object.to_string(),
                    reason: format!("its content ended {} bytes short", self.end - self.pos),
                })
            })?;
            if chunk.len() as u64 > self.end - self.pos {
                return Err(CacheError::Corrupt {
                    object: self.object.to_string(),
                    reason: "its content is longer than the range asked".to_owned(),
                });
            }
            return Ok(chunk);
        }
        let read = match (self.ahead.take(), &mut self.source) {
            // Read above: a stream has no windows to map or files to read.
            (_, Source::Stream(_)) => {
                return Err(CacheError::io(
                    format!("reading the cached bytes of {}", self.object),
                    std::io::Error::other("a stream source read as a file"),
                ))
            }
            (Some(mapping), _) => mapping,
            (None, Source::File(file)) if self.end - self.pos <= SHORT_RANGE => {
                read_chunk(&self.pool, Arc::clone(file), self.pos, self.end - self.pos)
            }
            (None, Source::File(file)) => map(Arc::clone(file), self.pos, self.end - self.pos),
            (None, Source::Flight { flight, progress }) => {
                let (file, available) = flight::available_from(progress, flight, self.pos).await?;
                let len = available.min(self.end).saturating_sub(self.pos);
                read_chunk(&self.pool, file, self.pos, len)
            }
        };
        let chunk = match read.await {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join)),
        }
        .map_err(|err| {
            CacheError::io(format!("reading the cached bytes of {}", self.object), err)
        })?;
        // A complete file's next window is there to map: map it while this one is sent.
        let next = self.pos + chunk.len() as u64;
        if let Source::File(file) = &self.source {
            if next < self.end {
                self.ahead = Some(map(Arc::clone(file), next, self.end - next));
            }
        }
        Ok(chunk)
    }
}

/// Starts reading up to [`READ_CHUNK`] of the `len` bytes at `pos` of `file` into a buffer
/// of `pool`.
fn read_chunk(
    pool: &Arc<ChunkPool>,
    file: Arc<File>,
    pos: u64,
    len: u64,
) -> JoinHandle<std::io::Result<Bytes>> {
    let len = usize::try_from(len.min(READ_CHUNK)).unwrap_or(usize::MAX);
    let mut buf = pool.take(len);
    tokio::task::spawn_blocking(move || {
        file.read_exact_at(buf.as_mut_slice(), pos)?;
        Ok(buf.into_bytes())
    })
}

/// Starts mapping up to [`MAP_WINDOW`] of the `len` bytes at `pos` of the content file `file`.
fn map(file: Arc<File>, pos: u64, len: u64) -> JoinHandle<std::io::Result<Bytes>> {
    let len = len.min(MAP_WINDOW);
    tokio::task::spawn_blocking(move || map_window(&file, pos, len).map(Bytes::from_owner))
}

/// Maps bytes `pos..pos + len` of the content file `file`, read-only, its pages faulted in
/// at once (`MAP_POPULATE`: one call instead of a fault every few pages while the socket
/// copies them).
#[allow(unsafe_code)]
fn map_window(file: &File, pos: u64, len: u64) -> std::io::Result<memmap2::Mmap> {
    let size = file.metadata()?.len();
    if pos.checked_add(len).is_none_or(|end| end > size) {
        // A window past the end would fault (SIGBUS) when read: the file is not what the
        // book says, which reconciliation at start-up repairs; until then, an error.
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the content file has {size} bytes, bytes up to {} asked",
                pos.saturating_add(len)
            ),
        ));
    }
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a mapping is only sound while nobody changes the file under it. Content files
    // are never written after their install: they are made read-only before the rename into
    // `objects/`, eviction unlinks them (which leaves a mapping intact), and reconciliation
    // removes, never truncates, a file of the wrong size. Only a process outside Milepost
    // with write access to the cache's files could change one (the cache directory is the
    // service's own; views are read-only hard links); the size check above keeps a file
    // already short from being mapped past its end.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(pos)
            .len(len)
            .populate()
            .map(file)
    }
}
