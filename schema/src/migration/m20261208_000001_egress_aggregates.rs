//! The egress ledger, aggregated: `egress_minutes` (per office, minute, dataset and owner),
//! `egress_hours` (per office and hour, catalog sync left out: long histories) and
//! `egress_totals` (per office and owner, all time), kept by `crate::egress::record` in the
//! same transaction as the raw `egress_ledger` rows, so that `cacheStats` and `cacheHistory`
//! cost O(buckets) instead of O(reads), and the raw rows can be pruned. Rows written before
//! this migration are folded into both tables here. "No dataset" and "no owner" are stored
//! as `''` so that they are one key (NULLs never conflict).
//!
//! The fold needs the minute of a timestamp, which the two backends spell differently: the
//! one place a migration holds backend-specific SQL.

use sea_orm::{ConnectionTrait as _, DatabaseBackend};
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
                    .table(EgressMinutes::Table)
                    .col(string(EgressMinutes::Office))
                    .col(big_integer(EgressMinutes::Minute))
                    .col(string(EgressMinutes::Dataset))
                    .col(string(EgressMinutes::Owner))
                    .col(big_integer(EgressMinutes::Hits))
                    .col(big_integer(EgressMinutes::Misses))
                    .col(big_integer(EgressMinutes::BytesServed))
                    .col(big_integer(EgressMinutes::BytesFromUpstream))
                    .primary_key(
                        Index::create()
                            .col(EgressMinutes::Office)
                            .col(EgressMinutes::Minute)
                            .col(EgressMinutes::Dataset)
                            .col(EgressMinutes::Owner),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EgressHours::Table)
                    .col(string(EgressHours::Office))
                    .col(big_integer(EgressHours::Hour))
                    .col(big_integer(EgressHours::Hits))
                    .col(big_integer(EgressHours::Misses))
                    .col(big_integer(EgressHours::BytesServed))
                    .col(big_integer(EgressHours::BytesFromUpstream))
                    .primary_key(
                        Index::create()
                            .col(EgressHours::Office)
                            .col(EgressHours::Hour),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EgressTotals::Table)
                    .col(string(EgressTotals::Office))
                    .col(string(EgressTotals::Owner))
                    .col(big_integer(EgressTotals::Hits))
                    .col(big_integer(EgressTotals::Misses))
                    .col(big_integer(EgressTotals::BytesServed))
                    .col(big_integer(EgressTotals::BytesFromUpstream))
                    .primary_key(
                        Index::create()
                            .col(EgressTotals::Office)
                            .col(EgressTotals::Owner),
                    )
                    .to_owned(),
            )
            .await?;
        let minute = match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                "CAST(FLOOR(EXTRACT(EPOCH FROM recorded_at) / 60) AS BIGINT)"
            }
            _ => "(CAST(strftime('%s', recorded_at) AS INTEGER) / 60)",
        };
        let sums = "CAST(SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END) AS BIGINT), \
                    CAST(SUM(CASE WHEN cache_hit THEN 0 ELSE 1 END) AS BIGINT), \
                    CAST(SUM(bytes_served) AS BIGINT), \
                    CAST(SUM(bytes_from_upstream) AS BIGINT)";
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "INSERT INTO egress_minutes \
             (office, minute, dataset, owner, hits, misses, bytes_served, bytes_from_upstream) \
             SELECT office, {minute}, COALESCE(dataset, ''), COALESCE(owner, ''), {sums} \
             FROM egress_ledger \
             GROUP BY office, {minute}, COALESCE(dataset, ''), COALESCE(owner, '')"
        ))
        .await?;
        db.execute_unprepared(
            "INSERT INTO egress_hours \
             (office, hour, hits, misses, bytes_served, bytes_from_upstream) \
             SELECT office, minute / 60, CAST(SUM(hits) AS BIGINT), CAST(SUM(misses) AS BIGINT), \
             CAST(SUM(bytes_served) AS BIGINT), CAST(SUM(bytes_from_upstream) AS BIGINT) \
             FROM egress_minutes WHERE owner <> 'sync' GROUP BY office, minute / 60",
        )
        .await?;
        db.execute_unprepared(&format!(
            "INSERT INTO egress_totals \
             (office, owner, hits, misses, bytes_served, bytes_from_upstream) \
             SELECT office, COALESCE(owner, ''), {sums} \
             FROM egress_ledger GROUP BY office, COALESCE(owner, '')"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(EgressHours::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(EgressTotals::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(EgressMinutes::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum EgressMinutes {
    Table,
    Office,
    Minute,
    Dataset,
    Owner,
    Hits,
    Misses,
    BytesServed,
    BytesFromUpstream,
}

#[derive(DeriveIden)]
enum EgressHours {
    Table,
    Office,
    Hour,
    Hits,
    Misses,
    BytesServed,
    BytesFromUpstream,
}

#[derive(DeriveIden)]
enum EgressTotals {
    Table,
    Office,
    Owner,
    Hits,
    Misses,
    BytesServed,
    BytesFromUpstream,
}
