//! [`RetryingStore`]: retries with exponential backoff and full jitter, and resumable
//! downloads. [`Backoff`] is the one exponential-backoff formula of the cacher: the retrying
//! store and the write-back uploader both draw their delays from it.
//!
//! (Over 600 lines: the backoff lives here on purpose, next to the retries that use it.)

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use rand::Rng;

use super::{
    ByteRange, DelimitedPage, GetResponse, ListPage, ObjectMeta, ObjectMetadata, ObjectStore,
    StoreError, StoreErrorKind, Target,
};

/// How [`RetryingStore`] retries: attempts per call and the backoff between them.
///
/// The delay before retry `n` (1 after the first failure) is drawn uniformly from
/// `0..=min(max_delay, base_delay * 2^(n-1))` ("full jitter"), so that many clients throttled
/// at once do not come back in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included; 1 disables retries (0 counts as 1).
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms base, 5 s cap.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The [`Backoff`] of this policy: full jitter, up to 31 doublings.
    pub fn backoff_schedule(&self) -> Backoff {
        Backoff {
            base: self.base_delay,
            max: self.max_delay,
            max_doublings: 31,
            jitter: Jitter::Full,
        }
    }

    /// The upper bound of the delay before retry `retry` (1 after the first failure):
    /// `min(max_delay, base_delay * 2^(retry-1))`.
    pub fn delay_ceiling(&self, retry: u32) -> Duration {
        self.backoff_schedule().ceiling(retry)
    }

    /// A random delay before retry `retry`, uniform in `0..=delay_ceiling(retry)`.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_schedule().delay(retry)
    }

    fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// How a [`Backoff`] draws a delay below its ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `0..=ceiling`: many clients throttled at once spread out the most.
    Full,
    /// Between half the ceiling and the ceiling: a retry never comes back much sooner than
    /// planned (the write-back uploader's choice).
    Equal,
}

/// Exponential backoff: the ceiling of the delay before retry `n` (1 after the first failure)
/// is `min(max, base * 2^min(n-1, max_doublings))`, and the delay is drawn below it per
/// [`Jitter`]. Callers keep their own limits as the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// Doublings of `base` past which the ceiling stops growing (at most 31).
    pub max_doublings: u32,
    /// How the delay is drawn below the ceiling.
    pub jitter: Jitter,
}

impl Backoff {
    /// The upper bound of the delay before retry `retry` (1 after the first failure).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(self.max_doublings).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// A random delay before retry `retry`, per [`jitter`](Self::jitter).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        match self.jitter {
            Jitter::Full => {
                let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::rng().random_range(0..=nanos))
            }
            Jitter::Equal => {
                let half = ceiling / 2;
                half + half.mul_f64(rand::rng().random::<f64>())
            }
        }
    }
}

/// Retries every call of the inner store that fails with a retryable error
/// ([`Throttled`](StoreErrorKind::Throttled), [`Unavailable`](StoreErrorKind::Unavailable)),
/// up to [`RetryPolicy::max_attempts`], sleeping [`RetryPolicy::backoff`] in between; each retry
/// is logged at warn with the operation, bucket, key and attempt. The last error is returned
/// as it is.
///
/// `get` bodies are resumable: when the body fails mid-way with a retryable error, the
/// stream transparently continues from the next unread byte with a new ranged GET carrying
/// `If-Match` of the first answer's ETag, so bytes of a changed object are never spliced in
/// (the stream then ends with [`PreconditionFailed`](StoreErrorKind::PreconditionFailed)).
/// Consecutive failures without a byte of progress are bounded by `max_attempts`. A body is
/// not resumed when the store gave no ETag.
///
/// Two calls are made idempotent for retries: `abort_multipart` succeeds when a retry finds
/// the upload gone, and `complete_multipart` whose retry finds the upload gone returns the
/// object's metadata if it now is a multipart object with as many parts (an earlier attempt
/// completed it but its answer was lost).
#[derive(Debug)]
pub struct RetryingStore<S> {
    inner: Arc<S>,
    policy: RetryPolicy,
}

impl<S: ObjectStore> RetryingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self {
            inner: Arc::new(inner),
            policy,
        }
    }

    /// The retry policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        with_retries(&self.policy, op, bucket, key, call).await
    }
}

