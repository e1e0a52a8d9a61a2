//! Input types of the contract, converted into the catalog's plain records.

use async_graphql::{InputObject, Json, ID};
use chrono::{DateTime, Utc};

use super::scalars::{RunKind, RunStatus};
use milepost_indexer::catalog::{DriveRecord, EventRecord, RunRecord, ScenarioTag, SpanRecord};

#[derive(InputObject, Debug)]
pub struct DriveEventInput {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub label: Option<String>,
}

#[derive(InputObject, Debug)]
pub struct ScenarioSpanInput {
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tags: Option<Vec<String>>,
}

#[derive(InputObject, Debug)]
pub struct RegisterDriveInput {
    pub id: ID,
    pub vehicle: String,
    pub city: Option<String>,
    pub route: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub distance_km: Option<f64>,
    pub software_version: Option<String>,
    pub weather: Option<String>,
    pub tags: Option<Vec<String>>,
    pub events: Option<Vec<DriveEventInput>>,
    pub scenarios: Option<Vec<ScenarioSpanInput>>,
    /// Where its files are; default: the catalog bucket.
    pub bucket: Option<String>,
    /// Default: the drives/ layout.
    pub prefix: Option<String>,
}

impl From<RegisterDriveInput> for DriveRecord {
    fn from(input: RegisterDriveInput) -> Self {
        DriveRecord {
            id: input.id.0,
            vehicle: input.vehicle,
            city: input.city,
            route: input.route,
            started_at: input.started_at,
            ended_at: input.ended_at,
            distance_km: input.distance_km,
            software_version: input.software_version,
            weather: input.weather,
            tags: input.tags.unwrap_or_default(),
            events: input
                .events
                .unwrap_or_default()
                .into_iter()
                .map(|e| EventRecord {
                    at: e.at,
                    kind: e.kind,
                    label: e.label,
                })
                .collect(),
            scenarios: input
                .scenarios
                .unwrap_or_default()
                .into_iter()
                .map(|s| SpanRecord {
                    label: s.label,
                    start: s.start,
                    end: s.end,
                    tags: s.tags.unwrap_or_default(),
                })
                .collect(),
            bucket: input.bucket,
            prefix: input.prefix,
            extra: None,
            sidecar_etag: None,
        }
    }
}

#[derive(InputObject, Debug)]
pub struct RegisterRunInput {
    pub id: ID,
    pub kind: RunKind,
    pub pipeline: String,
    pub commit: Option<String>,
    pub status: RunStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub inputs: Option<Vec<ID>>,
    /// Windows `[start, end)` of drives the run read, beside the whole entities of `inputs`.
    pub input_windows: Option<Vec<super::lineage::DriveWindowInput>>,
    pub tags: Option<Vec<String>>,
    pub metrics: Option<Json<serde_json::Value>>,
    pub bucket: Option<String>,
    /// Where its outputs are; default runs/<id>/.
    pub prefix: Option<String>,
}

impl From<RegisterRunInput> for RunRecord {
    fn from(input: RegisterRunInput) -> Self {
        RunRecord {
            id: input.id.0,
            kind: input.kind.into(),
            pipeline: input.pipeline,
            commit: input.commit,
            status: input.status.into(),
            started_at: input.started_at,
            finished_at: input.finished_at,
            inputs: input
                .inputs
                .unwrap_or_default()
                .into_iter()
                .map(|id| id.0)
                .collect(),
            input_windows: input
                .input_windows
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
            tags: input.tags.unwrap_or_default(),
            metrics: input.metrics.map(|m| m.0),
            bucket: input.bucket,
            prefix: input.prefix,
            extra: None,
            sidecar_etag: None,
        }
    }
}

#[derive(InputObject, Debug)]
pub struct TagScenarioInput {
    pub drive_id: ID,
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tags: Option<Vec<String>>,
    pub description: Option<String>,
}

impl From<TagScenarioInput> for ScenarioTag {
    fn from(input: TagScenarioInput) -> Self {
        ScenarioTag {
            drive_id: input.drive_id.0,
            label: input.label,
            start: input.start,
            end: input.end,
            tags: input.tags.unwrap_or_default(),
            description: input.description,
        }
    }
}
