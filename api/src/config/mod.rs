//! Typed configuration: `milepost.toml`, then `MILEPOST_<SECTION>_<KEY>` environment overrides
//! (top-level keys: `MILEPOST_<KEY>`). Every key has a documented default, so no file at all runs
//! on SQLite under `./milepost-data`. Loading is a pure function of the file text and an
//! environment map, so it is tested without touching the process environment.
//!
//! (Over 600 lines: every typed config section with its documented default and its validation, and the tests of the environment overrides.)

mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use milepost_cacher::transfer_policy::{
    DownloadSchedule, PolicyError, PolicyErrorKind, TransferPolicy,
};
use serde::{Deserialize, Serialize};

pub use units::{ByteSize, DurationSetting, Interval, ListenAddr};

/// Environment variables that share the `MILEPOST_` prefix but are not configuration keys.
const NON_CONFIG_VARIABLES: &[&str] = &[
    "MILEPOST_TOKEN",
    "MILEPOST_SERVER",
    "MILEPOST_LOG",
    "MILEPOST_LOG_FORMAT",
];
const TEST_VARIABLE_PREFIX: &str = "MILEPOST_TEST_";

/// The whole configuration of one office deployment.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where SQLite, the cache and the search index live by default.
    pub data_dir: PathBuf,
    /// This deployment's name, recorded in the egress ledger and shown in `cacheStats`.
    pub office: String,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    pub catalog: CatalogConfig,
    pub cache: CacheConfig,
    pub transfer: TransferConfig,
    pub ui: UiConfig,
    pub cluster: ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./milepost-data"),
            office: "default".to_owned(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            upstream: UpstreamConfig::default(),
            catalog: CatalogConfig::default(),
            cache: CacheConfig::default(),
            transfer: TransferConfig::default(),
            ui: UiConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// GraphQL, `/data`, the web catalog, `/healthz` and `/metrics`.
    pub listen: ListenAddr,
    /// The S3-compatible gateway.
    pub s3_listen: ListenAddr,
    /// Buckets the gateway serves; empty means the catalog bucket alone. Requests naming any
    /// other bucket get `NoSuchBucket`.
    pub s3_buckets: Vec<String>,
    /// Base domain for virtual-host-style requests (`<bucket>.<domain>`); empty: path-style
    /// only.
    pub s3_domain: String,
    /// Lets clients without a token run queries (never mutations).
    pub allow_anonymous_read: bool,
    /// Deepest GraphQL selection accepted; deeper queries are refused before they run.
    pub max_query_depth: usize,
    /// Highest GraphQL complexity (roughly, fields resolved) accepted.
    pub max_query_complexity: usize,
    /// Largest request body accepted on `/graphql`.
    pub max_body_size: ByteSize,
    /// How long a request may take before it is answered with 408.
    pub request_timeout: DurationSetting,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: DurationSetting,
    /// How long a client of the S3 gateway may take to send a request's headers, counted
    /// from when it connects or its previous response ends: a connection that stays silent
    /// or idle that long is closed. A request whose headers have arrived is never cut by it.
    pub s3_header_read_timeout: DurationSetting,
    /// How long an unfinished multipart upload of the S3 gateway is kept after it was
    /// started; older ones are removed, as AbortMultipartUpload would, at start-up and then
    /// periodically.
    pub s3_multipart_expiry: DurationSetting,
    /// Web origins whose pages may read `/data` (CORS), such as browser-based viewers; an
    /// entry ending in `:*` allows any port. Default: the Foxglove and Lichtblick web apps
    /// and pages served from this machine.
    pub cors_origins: Vec<String>,
    /// The base URL clients reach this server at, for links the server hands out (presigned
    /// `/data` URLs); empty: `http://` + `listen`.
    pub public_url: String,
}

/// The default of `server.cors_origins`.
pub const DEFAULT_CORS_ORIGINS: [&str; 4] = [
    "https://app.foxglove.dev",
    "https://lichtblick-suite.github.io",
    "http://localhost:*",
    "http://127.0.0.1:*",
];

