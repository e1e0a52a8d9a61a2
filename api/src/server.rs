//! The HTTP server: routes, middleware (tracing, metrics, timeouts, body limits, panics), and a
//! lifecycle with graceful shutdown: stop accepting, drain in-flight requests for at most
//! `server.shutdown_grace`, then return.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::config::Config;
use crate::error::{graphql_error_body, ErrorCode};
use crate::graphql::{self, IntrospectionSchema, MilepostSchema};

// The application state lives in the composition root; these paths stay for other crates.
pub use crate::app::{redact_url, upstream_settings, AppState};

/// Router state: the application plus the GraphQL schema built over it.
#[derive(Clone)]
pub struct HttpState {
    pub app: Arc<AppState>,
    pub schema: MilepostSchema,
    /// The same schema for introspection-only operations (their own depth bound).
    pub introspection_schema: IntrospectionSchema,
}

// Handlers extract only the part they need (`State<Arc<AppState>>`, `State<MilepostSchema>`),
// so that they do not depend on the router's state type.
impl FromRef<HttpState> for Arc<AppState> {
    fn from_ref(http: &HttpState) -> Self {
        http.app.clone()
    }
}

impl FromRef<HttpState> for MilepostSchema {
    fn from_ref(http: &HttpState) -> Self {
        http.schema.clone()
    }
}

impl FromRef<HttpState> for IntrospectionSchema {
    fn from_ref(http: &HttpState) -> Self {
        http.introspection_schema.clone()
    }
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let schema = graphql::build_schema(state.clone());
    let server = &state.config.server;
    let http = HttpState {
        app: state.clone(),
        schema,
        introspection_schema: graphql::build_introspection_schema(state.clone()),
    };
    let endpoint = state.config.upstream.endpoint.trim();
    let catalog = milepost_ui::router(
        Arc::new(crate::web::InProcess {
            app: state.clone(),
            schema: http.schema.clone(),
        }),
        milepost_ui::UiSettings {
            s3_endpoint: (!endpoint.is_empty()).then(|| endpoint.to_owned()),
            viewers: state
                .config
                .ui
                .viewer_urls
                .iter()
                .map(|(name, template)| (name.clone(), template.clone()))
                .collect(),
            public_url: Some(state.config.server.public_url.trim())
                .filter(|url| !url.is_empty())
                .map(str::to_owned),
        },
    );
    Router::new()
        .route(
            "/graphql",
            get(graphql::graphiql).post(graphql::graphql_post),
        )
        .route("/graphql/ws", get(graphql::graphql_ws))
        .route("/graphql/schema.graphql", get(graphql::graphql_sdl))
        .route(
            "/data/{bucket}/{*key}",
            get(crate::data::serve_object)
                .head(crate::data::serve_object)
                .options(crate::data::preflight),
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
    text.push_str(&crate::metrics::render_workers(&app.workers.reports()));
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
        (
            "milepost_search_index_commits_total",
            "Commits of this node's search index (many catalog changes share one).",
            "counter",
            app.catalog.search.commits(),
        ),
        (
            "milepost_search_documents",
            "Documents in this node's search index.",
            "gauge",
            app.catalog.search.doc_count() as u64,
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
    let shutdown = CancellationToken::new();
    let grace = state.config.server.shutdown_grace.0;
    let app = router(state.clone());
    let stop = shutdown.clone();
    let cleanup = state.clone();
    crate::app::start_workers(&state);
    let task = tokio::spawn(async move {
        // No Nagle delay: a small response (a 4 KiB range a viewer or a mount asks for) is
        // sent at once, not after the client's delayed ACK (40 ms a request, measured).
        let listener = axum::serve::ListenerExt::tap_io(listener, |socket| {
            if let Err(err) = socket.set_nodelay(true) {
                tracing::debug!(%err, "cannot set TCP_NODELAY");
            }
        });
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let serve = std::pin::pin!(serve.into_future());
        tokio::select! {
            result = serve => result.context("server failed")?,
            () = async {
                stop.cancelled().await;
                // Workers stop while requests drain, as they always did.
                cleanup.workers.stop();
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace = ?grace, "requests still running after the shutdown grace period; stopping anyway");
            }
        }
        // Then they get the same grace to finish what they do (the runner abandons the rest).
        cleanup.workers.shutdown(grace).await;
        gateway.shutdown().await;
        // Uploads in progress are cut short; the journal runs them again at the next start.
        cleanup.write_back.shutdown().await;
        cleanup.reservations.shutdown().await;
        cleanup.cache.shutdown().await;
        // Last: until now this node's work was its own; the others take what is left at once.
        if let Some(node) = &cleanup.cluster {
            node.leave().await;
        }
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

/// The S3 gateway over the office store; writes under the catalog's prefixes ask for a
/// targeted sync of their folders, so that uploads are searchable in the office at once.
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
                    state.sync_keys_soon([key]);
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
