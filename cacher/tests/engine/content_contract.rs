//! The content store's contract, one behavioural suite run against both backends: the local
//! disk (the default) and the office tier (`[cache] tier = "s3"`). Every scenario is written
//! once and instantiated for each backend by `both!`.
//!
//! The tier is a second real S3 server on loopback (s3s-fs via `LoopbackUpstream`) reached
//! through a failover client whose first endpoint refuses connections, or, when
//! `MILEPOST_TEST_TIER_ENDPOINT` is set (comma-separated, with `_KEY`, `_SECRET`, `_BUCKET`),
//! that server (the nodes of a Garage cluster; CI also runs it with one node stopped). Each
//! test keeps its entries under a prefix of its own.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use milepost_cacher::cache::{
    CacheErrorKind, CacheSettings, FetchContext, OfficeCache, TierSettings,
};
use milepost_store::{
    build_failover_store, build_store, list_all, ByteRange, EgressMeter, ObjectKey, ObjectStore,
    StaticCredentials, UpstreamSettings,
};
use milepost_testkit::{LoopbackUpstream, TestDatabase};
use rand::RngCore as _;
use sea_orm::DatabaseConnection;

const BUCKET: &str = "fleet";
const MIB: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Disk,
    Tier,
}

/// Where the tier's objects are, for checking them behind the cache's back.
struct TierPlace {
    _server: Option<LoopbackUpstream>,
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

struct Contract {
    _dir: tempfile::TempDir,
    _database: TestDatabase,
    upstream: LoopbackUpstream,
    store: Arc<dyn ObjectStore>,
    meter: Arc<EgressMeter>,
    db: DatabaseConnection,
    settings: CacheSettings,
    tier: Option<TierPlace>,
    cache: Arc<OfficeCache>,
}

impl Contract {
    async fn start(backend: Backend, capacity: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = LoopbackUpstream::start(BUCKET).await;
        let meter = EgressMeter::new();
        let store = build_store(&upstream.settings(), Arc::clone(&meter)).expect("store");
        let database = TestDatabase::create(dir.path())
            .await
            .expect("test database");
        let db = database.connect_migrated().await;
        let mut settings = CacheSettings::new(dir.path().join("cache"), capacity);
        settings.part_size = MIB;
        settings.concurrency = 4;
        let tier = match backend {
            Backend::Disk => None,
            Backend::Tier => Some(tier_place().await),
        };
        let cache = open(&settings, &db, &store, tier.as_ref()).await;
        Self {
            _dir: dir,
            _database: database,
            upstream,
            store,
            meter,
            db,
            settings,
            tier,
            cache,
        }
    }

    async fn reopen(&mut self) {
        self.cache.shutdown().await;
        self.cache = open(&self.settings, &self.db, &self.store, self.tier.as_ref()).await;
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

    fn upstream_bytes(&self) -> u64 {
        self.meter.bytes_from_upstream()
    }

    /// The backend's content objects, seen behind the cache's back: files under
    /// `objects/`, or tier objects under the test's prefix.
    async fn content_count(&self) -> usize {
        match &self.tier {
            None => count_files(&self.settings.root.join("objects")),
            Some(tier) => list_all(tier.store.as_ref(), &tier.bucket, &tier.prefix)
                .await
                .expect("list the tier")
                .len(),
        }
    }

    /// Deletes `object`'s content behind the cache's back (a lost disk file, a lost tier
    /// object).
    async fn lose_content(&self, object: &ObjectKey) {
        let relative = OfficeCache::content_name(object);
        match &self.tier {
            None => std::fs::remove_file(self.settings.root.join(relative)).expect("remove"),
            Some(tier) => tier
                .store
                .delete(&tier.bucket, &format!("{}{relative}", tier.prefix))
                .await
                .expect("delete from the tier"),
        }
    }

    async fn read_all(&self, object: &ObjectKey, range: ByteRange) -> Bytes {
        let read = self
            .cache
            .read(object, range, &FetchContext::default())
            .await
            .expect("read");
        let mut body = read.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        Bytes::from(out)
    }
}

async fn open(
    settings: &CacheSettings,
    db: &DatabaseConnection,
    store: &Arc<dyn ObjectStore>,
    tier: Option<&TierPlace>,
) -> Arc<OfficeCache> {
    let tier = tier.map(|tier| TierSettings {
        store: Arc::clone(&tier.store),
        bucket: tier.bucket.clone(),
        prefix: tier.prefix.clone(),
        part_size: 5 * MIB as usize,
    });
    OfficeCache::open_with(settings.clone(), db.clone(), Arc::clone(store), tier)
        .await
        .expect("open cache")
}

async fn tier_place() -> TierPlace {
    let prefix = format!("test-{:016x}/", rand::rng().next_u64());
    match std::env::var("MILEPOST_TEST_TIER_ENDPOINT") {
        // Comma-separated endpoints of one cluster (a Garage cluster's nodes).
        Ok(endpoints) => {
            let var = |name: &str| {
                std::env::var(name)
                    .unwrap_or_else(|_| panic!("{name} is needed with MILEPOST_TEST_TIER_ENDPOINT"))
            };
            let credentials = StaticCredentials::new(
                var("MILEPOST_TEST_TIER_KEY"),
                var("MILEPOST_TEST_TIER_SECRET"),
            );
            let settings: Vec<UpstreamSettings> = endpoints
                .split(',')
                .map(|endpoint| UpstreamSettings {
                    endpoint: Some(endpoint.trim().to_owned()),
                    force_path_style: true,
                    credentials: Some(credentials.clone()),
                    ..UpstreamSettings::default()
                })
                .collect();
            TierPlace {
                _server: None,
                store: build_failover_store(&settings, EgressMeter::new()).expect("tier store"),
                bucket: var("MILEPOST_TEST_TIER_BUCKET"),
                prefix,
            }
        }
        // A loopback server behind a first endpoint that refuses connections: every scenario
        // also goes through the tier client's failover.
        Err(_) => {
            let server = LoopbackUpstream::start("tier").await;
            let refused = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let port = listener.local_addr().expect("addr").port();
                drop(listener);
                format!("http://127.0.0.1:{port}")
            };
            let live = server.settings();
            let dead = UpstreamSettings {
                endpoint: Some(refused),
                ..live.clone()
            };
            TierPlace {
                store: build_failover_store(&[dead, live], EgressMeter::new()).expect("tier store"),
                bucket: server.bucket.clone(),
                _server: Some(server),
                prefix,
            }
        }
    }
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|entry| {
            let path: PathBuf = entry.expect("entry").path();
            if path.is_dir() {
                count_files(&path)
            } else {
                1
            }
        })
        .sum()
}

