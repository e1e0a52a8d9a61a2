//! A browser viewer reading a cached MCAP log through a presigned `/data` URL, the way
//! Foxglove and Lichtblick do: in a real headless Chromium, a page from another origin runs
//! the MCAP TypeScript reader (`McapIndexedReader` of `@mcap/core`, from npm, bundled by
//! `tests/viewer`) over a readable that fetches as the viewers' own HTTP readers do (a GET
//! abandoned after its headers to learn the size, then one ranged GET per read). It reads the
//! summary and the messages of a 5-second window of a log of over 64 MiB through ranges,
//! transferring under 10 % of it; an expired or tampered URL is refused with 403.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use milepost_indexer::fleet::FleetSpec;
use milepost_schema::enums::Role;
use milepost_store::ObjectKey;
use milepost_testkit::browser::Browser;
use milepost_testkit::TestApp;

use crate::viewer_access::presign;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const BUCKET: &str = "fleet";
const MIB: u64 = 1024 * 1024;
/// The log's first message: 2026-01-01T00:00:00Z.
const START_NS: u64 = 1_767_225_600_000_000_000;
const SECOND_NS: u64 = 1_000_000_000;
/// The log is 60 000 ticks of 10 ms: ten minutes.
const TICKS: u64 = 60_000;
const TICK_NS: u64 = 10_000_000;
/// A camera frame every tenth tick (10 Hz), between two IMU samples.
const CAMERA: &str = "/camera/front";
const CAMERA_BYTES: usize = 20_000;
/// An IMU sample every tick (100 Hz).
const IMU: &str = "/imu";
const IMU_BYTES: usize = 256;

/// The bundle `npm run build` makes in `tests/viewer` (`.ci/run` builds it before the tests).
fn viewer_bundle() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("viewer/dist/mcap-viewer.js");
    std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err}: build the viewer bundle first: `cd tests/viewer && npm ci && npm run build` \
             (needs Node 20; .ci/run does it)",
            path.display()
        )
    })
}

/// The log as written, and what the reader should find in it.
struct Log {
    bytes: Bytes,
    chunks: usize,
    /// Messages per topic in the whole log.
    counts: BTreeMap<&'static str, u64>,
    /// Messages per topic in the window, its first and last log times and its payload bytes.
    in_window: BTreeMap<&'static str, u64>,
    first_in_window: Option<u64>,
    last_in_window: Option<u64>,
    window_payload_bytes: u64,
}

/// A JSON object of exactly `len` bytes.
fn json_payload(len: usize) -> Vec<u8> {
    let mut payload = br#"{"pad":""#.to_vec();
    payload.resize(len - 2, b'x');
    payload.extend_from_slice(br#""}"#);
    payload
}

/// Ten minutes of a camera and an IMU, about 130 MiB, in uncompressed chunks of 1 MiB with
/// the writer's summary: statistics, chunk indexes and message indexes. `window` (inclusive,
/// as `readMessages` takes it) is what the page will ask for.
fn write_log(window: (u64, u64)) -> Log {
    let mut writer = mcap::WriteOptions::new()
        // The writer compresses with zstd by default: uncompressed chunks need no
        // decompressor in the page.
        .compression(None)
        .chunk_size(Some(MIB))
        .profile("")
        .library("milepost-tests viewer_mcap")
        .create(Cursor::new(Vec::with_capacity(140 * MIB as usize)))
        .expect("mcap writer");
    let schema = writer
        .add_schema(
            "milepost.test.Padded",
            "jsonschema",
            br#"{"type":"object","properties":{"pad":{"type":"string"}}}"#,
        )
        .expect("schema");
    let camera = writer
        .add_channel(schema, CAMERA, "json", &BTreeMap::new())
        .expect("camera channel");
    let imu = writer
        .add_channel(schema, IMU, "json", &BTreeMap::new())
        .expect("imu channel");
    let camera_payload = json_payload(CAMERA_BYTES);
    let imu_payload = json_payload(IMU_BYTES);
    let mut log = Log {
        bytes: Bytes::new(),
        chunks: 0,
        counts: BTreeMap::new(),
        in_window: BTreeMap::new(),
        first_in_window: None,
        last_in_window: None,
        window_payload_bytes: 0,
    };
    let mut sequence = 0u32;
    for tick in 0..TICKS {
        let at = START_NS + tick * TICK_NS;
        let mut messages = vec![(IMU, imu, at, &imu_payload)];
        if tick % 10 == 0 {
            messages.push((CAMERA, camera, at + TICK_NS / 2, &camera_payload));
        }
        for (topic, channel_id, log_time, data) in messages {
            let header = mcap::records::MessageHeader {
                channel_id,
                sequence,
                log_time,
                publish_time: log_time,
            };
            writer
                .write_to_known_channel(&header, data)
                .expect("message");
            sequence += 1;
            *log.counts.entry(topic).or_default() += 1;
            if (window.0..=window.1).contains(&log_time) {
                *log.in_window.entry(topic).or_default() += 1;
                if log.first_in_window.is_none() {
                    log.first_in_window = Some(log_time);
                }
                log.last_in_window = Some(log_time);
                log.window_payload_bytes += data.len() as u64;
            }
        }
    }
    let summary = writer.finish().expect("finish the log");
    log.chunks = summary.chunk_indexes.len();
    log.bytes = Bytes::from(writer.into_inner().into_inner());
    log
}

/// The page's own server, on another origin than the office's: `/` is the viewer's page,
/// `/mcap-viewer.js` the bundle. One request per connection.
struct PageServer {
    origin: String,
    task: JoinHandle<()>,
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>MCAP viewer</title><link rel="icon" href="data:,">
<script src="/mcap-viewer.js"></script></head>
<body><p>A viewer on another origin than Milepost's.</p></body></html>
"#;

impl PageServer {
    async fn start(bundle: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("page server binds");
        let origin = format!(
            "http://{}",
            listener.local_addr().expect("page server address")
        );
        let bundle = Arc::new(bundle);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let bundle = Arc::clone(&bundle);
                tokio::spawn(async move {
                    // A connection the browser opens and never uses just waits here.
                    let _ = answer(stream, &bundle).await;
                });
            }
        });
        PageServer { origin, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, bundle: &str) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE.as_bytes()),
        "/mcap-viewer.js" => (
            "200 OK",
            "text/javascript; charset=utf-8",
            bundle.as_bytes(),
        ),
        _ => ("404 Not Found", "text/plain", &b"not found"[..]),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// Calls `call`, an expression over `args` (the script's arguments) giving a promise, in the
