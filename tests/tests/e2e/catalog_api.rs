//! The GraphQL catalog API against the real server, on SQLite or PostgreSQL
//! (`MILEPOST_TEST_DATABASE_URL`): registration, idempotency, validation, auth, limits,
//! pagination, bad input, and the sidecars registration writes through the office.
//!
//! (Over 600 lines: GraphQL catalog scenarios; each test is independent.)

use chrono::{Duration, TimeZone, Utc};
use milepost_schema::entity::object;
use milepost_schema::enums::Role;
use milepost_store::ByteRange;
use milepost_testkit::{assert_refused, error_codes, first_error, LoopbackUpstream, TestApp};
use reqwest::StatusCode;
use sea_orm::{EntityTrait, Set};
use serde_json::{json, Value};

const REGISTER_DRIVE: &str = r#"
mutation($input: RegisterDriveInput!) {
  registerDrive(input: $input) {
    id vehicle city route startedAt endedAt distanceKm softwareVersion weather tags
    events { at kind label }
    topics
    scenarios { id label tags startTime endTime description drive { id } }
    objects(first: 10) { totalCount edges { cursor } pageInfo { hasNextPage endCursor } }
    totalBytes cachedBytes bucket prefix
  }
}"#;

const REGISTER_RUN: &str = r#"
mutation($input: RegisterRunInput!) {
  registerRun(input: $input) {
    id kind pipeline commit status startedAt finishedAt tags metrics totalBytes bucket prefix
    inputs { __typename ... on Drive { id } ... on Scenario { id label } ... on Run { id } }
  }
}"#;

const TAG_SCENARIO: &str = r#"
mutation($input: TagScenarioInput!) {
  tagScenario(input: $input) { id label tags startTime endTime description drive { id vehicle } }
}"#;

fn drive_input(id: &str) -> Value {
    json!({
        "id": id,
        "vehicle": "gz-004",
        "city": "guangzhou",
        "route": "tianhe-loop",
        "startedAt": "2026-11-01T08:00:00Z",
        "endedAt": "2026-11-01T09:30:00Z",
        "distanceKm": 42.5,
        "softwareVersion": "av-3.14.2",
        "weather": "rain",
        "tags": ["night", "highway", "night"],
        "events": [
            { "at": "2026-11-01T08:10:00Z", "kind": "disengagement", "label": "driver took over" },
            { "at": "2026-11-01T08:20:00Z", "kind": "hard_brake" }
        ],
        "scenarios": [
            { "label": "cut-in", "start": "2026-11-01T08:09:30Z", "end": "2026-11-01T08:10:10Z", "tags": ["left"] }
        ]
    })
}

struct Tokens {
    admin: String,
    pipeline: String,
    engineer: String,
    viewer: String,
}

async fn tokens(app: &TestApp) -> Tokens {
    Tokens {
        admin: app.token("admin", Role::Admin).await,
        pipeline: app.token("ci", Role::Pipeline).await,
        engineer: app.token("alice", Role::Engineer).await,
        viewer: app.token("bob", Role::Viewer).await,
    }
}

fn assert_ok(body: &Value) {
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
}