impl ServerConfig {
    /// Whether a page from `origin` may read `/data`.
    pub fn cors_allows(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|allowed| match allowed.strip_suffix(":*") {
                Some(host) => {
                    origin == host
                        || origin.strip_prefix(host).is_some_and(|rest| {
                            rest.strip_prefix(':').is_some_and(|port| {
                                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                            })
                        })
                }
                None => origin == allowed,
            })
    }

    /// The base URL of links this server hands out.
    pub fn public_base(&self) -> String {
        if self.public_url.trim().is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_url.trim().trim_end_matches('/').to_owned()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ListenAddr(([127, 0, 0, 1], 8080).into()),
            s3_listen: ListenAddr(([127, 0, 0, 1], 9100).into()),
            s3_buckets: Vec::new(),
            s3_domain: String::new(),
            allow_anonymous_read: false,
            max_query_depth: 12,
            max_query_complexity: 5_000,
            max_body_size: ByteSize(4 << 20),
            request_timeout: DurationSetting(std::time::Duration::from_secs(60)),
            shutdown_grace: DurationSetting(std::time::Duration::from_secs(20)),
            s3_header_read_timeout: DurationSetting(std::time::Duration::from_secs(30)),
            s3_multipart_expiry: DurationSetting(std::time::Duration::from_secs(7 * 86_400)),
            cors_origins: DEFAULT_CORS_ORIGINS.map(str::to_owned).to_vec(),
            public_url: String::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; empty means `sqlite://<data_dir>/catalog.db`.
    pub url: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Custom S3 endpoint for on-prem and test servers; empty means AWS.
    pub endpoint: String,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub force_path_style: bool,
    /// How long S3's answer about which version of an object outside the catalog is current
    /// is reused by later reads of it (`0s`: ask on every read). A version changed in S3
    /// behind the office's back is served at most this long after the change, always as
    /// itself; the office's own writes are seen at once.
    pub version_ttl: DurationSetting,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            endpoint: String::new(),
            region: "us-east-1".to_owned(),
            force_path_style: false,
            version_ttl: DurationSetting(milepost_cacher::objects::DEFAULT_VERSION_WINDOW),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// The bucket the catalog is synced from.
    pub bucket: String,
    pub drives_prefix: String,
    pub runs_prefix: String,
    /// How often the catalog is rescanned; `off` leaves it to `syncCatalog` and `milepost sync`.
    pub sync_interval: Interval,
    /// The SQS queue the catalog bucket's event notifications arrive on (`sqs://QUEUE_URL`),
    /// applied within seconds; empty: none, the periodic listing alone keeps the catalog.
    pub events: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            bucket: "fleet".to_owned(),
            drives_prefix: "drives/".to_owned(),
            runs_prefix: "runs/".to_owned(),
            sync_interval: Interval(Some(std::time::Duration::from_secs(300))),
            events: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Disk the office cache may use.
    pub capacity: ByteSize,
    /// Size of each ranged GET when materializing.
    pub part_size: ByteSize,
    /// Ranged GETs in flight at once, across all objects.
    pub concurrency: usize,
    /// Price of one GiB of egress, for `egressSavedUsd`.
    pub egress_usd_per_gib: f64,
    /// How often reservations past their `expiresAt` are expired (unpinned, views removed).
    pub expiry_check: DurationSetting,
    /// How long raw egress ledger rows (one per object read) are kept, or `off` to keep them
    /// all; the per-minute buckets and the totals that `cacheStats` and `cacheHistory` read
    /// are kept whatever this says.
    pub ledger_raw_retention: Interval,
    /// When a downloaded object's bytes must be on disk before it counts as cached.
    pub durability: CacheDurability,
    /// Where the cache keeps installed objects: `disk` (under the data directory) or `s3`
    /// (the office tier, `tier_*` below: an S3-compatible cluster the office runs, which
    /// replicates them; staging stays on local disk and reservations get no view directory).
    pub tier: CacheTier,
    /// The office tier's S3 endpoints, comma-separated (`http://garage-1:3900,http://garage-2:3900`):
    /// calls fail over to the next when one is unreachable.
    pub tier_endpoint: String,
    pub tier_region: String,
    pub tier_bucket: String,
    /// Prefix of the cache's keys in the tier bucket: empty, or ending in `/`.
    pub tier_prefix: String,
    pub tier_force_path_style: bool,
    /// The tier's key pair (better given as `MILEPOST_CACHE_TIER_ACCESS_KEY_ID` and
    /// `MILEPOST_CACHE_TIER_SECRET_ACCESS_KEY`); empty: the standard AWS chain.
    pub tier_access_key_id: String,
    pub tier_secret_access_key: String,
}

