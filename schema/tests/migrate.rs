//! Migrations and round trips through every table, on SQLite (always) and on PostgreSQL when
//! `MILEPOST_TEST_DATABASE_URL` names a server (a fresh database is created and dropped).
//!
//! (Over 600 lines: round trips through every table on both backends.)

use chrono::{DateTime, TimeZone as _, Utc};
use milepost_schema::entity::{
    cache_entry, dataset, dataset_member, drive, drive_event, egress_ledger, object, reservation,
    run, run_input, scenario, sync_run, token, transfer, transfer_metadata,
};
use milepost_schema::enums::{
    CacheEntryState, InputKind, RecordSource, ReservationState, Role, RunKind, RunStatus,
    TransferOp, TransferState,
};
use milepost_schema::prelude::*;
use milepost_schema::{connect, migrate, ping, DbError, ErrorKind};
use milepost_testkit::TestDatabase;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait as _, DatabaseConnection,
    EntityTrait as _, ModelTrait as _, PaginatorTrait as _, QueryFilter as _, QueryOrder as _, Set,
    Statement, TransactionTrait as _,
};
use sea_orm_migration::MigratorTrait as _;
use serde_json::json;

const PG_URL_VAR: &str = "MILEPOST_TEST_DATABASE_URL";

/// A timestamp with microseconds, the precision both backends keep.
fn at(hour: u32, micros: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, hour, 30, 15)
        .single()
        .expect("valid date")
        + chrono::Duration::microseconds(i64::from(micros))
}

fn sample_drive(id: &str) -> drive::ActiveModel {
    drive::ActiveModel {
        id: Set(id.to_owned()),
        vehicle: Set("gz-004".to_owned()),
        city: Set(Some("guangzhou".to_owned())),
        route: Set(Some("tianhe-loop".to_owned())),
        started_at: Set(at(9, 123_456)),
        ended_at: Set(at(11, 0)),
        distance_km: Set(Some(42.75)),
        software_version: Set(Some("av-3.14.2".to_owned())),
        weather: Set(Some("rain".to_owned())),
        tags: Set(json!(["night", "cut-in"])),
        extra: Set(json!({"driver": "lin", "sensors": {"lidar": 2, "ok": true}, "note": "广州 ✓"})),
        topics: Set(json!([])),
        bucket: Set("fleet".to_owned()),
        prefix: Set(format!("drives/2026-11-01/gz-004/{id}/")),
        source: Set(RecordSource::Sidecar),
        sidecar_etag: Set(Some("\"9b2cf535f27731c974343645a3985328\"".to_owned())),
        created_at: Set(at(12, 1)),
        updated_at: Set(at(12, 2)),
    }
}

fn sample_object(bucket: &str, key: &str, drive_id: Option<&str>) -> object::ActiveModel {
    object::ActiveModel {
        bucket: Set(bucket.to_owned()),
        key: Set(key.to_owned()),
        size: Set(5 * 1024 * 1024 * 1024 + 7),
        etag: Set("\"abc-3\"".to_owned()),
        last_modified: Set(Some(at(11, 5))),
        drive_id: Set(drive_id.map(str::to_owned)),
        run_id: Set(None),
        deleted_at: Set(None),
        metadata: Set(Some(json!({"topics": ["/camera/front"], "messages": 1200}))),
        created_at: Set(at(12, 0)),
        updated_at: Set(at(12, 0)),
        ..Default::default()
    }
}

/// Migrates `db` (twice), then writes and reads back every table.
async fn exercise(db: &DatabaseConnection) -> Result<(), DbError> {
    migrate(db).await?;
    migrate(db).await?; // a no-op the second time
    ping(db).await?;
    let applied = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM seaql_migrations",
        ))
        .await?
        .expect("one row");
    // Every migration once, however many there are.
    let all = milepost_schema::migration::Migrator::migrations().len();
    assert_eq!(applied.try_get::<i64>("", "n")?, all as i64);

    drive_and_children(db).await?;
    run_and_children(db).await?;
    dataset_and_reservation(db).await?;
    office_state(db).await?;
    Ok(())
}

