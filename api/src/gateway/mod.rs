//! The office's S3-compatible gateway, on `server.s3_listen` (s3s): boto3, the AWS CLI and
//! rclone work against it unchanged.
//!
//! A transport adapter: it turns S3 requests into calls of the office's one object API
//! ([`OfficeObjects`]: served buckets, key rules, resolution, conditions, ranges, reads
//! through the cache, writes through write-back) and its answers and [`ObjectError`]s into
//! S3's ([`errors`]). What is S3's own stays here: the XML shapes, SigV4 auth with keys from
//! `milepost token create --s3` ([`access`]), additional-checksum headers and trailers
//! ([`checksums`]) and URL-encoded listings ([`url_encoding`]).
//!
//! [`ObjectError`]: milepost_cacher::objects::ObjectError
//!
//! (Over 600 lines: one `impl S3 for Gateway` (s3s): every S3 operation's adapter must live in that one impl block.)

mod access;
mod checksums;
mod errors;
mod serve;
mod url_encoding;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use milepost_cacher::objects::{
    self, EtagMatch, IncomingBody, ListRequest, ObjectError, OfficeObjects, ReadConditions,
    ReadRequest, Resume,
};
use milepost_cacher::writeback::{BodyChecks, WriteCondition};
use milepost_cacher::FetchContext;
use milepost_store::{ByteRange, ObjectMetadata};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

pub use access::{RoleAccess, TokenKeys};
pub use serve::{start, GatewayHandle};

/// Called after a write of (bucket, key) through the gateway.
pub type OnWrite = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The S3 operations of the gateway.
#[derive(Clone)]
pub struct Gateway {
    objects: Arc<OfficeObjects>,
    /// Called after a write under the catalog's prefixes, so that the office catalogs it at
    /// once (bucket, key).
    on_write: OnWrite,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("objects", &self.objects)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(objects: Arc<OfficeObjects>, on_write: OnWrite) -> Self {
        Self { objects, on_write }
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

    fn wrote(&self, bucket: &str, key: &str) {
        (self.on_write)(bucket, key);
    }
}

/// Maps an office error into the S3 error a client reads.
fn s3(err: ObjectError) -> s3s::S3Error {
    errors::object(err)
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_owned())
}

fn timestamp(at: Option<chrono::DateTime<chrono::Utc>>) -> Option<Timestamp> {
    at.map(|at| Timestamp::from(std::time::SystemTime::from(at)))
}

fn date(at: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let at = time::OffsetDateTime::from(at.clone());
    chrono::DateTime::from_timestamp(at.unix_timestamp(), at.nanosecond())
}

fn byte_range(range: Option<&Range>) -> Option<ByteRange> {
    range.map(|range| match *range {
        Range::Int { first, last: None } => ByteRange::From(first),
        Range::Int {
            first,
            last: Some(last),
        } => ByteRange::Bounded {
            start: first,
            end_inclusive: last,
        },
        Range::Suffix { length } => ByteRange::Suffix(length),
    })
}

fn etag_match(condition: Option<&ETagCondition>) -> Option<EtagMatch> {
    condition.map(|condition| match condition.as_etag() {
        None => EtagMatch::Any,
        Some(tag) => EtagMatch::Tags(vec![tag.value().to_owned()]),
    })
}

fn read_conditions(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> ReadConditions {
    ReadConditions {
        if_match: etag_match(if_match),
        if_none_match: etag_match(if_none_match),
        if_modified_since: if_modified_since.and_then(date),
        if_unmodified_since: if_unmodified_since.and_then(date),
    }
}

fn copy_source(source: &CopySource) -> S3Result<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(
            NotImplemented,
            "copies from access points and outposts are not supported"
        )),
    }
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

/// The metadata a write carries (PutObject, CreateMultipartUpload, CopyObject with
/// `REPLACE`). `aws-chunked` is how the body was sent, not how the object is encoded: S3 drops
/// it from the stored Content-Encoding, and so does the office.
macro_rules! written_metadata {
    ($input:expr) => {
        ObjectMetadata {
            content_type: $input.content_type.clone(),
            cache_control: $input.cache_control.clone(),
            content_disposition: $input.content_disposition.clone(),
            content_encoding: $input.content_encoding.as_deref().and_then(stored_encoding),
            content_language: $input.content_language.clone(),
            expires: $input.expires.as_ref().and_then(http_date),
            user: ObjectMetadata::user_from($input.metadata.clone().unwrap_or_default()),
        }
    };
}

