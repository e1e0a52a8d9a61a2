//! The catalog's change feed: how every node's search index follows the one database.
//!
//! Every write of a drive, run or scenario appends a row to `catalog_changes` naming what
//! changed, in the transaction of the write ([`append`]). Each process's [`Catalog`] applies
//! the feed to its own tantivy index in id order ([`Catalog::catch_up`]), in batches of
//! whatever is pending, with one index commit per batch; the commit's payload is the last id
//! applied, so a restarted node resumes where its index stands.
//!
//! - A write through this process returns once its transaction is committed; it does not
//!   wait for an index commit (one per mutation was what bounded registration). The
//!   `search_feed` worker of the api calls `catch_up` every [`FOLLOW_EVERY`] and applies
//!   whatever is pending, this node's writes and other nodes', in one commit per batch: a
//!   change is searchable everywhere within about that interval.
//! - A search through [`Catalog::search`] first applies what this process has written and the
//!   index does not hold yet (`FeedState::behind_own_writes`), so a caller finds its own
//!   writes at once; concurrent callers share that commit.
//! - Ids must commit in order, or a follower that has applied id 11 would never see an id 10
//!   committed after it: on PostgreSQL, [`append`] takes a transaction-scoped advisory lock
//!   first (released at commit), so appends, the last statement of their transactions, commit
//!   one at a time; SQLite has one writer anyway.
//! - Applying is idempotent (documents are rebuilt from the database as it is when applied),
//!   so replaying a change is harmless.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use milepost_schema::entity::{catalog_change, drive, run, scenario};
use milepost_schema::enums::InputKind;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set, Statement,
};

use crate::catalog::DOCUMENT_BATCH;
use crate::error::{CatalogError, CatalogResult};
use crate::search::{EntityKind, SearchDocument};
use crate::Catalog;

/// How often a node looks for changes made by other nodes.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How long changes are kept: a node down for longer rebuilds its index when it starts
/// ([`Catalog::missed_changes`]).
pub const KEEP_CHANGES: Duration = Duration::from_secs(7 * 86_400);
/// The most changes applied in one index commit.
const BATCH: u64 = 4096;
/// The advisory lock key that orders appends on PostgreSQL ("milepost feed").
const APPEND_LOCK: i64 = 0x6d69_6c65_6665_6564;

/// Appends `changes` to the feed within the transaction `txn`; call it as the transaction's
/// last statement (on PostgreSQL it holds the feed's lock until the commit).
pub async fn append(
    txn: &impl ConnectionTrait,
    changes: &[(InputKind, &str)],
) -> CatalogResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [APPEND_LOCK.into()],
        ))
        .await
        .map_err(db)?;
    }
    let now = Utc::now();
    let rows = changes
        .iter()
        .map(|(kind, id)| catalog_change::ActiveModel {
            kind: Set(*kind),
            entity_id: Set((*id).to_owned()),
            created_at: Set(now),
            ..Default::default()
        });
    catalog_change::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await
        .map_err(db)?;
    Ok(())
}

/// The last change id in the feed (0 when empty): where an index built from the database now
/// stands.
pub async fn head(conn: &impl ConnectionTrait) -> CatalogResult<i64> {
    let last = catalog_change::Entity::find()
        .order_by_desc(catalog_change::Column::Id)
        .limit(1)
        .one(conn)
        .await
        .map_err(db)?;
    Ok(last.map_or(0, |change| change.id))
}

/// The first change id still in the feed, if any.
pub async fn tail(conn: &impl ConnectionTrait) -> CatalogResult<Option<i64>> {
    let first = catalog_change::Entity::find()
        .order_by_asc(catalog_change::Column::Id)
        .limit(1)
        .one(conn)
        .await
        .map_err(db)?;
    Ok(first.map(|change| change.id))
}

/// Deletes the changes older than `keep`, but never the newest one (it says where the feed
/// stands). Returns how many it deleted.
pub async fn prune(conn: &impl ConnectionTrait, keep: Duration) -> CatalogResult<u64> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(keep).unwrap_or_else(|_| chrono::Duration::days(7));
    let newest = head(conn).await?;
    let deleted = catalog_change::Entity::delete_many()
        .filter(catalog_change::Column::CreatedAt.lt(cutoff))
        .filter(catalog_change::Column::Id.lt(newest))
        .exec(conn)
        .await
        .map_err(db)?;
    Ok(deleted.rows_affected)
}

fn db(err: sea_orm::DbErr) -> CatalogError {
    CatalogError::from(milepost_schema::DbError::from(err))
}