fn random_bytes(len: u64) -> Bytes {
    let mut data = vec![0u8; usize::try_from(len).expect("len")];
    rand::rng().fill_bytes(&mut data);
    Bytes::from(data)
}

/// Instantiates a scenario `async fn name(backend: Backend)` for both backends.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod disk {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Disk).await;
                }
            )*
        }
        mod tier {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Tier).await;
                }
            )*
        }
    };
}

both!(
    concurrent_readers_share_one_download_and_read_exact_bytes,
    ranges_of_cached_entries_are_exact_without_upstream_traffic,
    eviction_removes_the_content_and_pins_protect,
    reopening_keeps_entries_and_drops_lost_content,
    office_writes_are_durable_and_aliases_share_content,
    byte_ranges_are_copied_from_the_cached_whole_object,
    views_exist_only_where_the_content_is_local,
    bytes_that_fail_verification_leave_no_content,
);

async fn concurrent_readers_share_one_download_and_read_exact_bytes(backend: Backend) {
    let t = Contract::start(backend, 64 * MIB).await;
    let data = random_bytes(9 * MIB + 123);
    let object = t.put("drives/big.mcap", &data).await;
    let reads = (0..16).map(|_| t.read_all(&object, ByteRange::All));
    for body in futures::future::join_all(reads).await {
        assert!(
            body == data,
            "{backend:?}: every reader gets the exact bytes"
        );
    }
    assert_eq!(t.upstream_bytes(), object.size, "{backend:?}: one download");
    // The readers read through the download; its install may still be going on (the tier's
    // upload): a fetch joins it, or hits.
    let outcome = t
        .cache
        .fetch(&object, &FetchContext::default(), None)
        .await
        .expect("fetch");
    assert_eq!(outcome.bytes_from_upstream, 0);
    assert!(t.cache.is_cached(&object));
    assert_eq!(t.content_count().await, 1);
    // Cached now: read from the content store.
    assert!(
        t.read_all(&object, ByteRange::All).await == data,
        "{backend:?}"
    );
    assert_eq!(t.upstream_bytes(), object.size);
    assert_eq!(t.cache.stats().bytes_from_upstream, object.size);
}

