//! What the gateway does not let a client keep forever: unfinished multipart uploads expire
//! (`server.s3_multipart_expiry`), the bytes of their parts count against the office cache's
//! capacity, and a connection that does not send its request headers in time, or sits idle
//! after its response, is closed (`server.s3_header_read_timeout`) while a request in flight
//! is never cut.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use milepost_api::config::{ByteSize, Config, DurationSetting, Interval, ListenAddr};
use milepost_api::server::{self, AppState, RunningServer};
use milepost_schema::enums::Role;
use milepost_store::{S3Store, StaticCredentials, UpstreamSettings};
use milepost_testkit::{LoopbackUpstream, TestApp, TestDatabase};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BUCKET: &str = "fleet";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// An office that can be stopped and started again on the same data directory, database
/// and upstream.
struct Office {
    upstream: LoopbackUpstream,
    database_url: String,
    // Dropped after every server: the database and directory outlive their connections.
    _database: TestDatabase,
    dir: tempfile::TempDir,
}

impl Office {
    async fn new() -> Office {
        let upstream = LoopbackUpstream::start(BUCKET).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = TestDatabase::create(dir.path())
            .await
            .expect("test database (is PostgreSQL running?)");
        let database_url = database.url().to_owned();
        Office {
            upstream,
            database_url,
            _database: database,
            dir,
        }
    }

    /// Opens the office's state (database, cache, write-back) with `change` applied to the
    /// test configuration; nothing is served yet.
    async fn open(&self, change: impl FnOnce(&mut Config)) -> Arc<AppState> {
        let mut config = Config {
            data_dir: self.dir.path().to_owned(),
            ..Config::default()
        };
        config.database.url = self.database_url.clone();
        config.server.listen = ListenAddr(([127, 0, 0, 1], 0).into());
        config.server.s3_listen = ListenAddr(([127, 0, 0, 1], 0).into());
        config.catalog.sync_interval = Interval(None);
        config.catalog.bucket = BUCKET.to_owned();
        config.upstream.endpoint = self.upstream.settings().endpoint.unwrap_or_default();
        config.upstream.force_path_style = true;
        change(&mut config);
        AppState::open_with_upstream(config, self.upstream.settings())
            .await
            .expect("application state opens")
    }

    async fn serve(state: Arc<AppState>) -> RunningServer {
        server::start_with_state(state)
            .await
            .expect("server starts")
    }

    /// The directory of a multipart upload on the office's disk.
    fn upload_dir(&self, upload_id: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join("cache")
            .join("multipart")
            .join(upload_id)
    }
}

async fn s3_keys(state: &AppState) -> StaticCredentials {
    let (_, keys) = milepost_api::auth::create_s3_token(&state.db, "ingest", Role::Engineer)
        .await
        .expect("s3 token created");
    StaticCredentials::new(keys.access_key_id, keys.secret_access_key)
}

/// A plain SDK client of `server`'s gateway.
fn client(server: &RunningServer, keys: &StaticCredentials) -> aws_sdk_s3::Client {
    S3Store::new(&UpstreamSettings {
        endpoint: Some(format!("http://{}", server.s3_addr)),
        region: "us-east-1".to_owned(),
        force_path_style: true,
        credentials: Some(keys.clone()),
        ..UpstreamSettings::default()
    })
    .expect("gateway client")
    .client()
    .clone()
}

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

fn status<E>(err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> u16 {
    err.raw_response().map_or(0, |r| r.status().as_u16())
}

fn body(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn create_upload(s3: &aws_sdk_s3::Client, key: &str) -> String {
    s3.create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("create upload")
        .upload_id
        .expect("upload id")
}

type PartError = aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::upload_part::UploadPartError>;

/// Uploads part `number` of `len` bytes; returns the completed part.
async fn upload_part(
    s3: &aws_sdk_s3::Client,
    key: &str,
    upload_id: &str,
    number: i32,
    len: usize,
) -> Result<CompletedPart, PartError> {
    let out = s3
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .part_number(number)
        .body(ByteStream::from(body(len, number as u8)))
        .send()
        .await?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .e_tag(out.e_tag.expect("part etag"))
        .build())
}

/// The ids of the bucket's uploads in progress, as ListMultipartUploads gives them.
async fn uploads(s3: &aws_sdk_s3::Client) -> Vec<String> {
    s3.list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .expect("list uploads")
        .uploads
        .unwrap_or_default()
        .into_iter()
        .filter_map(|u| u.upload_id)
        .collect()
}

async fn put(
    s3: &aws_sdk_s3::Client,
    key: &str,
    len: usize,
) -> Result<(), aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::put_object::PutObjectError>> {
    s3.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body(len, 7)))
        .send()
        .await
        .map(|_| ())
}

