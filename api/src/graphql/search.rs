//! `search` and `syncCatalog`: the contract's search result types over the tantivy index, and
//! the sync report.

use async_graphql::{Context, Enum, SimpleObject};
use milepost_indexer::catalog;
use milepost_indexer::search::{self, SearchRequest};
use milepost_indexer::sync::SyncScope;

use super::state;
use super::types::{CatalogEntity, Drive, PageInfo, Run, Scenario};
use crate::error::{ApiError, ApiResult};

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    Drive,
    Scenario,
    Run,
    Dataset,
}

impl From<EntityKind> for search::EntityKind {
    fn from(kind: EntityKind) -> Self {
        match kind {
            EntityKind::Drive => search::EntityKind::Drive,
            EntityKind::Scenario => search::EntityKind::Scenario,
            EntityKind::Run => search::EntityKind::Run,
            EntityKind::Dataset => search::EntityKind::Dataset,
        }
    }
}

#[derive(SimpleObject, Debug)]
pub struct FacetValue {
    pub value: String,
    pub count: i32,
}

#[derive(SimpleObject, Debug)]
pub struct Facet {
    pub field: String,
    pub values: Vec<FacetValue>,
}

#[derive(SimpleObject)]
pub struct SearchEdge {
    pub cursor: String,
    pub score: f64,
    pub node: CatalogEntity,
}

#[derive(SimpleObject)]
pub struct SearchResult {
    pub total_count: i32,
    pub edges: Vec<SearchEdge>,
    pub page_info: PageInfo,
    pub facets: Vec<Facet>,
}

pub async fn run_search(
    ctx: &Context<'_>,
    query: String,
    kinds: Option<Vec<EntityKind>>,
    first: Option<i32>,
    after: Option<String>,
) -> ApiResult<SearchResult> {
    let app = state(ctx);
    let first = super::page_limit(first)?;
    let request = SearchRequest {
        query,
        kinds: kinds.map(|kinds| kinds.into_iter().map(Into::into).collect()),
        first: first as usize,
        after,
    };
    let page = app.catalog.search(request).await?;
    let mut edges = Vec::with_capacity(page.hits.len());
    for hit in page.hits {
        // The index follows the database at once; a hit whose row vanished in between is
        // skipped rather than failing the page.
        let node = match hit.kind {
            search::EntityKind::Drive => catalog::get_drive(&app.db, &hit.id)
                .await?
                .map(|m| CatalogEntity::Drive(Drive::new(m))),
            search::EntityKind::Scenario => catalog::get_scenario(&app.db, &hit.id)
                .await?
                .map(|m| CatalogEntity::Scenario(Scenario(m))),
            search::EntityKind::Run => catalog::get_run(&app.db, &hit.id)
                .await?
                .map(|m| CatalogEntity::Run(Run(m))),
            search::EntityKind::Dataset => None,
        };
        if let Some(node) = node {
            edges.push(SearchEdge {
                cursor: hit.cursor,
                score: f64::from(hit.score),
                node,
            });
        }
    }
    Ok(SearchResult {
        total_count: i32::try_from(page.total).unwrap_or(i32::MAX),
        edges,
        page_info: PageInfo {
            has_next_page: page.has_next,
            end_cursor: page.end_cursor,
        },
        facets: page
            .facets
            .into_iter()
            .map(|facet| Facet {
                field: facet.field,
                values: facet
                    .values
                    .into_iter()
                    .map(|v| FacetValue {
                        value: v.value,
                        count: i32::try_from(v.count).unwrap_or(i32::MAX),
                    })
                    .collect(),
            })
            .collect(),
    })
}

#[derive(SimpleObject, Debug)]
pub struct SyncReport {
    pub objects_seen: i32,
    pub drives: i32,
    pub runs: i32,
    pub errors: Vec<String>,
    /// Objects new or changed since the last sync.
    pub objects_changed: i32,
    pub objects_deleted: i32,
    /// Files read from upstream (sidecars whole, logs and Parquet by footer) and their bytes.
    pub files_read: i32,
    pub bytes_read: super::scalars::Long,
}

/// How far this node's running (or last) catalog sync pass got.
#[derive(SimpleObject, Debug)]
pub struct SyncStatus {
    /// idle (no pass since the node started), listing, reading, writing, indexing or done.
    pub phase: String,
    /// Whether the pass covers only some prefixes (S3 events, office writes, `syncCatalog(prefix:)`).
    pub targeted: bool,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Objects listed so far, and those new or changed among them.
    pub objects_seen: super::scalars::Long,
    pub objects_changed: super::scalars::Long,
    /// Sidecars and footers read so far.
    pub files_read: super::scalars::Long,
    /// Problems with single objects so far (the last pass's report lists them).
    pub errors: super::scalars::Long,
    /// Objects listed per second over the pass.
    pub objects_per_second: f64,
    /// Why the last pass stopped, if it failed.
    pub failure: Option<String>,
}

impl From<milepost_indexer::sync::SyncStatus> for SyncStatus {
    fn from(status: milepost_indexer::sync::SyncStatus) -> Self {
        let long = |n: u64| super::scalars::Long(i64::try_from(n).unwrap_or(i64::MAX));
        SyncStatus {
            phase: status.phase.as_str().to_owned(),
            targeted: status.targeted,
            started_at: status.started_at,
            finished_at: status.finished_at,
            objects_seen: long(status.objects_seen),
            objects_changed: long(status.objects_changed),
            files_read: long(status.files_read),
            errors: long(status.errors),
            objects_per_second: status.objects_per_second,
            failure: status.failure,
        }
    }
}

pub async fn run_sync(ctx: &Context<'_>, prefix: Option<String>) -> ApiResult<SyncReport> {
    let app = state(ctx);
    let scope = match prefix {
        None => SyncScope::Whole,
        Some(prefix) => {
            let catalog = &app.config.catalog;
            if !prefix.starts_with(&catalog.drives_prefix)
                && !prefix.starts_with(&catalog.runs_prefix)
            {
                return Err(ApiError::bad_input(
                    "prefix",
                    format!(
                        "expected a prefix inside {:?} or {:?}, got {prefix:?}",
                        catalog.drives_prefix, catalog.runs_prefix
                    ),
                ));
            }
            SyncScope::Prefixes(vec![prefix])
        }
    };
    let report = app.sync(scope).await.map_err(ApiError::from)?;
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(SyncReport {
        objects_seen: count(report.objects_seen),
        drives: count(report.drives),
        runs: count(report.runs),
        errors: report.errors,
        objects_changed: count(report.objects_changed),
        objects_deleted: count(report.objects_deleted),
        files_read: count(report.files_read),
        bytes_read: super::scalars::Long(report.bytes_read as i64),
    })
}
