//! [`SearchIndex`]: opening, writing and searching the tantivy index.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use milepost_schema::ids::{decode_cursor, encode_cursor};
use tantivy::directory::MmapDirectory;
use tantivy::query::AllQuery;
use tantivy::schema::Schema;
use tantivy::{
    Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument, Term,
};

use super::collect::{self, MatchCollector};
use super::compile::{compile, Compiled, MAX_PREFIX_EXPANSIONS};
use super::error::{QueryError, SearchError, SearchResult};
use super::query::{parse_query, QueryTerm};
use super::schema::{self, Fields};
use super::tokenizer::{PairTokenizer, WordTokenizer, PAIR_TOKENIZER, WORD_TOKENIZER};
use super::{EntityKind, Facet, SearchDocument, SearchHit, SearchPage, SearchRequest};

/// Memory the writer may buffer before flushing a segment.
const WRITER_MEMORY_BYTES: usize = 50_000_000;
/// List name in cursors, so a cursor of another list is refused.
const CURSOR_KIND: &str = "search";

/// The search index: one writer behind a mutex, lock-free concurrent searches.
///
/// `Send + Sync`; share it as `Arc<SearchIndex>`. Every method blocks (disk I/O, commits):
/// from async code call them inside `tokio::task::spawn_blocking`. Writes are committed before
/// they return and visible to the next search.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    fields: Fields,
    /// Total and facets of the match-all query (the catalog's landing page) for one searcher
    /// generation: they change only when the index does.
    match_all: Mutex<Option<MatchAll>>,
    /// Commits made since the index was opened (the change feed batches many writes into
    /// one; `/metrics` reports it).
    commits: AtomicU64,
}

#[derive(Clone, Debug)]
struct MatchAll {
    generation: u64,
    total: usize,
    facets: Vec<Facet>,
}

impl fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchIndex")
            .field("directory", self.index.directory())
            .field("documents", &self.reader.searcher().num_docs())
            .finish_non_exhaustive()
    }
}

/// How a commit's payload records the change-feed position (`feed:<id>`).
const FEED_PAYLOAD: &str = "feed:";

impl SearchIndex {
    /// Opens the index in `dir`, creating the directory and an empty index when there is none.
    ///
    /// An index with another schema (an older version of this code) or unreadable files fails
    /// with kind `Corrupt`: delete the directory, open again and [`rebuild`](Self::rebuild).
    /// An index opened by another process fails with kind `Io`.
    pub fn open(dir: &Path) -> SearchResult<SearchIndex> {
        std::fs::create_dir_all(dir).map_err(|source| SearchError::Io {
            operation: "creating the index directory",
            source,
        })?;
        let directory =
            MmapDirectory::open(dir).map_err(|e| SearchError::index("opening")(e.into()))?;
        let (schema, fields) = schema::build();
        let exists = Index::exists(&directory)
            .map_err(|e| SearchError::index("opening")(tantivy::TantivyError::from(e)))?;
        let index = if exists {
            let index = Index::open(directory).map_err(SearchError::index("opening"))?;
            if !same_schema(&index.schema(), &schema) {
                return Err(SearchError::IncompatibleSchema);
            }
            index
        } else {
            Index::create(directory, schema, IndexSettings::default())
                .map_err(SearchError::index("creating"))?
        };
        Self::with_index(index, fields)
    }

    /// An empty index in memory, for tests and throw-away use.
    pub fn in_memory() -> SearchResult<SearchIndex> {
        let (schema, fields) = schema::build();
        Self::with_index(Index::create_in_ram(schema), fields)
    }