async fn ranges_of_cached_entries_are_exact_without_upstream_traffic(backend: Backend) {
    let t = Contract::start(backend, 64 * MIB).await;
    // Larger than the tier's multipart parts: ranges across their boundaries, and whole.
    let data = random_bytes(27 * MIB + 17);
    let object = t.put("drives/a.bin", &data).await;
    t.cache
        .fetch(&object, &FetchContext::default(), None)
        .await
        .expect("fetch");
    let before = t.upstream_bytes();
    for (start, end) in [
        (0, 0),
        (5, 1_000_000),
        (MIB - 1, 2 * MIB + 1),
        (object.size - 9, object.size - 1),
        (8 * MIB - 1, 8 * MIB),
        (3 * MIB + 5, 25 * MIB + 3),
        (0, object.size - 1),
    ] {
        let got = t
            .read_all(
                &object,
                ByteRange::Bounded {
                    start,
                    end_inclusive: end,
                },
            )
            .await;
        assert!(
            got == data.slice(start as usize..=end as usize),
            "{backend:?} {start}-{end}"
        );
        let cached = t
            .cache
            .read_cached(&object, start, end + 1)
            .await
            .expect("read_cached")
            .expect("cached");
        assert!(
            cached == data.slice(start as usize..=end as usize),
            "{backend:?} {start}-{end}"
        );
        let content = t
            .cache
            .read_content(&object, start, end)
            .await
            .expect("read_content")
            .expect("cached");
        let content: Vec<Bytes> = content.map(|c| c.expect("chunk")).collect().await;
        assert!(
            content.concat() == data.slice(start as usize..=end as usize).to_vec(),
            "{backend:?} {start}-{end}"
        );
    }
    let local = t
        .cache
        .local_file(&object)
        .await
        .expect("local")
        .expect("cached");
    assert!(
        std::fs::read(&local.path).expect("read local") == data.to_vec(),
        "{backend:?}: the local file holds the content"
    );
    let scratch = local.path.clone();
    drop(local);
    assert_eq!(
        scratch.exists(),
        backend == Backend::Disk,
        "{backend:?}: a tier entry's local copy is scratch, removed on drop"
    );
    assert_eq!(t.upstream_bytes(), before, "{backend:?}: hits only");
}

async fn eviction_removes_the_content_and_pins_protect(backend: Backend) {
    // 8 MiB: 3 MiB objects fit under the high watermark (7.6 MiB) only two at a time.
    let t = Contract::start(backend, 8 * MIB).await;
    let ctx = FetchContext::default();
    let mut objects = Vec::new();
    for name in ["a", "b", "c"] {
        objects.push(
            t.put(&format!("drives/{name}"), &random_bytes(3 * MIB))
                .await,
        );
    }
    let (a, b, c) = (&objects[0], &objects[1], &objects[2]);
    t.cache.pin("holder", std::slice::from_ref(a));
    t.cache.fetch(a, &ctx, None).await.expect("a");
    t.cache.fetch(b, &ctx, None).await.expect("b");
    t.cache.fetch(c, &ctx, None).await.expect("c");
    t.cache.flush().await;
    assert!(t.cache.is_cached(a), "{backend:?}: pinned a stays");
    assert!(
        !t.cache.is_cached(b),
        "{backend:?}: b, least recently used, evicted"
    );
    assert!(t.cache.is_cached(c));
    assert_eq!(
        t.content_count().await,
        2,
        "{backend:?}: b's content removed"
    );
    assert!(t.cache.read_cached(b, 0, 10).await.expect("read").is_none());
    // Fetched again from upstream, whole and exact.
    let before = t.upstream_bytes();
    t.cache.unpin_all("holder");
    let again = t.read_all(b, ByteRange::All).await;
    assert_eq!(again.len() as u64, b.size);
    assert_eq!(t.upstream_bytes() - before, b.size);
}

async fn reopening_keeps_entries_and_drops_lost_content(backend: Backend) {
    let mut t = Contract::start(backend, 64 * MIB).await;
    let ctx = FetchContext::default();
    let kept_data = random_bytes(2 * MIB + 5);
    let kept = t.put("drives/kept", &kept_data).await;
    let lost = t.put("drives/lost", &random_bytes(MIB)).await;
    t.cache.fetch(&kept, &ctx, None).await.expect("kept");
    t.cache.fetch(&lost, &ctx, None).await.expect("lost");
    t.cache.flush().await;
    t.cache.shutdown().await;
    t.lose_content(&lost).await;
    t.reopen().await;
    assert!(
        t.cache.is_cached(&kept),
        "{backend:?}: entries survive a restart"
    );
    assert!(
        !t.cache.is_cached(&lost),
        "{backend:?}: lost content is not an entry"
    );
    let before = t.upstream_bytes();
    assert!(
        t.read_all(&kept, ByteRange::All).await == kept_data,
        "{backend:?}"
    );
    assert_eq!(
        t.upstream_bytes(),
        before,
        "{backend:?}: a hit after the restart"
    );
    assert_eq!(t.cache.stats().objects, 1);
}

