//! Additional checksums (`x-amz-checksum-crc32`, `-crc32c`, `-sha1`, `-sha256`) on the office
//! S3 gateway, sent as headers or as aws-chunked trailers: a body that does not match is
//! refused with `BadDigest` before anything is acknowledged, and leaves no object, no journal
//! row and no staging file; a body that matches is stored and the checksum is returned.
//!
//! Expected values are the CRC catalogue's check values and digests of `123456789` computed
//! outside this code base (Python's zlib and hashlib).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use milepost_schema::entity::transfer;
use milepost_schema::enums::Role;
use milepost_store::{ObjectStore, StaticCredentials, StoreErrorKind};
use milepost_testkit::{LoopbackUpstream, TestApp};
use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};

const BUCKET: &str = "fleet";

/// The check input of the CRC catalogue.
const CHECK: &[u8] = b"123456789";
const CHECK_CRC32: &str = "y/Q5Jg=="; // 0xcbf43926
const CHECK_CRC32C: &str = "4waSgw=="; // 0xe3069283
const CHECK_SHA1: &str = "98O8HYCOBHMq32eZZczDTKeuNEE=";
const CHECK_SHA256: &str = "FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiU=";
/// SHA-256 of "something else": well formed, wrong for [`CHECK`].
const OTHER_SHA256: &str = "9B8/piX/Eg3cp+9Fa/ZjcezqI8Ep9OTDI2cQHttRbPg=";

/// `"milepost "` 20,000 times (180,000 bytes: several aws-chunked chunks) and its CRC32.
fn long_body() -> Vec<u8> {
    b"milepost ".repeat(20_000)
}
const LONG_CRC32: &str = "RF7kSg==";

struct World {
    _upstream: LoopbackUpstream,
    app: TestApp,
    keys: StaticCredentials,
}

async fn world() -> World {
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), BUCKET)
        .start()
        .await;
    let (_, keys) = app.s3_token("ingest", Role::Engineer).await;
    World {
        _upstream: upstream,
        app,
        keys,
    }
}

impl World {
    /// The raw SDK client of the gateway, as the office configures it (checksums only when an
    /// operation requires them, so a test chooses each one).
    fn client(&self) -> aws_sdk_s3::Client {
        self.app.s3_client(self.keys.clone()).client().clone()
    }

    /// The raw SDK client with the SDK's default checksum behaviour: a CRC32 of every upload,
    /// as an aws-chunked trailer when the body is streamed. `seen` records how each request
    /// sent its checksum.
    fn default_client(&self, seen: &SeenChecksums) -> aws_sdk_s3::Client {
        let conf = self
            .client()
            .config()
            .to_builder()
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenSupported,
            )
            .interceptor(seen.clone())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Asserts that the office has nothing for `key`: HEAD is NotFound, no journal row, no
    /// staging file.
    async fn assert_nothing_kept(&self, key: &str) {
        let err = self
            .app
            .state()
            .store
            .head(BUCKET, key)
            .await
            .expect_err("the refused object must not exist");
        assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
        let rows = transfer::Entity::find()
            .filter(transfer::Column::Key.eq(key))
            .count(self.app.db())
            .await
            .expect("journal");
        assert_eq!(rows, 0, "nothing journaled for {key}");
        let staging = self.app.state().write_back.staging_path(BUCKET, key);
        let dir = staging.parent().expect("staging dir");
        let left: Vec<_> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "staging files left behind: {left:?}");
    }
}

/// How the SDK sent each request's checksum.
#[derive(Clone, Debug, Default)]
struct SeenChecksums(Arc<Mutex<Vec<Sent>>>);

#[derive(Debug, PartialEq, Eq)]
struct Sent {
    /// `x-amz-trailer`.
    trailer: Option<String>,
    /// Whether the request had an `x-amz-checksum-crc32` header.
    crc32_header: bool,
}

impl SeenChecksums {
    fn last(&self) -> Option<Sent> {
        self.0.lock().expect("lock").pop()
    }
}

/// A CRC32 in an aws-chunked trailer.
fn crc32_trailer() -> Option<Sent> {
    Some(Sent {
        trailer: Some("x-amz-checksum-crc32".to_owned()),
        crc32_header: false,
    })
}

