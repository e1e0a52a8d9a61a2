//! Turning a [`ParsedQuery`] into a tantivy query.
//!
//! - Free text must match the `text` field (every free-text value); a match in the id or
//!   title adds to the score. One word is a term query, two words one word-pair term, more a
//!   phrase of word pairs (see [`tokenizer`](super::tokenizer)). A trailing `*` on
//!   one word is an unlimited range over the term dictionary; on a phrase (`cut-i*`) it is a
//!   regex phrase whose last word expands to every matching word, up to
//!   [`MAX_PREFIX_EXPANSIONS`] per segment: beyond that the search fails (a too-broad prefix)
//!   rather than dropping matches.
//! - `field:value`, time bounds and the kinds filter are filters: they decide what matches and
//!   add nothing to the score.
//! - Negated terms exclude; a query without positive terms starts from all documents.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use tantivy::query::{
    wildcard_query_to_regex_str, AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery,
    InvertedIndexRangeQuery, Occur, PhraseQuery, Query, RangeQuery, RegexPhraseQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::Term;

use super::collect::Order;
use super::query::{ParsedQuery, QueryTerm, TimeBound};
use super::schema::Fields;
use super::tokenizer::pair;
use super::EntityKind;

/// Extra weight of a free-text match in the id or title.
const TITLE_BOOST: f32 = 2.0;
/// Most words the prefix of a phrase prefix (`cut-i*`) may expand to, per segment.
pub(crate) const MAX_PREFIX_EXPANSIONS: u32 = 1 << 14;

/// A query ready to run.
pub(crate) struct Compiled {
    pub query: Box<dyn Query>,
    pub order: Order,
    /// Position of the first phrase prefix, which fails the search when it expands too much.
    pub phrase_prefix_at: Option<usize>,
}

/// The tantivy query for `parsed`, restricted to `kinds` when given, and the order its hits
/// take.
pub(crate) fn compile(
    fields: &Fields,
    parsed: &ParsedQuery,
    kinds: Option<&[EntityKind]>,
) -> Compiled {
    let order = if parsed.has_free_text() {
        Order::Relevance
    } else {
        Order::Time
    };
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut phrase_prefix_at = None;
    for clause in &parsed.clauses {
        if let QueryTerm::Text {
            words,
            prefix: true,
            ..
        } = &clause.term
        {
            if words.len() > 1 {
                phrase_prefix_at = phrase_prefix_at.or(Some(clause.position));
            }
        }
        if clause.negated {
            clauses.push((Occur::MustNot, matcher(fields, &clause.term)));
            continue;
        }
        let query = match &clause.term {
            QueryTerm::Text { words, prefix, .. } => {
                let in_text = text_query(fields.text, fields.text_pairs, words, *prefix);
                let in_title = text_query(fields.title, fields.title_pairs, words, *prefix);
                Box::new(BooleanQuery::new(vec![
                    (Occur::Must, in_text),
                    (
                        Occur::Should,
                        Box::new(BoostQuery::new(in_title, TITLE_BOOST)),
                    ),
                ])) as Box<dyn Query>
            }
            term => filter(matcher(fields, term)),
        };
        clauses.push((Occur::Must, query));
    }
    if let Some(kinds) = kinds.filter(|k| !k.is_empty()) {
        let terms = kinds
            .iter()
            .map(|k| Term::from_field_text(fields.kind, k.as_str()));
        clauses.push((Occur::Must, filter(Box::new(TermSetQuery::new(terms)))));
    }
    if order == Order::Time {
        // Every hit scores 1.0; also what makes a query of only negations match the rest.
        clauses.push((Occur::Must, Box::new(AllQuery)));
    }
    Compiled {
        query: Box::new(BooleanQuery::new(clauses)),
        order,
        phrase_prefix_at,
    }
}

/// A query that matches without contributing to the score.
fn filter(query: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(query, 0.0))
}

