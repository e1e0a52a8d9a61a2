//! Retries, resumption and preconditions, with faults injected by `FaultProxy`.

use bytes::Bytes;
use futures::StreamExt;
use milepost_store::{ByteRange, StoreErrorKind};
use milepost_testkit::Fault;

use super::{md5_hex, random_bytes, read_all, TestS3, BUCKET, MIB};

#[tokio::test]
async fn slow_down_is_retried_until_success() {
    let s3 = TestS3::start().await;
    let data = random_bytes(5000);
    s3.store.put(BUCKET, "k", data.clone()).await.expect("put");

    s3.proxy.inject(Fault::SlowDown, 3);
    let (body, _, _) = read_all(&*s3.faulty, "k", ByteRange::All).await;
    assert_eq!(body, data);
    assert_eq!(s3.proxy.requests(), 4, "3 throttled attempts, then success");

    s3.proxy.reset_counters();
    s3.proxy.inject(Fault::SlowDown, 2);
    let meta = s3
        .faulty
        .put(BUCKET, "k2", data.clone())
        .await
        .expect("put through throttling");
    assert_eq!(meta.etag, md5_hex(&data));
    assert_eq!(s3.proxy.requests(), 3);
}

#[tokio::test]
async fn persistent_failures_give_up_after_max_attempts() {
    let s3 = TestS3::start().await;
    s3.store
        .put(BUCKET, "k", Bytes::from_static(b"x"))
        .await
        .expect("put");
    s3.proxy.inject(Fault::SlowDown, usize::MAX);

    let err = s3
        .faulty
        .get(BUCKET, "k", ByteRange::All, None)
        .await
        .expect_err("throttled for ever");
    assert_eq!(err.kind(), StoreErrorKind::Throttled);
    assert_eq!(s3.proxy.requests(), 5, "default policy: 5 attempts");

    // HEAD answers have no body, hence no error code: a bare 503 is Unavailable.
    s3.proxy.reset_counters();
    let err = s3.faulty.head(BUCKET, "k").await.expect_err("head");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert_eq!(s3.proxy.requests(), 5);
}

#[tokio::test]
async fn connection_resets_are_retried() {
    let s3 = TestS3::start().await;
    let data = random_bytes(2000);
    s3.store.put(BUCKET, "k", data.clone()).await.expect("put");

    s3.proxy.inject(Fault::Reset, 2);
    let meta = s3
        .faulty
        .head(BUCKET, "k")
        .await
        .expect("head after resets");
    assert_eq!(meta.size, 2000);
    assert_eq!(s3.proxy.requests(), 3);

    s3.proxy.inject(Fault::Reset, 1);
    let meta = s3
        .faulty
        .put(BUCKET, "k3", data.clone())
        .await
        .expect("put after a reset");
    assert_eq!(meta.etag, md5_hex(&data));
}

#[tokio::test]
async fn interrupted_bodies_resume_transparently() {
    let s3 = TestS3::start().await;
    let data = random_bytes(3 * MIB + 17);
    let etag = s3
        .store
        .put(BUCKET, "drive.mcap", data.clone())
        .await
        .expect("put")
        .etag;

    s3.proxy.inject(Fault::CutBody(MIB as u64), 1);
    s3.proxy.inject(Fault::CutBody(1000), 2);
    let (body, range, size) = read_all(&*s3.faulty, "drive.mcap", ByteRange::All).await;
    assert_eq!(range, None);
    assert_eq!(size, data.len() as u64);
    assert!(body == data, "resumed body differs");
    assert_eq!(
        s3.faulty_meter.bytes_from_upstream(),
        data.len() as u64,
        "the meter counts each delivered byte once"
    );
    assert_eq!(s3.faulty_meter.get_requests(), 1);

    let seen = s3.proxy.seen();
    let gets: Vec<_> = seen.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 4, "{gets:#?}");
    assert_eq!(gets[0].header("range"), None);
    assert_eq!(gets[0].header("if-match"), None);
    let last = data.len() - 1;
    assert_eq!(
        gets[1].header("range"),
        Some(format!("bytes={MIB}-{last}").as_str())
    );
    assert_eq!(
        gets[2].header("range"),
        Some(format!("bytes={}-{last}", MIB + 1000).as_str())
    );
    for resumed in &gets[1..] {
        assert_eq!(
            resumed.header("if-match"),
            Some(format!("\"{etag}\"").as_str()),
            "resumed reads are pinned to the etag"
        );
    }

    // A ranged read resumes inside its range.
    s3.proxy.reset_counters();
    s3.proxy.inject(Fault::CutBody(4096), 1);
    let range = ByteRange::Bounded {
        start: 100_000,
        end_inclusive: 299_999,
    };
    let (body, returned, _) = read_all(&*s3.faulty, "drive.mcap", range).await;
    assert_eq!(returned, Some((100_000, 299_999)));
    assert!(body == data.slice(100_000..300_000));
    let gets = s3.proxy.seen();
    assert_eq!(gets[1].header("range"), Some("bytes=104096-299999"));
}

