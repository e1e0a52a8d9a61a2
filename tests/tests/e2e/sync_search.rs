//! Catalog sync from a real S3 server on loopback (s3s-fs, spoken to with aws-sdk-s3), then
//! checks through GraphQL: sidecar fields, MCAP topics and time ranges, run metrics, facet
//! counts, incremental re-sync, malformed files, and search syntax.
//!
//! (Over 600 lines: sync and search scenarios sharing one world.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use milepost_indexer::fleet::{Fleet, FleetSpec};
use milepost_schema::entity::{drive, run, scenario};
use milepost_schema::enums::Role;
use milepost_store::ObjectStore;
use milepost_testkit::{error_codes, first_error, TestApp};
use sea_orm::EntityTrait;
use serde_json::{json, Value};

const BUCKET: &str = "fleet";

struct World {
    store: Arc<dyn ObjectStore>,
    fleet: Fleet,
    app: TestApp,
    admin: String,
}

impl World {
    async fn of(app: TestApp) -> World {
        let admin = app.token("admin", Role::Admin).await;
        World {
            store: app.upstream().store.clone(),
            fleet: app.fleet().clone(),
            app,
            admin,
        }
    }
}

async fn world(seed: u64) -> World {
    World::of(
        TestApp::builder()
            .seeded(FleetSpec::small(seed))
            .start()
            .await,
    )
    .await
}

const SYNC: &str =
    "mutation { syncCatalog { objectsSeen objectsChanged objectsDeleted drives runs filesRead bytesRead errors } }";

async fn sync(w: &World) -> Value {
    let (_, body) = w.app.graphql(Some(&w.admin), SYNC, json!({})).await;
    assert!(body.get("errors").is_none(), "sync failed: {body}");
    body["data"]["syncCatalog"].clone()
}

async fn search(w: &World, query: &str, first: i32, after: Value) -> Value {
    let (_, body) = w
        .app
        .graphql(
            Some(&w.admin),
            r#"query($q: String!, $first: Int, $after: String) { search(query: $q, first: $first, after: $after) {
                totalCount pageInfo { hasNextPage endCursor }
                facets { field values { value count } }
                edges { cursor score node { __typename ... on Drive { id } ... on Scenario { id } ... on Run { id } } } } }"#,
            json!({ "q": query, "first": first, "after": after }),
        )
        .await;
    body
}

