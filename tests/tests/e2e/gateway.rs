//! The office S3 gateway against real clients: aws-sdk-s3 (through the office's own S3 client
//! and raw SDK calls) and the AWS CLI. Objects written through the gateway are readable in the
//! office at once, reach the upstream S3 server (s3s-fs on loopback) in the background with
//! the same bytes, and bad requests get S3 errors and change nothing.
//!
//! (Over 600 lines: the gateway's end-to-end scenarios with real clients; the shared world and helpers are here, narrower groups in gateway/.)

use std::time::Duration;

use bytes::Bytes;
use milepost_schema::entity::transfer;
use milepost_schema::enums::{Role, TransferState};
use milepost_store::{
    list_all, put_stream, ByteRange, ObjectStore, StaticCredentials, StoreErrorKind, UploadOptions,
};
use milepost_testkit::{LoopbackUpstream, TestApp};
use sea_orm::{EntityTrait as _, PaginatorTrait as _};
use sha2::{Digest, Sha256};

// Additional checksums (headers and aws-chunked trailers), in a file of their own.
mod checksums;
// Expiry and room of unfinished multipart uploads, connection timeouts, in a file of their own.
mod housekeeping;
// Content-Type, representation headers and user metadata.
mod metadata;
// UploadPartCopy.
mod part_copy;
// Conditional writes on missing keys, small listing points, attributes, request ids.
mod semantics;
// SigV4 signed with `Date` instead of `X-Amz-Date`.
mod sigv4;

const BUCKET: &str = "fleet";

struct World {
    upstream: LoopbackUpstream,
    app: TestApp,
}

async fn world() -> World {
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), BUCKET)
        .start()
        .await;
    World { upstream, app }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn read_all(store: &dyn ObjectStore, key: &str, range: ByteRange) -> Bytes {
    store
        .get(BUCKET, key, range, None)
        .await
        .unwrap_or_else(|err| panic!("get {key}: {err}"))
        .collect(64 << 20)
        .await
        .expect("body")
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn wait_written_back(app: &TestApp) {
    assert!(
        app.state()
            .write_back
            .wait_idle(Duration::from_secs(60))
            .await,
        "write-back did not drain within 60 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_round_trip_through_the_gateway() {
    let w = world().await;
    w.upstream
        .store
        .put(BUCKET, "seeded/a.txt", Bytes::from_static(b"from s3"))
        .await
        .expect("seed");
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);

    // A small PUT and a multipart upload (three parts, the last short).
    let small = pattern(1024, 1);
    let meta = gw
        .put(BUCKET, "uploads/small.bin", small.clone())
        .await
        .expect("put");
    assert_eq!(
        meta.etag,
        hex::encode(md5_of(&small)),
        "a single PUT's ETag is its MD5"
    );
    let big = pattern(11 * 1024 * 1024 + 17, 2);
    let options = UploadOptions {
        part_size: 5 * 1024 * 1024,
    };
    let chunks = futures::stream::iter(
        big.chunks(1 << 20)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let meta = put_stream(&gw, BUCKET, "uploads/big.bin", chunks, &options)
        .await
        .expect("multipart upload");
    assert!(meta.etag.ends_with("-3"), "multipart ETag: {}", meta.etag);

    // Readable in the office at once: whole and by ranges.
    for (key, bytes) in [("uploads/small.bin", &small), ("uploads/big.bin", &big)] {
        let head = gw.head(BUCKET, key).await.expect("head");
        assert_eq!(head.size, bytes.len() as u64);
        assert_eq!(read_all(&gw, key, ByteRange::All).await, *bytes, "{key}");
        let n = bytes.len() as u64;
        for (range, expected) in [
            (
                ByteRange::Bounded {
                    start: 0,
                    end_inclusive: 0,
                },
                bytes.slice(0..1),
            ),
            (
                ByteRange::Bounded {
                    start: n - 1,
                    end_inclusive: n - 1,
                },
                bytes.slice(bytes.len() - 1..),
            ),
            (ByteRange::Suffix(100), bytes.slice(bytes.len() - 100..)),
            (ByteRange::From(n - 300), bytes.slice(bytes.len() - 300..)),
        ] {
            assert_eq!(read_all(&gw, key, range).await, expected, "{key} {range}");
        }
        let err = gw
            .get(BUCKET, key, ByteRange::From(n), None)
            .await
            .expect_err("range past the end");
        assert_eq!(err.kind(), StoreErrorKind::InvalidRange, "{err}");
    }

    // The listing merges upstream objects with office writes; delimiters group prefixes.
    let keys: Vec<String> = list_all(&gw, BUCKET, "")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        keys,
        ["seeded/a.txt", "uploads/big.bin", "uploads/small.bin"]
    );
    let listed = gw
        .client()
        .list_objects_v2()
        .bucket(BUCKET)
        .delimiter("/")
        .send()
        .await
        .expect("list with delimiter");
    let prefixes: Vec<&str> = listed
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["seeded/", "uploads/"]);
    let page = gw
        .client()
        .list_objects_v2()
        .bucket(BUCKET)
        .max_keys(2)
        .send()
        .await
        .expect("first page");
    assert_eq!(page.contents().len(), 2);
    let rest = gw
        .client()
        .list_objects_v2()
        .bucket(BUCKET)
        .max_keys(2)
        .continuation_token(page.next_continuation_token().expect("truncated"))
        .send()
        .await
        .expect("second page");
    assert_eq!(
        rest.contents()
            .iter()
            .filter_map(|o| o.key())
            .collect::<Vec<_>>(),
        ["uploads/small.bin"]
    );

    // Copy (from an office write and from an upstream object), then delete.
    gw.client()
        .copy_object()
        .bucket(BUCKET)
        .key("uploads/copy.bin")
        .copy_source(format!("{BUCKET}/uploads/small.bin"))
        .send()
        .await
        .expect("copy");
    gw.client()
        .copy_object()
        .bucket(BUCKET)
        .key("uploads/from-s3.txt")
        .copy_source(format!("{BUCKET}/seeded/a.txt"))
        .send()
        .await
        .expect("copy from upstream");
    assert_eq!(
        read_all(&gw, "uploads/copy.bin", ByteRange::All).await,
        small
    );
    gw.delete(BUCKET, "uploads/small.bin")
        .await
        .expect("delete");
    let err = gw
        .head(BUCKET, "uploads/small.bin")
        .await
        .expect_err("deleted");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);

    // In the background, S3 gets exactly the office's state.
    wait_written_back(&w.app).await;
    assert_eq!(
        read_all(w.upstream.store.as_ref(), "uploads/big.bin", ByteRange::All).await,
        big
    );
    assert_eq!(
        sha(&read_all(
            w.upstream.store.as_ref(),
            "uploads/copy.bin",
            ByteRange::All
        )
        .await),
        sha(&small)
    );
    assert_eq!(
        read_all(
            w.upstream.store.as_ref(),
            "uploads/from-s3.txt",
            ByteRange::All
        )
        .await,
        Bytes::from_static(b"from s3")
    );
    let err = w
        .upstream
        .store
        .head(BUCKET, "uploads/small.bin")
        .await
        .expect_err("the delete after the put reached S3 last");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    let rows = transfer::Entity::find()
        .all(w.app.db())
        .await
        .expect("journal");
    assert!(
        rows.iter()
            .all(|t| matches!(t.state, TransferState::Done | TransferState::Superseded)),
        "{rows:#?}"
    );
    // Still readable through the gateway once clean (served from the cache, S3 agrees).
    assert_eq!(read_all(&gw, "uploads/big.bin", ByteRange::All).await, big);
    w.app.shutdown().await;
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(bytes).into()
}

