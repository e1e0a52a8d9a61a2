//! [`OfficeObjects`]: the office's one object API. Every door an object passes through
//! (`GET /data`, the S3 gateway) is a transport adapter over it: it parses its protocol into
//! the requests here and writes the answers (and [`ObjectError`]s) back in its own format.
//!
//! What it does, in order, for every request:
//! 1. **Authorize**: a bucket the office does not serve is [`NoSuchBucket`] and costs no
//!    upstream request; a key breaking the office's rules is refused before anything is read,
//!    staged or acknowledged ([`check_key`]).
//! 2. **Resolve** the object: the office's own version (written or deleted here and not yet
//!    in S3) first, then the catalog (a row synced from S3), then an upstream HEAD (whose
//!    answer stands for `upstream.version_ttl`, see [`super::versions`]).
//! 3. **Conditions** (`If-Match`, `If-None-Match`, dates) against that version; then
//!    `partNumber` and the **range**, resolved against its size.
//! 4. **Read through the cache** (one upstream fetch however many readers), or **write**:
//!    stage with length and checksum checks, check the write condition under the key's lock,
//!    install, journal, and only then acknowledge (see [`WriteBack`]).
//!
//! [`NoSuchBucket`]: super::ObjectErrorKind::NoSuchBucket
//!
//! (Over 600 lines: `OfficeObjects`, the office's one object API: one type with a method per operation; conditions, listing, keys, errors and completion are its submodules.)

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use milepost_schema::entity::object;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use super::completed::CompletedUploads;
use super::conditions::{ReadConditions, Verdict};
use super::error::{ObjectError, ObjectErrorKind, Subject};
use super::listing::{self, Listed, Resume};
use super::versions::KnownVersions;
use super::{check_key, ServedBuckets};
use crate::cache::{CacheErrorKind, FetchContext, ObjectKey};
use crate::checksum::Checksum;
use crate::writeback::{
    BodyChecks, OfficeStore, OfficeVersion, PartInfo, UploadInfo, WriteBack, WriteCondition,
};
use milepost_store::{bare_etag, BoxError, ByteRange, ObjectMeta, ObjectMetadata, ObjectStore};

/// A body on its way out of the office. A failure mid-way is an I/O error to the transport
/// (the status line is already sent); its cause is logged here.
pub type ObjectBody = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A body on its way in.
pub type IncomingBody = BoxStream<'static, Result<Bytes, BoxError>>;

/// The version of an object the office answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub object: ObjectKey,
    pub last_modified: Option<DateTime<Utc>>,
    /// Content-Type, the other representation headers and the user metadata, as written (in
    /// the office) or as S3 gives them. Empty for an object resolved from the catalog, which
    /// keeps no metadata.
    pub metadata: ObjectMetadata,
}

/// What a read asks beyond the object's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadRequest {
    /// `Range`; `None` reads the whole object.
    pub range: Option<ByteRange>,
    /// `partNumber` (S3): one part of the object.
    pub part_number: Option<i32>,
    pub conditions: ReadConditions,
}

/// The answer to a HEAD, and the head of a GET's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    pub resolved: Resolved,
    /// The bytes the answer carries, inclusive, when a range was asked for (206 with
    /// `Content-Range`); `None` for the whole object (200).
    pub range: Option<(u64, u64)>,
    /// The length of the body.
    pub content_length: u64,
    /// For a read by `partNumber` of a multipart object: its parts count.
    pub parts_count: Option<i32>,
}

impl ObjectHead {
    pub fn etag(&self) -> &str {
        &self.resolved.object.etag
    }

    pub fn size(&self) -> u64 {
        self.resolved.object.size
    }

    /// The `Content-Range` value of a ranged answer.
    pub fn content_range(&self) -> Option<String> {
        self.range
            .map(|(start, end)| format!("bytes {start}-{end}/{}", self.size()))
    }
}

/// A GET's answer.
#[allow(missing_debug_implementations)] // the body is a stream
pub struct ObjectRead {
    pub head: ObjectHead,
    pub body: ObjectBody,
}

/// An acknowledged write: durable, journaled, and the office's version from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub meta: ObjectMeta,
    /// The additional checksum the writer asked for, verified.
    pub checksum: Option<Checksum>,
}

/// A copy's source and its conditions (`x-amz-copy-source-if-*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    /// For UploadPartCopy: `x-amz-copy-source-range`.
    pub range: Option<ByteRange>,
    pub conditions: ReadConditions,
}

