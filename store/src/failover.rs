//! [`FailoverStore`]: one S3 service reached through several endpoints (the nodes of a Garage
//! cluster, the gateways of a Ceph RGW), any of which answers for the whole service. Each
//! call goes to the endpoint that answered last; when it is unreachable
//! ([`Unavailable`](StoreErrorKind::Unavailable): refused, reset, timed out, 5xx) the call goes
//! on to the next, which becomes the one used from then on. The last endpoint's answer is the
//! call's, so [`RetryingStore`](crate::RetryingStore) around it retries a service that is down
//! as a whole. A body that breaks once streaming is the reader's error, as with one endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    ByteRange, DelimitedPage, GetResponse, ListPage, ObjectMeta, ObjectMetadata, ObjectStore,
    StoreError, StoreErrorKind,
};

/// Several endpoints of one store; see the [module documentation](self).
#[derive(Debug)]
pub struct FailoverStore<S> {
    endpoints: Vec<S>,
    /// The endpoint calls go to first.
    current: AtomicUsize,
}

impl<S: ObjectStore> FailoverStore<S> {
    /// Calls go to `endpoints` in turn, starting with the first. Errors with
    /// [`Invalid`](StoreErrorKind::Invalid) when there is none.
    pub fn new(endpoints: Vec<S>) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid {
                target: crate::Target::new("connect", "", ""),
                reason: "a failover store needs at least one endpoint".to_owned(),
            });
        }
        Ok(Self {
            endpoints,
            current: AtomicUsize::new(0),
        })
    }

    /// The index of the endpoint calls go to first.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

/// Runs `$call` with `$store` bound to each endpoint in turn from the current one, until one
/// answers with anything but `Unavailable` (or the last has answered).
macro_rules! failover {
    ($self:ident, $what:literal, |$store:ident| $call:expr) => {{
        let count = $self.endpoints.len();
        let first = $self.current.load(Ordering::Relaxed) % count;
        let mut attempt = 0;
        loop {
            let index = (first + attempt) % count;
            let $store = &$self.endpoints[index];
            match $call.await {
                Err(err) if err.kind() == StoreErrorKind::Unavailable && attempt + 1 < count => {
                    tracing::warn!(endpoint = index, error = %err, concat!("an endpoint of the store is unavailable for ", $what, "; trying the next"));
                    attempt += 1;
                }
                result => {
                    if attempt > 0 {
                        $self.current.store(index, Ordering::Relaxed);
                    }
                    break result;
                }
            }
        }
    }};
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FailoverStore<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        failover!(self, "a listing", |store| store.list_page(
            bucket,
            prefix,
            continuation.clone()
        ))
    }

    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        failover!(self, "a listing", |store| store.list_delimited(
            bucket,
            prefix,
            delimiter,
            continuation.clone()
        ))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        failover!(self, "a head", |store| store.head(bucket, key))
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        failover!(self, "a get", |store| store
            .get(bucket, key, range, if_match))
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        failover!(self, "a put", |store| store.put_with(
            bucket,
            key,
            body.clone(),
            metadata
        ))
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        failover!(self, "a multipart upload", |store| store
            .create_multipart_with(bucket, key, metadata))
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        failover!(self, "a part", |store| store.upload_part(
            bucket,
            key,
            upload_id,
            part_number,
            body.clone()
        ))
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        failover!(self, "a multipart completion", |store| store
            .complete_multipart(bucket, key, upload_id, parts.clone()))
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        failover!(self, "an abort", |store| store
            .abort_multipart(bucket, key, upload_id))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        failover!(self, "a delete", |store| store.delete(bucket, key))
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        failover!(self, "a bucket check", |store| store.ensure_bucket(bucket))
    }
}
