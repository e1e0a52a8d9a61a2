//! Collecting every match of a query once: facet counts, the total, and the candidates for
//! the requested page.
//!
//! Matches are read in blocks (tantivy's block iteration for filters, buffered blocks when
//! scoring), and facet columns are read a block at a time, which is what makes counting over
//! hundreds of thousands of matches cheap. Only the page's *candidates* are kept: matches at or
//! above the primary key (score or time) of the `end`-th best seen so far, ties included; the
//! page is selected from them afterwards, reading ids only for the few documents that can
//! still land on it, so ordering is exact and stable across segments.

use std::cmp::Ordering;
use std::collections::HashMap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, ColumnBlockAccessor, StrColumn};
use tantivy::error::DataCorruption;
use tantivy::query::Weight;
use tantivy::{DocId, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyError};

use super::schema::{ID_SORT, KIND_RANK, TIME};
use super::{EntityKind, Facet, FacetValue, FACET_FIELDS, MAX_FACET_VALUES};

/// Documents per block when the collector buffers scored matches itself.
const BLOCK: usize = 64;
/// Fewest candidates kept before the first pruning, so small pages do not prune constantly.
const MIN_CANDIDATES: usize = 256;

/// How hits are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Score descending, then kind rank, then id.
    Relevance,
    /// Time descending (none last), then id, then kind rank.
    Time,
}

impl Order {
    /// Primary key comparison: `Less` when `a` comes first.
    fn primary(self, a: &Match, b: &Match) -> Ordering {
        match self {
            Order::Relevance => b.score.total_cmp(&a.score),
            Order::Time => b.time.cmp(&a.time),
        }
    }

    /// Tie-break of equal primary keys, on kind rank and id (an id or, within one segment,
    /// its term ordinal, which sorts the same way).
    fn ties<I: Ord>(self, (a_rank, a_id): (u64, &I), (b_rank, b_id): (u64, &I)) -> Ordering {
        match self {
            Order::Relevance => a_rank.cmp(&b_rank).then_with(|| a_id.cmp(b_id)),
            Order::Time => a_id.cmp(b_id).then_with(|| a_rank.cmp(&b_rank)),
        }
    }
}

/// One matching document.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Match {
    segment: SegmentOrdinal,
    doc: DocId,
    score: Score,
    /// Microseconds; `i64::MIN` without a time. Only read in [`Order::Time`].
    time: i64,
}

/// A hit on the requested page.
#[derive(Clone, Debug)]
pub(crate) struct RankedHit {
    pub kind: EntityKind,
    pub id: String,
    pub score: Score,
    /// Position in the full ordered result list.
    pub position: usize,
}

/// Counts every match, optionally with facets, and keeps the candidates for the first `end`
/// positions.
#[derive(Debug)]
pub(crate) struct MatchCollector {
    pub order: Order,
    /// End (exclusive) of the requested page in the full ordered list.
    pub end: usize,
    /// Whether to count facets (the caller may already have them).
    pub count_facets: bool,
}

/// What [`MatchCollector`] found in one segment.
pub(crate) struct SegmentMatches {
    total: usize,
    /// Candidates for the page (not every match).
    matches: Vec<Match>,
    /// Per facet field (in [`FACET_FIELDS`] order): its column in this segment and the number
    /// of matches per term ordinal.
    facets: Vec<(Option<StrColumn>, Vec<u64>)>,
}

pub(crate) struct SegmentMatchCollector {
    segment: SegmentOrdinal,
    order: Order,
    end: usize,
    time: Option<Column<tantivy::DateTime>>,
    times: Vec<Option<tantivy::DateTime>>,
    total: usize,
    matches: Vec<Match>,
    /// The `end`-th best candidate at the last pruning: nothing ranked below it can be on the
    /// page.
    pivot: Option<Match>,
    /// Prune when `matches` reaches this length.
    prune_at: usize,
    facets: Vec<(Option<StrColumn>, Vec<u64>)>,
    accessor: ColumnBlockAccessor<u64>,
}

/// The facet columns of a segment with zeroed counts.
fn facet_columns(reader: &SegmentReader) -> tantivy::Result<Vec<(Option<StrColumn>, Vec<u64>)>> {
    let fast = reader.fast_fields();
    FACET_FIELDS
        .iter()
        .map(|name| {
            let column = fast.str(name)?;
            let counts = vec![0; column.as_ref().map_or(0, |c| c.num_terms())];
            Ok((column, counts))
        })
        .collect()
}

