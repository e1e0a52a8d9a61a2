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

use crate::catalog::Layout;
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
    /// Connects to the catalog database and brings its schema up to date.
    pub async fn open(config: Config) -> anyhow::Result<Arc<AppState>> {
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
        Ok(Arc::new(AppState {
            config,
            db,
            metrics: Metrics::default(),
            layout,
        }))
    }
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
    Router::new()
        .route(
            "/graphql",
            get(graphql::graphiql).post(graphql::graphql_post),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(server.max_body_size.0 as usize))
        .with_state(http)
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
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        http.app.metrics.render(),
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
    let shutdown = CancellationToken::new();
    let grace = state.config.server.shutdown_grace.0;
    let app = router(state.clone());
    let stop = shutdown.clone();
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
        Ok(())
    });
    tracing::info!(%addr, "listening: GraphQL on http://{addr}/graphql");
    Ok(RunningServer {
        addr,
        state,
        shutdown,
        task,
    })
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
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
