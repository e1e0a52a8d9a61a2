//! [`Catalog`]: the catalog database and the search index kept in step. Every change made
//! through it (registration, tagging, sync) is in the index before the call returns; changes
//! made by other nodes arrive through the change feed ([`crate::feed`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use milepost_schema::entity::{drive, run, scenario};
use milepost_schema::enums::RecordSource;
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};

use super::{
    drive_events, drive_scenarios, objects_bytes, DriveRecord, Layout, Owner, RunRecord,
    ScenarioTag,
};
use crate::documents;
use crate::error::{CatalogError, CatalogResult};
use crate::search::{SearchDocument, SearchIndex, SearchPage, SearchRequest};

#[derive(Clone)]
pub struct Catalog {
    pub db: DatabaseConnection,
    pub layout: Layout,
    pub search: Arc<SearchIndex>,
    /// Where this index stands in the change feed, and the one applier.
    pub(crate) feed: Arc<FeedState>,
}

/// The change feed's state for one index (shared by the clones of a [`Catalog`]).
#[derive(Debug, Default)]
pub(crate) struct FeedState {
    /// Held while changes are applied: one applier at a time, in id order.
    pub applier: tokio::sync::Mutex<()>,
    /// The last change applied.
    position: AtomicI64,
}

impl FeedState {
    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    pub fn set_position(&self, id: i64) {
        self.position.store(id, Ordering::Release);
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// The catalog over `db` with `search` as this node's index, which stands where its last
    /// commit says in the change feed (0: at the start).
    pub fn new(db: DatabaseConnection, layout: Layout, search: Arc<SearchIndex>) -> Self {
        let feed = FeedState::default();
        feed.set_position(search.feed_position().unwrap_or(0));
        Catalog {
            db,
            layout,
            search,
            feed: Arc::new(feed),
        }
    }

    pub async fn register_drive(
        &self,
        record: DriveRecord,
        source: RecordSource,
    ) -> CatalogResult<drive::Model> {
        let drive = super::register_drive(&self.db, &self.layout, record, source).await?;
        self.catch_up().await?;
        Ok(drive)
    }

    pub async fn register_run(
        &self,
        record: RunRecord,
        source: RecordSource,
    ) -> CatalogResult<run::Model> {
        let run = super::register_run(&self.db, &self.layout, record, source).await?;
        self.catch_up().await?;
        Ok(run)
    }

    pub async fn tag_scenario(&self, tag: ScenarioTag) -> CatalogResult<scenario::Model> {
        let scenario = super::tag_scenario(&self.db, tag).await?;
        self.catch_up().await?;
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

    pub(crate) async fn drive_documents(
        &self,
        drive: &drive::Model,
    ) -> CatalogResult<Vec<SearchDocument>> {
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

    /// Rebuilds the whole index from the database (`milepost reindex`, or an index found
    /// missing or incompatible at start-up). Returns the number of documents.
    pub async fn reindex(&self) -> CatalogResult<usize> {
        // Serialized with the feed's applier; the index then stands at the feed's head as read
        // before the records (a change committed meanwhile is applied again: harmless).
        let _applier = self.feed.applier.lock().await;
        let head = crate::feed::head(&self.db).await?;
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
        let count = tokio::task::spawn_blocking(move || index.rebuild_at(docs, head))
            .await
            .map_err(|err| CatalogError::Background(err.to_string()))??;
        self.feed.set_position(head);
        Ok(count)
    }
}
