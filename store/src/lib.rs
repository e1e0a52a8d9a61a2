//! The upstream object store: S3, the source of truth for bytes.
//!
//! [`ObjectStore`] is the contract; [`S3Store`] implements it over aws-sdk-s3. Decorators add
//! behaviour around any store: [`RetryingStore`] retries retryable errors with backoff and
//! resumes interrupted downloads, [`MeteredStore`] counts egress in an [`EgressMeter`].
//! [`build_store`] assembles the stack the service uses: `Metered(Retrying(S3Store))`.
//! [`list_all`], [`put_stream`] and [`upload_file`] are helpers over any store.
//! [`ObjectMetadata`] is what S3 keeps with an object besides its bytes (Content-Type and the
//! other representation headers, `x-amz-meta-*`): written by the `_with` variants of the
//! write methods and helpers, read back by `head` and `get`.

mod error;
mod failover;
#[cfg(feature = "loopback")]
pub mod loopback;
mod metadata;
mod metered;
mod object_key;
mod retry;
mod s3;
mod types;
mod upload;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{BoxError, StoreError, StoreErrorKind, Target};
pub use failover::FailoverStore;
pub use metadata::{ObjectMetadata, USER_METADATA_PREFIX};
pub use metered::{EgressMeter, EgressSnapshot, MeteredStore};
pub use object_key::{LocalCopies, ObjectKey};
pub use retry::{Backoff, Jitter, RetryPolicy, RetryingStore};
pub use s3::{aws_client_parts, S3Store, StaticCredentials, UpstreamSettings};
pub use types::{ByteRange, DelimitedPage, GetResponse, ListPage, ObjectMeta};
pub use upload::{
    list_all, put_stream, put_stream_with, upload_file, upload_file_with, UploadOptions,
    DEFAULT_PART_SIZE, MAX_PARTS, MIN_PART_SIZE,
};

/// An S3-like object store: the contract every upstream backend and decorator implements.
///
/// Keys are compared and listed as byte strings. ETags are given and taken without their
/// surrounding quotes. Every error says through [`StoreError::kind`] what the caller can do;
/// retryable kinds ([`Throttled`](StoreErrorKind::Throttled),
/// [`Unavailable`](StoreErrorKind::Unavailable)) are returned as they are by a plain backend
/// and retried by [`RetryingStore`].
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// One page of the objects of `bucket` whose keys start with `prefix` (empty: all), in
    /// lexicographic (byte) order of keys, starting after the page that returned
    /// `continuation` (`None`: the first page).
    ///
    /// Pages hold at most the server's page size (1000 on S3). [`ListPage::next`] is `Some`
    /// while more objects follow; pass it back to get the next page. Directory-like grouping
    /// (delimiters) is not offered: every object under the prefix is listed.
    ///
    /// An object's [`ObjectMeta::etag`] is empty when the server omitted it from the listing
    /// (S3 and Garage include it; some small servers do not): callers that need it then
    /// [`head`](Self::head) the object. Errors: [`NotFound`](StoreErrorKind::NotFound) when the
    /// bucket does not exist (an empty prefix is not an error: the page is empty).
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError>;

    /// One page of a listing of `bucket` under `prefix` grouped by `delimiter` (not empty), as
    /// S3's ListObjectsV2 with a delimiter: the objects directly under the prefix and the
    /// common prefixes, together at most the server's page size, so that a directory-like
    /// listing of a huge tree costs one request per page, not one per 1,000 keys under it.
    /// Errors as [`list_page`](Self::list_page).
    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError>;

    /// The metadata of one object: size, ETag (never empty), last modification, and the
    /// [`ObjectMetadata`] stored with it.
    ///
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) when the object or the bucket does not
    /// exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Reads an object, whole or a byte range of it, as a stream.
    ///
    /// - `range`: [`ByteRange::All`] reads the whole object; other ranges follow HTTP `Range`
    ///   semantics: a bounded end past the object's end is clamped, a suffix longer than the
    ///   object reads all of it. A range that starts at or past the end, any range of an empty
    ///   object, a bounded range with `start > end_inclusive` and `Suffix(0)` fail with
    ///   [`InvalidRange`](StoreErrorKind::InvalidRange).
    /// - `if_match`: when given, the read only happens if the object's ETag is still this one;
    ///   otherwise it fails with [`PreconditionFailed`](StoreErrorKind::PreconditionFailed).
    ///   Use it for every ranged read of an object whose ETag you already hold, so that bytes
    ///   of two versions are never mixed.
    ///
    /// The response's [`meta`](GetResponse::meta) describes the whole object (its `size` is
    /// the object's size, not the range's), [`range`](GetResponse::range) the inclusive bytes
    /// the body carries: `None` when it is the whole object sent without a `Content-Range`
    /// (asked with [`ByteRange::All`], or by a server that ignored the range: callers of a
    /// ranged read must look). The body yields exactly those bytes, or ends with an error.
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) when the object or the bucket does not
    /// exist.
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError>;

    /// Writes an object in one request, replacing any object with this key.
    ///
    /// Atomic: readers see the old object or the new one, never a mix or a prefix. Returns the
    /// new object's metadata: its ETag (for a single-part write on S3, the MD5 of the bytes in
    /// hex), its size, and `last_modified` when the server reports it (S3 does not on PUT).
    /// For large bodies use [`put_stream`] or [`upload_file`], which switch to multipart.
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) when the bucket does not exist.
    ///
    /// The object has no [`ObjectMetadata`]; [`put_with`](Self::put_with) gives it some.
    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<ObjectMeta, StoreError> {
        self.put_with(bucket, key, body, &ObjectMetadata::default())
            .await
    }

    /// [`put`](Self::put) with `metadata` stored with the object (Content-Type and the other
    /// representation headers, user metadata), as PutObject with those headers; the returned
    /// [`ObjectMeta::metadata`] is `metadata`. Every store and decorator implements this one
    /// (and leaves `put` as it is), so that no layer drops the metadata.
    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError>;

    /// Starts a multipart upload of `key`; returns its upload id. Nothing is visible under
    /// `key` until [`complete_multipart`](Self::complete_multipart). The object will have no
    /// [`ObjectMetadata`]; [`create_multipart_with`](Self::create_multipart_with) gives it some.
    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, StoreError> {
        self.create_multipart_with(bucket, key, &ObjectMetadata::default())
            .await
    }

    /// [`create_multipart`](Self::create_multipart) for an object that will have `metadata`
    /// (S3 takes it when the upload starts, as CreateMultipartUpload's headers). Implement
    /// this one, like [`put_with`](Self::put_with).
    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError>;

    /// Uploads part `part_number` (1 to 10 000) of a multipart upload; returns the part's
    /// ETag, to be passed to [`complete_multipart`](Self::complete_multipart). Every part but
    /// the last must be at least 5 MiB on S3. Uploading a part number again replaces it.
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) for an unknown upload id,
    /// [`Invalid`](StoreErrorKind::Invalid) for a part number out of range.
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError>;

    /// Completes a multipart upload from `(part_number, etag)` pairs: the object appears
    /// atomically, replacing any object with this key. Returns the new object's metadata.
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) for an unknown (or already completed)
    /// upload id, [`Invalid`](StoreErrorKind::Invalid) for missing, undersized or mismatched
    /// parts.
    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError>;

    /// Aborts a multipart upload and frees its parts; nothing appears under `key`.
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) for an unknown upload id.
    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError>;

    /// Deletes an object. Deleting a key that does not exist succeeds (S3 semantics).
    /// Errors: [`NotFound`](StoreErrorKind::NotFound) when the bucket does not exist.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError>;

    /// Creates `bucket` if it does not exist; succeeds if it already exists and is ours.
    /// Errors: [`Denied`](StoreErrorKind::Denied) when it exists but belongs to someone else
    /// or we may not create it.
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError>;
}

