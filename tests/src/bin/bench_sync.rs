//! `bench_sync`: one full catalog sync of a 100,000-object bucket (1,000 MCAP logs) from the
//! loopback S3 server, then a second sync of the unchanged bucket.
//!
//! ```text
//! cargo build --release -p milepost-tests --bins
//! target/release/bench_sync [--objects N] [--logs N] [--runs N] [--templates N]
//!                           [--drive-mib N] [--seed S] [--dir PATH] [--no-aws] [--garage]
//!                           [--direct] [--list-floor]
//! ```
//!
//! - Seeds a [`LoopbackUpstream`] (s3s-fs in a temp dir, or `--dir`), or with `--garage` a
//!   single-node Garage (`garage` on PATH), through the S3 API: the
//!   synthetic fleet's drives (as many as it takes to have `--logs` MCAP logs; sidecars as
//!   generated), `--runs` runs (run.json, metrics.parquet, outputs, rendered), and small
//!   camera/lidar blobs under the drives up to `--objects` objects. MCAP logs are real
//!   generated logs (`--drive-mib` sets their size), but only `--templates` distinct ones are
//!   rendered and re-uploaded under every log key, to keep seeding fast. Seeding is timed but
//!   is not part of any figure.
//! - Puts a [`FaultProxy`] (pass-through, counting) in front of it and serves the real
//!   application state (`AppState::open_with_upstream`: SQLite catalog and on-disk search
//!   index in a temp dir) over the proxy, then times `sync_catalog()`: wall time, objects/s,
//!   requests by kind, GETs and bytes per MCAP log (proxy log and egress ledger).
//! - A second sync of the unchanged bucket: time and requests (it must GET nothing).
//! - `--direct`: both syncs again without the proxy, into a fresh catalog: the figures to
//!   quote (the proxy opens an upstream connection per request). Each sync reports the
//!   process's CPU time beside its wall time (with s3s-fs, the loopback server runs in this
//!   process and its CPU is included; Garage is another process), and the run ends with the
//!   process's peak RSS.
//! - Peers in the same run, through the same proxy: the client's own listing alone
//!   (`list_all`), a sample of sequential HEADs, and `aws s3 ls --recursive` when the AWS CLI
//!   is on PATH.
//!
//! (Over 600 lines: a benchmark program: seeding, the measured syncs and the report in one command.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use milepost_api::config::{Config, Interval, ListenAddr};
use milepost_api::server::AppState;
use milepost_indexer::fleet::{self, FileKind, FleetSpec, GeneratedFile};
use milepost_indexer::sync::SyncReport;
use milepost_schema::entity::egress_ledger;
use milepost_store::{EgressMeter, ObjectStore, UpstreamSettings};
use milepost_testkit::garage::Garage;
use milepost_testkit::{
    FaultProxy, LoopbackUpstream, SeenRequest, LOOPBACK_ACCESS_KEY, LOOPBACK_SECRET_KEY,
};
use sea_orm::EntityTrait;

const BUCKET: &str = "fleet";

