//! `bench_cacher`: the office cache against its peers, all on one Garage server on loopback.
//!
//! ```text
//! cargo install garage --locked --version 2.5.0     # once, ~6 min
//! apt-get install rclone awscli nginx curl           # the peers and the HTTP client
//! cargo build --release -p milepost-api -p milepost-tests --bins
//! target/release/bench_cacher [--rounds N] [--big-mib N] [--small N] [--dir PATH]
//!                             [--milepost PATH] [--skip-peers] [--hot-rounds N]
//!                             [--cache-setting 'part_size = "16MiB"' ...]
//! ```
//!
//! 1. Starts a single-node Garage (`db_engine = "sqlite"`, replication 1, no compression) in
//!    a work directory and seeds it with two drives in the catalog's layout, each a folder with
//!    its `drive.json`: `bench-big`, one `--big-mib` object (uploaded multipart), and
//!    `bench-small`, `--small` objects of 1 MiB, random bytes.
//! 2. Cold transfer, `--rounds` rounds (default 5), each side once per round (the order turning
//!    each round) into a fresh directory, emptied after its check and deleted once the set is
//!    done; `sync` runs before every side, so no side pays for the writeback of another's
//!    dirty pages:
//!    `rclone copy --transfers 16 --multi-thread-streams 8 --multi-thread-cutoff 32M`; the
//!    same followed by an `fsync` of each file it wrote (Milepost makes every object durable
//!    before calling it cached with `cache.durability = "immediate"`; rclone leaves its files
//!    to writeback, as Milepost's default, `deferred`, does until its syncer gets to them);
//!    `aws s3 cp --recursive` (both peers skip the sidecar); and Milepost — the real
//!    `milepost serve` process with a fresh catalog and cache per round — on both paths a
//!    dataset is made by: the set's objects named by key (nothing catalogued), and the way an
//!    engineer reserves data, the catalog synced from the bucket (`syncCatalog`) and the
//!    set's drive selected by id; plus the first path with `durability = "immediate"`. Timed
//!    from `reserveDataset` until the `reservationProgress` subscription reports READY, the
//!    dataset created beforehand. Each side's files are checked for count and size, and
//!    Milepost's `bytesFromUpstream` against the dataset's bytes.
//! 3. Hot read of the big object: `GET /data/...` from the cache vs nginx serving the same
//!    file, once with `sendfile` and once with `sendfile off` and 1 MiB buffers (which of the
//!    two is faster depends on the machine), all read by curl into /dev/null, `--hot-rounds`
//!    times each (3 or `--rounds`, whichever is more; more gives a profiler something to see).
//! 4. Memory: the server's peak RSS (VmHWM, reset between phases through `clear_refs`) while
//!    8 curls read the big object at once, cold (read-through, one upstream fetch) and hot.
//!
//! Figures go to stdout as a Markdown table; the best of the rounds and the median are shown.
//! Beside each cold time, the CPU seconds (user + system, from `/proc`) the client side used
//! (rclone and the AWS CLI as reaped children, `milepost serve` as its own process), the same
//! per GiB, and those Garage used in the same window: on two shared cores the sides compete
//! with the server for CPU, and CPU seconds move far less from run to run than wall time
//! does. Each side's median time and CPU are also given as ratios to plain rclone's.
//!
//! (Over 600 lines: a benchmark program: setup of the peers, the measured runs and the report in one command.)

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use milepost_store::{upload_file, ObjectStore, S3Store, UploadOptions};
use milepost_testkit::garage::{free_port, run, which, Garage};
use milepost_tests::cpu::{cpu_seconds, reaped_children_cpu};
use rand::RngCore as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const BUCKET: &str = "bench";
const MIB: u64 = 1 << 20;
/// Where the sets live: each is a drive's folder in the catalog's layout (`drives/DATE/VEHICLE/ID/`)
/// with its `drive.json`, so the synced path can select it by drive id.
const DRIVES: &str = "drives/2026-12-01/bench-car";
/// The big object's key.
const BIG_KEY: &str = "drives/2026-12-01/bench-car/bench-big/object.bin";

