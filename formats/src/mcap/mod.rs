//! The end of an MCAP log: footer and summary section (see <https://mcap.dev/spec>).
//!
//! Layout: `magic | data section | summary section | summary offset section | footer record
//! (opcode 0x02, length 20: summary_start, summary_offset_start, summary_crc) | magic`. The
//! footer and the trailing magic are the last [`FOOTER_READ`] bytes.
//!
//! 1. [`parse_footer`] reads them: where the summary section starts ([`McapError::NoSummary`]
//!    when the writer left none), where its summary offset section starts, the CRC.
//! 2. [`parse_summary`] takes the bytes from the summary start to the end of the file, checks
//!    the CRC and walks the records into a [`Summary`]: schemas, channels, chunk indexes (with
//!    their message index offsets), the statistics record if any, and how many records of each
//!    kind there were.
//!
//! Inputs are untrusted: every record length, and every string and map length of the records
//! decoded here, is checked against the bytes there before the `mcap` crate decodes the record
//! (it would otherwise reserve whatever a corrupt length claims). Malformed input is an
//! [`McapError`] naming the record and its offset, never a panic.

use std::collections::BTreeMap;

use ::mcap::records::{op, Channel, ChunkIndex, Footer, Record, Statistics};

mod check;
mod error;
#[cfg(test)]
mod tests;

use self::error::lower;
pub use self::error::{McapError, Opcode};

/// The magic at both ends of an MCAP file.
pub const MAGIC: &[u8] = ::mcap::MAGIC;
/// Length of the magic.
pub const MAGIC_LEN: u64 = 8;
/// Opcode and length of a record.
pub const RECORD_HEADER_LEN: u64 = 1 + 8;
/// The footer record's body: summary_start, summary_offset_start, summary_crc.
pub const FOOTER_BODY_LEN: u64 = 8 + 8 + 4;
/// The footer record (header and body) and the trailing magic: the last bytes of a file.
pub const FOOTER_READ: u64 = RECORD_HEADER_LEN + FOOTER_BODY_LEN + MAGIC_LEN;
/// Leading magic, footer record, trailing magic.
pub const MIN_FILE_LEN: u64 = MAGIC_LEN + FOOTER_READ;

/// A schema record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// The schema name.
    pub name: String,
    /// The schema encoding.
    pub encoding: String,
    /// The schema bytes.
    pub data: Vec<u8>,
}

/// How many records of each kind the summary section holds (duplicates included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Schema records.
    pub schemas: u64,
    /// Channel records.
    pub channels: u64,
    /// Chunk index records.
    pub chunk_indexes: u64,
    /// Attachment index records.
    pub attachment_indexes: u64,
    /// Metadata index records.
    pub metadata_indexes: u64,
    /// Statistics records.
    pub statistics: u64,
    /// Summary offset records.
    pub summary_offsets: u64,
    /// Metadata and private records (opcode 0x80 and up), skipped.
    pub other: u64,
}

/// What the summary section of a file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Schemas by id (the first record of an id wins).
    pub schemas: BTreeMap<u16, Schema>,
    /// Channels by id (the first record of an id wins).
    pub channels: BTreeMap<u16, Channel>,
    /// The statistics record, if the writer emitted one (the last one wins).
    pub statistics: Option<Statistics>,
    /// Chunk indexes, in file order, each inside the data section.
    pub chunk_indexes: Vec<ChunkIndex>,
    /// Where the summary section starts (the data section ends there).
    pub summary_start: u64,
    /// Where the summary offset section starts; 0 when there is none.
    pub summary_offset_start: u64,
    /// Records of each kind in the summary section.
    pub counts: RecordCounts,
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

