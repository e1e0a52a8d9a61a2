//! `/data` for browser-based viewers (Foxglove, Lichtblick): presigned URLs that need no
//! bearer token (exact bytes, ranges; refused with 403 when expired, tampered with, used for
//! another object, or after the token is revoked) and CORS (preflight and exposed headers for
//! allowed origins only).

use std::time::Duration;

use milepost_indexer::fleet::FleetSpec;
use milepost_schema::enums::Role;
use milepost_store::ByteRange;
use milepost_testkit::TestApp;
use reqwest::StatusCode;
use serde_json::json;

const PRESIGN: &str = "query($bucket: String!, $key: String!, $ttl: Int) {
    presignData(bucket: $bucket, key: $key, ttlSeconds: $ttl) { url path expiresAt } }";

/// A presigned `/data` URL (absolute) of `fleet/key`, valid `ttl` seconds.
pub(crate) async fn presign(app: &TestApp, token: &str, key: &str, ttl: i64) -> String {
    let (_, body) = app
        .graphql(
            Some(token),
            PRESIGN,
            json!({ "bucket": "fleet", "key": key, "ttl": ttl }),
        )
        .await;
    let path = body["data"]["presignData"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("presignData: {body}"))
        .to_owned();
    assert!(
        body["data"]["presignData"]["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("http://") && url.ends_with(&path)),
        "{body}"
    );
    format!("{}{path}", app.base_url)
}

#[tokio::test]
async fn presigned_urls_and_cors_serve_browser_viewers() {
    let app = TestApp::builder().seeded(FleetSpec::small(5)).start().await;
    let admin = app.token("admin", Role::Admin).await;
    let viewer = app.token("viewer-in-browser", Role::Viewer).await;
    app.sync_cleanly(&admin).await;
    let log = app
        .fleet()
        .drives
        .iter()
        .flat_map(|d| d.files.iter())
        .find(|f| f.key.ends_with(".mcap"))
        .expect("an mcap log")
        .key
        .clone();
    let whole = app
        .upstream()
        .store
        .get("fleet", &log, ByteRange::All, None)
        .await
        .expect("get")
        .collect(usize::MAX)
        .await
        .expect("body");
    let http = reqwest::Client::new();

    // No token, only the URL: the whole object, a range, a HEAD.
    let url = presign(&app, &viewer, &log, 600).await;
    let response = http.get(&url).send().await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.expect("body") == whole);
    let response = http
        .get(&url)
        .header("range", "bytes=10-99")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 10-99/{}", whole.len()).as_str()
    );
    assert!(response.bytes().await.expect("body") == whole.slice(10..100));
    assert_eq!(
        http.head(&url).send().await.expect("head").status(),
        StatusCode::OK
    );

    // Tampered with: another signature, another object, a later expiry.
    let mut bad_signature = url.clone();
    let last = bad_signature.pop().expect("a char");
    bad_signature.push(if last == '0' { '1' } else { '0' });
    let other = app
        .fleet()
        .drives
        .iter()
        .flat_map(|d| d.files.iter())
        .find(|f| f.key != log)
        .expect("another object")
        .key
        .clone();
    let other_object = url.replacen(&log, &other, 1);
    let expires = url
        .split("mp-expires=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .expect("expiry");
    let later = url.replacen(
        &format!("mp-expires={expires}"),
        &format!("mp-expires={}", expires.parse::<i64>().expect("n") + 3600),
        1,
    );
    for (what, bad) in [
        ("signature", bad_signature),
        ("object", other_object),
        ("expiry", later),
    ] {
        let response = http.get(&bad).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{what}"
        );
    }
    // Without any proof it is an ordinary request without a token.
    let bare = url.split('?').next().expect("path").to_owned();
    assert_eq!(
        http.get(&bare).send().await.expect("get").status(),
        StatusCode::UNAUTHORIZED
    );

    // Expired.
    let short = presign(&app, &viewer, &log, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = http.get(&short).send().await.expect("get");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.text().await.expect("body").contains("expired"));

    // CORS: a viewer's origin gets the preflight and the headers a ranged reader needs.
    for origin in ["https://app.foxglove.dev", "http://localhost:5173"] {
        let response = http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "range")
            .send()
            .await
            .expect("preflight");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{origin}");
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert!(h["access-control-allow-methods"]
            .to_str()
            .expect("text")
            .contains("GET"));
        assert!(h["access-control-allow-headers"]
            .to_str()
            .expect("text")
            .contains("Range"));
        let response = http
            .get(&url)
            .header("origin", origin)
            .header("range", "bytes=0-7")
            .send()
            .await
            .expect("get");
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        let exposed = h["access-control-expose-headers"].to_str().expect("text");
        for name in ["Content-Range", "Accept-Ranges", "ETag", "Content-Length"] {
            assert!(exposed.contains(name), "{name} in {exposed}");
        }
    }
    for origin in ["https://evil.example", "http://localhost.evil.example:80"] {
        let response = http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .expect("preflight");
        assert!(
            !response
                .headers()
                .contains_key("access-control-allow-origin"),
            "{origin}"
        );
        let response = http
            .get(&url)
            .header("origin", origin)
            .send()
            .await
            .expect("get");
        assert!(
            !response
                .headers()
                .contains_key("access-control-allow-origin"),
            "{origin}"
        );
    }

    // The web catalog links MCAP logs to the viewers; the URL is presigned on the click.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookie = "milepost_session=".to_owned() + &viewer;
    let drive = app
        .fleet()
        .drives
        .iter()
        .find(|d| d.files.iter().any(|f| f.key == log))
        .expect("the log's drive");
    let page = no_redirects
        .get(format!("{}/drives/{}", app.base_url, drive.id))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("drive page")
        .text()
        .await
        .expect("html");
    let open = format!("/open/Foxglove/fleet/{log}");
    for expected in [
        format!(r#"href="{open}""#),
        format!(r#"href="/open/Lichtblick/fleet/{log}""#),
        format!(r#"data-presign="/presign/fleet/{log}""#),
    ] {
        assert!(page.contains(&expected), "{expected} on the drive page");
    }
    assert!(
        !page.contains("mp-signature"),
        "nothing is signed while rendering"
    );
    let response = no_redirects
        .get(format!("{}{open}", app.base_url))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("open");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = reqwest::Url::parse(response.headers()["location"].to_str().expect("location"))
        .expect("a URL");
    assert_eq!(location.host_str(), Some("app.foxglove.dev"));
    let signed = location
        .query_pairs()
        .find(|(name, _)| name == "ds.url")
        .map(|(_, value)| value.into_owned())
        .expect("ds.url");
    assert!(
        http.get(&signed)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
            == whole
    );
    let copied = no_redirects
        .get(format!("{}/presign/fleet/{log}", app.base_url))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("presign")
        .text()
        .await
        .expect("url");
    assert!(copied.contains("mp-signature="), "{copied}");
    assert_eq!(
        http.get(&copied).send().await.expect("get").status(),
        StatusCode::OK
    );
    let unknown = no_redirects
        .get(format!("{}/open/Nope/fleet/{log}", app.base_url))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("open");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let signed_out = no_redirects
        .get(format!("{}{open}", app.base_url))
        .send()
        .await
        .expect("open");
    let to = signed_out
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        !to.contains("foxglove"),
        "without a session there is nothing to sign with: {} {to}",
        signed_out.status()
    );

    // Revoking the token revokes its URLs.
    app.state()
        .revoke_token("viewer-in-browser")
        .await
        .expect("revoke");
    assert_eq!(
        http.get(&url).send().await.expect("get").status(),
        StatusCode::FORBIDDEN
    );
    // An anonymous caller has no token to sign with.
    let (_, body) = app
        .graphql(
            None,
            PRESIGN,
            json!({ "bucket": "fleet", "key": log, "ttl": 60 }),
        )
        .await;
    assert!(body["errors"].is_array(), "{body}");
    app.shutdown().await;
}
