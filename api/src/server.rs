//! The HTTP server: routes, middleware (tracing, metrics, timeouts, body limits, panics), and a
//! lifecycle with graceful shutdown: stop accepting, drain in-flight requests for at most
//! `server.shutdown_grace`, then return.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use milepost_cacher::cache::{CacheSettings, OfficeCache};
use milepost_cacher::reservations::{ReservationSettings, Reservations};
use milepost_cacher::transfer_policy::{PolicyHandle, PolicyShaper, UploadLimiter};
use milepost_cacher::writeback::{OfficeStore, WriteBack, WriteBackSettings};
use milepost_cacher::{EgressMeter, ObjectStore, UpstreamSettings};
use milepost_indexer::catalog::Layout;
use milepost_indexer::search::{SearchErrorKind, SearchIndex};
use milepost_indexer::sync::{SyncOptions, SyncReport};
use milepost_indexer::Catalog;

use crate::config::Config;
use crate::error::{graphql_error_body, ErrorCode};
use crate::graphql::{self, MilepostSchema};
use crate::metrics::Metrics;

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
    /// The same, typed: the S3 gateway needs its write-back handle.
    pub office_store: Arc<OfficeStore>,
    /// The upstream S3 store itself, with retries and egress metering: the cache downloads
    /// and the uploader uploads through it.
    pub upstream: Arc<dyn ObjectStore>,
    /// Office writes on their way to S3: staging, journal, uploader.
    pub write_back: Arc<WriteBack>,
    /// Asks for a catalog sync soon (debounced): office uploads under the catalog's prefixes.
    pub sync_soon: tokio::sync::Notify,
    pub egress: Arc<EgressMeter>,
    /// One sync at a time, whether periodic or asked for.
    pub sync_lock: tokio::sync::Mutex<()>,
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
}

/// Router state: the application plus the GraphQL schema built over it.
#[derive(Clone)]
pub struct HttpState {
    pub app: Arc<AppState>,
    pub schema: MilepostSchema,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

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
        if rebuild || catalog.search.doc_count() == 0 {
            let documents = catalog
                .reindex()
                .await
                .context("cannot rebuild the search index")?;
            if documents > 0 {
                tracing::info!(documents, "search index rebuilt from the catalog database");
            }
        }
        let egress = Arc::new(EgressMeter::default());
        let store = milepost_cacher::build_store(&upstream, egress.clone())
            .context("cannot set up the upstream S3 client ([upstream])")?;
        let mut cache_settings =
            CacheSettings::new(config.data_dir.join("cache"), config.cache.capacity.0);
        cache_settings.part_size = config.cache.part_size.0;
        cache_settings.concurrency = config.cache.concurrency;
        cache_settings.durability = config.cache.durability.into();
        cache_settings.office = config.office.clone();
        let cache = OfficeCache::open(cache_settings, db.clone(), store.clone())
            .await
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
            ..ReservationSettings::default()
        };
        let reservations = Reservations::new(db.clone(), cache.clone(), reservation_settings);
        let served = config.served_buckets();
        let objects = Arc::new(milepost_cacher::objects::OfficeObjects::new(
            office_store.clone(),
            served.clone(),
            Some(db.clone()),
        ));
        Ok(Arc::new(AppState {
            served,
            objects,
            config,
            db,
            metrics: Metrics::default(),
            layout,
            catalog,
            store,
            office_store,
            upstream,
            write_back,
            sync_soon: tokio::sync::Notify::new(),
            egress,
            sync_lock: tokio::sync::Mutex::new(()),
            sidecar_locks: crate::records::SidecarLocks::default(),
            cache,
            reservations,
            tokens: crate::auth::TokenCache::default(),
            transfer_policy,
            upload_limiter,
        }))
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
        }
    }

    /// One catalog sync pass, serialized with any other.
    pub async fn sync_catalog(&self) -> Result<SyncReport, milepost_indexer::sync::SyncError> {
        let _one_at_a_time = self.sync_lock.lock().await;
        milepost_indexer::sync::sync(&self.catalog, &self.store, &self.sync_options()).await
    }
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

