//! The search index against an oracle: a few hundred generated documents, every query also
//! evaluated by a plain Rust filter over the same documents, results compared as sets (and as
//! sequences where the order is specified).
//!
//! (Over 600 lines: the search index against an oracle: the generator, the oracle and the query cases belong together.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use chrono::{DateTime, Duration, TimeZone, Utc};
use milepost_indexer::search::{
    EntityKind, Facet, SearchDocument, SearchErrorKind, SearchIndex, SearchPage, SearchRequest,
    FACET_FIELDS,
};

// ---------------------------------------------------------------------------------------------
// Corpus

const VEHICLES: &[&str] = &["GZ-004", "gz-007", "SF-101", "sh-12"];
const CITIES: &[&str] = &["Guangzhou", "Shanghai", "San Francisco", "Munich"];
const WEATHERS: &[&str] = &["rain", "clear", "fog", "Snow"];
const TAGS: &[&str] = &[
    "night",
    "highway",
    "urban",
    "rain-heavy",
    "construction",
    "Tunnel",
];
const SOFTWARE: &[&str] = &["av-3.14.2", "av-3.14.10", "av-3.15.0", "av-2.9.1"];
const LABELS: &[&str] = &[
    "cut-in",
    "unprotected left turn",
    "pedestrian crossing",
    "hard-brake",
    "lane change",
    "left-cut-in",
];
const TOPICS: &[&str] = &[
    "/camera/front/image_compressed",
    "/lidar/points",
    "/imu",
    "/gps/fix",
];
const PIPELINES: &[&str] = &["nightly", "pr-check", "release"];
const STATUSES: &[&str] = &["passed", "failed", "running", "error"];
const DESCRIPTIONS: &[&str] = &[
    "left turn across oncoming traffic",
    "pedestrians near a school at dusk",
    "truck cuts in from the right lane",
    "unprotected left at a busy junction",
];

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, values: &[&'a str]) -> &'a str {
        values[self.below(values.len())]
    }

    fn maybe(&mut self, percent: u64, values: &[&str]) -> Option<String> {
        self.chance(percent).then(|| self.pick(values).to_owned())
    }

    fn some_of(&mut self, values: &[&str], max: usize) -> Vec<String> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.pick(values).to_owned()).collect()
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

/// Documents at the date boundaries the tests use.
const BOUNDARY_TIMES: &[&str] = &[
    "2026-10-01T00:00:00Z",
    "2026-09-30T23:59:59Z",
    "2026-11-01T00:00:00Z",
    "2026-10-31T23:59:59Z",
];

fn corpus(n: usize, seed: u64) -> Vec<SearchDocument> {
    let mut rng = Rng(seed | 1);
    let base = Utc
        .with_ymd_and_hms(2026, 9, 1, 0, 0, 0)
        .single()
        .expect("base time");
    let mut docs = Vec::with_capacity(n);
    for i in 0..n {
        // The first 20 are drives, so that tests can name drives and their scenarios.
        let kind = match rng.below(10) {
            _ if i < 20 => EntityKind::Drive,
            0..=3 => EntityKind::Drive,
            4..=6 => EntityKind::Scenario,
            7..=8 => EntityKind::Run,
            _ => EntityKind::Dataset,
        };
        let drive_no = rng.below(20);
        let id = match kind {
            EntityKind::Drive => format!("drv-{i:04}"),
            EntityKind::Scenario => format!("scn-{drive_no:04}-{i:04}"),
            EntityKind::Run => format!("run-{i:04}"),
            EntityKind::Dataset => format!("ds-{i:04}"),
        };
        let mut d = SearchDocument::new(kind, id, "");
        let time = if let Some(boundary) = BOUNDARY_TIMES.get(i / 7).filter(|_| i % 7 == 3) {
            Some(at(boundary))
        } else if rng.chance(92) {
            Some(base + Duration::seconds((rng.next() % (90 * 86_400)) as i64))
        } else {
            None
        };
        d.time = time;
        match kind {
            EntityKind::Drive | EntityKind::Scenario => {
                d.vehicle = rng.maybe(95, VEHICLES);
                d.city = rng.maybe(90, CITIES);
                d.route = rng.maybe(50, &["ring road", "airport express", "harbour loop"]);
                d.weather = rng.maybe(85, WEATHERS);
                d.software = rng.maybe(90, SOFTWARE);
                d.tags = rng.some_of(TAGS, 3);
                d.labels = rng.some_of(LABELS, 2);
                if kind == EntityKind::Drive {
                    d.topics = rng.some_of(TOPICS, 3);
                    d.title = format!("drive {}", d.id);
                    d.extra_text = rng
                        .maybe(30, &["operator alice", "operator bob", "sensor_kit v2"])
                        .into_iter()
                        .collect();
                } else {
                    d.drive_id = Some(format!("drv-{drive_no:04}"));
                    d.title = d.labels.first().cloned().unwrap_or_default();
                    d.description = rng.maybe(40, DESCRIPTIONS);
                }
                d.size_bytes = Some((rng.next() % 1_000_000_000) as i64);
            }
            EntityKind::Run => {
                d.pipeline = Some(rng.pick(PIPELINES).to_owned());
                d.status = Some(rng.pick(STATUSES).to_owned());
                d.commit = Some(format!("{:012x}", rng.next() & 0xffff_ffff_ffff));
                d.tags = rng.some_of(TAGS, 2);
                d.software = rng.maybe(50, SOFTWARE);
                d.title = format!("{} run", d.pipeline.as_deref().unwrap_or_default());
            }
            EntityKind::Dataset => {
                d.title = format!(
                    "dataset {}",
                    rng.pick(&["cut-ins", "night rain", "tunnels"])
                );
                d.description = rng.maybe(60, DESCRIPTIONS);
                d.tags = rng.some_of(TAGS, 2);
                d.city = rng.maybe(30, CITIES);
            }
        }
        docs.push(d);
    }
    docs
}