/// The S3 error code of an SDK error.
fn code<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match err {
        aws_sdk_s3::error::SdkError::ServiceError(service) => {
            service.err().code().unwrap_or("").to_owned()
        }
        other => format!("not a service error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_s3_errors_and_change_nothing() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let (_, viewer) = w.app.s3_token("reader", Role::Viewer).await;
    let gw = w.app.s3_client(keys.clone());
    let body = || aws_sdk_s3::primitives::ByteStream::from_static(b"payload");

    let wrong_secret = w.app.s3_client(StaticCredentials::new(
        keys.access_key_id.clone(),
        "not-the-secret",
    ));
    let err = wrong_secret
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("x")
        .body(body())
        .send()
        .await
        .expect_err("wrong signature");
    assert_eq!(code(&err), "SignatureDoesNotMatch");

    let unknown = w
        .app
        .s3_client(StaticCredentials::new("MPNOSUCHKEY000000000", "whatever"));
    let err = unknown
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("x")
        .body(body())
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(code(&err), "InvalidAccessKeyId");

    let err = w
        .app
        .s3_client(viewer)
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("x")
        .body(body())
        .send()
        .await
        .expect_err("viewer cannot write");
    assert_eq!(code(&err), "AccessDenied");

    let err = gw
        .client()
        .put_object()
        .bucket("not-served")
        .key("x")
        .body(body())
        .send()
        .await
        .expect_err("bucket not configured");
    assert_eq!(code(&err), "NoSuchBucket");

    let err = gw
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("drives/../../etc/passwd")
        .body(body())
        .send()
        .await
        .expect_err("escaping key");
    assert_eq!(code(&err), "InvalidArgument");

    let err = gw
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("x")
        .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==")
        .body(body())
        .send()
        .await
        .expect_err("wrong Content-MD5");
    assert_eq!(code(&err), "BadDigest");

    // An expired presigned URL.
    let presigned = gw
        .client()
        .get_object()
        .bucket(BUCKET)
        .key("x")
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(1))
                .expect("presign config"),
        )
        .await
        .expect("presign");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = reqwest::get(presigned.uri()).await.expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    let text = response.text().await.expect("body");
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");

    // A body shorter than its Content-Length: the connection ends early.
    let presigned = gw
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("short.bin")
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(60))
                .expect("presign config"),
        )
        .await
        .expect("presign");
    send_short_body(presigned.uri(), 1000, 10).await;

    // Nothing was stored or journaled, here or upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        list_all(&gw, BUCKET, "").await.expect("list").len(),
        0,
        "the office lists nothing"
    );
    assert_eq!(
        transfer::Entity::find()
            .count(w.app.db())
            .await
            .expect("journal"),
        0
    );
    assert!(list_all(w.upstream.store.as_ref(), BUCKET, "")
        .await
        .expect("upstream list")
        .is_empty());
    w.app.shutdown().await;
}

