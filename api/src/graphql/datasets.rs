//! Datasets, reservations and cache statistics: the contract's `Dataset`, `Reservation`,
//! `CacheStats`, their queries and mutations, and the `reservationProgress` subscription.
//!
//! (Over 600 lines: the contract's Dataset and Reservation types with their resolvers, queries, mutations and the progress subscription; each type's resolvers are one `#[Object]` impl.)

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, Subscription, ID};
use chrono::{DateTime, Utc};
use milepost_cacher::datasets::{self, NewDataset};
use milepost_cacher::reservations::{self, Actor};
use milepost_schema::entity::{dataset, reservation};
use milepost_schema::enums::{self, Role};
use milepost_store::ObjectKey;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::scalars::Long;
use super::types::{ObjectConnection, ObjectEdge, ObjectRef, PageInfo};
use super::{page_limit, principal, state};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, GqlResultExt};
use crate::selection::{self, Glob, Selection, TrimOptions};
use async_graphql::Result as GqlResult;

const BYTES_PER_GIB: f64 = (1u64 << 30) as f64;

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationState {
    Pending,
    Materializing,
    Ready,
    Failed,
    Released,
    Expired,
}

impl From<enums::ReservationState> for ReservationState {
    fn from(state: enums::ReservationState) -> Self {
        match state {
            enums::ReservationState::Pending => ReservationState::Pending,
            enums::ReservationState::Materializing => ReservationState::Materializing,
            enums::ReservationState::Ready => ReservationState::Ready,
            enums::ReservationState::Failed => ReservationState::Failed,
            enums::ReservationState::Released => ReservationState::Released,
            enums::ReservationState::Expired => ReservationState::Expired,
        }
    }
}

impl From<ReservationState> for enums::ReservationState {
    fn from(state: ReservationState) -> Self {
        match state {
            ReservationState::Pending => enums::ReservationState::Pending,
            ReservationState::Materializing => enums::ReservationState::Materializing,
            ReservationState::Ready => enums::ReservationState::Ready,
            ReservationState::Failed => enums::ReservationState::Failed,
            ReservationState::Released => enums::ReservationState::Released,
            ReservationState::Expired => enums::ReservationState::Expired,
        }
    }
}

#[derive(InputObject, Debug)]
pub struct ObjectKeyInput {
    pub bucket: String,
    pub key: String,
}

#[derive(InputObject, Debug)]
pub struct CreateDatasetInput {
    pub name: String,
    pub description: Option<String>,
    /// Exactly one of query, entityIds, objects.
    pub query: Option<String>,
    pub entity_ids: Option<Vec<ID>>,
    pub objects: Option<Vec<ObjectKeyInput>>,
    /// Optional key globs, e.g. ["*.mcap", "camera/front/*"].
    pub include: Option<Vec<String>>,
    /// Topics that trimmed scenario logs keep (all when omitted).
    pub topics: Option<Vec<String>>,
    /// Seconds kept before and after each scenario's span (0 to 3600).
    #[graphql(default = 2)]
    pub padding_seconds: Option<i32>,
}

