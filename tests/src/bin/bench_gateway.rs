//! `bench_gateway`: the office's S3 gateway and write-back against the same S3 server direct,
//! and the accuracy of the upload schedule, on Garage servers on loopback.
//!
//! ```text
//! cargo install garage --locked --version 2.5.0     # once, ~6 min
//! cargo build --release -p milepost-api -p milepost-tests --bin milepost --bin bench_gateway
//! target/release/bench_gateway [--rounds N] [--dir PATH] [--milepost PATH] [--sample-ms 200]
//!                              [--objects 64] [--object-mib 16] [--big-mib 1024]
//!                              [--sched-mib 1024] [--limit-mib 20]
//!                              [--skip-throughput] [--skip-schedule]
//! ```
//!
//! Every phase of every round (PUT and hot GET, cold GET, schedule) gets its own single-node
//! Garage ([`milepost_testkit::garage`]) and a fresh `milepost serve` (the release binary next to
//! this one unless `--milepost`) with its own data directory, upstream = that Garage, the
//! gateway on a free port, `transfer.upload_schedule = "* off"`; both are removed after the
//! phase, so the disk holds one phase's data at a time (at the default sizes about 4 GiB; a
//! phase refuses to start unless that and 2 GiB more are free). The gateway's S3 keys come
//! from `milepost token create --role engineer --s3`, policy changes go through GraphQL
//! `setTransferPolicy` with an admin token. Both sides are spoken to with the same client,
//! `milepost_store::S3Store` (aws-sdk-s3, path-style), so the ratio compares the servers, not
//! the clients. Bodies are random bytes made in memory before the clock starts (fresh per side
//! and round, so Garage cannot deduplicate them).
//!
//! 1. PUT: `--objects` × `--object-mib` MiB objects, 8 in flight, and one `--big-mib` MiB
//!    object (`put_stream`, multipart in 16 MiB parts), through the gateway and direct to
//!    Garage. Through the gateway two times are taken: acknowledged (every PUT answered, i.e.
//!    fsynced and journaled in the office) and in S3 (the write-back queue drained, polled
//!    every 50 ms through `transfers { summary }`, then checked by listing Garage).
//!    The direct PUTs run after the hot GETs, once the office is removed.
//! 2. GET hot: the objects the gateway wrote, read back through the gateway (office cache) and
//!    direct from Garage, 8 in flight; the big object in one GET.
//! 3. GET cold: objects of the same shapes PUT directly into a new Garage (not timed), read
//!    through a fresh gateway (read-through, first fetch) and direct.
//! 4. Schedule: policy `* 20MiB` (`--limit-mib`), `--sched-mib` objects of 1 MiB PUT through
//!    the gateway (8 in flight), and every `--sample-ms` the bytes in Garage under the prefix
//!    (listing, sizes summed) and the server's `milepost_upload_bytes_total` (/metrics: bytes
//!    the upload limiter let through). The rate over 30 s after a 3 s warm-up (from the first
//!    PUT) is compared with the limit. Then `* off`: the time from the `setTransferPolicy`
//!    response to the end of the first sampling window whose rate is over twice the old
//!    limit. Then, on a new prefix, 20 MiB/s for 6 s → 5 MiB/s (a quarter of the limit): the
//!    first window under half the old limit, and the rate from 1 s to 6 s after the change.
//!    The resolution is the sampling period (a window's rate is only known at its end).
//!
//! Figures go to stdout as Markdown tables (median of the rounds, and each round); progress
//! and per-round figures to stderr.
//!
//! (Over 600 lines: a benchmark program: setup of the peers, the measured runs and the report in one command.)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use futures::StreamExt as _;
use milepost_store::{
    list_all, put_stream, ByteRange, ObjectStore, S3Store, StaticCredentials, UploadOptions,
    UpstreamSettings,
};
use milepost_testkit::garage::{free_port, run, which, Garage};
use rand::RngCore as _;
use serde_json::{json, Value};

const BUCKET: &str = "bench";
const MIB: u64 = 1 << 20;
const IN_FLIGHT: usize = 8;

struct Args {
    rounds: usize,
    dir: Option<PathBuf>,
    milepost: Option<PathBuf>,
    sample: Duration,
    objects: usize,
    object_mib: u64,
    big_mib: u64,
    sched_mib: u64,
    limit_mib: u64,
    throughput: bool,
    schedule: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 3,
        dir: None,
        milepost: None,
        sample: Duration::from_millis(200),
        objects: 64,
        object_mib: 16,
        big_mib: 1024,
        sched_mib: 1024,
        limit_mib: 20,
        throughput: true,
        schedule: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--dir" => args.dir = Some(value("--dir")?.into()),
            "--milepost" => args.milepost = Some(value("--milepost")?.into()),
            "--sample-ms" => {
                args.sample = Duration::from_millis(value("--sample-ms")?.parse()?);
            }
            "--objects" => args.objects = value("--objects")?.parse()?,
            "--object-mib" => args.object_mib = value("--object-mib")?.parse()?,
            "--big-mib" => args.big_mib = value("--big-mib")?.parse()?,
            "--sched-mib" => args.sched_mib = value("--sched-mib")?.parse()?,
            "--limit-mib" => args.limit_mib = value("--limit-mib")?.parse()?,
            "--skip-throughput" => args.throughput = false,
            "--skip-schedule" => args.schedule = false,
            other => bail!("unknown argument {other:?} (see the doc comment of bench_gateway)"),
        }
    }
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.limit_mib >= 8, "--limit-mib must be at least 8");
    ensure!(
        args.sched_mib * MIB > (args.limit_mib * MIB) * (WARMUP + WINDOW).as_secs() * 11 / 10,
        "--sched-mib must exceed 1.1 × the limit × {} s, or the queue runs dry in the window",
        (WARMUP + WINDOW).as_secs()
    );
    Ok(args)
}

