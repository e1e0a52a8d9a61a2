//! [`Catalog`]: the catalog database and the search index kept in step. Every change made
//! through it (registration, tagging, sync) is in the index before the call returns.

use std::sync::Arc;

use milepost_schema::entity::{drive, run, scenario};
use milepost_schema::enums::RecordSource;
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};

use super::{
    drive_events, drive_scenarios, get_drive, get_run, objects_bytes, DriveRecord, Layout, Owner,
    RunRecord, ScenarioTag,
};
use crate::documents;
use crate::error::{CatalogError, CatalogResult};
use crate::search::{SearchDocument, SearchIndex, SearchPage, SearchRequest};

#[derive(Clone)]
pub struct Catalog {
    pub db: DatabaseConnection,
    pub layout: Layout,
    pub search: Arc<SearchIndex>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn new(db: DatabaseConnection, layout: Layout, search: Arc<SearchIndex>) -> Self {
        Catalog { db, layout, search }
    }

    pub async fn register_drive(
        &self,
        record: DriveRecord,
        source: RecordSource,
    ) -> CatalogResult<drive::Model> {
        let drive = super::register_drive(&self.db, &self.layout, record, source).await?;
        self.index_drives(std::slice::from_ref(&drive.id)).await?;
        Ok(drive)
    }

    pub async fn register_run(
        &self,
        record: RunRecord,
        source: RecordSource,
    ) -> CatalogResult<run::Model> {
        let run = super::register_run(&self.db, &self.layout, record, source).await?;
        self.index_runs(std::slice::from_ref(&run.id)).await?;
        Ok(run)
    }

    pub async fn tag_scenario(&self, tag: ScenarioTag) -> CatalogResult<scenario::Model> {
        let scenario = super::tag_scenario(&self.db, tag).await?;
        self.index_drives(std::slice::from_ref(&scenario.drive_id))
            .await?;
        Ok(scenario)
    }

    /// Searches the index off the async runtime (tantivy blocks).
    pub async fn search(&self, request: SearchRequest) -> CatalogResult<SearchPage> {
        let index = self.search.clone();
        let page = tokio::task::spawn_blocking(move || index.search(&request))
            .await
            .map_err(|err| CatalogError::Background(err.to_string()))??;
        Ok(page)
    }

    /// Brings the documents of these drives and all their scenarios up to date; a drive that
    /// no longer exists is removed from the index with its scenarios.
    pub async fn index_drives(&self, ids: &[String]) -> CatalogResult<()> {
        let mut docs = Vec::new();
        for id in ids {
            if let Some(drive) = get_drive(&self.db, id).await? {
                docs.extend(self.drive_documents(&drive).await?);
            }
        }
        self.upsert(docs).await
    }

    pub async fn index_runs(&self, ids: &[String]) -> CatalogResult<()> {
        let mut docs = Vec::new();
        for id in ids {
            if let Some(run) = get_run(&self.db, id).await? {
                let bytes = objects_bytes(&self.db, Owner::Run(&run.id), false).await?;
                docs.push(documents::run_document(&run, bytes));
            }
        }
        self.upsert(docs).await
    }

    async fn drive_documents(&self, drive: &drive::Model) -> CatalogResult<Vec<SearchDocument>> {
        let events = drive_events(&self.db, &drive.id).await?;
        let scenarios = drive_scenarios(&self.db, &drive.id).await?;
        let bytes = objects_bytes(&self.db, Owner::Drive(&drive.id), false).await?;
        let mut docs = vec![documents::drive_document(drive, &events, &scenarios, bytes)];
        docs.extend(
            scenarios
                .iter()
                .map(|s| documents::scenario_document(s, drive)),
        );
        Ok(docs)
    }

    async fn upsert(&self, docs: Vec<SearchDocument>) -> CatalogResult<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let index = self.search.clone();
        tokio::task::spawn_blocking(move || index.upsert(docs))
            .await
            .map_err(|err| CatalogError::Background(err.to_string()))??;
        Ok(())
    }

    /// Rebuilds the whole index from the database (`milepost reindex`, or an index found
    /// missing or incompatible at start-up). Returns the number of documents.
    pub async fn reindex(&self) -> CatalogResult<usize> {
        let mut docs = Vec::new();
        for drive in drive::Entity::find()
            .order_by_asc(drive::Column::Id)
            .all(&self.db)
            .await?
        {
            docs.extend(self.drive_documents(&drive).await?);
        }
        for run in run::Entity::find()
            .order_by_asc(run::Column::Id)
            .all(&self.db)
            .await?
        {
            let bytes = objects_bytes(&self.db, Owner::Run(&run.id), false).await?;
            docs.push(documents::run_document(&run, bytes));
        }
        let index = self.search.clone();
        let count = tokio::task::spawn_blocking(move || index.rebuild(docs))
            .await
            .map_err(|err| CatalogError::Background(err.to_string()))??;
        Ok(count)
    }
}