/// `cache.tier`: `disk` (the default) or `s3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheTier {
    #[default]
    Disk,
    S3,
}

/// `cache.durability`: `deferred` (installed at once, fsynced in the background; after an
/// unclean reboot the entries that may not have reached the disk are fetched again) or
/// `immediate` (fsynced before it counts as cached).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheDurability {
    #[default]
    Deferred,
    Immediate,
}

impl From<CacheDurability> for milepost_cacher::Durability {
    fn from(value: CacheDurability) -> Self {
        match value {
            CacheDurability::Deferred => milepost_cacher::Durability::Deferred,
            CacheDurability::Immediate => milepost_cacher::Durability::Immediate,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: ByteSize(100 << 30),
            part_size: ByteSize(8 << 20),
            concurrency: 16,
            egress_usd_per_gib: 0.09,
            expiry_check: DurationSetting(std::time::Duration::from_secs(30)),
            ledger_raw_retention: Interval(Some(std::time::Duration::from_secs(30 * 86_400))),
            durability: CacheDurability::Deferred,
            tier: CacheTier::Disk,
            tier_endpoint: String::new(),
            tier_region: "us-east-1".to_owned(),
            tier_bucket: String::new(),
            tier_prefix: String::new(),
            tier_force_path_style: true,
            tier_access_key_id: String::new(),
            tier_secret_access_key: String::new(),
        }
    }
}

/// `[cluster]`: several `milepost serve` nodes in one office, sharing the PostgreSQL
/// database and the office tier (`cache.tier = "s3"`); see `docs/ARCHITECTURE.md`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Run as one node of an office cluster.
    pub enabled: bool,
    /// This node's name: unique in the office, the same across its restarts (so that it takes
    /// its own interrupted work back at once). Empty: `<host name>:<HTTP port>`.
    pub node_id: String,
    /// How long a node's work (uploads, reservations) stays its own after its last
    /// heartbeat; heartbeats come every third of it. A killed node's work is taken over
    /// about this long after it died.
    pub lease: DurationSetting,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            lease: DurationSetting(std::time::Duration::from_secs(15)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Upload bandwidth timetable, e.g. `Mon-Fri 09:00-18:00 20MiB; * off` (off = unlimited).
    pub upload_schedule: String,
    /// Key globs in priority order: the first matching pattern uploads first.
    pub priorities: Vec<String>,
    /// Download windows for reservations with a deadline (`readyBy`), in the upload
    /// schedule's grammar: a time some rule matches is open at its rate (off = full speed),
    /// any other time is closed, e.g. `Mon-Fri 20:00-06:00 50MiB; Sat,Sun off`.
    pub download_schedule: String,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            upload_schedule: "* off".to_owned(),
            priorities: vec!["*.json".to_owned(), "*.mcap".to_owned(), "*".to_owned()],
            download_schedule: "* off".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Viewers the web catalog links MCAP logs to, by the name shown on the link: a URL
    /// template where `{url}` becomes the (percent-encoded) presigned `/data` URL of the log.
    pub viewer_urls: BTreeMap<String, String>,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            viewer_urls: [
                (
                    "Foxglove",
                    "https://app.foxglove.dev/?ds=remote-file&ds.url={url}",
                ),
                (
                    "Lichtblick",
                    "https://lichtblick-suite.github.io/lichtblick/?ds=remote-file&ds.url={url}",
                ),
            ]
            .into_iter()
            .map(|(name, url)| (name.to_owned(), url.to_owned()))
            .collect(),
        }
    }
}

