//! Metadata readers (MCAP summaries, Parquet footers, run metrics) over the synthetic fleet, and
//! the fleet's determinism.
//!
//! (Over 600 lines: metadata readers over the synthetic fleet and hand-built malformed files.)

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use bytes::Bytes;
use milepost_indexer::fleet::{self, FileKind, Fleet, FleetSpec, LogCompression};
use milepost_indexer::metadata::{
    read_mcap_summary, read_parquet_footer, run_metrics_from_parquet, MetadataError,
    MetadataErrorKind, RangeSource, MAX_METRICS_BYTES, TAIL_READ,
};
use rand::{Rng, SeedableRng};

/// An in-memory object that records the ranges read.
struct Recording {
    data: Bytes,
    reads: Mutex<Vec<(u64, u64)>>,
}

impl Recording {
    fn new(data: Bytes) -> Self {
        Self {
            data,
            reads: Mutex::new(Vec::new()),
        }
    }

    fn reads(&self) -> Vec<(u64, u64)> {
        self.reads.lock().expect("lock").clone()
    }
}

impl RangeSource for Recording {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read(
        &self,
        start: u64,
        end_exclusive: u64,
    ) -> impl Future<Output = Result<Bytes, MetadataError>> + Send {
        self.reads
            .lock()
            .expect("lock")
            .push((start, end_exclusive));
        self.data.read(start, end_exclusive)
    }
}

/// A source that returns one byte less than asked.
struct Short(Bytes);

impl RangeSource for Short {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read(
        &self,
        start: u64,
        end_exclusive: u64,
    ) -> impl Future<Output = Result<Bytes, MetadataError>> + Send {
        let end = end_exclusive.saturating_sub(1).max(start);
        self.0.read(start, end)
    }
}

/// The readers' futures are `Send` for a `Sync` source, so the sync can spawn them.
#[test]
fn reader_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let bytes = Bytes::new();
    let recording = Recording::new(Bytes::new());
    send(&read_mcap_summary(&bytes));
    send(&read_parquet_footer(&recording));
}

fn small_fleet() -> Fleet {
    fleet::generate(&FleetSpec::small(7))
}

fn mcap_files(fleet: &Fleet) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (d, drive) in fleet.drives.iter().enumerate() {
        for (f, file) in drive.files.iter().enumerate() {
            if file.kind == FileKind::Mcap {
                out.push((d, f));
            }
        }
    }
    out
}

