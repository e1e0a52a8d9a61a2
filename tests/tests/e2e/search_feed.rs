//! Two `milepost` nodes on one catalog database (SQLite or PostgreSQL per lane), each with its
//! own search index: what is registered, tagged or changed at one node is searchable at the
//! other through the catalog's change feed, and at the node that made it as soon as the call
//! returns. A token revoked at one node stops working at the other within the token cache's
//! lifetime. A node whose position was pruned from the feed knows it must rebuild.

use std::sync::Arc;
use std::time::{Duration, Instant};

use milepost_api::auth::TokenCache;
use milepost_indexer::feed;
use milepost_indexer::search::SearchIndex;
use milepost_indexer::Catalog;
use milepost_schema::enums::Role;
use milepost_testkit::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

const REGISTER_DRIVE: &str =
    r#"mutation($input: RegisterDriveInput!) { registerDrive(input: $input) { id } }"#;
const TAG_SCENARIO: &str =
    r#"mutation($input: TagScenarioInput!) { tagScenario(input: $input) { id } }"#;
const SEARCH: &str = r#"query($q: String!) { search(query: $q, first: 10) { totalCount edges { node { __typename ... on Drive { id } ... on Scenario { id } } } } }"#;

fn drive_input(id: &str, weather: &str) -> Value {
    json!({
        "id": id,
        "vehicle": "gz-004",
        "city": "guangzhou",
        "startedAt": "2026-11-01T08:00:00Z",
        "endedAt": "2026-11-01T09:30:00Z",
        "weather": weather,
        "tags": ["feed"],
    })
}

