//! The composition root: [`AppState`], everything the office runs on, opened from the
//! configuration in one place (database, search index, upstream store, cache, write-back,
//! reservations), and the background workers started over it ([`start_workers`]). The HTTP
//! side (`server`) and the handlers only use what is built here.

mod background;

use std::sync::Arc;

use anyhow::Context as _;
use axum::http::HeaderMap;
use sea_orm::DatabaseConnection;

use milepost_cacher::cache::{CacheSettings, OfficeCache};
use milepost_cacher::reservations::{ReservationSettings, Reservations};
use milepost_cacher::transfer_policy::{PolicyHandle, PolicyShaper, UploadLimiter};
use milepost_cacher::writeback::{OfficeStore, WriteBack, WriteBackSettings};
use milepost_cluster::{ClusterNode, ClusterSettings};
use milepost_indexer::catalog::Layout;
use milepost_indexer::search::{SearchErrorKind, SearchIndex};
use milepost_indexer::sync::{SyncOptions, SyncProgress, SyncReport, SyncScope};
use milepost_indexer::Catalog;
use milepost_store::{EgressMeter, ObjectStore, UpstreamSettings};

use crate::auth::Principal;
use crate::config::Config;
use crate::error::ApiResult;
use crate::metrics::Metrics;
use crate::workers::Workers;

pub use background::{start_workers, SYNC_DEBOUNCE};

/// Everything a request handler may need, shared by all of them.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub db: DatabaseConnection,
    pub metrics: Metrics,
    pub layout: Layout,
    /// The catalog database and search index, kept in step.
    pub catalog: Catalog,
    /// The object store as the office sees it: upstream S3 with the office's writes not yet
    /// uploaded laid over it ([`OfficeStore`]); writes through it go to the write-back path.
    /// Every reader uses this one.
    pub store: Arc<dyn ObjectStore>,
    /// The upstream S3 store itself, with retries and egress metering: the cache downloads
    /// and the uploader uploads through it.
    pub upstream: Arc<dyn ObjectStore>,
    /// Office writes on their way to S3: staging, journal, uploader.
    pub write_back: Arc<WriteBack>,
    /// Asks for a targeted catalog sync soon (debounced) of the folders in `sync_pending`:
    /// office writes under the catalog's prefixes ([`AppState::sync_keys_soon`]).
    pub sync_soon: tokio::sync::Notify,
    /// Folders of the catalog bucket written through the office since the last targeted sync.
    pub sync_pending: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub egress: Arc<EgressMeter>,
    /// One sync at a time, whether periodic or asked for.
    pub sync_lock: tokio::sync::Mutex<()>,
    /// How far the running (or the last) sync pass of this node got: `syncStatus`.
    pub sync_progress: Arc<SyncProgress>,
    /// One rewrite at a time of each sidecar `registerDrive`/`registerRun`/`tagScenario` write.
    pub sidecar_locks: crate::records::SidecarLocks,
    /// The office cache: content store, single-flight downloads, views, eviction.
    pub cache: Arc<OfficeCache>,
    pub reservations: Arc<Reservations>,
    /// Recently verified API tokens.
    pub tokens: crate::auth::TokenCache,
    /// The transfer policy in force (`[transfer]` at start, then `setTransferPolicy`).
    pub transfer_policy: Arc<PolicyHandle>,
    /// The office's upload token bucket, following `transfer_policy`; every upload body goes
    /// through it (`Throttled`).
    pub upload_limiter: Arc<UploadLimiter>,
    /// The buckets clients may read and write through this office; any other is not found.
    pub served: milepost_cacher::objects::ServedBuckets,
    /// The office's one object API: `/data` and the S3 gateway are adapters over it.
    pub objects: Arc<milepost_cacher::objects::OfficeObjects>,
    /// The background workers (syncs, reservation expiry): their runner and their states.
    pub workers: Workers,
    /// In an office cluster (`[cluster] enabled`): this node.
    pub cluster: Option<Arc<ClusterNode>>,
    /// The queue of the catalog bucket's S3 events (`catalog.events`), if any.
    pub events: Option<Arc<milepost_events::EventQueue>>,
}

