//! [`TestApp`]: the real `milepost` server of one test, with its own database, data directory
//! and, when asked, its own loopback S3 upstream seeded with the synthetic fleet.

use std::time::Duration;

use milepost_api::config::{Config, ListenAddr};
use milepost_api::server::{self, AppState, RunningServer};
use milepost_indexer::fleet::{Fleet, FleetSpec};
use milepost_schema::enums::Role;
use milepost_store::{S3Store, StaticCredentials, UpstreamSettings};
use reqwest::StatusCode;
use sea_orm::DatabaseConnection;
use serde_json::{json, Value};

use crate::{FaultProxy, LoopbackUpstream, TestDatabase};

/// A change to the server's configuration before it starts.
struct Configure(Box<dyn FnOnce(&mut Config) + Send>);

impl std::fmt::Debug for Configure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Configure(..)")
    }
}

/// Options for [`TestApp`].
#[derive(Debug, Default)]
pub struct TestAppBuilder {
    allow_anonymous_read: bool,
    configure: Option<Configure>,
    upstream: Option<UpstreamSettings>,
    bucket: Option<String>,
    loopback: Option<String>,
    fleet: Option<FleetSpec>,
    fault_proxy: bool,
    started: Option<LoopbackUpstream>,
}

impl TestAppBuilder {
    pub fn allow_anonymous_read(mut self) -> Self {
        self.allow_anonymous_read = true;
        self
    }

    /// Points the server at an upstream S3 (a [`LoopbackS3`](milepost_store::loopback::LoopbackS3)).
    pub fn upstream(mut self, settings: UpstreamSettings, bucket: &str) -> Self {
        self.upstream = Some(settings);
        self.bucket = Some(bucket.to_owned());
        self
    }

    /// Starts a [`LoopbackUpstream`] with `bucket` for this app and points the server at it
    /// (the catalog's bucket too); [`TestApp::upstream`] reaches it.
    pub fn with_loopback_s3(mut self, bucket: &str) -> Self {
        self.loopback = Some(bucket.to_owned());
        self
    }

    /// Hands the app a loopback upstream the test already started and filled (say, with
    /// files of its own); the app owns it from now on and [`TestApp::upstream`] reaches it.
    pub fn with_upstream(mut self, upstream: LoopbackUpstream) -> Self {
        self.loopback = Some(upstream.bucket.clone());
        self.started = Some(upstream);
        self
    }

    /// Seeds the loopback upstream with the synthetic fleet of `spec` before the server
    /// starts (implies [`with_loopback_s3`](Self::with_loopback_s3) with the fleet's bucket
    /// when none was asked for); [`TestApp::fleet`] returns what was generated.
    pub fn seeded(mut self, spec: FleetSpec) -> Self {
        if self.loopback.is_none() {
            self.loopback = Some(spec.bucket.clone());
        }
        self.fleet = Some(spec);
        self
    }

    /// Puts a [`FaultProxy`] between the server and its loopback upstream (implies
    /// [`with_loopback_s3`](Self::with_loopback_s3) of `"fleet"` when none was asked for):
    /// every upstream request of the server passes it and can be failed or counted through
    /// [`TestApp::fault_proxy`]. Seeding does not pass it.
    pub fn with_fault_proxy(mut self) -> Self {
        if self.loopback.is_none() {
            self.loopback = Some("fleet".to_owned());
        }
        self.fault_proxy = true;
        self
    }

    /// Changes the configuration before the server starts (after the builder's own settings).
    pub fn configure(mut self, change: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.configure = Some(Configure(Box::new(change)));
        self
    }

    pub async fn start(mut self) -> TestApp {
        let mut loopback = None;
        let mut fleet = None;
        let mut fault_proxy = None;
        if let Some(bucket) = self.loopback.take() {
            let upstream = match self.started.take() {
                Some(upstream) => upstream,
                None => LoopbackUpstream::start(&bucket).await,
            };
            if let Some(spec) = self.fleet.take() {
                fleet = Some(upstream.seed(&spec).await);
            }
            let mut settings = upstream.settings();
            if self.fault_proxy {
                let proxy = FaultProxy::start(&upstream.endpoint())
                    .await
                    .expect("fault proxy");
                settings.endpoint = Some(proxy.endpoint());
                fault_proxy = Some(proxy);
            }
            self.upstream = Some(settings);
            self.bucket = Some(bucket);
            loopback = Some(upstream);
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = TestDatabase::create(dir.path())
            .await
            .expect("test database (is PostgreSQL running?)");
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.database.url = database.url().to_owned();
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
            (change.0)(&mut config);
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
            database,
            fault_proxy,
            loopback,
            fleet,
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
    // Dropped after the server: the database, the upstream and the directory outlive every
    // connection to them.
    database: TestDatabase,
    fault_proxy: Option<FaultProxy>,
    loopback: Option<LoopbackUpstream>,
    fleet: Option<Fleet>,
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
        self.database.backend_name()
    }

    /// The loopback upstream started by [`TestAppBuilder::with_loopback_s3`].
    pub fn upstream(&self) -> &LoopbackUpstream {
        self.loopback
            .as_ref()
            .expect("the app was built with_loopback_s3")
    }

    /// The proxy put in front of the upstream by [`TestAppBuilder::with_fault_proxy`].
    pub fn fault_proxy(&self) -> &FaultProxy {
        self.fault_proxy
            .as_ref()
            .expect("the app was built with_fault_proxy")
    }

    /// The fleet seeded by [`TestAppBuilder::seeded`].
    pub fn fleet(&self) -> &Fleet {
        self.fleet.as_ref().expect("the app was built seeded")
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

/// Asserts that a GraphQL response failed with exactly one error of `code` whose message
/// contains `needle` (case-insensitive) and carries no data.
pub fn assert_refused(body: &Value, code: &str, needle: &str) {
    assert_eq!(error_codes(body), vec![code], "{body}");
    assert!(
        first_error(body)
            .to_lowercase()
            .contains(&needle.to_lowercase()),
        "{needle:?} in {body}"
    );
    assert!(body["data"].is_null(), "{body}");
}

/// The first error message of a GraphQL response, or "" when there is none.
pub fn first_error(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
