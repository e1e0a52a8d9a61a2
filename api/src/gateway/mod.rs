//! The office's S3-compatible gateway, on `server.s3_listen` (s3s): boto3, the AWS CLI and
//! rclone work against it unchanged.
//!
//! Reads go through the office: [`OfficeStore`] answers listings and HEADs with the office's
//! writes laid over S3, and GETs stream from the office cache (read-through, one upstream
//! fetch per object however many readers). Writes go to the write-back path: a PUT, a
//! completed multipart upload or a copy is acknowledged once fsynced and journaled, and
//! reaches S3 in the background. Auth is SigV4 with keys from `milepost token create --s3`
//! ([`access`]); errors are S3 XML errors ([`errors`]).

mod access;
mod checksums;
mod completed;
mod conditions;
mod errors;
mod listing;
mod serve;
mod url_encoding;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use milepost_cacher::upstream::bare_etag;
use milepost_cacher::writeback::{BodyChecks, OfficeStore, WriteBack, WriteCondition};
use milepost_cacher::{ByteRange, CacheErrorKind, FetchContext, ObjectKey, ObjectStore};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

pub use access::{RoleAccess, TokenKeys};
pub use serve::{start, GatewayHandle};

/// Called after a write of (bucket, key) through the gateway.
pub type OnWrite = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The S3 operations of the gateway.
#[derive(Clone)]
pub struct Gateway {
    store: Arc<OfficeStore>,
    write_back: Arc<WriteBack>,
    buckets: Arc<Vec<String>>,
    /// Called after a write under the catalog's prefixes, so that the office catalogs it at
    /// once (bucket, key).
    on_write: OnWrite,
    /// Uploads completed recently, for retried CompleteMultipartUploads.
    completed: Arc<completed::CompletedUploads>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(store: Arc<OfficeStore>, buckets: Vec<String>, on_write: OnWrite) -> Self {
        Self {
            write_back: Arc::clone(store.write_back()),
            store,
            buckets: Arc::new(buckets),
            on_write,
            completed: Arc::default(),
        }
    }

    fn owner<T>(req: &S3Request<T>) -> FetchContext {
        FetchContext {
            dataset: None,
            owner: req
                .credentials
                .as_ref()
                .map(|c| format!("s3:{}", c.access_key)),
        }
    }
}

/// Refuses keys the office cannot hold ([`milepost_cacher::objects::check_key`]) before
/// anything is staged or acknowledged.
fn check_key(key: &str) -> S3Result<()> {
    use milepost_cacher::objects::KeyProblem;
    match milepost_cacher::objects::check_key(key) {
        Ok(()) => Ok(()),
        Err(problem @ KeyProblem::TooLong { .. }) => {
            Err(s3_error!(KeyTooLongError, "key {key:?}: {problem}"))
        }
        Err(problem) => Err(s3_error!(InvalidArgument, "key {key:?}: {problem}")),
    }
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_owned())
}

fn timestamp(at: Option<chrono::DateTime<chrono::Utc>>) -> Option<Timestamp> {
    at.map(|at| Timestamp::from(std::time::SystemTime::from(at)))
}

fn byte_range(range: Option<Range>) -> ByteRange {
    match range {
        None => ByteRange::All,
        Some(Range::Int { first, last: None }) => ByteRange::From(first),
        Some(Range::Int {
            first,
            last: Some(last),
        }) => ByteRange::Bounded {
            start: first,
            end_inclusive: last,
        },
        Some(Range::Suffix { length }) => ByteRange::Suffix(length),
    }
}

