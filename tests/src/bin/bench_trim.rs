//! `bench_trim`: a 30 s scenario of a 60 min MCAP log, materialized trimmed, against the same
//! log materialized whole; upstream bytes and time to READY for both.
//!
//! ```text
//! cargo build --release -p milepost-tests --bins
//! target/release/bench_trim [--minutes 60] [--scenario-secs 30] [--chunk-kib 1024]
//!                           [--compression zstd|lz4|none]
//! ```
//!
//! Writes one synthetic log (camera 10 Hz × 3000 B, lidar 10 Hz × 2000 B, pose 50 Hz × 120 B,
//! streamed to disk), uploads it with its drive sidecar to a [`LoopbackUpstream`], serves the real
//! application (SQLite, office cache in a temp dir) over it, syncs, then:
//! 1. a dataset of the scenario (default padding 2 s) → reserve → READY: wall time,
//!    `bytesFromUpstream`, and the bytes that had to be read (the overlapping chunks, the
//!    summary and the footer, from the log's own summary);
//! 2. a dataset of the drive (whole log) in a fresh server → reserve → READY: the same.
//!
//! Prints a Markdown table.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{TimeZone as _, Utc};
use mcap::Compression;
use milepost_cacher::trim::{self, Window};
use milepost_schema::enums::Role;
use milepost_store::{ObjectStore, UploadOptions};
use milepost_testkit::trimlogs::{drive_sidecar, write_log, LogSpec, ScenarioSpec, TOPICS};
use milepost_testkit::{LoopbackUpstream, TestApp};
use serde_json::{json, Value};

const BUCKET: &str = "fleet";
const DRIVE: &str = "bench-trim";
const PREFIX: &str = "drives/2026-11-01/tv-1/bench-trim/";