#[tokio::test]
async fn a_changed_object_is_never_spliced() {
    let s3 = TestS3::start().await;
    let old = random_bytes(2 * MIB);
    s3.store.put(BUCKET, "k", old.clone()).await.expect("put");

    let cut = MIB;
    s3.proxy.inject(Fault::CutBody(cut as u64), 1);
    let mut response = s3
        .faulty
        .get(BUCKET, "k", ByteRange::All, None)
        .await
        .expect("get");
    let mut received = Vec::new();
    while received.len() < cut {
        let chunk = response.body.next().await.expect("chunk").expect("bytes");
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, old[..cut]);

    // The object changes while the download is interrupted.
    s3.store
        .put(BUCKET, "k", random_bytes(2 * MIB))
        .await
        .expect("overwrite");
    let err = match response.body.next().await {
        Some(Ok(chunk)) => panic!("{} bytes of the new object were spliced in", chunk.len()),
        Some(Err(err)) => err,
        None => panic!("the body ended without the missing bytes"),
    };
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed, "{err}");
    assert!(response.body.next().await.is_none());
}

#[tokio::test]
async fn if_match_is_sent_and_enforced() {
    let s3 = TestS3::start().await;
    let data = random_bytes(100);
    let etag = s3
        .store
        .put(BUCKET, "k", data.clone())
        .await
        .expect("put")
        .etag;

    let response = s3
        .faulty
        .get(BUCKET, "k", ByteRange::From(10), Some(&etag))
        .await
        .expect("matching etag");
    assert_eq!(response.collect(100).await.expect("body"), data.slice(10..));
    let seen = s3.proxy.seen();
    assert_eq!(
        seen[0].header("if-match"),
        Some(format!("\"{etag}\"").as_str())
    );

    // s3s-fs ignores If-Match; the store still refuses an answer with another ETag.
    let err = s3
        .faulty
        .get(
            BUCKET,
            "k",
            ByteRange::All,
            Some("0123456789abcdef0123456789abcdef"),
        )
        .await
        .expect_err("stale etag");
    assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
}

#[tokio::test]
async fn the_meter_counts_requests_and_bytes() {
    let s3 = TestS3::start().await;
    let data = random_bytes(4321);
    s3.faulty.put(BUCKET, "k", data.clone()).await.expect("put");
    s3.faulty.head(BUCKET, "k").await.expect("head");
    let (body, _, _) = read_all(&*s3.faulty, "k", ByteRange::Suffix(321)).await;
    assert_eq!(body.len(), 321);
    let snapshot = s3.faulty_meter.snapshot();
    assert_eq!(snapshot.get_requests, 1);
    assert_eq!(snapshot.other_requests, 2);
    assert_eq!(snapshot.bytes_from_upstream, 321);
    assert_eq!(snapshot.bytes_to_upstream, 4321);
}
