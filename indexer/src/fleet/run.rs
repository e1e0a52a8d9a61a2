//! Runs: `run.json`, `metrics.parquet` and outputs.

use std::collections::BTreeSet;
use std::sync::Arc;

use ::parquet::basic::{Compression, ZstdLevel};
use ::parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::schema::parser::parse_message_type;
use bytes::Bytes;
use chrono::Duration;
use serde_json::{json, Value};

use super::rng::{derive, Det};
use super::{
    inline_json, rfc3339, BlobFormat, FileKind, FleetError, FleetSpec, GeneratedDrive,
    GeneratedFile, GeneratedRun, Recipe,
};

const KINDS: &[(&str, &str, &[&str])] = &[
    (
        "simulation",
        "sim",
        &["nightly-regression", "scenario-replay", "planner-ab-test"],
    ),
    (
        "benchmark",
        "bench",
        &[
            "perception-benchmark",
            "cut-in-benchmark",
            "latency-benchmark",
        ],
    ),
    ("sil", "sil", &["sil-smoke", "sil-full-stack"]),
];

const STATUSES: &[&str] = &["passed", "failed", "error", "running"];

const RUN_TAGS: &[&str] = &[
    "nightly",
    "regression",
    "release-candidate",
    "perception",
    "planning",
    "cut-in",
    "rain",
    "long-tail",
];

const TRIGGERS: &[&str] = &["ci", "nightly-cron", "engineer:li.wei", "engineer:m.huber"];

/// Rows per row group of `metrics.parquet` (small, so files have several).
const ROWS_PER_GROUP: usize = 64;

pub(super) fn plan_runs(
    spec: &FleetSpec,
    prefix: &str,
    drives: &[GeneratedDrive],
) -> Vec<GeneratedRun> {
    // Statuses first, so that at least one run has metrics when there are drives.
    let mut statuses: Vec<&str> = (0..spec.runs)
        .map(|i| {
            let mut rng = Det::new(derive(spec.seed, "run-status", i as u64));
            STATUSES[rng.weighted(&[55, 25, 8, 12])]
        })
        .collect();
    if !drives.is_empty() && !statuses.iter().any(|s| has_metrics(s)) {
        if let Some(first) = statuses.first_mut() {
            *first = "passed";
        }
    }
    let mut ids = BTreeSet::new();
    statuses
        .into_iter()
        .enumerate()
        .map(|(i, status)| plan_run(spec, prefix, drives, i as u64, status, &mut ids))
        .collect()
}

fn has_metrics(status: &str) -> bool {
    status == "passed" || status == "failed"
}