/// page, and waits for it: its value, or the error it failed with.
async fn in_page(browser: &Browser, call: &str, args: Value) -> Result<Value, String> {
    let script = [
        "const done = arguments[arguments.length - 1];",
        "const args = Array.prototype.slice.call(arguments, 0, -1);",
        "Promise.resolve().then(() => ",
        call,
        ").then((value) => done({ ok: value }),",
        " (error) => done({ error: String((error && error.stack) || error) }));",
    ]
    .concat();
    let answer = browser
        .script_async(&script, args)
        .await
        .unwrap_or_else(|err| panic!("{call}: {err}"));
    match answer.get("error") {
        Some(error) => Err(error.as_str().unwrap_or_default().to_owned()),
        None => Ok(answer["ok"].clone()),
    }
}

/// Reads `key` whole through `/data` (checking every byte against `bytes`) and waits until the
/// office has it in its cache.
async fn cache_whole(app: &TestApp, token: &str, key: &str, bytes: &Bytes) {
    let mut response = app
        .client
        .get(format!("{}/data/{BUCKET}/{key}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("whole GET");
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"]
        .to_str()
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    let mut at = 0;
    while let Some(chunk) = response.chunk().await.expect("body") {
        assert!(
            bytes.get(at..at + chunk.len()) == Some(&chunk[..]),
            "/data sent other bytes at {at}"
        );
        at += chunk.len();
    }
    assert_eq!(at, bytes.len(), "/data sent a short body");
    let object = ObjectKey::new(BUCKET, key, etag, bytes.len() as u64);
    for _ in 0..400 {
        if app.state().cache.is_cached(&object) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{key} is not cached after a whole GET");
}

/// The office cache's count of bytes served (counted as each piece of a body is handed to
/// the HTTP layer), once it has not moved for half a second: an abandoned GET goes on being
/// counted until the server notices its connection closed.
async fn settled_bytes_served(app: &TestApp) -> u64 {
    let mut last = app.state().cache.stats().bytes_served;
    let mut still = 0;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = app.state().cache.stats().bytes_served;
        if now == last {
            still += 1;
            if still == 10 {
                return now;
            }
        } else {
            (last, still) = (now, 0);
        }
    }
    panic!("the bytes served never stopped growing (at {last})");
}

/// `cacheStats.bytesServed`, the egress ledger's total, once it agrees with the cache's own
/// counter (a read's ledger row is written behind, when its body is dropped).
async fn ledger_bytes_served(app: &TestApp, token: &str) -> u64 {
    let counted = app.state().cache.stats().bytes_served;
    let mut body = Value::Null;
    for _ in 0..200 {
        body = app
            .graphql(Some(token), "{ cacheStats { bytesServed } }", json!({}))
            .await
            .1;
        if body["data"]["cacheStats"]["bytesServed"].as_u64() == Some(counted) {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cacheStats.bytesServed never reached the {counted} bytes the cache counted: {body}");
}

/// `bytes=a-b` as (a, b).
fn range_of(request: &Value) -> (u64, u64) {
    let range = request["range"].as_str().expect("a ranged request");
    let (a, b) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .unwrap_or_else(|| panic!("not a byte range: {range}"));
    (
        a.parse().expect("range start"),
        b.parse().expect("range end"),
    )
}

fn count(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

#[tokio::test]
async fn mcap_indexed_reader_in_chromium_reads_a_window_through_ranges() {
    let bundle = viewer_bundle();
    let page = PageServer::start(bundle).await;
    // Only the page's origin may read /data from a browser: the reads below work through
    // this setting, not through a default.
    let origin = page.origin.clone();
    let app = TestApp::builder()
        .seeded(FleetSpec::small(41))
        .configure(move |config| config.server.cors_origins = vec![origin])
        .start()
        .await;
    let admin = app.token("admin", Role::Admin).await;
    let viewer = app.token("viewer-in-chromium", Role::Viewer).await;

    // The log, beside a drive's own, then cataloged and cached in the office.
    let drive = &app.fleet().drives[0];
    let key = format!("{}logs/{}_viewer.mcap", drive.prefix, drive.id);
    let window = (
        START_NS + 300 * SECOND_NS + 500_000,
        START_NS + 305 * SECOND_NS + 500_000,
    );
    let log = tokio::task::spawn_blocking(move || write_log(window))
        .await
        .expect("log writer");
    let size = log.bytes.len() as u64;
    assert!(size >= 64 * MIB, "the log has only {size} bytes");
    app.upstream()
        .store
        .put(BUCKET, &key, log.bytes.clone())
        .await
        .expect("log uploaded");
    app.sync_cleanly(&admin).await;
    cache_whole(&app, &admin, &key, &log.bytes).await;

    let url = presign(&app, &viewer, &key, 3600).await;
    // Expires while the page reads.
    let short = presign(&app, &viewer, &key, 1).await;
    let short_expired = tokio::time::Instant::now() + Duration::from_millis(2100);
    let egress_before = app.state().egress.snapshot().bytes_from_upstream;
    let served_before = settled_bytes_served(&app).await;
    let ledger_before = ledger_bytes_served(&app, &admin).await;

    let browser = Browser::start().await.expect("chromium via chromedriver");
    browser
        .goto(&format!("{}/", page.origin))
        .await
        .expect("the viewer's page");
    assert_eq!(
        browser
            .script(
                "return typeof window.milepostViewer === 'object' \
                 && typeof window.milepostReadWindow === 'function';",
                json!([]),
            )
            .await
            .expect("script"),
        json!(true),
        "the bundle did not load on the page"
    );

    // 1. The viewers' probe: a GET abandoned after its headers, for the size.
    let opened = in_page(&browser, "milepostViewer.open(args[0])", json!([url]))
        .await
        .unwrap_or_else(|err| panic!("the viewer could not open the log: {err}"));
    let probe = &opened["probe"];
    assert_eq!(opened["size"].as_u64(), Some(size), "{opened}");
    assert_eq!(probe["status"], 200, "{opened}");
    assert_eq!(probe["acceptRanges"], "bytes", "{opened}");
    assert_eq!(probe["contentLength"], size.to_string(), "{opened}");
    assert_eq!(
        probe["bytes"], 0,
        "the probe read none of the body: {opened}"
    );
    // What the server counted for it: what went into the socket's buffers before the
    // browser dropped the connection (the body is never read by the page).
    let served_probe = settled_bytes_served(&app).await - served_before;

    // 2. The summary, then the window's messages, one ranged GET per read.
    let read = in_page(
        &browser,
        "milepostViewer.readWindow(args[0], args[1])",
        json!([window.0.to_string(), window.1.to_string()]),
    )
    .await
    .unwrap_or_else(|err| panic!("the viewer could not read the window: {err}"));
    let served_ranges = settled_bytes_served(&app).await - served_before - served_probe;

    let summary = &read["summary"];
    let mut topics: Vec<&str> = summary["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["topic"].as_str().expect("topic"))
        .collect();
    topics.sort_unstable();
    assert_eq!(topics, [CAMERA, IMU], "{summary}");
    assert_eq!(summary["schemas"], 1, "{summary}");
    assert_eq!(summary["chunkIndexes"].as_u64(), Some(log.chunks as u64));
    assert_eq!(summary["compressions"], json!([""]), "{summary}");
    let total: u64 = log.counts.values().sum();
    assert_eq!(count(&summary["messageCount"]), total, "{summary}");
    for (topic, written) in &log.counts {
        assert_eq!(
            count(&summary["channelMessageCounts"][topic]),
            *written,
            "{topic} in {summary}"
        );
    }
    assert_eq!(count(&summary["messageStartTime"]), START_NS, "{summary}");

    let in_window: u64 = log.in_window.values().sum();
    assert!(
        in_window > 500,
        "a window of 5 s holds {in_window} messages"
    );
    assert_eq!(
        count(&read["messages"]),
        in_window,
        "messages in the window"
    );
    for (topic, written) in &log.in_window {
        assert_eq!(
            count(&read["perTopic"][topic]),
            *written,
            "{topic} in the window"
        );
    }
    assert_eq!(read["outOfWindow"], 0);
    assert_eq!(read["outOfOrder"], 0);
    assert_eq!(
        read["firstLogTime"].as_str(),
        log.first_in_window.map(|t| t.to_string()).as_deref()
    );
    assert_eq!(
        read["lastLogTime"].as_str(),
        log.last_in_window.map(|t| t.to_string()).as_deref()
    );
    assert_eq!(count(&read["payloadBytes"]), log.window_payload_bytes);

    // Every read was a ranged GET answered 206 with exactly its range.
    let requests = read["requests"].as_array().expect("requests");
    assert!(
        requests.len() >= 5,
        "header, footer, summary, chunks: {requests:?}"
    );
    let mut ranged = 0;
    for request in requests {
        let (a, b) = range_of(request);
        assert_eq!(request["status"], 206, "{request}");
        assert_eq!(
            request["contentRange"].as_str(),
            Some(format!("bytes {a}-{b}/{size}").as_str()),
            "{request}"
        );
        assert_eq!(request["bytes"].as_u64(), Some(b - a + 1), "{request}");
        ranged += b - a + 1;
    }
    assert_eq!(read["bytesTransferred"].as_u64(), Some(ranged));

    // Under 10 % of the file reached the page (the probe's body is never read), and the
    // server sent exactly the ranges asked for. The server's count of the probe is what it
    // pushed before the browser hung up (socket buffers, a map window or two ahead: a few MiB);
    // with it, the whole still stays under 10 % of a log this size.
    let budget = size / 10;
    let diagnosis = format!(
        "file {size} bytes, 10 % = {budget}; page received {ranged} in {} ranged GETs; \
         server: probe {served_probe}, ranges {served_ranges}",
        requests.len()
    );
    assert!(ranged < budget, "{diagnosis}");
    assert_eq!(served_ranges, ranged, "{diagnosis}");
    assert!(served_probe + served_ranges < budget, "{diagnosis}");
    // cacheStats reports the same bytes, all from the cache: nothing more came from upstream.
    let ledger_after = ledger_bytes_served(&app, &admin).await;
    assert_eq!(
        ledger_after - ledger_before,
        served_probe + served_ranges,
        "{diagnosis}"
    );
    assert_eq!(
        app.state().egress.snapshot().bytes_from_upstream,
        egress_before,
        "the cached log was read from upstream again"
    );
    let errors = browser.console_errors().await.expect("console log");
    assert!(
        errors.is_empty(),
        "console errors while reading: {errors:?}"
    );

    // 3. Expired and tampered URLs are refused with 403, to a plain fetch and to the viewer.
    let mut tampered = url.clone();
    let at = tampered.find("mp-signature=").expect("a signature") + "mp-signature=".len();
    let flipped = if tampered[at..].starts_with('0') {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(at..=at, flipped);
    tokio::time::sleep_until(short_expired).await;
    for (what, refused) in [("expired", &short), ("tampered", &tampered)] {
        let answer = in_page(&browser, "milepostViewer.status(args[0])", json!([refused]))
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert_eq!(answer["status"], 403, "{what}: {answer}");
        let body: Value =
            serde_json::from_str(answer["body"].as_str().expect("body")).expect("a JSON body");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{what}: {body}"
        );
        if what == "expired" {
            assert!(
                answer["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("expired")),
                "{body}"
            );
        }
        let opened = in_page(&browser, "milepostViewer.open(args[0])", json!([refused])).await;
        let error = opened.expect_err("the viewer opened a refused URL");
        assert!(error.contains("status 403"), "{what}: {error}");
    }
    assert_eq!(
        app.state().cache.stats().bytes_served,
        served_before + served_probe + served_ranges,
        "a refused URL was served"
    );
    // Chromium logs each refused load ("Failed to load resource: ... 403"): those and
    // nothing else.
    let errors = browser.console_errors().await.expect("console log");
    assert!(!errors.is_empty(), "no refused load was logged");
    for error in &errors {
        assert!(
            error.contains("/data/") && error.contains("status of 403"),
            "{errors:?}"
        );
    }
    assert_eq!(
        browser.console_errors().await.expect("console log"),
        Vec::<String>::new()
    );
    browser.quit().await;
    app.shutdown().await;
}
