//! `bench_search`: search over a generated catalog of (by default) 1,000,000 documents.
//!
//! ```text
//! cargo build --release -p milepost-tests --bins
//! target/release/bench_search [--docs N] [--seed S] [--rounds R] [--dir PATH]
//!                             [--no-db] [--no-graphql] [--no-settle]
//! ```
//!
//! 1. Generates `--docs` catalog documents (20% drives, 70% scenarios, 10% runs; 50 vehicles,
//!    8 cities, 5 weathers, 30 tags, 12 software versions, 16 scenario labels, 12 topics, a year
//!    of start times), deterministic by `--seed`, straight into a [`SearchIndex`] on disk with
//!    one `rebuild` (the `milepost reindex` path): build throughput includes the final commit.
//! 2. Runs a fixed mix of typical queries (free text + two field filters; every search counts
//!    all six facets over all its matches and returns the first 20 hits) after a warm-up:
//!    p50/p95/p99/max per query and overall, on the index as built, then again after tantivy's
//!    background merges settled and the index was reopened (what a restarted server sees).
//! 3. Inserts the same drives, scenarios and runs into a SQLite catalog database (batched
//!    `insert_many` of 500), timed separately: it is not part of the index build figure.
//! 4. Serves that data directory with the real GraphQL server and times the same queries
//!    end to end (HTTP, GraphQL, hits resolved from the database).
//!
//! Peak RSS is the process's `VmHWM`, reset before each phase where the kernel allows it.
//!
//! (Over 600 lines: a benchmark program: the catalog generator, the measured runs and the report in one command.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, TimeZone, Utc};
use milepost_api::config::{Config, Interval, ListenAddr};
use milepost_api::server::{self, AppState};
use milepost_indexer::search::{EntityKind, SearchDocument, SearchIndex, SearchRequest};
use milepost_schema::entity::{drive, run, scenario};
use milepost_schema::enums::{RecordSource, Role, RunKind, RunStatus};
use sea_orm::{DatabaseConnection, EntityTrait, Set, TransactionTrait};
use serde_json::{json, Value};

use milepost_tests::search_mix::QUERIES;

const PAGE: usize = 20;
const DB_BATCH: usize = 500;
const BUCKET: &str = "fleet";

