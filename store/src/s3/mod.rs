//! [`S3Store`]: the [`ObjectStore`] over aws-sdk-s3, for AWS S3 and S3-compatible servers.
//!
//! (Over 600 lines: one `impl ObjectStore for S3Store`, a method per S3 operation; the request building, error mapping, metadata and response parsing it needs are already in the submodules.)

mod credentials;
mod errors;
mod metadata;
mod response;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider, SharedHttpClient,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;

use credentials::LazyDefaultChain;
pub use credentials::StaticCredentials;
use errors::{sdk_error, Ctx};
use metadata::{object_metadata, with_metadata, Expires};
use response::{body_stream, content_length, etag, parse_content_range, quoted, size, to_chrono};

use super::{
    bare_etag, ByteRange, DelimitedPage, GetResponse, ListPage, ObjectMeta, ObjectMetadata,
    ObjectStore, StoreError, Target,
};

/// Where the upstream S3 is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// The endpoint URL (`http://garage.office:3900`); `None` (or empty) for AWS S3, whose
    /// endpoint follows from the region.
    pub endpoint: Option<String>,
    /// The region to sign requests for (`us-east-1`; Garage's default is `garage`).
    pub region: String,
    /// Address buckets in the path (`http://host/bucket/key`) rather than in the host name
    /// (`http://bucket.host/key`). Most self-hosted servers need it.
    pub force_path_style: bool,
    /// A static key pair; `None` for the standard AWS chain (`AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`, profiles, web identity, ECS and EC2 instance metadata).
    pub credentials: Option<StaticCredentials>,
    /// The longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// The longest wait, in one attempt, for the response headers after sending a request
    /// (for an upload this includes sending the body). Reading a response body is guarded by
    /// the SDK's stalled-stream protection instead.
    pub read_timeout: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_owned(),
            force_path_style: false,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// An [`ObjectStore`] over aws-sdk-s3.
///
/// Configured for S3-compatible servers as much as for AWS: flexible checksums are only
/// computed or validated when an operation requires them (small servers reject the
/// `x-amz-checksum-*` trailers), and the SDK's own retries are off: wrap the store in
/// [`RetryingStore`](super::RetryingStore), which also resumes interrupted downloads. TLS is
/// rustls with the ring provider.
///
/// Beyond the [`ObjectStore`] contract it checks what the server answers: a `get` with
/// `if_match` whose answer carries another ETag fails with
/// [`PreconditionFailed`](super::StoreErrorKind::PreconditionFailed) even if the server ignored
/// `If-Match`; a body longer than announced fails with
/// [`Corrupt`](super::StoreErrorKind::Corrupt), a shorter one with
/// [`Unavailable`](super::StoreErrorKind::Unavailable).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// The endpoint (or `aws`), for `Debug`.
    endpoint: String,
    region: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store for `settings`. Does not connect: the first call does. Fails with
    /// [`Invalid`](super::StoreErrorKind::Invalid) for an endpoint that is not an `http://` or
    /// `https://` URL, an empty region or a zero timeout.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, StoreError> {
        let invalid =
            |reason: String| StoreError::invalid(Target::new("configure", "", ""), reason);
        let endpoint = settings
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if let Some(endpoint) = endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty()) {
                return Err(invalid(format!(
                    "upstream endpoint `{endpoint}` is not an http:// or https:// url"
                )));
            }
        }
        if settings.region.trim().is_empty() {
            return Err(invalid("upstream region is empty".to_owned()));
        }
        if settings.connect_timeout.is_zero() || settings.read_timeout.is_zero() {
            return Err(invalid(
                "upstream timeouts must be longer than zero".to_owned(),
            ));
        }

        let region = Region::new(settings.region.clone());
        let (http_client, credentials) =
            aws_client_parts(&settings.region, settings.credentials.as_ref());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .http_client(http_client)
            .credentials_provider(credentials)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .force_path_style(settings.force_path_style);
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            endpoint: endpoint.unwrap_or("aws").to_owned(),
            region: settings.region.clone(),
        })
    }
}

/// The HTTP client (rustls over ring) and the credentials provider of an AWS SDK client:
/// the static key pair `credentials`, or else the standard AWS chain for `region`, built on
/// first use. Every AWS client of Milepost's uses these (the S3 store, the catalog's event
/// queue), so they reach AWS and authenticate the same way.
pub fn aws_client_parts(
    region: &str,
    credentials: Option<&StaticCredentials>,
) -> (SharedHttpClient, SharedCredentialsProvider) {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let credentials = match credentials {
        Some(keys) => SharedCredentialsProvider::new(Credentials::new(
            keys.access_key_id.clone(),
            keys.secret_access_key.clone(),
            None,
            None,
            "milepost-static",
        )),
        None => SharedCredentialsProvider::new(LazyDefaultChain::new(
            Region::new(region.to_owned()),
            http_client.clone(),
        )),
    };
    (http_client, credentials)
}

