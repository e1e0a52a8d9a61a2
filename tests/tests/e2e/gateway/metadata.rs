//! Object metadata through the gateway: Content-Type, the other representation headers and
//! `x-amz-meta-*` are kept with an office write, answered on HEAD and GET before and after the
//! write reaches S3, carried into S3 by write-back (single PUT and multipart), copied by
//! CopyObject (or replaced with `REPLACE`), and refused over S3's 2 KiB of user metadata.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use milepost_schema::enums::Role;

use super::{code, pattern, wait_written_back, world, BUCKET};

/// HEADs `key` with `client` and checks every header written by [`put_with_metadata`].
async fn assert_described(client: &aws_sdk_s3::Client, key: &str, what: &str) {
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|err| panic!("{what}: head {key}: {err:?}"));
    assert_eq!(
        head.content_type(),
        Some("application/x-mcap"),
        "{what}: {key}"
    );
    assert_eq!(head.cache_control(), Some("max-age=60"), "{what}: {key}");
    assert_eq!(
        head.content_disposition(),
        Some("attachment; filename=\"drive.mcap\""),
        "{what}: {key}"
    );
    assert_eq!(head.content_language(), Some("en"), "{what}: {key}");
    let user = head.metadata().cloned().unwrap_or_default();
    assert_eq!(
        user.get("vehicle").map(String::as_str),
        Some("av-17"),
        "{what}: {key}"
    );
    assert_eq!(
        user.get("route").map(String::as_str),
        Some("loop-3"),
        "{what}: {key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_kept_answered_and_written_back() {
    let w = world().await;
    let (_, keys) = w.app.s3_token("ingest", Role::Engineer).await;
    let gw = w.app.s3_client(keys);
    let client = gw.client();
    let upstream_store =
        milepost_store::S3Store::new(&w.upstream.settings()).expect("upstream client");
    let upstream = upstream_store.client();

    client
        .put_object()
        .bucket(BUCKET)
        .key("meta/single.mcap")
        .body(ByteStream::from(pattern(4096, 1)))
        .content_type("application/x-mcap")
        .cache_control("max-age=60")
        .content_disposition("attachment; filename=\"drive.mcap\"")
        .content_language("en")
        .metadata("vehicle", "av-17")
        .metadata("Route", "loop-3")
        .send()
        .await
        .expect("put");
    // A multipart upload whose metadata comes with CreateMultipartUpload.
    let created = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("meta/multi.mcap")
        .content_type("application/x-mcap")
        .cache_control("max-age=60")
        .content_disposition("attachment; filename=\"drive.mcap\"")
        .content_language("en")
        .metadata("vehicle", "av-17")
        .metadata("route", "loop-3")
        .send()
        .await
        .expect("create");
    let upload_id = created.upload_id().expect("upload id");
    let mut parts = Vec::new();
    for (number, body) in [(1, pattern(5 << 20, 2)), (2, pattern(1000, 3))] {
        let part = client
            .upload_part()
            .bucket(BUCKET)
            .key("meta/multi.mcap")
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .expect("part");
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().expect("etag"))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("meta/multi.mcap")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    // Copies keep the source's metadata unless told to replace it.
    client
        .copy_object()
        .bucket(BUCKET)
        .key("meta/copied.mcap")
        .copy_source(format!("{BUCKET}/meta/single.mcap"))
        .send()
        .await
        .expect("copy");
    client
        .copy_object()
        .bucket(BUCKET)
        .key("meta/replaced.mcap")
        .copy_source(format!("{BUCKET}/meta/single.mcap"))
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/plain")
        .metadata("note", "replaced")
        .send()
        .await
        .expect("copy with REPLACE");

    let keys = ["meta/single.mcap", "meta/multi.mcap", "meta/copied.mcap"];
    for key in keys {
        assert_described(client, key, "in the office").await;
    }
    let get = client
        .get_object()
        .bucket(BUCKET)
        .key("meta/single.mcap")
        .send()
        .await
        .expect("get");
    assert_eq!(get.content_type(), Some("application/x-mcap"));
    assert_eq!(
        get.metadata()
            .and_then(|m| m.get("vehicle"))
            .map(String::as_str),
        Some("av-17")
    );
    let replaced = client
        .head_object()
        .bucket(BUCKET)
        .key("meta/replaced.mcap")
        .send()
        .await
        .expect("head");
    assert_eq!(replaced.content_type(), Some("text/plain"));
    let user = replaced.metadata().cloned().unwrap_or_default();
    assert_eq!(user.get("note").map(String::as_str), Some("replaced"));
    assert!(!user.contains_key("vehicle"), "{user:?}");

    // Written back: S3 holds the metadata, and the office answers it from S3 once its own
    // version is gone.
    wait_written_back(&w.app).await;
    for key in keys {
        assert_described(upstream, key, "in S3").await;
        assert_described(client, key, "after write-back").await;
    }

    // Over S3's 2 KiB of user metadata: refused, nothing written.
    let err = client
        .put_object()
        .bucket(BUCKET)
        .key("meta/too-much.bin")
        .body(ByteStream::from(pattern(10, 4)))
        .metadata("big", "x".repeat(2100))
        .send()
        .await
        .expect_err("too much metadata");
    assert_eq!(code(&err), "MetadataTooLarge");
    let missing = client
        .head_object()
        .bucket(BUCKET)
        .key("meta/too-much.bin")
        .send()
        .await;
    assert!(missing.is_err(), "nothing was written");
    w.app.shutdown().await;
}