/// Message counts per topic from the mcap crate's full-file reader.
fn full_read_counts(bytes: &[u8]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for message in mcap::MessageStream::new(bytes).expect("message stream") {
        let message = message.expect("message");
        *counts.entry(message.channel.topic.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn fleet_mcap_summaries_match_the_plan_in_one_read() {
    let fleet = small_fleet();
    let files = mcap_files(&fleet);
    assert!(files.len() >= 6, "{} logs", files.len());
    let mut compressions = std::collections::BTreeSet::new();
    for (d, f) in files {
        let drive = &fleet.drives[d];
        let file = &drive.files[f];
        let expected = drive
            .expected
            .iter()
            .find(|e| e.key == file.key)
            .expect("expected summary for every log");
        let bytes = file.render().expect("render");
        let src = Recording::new(bytes.clone());
        let summary = read_mcap_summary(&src).await.expect("mcap summary");

        let topics: Vec<(String, String, u64)> = summary
            .topics
            .iter()
            .map(|t| (t.topic.clone(), t.schema_name.clone(), t.message_count))
            .collect();
        assert_eq!(topics, expected.topics, "{}", file.key);
        assert!(summary.topics.iter().all(|t| t.message_encoding == "json"));
        assert_eq!(summary.message_count, expected.message_count);
        assert_eq!(summary.start_time_ns, expected.start_time_ns);
        assert_eq!(summary.end_time_ns, expected.end_time_ns);
        assert_eq!(summary.chunk_count, expected.chunk_count);
        assert!(summary.chunk_count >= 8, "{} chunks", summary.chunk_count);
        assert_eq!(summary.chunk_indexes.len() as u64, summary.chunk_count);
        assert!(summary
            .chunk_indexes
            .iter()
            .all(|c| c.compression == expected.compression.as_str()));
        compressions.insert(expected.compression.as_str());

        // Inside the drive.
        let start = drive
            .started_at
            .timestamp_nanos_opt()
            .expect("timestamp in range") as u64;
        let end = drive
            .ended_at
            .timestamp_nanos_opt()
            .expect("timestamp in range") as u64;
        assert!(start <= summary.start_time_ns && summary.end_time_ns <= end);

        // One suffix read when the summary fits the window.
        let size = bytes.len() as u64;
        assert!(size - summary.summary_start <= TAIL_READ);
        let reads = src.reads();
        assert_eq!(reads, vec![(size - TAIL_READ.min(size), size)]);
        assert_eq!(summary.bytes_read, TAIL_READ.min(size));

        // The mcap crate's full-file reader agrees.
        let counts = full_read_counts(&bytes);
        let from_summary: BTreeMap<String, u64> = summary
            .topics
            .iter()
            .map(|t| (t.topic.clone(), t.message_count))
            .collect();
        assert_eq!(counts, from_summary, "{}", file.key);
    }
    assert_eq!(
        compressions.len(),
        3,
        "zstd, lz4 and none all appear: {compressions:?}"
    );
}

/// An MCAP whose summary is over 256 KiB: one chunk per message, thousands of chunk indexes.
fn mcap_with_large_summary() -> Bytes {
    let mut w = mcap::WriteOptions::new()
        .compression(None)
        .chunk_size(Some(1))
        .create(Cursor::new(Vec::new()))
        .expect("mcap writer");
    let schema = w
        .add_schema("milepost.Tick", "jsonschema", b"{}")
        .expect("mcap writer");
    let a = w
        .add_channel(schema, "/tick/a", "json", &BTreeMap::new())
        .expect("mcap writer");
    let b = w
        .add_channel(0, "/tick/b", "json", &BTreeMap::new())
        .expect("mcap writer");
    for i in 0..4000u32 {
        let header = mcap::records::MessageHeader {
            channel_id: if i % 4 == 0 { b } else { a },
            sequence: i,
            log_time: 1_000_000_000 + u64::from(i) * 1000,
            publish_time: 1_000_000_000 + u64::from(i) * 1000,
        };
        w.write_to_known_channel(&header, b"{\"t\":1}")
            .expect("mcap writer");
    }
    w.finish().expect("mcap writer");
    Bytes::from(w.into_inner().into_inner())
}

#[tokio::test]
async fn a_summary_larger_than_the_window_takes_exactly_two_reads() {
    let bytes = mcap_with_large_summary();
    let size = bytes.len() as u64;
    let src = Recording::new(bytes.clone());
    let summary = read_mcap_summary(&src).await.expect("mcap summary");
    assert!(
        size - summary.summary_start > TAIL_READ,
        "summary too small"
    );
    assert_eq!(
        src.reads(),
        vec![
            (size - TAIL_READ, size),
            (summary.summary_start, size - TAIL_READ)
        ]
    );
    assert_eq!(summary.bytes_read, size - summary.summary_start);
    assert_eq!(summary.message_count, 4000);
    // One chunk per message, plus the first holding only the schema and channels.
    let whole = mcap::Summary::read(&bytes)
        .expect("whole-file summary")
        .expect("has a summary");
    assert_eq!(summary.chunk_count, 4001);
    assert_eq!(
        summary.chunk_count,
        u64::from(whole.stats.as_ref().expect("statistics").chunk_count)
    );
    assert_eq!(summary.chunk_indexes.len(), 4001);
    assert_eq!(summary.start_time_ns, 1_000_000_000);
    assert_eq!(summary.end_time_ns, 1_000_000_000 + 3999 * 1000);
    let topics: Vec<_> = summary
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.schema_name.as_str(), t.message_count))
        .collect();
    assert_eq!(
        topics,
        vec![("/tick/a", "milepost.Tick", 3000), ("/tick/b", "", 1000)]
    );
    // Chunk indexes as the mcap crate reads them from the whole file.
    assert_eq!(whole.chunk_indexes.len(), 4001);
    for (ours, theirs) in summary.chunk_indexes.iter().zip(&whole.chunk_indexes) {
        assert_eq!(ours.chunk_start_offset, theirs.chunk_start_offset);
        assert_eq!(ours.chunk_length, theirs.chunk_length);
        assert_eq!(ours.message_start_time_ns, theirs.message_start_time);
        assert_eq!(ours.uncompressed_size, theirs.uncompressed_size);
    }
    assert_eq!(full_read_counts(&bytes).values().sum::<u64>(), 4000);
}

fn metrics_runs(fleet: &Fleet) -> Vec<usize> {
    fleet
        .runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.metrics_rows.is_empty())
        .map(|(i, _)| i)
        .collect()
}

