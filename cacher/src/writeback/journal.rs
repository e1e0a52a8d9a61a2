//! The write-back journal: rows of the `transfers` table. The auto-increment id is the
//! sequence number of acknowledgement: journaling takes a per-key lock first (PostgreSQL: a
//! transaction-scoped advisory lock; SQLite: its single writer), so for one key the ids are in
//! the order the writes were acknowledged. Every acknowledged write or delete has a row before
//! it is acknowledged; the uploader drives rows `queued → uploading → done`, and a restart
//! puts `uploading` and `failed` rows back to `queued`.
//!
//! **The newest row of a key is the only one that may still reach S3.** A row with a newer
//! row of its key is superseded wherever it would otherwise run again: when the newer row is
//! journaled (if it is queued or failed), when an attempt of it ends in a retry or a failure,
//! when the uploader would start it, and at start-up. A row already uploading when a newer one
//! is journaled finishes first (the uploader never runs two transfers of one key at once).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use milepost_schema::entity::{transfer, transfer_metadata};
use milepost_schema::enums::{TransferOp, TransferState};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait as _, DatabaseBackend,
    DatabaseConnection, EntityTrait as _, PaginatorTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _, Set, Statement,
};

use super::WriteBackError;
use crate::cache::ObjectKey;
use milepost_store::ObjectMetadata;

/// Transfers that still have to run (or that failed and will be retried at the next start).
pub(crate) const ACTIVE: [TransferState; 3] = [
    TransferState::Queued,
    TransferState::Uploading,
    TransferState::Failed,
];

/// A new journal entry.
#[derive(Debug)]
pub(crate) struct NewTransfer<'a> {
    pub op: TransferOp,
    pub bucket: &'a str,
    pub key: &'a str,
    /// For a put: the object written.
    pub object: Option<&'a ObjectKey>,
    /// Relative to the cache root.
    pub path: Option<String>,
    /// For a put: the object's metadata (kept only when not empty).
    pub metadata: Option<&'a ObjectMetadata>,
    pub priority: i32,
}

/// Journals `new` and, in the same transaction, supersedes the queued or failed transfers of
/// the same key (the last acknowledged write wins; a transfer already uploading finishes
/// first, see the uploader). Returns the new row and the superseded ones.
pub(crate) async fn enqueue(
    db: &DatabaseConnection,
    new: NewTransfer<'_>,
) -> Result<(transfer::Model, Vec<transfer::Model>), WriteBackError> {
    let what = || {
        format!(
            "journaling the {} of s3://{}/{}",
            new.op, new.bucket, new.key
        )
    };
    // It reads the key's queued rows, then writes: on SQLite the write lock is taken first
    // (a read-first transaction fails at its write once another connection has committed,
    // and retries could keep losing under steady writes).
    let txn = milepost_schema::begin_write(db)
        .await
        .map_err(|e| WriteBackError::db(what(), e))?;
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        // Writers of one key queue here, so that each sees the rows of the ones before it
        // (READ COMMITTED reads what committed before each statement) and ids follow the
        // order of acknowledgement. SQLite has one writer at a time already.
        txn.execute(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
            [format!("{}/{}", new.bucket, new.key).into()],
        ))
        .await
        .map_err(|e| WriteBackError::db(what(), e))?;
    }
    let now = Utc::now();
    let superseded = transfer::Entity::find()
        .filter(transfer::Column::Bucket.eq(new.bucket))
        .filter(transfer::Column::Key.eq(new.key))
        .filter(transfer::Column::State.is_in([TransferState::Queued, TransferState::Failed]))
        .all(&txn)
        .await
        .map_err(|e| WriteBackError::db(what(), e))?;
    if !superseded.is_empty() {
        transfer::Entity::update_many()
            .col_expr(
                transfer::Column::State,
                Expr::value(TransferState::Superseded),
            )
            .col_expr(transfer::Column::FinishedAt, Expr::value(now))
            .filter(transfer::Column::Id.is_in(superseded.iter().map(|t| t.id)))
            .exec(&txn)
            .await
            .map_err(|e| WriteBackError::db(what(), e))?;
    }
    let row = transfer::ActiveModel {
        op: Set(new.op),
        bucket: Set(new.bucket.to_owned()),
        key: Set(new.key.to_owned()),
        size: Set(new
            .object
            .map_or(0, |o| i64::try_from(o.size).unwrap_or(i64::MAX))),
        etag: Set(new.object.map(|o| o.etag.clone())),
        staging_path: Set(new.path.clone()),
        state: Set(TransferState::Queued),
        priority: Set(new.priority),
        bytes_done: Set(0),
        attempts: Set(0),
        enqueued_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(|e| WriteBackError::db(what(), e))?;
    if let Some(json) = new.metadata.and_then(ObjectMetadata::to_json) {
        transfer_metadata::Entity::update_many()
            .col_expr(transfer_metadata::Column::Metadata, Expr::value(json))
            .filter(transfer_metadata::Column::Id.eq(row.id))
            .exec(&txn)
            .await
            .map_err(|e| WriteBackError::db(what(), e))?;
    }
    txn.commit()
        .await
        .map_err(|e| WriteBackError::db(what(), e))?;
    Ok((row, superseded))
}

