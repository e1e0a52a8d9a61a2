//! `milepost mount` as a workstation uses it: a real FUSE mount by the real binary, reading
//! from a real `milepost serve` process (SQLite or PostgreSQL, as the lane says) over a
//! loopback S3 behind a latency proxy.
//!
//! - A reservation's files are readable while it materializes (a read waits for the bytes),
//!   and the office still fetches each object from upstream once.
//! - `find`, `stat` and `cmp` agree with the upstream bytes for every file, hostile key
//!   included; the Python `mcap` reader reads every log through the mount as it reads the
//!   original.
//! - The server killed with SIGKILL in the middle of a reader's file and restarted: the read
//!   completes byte-exact (retried, no EIO).
//! - A reservation that expires disappears from the mount; SIGTERM unmounts cleanly.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use milepost_indexer::fleet::FleetSpec;
use milepost_store::{ByteRange, ObjectStore};
use milepost_testkit::{FaultProxy, LoopbackUpstream, TestDatabase};
use rand::RngCore as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::process::{graphql, milepost, sigterm_and_wait, Server, DEADLINE};

const BUCKET: &str = "fleet";
const MIB: usize = 1024 * 1024;
const BIG_KEY: &str = "bulk/lidar-sweep.bin";
const ODD_KEY: &str = "odd/with space+plus%percent.bin";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether a FUSE filesystem is mounted at `point`.
fn is_mounted(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&point.as_ref())
            && fields.get(2).is_some_and(|t| t.starts_with("fuse"))
    })
}

/// A `milepost mount` process; killed and lazily unmounted if it is still there when dropped
/// (a failed test leaves no dead mount behind).
struct Mount {
    child: Child,
    point: PathBuf,
    log: PathBuf,
}

impl Mount {
    fn start(dir: &Path, name: &str, server: &Server, token: &str, extra: &[&str]) -> Mount {
        let point = dir.join(name);
        std::fs::create_dir_all(&point).expect("mount point");
        let log = dir.join(format!("{name}.log"));
        let mut child = milepost(dir)
            .arg("mount")
            .arg(&point)
            .args([
                "--server",
                &format!("http://{}", server.addr),
                "--token",
                token,
            ])
            .args(["--refresh", "1s"])
            .args(extra)
            .env("MILEPOST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn milepost mount");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Drained until the process ends, so that it never writes into a closed pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let banner = rx.recv_timeout(DEADLINE).unwrap_or_default();
        let mut mount = Mount { child, point, log };
        assert!(
            banner.starts_with("milepost mounted") && is_mounted(&mount.point),
            "no mount ({banner:?}); log:\n{}",
            mount.log_text()
        );
        let _ = mount.child.try_wait();
        mount
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: the process unmounts and exits cleanly.
    fn sigterm(&mut self) {
        let pid = self.child.id().to_string();
        let log = self.log.clone();
        sigterm_and_wait(&mut self.child, &pid, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
        assert!(!is_mounted(&self.point), "still mounted after SIGTERM");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// Waits until `check` holds, failing with `what` after `limit`.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf8")
}

/// One line per MCAP log: channels, messages read, messages the statistics count.
const MCAP_SUMMARY: &str = r#"
import sys
from mcap.reader import make_reader
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        messages = sum(1 for _ in reader.iter_messages())
        stats = summary.statistics.message_count if summary and summary.statistics else -1
        print(len(summary.channels) if summary else -1, messages, stats)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_reservation_reads_byte_exact_through_a_server_restart_and_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let fleet = upstream.seed(&FleetSpec::small(11)).await;
    let store = upstream.store.clone();
    let mut big = vec![0u8; 40 * MIB + 12_345];
    rand::rng().fill_bytes(&mut big);
    store
        .put(BUCKET, BIG_KEY, Bytes::from(big))
        .await
        .expect("put");
    store
        .put(
            BUCKET,
            ODD_KEY,
            Bytes::from_static(b"a key with a space, a plus and a percent"),
        )
        .await
        .expect("put");
    let mut keys: Vec<String> = fleet.files().map(|f| f.key.clone()).collect();
    keys.push(BIG_KEY.into());
    keys.push(ODD_KEY.into());
    keys.sort();
    // What upstream holds, written out for `cmp`.
    let expected = dir.path().join("expected");
    let mut total = 0u64;
    for key in &keys {
        let bytes = store
            .get(BUCKET, key, ByteRange::All, None)
            .await
            .expect("get")
            .collect(usize::MAX)
            .await
            .expect("bytes");
        total += bytes.len() as u64;
        let path = expected.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, &bytes).expect("write");
    }

    let proxy = FaultProxy::start(&upstream.s3.endpoint())
        .await
        .expect("proxy");
    let database = TestDatabase::create(dir.path())
        .await
        .expect("test database");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::write(
        dir.path().join("milepost.toml"),
        format!(
            r#"data_dir = "{}"
[server]
listen = "127.0.0.1:{port}"
s3_listen = "127.0.0.1:0"
shutdown_grace = "2s"
[database]
url = "{}"
[upstream]
endpoint = "{}"
region = "us-east-1"
force_path_style = true
[catalog]
bucket = "{BUCKET}"
sync_interval = "off"
[cache]
part_size = "1MiB"
concurrency = 4
"#,
            dir.path().join("data").display(),
            database.url(),
            proxy.endpoint()
        ),
    )
    .expect("config");
    let token =
        run(milepost(dir.path()).args(["token", "create", "--name", "ana", "--role", "admin"]))
            .trim()
            .to_owned();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut server = Server::start(dir.path(), 1).await;
    let synced = graphql(
        &client,
        &server,
        &token,
        "mutation { syncCatalog { errors } }",
        json!({}),
    )
    .await;
    assert_eq!(synced["syncCatalog"]["errors"], json!([]), "{synced}");
    let objects: Vec<Value> = keys
        .iter()
        .map(|k| json!({ "bucket": BUCKET, "key": k }))
        .collect();
    let created = graphql(
        &client,
        &server,
        &token,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { totalBytes } }",
        json!({ "input": { "name": "drives", "objects": objects } }),
    )
    .await;
    assert_eq!(created["createDataset"]["totalBytes"].as_u64(), Some(total));

