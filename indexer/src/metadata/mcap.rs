//! MCAP summaries: footer and summary section from the end of the file.
//!
//! Layout read here (see <https://mcap.dev/spec>): `… | summary section | summary offset
//! section | footer record (opcode 0x02, length 20: summary_start, summary_offset_start,
//! summary_crc) | magic`. The footer and magic are the last 37 bytes; the summary section runs
//! from `summary_start` to the footer. Records are parsed with `mcap::parse_record`, after this
//! module has checked every record length and string length against the bytes actually there
//! (the crate would otherwise reserve whatever a corrupt length field claims).

use std::collections::BTreeMap;

use ::mcap::records::{op, Record};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{index_region, lower, MetadataError, RangeSource, Reads, MAX_INDEX_BYTES, TAIL_READ};

const MAGIC: &[u8] = ::mcap::MAGIC;
/// Magic at both ends of an MCAP file.
const MAGIC_LEN: u64 = 8;
/// Opcode, length and the 20-byte body of the footer record.
const FOOTER_RECORD_LEN: u64 = 1 + 8 + 20;
/// The footer record body: summary_start, summary_offset_start, summary_crc.
const FOOTER_BODY_LEN: u64 = 20;
/// Opcode and length of a record.
const RECORD_HEADER_LEN: usize = 1 + 8;
/// Leading magic, footer record, trailing magic.
const MIN_MCAP_LEN: u64 = MAGIC_LEN + FOOTER_RECORD_LEN + MAGIC_LEN;

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
    if size < MIN_MCAP_LEN {
        return Err(malformed(format!(
            "object is {size} bytes, shorter than the smallest mcap file ({MIN_MCAP_LEN} bytes: \
             magic, footer, magic)"
        )));
    }
    let mut reads = Reads::new(src);
    let window = TAIL_READ.min(size);
    let window_start = size - window;
    let tail = reads.read(window_start, size).await?;
    // Offsets below are absolute; `at(offset)` is the index into `tail` (offset ≥ window_start).
    let at = |offset: u64| (offset - window_start) as usize;

    if window_start == 0 && &tail[..MAGIC.len()] != MAGIC {
        return Err(malformed("bad magic at offset 0".to_owned()));
    }
    let end_magic_at = size - MAGIC_LEN;
    if &tail[at(end_magic_at)..] != MAGIC {
        return Err(malformed(format!("bad end magic at offset {end_magic_at}")));
    }
    let footer_at = end_magic_at - FOOTER_RECORD_LEN;
    let footer = &tail[at(footer_at)..at(end_magic_at)];
    if footer[0] != op::FOOTER {
        return Err(malformed(format!(
            "expected the footer record (opcode 0x02) at offset {footer_at}, found opcode {:#04x}",
            footer[0]
        )));
    }
    let footer_len = read_u64(&footer[1..RECORD_HEADER_LEN]);
    if footer_len != FOOTER_BODY_LEN {
        return Err(malformed(format!(
            "footer record at offset {footer_at} has length {footer_len}, expected {FOOTER_BODY_LEN}"
        )));
    }
    let footer = match ::mcap::parse_record(op::FOOTER, &footer[RECORD_HEADER_LEN..]) {
        Ok(Record::Footer(footer)) => footer,
        Ok(_) => {
            return Err(malformed(format!(
                "unreadable footer at offset {footer_at}"
            )))
        }
        Err(err) => {
            return Err(malformed(format!(
                "unreadable footer at offset {footer_at}: {}",
                lower(&err.to_string())
            )))
        }
    };

    let summary_start = footer.summary_start;
    if summary_start == 0 {
        return Err(no_summary("the footer records no summary section"));
    }
    if summary_start < MAGIC_LEN || summary_start > footer_at {
        return Err(malformed(format!(
            "the footer at offset {footer_at} puts the summary section at offset {summary_start}, \
             outside the file (it must lie between offset {MAGIC_LEN} and the footer)"
        )));
    }
    let offsets_start = footer.summary_offset_start;
    if offsets_start != 0 && (offsets_start < summary_start || offsets_start > footer_at) {
        return Err(malformed(format!(
            "the footer at offset {footer_at} puts the summary offset section at offset \
             {offsets_start}, outside the summary ({summary_start}..{footer_at})"
        )));
    }
    let summary_len = footer_at - summary_start;
    if summary_len > MAX_INDEX_BYTES {
        return Err(MetadataError::too_large(
            "mcap summary section",
            summary_len,
            MAX_INDEX_BYTES,
        ));
    }

    // Bytes summary_start..size: summary, summary offsets, footer, magic.
    let region = index_region(&mut reads, &tail, size, summary_start).await?;
    if footer.summary_crc != 0 {
        // The CRC covers the summary section up to and including the footer's
        // summary_offset_start field: everything but the CRC itself and the end magic.
        let covered = (size - 4 - MAGIC_LEN - summary_start) as usize;
        let computed = crc32fast::hash(&region[..covered]);
        if computed != footer.summary_crc {
            return Err(malformed(format!(
                "summary crc mismatch: the footer at offset {footer_at} says {:08x}, the summary \
                 at offset {summary_start} hashes to {computed:08x}",
                footer.summary_crc
            )));
        }
    }

    let parsed = parse_summary(&region.slice(..summary_len as usize), summary_start)?;
    let Some(stats) = parsed.statistics else {
        return Err(no_summary("the summary section has no statistics record"));
    };

    let mut topics: Vec<TopicInfo> = parsed
        .channels
        .values()
        .map(|channel| TopicInfo {
            topic: channel.topic.clone(),
            schema_name: parsed
                .schemas
                .get(&channel.schema_id)
                .cloned()
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
        chunk_indexes: parsed.chunk_indexes,
        summary_start,
        bytes_read: reads.bytes_read,
    })
}