#[tokio::test]
async fn register_drive_run_and_scenario_then_read_every_field_back() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;

    let (status, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-001") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ok(&body);
    let drive = &body["data"]["registerDrive"];
    assert_eq!(drive["id"], "drv-001");
    assert_eq!(drive["vehicle"], "gz-004");
    assert_eq!(drive["city"], "guangzhou");
    assert_eq!(drive["route"], "tianhe-loop");
    assert_eq!(drive["distanceKm"], 42.5);
    assert_eq!(drive["softwareVersion"], "av-3.14.2");
    assert_eq!(drive["weather"], "rain");
    assert_eq!(drive["tags"], json!(["night", "highway"]));
    assert_eq!(drive["events"][0]["kind"], "disengagement");
    assert_eq!(drive["events"][0]["label"], "driver took over");
    assert_eq!(drive["events"][1]["label"], Value::Null);
    assert_eq!(drive["scenarios"][0]["label"], "cut-in");
    assert_eq!(drive["scenarios"][0]["drive"]["id"], "drv-001");
    assert_eq!(drive["bucket"], "fleet");
    assert_eq!(drive["prefix"], "drives/2026-11-01/gz-004/drv-001/");
    assert_eq!(drive["totalBytes"], 0);
    assert_eq!(drive["objects"]["totalCount"], 0);
    let started =
        chrono::DateTime::parse_from_rfc3339(drive["startedAt"].as_str().expect("startedAt"))
            .expect("RFC 3339");
    assert_eq!(
        started,
        Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0)
            .single()
            .expect("date")
    );
    let declared_scenario = drive["scenarios"][0]["id"].as_str().expect("id").to_owned();

    let (_, body) = app
        .graphql(
            Some(&t.engineer),
            TAG_SCENARIO,
            json!({ "input": {
                "driveId": "drv-001", "label": "unprotected left turn",
                "start": "2026-11-01T08:30:00Z", "end": "2026-11-01T08:30:30Z",
                "tags": ["intersection"], "description": "oncoming truck"
            }}),
        )
        .await;
    assert_ok(&body);
    let scenario = &body["data"]["tagScenario"];
    assert_eq!(scenario["label"], "unprotected left turn");
    assert_eq!(scenario["description"], "oncoming truck");
    assert_eq!(scenario["drive"]["vehicle"], "gz-004");
    let tagged_scenario = scenario["id"].as_str().expect("id").to_owned();

    let (_, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_RUN,
            json!({ "input": {
                "id": "sim-42", "kind": "SIMULATION", "pipeline": "nightly-replay", "commit": "abc123",
                "status": "PASSED", "startedAt": "2026-11-02T01:00:00Z", "finishedAt": "2026-11-02T01:20:00Z",
                "inputs": ["drv-001", tagged_scenario], "tags": ["regression"],
                "metrics": { "collisions": 0, "min_ttc_s": 1.7 }
            }}),
        )
        .await;
    assert_ok(&body);
    let run = &body["data"]["registerRun"];
    assert_eq!(run["kind"], "SIMULATION");
    assert_eq!(run["status"], "PASSED");
    assert_eq!(run["commit"], "abc123");
    assert_eq!(run["prefix"], "runs/sim-42/");
    assert_eq!(run["metrics"]["min_ttc_s"], 1.7);
    assert_eq!(run["inputs"][0]["__typename"], "Drive");
    assert_eq!(run["inputs"][1]["__typename"], "Scenario");
    assert_eq!(run["inputs"][1]["label"], "unprotected left turn");

    // Read back through the query side, with a viewer token.
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            r#"query($d: ID!, $s: ID!, $r: ID!) {
                drive(id: $d) { id scenarios { id label } events { kind } }
                scenario(id: $s) { id label drive { id } }
                run(id: $r) { id pipeline inputs { __typename } }
                missing: drive(id: "nope") { id }
                me { name role }
            }"#,
            json!({ "d": "drv-001", "s": declared_scenario, "r": "sim-42" }),
        )
        .await;
    assert_ok(&body);
    let data = &body["data"];
    assert_eq!(data["drive"]["scenarios"].as_array().map(Vec::len), Some(2));
    assert_eq!(data["scenario"]["label"], "cut-in");
    assert_eq!(data["run"]["inputs"].as_array().map(Vec::len), Some(2));
    assert_eq!(data["missing"], Value::Null);
    assert_eq!(data["me"], json!({ "name": "bob", "role": "VIEWER" }));
    app.shutdown().await;
}