/// PUTs `sent` bytes to a presigned `url` announcing `announced`, then closes the connection.
async fn send_short_body(url: &str, announced: usize, sent: usize) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let url = reqwest::Url::parse(url).expect("url");
    let host = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("port")
    );
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut socket = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let head =
        format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {announced}\r\n\r\n");
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(&vec![b'x'; sent]).await.expect("body");
    socket.shutdown().await.expect("half close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_round_trip() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("cli", Role::Engineer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let small = pattern(1024, 7);
    let big_path = dir.path().join("big.bin");
    {
        // 200 MiB, written in pieces (never whole in memory).
        use std::io::Write as _;
        let mut file = std::fs::File::create(&big_path).expect("create");
        for i in 0..200u8 {
            file.write_all(&pattern(1 << 20, i)).expect("write");
        }
    }
    std::fs::write(dir.path().join("small.bin"), &small).expect("small");
    let endpoint = w.app.s3_endpoint();
    let aws = |args: &[&str]| run_aws(&endpoint, &keys, args);
    let big_str = big_path.to_str().expect("path");
    let small_file = dir.path().join("small.bin");
    let small_str = small_file.to_str().expect("path");
    // Blocking child processes, off the runtime's workers.
    let uploads = {
        let (endpoint, keys) = (endpoint.clone(), keys.clone());
        let (big, small) = (big_str.to_owned(), small_str.to_owned());
        tokio::task::spawn_blocking(move || {
            run_aws(
                &endpoint,
                &keys,
                &["s3", "cp", &big, &format!("s3://{BUCKET}/cli/big.bin")],
            );
            run_aws(
                &endpoint,
                &keys,
                &["s3", "cp", &small, &format!("s3://{BUCKET}/cli/small.bin")],
            );
        })
    };
    uploads.await.expect("uploads");
    let listing = aws(&["s3", "ls", &format!("s3://{BUCKET}/cli/")]);
    assert!(
        listing.contains("big.bin") && listing.contains("small.bin"),
        "{listing}"
    );
    let out = dir.path().join("big.out");
    let out_str = out.to_str().expect("path");
    aws(&["s3", "cp", &format!("s3://{BUCKET}/cli/big.bin"), out_str]);
    assert_eq!(file_sha(&out), file_sha(&big_path), "200 MiB round trip");
    let ranged = dir.path().join("range.out");
    aws(&[
        "s3api",
        "get-object",
        "--bucket",
        BUCKET,
        "--key",
        "cli/small.bin",
        "--range",
        "bytes=100-199",
        ranged.to_str().expect("path"),
    ]);
    assert_eq!(std::fs::read(&ranged).expect("range"), &small[100..200]);
    aws(&[
        "s3",
        "cp",
        &format!("s3://{BUCKET}/cli/small.bin"),
        &format!("s3://{BUCKET}/cli/copy.bin"),
    ]);
    aws(&["s3", "rm", &format!("s3://{BUCKET}/cli/small.bin")]);
    let listing = aws(&["s3", "ls", &format!("s3://{BUCKET}/cli/")]);
    assert!(
        listing.contains("copy.bin") && !listing.contains("small.bin"),
        "{listing}"
    );
    wait_written_back(&w.app).await;
    let upstream_big = w
        .upstream
        .store
        .head(BUCKET, "cli/big.bin")
        .await
        .expect("in S3");
    assert_eq!(upstream_big.size, 200 << 20);
    assert_eq!(
        read_all(w.upstream.store.as_ref(), "cli/copy.bin", ByteRange::All).await,
        small
    );
    w.app.shutdown().await;
}