/// At start-up: transfers cut short by a stop or a crash (`uploading`) and those that failed
/// run again, unless a newer row of their key exists (then they are superseded: they must
/// never land over a newer write or delete). Returns how many were requeued.
pub(crate) async fn requeue_interrupted(db: &DatabaseConnection) -> Result<u64, WriteBackError> {
    let stale = db
        .execute(Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                DatabaseBackend::Postgres => {
                    "UPDATE transfers SET state = $1, finished_at = $2 \
                     WHERE state IN ($3, $4, $5) AND EXISTS (SELECT 1 FROM transfers AS newer \
                     WHERE newer.bucket = transfers.bucket AND newer.key = transfers.key \
                     AND newer.id > transfers.id)"
                }
                _ => {
                    "UPDATE transfers SET state = ?, finished_at = ? \
                     WHERE state IN (?, ?, ?) AND EXISTS (SELECT 1 FROM transfers AS newer \
                     WHERE newer.bucket = transfers.bucket AND newer.key = transfers.key \
                     AND newer.id > transfers.id)"
                }
            },
            [
                TransferState::Superseded.as_str().into(),
                Utc::now().into(),
                TransferState::Queued.as_str().into(),
                TransferState::Uploading.as_str().into(),
                TransferState::Failed.as_str().into(),
            ],
        ))
        .await
        .map_err(|e| WriteBackError::db("superseding stale transfers", e))?;
    if stale.rows_affected() > 0 {
        tracing::info!(
            superseded = stale.rows_affected(),
            "transfers with a newer write of their key will not run again"
        );
    }
    let result = transfer::Entity::update_many()
        .col_expr(transfer::Column::State, Expr::value(TransferState::Queued))
        .col_expr(transfer::Column::BytesDone, Expr::value(0i64))
        .filter(transfer::Column::State.is_in([TransferState::Uploading, TransferState::Failed]))
        .exec(db)
        .await
        .map_err(|e| WriteBackError::db("requeueing interrupted transfers", e))?;
    Ok(result.rows_affected)
}

/// In an office cluster: takes over the uploads whose node is gone (its lease ended), and at
/// start-up (`at_start`) this node's own from before its restart, the ones without an owner,
/// and the failed ones (retried at each start, as on a single node). Rows with a newer row of
/// their key are superseded instead. Uploads a live node is running are never touched.
/// Returns how many were queued again.
pub(crate) async fn take_over(
    db: &DatabaseConnection,
    node: &str,
    at_start: bool,
) -> Result<u64, WriteBackError> {
    let live = milepost_cluster::LIVE_NODES;
    let orphaned = if at_start {
        format!(
            "((state = 'uploading' AND (lease_owner IS NULL OR lease_owner = $1 \
             OR lease_owner NOT IN ({live}))) OR state = 'failed')"
        )
    } else {
        format!("(state = 'uploading' AND lease_owner <> $1 AND lease_owner NOT IN ({live}))")
    };
    let (requeued, superseded) = requeue(
        db,
        node,
        &orphaned,
        "taking over the uploads of nodes that are gone",
    )
    .await?;
    if superseded > 0 || requeued > 0 {
        tracing::info!(
            node,
            requeued,
            superseded,
            "took over uploads of cluster nodes that are gone"
        );
    }
    Ok(requeued)
}