/// The records of a summary section that matter here.
#[derive(Default)]
struct ParsedSummary {
    /// Schema id → name.
    schemas: BTreeMap<u16, String>,
    channels: BTreeMap<u16, ::mcap::records::Channel>,
    statistics: Option<::mcap::records::Statistics>,
    chunk_indexes: Vec<ChunkIndexInfo>,
}

/// Walks the records of `summary` (the bytes from `summary_start` to the footer).
fn parse_summary(summary: &Bytes, summary_start: u64) -> Result<ParsedSummary, MetadataError> {
    let mut parsed = ParsedSummary::default();
    let mut pos = 0usize;
    while pos < summary.len() {
        let offset = summary_start + pos as u64;
        let left = summary.len() - pos;
        if left < RECORD_HEADER_LEN {
            return Err(malformed(format!(
                "truncated record header at offset {offset}: {left} bytes left before the footer"
            )));
        }
        let opcode = summary[pos];
        let len = read_u64(&summary[pos + 1..pos + RECORD_HEADER_LEN]);
        let body_start = pos + RECORD_HEADER_LEN;
        let available = summary.len() - body_start;
        if len > available as u64 {
            return Err(malformed(format!(
                "{} record at offset {offset} claims {len} bytes, but only {available} remain \
                 before the footer",
                record_name(opcode)
            )));
        }
        // len ≤ available, a usize.
        let body = &summary[body_start..body_start + len as usize];
        match opcode {
            op::SCHEMA | op::CHANNEL | op::STATISTICS | op::CHUNK_INDEX => {
                check_lengths(opcode, body).map_err(|problem| {
                    malformed(format!(
                        "{} record at offset {offset}: {problem}",
                        record_name(opcode)
                    ))
                })?;
                let record = ::mcap::parse_record(opcode, body).map_err(|err| {
                    malformed(format!(
                        "unreadable {} record at offset {offset}: {}",
                        record_name(opcode),
                        lower(&err.to_string())
                    ))
                })?;
                collect(&mut parsed, record, offset, summary_start)?;
            }
            op::HEADER
            | op::FOOTER
            | op::MESSAGE
            | op::CHUNK
            | op::MESSAGE_INDEX
            | op::ATTACHMENT
            | op::DATA_END => {
                return Err(malformed(format!(
                    "unexpected {} record at offset {offset} in the summary section (starting at \
                     {summary_start})",
                    record_name(opcode)
                )));
            }
            // Attachment and metadata indexes, summary offsets, metadata, private records.
            _ => {}
        }
        pos = body_start + len as usize;
    }
    Ok(parsed)
}

