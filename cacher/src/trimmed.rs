//! Materializing a trimmed member of a dataset ([`TrimSpec`]): the MCAP log's footer, summary
//! and the chunks overlapping the window are fetched as byte ranges through the office cache
//! ([`OfficeCache::fetch_range`]: ranged GETs with `If-Match`, single-flight, egress ledger,
//! cached so that overlapping scenarios of one log never fetch a chunk twice), trimmed by
//! [`crate::trim`] into a staging file off the runtime, and put into the content store
//! ([`OfficeCache::insert_file`]) under the view key the spec names and an ETag derived from
//! the source's ETag, the window and the topics ([`trim_etag`]): the same trim is built once
//! per office.
//!
//! A log without summary or chunk index is fetched whole instead, and a note says so.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom};

use chrono::{DateTime, SecondsFormat};
use sha2::{Digest as _, Sha256};

use crate::cache::{CacheError, FetchContext, LocalFile, ObjectKey, OfficeCache};
use crate::datasets::TrimSpec;
use crate::trim::{self, TrimError, TrimErrorKind, Trimmer, Window, FOOTER_READ};

/// Changes when the trimmed bytes for the same input would change (a new writer layout), so
/// that old trims are not served as new ones.
const TRIM_FORMAT: &str = "milepost-trim-1";

/// Chunks of one log fetched at once.
const CHUNK_FETCHES: usize = 4;

/// What materializing one trimmed member gave.
#[derive(Debug)]
pub(crate) struct Built {
    /// The object to link into the view (the trimmed file, or the whole log).
    pub view: ObjectKey,
    /// Bytes this call caused to come from upstream.
    pub bytes_from_upstream: u64,
    /// Something the reservation should say about it (fallback, empty window).
    pub note: Option<String>,
}

/// The ETag of the trimmed file of `source` per `spec`: a digest of everything its bytes
/// depend on.
pub fn trim_etag(source_etag: &str, spec: &TrimSpec) -> String {
    let mut hasher = Sha256::new();
    for part in [
        TRIM_FORMAT,
        source_etag,
        &spec.start_ns.to_string(),
        &spec.end_ns.to_string(),
    ]
    .into_iter()
    .chain(spec.topics.iter().map(String::as_str))
    {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("trim-{}", &hex::encode(hasher.finalize())[..32])
}

/// The key that stands for the trimmed file before it is built (admission and pins count
/// [`TrimSpec::planned_bytes`]).
pub fn planned_key(source: &ObjectKey, spec: &TrimSpec) -> ObjectKey {
    ObjectKey::new(
        source.bucket.clone(),
        spec.view_key.clone(),
        trim_etag(&source.etag, spec),
        spec.planned_bytes,
    )
}

/// The trimmed file of `source` per `spec` if it is in the cache already.
pub fn find_built(cache: &OfficeCache, source: &ObjectKey, spec: &TrimSpec) -> Option<ObjectKey> {
    cache.find_built(
        &source.bucket,
        &spec.view_key,
        &trim_etag(&source.etag, spec),
    )
}

fn rfc3339(ns: u64) -> String {
    DateTime::from_timestamp_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn empty_note(source: &ObjectKey, spec: &TrimSpec) -> String {
    let topics = if spec.topics.is_empty() {
        "any topic".to_owned()
    } else {
        spec.topics.join(", ")
    };
    format!(
        "{source}: no message between {} and {} on {topics}; {} is an empty (valid) mcap file",
        rfc3339(spec.start_ns),
        rfc3339(spec.end_ns),
        spec.view_key
    )
}

fn mcap_error(source: &ObjectKey, err: TrimError) -> CacheError {
    match err.kind() {
        TrimErrorKind::Write => CacheError::io(
            format!("writing the trimmed file of {source}"),
            std::io::Error::other(err.to_string()),
        ),
        _ => CacheError::invalid("mcap log", err.to_string()),
    }
}

/// Materializes the trimmed member (`source`, `spec`) in `cache`: it ends up cached and pinned
/// by `holder` (a reservation id). See the [module docs](self).
pub(crate) async fn build(
    cache: &OfficeCache,
    source: &ObjectKey,
    spec: &TrimSpec,
    ctx: &FetchContext,
    holder: &str,
) -> Result<Built, CacheError> {
    if let Some(found) = find_built(cache, source, spec) {
        cache.pin(holder, std::slice::from_ref(&found));
        // Pinned now; still there unless evicted between the lookup and the pin.
        if cache.is_cached(&found) {
            unpin_stand_in(cache, holder, source, spec, &found);
            let empty = match cache.local_file(&found).await {
                Ok(Some(local)) => tokio::task::spawn_blocking(move || local_is_empty(&local.path))
                    .await
                    .unwrap_or(false),
                _ => false,
            };
            return Ok(Built {
                view: found,
                bytes_from_upstream: 0,
                note: empty.then(|| empty_note(source, spec)),
            });
        }
    }
    // The ranges are pinned while this build needs them, then left to LRU (also when the
    // build is dropped half-way: the reservation was released).
    let scratch = ScratchPins {
        cache,
        holder: format!("{holder}/trim/{}", spec.view_key),
    };
    build_pinned(cache, source, spec, ctx, holder, &scratch.holder).await
}

/// Once `holder` pins what stands in its view (`pinned`: the built file, or the whole log),
/// it stops pinning the planned stand-in admission counted, so that the cache's committed
/// bytes count the trimmed member once, at its real size.
fn unpin_stand_in(
    cache: &OfficeCache,
    holder: &str,
    source: &ObjectKey,
    spec: &TrimSpec,
    pinned: &ObjectKey,
) {
    let stand_in = planned_key(source, spec);
    if stand_in != *pinned {
        cache.unpin(holder, &stand_in);
    }
}

/// Unpins a build's byte ranges when dropped.
struct ScratchPins<'a> {
    cache: &'a OfficeCache,
    holder: String,
}

impl Drop for ScratchPins<'_> {
    fn drop(&mut self) {
        self.cache.unpin_all(&self.holder);
    }
}

