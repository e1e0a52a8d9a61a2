//! Object metadata (Content-Type, Cache-Control, Content-Disposition, Content-Encoding,
//! Content-Language, Expires, `x-amz-meta-*`) through the write-back path, with real
//! components only: a real S3 server on loopback (s3s-fs, which stores all of these for
//! PutObject and CreateMultipartUpload and returns them on HEAD and GET), aws-sdk-s3, a real
//! `OfficeCache` and `WriteBack` on a temporary directory, and SQLite, or PostgreSQL when
//! `MILEPOST_TEST_DATABASE_URL` names a server (a fresh database per test, dropped after;
//! otherwise the `postgres` variants are skipped with a message).
//!
//! What a client would notice: the office serves an object's metadata from the moment the
//! write is acknowledged, across a restart (the journal read again), and once the uploader has
//! put it in S3 (single PUT and multipart), where a plain S3 HEAD shows it too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use milepost_cacher::cache::{CacheSettings, OfficeCache};
use milepost_cacher::writeback::{
    BodyChecks, OfficeStore, OfficeVersion, Unshaped, WriteBack, WriteBackSettings, WriteCondition,
};
use milepost_schema::entity::transfer;
use milepost_schema::enums::TransferState;
use milepost_schema::{connect, migrate};
use milepost_store::{
    put_stream_with, ByteRange, ObjectMetadata, ObjectStore, S3Store, StoreErrorKind,
    UploadOptions, MIN_PART_SIZE,
};
use milepost_testkit::{Backend, LoopbackUpstream, TestDatabase};
use rand::RngCore as _;
use sea_orm::{DatabaseConnection, EntityTrait as _};

const BUCKET: &str = "fleet";
const KIB: usize = 1024;
const WAIT: Duration = Duration::from_secs(60);

milepost_testkit::on_both_backends!(
    single_put_keeps_metadata_in_the_office_across_a_restart_and_in_s3,
    multipart_keeps_metadata_in_the_office_across_a_restart_and_in_s3,
);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// The metadata a client might give a drive log, every field set.
fn full_metadata() -> ObjectMetadata {
    ObjectMetadata {
        content_type: Some("application/x-mcap".to_owned()),
        cache_control: Some("max-age=3600, must-revalidate".to_owned()),
        content_disposition: Some("attachment; filename=\"drive 7.mcap\"".to_owned()),
        content_encoding: Some("zstd".to_owned()),
        content_language: Some("en-GB".to_owned()),
        expires: Some("Thu, 01 Dec 2033 16:00:00 GMT".to_owned()),
        user: ObjectMetadata::user_from([("vehicle", "car-7"), ("X-Amz-Meta-Run-Id", "r-42")]),
    }
}

/// S3, the database and the directory the office lives in; the office itself is opened (and
/// reopened, as after a restart) with [`Env::open_office`].
struct Env {
    dir: tempfile::TempDir,
    _server: LoopbackUpstream,
    /// The store the office uploads to and reads S3 through: `build_store` over the server.
    upstream: Arc<dyn ObjectStore>,
    /// Plain aws-sdk-s3, for what any S3 client would see.
    s3: aws_sdk_s3::Client,
    db: DatabaseConnection,
    _pg: TestDatabase,
}

/// One run of the office: its cache, the write-back journal (uploader not started until
/// [`WriteBack::start`]) and the store every office reader uses.
struct Office {
    cache: Arc<OfficeCache>,
    write_back: Arc<WriteBack>,
    store: OfficeStore,
}

impl Env {
    /// `None` (after printing why) for PostgreSQL without `MILEPOST_TEST_DATABASE_URL`.
    async fn start(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = TestDatabase::on_backend(backend, dir.path()).await?;
        let db = connect(pg.url()).await.expect("test database");
        migrate(&db).await.expect("migrate");
        let server = LoopbackUpstream::start(BUCKET).await;
        let upstream = server.store.clone();
        let s3 = S3Store::new(&server.settings())
            .expect("sdk client")
            .client()
            .clone();
        Some(Self {
            dir,
            _server: server,
            upstream,
            s3,
            db,
            _pg: pg,
        })
    }

