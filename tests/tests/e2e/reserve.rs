//! Datasets, reservations and `/data` against a real S3 server on loopback: materialization
//! into the office cache with byte-exact files, one upstream fetch per object however many
//! readers, range requests, cache statistics and the progress subscription.
//!
//! (Over 600 lines: reservation scenarios through GraphQL and /data sharing one world.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use milepost_cacher::datasets::read_manifest;
use milepost_indexer::fleet::{Fleet, FleetSpec};
use milepost_schema::enums::Role;
use milepost_store::{ByteRange, ObjectStore};
use milepost_testkit::{error_codes, first_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BUCKET: &str = "fleet";

struct World {
    store: Arc<dyn ObjectStore>,
    fleet: Fleet,
    app: TestApp,
    admin: String,
    engineer: String,
}

async fn world(seed: u64) -> World {
    let app = TestApp::builder()
        .seeded(FleetSpec::small(seed))
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    let engineer = app.token("alice", Role::Engineer).await;
    app.sync_cleanly(&admin).await;
    World {
        store: app.upstream().store.clone(),
        fleet: app.fleet().clone(),
        app,
        admin,
        engineer,
    }
}

async fn upstream_bytes(w: &World, key: &str) -> Vec<u8> {
    w.store
        .get(BUCKET, key, ByteRange::All, None)
        .await
        .expect("get")
        .collect(usize::MAX)
        .await
        .expect("body")
        .to_vec()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const CREATE: &str = r#"mutation($input: CreateDatasetInput!) { createDataset(input: $input) {
    name version objectCount totalBytes cachedBytes manifestKey createdBy
    objects(first: 500) { totalCount edges { node { bucket key size etag cached } } } } }"#;

const RESERVE: &str = r#"mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id state owner objectsTotal bytesTotal } }"#;

const RESERVATION: &str = r#"query($id: ID!) { reservation(id: $id) {
    id state objectsTotal objectsDone bytesTotal bytesDone bytesFromUpstream localPath error expiresAt dataset { name version } } }"#;

async fn create_dataset(w: &World, input: Value) -> Value {
    let (_, body) = w
        .app
        .graphql(Some(&w.engineer), CREATE, json!({ "input": input }))
        .await;
    assert!(body.get("errors").is_none(), "createDataset failed: {body}");
    body["data"]["createDataset"].clone()
}

