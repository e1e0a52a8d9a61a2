//! Errors of the search index.
//!
//! Policy: every error has a [`kind`](SearchError::kind) a caller branches on.
//! - [`SearchErrorKind::BadQuery`]: the request is wrong (query text, cursor). The message is
//!   safe to show and says how to fix it; [`position`](SearchError::position) points into the
//!   query text (0-based character offset) when the query text is at fault.
//! - [`SearchErrorKind::Corrupt`]: the on-disk index is unreadable or was written with another
//!   schema. Nothing of value is lost (the index is a projection of the catalog): delete the
//!   directory, reopen and [`rebuild`](super::SearchIndex::rebuild).
//! - [`SearchErrorKind::Io`]: the index could not be read or written (disk, permissions, the
//!   directory locked by another process). The text may name files: log it, do not show it.
//!
//! Messages are lowercase without a trailing period.

use std::io;

use super::query::FIELDS;

/// What a caller can do about a [`SearchError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SearchErrorKind {
    /// The query text or cursor is wrong: fix the request.
    BadQuery,
    /// The index on disk is unreadable or incompatible: delete and rebuild it.
    Corrupt,
    /// Reading or writing the index failed.
    Io,
}

/// Why a query text was refused; [`SearchError::Query`] says where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is {chars} characters long; at most {max} are allowed")]
    TooLong { chars: usize, max: usize },
    #[error("the query has too many terms; at most {max} are allowed")]
    TooManyTerms { max: usize },
    #[error(
        "unknown field `{field}`: known fields are {}; to search for text containing `:`, \
         put it in double quotes",
        FIELDS.join(", ")
    )]
    UnknownField { field: String },
    #[error("missing value after `{field}:`, e.g. `{field}:value` or `{field}:\"two words\"`")]
    EmptyValue { field: String },
    #[error("unterminated quote: add the closing `\"`")]
    UnterminatedQuote,
    #[error("empty quotes: put the words to search for between them")]
    EmptyQuotes,
    #[error(
        "unexpected `\"` inside a word: quote a whole phrase or value, like \
         \"unprotected left\" or city:\"san francisco\""
    )]
    StrayQuote,
    #[error("expected a space after the closing `\"`")]
    TextAfterQuote,
    #[error("`-` must be directly followed by the term to exclude, like -tag:highway")]
    DanglingNegation,
    #[error("`*` is only allowed at the end of a value, as a prefix wildcard like ped*")]
    MisplacedWildcard,
    #[error("`{text}` has no letters or digits to search for")]
    NothingToSearch { text: String },
    #[error(
        "`{value}` is not a date: use YYYY-MM-DD or RFC 3339, like {field}:2026-10-01 or \
         {field}:2026-10-01T08:00:00Z"
    )]
    BadDate { field: &'static str, value: String },
    #[error("unknown kind `{value}`: expected one of drive, scenario, run, dataset")]
    UnknownKind { value: String },
    #[error(
        "the prefix matches more than {max} different words: type more of the last word \
         before the `*`"
    )]
    PrefixTooBroad { max: u32 },
}

/// An error of the search index; see the module documentation for the policy.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query text is wrong at `position` (0-based character offset).
    #[error("{reason} (at position {position} of the query)")]
    Query { position: usize, reason: QueryError },
    /// The `after` cursor was not made by this search.
    #[error(
        "invalid `after` cursor `{cursor}`: pass the endCursor (or an edge's cursor) of a \
         previous page of this search"
    )]
    BadCursor { cursor: String },
    /// The index directory holds an index with another schema.
    #[error("the search index on disk was written with an incompatible schema; rebuild it")]
    IncompatibleSchema,
    /// tantivy failed; [`kind`](SearchError::kind) tells corruption from I/O.
    #[error("search index {operation} failed: {source}")]
    Index {
        operation: &'static str,
        #[source]
        source: tantivy::TantivyError,
    },
    /// A file-system operation around the index failed.
    #[error("search index {operation} failed: {source}")]
    Io {
        operation: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Shorthand for results of this module.
pub type SearchResult<T> = Result<T, SearchError>;

impl SearchError {
    pub(crate) fn query(position: usize, reason: QueryError) -> Self {
        SearchError::Query { position, reason }
    }

    pub(crate) fn index(operation: &'static str) -> impl FnOnce(tantivy::TantivyError) -> Self {
        move |source| SearchError::Index { operation, source }
    }

    /// What the caller can do about it.
    pub fn kind(&self) -> SearchErrorKind {
        match self {
            SearchError::Query { .. } | SearchError::BadCursor { .. } => SearchErrorKind::BadQuery,
            SearchError::IncompatibleSchema => SearchErrorKind::Corrupt,
            SearchError::Index { source, .. } => tantivy_kind(source),
            SearchError::Io { .. } => SearchErrorKind::Io,
        }
    }

    /// Where in the query text the problem is (0-based character offset), for errors about
    /// the query text.
    pub fn position(&self) -> Option<usize> {
        match self {
            SearchError::Query { position, .. } => Some(*position),
            _ => None,
        }
    }

    /// The reason a query text was refused.
    pub fn query_error(&self) -> Option<&QueryError> {
        match self {
            SearchError::Query { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// Corruption (unreadable or inconsistent files, another format) versus failing I/O.
fn tantivy_kind(err: &tantivy::TantivyError) -> SearchErrorKind {
    use tantivy::directory::error::OpenReadError;
    use tantivy::TantivyError as E;
    match err {
        E::DataCorruption(_)
        | E::IncompatibleIndex(_)
        | E::DeserializeError(_)
        | E::SchemaError(_)
        | E::FieldNotFound(_)
        | E::OpenReadError(OpenReadError::FileDoesNotExist(_))
        | E::OpenReadError(OpenReadError::IncompatibleIndex(_)) => SearchErrorKind::Corrupt,
        E::IoError(io) if is_corrupt_io(io) => SearchErrorKind::Corrupt,
        E::OpenReadError(OpenReadError::IoError { io_error, .. }) if is_corrupt_io(io_error) => {
            SearchErrorKind::Corrupt
        }
        _ => SearchErrorKind::Io,
    }
}

fn is_corrupt_io(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}
