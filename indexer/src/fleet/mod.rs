//! A deterministic synthetic fleet: drives with MCAP logs, camera and lidar blobs, and
//! simulation/benchmark runs with `metrics.parquet`, laid out as in the S3 contract:
//!
//! ```text
//! drives/<YYYY-MM-DD>/<vehicle>/<drive_id>/drive.json
//! drives/<YYYY-MM-DD>/<vehicle>/<drive_id>/logs/<drive_id>_<n>.mcap
//! drives/<YYYY-MM-DD>/<vehicle>/<drive_id>/camera/front/<frame>.jpg
//! drives/<YYYY-MM-DD>/<vehicle>/<drive_id>/lidar/<frame>.bin
//! runs/<run_id>/run.json
//! runs/<run_id>/metrics.parquet          (runs that passed or failed)
//! runs/<run_id>/outputs/...
//! ```
//!
//! [`generate`] is cheap: it plans every drive, log and run (ids, sidecars, what each MCAP log
//! will contain) without producing payloads. [`GeneratedFile::render`] then produces one file's
//! bytes on demand (a few MiB at most). The same [`FleetSpec`] always gives byte-identical
//! files: all randomness comes from ChaCha8 streams derived from `seed`, every collection that
//! reaches the output is ordered, and the MCAP writer runs single-threaded with explicit chunk
//! boundaries. (Upgrading the `mcap`, `zstd`, `lz4` or `parquet` crates may still change the
//! compressed bytes; the plans and sidecars do not depend on them.)
//!
//! Run inputs are drive ids. `metrics.parquet` rows name scenarios as `<drive_id>/<label>`;
//! the catalog derives its own scenario ids from (drive, label, span), so these strings are
//! labels for the rows, not catalog ids.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod drive;
mod log;
mod rng;
mod run;

pub use self::log::LogCompression;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSpec {
    pub seed: u64,
    pub drives: usize,
    pub runs: usize,
    /// Approximate payload bytes per drive (logs, camera and lidar blobs); each drive varies
    /// around it by ±30%.
    pub drive_bytes: u64,
    /// The bucket the files are meant for (the generator itself only produces keys).
    pub bucket: String,
    /// Key prefix of drives, `drives/` by default (a missing trailing slash is added).
    pub drives_prefix: String,
    /// Key prefix of runs, `runs/` by default.
    pub runs_prefix: String,
}

impl FleetSpec {
    /// The demo fleet: 40 drives of about 6 MiB and 20 runs, roughly 250 MiB in all.
    pub fn demo() -> Self {
        Self {
            seed: 20_251_125,
            drives: 40,
            runs: 20,
            drive_bytes: 6 * 1024 * 1024,
            bucket: "fleet".into(),
            drives_prefix: "drives/".into(),
            runs_prefix: "runs/".into(),
        }
    }

    /// A small fleet for tests: 6 drives of about 1.5 MiB and 3 runs.
    pub fn small(seed: u64) -> Self {
        Self {
            seed,
            drives: 6,
            runs: 3,
            drive_bytes: 1536 * 1024,
            ..Self::demo()
        }
    }
}

/// A planned fleet. Files are listed, not rendered: see [`GeneratedFile::render`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub spec: FleetSpec,
    pub drives: Vec<GeneratedDrive>,
    pub runs: Vec<GeneratedRun>,
}

impl Fleet {
    /// Every file of the fleet: each drive's files, then each run's.
    pub fn files(&self) -> impl Iterator<Item = &GeneratedFile> {
        self.drives
            .iter()
            .flat_map(|d| d.files.iter())
            .chain(self.runs.iter().flat_map(|r| r.files.iter()))
    }

    /// The bytes of one file of this fleet (same as [`GeneratedFile::render`]).
    pub fn render(&self, file: &GeneratedFile) -> Result<Bytes, FleetError> {
        file.render()
    }

    /// Sum of the files' size hints.
    pub fn approx_bytes(&self) -> u64 {
        self.files().map(|f| f.size_hint).sum()
    }
}