#[tokio::test]
async fn registration_is_idempotent_on_id() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;
    for _ in 0..2 {
        let (_, body) = app
            .graphql(
                Some(&t.pipeline),
                REGISTER_DRIVE,
                json!({ "input": drive_input("drv-002") }),
            )
            .await;
        assert_ok(&body);
    }
    // Same id with changed fields updates in place.
    let mut changed = drive_input("drv-002");
    changed["weather"] = json!("clear");
    changed["events"] = json!([{ "at": "2026-11-01T08:15:00Z", "kind": "lane_change" }]);
    let (_, body) = app
        .graphql(Some(&t.admin), REGISTER_DRIVE, json!({ "input": changed }))
        .await;
    assert_ok(&body);
    let drive = &body["data"]["registerDrive"];
    assert_eq!(drive["weather"], "clear");
    assert_eq!(drive["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(drive["scenarios"].as_array().map(Vec::len), Some(1));

    // Tagging the same span twice keeps one scenario.
    let tag = json!({ "input": {
        "driveId": "drv-002", "label": "pedestrian", "start": "2026-11-01T08:40:00Z", "end": "2026-11-01T08:40:05Z"
    }});
    let (_, first) = app
        .graphql(Some(&t.engineer), TAG_SCENARIO, tag.clone())
        .await;
    let (_, second) = app.graphql(Some(&t.engineer), TAG_SCENARIO, tag).await;
    assert_eq!(
        first["data"]["tagScenario"]["id"],
        second["data"]["tagScenario"]["id"]
    );

    let run = json!({ "input": { "id": "bench-1", "kind": "BENCHMARK", "pipeline": "p", "status": "RUNNING",
        "inputs": ["drv-002", "drv-002"] }});
    for _ in 0..2 {
        let (_, body) = app
            .graphql(Some(&t.pipeline), REGISTER_RUN, run.clone())
            .await;
        assert_ok(&body);
        assert_eq!(
            body["data"]["registerRun"]["inputs"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            r#"{ drive(id: "drv-002") { scenarios { id } events { kind } } }"#,
            json!({}),
        )
        .await;
    assert_ok(&body);
    assert_eq!(
        body["data"]["drive"]["scenarios"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(body["data"]["drive"]["events"][0]["kind"], "lane_change");
    app.shutdown().await;
}

#[tokio::test]
async fn each_validation_error_is_bad_input_naming_the_field() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;
    let (_, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-ok") }),
        )
        .await;
    assert_ok(&body);

    let drive_cases: Vec<(&str, Value, &str)> = vec![
        (
            "ended before started",
            json!({ "endedAt": "2026-11-01T07:00:00Z" }),
            "input.endedAt",
        ),
        ("empty vehicle", json!({ "vehicle": "  " }), "input.vehicle"),
        (
            "id with a slash",
            json!({ "id": "../etc/passwd" }),
            "input.id",
        ),
        ("empty id", json!({ "id": "" }), "input.id"),
        (
            "negative distance",
            json!({ "distanceKm": -3.0 }),
            "input.distanceKm",
        ),
        (
            "event outside the drive",
            json!({ "events": [{ "at": "2026-11-02T00:00:00Z", "kind": "x" }] }),
            "input.events[0].at",
        ),
        (
            "empty event kind",
            json!({ "events": [{ "at": "2026-11-01T08:10:00Z", "kind": "" }] }),
            "input.events[0].kind",
        ),
        (
            "scenario ends before it starts",
            json!({ "scenarios": [{ "label": "x", "start": "2026-11-01T08:10:00Z", "end": "2026-11-01T08:09:00Z" }] }),
            "input.scenarios[0].end",
        ),
        (
            "bad bucket",
            json!({ "bucket": "Not_A_Bucket" }),
            "input.bucket",
        ),
        (
            "prefix escaping",
            json!({ "prefix": "drives/../../secrets" }),
            "input.prefix",
        ),
        (
            "1 MiB label",
            json!({ "city": "x".repeat(1 << 20) }),
            "input.city",
        ),
        (
            "too many tags",
            json!({ "tags": (0..100).map(|i| format!("t{i}")).collect::<Vec<_>>() }),
            "input.tags",
        ),
    ];
    for (case, change, field) in drive_cases {
        let mut input = drive_input("drv-bad");
        for (k, v) in change.as_object().expect("object") {
            input[k] = v.clone();
        }
        let (status, body) = app
            .graphql(Some(&t.pipeline), REGISTER_DRIVE, json!({ "input": input }))
            .await;
        assert_eq!(status, StatusCode::OK, "{case}");
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{case}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{case}: {body}"
        );
        assert!(
            first_error(&body).starts_with(field),
            "{case}: {}",
            first_error(&body)
        );
        assert!(
            first_error(&body).len() < 300,
            "{case}: message echoes the input"
        );
    }

    let run_cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown input id",
            json!({ "inputs": ["drv-ok", "drv-missing"] }),
            "input.inputs[1]",
        ),
        (
            "finished before started",
            json!({ "startedAt": "2026-11-02T02:00:00Z", "finishedAt": "2026-11-02T01:00:00Z" }),
            "input.finishedAt",
        ),
        (
            "empty pipeline",
            json!({ "pipeline": "" }),
            "input.pipeline",
        ),
        (
            "metrics not an object",
            json!({ "metrics": [1, 2] }),
            "input.metrics",
        ),
        (
            "run is its own input",
            json!({ "inputs": ["run-bad"] }),
            "input.inputs[0]",
        ),
    ];
    for (case, change, field) in run_cases {
        let mut input =
            json!({ "id": "run-bad", "kind": "SIL", "pipeline": "p", "status": "RUNNING" });
        for (k, v) in change.as_object().expect("object") {
            input[k] = v.clone();
        }
        let (_, body) = app
            .graphql(Some(&t.pipeline), REGISTER_RUN, json!({ "input": input }))
            .await;
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{case}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{case}: {body}"
        );
    }
    assert!(first_error(&app.graphql(Some(&t.pipeline), REGISTER_RUN,
        json!({ "input": { "id": "r", "kind": "SIL", "pipeline": "p", "status": "RUNNING", "inputs": ["ghost"] } })).await.1)
        .contains("unknown input id \"ghost\""));

    let tag_cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown drive",
            json!({ "driveId": "drv-missing" }),
            "input.driveId",
        ),
        (
            "span outside the drive",
            json!({ "start": "2026-11-01T07:00:00Z" }),
            "input.start",
        ),
        (
            "end before start",
            json!({ "end": "2026-11-01T08:00:01Z", "start": "2026-11-01T08:00:02Z" }),
            "input.end",
        ),
        ("empty label", json!({ "label": "" }), "input.label"),
        (
            "1 MiB label",
            json!({ "label": "l".repeat(1 << 20) }),
            "input.label",
        ),
    ];
    for (case, change, field) in tag_cases {
        let mut input = json!({ "driveId": "drv-ok", "label": "x", "start": "2026-11-01T08:00:00Z", "end": "2026-11-01T08:00:10Z" });
        for (k, v) in change.as_object().expect("object") {
            input[k] = v.clone();
        }
        let (_, body) = app
            .graphql(Some(&t.engineer), TAG_SCENARIO, json!({ "input": input }))
            .await;
        assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{case}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{case}: {body}"
        );
    }

    // Nothing invalid was stored, and the valid drive is intact.
    let (_, body) = app
        .graphql(Some(&t.viewer), r#"{ a: drive(id: "drv-bad") { id } b: run(id: "run-bad") { id } c: drive(id: "drv-ok") { city scenarios { id } } }"#, json!({}))
        .await;
    assert_ok(&body);
    assert_eq!(body["data"]["a"], Value::Null);
    assert_eq!(body["data"]["b"], Value::Null);
    assert_eq!(body["data"]["c"]["city"], "guangzhou");
    assert_eq!(
        body["data"]["c"]["scenarios"].as_array().map(Vec::len),
        Some(1)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn tokens_and_roles() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;
    let me = "{ me { name role } }";

    let (status, body) = app.graphql(None, me, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_codes(&body), vec!["UNAUTHENTICATED"]);

    let (status, body) = app
        .graphql(Some("mp_not-a-real-token"), me, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_codes(&body), vec!["UNAUTHENTICATED"]);

    let (_, body) = app.graphql(Some(&t.admin), me, json!({})).await;
    assert_eq!(
        body["data"]["me"],
        json!({ "name": "admin", "role": "ADMIN" })
    );

    // Role too low: viewer and engineer may not register drives; viewer may not tag.
    for token in [&t.viewer, &t.engineer] {
        let (_, body) = app
            .graphql(
                Some(token),
                REGISTER_DRIVE,
                json!({ "input": drive_input("drv-x") }),
            )
            .await;
        assert_eq!(error_codes(&body), vec!["FORBIDDEN"], "{body}");
        assert!(first_error(&body).contains("PIPELINE"));
    }
    let (_, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-x") }),
        )
        .await;
    assert_ok(&body);
    let (_, body) = app
        .graphql(Some(&t.viewer), TAG_SCENARIO, json!({ "input": {
            "driveId": "drv-x", "label": "x", "start": "2026-11-01T08:00:00Z", "end": "2026-11-01T08:00:10Z" } }))
        .await;
    assert_eq!(error_codes(&body), vec!["FORBIDDEN"]);

    // A revoked token stops working at once (it was used, so it is in the token cache).
    app.state().revoke_token("ci").await.expect("revoke");
    let (status, body) = app.graphql(Some(&t.pipeline), me, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_codes(&body), vec!["UNAUTHENTICATED"]);

    // Only a hash is stored.
    let tokens = milepost_api::auth::list_tokens(app.db())
        .await
        .expect("list");
    assert_eq!(tokens.len(), 4);
    let rows = milepost_schema::entity::token::Entity::find()
        .all(app.db())
        .await
        .expect("rows");
    assert!(rows
        .iter()
        .all(|row| row.secret_hash != t.admin && row.secret_hash.len() == 64));
    app.shutdown().await;
}

#[tokio::test]
async fn anonymous_clients_may_read_but_not_write_when_allowed() {
    let app = TestApp::builder().allow_anonymous_read().start().await;
    let (status, body) = app
        .graphql(
            None,
            "{ me { name role } drive(id: \"x\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"]["me"],
        json!({ "name": "anonymous", "role": "VIEWER" })
    );
    let (_, body) = app
        .graphql(
            None,
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-anon") }),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["UNAUTHENTICATED"]);
    // A wrong token is refused even here.
    let (status, _) = app
        .graphql(Some("mp_wrong"), "{ me { name } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn query_limits_refuse_bombs_before_they_run() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;
    let (_, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-d") }),
        )
        .await;
    assert_ok(&body);

    // Depth bomb through the drive <-> scenario cycle.
    let mut query = "id".to_owned();
    for _ in 0..30 {
        query = format!("scenarios {{ drive {{ {query} }} }}");
    }
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            &format!("{{ drive(id: \"drv-d\") {{ {query} }} }}"),
            json!({}),
        )
        .await;
    assert_refused(&body, "BAD_INPUT", "nested too deep");

    // Complexity bomb: many aliases each asking for the largest page.
    let aliases: String = (0..40)
        .map(|i| format!("a{i}: objects(first: 500) {{ edges {{ node {{ key size etag }} }} }} "))
        .collect();
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            &format!("{{ drive(id: \"drv-d\") {{ {aliases} }} }}"),
            json!({}),
        )
        .await;
    assert_refused(&body, "BAD_INPUT", "complex");

    // Page size above the limit.
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            r#"{ drive(id: "drv-d") { objects(first: 501) { totalCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert!(first_error(&body).contains("first"), "{body}");
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            r#"{ drive(id: "drv-d") { objects(first: -1) { totalCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"]);
    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            r#"{ drive(id: "drv-d") { objects(after: "garbage") { totalCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"]);
    app.shutdown().await;
}

