//! The egress ledger's one owner: every write to the ledger (the cache's recorder, catalog
//! sync) and every read of it (`cacheStats`, the cache history) goes through here, so that what
//! counts as a hit, a miss or egress is decided in one place.
//!
//! A raw row (`egress_ledger`) is one object read: served in the office (`bytes_served`,
//! `cache_hit`) and/or fetched from upstream (`bytes_from_upstream`, the egress that costs
//! money). Catalog sync reads footers: egress, but not traffic the cache could have saved, so
//! it is recorded under the owner [`SYNC_OWNER`] and left out of the hit ratio.
//!
//! [`record`] also adds each batch to three aggregates in the same transaction:
//! `egress_minutes` (per office, minute, dataset and owner), `egress_hours` (per office and
//! hour, sync left out) and `egress_totals` (per office and owner). Reports read those, so they cost O(buckets) however many reads the office
//! served, and they stay equal to the sum of the raw rows, which may be pruned
//! ([`prune_raw`]) once they are no longer needed for audits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait, QueryFilter as _, QueryOrder as _,
    QuerySelect as _, Set, TransactionTrait,
};

use crate::entity::{egress_hour, egress_ledger, egress_minute, egress_total};
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

/// Appends `records` for `office`, in multi-row INSERTs, and adds them to the minute buckets
/// and the totals, all in one transaction: the aggregates never disagree with the raw rows.
pub async fn record<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    office: &str,
    records: Vec<EgressRecord>,
) -> Result<(), DbError> {
    if records.is_empty() {
        return Ok(());
    }
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    // Summed in order of their keys: two writers (cluster nodes) then lock the bucket rows
    // they share in the same order, so they wait for each other instead of deadlocking.
    let mut minutes: BTreeMap<(i64, String, String), Sums> = BTreeMap::new();
    let mut hours: BTreeMap<i64, Sums> = BTreeMap::new();
    let mut totals: BTreeMap<String, Sums> = BTreeMap::new();
    let models: Vec<_> = records
        .into_iter()
        .map(|row| {
            let sums = Sums::of(&row);
            let owner = row.owner.clone().unwrap_or_default();
            minutes
                .entry((
                    row.at.timestamp().div_euclid(60),
                    row.dataset.clone().unwrap_or_default(),
                    owner.clone(),
                ))
                .or_default()
                .add(sums);
            if owner != SYNC_OWNER {
                hours
                    .entry(row.at.timestamp().div_euclid(3600))
                    .or_default()
                    .add(sums);
            }
            totals.entry(owner).or_default().add(sums);
            egress_ledger::ActiveModel {
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
            }
        })
        .collect();
    let txn = db.begin().await?;
    for chunk in models.chunks(ROWS_PER_INSERT) {
        egress_ledger::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }
    let minutes: Vec<_> = minutes
        .into_iter()
        .map(
            |((minute, dataset, owner), sums)| egress_minute::ActiveModel {
                office: Set(office.to_owned()),
                minute: Set(minute),
                dataset: Set(dataset),
                owner: Set(owner),
                hits: Set(sums.hits),
                misses: Set(sums.misses),
                bytes_served: Set(sums.bytes_served),
                bytes_from_upstream: Set(sums.bytes_from_upstream),
            },
        )
        .collect();
    {
        use egress_minute::Column;
        add_to::<egress_minute::Entity, _>(
            &txn,
            minutes,
            &[
                Column::Office,
                Column::Minute,
                Column::Dataset,
                Column::Owner,
            ],
            [
                Column::Hits,
                Column::Misses,
                Column::BytesServed,
                Column::BytesFromUpstream,
            ],
        )
        .await?;
    }
    let hours: Vec<_> = hours
        .into_iter()
        .map(|(hour, sums)| egress_hour::ActiveModel {
            office: Set(office.to_owned()),
            hour: Set(hour),
            hits: Set(sums.hits),
            misses: Set(sums.misses),
            bytes_served: Set(sums.bytes_served),
            bytes_from_upstream: Set(sums.bytes_from_upstream),
        })
        .collect();
    {
        use egress_hour::Column;
        add_to::<egress_hour::Entity, _>(
            &txn,
            hours,
            &[Column::Office, Column::Hour],
            [
                Column::Hits,
                Column::Misses,
                Column::BytesServed,
                Column::BytesFromUpstream,
            ],
        )
        .await?;
    }
    let totals: Vec<_> = totals
        .into_iter()
        .map(|(owner, sums)| egress_total::ActiveModel {
            office: Set(office.to_owned()),
            owner: Set(owner),
            hits: Set(sums.hits),
            misses: Set(sums.misses),
            bytes_served: Set(sums.bytes_served),
            bytes_from_upstream: Set(sums.bytes_from_upstream),
        })
        .collect();
    {
        use egress_total::Column;
        add_to::<egress_total::Entity, _>(
            &txn,
            totals,
            &[Column::Office, Column::Owner],
            [
                Column::Hits,
                Column::Misses,
                Column::BytesServed,
                Column::BytesFromUpstream,
            ],
        )
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// What one aggregate row adds up.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    hits: i64,
    misses: i64,
    bytes_served: i64,
    bytes_from_upstream: i64,
}

impl Sums {
    fn of(record: &EgressRecord) -> Sums {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Sums {
            hits: i64::from(record.cache_hit),
            misses: i64::from(!record.cache_hit),
            bytes_served: as_i64(record.bytes_served),
            bytes_from_upstream: as_i64(record.bytes_from_upstream),
        }
    }

    fn add(&mut self, other: Sums) {
        self.hits = self.hits.saturating_add(other.hits);
        self.misses = self.misses.saturating_add(other.misses);
        self.bytes_served = self.bytes_served.saturating_add(other.bytes_served);
        self.bytes_from_upstream = self
            .bytes_from_upstream
            .saturating_add(other.bytes_from_upstream);
    }
}

/// Inserts `rows` of the aggregate `E`, adding each one's `counters` to the row already
/// there with the same `key` (`ON CONFLICT (key) DO UPDATE SET c = table.c + excluded.c`).
async fn add_to<E, C>(
    txn: &C,
    rows: Vec<E::ActiveModel>,
    key: &[E::Column],
    counters: [E::Column; 4],
) -> Result<(), DbError>
where
    E: EntityTrait,
    E::Model: sea_orm::IntoActiveModel<E::ActiveModel>,
    C: ConnectionTrait,
{
    let mut on_conflict = OnConflict::columns(key.iter().copied());
    for counter in counters {
        on_conflict.value(
            counter,
            Expr::col((E::default(), counter)).add(Expr::col((Alias::new("excluded"), counter))),
        );
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        E::insert_many(chunk.to_vec())
            .on_conflict(on_conflict.clone())
            .exec_without_returning(txn)
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

impl EgressTotals {
    /// From the four sums a totals query selects, in field order.
    fn from_sums((hits, misses, bytes_served, bytes_from_upstream): (i64, i64, i64, i64)) -> Self {
        EgressTotals {
            hits,
            misses,
            bytes_served,
            bytes_from_upstream,
        }
    }
}

/// Raw rows that count toward hits and misses: everything but catalog sync.
fn not_sync() -> sea_orm::Condition {
    sea_orm::Condition::any()
        .add(egress_ledger::Column::Owner.is_null())
        .add(egress_ledger::Column::Owner.ne(SYNC_OWNER))
}

/// Totals of `office`'s ledger since the office began (persisted, so they survive restarts
/// and the pruning of raw rows): one row per owner is read.
pub async fn totals<C: ConnectionTrait>(db: &C, office: &str) -> Result<EgressTotals, DbError> {
    use egress_total::Column;
    let row: Option<(i64, i64, i64, i64)> = egress_total::Entity::find()
        .select_only()
        .column_as(sum_of("egress_totals", "hits"), "hits")
        .column_as(sum_of("egress_totals", "misses"), "misses")
        .column_as(sum_of("egress_totals", "bytes_served"), "served")
        .column_as(sum_of("egress_totals", "bytes_from_upstream"), "upstream")
        .filter(Column::Office.eq(office))
        .filter(Column::Owner.ne(SYNC_OWNER))
        .into_tuple()
        .one(db)
        .await?;
    Ok(EgressTotals::from_sums(row.unwrap_or_default()))
}

/// `SUM(table.column)` as a BIGINT, 0 over no rows (PostgreSQL sums BIGINTs as NUMERIC).
fn sum_of(table: &str, column: &str) -> sea_orm::sea_query::SimpleExpr {
    Expr::cust(format!(
        r#"CAST(COALESCE(SUM("{table}"."{column}"), 0) AS BIGINT)"#
    ))
}

/// [`totals`] summed from the raw rows still kept: equal to it until raw rows are pruned. For
/// audits and tests; it reads every raw row of the office.
pub async fn totals_from_raw_rows<C: ConnectionTrait>(
    db: &C,
    office: &str,
) -> Result<EgressTotals, DbError> {
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
    Ok(EgressTotals::from_sums(row.unwrap_or_default()))
}

/// The reads of one stretch of time, for histories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressBucket {
    /// Start of the stretch, Unix seconds, a multiple of its width.
    pub start: i64,
    pub hits: i64,
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
}

/// `office`'s reads from `since` on, catalog sync left out, summed into stretches of
/// `width_seconds` (at least 60) starting at multiples of it, oldest first; stretches without
/// reads are left out. Stretches of whole hours are read from the hour buckets, others from
/// the minute buckets: a bucket counts toward the stretch its start falls in, so a width that
/// is not a multiple of 60 places some reads up to a minute early.
pub async fn history<C: ConnectionTrait>(
    db: &C,
    office: &str,
    since: DateTime<Utc>,
    width_seconds: i64,
) -> Result<Vec<EgressBucket>, DbError> {
    let width = width_seconds.max(60);
    let rows: Vec<(i64, i64, i64, i64, i64)> = if width % 3600 == 0 {
        use egress_hour::Column;
        let start = Expr::cust(format!(
            r#"("egress_hours"."hour" * 3600 / {width}) * {width}"#
        ));
        egress_hour::Entity::find()
            .select_only()
            .column_as(start.clone(), "start")
            .column_as(sum_of("egress_hours", "hits"), "hits")
            .column_as(sum_of("egress_hours", "misses"), "misses")
            .column_as(sum_of("egress_hours", "bytes_served"), "served")
            .column_as(sum_of("egress_hours", "bytes_from_upstream"), "upstream")
            .filter(Column::Office.eq(office))
            .filter(Column::Hour.gte(since.timestamp().div_euclid(3600)))
            .group_by(start.clone())
            .order_by_asc(start)
            .into_tuple()
            .all(db)
            .await?
    } else {
        use egress_minute::Column;
        let start = Expr::cust(format!(
            r#"("egress_minutes"."minute" * 60 / {width}) * {width}"#
        ));
        egress_minute::Entity::find()
            .select_only()
            .column_as(start.clone(), "start")
            .column_as(sum_of("egress_minutes", "hits"), "hits")
            .column_as(sum_of("egress_minutes", "misses"), "misses")
            .column_as(sum_of("egress_minutes", "bytes_served"), "served")
            .column_as(sum_of("egress_minutes", "bytes_from_upstream"), "upstream")
            .filter(Column::Office.eq(office))
            .filter(Column::Minute.gte(since.timestamp().div_euclid(60)))
            .filter(Column::Owner.ne(SYNC_OWNER))
            .group_by(start.clone())
            .order_by_asc(start)
            .into_tuple()
            .all(db)
            .await?
    };
    Ok(rows
        .into_iter()
        .map(
            |(start, hits, misses, bytes_served, bytes_from_upstream)| EgressBucket {
                start,
                hits,
                misses,
                bytes_served,
                bytes_from_upstream,
            },
        )
        .collect())
}

/// Raw rows deleted per statement by [`prune_raw`]: short transactions, so recording goes on
/// while a large backlog is pruned.
const PRUNE_BATCH: u64 = 10_000;

/// Deletes the raw rows recorded before `before`, every office's; the aggregates keep what
/// they counted. Returns how many were deleted.
pub async fn prune_raw<C: ConnectionTrait>(db: &C, before: DateTime<Utc>) -> Result<u64, DbError> {
    let mut deleted = 0;
    loop {
        let batch = Query::select()
            .column(egress_ledger::Column::Id)
            .from(egress_ledger::Entity)
            .and_where(egress_ledger::Column::RecordedAt.lt(before))
            .limit(PRUNE_BATCH)
            .to_owned();
        let removed = egress_ledger::Entity::delete_many()
            .filter(egress_ledger::Column::Id.in_subquery(batch))
            .exec(db)
            .await?
            .rows_affected;
        if removed == 0 {
            return Ok(deleted);
        }
        deleted += removed;
    }
}
