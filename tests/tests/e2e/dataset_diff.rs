//! Versions of a dataset: `datasetDiff` reports exactly what a new version adds, drops and
//! changes, and the first reservation of the new version in an office that holds the old one
//! fetches only the new objects' bytes from upstream.

use std::time::Duration;

use bytes::Bytes;
use milepost_schema::enums::Role;
use milepost_testkit::{error_codes, TestApp};
use serde_json::{json, Value};

const BUCKET: &str = "fleet";
const NAME: &str = "drift-nightly";

const CREATE: &str =
    "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name version objectCount } }";
const RESERVE: &str =
    "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }";
const RESERVATION: &str = "query($id: ID!) { reservation(id: $id) {
    state bytesTotal bytesDone bytesFromUpstream error dataset { version } } }";
const DIFF: &str = "query($name: String!, $from: Int, $to: Int) {
    datasetDiff(name: $name, from: $from, to: $to, first: 500) {
      name from to addedCount removedCount changedCount unchangedCount
      addedBytes removedBytes changedBytes unchangedBytes
      added { bucket key size etag bytes } removed { key } changed { from { key } to { key } } } }";

fn key(i: usize) -> String {
    format!("drift/part-{i:02}.bin")
}

fn size(i: usize) -> usize {
    64 * 1024 + i * 1024
}

async fn reserve_ready(app: &TestApp, token: &str, version: i64) -> Value {
    let (_, body) = app
        .graphql(
            Some(token),
            RESERVE,
            json!({ "input": { "dataset": NAME, "version": version, "ttlSeconds": 3600 } }),
        )
        .await;
    let id = body["data"]["reserveDataset"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("reserve: {body}"))
        .to_owned();
    for _ in 0..600 {
        let (_, body) = app
            .graphql(Some(token), RESERVATION, json!({ "id": id }))
            .await;
        let row = body["data"]["reservation"].clone();
        match row["state"].as_str() {
            Some("READY") => return row,
            Some("PENDING") | Some("MATERIALIZING") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => panic!("reservation ended: {body}"),
        }
    }
    panic!("reservation {id} not READY in time");
}

async fn office_egress(app: &TestApp, token: &str) -> i64 {
    let (_, body) = app
        .graphql(
            Some(token),
            "{ cacheStats { bytesFromUpstream } }",
            json!({}),
        )
        .await;
    body["data"]["cacheStats"]["bytesFromUpstream"]
        .as_i64()
        .unwrap_or_else(|| panic!("cacheStats: {body}"))
}

#[tokio::test]
async fn a_new_version_reports_its_changes_and_fetches_only_what_is_new() {
    let app = TestApp::builder().with_loopback_s3(BUCKET).start().await;
    let engineer = app.token("alice", Role::Engineer).await;
    let store = app.upstream().store.clone();
    for i in 0..25 {
        let body = Bytes::from(vec![u8::try_from(i).expect("small"); size(i)]);
        store.put(BUCKET, &key(i), body).await.expect("seed put");
    }
    let objects = |range: std::ops::Range<usize>| -> Vec<Value> {
        range
            .map(|i| json!({ "bucket": BUCKET, "key": key(i) }))
            .collect()
    };

    // v1: objects 0..15, reserved and materialized.
    let (_, body) = app
        .graphql(
            Some(&engineer),
            CREATE,
            json!({ "input": { "name": NAME, "objects": objects(0..15) } }),
        )
        .await;
    assert_eq!(body["data"]["createDataset"]["version"], 1, "{body}");
    reserve_ready(&app, &engineer, 1).await;

    // v2 drops 0..5 and adds 15..25.
    let (_, body) = app
        .graphql(
            Some(&engineer),
            CREATE,
            json!({ "input": { "name": NAME, "objects": objects(5..25) } }),
        )
        .await;
    assert_eq!(body["data"]["createDataset"]["version"], 2, "{body}");

    let added_bytes: usize = (15..25).map(size).sum();
    let removed_bytes: usize = (0..5).map(size).sum();
    let unchanged_bytes: usize = (5..15).map(size).sum();
    for variables in [
        json!({ "name": NAME, "from": 1, "to": 2 }),
        // The defaults: the latest version against the one before it.
        json!({ "name": NAME }),
    ] {
        let (_, body) = app.graphql(Some(&engineer), DIFF, variables).await;
        let diff = &body["data"]["datasetDiff"];
        assert_eq!(
            (diff["from"].clone(), diff["to"].clone()),
            (json!(1), json!(2)),
            "{body}"
        );
        assert_eq!(diff["addedCount"], 10, "{body}");
        assert_eq!(diff["removedCount"], 5, "{body}");
        assert_eq!(diff["changedCount"], 0, "{body}");
        assert_eq!(diff["unchangedCount"], 10, "{body}");
        assert_eq!(diff["addedBytes"], added_bytes, "{body}");
        assert_eq!(diff["removedBytes"], removed_bytes, "{body}");
        assert_eq!(diff["unchangedBytes"], unchanged_bytes, "{body}");
        let keys = |list: &Value| -> Vec<String> {
            list.as_array()
                .expect("list")
                .iter()
                .map(|m| m["key"].as_str().expect("key").to_owned())
                .collect()
        };
        assert_eq!(keys(&diff["added"]), (15..25).map(key).collect::<Vec<_>>());
        assert_eq!(keys(&diff["removed"]), (0..5).map(key).collect::<Vec<_>>());
        assert_eq!(diff["changed"], json!([]));
        assert_eq!(diff["added"][0]["size"], size(15), "{body}");
    }

    // The dataset page shows the changes from the version before; a first version has none.
    let page = |version: i32| {
        let url = format!("{}/datasets/{NAME}?version={version}", app.base_url);
        let cookie = format!("milepost_session={engineer}");
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            response.text().await.expect("body")
        }
    };
    let v2 = page(2).await;
    for expected in [
        "Changes from v1",
        r#"<span id="diff-added">+10 files"#,
        r#"<span id="diff-removed">−5 files"#,
        r#"<span id="diff-changed">0 changed"#,
        "drift/part-15.bin",
        "drift/part-04.bin",
    ] {
        assert!(v2.contains(expected), "{expected} on the v2 page");
    }
    assert!(!page(1).await.contains(r#"id="changes""#));

    // Reserving v2 in the office that holds v1 fetches the ten new objects and nothing else.
    let before = office_egress(&app, &engineer).await;
    let row = reserve_ready(&app, &engineer, 2).await;
    assert_eq!(row["dataset"]["version"], 2);
    assert_eq!(row["bytesFromUpstream"], added_bytes, "{row}");
    assert_eq!(row["bytesDone"], added_bytes + unchanged_bytes, "{row}");
    assert_eq!(
        office_egress(&app, &engineer).await - before,
        i64::try_from(added_bytes).expect("small"),
        "office egress"
    );

    // Versions that do not exist, and a first version with nothing before it.
    let (_, body) = app
        .graphql(
            Some(&engineer),
            DIFF,
            json!({ "name": NAME, "from": 7, "to": 2 }),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["NOT_FOUND"], "{body}");
    let (_, body) = app
        .graphql(Some(&engineer), DIFF, json!({ "name": NAME, "to": 1 }))
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "from", "{body}");
    app.shutdown().await;
}
