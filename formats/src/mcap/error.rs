//! What can be wrong with the end of an MCAP file, and the names of its records.

use std::fmt;

use ::mcap::records::op;

use super::{FOOTER_BODY_LEN, MIN_FILE_LEN};

/// The opcode of a record, displayed as the record's name (`chunk index`, `opcode 0x42`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            op::HEADER => "header",
            op::FOOTER => "footer",
            op::SCHEMA => "schema",
            op::CHANNEL => "channel",
            op::MESSAGE => "message",
            op::CHUNK => "chunk",
            op::MESSAGE_INDEX => "message index",
            op::CHUNK_INDEX => "chunk index",
            op::ATTACHMENT => "attachment",
            op::ATTACHMENT_INDEX => "attachment index",
            op::STATISTICS => "statistics",
            op::METADATA => "metadata",
            op::METADATA_INDEX => "metadata index",
            op::SUMMARY_OFFSET => "summary offset",
            op::DATA_END => "data end",
            other => return write!(f, "opcode {other:#04x}"),
        };
        f.write_str(name)
    }
}

/// Why the footer or summary section of an MCAP file could not be read. Messages are lowercase
/// and name the record and the offset in the file where there is one; callers prefix the
/// format (`mcap: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum McapError {
    /// The file cannot hold leading magic, a footer record and trailing magic.
    #[error(
        "the object is {size} bytes, shorter than the smallest mcap file ({MIN_FILE_LEN} bytes: \
         magic, footer, magic)"
    )]
    TooShort {
        /// Size of the file.
        size: u64,
    },
    /// The caller handed over other bytes than the ones asked for (a programming or source
    /// error, not a property of the file).
    #[error("expected {expected}, got {got} bytes")]
    WrongInput {
        /// What the bytes should have been.
        expected: String,
        /// How many bytes there were.
        got: u64,
    },
    /// The magic is not there: not an MCAP file, or a truncated one.
    #[error("bad {}magic at offset {offset} (not an mcap file?)", if *.end { "end " } else { "" })]
    BadMagic {
        /// Where the magic should be.
        offset: u64,
        /// The trailing magic (else the leading one).
        end: bool,
    },
    /// Something else than a footer record stands before the trailing magic.
    #[error("expected the footer record (opcode 0x02) at offset {offset}, found {found} ({:#04x})", found.0)]
    NotFooter {
        /// Where the footer record should start.
        offset: u64,
        /// The opcode found there.
        found: Opcode,
    },
    /// The footer record's length field is not the footer's fixed body length.
    #[error("footer record at offset {offset} has length {length}, expected {FOOTER_BODY_LEN}")]
    FooterLength {
        /// Where the footer record starts.
        offset: u64,
        /// The length it claims.
        length: u64,
    },
    /// The footer's `summary_start` is 0: the writer left no summary section. A valid file.
    #[error("the footer records no summary section")]
    NoSummary,
    /// The footer points a section outside the range it must lie in.
    #[error(
        "the footer at offset {footer_at} puts the {section} at offset {start}, outside the file \
         (it must lie in {min}..={max})"
    )]
    SectionOutside {
        /// Where the footer record starts.
        footer_at: u64,
        /// `summary section` or `summary offset section`.
        section: &'static str,
        /// The offset the footer gives.
        start: u64,
        /// Lowest valid offset.
        min: u64,
        /// Highest valid offset.
        max: u64,
    },
    /// The summary bytes do not hash to the footer's CRC.
    #[error(
        "summary crc mismatch: the footer says {expected:08x}, the summary at offset \
         {summary_start} hashes to {computed:08x}"
    )]
    CrcMismatch {
        /// Where the summary section starts.
        summary_start: u64,
        /// The footer's `summary_crc`.
        expected: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// Fewer bytes than a record header (opcode, length) are left before the footer.
    #[error("truncated record header at offset {offset}: {left} bytes left before the footer")]
    TruncatedHeader {
        /// Where the record starts.
        offset: u64,
        /// Bytes left before the footer.
        left: u64,
    },
    /// A record's length runs past the footer.
    #[error(
        "{record} record at offset {offset} claims {claims} bytes, but only {available} remain \
         before the footer"
    )]
    Overlong {
        /// The record.
        record: Opcode,
        /// Where it starts.
        offset: u64,
        /// Its length field.
        claims: u64,
        /// Body bytes there are before the footer.
        available: u64,
    },
    /// A data-section record (header, message, chunk, …) in the summary section.
    #[error(
        "unexpected {record} record at offset {offset} in the summary section (starting at \
         {summary_start})"
    )]
    Unexpected {
        /// The record.
        record: Opcode,
        /// Where it starts.
        offset: u64,
        /// Where the summary section starts.
        summary_start: u64,
    },
    /// A record whose fields do not fit its body or make no sense (a string length beyond the
    /// record, a chunk index pointing outside the data section, …).
    #[error("{record} record at offset {offset}: {problem}")]
    BadRecord {
        /// The record.
        record: Opcode,
        /// Where it starts.
        offset: u64,
        /// What is wrong, lowercase.
        problem: String,
    },
}

impl McapError {
    /// Whether this is [`McapError::NoSummary`]: a valid file without summary section, which
    /// callers describe or copy another way; every other error is a malformed file (or input).
    pub fn is_no_summary(&self) -> bool {
        matches!(self, Self::NoSummary)
    }
}

/// `message` with its first letter in lower case (the `mcap` crate's messages start in upper
/// case; ours do not).
pub(super) fn lower(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
