//! `bench_tier`: the office cache on an office tier (`[cache] tier = "s3"`, a three-node Garage
//! cluster) against its peers, side by side in one run (issue "Office cluster", acceptance:
//! hot read of a 1 GiB object through a node from the office tier ≥ 0.8× a direct GET from
//! the same Garage cluster; cold materialization through the tier ≥ 0.8× the single-node
//! default; upstream bytes ÷ unique bytes with 32 readers over three nodes = 1.00).
//!
//! ```text
//! cargo install garage --locked --version 2.5.0      # once, ~6 min
//! apt-get install curl                               # the HTTP client (--aws-sigv4: 7.75 or later)
//! cargo build --release -p milepost-api -p milepost-tests --bin milepost --bin bench_tier
//! target/release/bench_tier --rounds 3
//! target/release/bench_tier [--rounds N] [--big-mib 1024] [--dir PATH] [--milepost PATH]
//!                           [--cluster-tool PATH] [--database-url URL] [--readers 32]
//!                           [--reader-objects 8] [--reader-mib 64]
//! ```
//!
//! `--database-url` names the PostgreSQL server of the cluster nodes (default
//! `postgres://postgres@127.0.0.1:5432/test`); each cluster gets a fresh database there,
//! dropped at the end.
//!
//! `--milepost` defaults to the `milepost` binary next to this one. `--cluster-tool` defaults to
//! `../shared/tools/garage-cluster` (from the current directory), then
//! `/work/shared/tools/garage-cluster`: the script that starts an N-node Garage cluster on
//! loopback (`garage-cluster start DIR [NODES] [BUCKET] [BASE_PORT]`, `garage-cluster stop
//! DIR`). The work directory is made fresh under `--dir` (default `$TMPDIR` or /tmp) and
//! removed at the end, after the cluster is stopped.
//!
//! 1. Starts a three-node cluster (replication 3, one zone per node, region `us-east-1`) in
//!    `WORK/garage` with bucket `tier` and its key, the office tier; and a single-node Garage
//!    (testkit's, no compression) in `WORK/upstream` with bucket `fleet`, the upstream (the
//!    cloud). Both are stopped on every way out.
//! 2. Writes `--big-mib` MiB of random bytes (seeded) to a file, uploads it as
//!    `fleet/big/object.bin` (multipart, milepost_store's `upload_file`) and keeps its
//!    SHA-256 and ETag.
//! 3. Hot read: one `milepost serve` (SQLite, upstream = the single Garage, its key in `AWS_*`,
//!    `[cache] tier = "s3"` over all three endpoints, bucket `tier`, prefix `office/`). The
//!    first `curl` of `/data/fleet/big/object.bin` is the cold fetch into the tier (timed for
//!    the notes, its SHA-256 checked); a reservation of a dataset holding the object then pins
//!    it, and the tier bucket is checked to hold it. Then, `--rounds` times, in turn: `curl
//!    -o /dev/null` of `/data/...` with a bearer token (served from the tier) and a direct
//!    `curl --aws-sigv4 aws:amz:us-east-1:s3` GET of the same bytes, the tier's own copy
//!    (`tier/office/objects/<xx>/<sha256>`), from node 1 (the node the office's tier client
//!    asks first). Both check the bytes they received.
//! 4. Cold materialization: `--rounds` times, each side once (the order turning each round),
//!    a fresh `milepost serve` (fresh data directory; the cluster side a node of an office
//!    cluster, `[cluster] enabled` on a fresh PostgreSQL database, with a fresh prefix
//!    `cold-r<round>/` in the tier) over the same upstream, with the default settings otherwise
//!    (`durability = "deferred"`): a dataset of `big/object.bin` (explicit objects, as
//!    bench_cacher makes them; the upstream HEAD is not timed), then timed from
//!    `reserveDataset` until the `reservationProgress` subscription (opened beforehand)
//!    reports READY. `bytesFromUpstream` must equal the object's size; the tier side must be
//!    READY without a `localPath` and the tier bucket must hold the object under its prefix,
//!    the disk side's view must hold the whole file. Each server is stopped (SIGTERM) after
//!    its side.
//! 5. Readers over a cluster: three `milepost serve` nodes in cluster mode (one fresh
//!    PostgreSQL database, the tier under prefix `readers/`), `--reader-objects` objects of
//!    `--reader-mib` MiB seeded in the upstream, then `--readers` concurrent readers (tasks of
//!    this program), reader *r* on node *r* mod 3 reading every object through `/data` in
//!    its own order (starting at object *r*), each body checked against the source's
//!    SHA-256. The figure is the upstream bytes the three nodes fetched
//!    (`milepost_upstream_bytes_total` of each, summed) ÷ the unique bytes: 1.00 when every
//!    object crossed from the cloud once for the whole office.
//!
//! `sync` runs before every timed side, so that none pays for another's dirty pages. Beside
//! each wall time, the CPU seconds (user + system, from `/proc`) of the reader (`curl`, hot
//! reads only, as a reaped child), of `milepost serve` and of the three Garage nodes together,
//! in the same window: on two shared cores every process competes for CPU, and CPU seconds
//! move far less from run to run than wall time does.
//!
//! What the setup means for the figures: the upstream is a Garage of its own, because on the
//! tier's cluster Garage would keep the tier's copy in the upstream object's blocks (it
//! deduplicates blocks by hash) and the tier's writes would cost nothing. Every process (the
//! four Garage nodes, the office, curl) shares this machine's cores and disk; the upstream
//! Garage's CPU is not in the Garage column, which is the tier cluster's.
//!
//! Figures go to stdout as Markdown tables (medians and each round); progress to stderr.
//!
//! (Over 600 lines: a benchmark program: setup of the cluster, the measured runs and the report in one command.)

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use milepost_store::{
    list_all, upload_file, ObjectStore as _, S3Store, StaticCredentials, UploadOptions,
    UpstreamSettings,
};
use milepost_testkit::garage::{free_port, run, which, Garage};
use milepost_testkit::TestDatabase;
use milepost_tests::cpu::{cpu_seconds, reaped_children_cpu};
use rand::{RngCore as _, SeedableRng as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// The upstream bucket (made on the cluster beside the tier's).
const FLEET: &str = "fleet";
/// The tier's bucket, made by the cluster tool with its key.
const TIER_BUCKET: &str = "tier";
/// The key the cluster tool makes for [`TIER_BUCKET`] (it names it `<bucket>-key`).
const BIG_KEY: &str = "big/object.bin";
/// The hot-read server's prefix in the tier bucket (the cold sides get `cold-r<round>/`).
const HOT_PREFIX: &str = "office/";
/// The cluster tool's `s3_region`.
const REGION: &str = "us-east-1";
const NODES: usize = 3;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The same bytes in every run.
const SEED: u64 = 0x7469_6572_6265_6e63;
/// The SHA-256 of an empty body: the payload hash of a GET, given to curl as
/// `x-amz-content-sha256` (Garage wants the header; curl signs it and uses its value).
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Free bytes kept on the work directory's file system beyond what the run needs: the machine
/// is shared, and a full disk breaks everyone's work.
const DISK_MARGIN: u64 = 2 << 30;
/// How long a reservation may take to become READY.
const READY_DEADLINE: Duration = Duration::from_secs(1800);
/// How long `milepost serve` may take to exit after SIGTERM (its `shutdown_grace` is 2 s).
const STOP_DEADLINE: Duration = Duration::from_secs(30);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Args {
    rounds: usize,
    big_mib: u64,
    dir: Option<PathBuf>,
    milepost: Option<PathBuf>,
    cluster_tool: Option<PathBuf>,
    database_url: String,
    readers: usize,
    reader_objects: usize,
    reader_mib: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 3,
        big_mib: 1024,
        dir: None,
        milepost: None,
        cluster_tool: None,
        database_url: "postgres://postgres@127.0.0.1:5432/test".to_owned(),
        readers: 32,
        reader_objects: 8,
        reader_mib: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--big-mib" => args.big_mib = value("--big-mib")?.parse()?,
            "--dir" => args.dir = Some(value("--dir")?.into()),
            "--milepost" => args.milepost = Some(value("--milepost")?.into()),
            "--cluster-tool" => args.cluster_tool = Some(value("--cluster-tool")?.into()),
            "--database-url" => args.database_url = value("--database-url")?,
            "--readers" => args.readers = value("--readers")?.parse()?,
            "--reader-objects" => args.reader_objects = value("--reader-objects")?.parse()?,
            "--reader-mib" => args.reader_mib = value("--reader-mib")?.parse()?,
            other => bail!("unknown argument {other:?} (see the doc comment of bench_tier)"),
        }
    }
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.big_mib > 0, "--big-mib must be at least 1");
    ensure!(
        args.readers > 0 && args.reader_objects > 0 && args.reader_mib > 0,
        "--readers, --reader-objects and --reader-mib must be at least 1"
    );
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    check_tools()?;
    let milepost = milepost_binary(args.milepost.as_deref())?;
    let tool = cluster_tool(args.cluster_tool.as_deref())?;
    let bytes = args.big_mib * MIB;
    // Declared before the runtime and the cluster, so that it is dropped after them: no
    // Garage node writes in it any more when it is removed.
    let work = Work::create(args.dir.as_deref())?;
    check_disk(
        &work.path,
        bytes,
        args.rounds,
        args.reader_mib * MIB * args.reader_objects as u64,
    )?;
    let started_at = chrono::Utc::now();
    eprintln!(
        "work directory {}, milepost {}, cluster tool {}",
        work.path.display(),
        milepost.display(),
        tool.display()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let cluster = Cluster::start(&tool, &work.path.join("garage"))?;
    eprintln!(
        "garage cluster of {NODES} nodes: {} (pids {:?})",
        cluster.endpoints.join(" "),
        cluster.pids
    );
    let store = cluster.store()?;
    // The upstream ("the cloud") is a Garage of its own: on the tier's cluster, Garage would
    // store the tier's copy in the upstream's blocks (it deduplicates blocks by hash) and
    // the tier's writes would cost nothing.
    let upstream = Garage::start(&work.path.join("upstream"), FLEET)?;
    eprintln!("upstream: single-node Garage at {}", upstream.endpoint);
    let seeded = Instant::now();
    let source = work.path.join("big.bin");
    let sha = write_random_file(&source, bytes)?;
    let upstream_store = upstream.store()?;
    runtime.block_on(upload(&upstream_store, &source, bytes))?;
    let etag = runtime.block_on(upstream_store.head(FLEET, BIG_KEY))?.etag;
    std::fs::remove_file(&source)?;
    eprintln!(
        "seeded {FLEET}/{BIG_KEY} ({} MiB) in {:.1} s",
        bytes / MIB,
        seeded.elapsed().as_secs_f64()
    );
    let bench = Bench {
        milepost,
        work: work.path.clone(),
        cluster,
        upstream,
        tier_key: tier_key(HOT_PREFIX, &etag),
        store,
        bytes,
        sha,
        rounds: args.rounds,
        // Room for the object several times over: nothing here should ever be evicted.
        capacity: format!("{}GiB", (4 * bytes).div_ceil(GIB).max(8)),
        database_url: args.database_url,
        readers: args.readers,
        reader_objects: args.reader_objects,
        reader_bytes: args.reader_mib * MIB,
    };
    let mut report = Report::default();
    bench.hot_reads(&runtime, &mut report)?;
    bench.cold_materializations(&runtime, &mut report)?;
    bench.readers_over_the_cluster(&runtime, &mut report)?;
    let header = Header {
        started_at,
        size: size_label(bytes),
        bytes,
        rounds: args.rounds,
    };
    report.print(&header);
    Ok(())
}