/// What a GET or HEAD with `partNumber` reads of an object of `etag`; the parts count to
/// answer. An object stored in one piece is part 1, whole (no parts count, as S3 answers);
/// so is the only part of a one-part multipart upload (parts count 1). A part number past the
/// parts count (from a multipart ETag's `-N`) is 416 InvalidPartNumber, as S3 answers. The
/// office keeps no part sizes once a multipart upload is assembled, so a part of an object of
/// several parts is NotImplemented rather than a guess.
fn part_of(etag: &str, part: i32, range: Option<&Range>) -> S3Result<Option<i32>> {
    if range.is_some() {
        return Err(s3_error!(
            InvalidRequest,
            "cannot specify both a Range header and a partNumber query parameter"
        ));
    }
    if !(1..=10_000).contains(&part) {
        return Err(s3_error!(
            InvalidArgument,
            "part number {part} is not an integer between 1 and 10000"
        ));
    }
    let parts = etag
        .rsplit_once('-')
        .and_then(|(_, count)| count.parse::<i32>().ok());
    let count = parts.unwrap_or(1);
    if part > count {
        return Err(errors::invalid_part_number(part));
    }
    if count > 1 {
        return Err(s3_error!(
            NotImplemented,
            "reading one part of an object uploaded in {count} parts is not supported by the office gateway; read it by Range"
        ));
    }
    Ok(parts)
}

fn content_md5(value: Option<&str>) -> S3Result<Option<[u8; 16]>> {
    let Some(value) = value else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
    let md5: [u8; 16] = bytes
        .try_into()
        .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not 16 bytes"))?;
    Ok(Some(md5))
}

fn body_checks(
    length: Option<i64>,
    md5: Option<&str>,
    checksum: Option<milepost_cacher::checksum::ChecksumCheck>,
) -> S3Result<BodyChecks> {
    Ok(BodyChecks {
        length: length.and_then(|l| u64::try_from(l).ok()),
        md5: content_md5(md5)?,
        checksum,
    })
}

/// Whether an `If-Match` / `If-None-Match` condition holds for `current`.
fn condition_holds(condition: &ETagCondition, current: &str) -> bool {
    match condition.as_etag() {
        None => true, // `*`
        Some(tag) => bare_etag(tag.value()) == current,
    }
}

/// The condition of a conditional write (`If-None-Match: *` or `If-Match`), as S3 takes it:
/// `If-None-Match` only with `*`, not both at once.
fn write_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<WriteCondition> {
    match (if_match, if_none_match) {
        (None, None) => Ok(WriteCondition::Always),
        (None, Some(condition)) => match condition.as_etag() {
            None => Ok(WriteCondition::IfAbsent),
            Some(_) => Err(s3_error!(
                NotImplemented,
                "a write takes If-None-Match with `*` only"
            )),
        },
        (Some(condition), None) => Ok(WriteCondition::IfMatch(
            condition.as_etag().map(|tag| tag.value().to_owned()),
        )),
        (Some(_), Some(_)) => Err(s3_error!(
            NotImplemented,
            "a write takes If-Match or If-None-Match, not both"
        )),
    }
}

/// The write condition of a request whose input type has no condition fields (CopyObject):
/// read from its headers.
fn header_write_condition(headers: &http::HeaderMap) -> S3Result<WriteCondition> {
    let parse = |name: &str| -> S3Result<Option<ETagCondition>> {
        headers
            .get(name)
            .map(|value| {
                let value = value
                    .to_str()
                    .map_err(|_| s3_error!(InvalidArgument, "{name} is not text"))?;
                ETagCondition::parse_http_header(value.as_bytes()).map_err(|_| {
                    s3_error!(InvalidArgument, "{name} {value:?} is not an ETag or `*`")
                })
            })
            .transpose()
    };
    write_condition(
        parse("if-match")?.as_ref(),
        parse("if-none-match")?.as_ref(),
    )
}

/// An s3s body needs `Sync`; the office's streams are `Send` only. Polling takes `&mut`, so
/// the mutex is never contended (`get_mut`).
struct SyncBody<S>(std::sync::Mutex<S>);

impl<S: Stream + Unpin> Stream for SyncBody<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        match self.0.get_mut() {
            Ok(inner) => inner.poll_next_unpin(cx),
            Err(poisoned) => poisoned.into_inner().poll_next_unpin(cx),
        }
    }
}

fn blob<S, E>(body: S) -> StreamingBlob
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    StreamingBlob::wrap(SyncBody(std::sync::Mutex::new(body)))
}

