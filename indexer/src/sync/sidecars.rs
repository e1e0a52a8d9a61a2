//! The sidecar stage: `drive.json` and `run.json` read (concurrently) and registered (in
//! order: drives first, so runs can name them as inputs), and sidecar-born records whose
//! sidecar is gone removed.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use milepost_schema::entity::{drive, run};
use milepost_schema::enums::{InputKind, RecordSource, RunKind, RunStatus};
use milepost_store::ObjectMeta;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use serde::Deserialize;

use super::read::Reader;
use super::writes::Touched;
use super::{in_scope, KeySet, SyncError, SyncOptions, SyncReport, READ_CONCURRENCY};
use crate::catalog::{
    self, Catalog, DriveRecord, EventRecord, RunRecord, SpanRecord, WindowRecord,
};
use crate::error::CatalogError;

/// Largest sidecar read; a bigger `drive.json` is reported, not read.
const MAX_SIDECAR_BYTES: usize = 4 << 20;

pub(super) fn is_sidecar(key: &str, prefix: &str, name: &str) -> bool {
    key.starts_with(prefix) && key.rsplit('/').next() == Some(name)
}

/// A drive or run sidecar of the catalog's layout.
pub(super) fn is_any_sidecar(key: &str, options: &SyncOptions) -> bool {
    is_sidecar(key, &options.drives_prefix, "drive.json")
        || is_sidecar(key, &options.runs_prefix, "run.json")
}