/// Parses the footer of an MCAP file of `size` bytes from `tail`, its last `tail.len()` bytes
/// (at least [`FOOTER_READ`]). When `tail` is the whole file the leading magic is checked too.
///
/// Checks the trailing magic, the footer record's opcode and length, and that the summary
/// section and summary offset section it points at lie between the leading magic and the
/// footer. A footer with `summary_start == 0` is [`McapError::NoSummary`].
pub fn parse_footer(tail: &[u8], size: u64) -> Result<Footer, McapError> {
    if size < MIN_FILE_LEN {
        return Err(McapError::TooShort { size });
    }
    let got = tail.len() as u64;
    if got < FOOTER_READ || got > size {
        return Err(McapError::WrongInput {
            expected: format!("the last {FOOTER_READ} or more of the file's {size} bytes"),
            got,
        });
    }
    if got == size && &tail[..MAGIC.len()] != MAGIC {
        return Err(McapError::BadMagic {
            offset: 0,
            end: false,
        });
    }
    // The last FOOTER_READ bytes: footer record, then magic.
    let (record, magic) = tail[tail.len() - FOOTER_READ as usize..]
        .split_at((RECORD_HEADER_LEN + FOOTER_BODY_LEN) as usize);
    let footer_at = size - FOOTER_READ;
    if magic != MAGIC {
        return Err(McapError::BadMagic {
            offset: size - MAGIC_LEN,
            end: true,
        });
    }
    if record[0] != op::FOOTER {
        return Err(McapError::NotFooter {
            offset: footer_at,
            found: Opcode(record[0]),
        });
    }
    let length = read_u64(&record[1..]);
    if length != FOOTER_BODY_LEN {
        return Err(McapError::FooterLength {
            offset: footer_at,
            length,
        });
    }
    let body = &record[RECORD_HEADER_LEN as usize..];
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&body[16..20]);
    let footer = Footer {
        summary_start: read_u64(&body[..8]),
        summary_offset_start: read_u64(&body[8..16]),
        summary_crc: u32::from_le_bytes(crc),
    };
    if footer.summary_start == 0 {
        return Err(McapError::NoSummary);
    }
    if footer.summary_start < MAGIC_LEN || footer.summary_start > footer_at {
        return Err(McapError::SectionOutside {
            footer_at,
            section: "summary section",
            start: footer.summary_start,
            min: MAGIC_LEN,
            max: footer_at,
        });
    }
    let offsets = footer.summary_offset_start;
    if offsets != 0 && (offsets < footer.summary_start || offsets > footer_at) {
        return Err(McapError::SectionOutside {
            footer_at,
            section: "summary offset section",
            start: offsets,
            min: footer.summary_start,
            max: footer_at,
        });
    }
    Ok(footer)
}

/// Parses the summary section of an MCAP file of `size` bytes whose footer is `footer` (from
/// [`parse_footer`]): `region` is the bytes from `footer.summary_start` to the end of the file
/// (summary section, summary offset section, footer, magic).
///
/// Checks the summary CRC (when the footer has one), every record length against the bytes
/// before the footer, the string and map lengths of the schema, channel and chunk index
/// records, that no data-section record (header, message, chunk, …) is there, and that every
/// chunk index points inside the data section.
pub fn parse_summary(region: &[u8], footer: &Footer, size: u64) -> Result<Summary, McapError> {
    let summary_start = footer.summary_start;
    let expected = size
        .checked_sub(summary_start)
        .filter(|n| *n >= FOOTER_READ);
    if expected != Some(region.len() as u64) {
        return Err(McapError::WrongInput {
            expected: format!("the bytes from offset {summary_start} to the end ({size})"),
            got: region.len() as u64,
        });
    }
    if footer.summary_crc != 0 {
        // The CRC covers the summary up to and including the footer's summary_offset_start:
        // everything but the CRC itself and the trailing magic.
        let covered = region.len() - 4 - MAGIC_LEN as usize;
        let computed = crc32fast::hash(&region[..covered]);
        if computed != footer.summary_crc {
            return Err(McapError::CrcMismatch {
                summary_start,
                expected: footer.summary_crc,
                computed,
            });
        }
    }
    let records = &region[..region.len() - FOOTER_READ as usize];
    let mut out = Summary {
        summary_start,
        summary_offset_start: footer.summary_offset_start,
        ..Summary::default()
    };
    let header_len = RECORD_HEADER_LEN as usize;
    let mut pos = 0usize;
    while pos < records.len() {
        let offset = summary_start + pos as u64;
        let left = records.len() - pos;
        if left < header_len {
            return Err(McapError::TruncatedHeader {
                offset,
                left: left as u64,
            });
        }
        let opcode = records[pos];
        let record = Opcode(opcode);
        let claims = read_u64(&records[pos + 1..]);
        let body_start = pos + header_len;
        let available = (records.len() - body_start) as u64;
        if claims > available {
            return Err(McapError::Overlong {
                record,
                offset,
                claims,
                available,
            });
        }
        // claims ≤ available, a usize.
        let body = &records[body_start..body_start + claims as usize];
        pos = body_start + claims as usize;
        let bad = |problem: String| McapError::BadRecord {
            record,
            offset,
            problem,
        };
        match opcode {
            op::SCHEMA | op::CHANNEL | op::STATISTICS | op::CHUNK_INDEX => {
                check::lengths(opcode, body).map_err(bad)?;
                let parsed = ::mcap::parse_record(opcode, body)
                    .map_err(|err| bad(format!("unreadable: {}", lower(&err.to_string()))))?;
                collect(&mut out, parsed).map_err(bad)?;
            }
            op::HEADER
            | op::FOOTER
            | op::MESSAGE
            | op::CHUNK
            | op::MESSAGE_INDEX
            | op::ATTACHMENT
            | op::DATA_END => {
                return Err(McapError::Unexpected {
                    record,
                    offset,
                    summary_start,
                });
            }
            op::ATTACHMENT_INDEX => out.counts.attachment_indexes += 1,
            op::METADATA_INDEX => out.counts.metadata_indexes += 1,
            op::SUMMARY_OFFSET => out.counts.summary_offsets += 1,
            // Metadata and private records.
            _ => out.counts.other += 1,
        }
    }
    Ok(out)
}