struct Args {
    objects: usize,
    logs: usize,
    runs: usize,
    templates: usize,
    drive_mib: u64,
    seed: u64,
    dir: Option<PathBuf>,
    concurrency: usize,
    aws: bool,
    direct: bool,
    list_floor: bool,
    garage: bool,
    /// The padding blobs' largest size (they are 2 to 32 KiB by default).
    blob_bytes: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        objects: 100_000,
        logs: 1_000,
        runs: 50,
        templates: 32,
        drive_mib: 6,
        seed: 20_261_125,
        dir: None,
        concurrency: 32,
        aws: true,
        direct: false,
        list_floor: false,
        garage: false,
        blob_bytes: 32 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value"))
                .map(|v| v.replace('_', ""))
        };
        match arg.as_str() {
            "--objects" => args.objects = value("--objects")?.parse()?,
            "--logs" => args.logs = value("--logs")?.parse()?,
            "--runs" => args.runs = value("--runs")?.parse()?,
            "--templates" => args.templates = value("--templates")?.parse()?,
            "--drive-mib" => args.drive_mib = value("--drive-mib")?.parse()?,
            "--seed" => args.seed = value("--seed")?.parse()?,
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            "--concurrency" => args.concurrency = value("--concurrency")?.parse()?,
            "--no-aws" => args.aws = false,
            "--direct" => args.direct = true,
            "--list-floor" => args.list_floor = true,
            "--garage" => args.garage = true,
            "--blob-bytes" => args.blob_bytes = value("--blob-bytes")?.parse()?,
            "-h" | "--help" => {
                println!(
                    "bench_sync [--objects N] [--logs N] [--runs N] [--templates N] [--drive-mib N] [--seed S] [--dir PATH] [--concurrency N] [--no-aws] [--direct] [--list-floor] [--garage] [--blob-bytes N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.logs == 0 || args.templates == 0 {
        bail!("--logs and --templates must be positive");
    }
    Ok(args)
}

/// What the bucket will hold: (key, how its bytes are made).
enum Body {
    /// Rendered from the fleet plan (sidecars, Parquet files).
    Render(GeneratedFile),
    /// The n-th rendered MCAP template.
    Log(usize),
    /// The n-th small blob.
    Blob(usize),
}

struct Plan {
    objects: Vec<(String, Body)>,
    drives: usize,
    logs: usize,
    runs: usize,
    log_templates: Vec<GeneratedFile>,
}

/// The fleet's drives until `logs` logs, its runs, and padding blobs up to `objects`.
fn plan(args: &Args) -> anyhow::Result<Plan> {
    let mut spec = FleetSpec {
        seed: args.seed,
        drives: args.logs / 2 + 16,
        runs: args.runs,
        drive_bytes: args.drive_mib << 20,
        bucket: BUCKET.to_owned(),
        drives_prefix: "drives/".to_owned(),
        runs_prefix: "runs/".to_owned(),
    };
    let fleet = loop {
        let fleet = fleet::generate(&spec);
        let logs: usize = fleet.drives.iter().map(|d| d.expected.len()).sum();
        if logs >= args.logs {
            break fleet;
        }
        spec.drives = spec.drives * 3 / 2 + 1;
    };
    // Exactly the drives needed, planned again so that run inputs name only those (a drive's
    // plan depends on its index only).
    let mut logs = 0;
    spec.drives = fleet
        .drives
        .iter()
        .take_while(|d| {
            let needed = logs < args.logs;
            logs += d.expected.len();
            needed
        })
        .count();
    let fleet = fleet::generate(&spec);
    let mut objects = Vec::with_capacity(args.objects);
    let mut log_templates = Vec::new();
    let mut logs = 0;
    let mut prefixes = Vec::new();
    for drive in &fleet.drives {
        if logs >= args.logs {
            break;
        }
        prefixes.push(drive.prefix.clone());
        for file in &drive.files {
            match file.kind {
                FileKind::Mcap => {
                    if logs >= args.logs {
                        continue;
                    }
                    let template = logs % args.templates;
                    if log_templates.len() <= template {
                        log_templates.push(file.clone());
                    }
                    objects.push((file.key.clone(), Body::Log(template)));
                    logs += 1;
                }
                FileKind::Camera | FileKind::Lidar => {
                    objects.push((file.key.clone(), Body::Blob(objects.len())));
                }
                _ => objects.push((file.key.clone(), Body::Render(file.clone()))),
            }
        }
    }
    for run in &fleet.runs {
        for file in &run.files {
            objects.push((file.key.clone(), Body::Render(file.clone())));
        }
    }
    if objects.len() > args.objects {
        bail!(
            "the fleet alone has {} objects, more than --objects {}",
            objects.len(),
            args.objects
        );
    }
    let padding = args.objects - objects.len();
    for p in 0..padding {
        let prefix = &prefixes[p % prefixes.len()];
        let frame = p / prefixes.len();
        let key = if p % 2 == 0 {
            format!("{prefix}camera/left/{frame:06}.jpg")
        } else {
            format!("{prefix}lidar/aux/{frame:06}.bin")
        };
        objects.push((key, Body::Blob(p)));
    }
    Ok(Plan {
        drives: prefixes.len(),
        logs,
        runs: fleet.runs.len(),
        objects,
        log_templates,
    })
}

/// 16 small payloads of 2 to 32 KiB (or up to `max` bytes when it is smaller), cheap to make.
fn blobs(max: usize) -> Vec<Bytes> {
    (0..16u64)
        .map(|i| {
            let len = (2048 + (i as usize * 1987) % (30 * 1024)).min(max.max(1));
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Bytes::from(data)
        })
        .collect()
}

async fn seed(
    store: &Arc<dyn ObjectStore>,
    plan: Plan,
    concurrency: usize,
    blob_bytes: usize,
) -> anyhow::Result<(usize, u64)> {
    store.ensure_bucket(BUCKET).await?;
    let templates: Vec<Bytes> = plan
        .log_templates
        .iter()
        .map(GeneratedFile::render)
        .collect::<Result<_, _>>()?;
    let templates = Arc::new(templates);
    let blobs = Arc::new(blobs(blob_bytes));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut bytes = 0u64;
    let mut count = 0usize;
    for (key, body) in plan.objects {
        let permit = semaphore.clone().acquire_owned().await?;
        let store = store.clone();
        let templates = templates.clone();
        let blobs = blobs.clone();
        tasks.spawn(async move {
            let data = match body {
                Body::Render(file) => tokio::task::spawn_blocking(move || file.render()).await??,
                Body::Log(n) => templates[n].clone(),
                Body::Blob(n) => blobs[n % blobs.len()].clone(),
            };
            let len = data.len() as u64;
            // A busy single-node Garage answers 503 when its metadata database is locked: try
            // again, as any S3 client would.
            let mut attempt = 0;
            loop {
                match store.put(BUCKET, &key, data.clone()).await {
                    Ok(_) => break,
                    Err(err) if attempt < 5 => {
                        attempt += 1;
                        eprintln!("seeding {key}: {err}; again (attempt {attempt})");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    Err(err) => {
                        return Err(anyhow::Error::new(err).context(format!("cannot upload {key}")))
                    }
                }
            }
            drop(permit);
            anyhow::Ok(len)
        });
        while let Some(done) = tasks.try_join_next() {
            bytes += done??;
            count += 1;
        }
    }
    while let Some(done) = tasks.join_next().await {
        bytes += done??;
        count += 1;
    }
    Ok((count, bytes))
}

/// Requests of a proxy log by kind.
#[derive(Debug, Default)]
struct Requests {
    list: usize,
    head: usize,
    get: usize,
    other: usize,
    /// GETs per object key.
    gets: BTreeMap<String, usize>,
}

fn classify(seen: &[SeenRequest]) -> Requests {
    let mut r = Requests::default();
    let prefix = format!("/{BUCKET}/");
    for request in seen {
        match request.method.as_str() {
            "GET" if request.target.contains("list-type") => r.list += 1,
            "GET" => {
                r.get += 1;
                let key = request
                    .target
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches(&prefix)
                    .to_owned();
                *r.gets.entry(key).or_default() += 1;
            }
            "HEAD" => r.head += 1,
            _ => r.other += 1,
        }
    }
    r
}

fn app_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.server.listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.server.s3_listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.catalog.sync_interval = Interval(None);
    config.catalog.bucket = BUCKET.to_owned();
    config
}

fn print_report(label: &str, report: &SyncReport, took: Duration) {
    println!(
        "{label}: {:.2} s; seen {}, changed {}, deleted {}, drives {}, runs {}, files read {}, bytes read {} ({:.1} MiB), errors {}",
        took.as_secs_f64(),
        report.objects_seen,
        report.objects_changed,
        report.objects_deleted,
        report.drives,
        report.runs,
        report.files_read,
        report.bytes_read,
        report.bytes_read as f64 / (1 << 20) as f64,
        report.errors.len()
    );
    for error in report.errors.iter().take(5) {
        println!("  error: {error}");
    }
}

/// `aws s3 ls --recursive` of the bucket through `endpoint`: (seconds, lines, startup seconds).
fn aws_listing(endpoint: &str, keys: &(String, String, String)) -> Option<(f64, usize, f64)> {
    let command = || {
        let mut c = std::process::Command::new("aws");
        c.env("AWS_ACCESS_KEY_ID", &keys.0)
            .env("AWS_SECRET_ACCESS_KEY", &keys.1)
            .env("AWS_DEFAULT_REGION", &keys.2)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE");
        c
    };
    let t = Instant::now();
    let version = command().arg("--version").output().ok()?;
    let startup = t.elapsed().as_secs_f64();
    if !version.status.success() {
        return None;
    }
    let t = Instant::now();
    let out = command()
        .args([
            "s3",
            "ls",
            "--recursive",
            &format!("s3://{BUCKET}/"),
            "--endpoint-url",
            endpoint,
        ])
        .output()
        .ok()?;
    let took = t.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!(
            "aws s3 ls failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let lines = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    Some((took, lines, startup))
}

/// The S3 server the bucket is seeded into.
enum Server {
    Loopback(LoopbackUpstream),
    Garage(Garage),
}

impl Server {
    fn settings(&self) -> UpstreamSettings {
        match self {
            Server::Loopback(s3) => s3.settings(),
            Server::Garage(garage) => garage.settings(),
        }
    }

    fn endpoint(&self) -> String {
        match self {
            Server::Loopback(s3) => s3.endpoint(),
            Server::Garage(garage) => garage.endpoint.clone(),
        }
    }

    fn store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(match self {
            Server::Loopback(s3) => Arc::clone(&s3.store),
            Server::Garage(garage) => Arc::new(garage.store()?),
        })
    }

    /// Access key, secret and region for the AWS CLI.
    fn aws_keys(&self) -> (String, String, String) {
        match self {
            Server::Loopback(_) => (
                LOOPBACK_ACCESS_KEY.to_owned(),
                LOOPBACK_SECRET_KEY.to_owned(),
                milepost_store::loopback::LOOPBACK_REGION.to_owned(),
            ),
            Server::Garage(garage) => (
                garage.key_id.clone(),
                garage.secret.clone(),
                "us-east-1".to_owned(),
            ),
        }
    }
}

/// This process's CPU time (user + system) so far, from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // Clock ticks are 100 per second on Linux.
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// This process's peak resident set, in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let s3_dir = root.join("s3");
    let data_dir = root.join("milepost");
    if s3_dir.exists() || data_dir.exists() || root.join("garage").exists() {
        bail!("{} is not empty: pick a fresh --dir", root.display());
    }
    println!(
        "bench_sync: {} objects, {} MCAP logs ({} distinct), {} runs, drives of ~{} MiB, seed {}; data in {}",
        args.objects,
        args.logs,
        args.templates.min(args.logs),
        args.runs,
        args.drive_mib,
        args.seed,
        root.display()
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let s3 = if args.garage {
        Server::Garage(Garage::start(&root.join("garage"), BUCKET)?)
    } else {
        Server::Loopback(LoopbackUpstream::start_in(&s3_dir, BUCKET).await?)
    };
    println!(
        "upstream: {}",
        if args.garage {
            "single-node Garage (another process)"
        } else {
            "s3s-fs (in this process)"
        }
    );

    // Seeding (not measured as part of any figure).
    let t = Instant::now();
    let plan = plan(&args)?;
    let (drives, logs, runs) = (plan.drives, plan.logs, plan.runs);
    let sample: Vec<String> = plan
        .objects
        .iter()
        .step_by(50)
        .take(2000)
        .map(|(key, _)| key.clone())
        .collect();
    let seeder = s3.store()?;
    let (count, bytes) = seed(&seeder, plan, args.concurrency, args.blob_bytes).await?;
    println!(
        "seeded {count} objects ({drives} drives, {logs} MCAP logs, {runs} runs), {:.0} MiB, in {:.1} s",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    let proxy = FaultProxy::start(&s3.endpoint()).await?;
    let mut upstream: UpstreamSettings = s3.settings();
    upstream.endpoint = Some(proxy.endpoint());

    // Peers first, through the same proxy as the sync.
    let client = milepost_store::build_store(&upstream, Arc::new(EgressMeter::default()))?;
    // s3s-fs walks and sorts the whole bucket for every ListObjectsV2 page, so a listing
    // costs pages x one walk. Time a few pages; `--list-floor` times a whole listing.
    let t = Instant::now();
    let mut continuation = None;
    let mut timed_pages = 0u32;
    for _ in 0..3 {
        let page = client
            .list_page(BUCKET, "drives/", continuation.take())
            .await?;
        timed_pages += 1;
        match page.next {
            Some(next) => continuation = Some(next),
            None => break,
        }
    }
    let per_page = t.elapsed() / timed_pages;
    println!(
        "peer: one LIST page (1000 keys) through the proxy: {:.2} s",
        per_page.as_secs_f64()
    );
    let full_listing = if args.list_floor {
        let t = Instant::now();
        let mut listed = 0;
        for prefix in ["drives/", "runs/"] {
            listed += milepost_store::list_all(&*client, BUCKET, prefix)
                .await?
                .len();
        }
        let took = t.elapsed();
        println!(
            "peer: list_all through the proxy: {listed} objects in {:.2} s = {:.0} objects/s",
            took.as_secs_f64(),
            listed as f64 / took.as_secs_f64()
        );
        // The same listing straight from the server, the floor of the direct syncs below.
        let direct_client = s3.store()?;
        let t = Instant::now();
        let cpu = process_cpu();
        let mut direct_listed = 0;
        for prefix in ["drives/", "runs/"] {
            direct_listed += milepost_store::list_all(&*direct_client, BUCKET, prefix)
                .await?
                .len();
        }
        let direct_took = t.elapsed();
        println!(
            "peer: list_all direct (sequential pages): {direct_listed} objects in {:.2} s = {:.0} objects/s, CPU {:.2} s",
            direct_took.as_secs_f64(),
            direct_listed as f64 / direct_took.as_secs_f64(),
            (process_cpu() - cpu).as_secs_f64()
        );
        Some((took, listed))
    } else {
        None
    };
    let t = Instant::now();
    for key in &sample {
        client.head(BUCKET, key).await?;
    }
    let head_each = t.elapsed() / sample.len().max(1) as u32;
    let t = Instant::now();
    for key in &sample {
        seeder.head(BUCKET, key).await?;
    }
    let head_direct = t.elapsed() / sample.len().max(1) as u32;
    println!(
        "peer: {} sequential HEADs: {:.3} ms each through the proxy, {:.3} ms each direct",
        sample.len(),
        head_each.as_secs_f64() * 1000.0,
        head_direct.as_secs_f64() * 1000.0
    );
    let aws = if args.aws {
        let endpoint = proxy.endpoint();
        let keys = s3.aws_keys();
        tokio::task::spawn_blocking(move || aws_listing(&endpoint, &keys)).await?
    } else {
        None
    };
    match aws {
        Some((took, lines, startup)) => println!(
            "peer: aws s3 ls --recursive through the proxy: {lines} objects in {took:.2} s (CLI start-up alone {startup:.2} s) = {:.0} objects/s",
            lines as f64 / took
        ),
        None => println!("peer: aws s3 ls skipped (--no-aws, or the AWS CLI is unavailable)"),
    }

    // The application, over the proxy.
    let state = AppState::open_with_upstream(app_config(&data_dir), upstream).await?;

    proxy.reset_counters();
    let egress_before = state.egress.snapshot();
    let t = Instant::now();
    let cpu = process_cpu();
    let first = state.sync_catalog().await?;
    let first_took = t.elapsed();
    let first_cpu = process_cpu() - cpu;
    let egress = state.egress.snapshot();
    let seen = proxy.seen();
    let requests = classify(&seen);
    println!();
    print_report("first sync", &first, first_took);
    println!("  CPU of this process: {:.2} s", first_cpu.as_secs_f64());

    let ledger = egress_ledger::Entity::find().all(&state.db).await?;
    let mut bytes_by_key: BTreeMap<&str, i64> = BTreeMap::new();
    for row in &ledger {
        *bytes_by_key.entry(row.key.as_str()).or_default() += row.bytes_from_upstream;
    }
    let mcap_gets: Vec<usize> = requests
        .gets
        .iter()
        .filter(|(k, _)| k.ends_with(".mcap"))
        .map(|(_, n)| *n)
        .collect();
    let mcap_bytes: Vec<i64> = bytes_by_key
        .iter()
        .filter(|(k, _)| k.ends_with(".mcap"))
        .map(|(_, b)| *b)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let gets_f: Vec<f64> = mcap_gets.iter().map(|n| *n as f64).collect();
    let bytes_f: Vec<f64> = mcap_bytes.iter().map(|n| *n as f64).collect();
    let objects_per_s = first.objects_seen as f64 / first_took.as_secs_f64();
    println!(
        "  requests: {} LIST, {} HEAD, {} GET, {} other; {} bytes from the proxy to the client",
        requests.list,
        requests.head,
        requests.get,
        requests.other,
        proxy.bytes_to_client()
    );
    println!(
        "  egress meter: {} GETs, {} body bytes; {} other calls",
        egress.get_requests - egress_before.get_requests,
        egress.bytes_from_upstream - egress_before.bytes_from_upstream,
        egress.other_requests - egress_before.other_requests
    );
    println!(
        "  MCAP logs read: {} (of {logs}); GETs per log mean {:.2}, max {}; bytes per log mean {:.0} ({:.0} KiB), max {} ({:.0} KiB)",
        mcap_gets.len(),
        mean(&gets_f),
        mcap_gets.iter().max().copied().unwrap_or(0),
        mean(&bytes_f),
        mean(&bytes_f) / 1024.0,
        mcap_bytes.iter().max().copied().unwrap_or(0),
        mcap_bytes.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    let other_read: Vec<(&str, usize)> = requests
        .gets
        .iter()
        .filter(|(k, _)| !k.ends_with(".mcap"))
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    println!(
        "  other files read: {} ({} GETs: sidecars whole, Parquet footers, metrics.parquet whole)",
        other_read.len(),
        other_read.iter().map(|(_, n)| n).sum::<usize>()
    );
    let list_floor = full_listing.map_or(per_page * requests.list as u32, |(took, _)| took);
    println!(
        "  => {objects_per_s:.0} objects/s; listing ({} pages, ~{:.0} s) ~{:.0}% of the sync, HEADs (~{} x {:.3} ms) ~{:.0}%",
        requests.list,
        list_floor.as_secs_f64(),
        list_floor.as_secs_f64() / first_took.as_secs_f64() * 100.0,
        requests.head,
        head_each.as_secs_f64() * 1000.0,
        requests.head as f64 * head_each.as_secs_f64() / first_took.as_secs_f64() * 100.0
    );

    // Second sync: nothing changed.
    proxy.reset_counters();
    let t = Instant::now();
    let cpu = process_cpu();
    let second = state.sync_catalog().await?;
    let second_took = t.elapsed();
    let second_cpu = process_cpu() - cpu;
    let again = classify(&proxy.seen());
    println!();
    print_report("second sync (unchanged bucket)", &second, second_took);
    println!("  CPU of this process: {:.2} s", second_cpu.as_secs_f64());
    println!(
        "  requests: {} LIST, {} HEAD, {} GET, {} other => {:.0} objects/s",
        again.list,
        again.head,
        again.get,
        again.other,
        second.objects_seen as f64 / second_took.as_secs_f64()
    );
    if again.get != 0 {
        println!("  !! the unchanged sync issued {} GETs", again.get);
    }

    let docs = state.catalog.search.doc_count();
    println!("\nsearch index: {docs} documents after the sync");
    drop(state);

    // The same first sync without the proxy in between (a fresh catalog): the proxy opens
    // one upstream connection per request, which the client's pool would otherwise reuse.
    let direct = if args.direct {
        let state =
            AppState::open_with_upstream(app_config(&root.join("milepost-direct")), s3.settings())
                .await?;
        let t = Instant::now();
        let cpu = process_cpu();
        let report = state.sync_catalog().await?;
        let took = t.elapsed();
        let cpu = process_cpu() - cpu;
        println!();
        print_report(
            "first sync without the proxy (fresh catalog)",
            &report,
            took,
        );
        println!(
            "  => {:.0} objects/s; CPU of this process {:.2} s",
            report.objects_seen as f64 / took.as_secs_f64(),
            cpu.as_secs_f64()
        );
        let t = Instant::now();
        let cpu_again = process_cpu();
        let again = state.sync_catalog().await?;
        let took_again = t.elapsed();
        let cpu_again = process_cpu() - cpu_again;
        print_report(
            "second sync without the proxy (unchanged bucket)",
            &again,
            took_again,
        );
        println!(
            "  => {:.0} objects/s; CPU of this process {:.2} s",
            again.objects_seen as f64 / took_again.as_secs_f64(),
            cpu_again.as_secs_f64()
        );
        Some((report, took, cpu, took_again, cpu_again))
    } else {
        None
    };

    // Summary table.
    println!("\n| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| objects in the bucket (MCAP logs) | {} ({logs}) |",
        first.objects_seen
    );
    println!(
        "| first sync wall time | {:.1} s |",
        first_took.as_secs_f64()
    );
    println!("| objects/s | {objects_per_s:.0} |");
    println!(
        "| first sync CPU (this process) | {:.1} s |",
        first_cpu.as_secs_f64()
    );
    if let Some((report, took, cpu, took_again, cpu_again)) = &direct {
        println!(
            "| first sync without the proxy: wall time, objects/s, CPU | {:.1} s, {:.0}, {:.1} s |",
            took.as_secs_f64(),
            report.objects_seen as f64 / took.as_secs_f64(),
            cpu.as_secs_f64()
        );
        println!(
            "| second sync without the proxy: wall time, CPU | {:.1} s, {:.1} s |",
            took_again.as_secs_f64(),
            cpu_again.as_secs_f64()
        );
    }
    println!(
        "| LIST / HEAD / GET requests | {} / {} / {} |",
        requests.list, requests.head, requests.get
    );
    println!(
        "| GETs per MCAP log (mean / max) | {:.2} / {} |",
        mean(&gets_f),
        mcap_gets.iter().max().copied().unwrap_or(0)
    );
    println!(
        "| bytes read per MCAP log (mean / max) | {:.0} KiB / {:.0} KiB |",
        mean(&bytes_f) / 1024.0,
        mcap_bytes.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "| files read / bytes read (report) | {} / {:.1} MiB |",
        first.files_read,
        first.bytes_read as f64 / (1 << 20) as f64
    );
    println!(
        "| second sync (no change): time, CPU, LIST / HEAD / GET | {:.1} s, {:.1} s, {} / {} / {} |",
        second_took.as_secs_f64(),
        second_cpu.as_secs_f64(),
        again.list,
        again.head,
        again.get
    );
    println!(
        "| peer: sequential HEAD, through the proxy / direct | {:.2} ms / {:.2} ms |",
        head_each.as_secs_f64() * 1000.0,
        head_direct.as_secs_f64() * 1000.0
    );
    println!(
        "| peer: one LIST page through the proxy (s3s-fs walks the whole bucket per page) | {:.2} s |",
        per_page.as_secs_f64()
    );
    if let Some((took, listed)) = full_listing {
        println!(
            "| peer: list_all through the proxy | {:.1} s ({:.0} objects/s) |",
            took.as_secs_f64(),
            listed as f64 / took.as_secs_f64()
        );
    }
    if let Some((took, lines, startup)) = aws {
        println!(
            "| peer: aws s3 ls --recursive | {took:.2} s for {lines} objects (start-up {startup:.2} s) |"
        );
    }

    println!("| peak RSS of this process | {:.0} MiB |", peak_rss_mib());

    proxy.shutdown().await;
    if let Server::Loopback(s3) = s3 {
        s3.s3.shutdown().await;
    }
    Ok(())
}
