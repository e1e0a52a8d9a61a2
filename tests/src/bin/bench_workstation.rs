//! `bench_workstation`: a workstation reading an office's data through `milepost mount` and
//! `milepost pull`, side by side in one run with `rclone mount` and `aws s3 cp` of the same
//! data through the office's S3 gateway (issue acceptance: sequential read ≥ 1.0× rclone
//! mount and ≥ 0.7× `curl` of `/data`; `find` + `stat` ≥ 2× rclone mount; 4 KiB random reads
//! per second ≥ 1.0× rclone mount; `milepost pull` ≥ 1.0× `aws s3 cp --recursive`).
//!
//! ```text
//! apt-get install rclone curl fuse3                  # the peer mount, the HTTP client, FUSE
//! python3 -m pip install awscli                      # the peer copy
//! cargo build --release -p milepost-api -p milepost-tests --bin milepost --bin bench_workstation
//! target/release/bench_workstation --rounds 3
//! target/release/bench_workstation [--rounds N] [--big-mib 1024] [--files 10000] [--small 1000]
//!                                  [--dir PATH] [--milepost PATH] [--skip-rclone]
//!                                  [--only sequential|find|random|pull]
//! ```
//!
//! `--only` runs one measure (for a profiler attached to the office or the mount); the
//! report then holds that measure alone.
//!
//! Needs `/dev/fuse` and `fusermount3` (or root). The office's upstream is the loopback S3
//! server (s3s-fs, [`milepost_store::loopback::LoopbackS3`]) run inside this process over the
//! work directory (made under `--dir`, default `$TMPDIR` or /tmp, removed at the end); it
//! holds random bytes: one `--big-mib` object `big/object.bin` (uploaded multipart from a
//! file), `--files` objects of 1 KiB spread over 100 directories (`many/d042/f04200.bin`)
//! and `--small` objects of 1 MiB (`small/00042.bin`). One `milepost serve` (the binary next
//! to this one unless `--milepost`; SQLite, catalog bucket `bench`, gateway on a free port)
//! syncs its catalog, makes three datasets of them (`bench-big`, `bench-many`,
//! `bench-small`) and reserves each until READY before anything is timed: what is measured
//! is the workstation's path from a warm office, not the office's cold fetch. Admin token
//! for `/data`, the mount and the pull; an engineer's `--s3` keys for rclone and the AWS CLI.
//!
//! Every round (`--rounds`, default 3) runs each measure once per side, the order of the
//! sides turned by one each round. Every mount is fresh: a new mount point, a new cache
//! directory (removed after it), nothing read before except one `stat` of the file to read
//! (so a directory listing is not part of a read's time); `sync` runs before each timed side.
//!
//! 1. Sequential read of the big object: `curl -o /dev/null` of `/data/bench/big/object.bin`
//!    with a bearer token, and `dd bs=1M of=/dev/null` of the file through `milepost mount
//!    --dataset bench-big@V --cache-dir FRESH` and through `rclone mount` (flags below). The
//!    bytes read are checked against the size; in the first round, once the time is taken,
//!    the SHA-256 of the file read again through each mount against the source's.
//! 2. `find DIR -type f -printf '%s\n'` (a `stat` of every file) over the `--files` set on a
//!    fresh mount of each; the count and bytes found are checked. `milepost mount` reads the
//!    dataset's manifest when it mounts, so that `find` never asks the server, while rclone
//!    lists each directory on first access, inside the `find`: the report also gives each
//!    mount's startup (spawn to usable) and the ratio with startup included.
//! 3. 4 KiB random reads: 2,000 `pread`s (`FileExt::read_exact_at`) at 4 KiB-aligned offsets
//!    of the big object (seeded RNG, the same offsets for both), one thread, on a fresh mount
//!    of each; every block is checked against the source afterwards.
//! 4. `milepost pull bench-small@V DIR --jobs 8` vs `aws s3 cp --recursive s3://bench/small/
//!    DIR` from the gateway, each into a fresh directory, checked for count and bytes, then
//!    emptied (deleting trees between sides makes the next side's file creation slower on
//!    this machine's ext4, see bench_cacher) and removed after the last round.
//!
//! rclone runs as `rclone mount :s3:bench MNT --config /dev/null --read-only --vfs-cache-mode
//! full --cache-dir FRESH --use-server-modtime --s3-provider Other --s3-endpoint GATEWAY
//! --s3-region us-east-1 --s3-force-path-style --s3-access-key-id K --s3-secret-access-key
//! S`: `--use-server-modtime` because without it rclone sends a HEAD per file on `stat` to
//! read its mtime metadata, which is rclone's documented advice for mounting S3 and gives
//! the peer its best `find`. The AWS CLI runs with `AWS_CONFIG_FILE=/dev/null`,
//! `AWS_SHARED_CREDENTIALS_FILE=/dev/null`, the keys in the environment, region us-east-1
//! and its default concurrency (10). Every child runs without the caller's `AWS_*`,
//! `RCLONE_*` and `MILEPOST_*` variables (so no `AWS_CA_BUNDLE`, which rclone fails on) and
//! with `NO_PROXY` for loopback.
//!
//! Figures go to stdout as Markdown tables (medians and each round); progress to stderr.
//! Beside each time, the CPU seconds (user + system, from `/proc`) of the client side — the
//! reader (`curl`, `dd`, `find`, the `pread` loop in this thread, `milepost pull`, `aws`)
//! plus the mount's process — and of the office (`milepost serve`) in the same window.
//!
//! (Over 600 lines: a benchmark program: setup of the peers, the measured runs and the report in one command.)

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use futures::StreamExt as _;
use milepost_store::{upload_file, ObjectStore as _, UploadOptions};
use milepost_testkit::garage::{free_port, run, which};
use milepost_testkit::{LoopbackUpstream, LOOPBACK_ACCESS_KEY, LOOPBACK_SECRET_KEY};
use milepost_tests::cpu::{cpu_seconds, reaped_children_cpu, thread_cpu_seconds};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const BUCKET: &str = "bench";
const BIG_KEY: &str = "big/object.bin";
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Directories the `--files` set is spread over.
const DIRS: usize = 100;
/// The random-read measure: this many reads of [`READ_SIZE`] bytes.
const RANDOM_READS: usize = 2000;
const READ_SIZE: u64 = 4 * KIB;
/// The same offsets in every run and for every side.
const RANDOM_SEED: u64 = 0x6d69_6c65_706f_7374;
/// How long a mount may take to become usable, and to go away after SIGTERM.
const MOUNT_DEADLINE: Duration = Duration::from_secs(60);
/// Free bytes kept on the work directory's file system beyond what the run needs: the
/// machine is shared, and a full disk breaks everyone's work.
const DISK_MARGIN: u64 = 2 << 30;