async fn reserve(w: &World, token: &str, dataset: &str) -> String {
    let (_, body) = w
        .app
        .graphql(
            Some(token),
            RESERVE,
            json!({ "input": { "dataset": dataset, "ttlSeconds": 3600, "purpose": "debugging" } }),
        )
        .await;
    assert!(
        body.get("errors").is_none(),
        "reserveDataset failed: {body}"
    );
    body["data"]["reserveDataset"]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

async fn wait_ready(w: &World, id: &str) -> Value {
    for _ in 0..600 {
        let (_, body) = w
            .app
            .graphql(Some(&w.admin), RESERVATION, json!({ "id": id }))
            .await;
        let reservation = body["data"]["reservation"].clone();
        match reservation["state"].as_str() {
            Some("READY") => return reservation,
            Some("FAILED") | Some("EXPIRED") | Some("RELEASED") => {
                panic!("reservation ended {reservation}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("reservation {id} not READY in time");
}

#[tokio::test]
async fn reserve_materializes_exact_bytes_once_then_from_cache() {
    let w = world(21).await;
    let drive = &w.fleet.drives[0];
    let dataset = create_dataset(&w, json!({ "name": "first-drive", "description": "logs and sidecar", "entityIds": [drive.id], "include": ["*.mcap", "drive.json"] })).await;
    let expected_keys: Vec<&str> = drive
        .files
        .iter()
        .map(|f| f.key.as_str())
        .filter(|k| k.ends_with(".mcap") || k.ends_with("drive.json"))
        .collect();
    assert_eq!(
        dataset["objectCount"].as_u64(),
        Some(expected_keys.len() as u64),
        "{dataset}"
    );
    assert_eq!(dataset["version"], 1);
    assert_eq!(dataset["createdBy"], "alice");
    assert_eq!(dataset["cachedBytes"], 0);
    assert_eq!(
        dataset["manifestKey"],
        ".milepost/datasets/first-drive/v1.parquet"
    );
    // The manifest reaches S3 through the write-back path, and lists exactly the objects,
    // with their ETags.
    assert!(
        w.app
            .state()
            .write_back
            .wait_idle(Duration::from_secs(30))
            .await,
        "the manifest was not written back"
    );
    let manifest = read_manifest(
        upstream_bytes(&w, ".milepost/datasets/first-drive/v1.parquet")
            .await
            .into(),
    )
    .expect("manifest");
    let listed: Vec<(String, String)> = dataset["objects"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["node"]["key"].as_str().expect("key").to_owned(),
                e["node"]["etag"].as_str().expect("etag").to_owned(),
            )
        })
        .collect();
    let mut from_manifest: Vec<(String, String)> = manifest
        .iter()
        .map(|m| (m.key.clone(), m.etag.clone()))
        .collect();
    from_manifest.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(from_manifest, listed_sorted);
    let total = dataset["totalBytes"].as_i64().expect("total");

    let id = reserve(&w, &w.engineer, "first-drive").await;
    let ready = wait_ready(&w, &id).await;
    assert_eq!(ready["bytesFromUpstream"].as_i64(), Some(total), "{ready}");
    assert_eq!(ready["bytesDone"].as_i64(), Some(total));
    assert_eq!(ready["objectsDone"], ready["objectsTotal"]);
    let local = std::path::PathBuf::from(ready["localPath"].as_str().expect("localPath"));
    for key in &expected_keys {
        let path = local.join(BUCKET).join(key);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(sha(&on_disk), sha(&upstream_bytes(&w, key).await), "{key}");
    }

    // A second reservation of the same dataset costs no egress.
    let second = reserve(&w, &w.admin, "first-drive").await;
    let ready = wait_ready(&w, &second).await;
    assert_eq!(ready["bytesFromUpstream"], 0, "{ready}");
    let (_, body) = w.app.graphql(Some(&w.engineer), r#"{ dataset(name: "first-drive") { cachedBytes totalBytes } cacheStats { hits misses bytesFromUpstream egressSavedUsd usedBytes pinnedBytes objects } }"#, json!({})).await;
    assert_eq!(
        body["data"]["dataset"]["cachedBytes"].as_i64(),
        Some(total),
        "{body}"
    );
    let stats = &body["data"]["cacheStats"];
    assert!(
        stats["egressSavedUsd"].as_f64().expect("usd") > 0.0,
        "{stats}"
    );
    assert!(stats["pinnedBytes"].as_i64().expect("pinned") >= total);
    // The dataset's objects, and its manifest, which the office wrote (and keeps) itself.
    assert_eq!(
        stats["objects"].as_u64(),
        Some(expected_keys.len() as u64 + 1)
    );

    // Listing: alice sees hers only; release removes the view.
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            "{ reservations { totalCount edges { node { id owner } } } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["reservations"]["totalCount"], 1, "{body}");
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            r#"mutation($id: ID!) { releaseReservation(id: $id) { state } }"#,
            json!({ "id": second }),
        )
        .await;
    assert_eq!(
        error_codes(&body),
        vec!["FORBIDDEN"],
        "alice cannot release the admin's reservation: {body}"
    );
    let (_, body) = w.app.graphql(Some(&w.engineer), r#"mutation($id: ID!) { extendReservation(id: $id, ttlSeconds: 7200) { state expiresAt } }"#, json!({ "id": id })).await;
    assert_eq!(
        body["data"]["extendReservation"]["state"], "READY",
        "{body}"
    );
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            r#"mutation($id: ID!) { releaseReservation(id: $id) { state } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        body["data"]["releaseReservation"]["state"], "RELEASED",
        "{body}"
    );
    assert!(!local.exists(), "view removed on release");

    // Same name again: version 2.
    let v2 = create_dataset(
        &w,
        json!({ "name": "first-drive", "entityIds": [drive.id] }),
    )
    .await;
    assert_eq!(v2["version"], 2);
    w.app.shutdown().await;
}

#[tokio::test]
async fn concurrent_reservations_and_reads_share_one_upstream_fetch() {
    let w = world(22).await;
    let drive = &w.fleet.drives[1];
    let dataset = create_dataset(
        &w,
        json!({ "name": "shared", "query": format!("kind:drive id:{}", drive.id) }),
    )
    .await;
    let total = dataset["totalBytes"].as_u64().expect("total");
    assert_eq!(
        dataset["objectCount"].as_u64(),
        Some(drive.files.len() as u64)
    );
    let largest = dataset["objects"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .max_by_key(|e| e["node"]["size"].as_u64())
        .expect("largest")["node"]
        .clone();
    let largest_key = largest["key"].as_str().expect("key").to_owned();
    let expected = sha(&upstream_bytes(&w, &largest_key).await);

    let before = w.app.state().egress.snapshot().bytes_from_upstream;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let token = if i % 2 == 0 {
            w.engineer.clone()
        } else {
            w.admin.clone()
        };
        let client = w.app.client.clone();
        let url = format!("{}/graphql", w.app.base_url);
        tasks.spawn(async move {
            let body: Value = client.post(&url).bearer_auth(&token)
                .json(&json!({ "query": RESERVE, "variables": { "input": { "dataset": "shared", "ttlSeconds": 600 } } }))
                .send().await.expect("send").json().await.expect("json");
            format!("id:{}", body["data"]["reserveDataset"]["id"].as_str().expect("id"))
        });
        let client = w.app.client.clone();
        let url = format!("{}/data/{BUCKET}/{largest_key}", w.app.base_url);
        let token = w.engineer.clone();
        tasks.spawn(async move {
            let response = client
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::OK);
            format!("sha:{}", sha(&response.bytes().await.expect("body")))
        });
    }
    let mut ids = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let result = result.expect("task");
        if let Some(id) = result.strip_prefix("id:") {
            ids.push(id.to_owned());
        } else {
            assert_eq!(
                result,
                format!("sha:{expected}"),
                "a /data reader got wrong bytes"
            );
        }
    }
    let mut credited = 0;
    for id in &ids {
        credited += wait_ready(&w, id).await["bytesFromUpstream"]
            .as_u64()
            .expect("bytes");
    }
    let fetched = w.app.state().egress.snapshot().bytes_from_upstream - before;
    assert_eq!(
        fetched, total,
        "upstream bytes must equal the dataset's bytes exactly"
    );
    assert!(
        credited <= total,
        "reservations were credited {credited} of {total}"
    );
    w.app.shutdown().await;
}

#[tokio::test]
async fn data_endpoint_ranges_conditional_requests_and_bad_keys() {
    let w = world(23).await;
    let drive = &w.fleet.drives[2];
    let logs: Vec<&str> = drive
        .files
        .iter()
        .map(|f| f.key.as_str())
        .filter(|k| k.ends_with(".mcap"))
        .collect();
    // One object read cold (each range a read-through), one warmed first.
    let cold = logs[0];
    let warm = drive
        .files
        .iter()
        .map(|f| f.key.as_str())
        .find(|k| k.ends_with(".jpg") || k.ends_with(".bin"))
        .expect("blob");
    let url = |key: &str| format!("{}/data/{BUCKET}/{key}", w.app.base_url);
    let warmed = w
        .app
        .client
        .get(url(warm))
        .bearer_auth(&w.engineer)
        .send()
        .await
        .expect("get");
    assert_eq!(warmed.status(), StatusCode::OK);
    let etag = warmed.headers()["etag"].to_str().expect("etag").to_owned();
    let warmed_last_modified = warmed.headers()["last-modified"]
        .to_str()
        .expect("last-modified")
        .to_owned();
    let size = warmed.bytes().await.expect("body").len() as u64;
    // The client can have every byte before the download is installed (renamed into the
    // content store): the reads below are hits only once it is.
    let warmed_object = milepost_store::ObjectKey::new(BUCKET, warm, etag.trim_matches('"'), size);
    for _ in 0..400 {
        if w.app.state().cache.is_cached(&warmed_object) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        w.app.state().cache.is_cached(&warmed_object),
        "{warm} is cached after a whole GET"
    );

    for key in [cold, warm] {
        let full = upstream_bytes(&w, key).await;
        let n = full.len();
        let cases: Vec<(String, Option<(usize, usize)>)> = vec![
            ("bytes=0-0".into(), Some((0, 0))),
            (format!("bytes={}-{}", n - 1, n - 1), Some((n - 1, n - 1))),
            ("bytes=-100".into(), Some((n - 100, n - 1))),
            (format!("bytes={}-", n / 2), Some((n / 2, n - 1))),
            ("bytes=10-4000".into(), Some((10, 4000))),
            (format!("bytes={}-", n), None),
            (format!("bytes={}-{}", n + 10, n + 20), None),
        ];
        for (range, expected) in cases {
            let response = w
                .app
                .client
                .get(url(key))
                .bearer_auth(&w.engineer)
                .header("range", &range)
                .send()
                .await
                .expect("get");
            match expected {
                Some((start, end)) => {
                    assert_eq!(
                        response.status(),
                        StatusCode::PARTIAL_CONTENT,
                        "{key} {range}"
                    );
                    assert_eq!(
                        response.headers()["content-range"].to_str().expect("cr"),
                        format!("bytes {start}-{end}/{n}")
                    );
                    let body = response.bytes().await.expect("body");
                    assert_eq!(&body[..], &full[start..=end], "{key} {range}");
                }
                None => {
                    assert_eq!(
                        response.status(),
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "{key} {range}"
                    );
                    assert_eq!(
                        response.headers()["content-range"].to_str().expect("cr"),
                        format!("bytes */{n}")
                    );
                }
            }
        }
        let whole = w
            .app
            .client
            .get(url(key))
            .bearer_auth(&w.engineer)
            .send()
            .await
            .expect("get");
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(sha(&whole.bytes().await.expect("body")), sha(&full));
        let head = w
            .app
            .client
            .head(url(key))
            .bearer_auth(&w.engineer)
            .send()
            .await
            .expect("head");
        assert_eq!(
            head.headers()["content-length"].to_str().expect("len"),
            n.to_string()
        );
    }
    let not_modified = w
        .app
        .client
        .get(url(warm))
        .bearer_auth(&w.engineer)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"].to_str().expect("etag"), etag);
    // The gateway's conditions, through the same object API: a date the object has not
    // changed since is 304, a failed If-Match is 412, and a true If-Match reads.
    let last_modified = warmed_last_modified;
    let conditional = |name: &'static str, value: String| {
        w.app
            .client
            .get(url(warm))
            .bearer_auth(&w.engineer)
            .header(name, value)
            .send()
    };
    assert_eq!(
        conditional("if-modified-since", last_modified.clone())
            .await
            .expect("get")
            .status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        conditional("if-match", "\"0000\"".to_owned())
            .await
            .expect("get")
            .status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        conditional(
            "if-unmodified-since",
            "Mon, 01 Jan 2001 00:00:00 GMT".to_owned()
        )
        .await
        .expect("get")
        .status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        conditional("if-match", etag.clone())
            .await
            .expect("get")
            .status(),
        StatusCode::OK
    );

    // No token; keys that escape; a missing object.
    assert_eq!(
        w.app
            .client
            .get(url(warm))
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    for bad in ["a/..%2F..%2Fsecret", "x%00y", "a%5C..%5Cb"] {
        let response = w
            .app
            .client
            .get(url(bad))
            .bearer_auth(&w.engineer)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // HTTP clients normalize dot segments away; a raw request keeps them.
    for raw in ["drives/../../etc/passwd", "drives/%2e%2e/%2e%2e/etc/passwd"] {
        let status = raw_get_status(
            &w.app.base_url,
            &format!("/data/{BUCKET}/{raw}"),
            &w.engineer,
        )
        .await;
        assert_eq!(status, 400, "{raw}");
    }
    let missing = w
        .app
        .client
        .get(url("drives/none/such.mcap"))
        .bearer_auth(&w.engineer)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            "{ cacheStats { hits misses bytesServed } }",
            json!({}),
        )
        .await;
    let stats = &body["data"]["cacheStats"];
    assert!(
        stats["hits"].as_i64().expect("hits") > 0 && stats["misses"].as_i64().expect("misses") > 0,
        "{stats}"
    );
    // The history of the last ten minutes, by minute (the ledger's minute buckets), holds
    // every one of those reads.
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            "{ cacheHistory(bucketSeconds: 60, buckets: 10) { hits misses bytesServed } }",
            json!({}),
        )
        .await;
    let points = body["data"]["cacheHistory"].as_array().expect("history");
    assert_eq!(points.len(), 10, "{body}");
    let sum = |field: &str| {
        points
            .iter()
            .map(|p| {
                p[field]
                    .as_i64()
                    .or_else(|| p[field].as_str().and_then(|s| s.parse().ok()))
                    .expect("a count")
            })
            .sum::<i64>()
    };
    for field in ["hits", "misses", "bytesServed"] {
        let total = stats[field]
            .as_i64()
            .or_else(|| stats[field].as_str().and_then(|s| s.parse().ok()));
        assert_eq!(Some(sum(field)), total, "{field}: {body} vs {stats}");
    }
    let metrics = w.app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("milepost_cache_hits_total"), "{metrics}");
    w.app.shutdown().await;
}

