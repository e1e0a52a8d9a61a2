use std::collections::BTreeMap;
use std::io::Cursor;

use super::*;

const TOPICS: [&str; 3] = ["/camera", "/lidar", "/pose"];

/// (log time, topic, payload) of a message.
type Msg = (u64, String, Vec<u8>);

/// A source log: 3 topics, 300 messages 10 ms apart from t=1_000_000_000, a chunk every 20
/// messages, compressed with `compression`. Returns the bytes and the messages as
/// (log time, topic, payload).
fn source(compression: Option<Compression>, use_chunks: bool) -> (Vec<u8>, Vec<Msg>) {
    let mut w = WriteOptions::new()
        .compression(compression)
        .use_chunks(use_chunks)
        .chunk_size(None)
        .create(Cursor::new(Vec::new()))
        .expect("writer");
    let mut channels = Vec::new();
    for topic in TOPICS {
        let schema = w
            .add_schema(&format!("s{topic}"), "jsonschema", b"{}")
            .expect("schema");
        channels.push(
            w.add_channel(schema, topic, "json", &BTreeMap::new())
                .expect("channel"),
        );
    }
    let mut messages = Vec::new();
    for i in 0..300u64 {
        let t = 1_000_000_000 + i * 10_000_000;
        let c = (i % 3) as usize;
        let payload = format!(
            "{{\"i\":{i},\"pad\":\"{}\"}}",
            "x".repeat((i % 50) as usize)
        )
        .into_bytes();
        w.write_to_known_channel(
            &MessageHeader {
                channel_id: channels[c],
                sequence: i as u32,
                log_time: t,
                publish_time: t,
            },
            &payload,
        )
        .expect("message");
        messages.push((t, TOPICS[c].to_owned(), payload));
        if use_chunks && i % 20 == 19 {
            w.flush().expect("flush");
        }
    }
    w.finish().expect("finish");
    (w.into_inner().into_inner(), messages)
}

fn summary_of(bytes: &[u8]) -> Result<SourceSummary, TrimError> {
    let size = bytes.len() as u64;
    let footer = parse_footer(&bytes[bytes.len() - FOOTER_READ as usize..], size)?;
    parse_summary(&bytes[footer.summary_start as usize..], &footer, size)
}

/// Trims `bytes` as the cacher does: footer, summary, plan, then each planned chunk.
fn trim(
    bytes: &[u8],
    window: Window,
    topics: &[&str],
) -> Result<(Vec<u8>, TrimPlan, TrimStats), TrimError> {
    let summary = summary_of(bytes)?;
    let topics: BTreeSet<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let plan = plan(&summary, window, &topics)?;
    let mut trimmer = Trimmer::new(Cursor::new(Vec::new()), &summary, plan.clone())?;
    for chunk in &plan.chunks {
        let start = chunk.chunk_start_offset as usize;
        trimmer.add_chunk(&bytes[start..start + chunk.chunk_length as usize])?;
    }
    let (out, stats) = trimmer.finish()?;
    Ok((out.into_inner(), plan, stats))
}

/// Messages of an mcap file as (log time, topic, payload), read by the crate's own reader.
fn messages_of(bytes: &[u8]) -> Vec<Msg> {
    ::mcap::MessageStream::new(bytes)
        .expect("stream")
        .map(|m| {
            let m = m.expect("message");
            (m.log_time, m.channel.topic.clone(), m.data.into_owned())
        })
        .collect()
}

fn expected(all: &[Msg], window: Window, topics: &[&str]) -> Vec<Msg> {
    all.iter()
        .filter(|(t, topic, _)| {
            window.contains(*t) && (topics.is_empty() || topics.contains(&topic.as_str()))
        })
        .cloned()
        .collect()
}

fn check_summary(out: &[u8], want: &[Msg]) {
    let summary = ::mcap::Summary::read(out)
        .expect("summary readable")
        .expect("summary present");
    let stats = summary.stats.expect("statistics");
    assert_eq!(stats.message_count, want.len() as u64);
    if let (Some(first), Some(last)) = (want.first(), want.last()) {
        assert_eq!(stats.message_start_time, first.0);
        assert_eq!(stats.message_end_time, last.0);
        assert!(!summary.chunk_indexes.is_empty());
    } else {
        assert!(summary.chunk_indexes.is_empty());
    }
    let mut per_channel: BTreeMap<u16, u64> = BTreeMap::new();
    for (_, topic, _) in want {
        let id = summary
            .channels
            .values()
            .find(|c| &c.topic == topic)
            .expect("channel in summary")
            .id;
        *per_channel.entry(id).or_default() += 1;
    }
    assert_eq!(stats.channel_message_counts, per_channel);
}

#[test]
fn trims_to_the_window_and_topics_for_every_compression() {
    for compression in [Some(Compression::Zstd), Some(Compression::Lz4), None] {
        let (bytes, all) = source(compression, true);
        // Messages 95..=204: the window cuts chunks 4 and 10 in the middle.
        let window = Window {
            start_ns: 1_000_000_000 + 95 * 10_000_000,
            end_ns: 1_000_000_000 + 204 * 10_000_000,
        };
        for topics in [&[][..], &["/lidar"][..], &["/camera", "/pose"][..]] {
            let (out, plan, stats) = trim(&bytes, window, topics).expect("trim");
            let want = expected(&all, window, topics);
            assert_eq!(messages_of(&out), want, "{compression:?} {topics:?}");
            assert_eq!(stats.messages, want.len() as u64);
            check_summary(&out, &want);
            // Chunks 4..=10 overlap; nothing else is read.
            assert_eq!(plan.chunks.len(), 7, "{compression:?}");
            assert!(plan.chunk_bytes() < bytes.len() as u64 / 2);
            let summary = ::mcap::Summary::read(&out).expect("ok").expect("some");
            let expected_compression = match compression {
                Some(Compression::Zstd) => "zstd",
                Some(Compression::Lz4) => "lz4",
                None => "",
            };
            assert!(summary
                .chunk_indexes
                .iter()
                .all(|c| c.compression == expected_compression));
        }
    }
}

