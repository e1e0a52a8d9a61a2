//! What a new dataset holds: the objects picked by a search query, by entity ids, or listed
//! explicitly, optionally narrowed by key globs. Resolved against the catalog when the dataset
//! is created, so the manifest freezes the ETags seen now.
//!
//! Drives and runs select their objects whole. A scenario selects, for each MCAP log of its
//! drive whose messages overlap its span widened by the padding, that log trimmed to the window
//! on the chosen topics ([`TrimSpec`]); other files of its drive only when an `include` glob
//! names them (whole). When no log overlaps the window, the log nearest to it is selected, so
//! that the dataset says so with an empty (valid) trimmed file rather than failing.

use std::collections::BTreeSet;

use chrono::{DateTime, Timelike as _, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use milepost_cacher::datasets::{ManifestEntry, TrimSpec};
use milepost_cacher::objects::ObjectErrorKind;
use milepost_indexer::catalog::{self, Owner};
use milepost_indexer::metadata::McapSummary;
use milepost_indexer::search::{EntityKind, SearchRequest};
use milepost_schema::entity::{object, scenario};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// Most entities a query may select, so a careless query cannot build a petabyte dataset.
pub const MAX_SELECTED_ENTITIES: usize = 10_000;

/// Largest `paddingSeconds`.
pub const MAX_PADDING_SECONDS: i32 = 3600;

/// Padding around a scenario's span when none is given.
pub const DEFAULT_PADDING_SECONDS: i32 = 2;

/// How scenarios are trimmed: the topics kept (empty: all) and the padding around their span.
#[derive(Clone, Debug)]
pub struct TrimOptions {
    /// Sorted, without duplicates.
    pub topics: Vec<String>,
    /// Seconds added before and after the span.
    pub padding_seconds: i32,
    /// The topics as given, for errors naming their position.
    given: Vec<String>,
}

impl TrimOptions {
    /// Checks `topics` (`input.topics[i]`: not empty, at most 256 characters) and `padding`
    /// (`input.paddingSeconds`: 0 to [`MAX_PADDING_SECONDS`]).
    pub fn new(topics: Option<&[String]>, padding: Option<i32>) -> ApiResult<Self> {
        let padding_seconds = padding.unwrap_or(DEFAULT_PADDING_SECONDS);
        if !(0..=MAX_PADDING_SECONDS).contains(&padding_seconds) {
            return Err(ApiError::bad_input(
                "input.paddingSeconds",
                format!("{padding_seconds} is out of range: expected 0 to {MAX_PADDING_SECONDS} seconds"),
            ));
        }
        let mut set = BTreeSet::new();
        for (i, topic) in topics.unwrap_or_default().iter().enumerate() {
            if topic.trim().is_empty() || topic.len() > 256 {
                return Err(ApiError::bad_input(
                    format!("input.topics[{i}]"),
                    format!("{topic:?} is not a topic: expected 1 to 256 characters, e.g. /lidar/points"),
                ));
            }
            set.insert(topic.clone());
        }
        Ok(Self {
            topics: set.into_iter().collect(),
            padding_seconds,
            given: topics.unwrap_or_default().to_vec(),
        })
    }
}

/// What a selection holds, and what it says about how (a scenario inside a log the dataset
/// holds whole, for one).
#[derive(Debug, Default)]
pub struct Selected {
    pub entries: Vec<ManifestEntry>,
    /// Sentences for the dataset's record of its selection.
    pub notes: Vec<String>,
}

/// What [`resolve`] found: the entries, and the topics of the drives of the scenarios it
/// selected (to check the chosen topics against).
#[derive(Debug, Default)]
pub struct Resolved {
    pub entries: Vec<ManifestEntry>,
    pub scenarios: usize,
    pub scenario_topics: BTreeSet<String>,
}
/// One of the three ways to pick objects.
#[derive(Clone, Debug)]
pub enum Selection {
    Query(String),
    EntityIds(Vec<String>),
    Objects(Vec<(String, String)>),
}

/// A key glob: `*` matches within one path step, `**` across steps, `?` one character. A
/// pattern without `/` matches the file name; with `/`, the key relative to its drive or run
/// (`camera/front/*`) or the whole key.
#[derive(Clone, Debug)]
pub struct Glob(String);

impl Glob {
    pub fn new(field: &str, pattern: &str) -> ApiResult<Glob> {
        if pattern.trim().is_empty() || pattern.len() > 256 {
            return Err(ApiError::bad_input(
                field,
                "expected a key glob of 1-256 characters, e.g. *.mcap",
            ));
        }
        Ok(Glob(pattern.trim().to_owned()))
    }

    pub fn matches(&self, key: &str, owner_prefix: Option<&str>) -> bool {
        let pattern = self.0.as_bytes();
        if !self.0.contains('/') {
            let name = key.rsplit('/').next().unwrap_or(key);
            return glob_match(pattern, name.as_bytes());
        }
        if let Some(relative) = owner_prefix.and_then(|p| key.strip_prefix(p)) {
            if glob_match(pattern, relative.as_bytes()) {
                return true;
            }
        }
        glob_match(pattern, key.as_bytes())
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
        }
        Some((b'*', rest)) => {
            for i in 0..=text.len() {
                if glob_match(rest, &text[i..]) {
                    return true;
                }
                if text.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some((b'?', rest)) => {
            text.first().is_some_and(|c| *c != b'/') && glob_match(rest, &text[1..])
        }
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

fn entry(row: &object::Model) -> ManifestEntry {
    ManifestEntry {
        bucket: row.bucket.clone(),
        key: row.key.clone(),
        size: row.size as u64,
        etag: row.etag.clone(),
        trim: None,
    }
}

/// The catalog's copy of an MCAP log's summary (read by the sync), if it has one.
fn mcap_summary(row: &object::Model) -> Option<McapSummary> {
    let metadata = row.metadata.as_ref()?;
    if metadata["format"] != "mcap" {
        return None;
    }
    serde_json::from_value(metadata["mcap"].clone()).ok()
}

fn nanos(at: DateTime<Utc>) -> u64 {
    at.timestamp_nanos_opt()
        .and_then(|ns| u64::try_from(ns).ok())
        .unwrap_or(0)
}

/// `20261101T101500Z`, or `20261101T101500.250Z` when there are milliseconds.
fn compact(at: DateTime<Utc>) -> String {
    if at.nanosecond() == 0 {
        at.format("%Y%m%dT%H%M%SZ").to_string()
    } else {
        at.format("%Y%m%dT%H%M%S%.3fZ").to_string()
    }
}

/// The trimmed file's key: next to its log, named for the scenario, its span and the
/// padding: `logs/d1_0.sc-1a2b.20261101T101500Z-20261101T101530Z.pad2s.mcap`.
fn trimmed_key(log_key: &str, scenario: &scenario::Model, padding_seconds: i32) -> String {
    let stem = log_key.strip_suffix(".mcap").unwrap_or(log_key);
    format!(
        "{stem}.{}.{}-{}.pad{padding_seconds}s.mcap",
        scenario.id,
        compact(scenario.start_time),
        compact(scenario.end_time)
    )
}

/// Trimmed members for `scenario`: its drive's MCAP logs overlapping the padded span (or the
/// nearest log when none does), other drive files whole when an include glob names them.
async fn scenario_objects(
    app: &AppState,
    scenario: &scenario::Model,
    include: &[Glob],
    trim: &TrimOptions,
    out: &mut Resolved,
) -> ApiResult<()> {
    let (rows, prefix) = owned_objects(app, Owner::Drive(&scenario.drive_id)).await?;
    if let Some(drive) = catalog::get_drive(&app.db, &scenario.drive_id).await? {
        if let Some(topics) = drive.topics.as_array() {
            out.scenario_topics
                .extend(topics.iter().filter_map(|t| t.as_str().map(str::to_owned)));
        }
    }
    out.scenarios += 1;
    let padding = chrono::Duration::seconds(i64::from(trim.padding_seconds));
    let start_ns = nanos(scenario.start_time - padding);
    let end_ns = nanos(scenario.end_time + padding);
    let included = |row: &object::Model| {
        include
            .iter()
            .any(|g| g.matches(&row.key, prefix.as_deref()))
    };
    // (row, summary, distance from the window: 0 when it overlaps)
    let mut logs = Vec::new();
    for row in &rows {
        if row.key.ends_with(".mcap") && (include.is_empty() || included(row)) {
            let summary = mcap_summary(row);
            let distance = match &summary {
                Some(s) if s.message_count > 0 => {
                    // 0 when the log's messages overlap the window.
                    start_ns
                        .saturating_sub(s.end_time_ns)
                        .max(s.start_time_ns.saturating_sub(end_ns))
                }
                Some(_) => u64::MAX,
                // Not described (no summary): only materialization can tell; keep it.
                None => 0,
            };
            logs.push((row, summary, distance));
        } else if !include.is_empty() && included(row) {
            out.entries.push(entry(row));
        }
    }
    let nearest = logs.iter().map(|l| l.2).min();
    let chosen = logs
        .iter()
        .filter(|l| l.2 == 0 || (nearest != Some(0) && Some(l.2) == nearest))
        // One nearest log is enough to say that the window is empty.
        .take(if nearest == Some(0) { usize::MAX } else { 1 });
    for (row, summary, _) in chosen {
        let size = row.size as u64;
        let planned_bytes = match summary {
            Some(s) if !s.chunk_indexes.is_empty() => {
                let chunks: u64 = s
                    .chunk_indexes
                    .iter()
                    .filter(|c| {
                        c.message_start_time_ns <= end_ns && c.message_end_time_ns >= start_ns
                    })
                    .map(|c| c.chunk_length)
                    .sum();
                // The new summary and header are about as large as the source's.
                (chunks + size.saturating_sub(s.summary_start) + 4096).min(size.max(4096))
            }
            _ => size,
        };
        out.entries.push(ManifestEntry {
            trim: Some(TrimSpec {
                scenario_id: scenario.id.clone(),
                start_ns,
                end_ns,
                topics: trim.topics.clone(),
                view_key: trimmed_key(&row.key, scenario, trim.padding_seconds),
                planned_bytes,
            }),
            ..entry(row)
        });
    }
    Ok(())
}

/// Live objects of a drive or run with the prefix they are relative to.
async fn owned_objects(
    app: &AppState,
    owner: Owner<'_>,
) -> ApiResult<(Vec<object::Model>, Option<String>)> {
    let (filter, prefix) = match owner {
        Owner::Drive(id) => (
            object::Column::DriveId.eq(id),
            catalog::get_drive(&app.db, id).await?.map(|d| d.prefix),
        ),
        Owner::Run(id) => (
            object::Column::RunId.eq(id),
            catalog::get_run(&app.db, id).await?.map(|r| r.prefix),
        ),
    };
    let rows = object::Entity::find()
        .filter(filter)
        .filter(object::Column::DeletedAt.is_null())
        .order_by_asc(object::Column::Id)
        .all(&app.db)
        .await
        .map_err(|err| ApiError::from(milepost_schema::DbError::from(err)))?;
    Ok((rows, prefix))
}

/// How many objects named by `input.objects` are looked up at once.
const OBJECT_LOOKUPS_AT_ONCE: usize = 16;

/// The manifest entry of `s3://bucket/key`, object `i` of `input.objects`: from the catalog,
/// or from a HEAD upstream when the catalog has not synced it yet.
async fn explicit_object(
    app: &AppState,
    i: usize,
    bucket: String,
    key: String,
) -> ApiResult<ManifestEntry> {
    let field = format!("input.objects[{i}]");
    // The office's one resolution (its own writes, then the catalog, then S3 asked now), so
    // a dataset names the version a read through the office serves from now on.
    match app.objects.resolve_current(&bucket, &key).await {
        Ok(resolved) => Ok(ManifestEntry {
            bucket,
            key,
            size: resolved.object.size,
            etag: resolved.object.etag,
            trim: None,
        }),
        Err(err) => Err(match err.kind() {
            ObjectErrorKind::NoSuchKey => {
                ApiError::bad_input(field, format!("s3://{bucket}/{key} does not exist"))
            }
            ObjectErrorKind::NoSuchBucket
            | ObjectErrorKind::InvalidKey
            | ObjectErrorKind::KeyTooLong => {
                ApiError::bad_input(field, format!("s3://{bucket}/{key}: {}", err.message()))
            }
            _ => ApiError::Unavailable(format!("{field}: {}", err.message())),
        }),
    }
}

async fn entity_objects(
    app: &AppState,
    kind: EntityKind,
    id: &str,
    field: &str,
    include: &[Glob],
    trim: &TrimOptions,
    out: &mut Resolved,
) -> ApiResult<()> {
    let owner = match kind {
        EntityKind::Drive => Owner::Drive(id),
        EntityKind::Run => Owner::Run(id),
        EntityKind::Scenario => {
            let scenario = catalog::get_scenario(&app.db, id)
                .await?
                .ok_or_else(|| ApiError::bad_input(field, format!("unknown scenario {id:?}")))?;
            return scenario_objects(app, &scenario, include, trim, out).await;
        }
        EntityKind::Dataset => {
            return Err(ApiError::bad_input(
                field,
                "datasets cannot be selected into datasets",
            ));
        }
    };
    let (rows, prefix) = owned_objects(app, owner).await?;
    out.entries.extend(
        rows.iter()
            .filter(|row| {
                include.is_empty()
                    || include
                        .iter()
                        .any(|g| g.matches(&row.key, prefix.as_deref()))
            })
            .map(entry),
    );
    Ok(())
}

/// Resolves a selection into manifest entries (unsorted, possibly with duplicates), scenarios
/// trimmed per `trim`, except windows of logs the selection holds whole (noted instead).
/// Chosen topics that no drive of a selected scenario has are refused (`input.topics[i]`), as
/// are topics when no scenario is selected (`input.topics`).
pub async fn resolve(
    app: &AppState,
    selection: &Selection,
    include: &[Glob],
    trim: &TrimOptions,
) -> ApiResult<Selected> {
    let mut out = Resolved::default();
    match selection {
        Selection::Query(query) => {
            let mut after = None;
            let mut seen = 0usize;
            loop {
                let page = app
                    .catalog
                    .search(SearchRequest {
                        query: query.clone(),
                        kinds: Some(vec![
                            EntityKind::Drive,
                            EntityKind::Scenario,
                            EntityKind::Run,
                        ]),
                        first: 500,
                        after,
                    })
                    .await?;
                if page.total > MAX_SELECTED_ENTITIES {
                    return Err(ApiError::bad_input(
                        "input.query",
                        format!(
                            "matches {} entities, more than the {MAX_SELECTED_ENTITIES} a dataset may be built from; narrow it",
                            page.total
                        ),
                    ));
                }
                for hit in &page.hits {
                    entity_objects(
                        app,
                        hit.kind,
                        &hit.id,
                        "input.query",
                        include,
                        trim,
                        &mut out,
                    )
                    .await?;
                }
                seen += page.hits.len();
                if !page.has_next || page.hits.is_empty() || seen >= page.total {
                    break;
                }
                after = page.end_cursor;
            }
        }
        Selection::EntityIds(ids) => {
            for (i, id) in ids.iter().enumerate() {
                let field = format!("input.entityIds[{i}]");
                let kind = match catalog::resolve_input_kind(&app.db, id).await? {
                    Some(milepost_schema::enums::InputKind::Drive) => EntityKind::Drive,
                    Some(milepost_schema::enums::InputKind::Scenario) => EntityKind::Scenario,
                    Some(milepost_schema::enums::InputKind::Run) => EntityKind::Run,
                    _ => {
                        return Err(ApiError::bad_input(
                            field,
                            format!("unknown id {id:?}: no drive, scenario or run has it"),
                        ))
                    }
                };
                entity_objects(app, kind, id, &field, include, trim, &mut out).await?;
            }
        }
        Selection::Objects(objects) => {
            // Refused before any lookup: a bucket not served, a key the office cannot hold
            // (no upstream HEAD, and the first bad object is the one reported).
            for (i, (bucket, key)) in objects.iter().enumerate() {
                if let Err(err) = app.objects.check(bucket, key) {
                    return Err(ApiError::bad_input(
                        format!("input.objects[{i}]"),
                        format!("s3://{bucket}/{key}: {}", err.message()),
                    ));
                }
            }
            // Looked up several at once (an object the catalog has not synced yet costs a
            // HEAD upstream: one after another, 1,000 of them took half a second on
            // loopback); in order, so the error reported is the first object's that failed.
            let found: Vec<ManifestEntry> =
                futures::stream::iter(objects.iter().cloned().enumerate())
                    // Owned items: a borrowed one makes the resolver's future fail the `Send`
                    // check (higher-ranked lifetimes of closures returning futures).
                    .map(|(i, (bucket, key))| explicit_object(app, i, bucket, key))
                    .buffered(OBJECT_LOOKUPS_AT_ONCE)
                    .try_collect()
                    .await?;
            out.entries.extend(found.into_iter().filter(|found| {
                include.is_empty() || include.iter().any(|g| g.matches(&found.key, None))
            }));
        }
    }
    if !trim.topics.is_empty() {
        if out.scenarios == 0 {
            return Err(ApiError::bad_input(
                "input.topics",
                "topics choose what trimmed scenario logs keep, and the selection has no scenario",
            ));
        }
        for (i, topic) in trim.given.iter().enumerate() {
            if !out.scenario_topics.contains(topic) {
                let known: Vec<&str> = out.scenario_topics.iter().map(String::as_str).collect();
                return Err(ApiError::bad_input(
                    format!("input.topics[{i}]"),
                    format!(
                        "no log of the selected scenarios' drives has topic {topic:?} (they have: {})",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                ));
            }
        }
    }
    let notes = drop_windows_of_whole_logs(&mut out.entries);
    Ok(Selected {
        entries: out.entries,
        notes,
    })
}

/// A log the dataset holds whole already holds every window of it: a trimmed copy would be
/// stored twice and its chunks fetched again as byte ranges while the whole log downloads.
/// Drops such trimmed members (same bucket, key and ETag as a whole member) and returns a note
/// per scenario saying where its window is.
fn drop_windows_of_whole_logs(entries: &mut Vec<ManifestEntry>) -> Vec<String> {
    let whole: std::collections::HashSet<(&str, &str, &str)> = entries
        .iter()
        .filter(|e| e.trim.is_none())
        .map(|e| (e.bucket.as_str(), e.key.as_str(), e.etag.as_str()))
        .collect();
    let redundant: Vec<bool> = entries
        .iter()
        .map(|e| {
            e.trim.is_some()
                && whole.contains(&(e.bucket.as_str(), e.key.as_str(), e.etag.as_str()))
        })
        .collect();
    let mut notes: Vec<String> = entries
        .iter()
        .zip(&redundant)
        .filter(|(_, redundant)| **redundant)
        .filter_map(|(e, _)| {
            let trim = e.trim.as_ref()?;
            let at = |ns: u64| {
                i64::try_from(ns)
                    .ok()
                    .map(DateTime::from_timestamp_nanos)
                    .map_or_else(|| ns.to_string(), |t| t.to_rfc3339())
            };
            Some(format!(
                "scenario {} ({} to {}, padding included) is inside s3://{}/{}, held whole",
                trim.scenario_id,
                at(trim.start_ns),
                at(trim.end_ns),
                e.bucket,
                e.key
            ))
        })
        .collect();
    let mut keep = redundant.into_iter().map(|r| !r);
    entries.retain(|_| keep.next().unwrap_or(true));
    notes.sort();
    notes.dedup();
    notes
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn glob(p: &str) -> Glob {
        Glob::new("include", p).expect("valid")
    }

    #[test]
    fn globs() {
        let key = "drives/2026-11-01/gz-004/d1/camera/front/000123.jpg";
        let prefix = Some("drives/2026-11-01/gz-004/d1/");
        assert!(glob("*.jpg").matches(key, prefix));
        assert!(!glob("*.mcap").matches(key, prefix));
        assert!(glob("camera/front/*").matches(key, prefix));
        assert!(
            !glob("camera/*").matches(key, prefix),
            "* stays within one step"
        );
        assert!(glob("camera/**").matches(key, prefix));
        assert!(glob("drives/**/*.jpg").matches(key, None));
        assert!(glob("00012?.jpg").matches(key, prefix));
        assert!(Glob::new("include", " ").is_err());
    }
}