async fn drive_and_children(db: &DatabaseConnection) -> Result<(), DbError> {
    let inserted = sample_drive("gz-004-20261101-0930").insert(db).await?;
    let read = Drive::find_by_id("gz-004-20261101-0930")
        .one(db)
        .await?
        .expect("drive just inserted");
    assert_eq!(read, inserted);
    assert_eq!(read.started_at, at(9, 123_456));
    assert_eq!(read.extra["sensors"]["lidar"], json!(2));
    assert_eq!(read.extra["note"], json!("广州 ✓"));
    assert_eq!(read.tags, json!(["night", "cut-in"]));
    assert_eq!(read.distance_km, Some(42.75));
    assert_eq!(read.source, RecordSource::Sidecar);

    for (position, kind) in ["cut-in", "disengagement"].into_iter().enumerate() {
        drive_event::ActiveModel {
            drive_id: Set(read.id.clone()),
            position: Set(i32::try_from(position).expect("small")),
            at: Set(at(10, 0)),
            kind: Set(kind.to_owned()),
            label: Set((position == 0).then(|| "truck from the left".to_owned())),
            ..Default::default()
        }
        .insert(db)
        .await?;
    }
    let events = read
        .find_related(DriveEvent)
        .order_by_asc(drive_event::Column::Position)
        .all(db)
        .await?;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, "cut-in");
    assert_eq!(events[0].label.as_deref(), Some("truck from the left"));
    assert_eq!(events[1].label, None);

    scenario::ActiveModel {
        id: Set("gz-004-20261101-0930/cut-in-1".to_owned()),
        drive_id: Set(read.id.clone()),
        label: Set("cut-in".to_owned()),
        tags: Set(json!(["rain"])),
        start_time: Set(at(10, 0)),
        end_time: Set(at(10, 500_000)),
        description: Set(None),
        source: Set(RecordSource::Api),
        created_at: Set(at(12, 0)),
        updated_at: Set(at(12, 0)),
    }
    .insert(db)
    .await?;
    assert_eq!(read.find_related(Scenario).count(db).await?, 1);

    let key = "drives/2026-11-01/gz-004/gz-004-20261101-0930/log_0.mcap";
    let first = sample_object("fleet", key, Some(&read.id))
        .insert(db)
        .await?;
    let second = sample_object("fleet", &format!("{key}.idx"), Some(&read.id))
        .insert(db)
        .await?;
    assert!(
        second.id > first.id,
        "ids increase: they are the pagination order"
    );
    let objects = read.find_related(Object).all(db).await?;
    assert_eq!(objects, vec![first.clone(), second]);
    assert_eq!(objects[0].size, 5 * 1024 * 1024 * 1024 + 7);
    assert_eq!(
        objects[0].metadata,
        Some(json!({"topics": ["/camera/front"], "messages": 1200}))
    );

    // The same (bucket, key) twice is a conflict; another bucket is fine.
    let dup = sample_object("fleet", key, None).insert(db).await;
    let err = DbError::from(dup.expect_err("duplicate (bucket, key)"));
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    sample_object("fleet-eu", key, None).insert(db).await?;

    // A missing parent is a conflict too, and foreign keys are enforced on every backend.
    let orphan = drive_event::ActiveModel {
        drive_id: Set("no-such-drive".to_owned()),
        position: Set(0),
        at: Set(at(10, 0)),
        kind: Set("x".to_owned()),
        label: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await;
    assert_eq!(
        DbError::from(orphan.expect_err("fk")).kind(),
        ErrorKind::Conflict
    );

    // Deleting a drive removes its events and scenarios and unlinks its objects.
    Drive::delete_by_id(read.id.clone()).exec(db).await?;
    assert_eq!(DriveEvent::find().count(db).await?, 0);
    assert_eq!(Scenario::find().count(db).await?, 0);
    let kept = Object::find_by_id(first.id)
        .one(db)
        .await?
        .expect("object kept");
    assert_eq!(kept.drive_id, None);
    Ok(())
}