async fn build_pinned(
    cache: &OfficeCache,
    source: &ObjectKey,
    spec: &TrimSpec,
    ctx: &FetchContext,
    holder: &str,
    scratch: &str,
) -> Result<Built, CacheError> {
    let mut upstream = 0;
    let fetch = |start: u64, len: u64| {
        cache.pin(scratch, &[OfficeCache::range_key(source, start, len)]);
        cache.fetch_range(source, start, len, ctx)
    };
    let footer_at = source.size.saturating_sub(FOOTER_READ);
    let summary = async {
        let (entry, got) = fetch(footer_at, source.size - footer_at).await?;
        upstream += got.bytes_from_upstream;
        let tail = read_entry(cache, &entry).await?;
        let footer = match trim::parse_footer(&tail, source.size) {
            Ok(footer) => footer,
            Err(err) => return Ok(Err(err)),
        };
        let start = footer.summary_start;
        let (entry, got) = fetch(start, source.size - start).await?;
        upstream += got.bytes_from_upstream;
        let region = read_entry(cache, &entry).await?;
        Ok::<_, CacheError>(trim::parse_summary(&region, &footer, source.size))
    }
    .await?;
    let window = Window {
        start_ns: spec.start_ns,
        end_ns: spec.end_ns,
    };
    let topics: BTreeSet<String> = spec.topics.iter().cloned().collect();
    let planned = summary.and_then(|summary| {
        let plan = trim::plan(&summary, window, &topics)?;
        Ok((summary, plan))
    });
    let (summary, plan) = match planned {
        Ok(planned) => planned,
        Err(err) if err.kind() == TrimErrorKind::NotIndexed => {
            let whole = cache.fetch(source, ctx, None).await?;
            cache.pin(holder, std::slice::from_ref(source));
            unpin_stand_in(cache, holder, source, spec, source);
            return Ok(Built {
                view: source.clone(),
                bytes_from_upstream: upstream + whole.bytes_from_upstream,
                note: Some(format!(
                    "{source}: {err}, so it was materialized whole ({} bytes) instead of \
                     trimmed to {}",
                    source.size, spec.view_key
                )),
            });
        }
        Err(err) => return Err(mcap_error(source, err)),
    };

    // A few at once (each is one or more ranged GETs under the cache's global limit), in
    // file order.
    let mut chunk_files = Vec::with_capacity(plan.chunks.len());
    for group in plan.chunks.chunks(CHUNK_FETCHES) {
        let fetches: Vec<_> = group
            .iter()
            .map(|chunk| fetch(chunk.chunk_start_offset, chunk.chunk_length))
            .collect();
        for (entry, got) in futures::future::try_join_all(fetches).await? {
            upstream += got.bytes_from_upstream;
            // Pinned by the scratch holder, so still cached; with the office tier, a local copy
            // kept until the trim is written.
            let local = cache
                .local_file(&entry)
                .await?
                .ok_or_else(|| CacheError::NotCached {
                    object: entry.to_string(),
                })?;
            chunk_files.push(local);
        }
    }

    let placeholder = planned_key(source, spec);
    let staging = cache.staging_path(&placeholder);
    let mut leftover = Leftover(Some(staging.clone()));
    let written = {
        let staging = staging.clone();
        tokio::task::spawn_blocking(move || write_trim(&staging, &summary, plan, &chunk_files))
            .await
            .map_err(|err| {
                CacheError::io(
                    format!("trimming {}", placeholder.key),
                    std::io::Error::other(err),
                )
            })?
    };
    let (size, messages) = match written {
        Ok(done) => done,
        Err(err) => {
            return Err(match err {
                WriteError::Trim(err) => mcap_error(source, err),
                WriteError::Io(err) => CacheError::io(format!("trimming {source}"), err),
            });
        }
    };
    let output = ObjectKey::new(
        source.bucket.clone(),
        spec.view_key.clone(),
        placeholder.etag.clone(),
        size,
    );
    cache.pin(holder, std::slice::from_ref(&output));
    unpin_stand_in(cache, holder, source, spec, &output);
    // From here the cache owns the staging file (and removes it on failure).
    leftover.0 = None;
    cache.insert_file(&output, staging).await?;
    tracing::info!(
        source = %source,
        view_key = %spec.view_key,
        messages,
        bytes = size,
        bytes_from_upstream = upstream,
        "trimmed log built"
    );
    Ok(Built {
        view: output,
        bytes_from_upstream: upstream,
        note: (messages == 0).then(|| empty_note(source, spec)),
    })
}

