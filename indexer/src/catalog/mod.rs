//! The catalog's write and read operations, independent of GraphQL: registration of drives,
//! runs and scenarios (validated, idempotent on id), and the reads their pages need.
//!
//! (Over 600 lines: registration of drives, runs and scenarios and the reads of their pages over one set of tables; issue "Catalog at fleet scale" reworks writes into batches here.)

mod service;
pub mod validate;
mod windows;

pub use service::Catalog;
pub(crate) use service::DOCUMENT_BATCH;
pub use windows::{check_windows, run_windows, Window, WindowRecord};

use chrono::{DateTime, SecondsFormat, Utc};
use milepost_schema::entity::{drive, drive_event, object, run, run_input, scenario};
use milepost_schema::enums::{InputKind, RecordSource, RunKind, RunStatus};
use milepost_schema::ids;
use milepost_schema::DbError;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};
use sha2::{Digest, Sha256};

use crate::error::{CatalogError, CatalogResult};
use validate::{MAX_DESCRIPTION_LEN, MAX_TEXT_LEN};

/// Where records live in S3 when the caller does not say.
#[derive(Clone, Debug)]
pub struct Layout {
    pub bucket: String,
    pub drives_prefix: String,
    pub runs_prefix: String,
}

impl Layout {
    /// `drives/<YYYY-MM-DD>/<vehicle>/<drive_id>/` (design.md's layout).
    pub fn drive_prefix(&self, started_at: DateTime<Utc>, vehicle: &str, id: &str) -> String {
        format!(
            "{}{}/{vehicle}/{id}/",
            self.drives_prefix,
            started_at.format("%Y-%m-%d")
        )
    }

    pub fn run_prefix(&self, id: &str) -> String {
        format!("{}{id}/", self.runs_prefix)
    }
}