/// The folder of set `name` (`big`, `small`), without a trailing slash.
fn set_prefix(name: &str) -> String {
    format!("{DRIVES}/bench-{name}")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Args {
    rounds: usize,
    big_mib: u64,
    small: usize,
    dir: Option<PathBuf>,
    milepost: PathBuf,
    peers: bool,
    hot_rounds: Option<usize>,
    /// Lines added to the `[cache]` table of every Milepost side (`--cache-setting`).
    cache_extra: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 5,
        big_mib: 1024,
        small: 1000,
        dir: None,
        milepost: PathBuf::from("target/release/milepost"),
        peers: true,
        hot_rounds: None,
        cache_extra: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--big-mib" => args.big_mib = value("--big-mib")?.parse()?,
            "--small" => args.small = value("--small")?.parse()?,
            "--dir" => args.dir = Some(value("--dir")?.into()),
            "--milepost" => args.milepost = value("--milepost")?.into(),
            "--skip-peers" => args.peers = false,
            "--hot-rounds" => args.hot_rounds = Some(value("--hot-rounds")?.parse()?),
            "--cache-setting" => {
                args.cache_extra.push_str(&value("--cache-setting")?);
                args.cache_extra.push('\n');
            }
            other => bail!("unknown argument {other:?} (see the doc comment of bench_cacher)"),
        }
    }
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    for tool in ["garage", "rclone", "aws", "nginx", "curl"] {
        if !args.peers && matches!(tool, "rclone" | "aws") {
            continue;
        }
        ensure!(
            which(tool),
            "{tool} is not on PATH (see the doc comment of bench_cacher for what to install)"
        );
    }
    ensure!(
        args.milepost.exists(),
        "{} does not exist: cargo build --release -p milepost-api",
        args.milepost.display()
    );
    let milepost = std::fs::canonicalize(&args.milepost)?;
    let _temp;
    let work = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::canonicalize(dir)?
        }
        None => {
            _temp = tempfile::Builder::new()
                .prefix("milepost-bench-cacher")
                .tempdir_in(std::env::current_dir()?.join("target"))?;
            _temp.path().to_owned()
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;

    eprintln!("work directory {}", work.display());
    let garage = Garage::start(&work.join("garage"), BUCKET)?;
    let store = Arc::new(garage.store()?);
    let big_bytes = args.big_mib * MIB;
    let small_bytes = args.small as u64 * MIB;
    let seeded = Instant::now();
    runtime.block_on(seed(&store, &work, big_bytes, args.small))?;
    eprintln!("seeded in {:.1} s", seeded.elapsed().as_secs_f64());

    let mut report = Report::default();
    let sets = [
        ("big", format!("1 × {} MiB", args.big_mib), 1, big_bytes),
        (
            "small",
            format!("{} × 1 MiB", args.small),
            args.small,
            small_bytes,
        ),
    ];
    for (set, label, count, bytes) in &sets {
        let sides: &[Side] = if args.peers {
            &[
                Side::Rclone,
                Side::RcloneSynced,
                Side::Aws,
                Side::Milepost,
                Side::MilepostCatalog,
                Side::MilepostImmediate,
            ]
        } else {
            &[
                Side::Milepost,
                Side::MilepostCatalog,
                Side::MilepostImmediate,
            ]
        };
        let mut samples = vec![Vec::new(); sides.len()];
        // Nothing is deleted until the set is done, only emptied: on ext4 without a journal
        // (this machine's root disk) creating a file skips every inode freed in the last
        // minutes, so a side that ran right after another side's tree was removed paid for
        // it (a third more CPU in file creation, measured). Emptying frees the bytes and the
        // page cache but keeps the inodes. The order of the sides turns each round, so none
        // is always first.
        let mut outputs = Vec::new();
        for round in 0..args.rounds {
            for turn in 0..sides.len() {
                let index = (turn + round) % sides.len();
                let dest = work.join(format!("{}-{set}-{round}", sides[index].name()));
                // Every side starts with nothing dirty in the page cache: the writeback of
                // the side before must not run on this side's clock.
                run(&mut Command::new("sync"))?;
                let sample = match sides[index] {
                    Side::Rclone => timed(&garage, || rclone_copy(&garage, set, &dest))?,
                    Side::RcloneSynced => timed(&garage, || {
                        rclone_copy(&garage, set, &dest)?;
                        fsync_tree(&dest)
                    })?,
                    Side::Aws => timed(&garage, || aws_copy(&garage, set, &dest))?,
                    side @ (Side::Milepost | Side::MilepostCatalog | Side::MilepostImmediate) => {
                        let durability = match side {
                            Side::MilepostImmediate => "immediate",
                            _ => "deferred",
                        };
                        let selection = match side {
                            Side::MilepostCatalog => Selection::Drive,
                            _ => Selection::Objects,
                        };
                        let server = Server::start(
                            &milepost,
                            &dest,
                            &garage,
                            durability,
                            &args.cache_extra,
                        )?;
                        let sample = runtime.block_on(cold_materialization(
                            &server, &garage, set, selection, *count, *bytes,
                        ))?;
                        if side == Side::Milepost && *set == "big" && round + 1 == args.rounds {
                            let hot_rounds = args.hot_rounds.unwrap_or(args.rounds.max(3));
                            hot_reads(&runtime, &server, &mut report, *bytes, hot_rounds)?;
                        }
                        server.stop()?;
                        sample
                    }
                };
                if !sides[index].is_milepost() {
                    check_tree(&dest, *count, *bytes)?;
                }
                samples[index].push(sample);
                empty_tree(&dest)?;
                outputs.push(dest);
            }
        }
        // The ratios are against plain rclone's medians of the same run.
        let reference = sides
            .iter()
            .position(|side| *side == Side::Rclone)
            .map(|i| Medians::of(&samples[i]));
        for (side, samples) in sides.iter().zip(&samples) {
            report.cold(label, side.label(), samples, *bytes, reference);
        }
        for dest in outputs {
            std::fs::remove_dir_all(&dest)?;
        }
    }

    let server = Server::start(
        &milepost,
        &work.join("mp-rss"),
        &garage,
        "deferred",
        &args.cache_extra,
    )?;
    let cold = concurrent_reads(&server, 8, big_bytes)?;
    let cold_hwm = server.peak_rss()?;
    server.reset_peak_rss()?;
    let hot = concurrent_reads(&server, 8, big_bytes)?;
    let hot_hwm = server.peak_rss()?;
    server.stop()?;
    let _ = writeln!(
        report.memory,
        "| 8 concurrent reads of the {} MiB object, cold (read-through) | {:.2} s | {} MiB |",
        args.big_mib,
        cold,
        cold_hwm / MIB
    );
    let _ = writeln!(
        report.memory,
        "| 8 concurrent reads of the {} MiB object, hot (cached) | {:.2} s | {} MiB |",
        args.big_mib,
        hot,
        hot_hwm / MIB
    );
    drop(garage);
    report.print();
    Ok(())
}

