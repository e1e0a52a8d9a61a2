//! `bench_register`: registration through the GraphQL API under concurrency (issue "Catalog at
//! fleet scale", acceptance 4: 16 clients registering 100,000 drives sustain ≥ 1,000 drives/s
//! with p99 ≤ 50 ms per call, every drive searchable within a second of its response).
//!
//! ```text
//! cargo build --release -p milepost-api -p milepost-tests --bin milepost --bin bench_register
//! target/release/bench_register [--drives 20000] [--clients 16] [--database URL] [--milepost PATH]
//! ```
//!
//! One `milepost serve` (the binary next to this one unless `--milepost`; SQLite under a fresh
//! work directory, or `--database postgres://...`, which must be an empty database) over the
//! loopback S3 server (s3s-fs) inside this process: `registerDrive` writes each drive's
//! sidecar to S3 through the office's write-back, as in production. `--clients` tasks, each
//! with its own HTTP connection, register `--drives` distinct drives between them, one call
//! at a time each, timing every call. A call returns once its drive is committed; the node's
//! change-feed follower puts it in the search index in batches. A watcher reads the index's
//! document count from `/metrics` (which applies nothing) every 20 ms, giving how long after
//! each response its drive was in the index; after the run the search `tag:bench-register`
//! must count every drive. Reported: drives per second over the whole run, p50 / p99 / max
//! call latency, the index's lag behind the responses, and the server's CPU seconds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use milepost_testkit::garage::{free_port, run};
use milepost_testkit::{LoopbackUpstream, LOOPBACK_ACCESS_KEY, LOOPBACK_SECRET_KEY};
use milepost_tests::cpu::cpu_seconds;
use serde_json::{json, Value};

const BUCKET: &str = "bench";
const TAG: &str = "bench-register";
const REGISTER: &str =
    r#"mutation($input: RegisterDriveInput!) { registerDrive(input: $input) { id } }"#;

struct Args {
    drives: usize,
    clients: usize,
    database: Option<String>,
    milepost: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        drives: 20_000,
        clients: 16,
        database: None,
        milepost: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || {
            given
                .next()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--drives" => args.drives = value()?.parse()?,
            "--clients" => args.clients = value()?.parse()?,
            "--database" => args.database = Some(value()?),
            "--milepost" => args.milepost = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}; see the doc comment for usage"),
        }
    }
    if args.clients == 0 || args.drives < args.clients {
        bail!("--drives must be at least --clients, and --clients at least 1");
    }
    Ok(args)
}

fn milepost_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no directory")?
            .join("milepost"),
    };
    if !path.exists() {
        bail!(
            "{} is missing: build it with cargo build --release -p milepost-api",
            path.display()
        );
    }
    Ok(path)
}

/// A drive the catalog has never seen, of one of a few vehicles and cities.
fn drive(index: usize) -> Value {
    let minute = index % 1_000;
    let city = ["guangzhou", "shanghai", "munich", "detroit"][index % 4];
    let weather = ["rain", "sun", "fog", "snow"][index % 4];
    json!({
        "id": format!("drv-reg-{index:07}"),
        "vehicle": format!("bv-{:03}", index % 40),
        "city": city,
        "startedAt": format!("2026-10-{:02}T{:02}:{:02}:00Z", 1 + index % 28, minute / 60 % 24, minute % 60),
        "endedAt": format!("2026-10-{:02}T{:02}:{:02}:30Z", 1 + index % 28, minute / 60 % 24, minute % 60),
        "weather": weather,
        "tags": [TAG, format!("batch-{}", index % 10)],
    })
}

struct Server {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(
    milepost: &Path,
    dir: &Path,
    upstream: &LoopbackUpstream,
    database: Option<&str>,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let config = dir.join("milepost.toml");
    let database = database.map_or(String::new(), |url| {
        format!("[database]\nurl = \"{url}\"\n")
    });
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{dir}"
office = "bench"

[server]
listen = "127.0.0.1:{port}"
s3_listen = "127.0.0.1:0"
shutdown_grace = "2s"

[upstream]
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true

[catalog]
bucket = "{BUCKET}"
sync_interval = "off"
{database}"#,
            dir = dir.display(),
            endpoint = upstream.endpoint(),
        ),
    )?;
    let token = run(Command::new(milepost).arg("--config").arg(&config).args([
        "token", "create", "--name", "pipeline", "--role", "pipeline",
    ]))?
    .trim()
    .to_owned();
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = Command::new(milepost)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("MILEPOST_LOG", "warn")
        .env("AWS_ACCESS_KEY_ID", LOOPBACK_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", LOOPBACK_SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting milepost serve")?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        token,
    };
    let http = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..400 {
        if http
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "milepost serve did not answer /healthz within 20 s; log:\n{}",
        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    )
}

/// How often the watcher reads the node's document count.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// `milepost_search_documents` from the node's `/metrics` (reading it applies nothing).
async fn indexed_documents(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("milepost_search_documents{")
                .and_then(|rest| rest.rsplit_once(' '))
                .and_then(|(_, value)| value.trim().parse().ok())
        })
        .context("/metrics has no milepost_search_documents")
}

