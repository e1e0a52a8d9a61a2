//! `milepost pull DATASET[@V] DIR`: a dataset version copied to a workstation through `/data`,
//! in parallel, verified, resumable, and incremental.
//!
//! - Files land at `DIR/<bucket>/<key>` and appear only when complete: each is written to
//!   `DIR/.milepost-pull/parts/` and renamed into place once its size (and, for a
//!   single-part ETag, its MD5) matches the dataset's manifest.
//! - A run that stops half-way (killed, network gone) leaves its part files with the ETag
//!   they belong to; the next run continues each with a `Range` request conditioned on that
//!   ETag (`If-Match`), after re-hashing what is already there.
//! - `DIR/.milepost-pull/state` records, per file, the ETag, size and modification time it
//!   was written with. A re-run fetches only files that are missing, whose size or
//!   modification time changed since (deleted, truncated, edited locally), or whose ETag the
//!   new version changed; the others are left untouched.
//! - A key that could not be a relative path under `DIR` (absolute, `..`, empty segments) is
//!   refused before anything is written.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{StreamExt as _, TryStreamExt as _};
use milepost_cacher::digest::Md5;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::Client;
use crate::data::data_path;
use crate::progress::{human_bytes, render_line};

/// The directory under `DIR` that holds the pull's own files.
pub const STATE_DIR: &str = ".milepost-pull";

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub dataset: String,
    /// The latest version when `None`.
    pub version: Option<i32>,
    pub dir: PathBuf,
    /// Files fetched at once.
    pub jobs: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    pub name: String,
    pub version: i32,
    pub files: u64,
    pub bytes: u64,
    /// Files fetched (wholly or the rest of a part file).
    pub fetched_files: u64,
    /// Bytes received from the server.
    pub fetched_bytes: u64,
    /// Files already there and unchanged.
    pub up_to_date: u64,
}

/// One file of the dataset.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Member {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// What the state file says about one written file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Written {
    path: String,
    etag: String,
    size: u64,
    mtime_ns: i128,
}