fn metrics_file(fleet: &Fleet, run: usize) -> &fleet::GeneratedFile {
    fleet.runs[run]
        .files
        .iter()
        .find(|f| f.kind == FileKind::MetricsParquet)
        .expect("metrics.parquet")
}

#[tokio::test]
async fn parquet_footer_and_run_metrics_of_generated_runs() {
    let fleet = small_fleet();
    let runs = metrics_runs(&fleet);
    assert!(!runs.is_empty());
    for r in runs {
        let run = &fleet.runs[r];
        let bytes = metrics_file(&fleet, r).render().expect("render");
        let src = Recording::new(bytes.clone());
        let footer = read_parquet_footer(&src).await.expect("parquet footer");
        assert_eq!(footer.row_count, run.metrics_rows.len() as i64);
        assert_eq!(footer.row_groups, run.metrics_rows.len().div_ceil(64));
        let columns: Vec<_> = footer
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.physical_type.as_str(),
                    c.logical_type.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            columns,
            vec![
                ("scenario_id", "BYTE_ARRAY", Some("STRING")),
                ("metric", "BYTE_ARRAY", Some("STRING")),
                ("value", "DOUBLE", None),
            ]
        );
        assert_eq!(footer.created_by.as_deref(), Some("milepost-fleet"));
        let size = bytes.len() as u64;
        assert_eq!(src.reads(), vec![(size - TAIL_READ.min(size), size)]);
        assert_eq!(footer.bytes_read, TAIL_READ.min(size));

        // Aggregates from the file equal those computed from the rows.
        let mut expected: BTreeMap<String, (u64, f64, f64, f64)> = BTreeMap::new();
        for (_, metric, value) in &run.metrics_rows {
            let e = expected.entry(metric.clone()).or_insert((
                0,
                0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ));
            e.0 += 1;
            e.1 += value;
            e.2 = e.2.min(*value);
            e.3 = e.3.max(*value);
        }
        let stats = run_metrics_from_parquet(bytes).expect("run metrics");
        assert_eq!(
            stats.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (metric, (count, sum, min, max)) in expected {
            let s = stats[&metric];
            assert_eq!(s.count, count, "{metric}");
            assert!((s.mean - sum / count as f64).abs() < 1e-9, "{metric}");
            assert_eq!((s.min, s.max), (min, max), "{metric}");
        }
        for metric in ["min_ttc_s", "collisions", "jerk_p95", "route_completion"] {
            assert!(stats.contains_key(metric), "{metric}");
        }
    }
}

/// A Parquet file with a footer over 256 KiB: many long-named columns.
fn parquet_with_large_footer(columns: usize) -> Bytes {
    use parquet::data_type::DoubleType;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let mut text = String::from("message wide {\n");
    for c in 0..columns {
        text.push_str(&format!(
            "  required double a_rather_long_metric_column_name_{c:05};\n"
        ));
    }
    text.push('}');
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(&text).expect("parquet schema"));
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props).expect("parquet writer");
    let mut rg = writer.next_row_group().expect("parquet writer");
    while let Some(mut col) = rg.next_column().expect("parquet writer") {
        col.typed::<DoubleType>()
            .write_batch(&[1.0, 2.0], None, None)
            .expect("parquet writer");
        col.close().expect("parquet writer");
    }
    rg.close().expect("parquet writer");
    Bytes::from(writer.into_inner().expect("parquet writer"))
}