async fn run_and_children(db: &DatabaseConnection) -> Result<(), DbError> {
    let run = run::ActiveModel {
        id: Set("sim-7731".to_owned()),
        kind: Set(RunKind::Benchmark),
        pipeline: Set("planner-regression".to_owned()),
        commit: Set(Some("4f2a9c1".to_owned())),
        status: Set(RunStatus::Passed),
        started_at: Set(Some(at(13, 0))),
        finished_at: Set(None),
        tags: Set(json!([])),
        metrics: Set(Some(json!({"ttc_min": 1.25, "collisions": 0}))),
        extra: Set(json!({})),
        bucket: Set("fleet".to_owned()),
        prefix: Set("runs/sim-7731/".to_owned()),
        source: Set(RecordSource::Api),
        sidecar_etag: Set(None),
        created_at: Set(at(13, 0)),
        updated_at: Set(at(13, 0)),
    }
    .insert(db)
    .await?;
    for (position, (id, kind)) in [
        ("gz-004-20261101-0930", InputKind::Drive),
        ("sc-1", InputKind::Scenario),
    ]
    .into_iter()
    .enumerate()
    {
        run_input::ActiveModel {
            run_id: Set(run.id.clone()),
            position: Set(i32::try_from(position).expect("small")),
            input_id: Set(id.to_owned()),
            input_kind: Set(kind),
        }
        .insert(db)
        .await?;
    }
    let inputs = run.find_related(RunInput).all(db).await?;
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[1].input_kind, InputKind::Scenario);
    let by_input = RunInput::find()
        .filter(run_input::Column::InputId.eq("gz-004-20261101-0930"))
        .one(db)
        .await?
        .expect("indexed lookup by input");
    assert_eq!(by_input.run_id, "sim-7731");

    let output = object::ActiveModel {
        run_id: Set(Some(run.id.clone())),
        ..sample_object("fleet", "runs/sim-7731/metrics.parquet", None)
    }
    .insert(db)
    .await?;
    assert_eq!(run.find_related(Object).all(db).await?, vec![output]);
    let read = Run::find_by_id("sim-7731").one(db).await?.expect("run");
    assert_eq!(
        read.metrics,
        Some(json!({"ttc_min": 1.25, "collisions": 0}))
    );
    assert_eq!(
        (read.kind, read.status),
        (RunKind::Benchmark, RunStatus::Passed)
    );
    Ok(())
}

async fn dataset_and_reservation(db: &DatabaseConnection) -> Result<(), DbError> {
    let dataset = dataset::ActiveModel {
        name: Set("cut-in-rain".to_owned()),
        version: Set(1),
        description: Set(Some("cut-ins in the rain".to_owned())),
        created_at: Set(at(14, 0)),
        created_by: Set("alice".to_owned()),
        manifest_bucket: Set("fleet".to_owned()),
        manifest_key: Set(".milepost/datasets/cut-in-rain/1.parquet".to_owned()),
        object_count: Set(2),
        total_bytes: Set(10),
        selection: Set(json!({"query": "cut-in weather:rain", "include": ["*.mcap"]})),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let again = dataset::ActiveModel {
        id: sea_orm::NotSet,
        ..dataset.clone().into()
    }
    .insert(db)
    .await;
    assert_eq!(
        DbError::from(again.expect_err("same name and version")).kind(),
        ErrorKind::Conflict
    );

    for position in 0..2_i64 {
        dataset_member::ActiveModel {
            dataset_id: Set(dataset.id),
            position: Set(position),
            bucket: Set("fleet".to_owned()),
            key: Set(format!("drives/x/log_{position}.mcap")),
            size: Set(5),
            etag: Set(format!("\"e{position}\"")),
            trim: Set(None),
        }
        .insert(db)
        .await?;
    }
    let members = dataset
        .find_related(DatasetMember)
        .filter(dataset_member::Column::Position.gt(0))
        .all(db)
        .await?;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].key, "drives/x/log_1.mcap");

    let reservation = reservation::ActiveModel {
        id: Set(milepost_schema::ids::new_id("res")),
        dataset_id: Set(dataset.id),
        owner: Set("alice".to_owned()),
        purpose: Set(None),
        state: Set(ReservationState::Pending),
        created_at: Set(at(15, 0)),
        updated_at: Set(at(15, 0)),
        expires_at: Set(at(23, 0)),
        objects_total: Set(2),
        objects_done: Set(0),
        bytes_total: Set(10),
        bytes_done: Set(0),
        bytes_from_upstream: Set(0),
        local_path: Set(None),
        error: Set(None),
        notes: Set(None),
        ready_by: Set(None),
        scheduled_start: Set(None),
    }
    .insert(db)
    .await?;
    let mut active: reservation::ActiveModel = reservation.clone().into();
    active.state = Set(ReservationState::Ready);
    active.local_path = Set(Some("views/res_x".to_owned()));
    active.update(db).await?;
    let expiring = Reservation::find()
        .filter(reservation::Column::ExpiresAt.lt(at(23, 1)))
        .filter(reservation::Column::State.eq(ReservationState::Ready))
        .all(db)
        .await?;
    assert_eq!(expiring.len(), 1);
    assert_eq!(expiring[0].id, reservation.id);
    assert_eq!(dataset.find_related(Reservation).count(db).await?, 1);
    Ok(())
}