/// The longest the catalog's event queue is long-polled: events arrive at once, and an idle
/// queue costs one request per this long.
const EVENTS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl AppState {
    /// Connects to the catalog database, brings its schema up to date, opens the search index
    /// (rebuilding it from the database when it is missing or unreadable) and builds the
    /// upstream store from `[upstream]` and the standard AWS credential chain.
    pub async fn open(config: Config) -> anyhow::Result<Arc<AppState>> {
        let upstream = upstream_settings(&config);
        AppState::open_with_upstream(config, upstream).await
    }

    /// As [`open`](Self::open), with explicit upstream settings (`milepost demo`, tests).
    pub async fn open_with_upstream(
        mut config: Config,
        upstream: UpstreamSettings,
    ) -> anyhow::Result<Arc<AppState>> {
        // Paths handed to clients (a reservation's localPath) must not depend on the
        // directory the server was started from.
        config.data_dir = std::path::absolute(&config.data_dir)
            .with_context(|| format!("cannot resolve data_dir {}", config.data_dir.display()))?;
        let url = config.database_url();
        let db = milepost_schema::connect(&url)
            .await
            .with_context(|| format!("cannot open the catalog database ({})", redact_url(&url)))?;
        milepost_schema::migrate(&db)
            .await
            .context("cannot migrate the catalog database")?;
        let layout = Layout {
            bucket: config.catalog.bucket.clone(),
            drives_prefix: config.catalog.drives_prefix.clone(),
            runs_prefix: config.catalog.runs_prefix.clone(),
        };
        let (search, rebuild) = open_search_index(&config.data_dir.join("search-index")).await?;
        let catalog = Catalog::new(db.clone(), layout.clone(), search);
        let missed = catalog
            .missed_changes()
            .await
            .context("cannot read the catalog's change feed")?;
        if missed {
            tracing::warn!(
                position = catalog.feed_position(),
                "the search index is older than the catalog's change feed keeps: rebuilding it"
            );
        }
        if rebuild || missed || catalog.search.doc_count() == 0 {
            let documents = catalog
                .reindex()
                .await
                .context("cannot rebuild the search index")?;
            if documents > 0 {
                tracing::info!(documents, "search index rebuilt from the catalog database");
            }
        } else {
            // Changes made while this node was down (by other nodes, or by commands).
            let applied = catalog.catch_up().await.context(
                "cannot bring the search index up to date with the catalog's change feed",
            )?;
            if applied > 0 {
                tracing::info!(
                    applied,
                    "search index caught up with the catalog's change feed"
                );
            }
        }
        let events = if config.catalog.events.is_empty() {
            None
        } else {
            let queue =
                milepost_events::EventQueue::connect(&milepost_events::EventQueueSettings {
                    url: config.catalog.events.clone(),
                    region: upstream.region.clone(),
                    credentials: upstream.credentials.clone(),
                    wait: EVENTS_WAIT,
                })
                .context("cannot set up the catalog's event queue (catalog.events)")?;
            Some(Arc::new(queue))
        };
        let egress = Arc::new(EgressMeter::default());
        let store = milepost_store::build_store(&upstream, egress.clone())
            .context("cannot set up the upstream S3 client ([upstream])")?;
        let mut cache_settings =
            CacheSettings::new(config.data_dir.join("cache"), config.cache.capacity.0);
        cache_settings.part_size = config.cache.part_size.0;
        cache_settings.concurrency = config.cache.concurrency;
        cache_settings.durability = config.cache.durability.into();
        cache_settings.office = config.office.clone();
        let tier = tier_settings(&config)?;
        let cluster = join_cluster(&config, &db, &url).await?;
        let cache = match (&cluster, tier) {
            (Some(node), Some(tier)) => {
                OfficeCache::open_cluster(
                    cache_settings,
                    db.clone(),
                    store.clone(),
                    tier,
                    Arc::clone(node),
                )
                .await
            }
            (Some(_), None) => anyhow::bail!("cluster.enabled needs cache.tier = \"s3\""),
            (None, tier) => {
                OfficeCache::open_with(cache_settings, db.clone(), store.clone(), tier).await
            }
        }
        .context("cannot open the office cache")?;
        // Validated with the rest of the config; checked again for configs built in code.
        let policy = config
            .transfer_policy()
            .context("invalid [transfer] policy (transfer.upload_schedule, transfer.priorities)")?;
        let transfer_policy = PolicyHandle::new(policy);
        let upload_limiter = UploadLimiter::new(transfer_policy.clone());
        let write_back = WriteBack::open(
            db.clone(),
            cache.clone(),
            store.clone(),
            WriteBackSettings {
                multipart_expiry: config.server.s3_multipart_expiry.0,
                cluster: cluster.clone(),
                ..WriteBackSettings::default()
            },
            PolicyShaper::new(upload_limiter.clone()),
        )
        .await
        .context("cannot open the write-back journal")?;
        let upstream = store;
        let office_store = Arc::new(OfficeStore::new(upstream.clone(), write_back.clone()));
        let store: Arc<dyn ObjectStore> = office_store.clone();
        let reservation_settings = ReservationSettings {
            expiry_check: config.cache.expiry_check.0,
            // More objects in flight than ranged GETs may be: an object holds no GET permit
            // while it is created, hashed and fsynced, so with small objects the extra ones
            // keep every permit busy; large objects still share the one global limit.
            concurrency_objects: config.cache.concurrency.saturating_mul(4),
            download_schedule: config
                .download_schedule()
                .context("invalid [transfer] download_schedule")?,
            ..ReservationSettings::default()
        };
        let reservations = match &cluster {
            Some(node) => Reservations::new_in_cluster(
                db.clone(),
                cache.clone(),
                reservation_settings,
                Arc::clone(node),
            ),
            None => Reservations::new(db.clone(), cache.clone(), reservation_settings),
        };
        let served = config.served_buckets();
        let objects = Arc::new(
            milepost_cacher::objects::OfficeObjects::new(
                office_store,
                served.clone(),
                Some(db.clone()),
            )
            .with_version_window(config.upstream.version_ttl.0),
        );
        Ok(Arc::new(AppState {
            served,
            objects,
            config,
            db,
            metrics: Metrics::default(),
            layout,
            catalog,
            store,
            upstream,
            write_back,
            sync_soon: tokio::sync::Notify::new(),
            sync_pending: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            egress,
            sync_lock: tokio::sync::Mutex::new(()),
            sync_progress: Arc::new(SyncProgress::new()),
            sidecar_locks: crate::records::SidecarLocks::default(),
            cache,
            reservations,
            tokens: crate::auth::TokenCache::default(),
            transfer_policy,
            upload_limiter,
            workers: Workers::default(),
            cluster,
            events,
        }))
    }

    /// Resolves the caller of a request from its `Authorization` header (see
    /// [`crate::auth::authenticate_headers`]).
    pub async fn authenticate(&self, headers: &HeaderMap) -> ApiResult<Principal> {
        crate::auth::authenticate_headers(
            &self.tokens,
            &self.db,
            self.config.server.allow_anonymous_read,
            headers,
        )
        .await
    }

    /// The caller of a `/data` read: a presigned URL's proof, or the request's headers.
    pub async fn authenticate_data_read(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        bucket: &str,
        key: &str,
    ) -> ApiResult<Principal> {
        crate::auth::authenticate_data_read(
            &self.tokens,
            &self.db,
            self.config.server.allow_anonymous_read,
            headers,
            query,
            bucket,
            key,
        )
        .await
    }

    /// Revokes a token; through this process it stops working on the next request.
    pub async fn revoke_token(&self, name: &str) -> crate::error::ApiResult<()> {
        crate::auth::revoke_token(&self.db, name).await?;
        self.tokens.clear();
        Ok(())
    }

    pub fn sync_options(&self) -> SyncOptions {
        SyncOptions {
            bucket: self.config.catalog.bucket.clone(),
            drives_prefix: self.config.catalog.drives_prefix.clone(),
            runs_prefix: self.config.catalog.runs_prefix.clone(),
            office: self.config.office.clone(),
            // The office's writes and downloads are read from the cache: no egress.
            cache: Some(self.cache.clone()),
            scope: SyncScope::Whole,
            progress: self.sync_progress.clone(),
        }
    }

    /// Asks for a targeted sync of the folders holding `keys` of the catalog bucket, soon
    /// (the `sync_when_asked` worker, once writes pause).
    pub fn sync_keys_soon<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        {
            let mut pending = self
                .sync_pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.extend(keys.into_iter().map(folder_of));
        }
        self.sync_soon.notify_one();
    }

    /// One catalog sync pass, serialized with any other (in an office cluster, with any other
    /// node's too: one node at a time syncs the office's catalog).
    pub async fn sync_catalog(&self) -> Result<SyncReport, milepost_indexer::sync::SyncError> {
        self.sync(SyncScope::Whole).await
    }

    /// A sync pass over `scope` (the whole catalog, or some prefixes of it), serialized as
    /// [`sync_catalog`](Self::sync_catalog) is.
    pub async fn sync(
        &self,
        scope: SyncScope,
    ) -> Result<SyncReport, milepost_indexer::sync::SyncError> {
        let _one_at_a_time = self.sync_lock.lock().await;
        let claim = match &self.cluster {
            Some(node) => match node.claim("catalog-sync").await {
                Ok(claim) => Some(claim),
                Err(err) => {
                    // A sync is idempotent: two at once only waste work.
                    tracing::warn!(error = %err, "cannot claim the office's catalog sync; syncing anyway");
                    None
                }
            },
            None => None,
        };
        let options = SyncOptions {
            scope,
            ..self.sync_options()
        };
        let report = milepost_indexer::sync::sync(&self.catalog, &self.store, &options).await;
        if let Some(claim) = claim {
            claim.release().await;
        }
        report
    }
}