/// Fails with what to install when a tool the run needs is missing.
fn check_tools() -> anyhow::Result<()> {
    let tools = [
        ("garage", "cargo install garage --locked --version 2.5.0"),
        ("curl", "apt-get install curl"),
        ("bash", "apt-get install bash"),
        ("sync", "apt-get install coreutils"),
        ("df", "apt-get install coreutils"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !which(tool))
        .map(|(tool, install)| format!("{tool} ({install})"))
        .collect();
    ensure!(missing.is_empty(), "not on PATH: {}", missing.join(", "));
    Ok(())
}

fn milepost_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let milepost = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?.with_file_name("milepost"),
    };
    ensure!(
        milepost.exists(),
        "{} does not exist: cargo build --release -p milepost-api --bin milepost",
        milepost.display()
    );
    Ok(std::fs::canonicalize(&milepost)?)
}

/// `--cluster-tool`, else `../shared/tools/garage-cluster` from the current directory, else
/// `/work/shared/tools/garage-cluster`.
fn cluster_tool(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates = match given {
        Some(path) => vec![path.to_owned()],
        None => vec![
            std::env::current_dir()?.join("../shared/tools/garage-cluster"),
            PathBuf::from("/work/shared/tools/garage-cluster"),
        ],
    };
    for candidate in &candidates {
        if candidate.is_file() {
            return Ok(std::fs::canonicalize(candidate)?);
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    bail!(
        "the Garage cluster tool (garage-cluster) is not at {}: give its path with --cluster-tool",
        tried.join(" nor at ")
    )
}

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

/// Refuses to start unless the run fits, counting as if Garage kept no block only once: the
/// upstream object on each node, the tier's copies on each node (the hot one and one per
/// round), the source file while it is uploaded and one data directory's file (the disk
/// side's cache, or the tier side's staging) at a time.
fn check_disk(dir: &Path, bytes: u64, rounds: usize, reader_bytes: u64) -> anyhow::Result<()> {
    let nodes = NODES as u64;
    // The readers' objects: in the upstream, and in the tier on every node (replication 3).
    let need = bytes * (nodes + nodes * (1 + rounds as u64) + 2) + reader_bytes * (1 + nodes);
    let free = free_bytes(dir)?;
    ensure!(
        free >= need + DISK_MARGIN,
        "the run needs {} MiB of disk and {} MiB kept free, but {} has {} MiB free: free some \
         space, use --dir elsewhere or a smaller --big-mib",
        need / MIB,
        DISK_MARGIN / MIB,
        dir.display(),
        free / MIB
    );
    Ok(())
}

/// The work directory: made fresh under `--dir` (or `$TMPDIR`), removed at the end.
struct Work {
    path: PathBuf,
    _temp: tempfile::TempDir,
}

impl Work {
    fn create(parent: Option<&Path>) -> anyhow::Result<Work> {
        let parent = match parent {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                dir.to_owned()
            }
            None => std::env::temp_dir(),
        };
        let temp = tempfile::Builder::new()
            .prefix("milepost-bench-tier")
            .tempdir_in(parent)?;
        let path = std::fs::canonicalize(temp.path())?;
        Ok(Work { path, _temp: temp })
    }
}

/// "1 × 1 GiB" or "1 × 300 MiB".
fn size_label(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("1 × {} GiB", bytes / GIB)
    } else {
        format!("1 × {} MiB", bytes / MIB)
    }
}

