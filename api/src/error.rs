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
use milepost_cacher::datasets::{DatasetError, DatasetErrorKind};
use milepost_cacher::objects::ObjectErrorKind;
use milepost_cacher::reservations::{ReservationError, ReservationErrorKind};
use milepost_indexer::error::CatalogError;
use milepost_indexer::sync::SyncError;
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
    /// Refused for the reason given (a presigned URL that is expired, tampered with or
    /// whose token was revoked).
    #[error("{0}")]
    Denied(String),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    /// A dependency (upstream S3) cannot be reached; the message says which and is safe to show.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Dataset(Box<DatasetError>),
    #[error(transparent)]
    Reservation(Box<ReservationError>),
    /// Boxed: a sync error carries the store's error, which is large.
    #[error(transparent)]
    Sync(Box<SyncError>),
    /// The office cluster's shared state could not be read.
    #[error(transparent)]
    Cluster(#[from] milepost_cluster::ClusterError),
}

impl From<DatasetError> for ApiError {
    fn from(err: DatasetError) -> Self {
        ApiError::Dataset(Box::new(err))
    }
}

impl From<ReservationError> for ApiError {
    fn from(err: ReservationError) -> Self {
        ApiError::Reservation(Box::new(err))
    }
}

impl From<SyncError> for ApiError {
    fn from(err: SyncError) -> Self {
        ApiError::Sync(Box::new(err))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn code_of_kind(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::Conflict => ErrorCode::Conflict,
        ErrorKind::Unavailable => ErrorCode::Unavailable,
        ErrorKind::Invalid => ErrorCode::BadInput,
        ErrorKind::Corrupt => ErrorCode::Internal,
    }
}

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
            ApiError::Forbidden { .. } | ApiError::Denied(_) => ErrorCode::Forbidden,
            ApiError::NotFound { .. } => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Database(err) => code_of_kind(err.kind()),
            ApiError::Catalog(err) => code_of_kind(err.kind()),
            ApiError::Sync(err) => code_of_kind(err.kind()),
            // The database failed (what a node reads of the cluster is in it).
            ApiError::Cluster(_) => ErrorCode::Unavailable,
            ApiError::Dataset(err) => match err.kind() {
                DatasetErrorKind::Invalid => ErrorCode::BadInput,
                DatasetErrorKind::NotFound => ErrorCode::NotFound,
                DatasetErrorKind::Conflict => ErrorCode::Conflict,
                DatasetErrorKind::Unavailable => ErrorCode::Unavailable,
                DatasetErrorKind::Corrupt => ErrorCode::Internal,
            },
            ApiError::Reservation(err) => match err.kind() {
                ReservationErrorKind::Invalid => ErrorCode::BadInput,
                ReservationErrorKind::NotFound => ErrorCode::NotFound,
                ReservationErrorKind::Forbidden => ErrorCode::Forbidden,
                ReservationErrorKind::Conflict => ErrorCode::Conflict,
                ReservationErrorKind::Unavailable => ErrorCode::Unavailable,
                ReservationErrorKind::Internal => ErrorCode::Internal,
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
                let what = match (self.code(), self) {
                    (ErrorCode::Unavailable, ApiError::Sync(err))
                        if matches!(**err, SyncError::List { .. }) =>
                    {
                        "cannot list the catalog bucket upstream, try again shortly".to_owned()
                    }
                    (ErrorCode::Unavailable, ApiError::Unavailable(message)) => message.clone(),
                    (ErrorCode::Unavailable, _) => {
                        "the catalog database is unavailable, try again shortly".to_owned()
                    }
                    _ => "internal error".to_owned(),
                };
                format!("{what} (incident {incident})")
            }
            ErrorCode::Conflict
                if matches!(
                    self,
                    ApiError::Database(_) | ApiError::Catalog(CatalogError::Database(_))
                ) =>
            {
                "the record was changed concurrently, retry the request".to_owned()
            }
            _ => self.to_string(),
        }
    }

    /// The offending input field, for clients that highlight it.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadInput { field, .. } => Some(field),
            ApiError::Catalog(err) => err.field(),
            ApiError::Dataset(err) => err.field(),
            ApiError::Reservation(err) => err.field(),
            ApiError::Sync(err) => match &**err {
                SyncError::Catalog(err) => err.field(),
                SyncError::List { .. } => None,
            },
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

/// Converts any error the API knows into a GraphQL error that keeps its code and field.
/// (A plain `?` into `async_graphql::Error` would keep only the message.)
pub trait GqlResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T, E: Into<ApiError>> GqlResultExt<T> for Result<T, E> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|err| err.into().extend())
    }
}

/// The contract's code of an office object error (`GET /data`): the status stays the one the
/// object API chose ([`ObjectErrorKind::http_status`]), so a 416 stays a 416.
pub fn object_error_code(kind: ObjectErrorKind) -> ErrorCode {
    match kind {
        ObjectErrorKind::NoSuchBucket
        | ObjectErrorKind::NoSuchKey
        | ObjectErrorKind::NoSuchUpload => ErrorCode::NotFound,
        ObjectErrorKind::InvalidKey
        | ObjectErrorKind::KeyTooLong
        | ObjectErrorKind::InvalidArgument
        | ObjectErrorKind::InvalidRequest
        | ObjectErrorKind::NotImplemented
        | ObjectErrorKind::InvalidRange
        | ObjectErrorKind::InvalidPartNumber
        | ObjectErrorKind::BadDigest
        | ObjectErrorKind::IncompleteBody
        | ObjectErrorKind::InvalidPart
        | ObjectErrorKind::InvalidPartOrder
        | ObjectErrorKind::EntityTooSmall
        | ObjectErrorKind::EntityTooLarge
        | ObjectErrorKind::MetadataTooLarge => ErrorCode::BadInput,
        ObjectErrorKind::PreconditionFailed | ObjectErrorKind::NotModified => ErrorCode::Conflict,
        ObjectErrorKind::SlowDown
        | ObjectErrorKind::InsufficientStorage
        | ObjectErrorKind::Unavailable => ErrorCode::Unavailable,
        ObjectErrorKind::Internal => ErrorCode::Internal,
    }
}

/// Builds a GraphQL-shaped error body for failures outside the executor (bad JSON, auth).
pub fn graphql_error_body(code: ErrorCode, message: &str) -> serde_json::Value {
    serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code.as_str() } }]
    })
}
