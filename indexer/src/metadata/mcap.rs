//! MCAP summaries: footer and summary section from the end of the file.
//!
//! The bytes are fetched here (one suffix read, a second one only for a summary starting
//! before it); the footer and summary records are parsed by [`milepost_formats::mcap`], which
//! checks every record, string and map length against the bytes actually there.

use milepost_formats::mcap::{parse_footer, parse_summary, McapError, FOOTER_READ, MIN_FILE_LEN};
use serde::{Deserialize, Serialize};

use super::{index_region, MetadataError, RangeSource, Reads, MAX_INDEX_BYTES, TAIL_READ};

/// One channel of an MCAP file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub topic: String,
    /// Name of the channel's schema; empty for a schemaless channel (schema id 0) or when the
    /// summary does not repeat the schema.
    pub schema_name: String,
    pub message_encoding: String,
    pub message_count: u64,
}

/// One chunk index record of the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndexInfo {
    pub message_start_time_ns: u64,
    pub message_end_time_ns: u64,
    /// Offset of the chunk record in the file.
    pub chunk_start_offset: u64,
    /// Length of the whole chunk record.
    pub chunk_length: u64,
    /// `zstd`, `lz4`, or empty for uncompressed chunks.
    pub compression: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

/// What an MCAP file's summary says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McapSummary {
    /// One entry per channel of the summary, sorted by topic (then schema name, then message
    /// encoding). Empty when the writer did not repeat channels in the summary.
    pub topics: Vec<TopicInfo>,
    pub message_count: u64,
    /// Log time of the earliest message, nanoseconds since the Unix epoch (0 without messages).
    pub start_time_ns: u64,
    pub end_time_ns: u64,
    pub chunk_count: u64,
    /// In file order.
    pub chunk_indexes: Vec<ChunkIndexInfo>,
    /// Offset of the summary section.
    pub summary_start: u64,
    /// Bytes fetched from the source: the suffix window, plus the missing summary part if any.
    pub bytes_read: u64,
}

/// Reads the footer and summary section of an MCAP object.
///
/// One suffix read of `min(TAIL_READ, size)` bytes; a second read, of exactly the bytes between
/// `summary_start` and that window, only when the summary starts before it. Errors:
/// [`Malformed`](super::MetadataErrorKind::Malformed) for anything that is not a valid footer
/// and summary (bad magic, footer offsets outside the file, truncated or overlong records,
/// summary CRC mismatch, chunk indexes pointing outside the data section);
/// [`NoSummary`](super::MetadataErrorKind::NoSummary) for a file written without a summary
/// section or without a statistics record; [`TooLarge`](super::MetadataErrorKind::TooLarge)
/// for a summary over [`MAX_INDEX_BYTES`].
pub async fn read_mcap_summary<S: RangeSource + ?Sized>(
    src: &S,
) -> Result<McapSummary, MetadataError> {
    let size = src.size();
    if size < MIN_FILE_LEN {
        return Err(mcap_error(McapError::TooShort { size }));
    }
    let mut reads = Reads::new(src);
    let window = TAIL_READ.min(size);
    // The whole file when it fits the window: its leading magic is checked too.
    let tail = reads.read(size - window, size).await?;
    let footer = parse_footer(&tail, size).map_err(mcap_error)?;
    let summary_start = footer.summary_start;
    let summary_len = size - FOOTER_READ - summary_start;
    if summary_len > MAX_INDEX_BYTES {
        return Err(MetadataError::too_large(
            "mcap summary section",
            summary_len,
            MAX_INDEX_BYTES,
        ));
    }
    // Bytes summary_start..size: summary, summary offsets, footer, magic.
    let region = index_region(&mut reads, &tail, size, summary_start).await?;
    let parsed = parse_summary(&region, &footer, size).map_err(mcap_error)?;
    let Some(stats) = parsed.statistics else {
        return Err(MetadataError::NoSummary(
            "mcap: the summary section has no statistics record".to_owned(),
        ));
    };

    let mut topics: Vec<TopicInfo> = parsed
        .channels
        .values()
        .map(|channel| TopicInfo {
            topic: channel.topic.clone(),
            schema_name: parsed
                .schemas
                .get(&channel.schema_id)
                .map(|schema| schema.name.clone())
                .unwrap_or_default(),
            message_encoding: channel.message_encoding.clone(),
            message_count: stats
                .channel_message_counts
                .get(&channel.id)
                .copied()
                .unwrap_or(0),
        })
        .collect();
    topics.sort_by(|a, b| {
        (&a.topic, &a.schema_name, &a.message_encoding).cmp(&(
            &b.topic,
            &b.schema_name,
            &b.message_encoding,
        ))
    });

    Ok(McapSummary {
        topics,
        message_count: stats.message_count,
        start_time_ns: stats.message_start_time,
        end_time_ns: stats.message_end_time,
        chunk_count: u64::from(stats.chunk_count),
        chunk_indexes: parsed
            .chunk_indexes
            .into_iter()
            .map(|index| ChunkIndexInfo {
                message_start_time_ns: index.message_start_time,
                message_end_time_ns: index.message_end_time,
                chunk_start_offset: index.chunk_start_offset,
                chunk_length: index.chunk_length,
                compression: index.compression,
                compressed_size: index.compressed_size,
                uncompressed_size: index.uncompressed_size,
            })
            .collect(),
        summary_start,
        bytes_read: reads.bytes_read,
    })
}

/// The shared parser's error as the readers': a file without summary section is
/// [`NoSummary`](MetadataError::NoSummary), anything else [`Malformed`](MetadataError::Malformed).
fn mcap_error(err: McapError) -> MetadataError {
    if err.is_no_summary() {
        MetadataError::NoSummary(format!("mcap: {err}"))
    } else {
        MetadataError::Malformed(format!("mcap: {err}"))
    }
}