/// Samples the node's document count every [`WATCH_EVERY`] until `stop`.
async fn watch_index(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<(Instant, u64)>> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        samples.push((Instant::now(), indexed_documents(&http, &url).await?));
        tokio::time::sleep(WATCH_EVERY).await;
    }
    samples.push((Instant::now(), indexed_documents(&http, &url).await?));
    Ok(samples)
}

/// For the k-th response (in time order), how long until the index held k documents: the
/// follower applies the feed in order and every answered drive was committed before its
/// response, so from then on the index holds it or a drive committed before it. p50, p99 and
/// max; `None` when the index never caught up with the last response.
fn index_lags(
    calls: &[(Duration, Instant)],
    samples: &[(Instant, u64)],
) -> Option<(Duration, Duration, Duration)> {
    let mut answered: Vec<Instant> = calls.iter().map(|(_, at)| *at).collect();
    answered.sort();
    let mut lags = Vec::with_capacity(answered.len());
    for (k, at) in answered.iter().enumerate() {
        let reached = samples
            .iter()
            .find(|(when, count)| when >= at && *count > k as u64)?;
        lags.push(reached.0 - *at);
    }
    lags.sort();
    Some((
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default(),
    ))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let work = tempfile::tempdir()?;
    let result = measure(&args, work.path()).await;
    if result.is_err() {
        // The work directory goes with this process: show what the server said first.
        let log = std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("the server's log, last lines:");
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }
    result
}

async fn measure(args: &Args, work: &Path) -> anyhow::Result<()> {
    let milepost = milepost_binary(args.milepost.as_deref())?;
    let upstream = LoopbackUpstream::start_in(&work.join("s3"), BUCKET).await?;
    let server = start_server(&milepost, work, &upstream, args.database.as_deref()).await?;
    let server = Arc::new(server);
    let cpu_before = cpu_seconds(server.child.id())?;
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_index(server.url.clone(), stop_watching.clone()));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let server = Arc::clone(&server);
        let (drives, clients_count) = (args.drives, args.clients);
        clients.spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build()?;
            let mut latencies = Vec::new();
            for index in (client..drives).step_by(clients_count) {
                let call = Instant::now();
                let body: Value = http
                    .post(format!("{}/graphql", server.url))
                    .bearer_auth(&server.token)
                    .json(&json!({ "query": REGISTER, "variables": { "input": drive(index) } }))
                    .send()
                    .await?
                    .json()
                    .await?;
                latencies.push((call.elapsed(), Instant::now()));
                if body.get("errors").is_some() {
                    bail!("registerDrive {index} failed: {body}");
                }
            }
            anyhow::Ok(latencies)
        });
    }
    let mut calls = Vec::with_capacity(args.drives);
    while let Some(done) = clients.join_next().await {
        calls.extend(done??);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id())? - cpu_before;
    // The index follows on its own (no search forces it): wait until it holds every drive.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while indexed_documents(&http, &server.url).await? < args.drives as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_watching.store(true, Ordering::Relaxed);
    let samples = watcher.await??;
    let lags = index_lags(&calls, &samples);
    let mut latencies: Vec<Duration> = calls.iter().map(|(latency, _)| *latency).collect();
    latencies.sort();
    // And a search at the node finds them all (it would apply the node's own writes first).
    let found: Value = http
        .post(format!("{}/graphql", server.url))
        .bearer_auth(&server.token)
        .json(&json!({ "query": format!("{{ search(query: \"tag:{TAG}\", first: 1) {{ totalCount }} }}") }))
        .send()
        .await?
        .json()
        .await?;
    let searchable = found["data"]["search"]["totalCount"].as_u64().unwrap_or(0);
    let rate = args.drives as f64 / wall;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    println!(
        "bench_register: {} drives by {} clients through GraphQL on {} ({} cores)",
        args.drives,
        args.clients,
        if args.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| measure | result | target | verdict |");
    println!("| --- | ---: | --- | --- |");
    println!(
        "| drives registered per second | {rate:.0} ({wall:.1} s wall, server CPU {cpu:.1} s) | ≥ 1,000/s | {} |",
        if rate >= 1000.0 { "met" } else { "**missed**" }
    );
    println!(
        "| call latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms | p99 ≤ 50 ms | {} |",
        ms(p50),
        ms(p99),
        ms(max),
        if ms(p99) <= 50.0 { "met" } else { "**missed**" }
    );
    match lags {
        Some((p50, p99, max)) => println!(
            "| in the index after the response (follower alone, sampled every {} ms): p50 / p99 / max | {:.0} / {:.0} / {:.0} ms | ≤ 1 s | {} |",
            WATCH_EVERY.as_millis(),
            ms(p50),
            ms(p99),
            ms(max),
            if max <= Duration::from_secs(1) { "met" } else { "**missed**" }
        ),
        None => println!(
            "| in the index after the response | not every drive reached the index within 30 s of the last response | ≤ 1 s | **missed** |"
        ),
    }
    println!(
        "| searchable at the node when the calls returned | {searchable} of {} | all | {} |",
        args.drives,
        if searchable == args.drives as u64 {
            "met"
        } else {
            "**missed**"
        }
    );
    Ok(())
}
