//! Warm reads: an office that holds an object answers repeated reads of it without asking S3
//! each time. An object outside the catalog's prefixes has no catalog row to name its
//! version, so the office asks S3 (a HEAD) for it; that answer then stands for
//! `upstream.version_ttl`, not for one request. A workstation mount's random reads, a viewer's
//! ranged reads and an S3 client's ranged GETs are many requests a second on one object, and
//! each HEAD is a round trip to the cloud.
//!
//! SQLite by default; PostgreSQL when `MILEPOST_TEST_DATABASE_URL` is set.

use std::time::Duration;

use bytes::Bytes;
use milepost_schema::enums::Role;
use milepost_store::ObjectStore as _;
use milepost_testkit::TestApp;
use rand::RngCore as _;
use reqwest::StatusCode;

const BUCKET: &str = "fleet";
/// Outside the catalog's `drives/` and `runs/` prefixes: no catalog row names its version.
const KEY: &str = "shared/calibration/blob.bin";
const SIZE: usize = 1 << 20;
const READS: usize = 20;

fn random_bytes(len: usize) -> Bytes {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    Bytes::from(bytes)
}

/// `GET /data/fleet/KEY` with `range` (inclusive) and `If-Match` when given: status, ETag,
/// body.
async fn read(
    app: &TestApp,
    token: &str,
    range: Option<(usize, usize)>,
    if_match: Option<&str>,
) -> (StatusCode, String, Bytes) {
    let mut request = app
        .client
        .get(format!("{}/data/{BUCKET}/{KEY}", app.base_url))
        .bearer_auth(token);
    if let Some((start, end)) = range {
        request = request.header("range", format!("bytes={start}-{end}"));
    }
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, etag, response.bytes().await.expect("body"))
}

#[tokio::test]
async fn repeated_reads_outside_the_catalog_ask_s3_once_per_version_window() {
    let app = TestApp::builder()
        .with_loopback_s3(BUCKET)
        .with_fault_proxy()
        .start()
        .await;
    let token = app.token("reader", Role::Engineer).await;
    let first = random_bytes(SIZE);
    app.upstream()
        .store
        .put(BUCKET, KEY, first.clone())
        .await
        .expect("seeded in S3");

    // The first read fetches the object into the office cache.
    let (status, etag, body) = read(&app, &token, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == first, "the first read serves S3's bytes");

    // Ranged reads carrying the version they want, as the mount and the viewers send them.
    let proxy = app.fault_proxy();
    proxy.reset_counters();
    let started = std::time::Instant::now();
    for i in 0..READS {
        let start = i * (SIZE / READS);
        let end = start + 4095;
        let (status, got_etag, body) = read(&app, &token, Some((start, end)), Some(&etag)).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "read {i}");
        assert_eq!(got_etag, etag, "read {i}");
        assert!(body == first.slice(start..=end), "read {i}: wrong bytes");
    }
    let took = started.elapsed();
    let seen: Vec<String> = proxy
        .seen()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(
        seen.len() <= 1,
        "{READS} warm reads in {took:?} asked S3 {} times (at most once per second expected): {seen:?}",
        seen.len()
    );

    // S3's object changes behind the office's back: once the window has passed, the new
    // version is the one served, never the old bytes under the new name or the reverse.
    let second = random_bytes(SIZE);
    app.upstream()
        .store
        .put(BUCKET, KEY, second.clone())
        .await
        .expect("overwritten in S3");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, new_etag, body) = read(&app, &token, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(new_etag, etag, "the new version has a new ETag");
    assert!(body == second, "the new version's bytes are served");
    // The old version asked for by name is refused, not served as the current one.
    let (status, _, _) = read(&app, &token, Some((0, 4095)), Some(&etag)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    app.shutdown().await;
}
