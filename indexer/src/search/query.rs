//! The search query language of the contract, parsed by hand into a [`ParsedQuery`].
//!
//! ```text
//! cut-in city:guangzhou weather:rain vehicle:gz-004 tag:night software:av-3.14*
//! after:2026-10-01 before:2026-11-01 -tag:highway "unprotected left" kind:scenario
//! ```
//!
//! - Terms are separated by white space and must all match (AND).
//! - A bare word is free text. A word with separators is a phrase of its words (`cut-in`,
//!   `gz-004`, `/camera/front`); `"quoted words"` form a phrase; a trailing `*` makes the last
//!   word a prefix (`ped*`). A lone `*` matches everything.
//! - `field:value` and `field:"quoted value"` match the whole value of a keyword field,
//!   case-insensitively; a trailing `*` matches values starting with it (`software:av-3.14*`,
//!   `city:*` = has a city). Fields: see [`FIELDS`].
//! - `after:DATE` (inclusive) and `before:DATE` (exclusive) bound the entity's start time;
//!   DATE is `YYYY-MM-DD` (midnight UTC) or RFC 3339.
//! - `-` before a term excludes what it matches. A query of only exclusions means everything
//!   except those.
//! - There are no escapes: a value cannot contain `"`.
//!
//! Field names and values are case-insensitive. Errors carry the 0-based character offset of
//! the culprit ([`SearchError::position`]).
//!
//! (Over 600 lines: a hand-written parser of the contract's query language: one grammar kept in one place, with its tests.)

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};

use super::error::{QueryError, SearchError, SearchResult};
use super::tokenizer::{keyword, words};
use super::EntityKind;

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 1024;
/// Most terms accepted in one query.
pub const MAX_TERMS: usize = 64;

/// Every field name the query language knows, for autocomplete: the keyword fields of
/// [`QueryField`], then the time bounds `after` and `before`.
pub const FIELDS: &[&str] = &[
    "kind", "vehicle", "city", "weather", "tag", "software", "pipeline", "status", "topic", "id",
    "label", "drive", "after", "before",
];

/// A keyword field that `field:value` matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryField {
    /// `drive`, `scenario`, `run` or `dataset`.
    Kind,
    Vehicle,
    City,
    Weather,
    /// Any of the entity's tags.
    Tag,
    /// Software version (drives).
    Software,
    /// Pipeline (runs).
    Pipeline,
    /// Status (runs).
    Status,
    /// Any MCAP topic of the entity.
    Topic,
    /// The entity's id.
    Id,
    /// Any event kind, event label or scenario label.
    Label,
    /// The drive a scenario belongs to.
    Drive,
}

impl QueryField {
    /// Every keyword field, in [`FIELDS`] order.
    pub const ALL: &'static [QueryField] = &[
        QueryField::Kind,
        QueryField::Vehicle,
        QueryField::City,
        QueryField::Weather,
        QueryField::Tag,
        QueryField::Software,
        QueryField::Pipeline,
        QueryField::Status,
        QueryField::Topic,
        QueryField::Id,
        QueryField::Label,
        QueryField::Drive,
    ];

    /// The name used in queries.
    pub const fn as_str(self) -> &'static str {
        match self {
            QueryField::Kind => "kind",
            QueryField::Vehicle => "vehicle",
            QueryField::City => "city",
            QueryField::Weather => "weather",
            QueryField::Tag => "tag",
            QueryField::Software => "software",
            QueryField::Pipeline => "pipeline",
            QueryField::Status => "status",
            QueryField::Topic => "topic",
            QueryField::Id => "id",
            QueryField::Label => "label",
            QueryField::Drive => "drive",
        }
    }
}

impl fmt::Display for QueryField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which end of a time range a date term sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeBound {
    /// `after:DATE`: start time at or after DATE.
    After,
    /// `before:DATE`: start time strictly before DATE.
    Before,
}

impl TimeBound {
    /// The name used in queries.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeBound::After => "after",
            TimeBound::Before => "before",
        }
    }
}

