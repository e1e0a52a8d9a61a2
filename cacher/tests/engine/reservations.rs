//! Datasets and reservations end to end: a real S3 server on loopback (s3s-fs) reached through
//! aws-sdk-s3 and a `FaultProxy`, a real `OfficeCache` on a temporary directory, and SQLite in
//! a temporary directory. Every scenario also runs on PostgreSQL when
//! `MILEPOST_TEST_DATABASE_URL` names a server (a fresh database per test, dropped after);
//! otherwise its `postgres` variant is skipped with a message.
//!
//! (Over 600 lines: scenarios of datasets and reservations sharing one environment, each run on both backends.)

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt as _;
use milepost_cacher::cache::{CacheSettings, OfficeCache};
use milepost_cacher::datasets::{
    all_members, create_dataset, find_dataset, load_manifest, manifest_key, members, read_manifest,
    DatasetErrorKind, ManifestEntry, NewDataset,
};
use milepost_cacher::reservations::{
    reservation_cursor, Actor, ReservationErrorKind, ReservationSettings, Reservations,
};
use milepost_schema::entity::{dataset, reservation};
use milepost_schema::enums::ReservationState;
use milepost_schema::{connect, migrate};
use milepost_store::ObjectKey;
use milepost_store::{build_store, ByteRange, EgressMeter, ObjectStore};
use milepost_testkit::{Backend, FaultProxy, LoopbackUpstream, TestDatabase};
use rand::RngCore as _;
use sea_orm::{ActiveModelTrait as _, DatabaseConnection, Set};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "fleet";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(60);

milepost_testkit::on_both_backends!(
    manifest_round_trips_through_s3,
    datasets_get_versions_and_refuse_bad_input,
    concurrent_creations_of_one_name_get_distinct_versions,
    reservation_materializes_byte_exact_then_hits,
    concurrent_reservations_fetch_each_object_once,
    subscription_follows_the_lifecycle_in_order,
    object_changed_upstream_fails_naming_it,
    final_rows_are_only_read_once_pins_are_released,
    release_unpins_and_admission_counts_pins,
    admission_counts_what_other_holders_pin,
    release_during_materialization_stops_it,
    extend_checks_owner_ttl_and_state,
    expired_reservations_unpin,
    restart_resumes_pending_and_rebuilds_views,
    an_unclean_reboot_rebuilds_ready_views_from_upstream,
    list_pages_newest_first,
);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

struct Options {
    capacity: u64,
    settings: ReservationSettings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            capacity: 1 << 30,
            settings: ReservationSettings {
                progress_interval: Duration::from_millis(20),
                ..ReservationSettings::default()
            },
        }
    }
}

/// Everything a scenario needs. `seed` writes upstream on its own meter; `store` (the cache's
/// and the datasets') goes through `proxy` and counts into `meter`.
struct Env {
    dir: tempfile::TempDir,
    _server: LoopbackUpstream,
    proxy: FaultProxy,
    seed: Arc<dyn ObjectStore>,
    meter: Arc<EgressMeter>,
    store: Arc<dyn ObjectStore>,
    db: DatabaseConnection,
    _pg: TestDatabase,
    cache: Arc<OfficeCache>,
    service: Arc<Reservations>,
    /// What was written upstream, by key.
    upstream: BTreeMap<String, Bytes>,
}

impl Env {
    /// `None` (after printing why) for PostgreSQL without `MILEPOST_TEST_DATABASE_URL`.
    async fn start(backend: Backend, options: Options) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = TestDatabase::on_backend(backend, dir.path()).await?;
        let db = connect(pg.url()).await.expect("test database");
        migrate(&db).await.expect("migrate");
        let server = LoopbackUpstream::start(BUCKET).await;
        let proxy = server.fault_proxy().await;
        let seed = server.store.clone();
        let meter = EgressMeter::new();
        let store = build_store(&server.settings_via(&proxy), Arc::clone(&meter)).expect("store");
        let cache = OfficeCache::open(
            cache_settings(dir.path(), options.capacity),
            db.clone(),
            Arc::clone(&store),
        )
        .await
        .expect("cache");
        let service = Reservations::new(db.clone(), Arc::clone(&cache), options.settings);
        Some(Self {
            dir,
            _server: server,
            proxy,
            seed,
            meter,
            store,
            db,
            _pg: pg,
            cache,
            service,
            upstream: BTreeMap::new(),
        })
    }

    /// Writes `bytes` upstream under `key`; returns its manifest entry.
    async fn put(&mut self, key: &str, bytes: Bytes) -> ManifestEntry {
        let meta = self
            .seed
            .put(BUCKET, key, bytes.clone())
            .await
            .expect("seed put");
        self.upstream.insert(key.to_owned(), bytes);
        ManifestEntry {
            bucket: BUCKET.to_owned(),
            key: key.to_owned(),
            size: meta.size,
            etag: meta.etag,
            trim: None,
        }
    }

    /// Writes one object of random bytes per size under `prefix`.
    async fn put_random(&mut self, prefix: &str, sizes: &[usize]) -> Vec<ManifestEntry> {
        let mut entries = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let key = format!("{prefix}/part-{i:03}.bin");
            entries.push(self.put(&key, random_bytes(size)).await);
        }
        entries
    }

    async fn dataset(&self, name: &str, entries: Vec<ManifestEntry>) -> dataset::Model {
        create_dataset(
            &self.db,
            self.store.as_ref(),
            BUCKET,
            new_dataset(name, entries),
        )
        .await
        .expect("create dataset")
    }

    async fn finish(self) {
        self.service.shutdown().await;
        self.cache.shutdown().await;
    }
}

