//! The office cache over a real S3 protocol server on loopback (s3s-fs via `LoopbackS3`),
//! through the full store stack of `build_store` behind a `FaultProxy`, with a SQLite
//! catalog: downloads, single-flight, read-through ranges, faults, verification, eviction
//! and pins, reconciliation after a crash, views and the egress ledger.
//!
//! (Over 600 lines: scenarios of the office cache sharing one environment; each test is independent.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use milepost_cacher::cache::{CacheErrorKind, CacheSettings, FetchContext, OfficeCache};
use milepost_schema::entity::{cache_entry, egress_ledger};
use milepost_schema::enums::CacheEntryState;
use milepost_store::ObjectKey;
use milepost_store::{build_store, ByteRange, EgressMeter, ObjectStore};
use milepost_testkit::{Fault, FaultProxy, LoopbackUpstream, TestDatabase};
use rand::RngCore as _;
use sea_orm::{ActiveModelTrait as _, DatabaseConnection, EntityTrait as _, Set};
use sha2::{Digest as _, Sha256};

const BUCKET: &str = "fleet";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A loopback S3, a fault proxy in front of it, a SQLite catalog and an office cache whose
/// store (`build_store`, metered by `meter`) goes through the proxy. `seed` talks to the
/// server directly, for writing objects.
struct TestCache {
    cache_dir: tempfile::TempDir,
    _database: TestDatabase,
    server: LoopbackUpstream,
    proxy: FaultProxy,
    seed: Arc<dyn ObjectStore>,
    store: Arc<dyn ObjectStore>,
    meter: Arc<EgressMeter>,
    db: DatabaseConnection,
    settings: CacheSettings,
    cache: Arc<OfficeCache>,
}

impl TestCache {
    async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts with the test defaults (64 MiB capacity, 1 MiB parts, 4 GETs in flight),
    /// adjusted by `adjust`.
    async fn with(adjust: impl FnOnce(&mut CacheSettings)) -> Self {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let server = LoopbackUpstream::start(BUCKET).await;
        let proxy = server.fault_proxy().await;
        let seed = server.store.clone();
        let meter = EgressMeter::new();
        let store = build_store(&server.settings_via(&proxy), Arc::clone(&meter)).expect("store");
        let database = TestDatabase::create(cache_dir.path())
            .await
            .expect("test database");
        let db = database.connect_migrated().await;
        let mut settings = CacheSettings::new(cache_dir.path().join("cache"), 64 * MIB);
        settings.part_size = MIB;
        settings.concurrency = 4;
        settings.office = "test-office".into();
        adjust(&mut settings);
        let cache = OfficeCache::open(settings.clone(), db.clone(), Arc::clone(&store))
            .await
            .expect("open cache");
        Self {
            cache_dir,
            _database: database,
            server,
            proxy,
            seed,
            store,
            meter,
            db,
            settings,
            cache,
        }
    }

    /// Writes `data` under `key` and returns the object as a listing would describe it.
    async fn put(&self, key: &str, data: &Bytes) -> ObjectKey {
        let meta = self.seed.put(BUCKET, key, data.clone()).await.expect("put");
        ObjectKey::new(BUCKET, key, meta.etag, data.len() as u64)
    }

    /// Closes the cache and opens a new one on the same directory and database.
    async fn reopen(&mut self) {
        self.cache.shutdown().await;
        self.cache = OfficeCache::open(
            self.settings.clone(),
            self.db.clone(),
            Arc::clone(&self.store),
        )
        .await
        .expect("reopen cache");
    }

    fn root(&self) -> &Path {
        &self.settings.root
    }

    fn staging_files(&self) -> Vec<PathBuf> {
        files_under(&self.root().join("staging"))
    }

    /// The `cache_entries` rows, once those written behind are in.
    async fn rows(&self) -> Vec<cache_entry::Model> {
        self.cache.flush().await;
        cache_entry::Entity::find()
            .all(&self.db)
            .await
            .expect("rows")
    }