/// The schedule's measuring window starts this long after the first PUT...
const WARMUP: Duration = Duration::from_secs(3);
/// ...and lasts this long.
const WINDOW: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    ensure!(
        which("garage"),
        "garage is not on PATH (cargo install garage --locked --version 2.5.0)"
    );
    let milepost = match &args.milepost {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("milepost"),
    };
    ensure!(
        milepost.exists(),
        "{} does not exist: cargo build --release -p milepost-api --bin milepost",
        milepost.display()
    );
    let milepost = std::fs::canonicalize(&milepost)?;
    let _temp;
    let work = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::canonicalize(dir)?
        }
        None => {
            let parent = milepost
                .parent()
                .and_then(Path::parent)
                .map_or_else(std::env::temp_dir, Path::to_owned);
            _temp = tempfile::Builder::new()
                .prefix("milepost-bench-gateway")
                .tempdir_in(parent)?;
            _temp.path().to_owned()
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    eprintln!(
        "work directory {}, milepost {}",
        work.display(),
        milepost.display()
    );
    let shapes = Shapes {
        objects: args.objects,
        object_bytes: args.object_mib * MIB,
        big_bytes: args.big_mib * MIB,
    };
    let set_bytes = shapes.objects_total() + shapes.big_bytes;
    let mut report = Report::default();
    for round in 0..args.rounds {
        eprintln!("round {} of {}", round + 1, args.rounds);
        if args.throughput {
            // Peak: both sides' objects in Garage, or the gateway's in Garage and the office.
            let phase = Phase::start(&work, &format!("r{round}-put"), 2 * set_bytes)?;
            let server = runtime.block_on(phase.server(&milepost))?;
            runtime.block_on(gateway_puts(&server, &phase.direct, &shapes, &mut report))?;
            runtime.block_on(hot_gets(&server, &phase.direct, &shapes, &mut report))?;
            server.stop()?;
            std::fs::remove_dir_all(phase.dir.join("milepost"))?;
            runtime.block_on(direct_puts(&phase.direct, &shapes, &mut report))?;
            phase.finish()?;

            // Peak: the set in Garage and in the office cache.
            let phase = Phase::start(&work, &format!("r{round}-cold"), 2 * set_bytes)?;
            let seeded = Instant::now();
            runtime.block_on(async {
                let bodies = random_bodies(shapes.objects, shapes.object_bytes);
                put_objects(&phase.direct, "cold/objects", &bodies).await?;
                drop(bodies);
                put_big(
                    &phase.direct,
                    "cold/big.bin",
                    &random_body(shapes.big_bytes),
                )
                .await
            })?;
            eprintln!(
                "  seeded cold/ directly in Garage in {:.1} s",
                seeded.elapsed().as_secs_f64()
            );
            let server = runtime.block_on(phase.server(&milepost))?;
            runtime.block_on(cold_gets(&server, &phase.direct, &shapes, &mut report))?;
            server.stop()?;
            phase.finish()?;
        }
        if args.schedule {
            // Peak: every byte of the phase in the office (clean entries stay cached) and in
            // Garage.
            let phase = Phase::start(
                &work,
                &format!("r{round}-schedule"),
                2 * (args.sched_mib + slow_count(&args) as u64) * MIB,
            )?;
            let server = runtime.block_on(phase.server(&milepost))?;
            let figures = runtime.block_on(schedule_round(&server, &phase.direct, &args))?;
            eprintln!("  {figures:?}");
            report.schedule.push(figures);
            server.stop()?;
            phase.finish()?;
        }
    }
    report.print(&args, &shapes);
    Ok(())
}

/// Free bytes kept on the work directory's file system beyond what a phase needs: the
/// machine is shared, and a full disk breaks everyone's work.
const DISK_MARGIN: u64 = 2 << 30;

/// Bytes available to us on the file system of `dir` (`df`).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = run(Command::new("df").args(["-Pk"]).arg(dir))?;
    let kib: u64 = out
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .context("cannot read `df -Pk` output")?
        .parse()?;
    Ok(kib * 1024)
}

/// One phase's own Garage (and office, see [`Phase::server`]) in a directory removed at the
/// end, so that the disk holds one phase's data at a time: Garage frees the blocks of deleted
/// objects only after a delay.
struct Phase {
    dir: PathBuf,
    garage: Garage,
    direct: Arc<S3Store>,
}

impl Phase {
    /// Starts Garage in `work/name`, after checking that `need` bytes (and [`DISK_MARGIN`])
    /// are free.
    fn start(work: &Path, name: &str, need: u64) -> anyhow::Result<Phase> {
        let free = free_bytes(work)?;
        ensure!(
            free >= need + DISK_MARGIN,
            "phase {name} needs {} MiB of disk and {} MiB kept free, but {} has {} MiB free: \
             free some space or use smaller sets (see the doc comment)",
            need / MIB,
            DISK_MARGIN / MIB,
            work.display(),
            free / MIB
        );
        let dir = work.join(name);
        let garage = Garage::start(&dir.join("garage"), BUCKET)?;
        let direct = Arc::new(garage.store()?);
        Ok(Phase {
            dir,
            garage,
            direct,
        })
    }

    /// A fresh `milepost serve` over this phase's Garage.
    async fn server(&self, milepost: &Path) -> anyhow::Result<Server> {
        Server::start(milepost, &self.dir.join("milepost"), &self.garage).await
    }

