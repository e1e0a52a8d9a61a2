//! `bench_ledger`: `cacheStats` and `cacheHistory` after millions of recorded reads (issue
//! "Catalog at fleet scale", acceptance 5: after 10,000,000 recorded reads `cacheStats` answers
//! in ≤ 20 ms and equals the sum of the raw rows it replaced).
//!
//! ```text
//! cargo build --release -p milepost-tests --bin bench_ledger
//! target/release/bench_ledger [--reads 10000000] [--queries 200] [--database URL]
//! ```
//!
//! Records `--reads` reads through `milepost_schema::egress::record` in batches of 512 (what
//! the cache's recorder writes), into a SQLite catalog under a fresh directory or the empty
//! PostgreSQL database `--database` names. The reads come as sessions, the way an office reads:
//! a pipeline or an engineer (one of 100 owners) reads 100 to 400 objects of one dataset (one
//! of 40, or none) within a few minutes; sessions start anywhere in the last 30 days; one in
//! seven reads is a miss, one session in twenty is catalog sync's. Then it serves the catalog
//! with the real server (in this process) and times `--queries` GraphQL calls of each of
//! `cacheStats`, `cacheHistory` of the last 24 hours by hour, and of the last 30 days by day;
//! and checks `cacheStats` against the sum of the raw rows, which it also times (the query
//! `cacheStats` ran before the aggregates existed).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{TimeDelta, Utc};
use milepost_api::config::{Config, Interval, ListenAddr};
use milepost_api::server::{self, AppState};
use milepost_schema::egress::{self, EgressRecord, SYNC_OWNER};
use milepost_schema::enums::Role;
use milepost_tests::cpu::thread_cpu_seconds;
use rand::{Rng as _, SeedableRng as _};
use sea_orm::{ConnectionTrait as _, EntityTrait as _, PaginatorTrait as _};
use serde_json::{json, Value};

const OFFICE: &str = "bench";
/// Records per `egress::record` call: the recorder's batch.
const BATCH: usize = 512;

struct Args {
    reads: u64,
    queries: usize,
    database: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        reads: 10_000_000,
        queries: 200,
        database: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || {
            given
                .next()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--reads" => args.reads = value()?.parse()?,
            "--queries" => args.queries = value()?.parse()?,
            "--database" => args.database = Some(value()?),
            other => bail!("unknown argument {other}; see the doc comment for usage"),
        }
    }
    if args.queries == 0 {
        bail!("--queries must be at least 1");
    }
    Ok(args)
}

