//! Serving the gateway: an s3s service on its own listener, drained on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Gateway, RoleAccess, TokenKeys};

/// How long requests in flight may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl GatewayHandle {
    /// Stops accepting, lets requests in flight finish (at most 10 s), then returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::warn!(error = %err, "s3 gateway task failed");
        }
    }
}

/// Binds `listener` and serves `gateway` with SigV4 auth from `keys` and role checks from
/// `access`; `domain`, when given, enables virtual-host-style buckets
/// (`<bucket>.<domain>`).
pub fn start(
    listener: TcpListener,
    gateway: Gateway,
    keys: TokenKeys,
    access: RoleAccess,
    domain: Option<&str>,
) -> anyhow::Result<GatewayHandle> {
    let addr = listener.local_addr()?;
    let mut builder = S3ServiceBuilder::new(gateway);
    builder.set_auth(keys);
    builder.set_access(access);
    if let Some(domain) = domain.filter(|d| !d.is_empty()) {
        let host = s3s::host::SingleDomain::new(domain)
            .map_err(|err| anyhow::anyhow!("server.s3_domain = {domain:?}: {err}"))?;
        builder.set_host(host);
    }
    let service = builder.build();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, service, stop.clone()));
    tracing::info!(%addr, "s3 gateway listening");
    Ok(GatewayHandle { addr, stop, task })
}

async fn serve(listener: TcpListener, service: S3Service, stop: CancellationToken) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                    let conn = graceful.watch(conn.into_owned());
                    connections.spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(error = %err, "s3 gateway connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "s3 gateway cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!("s3 gateway requests still running after the drain period, closing them");
        }
    }
    connections.shutdown().await;
}