fn indexed(docs: &[SearchDocument]) -> SearchIndex {
    let index = SearchIndex::in_memory().expect("in-memory index");
    // Several commits, so that hits come from several segments.
    for chunk in docs.chunks(docs.len() / 3 + 1) {
        index.upsert(chunk.to_vec()).expect("upsert");
    }
    assert_eq!(index.doc_count(), docs.len());
    index
}

// ---------------------------------------------------------------------------------------------
// Oracle: plain Rust over the documents

/// `(kind, id)`; `EntityKind` is not `Ord`, its name is.
type Key = (&'static str, String);

fn key(d: &SearchDocument) -> Key {
    (d.kind.as_str(), d.id.clone())
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Every free-text value of a document.
fn text_values(d: &SearchDocument) -> Vec<String> {
    let mut v = vec![d.id.clone(), d.title.clone()];
    for o in [
        &d.vehicle,
        &d.city,
        &d.route,
        &d.weather,
        &d.software,
        &d.pipeline,
        &d.commit,
        &d.status,
        &d.description,
    ] {
        v.extend(o.clone());
    }
    v.extend(d.tags.iter().cloned());
    v.extend(d.labels.iter().cloned());
    v.extend(d.topics.iter().cloned());
    v.extend(d.extra_text.iter().cloned());
    v
}

/// Some free-text value has the words of `query` consecutively (the last one as a prefix).
fn has_text(d: &SearchDocument, query: &str, prefix: bool) -> bool {
    let q = words(query);
    text_values(d).iter().any(|value| {
        let w = words(value);
        w.windows(q.len()).any(|win| {
            win.iter().zip(&q).enumerate().all(|(i, (have, want))| {
                if prefix && i == q.len() - 1 {
                    have.starts_with(want.as_str())
                } else {
                    have == want
                }
            })
        })
    })
}

fn field_values(d: &SearchDocument, field: &str) -> Vec<String> {
    let one = |o: &Option<String>| o.iter().map(|s| norm(s)).collect::<Vec<_>>();
    match field {
        "kind" => vec![d.kind.as_str().to_owned()],
        "vehicle" => one(&d.vehicle),
        "city" => one(&d.city),
        "weather" => one(&d.weather),
        "software" => one(&d.software),
        "pipeline" => one(&d.pipeline),
        "status" => one(&d.status),
        "drive" => one(&d.drive_id),
        "id" => vec![norm(&d.id)],
        "tag" => d.tags.iter().map(|s| norm(s)).collect(),
        "label" => d.labels.iter().map(|s| norm(s)).collect(),
        "topic" => d.topics.iter().map(|s| norm(s)).collect(),
        other => panic!("no field {other} in the oracle"),
    }
}

fn has_field(d: &SearchDocument, field: &str, value: &str) -> bool {
    field_values(d, field).iter().any(|v| v == value)
}

fn has_field_prefix(d: &SearchDocument, field: &str, prefix: &str) -> bool {
    field_values(d, field).iter().any(|v| v.starts_with(prefix))
}

fn after(d: &SearchDocument, t: &str) -> bool {
    d.time.is_some_and(|time| time >= at(t))
}

fn before(d: &SearchDocument, t: &str) -> bool {
    d.time.is_some_and(|time| time < at(t))
}

/// An oracle predicate.
type Pred = Box<dyn Fn(&SearchDocument) -> bool>;

fn expected(docs: &[SearchDocument], pred: impl Fn(&SearchDocument) -> bool) -> BTreeSet<Key> {
    docs.iter().filter(|d| pred(d)).map(key).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn search(index: &SearchIndex, query: &str, kinds: Option<Vec<EntityKind>>) -> SearchPage {
    index
        .search(&SearchRequest {
            query: query.to_owned(),
            kinds,
            first: 10_000,
            after: None,
        })
        .unwrap_or_else(|e| panic!("search `{query}` failed: {e}"))
}

fn found(page: &SearchPage) -> BTreeSet<Key> {
    let set: BTreeSet<Key> = page
        .hits
        .iter()
        .map(|h| (h.kind.as_str(), h.id.clone()))
        .collect();
    assert_eq!(set.len(), page.hits.len(), "duplicate hits");
    set
}

fn assert_matches(
    index: &SearchIndex,
    docs: &[SearchDocument],
    query: &str,
    pred: impl Fn(&SearchDocument) -> bool,
) {
    let want = expected(docs, pred);
    assert!(
        !want.is_empty() && want.len() < docs.len(),
        "`{query}`: the oracle matches {} of {} documents; pick a query that can fail",
        want.len(),
        docs.len()
    );
    let page = search(index, query, None);
    let got = found(&page);
    assert_eq!(page.total, want.len(), "`{query}`: total");
    assert_eq!(
        got,
        want,
        "`{query}`: missing {:?}, unexpected {:?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );
    assert!(!page.has_next);
}

fn oracle_facets(docs: &[&SearchDocument]) -> Vec<Facet> {
    FACET_FIELDS
        .iter()
        .map(|field| {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for d in docs {
                let distinct: BTreeSet<String> = field_values(d, field).into_iter().collect();
                for v in distinct {
                    *counts.entry(v).or_default() += 1;
                }
            }
            let mut values: Vec<_> = counts
                .into_iter()
                .map(|(value, count)| milepost_indexer::search::FacetValue { value, count })
                .collect();
            values.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            Facet {
                field: (*field).to_owned(),
                values,
            }
        })
        .collect()
}

/// Pages through `query` `first` hits at a time.
fn all_pages(
    index: &SearchIndex,
    query: &str,
    kinds: Option<Vec<EntityKind>>,
    first: usize,
) -> Vec<milepost_indexer::search::SearchHit> {
    let mut hits = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let page = index
            .search(&SearchRequest {
                query: query.to_owned(),
                kinds: kinds.clone(),
                first,
                after: after.clone(),
            })
            .expect("page");
        assert!(page.hits.len() <= first);
        assert_eq!(page.end_cursor, page.hits.last().map(|h| h.cursor.clone()));
        hits.extend(page.hits);
        if !page.has_next {
            return hits;
        }
        assert!(page.end_cursor.is_some(), "has_next without a cursor");
        after = page.end_cursor;
    }
    panic!("paging `{query}` does not end");
}

const N: usize = 400;
const SEED: u64 = 0x5eed_cafe;

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn the_corpus_covers_what_the_tests_need() {
    let docs = corpus(N, SEED);
    for kind in EntityKind::ALL {
        assert!(
            docs.iter().filter(|d| d.kind == *kind).count() > 20,
            "{kind}"
        );
    }
    for boundary in BOUNDARY_TIMES {
        assert!(
            docs.iter().any(|d| d.time == Some(at(boundary))),
            "no document at {boundary}"
        );
    }
    assert!(docs.iter().any(|d| d.time.is_none()));
}

#[test]
fn each_field_filters_exactly() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Pred)> = vec![
        (
            "city:guangzhou",
            Box::new(|d| has_field(d, "city", "guangzhou")),
        ),
        (
            "CITY:GuangZhou",
            Box::new(|d| has_field(d, "city", "guangzhou")),
        ),
        (
            "city:\"san francisco\"",
            Box::new(|d| has_field(d, "city", "san francisco")),
        ),
        (
            "weather:rain",
            Box::new(|d| has_field(d, "weather", "rain")),
        ),
        (
            "weather:snow",
            Box::new(|d| has_field(d, "weather", "snow")),
        ),
        (
            "vehicle:gz-004",
            Box::new(|d| has_field(d, "vehicle", "gz-004")),
        ),
        ("tag:night", Box::new(|d| has_field(d, "tag", "night"))),
        ("tag:tunnel", Box::new(|d| has_field(d, "tag", "tunnel"))),
        (
            "software:av-3.14.2",
            Box::new(|d| has_field(d, "software", "av-3.14.2")),
        ),
        (
            "pipeline:nightly",
            Box::new(|d| has_field(d, "pipeline", "nightly")),
        ),
        (
            "status:passed",
            Box::new(|d| has_field(d, "status", "passed")),
        ),
        (
            "topic:/lidar/points",
            Box::new(|d| has_field(d, "topic", "/lidar/points")),
        ),
        (
            "label:cut-in",
            Box::new(|d| has_field(d, "label", "cut-in")),
        ),
        (
            "label:\"unprotected left turn\"",
            Box::new(|d| has_field(d, "label", "unprotected left turn")),
        ),
        (
            "kind:scenario",
            Box::new(|d| d.kind == EntityKind::Scenario),
        ),
        ("kind:RUN", Box::new(|d| d.kind == EntityKind::Run)),
        ("id:DRV-0012", Box::new(|d| d.id == "drv-0012")),
        (
            "drive:drv-0005",
            Box::new(|d| has_field(d, "drive", "drv-0005")),
        ),
        (
            "city:guangzhou weather:rain tag:night",
            Box::new(|d| {
                has_field(d, "city", "guangzhou")
                    && has_field(d, "weather", "rain")
                    && has_field(d, "tag", "night")
            }),
        ),
        ("city:*", Box::new(|d| d.city.is_some())),
    ];
    for (query, pred) in cases {
        assert_matches(&index, &docs, query, pred);
    }
    // Values are matched whole: a part of a value finds nothing.
    assert_eq!(search(&index, "city:guang", None).total, 0);
    assert_eq!(search(&index, "label:cut", None).total, 0);
}

#[test]
fn free_text_phrases_and_prefixes() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Pred)> = vec![
        ("cut-in", Box::new(|d| has_text(d, "cut-in", false))),
        ("CUT-IN", Box::new(|d| has_text(d, "cut-in", false))),
        ("camera", Box::new(|d| has_text(d, "camera", false))),
        (
            "/camera/front/image_compressed",
            Box::new(|d| has_text(d, "/camera/front/image_compressed", false)),
        ),
        (
            "front/image",
            Box::new(|d| has_text(d, "front image", false)),
        ),
        ("gz-004", Box::new(|d| has_text(d, "gz 004", false))),
        ("av-3.14.2", Box::new(|d| has_text(d, "av 3 14 2", false))),
        ("av-3.14*", Box::new(|d| has_text(d, "av 3 14", true))),
        ("ped*", Box::new(|d| has_text(d, "ped", true))),
        ("rain", Box::new(|d| has_text(d, "rain", false))),
        (
            "\"unprotected left\"",
            Box::new(|d| has_text(d, "unprotected left", false)),
        ),
        (
            "\"left turn\" rain",
            Box::new(|d| has_text(d, "left turn", false) && has_text(d, "rain", false)),
        ),
        (
            "cut-in guangzhou",
            Box::new(|d| has_text(d, "cut in", false) && has_text(d, "guangzhou", false)),
        ),
        ("operator", Box::new(|d| has_text(d, "operator", false))),
        ("drv-0012", Box::new(|d| has_text(d, "drv 0012", false))),
        (
            "cut-in city:guangzhou weather:rain",
            Box::new(|d| {
                has_text(d, "cut in", false)
                    && has_field(d, "city", "guangzhou")
                    && has_field(d, "weather", "rain")
            }),
        ),
    ];
    for (query, pred) in cases {
        assert_matches(&index, &docs, query, pred);
    }
    // "left-cut-in" contains the phrase "cut in", a label "cut-in" does not contain "left cut".
    assert!(docs
        .iter()
        .any(|d| d.labels.iter().any(|l| l == "left-cut-in")));
    // Words of different values are not a phrase.
    assert_eq!(search(&index, "\"in rain\"", None).total, 0);
}

