//! Catalog sync: brings the catalog database and search index in line with the catalog bucket.
//!
//! One pass is a pipeline of stages, each in its own module:
//!
//! 1. [`listing`]: the drives and runs prefixes (or only the prefixes a targeted pass names,
//!    [`SyncScope`]: what S3 events and office writes touched) are listed page by page, the
//!    folders of a whole pass in parallel; pages flow to the diff while later ones are fetched.
//! 2. [`diff`]: each page is compared with the catalog's rows as it arrives (loaded once, a
//!    few columns each): new and changed objects, and, once the listing ends, the rows whose
//!    object is gone. Listings without ETags (some S3-compatible servers omit them) are
//!    compared by size and last-modified time, and new or changed objects are then HEADed
//!    for their ETag, because cache entries and `If-Match` need it.
//! 3. [`read`]: what changed is read concurrently under a bound: sidecars whole (they are
//!    small), MCAP logs and Parquet files by their footers (ranged GETs carrying `If-Match`).
//!    Footers are read while the database stages below run. An object whose ETag did not
//!    change is never read again. A malformed file is reported in the [`SyncReport`] and
//!    skipped; it never stops the sync.
//! 4. [`sidecars`]: drives, then runs, registered from their sidecars; sidecar-born records
//!    whose sidecar is gone leave the catalog.
//! 5. [`writes`]: objects upserted in multi-row batches, one transaction per batch, each
//!    attached to the drive or run whose folder holds it; gone objects marked in batches;
//!    descriptions stored in batches; drive topics refreshed.
//! 6. The search index follows through the change feed ([`crate::feed`]), in batches.
//!
//! Objects the office cache holds whole (the office's own writes, whether still on their way
//! to S3 or uploaded, and downloads) are read from it (its [`LocalCopies`]): no upstream
//! request, and no egress in the ledger. Only bytes read from upstream are egress.
//!
//! [`SyncProgress`] is the pass's state as it runs (phase, counts, rate, errors so far), for
//! `syncStatus`, the CLI's progress bar and the web catalog.

mod diff;
mod listing;
mod progress;
mod read;
mod sidecars;
mod writes;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use milepost_schema::egress::EgressRecord;
use milepost_schema::entity::sync_run;
use milepost_store::{LocalCopies, ObjectMeta, ObjectStore, StoreError};
use sea_orm::{ActiveModelTrait, Set};

use crate::catalog::Catalog;
use crate::error::CatalogError;

pub use progress::{SyncPhase, SyncProgress, SyncStatus};

use diff::Diff;
use read::Reader;
use writes::OwnerPrefixes;

/// Objects whose sidecars or footers are read at once.
const READ_CONCURRENCY: usize = 16;

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
    /// Where the pass reports how far it got (shared with whoever shows it).
    pub progress: Arc<SyncProgress>,
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

/// Runs one sync pass over the catalog bucket.
pub async fn sync(
    catalog: &Catalog,
    store: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let progress = options.progress.clone();
    progress.start(options.scope != SyncScope::Whole);
    let result = run(catalog, store, options).await;
    progress.finish(result.as_ref().err().map(ToString::to_string));
    result
}

async fn run(
    catalog: &Catalog,
    store: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let progress = &options.progress;
    let db = &catalog.db;

    // 1-2. List and diff, page by page.
    let prefixes = options.scope.listed_prefixes(options);
    progress.set_phase(SyncPhase::Listing);
    let Diff {
        changed,
        unread,
        gone,
        sidecar_keys,
        seen,
        errors,
    } = diff::list_and_diff(db, store, options, &prefixes).await?;
    let mut report = SyncReport {
        objects_seen: seen,
        errors,
        ..SyncReport::default()
    };
    progress.add_errors(report.errors.len() as u64);
    report.objects_changed = changed.len() as u64;
    report.objects_deleted = gone.len() as u64;
    report.drives = sidecar_keys
        .iter()
        .filter(|k| sidecars::is_sidecar(k, &options.drives_prefix, "drive.json"))
        .count() as u64;
    report.runs = sidecar_keys
        .iter()
        .filter(|k| sidecars::is_sidecar(k, &options.runs_prefix, "run.json"))
        .count() as u64;

    // What must be read: changed sidecars, logs and Parquet files, and any whose reading an
    // earlier pass did not finish (metadata still empty), so an interrupted sync heals.
    let needs_read: Vec<ObjectMeta> = changed
        .iter()
        .filter(|meta| read::wants_read(&meta.key))
        .cloned()
        .chain(unread)
        .collect();
    let reader = Reader::new(store.clone(), options.cache.clone(), &options.bucket);

    // 3. Footers are read in the background while the database stages run.
    progress.set_phase(SyncPhase::Reading);
    let mut footers = AbortOnDrop(tokio::spawn(read::read_footers(
        reader.clone(),
        needs_read
            .iter()
            .filter(|meta| read::is_footer_read(&meta.key))
            .cloned()
            .collect(),
        progress.clone(),
    )));

    // 4. Sidecars: drives first, so runs can name them as inputs.
    let mut touched = writes::Touched::default();
    let mut descriptions = sidecars::register_all(
        catalog,
        &reader,
        options,
        &needs_read,
        &mut touched,
        &mut report,
    )
    .await?;
    sidecars::remove_orphaned_records(
        catalog,
        &options.bucket,
        &sidecar_keys,
        &prefixes,
        &mut touched,
    )
    .await?;

    // 5. Objects, attached to the drive or run whose folder holds them.
    progress.set_phase(SyncPhase::Writing);
    let owners = OwnerPrefixes::load(catalog, &options.bucket).await?;
    let now = Utc::now();
    writes::upsert_objects(db, &options.bucket, &changed, &owners, now, &mut touched).await?;
    writes::mark_gone(db, &gone, now, &mut touched).await?;
    writes::attach_orphans(db, &options.bucket, &owners, &mut touched).await?;

    let (footer_results, read_errors) = (&mut footers.0)
        .await
        .map_err(|err| CatalogError::Background(format!("footer reads failed: {err}")))?;
    report.errors.extend(read_errors);
    for (key, _) in &footer_results {
        touched.add_owner_of(&owners, key);
    }
    descriptions.extend(footer_results);
    // metrics.parquet is read whole, once: its footer and the run's metrics come from the
    // same bytes.
    descriptions.extend(
        writes::read_run_metrics(db, &reader, &needs_read, &owners, &mut touched, &mut report)
            .await?,
    );
    // Topics come from the summaries just read: store them first.
    writes::store_descriptions(db, &options.bucket, descriptions).await?;
    writes::refresh_topics(catalog, &touched.drives).await?;

    // 6. The search index follows, through the change feed (registrations appended their
    // own changes; object and metadata updates are appended here).
    progress.set_phase(SyncPhase::Indexing);
    let drive_ids: Vec<String> = touched.drives.into_iter().collect();
    let run_ids: Vec<String> = touched.runs.into_iter().collect();
    crate::feed::append_touched(catalog, &drive_ids, &run_ids).await?;
    catalog.catch_up().await?;

    let (files, bytes, ledger) = reader.take_accounts();
    report.files_read = files;
    report.bytes_read = bytes;
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
    progress.set_errors(report.errors.len() as u64);
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

/// A spawned stage that stops when the pass does: a pass that fails half-way does not go on
/// reading footers nobody will store.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The keys a scope's listing covers.
fn in_scope(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

/// Sorted set of keys, for the sidecars a listing saw.
type KeySet = BTreeSet<String>;