async fn office_state(db: &DatabaseConnection) -> Result<(), DbError> {
    let entry = cache_entry::ActiveModel {
        bucket: Set("fleet".to_owned()),
        key: Set("a/b.mcap".to_owned()),
        etag: Set("\"e1\"".to_owned()),
        size: Set(3),
        path: Set("objects/ab/cdef".to_owned()),
        state: Set(CacheEntryState::Ready),
        last_access: Set(at(16, 0)),
        created_at: Set(at(16, 0)),
        ..Default::default()
    };
    entry.clone().insert(db).await?;
    let dup = entry.clone().insert(db).await;
    assert_eq!(
        DbError::from(dup.expect_err("same version")).kind(),
        ErrorKind::Conflict
    );
    cache_entry::ActiveModel {
        etag: Set("\"e2\"".to_owned()),
        state: Set(CacheEntryState::Dirty),
        ..entry
    }
    .insert(db)
    .await?;
    assert_eq!(CacheEntry::find().count(db).await?, 2);

    let queued = transfer::ActiveModel {
        op: Set(TransferOp::Put),
        bucket: Set("fleet".to_owned()),
        key: Set("drives/new/log.mcap".to_owned()),
        size: Set(3),
        etag: Set(None),
        staging_path: Set(Some("staging/1".to_owned())),
        state: Set(TransferState::Queued),
        priority: Set(1),
        bytes_done: Set(0),
        attempts: Set(0),
        enqueued_at: Set(at(17, 0)),
        started_at: Set(None),
        finished_at: Set(None),
        error: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let next = Transfer::find()
        .filter(transfer::Column::State.eq(TransferState::Queued))
        .order_by_asc(transfer::Column::Priority)
        .order_by_asc(transfer::Column::Id)
        .one(db)
        .await?;
    assert_eq!(next, Some(queued.clone()));
    // The object metadata of a put: null until set, mapped by an entity of its own.
    let metadata = TransferMetadata::find_by_id(queued.id)
        .one(db)
        .await?
        .expect("the same row");
    assert_eq!(metadata.metadata, None);
    let json = r#"{"content_type":"application/x-mcap","user":{"vehicle":"car-7"}}"#;
    transfer_metadata::ActiveModel {
        id: Set(queued.id),
        metadata: Set(Some(json.to_owned())),
    }
    .update(db)
    .await?;
    let metadata = TransferMetadata::find_by_id(queued.id)
        .one(db)
        .await?
        .expect("the same row");
    assert_eq!(metadata.metadata.as_deref(), Some(json));
    assert_eq!(
        Transfer::find_by_id(queued.id).one(db).await?,
        Some(queued),
        "the rest of the row is untouched"
    );

    let token = token::ActiveModel {
        name: Set("ci".to_owned()),
        role: Set(Role::Pipeline),
        secret_hash: Set("ab".repeat(32)),
        s3_access_key: Set(None),
        s3_secret: Set(None),
        created_at: Set(at(18, 0)),
        last_used_at: Set(None),
        revoked_at: Set(None),
        ..Default::default()
    };
    token.clone().insert(db).await?;
    // Several tokens without S3 credentials are fine; two with the same name are not.
    token::ActiveModel {
        name: Set("viewer".to_owned()),
        role: Set(Role::Viewer),
        secret_hash: Set("cd".repeat(32)),
        ..token.clone()
    }
    .insert(db)
    .await?;
    let dup = token::ActiveModel {
        secret_hash: Set("ef".repeat(32)),
        ..token
    }
    .insert(db)
    .await;
    assert_eq!(
        DbError::from(dup.expect_err("same name")).kind(),
        ErrorKind::Conflict
    );
    let pipeline = Token::find()
        .filter(token::Column::SecretHash.eq("ab".repeat(32)))
        .one(db)
        .await?
        .expect("token by hash");
    assert_eq!(pipeline.role, Role::Pipeline);

    egress_ledger::ActiveModel {
        recorded_at: Set(at(19, 0)),
        office: Set("gz".to_owned()),
        bucket: Set("fleet".to_owned()),
        key: Set("a/b.mcap".to_owned()),
        dataset: Set(Some("cut-in-rain".to_owned())),
        owner: Set(None),
        bytes_from_upstream: Set(0),
        bytes_served: Set(3),
        cache_hit: Set(true),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let hit = EgressLedger::find().one(db).await?.expect("ledger row");
    assert!(hit.cache_hit);

    let sync = sync_run::ActiveModel {
        started_at: Set(at(20, 0)),
        finished_at: Set(Some(at(20, 999_999))),
        objects_seen: Set(12),
        drives: Set(1),
        runs: Set(1),
        errors: Set(json!(["drives/x/drive.json: missing field `vehicle`"])),
        ..Default::default()
    }
    .insert(db)
    .await?;
    let read = SyncRun::find_by_id(sync.id)
        .one(db)
        .await?
        .expect("sync run");
    assert_eq!(read, sync);
    assert_eq!(read.finished_at, Some(at(20, 999_999)));
    Ok(())
}

#[tokio::test]
async fn sqlite_creates_file_migrates_and_round_trips() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested/data/catalog.db");
    let db = connect(&format!("sqlite://{}", path.display())).await?;
    assert!(path.is_file(), "connect creates the database file");

    // Every pooled connection has the pragmas: hold several at once through transactions.
    let mut txns = Vec::new();
    for _ in 0..3 {
        txns.push(db.begin().await?);
    }
    for txn in &txns {
        for (pragma, expected) in [
            ("journal_mode", "wal"),
            ("foreign_keys", "1"),
            ("busy_timeout", "5000"),
            // FULL (2): a commit is on disk when it returns. The write-back journal's rows
            // acknowledge uploads; NORMAL would let a power cut take back a commit.
            ("synchronous", "2"),
        ] {
            let row = txn
                .query_one(Statement::from_string(
                    sea_orm::DatabaseBackend::Sqlite,
                    format!("SELECT * FROM pragma_{pragma}"),
                ))
                .await?
                .expect("pragma row");
            let value = row
                .try_get_by_index::<String>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|v| v.to_string()))?;
            assert_eq!(value, expected, "pragma {pragma}");
        }
    }
    drop(txns);

    exercise(&db).await?;
    db.close().await?;

    // Reopening finds the data and the migrations applied.
    let db = connect(&format!("sqlite://{}", path.display())).await?;
    migrate(&db).await?;
    assert_eq!(Object::find().count(&db).await?, 4);
    Ok(())
}

