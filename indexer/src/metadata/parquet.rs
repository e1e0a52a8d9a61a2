//! Parquet footers (schema, row counts) by ranged reads, and run metrics from `metrics.parquet`.
//!
//! A Parquet file ends with `footer metadata (thrift) | u32 metadata length | "PAR1"`. A
//! footer is described by [`super::parquet_footer`], which reads what the catalog needs with
//! the bounded Thrift reader ([`super::thrift`]) and skips what it does not know, so footers
//! of newer writers stay readable. `metrics.parquet` (our own pipelines' files, whose rows are
//! read) is decoded by the `parquet` crate after the same reader has vetted it.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ::parquet::basic::Type as PhysicalType;
use ::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::Field;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    index_region, lower, parquet_footer, thrift, MetadataError, RangeSource, Reads,
    MAX_INDEX_BYTES, TAIL_READ,
};

const MAGIC: &[u8] = b"PAR1";
const MAGIC_ENCRYPTED_FOOTER: &[u8] = b"PARE";
/// Metadata length (u32) and end magic.
const FOOTER_TAIL_LEN: u64 = 8;
/// Leading magic and footer tail.
const MIN_PARQUET_LEN: u64 = 4 + FOOTER_TAIL_LEN;

/// Largest `metrics.parquet` [`run_metrics_from_parquet`] reads (64 MiB), and the largest
/// uncompressed page it lets the decoder allocate.
pub const MAX_METRICS_BYTES: u64 = 64 * 1024 * 1024;

/// A leaf column of a Parquet schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Dotted path of the column (`a.b.c` for nested columns).
    pub name: String,
    /// `BOOLEAN`, `INT32`, `INT64`, `INT96`, `FLOAT`, `DOUBLE`, `BYTE_ARRAY`,
    /// `FIXED_LEN_BYTE_ARRAY`.
    pub physical_type: String,
    /// The logical type (`STRING`, `TIMESTAMP(MICROS,UTC)`, `DECIMAL(10,2)`, ...), or the legacy
    /// converted type when there is no logical type; `None` for a plain physical column.
    pub logical_type: Option<String>,
}

/// What a Parquet file's footer says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetSummary {
    pub row_count: i64,
    pub row_groups: usize,
    /// Leaf columns in schema order.
    pub columns: Vec<ColumnInfo>,
    pub created_by: Option<String>,
    /// Bytes fetched from the source.
    pub bytes_read: u64,
}

/// Aggregate of one metric over the rows of a `metrics.parquet`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricStats {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Reads the footer of a Parquet object: one suffix read of `min(TAIL_READ, size)` bytes, and a
/// second read of exactly the missing part when the footer is larger than that window.
/// Bad magic, an encrypted footer, a footer length beyond the file or undecodable metadata are
/// [`Malformed`](super::MetadataErrorKind::Malformed); a footer over [`MAX_INDEX_BYTES`] is
/// [`TooLarge`](super::MetadataErrorKind::TooLarge).
pub async fn read_parquet_footer<S: RangeSource + ?Sized>(
    src: &S,
) -> Result<ParquetSummary, MetadataError> {
    let size = src.size();
    check_min_len(size)?;
    let mut reads = Reads::new(src);
    let window = TAIL_READ.min(size);
    let tail = reads.read(size - window, size).await?;
    let footer = locate_footer(&tail, size)?;
    let region = index_region(&mut reads, &tail, size, footer.start).await?;
    let metadata = region.slice(..footer.len as usize);
    let decoded = parquet_footer::decode(&metadata).map_err(|problem| {
        malformed(format!(
            "undecodable footer metadata ({} bytes at offset {}): {problem}",
            metadata.len(),
            footer.start
        ))
    })?;
    if decoded.num_rows < 0 {
        return Err(malformed(format!(
            "the footer gives a negative row count ({})",
            decoded.num_rows
        )));
    }
    Ok(ParquetSummary {
        row_count: decoded.num_rows,
        row_groups: decoded.row_groups,
        columns: decoded.columns,
        created_by: decoded.created_by,
        bytes_read: reads.bytes_read,
    })
}

