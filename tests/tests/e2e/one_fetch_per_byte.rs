//! "One fetch per byte": bytes the office holds are never fetched from upstream S3 again, and
//! reading them costs no egress.
//!
//! - A byte range of an object the office cache holds whole, or is downloading whole, is
//!   served from it: [`OfficeCache::read`] and [`OfficeCache::fetch_range`] (the trimmed
//!   materialization's reads) add no upstream GET. The in-flight case is made deterministic by
//!   a gate on the real loopback S3 that holds the whole download's last part until the
//!   ranged callers have joined.
//! - The catalog sync reads the footers (and sidecars) of objects written in the office from
//!   the office's copy, whether the write is still on its way to S3 or already uploaded and
//!   still cached: the egress ledger and the upstream meter do not grow.
//!
//! SQLite by default; PostgreSQL when `MILEPOST_TEST_DATABASE_URL` is set.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use milepost_api::config::Config;
use milepost_cacher::cache::{CacheSettings, FetchContext, OfficeCache};
use milepost_indexer::fleet::{self, FleetSpec, GeneratedDrive};
use milepost_schema::entity::{egress_ledger, object};
use milepost_schema::enums::Role;
use milepost_store::ObjectKey;
use milepost_store::{
    build_store, ByteRange, DelimitedPage, EgressMeter, GetResponse, ListPage, ObjectMeta,
    ObjectMetadata, ObjectStore, StoreError,
};
use milepost_testkit::{LoopbackUpstream, TestApp, TestDatabase};
use sea_orm::entity::prelude::async_trait::async_trait;
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};
use tokio::sync::{Notify, Semaphore};

const BUCKET: &str = "fleet";
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// 1. Ranges of objects cached whole, or being fetched whole.

/// Holds the upstream GET of one byte range until [`open`](Gate::open): the whole download's
/// last part, so that the download is in flight for as long as the test needs.
#[derive(Debug)]
struct Gate {
    held: Mutex<Option<ByteRange>>,
    /// Notified when the held GET arrives.
    arrived: Notify,
    open: Semaphore,
}

impl Gate {
    fn new() -> Self {
        Gate {
            held: Mutex::new(None),
            arrived: Notify::new(),
            open: Semaphore::new(0),
        }
    }

    fn hold(&self, range: ByteRange) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(range);
    }

    fn open(&self) {
        self.open.add_permits(1);
    }

    async fn pass(&self, range: ByteRange) {
        let held = *self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held == Some(range) {
            self.arrived.notify_one();
            let _ = self.open.acquire().await;
        }
    }
}

/// The real upstream store (`build_store` over the loopback S3, metered), with GETs of the
/// gate's range held until it opens.
#[derive(Debug)]
struct GatedStore {
    inner: Arc<dyn ObjectStore>,
    gate: Arc<Gate>,
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        self.inner.list_page(bucket, prefix, continuation).await
    }

    async fn list_delimited(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        continuation: Option<String>,
    ) -> Result<DelimitedPage, StoreError> {
        self.inner
            .list_delimited(bucket, prefix, delimiter, continuation)
            .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(bucket, key).await
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: ByteRange,
        if_match: Option<&str>,
    ) -> Result<GetResponse, StoreError> {
        self.gate.pass(range).await;
        self.inner.get(bucket, key, range, if_match).await
    }

    async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        metadata: &ObjectMetadata,
    ) -> Result<ObjectMeta, StoreError> {
        self.inner.put_with(bucket, key, body, metadata).await
    }

    async fn create_multipart_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: &ObjectMetadata,
    ) -> Result<String, StoreError> {
        self.inner
            .create_multipart_with(bucket, key, metadata)
            .await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.inner
            .upload_part(bucket, key, upload_id, part_number, body)
            .await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<ObjectMeta, StoreError> {
        self.inner
            .complete_multipart(bucket, key, upload_id, parts)
            .await
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.inner.abort_multipart(bucket, key, upload_id).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.inner.delete(bucket, key).await
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.inner.ensure_bucket(bucket).await
    }
}

/// An office cache (1 MiB parts) over the gated, metered loopback S3, with its own catalog
/// database.
struct GatedCache {
    upstream: LoopbackUpstream,
    meter: Arc<EgressMeter>,
    gate: Arc<Gate>,
    db: DatabaseConnection,
    cache: Arc<OfficeCache>,
    _database: TestDatabase,
    _dir: tempfile::TempDir,
}

