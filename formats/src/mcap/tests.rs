use std::collections::BTreeMap;
use std::io::Cursor;

use ::mcap::records::MessageHeader;
use ::mcap::{Compression, WriteOptions};

use super::*;

/// A log written by the `mcap` crate: 2 schemas, 3 channels (one schemaless), 90 messages,
/// a chunk every 10.
fn written(options: WriteOptions) -> Vec<u8> {
    let mut w = options
        .chunk_size(None)
        .create(Cursor::new(Vec::new()))
        .expect("writer");
    let a = w.add_schema("pkg/A", "jsonschema", b"{}").expect("schema");
    let b = w
        .add_schema("pkg/B", "ros2msg", b"int32 x")
        .expect("schema");
    let meta: BTreeMap<String, String> = [("k".to_owned(), "v".to_owned())].into();
    let channels = [
        w.add_channel(a, "/a", "json", &meta).expect("channel"),
        w.add_channel(b, "/b", "cdr", &BTreeMap::new())
            .expect("channel"),
        w.add_channel(0, "/raw", "", &BTreeMap::new())
            .expect("channel"),
    ];
    for i in 0..90u64 {
        let header = MessageHeader {
            channel_id: channels[(i % 3) as usize],
            sequence: i as u32,
            log_time: 1_000 + i,
            publish_time: 1_000 + i,
        };
        w.write_to_known_channel(&header, format!("{i}").as_bytes())
            .expect("message");
        if i % 10 == 9 {
            w.flush().expect("flush");
        }
    }
    w.finish().expect("finish");
    w.into_inner().into_inner()
}

fn good() -> Vec<u8> {
    written(WriteOptions::new().compression(Some(Compression::Zstd)))
}

fn tail(bytes: &[u8]) -> &[u8] {
    &bytes[bytes.len() - FOOTER_READ as usize..]
}

/// Footer and summary of a whole file in memory.
fn summary_of(bytes: &[u8]) -> Result<Summary, McapError> {
    let size = bytes.len() as u64;
    let footer = parse_footer(tail(bytes), size)?;
    parse_summary(&bytes[footer.summary_start as usize..], &footer, size)
}