    /// Opens the office over the directory and database as a process starting up does: the
    /// cache reconciled, the journal read, unfinished multipart uploads found again. Uploads
    /// go in parts of [`MIN_PART_SIZE`], so anything larger is a multipart upload to S3.
    async fn open_office(&self) -> Office {
        let cache = OfficeCache::open(
            cache_settings(self.dir.path()),
            self.db.clone(),
            Arc::clone(&self.upstream),
        )
        .await
        .expect("cache");
        let write_back = WriteBack::open(
            self.db.clone(),
            Arc::clone(&cache),
            Arc::clone(&self.upstream),
            WriteBackSettings {
                part_size: MIN_PART_SIZE,
                retry_base: Duration::from_millis(50),
                ..WriteBackSettings::default()
            },
            Arc::new(Unshaped),
        )
        .await
        .expect("write-back");
        let store = OfficeStore::new(Arc::clone(&self.upstream), Arc::clone(&write_back));
        Office {
            cache,
            write_back,
            store,
        }
    }

    /// A plain S3 HEAD of `key`, as any client of the bucket sees it.
    async fn s3_head(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        self.s3
            .head_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|err| panic!("s3 head {key}: {err:?}"))
    }

    /// Checks that S3 holds `key` with `body` and, through a plain HEAD, every field of
    /// `metadata`; and that the upstream store's `head` and `get` read them all back.
    async fn assert_in_s3(&self, key: &str, body: &[u8], metadata: &ObjectMetadata) {
        let head = self.s3_head(key).await;
        assert_eq!(head.content_type(), metadata.content_type.as_deref());
        assert_eq!(head.cache_control(), metadata.cache_control.as_deref());
        assert_eq!(
            head.content_disposition(),
            metadata.content_disposition.as_deref()
        );
        assert_eq!(
            head.content_encoding(),
            metadata.content_encoding.as_deref()
        );
        assert_eq!(
            head.content_language(),
            metadata.content_language.as_deref()
        );
        assert_eq!(head.expires_string(), metadata.expires.as_deref());
        let user: std::collections::BTreeMap<String, String> = head
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        assert_eq!(user, metadata.user, "x-amz-meta-* of {key} in s3");

        let meta = self
            .upstream
            .head(BUCKET, key)
            .await
            .expect("upstream head");
        assert_eq!(&meta.metadata, metadata, "S3Store::head of {key}");
        let got = self
            .upstream
            .get(BUCKET, key, ByteRange::All, None)
            .await
            .expect("upstream get");
        assert_eq!(&got.meta.metadata, metadata, "S3Store::get of {key}");
        let bytes = got.collect(usize::MAX).await.expect("body");
        assert!(bytes == body, "the bytes of {key} in s3");
    }

    /// Every transfer ended as done (none failed or still queued).
    async fn assert_all_uploaded(&self) {
        let rows = transfer::Entity::find().all(&self.db).await.expect("rows");
        assert!(!rows.is_empty());
        for row in rows {
            assert_eq!(
                row.state,
                TransferState::Done,
                "transfer {} of {}: {:?}",
                row.id,
                row.key,
                row.error
            );
        }
    }
}

impl Office {
    /// Stops the uploader and the cache, as a process shutting down does.
    async fn stop(self) {
        self.write_back.shutdown().await;
        self.cache.shutdown().await;
    }

    /// Starts the uploader and waits until the queue has drained.
    async fn upload_all(&self) {
        self.write_back.start();
        assert!(
            self.write_back.wait_idle(WAIT).await,
            "the upload queue did not drain"
        );
    }