/// Runs the AWS CLI against the gateway with `keys`; returns its stdout, fails on an error.
fn run_aws(endpoint: &str, keys: &StaticCredentials, args: &[&str]) -> String {
    let output = std::process::Command::new("aws")
        .args(["--endpoint-url", endpoint, "--region", "us-east-1"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("the AWS CLI (`aws`) runs: install it with `pip install awscli`");
    assert!(
        output.status.success(),
        "aws {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn file_sha(path: &std::path::Path) -> String {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).expect("open");
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Faults between the office and S3 while write-back runs (500, 503 SlowDown, connection
/// resets, more of them than one request's retries absorb): every object reaches S3 intact,
/// and no incomplete multipart upload is left behind (a failed one is aborted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_survive_s3_faults_and_leave_no_multipart_debris() {
    use milepost_testkit::Fault;

    let app = TestApp::builder()
        .with_loopback_s3(BUCKET)
        .with_fault_proxy()
        .start()
        .await;
    let upstream = &app.upstream().store;
    let proxy = app.fault_proxy();
    let (_, keys) = app.s3_token("ingest", Role::Engineer).await;
    let gw = app.s3_client(keys);
    // The office asks S3 once whether the bucket exists before it acknowledges a first write
    // to it; that request must not take the faults meant for the uploader.
    gw.put(BUCKET, "faults/warm-up.bin", pattern(10, 1))
        .await
        .expect("acknowledged");
    wait_written_back(&app).await;

    // Faults for the uploader's first requests: more resets in a row than one request's
    // retries take, so that whole transfers fail and run again.
    proxy.inject(Fault::Status(500), 2);
    proxy.inject(Fault::SlowDown, 2);
    proxy.inject(Fault::Reset, 12);
    proxy.inject(Fault::Status(503), 3);
    let mut objects = Vec::new();
    for i in 0..10u8 {
        objects.push((
            format!("faults/small-{i}.bin"),
            pattern(10_000 + usize::from(i), i),
        ));
    }
    // Above the uploader's 16 MiB part size: a multipart upload to S3.
    objects.push((
        "faults/large.bin".to_owned(),
        pattern(40 * 1024 * 1024 + 5, 99),
    ));
    for (key, data) in &objects {
        gw.put(BUCKET, key, data.clone())
            .await
            .expect("acknowledged");
    }
    wait_written_back(&app).await;
    for (key, data) in &objects {
        let got = read_all(upstream.as_ref(), key, ByteRange::All).await;
        assert_eq!(sha(&got), sha(data), "{key} reached S3 intact");
    }
    assert!(
        proxy.seen().iter().filter(|r| r.fault.is_some()).count() >= 19,
        "the faults were met"
    );
    let debris: Vec<String> = std::fs::read_dir(app.upstream().s3.root())
        .expect("s3 root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".upload"))
        .collect();
    assert!(
        debris.is_empty(),
        "incomplete multipart uploads left: {debris:?}"
    );
    let rows = transfer::Entity::find()
        .all(app.db())
        .await
        .expect("journal");
    assert!(
        rows.iter().all(|t| t.state == TransferState::Done),
        "{rows:#?}"
    );
    assert!(
        rows.iter().any(|t| t.attempts > 1),
        "some transfer needed another attempt: {rows:#?}"
    );
    app.shutdown().await;
}

/// Virtual-host-style requests (`<bucket>.<server.s3_domain>`) reach the same bucket as
/// path-style ones; anonymous reads work only where the office allows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_style_buckets_and_anonymous_reads() {
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), BUCKET)
        .allow_anonymous_read()
        .configure(|c| c.server.s3_domain = "s3.office.test".to_owned())
        .start()
        .await;
    let (_, keys) = app.s3_token("ingest", Role::Engineer).await;
    let gw = app.s3_client(keys);
    gw.put(BUCKET, "vhost/a.txt", Bytes::from_static(b"virtual host"))
        .await
        .expect("put");
    let client = reqwest::Client::new();
    let addr = app.s3_endpoint();
    let port = addr.rsplit(':').next().expect("port");
    let response = client
        .get(format!("{addr}/vhost/a.txt"))
        .header("host", format!("{BUCKET}.s3.office.test:{port}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body"), "virtual host");
    // Path-style on the same server.
    let response = client
        .get(format!("{addr}/{BUCKET}/vhost/a.txt"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // Anonymous writes are refused even so.
    let response = client
        .put(format!("{addr}/{BUCKET}/vhost/b.txt"))
        .body("nope")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    let text = response.text().await.expect("body");
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    app.shutdown().await;
}

/// rclone (which creates the bucket before it copies, and lists with ListObjects v1) against
/// the gateway: a small copy, a multipart one, list, get, server-side copy, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_round_trip() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("rclone", Role::Engineer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let small = pattern(1024, 3);
    let large = pattern(12 * 1024 * 1024 + 3, 4);
    std::fs::write(dir.path().join("small.bin"), &small).expect("small");
    std::fs::write(dir.path().join("large.bin"), &large).expect("large");
    let endpoint = w.app.s3_endpoint();
    let run = {
        let dir = dir.path().to_owned();
        move |args: Vec<String>| {
            let output = std::process::Command::new("rclone")
                .current_dir(&dir)
                .args([
                    "--config",
                    "/dev/null",
                    "--s3-provider",
                    "Other",
                    "--s3-endpoint",
                    &endpoint,
                    "--s3-access-key-id",
                    &keys.access_key_id,
                    "--s3-secret-access-key",
                    &keys.secret_access_key,
                    "--s3-region",
                    "us-east-1",
                    "--s3-force-path-style",
                    "--s3-upload-cutoff",
                    "5M",
                    "--s3-chunk-size",
                    "5M",
                ])
                .args(&args)
                // rclone fails here when AWS_CA_BUNDLE points at a bundle it cannot use.
                .env_remove("AWS_CA_BUNDLE")
                .output()
                .expect("rclone runs: install it with `apt-get install rclone`");
            assert!(
                output.status.success(),
                "rclone {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let listing = tokio::task::spawn_blocking(move || {
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        run(s(&["copyto", "small.bin", ":s3:fleet/rc/small.bin"]));
        run(s(&["copyto", "large.bin", ":s3:fleet/rc/large.bin"]));
        run(s(&["copyto", ":s3:fleet/rc/large.bin", "large.back"]));
        run(s(&[
            "copyto",
            ":s3:fleet/rc/small.bin",
            ":s3:fleet/rc/copy.bin",
        ]));
        run(s(&["deletefile", ":s3:fleet/rc/small.bin"]));
        run(s(&["ls", ":s3:fleet/rc/"]))
    })
    .await
    .expect("rclone");
    assert_eq!(
        std::fs::read(dir.path().join("large.back")).expect("read back"),
        large,
        "12 MiB (multipart) round trip"
    );
    assert!(
        listing.contains("large.bin")
            && listing.contains("copy.bin")
            && !listing.contains("small.bin"),
        "{listing}"
    );
    wait_written_back(&w.app).await;
    assert_eq!(
        read_all(w.upstream.store.as_ref(), "rc/copy.bin", ByteRange::All).await,
        small
    );
    assert_eq!(
        read_all(w.upstream.store.as_ref(), "rc/large.bin", ByteRange::All).await,
        large
    );
    w.app.shutdown().await;
}

/// Conditional writes as S3 does them: `If-None-Match: *` refuses to overwrite an existing
/// key (its own write not yet uploaded, or S3's copy) and `If-Match` refuses a stale ETag, on
/// PutObject, CompleteMultipartUpload and CopyObject; a refused write changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_refuse_to_overwrite_and_change_nothing() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let put = |key: &'static str, data: &'static [u8]| {
        client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(data))
    };

    // Written in the office, not yet uploaded (the uploader may or may not have run).
    let first = put("cond/a", b"first").if_none_match("*").send().await;
    let first_etag = first.expect("create if absent").e_tag.expect("etag");
    let err = put("cond/a", b"second")
        .if_none_match("*")
        .send()
        .await
        .expect_err("the key exists");
    assert_eq!(code(&err), "PreconditionFailed");
    let err = put("cond/a", b"second")
        .if_match("\"0123456789abcdef0123456789abcdef\"")
        .send()
        .await
        .expect_err("stale etag");
    assert_eq!(code(&err), "PreconditionFailed");
    assert_eq!(read_all(&gw, "cond/a", ByteRange::All).await, &b"first"[..]);

    // In S3 only (written straight upstream): the condition is checked against S3's copy.
    w.upstream
        .store
        .put(BUCKET, "cond/upstream", Bytes::from_static(b"from s3"))
        .await
        .expect("seed");
    let err = put("cond/upstream", b"over")
        .if_none_match("*")
        .send()
        .await
        .expect_err("exists in S3");
    assert_eq!(code(&err), "PreconditionFailed");
    // The right ETag lets the write through.
    put("cond/a", b"third")
        .if_match(&first_etag)
        .send()
        .await
        .expect("if-match with the current etag");
    assert_eq!(read_all(&gw, "cond/a", ByteRange::All).await, &b"third"[..]);

    // CopyObject onto an existing key with If-None-Match: *.
    let err = client
        .copy_object()
        .bucket(BUCKET)
        .key("cond/a")
        .copy_source(format!("{BUCKET}/cond/upstream"))
        .customize()
        .mutate_request(|req| {
            req.headers_mut().insert("if-none-match", "*");
        })
        .send()
        .await
        .expect_err("copy over an existing key");
    assert_eq!(code(&err), "PreconditionFailed");
    assert_eq!(read_all(&gw, "cond/a", ByteRange::All).await, &b"third"[..]);

    // CompleteMultipartUpload with If-None-Match: * onto an existing key.
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("cond/a")
        .send()
        .await
        .expect("create upload");
    let upload_id = upload.upload_id.expect("upload id");
    let part = client
        .upload_part()
        .bucket(BUCKET)
        .key("cond/a")
        .upload_id(&upload_id)
        .part_number(1)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"multi"))
        .send()
        .await
        .expect("part");
    let completed = aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(1)
                .e_tag(part.e_tag.expect("part etag"))
                .build(),
        )
        .build();
    let err = client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("cond/a")
        .upload_id(&upload_id)
        .multipart_upload(completed)
        .if_none_match("*")
        .send()
        .await
        .expect_err("complete over an existing key");
    assert_eq!(code(&err), "PreconditionFailed");
    assert_eq!(read_all(&gw, "cond/a", ByteRange::All).await, &b"third"[..]);

    wait_written_back(&w.app).await;
    assert_eq!(
        read_all(w.upstream.store.as_ref(), "cond/a", ByteRange::All).await,
        &b"third"[..]
    );
    assert_eq!(
        read_all(w.upstream.store.as_ref(), "cond/upstream", ByteRange::All).await,
        &b"from s3"[..]
    );
    w.app.shutdown().await;
}