impl Gateway {
    fn served(&self, bucket: &str) -> S3Result<()> {
        if self.buckets.iter().any(|b| b == bucket) {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchBucket,
                "bucket {bucket} is not served by this office gateway"
            ))
        }
    }

    fn wrote(&self, bucket: &str, key: &str) {
        (self.on_write)(bucket, key);
    }

    /// Checks that `upload_id` is an upload of `bucket/key` in progress.
    async fn upload_of(&self, upload_id: &str, bucket: &str, key: &str) -> S3Result<()> {
        let info = self
            .write_back
            .multipart()
            .info(upload_id)
            .await
            .map_err(errors::write_back)?;
        if info.bucket != bucket || info.key != key {
            return Err(s3_error!(
                NoSuchUpload,
                "upload {upload_id} is not an upload of {bucket}/{key}"
            ));
        }
        Ok(())
    }

    /// One page of a listing (v1 or v2) of a served bucket; also the `max-keys` in force
    /// (1000 at most, S3's page size).
    async fn list(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        resume: Option<listing::Resume>,
        max_keys: Option<i32>,
    ) -> S3Result<(listing::Listed, i32)> {
        self.served(bucket)?;
        let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000);
        let page = listing::list(
            self.store.as_ref(),
            bucket,
            prefix.unwrap_or_default(),
            delimiter.filter(|d| !d.is_empty()),
            resume,
            usize::try_from(max_keys).unwrap_or(0),
        )
        .await
        .map_err(errors::store)?;
        Ok((page, max_keys))
    }

    /// Whether an `If-Match` ETag other than the current one still names the current bytes:
    /// when write-back puts an office write into S3 as a multipart upload of other part sizes
    /// than the client's, S3 gives it another ETag, and the cache keeps the content under both
    /// names as one file (a hard link). A client reading the object in several ranged GETs
    /// with `If-Match` (the AWS CLI does) must not fail because the name changed under it.
    async fn names_same_bytes(&self, current: &ObjectKey, etag: &str) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let other = ObjectKey::new(&current.bucket, &current.key, bare_etag(etag), current.size);
        let cache = self.write_back.cache();
        let (Some(a), Some(b)) = (cache.content_path(current), cache.content_path(&other)) else {
            return false;
        };
        match (tokio::fs::metadata(a).await, tokio::fs::metadata(b).await) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Evaluates the preconditions of a read or a copy against the object's current version
    /// (an `If-Match` of another ETag may name the same bytes under the name the office gave
    /// them).
    async fn preconditions(
        &self,
        object: &ObjectKey,
        last_modified: Option<chrono::DateTime<chrono::Utc>>,
        conditions: &conditions::Preconditions<'_>,
    ) -> conditions::Verdict {
        let same_bytes = match conditions.if_match {
            Some(condition) if !condition_holds(condition, &object.etag) => {
                match condition.as_etag() {
                    Some(tag) => self.names_same_bytes(object, tag.value()).await,
                    None => false,
                }
            }
            _ => false,
        };
        conditions.evaluate(&object.etag, same_bytes, last_modified)
    }

    /// Checks the preconditions of a GET or HEAD: 412, or 304 with the object's ETag and
    /// Last-Modified.
    async fn check_read_conditions(
        &self,
        object: &ObjectKey,
        last_modified: Option<chrono::DateTime<chrono::Utc>>,
        conditions: &conditions::Preconditions<'_>,
    ) -> S3Result<()> {
        match self.preconditions(object, last_modified, conditions).await {
            conditions::Verdict::Proceed => Ok(()),
            conditions::Verdict::PreconditionFailed => Err(s3_error!(PreconditionFailed)),
            conditions::Verdict::NotModified => Err(errors::not_modified(
                &object.etag,
                timestamp(last_modified).as_ref(),
            )),
        }
    }

    /// The object as the office sees it now, and when it was last modified.
    async fn resolve(
        &self,
        bucket: &str,
        key: &str,
    ) -> S3Result<(ObjectKey, Option<chrono::DateTime<chrono::Utc>>)> {
        let meta = self.store.head(bucket, key).await.map_err(errors::store)?;
        Ok((
            ObjectKey::new(bucket, key, meta.etag, meta.size),
            meta.last_modified,
        ))
    }

    /// Answers a CompleteMultipartUpload that failed with `err`. A NoSuchUpload of an upload
    /// the gateway completed recently, while `bucket/key` is still that upload's object (under
    /// its ETag, or the same bytes under the name S3 gave them), is a client's retry: 200
    /// with the same ETag, as S3 answers.
    async fn retried_complete(
        &self,
        err: s3s::S3Error,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        if *err.code() != s3s::S3ErrorCode::NoSuchUpload {
            return Err(err);
        }
        let Some(completed) = self.completed.get(bucket, key, upload_id) else {
            return Err(err);
        };
        let Ok((current, _)) = self.resolve(bucket, key).await else {
            return Err(err);
        };
        if current.etag != completed && !self.names_same_bytes(&current, &completed).await {
            return Err(err);
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(bucket.to_owned()),
            key: Some(key.to_owned()),
            e_tag: Some(etag(&completed)),
            ..Default::default()
        }))
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .buckets
            .iter()
            .map(|name| Bucket {
                name: Some(name.clone()),
                creation_date: None,
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    /// Buckets are configured, not created: creating a served bucket succeeds (as S3 does
    /// for a bucket one owns in us-east-1; rclone and others create before they copy), any
    /// other is refused.
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = &req.input.bucket;
        if self.buckets.iter().any(|b| b == bucket) {
            Ok(S3Response::new(CreateBucketOutput::default()))
        } else {
            Err(s3_error!(
                AccessDenied,
                "this office gateway serves configured buckets only (server.s3_buckets); {bucket} is not one"
            ))
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.served(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.served(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url_encoded = url_encoding::requested(input.encoding_type.as_ref())?;
        let resume = match input.continuation_token.as_deref() {
            Some(token) => Some(listing::Resume::decode(token).ok_or_else(|| {
                s3_error!(InvalidArgument, "the continuation token is not valid")
            })?),
            None => input.start_after.clone().map(listing::Resume::after),
        };
        let (page, max_keys) = self
            .list(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                resume,
                input.max_keys,
            )
            .await?;
        let key_count = i32::try_from(page.contents.len() + page.prefixes.len()).unwrap_or(0);
        let mut output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.as_ref().map(listing::Resume::encode),
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        };
        if url_encoded {
            url_encoding::encode_v2(&mut output);
        }
        Ok(S3Response::new(output))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url_encoded = url_encoding::requested(input.encoding_type.as_ref())?;
        let (page, max_keys) = self
            .list(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                input.marker.clone().map(listing::Resume::after),
                input.max_keys,
            )
            .await?;
        let next_marker = page.next.as_ref().map(|r| r.marker());
        let mut output = ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            marker: input.marker,
            max_keys: Some(max_keys),
            is_truncated: Some(page.next.is_some()),
            next_marker,
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        };
        if url_encoded {
            url_encoding::encode_v1(&mut output);
        }
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let meta = self
            .store
            .head(&input.bucket, &input.key)
            .await
            .map_err(errors::store)?;
        let object = ObjectKey::new(&input.bucket, &input.key, &meta.etag, meta.size);
        let conditions = conditions::Preconditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        self.check_read_conditions(&object, meta.last_modified, &conditions)
            .await?;
        let parts_count = match input.part_number {
            Some(part) => part_of(&meta.etag, part, input.range.as_ref())?,
            None => None,
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(i64::try_from(meta.size).unwrap_or(i64::MAX)),
            e_tag: Some(etag(&meta.etag)),
            last_modified: timestamp(meta.last_modified),
            parts_count,
            accept_ranges: Some("bytes".to_owned()),
            content_type: Some(
                "application/octet-stream"
                    .parse()
                    .map_err(|_| s3_error!(InternalError))?,
            ),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let ctx = Self::owner(&req);
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let meta = self
            .store
            .head(&input.bucket, &input.key)
            .await
            .map_err(errors::store)?;
        let object = ObjectKey::new(&input.bucket, &input.key, &meta.etag, meta.size);
        let conditions = conditions::Preconditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        self.check_read_conditions(&object, meta.last_modified, &conditions)
            .await?;
        let parts_count = match input.part_number {
            Some(part) => part_of(&meta.etag, part, input.range.as_ref())?,
            None => None,
        };
        let range = byte_range(input.range);
        let mut output = GetObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            last_modified: timestamp(meta.last_modified),
            accept_ranges: Some("bytes".to_owned()),
            parts_count,
            ..Default::default()
        };
        if object.size == 0 {
            if range != ByteRange::All {
                return Err(s3_error!(InvalidRange, "the object is empty"));
            }
            output.content_length = Some(0);
            output.body = Some(blob(
                futures::stream::empty::<Result<Bytes, std::io::Error>>(),
            ));
            return Ok(S3Response::new(output));
        }
        let (start, end) = range.resolve(object.size).ok_or_else(|| {
            s3_error!(
                InvalidRange,
                "range {range} is not satisfiable: the object has {} bytes",
                object.size
            )
        })?;
        output.content_length = Some(i64::try_from(end - start + 1).unwrap_or(i64::MAX));
        if range != ByteRange::All {
            output.content_range = Some(format!("bytes {start}-{end}/{}", object.size));
        }
        match self.write_back.cache().read(&object, range, &ctx).await {
            Ok(read) => output.body = Some(blob(read.body)),
            // Larger than the cache can hold next to its pinned data: stream it through
            // without caching rather than refuse.
            Err(err) if err.kind() == CacheErrorKind::Full => {
                let response = self
                    .store
                    .get(&input.bucket, &input.key, range, Some(&meta.etag))
                    .await
                    .map_err(errors::store)?;
                output.body = Some(blob(response.body));
            }
            Err(err) => return Err(errors::cache(err)),
        }
        Ok(S3Response::new(output))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let condition = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let checksum = checksums::requested(&input, &req.headers, req.trailing_headers.as_ref())?;
        let checks = body_checks(input.content_length, input.content_md5.as_deref(), checksum)?;
        let body = input
            .body
            .map_or_else(|| futures::stream::empty().boxed(), |body| body.boxed());
        let staged = self
            .write_back
            .stage(&input.bucket, &input.key, body, &checks)
            .await
            .map_err(errors::write_back)?;
        let md5 = staged.md5_hex();
        let meta = self
            .write_back
            .commit_put_if(
                &input.bucket,
                &input.key,
                staged.path,
                staged.size,
                md5,
                &condition,
            )
            .await
            .map_err(errors::write_back)?;
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            size: Some(i64::try_from(meta.size).unwrap_or(i64::MAX)),
            ..checksums::reported(staged.checksum.as_ref())
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        self.write_back
            .delete(&input.bucket, &input.key)
            .await
            .map_err(errors::write_back)?;
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        // S3's limit, and its answer past it; nothing is deleted.
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "a DeleteObjects request names {} keys; at most 1000 are allowed",
                input.delete.objects.len()
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for object in input.delete.objects {
            let result = match check_key(&object.key) {
                Ok(()) => self
                    .write_back
                    .delete(&input.bucket, &object.key)
                    .await
                    .map_err(errors::write_back),
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => {
                    self.wrote(&input.bucket, &object.key);
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..Default::default()
                        });
                    }
                }
                Err(err) => failed.push(Error {
                    code: Some(err.code().as_str().to_owned()),
                    key: Some(object.key),
                    message: err.message().map(str::to_owned),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(failed),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let ctx = Self::owner(&req);
        let condition = header_write_condition(&req.headers)?;
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copies from access points are not supported"
            ));
        };
        self.served(source_bucket)?;
        check_key(source_key)?;
        let (source, source_modified) = self.resolve(source_bucket, source_key).await?;
        // S3 answers 412 for every failed source condition, "not modified" included.
        let conditions = conditions::Preconditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        if self
            .preconditions(&source, source_modified, &conditions)
            .await
            != conditions::Verdict::Proceed
        {
            return Err(s3_error!(PreconditionFailed));
        }
        let body = if source.size == 0 {
            futures::stream::empty().boxed()
        } else {
            self.write_back
                .cache()
                .read(&source, ByteRange::All, &ctx)
                .await
                .map_err(errors::cache)?
                .body
        };
        let checks = BodyChecks {
            length: Some(source.size),
            ..BodyChecks::default()
        };
        let staged = self
            .write_back
            .stage(&input.bucket, &input.key, body, &checks)
            .await
            .map_err(errors::write_back)?;
        let md5 = staged.md5_hex();
        let meta = self
            .write_back
            .commit_put_if(
                &input.bucket,
                &input.key,
                staged.path,
                staged.size,
                md5,
                &condition,
            )
            .await
            .map_err(errors::write_back)?;
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag)),
                last_modified: timestamp(meta.last_modified),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let upload_id = self
            .write_back
            .multipart()
            .create(&input.bucket, &input.key)
            .await
            .map_err(errors::write_back)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let checksum = checksums::requested(&input, &req.headers, req.trailing_headers.as_ref())?;
        let checks = body_checks(input.content_length, input.content_md5.as_deref(), checksum)?;
        let body = input
            .body
            .map_or_else(|| futures::stream::empty().boxed(), |body| body.boxed());
        let part = self
            .write_back
            .multipart()
            .upload_part(
                &input.upload_id,
                &input.bucket,
                &input.key,
                input.part_number,
                body,
                &checks,
            )
            .await
            .map_err(errors::write_back)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part.etag)),
            ..checksums::reported(part.checksum.as_ref())
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        let multipart = self.write_back.multipart();
        self.upload_of(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = usize::try_from(input.max_parts.unwrap_or(1000).clamp(1, 1000)).unwrap_or(1000);
        let all: Vec<_> = multipart
            .list_parts(&input.upload_id)
            .await
            .map_err(errors::write_back)?
            .into_iter()
            .filter(|p| p.number > marker)
            .collect();
        let truncated = all.len() > max;
        let parts: Vec<Part> = all
            .into_iter()
            .take(max)
            .map(|p| Part {
                part_number: Some(p.number),
                e_tag: Some(etag(&p.etag)),
                size: Some(i64::try_from(p.size).unwrap_or(i64::MAX)),
                last_modified: timestamp(p.last_modified),
                ..Default::default()
            })
            .collect();
        let next = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            max_parts: input.max_parts,
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self
            .write_back
            .multipart()
            .list_uploads(&input.bucket, &prefix)
            .await
            .map_err(errors::write_back)?
            .into_iter()
            .map(|(id, info)| MultipartUpload {
                key: Some(info.key),
                upload_id: Some(id),
                initiated: timestamp(Some(info.initiated)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        check_key(&input.key)?;
        let condition = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let multipart = self.write_back.multipart();
        if let Err(err) = self
            .upload_of(&input.upload_id, &input.bucket, &input.key)
            .await
        {
            return self
                .retried_complete(err, &input.bucket, &input.key, &input.upload_id)
                .await;
        }
        let parts: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag.map(|t| t.value().to_owned()).unwrap_or_default(),
                )
            })
            .collect();
        let staging = self.write_back.staging_path(&input.bucket, &input.key);
        let assembled = match multipart.assemble(&input.upload_id, &parts, staging).await {
            Ok(assembled) => assembled,
            // A retry that came while the first attempt was completing the upload.
            Err(err) => {
                return self
                    .retried_complete(
                        errors::write_back(err),
                        &input.bucket,
                        &input.key,
                        &input.upload_id,
                    )
                    .await
            }
        };
        let meta = self
            .write_back
            .commit_put_if(
                &input.bucket,
                &input.key,
                assembled.path,
                assembled.size,
                assembled.etag,
                &condition,
            )
            .await
            .map_err(errors::write_back)?;
        self.completed
            .insert(&input.bucket, &input.key, &input.upload_id, &meta.etag);
        if let Err(err) = multipart.remove(&input.upload_id).await {
            // The object is stored and journaled; the left-over parts are only disk space.
            tracing::warn!(upload_id = %input.upload_id, error = %err, "cannot remove the parts of a completed upload");
        }
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.served(&input.bucket)?;
        let multipart = self.write_back.multipart();
        self.upload_of(&input.upload_id, &input.bucket, &input.key)
            .await?;
        multipart
            .remove(&input.upload_id)
            .await
            .map_err(errors::write_back)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}