/// A synthetic file: magic, `data`, `summary` (raw records), footer (no CRC), magic.
fn synthetic(data: &[u8], summary: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(data);
    let summary_start = out.len() as u64;
    out.extend_from_slice(summary);
    out.push(op::FOOTER);
    out.extend_from_slice(&FOOTER_BODY_LEN.to_le_bytes());
    out.extend_from_slice(&summary_start.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

fn record(opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode];
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

#[test]
fn a_good_summary_is_read_whole() {
    let bytes = good();
    let summary = summary_of(&bytes).expect("summary");
    // The crate's own reader, over the whole file, agrees.
    let whole = ::mcap::Summary::read(&bytes)
        .expect("readable")
        .expect("present");
    assert_eq!(summary.chunk_indexes, whole.chunk_indexes);
    assert_eq!(summary.statistics, whole.stats);
    assert_eq!(summary.chunk_indexes.len(), 9);
    assert!(summary
        .chunk_indexes
        .iter()
        .all(|c| c.message_index_offsets.len() == 3 && c.compression == "zstd"));
    let stats = summary.statistics.as_ref().expect("statistics");
    assert_eq!(stats.message_count, 90);
    assert_eq!(
        (stats.message_start_time, stats.message_end_time),
        (1_000, 1_089)
    );

    let names: Vec<&str> = summary.schemas.values().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pkg/A", "pkg/B"]);
    let b = summary.schemas.values().nth(1).expect("schema B");
    assert_eq!(
        (b.encoding.as_str(), &b.data[..]),
        ("ros2msg", &b"int32 x"[..])
    );
    let topics: Vec<(&str, u16)> = summary
        .channels
        .values()
        .map(|c| (c.topic.as_str(), c.schema_id))
        .collect();
    assert_eq!(topics.len(), 3);
    assert!(topics.contains(&("/raw", 0)));
    let a = summary.channels.values().find(|c| c.topic == "/a");
    assert_eq!(
        a.expect("/a").metadata.get("k").map(String::as_str),
        Some("v")
    );

    let footer = parse_footer(tail(&bytes), bytes.len() as u64).expect("footer");
    assert_eq!(summary.summary_start, footer.summary_start);
    assert_ne!(summary.summary_offset_start, 0);
    assert_eq!(summary.counts.schemas, 2);
    assert_eq!(summary.counts.channels, 3);
    assert_eq!(summary.counts.chunk_indexes, 9);
    assert_eq!(summary.counts.statistics, 1);
    assert!(summary.counts.summary_offsets >= 4);
}

#[test]
fn the_whole_file_as_tail_checks_the_leading_magic_too() {
    let bytes = good();
    let size = bytes.len() as u64;
    parse_footer(&bytes, size).expect("whole file");
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert_eq!(
        parse_footer(&bad, size).expect_err("leading magic"),
        McapError::BadMagic {
            offset: 0,
            end: false
        }
    );
    // Only the tail: the leading magic is not there to check.
    parse_footer(tail(&bad), size).expect("tail only");
}

#[test]
fn bad_magic_and_footer_are_refused() {
    let bytes = good();
    let size = bytes.len() as u64;
    let mut bad = bytes.clone();
    bad[bytes.len() - 1] ^= 1;
    let err = parse_footer(tail(&bad), size).expect_err("end magic");
    assert_eq!(
        err,
        McapError::BadMagic {
            offset: size - 8,
            end: true
        }
    );
    assert!(err.to_string().contains("end magic"), "{err}");

    let mut bad = bytes.clone();
    bad[bytes.len() - FOOTER_READ as usize] = op::MESSAGE;
    let err = parse_footer(tail(&bad), size).expect_err("not a footer");
    assert!(matches!(
        err,
        McapError::NotFooter {
            found: Opcode(op::MESSAGE),
            ..
        }
    ));
    assert!(err.to_string().contains("footer record"), "{err}");

    let mut bad = bytes.clone();
    bad[bytes.len() - FOOTER_READ as usize + 1] = 21;
    let err = parse_footer(tail(&bad), size).expect_err("footer length");
    assert!(
        matches!(err, McapError::FooterLength { length: 21, .. }),
        "{err}"
    );

    // summary_start past the footer, summary offsets before the summary.
    let at = bytes.len() - FOOTER_READ as usize + 9;
    let mut bad = bytes.clone();
    bad[at..at + 8].copy_from_slice(&(size + 100).to_le_bytes());
    let err = parse_footer(tail(&bad), size).expect_err("outside");
    assert!(err.to_string().contains("outside the file"), "{err}");
    let mut bad = bytes.clone();
    bad[at + 8..at + 16].copy_from_slice(&8u64.to_le_bytes());
    let err = parse_footer(tail(&bad), size).expect_err("offsets outside");
    assert!(
        matches!(
            err,
            McapError::SectionOutside {
                section: "summary offset section",
                ..
            }
        ),
        "{err}"
    );

    // Too short a file, too short a tail, random bytes.
    assert_eq!(
        parse_footer(&bytes[..20], 20),
        Err(McapError::TooShort { size: 20 })
    );
    assert!(matches!(
        parse_footer(&tail(&bytes)[1..], size),
        Err(McapError::WrongInput { got: 36, .. })
    ));
    assert!(parse_footer(&[0x5a; 64], 64).is_err());
}

#[test]
fn a_missing_summary_is_no_summary() {
    let bare = written(
        WriteOptions::new()
            .emit_summary_records(false)
            .emit_summary_offsets(false)
            .emit_statistics(false)
            .emit_chunk_indexes(false)
            .emit_attachment_indexes(false)
            .emit_metadata_indexes(false),
    );
    let err = parse_footer(tail(&bare), bare.len() as u64).expect_err("no summary");
    assert!(err.is_no_summary(), "{err}");
    assert_eq!(err.to_string(), "the footer records no summary section");
    // Anything else is not.
    assert!(!McapError::TooShort { size: 1 }.is_no_summary());

    // A summary without statistics is a summary: `statistics` is None.
    let no_stats = written(WriteOptions::new().emit_statistics(false));
    let summary = summary_of(&no_stats).expect("summary");
    assert_eq!(summary.statistics, None);
    assert_eq!(summary.chunk_indexes.len(), 9);
}

#[test]
fn a_summary_crc_mismatch_is_refused() {
    let mut bytes = good();
    let size = bytes.len() as u64;
    let footer = parse_footer(tail(&bytes), size).expect("footer");
    bytes[footer.summary_start as usize + 20] ^= 0x55;
    let err =
        parse_summary(&bytes[footer.summary_start as usize..], &footer, size).expect_err("crc");
    assert!(matches!(err, McapError::CrcMismatch { .. }), "{err}");
    assert!(err.to_string().contains("crc"), "{err}");
}

#[test]
fn a_truncated_record_is_refused() {
    // Three bytes: not even an opcode and a length.
    let bytes = synthetic(&[], &[op::SCHEMA, 1, 2]);
    assert_eq!(
        summary_of(&bytes),
        Err(McapError::TruncatedHeader { offset: 8, left: 3 })
    );
    // A channel record whose body stops after its ids.
    let mut body = 1u16.to_le_bytes().to_vec();
    body.extend_from_slice(&0u16.to_le_bytes());
    let bytes = synthetic(&[], &record(op::CHANNEL, &body));
    let err = summary_of(&bytes).expect_err("truncated channel");
    assert!(
        matches!(
            err,
            McapError::BadRecord {
                record: Opcode(op::CHANNEL),
                offset: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("channel record at offset 8: topic"),
        "{err}"
    );
}

#[test]
fn a_bad_length_is_refused() {
    // A record claiming more bytes than remain before the footer.
    let mut summary = record(op::STATISTICS, &[0; 10]);
    summary[1..9].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let bytes = synthetic(&[], &summary);
    let err = summary_of(&bytes).expect_err("overlong");
    assert_eq!(
        err,
        McapError::Overlong {
            record: Opcode(op::STATISTICS),
            offset: 8,
            claims: u64::MAX / 2,
            available: 10
        }
    );
    assert!(err.to_string().contains("at offset 8 claims"), "{err}");

    // A schema whose name claims 4 GiB inside a 20-byte record.
    let mut body = 1u16.to_le_bytes().to_vec();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&[0; 14]);
    let bytes = synthetic(&[], &record(op::SCHEMA, &body));
    let err = summary_of(&bytes).expect_err("string length");
    assert!(
        err.to_string()
            .contains("schema record at offset 8: name length"),
        "{err}"
    );
}

#[test]
fn data_records_and_stray_chunk_indexes_are_refused() {
    let bytes = synthetic(&[], &record(op::MESSAGE, &[0; 22]));
    let err = summary_of(&bytes).expect_err("message in the summary");
    assert!(
        err.to_string()
            .contains("unexpected message record at offset 8"),
        "{err}"
    );

    // A chunk index pointing past the data section (which is 4 bytes here).
    let mut body = Vec::new();
    for v in [0u64, 1, 8, 100] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&0u32.to_le_bytes()); // message index offsets
    body.extend_from_slice(&0u64.to_le_bytes()); // message index length
    body.extend_from_slice(&string(""));
    body.extend_from_slice(&[0; 16]); // compressed and uncompressed sizes
    let bytes = synthetic(&[0; 4], &record(op::CHUNK_INDEX, &body));
    let err = summary_of(&bytes).expect_err("chunk outside");
    assert!(
        matches!(
            err,
            McapError::BadRecord {
                record: Opcode(op::CHUNK_INDEX),
                offset: 12,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("outside the data section"),
        "{err}"
    );

    // Unknown and private records are skipped and counted.
    let bytes = synthetic(&[], &record(0x80, b"private"));
    let summary = summary_of(&bytes).expect("summary");
    assert_eq!(summary.counts.other, 1);
    assert!(summary.channels.is_empty() && summary.chunk_indexes.is_empty());
}

#[test]
fn a_region_of_the_wrong_length_is_refused() {
    let bytes = good();
    let size = bytes.len() as u64;
    let footer = parse_footer(tail(&bytes), size).expect("footer");
    let region = &bytes[footer.summary_start as usize + 1..];
    assert!(matches!(
        parse_summary(region, &footer, size),
        Err(McapError::WrongInput { .. })
    ));
}

#[test]
fn truncations_and_corruptions_never_panic() {
    let bytes = good();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..2000 {
        let mut bad = bytes.clone();
        if round % 2 == 0 {
            bad.truncate((next() % bytes.len() as u64) as usize);
        } else {
            let zero_crc = bad.len() - 12;
            bad[zero_crc..zero_crc + 4].fill(0);
            for _ in 0..1 + next() % 4 {
                let at = bad.len() - 1 - (next() % 2048) as usize;
                bad[at] = next() as u8;
            }
        }
        if bad.len() >= FOOTER_READ as usize {
            let _ = summary_of(&bad);
        }
    }
}

#[test]
fn message_indexes_count_each_chunks_messages_per_channel() {
    let bytes = good();
    let summary = summary_of(&bytes).expect("summary");
    let mut totals: BTreeMap<u16, u64> = BTreeMap::new();
    for chunk in &summary.chunk_indexes {
        let start = chunk.chunk_start_offset + chunk.chunk_length;
        let end = start + chunk.message_index_length;
        let counts =
            count_message_indexes(&bytes[start as usize..end as usize], start).expect("counts");
        assert_eq!(counts.values().sum::<u64>(), 10, "ten messages a chunk");
        for (channel, n) in counts {
            *totals.entry(channel).or_insert(0) += n;
        }
    }
    assert_eq!(
        totals.values().copied().collect::<Vec<_>>(),
        vec![30, 30, 30]
    );

    // Truncated anywhere or with any byte changed: an error or other counts, never a panic.
    let chunk = &summary.chunk_indexes[0];
    let start = (chunk.chunk_start_offset + chunk.chunk_length) as usize;
    let region = &bytes[start..start + chunk.message_index_length as usize];
    for cut in 0..region.len() {
        let _ = count_message_indexes(&region[..cut], start as u64);
    }
    for at in 0..region.len() {
        for value in [0u8, 1, 0x7f, 0xff] {
            let mut bad = region.to_vec();
            bad[at] = value;
            let _ = count_message_indexes(&bad, start as u64);
        }
    }
    let err = count_message_indexes(&record(0x05, b"xx"), 100).expect_err("a message record");
    assert!(
        err.to_string().contains("only message index records"),
        "{err}"
    );
    let err = count_message_indexes(&record(0x07, &[1, 0, 20, 0, 0, 0]), 100)
        .expect_err("entries beyond the record");
    assert!(err.to_string().contains("16-byte entries"), "{err}");
}
