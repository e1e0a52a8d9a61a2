//! Lineage at the grain engineers think in: a run registered with an input window of a drive
//! (14:02–14:05) is found from the drive, from an overlapping window (not from a disjoint one,
//! windows being half-open), from a scenario of that time, and from a dataset holding the
//! drive; the window survives the run's sidecar and a sync. The web catalog draws the graph
//! as an inline SVG on the run, drive and dataset pages (screenshot `lineage-1280.png`).
//! Runs on the catalog database the environment names (SQLite, or PostgreSQL with
//! `MILEPOST_TEST_DATABASE_URL`).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use milepost_schema::enums::Role;
use milepost_store::ByteRange;
use milepost_testkit::browser::Browser;
use milepost_testkit::{assert_refused, TestApp};
use serde_json::{json, Value};

const BUCKET: &str = "fleet";
const DRIVE: &str = "lin-drive";
const PREFIX: &str = "drives/2026-11-02/gz-004/lin-drive/";

const REGISTER_DRIVE: &str =
    "mutation($input: RegisterDriveInput!) { registerDrive(input: $input) { id scenarios { id label } } }";
const REGISTER_RUN: &str = "mutation($input: RegisterRunInput!) { registerRun(input: $input) {
    id inputWindows { driveId start end } } }";
const LINEAGE: &str = "query($id: ID!, $window: DriveWindowInput, $first: Int) {
  lineage(id: $id, window: $window, first: $first) {
    focus truncated
    nodes { id kind label side depth cataloged window { start end } }
    edges { from to relation window { start end } } } }";

fn at(minute: u32) -> String {
    format!("2026-11-02T14:{minute:02}:00Z")
}

fn window(start: u32, end: u32) -> Value {
    json!({ "driveId": DRIVE, "start": at(start), "end": at(end) })
}

struct World {
    app: TestApp,
    admin: String,
    pipeline: String,
    engineer: String,
    scenario: String,
}

async fn ok(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    let (_, body) = app.graphql(Some(token), query, variables).await;
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

/// A drive 14:00–14:30 with one file and a scenario 14:03–14:04; runs that read it through a
/// window 14:02–14:05, whole, through a later window 14:10–14:12, and through the scenario;
/// a dataset of the drive, reserved.
async fn world() -> World {
    let app = TestApp::builder().with_loopback_s3(BUCKET).start().await;
    let admin = app.token("admin", Role::Admin).await;
    let pipeline = app.token("ci", Role::Pipeline).await;
    let engineer = app.token("alice", Role::Engineer).await;
    app.upstream()
        .store
        .put(
            BUCKET,
            &format!("{PREFIX}camera/front-000.bin"),
            Bytes::from(vec![7u8; 4096]),
        )
        .await
        .expect("seed put");
    let data = ok(
        &app,
        &pipeline,
        REGISTER_DRIVE,
        json!({ "input": {
            "id": DRIVE, "vehicle": "gz-004", "city": "guangzhou",
            "startedAt": at(0), "endedAt": at(30), "prefix": PREFIX,
            "scenarios": [{ "label": "cut-in <left>", "start": at(3), "end": at(4) }]
        } }),
    )
    .await;
    let scenario = data["registerDrive"]["scenarios"][0]["id"]
        .as_str()
        .expect("scenario id")
        .to_owned();
    for (id, inputs, windows) in [
        ("lin-run", json!([]), json!([window(2, 5)])),
        ("lin-whole", json!([DRIVE]), json!([])),
        ("lin-late", json!([]), json!([window(10, 12)])),
        ("lin-scenario", json!([scenario]), json!([])),
    ] {
        ok(
            &app,
            &pipeline,
            REGISTER_RUN,
            json!({ "input": {
                "id": id, "kind": "SIMULATION", "pipeline": "replay", "status": "PASSED",
                "inputs": inputs, "inputWindows": windows
            } }),
        )
        .await;
    }
    app.sync_cleanly(&admin).await;
    ok(
        &app,
        &engineer,
        "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { id } }",
        json!({ "input": { "name": "lin-set", "entityIds": [DRIVE] } }),
    )
    .await;
    ok(
        &app,
        &engineer,
        "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id } }",
        json!({ "input": { "dataset": "lin-set", "ttlSeconds": 3600 } }),
    )
    .await;
    World {
        app,
        admin,
        pipeline,
        engineer,
        scenario,
    }
}

async fn lineage(w: &World, id: &str, window: Option<Value>, first: i64) -> Value {
    let data = ok(
        &w.app,
        &w.engineer,
        LINEAGE,
        json!({ "id": id, "window": window, "first": first }),
    )
    .await;
    data["lineage"].clone()
}

fn node_ids(graph: &Value) -> Vec<String> {
    graph["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect()
}

fn node<'a>(graph: &'a Value, id: &str) -> &'a Value {
    graph["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {graph}"))
}