/// Bytes in MiB, for totals.
fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

/// `program` with an environment only the benchmark sets: none of the caller's `AWS_*` or
/// `MILEPOST_*` settings (a `MILEPOST_CACHE_TIER` would change what is measured), and no proxy
/// for loopback.
fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if ["AWS_", "MILEPOST_"]
            .iter()
            .any(|prefix| text.starts_with(prefix))
        {
            command.env_remove(&name);
        }
    }
    command
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    command
}

/// Writes `bytes` random bytes (seeded) to `path` in 1 MiB blocks; their SHA-256.
fn write_random_file(path: &Path, bytes: u64) -> anyhow::Result<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let len = left.min(MIB) as usize;
        rng.fill_bytes(&mut block[..len]);
        hasher.update(&block[..len]);
        file.write_all(&block[..len])?;
        left -= len as u64;
    }
    file.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

/// Uploads the source file as `fleet/big/object.bin` and checks the size the cluster reports.
async fn upload(store: &S3Store, source: &Path, bytes: u64) -> anyhow::Result<()> {
    upload_file(store, FLEET, BIG_KEY, source, &UploadOptions::default()).await?;
    let head = store.head(FLEET, BIG_KEY).await?;
    ensure!(
        head.size == bytes,
        "{FLEET}/{BIG_KEY} is {} bytes on the cluster, expected {bytes}",
        head.size
    );
    Ok(())
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the command name, which ends at the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("X");
    !matches!(state, "Z" | "X")
}