/// One side of the cold-transfer comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Rclone,
    /// rclone, then every file it wrote fsynced: what Milepost with `cache.durability =
    /// "immediate"` does before it calls an object cached (rclone leaves its files to the
    /// kernel's writeback).
    RcloneSynced,
    Aws,
    /// Milepost, the dataset made of the set's objects named one by one (nothing catalogued).
    Milepost,
    /// Milepost the way an engineer reserves data: the catalog synced from the bucket, the
    /// dataset made of the set's drive by id.
    MilepostCatalog,
    /// Milepost with `cache.durability = "immediate"`: every object fsynced before it counts
    /// as cached (the default fsyncs behind the install), the match of "rclone, then fsync".
    MilepostImmediate,
}

impl Side {
    /// Its output directory's prefix.
    fn name(self) -> &'static str {
        match self {
            Side::Rclone => "rclone",
            Side::RcloneSynced => "rclone-synced",
            Side::Aws => "aws",
            Side::Milepost => "mp",
            Side::MilepostCatalog => "mp-catalog",
            Side::MilepostImmediate => "mp-immediate",
        }
    }

    fn is_milepost(self) -> bool {
        matches!(
            self,
            Side::Milepost | Side::MilepostCatalog | Side::MilepostImmediate
        )
    }

    /// Its name in the report.
    fn label(self) -> &'static str {
        match self {
            Side::Rclone => "rclone",
            Side::RcloneSynced => "rclone, then fsync",
            Side::Aws => "aws s3 cp",
            Side::Milepost => "milepost, objects by key",
            Side::MilepostCatalog => "milepost, synced catalog, drive by id",
            Side::MilepostImmediate => "milepost, durability immediate",
        }
    }
}

/// One side's run of one set.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    /// CPU seconds of the client side: the tool's processes, or `milepost serve`.
    client_cpu: f64,
    /// CPU seconds of the Garage server in the same window.
    garage_cpu: f64,
}