#[tokio::test]
async fn sqlite_in_memory_works_for_tests() -> Result<(), DbError> {
    let db = connect("sqlite::memory:").await?;
    migrate(&db).await?;
    sample_drive("d1").insert(&db).await?;
    assert_eq!(Drive::find().count(&db).await?, 1);
    Ok(())
}

#[tokio::test]
async fn unsupported_and_invalid_urls_are_invalid() {
    for (url, named) in [
        ("mysql://root:hunter2@db/catalog", "`mysql`"),
        ("./catalog.db", "./catalog.db"),
        ("http://example.com/", "`http`"),
    ] {
        let err = connect(url).await.expect_err("unsupported");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{url}");
        let message = err.to_string();
        assert!(message.contains(named), "{message}");
        assert!(
            message.contains("sqlite://") && message.contains("postgres://"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
    let err = connect("sqlite://").await.expect_err("no path");
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable_without_leaking_the_password() {
    // Port 1 on loopback: nothing listens there.
    let err = connect("postgres://milepost:hunter2@127.0.0.1:1/catalog")
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let message = format!("{err} {err:?}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        message.contains("milepost:***@127.0.0.1:1/catalog"),
        "{message}"
    );
}

#[tokio::test]
async fn sqlite_directory_that_cannot_be_created_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let err = connect(&format!("sqlite://{}/catalog.db", file.display()))
        .await
        .expect_err("parent is a file");
    assert!(matches!(err, DbError::CreateDir { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        milepost_testkit::replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        milepost_testkit::replace_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        milepost_testkit::replace_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

#[tokio::test]
async fn postgres_migrates_and_round_trips() -> Result<(), DbError> {
    let Some(admin_url) = milepost_testkit::postgres_server_url() else {
        eprintln!("skipped: set {PG_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test) to run against PostgreSQL");
        return Ok(());
    };
    let database = TestDatabase::on_postgres(&admin_url).await?;
    let db = connect(database.url()).await?;
    exercise(&db).await?;

    // Concurrent migrations (several nodes starting at once) wait for each other.
    let other = connect(database.url()).await?;
    let (a, b) = tokio::join!(migrate(&db), migrate(&other));
    a?;
    b?;
    other.close().await?;
    db.close().await?;
    drop(database);
    Ok(())
}

#[tokio::test]
async fn postgres_concurrent_first_migrations_do_not_collide() -> Result<(), DbError> {
    let Some(admin_url) = milepost_testkit::postgres_server_url() else {
        eprintln!("skipped: set {PG_URL_VAR} to run against PostgreSQL");
        return Ok(());
    };
    let database = TestDatabase::on_postgres(&admin_url).await?;
    let (a, b) = tokio::join!(connect(database.url()), connect(database.url()));
    let (a, b) = (a?, b?);
    let (ra, rb) = tokio::join!(migrate(&a), migrate(&b));
    ra?;
    rb?;
    assert_eq!(Drive::find().count(&a).await?, 0);
    a.close().await?;
    b.close().await?;
    Ok(())
}