struct Args {
    rounds: usize,
    big_mib: u64,
    files: usize,
    small: usize,
    dir: Option<PathBuf>,
    milepost: Option<PathBuf>,
    rclone: bool,
    /// Only this measure (`--only`); all when `None`.
    only: Option<Test>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 3,
        big_mib: 1024,
        files: 10_000,
        small: 1000,
        dir: None,
        milepost: None,
        rclone: true,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--big-mib" => args.big_mib = value("--big-mib")?.parse()?,
            "--files" => args.files = value("--files")?.parse()?,
            "--small" => args.small = value("--small")?.parse()?,
            "--dir" => args.dir = Some(value("--dir")?.into()),
            "--milepost" => args.milepost = Some(value("--milepost")?.into()),
            "--skip-rclone" => args.rclone = false,
            "--only" => {
                args.only = Some(match value("--only")?.as_str() {
                    "sequential" => Test::Sequential,
                    "find" => Test::Find,
                    "random" => Test::Random,
                    "pull" => Test::Pull,
                    other => bail!("--only {other:?}: one of sequential, find, random, pull"),
                })
            }
            other => bail!("unknown argument {other:?} (see the doc comment of bench_workstation)"),
        }
    }
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.big_mib > 0, "--big-mib must be at least 1");
    ensure!(
        args.files > 0 && args.small > 0,
        "--files and --small must be at least 1"
    );
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    check_tools(&args)?;
    let milepost = milepost_binary(&args)?;
    let shapes = Shapes {
        big_bytes: args.big_mib * MIB,
        files: args.files,
        small: args.small,
    };
    // Declared before the runtime, the upstream and the office, so that it is dropped after
    // them: nothing runs in it any more when it is removed.
    let work = Work::create(args.dir.as_deref())?;
    check_disk(&work.path, &shapes)?;
    eprintln!(
        "work directory {}, milepost {}",
        work.path.display(),
        milepost.display()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let upstream = runtime.block_on(LoopbackUpstream::start_in(
        &work.path.join("upstream"),
        BUCKET,
    ))?;
    let started = Instant::now();
    let big_sha = runtime.block_on(seed(&upstream, &work.path, &shapes))?;
    eprintln!(
        "seeded upstream in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let source = upstream.s3.root().join(BUCKET).join(BIG_KEY);
    ensure!(
        std::fs::metadata(&source).map(|m| m.len()).ok() == Some(shapes.big_bytes),
        "the loopback S3 server does not keep {BIG_KEY} as the file {}",
        source.display()
    );
    let office = runtime.block_on(Office::start(
        &milepost,
        &work.path.join("office"),
        &upstream,
    ))?;
    let datasets = runtime.block_on(office.prepare(&shapes))?;
    let bench = Bench {
        milepost,
        work: work.path.clone(),
        office,
        shapes,
        datasets,
        big_sha,
        source,
        offsets: random_offsets(args.big_mib * MIB),
        rclone: args.rclone,
    };
    let mut report = Report::default();
    for round in 0..args.rounds {
        eprintln!("round {} of {}", round + 1, args.rounds);
        let runs = |test: Test| args.only.is_none_or(|only| only == test);
        if runs(Test::Sequential) {
            bench.sequential(round, &mut report)?;
        }
        if runs(Test::Find) {
            bench.find(round, &mut report)?;
        }
        if runs(Test::Random) {
            bench.random(round, &mut report)?;
        }
        if runs(Test::Pull) {
            bench.pull(round, &mut report)?;
        }
    }
    if bench.work.join("pull").exists() {
        std::fs::remove_dir_all(bench.work.join("pull"))?;
    }
    bench.office.stop()?;
    report.print(&bench.shapes, args.rounds);
    Ok(())
}

/// Fails with what to install when a tool the run needs is missing.
fn check_tools(args: &Args) -> anyhow::Result<()> {
    let mut tools = vec![
        ("curl", "apt-get install curl"),
        ("aws", "python3 -m pip install awscli"),
        ("dd", "apt-get install coreutils"),
        ("sync", "apt-get install coreutils"),
        ("truncate", "apt-get install coreutils"),
        ("find", "apt-get install findutils"),
        ("umount", "apt-get install mount"),
    ];
    if args.rclone {
        tools.push(("rclone", "apt-get install rclone"));
    }
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !which(tool))
        .map(|(tool, install)| format!("{tool} ({install})"))
        .collect();
    ensure!(
        missing.is_empty(),
        "not on PATH: {} (or --skip-rclone to leave rclone out)",
        missing.join(", ")
    );
    ensure!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: both mounts need FUSE (load the fuse module; in a container, \
         give it --device /dev/fuse)"
    );
    ensure!(
        which("fusermount3") || is_root()?,
        "fusermount3 is not on PATH and this is not root: apt-get install fuse3, or run as root"
    );
    Ok(())
}

/// Whether this process runs as root (its real uid, from `/proc/self/status`).
fn is_root() -> anyhow::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .context("no Uid line in /proc/self/status")?;
    Ok(uid == "0")
}

fn milepost_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let milepost = match &args.milepost {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("milepost"),
    };
    ensure!(
        milepost.exists(),
        "{} does not exist: cargo build --release -p milepost-api --bin milepost",
        milepost.display()
    );
    Ok(std::fs::canonicalize(&milepost)?)
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
    Ok(kib * KIB)
}