/// Calls `call` until it succeeds, fails with a non-retryable error, or `policy` runs out of
/// attempts.
async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    op: &'static str,
    bucket: &str,
    key: &str,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let max_attempts = policy.attempts();
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_retryable() && attempt < max_attempts => {
                let delay = policy.backoff(attempt);
                tracing::warn!(
                    op,
                    bucket,
                    key,
                    attempt,
                    max_attempts,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %err,
                    "upstream call failed, retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(err) => {
                if err.is_retryable() {
                    tracing::warn!(op, bucket, key, attempt, error = %err, "upstream call failed, giving up");
                }
                return Err(err);
            }
            ok => return ok,
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for RetryingStore<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        self.run("list", bucket, prefix, || {
            self.inner().list_page(bucket, prefix, continuation.clone())
        })
        .await
    }

    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        self.run("list", bucket, prefix, || {
            self.inner()
                .list_delimited(bucket, prefix, delimiter, continuation.clone())
        })
        .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        self.run("head", bucket, key, || self.inner().head(bucket, key))
            .await
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        let first = self
            .run("get", bucket, key, || {
                self.inner().get(bucket, key, range, if_match)
            })
            .await?;
        let bounds = first
            .range
            .or_else(|| ByteRange::All.resolve(first.meta.size));
        let etag = first.meta.etag.clone();
        let Some((start, end)) = bounds.filter(|_| !etag.is_empty()) else {
            return Ok(first);
        };
        let resume = Resume {
            store: Arc::clone(&self.inner),
            policy: self.policy,
            target: Target::new("get", bucket, key),
            etag,
            size: first.meta.size,
            next: start,
            end,
            body: Some(first.body),
            failures: 0,
            done: false,
        };
        Ok(GetResponse {
            meta: first.meta,
            range: first.range,
            body: resume.into_stream(),
        })
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        self.run("put", bucket, key, || {
            self.inner().put_with(bucket, key, body.clone(), metadata)
        })
        .await
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        self.run("create_multipart", bucket, key, || {
            self.inner().create_multipart_with(bucket, key, metadata)
        })
        .await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.run("upload_part", bucket, key, || {
            self.inner()
                .upload_part(bucket, key, upload_id, part_number, body.clone())
        })
        .await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        let part_count = parts.len();
        let attempts = AtomicU32::new(0);
        let result = self
            .run("complete_multipart", bucket, key, || {
                attempts.fetch_add(1, Ordering::Relaxed);
                self.inner()
                    .complete_multipart(bucket, key, upload_id, parts.clone())
            })
            .await;
        match result {
            Err(err)
                if err.kind() == StoreErrorKind::NotFound
                    && attempts.load(Ordering::Relaxed) > 1 =>
            {
                // An earlier attempt may have completed the upload and lost its answer.
                let suffix = format!("-{part_count}");
                match self.head(bucket, key).await {
                    Ok(meta) if meta.etag.ends_with(&suffix) => {
                        tracing::warn!(
                            bucket,
                            key,
                            etag = %meta.etag,
                            "multipart upload was completed by an earlier attempt whose answer was lost"
                        );
                        Ok(meta)
                    }
                    _ => Err(err),
                }
            }
            other => other,
        }
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let attempts = AtomicU32::new(0);
        let result = self
            .run("abort_multipart", bucket, key, || {
                attempts.fetch_add(1, Ordering::Relaxed);
                self.inner().abort_multipart(bucket, key, upload_id)
            })
            .await;
        match result {
            // An earlier attempt aborted it and lost its answer.
            Err(err)
                if err.kind() == StoreErrorKind::NotFound
                    && attempts.load(Ordering::Relaxed) > 1 =>
            {
                Ok(())
            }
            other => other,
        }
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.run("delete", bucket, key, || self.inner().delete(bucket, key))
            .await
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.run("ensure_bucket", bucket, "", || {
            self.inner().ensure_bucket(bucket)
        })
        .await
    }
}

/// A GET body that resumes after retryable failures; see [`RetryingStore`].
struct Resume<S> {
    store: Arc<S>,
    policy: RetryPolicy,
    target: Target,
    /// The ETag every resumed read is pinned to.
    etag: String,
    /// The object's size, which a resumed read must report too.
    size: u64,
    /// The next byte to deliver.
    next: u64,
    /// The last byte to deliver (inclusive).
    end: u64,
    /// The body being read; `None` after a failure, until reopened.
    body: Option<BoxStream<'static, Result<Bytes, StoreError>>>,
    /// Failures since the last byte delivered.
    failures: u32,
    done: bool,
}

