//! Ready by a deadline: a reservation with `readyBy` stays PENDING until the download window
//! (`[transfer] download_schedule`) opens, then materializes at the window's rate and is READY
//! before its deadline; a deadline the window's rate cannot meet is refused with the earliest
//! time it could be met. Real clock, real server, loopback S3.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Local, SecondsFormat, Timelike as _, Utc};
use milepost_schema::enums::Role;
use milepost_testkit::{assert_refused, TestApp};
use serde_json::{json, Value};

use crate::web_catalog::{as_session, csrf_of};

const BUCKET: &str = "fleet";
const MIB: usize = 1 << 20;

const CREATE: &str =
    "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name version } }";
const RESERVE: &str = "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) {
    id state readyBy scheduledStart estimatedReadyAt deadlineWarning } }";
const RESERVATION: &str = "query($id: ID!) { reservation(id: $id) {
    state bytesDone bytesFromUpstream error estimatedReadyAt } }";
const PLANNED: &str = "{ plannedDownloads { id state scheduledStart dataset { name } }
    transferPolicy { downloadSchedule downloadWindow } }";

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time_of(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .with_timezone(&Utc)
}

/// The next whole minute of office (local) time at least 30 s away: the window opens there.
fn window_opening() -> DateTime<Local> {
    let now = Local::now();
    let minute = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("whole minute");
    let mut opens = minute + chrono::Duration::minutes(1);
    if opens - now < chrono::Duration::seconds(30) {
        opens += chrono::Duration::minutes(1);
    }
    opens
}

async fn dataset_of(app: &TestApp, token: &str, name: &str, prefix: &str, count: usize) {
    let store = app.upstream().store.clone();
    let mut objects = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}/part-{i}.bin");
        let body = Bytes::from(vec![u8::try_from(i + 1).expect("small"); MIB]);
        store.put(BUCKET, &key, body).await.expect("seed put");
        objects.push(json!({ "bucket": BUCKET, "key": key }));
    }
    let (_, body) = app
        .graphql(
            Some(token),
            CREATE,
            json!({ "input": { "name": name, "objects": objects } }),
        )
        .await;
    assert_eq!(body["data"]["createDataset"]["version"], 1, "{body}");
}

/// A GET, or a form POST from the catalog's own origin, as the signed-in browser of `token`
/// sends it: status and body.
async fn web(
    app: &TestApp,
    token: &str,
    path: &str,
    form: Option<&[(&str, &str)]>,
) -> (u16, String) {
    let origin = form.map(|_| app.base_url.as_str());
    let (status, body) = as_session(app, token, path, form, origin).await;
    (status.as_u16(), body)
}

