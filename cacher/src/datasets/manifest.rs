//! The manifest format: a dataset's objects as a zstd-compressed Parquet file in S3, one row
//! per object, with the provenance of trimmed members; encoding, decoding (a malformed file is
//! [`Corrupt`](super::DatasetErrorKind::Corrupt), never a panic) and loading one from a store.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ::parquet::basic::{Compression, Type as PhysicalType, ZstdLevel};
use ::parquet::column::reader::ColumnReader;
use ::parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use ::parquet::errors::ParquetError;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::schema::parser::parse_message_type;
use bytes::Bytes;

use super::{DatasetError, ManifestEntry, TrimSpec};
use milepost_store::{ByteRange, ObjectStore};

/// Where manifests live in the manifest bucket: `<prefix><name>/v<version>.parquet`.
pub const MANIFEST_PREFIX: &str = ".milepost/datasets/";

/// Rows per Parquet row group of a manifest.
const ROWS_PER_GROUP: usize = 64 * 1024;

/// The largest manifest [`load_manifest`] reads (256 MiB: millions of objects).
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024 * 1024;

/// The S3 key of a dataset's manifest: `.milepost/datasets/<name>/v<version>.parquet`. The name
/// is expected valid ([`validate_name`]).
pub fn manifest_key(name: &str, version: i32) -> String {
    format!("{MANIFEST_PREFIX}{name}/v{version}.parquet")
}

fn encode_error(err: ParquetError) -> DatasetError {
    DatasetError::Manifest {
        what: "encode".to_owned(),
        reason: err.to_string().to_lowercase(),
    }
}