struct Args {
    minutes: u64,
    scenario_secs: i64,
    chunk_kib: u64,
    compression: Option<Compression>,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        minutes: 60,
        scenario_secs: 30,
        chunk_kib: 1024,
        compression: Some(Compression::Zstd),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => out.minutes = value()?.parse()?,
            "--scenario-secs" => out.scenario_secs = value()?.parse()?,
            "--chunk-kib" => out.chunk_kib = value()?.parse()?,
            "--compression" => {
                out.compression = match value()?.as_str() {
                    "zstd" => Some(Compression::Zstd),
                    "lz4" => Some(Compression::Lz4),
                    "none" => None,
                    other => bail!("unknown compression {other}"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(out)
}

async fn reserve_ready(
    app: &TestApp,
    token: &str,
    dataset: &str,
) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let (_, body) = app
        .graphql(
            Some(token),
            "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
            json!({ "input": { "dataset": dataset, "ttlSeconds": 3600 } }),
        )
        .await;
    let id = body["data"]["reserveDataset"]["id"]
        .as_str()
        .with_context(|| format!("reserve failed: {body}"))?
        .to_owned();
    loop {
        let (_, body) = app
            .graphql(
                Some(token),
                "query($id: ID!) { reservation(id: $id) { state bytesTotal bytesFromUpstream error notes } }",
                json!({ "id": id }),
            )
            .await;
        let r = body["data"]["reservation"].clone();
        match r["state"].as_str() {
            Some("READY") => return Ok((r, started.elapsed())),
            Some("PENDING") | Some("MATERIALIZING") => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            _ => bail!("reservation ended {r}"),
        }
    }
}

async fn create(app: &TestApp, token: &str, input: Value) -> anyhow::Result<()> {
    let (_, body) = app
        .graphql(
            Some(token),
            "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { objectCount } }",
            json!({ "input": input }),
        )
        .await;
    if body.get("errors").is_some() {
        bail!("createDataset failed: {body}");
    }
    Ok(())
}

async fn app(s3: &LoopbackUpstream) -> anyhow::Result<(TestApp, String)> {
    let app = TestApp::builder()
        .upstream(s3.settings(), BUCKET)
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    let (_, body) = app
        .graphql(
            Some(&admin),
            "mutation { syncCatalog { errors } }",
            json!({}),
        )
        .await;
    if body["data"]["syncCatalog"]["errors"] != json!([]) {
        bail!("sync failed: {body}");
    }
    Ok((app, admin))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 1, 10, 0, 0)
        .single()
        .context("time")?;
    let duration_s = args.minutes * 60;
    let spec = LogSpec {
        start: t0,
        duration_s,
        topics: TOPICS.to_vec(),
        compression: args.compression,
        chunk_bytes: args.chunk_kib * 1024,
        chunked: true,
    };
    let log_path = dir.path().join("log.mcap");
    let written = Instant::now();
    let messages = {
        let (spec, path) = (spec.clone(), log_path.clone());
        tokio::task::spawn_blocking(move || write_log(&spec, &path)).await?
    };
    let log_size = std::fs::metadata(&log_path)?.len();
    eprintln!(
        "log: {messages} messages, {log_size} bytes, written in {:.1} s",
        written.elapsed().as_secs_f64()
    );

    let mid = t0 + chrono::Duration::seconds(duration_s as i64 / 2);
    let scenario = ScenarioSpec {
        label: "cut-in",
        start: mid,
        end: mid + chrono::Duration::seconds(args.scenario_secs),
    };
    let s3_dir = dir.path().join("s3");
    std::fs::create_dir_all(&s3_dir)?;
    let s3 = LoopbackUpstream::start_in(&s3_dir, BUCKET).await?;
    let store = Arc::clone(&s3.store);
    let sidecar = drive_sidecar(
        DRIVE,
        t0,
        t0 + chrono::Duration::seconds(duration_s as i64),
        std::slice::from_ref(&scenario),
    );
    store
        .put(
            BUCKET,
            &format!("{PREFIX}drive.json"),
            serde_json::to_vec(&sidecar)?.into(),
        )
        .await?;
    let key = format!("{PREFIX}logs/log.mcap");
    milepost_store::upload_file(
        store.as_ref(),
        BUCKET,
        &key,
        &log_path,
        &UploadOptions::default(),
    )
    .await?;

    // What the trim has to read, from the log's own summary.
    let (chunk_bytes, summary_bytes, chunks) = {
        let bytes = std::fs::read(&log_path)?;
        let size = bytes.len() as u64;
        let footer = trim::parse_footer(&bytes[bytes.len() - trim::FOOTER_READ as usize..], size)?;
        let summary = trim::parse_summary(&bytes[footer.summary_start as usize..], &footer, size)?;
        let pad = chrono::Duration::seconds(2);
        let ns = |at: chrono::DateTime<Utc>| at.timestamp_nanos_opt().unwrap_or(0) as u64;
        let window = Window {
            start_ns: ns(scenario.start - pad),
            end_ns: ns(scenario.end + pad),
        };
        let plan = trim::plan(&summary, window, &BTreeSet::new())?;
        (
            plan.chunk_bytes(),
            size - footer.summary_start + trim::FOOTER_READ,
            plan.chunks.len(),
        )
    };

    let (trim_app, admin) = app(&s3).await?;
    let (_, body) = trim_app
        .graphql(
            Some(&admin),
            r#"query($id: ID!) { drive(id: $id) { scenarios { id } } }"#,
            json!({ "id": DRIVE }),
        )
        .await;
    let scenario_id = body["data"]["drive"]["scenarios"][0]["id"]
        .as_str()
        .with_context(|| format!("no scenario: {body}"))?
        .to_owned();
    create(
        &trim_app,
        &admin,
        json!({ "name": "scenario", "entityIds": [scenario_id] }),
    )
    .await?;
    let (trimmed, trimmed_time) = reserve_ready(&trim_app, &admin, "scenario").await?;
    trim_app.shutdown().await;

    let (whole_app, admin) = app(&s3).await?;
    create(
        &whole_app,
        &admin,
        json!({ "name": "drive", "entityIds": [DRIVE], "include": ["*.mcap"] }),
    )
    .await?;
    let (whole, whole_time) = reserve_ready(&whole_app, &admin, "drive").await?;
    whole_app.shutdown().await;

    let upstream = trimmed["bytesFromUpstream"].as_u64().unwrap_or(0);
    let whole_upstream = whole["bytesFromUpstream"].as_u64().unwrap_or(0);
    let needed = chunk_bytes + summary_bytes;
    println!(
        "| log | scenario | chunks read | needed (chunks + summary) | upstream, trimmed | bound 1.1× | upstream, whole | whole ÷ trimmed | READY, trimmed | READY, whole | trimmed file |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} min, {:.1} MiB, {} | {} s + 2×2 s | {chunks} | {:.2} MiB | {:.2} MiB | {} | {:.1} MiB | {:.0}× | {:.2} s | {:.2} s | {:.2} MiB |",
        args.minutes,
        log_size as f64 / 1048576.0,
        match args.compression {
            Some(Compression::Zstd) => "zstd",
            Some(Compression::Lz4) => "lz4",
            None => "none",
        },
        args.scenario_secs,
        needed as f64 / 1048576.0,
        upstream as f64 / 1048576.0,
        if upstream as f64 <= 1.1 * needed as f64 { "met" } else { "MISSED" },
        whole_upstream as f64 / 1048576.0,
        whole_upstream as f64 / upstream.max(1) as f64,
        trimmed_time.as_secs_f64(),
        whole_time.as_secs_f64(),
        trimmed["bytesTotal"].as_u64().unwrap_or(0) as f64 / 1048576.0,
    );
    Ok(())
}