/// What one term matches.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryTerm {
    /// `*`: everything.
    All,
    /// Free text: the `words` (normalized, at least one) in this order; with `prefix`, the
    /// last word is only a prefix.
    Text {
        words: Vec<String>,
        quoted: bool,
        prefix: bool,
    },
    /// `field:value`: the whole normalized `value` (a prefix of it with `prefix`; an empty
    /// prefix means "has a value").
    Field {
        field: QueryField,
        value: String,
        quoted: bool,
        prefix: bool,
    },
    /// `after:` / `before:`.
    Time { bound: TimeBound, at: DateTime<Utc> },
}

/// One term of a query and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    /// Written with a leading `-`: exclude what the term matches.
    pub negated: bool,
    /// 0-based character offset of the clause (its `-` if negated).
    pub position: usize,
    /// Length of the clause in characters.
    pub len: usize,
    pub term: QueryTerm,
}

/// A parsed query: every positive clause must match, no negated one may.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ParsedQuery {
    pub clauses: Vec<Clause>,
}

impl ParsedQuery {
    /// No clause at all: matches everything.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether a positive free-text clause ranks the results by relevance; without one,
    /// results are ordered by time (newest first).
    pub fn has_free_text(&self) -> bool {
        self.clauses
            .iter()
            .any(|c| !c.negated && matches!(c.term, QueryTerm::Text { .. }))
    }
}

impl FromStr for ParsedQuery {
    type Err = SearchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_query(s)
    }
}

/// Parses a query in the syntax described in the [module documentation](self).
pub fn parse_query(text: &str) -> SearchResult<ParsedQuery> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > MAX_QUERY_CHARS {
        return Err(SearchError::query(
            MAX_QUERY_CHARS,
            QueryError::TooLong {
                chars: chars.len(),
                max: MAX_QUERY_CHARS,
            },
        ));
    }
    let mut parser = Parser { chars, at: 0 };
    let mut clauses = Vec::new();
    while let Some(clause) = parser.next_clause()? {
        if clauses.len() == MAX_TERMS {
            return Err(SearchError::query(
                clause.position,
                QueryError::TooManyTerms { max: MAX_TERMS },
            ));
        }
        clauses.push(clause);
    }
    Ok(ParsedQuery { clauses })
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

/// A value as written: bare or quoted, with its position.
struct RawValue {
    text: String,
    position: usize,
    quoted: bool,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn at_term_end(&self) -> bool {
        self.peek().is_none_or(char::is_whitespace)
    }

    fn next_clause(&mut self) -> SearchResult<Option<Clause>> {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
        let Some(first) = self.peek() else {
            return Ok(None);
        };
        let position = self.at;
        let negated = first == '-';
        if negated {
            self.at += 1;
            if self.at_term_end() {
                return Err(SearchError::query(position, QueryError::DanglingNegation));
            }
        }
        let term = match self.field_name() {
            Some(name) => self.field_term(name)?,
            None => self.text_term()?,
        };
        Ok(Some(Clause {
            negated,
            position,
            len: self.at - position,
            term,
        }))
    }