/// The reads of one session, starting at a random time of the last 30 days.
fn session(rng: &mut rand::rngs::StdRng, n: u64, now: chrono::DateTime<Utc>) -> Vec<EgressRecord> {
    let sync = rng.random_range(0..20) == 0;
    let owner = if sync {
        Some(SYNC_OWNER.to_owned())
    } else {
        Some(format!("owner-{:03}", rng.random_range(0..100)))
    };
    let dataset = (!sync && rng.random_range(0..5) != 0)
        .then(|| format!("dataset-{:02}@1", rng.random_range(0..40)));
    let start = now - TimeDelta::seconds(rng.random_range(300..30 * 86_400));
    let spread = rng.random_range(30..300);
    (0..n)
        .map(|i| {
            let miss = sync || rng.random_range(0..7) == 0;
            let size = rng.random_range(1u64 << 20..64 << 20);
            EgressRecord {
                at: start + TimeDelta::milliseconds(rng.random_range(0..spread * 1000)),
                bucket: "fleet".to_owned(),
                key: format!("drives/2026-11-{:02}/veh/d{i:04}/cam.mcap", i % 28 + 1),
                dataset: dataset.clone(),
                owner: owner.clone(),
                bytes_from_upstream: if miss { size } else { 0 },
                bytes_served: if sync { 0 } else { size },
                cache_hit: !miss,
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn record_reads(db: &sea_orm::DatabaseConnection, reads: u64) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_208);
    let now = Utc::now();
    let (started, cpu) = (Instant::now(), thread_cpu_seconds()?);
    let mut pending: Vec<EgressRecord> = Vec::with_capacity(BATCH * 2);
    let (mut generated, mut written) = (0u64, 0u64);
    let mut reported = Instant::now();
    while generated < reads {
        let n = rng.random_range(100..=400).min(reads - generated);
        pending.extend(session(&mut rng, n, now));
        generated += n;
        while pending.len() >= BATCH || (generated == reads && !pending.is_empty()) {
            let batch: Vec<_> = pending.drain(..pending.len().min(BATCH)).collect();
            written += batch.len() as u64;
            egress::record(db, OFFICE, batch).await?;
        }
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {written} reads recorded ({:.0}/s)",
                written as f64 / started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
    }
    let took = started.elapsed();
    println!(
        "recorded {written} reads in {:.1} s ({:.0} reads/s, {:.1} CPU s in the recording thread; the database's own CPU not counted)",
        took.as_secs_f64(),
        written as f64 / took.as_secs_f64(),
        thread_cpu_seconds()? - cpu
    );
    Ok(())
}

async fn run(args: Args, dir: &Path) -> anyhow::Result<()> {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    if let Some(url) = &args.database {
        config.database.url = url.clone();
    }
    config.office = OFFICE.to_owned();
    config.server.listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.server.s3_listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.catalog.sync_interval = Interval(None);
    config.cache.ledger_raw_retention = Interval(None);
    let db = milepost_schema::connect(&config.database_url()).await?;
    milepost_schema::migrate(&db).await?;
    let existing = milepost_schema::entity::egress_ledger::Entity::find()
        .count(&db)
        .await?;
    if existing > 0 {
        bail!("the database already holds {existing} ledger rows: give an empty one");
    }
    println!(
        "backend: {:?}; recording {} reads",
        db.get_database_backend(),
        args.reads
    );
    record_reads(&db, args.reads).await?;
    let minutes = milepost_schema::entity::egress_minute::Entity::find()
        .count(&db)
        .await?;
    println!("minute buckets: {minutes}");

    let raw_started = Instant::now();
    let raw = egress::totals_from_raw_rows(&db, OFFICE).await?;
    let raw_took = raw_started.elapsed();
    let mut raw_again = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(egress::totals_from_raw_rows(&db, OFFICE).await?);
        raw_again.push(t.elapsed());
    }
    raw_again.sort();
    println!(
        "sum of the raw rows (the query cacheStats ran before): first {}, then median of 3 {}",
        ms(raw_took),
        ms(raw_again[1])
    );

    let upstream = milepost_api::server::upstream_settings(&config);
    let state = AppState::open_with_upstream(config, upstream).await?;
    let token = milepost_api::auth::create_token(&state.db, "bench", Role::Viewer).await?;
    let running = server::start_with_state(state).await?;
    let url = format!("http://{}/graphql", running.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let stats: Value = client
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({ "query": "{ cacheStats { hits misses bytesServed bytesFromUpstream } }" }))
        .send()
        .await?
        .json()
        .await?;
    let got = &stats["data"]["cacheStats"];
    let as_i64 = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let equal = as_i64(&got["hits"]) == Some(raw.hits)
        && as_i64(&got["misses"]) == Some(raw.misses)
        && as_i64(&got["bytesServed"]) == Some(raw.bytes_served)
        && as_i64(&got["bytesFromUpstream"]) == Some(raw.bytes_from_upstream);
    println!(
        "cacheStats {got} vs the raw rows' sums (hits {}, misses {}, served {}, upstream {}): {}",
        raw.hits,
        raw.misses,
        raw.bytes_served,
        raw.bytes_from_upstream,
        if equal { "equal" } else { "DIFFERENT" }
    );
    if !equal {
        bail!("cacheStats differs from the sum of the raw rows");
    }

    let queries = [
        ("cacheStats", "{ cacheStats { hits misses bytesServed bytesFromUpstream egressSavedUsd usedBytes } }"),
        ("cacheHistory, 24 h by hour", "{ cacheHistory(bucketSeconds: 3600, buckets: 24) { start hits misses bytesServed bytesFromUpstream } }"),
        ("cacheHistory, 30 days by day", "{ cacheHistory(bucketSeconds: 86400, buckets: 30) { start hits misses bytesServed bytesFromUpstream } }"),
    ];
    println!();
    println!("| query | p50 | p99 | max | calls |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, query) in queries {
        let mut samples = Vec::with_capacity(args.queries);
        for i in 0..args.queries + 5 {
            let t = Instant::now();
            let body: Value = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "query": query }))
                .send()
                .await?
                .json()
                .await?;
            let took = t.elapsed();
            if body.get("errors").is_some() {
                bail!("{name}: {body}");
            }
            if i >= 5 {
                samples.push(took);
            }
        }
        samples.sort();
        println!(
            "| {name} | {} | {} | {} | {} |",
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.99)),
            ms(*samples.last().unwrap_or(&Duration::ZERO)),
            samples.len()
        );
    }
    running.shutdown().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, dir.path()))
}