/// Refuses to start unless the run fits: the sets upstream and in the office cache, the
/// big object twice more while it is uploaded (source file and multipart parts), one
/// mount's cache and one pull's output at a time.
fn check_disk(dir: &Path, shapes: &Shapes) -> anyhow::Result<()> {
    let need = 2 * shapes.total_bytes() + 3 * shapes.big_bytes + shapes.small_bytes();
    let free = free_bytes(dir)?;
    ensure!(
        free >= need + DISK_MARGIN,
        "the run needs {} MiB of disk and {} MiB kept free, but {} has {} MiB free: free some \
         space, use --dir elsewhere or smaller sets",
        need / MIB,
        DISK_MARGIN / MIB,
        dir.display(),
        free / MIB
    );
    Ok(())
}

/// The work directory: made fresh under `--dir` (or `$TMPDIR`) and removed at the end, after
/// anything still mounted under it is unmounted (otherwise the removal would walk into a
/// mount).
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
            .prefix("milepost-bench-workstation")
            .tempdir_in(parent)?;
        // Canonical, as /proc/self/mounts shows mount points.
        let path = std::fs::canonicalize(temp.path())?;
        Ok(Work { path, _temp: temp })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for point in mount_points() {
            if point.starts_with(&self.path) {
                unmount_lazily(&point);
            }
        }
    }
}

/// The object sets.
struct Shapes {
    big_bytes: u64,
    files: usize,
    small: usize,
}

impl Shapes {
    fn big_label(&self) -> String {
        if self.big_bytes.is_multiple_of(1 << 30) {
            format!("1 × {} GiB", self.big_bytes >> 30)
        } else {
            format!("1 × {} MiB", self.big_bytes / MIB)
        }
    }

    fn many_bytes(&self) -> u64 {
        self.files as u64 * KIB
    }

    fn small_bytes(&self) -> u64 {
        self.small as u64 * MIB
    }

    fn total_bytes(&self) -> u64 {
        self.big_bytes + self.many_bytes() + self.small_bytes()
    }

    /// `many/dNNN/fNNNNN.bin`: [`DIRS`] directories of equal share.
    fn many_key(&self, i: usize) -> String {
        let per_dir = self.files.div_ceil(DIRS);
        format!("many/d{:03}/f{i:05}.bin", i / per_dir)
    }

    fn small_key(i: usize) -> String {
        format!("small/{i:05}.bin")
    }
}

fn random_bytes(len: u64) -> Bytes {
    let mut body = vec![0u8; usize::try_from(len).expect("fits in memory")];
    rand::rng().fill_bytes(&mut body);
    Bytes::from(body)
}

/// Puts the three sets into the upstream bucket; the SHA-256 of the big object.
async fn seed(upstream: &LoopbackUpstream, work: &Path, shapes: &Shapes) -> anyhow::Result<String> {
    let store = &upstream.store;
    // From a file, as a client uploads one: multipart, never the whole object in memory.
    let path = work.join("big.bin");
    let sha = write_random_file(&path, shapes.big_bytes)?;
    upload_file(&**store, BUCKET, BIG_KEY, &path, &UploadOptions::default()).await?;
    std::fs::remove_file(&path)?;
    let small = futures::stream::iter(0..shapes.small)
        .map(|i| async move {
            store
                .put(BUCKET, &Shapes::small_key(i), random_bytes(MIB))
                .await
        })
        .buffer_unordered(16);
    let many = futures::stream::iter(0..shapes.files)
        .map(|i| async move {
            store
                .put(BUCKET, &shapes.many_key(i), random_bytes(KIB))
                .await
        })
        .buffer_unordered(32);
    let mut puts = small.chain(many);
    while let Some(result) = puts.next().await {
        result?;
    }
    Ok(sha)
}

/// Writes `bytes` random bytes to `path` in 1 MiB blocks; their SHA-256.
fn write_random_file(path: &Path, bytes: u64) -> anyhow::Result<String> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let len = left.min(MIB) as usize;
        rand::rng().fill_bytes(&mut block[..len]);
        hasher.update(&block[..len]);
        file.write_all(&block[..len])?;
        left -= len as u64;
    }
    file.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

/// The SHA-256 of the file at `path`, read in 1 MiB blocks.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&block[..n]);
    }
}

/// [`RANDOM_READS`] offsets aligned to [`READ_SIZE`] inside an object of `size` bytes.
fn random_offsets(size: u64) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(RANDOM_SEED);
    let blocks = size / READ_SIZE;
    (0..RANDOM_READS)
        .map(|_| rng.random_range(0..blocks) * READ_SIZE)
        .collect()
}

/// `program` with an environment only the benchmark sets: none of the caller's `AWS_*`
/// (`AWS_CA_BUNDLE` among them, which rclone fails on; nothing here speaks TLS),
/// `RCLONE_*` or `MILEPOST_*` settings, and no proxy for loopback.
fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if ["AWS_", "RCLONE_", "MILEPOST_"]
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

/// A dataset version of the office, reserved and READY.
struct Dataset {
    name: &'static str,
    version: i64,
}