async fn hits(app: &TestApp, token: &str, query: &str) -> u64 {
    let (status, body) = app
        .graphql(Some(token), SEARCH, json!({ "q": query }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["search"]["totalCount"]
        .as_u64()
        .expect("count")
}

/// Polls `app` until `query` has `expected` hits; returns how long it took.
async fn until_hits(app: &TestApp, token: &str, query: &str, expected: u64) -> Duration {
    let start = Instant::now();
    loop {
        if hits(app, token, query).await == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "`{query}` never reached {expected} hits at the other node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn changes_at_one_node_are_searchable_at_the_other() {
    let first = TestApp::start().await;
    let url = first.state().config.database.url.clone();
    let second = TestApp::builder()
        .configure(move |config| config.database.url = url)
        .start()
        .await;
    // Tokens live in the shared database: valid at both nodes.
    let admin = first.token("admin", Role::Admin).await;
    let pipeline = second.token("ci", Role::Pipeline).await;

    // Registered at the first node: searchable there when the call returns, at the second
    // through the feed.
    let (_, body) = first
        .graphql(
            Some(&pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-feed-1", "rain") }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(hits(&first, &admin, "id:drv-feed-1").await, 1);
    let took = until_hits(&second, &admin, "id:drv-feed-1 weather:rain", 1).await;
    eprintln!("registered at node 1, searchable at node 2 after {took:?}");

    // Tagged at the second node: the scenario is found at the first.
    let (_, body) = second
        .graphql(
            Some(&pipeline),
            TAG_SCENARIO,
            json!({ "input": { "driveId": "drv-feed-1", "label": "cut-in", "start": "2026-11-01T08:10:00Z", "end": "2026-11-01T08:10:30Z" } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let scenario = body["data"]["tagScenario"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(hits(&second, &admin, &format!("id:{scenario}")).await, 1);
    until_hits(&first, &admin, &format!("id:{scenario}"), 1).await;

    // Changed at the second node: the first node's document follows, the old one is gone.
    let (_, body) = second
        .graphql(
            Some(&pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-feed-1", "snow") }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    until_hits(&first, &admin, "id:drv-feed-1 weather:snow", 1).await;
    assert_eq!(hits(&first, &admin, "id:drv-feed-1 weather:rain").await, 0);
    assert_eq!(
        hits(&first, &admin, "id:drv-feed-1").await,
        1,
        "one document"
    );

    // Many writers at both nodes at once: every drive ends up searchable at both.
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (client, url, token) = (
            if i % 2 == 0 {
                first.client.clone()
            } else {
                second.client.clone()
            },
            format!(
                "{}/graphql",
                if i % 2 == 0 {
                    &first.base_url
                } else {
                    &second.base_url
                }
            ),
            pipeline.clone(),
        );
        writes.spawn(async move {
            let body: Value = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "query": REGISTER_DRIVE, "variables": { "input": drive_input(&format!("drv-many-{i:02}"), "fog") } }))
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            assert!(body.get("errors").is_none(), "{body}");
        });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("write");
    }
    until_hits(&first, &admin, "weather:fog", 40).await;
    until_hits(&second, &admin, "weather:fog", 40).await;

    // A token revoked at the second node stops working at the first within the cache's TTL.
    assert_eq!(hits(&first, &pipeline, "id:drv-feed-1").await, 1);
    second
        .state()
        .revoke_token("ci")
        .await
        .expect("revoke at node 2");
    let start = Instant::now();
    loop {
        let (status, _) = first
            .graphql(Some(&pipeline), SEARCH, json!({ "q": "x" }))
            .await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            start.elapsed() <= TokenCache::TTL + Duration::from_secs(2),
            "the revoked token still works at node 1 after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "revoked at node 2, refused at node 1 after {:?}",
        start.elapsed()
    );
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test]
async fn a_node_behind_the_pruned_feed_knows_it_must_rebuild() {
    let app = TestApp::start().await;
    let pipeline = app.token("ci", Role::Pipeline).await;
    for i in 0..3 {
        let (_, body) = app
            .graphql(
                Some(&pipeline),
                REGISTER_DRIVE,
                json!({ "input": drive_input(&format!("drv-prune-{i}"), "fog") }),
            )
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    // A search applies this node's own writes: the node now stands at the feed's head.
    assert_eq!(hits(&app, &pipeline, "weather:fog").await, 3);
    let db = app.db().clone();
    // A node that has applied nothing yet: the feed still holds every change.
    let stale = Catalog::new(
        db.clone(),
        app.state().catalog.layout.clone(),
        Arc::new(SearchIndex::in_memory().expect("index")),
    );
    assert!(!stale.missed_changes().await.expect("feed"));
    let pruned = feed::prune(&db, Duration::ZERO).await.expect("prune");
    assert_eq!(pruned, 2, "every change but the newest");
    assert!(
        stale.missed_changes().await.expect("feed"),
        "changes it never applied are gone"
    );
    assert!(
        !app.state().catalog.missed_changes().await.expect("feed"),
        "the node that made them is at the head"
    );
    stale.reindex().await.expect("rebuild");
    assert!(!stale.missed_changes().await.expect("feed"));
    assert_eq!(stale.feed_position(), feed::head(&db).await.expect("head"));
    assert_eq!(
        stale.search.doc_count(),
        app.state().catalog.search.doc_count()
    );
    app.shutdown().await;
}

/// Registrations do not commit the search index one by one: the feed's follower applies them
/// in batches (one commit per `FOLLOW_EVERY` at most), and each drive is still searchable
/// within a second of its response, and at once by a search at the node that registered it.
#[tokio::test]
async fn registrations_share_index_commits_and_are_searchable_within_a_second() {
    let app = TestApp::start().await;
    let pipeline = app.token("ci", Role::Pipeline).await;
    let index = app.state().catalog.search.clone();
    let drives: u64 = 24;
    let commits_before = index.commits();
    let start = Instant::now();
    for i in 0..drives {
        let (_, body) = app
            .graphql(
                Some(&pipeline),
                REGISTER_DRIVE,
                json!({ "input": drive_input(&format!("drv-batch-{i:02}"), "hail") }),
            )
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    let elapsed = start.elapsed();
    let commits = index.commits() - commits_before;
    // The follower commits at most once per tick; one more for a tick already under way.
    let ticks = (elapsed.as_millis() / feed::FOLLOW_EVERY.as_millis()) as u64 + 2;
    eprintln!("{drives} registrations in {elapsed:?}: {commits} index commits");
    assert!(
        commits <= ticks.min(drives / 2),
        "{commits} index commits for {drives} registrations in {elapsed:?} (at most {} expected)",
        ticks.min(drives / 2)
    );

    // Without any search at this node, the follower makes the last drive searchable.
    let request = milepost_indexer::search::SearchRequest::new("id:drv-batch-23");
    let start = Instant::now();
    loop {
        if index.search(&request).expect("search").total == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the last registered drive is not in the index after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "the last drive was in the index {:?} after its response",
        start.elapsed()
    );

    // A search at this node finds its own writes as soon as they return.
    let (_, body) = app
        .graphql(
            Some(&pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-batch-last", "hail") }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(hits(&app, &pipeline, "weather:hail").await, drives + 1);
    app.shutdown().await;
}