#[tokio::test]
async fn object_pages_have_no_gaps_or_repeats() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;
    let (_, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-p") }),
        )
        .await;
    assert_ok(&body);
    let (_, body) = app
        .graphql(
            Some(&t.pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input("drv-other") }),
        )
        .await;
    assert_ok(&body);

    // Objects arrive through sync (a later component); seed them the way it writes them,
    // interleaving another drive's and a deleted object to prove the filter.
    let now = Utc::now();
    let mut expected = Vec::new();
    let mut rows = Vec::new();
    for i in 0..1234 {
        let (drive, deleted) = match i % 7 {
            3 => ("drv-other", false),
            5 => ("drv-p", true),
            _ => ("drv-p", false),
        };
        let key = format!("drives/2026-11-01/gz-004/{drive}/log_{i:05}.mcap");
        if drive == "drv-p" && !deleted {
            expected.push(key.clone());
        }
        rows.push(object::ActiveModel {
            bucket: Set("fleet".to_owned()),
            key: Set(key),
            size: Set(1000 + i),
            etag: Set(format!("\"etag{i}\"")),
            last_modified: Set(Some(now - Duration::seconds(i))),
            drive_id: Set(Some(drive.to_owned())),
            run_id: Set(None),
            deleted_at: Set(deleted.then_some(now)),
            metadata: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        });
    }
    for chunk in rows.chunks(200) {
        object::Entity::insert_many(chunk.to_vec())
            .exec(app.db())
            .await
            .expect("seed objects");
    }

    let query = r#"query($after: String) { drive(id: "drv-p") {
        totalBytes
        objects(first: 97, after: $after) { totalCount edges { cursor node { key size etag cached lastModified } } pageInfo { hasNextPage endCursor } } } }"#;
    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let (_, body) = app
            .graphql(Some(&t.viewer), query, json!({ "after": after }))
            .await;
        assert_ok(&body);
        let objects = &body["data"]["drive"]["objects"];
        assert_eq!(objects["totalCount"].as_u64(), Some(expected.len() as u64));
        let edges = objects["edges"].as_array().expect("edges");
        for edge in edges {
            seen.push(edge["node"]["key"].as_str().expect("key").to_owned());
            assert_eq!(edge["node"]["cached"], false);
        }
        if let Some(last) = edges.last() {
            assert_eq!(last["cursor"], objects["pageInfo"]["endCursor"]);
        }
        pages += 1;
        if objects["pageInfo"]["hasNextPage"] == false {
            break;
        }
        assert_eq!(edges.len(), 97);
        after = objects["pageInfo"]["endCursor"].clone();
        assert!(pages < 100, "pagination does not end");
    }
    assert_eq!(seen, expected, "every live object once, in a stable order");
    assert_eq!(pages, expected.len().div_ceil(97));

    let (_, body) = app
        .graphql(
            Some(&t.viewer),
            r#"{ drive(id: "drv-p") { totalBytes } }"#,
            json!({}),
        )
        .await;
    let expected_bytes: i64 = (0..1234i64)
        .filter(|i| i % 7 != 3 && i % 7 != 5)
        .map(|i| 1000 + i)
        .sum();
    assert_eq!(
        body["data"]["drive"]["totalBytes"].as_i64(),
        Some(expected_bytes)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_request_bodies_get_clear_errors_and_the_server_stays_up() {
    let app = TestApp::start().await;
    let t = tokens(&app).await;

    let (status, body) = app.post_raw(Some(&t.viewer), b"{ not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"]);
    assert!(
        first_error(&body).contains("not a GraphQL request"),
        "{body}"
    );

    let (status, body) = app
        .post_raw(Some(&t.viewer), br#"{"query": 42}"#.to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"]);

    let (_, body) = app
        .graphql(Some(&t.viewer), "{ drive(id: ", json!({}))
        .await;
    assert_eq!(
        error_codes(&body),
        vec!["BAD_INPUT"],
        "syntax error: {body}"
    );

    // Wrong variable types.
    let mut input = drive_input("drv-types");
    input["distanceKm"] = json!("far");
    input["startedAt"] = json!("yesterday");
    let (_, body) = app
        .graphql(Some(&t.pipeline), REGISTER_DRIVE, json!({ "input": input }))
        .await;
    assert_eq!(error_codes(&body)[0], "BAD_INPUT", "{body}");
    let (_, body) = app
        .graphql(Some(&t.pipeline), REGISTER_RUN, json!({ "input": { "id": "r", "kind": "ROCKET", "pipeline": "p", "status": "RUNNING" } }))
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");

    // Larger than the body limit (4 MiB by default).
    let huge = json!({ "query": "{ me { name } }", "variables": { "pad": "x".repeat(5 << 20) } });
    let (status, body) = app
        .post_raw(Some(&t.viewer), serde_json::to_vec(&huge).expect("json"))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"]);
    assert!(
        first_error(&body).contains("server.max_body_size"),
        "{body}"
    );

    // Still serving, and the metrics count what happened.
    let (status, body) = app
        .graphql(Some(&t.viewer), "{ me { name } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["me"]["name"], "bob");
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(
            r#"milepost_http_requests_total{route="/graphql",method="POST",status="400"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"milepost_graphql_errors_total{code="BAD_INPUT"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("milepost_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    let missing = app.get("/no/such/page").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn healthz_reports_the_database_and_graphiql_is_served() {
    let app = TestApp::start().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["database"], "ok");
    let page = app.get("/graphql").await.text().await.expect("html");
    assert!(page.contains("graphiql"), "GraphiQL page");
    eprintln!("backend under test: {}", app.backend());
    app.shutdown().await;
}

/// Every `tagScenario` rewrites its drive's `drive.json` from the catalog. Many at once on one
/// drive must not lose one another's scenarios: when a call returns, the sidecar the office
/// serves holds its scenario (no slower rewrite from an older read lands after it), and once
/// write-back has drained, the sidecar in S3 holds every scenario the catalog holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tags_on_one_drive_all_reach_its_sidecar() {
    const TAGS: usize = 24;
    const DRIVE: &str = "drv-race";
    const SIDECAR: &str = "drives/2026-11-01/gz-004/drv-race/drive.json";
    let upstream = LoopbackUpstream::start("fleet").await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), "fleet")
        .start()
        .await;
    let pipeline = app.token("ci", Role::Pipeline).await;
    let engineer = app.token("alice", Role::Engineer).await;
    let (_, body) = app
        .graphql(
            Some(&pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input(DRIVE) }),
        )
        .await;
    assert_ok(&body);

    let first = Utc
        .with_ymd_and_hms(2026, 11, 1, 8, 10, 0)
        .single()
        .expect("date");
    let mut tags = tokio::task::JoinSet::new();
    for i in 0..TAGS {
        let (client, url, token) = (app.client.clone(), app.base_url.clone(), engineer.clone());
        let state = app.state().clone();
        tags.spawn(async move {
            let label = format!("tagged-{i:02}");
            let start = first + Duration::seconds(20 * i as i64);
            let body: Value = client
                .post(format!("{url}/graphql"))
                .bearer_auth(token)
                .json(&json!({ "query": TAG_SCENARIO, "variables": { "input": {
                    "driveId": DRIVE, "label": label,
                    "start": start, "end": start + Duration::seconds(10),
                }}}))
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            assert_ok(&body);
            let seen = sidecar_labels(state.store.as_ref(), SIDECAR).await;
            (label, seen)
        });
    }
    let mut missing_own = Vec::new();
    while let Some(done) = tags.join_next().await {
        let (label, seen) = done.expect("tagScenario task");
        if !seen.contains(&label) {
            missing_own.push(format!("{label} (sidecar had {} scenarios)", seen.len()));
        }
    }
    assert_eq!(
        missing_own,
        Vec::<String>::new(),
        "calls whose scenario was not in the office's drive.json when they returned"
    );
    let mut expected: Vec<String> = (0..TAGS).map(|i| format!("tagged-{i:02}")).collect();
    expected.push("cut-in".to_owned());
    expected.sort();

    let (_, body) = app
        .graphql(
            Some(&engineer),
            "query($id: ID!) { drive(id: $id) { scenarios { label } } }",
            json!({ "id": DRIVE }),
        )
        .await;
    assert_ok(&body);
    let mut in_catalog: Vec<String> = body["data"]["drive"]["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .map(|s| s["label"].as_str().expect("label").to_owned())
        .collect();
    in_catalog.sort();
    assert_eq!(in_catalog, expected, "the catalog has every scenario");

    assert!(
        app.state()
            .write_back
            .wait_idle(std::time::Duration::from_secs(60))
            .await,
        "write-back drains"
    );
    assert_eq!(
        sidecar_labels(app.state().store.as_ref(), SIDECAR).await,
        expected,
        "drive.json in the office holds every scenario"
    );
    assert_eq!(
        sidecar_labels(upstream.store.as_ref(), SIDECAR).await,
        expected,
        "drive.json in S3 holds every scenario"
    );
    app.shutdown().await;
}