async fn office_writes_are_durable_and_aliases_share_content(backend: Backend) {
    let mut t = Contract::start(backend, 64 * MIB).await;
    let data = random_bytes(6 * MIB + 1);
    // The office's own name for the bytes (the write-back's staging computes the real MD5;
    // the content store only keeps bytes under the identity it is given).
    let object = ObjectKey::new(
        BUCKET,
        "uploads/u.bin",
        "00112233445566778899aabbccddeeff",
        data.len() as u64,
    );
    let staging = t.cache.staging_path(&object);
    std::fs::write(&staging, &data).expect("staging");
    t.cache
        .insert_dirty(&object, staging.clone())
        .await
        .expect("insert dirty");
    assert!(
        !staging.exists(),
        "{backend:?}: the staging file is taken over"
    );
    // A restart (a killed process) keeps the office's only copy.
    t.reopen().await;
    assert_eq!(
        t.cache.dirty_entries().await.expect("dirty"),
        vec![object.clone()]
    );
    assert!(
        t.read_all(&object, ByteRange::All).await == data,
        "{backend:?}"
    );
    // S3 named it with another ETag: both identities read the same content.
    let upstream = t
        .cache
        .mark_clean(&object, "0123456789abcdef0123456789abcdef-2")
        .await
        .expect("clean");
    assert_ne!(upstream, object);
    assert!(t.cache.is_cached(&upstream));
    assert!(
        t.read_all(&upstream, ByteRange::All).await == data,
        "{backend:?}"
    );
    assert!(
        t.cache.same_content(&object, &upstream).await,
        "{backend:?}"
    );
    let other = t.put("drives/other", &random_bytes(MIB)).await;
    t.cache
        .fetch(&other, &FetchContext::default(), None)
        .await
        .expect("other");
    assert!(!t.cache.same_content(&object, &other).await);
    assert!(t.cache.dirty_entries().await.expect("dirty").is_empty());
    assert_eq!(
        t.upstream_bytes(),
        other.size,
        "{backend:?}: nothing else from upstream"
    );
}

async fn byte_ranges_are_copied_from_the_cached_whole_object(backend: Backend) {
    let t = Contract::start(backend, 64 * MIB).await;
    let data = random_bytes(5 * MIB);
    let object = t.put("drives/log.mcap", &data).await;
    let ctx = FetchContext::default();
    t.cache.fetch(&object, &ctx, None).await.expect("whole");
    let before = t.upstream_bytes();
    let (entry, outcome) = t
        .cache
        .fetch_range(&object, MIB + 3, 2 * MIB + 5, &ctx)
        .await
        .expect("range");
    assert_eq!(outcome.bytes_from_upstream, 0, "{backend:?}");
    assert_eq!(t.upstream_bytes(), before);
    let got = t.read_all(&entry, ByteRange::All).await;
    assert!(
        got == data.slice((MIB + 3) as usize..(3 * MIB + 8) as usize),
        "{backend:?}"
    );
    assert_eq!(outcome.path.is_some(), backend == Backend::Disk);
}

async fn views_exist_only_where_the_content_is_local(backend: Backend) {
    let t = Contract::start(backend, 64 * MIB).await;
    let data = random_bytes(MIB);
    let object = t.put("drives/v/x.bin", &data).await;
    t.cache
        .fetch(&object, &FetchContext::default(), None)
        .await
        .expect("fetch");
    let view = t
        .cache
        .create_view("r1", std::slice::from_ref(&object))
        .await;
    match backend {
        Backend::Disk => {
            assert!(t.cache.keeps_views());
            let dir = view.expect("view");
            assert!(
                std::fs::read(dir.join(BUCKET).join("drives/v/x.bin")).expect("read")
                    == data.to_vec()
            );
        }
        Backend::Tier => {
            assert!(!t.cache.keeps_views());
            let err = view.expect_err("no views on the tier");
            assert_eq!(err.kind(), CacheErrorKind::Invalid, "{err}");
            assert!(err.to_string().contains("keeps no local files"), "{err}");
        }
    }
}

async fn bytes_that_fail_verification_leave_no_content(backend: Backend) {
    let t = Contract::start(backend, 64 * MIB).await;
    let original = random_bytes(3 * MIB + 7);
    let object = t.put("drives/bad.mcap", &original).await;
    // Replace the bytes behind the server's back: s3s-fs keeps serving the recorded ETag (the
    // MD5 of the original) with the new bytes. The tier installs a download as it lands, so
    // its copy exists before the check fails: it must be removed.
    let path = t.upstream.s3.root().join(BUCKET).join(&object.key);
    std::fs::write(&path, random_bytes(object.size)).expect("overwrite");
    let err = t
        .cache
        .fetch(&object, &FetchContext::default(), None)
        .await
        .expect_err("the md5 does not match");
    assert_eq!(err.kind(), CacheErrorKind::Corrupt, "{backend:?}: {err}");
    assert!(!t.cache.is_cached(&object));
    assert_eq!(t.content_count().await, 0, "{backend:?}: nothing installed");
    assert!(t
        .cache
        .read_cached(&object, 0, 10)
        .await
        .expect("read")
        .is_none());
}