fn has_edge(graph: &Value, from: &str, to: &str, relation: &str) -> bool {
    graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .any(|e| e["from"] == from && e["to"] == to && e["relation"] == relation)
}

#[tokio::test]
async fn a_window_input_is_found_from_the_drive_an_overlapping_window_and_a_dataset() {
    let w = world().await;
    let ids = |g: &Value| node_ids(g);

    // The run keeps its window, through its sidecar and a sync that re-read it.
    let data = ok(
        &w.app,
        &w.engineer,
        "query { run(id: \"lin-run\") { inputWindows { driveId start end } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data["run"]["inputWindows"],
        json!([{ "driveId": DRIVE, "start": "2026-11-02T14:02:00+00:00", "end": "2026-11-02T14:05:00+00:00" }])
    );
    // The office's run.json (the one S3 gets from write-back) holds the window.
    let body = w
        .app
        .state()
        .store
        .get(BUCKET, "runs/lin-run/run.json", ByteRange::All, None)
        .await
        .expect("the run's sidecar")
        .collect(4 << 20)
        .await
        .expect("sidecar body");
    let record: Value = serde_json::from_slice(&body).expect("run.json");
    assert_eq!(
        record["input_windows"],
        json!([{ "drive_id": DRIVE, "start": "2026-11-02T14:02:00.000000Z", "end": "2026-11-02T14:05:00.000000Z" }]),
        "{record}"
    );

    // From the drive: every run that read it, the dataset holding it, its reservation.
    let g = lineage(&w, DRIVE, None, 100).await;
    assert_eq!(g["focus"], DRIVE);
    assert_eq!(g["truncated"], false);
    for id in [
        "lin-run",
        "lin-whole",
        "lin-late",
        "lin-scenario",
        "lin-set@1",
    ] {
        assert!(ids(&g).contains(&id.to_owned()), "{id} in {g}");
    }
    assert!(has_edge(&g, DRIVE, "lin-run", "INPUT_OF"));
    let edge = g["edges"]
        .as_array()
        .expect("present")
        .iter()
        .find(|e| e["to"] == "lin-run")
        .expect("present");
    assert_eq!(edge["window"]["start"], "2026-11-02T14:02:00+00:00");
    assert!(has_edge(&g, DRIVE, "lin-set@1", "HELD_BY"));
    assert!(has_edge(&g, &w.scenario, "lin-scenario", "INPUT_OF"));
    let reservation = g["nodes"]
        .as_array()
        .expect("present")
        .iter()
        .find(|n| n["kind"] == "RESERVATION")
        .unwrap_or_else(|| panic!("a reservation node in {g}"));
    assert!(has_edge(
        &g,
        "lin-set@1",
        reservation["id"].as_str().expect("present"),
        "RESERVED_AS"
    ));
    assert_eq!(node(&g, "lin-run")["side"], "DOWNSTREAM");
    assert!(node(&g, "lin-run")["depth"].as_i64().expect("present") > 0);

    // From an overlapping window (14:04–14:06): the window run, the whole-drive run, the
    // scenario's run; not the later window.
    let g = lineage(&w, DRIVE, Some(window(4, 6)), 100).await;
    assert_eq!(
        node(&g, DRIVE)["window"]["start"],
        "2026-11-02T14:04:00+00:00"
    );
    let found = ids(&g);
    for id in ["lin-run", "lin-whole"] {
        assert!(found.contains(&id.to_owned()), "{id} in {g}");
    }
    assert!(!found.contains(&"lin-late".to_owned()), "{g}");
    assert!(
        !found.contains(&"lin-scenario".to_owned()),
        "14:03–14:04 ends before 14:04: {g}"
    );
    let g = lineage(&w, DRIVE, Some(window(3, 6)), 100).await;
    assert!(ids(&g).contains(&"lin-scenario".to_owned()), "{g}");

    // Not from a disjoint window; 14:05 is where lin-run's window ends (half-open).
    let g = lineage(&w, DRIVE, Some(window(5, 10)), 100).await;
    let found = ids(&g);
    assert!(!found.contains(&"lin-run".to_owned()), "{g}");
    assert!(!found.contains(&"lin-late".to_owned()), "{g}");
    assert!(found.contains(&"lin-whole".to_owned()), "{g}");

    // From the run: the drive upstream, through its window.
    let g = lineage(&w, "lin-run", None, 100).await;
    assert_eq!(node(&g, DRIVE)["side"], "UPSTREAM");
    assert!(node(&g, DRIVE)["depth"].as_i64().expect("present") < 0);
    assert!(has_edge(&g, DRIVE, "lin-run", "INPUT_OF"));

    // From a dataset holding the drive (by name, and name@version).
    for id in ["lin-set", "lin-set@1"] {
        let g = lineage(&w, id, None, 100).await;
        assert_eq!(g["focus"], "lin-set@1");
        assert_eq!(node(&g, DRIVE)["side"], "UPSTREAM");
        assert!(has_edge(&g, DRIVE, "lin-set@1", "HELD_BY"), "{g}");
        assert!(ids(&g).contains(&"lin-run".to_owned()), "{g}");
        assert!(has_edge(&g, DRIVE, "lin-run", "INPUT_OF"), "{g}");
    }

    // From the scenario: its drive upstream, its run downstream.
    let g = lineage(&w, &w.scenario, None, 100).await;
    assert!(has_edge(&g, DRIVE, &w.scenario, "PART_OF"));
    assert!(ids(&g).contains(&"lin-scenario".to_owned()));
    assert!(
        ids(&g).contains(&"lin-run".to_owned()),
        "overlaps the scenario: {g}"
    );

    // Bounded: a small `first` cuts the graph and says so.
    let g = lineage(&w, DRIVE, None, 2).await;
    assert_eq!(g["nodes"].as_array().expect("present").len(), 2);
    assert_eq!(g["truncated"], true);

    w.app.shutdown().await;
}