/// Keys the office could acknowledge but never materialize or upload are refused before
/// anything is acknowledged: a whitespace-only key was acknowledged and then failed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_office_cannot_hold_are_refused_before_acknowledgement() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    // As the path of the request: the SDK itself refuses a blank key, other clients do not.
    for path in ["%20", "a/%20/b", "a//b", "dir/", "a/%5Cb"] {
        let err = gw
            .client()
            .put_object()
            .bucket(BUCKET)
            .key("placeholder")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .customize()
            .mutate_request(move |req| {
                let uri = req.uri().replace("/placeholder", &format!("/{path}"));
                req.set_uri(uri).expect("uri");
            })
            .send()
            .await
            .expect_err(path);
        assert_eq!(code(&err), "InvalidArgument", "{path:?}");
    }
    let journaled = transfer::Entity::find()
        .count(w.app.db())
        .await
        .expect("journal");
    assert_eq!(journaled, 0, "nothing refused may be journaled");
    w.app.shutdown().await;
}

/// A listing with a delimiter costs one upstream LIST per page, not one per 1,000 keys under
/// the common prefixes; the office's own writes and deletes are laid over it (a new common
/// prefix appears, one whose every key the office deleted disappears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delimiter_listings_are_passed_upstream_with_office_changes_laid_over() {
    use futures::StreamExt as _;
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let mut seeded: Vec<String> = (0..1100).map(|i| format!("tree/big/{i:05}.bin")).collect();
    seeded.extend(
        [
            "tree/gone/a.bin",
            "tree/gone/b.bin",
            "tree/top-1.bin",
            "tree/top-2.bin",
        ]
        .map(str::to_owned),
    );
    let store = &w.upstream.store;
    let puts: Vec<_> = futures::stream::iter(seeded.iter())
        .map(|key| async move { store.put(BUCKET, key, Bytes::from_static(b"x")).await })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(puts.iter().all(Result::is_ok), "seeded");

    let list = || {
        gw.client()
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("tree/")
            .delimiter("/")
            .send()
    };
    let before = w.app.state().egress.snapshot().other_requests;
    let page = list().await.expect("list");
    let requests = w.app.state().egress.snapshot().other_requests - before;
    assert_eq!(requests, 1, "one upstream LIST for one page of names");
    let prefixes: Vec<&str> = page
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    let objects: Vec<&str> = page.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(prefixes, ["tree/big/", "tree/gone/"]);
    assert_eq!(objects, ["tree/top-1.bin", "tree/top-2.bin"]);

    // Office changes not yet in S3 (the uploads may or may not have run: the answer is the
    // same either way).
    gw.put(BUCKET, "tree/new/c.bin", Bytes::from_static(b"new"))
        .await
        .expect("put");
    for key in ["tree/gone/a.bin", "tree/gone/b.bin", "tree/top-1.bin"] {
        gw.delete(BUCKET, key).await.expect("delete");
    }
    let page = list().await.expect("list");
    let prefixes: Vec<&str> = page
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    let objects: Vec<&str> = page.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(prefixes, ["tree/big/", "tree/new/"]);
    assert_eq!(objects, ["tree/top-2.bin"]);

    // Paged by max-keys across prefixes and objects.
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = gw
            .client()
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("tree/")
            .delimiter("/")
            .max_keys(1)
            .set_continuation_token(token)
            .send()
            .await
            .expect("page");
        names.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        names.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["tree/big/", "tree/new/", "tree/top-2.bin"]);
    w.app.shutdown().await;
}

