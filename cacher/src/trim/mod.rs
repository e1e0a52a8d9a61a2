//! Trimming an MCAP log to a time window and a set of topics, from its summary and the few
//! chunks that overlap the window — never the whole file.
//!
//! Pure logic over bytes: the caller fetches the bytes (ranged reads of the source), this
//! module says which bytes and turns them into a new, complete MCAP file.
//!
//! 1. [`parse_footer`] reads the footer record from the last [`FOOTER_READ`] bytes of the
//!    source: where its summary section starts (0: the writer left none).
//! 2. [`parse_summary`] reads the summary section (schemas, channels, statistics, chunk
//!    indexes), checking every record length against the bytes there and the summary CRC.
//!    Both are [`milepost_formats::mcap`]'s parsers, the indexer's too, with the trim's limits.
//! 3. [`plan`] picks the chunks whose message time range overlaps the window and that hold a
//!    message of a chosen channel (from the chunk index's message index offsets), and says
//!    whether the log can be trimmed at all ([`TrimError::NotIndexed`] otherwise: no summary or
//!    no chunk index, so the caller falls back to the whole file).
//! 4. [`Trimmer`] takes the chunk records one at a time, decompresses each (zstd, lz4 or
//!    none), keeps the messages with log time in the window on the chosen topics, and writes
//!    them with `mcap::Writer` — their schemas and channels (same ids as the source), chunks
//!    compressed like the source's, and a rebuilt summary: chunk indexes, message indexes,
//!    statistics, summary offsets. At most one chunk is held in memory.
//!
//! Messages keep their order in the source file. Attachments and metadata records of the
//! source are not carried over (they are not messages of the window).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, Write};

use ::mcap::records::{op, Channel, ChunkIndex, Footer, MessageHeader, Record};
use ::mcap::{Compression, WriteOptions, Writer};
use milepost_formats::mcap::{self as mcap_format, McapError};

#[cfg(test)]
mod tests;

/// Bytes at the end of an MCAP file holding the footer record (opcode, length, 20-byte body)
/// and the closing magic.
pub const FOOTER_READ: u64 = mcap_format::FOOTER_READ;

const RECORD_HEADER_LEN: usize = mcap_format::RECORD_HEADER_LEN as usize;

/// Largest summary section accepted (64 MiB): it is held in memory.
pub const MAX_SUMMARY_BYTES: u64 = 64 * 1024 * 1024;

/// Largest chunk record accepted (1 GiB): one is held in memory at a time, decompressed.
pub const MAX_CHUNK_BYTES: u64 = 1024 * 1024 * 1024;

/// Why a log could not be trimmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrimError {
    /// The source is not a valid MCAP file (or not the one the summary describes).
    #[error("mcap: {0}")]
    Malformed(String),
    /// The source cannot be trimmed without reading all of it: no summary section, or no
    /// chunk index in it. Not an error of the file: the caller materializes it whole.
    #[error("{0}")]
    NotIndexed(String),
    /// Writing the trimmed file failed.
    #[error("writing the trimmed mcap: {0}")]
    Write(String),
}

/// What the caller can do about a [`TrimError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimErrorKind {
    /// The source is broken: retrying will not help.
    Malformed,
    /// Fall back to the whole file.
    NotIndexed,
    /// Local disk trouble.
    Write,
}

impl TrimError {
    /// What the caller can do about it.
    pub fn kind(&self) -> TrimErrorKind {
        match self {
            Self::Malformed(_) => TrimErrorKind::Malformed,
            Self::NotIndexed(_) => TrimErrorKind::NotIndexed,
            Self::Write(_) => TrimErrorKind::Write,
        }
    }
}

fn malformed(message: impl Into<String>) -> TrimError {
    TrimError::Malformed(message.into())
}

