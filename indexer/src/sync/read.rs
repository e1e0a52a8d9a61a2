//! The read stage: sidecars whole, logs and Parquet files by their footers, from the office's
//! copy when it holds the object whole, otherwise from the store (egress).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use milepost_store::{ByteRange, LocalCopies, ObjectKey, ObjectMeta, ObjectStore};

use super::{SyncProgress, READ_CONCURRENCY};
use crate::metadata::{self, MetadataError, RangeSource};

/// Sidecars are read whole; logs and Parquet files by their footers. Everything else is only
/// listed.
pub(super) fn wants_read(key: &str) -> bool {
    key.ends_with("/drive.json")
        || key.ends_with("/run.json")
        || key.ends_with(".mcap")
        || key.ends_with(".parquet")
}

/// Described from its footer alone (a run's metrics.parquet is read whole, with its run).
pub(super) fn is_footer_read(key: &str) -> bool {
    key.ends_with(".mcap") || (key.ends_with(".parquet") && !is_metrics(key))
}

pub(super) fn is_metrics(key: &str) -> bool {
    key.ends_with("/metrics.parquet")
}

/// Reads from the office cache when it holds the object whole, otherwise from the store,
/// counting files and bytes for the report and the upstream bytes for the ledger.
#[derive(Clone)]
pub(super) struct Reader {
    store: Arc<dyn ObjectStore>,
    cache: Option<Arc<dyn LocalCopies>>,
    pub bucket: String,
    accounts: Arc<Accounts>,
}

#[derive(Default)]
struct Accounts {
    bytes: AtomicU64,
    files: AtomicU64,
    /// Bytes read from upstream, by key: the egress.
    ledger: Mutex<Vec<(String, u64)>>,
}

impl Reader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: Option<Arc<dyn LocalCopies>>,
        bucket: &str,
    ) -> Reader {
        Reader {
            store,
            cache,
            bucket: bucket.to_owned(),
            accounts: Arc::default(),
        }
    }

    /// Files read, their bytes, and the upstream bytes by key (emptied).
    pub fn take_accounts(&self) -> (u64, u64, Vec<(String, u64)>) {
        let ledger = std::mem::take(
            &mut *self
                .accounts
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        (
            self.accounts.files.load(Ordering::Relaxed),
            self.accounts.bytes.load(Ordering::Relaxed),
            ledger,
        )
    }

    /// Counts one file read: `bytes` in all, `from_upstream` of them from the store.
    fn account(&self, key: &str, bytes: u64, from_upstream: u64) {
        self.accounts.files.fetch_add(1, Ordering::Relaxed);
        self.accounts.bytes.fetch_add(bytes, Ordering::Relaxed);
        if from_upstream > 0 {
            self.accounts
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key.to_owned(), from_upstream));
        }
    }

    /// Bytes `start..end_exclusive` of the object `meta` lists, from the office cache if it
    /// holds that version whole. A failure to read the office's copy is logged and the store
    /// is read instead.
    async fn office_copy(
        &self,
        meta: &ObjectMeta,
        start: u64,
        end_exclusive: u64,
    ) -> Option<Bytes> {
        let cache = self.cache.as_ref()?;
        let object = ObjectKey::new(&self.bucket, &meta.key, &meta.etag, meta.size);
        match cache.read_local(&object, start, end_exclusive).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(object = %object, error = %err, "cannot read the office's copy; reading the store");
                None
            }
        }
    }

    /// A whole small object, at the version listed.
    pub async fn read_whole(&self, meta: &ObjectMeta, limit: usize) -> Result<Bytes, String> {
        if meta.size > limit as u64 {
            return Err(format!(
                "{} bytes, over the {limit}-byte limit for this kind of file",
                meta.size
            ));
        }
        if let Some(body) = self.office_copy(meta, 0, meta.size).await {
            self.account(&meta.key, body.len() as u64, 0);
            return Ok(body);
        }
        let response = self
            .store
            .get(&self.bucket, &meta.key, ByteRange::All, Some(&meta.etag))
            .await
            .map_err(|err| format!("cannot read it: {err}"))?;
        let body = response
            .collect(limit)
            .await
            .map_err(|err| format!("cannot read it: {err}"))?;
        self.account(&meta.key, body.len() as u64, body.len() as u64);
        Ok(body)
    }
}

