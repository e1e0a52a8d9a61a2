//! Scenario-precise materialization against a real S3 server on loopback: datasets of
//! scenarios materialize trimmed MCAP logs, checked by the official `mcap` Python reader
//! against their sources; only the overlapping chunks (and the summary) come from upstream,
//! once per office; edge windows, bad topics, changed logs and logs without chunk index.
//!
//! (Over 600 lines: trimming scenarios sharing one world and the official reader's checks.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use mcap::Compression;
use milepost_cacher::trim::{self, Window};
use milepost_schema::enums::Role;
use milepost_store::{ObjectStore, UploadOptions};
use milepost_testkit::trimlogs::{
    drive_sidecar, message_time, python_check, write_log, LogSpec, ScenarioSpec, TopicSpec, TOPICS,
};
use milepost_testkit::{error_codes, first_error, LoopbackUpstream, TestApp};
use serde_json::{json, Value};

const BUCKET: &str = "fleet";
const DRIVE: &str = "trim-d1";
const PREFIX: &str = "drives/2026-11-01/tv-1/trim-d1/";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, 0)
        .single()
        .expect("time")
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

fn ms(s: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(s)
}

struct Log {
    key: String,
    path: PathBuf,
}

struct World {
    logs_dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    app: TestApp,
    admin: String,
    engineer: String,
    logs: Vec<Log>,
}

/// One drive of `duration_s` seconds with one log per entry of `logs` (name, spec) and the
/// `scenarios`, uploaded and synced.
async fn world(duration_s: u64, logs: &[(&str, LogSpec)], scenarios: &[ScenarioSpec]) -> World {
    let logs_dir = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let store = upstream.store.clone();
    // The drive runs two minutes longer than its logs at both ends, so that scenarios can lie
    // before or after every message.
    let sidecar = drive_sidecar(
        DRIVE,
        t0() - secs(120),
        t0() + secs(duration_s as i64 + 120),
        scenarios,
    );
    store
        .put(
            BUCKET,
            &format!("{PREFIX}drive.json"),
            serde_json::to_vec(&sidecar).expect("json").into(),
        )
        .await
        .expect("sidecar");
    let mut written = Vec::new();
    for (name, spec) in logs {
        let path = logs_dir.path().join(name);
        let spec = spec.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || write_log(&spec, &p))
            .await
            .expect("log written");
        let key = format!("{PREFIX}logs/{name}");
        milepost_store::upload_file(
            store.as_ref(),
            BUCKET,
            &key,
            &path,
            &UploadOptions::default(),
        )
        .await
        .expect("upload");
        written.push(Log { key, path });
    }
    let app = TestApp::builder().with_upstream(upstream).start().await;
    let admin = app.token("admin", Role::Admin).await;
    let engineer = app.token("alice", Role::Engineer).await;
    app.sync_cleanly(&admin).await;
    World {
        logs_dir,
        store,
        app,
        admin,
        engineer,
        logs: written,
    }
}

fn log_spec(compression: Option<Compression>, duration_s: u64) -> LogSpec {
    LogSpec {
        start: t0(),
        duration_s,
        topics: TOPICS.to_vec(),
        compression,
        chunk_bytes: 64 * 1024,
        chunked: true,
    }
}

/// The drive's scenario ids by label.
async fn scenario_ids(w: &World) -> std::collections::BTreeMap<String, String> {
    let (_, body) = w
        .app
        .graphql(
            Some(&w.admin),
            r#"query($id: ID!) { drive(id: $id) { scenarios { id label } } }"#,
            json!({ "id": DRIVE }),
        )
        .await;
    body["data"]["drive"]["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .map(|s| {
            (
                s["label"].as_str().expect("label").to_owned(),
                s["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect()
}

const CREATE: &str = r#"mutation($input: CreateDatasetInput!) { createDataset(input: $input) {
    name version objectCount totalBytes manifestKey
    objects(first: 100) { edges { node { bucket key etag size metadata } } } } }"#;

const RESERVE: &str =
    r#"mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }"#;

const RESERVATION: &str = r#"query($id: ID!) { reservation(id: $id) {
    id state objectsTotal objectsDone bytesTotal bytesDone bytesFromUpstream localPath error notes } }"#;