#[tokio::test]
async fn a_deadline_keeps_to_the_download_window_and_is_met_or_refused() {
    let opens = window_opening();
    let closes = opens + chrono::Duration::minutes(10);
    let schedule = format!(
        "* {}-{} 1MiB",
        opens.format("%H:%M"),
        closes.format("%H:%M")
    );
    let opens_utc = opens.with_timezone(&Utc);
    let app = TestApp::builder()
        .with_loopback_s3(BUCKET)
        .configure(move |c| c.transfer.download_schedule = schedule)
        .start()
        .await;
    let engineer = app.token("nightly-ci", Role::Engineer).await;
    dataset_of(&app, &engineer, "nightly-inputs", "nightly", 4).await;
    dataset_of(&app, &engineer, "too-late", "late", 4).await;

    // Deadlines in the past or after the reservation's expiry make no plan.
    let (_, body) = app
        .graphql(
            Some(&engineer),
            RESERVE,
            json!({ "input": { "dataset": "nightly-inputs", "readyBy": rfc3339(Utc::now() - chrono::Duration::minutes(1)) } }),
        )
        .await;
    assert_refused(&body, "BAD_INPUT", "is not in the future");
    let (_, body) = app
        .graphql(
            Some(&engineer),
            RESERVE,
            json!({ "input": { "dataset": "nightly-inputs", "ttlSeconds": 60,
                "readyBy": rfc3339(Utc::now() + chrono::Duration::minutes(10)) } }),
        )
        .await;
    assert_refused(&body, "BAD_INPUT", "after the reservation would expire");

    // 4 MiB at the window's 1 MiB/s take 4 s from its opening: a deadline 2 s after it is
    // refused, naming the earliest time.
    let (_, body) = app
        .graphql(
            Some(&engineer),
            RESERVE,
            json!({ "input": { "dataset": "too-late", "readyBy": rfc3339(opens_utc + chrono::Duration::seconds(2)) } }),
        )
        .await;
    assert_refused(&body, "BAD_INPUT", "readyBy");
    let earliest = rfc3339(opens_utc + chrono::Duration::seconds(4));
    assert_refused(
        &body,
        "BAD_INPUT",
        &format!("the earliest it can be ready is {earliest}"),
    );

    // The web catalog's Reserve form takes the deadline in office time and shows the
    // refusal beside its field.
    let (status, page) = web(&app, &engineer, "/datasets/too-late?version=1", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"id="ready-by""#), "no ready-by field");
    let csrf = csrf_of(&page);
    let deadline = opens.format("%Y-%m-%dT%H:%M").to_string();
    let (status, page) = web(
        &app,
        &engineer,
        "/reserve",
        Some(&[
            ("csrf", csrf.as_str()),
            ("dataset", "too-late"),
            ("version", "1"),
            ("ttl_hours", "24"),
            ("purpose", ""),
            ("ready_by", deadline.as_str()),
        ]),
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains(r#"id="ready-by-error""#),
        "no error beside the field: {page}"
    );
    let at_opening = rfc3339(opens_utc + chrono::Duration::seconds(4));
    assert!(
        page.contains(&format!("the earliest it can be ready is {at_opening}")),
        "{page}"
    );

    // Ten minutes ahead: admitted now, scheduled at the window's opening.
    let ready_by = Utc::now() + chrono::Duration::minutes(10);
    let (_, body) = app
        .graphql(
            Some(&engineer),
            RESERVE,
            json!({ "input": { "dataset": "nightly-inputs", "readyBy": rfc3339(ready_by), "purpose": "nightly sim" } }),
        )
        .await;
    let reserved = &body["data"]["reserveDataset"];
    let id = reserved["id"]
        .as_str()
        .unwrap_or_else(|| panic!("reserve: {body}"))
        .to_owned();
    assert_eq!(reserved["state"], "PENDING", "{body}");
    assert_eq!(time_of(&reserved["scheduledStart"]), opens_utc, "{body}");
    assert_eq!(rfc3339(time_of(&reserved["readyBy"])), rfc3339(ready_by));
    let estimate = time_of(&reserved["estimatedReadyAt"]);
    assert!(
        estimate >= opens_utc && estimate <= ready_by,
        "estimate {estimate} outside [{opens_utc}, {ready_by}]"
    );
    assert!(reserved["deadlineWarning"].is_null(), "{body}");

    // Planned, beside the uploads, while the window is closed.
    let (_, body) = app.graphql(Some(&engineer), PLANNED, json!({})).await;
    let planned = body["data"]["plannedDownloads"]
        .as_array()
        .unwrap_or_else(|| panic!("plannedDownloads: {body}"));
    assert_eq!(planned.len(), 1, "{body}");
    assert_eq!(planned[0]["id"], id.as_str());
    assert_eq!(
        body["data"]["transferPolicy"]["downloadWindow"], "closed",
        "{body}"
    );
    let (status, page) = web(&app, &engineer, "/transfers", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(r#"id="planned-downloads""#) && page.contains(&id),
        "the transfers page lists no planned download: {page}"
    );
    let (_, page) = web(&app, &engineer, &format!("/reservations/{id}"), None).await;
    assert!(page.contains(r#"id="res-schedule""#), "{page}");

    // Nothing moves before the window opens.
    while Utc::now() < opens_utc - chrono::Duration::seconds(2) {
        let (_, body) = app
            .graphql(Some(&engineer), RESERVATION, json!({ "id": id }))
            .await;
        let row = &body["data"]["reservation"];
        assert_eq!(row["state"], "PENDING", "before the window: {body}");
        assert_eq!(row["bytesFromUpstream"], 0, "before the window: {body}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Then it materializes, paced at 1 MiB/s, and is READY before the deadline.
    let mut started = None;
    let ready_at = loop {
        let (_, body) = app
            .graphql(Some(&engineer), RESERVATION, json!({ "id": id }))
            .await;
        let row = &body["data"]["reservation"];
        match row["state"].as_str() {
            Some("PENDING") => {}
            Some("MATERIALIZING") => {
                started.get_or_insert_with(Utc::now);
            }
            Some("READY") => break Utc::now(),
            _ => panic!("reservation ended: {body}"),
        }
        assert!(Utc::now() < ready_by, "not READY by its deadline: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = started.unwrap_or(ready_at);
    assert!(
        started >= opens_utc - chrono::Duration::milliseconds(500),
        "started at {started}, before the window opened at {opens_utc}"
    );
    assert!(ready_at < ready_by);
    // Paced: the fourth MiB goes no sooner than 3 s after the first.
    assert!(
        ready_at >= opens_utc + chrono::Duration::seconds(3),
        "READY at {ready_at}: 4 MiB faster than the window's 1 MiB/s"
    );
    let (_, body) = app
        .graphql(Some(&engineer), RESERVATION, json!({ "id": id }))
        .await;
    assert_eq!(
        body["data"]["reservation"]["bytesFromUpstream"],
        4 * MIB,
        "{body}"
    );
    assert!(body["data"]["reservation"]["estimatedReadyAt"].is_null());
    let (_, body) = app.graphql(Some(&engineer), PLANNED, json!({})).await;
    assert_eq!(body["data"]["plannedDownloads"], json!([]), "{body}");
    assert_eq!(
        body["data"]["transferPolicy"]["downloadWindow"], "1MiB/s",
        "{body}"
    );
    app.shutdown().await;
}
