//! The catalog's full-text and faceted search index (tantivy) and its query language.
//!
//! The index is a projection of the catalog: [`SearchIndex::rebuild`] recreates it from the
//! database at any time, [`SearchIndex::upsert`] and [`SearchIndex::delete`] keep it current.
//! Each node keeps its own index.
//!
//! - **Documents** ([`SearchDocument`]) are drives, scenarios, runs and datasets, identified by
//!   `(kind, id)`.
//! - **Queries** use the contract's syntax, parsed by [`parse_query`] (see [`query`](self::query)
//!   for the grammar); tantivy's own query syntax is never exposed.
//! - **Results** ([`SearchPage`]) are ordered by relevance (score descending, ties by kind in
//!   [`EntityKind`] declaration order then id) when the query has free text, and by start time
//!   (newest first, entities without a time last, ties by id then kind) otherwise. Cursors are
//!   positions in that order. Facet counts cover every matching document, not just the page.
//!
//! All methods are synchronous and may block on disk I/O or a commit: async callers run them
//! with `tokio::task::spawn_blocking` (share the index as `Arc<SearchIndex>`).

mod collect;
mod compile;
mod error;
mod index;
pub mod query;
mod schema;
mod tokenizer;

use chrono::{DateTime, Utc};

pub use error::{QueryError, SearchError, SearchErrorKind, SearchResult};
pub use index::SearchIndex;
/// The kind of a catalog entity: `drive`, `scenario`, `run` or `dataset` (the schema crate's
/// stored enum, also used for run inputs).
pub use milepost_schema::enums::InputKind as EntityKind;
pub use query::{
    parse_query, Clause, ParsedQuery, QueryField, QueryTerm, TimeBound, FIELDS, MAX_QUERY_CHARS,
    MAX_TERMS,
};

/// Fields that every [`SearchPage`] has a facet for, in this order.
pub const FACET_FIELDS: &[&str] = &["kind", "vehicle", "city", "weather", "tag", "software"];
/// Most values reported per facet (the most frequent ones).
pub const MAX_FACET_VALUES: usize = 50;
/// Page size of a [`SearchRequest::default`], as in the contract.
pub const DEFAULT_PAGE_SIZE: usize = 20;

/// What the index knows about one catalog entity. Text is indexed as given; keyword values
/// (vehicle, city, weather, software, pipeline, status, tags, labels, topics, drive id) are
/// matched whole and case-insensitively, and reported in facets lowercased. Blank values
/// count as absent.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchDocument {
    pub kind: EntityKind,
    pub id: String,
    /// Display title (a scenario's label, a dataset's name ...); free text.
    pub title: String,
    pub vehicle: Option<String>,
    pub city: Option<String>,
    /// Free text only (no `route:` field).
    pub route: Option<String>,
    pub weather: Option<String>,
    /// Software version, e.g. `av-3.14.2`.
    pub software: Option<String>,
    pub pipeline: Option<String>,
    /// Free text only (no `commit:` field).
    pub commit: Option<String>,
    pub status: Option<String>,
    pub tags: Vec<String>,
    /// Event kinds and labels, scenario labels.
    pub labels: Vec<String>,
    /// MCAP topics.
    pub topics: Vec<String>,
    pub description: Option<String>,
    /// Values of unknown sidecar fields, as `"key value"`; free text only.
    pub extra_text: Vec<String>,
    /// Start time: a drive's `started_at`, a scenario's start, a run's `started_at`, a
    /// dataset's `created_at`. Kept to the microsecond.
    pub time: Option<DateTime<Utc>>,
    /// For scenarios: the drive they belong to.
    pub drive_id: Option<String>,
    pub size_bytes: Option<i64>,
}

impl SearchDocument {
    /// A document with only its identity and title; set the other fields directly.
    pub fn new(kind: EntityKind, id: impl Into<String>, title: impl Into<String>) -> Self {
        SearchDocument {
            kind,
            id: id.into(),
            title: title.into(),
            vehicle: None,
            city: None,
            route: None,
            weather: None,
            software: None,
            pipeline: None,
            commit: None,
            status: None,
            tags: Vec::new(),
            labels: Vec::new(),
            topics: Vec::new(),
            description: None,
            extra_text: Vec::new(),
            time: None,
            drive_id: None,
            size_bytes: None,
        }
    }
}

/// One page of a search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchRequest {
    /// Query text (see [`query`](self::query)); empty matches everything.
    pub query: String,
    /// Only these kinds; `None` or an empty list means every kind.
    pub kinds: Option<Vec<EntityKind>>,
    /// Page size; 0 returns only the total and the facets.
    pub first: usize,
    /// Cursor of the last hit already seen (a previous page's `end_cursor`).
    pub after: Option<String>,
}

impl SearchRequest {
    /// The first page of [`DEFAULT_PAGE_SIZE`] hits for `query`.
    pub fn new(query: impl Into<String>) -> Self {
        SearchRequest {
            query: query.into(),
            ..SearchRequest::default()
        }
    }
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            query: String::new(),
            kinds: None,
            first: DEFAULT_PAGE_SIZE,
            after: None,
        }
    }
}

/// A page of hits, the total number of matches, and facet counts over all matches.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchPage {
    /// Number of documents matching the query (all pages).
    pub total: usize,
    pub hits: Vec<SearchHit>,
    pub has_next: bool,
    /// Cursor of the last hit, to pass as `after` for the next page.
    pub end_cursor: Option<String>,
    /// One facet per [`FACET_FIELDS`] entry, in that order.
    pub facets: Vec<Facet>,
}

/// One matching entity.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    pub kind: EntityKind,
    pub id: String,
    /// Relevance (BM25) for queries with free text; 1.0 for every hit otherwise.
    pub score: f32,
    /// Opaque position of this hit, usable as `after`.
    pub cursor: String,
}

/// Counts of the values of one field among all matching documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facet {
    pub field: String,
    /// By count descending, then value; at most [`MAX_FACET_VALUES`].
    pub values: Vec<FacetValue>,
}

/// How many matching documents have `value` (lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FacetValue {
    pub value: String,
    pub count: u64,
}
