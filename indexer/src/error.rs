//! Errors of catalog operations.
//!
//! Policy: every error has a [`kind`](CatalogError::kind) callers branch on (the api crate maps
//! kinds to client codes). `Invalid` errors name the input field in the client's terms (a
//! GraphQL input path such as `input.scenarios[2].end`, or a sidecar key) and say what was
//! expected; they are safe to show. Database failures carry the database error for logs; their
//! text is not for clients. Messages are lowercase without a trailing period.

use milepost_schema::{DbError, ErrorKind};

use crate::search::{SearchError, SearchErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The input named by `field` is wrong; `message` says how.
    #[error("{field}: {message}")]
    BadInput { field: String, message: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Search(#[from] SearchError),
    /// A blocking task (index writes, searches) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Background(String),
}

pub type CatalogResult<T> = Result<T, CatalogError>;

impl CatalogError {
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        CatalogError::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        CatalogError::NotFound { what: what.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::BadInput { .. } => ErrorKind::Invalid,
            CatalogError::NotFound { .. } => ErrorKind::NotFound,
            CatalogError::Database(err) => err.kind(),
            CatalogError::Search(err) => match err.kind() {
                SearchErrorKind::BadQuery => ErrorKind::Invalid,
                SearchErrorKind::Corrupt => ErrorKind::Corrupt,
                SearchErrorKind::Io => ErrorKind::Unavailable,
            },
            CatalogError::Background(_) => ErrorKind::Corrupt,
        }
    }

    /// The offending input field, for clients that highlight it.
    pub fn field(&self) -> Option<&str> {
        match self {
            CatalogError::BadInput { field, .. } => Some(field),
            CatalogError::Search(SearchError::BadCursor { .. }) => Some("after"),
            CatalogError::Search(err) if err.kind() == SearchErrorKind::BadQuery => Some("query"),
            _ => None,
        }
    }
}

impl From<sea_orm::DbErr> for CatalogError {
    fn from(err: sea_orm::DbErr) -> Self {
        CatalogError::Database(DbError::from(err))
    }
}