#[test]
fn negation_and_match_all() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Pred)> = vec![
        (
            "-tag:highway",
            Box::new(|d| !has_field(d, "tag", "highway")),
        ),
        (
            "city:guangzhou -tag:highway",
            Box::new(|d| has_field(d, "city", "guangzhou") && !has_field(d, "tag", "highway")),
        ),
        (
            "-kind:drive -kind:scenario",
            Box::new(|d| matches!(d.kind, EntityKind::Run | EntityKind::Dataset)),
        ),
        ("-cut-in", Box::new(|d| !has_text(d, "cut in", false))),
        (
            "rain -weather:rain",
            Box::new(|d| has_text(d, "rain", false) && !has_field(d, "weather", "rain")),
        ),
        (
            "-\"left turn\"",
            Box::new(|d| !has_text(d, "left turn", false)),
        ),
        (
            "-software:av-3.14*",
            Box::new(|d| !has_field_prefix(d, "software", "av-3.14")),
        ),
        ("-city:*", Box::new(|d| d.city.is_none())),
        (
            "-after:2026-10-01",
            Box::new(|d| !after(d, "2026-10-01T00:00:00Z")),
        ),
    ];
    for (query, pred) in cases {
        assert_matches(&index, &docs, query, pred);
    }
    assert_eq!(search(&index, "", None).total, N);
    assert_eq!(search(&index, "*", None).total, N);
    assert_eq!(search(&index, "-*", None).total, 0);
    assert_eq!(search(&index, "city:atlantis", None).total, 0);
}

