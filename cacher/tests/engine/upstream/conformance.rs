//! The `ObjectStore` contract, without faults.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use milepost_store::{
    build_store, list_all, put_stream, upload_file, ByteRange, EgressMeter, ObjectStore,
    StaticCredentials, StoreErrorKind, UploadOptions, UpstreamSettings,
};

use super::{md5_hex, random_bytes, read_all, TestS3, BUCKET, MIB};

#[tokio::test]
async fn put_head_get_round_trip() {
    let s3 = TestS3::start().await;
    let data = random_bytes(100_000);

    let put = s3
        .store
        .put(BUCKET, "drives/2024-05-01/av1/d1/drive.json", data.clone())
        .await
        .expect("put");
    assert_eq!(put.size, 100_000);
    assert_eq!(put.etag, md5_hex(&data), "single-part etag is the md5");

    let head = s3
        .store
        .head(BUCKET, "drives/2024-05-01/av1/d1/drive.json")
        .await
        .expect("head");
    assert_eq!(
        (head.size, head.etag.as_str()),
        (100_000, put.etag.as_str())
    );
    assert!(head.last_modified.is_some());

    let response = s3
        .store
        .get(
            BUCKET,
            "drives/2024-05-01/av1/d1/drive.json",
            ByteRange::All,
            None,
        )
        .await
        .expect("get");
    assert_eq!(response.meta, head);
    assert_eq!(response.range, None);
    assert_eq!(response.collect(1 << 20).await.expect("body"), data);

    // Overwrite: a new etag; an empty object.
    let other = random_bytes(10);
    let put2 = s3
        .store
        .put(BUCKET, "drives/2024-05-01/av1/d1/drive.json", other.clone())
        .await
        .expect("overwrite");
    assert_ne!(put2.etag, put.etag);
    let (body, _, size) = read_all(
        &*s3.store,
        "drives/2024-05-01/av1/d1/drive.json",
        ByteRange::All,
    )
    .await;
    assert_eq!((body, size), (other, 10));

    s3.store
        .put(BUCKET, "empty", Bytes::new())
        .await
        .expect("put empty");
    let (body, range, size) = read_all(&*s3.store, "empty", ByteRange::All).await;
    assert_eq!((body.len(), range, size), (0, None, 0));
}

#[tokio::test]
async fn listing_is_lexicographic_paginated_and_prefixed() {
    let s3 = TestS3::start().await;
    let keys: Vec<String> = (0..2500).map(|i| format!("many/{i:05}.bin")).collect();
    futures::stream::iter(keys.iter())
        .map(|key| {
            let store = Arc::clone(&s3.store);
            async move { store.put(BUCKET, key, Bytes::from_static(b"x")).await }
        })
        .buffer_unordered(32)
        .for_each(|result| async {
            result.expect("seed");
        })
        .await;
    for key in ["other/b", "other/a", "manyx"] {
        s3.store
            .put(BUCKET, key, Bytes::from_static(b"yy"))
            .await
            .expect("seed other");
    }

    let first = s3
        .store
        .list_page(BUCKET, "many/", None)
        .await
        .expect("first page");
    assert_eq!(first.objects.len(), 1000);
    assert!(first.next.is_some());
    assert_eq!(first.objects[0].key, "many/00000.bin");
    assert_eq!(first.objects[0].size, 1);

    let all = list_all(&*s3.store, BUCKET, "many/")
        .await
        .expect("list all");
    let listed: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
    let expected: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(listed, expected, "every key once, in order");
    assert!(all.iter().all(|o| o.bucket == BUCKET && o.size == 1));

    let other = list_all(&*s3.store, BUCKET, "other/").await.expect("other");
    let other: Vec<&str> = other.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(other, ["other/a", "other/b"]);

    let everything = list_all(&*s3.store, BUCKET, "").await.expect("everything");
    assert_eq!(everything.len(), 2503);
    assert!(everything.windows(2).all(|w| w[0].key < w[1].key));

    assert!(list_all(&*s3.store, BUCKET, "nothing/")
        .await
        .expect("empty prefix")
        .is_empty());
    let err = s3
        .store
        .list_page("no-such-bucket", "", None)
        .await
        .expect_err("missing bucket");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
}

