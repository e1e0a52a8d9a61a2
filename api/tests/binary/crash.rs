//! Crash safety of the real `milepost` binary: `serve` against a loopback S3 (through a
//! `FaultProxy` adding latency), a ~64 MiB dataset reserved, the process killed with SIGKILL
//! mid-materialization; no partial file is visible in the content store or under a view;
//! after a restart the reservation reaches READY with byte-exact files, and objects that were
//! verified and recorded before the crash are not fetched again.
//!
//! SQLite only: the two processes share the database through the config file, and the
//! PostgreSQL lane of the same scenario in-process is `tests/tests/faults.rs` (the restart
//! path itself is the same code on both backends).
//!
//! (Over 600 lines: three crash scenarios of the real binary sharing its process and trace helpers.)

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use milepost_schema::entity::cache_entry;
use milepost_schema::enums::CacheEntryState;
use milepost_store::ObjectStore;
use milepost_testkit::{FaultProxy, LoopbackUpstream, TestDatabase};
use rand::RngCore as _;
use sea_orm::EntityTrait as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::process::{graphql, milepost, Server, DEADLINE};

const BUCKET: &str = "fleet";
const MIB: usize = 1024 * 1024;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The content store's file name of a version: `sha256(bucket NUL key NUL etag)`.
fn content_id(key: &str, etag: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(BUCKET.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(etag.as_bytes());
    hex::encode(hasher.finalize())
}

/// An object as seeded.
#[derive(Clone, Debug)]
struct Seeded {
    key: String,
    etag: String,
    size: u64,
    sha: String,
}

const RESERVATION: &str = r#"query($id: ID!) { reservation(id: $id) {
    state objectsTotal objectsDone bytesTotal bytesDone localPath error } }"#;