/// The Garage cluster the cluster tool started; stopped (and waited for) on drop.
struct Cluster {
    tool: PathBuf,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT` of each node's S3 API, node 1 first.
    endpoints: Vec<String>,
    /// The key allowed on both buckets.
    key_id: String,
    secret: String,
    /// The nodes' process ids (for CPU accounting).
    pids: Vec<u32>,
}

impl Cluster {
    /// Starts [`NODES`] nodes in `dir` with bucket [`TIER_BUCKET`] and its key.
    fn start(tool: &Path, dir: &Path) -> anyhow::Result<Cluster> {
        // Made before the start: a start that fails halfway still stops the nodes it started
        // (the tool writes DIR/pids as it goes).
        let mut cluster = Cluster {
            tool: tool.to_owned(),
            dir: dir.to_owned(),
            endpoints: Vec::new(),
            key_id: String::new(),
            secret: String::new(),
            pids: Vec::new(),
        };
        let printed = run(command("bash")
            .arg(tool)
            .arg("start")
            .arg(dir)
            .arg(NODES.to_string())
            .arg(TIER_BUCKET))
        .context("starting the Garage cluster")?;
        let field = |name: &str| {
            printed
                .lines()
                .find_map(|line| line.trim().strip_prefix(name))
                .map(|value| value.trim().trim_matches('"').to_owned())
                .with_context(|| format!("no {name} line in the cluster tool's output: {printed}"))
        };
        cluster.endpoints = field("GARAGE_ENDPOINTS=")?
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(str::to_owned)
            .collect();
        cluster.key_id = field("GARAGE_KEY=")?;
        cluster.secret = field("GARAGE_SECRET=")?;
        cluster.pids = field("GARAGE_PIDS=")?
            .split_whitespace()
            .map(|pid| {
                pid.parse::<u32>()
                    .with_context(|| format!("GARAGE_PIDS holds {pid:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        ensure!(
            cluster.endpoints.len() == NODES && cluster.pids.len() == NODES,
            "the cluster tool reported {} endpoints and {} pids, expected {NODES}: {printed}",
            cluster.endpoints.len(),
            cluster.pids.len()
        );
        ensure!(
            !cluster.key_id.is_empty() && !cluster.secret.is_empty(),
            "the cluster tool reported no key: {printed}"
        );
        Ok(cluster)
    }

    /// Node 1's S3 endpoint: the upstream's, the direct reads', and the first the office's
    /// tier client asks.
    fn node1(&self) -> &str {
        &self.endpoints[0]
    }

    /// An S3 client of node 1 with the key (path-style).
    fn store(&self) -> anyhow::Result<S3Store> {
        Ok(S3Store::new(&UpstreamSettings {
            endpoint: Some(self.node1().to_owned()),
            region: REGION.into(),
            force_path_style: true,
            credentials: Some(StaticCredentials::new(&self.key_id, &self.secret)),
            ..UpstreamSettings::default()
        })?)
    }

    /// User + system CPU seconds of the nodes so far, together.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for &pid in &self.pids {
            total += cpu_seconds(pid).with_context(|| format!("Garage node {pid} is gone"))?;
        }
        Ok(total)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(command("bash").arg(&self.tool).arg("stop").arg(&self.dir));
        // The nodes are not our children (the tool's shell started them), so they cannot be
        // waited for: watched until they are gone, so that the work directory is not removed
        // under a node still writing. The tool's pid file also covers a start that failed
        // before it printed the pids.
        let mut pids = self.pids.clone();
        if let Ok(listed) = std::fs::read_to_string(self.dir.join("pids")) {
            pids.extend(
                listed
                    .split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok()),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `milepost serve` process with its own data directory, catalog and cache; killed on drop.
struct Server {
    child: Child,
    url: String,
    /// An ADMIN bearer token.
    token: String,
    http: reqwest::Client,
    log: PathBuf,
}

/// A node of an office cluster: its database and its name.
struct NodeConfig {
    database_url: String,
    node_id: String,
}

impl Server {
    /// Starts `milepost serve` in `dir` over the cluster's `fleet` bucket; with
    /// `tier_prefix`, its cache on the office tier (the cluster's `tier` bucket, under that
    /// prefix), else on the default disk tier; with `node`, as a node of an office cluster
    /// (`tier_prefix` needed).
    async fn start(
        milepost: &Path,
        dir: &Path,
        cluster: &Cluster,
        upstream: &Garage,
        tier_prefix: Option<&str>,
        capacity: &str,
        node: Option<&NodeConfig>,
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let config = dir.join("milepost.toml");
        let tier = match tier_prefix {
            Some(prefix) => format!(
                r#"tier = "s3"
tier_endpoint = "{endpoints}"
tier_region = "{REGION}"
tier_bucket = "{TIER_BUCKET}"
tier_prefix = "{prefix}"
tier_force_path_style = true
tier_access_key_id = "{key_id}"
tier_secret_access_key = "{secret}"
"#,
                endpoints = cluster.endpoints.join(","),
                key_id = cluster.key_id,
                secret = cluster.secret,
            ),
            None => String::new(),
        };
        let (clustering, token_name) = match node {
            Some(node) => (
                format!(
                    "\n[database]\nurl = \"{}\"\n\n[cluster]\nenabled = true\nnode_id = \"{}\"\n",
                    node.database_url, node.node_id
                ),
                format!("bench-{}", node.node_id),
            ),
            None => (String::new(), "bench".to_owned()),
        };
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
region = "{REGION}"
force_path_style = true

[catalog]
bucket = "{FLEET}"
sync_interval = "off"

[cache]
capacity = "{capacity}"
{tier}{clustering}"#,
                dir = dir.display(),
                endpoint = upstream.endpoint,
            ),
        )?;
        let token = run(command(milepost).arg("--config").arg(&config).args([
            "token",
            "create",
            "--name",
            &token_name,
            "--role",
            "admin",
        ]))?
        .trim()
        .to_owned();
        let log = dir.join("server.log");
        let out = std::fs::File::create(&log)?;
        // The upstream's key through the standard AWS chain, as an office gives it.
        let child = command(milepost)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("MILEPOST_LOG", "warn")
            .env("AWS_ACCESS_KEY_ID", &upstream.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &upstream.secret)
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting milepost serve")?;
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
            http: reqwest::Client::builder().no_proxy().build()?,
            log,
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/healthz` answers (the tier is checked at startup, before it listens).
    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "milepost serve exited ({status}) before answering /healthz; log:\n{}",
                    self.log_text()
                );
            }
            let healthy = self
                .http
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "milepost serve did not answer /healthz within 20 s; log:\n{}",
            self.log_text()
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn data_url(&self, key: &str) -> String {
        format!("{}/data/{FLEET}/{key}", self.url)
    }

    /// The node's `milepost_upstream_bytes_total`: bytes it read from the upstream.
    async fn upstream_bytes(&self) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        text.lines()
            .find_map(|line| line.strip_prefix("milepost_upstream_bytes_total{office=\"bench\"} "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .with_context(|| {
                format!(
                    "no milepost_upstream_bytes_total in /metrics of {}",
                    self.url
                )
            })
    }

    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        milepost_testkit::graphql_data(&self.http, &self.url, &self.token, query, variables).await
    }

    /// Creates dataset `name` of the big object (explicit objects: the catalog has not synced
    /// the bucket, so the object is a HEAD upstream) and checks its size.
    async fn create_dataset(&self, name: &str, bytes: u64) -> anyhow::Result<()> {
        let data = self
            .graphql(
                "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name totalBytes } }",
                json!({ "input": { "name": name, "objects": [{ "bucket": FLEET, "key": BIG_KEY }] } }),
            )
            .await?;
        ensure!(
            data["createDataset"]["totalBytes"].as_u64() == Some(bytes),
            "dataset {name}: expected {bytes} bytes, created {data}"
        );
        Ok(())
    }

    /// Reserves dataset `name`; the reservation's id.
    async fn reserve(&self, name: &str) -> anyhow::Result<String> {
        let data = self
            .graphql(
                "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
                json!({ "input": { "dataset": name, "ttlSeconds": 86_400 } }),
            )
            .await?;
        Ok(data["reserveDataset"]["id"]
            .as_str()
            .context("reserveDataset returned no id")?
            .to_owned())
    }

    /// Reservation `id` as it is now: state, error, bytesFromUpstream, localPath.
    async fn reservation(&self, id: &str) -> anyhow::Result<Value> {
        let data = self
            .graphql(
                "query($id: ID!) { reservation(id: $id) { state error bytesFromUpstream localPath } }",
                json!({ "id": id }),
            )
            .await?;
        Ok(data["reservation"].clone())
    }

    /// Polls reservation `id` until READY (every 200 ms: only where nothing is timed); the
    /// reservation then.
    async fn wait_ready_polling(&self, id: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let reservation = self.reservation(id).await?;
            match reservation["state"].as_str() {
                Some("READY") => return Ok(reservation),
                Some("PENDING" | "MATERIALIZING") => {}
                _ => bail!("reservation {id}: {reservation}"),
            }
            ensure!(
                Instant::now() < deadline,
                "reservation {id} not READY within {} s: {reservation}",
                READY_DEADLINE.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates dataset `name` of the big object, reserves it and waits (polling) until READY;
    /// the reservation then. Only where nothing is timed.
    async fn reserve_ready(&self, name: &str, bytes: u64) -> anyhow::Result<Value> {
        self.create_dataset(name, bytes).await?;
        let id = self.reserve(name).await?;
        self.wait_ready_polling(&id).await
    }

    /// A graphql-transport-ws connection, initialised with the admin token.
    async fn progress_socket(&self) -> anyhow::Result<Socket> {
        let url = format!("{}/graphql/ws", self.url.replace("http://", "ws://"));
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        let init = json!({ "type": "connection_init",
            "payload": { "Authorization": format!("Bearer {}", self.token) } });
        socket.send(Message::Text(init.to_string().into())).await?;
        while let Some(message) = socket.next().await {
            if let Message::Text(text) = message? {
                let frame: Value = serde_json::from_str(&text)?;
                ensure!(
                    frame["type"] == "connection_ack",
                    "the server refused the subscription connection: {frame}"
                );
                return Ok(socket);
            }
        }
        bail!("the subscription connection closed before its acknowledgement")
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "milepost serve did not exit within {} s of SIGTERM; log:\n{}",
                STOP_DEADLINE.as_secs(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            status.success(),
            "milepost serve exited with {status}; log:\n{}",
            self.log_text()
        );
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Subscribes to `reservationProgress` of `id` on `socket` and waits for READY.
async fn wait_ready_on(socket: &mut Socket, id: &str) -> anyhow::Result<()> {
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: ID!) { reservationProgress(id: $id) { state error } }",
        "variables": { "id": id } } });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("next") => {
                let progress = &frame["payload"]["data"]["reservationProgress"];
                match progress["state"].as_str() {
                    Some("READY") => return Ok(()),
                    Some("FAILED") => bail!("reservation {id} failed: {}", progress["error"]),
                    _ => {}
                }
            }
            Some("error" | "complete") => bail!("the subscription ended: {frame}"),
            _ => {}
        }
    }
    bail!("the subscription closed before reservation {id} was READY")
}