/// The HTTP status and a header of an SDK error's raw response (a 304 or a HEAD error has no
/// body, so no S3 error code).
fn raw_status<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> u16
where
    R: RawResponse,
{
    err.raw_response().map_or(0, RawResponse::status)
}

fn raw_header<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>, name: &str) -> Option<String>
where
    R: RawResponse,
{
    err.raw_response().and_then(|raw| raw.header(name))
}

trait RawResponse {
    fn status(&self) -> u16;
    fn header(&self, name: &str) -> Option<String>;
}

impl RawResponse for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers().get(name).map(str::to_owned)
    }
}

/// Read preconditions as S3 (RFC 7232) takes them on GET and HEAD: `If-Unmodified-Since`
/// false is 412, `If-Modified-Since` false is 304, a true `If-Match` overrides a false
/// `If-Unmodified-Since`, a false `If-None-Match` (304) overrides a true `If-Modified-Since`,
/// and a 304 carries the object's ETag and Last-Modified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_preconditions_on_dates_and_etags() {
    use aws_sdk_s3::primitives::DateTime;
    let w = world().await;
    let (_, keys) = w.app.s3_token("reader", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let put = client
        .put_object()
        .bucket(BUCKET)
        .key("cond/read")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"dated"))
        .send()
        .await
        .expect("put");
    let etag = put.e_tag.expect("etag");
    // The Last-Modified of an office write is when the office took it, S3's once it is
    // uploaded: the conditions are checked against the settled one.
    wait_written_back(&w.app).await;
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key("cond/read")
        .send()
        .await
        .expect("head");
    let modified = head.last_modified.expect("last-modified");
    let before = DateTime::from_secs(modified.secs() - 3600);
    let get = || client.get_object().bucket(BUCKET).key("cond/read");
    let ok = |result: Result<aws_sdk_s3::operation::get_object::GetObjectOutput, _>, what| {
        let output = result.unwrap_or_else(|err| panic!("{what}: {err:?}"));
        assert_eq!(output.e_tag.as_deref(), Some(etag.as_str()), "{what}");
    };

    // If-Modified-Since: not modified since its own Last-Modified (304 with the ETag and
    // Last-Modified), modified since an hour before.
    let err = get()
        .if_modified_since(modified)
        .send()
        .await
        .expect_err("not modified since");
    assert_eq!(raw_status(&err), 304, "{err:?}");
    assert_eq!(raw_header(&err, "etag").as_deref(), Some(etag.as_str()));
    assert!(raw_header(&err, "last-modified").is_some(), "{err:?}");
    ok(
        get().if_modified_since(before).send().await,
        "modified since",
    );

    // If-None-Match alone: the 304 carries the ETag too.
    let err = get()
        .if_none_match(&etag)
        .send()
        .await
        .expect_err("if-none-match");
    assert_eq!(raw_status(&err), 304, "{err:?}");
    assert_eq!(raw_header(&err, "etag").as_deref(), Some(etag.as_str()));

    // If-Unmodified-Since: 412 when modified after it.
    let err = get()
        .if_unmodified_since(before)
        .send()
        .await
        .expect_err("modified after");
    assert_eq!(code(&err), "PreconditionFailed");
    ok(
        get().if_unmodified_since(modified).send().await,
        "unmodified since",
    );

    // A true If-Match overrides a false If-Unmodified-Since.
    ok(
        get()
            .if_match(&etag)
            .if_unmodified_since(before)
            .send()
            .await,
        "if-match over if-unmodified-since",
    );
    // A false If-None-Match (304) overrides a true If-Modified-Since.
    let err = get()
        .if_none_match(&etag)
        .if_modified_since(before)
        .send()
        .await
        .expect_err("if-none-match over if-modified-since");
    assert_eq!(raw_status(&err), 304, "{err:?}");

    // HEAD answers the same.
    let head = || client.head_object().bucket(BUCKET).key("cond/read");
    let err = head()
        .if_modified_since(modified)
        .send()
        .await
        .expect_err("head not modified");
    assert_eq!(raw_status(&err), 304, "{err:?}");
    assert_eq!(raw_header(&err, "etag").as_deref(), Some(etag.as_str()));
    let err = head()
        .if_unmodified_since(before)
        .send()
        .await
        .expect_err("head modified after");
    assert_eq!(raw_status(&err), 412, "{err:?}");
    head()
        .if_match(&etag)
        .if_unmodified_since(before)
        .send()
        .await
        .expect("head: if-match over if-unmodified-since");
    w.app.shutdown().await;
}