/// The status of a GET sent byte for byte as given, with no path normalization.
async fn raw_get_status(base_url: &str, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

#[tokio::test]
async fn bad_dataset_and_reservation_input_is_bad_input() {
    let w = world(24).await;
    let mut cases: Vec<(Value, &str)> = vec![
        (
            json!({ "name": "x", "query": "kind:drive", "entityIds": ["a"] }),
            "input",
        ),
        (
            json!({ "name": "Bad Name!", "query": "kind:drive" }),
            "name",
        ),
        (
            json!({ "name": "nothing", "query": "id:no-such-thing" }),
            "objects",
        ),
        (
            json!({ "name": "ghost", "entityIds": ["no-such-drive"] }),
            "input.entityIds[0]",
        ),
        (json!({ "name": "syntax", "query": "city:\"open" }), "query"),
        (
            json!({ "name": "missing", "objects": [{ "bucket": BUCKET, "key": "no/such/key" }] }),
            "input.objects[0]",
        ),
        (
            json!({ "name": "escape", "objects": [{ "bucket": BUCKET, "key": "../etc/passwd" }] }),
            "input.objects[0]",
        ),
    ];
    // Explicit objects are looked up several at once; the error still names the first
    // object, in input order, that does not exist.
    let existing = w.fleet.drives[0].files[0].key.clone();
    let mut objects = vec![json!({ "bucket": BUCKET, "key": existing })];
    objects.extend((0..40).map(|i| json!({ "bucket": BUCKET, "key": format!("no/such/{i}") })));
    cases.push((
        json!({ "name": "first-missing", "objects": objects }),
        "input.objects[1]",
    ));
    for (input, field) in cases {
        let (_, body) = w
            .app
            .graphql(Some(&w.engineer), CREATE, json!({ "input": input }))
            .await;
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{input}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{input}: {body}"
        );
    }
    create_dataset(
        &w,
        json!({ "name": "ok", "entityIds": [w.fleet.drives[0].id], "include": ["drive.json"] }),
    )
    .await;
    for (input, field) in [
        (json!({ "dataset": "ok", "ttlSeconds": -1 }), "ttlSeconds"),
        (json!({ "dataset": "ok", "ttlSeconds": 0 }), "ttlSeconds"),
        (
            json!({ "dataset": "nope", "ttlSeconds": 60 }),
            "input.dataset",
        ),
    ] {
        let (_, body) = w
            .app
            .graphql(Some(&w.engineer), RESERVE, json!({ "input": input }))
            .await;
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{input}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{input}: {body}"
        );
    }
    let viewer = w.app.token("bob", Role::Viewer).await;
    let (_, body) = w
        .app
        .graphql(
            Some(&viewer),
            RESERVE,
            json!({ "input": { "dataset": "ok" } }),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["FORBIDDEN"]);
    assert!(first_error(&body).contains("ENGINEER"));
    w.app.shutdown().await;
}