/// The cache of a scenario in `dir`.
fn cache_settings(dir: &Path, capacity: u64) -> CacheSettings {
    let mut settings = CacheSettings::new(dir.join("cache"), capacity);
    settings.part_size = 256 * KIB as u64;
    settings
}

fn new_dataset(name: &str, entries: Vec<ManifestEntry>) -> NewDataset {
    NewDataset {
        name: name.to_owned(),
        description: Some(format!("test dataset {name}")),
        created_by: "alice".to_owned(),
        entries,
        selection: serde_json::json!({"objects": "explicit"}),
    }
}

fn random_bytes(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    Bytes::from(data)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn total_bytes(entries: &[ManifestEntry]) -> i64 {
    entries.iter().map(|e| e.size as i64).sum()
}

/// Every row the reservation's stream yields, until it ends.
async fn follow(service: &Reservations, id: &str) -> Vec<reservation::Model> {
    let stream = service.subscribe(id).await.expect("subscribe");
    tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends in time")
}

/// The row once the stream ends (ready, failed, released or expired).
async fn settle(service: &Reservations, id: &str) -> reservation::Model {
    follow(service, id).await.pop().expect("at least one row")
}

/// Polls `get` until `check` holds.
async fn poll_until(
    service: &Reservations,
    id: &str,
    check: impl Fn(&reservation::Model) -> bool,
) -> reservation::Model {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = service.get(id).await.expect("get");
        if check(&row) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reservation {id} never got there: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file under `root`, by path relative to it (`bucket/key`), as SHA-256.
fn tree_digests(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                out.insert(relative, sha256(&std::fs::read(&path).expect("read file")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Checks that the view of a ready reservation holds exactly `entries`, byte-exact.
fn assert_view_matches(env: &Env, row: &reservation::Model, entries: &[ManifestEntry]) {
    assert_eq!(row.state, ReservationState::Ready, "{row:?}");
    let path = PathBuf::from(row.local_path.as_deref().expect("local path"));
    let found = tree_digests(&path);
    let expected: BTreeMap<String, String> = entries
        .iter()
        .map(|e| {
            (
                format!("{}/{}", e.bucket, e.key),
                sha256(&env.upstream[&e.key]),
            )
        })
        .collect();
    assert_eq!(found, expected, "view of {}", row.id);
}

fn keys(entries: &[ManifestEntry]) -> Vec<ObjectKey> {
    entries
        .iter()
        .map(|e| ObjectKey::new(&e.bucket, &e.key, &e.etag, e.size))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Datasets
// ---------------------------------------------------------------------------------------

async fn manifest_round_trips_through_s3(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let mut entries = env.put_random("drives/d1", &[0, 10, 3 * KIB]).await;
    entries.push(env.put("drives/d1/广州 雨.mcap", random_bytes(77)).await);
    // Given unsorted, with a duplicate.
    let mut given = entries.clone();
    given.reverse();
    given.push(entries[0].clone());
    let made = env.dataset("round-trip", given).await;
    assert_eq!(made.version, 1);
    assert_eq!(made.manifest_bucket, BUCKET);
    assert_eq!(made.manifest_key, manifest_key("round-trip", 1));
    assert_eq!(made.object_count, 4);
    assert_eq!(made.total_bytes, total_bytes(&entries));

    let mut sorted = entries.clone();
    sorted.sort();
    let from_s3 = load_manifest(env.store.as_ref(), BUCKET, &made.manifest_key)
        .await
        .expect("load manifest");
    assert_eq!(from_s3, sorted);
    assert_eq!(
        all_members(&env.db, made.id).await.expect("members"),
        sorted
    );
    // The bytes themselves, as another office would read them.
    let raw = env
        .seed
        .get(BUCKET, &made.manifest_key, ByteRange::All, None)
        .await
        .expect("get manifest")
        .collect(1 << 20)
        .await
        .expect("body");
    assert_eq!(read_manifest(raw).expect("decode"), sorted);
    env.finish().await;
}

async fn datasets_get_versions_and_refuse_bad_input(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let first = env.put_random("a", &[100, 200, 300]).await;
    let second = env.put_random("b", &[5, 6]).await;
    let v1 = env.dataset("cut-ins", first.clone()).await;
    let v2 = env.dataset("cut-ins", second.clone()).await;
    let other = env.dataset("other", second.clone()).await;
    assert_eq!((v1.version, v2.version, other.version), (1, 2, 1));
    assert_eq!(v2.manifest_key, ".milepost/datasets/cut-ins/v2.parquet");
    for (made, entries) in [(&v1, &first), (&v2, &second)] {
        let stored = load_manifest(env.store.as_ref(), BUCKET, &made.manifest_key)
            .await
            .expect("manifest");
        assert_eq!(&stored, entries);
    }

    let latest = find_dataset(&env.db, "cut-ins", None).await.expect("find");
    assert_eq!(latest.map(|d| d.id), Some(v2.id));
    let exact = find_dataset(&env.db, "cut-ins", Some(1))
        .await
        .expect("find");
    assert_eq!(exact.map(|d| d.id), Some(v1.id));
    assert!(find_dataset(&env.db, "cut-ins", Some(3))
        .await
        .expect("find")
        .is_none());
    assert!(find_dataset(&env.db, "nope", None)
        .await
        .expect("find")
        .is_none());

    // Pagination of members, in manifest order.
    let page = members(&env.db, v1.id, None, 2).await.expect("page");
    assert_eq!(
        page.iter().map(|m| m.position).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let rest = members(&env.db, v1.id, Some(1), 10).await.expect("page");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].key, first[2].key);

    // Refusals name the field and the value.
    let err = create_dataset(
        &env.db,
        env.store.as_ref(),
        BUCKET,
        new_dataset("empty", vec![]),
    )
    .await
    .expect_err("empty");
    assert_eq!(err.kind(), DatasetErrorKind::Invalid);
    assert_eq!(err.field(), Some("objects"));
    let err = create_dataset(
        &env.db,
        env.store.as_ref(),
        BUCKET,
        new_dataset("Rain Cut-Ins", first.clone()),
    )
    .await
    .expect_err("bad name");
    assert_eq!(err.kind(), DatasetErrorKind::Invalid);
    assert_eq!(err.field(), Some("name"));
    assert!(err.to_string().contains("`Rain Cut-Ins`"), "{err}");
    // Nothing was written for the refused ones.
    assert!(find_dataset(&env.db, "empty", None)
        .await
        .expect("find")
        .is_none());
    env.finish().await;
}

async fn concurrent_creations_of_one_name_get_distinct_versions(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let mut inputs = Vec::new();
    for i in 0..6 {
        inputs.push(env.put_random(&format!("race/{i}"), &[10 + i]).await);
    }
    let made = futures::future::join_all(inputs.iter().map(|entries| {
        create_dataset(
            &env.db,
            env.store.as_ref(),
            BUCKET,
            new_dataset("raced", entries.clone()),
        )
    }))
    .await;
    let mut versions = HashSet::new();
    for (result, entries) in made.into_iter().zip(&inputs) {
        let made = result.expect("create");
        assert!(
            versions.insert(made.version),
            "version {} twice",
            made.version
        );
        // Each version's manifest holds its own objects.
        let stored = load_manifest(env.store.as_ref(), BUCKET, &made.manifest_key)
            .await
            .expect("manifest");
        assert_eq!(&stored, entries, "manifest of v{}", made.version);
    }
    assert_eq!(versions, (1..=6).collect::<HashSet<i32>>());
    env.finish().await;
}

// ---------------------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------------------

const SIZES: &[usize] = &[
    0,
    1,
    4 * KIB,
    100 * KIB,
    256 * KIB,
    700 * KIB,
    MIB + 3,
    2 * MIB,
];

async fn reservation_materializes_byte_exact_then_hits(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("drives/2026-11-01/gz-004/d7", SIZES).await;
    let ds = env.dataset("rain", entries.clone()).await;
    let ttl = Duration::from_secs(3600);

    let pending = env
        .service
        .reserve(&ds, "alice", Some("debug cut-in".into()), ttl)
        .await
        .expect("reserve");
    assert_eq!(pending.state, ReservationState::Pending);
    assert_eq!(pending.objects_total, SIZES.len() as i64);
    assert_eq!(pending.bytes_total, ds.total_bytes);
    assert_eq!(pending.purpose.as_deref(), Some("debug cut-in"));
    assert!(pending.expires_at > Utc::now() + chrono::Duration::minutes(59));

    let ready = settle(&env.service, &pending.id).await;
    assert_view_matches(&env, &ready, &entries);
    assert_eq!(ready.objects_done, ready.objects_total);
    assert_eq!(ready.bytes_done, ds.total_bytes);
    assert_eq!(ready.bytes_from_upstream, ds.total_bytes);
    assert_eq!(env.meter.bytes_from_upstream(), ds.total_bytes as u64);
    assert_eq!(ready.error, None);
    assert!(ready
        .local_path
        .as_deref()
        .expect("path")
        .ends_with(&pending.id));
    assert!(keys(&entries).iter().all(|k| env.cache.is_cached(k)));
    assert_eq!(env.cache.stats().pinned_bytes, ds.total_bytes as u64);

    // Everything is cached now: a second reservation costs no egress.
    let second = env
        .service
        .reserve(&ds, "bob", None, ttl)
        .await
        .expect("reserve again");
    let second = settle(&env.service, &second.id).await;
    assert_view_matches(&env, &second, &entries);
    assert_eq!(second.bytes_from_upstream, 0);
    assert_eq!(second.bytes_done, ds.total_bytes);
    assert_eq!(env.meter.bytes_from_upstream(), ds.total_bytes as u64);
    env.finish().await;
}

async fn concurrent_reservations_fetch_each_object_once(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("runs/sim-1", SIZES).await;
    let ds = env.dataset("shared", entries.clone()).await;
    let service = &env.service;
    let reserved = futures::future::join_all((0..16).map(|i| {
        let ds = &ds;
        async move {
            service
                .reserve(ds, &format!("user-{i}"), None, Duration::from_secs(600))
                .await
                .expect("reserve")
        }
    }))
    .await;
    let settled = futures::future::join_all(reserved.iter().map(|r| settle(service, &r.id))).await;
    let mut upstream = 0;
    for row in &settled {
        assert_view_matches(&env, row, &entries);
        upstream += row.bytes_from_upstream;
    }
    assert_eq!(upstream, ds.total_bytes, "{settled:#?}");
    assert_eq!(env.meter.bytes_from_upstream(), ds.total_bytes as u64);
    // Shared objects are pinned once.
    assert_eq!(env.cache.stats().pinned_bytes, ds.total_bytes as u64);
    env.finish().await;
}

async fn subscription_follows_the_lifecycle_in_order(backend: Backend) {
    let options = Options {
        settings: ReservationSettings {
            concurrency_objects: 1,
            progress_interval: Duration::from_millis(5),
            ..ReservationSettings::default()
        },
        ..Options::default()
    };
    let Some(mut env) = Env::start(backend, options).await else {
        return;
    };
    let entries = env.put_random("slow", &[10 * KIB; 6]).await;
    let ds = env.dataset("slow", entries.clone()).await;
    env.proxy.set_latency(Duration::from_millis(40));
    let pending = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(60))
        .await
        .expect("reserve");
    let rows = follow(&env.service, &pending.id).await;
    let states: Vec<_> = rows.iter().map(|r| r.state).collect();
    assert!(
        matches!(
            states.first(),
            Some(ReservationState::Pending | ReservationState::Materializing)
        ),
        "{states:?}"
    );
    assert!(
        states.contains(&ReservationState::Materializing),
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&ReservationState::Ready), "{states:?}");
    let order = |s: &ReservationState| match s {
        ReservationState::Pending => 0,
        ReservationState::Materializing => 1,
        _ => 2,
    };
    assert!(
        states.windows(2).all(|w| order(&w[0]) <= order(&w[1])),
        "{states:?}"
    );
    let done: Vec<_> = rows.iter().map(|r| r.objects_done).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    assert!(
        rows.iter()
            .filter(|r| r.state == ReservationState::Materializing)
            .count()
            >= 2,
        "progress rows while materializing: {states:?}"
    );
    assert_eq!(done.last(), Some(&6));

    // A finished reservation: its row, then the end.
    let again = follow(&env.service, &pending.id).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state, ReservationState::Ready);
    let err = env
        .service
        .subscribe("res_missing")
        .await
        .err()
        .expect("unknown id");
    assert_eq!(err.kind(), ReservationErrorKind::NotFound);
    env.finish().await;
}

async fn object_changed_upstream_fails_naming_it(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("changing", &[64 * KIB, 300 * KIB, 10]).await;
    let ds = env.dataset("frozen", entries.clone()).await;
    // Rewritten after the manifest froze it: same size, other bytes, another etag.
    let changed = entries[1].key.clone();
    let rewritten = env.put(&changed, random_bytes(300 * KIB)).await;
    assert_ne!(rewritten.etag, entries[1].etag);

    let pending = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(60))
        .await
        .expect("reserve");
    let failed = settle(&env.service, &pending.id).await;
    assert_eq!(failed.state, ReservationState::Failed, "{failed:?}");
    let error = failed.error.as_deref().expect("error");
    assert!(
        error.contains(&format!("s3://{BUCKET}/{changed}")),
        "{error}"
    );
    assert!(
        error.contains("changed upstream since the manifest was frozen"),
        "{error}"
    );
    assert!(error.starts_with("1 of 3 objects"), "{error}");
    assert_eq!(failed.local_path, None);
    // The stale version was never cached, and nothing stays pinned.
    assert!(!env.cache.is_cached(&keys(&entries)[1]));
    assert_eq!(env.cache.stats().pinned_bytes, 0);
    // Releasing a failed reservation changes nothing.
    let again = env
        .service
        .release(&pending.id, Actor::user("alice"))
        .await
        .expect("release");
    assert_eq!(again.state, ReservationState::Failed);
    env.finish().await;
}

/// Whoever reads a failed or released row (here: polling the database as fast as it can, while
/// the reservation ends) finds its pins released already.
async fn final_rows_are_only_read_once_pins_are_released(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("racing", &[64 * KIB, 300 * KIB, 10]).await;
    let ds = env.dataset("racing", entries.clone()).await;
    let changed = entries[1].key.clone();
    env.put(&changed, random_bytes(300 * KIB)).await;
    let first_final = |id: String| {
        let (service, cache) = (Arc::clone(&env.service), Arc::clone(&env.cache));
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let row = service.get(&id).await.expect("get");
                if !matches!(
                    row.state,
                    ReservationState::Pending
                        | ReservationState::Materializing
                        | ReservationState::Ready
                ) {
                    return (row.state, cache.stats().pinned_bytes);
                }
                assert!(tokio::time::Instant::now() < deadline, "{row:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    for _ in 0..10 {
        // Fails: the other two objects are cached and pinned until then.
        let pending = env
            .service
            .reserve(&ds, "alice", None, Duration::from_secs(60))
            .await
            .expect("reserve");
        let (state, pinned) = first_final(pending.id.clone()).await.expect("poller");
        assert_eq!(state, ReservationState::Failed);
        assert_eq!(pinned, 0, "a failed row was read while its pins were held");
    }
    let good = env
        .dataset("good", vec![entries[0].clone(), entries[2].clone()])
        .await;
    for _ in 0..10 {
        let pending = env
            .service
            .reserve(&good, "alice", None, Duration::from_secs(60))
            .await
            .expect("reserve");
        settle(&env.service, &pending.id).await;
        let poller = first_final(pending.id.clone());
        env.service
            .release(&pending.id, Actor::user("alice"))
            .await
            .expect("release");
        let (state, pinned) = poller.await.expect("poller");
        assert_eq!(state, ReservationState::Released);
        assert_eq!(
            pinned, 0,
            "a released row was read while its pins were held"
        );
    }
    env.finish().await;
}

async fn release_unpins_and_admission_counts_pins(backend: Backend) {
    // Room for one of the two datasets at a time.
    let options = Options {
        capacity: (3 * MIB / 2) as u64,
        ..Options::default()
    };
    let Some(mut env) = Env::start(backend, options).await else {
        return;
    };
    let a_entries = env.put_random("a", &[256 * KIB; 4]).await;
    let b_entries = env.put_random("b", &[256 * KIB; 4]).await;
    let huge = env.put_random("huge", &[2 * MIB]).await;
    let a = env.dataset("a", a_entries.clone()).await;
    let b = env.dataset("b", b_entries.clone()).await;
    let too_big = env.dataset("huge", huge).await;
    let ttl = Duration::from_secs(600);

    let err = env
        .service
        .reserve(&too_big, "alice", None, ttl)
        .await
        .expect_err("larger than the cache");
    assert_eq!(err.kind(), ReservationErrorKind::Invalid);
    assert_eq!(err.field(), Some("dataset"));
    assert!(err.to_string().contains("2097152 bytes"), "{err}");

    let ra = env
        .service
        .reserve(&a, "alice", None, ttl)
        .await
        .expect("reserve a");
    let ra = settle(&env.service, &ra.id).await;
    assert_view_matches(&env, &ra, &a_entries);
    let view = PathBuf::from(ra.local_path.clone().expect("path"));

    // A second reservation of `a` needs nothing more; `b` does not fit next to it.
    let ra2 = env
        .service
        .reserve(&a, "carol", None, ttl)
        .await
        .expect("a again fits");
    settle(&env.service, &ra2.id).await;
    let err = env
        .service
        .reserve(&b, "bob", None, ttl)
        .await
        .expect_err("no room for b");
    assert_eq!(err.kind(), ReservationErrorKind::Conflict);
    let message = err.to_string();
    assert!(
        message.contains("1048576 more bytes") && message.contains("1572864 bytes"),
        "{message}"
    );

    // Only the owner or an admin releases.
    let err = env
        .service
        .release(&ra.id, Actor::user("mallory"))
        .await
        .expect_err("not the owner");
    assert_eq!(err.kind(), ReservationErrorKind::Forbidden);
    let released = env
        .service
        .release(&ra.id, Actor::user("alice"))
        .await
        .expect("release");
    assert_eq!(released.state, ReservationState::Released);
    assert_eq!(released.local_path, None);
    assert!(!view.exists(), "the view is removed");
    let twice = env
        .service
        .release(&ra.id, Actor::user("alice"))
        .await
        .expect("release twice");
    assert_eq!(twice.state, ReservationState::Released);
    assert_eq!(twice.updated_at, released.updated_at);
    let by_admin = env
        .service
        .release(&ra2.id, Actor::admin("root"))
        .await
        .expect("admin release");
    assert_eq!(by_admin.state, ReservationState::Released);
    assert_eq!(env.cache.stats().pinned_bytes, 0);
    let err = env
        .service
        .release("res_missing", Actor::admin("root"))
        .await
        .expect_err("unknown");
    assert_eq!(err.kind(), ReservationErrorKind::NotFound);

    // Now `b` fits, and the cache evicts `a`'s unpinned objects to make room.
    let rb = env
        .service
        .reserve(&b, "bob", None, ttl)
        .await
        .expect("reserve b");
    let rb = settle(&env.service, &rb.id).await;
    assert_view_matches(&env, &rb, &b_entries);
    let evicted = keys(&a_entries)
        .iter()
        .filter(|k| !env.cache.is_cached(k))
        .count();
    assert!(evicted > 0, "some of a's objects were evicted");
    env.finish().await;
}

/// Pins are counted once, in the cache's book: bytes other holders pin (here multipart parts
/// held on the cache's disk) leave no room for a reservation, which is refused at once
/// instead of being admitted and then failing half-materialized.
async fn admission_counts_what_other_holders_pin(backend: Backend) {
    let options = Options {
        capacity: (3 * MIB / 2) as u64,
        ..Options::default()
    };
    let Some(mut env) = Env::start(backend, options).await else {
        return;
    };
    let entries = env.put_random("a", &[256 * KIB; 4]).await;
    let a = env.dataset("a", entries.clone()).await;
    let ttl = Duration::from_secs(600);

    let parts = env
        .cache
        .hold("multipart parts", MIB as u64)
        .await
        .expect("hold");
    let err = env
        .service
        .reserve(&a, "alice", None, ttl)
        .await
        .expect_err("the held parts leave no room");
    assert_eq!(err.kind(), ReservationErrorKind::Conflict);
    let message = err.to_string();
    assert!(
        message.contains("1048576 more bytes") && message.contains("1048576 (1.0 MiB) are pinned"),
        "{message}"
    );

    drop(parts);
    let ra = env
        .service
        .reserve(&a, "alice", None, ttl)
        .await
        .expect("room once the parts are gone");
    let ra = settle(&env.service, &ra.id).await;
    assert_eq!(ra.state, ReservationState::Ready, "{:?}", ra.error);
    assert_view_matches(&env, &ra, &entries);
    env.finish().await;
}

async fn release_during_materialization_stops_it(backend: Backend) {
    let options = Options {
        settings: ReservationSettings {
            concurrency_objects: 1,
            ..Options::default().settings
        },
        ..Options::default()
    };
    let Some(mut env) = Env::start(backend, options).await else {
        return;
    };
    let entries = env.put_random("stop", &[20 * KIB; 8]).await;
    let ds = env.dataset("stop", entries).await;
    env.proxy.set_latency(Duration::from_millis(100));
    let pending = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(60))
        .await
        .expect("reserve");
    poll_until(&env.service, &pending.id, |r| {
        r.state == ReservationState::Materializing
    })
    .await;
    let stream = env.service.subscribe(&pending.id).await.expect("subscribe");
    let released = env
        .service
        .release(&pending.id, Actor::user("alice"))
        .await
        .expect("release");
    assert_eq!(released.state, ReservationState::Released);
    assert!(released.objects_done < 8, "{released:?}");
    // Subscribers see the end.
    let rows: Vec<_> = tokio::time::timeout(WAIT, stream.collect())
        .await
        .expect("stream ends");
    assert_eq!(
        rows.last().map(|r: &reservation::Model| r.state),
        Some(ReservationState::Released)
    );
    // The stopped materialization writes nothing after the release.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = env.service.get(&pending.id).await.expect("get");
    assert_eq!(later, released);
    assert!(!env
        .dir
        .path()
        .join("cache/views")
        .join(&pending.id)
        .exists());
    assert_eq!(env.cache.stats().pinned_bytes, 0);
    env.finish().await;
}

async fn extend_checks_owner_ttl_and_state(backend: Backend) {
    let options = Options {
        settings: ReservationSettings {
            max_ttl: Duration::from_secs(24 * 3600),
            ..Options::default().settings
        },
        ..Options::default()
    };
    let Some(mut env) = Env::start(backend, options).await else {
        return;
    };
    let entries = env.put_random("x", &[1000, 2000]).await;
    let ds = env.dataset("x", entries).await;
    let err = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(2 * 24 * 3600))
        .await
        .expect_err("ttl too long");
    assert_eq!(err.field(), Some("ttlSeconds"));
    let err = env
        .service
        .reserve(&ds, "alice", None, Duration::ZERO)
        .await
        .expect_err("zero ttl");
    assert_eq!(err.field(), Some("ttlSeconds"));

    let r = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(3600))
        .await
        .expect("reserve");
    settle(&env.service, &r.id).await;
    let before = Utc::now();
    let extended = env
        .service
        .extend(&r.id, Duration::from_secs(7200), Actor::user("alice"))
        .await
        .expect("extend");
    let expected = before + chrono::Duration::seconds(7200);
    assert!(
        (extended.expires_at - expected).num_seconds().abs() <= 5,
        "{} vs {expected}",
        extended.expires_at
    );
    assert_eq!(extended.state, ReservationState::Ready);
    let err = env
        .service
        .extend(&r.id, Duration::from_secs(60), Actor::user("mallory"))
        .await
        .expect_err("not the owner");
    assert_eq!(err.kind(), ReservationErrorKind::Forbidden);
    env.service
        .extend(&r.id, Duration::from_secs(60), Actor::admin("root"))
        .await
        .expect("admin extends");
    let err = env
        .service
        .extend(
            &r.id,
            Duration::from_secs(3 * 24 * 3600),
            Actor::user("alice"),
        )
        .await
        .expect_err("too long");
    assert_eq!(err.kind(), ReservationErrorKind::Invalid);
    assert_eq!(err.field(), Some("ttlSeconds"));

    env.service
        .release(&r.id, Actor::user("alice"))
        .await
        .expect("release");
    let err = env
        .service
        .extend(&r.id, Duration::from_secs(60), Actor::user("alice"))
        .await
        .expect_err("released");
    assert_eq!(err.kind(), ReservationErrorKind::Conflict);
    assert!(err.to_string().contains("released"), "{err}");
    env.finish().await;
}