/// `curl` into /dev/null, printing only the bytes it received (`-w %{size_download}`).
fn curl() -> Command {
    let mut curl = command("curl");
    curl.args(["-sS", "-f", "--noproxy", "*", "-o", "/dev/null"])
        .args(["-w", "%{size_download}"]);
    curl
}

/// Runs a [`curl`] of `url` and checks it received `bytes` bytes.
fn curl_read(curl: &mut Command, url: &str, bytes: u64) -> anyhow::Result<()> {
    let size = run(curl)?;
    ensure!(
        size.trim() == bytes.to_string(),
        "{url}: read {size} bytes, expected {bytes}"
    );
    Ok(())
}

/// `curl` of `url` with a bearer token, its body hashed here: the bytes received and their
/// SHA-256.
fn curl_sha256(url: &str, token: &str) -> anyhow::Result<(u64, String)> {
    let mut child = command("curl")
        .args(["-sS", "-f", "--noproxy", "*"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting curl")?;
    let mut body = child.stdout.take().context("curl has no stdout")?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; MIB as usize];
    let mut read = 0u64;
    loop {
        let n = body.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
        read += n as u64;
    }
    let status = child.wait()?;
    ensure!(status.success(), "curl of {url} exited with {status}");
    Ok((read, hex::encode(hasher.finalize())))
}

/// One side of a measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// `curl` of `/data` through `milepost serve`, served from the office tier.
    TierRead,
    /// `curl --aws-sigv4` of the object straight from Garage node 1.
    DirectRead,
    /// `reserveDataset` → READY on a node of an office cluster (`[cluster] enabled`,
    /// PostgreSQL, `[cache] tier = "s3"`).
    TierCold,
    /// `reserveDataset` → READY with the default disk tier (one node, the data directory).
    DiskCold,
}

impl Side {
    /// The name of its data directory (cold sides).
    fn name(self) -> &'static str {
        match self {
            Side::TierRead | Side::TierCold => "tier",
            Side::DirectRead => "direct",
            Side::DiskCold => "disk",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Side::TierRead => "curl of `/data` through milepost, from the office tier",
            Side::DirectRead => "curl --aws-sigv4, direct GET from Garage node 1",
            Side::TierCold => {
                "milepost, cluster node (PostgreSQL, `tier = \"s3\"` on the 3-node Garage)"
            }
            Side::DiskCold => "milepost, default disk tier (single node)",
        }
    }

    fn measure(self) -> &'static str {
        match self {
            Side::TierRead | Side::DirectRead => "hot read",
            Side::TierCold | Side::DiskCold => "cold materialization",
        }
    }
}

/// `sides` in the order of `round`: turned by one each round, so that none is always first.
fn turned(sides: &[Side], round: usize) -> Vec<Side> {
    (0..sides.len())
        .map(|turn| sides[(turn + round) % sides.len()])
        .collect()
}

/// One side's run in one round.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Wall seconds of the measured operation alone.
    secs: f64,
    /// CPU seconds of the reader (`curl`, as a reaped child); `None` for the cold sides,
    /// whose only client is this program's GraphQL calls.
    client_cpu: Option<f64>,
    /// CPU seconds of `milepost serve` in the same window.
    office_cpu: f64,
    /// CPU seconds of the three Garage nodes together in the same window.
    garage_cpu: f64,
}

/// The tier key of the big object's content under `prefix`: `objects/<xx>/<sha256(bucket
/// NUL key NUL etag)>`, as the office names it (`cacher/src/cache/layout.rs`).
fn tier_key(prefix: &str, etag: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(FLEET.as_bytes());
    hasher.update([0]);
    hasher.update(BIG_KEY.as_bytes());
    hasher.update([0]);
    hasher.update(etag.as_bytes());
    let id = hex::encode(hasher.finalize());
    format!("{prefix}objects/{}/{id}", &id[..2])
}

/// Everything the measures need.
struct Bench {
    milepost: PathBuf,
    work: PathBuf,
    cluster: Cluster,
    /// The office's upstream, a single-node Garage of its own.
    upstream: Garage,
    /// Where the hot-read server keeps the big object in the tier bucket (what the direct
    /// read fetches: the same bytes, from the same cluster).
    tier_key: String,
    /// An S3 client of node 1 with the cluster's key: seeded the upstream, checks the tier.
    store: S3Store,
    /// The big object's size and SHA-256.
    bytes: u64,
    sha: String,
    rounds: usize,
    /// `[cache] capacity` of every server.
    capacity: String,
    /// The PostgreSQL server of the cluster nodes.
    database_url: String,
    /// Step 5: readers, objects, and each object's size.
    readers: usize,
    reader_objects: usize,
    reader_bytes: u64,
}

