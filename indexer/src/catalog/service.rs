//! [`Catalog`]: the catalog database and the search index kept in step through the change
//! feed ([`crate::feed`]). A change made through it (registration, tagging) returns once it is
//! committed to the database, without waiting for an index commit: the feed's follower
//! applies it within [`FOLLOW_EVERY`](crate::feed::FOLLOW_EVERY), many changes per commit,
//! and a search through this catalog first applies what this process has written, so a
//! caller always finds its own writes. Changes made by other nodes arrive through the feed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;

use milepost_schema::entity::{drive, drive_event, object, run, scenario};
use milepost_schema::enums::RecordSource;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{DriveRecord, Layout, RunRecord, ScenarioTag};
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
    /// Changes committed through this process (counted after their commit).
    written: AtomicU64,
    /// Of those, how many an applier had seen committed when it started a catch-up that
    /// finished: every change counted up to here is in the index.
    applied_written: AtomicU64,
}

impl FeedState {
    pub fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    pub fn set_position(&self, id: i64) {
        self.position.store(id, Ordering::Release);
    }

    /// Counts a change committed through this process (call after its commit).
    pub fn wrote(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
    }

    /// The count of this process's committed changes, read by an applier before it reads the
    /// feed: all of them are in what it reads.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// An applier that started when `written` changes were committed has applied them.
    pub fn applied_up_to(&self, written: u64) {
        self.applied_written.fetch_max(written, Ordering::AcqRel);
    }

    /// Whether changes committed through this process may not be in the index yet.
    pub fn behind_own_writes(&self) -> bool {
        self.applied_written.load(Ordering::Acquire) < self.written()
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
        self.feed.wrote();
        Ok(drive)
    }

    pub async fn register_run(
        &self,
        record: RunRecord,
        source: RecordSource,
    ) -> CatalogResult<run::Model> {
        let run = super::register_run(&self.db, &self.layout, record, source).await?;
        self.feed.wrote();
        Ok(run)
    }

    pub async fn tag_scenario(&self, tag: ScenarioTag) -> CatalogResult<scenario::Model> {
        let scenario = super::tag_scenario(&self.db, tag).await?;
        self.feed.wrote();
        Ok(scenario)
    }

    /// Searches the index off the async runtime (tantivy blocks), after applying the changes
    /// this process has committed and the index does not hold yet.
    pub async fn search(&self, request: SearchRequest) -> CatalogResult<SearchPage> {
        if self.feed.behind_own_writes() {
            self.catch_up().await?;
        }
        let index = self.search.clone();
        let page = tokio::task::spawn_blocking(move || index.search(&request))
            .await
            .map_err(|err| CatalogError::Background(err.to_string()))??;
        Ok(page)
    }

    /// The documents of `drives` (each drive's and its scenarios') in a few statements per
    /// [`DOCUMENT_BATCH`] drives: their events, scenarios and object bytes are read for the
    /// whole batch at once, not drive by drive.
    pub(crate) async fn drive_documents(
        &self,
        drives: &[drive::Model],
    ) -> CatalogResult<Vec<SearchDocument>> {
        let mut docs = Vec::with_capacity(drives.len() * 2);
        for batch in drives.chunks(DOCUMENT_BATCH) {
            let ids: Vec<&str> = batch.iter().map(|d| d.id.as_str()).collect();
            let mut events = group_by(events_of(&self.db, &ids).await?, |e| e.drive_id.clone());
            let mut scenarios =
                group_by(scenarios_of(&self.db, &ids).await?, |s| s.drive_id.clone());
            let bytes = bytes_of(&self.db, OwnerColumn::Drive, &ids).await?;
            for drive in batch {
                let events = events.remove(&drive.id).unwrap_or_default();
                let scenarios = scenarios.remove(&drive.id).unwrap_or_default();
                let total = bytes.get(&drive.id).copied().unwrap_or(0);
                docs.push(documents::drive_document(drive, &events, &scenarios, total));
                docs.extend(
                    scenarios
                        .iter()
                        .map(|s| documents::scenario_document(s, drive)),
                );
            }
        }
        Ok(docs)
    }