#[test]
fn same_input_gives_the_same_bytes() {
    let (bytes, _) = source(Some(Compression::Zstd), true);
    let window = Window {
        start_ns: 1_500_000_000,
        end_ns: 2_000_000_000,
    };
    let a = trim(&bytes, window, &[]).expect("trim").0;
    let b = trim(&bytes, window, &[]).expect("trim").0;
    assert_eq!(a, b);
}

#[test]
fn windows_outside_the_log_give_empty_valid_files() {
    let (bytes, _) = source(Some(Compression::Lz4), true);
    for window in [
        Window {
            start_ns: 0,
            end_ns: 999_999_999,
        },
        Window {
            start_ns: 10_000_000_000,
            end_ns: 20_000_000_000,
        },
    ] {
        let (out, plan, stats) = trim(&bytes, window, &[]).expect("trim");
        assert!(plan.chunks.is_empty(), "no chunk is read");
        assert_eq!(stats.messages, 0);
        assert!(messages_of(&out).is_empty());
        check_summary(&out, &[]);
    }
}

#[test]
fn a_window_of_one_instant_keeps_one_message() {
    let (bytes, all) = source(None, true);
    let t = 1_000_000_000 + 150 * 10_000_000;
    let window = Window {
        start_ns: t,
        end_ns: t,
    };
    let (out, plan, _) = trim(&bytes, window, &[]).expect("trim");
    let got = messages_of(&out);
    assert_eq!(got.len(), 1);
    assert_eq!(got, expected(&all, window, &[]));
    assert_eq!(plan.chunks.len(), 1);
    check_summary(&out, &got);
}

#[test]
fn chunks_without_a_chosen_channel_are_not_read() {
    let (bytes, _) = source(Some(Compression::Zstd), true);
    let summary = summary_of(&bytes).expect("summary");
    let window = Window {
        start_ns: 0,
        end_ns: u64::MAX,
    };
    let none: BTreeSet<String> = ["/nowhere".to_owned()].into();
    assert!(plan(&summary, window, &none)
        .expect("plan")
        .chunks
        .is_empty());
    let all = plan(&summary, window, &BTreeSet::new()).expect("plan");
    assert_eq!(all.chunks.len(), 15);
}

#[test]
fn logs_without_chunk_index_or_summary_are_not_indexed() {
    let (bytes, _) = source(None, false);
    let summary = summary_of(&bytes).expect("summary");
    let err = plan(
        &summary,
        Window {
            start_ns: 0,
            end_ns: u64::MAX,
        },
        &BTreeSet::new(),
    )
    .expect_err("no chunk index");
    assert_eq!(err.kind(), TrimErrorKind::NotIndexed);

    let mut w = WriteOptions::new()
        .emit_summary_records(false)
        .emit_summary_offsets(false)
        .emit_statistics(false)
        .emit_chunk_indexes(false)
        .create(Cursor::new(Vec::new()))
        .expect("writer");
    w.finish().expect("finish");
    let bare = w.into_inner().into_inner();
    match summary_of(&bare) {
        Err(err) => assert_eq!(err.kind(), TrimErrorKind::NotIndexed, "{err}"),
        Ok(summary) => {
            let err = plan(
                &summary,
                Window {
                    start_ns: 0,
                    end_ns: 1,
                },
                &BTreeSet::new(),
            )
            .expect_err("nothing to plan from");
            assert_eq!(err.kind(), TrimErrorKind::NotIndexed, "{err}");
        }
    }
}

#[test]
fn broken_sources_are_malformed_not_panics() {
    let (bytes, _) = source(Some(Compression::Zstd), true);
    let size = bytes.len() as u64;
    let tail = &bytes[bytes.len() - FOOTER_READ as usize..];
    // Bad magic.
    let mut bad = tail.to_vec();
    bad[FOOTER_READ as usize - 1] ^= 1;
    assert_eq!(
        parse_footer(&bad, size).expect_err("magic").kind(),
        TrimErrorKind::Malformed
    );
    // A flipped byte in the summary fails its crc.
    let footer = parse_footer(tail, size).expect("footer");
    let mut region = bytes[footer.summary_start as usize..].to_vec();
    region[3] ^= 0x40;
    assert_eq!(
        parse_summary(&region, &footer, size)
            .expect_err("crc")
            .kind(),
        TrimErrorKind::Malformed
    );
    // A chunk that is not where the index says.
    let summary = summary_of(&bytes).expect("summary");
    let plan = plan(
        &summary,
        Window {
            start_ns: 0,
            end_ns: u64::MAX,
        },
        &BTreeSet::new(),
    )
    .expect("plan");
    let mut trimmer = Trimmer::new(Cursor::new(Vec::new()), &summary, plan.clone()).expect("new");
    let c = &plan.chunks[1];
    let start = c.chunk_start_offset as usize + 1;
    let err = trimmer
        .add_chunk(&bytes[start..start + c.chunk_length as usize])
        .expect_err("shifted");
    assert_eq!(err.kind(), TrimErrorKind::Malformed);
    // A truncated file.
    assert!(parse_footer(&bytes[..20], 20).is_err());
}
