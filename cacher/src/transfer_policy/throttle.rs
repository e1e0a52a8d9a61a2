//! The upload limiter: one token bucket per office over upload bytes, and [`Throttled`], the
//! stream wrapper that makes each upload body wait for its tokens.
//!
//! # How the rate is held
//!
//! - Tokens accrue at the rate the schedule gives for the office's local time now. The rate
//!   is re-read from the [`PolicyHandle`] at least once a second (a schedule boundary is felt
//!   within a second) and at once when the policy is replaced: a waiter asleep on its tokens
//!   is woken by the change and recomputes its wait.
//! - The bucket holds at most a tenth of a second of the rate, and never less than
//!   [`MIN_BURST`] bytes; it starts full. A request larger than the bucket is taken in pieces
//!   of at most the bucket's size, so a 16 MiB part at 1 MiB/s waits 16 s rather than being
//!   refused or let through at once. Over any window of `T` seconds at most `rate * T` plus
//!   one bucket passes, which at 20 MiB/s over 30 s is within 0.4 %.
//! - Waiters take turns in arrival order (a fair queue per piece), so concurrent uploads
//!   share the rate rather than one starving the others.
//! - `off` (unlimited) takes no tokens and never waits; switching back to a limit starts
//!   with a full bucket.
//! - Cancel-safe: a dropped [`UploadLimiter::acquire`] future takes no more tokens (pieces
//!   already granted stay spent), and a dropped [`Throttled`] stream drops its wait.
//!
//! The limiter also counts the bytes it let through ([`UploadLimiter::bytes_total`]) and
//! estimates the rate over the last five seconds ([`UploadLimiter::current_rate`]), whatever
//! the limit; the queue's ETA is computed from them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;

use super::PolicyHandle;

/// Smallest bucket, in bytes, whatever the rate.
pub const MIN_BURST: u64 = 64 << 10;
/// The bucket holds this fraction of a second of the rate.
const BURST_SECONDS: f64 = 0.1;
/// The schedule is re-read at least this often, even by a waiter that is asleep.
const RECHECK: Duration = Duration::from_secs(1);
/// Width of one bucket of the rate estimate, and how many of them make the window.
const RATE_SLOT: Duration = Duration::from_millis(500);
const RATE_SLOTS: usize = 10;

/// Capacity of the bucket at `rate` bytes per second.
fn capacity(rate: u64) -> f64 {
    (rate as f64 * BURST_SECONDS).max(MIN_BURST as f64)
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// The limit in force (bytes per second); `None` = unlimited.
    rate: Option<u64>,
    /// When the schedule was last read, and the policy generation read then.
    checked: Instant,
    generation: u64,
}

/// Bytes let through per [`RATE_SLOT`], over the last [`RATE_SLOTS`] of them.
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    slots: [(u64, u64); RATE_SLOTS], // (slot number, bytes)
}

impl RateWindow {
    fn slot_of(&self, now: Instant) -> u64 {
        (now.duration_since(self.started).as_nanos() / RATE_SLOT.as_nanos()) as u64
    }

    fn add(&mut self, now: Instant, bytes: u64) {
        let slot = self.slot_of(now);
        let entry = &mut self.slots[(slot % RATE_SLOTS as u64) as usize];
        if entry.0 != slot {
            *entry = (slot, 0);
        }
        entry.1 += bytes;
    }

    /// Bytes per second over the current slot and the nine before it (or since the limiter
    /// was made, when that is shorter).
    fn rate(&self, now: Instant) -> f64 {
        let slot = self.slot_of(now);
        let oldest = slot.saturating_sub(RATE_SLOTS as u64 - 1);
        let bytes: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| (oldest..=slot).contains(s))
            .map(|(_, b)| b)
            .sum();
        let into_slot =
            now.duration_since(self.started).as_secs_f64() - slot as f64 * RATE_SLOT.as_secs_f64();
        let span = (slot - oldest) as f64 * RATE_SLOT.as_secs_f64() + into_slot;
        if span <= 0.0 {
            0.0
        } else {
            bytes as f64 / span
        }
    }
}

/// The office's upload token bucket, made from its [`PolicyHandle`]; shared (`Arc`) by every
/// upload. See the [module docs](self) for how the rate is held.
pub struct UploadLimiter {
    policy: Arc<PolicyHandle>,
    bucket: Mutex<Bucket>,
    /// Waiters take their pieces in arrival order (tokio's mutex is fair).
    turn: tokio::sync::Mutex<()>,
    bytes_total: AtomicU64,
    window: Mutex<RateWindow>,
}

impl fmt::Debug for UploadLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadLimiter")
            .field("rate", &self.lock_bucket().rate)
            .field("bytes_total", &self.bytes_total())
            .finish_non_exhaustive()
    }
}

impl UploadLimiter {
    pub fn new(policy: Arc<PolicyHandle>) -> Arc<UploadLimiter> {
        let now = Instant::now();
        let rate = policy.limit_now();
        Arc::new(UploadLimiter {
            bucket: Mutex::new(Bucket {
                tokens: rate.map_or(0.0, capacity),
                updated: now,
                rate,
                checked: now,
                generation: policy.generation(),
            }),
            policy,
            turn: tokio::sync::Mutex::new(()),
            bytes_total: AtomicU64::new(0),
            window: Mutex::new(RateWindow {
                started: now,
                slots: [(u64::MAX, 0); RATE_SLOTS],
            }),
        })
    }

    /// The policy this limiter follows.
    pub fn policy(&self) -> &Arc<PolicyHandle> {
        &self.policy
    }

