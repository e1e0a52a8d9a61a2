//! [`TestDatabase`]: the catalog database of one test, on SQLite or on PostgreSQL.

use std::path::Path;

use milepost_schema::{connect, DbError};
use rand::Rng as _;
use sea_orm::ConnectionTrait as _;

/// Names a PostgreSQL server (`postgres://postgres@127.0.0.1:5432/test`): tests then run on a
/// database of their own there instead of on a SQLite file.
pub const DATABASE_URL_VARIABLE: &str = "MILEPOST_TEST_DATABASE_URL";

/// The PostgreSQL server the tests should use, if `MILEPOST_TEST_DATABASE_URL` names one.
pub fn postgres_server_url() -> Option<String> {
    std::env::var(DATABASE_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty())
}

/// A catalog backend, for tests that run each scenario on both ([`on_both_backends!`]).
///
/// [`on_both_backends!`]: crate::on_both_backends
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named scenario, an `async fn(Backend)`, twice: as the tests
/// `<scenario>::sqlite` and `<scenario>::postgres` (the latter skipped, saying why, when
/// `MILEPOST_TEST_DATABASE_URL` names no server).
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$scenario($crate::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$scenario($crate::Backend::Postgres).await;
            }
        }
    )*};
}

/// The catalog database of one test. A PostgreSQL database is created for the test and
/// dropped (with `FORCE`) when the guard goes out of scope, even after a failed assertion; a
/// SQLite file lives in the test's directory.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    /// `(server URL, database name)` of a database this guard created and drops.
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A database chosen by the environment: on the server `MILEPOST_TEST_DATABASE_URL`
    /// names, or else a SQLite file `catalog.db` in `dir`.
    pub async fn create(dir: &Path) -> Result<TestDatabase, DbError> {
        match postgres_server_url() {
            Some(server_url) => TestDatabase::on_postgres(&server_url).await,
            None => Ok(TestDatabase {
                url: format!("sqlite://{}", dir.join("catalog.db").display()),
                postgres: None,
            }),
        }
    }

    /// A database on `backend`: a SQLite file in `dir`, or a database of its own on the
    /// PostgreSQL server `MILEPOST_TEST_DATABASE_URL` names; `None` (after printing why) for
    /// PostgreSQL when no server is named.
    pub async fn on_backend(backend: Backend, dir: &Path) -> Option<TestDatabase> {
        match backend {
            Backend::Sqlite => Some(TestDatabase {
                url: format!("sqlite://{}", dir.join("catalog.db").display()),
                postgres: None,
            }),
            Backend::Postgres => {
                let Some(server_url) = postgres_server_url() else {
                    eprintln!("skipped: set {DATABASE_URL_VARIABLE} (e.g. postgres://postgres@127.0.0.1:5432/test) to run against PostgreSQL");
                    return None;
                };
                Some(
                    TestDatabase::on_postgres(&server_url)
                        .await
                        .expect("test database on PostgreSQL"),
                )
            }
        }
    }

    /// A fresh database of its own on the PostgreSQL server `server_url`.
    pub async fn on_postgres(server_url: &str) -> Result<TestDatabase, DbError> {
        let name = format!("milepost_t_{:016x}", rand::rng().random::<u64>());
        let admin = connect(server_url).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await?;
        Ok(TestDatabase {
            url: replace_database(server_url, &name),
            postgres: Some((server_url.to_owned(), name)),
        })
    }

    /// The database's URL, for `milepost_schema::connect` or `[database] url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects to the database and brings its schema up to date.
    pub async fn connect_migrated(&self) -> sea_orm::DatabaseConnection {
        let db = connect(&self.url).await.expect("test database connects");
        milepost_schema::migrate(&db)
            .await
            .expect("test database migrates");
        db
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.postgres {
            None => "sqlite",
            Some(_) => "postgres",
        }
    }
}

async fn drop_database(server_url: &str, name: &str) -> Result<(), DbError> {
    let admin = connect(server_url).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin.close().await?;
    Ok(())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    if let Err(err) = runtime.block_on(drop_database(&server_url, &name)) {
                        eprintln!("warning: could not drop test database {name}: {err}");
                    }
                }
                Err(err) => eprintln!("warning: could not drop test database {name}: {err}"),
            }
        });
        if cleanup.join().is_err() {
            eprintln!("warning: dropping a test database panicked");
        }
    }
}

/// Points a PostgreSQL URL at another database on the same server.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| i + authority_start);
    let root = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}