    async fn ledger(&self) -> Vec<egress_ledger::Model> {
        self.cache.flush().await;
        egress_ledger::Entity::find()
            .all(&self.db)
            .await
            .expect("ledger")
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn random_bytes(len: u64) -> Bytes {
    let mut data = vec![0u8; usize::try_from(len).expect("len")];
    rand::rng().fill_bytes(&mut data);
    Bytes::from(data)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn file_sha256(path: &Path) -> String {
    sha256(&std::fs::read(path).expect("read file"))
}

fn ctx() -> FetchContext {
    FetchContext {
        dataset: Some("rainy-cut-ins".into()),
        owner: Some("alice".into()),
    }
}

async fn read_range(
    cache: &OfficeCache,
    object: &ObjectKey,
    range: ByteRange,
) -> (Vec<u8>, (u64, u64), bool) {
    let read = cache.read(object, range, &ctx()).await.expect("read");
    let (returned, hit) = (read.range, read.hit);
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(
        out.len() as u64,
        returned.1 - returned.0 + 1,
        "body length matches the range"
    );
    (out, returned, hit)
}

/// Waits until the download a read-through started has landed in the content store.
async fn wait_cached(cache: &OfficeCache, object: &ObjectKey) {
    for _ in 0..500 {
        if cache.is_cached(object) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{object} never got cached");
}

#[tokio::test]
async fn fetch_downloads_once_then_hits() {
    let t = TestCache::start().await;
    let data = random_bytes(3 * MIB + 17);
    let object = t.put("drives/d-1/log.mcap", &data).await;
    let reported = AtomicU64::new(0);
    let progress = |bytes: u64| {
        reported.fetch_max(bytes, Ordering::Relaxed);
    };

    let outcome = t
        .cache
        .fetch(&object, &ctx(), Some(&progress))
        .await
        .expect("fetch");
    assert!(!outcome.hit);
    assert_eq!(outcome.bytes_from_upstream, data.len() as u64);
    assert_eq!(reported.load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(
        file_sha256(outcome.path.as_deref().expect("a content file")),
        sha256(&data)
    );
    assert!(outcome
        .path
        .as_deref()
        .expect("a content file")
        .starts_with(t.root().join("objects")));
    assert_eq!(t.meter.bytes_from_upstream(), data.len() as u64);
    assert_eq!(t.meter.get_requests(), 4, "one ranged GET per 1 MiB part");
    let gets: Vec<_> = t
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    for get in &gets {
        assert_eq!(
            get.header("if-match"),
            Some(format!("\"{}\"", object.etag).as_str())
        );
        assert!(get.header("range").is_some());
    }
    assert!(t.cache.is_cached(&object));
    assert_eq!(t.cache.content_path(&object), outcome.path.clone());
    assert!(t.staging_files().is_empty());

    let again = t
        .cache
        .fetch(&object, &ctx(), None)
        .await
        .expect("second fetch");
    assert!(again.hit);
    assert_eq!(again.bytes_from_upstream, 0);
    assert_eq!(again.path, outcome.path);
    assert_eq!(
        t.meter.bytes_from_upstream(),
        data.len() as u64,
        "no second download"
    );

    let stats = t.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.objects), (1, 1, 1));
    assert_eq!(stats.used_bytes, data.len() as u64);
    assert_eq!(stats.bytes_from_upstream, data.len() as u64);

    let rows = t.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, CacheEntryState::Ready);
    assert_eq!(
        (rows[0].etag.as_str(), rows[0].size),
        (object.etag.as_str(), data.len() as i64)
    );
    let ledger = t.ledger().await;
    assert_eq!(
        ledger.len(),
        1,
        "one row for the download, none for the hit"
    );
    assert_eq!(ledger[0].bytes_from_upstream, data.len() as i64);
    assert_eq!((ledger[0].bytes_served, ledger[0].cache_hit), (0, false));
    assert_eq!(ledger[0].office, "test-office");
    assert_eq!(ledger[0].dataset.as_deref(), Some("rainy-cut-ins"));
    assert_eq!(ledger[0].owner.as_deref(), Some("alice"));
}

#[tokio::test]
async fn concurrent_fetches_and_reads_share_one_download() {
    let t = TestCache::start().await;
    let data = random_bytes(20 * MIB);
    let object = t.put("drives/d-1/big.mcap", &data).await;
    // Slow the upstream down so that every caller arrives while the download runs.
    t.proxy.set_latency(Duration::from_millis(50));

    let ctx = ctx();
    let fetches = (0..16).map(|_| t.cache.fetch(&object, &ctx, None));
    let reads = (0..16).map(|_| read_range(&t.cache, &object, ByteRange::All));
    let (fetched, read) = tokio::join!(
        futures::future::join_all(fetches),
        futures::future::join_all(reads)
    );

    assert_eq!(
        t.meter.bytes_from_upstream(),
        20 * MIB,
        "exactly one download"
    );
    assert_eq!(t.meter.get_requests(), 20);
    let fetched: Vec<_> = fetched.into_iter().map(|r| r.expect("fetch")).collect();
    // `join!` polls the fetches first: the first one starts the download.
    let credited: Vec<_> = fetched
        .iter()
        .map(|o| o.bytes_from_upstream)
        .filter(|b| *b > 0)
        .collect();
    assert_eq!(credited, [20 * MIB], "exactly one caller is credited");
    assert!(fetched.iter().all(|o| !o.hit) && read.iter().all(|(_, _, hit)| !hit));
    let expected = sha256(&data);
    assert_eq!(
        file_sha256(fetched[0].path.as_deref().expect("a content file")),
        expected
    );
    for (bytes, range, _) in &read {
        assert_eq!(*range, (0, 20 * MIB - 1));
        assert_eq!(sha256(bytes), expected, "every reader gets the exact bytes");
    }
    let ledger = t.ledger().await;
    let from_upstream: i64 = ledger.iter().map(|r| r.bytes_from_upstream).sum();
    let served: i64 = ledger.iter().map(|r| r.bytes_served).sum();
    assert_eq!(from_upstream, 20 * MIB as i64);
    assert_eq!(served, 16 * 20 * MIB as i64);
    assert_eq!(t.cache.stats().bytes_served, 16 * 20 * MIB);
}

/// The range shapes of HTTP, on an object of `size` bytes: (range, expected inclusive bounds).
fn range_cases(size: u64) -> Vec<(&'static str, ByteRange, (u64, u64))> {
    vec![
        (
            "first byte",
            ByteRange::Bounded {
                start: 0,
                end_inclusive: 0,
            },
            (0, 0),
        ),
        (
            "last byte",
            ByteRange::Bounded {
                start: size - 1,
                end_inclusive: size - 1,
            },
            (size - 1, size - 1),
        ),
        ("suffix", ByteRange::Suffix(1000), (size - 1000, size - 1)),
        ("open-ended", ByteRange::From(MIB + 5), (MIB + 5, size - 1)),
        (
            "middle",
            ByteRange::Bounded {
                start: MIB - 10,
                end_inclusive: 2 * MIB + 10,
            },
            (MIB - 10, 2 * MIB + 10),
        ),
        (
            "end past the end",
            ByteRange::Bounded {
                start: size - 3,
                end_inclusive: size + 100,
            },
            (size - 3, size - 1),
        ),
        ("whole", ByteRange::All, (0, size - 1)),
    ]
}

#[tokio::test]
async fn ranges_read_through_uncached_objects_and_from_cached_ones() {
    let t = TestCache::start().await;
    let size = 3 * MIB + 333;
    for (i, (name, range, (start, end))) in range_cases(size).into_iter().enumerate() {
        let data = random_bytes(size);
        let object = t.put(&format!("ranges/{i}.bin"), &data).await;
        let expected = &data[start as usize..=end as usize];

        let (bytes, returned, hit) = read_range(&t.cache, &object, range).await;
        assert!(!hit, "{name}: uncached");
        assert_eq!(returned, (start, end), "{name}");
        assert!(bytes == expected, "{name}: read-through bytes");

        wait_cached(&t.cache, &object).await;
        let before = t.meter.bytes_from_upstream();
        let (bytes, returned, hit) = read_range(&t.cache, &object, range).await;
        assert!(hit, "{name}: cached after the first read");
        assert_eq!(returned, (start, end), "{name}");
        assert!(bytes == expected, "{name}: cached bytes");
        assert_eq!(
            t.meter.bytes_from_upstream(),
            before,
            "{name}: a hit costs no egress"
        );
    }
    assert_eq!(
        t.meter.bytes_from_upstream(),
        7 * size,
        "each object downloaded once, whole"
    );

    // Unsatisfiable ranges fail before any upstream traffic, cached or not.
    let data = random_bytes(1000);
    let uncached = t.put("ranges/uncached.bin", &data).await;
    let cached = t.put("ranges/cached.bin", &data).await;
    t.cache.fetch(&cached, &ctx(), None).await.expect("fetch");
    t.proxy.reset_counters();
    for object in [&uncached, &cached] {
        for range in [
            ByteRange::From(1000),
            ByteRange::Bounded {
                start: 1000,
                end_inclusive: 2000,
            },
            ByteRange::Bounded {
                start: 5,
                end_inclusive: 4,
            },
            ByteRange::Suffix(0),
        ] {
            let err = t
                .cache
                .read(object, range, &ctx())
                .await
                .expect_err("past the end");
            assert_eq!(err.kind(), CacheErrorKind::InvalidRange, "{range}");
            assert!(err.to_string().contains(&object.key), "{err}");
        }
    }
    assert_eq!(
        t.proxy.requests(),
        0,
        "no upstream request for an unsatisfiable range"
    );
    assert!(!t.cache.is_cached(&uncached));
}

#[tokio::test]
async fn a_reader_dropping_its_stream_does_not_stop_the_download() {
    let t = TestCache::start().await;
    let data = random_bytes(12 * MIB);
    let object = t.put("drives/d-2/cam.mcap", &data).await;
    t.proxy.set_latency(Duration::from_millis(30));

    let read = t
        .cache
        .read(&object, ByteRange::All, &ctx())
        .await
        .expect("read");
    assert!(!read.hit);
    let mut body = read.body;
    let first = body.next().await.expect("a chunk").expect("bytes");
    assert!(first[..] == data[..first.len()]);
    drop(body);

    let outcome = t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    assert_eq!(
        outcome.bytes_from_upstream, 0,
        "joined the read's download or hit"
    );
    assert_eq!(
        file_sha256(outcome.path.as_deref().expect("a content file")),
        sha256(&data)
    );
    assert_eq!(t.meter.bytes_from_upstream(), 12 * MIB);
    let ledger = t.ledger().await;
    let served: Vec<_> = ledger
        .iter()
        .filter(|r| r.bytes_from_upstream == 0)
        .collect();
    assert_eq!(served.len(), 1);
    assert_eq!(
        served[0].bytes_served,
        first.len() as i64,
        "the ledger counts what was served"
    );
}

#[tokio::test]
async fn an_object_changed_upstream_is_refused_and_not_cached() {
    let t = TestCache::start().await;
    let listed = t.put("drives/d-3/log.mcap", &random_bytes(2 * MIB)).await;
    // Rewritten after the listing.
    t.put("drives/d-3/log.mcap", &random_bytes(2 * MIB)).await;

    let err = t
        .cache
        .fetch(&listed, &ctx(), None)
        .await
        .expect_err("changed");
    assert_eq!(err.kind(), CacheErrorKind::PreconditionFailed, "{err}");
    assert!(
        err.to_string().contains("fleet/drives/d-3/log.mcap"),
        "{err}"
    );
    let err = match t.cache.read(&listed, ByteRange::All, &ctx()).await {
        Ok(_) => panic!("read of a changed object succeeded"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), CacheErrorKind::PreconditionFailed, "{err}");
    assert!(!t.cache.is_cached(&listed));
    assert!(t.staging_files().is_empty(), "staging file removed");
    assert!(files_under(&t.root().join("objects")).is_empty());
    assert!(t.rows().await.is_empty());
    assert_eq!(
        t.cache.stats().used_bytes,
        0,
        "the reservation of its bytes is released"
    );
}

#[tokio::test]
async fn bodies_cut_mid_download_are_resumed_byte_exact() {
    let t = TestCache::start().await;
    let data = random_bytes(5 * MIB + 3);
    let object = t.put("drives/d-4/lidar.bin", &data).await;
    t.proxy.inject(Fault::CutBody(100_000), 3);
    t.proxy.inject(Fault::SlowDown, 1);
    t.proxy.inject(Fault::Reset, 1);

    let outcome = t
        .cache
        .fetch(&object, &ctx(), None)
        .await
        .expect("fetch through faults");
    assert_eq!(
        file_sha256(outcome.path.as_deref().expect("a content file")),
        sha256(&data)
    );
    assert_eq!(outcome.bytes_from_upstream, data.len() as u64);
    assert_eq!(t.meter.bytes_from_upstream(), data.len() as u64);
    let faulted = t.proxy.seen().iter().filter(|r| r.fault.is_some()).count();
    assert_eq!(faulted, 5, "every fault was met");
}

#[tokio::test]
async fn bytes_that_fail_verification_are_not_cached() {
    let t = TestCache::start().await;
    let original = random_bytes(2 * MIB + 1);
    let object = t.put("drives/d-5/log.mcap", &original).await;
    // Replace the bytes behind the server's back: s3s-fs keeps serving the recorded ETag
    // (the MD5 of the original) with the new bytes.
    let path = t.server.s3.root().join(BUCKET).join(&object.key);
    std::fs::write(&path, random_bytes(original.len() as u64)).expect("overwrite");

    let err = t
        .cache
        .fetch(&object, &ctx(), None)
        .await
        .expect_err("md5 mismatch");
    assert_eq!(err.kind(), CacheErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains("s3://fleet/drives/d-5/log.mcap"),
        "{err}"
    );
    assert!(t.staging_files().is_empty(), "temp file removed");
    assert!(!t.cache.is_cached(&object));
    assert!(t.rows().await.is_empty());

    // A listing that lies about the size.
    let data = random_bytes(1000);
    let mut wrong_size = t.put("drives/d-5/small.json", &data).await;
    wrong_size.size = 999;
    let err = t
        .cache
        .fetch(&wrong_size, &ctx(), None)
        .await
        .expect_err("size mismatch");
    assert_eq!(err.kind(), CacheErrorKind::Corrupt, "{err}");
    assert!(t.staging_files().is_empty());
}

#[tokio::test]
async fn eviction_is_lru_among_unpinned_entries() {
    // Capacity 10 KiB: eviction above 9 KiB, down to 7 KiB.
    let t = TestCache::with(|s| {
        s.capacity = 10 * KIB;
        s.high_watermark = 0.9;
        s.low_watermark = 0.7;
        s.part_size = KIB;
    })
    .await;
    let mut objects = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        objects.push(t.put(name, &random_bytes(2 * KIB)).await);
    }
    let [a, b, c, d, e] = &objects[..] else {
        unreachable!()
    };
    for object in [a, b, c, d] {
        t.cache.fetch(object, &ctx(), None).await.expect("fetch");
    }
    t.cache.pin("r-1", std::slice::from_ref(a));
    read_range(&t.cache, b, ByteRange::All).await; // b is now the most recently used
                                                   // 8 KiB + 2 KiB > 9 KiB: evict c (8 KiB with e), then d (6 KiB <= 7 KiB); a is pinned.
    t.cache.fetch(e, &ctx(), None).await.expect("fetch e");

    let cached: Vec<_> = objects.iter().map(|o| t.cache.is_cached(o)).collect();
    assert_eq!(cached, [true, true, false, false, true]);
    assert_eq!(t.cache.stats().used_bytes, 6 * KIB);
    assert_eq!(t.cache.stats().pinned_bytes, 2 * KIB);
    t.cache.flush().await;
    let mut keys: Vec<_> = t.rows().await.into_iter().map(|r| r.key).collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "e"]);
    assert_eq!(files_under(&t.root().join("objects")).len(), 3);

    // Evicted objects come back on demand.
    let again = t.cache.fetch(c, &ctx(), None).await.expect("fetch c again");
    assert!(!again.hit);
    assert_eq!(
        std::fs::read(again.path.as_deref().expect("a content file"))
            .expect("c")
            .len() as u64,
        2 * KIB
    );

    // Pinning an object before it is cached protects it once it lands.
    t.cache.unpin_all("r-1");
    t.cache.pin("r-2", std::slice::from_ref(d));
    t.cache.fetch(d, &ctx(), None).await.expect("fetch d");
    for name in ["f", "g", "h", "i"] {
        let object = t.put(name, &random_bytes(2 * KIB)).await;
        t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    }
    assert!(
        t.cache.is_cached(d),
        "pinned before it landed, never evicted"
    );
}