/// One object as a [`RangeSource`]: the office's copy, or ranged GETs pinned to the listed
/// ETag.
struct ObjectRanges<'a> {
    reader: &'a Reader,
    meta: &'a ObjectMeta,
    /// Bytes read, and those of them from the store.
    read: AtomicU64,
    from_upstream: AtomicU64,
}

impl RangeSource for ObjectRanges<'_> {
    fn size(&self) -> u64 {
        self.meta.size
    }

    async fn read(&self, start: u64, end_exclusive: u64) -> Result<Bytes, MetadataError> {
        if end_exclusive <= start {
            return Ok(Bytes::new());
        }
        if let Some(body) = self
            .reader
            .office_copy(self.meta, start, end_exclusive)
            .await
        {
            self.read.fetch_add(body.len() as u64, Ordering::Relaxed);
            return Ok(body);
        }
        let range = ByteRange::Bounded {
            start,
            end_inclusive: end_exclusive - 1,
        };
        let response = self
            .reader
            .store
            .get(
                &self.reader.bucket,
                &self.meta.key,
                range,
                Some(&self.meta.etag),
            )
            .await
            .map_err(MetadataError::source_error)?;
        let body = response
            .collect((end_exclusive - start) as usize)
            .await
            .map_err(MetadataError::source_error)?;
        self.read.fetch_add(body.len() as u64, Ordering::Relaxed);
        self.from_upstream
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }
}

/// Describes a log or Parquet file from its footer.
async fn read_footer(reader: &Reader, meta: &ObjectMeta) -> Result<serde_json::Value, String> {
    let source = ObjectRanges {
        reader,
        meta,
        read: AtomicU64::new(0),
        from_upstream: AtomicU64::new(0),
    };
    let result = if meta.key.ends_with(".mcap") {
        metadata::read_mcap_summary(&source)
            .await
            .map(|summary| serde_json::json!({ "format": "mcap", "mcap": summary }))
    } else {
        metadata::read_parquet_footer(&source)
            .await
            .map(|summary| serde_json::json!({ "format": "parquet", "parquet": summary }))
    };
    reader.account(
        &meta.key,
        source.read.load(Ordering::Relaxed),
        source.from_upstream.load(Ordering::Relaxed),
    );
    result.map_err(|err| err.to_string())
}

/// Reads the footers of `jobs`, [`READ_CONCURRENCY`] at a time: each key's description (an
/// `{"error": …}` one for a file that could not be described), and one report line per error.
pub(super) async fn read_footers(
    reader: Reader,
    jobs: Vec<ObjectMeta>,
    progress: Arc<SyncProgress>,
) -> (Vec<(String, serde_json::Value)>, Vec<String>) {
    let mut descriptions = Vec::with_capacity(jobs.len());
    let mut errors = Vec::new();
    let mut reads = futures::stream::iter(jobs)
        .map(|meta| {
            let reader = reader.clone();
            async move {
                let result = read_footer(&reader, &meta).await;
                (meta.key, result)
            }
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some((key, result)) = reads.next().await {
        progress.add_read(1);
        let description = match result {
            Ok(description) => description,
            Err(message) => {
                errors.push(format!("{key}: {message}"));
                progress.add_errors(1);
                serde_json::json!({ "error": message })
            }
        };
        descriptions.push((key, description));
    }
    (descriptions, errors)
}

/// Reads a run's metrics.parquet once; returns its object description and the run's metrics.
pub(super) async fn read_metrics(
    reader: &Reader,
    meta: &ObjectMeta,
) -> Result<(serde_json::Value, serde_json::Value), String> {
    let body = reader
        .read_whole(meta, metadata::MAX_METRICS_BYTES as usize)
        .await?;
    let footer = metadata::read_parquet_footer(&body)
        .await
        .map_err(|err| err.to_string())?;
    let stats = tokio::task::spawn_blocking(move || metadata::run_metrics_from_parquet(body))
        .await
        .map_err(|err| format!("metrics task failed: {err}"))?
        .map_err(|err| err.to_string())?;
    let metrics =
        serde_json::to_value(stats).map_err(|err| format!("cannot encode metrics: {err}"))?;
    Ok((
        serde_json::json!({ "format": "parquet", "parquet": footer }),
        metrics,
    ))
}
