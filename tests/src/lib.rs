#![doc = include_str!("../README.md")]

pub mod browser;
pub mod garage;
pub mod search_mix;
pub mod trimlogs;

use std::time::Duration;

use milepost_api::config::{Config, ListenAddr};
use milepost_api::server::{self, AppState, RunningServer};
use milepost_cacher::{S3Store, StaticCredentials, UpstreamSettings};
use milepost_schema::enums::Role;
use rand::Rng;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{json, Value};

pub const DATABASE_URL_VARIABLE: &str = "MILEPOST_TEST_DATABASE_URL";

/// The catalog database of one test.
#[derive(Debug)]
pub enum TestDatabase {
    Sqlite,
    Postgres { server_url: String, name: String },
}

impl TestDatabase {
    /// Creates a database for one test and returns it with its URL.
    pub async fn create(dir: &std::path::Path) -> anyhow::Result<(TestDatabase, String)> {
        match std::env::var(DATABASE_URL_VARIABLE) {
            Ok(server_url) if !server_url.is_empty() => {
                let name = format!("milepost_t_{:016x}", rand::rng().random::<u64>());
                let admin = Database::connect(&server_url).await?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                admin.close().await?;
                let url = replace_database(&server_url, &name);
                Ok((TestDatabase::Postgres { server_url, name }, url))
            }
            _ => Ok((
                TestDatabase::Sqlite,
                format!("sqlite://{}", dir.join("catalog.db").display()),
            )),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            TestDatabase::Sqlite => "sqlite",
            TestDatabase::Postgres { .. } => "postgres",
        }
    }

    async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
        let admin = Database::connect(server_url).await?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin.close().await?;
        Ok(())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { server_url, name } = self {
            let (server_url, name) = (server_url.clone(), name.clone());
            // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
            // thread with its own runtime does the cleanup.
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    if let Err(err) =
                        runtime.block_on(TestDatabase::drop_database(&server_url, &name))
                    {
                        eprintln!("warning: could not drop test database {name}: {err}");
                    }
                }
            });
            let _ = cleanup.join();
        }
    }
}