#[test]
fn prefixes_on_fields() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Pred)> = vec![
        (
            "software:av-3.14*",
            Box::new(|d| has_field_prefix(d, "software", "av-3.14")),
        ),
        (
            "software:AV-3*",
            Box::new(|d| has_field_prefix(d, "software", "av-3")),
        ),
        (
            "vehicle:gz*",
            Box::new(|d| has_field_prefix(d, "vehicle", "gz")),
        ),
        (
            "topic:/camera/*",
            Box::new(|d| has_field_prefix(d, "topic", "/camera/")),
        ),
        ("kind:d*", Box::new(|d| d.kind.as_str().starts_with('d'))),
        ("id:run-00*", Box::new(|d| d.id.starts_with("run-00"))),
    ];
    for (query, pred) in cases {
        assert_matches(&index, &docs, query, pred);
    }
}

#[test]
fn dates_at_the_boundaries() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Pred)> = vec![
        (
            "after:2026-10-01",
            Box::new(|d| after(d, "2026-10-01T00:00:00Z")),
        ),
        (
            "before:2026-10-01",
            Box::new(|d| before(d, "2026-10-01T00:00:00Z")),
        ),
        (
            "after:2026-10-01 before:2026-11-01",
            Box::new(|d| after(d, "2026-10-01T00:00:00Z") && before(d, "2026-11-01T00:00:00Z")),
        ),
        (
            "after:2026-09-30T23:59:59Z",
            Box::new(|d| after(d, "2026-09-30T23:59:59Z")),
        ),
        (
            "before:2026-10-01T08:00:00+08:00",
            Box::new(|d| before(d, "2026-10-01T00:00:00Z")),
        ),
        (
            "rain after:2026-10-15",
            Box::new(|d| has_text(d, "rain", false) && after(d, "2026-10-15T00:00:00Z")),
        ),
    ];
    for (query, pred) in cases {
        assert_matches(&index, &docs, query, pred);
    }
    // The boundary documents themselves.
    let on = |t: &str| -> BTreeSet<Key> {
        docs.iter()
            .filter(|d| d.time == Some(at(t)))
            .map(key)
            .collect()
    };
    let october = found(&search(&index, "after:2026-10-01 before:2026-11-01", None));
    assert!(on("2026-10-01T00:00:00Z").is_subset(&october));
    assert!(on("2026-10-31T23:59:59Z").is_subset(&october));
    assert!(on("2026-09-30T23:59:59Z").is_disjoint(&october));
    assert!(on("2026-11-01T00:00:00Z").is_disjoint(&october));
}

