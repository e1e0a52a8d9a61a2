//! Output types of the contract backed by catalog rows. Fields that need more rows (events,
//! objects, byte totals) are resolved only when a query selects them.

use async_graphql::{Context, Interface, Json, Object, SimpleObject, Union, ID};
use chrono::{DateTime, Utc};
use milepost_schema::entity::{drive, drive_event, object, run, scenario};
use milepost_schema::enums::InputKind;

use super::scalars::{Long, Role, RunKind, RunStatus};
use super::{page_limit, state};
use crate::auth::Principal as AuthPrincipal;
use crate::error::ApiResult;
use crate::error::GqlResultExt;
use async_graphql::Result as GqlResult;
use milepost_indexer::catalog::{self, Owner};

fn string_list(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(SimpleObject, Debug)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject, Debug)]
#[graphql(name = "Principal")]
pub struct PrincipalView {
    pub name: String,
    pub role: Role,
}

impl From<&AuthPrincipal> for PrincipalView {
    fn from(p: &AuthPrincipal) -> Self {
        PrincipalView {
            name: p.name.clone(),
            role: p.role.into(),
        }
    }
}

#[derive(SimpleObject, Debug)]
pub struct DriveEvent {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub label: Option<String>,
}

impl From<drive_event::Model> for DriveEvent {
    fn from(row: drive_event::Model) -> Self {
        DriveEvent {
            at: row.at,
            kind: row.kind,
            label: row.label,
        }
    }
}

#[derive(SimpleObject, Debug)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    pub size: Long,
    pub etag: String,
    pub last_modified: Option<DateTime<Utc>>,
    pub cached: bool,
    /// What sync read from the file: an MCAP summary (topics, message counts, time range,
    /// chunks) or a Parquet footer (schema, rows, row groups); null for other files.
    pub metadata: Option<Json<serde_json::Value>>,
}

#[derive(SimpleObject, Debug)]
pub struct ObjectEdge {
    pub cursor: String,
    pub node: ObjectRef,
}

#[derive(SimpleObject, Debug)]
pub struct ObjectConnection {
    pub total_count: i32,
    pub edges: Vec<ObjectEdge>,
    pub page_info: PageInfo,
}

/// Resolves one page of an owner's objects.
async fn object_connection(
    ctx: &Context<'_>,
    owner: Owner<'_>,
    first: Option<i32>,
    after: Option<String>,
) -> ApiResult<ObjectConnection> {
    let db = &state(ctx).db;
    let limit = page_limit(first)?;
    let after_id = after
        .as_deref()
        .map(catalog::parse_object_cursor)
        .transpose()?;
    let (rows, has_next_page) = catalog::objects_page(db, owner, after_id, limit).await?;
    let total = catalog::objects_count(db, owner).await?;
    let cached = catalog::cached_flags(db, &rows).await?;
    let end_cursor = rows.last().map(|o| catalog::object_cursor(o.id));
    let edges = rows
        .into_iter()
        .zip(cached)
        .map(|(row, cached): (object::Model, bool)| ObjectEdge {
            cursor: catalog::object_cursor(row.id),
            node: ObjectRef {
                bucket: row.bucket,
                key: row.key,
                size: Long(row.size),
                etag: row.etag,
                last_modified: row.last_modified,
                cached,
                metadata: row.metadata.map(Json),
            },
        })
        .collect();
    Ok(ObjectConnection {
        total_count: i32::try_from(total).unwrap_or(i32::MAX),
        edges,
        page_info: PageInfo {
            has_next_page,
            end_cursor,
        },
    })
}

#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID"))]
pub enum Node {
    Drive(Drive),
    Scenario(Scenario),
    Run(Run),
    Transfer(super::transfers::Transfer),
}

#[derive(Union)]
pub enum CatalogEntity {
    Drive(Drive),
    Scenario(Scenario),
    Run(Run),
}

pub struct Drive(pub drive::Model, pub DriveRelated);

/// Events and scenarios already read with the drive (see `catalog::get_drive_page`), so their
/// resolvers need no query of their own.
#[derive(Debug, Default)]
pub struct DriveRelated {
    pub events: Option<Vec<drive_event::Model>>,
    pub scenarios: Option<Vec<scenario::Model>>,
}

impl Drive {
    pub fn new(model: drive::Model) -> Drive {
        Drive(model, DriveRelated::default())
    }
}

