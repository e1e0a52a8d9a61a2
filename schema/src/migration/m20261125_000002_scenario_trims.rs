//! Scenario-precise materialization: a dataset member may be a trimmed MCAP log
//! (`dataset_members.trim`: the window, topics and view name), and a reservation keeps notes
//! about how it was materialized (`reservations.notes`: fallbacks, empty windows).
//!
//! One column per `ALTER TABLE`: SQLite accepts no more.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(DatasetMembers::Table)
                    .add_column(json_binary_null(DatasetMembers::Trim))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Reservations::Table)
                    .add_column(json_binary_null(Reservations::Notes))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Reservations::Table)
                    .drop_column(Reservations::Notes)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(DatasetMembers::Table)
                    .drop_column(DatasetMembers::Trim)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum DatasetMembers {
    Table,
    Trim,
}

#[derive(DeriveIden, Clone, Copy)]
enum Reservations {
    Table,
    Notes,
}