#[test]
fn kinds_filter() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let page = search(
        &index,
        "tag:night",
        Some(vec![EntityKind::Scenario, EntityKind::Run]),
    );
    let want = expected(&docs, |d| {
        has_field(d, "tag", "night") && matches!(d.kind, EntityKind::Scenario | EntityKind::Run)
    });
    assert!(!want.is_empty());
    assert_eq!(found(&page), want);
    assert_eq!(page.total, want.len());
    let page = search(&index, "", Some(vec![EntityKind::Dataset]));
    assert_eq!(
        found(&page),
        expected(&docs, |d| d.kind == EntityKind::Dataset)
    );
    // An empty list restricts nothing.
    assert_eq!(search(&index, "", Some(Vec::new())).total, N);
    // Kinds and kind: terms combine with AND.
    assert_eq!(
        search(&index, "kind:drive", Some(vec![EntityKind::Run])).total,
        0
    );
}

#[test]
fn facets_count_every_match() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Pred)> = vec![
        ("", Box::new(|_| true)),
        (
            "city:guangzhou",
            Box::new(|d| has_field(d, "city", "guangzhou")),
        ),
        ("rain", Box::new(|d| has_text(d, "rain", false))),
        (
            "-tag:highway after:2026-10-01",
            Box::new(|d| !has_field(d, "tag", "highway") && after(d, "2026-10-01T00:00:00Z")),
        ),
    ];
    for (query, pred) in cases {
        let matching: Vec<&SearchDocument> = docs.iter().filter(|d| pred(d)).collect();
        // A small page: the facets still cover all matches.
        let page = index
            .search(&SearchRequest {
                query: query.to_owned(),
                first: 3,
                ..SearchRequest::default()
            })
            .expect("search");
        assert_eq!(page.total, matching.len(), "`{query}`");
        assert_eq!(page.facets, oracle_facets(&matching), "`{query}`");
        assert_eq!(
            page.facets
                .iter()
                .map(|f| f.field.as_str())
                .collect::<Vec<_>>(),
            FACET_FIELDS
        );
    }
    // first = 0: counts only.
    let page = index
        .search(&SearchRequest {
            query: "weather:fog".into(),
            first: 0,
            ..SearchRequest::default()
        })
        .expect("search");
    assert!(page.hits.is_empty() && page.end_cursor.is_none());
    assert_eq!(
        page.total,
        expected(&docs, |d| has_field(d, "weather", "fog")).len()
    );
    assert_eq!(page.has_next, page.total > 0);
}

