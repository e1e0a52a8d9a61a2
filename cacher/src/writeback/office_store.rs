//! [`OfficeStore`]: the object store as the office sees it — S3 with the office's writes and
//! deletes that S3 does not have yet laid over it. Every reader in the office (the S3 gateway,
//! `/data`, datasets, the indexer) reads through it, so an upload is visible at once; writes
//! through it go to the write-back path, so records the service writes reach S3 in the
//! background like any office upload.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{OfficeVersion, WriteBack, WriteBackError, WriteBackErrorKind, WriteCondition};
use milepost_store::{
    ByteRange, DelimitedPage, GetResponse, ListPage, ObjectMeta, ObjectMetadata, ObjectStore,
    StoreError, Target,
};

/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct OfficeStore {
    upstream: Arc<dyn ObjectStore>,
    write_back: Arc<WriteBack>,
}

/// Where a merged listing resumes: the upstream's continuation token for its next page and
/// the last key the upstream listed (office versions after it are merged into later pages).
#[derive(Serialize, Deserialize)]
struct Resume {
    upstream: String,
    after: String,
}

const TOKEN_PREFIX: &str = "office1.";

/// Where a listing page resumes: the upstream's token, the last name of the previous page,
/// and the office's versions after it.
type Resumed = (Option<String>, Option<String>, Vec<(String, OfficeVersion)>);

impl OfficeStore {
    /// Decodes a listing's continuation and snapshots the office's versions after its resume
    /// point. The snapshot is taken before S3's page is read: a version that settles (its
    /// upload done) while the page is on its way is in S3's answer or still in the snapshot,
    /// so a listing racing the end of an upload never shows a deleted key or misses a new one.
    fn resume(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<Resumed, StoreError> {
        let resume = continuation
            .as_deref()
            .map(|token| Self::decode(token, bucket, prefix))
            .transpose()?;
        let (upstream_token, after) = match resume {
            Some(r) => (Some(r.upstream), Some(r.after)),
            None => (None, None),
        };
        let versions = self
            .write_back
            .versions_in(bucket, prefix, after.as_deref(), usize::MAX);
        Ok((upstream_token, after, versions))
    }

    /// Whether S3 has a key under `prefix` other than `deleted` (keys the office deleted and
    /// S3 still has): pages through a plain listing until it finds one.
    async fn any_upstream_key_but(
        &self,
        bucket: &str,
        prefix: &str,
        deleted: &[String],
    ) -> Result<bool, StoreError> {
        let mut token = None;
        loop {
            let page = self.upstream.list_page(bucket, prefix, token).await?;
            if page
                .objects
                .iter()
                .any(|o| !deleted.iter().any(|d| d == &o.key))
            {
                return Ok(true);
            }
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(false),
            }
        }
    }

    /// Reads `upstream` with the office versions of `write_back` laid over it; writes go to
    /// `write_back`.
    pub fn new(upstream: Arc<dyn ObjectStore>, write_back: Arc<WriteBack>) -> Self {
        Self {
            upstream,
            write_back,
        }
    }

    /// The write-back path under this store.
    pub fn write_back(&self) -> &Arc<WriteBack> {
        &self.write_back
    }

    fn encode(resume: &Resume) -> String {
        let json = serde_json::to_vec(resume).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    fn decode(token: &str, bucket: &str, prefix: &str) -> Result<Resume, StoreError> {
        let bad = || {
            StoreError::invalid(
                Target::new("list", bucket, prefix),
                "the continuation token is not one this office gave out",
            )
        };
        let body = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad())?;
        serde_json::from_slice(&json).map_err(|_| bad())
    }
}