#[tokio::test]
async fn a_cache_full_of_pinned_entries_refuses_more() {
    let t = TestCache::with(|s| {
        s.capacity = 4 * KIB;
        s.part_size = KIB;
    })
    .await;
    let a = t.put("a", &random_bytes(2 * KIB)).await;
    let b = t.put("b", &random_bytes(2 * KIB)).await;
    let c = t.put("c", &random_bytes(KIB)).await;
    t.cache.pin("r-1", &[a.clone(), b.clone()]);
    t.cache.fetch(&a, &ctx(), None).await.expect("fetch a");
    t.cache.fetch(&b, &ctx(), None).await.expect("fetch b");
    let before = t.meter.bytes_from_upstream();

    let err = t.cache.fetch(&c, &ctx(), None).await.expect_err("full");
    assert_eq!(err.kind(), CacheErrorKind::Full, "{err}");
    let message = err.to_string();
    for number in ["1024", "4096"] {
        assert!(message.contains(number), "{message} gives the numbers");
    }
    assert!(message.contains("s3://fleet/c"), "{message}");
    let err = t
        .cache
        .read(&c, ByteRange::All, &ctx())
        .await
        .expect_err("full");
    assert_eq!(err.kind(), CacheErrorKind::Full);
    assert_eq!(
        t.meter.bytes_from_upstream(),
        before,
        "refused before downloading"
    );

    let huge = ObjectKey::new(BUCKET, "huge", "0123456789abcdef0123456789abcdef", 5 * KIB);
    t.cache.unpin_all("r-1");
    let err = t
        .cache
        .fetch(&huge, &ctx(), None)
        .await
        .expect_err("larger than the cache");
    assert_eq!(err.kind(), CacheErrorKind::Full);

    t.cache
        .fetch(&c, &ctx(), None)
        .await
        .expect("fits once unpinned");
}