async fn expired_reservations_unpin(backend: Backend) {
    let options = Options {
        settings: ReservationSettings {
            expiry_check: Duration::from_millis(50),
            ..Options::default().settings
        },
        ..Options::default()
    };
    let Some(mut env) = Env::start(backend, options).await else {
        return;
    };
    let entries = env.put_random("short", &[5000, 6000]).await;
    let ds = env.dataset("short", entries).await;
    let stop = CancellationToken::new();
    let runner = {
        let (service, stop) = (Arc::clone(&env.service), stop.clone());
        tokio::spawn(async move { service.start(stop).await })
    };
    let long = env
        .service
        .reserve(&ds, "bob", None, Duration::from_secs(3600))
        .await
        .expect("reserve long");
    let short = env
        .service
        .reserve(&ds, "alice", None, Duration::from_millis(1500))
        .await
        .expect("reserve short");
    let ready = settle(&env.service, &short.id).await;
    let view = PathBuf::from(ready.local_path.clone().expect("path"));
    assert!(view.is_dir());
    let expired = poll_until(&env.service, &short.id, |r| {
        r.state == ReservationState::Expired
    })
    .await;
    assert_eq!(expired.local_path, None);
    assert!(!view.exists(), "the view is removed");
    // The long one is untouched and still pins the objects.
    let long = env.service.get(&long.id).await.expect("get");
    assert_eq!(long.state, ReservationState::Ready);
    assert_eq!(env.cache.stats().pinned_bytes, ds.total_bytes as u64);
    env.service
        .release(&long.id, Actor::user("bob"))
        .await
        .expect("release");
    assert_eq!(env.cache.stats().pinned_bytes, 0);
    stop.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("start returns on shutdown")
        .expect("join");
    let err = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(60))
        .await
        .expect_err("shut down");
    assert_eq!(err.kind(), ReservationErrorKind::Unavailable);
    env.finish().await;
}