#[derive(InputObject, Debug)]
pub struct ReserveDatasetInput {
    pub dataset: String,
    pub version: Option<i32>,
    #[graphql(default = 86400)]
    pub ttl_seconds: i32,
    pub purpose: Option<String>,
    /// When it must be READY: its materialization waits for the office's download windows
    /// (`[transfer] download_schedule`) and keeps to their rates; a deadline they cannot meet
    /// is refused (BAD_INPUT naming the earliest time they can).
    pub ready_by: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct Dataset(pub dataset::Model);

fn member_key(member: &milepost_schema::entity::dataset_member::Model) -> ObjectKey {
    ObjectKey {
        bucket: member.bucket.clone(),
        key: member.key.clone(),
        etag: member.etag.clone(),
        size: member.size as u64,
    }
}

#[Object]
impl Dataset {
    async fn id(&self) -> ID {
        ID(format!("{}@{}", self.0.name, self.0.version))
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
    async fn object_count(&self) -> i32 {
        i32::try_from(self.0.object_count).unwrap_or(i32::MAX)
    }
    async fn total_bytes(&self) -> Long {
        Long(self.0.total_bytes)
    }
    /// Bytes of the dataset held in this office's cache now.
    async fn cached_bytes(&self, ctx: &Context<'_>) -> GqlResult<Long> {
        let app = state(ctx);
        let members = datasets::all_members(&app.db, self.0.id).await.gql()?;
        let cached: u64 = members
            .into_iter()
            .map(|m| ObjectKey {
                bucket: m.bucket,
                key: m.key,
                etag: m.etag,
                size: m.size,
            })
            .filter(|object| app.cache.is_cached(object))
            .map(|object| object.size)
            .sum();
        Ok(Long(cached as i64))
    }
    /// S3 key of the Parquet manifest (bucket, key, size, etag per row).
    async fn manifest_key(&self) -> &str {
        &self.0.manifest_key
    }
    /// Every version of this dataset's name, oldest first.
    async fn versions(&self, ctx: &Context<'_>) -> GqlResult<Vec<i32>> {
        use sea_orm::QueryOrder;
        dataset::Entity::find()
            .select_only()
            .column(dataset::Column::Version)
            .filter(dataset::Column::Name.eq(&self.0.name))
            .order_by_asc(dataset::Column::Version)
            .into_tuple()
            .all(&state(ctx).db)
            .await
            .map_err(|err| ApiError::from(milepost_schema::DbError::from(err)))
            .gql()
    }
    async fn manifest_bucket(&self) -> &str {
        &self.0.manifest_bucket
    }
    /// How the dataset was built: query, entity ids or objects, and include globs.
    async fn selection(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(self.0.selection.clone())
    }
    #[graphql(complexity = "first.unwrap_or(100).max(1) as usize * child_complexity")]
    async fn objects(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<ObjectConnection> {
        let app = state(ctx);
        let limit = page_limit(first).gql()?;
        let after = after
            .as_deref()
            .map(|c| {
                milepost_schema::ids::decode_cursor("member", c).ok_or_else(|| {
                    ApiError::bad_input("after", "not a cursor returned by this connection")
                })
            })
            .transpose()
            .gql()?;
        let mut rows = datasets::members(&app.db, self.0.id, after, limit + 1)
            .await
            .gql()?;
        let has_next_page = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let end_cursor = rows
            .last()
            .map(|m| milepost_schema::ids::encode_cursor("member", m.position));
        let edges = rows
            .into_iter()
            .map(|m| {
                // A trimmed member lists its source log, with the trim as metadata.
                let trim: Option<datasets::TrimSpec> =
                    m.trim.clone().and_then(|t| serde_json::from_value(t).ok());
                let cached = match &trim {
                    Some(spec) => {
                        milepost_cacher::trimmed::find_built(&app.cache, &member_key(&m), spec)
                            .is_some()
                    }
                    None => app.cache.is_cached(&member_key(&m)),
                };
                ObjectEdge {
                    cursor: milepost_schema::ids::encode_cursor("member", m.position),
                    node: ObjectRef {
                        cached,
                        metadata: trim
                            .map(|t| async_graphql::Json(serde_json::json!({ "trim": t }))),
                        bucket: m.bucket,
                        key: m.key,
                        size: Long(m.size),
                        etag: m.etag,
                        last_modified: None,
                    },
                }
            })
            .collect();
        Ok(ObjectConnection {
            total_count: i32::try_from(self.0.object_count).unwrap_or(i32::MAX),
            edges,
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
        })
    }
}

#[derive(Debug)]
pub struct Reservation(pub reservation::Model);

impl Reservation {
    /// The live estimate (with a deadline only; each field that shows it asks for it).
    async fn estimate(&self, ctx: &Context<'_>) -> GqlResult<Option<reservations::Estimate>> {
        if self.0.ready_by.is_none() {
            return Ok(None);
        }
        state(ctx)
            .reservations
            .estimate(&self.0)
            .await
            .map_err(ApiError::from)
            .gql()
    }
}

#[Object]
impl Reservation {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn dataset(&self, ctx: &Context<'_>) -> GqlResult<Dataset> {
        let row = dataset::Entity::find_by_id(self.0.dataset_id)
            .one(&state(ctx).db)
            .await
            .map_err(|err| ApiError::from(milepost_schema::DbError::from(err)))
            .gql()?
            .ok_or_else(|| ApiError::not_found(format!("dataset {}", self.0.dataset_id)))
            .gql()?;
        Ok(Dataset(row))
    }
    async fn owner(&self) -> &str {
        &self.0.owner
    }
    async fn purpose(&self) -> Option<&str> {
        self.0.purpose.as_deref()
    }
    async fn state(&self) -> ReservationState {
        self.0.state.into()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }
    async fn objects_total(&self) -> i32 {
        i32::try_from(self.0.objects_total).unwrap_or(i32::MAX)
    }
    async fn objects_done(&self) -> i32 {
        i32::try_from(self.0.objects_done).unwrap_or(i32::MAX)
    }
    async fn bytes_total(&self) -> Long {
        Long(self.0.bytes_total)
    }
    async fn bytes_done(&self) -> Long {
        Long(self.0.bytes_done)
    }
    /// Egress this reservation caused; 0 when everything was cached.
    async fn bytes_from_upstream(&self) -> Long {
        Long(self.0.bytes_from_upstream)
    }
    /// Directory holding the materialized view, once READY.
    async fn local_path(&self) -> Option<&str> {
        self.0.local_path.as_deref()
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// When it must be READY; null when it was asked for now.
    async fn ready_by(&self) -> Option<DateTime<Utc>> {
        self.0.ready_by
    }
    /// With a deadline: the first minute of the download windows at which its
    /// materialization could start, as planned when it was admitted.
    async fn scheduled_start(&self) -> Option<DateTime<Utc>> {
        self.0.scheduled_start
    }
    /// With a deadline and not READY yet: when it is expected to be READY, from what it
    /// still needs and the download windows from now.
    async fn estimated_ready_at(&self, ctx: &Context<'_>) -> GqlResult<Option<DateTime<Utc>>> {
        Ok(self.estimate(ctx).await?.map(|e| e.ready_at))
    }
    /// Set while the estimate is after `readyBy`: the deadline is at risk, with the numbers.
    async fn deadline_warning(&self, ctx: &Context<'_>) -> GqlResult<Option<String>> {
        let Some(ready_by) = self.0.ready_by else {
            return Ok(None);
        };
        Ok(self.estimate(ctx).await?.filter(|e| !e.on_time).map(|e| {
            format!(
                "estimated READY at {}, after readyBy {}, under the download schedule `{}`",
                e.ready_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ready_by.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                state(ctx).reservations.download_schedule()
            )
        }))
    }
    /// How it was materialized where that differs from what was asked: a log materialized
    /// whole for want of a chunk index, a scenario window without messages (empty file).
    async fn notes(&self) -> Vec<String> {
        self.0
            .notes
            .as_ref()
            .and_then(|n| serde_json::from_value(n.clone()).ok())
            .unwrap_or_default()
    }
}

#[derive(SimpleObject, Debug)]
pub struct ReservationEdge {
    pub cursor: String,
    pub node: Reservation,
}

#[derive(SimpleObject, Debug)]
pub struct ReservationConnection {
    pub total_count: i32,
    pub edges: Vec<ReservationEdge>,
    pub page_info: PageInfo,
}

#[derive(SimpleObject, Debug)]
pub struct CacheStats {
    pub office: String,
    pub capacity_bytes: Long,
    pub used_bytes: Long,
    pub pinned_bytes: Long,
    pub objects: i32,
    pub hits: Long,
    pub misses: Long,
    pub bytes_served: Long,
    pub bytes_from_upstream: Long,
    pub egress_saved_usd: f64,
    /// Bytes handed out: served through `/data` plus delivered into reservation views. With
    /// `bytesFromUpstream`, the byte hit ratio (reservations that find their objects cached
    /// add no ledger rows, so `hits` counts `/data` reads only).
    pub bytes_delivered: Long,
}

/// Totals of the egress ledger for this office (persisted, so they survive restarts).
#[derive(Debug, Default, Clone, Copy)]
pub struct LedgerTotals {
    pub hits: i64,
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
}

pub async fn ledger_totals(app: &AppState) -> ApiResult<LedgerTotals> {
    // The ledger is written behind, in batches: what was served before this query counts.
    app.cache.flush().await;
    let totals = milepost_schema::egress::totals(&app.db, &app.config.office).await?;
    Ok(LedgerTotals {
        hits: totals.hits,
        misses: totals.misses,
        bytes_served: totals.bytes_served,
        bytes_from_upstream: totals.bytes_from_upstream,
    })
}

/// Bytes delivered to reservations (materialized views) in this office.
async fn reserved_bytes_delivered(app: &AppState) -> ApiResult<i64> {
    let total: Option<i64> = reservation::Entity::find()
        .select_only()
        .column_as(
            Expr::cust(r#"CAST(COALESCE(SUM("reservations"."bytes_total"), 0) AS BIGINT)"#),
            "total",
        )
        .filter(reservation::Column::LocalPath.is_not_null())
        .into_tuple()
        .one(&app.db)
        .await
        .map_err(|err| ApiError::from(milepost_schema::DbError::from(err)))?;
    Ok(total.unwrap_or(0))
}

pub async fn cache_stats(app: &AppState) -> ApiResult<CacheStats> {
    let snapshot = app.cache.stats();
    let ledger = ledger_totals(app).await?;
    // Without the cache, every byte handed out (through /data and into reservation views)
    // would have come from upstream; what did not is what the cache saved.
    let delivered = ledger.bytes_served + reserved_bytes_delivered(app).await?;
    let saved_bytes = (delivered - ledger.bytes_from_upstream).max(0);
    // In a cluster the office's cache is every node's: its usage is read from the database,
    // not from this node's book.
    let (used, pinned, objects) = match &app.cluster {
        Some(_) => {
            let usage = milepost_cluster::office_usage(&app.db).await?;
            (usage.bytes, usage.pinned_bytes, usage.entries)
        }
        None => (
            snapshot.used_bytes as i64,
            snapshot.pinned_bytes as i64,
            snapshot.objects as i64,
        ),
    };
    Ok(CacheStats {
        office: app.config.office.clone(),
        capacity_bytes: Long(snapshot.capacity_bytes as i64),
        used_bytes: Long(used),
        pinned_bytes: Long(pinned),
        objects: i32::try_from(objects).unwrap_or(i32::MAX),
        hits: Long(ledger.hits),
        misses: Long(ledger.misses),
        bytes_served: Long(ledger.bytes_served),
        bytes_from_upstream: Long(ledger.bytes_from_upstream),
        egress_saved_usd: saved_bytes as f64 / BYTES_PER_GIB * app.config.cache.egress_usd_per_gib,
        bytes_delivered: Long(delivered),
    })
}

fn actor<'a>(principal: &'a crate::auth::Principal) -> Actor<'a> {
    Actor {
        name: &principal.name,
        admin: principal.role == Role::Admin,
    }
}

fn ttl(seconds: i32) -> ApiResult<std::time::Duration> {
    reservations::ttl_from_seconds(i64::from(seconds)).map_err(ApiError::from)
}

#[derive(Debug, Default)]
pub struct DatasetQuery;

#[Object]
impl DatasetQuery {
    /// Latest version when `version` is omitted.
    async fn dataset(
        &self,
        ctx: &Context<'_>,
        name: String,
        version: Option<i32>,
    ) -> GqlResult<Option<Dataset>> {
        let found = datasets::find_dataset(&state(ctx).db, &name, version)
            .await
            .gql()?;
        Ok(found.map(Dataset))
    }

    async fn reservation(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Reservation>> {
        // Anyone signed in may look a reservation up by id (ids are unguessable, and the
        // progress of a shared dataset is office information); listing is per owner.
        let row = state(ctx).reservations.find(&id).await.gql()?;
        Ok(row.map(Reservation))
    }

    /// The caller's reservations (an admin's: everyone's), newest first.
    async fn reservations(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "state")] state_arg: Option<ReservationState>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<ReservationConnection> {
        let app = state(ctx);
        let me = principal(ctx);
        let owner = (me.role != Role::Admin).then_some(me.name.as_str());
        let wanted = state_arg.map(Into::into);
        let limit = page_limit(first).gql()?;
        let (rows, has_next_page) = app
            .reservations
            .list(owner, wanted, after.as_deref(), limit)
            .await
            .gql()?;
        let total = app.reservations.count(owner, wanted).await.gql()?;
        let end_cursor = rows.last().map(reservations::reservation_cursor);
        Ok(ReservationConnection {
            total_count: i32::try_from(total).unwrap_or(i32::MAX),
            edges: rows
                .into_iter()
                .map(|row| ReservationEdge {
                    cursor: reservations::reservation_cursor(&row),
                    node: Reservation(row),
                })
                .collect(),
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
        })
    }

    /// Reservations with a deadline not READY yet, everyone's (the office's planned
    /// downloads), soonest scheduled start first.
    async fn planned_downloads(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: Option<i32>,
    ) -> GqlResult<Vec<Reservation>> {
        let limit = page_limit(first).gql()?;
        let rows = state(ctx).reservations.planned(limit).await.gql()?;
        Ok(rows.into_iter().map(Reservation).collect())
    }

    async fn cache_stats(&self, ctx: &Context<'_>) -> GqlResult<CacheStats> {
        cache_stats(state(ctx)).await.gql()
    }
}

#[derive(Debug, Default)]
pub struct DatasetMutation;

#[Object]
impl DatasetMutation {
    /// ENGINEER and up; a new version when the name exists.
    async fn create_dataset(
        &self,
        ctx: &Context<'_>,
        input: CreateDatasetInput,
    ) -> GqlResult<Dataset> {
        let me = principal(ctx);
        me.require(Role::Engineer).gql()?;
        let app = state(ctx);
        let chosen = [
            input.query.is_some(),
            input.entity_ids.is_some(),
            input.objects.is_some(),
        ]
        .iter()
        .filter(|c| **c)
        .count();
        if chosen != 1 {
            return Err(ApiError::bad_input(
                "input",
                "give exactly one of query, entityIds, objects",
            ))
            .gql();
        }
        let include: Vec<Glob> = input
            .include
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, pattern)| Glob::new(&format!("input.include[{i}]"), pattern))
            .collect::<ApiResult<_>>()
            .gql()?;
        let selection = if let Some(query) = &input.query {
            Selection::Query(query.clone())
        } else if let Some(ids) = &input.entity_ids {
            Selection::EntityIds(ids.iter().map(|id| id.0.clone()).collect())
        } else {
            Selection::Objects(
                input
                    .objects
                    .iter()
                    .flatten()
                    .map(|o| (o.bucket.clone(), o.key.clone()))
                    .collect(),
            )
        };
        let trim = TrimOptions::new(input.topics.as_deref(), input.padding_seconds).gql()?;
        let selected = selection::resolve(app, &selection, &include, &trim)
            .await
            .gql()?;
        let entries = selected.entries;
        let recorded = serde_json::json!({
            "query": input.query,
            "entityIds": input.entity_ids.as_ref().map(|ids| ids.iter().map(|id| id.0.clone()).collect::<Vec<_>>()),
            "objects": input.objects.as_ref().map(|o| o.iter().map(|o| serde_json::json!({ "bucket": o.bucket, "key": o.key })).collect::<Vec<_>>()),
            "include": input.include,
            "topics": input.topics,
            "paddingSeconds": trim.padding_seconds,
            "notes": selected.notes,
        });
        let created = datasets::create_dataset(
            &app.db,
            app.store.as_ref(),
            &app.config.catalog.bucket,
            NewDataset {
                name: input.name,
                description: input.description,
                created_by: me.name.clone(),
                entries,
                selection: recorded,
            },
        )
        .await
        .gql()?;
        Ok(Dataset(created))
    }