/// The office's read request of a HEAD or GET (the same fields in both inputs).
macro_rules! read_request {
    ($input:expr) => {
        ReadRequest {
            range: byte_range($input.range.as_ref()),
            part_number: $input.part_number,
            conditions: read_conditions(
                $input.if_match.as_ref(),
                $input.if_none_match.as_ref(),
                $input.if_modified_since.as_ref(),
                $input.if_unmodified_since.as_ref(),
            ),
        }
    };
}

/// Fills the representation headers and user metadata of a HEAD or GET answer. An object
/// written without a Content-Type has S3's default, `binary/octet-stream`.
macro_rules! answer_metadata {
    ($output:expr, $metadata:expr) => {{
        let metadata: &ObjectMetadata = $metadata;
        $output.content_type = Some(
            metadata
                .content_type
                .clone()
                .unwrap_or_else(|| "binary/octet-stream".to_owned()),
        );
        $output.cache_control = metadata.cache_control.clone();
        $output.content_disposition = metadata.content_disposition.clone();
        $output.content_encoding = metadata.content_encoding.clone();
        $output.content_language = metadata.content_language.clone();
        $output.expires = metadata.expires.as_deref().and_then(parse_http_date);
        $output.metadata =
            (!metadata.user.is_empty()).then(|| metadata.user.clone().into_iter().collect());
    }};
}

fn stored_encoding(value: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

fn http_date(at: &Timestamp) -> Option<String> {
    let mut text = Vec::new();
    at.format(TimestampFormat::HttpDate, &mut text).ok()?;
    String::from_utf8(text).ok()
}

fn parse_http_date(text: &str) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, text).ok()
}

/// A GET's `response-*` query parameters.
struct ResponseOverrides {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
}

fn incoming(body: Option<StreamingBlob>) -> IncomingBody {
    match body {
        Some(body) => body.map_err(Into::into).boxed(),
        None => futures::stream::empty().boxed(),
    }
}

