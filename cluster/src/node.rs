//! This node's membership: its `cluster_nodes` row, the heartbeat that keeps its lease, and
//! the claim connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ClusterError;

/// The ids of the nodes whose lease holds now, by the database's clock (every node's
/// heartbeat is written with the database's `now()`, so the nodes' clocks never matter):
/// `lease_owner NOT IN (LIVE_NODES)` finds work held by a dead node.
pub const LIVE_NODES: &str = "SELECT node_id FROM cluster_nodes \
     WHERE heartbeat_at + lease_ms * interval '1 millisecond' > now()";

/// How many objects one node downloads under a claim at once; each claim holds one of the
/// claim connections while it lasts.
const CLAIM_CONNECTIONS: usize = 8;

/// `[cluster]` as this crate needs it.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Unique in the office; the same across restarts of one node, so that a restarted node
    /// takes its own interrupted work back at once.
    pub node_id: String,
    /// Where the node serves HTTP, for operators.
    pub address: String,
    /// How long a node's work stays its own after its last heartbeat; heartbeats come every
    /// third of it.
    pub lease: Duration,
}

impl ClusterSettings {
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.node_id.trim().is_empty() || self.node_id.len() > 200 {
            return Err(ClusterError::Invalid {
                setting: "cluster.node_id",
                reason: "must be 1 to 200 characters".to_owned(),
            });
        }
        if self.lease < Duration::from_secs(3) || self.lease > Duration::from_secs(3600) {
            return Err(ClusterError::Invalid {
                setting: "cluster.lease",
                reason: format!(
                    "{:?} is outside 3 s ..= 1 h (heartbeats come every third of it)",
                    self.lease
                ),
            });
        }
        Ok(())
    }
}

/// This node in the cluster; see the [crate documentation](crate). Shared as
/// `Arc<ClusterNode>`.
#[derive(Debug)]
pub struct ClusterNode {
    settings: ClusterSettings,
    db: DatabaseConnection,
    /// Connections of their own for claims: a claim holds its connection while the work
    /// lasts, and must never starve the rest of the node of the shared pool.
    pub(crate) claims: DatabaseConnection,
    pub(crate) claim_slots: Arc<Semaphore>,
    /// When the last heartbeat was written, in milliseconds since `epoch`.
    last_heartbeat_ms: AtomicU64,
    epoch: Instant,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl ClusterNode {
    /// Joins the cluster: checks the database is PostgreSQL, opens the claim connections
    /// (`database_url`), writes this node's row and starts its heartbeat.
    pub async fn join(
        db: DatabaseConnection,
        database_url: &str,
        settings: ClusterSettings,
    ) -> Result<Arc<ClusterNode>, ClusterError> {
        settings.validate()?;
        if db.get_database_backend() != DatabaseBackend::Postgres {
            return Err(ClusterError::NeedsPostgres {
                backend: format!("{:?}", db.get_database_backend()),
            });
        }
        let claims = milepost_schema::connect(database_url).await?;
        let node = Arc::new(ClusterNode {
            db,
            claims,
            claim_slots: Arc::new(Semaphore::new(CLAIM_CONNECTIONS)),
            // Registering is the first heartbeat; the epoch is taken before it is sent.
            last_heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            settings,
        });
        node.register().await?;
        let heartbeat = Arc::clone(&node);
        node.tasks.spawn(async move { heartbeat.heartbeat().await });
        tracing::info!(node = %node.id(), lease = ?node.lease(), "joined the office cluster");
        Ok(node)
    }

    pub fn id(&self) -> &str {
        &self.settings.node_id
    }

    pub fn lease(&self) -> Duration {
        self.settings.lease
    }

    /// Whether this node's lease surely still holds: its last heartbeat is younger than two
    /// thirds of the lease (a margin for the time a write takes to land). A node that cannot
    /// renew it (the database unreachable) must not start leased work: another node may
    /// already be taking it over.
    pub fn holds_lease(&self) -> bool {
        Instant::now() < self.lease_lapses_at()
    }

    /// When this node's lease lapses in its own view ([`holds_lease`](Self::holds_lease)
    /// turns false), unless a heartbeat lands before.
    fn lease_lapses_at(&self) -> Instant {
        let last = Duration::from_millis(self.last_heartbeat_ms.load(Ordering::Acquire));
        self.epoch + last + self.settings.lease * 2 / 3
    }

    /// Resolves once this node no longer surely holds its lease: leased work still running
    /// must stop then, because another node may take it over once the lease has ended (a
    /// third of the lease later at the earliest). Work that stops here must not write its
    /// end either: the row may be another node's by then.
    pub async fn lease_lapsed(&self) {
        loop {
            let at = self.lease_lapses_at();
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
    }

    fn beat_at(&self, since_epoch: Duration) {
        let at = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        self.last_heartbeat_ms.fetch_max(at, Ordering::AcqRel);
    }

    /// Writes this node's row (a restarted node keeps its id and gets a new start time).
    async fn register(&self) -> Result<(), ClusterError> {
        let lease_ms = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        self.db
            .execute(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "INSERT INTO cluster_nodes (node_id, address, lease_ms, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, now(), now()) \
                 ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
                 lease_ms = excluded.lease_ms, started_at = excluded.started_at, \
                 heartbeat_at = excluded.heartbeat_at",
                [
                    self.settings.node_id.clone().into(),
                    self.settings.address.clone().into(),
                    lease_ms.into(),
                ],
            ))
            .await
            .map_err(|e| ClusterError::db(format!("registering node {}", self.id()), e))?;
        Ok(())
    }

    /// Renews the lease every third of it until [`leave`](Self::leave).
    async fn heartbeat(&self) {
        let period = self.settings.lease / 3;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            // The lease counts from when the heartbeat was sent, not from when it returned:
            // the database's `now()` is at least that late, so this node's view of its lease
            // ends before the others' (a slow write cannot stretch it).
            let sent = self.epoch.elapsed();
            // A row removed by an operator (a node declared gone) is written again.
            match self.register_heartbeat().await {
                Ok(()) => self.beat_at(sent),
                Err(err) => {
                    tracing::warn!(node = %self.id(), error = %err, "cannot renew the cluster lease");
                }
            }
        }
    }

    async fn register_heartbeat(&self) -> Result<(), ClusterError> {
        let updated = self
            .db
            .execute(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "UPDATE cluster_nodes SET heartbeat_at = now() WHERE node_id = $1",
                [self.settings.node_id.clone().into()],
            ))
            .await
            .map_err(|e| ClusterError::db(format!("renewing the lease of {}", self.id()), e))?;
        if updated.rows_affected() == 0 {
            self.register().await?;
        }
        Ok(())
    }

    /// Leaves the cluster at shutdown: stops the heartbeat and removes this node's row, so
    /// that the others take over what it still held at once instead of after its lease. Call
    /// it after the node's own work has stopped.
    pub async fn leave(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(err) = self
            .db
            .execute(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "DELETE FROM cluster_nodes WHERE node_id = $1",
                [self.settings.node_id.clone().into()],
            ))
            .await
        {
            tracing::warn!(node = %self.id(), error = %err, "cannot leave the cluster; the others wait for its lease to end");
        }
        self.claims.clone().close().await.ok();
    }
}