/// Runs `op`, which runs a peer tool as a child process and waits for it.
fn timed(garage: &Garage, op: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Sample> {
    let (client, server) = (reaped_children_cpu()?, cpu_seconds(garage.pid())?);
    let started = Instant::now();
    op()?;
    let secs = started.elapsed().as_secs_f64();
    Ok(Sample {
        secs,
        client_cpu: reaped_children_cpu()? - client,
        garage_cpu: cpu_seconds(garage.pid())? - server,
    })
}

async fn seed(store: &S3Store, work: &Path, big: u64, small: usize) -> anyhow::Result<()> {
    let source = work.join("big.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&source)?);
        let mut block = vec![0u8; MIB as usize];
        for _ in 0..big / MIB {
            rand::rng().fill_bytes(&mut block);
            file.write_all(&block)?;
        }
        file.flush()?;
    }
    upload_file(store, BUCKET, BIG_KEY, &source, &UploadOptions::default()).await?;
    std::fs::remove_file(&source)?;
    let small_prefix = set_prefix("small");
    let small_prefix = &small_prefix;
    let mut uploads = futures::stream::iter(0..small)
        .map(|i| async move {
            let mut body = vec![0u8; MIB as usize];
            rand::rng().fill_bytes(&mut body);
            store
                .put(
                    BUCKET,
                    &format!("{small_prefix}/{i:05}.bin"),
                    Bytes::from(body),
                )
                .await
        })
        .buffer_unordered(16);
    while let Some(result) = uploads.next().await {
        result?;
    }
    // Each set is a drive of the catalog, for the synced path (the peers skip the sidecar).
    for name in ["big", "small"] {
        let sidecar = json!({
            "drive_id": format!("bench-{name}"),
            "vehicle": "bench-car",
            "started_at": "2026-12-01T08:00:00Z",
            "ended_at": "2026-12-01T09:00:00Z",
            "tags": ["bench-cacher"],
        });
        store
            .put(
                BUCKET,
                &format!("{}/drive.json", set_prefix(name)),
                Bytes::from(serde_json::to_vec(&sidecar)?),
            )
            .await?;
    }
    Ok(())
}

fn rclone_copy(garage: &Garage, set: &str, dest: &Path) -> anyhow::Result<()> {
    let mut command = Command::new("rclone");
    command
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_GARAGE_TYPE", "s3")
        .env("RCLONE_CONFIG_GARAGE_PROVIDER", "Other")
        .env("RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID", &garage.key_id)
        .env("RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY", &garage.secret)
        .env("RCLONE_CONFIG_GARAGE_ENDPOINT", &garage.endpoint)
        .env("RCLONE_CONFIG_GARAGE_REGION", "us-east-1")
        .env("RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE", "true")
        .args([
            "copy",
            "--transfers",
            "16",
            "--multi-thread-streams",
            "8",
            "--multi-thread-cutoff",
            "32M",
        ])
        .args(["--exclude", "/drive.json"])
        .arg(format!("garage:{BUCKET}/{}", set_prefix(set)))
        .arg(dest);
    run(&mut command).map(drop)
}

fn aws_copy(garage: &Garage, set: &str, dest: &Path) -> anyhow::Result<()> {
    let mut command = Command::new("aws");
    garage.aws_env(&mut command);
    command
        .args([
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "--endpoint-url",
        ])
        .arg(&garage.endpoint)
        .args(["--exclude", "drive.json"])
        .arg(format!("s3://{BUCKET}/{}/", set_prefix(set)))
        .arg(dest);
    run(&mut command).map(drop)
}

/// Calls `visit` with the path and metadata of every regular file under `dir`.
fn for_each_file(
    dir: &Path,
    mut visit: impl FnMut(&Path, &std::fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                visit(&path, &meta)?;
            }
        }
    }
    Ok(())
}

/// Makes every file under `dir` durable, one `fsync` each.
fn fsync_tree(dir: &Path) -> anyhow::Result<()> {
    for_each_file(dir, |path, _| {
        std::fs::File::open(path)?.sync_all()?;
        Ok(())
    })
}

/// Truncates every file under `dir` to zero bytes (made writable first: the cache's files
/// are read-only), keeping the files themselves.
fn empty_tree(dir: &Path) -> anyhow::Result<()> {
    for_each_file(dir, |path, meta| {
        if meta.len() > 0 {
            let mut permissions = meta.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(path, permissions)?;
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(0)?;
        }
        Ok(())
    })
}