    fn with_index(index: Index, fields: Fields) -> SearchResult<SearchIndex> {
        index
            .tokenizers()
            .register(WORD_TOKENIZER, WordTokenizer::default());
        index
            .tokenizers()
            .register(PAIR_TOKENIZER, PairTokenizer::default());
        // Writes reload explicitly so they are visible when they return; the watch also picks
        // up the segments of background merges, which a restarted process would see anyway.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()
            .map_err(SearchError::index("opening a reader"))?;
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
            .map_err(SearchError::index("opening the writer"))?;
        Ok(SearchIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            match_all: Mutex::new(None),
            commits: AtomicU64::new(0),
        })
    }

    /// Adds `docs`, replacing any document with the same `(kind, id)` (the last one wins
    /// when `docs` repeats one), in one commit.
    pub fn upsert(&self, docs: Vec<SearchDocument>) -> SearchResult<()> {
        if docs.is_empty() {
            return Ok(());
        }
        self.write("upserting", |writer, fields| {
            for doc in &docs {
                writer.delete_term(key_term(fields, doc.kind, &doc.id));
                writer.add_document(fields.document(doc))?;
            }
            Ok(())
        })
        .map(drop)
    }

    /// Writes `upserts` (replacing documents with the same key) and removes `deletes`, in one
    /// commit whose payload records `position`, the change-feed id these writes bring the index
    /// to ([`feed_position`](Self::feed_position)).
    pub fn apply(
        &self,
        upserts: Vec<SearchDocument>,
        deletes: Vec<(EntityKind, String)>,
        position: i64,
    ) -> SearchResult<()> {
        self.write_at("applying changes", Some(position), |writer, fields| {
            for (kind, id) in &deletes {
                writer.delete_term(key_term(fields, *kind, id));
            }
            for doc in &upserts {
                writer.delete_term(key_term(fields, doc.kind, &doc.id));
                writer.add_document(fields.document(doc))?;
            }
            Ok(())
        })
        .map(drop)
    }

    /// The change-feed id the last commit brought the index to; `None` for an index never
    /// written at a feed position (new, or from a version without the feed).
    pub fn feed_position(&self) -> Option<i64> {
        let metas = self.index.load_metas().ok()?;
        metas.payload?.strip_prefix(FEED_PAYLOAD)?.parse().ok()
    }

    /// Removes the document `(kind, id)`; nothing happens when there is none.
    pub fn delete(&self, kind: EntityKind, id: &str) -> SearchResult<()> {
        self.write("deleting", |writer, fields| {
            writer.delete_term(key_term(fields, kind, id));
            Ok(())
        })
        .map(drop)
    }

    /// Replaces the whole content of the index with `docs` in one commit (searches see the
    /// old content until then) and returns the number of documents now indexed.
    pub fn rebuild(&self, docs: impl IntoIterator<Item = SearchDocument>) -> SearchResult<usize> {
        self.rebuild_with(docs, None)
    }

    /// [`rebuild`](Self::rebuild) from the database as it stood at change-feed id `position`.
    pub fn rebuild_at(
        &self,
        docs: impl IntoIterator<Item = SearchDocument>,
        position: i64,
    ) -> SearchResult<usize> {
        self.rebuild_with(docs, Some(position))
    }

    fn rebuild_with(
        &self,
        docs: impl IntoIterator<Item = SearchDocument>,
        position: Option<i64>,
    ) -> SearchResult<usize> {
        self.write_at("rebuilding", position, |writer, fields| {
            writer.delete_query(Box::new(AllQuery))?;
            // Everything is deleted already, so only a key repeated within `docs` needs a
            // delete (the last one wins, as in `upsert`). A delete per document would be
            // checked against every segment flushed in this commit. Keys are remembered as
            // hashes: a collision only costs a delete that finds nothing.
            let hasher = RandomState::new();
            let mut seen: HashSet<u64> = HashSet::new();
            for doc in docs {
                if !seen.insert(hasher.hash_one((doc.kind.as_str(), doc.id.as_str()))) {
                    writer.delete_term(key_term(fields, doc.kind, &doc.id));
                }
                writer.add_document(fields.document(&doc))?;
            }
            Ok(())
        })
    }

    /// Number of documents searches see.
    pub fn doc_count(&self) -> usize {
        usize::try_from(self.reader.searcher().num_docs()).unwrap_or(usize::MAX)
    }

    /// One page of the hits of `request`, with the total and facets over all hits.
    pub fn search(&self, request: &SearchRequest) -> SearchResult<SearchPage> {
        let parsed = parse_query(&request.query)?;
        let start = match &request.after {
            None => 0,
            Some(cursor) => decode_cursor(CURSOR_KIND, cursor)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| p.checked_add(1))
                .ok_or_else(|| SearchError::BadCursor {
                    cursor: cursor.clone(),
                })?,
        };
        let Compiled {
            query,
            order,
            phrase_prefix_at,
        } = compile(&self.fields, &parsed, request.kinds.as_deref());
        let match_all = request.kinds.as_ref().is_none_or(Vec::is_empty)
            && parsed
                .clauses
                .iter()
                .all(|c| !c.negated && c.term == QueryTerm::All);
        let searcher = self.reader.searcher();
        let counted = match match_all {
            true => Some(self.match_all_counts(&searcher)?),
            false => None,
        };
        let end = start.saturating_add(request.first);
        let collector = MatchCollector {
            order,
            end,
            count_facets: counted.is_none(),
        };
        let segments = match (searcher.search(&*query, &collector), phrase_prefix_at) {
            (Ok(segments), _) => segments,
            // The only invalid argument a compiled query can meet: a too-broad phrase prefix.
            (Err(tantivy::TantivyError::InvalidArgument(_)), Some(position)) => {
                return Err(SearchError::query(
                    position,
                    QueryError::PrefixTooBroad {
                        max: MAX_PREFIX_EXPANSIONS,
                    },
                ));
            }
            (Err(source), _) => return Err(SearchError::index("searching")(source)),
        };
        let (total, facets) = match counted {
            Some(MatchAll { total, facets, .. }) => (total, facets),
            None => (
                collect::total(&segments),
                collect::facets(&segments).map_err(SearchError::index("counting facets"))?,
            ),
        };
        let end = end.min(total);
        let hits: Vec<SearchHit> = collect::page(&searcher, segments, order, start, end)
            .map_err(SearchError::index("reading hits"))?
            .into_iter()
            .map(|hit| SearchHit {
                kind: hit.kind,
                id: hit.id,
                score: hit.score,
                cursor: encode_cursor(CURSOR_KIND, i64::try_from(hit.position).unwrap_or(i64::MAX)),
            })
            .collect();
        Ok(SearchPage {
            total,
            has_next: end < total,
            end_cursor: hits.last().map(|h| h.cursor.clone()),
            hits,
            facets,
        })
    }

    /// Total and facets over every document of `searcher`, cached per searcher generation.
    fn match_all_counts(&self, searcher: &tantivy::Searcher) -> SearchResult<MatchAll> {
        let generation = searcher.generation().generation_id();
        let mut cached = self
            .match_all
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(hit) = cached.as_ref().filter(|c| c.generation == generation) {
            return Ok(hit.clone());
        }
        let segments =
            collect::count_all(searcher).map_err(SearchError::index("counting facets"))?;
        let counts = MatchAll {
            generation,
            total: collect::total(&segments),
            facets: collect::facets(&segments).map_err(SearchError::index("counting facets"))?,
        };
        *cached = Some(counts.clone());
        Ok(counts)
    }

    /// Runs `ops` on the writer, then commits and reloads the reader; on any failure the
    /// uncommitted operations are rolled back so that a later commit cannot publish half of
    /// them. Returns the number of documents right after the commit.
    fn write(
        &self,
        operation: &'static str,
        ops: impl FnOnce(&mut IndexWriter<TantivyDocument>, &Fields) -> tantivy::Result<()>,
    ) -> SearchResult<usize> {
        self.write_at(operation, None, ops)
    }

    /// Runs `ops` and commits, recording `position` (else keeping the last one recorded) as
    /// the commit's payload.
    fn write_at(
        &self,
        operation: &'static str,
        position: Option<i64>,
        ops: impl FnOnce(&mut IndexWriter<TantivyDocument>, &Fields) -> tantivy::Result<()>,
    ) -> SearchResult<usize> {
        let position = position.or_else(|| self.feed_position());
        let mut writer = self.lock_writer()?;
        let result = ops(&mut writer, &self.fields)
            .and_then(|()| {
                let mut commit = writer.prepare_commit()?;
                if let Some(position) = position {
                    commit.set_payload(&format!("{FEED_PAYLOAD}{position}"));
                }
                commit.commit().map(drop)
            })
            .and_then(|()| self.reader.reload());
        if let Err(source) = result {
            // A failed rollback leaves the writer unusable; the error already reported is the
            // one the caller can act on.
            if let Err(rollback) = writer.rollback() {
                tracing::warn!(error = %rollback, "search index rollback failed");
            }
            return Err(SearchError::Index { operation, source });
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(self.doc_count())
    }

    /// Commits made since the index was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The writer; after a panic while it was held, whatever it had buffered is rolled back.
    fn lock_writer(&self) -> SearchResult<MutexGuard<'_, IndexWriter<TantivyDocument>>> {
        match self.writer.lock() {
            Ok(writer) => Ok(writer),
            Err(poisoned) => {
                let mut writer = poisoned.into_inner();
                writer
                    .rollback()
                    .map_err(SearchError::index("recovering the writer"))?;
                self.writer.clear_poison();
                Ok(writer)
            }
        }
    }
}

fn key_term(fields: &Fields, kind: EntityKind, id: &str) -> Term {
    Term::from_field_text(fields.key, &schema::key(kind, id))
}

/// Same fields with the same options (tokenizer names included).
fn same_schema(on_disk: &Schema, expected: &Schema) -> bool {
    on_disk == expected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn index_is_send_and_sync() {
        assert_send_sync::<SearchIndex>();
    }
}