/// One page of a listing.
#[derive(Debug)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub resume: Option<Resume>,
    /// At most this many keys and common prefixes (S3 caps a page at 1,000).
    pub max_keys: usize,
}

/// The office's objects; see the module documentation.
pub struct OfficeObjects {
    store: Arc<OfficeStore>,
    write_back: Arc<WriteBack>,
    served: ServedBuckets,
    /// The catalog, to resolve a synced object without an upstream HEAD.
    catalog: Option<DatabaseConnection>,
    /// For retried CompleteMultipartUploads.
    completed: CompletedUploads,
    /// Served buckets S3 has been seen to hold (see [`check_writable`](Self::check_writable)).
    known_upstream: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Upstream's recent answers about objects outside the catalog.
    versions: KnownVersions,
}

/// How long an upstream answer about an object's version stands by default
/// ([`OfficeObjects::with_version_window`]).
pub const DEFAULT_VERSION_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for OfficeObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfficeObjects")
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

impl OfficeObjects {
    /// The office's objects over `store` (S3 with the office's writes laid over it), serving
    /// `served`, resolving synced objects in `catalog` when given.
    pub fn new(
        store: Arc<OfficeStore>,
        served: ServedBuckets,
        catalog: Option<DatabaseConnection>,
    ) -> Self {
        Self {
            write_back: Arc::clone(store.write_back()),
            store,
            served,
            catalog,
            completed: CompletedUploads::default(),
            known_upstream: std::sync::Mutex::default(),
            versions: KnownVersions::new(DEFAULT_VERSION_WINDOW),
        }
    }

    /// Upstream's answer about which version of an object outside the catalog is current
    /// stands for `window` (`upstream.version_ttl`; zero asks on every read). See
    /// [`super::versions`].
    pub fn with_version_window(mut self, window: std::time::Duration) -> Self {
        self.versions = KnownVersions::new(window);
        self
    }

    /// A write to `bucket/key` may be acknowledged: the bucket is served, the key is one the
    /// office accepts, and S3 has the bucket. A write to a bucket S3 does not have would be
    /// acknowledged and then fail for good on upload, lost to the client that deleted its
    /// copy; so S3 is asked once per bucket (an empty listing), and only a definite "no such
    /// bucket" refuses: while S3 cannot be reached, writes are acknowledged and wait in the
    /// journal, which is what write-back is for.
    pub async fn check_writable(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.check(bucket, key)?;
        let known = |set: &std::sync::Mutex<std::collections::HashSet<String>>| {
            set.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(bucket)
        };
        if known(&self.known_upstream) {
            return Ok(());
        }
        match self
            .write_back
            .upstream()
            .list_page(bucket, BUCKET_PROBE_PREFIX, None)
            .await
        {
            Ok(_) => {
                self.known_upstream
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(bucket.to_owned());
                Ok(())
            }
            Err(err) if err.kind() == milepost_store::StoreErrorKind::NotFound => {
                Err(ObjectError::new(
                    ObjectErrorKind::NoSuchBucket,
                    format!("bucket {bucket} is served by this office but does not exist in S3; nothing was written"),
                ))
            }
            Err(err) => {
                tracing::warn!(bucket, error = %err, "cannot check that S3 has the bucket; the write waits in the journal");
                Ok(())
            }
        }
    }

    /// The buckets served.
    pub fn served(&self) -> &ServedBuckets {
        &self.served
    }