#[tokio::test]
async fn admission_waits_for_unpinned_downloads_in_progress_and_refuses_at_once_otherwise() {
    let t = TestCache::with(|s| {
        s.capacity = 4 * KIB;
        s.part_size = KIB;
    })
    .await;
    let a = t.put("a", &random_bytes(2 * KIB)).await;
    let b = t.put("b", &random_bytes(2 * KIB)).await;
    let c_data = random_bytes(2 * KIB);
    let c = t.put("c", &c_data).await;
    // Two slow downloads fill the cache while they run.
    t.proxy.set_latency(Duration::from_millis(300));
    let downloads: Vec<_> = [&a, &b]
        .into_iter()
        .map(|object| {
            let (cache, object) = (Arc::clone(&t.cache), object.clone());
            tokio::spawn(async move { cache.fetch(&object, &ctx(), None).await })
        })
        .collect();
    for _ in 0..500 {
        if t.cache.stats().used_bytes == 4 * KIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(t.cache.stats().used_bytes, 4 * KIB, "both admitted");

    // Pinned, they stay unevictable after they end: no room for c, refused at once.
    t.cache.pin("r-1", &[a.clone(), b.clone()]);
    let err = t.cache.fetch(&c, &ctx(), None).await.expect_err("full");
    assert_eq!(err.kind(), CacheErrorKind::Full, "{err}");
    assert!(
        !t.cache.is_cached(&a) && !t.cache.is_cached(&b),
        "refused without waiting for the downloads"
    );

    // Unpinned, they are in the way only until they end: c waits, then evicts to fit.
    t.cache.unpin_all("r-1");
    t.cache.pin("r-2", std::slice::from_ref(&c));
    let outcome = tokio::time::timeout(Duration::from_secs(20), t.cache.fetch(&c, &ctx(), None))
        .await
        .expect("not waiting for ever")
        .expect("admitted once a download ended");
    assert!(!outcome.hit);
    for download in downloads {
        download.await.expect("join").expect("a and b downloaded");
    }
    t.proxy.set_latency(Duration::ZERO);
    assert_eq!(
        file_sha256(outcome.path.as_deref().expect("a content file")),
        sha256(&c_data)
    );
    let stats = t.cache.stats();
    assert!(t.cache.is_cached(&c));
    assert!(stats.used_bytes <= 4 * KIB, "{stats:?}");
    assert_eq!(stats.pinned_bytes, 2 * KIB);
}

#[tokio::test]
async fn reopening_after_a_crash_reconciles_disk_and_table() {
    let mut t = TestCache::start().await;
    let a_data = random_bytes(3000);
    let a = t.put("keep/a.bin", &a_data).await;
    let b = t.put("lost/b.bin", &random_bytes(3000)).await;
    let c = t.put("short/c.bin", &random_bytes(3000)).await;
    for object in [&a, &b, &c] {
        t.cache.fetch(object, &ctx(), None).await.expect("fetch");
    }
    t.cache.shutdown().await;

    // What a crash can leave: a half-written download, a content file whose row was never
    // written, a row whose file is gone, a truncated file, a row still in state staging.
    let staging = t.root().join("staging/0123.99.1.part");
    std::fs::write(&staging, b"half").expect("staging leftover");
    let orphan = t.root().join("objects/ab/abcdef");
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("dir");
    std::fs::write(&orphan, b"orphan").expect("orphan");
    let b_path = t.cache.content_path(&b).expect("b cached");
    std::fs::remove_file(&b_path).expect("remove b");
    let c_path = t.cache.content_path(&c).expect("c cached");
    // Content files are read-only: replace rather than write through.
    std::fs::remove_file(&c_path).expect("remove c");
    std::fs::write(&c_path, b"short").expect("truncated c");
    let now = chrono::Utc::now();
    cache_entry::ActiveModel {
        bucket: Set(BUCKET.into()),
        key: Set("staging/d.bin".into()),
        etag: Set("d".into()),
        size: Set(10),
        path: Set("staging/whatever".into()),
        state: Set(CacheEntryState::Staging),
        last_access: Set(now),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&t.db)
    .await
    .expect("staging row");

    t.reopen().await;
    assert!(t.cache.is_cached(&a));
    assert!(!t.cache.is_cached(&b), "row without its file dropped");
    assert!(!t.cache.is_cached(&c), "file of the wrong size dropped");
    assert!(!staging.exists() && t.staging_files().is_empty());
    assert!(!orphan.exists(), "orphan content file removed");
    assert!(!c_path.exists(), "wrong-size file removed");
    let rows = t.rows().await;
    assert_eq!(
        rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["keep/a.bin"]
    );
    assert_eq!(files_under(&t.root().join("objects")).len(), 1);
    let stats = t.cache.stats();
    assert_eq!((stats.objects, stats.used_bytes), (1, 3000));

    // What survived is served as a hit; what was dropped comes back from upstream.
    let before = t.meter.bytes_from_upstream();
    let (bytes, _, hit) = read_range(&t.cache, &a, ByteRange::All).await;
    assert!(hit && bytes == a_data);
    assert_eq!(t.meter.bytes_from_upstream(), before);
    let outcome = t.cache.fetch(&b, &ctx(), None).await.expect("refetch b");
    assert_eq!(outcome.bytes_from_upstream, 3000);
}

/// The unsynced marker as the cache writes it (`cache/durability.rs`): entries installed
/// since `since` under boot `boot_id` may not be on disk yet.
fn write_unsynced_marker(root: &Path, boot_id: &str, since: chrono::DateTime<chrono::Utc>) {
    std::fs::write(
        root.join("unsynced"),
        format!(
            "milepost unsynced marker v1\nboot_id {boot_id}\nsince {}\nfsync_failed false\n",
            since.to_rfc3339()
        ),
    )
    .expect("marker");
}

fn this_boot() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn deferred_installs_are_synced_and_the_marker_removed_by_shutdown() {
    let mut t = TestCache::start().await;
    let data = random_bytes(3 * MIB + 5);
    let object = t.put("sync/a.bin", &data).await;
    t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    t.reopen().await;
    assert!(
        !t.root().join("unsynced").exists(),
        "a clean shutdown leaves no marker"
    );
    assert!(t.cache.is_cached(&object));
    let (bytes, _, hit) = read_range(&t.cache, &object, ByteRange::All).await;
    assert!(hit && bytes == data);
}

#[tokio::test]
async fn after_a_crash_of_the_process_unsynced_entries_are_kept() {
    let mut t = TestCache::start().await;
    let data = random_bytes(2 * MIB);
    let object = t.put("same-boot/a.bin", &data).await;
    t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    t.cache.shutdown().await;
    // As a SIGKILL leaves it: the marker of this boot still on disk.
    write_unsynced_marker(
        t.root(),
        &this_boot(),
        chrono::Utc::now() - chrono::TimeDelta::minutes(1),
    );
    t.reopen().await;
    assert!(
        !t.root().join("unsynced").exists(),
        "recovered, marker removed"
    );
    assert!(
        t.cache.is_cached(&object),
        "the kernel kept the bytes: nothing dropped"
    );
    let before = t.meter.bytes_from_upstream();
    let (bytes, _, hit) = read_range(&t.cache, &object, ByteRange::All).await;
    assert!(hit && bytes == data);
    assert_eq!(t.meter.bytes_from_upstream(), before);
}

#[tokio::test]
async fn after_an_unclean_reboot_unsynced_entries_and_their_views_are_dropped() {
    use sea_orm::{ColumnTrait as _, QueryFilter as _};

    let mut t = TestCache::start().await;
    let old_data = random_bytes(3000);
    let old = t.put("reboot/old.bin", &old_data).await;
    let recent = t.put("reboot/recent.bin", &random_bytes(4000)).await;
    let unrecorded = t.put("reboot/unrecorded.bin", &random_bytes(5000)).await;
    for object in [&old, &recent, &unrecorded] {
        t.cache.fetch(object, &ctx(), None).await.expect("fetch");
    }
    let old_view = t
        .cache
        .create_view("r-old", std::slice::from_ref(&old))
        .await
        .expect("old view");
    let mixed_view = t
        .cache
        .create_view("r-mixed", &[old.clone(), recent.clone()])
        .await
        .expect("mixed view");
    let orphan_view = t
        .cache
        .create_view("r-orphan", std::slice::from_ref(&unrecorded))
        .await
        .expect("orphan view");
    t.cache.shutdown().await;

    // `old` was installed (and synced) hours before the marker; `recent` after it; the row of
    // `unrecorded` was lost with the process. Then the machine went down.
    let hours_ago = chrono::Utc::now() - chrono::TimeDelta::hours(3);
    cache_entry::Entity::update_many()
        .col_expr(
            cache_entry::Column::CreatedAt,
            sea_orm::sea_query::Expr::value(hours_ago),
        )
        .filter(cache_entry::Column::Key.eq("reboot/old.bin"))
        .exec(&t.db)
        .await
        .expect("age old");
    cache_entry::Entity::delete_many()
        .filter(cache_entry::Column::Key.eq("reboot/unrecorded.bin"))
        .exec(&t.db)
        .await
        .expect("lose a row");
    let recent_path = t.root().join(
        t.rows()
            .await
            .iter()
            .find(|r| r.key == "reboot/recent.bin")
            .expect("recent row")
            .path
            .clone(),
    );
    write_unsynced_marker(
        t.root(),
        "00000000-0000-0000-0000-000000000000",
        chrono::Utc::now() - chrono::TimeDelta::minutes(5),
    );

    t.reopen().await;
    assert!(
        !t.root().join("unsynced").exists(),
        "recovered, marker removed"
    );
    assert!(t.cache.is_cached(&old), "synced before the marker: kept");
    assert!(!t.cache.is_cached(&recent), "may not be on disk: dropped");
    assert!(!t.cache.is_cached(&unrecorded));
    assert!(!recent_path.exists(), "its content file removed");
    assert!(old_view.exists(), "a view of synced entries only stays");
    assert!(
        !mixed_view.exists(),
        "a view linking a dropped entry is removed"
    );
    assert!(
        !orphan_view.exists(),
        "a view linking a file without a row is removed"
    );
    let keys: Vec<_> = t.rows().await.into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["reboot/old.bin"]);

    let before = t.meter.bytes_from_upstream();
    let (bytes, _, hit) = read_range(&t.cache, &old, ByteRange::All).await;
    assert!(hit && bytes == old_data);
    assert_eq!(t.meter.bytes_from_upstream(), before);
    let outcome = t.cache.fetch(&recent, &ctx(), None).await.expect("refetch");
    assert_eq!(outcome.bytes_from_upstream, 4000, "fetched again");
}