/// Aggregates `metrics.parquet` (columns `scenario_id`, `metric`, `value`) per metric.
///
/// The whole file is in memory (at most [`MAX_METRICS_BYTES`], else
/// [`TooLarge`](super::MetadataErrorKind::TooLarge)). A missing or mistyped column is
/// [`Malformed`](super::MetadataErrorKind::Malformed) naming the column. `value` may be DOUBLE,
/// FLOAT, INT32 or INT64; rows with a null metric or value, or a value that is NaN or
/// infinite, are skipped. Column chunks and page headers are checked against the file before
/// the `parquet` crate decodes them. That crate (56.x) can still panic on corrupt page data
/// (dictionary indexes, bit widths): such panics are caught and reported as `Malformed`, though
/// the process's panic hook still prints them. It also decompresses zstd pages without an output
/// bound, so a hostile file could expand beyond the page size it declares.
pub fn run_metrics_from_parquet(
    bytes: Bytes,
) -> Result<BTreeMap<String, MetricStats>, MetadataError> {
    let size = bytes.len() as u64;
    if size > MAX_METRICS_BYTES {
        return Err(MetadataError::too_large(
            "metrics.parquet",
            size,
            MAX_METRICS_BYTES,
        ));
    }
    check_min_len(size)?;
    let footer = locate_footer(&bytes, size)?;
    let footer_end = footer.start + footer.len;
    let metadata = decode_footer(
        &bytes.slice(footer.start as usize..footer_end as usize),
        footer.start,
    )?;

    // Columns by name among the top-level fields.
    let schema = metadata.file_metadata().schema_descr();
    for (name, accepted) in [
        ("scenario_id", &[PhysicalType::BYTE_ARRAY][..]),
        ("metric", &[PhysicalType::BYTE_ARRAY][..]),
        (
            "value",
            &[
                PhysicalType::DOUBLE,
                PhysicalType::FLOAT,
                PhysicalType::INT32,
                PhysicalType::INT64,
            ][..],
        ),
    ] {
        let column = schema
            .columns()
            .iter()
            .find(|c| c.path().parts().len() == 1 && c.path().parts()[0] == name)
            .ok_or_else(|| {
                MetadataError::Malformed(format!("metrics.parquet: missing column {name}"))
            })?;
        if !accepted.contains(&column.physical_type()) {
            return Err(MetadataError::Malformed(format!(
                "metrics.parquet: column {name} has type {}, expected {}",
                column.physical_type(),
                accepted
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
    }

    // Column chunks inside the data, pages inside their chunks, before decoding any.
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let len = column.compressed_size();
            let data = 4..footer.start;
            let in_file = u64::try_from(start).ok().zip(u64::try_from(len).ok());
            let Some((start, len)) = in_file.filter(|&(start, len)| {
                start >= data.start && start.checked_add(len).is_some_and(|end| end <= data.end)
            }) else {
                return Err(MetadataError::Malformed(format!(
                    "metrics.parquet: column {} of row group {g} claims {len} bytes at offset \
                     {start}, outside the data ({}..{})",
                    column.column_path(),
                    data.start,
                    data.end
                )));
            };
            check_pages(&bytes, start, start + len)?;
        }
    }

    let reader = guarded("metrics.parquet: reading the file", || {
        SerializedFileReader::new(bytes.clone())
    })?;
    let rows = guarded("metrics.parquet: reading rows", || {
        reader.get_row_iter(None)
    })?;

    let mut acc: BTreeMap<String, (u64, f64, f64, f64)> = BTreeMap::new();
    let mut next = 0usize;
    let mut rows = rows;
    loop {
        let row = match catch_unwind(AssertUnwindSafe(|| rows.next())) {
            Ok(Some(Ok(row))) => row,
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return Err(MetadataError::Malformed(format!(
                    "metrics.parquet: row {next}: {err}"
                )))
            }
            Err(_) => {
                return Err(MetadataError::Malformed(format!(
                    "metrics.parquet: row {next} could not be decoded"
                )))
            }
        };
        next += 1;
        let mut metric = None;
        let mut value = None;
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("metric", Field::Str(s)) => metric = Some(s.clone()),
                ("metric", Field::Bytes(b)) => {
                    metric = std::str::from_utf8(b.data()).ok().map(str::to_owned);
                }
                ("value", Field::Double(v)) => value = Some(*v),
                ("value", Field::Float(v)) => value = Some(f64::from(*v)),
                ("value", Field::Int(v)) => value = Some(f64::from(*v)),
                ("value", Field::Long(v)) => value = Some(*v as f64),
                _ => {}
            }
        }
        let (Some(metric), Some(value)) = (metric, value) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        let entry = acc.entry(metric).or_insert((0, 0.0, value, value));
        entry.0 += 1;
        entry.1 += value;
        entry.2 = entry.2.min(value);
        entry.3 = entry.3.max(value);
    }

    Ok(acc
        .into_iter()
        .map(|(metric, (count, sum, min, max))| {
            let stats = MetricStats {
                count,
                mean: sum / count as f64,
                min,
                max,
            };
            (metric, stats)
        })
        .collect())
}

fn check_min_len(size: u64) -> Result<(), MetadataError> {
    if size < MIN_PARQUET_LEN {
        return Err(malformed(format!(
            "object is {size} bytes, shorter than the smallest parquet file ({MIN_PARQUET_LEN} \
             bytes: magic, footer length, magic)"
        )));
    }
    Ok(())
}

/// Where the footer metadata lies.
struct FooterSpan {
    start: u64,
    len: u64,
}