impl<S: ObjectStore> Resume<S> {
    fn into_stream(self) -> BoxStream<'static, Result<Bytes, StoreError>> {
        futures::stream::unfold(self, |mut resume| async move {
            let item = resume.next_item().await?;
            Some((item, resume))
        })
        .boxed()
    }

    async fn next_item(&mut self) -> Option<Result<Bytes, StoreError>> {
        while !self.done {
            let body = match self.body.as_mut() {
                Some(body) => body,
                None => match self.reopen().await {
                    Ok(body) => self.body.insert(body),
                    Err(err) => {
                        if let Some(err) = self.failed(err).await {
                            return Some(Err(err));
                        }
                        continue;
                    }
                },
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    self.next += chunk.len() as u64;
                    self.failures = 0;
                    return Some(Ok(chunk));
                }
                None => self.done = true,
                // Everything was delivered; what follows does not matter.
                Some(Err(_)) if self.next > self.end => self.done = true,
                Some(Err(err)) => {
                    self.body = None;
                    if let Some(err) = self.failed(err).await {
                        return Some(Err(err));
                    }
                }
            }
        }
        None
    }

    /// Records a failure: `Some(err)` to end the stream with, or `None` after sleeping the
    /// backoff when another attempt is due.
    async fn failed(&mut self, err: StoreError) -> Option<StoreError> {
        self.failures += 1;
        if !err.is_retryable() || self.failures >= self.policy.attempts() {
            self.done = true;
            return Some(err);
        }
        let delay = self.policy.backoff(self.failures);
        tracing::warn!(
            op = self.target.op,
            bucket = %self.target.bucket,
            key = %self.target.key,
            attempt = self.failures,
            offset = self.next,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %err,
            "download interrupted, resuming"
        );
        tokio::time::sleep(delay).await;
        None
    }

    /// A ranged GET of the bytes still due, pinned to the ETag.
    async fn reopen(
        &mut self,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let range = ByteRange::Bounded {
            start: self.next,
            end_inclusive: self.end,
        };
        // `&mut self` keeps the future `Send`: the body stream in `self` is not `Sync`.
        let response = self
            .store
            .get(
                &self.target.bucket,
                &self.target.key,
                range,
                Some(&self.etag),
            )
            .await?;
        // The store should have enforced If-Match; check in case it (or its server) did not.
        if !response.meta.etag.is_empty() && response.meta.etag != self.etag {
            return Err(StoreError::PreconditionFailed {
                target: self.target.clone(),
                detail: format!(
                    "resuming at byte {} found etag {} instead of {}",
                    self.next, response.meta.etag, self.etag
                ),
            });
        }
        let returned = response
            .range
            .or_else(|| ByteRange::All.resolve(response.meta.size));
        if response.meta.size != self.size || returned != Some((self.next, self.end)) {
            return Err(StoreError::corrupt(
                self.target.clone(),
                format!(
                    "resuming bytes {}-{} of {} got {:?} of {}",
                    self.next, self.end, self.size, returned, response.meta.size
                ),
            ));
        }
        Ok(response.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let ms = |retry| policy.delay_ceiling(retry).as_millis();
        assert_eq!(ms(1), 100);
        assert_eq!(ms(2), 200);
        assert_eq!(ms(3), 400);
        assert_eq!(ms(6), 3200);
        assert_eq!(ms(7), 5000);
        assert_eq!(ms(40), 5000);
        assert_eq!(ms(u32::MAX), 5000);
    }

    #[test]
    fn backoff_is_jittered_within_the_ceiling() {
        let policy = RetryPolicy::default();
        for retry in 1..10 {
            let ceiling = policy.delay_ceiling(retry);
            let draws: Vec<Duration> = (0..200).map(|_| policy.backoff(retry)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Full jitter: draws spread over the whole interval, not clustered at the top.
            assert!(draws.iter().any(|d| *d < ceiling / 2), "retry {retry}");
            assert!(draws.iter().any(|d| *d > ceiling / 2), "retry {retry}");
        }
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            max_doublings: 15,
            jitter: Jitter::Equal,
        };
        assert_eq!(backoff.ceiling(1), Duration::from_millis(500));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(50), Duration::from_secs(60));
        for retry in 1..10 {
            let ceiling = backoff.ceiling(retry);
            for _ in 0..100 {
                let d = backoff.delay(retry);
                assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
            }
        }
        // The doublings stop at `max_doublings` even when `max` is far away.
        let tiny = Backoff {
            base: Duration::from_nanos(1),
            max: Duration::from_secs(3600),
            ..backoff
        };
        assert_eq!(tiny.ceiling(100), Duration::from_nanos(1 << 15));
    }

    #[test]
    fn zero_attempts_means_one() {
        let policy = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.attempts(), 1);
    }
}