async fn restart_resumes_pending_and_rebuilds_views(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("resume", &[10 * KIB, 600 * KIB, 3]).await;
    let ds = env.dataset("resume", entries.clone()).await;
    // Rows as a previous process may have left them: pending, materializing half way, and
    // ready with a view that is gone.
    let now = Utc::now();
    let mut ids = Vec::new();
    for (state, path) in [
        (ReservationState::Pending, None),
        (ReservationState::Materializing, None),
        (
            ReservationState::Ready,
            Some(
                env.dir
                    .path()
                    .join("cache/views/gone")
                    .display()
                    .to_string(),
            ),
        ),
    ] {
        let id = milepost_schema::ids::new_id("res");
        reservation::ActiveModel {
            id: Set(id.clone()),
            dataset_id: Set(ds.id),
            owner: Set("alice".into()),
            purpose: Set(None),
            state: Set(state),
            created_at: Set(now),
            updated_at: Set(now),
            expires_at: Set(now + chrono::Duration::hours(1)),
            objects_total: Set(ds.object_count),
            objects_done: Set(if state == ReservationState::Pending {
                0
            } else {
                1
            }),
            bytes_total: Set(ds.total_bytes),
            bytes_done: Set(0),
            bytes_from_upstream: Set(0),
            local_path: Set(path),
            error: Set(None),
            notes: Set(None),
            ready_by: Set(None),
            scheduled_start: Set(None),
        }
        .insert(&env.db)
        .await
        .expect("insert row");
        ids.push(id);
    }
    // An expired one left behind: expired at start, not resumed.
    let stale = milepost_schema::ids::new_id("res");
    reservation::ActiveModel {
        id: Set(stale.clone()),
        dataset_id: Set(ds.id),
        owner: Set("bob".into()),
        purpose: Set(None),
        state: Set(ReservationState::Materializing),
        created_at: Set(now - chrono::Duration::hours(2)),
        updated_at: Set(now - chrono::Duration::hours(2)),
        expires_at: Set(now - chrono::Duration::hours(1)),
        objects_total: Set(ds.object_count),
        objects_done: Set(0),
        bytes_total: Set(ds.total_bytes),
        bytes_done: Set(0),
        bytes_from_upstream: Set(0),
        local_path: Set(None),
        error: Set(None),
        notes: Set(None),
        ready_by: Set(None),
        scheduled_start: Set(None),
    }
    .insert(&env.db)
    .await
    .expect("insert stale row");

    // A new service over the same database and cache takes them over.
    let service = Reservations::new(
        env.db.clone(),
        Arc::clone(&env.cache),
        Options::default().settings,
    );
    let stop = CancellationToken::new();
    let runner = {
        let (service, stop) = (Arc::clone(&service), stop.clone());
        tokio::spawn(async move { service.start(stop).await })
    };
    for id in &ids[..2] {
        let row = poll_until(&service, id, |r| r.state == ReservationState::Ready).await;
        assert_view_matches(&env, &row, &entries);
        assert_eq!(row.objects_done, 3);
    }
    let rebuilt = poll_until(&service, &ids[2], |r| {
        r.local_path
            .as_deref()
            .is_some_and(|p| Path::new(p).is_dir())
    })
    .await;
    assert_view_matches(&env, &rebuilt, &entries);
    let stale = poll_until(&service, &stale, |r| r.state == ReservationState::Expired).await;
    assert_eq!(stale.local_path, None);
    // Every object came from upstream once, whichever reservation fetched it.
    assert_eq!(env.meter.bytes_from_upstream(), ds.total_bytes as u64);
    assert_eq!(env.cache.stats().pinned_bytes, ds.total_bytes as u64);
    stop.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("stops")
        .expect("join");
    env.finish().await;
}