impl S3Store {
    /// The SDK client, for calls the [`ObjectStore`] contract does not offer (tests of the
    /// office gateway use it to speak raw S3).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The objects of a ListObjectsV2 answer.
fn listed_objects(
    ctx: &Ctx,
    bucket: &str,
    contents: &[aws_sdk_s3::types::Object],
) -> Result<Vec<ObjectMeta>, StoreError> {
    contents
        .iter()
        .map(|object| {
            let key = object
                .key()
                .ok_or_else(|| StoreError::corrupt(ctx.target(), "a listed object has no key"))?;
            Ok(ObjectMeta {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                size: size(ctx, object.size(), "a listed object's size")?,
                etag: object.e_tag().map(bare_etag).unwrap_or_default().to_owned(),
                last_modified: to_chrono(object.last_modified()),
                // Listings carry none of it.
                metadata: ObjectMetadata::default(),
            })
        })
        .collect()
}

/// The continuation token of a ListObjectsV2 answer's next page, `None` on the last page.
fn next_page(
    ctx: &Ctx,
    out: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
) -> Result<Option<String>, StoreError> {
    if !out.is_truncated().unwrap_or(false) {
        return Ok(None);
    }
    out.next_continuation_token()
        .filter(|t| !t.is_empty())
        .map(|token| Some(token.to_owned()))
        .ok_or_else(|| {
            StoreError::corrupt(
                ctx.target(),
                "a truncated listing has no continuation token",
            )
        })
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        let ctx = Ctx::new("list", bucket, prefix);
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix((!prefix.is_empty()).then(|| prefix.to_owned()))
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        let objects = listed_objects(&ctx, bucket, out.contents())?;
        let next = next_page(&ctx, &out)?;
        Ok(ListPage { objects, next })
    }

    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        let ctx = Ctx::new("list", bucket, prefix);
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix((!prefix.is_empty()).then(|| prefix.to_owned()))
            .delimiter(delimiter)
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        let objects = listed_objects(&ctx, bucket, out.contents())?;
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        let next = next_page(&ctx, &out)?;
        Ok(DelimitedPage {
            objects,
            prefixes,
            next,
        })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        let ctx = Ctx::new("head", bucket, key);
        let out = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        Ok(ObjectMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: size(&ctx, out.content_length(), "content-length")?,
            etag: etag(&ctx, out.e_tag())?,
            last_modified: to_chrono(out.last_modified()),
            metadata: object_metadata!(out),
        })
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        let mut ctx = Ctx::new("get", bucket, key);
        ctx.range = Some(range);
        ctx.if_match = if_match.map(bare_etag);
        if range.is_empty() {
            return Err(StoreError::InvalidRange {
                target: ctx.target(),
                range: range.to_string(),
            });
        }
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range.to_header())
            .set_if_match(ctx.if_match.map(quoted))
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;

        let etag = etag(&ctx, out.e_tag())?;
        if let Some(expected) = ctx.if_match {
            if etag != expected {
                return Err(StoreError::PreconditionFailed {
                    target: ctx.target(),
                    detail: format!(
                        "asked for etag {expected}, the upstream answered with etag {etag}"
                    ),
                });
            }
        }
        let length = size(&ctx, out.content_length(), "content-length")?;
        let (object_size, returned) = match out.content_range() {
            Some(header) => {
                let (start, end, total) = parse_content_range(header).ok_or_else(|| {
                    StoreError::corrupt(ctx.target(), format!("bad content-range `{header}`"))
                })?;
                if end - start + 1 != length {
                    return Err(StoreError::corrupt(
                        ctx.target(),
                        format!("content-range `{header}` does not match content-length {length}"),
                    ));
                }
                (total, Some((start, end)))
            }
            // The whole object: asked for, or the server ignored the range.
            None => (length, None),
        };
        let meta = ObjectMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: object_size,
            etag,
            last_modified: to_chrono(out.last_modified()),
            metadata: object_metadata!(out),
        };
        Ok(GetResponse {
            meta,
            range: returned,
            body: body_stream(ctx.target(), out.body, length),
        })
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        let ctx = Ctx::new("put", bucket, key);
        let size = body.len() as u64;
        let expires = Expires::of(&ctx, metadata)?;
        let request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_length(content_length(&ctx, size)?)
            .body(ByteStream::from(body));
        let request = with_metadata!(request, metadata, expires);
        let out = match expires.raw() {
            None => request.send().await,
            Some(raw) => request.customize().mutate_request(raw).send().await,
        }
        .map_err(|e| sdk_error(&ctx, e))?;
        Ok(ObjectMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            etag: etag(&ctx, out.e_tag())?,
            last_modified: None,
            metadata: metadata.clone(),
        })
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        let ctx = Ctx::new("create_multipart", bucket, key);
        let expires = Expires::of(&ctx, metadata)?;
        let request = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key);
        let request = with_metadata!(request, metadata, expires);
        let out = match expires.raw() {
            None => request.send().await,
            Some(raw) => request.customize().mutate_request(raw).send().await,
        }
        .map_err(|e| sdk_error(&ctx, e))?;
        out.upload_id()
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| StoreError::corrupt(ctx.target(), "the answer has no upload id"))
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let ctx = Ctx::new("upload_part", bucket, key);
        if !(1..=10_000).contains(&part_number) {
            return Err(StoreError::invalid(
                ctx.target(),
                format!("part number {part_number} is not between 1 and 10000"),
            ));
        }
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(content_length(&ctx, body.len() as u64)?)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        etag(&ctx, out.e_tag())
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        mut parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        let ctx = Ctx::new("complete_multipart", bucket, key);
        parts.sort_by_key(|(number, _)| *number);
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(number, etag)| {
                        CompletedPart::builder()
                            .part_number(*number)
                            .e_tag(quoted(bare_etag(etag)))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        let etag = etag(&ctx, out.e_tag())?;
        // The answer has no size: ask.
        let meta = self.head(bucket, key).await?;
        if meta.etag != etag {
            tracing::warn!(
                bucket,
                key,
                completed = %etag,
                current = %meta.etag,
                "object overwritten right after its multipart upload completed"
            );
        }
        Ok(meta)
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let ctx = Ctx::new("abort_multipart", bucket, key);
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let ctx = Ctx::new("delete", bucket, key);
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&ctx, e))?;
        Ok(())
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let ctx = Ctx::new("ensure_bucket", bucket, "");
        if self.bucket_exists(&ctx).await? {
            return Ok(());
        }
        let mut create = self.client.create_bucket().bucket(bucket);
        // us-east-1 is the one region that takes no location constraint.
        if self.region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(service)) => match service.err().code() {
                Some("BucketAlreadyOwnedByYou") => Ok(()),
                // Someone else's bucket, or ours created meanwhile (some servers, s3s-fs among
                // them, also answer this for a bucket of ours): only the latter is fine.
                Some("BucketAlreadyExists") => match self.bucket_exists(&ctx).await {
                    Ok(true) => Ok(()),
                    _ => Err(StoreError::Denied {
                        target: ctx.target(),
                        code: "BucketAlreadyExists".to_owned(),
                    }),
                },
                _ => Err(sdk_error(&ctx, SdkError::ServiceError(service))),
            },
            Err(err) => Err(sdk_error(&ctx, err)),
        }
    }
}