#[test]
fn facets_keep_the_fifty_most_frequent_values() {
    let mut docs = Vec::new();
    for v in 0..60 {
        for copy in 0..=(v % 4) {
            let mut d = SearchDocument::new(EntityKind::Drive, format!("d-{v}-{copy}"), "");
            d.vehicle = Some(format!("car-{v:02}"));
            d.tags = vec!["a".into(), "A".into(), " a ".into()];
            docs.push(d);
        }
    }
    let index = indexed(&docs);
    let page = search(&index, "", None);
    let vehicles = &page.facets[1];
    assert_eq!(vehicles.field, "vehicle");
    assert_eq!(vehicles.values.len(), 50);
    assert!(vehicles
        .values
        .windows(2)
        .all(|w| (w[0].count, &w[1].value) >= (w[1].count, &w[0].value)));
    assert_eq!(vehicles.values[0].count, 4);
    assert_eq!(vehicles.values[0].value, "car-03");
    // Repeated tags (case-insensitively) count a document once.
    assert_eq!(page.facets[4].values.len(), 1);
    assert_eq!(page.facets[4].values[0].count, docs.len() as u64);
}

#[test]
fn paging_yields_every_hit_once_in_order() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let cases: Vec<(&str, Option<Vec<EntityKind>>, Pred)> = vec![
        ("", None, Box::new(|_| true)),
        ("rain", None, Box::new(|d| has_text(d, "rain", false))),
        ("cut-in", None, Box::new(|d| has_text(d, "cut in", false))),
        (
            "city:guangzhou",
            None,
            Box::new(|d| has_field(d, "city", "guangzhou")),
        ),
        (
            "-tag:night",
            Some(vec![EntityKind::Drive, EntityKind::Dataset]),
            Box::new(|d| {
                !has_field(d, "tag", "night")
                    && matches!(d.kind, EntityKind::Drive | EntityKind::Dataset)
            }),
        ),
    ];
    for (query, kinds, pred) in cases {
        let hits = all_pages(&index, query, kinds.clone(), 7);
        let want = expected(&docs, &pred);
        let got: Vec<Key> = hits
            .iter()
            .map(|h| (h.kind.as_str(), h.id.clone()))
            .collect();
        let unique: BTreeSet<Key> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "`{query}`: a hit came twice");
        assert_eq!(unique, want, "`{query}`");
        // The same order as a single big page.
        let one_page = search(&index, query, kinds);
        assert_eq!(one_page.total, want.len());
        let single: Vec<Key> = one_page
            .hits
            .iter()
            .map(|h| (h.kind.as_str(), h.id.clone()))
            .collect();
        assert_eq!(got, single, "`{query}`: pages differ from one page");
    }
}

#[test]
fn order_is_time_without_free_text_and_score_with_it() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let by_key: HashMap<Key, &SearchDocument> = docs.iter().map(|d| (key(d), d)).collect();

    // No free text: newest first, no time last, ties by id then kind.
    for query in ["", "city:guangzhou", "-tag:night"] {
        let page = search(&index, query, None);
        let mut want: Vec<&SearchDocument> = docs
            .iter()
            .filter(|d| page.hits.iter().any(|h| h.kind == d.kind && h.id == d.id))
            .collect();
        want.sort_by(|a, b| {
            b.time
                .cmp(&a.time)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| rank(a.kind).cmp(&rank(b.kind)))
        });
        let got: Vec<Key> = page
            .hits
            .iter()
            .map(|h| (h.kind.as_str(), h.id.clone()))
            .collect();
        assert_eq!(
            got,
            want.into_iter().map(key).collect::<Vec<_>>(),
            "`{query}`"
        );
        assert!(page.hits.iter().all(|h| h.score == 1.0));
    }

    // Free text: score descending, ties by kind then id.
    for query in ["rain", "cut-in", "left turn", "ped*"] {
        let page = search(&index, query, None);
        assert!(page.total > 1, "`{query}`");
        for w in page.hits.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            assert!(a.score >= b.score, "`{query}`: scores increase");
            if a.score == b.score {
                assert!(
                    (rank(a.kind), &a.id) < (rank(b.kind), &b.id),
                    "`{query}`: tie order"
                );
            }
        }
        assert!(page
            .hits
            .iter()
            .all(|h| by_key.contains_key(&(h.kind.as_str(), h.id.clone()))));
    }
    // A match in the title ranks above the same word elsewhere.
    let page = search(&index, "night", None);
    let first = by_key[&(page.hits[0].kind.as_str(), page.hits[0].id.clone())];
    assert!(
        page.hits.len() > 10 && first.title.contains("night"),
        "{first:?}"
    );
}

fn rank(kind: EntityKind) -> usize {
    EntityKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("kind")
}