    /// The authorization boundary: `bucket` is served.
    pub fn check_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        if self.served.serves(bucket) {
            Ok(())
        } else {
            Err(ObjectError::no_such_bucket(bucket))
        }
    }

    /// `bucket` is served and `key` is one the office accepts.
    pub fn check(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.check_bucket(bucket)?;
        check_key(key).map_err(ObjectError::from)
    }

    /// The object as the office sees it now: its own version, else the catalog's, else
    /// upstream's. Checks the bucket and key first.
    ///
    /// An answer from upstream may be one from the last `upstream.version_ttl`
    /// ([`super::versions`]); [`resolve_current`](Self::resolve_current) asks anew.
    pub async fn resolve(&self, bucket: &str, key: &str) -> Result<Resolved, ObjectError> {
        self.resolve_with(bucket, key, false).await
    }

    /// As [`resolve`](Self::resolve), but an object outside the catalog is asked about
    /// upstream now, never answered from the window: for what freezes a version (a dataset's
    /// manifest), which is rare and must name S3's current one. Later reads reuse the answer.
    pub async fn resolve_current(&self, bucket: &str, key: &str) -> Result<Resolved, ObjectError> {
        self.resolve_with(bucket, key, true).await
    }

    async fn resolve_with(
        &self,
        bucket: &str,
        key: &str,
        current: bool,
    ) -> Result<Resolved, ObjectError> {
        self.check(bucket, key)?;
        // Taken before the office's version is looked at: a write installed from here on
        // moves it, and the upstream answer below is then not reused.
        let mark = self.write_back.write_mark(bucket, key);
        match self.write_back.version(bucket, key) {
            Some(OfficeVersion::Written {
                object,
                last_modified,
                metadata,
                ..
            }) => {
                return Ok(Resolved {
                    object,
                    last_modified: Some(last_modified),
                    metadata,
                })
            }
            Some(OfficeVersion::Deleted { .. }) => {
                return Err(ObjectError::no_such_key(bucket, key))
            }
            None => {}
        }
        if let Some(db) = &self.catalog {
            // The version's columns only: a described log's row also carries its summary.
            let row: Option<(String, i64, Option<DateTime<Utc>>)> = object::Entity::find()
                .select_only()
                .columns([
                    object::Column::Etag,
                    object::Column::Size,
                    object::Column::LastModified,
                ])
                .filter(object::Column::Bucket.eq(bucket))
                .filter(object::Column::Key.eq(key))
                .filter(object::Column::DeletedAt.is_null())
                .into_tuple()
                .one(db)
                .await
                .map_err(|err| {
                    ObjectError::incident(
                        ObjectErrorKind::Unavailable,
                        "the office cannot read its catalog now; retry shortly",
                        &err,
                    )
                })?;
            if let Some((etag, size, last_modified)) = row {
                return Ok(Resolved {
                    object: ObjectKey::new(bucket, key, etag, u64::try_from(size).unwrap_or(0)),
                    last_modified,
                    metadata: ObjectMetadata::default(),
                });
            }
        }
        if !current {
            if let Some(known) = self.versions.get(bucket, key, mark) {
                return Ok(known);
            }
        }
        let asked_at = std::time::Instant::now();
        let meta = self
            .store
            .head(bucket, key)
            .await
            .map_err(|err| ObjectError::from_store(err, Subject::Object))?;
        let resolved = Resolved {
            object: ObjectKey::new(bucket, key, meta.etag, meta.size),
            last_modified: meta.last_modified,
            metadata: meta.metadata,
        };
        self.versions.remember(&resolved, asked_at, mark);
        Ok(resolved)
    }

    /// HEAD: the object's version after conditions, `partNumber` and range.
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
        request: &ReadRequest,
    ) -> Result<ObjectHead, ObjectError> {
        let resolved = self.resolve(bucket, key).await?;
        match self.evaluate(&resolved, &request.conditions).await {
            Verdict::Proceed => {}
            Verdict::PreconditionFailed => {
                return Err(ObjectError::precondition_failed(format!(
                    "s3://{bucket}/{key}: a condition of the read does not hold"
                )))
            }
            Verdict::NotModified => {
                return Err(ObjectError::not_modified(
                    &resolved.object.etag,
                    resolved.last_modified,
                ))
            }
        }
        let parts_count = match request.part_number {
            Some(part) => part_of(&resolved.object.etag, part, request.range.as_ref())?,
            None => None,
        };
        let size = resolved.object.size;
        let range = match request.range {
            None => None,
            // An empty object has no satisfiable range (S3: 416).
            Some(range) => Some(
                range
                    .resolve(size)
                    .ok_or_else(|| ObjectError::unsatisfiable(range, size))?,
            ),
        };
        let content_length = match range {
            Some((start, end)) => end - start + 1,
            None => size,
        };
        Ok(ObjectHead {
            resolved,
            range,
            content_length,
            parts_count,
        })
    }

    /// GET: [`head`](Self::head), then the bytes, read through the office cache.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        request: &ReadRequest,
        reader: &FetchContext,
    ) -> Result<ObjectRead, ObjectError> {
        let head = self.head(bucket, key, request).await?;
        if head.content_length == 0 {
            return Ok(ObjectRead {
                head,
                body: futures::stream::empty().boxed(),
            });
        }
        let range = match head.range {
            Some((start, end)) => ByteRange::Bounded {
                start,
                end_inclusive: end,
            },
            None => ByteRange::All,
        };
        let body = self
            .read_bytes(&head.resolved.object, range, reader)
            .await?;
        Ok(ObjectRead { head, body })
    }

    /// The bytes of `range` of `object`, read through the cache; an object larger than the
    /// cache can hold beside its pinned data streams through without being cached.
    async fn read_bytes(
        &self,
        object: &ObjectKey,
        range: ByteRange,
        reader: &FetchContext,
    ) -> Result<ObjectBody, ObjectError> {
        let what = format!("s3://{}/{}", object.bucket, object.key);
        // A version that cannot be read may be gone from S3: the next read asks again.
        let forget = || self.versions.forget(&object.bucket, &object.key);
        match self.write_back.cache().read(object, range, reader).await {
            Ok(read) => Ok(read
                .body
                .map_err(move |err| {
                    tracing::warn!(object = %what, error = %err, "an object's stream failed mid-way");
                    std::io::Error::other(err.to_string())
                })
                .boxed()),
            Err(err) if err.kind() == CacheErrorKind::Full => {
                let response = self
                    .store
                    .get(&object.bucket, &object.key, range, Some(&object.etag))
                    .await
                    .map_err(|err| {
                        forget();
                        ObjectError::from_store(err, Subject::Object)
                    })?;
                Ok(response
                    .body
                    .map_err(move |err| {
                        tracing::warn!(object = %what, error = %err, "an object's stream failed mid-way");
                        std::io::Error::other(err.to_string())
                    })
                    .boxed())
            }
            Err(err) => {
                forget();
                Err(err.into())
            }
        }
    }

    /// Evaluates read conditions against `resolved` (an `If-Match` of another ETag may name
    /// the same bytes under the name the office gave them).
    async fn evaluate(&self, resolved: &Resolved, conditions: &ReadConditions) -> Verdict {
        if conditions.is_empty() {
            return Verdict::Proceed;
        }
        let current = &resolved.object;
        let mut same_bytes = false;
        if let Some(condition) = &conditions.if_match {
            if !condition.matches(&current.etag) {
                for tag in condition.tags() {
                    if self.names_same_bytes(current, tag).await {
                        same_bytes = true;
                        break;
                    }
                }
            }
        }
        conditions.evaluate(&current.etag, same_bytes, resolved.last_modified)
    }

    /// Whether an ETag other than the current one still names the current bytes: when
    /// write-back puts an office write into S3 as a multipart upload of other part sizes than
    /// the client's, S3 gives it another ETag, and the cache keeps the content under both
    /// names as one file (a hard link). A client reading the object in several ranged GETs
    /// with `If-Match` (the AWS CLI does) must not fail because the name changed under it.
    async fn names_same_bytes(&self, current: &ObjectKey, etag: &str) -> bool {
        let other = ObjectKey::new(&current.bucket, &current.key, bare_etag(etag), current.size);
        self.write_back.cache().same_content(current, &other).await
    }

    /// PUT: stages `body` with `checks`, and makes it the office's version of `bucket/key`,
    /// with `metadata`, if `condition` holds. Returns once the write is durable.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: IncomingBody,
        checks: &BodyChecks,
        condition: &WriteCondition,
        metadata: ObjectMetadata,
    ) -> Result<Written, ObjectError> {
        self.check_writable(bucket, key).await?;
        check_metadata(&metadata)?;
        let staged = self.write_back.stage(bucket, key, body, checks).await?;
        let md5 = staged.md5_hex();
        let meta = self
            .write_back
            .commit_put_with(
                bucket,
                key,
                staged.path,
                staged.size,
                md5,
                condition,
                metadata,
            )
            .await?;
        Ok(Written {
            meta,
            checksum: staged.checksum,
        })
    }

    /// CopyObject: the source's bytes (read through the cache, after its conditions) become
    /// `bucket/key` if `condition` holds, with the source's metadata, or with `replace` when
    /// given (S3's `x-amz-metadata-directive: REPLACE`).
    pub async fn copy(
        &self,
        source: &CopySource,
        bucket: &str,
        key: &str,
        condition: &WriteCondition,
        replace: Option<ObjectMetadata>,
        reader: &FetchContext,
    ) -> Result<Written, ObjectError> {
        self.check_writable(bucket, key).await?;
        if source.bucket == bucket && source.key == key && replace.is_none() {
            return Err(ObjectError::new(
                ObjectErrorKind::InvalidRequest,
                "this copy request is illegal because it is trying to copy an object to itself without changing the object's metadata",
            ));
        }
        if let Some(metadata) = &replace {
            check_metadata(metadata)?;
        }
        let (body, length, source_metadata) = self.copy_source_bytes(source, reader).await?;
        let metadata = replace.unwrap_or(source_metadata);
        let checks = BodyChecks {
            length: Some(length),
            ..BodyChecks::default()
        };
        let staged = self.write_back.stage(bucket, key, body, &checks).await?;
        let md5 = staged.md5_hex();
        let meta = self
            .write_back
            .commit_put_with(
                bucket,
                key,
                staged.path,
                staged.size,
                md5,
                condition,
                metadata,
            )
            .await?;
        Ok(Written {
            meta,
            checksum: None,
        })
    }

    /// The bytes of a copy's source (its range, if any) after its conditions, their length,
    /// and the source's metadata. S3 answers 412 for every failed source condition, "not
    /// modified" included.
    async fn copy_source_bytes(
        &self,
        source: &CopySource,
        reader: &FetchContext,
    ) -> Result<(ObjectBody, u64, ObjectMetadata), ObjectError> {
        let resolved = self.resolve(&source.bucket, &source.key).await?;
        if self.evaluate(&resolved, &source.conditions).await != Verdict::Proceed {
            return Err(ObjectError::precondition_failed(format!(
                "s3://{}/{}: a condition of the copy source does not hold",
                source.bucket, source.key
            )));
        }
        let size = resolved.object.size;
        let (start, end) = match source.range {
            None if size == 0 => {
                return Ok((futures::stream::empty().boxed(), 0, resolved.metadata))
            }
            None => (0, size - 1),
            // S3 wants a copy range inside the object (no clamping, unlike a GET's range).
            Some(range) => match (range, range.resolve(size)) {
                (
                    ByteRange::Bounded {
                        start,
                        end_inclusive,
                    },
                    Some(resolved),
                ) if end_inclusive < size && start <= end_inclusive => resolved,
                _ => {
                    return Err(ObjectError::new(
                        ObjectErrorKind::InvalidRange,
                        format!(
                            "copy range {range} is not inside s3://{}/{} ({size} bytes)",
                            source.bucket, source.key
                        ),
                    ))
                }
            },
        };
        let body = self
            .read_bytes(
                &resolved.object,
                ByteRange::Bounded {
                    start,
                    end_inclusive: end,
                },
                reader,
            )
            .await?;
        Ok((body, end - start + 1, resolved.metadata))
    }

    /// DeleteObject: gone in the office now, in S3 in the background. Deleting a key that
    /// does not exist succeeds, as in S3.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.check_writable(bucket, key).await?;
        self.write_back.delete(bucket, key).await?;
        Ok(())
    }

    /// One page of a listing of a served bucket.
    pub async fn list(
        &self,
        bucket: &str,
        request: ListRequest<'_>,
    ) -> Result<Listed, ObjectError> {
        self.check_bucket(bucket)?;
        // `max-keys=0` lists nothing and is not truncated, as in S3.
        if request.max_keys == 0 {
            return Ok(Listed::default());
        }
        listing::list(
            self.store.as_ref(),
            bucket,
            request.prefix,
            request.delimiter.filter(|d| !d.is_empty()),
            request.resume,
            request.max_keys,
        )
        .await
        .map_err(|err| ObjectError::from_store(err, Subject::Bucket))
    }

    /// CreateMultipartUpload of an object with `metadata`: the new upload's id.
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        metadata: ObjectMetadata,
    ) -> Result<String, ObjectError> {
        self.check_writable(bucket, key).await?;
        check_metadata(&metadata)?;
        Ok(self
            .write_back
            .multipart()
            .create_with(bucket, key, metadata)
            .await?)
    }

    /// Checks that `upload_id` is an upload of `bucket/key` in progress.
    async fn upload_of(&self, upload_id: &str, bucket: &str, key: &str) -> Result<(), ObjectError> {
        let info = self.write_back.multipart().info(upload_id).await?;
        if info.bucket != bucket || info.key != key {
            return Err(ObjectError::new(
                ObjectErrorKind::NoSuchUpload,
                format!("upload {upload_id} is not an upload of {bucket}/{key}"),
            ));
        }
        Ok(())
    }

    /// UploadPart: the part's ETag and verified checksum.
    pub async fn upload_part(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        part_number: i32,
        body: IncomingBody,
        checks: &BodyChecks,
    ) -> Result<(String, Option<Checksum>), ObjectError> {
        self.check(bucket, key)?;
        let part = self
            .write_back
            .multipart()
            .upload_part(upload_id, bucket, key, part_number, body, checks)
            .await?;
        Ok((part.etag, part.checksum))
    }

    /// UploadPartCopy: a part whose bytes are (a range of) another object. Returns the part's
    /// ETag and when it was stored.
    pub async fn upload_part_copy(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        part_number: i32,
        source: &CopySource,
        reader: &FetchContext,
    ) -> Result<String, ObjectError> {
        self.check(bucket, key)?;
        self.upload_of(upload_id, bucket, key).await?;
        let (body, length, _) = self.copy_source_bytes(source, reader).await?;
        let checks = BodyChecks {
            length: Some(length),
            ..BodyChecks::default()
        };
        let part = self
            .write_back
            .multipart()
            .upload_part(upload_id, bucket, key, part_number, body, &checks)
            .await?;
        Ok(part.etag)
    }

    /// ListParts: the parts of an upload of `bucket/key`.
    pub async fn list_parts(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<PartInfo>, ObjectError> {
        self.check_bucket(bucket)?;
        self.upload_of(upload_id, bucket, key).await?;
        Ok(self.write_back.multipart().list_parts(upload_id).await?)
    }

    /// ListMultipartUploads of a served bucket.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, UploadInfo)>, ObjectError> {
        self.check_bucket(bucket)?;
        Ok(self
            .write_back
            .multipart()
            .list_uploads(bucket, prefix)
            .await?)
    }

    /// CompleteMultipartUpload: the listed parts become `bucket/key` if `condition` holds.
    /// A retry of a completion the office already made (the client's first attempt timed out
    /// after the object was stored) answers with the same ETag, as S3 does, while the key is
    /// still that upload's object.
    pub async fn complete_upload(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        parts: &[(i32, String)],
        condition: &WriteCondition,
    ) -> Result<ObjectMeta, ObjectError> {
        self.check(bucket, key)?;
        let multipart = self.write_back.multipart();
        if let Err(err) = self.upload_of(upload_id, bucket, key).await {
            return self.retried_complete(err, bucket, key, upload_id).await;
        }
        let staging = self.write_back.staging_path(bucket, key);
        let assembled = match multipart.assemble(upload_id, parts, staging).await {
            Ok(assembled) => assembled,
            // A retry that came while the first attempt was completing the upload.
            Err(err) => {
                return self
                    .retried_complete(err.into(), bucket, key, upload_id)
                    .await
            }
        };
        let metadata = assembled.metadata.clone();
        let meta = self
            .write_back
            .commit_put_with(
                bucket,
                key,
                assembled.path,
                assembled.size,
                assembled.etag,
                condition,
                metadata,
            )
            .await?;
        self.completed.insert(bucket, key, upload_id, &meta.etag);
        if let Err(err) = multipart.remove(upload_id).await {
            // The object is stored and journaled; the left-over parts are only disk space.
            tracing::warn!(upload_id, error = %err, "cannot remove the parts of a completed upload");
        }
        Ok(meta)
    }

    /// Answers a completion that failed with `err`: a NoSuchUpload of an upload completed
    /// recently, while `bucket/key` is still its object (under its ETag, or the same bytes
    /// under the name S3 gave them), is a client's retry.
    async fn retried_complete(
        &self,
        err: ObjectError,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<ObjectMeta, ObjectError> {
        if err.kind() != ObjectErrorKind::NoSuchUpload {
            return Err(err);
        }
        let Some(completed) = self.completed.get(bucket, key, upload_id) else {
            return Err(err);
        };
        let Ok(current) = self.resolve_current(bucket, key).await else {
            return Err(err);
        };
        let current = current.object;
        if current.etag != completed && !self.names_same_bytes(&current, &completed).await {
            return Err(err);
        }
        Ok(ObjectMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: current.size,
            etag: completed,
            last_modified: None,
            metadata: Default::default(),
        })
    }

    /// AbortMultipartUpload.
    pub async fn abort_upload(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<(), ObjectError> {
        self.check_bucket(bucket)?;
        self.upload_of(upload_id, bucket, key).await?;
        Ok(self.write_back.multipart().remove(upload_id).await?)
    }
}