/// Regular files under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// Every file of the content store is named for a seeded object and holds exactly its bytes;
/// every file of a view holds exactly the bytes of the object its path names. Returns the
/// keys found in the content store.
fn assert_no_partial_files(cache: &Path, seeded: &[Seeded]) -> HashSet<String> {
    let by_name: BTreeMap<String, &Seeded> = seeded
        .iter()
        .map(|s| (content_id(&s.key, &s.etag), s))
        .collect();
    let mut cached = HashSet::new();
    for path in files_under(&cache.join("objects")) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(object) = by_name.get(name) else {
            // The only other content: the dataset's manifest, written by the office itself
            // (through the write-back path) and checked by the reservation tests.
            let data = std::fs::read(&path).expect("read content file");
            assert!(
                data.starts_with(b"PAR1") && data.ends_with(b"PAR1"),
                "{}: a content file of no object",
                path.display()
            );
            continue;
        };
        let data = std::fs::read(&path).expect("read content file");
        assert_eq!(
            data.len() as u64,
            object.size,
            "{}: partial content file",
            object.key
        );
        assert_eq!(sha(&data), object.sha, "{}: wrong bytes", object.key);
        cached.insert(object.key.clone());
    }
    let views = cache.join("views");
    for path in files_under(&views) {
        let relative = path.strip_prefix(&views).expect("under views");
        let parts: Vec<&str> = relative
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .collect();
        assert!(parts.len() >= 3 && parts[1] == BUCKET, "{}", path.display());
        let key = parts[2..].join("/");
        let object = seeded
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("{}: a view file of no object", path.display()));
        let data = std::fs::read(&path).expect("read view file");
        assert_eq!(
            sha(&data),
            object.sha,
            "{}: partial or wrong view file",
            path.display()
        );
    }
    cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_materialization_then_restart_reaches_ready_with_exact_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let s3 = &upstream.s3;
    let store = upstream.store.clone();
    let proxy = FaultProxy::start(&s3.endpoint()).await.expect("proxy");

    // 64 MiB in objects of different sizes, so that the small ones finish (content files and
    // rows) while the large ones are still downloading when the process dies.
    let mut seeded = Vec::new();
    for (i, size) in [2 * MIB, 6 * MIB, 24 * MIB, 32 * MIB]
        .into_iter()
        .enumerate()
    {
        let mut data = vec![0u8; size];
        rand::rng().fill_bytes(&mut data);
        let key = format!("crash/part-{i}.bin");
        let meta = store
            .put(BUCKET, &key, Bytes::from(data.clone()))
            .await
            .expect("put");
        seeded.push(Seeded {
            key,
            etag: meta.etag,
            size: size as u64,
            sha: sha(&data),
        });
    }
    let total: u64 = seeded.iter().map(|s| s.size).sum();

    let data_dir = dir.path().join("data");
    std::fs::write(
        dir.path().join("milepost.toml"),
        format!(
            r#"data_dir = "{}"
[server]
listen = "127.0.0.1:0"
s3_listen = "127.0.0.1:0"
shutdown_grace = "2s"
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
            data_dir.display(),
            proxy.endpoint()
        ),
    )
    .expect("config");
    let created = milepost(dir.path())
        .args(["token", "create", "--name", "admin", "--role", "admin"])
        .output()
        .expect("token create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout)
        .expect("utf8")
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
    let objects: Vec<Value> = seeded
        .iter()
        .map(|s| json!({ "bucket": BUCKET, "key": s.key }))
        .collect();
    let dataset = graphql(
        &client,
        &server,
        &token,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { totalBytes } }",
        json!({ "input": { "name": "crash", "objects": objects } }),
    )
    .await;
    assert_eq!(dataset["createDataset"]["totalBytes"].as_u64(), Some(total));

    // 100 ms per ranged GET, 4 at a time: the 64 parts take about 2 s.
    proxy.set_latency(Duration::from_millis(100));
    let reserved = graphql(
        &client,
        &server,
        &token,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": { "dataset": "crash", "ttlSeconds": 3600 } }),
    )
    .await;
    let id = reserved["reserveDataset"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Killed twice: once in the first materialization, once in the one resumed after the
    // first restart; each time with at least one more object finished.
    let cache = data_dir.join("cache");
    let mut recorded = HashSet::new();
    for crash in 1..=2u64 {
        let started = Instant::now();
        let before_kill = loop {
            let r = graphql(&client, &server, &token, RESERVATION, json!({ "id": id })).await;
            let r = r["reservation"].clone();
            let done = r["bytesDone"].as_u64().expect("bytesDone");
            assert!(
                r["state"] == "MATERIALIZING" || r["state"] == "PENDING",
                "crash {crash}: ended before the kill: {r}"
            );
            if r["objectsDone"].as_u64() >= Some(crash) && done > 0 && done < total {
                break r;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "crash {crash}: no progress: {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        server.sigkill();

        // Dead mid-materialization: only whole, verified files are visible.
        let cached = assert_no_partial_files(&cache, &seeded);
        assert!(
            !cache.join("views").join(&id).exists(),
            "crash {crash}: no view of a reservation that was not ready"
        );
        assert!(
            cached.len() < seeded.len(),
            "crash {crash}: killed before the end: {before_kill}"
        );
        eprintln!(
            "crash {crash} at {before_kill}: {} objects in the content store, {} staging files",
            cached.len(),
            files_under(&cache.join("staging")).len()
        );
        let db = milepost_schema::connect(&format!(
            "sqlite://{}",
            data_dir.join("catalog.db").display()
        ))
        .await
        .expect("database");
        recorded = cache_entry::Entity::find()
            .all(&db)
            .await
            .expect("cache entries")
            .into_iter()
            .filter(|row| row.state == CacheEntryState::Ready)
            .map(|row| row.key)
            .collect();
        db.close().await.expect("close");
        if crash == 1 {
            server = Server::start(dir.path(), 2).await;
        }
    }

    // Restart: the reservation resumes and reaches READY.
    proxy.set_latency(Duration::ZERO);
    proxy.reset_counters();
    let mut server = Server::start(dir.path(), 3).await;
    let started = Instant::now();
    let ready = loop {
        let r = graphql(&client, &server, &token, RESERVATION, json!({ "id": id })).await;
        let r = r["reservation"].clone();
        match r["state"].as_str() {
            Some("READY") => break r,
            Some("PENDING") | Some("MATERIALIZING") => {}
            _ => panic!("{r}; log:\n{}", server.log_text()),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not READY after the restart: {r}; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["bytesDone"].as_u64(), Some(total), "{ready}");
    let local = PathBuf::from(ready["localPath"].as_str().expect("localPath"));
    for object in &seeded {
        let path = local.join(BUCKET).join(&object.key);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(sha(&data), object.sha, "{}", object.key);
    }
    assert_eq!(files_under(&local).len(), seeded.len());
    assert_eq!(assert_no_partial_files(&cache, &seeded).len(), seeded.len());
    assert!(
        files_under(&cache.join("staging")).is_empty(),
        "staging files of the killed process are removed at start-up"
    );
    // What was verified and recorded before the crash is not fetched again.
    for request in proxy.seen() {
        for key in &recorded {
            assert!(
                !(request.method == "GET" && request.target.contains(key.as_str())),
                "{key} was cached before the crash but fetched again: {}",
                request.target
            );
        }
    }
    server.sigterm();
    proxy.shutdown().await;
    drop(upstream);
}

/// 200 objects acknowledged by the gateway while S3 is slow (every upstream request delayed),
/// the process killed with SIGKILL with most of them still queued or uploading; after a
/// restart the journal drives every one of them to S3 with the acknowledged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_acknowledged_uploads_pending_then_restart_uploads_them_all() {
    use futures::StreamExt as _;
    use milepost_store::{list_all, ByteRange, S3Store, UpstreamSettings};

    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let s3 = &upstream.s3;
    let store = upstream.store.clone();
    let proxy = FaultProxy::start(&s3.endpoint()).await.expect("proxy");
    proxy.set_latency(Duration::from_millis(250));
    let data_dir = dir.path().join("data");
    std::fs::write(
        dir.path().join("milepost.toml"),
        format!(
            r#"data_dir = "{}"
[server]
listen = "127.0.0.1:0"
s3_listen = "127.0.0.1:0"
shutdown_grace = "2s"
[upstream]
endpoint = "{}"
region = "us-east-1"
force_path_style = true
[catalog]
bucket = "{BUCKET}"
sync_interval = "off"
"#,
            data_dir.display(),
            proxy.endpoint()
        ),
    )
    .expect("config");
    let credentials = crate::process::s3_token(dir.path(), "vehicle");

    let mut server = Server::start(dir.path(), 1).await;
    let gateway = S3Store::new(&UpstreamSettings {
        endpoint: Some(format!("http://{}", server.s3_addr)),
        region: "us-east-1".to_owned(),
        force_path_style: true,
        credentials: Some(credentials),
        ..UpstreamSettings::default()
    })
    .expect("gateway client");
    let objects: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            let mut data = vec![0u8; 4096 + i * 37];
            rand::rng().fill_bytes(&mut data);
            (format!("ingest/obj-{i:03}.bin"), data)
        })
        .collect();
    let acknowledged: Vec<_> = futures::stream::iter(objects.iter())
        .map(|(key, data)| {
            let gateway = &gateway;
            async move {
                gateway
                    .put(BUCKET, key, Bytes::from(data.clone()))
                    .await
                    .map(|_| key.clone())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        acknowledged.iter().all(Result::is_ok),
        "every PUT acknowledged: {acknowledged:?}"
    );
    server.sigkill();
    let in_s3 = list_all(store.as_ref(), BUCKET, "ingest/")
        .await
        .expect("list")
        .len();
    assert!(
        in_s3 < objects.len(),
        "the kill came while uploads were pending ({in_s3} of 200 already in S3)"
    );

    // Restart with a fast S3: the journal uploads the rest.
    proxy.set_latency(Duration::ZERO);
    let mut server = Server::start(dir.path(), 2).await;
    let started = Instant::now();
    loop {
        let listed = list_all(store.as_ref(), BUCKET, "ingest/")
            .await
            .expect("list");
        if listed.len() == objects.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of 200 in S3 a minute after the restart; log:\n{}",
            listed.len(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (key, data) in &objects {
        let got = store
            .get(BUCKET, key, ByteRange::All, None)
            .await
            .expect("get")
            .collect(1 << 20)
            .await
            .expect("body");
        assert_eq!(sha(&got), sha(data), "{key}: the acknowledged bytes");
    }
    server.sigterm();
    proxy.shutdown().await;
    drop(upstream);
}

/// One system call of an `strace -f -yy` trace, by the line it completed on.
#[derive(Debug)]
struct TracedCall {
    /// Index of the line the call started on.
    started: usize,
    /// Index of the line the call returned on (the same line unless it was interrupted by
    /// another thread's output: `<unfinished ...>` / `<... resumed>`).
    returned: usize,
    /// The system call's name.
    name: String,
    /// Its arguments as strace printed them (paths of descriptors in `<...>`).
    args: String,
    /// Its return value as printed.
    result: String,
}

/// Parses an `strace -f` trace into calls in order of their start.
fn parse_trace(text: &str) -> Vec<TracedCall> {
    let mut calls: Vec<TracedCall> = Vec::new();
    // pid -> index into calls of its unfinished call.
    let mut pending: std::collections::HashMap<String, usize> = Default::default();
    for (line_no, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if let Some(index) = pending.remove(pid) {
                let tail = resumed.split_once("resumed>").map_or("", |(_, t)| t);
                let result = tail.rsplit_once(" = ").map_or("", |(_, r)| r);
                calls[index].args.push_str(tail);
                calls[index].returned = line_no;
                calls[index].result = result.trim().to_owned();
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.contains(' ') || name.starts_with('+') || name.starts_with('-') {
            continue;
        }
        let unfinished = args.ends_with("<unfinished ...>");
        let result = if unfinished {
            String::new()
        } else {
            args.rsplit_once(" = ")
                .map_or("", |(_, r)| r)
                .trim()
                .to_owned()
        };
        calls.push(TracedCall {
            started: line_no,
            returned: if unfinished { usize::MAX } else { line_no },
            name: name.to_owned(),
            args: args.to_owned(),
            result,
        });
        if unfinished {
            pending.insert(pid.to_owned(), calls.len() - 1);
        }
    }
    calls
}

/// Whether `call` succeeded.
fn succeeded(call: &TracedCall) -> bool {
    call.returned != usize::MAX && !call.result.starts_with('-')
}

/// The PostgreSQL lane of the durability test: a database of its own on the server named by
/// `MILEPOST_TEST_DATABASE_URL` (dropped with the guard), and its URL without TLS.
async fn postgres_database_for_test() -> Option<(TestDatabase, String)> {
    use sea_orm::ConnectionTrait as _;
    let server_url = milepost_testkit::postgres_server_url()?;
    let admin = sea_orm::Database::connect(&server_url)
        .await
        .expect("postgres");
    // Durable commits are the server's: a commit answered is on disk only with these.
    for (setting, wanted) in [("fsync", "on"), ("synchronous_commit", "on")] {
        let row = admin
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                format!("SELECT current_setting('{setting}') AS v"),
            ))
            .await
            .expect("setting")
            .expect("row");
        let value: String = row.try_get("", "v").expect("value");
        assert_eq!(value, wanted, "PostgreSQL {setting}");
    }
    let database = TestDatabase::on_postgres(&server_url)
        .await
        .expect("create database");
    // In clear, so that the trace shows the COMMIT (sqlx prefers TLS when the server has it).
    let separator = if database.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{separator}sslmode=disable", database.url());
    Some((database, url))
}

/// Acceptance (durable acknowledgement): the real binary, traced with `strace -f`, fsyncs an
/// uploaded object's data, renames it into the content store and fsyncs that directory, and
/// makes its journal commit durable (SQLite: an fsync of the WAL; PostgreSQL: the COMMIT
/// answered by a server with `fsync` and `synchronous_commit` on) before it writes the
/// response that acknowledges the PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_put_is_durable_before_the_response_is_written() {
    use milepost_store::{S3Store, UpstreamSettings};

    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is needed (apt-get install strace)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let s3 = &upstream.s3;
    let postgres = postgres_database_for_test().await;
    let data_dir = dir.path().join("data");
    let database = match &postgres {
        Some((_, url)) => format!("[database]\nurl = \"{url}\"\n"),
        None => String::new(),
    };
    std::fs::write(
        dir.path().join("milepost.toml"),
        format!(
            r#"data_dir = "{}"
[server]
listen = "127.0.0.1:0"
s3_listen = "127.0.0.1:0"
shutdown_grace = "2s"
[upstream]
endpoint = "{}"
region = "us-east-1"
force_path_style = true
[catalog]
bucket = "{BUCKET}"
sync_interval = "off"
{database}"#,
            data_dir.display(),
            s3.endpoint(),
        ),
    )
    .expect("config");
    let credentials = crate::process::s3_token(dir.path(), "vehicle");

    let trace = dir.path().join("strace.txt");
    let trace_arg = trace.display().to_string();
    let mut server = Server::start_under(
        dir.path(),
        1,
        &[
            "strace",
            "-f",
            "-yy",
            "-s",
            "64",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,write,writev,sendto,sendmsg,recvfrom,read",
            "-o",
            &trace_arg,
        ],
    )
    .await;
    let gateway = S3Store::new(&UpstreamSettings {
        endpoint: Some(format!("http://{}", server.s3_addr)),
        region: "us-east-1".to_owned(),
        force_path_style: true,
        credentials: Some(credentials),
        ..UpstreamSettings::default()
    })
    .expect("gateway client");
    let mut data = vec![0u8; 300 * 1024];
    rand::rng().fill_bytes(&mut data);
    let key = "durable/acknowledged.bin";
    let meta = gateway
        .put(BUCKET, key, Bytes::from(data))
        .await
        .expect("PUT acknowledged");
    server.sigterm_wrapped();

    let text = std::fs::read_to_string(&trace).expect("trace");
    if std::env::var_os("MILEPOST_KEEP_TRACE").is_some() {
        let _ = std::fs::copy(&trace, "/tmp/milepost-put.strace");
    }
    let calls = parse_trace(&text);
    let content = content_id(key, &meta.etag);
    let gateway_port = server.s3_addr.rsplit_once(':').expect("port").1.to_owned();
    let fail = |what: &str| -> ! {
        let tail: Vec<&str> = text.lines().rev().take(200).collect();
        panic!(
            "{what}; last lines of the trace, newest first:\n{}",
            tail.join("\n")
        )
    };
    // The response: the first write on the gateway's connection carrying a 200.
    let response = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                && c.args.contains(&format!("127.0.0.1:{gateway_port}->"))
                && c.args.contains("HTTP/1.1 200")
        })
        .unwrap_or_else(|| fail("no 200 response written on the gateway's connection"));
    // The install: the staged file renamed to the content file.
    let rename = calls
        .iter()
        .find(|c| c.name.starts_with("rename") && c.args.contains(&content) && succeeded(c))
        .unwrap_or_else(|| fail("no rename into the content store"));
    let staged = rename
        .args
        .split('"')
        .nth(1)
        .unwrap_or_else(|| fail("the rename's source path"))
        .to_owned();
    let content_dir = rename
        .args
        .split('"')
        .nth(3)
        .and_then(|to| to.rsplit_once('/'))
        .map(|(dir, _)| dir.to_owned())
        .unwrap_or_else(|| fail("the rename's target directory"));
    let is_sync = |c: &TracedCall| matches!(c.name.as_str(), "fsync" | "fdatasync");
    let data_synced = calls
        .iter()
        .find(|c| is_sync(c) && c.args.contains(&format!("<{staged}>")) && succeeded(c))
        .unwrap_or_else(|| fail(&format!("no fsync of the staged data {staged}")));
    assert!(
        data_synced.returned < rename.started,
        "the data is fsynced before it is installed"
    );
    let dir_synced = calls
        .iter()
        .find(|c| {
            is_sync(c)
                && c.started > rename.returned
                && c.args.contains(&format!("<{content_dir}>"))
                && succeeded(c)
        })
        .unwrap_or_else(|| fail(&format!("no fsync of {content_dir} after the rename")));
    assert!(
        dir_synced.returned < response.started,
        "the content directory is fsynced before the response (line {} vs {})",
        dir_synced.returned,
        response.started
    );
    match &postgres {
        None => {
            let wal_synced = calls
                .iter()
                .find(|c| {
                    is_sync(c)
                        && c.started > rename.returned
                        && c.args.contains("catalog.db-wal>")
                        && succeeded(c)
                })
                .unwrap_or_else(|| fail("no fsync of the SQLite WAL after the install"));
            assert!(
                wal_synced.returned < response.started,
                "the journal commit is on disk before the response (line {} vs {})",
                wal_synced.returned,
                response.started
            );
        }
        Some(_) => {
            let commit = calls
                .iter()
                .rev()
                .find(|c| {
                    matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                        && c.started > rename.returned
                        && c.started < response.started
                        && c.args.contains(":5432]>")
                        && c.args.contains("COMMIT")
                })
                .unwrap_or_else(|| {
                    fail("no COMMIT sent to PostgreSQL between install and response")
                });
            let socket = commit.args.split('>').next().unwrap_or_default().to_owned();
            let answered = calls.iter().find(|c| {
                matches!(c.name.as_str(), "read" | "recvfrom")
                    && c.started > commit.started
                    && c.args.starts_with(&socket)
                    && succeeded(c)
            });
            let answered = answered.unwrap_or_else(|| fail("no answer to the COMMIT"));
            assert!(
                answered.returned < response.started,
                "the COMMIT is answered before the response (line {} vs {})",
                answered.returned,
                response.started
            );
        }
    }
    drop(postgres);
    drop(upstream);
}