/// Reads and registers the sidecars among `needs_read`; returns what is stored in
/// `objects.metadata` for each (so the next pass knows it was read).
pub(super) async fn register_all(
    catalog: &Catalog,
    reader: &Reader,
    options: &SyncOptions,
    needs_read: &[ObjectMeta],
    touched: &mut Touched,
    report: &mut SyncReport,
) -> Result<Vec<(String, serde_json::Value)>, SyncError> {
    let db = &catalog.db;
    let mut descriptions = Vec::new();
    let mut read = read_sidecars(
        reader,
        needs_read,
        &options.drives_prefix,
        "drive.json",
        read_drive_sidecar,
    );
    while let Some((meta, record)) = read.next().await {
        options.progress.add_read(1);
        let outcome = match record {
            Ok(record) => {
                match catalog::register_drive(db, &catalog.layout, record, RecordSource::Sidecar)
                    .await
                {
                    Ok(drive) => {
                        touched.drives.insert(drive.id);
                        Ok(())
                    }
                    Err(err @ CatalogError::BadInput { .. }) => {
                        Err(sidecar_terms(&err.to_string()))
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(message) => Err(message),
        };
        descriptions.push((
            meta.key.clone(),
            outcome_description("drive.json", outcome, report, &meta.key, options),
        ));
    }
    drop(read);

    let mut read = read_sidecars(
        reader,
        needs_read,
        &options.runs_prefix,
        "run.json",
        read_run_sidecar,
    );
    while let Some((meta, record)) = read.next().await {
        options.progress.add_read(1);
        let outcome = match record {
            Ok(mut record) => {
                let mut inputs = Vec::new();
                for input in std::mem::take(&mut record.inputs) {
                    if catalog::resolve_input_kind(db, &input).await?.is_some() {
                        inputs.push(input);
                    } else {
                        report.errors.push(format!(
                            "{}: input {input:?} names no drive, scenario or run in the catalog; left out",
                            meta.key
                        ));
                    }
                }
                record.inputs = inputs;
                match catalog::register_run(db, &catalog.layout, record, RecordSource::Sidecar)
                    .await
                {
                    Ok(run) => {
                        touched.runs.insert(run.id);
                        Ok(())
                    }
                    Err(err @ CatalogError::BadInput { .. }) => {
                        Err(sidecar_terms(&err.to_string()))
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(message) => Err(message),
        };
        descriptions.push((
            meta.key.clone(),
            outcome_description("run.json", outcome, report, &meta.key, options),
        ));
    }
    Ok(descriptions)
}

/// The sidecars called `name` under `prefix` among `needs_read`, read [`READ_CONCURRENCY`] at
/// a time and yielded in order, each with its listing entry. The futures own their reader
/// and entry: a stream of futures borrowing them would not be `Send` for every lifetime, as
/// the api needs.
fn read_sidecars<T, Read, Fut>(
    reader: &Reader,
    needs_read: &[ObjectMeta],
    prefix: &str,
    name: &str,
    read: Read,
) -> impl futures::Stream<Item = (ObjectMeta, Result<T, String>)>
where
    Read: Fn(Reader, ObjectMeta) -> Fut,
    Fut: std::future::Future<Output = (ObjectMeta, Result<T, String>)>,
{
    let sidecars: Vec<ObjectMeta> = needs_read
        .iter()
        .filter(|m| is_sidecar(&m.key, prefix, name))
        .cloned()
        .collect();
    let reader = reader.clone();
    futures::stream::iter(sidecars)
        .map(move |meta| read(reader.clone(), meta))
        .buffered(READ_CONCURRENCY)
}

/// What is stored in `objects.metadata` for a sidecar, so the next pass knows it was read.
fn outcome_description(
    name: &str,
    outcome: Result<(), String>,
    report: &mut SyncReport,
    key: &str,
    options: &SyncOptions,
) -> serde_json::Value {
    match outcome {
        Ok(()) => serde_json::json!({ "format": name }),
        Err(message) => {
            report.errors.push(format!("{key}: {message}"));
            options.progress.add_errors(1);
            serde_json::json!({ "format": name, "error": message })
        }
    }
}

/// Validation speaks GraphQL (`input.endedAt`); sidecar authors know `ended_at`.
fn sidecar_terms(message: &str) -> String {
    let Some(rest) = message.strip_prefix("input.") else {
        return message.to_owned();
    };
    let (field, tail) = rest.split_once(':').unwrap_or((rest, ""));
    let mut snake = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    let tail = tail
        .replace("startedAt", "started_at")
        .replace("endedAt", "ended_at");
    format!("invalid sidecar: {snake}:{tail}")
}

/// Deletes the sidecar-born drives and runs whose sidecar, in the pass's scope (`prefixes`),
/// is not among the listed `sidecar_keys`.
pub(super) async fn remove_orphaned_records(
    catalog: &Catalog,
    bucket: &str,
    sidecar_keys: &KeySet,
    prefixes: &[String],
    touched: &mut Touched,
) -> Result<(), SyncError> {
    let drives = drive::Entity::find()
        .filter(drive::Column::Bucket.eq(bucket))
        .filter(drive::Column::Source.eq(RecordSource::Sidecar))
        .all(&catalog.db)
        .await?;
    for drive in drives {
        let sidecar = format!("{}drive.json", drive.prefix);
        if !in_scope(prefixes, &sidecar) || sidecar_keys.contains(&sidecar) {
            continue;
        }
        let scenarios = catalog::drive_scenarios(&catalog.db, &drive.id).await?;
        let txn = catalog.db.begin().await?;
        drive::Entity::delete_by_id(drive.id.clone())
            .exec(&txn)
            .await?;
        let mut changes = vec![(InputKind::Drive, drive.id.as_str())];
        changes.extend(
            scenarios
                .iter()
                .map(|scenario| (InputKind::Scenario, scenario.id.as_str())),
        );
        crate::feed::append(&txn, &changes).await?;
        txn.commit().await?;
        touched.drives.remove(&drive.id);
    }
    let runs = run::Entity::find()
        .filter(run::Column::Bucket.eq(bucket))
        .filter(run::Column::Source.eq(RecordSource::Sidecar))
        .all(&catalog.db)
        .await?;
    for run in runs {
        let sidecar = format!("{}run.json", run.prefix);
        if !in_scope(prefixes, &sidecar) || sidecar_keys.contains(&sidecar) {
            continue;
        }
        let txn = catalog.db.begin().await?;
        run::Entity::delete_by_id(run.id.clone()).exec(&txn).await?;
        crate::feed::append(&txn, &[(InputKind::Run, run.id.as_str())]).await?;
        txn.commit().await?;
        touched.runs.remove(&run.id);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The sidecars' formats

#[derive(Debug, Deserialize)]
struct DriveSidecar {
    drive_id: String,
    vehicle: String,
    city: Option<String>,
    route: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    distance_km: Option<f64>,
    software_version: Option<String>,
    weather: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    events: Vec<SidecarEvent>,
    #[serde(default)]
    scenarios: Vec<SidecarSpan>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct SidecarEvent {
    at: DateTime<Utc>,
    kind: String,
    label: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SidecarSpan {
    label: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RunSidecar {
    run_id: String,
    kind: String,
    pipeline: String,
    commit: Option<String>,
    status: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    input_windows: Vec<SidecarWindow>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// One of `run.json`'s `input_windows[]`: a drive and a half-open window of its time.
#[derive(Debug, Deserialize)]
struct SidecarWindow {
    drive_id: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("invalid sidecar: {err}"))
}

fn folder_of(key: &str) -> String {
    key.rfind('/')
        .map_or_else(String::new, |i| key[..=i].to_owned())
}

async fn read_drive_sidecar(
    reader: Reader,
    meta: ObjectMeta,
) -> (ObjectMeta, Result<DriveRecord, String>) {
    let record = drive_record(&reader, &meta).await;
    (meta, record)
}

async fn read_run_sidecar(
    reader: Reader,
    meta: ObjectMeta,
) -> (ObjectMeta, Result<RunRecord, String>) {
    let record = run_record(&reader, &meta).await;
    (meta, record)
}

async fn drive_record(reader: &Reader, meta: &ObjectMeta) -> Result<DriveRecord, String> {
    let body = reader.read_whole(meta, MAX_SIDECAR_BYTES).await?;
    let sidecar: DriveSidecar = parse_json(&body)?;
    Ok(DriveRecord {
        id: sidecar.drive_id,
        vehicle: sidecar.vehicle,
        city: sidecar.city,
        route: sidecar.route,
        started_at: sidecar.started_at,
        ended_at: sidecar.ended_at,
        distance_km: sidecar.distance_km,
        software_version: sidecar.software_version,
        weather: sidecar.weather,
        tags: sidecar.tags,
        events: sidecar
            .events
            .into_iter()
            .map(|e| EventRecord {
                at: e.at,
                kind: e.kind,
                label: e.label,
            })
            .collect(),
        scenarios: sidecar
            .scenarios
            .into_iter()
            .map(|s| SpanRecord {
                label: s.label,
                start: s.start,
                end: s.end,
                tags: s.tags,
            })
            .collect(),
        bucket: Some(reader.bucket.clone()),
        prefix: Some(folder_of(&meta.key)),
        extra: Some(serde_json::Value::Object(sidecar.extra)),
        sidecar_etag: Some(meta.etag.clone()),
    })
}

async fn run_record(reader: &Reader, meta: &ObjectMeta) -> Result<RunRecord, String> {
    let body = reader.read_whole(meta, MAX_SIDECAR_BYTES).await?;
    let sidecar: RunSidecar = parse_json(&body)?;
    let kind: RunKind = sidecar
        .kind
        .parse()
        .map_err(|err| format!("invalid sidecar: kind: {err}"))?;
    let status: RunStatus = sidecar
        .status
        .parse()
        .map_err(|err| format!("invalid sidecar: status: {err}"))?;
    Ok(RunRecord {
        id: sidecar.run_id,
        kind,
        pipeline: sidecar.pipeline,
        commit: sidecar.commit,
        status,
        started_at: sidecar.started_at,
        finished_at: sidecar.finished_at,
        inputs: sidecar.inputs,
        input_windows: sidecar
            .input_windows
            .into_iter()
            .map(|w| WindowRecord {
                drive_id: w.drive_id,
                start: w.start,
                end: w.end,
            })
            .collect(),
        tags: sidecar.tags,
        metrics: None,
        bucket: Some(reader.bucket.clone()),
        prefix: Some(folder_of(&meta.key)),
        extra: Some(serde_json::Value::Object(sidecar.extra)),
        sidecar_etag: Some(meta.etag.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_errors_use_sidecar_field_names() {
        assert_eq!(
            sidecar_terms("input.endedAt: 2026-01-01T00:00:00+00:00 is before startedAt 2026-01-02T00:00:00+00:00"),
            "invalid sidecar: ended_at: 2026-01-01T00:00:00+00:00 is before started_at 2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            sidecar_terms("input.scenarios[0].end: x"),
            "invalid sidecar: scenarios[0].end: x"
        );
    }

    #[test]
    fn sidecars_are_recognised_by_name_under_their_prefix() {
        assert!(is_sidecar(
            "drives/2026-11-01/gz-1/d1/drive.json",
            "drives/",
            "drive.json"
        ));
        assert!(!is_sidecar(
            "drives/2026-11-01/gz-1/d1/old-drive.json",
            "drives/",
            "drive.json"
        ));
        assert!(!is_sidecar("runs/r1/drive.json", "drives/", "drive.json"));
    }
}
