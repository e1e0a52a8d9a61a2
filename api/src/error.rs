//! Error policy of the API.
//!
//! - Library crates return typed errors with a `kind()`. This crate maps every kind, exhaustively,
//!   to one client-facing [`ErrorCode`]; that code becomes the GraphQL `extensions.code` and the
//!   HTTP status. Adding a kind upstream fails to compile here until it is mapped.
//! - What a client reads is a message it can act on: which field, which value, what was expected.
//!   Internals (SQL, file paths, stack traces) never reach a client: an `Internal` or
//!   `Unavailable` error is logged in full with a correlation id, and the client gets a generic
//!   message carrying that id.
//! - Messages are lowercase, with no trailing period.

use std::fmt;

use async_graphql::ErrorExtensions;
use axum::http::StatusCode;
use milepost_schema::{DbError, ErrorKind};

/// The codes of the GraphQL contract (`extensions.code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadInput,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadInput => "BAD_INPUT",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadInput => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error on its way to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The input named by `field` is wrong; `message` says how.
    #[error("{field}: {message}")]
    BadInput { field: String, message: String },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("this needs the {needed} role; your token has {held}")]
    Forbidden {
        needed: &'static str,
        held: &'static str,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound { what: what.into() }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadInput { .. } => ErrorCode::BadInput,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::Forbidden { .. } => ErrorCode::Forbidden,
            ApiError::NotFound { .. } => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::Database(err) => match err.kind() {
                ErrorKind::NotFound => ErrorCode::NotFound,
                ErrorKind::Conflict => ErrorCode::Conflict,
                ErrorKind::Unavailable => ErrorCode::Unavailable,
                ErrorKind::Invalid => ErrorCode::BadInput,
                ErrorKind::Corrupt => ErrorCode::Internal,
            },
        }
    }

    /// The message a client may read. Server-side failures are logged here, once, with an id
    /// the client can quote.
    pub fn client_message(&self) -> String {
        match self.code() {
            ErrorCode::Internal | ErrorCode::Unavailable => {
                let incident = milepost_schema::ids::new_id("err");
                tracing::error!(incident = %incident, error = %self, "request failed");
                let what = if self.code() == ErrorCode::Unavailable {
                    "the catalog database is unavailable, try again shortly"
                } else {
                    "internal error"
                };
                format!("{what} (incident {incident})")
            }
            ErrorCode::Conflict if matches!(self, ApiError::Database(_)) => {
                "the record was changed concurrently, retry the request".to_owned()
            }
            _ => self.to_string(),
        }
    }

    /// The offending input field, for clients that highlight it.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadInput { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Resolvers return `async_graphql::Result` and convert with `ResultExt::extend`, which goes
/// through this impl; a plain `?` would keep only the message and lose the code.
impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        let field = self.field().map(str::to_owned);
        async_graphql::Error::new(self.client_message()).extend_with(|_, ext| {
            ext.set("code", code.as_str());
            if let Some(field) = &field {
                ext.set("field", field.as_str());
            }
        })
    }
}

/// Builds a GraphQL-shaped error body for failures outside the executor (bad JSON, auth).
pub fn graphql_error_body(code: ErrorCode, message: &str) -> serde_json::Value {
    serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code.as_str() } }]
    })
}