/// A configuration that cannot be used; the message names the key, the value and what was
/// expected, and the program refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid config key `{key}`{origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    #[error("unknown environment variable {variable}: it names no config key")]
    UnknownVariable { variable: String },
}

impl Config {
    /// Reads `path` (when given) and applies the `MILEPOST_*` overrides found in `env`.
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let (text, file) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (text, Some(path))
            }
            None => (String::new(), None),
        };
        Config::from_parts(&text, file, env)
    }

    /// Parses config text plus environment overrides. `file` only labels error messages.
    pub fn from_parts(
        text: &str,
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|err: toml::de::Error| ConfigError::Syntax {
                    path: file.map(Path::to_owned).unwrap_or_default(),
                    message: err.message().to_owned(),
                })?;
        let origins = apply_env_overrides(&mut table, env)?;
        let deserializer = toml::Value::Table(table);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let origin = describe_origin(&origins, &key, file);
            ConfigError::Invalid {
                key,
                origin,
                message: err.into_inner().to_string(),
            }
        })?;
        config.validate(&origins, file)?;
        Ok(config)
    }

    /// The database URL, resolving the empty default to SQLite under `data_dir`.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("catalog.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// The `[transfer]` policy, parsed.
    pub fn transfer_policy(&self) -> Result<TransferPolicy, PolicyError> {
        TransferPolicy::parse(&self.transfer.upload_schedule, &self.transfer.priorities)
    }

    /// The `[transfer] download_schedule`, parsed.
    pub fn download_schedule(&self) -> Result<DownloadSchedule, PolicyError> {
        DownloadSchedule::parse(&self.transfer.download_schedule)
    }

    /// The buckets the office serves, through every door (`/data`, the S3 gateway, datasets,
    /// the web catalog): the catalog bucket, then `server.s3_buckets`.
    pub fn served_buckets(&self) -> milepost_cacher::objects::ServedBuckets {
        let mut buckets = vec![self.catalog.bucket.clone()];
        for bucket in &self.server.s3_buckets {
            if !buckets.contains(bucket) {
                buckets.push(bucket.clone());
            }
        }
        milepost_cacher::objects::ServedBuckets::new(buckets)
    }

    fn validate(
        &self,
        origins: &BTreeMap<String, String>,
        file: Option<&Path>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, expected: &str| ConfigError::Invalid {
            key: key.to_owned(),
            origin: describe_origin(origins, key, file),
            message: format!("expected {expected}, got {value}"),
        };
        if !self.catalog.events.is_empty() {
            if let Err(err) = milepost_events::parse_events_url(&self.catalog.events) {
                return Err(invalid(
                    "catalog.events",
                    format!("{:?} ({err})", self.catalog.events),
                    "empty, or sqs:// followed by the queue URL",
                ));
            }
        }
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(invalid(
                "database.url",
                format!("a URL with scheme {scheme:?}"),
                "a sqlite:// or postgres:// URL",
            ));
        }
        for (name, template) in &self.ui.viewer_urls {
            let usable = !name.trim().is_empty()
                && template.contains("{url}")
                && (template.starts_with("https://") || template.starts_with("http://"));
            if !usable {
                return Err(invalid(
                    "ui.viewer_urls",
                    format!("{name:?} = {template:?}"),
                    "a name and an http(s) URL template containing {url}",
                ));
            }
        }
        if self.cluster.enabled {
            if url.starts_with("sqlite:") {
                return Err(invalid(
                    "database.url",
                    "a SQLite database with cluster.enabled".into(),
                    "a postgres:// URL: the nodes of a cluster share one PostgreSQL database",
                ));
            }
            if self.cache.tier != CacheTier::S3 {
                return Err(invalid(
                    "cache.tier",
                    "\"disk\" with cluster.enabled".into(),
                    "\"s3\": the nodes of a cluster share the office tier",
                ));
            }
            let lease = self.cluster.lease.0;
            if lease < std::time::Duration::from_secs(3)
                || lease > std::time::Duration::from_secs(3600)
            {
                return Err(invalid(
                    "cluster.lease",
                    self.cluster.lease.to_string(),
                    "a duration from 3s to 1h",
                ));
            }
        }
        if self.office.trim().is_empty() {
            return Err(invalid(
                "office",
                "an empty name".into(),
                "a non-empty office name",
            ));
        }
        if self.catalog.bucket.trim().is_empty() {
            return Err(invalid(
                "catalog.bucket",
                "an empty name".into(),
                "a bucket name",
            ));
        }
        if self.cache.concurrency == 0 || self.cache.concurrency > 1024 {
            return Err(invalid(
                "cache.concurrency",
                self.cache.concurrency.to_string(),
                "a number from 1 to 1024",
            ));
        }
        if self.cache.part_size.0 < 64 << 10 || self.cache.part_size.0 > 5 << 30 {
            return Err(invalid(
                "cache.part_size",
                self.cache.part_size.to_string(),
                "a size from 64KiB to 5GiB",
            ));
        }
        if !self.cache.egress_usd_per_gib.is_finite() || self.cache.egress_usd_per_gib < 0.0 {
            return Err(invalid(
                "cache.egress_usd_per_gib",
                self.cache.egress_usd_per_gib.to_string(),
                "a price of zero or more",
            ));
        }
        if self.cache.expiry_check.0.is_zero() {
            return Err(invalid(
                "cache.expiry_check",
                self.cache.expiry_check.to_string(),
                "a duration above zero, e.g. 30s",
            ));
        }
        if let Err(err) = self.download_schedule() {
            return Err(invalid(
                "transfer.download_schedule",
                format!("{:?}", self.transfer.download_schedule),
                &format!(
                    "download windows such as \"Mon-Fri 20:00-06:00 50MiB; Sat,Sun off\" ({err})"
                ),
            ));
        }
        if let Err(err) = self.transfer_policy() {
            return Err(match err.kind() {
                PolicyErrorKind::Schedule => invalid(
                    "transfer.upload_schedule",
                    format!("{:?}", self.transfer.upload_schedule),
                    &format!("a schedule such as \"Mon-Fri 09:00-18:00 20MiB; * off\" ({err})"),
                ),
                PolicyErrorKind::Priorities => invalid(
                    "transfer.priorities",
                    match err.priority_index() {
                        Some(i) => format!("{:?}", self.transfer.priorities[i]),
                        None => format!("{} patterns", self.transfer.priorities.len()),
                    },
                    &format!(
                        "key globs with only * and ? wildcards, e.g. [\"*.json\", \"*\"] ({err})"
                    ),
                ),
            });
        }
        for (key, value) in [
            (
                "server.s3_header_read_timeout",
                self.server.s3_header_read_timeout,
            ),
            (
                "server.s3_multipart_expiry",
                self.server.s3_multipart_expiry,
            ),
        ] {
            if value.0.is_zero() {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "a duration above zero, e.g. 30s or 7d",
                ));
            }
        }
        if self.server.max_query_depth == 0 || self.server.max_query_complexity == 0 {
            return Err(invalid(
                "server.max_query_depth",
                format!(
                    "depth {} / complexity {}",
                    self.server.max_query_depth, self.server.max_query_complexity
                ),
                "limits above zero",
            ));
        }
        Ok(())
    }
}