/// Checks that `dir` holds `count` files of `bytes` bytes in all.
fn check_tree(dir: &Path, count: usize, bytes: u64) -> anyhow::Result<()> {
    let (mut files, mut total) = (0usize, 0u64);
    for_each_file(dir, |_, meta| {
        files += 1;
        total += meta.len();
        Ok(())
    })?;
    ensure!(
        files == count && total == bytes,
        "{} holds {files} files of {total} bytes, expected {count} files of {bytes} bytes",
        dir.display()
    );
    Ok(())
}

/// A `milepost serve` process with its own data directory, catalog and cache.
struct Server {
    child: Child,
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts `milepost serve` in `dir` with `cache.durability = durability`.
    fn start(
        milepost: &Path,
        dir: &Path,
        garage: &Garage,
        durability: &str,
        cache_extra: &str,
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let config = dir.join("milepost.toml");
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{dir}"
office = "bench"

[server]
listen = "127.0.0.1:{port}"
s3_listen = "127.0.0.1:0"

[upstream]
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true

[catalog]
bucket = "{BUCKET}"
sync_interval = "off"

[cache]
capacity = "64GiB"
durability = "{durability}"
{cache_extra}"#,
                dir = dir.display(),
                endpoint = garage.endpoint,
            ),
        )?;
        let mut token = Command::new(milepost);
        token
            .arg("--config")
            .arg(&config)
            .args(["token", "create", "--name", "bench", "--role", "admin"]);
        let token = run(&mut token)?.trim().to_owned();
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
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
            http: reqwest::Client::new(),
        };
        let healthy = (0..200).any(|_| {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null"])
                .arg(format!("{}/healthz", server.url))
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        ensure!(
            healthy,
            "milepost serve did not answer /healthz within 10 s"
        );
        Ok(server)
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

    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        milepost_testkit::graphql_data(&self.http, &self.url, &self.token, query, variables).await
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The peak resident set size since start or the last reset, in bytes.
    fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc/PID/status")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    }

    fn reset_peak_rss(&self) -> anyhow::Result<()> {
        // "5" resets the peak RSS counter (Documentation/filesystems/proc.rst, clear_refs).
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .context("resetting VmHWM through /proc/PID/clear_refs")
    }

    fn data_url(&self, key: &str) -> String {
        format!("{}/data/{BUCKET}/{key}", self.url)
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

/// How the benchmark's dataset is made.
#[derive(Clone, Copy, Debug)]
enum Selection {
    /// Every object of the set named by key (the catalog has not synced the bucket).
    Objects,
    /// The catalog synced from the bucket first, then the set's drive selected by id.
    Drive,
}

/// Creates a dataset of set `set` as `selection` says, reserves it and returns the seconds
/// from `reserveDataset` to READY.
async fn cold_materialization(
    server: &Server,
    garage: &Garage,
    set: &str,
    selection: Selection,
    count: usize,
    bytes: u64,
) -> anyhow::Result<Sample> {
    let prefix = set_prefix(set);
    // Neither the sync nor the dataset's creation is part of the figure, but both are
    // reported: they are what an engineer waits for first.
    let input = match selection {
        Selection::Objects => {
            let objects: Vec<Value> = if set == "big" {
                vec![json!({ "bucket": BUCKET, "key": BIG_KEY })]
            } else {
                (0..count)
                    .map(|i| json!({ "bucket": BUCKET, "key": format!("{prefix}/{i:05}.bin") }))
                    .collect()
            };
            json!({ "name": set, "objects": objects })
        }
        Selection::Drive => {
            let synced = Instant::now();
            let data = server
                .graphql(
                    "mutation { syncCatalog { objectsSeen drives errors } }",
                    json!({}),
                )
                .await?;
            let report = &data["syncCatalog"];
            ensure!(
                report["drives"].as_u64() == Some(2)
                    && report["errors"].as_array().is_some_and(Vec::is_empty),
                "the catalog sync did not find the two drives cleanly: {report}"
            );
            eprintln!(
                "syncCatalog of {} objects: {:.2} s",
                report["objectsSeen"],
                synced.elapsed().as_secs_f64()
            );
            json!({ "name": set, "entityIds": [format!("bench-{set}")], "include": ["*.bin"] })
        }
    };
    let created = Instant::now();
    let data = server
        .graphql(
            "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name totalBytes objectCount } }",
            json!({ "input": input }),
        )
        .await?;
    eprintln!(
        "createDataset of {count} objects ({selection:?}): {:.2} s",
        created.elapsed().as_secs_f64()
    );
    ensure!(
        data["createDataset"]["totalBytes"].as_u64() == Some(bytes),
        "dataset {set}: {data}"
    );
    // The client waits as `milepost reserve --wait` and the web catalog do: on the
    // `reservationProgress` subscription, opened before the clock starts (polling the
    // reservation would load the server that is being measured).
    let mut socket = server.progress_socket().await?;
    let (client, upstream) = (cpu_seconds(server.pid())?, cpu_seconds(garage.pid())?);
    let started = Instant::now();
    let data = server
        .graphql(
            "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
            json!({ "input": { "dataset": set, "ttlSeconds": 3600 } }),
        )
        .await?;
    let id = data["reserveDataset"]["id"]
        .as_str()
        .context("reserveDataset returned no id")?
        .to_owned();
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: ID!) { reservationProgress(id: $id) { state error } }",
        "variables": { "id": id } } });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    let mut state = String::new();
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("next") => {
                let r = &frame["payload"]["data"]["reservationProgress"];
                state = r["state"].as_str().unwrap_or_default().to_owned();
                match state.as_str() {
                    "READY" => break,
                    "FAILED" => bail!("reservation failed: {}", r["error"]),
                    _ => {}
                }
            }
            Some("error") | Some("complete") => bail!("subscription ended: {frame}"),
            _ => {}
        }
    }
    let sample = Sample {
        secs: started.elapsed().as_secs_f64(),
        client_cpu: cpu_seconds(server.pid())? - client,
        garage_cpu: cpu_seconds(garage.pid())? - upstream,
    };
    ensure!(
        state == "READY",
        "the subscription closed in state {state:?}"
    );
    let data = server
        .graphql(
            "query($id: ID!) { reservation(id: $id) { bytesFromUpstream localPath } }",
            json!({ "id": id }),
        )
        .await?;
    let r = &data["reservation"];
    ensure!(
        r["bytesFromUpstream"].as_u64() == Some(bytes),
        "READY but bytesFromUpstream is {}, expected {bytes}",
        r["bytesFromUpstream"]
    );
    let path = r["localPath"].as_str().context("READY without localPath")?;
    check_tree(Path::new(path), count, bytes)?;
    Ok(sample)
}

