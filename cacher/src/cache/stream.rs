//! Byte ranges as streams: from a content file, or from a download's staging file as its
//! bytes land (read-through). Positional reads in blocking tasks, one chunk at a time, so a
//! reader holds at most one chunk in memory.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use tokio::sync::watch;

use super::flight::{self, blocking, Flight, Progress};
use super::recorder::ServeRecord;
use super::{CacheError, ObjectKey};

/// Bytes read per blocking call and yielded per stream item.
const READ_CHUNK: u64 = 1024 * 1024;

/// Where a read's bytes come from.
pub(super) enum Source {
    /// A content file, complete.
    File(Arc<File>),
    /// A download in progress: its staging file, as the bytes land.
    Flight {
        flight: Arc<Flight>,
        progress: watch::Receiver<Progress>,
    },
}

/// Opens a content file; a missing file is [`NotCached`](CacheError::NotCached).
pub(super) async fn open(path: &Path, object: &ObjectKey) -> Result<Arc<File>, CacheError> {
    let path = path.to_owned();
    match tokio::task::spawn_blocking(move || File::open(path)).await {
        Ok(Ok(file)) => Ok(Arc::new(file)),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => Err(CacheError::NotCached {
            object: object.to_string(),
        }),
        Ok(Err(err)) => Err(CacheError::io(
            format!("opening the content file of {object}"),
            err,
        )),
        Err(join) => Err(CacheError::io(
            format!("opening the content file of {object}"),
            std::io::Error::other(join),
        )),
    }
}

struct Reader {
    source: Source,
    object: ObjectKey,
    /// The next byte to yield.
    pos: u64,
    /// One past the last byte to yield.
    end: u64,
    record: ServeRecord,
    failed: bool,
}

/// The bytes `start..=end` of `object` from `source`, counted into `record`.
pub(super) fn range_stream(
    source: Source,
    object: ObjectKey,
    start: u64,
    end: u64,
    record: ServeRecord,
) -> BoxStream<'static, Result<Bytes, CacheError>> {
    let reader = Reader {
        source,
        object,
        pos: start,
        end: end + 1,
        record,
        failed: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        if reader.failed || reader.pos >= reader.end {
            return None;
        }
        match reader.next_chunk().await {
            Ok(chunk) => {
                reader.pos += chunk.len() as u64;
                reader.record.served(chunk.len() as u64);
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
        let (file, available) = match &mut self.source {
            Source::File(file) => (Arc::clone(file), self.end),
            Source::Flight { flight, progress } => {
                flight::available_from(progress, flight, self.pos).await?
            }
        };
        let pos = self.pos;
        let len = available.min(self.end).saturating_sub(pos).min(READ_CHUNK);
        blocking(
            format!("reading the cached bytes of {}", self.object),
            move || {
                let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
                file.read_exact_at(&mut buf, pos)?;
                Ok(Bytes::from(buf))
            },
        )
        .await
    }
}