#[tokio::test]
async fn immediate_durability_writes_no_marker() {
    let t = TestCache::with(|s| s.durability = milepost_cacher::cache::Durability::Immediate).await;
    let object = t.put("immediate/a.bin", &random_bytes(2 * MIB)).await;
    t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    assert!(!t.root().join("unsynced").exists());
    t.cache.shutdown().await;
}

#[tokio::test]
async fn a_content_file_cut_short_behind_the_cache_fails_reads_instead_of_the_process() {
    // Content files are served from memory maps: one shorter than its entry must give an
    // error, never a window mapped past the end of the file (SIGBUS on reading it).
    let t = TestCache::start().await;
    let data = random_bytes(5 * MIB + 3);
    let object = t.put("cut/log.mcap", &data).await;
    let path = t
        .cache
        .fetch(&object, &ctx(), None)
        .await
        .expect("fetch")
        .path
        .expect("a content file");
    std::fs::remove_file(&path).expect("remove");
    std::fs::write(&path, &data[..3 * MIB as usize]).expect("short copy");

    let read = t
        .cache
        .read(&object, ByteRange::All, &ctx())
        .await
        .expect("read starts");
    let chunks: Vec<_> = read.body.collect().await;
    let served: usize = chunks
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .map(|c| c.len())
        .sum();
    let err = chunks
        .iter()
        .find_map(|c| c.as_ref().err())
        .expect("the read fails at the end of the short file");
    assert_eq!(err.kind(), CacheErrorKind::Io, "{err}");
    assert!(err.to_string().contains("cut/log.mcap"), "{err}");
    assert!(served < data.len(), "not all bytes served");
    let start_of_failure = served as u64;
    assert!(start_of_failure <= 3 * MIB, "nothing past the file's end");

    // The rest of the cache goes on serving.
    let other_data = random_bytes(3 * MIB);
    let other = t.put("cut/other.bin", &other_data).await;
    t.cache
        .fetch(&other, &ctx(), None)
        .await
        .expect("fetch other");
    let (bytes, _, hit) = read_range(&t.cache, &other, ByteRange::All).await;
    assert!(hit && bytes == other_data);
}