#[tokio::test]
async fn a_parquet_footer_larger_than_the_window_takes_exactly_two_reads() {
    let bytes = parquet_with_large_footer(1500);
    let size = bytes.len() as u64;
    let footer_len = u64::from(u32::from_le_bytes(
        bytes[bytes.len() - 8..bytes.len() - 4]
            .try_into()
            .expect("slice length"),
    ));
    assert!(footer_len + 8 > TAIL_READ, "footer of {footer_len} bytes");
    let src = Recording::new(bytes.clone());
    let footer = read_parquet_footer(&src).await.expect("parquet footer");
    assert_eq!(
        src.reads(),
        vec![
            (size - TAIL_READ, size),
            (size - 8 - footer_len, size - TAIL_READ)
        ]
    );
    assert_eq!(footer.bytes_read, footer_len + 8);
    assert_eq!(footer.row_count, 2);
    assert_eq!(footer.columns.len(), 1500);
    assert_eq!(
        footer.columns[1499].name,
        "a_rather_long_metric_column_name_01499"
    );
}

// ---- malformed input ----------------------------------------------------------------------

fn kind_of<T: std::fmt::Debug>(result: Result<T, MetadataError>) -> MetadataErrorKind {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(err) => {
            let message = err.to_string();
            assert_eq!(
                message.chars().next().map(|c| c.is_lowercase()),
                Some(true),
                "{message}"
            );
            err.kind()
        }
    }
}

async fn mcap_err(bytes: Bytes) -> (MetadataErrorKind, String) {
    match read_mcap_summary(&bytes).await {
        Ok(summary) => panic!("expected an error, got {summary:?}"),
        Err(err) => (kind_of::<()>(Err(err.clone())), err.to_string()),
    }
}

fn first_log(fleet: &Fleet) -> Bytes {
    let (d, f) = mcap_files(fleet)[0];
    fleet.drives[d].files[f].render().expect("render")
}

fn footer_field(bytes: &[u8], field: usize) -> u64 {
    // summary_start at size-37+9, summary_offset_start after it.
    let at = bytes.len() - 37 + 9 + field * 8;
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice length"))
}

fn patch_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn zero_summary_crc(bytes: &mut [u8]) {
    let at = bytes.len() - 12;
    bytes[at..at + 4].copy_from_slice(&[0; 4]);
}