impl aws_sdk_s3::config::Intercept for SeenChecksums {
    fn name(&self) -> &'static str {
        "SeenChecksums"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let headers = context.request().headers();
        let sent = Sent {
            trailer: headers.get("x-amz-trailer").map(str::to_owned),
            crc32_header: headers.get("x-amz-checksum-crc32").is_some(),
        };
        self.0.lock().expect("lock").push(sent);
        Ok(())
    }
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

/// (a) A wrong `x-amz-checksum-sha256` is refused with BadDigest and nothing is kept; a
/// malformed one is an InvalidRequest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checksum_is_refused_and_nothing_is_kept() {
    let w = world().await;
    let client = w.client();

    let err = client
        .put_object()
        .bucket(BUCKET)
        .key("checked/wrong.bin")
        .checksum_sha256(OTHER_SHA256)
        .body(ByteStream::from_static(CHECK))
        .send()
        .await
        .expect_err("a wrong SHA-256 must be refused");
    assert_eq!(code(&err), "BadDigest");
    w.assert_nothing_kept("checked/wrong.bin").await;

    for malformed in ["not base64!", "y/Q5Jg==" /* 4 bytes, not 32 */] {
        let err = client
            .put_object()
            .bucket(BUCKET)
            .key("checked/malformed.bin")
            .checksum_sha256(malformed)
            .body(ByteStream::from_static(CHECK))
            .send()
            .await
            .expect_err("a malformed SHA-256 must be refused");
        assert_eq!(code(&err), "InvalidRequest", "{malformed}");
    }
    w.assert_nothing_kept("checked/malformed.bin").await;
    w.app.shutdown().await;
}

/// (b) A right checksum of each algorithm, sent as a header, is accepted, returned in the
/// response and the object is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_checksums_in_headers_are_accepted() {
    let w = world().await;
    let client = w.client();
    for (algorithm, value) in [
        ("sha256", CHECK_SHA256),
        ("crc32", CHECK_CRC32),
        ("crc32c", CHECK_CRC32C),
        ("sha1", CHECK_SHA1),
    ] {
        let key = format!("checked/{algorithm}.bin");
        let put = client
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(ByteStream::from_static(CHECK));
        let put = match algorithm {
            "sha256" => put.checksum_sha256(value),
            "crc32" => put.checksum_crc32(value),
            "crc32c" => put.checksum_crc32_c(value),
            _ => put.checksum_sha1(value),
        };
        let out = put
            .send()
            .await
            .unwrap_or_else(|err| panic!("right {algorithm} refused: {err:?}"));
        let returned = match algorithm {
            "sha256" => out.checksum_sha256(),
            "crc32" => out.checksum_crc32(),
            "crc32c" => out.checksum_crc32_c(),
            _ => out.checksum_sha1(),
        };
        assert_eq!(
            returned,
            Some(value),
            "{algorithm} in the PutObject response"
        );

        let got = client
            .get_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .expect("get")
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes();
        assert_eq!(got.as_ref(), CHECK, "{key}");
    }
    w.app.shutdown().await;
}

/// (c) The SDK's default trailing checksum (CRC32 in an aws-chunked trailer of a streamed
/// body) round-trips, for PutObject and UploadPart; the office read and verified the trailer
/// (it returns the value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_trailing_checksums_round_trip() {
    let w = world().await;
    let seen = SeenChecksums::default();
    let client = w.default_client(&seen);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("long.bin");
    std::fs::write(&path, long_body()).expect("write");

    let out = client
        .put_object()
        .bucket(BUCKET)
        .key("trailer/long.bin")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(ByteStream::from_path(&path).await.expect("file body"))
        .send()
        .await
        .expect("a streamed PUT with a CRC32 trailer");
    assert_eq!(
        out.checksum_crc32(),
        Some(LONG_CRC32),
        "the office read and verified the trailer"
    );
    assert_eq!(
        seen.last(),
        crc32_trailer(),
        "the SDK sent the CRC32 as a trailer"
    );
    let got = client
        .get_object()
        .bucket(BUCKET)
        .key("trailer/long.bin")
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes();
    assert_eq!(got.as_ref(), long_body().as_slice());

    // Multipart: one part, streamed with the SDK's default trailer.
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("trailer/parts.bin")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .expect("create");
    let upload_id = upload.upload_id().expect("upload id");
    let part = client
        .upload_part()
        .bucket(BUCKET)
        .key("trailer/parts.bin")
        .upload_id(upload_id)
        .part_number(1)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(ByteStream::from_path(&path).await.expect("file body"))
        .send()
        .await
        .expect("a streamed part with a CRC32 trailer");
    assert_eq!(part.checksum_crc32(), Some(LONG_CRC32));
    assert_eq!(
        seen.last(),
        crc32_trailer(),
        "the SDK sent the part's CRC32 as a trailer"
    );
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("trailer/parts.bin")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().expect("etag"))
                        .checksum_crc32(LONG_CRC32)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("complete");
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key("trailer/parts.bin")
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_length(), Some(long_body().len() as i64));
    w.app.shutdown().await;
}

