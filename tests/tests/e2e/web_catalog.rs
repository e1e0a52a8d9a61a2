//! The web catalog in a real headless Chromium (through chromedriver), against the real server
//! with a synthetic fleet in a loopback S3: sign in, search, facets, a drive, a dataset from a
//! search, reserving it and watching it become READY, the cache dashboard; form errors next to
//! their fields; roles and CSRF. Screenshots go to `target/screenshots/`.
//!
//! (Over 600 lines: browser scenarios sharing one world and the browser helpers.)

use std::path::PathBuf;
use std::time::Duration;

use milepost_indexer::fleet::FleetSpec;
use milepost_schema::enums::Role;
use milepost_testkit::browser::Browser;
use milepost_testkit::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BUCKET: &str = "fleet";
const ARROW_DOWN: &str = "\u{E015}";
const ENTER: &str = "\u{E007}";

struct World {
    app: TestApp,
    admin: String,
    engineer: String,
    viewer: String,
}

async fn world() -> World {
    let app = TestApp::builder().seeded(FleetSpec::small(7)).start().await;
    let admin = app.token("admin", Role::Admin).await;
    let engineer = app.token("alice", Role::Engineer).await;
    let viewer = app.token("victor", Role::Viewer).await;
    app.sync_cleanly(&admin).await;
    World {
        app,
        admin,
        engineer,
        viewer,
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots").join(format!("{name}.png"))
}

/// Screenshots of the current page at 1280 and 390 px wide.
async fn screenshots(browser: &Browser, name: &str) {
    for (width, height) in [(1280, 1000), (390, 1400)] {
        browser.set_size(width, height).await.expect("resize");
        browser
            .screenshot(&screenshot_path(&format!("{name}-{width}")))
            .await
            .expect("screenshot");
    }
    browser.set_size(1280, 1000).await.expect("resize");
}

async fn wait_url(browser: &Browser, part: &str) -> String {
    for _ in 0..200 {
        let url = browser.url().await.expect("url");
        if url.contains(part) {
            return url;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never reached a URL containing {part}");
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await.expect("open");
    wait_url(browser, "/signin").await;
    browser.type_into("#token", token).await.expect("token");
    browser
        .click_css(".signin button[type=submit]")
        .await
        .expect("sign in");
    browser.find("#whoami").await.expect("signed in");
}

fn number(text: &str) -> f64 {
    text.chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

/// Waits until the reservation page shows READY with its local path; returns the path.
async fn wait_ready(browser: &Browser) -> String {
    for _ in 0..600 {
        if !browser
            .find_all("#local-path")
            .await
            .expect("find")
            .is_empty()
        {
            assert_eq!(browser.text("#res-state").await.expect("state"), "READY");
            return browser.text("#local-path").await.expect("path");
        }
        let state = browser.text("#res-state").await.unwrap_or_default();
        assert!(
            !matches!(state.as_str(), "FAILED" | "EXPIRED" | "RELEASED"),
            "reservation ended {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the reservation page never showed READY with a local path");
}

async fn dashboard(browser: &Browser, base: &str) -> (String, String, String) {
    browser
        .goto(&format!("{base}/cache?range=hour"))
        .await
        .expect("dashboard");
    (
        browser.text("#hit-ratio").await.expect("hit ratio"),
        browser.text("#egress-saved").await.expect("egress"),
        browser.text("#bytes-delivered").await.expect("delivered"),
    )
}

#[tokio::test]
async fn catalog_end_to_end_in_chromium() {
    let w = world().await;
    let base = w.app.base_url.clone();
    let browser = Browser::start().await.expect("chromium via chromedriver");

    sign_in(&browser, &base, &w.engineer).await;
    assert_eq!(browser.text("#whoami").await.expect("test step"), "alice");
    let all: f64 = number(&browser.text("#total-count").await.expect("test step"));
    assert!(all > 0.0, "the catalog shows its documents");
    // The line under the search box says when the catalog was last synced.
    let synced = browser.text("#sync-status").await.expect("test step");
    assert!(
        synced.starts_with("Catalog synced at ") && synced.contains("0 problems"),
        "{synced}"
    );
    screenshots(&browser, "search").await;

    // Autocomplete: a field name, then (keyboard only) its values from the facets.
    browser.type_into("#q", "cit").await.expect("test step");
    let first = browser.text("#q-suggestions li").await.expect("test step");
    assert_eq!(first, "city:");
    browser.keys("#q", ARROW_DOWN).await.expect("test step");
    browser.keys("#q", ENTER).await.expect("test step");
    let value = browser
        .script("return document.getElementById('q').value", json!([]))
        .await
        .expect("test step");
    assert_eq!(value, json!("city:"), "Enter accepts the highlighted field");
    let values = browser.text("#q-suggestions li").await.expect("test step");
    assert!(values.starts_with("city:"), "values follow: {values}");

    // A facet filters; clicking it again removes the filter.
    browser.goto(&format!("{base}/")).await.expect("test step");
    let hrefs = browser
        .script(
            "return Array.from(document.querySelectorAll('.facets a.facet')).map(a => a.getAttribute('href'))",
            json!([]),
        )
        .await
        .expect("test step");
    let city = hrefs
        .as_array()
        .expect("test step")
        .iter()
        .filter_map(Value::as_str)
        .find(|h| h.contains("city%3A"))
        .expect("a city facet")
        .to_owned();
    browser
        .click_css(&format!("a.facet[href=\"{city}\"]"))
        .await
        .expect("test step");
    wait_url(&browser, "city%3A").await;
    let filtered = number(&browser.text("#total-count").await.expect("test step"));
    assert!(filtered > 0.0 && filtered < all, "{filtered} of {all}");
    assert_eq!(
        browser
            .attribute("a.facet.on", "aria-pressed")
            .await
            .expect("test step")
            .as_deref(),
        Some("true")
    );
    let city_query = browser
        .script("return document.getElementById('q').value", json!([]))
        .await
        .expect("test step")
        .as_str()
        .expect("test step")
        .to_owned();
    browser.click_css("a.facet.on").await.expect("test step");
    for _ in 0..100 {
        if browser
            .find_all("a.facet.on")
            .await
            .expect("test step")
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(browser
        .find_all("a.facet.on")
        .await
        .expect("test step")
        .is_empty());
    assert_eq!(
        number(&browser.text("#total-count").await.expect("test step")),
        all
    );

    // A drive: metadata, timeline, topics with message counts, files.
    browser
        .goto(&format!("{base}/?q=kind%3Adrive"))
        .await
        .expect("test step");
    let drive_href = browser
        .attribute("a.hit-title[href^='/drives/']", "href")
        .await
        .expect("test step")
        .expect("href");
    browser
        .click_css("a.hit-title[href^='/drives/']")
        .await
        .expect("test step");
    wait_url(&browser, "/drives/").await;
    let drive_id = drive_href.trim_start_matches("/drives/").to_owned();
    assert!(browser
        .text("h1")
        .await
        .expect("test step")
        .contains(&drive_id));
    browser.find(".timeline svg").await.expect("test step");
    let counts = browser
        .script(
            "return Array.from(document.querySelectorAll('#topics tbody tr td.num')).map(td => Number(td.textContent))",
            json!([]),
        )
        .await
        .expect("test step");
    let counts: Vec<f64> = counts
        .as_array()
        .expect("test step")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(
        !counts.is_empty() && counts.iter().any(|c| *c > 0.0),
        "topics with message counts: {counts:?}"
    );
    let captions = browser
        .script(
            "return Array.from(document.querySelectorAll('caption')).map(c => c.textContent).join('|')",
            json!([]),
        )
        .await
        .expect("test step");
    assert!(
        captions.as_str().unwrap_or_default().contains(" files"),
        "a files table: {captions}"
    );
    screenshots(&browser, "drive").await;
    // MCAP logs link to the browser viewers.
    browser
        .script(
            "document.querySelector('a.open-viewer').scrollIntoView({block: 'center'})",
            json!([]),
        )
        .await
        .expect("an Open in viewer link on the drive page");
    browser
        .screenshot(&screenshot_path("viewer-links-1280"))
        .await
        .expect("screenshot");

    // A dataset from a search, with the size preview first.
    browser
        .goto(&format!(
            "{base}/?q={}",
            city_query.replace(':', "%3A").replace(' ', "%20")
        ))
        .await
        .expect("test step");
    browser
        .click_css("#create-dataset")
        .await
        .expect("test step");
    wait_url(&browser, "/new-dataset").await;
    let previewed = browser.text("#preview-count").await.expect("test step");
    assert!(number(&previewed) > 0.0);
    browser
        .type_into("#nd-name", "e2e-city")
        .await
        .expect("test step");
    browser
        .type_into("#nd-description", "drives and scenarios of one city")
        .await
        .expect("test step");
    browser
        .click_css("#create-button")
        .await
        .expect("test step");
    wait_url(&browser, "/datasets/e2e-city").await;
    assert_eq!(
        browser.text("#dataset-objects").await.expect("test step"),
        previewed
    );
    screenshots(&browser, "dataset").await;

    // Reserve it and watch it become READY.
    browser.type_into("#ttl", "2").await.expect("test step");
    browser
        .type_into("#purpose", "e2e")
        .await
        .expect("test step");
    browser
        .click_css("#reserve-button")
        .await
        .expect("test step");
    wait_url(&browser, "/reservations/").await;
    browser.find("#progress-bar").await.expect("test step");
    screenshots(&browser, "reservation-progress").await;
    let path = wait_ready(&browser).await;
    assert!(
        std::path::Path::new(&path).is_dir(),
        "localPath {path} is a directory on this machine"
    );
    assert!(browser
        .text("#cmd-path")
        .await
        .expect("test step")
        .contains(&path));
    assert!(browser
        .text("#cmd-aws")
        .await
        .expect("test step")
        .contains("aws s3 cp --endpoint-url"));
    screenshots(&browser, "reservation-ready").await;

    // The dashboard before and after a second reservation of the same (now cached) data.
    let before = dashboard(&browser, &base).await;
    browser
        .goto(&format!("{base}/datasets/e2e-city"))
        .await
        .expect("test step");
    browser.type_into("#ttl", "1").await.expect("test step");
    browser
        .click_css("#reserve-button")
        .await
        .expect("test step");
    wait_url(&browser, "/reservations/").await;
    wait_ready(&browser).await;
    let mut after = dashboard(&browser, &base).await;
    for _ in 0..50 {
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = dashboard(&browser, &base).await;
    }
    assert!(
        number(&after.0) > number(&before.0),
        "hit ratio rises: {before:?} -> {after:?}"
    );
    assert!(
        number(&after.1) > number(&before.1),
        "egress saved rises: {before:?} -> {after:?}"
    );
    assert_ne!(after.2, before.2, "bytes delivered change");
    assert!(browser
        .text("#top-datasets")
        .await
        .expect("test step")
        .contains("e2e-city@1"));
    browser
        .find(".chart svg rect.fetched")
        .await
        .expect("test step");
    screenshots(&browser, "dashboard").await;

    // My reservations lists both; the transfers page shows the queue and the policy.
    browser
        .goto(&format!("{base}/reservations"))
        .await
        .expect("test step");
    let listed = browser
        .find_all("#reservation-list > li")
        .await
        .expect("test step")
        .len();
    assert_eq!(listed, 2);
    // The office's own uploads (dataset manifests) settle; then the uploader stops, so that
    // the seeded rows stay as written (they have no staged bytes to upload).
    assert!(
        w.app
            .state()
            .write_back
            .wait_idle(Duration::from_secs(30))
            .await
    );
    w.app.state().write_back.shutdown().await;
    seed_transfers(&w.app).await;
    browser
        .goto(&format!("{base}/transfers"))
        .await
        .expect("test step");
    assert!(browser
        .text("#policy-schedule")
        .await
        .expect("test step")
        .contains("* off"));
    let table = browser.text("#transfers").await.expect("test step");
    for key in [
        "d-17/drive.json",
        "d-17/front.mcap",
        "outputs/trace.bin",
        "access denied",
    ] {
        assert!(table.contains(key), "{key} in {table}");
    }
    assert_eq!(browser.text("#queued-count").await.expect("test step"), "1");
    assert!(
        browser
            .find_all("#policy-form")
            .await
            .expect("test step")
            .is_empty(),
        "only an admin may change the policy"
    );
    screenshots(&browser, "transfers").await;

    // The kinds of page not visited yet: a run, a scenario, the dataset list. Then no page visited
    // logged a console error (every page used to log the 404 of /favicon.ico).
    browser
        .goto(&format!("{base}/?q=kind%3Arun"))
        .await
        .expect("test step");
    let run = browser
        .attribute("a.hit-title[href^='/runs/']", "href")
        .await
        .expect("test step")
        .expect("a run hit");
    browser
        .goto(&format!("{base}{run}"))
        .await
        .expect("test step");
    browser.find("h1").await.expect("test step");
    // Scenario hits link into their drive's page (`/drives/<drive>#scenario-<id>`), where
    // `/scenarios/<id>` redirects too.
    browser
        .goto(&format!("{base}/?q=kind%3Ascenario"))
        .await
        .expect("test step");
    let scenario = browser
        .attribute("a.hit-title[href*='#scenario-']", "href")
        .await
        .expect("test step")
        .expect("a scenario hit");
    let scenario_id = scenario.split("#scenario-").nth(1).expect("scenario id");
    browser
        .goto(&format!("{base}/scenarios/{scenario_id}"))
        .await
        .expect("test step");
    wait_url(&browser, "/drives/").await;
    browser
        .goto(&format!("{base}/datasets"))
        .await
        .expect("test step");
    let errors = browser.console_errors().await.expect("console log");
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    browser.quit().await;
    w.app.shutdown().await;
}

/// Three rows of the write-back journal, as the uploader would write them.
async fn seed_transfers(app: &TestApp) {
    use milepost_schema::entity::transfer;
    use milepost_schema::enums::{TransferOp, TransferState};
    use sea_orm::{ActiveModelTrait, Set};
    let rows = [
        (
            "drives/2026-11-24/gz-004/d-17/drive.json",
            TransferState::Uploading,
            0,
            4096,
            1024,
            None,
        ),
        (
            "drives/2026-11-24/gz-004/d-17/front.mcap",
            TransferState::Queued,
            1,
            3 << 30,
            0,
            None,
        ),
        (
            "runs/sim-881/outputs/trace.bin",
            TransferState::Failed,
            2,
            75 << 20,
            12 << 20,
            Some("upstream refused: access denied"),
        ),
    ];
    for (key, state, priority, size, done, error) in rows {
        transfer::ActiveModel {
            op: Set(TransferOp::Put),
            bucket: Set(BUCKET.to_owned()),
            key: Set(key.to_owned()),
            size: Set(size),
            etag: Set(None),
            staging_path: Set(None),
            state: Set(state),
            priority: Set(priority),
            bytes_done: Set(done),
            attempts: Set(i32::from(state != TransferState::Queued)),
            enqueued_at: Set(chrono::Utc::now()),
            started_at: Set(None),
            finished_at: Set(None),
            error: Set(error.map(str::to_owned)),
            ..Default::default()
        }
        .insert(app.db())
        .await
        .expect("transfer row");
    }
}

/// A GET or POST as a signed-in browser would send it; returns status and body.
pub(crate) async fn as_session(
    app: &TestApp,
    token: &str,
    path: &str,
    form: Option<&[(&str, &str)]>,
    origin: Option<&str>,
) -> (StatusCode, String) {
    let url = format!("{}{path}", app.base_url);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut request = match form {
        Some(form) => client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded_pairs(form)),
        None => client.get(&url),
    }
    .header("cookie", format!("milepost_session={token}"));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

pub(crate) fn csrf_of(page: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[start..start + 32].to_owned()
}

#[tokio::test]
async fn bad_form_input_is_shown_next_to_the_field() {
    let w = world().await;
    let base = w.app.base_url.clone();
    let browser = Browser::start().await.expect("chromium via chromedriver");
    sign_in(&browser, &base, &w.engineer).await;

    // A query with a syntax error: the message sits under the query box.
    browser
        .goto(&format!("{base}/?q=after%3Anot-a-date"))
        .await
        .expect("test step");
    let message = browser.text("#q-error").await.expect("test step");
    assert!(message.contains("after"), "{message}");
    assert_eq!(
        browser
            .attribute("#q", "aria-describedby")
            .await
            .expect("test step")
            .as_deref(),
        Some("q-error")
    );

    // An empty dataset name.
    browser
        .goto(&format!("{base}/new-dataset?q=kind%3Adrive"))
        .await
        .expect("test step");
    browser.find("#preview-count").await.expect("test step");
    browser
        .click_css("#create-button")
        .await
        .expect("test step");
    let message = browser.text("#nd-name-error").await.expect("test step");
    assert!(message.contains("empty"), "{message}");

    // A TTL of -1 when reserving, and a bad glob when previewing.
    browser
        .type_into("#nd-name", "ok-name")
        .await
        .expect("test step");
    browser
        .click_css("#create-button")
        .await
        .expect("test step");
    wait_url(&browser, "/datasets/ok-name").await;
    browser.type_into("#ttl", "-1").await.expect("test step");
    browser
        .click_css("#reserve-button")
        .await
        .expect("test step");
    let message = browser.text("#ttl-error").await.expect("test step");
    assert!(message.contains("-1"), "{message}");
    assert_eq!(
        browser
            .attribute("#ttl", "value")
            .await
            .expect("test step")
            .as_deref(),
        Some("-1"),
        "what was typed is kept"
    );

    // Tagging a scenario without a label, and with an end before its start.
    let (_, page) = as_session(&w.app, &w.engineer, "/?q=kind%3Adrive", None, None).await;
    let start = page.find("/drives/").expect("a drive link");
    let end = start + page[start..].find('"').expect("end of href");
    let drive_path = page[start..end].to_owned();
    browser
        .goto(&format!("{base}{drive_path}"))
        .await
        .expect("test step");
    browser
        .script(
            "document.querySelectorAll('details.panel').forEach(d => d.open = true)",
            json!([]),
        )
        .await
        .expect("test step");
    browser
        .type_into("#tag-start", "1")
        .await
        .expect("test step");
    browser.type_into("#tag-end", "2").await.expect("test step");
    browser
        .click_css("form[action$='/tag'] button[type=submit]")
        .await
        .expect("test step");
    assert!(browser
        .text("#tag-label-error")
        .await
        .expect("test step")
        .contains("label"));
    browser
        .script(
            "document.querySelectorAll('details.panel').forEach(d => d.open = true)",
            json!([]),
        )
        .await
        .expect("test step");
    browser
        .type_into("#tag-label", "cut-in")
        .await
        .expect("test step");
    browser
        .type_into("#tag-start", "5")
        .await
        .expect("test step");
    browser
        .type_into("#tag-end", "abc")
        .await
        .expect("test step");
    browser
        .click_css("form[action$='/tag'] button[type=submit]")
        .await
        .expect("test step");
    assert!(browser
        .text("#tag-end-error")
        .await
        .expect("test step")
        .contains("abc"));

    // An admin's transfer policy form: a bad schedule comes back under its field, the typed
    // text kept; a good one is in force at once.
    browser
        .goto(&format!("{base}/signin?next=%2Ftransfers"))
        .await
        .expect("test step");
    browser
        .type_into("#token", &w.admin)
        .await
        .expect("test step");
    browser
        .click_css(".signin button[type=submit]")
        .await
        .expect("test step");
    wait_url(&browser, "/transfers").await;
    browser
        .script(
            "document.querySelectorAll('details.panel').forEach(d => d.open = true)",
            json!([]),
        )
        .await
        .expect("test step");
    browser
        .type_into(
            "#tp-schedule",
            "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MB/x; * off",
        )
        .await
        .expect("test step");
    browser
        .click_css("#policy-form button[type=submit]")
        .await
        .expect("test step");
    let message = browser.text("#tp-schedule-error").await.expect("test step");
    assert!(
        message.contains("rule 2") && message.contains("10MB/x"),
        "{message}"
    );
    assert_eq!(
        browser
            .attribute("#tp-schedule", "aria-invalid")
            .await
            .expect("test step")
            .as_deref(),
        Some("true")
    );
    screenshots(&browser, "transfers-policy-error").await;
    browser
        .type_into(
            "#tp-schedule",
            "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off",
        )
        .await
        .expect("test step");
    browser
        .click_css("#policy-form button[type=submit]")
        .await
        .expect("test step");
    // Saved: redirected from the form's /transfers/policy back to /transfers.
    for _ in 0..200 {
        if !browser.url().await.expect("url").contains("/policy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        browser.text("#policy-schedule").await.expect("test step"),
        "Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off"
    );

    // The same refusals over plain HTTP: 400s, never a 500.
    let (status, body) = as_session(&w.app, &w.engineer, "/?q=%22unclosed", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains(r#"id="q-error""#));
    let (_, page) = as_session(&w.app, &w.engineer, "/datasets/ok-name", None, None).await;
    let csrf = csrf_of(&page);
    let (status, body) = as_session(
        &w.app,
        &w.engineer,
        "/reserve",
        Some(&[
            ("csrf", &csrf),
            ("dataset", "ok-name"),
            ("version", "1"),
            ("ttl_hours", "-1"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains(r#"id="ttl-error""#), "{body}");
    let (status, body) = as_session(
        &w.app,
        &w.engineer,
        "/new-dataset",
        Some(&[
            ("csrf", &csrf),
            ("q", "kind:drive"),
            ("name", ""),
            ("action", "create"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains(r#"id="nd-name-error""#), "{body}");
    let (status, body) = as_session(
        &w.app,
        &w.engineer,
        "/new-dataset",
        Some(&[
            ("csrf", &csrf),
            ("q", "kind:drive"),
            ("include", " "),
            ("name", "x"),
            ("action", "preview"),
        ]),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a blank glob line is ignored: {body}"
    );
    let (status, _) = as_session(&w.app, &w.engineer, "/drives/no-such-drive", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = as_session(&w.app, &w.engineer, "/datasets/no-such", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    browser.quit().await;
    w.app.shutdown().await;
}

#[tokio::test]
async fn roles_and_forgery_are_refused() {
    let w = world().await;

    // Without a session every page sends you to sign in; a wrong token is refused there.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client
        .get(format!("{}/cache", w.app.base_url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"].to_str().expect("test step"),
        "/signin?next=%2Fcache"
    );
    let response = client
        .post(format!("{}/signin", w.app.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=mp_wrong")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response
        .text()
        .await
        .expect("test step")
        .contains("unknown or revoked"));
    let response = client
        .post(format!("{}/signin", w.app.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}&next=%2Fcache", w.engineer))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("test step")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // A viewer sees no create or reserve controls, and the API refuses them anyway.
    let (_, search) = as_session(&w.app, &w.viewer, "/", None, None).await;
    assert!(search.contains(r#"id="whoami">victor"#));
    assert!(!search.contains("create-dataset"));
    let (_, page) = as_session(&w.app, &w.engineer, "/", None, None).await;
    assert!(page.contains(r#"id="create-dataset""#));
    let engineer_csrf = csrf_of(&page);
    let (status, _) = as_session(
        &w.app,
        &w.engineer,
        "/new-dataset",
        Some(&[
            ("csrf", &engineer_csrf),
            ("q", "kind:drive"),
            ("name", "all-drives"),
            ("action", "create"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, dataset) = as_session(&w.app, &w.viewer, "/datasets/all-drives", None, None).await;
    assert!(!dataset.contains("reserve-form"), "no Reserve for a viewer");
    let viewer_csrf = csrf_of(&dataset);
    let (status, body) = as_session(
        &w.app,
        &w.viewer,
        "/reserve",
        Some(&[
            ("csrf", &viewer_csrf),
            ("dataset", "all-drives"),
            ("version", "1"),
            ("ttl_hours", "1"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("ENGINEER"), "{body}");

    // Forged posts: a missing or foreign CSRF token, or another site's Origin.
    let reserve = |csrf: String| {
        vec![
            ("csrf".to_owned(), csrf),
            ("dataset".to_owned(), "all-drives".to_owned()),
            ("version".to_owned(), "1".to_owned()),
            ("ttl_hours".to_owned(), "1".to_owned()),
        ]
    };
    for (csrf, origin) in [
        (String::new(), None),
        (viewer_csrf.clone(), None),
        (engineer_csrf.clone(), Some("http://evil.test")),
    ] {
        let pairs = reserve(csrf);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, _) = as_session(&w.app, &w.engineer, "/reserve", Some(&pairs), origin).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = as_session(
        &w.app,
        &w.engineer,
        "/reserve",
        Some(&[
            ("csrf", &engineer_csrf),
            ("dataset", "all-drives"),
            ("version", "1"),
            ("ttl_hours", "1"),
        ]),
        Some(&w.app.base_url),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the real form works");

    // Only an admin sees and may use the transfer policy form; a bad schedule comes back to
    // its field, a good one is in force at once.
    let (_, page) = as_session(&w.app, &w.engineer, "/transfers", None, None).await;
    assert!(!page.contains("policy-form"));
    let (status, body) = as_session(
        &w.app,
        &w.engineer,
        "/transfers/policy",
        Some(&[
            ("csrf", &engineer_csrf),
            ("schedule", "* 1MiB"),
            ("priorities", "*"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, page) = as_session(&w.app, &w.admin, "/transfers", None, None).await;
    assert!(page.contains(r#"id="policy-form""#));
    let admin_csrf = csrf_of(&page);
    let (status, body) = as_session(
        &w.app,
        &w.admin,
        "/transfers/policy",
        Some(&[
            ("csrf", &admin_csrf),
            ("schedule", "Mon-Fri 09:00-18:00 20MiB; Sat 10XB"),
            ("priorities", "*.json\n*"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let field = body
        .split(r#"id="tp-schedule-error""#)
        .nth(1)
        .expect("the error sits under the schedule field");
    assert!(
        field.contains("rule 2") && field.contains("10XB"),
        "{field}"
    );
    assert!(body.contains("Sat 10XB"), "the typed value is kept");
    let (status, _) = as_session(
        &w.app,
        &w.admin,
        "/transfers/policy",
        Some(&[
            ("csrf", &admin_csrf),
            ("schedule", "Mon-Fri 09:00-18:00 20MiB; * off"),
            ("priorities", "*.json\r\n\r\n*.mcap\r\n"),
        ]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = as_session(&w.app, &w.viewer, "/transfers", None, None).await;
    assert!(
        page.contains(r#"<code id="policy-schedule">Mon-Fri 09:00-18:00 20MiB; * off</code>"#),
        "{page}"
    );
    assert!(page.contains("<li><code>*.mcap</code></li>"));
    assert_eq!(
        w.app.state().transfer_policy.current().priorities,
        vec!["*.json", "*.mcap"]
    );

    // Pages stay small and carry a strict content security policy.
    let response = client
        .get(format!("{}/?q=", w.app.base_url))
        .header("cookie", format!("milepost_session={}", w.engineer))
        .send()
        .await
        .expect("get");
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("test step")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = response.text().await.expect("test step");
    let css = w
        .app
        .get("/assets/app.css")
        .await
        .text()
        .await
        .expect("test step");
    let js = w
        .app
        .get("/assets/app.js")
        .await
        .text()
        .await
        .expect("test step");
    let weight = html.len() + css.len() + js.len();
    assert!(weight < 200 * 1024, "search page weighs {weight} bytes");

    // Escaping: markup in a query comes back as text.
    let (status, body) = as_session(
        &w.app,
        &w.engineer,
        "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        None,
        None,
    )
    .await;
    assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST);
    assert!(!body.contains("<script>alert(1)"));
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    w.app.shutdown().await;
}

/// After signing in, `next` only ever leads back to this server. Browsers drop tab, CR and LF
/// from a URL and read `\` as `/`, so `/%09/evil.test` (as the form or query sends it) would
/// become the protocol-relative `//evil.test`, another host; every disguise falls back to `/`,
/// both in the sign-in page's hidden field and in the redirect after a good token.
#[tokio::test]
async fn sign_in_never_redirects_to_another_host() {
    let app = TestApp::start().await;
    let engineer = app.token("alice", Role::Engineer).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let base = reqwest::Url::parse(&app.base_url).expect("base url");
    // Raw query and form values, exactly as they appear on the wire.
    for raw in [
        "/%09/evil.test",
        "%2F%09%2Fevil.test",
        "/%0A/evil.test",
        "/%0D%0A/evil.test",
        "/%0D/evil.test",
        "/%7F/evil.test",
        "%09//evil.test",
        "//evil.test",
        "%2F%2Fevil.test",
        "/%2F/evil.test",
        "/%5Cevil.test",
        "%5C%5Cevil.test",
        "/%5C/evil.test",
        "https://evil.test",
        "https:%2F%2Fevil.test",
        "%0A",
    ] {
        let response = client
            .post(format!("{}/signin", app.base_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={engineer}&next={raw}"))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "next={raw}");
        let location = response
            .headers()
            .get("location")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| panic!("next={raw}: a redirect without Location"));
        // `Url::join` follows the WHATWG URL rules a browser applies to `Location`.
        let target = base.join(&location).expect("a URL");
        assert_eq!(
            target.origin(),
            base.origin(),
            "next={raw} sent the browser to {target}"
        );
        assert_eq!(location, "/", "next={raw}");
        let page = client
            .get(format!("{}/signin?next={raw}", app.base_url))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("page");
        assert!(
            page.contains(r#"<input type="hidden" name="next" value="/">"#),
            "next={raw} is kept in the sign-in form: {page}"
        );
    }

    // A local path, query included, is where sign-in goes back to.
    let response = client
        .post(format!("{}/signin", app.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "token={engineer}&next=%2Fsearch%3Fq%3Dcut-in%26x%3D1"
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/search?q=cut-in&x=1");
    app.shutdown().await;
}