fn plan_run(
    spec: &FleetSpec,
    prefix: &str,
    drives: &[GeneratedDrive],
    index: u64,
    status: &str,
    ids: &mut BTreeSet<String>,
) -> GeneratedRun {
    let run_seed = derive(spec.seed, "run", index);
    let mut rng = Det::new(run_seed);
    let (kind, abbrev, pipelines) = KINDS[rng.weighted(&[50, 30, 20])];
    let pipeline = *rng.pick(pipelines);

    let inputs: Vec<&GeneratedDrive> = rng
        .sample_some(drives.len(), 1, 5)
        .into_iter()
        .map(|d| &drives[d])
        .collect();
    let after = inputs
        .iter()
        .map(|d| d.ended_at)
        .max()
        .or_else(|| drives.iter().map(|d| d.ended_at).max())
        .unwrap_or_default();
    let started_at = after + Duration::seconds(rng.range(3600, 96 * 3600) as i64);
    let finished_at = started_at + Duration::seconds(rng.range(5 * 60, 240 * 60) as i64);

    let mut id = format!("{abbrev}-{}-{}", started_at.format("%Y%m%d"), rng.hex(6));
    while ids.contains(&id) {
        id = format!("{abbrev}-{}-{}", started_at.format("%Y%m%d"), rng.hex(6));
    }
    ids.insert(id.clone());

    let tags: BTreeSet<&str> = rng
        .sample_some(RUN_TAGS.len(), 1, 3)
        .into_iter()
        .map(|t| RUN_TAGS[t])
        .collect();
    let sidecar = json!({
        "run_id": id,
        "kind": kind,
        "pipeline": pipeline,
        "commit": rng.hex(40),
        "status": status,
        "started_at": rfc3339(started_at),
        "finished_at": if status == "running" { Value::Null } else { json!(rfc3339(finished_at)) },
        "inputs": inputs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        "tags": tags.iter().collect::<Vec<_>>(),
        // Not in the contract: kept and searchable.
        "triggered_by": rng.pick(TRIGGERS),
        "ci_job_url": format!("https://ci.example.internal/jobs/{}", rng.range(10_000, 99_999)),
    });

    let prefix = format!("{prefix}{id}/");
    let run_json = inline_json(&sidecar);
    let mut files = vec![GeneratedFile {
        key: format!("{prefix}run.json"),
        size_hint: run_json.len() as u64,
        kind: FileKind::RunJson,
        recipe: Recipe::Inline(run_json),
    }];

    let mut metrics_rows = Vec::new();
    if has_metrics(status) {
        for drive in &inputs {
            let labels = drive.sidecar["scenarios"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|s| s["label"].as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for label in labels {
                let scenario = format!("{}/{label}", drive.id);
                let collided = status == "failed" && rng.chance(0.3);
                let values = [
                    ("min_ttc_s", round3(rng.float(0.4, 8.0))),
                    ("collisions", if collided { 1.0 } else { 0.0 }),
                    ("jerk_p95", round3(rng.float(0.5, 6.0))),
                    (
                        "route_completion",
                        round3(if status == "passed" {
                            rng.float(0.95, 1.0)
                        } else {
                            rng.float(0.55, 1.0)
                        }),
                    ),
                    ("max_decel_mps2", round3(rng.float(1.0, 9.0))),
                ];
                for (metric, value) in values {
                    metrics_rows.push((scenario.clone(), metric.to_owned(), value));
                }
            }
        }
        files.push(GeneratedFile {
            key: format!("{prefix}metrics.parquet"),
            size_hint: metrics_rows.len() as u64 * 24 + 1024,
            kind: FileKind::MetricsParquet,
            recipe: Recipe::Metrics {
                rows: metrics_rows.clone(),
                zstd: spec.seed.wrapping_add(index) & 1 == 0,
            },
        });
    }

    // Outputs: a log always; a report and traces once the run has finished.
    let log = sim_log(&mut rng, &id, status);
    files.push(GeneratedFile {
        key: format!("{prefix}outputs/sim.log"),
        size_hint: log.len() as u64,
        kind: FileKind::RunOutput,
        recipe: Recipe::Inline(log),
    });
    if status != "running" {
        let report = inline_json(&json!({
            "run_id": id,
            "status": status,
            "scenarios": metrics_rows.len() / 5,
            "duration_s": (finished_at - started_at).num_seconds(),
        }));
        files.push(GeneratedFile {
            key: format!("{prefix}outputs/report.json"),
            size_hint: report.len() as u64,
            kind: FileKind::RunOutput,
            recipe: Recipe::Inline(report),
        });
        for t in 0..rng.range(1, 2) {
            let len = spec.drive_bytes / 10 * rng.range(50, 150) / 100;
            files.push(GeneratedFile {
                key: format!("{prefix}outputs/trace-{t:03}.bin"),
                size_hint: len,
                kind: FileKind::RunOutput,
                recipe: Recipe::Blob {
                    seed: derive(run_seed, "trace", t),
                    len,
                    format: BlobFormat::Raw,
                },
            });
        }
    }

    GeneratedRun {
        id,
        kind: kind.to_owned(),
        status: status.to_owned(),
        prefix,
        sidecar,
        metrics_rows,
        files,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn sim_log(rng: &mut Det, id: &str, status: &str) -> Bytes {
    let mut text = format!("run {id} starting\n");
    for step in 0..rng.range(20, 120) {
        text.push_str(&format!(
            "step {step:05} sim_time={:.2}s agents={} planner_ms={:.1}\n",
            step as f64 * 0.5,
            rng.range(3, 60),
            rng.float(4.0, 40.0)
        ));
    }
    text.push_str(&format!("run {id} {status}\n"));
    Bytes::from(text)
}

/// `metrics.parquet`: columns `scenario_id` (string), `metric` (string), `value` (double),
/// written with the low-level column writer, snappy or zstd.
pub(super) fn render_metrics(
    rows: &[(String, String, f64)],
    zstd: bool,
) -> Result<Bytes, FleetError> {
    let fail = |err: ::parquet::errors::ParquetError| FleetError::new("metrics.parquet", err);
    let schema = parse_message_type(
        "message metrics {
            required binary scenario_id (STRING);
            required binary metric (STRING);
            required double value;
        }",
    )
    .map_err(fail)?;
    let compression = if zstd {
        Compression::ZSTD(ZstdLevel::default())
    } else {
        Compression::SNAPPY
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_created_by("milepost-fleet".to_owned())
        .build();
    let mut writer =
        SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(props)).map_err(fail)?;
    for group in rows.chunks(ROWS_PER_GROUP) {
        let mut rg = writer.next_row_group().map_err(fail)?;
        let mut column = 0;
        while let Some(mut col) = rg.next_column().map_err(fail)? {
            match column {
                0 | 1 => {
                    let values: Vec<ByteArray> = group
                        .iter()
                        .map(|(scenario, metric, _)| {
                            ByteArray::from(if column == 0 {
                                scenario.as_str()
                            } else {
                                metric.as_str()
                            })
                        })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, None, None)
                        .map_err(fail)?;
                }
                _ => {
                    let values: Vec<f64> = group.iter().map(|r| r.2).collect();
                    col.typed::<DoubleType>()
                        .write_batch(&values, None, None)
                        .map_err(fail)?;
                }
            }
            col.close().map_err(fail)?;
            column += 1;
        }
        rg.close().map_err(fail)?;
    }
    let bytes = writer.into_inner().map_err(fail)?;
    Ok(Bytes::from(bytes))
}
