//! Read-only additions to the contract that the web catalog needs and the core contract lacks:
//! a size preview of a dataset before it is created, the egress ledger over time, the datasets
//! reservations use most, and a list of datasets to browse.

use std::collections::{BTreeMap, HashSet};

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, TimeZone, Utc};
use milepost_schema::entity::{dataset, reservation};
use milepost_store::ObjectKey;
use sea_orm::sea_query::{Expr, Order};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::datasets::Dataset;
use super::scalars::Long;
use super::state;
use crate::error::{ApiError, ApiResult, GqlResultExt};
use crate::selection::{self, Glob, Selection, TrimOptions};
use async_graphql::Result as GqlResult;

/// What `createDataset` with the same query and globs would hold if run now.
#[derive(SimpleObject, Debug)]
pub struct DatasetPreview {
    pub object_count: i32,
    pub total_bytes: Long,
    /// Of those bytes, what this office's cache holds now.
    pub cached_bytes: Long,
}

/// The egress ledger of this office over one time bucket.
#[derive(SimpleObject, Debug)]
pub struct CacheHistoryPoint {
    /// Start of the bucket.
    pub start: DateTime<Utc>,
    pub hits: i32,
    pub misses: i32,
    pub bytes_served: Long,
    pub bytes_from_upstream: Long,
    /// Bytes of the reservations made in the bucket that were materialized (delivered into
    /// views, from the cache or upstream).
    pub bytes_reserved: Long,
}

/// A dataset by how much reservations asked of the cache.
#[derive(SimpleObject, Debug)]
pub struct DatasetUsage {
    pub name: String,
    pub reservations: i32,
    /// Bytes of all its reservations together.
    pub bytes_reserved: Long,
    /// Of those, what had to come from upstream.
    pub bytes_from_upstream: Long,
}

fn db_error(err: sea_orm::DbErr) -> ApiError {
    ApiError::from(milepost_schema::DbError::from(err))
}

#[derive(Debug, Default)]
pub struct InsightsQuery;