impl S3Store {
    /// Whether the bucket exists and is reachable with our credentials.
    async fn bucket_exists(&self, ctx: &Ctx<'_>) -> Result<bool, StoreError> {
        match self.client.head_bucket().bucket(ctx.bucket).send().await {
            Ok(_) => Ok(true),
            Err(err) => {
                let err = sdk_error(ctx, err);
                match err.kind() {
                    super::StoreErrorKind::NotFound => Ok(false),
                    _ => Err(err),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        let bad_endpoint = UpstreamSettings {
            endpoint: Some("garage:3900".into()),
            ..UpstreamSettings::default()
        };
        let err = S3Store::new(&bad_endpoint).expect_err("no scheme");
        assert_eq!(err.kind(), super::super::StoreErrorKind::Invalid);
        assert!(err.to_string().starts_with("configure: "), "{err}");

        let empty_region = UpstreamSettings {
            region: " ".into(),
            ..UpstreamSettings::default()
        };
        assert!(S3Store::new(&empty_region).is_err());

        let empty_endpoint_is_aws = UpstreamSettings {
            endpoint: Some(String::new()),
            ..UpstreamSettings::default()
        };
        let store = S3Store::new(&empty_endpoint_is_aws).expect("aws");
        assert!(format!("{store:?}").contains("\"aws\""));
    }

    #[test]
    fn debug_of_settings_hides_the_secret() {
        let settings = UpstreamSettings {
            credentials: Some(StaticCredentials::new("AKID", "super-secret")),
            ..UpstreamSettings::default()
        };
        assert!(!format!("{settings:?}").contains("super-secret"));
    }
}
