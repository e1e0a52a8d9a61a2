//! Collecting every match of a query once: its score or time for ordering, and facet counts.
//!
//! Facet counts and the total need every match anyway, so one pass records all of them
//! (a few bytes per match) and the page is selected afterwards: a partial selection on the
//! primary key (score or time), then ids are read only for the documents that can still land
//! on the page (those at or above the page's last primary value, ties included), so ordering
//! is exact and stable across segments.

use std::cmp::Ordering;
use std::collections::HashMap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::error::DataCorruption;
use tantivy::{DocId, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyError};

use super::schema::{ID_SORT, KIND_RANK, TIME};
use super::{EntityKind, Facet, FacetValue, FACET_FIELDS, MAX_FACET_VALUES};

/// How hits are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Score descending, then kind rank, then id.
    Relevance,
    /// Time descending (none last), then id, then kind rank.
    Time,
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

/// Gathers every match with facet counts.
#[derive(Debug)]
pub(crate) struct MatchCollector {
    pub order: Order,
}

/// What [`MatchCollector`] found in one segment.
pub(crate) struct SegmentMatches {
    matches: Vec<Match>,
    /// Per facet field (in [`FACET_FIELDS`] order): its column in this segment and the number
    /// of matches per term ordinal.
    facets: Vec<(Option<StrColumn>, Vec<u64>)>,
}

pub(crate) struct SegmentMatchCollector {
    segment: SegmentOrdinal,
    time: Option<Column<tantivy::DateTime>>,
    matches: Vec<Match>,
    facets: Vec<(Option<StrColumn>, Vec<u64>)>,
}

impl Collector for MatchCollector {
    type Fruit = Vec<SegmentMatches>;
    type Child = SegmentMatchCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentMatchCollector> {
        let fast = reader.fast_fields();
        let time = match self.order {
            Order::Time => fast.column_opt::<tantivy::DateTime>(TIME)?,
            Order::Relevance => None,
        };
        let facets = FACET_FIELDS
            .iter()
            .map(|name| {
                let column = fast.str(name)?;
                let counts = vec![0; column.as_ref().map_or(0, |c| c.num_terms())];
                Ok((column, counts))
            })
            .collect::<tantivy::Result<_>>()?;
        Ok(SegmentMatchCollector {
            segment,
            time,
            matches: Vec::new(),
            facets,
        })
    }

    fn requires_scoring(&self) -> bool {
        self.order == Order::Relevance
    }

    fn merge_fruits(&self, fruits: Vec<SegmentMatches>) -> tantivy::Result<Vec<SegmentMatches>> {
        Ok(fruits)
    }
}

impl SegmentCollector for SegmentMatchCollector {
    type Fruit = SegmentMatches;

    fn collect(&mut self, doc: DocId, score: Score) {
        let time = self
            .time
            .as_ref()
            .and_then(|c| c.first(doc))
            .map_or(i64::MIN, |t| t.into_timestamp_micros());
        self.matches.push(Match {
            segment: self.segment,
            doc,
            score,
            time,
        });
        for (column, counts) in &mut self.facets {
            if let Some(column) = column {
                for ord in column.term_ords(doc) {
                    if let Some(count) = counts.get_mut(ord as usize) {
                        *count += 1;
                    }
                }
            }
        }
    }

    fn harvest(self) -> SegmentMatches {
        SegmentMatches {
            matches: self.matches,
            facets: self.facets,
        }
    }
}

/// Number of matches.
pub(crate) fn total(segments: &[SegmentMatches]) -> usize {
    segments.iter().map(|s| s.matches.len()).sum()
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

/// The hits at positions `start..end` of the full ordered list.
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
    let primary = |a: &Match, b: &Match| match order {
        Order::Relevance => b.score.total_cmp(&a.score),
        Order::Time => b.time.cmp(&a.time),
    };
    // Everything that can be on the page: at or above the primary value at position end - 1.
    let (_, pivot, _) = all.select_nth_unstable_by(end - 1, primary);
    let pivot = *pivot;
    all.retain(|m| primary(m, &pivot) != Ordering::Greater);

    let keys = resolve_keys(searcher, &all)?;
    let mut ranked: Vec<(Match, u64, String)> = all
        .into_iter()
        .zip(keys)
        .map(|(m, (rank, id))| (m, rank, id))
        .collect();
    ranked.sort_by(|(a, a_rank, a_id), (b, b_rank, b_id)| {
        primary(a, b).then_with(|| match order {
            Order::Relevance => a_rank.cmp(b_rank).then_with(|| a_id.cmp(b_id)),
            Order::Time => a_id.cmp(b_id).then_with(|| a_rank.cmp(b_rank)),
        })
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

/// `(kind rank, id)` of each match, read from fast fields segment by segment (ids in term
/// order, which is how the dictionary is cheapest to read).
fn resolve_keys(searcher: &Searcher, matches: &[Match]) -> tantivy::Result<Vec<(u64, String)>> {
    let mut keys = vec![(u64::MAX, String::new()); matches.len()];
    let mut by_segment: HashMap<SegmentOrdinal, Vec<usize>> = HashMap::new();
    for (index, m) in matches.iter().enumerate() {
        by_segment.entry(m.segment).or_default().push(index);
    }
    for (segment, indexes) in by_segment {
        let fast = searcher.segment_reader(segment).fast_fields();
        let ranks: Column<u64> = fast
            .column_opt(KIND_RANK)?
            .ok_or_else(|| corrupt(format!("segment {segment} has no {KIND_RANK} column")))?;
        let ids = fast
            .str(ID_SORT)?
            .ok_or_else(|| corrupt(format!("segment {segment} has no {ID_SORT} column")))?;
        let mut by_ord: Vec<(u64, usize)> = Vec::with_capacity(indexes.len());
        for index in indexes {
            let doc = matches[index].doc;
            keys[index].0 = ranks.first(doc).unwrap_or(u64::MAX);
            let ord = ids
                .term_ords(doc)
                .next()
                .ok_or_else(|| corrupt(format!("document {doc} has no id")))?;
            by_ord.push((ord, index));
        }
        by_ord.sort_unstable();
        let mut targets = by_ord.iter().map(|(_, index)| *index);
        let complete = ids.dictionary().sorted_ords_to_term_cb(
            by_ord.iter().map(|(ord, _)| *ord),
            |term| {
                if let Some(index) = targets.next() {
                    keys[index].1 = String::from_utf8_lossy(term).into_owned();
                }
                Ok(())
            },
        )?;
        if !complete {
            return Err(corrupt(format!(
                "segment {segment}: id dictionary is short"
            )));
        }
    }
    Ok(keys)
}

fn corrupt(comment: String) -> TantivyError {
    TantivyError::DataCorruption(DataCorruption::comment_only(comment))
}