#[tokio::test]
async fn views_are_hard_links_named_like_the_keys() {
    use std::os::unix::fs::MetadataExt as _;

    let t = TestCache::start().await;
    let a_data = random_bytes(5000);
    let b_data = random_bytes(7000);
    let a = t
        .put("drives/2024-05-01/av-7/d-42/drive.json", &a_data)
        .await;
    let b = t
        .put("drives/2024-05-01/av-7/d-42/camera/front.mcap", &b_data)
        .await;
    let missing = t.put("drives/other.json", &random_bytes(10)).await;
    t.cache.fetch(&a, &ctx(), None).await.expect("fetch a");
    t.cache.fetch(&b, &ctx(), None).await.expect("fetch b");

    let view = t
        .cache
        .create_view("r-42", &[a.clone(), b.clone()])
        .await
        .expect("view");
    assert_eq!(view, t.root().join("views/r-42"));
    let a_link = view.join("fleet/drives/2024-05-01/av-7/d-42/drive.json");
    let b_link = view.join("fleet/drives/2024-05-01/av-7/d-42/camera/front.mcap");
    assert!(std::fs::read(&a_link).expect("a") == a_data);
    assert!(std::fs::read(&b_link).expect("b") == b_data);
    let content = t.cache.content_path(&a).expect("a cached");
    assert_eq!(
        std::fs::metadata(&a_link).expect("link").ino(),
        std::fs::metadata(&content).expect("content").ino(),
        "a hard link, not a copy"
    );

    // Recreating replaces the view with exactly the new objects.
    let view = t
        .cache
        .create_view("r-42", std::slice::from_ref(&b))
        .await
        .expect("view again");
    assert!(!a_link.exists() && b_link.exists());

    let err = t
        .cache
        .create_view("r-43", &[a.clone(), missing.clone()])
        .await
        .expect_err("uncached");
    assert_eq!(err.kind(), CacheErrorKind::NotFound);
    assert!(err.to_string().contains("drives/other.json"), "{err}");
    assert!(!t.root().join("views/r-43").exists());

    let traversal = ObjectKey::new(BUCKET, "../../../etc/passwd", &a.etag, a.size);
    let err = t
        .cache
        .create_view("r-44", &[traversal])
        .await
        .expect_err("traversal");
    assert_eq!(err.kind(), CacheErrorKind::Invalid);
    assert!(err.to_string().contains("../../../etc/passwd"), "{err}");
    let err = t
        .cache
        .create_view("../escape", std::slice::from_ref(&a))
        .await
        .expect_err("bad name");
    assert_eq!(err.kind(), CacheErrorKind::Invalid);

    t.cache.remove_view("r-42").await.expect("remove");
    assert!(!view.exists());
    assert!(content.exists(), "content files stay");
    t.cache
        .remove_view("r-42")
        .await
        .expect("removing twice is fine");
}

