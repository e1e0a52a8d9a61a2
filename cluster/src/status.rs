//! What the cluster is doing: its nodes, the work each holds, the office tier's usage.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, QueryResult, Statement};
use serde::Serialize;

use crate::ClusterError;

/// One node as the database sees it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub address: String,
    pub started_at: DateTime<Utc>,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
    pub lease_ms: i64,
    /// Its lease holds.
    pub alive: bool,
    /// Uploads it is running (`transfers` in state `uploading` under its lease).
    pub uploads_held: i64,
    /// Reservations it is materializing (pending or materializing under its lease).
    pub reservations_held: i64,
}

/// The office cluster at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    /// Entries of the office cache (in the office tier) and their bytes.
    pub cached_entries: i64,
    pub cached_bytes: i64,
    /// Bytes written in the office and not yet in S3.
    pub dirty_bytes: i64,
    /// Uploads waiting for a node.
    pub uploads_queued: i64,
    /// Work held by nodes whose lease has ended: taken over by the next live node that looks.
    pub uploads_orphaned: i64,
    pub reservations_orphaned: i64,
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> Result<T, ClusterError> {
    row.try_get("", column)
        .map_err(|e| ClusterError::db(format!("reading {column} of the cluster status"), e))
}

async fn query(db: &DatabaseConnection, sql: &str) -> Result<Vec<QueryResult>, ClusterError> {
    db.query_all(Statement::from_string(DatabaseBackend::Postgres, sql))
        .await
        .map_err(|e| ClusterError::db("reading the cluster status", e))
}

/// The cluster's status (PostgreSQL only: cluster mode is).
pub async fn status(db: &DatabaseConnection) -> Result<ClusterStatus, ClusterError> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Err(ClusterError::NeedsPostgres {
            backend: format!("{:?}", db.get_database_backend()),
        });
    }
    let rows = query(
        db,
        "SELECT n.node_id, n.address, n.started_at, n.lease_ms, \
         CAST(EXTRACT(EPOCH FROM (now() - n.heartbeat_at)) * 1000 AS BIGINT) AS heartbeat_age_ms, \
         (n.heartbeat_at + n.lease_ms * interval '1 millisecond' > now()) AS alive, \
         (SELECT count(*) FROM transfers t WHERE t.state = 'uploading' \
            AND t.lease_owner = n.node_id) AS uploads_held, \
         (SELECT count(*) FROM reservations r WHERE r.state IN ('pending', 'materializing') \
            AND r.lease_owner = n.node_id) AS reservations_held \
         FROM cluster_nodes n ORDER BY n.node_id",
    )
    .await?;
    let mut nodes = Vec::with_capacity(rows.len());
    for row in &rows {
        nodes.push(NodeStatus {
            node_id: get(row, "node_id")?,
            address: get(row, "address")?,
            started_at: get(row, "started_at")?,
            heartbeat_age_ms: get(row, "heartbeat_age_ms")?,
            lease_ms: get(row, "lease_ms")?,
            alive: get(row, "alive")?,
            uploads_held: get(row, "uploads_held")?,
            reservations_held: get(row, "reservations_held")?,
        });
    }
    let totals = query(
        db,
        &format!(
            "SELECT \
             (SELECT count(*) FROM cache_entries) AS cached_entries, \
             (SELECT CAST(COALESCE(sum(size), 0) AS BIGINT) FROM cache_entries) AS cached_bytes, \
             (SELECT CAST(COALESCE(sum(size), 0) AS BIGINT) FROM cache_entries \
                WHERE state = 'dirty') AS dirty_bytes, \
             (SELECT count(*) FROM transfers WHERE state = 'queued') AS uploads_queued, \
             (SELECT count(*) FROM transfers WHERE state = 'uploading' \
                AND (lease_owner IS NULL OR lease_owner NOT IN ({live}))) AS uploads_orphaned, \
             (SELECT count(*) FROM reservations WHERE state IN ('pending', 'materializing') \
                AND (lease_owner IS NULL OR lease_owner NOT IN ({live}))) AS reservations_orphaned",
            live = crate::LIVE_NODES
        ),
    )
    .await?;
    let totals = totals.first().ok_or_else(|| {
        ClusterError::db(
            "reading the cluster status",
            sea_orm::DbErr::RecordNotFound("totals".to_owned()),
        )
    })?;
    Ok(ClusterStatus {
        nodes,
        cached_entries: get(totals, "cached_entries")?,
        cached_bytes: get(totals, "cached_bytes")?,
        dirty_bytes: get(totals, "dirty_bytes")?,
        uploads_queued: get(totals, "uploads_queued")?,
        uploads_orphaned: get(totals, "uploads_orphaned")?,
        reservations_orphaned: get(totals, "reservations_orphaned")?,
    })
}

/// What the office cache holds in the office tier, over every node: entries, their bytes, and
/// the bytes the office must keep (dirty, or a member of a dataset an active reservation
/// holds), for `cacheStats` in a cluster.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OfficeUsage {
    pub entries: i64,
    pub bytes: i64,
    pub pinned_bytes: i64,
}

/// The office cache's usage, read from `cache_entries` (PostgreSQL only).
pub async fn office_usage(db: &DatabaseConnection) -> Result<OfficeUsage, ClusterError> {
    let rows = query(
        db,
        "SELECT count(*) AS entries, CAST(COALESCE(sum(size), 0) AS BIGINT) AS bytes, \
         CAST(COALESCE(sum(size) FILTER (WHERE state = 'dirty' OR EXISTS ( \
             SELECT 1 FROM dataset_members m JOIN reservations r ON r.dataset_id = m.dataset_id \
             WHERE r.state IN ('pending', 'materializing', 'ready') \
             AND m.bucket = cache_entries.bucket AND m.key = cache_entries.key \
             AND m.etag = cache_entries.etag)), 0) AS BIGINT) AS pinned_bytes \
         FROM cache_entries",
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(OfficeUsage::default());
    };
    Ok(OfficeUsage {
        entries: get(row, "entries")?,
        bytes: get(row, "bytes")?,
        pinned_bytes: get(row, "pinned_bytes")?,
    })
}