#[Object]
impl InsightsQuery {
    /// Object count and bytes a dataset built from `query` (and `include` globs) would hold,
    /// without creating it.
    async fn preview_dataset(
        &self,
        ctx: &Context<'_>,
        query: String,
        include: Option<Vec<String>>,
        topics: Option<Vec<String>>,
        padding_seconds: Option<i32>,
    ) -> GqlResult<DatasetPreview> {
        let app = state(ctx);
        let trim = TrimOptions::new(topics.as_deref(), padding_seconds).gql()?;
        let globs: Vec<Glob> = include
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, pattern)| Glob::new(&format!("include[{i}]"), pattern))
            .collect::<ApiResult<_>>()
            .gql()?;
        let entries = selection::resolve(app, &Selection::Query(query), &globs, &trim)
            .await
            .gql()?
            .entries;
        // A scenario's objects are its drive's: the same key can be selected twice.
        let mut seen = HashSet::new();
        let (mut count, mut total, mut cached) = (0i64, 0u64, 0u64);
        for entry in entries {
            if !seen.insert((entry.bucket.clone(), entry.key.clone(), entry.trim.clone())) {
                continue;
            }
            count += 1;
            // A trimmed member's size is planned (from the log's summary), as createDataset
            // reports it; only whole objects can already be cached.
            total += entry.planned_bytes();
            if entry.trim.is_some() {
                continue;
            }
            let key = ObjectKey {
                bucket: entry.bucket,
                key: entry.key,
                etag: entry.etag,
                size: entry.size,
            };
            if app.cache.is_cached(&key) {
                cached += key.size;
            }
        }
        Ok(DatasetPreview {
            object_count: i32::try_from(count).unwrap_or(i32::MAX),
            total_bytes: Long(total as i64),
            cached_bytes: Long(cached as i64),
        })
    }

    /// The egress ledger in `buckets` buckets of `bucketSeconds` each, ending now, oldest
    /// first; empty buckets included. Catalog sync's footer reads are left out, as in
    /// `cacheStats`.
    async fn cache_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 3600)] bucket_seconds: i32,
        #[graphql(default = 24)] buckets: i32,
    ) -> GqlResult<Vec<CacheHistoryPoint>> {
        if !(60..=86_400).contains(&bucket_seconds) {
            return Err(ApiError::bad_input(
                "bucketSeconds",
                format!("expected 60 to 86400, got {bucket_seconds}"),
            ))
            .gql();
        }
        if !(1..=400).contains(&buckets) {
            return Err(ApiError::bad_input(
                "buckets",
                format!("expected 1 to 400, got {buckets}"),
            ))
            .gql();
        }
        let app = state(ctx);
        let width = i64::from(bucket_seconds);
        let now = Utc::now().timestamp();
        // Buckets are aligned to multiples of their width so a page reload keeps them still.
        let first_start = (now / width - i64::from(buckets) + 1) * width;
        let since = Utc
            .timestamp_opt(first_start, 0)
            .single()
            .unwrap_or_else(Utc::now);
        // The ledger is written behind, in batches: what was served before this query counts.
        app.cache.flush().await;
        let reads = milepost_schema::egress::history(&app.db, &app.config.office, since, width)
            .await
            .map_err(crate::error::ApiError::from)
            .gql()?;
        let mut points: BTreeMap<i64, CacheHistoryPoint> = (0..i64::from(buckets))
            .map(|i| {
                let start = first_start + i * width;
                (
                    start,
                    CacheHistoryPoint {
                        start: Utc.timestamp_opt(start, 0).single().unwrap_or(since),
                        hits: 0,
                        misses: 0,
                        bytes_served: Long(0),
                        bytes_from_upstream: Long(0),
                        bytes_reserved: Long(0),
                    },
                )
            })
            .collect();
        for read in reads {
            if let Some(point) = points.get_mut(&read.start) {
                point.hits = i32::try_from(read.hits).unwrap_or(i32::MAX);
                point.misses = i32::try_from(read.misses).unwrap_or(i32::MAX);
                point.bytes_served.0 = read.bytes_served;
                point.bytes_from_upstream.0 = read.bytes_from_upstream;
            }
        }
        let reserved: Vec<(DateTime<Utc>, i64)> = reservation::Entity::find()
            .select_only()
            .column(reservation::Column::CreatedAt)
            .column(reservation::Column::BytesTotal)
            .filter(reservation::Column::LocalPath.is_not_null())
            .filter(reservation::Column::CreatedAt.gte(since))
            .into_tuple()
            .all(&app.db)
            .await
            .map_err(db_error)
            .gql()?;
        for (at, bytes) in reserved {
            let start = at.timestamp().div_euclid(width) * width;
            if let Some(point) = points.get_mut(&start) {
                point.bytes_reserved.0 += bytes;
            }
        }
        Ok(points.into_values().collect())
    }

    /// Datasets by bytes reserved in this office, most first.
    async fn top_datasets(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 5)] first: i32,
    ) -> GqlResult<Vec<DatasetUsage>> {
        let app = state(ctx);
        let limit = super::page_limit(Some(first)).gql()?;
        let bytes = r#"CAST(COALESCE(SUM("reservations"."bytes_total"), 0) AS BIGINT)"#;
        let rows: Vec<(i64, i64, i64, i64)> = reservation::Entity::find()
            .select_only()
            .column(reservation::Column::DatasetId)
            .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "n")
            .column_as(Expr::cust(bytes), "bytes")
            .column_as(
                Expr::cust(
                    r#"CAST(COALESCE(SUM("reservations"."bytes_from_upstream"), 0) AS BIGINT)"#,
                ),
                "upstream",
            )
            .group_by(reservation::Column::DatasetId)
            .order_by(Expr::cust(bytes), Order::Desc)
            .limit(limit)
            .into_tuple()
            .all(&app.db)
            .await
            .map_err(db_error)
            .gql()?;
        let ids: Vec<i64> = rows.iter().map(|row| row.0).collect();
        let names: BTreeMap<i64, String> = dataset::Entity::find()
            .filter(dataset::Column::Id.is_in(ids))
            .all(&app.db)
            .await
            .map_err(db_error)
            .gql()?
            .into_iter()
            .map(|d| (d.id, format!("{}@{}", d.name, d.version)))
            .collect();
        Ok(rows
            .into_iter()
            .filter_map(|(id, n, bytes, upstream)| {
                Some(DatasetUsage {
                    name: names.get(&id)?.clone(),
                    reservations: i32::try_from(n).unwrap_or(i32::MAX),
                    bytes_reserved: Long(bytes),
                    bytes_from_upstream: Long(upstream),
                })
            })
            .collect())
    }

    /// The latest version of each dataset, most recently created first.
    async fn datasets(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: i32,
    ) -> GqlResult<Vec<Dataset>> {
        let app = state(ctx);
        let limit = super::page_limit(Some(first)).gql()? as usize;
        // Newest rows first; the first row seen of a name is its latest version.
        let rows = dataset::Entity::find()
            .order_by_desc(dataset::Column::Id)
            .limit((limit as u64).saturating_mul(8).max(64))
            .all(&app.db)
            .await
            .map_err(db_error)
            .gql()?;
        let mut seen = HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|row| seen.insert(row.name.clone()))
            .take(limit)
            .map(Dataset)
            .collect())
    }
}