fn collect(
    parsed: &mut ParsedSummary,
    record: Record<'_>,
    offset: u64,
    summary_start: u64,
) -> Result<(), MetadataError> {
    match record {
        Record::Schema { header, .. } => {
            parsed.schemas.entry(header.id).or_insert(header.name);
        }
        Record::Channel(channel) => {
            parsed.channels.entry(channel.id).or_insert(channel);
        }
        Record::Statistics(stats) => parsed.statistics = Some(stats),
        Record::ChunkIndex(index) => {
            let end = index.chunk_start_offset.checked_add(index.chunk_length);
            if index.chunk_start_offset < MAGIC_LEN || end.is_none_or(|end| end > summary_start) {
                return Err(malformed(format!(
                    "chunk index at offset {offset} points at {} bytes from offset {}, outside \
                     the data section ({MAGIC_LEN}..{summary_start})",
                    index.chunk_length, index.chunk_start_offset
                )));
            }
            if index.compressed_size > index.chunk_length {
                return Err(malformed(format!(
                    "chunk index at offset {offset} has compressed size {} larger than its chunk \
                     ({} bytes)",
                    index.compressed_size, index.chunk_length
                )));
            }
            parsed.chunk_indexes.push(ChunkIndexInfo {
                message_start_time_ns: index.message_start_time,
                message_end_time_ns: index.message_end_time,
                chunk_start_offset: index.chunk_start_offset,
                chunk_length: index.chunk_length,
                compression: index.compression,
                compressed_size: index.compressed_size,
                uncompressed_size: index.uncompressed_size,
            });
        }
        _ => {}
    }
    Ok(())
}

/// Checks the length-prefixed strings and maps of the records parsed here against the record
/// body, so that the parser never reserves memory for a length the record cannot hold.
fn check_lengths(opcode: u8, body: &[u8]) -> Result<(), String> {
    let mut cur = Cursor { buf: body, pos: 0 };
    match opcode {
        op::SCHEMA => {
            cur.skip(2, "id")?;
            cur.string("name")?;
            cur.string("encoding")?;
        }
        op::CHANNEL => {
            cur.skip(4, "ids")?;
            cur.string("topic")?;
            cur.string("message encoding")?;
            let map = cur.sized("metadata")?;
            let mut map = Cursor { buf: map, pos: 0 };
            while map.pos < map.buf.len() {
                map.string("metadata key")?;
                map.string("metadata value")?;
            }
        }
        op::CHUNK_INDEX => {
            cur.skip(32, "times and offsets")?;
            cur.sized("message index offsets")?;
            cur.skip(8, "message index length")?;
            cur.string("compression")?;
        }
        // Statistics hold integers and an integer map, parsed without reservations.
        _ => {}
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(format!(
                "{what} needs {n} bytes at byte {} of the record, {left} left",
                self.pos
            ));
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// A u32 length prefix and that many bytes.
    fn sized(&mut self, what: &str) -> Result<&'a [u8], String> {
        let prefix = self.skip(4, what)?;
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let left = self.buf.len() - self.pos;
        if len as usize > left {
            return Err(format!(
                "{what} length {len} exceeds the {left} bytes left in the record"
            ));
        }
        self.skip(len as usize, what)
    }

    fn string(&mut self, what: &str) -> Result<(), String> {
        self.sized(what).map(|_| ())
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

fn record_name(opcode: u8) -> String {
    match opcode {
        op::HEADER => "header".into(),
        op::FOOTER => "footer".into(),
        op::SCHEMA => "schema".into(),
        op::CHANNEL => "channel".into(),
        op::MESSAGE => "message".into(),
        op::CHUNK => "chunk".into(),
        op::MESSAGE_INDEX => "message index".into(),
        op::CHUNK_INDEX => "chunk index".into(),
        op::ATTACHMENT => "attachment".into(),
        op::ATTACHMENT_INDEX => "attachment index".into(),
        op::STATISTICS => "statistics".into(),
        op::METADATA => "metadata".into(),
        op::METADATA_INDEX => "metadata index".into(),
        op::SUMMARY_OFFSET => "summary offset".into(),
        op::DATA_END => "data end".into(),
        other => format!("opcode {other:#04x}"),
    }
}

fn malformed(message: String) -> MetadataError {
    MetadataError::Malformed(format!("mcap: {message}"))
}

fn no_summary(message: &str) -> MetadataError {
    MetadataError::NoSummary(format!("mcap: {message}"))
}
