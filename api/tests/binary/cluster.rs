//! An office cluster of three real `milepost serve` processes (`[cluster] enabled`) on one
//! PostgreSQL database and one office tier: a loopback S3 server, or the Garage cluster that
//! `MILEPOST_TEST_TIER_ENDPOINT` (with `_KEY`, `_SECRET`, `_BUCKET`) names.
//!
//! 0. A drive registered at node 1 is found by search at node 3; a token revoked at node 2's
//!    host stops working at every node within the token cache's TTL (10 s).
//! 1. 16 reservations of one dataset and 16 reads of its largest object (`/data` and the S3
//!    gateway), spread over the three nodes at once: the upstream serves each object once
//!    (the nodes' `milepost_upstream_bytes_total` add up to the dataset's bytes exactly), and
//!    every byte read and reserved is exact.
//! 2. The node materializing a reservation is killed with SIGKILL: another node takes it over
//!    once the lease ends and makes it READY, bytes exact.
//! 3. The node holding 200 acknowledged uploads (some keys written twice) is killed with
//!    SIGKILL before they reached S3: the other nodes upload all of them, with the newest
//!    version of each key. Before the kill, another node serves those writes too.
//! 4. A node cut off from PostgreSQL while it uploads an acknowledged write (a test of its
//!    own, two nodes): it stops the upload before its lease can end, so when its link comes
//!    back that old upload never lands over the newer write another node uploaded meanwhile.
//!
//! PostgreSQL only (cluster mode is): skipped, saying so, without `MILEPOST_TEST_DATABASE_URL`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use milepost_store::{list_all, ByteRange, ObjectStore, S3Store, UpstreamSettings};
use milepost_testkit::{FaultProxy, LoopbackUpstream, TcpProxy, TestDatabase};
use rand::RngCore as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::process::{graphql, milepost, Server, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "fleet";
const MIB: usize = 1024 * 1024;
const NODES: usize = 3;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The office tier the nodes share.
struct Tier {
    endpoint: String,
    bucket: String,
    prefix: String,
    key: String,
    secret: String,
    _loopback: Option<LoopbackUpstream>,
}

async fn tier() -> Tier {
    let prefix = format!("cluster-test-{:016x}/", rand::random::<u64>());
    match std::env::var("MILEPOST_TEST_TIER_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let var = |name: &str| {
                std::env::var(name)
                    .unwrap_or_else(|_| panic!("{name} is needed with MILEPOST_TEST_TIER_ENDPOINT"))
            };
            Tier {
                endpoint,
                bucket: var("MILEPOST_TEST_TIER_BUCKET"),
                prefix,
                key: var("MILEPOST_TEST_TIER_KEY"),
                secret: var("MILEPOST_TEST_TIER_SECRET"),
                _loopback: None,
            }
        }
        _ => {
            let loopback = LoopbackUpstream::start("tier").await;
            Tier {
                endpoint: loopback.endpoint(),
                bucket: "tier".to_owned(),
                prefix,
                key: ACCESS_KEY.to_owned(),
                secret: SECRET_KEY.to_owned(),
                _loopback: Some(loopback),
            }
        }
    }
}

/// Writes node `n`'s config under `root/node-<n>` and returns that directory.
fn node_dir(
    root: &Path,
    n: usize,
    database_url: &str,
    upstream_endpoint: &str,
    tier: &Tier,
) -> PathBuf {
    let dir = root.join(format!("node-{n}"));
    std::fs::create_dir_all(&dir).expect("node dir");
    std::fs::write(
        dir.join("milepost.toml"),
        format!(
            r#"data_dir = "{data}"
office = "hq"
[server]
listen = "127.0.0.1:0"
s3_listen = "127.0.0.1:0"
shutdown_grace = "2s"
[database]
url = "{database_url}"
[upstream]
endpoint = "{upstream_endpoint}"
region = "us-east-1"
force_path_style = true
[catalog]
bucket = "{BUCKET}"
sync_interval = "off"
[cache]
part_size = "1MiB"
concurrency = 4
expiry_check = "1s"
tier = "s3"
tier_endpoint = "{tier_endpoint}"
tier_bucket = "{tier_bucket}"
tier_prefix = "{tier_prefix}"
tier_access_key_id = "{tier_key}"
tier_secret_access_key = "{tier_secret}"
[cluster]
enabled = true
node_id = "node-{n}"
lease = "3s"
"#,
            data = dir.join("data").display(),
            tier_endpoint = tier.endpoint,
            tier_bucket = tier.bucket,
            tier_prefix = tier.prefix,
            tier_key = tier.key,
            tier_secret = tier.secret,
        ),
    )
    .expect("config");
    dir
}