/// In an office cluster: queues again the transfers `ids` this node stopped when its lease
/// lapsed, those still marked as its own (another node may have taken them over meanwhile),
/// or supersedes them where a newer row of their key exists. Returns how many were queued.
pub(crate) async fn take_back(
    db: &DatabaseConnection,
    node: &str,
    ids: &[i64],
) -> Result<u64, WriteBackError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let own = format!("(state = 'uploading' AND lease_owner = $1 AND id IN ({ids}))");
    let (requeued, superseded) = requeue(
        db,
        node,
        &own,
        "queueing again the uploads stopped by a lapsed lease",
    )
    .await?;
    tracing::info!(
        node,
        requeued,
        superseded,
        "queued again the uploads stopped when the lease lapsed"
    );
    Ok(requeued)
}

/// Queues again the transfers `filter` selects (SQL over `transfers`, `$1` = `node`), or
/// supersedes those with a newer row of their key. Returns (queued, superseded).
async fn requeue(
    db: &DatabaseConnection,
    node: &str,
    filter: &str,
    what: &'static str,
) -> Result<(u64, u64), WriteBackError> {
    let newer = "EXISTS (SELECT 1 FROM transfers AS newer WHERE newer.bucket = transfers.bucket \
                 AND newer.key = transfers.key AND newer.id > transfers.id)";
    let run = |sql: String| async move {
        db.execute(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            sql,
            [node.into()],
        ))
        .await
        .map_err(|e| WriteBackError::db(what, e))
    };
    let superseded = run(format!(
        "UPDATE transfers SET state = 'superseded', finished_at = now(), lease_owner = NULL \
         WHERE {filter} AND {newer}"
    ))
    .await?
    .rows_affected();
    let requeued = run(format!(
        "UPDATE transfers SET state = 'queued', bytes_done = 0, lease_owner = NULL \
         WHERE {filter}"
    ))
    .await?
    .rows_affected();
    Ok((requeued, superseded))
}

/// Which of the transfers `ids` have ended (done or superseded): their office versions are
/// no longer needed.
pub(crate) async fn ended_among(
    db: &DatabaseConnection,
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>, WriteBackError> {
    let mut ended = std::collections::HashSet::new();
    for chunk in ids.chunks(500) {
        let rows = transfer::Entity::find()
            .select_only()
            .column(transfer::Column::Id)
            .filter(transfer::Column::Id.is_in(chunk.iter().copied()))
            .filter(transfer::Column::State.is_in([TransferState::Done, TransferState::Superseded]))
            .into_tuple::<i64>()
            .all(db)
            .await
            .map_err(|e| WriteBackError::db("reading which transfers have ended", e))?;
        ended.extend(rows);
    }
    Ok(ended)
}

/// Every active transfer, oldest first.
pub(crate) async fn active(
    db: &DatabaseConnection,
) -> Result<Vec<transfer::Model>, WriteBackError> {
    transfer::Entity::find()
        .filter(transfer::Column::State.is_in(ACTIVE))
        .order_by_asc(transfer::Column::Id)
        .all(db)
        .await
        .map_err(|e| WriteBackError::db("loading the write-back journal", e))
}

/// The object metadata of every active put that has some, by transfer id. A row whose
/// metadata cannot be read maps to the error.
pub(crate) async fn active_metadata(
    db: &DatabaseConnection,
) -> Result<HashMap<i64, Result<ObjectMetadata, WriteBackError>>, WriteBackError> {
    let rows = transfer_metadata::Entity::find()
        .filter(transfer::Column::State.is_in(ACTIVE))
        .filter(transfer_metadata::Column::Metadata.is_not_null())
        .all(db)
        .await
        .map_err(|e| WriteBackError::db("loading the metadata of the write-back journal", e))?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id, parse_metadata(row.id, row.metadata.as_deref())))
        .collect())
}

/// The object metadata transfer `id` was journaled with (empty for a delete, a put without
/// any, or a row that no longer exists).
pub(crate) async fn metadata(
    db: &DatabaseConnection,
    id: i64,
) -> Result<ObjectMetadata, WriteBackError> {
    let row = transfer_metadata::Entity::find_by_id(id)
        .one(db)
        .await
        .map_err(|e| WriteBackError::db(format!("reading the metadata of transfer {id}"), e))?;
    parse_metadata(id, row.and_then(|r| r.metadata).as_deref())
}

