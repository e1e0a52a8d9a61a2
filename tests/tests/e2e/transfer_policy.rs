//! Transfer policies over GraphQL against the real server: `transferPolicy`,
//! `setTransferPolicy` (roles, errors naming the token, a change felt by the upload limiter at
//! once), the `transfers` queue (order, cursor paging, the summary) over rows written into
//! the `transfers` journal directly, as the uploader would, and real write-back uploads to a
//! loopback S3 held to the schedule's limit, re-prioritized and released by a policy change.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use milepost_schema::entity::transfer;
use milepost_schema::enums::{Role, TransferOp, TransferState};
use milepost_testkit::{error_codes, first_error, TestApp};
use sea_orm::{ActiveModelTrait, Set};
use serde_json::{json, Value};

const MIB: i64 = 1 << 20;

const SET: &str = "mutation($s: String!, $p: [String!]!) {
  setTransferPolicy(input: { uploadSchedule: $s, priorities: $p }) { uploadSchedule priorities limitBytesPerSecond }
}";

const POLICY: &str =
    "{ transferPolicy { uploadSchedule priorities limitBytesPerSecond nextChangeAt } }";

const LIST: &str = "query($state: TransferState, $first: Int, $after: String) {
  transfers(state: $state, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { cursor node { id key state priority size bytesDone } }
  }
}";

#[tokio::test]
async fn set_transfer_policy_is_admin_only_validated_and_felt_at_once() {
    let app = TestApp::start().await;
    let admin = app.token("admin", Role::Admin).await;
    let engineer = app.token("alice", Role::Engineer).await;
    let viewer = app.token("victor", Role::Viewer).await;

    // The configured defaults, readable by a viewer.
    let (_, body) = app.graphql(Some(&viewer), POLICY, json!({})).await;
    assert_eq!(
        body["data"]["transferPolicy"],
        json!({
            "uploadSchedule": "* off",
            "priorities": ["*.json", "*.mcap", "*"],
            "limitBytesPerSecond": null,
            "nextChangeAt": null
        }),
        "{body}"
    );

    let vars = json!({ "s": "* 4MiB", "p": ["*.json"] });
    for token in [&engineer, &viewer] {
        let (_, body) = app.graphql(Some(token), SET, vars.clone()).await;
        assert_eq!(error_codes(&body), vec!["FORBIDDEN"], "{body}");
    }
    assert_eq!(
        app.state().transfer_policy.current().schedule.to_string(),
        "* off"
    );

    let (_, body) = app
        .graphql(
            Some(&admin),
            SET,
            json!({ "s": "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10XB; * off", "p": [] }),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "input.uploadSchedule"
    );
    let message = first_error(&body);
    assert!(
        message.contains("rule 2")
            && message.contains("`10XB`")
            && message.contains("expected a rate"),
        "{message}"
    );

    let (_, body) = app
        .graphql(
            Some(&admin),
            SET,
            json!({ "s": "* off", "p": ["*.json", "camera/[0-9]*"] }),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["field"],
        "input.priorities[1]"
    );
    assert!(first_error(&body).contains("`camera/[0-9]*`"), "{body}");

    let (_, body) = app.graphql(Some(&admin), SET, vars).await;
    assert_eq!(
        body["data"]["setTransferPolicy"],
        json!({
            "uploadSchedule": "* 4MiB",
            "priorities": ["*.json"],
            "limitBytesPerSecond": 4 * MIB
        }),
        "{body}"
    );
    // The limiter every upload goes through follows at once, without a restart.
    assert_eq!(app.state().upload_limiter.limit(), Some(4 << 20));
    assert_eq!(
        app.state()
            .transfer_policy
            .current()
            .priority_of("a/b.json"),
        0
    );
    assert_eq!(
        app.state()
            .transfer_policy
            .current()
            .priority_of("a/b.mcap"),
        1
    );

    // Canonical text comes back; a time-dependent schedule names its next change.
    let (_, body) = app
        .graphql(
            Some(&admin),
            SET,
            json!({ "s": "mon-fri 9:00-18:00 20MiB/s; Sat,Sun 10MiB;", "p": [" *.json ", "*"] }),
        )
        .await;
    assert_eq!(
        body["data"]["setTransferPolicy"]["uploadSchedule"],
        "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB",
        "{body}"
    );
    let (_, body) = app.graphql(Some(&viewer), POLICY, json!({})).await;
    let policy = &body["data"]["transferPolicy"];
    assert_eq!(policy["priorities"], json!(["*.json", "*"]));
    assert!(policy["nextChangeAt"].is_string(), "{body}");
    app.shutdown().await;
}