fn write_error(err: impl std::fmt::Display) -> TrimError {
    TrimError::Write(err.to_string().to_lowercase())
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

/// The shared parser's error as a trim error: a log without summary section is
/// [`TrimError::NotIndexed`], anything else [`TrimError::Malformed`].
fn summary_error(err: McapError) -> TrimError {
    if err.is_no_summary() {
        TrimError::NotIndexed("the log has no summary section".to_owned())
    } else {
        malformed(err.to_string())
    }
}

/// Parses the footer from the last [`FOOTER_READ`] bytes (`tail`) of an MCAP file of `size`
/// bytes (with [`milepost_formats::mcap::parse_footer`]). A footer with `summary_start == 0` is
/// [`TrimError::NotIndexed`]; a summary section over [`MAX_SUMMARY_BYTES`] is malformed.
pub fn parse_footer(tail: &[u8], size: u64) -> Result<Footer, TrimError> {
    let footer = mcap_format::parse_footer(tail, size).map_err(summary_error)?;
    // parse_footer puts the summary between the leading magic and the footer.
    let summary_len = size - FOOTER_READ - footer.summary_start;
    if summary_len > MAX_SUMMARY_BYTES {
        return Err(malformed(format!(
            "the summary section is {summary_len} bytes, more than the {MAX_SUMMARY_BYTES} \
             accepted"
        )));
    }
    Ok(footer)
}

/// A schema of the source, as found in its summary or chunks.
pub use milepost_formats::mcap::Schema as SchemaRecord;

/// What the summary section of a source says: schemas and channels by id, the statistics
/// record if the writer emitted one, chunk indexes in file order, where the summary starts.
pub type SourceSummary = mcap_format::Summary;

/// Parses the summary section (with [`milepost_formats::mcap::parse_summary`]): `region` is the
/// bytes from `footer.summary_start` to the end of the file (summary, summary offsets, footer,
/// magic), as located by [`parse_footer`]. A chunk over [`MAX_CHUNK_BYTES`] is malformed.
pub fn parse_summary(
    region: &[u8],
    footer: &Footer,
    size: u64,
) -> Result<SourceSummary, TrimError> {
    let summary = mcap_format::parse_summary(region, footer, size).map_err(summary_error)?;
    if let Some(index) = summary
        .chunk_indexes
        .iter()
        .find(|c| c.chunk_length > MAX_CHUNK_BYTES || c.uncompressed_size > MAX_CHUNK_BYTES)
    {
        return Err(malformed(format!(
            "chunk at offset {} is larger than the {MAX_CHUNK_BYTES} bytes accepted",
            index.chunk_start_offset
        )));
    }
    Ok(summary)
}

/// A window of log times, in nanoseconds since the epoch, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// The first log time kept.
    pub start_ns: u64,
    /// The last log time kept.
    pub end_ns: u64,
}

impl Window {
    /// Whether `t` is in the window.
    pub fn contains(&self, t: u64) -> bool {
        self.start_ns <= t && t <= self.end_ns
    }

    /// Whether `[start, end]` overlaps the window.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start <= self.end_ns && end >= self.start_ns
    }
}

/// What to read from a source and how to write the trimmed file.
#[derive(Clone, Debug)]
pub struct TrimPlan {
    /// The window.
    pub window: Window,
    /// The chosen topics; empty: all.
    pub topics: BTreeSet<String>,
    /// The chunks to read, in file order.
    pub chunks: Vec<ChunkIndex>,
    /// Compression of the trimmed file's chunks: that of the source's first chunk.
    pub compression: Option<Compression>,
}

impl TrimPlan {
    /// Bytes of the chunk records to read.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.chunk_length).sum()
    }
}

fn compression(name: &str) -> Result<Option<Compression>, TrimError> {
    match name {
        "" => Ok(None),
        "zstd" => Ok(Some(Compression::Zstd)),
        "lz4" => Ok(Some(Compression::Lz4)),
        other => Err(malformed(format!(
            "unsupported chunk compression `{other}`"
        ))),
    }
}