struct Args {
    docs: usize,
    seed: u64,
    rounds: usize,
    dir: Option<PathBuf>,
    db: bool,
    graphql: bool,
    /// Only search an index built earlier in `--dir` (the second half of a full run, in a
    /// fresh process so its peak RSS is the searcher's own).
    search_only: bool,
    /// With `--search-only`: run only this query, `--rounds` times (for profiling).
    only: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        docs: 1_000_000,
        seed: 20_261_125,
        rounds: 2_000usize.div_ceil(QUERIES.len()),
        dir: None,
        db: true,
        graphql: true,
        search_only: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--docs" => args.docs = value("--docs")?.replace('_', "").parse()?,
            "--seed" => args.seed = value("--seed")?.parse()?,
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            "--no-db" => {
                args.db = false;
                args.graphql = false;
            }
            "--no-graphql" => args.graphql = false,
            "--search-only" => args.search_only = true,
            "--only" => args.only = Some(value("--only")?),
            "-h" | "--help" => {
                println!(
                    "bench_search [--docs N] [--seed S] [--rounds R] [--dir PATH] [--no-db] [--no-graphql]\n\
                     bench_search --search-only --dir PATH [--rounds R] [--no-graphql] [--only QUERY]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.docs < 10 {
        bail!("--docs must be at least 10");
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// Deterministic generator.

/// SplitMix64: tiny, fast, and the same on every platform and crate version.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
    /// `min..=max` distinct indexes below `n`, sorted.
    fn sample(&mut self, n: usize, min: usize, max: usize) -> Vec<usize> {
        let k = self.range(min as u64, max.min(n) as u64) as usize;
        let mut out = BTreeSet::new();
        while out.len() < k {
            out.insert(self.below(n as u64) as usize);
        }
        out.into_iter().collect()
    }
    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

/// (city, vehicle code, vehicles, snow possible, routes)
const CITIES: &[(&str, &str, u64, bool, &[&str])] = &[
    (
        "guangzhou",
        "gz",
        7,
        false,
        &["tianhe-loop", "baiyun-airport-expressway", "pazhou-urban"],
    ),
    (
        "shenzhen",
        "sz",
        7,
        false,
        &["nanshan-tech-park", "futian-cbd", "binhai-avenue"],
    ),
    (
        "shanghai",
        "sh",
        6,
        false,
        &["pudong-inner-ring", "yanan-elevated", "lingang-highway"],
    ),
    (
        "beijing",
        "bj",
        6,
        true,
        &["third-ring", "yizhuang-demo-zone", "jingcheng-expressway"],
    ),
    (
        "munich",
        "mu",
        6,
        true,
        &["mittlerer-ring", "a9-freising", "schwabing-urban"],
    ),
    (
        "san-francisco",
        "sf",
        6,
        false,
        &["embarcadero", "us-101-south", "mission-district"],
    ),
    (
        "hangzhou",
        "hz",
        6,
        false,
        &["west-lake-loop", "binjiang-urban", "hangzhou-bay-bridge"],
    ),
    (
        "stuttgart",
        "st",
        6,
        true,
        &["b14-tunnel", "a8-leonberg", "vaihingen-campus"],
    ),
];
const CITY_WEIGHTS: &[u64] = &[22, 18, 16, 12, 10, 8, 8, 6];
const WEATHERS: &[&str] = &["clear", "rain", "fog", "night", "snow"];
const WEATHER_WEIGHTS: &[u64] = &[40, 22, 10, 20, 8];
/// 24 drive tags (the first two are the road type), then 6 scenario tags: 30 in all.
const DRIVE_TAGS: &[&str] = &[
    "highway",
    "urban",
    "rush-hour",
    "construction",
    "tunnel",
    "school-zone",
    "roundabout",
    "bridge",
    "toll-gate",
    "parking-lot",
    "dense-traffic",
    "night",
    "wet-road",
    "low-visibility",
    "winter",
    "rural",
    "intersection-heavy",
    "ramp",
    "gravel",
    "sun-glare",
    "data-collection",
    "regression",
    "customer-route",
    "map-update",
];
const SCENARIO_TAGS: &[&str] = &[
    "occluded",
    "vru",
    "high-speed",
    "low-speed",
    "aggressive-agent",
    "near-miss",
];
const SOFTWARE: &[&str] = &[
    "av-3.12.0",
    "av-3.12.1",
    "av-3.12.2",
    "av-3.12.3",
    "av-3.13.0",
    "av-3.13.1",
    "av-3.13.2",
    "av-3.13.3",
    "av-3.14.0",
    "av-3.14.1",
    "av-3.14.2",
    "av-3.14.3",
];
const SOFTWARE_WEIGHTS: &[u64] = &[3, 3, 4, 4, 6, 7, 8, 9, 12, 14, 15, 15];
const SCENARIOS: &[&str] = &[
    "cut-in",
    "pedestrian-crossing",
    "unprotected-left-turn",
    "lane-merge",
    "cyclist-overtake",
    "emergency-vehicle",
    "jaywalker",
    "stalled-vehicle",
    "roundabout-entry",
    "highway-exit",
    "construction-zone",
    "school-bus-stop",
    "u-turn",
    "traffic-light-violation",
    "animal-on-road",
    "tailgating",
];
const SCENARIO_WEIGHTS: &[u64] = &[14, 12, 10, 10, 8, 4, 6, 6, 6, 6, 5, 2, 3, 3, 1, 4];
const DESCRIPTIONS: &[&str] = &[
    "lead vehicle cut-in at short distance",
    "pedestrian crossing against the light",
    "unprotected left turn with oncoming traffic",
    "lane merge before the tunnel entrance",
    "emergency vehicle approaching from behind",
    "cyclist overtaken with less than a meter",
    "stalled truck blocking the right lane",
    "ego yields late at the roundabout",
];
const EVENTS: &[(&str, &[&str])] = &[
    (
        "disengagement",
        &[
            "planner timeout near construction zone",
            "safety driver disengaged at merge",
            "localization drift",
        ],
    ),
    (
        "hard_brake",
        &[
            "hard brake for cut-in vehicle",
            "hard brake for pedestrian",
            "hard brake at yellow light",
        ],
    ),
    (
        "takeover",
        &[
            "driver takeover in unprotected left turn",
            "driver takeover behind double-parked truck",
        ],
    ),
    (
        "near_miss",
        &["cyclist passed within 0.8 m", "vehicle ran red light"],
    ),
    (
        "lane_departure",
        &[
            "lane departure on worn markings",
            "lane departure in tunnel",
        ],
    ),
];
/// (topic, presence)
const TOPICS: &[(&str, f64)] = &[
    ("/can/vehicle_state", 1.0),
    ("/localization/pose", 1.0),
    ("/lidar/points", 0.9),
    ("/camera/front/image_compressed", 0.95),
    ("/camera/rear/image_compressed", 0.5),
    ("/camera/left/image_compressed", 0.4),
    ("/camera/right/image_compressed", 0.4),
    ("/radar/front", 0.6),
    ("/perception/objects", 0.85),
    ("/planning/trajectory", 0.8),
    ("/control/command", 0.7),
    ("/diagnostics", 0.3),
];
const OPERATORS: &[&str] = &[
    "li.wei",
    "chen.jing",
    "m.huber",
    "a.garcia",
    "zhang.min",
    "s.kowalski",
];
const PIPELINES: &[&str] = &[
    "perception-regression",
    "planner-replay",
    "closed-loop-sim",
    "sensor-fusion-bench",
    "nightly-sil",
];
const RUN_TAGS: &[&str] = &["nightly", "release-gate", "regression", "ablation", "smoke"];

/// The catalog's documents in a deterministic order: each drive, then its scenarios, with a
/// run after every other drive.
struct Generator {
    rng: Rng,
    drives: usize,
    runs: usize,
    drive_index: usize,
    scenarios_left: usize,
    runs_left: usize,
    start: DateTime<Utc>,
    spacing_secs: u64,
    queue: std::collections::VecDeque<SearchDocument>,
}

/// End times are not indexed; the database needs them. Derived from the id, so the database
/// pass can recompute them without storing anything.
fn duration_secs(id: &str) -> i64 {
    let mut h: u64 = 1469598103934665603;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    (20 * 60 + h % (70 * 60)) as i64
}

impl Generator {
    fn new(total: usize, seed: u64) -> Self {
        let drives = (total / 5).max(1);
        let runs = total / 10;
        let scenarios = total - drives - runs;
        let start = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
        Generator {
            rng: Rng::new(seed),
            drives,
            runs,
            drive_index: 0,
            scenarios_left: scenarios,
            runs_left: runs,
            start,
            spacing_secs: (365 * 86_400 / drives as u64).max(1),
            queue: std::collections::VecDeque::new(),
        }
    }

    fn plan_drive(&mut self) {
        let i = self.drive_index;
        self.drive_index += 1;
        let rng = &mut self.rng;
        let (city, code, vehicles, snowy, routes) = CITIES[rng.weighted(CITY_WEIGHTS)];
        let vehicle = format!("{code}-{:03}", rng.range(1, vehicles));
        let mut weather = WEATHERS[rng.weighted(WEATHER_WEIGHTS)];
        if weather == "snow" && !snowy {
            weather = "clear";
        }
        let software = SOFTWARE[rng.weighted(SOFTWARE_WEIGHTS)];
        let highway = rng.chance(0.4);
        // Unique start second per drive: drives are spaced over the year, jittered within
        // their slot.
        let at = self.start
            + chrono::Duration::seconds(
                (i as u64 * self.spacing_secs + rng.below(self.spacing_secs)) as i64,
            );
        let id = format!("{vehicle}-{}", at.format("%Y%m%d-%H%M%S"));

        let mut tags: BTreeSet<&str> = BTreeSet::new();
        tags.insert(if highway { "highway" } else { "urban" });
        for t in rng.sample(DRIVE_TAGS.len() - 2, 1, 4) {
            tags.insert(DRIVE_TAGS[t + 2]);
        }
        match weather {
            "night" => tags.insert("night"),
            "rain" => tags.insert("wet-road"),
            "fog" => tags.insert("low-visibility"),
            "snow" => tags.insert("winter"),
            _ => false,
        };
        let topics: Vec<String> = TOPICS
            .iter()
            .filter(|(_, p)| rng.chance(*p))
            .map(|(t, _)| (*t).to_owned())
            .collect();

        // Scenarios: 1..=6 per drive (3.5 on average), the total fixed by the mix.
        let drives_left = self.drives - i - 1;
        let lo = self.scenarios_left.saturating_sub(6 * drives_left).max(1);
        let hi = self.scenarios_left.saturating_sub(drives_left).min(6);
        let count = if drives_left == 0 {
            self.scenarios_left
        } else if lo >= hi {
            hi.min(self.scenarios_left)
        } else {
            rng.range(lo as u64, hi as u64) as usize
        };
        self.scenarios_left -= count;

        let mut labels: BTreeSet<String> = BTreeSet::new();
        for _ in 0..rng.below(5) {
            let (kind, texts) = rng.pick(EVENTS);
            labels.insert((*kind).to_owned());
            labels.insert((*rng.pick(texts)).to_owned());
        }
        let duration = duration_secs(&id) as u64;
        let mut scenario_docs = Vec::with_capacity(count);
        for k in 0..count {
            let label = SCENARIOS[rng.weighted(SCENARIO_WEIGHTS)];
            labels.insert(label.to_owned());
            let offset = rng.below(duration.saturating_sub(90).max(1));
            let mut stags: Vec<String> = rng
                .sample(SCENARIO_TAGS.len(), 0, 2)
                .into_iter()
                .map(|t| SCENARIO_TAGS[t].to_owned())
                .collect();
            if weather != "clear" {
                stags.push(weather.to_owned());
            }
            if weather == "night" || rng.chance(0.1) {
                stags.push("night".to_owned());
            }
            let mut doc = SearchDocument::new(
                EntityKind::Scenario,
                format!("sc-{:016x}", Rng::new(((i as u64) << 8) | k as u64).next()),
                label,
            );
            doc.vehicle = Some(vehicle.clone());
            doc.city = Some(city.to_owned());
            doc.route = Some(format!("{code}-{}", routes[k % routes.len()]));
            doc.weather = Some(weather.to_owned());
            doc.software = Some(software.to_owned());
            doc.tags = stags;
            doc.labels = vec![label.to_owned()];
            doc.topics = topics.clone();
            doc.description = rng
                .chance(0.3)
                .then(|| (*rng.pick(DESCRIPTIONS)).to_owned());
            doc.time = Some(at + chrono::Duration::seconds(offset as i64));
            doc.drive_id = Some(id.clone());
            scenario_docs.push(doc);
        }

        let mut doc = SearchDocument::new(
            EntityKind::Drive,
            id.clone(),
            format!("{vehicle} {city} {}", at.format("%Y-%m-%d")),
        );
        doc.vehicle = Some(vehicle);
        doc.city = Some(city.to_owned());
        doc.route = Some(format!("{code}-{}", rng.pick(routes)));
        doc.weather = Some(weather.to_owned());
        doc.software = Some(software.to_owned());
        doc.tags = tags.into_iter().map(str::to_owned).collect();
        doc.labels = labels.into_iter().collect();
        doc.topics = topics;
        doc.extra_text = vec![
            format!("operator {}", rng.pick(OPERATORS)),
            format!("hardware_rev hw-r{}", rng.range(3, 5)),
        ];
        doc.time = Some(at);
        doc.size_bytes = Some(rng.range(2 << 30, 80 << 30) as i64);
        self.queue.push_back(doc);
        self.queue.extend(scenario_docs);

        // A run after every other drive, until the runs are spent (the last drive takes the
        // rest).
        let mut runs = usize::from(i % 2 == 1 && self.runs_left > 0);
        if drives_left == 0 {
            runs = self.runs_left;
        }
        for _ in 0..runs {
            let doc = self.plan_run(at);
            self.queue.push_back(doc);
        }
    }

    fn plan_run(&mut self, near: DateTime<Utc>) -> SearchDocument {
        self.runs_left -= 1;
        let n = self.runs - self.runs_left;
        let rng = &mut self.rng;
        let kind = ["simulation", "benchmark", "sil"][rng.weighted(&[60, 25, 15])];
        let pipeline = *rng.pick(PIPELINES);
        let status = ["passed", "failed", "error", "running"][rng.weighted(&[70, 20, 7, 3])];
        let mut doc = SearchDocument::new(
            EntityKind::Run,
            format!("run-{kind}-{n:07}"),
            format!("{kind} run {pipeline}"),
        );
        doc.pipeline = Some(pipeline.to_owned());
        doc.commit = Some(rng.hex(12));
        doc.status = Some(status.to_owned());
        doc.tags = rng
            .sample(RUN_TAGS.len(), 1, 2)
            .into_iter()
            .map(|t| RUN_TAGS[t].to_owned())
            .collect();
        doc.labels = vec![kind.to_owned()];
        doc.extra_text = vec![format!("gpu {}", rng.pick(&["a100", "h100", "l40s"]))];
        doc.time = Some(near + chrono::Duration::seconds(rng.range(3600, 7 * 86_400) as i64));
        doc.size_bytes = Some(rng.range(1 << 20, 4 << 30) as i64);
        doc
    }
}

impl Iterator for Generator {
    type Item = SearchDocument;

    fn next(&mut self) -> Option<SearchDocument> {
        loop {
            if let Some(doc) = self.queue.pop_front() {
                return Some(doc);
            }
            if self.drive_index >= self.drives {
                return None;
            }
            self.plan_drive();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5); false when not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Segments (and their documents) that the last published `meta.json` lists.
fn segments(dir: &Path) -> Vec<u64> {
    let meta: Value = std::fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    meta["segments"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["max_doc"].as_u64()).collect())
        .unwrap_or_default()
}

/// Waits until `meta.json` has not changed for `quiet`, at most `limit`.
fn wait_for_merges(dir: &Path, quiet: Duration, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = std::fs::read(dir.join("meta.json")).unwrap_or_default();
    let mut since = Instant::now();
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250));
        let now = std::fs::read(dir.join("meta.json")).unwrap_or_default();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Prints one markdown table of latencies: a row per query, then overall.
fn print_table(title: &str, samples: &[Vec<Duration>], totals: &[usize]) {
    println!("\n{title}\n");
    println!("| query | matches | p50 ms | p95 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut all: Vec<Duration> = Vec::new();
    let mut non_empty: Vec<Duration> = Vec::new();
    for (i, (name, query)) in QUERIES.iter().enumerate() {
        let mut s = samples[i].clone();
        s.sort();
        all.extend(&s);
        if !query.is_empty() {
            non_empty.extend(&s);
        }
        let shown = if query.is_empty() {
            "(empty)".to_owned()
        } else {
            format!("`{}`", query.replace('|', "\\|"))
        };
        println!(
            "| {name}: {shown} | {} | {} | {} | {} | {} |",
            totals[i],
            ms(percentile(&s, 50.0)),
            ms(percentile(&s, 95.0)),
            ms(percentile(&s, 99.0)),
            ms(s.last().copied().unwrap_or_default()),
        );
    }
    non_empty.sort();
    println!(
        "| all but the empty query ({} searches) | | {} | {} | {} | {} |",
        non_empty.len(),
        ms(percentile(&non_empty, 50.0)),
        ms(percentile(&non_empty, 95.0)),
        ms(percentile(&non_empty, 99.0)),
        ms(non_empty.last().copied().unwrap_or_default()),
    );
    all.sort();
    println!(
        "| **all {} searches** | | **{}** | **{}** | **{}** | **{}** |",
        all.len(),
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 95.0)),
        ms(percentile(&all, 99.0)),
        ms(all.last().copied().unwrap_or_default()),
    );
}

/// Warm-up, then `rounds` round-robin passes over [`QUERIES`]; latency per search.
fn run_direct(
    index: &SearchIndex,
    rounds: usize,
) -> anyhow::Result<(Vec<Vec<Duration>>, Vec<usize>)> {
    let request = |q: &str| SearchRequest {
        query: q.to_owned(),
        kinds: None,
        first: PAGE,
        after: None,
    };
    let mut totals = vec![0; QUERIES.len()];
    for _ in 0..5 {
        for (i, (_, q)) in QUERIES.iter().enumerate() {
            let page = index
                .search(&request(q))
                .with_context(|| format!("query {q:?}"))?;
            totals[i] = page.total;
            if page.hits.len() != page.total.min(PAGE) || page.facets.len() != 6 {
                bail!("query {q:?}: unexpected page shape");
            }
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); QUERIES.len()];
    for _ in 0..rounds {
        for (i, (_, q)) in QUERIES.iter().enumerate() {
            let request = request(q);
            let t = Instant::now();
            let page = index.search(&request)?;
            samples[i].push(t.elapsed());
            std::hint::black_box(page);
        }
    }
    Ok((samples, totals))
}

// ---------------------------------------------------------------------------------------------
// Database.

fn json_list(values: &[String]) -> Value {
    json!(values)
}

fn drive_model(doc: &SearchDocument, now: DateTime<Utc>) -> drive::ActiveModel {
    let started_at = doc.time.unwrap_or(now);
    let vehicle = doc.vehicle.clone().unwrap_or_default();
    let mut extra = serde_json::Map::new();
    for text in &doc.extra_text {
        if let Some((key, value)) = text.split_once(' ') {
            extra.insert(key.to_owned(), json!(value));
        }
    }
    drive::ActiveModel {
        id: Set(doc.id.clone()),
        vehicle: Set(vehicle.clone()),
        city: Set(doc.city.clone()),
        route: Set(doc.route.clone()),
        started_at: Set(started_at),
        ended_at: Set(started_at + chrono::Duration::seconds(duration_secs(&doc.id))),
        distance_km: Set(Some(12.5)),
        software_version: Set(doc.software.clone()),
        weather: Set(doc.weather.clone()),
        tags: Set(json_list(&doc.tags)),
        extra: Set(Value::Object(extra)),
        topics: Set(json_list(&doc.topics)),
        bucket: Set(BUCKET.to_owned()),
        prefix: Set(format!(
            "drives/{}/{vehicle}/{}/",
            started_at.format("%Y-%m-%d"),
            doc.id
        )),
        source: Set(RecordSource::Sidecar),
        sidecar_etag: Set(Some(format!("{:032x}", duration_secs(&doc.id)))),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

fn scenario_model(doc: &SearchDocument, now: DateTime<Utc>) -> scenario::ActiveModel {
    let start = doc.time.unwrap_or(now);
    scenario::ActiveModel {
        id: Set(doc.id.clone()),
        drive_id: Set(doc.drive_id.clone().unwrap_or_default()),
        label: Set(doc.title.clone()),
        tags: Set(json_list(&doc.tags)),
        start_time: Set(start),
        end_time: Set(start + chrono::Duration::seconds(30)),
        description: Set(doc.description.clone()),
        source: Set(RecordSource::Sidecar),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

fn run_model(doc: &SearchDocument, now: DateTime<Utc>) -> run::ActiveModel {
    let kind = match doc.labels.first().map(String::as_str) {
        Some("benchmark") => RunKind::Benchmark,
        Some("sil") => RunKind::Sil,
        _ => RunKind::Simulation,
    };
    let status = match doc.status.as_deref() {
        Some("failed") => RunStatus::Failed,
        Some("error") => RunStatus::Error,
        Some("running") => RunStatus::Running,
        _ => RunStatus::Passed,
    };
    let mut extra = serde_json::Map::new();
    for text in &doc.extra_text {
        if let Some((key, value)) = text.split_once(' ') {
            extra.insert(key.to_owned(), json!(value));
        }
    }
    run::ActiveModel {
        id: Set(doc.id.clone()),
        kind: Set(kind),
        pipeline: Set(doc.pipeline.clone().unwrap_or_default()),
        commit: Set(doc.commit.clone()),
        status: Set(status),
        started_at: Set(doc.time),
        finished_at: Set(doc.time.map(|t| t + chrono::Duration::minutes(40))),
        tags: Set(json_list(&doc.tags)),
        metrics: Set(None),
        extra: Set(Value::Object(extra)),
        bucket: Set(BUCKET.to_owned()),
        prefix: Set(format!("runs/{}/", doc.id)),
        source: Set(RecordSource::Sidecar),
        sidecar_etag: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// Inserts every generated document into the catalog tables, 500 rows per statement and
/// 20 statements per transaction. Returns (drives, scenarios, runs).
async fn fill_database(
    db: &DatabaseConnection,
    docs: usize,
    seed: u64,
) -> anyhow::Result<(usize, usize, usize)> {
    let now = Utc::now();
    let mut drives = Vec::with_capacity(DB_BATCH);
    let mut scenarios = Vec::with_capacity(DB_BATCH);
    let mut runs = Vec::with_capacity(DB_BATCH);
    let mut counts = (0, 0, 0);
    let mut txn = db.begin().await?;
    let mut statements = 0;
    for doc in Generator::new(docs, seed) {
        match doc.kind {
            EntityKind::Drive => {
                drives.push(drive_model(&doc, now));
                counts.0 += 1;
            }
            EntityKind::Scenario => {
                scenarios.push(scenario_model(&doc, now));
                counts.1 += 1;
            }
            _ => {
                runs.push(run_model(&doc, now));
                counts.2 += 1;
            }
        }
        // Scenarios reference their drive: drives are always flushed first.
        let flush_drives = drives.len() >= DB_BATCH || scenarios.len() >= DB_BATCH;
        if flush_drives && !drives.is_empty() {
            drive::Entity::insert_many(std::mem::take(&mut drives))
                .exec_without_returning(&txn)
                .await?;
            statements += 1;
        }
        if scenarios.len() >= DB_BATCH {
            scenario::Entity::insert_many(std::mem::take(&mut scenarios))
                .exec_without_returning(&txn)
                .await?;
            statements += 1;
        }
        if runs.len() >= DB_BATCH {
            run::Entity::insert_many(std::mem::take(&mut runs))
                .exec_without_returning(&txn)
                .await?;
            statements += 1;
        }
        if statements >= 20 {
            txn.commit().await?;
            txn = db.begin().await?;
            statements = 0;
        }
    }
    if !drives.is_empty() {
        drive::Entity::insert_many(drives)
            .exec_without_returning(&txn)
            .await?;
    }
    if !scenarios.is_empty() {
        scenario::Entity::insert_many(scenarios)
            .exec_without_returning(&txn)
            .await?;
    }
    if !runs.is_empty() {
        run::Entity::insert_many(runs)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// GraphQL.

const SEARCH_GQL: &str = "query($q: String!) { search(query: $q, first: 20) { totalCount \
    edges { cursor score node { __typename ... on Drive { id } ... on Scenario { id } \
    ... on Run { id } } } pageInfo { hasNextPage endCursor } \
    facets { field values { value count } } } }";

async fn run_graphql(
    data_dir: &Path,
    rounds: usize,
) -> anyhow::Result<(Vec<Vec<Duration>>, Vec<usize>, Duration)> {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.server.listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.server.s3_listen = ListenAddr(([127, 0, 0, 1], 0).into());
    config.catalog.sync_interval = Interval(None);
    config.catalog.bucket = BUCKET.to_owned();
    let upstream = milepost_api::server::upstream_settings(&config);
    let opened = Instant::now();
    let state = AppState::open_with_upstream(config, upstream).await?;
    let open_time = opened.elapsed();
    let token = milepost_api::auth::create_token(&state.db, "bench", Role::Viewer).await?;
    let running = server::start_with_state(state).await?;
    let url = format!("http://{}/graphql", running.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let post = |q: &str| {
        client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({ "query": SEARCH_GQL, "variables": { "q": q } }))
            .send()
    };
    let mut totals = vec![0; QUERIES.len()];
    for _ in 0..3 {
        for (i, (_, q)) in QUERIES.iter().enumerate() {
            let body: Value = post(q).await?.json().await?;
            let search = &body["data"]["search"];
            let edges = search["edges"].as_array().map_or(0, Vec::len);
            let total = search["totalCount"].as_u64().unwrap_or(0) as usize;
            if body.get("errors").is_some() || edges != total.min(PAGE) {
                bail!("query {q:?}: {body}");
            }
            totals[i] = total;
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); QUERIES.len()];
    for _ in 0..rounds {
        for (i, (_, q)) in QUERIES.iter().enumerate() {
            let t = Instant::now();
            let response = post(q).await?;
            let body = response.bytes().await?;
            samples[i].push(t.elapsed());
            std::hint::black_box(body);
        }
    }
    running.shutdown().await?;
    Ok((samples, totals, open_time))
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.search_only {
        return search_only(&args);
    }
    let temp = tempfile::tempdir()?;
    let data_dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let index_dir = data_dir.join("search-index");
    if index_dir.exists() {
        bail!(
            "{} exists: bench_search builds a fresh index (pick an empty --dir, or --search-only)",
            index_dir.display()
        );
    }
    println!(
        "bench_search: {} documents, seed {}, {} rounds of {} queries, data in {}",
        args.docs,
        args.seed,
        args.rounds,
        QUERIES.len(),
        data_dir.display()
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m
                .lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")))
            .unwrap_or_default()
    );

    // Generation alone, so the build figure can be read without it.
    let t = Instant::now();
    let mut mix = [0usize; 3];
    for doc in Generator::new(args.docs, args.seed) {
        mix[match doc.kind {
            EntityKind::Drive => 0,
            EntityKind::Scenario => 1,
            _ => 2,
        }] += 1;
    }
    let generation = t.elapsed();
    println!(
        "generated {} drives, {} scenarios, {} runs in {:.2} s (generation alone: {:.0} docs/s)",
        mix[0],
        mix[1],
        mix[2],
        generation.as_secs_f64(),
        args.docs as f64 / generation.as_secs_f64()
    );

    // 1. Build: one rebuild (the `milepost reindex` path), generation and final commit included.
    let rss_reset = reset_peak_rss();
    let index = SearchIndex::open(&index_dir)?;
    let t = Instant::now();
    let count = index.rebuild(Generator::new(args.docs, args.seed))?;
    let build = t.elapsed();
    if count != args.docs {
        bail!("index holds {count} documents, expected {}", args.docs);
    }
    let built_segments = segments(&index_dir);
    println!(
        "index build: {count} documents in {:.2} s = {:.0} documents/s; {} segments at the commit; {:.0} MiB on disk; peak RSS {:.0} MiB{}",
        build.as_secs_f64(),
        count as f64 / build.as_secs_f64(),
        built_segments.len(),
        dir_bytes(&index_dir) as f64 / (1 << 20) as f64,
        peak_rss_mib(),
        if rss_reset { "" } else { " (since process start)" }
    );
    // tantivy merges segments in the background after the commit; let it finish so it does not
    // compete with the searches.
    let waited = wait_for_merges(&index_dir, Duration::from_secs(5), Duration::from_secs(600));
    let merged = segments(&index_dir);
    println!(
        "background merges settled {:.0} s after the commit: {} segments {:?}; {:.0} MiB on disk",
        waited.as_secs_f64().max(5.0) - 5.0,
        merged.len(),
        merged,
        dir_bytes(&index_dir) as f64 / (1 << 20) as f64
    );

    // 2a. Searches on the live index: its reader still sees the segments of the commit
    // (ReloadPolicy::Manual: merged segments show only after the next write or a reopen).
    let (samples, totals) = run_direct(&index, args.rounds)?;
    print_table(
        &format!(
            "direct SearchIndex::search on the index just built (reader on the {} segments of the commit), first={PAGE}, 6 facets",
            built_segments.len(),
        ),
        &samples,
        &totals,
    );
    drop(index);

    // 3. Database, timed apart from the index.
    if args.db {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let url = format!("sqlite://{}", data_dir.join("catalog.db").display());
        let t = Instant::now();
        let (drives, scenarios, runs) = rt.block_on(async {
            let db = milepost_schema::connect(&url).await?;
            milepost_schema::migrate(&db).await?;
            let counts = fill_database(&db, args.docs, args.seed).await?;
            db.close().await?;
            anyhow::Ok(counts)
        })?;
        let took = t.elapsed();
        println!(
            "\ndatabase: {drives} drives, {scenarios} scenarios, {runs} runs into SQLite in {:.1} s = {:.0} rows/s \
             (insert_many of {DB_BATCH}, generation included; not part of the index build figure); {:.0} MiB",
            took.as_secs_f64(),
            args.docs as f64 / took.as_secs_f64(),
            ["catalog.db", "catalog.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
                .map(|m| m.len() as f64)
                .sum::<f64>()
                / (1 << 20) as f64
        );
    }

    // 2b and 4: a fresh process opens what is on disk, as a restarted server would.
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child
        .arg("--search-only")
        .arg("--dir")
        .arg(&data_dir)
        .arg("--rounds")
        .arg(args.rounds.to_string());
    if !args.graphql {
        child.arg("--no-graphql");
    }
    let status = child.status()?;
    if !status.success() {
        bail!("the search process failed: {status}");
    }
    drop(temp);
    Ok(())
}

/// Searches an index (and, when there, a catalog database) built earlier in `--dir`.
fn search_only(args: &Args) -> anyhow::Result<()> {
    let data_dir = args
        .dir
        .clone()
        .context("--search-only needs --dir (where a full run built its index)")?;
    let index_dir = data_dir.join("search-index");
    reset_peak_rss();
    let t = Instant::now();
    let index = SearchIndex::open(&index_dir)?;
    let opened = t.elapsed();
    let on_disk = segments(&index_dir);
    if let Some(query) = &args.only {
        let request = SearchRequest {
            query: query.clone(),
            kinds: None,
            first: PAGE,
            after: None,
        };
        let mut samples = Vec::with_capacity(args.rounds);
        let mut total = 0;
        for _ in 0..args.rounds {
            let t = Instant::now();
            total = index.search(&request)?.total;
            samples.push(t.elapsed());
        }
        samples.sort();
        println!(
            "{query:?}: {total} matches, {} runs, p50 {} ms, p99 {} ms, max {} ms",
            samples.len(),
            ms(percentile(&samples, 50.0)),
            ms(percentile(&samples, 99.0)),
            ms(samples.last().copied().unwrap_or_default())
        );
        return Ok(());
    }
    let (samples, totals) = run_direct(&index, args.rounds)?;
    print_table(
        &format!(
            "direct SearchIndex::search, index reopened in a fresh process ({} documents, {} segments {:?}, opened in {} ms), \
             first={PAGE}, 6 facets; peak RSS of this process {:.0} MiB",
            index.doc_count(),
            on_disk.len(),
            on_disk,
            ms(opened),
            peak_rss_mib()
        ),
        &samples,
        &totals,
    );
    drop(index);

    if args.graphql && data_dir.join("catalog.db").exists() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (samples, totals, open_time) = rt.block_on(run_graphql(&data_dir, args.rounds))?;
        print_table(
            &format!(
                "GraphQL `search` over HTTP (real server, same process as the client; the page's hits resolved from SQLite; \
                 state opened in {:.1} s); peak RSS {:.0} MiB",
                open_time.as_secs_f64(),
                peak_rss_mib()
            ),
            &samples,
            &totals,
        );
    } else {
        println!("\nGraphQL: skipped (--no-db or --no-graphql)");
    }
    Ok(())
}
