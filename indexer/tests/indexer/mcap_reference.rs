//! MCAP files written by an independent writer (the official Python `mcap` package) without a
//! statistics record: Milepost describes them from their chunk and message indexes, and the
//! description equals what the Python reader counts by reading every message. Files whose
//! counts cannot be read that way are reported as such, never given invented numbers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use milepost_indexer::metadata::{read_mcap_summary, MetadataErrorKind};
use serde_json::Value;

/// Writes the cases into `dir` and returns the Python reader's description of each.
fn python_reference(dir: &Path) -> Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/indexer/scripts/mcap_reference.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{} failed (python3 -m pip install mcap): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

#[tokio::test]
async fn mcap_without_statistics_is_described_like_the_python_reader_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = python_reference(dir.path());
    let read = |name: &str| {
        Bytes::from(std::fs::read(dir.path().join(format!("{name}.mcap"))).expect("mcap file"))
    };

    for name in [
        "no-statistics",
        "no-statistics-small-chunks",
        "no-statistics-uncompressed",
    ] {
        let expected = &reference[name];
        let file = read(name);
        let summary = read_mcap_summary(&file)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let topics: BTreeMap<String, u64> = summary
            .topics
            .iter()
            .map(|t| (t.topic.clone(), t.message_count))
            .collect();
        let want: BTreeMap<String, u64> = expected["topics"]
            .as_object()
            .expect("topics")
            .iter()
            .map(|(topic, n)| (topic.clone(), n.as_u64().expect("count")))
            .collect();
        assert_eq!(topics, want, "{name}: messages per topic");
        assert_eq!(
            summary.message_count,
            expected["messages"].as_u64().expect("n"),
            "{name}"
        );
        assert_eq!(
            summary.start_time_ns,
            expected["start"].as_u64().expect("start"),
            "{name}"
        );
        assert_eq!(
            summary.end_time_ns,
            expected["end"].as_u64().expect("end"),
            "{name}"
        );
        assert_eq!(
            summary.chunk_count,
            summary.chunk_indexes.len() as u64,
            "{name}"
        );
        let derived = summary
            .derived
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: says how"));
        assert!(
            derived.contains("no statistics record")
                && derived.contains(&format!("{} chunk indexes", summary.chunk_count)),
            "{name}: {derived}"
        );
        assert!(topics.values().all(|n| *n > 0), "{name}");
    }
    assert!(
        read_mcap_summary(&read("no-statistics-small-chunks"))
            .await
            .expect("described")
            .chunk_count
            > 10,
        "the small-chunk case has many chunks"
    );

    // Without message indexes or without chunks, the counts are not there to read.
    for (name, why) in [
        ("no-statistics-no-message-index", "no message index"),
        ("no-statistics-unchunked", "no chunk indexes"),
    ] {
        let err = read_mcap_summary(&read(name))
            .await
            .expect_err("counts cannot be derived");
        assert_eq!(err.kind(), MetadataErrorKind::NoSummary, "{name}: {err}");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
}
