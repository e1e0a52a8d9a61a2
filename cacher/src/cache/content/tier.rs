//! The office tier: content kept in an S3-compatible store the office runs (Garage, Ceph RGW,
//! ...), which replicates it across its own nodes.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;

use super::{collect, ContentStore, InstallKind, Opened};
use crate::cache::flight::remove_quietly;
use crate::cache::layout::{content_id, Layout, OBJECTS};
use crate::cache::{CacheError, ObjectKey};
use milepost_store::{
    list_all, put_stream_with, ByteRange, ObjectMetadata, ObjectStore, StoreErrorKind,
    UploadOptions,
};

/// The user metadata that marks a tier object as an alias of another entry's content (its
/// content id): what [`ContentStore::same_content`] reads.
const ALIAS_OF: &str = "milepost-alias-of";

/// Where the office tier is: a store built for it (its own endpoint and credentials), the
/// bucket and a key prefix (empty, or ending in `/`).
#[derive(Clone)]
pub struct TierSettings {
    pub store: Arc<dyn ObjectStore>,
    pub bucket: String,
    pub prefix: String,
    /// The part size of the multipart uploads that install large entries.
    pub part_size: usize,
}

impl fmt::Debug for TierSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierSettings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl TierSettings {
    /// Refuses a prefix that would not keep the tier's keys apart from other keys.
    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        if self.bucket.is_empty() {
            return Err(CacheError::invalid(
                "cache setting tier bucket = \"\"",
                "expected the office tier's bucket",
            ));
        }
        if !(self.prefix.is_empty() || self.prefix.ends_with('/')) || self.prefix.starts_with('/') {
            return Err(CacheError::invalid(
                format!("cache setting tier prefix = {:?}", self.prefix),
                "expected an empty prefix or one ending in `/` (and not starting with one)",
            ));
        }
        Ok(())
    }
}

/// Content as objects of the office tier; see the [module documentation](super).
#[derive(Debug)]
pub(in crate::cache) struct TierContent {
    settings: TierSettings,
}

impl TierContent {
    pub fn new(settings: TierSettings) -> Self {
        Self { settings }
    }

    /// The tier key of `object`'s content.
    fn key(&self, object: &ObjectKey) -> String {
        format!(
            "{}{}",
            self.settings.prefix,
            Layout::content_relative(object)
        )
    }

    fn store(&self) -> &dyn ObjectStore {
        self.settings.store.as_ref()
    }

