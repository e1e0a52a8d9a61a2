//! Catalog sync: brings the catalog database and search index in line with the catalog bucket.
//!
//! One pass lists the drives and runs prefixes (paginated ListObjectsV2), or only the
//! prefixes a targeted pass names ([`SyncScope`]: what S3 events and office writes touched),
//! diffs the listing against the `objects` table, and reads only what changed: sidecars whole
//! (they are small), MCAP logs and Parquet files by their footers (ranged GETs carrying
//! `If-Match`). An object whose ETag did not change is never read again. A malformed file is
//! reported in the [`SyncReport`] and skipped; it never stops the sync.
//!
//! Listings without ETags (some S3-compatible servers omit them) are compared by size and
//! last-modified time instead, and new or changed objects are then HEADed for their ETag,
//! because cache entries and `If-Match` need it.
//!
//! Objects the office cache holds whole (the office's own writes, whether still on their way
//! to S3 or uploaded, and downloads) are read from it (its [`LocalCopies`](milepost_store::LocalCopies)): no
//! upstream request, and no egress in the ledger. Only bytes read from upstream are egress.
//!
//! (Over 600 lines: one sync pass (list, diff, read, upsert, index) with its reader; issue "Catalog at fleet scale" replaces it with a staged pipeline, split by stage.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use milepost_schema::egress::EgressRecord;
use milepost_schema::entity::{drive, object, run, sync_run};
use milepost_schema::enums::{InputKind, RecordSource, RunKind, RunStatus};
use milepost_store::{ByteRange, LocalCopies, ObjectKey, ObjectMeta, ObjectStore, StoreError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QuerySelect, Set, TransactionTrait,
};
use serde::Deserialize;

use crate::catalog::{
    self, Catalog, DriveRecord, EventRecord, RunRecord, SpanRecord, WindowRecord,
};
use crate::documents::string_list;
use crate::error::CatalogError;
use crate::metadata::{self, MetadataError, RangeSource};

/// Largest sidecar read; a bigger `drive.json` is reported, not read.
const MAX_SIDECAR_BYTES: usize = 4 << 20;
/// Objects whose metadata is read at once.
const METADATA_CONCURRENCY: usize = 8;

/// What to sync and where its reads are accounted.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub bucket: String,
    pub drives_prefix: String,
    pub runs_prefix: String,
    /// Office name written to the egress ledger.
    pub office: String,
    /// The office cache: objects it holds whole are read from it, never from the store (no
    /// egress). `None`: everything is read from the store.
    pub cache: Option<Arc<dyn LocalCopies>>,
    /// What part of the bucket the pass looks at.
    pub scope: SyncScope,
}

/// Which part of the catalog bucket a pass lists and brings in line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SyncScope {
    /// The drives and runs prefixes, whole: the periodic pass, which also repairs whatever a
    /// targeted pass missed.
    #[default]
    Whole,
    /// Only the keys under these prefixes (the folders that S3 events and office writes name):
    /// objects, drives and runs elsewhere are left as they are. Prefixes outside the drives
    /// and runs prefixes are ignored.
    Prefixes(Vec<String>),
}

impl SyncScope {
    /// The prefixes to list: the drives and runs prefixes, or the scope's own that lie inside
    /// them (sorted, without one inside another).
    fn listed_prefixes(&self, options: &SyncOptions) -> Vec<String> {
        let whole = [options.drives_prefix.clone(), options.runs_prefix.clone()];
        match self {
            SyncScope::Whole => whole.to_vec(),
            SyncScope::Prefixes(prefixes) => {
                let mut inside: Vec<String> = prefixes
                    .iter()
                    .filter(|p| whole.iter().any(|w| p.starts_with(w.as_str())))
                    .cloned()
                    .collect();
                inside.sort();
                inside.dedup();
                let mut outermost: Vec<String> = Vec::with_capacity(inside.len());
                for prefix in inside {
                    if !outermost.iter().any(|o| prefix.starts_with(o.as_str())) {
                        outermost.push(prefix);
                    }
                }
                outermost
            }
        }
    }
}

