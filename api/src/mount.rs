//! `milepost mount MOUNTPOINT`: the office as a read-only filesystem on a workstation. The
//! filesystem itself is the `milepost-mount` crate; here is what it reads from the office
//! ([`OfficeRemote`]: the caller's reservations and manifests over GraphQL, byte ranges
//! through `/data` conditioned on the ETag) and the command that mounts until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use milepost_mount::{
    BlockSettings, MountOptions, Remote, RemoteError, RemoteFile, Shown, VersionRef,
};
use serde_json::json;

use crate::client::Client;
use crate::data::data_path;

/// What to show under the mount point.
#[derive(Debug, Clone)]
pub enum MountSource {
    /// The caller's reservations that are not released, failed or expired.
    Reservations,
    /// One dataset version (the latest when `None`), resolved when mounting.
    Dataset { name: String, version: Option<i32> },
}

/// The office as the mount sees it.
#[derive(Debug)]
pub struct OfficeRemote {
    client: Client,
    http: reqwest::Client,
    /// The server's base URL, without a trailing slash.
    base: String,
    token: Option<String>,
    source: MountSource,
    /// The caller's name, to show only their own reservations (an admin lists everyone's).
    me: tokio::sync::OnceCell<String>,
}

/// A GraphQL call that failed: the server not answering is transient, an answer with errors
/// is not.
fn graphql_error(err: anyhow::Error) -> RemoteError {
    let unreachable = err
        .chain()
        .any(|cause| cause.downcast_ref::<reqwest::Error>().is_some());
    if unreachable {
        RemoteError::Transient(format!("{err:#}"))
    } else {
        RemoteError::Permanent(format!("{err:#}"))
    }
}

impl OfficeRemote {
    pub fn new(
        server: &str,
        token: Option<String>,
        source: MountSource,
    ) -> anyhow::Result<OfficeRemote> {
        let client = Client::new(server, token.clone())?;
        let base = client.base_url().to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build()?;
        Ok(OfficeRemote {
            client,
            http,
            base,
            token,
            source,
            me: tokio::sync::OnceCell::new(),
        })
    }

    async fn me(&self) -> Result<&str, RemoteError> {
        self.me
            .get_or_try_init(|| async {
                let data = self
                    .client
                    .query("{ me { name } }", json!({}))
                    .await
                    .map_err(graphql_error)?;
                data["me"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        RemoteError::Permanent("the server did not say who the token is".into())
                    })
            })
            .await
            .map(String::as_str)
    }

    async fn reservations(&self) -> Result<Vec<Shown>, RemoteError> {
        let me = self.me().await?.to_owned();
        let mut shown = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let data = self
                .client
                .query(
                    "query($after: String) { reservations(first: 100, after: $after) {
                       edges { node { owner state expiresAt dataset { name version } } }
                       pageInfo { hasNextPage endCursor } } }",
                    json!({ "after": after }),
                )
                .await
                .map_err(graphql_error)?;
            let page = &data["reservations"];
            for edge in page["edges"].as_array().into_iter().flatten() {
                let node = &edge["node"];
                let live = matches!(
                    node["state"].as_str(),
                    Some("PENDING" | "MATERIALIZING" | "READY")
                );
                if !live || node["owner"].as_str() != Some(&me) {
                    continue;
                }
                let (Some(dataset), Some(version)) = (
                    node["dataset"]["name"].as_str(),
                    node["dataset"]["version"].as_i64(),
                ) else {
                    continue;
                };
                let expires_at = node["expiresAt"]
                    .as_str()
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                    .map(SystemTime::from);
                let version = VersionRef {
                    dataset: dataset.to_owned(),
                    version: version as i32,
                };
                // Two reservations of one version show as one directory, until the later
                // expiry.
                match shown.iter_mut().find(|s: &&mut Shown| s.version == version) {
                    Some(existing) => existing.expires_at = existing.expires_at.max(expires_at),
                    None => shown.push(Shown {
                        version,
                        expires_at,
                    }),
                }
            }
            if page["pageInfo"]["hasNextPage"] != true {
                return Ok(shown);
            }
            after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        }
    }
}

