//! The egress ledger's one owner: every write to `egress_ledger` (the cache's recorder, catalog
//! sync) and every read of it (`cacheStats`, the cache history) goes through here, so that what
//! counts as a hit, a miss or egress is decided in one place.
//!
//! A row is one object read: served in the office (`bytes_served`, `cache_hit`) and/or
//! fetched from upstream (`bytes_from_upstream`, the egress that costs money). Catalog sync
//! reads footers: egress, but not traffic the cache could have saved, so it is recorded under
//! the owner [`SYNC_OWNER`] and left out of the hit ratio.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _, QuerySelect as _, Set,
};

use crate::entity::egress_ledger;
use crate::DbError;

/// The owner of the rows catalog sync writes.
pub const SYNC_OWNER: &str = "sync";

/// Rows per INSERT: 9 values each, under every backend's parameter limit (SQLite's oldest
/// default is 999).
const ROWS_PER_INSERT: usize = 100;

/// One object read, as the ledger records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRecord {
    pub at: DateTime<Utc>,
    pub bucket: String,
    pub key: String,
    /// Dataset name, when served for a reservation.
    pub dataset: Option<String>,
    /// Token name, when known; [`SYNC_OWNER`] for catalog sync.
    pub owner: Option<String>,
    pub bytes_from_upstream: u64,
    pub bytes_served: u64,
    pub cache_hit: bool,
}

impl EgressRecord {
    /// Bytes catalog sync read from upstream to describe `key`.
    pub fn sync_read(at: DateTime<Utc>, bucket: &str, key: String, bytes: u64) -> Self {
        EgressRecord {
            at,
            bucket: bucket.to_owned(),
            key,
            dataset: None,
            owner: Some(SYNC_OWNER.to_owned()),
            bytes_from_upstream: bytes,
            bytes_served: 0,
            cache_hit: false,
        }
    }
}

/// Appends `records` for `office`, in multi-row INSERTs.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    office: &str,
    records: Vec<EgressRecord>,
) -> Result<(), DbError> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let models: Vec<_> = records
        .into_iter()
        .map(|row| egress_ledger::ActiveModel {
            recorded_at: Set(row.at),
            office: Set(office.to_owned()),
            bucket: Set(row.bucket),
            key: Set(row.key),
            dataset: Set(row.dataset),
            owner: Set(row.owner),
            bytes_from_upstream: Set(as_i64(row.bytes_from_upstream)),
            bytes_served: Set(as_i64(row.bytes_served)),
            cache_hit: Set(row.cache_hit),
            ..Default::default()
        })
        .collect();
    for chunk in models.chunks(ROWS_PER_INSERT) {
        egress_ledger::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The ledger's totals for one office, catalog sync left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressTotals {
    /// Reads served from the office's copy.
    pub hits: i64,
    /// Reads that fetched from upstream.
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
}

/// Rows that count toward hits and misses: everything but catalog sync.
fn not_sync() -> sea_orm::Condition {
    sea_orm::Condition::any()
        .add(egress_ledger::Column::Owner.is_null())
        .add(egress_ledger::Column::Owner.ne(SYNC_OWNER))
}

/// Totals of `office`'s ledger (persisted, so they survive restarts).
pub async fn totals<C: ConnectionTrait>(db: &C, office: &str) -> Result<EgressTotals, DbError> {
    let sum =
        |expression: &str| Expr::cust(format!(r#"CAST(COALESCE(SUM({expression}), 0) AS BIGINT)"#));
    let row: Option<(i64, i64, i64, i64)> = egress_ledger::Entity::find()
        .select_only()
        .column_as(
            sum(r#"CASE WHEN "egress_ledger"."cache_hit" THEN 1 ELSE 0 END"#),
            "hits",
        )
        .column_as(
            sum(r#"CASE WHEN "egress_ledger"."cache_hit" THEN 0 ELSE 1 END"#),
            "misses",
        )
        .column_as(sum(r#""egress_ledger"."bytes_served""#), "served")
        .column_as(sum(r#""egress_ledger"."bytes_from_upstream""#), "upstream")
        .filter(egress_ledger::Column::Office.eq(office))
        .filter(not_sync())
        .into_tuple()
        .one(db)
        .await?;
    let (hits, misses, bytes_served, bytes_from_upstream) = row.unwrap_or_default();
    Ok(EgressTotals {
        hits,
        misses,
        bytes_served,
        bytes_from_upstream,
    })
}

/// One read served in the office, for histories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressEvent {
    pub at: DateTime<Utc>,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
    pub cache_hit: bool,
}

/// `office`'s reads recorded at or after `since`, catalog sync left out.
pub async fn reads_since<C: ConnectionTrait>(
    db: &C,
    office: &str,
    since: DateTime<Utc>,
) -> Result<Vec<EgressEvent>, DbError> {
    let rows: Vec<(DateTime<Utc>, i64, i64, bool)> = egress_ledger::Entity::find()
        .select_only()
        .column(egress_ledger::Column::RecordedAt)
        .column(egress_ledger::Column::BytesServed)
        .column(egress_ledger::Column::BytesFromUpstream)
        .column(egress_ledger::Column::CacheHit)
        .filter(egress_ledger::Column::Office.eq(office))
        .filter(egress_ledger::Column::RecordedAt.gte(since))
        .filter(not_sync())
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(at, bytes_served, bytes_from_upstream, cache_hit)| EgressEvent {
                at,
                bytes_served,
                bytes_from_upstream,
                cache_hit,
            },
        )
        .collect())
}