#[derive(Clone, Debug)]
pub struct EventRecord {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub label: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct DriveRecord {
    pub id: String,
    pub vehicle: String,
    pub city: Option<String>,
    pub route: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub distance_km: Option<f64>,
    pub software_version: Option<String>,
    pub weather: Option<String>,
    pub tags: Vec<String>,
    pub events: Vec<EventRecord>,
    pub scenarios: Vec<SpanRecord>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    /// Sidecar fields without a column of their own; `None` keeps what is stored.
    pub extra: Option<serde_json::Value>,
    /// ETag of the sidecar the record was read from.
    pub sidecar_etag: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RunRecord {
    pub id: String,
    pub kind: RunKind,
    pub pipeline: String,
    pub commit: Option<String>,
    pub status: RunStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub inputs: Vec<String>,
    /// Time windows of drives the run read, beside the whole entities of `inputs`.
    pub input_windows: Vec<WindowRecord>,
    pub tags: Vec<String>,
    pub metrics: Option<serde_json::Value>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    /// Sidecar fields without a column of their own; `None` keeps what is stored.
    pub extra: Option<serde_json::Value>,
    pub sidecar_etag: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ScenarioTag {
    pub drive_id: String,
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tags: Vec<String>,
    pub description: Option<String>,
}

fn db<T>(result: Result<T, sea_orm::DbErr>) -> CatalogResult<T> {
    result.map_err(|err| CatalogError::from(DbError::from(err)))
}

/// Scenario ids are derived from what identifies the span, so registering the same drive twice
/// (or tagging the same span twice) updates the scenario instead of duplicating it.
pub fn scenario_id(
    drive_id: &str,
    label: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        drive_id,
        label,
        &start.to_rfc3339_opts(SecondsFormat::Micros, true),
        &end.to_rfc3339_opts(SecondsFormat::Micros, true),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("sc-{}", &hex::encode(hasher.finalize())[..16])
}

fn validate_drive(layout: &Layout, record: &DriveRecord) -> CatalogResult<(String, String)> {
    validate::identifier("input.id", &record.id)?;
    validate::text("input.vehicle", &record.vehicle, MAX_TEXT_LEN, true)?;
    validate::identifier("input.vehicle", record.vehicle.trim())?;
    validate::optional_text("input.city", record.city.as_deref(), MAX_TEXT_LEN)?;
    validate::optional_text("input.route", record.route.as_deref(), MAX_TEXT_LEN)?;
    validate::optional_text(
        "input.softwareVersion",
        record.software_version.as_deref(),
        MAX_TEXT_LEN,
    )?;
    validate::optional_text("input.weather", record.weather.as_deref(), MAX_TEXT_LEN)?;
    validate::time_order(
        "input.endedAt",
        record.started_at,
        record.ended_at,
        "startedAt",
    )?;
    validate::non_negative("input.distanceKm", record.distance_km)?;
    validate::list_len("input.events", &record.events)?;
    validate::list_len("input.scenarios", &record.scenarios)?;
    for (i, event) in record.events.iter().enumerate() {
        validate::text(
            &format!("input.events[{i}].kind"),
            &event.kind,
            MAX_TEXT_LEN,
            true,
        )?;
        validate::optional_text(
            &format!("input.events[{i}].label"),
            event.label.as_deref(),
            MAX_TEXT_LEN,
        )?;
        validate::within(
            &format!("input.events[{i}].at"),
            event.at,
            record.started_at,
            record.ended_at,
        )?;
    }
    for (i, span) in record.scenarios.iter().enumerate() {
        validate::text(
            &format!("input.scenarios[{i}].label"),
            &span.label,
            MAX_TEXT_LEN,
            true,
        )?;
        validate::time_order(
            &format!("input.scenarios[{i}].end"),
            span.start,
            span.end,
            "start",
        )?;
        validate::within(
            &format!("input.scenarios[{i}].start"),
            span.start,
            record.started_at,
            record.ended_at,
        )?;
        validate::within(
            &format!("input.scenarios[{i}].end"),
            span.end,
            record.started_at,
            record.ended_at,
        )?;
    }
    let bucket = record
        .bucket
        .clone()
        .unwrap_or_else(|| layout.bucket.clone());
    validate::bucket("input.bucket", &bucket)?;
    let prefix = match &record.prefix {
        Some(prefix) => validate::prefix("input.prefix", prefix)?,
        None => layout.drive_prefix(record.started_at, record.vehicle.trim(), &record.id),
    };
    Ok((bucket, prefix))
}

/// Creates or updates a drive with its events and declared scenario spans, in one transaction.
pub async fn register_drive(
    conn: &DatabaseConnection,
    layout: &Layout,
    mut record: DriveRecord,
    source: RecordSource,
) -> CatalogResult<drive::Model> {
    record.tags = validate::tags("input.tags", Some(&record.tags))?;
    for (i, span) in record.scenarios.iter_mut().enumerate() {
        span.tags = validate::tags(&format!("input.scenarios[{i}].tags"), Some(&span.tags))?;
    }
    let (bucket, prefix) = validate_drive(layout, &record)?;
    let now = Utc::now();
    let txn = db(conn.begin().await)?;
    let model = drive::ActiveModel {
        id: Set(record.id.clone()),
        vehicle: Set(record.vehicle.trim().to_owned()),
        city: Set(record.city.clone()),
        route: Set(record.route.clone()),
        started_at: Set(record.started_at),
        ended_at: Set(record.ended_at),
        distance_km: Set(record.distance_km),
        software_version: Set(record.software_version.clone()),
        weather: Set(record.weather.clone()),
        tags: Set(serde_json::json!(record.tags)),
        extra: Set(record
            .extra
            .clone()
            .unwrap_or_else(|| serde_json::json!({}))),
        topics: Set(serde_json::json!([])),
        bucket: Set(bucket),
        prefix: Set(prefix),
        source: Set(source),
        sidecar_etag: Set(record.sidecar_etag.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let mut kept_fresh = Vec::new();
    if record.extra.is_some() {
        kept_fresh.push(drive::Column::Extra);
    }
    if record.sidecar_etag.is_some() {
        kept_fresh.push(drive::Column::SidecarEtag);
    }
    db(drive::Entity::insert(model)
        .on_conflict(
            OnConflict::column(drive::Column::Id)
                .update_columns(kept_fresh)
                .update_columns([
                    drive::Column::Vehicle,
                    drive::Column::City,
                    drive::Column::Route,
                    drive::Column::StartedAt,
                    drive::Column::EndedAt,
                    drive::Column::DistanceKm,
                    drive::Column::SoftwareVersion,
                    drive::Column::Weather,
                    drive::Column::Tags,
                    drive::Column::Bucket,
                    drive::Column::Prefix,
                    drive::Column::Source,
                    drive::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await)?;

    db(drive_event::Entity::delete_many()
        .filter(drive_event::Column::DriveId.eq(&record.id))
        .exec(&txn)
        .await)?;
    if !record.events.is_empty() {
        let events =
            record
                .events
                .iter()
                .enumerate()
                .map(|(position, event)| drive_event::ActiveModel {
                    drive_id: Set(record.id.clone()),
                    position: Set(position as i32),
                    at: Set(event.at),
                    kind: Set(event.kind.trim().to_owned()),
                    label: Set(event.label.clone()),
                    ..Default::default()
                });
        db(drive_event::Entity::insert_many(events)
            .exec_without_returning(&txn)
            .await)?;
    }

    // The drive's own spans are replaced as a set; scenarios tagged later through
    // `tagScenario` (source Api) are left alone.
    let span_ids: Vec<String> = record
        .scenarios
        .iter()
        .map(|s| scenario_id(&record.id, s.label.trim(), s.start, s.end))
        .collect();
    db(scenario::Entity::delete_many()
        .filter(scenario::Column::DriveId.eq(&record.id))
        .filter(scenario::Column::Source.eq(RecordSource::Sidecar))
        .filter(scenario::Column::Id.is_not_in(span_ids.clone()))
        .exec(&txn)
        .await)?;
    for (span, id) in record.scenarios.iter().zip(span_ids) {
        upsert_scenario(
            &txn,
            scenario::ActiveModel {
                id: Set(id),
                drive_id: Set(record.id.clone()),
                label: Set(span.label.trim().to_owned()),
                tags: Set(serde_json::json!(span.tags)),
                start_time: Set(span.start),
                end_time: Set(span.end),
                description: Set(None),
                source: Set(RecordSource::Sidecar),
                created_at: Set(now),
                updated_at: Set(now),
            },
        )
        .await?;
    }
    crate::feed::append(&txn, &[(InputKind::Drive, &record.id)]).await?;
    db(txn.commit().await)?;
    get_drive(conn, &record.id)
        .await?
        .ok_or_else(|| CatalogError::not_found(format!("drive {:?}", record.id)))
}

async fn upsert_scenario(
    conn: &impl ConnectionTrait,
    model: scenario::ActiveModel,
) -> CatalogResult<()> {
    db(scenario::Entity::insert(model)
        .on_conflict(
            OnConflict::column(scenario::Column::Id)
                .update_columns([
                    scenario::Column::Label,
                    scenario::Column::Tags,
                    scenario::Column::StartTime,
                    scenario::Column::EndTime,
                    scenario::Column::Description,
                    scenario::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await)?;
    Ok(())
}

/// Creates or updates a run; every input must name a drive, scenario or run in the catalog,
/// and every input window a non-empty window that meets its drive when the drive is cataloged.
pub async fn register_run(
    conn: &DatabaseConnection,
    layout: &Layout,
    mut record: RunRecord,
    source: RecordSource,
) -> CatalogResult<run::Model> {
    validate::identifier("input.id", &record.id)?;
    validate::text("input.pipeline", &record.pipeline, MAX_TEXT_LEN, true)?;
    validate::optional_text("input.commit", record.commit.as_deref(), MAX_TEXT_LEN)?;
    record.tags = validate::tags("input.tags", Some(&record.tags))?;
    if let (Some(started), Some(finished)) = (record.started_at, record.finished_at) {
        validate::time_order("input.finishedAt", started, finished, "startedAt")?;
    }
    validate::list_len("input.inputs", &record.inputs)?;
    if let Some(metrics) = &record.metrics {
        if !metrics.is_object() {
            return Err(CatalogError::bad_input(
                "input.metrics",
                "expected a JSON object of metric name to value",
            ));
        }
    }
    let bucket = record
        .bucket
        .clone()
        .unwrap_or_else(|| layout.bucket.clone());
    validate::bucket("input.bucket", &bucket)?;
    let prefix = match &record.prefix {
        Some(prefix) => validate::prefix("input.prefix", prefix)?,
        None => layout.run_prefix(&record.id),
    };

    let mut inputs = Vec::with_capacity(record.inputs.len());
    for (i, input_id) in record.inputs.iter().enumerate() {
        let field = format!("input.inputs[{i}]");
        if input_id == &record.id {
            return Err(CatalogError::bad_input(
                field,
                "a run cannot be its own input",
            ));
        }
        let kind = resolve_input_kind(conn, input_id).await?.ok_or_else(|| {
            CatalogError::bad_input(
                &field,
                format!("unknown input id {input_id:?}: no drive, scenario or run has it"),
            )
        })?;
        if !inputs.iter().any(|(id, _)| id == input_id) {
            inputs.push((input_id.clone(), kind));
        }
    }
    let windows = check_windows(conn, "input.inputWindows", &record.input_windows).await?;

    let now = Utc::now();
    let txn = db(conn.begin().await)?;
    let model = run::ActiveModel {
        id: Set(record.id.clone()),
        kind: Set(record.kind),
        pipeline: Set(record.pipeline.trim().to_owned()),
        commit: Set(record.commit.clone()),
        status: Set(record.status),
        started_at: Set(record.started_at),
        finished_at: Set(record.finished_at),
        tags: Set(serde_json::json!(record.tags)),
        metrics: Set(record.metrics.clone()),
        extra: Set(record
            .extra
            .clone()
            .unwrap_or_else(|| serde_json::json!({}))),
        bucket: Set(bucket),
        prefix: Set(prefix),
        source: Set(source),
        sidecar_etag: Set(record.sidecar_etag.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let mut kept_fresh = Vec::new();
    if record.extra.is_some() {
        kept_fresh.push(run::Column::Extra);
    }
    if record.sidecar_etag.is_some() {
        kept_fresh.push(run::Column::SidecarEtag);
    }
    if record.metrics.is_some() {
        kept_fresh.push(run::Column::Metrics);
    }
    db(run::Entity::insert(model)
        .on_conflict(
            OnConflict::column(run::Column::Id)
                .update_columns(kept_fresh)
                .update_columns([
                    run::Column::Kind,
                    run::Column::Pipeline,
                    run::Column::Commit,
                    run::Column::Status,
                    run::Column::StartedAt,
                    run::Column::FinishedAt,
                    run::Column::Tags,
                    run::Column::Bucket,
                    run::Column::Prefix,
                    run::Column::Source,
                    run::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await)?;
    db(run_input::Entity::delete_many()
        .filter(run_input::Column::RunId.eq(&record.id))
        .exec(&txn)
        .await)?;
    if !inputs.is_empty() {
        let rows = inputs
            .into_iter()
            .enumerate()
            .map(|(position, (input_id, kind))| run_input::ActiveModel {
                run_id: Set(record.id.clone()),
                position: Set(position as i32),
                input_id: Set(input_id),
                input_kind: Set(kind),
            });
        db(run_input::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await)?;
    }
    windows::replace_windows(&txn, &record.id, windows).await?;
    crate::feed::append(&txn, &[(InputKind::Run, &record.id)]).await?;
    db(txn.commit().await)?;
    get_run(conn, &record.id)
        .await?
        .ok_or_else(|| CatalogError::not_found(format!("run {:?}", record.id)))
}

pub async fn resolve_input_kind(
    conn: &DatabaseConnection,
    id: &str,
) -> CatalogResult<Option<InputKind>> {
    if db(drive::Entity::find_by_id(id).count(conn).await)? > 0 {
        return Ok(Some(InputKind::Drive));
    }
    if db(scenario::Entity::find_by_id(id).count(conn).await)? > 0 {
        return Ok(Some(InputKind::Scenario));
    }
    if db(run::Entity::find_by_id(id).count(conn).await)? > 0 {
        return Ok(Some(InputKind::Run));
    }
    Ok(None)
}

/// Tags a span of a drive as a scenario; the same span and label again updates it.
pub async fn tag_scenario(
    conn: &DatabaseConnection,
    mut tag: ScenarioTag,
) -> CatalogResult<scenario::Model> {
    validate::identifier("input.driveId", &tag.drive_id)?;
    validate::text("input.label", &tag.label, MAX_TEXT_LEN, true)?;
    validate::optional_text(
        "input.description",
        tag.description.as_deref(),
        MAX_DESCRIPTION_LEN,
    )?;
    tag.tags = validate::tags("input.tags", Some(&tag.tags))?;
    validate::time_order("input.end", tag.start, tag.end, "start")?;
    let drive = get_drive(conn, &tag.drive_id).await?.ok_or_else(|| {
        CatalogError::bad_input("input.driveId", format!("unknown drive {:?}", tag.drive_id))
    })?;
    validate::within("input.start", tag.start, drive.started_at, drive.ended_at)?;
    validate::within("input.end", tag.end, drive.started_at, drive.ended_at)?;
    let label = tag.label.trim().to_owned();
    let id = scenario_id(&drive.id, &label, tag.start, tag.end);
    let now = Utc::now();
    let txn = db(conn.begin().await)?;
    upsert_scenario(
        &txn,
        scenario::ActiveModel {
            id: Set(id.clone()),
            drive_id: Set(drive.id),
            label: Set(label),
            tags: Set(serde_json::json!(tag.tags)),
            start_time: Set(tag.start),
            end_time: Set(tag.end),
            description: Set(tag.description),
            source: Set(RecordSource::Api),
            created_at: Set(now),
            updated_at: Set(now),
        },
    )
    .await?;
    crate::feed::append(&txn, &[(InputKind::Scenario, &id)]).await?;
    db(txn.commit().await)?;
    get_scenario(conn, &id)
        .await?
        .ok_or_else(|| CatalogError::not_found(format!("scenario {id:?}")))
}

pub async fn get_drive(
    conn: &impl ConnectionTrait,
    id: &str,
) -> CatalogResult<Option<drive::Model>> {
    db(drive::Entity::find_by_id(id).one(conn).await)
}

/// A drive with, when asked for, its events and scenarios (in the orders of
/// [`drive_events`] and [`drive_scenarios`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DrivePage {
    pub drive: drive::Model,
    pub events: Option<Vec<drive_event::Model>>,
    pub scenarios: Option<Vec<scenario::Model>>,
}

/// The drive page in as few round trips as the backend makes worthwhile: on PostgreSQL one
/// statement (events and scenarios aggregated as JSON next to the drive row), on SQLite, which
/// runs in-process, the plain queries.
pub async fn get_drive_page(
    conn: &DatabaseConnection,
    id: &str,
    with_events: bool,
    with_scenarios: bool,
) -> CatalogResult<Option<DrivePage>> {
    if conn.get_database_backend() != DbBackend::Postgres || !(with_events || with_scenarios) {
        let Some(drive) = get_drive(conn, id).await? else {
            return Ok(None);
        };
        let events = match with_events {
            true => Some(drive_events(conn, id).await?),
            false => None,
        };
        let scenarios = match with_scenarios {
            true => Some(drive_scenarios(conn, id).await?),
            false => None,
        };
        return Ok(Some(DrivePage {
            drive,
            events,
            scenarios,
        }));
    }
    // `ORDER BY` inside the aggregates keeps the orders of `drive_events` / `drive_scenarios`.
    let sql = format!(
        "SELECT d.*, {events} AS page_events, {scenarios} AS page_scenarios \
         FROM drives d WHERE d.id = $1",
        events = if with_events {
            "(SELECT COALESCE(json_agg(json_build_array(e.id, e.position, e.at, e.kind, e.label) \
             ORDER BY e.position), '[]') FROM drive_events e WHERE e.drive_id = d.id)"
        } else {
            "NULL::json"
        },
        scenarios = if with_scenarios {
            "(SELECT COALESCE(json_agg(s ORDER BY s.start_time, s.id), '[]') \
             FROM scenarios s WHERE s.drive_id = d.id)"
        } else {
            "NULL::json"
        },
    );
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, [id.into()]);
    let Some(row) = db(conn.query_one(statement).await)? else {
        return Ok(None);
    };
    let drive = db(drive::Model::from_query_result(&row, ""))?;
    let events: Option<serde_json::Value> = db(row.try_get("", "page_events"))?;
    let scenarios: Option<serde_json::Value> = db(row.try_get("", "page_scenarios"))?;
    let events = match events {
        Some(json) => Some(
            decode_json::<Vec<EventRow>>(json, "drive_events")?
                .into_iter()
                .map(|(id, position, at, kind, label)| drive_event::Model {
                    id,
                    drive_id: drive.id.clone(),
                    position,
                    at,
                    kind,
                    label,
                })
                .collect(),
        ),
        None => None,
    };
    let scenarios = match scenarios {
        Some(json) => Some(
            decode_json::<Vec<ScenarioRow>>(json, "scenarios")?
                .into_iter()
                .map(ScenarioRow::into_model)
                .collect::<CatalogResult<Vec<_>>>()?,
        ),
        None => None,
    };
    Ok(Some(DrivePage {
        drive,
        events,
        scenarios,
    }))
}

/// A `drive_events` row as `json_build_array(id, position, at, kind, label)`.
type EventRow = (i64, i32, DateTime<Utc>, String, Option<String>);

/// A `scenarios` row as PostgreSQL's `row_to_json` writes it.
#[derive(serde::Deserialize)]
struct ScenarioRow {
    id: String,
    drive_id: String,
    label: String,
    tags: serde_json::Value,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    description: Option<String>,
    source: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ScenarioRow {
    fn into_model(self) -> CatalogResult<scenario::Model> {
        let source = self.source.parse::<RecordSource>().map_err(|_| {
            CatalogError::from(DbError::from(sea_orm::DbErr::Json(format!(
                "scenarios.source: unknown value {:?}",
                self.source
            ))))
        })?;
        Ok(scenario::Model {
            id: self.id,
            drive_id: self.drive_id,
            label: self.label,
            tags: self.tags,
            start_time: self.start_time,
            end_time: self.end_time,
            description: self.description,
            source,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(
    json: serde_json::Value,
    table: &str,
) -> CatalogResult<T> {
    serde_json::from_value(json).map_err(|err| {
        CatalogError::from(DbError::from(sea_orm::DbErr::Json(format!(
            "aggregated {table} rows: {err}"
        ))))
    })
}

pub async fn get_run(conn: &impl ConnectionTrait, id: &str) -> CatalogResult<Option<run::Model>> {
    db(run::Entity::find_by_id(id).one(conn).await)
}

pub async fn get_scenario(
    conn: &impl ConnectionTrait,
    id: &str,
) -> CatalogResult<Option<scenario::Model>> {
    db(scenario::Entity::find_by_id(id).one(conn).await)
}

pub async fn drive_events(
    conn: &DatabaseConnection,
    drive_id: &str,
) -> CatalogResult<Vec<drive_event::Model>> {
    db(drive_event::Entity::find()
        .filter(drive_event::Column::DriveId.eq(drive_id))
        .order_by_asc(drive_event::Column::Position)
        .all(conn)
        .await)
}

pub async fn drive_scenarios(
    conn: &DatabaseConnection,
    drive_id: &str,
) -> CatalogResult<Vec<scenario::Model>> {
    db(scenario::Entity::find()
        .filter(scenario::Column::DriveId.eq(drive_id))
        .order_by_asc(scenario::Column::StartTime)
        .order_by_asc(scenario::Column::Id)
        .all(conn)
        .await)
}

pub async fn run_inputs(
    conn: &DatabaseConnection,
    run_id: &str,
) -> CatalogResult<Vec<run_input::Model>> {
    db(run_input::Entity::find()
        .filter(run_input::Column::RunId.eq(run_id))
        .order_by_asc(run_input::Column::Position)
        .all(conn)
        .await)
}

/// Which catalog entity owns a set of objects.
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    Drive(&'a str),
    Run(&'a str),
}

impl Owner<'_> {
    fn condition(self) -> sea_orm::Condition {
        let owned = match self {
            Owner::Drive(id) => object::Column::DriveId.eq(id),
            Owner::Run(id) => object::Column::RunId.eq(id),
        };
        sea_orm::Condition::all()
            .add(owned)
            .add(object::Column::DeletedAt.is_null())
    }
}

/// Objects held in this office's cache now: same bucket, key and ETag.
fn cached_condition() -> sea_orm::sea_query::SimpleExpr {
    Expr::cust(
        r#"EXISTS (SELECT 1 FROM "cache_entries" c WHERE c."bucket" = "objects"."bucket" AND c."key" = "objects"."key" AND c."etag" = "objects"."etag" AND c."state" <> 'staging')"#,
    )
}

/// One page of an owner's live objects, in id order, plus whether more follow.
pub async fn objects_page(
    conn: &DatabaseConnection,
    owner: Owner<'_>,
    after_id: Option<i64>,
    limit: u64,
) -> CatalogResult<(Vec<object::Model>, bool)> {
    let mut query = object::Entity::find()
        .filter(owner.condition())
        .order_by_asc(object::Column::Id)
        .limit(limit + 1);
    if let Some(after) = after_id {
        query = query.filter(object::Column::Id.gt(after));
    }
    let mut rows = db(query.all(conn).await)?;
    let has_next = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, has_next))
}

pub async fn objects_count(conn: &DatabaseConnection, owner: Owner<'_>) -> CatalogResult<u64> {
    db(object::Entity::find()
        .filter(owner.condition())
        .count(conn)
        .await)
}

/// Total bytes of an owner's live objects; with `cached_only`, of those in the office cache.
pub async fn objects_bytes(
    conn: &DatabaseConnection,
    owner: Owner<'_>,
    cached_only: bool,
) -> CatalogResult<i64> {
    let mut query = object::Entity::find()
        .select_only()
        .column_as(
            Expr::cust(r#"CAST(COALESCE(SUM("objects"."size"), 0) AS BIGINT)"#),
            "total",
        )
        .filter(owner.condition());
    if cached_only {
        query = query.filter(cached_condition());
    }
    let total: Option<i64> = db(query.into_tuple().one(conn).await)?;
    Ok(total.unwrap_or(0))
}

/// For a page of objects, which are held in the office cache.
pub async fn cached_flags(
    conn: &DatabaseConnection,
    objects: &[object::Model],
) -> CatalogResult<Vec<bool>> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = objects.iter().map(|o| o.id).collect();
    let cached: Vec<i64> = db(object::Entity::find()
        .select_only()
        .column(object::Column::Id)
        .filter(object::Column::Id.is_in(ids))
        .filter(cached_condition())
        .into_tuple()
        .all(conn)
        .await)?;
    Ok(objects.iter().map(|o| cached.contains(&o.id)).collect())
}

/// Encodes and decodes the opaque cursors of object pages.
pub fn object_cursor(id: i64) -> String {
    ids::encode_cursor("obj", id)
}

pub fn parse_object_cursor(cursor: &str) -> CatalogResult<i64> {
    ids::decode_cursor("obj", cursor)
        .ok_or_else(|| CatalogError::bad_input("after", "not a cursor returned by this connection"))
}