#[Object]
impl Drive {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn vehicle(&self) -> &str {
        &self.0.vehicle
    }
    async fn city(&self) -> Option<&str> {
        self.0.city.as_deref()
    }
    async fn route(&self) -> Option<&str> {
        self.0.route.as_deref()
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    async fn ended_at(&self) -> DateTime<Utc> {
        self.0.ended_at
    }
    async fn distance_km(&self) -> Option<f64> {
        self.0.distance_km
    }
    async fn software_version(&self) -> Option<&str> {
        self.0.software_version.as_deref()
    }
    async fn weather(&self) -> Option<&str> {
        self.0.weather.as_deref()
    }
    async fn tags(&self) -> Vec<String> {
        string_list(&self.0.tags)
    }
    /// Where the drive's files are.
    async fn bucket(&self) -> &str {
        &self.0.bucket
    }
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    /// Sidecar fields Milepost has no column for, kept as they were written.
    async fn extra(&self) -> Json<serde_json::Value> {
        Json(self.0.extra.clone())
    }
    async fn events(&self, ctx: &Context<'_>) -> GqlResult<Vec<DriveEvent>> {
        if let Some(rows) = &self.1.events {
            return Ok(rows.iter().cloned().map(DriveEvent::from).collect());
        }
        let rows = catalog::drive_events(&state(ctx).db, &self.0.id)
            .await
            .gql()?;
        Ok(rows.into_iter().map(DriveEvent::from).collect())
    }
    /// Union of the MCAP channel topics of the drive's logs.
    async fn topics(&self) -> Vec<String> {
        string_list(&self.0.topics)
    }
    async fn scenarios(&self, ctx: &Context<'_>) -> GqlResult<Vec<Scenario>> {
        if let Some(rows) = &self.1.scenarios {
            return Ok(rows.iter().cloned().map(Scenario).collect());
        }
        let rows = catalog::drive_scenarios(&state(ctx).db, &self.0.id)
            .await
            .gql()?;
        Ok(rows.into_iter().map(Scenario).collect())
    }
    #[graphql(complexity = "first.unwrap_or(100).max(1) as usize * child_complexity")]
    async fn objects(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<ObjectConnection> {
        object_connection(ctx, Owner::Drive(&self.0.id), first, after)
            .await
            .gql()
    }
    async fn total_bytes(&self, ctx: &Context<'_>) -> GqlResult<Long> {
        catalog::objects_bytes(&state(ctx).db, Owner::Drive(&self.0.id), false)
            .await
            .map(Long)
            .gql()
    }
    async fn cached_bytes(&self, ctx: &Context<'_>) -> GqlResult<Long> {
        catalog::objects_bytes(&state(ctx).db, Owner::Drive(&self.0.id), true)
            .await
            .map(Long)
            .gql()
    }
}

pub struct Scenario(pub scenario::Model);

#[Object]
impl Scenario {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn drive(&self, ctx: &Context<'_>) -> GqlResult<Drive> {
        let drive = catalog::get_drive(&state(ctx).db, &self.0.drive_id)
            .await
            .gql()?
            .ok_or_else(|| {
                crate::error::ApiError::not_found(format!("drive {:?}", self.0.drive_id))
            })
            .gql()?;
        Ok(Drive::new(drive))
    }
    async fn label(&self) -> &str {
        &self.0.label
    }
    async fn tags(&self) -> Vec<String> {
        string_list(&self.0.tags)
    }
    async fn start_time(&self) -> DateTime<Utc> {
        self.0.start_time
    }
    async fn end_time(&self) -> DateTime<Utc> {
        self.0.end_time
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
}

pub struct Run(pub run::Model);

#[Object]
impl Run {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn kind(&self) -> RunKind {
        self.0.kind.into()
    }
    async fn pipeline(&self) -> &str {
        &self.0.pipeline
    }
    async fn commit(&self) -> Option<&str> {
        self.0.commit.as_deref()
    }
    async fn status(&self) -> RunStatus {
        self.0.status.into()
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    async fn tags(&self) -> Vec<String> {
        string_list(&self.0.tags)
    }
    async fn bucket(&self) -> &str {
        &self.0.bucket
    }
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    async fn extra(&self) -> Json<serde_json::Value> {
        Json(self.0.extra.clone())
    }
    /// The run's inputs that are still in the catalog, in the order they were registered.
    async fn inputs(&self, ctx: &Context<'_>) -> GqlResult<Vec<CatalogEntity>> {
        let db = &state(ctx).db;
        let mut entities = Vec::new();
        for input in catalog::run_inputs(db, &self.0.id).await.gql()? {
            let entity = match input.input_kind {
                InputKind::Drive => catalog::get_drive(db, &input.input_id)
                    .await
                    .gql()?
                    .map(|m| CatalogEntity::Drive(Drive::new(m))),
                InputKind::Scenario => catalog::get_scenario(db, &input.input_id)
                    .await
                    .gql()?
                    .map(|m| CatalogEntity::Scenario(Scenario(m))),
                InputKind::Run => catalog::get_run(db, &input.input_id)
                    .await
                    .gql()?
                    .map(|m| CatalogEntity::Run(Run(m))),
                InputKind::Dataset => None,
            };
            entities.extend(entity);
        }
        Ok(entities)
    }
    /// The windows of drives the run read, in the order they were registered.
    async fn input_windows(
        &self,
        ctx: &Context<'_>,
    ) -> GqlResult<Vec<super::lineage::DriveWindow>> {
        let rows = catalog::run_windows(&state(ctx).db, &self.0.id)
            .await
            .gql()?;
        Ok(rows
            .into_iter()
            .map(|w| super::lineage::DriveWindow {
                drive_id: ID(w.drive_id),
                start: w.start_time,
                end: w.end_time,
            })
            .collect())
    }
    async fn metrics(&self) -> Option<Json<serde_json::Value>> {
        self.0.metrics.clone().map(Json)
    }
    #[graphql(complexity = "first.unwrap_or(100).max(1) as usize * child_complexity")]
    async fn objects(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<ObjectConnection> {
        object_connection(ctx, Owner::Run(&self.0.id), first, after)
            .await
            .gql()
    }
    async fn total_bytes(&self, ctx: &Context<'_>) -> GqlResult<Long> {
        catalog::objects_bytes(&state(ctx).db, Owner::Run(&self.0.id), false)
            .await
            .map(Long)
            .gql()
    }
}