/// Encodes a manifest: Parquet, one row per entry in the given order, columns `bucket`, `key`,
/// `etag` (UTF-8 strings) and `size` (INT64), then the provenance of trimmed members
/// (null for whole objects): `view_key` and `scenario_id` (strings), `window_start_ns` and
/// `window_end_ns` (INT64, both included) and `topics` (a JSON array; `[]`: all);
/// zstd-compressed.
pub fn write_manifest(entries: &[ManifestEntry]) -> Result<Bytes, DatasetError> {
    let schema = parse_message_type(
        "message manifest {
            required binary bucket (STRING);
            required binary key (STRING);
            required int64 size;
            required binary etag (STRING);
            optional binary view_key (STRING);
            optional binary scenario_id (STRING);
            optional int64 window_start_ns;
            optional int64 window_end_ns;
            optional binary topics (STRING);
        }",
    )
    .map_err(encode_error)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("milepost {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(props))
        .map_err(encode_error)?;
    let too_large = |e: &ManifestEntry, n: u64| {
        DatasetError::invalid("objects", format!("{}: {n} is too large", e.uri()))
    };
    for group in entries.chunks(ROWS_PER_GROUP) {
        let mut rg = writer.next_row_group().map_err(encode_error)?;
        let defs: Vec<i16> = group.iter().map(|e| i16::from(e.trim.is_some())).collect();
        let trims = || group.iter().filter_map(|e| e.trim.as_ref().map(|t| (e, t)));
        let mut column = 0;
        while let Some(mut col) = rg.next_column().map_err(encode_error)? {
            match column {
                2 => {
                    let sizes = group
                        .iter()
                        .map(|e| i64::try_from(e.size).map_err(|_| too_large(e, e.size)))
                        .collect::<Result<Vec<i64>, _>>()?;
                    col.typed::<Int64Type>()
                        .write_batch(&sizes, None, None)
                        .map_err(encode_error)?;
                }
                0 | 1 | 3 => {
                    let values: Vec<ByteArray> = group
                        .iter()
                        .map(|e| {
                            ByteArray::from(match column {
                                0 => e.bucket.as_str(),
                                1 => e.key.as_str(),
                                _ => e.etag.as_str(),
                            })
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, None, None)
                        .map_err(encode_error)?;
                }
                6 | 7 => {
                    let values = trims()
                        .map(|(e, t)| {
                            let ns = if column == 6 { t.start_ns } else { t.end_ns };
                            i64::try_from(ns).map_err(|_| too_large(e, ns))
                        })
                        .collect::<Result<Vec<i64>, _>>()?;
                    col.typed::<Int64Type>()
                        .write_batch(&values, Some(&defs), None)
                        .map_err(encode_error)?;
                }
                _ => {
                    let values: Vec<ByteArray> = trims()
                        .map(|(_, t)| match column {
                            4 => ByteArray::from(t.view_key.as_str()),
                            5 => ByteArray::from(t.scenario_id.as_str()),
                            _ => ByteArray::from(
                                serde_json::to_string(&t.topics)
                                    .unwrap_or_else(|_| "[]".to_owned())
                                    .into_bytes(),
                            ),
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)
                        .map_err(encode_error)?;
                }
            }
            col.close().map_err(encode_error)?;
            column += 1;
        }
        rg.close().map_err(encode_error)?;
    }
    let bytes = writer.into_inner().map_err(encode_error)?;
    Ok(Bytes::from(bytes))
}

/// Decodes a manifest written by [`write_manifest`] (or by any writer with columns `bucket`,
/// `key`, `etag` as strings and `size` as INT64, in any order, other columns ignored). Never
/// panics on malformed input: it is reported as [`Corrupt`](DatasetErrorKind::Corrupt).
pub fn read_manifest(bytes: Bytes) -> Result<Vec<ManifestEntry>, DatasetError> {
    match catch_unwind(AssertUnwindSafe(|| decode_manifest(bytes))) {
        Ok(result) => result,
        Err(_) => Err(corrupt("the parquet decoder failed")),
    }
}

fn corrupt(reason: impl Into<String>) -> DatasetError {
    DatasetError::Manifest {
        what: "decode".to_owned(),
        reason: reason.into(),
    }
}

fn decode_manifest(bytes: Bytes) -> Result<Vec<ManifestEntry>, DatasetError> {
    let pq = |err: ParquetError| corrupt(err.to_string().to_lowercase());
    let reader = SerializedFileReader::new(bytes).map_err(pq)?;
    let metadata = reader.metadata();
    let schema = metadata.file_metadata().schema_descr();
    let lookup = |name: &str, physical: PhysicalType| -> Result<Option<usize>, DatasetError> {
        let Some(index) =
            (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == name)
        else {
            return Ok(None);
        };
        let found = schema.column(index).physical_type();
        if found != physical {
            return Err(corrupt(format!(
                "column `{name}` is {found}, expected {physical}"
            )));
        }
        Ok(Some(index))
    };
    let find = |name: &str, physical: PhysicalType| -> Result<usize, DatasetError> {
        lookup(name, physical)?.ok_or_else(|| corrupt(format!("no `{name}` column")))
    };
    let bucket_col = find("bucket", PhysicalType::BYTE_ARRAY)?;
    let key_col = find("key", PhysicalType::BYTE_ARRAY)?;
    let size_col = find("size", PhysicalType::INT64)?;
    let etag_col = find("etag", PhysicalType::BYTE_ARRAY)?;
    // Provenance of trimmed members; manifests of datasets without any lack them.
    let view_key_col = lookup("view_key", PhysicalType::BYTE_ARRAY)?;
    let scenario_col = lookup("scenario_id", PhysicalType::BYTE_ARRAY)?;
    let start_col = lookup("window_start_ns", PhysicalType::INT64)?;
    let end_col = lookup("window_end_ns", PhysicalType::INT64)?;
    let topics_col = lookup("topics", PhysicalType::BYTE_ARRAY)?;

    let total = metadata.file_metadata().num_rows();
    let mut entries = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(1 << 20));
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(pq)?;
        let rows = usize::try_from(rg.metadata().num_rows())
            .map_err(|_| corrupt(format!("row group {g} has a negative row count")))?;
        // Values by row, `None` where null (a required column has no nulls).
        let spread = |name: &str,
                      defs: Vec<i16>,
                      values: usize|
         -> Result<Vec<Option<usize>>, DatasetError> {
            if defs.is_empty() {
                if values != rows {
                    return Err(corrupt(format!(
                        "column `{name}` of row group {g} has {values} values for {rows} rows"
                    )));
                }
                return Ok((0..rows).map(Some).collect());
            }
            if defs.len() != rows {
                return Err(corrupt(format!(
                    "column `{name}` of row group {g} has {} levels for {rows} rows",
                    defs.len()
                )));
            }
            let mut next = 0;
            let out: Vec<Option<usize>> = defs
                .iter()
                .map(|&d| {
                    (d > 0).then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            if next != values {
                return Err(corrupt(format!(
                    "column `{name}` of row group {g} has {values} values for {next} non-null rows"
                )));
            }
            Ok(out)
        };
        let strings = |col: usize, name: &str| -> Result<Vec<Option<String>>, DatasetError> {
            let ColumnReader::ByteArrayColumnReader(mut r) =
                rg.get_column_reader(col).map_err(pq)?
            else {
                return Err(corrupt(format!("column `{name}` is not a byte array")));
            };
            let mut values = Vec::with_capacity(rows);
            let mut defs = Vec::with_capacity(rows);
            r.read_records(rows, Some(&mut defs), None, &mut values)
                .map_err(pq)?;
            let values: Vec<String> = values
                .into_iter()
                .map(|v| {
                    String::from_utf8(v.data().to_vec())
                        .map_err(|_| corrupt(format!("column `{name}` holds invalid utf-8")))
                })
                .collect::<Result<_, _>>()?;
            let count = values.len();
            Ok(spread(name, defs, count)?
                .into_iter()
                .map(|i| i.map(|i| values[i].clone()))
                .collect())
        };
        let ints = |col: usize, name: &str| -> Result<Vec<Option<i64>>, DatasetError> {
            let ColumnReader::Int64ColumnReader(mut r) = rg.get_column_reader(col).map_err(pq)?
            else {
                return Err(corrupt(format!("column `{name}` is not int64")));
            };
            let mut values = Vec::with_capacity(rows);
            let mut defs = Vec::with_capacity(rows);
            r.read_records(rows, Some(&mut defs), None, &mut values)
                .map_err(pq)?;
            let count = values.len();
            Ok(spread(name, defs, count)?
                .into_iter()
                .map(|i| i.map(|i| values[i]))
                .collect())
        };
        let required =
            |column: Vec<Option<String>>, name: &str| -> Result<Vec<String>, DatasetError> {
                column
                    .into_iter()
                    .map(|v| v.ok_or_else(|| corrupt(format!("column `{name}` holds a null"))))
                    .collect()
            };
        let buckets = required(strings(bucket_col, "bucket")?, "bucket")?;
        let keys = required(strings(key_col, "key")?, "key")?;
        let etags = required(strings(etag_col, "etag")?, "etag")?;
        let sizes: Vec<i64> = ints(size_col, "size")?
            .into_iter()
            .map(|v| v.ok_or_else(|| corrupt("column `size` holds a null")))
            .collect::<Result<_, _>>()?;
        let optional_strings = |col: Option<usize>, name: &str| match col {
            Some(col) => strings(col, name),
            None => Ok(vec![None; rows]),
        };
        let optional_ints = |col: Option<usize>, name: &str| match col {
            Some(col) => ints(col, name),
            None => Ok(vec![None; rows]),
        };
        let view_keys = optional_strings(view_key_col, "view_key")?;
        let scenarios = optional_strings(scenario_col, "scenario_id")?;
        let starts = optional_ints(start_col, "window_start_ns")?;
        let ends = optional_ints(end_col, "window_end_ns")?;
        let topics = optional_strings(topics_col, "topics")?;
        for (i, (((bucket, key), size), etag)) in buckets
            .into_iter()
            .zip(keys)
            .zip(sizes)
            .zip(etags)
            .enumerate()
        {
            let size = u64::try_from(size)
                .map_err(|_| corrupt(format!("s3://{bucket}/{key} has a negative size")))?;
            let trim = match (&view_keys[i], &scenarios[i], starts[i], ends[i], &topics[i]) {
                (Some(view_key), Some(scenario), Some(start), Some(end), Some(topics)) => {
                    let bad = || corrupt(format!("s3://{bucket}/{key} has an invalid trim window"));
                    Some(TrimSpec {
                        scenario_id: scenario.clone(),
                        start_ns: u64::try_from(start).map_err(|_| bad())?,
                        end_ns: u64::try_from(end).map_err(|_| bad())?,
                        topics: serde_json::from_str(topics).map_err(|_| {
                            corrupt(format!("s3://{bucket}/{key} has unreadable topics"))
                        })?,
                        view_key: view_key.clone(),
                        // Admission estimate, not provenance: not in the manifest.
                        planned_bytes: size,
                    })
                }
                (None, None, None, None, None) => None,
                _ => {
                    return Err(corrupt(format!(
                        "s3://{bucket}/{key} has some trim columns but not all"
                    )))
                }
            };
            entries.push(ManifestEntry {
                bucket,
                key,
                size,
                etag,
                trim,
            });
        }
    }
    if i64::try_from(entries.len()).ok() != Some(total) {
        return Err(corrupt(format!(
            "the footer announces {total} rows, the row groups hold {}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// Reads and decodes the manifest `bucket/key` from `store` (at most
/// [`MAX_MANIFEST_BYTES`]).
pub async fn load_manifest(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
) -> Result<Vec<ManifestEntry>, DatasetError> {
    let bytes = store
        .get(bucket, key, ByteRange::All, None)
        .await?
        .collect(MAX_MANIFEST_BYTES)
        .await?;
    read_manifest(bytes).map_err(|err| match err {
        DatasetError::Manifest { reason, .. } => DatasetError::Manifest {
            what: format!("s3://{bucket}/{key}"),
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{normalize_entries, DatasetErrorKind};

    fn entry(bucket: &str, key: &str, size: u64, etag: &str) -> ManifestEntry {
        ManifestEntry {
            bucket: bucket.into(),
            key: key.into(),
            size,
            etag: etag.into(),
            trim: None,
        }
    }

    #[test]
    fn manifest_keys() {
        assert_eq!(
            manifest_key("rain-cut-ins", 3),
            ".milepost/datasets/rain-cut-ins/v3.parquet"
        );
    }

    #[test]
    fn manifests_round_trip() {
        let entries = vec![
            entry(
                "fleet",
                "drives/2026-11-01/gz-004/d1/drive.json",
                0,
                "d41d8cd98f00b204e9800998ecf8427e",
            ),
            entry(
                "fleet",
                "drives/2026-11-01/gz-004/d1/log.mcap",
                5 * 1024 * 1024 * 1024 + 7,
                "abc-3",
            ),
            entry("other", "广州/雨.mcap", 42, "e"),
        ];
        let bytes = write_manifest(&entries).expect("write");
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(read_manifest(bytes).expect("read"), entries);
        // Several row groups.
        let many: Vec<_> = (0..(ROWS_PER_GROUP + 10))
            .map(|i| entry("b", &format!("k/{i:08}"), i as u64, &format!("{i:x}")))
            .collect();
        assert_eq!(
            read_manifest(write_manifest(&many).expect("write")).expect("read"),
            many
        );
    }

    #[test]
    fn trimmed_members_keep_their_provenance_in_the_manifest() {
        let trimmed = ManifestEntry {
            trim: Some(TrimSpec {
                scenario_id: "sc-0123456789abcdef".into(),
                start_ns: 1_790_000_000_000_000_000,
                end_ns: 1_790_000_034_000_000_000,
                topics: vec!["/lidar/points".into()],
                view_key: "drives/d/logs/a.sc-0123456789abcdef.20261101T100030Z-20261101T100100Z.pad2s.mcap".into(),
                planned_bytes: 7,
            }),
            ..entry("fleet", "drives/d/logs/a.mcap", 7, "e-2")
        };
        let entries = vec![
            entry("fleet", "drives/d/drive.json", 3, "e1"),
            trimmed.clone(),
            entry("fleet", "drives/d/logs/a.mcap", 7, "e-2"),
        ];
        // A log and its trim are two members.
        assert_eq!(normalize_entries(entries.clone()).expect("valid").len(), 3);
        let back = read_manifest(write_manifest(&entries).expect("write")).expect("read");
        assert_eq!(back, entries);
        assert_eq!(
            back[1].view_key(),
            trimmed.trim.as_ref().map_or("", |t| &t.view_key)
        );
    }

    #[test]
    fn malformed_manifests_are_corrupt_not_panics() {
        let good = write_manifest(&[entry("b", "k", 1, "e")]).expect("write");
        for bad in [
            Bytes::new(),
            Bytes::from_static(b"PAR1garbagePAR1"),
            good.slice(..good.len() / 2),
            {
                let mut v = good.to_vec();
                let mid = v.len() / 3;
                for b in &mut v[mid..mid + 16] {
                    *b ^= 0x5a;
                }
                Bytes::from(v)
            },
        ] {
            if let Err(err) = read_manifest(bad) {
                assert_eq!(err.kind(), DatasetErrorKind::Corrupt, "{err}");
            }
        }
    }
}