/// The condition of a conditional write (`If-None-Match`, `If-Match`), not both at once.
/// (S3 takes `If-None-Match: *` only; an ETag there is taken as RGW and HTTP do.)
fn write_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<WriteCondition> {
    match (if_match, if_none_match) {
        (None, None) => Ok(WriteCondition::Always),
        (None, Some(condition)) => match condition.as_etag() {
            None => Ok(WriteCondition::IfAbsent),
            Some(tag) => Ok(WriteCondition::IfNoneMatch(tag.value().to_owned())),
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
    /// One page of a listing (v1 or v2) of a served bucket; also the `max-keys` in force
    /// (1000 at most, S3's page size).
    async fn list(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        resume: Option<Resume>,
        max_keys: Option<i32>,
    ) -> S3Result<(objects::Listed, i32)> {
        let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000);
        let page = self
            .objects
            .list(
                bucket,
                ListRequest {
                    prefix: prefix.unwrap_or_default(),
                    delimiter,
                    resume,
                    max_keys: usize::try_from(max_keys).unwrap_or(0),
                },
            )
            .await
            .map_err(s3)?;
        Ok((page, max_keys))
    }
}

/// The owner a listing names: the office's buckets belong to the office, not to one key.
fn office_owner() -> Owner {
    Owner {
        id: Some("milepost-office".to_owned()),
        display_name: Some("milepost office".to_owned()),
    }
}

/// A listing's keys and common prefixes in S3's shapes.
fn listed(page: objects::Listed) -> (Vec<Object>, Vec<CommonPrefix>) {
    let contents = page
        .contents
        .into_iter()
        .map(|object| Object {
            e_tag: (!object.etag.is_empty()).then(|| etag(&object.etag)),
            size: Some(i64::try_from(object.size).unwrap_or(i64::MAX)),
            last_modified: timestamp(object.last_modified),
            key: Some(object.key),
            ..Default::default()
        })
        .collect();
    let prefixes = page
        .prefixes
        .into_iter()
        .map(|prefix| CommonPrefix {
            prefix: Some(prefix),
        })
        .collect();
    (contents, prefixes)
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .objects
            .served()
            .names()
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
        if self.objects.served().serves(bucket) {
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
        self.objects.check_bucket(&req.input.bucket).map_err(s3)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.objects.check_bucket(&req.input.bucket).map_err(s3)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url_encoded = url_encoding::requested(input.encoding_type.as_ref())?;
        let resume = match input.continuation_token.as_deref() {
            Some(token) => Some(Resume::decode(token).ok_or_else(|| {
                s3_error!(InvalidArgument, "the continuation token is not valid")
            })?),
            None => input.start_after.clone().map(Resume::after),
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
        let next = page.next.as_ref().map(Resume::encode);
        let (mut contents, prefixes) = listed(page);
        if input.fetch_owner == Some(true) {
            for object in &mut contents {
                object.owner = Some(office_owner());
            }
        }
        let key_count = i32::try_from(contents.len() + prefixes.len()).unwrap_or(0);
        let mut output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            // An empty delimiter is no delimiter, and S3 does not echo it.
            delimiter: input.delimiter.filter(|d| !d.is_empty()),
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(next.is_some()),
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
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
                input.marker.clone().map(Resume::after),
                input.max_keys,
            )
            .await?;
        let next_marker = page.next.as_ref().map(Resume::marker);
        let (mut contents, prefixes) = listed(page);
        // A v1 listing names every object's owner, as S3's does.
        for object in &mut contents {
            object.owner = Some(office_owner());
        }
        let mut output = ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter.filter(|d| !d.is_empty()),
            marker: input.marker,
            max_keys: Some(max_keys),
            is_truncated: Some(next_marker.is_some()),
            next_marker,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
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
        let request = read_request!(input);
        let head = self
            .objects
            .head(&input.bucket, &input.key, &request)
            .await
            .map_err(s3)?;
        let mut output = HeadObjectOutput {
            content_length: Some(i64::try_from(head.content_length).unwrap_or(i64::MAX)),
            content_range: head.content_range(),
            e_tag: Some(etag(head.etag())),
            last_modified: timestamp(head.resolved.last_modified),
            parts_count: head.parts_count,
            accept_ranges: Some("bytes".to_owned()),
            ..Default::default()
        };
        answer_metadata!(output, &head.resolved.metadata);
        Ok(S3Response::new(output))
    }

    /// GetObjectAttributes: the attributes asked for that the office keeps (ETag, size,
    /// storage class); it keeps no additional checksums once a write is stored, and an object
    /// assembled from parts no part list.
    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let input = req.input;
        let head = self
            .objects
            .head(&input.bucket, &input.key, &ReadRequest::default())
            .await
            .map_err(s3)?;
        // One `x-amz-object-attributes` header may carry several, comma-separated.
        let asked = |name: &str| {
            input.object_attributes.iter().any(|attribute| {
                attribute
                    .as_str()
                    .split(',')
                    .any(|one| one.trim().eq_ignore_ascii_case(name))
            })
        };
        Ok(S3Response::new(GetObjectAttributesOutput {
            e_tag: asked(ObjectAttributes::ETAG).then(|| etag(head.etag())),
            object_size: asked(ObjectAttributes::OBJECT_SIZE)
                .then(|| i64::try_from(head.size()).unwrap_or(i64::MAX)),
            storage_class: asked(ObjectAttributes::STORAGE_CLASS)
                .then(|| StorageClass::from_static(StorageClass::STANDARD)),
            last_modified: timestamp(head.resolved.last_modified),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let reader = Self::owner(&req);
        let input = req.input;
        let request = read_request!(input);
        let overrides = ResponseOverrides {
            content_type: input.response_content_type.clone(),
            cache_control: input.response_cache_control.clone(),
            content_disposition: input.response_content_disposition.clone(),
            content_encoding: input.response_content_encoding.clone(),
            content_language: input.response_content_language.clone(),
            expires: input.response_expires.clone(),
        };
        let read = self
            .objects
            .get(&input.bucket, &input.key, &request, &reader)
            .await
            .map_err(s3)?;
        let head = read.head;
        let mut output = GetObjectOutput {
            e_tag: Some(etag(head.etag())),
            last_modified: timestamp(head.resolved.last_modified),
            accept_ranges: Some("bytes".to_owned()),
            parts_count: head.parts_count,
            content_length: Some(i64::try_from(head.content_length).unwrap_or(i64::MAX)),
            content_range: head.content_range(),
            body: Some(blob(read.body)),
            ..Default::default()
        };
        answer_metadata!(output, &head.resolved.metadata);
        // `response-*` query parameters override the stored headers in this answer.
        if let Some(value) = overrides.content_type {
            output.content_type = Some(value);
        }
        if let Some(value) = overrides.cache_control {
            output.cache_control = Some(value);
        }
        if let Some(value) = overrides.content_disposition {
            output.content_disposition = Some(value);
        }
        if let Some(value) = overrides.content_encoding {
            output.content_encoding = Some(value);
        }
        if let Some(value) = overrides.content_language {
            output.content_language = Some(value);
        }
        if let Some(value) = overrides.expires {
            output.expires = Some(value);
        }
        Ok(S3Response::new(output))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let condition = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let checksum = checksums::requested(&input, &req.headers, req.trailing_headers.as_ref())?;
        let checks = body_checks(input.content_length, input.content_md5.as_deref(), checksum)?;
        let metadata = written_metadata!(input);
        let written = self
            .objects
            .put(
                &input.bucket,
                &input.key,
                incoming(input.body),
                &checks,
                &condition,
                metadata,
            )
            .await
            .map_err(s3)?;
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&written.meta.etag)),
            size: Some(i64::try_from(written.meta.size).unwrap_or(i64::MAX)),
            ..checksums::reported(written.checksum.as_ref())
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.objects
            .delete(&input.bucket, &input.key)
            .await
            .map_err(s3)?;
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.objects.check_bucket(&input.bucket).map_err(s3)?;
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
            match self.objects.delete(&input.bucket, &object.key).await {
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
                    code: Some(err.kind().s3_code().to_owned()),
                    key: Some(object.key),
                    message: Some(err.message().to_owned()),
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
        let reader = Self::owner(&req);
        let condition = header_write_condition(&req.headers)?;
        let input = req.input;
        let (source_bucket, source_key) = copy_source(&input.copy_source)?;
        let source = objects::CopySource {
            bucket: source_bucket.to_owned(),
            key: source_key.to_owned(),
            range: None,
            conditions: read_conditions(
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            ),
        };
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|directive| directive.as_str() == MetadataDirective::REPLACE)
            .then(|| written_metadata!(input));
        let written = self
            .objects
            .copy(
                &source,
                &input.bucket,
                &input.key,
                &condition,
                replace,
                &reader,
            )
            .await
            .map_err(s3)?;
        self.wrote(&input.bucket, &input.key);
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&written.meta.etag)),
                last_modified: timestamp(written.meta.last_modified),
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
        let metadata = written_metadata!(input);
        let upload_id = self
            .objects
            .create_upload(&input.bucket, &input.key, metadata)
            .await
            .map_err(s3)?;
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
        let checksum = checksums::requested(&input, &req.headers, req.trailing_headers.as_ref())?;
        let checks = body_checks(input.content_length, input.content_md5.as_deref(), checksum)?;
        let (part_etag, checksum) = self
            .objects
            .upload_part(
                &input.upload_id,
                &input.bucket,
                &input.key,
                input.part_number,
                incoming(input.body),
                &checks,
            )
            .await
            .map_err(s3)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part_etag)),
            ..checksums::reported(checksum.as_ref())
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let reader = Self::owner(&req);
        let input = req.input;
        let (source_bucket, source_key) = copy_source(&input.copy_source)?;
        let range = match input.copy_source_range.as_deref() {
            None => None,
            Some(value) => Some(objects::parse_range_header(value).ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "x-amz-copy-source-range {value:?} is not of the form bytes=first-last"
                )
            })?),
        };
        let source = objects::CopySource {
            bucket: source_bucket.to_owned(),
            key: source_key.to_owned(),
            range,
            conditions: read_conditions(
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            ),
        };
        let part_etag = self
            .objects
            .upload_part_copy(
                &input.upload_id,
                &input.bucket,
                &input.key,
                input.part_number,
                &source,
                &reader,
            )
            .await
            .map_err(s3)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&part_etag)),
                last_modified: timestamp(Some(chrono::Utc::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = usize::try_from(input.max_parts.unwrap_or(1000).clamp(1, 1000)).unwrap_or(1000);
        let all: Vec<_> = self
            .objects
            .list_parts(&input.upload_id, &input.bucket, &input.key)
            .await
            .map_err(s3)?
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
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self
            .objects
            .list_uploads(&input.bucket, &prefix)
            .await
            .map_err(s3)?
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
        let condition = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
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
        let meta = self
            .objects
            .complete_upload(
                &input.upload_id,
                &input.bucket,
                &input.key,
                &parts,
                &condition,
            )
            .await
            .map_err(s3)?;
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
        self.objects
            .abort_upload(&input.upload_id, &input.bucket, &input.key)
            .await
            .map_err(s3)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}