/// Joins the office cluster when `[cluster] enabled` (PostgreSQL and the office tier were
/// checked with the config): this node's row and heartbeat.
async fn join_cluster(
    config: &Config,
    db: &DatabaseConnection,
    url: &str,
) -> anyhow::Result<Option<Arc<ClusterNode>>> {
    if !config.cluster.enabled {
        return Ok(None);
    }
    let node_id = match config.cluster.node_id.trim() {
        "" => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_default();
            let host = if host.is_empty() {
                "milepost".to_owned()
            } else {
                host
            };
            format!("{host}:{}", config.server.listen.0.port())
        }
        id => id.to_owned(),
    };
    let node = ClusterNode::join(
        db.clone(),
        url,
        ClusterSettings {
            node_id,
            address: config.server.listen.0.to_string(),
            lease: config.cluster.lease.0,
        },
    )
    .await
    .with_context(|| format!("cannot join the office cluster ({})", redact_url(url)))?;
    Ok(Some(node))
}

/// `[upstream]` as the S3 client wants it; credentials come from the standard AWS chain.
pub fn upstream_settings(config: &Config) -> UpstreamSettings {
    let endpoint = config.upstream.endpoint.trim();
    UpstreamSettings {
        endpoint: (!endpoint.is_empty()).then(|| endpoint.to_owned()),
        region: config.upstream.region.clone(),
        force_path_style: config.upstream.force_path_style,
        ..UpstreamSettings::default()
    }
}