#[tokio::test]
async fn progress_subscription_over_websocket_ends_at_ready() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let w = world(25).await;
    create_dataset(
        &w,
        json!({ "name": "watched", "entityIds": [w.fleet.drives[3].id] }),
    )
    .await;
    let id = reserve(&w, &w.engineer, "watched").await;
    let ws_url = format!("{}/graphql/ws", w.app.base_url.replace("http://", "ws://"));
    let mut request = ws_url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    socket.send(Message::Text(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", w.engineer) } }).to_string().into())).await.expect("init");
    socket.send(Message::Text(json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: ID!) { reservationProgress(id: $id) { state bytesDone bytesTotal localPath } }",
        "variables": { "id": id } } }).to_string().into())).await.expect("subscribe");
    let mut states = Vec::new();
    let mut completed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await {
        let Message::Text(text) = message.expect("message") else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).expect("json");
        match frame["type"].as_str() {
            Some("next") => states.push(frame["payload"]["data"]["reservationProgress"].clone()),
            Some("complete") => {
                completed = true;
                break;
            }
            Some("error") => panic!("subscription error {frame}"),
            _ => {}
        }
    }
    assert!(completed, "the subscription ends after READY: {states:?}");
    let last = states.last().expect("at least one update");
    assert_eq!(last["state"], "READY");
    assert_eq!(last["bytesDone"], last["bytesTotal"]);
    assert!(last["localPath"].is_string());
    let order: BTreeMap<&str, usize> = [("PENDING", 0), ("MATERIALIZING", 1), ("READY", 2)].into();
    let ranks: Vec<usize> = states
        .iter()
        .map(|s| order[s["state"].as_str().expect("state")])
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "states move forward: {states:?}"
    );
    w.app.shutdown().await;
}