struct Row {
    state: TransferState,
    priority: i32,
    size: i64,
    done: i64,
}

fn row(state: TransferState, priority: i32, size: i64, done: i64) -> Row {
    Row {
        state,
        priority,
        size,
        done,
    }
}

/// Journal rows in id order: (id, row).
async fn seed(app: &TestApp, rows: &[Row]) -> Vec<(i64, String)> {
    let mut ids = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let key = format!("drives/d{i}/file{i}.bin");
        let inserted = transfer::ActiveModel {
            op: Set(TransferOp::Put),
            bucket: Set("fleet".to_owned()),
            key: Set(key.clone()),
            size: Set(r.size),
            etag: Set(None),
            staging_path: Set(Some(format!("staging/{i}"))),
            state: Set(r.state),
            priority: Set(r.priority),
            bytes_done: Set(r.done),
            attempts: Set(i32::from(r.state != TransferState::Queued)),
            enqueued_at: Set(Utc
                .with_ymd_and_hms(2026, 11, 25, 9, 0, 0)
                .single()
                .expect("time")
                + chrono::Duration::seconds(i as i64)),
            started_at: Set(None),
            finished_at: Set(None),
            error: Set((r.state == TransferState::Failed).then(|| "access denied".to_owned())),
            ..Default::default()
        }
        .insert(app.db())
        .await
        .expect("transfer row");
        ids.push((inserted.id, key));
    }
    ids
}

/// Walks every page of `transfers(state)` `first` at a time; returns the ids in order and the
/// total count of each page.
async fn walk(
    app: &TestApp,
    token: &str,
    state: Option<&str>,
    first: i32,
) -> (Vec<String>, Vec<i64>) {
    let mut ids = Vec::new();
    let mut totals = Vec::new();
    let mut after = Value::Null;
    for _ in 0..50 {
        let (_, body) = app
            .graphql(
                Some(token),
                LIST,
                json!({ "state": state, "first": first, "after": after }),
            )
            .await;
        let list = &body["data"]["transfers"];
        assert!(list.is_object(), "{body}");
        let edges = list["edges"].as_array().expect("edges");
        assert!(edges.len() <= first as usize);
        ids.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().expect("id").to_owned()),
        );
        totals.push(list["totalCount"].as_i64().expect("total"));
        if !list["pageInfo"]["hasNextPage"]
            .as_bool()
            .expect("hasNextPage")
        {
            return (ids, totals);
        }
        after = list["pageInfo"]["endCursor"].clone();
    }
    panic!("more than 50 pages");
}