/// Applies environment overrides onto the parsed file and returns, for each overridden key
/// (`section.key`), the variable it came from.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut origins = BTreeMap::new();
    for (variable, raw) in env {
        let Some(rest) = variable.strip_prefix("MILEPOST_") else {
            continue;
        };
        if NON_CONFIG_VARIABLES.contains(&variable.as_str())
            || variable.starts_with(TEST_VARIABLE_PREFIX)
        {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let (section, key) = match defaults.iter().find_map(|(name, value)| {
            let key = rest.strip_prefix(name.as_str())?.strip_prefix('_')?;
            value
                .as_table()
                .filter(|t| t.contains_key(key))
                .map(|_| (Some(name.clone()), key.to_owned()))
        }) {
            Some(found) => found,
            None if defaults.get(&rest).is_some_and(|v| !v.is_table()) => (None, rest.clone()),
            None => {
                return Err(ConfigError::UnknownVariable {
                    variable: variable.clone(),
                })
            }
        };
        let default_value = match &section {
            Some(section) => defaults.get(section).and_then(|s| s.get(&key)),
            None => defaults.get(&key),
        };
        let value = typed_env_value(raw, default_value);
        let target = match &section {
            Some(section) => table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            None => {
                table.insert(key.clone(), value);
                origins.insert(key, variable.clone());
                continue;
            }
        };
        let Some(target) = target.as_table_mut() else {
            return Err(ConfigError::Invalid {
                key: section.unwrap_or_default(),
                origin: String::new(),
                message: "expected a table".to_owned(),
            });
        };
        target.insert(key.clone(), value);
        origins.insert(
            format!("{}.{key}", section.unwrap_or_default()),
            variable.clone(),
        );
    }
    Ok(origins)
}

