//! `milepost pull`: a dataset copied to a workstation directory through `/data`, byte-exact;
//! a second pull after one file was deleted and one truncated fetches exactly those two; a
//! pull cut short resumes its part file with a range request.

use std::path::Path;

use milepost_api::client::Client;
use milepost_api::pull::{part_file, pull, PullReport, PullRequest};
use milepost_indexer::fleet::FleetSpec;
use milepost_schema::enums::Role;
use milepost_store::ByteRange;
use milepost_testkit::TestApp;
use serde_json::{json, Value};

const NAME: &str = "pull-me";

async fn bytes_served(app: &TestApp, token: &str) -> u64 {
    let (_, body) = app
        .graphql(Some(token), "{ cacheStats { bytesServed } }", json!({}))
        .await;
    body["data"]["cacheStats"]["bytesServed"]
        .as_u64()
        .unwrap_or_else(|| panic!("cacheStats: {body}"))
}

async fn pull_into(app: &TestApp, token: &str, dir: &Path) -> PullReport {
    let client = Client::new(&app.base_url, Some(token.to_owned())).expect("client");
    let request = PullRequest {
        dataset: NAME.to_owned(),
        version: None,
        dir: dir.to_owned(),
        jobs: 4,
        progress: false,
    };
    pull(&client, &app.base_url, Some(token), &request)
        .await
        .expect("pull")
}

/// Every member's local copy equals the upstream object.
async fn assert_exact(app: &TestApp, dir: &Path, members: &[Value]) {
    for m in members {
        let (bucket, key) = (
            m["bucket"].as_str().expect("b"),
            m["key"].as_str().expect("k"),
        );
        let upstream = app
            .upstream()
            .store
            .get(bucket, key, ByteRange::All, None)
            .await
            .expect("get")
            .collect(usize::MAX)
            .await
            .expect("body");
        let local = std::fs::read(dir.join(bucket).join(key)).expect("local copy");
        assert!(local == upstream, "{bucket}/{key} differs");
    }
}

#[tokio::test]
async fn pull_is_exact_incremental_and_resumable() {
    let app = TestApp::builder()
        .seeded(FleetSpec::small(11))
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    let engineer = app.token("alice", Role::Engineer).await;
    app.sync_cleanly(&admin).await;
    let (_, body) = app
        .graphql(
            Some(&engineer),
            "{ search(query: \"\", kinds: [DRIVE], first: 1) { edges { node { ... on Drive { id } } } } }",
            json!({}),
        )
        .await;
    let drive = body["data"]["search"]["edges"][0]["node"]["id"].clone();
    let (_, body) = app
        .graphql(
            Some(&engineer),
            "mutation($input: CreateDatasetInput!) { createDataset(input: $input) {
               objects(first: 500) { edges { node { bucket key size etag } } } } }",
            json!({ "input": { "name": NAME, "entityIds": [drive] } }),
        )
        .await;
    let members: Vec<Value> = body["data"]["createDataset"]["objects"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("createDataset: {body}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect();
    assert!(members.len() >= 3, "{body}");
    let total: u64 = members
        .iter()
        .map(|m| m["size"].as_u64().expect("size"))
        .sum();
    let dir = tempfile::tempdir().expect("tempdir");

    let first = pull_into(&app, &engineer, dir.path()).await;
    assert_eq!(first.files, members.len() as u64);
    assert_eq!(first.fetched_files, first.files);
    assert_eq!((first.bytes, first.fetched_bytes), (total, total));
    assert_eq!(first.up_to_date, 0);
    assert_exact(&app, dir.path(), &members).await;

    // One file deleted, one truncated: the second pull fetches exactly those two.
    let path_of = |m: &Value| {
        dir.path()
            .join(m["bucket"].as_str().expect("b"))
            .join(m["key"].as_str().expect("k"))
    };
    let (deleted, truncated) = (&members[0], &members[1]);
    std::fs::remove_file(path_of(deleted)).expect("delete");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path_of(truncated))
        .expect("open");
    file.set_len(truncated["size"].as_u64().expect("size") / 2)
        .expect("truncate");
    drop(file);
    let two = deleted["size"].as_u64().expect("size") + truncated["size"].as_u64().expect("size");
    let served = bytes_served(&app, &engineer).await;
    let second = pull_into(&app, &engineer, dir.path()).await;
    assert_eq!(second.fetched_files, 2, "{second:?}");
    assert_eq!(second.fetched_bytes, two, "{second:?}");
    assert_eq!(second.up_to_date, first.files - 2, "{second:?}");
    assert_eq!(
        bytes_served(&app, &engineer).await - served,
        two,
        "the server sent those two"
    );
    assert_exact(&app, dir.path(), &members).await;

    // Nothing changed: nothing fetched.
    let third = pull_into(&app, &engineer, dir.path()).await;
    assert_eq!((third.fetched_files, third.up_to_date), (0, first.files));

    // A pull cut short left half of a file in its part: the next one fetches the rest only.
    let cut = &members[2];
    let (bucket, key, etag) = (
        cut["bucket"].as_str().expect("b"),
        cut["key"].as_str().expect("k"),
        cut["etag"].as_str().expect("e"),
    );
    let size = cut["size"].as_u64().expect("size");
    let whole = std::fs::read(path_of(cut)).expect("copy");
    std::fs::remove_file(path_of(cut)).expect("delete");
    let half = (size / 2) as usize;
    std::fs::write(part_file(dir.path(), bucket, key, etag), &whole[..half]).expect("part");
    let resumed = pull_into(&app, &engineer, dir.path()).await;
    assert_eq!(resumed.fetched_files, 1, "{resumed:?}");
    assert_eq!(resumed.fetched_bytes, size - half as u64, "{resumed:?}");
    assert_exact(&app, dir.path(), &members).await;

    // A corrupt part (bytes that are not the object's) is caught by the MD5 and removed.
    std::fs::remove_file(path_of(cut)).expect("delete");
    let mut bad = whole[..half].to_vec();
    bad[0] ^= 0xff;
    let part = part_file(dir.path(), bucket, key, etag);
    std::fs::write(&part, &bad).expect("part");
    let client = Client::new(&app.base_url, Some(engineer.clone())).expect("client");
    let err = pull(
        &client,
        &app.base_url,
        Some(&engineer),
        &PullRequest {
            dataset: NAME.to_owned(),
            version: None,
            dir: dir.path().to_owned(),
            jobs: 2,
            progress: false,
        },
    )
    .await
    .expect_err("the MD5 does not match");
    assert!(format!("{err:#}").contains("MD5"), "{err:#}");
    assert!(!part.exists(), "the bad part is removed");
    let healed = pull_into(&app, &engineer, dir.path()).await;
    assert_eq!(healed.fetched_bytes, size);
    assert_exact(&app, dir.path(), &members).await;
    app.shutdown().await;
}