async fn abort(s3: &aws_sdk_s3::Client, key: &str, upload_id: &str) {
    s3.abort_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .expect("abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_multipart_uploads_expire_at_start_up_and_while_running() {
    let office = Office::new().await;
    let server = Office::serve(office.open(|_| {}).await).await;
    let keys = s3_keys(&server.state).await;
    let s3 = client(&server, &keys);
    let old = create_upload(&s3, "expire/old.bin").await;
    upload_part(&s3, "expire/old.bin", &old, 1, MIB)
        .await
        .expect("part");
    assert_eq!(uploads(&s3).await, vec![old.clone()]);
    server.shutdown().await.expect("clean shutdown");

    // Started again with a 1 s expiry once the upload is older than that: it is removed as
    // the office opens, before the gateway serves a request.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let one_second = |c: &mut Config| {
        c.server.s3_multipart_expiry = DurationSetting(Duration::from_secs(1));
    };
    let state = office.open(one_second).await;
    let left = state
        .write_back
        .multipart()
        .list_uploads(BUCKET, "")
        .await
        .expect("list uploads");
    assert!(
        left.is_empty(),
        "an expired upload survived the start: {left:?}"
    );
    assert!(
        !office.upload_dir(&old).exists(),
        "the expired upload's parts are still on disk"
    );
    assert_eq!(state.cache.stats().used_bytes, 0);
    let server = Office::serve(state).await;
    let s3 = client(&server, &keys);
    assert_eq!(uploads(&s3).await, Vec::<String>::new());
    let err = upload_part(&s3, "expire/old.bin", &old, 2, KIB)
        .await
        .expect_err("the upload expired");
    assert_eq!(code(&err), "NoSuchUpload");

    // While running: an upload is removed once it is older than the expiry, within the
    // check period (a quarter of the expiry, at least 1 s).
    let young = create_upload(&s3, "expire/young.bin").await;
    upload_part(&s3, "expire/young.bin", &young, 1, MIB)
        .await
        .expect("part");
    assert_eq!(uploads(&s3).await, vec![young.clone()]);
    // The upload leaves the listing first and its parts' directory a moment later: wait for
    // both, and for the bytes to be released, within the same bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !uploads(&s3).await.is_empty()
        || office.upload_dir(&young).exists()
        || server.state.cache.stats().used_bytes != 0
    {
        assert!(
            Instant::now() < deadline,
            "an upload older than the expiry was still there after 5 s (listed: {:?}, parts on disk: {}, bytes held: {})",
            uploads(&s3).await,
            office.upload_dir(&young).exists(),
            server.state.cache.stats().used_bytes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_parts_count_against_the_office_capacity() {
    let office = Office::new().await;
    let eight_mib = |c: &mut Config| c.cache.capacity = ByteSize(8 * MIB as u64);
    let server = Office::serve(office.open(eight_mib).await).await;
    let keys = s3_keys(&server.state).await;
    let s3 = client(&server, &keys);
    let used = |server: &RunningServer| server.state.cache.stats().used_bytes;

    // Two parts of 3 MiB fit in 8 MiB; a third is refused as for a PUT that does not fit.
    let a = create_upload(&s3, "cap/a.bin").await;
    upload_part(&s3, "cap/a.bin", &a, 1, 3 * MIB)
        .await
        .expect("part 1");
    upload_part(&s3, "cap/a.bin", &a, 2, 3 * MIB)
        .await
        .expect("part 2");
    let err = upload_part(&s3, "cap/a.bin", &a, 3, 3 * MIB)
        .await
        .expect_err("a part past the capacity");
    assert_eq!(code(&err), "InsufficientStorage", "{err:?}");
    assert_eq!(status(&err), 507);
    let parts: Vec<i32> = s3
        .list_parts()
        .bucket(BUCKET)
        .key("cap/a.bin")
        .upload_id(&a)
        .send()
        .await
        .expect("list parts")
        .parts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.part_number)
        .collect();
    assert_eq!(parts, vec![1, 2], "the refused part is not kept");
    assert_eq!(used(&server), 6 * MIB as u64);
    // Sending a part again replaces it: it needs no room beside its old copy.
    upload_part(&s3, "cap/a.bin", &a, 2, 3 * MIB)
        .await
        .expect("part 2 again");
    assert_eq!(used(&server), 6 * MIB as u64);
    // The parts' room is not free for other writes either.
    let err = put(&s3, "cap/other.bin", 3 * MIB)
        .await
        .expect_err("a put beside the parts");
    assert_eq!(code(&err), "InsufficientStorage", "{err:?}");
    // Aborting releases it.
    abort(&s3, "cap/a.bin", &a).await;
    assert_eq!(used(&server), 0);

    // Completing hands the parts' room over to the object: 5 + 2 MiB complete in 8 MiB.
    let b = create_upload(&s3, "cap/b.bin").await;
    let parts = vec![
        upload_part(&s3, "cap/b.bin", &b, 1, 5 * MIB)
            .await
            .expect("part 1"),
        upload_part(&s3, "cap/b.bin", &b, 2, 2 * MIB)
            .await
            .expect("part 2"),
    ];
    s3.complete_multipart_upload()
        .bucket(BUCKET)
        .key("cap/b.bin")
        .upload_id(&b)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    assert_eq!(used(&server), 7 * MIB as u64);

    // A completion that fails leaves the upload, and its parts count again.
    let c = create_upload(&s3, "cap/b.bin").await;
    let part = upload_part(&s3, "cap/b.bin", &c, 1, 512 * KIB)
        .await
        .expect("part");
    let err = s3
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("cap/b.bin")
        .upload_id(&c)
        .multipart_upload(CompletedMultipartUpload::builder().parts(part).build())
        .if_none_match("*")
        .send()
        .await
        .expect_err("the key exists");
    assert_eq!(code(&err), "PreconditionFailed");
    assert_eq!(uploads(&s3).await, vec![c.clone()]);
    assert_eq!(used(&server), 7 * MIB as u64 + 512 * KIB as u64);

    // After a restart the parts on disk count again. With cap/b.bin in S3 (evictable), an
    // object of 7.75 MiB fits in 8 MiB, but not beside the 512 KiB part.
    assert!(
        server
            .state
            .write_back
            .wait_idle(Duration::from_secs(60))
            .await,
        "write-back did not drain"
    );
    server.shutdown().await.expect("clean shutdown");
    let server = Office::serve(office.open(eight_mib).await).await;
    let s3 = client(&server, &keys);
    assert_eq!(uploads(&s3).await, vec![c.clone()]);
    let err = put(&s3, "cap/big.bin", 7 * MIB + 768 * KIB)
        .await
        .expect_err("no room beside the held part");
    assert_eq!(code(&err), "InsufficientStorage", "{err:?}");
    abort(&s3, "cap/b.bin", &c).await;
    put(&s3, "cap/big.bin", 7 * MIB + 768 * KIB)
        .await
        .expect("fits once the upload is aborted");
    server.shutdown().await.expect("clean shutdown");
}

/// Sends `request` on a new connection to `addr` and reads until the server closes it;
/// returns what was received and how long after the request the connection closed. Fails
/// if it is still open after 5 s.
async fn until_closed(addr: std::net::SocketAddr, request: &[u8]) -> (Vec<u8>, Duration) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let sent = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            (sent + Duration::from_secs(5)).into(),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!(
                "the connection is still open 5 s after {:?}; received {:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, sent.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_are_closed_and_requests_in_flight_are_not() {
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), BUCKET)
        .configure(|c| {
            c.server.s3_header_read_timeout = DurationSetting(Duration::from_millis(500));
        })
        .start()
        .await;
    let addr: std::net::SocketAddr = app
        .s3_endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("gateway address");

    // A partial request header, then nothing: closed after the timeout.
    let (_, after) = until_closed(addr, b"GET /fleet/x HTTP/1.1\r\nHost: a\r\n").await;
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}"
    );
    // Nothing at all.
    let (received, after) = until_closed(addr, b"").await;
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}"
    );
    assert!(received.is_empty());
    // A whole request is answered; the idle keep-alive connection is closed after the same
    // timeout.
    let (received, after) = until_closed(addr, b"GET /fleet/x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        received.starts_with(b"HTTP/1.1 403"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}"
    );

    // A response read slowly, for several times the timeout, is not cut.
    let (_, keys) = app.s3_token("reader", Role::Engineer).await;
    let s3 = app.s3_client(keys);
    let s3 = s3.client();
    let object = body(24 * MIB, 3);
    s3.put_object()
        .bucket(BUCKET)
        .key("slow/read.bin")
        .body(ByteStream::from(object.clone()))
        .send()
        .await
        .expect("put");
    let started = Instant::now();
    let mut response = s3
        .get_object()
        .bucket(BUCKET)
        .key("slow/read.bin")
        .send()
        .await
        .expect("get")
        .body;
    let mut read = Vec::with_capacity(object.len());
    let mut since_pause = 0;
    while let Some(chunk) = response.next().await {
        let chunk = chunk.expect("the response goes on");
        since_pause += chunk.len();
        read.extend_from_slice(&chunk);
        if since_pause >= 2 * MIB {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(started.elapsed() > Duration::from_millis(1500));
    assert!(read == object, "the slow read got {} bytes", read.len());
    app.shutdown().await;
}