#[tokio::test]
async fn sync_catalogs_every_drive_and_run_with_metadata_from_footers() {
    let w = world(7).await;
    let report = sync(&w).await;
    let files: usize = w.fleet.files().count();
    assert_eq!(
        report["objectsSeen"].as_u64(),
        Some(files as u64),
        "{report}"
    );
    assert_eq!(report["drives"].as_u64(), Some(w.fleet.drives.len() as u64));
    assert_eq!(report["runs"].as_u64(), Some(w.fleet.runs.len() as u64));
    assert_eq!(report["errors"], json!([]), "{report}");

    // Footers only: at most one 256 KiB tail per log, sidecars and metrics whole, nothing else.
    let mut read_budget = 0u64;
    let mut bucket_bytes = 0u64;

    for drive in &w.fleet.drives {
        let (_, body) = w
            .app
            .graphql(
                Some(&w.admin),
                r#"query($id: ID!) { drive(id: $id) {
                    id vehicle city route weather softwareVersion startedAt endedAt distanceKm tags topics extra
                    events { at kind label } scenarios { label startTime endTime tags }
                    objects(first: 500) { totalCount edges { node { key size etag metadata } } } totalBytes } }"#,
                json!({ "id": drive.id }),
            )
            .await;
        let got = &body["data"]["drive"];
        assert_eq!(got["id"], drive.id.as_str(), "{body}");
        let sidecar = &drive.sidecar;
        for (field, key) in [
            ("vehicle", "vehicle"),
            ("city", "city"),
            ("route", "route"),
            ("weather", "weather"),
            ("softwareVersion", "software_version"),
        ] {
            assert_eq!(got[field], sidecar[key], "{} {field}", drive.id);
        }
        assert_eq!(got["distanceKm"].as_f64(), sidecar["distance_km"].as_f64());
        assert_eq!(instant(&got["startedAt"]), instant(&sidecar["started_at"]));
        assert_eq!(instant(&got["endedAt"]), instant(&sidecar["ended_at"]));
        let sidecar_tags: BTreeSet<&str> = sidecar["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let got_tags: BTreeSet<&str> = got["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(got_tags, sidecar_tags);
        assert_eq!(
            got["events"].as_array().map(Vec::len),
            sidecar["events"].as_array().map(Vec::len)
        );
        assert_eq!(
            got["scenarios"].as_array().map(Vec::len),
            sidecar["scenarios"].as_array().map(Vec::len)
        );
        // Unknown sidecar fields are kept.
        let known = [
            "drive_id",
            "vehicle",
            "city",
            "route",
            "started_at",
            "ended_at",
            "distance_km",
            "software_version",
            "weather",
            "tags",
            "events",
            "scenarios",
        ];
        for (key, value) in sidecar.as_object().expect("object") {
            if !known.contains(&key.as_str()) {
                assert_eq!(
                    &got["extra"][key], value,
                    "extra field {key} of {}",
                    drive.id
                );
            }
        }
        // Topics: the union of what the generator wrote into the logs.
        let expected_topics: BTreeSet<String> = drive
            .expected
            .iter()
            .flat_map(|log| log.topics.iter().map(|t| t.0.clone()))
            .collect();
        let got_topics: BTreeSet<String> = got["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        assert_eq!(got_topics, expected_topics, "{}", drive.id);
        // Every file is attached, and each log's summary equals the generator's.
        assert_eq!(
            got["objects"]["totalCount"].as_u64(),
            Some(drive.files.len() as u64)
        );
        let objects: BTreeMap<String, Value> = got["objects"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| {
                (
                    e["node"]["key"].as_str().expect("key").to_owned(),
                    e["node"].clone(),
                )
            })
            .collect();
        for log in &drive.expected {
            let summary = &objects[&log.key]["metadata"]["mcap"];
            assert_eq!(
                summary["start_time_ns"].as_u64(),
                Some(log.start_time_ns),
                "{}",
                log.key
            );
            assert_eq!(
                summary["end_time_ns"].as_u64(),
                Some(log.end_time_ns),
                "{}",
                log.key
            );
            assert_eq!(
                summary["message_count"].as_u64(),
                Some(log.message_count),
                "{}",
                log.key
            );
            assert_eq!(
                summary["chunk_count"].as_u64(),
                Some(log.chunk_count),
                "{}",
                log.key
            );
            let topics: Vec<(String, String, u64)> = summary["topics"]
                .as_array()
                .expect("topics")
                .iter()
                .map(|t| {
                    (
                        t["topic"].as_str().expect("topic").to_owned(),
                        t["schema_name"].as_str().expect("schema").to_owned(),
                        t["message_count"].as_u64().expect("count"),
                    )
                })
                .collect();
            assert_eq!(topics, log.topics, "{}", log.key);
        }
        let total: i64 = objects
            .values()
            .map(|o| o["size"].as_i64().expect("size"))
            .sum();
        assert_eq!(got["totalBytes"].as_i64(), Some(total));
        for (key, object) in &objects {
            let size = object["size"].as_u64().expect("size");
            bucket_bytes += size;
            if key.ends_with(".mcap") {
                read_budget += size.min(milepost_indexer::metadata::TAIL_READ);
            } else if key.ends_with(".json") {
                read_budget += size;
            }
        }
    }
    for run in &w.fleet.runs {
        read_budget += run
            .files
            .iter()
            .filter(|f| f.key.ends_with(".json"))
            .map(|f| f.size_hint)
            .sum::<u64>();
    }
    let read = report["bytesRead"].as_u64().expect("bytesRead");
    let parquet_bytes: u64 = w
        .fleet
        .runs
        .iter()
        .flat_map(|r| &r.files)
        .filter(|f| f.key.ends_with(".parquet"))
        .map(|f| f.size_hint * 3)
        .sum();
    assert!(
        read <= read_budget + parquet_bytes,
        "sync read {read} bytes of {bucket_bytes}; footers and sidecars allow {read_budget} + parquet {parquet_bytes}"
    );

    for generated in &w.fleet.runs {
        let (_, body) = w
            .app
            .graphql(
                Some(&w.admin),
                r#"query($id: ID!) { run(id: $id) { id kind status pipeline commit tags metrics extra inputs { __typename } objects { totalCount } } }"#,
                json!({ "id": generated.id }),
            )
            .await;
        let got = &body["data"]["run"];
        assert_eq!(got["id"], generated.id.as_str(), "{body}");
        assert_eq!(
            got["kind"].as_str().map(str::to_lowercase),
            Some(generated.kind.clone())
        );
        assert_eq!(
            got["status"].as_str().map(str::to_lowercase),
            Some(generated.status.clone())
        );
        assert_eq!(got["pipeline"], generated.sidecar["pipeline"]);
        assert_eq!(
            got["objects"]["totalCount"].as_u64(),
            Some(generated.files.len() as u64)
        );
        let inputs = generated.sidecar["inputs"].as_array().map_or(0, Vec::len);
        assert_eq!(
            got["inputs"].as_array().map(Vec::len),
            Some(inputs),
            "{}",
            generated.id
        );
        // Metrics aggregates equal those computed from the generated rows.
        let mut expected: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (_, metric, value) in &generated.metrics_rows {
            expected.entry(metric.as_str()).or_default().push(*value);
        }
        if expected.is_empty() {
            continue;
        }
        for (metric, values) in expected {
            let stats = &got["metrics"][metric];
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(
                stats["count"].as_u64(),
                Some(values.len() as u64),
                "{metric}"
            );
            assert!(
                (stats["mean"].as_f64().expect("mean") - mean).abs() < 1e-9,
                "{metric}"
            );
            assert_eq!(stats["min"].as_f64(), Some(min), "{metric}");
            assert_eq!(stats["max"].as_f64(), Some(max), "{metric}");
        }
    }
    w.app.shutdown().await;
}

