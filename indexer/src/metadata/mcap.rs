//! MCAP summaries: footer and summary section from the end of the file.
//!
//! The bytes are fetched here (one suffix read, a second one only for a summary starting
//! before it); the footer and summary records are parsed by [`milepost_formats::mcap`], which
//! checks every record, string and map length against the bytes actually there.

use std::collections::BTreeMap;

use milepost_formats::mcap::{
    count_message_indexes, parse_footer, parse_summary, McapError, Summary, FOOTER_READ,
    MIN_FILE_LEN,
};
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
    /// Bytes fetched from the source: the suffix window, plus the missing summary part if any,
    /// plus the message indexes read when the summary has no statistics.
    pub bytes_read: u64,
    /// How the figures were derived when the summary has no statistics record (which chunk
    /// indexes and message indexes gave them); `None` when they are the statistics record's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived: Option<String>,
}

/// Most ranged reads spent on the message indexes of a file written without statistics.
/// Message indexes closer together than [`MESSAGE_INDEX_GAP`] share a read.
pub const MAX_MESSAGE_INDEX_READS: usize = 64;

/// Message indexes separated by at most this many bytes (of chunk data) are read together.
pub const MESSAGE_INDEX_GAP: u64 = 256 * 1024;

/// The figures a statistics record would give.
struct Figures {
    message_count: u64,
    start_time_ns: u64,
    end_time_ns: u64,
    chunk_count: u64,
    channel_message_counts: BTreeMap<u16, u64>,
    derived: Option<String>,
}

/// Reads the footer and summary section of an MCAP object.
///
/// One suffix read of `min(TAIL_READ, size)` bytes; a second read, of exactly the bytes between
/// `summary_start` and that window, only when the summary starts before it. Errors:
/// [`Malformed`](super::MetadataErrorKind::Malformed) for anything that is not a valid footer
/// and summary (bad magic, footer offsets outside the file, truncated or overlong records,
/// summary CRC mismatch, chunk indexes pointing outside the data section);
/// [`NoSummary`](super::MetadataErrorKind::NoSummary) for a file written without a summary
/// section, or without a statistics record and without the chunk and message indexes to
/// derive its figures from (a summary without statistics costs one more read per chunk, see
/// [`MAX_MESSAGE_INDEX_READS`]); [`TooLarge`](super::MetadataErrorKind::TooLarge)
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
    let figures = match &parsed.statistics {
        Some(stats) => Figures {
            message_count: stats.message_count,
            start_time_ns: stats.message_start_time,
            end_time_ns: stats.message_end_time,
            chunk_count: u64::from(stats.chunk_count),
            channel_message_counts: stats.channel_message_counts.clone(),
            derived: None,
        },
        None => figures_from_indexes(&mut reads, &parsed).await?,
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
            message_count: figures
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
        message_count: figures.message_count,
        start_time_ns: figures.start_time_ns,
        end_time_ns: figures.end_time_ns,
        chunk_count: figures.chunk_count,
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
        derived: figures.derived,
    })
}

/// The figures of a summary without statistics record, from what it does hold: the time
/// range and chunk count from the chunk indexes, and the messages per channel from the
/// message indexes after each chunk (ranged reads, nearby ones merged, at most
/// [`MAX_MESSAGE_INDEX_READS`]). Nothing is guessed: a file whose counts cannot be read that
/// way is [`NoSummary`](MetadataError::NoSummary), naming why.
async fn figures_from_indexes<S: RangeSource + ?Sized>(
    reads: &mut Reads<'_, S>,
    summary: &Summary,
) -> Result<Figures, MetadataError> {
    let no_statistics = |why: String| {
        MetadataError::NoSummary(format!(
            "mcap: the summary section has no statistics record, and {why}"
        ))
    };
    let chunks = &summary.chunk_indexes;
    if chunks.is_empty() {
        return Err(no_statistics(
            "no chunk indexes to derive the time range and message counts from".to_owned(),
        ));
    }
    // Each chunk's message indexes follow it: (start, end) in file order.
    let mut regions = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        if chunk.message_index_length == 0 {
            return Err(no_statistics(format!(
                "the chunk at offset {} has no message index to count its messages from",
                chunk.chunk_start_offset
            )));
        }
        // The chunk itself was checked to lie in the data section when the summary was parsed.
        let start = chunk.chunk_start_offset + chunk.chunk_length;
        let end = start
            .checked_add(chunk.message_index_length)
            .filter(|end| *end <= summary.summary_start)
            .ok_or_else(|| {
                MetadataError::Malformed(format!(
                    "mcap: the chunk index of the chunk at offset {} puts {} bytes of message \
                     indexes past the data section (ending at {})",
                    chunk.chunk_start_offset, chunk.message_index_length, summary.summary_start
                ))
            })?;
        regions.push((start, end));
    }
    regions.sort_unstable();
    // Reads: spans of regions less than MESSAGE_INDEX_GAP apart.
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in &regions {
        match spans.last_mut() {
            Some(span) if start <= span.1.saturating_add(MESSAGE_INDEX_GAP) => {
                span.1 = span.1.max(end);
            }
            _ => spans.push((start, end)),
        }
    }
    if spans.len() > MAX_MESSAGE_INDEX_READS {
        return Err(no_statistics(format!(
            "counting its messages would take {} reads of the message indexes of its {} \
             chunks, at most {MAX_MESSAGE_INDEX_READS}",
            spans.len(),
            chunks.len()
        )));
    }
    let span_bytes: u64 = spans.iter().map(|(start, end)| end - start).sum();
    if span_bytes > MAX_INDEX_BYTES {
        return Err(MetadataError::too_large(
            "mcap message indexes",
            span_bytes,
            MAX_INDEX_BYTES,
        ));
    }
    let mut channel_message_counts = BTreeMap::new();
    let mut next = regions.iter().peekable();
    for &(span_start, span_end) in &spans {
        let bytes = reads.read(span_start, span_end).await?;
        while let Some(&&(start, end)) = next.peek().filter(|(start, _)| *start < span_end) {
            next.next();
            let region = &bytes[(start - span_start) as usize..(end - span_start) as usize];
            let counts = count_message_indexes(region, start).map_err(mcap_error)?;
            for (channel, n) in counts {
                *channel_message_counts.entry(channel).or_insert(0) += n;
            }
        }
    }
    Ok(Figures {
        message_count: channel_message_counts.values().sum(),
        start_time_ns: chunks
            .iter()
            .map(|c| c.message_start_time)
            .min()
            .unwrap_or(0),
        end_time_ns: chunks.iter().map(|c| c.message_end_time).max().unwrap_or(0),
        chunk_count: chunks.len() as u64,
        channel_message_counts,
        derived: Some(format!(
            "no statistics record: time range and chunk count from {n} chunk indexes, message \
             counts from their message indexes ({reads} ranged reads, {span_bytes} bytes)",
            n = chunks.len(),
            reads = spans.len()
        )),
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