#[tokio::test]
async fn missing_objects_are_not_found() {
    let s3 = TestS3::start().await;
    let err = s3.store.head(BUCKET, "missing").await.expect_err("head");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    assert!(err.to_string().contains("missing"), "{err}");
    let err = s3
        .store
        .get(BUCKET, "missing", ByteRange::All, None)
        .await
        .expect_err("get");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    let err = s3
        .store
        .head("no-such-bucket", "k")
        .await
        .expect_err("head bucket");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);

    s3.store
        .put(BUCKET, "doomed", Bytes::from_static(b"x"))
        .await
        .expect("put");
    s3.store.delete(BUCKET, "doomed").await.expect("delete");
    let err = s3.store.head(BUCKET, "doomed").await.expect_err("deleted");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    s3.store
        .delete(BUCKET, "doomed")
        .await
        .expect("deleting a missing key succeeds");
    s3.store
        .ensure_bucket(BUCKET)
        .await
        .expect("ensure_bucket on an existing bucket");
}

#[tokio::test]
async fn ranges_follow_http_semantics() {
    let s3 = TestS3::start().await;
    let data = random_bytes(1000);
    s3.store
        .put(BUCKET, "ranged", data.clone())
        .await
        .expect("put");
    let bounded = |start, end_inclusive| ByteRange::Bounded {
        start,
        end_inclusive,
    };

    let cases = [
        (bounded(0, 0), 0, 0),         // first byte
        (bounded(999, 999), 999, 999), // last byte
        (ByteRange::Suffix(10), 990, 999),
        (ByteRange::From(500), 500, 999),
        (bounded(100, 199), 100, 199),
        (bounded(900, 5000), 900, 999), // end clamped
    ];
    for (range, start, end) in cases {
        let (body, returned, size) = read_all(&*s3.store, "ranged", range).await;
        assert_eq!(returned, Some((start, end)), "{range}");
        assert_eq!(size, 1000, "{range}: meta.size is the object's size");
        assert_eq!(body, data.slice(start as usize..=end as usize), "{range}");
    }

    for range in [
        ByteRange::From(1000),
        bounded(2000, 3000),
        bounded(5, 4),
        ByteRange::Suffix(0),
    ] {
        let err = s3
            .store
            .get(BUCKET, "ranged", range, None)
            .await
            .expect_err("unsatisfiable");
        assert_eq!(err.kind(), StoreErrorKind::InvalidRange, "{range}: {err}");
    }

    s3.store
        .put(BUCKET, "empty", Bytes::new())
        .await
        .expect("put empty");
    let err = s3
        .store
        .get(BUCKET, "empty", ByteRange::From(0), None)
        .await
        .expect_err("range of an empty object");
    assert_eq!(err.kind(), StoreErrorKind::InvalidRange);
}

#[tokio::test]
async fn collect_refuses_bodies_over_the_limit() {
    let s3 = TestS3::start().await;
    s3.store
        .put(BUCKET, "footer", random_bytes(1000))
        .await
        .expect("put");
    let get = || s3.store.get(BUCKET, "footer", ByteRange::All, None);
    let err = get()
        .await
        .expect("get")
        .collect(999)
        .await
        .expect_err("too large");
    assert_eq!(err.kind(), StoreErrorKind::TooLarge);
    assert_eq!(
        get()
            .await
            .expect("get")
            .collect(1000)
            .await
            .expect("fits")
            .len(),
        1000
    );
}