#[tokio::test]
async fn malformed_mcap_is_reported_never_a_panic() {
    // Empty and random.
    let (kind, _) = mcap_err(Bytes::new()).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for len in [10usize, 45, 1000, 300_000] {
        let mut random = vec![0u8; len];
        rng.fill(&mut random[..]);
        let (kind, message) = mcap_err(Bytes::from(random)).await;
        assert_eq!(kind, MetadataErrorKind::Malformed, "{message}");
    }

    let fleet = small_fleet();
    let good = first_log(&fleet);
    let summary_start = footer_field(&good, 0) as usize;

    // Cut in the summary.
    let cut = summary_start + (good.len() - 37 - summary_start) / 2;
    let (kind, message) = mcap_err(good.slice(..cut)).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    assert!(message.contains("end magic"), "{message}");

    // summary_start past the end.
    let mut bad = good.to_vec();
    let at = bad.len() - 37 + 9;
    patch_u64(&mut bad, at, good.len() as u64 + 100);
    let (kind, message) = mcap_err(Bytes::from(bad)).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    assert!(
        message.contains("outside the file") && message.contains("offset"),
        "{message}"
    );

    // summary_start pointing into the data section (CRC off): a data record in the summary.
    let mut bad = good.to_vec();
    patch_u64(&mut bad, at, 8);
    patch_u64(&mut bad, at + 8, 0);
    zero_summary_crc(&mut bad);
    let (kind, message) = mcap_err(Bytes::from(bad)).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    assert!(
        message.contains("unexpected header record at offset 8"),
        "{message}"
    );

    // Summary CRC mismatch: flip a byte inside the summary.
    let mut bad = good.to_vec();
    bad[summary_start + 20] ^= 0x55;
    let (kind, message) = mcap_err(Bytes::from(bad)).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    assert!(message.contains("crc"), "{message}");

    // A record length beyond the footer (CRC off).
    let mut bad = good.to_vec();
    zero_summary_crc(&mut bad);
    patch_u64(&mut bad, summary_start + 1, u64::MAX / 2);
    let (kind, message) = mcap_err(Bytes::from(bad)).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    assert!(
        message.contains(&format!("at offset {summary_start} claims")),
        "{message}"
    );

    // A string length beyond its record (CRC off): the schema record's name length.
    let mut bad = good.to_vec();
    zero_summary_crc(&mut bad);
    assert_eq!(bad[summary_start], 0x03, "the summary starts with a schema");
    let name_len_at = summary_start + 9 + 2;
    bad[name_len_at..name_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (kind, message) = mcap_err(Bytes::from(bad)).await;
    assert_eq!(kind, MetadataErrorKind::Malformed);
    assert!(message.contains("schema record at offset"), "{message}");

    // Bad end magic and bad footer opcode.
    let mut bad = good.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(mcap_err(Bytes::from(bad)).await.1.contains("end magic"));
    let mut bad = good.to_vec();
    bad[n - 37] = 0x05;
    assert!(mcap_err(Bytes::from(bad)).await.1.contains("footer record"));

    // A source answering short is a source error.
    let err = read_mcap_summary(&Short(good.clone()))
        .await
        .expect_err("an error");
    assert_eq!(err.kind(), MetadataErrorKind::Source);
}

fn mcap_written_with(options: mcap::WriteOptions) -> Bytes {
    let mut w = options
        .create(Cursor::new(Vec::new()))
        .expect("mcap writer");
    let channel = w
        .add_channel(0, "/can/vehicle_state", "json", &BTreeMap::new())
        .expect("mcap writer");
    for i in 0..50u32 {
        let header = mcap::records::MessageHeader {
            channel_id: channel,
            sequence: i,
            log_time: u64::from(i),
            publish_time: u64::from(i),
        };
        w.write_to_known_channel(&header, b"{}")
            .expect("mcap writer");
    }
    w.finish().expect("mcap writer");
    Bytes::from(w.into_inner().into_inner())
}

#[tokio::test]
async fn mcap_without_summary_is_no_summary_and_without_statistics_is_derived() {
    let no_summary = mcap_written_with(
        mcap::WriteOptions::new()
            .emit_statistics(false)
            .emit_summary_offsets(false)
            .emit_chunk_indexes(false)
            .emit_attachment_indexes(false)
            .emit_metadata_indexes(false)
            .repeat_channels(false)
            .repeat_schemas(false),
    );
    assert_eq!(footer_field(&no_summary, 0), 0);
    let src = Recording::new(no_summary);
    let err = read_mcap_summary(&src).await.expect_err("an error");
    assert_eq!(err.kind(), MetadataErrorKind::NoSummary, "{err}");
    assert_eq!(src.reads().len(), 1);

    // Without statistics, the chunk and message indexes describe it (one more read, for
    // the one chunk's message index).
    let no_stats = mcap_written_with(mcap::WriteOptions::new().emit_statistics(false));
    assert_ne!(footer_field(&no_stats, 0), 0);
    let src = Recording::new(no_stats);
    let summary = read_mcap_summary(&src).await.expect("described");
    assert_eq!(summary.message_count, 50);
    assert_eq!((summary.start_time_ns, summary.end_time_ns), (0, 49));
    assert_eq!(summary.topics.len(), 1);
    assert_eq!(summary.topics[0].message_count, 50);
    assert!(summary.derived.is_some());
    assert_eq!(src.reads().len(), 2);
}

#[tokio::test]
async fn malformed_parquet_is_reported_never_a_panic() {
    let fleet = small_fleet();
    let run = metrics_runs(&fleet)[0];
    let good = metrics_file(&fleet, run).render().expect("render");

    for bytes in [
        Bytes::new(),
        Bytes::from_static(b"PAR1"),
        Bytes::from(vec![7u8; 5000]),
        good.slice(..good.len() / 2),
        good.slice(..good.len() - 1),
        good.slice(good.len() / 2..),
    ] {
        let len = bytes.len();
        assert_eq!(
            kind_of(read_parquet_footer(&bytes).await),
            MetadataErrorKind::Malformed,
            "{len} bytes"
        );
        assert_eq!(
            kind_of(run_metrics_from_parquet(bytes)),
            MetadataErrorKind::Malformed,
            "{len} bytes"
        );
    }

    // A footer length beyond the file.
    let mut bad = good.to_vec();
    let n = bad.len();
    bad[n - 8..n - 4].copy_from_slice(&(n as u32).to_le_bytes());
    let err = read_parquet_footer(&Bytes::from(bad))
        .await
        .expect_err("an error");
    assert_eq!(err.kind(), MetadataErrorKind::Malformed);
    assert!(err.to_string().contains("footer length"), "{err}");

    // An encrypted footer.
    let mut bad = good.to_vec();
    bad[n - 4..].copy_from_slice(b"PARE");
    let err = read_parquet_footer(&Bytes::from(bad))
        .await
        .expect_err("an error");
    assert!(err.to_string().contains("encrypted"), "{err}");

    // A list length far beyond the footer: the first field of FileMetaData is the version
    // (i32), the second the schema list; make its header claim 2^31-1 elements.
    let footer_len =
        u32::from_le_bytes(good[n - 8..n - 4].try_into().expect("slice length")) as usize;
    let meta = n - 8 - footer_len;
    assert_eq!(good[meta], 0x15, "field 1, i32");
    let mut at = meta + 1;
    while good[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    assert_eq!(good[at], 0x19, "field 2, list");
    let mut bad = good[..at + 1].to_vec();
    bad.push(0xFC); // size 15 (varint follows), element type struct
    bad.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x07]);
    bad.extend_from_slice(&good[at + 2..meta + footer_len]);
    let new_len = (bad.len() - meta) as u32;
    bad.extend_from_slice(&new_len.to_le_bytes());
    bad.extend_from_slice(b"PAR1");
    let err = read_parquet_footer(&Bytes::from(bad))
        .await
        .expect_err("an error");
    assert_eq!(err.kind(), MetadataErrorKind::Malformed);
    assert!(err.to_string().contains("2147483647 elements"), "{err}");

    // Over the size limit.
    let huge = Bytes::from(vec![0u8; MAX_METRICS_BYTES as usize + 1]);
    assert_eq!(
        kind_of(run_metrics_from_parquet(huge)),
        MetadataErrorKind::TooLarge
    );
}

