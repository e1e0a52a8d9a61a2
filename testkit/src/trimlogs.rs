//! Fixtures for scenario trimming: synthetic MCAP logs written straight to disk (never held in
//! memory whole), a drive sidecar naming scenarios over them, and the independent check of a
//! trimmed file with the official `mcap` Python reader (`testkit/scripts/check_trim.py`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use mcap::records::MessageHeader;
use mcap::{Compression, WriteOptions};
use serde_json::{json, Value};

/// A topic of a synthetic log: messages every `period_ms` from `offset_ms`, of `size` bytes.
#[derive(Clone, Copy, Debug)]
pub struct TopicSpec {
    pub topic: &'static str,
    pub period_ms: u64,
    pub offset_ms: u64,
    pub size: usize,
}

/// The topics of the test logs: a camera, a lidar and a pose stream, interleaved so that no two
/// messages share a log time.
pub const TOPICS: [TopicSpec; 3] = [
    TopicSpec {
        topic: "/camera/front",
        period_ms: 100,
        offset_ms: 0,
        size: 3000,
    },
    TopicSpec {
        topic: "/lidar/points",
        period_ms: 100,
        offset_ms: 33,
        size: 2000,
    },
    TopicSpec {
        topic: "/localization/pose",
        period_ms: 20,
        offset_ms: 7,
        size: 120,
    },
];

/// One synthetic log.
#[derive(Clone, Debug)]
pub struct LogSpec {
    /// Messages from `start` for `duration_s` seconds.
    pub start: DateTime<Utc>,
    pub duration_s: u64,
    pub topics: Vec<TopicSpec>,
    /// `None`: uncompressed chunks.
    pub compression: Option<Compression>,
    /// Chunks end after about this many bytes of messages.
    pub chunk_bytes: u64,
    /// `false`: an unchunked log (no chunk index in its summary).
    pub chunked: bool,
}

fn nanos(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_nanos_opt().expect("in range")).expect("after 1970")
}

/// Pseudo-random bytes that compress a little (like sensor data), from a seed.
fn payload(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|i| {
            if i % 4 == 3 {
                return 0;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes the log to `path`; returns how many messages it holds.
pub fn write_log(spec: &LogSpec, path: &Path) -> u64 {
    let file = BufWriter::new(File::create(path).expect("create log"));
    let mut w = WriteOptions::new()
        .compression(spec.compression)
        .use_chunks(spec.chunked)
        .chunk_size(Some(spec.chunk_bytes))
        .profile("")
        .create(file)
        .expect("mcap writer");
    let mut channels = Vec::new();
    for t in &spec.topics {
        let schema = w
            .add_schema(
                &format!("test{}", t.topic.replace('/', ".")),
                "jsonschema",
                b"{}",
            )
            .expect("schema");
        let meta = BTreeMap::from([("frame_id".to_owned(), "base".to_owned())]);
        channels.push(
            w.add_channel(schema, t.topic, "cdr", &meta)
                .expect("channel"),
        );
    }
    let start = nanos(spec.start);
    let end_ms = spec.duration_s * 1000;
    // Merge the topics' schedules in log-time order.
    let mut next: Vec<u64> = spec.topics.iter().map(|t| t.offset_ms).collect();
    let mut sequences = vec![0u32; spec.topics.len()];
    let mut count = 0;
    while let Some((i, &at_ms)) = next.iter().enumerate().min_by_key(|(_, at)| **at) {
        if at_ms >= end_ms {
            break;
        }
        let t = spec.topics[i];
        sequences[i] += 1;
        let log_time = start + at_ms * 1_000_000;
        w.write_to_known_channel(
            &MessageHeader {
                channel_id: channels[i],
                sequence: sequences[i],
                log_time,
                publish_time: log_time - 1_000,
            },
            &payload(log_time ^ i as u64, t.size),
        )
        .expect("message");
        count += 1;
        next[i] += t.period_ms;
    }
    w.finish().expect("finish");
    count
}

/// The log time (ns) of the `n`-th message of topic `t` of a log starting at `start`.
pub fn message_time(start: DateTime<Utc>, t: &TopicSpec, n: u64) -> u64 {
    nanos(start) + (t.offset_ms + n * t.period_ms) * 1_000_000
}

/// A scenario of a drive sidecar.
#[derive(Clone, Debug)]
pub struct ScenarioSpec {
    pub label: &'static str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// A `drive.json` sidecar.
pub fn drive_sidecar(
    id: &str,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    scenarios: &[ScenarioSpec],
) -> Value {
    json!({
        "drive_id": id,
        "vehicle": "tv-1",
        "city": "testville",
        "route": "loop",
        "started_at": rfc3339(started),
        "ended_at": rfc3339(ended),
        "distance_km": 1.0,
        "software_version": "av-test",
        "weather": "clear",
        "tags": ["trim-test"],
        "events": [],
        "scenarios": scenarios.iter().map(|s| json!({
            "label": s.label,
            "start": rfc3339(s.start),
            "end": rfc3339(s.end),
            "tags": [],
        })).collect::<Vec<_>>(),
    })
}

/// The checker script.
pub fn check_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_trim.py")
}

/// Runs the independent check of `trimmed` against `source` for the window and topics; returns
/// its report (messages, bytes, topics, chunks, statistics). Panics with the reason when a
/// check fails or the reader is missing.
pub fn python_check(
    source: &Path,
    trimmed: &Path,
    start_ns: u64,
    end_ns: u64,
    topics: &[&str],
) -> Value {
    let output = std::process::Command::new("python3")
        .arg(check_script())
        .arg(source)
        .arg(trimmed)
        .arg(start_ns.to_string())
        .arg(end_ns.to_string())
        .arg(serde_json::to_string(topics).expect("json"))
        .output()
        .expect("python3 runs (install the reader: python3 -m pip install mcap)");
    assert!(
        output.status.success(),
        "the mcap python reader refused {}: {}",
        trimmed.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json report")
}