    /// A `name:` at the cursor (an ASCII letter, then letters, digits or `_`, then `:`):
    /// consumes it and returns the lowercased name with its position.
    fn field_name(&mut self) -> Option<(String, usize)> {
        let start = self.at;
        if !self.peek()?.is_ascii_alphabetic() {
            return None;
        }
        let mut end = start;
        while self
            .chars
            .get(end)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            end += 1;
        }
        if self.chars.get(end) != Some(&':') {
            return None;
        }
        let name = self.chars[start..end]
            .iter()
            .map(char::to_ascii_lowercase)
            .collect();
        self.at = end + 1;
        Some((name, start))
    }

    fn field_term(&mut self, (name, name_at): (String, usize)) -> SearchResult<QueryTerm> {
        let bound = match name.as_str() {
            "after" => Some(TimeBound::After),
            "before" => Some(TimeBound::Before),
            _ => None,
        };
        let field = QueryField::ALL.iter().copied().find(|f| f.as_str() == name);
        if bound.is_none() && field.is_none() {
            return Err(SearchError::query(
                name_at,
                QueryError::UnknownField { field: name },
            ));
        }
        if self.at_term_end() {
            return Err(SearchError::query(
                self.at,
                QueryError::EmptyValue { field: name },
            ));
        }
        let raw = self.value()?;
        if let Some(bound) = bound {
            let at = parse_date(raw.text.trim()).ok_or_else(|| {
                SearchError::query(
                    raw.position,
                    QueryError::BadDate {
                        field: bound.as_str(),
                        value: raw.text.clone(),
                    },
                )
            })?;
            return Ok(QueryTerm::Time { bound, at });
        }
        let Some(field) = field else {
            return Err(SearchError::query(
                name_at,
                QueryError::UnknownField { field: name },
            ));
        };
        let (text, prefix) = self.split_wildcard(&raw)?;
        let value = keyword(&text).unwrap_or_default();
        if value.is_empty() && !prefix {
            return Err(SearchError::query(
                raw.position,
                QueryError::EmptyValue { field: name },
            ));
        }
        if field == QueryField::Kind && !prefix && EntityKind::from_str(&value).is_err() {
            return Err(SearchError::query(
                raw.position,
                QueryError::UnknownKind { value: raw.text },
            ));
        }
        Ok(QueryTerm::Field {
            field,
            value,
            quoted: raw.quoted,
            prefix,
        })
    }

    fn text_term(&mut self) -> SearchResult<QueryTerm> {
        let raw = self.value()?;
        if !raw.quoted && raw.text == "*" {
            return Ok(QueryTerm::All);
        }
        let (text, prefix) = self.split_wildcard(&raw)?;
        let words = words(&text);
        if words.is_empty() {
            let reason = if raw.quoted {
                QueryError::EmptyQuotes
            } else {
                QueryError::NothingToSearch { text: raw.text }
            };
            return Err(SearchError::query(raw.position, reason));
        }
        Ok(QueryTerm::Text {
            words,
            quoted: raw.quoted,
            prefix,
        })
    }

    /// Reads a quoted or bare value at the cursor, up to the end of the term.
    fn value(&mut self) -> SearchResult<RawValue> {
        let position = self.at;
        if self.peek() == Some('"') {
            let start = self.at + 1;
            let Some(len) = self.chars[start..].iter().position(|c| *c == '"') else {
                return Err(SearchError::query(position, QueryError::UnterminatedQuote));
            };
            let text: String = self.chars[start..start + len].iter().collect();
            self.at = start + len + 1;
            if !self.at_term_end() {
                return Err(SearchError::query(self.at, QueryError::TextAfterQuote));
            }
            if text.trim().is_empty() {
                return Err(SearchError::query(position, QueryError::EmptyQuotes));
            }
            return Ok(RawValue {
                text,
                position,
                quoted: true,
            });
        }
        let mut text = String::new();
        while let Some(c) = self.peek().filter(|c| !c.is_whitespace()) {
            if c == '"' {
                return Err(SearchError::query(self.at, QueryError::StrayQuote));
            }
            text.push(c);
            self.at += 1;
        }
        Ok(RawValue {
            text,
            position,
            quoted: false,
        })
    }

    /// Splits a trailing `*` (prefix wildcard) off a bare value; a `*` anywhere else is an
    /// error. Quoted values are literal.
    fn split_wildcard(&self, raw: &RawValue) -> SearchResult<(String, bool)> {
        if raw.quoted {
            return Ok((raw.text.clone(), false));
        }
        let (text, prefix) = match raw.text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (raw.text.as_str(), false),
        };
        if let Some(offset) = text.chars().position(|c| c == '*') {
            return Err(SearchError::query(
                raw.position + offset,
                QueryError::MisplacedWildcard,
            ));
        }
        Ok((text.to_owned(), prefix))
    }
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::error::SearchErrorKind;

    fn clauses(text: &str) -> Vec<Clause> {
        parse_query(text).expect("query parses").clauses
    }

    fn error(text: &str) -> (usize, QueryError) {
        let err = parse_query(text).expect_err("query is refused");
        assert_eq!(err.kind(), SearchErrorKind::BadQuery, "{err}");
        let position = err.position().expect("query errors have a position");
        let reason = err.query_error().cloned().expect("a query error");
        (position, reason)
    }

    fn text(words: &[&str], prefix: bool) -> QueryTerm {
        QueryTerm::Text {
            words: words.iter().map(|w| (*w).to_owned()).collect(),
            quoted: false,
            prefix,
        }
    }

    fn field(field: QueryField, value: &str, prefix: bool) -> QueryTerm {
        QueryTerm::Field {
            field,
            value: value.to_owned(),
            quoted: false,
            prefix,
        }
    }

    fn date(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test date")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_contract_example_parses_term_by_term() {
        let q = "cut-in city:Guangzhou WEATHER:rain vehicle:gz-004 tag:night software:av-3.14* \
                 after:2026-10-01 before:2026-11-01T08:00:00+08:00 -tag:highway \
                 \"Unprotected left\" kind:SCENARIO pipeline:nightly topic:/lidar/points \
                 status:passed id:drv-001 label:\"cut-in\" drive:drv-001 ped*";
        let terms: Vec<(bool, QueryTerm)> = clauses(q)
            .into_iter()
            .map(|c| (c.negated, c.term))
            .collect();
        assert_eq!(
            terms,
            vec![
                (false, text(&["cut", "in"], false)),
                (false, field(QueryField::City, "guangzhou", false)),
                (false, field(QueryField::Weather, "rain", false)),
                (false, field(QueryField::Vehicle, "gz-004", false)),
                (false, field(QueryField::Tag, "night", false)),
                (false, field(QueryField::Software, "av-3.14", true)),
                (
                    false,
                    QueryTerm::Time {
                        bound: TimeBound::After,
                        at: date("2026-10-01T00:00:00Z")
                    }
                ),
                (
                    false,
                    QueryTerm::Time {
                        bound: TimeBound::Before,
                        at: date("2026-11-01T00:00:00Z")
                    }
                ),
                (true, field(QueryField::Tag, "highway", false)),
                (
                    false,
                    QueryTerm::Text {
                        words: vec!["unprotected".into(), "left".into()],
                        quoted: true,
                        prefix: false
                    }
                ),
                (false, field(QueryField::Kind, "scenario", false)),
                (false, field(QueryField::Pipeline, "nightly", false)),
                (false, field(QueryField::Topic, "/lidar/points", false)),
                (false, field(QueryField::Status, "passed", false)),
                (false, field(QueryField::Id, "drv-001", false)),
                (
                    false,
                    QueryTerm::Field {
                        field: QueryField::Label,
                        value: "cut-in".into(),
                        quoted: true,
                        prefix: false
                    }
                ),
                (false, field(QueryField::Drive, "drv-001", false)),
                (false, text(&["ped"], true)),
            ]
        );
    }

    #[test]
    fn clauses_record_where_they_were_written() {
        let c = clauses("  rain -city:\"san francisco\" *");
        assert_eq!(
            c.iter().map(|c| (c.position, c.len)).collect::<Vec<_>>(),
            [(2, 4), (7, 21), (29, 1)]
        );
        assert_eq!(c[2].term, QueryTerm::All);
        assert_eq!(
            c[1].term,
            QueryTerm::Field {
                field: QueryField::City,
                value: "san francisco".into(),
                quoted: true,
                prefix: false
            }
        );
    }

    #[test]
    fn empty_and_negation_only_queries_are_allowed() {
        assert!(parse_query("").expect("empty").is_empty());
        assert!(parse_query("   \t ").expect("blank").is_empty());
        let q = parse_query("-tag:highway -rain").expect("only negations");
        assert!(q.clauses.iter().all(|c| c.negated));
        assert!(!q.has_free_text());
        assert!(parse_query("city:x rain").expect("text").has_free_text());
    }

    #[test]
    fn wildcards_and_literal_quotes() {
        assert_eq!(clauses("city:*")[0].term, field(QueryField::City, "", true));
        assert_eq!(clauses("cut-in*")[0].term, text(&["cut", "in"], true));
        assert_eq!(
            clauses("tag:\"night*\"")[0].term,
            QueryTerm::Field {
                field: QueryField::Tag,
                value: "night*".into(),
                quoted: true,
                prefix: false
            }
        );
        assert_eq!(
            clauses("kind:sc*")[0].term,
            field(QueryField::Kind, "sc", true)
        );
        // A colon after something that is not a field name is just text.
        assert_eq!(clauses("12:30")[0].term, text(&["12", "30"], false));
        assert_eq!(clauses(":rain")[0].term, text(&["rain"], false));
    }

    #[test]
    fn dates_accept_plain_days_and_rfc3339() {
        let at = |q: &str| match &clauses(q)[0].term {
            QueryTerm::Time { at, .. } => *at,
            other => panic!("not a time term: {other:?}"),
        };
        assert_eq!(at("after:2026-02-28"), date("2026-02-28T00:00:00Z"));
        assert_eq!(
            at("before:\"2026-10-01T10:30:00.250-02:00\""),
            date("2026-10-01T12:30:00.250Z")
        );
    }

    #[test]
    fn errors_point_at_the_culprit() {
        let cases: &[(&str, usize)] = &[
            ("rain colour:red", 5),
            ("rain CITY: x", 10),
            ("city:", 5),
            ("tag:night \"unprotected left", 10),
            ("city:\"guangzhou", 5),
            ("city:\"\"", 5),
            ("\"   \"", 0),
            ("\"left\"turn", 6),
            ("foo\"bar", 3),
            ("rain - city:x", 5),
            ("a*b", 1),
            ("tag:ni*g*", 6),
            ("rain &&", 5),
            ("x after:2026-13-01", 8),
            ("before:yesterday", 7),
            ("after:2026*", 6),
            ("kind:drives", 5),
            ("-kind:\"car\"", 6),
            ("http://example.com", 0),
        ];
        for (query, position) in cases {
            let (at, reason) = error(query);
            assert_eq!(at, *position, "{query}: {reason}");
        }
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let (_, reason) = error("colour:red");
        let message = reason.to_string();
        assert!(message.contains("unknown field `colour`"), "{message}");
        for name in FIELDS {
            assert!(message.contains(name), "{message} lacks {name}");
        }
        let err = parse_query("city:").expect_err("empty value");
        assert_eq!(
            err.to_string(),
            "missing value after `city:`, e.g. `city:value` or `city:\"two words\"` \
             (at position 5 of the query)"
        );
        let (_, reason) = error("before:2026-1-1x");
        assert!(reason.to_string().contains("YYYY-MM-DD"), "{reason}");
        assert_eq!(
            error("kind:car").1,
            QueryError::UnknownKind {
                value: "car".into()
            }
        );
        assert_eq!(error("\"x").1, QueryError::UnterminatedQuote);
        assert_eq!(error("x -").1, QueryError::DanglingNegation);
    }

    #[test]
    fn length_and_term_limits() {
        let long = "a".repeat(MAX_QUERY_CHARS + 1);
        assert_eq!(
            error(&long),
            (
                MAX_QUERY_CHARS,
                QueryError::TooLong {
                    chars: MAX_QUERY_CHARS + 1,
                    max: MAX_QUERY_CHARS
                }
            )
        );
        // Exactly at the limit is fine, counted in characters, not bytes.
        assert!(parse_query(&"é".repeat(MAX_QUERY_CHARS)).is_ok());
        let at_limit = vec!["x"; MAX_TERMS].join(" ");
        assert_eq!(clauses(&at_limit).len(), MAX_TERMS);
        let over = vec!["x"; MAX_TERMS + 1].join(" ");
        assert_eq!(
            error(&over),
            (2 * MAX_TERMS, QueryError::TooManyTerms { max: MAX_TERMS })
        );
    }

    #[test]
    fn fields_constant_lists_every_field() {
        let mut names: Vec<&str> = QueryField::ALL.iter().map(|f| f.as_str()).collect();
        names.extend(["after", "before"]);
        assert_eq!(names, FIELDS);
    }
}