/// The served buckets are the boundary of every door: an object of a bucket the service's
/// credentials reach but the office does not serve is not found through `/data` (for any
/// role) and cannot be put in a dataset, and asking costs no upstream request.
#[tokio::test]
async fn buckets_the_office_does_not_serve_are_not_found_and_cost_no_upstream_request() {
    let w = world(25).await;
    w.store.ensure_bucket("payroll").await.expect("bucket");
    w.store
        .put("payroll", "2026/salaries.csv", "secret".into())
        .await
        .expect("put");
    let viewer = w.app.token("bob", Role::Viewer).await;
    let before = w.app.state().egress.snapshot();
    for token in [&viewer, &w.admin] {
        let response = w
            .app
            .client
            .get(format!("{}/data/payroll/2026/salaries.csv", w.app.base_url))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let text = response.text().await.expect("body");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("not served"), "{text}");
    }
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            CREATE,
            json!({ "input": { "name": "leak", "objects": [{ "bucket": "payroll", "key": "2026/salaries.csv" }] } }),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "input.objects[0]");
    assert!(first_error(&body).contains("not served"), "{body}");
    let after = w.app.state().egress.snapshot();
    assert_eq!(
        (after.get_requests, after.other_requests),
        (before.get_requests, before.other_requests),
        "a refused bucket must cost no upstream request"
    );
    w.app.shutdown().await;
}