impl Bench {
    /// Runs `op` once, timed, after `sync`: its wall time, the CPU of the children it reaped
    /// (the curl), of `server` and of the Garage nodes in the same window.
    fn measure(
        &self,
        server: &Server,
        op: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Sample> {
        run(&mut Command::new("sync"))?;
        let (client, office, garage) = (
            reaped_children_cpu()?,
            cpu_seconds(server.pid())?,
            self.cluster.cpu_seconds()?,
        );
        let started = Instant::now();
        op()?;
        let secs = started.elapsed().as_secs_f64();
        Ok(Sample {
            secs,
            client_cpu: Some(reaped_children_cpu()? - client),
            office_cpu: cpu_seconds(server.pid())? - office,
            garage_cpu: self.cluster.cpu_seconds()? - garage,
        })
    }

    /// Checks that the tier bucket holds an object of the big object's size under `prefix`.
    async fn check_tier(&self, prefix: &str) -> anyhow::Result<()> {
        let listed = list_all(&self.store, TIER_BUCKET, prefix).await?;
        ensure!(
            listed.iter().any(|object| object.size == self.bytes),
            "the tier bucket holds no object of {} bytes under {prefix:?}: {:?}",
            self.bytes,
            listed
                .iter()
                .map(|object| (&object.key, object.size))
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Step 3: the big object read from the office tier through `/data`, and straight from Garage.
    fn hot_reads(
        &self,
        runtime: &tokio::runtime::Runtime,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        eprintln!("hot read: one milepost serve on the office tier (prefix {HOT_PREFIX})");
        let server = runtime.block_on(Server::start(
            &self.milepost,
            &self.work.join("tiered"),
            &self.cluster,
            &self.upstream,
            Some(HOT_PREFIX),
            &self.capacity,
            None,
        ))?;
        let url = server.data_url(BIG_KEY);
        // The first read is cold: the office fetches the object from the upstream while it
        // streams it, and installs it in the tier.
        run(&mut Command::new("sync"))?;
        let started = Instant::now();
        let (read, sha) = curl_sha256(&url, &server.token)?;
        let warm = started.elapsed().as_secs_f64();
        ensure!(
            read == self.bytes,
            "{url}: read {read} bytes, expected {}",
            self.bytes
        );
        ensure!(
            sha == self.sha,
            "{url}: SHA-256 {sha}, the source's is {}",
            self.sha
        );
        report.notes.push(format!(
            "First `/data` read of the object on the tiered node (cold: read through from the \
             upstream and installed in the tier; not a target): {warm:.2} s ({:.0} MiB/s), \
             SHA-256 equal to the source's.",
            rate(self.bytes, warm)
        ));
        // A reservation pins the object, so that every timed read is served from the tier.
        let pinned = runtime.block_on(server.reserve_ready("hot", self.bytes))?;
        ensure!(
            pinned["localPath"].is_null(),
            "a reservation on the office tier has a view: {pinned}"
        );
        runtime.block_on(self.check_tier(HOT_PREFIX))?;
        report.notes.push(format!(
            "The reservation that pinned it afterwards was READY with bytesFromUpstream = {} \
             (0: the first read had already cached it in the tier).",
            pinned["bytesFromUpstream"]
        ));
        let direct = format!("{}/{TIER_BUCKET}/{}", self.cluster.node1(), self.tier_key);
        for round in 0..self.rounds {
            eprintln!("hot read, round {} of {}", round + 1, self.rounds);
            for side in turned(&[Side::TierRead, Side::DirectRead], round) {
                let (mut read, from) = match side {
                    Side::TierRead => {
                        let mut read = curl();
                        read.args(["-H", &format!("authorization: Bearer {}", server.token)])
                            .arg(&url);
                        (read, url.as_str())
                    }
                    Side::DirectRead => {
                        let mut read = curl();
                        read.args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
                            .args([
                                "--user",
                                &format!("{}:{}", self.cluster.key_id, self.cluster.secret),
                            ])
                            .args(["-H", &format!("x-amz-content-sha256: {EMPTY_SHA256}")])
                            .arg(&direct);
                        (read, direct.as_str())
                    }
                    other => bail!("{other:?} is not a hot-read side"),
                };
                let sample = self.measure(&server, || curl_read(&mut read, from, self.bytes))?;
                report.add(side, round, sample, self.bytes);
            }
        }
        server.stop()
    }

    /// Step 4: `reserveDataset` → READY on a fresh server, through the tier and on the
    /// default disk tier.
    fn cold_materializations(
        &self,
        runtime: &tokio::runtime::Runtime,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        for round in 0..self.rounds {
            eprintln!(
                "cold materialization, round {} of {}",
                round + 1,
                self.rounds
            );
            for side in turned(&[Side::TierCold, Side::DiskCold], round) {
                let dir = self
                    .work
                    .join("cold")
                    .join(format!("r{round}-{}", side.name()));
                let prefix = format!("cold-r{round}/");
                let tier_prefix = (side == Side::TierCold).then_some(prefix.as_str());
                // The cluster side: a node of an office cluster on a database of its own
                // (dropped with the guard, after the server stopped).
                let database = match side {
                    Side::TierCold => Some(
                        runtime
                            .block_on(TestDatabase::on_postgres(&self.database_url))
                            .context("creating the cluster's database (--database-url)")?,
                    ),
                    _ => None,
                };
                let node = database.as_ref().map(|database| NodeConfig {
                    database_url: database.url().to_owned(),
                    node_id: format!("cold-r{round}"),
                });
                let server = runtime.block_on(Server::start(
                    &self.milepost,
                    &dir,
                    &self.cluster,
                    &self.upstream,
                    tier_prefix,
                    &self.capacity,
                    node.as_ref(),
                ))?;
                let sample = runtime.block_on(self.cold_materialization(&server, tier_prefix))?;
                server.stop()?;
                // Its cache goes before the next side runs: the disk is shared by every side.
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                report.add(side, round, sample, self.bytes);
            }
        }
        Ok(())
    }

    /// Step 5: readers spread over three cluster nodes; the office's upstream bytes against
    /// the unique bytes they read.
    fn readers_over_the_cluster(
        &self,
        runtime: &tokio::runtime::Runtime,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        eprintln!(
            "readers: {} over {NODES} cluster nodes, {} objects of {}",
            self.readers,
            self.reader_objects,
            mib(self.reader_bytes)
        );
        let database = runtime
            .block_on(TestDatabase::on_postgres(&self.database_url))
            .context("creating the cluster's database (--database-url)")?;
        let upstream = self.upstream.store()?;
        let mut objects = Vec::with_capacity(self.reader_objects);
        let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 0x5245_4144);
        for i in 0..self.reader_objects {
            let mut data = vec![0u8; usize::try_from(self.reader_bytes)?];
            rng.fill_bytes(&mut data);
            let key = format!("readers/object-{i:03}.bin");
            let sha = hex::encode(Sha256::digest(&data));
            runtime.block_on(upstream.put(FLEET, &key, bytes::Bytes::from(data)))?;
            objects.push((key, sha));
        }
        let mut nodes = Vec::with_capacity(NODES);
        for n in 1..=NODES {
            let node = NodeConfig {
                database_url: database.url().to_owned(),
                node_id: format!("readers-{n}"),
            };
            nodes.push(runtime.block_on(Server::start(
                &self.milepost,
                &self.work.join("readers").join(format!("node-{n}")),
                &self.cluster,
                &self.upstream,
                Some("readers/"),
                &self.capacity,
                Some(&node),
            ))?);
        }
        let upstream_total = |nodes: &[Server]| -> anyhow::Result<u64> {
            let mut total = 0;
            for node in nodes {
                total += runtime.block_on(node.upstream_bytes())?;
            }
            Ok(total)
        };
        let office_cpu = |nodes: &[Server]| -> anyhow::Result<f64> {
            let mut total = 0.0;
            for node in nodes {
                total += cpu_seconds(node.pid())?;
            }
            Ok(total)
        };
        run(&mut Command::new("sync"))?;
        let (upstream_before, office_before, garage_before) = (
            upstream_total(&nodes)?,
            office_cpu(&nodes)?,
            self.cluster.cpu_seconds()?,
        );
        let started = Instant::now();
        let read_bytes = runtime.block_on(async {
            let mut readers = tokio::task::JoinSet::new();
            for reader in 0..self.readers {
                let node = &nodes[reader % NODES];
                let (http, token) = (node.http.clone(), node.token.clone());
                let order: Vec<(String, String)> = (0..objects.len())
                    .map(|j| {
                        let (key, sha) = &objects[(reader + j) % objects.len()];
                        (node.data_url(key), sha.clone())
                    })
                    .collect();
                readers.spawn(async move {
                    let mut read = 0u64;
                    for (url, expected) in order {
                        let mut response = http
                            .get(&url)
                            .bearer_auth(&token)
                            .send()
                            .await?
                            .error_for_status()?;
                        let mut hasher = Sha256::new();
                        while let Some(chunk) = response.chunk().await? {
                            read += chunk.len() as u64;
                            hasher.update(&chunk);
                        }
                        let sha = hex::encode(hasher.finalize());
                        ensure!(
                            sha == expected,
                            "{url}: SHA-256 {sha}, the source's is {expected}"
                        );
                    }
                    Ok::<u64, anyhow::Error>(read)
                });
            }
            let mut total = 0;
            while let Some(joined) = readers.join_next().await {
                total += joined??;
            }
            Ok::<u64, anyhow::Error>(total)
        })?;
        let secs = started.elapsed().as_secs_f64();
        let figure = ReadersFigure {
            readers: self.readers,
            objects: objects.len(),
            unique_bytes: self.reader_bytes * objects.len() as u64,
            upstream_bytes: upstream_total(&nodes)? - upstream_before,
            read_bytes,
            secs,
            office_cpu: office_cpu(&nodes)? - office_before,
            garage_cpu: self.cluster.cpu_seconds()? - garage_before,
        };
        eprintln!(
            "  readers: {} read in {} ({:.0} MiB/s); upstream {} for {} unique; milepost CPU {:.2} s, Garage CPU {:.2} s",
            mib(figure.read_bytes),
            seconds(figure.secs),
            rate(figure.read_bytes, figure.secs),
            mib(figure.upstream_bytes),
            mib(figure.unique_bytes),
            figure.office_cpu,
            figure.garage_cpu
        );
        report.notes.push(format!(
            "Readers over the cluster: {} readers (reader r on node r mod 3, every object in its own \
             order), {} objects of {}: {} read and checked in {} ({:.0} MiB/s together); the three \
             nodes fetched {} from the upstream for {} of unique objects; CPU in that window: \
             milepost (three nodes) {:.2} s, Garage (three nodes) {:.2} s.",
            figure.readers,
            figure.objects,
            mib(self.reader_bytes),
            mib(figure.read_bytes),
            seconds(figure.secs),
            rate(figure.read_bytes, figure.secs),
            mib(figure.upstream_bytes),
            mib(figure.unique_bytes),
            figure.office_cpu,
            figure.garage_cpu
        ));
        report.readers = Some(figure);
        for node in nodes {
            node.stop()?;
        }
        drop(database);
        Ok(())
    }

    /// Creates a dataset of the big object on `server`, reserves it and measures
    /// `reserveDataset` → READY; then checks where the bytes went.
    async fn cold_materialization(
        &self,
        server: &Server,
        tier_prefix: Option<&str>,
    ) -> anyhow::Result<Sample> {
        // Not timed: the upstream HEAD of the uncatalogued object.
        server.create_dataset("cold", self.bytes).await?;
        // The client waits as `milepost reserve --wait` and the web catalog do: on the
        // subscription, opened before the clock starts (polling would load the server that
        // is being measured).
        let mut socket = server.progress_socket().await?;
        run(&mut Command::new("sync"))?;
        let (office, garage) = (cpu_seconds(server.pid())?, self.cluster.cpu_seconds()?);
        let started = Instant::now();
        let id = server.reserve("cold").await?;
        tokio::time::timeout(READY_DEADLINE, wait_ready_on(&mut socket, &id))
            .await
            .with_context(|| {
                format!(
                    "reservation {id} not READY within {} s",
                    READY_DEADLINE.as_secs()
                )
            })??;
        let sample = Sample {
            secs: started.elapsed().as_secs_f64(),
            client_cpu: None,
            office_cpu: cpu_seconds(server.pid())? - office,
            garage_cpu: self.cluster.cpu_seconds()? - garage,
        };
        let reservation = server.reservation(&id).await?;
        ensure!(
            reservation["bytesFromUpstream"].as_u64() == Some(self.bytes),
            "READY but bytesFromUpstream is {}, expected {}",
            reservation["bytesFromUpstream"],
            self.bytes
        );
        match tier_prefix {
            Some(prefix) => {
                ensure!(
                    reservation["localPath"].is_null(),
                    "a reservation on the office tier has a view: {reservation}"
                );
                self.check_tier(prefix).await?;
            }
            None => {
                let view = reservation["localPath"]
                    .as_str()
                    .context("READY on the disk tier without a localPath")?;
                // The view lays objects out as `localPath/<bucket>/<key>`.
                let file = Path::new(view).join(FLEET).join(BIG_KEY);
                let size = std::fs::metadata(&file)
                    .with_context(|| format!("stat {}", file.display()))?
                    .len();
                ensure!(
                    size == self.bytes,
                    "{}: {size} bytes, expected {}",
                    file.display(),
                    self.bytes
                );
            }
        }
        Ok(sample)
    }
}

/// What the report says about the run.
struct Header {
    started_at: chrono::DateTime<chrono::Utc>,
    size: String,
    bytes: u64,
    rounds: usize,
}

/// One acceptance point: ours against a peer on one measure, as speed (the peer's time ÷
/// ours: the same bytes, so for reads it is also our throughput ÷ the peer's).
struct Target {
    ours: Side,
    peer: Side,
    /// The least ratio the issue asks for.
    least: f64,
}

const TARGETS: [Target; 2] = [
    Target {
        ours: Side::TierRead,
        peer: Side::DirectRead,
        least: 0.8,
    },
    Target {
        ours: Side::TierCold,
        peer: Side::DiskCold,
        least: 0.8,
    },
];

/// Step 5's figure.
struct ReadersFigure {
    readers: usize,
    objects: usize,
    unique_bytes: u64,
    /// `milepost_upstream_bytes_total` of the three nodes, summed, over the readers' run.
    upstream_bytes: u64,
    /// Bytes the readers received (and checked).
    read_bytes: u64,
    secs: f64,
    office_cpu: f64,
    garage_cpu: f64,
}

#[derive(Default)]
struct Report {
    /// Each side's samples, one per round, in the order first measured.
    samples: Vec<(Side, Vec<Sample>)>,
    /// Step 5, once it ran.
    readers: Option<ReadersFigure>,
    /// What was seen besides the figures.
    notes: Vec<String>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

/// Seconds with three decimals under one second.
fn seconds(secs: f64) -> String {
    if secs < 1.0 {
        format!("{secs:.3} s")
    } else {
        format!("{secs:.2} s")
    }
}

fn cpu(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.2} s"))
}

/// The first line a tool prints for `--version`, or what failed.
fn version(tool: &str) -> String {
    run(Command::new(tool).arg("--version"))
        .ok()
        .and_then(|out| out.lines().next().map(str::to_owned))
        .unwrap_or_else(|| format!("{tool} (version unknown)"))
}

/// Cores (as `nproc` counts them), the CPU's model name and the memory.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB RAM", kib as f64 / (1 << 20) as f64)
        });
    format!("{cores} cores, {model}{memory}")
}