    /// ENGINEER and up.
    async fn reserve_dataset(
        &self,
        ctx: &Context<'_>,
        input: ReserveDatasetInput,
    ) -> GqlResult<Reservation> {
        let me = principal(ctx);
        me.require(Role::Engineer).gql()?;
        let app = state(ctx);
        let ttl = ttl(input.ttl_seconds).gql()?;
        let dataset = datasets::find_dataset(&app.db, &input.dataset, input.version)
            .await
            .gql()?
            .ok_or_else(|| {
                ApiError::bad_input(
                    "input.dataset",
                    match input.version {
                        Some(v) => format!("no dataset {:?} version {v}", input.dataset),
                        None => format!("no dataset {:?}", input.dataset),
                    },
                )
            })
            .gql()?;
        let row = app
            .reservations
            .reserve_by(&dataset, &me.name, input.purpose, ttl, input.ready_by)
            .await
            .gql()?;
        Ok(Reservation(row))
    }

    /// The owner or an admin.
    async fn extend_reservation(
        &self,
        ctx: &Context<'_>,
        id: ID,
        ttl_seconds: i32,
    ) -> GqlResult<Reservation> {
        let me = principal(ctx);
        me.require(Role::Engineer).gql()?;
        let ttl = ttl(ttl_seconds).gql()?;
        let row = state(ctx)
            .reservations
            .extend(&id, ttl, actor(me))
            .await
            .gql()?;
        Ok(Reservation(row))
    }

    /// The owner or an admin.
    async fn release_reservation(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Reservation> {
        let me = principal(ctx);
        me.require(Role::Engineer).gql()?;
        let row = state(ctx)
            .reservations
            .release(&id, actor(me))
            .await
            .gql()?;
        Ok(Reservation(row))
    }
}

#[derive(Debug, Default)]
pub struct Subscription;

#[Subscription]
impl Subscription {
    /// Emits the reservation whenever its progress or state changes; ends after READY,
    /// FAILED, RELEASED or EXPIRED.
    async fn reservation_progress(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<futures::stream::BoxStream<'static, Reservation>> {
        use futures::StreamExt;
        let stream = state(ctx).reservations.subscribe(&id).await.gql()?;
        Ok(stream.map(Reservation).boxed())
    }
}