impl GatedCache {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = LoopbackUpstream::start(BUCKET).await;
        let database = TestDatabase::create(dir.path())
            .await
            .expect("test database (is PostgreSQL running?)");
        let db = milepost_schema::connect(database.url()).await.expect("db");
        milepost_schema::migrate(&db).await.expect("migrate");
        let meter = EgressMeter::new();
        let gate = Arc::new(Gate::new());
        let store: Arc<dyn ObjectStore> = Arc::new(GatedStore {
            inner: build_store(&upstream.settings(), Arc::clone(&meter)).expect("store"),
            gate: Arc::clone(&gate),
        });
        let mut settings = CacheSettings::new(dir.path().join("cache"), 64 * MIB);
        settings.part_size = MIB;
        settings.concurrency = 4;
        settings.office = "test-office".into();
        let cache = OfficeCache::open(settings, db.clone(), store)
            .await
            .expect("open cache");
        GatedCache {
            upstream,
            meter,
            gate,
            db,
            cache,
            _database: database,
            _dir: dir,
        }
    }

    async fn put(&self, key: &str, data: &Bytes) -> ObjectKey {
        let meta = self
            .upstream
            .store
            .put(BUCKET, key, data.clone())
            .await
            .expect("put");
        ObjectKey::new(BUCKET, key, meta.etag, data.len() as u64)
    }

    /// Bytes from upstream by the ledger (the cache's rows).
    async fn ledger_from_upstream(&self) -> i64 {
        self.cache.flush().await;
        egress_ledger::Entity::find()
            .all(&self.db)
            .await
            .expect("ledger")
            .iter()
            .map(|row| row.bytes_from_upstream)
            .sum()
    }
}

fn ctx() -> FetchContext {
    FetchContext {
        dataset: Some("one-fetch".into()),
        owner: Some("alice".into()),
    }
}

fn pattern(len: u64, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 11) as u8))
        .collect::<Vec<u8>>()
        .into()
}

async fn body_of(read: milepost_cacher::cache::CacheRead) -> Vec<u8> {
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

/// Ranges of an object of `size` bytes with 1 MiB parts: (start, len). The footer and a range
/// across the last part boundary need the last part; one lies in the first part.
fn ranges(size: u64) -> [(u64, u64); 3] {
    [(size - 37, 37), (4 * MIB - 100, 200), (MIB / 2, 1000)]
}

fn bounded(start: u64, len: u64) -> ByteRange {
    ByteRange::Bounded {
        start,
        end_inclusive: start + len - 1,
    }
}

/// Who asks for the range: a reader (`/data`, the S3 gateway) or the trimmed materialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Read,
    FetchRange,
}

/// Bytes `start..start + len` of `object` as `caller` gets them: the body of
/// [`OfficeCache::read`] (with whether it was a hit), or the entry of
/// [`OfficeCache::fetch_range`] (asserting it cost no upstream byte).
async fn ranged(
    cache: &OfficeCache,
    caller: Caller,
    object: &ObjectKey,
    (start, len): (u64, u64),
) -> (Vec<u8>, bool) {
    match caller {
        Caller::Read => {
            let read = cache
                .read(object, bounded(start, len), &ctx())
                .await
                .expect("read");
            let hit = read.hit;
            (body_of(read).await, hit)
        }
        Caller::FetchRange => {
            let (_, outcome) = cache
                .fetch_range(object, start, len, &ctx())
                .await
                .expect("fetch_range");
            assert_eq!(
                outcome.bytes_from_upstream, 0,
                "bytes {start}+{len} of {object} came from upstream"
            );
            let bytes = std::fs::read(outcome.path.as_deref().expect("a content file"))
                .expect("range entry");
            (bytes, outcome.hit)
        }
    }
}