#[test]
fn metrics_without_a_value_column_name_it() {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message m { required binary scenario_id (STRING); required binary metric (STRING); }",
        )
        .expect("parquet schema"),
    );
    let mut writer = SerializedFileWriter::new(
        Vec::new(),
        schema,
        Arc::new(WriterProperties::builder().build()),
    )
    .expect("parquet writer");
    let mut rg = writer.next_row_group().expect("parquet writer");
    while let Some(mut col) = rg.next_column().expect("parquet writer") {
        col.typed::<ByteArrayType>()
            .write_batch(&[ByteArray::from("x")], None, None)
            .expect("parquet writer");
        col.close().expect("parquet writer");
    }
    rg.close().expect("parquet writer");
    let bytes = Bytes::from(writer.into_inner().expect("parquet writer"));
    let err = run_metrics_from_parquet(bytes).expect_err("an error");
    assert_eq!(err.kind(), MetadataErrorKind::Malformed);
    assert!(err.to_string().contains("missing column value"), "{err}");
}

/// What the panic hook does on this thread.
#[derive(Clone, Copy, PartialEq)]
enum Watch {
    /// Print as usual.
    Off,
    /// Count as a failure (and print).
    Strict,
    /// Count as caught inside the parquet crate's data decoding (and stay quiet).
    Caught,
}

thread_local! {
    static WATCH: Cell<Watch> = const { Cell::new(Watch::Off) };
}
static PANICS: AtomicUsize = AtomicUsize::new(0);
static CAUGHT: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