    fn finish(self) -> anyhow::Result<()> {
        drop(self.garage);
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

/// The object sets of the throughput part.
struct Shapes {
    objects: usize,
    object_bytes: u64,
    big_bytes: u64,
}

impl Shapes {
    fn objects_label(&self) -> String {
        format!("{} × {} MiB", self.objects, self.object_bytes / MIB)
    }

    fn objects_total(&self) -> u64 {
        self.objects as u64 * self.object_bytes
    }

    fn big_label(&self) -> String {
        if self.big_bytes.is_multiple_of(1 << 30) {
            format!("1 × {} GiB", self.big_bytes >> 30)
        } else {
            format!("1 × {} MiB", self.big_bytes / MIB)
        }
    }
}

fn random_body(bytes: u64) -> Bytes {
    let mut body = vec![0u8; usize::try_from(bytes).expect("fits in memory")];
    rand::rng().fill_bytes(&mut body);
    Bytes::from(body)
}

fn random_bodies(count: usize, bytes: u64) -> Vec<Bytes> {
    (0..count).map(|_| random_body(bytes)).collect()
}

fn object_key(prefix: &str, i: usize) -> String {
    format!("{prefix}/{i:05}.bin")
}

/// PUTs `bodies` under `prefix/NNNNN.bin`, [`IN_FLIGHT`] at once; the seconds it took.
async fn put_objects(store: &S3Store, prefix: &str, bodies: &[Bytes]) -> anyhow::Result<f64> {
    let started = Instant::now();
    // Indexes, not references, go through the stream: a closure over `&Bytes` items is not
    // general enough for `tokio::spawn`.
    let mut puts = futures::stream::iter(0..bodies.len())
        .map(|i| async move {
            let key = object_key(prefix, i);
            let body = bodies[i].clone();
            let meta = store.put(BUCKET, &key, body.clone()).await?;
            ensure!(
                meta.size == body.len() as u64 || meta.size == 0,
                "{key}: put answered size {}",
                meta.size
            );
            anyhow::Ok(())
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = puts.next().await {
        result?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Uploads `body` to `key` with `put_stream` (16 MiB parts) from 1 MiB chunks; the seconds.
async fn put_big(store: &S3Store, key: &str, body: &Bytes) -> anyhow::Result<f64> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
        .step_by(MIB as usize)
        .map(|at| Ok(body.slice(at..(at + MIB as usize).min(body.len()))))
        .collect();
    let started = Instant::now();
    put_stream(
        store,
        BUCKET,
        key,
        futures::stream::iter(chunks),
        &UploadOptions::default(),
    )
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Reads `key` whole, counting its bytes; checks them against `expected`.
async fn get_one(store: &S3Store, key: &str, expected: u64) -> anyhow::Result<()> {
    let response = store.get(BUCKET, key, ByteRange::All, None).await?;
    let mut body = response.body;
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        bytes += chunk?.len() as u64;
    }
    ensure!(
        bytes == expected,
        "{key}: read {bytes} bytes, expected {expected}"
    );
    Ok(())
}

/// GETs `count` objects of `bytes` under `prefix`, [`IN_FLIGHT`] at once; the seconds.
async fn get_objects(
    store: &S3Store,
    prefix: &str,
    count: usize,
    bytes: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut gets = futures::stream::iter(0..count)
        .map(|i| async move { get_one(store, &object_key(prefix, i), bytes).await })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = gets.next().await {
        result?;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn get_big(store: &S3Store, key: &str, bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    get_one(store, key, bytes).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Objects and bytes in Garage under `prefix`.
async fn in_garage(direct: &S3Store, prefix: &str) -> anyhow::Result<(usize, u64)> {
    let objects = list_all(direct, BUCKET, prefix).await?;
    Ok((objects.len(), objects.iter().map(|o| o.size).sum()))
}

/// PUTs through the gateway: acknowledged, then in S3.
async fn gateway_puts(
    server: &Server,
    direct: &S3Store,
    shapes: &Shapes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let gateway = &server.gateway;
    let bodies = random_bodies(shapes.objects, shapes.object_bytes);
    let started = Instant::now();
    let acked = put_objects(gateway, "gw/objects", &bodies).await?;
    drop(bodies);
    server.wait_drained().await?;
    let in_s3 = started.elapsed().as_secs_f64();
    let found = in_garage(direct, "gw/objects/").await?;
    ensure!(
        found == (shapes.objects, shapes.objects_total()),
        "write-back drained but Garage holds {found:?} under gw/objects/"
    );
    report.add("put", "objects", "gateway, acknowledged", acked);
    report.add("put", "objects", "gateway, in S3", in_s3);

    let big = shapes.big_bytes;
    let body = random_body(big);
    let started = Instant::now();
    let acked = put_big(gateway, "gw/big.bin", &body).await?;
    drop(body);
    server.wait_drained().await?;
    let in_s3 = started.elapsed().as_secs_f64();
    ensure!(
        direct.head(BUCKET, "gw/big.bin").await?.size == big,
        "gw/big.bin: not in Garage with {big} bytes after the write-back drained"
    );
    report.add("put", "big", "gateway, acknowledged", acked);
    report.add("put", "big", "gateway, in S3", in_s3);
    Ok(())
}

/// GET hot: what [`gateway_puts`] wrote, from the office cache and from Garage.
async fn hot_gets(
    server: &Server,
    direct: &S3Store,
    shapes: &Shapes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let gateway = &server.gateway;
    let (count, size, big) = (shapes.objects, shapes.object_bytes, shapes.big_bytes);
    let secs = get_objects(gateway, "gw/objects", count, size).await?;
    report.add("hot", "objects", "gateway", secs);
    let secs = get_objects(direct, "gw/objects", count, size).await?;
    report.add("hot", "objects", "direct", secs);
    let secs = get_big(gateway, "gw/big.bin", big).await?;
    report.add("hot", "big", "gateway", secs);
    let secs = get_big(direct, "gw/big.bin", big).await?;
    report.add("hot", "big", "direct", secs);
    Ok(())
}

/// PUTs direct to Garage (after the office is gone, to keep the disk's peak down).
async fn direct_puts(direct: &S3Store, shapes: &Shapes, report: &mut Report) -> anyhow::Result<()> {
    let bodies = random_bodies(shapes.objects, shapes.object_bytes);
    let secs = put_objects(direct, "direct/objects", &bodies).await?;
    drop(bodies);
    report.add("put", "objects", "direct", secs);
    let body = random_body(shapes.big_bytes);
    let secs = put_big(direct, "direct/big.bin", &body).await?;
    report.add("put", "big", "direct", secs);
    Ok(())
}

/// GET cold: objects only Garage has, through a fresh office (read-through), then direct.
async fn cold_gets(
    server: &Server,
    direct: &S3Store,
    shapes: &Shapes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let gateway = &server.gateway;
    let (count, size, big) = (shapes.objects, shapes.object_bytes, shapes.big_bytes);
    let secs = get_objects(gateway, "cold/objects", count, size).await?;
    report.add("cold", "objects", "gateway", secs);
    let secs = get_objects(direct, "cold/objects", count, size).await?;
    report.add("cold", "objects", "direct", secs);
    let secs = get_big(gateway, "cold/big.bin", big).await?;
    report.add("cold", "big", "gateway", secs);
    let secs = get_big(direct, "cold/big.bin", big).await?;
    report.add("cold", "big", "direct", secs);
    // The office is fresh: everything it read from Garage is the cold reads.
    let upstream = server.metric("milepost_upstream_bytes_total").await?;
    let set = shapes.objects_total() + big;
    if upstream != Some(set) {
        let note = format!(
            "The office read {upstream:?} bytes from Garage for cold reads of {set} bytes."
        );
        eprintln!("  {note}");
        report.notes.push(note);
    }
    Ok(())
}

/// One observation of the upload progress.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the phase's origin, at the middle of the listing.
    at: f64,
    /// Bytes in Garage under the prefix.
    s3_bytes: u64,
    /// Seconds since the origin, at the middle of the /metrics request.
    metrics_at: f64,
    /// `milepost_upload_bytes_total`.
    limiter_bytes: Option<u64>,
}

/// Samples the progress of uploads under a prefix every period until finished.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sampler {
    fn start(
        server: &Server,
        direct: &Arc<S3Store>,
        prefix: String,
        origin: Instant,
        period: Duration,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let direct = Arc::clone(direct);
        let http = server.http.clone();
        let metrics_url = format!("{}/metrics", server.url);
        let task = tokio::spawn({
            let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
            async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let listing = async {
                        let before = origin.elapsed().as_secs_f64();
                        let (_, bytes) = in_garage(&direct, &prefix).await?;
                        anyhow::Ok(((before + origin.elapsed().as_secs_f64()) / 2.0, bytes))
                    };
                    let metrics = async {
                        let before = origin.elapsed().as_secs_f64();
                        let value =
                            fetch_metric(&http, &metrics_url, "milepost_upload_bytes_total")
                                .await?;
                        anyhow::Ok(((before + origin.elapsed().as_secs_f64()) / 2.0, value))
                    };
                    let ((at, s3_bytes), (metrics_at, limiter_bytes)) =
                        tokio::try_join!(listing, metrics)?;
                    samples
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Sample {
                            at,
                            s3_bytes,
                            metrics_at,
                            limiter_bytes,
                        });
                }
                Ok(())
            }
        });
        Sampler {
            stop,
            samples,
            task,
        }
    }

    fn latest(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last()
            .copied()
    }

    async fn finish(self) -> anyhow::Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        let samples = std::mem::take(
            &mut *self
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Ok(samples)
    }
}

/// The value of the series `name` (first one) in a Prometheus text page.
async fn fetch_metric(
    http: &reqwest::Client,
    url: &str,
    name: &str,
) -> anyhow::Result<Option<u64>> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        Some(value as u64)
    }))
}