/// Checks the magic and the footer length in `tail` (the last bytes of a `size`-byte object).
fn locate_footer(tail: &[u8], size: u64) -> Result<FooterSpan, MetadataError> {
    let window_start = size - tail.len() as u64;
    let footer_tail = &tail[tail.len() - FOOTER_TAIL_LEN as usize..];
    let magic_at = size - 4;
    // Before the leading magic: an encrypted-footer file starts with PARE too.
    if &footer_tail[4..] == MAGIC_ENCRYPTED_FOOTER {
        return Err(malformed(format!(
            "encrypted footer (Parquet modular encryption, magic PARE at offset {magic_at}): \
             its schema cannot be read without the file's keys"
        )));
    }
    if window_start == 0 && &tail[..4] != MAGIC {
        return Err(malformed("bad magic at offset 0".to_owned()));
    }
    if &footer_tail[4..] != MAGIC {
        return Err(malformed(format!("bad end magic at offset {magic_at}")));
    }
    let len = u64::from(u32::from_le_bytes([
        footer_tail[0],
        footer_tail[1],
        footer_tail[2],
        footer_tail[3],
    ]));
    if len + FOOTER_TAIL_LEN + 4 > size {
        return Err(malformed(format!(
            "footer length {len} at offset {} exceeds the {size}-byte file",
            size - FOOTER_TAIL_LEN
        )));
    }
    if len > MAX_INDEX_BYTES {
        return Err(MetadataError::too_large(
            "parquet footer",
            len,
            MAX_INDEX_BYTES,
        ));
    }
    Ok(FooterSpan {
        start: size - FOOTER_TAIL_LEN - len,
        len,
    })
}

fn decode_footer(metadata: &[u8], offset: u64) -> Result<ParquetMetaData, MetadataError> {
    thrift::decode::<::parquet::format::FileMetaData>(metadata).map_err(|problem| {
        malformed(format!(
            "undecodable footer metadata ({} bytes at offset {offset}): {problem}",
            metadata.len()
        ))
    })?;
    match catch_unwind(|| ParquetMetaDataReader::decode_metadata(metadata)) {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(err)) => Err(malformed(format!(
            "invalid footer metadata ({} bytes at offset {offset}): {}",
            metadata.len(),
            lower(&err.to_string())
        ))),
        Err(_) => Err(malformed(format!(
            "invalid footer metadata ({} bytes at offset {offset})",
            metadata.len()
        ))),
    }
}

/// Walks the page headers of the column chunk `start..end`: each page inside the chunk, page
/// sizes non-negative and at most [`MAX_METRICS_BYTES`], dictionaries no longer than their page.
fn check_pages(file: &[u8], start: u64, end: u64) -> Result<(), MetadataError> {
    // Both bounds were checked against the file length.
    let (mut pos, end) = (start as usize, end as usize);
    while pos < end {
        let (header, used) = thrift::decode::<::parquet::format::PageHeader>(&file[pos..end])
            .map_err(|problem| {
                MetadataError::Malformed(format!(
                    "metrics.parquet: undecodable page header at offset {pos}: {problem}"
                ))
            })?;
        let compressed = usize::try_from(header.compressed_page_size);
        let uncompressed = u64::try_from(header.uncompressed_page_size);
        let (Ok(compressed), Ok(uncompressed)) = (compressed, uncompressed) else {
            return Err(MetadataError::Malformed(format!(
                "metrics.parquet: page at offset {pos} has a negative size"
            )));
        };
        let body = pos + used;
        if compressed > end - body {
            return Err(MetadataError::Malformed(format!(
                "metrics.parquet: page at offset {pos} claims {compressed} bytes, its column \
                 chunk ends {} bytes after the header",
                end - body
            )));
        }
        if uncompressed > MAX_METRICS_BYTES {
            return Err(MetadataError::too_large(
                format!("metrics.parquet page at offset {pos}"),
                uncompressed,
                MAX_METRICS_BYTES,
            ));
        }
        if let Some(dictionary) = &header.dictionary_page_header {
            if dictionary.num_values < 0 || dictionary.num_values as u64 > uncompressed {
                return Err(MetadataError::Malformed(format!(
                    "metrics.parquet: dictionary page at offset {pos} claims {} values in {} \
                     bytes",
                    dictionary.num_values, uncompressed
                )));
            }
        }
        pos = body + compressed;
    }
    Ok(())
}

/// Runs a decoding step of the `parquet` crate, turning an error or a panic into `Malformed`.
fn guarded<T>(
    what: &str,
    step: impl FnOnce() -> Result<T, ::parquet::errors::ParquetError>,
) -> Result<T, MetadataError> {
    match catch_unwind(AssertUnwindSafe(step)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(MetadataError::Malformed(format!(
            "{what}: {}",
            lower(&err.to_string())
        ))),
        Err(_) => Err(MetadataError::Malformed(format!("{what} failed"))),
    }
}

fn malformed(message: String) -> MetadataError {
    MetadataError::Malformed(format!("parquet: {message}"))
}
