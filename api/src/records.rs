//! Records shared through S3. `registerDrive`, `registerRun` and `tagScenario` change the
//! office catalog, then write the record as the sidecar the indexer reads
//! (`<drive prefix>drive.json`, `<run prefix>run.json`, design.md's layout) through the
//! office store, that is through the write-back path: the office sees it at once and S3 gets
//! it in the background, so another office rebuilds the same records on its next sync.
//! (`createDataset` writes its manifest the same way, in the cacher.)
//!
//! The sidecar is rebuilt from the catalog rows, so it always holds the whole record: a
//! scenario tagged in the office lands in its drive's sidecar next to the ones read from S3,
//! and fields the catalog keeps without a column (`extra`) are written back unchanged.

use milepost_indexer::catalog;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::server::AppState;

/// The largest sidecar written (the indexer refuses larger ones).
const MAX_SIDECAR: usize = 4 << 20;

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `extra` first, then the record's own fields over it: unknown fields survive a rewrite
/// but never shadow a known one.
fn merged(extra: &Value, fields: Value) -> Value {
    let mut out: Map<String, Value> = extra.as_object().cloned().unwrap_or_default();
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    Value::Object(out)
}

async fn put(app: &AppState, bucket: &str, key: String, record: &Value) -> ApiResult<()> {
    let mut body = serde_json::to_vec_pretty(record)
        .map_err(|err| ApiError::Unavailable(format!("cannot encode {key}: {err}")))?;
    body.push(b'\n');
    if body.len() > MAX_SIDECAR {
        return Err(ApiError::bad_input(
            "input",
            format!(
                "the record would be {} bytes as {key}; at most {MAX_SIDECAR}",
                body.len()
            ),
        ));
    }
    app.store
        .put(bucket, &key, body.into())
        .await
        .map_err(|err| {
            tracing::error!(bucket, key, error = %err, "cannot write a record through the office");
            ApiError::Unavailable(format!(
                "the record is in the office catalog but could not be written to s3://{bucket}/{key}; try again"
            ))
        })?;
    Ok(())
}

/// Writes the drive's sidecar from the catalog.
pub async fn write_drive(app: &AppState, drive_id: &str) -> ApiResult<()> {
    let db = &app.db;
    let Some(drive) = catalog::get_drive(db, drive_id).await? else {
        return Err(ApiError::not_found(format!("drive {drive_id}")));
    };
    let events: Vec<Value> = catalog::drive_events(db, drive_id)
        .await?
        .into_iter()
        .map(|e| json!({ "at": rfc3339(e.at), "kind": e.kind, "label": e.label }))
        .collect();
    let scenarios: Vec<Value> = catalog::drive_scenarios(db, drive_id)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "label": s.label,
                "start": rfc3339(s.start_time),
                "end": rfc3339(s.end_time),
                "tags": s.tags,
            })
        })
        .collect();
    let record = merged(
        &drive.extra,
        json!({
            "drive_id": drive.id,
            "vehicle": drive.vehicle,
            "city": drive.city,
            "route": drive.route,
            "started_at": rfc3339(drive.started_at),
            "ended_at": rfc3339(drive.ended_at),
            "distance_km": drive.distance_km,
            "software_version": drive.software_version,
            "weather": drive.weather,
            "tags": drive.tags,
            "events": events,
            "scenarios": scenarios,
        }),
    );
    put(
        app,
        &drive.bucket,
        format!("{}drive.json", drive.prefix),
        &record,
    )
    .await
}

/// Writes the run's sidecar from the catalog.
pub async fn write_run(app: &AppState, run_id: &str) -> ApiResult<()> {
    let db = &app.db;
    let Some(run) = catalog::get_run(db, run_id).await? else {
        return Err(ApiError::not_found(format!("run {run_id}")));
    };
    let inputs: Vec<String> = catalog::run_inputs(db, run_id)
        .await?
        .into_iter()
        .map(|i| i.input_id)
        .collect();
    let record = merged(
        &run.extra,
        json!({
            "run_id": run.id,
            "kind": run.kind.as_str(),
            "pipeline": run.pipeline,
            "commit": run.commit,
            "status": run.status.as_str(),
            "started_at": run.started_at.map(rfc3339),
            "finished_at": run.finished_at.map(rfc3339),
            "inputs": inputs,
            "tags": run.tags,
        }),
    );
    put(app, &run.bucket, format!("{}run.json", run.prefix), &record).await
}