    /// The documents of `runs`, their object bytes read per [`DOCUMENT_BATCH`] runs.
    pub(crate) async fn run_documents(
        &self,
        runs: &[run::Model],
    ) -> CatalogResult<Vec<SearchDocument>> {
        let mut docs = Vec::with_capacity(runs.len());
        for batch in runs.chunks(DOCUMENT_BATCH) {
            let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
            let bytes = bytes_of(&self.db, OwnerColumn::Run, &ids).await?;
            docs.extend(
                batch.iter().map(|run| {
                    documents::run_document(run, bytes.get(&run.id).copied().unwrap_or(0))
                }),
            );
        }
        Ok(docs)
    }

    /// Rebuilds the whole index from the database (`milepost reindex`, or an index found
    /// missing or incompatible at start-up). Returns the number of documents.
    pub async fn reindex(&self) -> CatalogResult<usize> {
        // Serialized with the feed's applier; the index then stands at the feed's head as read
        // before the records (a change committed meanwhile is applied again: harmless).
        let _applier = self.feed.applier.lock().await;
        let head = crate::feed::head(&self.db).await?;
        let drives = drive::Entity::find()
            .order_by_asc(drive::Column::Id)
            .all(&self.db)
            .await?;
        let mut docs = self.drive_documents(&drives).await?;
        drop(drives);
        let runs = run::Entity::find()
            .order_by_asc(run::Column::Id)
            .all(&self.db)
            .await?;
        docs.extend(self.run_documents(&runs).await?);
        let index = self.search.clone();
        let count = tokio::task::spawn_blocking(move || index.rebuild_at(docs, head))
            .await
            .map_err(|err| CatalogError::Background(err.to_string()))??;
        self.feed.set_position(head);
        Ok(count)
    }
}

/// Drives or runs whose rows are read for one batch of documents in one statement each.
pub(crate) const DOCUMENT_BATCH: usize = 500;

fn group_by<T>(rows: Vec<T>, key: impl Fn(&T) -> String) -> HashMap<String, Vec<T>> {
    let mut groups: HashMap<String, Vec<T>> = HashMap::new();
    for row in rows {
        groups.entry(key(&row)).or_default().push(row);
    }
    groups
}

/// The events of `drives`, each drive's in position order (as [`super::drive_events`]).
async fn events_of(
    conn: &DatabaseConnection,
    drives: &[&str],
) -> CatalogResult<Vec<drive_event::Model>> {
    Ok(drive_event::Entity::find()
        .filter(drive_event::Column::DriveId.is_in(drives.iter().copied()))
        .order_by_asc(drive_event::Column::DriveId)
        .order_by_asc(drive_event::Column::Position)
        .all(conn)
        .await?)
}

/// The scenarios of `drives`, each drive's in the order of [`super::drive_scenarios`].
async fn scenarios_of(
    conn: &DatabaseConnection,
    drives: &[&str],
) -> CatalogResult<Vec<scenario::Model>> {
    Ok(scenario::Entity::find()
        .filter(scenario::Column::DriveId.is_in(drives.iter().copied()))
        .order_by_asc(scenario::Column::DriveId)
        .order_by_asc(scenario::Column::StartTime)
        .order_by_asc(scenario::Column::Id)
        .all(conn)
        .await?)
}

#[derive(Clone, Copy)]
enum OwnerColumn {
    Drive,
    Run,
}

/// The bytes of the live objects of each of `owners` (as [`objects_bytes`] of each), in one
/// statement; owners without objects are absent.
async fn bytes_of(
    conn: &DatabaseConnection,
    column: OwnerColumn,
    owners: &[&str],
) -> CatalogResult<HashMap<String, i64>> {
    let column = match column {
        OwnerColumn::Drive => object::Column::DriveId,
        OwnerColumn::Run => object::Column::RunId,
    };
    let rows: Vec<(Option<String>, i64)> = object::Entity::find()
        .select_only()
        .column(column)
        .column_as(
            Expr::cust(r#"CAST(COALESCE(SUM("objects"."size"), 0) AS BIGINT)"#),
            "total",
        )
        .filter(column.is_in(owners.iter().copied()))
        .filter(object::Column::DeletedAt.is_null())
        .group_by(column)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(owner, total)| owner.map(|owner| (owner, total)))
        .collect())
}
