//! The egress ledger's aggregates: what `cacheStats` and `cacheHistory` read equals the sum of
//! the raw rows, before and after raw rows are pruned, and rows written before the aggregates
//! existed are folded in by their migration. On SQLite, or on PostgreSQL when
//! `MILEPOST_TEST_DATABASE_URL` names a server.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use milepost_schema::egress::{self, EgressBucket, EgressRecord, EgressTotals, SYNC_OWNER};
use milepost_schema::entity::egress_ledger;
use milepost_schema::migration::Migrator;
use milepost_testkit::TestDatabase;
use sea_orm::{DatabaseConnection, EntityTrait as _, Set};
use sea_orm_migration::MigratorTrait as _;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0)
        .single()
        .expect("valid date")
}

/// `n` reads spread over three hours from [`start`], of two datasets and three owners (and
/// none), one in seven a miss, one in eleven catalog sync's.
fn reads(n: usize, seed: u64) -> Vec<EgressRecord> {
    (0..n)
        .map(|i| {
            let i = i as u64 + seed;
            let sync = i.is_multiple_of(11);
            EgressRecord {
                at: start()
                    + Duration::seconds(i64::try_from((i * 37) % (3 * 3600)).unwrap_or(0))
                    + Duration::microseconds(i64::try_from(i % 1000).unwrap_or(0)),
                bucket: "fleet".to_owned(),
                key: format!("drives/d{}/log.mcap", i % 13),
                dataset: (!i.is_multiple_of(3)).then(|| format!("set-{}", i % 2)),
                owner: if sync {
                    Some(SYNC_OWNER.to_owned())
                } else {
                    ["ci", "lin", "wu"]
                        .get(usize::try_from(i % 4).unwrap_or(0))
                        .map(|owner| (*owner).to_owned())
                },
                bytes_from_upstream: if i.is_multiple_of(7) || sync {
                    1000 + i
                } else {
                    0
                },
                bytes_served: if sync { 0 } else { 5000 + i },
                cache_hit: !i.is_multiple_of(7) && !sync,
            }
        })
        .collect()
}

/// What the reports must say of `records`: the totals and hourly history, sync left out.
fn expected(records: &[EgressRecord]) -> (EgressTotals, Vec<EgressBucket>) {
    expected_by(records, 3600)
}

/// The totals and the history in stretches of `width` seconds, sync left out.
fn expected_by(records: &[EgressRecord], width: i64) -> (EgressTotals, Vec<EgressBucket>) {
    let mut totals = EgressTotals::default();
    let mut hours: BTreeMap<i64, EgressBucket> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.owner.as_deref() != Some(SYNC_OWNER))
    {
        let (hit, served, upstream) = (
            i64::from(r.cache_hit),
            i64::try_from(r.bytes_served).unwrap_or(0),
            i64::try_from(r.bytes_from_upstream).unwrap_or(0),
        );
        totals.hits += hit;
        totals.misses += 1 - hit;
        totals.bytes_served += served;
        totals.bytes_from_upstream += upstream;
        let start = r.at.timestamp().div_euclid(width) * width;
        let hour = hours.entry(start).or_insert(EgressBucket {
            start,
            ..EgressBucket::default()
        });
        hour.hits += hit;
        hour.misses += 1 - hit;
        hour.bytes_served += served;
        hour.bytes_from_upstream += upstream;
    }
    (totals, hours.into_values().collect())
}

async fn database(dir: &std::path::Path) -> (TestDatabase, DatabaseConnection) {
    let database = TestDatabase::create(dir).await.expect("test database");
    let db = milepost_schema::connect(database.url())
        .await
        .expect("connect");
    (database, db)
}

