//! `begin_write` on SQLite: a transaction that reads and then writes takes the write lock
//! first, so a writer that commits meanwhile waits for it instead of making its write fail
//! with "database is locked" (SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out). The
//! write-back journal's enqueue is such a transaction; under 16 concurrent registrations it
//! failed this way before it used `begin_write`.

use std::time::Duration;

use milepost_schema::{begin_write, connect, migrate};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, TransactionTrait as _};

async fn database(dir: &std::path::Path) -> DatabaseConnection {
    let db = connect(&format!("sqlite://{}", dir.join("lock.db").display()))
        .await
        .expect("connect");
    migrate(&db).await.expect("migrate");
    db.execute_unprepared("CREATE TABLE scratch (x INTEGER NOT NULL)")
        .await
        .expect("table");
    db
}

async fn count(conn: &impl sea_orm::ConnectionTrait) -> i64 {
    let row = conn
        .query_one(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM scratch",
        ))
        .await
        .expect("count")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n")
}

#[tokio::test]
async fn a_plain_transaction_that_read_first_cannot_write_after_another_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let db = database(dir.path()).await;
    let txn = db.begin().await.expect("begin");
    assert_eq!(count(&txn).await, 0);
    // Another connection of the pool commits between the read and the write.
    db.execute_unprepared("INSERT INTO scratch VALUES (1)")
        .await
        .expect("the other writer commits");
    let err = txn
        .execute_unprepared("INSERT INTO scratch VALUES (2)")
        .await
        .expect_err("the stale snapshot cannot become a write");
    assert!(err.to_string().contains("database is locked"), "{err}");
}

#[tokio::test]
async fn begin_write_holds_other_writers_back_until_it_commits() {
    let dir = tempfile::tempdir().expect("dir");
    let db = database(dir.path()).await;
    let txn = begin_write(&db).await.expect("begin_write");
    assert_eq!(count(&txn).await, 0);
    let other = {
        let db = db.clone();
        tokio::spawn(async move {
            db.execute_unprepared("INSERT INTO scratch VALUES (1)")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !other.is_finished(),
        "the other writer waits for the lock begin_write holds"
    );
    txn.execute_unprepared("INSERT INTO scratch VALUES (2)")
        .await
        .expect("the write after the read succeeds");
    txn.commit().await.expect("commit");
    other
        .await
        .expect("task")
        .expect("the other writer commits after it");
    assert_eq!(count(&db).await, 2);

    // Started after another writer committed, its reads see that commit.
    let txn = begin_write(&db).await.expect("begin_write");
    assert_eq!(count(&txn).await, 2);
    txn.rollback().await.expect("rollback");
}
