//! [`MeteredStore`] and its [`EgressMeter`]: what the office pulled from (and pushed to) S3.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{
    ByteRange, DelimitedPage, GetResponse, ListPage, ObjectMeta, ObjectMetadata, ObjectStore,
    StoreError,
};

/// Counters of upstream traffic, shared (`Arc`) between a [`MeteredStore`] and whoever reports
/// them (metrics, the egress ledger). Lock-free; read them at any time.
#[derive(Debug, Default)]
pub struct EgressMeter {
    bytes_from_upstream: AtomicU64,
    bytes_to_upstream: AtomicU64,
    get_requests: AtomicU64,
    other_requests: AtomicU64,
}

/// The values of an [`EgressMeter`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressSnapshot {
    /// Body bytes of GETs delivered to callers: the egress S3 bills.
    pub bytes_from_upstream: u64,
    /// Body bytes sent by `put` and `upload_part` calls that succeeded.
    pub bytes_to_upstream: u64,
    /// `get` calls.
    pub get_requests: u64,
    /// Every other call (list, head, put, multipart, delete, ensure_bucket).
    pub other_requests: u64,
}

impl EgressMeter {
    /// A meter at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Body bytes of GETs delivered to callers so far.
    pub fn bytes_from_upstream(&self) -> u64 {
        self.bytes_from_upstream.load(Ordering::Relaxed)
    }

    /// Body bytes uploaded so far by `put` and `upload_part` calls that succeeded.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.bytes_to_upstream.load(Ordering::Relaxed)
    }

    /// `get` calls so far.
    pub fn get_requests(&self) -> u64 {
        self.get_requests.load(Ordering::Relaxed)
    }

    /// Other calls so far.
    pub fn other_requests(&self) -> u64 {
        self.other_requests.load(Ordering::Relaxed)
    }

    /// All counters (each read atomically, not all at the same instant).
    pub fn snapshot(&self) -> EgressSnapshot {
        EgressSnapshot {
            bytes_from_upstream: self.bytes_from_upstream(),
            bytes_to_upstream: self.bytes_to_upstream(),
            get_requests: self.get_requests(),
            other_requests: self.other_requests(),
        }
    }

    fn count_other(&self) {
        self.other_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts into an [`EgressMeter`]: every byte of every GET body delivered to the caller (so
/// outside a [`RetryingStore`](super::RetryingStore) it counts each byte once, however many
/// resumptions it took), every call, and uploaded bytes.
#[derive(Debug)]
pub struct MeteredStore<S> {
    inner: S,
    meter: Arc<EgressMeter>,
}

impl<S: ObjectStore> MeteredStore<S> {
    /// Wraps `inner`, counting into `meter`.
    pub fn new(inner: S, meter: Arc<EgressMeter>) -> Self {
        Self { inner, meter }
    }

    /// The meter.
    pub fn meter(&self) -> &Arc<EgressMeter> {
        &self.meter
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for MeteredStore<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        self.meter.count_other();
        self.inner.list_page(bucket, prefix, continuation).await
    }

    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        self.meter.count_other();
        self.inner
            .list_delimited(bucket, prefix, delimiter, continuation)
            .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        self.meter.count_other();
        self.inner.head(bucket, key).await
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        self.meter.get_requests.fetch_add(1, Ordering::Relaxed);
        let response = self.inner.get(bucket, key, range, if_match).await?;
        let meter = Arc::clone(&self.meter);
        let body = response
            .body
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    meter
                        .bytes_from_upstream
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed();
        Ok(GetResponse { body, ..response })
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        self.meter.count_other();
        let len = body.len() as u64;
        let meta = self.inner.put_with(bucket, key, body, metadata).await?;
        self.meter
            .bytes_to_upstream
            .fetch_add(len, Ordering::Relaxed);
        Ok(meta)
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        self.meter.count_other();
        self.inner
            .create_multipart_with(bucket, key, metadata)
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
        self.meter.count_other();
        let len = body.len() as u64;
        let etag = self
            .inner
            .upload_part(bucket, key, upload_id, part_number, body)
            .await?;
        self.meter
            .bytes_to_upstream
            .fetch_add(len, Ordering::Relaxed);
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        self.meter.count_other();
        self.inner
            .complete_multipart(bucket, key, upload_id, parts)
            .await
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.meter.count_other();
        self.inner.abort_multipart(bucket, key, upload_id).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.meter.count_other();
        self.inner.delete(bucket, key).await
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.meter.count_other();
        self.inner.ensure_bucket(bucket).await
    }
}