/// curl reads of the cached big object through `/data` and through nginx (serving the
/// reservation's view, `localPath/<bucket>/<key>`), alternating.
fn hot_reads(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    report: &mut Report,
    bytes: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let data = runtime.block_on(server.graphql(
        "query { reservations(first: 1) { edges { node { localPath } } } }",
        json!({}),
    ))?;
    let root = data["reservations"]["edges"][0]["node"]["localPath"]
        .as_str()
        .context("no reservation with a localPath")?
        .to_owned();
    let nginx = Nginx::start(Path::new(&root))?;
    let (mut ours, mut sendfile, mut buffered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(curl_read(
            &server.data_url(BIG_KEY),
            Some(&server.token),
            bytes,
        )?);
        sendfile.push(curl_read(
            &format!("{}/{BUCKET}/{BIG_KEY}", nginx.url),
            None,
            bytes,
        )?);
        buffered.push(curl_read(
            &format!("{}/{BUCKET}/{BIG_KEY}", nginx.buffered_url),
            None,
            bytes,
        )?);
    }
    report.hot("milepost /data", &ours, bytes);
    report.hot("nginx (sendfile)", &sendfile, bytes);
    report.hot("nginx (sendfile off, 1 MiB buffers)", &buffered, bytes);
    Ok(())
}