impl Report {
    fn add(&mut self, side: Side, round: usize, sample: Sample, bytes: u64) {
        eprintln!(
            "  round {}: {} — {}: {} ({:.0} MiB/s), curl CPU {}, milepost CPU {:.2} s, Garage CPU {:.2} s",
            round + 1,
            side.measure(),
            side.label(),
            seconds(sample.secs),
            rate(bytes, sample.secs),
            cpu(sample.client_cpu),
            sample.office_cpu,
            sample.garage_cpu
        );
        match self.samples.iter_mut().find(|(s, _)| *s == side) {
            Some((_, samples)) => samples.push(sample),
            None => self.samples.push((side, vec![sample])),
        }
    }

    fn get(&self, side: Side) -> &[Sample] {
        match self.samples.iter().find(|(s, _)| *s == side) {
            Some((_, samples)) => samples.as_slice(),
            None => &[],
        }
    }

    fn print(&self, header: &Header) {
        let mut out = String::new();
        let commit = run(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let _ = writeln!(
            out,
            "bench_tier: {} object of random bytes ({FLEET}/{BIG_KEY}), {} rounds; commit {commit}, \
             started {}; {}, {NODES} nodes on loopback (replication 3); {}",
            header.size,
            header.rounds,
            header.started_at.format("%Y-%m-%d %H:%M UTC"),
            version("garage"),
            version("curl")
        );
        let _ = writeln!(out, "machine: {}\n", machine());
        self.acceptance(&mut out, header);
        self.every_round(&mut out, header);
        self.medians(&mut out, header);
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nNotes:\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        print!("{out}");
    }

    fn value(bytes: u64, secs: f64) -> String {
        format!("{} ({:.0} MiB/s)", seconds(secs), rate(bytes, secs))
    }

    fn acceptance(&self, out: &mut String, header: &Header) {
        let _ = writeln!(
            out,
            "Office tier (issue \"Office cluster\"), ours ÷ peer as speed (the peer's time ÷ ours; medians of {} rounds):\n",
            header.rounds
        );
        let _ = writeln!(
            out,
            "| measure | milepost | peer | milepost ÷ peer | each round | target | verdict |\n| --- | ---: | ---: | ---: | --- | --- | --- |"
        );
        for target in &TARGETS {
            let (ours, theirs) = (self.get(target.ours), self.get(target.peer));
            if ours.is_empty() || theirs.is_empty() {
                continue;
            }
            let ours: Vec<f64> = ours.iter().map(|s| s.secs).collect();
            let theirs: Vec<f64> = theirs.iter().map(|s| s.secs).collect();
            let ratio = median(&theirs) / median(&ours);
            let each: Vec<String> = ours
                .iter()
                .zip(&theirs)
                .map(|(ours, theirs)| format!("{:.2}×", theirs / ours))
                .collect();
            let verdict = if ratio >= target.least {
                "met"
            } else {
                "**missed**"
            };
            let measure = match target.ours {
                Side::TierRead | Side::DirectRead => format!(
                    "hot read of {} through a node, from the office tier vs a direct GET from the same Garage cluster",
                    header.size
                ),
                Side::TierCold | Side::DiskCold => format!(
                    "cold materialization of {} (reserveDataset → READY), through the cluster vs the single-node default",
                    header.size
                ),
            };
            let _ = writeln!(
                out,
                "| {measure} | {}: {} | {}: {} | **{ratio:.2}×** | {} | ≥ {:.1}× | {verdict} |",
                target.ours.label(),
                Self::value(header.bytes, median(&ours)),
                target.peer.label(),
                Self::value(header.bytes, median(&theirs)),
                each.join(" / "),
                target.least
            );
        }
        match &self.readers {
            Some(figure) => {
                let ratio = figure.upstream_bytes as f64 / figure.unique_bytes as f64;
                let verdict = if figure.upstream_bytes == figure.unique_bytes {
                    "met"
                } else {
                    "**missed**"
                };
                let _ = writeln!(
                    out,
                    "| upstream bytes ÷ unique bytes, {} readers over three nodes | {} of upstream | {} unique ({} objects) | **{ratio:.2}** | one run | 1.00 | {verdict} |",
                    figure.readers,
                    mib(figure.upstream_bytes),
                    mib(figure.unique_bytes),
                    figure.objects,
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| upstream bytes ÷ unique bytes, readers over three nodes | — | — | — | — | 1.00 | not run |"
                );
            }
        }
    }

    fn every_round(&self, out: &mut String, header: &Header) {
        let _ = writeln!(
            out,
            "\nEvery round (wall time of the measured operation alone; CPU seconds, user + system, in the same window: curl is the reader, milepost is `milepost serve`, Garage is the three nodes together):\n"
        );
        let _ = writeln!(
            out,
            "| round | measure | side | wall | rate | curl CPU | milepost CPU | Garage CPU |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for round in 0..header.rounds {
            for (side, samples) in &self.samples {
                let Some(sample) = samples.get(round) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.0} MiB/s | {} | {:.2} s | {:.2} s |",
                    round + 1,
                    side.measure(),
                    side.label(),
                    seconds(sample.secs),
                    rate(header.bytes, sample.secs),
                    cpu(sample.client_cpu),
                    sample.office_cpu,
                    sample.garage_cpu
                );
            }
        }
    }

    fn medians(&self, out: &mut String, header: &Header) {
        let _ = writeln!(out, "\nMedians of the rounds:\n");
        let _ = writeln!(
            out,
            "| measure | side | wall | each round (s) | curl CPU | milepost CPU | Garage CPU |\n| --- | --- | ---: | --- | ---: | ---: | ---: |"
        );
        for (side, samples) in &self.samples {
            let column = |get: fn(&Sample) -> f64| samples.iter().map(get).collect::<Vec<_>>();
            let secs = column(|s| s.secs);
            let client: Vec<f64> = samples.iter().filter_map(|s| s.client_cpu).collect();
            let each: Vec<String> = secs.iter().map(|s| format!("{s:.3}")).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.2} s | {:.2} s |",
                side.measure(),
                side.label(),
                Self::value(header.bytes, median(&secs)),
                each.join(" / "),
                cpu((!client.is_empty()).then(|| median(&client))),
                median(&column(|s| s.office_cpu)),
                median(&column(|s| s.garage_cpu))
            );
        }
    }
}