#[tokio::test]
async fn window_inputs_and_lineage_arguments_are_validated() {
    let w = world().await;
    let register = |id: &str, windows: Value| {
        json!({ "input": {
            "id": id, "kind": "SIMULATION", "pipeline": "replay", "status": "PASSED",
            "inputWindows": windows
        } })
    };
    let cases = [
        (
            register("bad-1", json!([window(5, 5)])),
            "input.inputWindows[0].end",
            "must not be empty",
        ),
        (
            register("bad-2", json!([window(2, 5), window(6, 3)])),
            "input.inputWindows[1].end",
            "not after start",
        ),
        (
            register(
                "bad-3",
                json!([{ "driveId": DRIVE, "start": "2026-11-02T15:00:00Z", "end": "2026-11-02T15:05:00Z" }]),
            ),
            "input.inputWindows[0]",
            "outside drive",
        ),
        (
            register(
                "bad-4",
                json!([{ "driveId": "", "start": at(1), "end": at(2) }]),
            ),
            "input.inputWindows[0].driveId",
            "",
        ),
    ];
    for (variables, field, needle) in cases {
        let (_, body) = w
            .app
            .graphql(Some(&w.pipeline), REGISTER_RUN, variables)
            .await;
        assert_refused(&body, "BAD_INPUT", needle);
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    // A drive not cataloged yet may be named; registering again is idempotent.
    for _ in 0..2 {
        let data = ok(
            &w.app,
            &w.pipeline,
            REGISTER_RUN,
            register(
                "early",
                json!([
                    { "driveId": "not-yet", "start": at(1), "end": at(2) },
                    { "driveId": "not-yet", "start": at(1), "end": at(2) }
                ]),
            ),
        )
        .await;
        assert_eq!(
            data["registerRun"]["inputWindows"]
                .as_array()
                .expect("present")
                .len(),
            1,
            "repeats are dropped: {data}"
        );
    }
    let g = lineage(&w, "not-yet", None, 100).await;
    assert_eq!(node(&g, "not-yet")["cataloged"], false);
    assert!(has_edge(&g, "not-yet", "early", "INPUT_OF"));

    for (variables, code, needle) in [
        (
            json!({ "id": "lin-run", "window": window(1, 2) }),
            "BAD_INPUT",
            "not the drive",
        ),
        (
            json!({ "id": DRIVE, "window": window(2, 1) }),
            "BAD_INPUT",
            "not after start",
        ),
        (json!({ "id": DRIVE, "first": 0 }), "BAD_INPUT", "1 to 500"),
        (
            json!({ "id": "no-such-thing" }),
            "NOT_FOUND",
            "drive, scenario, run or dataset",
        ),
    ] {
        let (_, body) = w.app.graphql(Some(&w.engineer), LINEAGE, variables).await;
        assert_refused(&body, code, needle);
    }
    let (_, body) = w
        .app
        .graphql(
            Some(&w.engineer),
            LINEAGE,
            json!({ "id": "lin-run", "window": { "driveId": "lin-run", "start": at(1), "end": at(2) } }),
        )
        .await;
    assert_refused(&body, "BAD_INPUT", "not a drive");
    let _ = &w.admin;
    w.app.shutdown().await;
}

fn screenshot_path(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots").join(format!("{name}.png"))
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/signin")).await.expect("open");
    browser.type_into("#token", token).await.expect("token");
    browser
        .click_css(".signin button[type=submit]")
        .await
        .expect("sign in");
    browser.find("#whoami").await.expect("signed in");
}

#[tokio::test]
async fn the_lineage_graph_renders_in_chromium() {
    let w = world().await;
    let base = w.app.base_url.clone();
    let browser = Browser::start().await.expect("chromium via chromedriver");
    browser.set_size(1280, 1000).await.expect("resize");
    sign_in(&browser, &base, &w.engineer).await;

    // The run page: its drive upstream through the window, drawn and linked.
    browser
        .goto(&format!("{base}/runs/lin-run"))
        .await
        .expect("run page");
    if browser.find("#lineage-graph").await.is_err() {
        let page = browser
            .script("return document.body.innerText;", json!([]))
            .await
            .expect("page text");
        panic!("no lineage graph on the run page: {page}");
    }
    browser
        .find(&format!(
            r#"#lineage-graph a[href="/drives/{DRIVE}"] g.node[data-id="{DRIVE}"]"#
        ))
        .await
        .expect("the drive, linked");
    browser
        .find(r#"#lineage-graph g.node.focus[data-id="lin-run"]"#)
        .await
        .expect("the run in focus");
    let inputs = browser.text("ul.inputs").await.expect("inputs");
    assert!(inputs.contains("14:02:00–14:05:00"), "{inputs}");

    // The drive page: every run that read it, the dataset and the reservation.
    browser
        .goto(&format!("{base}/drives/{DRIVE}"))
        .await
        .expect("drive page");
    for id in [
        "lin-run",
        "lin-whole",
        "lin-late",
        "lin-scenario",
        "lin-set@1",
    ] {
        browser
            .find(&format!(r#"#lineage-graph g.node[data-id="{id}"]"#))
            .await
            .unwrap_or_else(|_| panic!("{id} drawn"));
    }
    let labels = browser
        .script(
            "return document.getElementById('lineage-graph').textContent;",
            json!([]),
        )
        .await
        .expect("graph text");
    let labels = labels.as_str().unwrap_or_default().to_owned();
    assert!(
        labels.contains("cut-in <left>"),
        "labels are text, escaped: {labels}"
    );
    assert!(labels.contains("14:02:00–14:05:00"), "{labels}");
    browser
        .script(
            "document.getElementById('lineage').scrollIntoView();",
            json!([]),
        )
        .await
        .expect("scroll");
    tokio::time::sleep(Duration::from_millis(200)).await;
    browser
        .screenshot(&screenshot_path("lineage-1280"))
        .await
        .expect("screenshot");

    // The dataset page: the drive upstream.
    browser
        .goto(&format!("{base}/datasets/lin-set?version=1"))
        .await
        .expect("dataset page");
    browser
        .find(&format!(r#"#lineage-graph g.node[data-id="{DRIVE}"]"#))
        .await
        .expect("the drive on the dataset page");

    let errors = browser.console_errors().await.expect("console log");
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.quit().await;
    w.app.shutdown().await;
}