/// Adds the values of `docs` in `column` to `counts` (one per document and distinct value).
fn count_block(
    accessor: &mut ColumnBlockAccessor<u64>,
    column: &StrColumn,
    counts: &mut [u64],
    docs: &[DocId],
) {
    accessor.fetch_block(docs, column.ords());
    for ord in accessor.iter_vals() {
        if let Some(count) = counts.get_mut(ord as usize) {
            *count += 1;
        }
    }
}

impl Collector for MatchCollector {
    type Fruit = Vec<SegmentMatches>;
    type Child = SegmentMatchCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentMatchCollector> {
        let time = match self.order {
            Order::Time => reader.fast_fields().column_opt::<tantivy::DateTime>(TIME)?,
            Order::Relevance => None,
        };
        let facets = if self.count_facets {
            facet_columns(reader)?
        } else {
            Vec::new()
        };
        Ok(SegmentMatchCollector {
            segment,
            order: self.order,
            end: self.end,
            time,
            times: Vec::with_capacity(BLOCK),
            total: 0,
            matches: Vec::new(),
            pivot: None,
            prune_at: self.end.saturating_mul(2).max(MIN_CANDIDATES),
            facets,
            accessor: ColumnBlockAccessor::default(),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.order == Order::Relevance
    }

    fn merge_fruits(&self, fruits: Vec<SegmentMatches>) -> tantivy::Result<Vec<SegmentMatches>> {
        Ok(fruits)
    }

    /// Like tantivy's default, but scored matches are also handed over in blocks, and deleted
    /// documents are filtered out of blocks rather than collected one by one.
    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentMatches> {
        let mut child = self.for_segment(segment, reader)?;
        let alive = reader.alive_bitset();
        let is_alive = |doc: DocId| alive.is_none_or(|a| a.is_alive(doc));
        let mut docs: Vec<DocId> = Vec::with_capacity(BLOCK);
        if self.requires_scoring() {
            let mut scores: Vec<Score> = Vec::with_capacity(BLOCK);
            weight.for_each(reader, &mut |doc, score| {
                if is_alive(doc) {
                    docs.push(doc);
                    scores.push(score);
                    if docs.len() == BLOCK {
                        child.collect_docs(&docs, &scores);
                        docs.clear();
                        scores.clear();
                    }
                }
            })?;
            child.collect_docs(&docs, &scores);
        } else {
            weight.for_each_no_score(reader, &mut |block| {
                if alive.is_none() {
                    child.collect_docs(block, &[]);
                } else {
                    docs.clear();
                    docs.extend(block.iter().copied().filter(|doc| is_alive(*doc)));
                    child.collect_docs(&docs, &[]);
                }
            })?;
        }
        Ok(child.harvest())
    }
}

impl SegmentMatchCollector {
    /// Collects `docs` (ascending) with their `scores` (empty when not scoring: every score is
    /// then 0).
    fn collect_docs(&mut self, docs: &[DocId], scores: &[Score]) {
        if docs.is_empty() {
            return;
        }
        self.total += docs.len();
        for (column, counts) in &mut self.facets {
            if let Some(column) = column {
                count_block(&mut self.accessor, column, counts, docs);
            }
        }
        if self.end == 0 {
            return;
        }
        self.times.clear();
        self.times.resize(docs.len(), None);
        if let Some(time) = &self.time {
            time.first_vals(docs, &mut self.times);
        }
        for (index, doc) in docs.iter().enumerate() {
            let candidate = Match {
                segment: self.segment,
                doc: *doc,
                score: scores.get(index).copied().unwrap_or(0.0),
                time: self.times[index].map_or(i64::MIN, |t| t.into_timestamp_micros()),
            };
            let on_page = self
                .pivot
                .as_ref()
                .is_none_or(|pivot| self.order.primary(&candidate, pivot) != Ordering::Greater);
            if on_page {
                self.matches.push(candidate);
            }
        }
        if self.matches.len() >= self.prune_at {
            self.prune();
        }
    }

    /// Drops the candidates ranked below the `end`-th best (its ties stay).
    fn prune(&mut self) {
        let order = self.order;
        let (_, pivot, _) = self
            .matches
            .select_nth_unstable_by(self.end - 1, |a, b| order.primary(a, b));
        let pivot = *pivot;
        self.matches
            .retain(|m| order.primary(m, &pivot) != Ordering::Greater);
        self.pivot = Some(pivot);
        // Many ties with the pivot cannot be pruned: wait for the list to double again.
        self.prune_at = self.prune_at.max(self.matches.len().saturating_mul(2));
    }
}

impl SegmentCollector for SegmentMatchCollector {
    type Fruit = SegmentMatches;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.collect_docs(&[doc], &[score]);
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        self.collect_docs(docs, &[]);
    }

    fn harvest(self) -> SegmentMatches {
        SegmentMatches {
            total: self.total,
            matches: self.matches,
            facets: self.facets,
        }
    }
}

/// Total and facet counts of every live document, straight from the facet columns (no query):
/// what a match-all query counts.
pub(crate) fn count_all(searcher: &Searcher) -> tantivy::Result<Vec<SegmentMatches>> {
    let mut out = Vec::with_capacity(searcher.segment_readers().len());
    let mut values = vec![0u64; 1024];
    let mut accessor = ColumnBlockAccessor::default();
    for reader in searcher.segment_readers() {
        let mut facets = facet_columns(reader)?;
        match reader.alive_bitset() {
            // Each row of a column is one (document, distinct value): count rows.
            None => {
                for (column, counts) in &mut facets {
                    let Some(column) = column else { continue };
                    let rows = &column.ords().values;
                    let num_rows = u64::from(rows.num_vals());
                    let mut at = 0u64;
                    while at < num_rows {
                        let len = usize::try_from(num_rows - at)
                            .unwrap_or(usize::MAX)
                            .min(values.len());
                        rows.get_range(at, &mut values[..len]);
                        for ord in &values[..len] {
                            if let Some(count) = counts.get_mut(*ord as usize) {
                                *count += 1;
                            }
                        }
                        at += len as u64;
                    }
                }
            }
            Some(_) => {
                let alive: Vec<DocId> = reader.doc_ids_alive().collect();
                for block in alive.chunks(BLOCK) {
                    for (column, counts) in &mut facets {
                        if let Some(column) = column {
                            count_block(&mut accessor, column, counts, block);
                        }
                    }
                }
            }
        }
        out.push(SegmentMatches {
            total: usize::try_from(reader.num_docs()).unwrap_or(usize::MAX),
            matches: Vec::new(),
            facets,
        });
    }
    Ok(out)
}

/// Number of matches.
pub(crate) fn total(segments: &[SegmentMatches]) -> usize {
    segments.iter().map(|s| s.total).sum()
}

/// One facet per [`FACET_FIELDS`] entry, values by count descending then value.
pub(crate) fn facets(segments: &[SegmentMatches]) -> tantivy::Result<Vec<Facet>> {
    let mut out = Vec::with_capacity(FACET_FIELDS.len());
    for (index, field) in FACET_FIELDS.iter().enumerate() {
        let mut merged: HashMap<String, u64> = HashMap::new();
        for segment in segments {
            let Some((Some(column), counts)) = segment.facets.get(index) else {
                continue;
            };
            let nonzero: Vec<(u64, u64)> = counts
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(ord, count)| (ord as u64, *count))
                .collect();
            let mut counts_in_order = nonzero.iter().map(|(_, count)| *count);
            column.dictionary().sorted_ords_to_term_cb(
                nonzero.iter().map(|(ord, _)| *ord),
                |term| {
                    let count = counts_in_order.next().unwrap_or(0);
                    *merged
                        .entry(String::from_utf8_lossy(term).into_owned())
                        .or_default() += count;
                    Ok(())
                },
            )?;
        }
        let mut values: Vec<FacetValue> = merged
            .into_iter()
            .map(|(value, count)| FacetValue { value, count })
            .collect();
        values.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        values.truncate(MAX_FACET_VALUES);
        out.push(Facet {
            field: (*field).to_owned(),
            values,
        });
    }
    Ok(out)
}