/// Progress curves (time in seconds, bytes) of one phase: bytes in Garage, and the limiter's
/// counter when the server exposes it.
struct Curves {
    s3: Vec<(f64, u64)>,
    limiter: Option<Vec<(f64, u64)>>,
}

impl Curves {
    fn new(samples: &[Sample]) -> Curves {
        Curves {
            s3: samples.iter().map(|s| (s.at, s.s3_bytes)).collect(),
            limiter: samples
                .iter()
                .map(|s| s.limiter_bytes.map(|b| (s.metrics_at, b)))
                .collect(),
        }
    }
}

/// Bytes per second between the first point at or after `from` and the last at or before
/// `to`, with the seconds actually spanned.
fn rate_between(curve: &[(f64, u64)], from: f64, to: f64) -> Option<(f64, f64)> {
    let a = curve.iter().find(|(t, _)| *t >= from)?;
    let b = curve.iter().rev().find(|(t, _)| *t <= to)?;
    let span = b.0 - a.0;
    (span > 0.0).then(|| (b.1.saturating_sub(a.1) as f64 / span, span))
}

/// The sampling windows (end time, bytes per second) between consecutive points.
fn windows(curve: &[(f64, u64)]) -> Vec<(f64, f64, f64)> {
    curve
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            (
                w[0].0,
                w[1].0,
                w[1].1.saturating_sub(w[0].1) as f64 / (w[1].0 - w[0].0),
            )
        })
        .collect()
}