async fn an_unclean_reboot_rebuilds_ready_views_from_upstream(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("reboot", &[10 * KIB, 600 * KIB, 3]).await;
    let ds = env.dataset("reboot", entries.clone()).await;
    let reserved = env
        .service
        .reserve(&ds, "alice", None, Duration::from_secs(3600))
        .await
        .expect("reserve");
    let ready = settle(&env.service, &reserved.id).await;
    assert_view_matches(&env, &ready, &entries);
    env.service.shutdown().await;
    env.cache.shutdown().await;

    // The machine went down right after: the marker of another boot says the entries
    // installed since five minutes ago may not be on disk.
    std::fs::write(
        env.dir.path().join("cache/unsynced"),
        format!(
            "milepost unsynced marker v1\nboot_id 00000000-0000-0000-0000-000000000000\nsince {}\nfsync_failed false\n",
            (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339()
        ),
    )
    .expect("marker");
    env.cache = OfficeCache::open(
        cache_settings(env.dir.path(), Options::default().capacity),
        env.db.clone(),
        Arc::clone(&env.store),
    )
    .await
    .expect("reopen cache");
    assert!(keys(&entries).iter().all(|k| !env.cache.is_cached(k)));
    let view = ready.local_path.clone().expect("view");
    assert!(
        !Path::new(&view).exists(),
        "the view of dropped entries is gone"
    );

    // The reservation stays READY; its view is rebuilt from upstream.
    env.service = Reservations::new(
        env.db.clone(),
        Arc::clone(&env.cache),
        Options::default().settings,
    );
    let stop = CancellationToken::new();
    let runner = {
        let (service, stop) = (Arc::clone(&env.service), stop.clone());
        tokio::spawn(async move { service.start(stop).await })
    };
    let rebuilt = poll_until(&env.service, &ready.id, |r| {
        r.local_path
            .as_deref()
            .is_some_and(|p| Path::new(p).is_dir())
    })
    .await;
    assert_eq!(rebuilt.state, ReservationState::Ready);
    assert_view_matches(&env, &rebuilt, &entries);
    assert_eq!(env.meter.bytes_from_upstream(), 2 * ds.total_bytes as u64);
    stop.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("stops")
        .expect("join");
    env.finish().await;
}

async fn list_pages_newest_first(backend: Backend) {
    let Some(mut env) = Env::start(backend, Options::default()).await else {
        return;
    };
    let entries = env.put_random("list", &[100]).await;
    let ds = env.dataset("list", entries).await;
    let mut made = Vec::new();
    for owner in ["alice", "bob", "alice", "carol", "alice"] {
        let r = env
            .service
            .reserve(&ds, owner, None, Duration::from_secs(600))
            .await
            .expect("reserve");
        made.push(r);
    }
    for r in &made {
        settle(&env.service, &r.id).await;
    }
    let mut expected: Vec<_> = made.iter().map(|r| (r.created_at, r.id.clone())).collect();
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = env
            .service
            .list(None, None, after.as_deref(), 2)
            .await
            .expect("list");
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|r| r.id.clone()));
        after = page.last().map(reservation_cursor);
        if !more {
            break;
        }
    }
    assert_eq!(seen, expected);

    let (alice, more) = env
        .service
        .list(Some("alice"), None, None, 10)
        .await
        .expect("list");
    assert_eq!(alice.len(), 3);
    assert!(!more);
    assert!(alice.iter().all(|r| r.owner == "alice"));
    assert_eq!(
        env.service.count(Some("alice"), None).await.expect("count"),
        3
    );
    env.service
        .release(&made[1].id, Actor::user("bob"))
        .await
        .expect("release");
    let (released, _) = env
        .service
        .list(None, Some(ReservationState::Released), None, 10)
        .await
        .expect("list");
    assert_eq!(
        released.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![made[1].id.as_str()]
    );
    assert_eq!(
        env.service
            .count(None, Some(ReservationState::Ready))
            .await
            .expect("count"),
        4
    );
    let err = env
        .service
        .list(None, None, Some("garbage"), 10)
        .await
        .expect_err("bad cursor");
    assert_eq!(err.field(), Some("after"));
    env.finish().await;
}
