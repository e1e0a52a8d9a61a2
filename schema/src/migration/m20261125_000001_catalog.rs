//! The initial catalog: every table and index.
//!
//! Table and column names are spelled out here rather than taken from the entities, so that
//! this migration keeps creating the same schema when the entities change later.
//!
//! (Over 600 lines: a migration is frozen once shipped: the initial schema, every table in one step.)

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Length of the columns holding [`crate::enums`] values.
const ENUM_LEN: u32 = 16;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in tables() {
            manager.create_table(table).await?;
        }
        for index in indexes() {
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Children before parents.
        let tables: [DynIden; 14] = [
            SyncRuns::Table.into_iden(),
            EgressLedger::Table.into_iden(),
            Tokens::Table.into_iden(),
            Transfers::Table.into_iden(),
            CacheEntries::Table.into_iden(),
            Reservations::Table.into_iden(),
            DatasetMembers::Table.into_iden(),
            Datasets::Table.into_iden(),
            Objects::Table.into_iden(),
            RunInputs::Table.into_iden(),
            Runs::Table.into_iden(),
            Scenarios::Table.into_iden(),
            DriveEvents::Table.into_iden(),
            Drives::Table.into_iden(),
        ];
        for table in tables {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// `bigint` auto-increment primary key (`integer primary key autoincrement` on SQLite).
fn pk_big_auto<T: IntoIden>(col: T) -> ColumnDef {
    big_integer(col).auto_increment().primary_key().take()
}

fn foreign_key<F: IntoIden + 'static, T: IntoIden + 'static>(
    name: &str,
    from: (F, F),
    to: (T, T),
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(on_delete)
        .on_update(ForeignKeyAction::Cascade)
        .to_owned()
}

fn tables() -> Vec<TableCreateStatement> {
    vec![
        Table::create()
            .table(Drives::Table)
            .col(string(Drives::Id).primary_key())
            .col(string(Drives::Vehicle))
            .col(string_null(Drives::City))
            .col(string_null(Drives::Route))
            .col(timestamp_with_time_zone(Drives::StartedAt))
            .col(timestamp_with_time_zone(Drives::EndedAt))
            .col(double_null(Drives::DistanceKm))
            .col(string_null(Drives::SoftwareVersion))
            .col(string_null(Drives::Weather))
            .col(json_binary(Drives::Tags))
            .col(json_binary(Drives::Extra))
            .col(json_binary(Drives::Topics))
            .col(string(Drives::Bucket))
            .col(text(Drives::Prefix))
            .col(string_len(Drives::Source, ENUM_LEN))
            .col(string_null(Drives::SidecarEtag))
            .col(timestamp_with_time_zone(Drives::CreatedAt))
            .col(timestamp_with_time_zone(Drives::UpdatedAt))
            .to_owned(),
        Table::create()
            .table(DriveEvents::Table)
            .col(pk_big_auto(DriveEvents::Id))
            .col(string(DriveEvents::DriveId))
            .col(integer(DriveEvents::Position))
            .col(timestamp_with_time_zone(DriveEvents::At))
            .col(string(DriveEvents::Kind))
            .col(text_null(DriveEvents::Label))
            .foreign_key(&mut foreign_key(
                "fk_drive_events_drive_id",
                (DriveEvents::Table, DriveEvents::DriveId),
                (Drives::Table, Drives::Id),
                ForeignKeyAction::Cascade,
            ))
            .to_owned(),
        Table::create()
            .table(Scenarios::Table)
            .col(string(Scenarios::Id).primary_key())
            .col(string(Scenarios::DriveId))
            .col(string(Scenarios::Label))
            .col(json_binary(Scenarios::Tags))
            .col(timestamp_with_time_zone(Scenarios::StartTime))
            .col(timestamp_with_time_zone(Scenarios::EndTime))
            .col(text_null(Scenarios::Description))
            .col(string_len(Scenarios::Source, ENUM_LEN))
            .col(timestamp_with_time_zone(Scenarios::CreatedAt))
            .col(timestamp_with_time_zone(Scenarios::UpdatedAt))
            .foreign_key(&mut foreign_key(
                "fk_scenarios_drive_id",
                (Scenarios::Table, Scenarios::DriveId),
                (Drives::Table, Drives::Id),
                ForeignKeyAction::Cascade,
            ))
            .to_owned(),
        Table::create()
            .table(Runs::Table)
            .col(string(Runs::Id).primary_key())
            .col(string_len(Runs::Kind, ENUM_LEN))
            .col(string(Runs::Pipeline))
            .col(string_null(Runs::Commit))
            .col(string_len(Runs::Status, ENUM_LEN))
            .col(timestamp_with_time_zone_null(Runs::StartedAt))
            .col(timestamp_with_time_zone_null(Runs::FinishedAt))
            .col(json_binary(Runs::Tags))
            .col(json_binary_null(Runs::Metrics))
            .col(json_binary(Runs::Extra))
            .col(string(Runs::Bucket))
            .col(text(Runs::Prefix))
            .col(string_len(Runs::Source, ENUM_LEN))
            .col(string_null(Runs::SidecarEtag))
            .col(timestamp_with_time_zone(Runs::CreatedAt))
            .col(timestamp_with_time_zone(Runs::UpdatedAt))
            .to_owned(),
        Table::create()
            .table(RunInputs::Table)
            .col(string(RunInputs::RunId))
            .col(integer(RunInputs::Position))
            .col(string(RunInputs::InputId))
            .col(string_len(RunInputs::InputKind, ENUM_LEN))
            .primary_key(
                Index::create()
                    .name("pk_run_inputs")
                    .col(RunInputs::RunId)
                    .col(RunInputs::Position),
            )
            .foreign_key(&mut foreign_key(
                "fk_run_inputs_run_id",
                (RunInputs::Table, RunInputs::RunId),
                (Runs::Table, Runs::Id),
                ForeignKeyAction::Cascade,
            ))
            .to_owned(),
        Table::create()
            .table(Objects::Table)
            .col(pk_big_auto(Objects::Id))
            .col(string(Objects::Bucket))
            .col(text(Objects::Key))
            .col(big_integer(Objects::Size))
            .col(string(Objects::Etag))
            .col(timestamp_with_time_zone_null(Objects::LastModified))
            .col(string_null(Objects::DriveId))
            .col(string_null(Objects::RunId))
            .col(timestamp_with_time_zone_null(Objects::DeletedAt))
            .col(json_binary_null(Objects::Metadata))
            .col(timestamp_with_time_zone(Objects::CreatedAt))
            .col(timestamp_with_time_zone(Objects::UpdatedAt))
            .foreign_key(&mut foreign_key(
                "fk_objects_drive_id",
                (Objects::Table, Objects::DriveId),
                (Drives::Table, Drives::Id),
                ForeignKeyAction::SetNull,
            ))
            .foreign_key(&mut foreign_key(
                "fk_objects_run_id",
                (Objects::Table, Objects::RunId),
                (Runs::Table, Runs::Id),
                ForeignKeyAction::SetNull,
            ))
            .to_owned(),
        Table::create()
            .table(Datasets::Table)
            .col(pk_big_auto(Datasets::Id))
            .col(string(Datasets::Name))
            .col(integer(Datasets::Version))
            .col(text_null(Datasets::Description))
            .col(timestamp_with_time_zone(Datasets::CreatedAt))
            .col(string(Datasets::CreatedBy))
            .col(string(Datasets::ManifestBucket))
            .col(text(Datasets::ManifestKey))
            .col(big_integer(Datasets::ObjectCount))
            .col(big_integer(Datasets::TotalBytes))
            .col(json_binary(Datasets::Selection))
            .to_owned(),
        Table::create()
            .table(DatasetMembers::Table)
            .col(big_integer(DatasetMembers::DatasetId))
            .col(big_integer(DatasetMembers::Position))
            .col(string(DatasetMembers::Bucket))
            .col(text(DatasetMembers::Key))
            .col(big_integer(DatasetMembers::Size))
            .col(string(DatasetMembers::Etag))
            .primary_key(
                Index::create()
                    .name("pk_dataset_members")
                    .col(DatasetMembers::DatasetId)
                    .col(DatasetMembers::Position),
            )
            .foreign_key(&mut foreign_key(
                "fk_dataset_members_dataset_id",
                (DatasetMembers::Table, DatasetMembers::DatasetId),
                (Datasets::Table, Datasets::Id),
                ForeignKeyAction::Cascade,
            ))
            .to_owned(),
        Table::create()
            .table(Reservations::Table)
            .col(string(Reservations::Id).primary_key())
            .col(big_integer(Reservations::DatasetId))
            .col(string(Reservations::Owner))
            .col(text_null(Reservations::Purpose))
            .col(string_len(Reservations::State, ENUM_LEN))
            .col(timestamp_with_time_zone(Reservations::CreatedAt))
            .col(timestamp_with_time_zone(Reservations::UpdatedAt))
            .col(timestamp_with_time_zone(Reservations::ExpiresAt))
            .col(big_integer(Reservations::ObjectsTotal))
            .col(big_integer(Reservations::ObjectsDone))
            .col(big_integer(Reservations::BytesTotal))
            .col(big_integer(Reservations::BytesDone))
            .col(big_integer(Reservations::BytesFromUpstream))
            .col(text_null(Reservations::LocalPath))
            .col(text_null(Reservations::Error))
            .foreign_key(&mut foreign_key(
                "fk_reservations_dataset_id",
                (Reservations::Table, Reservations::DatasetId),
                (Datasets::Table, Datasets::Id),
                ForeignKeyAction::Restrict,
            ))
            .to_owned(),
        Table::create()
            .table(CacheEntries::Table)
            .col(pk_big_auto(CacheEntries::Id))
            .col(string(CacheEntries::Bucket))
            .col(text(CacheEntries::Key))
            .col(string(CacheEntries::Etag))
            .col(big_integer(CacheEntries::Size))
            .col(text(CacheEntries::Path))
            .col(string_len(CacheEntries::State, ENUM_LEN))
            .col(timestamp_with_time_zone(CacheEntries::LastAccess))
            .col(timestamp_with_time_zone(CacheEntries::CreatedAt))
            .to_owned(),
        Table::create()
            .table(Transfers::Table)
            .col(pk_big_auto(Transfers::Id))
            .col(string_len(Transfers::Op, ENUM_LEN))
            .col(string(Transfers::Bucket))
            .col(text(Transfers::Key))
            .col(big_integer(Transfers::Size))
            .col(string_null(Transfers::Etag))
            .col(text_null(Transfers::StagingPath))
            .col(string_len(Transfers::State, ENUM_LEN))
            .col(integer(Transfers::Priority))
            .col(big_integer(Transfers::BytesDone))
            .col(integer(Transfers::Attempts))
            .col(timestamp_with_time_zone(Transfers::EnqueuedAt))
            .col(timestamp_with_time_zone_null(Transfers::StartedAt))
            .col(timestamp_with_time_zone_null(Transfers::FinishedAt))
            .col(text_null(Transfers::Error))
            .to_owned(),
        Table::create()
            .table(Tokens::Table)
            .col(pk_big_auto(Tokens::Id))
            .col(string(Tokens::Name))
            .col(string_len(Tokens::Role, ENUM_LEN))
            .col(string(Tokens::SecretHash))
            .col(string_null(Tokens::S3AccessKey))
            .col(string_null(Tokens::S3Secret))
            .col(timestamp_with_time_zone(Tokens::CreatedAt))
            .col(timestamp_with_time_zone_null(Tokens::LastUsedAt))
            .col(timestamp_with_time_zone_null(Tokens::RevokedAt))
            .to_owned(),
        Table::create()
            .table(EgressLedger::Table)
            .col(pk_big_auto(EgressLedger::Id))
            .col(timestamp_with_time_zone(EgressLedger::RecordedAt))
            .col(string(EgressLedger::Office))
            .col(string(EgressLedger::Bucket))
            .col(text(EgressLedger::Key))
            .col(string_null(EgressLedger::Dataset))
            .col(string_null(EgressLedger::Owner))
            .col(big_integer(EgressLedger::BytesFromUpstream))
            .col(big_integer(EgressLedger::BytesServed))
            .col(boolean(EgressLedger::CacheHit))
            .to_owned(),
        Table::create()
            .table(SyncRuns::Table)
            .col(pk_big_auto(SyncRuns::Id))
            .col(timestamp_with_time_zone(SyncRuns::StartedAt))
            .col(timestamp_with_time_zone_null(SyncRuns::FinishedAt))
            .col(big_integer(SyncRuns::ObjectsSeen))
            .col(big_integer(SyncRuns::Drives))
            .col(big_integer(SyncRuns::Runs))
            .col(json_binary(SyncRuns::Errors))
            .to_owned(),
    ]
}

/// An index named `idx_<table>_<cols>` (`ux_` when unique).
fn index<T, C>(table: T, cols: &[C], unique: bool) -> IndexCreateStatement
where
    T: IntoIden + Iden + Copy + 'static,
    C: IntoIden + Iden + Copy + 'static,
{
    let mut name = format!(
        "{}_{}",
        if unique { "ux" } else { "idx" },
        table.to_string()
    );
    let mut stmt = Index::create();
    stmt.table(table);
    for &col in cols {
        name.push('_');
        name.push_str(&col.to_string());
        stmt.col(col);
    }
    if unique {
        stmt.unique();
    }
    stmt.name(name).to_owned()
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        index(Drives::Table, &[Drives::Vehicle], false),
        index(Drives::Table, &[Drives::StartedAt], false),
        index(
            DriveEvents::Table,
            &[DriveEvents::DriveId, DriveEvents::Position],
            false,
        ),
        index(Scenarios::Table, &[Scenarios::DriveId], false),
        index(Scenarios::Table, &[Scenarios::Label], false),
        index(Runs::Table, &[Runs::Pipeline], false),
        index(Runs::Table, &[Runs::Status], false),
        index(RunInputs::Table, &[RunInputs::InputId], false),
        index(Objects::Table, &[Objects::Bucket, Objects::Key], true),
        index(Objects::Table, &[Objects::DriveId, Objects::Id], false),
        index(Objects::Table, &[Objects::RunId, Objects::Id], false),
        index(Datasets::Table, &[Datasets::Name, Datasets::Version], true),
        index(Reservations::Table, &[Reservations::State], false),
        index(Reservations::Table, &[Reservations::Owner], false),
        index(Reservations::Table, &[Reservations::ExpiresAt], false),
        index(Reservations::Table, &[Reservations::DatasetId], false),
        index(
            CacheEntries::Table,
            &[CacheEntries::Bucket, CacheEntries::Key, CacheEntries::Etag],
            true,
        ),
        index(CacheEntries::Table, &[CacheEntries::LastAccess], false),
        index(
            Transfers::Table,
            &[Transfers::State, Transfers::Priority, Transfers::Id],
            false,
        ),
        index(
            Transfers::Table,
            &[Transfers::Bucket, Transfers::Key],
            false,
        ),
        index(Tokens::Table, &[Tokens::Name], true),
        index(Tokens::Table, &[Tokens::SecretHash], true),
        index(Tokens::Table, &[Tokens::S3AccessKey], true),
        index(EgressLedger::Table, &[EgressLedger::RecordedAt], false),
        index(
            EgressLedger::Table,
            &[EgressLedger::Office, EgressLedger::Dataset],
            false,
        ),
    ]
}

#[derive(DeriveIden, Clone, Copy)]
enum Drives {
    Table,
    Id,
    Vehicle,
    City,
    Route,
    StartedAt,
    EndedAt,
    DistanceKm,
    SoftwareVersion,
    Weather,
    Tags,
    Extra,
    Topics,
    Bucket,
    Prefix,
    Source,
    SidecarEtag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum DriveEvents {
    Table,
    Id,
    DriveId,
    Position,
    At,
    Kind,
    Label,
}

#[derive(DeriveIden, Clone, Copy)]
enum Scenarios {
    Table,
    Id,
    DriveId,
    Label,
    Tags,
    StartTime,
    EndTime,
    Description,
    Source,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Runs {
    Table,
    Id,
    Kind,
    Pipeline,
    Commit,
    Status,
    StartedAt,
    FinishedAt,
    Tags,
    Metrics,
    Extra,
    Bucket,
    Prefix,
    Source,
    SidecarEtag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum RunInputs {
    Table,
    RunId,
    Position,
    InputId,
    InputKind,
}

#[derive(DeriveIden, Clone, Copy)]
enum Objects {
    Table,
    Id,
    Bucket,
    Key,
    Size,
    Etag,
    LastModified,
    DriveId,
    RunId,
    DeletedAt,
    Metadata,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Datasets {
    Table,
    Id,
    Name,
    Version,
    Description,
    CreatedAt,
    CreatedBy,
    ManifestBucket,
    ManifestKey,
    ObjectCount,
    TotalBytes,
    Selection,
}

#[derive(DeriveIden, Clone, Copy)]
enum DatasetMembers {
    Table,
    DatasetId,
    Position,
    Bucket,
    Key,
    Size,
    Etag,
}

#[derive(DeriveIden, Clone, Copy)]
enum Reservations {
    Table,
    Id,
    DatasetId,
    Owner,
    Purpose,
    State,
    CreatedAt,
    UpdatedAt,
    ExpiresAt,
    ObjectsTotal,
    ObjectsDone,
    BytesTotal,
    BytesDone,
    BytesFromUpstream,
    LocalPath,
    Error,
}

#[derive(DeriveIden, Clone, Copy)]
enum CacheEntries {
    Table,
    Id,
    Bucket,
    Key,
    Etag,
    Size,
    Path,
    State,
    LastAccess,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Transfers {
    Table,
    Id,
    Op,
    Bucket,
    Key,
    Size,
    Etag,
    StagingPath,
    State,
    Priority,
    BytesDone,
    Attempts,
    EnqueuedAt,
    StartedAt,
    FinishedAt,
    Error,
}

#[derive(DeriveIden, Clone, Copy)]
enum Tokens {
    Table,
    Id,
    Name,
    Role,
    SecretHash,
    S3AccessKey,
    S3Secret,
    CreatedAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum EgressLedger {
    Table,
    Id,
    RecordedAt,
    Office,
    Bucket,
    Key,
    Dataset,
    Owner,
    BytesFromUpstream,
    BytesServed,
    CacheHit,
}

#[derive(DeriveIden, Clone, Copy)]
enum SyncRuns {
    Table,
    Id,
    StartedAt,
    FinishedAt,
    ObjectsSeen,
    Drives,
    Runs,
    Errors,
}
