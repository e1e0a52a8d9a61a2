//! The limiter on tokio's paused clock: simulated seconds pass only while every task waits
//! on a timer, so rates are measured exactly and the tests take milliseconds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::NaiveDateTime;
use futures::{stream, Stream, StreamExt};
use tokio::time::Instant;

use super::{capacity, Throttled, UploadLimiter, MIN_BURST};
use crate::transfer_policy::{PolicyHandle, TransferPolicy};

const MIB: u64 = 1 << 20;
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

fn policy(schedule: &str) -> TransferPolicy {
    TransferPolicy::parse(schedule, &[]).expect("valid schedule")
}

fn limiter(schedule: &str) -> Arc<UploadLimiter> {
    UploadLimiter::new(PolicyHandle::new(policy(schedule)))
}

/// An endless body of `chunk`-byte chunks.
fn body(chunk: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    stream::repeat_with(move || Ok(Bytes::from_static(&ZEROS[..chunk])))
}

/// Bytes a throttled endless body of 1 MiB chunks yields during `seconds` simulated seconds.
async fn drain_for(limiter: Arc<UploadLimiter>, seconds: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut throttled = Throttled::new(body(MIB as usize), limiter);
    let mut bytes = 0;
    while let Some(chunk) = throttled.next().await {
        if Instant::now() > deadline {
            break;
        }
        bytes += chunk.expect("no error").len() as u64;
    }
    bytes
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let error = (actual - expected).abs() / expected;
    assert!(
        error <= tolerance,
        "{what}: {actual:.0} vs {expected:.0} expected ({:.2}% off, at most {:.2}%)",
        error * 100.0,
        tolerance * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn holds_20_mib_per_second_within_2_percent_over_30_seconds() {
    let limiter = limiter("* 20MiB");
    let bytes = drain_for(limiter.clone(), 30).await;
    assert_close(bytes as f64, (30 * 20 * MIB) as f64, 0.02, "bytes in 30 s");
    assert_close(
        limiter.current_rate(),
        (20 * MIB) as f64,
        0.05,
        "rate estimate",
    );
    assert!(limiter.bytes_total() >= bytes);
}

#[tokio::test(start_paused = true)]
async fn small_rates_split_large_chunks_and_still_hold() {
    // 100 KiB/s: the bucket is MIN_BURST, so each 1 MiB chunk is taken in 16 pieces.
    let limiter = limiter("* 100KiB");
    assert_eq!(capacity(100 << 10), MIN_BURST as f64);
    let bytes = drain_for(limiter, 60).await;
    // A chunk is released only once all its pieces are granted: up to one chunk short.
    assert_close(bytes as f64, (60 * 100 * 1024) as f64, 0.2, "bytes in 60 s");
}

#[tokio::test(start_paused = true)]
async fn concurrent_streams_share_one_rate() {
    let limiter = limiter("* 20MiB");
    let streams: Vec<_> = (0..4)
        .map(|_| tokio::spawn(drain_for(limiter.clone(), 30)))
        .collect();
    let mut each = Vec::new();
    for handle in streams {
        each.push(handle.await.expect("stream task") as f64);
    }
    let total: f64 = each.iter().sum();
    assert_close(total, (30 * 20 * MIB) as f64, 0.02, "bytes of all streams");
    for (i, bytes) in each.iter().enumerate() {
        assert_close(*bytes, total / 4.0, 0.1, &format!("share of stream {i}"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_to_unlimited_is_felt_at_once_by_a_sleeping_waiter() {
    let handle = PolicyHandle::new(policy("* 1MiB"));
    let limiter = UploadLimiter::new(handle.clone());
    let upload = tokio::spawn({
        let limiter = limiter.clone();
        async move {
            let total = 200 * MIB as usize;
            let mut throttled = Throttled::new(body(MIB as usize).take(200), limiter);
            let mut bytes = 0;
            while let Some(chunk) = throttled.next().await {
                bytes += chunk.expect("no error").len();
            }
            assert_eq!(bytes, total);
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent = limiter.bytes_total();
    assert!(
        (4 * MIB..=7 * MIB).contains(&sent),
        "about 5 MiB in 5 s at 1 MiB/s, got {sent}"
    );
    let changed = Instant::now();
    handle.set(policy("* off"));
    let finished = upload.await.expect("upload task");
    // Woken by the change itself, not by the once-a-second recheck.
    assert!(
        finished - changed < Duration::from_millis(50),
        "the remaining 195 MiB went {:?} after the change",
        finished - changed
    );
    assert_eq!(limiter.bytes_total(), 200 * MIB);
}

#[tokio::test(start_paused = true)]
async fn a_change_from_1_to_4_mib_per_second_is_felt_within_a_second() {
    let handle = PolicyHandle::new(policy("* 1MiB"));
    let limiter = UploadLimiter::new(handle.clone());
    let upload = tokio::spawn(drain_for(limiter.clone(), 60));
    tokio::time::sleep(Duration::from_secs(5)).await;
    handle.set(policy("Mon-Sun 4MiB"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = limiter.bytes_total();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = limiter.bytes_total() - from;
    assert_close(
        sent as f64,
        (40 * MIB) as f64,
        0.05,
        "bytes from 1 s to 11 s after",
    );
    assert_close(
        limiter.current_rate(),
        (4 * MIB) as f64,
        0.1,
        "rate estimate",
    );
    upload.abort();
}

#[tokio::test(start_paused = true)]
async fn a_schedule_boundary_is_felt_within_a_second() {
    // Office time starts at 09:59:50 on a Wednesday and runs with the paused clock.
    let start = Instant::now();
    let office_start =
        NaiveDateTime::parse_from_str("2026-11-25 09:59:50", "%Y-%m-%d %H:%M:%S").expect("time");
    let clock = Arc::new(move || {
        office_start + chrono::Duration::from_std(start.elapsed()).expect("short")
    });
    let handle = PolicyHandle::with_clock(policy("Mon-Fri 09:00-10:00 1MiB; * off"), clock);
    let limiter = UploadLimiter::new(handle);
    let mut throttled = Throttled::new(body(MIB as usize).take(100), limiter);
    while let Some(chunk) = throttled.next().await {
        chunk.expect("no error");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took <= Duration::from_secs(11),
        "limited until 10:00, unlimited within a second after: took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn unlimited_never_waits_but_counts() {
    let limiter = limiter("Mon 09:00-10:00 1MiB");
    let handle = limiter.policy().clone();
    handle.set(policy("* off"));
    let start = Instant::now();
    limiter.acquire(10 * 1024 * MIB).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(limiter.bytes_total(), 10 * 1024 * MIB);
    assert_eq!(limiter.limit(), None);
}

#[tokio::test(start_paused = true)]
async fn the_rate_estimate_falls_to_zero_when_idle() {
    let limiter = limiter("* 1MiB");
    let _ = drain_for(limiter.clone(), 10).await;
    assert_close(limiter.current_rate(), MIB as f64, 0.1, "rate while busy");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(limiter.current_rate(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_wait_takes_no_more_tokens() {
    let limiter = limiter("* 1MiB");
    let big = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire(100 * MIB).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    big.abort();
    let _ = big.await;
    let spent = limiter.bytes_total();
    assert!(spent < 4 * MIB, "about 3 s worth, got {spent}");
    // The next upload gets the full rate, not the cancelled one's leftovers or debts.
    let start = Instant::now();
    limiter.acquire(2 * MIB).await;
    let took = start.elapsed().as_secs_f64();
    assert!(
        (1.8..=2.2).contains(&took),
        "2 MiB at 1 MiB/s took {took} s"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_and_empty_chunks_pass_through() {
    let limiter = limiter("* 1MiB");
    let items = vec![
        Ok(Bytes::new()),
        Err(std::io::Error::other("disk")),
        Ok(Bytes::from_static(b"abc")),
    ];
    let out: Vec<_> = Throttled::new(stream::iter(items), limiter.clone())
        .collect()
        .await;
    assert_eq!(out.len(), 3);
    assert!(out[0].as_ref().is_ok_and(|b| b.is_empty()));
    assert!(out[1].is_err());
    assert_eq!(out[2].as_ref().expect("bytes").as_ref(), b"abc");
    assert_eq!(limiter.bytes_total(), 3);
}

#[test]
fn throttled_bodies_are_send_sync_and_static() {
    fn check<T: Send + Sync + 'static>(_: &T) {}
    let limiter = UploadLimiter::new(PolicyHandle::new(TransferPolicy::default()));
    // A body that is Send but not Sync still makes a Sync throttled body.
    let body = stream::iter(vec![Ok::<_, std::io::Error>(Bytes::new())]).boxed();
    check(&Throttled::new(body, limiter));
}
