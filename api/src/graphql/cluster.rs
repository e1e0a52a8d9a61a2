//! The `cluster` query (an addition to the contract): the office cluster as its database
//! sees it, for the web catalog's cache page and dashboards; null on a single node.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::scalars::Long;
use super::state;
use crate::error::{ApiResult, GqlResultExt as _};

/// One node of the office cluster.
#[derive(SimpleObject, Debug)]
#[graphql(name = "ClusterNode")]
pub struct ClusterNodeView {
    node_id: String,
    /// Where it serves HTTP.
    address: String,
    started_at: DateTime<Utc>,
    /// Milliseconds since its last heartbeat.
    heartbeat_age_ms: Long,
    lease_ms: Long,
    /// Its lease holds; a node that is gone has its work taken over by the others.
    alive: bool,
    /// Uploads it is running.
    uploads_held: Long,
    /// Reservations it is materializing.
    reservations_held: Long,
}

/// The office cluster.
#[derive(SimpleObject, Debug)]
#[graphql(name = "Cluster")]
pub struct ClusterView {
    /// The node that answered.
    this_node: String,
    nodes: Vec<ClusterNodeView>,
    /// Entries of the office cache in the office tier, and their bytes.
    cached_entries: Long,
    cached_bytes: Long,
    /// Bytes written in the office and not yet in S3.
    dirty_bytes: Long,
    uploads_queued: Long,
    /// Work held by nodes that are gone, waiting for the next live node to take it over.
    uploads_orphaned: Long,
    reservations_orphaned: Long,
}

#[derive(Debug, Default)]
pub struct ClusterQuery;

#[Object]
impl ClusterQuery {
    /// The office cluster (`[cluster] enabled`); null on a single node.
    async fn cluster(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ClusterView>> {
        cluster_view(ctx).await.gql()
    }
}

async fn cluster_view(ctx: &Context<'_>) -> ApiResult<Option<ClusterView>> {
    let app = state(ctx);
    let Some(node) = &app.cluster else {
        return Ok(None);
    };
    let status = milepost_cluster::status(&app.db).await?;
    Ok(Some(ClusterView {
        this_node: node.id().to_owned(),
        nodes: status
            .nodes
            .into_iter()
            .map(|n| ClusterNodeView {
                node_id: n.node_id,
                address: n.address,
                started_at: n.started_at,
                heartbeat_age_ms: Long(n.heartbeat_age_ms),
                lease_ms: Long(n.lease_ms),
                alive: n.alive,
                uploads_held: Long(n.uploads_held),
                reservations_held: Long(n.reservations_held),
            })
            .collect(),
        cached_entries: Long(status.cached_entries),
        cached_bytes: Long(status.cached_bytes),
        dirty_bytes: Long(status.dirty_bytes),
        uploads_queued: Long(status.uploads_queued),
        uploads_orphaned: Long(status.uploads_orphaned),
        reservations_orphaned: Long(status.reservations_orphaned),
    }))
}
