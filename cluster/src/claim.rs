//! Claims: one node at a time for a named piece of work.
//!
//! A claim is a session-level PostgreSQL advisory lock on one of the node's claim
//! connections. Released, it is unlocked and its connection goes back to the pool; dropped
//! unreleased (a cancelled download, a panic), or cancelled while waiting, its connection is
//! closed instead, which ends the lock with the session: a claim can never leak into the
//! pool's next user.

use std::sync::Arc;

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Postgres};
use tokio::sync::OwnedSemaphorePermit;

use crate::{ClusterError, ClusterNode};

/// Held while this node does the named work; see the [module documentation](self).
#[derive(Debug)]
pub struct Claim {
    conn: ClaimConnection,
    _slot: OwnedSemaphorePermit,
    name: String,
}

/// A claim connection that is closed on drop unless it was left clean (unlocked).
#[derive(Debug)]
struct ClaimConnection {
    conn: PoolConnection<Postgres>,
    clean: bool,
}

impl Drop for ClaimConnection {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

/// The lock's key: the name hashed (seed 11: apart from the write-back journal's per-key
/// transaction locks, seed 7).
const LOCK: &str = "SELECT pg_advisory_lock(hashtextextended($1, 11))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 11))";

impl ClusterNode {
    /// Waits until no other node holds `name`, then holds it. Blocks for as long as another
    /// node's claim lasts (a download of the object); a node's claims are bounded
    /// (`CLAIM_CONNECTIONS`), and a claim never waits for another claim of its own node, so
    /// waiting cannot deadlock.
    pub async fn claim(self: &Arc<Self>, name: &str) -> Result<Claim, ClusterError> {
        let slot = Arc::clone(&self.claim_slots)
            .acquire_owned()
            .await
            .map_err(|_| ClusterError::Invalid {
                setting: "cluster",
                reason: "the node has left the cluster".to_owned(),
            })?;
        let what = || format!("claiming {name}");
        let conn = self
            .claims
            .get_postgres_connection_pool()
            .acquire()
            .await
            .map_err(|e| ClusterError::sql(what(), e))?;
        let mut conn = ClaimConnection { conn, clean: false };
        sqlx::query(LOCK)
            .bind(name)
            .execute(&mut *conn.conn)
            .await
            .map_err(|e| ClusterError::sql(what(), e))?;
        Ok(Claim {
            conn,
            _slot: slot,
            name: name.to_owned(),
        })
    }
}

impl Claim {
    /// Ends the claim: the next node waiting for it goes on.
    pub async fn release(mut self) {
        match sqlx::query(UNLOCK)
            .bind(&self.name)
            .execute(&mut *self.conn.conn)
            .await
        {
            Ok(_) => self.conn.clean = true,
            // Closing the connection (on drop) ends the lock anyway.
            Err(err) => {
                tracing::warn!(claim = %self.name, error = %err, "unlocking a claim failed; closing its connection");
            }
        }
    }
}