/// CopyObject's source conditions: `x-amz-copy-source-if-none-match`, `-if-modified-since`
/// and `-if-unmodified-since` refuse with 412 as S3 does (a true if-match overrides a false
/// if-unmodified-since), and a refused copy writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_source_conditions() {
    use aws_sdk_s3::primitives::DateTime;
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let etag = client
        .put_object()
        .bucket(BUCKET)
        .key("copy/source")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"source"))
        .send()
        .await
        .expect("put")
        .e_tag
        .expect("etag");
    // Checked against the Last-Modified S3 gives the object once it is uploaded.
    wait_written_back(&w.app).await;
    let modified = client
        .head_object()
        .bucket(BUCKET)
        .key("copy/source")
        .send()
        .await
        .expect("head")
        .last_modified
        .expect("last-modified");
    let before = DateTime::from_secs(modified.secs() - 3600);
    let copy = || {
        client
            .copy_object()
            .bucket(BUCKET)
            .key("copy/target")
            .copy_source(format!("{BUCKET}/copy/source"))
    };
    for (what, request) in [
        ("if-none-match", copy().copy_source_if_none_match(&etag)),
        (
            "if-modified-since",
            copy().copy_source_if_modified_since(modified),
        ),
        (
            "if-unmodified-since",
            copy().copy_source_if_unmodified_since(before),
        ),
        (
            "if-none-match over if-modified-since",
            copy()
                .copy_source_if_none_match(&etag)
                .copy_source_if_modified_since(before),
        ),
    ] {
        let err = request.send().await.expect_err(what);
        assert_eq!(code(&err), "PreconditionFailed", "{what}");
    }
    let missing = gw.head(BUCKET, "copy/target").await.expect_err("no copy");
    assert_eq!(missing.kind(), StoreErrorKind::NotFound);

    for (what, request) in [
        (
            "if-none-match other",
            copy().copy_source_if_none_match("\"0123456789abcdef0123456789abcdef\""),
        ),
        (
            "if-modified-since before",
            copy().copy_source_if_modified_since(before),
        ),
        (
            "if-unmodified-since now",
            copy().copy_source_if_unmodified_since(modified),
        ),
        (
            "if-match over if-unmodified-since",
            copy()
                .copy_source_if_match(&etag)
                .copy_source_if_unmodified_since(before),
        ),
    ] {
        request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{what}: {err:?}"));
    }
    assert_eq!(
        read_all(&gw, "copy/target", ByteRange::All).await,
        &b"source"[..]
    );
    w.app.shutdown().await;
}

/// A retried CompleteMultipartUpload of an upload that completed answers 200 with the same
/// ETag while the object is still that upload's; once the key is overwritten it is
/// NoSuchUpload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_complete_multipart_upload_is_idempotent() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let key = "multi/retried";
    let upload_id = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("create")
        .upload_id
        .expect("upload id");
    let part = client
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .part_number(1)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"one part"))
        .send()
        .await
        .expect("part");
    let completed = aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(1)
                .e_tag(part.e_tag.expect("part etag"))
                .build(),
        )
        .build();
    let complete = || {
        client
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(completed.clone())
    };
    let first = complete().send().await.expect("complete").e_tag;
    assert!(first.is_some());
    let again = complete().send().await.expect("retried complete").e_tag;
    assert_eq!(again, first, "a retry answers the same ETag");
    assert_eq!(read_all(&gw, key, ByteRange::All).await, &b"one part"[..]);

    // Another upload id of the same key was never completed.
    let err = client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id("not-an-upload")
        .multipart_upload(completed.clone())
        .send()
        .await
        .expect_err("unknown upload");
    assert_eq!(code(&err), "NoSuchUpload");
    // The same upload id under another key was never completed either.
    let err = client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("multi/other")
        .upload_id(&upload_id)
        .multipart_upload(completed.clone())
        .send()
        .await
        .expect_err("another key");
    assert_eq!(code(&err), "NoSuchUpload");

    // Overwritten: the upload's object is gone, so the retry is too late.
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"newer"))
        .send()
        .await
        .expect("overwrite");
    let err = complete().send().await.expect_err("overwritten");
    assert_eq!(code(&err), "NoSuchUpload");
    assert_eq!(read_all(&gw, key, ByteRange::All).await, &b"newer"[..]);
    w.app.shutdown().await;
}

/// DeleteObjects takes at most 1,000 keys: more is MalformedXML, as S3 answers, and nothing
/// is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_objects_refuses_more_than_1000_keys() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    client
        .put_object()
        .bucket(BUCKET)
        .key("many/0")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"kept"))
        .send()
        .await
        .expect("put");
    let objects = (0..1001)
        .map(|i| {
            aws_sdk_s3::types::ObjectIdentifier::builder()
                .key(format!("many/{i}"))
                .build()
                .expect("identifier")
        })
        .collect::<Vec<_>>();
    let result = client
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(objects))
                .build()
                .expect("delete"),
        )
        .send()
        .await;
    let Err(err) = result else {
        panic!("1001 keys were accepted");
    };
    assert_eq!(code(&err), "MalformedXML");
    assert_eq!(read_all(&gw, "many/0", ByteRange::All).await, &b"kept"[..]);
    let journaled = transfer::Entity::find()
        .all(w.app.db())
        .await
        .expect("journal");
    assert!(
        journaled.iter().all(|row| row.key == "many/0"),
        "nothing but the put is journaled"
    );
    w.app.shutdown().await;
}

/// A presigned GET URL of `expires` seconds, signed with `keys`.
fn presigned_get(url: &str, keys: &StaticCredentials, expires: Duration) -> String {
    use aws_sigv4::http_request::{
        sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    };
    use aws_sigv4::sign::v4;

    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_owned();
    let identity = aws_credential_types::Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        None,
        None,
        "test",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let signable = SignableRequest::new(
        "GET",
        url,
        [("host", host.as_str())].into_iter(),
        SignableBody::UnsignedPayload,
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    let mut signed = reqwest::Url::parse(url).expect("url");
    for (name, value) in instructions.params() {
        signed.query_pairs_mut().append_pair(name, value);
    }
    signed.to_string()
}

/// Presigned URLs live 7 days at most: a longer `X-Amz-Expires` is refused with
/// AuthorizationQueryParametersError (400), as S3 does, even with a valid signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_expire_within_seven_days() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys.clone());
    gw.client()
        .put_object()
        .bucket(BUCKET)
        .key("presigned/a")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"shared"))
        .send()
        .await
        .expect("put");
    let url = format!("{}/{BUCKET}/presigned/a", w.app.s3_endpoint());
    let http = reqwest::Client::new();
    let week = Duration::from_secs(604_800);
    let response = http
        .get(presigned_get(&url, &keys, week))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body"), &b"shared"[..]);

    let response = http
        .get(presigned_get(&url, &keys, week + Duration::from_secs(1)))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let text = response.text().await.expect("body");
    assert!(
        text.contains("<Code>AuthorizationQueryParametersError</Code>"),
        "{text}"
    );

    // The SDK's own presigned URLs (within its 7-day limit) work.
    let presigned = gw
        .client()
        .get_object()
        .bucket(BUCKET)
        .key("presigned/a")
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(3600))
                .expect("config"),
        )
        .await
        .expect("presigned");
    let response = http.get(presigned.uri()).send().await.expect("get");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    w.app.shutdown().await;
}