/// Milliseconds from `response` to the end of the first window ending after `sent` whose rate
/// passes `test`.
fn first_change(
    curve: &[(f64, u64)],
    sent: f64,
    response: f64,
    test: impl Fn(f64) -> bool,
) -> Option<f64> {
    windows(curve)
        .into_iter()
        .find(|(_, end, rate)| *end > sent && test(*rate))
        .map(|(_, end, _)| (end - response) * 1000.0)
}

/// The schedule's figures of one round (rates in bytes per second).
#[derive(Debug, Default, Clone)]
struct ScheduleFigures {
    /// Seconds until the schedule phase's PUTs were all acknowledged.
    acked: f64,
    held_s3: f64,
    held_span: f64,
    held_limiter: Option<f64>,
    /// Largest sampling window at the limit, in the measuring window.
    steady_max_window: f64,
    off_mutation_ms: f64,
    off_observed_ms: Option<f64>,
    off_observed_limiter_ms: Option<f64>,
    /// Rate from the response to the queue's end.
    off_rate_after: Option<f64>,
    down_mutation_ms: f64,
    down_observed_ms: Option<f64>,
    down_observed_limiter_ms: Option<f64>,
    /// Smallest sampling window at the old limit before the decrease.
    down_min_window_before: f64,
    /// Rate from 1 s after the response to the end of the phase (Garage, limiter).
    down_rate_after: Option<f64>,
    down_rate_after_limiter: Option<f64>,
}

/// Sleeps until `origin + at` seconds.
async fn sleep_until(origin: Instant, at: f64) {
    tokio::time::sleep_until((origin + Duration::from_secs_f64(at)).into()).await;
}

/// Seconds at the limit before the decrease, and at a quarter of it after.
const SLOW_BEFORE: f64 = 6.0;
const SLOW_AFTER: f64 = 6.0;

/// How many 1 MiB objects the decrease needs queued: both stretches, and 2 s at the limit.
fn slow_count(args: &Args) -> usize {
    let mib =
        args.limit_mib as f64 * (SLOW_BEFORE + 2.0) + (args.limit_mib / 4) as f64 * SLOW_AFTER;
    mib.ceil() as usize
}

/// One round of the schedule's accuracy: a limit held over [`WINDOW`], limit → off, and
/// limit → a quarter of it.
async fn schedule_round(
    server: &Server,
    direct: &Arc<S3Store>,
    args: &Args,
) -> anyhow::Result<ScheduleFigures> {
    let mut figures = ScheduleFigures::default();
    let limit = (args.limit_mib * MIB) as f64;
    let period = args.sample.as_secs_f64();

    // The limit held, then `* off`.
    server
        .set_policy(&format!("* {}MiB", args.limit_mib))
        .await?;
    let prefix = "sched".to_owned();
    let count = usize::try_from(args.sched_mib)?;
    let total = count as u64 * MIB;
    let bodies = random_bodies(count, MIB);
    let origin = Instant::now();
    let sampler = Sampler::start(server, direct, format!("{prefix}/"), origin, args.sample);
    let put = tokio::spawn({
        let (gateway, prefix) = (Arc::clone(&server.gateway), prefix.clone());
        async move { put_objects(&gateway, &prefix, &bodies).await }
    });
    let window_end = (WARMUP + WINDOW).as_secs_f64();
    sleep_until(origin, window_end + period).await;
    figures.acked = put.await??;
    let latest = sampler.latest().context("no sample taken")?;
    ensure!(
        latest.s3_bytes < total,
        "the queue ran dry before the end of the window: raise --sched-mib"
    );
    let sent = origin.elapsed().as_secs_f64();
    server.set_policy("* off").await?;
    let response = origin.elapsed().as_secs_f64();
    figures.off_mutation_ms = (response - sent) * 1000.0;
    server.wait_drained().await?;
    sleep_until(origin, origin.elapsed().as_secs_f64() + 2.0 * period).await;
    let samples = sampler.finish().await?;
    let curves = Curves::new(&samples);
    let warmup = WARMUP.as_secs_f64();
    (figures.held_s3, figures.held_span) =
        rate_between(&curves.s3, warmup, window_end).context("too few samples in the window")?;
    figures.steady_max_window = windows(&curves.s3)
        .into_iter()
        .filter(|(start, end, _)| *start >= warmup && *end <= sent)
        .map(|(_, _, rate)| rate)
        .fold(0.0, f64::max);
    figures.off_observed_ms = first_change(&curves.s3, sent, response, |r| r > 2.0 * limit);
    if let Some(limiter) = &curves.limiter {
        figures.held_limiter = rate_between(limiter, warmup, window_end).map(|(rate, _)| rate);
        figures.off_observed_limiter_ms =
            first_change(limiter, sent, response, |r| r > 2.0 * limit);
    }
    let at_response = curves.s3.iter().rev().find(|(t, _)| *t <= response);
    let full = curves.s3.iter().find(|(_, bytes)| *bytes == total);
    if let (Some(a), Some(b)) = (at_response, full) {
        figures.off_rate_after = Some((b.1 - a.1) as f64 / (b.0 - response).max(period));
    }
    eprintln!(
        "  schedule: held {:.2} MiB/s over {:.1} s (limiter {:?}), off seen after {:?} ms",
        figures.held_s3 / MIB as f64,
        figures.held_span,
        figures.held_limiter.map(|r| r / MIB as f64),
        figures.off_observed_ms
    );

    // The limit, then a quarter of it.
    let lower_mib = args.limit_mib / 4;
    server
        .set_policy(&format!("* {}MiB", args.limit_mib))
        .await?;
    let prefix = "slow".to_owned();
    let (before, after) = (SLOW_BEFORE, SLOW_AFTER);
    let count = slow_count(args);
    let bodies = random_bodies(count, MIB);
    let origin = Instant::now();
    let sampler = Sampler::start(server, direct, format!("{prefix}/"), origin, args.sample);
    let put = tokio::spawn({
        let (gateway, prefix) = (Arc::clone(&server.gateway), prefix.clone());
        async move { put_objects(&gateway, &prefix, &bodies).await }
    });
    sleep_until(origin, before).await;
    let sent = origin.elapsed().as_secs_f64();
    server.set_policy(&format!("* {lower_mib}MiB")).await?;
    let response = origin.elapsed().as_secs_f64();
    figures.down_mutation_ms = (response - sent) * 1000.0;
    sleep_until(origin, response + after).await;
    let end = origin.elapsed().as_secs_f64();
    put.await??;
    let latest = sampler.latest().context("no sample taken")?;
    ensure!(
        latest.s3_bytes < count as u64 * MIB,
        "the queue ran dry during the decrease"
    );
    server.set_policy("* off").await?;
    server.wait_drained().await?;
    let samples = sampler.finish().await?;
    let curves = Curves::new(&samples);
    figures.down_observed_ms = first_change(&curves.s3, sent, response, |r| r < 0.5 * limit);
    if let Some(limiter) = &curves.limiter {
        figures.down_observed_limiter_ms =
            first_change(limiter, sent, response, |r| r < 0.5 * limit);
        figures.down_rate_after_limiter =
            rate_between(limiter, response + 1.0, end).map(|(r, _)| r);
    }
    figures.down_min_window_before = windows(&curves.s3)
        .into_iter()
        .filter(|(start, end, _)| *start >= warmup && *end <= sent)
        .map(|(_, _, rate)| rate)
        .fold(f64::INFINITY, f64::min);
    figures.down_rate_after = rate_between(&curves.s3, response + 1.0, end).map(|(r, _)| r);
    Ok(figures)
}