fn curl_read(url: &str, token: Option<&str>, bytes: u64) -> anyhow::Result<f64> {
    let mut command = Command::new("curl");
    command.args(["-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let started = Instant::now();
    let size = run(command.arg(url))?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        size.trim() == bytes.to_string(),
        "{url}: read {size} bytes, expected {bytes}"
    );
    Ok(secs)
}

/// `n` curls reading the big object through `/data` at once; the seconds until all ended.
fn concurrent_reads(server: &Server, n: usize, bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let url = server.data_url(BIG_KEY);
            let token = server.token.clone();
            std::thread::spawn(move || curl_read(&url, Some(&token), bytes))
        })
        .collect();
    for reader in readers {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// nginx serving `root` on a free loopback port, stopped on drop.
struct Nginx {
    child: Child,
    /// The server block that sends files with `sendfile` (nginx's usual configuration).
    url: String,
    /// The one that reads them into 1 MiB buffers and writes those (`sendfile off`): on some
    /// machines (the KVM guests of 2026-12-04) it is the faster of the two, by up to 1.6×.
    buffered_url: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let (port, buffered_port) = (free_port()?, free_port()?);
        let config = dir.path().join("nginx.conf");
        // `user root` lets workers started by root read the cache's private directories; it is
        // ignored (with a warning) when not running as root.
        std::fs::write(
            &config,
            format!(
                r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
    server {{
        listen 127.0.0.1:{buffered_port};
        root {root};
        sendfile off;
        output_buffers 2 1m;
    }}
}}
"#,
                dir = dir.path().display(),
                root = root.display(),
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let url = format!("http://127.0.0.1:{port}");
        let buffered_url = format!("http://127.0.0.1:{buffered_port}");
        for _ in 0..100 {
            let listening = [port, buffered_port]
                .iter()
                .all(|&port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
            if listening {
                return Ok(Nginx {
                    child,
                    url,
                    buffered_url,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen within 5 s")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so that the master stops its workers: SIGKILL leaves them running,
        // orphaned, for the rest of the machine's life.
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !terminated {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Report {
    cold: String,
    hot: String,
    memory: String,
}

fn best_and_median(samples: &[f64]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[0], sorted[sorted.len() / 2])
}

/// A side's medians over its rounds: wall time and client CPU seconds.
#[derive(Clone, Copy, Debug)]
struct Medians {
    secs: f64,
    client_cpu: f64,
}

impl Medians {
    fn of(samples: &[Sample]) -> Medians {
        let column = |get: fn(&Sample) -> f64| samples.iter().map(get).collect::<Vec<_>>();
        Medians {
            secs: best_and_median(&column(|s| s.secs)).1,
            client_cpu: best_and_median(&column(|s| s.client_cpu)).1,
        }
    }
}

impl Report {
    /// One side's row; `reference` (rclone's medians) gives the two ratios: speed (rclone's
    /// time over this side's, higher is faster) and CPU (this side's over rclone's).
    fn cold(
        &mut self,
        set: &str,
        tool: &str,
        samples: &[Sample],
        bytes: u64,
        reference: Option<Medians>,
    ) {
        let column = |get: fn(&Sample) -> f64| samples.iter().map(get).collect::<Vec<_>>();
        let (best, median) = best_and_median(&column(|s| s.secs));
        let Medians { client_cpu, .. } = Medians::of(samples);
        let (_, garage_cpu) = best_and_median(&column(|s| s.garage_cpu));
        let gib = bytes as f64 / (1024.0 * MIB as f64);
        let (speed, cpu) = match reference {
            Some(r) => (
                format!("{:.2}×", r.secs / median),
                format!("{:.2}×", client_cpu / r.client_cpu),
            ),
            None => ("".to_owned(), "".to_owned()),
        };
        let _ = writeln!(
            self.cold,
            "| {set} | {tool} | {best:.2} s | {median:.2} s | {:.0} MiB/s | {speed} | {client_cpu:.2} s | {:.2} s | {cpu} | {garage_cpu:.2} s |",
            bytes as f64 / MIB as f64 / median,
            client_cpu / gib,
        );
    }

    fn hot(&mut self, tool: &str, samples: &[f64], bytes: u64) {
        let (best, median) = best_and_median(samples);
        let _ = writeln!(
            self.hot,
            "| {tool} | {best:.2} s | {median:.2} s | {:.0} MiB/s |",
            bytes as f64 / MIB as f64 / median
        );
    }

    fn print(&self) {
        println!("Cold transfer from Garage (best, median of the rounds; CPU: medians):\n");
        println!(
            "| set | tool | best | median | median rate | speed vs rclone (median) | client CPU | client CPU per GiB | CPU vs rclone | Garage CPU |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        print!("{}", self.cold);
        println!("\nHot read of the big object (curl into /dev/null):\n");
        println!("| server | best | median | median rate |\n|---|---|---|---|");
        print!("{}", self.hot);
        println!("\nServer memory:\n");
        println!("| phase | wall time | peak RSS |\n|---|---|---|");
        print!("{}", self.memory);
    }
}
