//! Lineage at the grain engineers think in: `run_input_windows` holds the time windows of
//! drives a run read (`inputWindows`, `input_windows[]` in `run.json`), beside the whole
//! entities of `run_inputs`. A window names its drive by id, not by foreign key: a run may be
//! cataloged before the drive is.
//!
//! Indexes serve the lineage reads: runs by the drive of a window (then the overlap test on
//! start and end), and datasets by the objects they hold (`dataset_members` by bucket and key,
//! joined from a drive's or run's `objects`).

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
                    .table(RunInputWindows::Table)
                    .col(string(RunInputWindows::RunId))
                    .col(integer(RunInputWindows::Position))
                    .col(string(RunInputWindows::DriveId))
                    .col(timestamp_with_time_zone(RunInputWindows::StartTime))
                    .col(timestamp_with_time_zone(RunInputWindows::EndTime))
                    .primary_key(
                        Index::create()
                            .name("pk_run_input_windows")
                            .col(RunInputWindows::RunId)
                            .col(RunInputWindows::Position),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_run_input_windows_run_id")
                            .from(RunInputWindows::Table, RunInputWindows::RunId)
                            .to(Runs::Table, Runs::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_run_input_windows_drive_id_start_time")
                    .table(RunInputWindows::Table)
                    .col(RunInputWindows::DriveId)
                    .col(RunInputWindows::StartTime)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_dataset_members_bucket_key")
                    .table(DatasetMembers::Table)
                    .col(DatasetMembers::Bucket)
                    .col(DatasetMembers::Key)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_dataset_members_bucket_key")
                    .table(DatasetMembers::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(RunInputWindows::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum RunInputWindows {
    Table,
    RunId,
    Position,
    DriveId,
    StartTime,
    EndTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum Runs {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum DatasetMembers {
    Table,
    Bucket,
    Key,
}
