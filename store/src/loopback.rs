//! [`LoopbackS3`]: a real S3 server (s3s-fs) on loopback over a local directory, for
//! `milepost demo` and for tests across crates.
//!
//! Each bucket is a directory under the root and each object a file under it, so a demo can
//! also be seeded by writing files. Requests are SigV4-authenticated against one key pair and
//! buckets are addressed path-style.
//!
//! s3s-fs is not a faithful S3 in every corner, and code must not be built around its gaps
//! (all observed with s3s-fs 0.14.1):
//! - `If-Match` (and the other conditional headers) on GET are ignored.
//!   [`S3Store`](crate::S3Store) checks the answered ETag itself, so a stale
//!   `If-Match` still fails, but the server-side precondition (a `412` before any byte is
//!   sent) is only exercised against a real server (Garage).
//! - ListObjectsV2 entries carry no ETag: listings have empty
//!   [`etag`](crate::ObjectMeta::etag)s; `head` gives them.
//! - `PutObject` into a bucket that does not exist creates it (S3 answers `NoSuchBucket`):
//!   call [`ensure_bucket`](crate::ObjectStore::ensure_bucket) anyway.
//! - GET on a missing bucket answers `NoSuchKey` rather than `NoSuchBucket` (both are
//!   [`NotFound`](crate::StoreErrorKind::NotFound)).
//! - A suffix range longer than the object fails with `500 InternalError` instead of
//!   returning the whole object.
//! - Requests naming an unknown multipart upload id answer `403 AccessDenied`, not
//!   `404 NoSuchUpload`.
//! - `CreateBucket` on an existing bucket answers `BucketAlreadyExists`, even for our own
//!   (`ensure_bucket` copes).
//! - ETags are recorded (in side files under the root) when objects are written through S3.
//!   A file written directly into the directory keeps the ETag recorded for its key, if any,
//!   even after a delete (which leaves the record behind), so a stale ETag can describe new
//!   bytes; without a record, the ETag is the file's MD5, computed on every HEAD and GET by
//!   reading the whole file. Seed through the S3 API, or into a fresh directory.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{StaticCredentials, UpstreamSettings};

/// How long [`LoopbackS3::shutdown`] lets in-flight requests finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The region [`LoopbackS3::settings`] signs for (s3s accepts any).
pub const LOOPBACK_REGION: &str = "us-east-1";

/// An S3 server on loopback (s3s-fs over a directory); see the [module docs](self).
///
/// Serves on a tokio task until [`shutdown`](Self::shutdown) (graceful: in-flight requests
/// get [`SHUTDOWN_GRACE`] to finish) or until dropped (stops accepting at once; open
/// connections are closed as they finish).
pub struct LoopbackS3 {
    addr: SocketAddr,
    root: PathBuf,
    credentials: StaticCredentials,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for LoopbackS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackS3")
            .field("addr", &self.addr)
            .field("root", &self.root)
            .field("access_key", &self.credentials.access_key_id)
            .finish_non_exhaustive()
    }
}

impl LoopbackS3 {
    /// Serves the directory `root` (created if missing) on `addr` (`127.0.0.1:0` picks a free
    /// port), accepting requests signed with `access_key`/`secret_key`.
    pub async fn start(
        root: &Path,
        addr: SocketAddr,
        access_key: &str,
        secret_key: &str,
    ) -> io::Result<Self> {
        tokio::fs::create_dir_all(root).await?;
        let root = tokio::fs::canonicalize(root).await?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|err| {
            io::Error::other(format!("cannot serve {} over s3: {err:?}", root.display()))
        })?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();

        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, service, stop.clone()));
        tracing::debug!(%addr, root = %root.display(), "loopback s3 started");
        Ok(Self {
            addr,
            root,
            credentials: StaticCredentials::new(access_key, secret_key),
            stop,
            task: Some(task),
        })
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory served (canonical): `root/<bucket>/<key>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Settings for an [`S3Store`](crate::S3Store) talking to this server: the
    /// endpoint, path-style, the static key pair, region [`LOOPBACK_REGION`].
    pub fn settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            endpoint: Some(self.endpoint()),
            region: LOOPBACK_REGION.to_owned(),
            force_path_style: true,
            credentials: Some(self.credentials.clone()),
            ..UpstreamSettings::default()
        }
    }

    /// Stops accepting, lets in-flight requests finish (at most [`SHUTDOWN_GRACE`]) and waits
    /// for the server task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "loopback s3 task failed");
            }
        }
    }
}

impl Drop for LoopbackS3 {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accepts and serves connections until `stop`, then drains them.
async fn serve(listener: TcpListener, service: S3Service, stop: CancellationToken) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                    let conn = graceful.watch(conn.into_owned());
                    connections.spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(error = %err, "loopback s3 connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "loopback s3 cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("loopback s3 connections still open after the grace period, closing them");
        }
    }
    connections.shutdown().await;
    tracing::debug!("loopback s3 stopped");
}
