//! What the mount needs from the office, as a contract: which dataset versions to show, the
//! manifest of each, and exact byte ranges of an object version. The `milepost` binary
//! implements it over GraphQL and `/data` (`api/src/mount.rs`); the filesystem never speaks
//! HTTP itself.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

/// One file of a dataset version, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// A dataset version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionRef {
    pub dataset: String,
    pub version: i32,
}

impl VersionRef {
    /// Its directory under the mount point: `name@version`.
    pub fn dir_name(&self) -> String {
        format!("{}@{}", self.dataset, self.version)
    }
}

/// A dataset version the mount shows, until `expires_at` (a reservation's expiry; `None` for a
/// version mounted by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub version: VersionRef,
    pub expires_at: Option<SystemTime>,
}

/// Why a call to the office failed, and whether waiting could help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// Worth retrying: the server is restarting or unreachable, a timeout, a body cut short,
    /// 5xx or 429.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not change it: the token is refused, the object is gone or has a new
    /// version, an answer that makes no sense.
    #[error("{0}")]
    Permanent(String),
}

impl RemoteError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Transient(_))
    }
}

#[async_trait]
pub trait Remote: Send + Sync + 'static {
    /// The dataset versions to show now.
    async fn shown(&self) -> Result<Vec<Shown>, RemoteError>;

    /// The files of `version` (immutable: read once per mount).
    async fn manifest(&self, version: &VersionRef) -> Result<Vec<RemoteFile>, RemoteError>;

    /// Bytes `offset .. offset + len` of exactly the version `file` names (`len` is within the
    /// object).
    async fn read(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes, RemoteError>;
}

/// Calls `attempt` until it succeeds, fails permanently, or transient failures have gone on
/// for `retry_for`; waits 50 ms after the first failure, doubling to at most 2 s. A server
/// restart or a network blip is then a pause for the reader, never an error.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    retry_for: Duration,
    mut attempt: F,
) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(what, failures, "succeeded after retrying");
                }
                return Ok(value);
            }
            Err(RemoteError::Transient(reason)) if started.elapsed() < retry_for => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(what, %reason, failures, "transient failure; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let calls = AtomicU32::new(0);
        let got = with_retries("x", Duration::from_secs(10), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(RemoteError::Transient("refused".into())),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(got, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let got: Result<(), _> = with_retries("x", Duration::from_secs(10), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::Permanent("404".into()))
        })
        .await;
        assert_eq!(got, Err(RemoteError::Permanent("404".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn transient_failures_give_up_after_the_retry_window() {
        let got: Result<(), _> = with_retries("x", Duration::from_millis(120), || async {
            Err(RemoteError::Transient("down".into()))
        })
        .await;
        assert_eq!(got, Err(RemoteError::Transient("down".into())));
    }
}