impl Dataset {
    /// `name@version`: the argument of `--dataset` and `pull`, and the mount's directory.
    fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

struct Datasets {
    big: Dataset,
    many: Dataset,
    small: Dataset,
}

/// The office: a `milepost serve` process over the loopback upstream, killed on drop.
struct Office {
    child: Child,
    url: String,
    /// The S3 gateway, `http://127.0.0.1:PORT`.
    gateway: String,
    /// An ADMIN bearer token.
    admin: String,
    /// An ENGINEER token's S3 keys (access key id, secret).
    s3_keys: (String, String),
    http: reqwest::Client,
}

impl Office {
    async fn start(
        milepost: &Path,
        dir: &Path,
        upstream: &LoopbackUpstream,
    ) -> anyhow::Result<Office> {
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
shutdown_grace = "2s"

[upstream]
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true

[catalog]
bucket = "{BUCKET}"
sync_interval = "off"

[cache]
capacity = "64GiB"
"#,
                dir = dir.display(),
                endpoint = upstream.endpoint(),
            ),
        )?;
        let token = |args: &[&str]| {
            run(command(milepost)
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
        let s3_keys = (
            field("AWS_ACCESS_KEY_ID=")?,
            field("AWS_SECRET_ACCESS_KEY=")?,
        );
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = command(milepost)
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
            .spawn()?;
        // For a profiler: `perf record -g -p PID` during one `--only` measure.
        eprintln!("office: milepost serve, pid {}", child.id());
        let office = Office {
            child,
            url: format!("http://127.0.0.1:{port}"),
            gateway: format!("http://127.0.0.1:{s3_port}"),
            admin,
            s3_keys,
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        office.wait_healthy(s3_port, dir).await?;
        Ok(office)
    }

    /// Waits until `/healthz` answers and the gateway listens.
    async fn wait_healthy(&self, s3_port: u16, dir: &Path) -> anyhow::Result<()> {
        for _ in 0..400 {
            let healthy = self
                .http
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy
                && tokio::net::TcpStream::connect(("127.0.0.1", s3_port))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The log goes with the work directory: shown here.
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        bail!(
            "milepost serve did not answer /healthz and listen on the gateway within 20 s; \
             log:\n{log}"
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        milepost_testkit::graphql_data(&self.http, &self.url, &self.admin, query, variables).await
    }

    /// Syncs the catalog, then makes and reserves the three datasets, until READY.
    async fn prepare(&self, shapes: &Shapes) -> anyhow::Result<Datasets> {
        let started = Instant::now();
        let synced = self
            .graphql("mutation { syncCatalog { errors } }", json!({}))
            .await?;
        let errors = &synced["syncCatalog"]["errors"];
        if errors.as_array().is_some_and(|e| !e.is_empty()) {
            // Not fatal: datasets of objects the sync could not describe are still made.
            eprintln!("syncCatalog reported errors: {errors}");
        }
        eprintln!(
            "synced the catalog in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let many: Vec<String> = (0..shapes.files).map(|i| shapes.many_key(i)).collect();
        let small: Vec<String> = (0..shapes.small).map(Shapes::small_key).collect();
        Ok(Datasets {
            big: self
                .reserved("bench-big", &[BIG_KEY.to_owned()], shapes.big_bytes)
                .await?,
            many: self
                .reserved("bench-many", &many, shapes.many_bytes())
                .await?,
            small: self
                .reserved("bench-small", &small, shapes.small_bytes())
                .await?,
        })
    }

    /// Creates dataset `name` of `keys` and reserves it; returns once the office holds it.
    async fn reserved(
        &self,
        name: &'static str,
        keys: &[String],
        bytes: u64,
    ) -> anyhow::Result<Dataset> {
        let started = Instant::now();
        let objects: Vec<Value> = keys
            .iter()
            .map(|key| json!({ "bucket": BUCKET, "key": key }))
            .collect();
        let data = self
            .graphql(
                "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { version totalBytes } }",
                json!({ "input": { "name": name, "objects": objects } }),
            )
            .await?;
        let created = &data["createDataset"];
        ensure!(
            created["totalBytes"].as_u64() == Some(bytes),
            "dataset {name}: expected {bytes} bytes, created {created}"
        );
        let version = created["version"]
            .as_i64()
            .with_context(|| format!("createDataset {name} gave no version: {created}"))?;
        let data = self
            .graphql(
                "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
                json!({ "input": { "dataset": name, "ttlSeconds": 86_400 } }),
            )
            .await?;
        let id = data["reserveDataset"]["id"]
            .as_str()
            .context("reserveDataset returned no id")?
            .to_owned();
        self.wait_ready(&id).await?;
        eprintln!(
            "dataset {name}@{version}: {} objects reserved and READY in {:.1} s",
            keys.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(Dataset { name, version })
    }

    /// Polls reservation `id` until READY (every 200 ms: nothing is timed meanwhile).
    async fn wait_ready(&self, id: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let data = self
                .graphql(
                    "query($id: ID!) { reservation(id: $id) { state error } }",
                    json!({ "id": id }),
                )
                .await?;
            let reservation = &data["reservation"];
            match reservation["state"].as_str() {
                Some("READY") => return Ok(()),
                Some("PENDING" | "MATERIALIZING") => {}
                _ => bail!("reservation {id}: {reservation}"),
            }
            ensure!(
                Instant::now() < deadline,
                "reservation {id} not READY within 30 min: {reservation}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

impl Drop for Office {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mount points of FUSE file systems in this mount namespace.
fn mount_points() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            fstype
                .starts_with("fuse")
                .then(|| PathBuf::from(unescape_mount_path(point)))
        })
        .collect()
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Detaches the mount at `point` whatever its state (its process may be dead).
fn unmount_lazily(point: &Path) {
    let unmounted = Command::new("umount")
        .arg("-l")
        .arg(point)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !unmounted {
        // Not root: the setuid helper may unmount what this user mounted.
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(point)
            .stderr(Stdio::null())
            .status();
    }
}

/// One side of a measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// `curl` of `/data` (sequential read only).
    Curl,
    /// `milepost mount`, or `milepost pull` for the copy.
    Milepost,
    Rclone,
    /// `aws s3 cp --recursive` (copy only).
    Aws,
}

impl Side {
    /// The prefix of its directories.
    fn name(self) -> &'static str {
        match self {
            Side::Curl => "curl",
            Side::Milepost => "milepost",
            Side::Rclone => "rclone",
            Side::Aws => "aws",
        }
    }

    fn label(self, test: Test) -> &'static str {
        match (self, test) {
            (Side::Curl, _) => "curl /data",
            (Side::Milepost, Test::Pull) => "milepost pull --jobs 8",
            (Side::Milepost, _) => "milepost mount",
            (Side::Rclone, _) => "rclone mount (VFS cache full)",
            (Side::Aws, _) => "aws s3 cp --recursive",
        }
    }
}

/// `sides` in the order of `round`: turned by one each round, so that none is always first.
fn turned(sides: &[Side], round: usize) -> Vec<Side> {
    (0..sides.len())
        .map(|turn| sides[(turn + round) % sides.len()])
        .collect()
}

/// A FUSE mount by a child process (`milepost mount` or `rclone mount`) on a fresh mount
/// point with a fresh cache directory. On drop, its process is killed and the mount
/// detached, so that no error path leaves a mount behind.
struct Mount {
    child: Child,
    point: PathBuf,
    cache: PathBuf,
    log: PathBuf,
    /// [`Side::Milepost`] or [`Side::Rclone`].
    side: Side,
    /// Where the bucket's keys start.
    root: PathBuf,
    /// Seconds from spawning the process to the mount being usable.
    startup: f64,
}

impl Mount {
    /// Whether a FUSE file system is mounted on the mount point (`fuse.milepost`,
    /// `fuse.rclone`; the type is not checked: the point is this mount's alone).
    fn is_mounted(&self) -> bool {
        mount_points().contains(&self.point)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `milepost mount`, usable once it printed its `milepost mounted` line.
    fn milepost(mut command: Command, dir: &Path, root: &str) -> anyhow::Result<Mount> {
        let (point, cache, log) = mount_dirs(dir)?;
        let started = Instant::now();
        let mut child = command
            .arg(&point)
            .arg("--cache-dir")
            .arg(&cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting milepost mount")?;
        let banner = first_line(child.stdout.take().context("no stdout")?);
        let mut mount = Mount {
            child,
            root: point.join(root).join(BUCKET),
            point,
            cache,
            log,
            side: Side::Milepost,
            startup: 0.0,
        };
        let line = banner.recv_timeout(MOUNT_DEADLINE).unwrap_or_default();
        ensure!(
            line.starts_with("milepost mounted") && mount.is_mounted(),
            "milepost mount did not mount {} within {} s ({line:?}); log:\n{}",
            mount.point.display(),
            MOUNT_DEADLINE.as_secs(),
            mount.log_text()
        );
        mount.startup = started.elapsed().as_secs_f64();
        Ok(mount)
    }

    /// `rclone mount`, usable once `/proc/self/mounts` shows it (it prints nothing).
    fn rclone(mut command: Command, dir: &Path) -> anyhow::Result<Mount> {
        let (point, cache, log) = mount_dirs(dir)?;
        let started = Instant::now();
        let child = command
            .arg(&point)
            .arg("--cache-dir")
            .arg(&cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting rclone mount")?;
        let mut mount = Mount {
            child,
            root: point.clone(),
            point,
            cache,
            log,
            side: Side::Rclone,
            startup: 0.0,
        };
        while !mount.is_mounted() {
            if let Some(status) = mount.child.try_wait()? {
                bail!(
                    "rclone mount exited ({status}) before mounting; log:\n{}",
                    mount.log_text()
                );
            }
            ensure!(
                started.elapsed() < MOUNT_DEADLINE,
                "rclone mount did not mount {} within {} s; log:\n{}",
                mount.point.display(),
                MOUNT_DEADLINE.as_secs(),
                mount.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        mount.startup = started.elapsed().as_secs_f64();
        Ok(mount)
    }

    /// SIGTERM (both unmount on it), then removes the mount point and the cache.
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + MOUNT_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "{} mount did not exit within {} s of SIGTERM; log:\n{}",
                self.side.name(),
                MOUNT_DEADLINE.as_secs(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            !self.is_mounted(),
            "{} is still mounted after its process ended",
            self.point.display()
        );
        // Ours must end cleanly; rclone's exit status after a signal is its own business.
        ensure!(
            self.side != Side::Milepost || status.success(),
            "milepost mount exited with {status}; log:\n{}",
            self.log_text()
        );
        std::fs::remove_dir_all(&self.cache)?;
        std::fs::remove_dir(&self.point)?;
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.is_mounted() {
            unmount_lazily(&self.point);
        }
    }
}

/// A fresh mount point, cache directory and log file under `dir`.
fn mount_dirs(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let (point, cache) = (dir.join("mnt"), dir.join("cache"));
    for fresh in [&point, &cache] {
        ensure!(!fresh.exists(), "{} exists: not fresh", fresh.display());
        std::fs::create_dir_all(fresh)?;
    }
    Ok((point, cache, dir.join("mount.log")))
}

/// The first line `stdout` gives (empty if it ends first), on a channel; the rest is read
/// and dropped until the process ends, so that it never writes into a closed pipe.
fn first_line(stdout: ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx
}

/// The measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Sequential,
    Find,
    Random,
    Pull,
}

/// One side's run of one measure.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Wall seconds of the measured operation alone.
    secs: f64,
    /// CPU seconds of the client side: the reader and, for a mount, the mount's process.
    client_cpu: f64,
    /// CPU seconds of `milepost serve` in the same window.
    office_cpu: f64,
    /// Seconds from spawning the mount to its being usable (mount sides).
    startup: Option<f64>,
}

/// Everything a round needs.
struct Bench {
    milepost: PathBuf,
    work: PathBuf,
    office: Office,
    shapes: Shapes,
    datasets: Datasets,
    /// SHA-256 of the big object.
    big_sha: String,
    /// The big object as the loopback S3 server keeps it: the truth random reads are
    /// checked against.
    source: PathBuf,
    offsets: Vec<u64>,
    rclone: bool,
}

impl Bench {
    /// `sides` without rclone's under `--skip-rclone`, in the order of `round`.
    fn sides(&self, sides: &[Side], round: usize) -> Vec<Side> {
        let kept: Vec<Side> = sides
            .iter()
            .copied()
            .filter(|side| self.rclone || *side != Side::Rclone)
            .collect();
        turned(&kept, round)
    }

    /// A fresh directory for one side of one measure in one round.
    fn side_dir(&self, test: Test, side: Side, round: usize) -> PathBuf {
        self.work
            .join(format!("round{round}"))
            .join(format!("{test:?}-{}", side.name()).to_lowercase())
    }

    /// A fresh mount of `dataset` (milepost) or of the whole bucket (rclone) in `dir`.
    fn mount(&self, side: Side, dataset: &Dataset, dir: &Path) -> anyhow::Result<Mount> {
        let mount = match side {
            Side::Milepost => {
                let mut mount = command(&self.milepost);
                mount
                    .arg("mount")
                    .args(["--server", &self.office.url, "--token", &self.office.admin])
                    .args(["--dataset", &dataset.reference()])
                    .env("MILEPOST_LOG", "warn");
                Mount::milepost(mount, dir, &dataset.reference())?
            }
            Side::Rclone => Mount::rclone(self.rclone_mount(), dir)?,
            Side::Curl | Side::Aws => bail!("{side:?} does not mount"),
        };
        Ok(mount)
    }

    /// `rclone mount` of the bucket through the gateway, all but the mount point and cache
    /// directory (see the doc comment for why these flags).
    fn rclone_mount(&self) -> Command {
        let (key, secret) = &self.office.s3_keys;
        let mut rclone = command("rclone");
        rclone
            .args(["mount", &format!(":s3:{BUCKET}")])
            .args(["--config", "/dev/null", "--read-only"])
            .args(["--vfs-cache-mode", "full", "--use-server-modtime"])
            .args([
                "--s3-provider",
                "Other",
                "--s3-endpoint",
                &self.office.gateway,
            ])
            .args(["--s3-region", "us-east-1", "--s3-force-path-style"])
            .args(["--s3-access-key-id", key, "--s3-secret-access-key", secret]);
        rclone
    }

    /// Runs `op` once, timed, after `sync` (so that no side pays for another's dirty pages):
    /// its wall time, the client side's CPU (this thread, the children reaped in `op`, the
    /// mount's process) and the office's CPU in the same window.
    fn measure(
        &self,
        mount: Option<&Mount>,
        op: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Sample> {
        run(&mut Command::new("sync"))?;
        let mount_pid = mount.map(|m| m.child.id());
        let client = || -> anyhow::Result<f64> {
            let mount = mount_pid.map_or(Ok(0.0), cpu_seconds)?;
            Ok(thread_cpu_seconds()? + reaped_children_cpu()? + mount)
        };
        let (client_before, office_before) = (client()?, cpu_seconds(self.office.pid())?);
        let started = Instant::now();
        op()?;
        let secs = started.elapsed().as_secs_f64();
        Ok(Sample {
            secs,
            client_cpu: client()? - client_before,
            office_cpu: cpu_seconds(self.office.pid())? - office_before,
            startup: mount.map(|m| m.startup),
        })
    }

    /// 1. The big object read once from start to end, by each side.
    fn sequential(&self, round: usize, report: &mut Report) -> anyhow::Result<()> {
        let bytes = self.shapes.big_bytes;
        for side in self.sides(&[Side::Curl, Side::Milepost, Side::Rclone], round) {
            let sample = if side == Side::Curl {
                let url = format!("{}/data/{BUCKET}/{BIG_KEY}", self.office.url);
                self.measure(None, || curl_read(&url, &self.office.admin, bytes))?
            } else {
                let dir = self.side_dir(Test::Sequential, side, round);
                let mount = self.mount(side, &self.datasets.big, &dir)?;
                let file = mount.root.join(BIG_KEY);
                check_size(&file, bytes)?;
                let sample = self.measure(Some(&mount), || {
                    let read = dd_read(&file)?;
                    ensure!(
                        read == bytes,
                        "{}: read {read} bytes, expected {bytes}",
                        file.display()
                    );
                    Ok(())
                })?;
                if round == 0 {
                    let sha = sha256_file(&file)?;
                    ensure!(
                        sha == self.big_sha,
                        "{}: SHA-256 {sha}, the source's is {}",
                        file.display(),
                        self.big_sha
                    );
                    eprintln!(
                        "  {}: SHA-256 matches the source",
                        side.label(Test::Sequential)
                    );
                }
                mount.stop()?;
                sample
            };
            report.add(Test::Sequential, side, sample);
        }
        Ok(())
    }

    /// 2. `find` with a `stat` of every file of the many-files set, on a fresh mount.
    fn find(&self, round: usize, report: &mut Report) -> anyhow::Result<()> {
        let expected = (self.shapes.files as u64, self.shapes.many_bytes());
        for side in self.sides(&[Side::Milepost, Side::Rclone], round) {
            let dir = self.side_dir(Test::Find, side, round);
            let mount = self.mount(side, &self.datasets.many, &dir)?;
            let tree = mount.root.join("many");
            let mut found = (0, 0);
            let sample = self.measure(Some(&mount), || {
                found = find_sizes(&tree)?;
                Ok(())
            })?;
            ensure!(
                found == expected,
                "{}: found (files, bytes) {found:?}, expected {expected:?}",
                tree.display()
            );
            mount.stop()?;
            report.add(Test::Find, side, sample);
        }
        Ok(())
    }

    /// 3. 4 KiB `pread`s at the seeded offsets of the big object, on a fresh mount.
    fn random(&self, round: usize, report: &mut Report) -> anyhow::Result<()> {
        for side in self.sides(&[Side::Milepost, Side::Rclone], round) {
            let dir = self.side_dir(Test::Random, side, round);
            let mount = self.mount(side, &self.datasets.big, &dir)?;
            let path = mount.root.join(BIG_KEY);
            check_size(&path, self.shapes.big_bytes)?;
            let file = std::fs::File::open(&path)?;
            let mut blocks = vec![0u8; self.offsets.len() * READ_SIZE as usize];
            let sample = self.measure(Some(&mount), || {
                read_blocks(&file, &self.offsets, &mut blocks)
            })?;
            // Closed before the unmount, which an open file would hold up.
            drop(file);
            mount.stop()?;
            let source = std::fs::File::open(&self.source)?;
            let mut expected = vec![0u8; blocks.len()];
            read_blocks(&source, &self.offsets, &mut expected)?;
            ensure!(
                blocks == expected,
                "{}: random reads differ from the source",
                side.label(Test::Random)
            );
            report.add(Test::Random, side, sample);
        }
        Ok(())
    }

    /// 4. The small-files set copied to a fresh directory by `milepost pull` and the AWS CLI.
    fn pull(&self, round: usize, report: &mut Report) -> anyhow::Result<()> {
        let expected = (self.shapes.small as u64, self.shapes.small_bytes());
        for side in self.sides(&[Side::Milepost, Side::Aws], round) {
            let dest = self
                .work
                .join("pull")
                .join(format!("{}-{round}", side.name()));
            std::fs::create_dir_all(&dest)?;
            let mut copy = match side {
                Side::Milepost => self.milepost_pull(&dest),
                _ => self.aws_copy(&dest),
            };
            let sample = self.measure(None, || run(&mut copy).map(drop))?;
            // pull lays files out as DIR/<bucket>/<key>; aws copies the prefix's contents.
            let tree = match side {
                Side::Milepost => dest.join(BUCKET).join("small"),
                _ => dest.clone(),
            };
            let found = find_sizes(&tree)?;
            ensure!(
                found == expected,
                "{}: found (files, bytes) {found:?}, expected {expected:?}",
                tree.display()
            );
            empty_tree(&dest)?;
            report.add(Test::Pull, side, sample);
        }
        Ok(())
    }

    fn milepost_pull(&self, dest: &Path) -> Command {
        let mut pull = command(&self.milepost);
        pull.args(["pull", &self.datasets.small.reference()])
            .arg(dest)
            .args(["--jobs", "8"])
            .args(["--server", &self.office.url, "--token", &self.office.admin])
            .env("MILEPOST_LOG", "warn");
        pull
    }

    fn aws_copy(&self, dest: &Path) -> Command {
        let (key, secret) = &self.office.s3_keys;
        let mut aws = command("aws");
        aws.args(["s3", "cp", "--recursive", "--only-show-errors"])
            .args([
                "--endpoint-url",
                &self.office.gateway,
                "--region",
                "us-east-1",
            ])
            .arg(format!("s3://{BUCKET}/small/"))
            .arg(dest)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        aws
    }
}

fn check_size(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    ensure!(
        size == bytes,
        "{}: {size} bytes, expected {bytes}",
        path.display()
    );
    Ok(())
}

/// `curl` of `url` into /dev/null with a bearer token; checks the bytes it received.
fn curl_read(url: &str, token: &str, bytes: u64) -> anyhow::Result<()> {
    let size = run(command("curl")
        .args(["-sS", "-f", "--noproxy", "*", "-o", "/dev/null"])
        .args(["-w", "%{size_download}"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg(url))?;
    ensure!(
        size.trim() == bytes.to_string(),
        "{url}: read {size} bytes, expected {bytes}"
    );
    Ok(())
}

/// `dd if=PATH of=/dev/null bs=1M`: the bytes it copied (from its own report, in the C
/// locale: "N bytes (…) copied, …").
fn dd_read(path: &Path) -> anyhow::Result<u64> {
    let mut input = OsString::from("if=");
    input.push(path);
    let output = command("dd")
        .arg(input)
        .args(["of=/dev/null", "bs=1M"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .context("running dd")?;
    let report = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "dd of {} failed: {report}",
        path.display()
    );
    report
        .lines()
        .find_map(|line| {
            line.split_once(" bytes")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .with_context(|| format!("no byte count in dd's report: {report}"))
}

/// `find DIR -type f -printf '%s\n'` (a `stat` of every file): the files and their bytes.
fn find_sizes(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let printed = run(command("find")
        .arg(dir)
        .args(["-type", "f", "-printf", "%s\\n"]))?;
    let sizes = printed
        .lines()
        .map(|line| {
            line.trim()
                .parse::<u64>()
                .with_context(|| format!("find printed {line:?}"))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok((sizes.len() as u64, sizes.iter().sum()))
}

/// Truncates every file under `dir` (made writable first), keeping the files: see the doc
/// comment on why the outputs are not deleted between sides.
fn empty_tree(dir: &Path) -> anyhow::Result<()> {
    run(command("find")
        .arg(dir)
        .args(["-type", "f", "-size", "+0"])
        .args(["-exec", "chmod", "u+w", "{}", "+"])
        .args(["-exec", "truncate", "-s", "0", "{}", "+"]))
    .map(drop)
}

/// One `pread` of [`READ_SIZE`] bytes at each offset, into consecutive blocks of `out`.
fn read_blocks(file: &std::fs::File, offsets: &[u64], out: &mut [u8]) -> anyhow::Result<()> {
    for (offset, block) in offsets.iter().zip(out.chunks_exact_mut(READ_SIZE as usize)) {
        file.read_exact_at(block, *offset)
            .with_context(|| format!("pread at {offset}"))?;
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    /// (measure, side) → one sample per round, in insertion order.
    samples: Vec<((Test, Side), Vec<Sample>)>,
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Seconds with three decimals under one second (the `find` and random-read times).
fn seconds(secs: f64) -> String {
    if secs < 1.0 {
        format!("{secs:.3} s")
    } else {
        format!("{secs:.2} s")
    }
}

/// One acceptance point: milepost's side against a peer's on one measure.
struct Target {
    test: Test,
    peer: Side,
    /// The least milepost ÷ peer (as speed) the issue asks for.
    least: f64,
    /// The mounts' startup added to each side's time (reported, not the acceptance).
    with_startup: bool,
}

const TARGETS: [Target; 6] = [
    Target {
        test: Test::Sequential,
        peer: Side::Rclone,
        least: 1.0,
        with_startup: false,
    },
    Target {
        test: Test::Sequential,
        peer: Side::Curl,
        least: 0.7,
        with_startup: false,
    },
    Target {
        test: Test::Find,
        peer: Side::Rclone,
        least: 2.0,
        with_startup: false,
    },
    Target {
        test: Test::Find,
        peer: Side::Rclone,
        least: 0.0,
        with_startup: true,
    },
    Target {
        test: Test::Random,
        peer: Side::Rclone,
        least: 1.0,
        with_startup: false,
    },
    Target {
        test: Test::Pull,
        peer: Side::Aws,
        least: 1.0,
        with_startup: false,
    },
];

impl Report {
    fn add(&mut self, test: Test, side: Side, sample: Sample) {
        let startup = sample
            .startup
            .map_or_else(String::new, |s| format!(", mounted in {}", seconds(s)));
        eprintln!(
            "  {test:?} {}: {}, client CPU {:.2} s, office CPU {:.2} s{startup}",
            side.label(test),
            seconds(sample.secs),
            sample.client_cpu,
            sample.office_cpu
        );
        let key = (test, side);
        match self.samples.iter_mut().find(|(k, _)| *k == key) {
            Some((_, samples)) => samples.push(sample),
            None => self.samples.push((key, vec![sample])),
        }
    }

    fn get(&self, test: Test, side: Side) -> Option<&[Sample]> {
        self.samples
            .iter()
            .find(|(k, _)| *k == (test, side))
            .map(|(_, v)| v.as_slice())
    }

    fn print(&self, shapes: &Shapes, rounds: usize) {
        let mut out = String::new();
        self.acceptance(&mut out, shapes, rounds);
        self.every_round(&mut out, shapes);
        self.startups(&mut out, shapes);
        print!("{out}");
    }

    fn test_label(test: Test, shapes: &Shapes) -> String {
        match test {
            Test::Sequential => format!("sequential read, {}", shapes.big_label()),
            Test::Find => format!("`find` + `stat`, {} files of 1 KiB", shapes.files),
            Test::Random => format!("{RANDOM_READS} random 4 KiB reads, one thread"),
            Test::Pull => format!("copy {} × 1 MiB to a directory", shapes.small),
        }
    }

    /// A time as the measure is read: with a rate for bytes, as reads per second for reads.
    fn value(test: Test, secs: f64, shapes: &Shapes) -> String {
        let rate = |bytes: u64| bytes as f64 / MIB as f64 / secs;
        match test {
            Test::Sequential => format!("{} ({:.0} MiB/s)", seconds(secs), rate(shapes.big_bytes)),
            Test::Pull => format!(
                "{} ({:.0} MiB/s)",
                seconds(secs),
                rate(shapes.small_bytes())
            ),
            Test::Find => seconds(secs),
            Test::Random => format!("{:.0} reads/s", RANDOM_READS as f64 / secs),
        }
    }

    fn acceptance(&self, out: &mut String, shapes: &Shapes, rounds: usize) {
        let _ = writeln!(
            out,
            "Workstation paths, milepost ÷ peer as speed (peer's time ÷ milepost's; medians of {rounds} rounds):\n"
        );
        let _ = writeln!(
            out,
            "| measure | milepost | peer | milepost ÷ peer | each round | target | verdict |\n| --- | ---: | ---: | ---: | --- | --- | --- |"
        );
        for target in &TARGETS {
            let (Some(ours), Some(theirs)) = (
                self.get(target.test, Side::Milepost),
                self.get(target.test, target.peer),
            ) else {
                continue;
            };
            let time = |s: &Sample| {
                s.secs
                    + if target.with_startup {
                        s.startup.unwrap_or(0.0)
                    } else {
                        0.0
                    }
            };
            let (a, b): (Vec<f64>, Vec<f64>) = (
                ours.iter().map(time).collect(),
                theirs.iter().map(time).collect(),
            );
            let ratio = median(&b) / median(&a);
            let each: Vec<String> = a
                .iter()
                .zip(&b)
                .map(|(a, b)| format!("{:.2}×", b / a))
                .collect();
            let (goal, verdict) = if target.with_startup {
                ("(not a target)".to_owned(), String::new())
            } else if ratio >= target.least {
                (format!("≥ {:.1}×", target.least), "met".to_owned())
            } else {
                (format!("≥ {:.1}×", target.least), "**missed**".to_owned())
            };
            let startup = if target.with_startup {
                ", mount startup included"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "| {}{startup} | {} | {}: {} | **{ratio:.2}×** | {} | {goal} | {verdict} |",
                Self::test_label(target.test, shapes),
                Self::value(target.test, median(&a), shapes),
                target.peer.label(target.test),
                Self::value(target.test, median(&b), shapes),
                each.join(" / ")
            );
        }
    }

    fn every_round(&self, out: &mut String, shapes: &Shapes) {
        let _ = writeln!(
            out,
            "\nEvery side (time of the measured operation alone; CPU seconds, user + system: the client is the reader plus the mount's process, the office is `milepost serve`):\n"
        );
        let _ = writeln!(
            out,
            "| measure | side | median | each round (s) | client CPU median | each round | office CPU median |\n| --- | --- | ---: | --- | ---: | --- | ---: |"
        );
        for ((test, side), samples) in &self.samples {
            let column = |get: fn(&Sample) -> f64| samples.iter().map(get).collect::<Vec<_>>();
            let list = |values: &[f64]| {
                values
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let (secs, client, office) = (
                column(|s| s.secs),
                column(|s| s.client_cpu),
                column(|s| s.office_cpu),
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} s | {} | {:.2} s |",
                Self::test_label(*test, shapes),
                side.label(*test),
                Self::value(*test, median(&secs), shapes),
                list(&secs),
                median(&client),
                list(&client),
                median(&office)
            );
        }
    }

    fn startups(&self, out: &mut String, shapes: &Shapes) {
        let _ = writeln!(
            out,
            "\nMount startup, from spawning the process to the mount being usable (`milepost mount` reads the dataset's manifest first, so its `find` never asks the server; rclone lists directories on first access, inside its `find` time):\n"
        );
        let _ = writeln!(
            out,
            "| mounted for | side | median | each round (s) |\n| --- | --- | ---: | --- |"
        );
        for ((test, side), samples) in &self.samples {
            let startups: Vec<f64> = samples.iter().filter_map(|s| s.startup).collect();
            if startups.is_empty() {
                continue;
            }
            let each: Vec<String> = startups.iter().map(|s| format!("{s:.3}")).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                Self::test_label(*test, shapes),
                side.label(*test),
                seconds(median(&startups)),
                each.join(" / ")
            );
        }
    }
}