impl Catalog {
    /// Applies every change of the feed this index has not applied yet, in batches, and
    /// returns how many it applied. Concurrent calls queue: a call that finds its caller's
    /// change applied by the one before returns at once.
    pub async fn catch_up(&self) -> CatalogResult<usize> {
        let _applier = self.feed.applier.lock().await;
        // Read before the feed: every change this process counted so far is committed, so
        // the reads below see it.
        let written = self.feed.written();
        let mut applied = 0;
        loop {
            let from = self.feed.position();
            let changes = catalog_change::Entity::find()
                .filter(catalog_change::Column::Id.gt(from))
                .order_by_asc(catalog_change::Column::Id)
                .limit(BATCH)
                .all(&self.db)
                .await
                .map_err(db)?;
            let Some(last) = changes.last().map(|change| change.id) else {
                self.feed.applied_up_to(written);
                return Ok(applied);
            };
            let count = changes.len();
            let (upserts, deletes) = self.documents_for(&changes).await?;
            let index = self.search.clone();
            tokio::task::spawn_blocking(move || index.apply(upserts, deletes, last))
                .await
                .map_err(|err| CatalogError::Background(err.to_string()))??;
            self.feed.set_position(last);
            applied += count;
            if (count as u64) < BATCH {
                self.feed.applied_up_to(written);
                return Ok(applied);
            }
        }
    }

    /// The documents to write and the keys to delete for `changes`, from the database as it
    /// is now.
    async fn documents_for(
        &self,
        changes: &[catalog_change::Model],
    ) -> CatalogResult<(Vec<SearchDocument>, Vec<(EntityKind, String)>)> {
        let mut drives: BTreeSet<String> = BTreeSet::new();
        let mut runs: BTreeSet<String> = BTreeSet::new();
        let mut scenarios: BTreeSet<String> = BTreeSet::new();
        for change in changes {
            let set = match change.kind {
                InputKind::Drive => &mut drives,
                InputKind::Run => &mut runs,
                InputKind::Scenario => &mut scenarios,
                // Datasets are not in the search index.
                InputKind::Dataset => continue,
            };
            set.insert(change.entity_id.clone());
        }
        let mut deletes = Vec::new();
        // A scenario's document is written with its drive's; a scenario that is gone (its
        // drive removed, or retagged) loses its document.
        let scenarios: Vec<String> = scenarios.into_iter().collect();
        for batch in scenarios.chunks(DOCUMENT_BATCH) {
            let owners: HashMap<String, String> = scenario::Entity::find()
                .select_only()
                .column(scenario::Column::Id)
                .column(scenario::Column::DriveId)
                .filter(scenario::Column::Id.is_in(batch.iter().map(String::as_str)))
                .into_tuple::<(String, String)>()
                .all(&self.db)
                .await
                .map_err(db)?
                .into_iter()
                .collect();
            for id in batch {
                match owners.get(id) {
                    Some(drive_id) => {
                        drives.insert(drive_id.clone());
                    }
                    None => deletes.push((EntityKind::Scenario, id.clone())),
                }
            }
        }
        let mut upserts = Vec::new();
        let drives: Vec<String> = drives.into_iter().collect();
        for batch in drives.chunks(DOCUMENT_BATCH) {
            let found = drive::Entity::find()
                .filter(drive::Column::Id.is_in(batch.iter().map(String::as_str)))
                .all(&self.db)
                .await
                .map_err(db)?;
            deletes.extend(gone(EntityKind::Drive, batch, found.iter().map(|d| &d.id)));
            upserts.extend(self.drive_documents(&found).await?);
        }
        let runs: Vec<String> = runs.into_iter().collect();
        for batch in runs.chunks(DOCUMENT_BATCH) {
            let found = run::Entity::find()
                .filter(run::Column::Id.is_in(batch.iter().map(String::as_str)))
                .all(&self.db)
                .await
                .map_err(db)?;
            deletes.extend(gone(EntityKind::Run, batch, found.iter().map(|r| &r.id)));
            upserts.extend(self.run_documents(&found).await?);
        }
        Ok((upserts, deletes))
    }

    /// The feed position of this node's index: the last change applied.
    pub fn feed_position(&self) -> i64 {
        self.feed.position()
    }

    /// Whether changes this index has not applied were pruned from the feed meanwhile (the
    /// node was down longer than [`KEEP_CHANGES`]): then only a rebuild brings it up to date.
    pub async fn missed_changes(&self) -> CatalogResult<bool> {
        Ok(tail(&self.db)
            .await?
            .is_some_and(|first| first > self.feed.position() + 1))
    }
}

/// The documents to delete for the ids of `batch` that are not among `found` (their records
/// are gone from the database).
fn gone<'a>(
    kind: EntityKind,
    batch: &[String],
    found: impl Iterator<Item = &'a String>,
) -> Vec<(EntityKind, String)> {
    let present: HashSet<&String> = found.collect();
    batch
        .iter()
        .filter(|id| !present.contains(id))
        .map(|id| (kind, id.clone()))
        .collect()
}

/// Records that `drives` and `runs` changed (outside a write that appends itself: the
/// sync's object and metadata updates), in a transaction of its own.
pub async fn append_touched(
    catalog: &Catalog,
    drives: &[String],
    runs: &[String],
) -> CatalogResult<()> {
    use sea_orm::TransactionTrait as _;
    let changes: Vec<(InputKind, &str)> = drives
        .iter()
        .map(|id| (InputKind::Drive, id.as_str()))
        .chain(runs.iter().map(|id| (InputKind::Run, id.as_str())))
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    let txn = catalog.db.begin().await.map_err(db)?;
    append(&txn, &changes).await?;
    txn.commit().await.map_err(db)?;
    Ok(())
}