/// GET and HEAD with `partNumber`: an object stored in one part is part 1, whole, with no
/// parts count; any other part number is 416 InvalidPartNumber. A multipart object's part
/// numbers past its part count are 416 too, and `partNumber` with `Range` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_number_reads() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    client
        .put_object()
        .bucket(BUCKET)
        .key("parts/single")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"in one part",
        ))
        .send()
        .await
        .expect("put");
    let get = || client.get_object().bucket(BUCKET).key("parts/single");
    let whole = get().part_number(1).send().await.expect("part 1");
    assert!(
        whole.parts_count.is_none() || whole.parts_count == Some(1),
        "{:?}",
        whole.parts_count
    );
    assert_eq!(whole.content_length, Some(11));
    let body = whole.body.collect().await.expect("body").into_bytes();
    assert_eq!(body, &b"in one part"[..]);
    let err = get().part_number(2).send().await.expect_err("part 2");
    assert_eq!(code(&err), "InvalidPartNumber");
    assert_eq!(raw_status(&err), 416);
    let err = client
        .head_object()
        .bucket(BUCKET)
        .key("parts/single")
        .part_number(2)
        .send()
        .await
        .expect_err("head part 2");
    assert_eq!(raw_status(&err), 416);
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key("parts/single")
        .part_number(1)
        .send()
        .await
        .expect("head part 1");
    assert_eq!(head.content_length, Some(11));
    let err = get()
        .part_number(1)
        .range("bytes=0-1")
        .send()
        .await
        .expect_err("part and range");
    assert_eq!(code(&err), "InvalidRequest");

    // Two parts (5 MiB and a short last one): part 3 does not exist.
    let big = pattern(5 * 1024 * 1024 + 10, 3);
    let options = UploadOptions {
        part_size: 5 * 1024 * 1024,
    };
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.clone())]);
    let meta = put_stream(&gw, BUCKET, "parts/multi", chunks, &options)
        .await
        .expect("multipart upload");
    assert!(meta.etag.ends_with("-2"), "{}", meta.etag);
    let err = client
        .get_object()
        .bucket(BUCKET)
        .key("parts/multi")
        .part_number(3)
        .send()
        .await
        .expect_err("part 3 of 2");
    assert_eq!(code(&err), "InvalidPartNumber");
    w.app.shutdown().await;
}

/// `encoding-type=url` listings: keys, prefixes, delimiters and markers come back
/// percent-encoded, so a key with `+` and a space survives the AWS CLI (which always asks for
/// url encoding and decodes `+` as a space) and the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_encoded_listings() {
    use aws_sdk_s3::types::EncodingType;
    let w = world().await;
    let (_, keys) = w.app.s3_token("cli", Role::Engineer).await;
    let gw = w.app.s3_client(keys.clone());
    let client = gw.client();
    let key = "enc/a+b c/d";
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"odd key"))
        .send()
        .await
        .expect("put");

    let v2 = client
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("enc/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .expect("list v2");
    let listed: Vec<_> = v2.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, ["enc/a%2Bb%20c/d"]);
    assert_eq!(v2.encoding_type(), Some(&EncodingType::Url));
    let v2 = client
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("enc/a+b ")
        .delimiter("/")
        .start_after("enc/a+")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .expect("list v2 with delimiter");
    let prefixes: Vec<_> = v2
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["enc/a%2Bb%20c/"]);
    assert_eq!(v2.prefix(), Some("enc/a%2Bb%20"));
    assert_eq!(v2.start_after(), Some("enc/a%2B"));
    assert_eq!(v2.delimiter(), Some("/"));
    let v1 = client
        .list_objects()
        .bucket(BUCKET)
        .prefix("enc/")
        .marker("enc/a+")
        .max_keys(1)
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .expect("list v1");
    let listed: Vec<_> = v1.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, ["enc/a%2Bb%20c/d"]);
    assert_eq!(v1.marker(), Some("enc/a%2B"));
    // Without encoding-type the key is as stored.
    let plain = client
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("enc/")
        .send()
        .await
        .expect("list");
    let listed: Vec<_> = plain.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, [key]);

    let endpoint = w.app.s3_endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().to_str().expect("path").to_owned();
    let (listing, ()) = tokio::task::spawn_blocking(move || {
        let listing = run_aws(
            &endpoint,
            &keys,
            &["s3", "ls", "--recursive", &format!("s3://{BUCKET}/enc/")],
        );
        run_aws(
            &endpoint,
            &keys,
            &[
                "s3",
                "cp",
                "--recursive",
                &format!("s3://{BUCKET}/enc/"),
                &target,
            ],
        );
        (listing, ())
    })
    .await
    .expect("aws cli");
    assert!(listing.contains(key), "{listing}");
    assert_eq!(
        std::fs::read(dir.path().join("a+b c").join("d")).expect("copied"),
        b"odd key"
    );
    w.app.shutdown().await;
}