/// The hits at positions `start..end` of the full ordered list, from the collected
/// candidates (which hold every match that can be at a position before `end`).
pub(crate) fn page(
    searcher: &Searcher,
    segments: Vec<SegmentMatches>,
    order: Order,
    start: usize,
    end: usize,
) -> tantivy::Result<Vec<RankedHit>> {
    let mut all: Vec<Match> = segments.into_iter().flat_map(|s| s.matches).collect();
    let end = end.min(all.len());
    if start >= end {
        return Ok(Vec::new());
    }
    // Everything that can be on the page: at or above the primary value at position end - 1.
    let (_, pivot, _) = all.select_nth_unstable_by(end - 1, |a, b| order.primary(a, b));
    let pivot = *pivot;
    all.retain(|m| order.primary(m, &pivot) != Ordering::Greater);

    let mut ranked = resolve_keys(searcher, all, order, end)?;
    ranked.sort_by(|(a, a_rank, a_id), (b, b_rank, b_id)| {
        order
            .primary(a, b)
            .then_with(|| order.ties((*a_rank, a_id), (*b_rank, b_id)))
    });

    ranked
        .into_iter()
        .enumerate()
        .skip(start)
        .take(end - start)
        .map(|(position, (m, rank, id))| {
            let kind = usize::try_from(rank)
                .ok()
                .and_then(|r| EntityKind::ALL.get(r).copied())
                .ok_or_else(|| corrupt(format!("unknown kind rank {rank}")))?;
            Ok(RankedHit {
                kind,
                id,
                score: match order {
                    Order::Relevance => m.score,
                    Order::Time => 1.0,
                },
                position,
            })
        })
        .collect()
}