/// Ranges of an object cached whole: served from it, no upstream GET.
async fn served_from_the_cached_object(caller: Caller) {
    let t = GatedCache::start().await;
    let size = 4 * MIB + 4321;
    let data = pattern(size, 7);
    let object = t.put("drives/d-1/logs/whole.mcap", &data).await;
    t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    assert_eq!(t.meter.get_requests(), 5, "one GET per 1 MiB part");
    assert_eq!(t.meter.bytes_from_upstream(), size);

    for range @ (start, len) in ranges(size) {
        let (bytes, hit) = ranged(&t.cache, caller, &object, range).await;
        assert!(
            bytes == data[start as usize..(start + len) as usize],
            "{caller:?} {start}+{len}"
        );
        if caller == Caller::Read {
            assert!(hit, "read {start}+{len}: a hit");
        }
    }
    assert_eq!(
        (t.meter.get_requests(), t.meter.bytes_from_upstream()),
        (5, size),
        "{caller:?}: no upstream GET for ranges of a cached object (GETs, bytes)"
    );
    assert_eq!(t.ledger_from_upstream().await, size as i64);
    t.cache.shutdown().await;
}

/// Ranges of an object being downloaded whole: served from the download, no upstream GET of
/// their own. The download's last part is held at the gate until every ranged caller has
/// joined (polled once, each is pending: no lookup left to do when the gate opens).
async fn served_from_the_download(caller: Caller) {
    let t = GatedCache::start().await;
    let size = 4 * MIB + 4321;
    let data = pattern(size, 11);
    let object = t.put("drives/d-1/logs/inflight.mcap", &data).await;
    t.gate.hold(bounded(4 * MIB, size - 4 * MIB));
    let whole = {
        let (cache, object) = (Arc::clone(&t.cache), object.clone());
        tokio::spawn(async move { cache.fetch(&object, &ctx(), None).await })
    };
    t.gate.arrived.notified().await;
    assert!(!t.cache.is_cached(&object), "the download is in flight");

    let mut callers = Vec::new();
    for range in ranges(size) {
        let mut call = Box::pin(futures::future::maybe_done(ranged(
            &t.cache, caller, &object, range,
        )));
        let first = futures::poll!(call.as_mut());
        // A range in the last part cannot be served before the gate opens.
        if range.0 + range.1 > 4 * MIB {
            assert!(
                first.is_pending(),
                "{caller:?} {range:?} waits for the download"
            );
        }
        callers.push((range, call));
    }
    t.gate.open();

    whole.await.expect("download task").expect("whole download");
    for ((start, len), mut call) in callers {
        call.as_mut().await;
        let (bytes, hit) = call.as_mut().take_output().expect("output");
        assert!(
            bytes == data[start as usize..(start + len) as usize],
            "{caller:?} {start}+{len}"
        );
        assert!(
            !hit,
            "{caller:?} {start}+{len}: not a hit, the download was in flight"
        );
    }
    assert_eq!(
        (t.meter.get_requests(), t.meter.bytes_from_upstream()),
        (5, size),
        "{caller:?}: only the whole download's five GETs (GETs, bytes)"
    );
    assert_eq!(t.ledger_from_upstream().await, size as i64);
    t.cache.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_ranges_of_a_cached_object_are_served_from_it() {
    served_from_the_cached_object(Caller::Read).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_ranges_of_a_cached_object_are_served_from_it() {
    served_from_the_cached_object(Caller::FetchRange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_ranges_of_an_object_downloading_whole_are_served_from_the_download() {
    served_from_the_download(Caller::Read).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_ranges_of_an_object_downloading_whole_are_served_from_the_download() {
    served_from_the_download(Caller::FetchRange).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Footers of office-written objects.

/// Writes every file of `drive` through the office's S3 gateway.
async fn upload_through_gateway(gateway: &Arc<dyn ObjectStore>, drive: &GeneratedDrive) {
    for file in &drive.files {
        let body = file.render().expect("render");
        gateway.put(BUCKET, &file.key, body).await.expect("put");
    }
}

/// The catalog sync's egress ledger rows: (key, bytes from upstream).
async fn sync_egress(app: &TestApp) -> Vec<(String, i64)> {
    egress_ledger::Entity::find()
        .filter(egress_ledger::Column::Owner.eq("sync"))
        .all(app.db())
        .await
        .expect("ledger")
        .into_iter()
        .filter(|row| row.bytes_from_upstream > 0)
        .map(|row| (row.key, row.bytes_from_upstream))
        .collect()
}

/// Asserts that the sync described every MCAP log of `drive` from its footer.
async fn assert_logs_described(app: &TestApp, drive: &GeneratedDrive) {
    let logs: Vec<&str> = drive
        .files
        .iter()
        .map(|f| f.key.as_str())
        .filter(|k| k.ends_with(".mcap"))
        .collect();
    assert!(!logs.is_empty(), "the drive has MCAP logs");
    for key in logs {
        let row = object::Entity::find()
            .filter(object::Column::Bucket.eq(BUCKET))
            .filter(object::Column::Key.eq(key))
            .one(app.db())
            .await
            .expect("object row")
            .unwrap_or_else(|| panic!("{key} is cataloged"));
        let metadata = row.metadata.unwrap_or_default();
        assert_eq!(metadata["format"], "mcap", "{key}: {metadata}");
    }
}

/// An office over a loopback S3, configured by `configure`, and an S3 client of its gateway.
async fn office(configure: fn(&mut Config)) -> (LoopbackUpstream, TestApp, Arc<dyn ObjectStore>) {
    let upstream = LoopbackUpstream::start(BUCKET).await;
    let app = TestApp::builder()
        .upstream(upstream.settings(), BUCKET)
        .configure(configure)
        .start()
        .await;
    let (_, keys) = app.s3_token("vehicle", Role::Engineer).await;
    let gateway: Arc<dyn ObjectStore> = Arc::new(app.s3_client(keys));
    (upstream, app, gateway)
}

fn one_drive(seed: u64) -> GeneratedDrive {
    let fleet = fleet::generate(&FleetSpec {
        drives: 1,
        runs: 0,
        ..FleetSpec::small(seed)
    });
    fleet.drives.into_iter().next().expect("a drive")
}

/// Runs one sync pass and returns the GETs it sent upstream; the sync the gateway asked for
/// waited for `one_at_a_time` (held since before the writes), so these are the only passes.
async fn sync_counting_gets(app: &TestApp, one_at_a_time: tokio::sync::MutexGuard<'_, ()>) -> u64 {
    let state = app.state();
    let before = state.egress.snapshot().get_requests;
    drop(one_at_a_time);
    state.sync_catalog().await.expect("sync");
    state.egress.snapshot().get_requests - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footers_of_office_writes_not_yet_in_s3_cost_no_egress() {
    // Uploads crawl (1 B/s after a 64 KiB burst): the logs stay office-only.
    let (_upstream, app, gateway) =
        office(|c| c.transfer.upload_schedule = "* 1B".to_owned()).await;
    let state = app.state();
    let drive = one_drive(77);
    let one_at_a_time = state.sync_lock.lock().await;
    upload_through_gateway(&gateway, &drive).await;
    let gets = sync_counting_gets(&app, one_at_a_time).await;
    let office_only = drive
        .files
        .iter()
        .filter(|f| f.key.ends_with(".mcap") && state.write_back.version(BUCKET, &f.key).is_some())
        .count();
    assert!(office_only > 0, "logs still on their way to S3");
    assert_logs_described(&app, &drive).await;
    let ledger = sync_egress(&app).await;
    assert!(
        ledger.is_empty() && gets == 0,
        "footers of office writes not yet in S3 cost egress: ledger {ledger:?}, {gets} upstream GETs"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footers_of_uploaded_office_writes_still_cached_cost_no_egress() {
    let (upstream, app, gateway) = office(|_| {}).await;
    let state = app.state();
    let drive = one_drive(78);
    let one_at_a_time = state.sync_lock.lock().await;
    upload_through_gateway(&gateway, &drive).await;
    assert!(
        state.write_back.wait_idle(Duration::from_secs(60)).await,
        "write-back drains"
    );
    for file in &drive.files {
        let meta = upstream.store.head(BUCKET, &file.key).await.expect("in S3");
        let cached = ObjectKey::new(BUCKET, &file.key, meta.etag, meta.size);
        assert!(state.cache.is_cached(&cached), "{} is cached", file.key);
        assert!(
            state.write_back.version(BUCKET, &file.key).is_none(),
            "{} is uploaded",
            file.key
        );
    }
    let gets = sync_counting_gets(&app, one_at_a_time).await;
    assert_logs_described(&app, &drive).await;
    let ledger = sync_egress(&app).await;
    assert!(
        ledger.is_empty() && gets == 0,
        "footers of uploaded office writes still cached cost egress: ledger {ledger:?}, {gets} upstream GETs"
    );
    app.shutdown().await;
}
