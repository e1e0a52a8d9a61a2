//! Cluster mode: `cluster_nodes` (one row per `milepost serve` node sharing the database, with
//! its heartbeat: a node whose heartbeat is older than its lease is dead), and
//! `lease_owner` on `transfers` and `reservations` (the node working on the row: its work is
//! taken over by another node once that node is dead). Both stay empty on a single node.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClusterNodes::Table)
                    .col(string(ClusterNodes::NodeId).primary_key().take())
                    .col(text(ClusterNodes::Address))
                    .col(big_integer(ClusterNodes::LeaseMs))
                    .col(timestamp_with_time_zone(ClusterNodes::StartedAt))
                    .col(timestamp_with_time_zone(ClusterNodes::HeartbeatAt))
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(Transfers::Table)
                    .add_column(string_null(Transfers::LeaseOwner))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Reservations::Table)
                    .add_column(string_null(Reservations::LeaseOwner))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Reservations::Table)
                    .drop_column(Reservations::LeaseOwner)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Transfers::Table)
                    .drop_column(Transfers::LeaseOwner)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(ClusterNodes::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ClusterNodes {
    Table,
    NodeId,
    Address,
    LeaseMs,
    StartedAt,
    HeartbeatAt,
}

#[derive(DeriveIden)]
enum Transfers {
    Table,
    LeaseOwner,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    LeaseOwner,
}