/// One road-test drive.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedDrive {
    pub id: String,
    pub vehicle: String,
    pub city: String,
    pub weather: String,
    pub software_version: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// `drives/<YYYY-MM-DD>/<vehicle>/<drive_id>/`.
    pub prefix: String,
    /// The content of `drive.json`.
    pub sidecar: serde_json::Value,
    /// `drive.json` first, then logs, camera frames, lidar frames.
    pub files: Vec<GeneratedFile>,
    /// What each MCAP log's summary must say, in the order of the logs in `files`.
    pub expected: Vec<ExpectedMcap>,
}

/// What the summary of a generated MCAP log contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedMcap {
    pub key: String,
    /// `(topic, schema_name, message_count)`, sorted by topic.
    pub topics: Vec<(String, String, u64)>,
    pub message_count: u64,
    pub start_time_ns: u64,
    pub end_time_ns: u64,
    pub chunk_count: u64,
    pub compression: LogCompression,
}

/// A simulation, benchmark or SIL run.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedRun {
    pub id: String,
    /// `simulation`, `benchmark` or `sil`.
    pub kind: String,
    /// `running`, `passed`, `failed` or `error`.
    pub status: String,
    /// `runs/<run_id>/`.
    pub prefix: String,
    /// The content of `run.json`.
    pub sidecar: serde_json::Value,
    /// `(scenario_id, metric, value)` rows of `metrics.parquet`, in file order; empty when the
    /// run has no `metrics.parquet`.
    pub metrics_rows: Vec<(String, String, f64)>,
    /// `run.json` first, then `metrics.parquet` (if any), then outputs.
    pub files: Vec<GeneratedFile>,
}

/// What a generated file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// `drive.json`.
    Sidecar,
    Mcap,
    Camera,
    Lidar,
    /// `run.json`.
    RunJson,
    MetricsParquet,
    RunOutput,
}

/// One object of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedFile {
    /// The full key, prefix included.
    pub key: String,
    /// Exact size for sidecars and blobs, an estimate for MCAP logs and Parquet files.
    pub size_hint: u64,
    pub kind: FileKind,
    recipe: Recipe,
}

impl GeneratedFile {
    /// Produces the file's bytes; the same file always gives the same bytes.
    pub fn render(&self) -> Result<Bytes, FleetError> {
        match &self.recipe {
            Recipe::Inline(bytes) => Ok(bytes.clone()),
            Recipe::Blob { seed, len, format } => Ok(drive::render_blob(*seed, *len, *format)),
            Recipe::Mcap(spec) => log::render(spec),
            Recipe::Metrics { rows, zstd } => run::render_metrics(rows, *zstd),
        }
    }
}

/// How a file's bytes are produced.
#[derive(Debug, Clone, PartialEq)]
enum Recipe {
    /// Small files rendered while planning (sidecars, reports).
    Inline(Bytes),
    Blob {
        seed: u64,
        len: u64,
        format: BlobFormat,
    },
    Mcap(Box<log::LogSpec>),
    Metrics {
        rows: Vec<(String, String, f64)>,
        zstd: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobFormat {
    /// JPEG markers around random bytes.
    Jpeg,
    /// Random `f32` points (x, y, z, intensity).
    Points,
    /// Random bytes.
    Raw,
}

/// Rendering failed; only an encoder bug can cause it (everything is written to memory).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rendering {what} failed: {message}")]
pub struct FleetError {
    what: String,
    message: String,
}

impl FleetError {
    fn new(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// Plans the fleet of `spec`. Cheap: no payload is produced.
pub fn generate(spec: &FleetSpec) -> Fleet {
    let drives_prefix = with_slash(&spec.drives_prefix);
    let runs_prefix = with_slash(&spec.runs_prefix);
    let drives = drive::plan_drives(spec, &drives_prefix);
    let runs = run::plan_runs(spec, &runs_prefix, &drives);
    Fleet {
        spec: spec.clone(),
        drives,
        runs,
    }
}

fn with_slash(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// RFC 3339 with seconds and `Z`.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn inline_json(value: &serde_json::Value) -> Bytes {
    // Serializing a `Value` to memory cannot fail.
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}