fn cli_output(dir: &Path, args: &[&str]) -> String {
    let out = milepost(dir).args(args).output().expect("milepost");
    assert!(
        out.status.success(),
        "milepost {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// `milepost_upstream_bytes_total` of a node.
async fn upstream_bytes(client: &reqwest::Client, server: &Server) -> u64 {
    let text = client
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("milepost_upstream_bytes_total{office=\"hq\"} "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("no milepost_upstream_bytes_total in:\n{text}"))
}

const RESERVATION: &str = r#"query($id: ID!) { reservation(id: $id) {
    state objectsTotal objectsDone bytesTotal bytesDone error } }"#;

/// Waits until reservation `id` is READY (read at `server`), failing on FAILED or after
/// `deadline`.
async fn ready(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    id: &str,
    deadline: Duration,
) -> Value {
    let started = Instant::now();
    loop {
        let r = graphql(client, server, token, RESERVATION, json!({ "id": id })).await;
        let r = r["reservation"].clone();
        match r["state"].as_str() {
            Some("READY") => return r,
            Some("PENDING" | "MATERIALIZING") => {}
            _ => panic!("reservation {id}: {r}"),
        }
        assert!(
            started.elapsed() < deadline,
            "reservation {id} not READY after {deadline:?}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seeds `sizes` random objects under `prefix`; returns (key, bytes) of each.
async fn seed(store: &dyn ObjectStore, prefix: &str, sizes: &[usize]) -> Vec<(String, Vec<u8>)> {
    let mut seeded = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let mut data = vec![0u8; *size];
        rand::rng().fill_bytes(&mut data);
        let key = format!("{prefix}/part-{i}.bin");
        store
            .put(BUCKET, &key, Bytes::from(data.clone()))
            .await
            .expect("seed");
        seeded.push((key, data));
    }
    seeded
}

async fn create_dataset(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    name: &str,
    objects: &[(String, Vec<u8>)],
) {
    let keys: Vec<Value> = objects
        .iter()
        .map(|(key, _)| json!({ "bucket": BUCKET, "key": key }))
        .collect();
    let total: usize = objects.iter().map(|(_, data)| data.len()).sum();
    let created = graphql(
        client,
        server,
        token,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { totalBytes } }",
        json!({ "input": { "name": name, "objects": keys } }),
    )
    .await;
    assert_eq!(
        created["createDataset"]["totalBytes"].as_u64(),
        Some(total as u64),
        "{created}"
    );
}

async fn reserve(client: &reqwest::Client, server: &Server, token: &str, dataset: &str) -> String {
    let reserved = graphql(
        client,
        server,
        token,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": { "dataset": dataset, "ttlSeconds": 3600 } }),
    )
    .await;
    reserved["reserveDataset"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reserved}"))
        .to_owned()
}

/// Reads every object through `server`'s `/data` and compares it with the seeded bytes.
async fn assert_exact_through(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    objects: &[(String, Vec<u8>)],
) {
    for (key, data) in objects {
        let body = client
            .get(format!("http://{}/data/{BUCKET}/{key}", server.addr))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /data")
            .error_for_status()
            .expect("200")
            .bytes()
            .await
            .expect("body");
        assert_eq!(sha(&body), sha(data), "{key} through {}", server.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_fetch_once_and_finish_a_killed_nodes_work() {
    let Some(server_url) = milepost_testkit::postgres_server_url() else {
        eprintln!("skipped: cluster mode needs PostgreSQL (MILEPOST_TEST_DATABASE_URL)");
        return;
    };
    let database = TestDatabase::on_postgres(&server_url)
        .await
        .expect("test database");
    let root = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let store = upstream.store.clone();
    // Nodes 3 and 2 reach S3 through proxies that can make them slow (scenarios 2 and 3).
    let slow = FaultProxy::start(&upstream.endpoint())
        .await
        .expect("proxy");
    let slow_uploads = FaultProxy::start(&upstream.endpoint())
        .await
        .expect("proxy");
    let node1_proxy = FaultProxy::start(&upstream.endpoint())
        .await
        .expect("proxy");
    let tier = tier().await;
    let dirs: Vec<PathBuf> = (1..=NODES)
        .map(|n| {
            let endpoint = match n {
                3 => slow.endpoint(),
                2 => slow_uploads.endpoint(),
                _ => node1_proxy.endpoint(),
            };
            node_dir(root.path(), n, database.url(), &endpoint, &tier)
        })
        .collect();
    let token = cli_output(
        &dirs[0],
        &["token", "create", "--name", "admin", "--role", "admin"],
    )
    .trim()
    .to_owned();
    let credentials = crate::process::s3_token(&dirs[0], "vehicle");
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(Server::start(dir, u32::try_from(i).unwrap_or(0)).await);
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    let status = cli_output(&dirs[0], &["cluster", "status", "--json"]);
    let status: Value = serde_json::from_str(&status).expect("status json");
    let alive: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["alive"] == json!(true))
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(alive, ["node-1", "node-2", "node-3"], "{status}");
    // Every node answers for the cluster in GraphQL too (the web catalog's cache page).
    for (i, node) in nodes.iter().enumerate() {
        let cluster = graphql(
            &client,
            node,
            &token,
            "{ cluster { thisNode nodes { nodeId alive } } }",
            json!({}),
        )
        .await;
        assert_eq!(
            cluster["cluster"]["thisNode"],
            json!(format!("node-{}", i + 1)),
            "{cluster}"
        );
        assert_eq!(
            cluster["cluster"]["nodes"]
                .as_array()
                .map(|nodes| nodes.iter().filter(|n| n["alive"] == json!(true)).count()),
            Some(NODES),
            "{cluster}"
        );
    }

    // 0. A drive registered at node 1 is found by search at node 3 (the change feed); a
    //    token revoked at node 2's host stops working at every node (the token caches).
    let pipeline = cli_output(
        &dirs[0],
        &["token", "create", "--name", "ci", "--role", "pipeline"],
    )
    .trim()
    .to_owned();
    graphql(
        &client,
        &nodes[0],
        &pipeline,
        "mutation($input: RegisterDriveInput!) { registerDrive(input: $input) { id } }",
        json!({ "input": {
            "id": "drv-cluster-1", "vehicle": "gz-004", "city": "guangzhou",
            "startedAt": "2026-11-01T08:00:00Z", "endedAt": "2026-11-01T09:30:00Z",
            "weather": "rain", "tags": ["cluster"] } }),
    )
    .await;
    let registered = Instant::now();
    loop {
        let found = graphql(
            &client,
            &nodes[2],
            &token,
            "query($q: String!) { search(query: $q, first: 1) { totalCount } }",
            json!({ "q": "id:drv-cluster-1 weather:rain" }),
        )
        .await;
        if found["search"]["totalCount"] == json!(1) {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(10),
            "registered at node 1, not found at node 3: {found}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "registered at node 1, found at node 3 after {:?}",
        registered.elapsed()
    );
    cli_output(&dirs[1], &["token", "revoke", "ci"]);
    let revoked = Instant::now();
    for node in &nodes {
        loop {
            let status = client
                .post(format!("http://{}/graphql", node.addr))
                .bearer_auth(&pipeline)
                .json(&json!({ "query": "{ __typename }" }))
                .send()
                .await
                .expect("graphql")
                .status();
            if status == reqwest::StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                revoked.elapsed() <= milepost_api::auth::TokenCache::TTL + Duration::from_secs(2),
                "the revoked token still works at {} after {:?}",
                node.addr,
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "revoked at node 2, refused at every node after {:?}",
        revoked.elapsed()
    );

    // 1. Sixteen reservations and sixteen reads over three nodes: one upstream fetch each.
    let shared = seed(store.as_ref(), "shared", &[MIB, 3 * MIB, 5 * MIB, 24 * MIB]).await;
    let (largest_key, largest) = shared.last().cloned().expect("largest");
    let synced = graphql(
        &client,
        &nodes[0],
        &token,
        "mutation { syncCatalog { errors } }",
        json!({}),
    )
    .await;
    assert_eq!(synced["syncCatalog"]["errors"], json!([]), "{synced}");
    create_dataset(&client, &nodes[0], &token, "shared", &shared).await;
    let mut before = 0;
    for node in &nodes {
        before += upstream_bytes(&client, node).await;
    }
    let gateways: Vec<S3Store> = nodes
        .iter()
        .map(|node| {
            S3Store::new(&UpstreamSettings {
                endpoint: Some(format!("http://{}", node.s3_addr)),
                region: "us-east-1".to_owned(),
                force_path_style: true,
                credentials: Some(credentials.clone()),
                ..UpstreamSettings::default()
            })
            .expect("gateway client")
        })
        .collect();
    let reservations = futures::stream::iter(0..16)
        .map(|i| reserve(&client, &nodes[i % NODES], &token, "shared"))
        .buffer_unordered(16)
        .collect::<Vec<String>>();
    let reads = futures::stream::iter(0..16)
        .map(|i| {
            let (client, node, gateway) = (&client, &nodes[i % NODES], &gateways[i % NODES]);
            let (token, key) = (&token, &largest_key);
            async move {
                if i % 2 == 0 {
                    client
                        .get(format!("http://{}/data/{BUCKET}/{key}", node.addr))
                        .bearer_auth(token)
                        .send()
                        .await
                        .expect("GET /data")
                        .error_for_status()
                        .expect("200")
                        .bytes()
                        .await
                        .expect("body")
                } else {
                    gateway
                        .get(BUCKET, key, ByteRange::All, None)
                        .await
                        .expect("gateway GET")
                        .collect(64 * MIB)
                        .await
                        .expect("gateway body")
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<Bytes>>();
    let (ids, bodies) = tokio::join!(reservations, reads);
    for body in &bodies {
        assert_eq!(sha(body), sha(&largest), "a read of the largest object");
    }
    for (i, id) in ids.iter().enumerate() {
        ready(
            &client,
            &nodes[i % NODES],
            &token,
            id,
            Duration::from_secs(60),
        )
        .await;
    }
    for node in &nodes {
        assert_exact_through(&client, node, &token, &shared).await;
    }
    let mut after = 0;
    for node in &nodes {
        after += upstream_bytes(&client, node).await;
    }
    let dataset_bytes: usize = shared.iter().map(|(_, data)| data.len()).sum();
    assert_eq!(
        after - before,
        dataset_bytes as u64,
        "bytes from upstream over three nodes = the dataset's bytes"
    );

    // Every node answers cacheStats for the office: the same usage everywhere.
    let mut usages = Vec::new();
    for node in &nodes {
        let stats = graphql(
            &client,
            node,
            &token,
            "{ cacheStats { usedBytes pinnedBytes objects bytesFromUpstream } }",
            json!({}),
        )
        .await;
        usages.push(stats["cacheStats"].clone());
    }
    assert!(
        usages.iter().all(|u| u == &usages[0]),
        "cacheStats differ between nodes: {usages:?}"
    );
    assert!(
        usages[0]["usedBytes"].as_u64() >= Some(dataset_bytes as u64)
            && usages[0]["pinnedBytes"].as_u64() >= Some(dataset_bytes as u64),
        "{usages:?}"
    );

    // 2. The node materializing a reservation dies; another finishes it.
    let slow_set = seed(
        store.as_ref(),
        "slow",
        &[2 * MIB, 6 * MIB, 16 * MIB, 24 * MIB],
    )
    .await;
    let synced = graphql(
        &client,
        &nodes[0],
        &token,
        "mutation { syncCatalog { errors } }",
        json!({}),
    )
    .await;
    assert_eq!(synced["syncCatalog"]["errors"], json!([]), "{synced}");
    create_dataset(&client, &nodes[0], &token, "slow", &slow_set).await;
    slow.set_latency(Duration::from_millis(150));
    let id = reserve(&client, &nodes[2], &token, "slow").await;
    let started = Instant::now();
    loop {
        let r = graphql(&client, &nodes[2], &token, RESERVATION, json!({ "id": id })).await;
        let r = r["reservation"].clone();
        assert!(
            r["state"] == "MATERIALIZING" || r["state"] == "PENDING",
            "killed before the end: {r}"
        );
        if r["bytesDone"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no progress: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[2].sigkill();
    let taken_over = Instant::now();
    ready(&client, &nodes[0], &token, &id, Duration::from_secs(60)).await;
    eprintln!(
        "reservation of the killed node READY {:?} after the kill",
        taken_over.elapsed()
    );
    assert_exact_through(&client, &nodes[1], &token, &slow_set).await;

    // 3. The node holding 200 acknowledged uploads dies; the others upload them all. S3 is
    //    slow (every request delayed) for nodes 1 and 2 while node 2 takes the writes, so
    //    that they are still the office's own when node 1 reads them; then fast for node 1
    //    only: the uploads node 2 started stay its work until it dies.
    slow_uploads.set_latency(Duration::from_secs(3));
    node1_proxy.set_latency(Duration::from_secs(3));
    let gateway = &gateways[1];
    let mut newest: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut writes = Vec::new();
    for i in 0..200 {
        // Every tenth key is written twice: the second write must win.
        let key = if i % 10 == 9 {
            format!("ingest/obj-{:03}.bin", i - 1)
        } else {
            format!("ingest/obj-{i:03}.bin")
        };
        let mut data = vec![0u8; 4096 + i * 37];
        rand::rng().fill_bytes(&mut data);
        writes.push((key, data));
    }
    for (key, data) in &writes {
        gateway
            .put(BUCKET, key, Bytes::from(data.clone()))
            .await
            .expect("acknowledged PUT");
        newest.insert(key.clone(), data.clone());
    }
    // Written at node 2 and not yet in S3: node 1 serves the office's versions too (read
    // from the office tier), newest first.
    let (probe_key, probe) = newest.iter().next_back().expect("a write");
    let visible = Instant::now();
    loop {
        let response = client
            .get(format!(
                "http://{}/data/{BUCKET}/{probe_key}",
                nodes[0].addr
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /data");
        if response.status().is_success() {
            let body = response.bytes().await.expect("body");
            if sha(&body) == sha(probe) {
                break;
            }
        }
        assert!(
            visible.elapsed() < Duration::from_secs(10),
            "node 2's write of {probe_key} not visible at node 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "written at node 2, read at node 1 after {:?}",
        visible.elapsed()
    );
    let in_upstream = match store.get(BUCKET, probe_key, ByteRange::All, None).await {
        Ok(response) => Some(response.collect(MIB).await.expect("body")),
        Err(_) => None,
    };
    assert!(
        in_upstream.is_none_or(|body| sha(&body) != sha(probe)),
        "{probe_key} reached S3 first: node 1 did not have to serve the office's version"
    );
    node1_proxy.set_latency(Duration::ZERO);
    // Killed while it holds uploads under its lease.
    let held_since = Instant::now();
    let held = loop {
        let cluster = graphql(
            &client,
            &nodes[0],
            &token,
            "{ cluster { nodes { nodeId uploadsHeld } } }",
            json!({}),
        )
        .await;
        let held = cluster["cluster"]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["nodeId"] == "node-2"))
            .and_then(|n| n["uploadsHeld"].as_i64())
            .unwrap_or(0);
        if held > 0 {
            break held;
        }
        assert!(
            held_since.elapsed() < Duration::from_secs(30),
            "node 2 never started an upload: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let in_s3 = list_all(store.as_ref(), BUCKET, "ingest/")
        .await
        .expect("list")
        .len();
    assert!(
        in_s3 < newest.len(),
        "uploads still pending at the kill ({in_s3} of {} in S3)",
        newest.len()
    );
    eprintln!(
        "node 2 killed holding {held} uploads; {in_s3} of {} keys in S3",
        newest.len()
    );
    nodes[1].sigkill();
    let started = Instant::now();
    loop {
        let listed = list_all(store.as_ref(), BUCKET, "ingest/")
            .await
            .expect("list");
        if listed.len() == newest.len() {
            let mut exact = true;
            for (key, data) in &newest {
                let body = store
                    .get(BUCKET, key, ByteRange::All, None)
                    .await
                    .expect("get")
                    .collect(MIB)
                    .await
                    .expect("body");
                exact &= sha(&body) == sha(data);
            }
            if exact {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of {} keys in S3 with their newest bytes 90 s after the kill; node 1 log:\n{}",
            listed.len(),
            newest.len(),
            nodes[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "uploads of the killed node in S3 {:?} after the kill",
        started.elapsed()
    );
    let status = cli_output(&dirs[0], &["cluster", "status", "--json"]);
    let status: Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["uploads_orphaned"], json!(0), "{status}");
    assert_eq!(status["reservations_orphaned"], json!(0), "{status}");
}

/// The object at `key` in S3 has the bytes `expected` (its SHA-256), or not yet.
async fn upstream_has(store: &dyn ObjectStore, key: &str, expected: &str) -> bool {
    match store.get(BUCKET, key, ByteRange::All, None).await {
        Ok(response) => sha(&response.collect(MIB).await.expect("body")) == expected,
        Err(_) => false,
    }
}

/// Waits until the transfer of `key` runs on `node` (state `uploading`, its lease owner).
async fn uploading_on(db: &sea_orm::DatabaseConnection, key: &str, node: &str) {
    use sea_orm::{ConnectionTrait as _, DatabaseBackend, Statement};
    let started = Instant::now();
    loop {
        let row = db
            .query_one(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT count(*) AS n FROM transfers \
                 WHERE key = $1 AND state = 'uploading' AND lease_owner = $2",
                [key.into(), node.into()],
            ))
            .await
            .expect("transfers")
            .expect("a row");
        if row.try_get::<i64>("", "n").expect("count") > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{node} never started uploading {key}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 4. See the module documentation. Node 1 reaches PostgreSQL through a proxy that the test
///    partitions (no byte moves, nothing is closed: only node 1's own timing can tell), and
///    uploads at 64 KiB/s, so its upload of the first write is still running at the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_the_database_stops_its_uploads_before_its_lease_ends() {
    let Some(server_url) = milepost_testkit::postgres_server_url() else {
        eprintln!("skipped: cluster mode needs PostgreSQL (MILEPOST_TEST_DATABASE_URL)");
        return;
    };
    let database = TestDatabase::on_postgres(&server_url)
        .await
        .expect("test database");
    let authority = {
        let url = database.url();
        let start = url.find("://").map_or(0, |i| i + 3);
        let end = url[start..]
            .find(['/', '?'])
            .map_or(url.len(), |i| i + start);
        let host = &url[start..end];
        host.rsplit_once('@')
            .map_or(host, |(_, host)| host)
            .to_owned()
    };
    let postgres = tokio::net::lookup_host(&authority)
        .await
        .expect("PostgreSQL's address")
        .next()
        .expect("an address");
    let link = TcpProxy::start(postgres).await.expect("proxy");
    let root = tempfile::tempdir().expect("tempdir");
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let tier = tier().await;
    let cut_off = node_dir(
        root.path(),
        1,
        &link.url_through(database.url()),
        &upstream.endpoint(),
        &tier,
    );
    let config = cut_off.join("milepost.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("[transfer]\nupload_schedule = \"* 64KiB\"\n");
    std::fs::write(&config, text).expect("config");
    let other = node_dir(root.path(), 2, database.url(), &upstream.endpoint(), &tier);
    let credentials = crate::process::s3_token(&other, "vehicle");
    let node1 = Server::start(&cut_off, 0).await;
    let node2 = Server::start(&other, 1).await;
    let gateway = |server: &Server| {
        S3Store::new(&UpstreamSettings {
            endpoint: Some(format!("http://{}", server.s3_addr)),
            region: "us-east-1".to_owned(),
            force_path_style: true,
            credentials: Some(credentials.clone()),
            ..UpstreamSettings::default()
        })
        .expect("gateway client")
    };
    let db = database.connect_migrated().await;
    let key = "ingest/cut-off.bin";
    let mut older = vec![0u8; 512 * 1024];
    rand::rng().fill_bytes(&mut older);
    let mut newer = vec![0u8; 300 * 1024];
    rand::rng().fill_bytes(&mut newer);
    let (older_sha, newer_sha) = (sha(&older), sha(&newer));
    gateway(&node1)
        .put(BUCKET, key, Bytes::from(older))
        .await
        .expect("acknowledged PUT at node 1");
    uploading_on(&db, key, "node-1").await;

    link.partition();
    let cut = Instant::now();
    // Node 2 takes the write over once node 1's lease (3 s) has ended, and uploads it.
    while !upstream_has(upstream.store.as_ref(), key, &older_sha).await {
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "node 2 did not take over node 1's upload; node 2 log:\n{}",
            node2.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node 1's write uploaded by node 2 {:?} after the cut",
        cut.elapsed()
    );
    // A newer write of the key, at node 2, lands after it.
    gateway(&node2)
        .put(BUCKET, key, Bytes::from(newer))
        .await
        .expect("acknowledged PUT at node 2");
    while !upstream_has(upstream.store.as_ref(), key, &newer_sha).await {
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "node 2's newer write never reached S3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The link comes back. An upload node 1 had kept running would now finish (512 KiB at
    // 64 KiB/s: within 8 s) and put the older bytes over the newer ones.
    link.heal();
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(12) {
        assert!(
            upstream_has(upstream.store.as_ref(), key, &newer_sha).await,
            "node 1's old upload landed over the newer write {:?} after the link came back; \
             node 1 log:\n{}",
            healed.elapsed(),
            node1.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        node1.log_text().contains("cluster lease lapsed"),
        "node 1 never said it stopped its upload:\n{}",
        node1.log_text()
    );
    // Nothing is left to do: no upload of the key is queued or running anywhere.
    let status = cli_output(&other, &["cluster", "status", "--json"]);
    let status: Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["uploads_orphaned"], json!(0), "{status}");
    drop(node1);
}