/// Plans the trim of a source to `window` on `topics` (empty: all). Errors:
/// [`TrimError::NotIndexed`] when the summary has no chunk index although the file has (or may
/// have) messages, or when the file is not chunked.
pub fn plan(
    summary: &SourceSummary,
    window: Window,
    topics: &BTreeSet<String>,
) -> Result<TrimPlan, TrimError> {
    if summary.chunk_indexes.is_empty() {
        let empty = summary
            .statistics
            .as_ref()
            .is_some_and(|s| s.message_count == 0);
        if !empty {
            return Err(TrimError::NotIndexed(
                "the log's summary has no chunk index".to_owned(),
            ));
        }
    }
    // Channels known from the summary that are wanted: a chunk whose message index names
    // none of them holds nothing to keep. Without channels in the summary, keep every chunk
    // of the window.
    let wanted: Option<BTreeSet<u16>> =
        (!topics.is_empty() && !summary.channels.is_empty()).then(|| {
            summary
                .channels
                .values()
                .filter(|c| topics.contains(&c.topic))
                .map(|c| c.id)
                .collect()
        });
    let chunks: Vec<ChunkIndex> = summary
        .chunk_indexes
        .iter()
        .filter(|c| window.overlaps(c.message_start_time, c.message_end_time))
        .filter(|c| match &wanted {
            Some(wanted) if !c.message_index_offsets.is_empty() => {
                c.message_index_offsets.keys().any(|id| wanted.contains(id))
            }
            _ => true,
        })
        .cloned()
        .collect();
    let compression = match summary.chunk_indexes.first() {
        Some(first) => compression(&first.compression)?,
        None => None,
    };
    Ok(TrimPlan {
        window,
        topics: topics.clone(),
        chunks,
        compression,
    })
}

/// What a finished trim holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrimStats {
    /// Messages written.
    pub messages: u64,
    /// Messages written per topic.
    pub per_topic: BTreeMap<String, u64>,
    /// Chunks of the source read.
    pub chunks_read: u64,
    /// Log time of the first and last message written.
    pub first_last_ns: Option<(u64, u64)>,
}

/// Writes a trimmed MCAP file from the chunks of a [`TrimPlan`], one at a time.
pub struct Trimmer<W: Write + Seek> {
    writer: Writer<W>,
    plan: TrimPlan,
    schemas: BTreeMap<u16, SchemaRecord>,
    channels: BTreeMap<u16, Channel>,
    /// Channels added to the writer.
    written_channels: BTreeSet<u16>,
    /// Channels seen and not wanted.
    skipped_channels: BTreeSet<u16>,
    written_schemas: BTreeSet<u16>,
    stats: TrimStats,
}