    // Reserved with upstream slowed to 100 ms a request: the mount reads while the office is
    // still materializing.
    proxy.set_latency(Duration::from_millis(100));
    let reserved = graphql(
        &client,
        &server,
        &token,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": { "dataset": "drives", "ttlSeconds": 3600 } }),
    )
    .await;
    let id = reserved["reserveDataset"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let blocks = dir.path().join("blocks-1");
    let mut mount = Mount::start(
        dir.path(),
        "mnt",
        &server,
        &token,
        &["--cache-dir", &blocks.to_string_lossy()],
    );
    let top = mount.point.join("drives@1");
    assert_eq!(names_in(&mount.point), ["drives@1"]);
    let state = |server: &Server| {
        let (client, token, id) = (client.clone(), token.clone(), id.clone());
        let server_addr = server.addr.clone();
        async move {
            let body: Value = client
                .post(format!("http://{server_addr}/graphql"))
                .bearer_auth(&token)
                .json(&json!({ "query": "query($id: ID!) { reservation(id: $id) { state } }", "variables": { "id": id } }))
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            body["data"]["reservation"]["state"]
                .as_str()
                .expect("state")
                .to_owned()
        }
    };
    let before = state(&server).await;
    assert!(before == "PENDING" || before == "MATERIALIZING", "{before}");
    let read = std::fs::read(top.join(BUCKET).join(BIG_KEY)).expect("read while materializing");
    assert_eq!(
        sha(&read),
        sha(&std::fs::read(expected.join(BIG_KEY)).expect("expected"))
    );

    let started = Instant::now();
    while state(&server).await != "READY" {
        assert!(started.elapsed() < DEADLINE * 3, "not READY");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set_latency(Duration::ZERO);
    let stats = graphql(
        &client,
        &server,
        &token,
        "{ cacheStats { bytesFromUpstream } }",
        json!({}),
    )
    .await;
    assert_eq!(
        stats["cacheStats"]["bytesFromUpstream"].as_u64(),
        Some(total),
        "the mount's reads joined the reservation's fetches: each object once from upstream"
    );

    // find, stat and cmp over every file.
    let found = run(Command::new("find").arg(&top).args(["-type", "f"]));
    let mut found: Vec<String> = found
        .lines()
        .map(|l| {
            l.strip_prefix(&format!("{}/{BUCKET}/", top.display()))
                .expect("under the bucket")
                .to_owned()
        })
        .collect();
    found.sort();
    assert_eq!(found, keys);
    for key in &keys {
        let size = run(Command::new("stat")
            .args(["-c", "%s"])
            .arg(top.join(BUCKET).join(key)));
        let want = std::fs::metadata(expected.join(key))
            .expect("expected")
            .len();
        assert_eq!(size.trim(), want.to_string(), "{key}");
        run(Command::new("cmp")
            .arg(expected.join(key))
            .arg(top.join(BUCKET).join(key)));
    }
    let logs: Vec<&String> = keys.iter().filter(|k| k.ends_with(".mcap")).collect();
    assert!(!logs.is_empty());
    let through_mount = run(Command::new("python3")
        .args(["-c", MCAP_SUMMARY])
        .args(logs.iter().map(|k| top.join(BUCKET).join(k))));
    let original = run(Command::new("python3")
        .args(["-c", MCAP_SUMMARY])
        .args(logs.iter().map(|k| expected.join(k))));
    assert_eq!(through_mount, original);
    assert!(
        through_mount
            .lines()
            .all(|l| !l.starts_with("-1") && !l.contains(" 0 ")),
        "{through_mount}"
    );

    // A second mount of the version by name, with its own block cache and little memory: its
    // reader is a quarter through the big file when the server is killed, and goes on.
    let mut by_name = Mount::start(
        dir.path(),
        "mnt-by-name",
        &server,
        &token,
        &[
            "--dataset",
            "drives@1",
            "--cache-dir",
            &dir.path().join("blocks-2").to_string_lossy(),
            "--memory",
            "4MiB",
        ],
    );
    let big_path = by_name.point.join("drives@1").join(BUCKET).join(BIG_KEY);
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    let (first_part, first_part_read) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::open(&big_path).expect("open");
        let mut data = vec![0u8; 8 * MIB];
        file.read_exact(&mut data).expect("the first 8 MiB");
        first_part.send(()).expect("tell");
        wait.recv().expect("go on");
        file.read_to_end(&mut data).map(|_| data)
    });
    first_part_read
        .recv_timeout(DEADLINE)
        .expect("the reader started");
    server.sigkill();
    go_on.send(()).expect("go on");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!reader.is_finished(), "the reader waits for the server");
    server = Server::start(dir.path(), 2).await;
    let data = reader
        .join()
        .expect("reader thread")
        .expect("no EIO: the read went on after the restart");
    assert_eq!(
        sha(&data),
        sha(&std::fs::read(expected.join(BIG_KEY)).expect("expected"))
    );
    assert!(
        by_name.log_text().contains("retrying"),
        "the read met the dead server; log:\n{}",
        by_name.log_text()
    );

    // A reservation that expires disappears from the mount.
    graphql(
        &client,
        &server,
        &token,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name } }",
        json!({ "input": { "name": "brief", "objects": [{ "bucket": BUCKET, "key": ODD_KEY }] } }),
    )
    .await;
    graphql(
        &client,
        &server,
        &token,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": { "dataset": "brief", "ttlSeconds": 4 } }),
    )
    .await;
    eventually("the new reservation shows", Duration::from_secs(10), || {
        names_in(&mount.point) == ["brief@1", "drives@1"]
    });
    assert_eq!(
        std::fs::read(mount.point.join("brief@1").join(BUCKET).join(ODD_KEY)).expect("read"),
        std::fs::read(expected.join(ODD_KEY)).expect("expected")
    );
    eventually(
        "the expired reservation is gone",
        Duration::from_secs(15),
        || names_in(&mount.point) == ["drives@1"],
    );
    assert!(!mount.point.join("brief@1").exists());

    mount.sigterm();
    by_name.sigterm();
    server.sigterm();
    drop(database);
}