#[test]
fn bad_queries_and_cursors_are_refused() {
    let index = indexed(&corpus(50, SEED));
    for (query, position) in [
        ("rain colour:red", 5),
        ("city:", 5),
        ("\"unprotected left", 0),
        ("after:soon", 6),
    ] {
        let err = index
            .search(&SearchRequest::new(query))
            .expect_err("bad query");
        assert_eq!(err.kind(), SearchErrorKind::BadQuery, "{query}");
        assert_eq!(err.position(), Some(position), "{query}: {err}");
    }
    for cursor in [
        "garbage",
        "",
        &milepost_schema::ids::encode_cursor("obj", 3),
        &milepost_schema::ids::encode_cursor("search", -1),
    ] {
        let err = index
            .search(&SearchRequest {
                after: Some(cursor.to_owned()),
                ..SearchRequest::new("")
            })
            .expect_err("bad cursor");
        assert_eq!(err.kind(), SearchErrorKind::BadQuery);
        assert_eq!(err.position(), None);
        assert!(err.to_string().contains("`after`"), "{err}");
    }
    // A cursor past the end is an empty last page, not an error.
    let page = index
        .search(&SearchRequest {
            after: Some(milepost_schema::ids::encode_cursor("search", 10_000)),
            ..SearchRequest::new("")
        })
        .expect("past the end");
    assert!(page.hits.is_empty() && !page.has_next);
    assert_eq!(page.total, 50);
}

#[test]
fn a_phrase_prefix_that_expands_too_far_is_a_bad_query() {
    let index = SearchIndex::in_memory().expect("index");
    let docs = (0..16_400)
        .map(|i| SearchDocument::new(EntityKind::Run, format!("r{i}"), format!("cut a{i:05}")));
    index.rebuild(docs).expect("rebuild");
    let err = index
        .search(&SearchRequest::new("rain cut-a*"))
        .expect_err("too broad");
    assert_eq!(err.kind(), SearchErrorKind::BadQuery, "{err}");
    assert_eq!(err.position(), Some(5));
    // A narrower prefix, or a one-word prefix (no expansion limit), is fine.
    assert_eq!(
        index
            .search(&SearchRequest::new("cut-a0001*"))
            .expect("narrow")
            .total,
        10
    );
    assert_eq!(
        index
            .search(&SearchRequest::new("a*"))
            .expect("one word")
            .total,
        16_400
    );
    let r1 = (0..16_400)
        .filter(|i| i.to_string().starts_with('1'))
        .count();
    assert_eq!(
        index
            .search(&SearchRequest::new("id:r1*"))
            .expect("field")
            .total,
        r1
    );
}

#[test]
fn upsert_replaces_and_delete_removes() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let target = docs
        .iter()
        .find(|d| d.kind == EntityKind::Drive && d.city.as_deref() == Some("Guangzhou"))
        .expect("a Guangzhou drive")
        .clone();
    let id_query = format!("id:{}", target.id);
    assert_eq!(search(&index, &id_query, None).total, 1);

    // Re-upserting the same document does not duplicate it.
    index.upsert(vec![target.clone()]).expect("re-upsert");
    assert_eq!(search(&index, &id_query, None).total, 1);
    assert_eq!(index.doc_count(), N);

    // A changed field is searchable at once, the old value is gone.
    let mut changed = target.clone();
    changed.city = Some("Reykjavik".into());
    changed.labels = vec!["moose crossing".into()];
    index.upsert(vec![changed]).expect("upsert changed");
    assert_eq!(index.doc_count(), N);
    let hits = search(&index, "city:reykjavik", None);
    assert_eq!(found(&hits), BTreeSet::from([key(&target)]));
    assert_eq!(
        found(&search(&index, "moose", None)),
        BTreeSet::from([key(&target)])
    );
    assert!(!found(&search(&index, "city:guangzhou", None)).contains(&key(&target)));

    // The same id under another kind is another document.
    let mut twin = SearchDocument::new(EntityKind::Dataset, target.id.clone(), "twin");
    twin.city = Some("Reykjavik".into());
    // Within one batch the last version wins.
    let mut twin_v2 = twin.clone();
    twin_v2.title = "twin quokka".into();
    index.upsert(vec![twin, twin_v2]).expect("upsert twin");
    assert_eq!(index.doc_count(), N + 1);
    assert_eq!(search(&index, "city:reykjavik", None).total, 2);
    assert_eq!(search(&index, "quokka", None).total, 1);
    assert_eq!(search(&index, "twin", None).total, 1);

    index.delete(EntityKind::Drive, &target.id).expect("delete");
    assert_eq!(index.doc_count(), N);
    assert_eq!(
        found(&search(&index, "city:reykjavik", None)),
        BTreeSet::from([("dataset", target.id.clone())])
    );
    // Deleting what is not there is fine.
    index
        .delete(EntityKind::Drive, &target.id)
        .expect("delete again");
    index
        .delete(EntityKind::Run, "no-such-run")
        .expect("delete missing");
    assert_eq!(index.doc_count(), N);
}