#[tokio::test]
async fn aggregates_equal_the_raw_rows_and_outlive_their_pruning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_database, db) = database(dir.path()).await;
    milepost_schema::migrate(&db).await.expect("migrate");
    let hq = reads(2_000, 0);
    let other = reads(300, 5);
    // In batches, as the recorder writes them: the buckets of one minute are added to.
    for batch in hq.chunks(512) {
        egress::record(&db, "hq", batch.to_vec())
            .await
            .expect("record");
    }
    egress::record(&db, "lab", other.clone())
        .await
        .expect("record");

    let (totals, hours) = expected(&hq);
    assert_eq!(egress::totals(&db, "hq").await.expect("totals"), totals);
    assert_eq!(
        egress::totals_from_raw_rows(&db, "hq")
            .await
            .expect("raw totals"),
        totals
    );
    assert_eq!(
        egress::totals(&db, "lab").await.expect("totals"),
        expected(&other).0
    );
    let history = egress::history(&db, "hq", start(), 3600)
        .await
        .expect("history");
    assert_eq!(history, hours);
    // Stretches of whole hours come from the hour buckets, others from the minute buckets:
    // both agree with the raw reads.
    for width in [120, 420, 86_400] {
        assert_eq!(
            egress::history(&db, "hq", start() - Duration::days(1), width)
                .await
                .expect("history"),
            expected_by(&hq, width).1,
            "stretches of {width} s"
        );
    }
    // A window that starts later leaves the earlier hours out.
    let later = egress::history(&db, "hq", start() + Duration::hours(2), 3600)
        .await
        .expect("history");
    assert_eq!(later, hours[2..]);

    // Raw rows of the first hour pruned: the reports do not change.
    let pruned = egress::prune_raw(&db, start() + Duration::hours(1))
        .await
        .expect("prune");
    let first_hour = hq
        .iter()
        .chain(&other)
        .filter(|r| r.at < start() + Duration::hours(1))
        .count();
    assert_eq!(pruned, first_hour as u64);
    assert_eq!(egress::totals(&db, "hq").await.expect("totals"), totals);
    assert_ne!(
        egress::totals_from_raw_rows(&db, "hq")
            .await
            .expect("raw totals"),
        totals,
        "the pruned rows are gone from the raw table"
    );
    assert_eq!(
        egress::history(&db, "hq", start(), 3600)
            .await
            .expect("history"),
        hours
    );
    // Pruning again finds nothing more.
    assert_eq!(
        egress::prune_raw(&db, start() + Duration::hours(1))
            .await
            .expect("prune"),
        0
    );
}

#[tokio::test]
async fn the_migration_folds_rows_recorded_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_database, db) = database(dir.path()).await;
    let all = Migrator::migrations().len();
    // Every migration but the one adding the aggregates: the ledger as it was.
    Migrator::up(&db, Some(u32::try_from(all - 1).expect("few migrations")))
        .await
        .expect("migrate to the raw ledger");
    let before = reads(1_500, 3);
    let rows: Vec<_> = before
        .iter()
        .map(|r| egress_ledger::ActiveModel {
            recorded_at: Set(r.at),
            office: Set("hq".to_owned()),
            bucket: Set(r.bucket.clone()),
            key: Set(r.key.clone()),
            dataset: Set(r.dataset.clone()),
            owner: Set(r.owner.clone()),
            bytes_from_upstream: Set(i64::try_from(r.bytes_from_upstream).expect("small")),
            bytes_served: Set(i64::try_from(r.bytes_served).expect("small")),
            cache_hit: Set(r.cache_hit),
            ..Default::default()
        })
        .collect();
    for chunk in rows.chunks(100) {
        egress_ledger::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&db)
            .await
            .expect("raw rows");
    }
    milepost_schema::migrate(&db).await.expect("migrate");

    let (totals, hours) = expected(&before);
    assert_eq!(egress::totals(&db, "hq").await.expect("totals"), totals);
    assert_eq!(
        egress::history(&db, "hq", start(), 3600)
            .await
            .expect("history"),
        hours
    );
    // Reads recorded after the migration add to the folded buckets.
    let after = reads(400, 11);
    egress::record(&db, "hq", after.clone())
        .await
        .expect("record");
    let both: Vec<_> = before.into_iter().chain(after).collect();
    let (totals, hours) = expected(&both);
    assert_eq!(egress::totals(&db, "hq").await.expect("totals"), totals);
    assert_eq!(
        egress::history(&db, "hq", start(), 3600)
            .await
            .expect("history"),
        hours
    );
}