/// A dataset version's name, version and members (the latest version when `version` is
/// `None`), read page by page.
pub(crate) async fn members(
    client: &Client,
    dataset: &str,
    version: Option<i32>,
) -> anyhow::Result<(String, i32, Vec<Member>)> {
    let mut after: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let data = client
            .query(
                "query($name: String!, $version: Int, $after: String) { dataset(name: $name, version: $version) {
                   name version objects(first: 500, after: $after) {
                     edges { node { bucket key size etag } } pageInfo { hasNextPage endCursor } } } }",
                json!({ "name": dataset, "version": version, "after": after }),
            )
            .await?;
        let dataset = &data["dataset"];
        if dataset.is_null() {
            match version {
                Some(v) => bail!("no dataset {dataset} version {v}"),
                None => bail!("no dataset {dataset}"),
            }
        }
        let objects = &dataset["objects"];
        for edge in objects["edges"].as_array().into_iter().flatten() {
            out.push(
                serde_json::from_value(edge["node"].clone())
                    .context("the server listed an object without bucket, key, size or etag")?,
            );
        }
        if objects["pageInfo"]["hasNextPage"] != true {
            let name = dataset["name"].as_str().unwrap_or_default().to_owned();
            let version = dataset["version"].as_i64().unwrap_or_default() as i32;
            return Ok((name, version, out));
        }
        after = objects["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

/// `bucket/key` as a relative path, refusing anything that could leave the directory.
fn relative_path(member: &Member) -> anyhow::Result<PathBuf> {
    let joined = format!("{}/{}", member.bucket, member.key);
    let path = PathBuf::from(&joined);
    let safe = !joined.contains('\0')
        && !joined.contains('\\')
        && !joined
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !safe {
        bail!("s3://{joined}: the key cannot be a file under the target directory");
    }
    Ok(path)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The state file: one JSON line per written file, the last line of a path winning.
struct State {
    file: Mutex<std::fs::File>,
    known: HashMap<String, Written>,
}

impl State {
    fn open(dir: &Path) -> anyhow::Result<State> {
        let path = dir.join(STATE_DIR).join("state");
        let mut known = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A line cut by a crash is skipped: its file is checked again.
            for line in text.lines() {
                if let Ok(written) = serde_json::from_str::<Written>(line) {
                    known.insert(written.path.clone(), written);
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(State {
            file: Mutex::new(file),
            known,
        })
    }

    fn record(&self, written: &Written) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(written)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
            .context("cannot write the pull's state file")
    }

    /// Whether the file at `path` is the one written for `member` and untouched since.
    fn up_to_date(&self, rel: &str, path: &Path, member: &Member) -> bool {
        let Some(written) = self.known.get(rel) else {
            return false;
        };
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        written.etag == member.etag
            && written.size == member.size
            && meta.len() == member.size
            && mtime_ns(&meta) == written.mtime_ns
    }
}

/// Counters the progress bar reads.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    files: AtomicU64,
    fetched_files: AtomicU64,
    fetched_bytes: AtomicU64,
}

/// Pulls the dataset `request` names from the server `client` talks to (`server` is its base
/// URL, `token` its bearer token).
pub async fn pull(
    client: &Client,
    server: &str,
    token: Option<&str>,
    request: &PullRequest,
) -> anyhow::Result<PullReport> {
    let (name, version, members) = members(client, &request.dataset, request.version).await?;
    let parts = request.dir.join(STATE_DIR).join("parts");
    tokio::fs::create_dir_all(&parts)
        .await
        .with_context(|| format!("cannot create {}", parts.display()))?;
    let state = Arc::new(State::open(&request.dir)?);
    let mut work = Vec::new();
    let mut report = PullReport {
        name: name.clone(),
        version,
        files: members.len() as u64,
        bytes: members.iter().map(|m| m.size).sum(),
        ..PullReport::default()
    };
    let progress = Arc::new(Progress::default());
    for member in members {
        let rel = relative_path(&member)?;
        let rel_text = rel.to_string_lossy().into_owned();
        let path = request.dir.join(&rel);
        if state.up_to_date(&rel_text, &path, &member) {
            report.up_to_date += 1;
            progress.bytes.fetch_add(member.size, Ordering::Relaxed);
            progress.files.fetch_add(1, Ordering::Relaxed);
        } else {
            work.push((member, rel_text, path));
        }
    }

    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let base = server.trim_end_matches('/').to_owned();
    let bar = request.progress.then(|| {
        let progress = Arc::clone(&progress);
        let (bytes, files) = (report.bytes, report.files);
        let started = Instant::now();
        tokio::spawn(async move {
            let mut stderr = std::io::stderr();
            loop {
                let done = progress.bytes.load(Ordering::Relaxed);
                let rate = progress.fetched_bytes.load(Ordering::Relaxed) as f64
                    / started.elapsed().as_secs_f64().max(0.001);
                let line = render_line(
                    done,
                    bytes,
                    progress.files.load(Ordering::Relaxed),
                    files,
                    rate,
                );
                let _ = write!(stderr, "\r{line}");
                let _ = stderr.flush();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let jobs = request.jobs.max(1);
    let result = futures::stream::iter(work.into_iter().map(|(member, rel, path)| {
        let (http, base, dir, state, progress) = (
            http.clone(),
            base.clone(),
            request.dir.clone(),
            Arc::clone(&state),
            Arc::clone(&progress),
        );
        let token = token.map(str::to_owned);
        async move {
            fetch_one(
                &http,
                &base,
                token.as_deref(),
                &dir,
                &member,
                &path,
                &progress,
            )
            .await
            .with_context(|| format!("s3://{}/{}", member.bucket, member.key))?;
            let meta = tokio::fs::metadata(&path).await?;
            state.record(&Written {
                path: rel,
                etag: member.etag.clone(),
                size: member.size,
                mtime_ns: mtime_ns(&meta),
            })?;
            progress.files.fetch_add(1, Ordering::Relaxed);
            progress.fetched_files.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(jobs)
    .try_collect::<Vec<()>>()
    .await;
    if let Some(bar) = bar {
        bar.abort();
        eprintln!();
    }
    result?;
    report.fetched_files = progress.fetched_files.load(Ordering::Relaxed);
    report.fetched_bytes = progress.fetched_bytes.load(Ordering::Relaxed);
    Ok(report)
}

/// The part file a pull into `dir` writes `bucket/key` at `etag` to before it is complete:
/// named by a digest of the three, so that a part of another version is never continued.
pub fn part_file(dir: &Path, bucket: &str, key: &str, etag: &str) -> PathBuf {
    let id = Md5::digest(format!("{bucket}\0{key}\0{etag}").as_bytes())
        .map(hex::encode)
        .unwrap_or_else(|_| etag.to_owned());
    dir.join(STATE_DIR).join("parts").join(format!("{id}.part"))
}

/// Feeds what an earlier run left in `part` to `hasher`, a block at a time (a part may be
/// gigabytes); returns its length.
async fn hash_part(part: &Path, hasher: &mut Md5) -> anyhow::Result<u64> {
    let mut file = tokio::fs::File::open(part)
        .await
        .with_context(|| format!("cannot read {}", part.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut have = 0u64;
    loop {
        let n = file
            .read(&mut block)
            .await
            .with_context(|| format!("cannot read {}", part.display()))?;
        if n == 0 {
            return Ok(have);
        }
        hasher.update(&block[..n])?;
        have += n as u64;
    }
}

async fn fetch_one(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    dir: &Path,
    member: &Member,
    path: &Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    let part = part_file(dir, &member.bucket, &member.key, &member.etag);
    // What an earlier run left: hashed again, then continued.
    let mut hasher = Md5::new();
    let mut have = 0u64;
    if let Ok(meta) = tokio::fs::metadata(&part).await {
        if meta.len() <= member.size {
            have = hash_part(&part, &mut hasher).await?;
        } else {
            tokio::fs::remove_file(&part).await?;
        }
    }
    progress.bytes.fetch_add(have, Ordering::Relaxed);
    if have < member.size {
        let url = format!("{base}{}", data_path(&member.bucket, &member.key));
        let mut request = http
            .get(&url)
            .header("if-match", format!("\"{}\"", member.etag));
        if have > 0 {
            request = request.header("range", format!("bytes={have}-"));
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let expected = if have > 0 { 206 } else { 200 };
        if status.as_u16() != expected {
            let body = response.text().await.unwrap_or_default();
            bail!(
                "GET {url} answered {status} (expected {expected}): {}",
                body.trim()
            );
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            if have + chunk.len() as u64 > member.size {
                bail!(
                    "the server sent more than the {} bytes the dataset lists",
                    member.size
                );
            }
            hasher.update(&chunk)?;
            file.write_all(&chunk).await?;
            have += chunk.len() as u64;
            progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            progress
                .fetched_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        file.sync_all().await?;
    }
    if have != member.size {
        bail!("got {have} bytes, the dataset lists {}", member.size);
    }
    let md5 = hex::encode(hasher.finish()?);
    // A multipart ETag (`<md5 of md5s>-<parts>`) is not the MD5 of the bytes: the size is
    // checked then, and the server's If-Match made sure of the version.
    if !member.etag.contains('-') && !md5.eq_ignore_ascii_case(&member.etag) {
        tokio::fs::remove_file(&part).await?;
        bail!(
            "the bytes hash to MD5 {md5}, not to the ETag {}; the part was removed",
            member.etag
        );
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::rename(&part, path)
        .await
        .with_context(|| format!("cannot move the file into {}", path.display()))?;
    Ok(())
}

/// The last line of a pull: what was fetched and what was already there.
pub fn summary_line(report: &PullReport, took: Duration) -> String {
    let files = |n: u64| {
        if n == 1 {
            "1 file".to_owned()
        } else {
            format!("{n} files")
        }
    };
    format!(
        "{}@{}: {} ({}); fetched {} ({}), {} already up to date, in {:.1} s",
        report.name,
        report.version,
        files(report.files),
        human_bytes(report.bytes),
        files(report.fetched_files),
        human_bytes(report.fetched_bytes),
        report.up_to_date,
        took.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(bucket: &str, key: &str) -> Member {
        Member {
            bucket: bucket.into(),
            key: key.into(),
            size: 1,
            etag: "e".into(),
        }
    }

    #[test]
    fn keys_that_could_leave_the_directory_are_refused() {
        assert_eq!(
            relative_path(&member("fleet", "drives/a/b.mcap")).expect("fine"),
            PathBuf::from("fleet/drives/a/b.mcap")
        );
        for key in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a\\b",
            "a/",
        ] {
            assert!(relative_path(&member("fleet", key)).is_err(), "{key}");
        }
        assert!(relative_path(&member("..", "x")).is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(data_path("b k", "a b+c%/x"), "/data/b%20k/a%20b%2Bc%25/x");
        assert_eq!(
            data_path("fleet", "drives/plain-name_1.mcap"),
            "/data/fleet/drives/plain-name_1.mcap"
        );
    }
}