fn instant(value: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().expect("timestamp"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn a_second_sync_of_an_unchanged_bucket_reads_no_file_and_changes_are_picked_up() {
    let w = world(11).await;
    let first = sync(&w).await;
    assert!(first["filesRead"].as_u64().unwrap_or_default() > 0);
    let gets_before = w.app.state().egress.snapshot().get_requests;

    let second = sync(&w).await;
    assert_eq!(second["objectsChanged"], 0, "{second}");
    assert_eq!(second["filesRead"], 0, "{second}");
    assert_eq!(second["bytesRead"], 0, "{second}");
    assert_eq!(
        w.app.state().egress.snapshot().get_requests,
        gets_before,
        "no GET on an unchanged bucket"
    );

    // Change one sidecar, delete one camera frame, add a malformed log and a broken sidecar.
    let drive = &w.fleet.drives[0];
    let mut sidecar = drive.sidecar.clone();
    sidecar["weather"] = json!("snow");
    let sidecar_key = format!("{}drive.json", drive.prefix);
    w.store
        .put(
            BUCKET,
            &sidecar_key,
            Bytes::from(serde_json::to_vec(&sidecar).expect("json")),
        )
        .await
        .expect("put sidecar");
    let victim = drive
        .files
        .iter()
        .find(|f| !f.key.ends_with(".json") && !f.key.ends_with(".mcap"))
        .expect("a blob");
    w.store.delete(BUCKET, &victim.key).await.expect("delete");
    let bad_log = format!("{}logs/corrupt.mcap", drive.prefix);
    w.store
        .put(
            BUCKET,
            &bad_log,
            Bytes::from_static(b"\x89MCAP0\r\nthis is not a log"),
        )
        .await
        .expect("put");
    let broken = "drives/2026-01-01/xx-000/broken-drive/drive.json";
    w.store
        .put(
            BUCKET,
            broken,
            Bytes::from_static(b"{\"drive_id\": \"broken-drive\", \"vehicle\": "),
        )
        .await
        .expect("put");
    let backwards = "drives/2026-01-01/xx-000/backwards/drive.json";
    let backwards_body = json!({ "drive_id": "backwards", "vehicle": "xx-000", "started_at": "2026-01-01T10:00:00Z", "ended_at": "2026-01-01T09:00:00Z" });
    w.store
        .put(BUCKET, backwards, Bytes::from(backwards_body.to_string()))
        .await
        .expect("put");

    let third = sync(&w).await;
    assert_eq!(third["objectsChanged"], 4, "{third}");
    assert_eq!(third["objectsDeleted"], 1, "{third}");
    let errors: Vec<&str> = third["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&bad_log) && e.contains("mcap")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(broken) && e.contains("invalid sidecar")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(backwards) && e.contains("ended_at")),
        "{errors:?}"
    );

    // syncStatus tells the same story as the report of the pass that just ended.
    let (_, status) = w
        .app
        .graphql(
            Some(&w.admin),
            "{ syncStatus { phase targeted objectsSeen objectsChanged errors failure finishedAt } }",
            json!({}),
        )
        .await;
    let status = &status["data"]["syncStatus"];
    assert_eq!(status["phase"], "done", "{status}");
    assert_eq!(status["targeted"], false, "{status}");
    assert_eq!(status["objectsSeen"], third["objectsSeen"], "{status}");
    assert_eq!(status["objectsChanged"], 4, "{status}");
    assert_eq!(status["errors"], 3, "{status}");
    assert!(status["failure"].is_null(), "{status}");
    assert!(status["finishedAt"].is_string(), "{status}");

    let (_, body) = w
        .app
        .graphql(
            Some(&w.admin),
            r#"query($id: ID!) { drive(id: $id) { weather objects(first: 500) { totalCount } } }"#,
            json!({ "id": drive.id }),
        )
        .await;
    assert_eq!(body["data"]["drive"]["weather"], "snow");
    assert_eq!(
        body["data"]["drive"]["objects"]["totalCount"].as_u64(),
        Some(drive.files.len() as u64),
        "one deleted, one added"
    );
    // The search index followed at once.
    let found = search(&w, &format!("id:{} weather:snow", drive.id), 5, Value::Null).await;
    assert_eq!(found["data"]["search"]["totalCount"], 1, "{found}");

    // Nothing changed since: again nothing read, and the broken files are not retried.
    let fourth = sync(&w).await;
    assert_eq!(fourth["filesRead"], 0, "{fourth}");
    w.app.shutdown().await;
}

#[tokio::test]
async fn search_facets_match_the_database_and_pages_cover_every_hit_once() {
    let w = world(3).await;
    sync(&w).await;
    let db = w.app.db();
    let drives = drive::Entity::find().all(db).await.expect("drives");
    let scenarios = scenario::Entity::find().all(db).await.expect("scenarios");
    let runs = run::Entity::find().all(db).await.expect("runs");

    let all = search(&w, "", 7, Value::Null).await;
    let result = &all["data"]["search"];
    assert_eq!(
        result["totalCount"].as_u64(),
        Some((drives.len() + scenarios.len() + runs.len()) as u64),
        "{all}"
    );
    let facet = |field: &str| -> BTreeMap<String, u64> {
        result["facets"]
            .as_array()
            .expect("facets")
            .iter()
            .find(|f| f["field"] == field)
            .map(|f| {
                f["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| {
                        (
                            v["value"].as_str().expect("value").to_owned(),
                            v["count"].as_u64().expect("count"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        facet("kind"),
        BTreeMap::from([
            ("drive".to_owned(), drives.len() as u64),
            ("scenario".to_owned(), scenarios.len() as u64),
            ("run".to_owned(), runs.len() as u64),
        ])
    );
    // Scenarios carry their drive's city, so the city facet counts drives and their scenarios.
    let mut cities: BTreeMap<String, u64> = BTreeMap::new();
    for d in &drives {
        let city = d.city.clone().expect("city").to_lowercase();
        *cities.entry(city).or_default() +=
            1 + scenarios.iter().filter(|s| s.drive_id == d.id).count() as u64;
    }
    assert_eq!(facet("city"), cities);

    // Paging through everything, 7 at a time: every hit exactly once.
    let mut seen = BTreeSet::new();
    let mut after = Value::Null;
    loop {
        let page = search(&w, "", 7, after.clone()).await;
        let result = &page["data"]["search"];
        for edge in result["edges"].as_array().expect("edges") {
            let key = format!("{}:{}", edge["node"]["__typename"], edge["node"]["id"]);
            assert!(seen.insert(key.clone()), "{key} seen twice");
        }
        if result["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = result["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen.len(), drives.len() + scenarios.len() + runs.len());

    // A filtered query against an oracle computed from the database.
    let target = &drives[0];
    let city = target.city.clone().expect("city");
    let weather = target.weather.clone().expect("weather");
    let found = search(
        &w,
        &format!("kind:drive city:{city} weather:{weather}"),
        100,
        Value::Null,
    )
    .await;
    let expected = drives
        .iter()
        .filter(|d| {
            d.city.as_deref() == Some(city.as_str())
                && d.weather.as_deref() == Some(weather.as_str())
        })
        .count();
    assert_eq!(
        found["data"]["search"]["totalCount"].as_u64(),
        Some(expected as u64),
        "{found}"
    );

    // Syntax errors are BAD_INPUT with the position.
    let bad = search(&w, "city:guangzhou \"unterminated", 5, Value::Null).await;
    assert_eq!(error_codes(&bad), vec!["BAD_INPUT"], "{bad}");
    assert!(
        first_error(&bad).contains("15") || first_error(&bad).contains("position"),
        "{bad}"
    );
    let bad = search(&w, "colour:red", 5, Value::Null).await;
    assert_eq!(error_codes(&bad), vec!["BAD_INPUT"], "{bad}");
    assert!(first_error(&bad).contains("colour"), "{bad}");

    // A registration is searchable at once.
    let pipeline = w.app.token("ci", Role::Pipeline).await;
    let (_, body) = w
        .app
        .graphql(
            Some(&pipeline),
            r#"mutation { registerRun(input: { id: "sim-fresh", kind: SIMULATION, pipeline: "zebra-replay", status: RUNNING }) { id } }"#,
            json!({}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let found = search(&w, "zebra-replay", 5, Value::Null).await;
    assert_eq!(found["data"]["search"]["totalCount"], 1, "{found}");
    w.app.shutdown().await;
}

#[tokio::test]
async fn describing_a_file_costs_at_most_two_gets_and_512_kib_and_bad_data_is_reported() {
    // Every request of the server under test passes the proxy, which records it.
    let w = World::of(
        TestApp::builder()
            .seeded(FleetSpec::small(5))
            .with_fault_proxy()
            .start()
            .await,
    )
    .await;
    let proxy = w.app.fault_proxy();
    let first = sync(&w).await;
    assert_eq!(first["errors"], json!([]), "{first}");

    let mut gets: BTreeMap<String, usize> = BTreeMap::new();
    for request in proxy.seen() {
        if request.method == "GET" && !request.target.contains("list-type") {
            let key = request
                .target
                .split('?')
                .next()
                .unwrap_or_default()
                .trim_start_matches(&format!("/{BUCKET}/"))
                .to_owned();
            *gets.entry(key).or_default() += 1;
        }
    }
    let ledger = milepost_schema::entity::egress_ledger::Entity::find()
        .all(w.app.db())
        .await
        .expect("ledger");
    let mut described = 0;
    for file in w
        .fleet
        .files()
        .filter(|f| f.key.ends_with(".mcap") || f.key.ends_with(".parquet"))
    {
        described += 1;
        let count = gets.get(&file.key).copied().unwrap_or_default();
        assert!((1..=2).contains(&count), "{}: {count} GETs", file.key);
        let bytes: i64 = ledger
            .iter()
            .filter(|row| row.key == file.key)
            .map(|row| row.bytes_from_upstream)
            .sum();
        assert!(
            bytes > 0 && bytes <= 512 * 1024,
            "{}: {bytes} bytes",
            file.key
        );
    }
    assert!(described > 10);

    // Bad data: a truncated log, a Parquet file with a corrupt footer, a malformed sidecar.
    let drive = &w.fleet.drives[1];
    let log = drive
        .files
        .iter()
        .find(|f| f.key.ends_with(".mcap"))
        .expect("a log");
    let full = log.render().expect("render");
    let truncated_key = format!("{}logs/truncated.mcap", drive.prefix);
    w.store
        .put(BUCKET, &truncated_key, full.slice(..full.len() * 2 / 3))
        .await
        .expect("put");
    let parquet = w
        .fleet
        .runs
        .iter()
        .flat_map(|r| &r.files)
        .find(|f| f.key.ends_with(".parquet"))
        .expect("parquet");
    let mut corrupt = parquet.render().expect("render").to_vec();
    let footer_at = corrupt.len() - 8 - 40;
    for byte in &mut corrupt[footer_at..footer_at + 32] {
        *byte = 0xff;
    }
    let corrupt_key = format!("{}outputs/corrupt.parquet", drive.prefix);
    w.store
        .put(BUCKET, &corrupt_key, Bytes::from(corrupt))
        .await
        .expect("put");
    let malformed_key = "drives/2026-02-02/yy-000/malformed/drive.json";
    w.store
        .put(BUCKET, malformed_key, Bytes::from_static(b"[1, 2, 3]"))
        .await
        .expect("put");

    let second = sync(&w).await;
    let errors: Vec<&str> = second["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    for key in [truncated_key.as_str(), corrupt_key.as_str(), malformed_key] {
        assert!(
            errors.iter().any(|e| e.starts_with(key)),
            "{key} not reported: {errors:?}"
        );
    }
    // Nothing already cataloged was lost.
    let (_, body) = w
        .app
        .graphql(
            Some(&w.admin),
            r#"{ search(query: "kind:drive", first: 100) { totalCount } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["search"]["totalCount"].as_u64(),
        Some(w.fleet.drives.len() as u64),
        "{body}"
    );
    w.app.shutdown().await;
}