/// The prefix of the listing that asks S3 whether a bucket exists: one nothing is stored
/// under, so the answer is an empty page.
const BUCKET_PROBE_PREFIX: &str = ".milepost-bucket-check/";

/// S3's limit on user metadata: the UTF-8 bytes of every name and value, summed.
pub const MAX_USER_METADATA_BYTES: usize = 2 * 1024;

/// Refuses user metadata over S3's limit before anything is staged.
fn check_metadata(metadata: &ObjectMetadata) -> Result<(), ObjectError> {
    let bytes: usize = metadata
        .user
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if bytes > MAX_USER_METADATA_BYTES {
        return Err(ObjectError::new(
            ObjectErrorKind::MetadataTooLarge,
            format!(
                "the user metadata (x-amz-meta-*) is {bytes} bytes; at most {MAX_USER_METADATA_BYTES}"
            ),
        ));
    }
    Ok(())
}

/// What a read with `partNumber` reads of an object of `etag`: the parts count to answer. An
/// object stored in one piece is part 1, whole (no parts count, as S3 answers); so is the
/// only part of a one-part multipart upload (parts count 1). A part number past the parts
/// count (from a multipart ETag's `-N`) is 416 InvalidPartNumber, as S3 answers. The office
/// keeps no part sizes once a multipart upload is assembled, so a part of an object of
/// several parts is NotImplemented rather than a guess.
fn part_of(etag: &str, part: i32, range: Option<&ByteRange>) -> Result<Option<i32>, ObjectError> {
    if range.is_some() {
        return Err(ObjectError::new(
            ObjectErrorKind::InvalidRequest,
            "cannot specify both a Range header and a partNumber query parameter",
        ));
    }
    if !(1..=10_000).contains(&part) {
        return Err(ObjectError::new(
            ObjectErrorKind::InvalidArgument,
            format!("part number {part} is not an integer between 1 and 10000"),
        ));
    }
    let parts = etag
        .rsplit_once('-')
        .and_then(|(_, count)| count.parse::<i32>().ok());
    let count = parts.unwrap_or(1);
    if part > count {
        return Err(ObjectError::new(
            ObjectErrorKind::InvalidPartNumber,
            format!("the requested part number {part} is not satisfiable"),
        ));
    }
    if count > 1 {
        return Err(ObjectError::new(
            ObjectErrorKind::NotImplemented,
            format!("reading one part of an object uploaded in {count} parts is not supported by the office; read it by Range"),
        ));
    }
    Ok(parts)
}