/// Counts the messages per channel that one chunk's message index records list: `region` is
/// the chunk index's `message_index_length` bytes after its chunk, starting at file offset
/// `offset`. Each record is checked (opcode, lengths, whole 16-byte entries); nothing is
/// decoded beyond the lengths. Messages of a channel split over several records add up.
pub fn count_message_indexes(region: &[u8], offset: u64) -> Result<BTreeMap<u16, u64>, McapError> {
    const ENTRY_LEN: u64 = 16;
    let header_len = RECORD_HEADER_LEN as usize;
    let mut counts = BTreeMap::new();
    let mut pos = 0usize;
    while pos < region.len() {
        let at = offset + pos as u64;
        let left = region.len() - pos;
        if left < header_len {
            return Err(McapError::TruncatedHeader {
                offset: at,
                left: left as u64,
            });
        }
        let record = Opcode(region[pos]);
        let length = u64::from_le_bytes(
            region[pos + 1..pos + header_len]
                .try_into()
                .unwrap_or_default(),
        );
        let available = (left - header_len) as u64;
        if length > available {
            return Err(McapError::Overlong {
                record,
                offset: at,
                claims: length,
                available,
            });
        }
        let bad = |problem: String| McapError::BadRecord {
            record,
            offset: at,
            problem,
        };
        if record.0 != op::MESSAGE_INDEX {
            return Err(bad(
                "expected only message index records after a chunk".to_owned()
            ));
        }
        let body = &region[pos + header_len..pos + header_len + length as usize];
        if body.len() < 6 {
            return Err(bad(format!("body of {} bytes, shorter than 6", body.len())));
        }
        let channel = u16::from_le_bytes([body[0], body[1]]);
        let entries = u64::from(u32::from_le_bytes([body[2], body[3], body[4], body[5]]));
        // Fields a later version appends after the entries are skipped, as the spec asks.
        if entries > body.len() as u64 - 6 || entries % ENTRY_LEN != 0 {
            return Err(bad(format!(
                "its entries claim {entries} bytes of a {}-byte body, not whole 16-byte entries \
                 inside it",
                body.len()
            )));
        }
        *counts.entry(channel).or_insert(0) += entries / ENTRY_LEN;
        pos += header_len + length as usize;
    }
    Ok(counts)
}

/// Adds a decoded schema, channel, statistics or chunk index record to `out`.
fn collect(out: &mut Summary, record: Record<'_>) -> Result<(), String> {
    match record {
        Record::Schema { header, data } => {
            out.counts.schemas += 1;
            out.schemas.entry(header.id).or_insert(Schema {
                name: header.name,
                encoding: header.encoding,
                data: data.into_owned(),
            });
        }
        Record::Channel(channel) => {
            out.counts.channels += 1;
            out.channels.entry(channel.id).or_insert(channel);
        }
        Record::Statistics(stats) => {
            out.counts.statistics += 1;
            out.statistics = Some(stats);
        }
        Record::ChunkIndex(index) => {
            out.counts.chunk_indexes += 1;
            let data_end = out.summary_start;
            let end = index.chunk_start_offset.checked_add(index.chunk_length);
            if index.chunk_start_offset < MAGIC_LEN || end.is_none_or(|end| end > data_end) {
                return Err(format!(
                    "points at {} bytes from offset {}, outside the data section \
                     ({MAGIC_LEN}..{data_end})",
                    index.chunk_length, index.chunk_start_offset
                ));
            }
            if index.compressed_size > index.chunk_length {
                return Err(format!(
                    "compressed size {} larger than its chunk ({} bytes)",
                    index.compressed_size, index.chunk_length
                ));
            }
            out.chunk_indexes.push(index);
        }
        // Only the four opcodes above are decoded.
        _ => {}
    }
    Ok(())
}