fn watch_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| match WATCH.with(Cell::get) {
            Watch::Off => default(info),
            Watch::Strict => {
                PANICS.fetch_add(1, Ordering::SeqCst);
                default(info);
            }
            Watch::Caught => {
                CAUGHT.fetch_add(1, Ordering::SeqCst);
            }
        }));
    });
}

/// Random truncations and corruptions (concentrated in the index at the end of the file),
/// with and without the MCAP summary CRC: always a result, never a panic. The MCAP summary and
/// Parquet footer readers must not panic even internally (the thrift pre-check exists for
/// that); `run_metrics_from_parquet` decodes data pages, where parquet 56 can panic on corrupt
/// dictionary indexes or bit widths: those panics are caught and become `Malformed`.
#[test]
fn random_truncations_and_corruptions_never_panic() {
    watch_panics();
    let fleet = small_fleet();
    let mcap = first_log(&fleet);
    let parquet = metrics_file(&fleet, metrics_runs(&fleet)[0])
        .render()
        .expect("render");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    WATCH.with(|w| w.set(Watch::Strict));
    for round in 0..600 {
        for (is_mcap, original) in [(true, &mcap), (false, &parquet)] {
            let mut bytes = original.to_vec();
            match round % 4 {
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    let from = rng.random_range(0..bytes.len());
                    bytes.drain(..from);
                }
                _ => {
                    let tail = bytes.len().min(8192);
                    for _ in 0..rng.random_range(1..=8) {
                        let at = bytes.len() - 1 - rng.random_range(0..tail);
                        bytes[at] = rng.random();
                    }
                    if is_mcap && round % 4 == 3 {
                        zero_summary_crc(&mut bytes);
                    }
                }
            }
            let bytes = Bytes::from(bytes);
            let result = if is_mcap {
                runtime
                    .block_on(read_mcap_summary(&bytes))
                    .map(|_| ())
                    .err()
            } else {
                let footer = runtime.block_on(read_parquet_footer(&bytes)).err();
                WATCH.with(|w| w.set(Watch::Caught));
                let metrics = run_metrics_from_parquet(bytes).err();
                WATCH.with(|w| w.set(Watch::Strict));
                footer.or(metrics)
            };
            if let Some(err) = result {
                assert_ne!(err.kind(), MetadataErrorKind::Source, "{err}");
            }
        }
    }
    WATCH.with(|w| w.set(Watch::Off));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panics during fuzzing");
    eprintln!(
        "{} panics caught inside parquet data decoding",
        CAUGHT.load(Ordering::SeqCst)
    );
}

// ---- the fleet ----------------------------------------------------------------------------

#[test]
fn the_fleet_is_deterministic() {
    let a = small_fleet();
    let b = small_fleet();
    assert_eq!(a, b);
    let mut rendered = 0;
    for (fa, fb) in a.files().zip(b.files()) {
        assert_eq!(fa.key, fb.key);
        let (ba, bb) = (fa.render().expect("render"), fb.render().expect("render"));
        assert!(ba == bb, "{} differs between renders", fa.key);
        if fa.kind != FileKind::Mcap && fa.kind != FileKind::MetricsParquet {
            assert_eq!(ba.len() as u64, fa.size_hint, "{}", fa.key);
        }
        rendered += 1;
    }
    assert_eq!(rendered, a.files().count());

    let other = fleet::generate(&FleetSpec::small(8));
    assert_ne!(
        a.drives.iter().map(|d| &d.id).collect::<Vec<_>>(),
        other.drives.iter().map(|d| &d.id).collect::<Vec<_>>()
    );
}