    /// Waits until `bytes` may be uploaded at the current rate, then counts them as sent.
    /// Returns at once when uploads are unlimited. Cancel-safe (see the module docs).
    pub async fn acquire(&self, bytes: u64) {
        let mut remaining = bytes;
        let mut changes = self.policy.subscribe();
        changes.borrow_and_update();
        while remaining > 0 {
            if self.limit().is_none() {
                self.count(remaining);
                return;
            }
            let _turn = self.turn.lock().await;
            loop {
                let wait = {
                    let mut bucket = self.lock_bucket();
                    self.refresh(&mut bucket, Instant::now());
                    let Some(rate) = bucket.rate else {
                        drop(bucket);
                        self.count(remaining);
                        return;
                    };
                    let piece = remaining.min(capacity(rate) as u64).max(1);
                    if bucket.tokens >= piece as f64 {
                        bucket.tokens -= piece as f64;
                        drop(bucket);
                        self.count(piece);
                        remaining -= piece;
                        break;
                    }
                    Duration::from_secs_f64((piece as f64 - bucket.tokens) / rate as f64)
                };
                tokio::select! {
                    () = tokio::time::sleep(wait.min(RECHECK)) => {}
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The handle is gone (it cannot be while we hold it); just sleep.
                            tokio::time::sleep(wait.min(RECHECK)).await;
                        }
                    }
                }
            }
        }
    }

    /// [`acquire`](Self::acquire) on an owned handle, for futures that must be `'static`.
    pub async fn acquire_owned(self: Arc<Self>, bytes: u64) {
        self.acquire(bytes).await;
    }

    /// The limit in force now, in bytes per second (`None` = unlimited), re-reading the
    /// schedule when it is due.
    pub fn limit(&self) -> Option<u64> {
        let mut bucket = self.lock_bucket();
        self.refresh(&mut bucket, Instant::now());
        bucket.rate
    }

    /// Bytes let through since the limiter was made.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total.load(Ordering::Relaxed)
    }

    /// Bytes per second let through over the last five seconds.
    pub fn current_rate(&self) -> f64 {
        self.lock_window().rate(Instant::now())
    }

    fn count(&self, bytes: u64) {
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        self.lock_window().add(Instant::now(), bytes);
    }

    /// Accrues tokens at the rate in force until `now`, then re-reads the schedule if the
    /// policy changed or the last reading is a second old.
    fn refresh(&self, bucket: &mut Bucket, now: Instant) {
        if let Some(rate) = bucket.rate {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate as f64).min(capacity(rate));
        }
        bucket.updated = now;
        let generation = self.policy.generation();
        if generation == bucket.generation
            && now.saturating_duration_since(bucket.checked) < RECHECK
        {
            return;
        }
        bucket.generation = generation;
        bucket.checked = now;
        let rate = self.policy.limit_now();
        match (bucket.rate, rate) {
            (None, Some(new)) => bucket.tokens = capacity(new),
            (Some(_), Some(new)) => bucket.tokens = bucket.tokens.min(capacity(new)),
            (_, None) => bucket.tokens = 0.0,
        }
        bucket.rate = rate;
    }

    fn lock_bucket(&self) -> MutexGuard<'_, Bucket> {
        // No code panics while holding it; a poisoned lock still holds consistent numbers.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_window(&self) -> MutexGuard<'_, RateWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A byte stream that yields each chunk only once the [`UploadLimiter`] has granted its
/// bytes: the wrapper the uploader puts around an upload body. Errors pass through at once.
///
/// `Send + Sync + 'static` whenever the inner stream is `Send + 'static` (the parts are only
/// ever reached through `&mut`, behind a mutex that is never locked, so bodies that must be
/// `Sync`, such as an HTTP body for the S3 client, can hold one). Dropping it mid-wait takes
/// no more tokens.
pub struct Throttled<S> {
    inner: Mutex<Pin<Box<S>>>,
    limiter: Arc<UploadLimiter>,
    waiting: Option<(Bytes, Mutex<Wait>)>,
}

impl<S> fmt::Debug for Throttled<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttled")
            .field("limiter", &self.limiter)
            .field(
                "waiting",
                &self.waiting.as_ref().map(|(chunk, _)| chunk.len()),
            )
            .finish_non_exhaustive()
    }
}

impl<S> Throttled<S> {
    pub fn new(stream: S, limiter: Arc<UploadLimiter>) -> Throttled<S> {
        Throttled {
            inner: Mutex::new(Box::pin(stream)),
            limiter,
            waiting: None,
        }
    }
}

/// The value behind a mutex reached through `&mut` (no locking; poisoning cannot matter).
fn exclusive<T>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(|e| e.into_inner())
}

impl<S, E> Stream for Throttled<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some((_, wait)) = &mut this.waiting {
                return match exclusive(wait).as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let chunk = this.waiting.take().map(|(chunk, _)| chunk);
                        Poll::Ready(chunk.map(Ok))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            match exclusive(&mut this.inner).as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) if !chunk.is_empty() => {
                    let wait = this.limiter.clone().acquire_owned(chunk.len() as u64);
                    this.waiting = Some((chunk, Mutex::new(Box::pin(wait))));
                }
                other => return other,
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = usize::from(self.waiting.is_some());
        let (low, high) = match self.inner.try_lock() {
            Ok(inner) => inner.size_hint(),
            Err(_) => (0, None),
        };
        (
            low.saturating_add(pending),
            high.and_then(|h| h.checked_add(pending)),
        )
    }
}

#[cfg(test)]
mod tests;
