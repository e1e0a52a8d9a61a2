//! The write stage: objects upserted in multi-row batches (one transaction per batch) and
//! attached to their drive or run, gone objects marked, descriptions stored, topics refreshed.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use milepost_schema::entity::{drive, object, run};
use milepost_store::ObjectMeta;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, Set,
    TransactionTrait,
};

use super::diff::GoneRow;
use super::read::{self, Reader};
use super::{SyncError, SyncReport};
use crate::catalog::Catalog;
use crate::documents::string_list;

/// Rows per multi-row statement: 11 values each stays far below SQLite's and PostgreSQL's
/// limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 1000;
/// Single-row updates per transaction.
const UPDATES_PER_TRANSACTION: usize = 1000;

/// The drives and runs whose documents a pass changed.
#[derive(Debug, Default)]
pub(super) struct Touched {
    pub drives: BTreeSet<String>,
    pub runs: BTreeSet<String>,
}

impl Touched {
    fn add(&mut self, owner: Option<&OwnerRef>) {
        match owner {
            Some(OwnerRef::Drive(id)) => self.drives.insert(id.clone()),
            Some(OwnerRef::Run(id)) => self.runs.insert(id.clone()),
            None => false,
        };
    }

    pub fn add_owner_of(&mut self, owners: &OwnerPrefixes, key: &str) {
        self.add(owners.owner_of(key));
    }
}

#[derive(Debug)]
pub(super) enum OwnerRef {
    Drive(String),
    Run(String),
}

/// Prefix → owner, for attaching objects to the drive or run whose folder holds them.
pub(super) struct OwnerPrefixes {
    by_prefix: HashMap<String, OwnerRef>,
}

impl OwnerPrefixes {
    pub async fn load(catalog: &Catalog, bucket: &str) -> Result<OwnerPrefixes, SyncError> {
        let mut by_prefix = HashMap::new();
        let drives: Vec<(String, String)> = drive::Entity::find()
            .select_only()
            .columns([drive::Column::Id, drive::Column::Prefix])
            .filter(drive::Column::Bucket.eq(bucket))
            .into_tuple()
            .all(&catalog.db)
            .await?;
        for (id, prefix) in drives {
            by_prefix.insert(prefix, OwnerRef::Drive(id));
        }
        let runs: Vec<(String, String)> = run::Entity::find()
            .select_only()
            .columns([run::Column::Id, run::Column::Prefix])
            .filter(run::Column::Bucket.eq(bucket))
            .into_tuple()
            .all(&catalog.db)
            .await?;
        for (id, prefix) in runs {
            by_prefix.insert(prefix, OwnerRef::Run(id));
        }
        Ok(OwnerPrefixes { by_prefix })
    }

    /// The owner whose prefix is the longest ancestor folder of `key`.
    pub fn owner_of(&self, key: &str) -> Option<&OwnerRef> {
        let mut end = key.len();
        while let Some(slash) = key[..end].rfind('/') {
            if let Some(owner) = self.by_prefix.get(&key[..=slash]) {
                return Some(owner);
            }
            end = slash;
        }
        None
    }
}