fn parse_metadata(id: i64, json: Option<&str>) -> Result<ObjectMetadata, WriteBackError> {
    json.map_or(Ok(ObjectMetadata::default()), |json| {
        ObjectMetadata::from_json(json).map_err(|err| {
            WriteBackError::io(
                format!("reading the object metadata of transfer {id}"),
                std::io::Error::new(std::io::ErrorKind::InvalidData, err),
            )
        })
    })
}

/// Up to `limit` queued transfers in upload order: priority, then oldest first.
pub(crate) async fn next_queued(
    db: &DatabaseConnection,
    limit: u64,
) -> Result<Vec<transfer::Model>, WriteBackError> {
    transfer::Entity::find()
        .filter(transfer::Column::State.eq(TransferState::Queued))
        .order_by_asc(transfer::Column::Priority)
        .order_by_asc(transfer::Column::Id)
        .limit(limit)
        .all(db)
        .await
        .map_err(|e| WriteBackError::db("reading the upload queue", e))
}

/// A filter: no row of `bucket/key` newer than `id` exists.
fn newest_of_key(bucket: &str, key: &str, id: i64) -> sea_orm::sea_query::SimpleExpr {
    Expr::exists(
        Query::select()
            .expr(Expr::val(1))
            .from(transfer::Entity)
            .and_where(transfer::Column::Bucket.eq(bucket))
            .and_where(transfer::Column::Key.eq(key))
            .and_where(transfer::Column::Id.gt(id))
            .to_owned(),
    )
    .not()
}

/// A filter: no other row of `bucket/key` is uploading. One uploader never runs two
/// transfers of a key at once; in an office cluster another node's uploader may hold an
/// older one, which must land first (or be superseded once its node is gone).
fn no_upload_of_key_running(bucket: &str, key: &str, id: i64) -> sea_orm::sea_query::SimpleExpr {
    Expr::exists(
        Query::select()
            .expr(Expr::val(1))
            .from(transfer::Entity)
            .and_where(transfer::Column::Bucket.eq(bucket))
            .and_where(transfer::Column::Key.eq(key))
            .and_where(transfer::Column::Id.ne(id))
            .and_where(transfer::Column::State.eq(TransferState::Uploading))
            .to_owned(),
    )
    .not()
}

/// Marks `row` uploading (one more attempt) if it is still queued, still the newest row of
/// its key, and no other row of its key is uploading; false if not (a later write superseded
/// it meanwhile: see [`supersede_if_stale`]; or an older one is still uploading elsewhere).
pub(crate) async fn start(
    db: &DatabaseConnection,
    row: &transfer::Model,
    owner: Option<&str>,
) -> Result<bool, WriteBackError> {
    let id = row.id;
    let result = transfer::Entity::update_many()
        // In an office cluster: this node's lease covers it from now on.
        .col_expr(
            sea_orm::sea_query::Alias::new("lease_owner"),
            Expr::value(owner.map(str::to_owned)),
        )
        .col_expr(
            transfer::Column::State,
            Expr::value(TransferState::Uploading),
        )
        .col_expr(transfer::Column::StartedAt, Expr::value(Utc::now()))
        .col_expr(
            transfer::Column::Attempts,
            Expr::col(transfer::Column::Attempts).add(1),
        )
        .col_expr(transfer::Column::BytesDone, Expr::value(0i64))
        .filter(transfer::Column::Id.eq(id))
        .filter(transfer::Column::State.eq(TransferState::Queued))
        .filter(newest_of_key(&row.bucket, &row.key, id))
        .filter(no_upload_of_key_running(&row.bucket, &row.key, id))
        .exec(db)
        .await
        .map_err(|e| WriteBackError::db(format!("starting transfer {id}"), e))?;
    Ok(result.rows_affected == 1)
}

/// Supersedes `row` if it is still active and a newer row of its key exists; returns whether
/// it did.
pub(crate) async fn supersede_if_stale(
    db: &DatabaseConnection,
    row: &transfer::Model,
) -> Result<bool, WriteBackError> {
    let result = transfer::Entity::update_many()
        .col_expr(
            transfer::Column::State,
            Expr::value(TransferState::Superseded),
        )
        .col_expr(transfer::Column::FinishedAt, Expr::value(Utc::now()))
        .filter(transfer::Column::Id.eq(row.id))
        .filter(transfer::Column::State.is_in(ACTIVE))
        .filter(newest_of_key(&row.bucket, &row.key, row.id).not())
        .exec(db)
        .await
        .map_err(|e| WriteBackError::db(format!("superseding transfer {}", row.id), e))?;
    Ok(result.rows_affected == 1)
}