/// The bytes of a cached range entry (pinned by the build's scratch holder).
async fn read_entry(cache: &OfficeCache, entry: &ObjectKey) -> Result<Vec<u8>, CacheError> {
    match cache.read_cached(entry, 0, entry.size).await? {
        Some(bytes) => Ok(bytes.to_vec()),
        None => Err(CacheError::NotCached {
            object: entry.to_string(),
        }),
    }
}

/// Removes a staging file the trim wrote when the build fails or is dropped before the cache
/// takes the file over. (A file the blocking writer creates after the drop is removed at the
/// next start-up, with every staging file.) The removal is one unlink: cheap enough for a drop.
struct Leftover(Option<std::path::PathBuf>);

impl Drop for Leftover {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(err) = std::fs::remove_file(&path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove a trim's staging file");
                }
            }
        }
    }
}

enum WriteError {
    Trim(TrimError),
    Io(std::io::Error),
}

impl From<TrimError> for WriteError {
    fn from(err: TrimError) -> Self {
        Self::Trim(err)
    }
}

impl From<std::io::Error> for WriteError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// Writes the trimmed file at `staging`, reading the chunk files one at a time. Returns its
/// size and how many messages it holds. Blocking.
fn write_trim(
    staging: &std::path::Path,
    summary: &trim::SourceSummary,
    plan: trim::TrimPlan,
    chunk_files: &[LocalFile],
) -> Result<(u64, u64), WriteError> {
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(staging)?;
    let mut trimmer = Trimmer::new(BufWriter::new(file), summary, plan)?;
    let mut chunk = Vec::new();
    for local in chunk_files {
        chunk.clear();
        std::fs::File::open(&local.path)?.read_to_end(&mut chunk)?;
        trimmer.add_chunk(&chunk)?;
    }
    let (out, stats) = trimmer.finish()?;
    let mut file = out.into_inner().map_err(|err| err.into_error())?;
    let size = file.seek(SeekFrom::End(0))?;
    Ok((size, stats.messages))
}

/// Whether the trimmed file at `path` holds no message (its summary's statistics say so).
fn local_is_empty(path: &std::path::Path) -> bool {
    let read = || -> Option<bool> {
        let mut file = std::fs::File::open(path).ok()?;
        let size = file.metadata().ok()?.len();
        let mut tail = vec![0; usize::try_from(FOOTER_READ).ok()?];
        file.seek(SeekFrom::Start(size.checked_sub(FOOTER_READ)?))
            .ok()?;
        file.read_exact(&mut tail).ok()?;
        let footer = trim::parse_footer(&tail, size).ok()?;
        let mut region = Vec::new();
        file.seek(SeekFrom::Start(footer.summary_start)).ok()?;
        file.read_to_end(&mut region).ok()?;
        let summary = trim::parse_summary(&region, &footer, size).ok()?;
        Some(summary.statistics?.message_count == 0)
    };
    read().unwrap_or(false)
}
