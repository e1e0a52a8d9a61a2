//! Smaller points of S3's behaviour that the conformance suite (CONFORMANCE.md) found the
//! gateway missing: conditional writes on a missing key and with an ETag in `If-None-Match`,
//! `max-keys=0`, an empty delimiter, owners in listings, GetObjectAttributes, and a request
//! id in every error document matching its header.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectAttributes;
use milepost_schema::enums::Role;

use super::{code, pattern, raw_status, world, BUCKET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_listings_attributes_and_request_ids() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let put = |key: &'static str| {
        client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(pattern(3, 7)))
    };

    // If-Match on a key that does not exist: 404 NoSuchKey, as S3 answers; nothing written.
    let err = put("sem/missing")
        .if_match("\"0123\"")
        .send()
        .await
        .expect_err("if-match on a missing key");
    assert_eq!(code(&err), "NoSuchKey");
    assert_eq!(raw_status(&err), 404);
    // If-None-Match with an ETag: refused when the key has it, written when it has another.
    let first = put("sem/tagged").send().await.expect("put");
    let etag = first.e_tag().expect("etag").to_owned();
    let err = put("sem/tagged")
        .if_none_match(&etag)
        .send()
        .await
        .expect_err("same etag");
    assert_eq!(code(&err), "PreconditionFailed");
    put("sem/tagged")
        .if_none_match("\"ffffffffffffffffffffffffffffffff\"")
        .send()
        .await
        .expect("another etag");

    // max-keys=0 lists nothing and is not truncated; an empty delimiter is no delimiter and
    // is not echoed; a v2 listing with fetch-owner names owners.
    let listed = client
        .list_objects_v2()
        .bucket(BUCKET)
        .max_keys(0)
        .send()
        .await
        .expect("list");
    assert_eq!(listed.is_truncated(), Some(false));
    assert_eq!(listed.key_count(), Some(0));
    let listed = client
        .list_objects_v2()
        .bucket(BUCKET)
        .delimiter("")
        .fetch_owner(true)
        .send()
        .await
        .expect("list");
    assert_eq!(listed.delimiter(), None);
    assert_eq!(listed.contents().len(), 1);
    assert!(listed.contents()[0].owner().is_some(), "{listed:?}");
    let listed = client
        .list_objects()
        .bucket(BUCKET)
        .max_keys(0)
        .send()
        .await
        .expect("list v1");
    assert_eq!(listed.is_truncated(), Some(false));

    // GetObjectAttributes: what was asked for.
    let attributes = client
        .get_object_attributes()
        .bucket(BUCKET)
        .key("sem/tagged")
        .object_attributes(ObjectAttributes::Etag)
        .object_attributes(ObjectAttributes::ObjectSize)
        .object_attributes(ObjectAttributes::StorageClass)
        .send()
        .await
        .expect("attributes");
    assert_eq!(attributes.object_size(), Some(3));
    assert_eq!(
        attributes.e_tag().map(|t| t.trim_matches('"')),
        Some(etag.trim_matches('"'))
    );
    assert_eq!(
        attributes.storage_class().map(|c| c.as_str()),
        Some("STANDARD")
    );

    // An error document carries the request id its header gives.
    let response = reqwest::Client::new()
        .get(format!("{}/{BUCKET}/sem/nothing-here", w.app.s3_endpoint()))
        .send()
        .await
        .expect("request");
    let header = response
        .headers()
        .get("x-amz-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-amz-request-id")
        .to_owned();
    let body = response.text().await.expect("body");
    assert!(
        body.contains(&format!("<RequestId>{header}</RequestId>")),
        "{header}: {body}"
    );
    w.app.shutdown().await;
}

/// A bucket served by the office but missing in S3: a write there would be acknowledged and
/// then fail for good on upload. It is refused with NoSuchBucket instead, and nothing is
/// journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_served_bucket_s3_does_not_have_are_refused() {
    let upstream = milepost_testkit::LoopbackUpstream::start(BUCKET).await;
    let app = milepost_testkit::TestApp::builder()
        .upstream(upstream.settings(), BUCKET)
        .configure(|config| config.server.s3_buckets.push("ghost".to_owned()))
        .start()
        .await;
    let (_, keys) = app.s3_token("ingest", Role::Engineer).await;
    let gw = app.s3_client(keys);
    let err = gw
        .client()
        .put_object()
        .bucket("ghost")
        .key("a.bin")
        .body(ByteStream::from(pattern(10, 1)))
        .send()
        .await
        .expect_err("no such bucket in S3");
    assert_eq!(code(&err), "NoSuchBucket");
    assert_eq!(raw_status(&err), 404);
    assert_eq!(
        app.state().write_back.pending_keys(),
        0,
        "nothing journaled"
    );
    // The bucket S3 has still takes writes.
    gw.client()
        .put_object()
        .bucket(BUCKET)
        .key("a.bin")
        .body(ByteStream::from(pattern(10, 1)))
        .send()
        .await
        .expect("put");
    app.shutdown().await;
}