#[async_trait]
impl<S: ObjectStore + ?Sized> ObjectStore for Arc<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        (**self).list_page(bucket, prefix, continuation).await
    }

    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        (**self)
            .list_delimited(bucket, prefix, delimiter, continuation)
            .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        (**self).head(bucket, key).await
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        (**self).get(bucket, key, range, if_match).await
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        (**self).put_with(bucket, key, body, metadata).await
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        (**self).create_multipart_with(bucket, key, metadata).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        (**self)
            .upload_part(bucket, key, upload_id, part_number, body)
            .await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        (**self)
            .complete_multipart(bucket, key, upload_id, parts)
            .await
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        (**self).abort_multipart(bucket, key, upload_id).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        (**self).delete(bucket, key).await
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        (**self).ensure_bucket(bucket).await
    }
}

/// The store the service uses: [`S3Store`] for `settings`, wrapped in [`RetryingStore`] (with
/// [`RetryPolicy::default`]) and [`MeteredStore`] counting into `meter`.
pub fn build_store(
    settings: &UpstreamSettings,
    meter: Arc<EgressMeter>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let s3 = S3Store::new(settings)?;
    let retrying = RetryingStore::new(s3, RetryPolicy::default());
    Ok(Arc::new(MeteredStore::new(retrying, meter)))
}

/// [`build_store`] for one service reached through several endpoints (`settings` differing
/// only in the endpoint): [`FailoverStore`] of [`S3Store`]s inside the retries and the meter.
pub fn build_failover_store(
    settings: &[UpstreamSettings],
    meter: Arc<EgressMeter>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let endpoints = settings
        .iter()
        .map(S3Store::new)
        .collect::<Result<Vec<_>, _>>()?;
    let failover = FailoverStore::new(endpoints)?;
    let retrying = RetryingStore::new(failover, RetryPolicy::default());
    Ok(Arc::new(MeteredStore::new(retrying, meter)))
}

/// `etag` without surrounding quotes and without a weak validator prefix (`W/`).
pub fn bare_etag(etag: &str) -> &str {
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
}

#[cfg(test)]
mod tests {
    use super::bare_etag;

    #[test]
    fn etags_lose_quotes_and_weak_prefix() {
        assert_eq!(bare_etag("\"abc\""), "abc");
        assert_eq!(bare_etag("abc"), "abc");
        assert_eq!(bare_etag("W/\"abc-2\""), "abc-2");
        assert_eq!(bare_etag("\""), "\"");
        assert_eq!(bare_etag(""), "");
    }
}