/// Inserts the new objects and updates the changed ones (their description cleared, to be
/// read again), in batches of [`ROWS_PER_STATEMENT`] rows, each batch one statement in its
/// own transaction. An object's owner is set from its folder; a row keeps the owner it had
/// when its folder names none.
pub(super) async fn upsert_objects(
    db: &DatabaseConnection,
    bucket: &str,
    changed: &[ObjectMeta],
    owners: &OwnerPrefixes,
    now: DateTime<Utc>,
    touched: &mut Touched,
) -> Result<(), SyncError> {
    for batch in changed.chunks(ROWS_PER_STATEMENT) {
        let rows = batch.iter().map(|meta| {
            let owner = owners.owner_of(&meta.key);
            touched.add(owner);
            object::ActiveModel {
                bucket: Set(bucket.to_owned()),
                key: Set(meta.key.clone()),
                size: Set(meta.size as i64),
                etag: Set(meta.etag.clone()),
                last_modified: Set(meta.last_modified),
                drive_id: Set(match owner {
                    Some(OwnerRef::Drive(id)) => Some(id.clone()),
                    _ => None,
                }),
                run_id: Set(match owner {
                    Some(OwnerRef::Run(id)) => Some(id.clone()),
                    _ => None,
                }),
                deleted_at: Set(None),
                metadata: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
        });
        let rows: Vec<object::ActiveModel> = rows.collect();
        object::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::columns([object::Column::Bucket, object::Column::Key])
                    .update_columns([
                        object::Column::Size,
                        object::Column::Etag,
                        object::Column::LastModified,
                        object::Column::DeletedAt,
                        object::Column::Metadata,
                        object::Column::UpdatedAt,
                    ])
                    .value(
                        object::Column::DriveId,
                        Expr::cust("COALESCE(excluded.drive_id, objects.drive_id)"),
                    )
                    .value(
                        object::Column::RunId,
                        Expr::cust("COALESCE(excluded.run_id, objects.run_id)"),
                    )
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Marks the rows of objects no longer listed as deleted (kept for history).
pub(super) async fn mark_gone(
    db: &DatabaseConnection,
    gone: &[GoneRow],
    now: DateTime<Utc>,
    touched: &mut Touched,
) -> Result<(), SyncError> {
    if gone.is_empty() {
        return Ok(());
    }
    let txn = db.begin().await?;
    for batch in gone.chunks(ROWS_PER_STATEMENT) {
        object::Entity::update_many()
            .col_expr(object::Column::DeletedAt, Expr::value(now))
            .col_expr(object::Column::UpdatedAt, Expr::value(now))
            .filter(object::Column::Id.is_in(batch.iter().map(|row| row.id)))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    for row in gone {
        touched.drives.extend(row.drive_id.clone());
        touched.runs.extend(row.run_id.clone());
    }
    Ok(())
}

/// Attaches live objects without an owner (ones whose drive or run sidecar appeared only
/// now) to the drive or run whose folder holds them, one statement per owner.
pub(super) async fn attach_orphans(
    db: &DatabaseConnection,
    bucket: &str,
    owners: &OwnerPrefixes,
    touched: &mut Touched,
) -> Result<(), SyncError> {
    let orphans: Vec<(i64, String)> = object::Entity::find()
        .select_only()
        .columns([object::Column::Id, object::Column::Key])
        .filter(object::Column::Bucket.eq(bucket))
        .filter(object::Column::DriveId.is_null())
        .filter(object::Column::RunId.is_null())
        .filter(object::Column::DeletedAt.is_null())
        .into_tuple()
        .all(db)
        .await?;
    let mut by_owner: HashMap<(bool, &str), Vec<i64>> = HashMap::new();
    for (id, key) in &orphans {
        match owners.owner_of(key) {
            Some(OwnerRef::Drive(owner)) => by_owner.entry((true, owner)).or_default().push(*id),
            Some(OwnerRef::Run(owner)) => by_owner.entry((false, owner)).or_default().push(*id),
            None => {}
        }
    }
    if by_owner.is_empty() {
        return Ok(());
    }
    let txn = db.begin().await?;
    for ((is_drive, owner), ids) in &by_owner {
        let column = if *is_drive {
            touched.drives.insert((*owner).to_owned());
            object::Column::DriveId
        } else {
            touched.runs.insert((*owner).to_owned());
            object::Column::RunId
        };
        for batch in ids.chunks(ROWS_PER_STATEMENT) {
            object::Entity::update_many()
                .col_expr(column, Expr::value(*owner))
                .filter(object::Column::Id.is_in(batch.iter().copied()))
                .exec(&txn)
                .await?;
        }
    }
    txn.commit().await?;
    Ok(())
}

/// Stores each key's description in `objects.metadata`, [`UPDATES_PER_TRANSACTION`] per
/// transaction.
pub(super) async fn store_descriptions(
    db: &DatabaseConnection,
    bucket: &str,
    descriptions: Vec<(String, serde_json::Value)>,
) -> Result<(), SyncError> {
    let mut descriptions = descriptions.into_iter().peekable();
    while descriptions.peek().is_some() {
        let txn = db.begin().await?;
        for (key, value) in descriptions.by_ref().take(UPDATES_PER_TRANSACTION) {
            object::Entity::update_many()
                .col_expr(object::Column::Metadata, Expr::value(value))
                .filter(object::Column::Bucket.eq(bucket))
                .filter(object::Column::Key.eq(&key))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
    }
    Ok(())
}

/// Reads the runs' metrics.parquet among `needs_read` and stores the runs' metrics; returns
/// the files' descriptions.
pub(super) async fn read_run_metrics(
    db: &DatabaseConnection,
    reader: &Reader,
    needs_read: &[ObjectMeta],
    owners: &OwnerPrefixes,
    touched: &mut Touched,
    report: &mut SyncReport,
) -> Result<Vec<(String, serde_json::Value)>, SyncError> {
    let mut descriptions = Vec::new();
    for meta in needs_read.iter().filter(|m| read::is_metrics(&m.key)) {
        let description = match owners.owner_of(&meta.key) {
            Some(OwnerRef::Run(run_id)) => match read::read_metrics(reader, meta).await {
                Ok((description, metrics)) => {
                    run::Entity::update_many()
                        .col_expr(run::Column::Metrics, Expr::value(metrics))
                        .filter(run::Column::Id.eq(run_id))
                        .exec(db)
                        .await?;
                    touched.runs.insert(run_id.clone());
                    description
                }
                Err(message) => {
                    report.errors.push(format!("{}: {message}", meta.key));
                    serde_json::json!({ "error": message })
                }
            },
            _ => {
                let message = "metrics.parquet outside any run (no run.json beside it)";
                report.errors.push(format!("{}: {message}", meta.key));
                serde_json::json!({ "error": message })
            }
        };
        descriptions.push((meta.key.clone(), description));
    }
    Ok(descriptions)
}

/// Sets each drive's topics to the union of its live logs' topics.
pub(super) async fn refresh_topics(
    catalog: &Catalog,
    drive_ids: &BTreeSet<String>,
) -> Result<(), SyncError> {
    for drive_id in drive_ids {
        refresh_drive_topics(catalog, drive_id).await?;
    }
    Ok(())
}

async fn refresh_drive_topics(catalog: &Catalog, drive_id: &str) -> Result<(), SyncError> {
    let logs: Vec<Option<serde_json::Value>> = object::Entity::find()
        .select_only()
        .column(object::Column::Metadata)
        .filter(object::Column::DriveId.eq(drive_id))
        .filter(object::Column::DeletedAt.is_null())
        .filter(object::Column::Key.ends_with(".mcap"))
        .into_tuple()
        .all(&catalog.db)
        .await?;
    let mut topics = BTreeSet::new();
    for summary in logs.into_iter().flatten() {
        if let Some(list) = summary["mcap"]["topics"].as_array() {
            topics.extend(
                list.iter()
                    .filter_map(|t| t["topic"].as_str().map(str::to_owned)),
            );
        }
    }
    let Some(drive) = drive::Entity::find_by_id(drive_id).one(&catalog.db).await? else {
        return Ok(());
    };
    let topics: Vec<String> = topics.into_iter().collect();
    if string_list(&drive.topics) != topics {
        let mut active: drive::ActiveModel = drive.into();
        active.topics = Set(serde_json::json!(topics));
        active.update(&catalog.db).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_found_by_the_longest_folder() {
        let mut by_prefix = HashMap::new();
        by_prefix.insert("drives/a/".to_owned(), OwnerRef::Drive("outer".into()));
        by_prefix.insert("drives/a/b/".to_owned(), OwnerRef::Drive("inner".into()));
        let owners = OwnerPrefixes { by_prefix };
        assert!(
            matches!(owners.owner_of("drives/a/b/c/x.mcap"), Some(OwnerRef::Drive(id)) if id == "inner")
        );
        assert!(
            matches!(owners.owner_of("drives/a/y.mcap"), Some(OwnerRef::Drive(id)) if id == "outer")
        );
        assert!(owners.owner_of("drives/z/y.mcap").is_none());
    }
}