/// `(match, kind rank, id)` of the candidates that can be among the first `end` hits.
///
/// Within a segment, id term ordinals sort like ids, so each segment's candidates are ordered
/// on ordinals first and only its best `end` have their id read from the dictionary: with many
/// ties (a prefix query scores every match the same) that is a few dozen reads instead of one
/// per match.
fn resolve_keys(
    searcher: &Searcher,
    matches: Vec<Match>,
    order: Order,
    end: usize,
) -> tantivy::Result<Vec<(Match, u64, String)>> {
    let mut by_segment: HashMap<SegmentOrdinal, Vec<Match>> = HashMap::new();
    for m in matches {
        by_segment.entry(m.segment).or_default().push(m);
    }
    let mut out = Vec::new();
    for (segment, matches) in by_segment {
        let fast = searcher.segment_reader(segment).fast_fields();
        let ranks: Column<u64> = fast
            .column_opt(KIND_RANK)?
            .ok_or_else(|| corrupt(format!("segment {segment} has no {KIND_RANK} column")))?;
        let ids = fast
            .str(ID_SORT)?
            .ok_or_else(|| corrupt(format!("segment {segment} has no {ID_SORT} column")))?;
        let mut keyed: Vec<(Match, u64, u64)> = Vec::with_capacity(matches.len());
        for m in matches {
            let rank = ranks.first(m.doc).unwrap_or(u64::MAX);
            let ord = ids
                .term_ords(m.doc)
                .next()
                .ok_or_else(|| corrupt(format!("document {} has no id", m.doc)))?;
            keyed.push((m, rank, ord));
        }
        keyed.sort_by(|(a, a_rank, a_ord), (b, b_rank, b_ord)| {
            order
                .primary(a, b)
                .then_with(|| order.ties((*a_rank, a_ord), (*b_rank, b_ord)))
        });
        keyed.truncate(end);

        // The dictionary is cheapest to read in ordinal order.
        let mut ords: Vec<u64> = keyed.iter().map(|(_, _, ord)| *ord).collect();
        ords.sort_unstable();
        ords.dedup();
        let mut terms: HashMap<u64, String> = HashMap::with_capacity(ords.len());
        let mut targets = ords.iter().copied();
        let complete = ids
            .dictionary()
            .sorted_ords_to_term_cb(ords.iter().copied(), |term| {
                if let Some(ord) = targets.next() {
                    terms.insert(ord, String::from_utf8_lossy(term).into_owned());
                }
                Ok(())
            })?;
        if !complete {
            return Err(corrupt(format!(
                "segment {segment}: id dictionary is short"
            )));
        }
        for (m, rank, ord) in keyed {
            let id = terms
                .get(&ord)
                .cloned()
                .ok_or_else(|| corrupt(format!("segment {segment}: no id for ordinal {ord}")))?;
            out.push((m, rank, id));
        }
    }
    Ok(out)
}

fn corrupt(comment: String) -> TantivyError {
    TantivyError::DataCorruption(DataCorruption::comment_only(comment))
}
