//! `[cache] tier = "s3"`: the service with its content store in an office S3 tier (a second
//! real S3 server on loopback). Reservations materialize into the tier with one upstream fetch
//! per object however many readers, `/data` serves from it byte-exact, READY carries no local
//! view, and an office upload is in the tier before its acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use milepost_indexer::fleet::FleetSpec;
use milepost_schema::enums::Role;
use milepost_store::{list_all, ByteRange, ObjectStore};
use milepost_testkit::{LoopbackUpstream, TestApp, LOOPBACK_ACCESS_KEY, LOOPBACK_SECRET_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BUCKET: &str = "fleet";
const TIER_BUCKET: &str = "office-tier";
const TIER_PREFIX: &str = "office-a/";

const RESERVE: &str =
    r#"mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }"#;
const RESERVATION: &str =
    r#"query($id: ID!) { reservation(id: $id) { state bytesFromUpstream localPath error } }"#;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn tier_objects(tier: &Arc<dyn ObjectStore>) -> usize {
    list_all(tier.as_ref(), TIER_BUCKET, TIER_PREFIX)
        .await
        .expect("list the tier")
        .len()
}

#[tokio::test]
async fn reservations_and_reads_go_through_the_office_tier() {
    let tier = LoopbackUpstream::start(TIER_BUCKET).await;
    let tier_endpoint = tier.endpoint();
    let app = TestApp::builder()
        .seeded(FleetSpec::small(31))
        .configure(move |config| {
            config.cache.tier = milepost_api::config::CacheTier::S3;
            config.cache.tier_endpoint = tier_endpoint;
            config.cache.tier_bucket = TIER_BUCKET.to_owned();
            config.cache.tier_prefix = TIER_PREFIX.to_owned();
            config.cache.tier_access_key_id = LOOPBACK_ACCESS_KEY.to_owned();
            config.cache.tier_secret_access_key = LOOPBACK_SECRET_KEY.to_owned();
        })
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    let engineer = app.token("alice", Role::Engineer).await;
    app.sync_cleanly(&admin).await;
    let drive = app.fleet().drives[0].clone();
    let (_, body) = app
        .graphql(
            Some(&engineer),
            r#"mutation($input: CreateDatasetInput!) { createDataset(input: $input) { totalBytes objects(first: 500) { edges { node { key size } } } } }"#,
            json!({ "input": { "name": "tiered", "entityIds": [drive.id] } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let dataset = &body["data"]["createDataset"];
    let total = dataset["totalBytes"].as_u64().expect("total");
    let keys: Vec<String> = dataset["objects"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["key"].as_str().expect("key").to_owned())
        .collect();
    let largest = dataset["objects"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .max_by_key(|e| e["node"]["size"].as_u64())
        .expect("largest")["node"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let upstream = app.upstream().store.clone();
    let upstream_sha = |key: String| {
        let upstream = Arc::clone(&upstream);
        async move {
            let body = upstream
                .get(BUCKET, &key, ByteRange::All, None)
                .await
                .expect("get")
                .collect(usize::MAX)
                .await
                .expect("body");
            sha(&body)
        }
    };
    let expected_largest = upstream_sha(largest.clone()).await;

    // 8 reservations and 8 /data reads of the largest object at once.
    let before = app.state().egress.snapshot().bytes_from_upstream;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url, token) = (
            app.client.clone(),
            format!("{}/graphql", app.base_url),
            engineer.clone(),
        );
        tasks.spawn(async move {
            let body: Value = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "query": RESERVE, "variables": { "input": { "dataset": "tiered", "ttlSeconds": 600 } } }))
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            format!("id:{}", body["data"]["reserveDataset"]["id"].as_str().expect("id"))
        });
        let (client, url, token) = (
            app.client.clone(),
            format!("{}/data/{BUCKET}/{largest}", app.base_url),
            engineer.clone(),
        );
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
        match result.strip_prefix("id:") {
            Some(id) => ids.push(id.to_owned()),
            None => assert_eq!(result, format!("sha:{expected_largest}")),
        }
    }
    for id in &ids {
        let mut ready = None;
        for _ in 0..600 {
            let (_, body) = app
                .graphql(Some(&admin), RESERVATION, json!({ "id": id }))
                .await;
            let reservation = body["data"]["reservation"].clone();
            match reservation["state"].as_str() {
                Some("READY") => {
                    ready = Some(reservation);
                    break;
                }
                Some("FAILED") => panic!("reservation failed: {reservation}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let ready = ready.expect("READY in time");
        assert!(
            ready["localPath"].is_null(),
            "no view on the office tier: {ready}"
        );
    }
    let fetched = app.state().egress.snapshot().bytes_from_upstream - before;
    assert_eq!(fetched, total, "one upstream fetch per object");
    assert!(
        tier_objects(&tier.store).await >= keys.len(),
        "the dataset's objects are in the tier"
    );

    // Every file through /data, from the tier, byte-exact, with ranges, and no more egress.
    for key in &keys {
        let response = app
            .client
            .get(format!("{}/data/{BUCKET}/{key}", app.base_url))
            .bearer_auth(&engineer)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        let bytes = response.bytes().await.expect("body");
        assert_eq!(sha(&bytes), upstream_sha(key.clone()).await, "{key}");
        if bytes.len() > 10 {
            let response = app
                .client
                .get(format!("{}/data/{BUCKET}/{key}", app.base_url))
                .bearer_auth(&engineer)
                .header("range", "bytes=3-9")
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{key}");
            assert_eq!(&response.bytes().await.expect("body")[..], &bytes[3..10]);
        }
    }
    assert_eq!(
        app.state().egress.snapshot().bytes_from_upstream - before,
        total,
        "reads of cached objects come from the tier"
    );

    // An office upload through the gateway is in the tier when acknowledged, and reads back.
    let (_, credentials) = app.s3_token("ingest", Role::Engineer).await;
    let gateway = app.s3_client(credentials);
    let in_tier = tier_objects(&tier.store).await;
    let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    gateway
        .put(BUCKET, "drives/uploads/new.bin", upload.clone().into())
        .await
        .expect("gateway put");
    assert_eq!(
        tier_objects(&tier.store).await,
        in_tier + 1,
        "acknowledged only once the tier holds it"
    );
    let read = gateway
        .get(BUCKET, "drives/uploads/new.bin", ByteRange::All, None)
        .await
        .expect("gateway get")
        .collect(usize::MAX)
        .await
        .expect("body");
    assert_eq!(sha(&read), sha(&upload));
    // Written back to S3 from the tier's copy.
    assert!(
        app.state()
            .write_back
            .wait_idle(Duration::from_secs(30))
            .await,
        "the upload reached S3"
    );
    assert_eq!(
        upstream_sha("drives/uploads/new.bin".to_owned()).await,
        sha(&upload)
    );
    app.shutdown().await;
}