/// Environment values are strings; keys whose default is not a string are read as TOML
/// literals (`true`, `16`, `0.09`, `["*.json", "*"]`) so they reach the same typed fields.
fn typed_env_value(raw: &str, default_value: Option<&toml::Value>) -> toml::Value {
    if matches!(default_value, Some(toml::Value::String(_)) | None) {
        return toml::Value::String(raw.to_owned());
    }
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut parsed) => parsed
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn describe_origin(origins: &BTreeMap<String, String>, key: &str, file: Option<&Path>) -> String {
    if let Some(variable) = origins.get(key) {
        format!(" (from {variable})")
    } else if let Some(file) = file {
        format!(" (in {})", file.display())
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cors_origins_match_exactly_or_by_any_port() {
        let server = ServerConfig::default();
        for allowed in [
            "https://app.foxglove.dev",
            "https://lichtblick-suite.github.io",
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://localhost",
        ] {
            assert!(server.cors_allows(allowed), "{allowed}");
        }
        for refused in [
            "https://app.foxglove.dev.evil.example",
            "http://localhost.evil.example",
            "http://localhost:",
            "http://localhost:80x",
            "https://localhost:5173",
            "null",
        ] {
            assert!(!server.cors_allows(refused), "{refused}");
        }
        let config = Config::from_parts(
            "[server]\ncors_origins = [\"https://viewer.office.example\"]\npublic_url = \"https://milepost.office.example/\"",
            None,
            &env(&[]),
        )
        .expect("valid");
        assert!(config.server.cors_allows("https://viewer.office.example"));
        assert!(!config.server.cors_allows("https://app.foxglove.dev"));
        assert_eq!(
            config.server.public_base(),
            "https://milepost.office.example"
        );
    }

    #[test]
    fn catalog_events_must_name_an_sqs_queue() {
        let config = Config::from_parts(
            "[catalog]\nevents = \"sqs://http://127.0.0.1:9324/000000000000/fleet\"",
            None,
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(
            config.catalog.events,
            "sqs://http://127.0.0.1:9324/000000000000/fleet"
        );
        let err = Config::from_parts("[catalog]\nevents = \"kafka://x/y\"", None, &env(&[]))
            .expect_err("not sqs")
            .to_string();
        assert!(
            err.contains("catalog.events") && err.contains("sqs://"),
            "{err}"
        );
    }

    #[test]
    fn ledger_raw_retention_defaults_to_30_days_and_may_be_off() {
        let config = Config::from_parts("", None, &env(&[])).expect("defaults are valid");
        assert_eq!(
            config.cache.ledger_raw_retention.0,
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        let config = Config::from_parts("[cache]\nledger_raw_retention = \"off\"", None, &env(&[]))
            .expect("valid");
        assert_eq!(config.cache.ledger_raw_retention.0, None);
        let err = Config::from_parts("[cache]\nledger_raw_retention = \"soon\"", None, &env(&[]))
            .expect_err("not a duration")
            .to_string();
        assert!(err.contains("cache.ledger_raw_retention"), "{err}");
    }

    #[test]
    fn expiry_check_defaults_to_30s_is_read_and_must_be_positive() {
        let config = Config::from_parts("", None, &env(&[])).expect("defaults are valid");
        assert_eq!(
            config.cache.expiry_check.0,
            std::time::Duration::from_secs(30)
        );
        let config = Config::from_parts("[cache]\nexpiry_check = \"250ms\"", None, &env(&[]))
            .expect("valid");
        assert_eq!(
            config.cache.expiry_check.0,
            std::time::Duration::from_millis(250)
        );
        let err = Config::from_parts("", None, &env(&[("MILEPOST_CACHE_EXPIRY_CHECK", "0s")]))
            .expect_err("zero")
            .to_string();
        assert!(
            err.contains("cache.expiry_check") && err.contains("above zero"),
            "{err}"
        );
    }

    #[test]
    fn gateway_timeouts_have_defaults_are_read_and_must_be_positive() {
        let config = Config::from_parts("", None, &env(&[])).expect("defaults are valid");
        assert_eq!(
            config.server.s3_header_read_timeout.0,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            config.server.s3_multipart_expiry.0,
            std::time::Duration::from_secs(7 * 86_400)
        );
        let config = Config::from_parts(
            "[server]\ns3_header_read_timeout = \"250ms\"",
            None,
            &env(&[("MILEPOST_SERVER_S3_MULTIPART_EXPIRY", "2d")]),
        )
        .expect("valid");
        assert_eq!(
            config.server.s3_header_read_timeout.0,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            config.server.s3_multipart_expiry.0,
            std::time::Duration::from_secs(2 * 86_400)
        );
        for (variable, key) in [
            (
                "MILEPOST_SERVER_S3_HEADER_READ_TIMEOUT",
                "server.s3_header_read_timeout",
            ),
            (
                "MILEPOST_SERVER_S3_MULTIPART_EXPIRY",
                "server.s3_multipart_expiry",
            ),
        ] {
            let err = Config::from_parts("", None, &env(&[(variable, "0s")]))
                .expect_err("zero")
                .to_string();
            assert!(
                err.contains(key) && err.contains(variable) && err.contains("above zero"),
                "{err}"
            );
            let err = Config::from_parts("", None, &env(&[(variable, "a week")]))
                .expect_err("not a duration")
                .to_string();
            assert!(
                err.contains(key) && err.contains("\"a week\"") && err.contains("duration"),
                "{err}"
            );
        }
    }

    #[test]
    fn cache_durability_defaults_to_deferred_and_names_bad_values() {
        let config = Config::from_parts("", None, &env(&[])).expect("defaults are valid");
        assert_eq!(config.cache.durability, CacheDurability::Deferred);
        let config = Config::from_parts("[cache]\ndurability = \"immediate\"", None, &env(&[]))
            .expect("valid");
        assert_eq!(config.cache.durability, CacheDurability::Immediate);
        let config = Config::from_parts(
            "",
            None,
            &env(&[("MILEPOST_CACHE_DURABILITY", "immediate")]),
        )
        .expect("valid");
        assert_eq!(config.cache.durability, CacheDurability::Immediate);
        let err = Config::from_parts("[cache]\ndurability = \"sometimes\"", None, &env(&[]))
            .expect_err("unknown value")
            .to_string();
        assert!(
            err.contains("durability") && err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn no_config_runs_on_sqlite_under_the_data_dir() {
        let config = Config::from_parts("", None, &env(&[])).expect("defaults are valid");
        assert_eq!(config.database_url(), "sqlite://./milepost-data/catalog.db");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.cache.part_size, ByteSize(8 << 20));
        assert!(!config.server.allow_anonymous_read);
    }

    #[test]
    fn file_then_environment() {
        let text = r#"
            office = "gz"
            [cache]
            capacity = "2GiB"
            concurrency = 4
            [transfer]
            priorities = ["*.mcap", "*"]
        "#;
        let config = Config::from_parts(
            text,
            None,
            &env(&[
                ("MILEPOST_CACHE_CONCURRENCY", "8"),
                ("MILEPOST_SERVER_ALLOW_ANONYMOUS_READ", "true"),
                ("MILEPOST_DATA_DIR", "/var/lib/milepost"),
                ("MILEPOST_OFFICE", "2026"),
                ("MILEPOST_CATALOG_SYNC_INTERVAL", "off"),
                ("MILEPOST_TOKEN", "not a config key"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.office, "2026");
        assert_eq!(config.cache.capacity, ByteSize(2 << 30));
        assert_eq!(config.cache.concurrency, 8);
        assert!(config.server.allow_anonymous_read);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/milepost"));
        assert_eq!(config.catalog.sync_interval, Interval(None));
        assert_eq!(config.transfer.priorities, vec!["*.mcap", "*"]);
    }

    #[test]
    fn bad_values_name_key_value_and_expectation() {
        let err = Config::from_parts("", None, &env(&[("MILEPOST_CACHE_CAPACITY", "lots")]))
            .expect_err("not a size")
            .to_string();
        assert!(err.contains("cache.capacity"), "{err}");
        assert!(err.contains("MILEPOST_CACHE_CAPACITY"), "{err}");
        assert!(err.contains("\"lots\""), "{err}");
        assert!(err.contains("expected a size"), "{err}");

        let err = Config::from_parts(
            "[server]\nlisten = \"nowhere\"",
            Some(Path::new("m.toml")),
            &env(&[]),
        )
        .expect_err("bad address")
        .to_string();
        assert!(
            err.contains("server.listen") && err.contains("nowhere") && err.contains("m.toml"),
            "{err}"
        );

        let err = Config::from_parts("[cache]\nconcurrency = 0", None, &env(&[]))
            .expect_err("zero")
            .to_string();
        assert!(
            err.contains("cache.concurrency") && err.contains("1 to 1024"),
            "{err}"
        );

        let err = Config::from_parts("[database]\nurl = \"mysql://x\"", None, &env(&[]))
            .expect_err("mysql")
            .to_string();
        assert!(
            err.contains("database.url") && err.contains("mysql"),
            "{err}"
        );
    }

    #[test]
    fn transfer_policy_is_validated_naming_key_value_and_expectation() {
        let config = Config::from_parts("", None, &env(&[])).expect("defaults are valid");
        let policy = config.transfer_policy().expect("default policy");
        assert_eq!(policy.schedule.to_string(), "* off");
        assert_eq!(policy.priority_of("drives/d/x.mcap"), 1);

        let err = Config::from_parts(
            "",
            None,
            &env(&[(
                "MILEPOST_TRANSFER_UPLOAD_SCHEDULE",
                "Mon-Fri 09:00-18:00 20MiB; Sat 10XB",
            )]),
        )
        .expect_err("bad rate")
        .to_string();
        assert!(
            err.contains("transfer.upload_schedule")
                && err.contains("MILEPOST_TRANSFER_UPLOAD_SCHEDULE")
                && err.contains("rule 2")
                && err.contains("`10XB`")
                && err.contains("expected a schedule")
                && err.contains("got \"Mon-Fri 09:00-18:00 20MiB; Sat 10XB\""),
            "{err}"
        );

        let err = Config::from_parts(
            "[transfer]\npriorities = [\"*.json\", \"*.{mcap,bag}\"]",
            Some(Path::new("m.toml")),
            &env(&[]),
        )
        .expect_err("bad glob")
        .to_string();
        assert!(
            err.contains("transfer.priorities")
                && err.contains("m.toml")
                && err.contains("*.{mcap,bag}")
                && err.contains("priority 1"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_variables_are_refused() {
        let err = Config::from_parts("[cache]\ncapacityy = \"1GiB\"", None, &env(&[]))
            .expect_err("typo")
            .to_string();
        assert!(err.contains("capacityy"), "{err}");
        let err = Config::from_parts("", None, &env(&[("MILEPOST_CACHE_SIZE", "1GiB")]))
            .expect_err("typo")
            .to_string();
        assert!(err.contains("MILEPOST_CACHE_SIZE"), "{err}");
        let err = Config::from_parts("[server", None, &env(&[]))
            .expect_err("syntax")
            .to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }
}