/// What a term matches, ignoring scoring.
fn matcher(fields: &Fields, term: &QueryTerm) -> Box<dyn Query> {
    match term {
        QueryTerm::All => Box::new(AllQuery),
        QueryTerm::Text { words, prefix, .. } => {
            text_query(fields.text, fields.text_pairs, words, *prefix)
        }
        QueryTerm::Field {
            field,
            value,
            prefix,
            ..
        } => {
            let field = fields.keyword(*field);
            if *prefix {
                prefix_query(field, value)
            } else {
                let term = Term::from_field_text(field, value);
                Box::new(TermQuery::new(term, IndexRecordOption::Basic))
            }
        }
        QueryTerm::Time { bound, at } => {
            let term = Term::from_field_date(fields.time, index_time(*at));
            let (lower, upper) = match bound {
                TimeBound::After => (Bound::Included(term), Bound::Unbounded),
                TimeBound::Before => (Bound::Unbounded, Bound::Excluded(term)),
            };
            Box::new(RangeQuery::new(lower, upper))
        }
    }
}

/// Free text in `field`, whose word pairs are indexed in `pairs`.
fn text_query(field: Field, pairs: Field, words: &[String], prefix: bool) -> Box<dyn Query> {
    if prefix && words.len() > 1 {
        // Words are letters and digits only: escaping is for form's sake.
        let mut patterns: Vec<String> = words
            .iter()
            .map(|w| wildcard_query_to_regex_str(w))
            .collect();
        if let Some(last) = patterns.last_mut() {
            last.push_str(".*");
        }
        let mut query = RegexPhraseQuery::new(field, patterns);
        query.set_max_expansions(MAX_PREFIX_EXPANSIONS);
        return Box::new(query);
    }
    if let (true, [word]) = (prefix, words) {
        return prefix_query(field, word);
    }
    if let [word] = words {
        let term = Term::from_field_text(field, word);
        return Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
    }
    // Consecutive words are consecutive pairs: two words are one pair term, more a phrase of
    // their pairs.
    let mut terms: Vec<Term> = words
        .windows(2)
        .map(|w| Term::from_field_text(pairs, &pair(&w[0], &w[1])))
        .collect();
    if terms.len() == 1 {
        if let Some(term) = terms.pop() {
            return Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
        }
    }
    Box::new(PhraseQuery::new(terms))
}

/// Every document with a term of `field` starting with `prefix` (all terms for an empty
/// prefix). Unlike tantivy's `PhrasePrefixQuery`, which stops after 50 terms, the range has
/// no limit.
fn prefix_query(field: Field, prefix: &str) -> Box<dyn Query> {
    let lower = Bound::Included(Term::from_field_text(field, prefix));
    let upper = match prefix_successor(prefix) {
        Some(end) => Bound::Excluded(Term::from_field_text(field, &end)),
        None => Bound::Unbounded,
    };
    Box::new(InvertedIndexRangeQuery::new(lower, upper))
}

/// The smallest string greater than every string starting with `prefix` (UTF-8 byte order is
/// code point order), or `None` when there is none.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A time as the index stores it: microseconds, clamped to what tantivy can represent
/// (nanoseconds in an `i64`, years 1677 to 2262).
pub(crate) fn index_time(at: DateTime<Utc>) -> tantivy::DateTime {
    const LIMIT: i64 = i64::MAX / 1_000;
    tantivy::DateTime::from_timestamp_micros(at.timestamp_micros().clamp(-LIMIT, LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_bounds_every_extension() {
        assert_eq!(prefix_successor("av-3.14").as_deref(), Some("av-3.15"));
        assert_eq!(prefix_successor("gz").as_deref(), Some("g{"));
        assert_eq!(prefix_successor("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_successor("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("\u{10ffff}"), None);
        for extension in ["", "0", "zzz", "\u{10ffff}\u{10ffff}"] {
            let s = format!("av-3.14{extension}");
            assert!(s.as_str() < "av-3.15", "{s}");
        }
    }
}