#[async_trait]
impl Remote for OfficeRemote {
    async fn shown(&self) -> Result<Vec<Shown>, RemoteError> {
        match &self.source {
            MountSource::Reservations => self.reservations().await,
            MountSource::Dataset { name, version } => {
                let data = self
                    .client
                    .query(
                        "query($name: String!, $version: Int) { dataset(name: $name, version: $version) { name version } }",
                        json!({ "name": name, "version": version }),
                    )
                    .await
                    .map_err(graphql_error)?;
                let dataset = &data["dataset"];
                let (Some(name), Some(version)) =
                    (dataset["name"].as_str(), dataset["version"].as_i64())
                else {
                    return Err(RemoteError::Permanent(match version {
                        Some(v) => format!("no dataset {name} version {v}"),
                        None => format!("no dataset {name}"),
                    }));
                };
                Ok(vec![Shown {
                    version: VersionRef {
                        dataset: name.to_owned(),
                        version: version as i32,
                    },
                    expires_at: None,
                }])
            }
        }
    }

    async fn manifest(&self, version: &VersionRef) -> Result<Vec<RemoteFile>, RemoteError> {
        let (_, _, members) =
            crate::pull::members(&self.client, &version.dataset, Some(version.version))
                .await
                .map_err(graphql_error)?;
        Ok(members
            .into_iter()
            .map(|m| RemoteFile {
                bucket: m.bucket,
                key: m.key,
                size: m.size,
                etag: m.etag,
            })
            .collect())
    }

    async fn read(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes, RemoteError> {
        let url = format!("{}{}", self.base, data_path(&file.bucket, &file.key));
        let mut request = self
            .http
            .get(&url)
            .header("if-match", format!("\"{}\"", file.etag))
            .header("range", format!("bytes={offset}-{}", offset + len - 1));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let what = format!("GET s3://{}/{} bytes {offset}+{len}", file.bucket, file.key);
        let response = request
            .send()
            .await
            .map_err(|e| RemoteError::Transient(format!("{what}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(RemoteError::Transient(format!(
                "{what}: the server answered {status}"
            )));
        }
        if status.as_u16() != 206 && status.as_u16() != 200 {
            let body = response.text().await.unwrap_or_default();
            // The status first: the filesystem maps 401/403 and 404 to their errno.
            return Err(RemoteError::Permanent(format!(
                "{} {what}: {}",
                status.as_u16(),
                body.trim()
            )));
        }
        response
            .bytes()
            .await
            .map_err(|e| RemoteError::Transient(format!("{what}: the body was cut: {e}")))
    }
}

/// `milepost mount` as its flags give it.
#[derive(Debug, Clone)]
pub struct MountCommand {
    pub mountpoint: PathBuf,
    pub source: MountSource,
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    pub memory: u64,
    pub refresh: Duration,
    pub retry_for: Duration,
    pub allow_other: bool,
}

/// The default block cache: `$XDG_CACHE_HOME/milepost/blocks`, else `~/.cache/milepost/blocks`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("milepost").join("blocks"))
}

/// Mounts and serves until SIGINT or SIGTERM, then unmounts.
pub async fn mount(
    server: &str,
    token: Option<String>,
    command: MountCommand,
) -> anyhow::Result<()> {
    let remote = Arc::new(OfficeRemote::new(server, token, command.source)?);
    let options = MountOptions {
        mountpoint: command.mountpoint.clone(),
        blocks: BlockSettings {
            memory_blocks: (command.memory / milepost_mount::BLOCK_SIZE).max(4) as usize,
            disk_dir: command.cache_dir.clone(),
            disk_bytes: command.cache_size,
            fetch_concurrency: 8,
            retry_for: command.retry_for,
        },
        refresh: command.refresh,
        allow_other: command.allow_other,
    };
    let mountpoint = command.mountpoint.display().to_string();
    let report = milepost_mount::run(
        options,
        remote,
        crate::server::shutdown_signal(),
        |mounted| {
            // The line scripts and tests wait for: the mount is usable from here on.
            println!(
                "milepost mounted {} dataset version(s) at {mountpoint}: {}",
                mounted.versions.len(),
                mounted.versions.join(" ")
            );
        },
    )
    .await?;
    eprintln!(
        "unmounted {mountpoint}: fetched {} block(s), {} bytes; {} from the disk cache",
        report.fetched_blocks, report.fetched_bytes, report.disk_hits
    );
    Ok(())
}