#[tokio::test]
async fn multipart_uploads_round_trip_byte_exact() {
    let s3 = TestS3::start().await;
    let data = random_bytes(40 * MIB + 12_345);
    let body = futures::stream::iter(
        data.chunks(300_000)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let meta = put_stream(
        &*s3.store,
        BUCKET,
        "runs/r1/big.mcap",
        body,
        &UploadOptions::default(),
    )
    .await
    .expect("multipart upload");
    assert_eq!(meta.size, data.len() as u64);
    assert!(meta.etag.ends_with("-3"), "16 MiB parts: {}", meta.etag);

    let (got, _, size) = read_all(&*s3.store, "runs/r1/big.mcap", ByteRange::All).await;
    assert_eq!(size, data.len() as u64);
    assert!(got == data, "bytes differ after a multipart round trip");
    assert!(s3.upload_leftovers().is_empty());

    // A small body goes in one put, from a file.
    let path = s3.dir.path().join("small.json");
    std::fs::write(&path, b"{\"run_id\":\"r1\"}").expect("write");
    let meta = upload_file(
        &*s3.store,
        BUCKET,
        "runs/r1/run.json",
        &path,
        &UploadOptions::default(),
    )
    .await
    .expect("upload file");
    assert_eq!(meta.etag, md5_hex(b"{\"run_id\":\"r1\"}"));
}

#[tokio::test]
async fn upload_file_uses_multipart_above_the_part_size() {
    let s3 = TestS3::start().await;
    let data = random_bytes(12 * MIB + 1);
    let path = s3.dir.path().join("lidar.bin");
    std::fs::write(&path, &data).expect("write");
    let options = UploadOptions { part_size: 5 * MIB };
    let meta = upload_file(&*s3.store, BUCKET, "drives/x/lidar.bin", &path, &options)
        .await
        .expect("upload");
    assert!(meta.etag.ends_with("-3"), "{}", meta.etag);
    let (got, _, _) = read_all(&*s3.store, "drives/x/lidar.bin", ByteRange::All).await;
    assert!(got == data);

    let err = upload_file(
        &*s3.store,
        BUCKET,
        "k",
        Path::new("/no/such/file"),
        &options,
    )
    .await
    .expect_err("missing file");
    assert_eq!(err.kind(), StoreErrorKind::Invalid);
}

#[tokio::test]
async fn aborted_multipart_uploads_leave_nothing() {
    let s3 = TestS3::start().await;
    let id = s3
        .store
        .create_multipart(BUCKET, "aborted")
        .await
        .expect("create");
    s3.store
        .upload_part(BUCKET, "aborted", &id, 1, random_bytes(5 * MIB))
        .await
        .expect("part");
    assert!(!s3.upload_leftovers().is_empty());
    s3.store
        .abort_multipart(BUCKET, "aborted", &id)
        .await
        .expect("abort");
    assert_eq!(
        s3.store
            .head(BUCKET, "aborted")
            .await
            .expect_err("gone")
            .kind(),
        StoreErrorKind::NotFound
    );
    assert!(
        s3.upload_leftovers().is_empty(),
        "{:?}",
        s3.upload_leftovers()
    );

    // A body that fails mid-way: put_stream aborts the upload it started.
    let failing = futures::stream::iter(vec![
        Ok(random_bytes(6 * MIB)),
        Ok(random_bytes(6 * MIB)),
        Err(std::io::Error::other("disk read failed")),
    ]);
    let options = UploadOptions { part_size: 5 * MIB };
    let err = put_stream(&*s3.store, BUCKET, "half", failing, &options)
        .await
        .expect_err("failing body");
    assert_eq!(err.kind(), StoreErrorKind::Invalid);
    assert!(err.to_string().contains("disk read failed"), "{err}");
    assert_eq!(
        s3.store
            .head(BUCKET, "half")
            .await
            .expect_err("gone")
            .kind(),
        StoreErrorKind::NotFound
    );
    assert!(
        s3.upload_leftovers().is_empty(),
        "{:?}",
        s3.upload_leftovers()
    );
}

#[tokio::test]
async fn wrong_credentials_are_denied() {
    let s3 = TestS3::start().await;
    let settings = UpstreamSettings {
        credentials: Some(StaticCredentials::new(
            milepost_testkit::LOOPBACK_ACCESS_KEY,
            "wrong-secret",
        )),
        ..s3.server.settings()
    };
    let store = build_store(&settings, EgressMeter::new()).expect("store");
    let err = store.head(BUCKET, "k").await.expect_err("denied");
    assert_eq!(err.kind(), StoreErrorKind::Denied);
    assert!(!err.to_string().contains("wrong-secret"), "{err}");
}

#[tokio::test]
async fn without_static_keys_the_standard_chain_is_used() {
    let s3 = TestS3::start().await;
    s3.store
        .put(BUCKET, "k", Bytes::from_static(b"x"))
        .await
        .expect("put");
    // The environment is the chain's first source. No other test builds a store without
    // static keys, so setting it here cannot disturb them.
    std::env::set_var("AWS_ACCESS_KEY_ID", milepost_testkit::LOOPBACK_ACCESS_KEY);
    std::env::set_var(
        "AWS_SECRET_ACCESS_KEY",
        milepost_testkit::LOOPBACK_SECRET_KEY,
    );
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let settings = UpstreamSettings {
        credentials: None,
        ..s3.server.settings()
    };
    let store = build_store(&settings, EgressMeter::new()).expect("store");
    let meta = store
        .head(BUCKET, "k")
        .await
        .expect("head signed with env keys");
    assert_eq!(meta.size, 1);
}