#[tokio::test]
async fn transfers_list_in_queue_order_with_cursor_paging_and_a_summary() {
    let app = TestApp::start().await;
    let admin = app.token("admin", Role::Admin).await;
    let viewer = app.token("victor", Role::Viewer).await;
    use TransferState::{Done, Failed, Queued, Uploading};
    let rows = [
        row(Done, 0, 5 * MIB, 5 * MIB),      // 0
        row(Queued, 2, 10 * MIB, 0),         // 1
        row(Uploading, 1, 8 * MIB, 2 * MIB), // 2
        row(Queued, 0, MIB, 0),              // 3
        row(Failed, 1, 3 * MIB, MIB),        // 4
        row(Queued, 2, 4 * MIB, 0),          // 5
        row(Uploading, 0, 2 * MIB, MIB),     // 6
        row(Queued, 1, 6 * MIB, 0),          // 7
        row(Done, 2, MIB, MIB),              // 8
        row(Queued, 0, 2 * MIB, 0),          // 9
    ];
    // The uploader would pick the queued rows up (and fail them: they have no staged bytes).
    app.state().write_back.shutdown().await;
    let seeded = seed(&app, &rows).await;
    let id = |i: usize| seeded[i].0.to_string();

    // UPLOADING by (priority, id), QUEUED by (priority, id), then DONE/FAILED newest first.
    let expected: Vec<String> = [6, 2, 3, 9, 7, 1, 5, 8, 4, 0].into_iter().map(id).collect();
    for first in [1, 3, 4, 20] {
        let (ids, totals) = walk(&app, &viewer, None, first).await;
        assert_eq!(ids, expected, "pages of {first}");
        assert!(totals.iter().all(|t| *t == 10), "{totals:?}");
    }
    let (queued, totals) = walk(&app, &viewer, Some("QUEUED"), 2).await;
    assert_eq!(queued, [3, 9, 7, 1, 5].map(id));
    assert_eq!(totals[0], 5);
    let (done, _) = walk(&app, &viewer, Some("DONE"), 1).await;
    assert_eq!(done, [8, 0].map(id));
    let (failed, _) = walk(&app, &viewer, Some("FAILED"), 5).await;
    assert_eq!(failed, [4].map(id));

    // A cursor of one list is refused by another, and garbage is refused.
    let (_, body) = app
        .graphql(
            Some(&viewer),
            LIST,
            json!({ "state": "QUEUED", "first": 1 }),
        )
        .await;
    let cursor = body["data"]["transfers"]["pageInfo"]["endCursor"].clone();
    for (state, after) in [(json!("DONE"), cursor), (Value::Null, json!("bm9wZQ"))] {
        let (_, body) = app
            .graphql(
                Some(&viewer),
                LIST,
                json!({ "state": state, "after": after }),
            )
            .await;
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "after");
    }
    let (_, body) = app
        .graphql(Some(&viewer), LIST, json!({ "first": 501 }))
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");

    // The summary counts the whole queue, whatever the state filter.
    let summary_query =
        "query($state: TransferState) { transfers(state: $state, first: 0) { totalCount summary {
        queuedCount queuedBytes uploadingCount uploadingBytes doneCount failedCount
        rateBytesPerSecond limitBytesPerSecond etaSeconds } } }";
    let (_, body) = app
        .graphql(Some(&viewer), summary_query, json!({ "state": "DONE" }))
        .await;
    let list = &body["data"]["transfers"];
    assert_eq!(list["totalCount"], 2, "{body}");
    let left = 10 * MIB + MIB + 4 * MIB + 6 * MIB + 2 * MIB; // queued
    let uploading_left = 6 * MIB + MIB;
    assert_eq!(
        list["summary"],
        json!({
            "queuedCount": 5, "queuedBytes": left, "uploadingCount": 2,
            "uploadingBytes": uploading_left, "doneCount": 2, "failedCount": 1,
            "rateBytesPerSecond": 0.0, "limitBytesPerSecond": null, "etaSeconds": null
        }),
        "nothing moves and nothing limits: no ETA; {body}"
    );
    // With a limit and nothing moving yet, the ETA is what is left at the limit.
    let (_, body) = app
        .graphql(Some(&admin), SET, json!({ "s": "* 1MiB", "p": [] }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = app.graphql(Some(&viewer), summary_query, json!({})).await;
    let summary = &body["data"]["transfers"]["summary"];
    assert_eq!(summary["limitBytesPerSecond"], MIB, "{body}");
    assert_eq!(
        summary["etaSeconds"].as_f64(),
        Some((left + uploading_left) as f64 / MIB as f64),
        "{body}"
    );
    // Bytes through the limiter show up as the rate.
    app.state().upload_limiter.acquire(MIB as u64 / 2).await;
    let (_, body) = app.graphql(Some(&viewer), summary_query, json!({})).await;
    let rate = body["data"]["transfers"]["summary"]["rateBytesPerSecond"]
        .as_f64()
        .expect("rate");
    assert!(rate > 0.0, "{body}");

    // A transfer is a Node and carries the contract's fields.
    let (_, body) = app
        .graphql(
            Some(&viewer),
            "{ transfers(state: FAILED) { edges { node { ... on Node { id } id bucket key size state priority bytesDone attempts enqueuedAt finishedAt error op } } } }",
            json!({}),
        )
        .await;
    let node = &body["data"]["transfers"]["edges"][0]["node"];
    assert_eq!(node["id"], id(4), "{body}");
    assert_eq!(node["state"], "FAILED");
    assert_eq!(node["op"], "PUT");
    assert_eq!(node["error"], "access denied");
    assert_eq!(node["key"], seeded[4].1.as_str());
    assert_eq!(node["enqueuedAt"], "2026-11-25T09:00:04+00:00");
    app.shutdown().await;
}

const UPLOAD_SUMMARY: &str = "{ transfers(state: QUEUED) {
    edges { node { key priority } }
    summary { queuedCount uploadingCount rateBytesPerSecond limitBytesPerSecond etaSeconds } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_uploads_follow_the_limit_the_priorities_and_a_change() {
    let app = TestApp::builder()
        .with_loopback_s3("fleet")
        .configure(|config| {
            config.transfer.upload_schedule = "* 1MiB".to_owned();
            config.transfer.priorities = vec!["*.json".to_owned(), "*".to_owned()];
        })
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    let upstream = app.upstream().store.clone();
    let write_back = app.state().write_back.clone();

    // Five 1 MiB objects: four upload at once (sharing 1 MiB/s), the fifth waits its turn.
    let started = Instant::now();
    for i in 0..5 {
        write_back
            .put_bytes(
                "fleet",
                &format!("uploads/f{i}.bin"),
                Bytes::from(vec![i as u8; 1 << 20]),
            )
            .await
            .expect("office write");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, body) = app.graphql(Some(&admin), UPLOAD_SUMMARY, json!({})).await;
    let list = &body["data"]["transfers"];
    let summary = &list["summary"];
    assert_eq!(summary["uploadingCount"], 4, "{body}");
    assert_eq!(summary["queuedCount"], 1, "{body}");
    assert_eq!(summary["limitBytesPerSecond"], MIB, "{body}");
    let rate = summary["rateBytesPerSecond"].as_f64().expect("rate");
    assert!(
        (0.4 * MIB as f64..=1.5 * MIB as f64).contains(&rate),
        "about 1 MiB/s, got {rate}: {body}"
    );
    assert!(
        summary["etaSeconds"].as_f64().is_some_and(|eta| eta > 1.0),
        "{body}"
    );
    assert_eq!(list["edges"][0]["node"]["priority"], 1, "{body}");
    // At most 1 MiB/s since the first write, plus the bucket (0.1 s) and some slack.
    let sent = app.state().upload_limiter.bytes_total() as f64;
    let allowed = (started.elapsed().as_secs_f64() * 1.05 + 0.2) * MIB as f64;
    assert!(
        sent <= allowed,
        "held to 1 MiB/s: {sent} bytes let through in {:?}",
        started.elapsed()
    );

    // New priorities re-rank the queued transfer; lifting the limit lets everything go.
    let (_, body) = app
        .graphql(Some(&admin), SET, json!({ "s": "* 1MiB", "p": ["*.bin"] }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let (_, body) = app.graphql(Some(&admin), UPLOAD_SUMMARY, json!({})).await;
    // Four uploads sharing 1 MiB/s need about 4 s: the fifth is still queued.
    assert_eq!(
        body["data"]["transfers"]["edges"][0]["node"]["priority"], 0,
        "{body}"
    );
    let lifted = Instant::now();
    let (_, body) = app
        .graphql(Some(&admin), SET, json!({ "s": "* off", "p": ["*"] }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    assert!(write_back.wait_idle(Duration::from_secs(30)).await);
    assert!(
        lifted.elapsed() < Duration::from_secs(3),
        "the rest went within {:?} of lifting the limit",
        lifted.elapsed()
    );
    for i in 0..5u8 {
        let meta = upstream
            .head("fleet", &format!("uploads/f{i}.bin"))
            .await
            .expect("in S3");
        assert_eq!(meta.size, 1 << 20);
    }
    app.shutdown().await;
}