impl<W: Write + Seek> std::fmt::Debug for Trimmer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trimmer")
            .field("window", &self.plan.window)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Seek> Trimmer<W> {
    /// Starts the trimmed file in `out` (its header is written now).
    pub fn new(out: W, summary: &SourceSummary, plan: TrimPlan) -> Result<Self, TrimError> {
        let writer = WriteOptions::new()
            .compression(plan.compression)
            .library(concat!("milepost-trim/", env!("CARGO_PKG_VERSION")))
            .profile("")
            // Deterministic output: the same source, window and topics give the same bytes.
            .compression_threads(0)
            .create(out)
            .map_err(write_error)?;
        Ok(Self {
            writer,
            plan,
            schemas: summary.schemas.clone(),
            channels: summary.channels.clone(),
            written_channels: BTreeSet::new(),
            skipped_channels: BTreeSet::new(),
            written_schemas: BTreeSet::new(),
            stats: TrimStats::default(),
        })
    }

    /// The plan being written.
    pub fn plan(&self) -> &TrimPlan {
        &self.plan
    }

    /// Adds the messages of one chunk of the plan: `record` is the whole chunk record as read
    /// from the source at `chunk_start_offset` (opcode, length, body; `chunk_length` bytes).
    pub fn add_chunk(&mut self, record: &[u8]) -> Result<(), TrimError> {
        if record.len() < RECORD_HEADER_LEN || record[0] != op::CHUNK {
            return Err(malformed(
                "the chunk index points at something that is not a chunk record (the file \
                 changed since its summary was read?)",
            ));
        }
        let len = read_u64(&record[1..RECORD_HEADER_LEN]);
        if len != (record.len() - RECORD_HEADER_LEN) as u64 {
            return Err(malformed(format!(
                "chunk record of {len} bytes, the chunk index says {}",
                record.len() - RECORD_HEADER_LEN
            )));
        }
        let (header, data) = match ::mcap::parse_record(op::CHUNK, &record[RECORD_HEADER_LEN..]) {
            Ok(Record::Chunk { header, data }) => (header, data),
            Ok(_) => return Err(malformed("unreadable chunk record")),
            Err(err) => {
                return Err(malformed(format!(
                    "unreadable chunk record: {}",
                    err.to_string().to_lowercase()
                )))
            }
        };
        if header.uncompressed_size > MAX_CHUNK_BYTES {
            return Err(malformed(format!(
                "chunk of {} bytes uncompressed, more than the {MAX_CHUNK_BYTES} accepted",
                header.uncompressed_size
            )));
        }
        let reader = ::mcap::read::ChunkReader::new(header, &data)
            .map_err(|err| malformed(format!("chunk: {}", err.to_string().to_lowercase())))?;
        for record in reader {
            let record = record.map_err(|err| {
                malformed(format!(
                    "reading a chunk: {}",
                    err.to_string().to_lowercase()
                ))
            })?;
            match record {
                Record::Schema { header, data } => {
                    self.schemas.entry(header.id).or_insert(SchemaRecord {
                        name: header.name,
                        encoding: header.encoding,
                        data: data.into_owned(),
                    });
                }
                Record::Channel(channel) => {
                    self.channels.entry(channel.id).or_insert(channel);
                }
                Record::Message { header, data } if self.plan.window.contains(header.log_time) => {
                    // Channels are added to the output on their first kept message.
                    let keep = self.wanted(header.channel_id)?;
                    if keep {
                        self.write_message(&header, &data)?;
                    }
                }
                _ => {}
            }
        }
        self.stats.chunks_read += 1;
        Ok(())
    }

    /// Whether messages of `channel_id` are kept; adds the channel (and its schema) to the
    /// trimmed file the first time one is.
    fn wanted(&mut self, channel_id: u16) -> Result<bool, TrimError> {
        if self.written_channels.contains(&channel_id) {
            return Ok(true);
        }
        if self.skipped_channels.contains(&channel_id) {
            return Ok(false);
        }
        let Some(channel) = self.channels.get(&channel_id).cloned() else {
            return Err(malformed(format!(
                "a message names channel {channel_id}, which no channel record defines"
            )));
        };
        if !self.plan.topics.is_empty() && !self.plan.topics.contains(&channel.topic) {
            self.skipped_channels.insert(channel_id);
            return Ok(false);
        }
        if channel.schema_id != 0 && !self.written_schemas.contains(&channel.schema_id) {
            let Some(schema) = self.schemas.get(&channel.schema_id) else {
                return Err(malformed(format!(
                    "channel {channel_id} ({}) names schema {}, which no schema record defines",
                    channel.topic, channel.schema_id
                )));
            };
            self.writer
                .add_schema_with_id(
                    channel.schema_id,
                    &schema.name,
                    &schema.encoding,
                    &schema.data,
                )
                .map_err(write_error)?;
            self.written_schemas.insert(channel.schema_id);
        }
        self.writer
            .add_channel_with_id(
                channel.id,
                channel.schema_id,
                &channel.topic,
                &channel.message_encoding,
                &channel.metadata,
            )
            .map_err(write_error)?;
        self.written_channels.insert(channel_id);
        Ok(true)
    }

    fn write_message(&mut self, header: &MessageHeader, data: &[u8]) -> Result<(), TrimError> {
        self.writer
            .write_to_known_channel(header, data)
            .map_err(write_error)?;
        self.stats.messages += 1;
        if let Some(channel) = self.channels.get(&header.channel_id) {
            *self
                .stats
                .per_topic
                .entry(channel.topic.clone())
                .or_insert(0) += 1;
        }
        self.stats.first_last_ns = Some(match self.stats.first_last_ns {
            None => (header.log_time, header.log_time),
            Some((a, b)) => (a.min(header.log_time), b.max(header.log_time)),
        });
        Ok(())
    }

    /// Writes the summary and footer; returns the output and what it holds.
    pub fn finish(mut self) -> Result<(W, TrimStats), TrimError> {
        self.writer.finish().map_err(write_error)?;
        Ok((self.writer.into_inner(), self.stats))
    }
}