fn store_error(op: &'static str, bucket: &str, key: &str, err: WriteBackError) -> StoreError {
    let target = Target::new(op, bucket, key);
    match err {
        WriteBackError::Store(err) => err,
        err => match err.kind() {
            WriteBackErrorKind::Invalid => StoreError::invalid(target, err.to_string()),
            WriteBackErrorKind::NotFound => StoreError::NotFound {
                target,
                what: err.to_string(),
            },
            WriteBackErrorKind::PreconditionFailed => StoreError::PreconditionFailed {
                target,
                detail: err.to_string(),
            },
            WriteBackErrorKind::Full | WriteBackErrorKind::Unavailable => {
                StoreError::unavailable(target, err.to_string())
            }
        },
    }
}

#[async_trait]
impl ObjectStore for OfficeStore {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        let (upstream_token, _after, versions) = self.resume(bucket, prefix, continuation)?;
        let page = self
            .upstream
            .list_page(bucket, prefix, upstream_token)
            .await?;
        // Office versions up to the last key of this upstream page (all remaining ones on the
        // last page) belong to this page.
        let until = match (&page.next, page.objects.last()) {
            (Some(_), Some(last)) => Some(last.key.clone()),
            _ => None,
        };
        let mut merged: std::collections::BTreeMap<String, ObjectMeta> = page
            .objects
            .into_iter()
            .map(|meta| (meta.key.clone(), meta))
            .collect();
        for (key, version) in versions {
            if until.as_ref().is_some_and(|until| &key > until) {
                break;
            }
            match version.meta() {
                Some(meta) => {
                    merged.insert(key, meta);
                }
                None => {
                    merged.remove(&key);
                }
            }
        }
        let next = match (page.next, until) {
            (Some(upstream), Some(after)) => Some(Self::encode(&Resume { upstream, after })),
            _ => None,
        };
        Ok(ListPage {
            objects: merged.into_values().collect(),
            next,
        })
    }

    /// The upstream's delimited page with the office versions whose names (their key, or the
    /// common prefix they fall under) belong to it laid over it: a write under a new common
    /// prefix adds the prefix; a common prefix all of whose upstream keys the office deleted
    /// (and none written) is dropped, which takes a plain listing of that prefix to tell.
    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        let (upstream_token, after, versions) = self.resume(bucket, prefix, continuation)?;
        let page = self
            .upstream
            .list_delimited(bucket, prefix, delimiter, upstream_token)
            .await?;
        let last = match (page.objects.last(), page.prefixes.last()) {
            (Some(o), Some(p)) => Some(o.key.as_str().max(p.as_str()).to_owned()),
            (Some(o), None) => Some(o.key.clone()),
            (None, Some(p)) => Some(p.clone()),
            (None, None) => None,
        };
        let until = page.next.as_ref().and(last);
        let mut objects: std::collections::BTreeMap<String, ObjectMeta> = page
            .objects
            .into_iter()
            .map(|meta| (meta.key.clone(), meta))
            .collect();
        let mut prefixes: std::collections::BTreeSet<String> = page.prefixes.into_iter().collect();
        let mut written_under = std::collections::BTreeSet::new();
        let mut deleted_under: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (key, version) in versions {
            let common = key[prefix.len()..]
                .find(delimiter)
                .map(|at| key[..prefix.len() + at + delimiter.len()].to_owned());
            let name = common.as_deref().unwrap_or(&key);
            // Only names of this page: later pages lay their own versions.
            if after.as_deref().is_some_and(|after| name <= after)
                || until.as_deref().is_some_and(|until| name > until)
            {
                continue;
            }
            match (common, version.meta()) {
                (Some(common), Some(_)) => {
                    written_under.insert(common.clone());
                    prefixes.insert(common);
                }
                (Some(common), None) => deleted_under.entry(common).or_default().push(key),
                (None, Some(meta)) => {
                    objects.insert(key, meta);
                }
                (None, None) => {
                    objects.remove(&key);
                }
            }
        }
        for (common, deleted) in deleted_under {
            if !prefixes.contains(&common) || written_under.contains(&common) {
                continue;
            }
            if !self.any_upstream_key_but(bucket, &common, &deleted).await? {
                prefixes.remove(&common);
            }
        }
        let next = match (page.next, until) {
            (Some(upstream), Some(after)) => Some(Self::encode(&Resume { upstream, after })),
            _ => None,
        };
        Ok(DelimitedPage {
            objects: objects.into_values().collect(),
            prefixes: prefixes.into_iter().collect(),
            next,
        })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        match self.write_back.version(bucket, key) {
            Some(version) => version.meta().ok_or_else(|| StoreError::NotFound {
                target: Target::new("head", bucket, key),
                what: "no such key (deleted in the office)".to_owned(),
            }),
            None => self.upstream.head(bucket, key).await,
        }
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        let Some(version) = self.write_back.version(bucket, key) else {
            return self.upstream.get(bucket, key, range, if_match).await;
        };
        let target = || Target::new("get", bucket, key);
        let (OfficeVersion::Written { object, .. }, Some(meta)) = (&version, version.meta()) else {
            return Err(StoreError::NotFound {
                target: target(),
                what: "no such key (deleted in the office)".to_owned(),
            });
        };
        if let Some(expected) = if_match {
            if milepost_store::bare_etag(expected) != object.etag {
                return Err(StoreError::PreconditionFailed {
                    target: target(),
                    detail: format!("expected ETag {expected}, the object has {}", object.etag),
                });
            }
        }
        let (start, end) = match range {
            ByteRange::All if object.size == 0 => (0, 0),
            _ => range
                .resolve(object.size)
                .ok_or_else(|| StoreError::InvalidRange {
                    target: target(),
                    range: range.to_string(),
                })?,
        };
        let cache = self.write_back.cache();
        let not_cached =
            || StoreError::unavailable(target(), "the office copy is not in the cache");
        let body = if object.size == 0 {
            if !cache.is_cached(object) {
                return Err(not_cached());
            }
            futures::stream::empty().boxed()
        } else {
            let content = cache
                .read_content(object, start, end)
                .await
                .map_err(|err| StoreError::unavailable(target(), err.to_string()))?
                .ok_or_else(not_cached)?;
            let body_target = target();
            content
                .map(move |chunk| {
                    chunk.map_err(|err| {
                        StoreError::unavailable(body_target.clone(), err.to_string())
                    })
                })
                .boxed()
        };
        Ok(GetResponse {
            meta,
            range: (range != ByteRange::All).then_some((start, end)),
            body,
        })
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        self.write_back
            .put_bytes_with(bucket, key, body, metadata.clone())
            .await
            .map_err(|err| store_error("put", bucket, key, err))
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        self.write_back
            .multipart()
            .create_with(bucket, key, metadata.clone())
            .await
            .map_err(|err| store_error("create_multipart", bucket, key, err))
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let checks = super::BodyChecks {
            length: Some(body.len() as u64),
            ..super::BodyChecks::default()
        };
        self.write_back
            .multipart()
            .upload_part(
                upload_id,
                bucket,
                key,
                part_number,
                futures::stream::iter([Ok::<_, std::io::Error>(body)]),
                &checks,
            )
            .await
            .map(|part| part.etag)
            .map_err(|err| store_error("upload_part", bucket, key, err))
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        let wb = &self.write_back;
        let fail = |err| store_error("complete_multipart", bucket, key, err);
        let assembled = wb
            .multipart()
            .assemble(upload_id, &parts, wb.staging_path(bucket, key))
            .await
            .map_err(fail)?;
        let meta = wb
            .commit_put_with(
                bucket,
                key,
                assembled.path,
                assembled.size,
                assembled.etag,
                &WriteCondition::Always,
                assembled.metadata,
            )
            .await
            .map_err(fail)?;
        wb.multipart().remove(upload_id).await.map_err(fail)?;
        Ok(meta)
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.write_back
            .multipart()
            .remove(upload_id)
            .await
            .map_err(|err| store_error("abort_multipart", bucket, key, err))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.write_back
            .delete(bucket, key)
            .await
            .map_err(|err| store_error("delete", bucket, key, err))
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.upstream.ensure_bucket(bucket).await
    }
}