    /// What the office serves for `key`, by `head` and by `get`: both must carry `metadata`.
    async fn assert_serves(&self, key: &str, body: &[u8], metadata: &ObjectMetadata) {
        let meta = self.store.head(BUCKET, key).await.expect("office head");
        assert_eq!(&meta.metadata, metadata, "OfficeStore::head of {key}");
        assert_eq!(meta.size, body.len() as u64);
        let got = self
            .store
            .get(BUCKET, key, ByteRange::All, None)
            .await
            .expect("office get");
        assert_eq!(&got.meta.metadata, metadata, "OfficeStore::get of {key}");
        let bytes = got.collect(usize::MAX).await.expect("office body");
        assert!(bytes == body, "the bytes of {key} in the office");
    }

    /// The office's own version of `key` (not yet in S3) and its metadata.
    fn office_metadata(&self, key: &str) -> Option<ObjectMetadata> {
        match self.write_back.version(BUCKET, key) {
            Some(OfficeVersion::Written { metadata, .. }) => Some(metadata),
            _ => None,
        }
    }
}

fn cache_settings(dir: &Path) -> CacheSettings {
    CacheSettings::new(dir.join("cache"), 1 << 30)
}

fn random_bytes(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    Bytes::from(data)
}

fn one_chunk(body: &Bytes) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::iter([Ok(body.clone())])
}

