//! Two offices sharing one S3: a drive uploaded through office A's gateway is searchable and
//! readable at A at once, reaches S3 through A's write-back, and office B, which shares
//! nothing with A but the bucket, catalogs it on its next sync and materializes it, paying
//! egress once.

use std::sync::Arc;
use std::time::Duration;

use milepost_api::demo::seed_fleet;
use milepost_indexer::fleet::{self, FleetSpec};
use milepost_schema::enums::Role;
use milepost_store::{list_all, ByteRange, ObjectStore};
use milepost_testkit::{LoopbackUpstream, TestApp};
use serde_json::{json, Value};

const BUCKET: &str = "fleet";

async fn gql(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    let (_, body) = app.graphql(Some(token), query, variables).await;
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

async fn wait_ready(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let data = gql(
            app,
            token,
            "query($id: ID!) { reservation(id: $id) { state bytesTotal bytesFromUpstream error } }",
            json!({ "id": id }),
        )
        .await;
        let reservation = data["reservation"].clone();
        match reservation["state"].as_str() {
            Some("READY") => return reservation,
            Some("FAILED" | "EXPIRED" | "RELEASED") => panic!("reservation ended {reservation}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("reservation {id} not READY in time")
}

async fn reserve(app: &TestApp, token: &str, dataset: &str) -> Value {
    let data = gql(
        app,
        token,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": { "dataset": dataset, "ttlSeconds": 3600 } }),
    )
    .await;
    let id = data["reserveDataset"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_ready(app, token, &id).await
}

async fn cache_stats(app: &TestApp, token: &str) -> Value {
    gql(
        app,
        token,
        "{ cacheStats { bytesFromUpstream bytesServed hits misses } }",
        json!({}),
    )
    .await["cacheStats"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_uploaded_at_one_office_reaches_the_other_through_s3() {
    let loopback = LoopbackUpstream::start(BUCKET).await;
    let s3 = &loopback.s3;
    let upstream = &loopback.store;
    let office_a = TestApp::builder()
        .upstream(s3.settings(), BUCKET)
        .configure(|c| c.office = "office-a".to_owned())
        .start()
        .await;
    let office_b = TestApp::builder()
        .upstream(s3.settings(), BUCKET)
        .configure(|c| c.office = "office-b".to_owned())
        .start()
        .await;
    let admin_a = office_a.token("admin", Role::Admin).await;
    let admin_b = office_b.token("admin", Role::Admin).await;
    let engineer_b = office_b.token("bob", Role::Engineer).await;

    // A vehicle uploads one drive (sidecar and MCAP logs) through office A's gateway.
    let spec = FleetSpec {
        drives: 1,
        runs: 0,
        ..FleetSpec::small(41)
    };
    let fleet = fleet::generate(&spec);
    let drive = &fleet.drives[0];
    let (_, keys) = office_a.s3_token("vehicle", Role::Engineer).await;
    let gateway: Arc<dyn ObjectStore> = Arc::new(office_a.s3_client(keys));
    let uploaded = seed_fleet(&gateway, BUCKET, &fleet).await.expect("upload");

    // Searchable and readable at A at once (the upload triggers a catalog sync).
    let mut found = Value::Null;
    for _ in 0..100 {
        let data = gql(
            &office_a,
            &admin_a,
            "query($id: ID!) { drive(id: $id) { id vehicle } }",
            json!({ "id": drive.id }),
        )
        .await;
        if !data["drive"].is_null() {
            found = data["drive"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        found["id"],
        drive.id.as_str(),
        "the drive is cataloged at A"
    );
    let mut hits = Value::Null;
    for _ in 0..100 {
        hits = gql(
            &office_a,
            &admin_a,
            "query($q: String!) { search(query: $q) { totalCount } }",
            json!({ "q": format!("vehicle:{}", drive.vehicle) }),
        )
        .await;
        if hits["search"]["totalCount"].as_i64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hits["search"]["totalCount"].as_i64() >= Some(1),
        "searchable at A: {hits}"
    );
    let log = drive
        .files
        .iter()
        .find(|f| f.key.ends_with(".mcap"))
        .expect("an MCAP log");
    let response = office_a
        .client
        .get(format!("{}/data/{BUCKET}/{}", office_a.base_url, log.key))
        .bearer_auth(&admin_a)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let served = response.bytes().await.expect("body");
    let through_gateway = gateway
        .get(BUCKET, &log.key, ByteRange::All, None)
        .await
        .expect("get")
        .collect(64 << 20)
        .await
        .expect("body");
    assert_eq!(served, through_gateway);

    // In S3 after write-back.
    assert!(
        office_a
            .state()
            .write_back
            .wait_idle(Duration::from_secs(60))
            .await
    );
    let in_s3 = list_all(upstream.as_ref(), BUCKET, &drive.prefix)
        .await
        .expect("list");
    assert_eq!(in_s3.len(), drive.files.len());
    let upstream_log = upstream
        .get(BUCKET, &log.key, ByteRange::All, None)
        .await
        .expect("get")
        .collect(64 << 20)
        .await
        .expect("body");
    assert_eq!(upstream_log, served, "S3 has A's bytes");

    // B finds it on its next sync and reserves it: egress once, then nothing.
    office_b.sync_cleanly(&admin_b).await;
    let data = gql(
        &office_b,
        &engineer_b,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { totalBytes objectCount } }",
        json!({ "input": { "name": "from-a", "entityIds": [drive.id] } }),
    )
    .await;
    let total = data["createDataset"]["totalBytes"].as_i64().expect("total");
    assert_eq!(total as u64, uploaded, "the dataset is the whole drive");
    let first = reserve(&office_b, &engineer_b, "from-a").await;
    assert_eq!(first["bytesFromUpstream"].as_i64(), Some(total), "{first}");
    let second = reserve(&office_b, &engineer_b, "from-a").await;
    assert_eq!(second["bytesFromUpstream"], 0, "{second}");

    // Both ledgers: A served from its own writes without egress; B paid it once.
    let stats_a = cache_stats(&office_a, &admin_a).await;
    assert_eq!(stats_a["bytesFromUpstream"], 0, "{stats_a}");
    assert!(
        stats_a["bytesServed"].as_i64() >= Some(log.size_hint.min(1) as i64),
        "{stats_a}"
    );
    let stats_b = cache_stats(&office_b, &admin_b).await;
    assert_eq!(
        stats_b["bytesFromUpstream"].as_i64(),
        Some(total),
        "{stats_b}"
    );

    // B's dataset manifest reached S3 through B's write-back too.
    assert!(
        office_b
            .state()
            .write_back
            .wait_idle(Duration::from_secs(30))
            .await
    );
    upstream
        .head(BUCKET, ".milepost/datasets/from-a/v1.parquet")
        .await
        .expect("B's manifest is in S3");

    office_a.shutdown().await;
    office_b.shutdown().await;
}

/// Records made through the API at one office (`registerDrive`, `tagScenario`,
/// `registerRun`) are written to S3 as sidecars through write-back, and another office
/// rebuilds the same records from S3 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_registered_at_one_office_are_rebuilt_at_the_other_from_s3() {
    let loopback = LoopbackUpstream::start(BUCKET).await;
    let office_a = TestApp::builder()
        .upstream(loopback.settings(), BUCKET)
        .start()
        .await;
    let office_b = TestApp::builder()
        .upstream(loopback.settings(), BUCKET)
        .start()
        .await;
    let pipeline = office_a.token("ci", Role::Pipeline).await;
    let admin_b = office_b.token("admin", Role::Admin).await;

    gql(
        &office_a,
        &pipeline,
        "mutation($input: RegisterDriveInput!) { registerDrive(input: $input) { id } }",
        json!({ "input": {
            "id": "drv-rec-1", "vehicle": "gz-004", "city": "guangzhou",
            "startedAt": "2026-11-01T08:00:00Z", "endedAt": "2026-11-01T09:00:00Z",
            "weather": "rain", "tags": ["night"],
            "events": [{ "at": "2026-11-01T08:10:00Z", "kind": "disengagement", "label": "take-over" }],
            "scenarios": [{ "label": "cut-in", "start": "2026-11-01T08:09:30Z", "end": "2026-11-01T08:10:10Z", "tags": ["left"] }]
        }}),
    )
    .await;
    let tagged = gql(
        &office_a,
        &pipeline,
        "mutation($input: TagScenarioInput!) { tagScenario(input: $input) { id } }",
        json!({ "input": {
            "driveId": "drv-rec-1", "label": "pedestrian",
            "start": "2026-11-01T08:40:00Z", "end": "2026-11-01T08:40:05Z", "tags": ["crossing"]
        }}),
    )
    .await;
    let scenario_id = tagged["tagScenario"]["id"].as_str().expect("id").to_owned();
    gql(
        &office_a,
        &pipeline,
        "mutation($input: RegisterRunInput!) { registerRun(input: $input) { id } }",
        json!({ "input": {
            "id": "sim-rec-1", "kind": "SIMULATION", "pipeline": "nightly-replay",
            "status": "PASSED", "inputs": ["drv-rec-1"], "tags": ["regression"]
        }}),
    )
    .await;
    assert!(
        office_a
            .state()
            .write_back
            .wait_idle(Duration::from_secs(30))
            .await
    );
    let keys: Vec<String> = list_all(loopback.store.as_ref(), BUCKET, "")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(
        keys.contains(&"drives/2026-11-01/gz-004/drv-rec-1/drive.json".to_owned())
            && keys.contains(&"runs/sim-rec-1/run.json".to_owned()),
        "the sidecars are in S3: {keys:?}"
    );

    office_b.sync_cleanly(&admin_b).await;
    let data = gql(
        &office_b,
        &admin_b,
        r#"query($sc: ID!) {
            drive(id: "drv-rec-1") { vehicle city weather tags events { kind label } scenarios { label } }
            scenario(id: $sc) { label tags }
            run(id: "sim-rec-1") { pipeline status tags inputs { ... on Drive { id } } }
        }"#,
        json!({ "sc": scenario_id }),
    )
    .await;
    let drive = &data["drive"];
    assert_eq!(drive["vehicle"], "gz-004", "{data}");
    assert_eq!(drive["weather"], "rain");
    assert_eq!(drive["events"][0]["label"], "take-over");
    let mut labels: Vec<&str> = drive["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["label"].as_str())
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, ["cut-in", "pedestrian"], "{data}");
    assert_eq!(
        data["scenario"]["label"], "pedestrian",
        "same id at both offices"
    );
    assert_eq!(data["run"]["pipeline"], "nightly-replay");
    assert_eq!(data["run"]["status"], "PASSED");
    assert_eq!(data["run"]["inputs"][0]["id"], "drv-rec-1");
    office_a.shutdown().await;
    office_b.shutdown().await;
}