/// `[cache] tier = "s3"` as the cache wants it: a store of its own for the office tier
/// (retried like the upstream's, metered apart so that tier traffic never counts as egress).
/// `None` for the default disk tier.
pub fn tier_settings(
    config: &Config,
) -> anyhow::Result<Option<milepost_cacher::cache::TierSettings>> {
    use crate::config::CacheTier;
    let cache = &config.cache;
    if cache.tier == CacheTier::Disk {
        return Ok(None);
    }
    let endpoints: Vec<&str> = cache
        .tier_endpoint
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .collect();
    if endpoints.is_empty() || cache.tier_bucket.trim().is_empty() {
        anyhow::bail!("cache.tier = \"s3\" needs cache.tier_endpoint and cache.tier_bucket");
    }
    let credentials = match (
        cache.tier_access_key_id.is_empty(),
        cache.tier_secret_access_key.is_empty(),
    ) {
        (true, true) => None,
        (false, false) => Some(milepost_store::StaticCredentials::new(
            cache.tier_access_key_id.clone(),
            cache.tier_secret_access_key.clone(),
        )),
        _ => anyhow::bail!(
            "cache.tier_access_key_id and cache.tier_secret_access_key go together: give both or neither"
        ),
    };
    // Several endpoints (the nodes of the tier's cluster): a call fails over to the next
    // when one is unreachable.
    let settings: Vec<UpstreamSettings> = endpoints
        .iter()
        .map(|endpoint| UpstreamSettings {
            endpoint: Some((*endpoint).to_owned()),
            region: cache.tier_region.clone(),
            force_path_style: cache.tier_force_path_style,
            credentials: credentials.clone(),
            ..UpstreamSettings::default()
        })
        .collect();
    let store = milepost_store::build_failover_store(&settings, Arc::new(EgressMeter::default()))
        .context("cannot set up the office tier's S3 client ([cache] tier_*)")?;
    Ok(Some(milepost_cacher::cache::TierSettings {
        store,
        bucket: cache.tier_bucket.clone(),
        prefix: cache.tier_prefix.clone(),
        part_size: milepost_store::DEFAULT_PART_SIZE,
    }))
}

/// Opens the search index under the data directory. An index tantivy cannot read (another
/// version's schema, a damaged file) is moved aside and rebuilt: it is derived data.
async fn open_search_index(dir: &std::path::Path) -> anyhow::Result<(Arc<SearchIndex>, bool)> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        match SearchIndex::open(&dir) {
            Ok(index) => Ok((Arc::new(index), false)),
            Err(err) if err.kind() == SearchErrorKind::Corrupt => {
                tracing::warn!(error = %err, "search index unreadable; rebuilding it from the catalog");
                let aside = dir.with_extension(format!("broken-{}", chrono::Utc::now().format("%Y%m%d%H%M%S")));
                std::fs::rename(&dir, &aside).with_context(|| format!("cannot move {} aside", dir.display()))?;
                std::fs::create_dir_all(&dir)?;
                Ok((Arc::new(SearchIndex::open(&dir)?), true))
            }
            Err(err) => Err(err).with_context(|| format!("cannot open the search index in {}", dir.display())),
        }
    })
    .await
    .context("search index task failed")?
}

/// Hides the password of a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The folder of `key` (through its last `/`), what a targeted sync lists for it.
pub fn folder_of(key: &str) -> String {
    match key.rfind('/') {
        Some(slash) => key[..=slash].to_owned(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/milepost"),
            "postgres://app:***@db:5432/milepost"
        );
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }
}