/// Points a PostgreSQL URL at another database on the same server.
fn replace_database(url: &str, database: &str) -> String {
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

/// A real S3 server on loopback (s3s-fs over a temporary directory) with one bucket, and a
/// store that talks to it directly (not through any office): the upstream of a test.
#[derive(Debug)]
pub struct LoopbackUpstream {
    pub s3: milepost_cacher::loopback::LoopbackS3,
    /// The upstream itself, for seeding and for checking what reached S3.
    pub store: std::sync::Arc<dyn milepost_cacher::ObjectStore>,
    _dir: tempfile::TempDir,
}

impl LoopbackUpstream {
    /// Starts the server and creates `bucket`.
    pub async fn start(bucket: &str) -> LoopbackUpstream {
        let dir = tempfile::tempdir().expect("temporary directory");
        let s3 = milepost_cacher::loopback::LoopbackS3::start(
            dir.path(),
            ([127, 0, 0, 1], 0).into(),
            "test-key",
            "test-secret",
        )
        .await
        .expect("loopback s3");
        let store = milepost_cacher::build_store(
            &s3.settings(),
            std::sync::Arc::new(milepost_cacher::EgressMeter::default()),
        )
        .expect("store");
        store.ensure_bucket(bucket).await.expect("bucket");
        LoopbackUpstream {
            s3,
            store,
            _dir: dir,
        }
    }

    /// Settings for a server (or client) of this upstream.
    pub fn settings(&self) -> UpstreamSettings {
        self.s3.settings()
    }
}

/// Options for [`TestApp`].
#[derive(Debug, Default)]
pub struct TestAppBuilder {
    allow_anonymous_read: bool,
    configure: Option<fn(&mut Config)>,
    upstream: Option<UpstreamSettings>,
    bucket: Option<String>,
}

impl TestAppBuilder {
    pub fn allow_anonymous_read(mut self) -> Self {
        self.allow_anonymous_read = true;
        self
    }

    /// Points the server at an upstream S3 (a [`LoopbackS3`](milepost_cacher::loopback::LoopbackS3)).
    pub fn upstream(mut self, settings: UpstreamSettings, bucket: &str) -> Self {
        self.upstream = Some(settings);
        self.bucket = Some(bucket.to_owned());
        self
    }

    pub fn configure(mut self, change: fn(&mut Config)) -> Self {
        self.configure = Some(change);
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (database, url) = TestDatabase::create(dir.path())
            .await
            .expect("test database (is PostgreSQL running?)");
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.database.url = url;
        config.server.listen = ListenAddr(([127, 0, 0, 1], 0).into());
        config.server.s3_listen = ListenAddr(([127, 0, 0, 1], 0).into());
        config.server.allow_anonymous_read = self.allow_anonymous_read;
        config.catalog.sync_interval = milepost_api::config::Interval(None);
        if let Some(bucket) = self.bucket {
            config.catalog.bucket = bucket;
        }
        if let Some(endpoint) = self.upstream.as_ref().and_then(|u| u.endpoint.clone()) {
            // What the server reports about its upstream (the web catalog's `aws s3`
            // commands) then matches the store it really uses.
            config.upstream.endpoint = endpoint;
            config.upstream.force_path_style = true;
        }
        if let Some(change) = self.configure {
            change(&mut config);
        }
        let upstream = self
            .upstream
            .unwrap_or_else(|| milepost_api::server::upstream_settings(&config));
        let state = AppState::open_with_upstream(config, upstream)
            .await
            .expect("application state opens");
        let server = server::start_with_state(state)
            .await
            .expect("server starts");
        let base_url = format!("http://{}", server.addr);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        TestApp {
            base_url,
            client,
            server: Some(server),
            _database: database,
            _dir: dir,
        }
    }
}

/// A running `milepost` server with its own database and data directory.
#[derive(Debug)]
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    server: Option<RunningServer>,
    // Dropped after the server: the database and directory outlive every connection to them.
    _database: TestDatabase,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    pub async fn start() -> TestApp {
        TestApp::builder().start().await
    }

    fn running(&self) -> &RunningServer {
        self.server
            .as_ref()
            .expect("server is running until shutdown")
    }

    /// The server's shared state (catalog, store, egress meter).
    pub fn state(&self) -> &std::sync::Arc<AppState> {
        &self.running().state
    }

    /// The server's own database connection, for seeding what other issues' components
    /// (sync, cacher) would write.
    pub fn db(&self) -> &DatabaseConnection {
        &self.running().state.db
    }

    pub fn backend(&self) -> &'static str {
        self._database.backend_name()
    }

    /// Creates a token with `role` and returns its secret.
    pub async fn token(&self, name: &str, role: Role) -> String {
        milepost_api::auth::create_token(self.db(), name, role)
            .await
            .expect("token created")
    }

    /// The S3 gateway's endpoint, `http://127.0.0.1:<port>`.
    pub fn s3_endpoint(&self) -> String {
        format!("http://{}", self.running().s3_addr)
    }

    /// Creates a token with S3 credentials; returns the bearer secret and the key pair.
    pub async fn s3_token(&self, name: &str, role: Role) -> (String, StaticCredentials) {
        let (secret, s3) = milepost_api::auth::create_s3_token(self.db(), name, role)
            .await
            .expect("s3 token created");
        (
            secret,
            StaticCredentials::new(s3.access_key_id, s3.secret_access_key),
        )
    }

    /// An S3 client of the gateway with `credentials` (path-style, region us-east-1).
    pub fn s3_client(&self, credentials: StaticCredentials) -> S3Store {
        S3Store::new(&UpstreamSettings {
            endpoint: Some(self.s3_endpoint()),
            region: "us-east-1".to_owned(),
            force_path_style: true,
            credentials: Some(credentials),
            ..UpstreamSettings::default()
        })
        .expect("gateway client")
    }

    /// Runs `syncCatalog` as `admin` and asserts that it reported no errors: the start of
    /// every test world seeded into an upstream bucket.
    pub async fn sync_cleanly(&self, admin: &str) {
        let (_, body) = self
            .graphql(
                Some(admin),
                "mutation { syncCatalog { errors } }",
                serde_json::json!({}),
            )
            .await;
        assert_eq!(
            body["data"]["syncCatalog"]["errors"],
            serde_json::json!([]),
            "{body}"
        );
    }

    /// POSTs a GraphQL request; returns the HTTP status and the JSON body.
    pub async fn graphql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (StatusCode, Value) {
        let body = json!({ "query": query, "variables": variables });
        self.post_raw(token, serde_json::to_vec(&body).expect("json"))
            .await
    }

    /// POSTs raw bytes to `/graphql`.
    pub async fn post_raw(&self, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.base_url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("request sent")
    }

    /// Stops the server gracefully.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

/// POSTs a GraphQL operation to `{url}/graphql` as `token`; the `data`, or an error naming
/// the GraphQL errors. For the benchmarks, which drive `milepost serve` processes.
pub async fn graphql_data(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let body: Value = http
        .post(format!("{url}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?
        .json()
        .await?;
    if let Some(errors) = body.get("errors") {
        anyhow::bail!("GraphQL errors: {errors}");
    }
    Ok(body["data"].clone())
}

/// The `extensions.code` of every error in a GraphQL response.
pub fn error_codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["extensions"]["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The first error message of a GraphQL response, or "" when there is none.
pub fn first_error(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://127.0.0.1:5432/test?sslmode=disable", "x"),
            "postgres://127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "x"), "postgres://h/x");
    }
}
