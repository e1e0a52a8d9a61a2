//! `cluster_nodes`: the `milepost serve` nodes of an office cluster (`[cluster] enabled`),
//! one row each, with the heartbeat that keeps its lease: a node whose `heartbeat_at` is older
//! than its `lease_ms` is dead, and the work it held (`lease_owner` of `transfers` and
//! `reservations`) is taken over by the others. Empty on a single node.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cluster_nodes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub node_id: String,
    /// Where the node serves HTTP (`host:port`), for operators.
    #[sea_orm(column_type = "Text")]
    pub address: String,
    /// How long the node's work is its own after its last heartbeat.
    pub lease_ms: i64,
    pub started_at: DateTimeUtc,
    pub heartbeat_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