#[test]
fn rebuild_replaces_everything() {
    let docs = corpus(N, SEED);
    let index = indexed(&docs);
    let fresh = corpus(120, SEED + 1);
    let mut with_duplicate = fresh.clone();
    with_duplicate.push(fresh[0].clone());
    assert_eq!(index.rebuild(with_duplicate).expect("rebuild"), 120);
    assert_eq!(index.doc_count(), 120);
    assert_matches(&index, &fresh, "city:guangzhou", |d| {
        has_field(d, "city", "guangzhou")
    });
    // Ids only in the old corpus are gone.
    let fresh_keys: BTreeSet<Key> = fresh.iter().map(key).collect();
    assert!(found(&search(&index, "", None)).is_subset(&fresh_keys));
    assert_eq!(index.rebuild(Vec::new()).expect("empty rebuild"), 0);
    assert_eq!(search(&index, "", None).total, 0);
}

#[test]
fn reopening_from_disk_keeps_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("search");
    let docs = corpus(N, SEED);
    {
        let index = SearchIndex::open(&path).expect("create");
        assert_eq!(index.doc_count(), 0);
        index.upsert(docs.clone()).expect("upsert");
        index.delete(docs[0].kind, &docs[0].id).expect("delete");
    }
    let index = SearchIndex::open(&path).expect("reopen");
    assert_eq!(index.doc_count(), N - 1);
    assert_matches(&index, &docs[1..], "cut-in weather:rain", |d| {
        has_text(d, "cut in", false) && has_field(d, "weather", "rain")
    });
    // Writable after reopening.
    index.upsert(vec![docs[0].clone()]).expect("upsert");
    assert_eq!(index.doc_count(), N);
}

#[test]
fn a_second_writer_on_the_same_directory_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = SearchIndex::open(dir.path()).expect("open");
    let err = SearchIndex::open(dir.path()).expect_err("locked");
    assert_eq!(err.kind(), SearchErrorKind::Io, "{err}");
}

#[test]
fn unreadable_or_incompatible_indexes_are_corrupt() {
    // Garbage metadata.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("meta.json"), b"{ not json").expect("write");
    let err = SearchIndex::open(dir.path()).expect_err("garbage meta.json");
    assert_eq!(err.kind(), SearchErrorKind::Corrupt, "{err}");

    // An index with another schema.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut builder = tantivy::schema::Schema::builder();
        builder.add_text_field("body", tantivy::schema::TEXT);
        tantivy::Index::create_in_dir(dir.path(), builder.build()).expect("other index");
    }
    let err = SearchIndex::open(dir.path()).expect_err("other schema");
    assert_eq!(err.kind(), SearchErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("rebuild"), "{err}");

    // A segment file gone missing.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = SearchIndex::open(dir.path()).expect("create");
        index.upsert(corpus(20, SEED)).expect("upsert");
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "idx") {
            std::fs::remove_file(&path).expect("remove");
            removed += 1;
        }
    }
    assert!(removed > 0, "no segment file to remove");
    let err = SearchIndex::open(dir.path()).expect_err("missing segment file");
    assert_eq!(err.kind(), SearchErrorKind::Corrupt, "{err}");

    // After deleting the directory, the caller can start over.
    std::fs::remove_dir_all(dir.path()).expect("remove dir");
    let index = SearchIndex::open(dir.path()).expect("fresh index");
    assert_eq!(index.rebuild(corpus(20, SEED)).expect("rebuild"), 20);
}

#[test]
fn concurrent_searches_while_writing() {
    let docs = corpus(N, SEED);
    let index = std::sync::Arc::new(indexed(&docs));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let index = index.clone();
            scope.spawn(move || {
                for _ in 0..20 {
                    let page = search(&index, "city:guangzhou", None);
                    assert!(page.total > 0);
                }
            });
        }
        for chunk in docs.chunks(50) {
            index.upsert(chunk.to_vec()).expect("upsert");
        }
    });
    assert_eq!(index.doc_count(), N);
}

/// `cargo test --release -p milepost-indexer --test search -- --ignored bench --nocapture`
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_search_with_facets_over_100k_documents() {
    const DOCS: usize = 100_000;
    let docs = corpus(DOCS, SEED);
    let index = SearchIndex::in_memory().expect("index");
    let started = Instant::now();
    assert_eq!(index.rebuild(docs).expect("rebuild"), DOCS);
    println!("rebuild of {DOCS} documents: {:?}", started.elapsed());

    for query in [
        "",
        "rain",
        "cut-in",
        "city:guangzhou tag:night",
        "cut-in city:guangzhou weather:rain software:av-3.14*",
        "\"unprotected left\" -tag:highway after:2026-10-01",
        "ped*",
    ] {
        let request = SearchRequest::new(query);
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..15 {
            let started = Instant::now();
            total = index.search(&request).expect("search").total;
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "search+facets {query:?}: {total} hits, median {:?}, min {:?}, max {:?}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
}