fn length_of(body: &Bytes) -> BodyChecks {
    BodyChecks {
        length: Some(body.len() as u64),
        ..BodyChecks::default()
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// A PUT the way the gateway commits it (`stage`, `commit_put_with`) and one through the
/// office's `ObjectStore` (`put_with`): the office serves their metadata at once and after a
/// restart; the uploader's single PUT gives it to S3; the office still serves it from S3 after
/// that. An overwrite without metadata leaves the object without (nothing sticks).
async fn single_put_keeps_metadata_in_the_office_across_a_restart_and_in_s3(backend: Backend) {
    let Some(env) = Env::start(backend).await else {
        return;
    };
    let office = env.open_office().await;
    let wb = Arc::clone(&office.write_back);

    let key = "drives/d7/log.mcap";
    let body = random_bytes(300 * KIB);
    let metadata = full_metadata();
    let staged = wb
        .stage(BUCKET, key, one_chunk(&body), &length_of(&body))
        .await
        .expect("stage");
    let etag = staged.md5_hex();
    let committed = wb
        .commit_put_with(
            BUCKET,
            key,
            staged.path,
            staged.size,
            etag,
            &WriteCondition::IfAbsent,
            metadata.clone(),
        )
        .await
        .expect("commit");
    assert_eq!(committed.metadata, metadata);

    let small_key = "drives/d7/notes.txt";
    let small = Bytes::from_static(b"lane change at 12:04\n");
    let small_metadata = ObjectMetadata {
        content_type: Some("text/plain; charset=utf-8".to_owned()),
        ..ObjectMetadata::default()
    }
    .with_user("author", "alice");
    let put = office
        .store
        .put_with(BUCKET, small_key, small.clone(), &small_metadata)
        .await
        .expect("office put_with");
    assert_eq!(put.metadata, small_metadata);

    // Acknowledged: the office serves both with their metadata; S3 has neither yet.
    office.assert_serves(key, &body, &metadata).await;
    office
        .assert_serves(small_key, &small, &small_metadata)
        .await;
    let err = env.upstream.head(BUCKET, key).await.expect_err("not in s3");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);

    // A restart before the upload: the journal gives the metadata back.
    office.stop().await;
    let office = env.open_office().await;
    assert_eq!(office.office_metadata(key), Some(metadata.clone()));
    office.assert_serves(key, &body, &metadata).await;
    office
        .assert_serves(small_key, &small, &small_metadata)
        .await;

    // The uploader gives them to S3 (single PUTs: both are below the part size).
    office.upload_all().await;
    env.assert_all_uploaded().await;
    env.assert_in_s3(key, &body, &metadata).await;
    env.assert_in_s3(small_key, &small, &small_metadata).await;
    assert_eq!(office.write_back.version(BUCKET, key), None, "settled");
    office.assert_serves(key, &body, &metadata).await;

    // Overwritten without metadata: none in the office, and none left in S3.
    let plain = random_bytes(10 * KIB);
    let staged = office
        .write_back
        .stage(BUCKET, key, one_chunk(&plain), &length_of(&plain))
        .await
        .expect("stage");
    let etag = staged.md5_hex();
    office
        .write_back
        .commit_put_if(
            BUCKET,
            key,
            staged.path,
            staged.size,
            etag,
            &WriteCondition::Always,
        )
        .await
        .expect("commit without metadata");
    office
        .assert_serves(key, &plain, &ObjectMetadata::default())
        .await;
    assert!(office.write_back.wait_idle(WAIT).await, "queue drained");
    env.assert_all_uploaded().await;
    let head = env.s3_head(key).await;
    assert!(
        head.metadata().is_none_or(|m| m.is_empty()),
        "user metadata left in s3: {:?}",
        head.metadata()
    );
    assert_ne!(head.content_type(), Some("application/x-mcap"));
    assert_eq!(head.content_disposition(), None);
    office.stop().await;
}

/// Multipart both ways: through the office's `Multipart` as the gateway drives it
/// (`create_with`, parts, a restart with the upload unfinished, `assemble`,
/// `commit_put_with`), and through the office's `ObjectStore` (`put_stream_with` in 5 MiB
/// parts: `create_multipart_with`, `upload_part`, `complete_multipart`). The office serves the
/// metadata before and after a restart; the uploader's multipart upload (the objects are
/// larger than its part size) gives it to S3.
async fn multipart_keeps_metadata_in_the_office_across_a_restart_and_in_s3(backend: Backend) {
    let Some(env) = Env::start(backend).await else {
        return;
    };
    let office = env.open_office().await;

    let key = "drives/d8/camera.mcap";
    let body = random_bytes(MIN_PART_SIZE + 700 * KIB);
    let metadata = full_metadata();
    let (first, second) = body.split_at(MIN_PART_SIZE);
    let (first, second) = (
        Bytes::copy_from_slice(first),
        Bytes::copy_from_slice(second),
    );
    let upload_id = office
        .write_back
        .multipart()
        .create_with(BUCKET, key, metadata.clone())
        .await
        .expect("create");
    let mut etags = Vec::new();
    for (number, part) in [(1, &first), (2, &second)] {
        let stored = office
            .write_back
            .multipart()
            .upload_part(
                &upload_id,
                BUCKET,
                key,
                number,
                one_chunk(part),
                &length_of(part),
            )
            .await
            .expect("part");
        etags.push((number, stored.etag));
    }

    // A restart with the upload unfinished: its metadata is kept with it.
    office.stop().await;
    let office = env.open_office().await;
    let wb = Arc::clone(&office.write_back);
    let info = wb.multipart().info(&upload_id).await.expect("upload info");
    assert_eq!(info.metadata, metadata);
    let assembled = wb
        .multipart()
        .assemble(&upload_id, &etags, wb.staging_path(BUCKET, key))
        .await
        .expect("assemble");
    assert_eq!(assembled.metadata, metadata);
    let committed = wb
        .commit_put_with(
            BUCKET,
            key,
            assembled.path,
            assembled.size,
            assembled.etag,
            &WriteCondition::Always,
            assembled.metadata,
        )
        .await
        .expect("commit");
    assert_eq!(committed.metadata, metadata);
    wb.multipart().remove(&upload_id).await.expect("remove");
    assert!(committed.etag.ends_with("-2"), "{}", committed.etag);

    let streamed_key = "drives/d8/lidar.bin";
    let streamed = random_bytes(MIN_PART_SIZE + 64 * KIB);
    let streamed_metadata = ObjectMetadata {
        content_type: Some("application/octet-stream".to_owned()),
        content_disposition: Some("inline".to_owned()),
        ..ObjectMetadata::default()
    }
    .with_user("sensor", "lidar-top");
    let chunks = futures::stream::iter(
        streamed
            .chunks(256 * KIB)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let meta = put_stream_with(
        &office.store,
        BUCKET,
        streamed_key,
        chunks,
        &UploadOptions {
            part_size: MIN_PART_SIZE,
        },
        &streamed_metadata,
    )
    .await
    .expect("put_stream_with through the office");
    assert!(meta.etag.ends_with("-2"), "multipart: {}", meta.etag);
    assert_eq!(meta.metadata, streamed_metadata);

    office.assert_serves(key, &body, &metadata).await;
    office
        .assert_serves(streamed_key, &streamed, &streamed_metadata)
        .await;

    // Another restart, now with the objects journaled: the journal gives the metadata back.
    office.stop().await;
    let office = env.open_office().await;
    office.assert_serves(key, &body, &metadata).await;
    office
        .assert_serves(streamed_key, &streamed, &streamed_metadata)
        .await;

    office.upload_all().await;
    env.assert_all_uploaded().await;
    for (key, body, metadata) in [
        (key, &body, &metadata),
        (streamed_key, &streamed, &streamed_metadata),
    ] {
        let head = env.s3_head(key).await;
        let etag = head.e_tag().unwrap_or_default();
        assert!(
            etag.trim_matches('"').ends_with("-2"),
            "{key} went to s3 in two parts: {etag}"
        );
        env.assert_in_s3(key, body, metadata).await;
        office.assert_serves(key, body, metadata).await;
    }
    office.stop().await;
}

/// The upstream store alone, no database: `put_with` and `create_multipart_with` store every
/// field, `head` and `get` read them back, listings carry none, and an `Expires` that is not
/// an HTTP date is refused before anything is sent if no header could carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_round_trips_metadata() {
    let server = LoopbackUpstream::start(BUCKET).await;
    let store = server.store.clone();
    let metadata = full_metadata();

    let small = Bytes::from_static(b"{\"drive\": 7}");
    let put = store
        .put_with(BUCKET, "a/drive.json", small.clone(), &metadata)
        .await
        .expect("put_with");
    assert_eq!(put.metadata, metadata);
    let head = store.head(BUCKET, "a/drive.json").await.expect("head");
    assert_eq!(head.metadata, metadata);
    let got = store
        .get(
            BUCKET,
            "a/drive.json",
            ByteRange::Bounded {
                start: 0,
                end_inclusive: 3,
            },
            None,
        )
        .await
        .expect("ranged get");
    assert_eq!(got.meta.metadata, metadata, "a ranged get carries them too");

    let big = random_bytes(MIN_PART_SIZE + 1);
    let meta = put_stream_with(
        store.as_ref(),
        BUCKET,
        "a/big.bin",
        futures::stream::iter([Ok::<_, std::io::Error>(big.clone())]),
        &UploadOptions {
            part_size: MIN_PART_SIZE,
        },
        &metadata,
    )
    .await
    .expect("multipart with metadata");
    assert!(meta.etag.ends_with("-2"), "{}", meta.etag);
    assert_eq!(
        meta.metadata, metadata,
        "complete_multipart heads the object"
    );
    assert_eq!(
        store
            .head(BUCKET, "a/big.bin")
            .await
            .expect("head")
            .metadata,
        metadata
    );

    let plain = store
        .put(BUCKET, "a/plain.bin", Bytes::from_static(b"x"))
        .await
        .expect("put");
    assert!(plain.metadata.is_empty());
    let listed = milepost_store::list_all(store.as_ref(), BUCKET, "a/")
        .await
        .expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|o| o.metadata.is_empty()));

    let bad = ObjectMetadata {
        expires: Some("tomorrow\nx-amz-acl: public-read".to_owned()),
        ..ObjectMetadata::default()
    };
    let err = store
        .put_with(BUCKET, "a/bad.bin", Bytes::from_static(b"x"), &bad)
        .await
        .expect_err("a header cannot carry it");
    assert_eq!(err.kind(), StoreErrorKind::Invalid);
    let err = store
        .head(BUCKET, "a/bad.bin")
        .await
        .expect_err("not written");
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    drop(server);
}
