//! Opening, migrating and checking the catalog database.

use std::path::Path;
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    SqlxPostgresConnector, SqlxSqliteConnector, Statement, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::error::{classify_sqlx, redact_url, url_password, DbError, ErrorKind};
use crate::migration::Migrator;

/// How long a SQLite connection waits for a lock held by another connection before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in a SQLite pool: one writer at a time anyway, a few concurrent readers (WAL).
const SQLITE_MAX_CONNECTIONS: u32 = 5;
/// Connections in a PostgreSQL pool.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// How long a query waits for a free pooled connection before failing as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Key of the PostgreSQL advisory lock that serializes migrations across nodes.
const MIGRATION_LOCK_KEY: i64 = 0x6d69_6c65_706f_7374; // "milepost"

/// Opens a connection pool to `url`: `sqlite://PATH` (or `sqlite:PATH`) or
/// `postgres://...` / `postgresql://...`.
///
/// For SQLite, the parent directory and the file are created when missing, and every pooled
/// connection runs in WAL mode with `foreign_keys=ON`, `synchronous=FULL` and a 5 s
/// `busy_timeout`. FULL because a commit acknowledges things (an office upload's journal row):
/// in WAL mode NORMAL syncs the WAL only at checkpoints, so a power cut can take back commits
/// that returned; FULL syncs the WAL at every commit. `sqlite::memory:` gives a single-connection in-memory database (tests).
/// Connecting verifies the database answers. Statement logging by sqlx is off: callers log.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbError> {
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("sqlite") => connect_sqlite(url).await,
        Some("postgres" | "postgresql") => connect_postgres(url).await,
        Some(scheme) => Err(DbError::UnsupportedScheme {
            scheme: scheme.to_owned(),
        }),
        None => Err(DbError::InvalidUrl {
            url: redact_url(url),
            reason: "no scheme: expected sqlite://PATH or postgres://...".to_owned(),
        }),
    }
}

/// Begins a transaction that reads and then writes, with the write lock taken first on SQLite
/// (what `BEGIN IMMEDIATE` does), through a no-op write as its first statement.
///
/// Why: a SQLite transaction that reads first pins its snapshot; if another connection commits
/// before its first write, that write fails at once with `SQLITE_BUSY_SNAPSHOT` ("database is
/// locked"), which the busy timeout does not wait out, so under steady concurrent writes such
/// a transaction can keep failing whatever it retries. With the lock taken first, the busy
/// timeout queues it behind the other writers and its reads see their commits. On PostgreSQL
/// this is a plain `BEGIN`.
pub async fn begin_write(conn: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let txn = conn.begin().await?;
    if txn.get_database_backend() == DatabaseBackend::Sqlite {
        // An UPDATE starts a write transaction whatever rows it matches (none here); the
        // migrations table exists in every migrated database.
        txn.execute_unprepared(r#"UPDATE "seaql_migrations" SET "version" = "version" WHERE 0"#)
            .await?;
    }
    Ok(txn)
}

async fn connect_sqlite(url: &str) -> Result<DatabaseConnection, DbError> {
    let options: SqliteConnectOptions =
        url.parse().map_err(|e: sqlx::Error| DbError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = database == ":memory:" || params.split('&').any(|p| p == "mode=memory");
    let explicit_mode = params.split('&').any(|p| p.starts_with("mode="));

    let mut options = options
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .disable_statement_logging();
    let mut pool = SqlitePoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
    if in_memory {
        // Each connection to a private in-memory database would see its own empty database:
        // keep exactly one, forever.
        pool = pool
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    } else {
        if database.is_empty() {
            return Err(DbError::InvalidUrl {
                url: url.to_owned(),
                reason: "no file path after sqlite://".to_owned(),
            });
        }
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        if !explicit_mode {
            options = options.create_if_missing(true);
        }
        create_parent_dir(options.get_filename())?;
        pool = pool.max_connections(SQLITE_MAX_CONNECTIONS);
    }
    let pool = pool
        .connect_with(options)
        .await
        .map_err(|e| connect_error(url, &e))?;
    tracing::debug!(url, "connected to sqlite");
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// Creates the directory that will hold the database file. Runs once at start-up, so the
/// blocking call is acceptable.
fn create_parent_dir(file: &Path) -> Result<(), DbError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                path: dir.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

async fn connect_postgres(url: &str) -> Result<DatabaseConnection, DbError> {
    let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| DbError::InvalidUrl {
        url: redact_url(url),
        reason: scrub(url, &e.to_string()),
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.disable_statement_logging())
        .await
        .map_err(|e| connect_error(url, &e))?;
    tracing::debug!(url = %redact_url(url), "connected to postgres");
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

fn connect_error(url: &str, err: &sqlx::Error) -> DbError {
    let kind = match classify_sqlx(err) {
        // A database that refuses us (bad credentials, no such database) is not coming back by
        // itself, but from the caller's point of view the catalog is unavailable.
        ErrorKind::Corrupt | ErrorKind::Conflict | ErrorKind::NotFound => ErrorKind::Unavailable,
        kind => kind,
    };
    DbError::Connect {
        kind,
        url: redact_url(url),
        reason: scrub(url, &err.to_string()),
    }
}

/// `message` with the URL's password, if any, replaced by `***`.
fn scrub(url: &str, message: &str) -> String {
    match url_password(url) {
        Some(password) => message.replace(password, "***"),
        None => message.to_owned(),
    }
}

/// Applies every pending migration, in one transaction. Running it again is a no-op. On
/// PostgreSQL an advisory lock makes concurrent callers (several nodes starting at once) wait
/// for each other.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    let txn = db.begin().await.map_err(DbError::migrate)?;
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [MIGRATION_LOCK_KEY.into()],
        ))
        .await
        .map_err(DbError::migrate)?;
    }
    Migrator::up(&txn, None).await.map_err(DbError::migrate)?;
    txn.commit().await.map_err(DbError::migrate)?;
    tracing::info!("catalog database migrated");
    Ok(())
}

/// Checks that the database answers (for `/healthz`).
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbError> {
    db.ping().await.map_err(DbError::from)
}