/// The outcome of one sync pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    pub objects_seen: u64,
    pub objects_changed: u64,
    pub objects_deleted: u64,
    /// Drive and run sidecars present in the bucket.
    pub drives: u64,
    pub runs: u64,
    /// Files read (sidecars whole, logs and Parquet by footer) and their bytes, from the
    /// office's copy or from the store (only the latter are egress, in the ledger).
    pub files_read: u64,
    pub bytes_read: u64,
    /// One line per problem, naming the object and what was wrong.
    pub errors: Vec<String>,
}

/// A failure that stops the whole pass (the bucket cannot be listed, the database is down).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot list s3://{bucket}/{prefix}: {source}")]
    List {
        bucket: String,
        prefix: String,
        source: StoreError,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl SyncError {
    pub fn kind(&self) -> milepost_schema::ErrorKind {
        match self {
            SyncError::List { .. } => milepost_schema::ErrorKind::Unavailable,
            SyncError::Catalog(err) => err.kind(),
        }
    }
}

impl From<sea_orm::DbErr> for SyncError {
    fn from(err: sea_orm::DbErr) -> Self {
        SyncError::Catalog(CatalogError::from(err))
    }
}

/// A listed object compared with what the catalog knew.
#[derive(Debug)]
struct Change {
    meta: ObjectMeta,
}

/// Runs one sync pass over the catalog bucket.
pub async fn sync(
    catalog: &Catalog,
    store: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let mut report = SyncReport::default();
    let db = &catalog.db;

    // 1. What is in the bucket now, under the pass's prefixes.
    let prefixes = options.scope.listed_prefixes(options);
    let in_scope = |key: &str| prefixes.iter().any(|p| key.starts_with(p.as_str()));
    let mut listed: BTreeMap<String, ObjectMeta> = BTreeMap::new();
    for prefix in &prefixes {
        let mut continuation = None;
        loop {
            let page = store
                .list_page(&options.bucket, prefix, continuation.take())
                .await
                .map_err(|source| SyncError::List {
                    bucket: options.bucket.clone(),
                    prefix: prefix.clone(),
                    source,
                })?;
            for meta in page.objects {
                listed.insert(meta.key.clone(), meta);
            }
            match page.next {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
    }
    report.objects_seen = listed.len() as u64;
    // Keys that could escape a directory when materialized are never cataloged.
    listed.retain(|key, _| match unsafe_key(key) {
        Some(reason) => {
            report
                .errors
                .push(format!("{key}: unsafe key ({reason}); not cataloged"));
            false
        }
        None => true,
    });

    // 2. Diff against the catalog.
    let known: HashMap<String, object::Model> = object::Entity::find()
        .filter(object::Column::Bucket.eq(&options.bucket))
        .all(db)
        .await?
        .into_iter()
        .filter(|o| in_scope(&o.key))
        .map(|o| (o.key.clone(), o))
        .collect();
    let now = Utc::now();
    let mut changes = Vec::new();
    for (key, meta) in &listed {
        let changed = match known.get(key) {
            None => true,
            Some(row) => row.deleted_at.is_some() || !same_version(row, meta),
        };
        if changed {
            changes.push(Change { meta: meta.clone() });
        }
    }
    // Listings without ETags: ask for them, for the changed objects only.
    for change in &mut changes {
        if change.meta.etag.is_empty() {
            match store.head(&options.bucket, &change.meta.key).await {
                Ok(head) => {
                    change.meta.etag = head.etag;
                    change.meta.size = head.size;
                    change.meta.last_modified = head.last_modified.or(change.meta.last_modified);
                }
                Err(err) => report
                    .errors
                    .push(format!("{}: cannot read its etag: {err}", change.meta.key)),
            }
        }
    }
    changes.retain(|c| !c.meta.etag.is_empty());
    report.objects_changed = changes.len() as u64;

    for change in &changes {
        upsert_object(
            db,
            &options.bucket,
            &change.meta,
            known.get(&change.meta.key),
            now,
        )
        .await?;
    }
    let mut touched_drives: BTreeSet<String> = BTreeSet::new();
    let mut touched_runs: BTreeSet<String> = BTreeSet::new();
    let gone: Vec<&object::Model> = known
        .values()
        .filter(|row| row.deleted_at.is_none() && !listed.contains_key(&row.key))
        .collect();
    for row in &gone {
        let mut active: object::ActiveModel = (*row).clone().into();
        active.deleted_at = Set(Some(now));
        active.updated_at = Set(now);
        active.update(db).await?;
        touched_drives.extend(row.drive_id.clone());
        touched_runs.extend(row.run_id.clone());
    }
    report.objects_deleted = gone.len() as u64;

    // What must be read: changed sidecars, logs and Parquet files, and any whose reading an
    // earlier pass did not finish (metadata still empty), so an interrupted sync heals.
    let changed_keys: BTreeSet<&str> = changes.iter().map(|c| c.meta.key.as_str()).collect();
    let mut needs_read: Vec<ObjectMeta> = changes
        .iter()
        .filter(|c| wants_read(&c.meta.key))
        .map(|c| c.meta.clone())
        .collect();
    for (key, row) in &known {
        if row.metadata.is_none()
            && row.deleted_at.is_none()
            && wants_read(key)
            && listed.contains_key(key)
            && !changed_keys.contains(key.as_str())
        {
            needs_read.push(ObjectMeta {
                bucket: options.bucket.clone(),
                key: key.clone(),
                size: row.size as u64,
                etag: row.etag.clone(),
                last_modified: row.last_modified,
                metadata: Default::default(),
            });
        }
    }
    let mut outcomes: Vec<(String, serde_json::Value)> = Vec::new();

    let reader = Reader {
        store: store.clone(),
        cache: options.cache.clone(),
        bucket: options.bucket.clone(),
        bytes: Arc::new(AtomicU64::new(0)),
        files: Arc::new(AtomicU64::new(0)),
        ledger: Arc::new(std::sync::Mutex::new(Vec::new())),
    };

    // 3. Sidecars: drives first, so runs can name them as inputs.
    report.drives = listed
        .keys()
        .filter(|k| is_sidecar(k, &options.drives_prefix, "drive.json"))
        .count() as u64;
    report.runs = listed
        .keys()
        .filter(|k| is_sidecar(k, &options.runs_prefix, "run.json"))
        .count() as u64;
    for meta in needs_read
        .iter()
        .filter(|m| is_sidecar(&m.key, &options.drives_prefix, "drive.json"))
    {
        let outcome = match read_drive_sidecar(&reader, meta).await {
            Ok(record) => {
                match catalog::register_drive(db, &catalog.layout, record, RecordSource::Sidecar)
                    .await
                {
                    Ok(drive) => {
                        touched_drives.insert(drive.id);
                        Ok(())
                    }
                    Err(err @ CatalogError::BadInput { .. }) => {
                        Err(sidecar_terms(&err.to_string()))
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(message) => Err(message),
        };
        outcomes.push((
            meta.key.clone(),
            sidecar_outcome("drive.json", outcome, &mut report, &meta.key),
        ));
    }
    for meta in needs_read
        .iter()
        .filter(|m| is_sidecar(&m.key, &options.runs_prefix, "run.json"))
    {
        let change = Change { meta: meta.clone() };
        let outcome = match read_run_sidecar(&reader, &change.meta).await {
            Ok(mut record) => {
                let mut inputs = Vec::new();
                for input in std::mem::take(&mut record.inputs) {
                    if catalog::resolve_input_kind(db, &input).await?.is_some() {
                        inputs.push(input);
                    } else {
                        report.errors.push(format!(
                            "{}: input {input:?} names no drive, scenario or run in the catalog; left out",
                            change.meta.key
                        ));
                    }
                }
                record.inputs = inputs;
                match catalog::register_run(db, &catalog.layout, record, RecordSource::Sidecar)
                    .await
                {
                    Ok(run) => {
                        touched_runs.insert(run.id);
                        Ok(())
                    }
                    Err(err @ CatalogError::BadInput { .. }) => {
                        Err(sidecar_terms(&err.to_string()))
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(message) => Err(message),
        };
        outcomes.push((
            meta.key.clone(),
            sidecar_outcome("run.json", outcome, &mut report, &meta.key),
        ));
    }
    // Sidecar-born records whose sidecar is gone leave the catalog.
    remove_orphaned_records(
        catalog,
        &options.bucket,
        &listed,
        &in_scope,
        &mut touched_drives,
        &mut touched_runs,
    )
    .await?;

    // 4. Attach every live object without an owner (new ones, and ones whose sidecar appeared
    // only now) to the drive or run whose prefix holds it.
    let owners = OwnerPrefixes::load(catalog, &options.bucket).await?;
    let orphans = object::Entity::find()
        .filter(object::Column::Bucket.eq(&options.bucket))
        .filter(object::Column::DriveId.is_null())
        .filter(object::Column::RunId.is_null())
        .filter(object::Column::DeletedAt.is_null())
        .all(db)
        .await?;
    for row in orphans {
        let Some(owner) = owners.owner_of(&row.key) else {
            continue;
        };
        let mut active: object::ActiveModel = row.into();
        match owner {
            OwnerRef::Drive(id) => {
                active.drive_id = Set(Some(id.clone()));
                touched_drives.insert(id.clone());
            }
            OwnerRef::Run(id) => {
                active.run_id = Set(Some(id.clone()));
                touched_runs.insert(id.clone());
            }
        }
        active.update(db).await?;
    }
    for change in &changes {
        match owners.owner_of(&change.meta.key) {
            Some(OwnerRef::Drive(id)) => touched_drives.insert(id.clone()),
            Some(OwnerRef::Run(id)) => touched_runs.insert(id.clone()),
            None => false,
        };
    }

    // 5. Footers of changed logs and Parquet files, a few at a time.
    let footer_jobs: Vec<ObjectMeta> = needs_read
        .iter()
        .filter(|m| {
            m.key.ends_with(".mcap") || (m.key.ends_with(".parquet") && !is_metrics(&m.key))
        })
        .cloned()
        .collect();
    let results: Vec<(ObjectMeta, Result<serde_json::Value, String>)> =
        futures::stream::iter(footer_jobs)
            .map(|meta| {
                let reader = reader.clone();
                async move {
                    let result = read_footer(&reader, &meta).await;
                    (meta, result)
                }
            })
            .buffer_unordered(METADATA_CONCURRENCY)
            .collect()
            .await;
    for (meta, result) in results {
        let summary = match result {
            Ok(summary) => summary,
            Err(message) => {
                report.errors.push(format!("{}: {message}", meta.key));
                serde_json::json!({ "error": message })
            }
        };
        if let Some(owner) = owners.owner_of(&meta.key) {
            match owner {
                OwnerRef::Drive(id) => touched_drives.insert(id.clone()),
                OwnerRef::Run(id) => touched_runs.insert(id.clone()),
            };
        }
        outcomes.push((meta.key.clone(), summary));
    }

    // 6. Drive topics from their logs; run metrics from metrics.parquet.
    // Topics come from the summaries just read: store them first.
    for (key, value) in outcomes.drain(..) {
        object::Entity::update_many()
            .col_expr(object::Column::Metadata, Expr::value(value))
            .filter(object::Column::Bucket.eq(&options.bucket))
            .filter(object::Column::Key.eq(&key))
            .exec(db)
            .await?;
    }
    for drive_id in &touched_drives {
        refresh_topics(catalog, drive_id).await?;
    }
    // metrics.parquet is read whole, once: its footer and its aggregates come from the same bytes.
    for meta in needs_read.iter().filter(|m| is_metrics(&m.key)) {
        let outcome = match owners.owner_of(&meta.key) {
            Some(OwnerRef::Run(run_id)) => match read_metrics(&reader, meta).await {
                Ok((summary, metrics)) => {
                    run::Entity::update_many()
                        .col_expr(run::Column::Metrics, Expr::value(metrics))
                        .filter(run::Column::Id.eq(run_id))
                        .exec(db)
                        .await?;
                    touched_runs.insert(run_id.clone());
                    summary
                }
                Err(message) => {
                    report.errors.push(format!("{}: {message}", meta.key));
                    serde_json::json!({ "error": message })
                }
            },
            _ => {
                let message = "metrics.parquet outside any run (no run.json beside it)";
                report.errors.push(format!("{}: {message}", meta.key));
                serde_json::json!({ "error": message })
            }
        };
        object::Entity::update_many()
            .col_expr(object::Column::Metadata, Expr::value(outcome))
            .filter(object::Column::Bucket.eq(&options.bucket))
            .filter(object::Column::Key.eq(&meta.key))
            .exec(db)
            .await?;
    }

    // 7. The search index follows, through the change feed (registrations appended their
    // own changes; object and metadata updates are appended here).
    let drive_ids: Vec<String> = touched_drives.into_iter().collect();
    let run_ids: Vec<String> = touched_runs.into_iter().collect();
    crate::feed::append_touched(catalog, &drive_ids, &run_ids).await?;
    catalog.catch_up().await?;

    report.files_read = reader.files.load(Ordering::Relaxed);
    report.bytes_read = reader.bytes.load(Ordering::Relaxed);
    let ledger = std::mem::take(&mut *reader.ledger.lock().unwrap_or_else(|p| p.into_inner()));
    let records: Vec<_> = ledger
        .into_iter()
        .map(|(key, bytes)| EgressRecord::sync_read(now, &options.bucket, key, bytes))
        .collect();
    milepost_schema::egress::record(db, &options.office, records)
        .await
        .map_err(CatalogError::from)?;
    // `sync_runs` records whole passes: a targeted one's counts are of its prefixes only.
    if options.scope == SyncScope::Whole {
        sync_run::ActiveModel {
            started_at: Set(started_at),
            finished_at: Set(Some(Utc::now())),
            objects_seen: Set(report.objects_seen as i64),
            drives: Set(report.drives as i64),
            runs: Set(report.runs as i64),
            errors: Set(serde_json::json!(report.errors)),
            ..Default::default()
        }
        .insert(db)
        .await?;
    }
    tracing::info!(
        bucket = %options.bucket,
        prefixes = prefixes.len(),
        seen = report.objects_seen,
        changed = report.objects_changed,
        deleted = report.objects_deleted,
        files_read = report.files_read,
        bytes_read = report.bytes_read,
        errors = report.errors.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "catalog sync finished"
    );
    Ok(report)
}

/// Sidecars are read whole; logs and Parquet files by their footers. Everything else is only
/// listed.
fn wants_read(key: &str) -> bool {
    key.ends_with("/drive.json")
        || key.ends_with("/run.json")
        || key.ends_with(".mcap")
        || key.ends_with(".parquet")
}

/// What is stored in `objects.metadata` for a sidecar, so the next pass knows it was read.
fn sidecar_outcome(
    name: &str,
    outcome: Result<(), String>,
    report: &mut SyncReport,
    key: &str,
) -> serde_json::Value {
    match outcome {
        Ok(()) => serde_json::json!({ "format": name }),
        Err(message) => {
            report.errors.push(format!("{key}: {message}"));
            serde_json::json!({ "format": name, "error": message })
        }
    }
}

fn same_version(row: &object::Model, meta: &ObjectMeta) -> bool {
    if !meta.etag.is_empty() {
        return row.etag == meta.etag && row.size == meta.size as i64;
    }
    row.size == meta.size as i64 && same_instant(row.last_modified, meta.last_modified)
}

fn same_instant(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.timestamp() == b.timestamp(),
        _ => false,
    }
}

fn is_sidecar(key: &str, prefix: &str, name: &str) -> bool {
    key.starts_with(prefix) && key.rsplit('/').next() == Some(name)
}

/// Validation speaks GraphQL (`input.endedAt`); sidecar authors know `ended_at`.
fn sidecar_terms(message: &str) -> String {
    let Some(rest) = message.strip_prefix("input.") else {
        return message.to_owned();
    };
    let (field, tail) = rest.split_once(':').unwrap_or((rest, ""));
    let mut snake = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    let tail = tail
        .replace("startedAt", "started_at")
        .replace("endedAt", "ended_at");
    format!("invalid sidecar: {snake}:{tail}")
}

async fn upsert_object(
    db: &sea_orm::DatabaseConnection,
    bucket: &str,
    meta: &ObjectMeta,
    known: Option<&object::Model>,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    match known {
        Some(row) => {
            let mut active: object::ActiveModel = row.clone().into();
            active.size = Set(meta.size as i64);
            active.etag = Set(meta.etag.clone());
            active.last_modified = Set(meta.last_modified);
            active.deleted_at = Set(None);
            active.metadata = Set(None);
            active.updated_at = Set(now);
            active.update(db).await?;
        }
        None => {
            object::ActiveModel {
                bucket: Set(bucket.to_owned()),
                key: Set(meta.key.clone()),
                size: Set(meta.size as i64),
                etag: Set(meta.etag.clone()),
                last_modified: Set(meta.last_modified),
                drive_id: Set(None),
                run_id: Set(None),
                deleted_at: Set(None),
                metadata: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(db)
            .await?;
        }
    }
    Ok(())
}

/// Reads from the office cache when it holds the object whole, otherwise from the store,
/// counting files and bytes for the report and the upstream bytes for the ledger.
#[derive(Clone)]
struct Reader {
    store: Arc<dyn ObjectStore>,
    cache: Option<Arc<dyn LocalCopies>>,
    bucket: String,
    bytes: Arc<AtomicU64>,
    files: Arc<AtomicU64>,
    /// Bytes read from upstream, by key: the egress.
    ledger: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl Reader {
    /// Counts one file read: `bytes` in all, `from_upstream` of them from the store.
    fn account(&self, key: &str, bytes: u64, from_upstream: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if from_upstream > 0 {
            self.ledger
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
    async fn read_whole(&self, meta: &ObjectMeta, limit: usize) -> Result<Bytes, String> {
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

/// Reads a run's metrics.parquet once; returns its object metadata and the run's metrics.
async fn read_metrics(
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

fn is_metrics(key: &str) -> bool {
    key.ends_with("/metrics.parquet")
}

/// Why a key must not be cataloged: it could name a path outside a view directory.
fn unsafe_key(key: &str) -> Option<&'static str> {
    if key.starts_with('/') {
        Some("absolute path")
    } else if key.contains('\0') {
        Some("contains a NUL byte")
    } else if key.contains('\\') {
        Some("contains a backslash")
    } else if key.split('/').any(|step| step == "..") {
        Some("contains a `..` step")
    } else if key.split('/').any(|step| step == ".") {
        Some("contains a `.` step")
    } else {
        None
    }
}

async fn refresh_topics(catalog: &Catalog, drive_id: &str) -> Result<(), SyncError> {
    let logs: Vec<Option<serde_json::Value>> = object::Entity::find()
        .select_only()
        .column(object::Column::Metadata)
        .filter(object::Column::DriveId.eq(drive_id))
        .filter(object::Column::DeletedAt.is_null())
        .into_tuple()
        .all(&catalog.db)
        .await?;
    let mut topics = BTreeSet::new();
    for summary in logs.into_iter().flatten() {
        if let Some(list) = summary["mcap"]["topics"].as_array() {
            topics.extend(
                list.iter()
                    .filter_map(|t| t["topic"].as_str().map(str::to_owned)),
            );
        }
    }
    let Some(drive) = drive::Entity::find_by_id(drive_id).one(&catalog.db).await? else {
        return Ok(());
    };
    let topics: Vec<String> = topics.into_iter().collect();
    if string_list(&drive.topics) != topics {
        let mut active: drive::ActiveModel = drive.into();
        active.topics = Set(serde_json::json!(topics));
        active.update(&catalog.db).await?;
    }
    Ok(())
}

#[derive(Debug)]
enum OwnerRef {
    Drive(String),
    Run(String),
}

/// Prefix → owner, for attaching objects to the drive or run whose folder holds them.
struct OwnerPrefixes {
    by_prefix: HashMap<String, OwnerRef>,
}

impl OwnerPrefixes {
    async fn load(catalog: &Catalog, bucket: &str) -> Result<OwnerPrefixes, SyncError> {
        let mut by_prefix = HashMap::new();
        let drives: Vec<(String, String)> = drive::Entity::find()
            .select_only()
            .columns([drive::Column::Id, drive::Column::Prefix])
            .filter(drive::Column::Bucket.eq(bucket))
            .into_tuple()
            .all(&catalog.db)
            .await?;
        for (id, prefix) in drives {
            by_prefix.insert(prefix, OwnerRef::Drive(id));
        }
        let runs: Vec<(String, String)> = run::Entity::find()
            .select_only()
            .columns([run::Column::Id, run::Column::Prefix])
            .filter(run::Column::Bucket.eq(bucket))
            .into_tuple()
            .all(&catalog.db)
            .await?;
        for (id, prefix) in runs {
            by_prefix.insert(prefix, OwnerRef::Run(id));
        }
        Ok(OwnerPrefixes { by_prefix })
    }

    /// The owner whose prefix is the longest ancestor folder of `key`.
    fn owner_of(&self, key: &str) -> Option<&OwnerRef> {
        let mut end = key.len();
        while let Some(slash) = key[..end].rfind('/') {
            if let Some(owner) = self.by_prefix.get(&key[..=slash]) {
                return Some(owner);
            }
            end = slash;
        }
        None
    }
}

/// Deletes the sidecar-born drives and runs whose sidecar, in the pass's scope, is not listed.
async fn remove_orphaned_records(
    catalog: &Catalog,
    bucket: &str,
    listed: &BTreeMap<String, ObjectMeta>,
    in_scope: &(dyn Fn(&str) -> bool + Sync),
    touched_drives: &mut BTreeSet<String>,
    touched_runs: &mut BTreeSet<String>,
) -> Result<(), SyncError> {
    let drives = drive::Entity::find()
        .filter(drive::Column::Bucket.eq(bucket))
        .filter(drive::Column::Source.eq(RecordSource::Sidecar))
        .all(&catalog.db)
        .await?;
    for drive in drives {
        let sidecar = format!("{}drive.json", drive.prefix);
        if !in_scope(&sidecar) || listed.contains_key(&sidecar) {
            continue;
        }
        let scenarios = catalog::drive_scenarios(&catalog.db, &drive.id).await?;
        let txn = catalog.db.begin().await?;
        drive::Entity::delete_by_id(drive.id.clone())
            .exec(&txn)
            .await?;
        let mut changes = vec![(InputKind::Drive, drive.id.as_str())];
        changes.extend(
            scenarios
                .iter()
                .map(|scenario| (InputKind::Scenario, scenario.id.as_str())),
        );
        crate::feed::append(&txn, &changes).await?;
        txn.commit().await?;
        touched_drives.remove(&drive.id);
    }
    let runs = run::Entity::find()
        .filter(run::Column::Bucket.eq(bucket))
        .filter(run::Column::Source.eq(RecordSource::Sidecar))
        .all(&catalog.db)
        .await?;
    for run in runs {
        let sidecar = format!("{}run.json", run.prefix);
        if !in_scope(&sidecar) || listed.contains_key(&sidecar) {
            continue;
        }
        let txn = catalog.db.begin().await?;
        run::Entity::delete_by_id(run.id.clone()).exec(&txn).await?;
        crate::feed::append(&txn, &[(InputKind::Run, run.id.as_str())]).await?;
        txn.commit().await?;
        touched_runs.remove(&run.id);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sidecars

#[derive(Debug, Deserialize)]
struct DriveSidecar {
    drive_id: String,
    vehicle: String,
    city: Option<String>,
    route: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    distance_km: Option<f64>,
    software_version: Option<String>,
    weather: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    events: Vec<SidecarEvent>,
    #[serde(default)]
    scenarios: Vec<SidecarSpan>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct SidecarEvent {
    at: DateTime<Utc>,
    kind: String,
    label: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SidecarSpan {
    label: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RunSidecar {
    run_id: String,
    kind: String,
    pipeline: String,
    commit: Option<String>,
    status: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    input_windows: Vec<SidecarWindow>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// One of `run.json`'s `input_windows[]`: a drive and a half-open window of its time.
#[derive(Debug, Deserialize)]
struct SidecarWindow {
    drive_id: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("invalid sidecar: {err}"))
}

fn folder_of(key: &str) -> String {
    key.rfind('/')
        .map_or_else(String::new, |i| key[..=i].to_owned())
}

async fn read_drive_sidecar(reader: &Reader, meta: &ObjectMeta) -> Result<DriveRecord, String> {
    let body = reader.read_whole(meta, MAX_SIDECAR_BYTES).await?;
    let sidecar: DriveSidecar = parse_json(&body)?;
    Ok(DriveRecord {
        id: sidecar.drive_id,
        vehicle: sidecar.vehicle,
        city: sidecar.city,
        route: sidecar.route,
        started_at: sidecar.started_at,
        ended_at: sidecar.ended_at,
        distance_km: sidecar.distance_km,
        software_version: sidecar.software_version,
        weather: sidecar.weather,
        tags: sidecar.tags,
        events: sidecar
            .events
            .into_iter()
            .map(|e| EventRecord {
                at: e.at,
                kind: e.kind,
                label: e.label,
            })
            .collect(),
        scenarios: sidecar
            .scenarios
            .into_iter()
            .map(|s| SpanRecord {
                label: s.label,
                start: s.start,
                end: s.end,
                tags: s.tags,
            })
            .collect(),
        bucket: Some(reader.bucket.clone()),
        prefix: Some(folder_of(&meta.key)),
        extra: Some(serde_json::Value::Object(sidecar.extra)),
        sidecar_etag: Some(meta.etag.clone()),
    })
}

async fn read_run_sidecar(reader: &Reader, meta: &ObjectMeta) -> Result<RunRecord, String> {
    let body = reader.read_whole(meta, MAX_SIDECAR_BYTES).await?;
    let sidecar: RunSidecar = parse_json(&body)?;
    let kind: RunKind = sidecar
        .kind
        .parse()
        .map_err(|err| format!("invalid sidecar: kind: {err}"))?;
    let status: RunStatus = sidecar
        .status
        .parse()
        .map_err(|err| format!("invalid sidecar: status: {err}"))?;
    Ok(RunRecord {
        id: sidecar.run_id,
        kind,
        pipeline: sidecar.pipeline,
        commit: sidecar.commit,
        status,
        started_at: sidecar.started_at,
        finished_at: sidecar.finished_at,
        inputs: sidecar.inputs,
        input_windows: sidecar
            .input_windows
            .into_iter()
            .map(|w| WindowRecord {
                drive_id: w.drive_id,
                start: w.start,
                end: w.end,
            })
            .collect(),
        tags: sidecar.tags,
        metrics: None,
        bucket: Some(reader.bucket.clone()),
        prefix: Some(folder_of(&meta.key)),
        extra: Some(serde_json::Value::Object(sidecar.extra)),
        sidecar_etag: Some(meta.etag.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_errors_use_sidecar_field_names() {
        assert_eq!(
            sidecar_terms("input.endedAt: 2026-01-01T00:00:00+00:00 is before startedAt 2026-01-02T00:00:00+00:00"),
            "invalid sidecar: ended_at: 2026-01-01T00:00:00+00:00 is before started_at 2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            sidecar_terms("input.scenarios[0].end: x"),
            "invalid sidecar: scenarios[0].end: x"
        );
    }

    #[test]
    fn keys_that_escape_are_unsafe() {
        assert_eq!(
            unsafe_key("drives/a/../../etc/passwd"),
            Some("contains a `..` step")
        );
        assert_eq!(unsafe_key("/etc/passwd"), Some("absolute path"));
        assert_eq!(unsafe_key("drives/a\\b"), Some("contains a backslash"));
        assert_eq!(unsafe_key("drives/a\0b"), Some("contains a NUL byte"));
        assert_eq!(unsafe_key("drives/./x"), Some("contains a `.` step"));
        assert_eq!(unsafe_key("drives/a..b/c.mcap"), None);
    }

    #[test]
    fn sidecars_are_recognised_by_name_under_their_prefix() {
        assert!(is_sidecar(
            "drives/2026-11-01/gz-1/d1/drive.json",
            "drives/",
            "drive.json"
        ));
        assert!(!is_sidecar(
            "drives/2026-11-01/gz-1/d1/old-drive.json",
            "drives/",
            "drive.json"
        ));
        assert!(!is_sidecar("runs/r1/drive.json", "drives/", "drive.json"));
    }

    #[test]
    fn owners_are_found_by_the_longest_folder() {
        let mut by_prefix = HashMap::new();
        by_prefix.insert("drives/a/".to_owned(), OwnerRef::Drive("outer".into()));
        by_prefix.insert("drives/a/b/".to_owned(), OwnerRef::Drive("inner".into()));
        let owners = OwnerPrefixes { by_prefix };
        assert!(
            matches!(owners.owner_of("drives/a/b/c/x.mcap"), Some(OwnerRef::Drive(id)) if id == "inner")
        );
        assert!(
            matches!(owners.owner_of("drives/a/y.mcap"), Some(OwnerRef::Drive(id)) if id == "outer")
        );
        assert!(owners.owner_of("drives/z/y.mcap").is_none());
    }
}