pub fn router(state: Arc<AppState>) -> Router {
    let schema = graphql::build_schema(state.clone());
    let server = &state.config.server;
    let http = HttpState {
        app: state.clone(),
        schema,
    };
    let endpoint = state.config.upstream.endpoint.trim();
    let catalog = milepost_ui::router(
        Arc::new(crate::web::InProcess { http: http.clone() }),
        milepost_ui::UiSettings {
            s3_endpoint: (!endpoint.is_empty()).then(|| endpoint.to_owned()),
        },
    );
    Router::new()
        .route(
            "/graphql",
            get(graphql::graphiql).post(graphql::graphql_post),
        )
        .route("/graphql/ws", get(graphql::graphql_ws))
        .route(
            "/data/{bucket}/{*key}",
            get(crate::data::serve_object).head(crate::data::serve_object),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(server.max_body_size.0 as usize))
        .with_state(http)
        .merge(catalog)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            server.request_timeout.0,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

async fn healthz(State(http): State<HttpState>) -> Response {
    match milepost_schema::ping(&http.app.db).await {
        Ok(()) => Json(serde_json::json!({ "status": "ok", "database": "ok" })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unavailable", "database": "unreachable" })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(http): State<HttpState>) -> Response {
    let app = &http.app;
    let mut text = app.metrics.render();
    let cache = app.cache.stats();
    let egress = app.egress.snapshot();
    let office = app.config.office.replace(['"', '\\', '\n'], "");
    for (name, help, kind, value) in [
        (
            "milepost_cache_capacity_bytes",
            "Capacity of the office cache.",
            "gauge",
            cache.capacity_bytes,
        ),
        (
            "milepost_cache_used_bytes",
            "Bytes held in the office cache.",
            "gauge",
            cache.used_bytes,
        ),
        (
            "milepost_cache_pinned_bytes",
            "Bytes pinned by reservations.",
            "gauge",
            cache.pinned_bytes,
        ),
        (
            "milepost_cache_objects",
            "Objects in the office cache.",
            "gauge",
            cache.objects,
        ),
        (
            "milepost_cache_hits_total",
            "Cache lookups that found the object.",
            "counter",
            cache.hits,
        ),
        (
            "milepost_cache_misses_total",
            "Cache lookups that needed a download.",
            "counter",
            cache.misses,
        ),
        (
            "milepost_cache_served_bytes_total",
            "Bytes served from the cache.",
            "counter",
            cache.bytes_served,
        ),
        (
            "milepost_upstream_bytes_total",
            "Bytes read from upstream S3.",
            "counter",
            egress.bytes_from_upstream,
        ),
        (
            "milepost_upstream_get_requests_total",
            "GET requests to upstream S3.",
            "counter",
            egress.get_requests,
        ),
        (
            "milepost_upload_bytes_total",
            "Bytes of write-back uploads let through the upload limiter toward S3.",
            "counter",
            app.upload_limiter.bytes_total(),
        ),
    ] {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{office=\"{office}\"}} {value}\n"
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(graphql_error_body(ErrorCode::NotFound, "no such endpoint")),
    )
        .into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(graphql_error_body(ErrorCode::Internal, "internal error")),
    )
        .into_response()
}

async fn record_metrics(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state.metrics.record_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A server running in the background, as started by [`start`].
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where the S3 gateway listens.
    pub s3_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Asks the server to stop and waits until it has drained.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task panicked")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server stops on its own (after a signal or the shutdown token).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// Opens the database, binds `server.listen` and serves until the returned handle is shut down.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    let state = AppState::open(config).await?;
    start_with_state(state).await
}

pub async fn start_with_state(state: Arc<AppState>) -> anyhow::Result<RunningServer> {
    let listen = state.config.server.listen.0;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    let addr = listener.local_addr()?;
    let s3_listen = state.config.server.s3_listen.0;
    let s3_listener = TcpListener::bind(s3_listen)
        .await
        .with_context(|| format!("cannot listen on {s3_listen} (server.s3_listen)"))?;
    let gateway = start_gateway(&state, s3_listener)?;
    let s3_addr = gateway.addr;
    state.write_back.start();
    let shutdown = CancellationToken::new();
    let grace = state.config.server.shutdown_grace.0;
    let app = router(state.clone());
    let stop = shutdown.clone();
    let cleanup = state.clone();
    let mut workers = tokio::task::JoinSet::new();
    if let Some(every) = state.config.catalog.sync_interval.0 {
        workers.spawn(periodic_sync(state.clone(), every, shutdown.clone()));
    }
    workers.spawn(sync_when_asked(state.clone(), shutdown.clone()));
    {
        // Resumes interrupted materializations, re-pins live reservations, expires old ones.
        let reservations = state.reservations.clone();
        let stop = shutdown.clone();
        workers.spawn(async move { reservations.start(stop).await });
    }
    let task = tokio::spawn(async move {
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let serve = std::pin::pin!(serve.into_future());
        tokio::select! {
            result = serve => result.context("server failed")?,
            () = async {
                stop.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace = ?grace, "requests still running after the shutdown grace period; stopping anyway");
            }
        }
        // Workers watch the same token; give them the same grace to finish what they do.
        stop.cancel();
        if tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("background workers still busy after the grace period; abandoning them");
            workers.abort_all();
        }
        gateway.shutdown().await;
        // Uploads in progress are cut short; the journal runs them again at the next start.
        cleanup.write_back.shutdown().await;
        cleanup.reservations.shutdown().await;
        cleanup.cache.shutdown().await;
        Ok(())
    });
    tracing::info!(%addr, %s3_addr, "listening: web catalog on http://{addr}/, GraphQL on http://{addr}/graphql, S3 gateway on http://{s3_addr}/");
    Ok(RunningServer {
        addr,
        s3_addr,
        state,
        shutdown,
        task,
    })
}

/// The S3 gateway over the office store; writes under the catalog's prefixes ask for a sync,
/// so that uploads are searchable in the office at once.
fn start_gateway(
    state: &Arc<AppState>,
    listener: TcpListener,
) -> anyhow::Result<crate::gateway::GatewayHandle> {
    let config = &state.config;
    let on_write = {
        let weak = Arc::downgrade(state);
        let bucket = config.catalog.bucket.clone();
        let prefixes = [
            config.catalog.drives_prefix.clone(),
            config.catalog.runs_prefix.clone(),
        ];
        Arc::new(move |b: &str, key: &str| {
            if b == bucket && prefixes.iter().any(|p| key.starts_with(p.as_str())) {
                if let Some(state) = weak.upgrade() {
                    state.sync_soon.notify_one();
                }
            }
        })
    };
    let gateway = crate::gateway::Gateway::new(state.objects.clone(), on_write);
    let keys = crate::gateway::TokenKeys::new(state.db.clone());
    let access = crate::gateway::RoleAccess {
        keys: keys.clone(),
        allow_anonymous_read: config.server.allow_anonymous_read,
    };
    crate::gateway::start(
        listener,
        gateway,
        keys,
        access,
        Some(&config.server.s3_domain),
        config.server.s3_header_read_timeout.0,
    )
}

/// How long writes must pause before the sync they asked for runs (a drive's files arrive
/// together; one pass catalogs them all).
const SYNC_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// Runs a catalog sync shortly after office uploads under the catalog's prefixes.
async fn sync_when_asked(state: Arc<AppState>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = state.sync_soon.notified() => {}
        }
        // Let a burst of writes settle.
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = state.sync_soon.notified() => continue,
                () = tokio::time::sleep(SYNC_DEBOUNCE) => break,
            }
        }
        let pass = tokio::select! {
            () = stop.cancelled() => return,
            result = state.sync_catalog() => result,
        };
        match pass {
            Ok(report) if !report.errors.is_empty() => {
                tracing::warn!(errors = ?report.errors, "catalog sync after office uploads reported problems");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "catalog sync after office uploads failed"),
        }
    }
}

/// Syncs the catalog every `every` until `stop`; a failed pass is logged and retried next time.
async fn periodic_sync(state: Arc<AppState>, every: std::time::Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let pass = tokio::select! {
            () = stop.cancelled() => return,
            result = state.sync_catalog() => result,
        };
        match pass {
            Ok(report) if !report.errors.is_empty() => {
                tracing::warn!(errors = ?report.errors, "catalog sync reported problems");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "catalog sync failed; retrying at the next interval")
            }
        }
    }
}

/// Registers the SIGINT and SIGTERM handlers now, so that a signal arriving before the
/// returned future is first polled (say, right after the listening banner is printed) is not
/// lost, and returns a future that resolves when either arrives.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        async fn wait(handler: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
            match handler {
                Ok(mut handler) => {
                    handler.recv().await;
                    tracing::info!("{name} received, shutting down");
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        }
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            tokio::select! {
                () = wait(interrupt, "SIGINT") => {}
                () = wait(terminate, "SIGTERM") => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
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