/// The scenario labels of the drive sidecar `key` (bucket `fleet`) in `store`, sorted.
async fn sidecar_labels(store: &dyn milepost_store::ObjectStore, key: &str) -> Vec<String> {
    let bytes = store
        .get("fleet", key, ByteRange::All, None)
        .await
        .expect("the sidecar")
        .collect(4 << 20)
        .await
        .expect("sidecar body");
    let sidecar: Value = serde_json::from_slice(&bytes).expect("sidecar JSON");
    let mut labels: Vec<String> = sidecar["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .map(|s| s["label"].as_str().expect("label").to_owned())
        .collect();
    labels.sort();
    labels
}

/// The same guarantee one level down, without the search index commit that spaces out
/// `tagScenario` calls: catalog changes committed concurrently, each followed by its drive's
/// sidecar rewrite (`records::write_drive`, as `tagScenario` and `registerDrive` do). When a
/// rewrite returns, the office's sidecar holds its change; once write-back has drained, S3's
/// holds every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_rewrites_racing_catalog_changes_keep_every_scenario() {
    const TAGS: usize = 24;
    const ROUNDS: usize = 4;
    const DRIVE: &str = "drv-rewrite";
    const SIDECAR: &str = "drives/2026-11-01/gz-004/drv-rewrite/drive.json";
    let upstream = LoopbackUpstream::start("fleet").await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), "fleet")
        .start()
        .await;
    let pipeline = app.token("ci", Role::Pipeline).await;
    let (_, body) = app
        .graphql(
            Some(&pipeline),
            REGISTER_DRIVE,
            json!({ "input": drive_input(DRIVE) }),
        )
        .await;
    assert_ok(&body);
    let first = Utc
        .with_ymd_and_hms(2026, 11, 1, 8, 10, 0)
        .single()
        .expect("date");
    let mut expected = vec!["cut-in".to_owned()];
    let mut missing_own = Vec::new();
    for round in 0..ROUNDS {
        let mut rewrites = tokio::task::JoinSet::new();
        for i in 0..TAGS {
            let state = app.state().clone();
            let label = format!("r{round}-tagged-{i:02}");
            expected.push(label.clone());
            rewrites.spawn(async move {
                let start = first + Duration::seconds(20 * i as i64);
                milepost_indexer::catalog::tag_scenario(
                    &state.db,
                    milepost_indexer::catalog::ScenarioTag {
                        drive_id: DRIVE.to_owned(),
                        label: label.clone(),
                        start,
                        end: start + Duration::seconds(10),
                        tags: Vec::new(),
                        description: None,
                    },
                )
                .await
                .expect("tag committed");
                milepost_api::records::write_drive(&state, DRIVE)
                    .await
                    .expect("sidecar rewritten");
                let seen = sidecar_labels(state.store.as_ref(), SIDECAR).await;
                (label, seen)
            });
        }
        while let Some(done) = rewrites.join_next().await {
            let (label, seen) = done.expect("rewrite task");
            if !seen.contains(&label) {
                missing_own.push(format!("{label} (sidecar had {} scenarios)", seen.len()));
            }
        }
    }
    assert_eq!(
        missing_own,
        Vec::<String>::new(),
        "rewrites whose change was not in the office's drive.json when they returned"
    );
    expected.sort();
    assert!(
        app.state()
            .write_back
            .wait_idle(std::time::Duration::from_secs(60))
            .await,
        "write-back drains"
    );
    assert_eq!(
        sidecar_labels(upstream.store.as_ref(), SIDECAR).await,
        expected,
        "drive.json in S3 holds every scenario"
    );
    app.shutdown().await;
}