/// A `milepost serve` process with its own data directory, catalog, cache and gateway.
struct Server {
    child: Child,
    url: String,
    /// An ADMIN bearer token.
    admin: String,
    http: reqwest::Client,
    /// An S3 client of the gateway with an ENGINEER token's keys.
    gateway: Arc<S3Store>,
}

impl Server {
    async fn start(milepost: &Path, dir: &Path, garage: &Garage) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let (port, s3_port) = (free_port()?, free_port()?);
        let config = dir.join("milepost.toml");
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{dir}"
office = "bench"

[server]
listen = "127.0.0.1:{port}"
s3_listen = "127.0.0.1:{s3_port}"

[upstream]
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true

[catalog]
bucket = "{BUCKET}"
sync_interval = "off"

[cache]
capacity = "64GiB"

[transfer]
upload_schedule = "* off"
priorities = ["*"]
"#,
                dir = dir.display(),
                endpoint = garage.endpoint,
            ),
        )?;
        let token = |args: &[&str]| {
            run(Command::new(milepost)
                .arg("--config")
                .arg(&config)
                .args(["token", "create"])
                .args(args))
        };
        let admin = token(&["--name", "admin", "--role", "admin"])?
            .trim()
            .to_owned();
        let s3 = token(&["--name", "bench", "--role", "engineer", "--s3"])?;
        let field = |name: &str| {
            s3.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::to_owned)
                .with_context(|| format!("no {name} line in `token create --s3`: {s3}"))
        };
        let credentials = StaticCredentials::new(
            field("AWS_ACCESS_KEY_ID=")?,
            field("AWS_SECRET_ACCESS_KEY=")?,
        );
        let mut command = Command::new(milepost);
        garage.aws_env(&mut command);
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("MILEPOST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let gateway = Arc::new(S3Store::new(&UpstreamSettings {
            endpoint: Some(format!("http://127.0.0.1:{s3_port}")),
            region: "us-east-1".into(),
            force_path_style: true,
            credentials: Some(credentials),
            ..UpstreamSettings::default()
        })?);
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            admin,
            http: reqwest::Client::new(),
            gateway,
        };
        for _ in 0..400 {
            let healthy = server
                .http
                .get(format!("{}/healthz", server.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy
                && tokio::net::TcpStream::connect(("127.0.0.1", s3_port))
                    .await
                    .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "milepost serve did not answer /healthz and listen on the gateway within 20 s (see {})",
            dir.join("server.log").display()
        )
    }

    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        milepost_testkit::graphql_data(&self.http, &self.url, &self.admin, query, variables).await
    }

    async fn set_policy(&self, schedule: &str) -> anyhow::Result<()> {
        let data = self
            .graphql(
                "mutation($input: TransferPolicyInput!) { setTransferPolicy(input: $input) { uploadSchedule } }",
                json!({ "input": { "uploadSchedule": schedule, "priorities": ["*"] } }),
            )
            .await?;
        ensure!(
            data["setTransferPolicy"]["uploadSchedule"].is_string(),
            "setTransferPolicy answered {data}"
        );
        Ok(())
    }

    /// Waits until the write-back queue is empty (nothing queued or uploading), polling every
    /// 50 ms; fails if a transfer failed.
    async fn wait_drained(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let data = self
                .graphql(
                    "{ transfers(state: QUEUED, first: 1) { summary { queuedCount uploadingCount failedCount } } }",
                    json!({}),
                )
                .await?;
            let summary = &data["transfers"]["summary"];
            ensure!(
                summary["failedCount"].as_i64() == Some(0),
                "write-back transfers failed: {summary}"
            );
            if summary["queuedCount"].as_i64() == Some(0)
                && summary["uploadingCount"].as_i64() == Some(0)
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the write-back did not drain within 10 min: {summary}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, name: &str) -> anyhow::Result<Option<u64>> {
        fetch_metric(&self.http, &format!("{}/metrics", self.url), name).await
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait()?;
        ensure!(status.success(), "milepost serve exited with {status}");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (operation, set, side) of a time.
type Measure = (&'static str, &'static str, &'static str);

#[derive(Default)]
struct Report {
    /// (operation, set, side) → seconds per round, in insertion order.
    times: Vec<(Measure, Vec<f64>)>,
    /// Oddities worth a line under the tables (cold reads fetching other than the set's bytes).
    notes: Vec<String>,
    schedule: Vec<ScheduleFigures>,
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.collect::<Option<_>>()?;
    (!values.is_empty()).then(|| median(&values))
}

fn list(values: impl Iterator<Item = Option<f64>>, digits: usize) -> String {
    values
        .map(|v| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}")))
        .collect::<Vec<_>>()
        .join(" / ")
}

impl Report {
    fn add(&mut self, op: &'static str, set: &'static str, side: &'static str, secs: f64) {
        eprintln!("  {op} {set} {side}: {secs:.2} s");
        let key = (op, set, side);
        match self.times.iter_mut().find(|(k, _)| *k == key) {
            Some((_, samples)) => samples.push(secs),
            None => self.times.push((key, vec![secs])),
        }
    }

    fn get(&self, op: &str, set: &str, side: &str) -> Option<&[f64]> {
        self.times
            .iter()
            .find(|(k, _)| *k == (op, set, side))
            .map(|(_, v)| v.as_slice())
    }

    fn print(&self, args: &Args, shapes: &Shapes) {
        let mut out = String::new();
        if !self.times.is_empty() {
            let _ = writeln!(
                out,
                "Throughput, gateway vs direct to Garage (median of {} rounds; rate = bytes ÷ median time):\n",
                args.rounds
            );
            let _ = writeln!(
                out,
                "| operation | set | gateway | direct | gateway ÷ direct |\n| --- | --- | ---: | ---: | ---: |"
            );
            let rows = [
                (
                    "put",
                    "gateway, acknowledged",
                    "PUT, acknowledged (fsynced in the office)",
                ),
                (
                    "put",
                    "gateway, in S3",
                    "PUT, until in S3 (write-back drained)",
                ),
                ("hot", "gateway", "GET hot (gateway: office cache)"),
                (
                    "cold",
                    "gateway",
                    "GET cold (gateway: read-through, first fetch)",
                ),
            ];
            for (op, side, label) in rows {
                for (set, set_label, bytes) in [
                    (
                        "objects",
                        format!("{}, {IN_FLIGHT} in flight", shapes.objects_label()),
                        shapes.objects_total(),
                    ),
                    (
                        "big",
                        format!("{}, one stream", shapes.big_label()),
                        shapes.big_bytes,
                    ),
                ] {
                    let (Some(ours), Some(theirs)) =
                        (self.get(op, set, side), self.get(op, set, "direct"))
                    else {
                        continue;
                    };
                    let mib = bytes as f64 / MIB as f64;
                    let (a, b) = (median(ours), median(theirs));
                    let _ = writeln!(
                        out,
                        "| {label} | {set_label} | {a:.2} s = {:.0} MiB/s | {b:.2} s = {:.0} MiB/s | **{:.2}×** |",
                        mib / a,
                        mib / b,
                        b / a
                    );
                }
            }
            let _ = writeln!(out, "\nEvery round (seconds):\n");
            let _ = writeln!(
                out,
                "| operation | set | side | rounds |\n| --- | --- | --- | --- |"
            );
            for ((op, set, side), samples) in &self.times {
                let _ = writeln!(
                    out,
                    "| {op} | {set} | {side} | {} |",
                    list(samples.iter().map(|s| Some(*s)), 2)
                );
            }
            for note in &self.notes {
                let _ = writeln!(out, "\n{note}");
            }
        }
        if !self.schedule.is_empty() {
            let s = &self.schedule;
            let limit = args.limit_mib as f64;
            let lower = (args.limit_mib / 4) as f64;
            let mib = |v: Option<f64>| v.map(|v| v / MIB as f64);
            let ms =
                |v: Option<f64>| v.map_or_else(|| "not seen".to_owned(), |v| format!("{v:.0} ms"));
            let within = |v: Option<f64>| match v {
                Some(v) if (v / limit - 1.0).abs() <= 0.10 => {
                    format!("met ({:+.1} %)", (v / limit - 1.0) * 100.0)
                }
                Some(v) => format!("**missed** ({:+.1} %)", (v / limit - 1.0) * 100.0),
                None => "—".to_owned(),
            };
            let fast = |v: Option<f64>| match v {
                Some(v) if v < 1000.0 => "met".to_owned(),
                Some(_) => "**missed**".to_owned(),
                None => "**not seen**".to_owned(),
            };
            let sample_ms = args.sample.as_millis();
            let _ = writeln!(
                out,
                "\nUpload schedule (1 MiB objects through the gateway, 8 in flight; sampled every {sample_ms} ms; median of {} rounds, then each round):\n",
                s.len()
            );
            let _ = writeln!(out, "| measure | median | rounds | target | verdict |\n| --- | ---: | --- | --- | --- |");
            let held = median_of(s.iter().map(|f| mib(Some(f.held_s3))));
            let _ = writeln!(
                out,
                "| `* {limit}MiB`: rate of bytes reaching Garage, {} s window after {} s | {:.2} MiB/s | {} | ±10 % | {} |",
                WINDOW.as_secs(),
                WARMUP.as_secs(),
                held.unwrap_or(f64::NAN),
                list(s.iter().map(|f| mib(Some(f.held_s3))), 2),
                within(held)
            );
            let held_limiter = median_of(s.iter().map(|f| mib(f.held_limiter)));
            let _ = writeln!(
                out,
                "| same window, the limiter's counter (`milepost_upload_bytes_total`) | {} | {} | ±10 % | {} |",
                held_limiter.map_or_else(|| "—".to_owned(), |v| format!("{v:.2} MiB/s")),
                list(s.iter().map(|f| mib(f.held_limiter)), 2),
                within(held_limiter)
            );
            let _ = writeln!(
                out,
                "| largest {sample_ms} ms window at the limit (Garage; noise of the measure) | {:.1} MiB/s | {} | | |",
                median(&s.iter().map(|f| f.steady_max_window / MIB as f64).collect::<Vec<_>>()),
                list(s.iter().map(|f| mib(Some(f.steady_max_window))), 1)
            );
            let _ = writeln!(
                out,
                "| PUTs of the phase acknowledged after | {:.2} s | {} | | |",
                median(&s.iter().map(|f| f.acked).collect::<Vec<_>>()),
                list(s.iter().map(|f| Some(f.acked)), 2)
            );
            let _ = writeln!(
                out,
                "| `setTransferPolicy` request to response | {:.0} ms | {} | | |",
                median(&s.iter().map(|f| f.off_mutation_ms).collect::<Vec<_>>()),
                list(s.iter().map(|f| Some(f.off_mutation_ms)), 0)
            );
            let off = median_of(s.iter().map(|f| f.off_observed_ms));
            let _ = writeln!(
                out,
                "| `* {limit}MiB` → `* off`: response to the end of the first window > {} MiB/s (Garage) | {} | {} | < 1 s | {} |",
                2.0 * limit,
                ms(off),
                list(s.iter().map(|f| f.off_observed_ms), 0),
                fast(off)
            );
            let off_limiter = median_of(s.iter().map(|f| f.off_observed_limiter_ms));
            let _ = writeln!(
                out,
                "| same, the limiter's counter | {} | {} | < 1 s | {} |",
                ms(off_limiter),
                list(s.iter().map(|f| f.off_observed_limiter_ms), 0),
                fast(off_limiter)
            );
            let _ = writeln!(
                out,
                "| rate after `* off`, to the end of the queue (Garage) | {} | {} | | |",
                median_of(s.iter().map(|f| mib(f.off_rate_after)))
                    .map_or_else(|| "—".to_owned(), |v| format!("{v:.0} MiB/s")),
                list(s.iter().map(|f| mib(f.off_rate_after)), 0)
            );
            let _ = writeln!(
                out,
                "| smallest {sample_ms} ms window at {limit} MiB/s before the decrease (Garage; noise) | {:.1} MiB/s | {} | | |",
                median(&s.iter().map(|f| f.down_min_window_before / MIB as f64).collect::<Vec<_>>()),
                list(s.iter().map(|f| mib(Some(f.down_min_window_before))), 1)
            );
            let down = median_of(s.iter().map(|f| f.down_observed_ms));
            let _ = writeln!(
                out,
                "| `* {limit}MiB` → `* {lower}MiB`: response to the end of the first window < {} MiB/s (Garage) | {} | {} | < 1 s | {} |",
                limit / 2.0,
                ms(down),
                list(s.iter().map(|f| f.down_observed_ms), 0),
                fast(down)
            );
            let down_limiter = median_of(s.iter().map(|f| f.down_observed_limiter_ms));
            let _ = writeln!(
                out,
                "| same, the limiter's counter | {} | {} | < 1 s | {} |",
                ms(down_limiter),
                list(s.iter().map(|f| f.down_observed_limiter_ms), 0),
                fast(down_limiter)
            );
            let after = median_of(s.iter().map(|f| mib(f.down_rate_after)));
            let _ = writeln!(
                out,
                "| rate at `* {lower}MiB`, from 1 s after the response (Garage) | {} | {} | {lower} MiB/s | |",
                after.map_or_else(|| "—".to_owned(), |v| format!("{v:.2} MiB/s")),
                list(s.iter().map(|f| mib(f.down_rate_after)), 2)
            );
            let _ = writeln!(
                out,
                "| same, the limiter's counter | {} | {} | {lower} MiB/s | |",
                median_of(s.iter().map(|f| mib(f.down_rate_after_limiter)))
                    .map_or_else(|| "—".to_owned(), |v| format!("{v:.2} MiB/s")),
                list(s.iter().map(|f| mib(f.down_rate_after_limiter)), 2)
            );
            let _ = writeln!(
                out,
                "| `setTransferPolicy` request to response (decrease) | {:.0} ms | {} | | |",
                median(&s.iter().map(|f| f.down_mutation_ms).collect::<Vec<_>>()),
                list(s.iter().map(|f| Some(f.down_mutation_ms)), 0)
            );
            let _ = writeln!(
                out,
                "\nA change is seen at the end of a sampling window: the times above are known to one period ({sample_ms} ms) and include up to one period of waiting for the window to close."
            );
        }
        print!("{out}");
    }
}