/// Records bytes uploaded so far.
pub(crate) async fn progress(
    db: &DatabaseConnection,
    id: i64,
    bytes_done: u64,
) -> Result<(), WriteBackError> {
    transfer::Entity::update_many()
        .col_expr(
            transfer::Column::BytesDone,
            Expr::value(i64::try_from(bytes_done).unwrap_or(i64::MAX)),
        )
        .filter(transfer::Column::Id.eq(id))
        .exec(db)
        .await
        .map_err(|e| WriteBackError::db(format!("recording the progress of transfer {id}"), e))?;
    Ok(())
}

/// Ends transfer `id` in `state` (`done`, `queued` for a retry, `failed`), with `error` for
/// the last failure (cleared on success). A retry or failure of a row that is no longer the
/// newest of its key must be superseded instead (see [`supersede_if_stale`], called first).
pub(crate) async fn finish(
    db: &DatabaseConnection,
    id: i64,
    state: TransferState,
    bytes_done: u64,
    error: Option<String>,
) -> Result<(), WriteBackError> {
    let finished: Option<DateTime<Utc>> =
        matches!(state, TransferState::Done | TransferState::Failed).then(Utc::now);
    transfer::Entity::update_many()
        .col_expr(transfer::Column::State, Expr::value(state))
        .col_expr(
            transfer::Column::BytesDone,
            Expr::value(i64::try_from(bytes_done).unwrap_or(i64::MAX)),
        )
        .col_expr(transfer::Column::FinishedAt, Expr::value(finished))
        .col_expr(transfer::Column::Error, Expr::value(error))
        .filter(transfer::Column::Id.eq(id))
        .exec(db)
        .await
        .map_err(|e| WriteBackError::db(format!("ending transfer {id}"), e))?;
    Ok(())
}

/// Whether another active put of the same bytes (bucket, key and ETag) than transfer `id`
/// exists: its entry must stay dirty until that one is done too.
pub(crate) async fn other_put_of(
    db: &DatabaseConnection,
    id: i64,
    object: &ObjectKey,
) -> Result<bool, WriteBackError> {
    let count = transfer::Entity::find()
        .filter(transfer::Column::Id.ne(id))
        .filter(transfer::Column::Op.eq(TransferOp::Put))
        .filter(transfer::Column::Bucket.eq(&object.bucket))
        .filter(transfer::Column::Key.eq(&object.key))
        .filter(transfer::Column::Etag.eq(&object.etag))
        .filter(transfer::Column::State.is_in(ACTIVE))
        .count(db)
        .await
        .map_err(|e| WriteBackError::db("reading the write-back journal", e))?;
    Ok(count > 0)
}

/// Sets the priority of every queued transfer from `priority_of(key)` (after a policy change).
pub(crate) async fn reprioritize(
    db: &DatabaseConnection,
    priority_of: &(dyn Fn(&str) -> i32 + Send + Sync),
) -> Result<u64, WriteBackError> {
    let queued = transfer::Entity::find()
        .filter(transfer::Column::State.eq(TransferState::Queued))
        .all(db)
        .await
        .map_err(|e| WriteBackError::db("reading the upload queue", e))?;
    let mut by_priority: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
    for row in queued {
        let priority = priority_of(&row.key);
        if priority != row.priority {
            by_priority.entry(priority).or_default().push(row.id);
        }
    }
    let mut changed = 0;
    for (priority, ids) in by_priority {
        for chunk in ids.chunks(500) {
            let result = transfer::Entity::update_many()
                .col_expr(transfer::Column::Priority, Expr::value(priority))
                .filter(transfer::Column::Id.is_in(chunk.iter().copied()))
                .filter(transfer::Column::State.eq(TransferState::Queued))
                .exec(db)
                .await
                .map_err(|e| WriteBackError::db("reprioritizing the upload queue", e))?;
            changed += result.rows_affected;
        }
    }
    Ok(changed)
}