async fn create(w: &World, input: Value) -> Value {
    let (_, body) = w
        .app
        .graphql(Some(&w.engineer), CREATE, json!({ "input": input }))
        .await;
    assert!(body.get("errors").is_none(), "createDataset failed: {body}");
    body["data"]["createDataset"].clone()
}

/// Reserves `dataset` and waits for a final state; returns the reservation.
async fn reserve(w: &World, dataset: &str) -> Value {
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            RESERVE,
            json!({ "input": { "dataset": dataset, "ttlSeconds": 3600 } }),
        )
        .await;
    let id = body["data"]["reserveDataset"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("reserveDataset failed: {body}"))
        .to_owned();
    for _ in 0..1200 {
        let (_, body) = w
            .app
            .graphql(Some(&w.admin), RESERVATION, json!({ "id": id }))
            .await;
        let r = body["data"]["reservation"].clone();
        match r["state"].as_str() {
            Some("PENDING") | Some("MATERIALIZING") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => return r,
        }
    }
    panic!("reservation {id} did not end");
}

fn ready(r: &Value) -> PathBuf {
    assert_eq!(r["state"], "READY", "{r}");
    PathBuf::from(r["localPath"].as_str().expect("localPath"))
}

/// The trimmed files in a view, by source log name (`zstd.mcap` for
/// `logs/zstd.<scenario>.<span>.mcap`).
fn view_files(view: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![view.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read view") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn ns(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_nanos_opt().expect("range")).expect("positive")
}

/// Bytes a trim of `source` over `window`/`topics` must read: footer, summary, overlapping
/// chunks (computed with the cacher's own planner from the source bytes).
fn needed_bytes(source: &Path, window: Window, topics: &[&str]) -> (u64, u64) {
    let bytes = std::fs::read(source).expect("source");
    let size = bytes.len() as u64;
    let footer = trim::parse_footer(&bytes[bytes.len() - trim::FOOTER_READ as usize..], size)
        .expect("footer");
    let summary = trim::parse_summary(&bytes[footer.summary_start as usize..], &footer, size)
        .expect("summary");
    let topics: BTreeSet<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let plan = trim::plan(&summary, window, &topics).expect("plan");
    let summary_bytes = size - footer.summary_start + trim::FOOTER_READ;
    (plan.chunk_bytes(), summary_bytes)
}

fn compressions() -> [(&'static str, Option<Compression>); 3] {
    [
        ("zstd.mcap", Some(Compression::Zstd)),
        ("lz4.mcap", Some(Compression::Lz4)),
        ("none.mcap", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenario_datasets_hold_exactly_the_window_of_each_log() {
    let logs: Vec<(&str, LogSpec)> = compressions()
        .into_iter()
        .map(|(name, c)| (name, log_spec(c, 120)))
        .chain([(
            "flat.mcap",
            LogSpec {
                chunked: false,
                ..log_spec(None, 120)
            },
        )])
        .collect();
    let scenarios = [
        ScenarioSpec {
            label: "cut-in",
            start: t0() + secs(30),
            end: t0() + secs(40),
        },
        ScenarioSpec {
            label: "overtake",
            start: t0() + secs(38),
            end: t0() + secs(50),
        },
    ];
    let w = world(120, &logs, &scenarios).await;
    let ids = scenario_ids(&w).await;

    // By entity id, every topic, default padding (2 s).
    let ds = create(
        &w,
        json!({ "name": "cut-in", "entityIds": [ids["cut-in"]] }),
    )
    .await;
    assert_eq!(ds["objectCount"], 4, "{ds}");
    // The manifest in S3 (written back) records each trimmed file's provenance.
    assert!(
        w.app
            .state()
            .write_back
            .wait_idle(Duration::from_secs(30))
            .await,
        "the manifest was not written back"
    );
    let manifest = milepost_cacher::datasets::load_manifest(
        w.store.as_ref(),
        BUCKET,
        ds["manifestKey"].as_str().expect("key"),
    )
    .await
    .expect("manifest");
    assert_eq!(manifest.len(), 4);
    for entry in &manifest {
        let trim = entry.trim.as_ref().expect("every log is a trimmed member");
        let source = w
            .logs
            .iter()
            .find(|l| l.key == entry.key)
            .expect("source key");
        let local = std::fs::read(&source.path).expect("source");
        assert_eq!(entry.size, local.len() as u64);
        let head = w.store.head(BUCKET, &entry.key).await.expect("head");
        assert_eq!(entry.etag, head.etag);
        assert_eq!(trim.scenario_id, ids["cut-in"]);
        assert_eq!(
            (trim.start_ns, trim.end_ns),
            (ns(t0() + secs(28)), ns(t0() + secs(42)))
        );
        assert!(trim.topics.is_empty());
    }
    let r1 = reserve(&w, "cut-in").await;
    let view = ready(&r1);
    let window = Window {
        start_ns: ns(t0() + secs(28)),
        end_ns: ns(t0() + secs(42)),
    };
    let files = view_files(&view);
    assert_eq!(files.len(), 4, "{files:?}");
    let mut needed = 0;
    for (i, (name, _)) in compressions().iter().enumerate() {
        let stem = name.trim_end_matches(".mcap");
        let trimmed = files
            .iter()
            .find(|f| {
                let n = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                n.starts_with(&format!("{stem}.{}.", ids["cut-in"]))
            })
            .unwrap_or_else(|| panic!("no trimmed {name} in {files:?}"));
        let file_name = trimmed.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(
            file_name,
            format!(
                "{stem}.{}.20261101T100030Z-20261101T100040Z.pad2s.mcap",
                ids["cut-in"]
            ),
            "the name says what it is"
        );
        let report = python_check(
            &w.logs[i].path,
            trimmed,
            window.start_ns,
            window.end_ns,
            &[],
        );
        // 28 s to 42 s, both included: 141 camera, 140 lidar, 700 pose messages.
        assert_eq!(report["messages"], 981, "{name}: {report}");
        let expected = match *name {
            "zstd.mcap" => json!(["zstd"]),
            "lz4.mcap" => json!(["lz4"]),
            _ => json!([""]),
        };
        assert_eq!(report["compression"], expected, "{name}: {report}");
        let (chunks, summary) = needed_bytes(&w.logs[i].path, window, &[]);
        needed += chunks + summary;
        let source_size = std::fs::metadata(&w.logs[i].path).expect("meta").len();
        assert!(
            chunks * 4 < source_size,
            "{name}: the window's chunks are a fraction of the log"
        );
    }
    // The unchunked log comes whole, and the reservation says so.
    let flat = files
        .iter()
        .find(|f| f.ends_with("logs/flat.mcap"))
        .expect("flat log whole under its own name");
    assert_eq!(
        std::fs::read(flat).expect("flat"),
        std::fs::read(&w.logs[3].path).expect("source")
    );
    let notes = r1["notes"].as_array().expect("notes");
    assert!(
        notes.iter().any(|n| {
            let n = n.as_str().unwrap_or_default();
            n.contains("flat.mcap") && n.contains("no chunk index") && n.contains("whole")
        }),
        "{r1}"
    );
    // Upstream: the trimmed logs' footers, summaries and overlapping chunks, plus the flat log.
    let flat_size = std::fs::metadata(&w.logs[3].path).expect("meta").len();
    let upstream = r1["bytesFromUpstream"].as_u64().expect("bytes");
    assert!(
        upstream <= needed + flat_size + flat_size / 10,
        "upstream {upstream} > needed {needed} + flat {flat_size}"
    );
    assert!(upstream >= needed, "upstream {upstream} < needed {needed}");

    // An overlapping scenario of the same logs, found by a search for scenarios, on one
    // topic: only the chunks the first one did not fetch come from upstream.
    let ds2 = create(
        &w,
        json!({ "name": "overtake-lidar", "query": "kind:scenario label:overtake", "topics": ["/lidar/points"],
                "include": ["zstd.mcap", "lz4.mcap", "none.mcap"] }),
    )
    .await;
    assert_eq!(ds2["objectCount"], 3, "{ds2}");
    let meta = &ds2["objects"]["edges"][0]["node"]["metadata"]["trim"];
    assert_eq!(meta["scenario_id"], ids["overtake"], "{ds2}");
    assert_eq!(meta["topics"], json!(["/lidar/points"]), "{ds2}");
    let r2 = reserve(&w, "overtake-lidar").await;
    let view2 = ready(&r2);
    let window2 = Window {
        start_ns: ns(t0() + secs(36)),
        end_ns: ns(t0() + secs(52)),
    };
    let mut new_chunks = 0;
    let files2 = view_files(&view2);
    assert_eq!(files2.len(), 3, "{files2:?}");
    for (i, (name, _)) in compressions().iter().enumerate() {
        let stem = name.trim_end_matches(".mcap");
        let trimmed = files2
            .iter()
            .find(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{stem}.")))
            })
            .expect("trimmed");
        let report = python_check(
            &w.logs[i].path,
            trimmed,
            window2.start_ns,
            window2.end_ns,
            &["/lidar/points"],
        );
        assert_eq!(report["messages"], 160, "{name}: {report}");
        assert_eq!(report["topics"], json!({ "/lidar/points": 160 }));
        // Chunks of window 2 that window 1 did not read.
        let bytes = std::fs::read(&w.logs[i].path).expect("source");
        let size = bytes.len() as u64;
        let footer = trim::parse_footer(&bytes[bytes.len() - trim::FOOTER_READ as usize..], size)
            .expect("footer");
        let summary = trim::parse_summary(&bytes[footer.summary_start as usize..], &footer, size)
            .expect("summary");
        let lidar: BTreeSet<String> = ["/lidar/points".to_owned()].into();
        let first: BTreeSet<u64> = trim::plan(&summary, window, &BTreeSet::new())
            .expect("plan")
            .chunks
            .iter()
            .map(|c| c.chunk_start_offset)
            .collect();
        new_chunks += trim::plan(&summary, window2, &lidar)
            .expect("plan")
            .chunks
            .iter()
            .filter(|c| !first.contains(&c.chunk_start_offset))
            .map(|c| c.chunk_length)
            .sum::<u64>();
    }
    assert_eq!(
        r2["bytesFromUpstream"].as_u64(),
        Some(new_chunks),
        "only chunks not fetched before come from upstream (summaries are cached): {r2}"
    );

    // Reserving the first dataset again: everything cached, nothing from upstream.
    let r3 = reserve(&w, "cut-in").await;
    ready(&r3);
    assert_eq!(r3["bytesFromUpstream"], 0, "{r3}");
    assert_eq!(r3["notes"], r1["notes"], "{r3}");
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_outside_the_log_and_of_one_message() {
    let logs: Vec<(&str, LogSpec)> = compressions()
        .into_iter()
        .map(|(name, c)| (name, log_spec(c, 60)))
        .collect();
    // The 100th camera frame; the next message (lidar) is 33 ms later.
    let one = message_time(t0(), &TOPICS[0], 100);
    let one_at = DateTime::<Utc>::from_timestamp_nanos(one as i64);
    let scenarios = [
        ScenarioSpec {
            label: "before",
            start: t0() - secs(60),
            end: t0() - secs(30),
        },
        ScenarioSpec {
            label: "after",
            start: t0() + secs(100),
            end: t0() + secs(110),
        },
        ScenarioSpec {
            label: "instant",
            start: one_at,
            end: one_at + ms(5),
        },
    ];
    let w = world(60, &logs, &scenarios).await;
    let ids = scenario_ids(&w).await;
    for label in ["before", "after"] {
        create(
            &w,
            json!({ "name": label, "entityIds": [ids[label]], "include": ["zstd.mcap"] }),
        )
        .await;
        let r = reserve(&w, label).await;
        let view = ready(&r);
        let files = view_files(&view);
        assert_eq!(files.len(), 1, "{files:?}");
        let report = python_check(&w.logs[0].path, &files[0], 0, u64::MAX >> 1, &["/none"]);
        assert_eq!(report["messages"], 0, "{label}: {report}");
        assert_eq!(report["statistics"]["message_count"], 0);
        let notes = r["notes"].as_array().expect("notes");
        assert_eq!(notes.len(), 1, "{r}");
        let note = notes[0].as_str().expect("note");
        assert!(
            note.contains("no message between") && note.contains("empty"),
            "{note}"
        );
        // Only the footer and the summary were read, and the second time not even those
        // (cached).
        let (_, summary) = needed_bytes(
            &w.logs[0].path,
            Window {
                start_ns: 0,
                end_ns: 0,
            },
            &[],
        );
        let expected = if label == "before" { summary } else { 0 };
        assert_eq!(r["bytesFromUpstream"].as_u64(), Some(expected), "{r}");
    }

    create(
        &w,
        json!({ "name": "instant", "entityIds": [ids["instant"]], "paddingSeconds": 0 }),
    )
    .await;
    let r = reserve(&w, "instant").await;
    let files = view_files(&ready(&r));
    assert_eq!(files.len(), 3, "{files:?}");
    for (i, (name, _)) in compressions().iter().enumerate() {
        let stem = name.trim_end_matches(".mcap");
        let file = files
            .iter()
            .find(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{stem}.")))
            })
            .expect("trimmed");
        let report = python_check(&w.logs[i].path, file, one, one + 5_000_000, &[]);
        assert_eq!(report["messages"], 1, "{name}: {report}");
        assert_eq!(report["statistics"]["message_start_time"], one);
        assert_eq!(report["topics"], json!({ "/camera/front": 1 }));
    }
    assert_eq!(r["notes"], json!([]), "{r}");
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_topics_and_padding_are_bad_input() {
    let logs = [("zstd.mcap", log_spec(Some(Compression::Zstd), 20))];
    let scenarios = [ScenarioSpec {
        label: "cut-in",
        start: t0() + secs(5),
        end: t0() + secs(10),
    }];
    let w = world(20, &logs, &scenarios).await;
    let ids = scenario_ids(&w).await;
    for (input, field, needle) in [
        (
            json!({ "name": "x", "entityIds": [ids["cut-in"]], "topics": ["/lidar/points", "/radar/nope"] }),
            "input.topics[1]",
            "\"/radar/nope\"",
        ),
        (
            json!({ "name": "x", "entityIds": [DRIVE], "topics": ["/lidar/points"] }),
            "input.topics",
            "no scenario",
        ),
        (
            json!({ "name": "x", "entityIds": [ids["cut-in"]], "paddingSeconds": -1 }),
            "input.paddingSeconds",
            "-1",
        ),
    ] {
        let (_, body) = w
            .app
            .graphql(Some(&w.engineer), CREATE, json!({ "input": input }))
            .await;
        assert_eq!(error_codes(&body), ["BAD_INPUT"], "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
        assert!(first_error(&body).contains(needle), "{body}");
    }
    // Drives still select whole files.
    let ds = create(&w, json!({ "name": "whole", "entityIds": [DRIVE] })).await;
    assert_eq!(ds["objectCount"], 2, "{ds}");
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_changed_upstream_fails_the_reservation() {
    let logs = [("lz4.mcap", log_spec(Some(Compression::Lz4), 20))];
    let scenarios = [ScenarioSpec {
        label: "cut-in",
        start: t0() + secs(5),
        end: t0() + secs(10),
    }];
    let w = world(20, &logs, &scenarios).await;
    let ids = scenario_ids(&w).await;
    create(
        &w,
        json!({ "name": "changing", "entityIds": [ids["cut-in"]] }),
    )
    .await;
    // Rewritten upstream after the manifest was frozen (another duration: other bytes).
    let path = w.logs_dir.path().join("rewritten.mcap");
    let spec = log_spec(Some(Compression::Lz4), 21);
    write_log(&spec, &path);
    w.store
        .put(
            BUCKET,
            &w.logs[0].key,
            std::fs::read(&path).expect("log").into(),
        )
        .await
        .expect("overwrite");
    let r = reserve(&w, "changing").await;
    assert_eq!(r["state"], "FAILED", "{r}");
    let error = r["error"].as_str().expect("error");
    assert!(
        error.contains("logs/lz4.mcap") && error.contains("changed upstream"),
        "{error}"
    );
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_30s_scenario_of_a_60min_log_reads_only_its_chunks_and_summary() {
    // A lighter sensor mix than the other tests, so that the hour stays ~33 MiB.
    let spec = LogSpec {
        topics: vec![
            TopicSpec {
                topic: "/camera/front",
                period_ms: 1000,
                offset_ms: 0,
                size: 3000,
            },
            TopicSpec {
                topic: "/localization/pose",
                period_ms: 20,
                offset_ms: 7,
                size: 120,
            },
        ],
        ..log_spec(Some(Compression::Zstd), 3600)
    };
    let scenarios = [ScenarioSpec {
        label: "cut-in",
        start: t0() + secs(1800),
        end: t0() + secs(1830),
    }];
    let w = world(3600, &[("hour.mcap", spec)], &scenarios).await;
    let ids = scenario_ids(&w).await;
    create(
        &w,
        json!({ "name": "cut-in", "entityIds": [ids["cut-in"]] }),
    )
    .await;
    let r = reserve(&w, "cut-in").await;
    let view = ready(&r);
    let window = Window {
        start_ns: ns(t0() + secs(1798)),
        end_ns: ns(t0() + secs(1832)),
    };
    let (chunks, summary) = needed_bytes(&w.logs[0].path, window, &[]);
    let upstream = r["bytesFromUpstream"].as_u64().expect("bytes");
    let whole = std::fs::metadata(&w.logs[0].path).expect("log").len();
    assert!(
        upstream as f64 <= 1.1 * (chunks + summary) as f64,
        "upstream {upstream} > 1.1 × (chunks {chunks} + summary {summary})"
    );
    assert!(upstream >= chunks, "upstream {upstream} < chunks {chunks}");
    assert!(
        whole > 50 * upstream,
        "whole log {whole} is not 50× the {upstream} bytes read"
    );
    let files = view_files(&view);
    assert_eq!(files.len(), 1, "{files:?}");
    let report = python_check(
        &w.logs[0].path,
        &files[0],
        window.start_ns,
        window.end_ns,
        &[],
    );
    // 34 s both ends included: 35 camera frames, 1700 poses.
    assert_eq!(report["messages"], 1735, "{report}");

    // The egress ledger counted the same ranged GETs (it is written in the background).
    let mut ledger = 0;
    for _ in 0..200 {
        let (_, body) = w
            .app
            .graphql(
                Some(&w.admin),
                "{ cacheStats { bytesFromUpstream } }",
                json!({}),
            )
            .await;
        ledger = body["data"]["cacheStats"]["bytesFromUpstream"]
            .as_u64()
            .expect("stats");
        if ledger == upstream {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        ledger, upstream,
        "the egress ledger counts the ranged reads"
    );
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_of_one_scenario_fetch_each_range_once() {
    let logs = [("zstd.mcap", log_spec(Some(Compression::Zstd), 60))];
    let scenarios = [ScenarioSpec {
        label: "cut-in",
        start: t0() + secs(20),
        end: t0() + secs(30),
    }];
    let w = world(60, &logs, &scenarios).await;
    let ids = scenario_ids(&w).await;
    for name in ["first", "second"] {
        create(&w, json!({ "name": name, "entityIds": [ids["cut-in"]] })).await;
    }
    let (a, b) = tokio::join!(reserve(&w, "first"), reserve(&w, "second"));
    let (view_a, view_b) = (ready(&a), ready(&b));
    let window = Window {
        start_ns: ns(t0() + secs(18)),
        end_ns: ns(t0() + secs(32)),
    };
    let (chunks, summary) = needed_bytes(&w.logs[0].path, window, &[]);
    let total =
        a["bytesFromUpstream"].as_u64().expect("a") + b["bytesFromUpstream"].as_u64().expect("b");
    assert_eq!(
        total,
        chunks + summary,
        "footer, summary and every chunk come from upstream once between the two: {a} {b}"
    );
    let (files_a, files_b) = (view_files(&view_a), view_files(&view_b));
    assert_eq!(files_a.len(), 1);
    assert_eq!(
        std::fs::read(&files_a[0]).expect("a"),
        std::fs::read(&files_b[0]).expect("b"),
        "one trimmed file, linked into both views"
    );
    python_check(
        &w.logs[0].path,
        &files_a[0],
        window.start_ns,
        window.end_ns,
        &[],
    );
    w.app.shutdown().await;
}

/// A dataset of a drive and a scenario of it holds each log once, whole (the scenario is noted
/// in the dataset's selection), and its first reservation reads exactly the dataset's bytes
/// from upstream: no window's chunks fetched again as ranges beside the whole logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drive_and_its_scenario_hold_each_log_once_and_fetch_its_bytes_once() {
    let scenarios = [ScenarioSpec {
        label: "cut-in",
        start: t0() + secs(20),
        end: t0() + secs(25),
    }];
    let logs = [
        ("zstd.mcap", log_spec(Some(Compression::Zstd), 60)),
        ("none.mcap", log_spec(None, 60)),
    ];
    let w = world(60, &logs, &scenarios).await;
    let ids = scenario_ids(&w).await;
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            r#"mutation($input: CreateDatasetInput!) { createDataset(input: $input) {
                objectCount totalBytes selection } }"#,
            json!({ "input": {
                "name": "drive-and-window",
                "entityIds": [DRIVE, ids["cut-in"]],
                "include": ["*.mcap"],
            } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let dataset = &body["data"]["createDataset"];
    let whole: u64 = w
        .logs
        .iter()
        .map(|l| std::fs::metadata(&l.path).expect("log").len())
        .sum();
    assert_eq!(dataset["objectCount"], 2, "each log once: {dataset}");
    assert_eq!(dataset["totalBytes"].as_u64(), Some(whole), "{dataset}");
    let notes = dataset["selection"]["notes"].to_string();
    assert!(
        notes.contains(&ids["cut-in"]) && notes.contains("held whole"),
        "the scenario is noted: {notes}"
    );
    let r = reserve(&w, "drive-and-window").await;
    let view = ready(&r);
    assert_eq!(
        r["bytesFromUpstream"].as_u64(),
        Some(whole),
        "the first reservation reads the dataset's bytes exactly once: {r}"
    );
    let files = view_files(&view);
    assert_eq!(files.len(), 2, "{files:?}");
    for log in &w.logs {
        let name = log.path.file_name().expect("name");
        let file = files
            .iter()
            .find(|f| f.file_name() == Some(name))
            .unwrap_or_else(|| panic!("{name:?} whole in the view: {files:?}"));
        assert_eq!(
            std::fs::read(file).expect("view file"),
            std::fs::read(&log.path).expect("log"),
            "{name:?} byte-exact"
        );
    }
    w.app.shutdown().await;
}
