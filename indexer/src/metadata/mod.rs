//! Metadata of MCAP logs and Parquet files, read with a few ranged reads.
//!
//! Both formats keep their index at the end of the file, so the readers start with one suffix
//! read of [`TAIL_READ`] bytes (or the whole object when it is smaller). Only when the index
//! (the MCAP summary section, the Parquet footer) starts before that window do they issue a
//! second read, of exactly the missing bytes. The data section is never read.
//!
//! The readers take any [`RangeSource`]: the sync implements it over the S3 store (ranged
//! `GET` with `If-Match`), tests over [`Bytes`] in memory.
//!
//! Inputs are untrusted. Every length and offset found in a file is checked against the object
//! size (and [`MAX_INDEX_BYTES`]) before anything is read or allocated, and malformed input
//! is a [`MetadataError`] of kind [`MetadataErrorKind::Malformed`] naming what was wrong and at
//! which offset, never a panic.

use std::fmt;
use std::future::Future;

use bytes::Bytes;

mod mcap;
mod parquet;
mod parquet_footer;
mod thrift;

pub use self::mcap::{read_mcap_summary, ChunkIndexInfo, McapSummary, TopicInfo};
pub use self::parquet::{
    read_parquet_footer, run_metrics_from_parquet, ColumnInfo, MetricStats, ParquetSummary,
    MAX_METRICS_BYTES,
};

/// Size of the first (suffix) read of an object: 256 KiB.
pub const TAIL_READ: u64 = 256 * 1024;

/// Largest MCAP summary section or Parquet footer the readers accept (64 MiB). A larger index
/// is [`MetadataErrorKind::TooLarge`]; it bounds the second read and what is held in memory.
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// Random access to the bytes of one object.
///
/// `read` returns exactly the bytes `start..end_exclusive` (callers never ask beyond
/// [`size`](RangeSource::size)); a shorter answer is treated as a source error. Errors of the
/// underlying store become [`MetadataError::Source`] (there is a `From<String>`).
///
/// The method returns `impl Future + Send` (no `async-trait`), so the trait is not object
/// safe: the readers are generic over it. An implementation may simply write `async fn read`.
pub trait RangeSource {
    /// Size of the object in bytes.
    fn size(&self) -> u64;

    /// The bytes `start..end_exclusive` of the object.
    fn read(
        &self,
        start: u64,
        end_exclusive: u64,
    ) -> impl Future<Output = Result<Bytes, MetadataError>> + Send;
}

/// An object held in memory (tests, small objects already downloaded).
impl RangeSource for Bytes {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(
        &self,
        start: u64,
        end_exclusive: u64,
    ) -> impl Future<Output = Result<Bytes, MetadataError>> + Send {
        let len = self.len() as u64;
        let result = if start <= end_exclusive && end_exclusive <= len {
            // Both bounds are at most `len`, which came from a usize.
            Ok(self.slice(start as usize..end_exclusive as usize))
        } else {
            Err(MetadataError::Source(format!(
                "range {start}..{end_exclusive} is outside the {len}-byte object"
            )))
        };
        std::future::ready(result)
    }
}

/// What went wrong, for callers that branch on it (report, fall back, retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataErrorKind {
    /// The bytes are not a valid file of the expected format.
    Malformed,
    /// A valid MCAP without a summary section or without statistics: describe it another way
    /// (a whole-file read).
    NoSummary,
    /// An index or file is larger than the reader's limit.
    TooLarge,
    /// The underlying source failed (network, changed object, ...).
    Source,
}

impl fmt::Display for MetadataErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed",
            Self::NoSummary => "no summary",
            Self::TooLarge => "too large",
            Self::Source => "source",
        })
    }
}

/// Error of the metadata readers. Messages are lowercase and name the format, the problem and,
/// where there is one, the offset in the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The message starts with the format, e.g. `mcap: bad end magic at offset 1234`.
    #[error("malformed {0}")]
    Malformed(String),
    /// Why there is no usable summary, e.g. `mcap: the footer records no summary section`.
    #[error("no summary in {0}")]
    NoSummary(String),
    /// `what` (e.g. `mcap summary section`) is `size` bytes, over `limit`.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// The source failed; the message is the source's.
    #[error("reading the object failed: {0}")]
    Source(String),
}

impl MetadataError {
    /// The error's kind.
    pub fn kind(&self) -> MetadataErrorKind {
        match self {
            Self::Malformed(_) => MetadataErrorKind::Malformed,
            Self::NoSummary(_) => MetadataErrorKind::NoSummary,
            Self::TooLarge { .. } => MetadataErrorKind::TooLarge,
            Self::Source(_) => MetadataErrorKind::Source,
        }
    }

    /// A source error from anything printable.
    pub fn source_error(err: impl fmt::Display) -> Self {
        Self::Source(err.to_string())
    }

    pub(crate) fn too_large(what: impl Into<String>, size: u64, limit: u64) -> Self {
        Self::TooLarge {
            what: what.into(),
            size,
            limit,
        }
    }
}

/// A source error message.
impl From<String> for MetadataError {
    fn from(message: String) -> Self {
        Self::Source(message)
    }
}

/// A source error message.
impl From<&str> for MetadataError {
    fn from(message: &str) -> Self {
        Self::Source(message.to_owned())
    }
}

/// Reads through a source, checking answers and counting bytes.
struct Reads<'a, S: ?Sized> {
    src: &'a S,
    bytes_read: u64,
}

impl<'a, S: RangeSource + ?Sized> Reads<'a, S> {
    fn new(src: &'a S) -> Self {
        Self { src, bytes_read: 0 }
    }

    async fn read(&mut self, start: u64, end_exclusive: u64) -> Result<Bytes, MetadataError> {
        let bytes = self.src.read(start, end_exclusive).await?;
        let expected = end_exclusive - start;
        if bytes.len() as u64 != expected {
            return Err(MetadataError::Source(format!(
                "the source returned {} bytes for the {expected}-byte range {start}..{end_exclusive}",
                bytes.len()
            )));
        }
        self.bytes_read += expected;
        Ok(bytes)
    }
}

/// The bytes `index_start..size` of an object whose last `tail.len()` bytes are `tail`: a slice
/// of `tail`, or `tail` with exactly the missing prefix read in front of it.
async fn index_region<S: RangeSource + ?Sized>(
    reads: &mut Reads<'_, S>,
    tail: &Bytes,
    size: u64,
    index_start: u64,
) -> Result<Bytes, MetadataError> {
    let window_start = size - tail.len() as u64;
    if index_start >= window_start {
        // In the window; `index_start - window_start < tail.len()`.
        return Ok(tail.slice((index_start - window_start) as usize..));
    }
    let head = reads.read(index_start, window_start).await?;
    let mut joined = Vec::with_capacity(head.len() + tail.len());
    joined.extend_from_slice(&head);
    joined.extend_from_slice(tail);
    Ok(Bytes::from(joined))
}

/// `message` with its first letter in lower case (the crates' messages start in upper case;
/// ours do not).
fn lower(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