#[tokio::test]
async fn reads_are_recorded_in_the_ledger() {
    let t = TestCache::start().await;
    let data = random_bytes(10_000);
    let object = t.put("runs/r-1/metrics.parquet", &data).await;
    read_range(
        &t.cache,
        &object,
        ByteRange::Bounded {
            start: 0,
            end_inclusive: 99,
        },
    )
    .await;
    wait_cached(&t.cache, &object).await;
    read_range(&t.cache, &object, ByteRange::Suffix(50)).await;

    let ledger = t.ledger().await;
    let mut rows: Vec<_> = ledger
        .iter()
        .map(|r| (r.bytes_from_upstream, r.bytes_served, r.cache_hit))
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, [(0, 50, true), (0, 100, false), (10_000, 0, false)]);
    let stats = t.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.bytes_served), (1, 1, 150));
    let _ = &t.cache_dir;
}

#[tokio::test]
async fn empty_objects_are_cached_without_ranged_reads() {
    let t = TestCache::start().await;
    let object = t.put("runs/r-2/empty.log", &Bytes::new()).await;
    let outcome = t.cache.fetch(&object, &ctx(), None).await.expect("fetch");
    assert!(!outcome.hit);
    assert_eq!(outcome.bytes_from_upstream, 0);
    assert_eq!(
        std::fs::metadata(outcome.path.as_deref().expect("a content file"))
            .expect("file")
            .len(),
        0
    );
    assert_eq!(t.meter.get_requests(), 0, "a HEAD checks the etag instead");
    assert!(
        t.cache
            .fetch(&object, &ctx(), None)
            .await
            .expect("again")
            .hit
    );
    let err = t
        .cache
        .read(&object, ByteRange::All, &ctx())
        .await
        .expect_err("no byte to read");
    assert_eq!(err.kind(), CacheErrorKind::InvalidRange);
}