/// Parses a single-range HTTP `Range` header. `None`: no usable range (the whole object is
/// served, as RFC 9110 allows for syntax a server does not understand or several ranges).
pub fn parse_range_header(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.trim().split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", suffix) => suffix.parse().ok().map(ByteRange::Suffix),
        (start, "") => start.parse().ok().map(ByteRange::From),
        (start, end) => {
            let (start, end_inclusive): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            (end_inclusive >= start).then_some(ByteRange::Bounded {
                start,
                end_inclusive,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        assert_eq!(
            parse_range_header("bytes=0-0"),
            Some(ByteRange::Bounded {
                start: 0,
                end_inclusive: 0
            })
        );
        assert_eq!(parse_range_header("bytes=10-"), Some(ByteRange::From(10)));
        assert_eq!(parse_range_header("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range_header("bytes=5-1"), None);
        assert_eq!(parse_range_header("bytes=0-1,4-5"), None);
        assert_eq!(parse_range_header("items=0-1"), None);
    }

    #[test]
    fn parts() {
        assert_eq!(part_of("abc", 1, None).expect("a part"), None);
        assert_eq!(part_of("abc-1", 1, None).expect("a part"), Some(1));
        assert_eq!(
            part_of("abc", 2, None).expect_err("refused").kind(),
            ObjectErrorKind::InvalidPartNumber
        );
        assert_eq!(
            part_of("abc-3", 2, None).expect_err("refused").kind(),
            ObjectErrorKind::NotImplemented
        );
        assert_eq!(
            part_of("abc", 1, Some(&ByteRange::From(0)))
                .expect_err("refused")
                .kind(),
            ObjectErrorKind::InvalidRequest
        );
    }
}