#[test]
fn the_fleet_follows_the_s3_layout_and_sidecar_contract() {
    let fleet = small_fleet();
    assert_eq!(fleet.drives.len(), 6);
    assert_eq!(fleet.runs.len(), 3);
    let drive_ids: Vec<&str> = fleet.drives.iter().map(|d| d.id.as_str()).collect();
    let mut unique = drive_ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), drive_ids.len());

    for drive in &fleet.drives {
        let date = drive.started_at.format("%Y-%m-%d").to_string();
        assert_eq!(
            drive.prefix,
            format!("drives/{date}/{}/{}/", drive.vehicle, drive.id)
        );
        let minutes = (drive.ended_at - drive.started_at).num_minutes();
        assert!((20..=90).contains(&minutes), "{minutes} minutes");
        assert!(drive.files.iter().all(|f| f.key.starts_with(&drive.prefix)));
        assert_eq!(drive.files[0].key, format!("{}drive.json", drive.prefix));
        let logs = drive
            .files
            .iter()
            .filter(|f| f.kind == FileKind::Mcap)
            .count();
        assert!((1..=3).contains(&logs));
        assert_eq!(logs, drive.expected.len());
        for f in &drive.files {
            let rest = &f.key[drive.prefix.len()..];
            match f.kind {
                FileKind::Sidecar => assert_eq!(rest, "drive.json"),
                FileKind::Mcap => assert!(rest.starts_with("logs/") && rest.ends_with(".mcap")),
                FileKind::Camera => {
                    assert!(rest.starts_with("camera/front/") && rest.ends_with(".jpg"))
                }
                FileKind::Lidar => assert!(rest.starts_with("lidar/") && rest.ends_with(".bin")),
                other => panic!("{other:?} in a drive"),
            }
        }

        // drive.json round-trips and carries the contract fields plus extras.
        let json: serde_json::Value =
            serde_json::from_slice(&drive.files[0].render().expect("render")).expect("json");
        assert_eq!(json, drive.sidecar);
        for field in [
            "drive_id",
            "vehicle",
            "city",
            "route",
            "started_at",
            "ended_at",
            "distance_km",
            "software_version",
            "weather",
            "tags",
            "events",
            "scenarios",
            "operator",
            "hardware_rev",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["drive_id"], drive.id.as_str());
        assert_eq!(
            json["started_at"].as_str().expect("string"),
            drive
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        for scenario in json["scenarios"].as_array().expect("array") {
            let start: chrono::DateTime<chrono::Utc> = scenario["start"]
                .as_str()
                .expect("string")
                .parse()
                .expect("rfc 3339 time");
            let end: chrono::DateTime<chrono::Utc> = scenario["end"]
                .as_str()
                .expect("string")
                .parse()
                .expect("rfc 3339 time");
            assert!(drive.started_at <= start && start < end && end <= drive.ended_at);
        }
        for event in json["events"].as_array().expect("array") {
            assert!(event["kind"].is_string() && event["label"].is_string());
        }
    }

    for run in &fleet.runs {
        assert_eq!(run.prefix, format!("runs/{}/", run.id));
        assert_eq!(run.files[0].key, format!("{}run.json", run.prefix));
        let json: serde_json::Value =
            serde_json::from_slice(&run.files[0].render().expect("render")).expect("json");
        assert_eq!(json, run.sidecar);
        for field in [
            "run_id",
            "kind",
            "pipeline",
            "commit",
            "status",
            "started_at",
            "finished_at",
            "inputs",
            "tags",
            "triggered_by",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert!(
            ["simulation", "benchmark", "sil"].contains(&json["kind"].as_str().expect("string"))
        );
        assert!(["running", "passed", "failed", "error"]
            .contains(&json["status"].as_str().expect("string")));
        for input in json["inputs"].as_array().expect("array") {
            assert!(
                drive_ids.contains(&input.as_str().expect("string")),
                "{input}"
            );
        }
        for f in &run.files[1..] {
            let rest = &f.key[run.prefix.len()..];
            match f.kind {
                FileKind::MetricsParquet => assert_eq!(rest, "metrics.parquet"),
                FileKind::RunOutput => assert!(rest.starts_with("outputs/")),
                other => panic!("{other:?} in a run"),
            }
        }
    }

    assert!(LogCompression::ALL.len() == 3);
    let demo = fleet::generate(&FleetSpec::demo());
    let total = demo.approx_bytes();
    assert!(
        (150 << 20..600 << 20).contains(&total),
        "demo fleet of {} MiB",
        total >> 20
    );
    let cities: std::collections::BTreeSet<&str> =
        demo.drives.iter().map(|d| d.city.as_str()).collect();
    assert!(cities.len() >= 5, "{cities:?}");
}
