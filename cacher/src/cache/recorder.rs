//! The background writer of the egress ledger, of downloaded entries' `cache_entries` rows
//! and of entries' access times: callers hand it records without waiting (an unbounded
//! channel, so a slow database never blocks a stream or a download); it writes them in
//! batches of whatever queued up meanwhile (one multi-row statement instead of a statement
//! and a commit per object: about a third of a millisecond of CPU each, on SQLite, for a
//! dataset of small objects).
//!
//! Rows of downloaded entries are written behind: a row lost with the process leaves a
//! verified file without its row, which start-up removes as an orphan (a miss, never wrong
//! bytes). What must see the rows in the database waits for [`Recorder::flush`]: every other
//! write of `cache_entries` (so that a queued row never lands after a later delete or state
//! change of the same entry), and a reservation before it reports READY.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use milepost_schema::egress::EgressRecord;
use milepost_schema::entity::cache_entry;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{FetchContext, Inner, ObjectKey};

/// Records written per batch at most.
const BATCH: usize = 512;
/// How long the writer gathers records after the first of a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

enum Record {
    Ledger(LedgerRow),
    /// A downloaded entry, verified and installed at this path (relative to the cache root).
    Ready(ObjectKey, String),
    Touch(ObjectKey, DateTime<Utc>),
    Flush(oneshot::Sender<()>),
    Stop,
}

struct LedgerRow {
    at: DateTime<Utc>,
    bucket: String,
    key: String,
    ctx: FetchContext,
    bytes_from_upstream: u64,
    bytes_served: u64,
    cache_hit: bool,
}

/// The handle on the writer task.
#[derive(Debug)]
pub(super) struct Recorder {
    tx: mpsc::UnboundedSender<Record>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the writer; rows name `office`.
    pub fn start(db: DatabaseConnection, office: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(db, office, rx));
        Self {
            tx,
            task: Mutex::new(Some(task)),
        }
    }

    fn send(&self, record: Record) {
        if self.tx.send(record).is_err() {
            tracing::debug!("cache recorder stopped, record dropped");
        }
    }

    /// `object` is downloaded, verified and installed at `path` (relative to the cache
    /// root): its `cache_entries` row, state `ready`, is written with the next batch.
    pub fn entry_ready(&self, object: &ObjectKey, path: String) {
        self.send(Record::Ready(object.clone(), path));
    }

    /// `object` was read from the cache now.
    pub fn touch(&self, object: &ObjectKey) {
        self.send(Record::Touch(object.clone(), Utc::now()));
    }

    /// A download of `object` for `ctx` took `bytes` from upstream.
    pub fn downloaded(&self, object: &ObjectKey, ctx: &FetchContext, bytes: u64) {
        self.send(Record::Ledger(LedgerRow {
            at: Utc::now(),
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            ctx: ctx.clone(),
            bytes_from_upstream: bytes,
            bytes_served: 0,
            cache_hit: false,
        }));
    }

    /// Waits until everything recorded before this call is written (or dropped on error).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Record::Flush(done));
        let _ = wait.await;
    }

    /// Writes what is queued and stops the writer.
    pub async fn shutdown(&self) {
        self.send(Record::Stop);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "cache recorder task failed");
            }
        }
    }
}

/// The ledger row of one `read`, written when its body is dropped (finished or not), with
/// the bytes it served. Also counts them into the cache's `bytes_served` as they go.
pub(super) struct ServeRecord {
    inner: Arc<Inner>,
    object: ObjectKey,
    ctx: FetchContext,
    hit: bool,
    served: u64,
}

impl ServeRecord {
    pub fn new(inner: Arc<Inner>, object: ObjectKey, ctx: FetchContext, hit: bool) -> Self {
        Self {
            inner,
            object,
            ctx,
            hit,
            served: 0,
        }
    }

    pub fn served(&mut self, bytes: u64) {
        self.served += bytes;
        self.inner
            .counters
            .bytes_served
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for ServeRecord {
    fn drop(&mut self) {
        self.inner.recorder.send(Record::Ledger(LedgerRow {
            at: Utc::now(),
            bucket: std::mem::take(&mut self.object.bucket),
            key: std::mem::take(&mut self.object.key),
            ctx: std::mem::take(&mut self.ctx),
            bytes_from_upstream: 0,
            bytes_served: self.served,
            cache_hit: self.hit,
        }));
    }
}

async fn run(db: DatabaseConnection, office: String, mut rx: mpsc::UnboundedReceiver<Record>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return; // every sender is gone
        }
        // Records come one per download or read, a few milliseconds apart when many run at
        // once: gathering them for a moment makes one statement of what would be a dozen.
        // Nobody waits for them, except a flush, which is written at once.
        let waited_for = |batch: &[Record]| {
            batch
                .iter()
                .any(|r| matches!(r, Record::Flush(_) | Record::Stop))
        };
        if batch.len() < BATCH && !waited_for(&batch) {
            let gather = async {
                while batch.len() < BATCH && !waited_for(&batch) {
                    let room = BATCH - batch.len();
                    if rx.recv_many(&mut batch, room).await == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(GATHER, gather).await;
        }
        let mut rows = Vec::new();
        let mut ready = Vec::new();
        let mut touches = HashMap::new();
        let mut flushes = Vec::new();
        let mut stop = false;
        for record in batch.drain(..) {
            match record {
                Record::Ledger(row) => rows.push(row),
                Record::Ready(object, path) => ready.push((object, path)),
                Record::Touch(object, at) => {
                    touches.insert(object, at);
                }
                Record::Flush(done) => flushes.push(done),
                Record::Stop => stop = true,
            }
        }
        // Before the touches: a touch of a new entry updates its row.
        super::entries::upsert_ready_many(&db, ready).await;
        write_ledger(&db, &office, rows).await;
        write_touches(&db, touches).await;
        for done in flushes {
            let _ = done.send(());
        }
        if stop {
            return;
        }
    }
}

async fn write_ledger(db: &DatabaseConnection, office: &str, rows: Vec<LedgerRow>) {
    if rows.is_empty() {
        return;
    }
    let count = rows.len();
    let records = rows
        .into_iter()
        .map(|row| EgressRecord {
            at: row.at,
            bucket: row.bucket,
            key: row.key,
            dataset: row.ctx.dataset,
            owner: row.ctx.owner,
            bytes_from_upstream: row.bytes_from_upstream,
            bytes_served: row.bytes_served,
            cache_hit: row.cache_hit,
        })
        .collect();
    // The ledger is accounting, not data: a write that fails is logged and dropped rather than
    // holding up the reads it describes.
    if let Err(err) = milepost_schema::egress::record(db, office, records).await {
        tracing::warn!(rows = count, error = %err, "cannot write egress ledger rows, dropping them");
    }
}

async fn write_touches(db: &DatabaseConnection, touches: HashMap<ObjectKey, DateTime<Utc>>) {
    for (object, at) in touches {
        let result = cache_entry::Entity::update_many()
            .col_expr(cache_entry::Column::LastAccess, Expr::value(at))
            .filter(cache_entry::Column::Bucket.eq(&object.bucket))
            .filter(cache_entry::Column::Key.eq(&object.key))
            .filter(cache_entry::Column::Etag.eq(&object.etag))
            .exec(db)
            .await;
        if let Err(err) = result {
            tracing::warn!(object = %object, error = %err, "cannot record a cache entry's last access");
        }
    }
}