/// Keys that cannot be laid out under a view are refused by `createDataset` before anything
/// is downloaded, naming the key. (A file beside a directory of its name, which the loopback
/// S3's file system cannot hold, is refused by `normalize_entries`, unit-tested in the cacher.)
#[tokio::test]
async fn dataset_keys_that_cannot_be_view_paths_are_refused_before_any_download() {
    let w = world(26).await;
    let long = format!("odd/{}", "s".repeat(256));
    // (The long key cannot be stored by the loopback S3's file system; it is refused before
    // any lookup, so it need not exist.)
    for key in ["odd/back\\slash"] {
        w.store
            .put(BUCKET, key, "x".into())
            .await
            .expect("put upstream");
    }
    for (objects, problem) in [
        (vec!["odd/back\\slash"], "backslash"),
        (vec![long.as_str()], "255"),
    ] {
        let objects: Vec<Value> = objects
            .iter()
            .map(|key| json!({ "bucket": BUCKET, "key": key }))
            .collect();
        let (_, body) = w
            .app
            .graphql(
                Some(&w.engineer),
                CREATE,
                json!({ "input": { "name": "odd", "objects": objects } }),
            )
            .await;
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
        assert!(first_error(&body).contains(problem), "{problem}: {body}");
    }
    w.app.shutdown().await;
}
