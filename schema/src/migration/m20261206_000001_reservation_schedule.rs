//! Reservations with a deadline: `reservations.ready_by` is when the client needs the dataset
//! local (`readyBy`), `scheduled_start` the first minute of the download schedule at which its
//! materialization may start, as planned when it was admitted. Both are null for
//! reservations asked for now.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one column per ALTER TABLE.
        for column in [Reservations::ReadyBy, Reservations::ScheduledStart] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Reservations::Table)
                        .add_column(timestamp_with_time_zone_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Reservations::ScheduledStart, Reservations::ReadyBy] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Reservations::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Reservations {
    Table,
    ReadyBy,
    ScheduledStart,
}