    /// Every content object in the tier under this cache's prefix, by its key relative to the
    /// prefix (`objects/<xx>/<sha256>`), with its size.
    pub async fn list(&self) -> Result<HashMap<String, u64>, CacheError> {
        let prefix = format!("{}{OBJECTS}/", self.settings.prefix);
        let listed = list_all(self.store(), &self.settings.bucket, &prefix).await?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let relative = meta.key.strip_prefix(&self.settings.prefix)?.to_owned();
                Some((relative, meta.size))
            })
            .collect())
    }

    /// Deletes the tier object at `relative` (to the prefix).
    pub async fn remove_relative(&self, relative: &str) -> Result<(), CacheError> {
        let key = format!("{}{relative}", self.settings.prefix);
        Ok(self.store().delete(&self.settings.bucket, &key).await?)
    }

    /// Checks that the tier answers and the bucket is there.
    pub async fn check(&self) -> Result<(), CacheError> {
        self.store()
            .list_page(&self.settings.bucket, &self.settings.prefix, None)
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ContentStore for TierContent {
    fn describe(&self) -> String {
        format!(
            "s3 tier bucket {} prefix {:?}",
            self.settings.bucket, self.settings.prefix
        )
    }

    fn local_path(&self, _object: &ObjectKey) -> Option<PathBuf> {
        None
    }

    fn flushes_behind(&self) -> bool {
        // The staging file is read back and sent to the tier, never fsynced.
        false
    }

    fn follows_downloads(&self) -> bool {
        true
    }

    async fn install_stream(
        &self,
        object: &ObjectKey,
        body: futures::stream::BoxStream<'static, Result<Bytes, CacheError>>,
    ) -> Result<(), CacheError> {
        let options = UploadOptions {
            part_size: self.settings.part_size,
        };
        let meta = put_stream_with(
            self.store(),
            &self.settings.bucket,
            &self.key(object),
            body,
            &options,
            &ObjectMetadata::default(),
        )
        .await?;
        if meta.size != object.size && meta.size != 0 {
            self.remove(object).await;
            return Err(CacheError::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "the office tier stored {} bytes, expected {}",
                    meta.size, object.size
                ),
            });
        }
        Ok(())
    }

    async fn install(
        &self,
        object: &ObjectKey,
        _file: &Arc<File>,
        staging: &Path,
        _kind: InstallKind,
    ) -> Result<(), CacheError> {
        // Every kind is durable once the tier acknowledges it (the tier replicates before it
        // answers); the upload reads the staging file through a handle of its own, from the
        // start.
        let reader = tokio::fs::File::open(staging)
            .await
            .map_err(|err| CacheError::io(format!("reading the staging file of {object}"), err))?;
        let context = format!("reading the staging file of {object}");
        let body = tokio_util::io::ReaderStream::with_capacity(reader, 1024 * 1024)
            .map(move |chunk| chunk.map_err(|err| CacheError::io(context.clone(), err)))
            .boxed();
        self.install_stream(object, body).await?;
        remove_quietly(staging.to_owned()).await;
        Ok(())
    }

    async fn open(
        &self,
        object: &ObjectKey,
        start: u64,
        end_exclusive: u64,
    ) -> Result<Opened, CacheError> {
        if start >= end_exclusive {
            return Ok(Opened::Stream(futures::stream::empty().boxed()));
        }
        let range = ByteRange::Bounded {
            start,
            end_inclusive: end_exclusive - 1,
        };
        let response = match self
            .store()
            .get(&self.settings.bucket, &self.key(object), range, None)
            .await
        {
            Ok(response) => response,
            Err(err) if err.kind() == StoreErrorKind::NotFound => {
                return Err(CacheError::NotCached {
                    object: object.to_string(),
                })
            }
            Err(err) => return Err(err.into()),
        };
        let whole = start == 0 && end_exclusive == response.meta.size;
        if response.meta.size != object.size
            || !(response.range == Some((start, end_exclusive - 1))
                || (response.range.is_none() && whole))
        {
            return Err(CacheError::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "the office tier holds {} bytes for it and answered bytes {:?} for {start}-{}",
                    response.meta.size,
                    response.range,
                    end_exclusive - 1
                ),
            });
        }
        Ok(Opened::Stream(
            response
                .body
                .map(|chunk| chunk.map_err(CacheError::from))
                .boxed(),
        ))
    }

    async fn read_at(
        &self,
        object: &ObjectKey,
        start: u64,
        len: usize,
    ) -> Result<Option<Bytes>, CacheError> {
        match self.open(object, start, start + len as u64).await {
            Ok(Opened::Stream(stream)) => collect(object, stream, len).await.map(Some),
            Ok(Opened::File(_)) => Err(CacheError::io(
                format!("reading {object} from the office tier"),
                std::io::Error::other("the tier opened a local file"),
            )),
            Err(CacheError::NotCached { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn make_durable(&self, _object: &ObjectKey) -> Result<(), CacheError> {
        // Installed content is durable in the tier already.
        Ok(())
    }

    async fn alias(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), CacheError> {
        // A copy through this node (the store contract has no server-side copy), marked so
        // that `same_content` knows the two are one content.
        let stream = match self.open(from, 0, from.size).await? {
            Opened::Stream(stream) => stream,
            Opened::File(_) => {
                return Err(CacheError::io(
                    format!("copying {from} in the office tier"),
                    std::io::Error::other("the tier opened a local file"),
                ))
            }
        };
        let mut metadata = ObjectMetadata::default();
        metadata.user.insert(ALIAS_OF.to_owned(), content_id(from));
        let options = UploadOptions {
            part_size: self.settings.part_size,
        };
        put_stream_with(
            self.store(),
            &self.settings.bucket,
            &self.key(to),
            stream,
            &options,
            &metadata,
        )
        .await?;
        Ok(())
    }

    async fn same_content(&self, a: &ObjectKey, b: &ObjectKey) -> bool {
        let alias_of = |object: &ObjectKey| {
            let key = self.key(object);
            async move {
                self.store()
                    .head(&self.settings.bucket, &key)
                    .await
                    .ok()
                    .and_then(|meta| meta.metadata.user.get(ALIAS_OF).cloned())
            }
        };
        let (of_a, of_b) = tokio::join!(alias_of(a), alias_of(b));
        of_b.is_some_and(|id| id == content_id(a)) || of_a.is_some_and(|id| id == content_id(b))
    }

    async fn remove(&self, object: &ObjectKey) {
        if let Err(err) = self
            .store()
            .delete(&self.settings.bucket, &self.key(object))
            .await
        {
            tracing::warn!(object = %object, error = %err, "cannot delete a cache entry from the office tier");
        }
    }

    async fn shutdown(&self) {}
}