#[tokio::test]
async fn byte_ranges_are_entries_of_their_own_fetched_with_if_match() {
    let t = TestCache::start().await;
    let data = random_bytes(3 * MIB);
    let object = t.put("drives/d-1/log.mcap", &data).await;
    // 1.5 MiB from offset 1 MiB - 10: two parts of 1 MiB, shifted into the object.
    let (start, len) = (MIB - 10, MIB + MIB / 2);
    let (entry, outcome) = t
        .cache
        .fetch_range(&object, start, len, &ctx())
        .await
        .expect("range");
    assert_eq!(entry, OfficeCache::range_key(&object, start, len));
    assert_eq!(entry.size, len);
    assert!(!outcome.hit);
    assert_eq!(outcome.bytes_from_upstream, len);
    let on_disk = std::fs::read(outcome.path.as_deref().expect("a content file")).expect("content");
    assert_eq!(&on_disk[..], &data[start as usize..(start + len) as usize]);
    assert_eq!(
        t.meter.bytes_from_upstream(),
        len,
        "only the range was read"
    );
    let gets: Vec<_> = t
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2);
    for get in &gets {
        assert_eq!(
            get.header("if-match"),
            Some(format!("\"{}\"", object.etag).as_str())
        );
    }
    assert!(
        !t.cache.is_cached(&object),
        "the object itself is not cached"
    );

    // Again: a hit, nothing more from upstream.
    let (_, again) = t
        .cache
        .fetch_range(&object, start, len, &ctx())
        .await
        .expect("range again");
    assert!(again.hit);
    assert_eq!(t.meter.bytes_from_upstream(), len);

    // Past the end, or empty: refused before any request.
    for (start, len) in [(3 * MIB - 5, 6), (0, 0)] {
        let err = t
            .cache
            .fetch_range(&object, start, len, &ctx())
            .await
            .expect_err("invalid");
        assert_eq!(err.kind(), CacheErrorKind::InvalidRange, "{err}");
    }

    // The object changed upstream: another range of the old version fails, nothing cached.
    t.put("drives/d-1/log.mcap", &random_bytes(3 * MIB)).await;
    let err = t
        .cache
        .fetch_range(&object, 0, 100, &ctx())
        .await
        .expect_err("changed");
    assert_eq!(err.kind(), CacheErrorKind::PreconditionFailed, "{err}");
    assert!(!t.cache.is_cached(&OfficeCache::range_key(&object, 0, 100)));
}