/// (d) UploadPart with a wrong checksum is refused and the part is not kept; the right one
/// is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_with_a_wrong_checksum_is_refused() {
    let w = world().await;
    let client = w.client();
    let key = "checked/parts.bin";
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("create");
    let upload_id = upload.upload_id().expect("upload id");
    let err = client
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .part_number(1)
        .checksum_crc32_c(CHECK_CRC32) // the CRC32, not the CRC32C
        .body(ByteStream::from_static(CHECK))
        .send()
        .await
        .expect_err("a wrong CRC32C must be refused");
    assert_eq!(code(&err), "BadDigest");
    let parts = client
        .list_parts()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .expect("list parts");
    assert!(parts.parts().is_empty(), "{:?}", parts.parts());

    let part = client
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .part_number(1)
        .checksum_crc32_c(CHECK_CRC32C)
        .body(ByteStream::from_static(CHECK))
        .send()
        .await
        .expect("the right CRC32C");
    assert_eq!(part.checksum_crc32_c(), Some(CHECK_CRC32C));
    client
        .abort_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .expect("abort");
    w.assert_nothing_kept(key).await;
    w.app.shutdown().await;
}

/// A PutObject in the aws-chunked encoding the SDKs use (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`,
/// SigV4 over the headers) whose trailer carries `trailer`: `Some(value)` sends
/// `x-amz-checksum-crc32: value`, `None` announces the trailer and does not send it.
/// Returns the status and the response body.
async fn put_with_crc32_trailer(
    w: &World,
    key: &str,
    body: &[u8],
    trailer: Option<&str>,
) -> (reqwest::StatusCode, String) {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    use aws_sigv4::sign::v4;

    let url = format!("{}/{BUCKET}/{key}", w.app.s3_endpoint());
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_owned();
    let mut encoded = format!("{:x}\r\n", body.len()).into_bytes();
    encoded.extend_from_slice(body);
    encoded.extend_from_slice(b"\r\n0\r\n");
    if let Some(value) = trailer {
        encoded.extend_from_slice(format!("x-amz-checksum-crc32:{value}\r\n").as_bytes());
    }
    encoded.extend_from_slice(b"\r\n");
    let decoded_length = body.len().to_string();
    let headers = [
        ("host", host.as_str()),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", decoded_length.as_str()),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
    ];
    let identity = aws_credential_types::Credentials::new(
        &w.keys.access_key_id,
        &w.keys.secret_access_key,
        None,
        None,
        "test",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let signable = SignableRequest::new(
        "PUT",
        &url,
        headers.iter().copied(),
        SignableBody::StreamingUnsignedPayloadTrailer,
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    let mut request = reqwest::Client::new()
        .put(&url)
        .body(encoded)
        .timeout(Duration::from_secs(30));
    for (name, value) in headers.iter().skip(1) {
        request = request.header(*name, *value);
    }
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

/// A wrong CRC32 in an aws-chunked trailer is refused with BadDigest and nothing is kept; an
/// announced trailer that never comes is an InvalidRequest; the right one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_trailing_checksum_is_refused() {
    let w = world().await;

    let (status, text) =
        put_with_crc32_trailer(&w, "raw/wrong.bin", CHECK, Some(CHECK_CRC32C)).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("<Code>BadDigest</Code>"), "{text}");
    w.assert_nothing_kept("raw/wrong.bin").await;

    let (status, text) = put_with_crc32_trailer(&w, "raw/missing.bin", CHECK, None).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("<Code>InvalidRequest</Code>"), "{text}");
    w.assert_nothing_kept("raw/missing.bin").await;

    let (status, text) =
        put_with_crc32_trailer(&w, "raw/right.bin", CHECK, Some(CHECK_CRC32)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{text}");
    let got = w
        .client()
        .get_object()
        .bucket(BUCKET)
        .key("raw/right.bin")
        .send()
        .await
        .expect("get");
    assert_eq!(got.content_length(), Some(CHECK.len() as i64));
    w.app.shutdown().await;
}
