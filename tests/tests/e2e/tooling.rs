//! Standard GraphQL tooling against the real server: the introspection queries schema-driven
//! clients send (graphql-core's, and the one with every option GraphiQL and graphql-codegen
//! can turn on, both in `tests/fixtures/introspection/`), the SDL at
//! `/graphql/schema.graphql`, the bounds that still stop abusive introspection, and the
//! Python pipeline example (`examples/python/pipeline.py`, built on `gql`) run as a pipeline
//! would run it.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use milepost_indexer::fleet::FleetSpec;
use milepost_schema::enums::Role;
use milepost_testkit::{error_codes, first_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> String {
    let path = repository().join("tests/fixtures/introspection").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Runs `python3 script args`, killed after `limit`; its output (small: a few JSON lines).
async fn run_python(script: &std::path::Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{} did not finish within {limit:?}", script.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("output")
}

fn type_names(body: &Value) -> Vec<String> {
    body["data"]["__schema"]["types"]
        .as_array()
        .map(|types| {
            types
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn standard_introspection_works_and_abusive_introspection_is_refused() {
    let app = TestApp::start().await;
    let viewer = app.token("victor", Role::Viewer).await;

    for name in ["graphql-core.graphql", "graphiql-all-options.graphql"] {
        let (status, body) = app.graphql(Some(&viewer), &fixture(name), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert!(body.get("errors").is_none(), "{name}: {body}");
        let types = type_names(&body);
        for expected in ["Drive", "Dataset", "Reservation", "ReserveDatasetInput"] {
            assert!(types.iter().any(|t| t == expected), "{name}: {types:?}");
        }
        assert_eq!(
            body["data"]["__schema"]["subscriptionType"]["name"], "Subscription",
            "{name}"
        );
    }

    // Without a token, introspection is refused like any query.
    let (status, body) = app
        .graphql(None, &fixture("graphql-core.graphql"), json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A depth bomb of `ofType` past the introspection bound.
    let mut of_type = "name".to_owned();
    for _ in 0..40 {
        of_type = format!("ofType {{ {of_type} }}");
    }
    let (_, body) = app
        .graphql(
            Some(&viewer),
            &format!("{{ __schema {{ types {{ fields {{ type {{ {of_type} }} }} }} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert!(
        first_error(&body)
            .to_lowercase()
            .contains("nested too deep"),
        "{body}"
    );

    // The schema multiplied by itself: type lists nested three times.
    let (_, body) = app
        .graphql(
            Some(&viewer),
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert!(first_error(&body).contains("at most 2 may nest"), "{body}");
    assert!(body["data"].is_null(), "{body}");

    // A complexity bomb: one big selection repeated under many aliases.
    let aliases: String = (0..2000)
        .map(|i| format!("a{i}: types {{ name fields {{ name }} }} "))
        .collect();
    let (_, body) = app
        .graphql(
            Some(&viewer),
            &format!("{{ __schema {{ {aliases} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");
    assert!(
        first_error(&body).to_lowercase().contains("complex"),
        "{body}"
    );

    // Mixing data into an introspection query meets the ordinary depth limit.
    let (_, body) = app
        .graphql(
            Some(&viewer),
            &format!(
                "{{ me {{ name }} __schema {{ types {{ fields {{ type {{ {of_type} }} }} }} }} }}"
            ),
            json!({}),
        )
        .await;
    assert_eq!(error_codes(&body), vec!["BAD_INPUT"], "{body}");

    // The SDL for code generators, behind the same authentication.
    let client = reqwest::Client::new();
    let url = format!("{}/graphql/schema.graphql", app.base_url);
    let response = client
        .get(&url)
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("sdl");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    let sdl = response.text().await.expect("sdl text");
    for expected in [
        "type Drive",
        "reserveDataset(input: ReserveDatasetInput!): Reservation!",
        "reservationProgress(id: ID!): Reservation!",
    ] {
        assert!(sdl.contains(expected), "{expected} in the SDL");
    }
    let anonymous = client.get(&url).send().await.expect("sdl");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    app.shutdown().await;
}

/// The example a pipeline author starts from, run for real: it introspects the schema with
/// gql, finds a dataset by name, reserves it, follows the subscription to READY and
/// registers a run with the drive it used as its input.
#[tokio::test]
async fn the_python_pipeline_example_runs_against_the_server() {
    let app = TestApp::builder().seeded(FleetSpec::small(3)).start().await;
    let admin = app.token("admin", Role::Admin).await;
    let pipeline = app.token("nightly-ci", Role::Pipeline).await;
    app.sync_cleanly(&admin).await;

    let (_, body) = app
        .graphql(
            Some(&admin),
            "{ search(query: \"\", kinds: [DRIVE], first: 1) { edges { node { ... on Drive { id } } } } }",
            json!({}),
        )
        .await;
    let drive = body["data"]["search"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a drive: {body}"))
        .to_owned();
    let (_, body) = app
        .graphql(
            Some(&admin),
            "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name version } }",
            json!({ "input": {
                "name": "nightly-inputs",
                "description": "inputs of the nightly simulation",
                "entityIds": [drive],
            } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");

    let script = repository().join("examples/python/pipeline.py");
    let output = run_python(
        &script,
        &[
            "--server",
            &app.base_url,
            "--token",
            &pipeline,
            "--dataset",
            "nightly-inputs",
            "--input",
            &drive,
            "--run-id",
            "sim-example-1",
        ],
        Duration::from_secs(180),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the example failed ({}):\n{stdout}\n{stderr}\n(pip install -r examples/python/requirements.txt)",
        output.status
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON line: {line}")))
        .collect();
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    for expected in ["schema", "found", "reserved", "ready", "registered"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    // The server agrees: the reservation is READY and the run names the dataset it used.
    let (_, body) = app
        .graphql(
            Some(&admin),
            "{ run(id: \"sim-example-1\") { status pipeline tags inputs { ... on Drive { id } } } \
               reservations(first: 5) { edges { node { state owner dataset { name } } } } }",
            json!({}),
        )
        .await;
    let run = &body["data"]["run"];
    assert_eq!(run["status"], "PASSED", "{body}");
    assert_eq!(run["pipeline"], "example-simulation", "{body}");
    assert_eq!(run["inputs"], json!([{ "id": drive }]), "{body}");
    assert_eq!(run["tags"], json!(["dataset:nightly-inputs@1"]), "{body}");
    let reservations = body["data"]["reservations"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        reservations.iter().any(|e| e["node"]["state"] == "READY"
            && e["node"]["owner"] == "nightly-ci"
            && e["node"]["dataset"]["name"] == "nightly-inputs"),
        "{body}"
    );
    app.shutdown().await;
}
