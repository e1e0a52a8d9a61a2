//! Errors of the catalog database.
//!
//! # Policy
//!
//! Every fallible function of this crate returns [`DbError`]. Callers branch on
//! [`DbError::kind`], never on the message or on the wrapped sea-orm error:
//!
//! | kind | meaning for the caller | typical client answer |
//! | --- | --- | --- |
//! | [`NotFound`](ErrorKind::NotFound) | the row asked for does not exist | NOT_FOUND / 404 |
//! | [`Conflict`](ErrorKind::Conflict) | the write contradicts rows already there: a duplicate unique key, or a foreign key that names a missing row or a row still referenced | CONFLICT / 409 |
//! | [`Unavailable`](ErrorKind::Unavailable) | the database cannot be reached or is busy (connection refused, pool exhausted, locked, serialization failure); retrying later may succeed | UNAVAILABLE / 503 |
//! | [`Corrupt`](ErrorKind::Corrupt) | the database does not hold what this code expects (a value that does not decode, a schema that is ahead of or behind the binary) or sea-orm was misused; a bug or a broken deployment, not the client's fault, and retrying will not help | INTERNAL / 500 |
//! | [`Invalid`](ErrorKind::Invalid) | the input cannot be stored or used as given (a value the column rejects, an unsupported database URL) | BAD_INPUT / 400 |
//!
//! Messages are lowercase, have no trailing period and say what failed with what input. The
//! [`Display`](std::fmt::Display) text is for logs and operators: it may contain SQL error
//! text from the database, so callers must not send it to clients: they map the kind to a
//! client code and write their own message. Database URLs in messages are redacted: a password
//! never appears in an error.

use std::path::PathBuf;

use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

/// What a caller can do about a [`DbError`]; see the module documentation for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The requested row does not exist.
    NotFound,
    /// The write contradicts existing rows (unique or foreign key).
    Conflict,
    /// The database cannot be reached or is busy; retrying later may succeed.
    Unavailable,
    /// The database content or schema is not what this code expects; an internal error.
    Corrupt,
    /// The input cannot be stored or used as given.
    Invalid,
}

impl ErrorKind {
    /// A short lowercase name, e.g. `not found`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Corrupt => "corrupt",
            Self::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the catalog database. Branch on [`kind`](Self::kind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database URL names a scheme this crate does not support.
    #[error("unsupported database url scheme `{scheme}`: expected one of sqlite://, postgres://, postgresql://")]
    UnsupportedScheme {
        /// The scheme found, without `://`.
        scheme: String,
    },
    /// The database URL could not be parsed.
    #[error("invalid database url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory that should hold the SQLite file could not be created.
    #[error("cannot create the directory {} for the sqlite database: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Opening the connection pool failed.
    #[error("cannot connect to database `{url}`: {reason}")]
    Connect {
        /// What the caller should make of it.
        kind: ErrorKind,
        /// The URL, password redacted.
        url: String,
        /// Why it failed, password redacted.
        reason: String,
    },
    /// A row the caller looked up does not exist.
    #[error("{entity} `{id}` not found")]
    NotFound {
        /// What was looked up, e.g. `drive`.
        entity: &'static str,
        /// Its id or name.
        id: String,
    },
    /// Applying the migrations failed.
    #[error("cannot migrate the catalog database ({kind}): {source}")]
    Migrate {
        /// What the caller should make of it.
        kind: ErrorKind,
        /// The sea-orm error.
        #[source]
        source: DbErr,
    },
    /// A query or statement failed.
    #[error("database operation failed ({kind}): {source}")]
    Query {
        /// What the caller should make of it.
        kind: ErrorKind,
        /// The sea-orm error.
        #[source]
        source: DbErr,
    },
}

impl DbError {
    /// What the caller can do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnsupportedScheme { .. } | Self::InvalidUrl { .. } => ErrorKind::Invalid,
            Self::CreateDir { .. } => ErrorKind::Unavailable,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Connect { kind, .. } | Self::Migrate { kind, .. } | Self::Query { kind, .. } => {
                *kind
            }
        }
    }

    /// A [`DbError::NotFound`] for `entity` (e.g. `"drive"`) with the id or name looked up.
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            entity,
            id: id.into(),
        }
    }

    /// Wraps a failed migration.
    pub(crate) fn migrate(source: DbErr) -> Self {
        Self::Migrate {
            kind: classify(&source),
            source,
        }
    }
}

impl From<DbErr> for DbError {
    fn from(source: DbErr) -> Self {
        Self::Query {
            kind: classify(&source),
            source,
        }
    }
}

/// Sorts a sea-orm error into an [`ErrorKind`].
pub fn classify(err: &DbErr) -> ErrorKind {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_))
        | Some(SqlErr::ForeignKeyConstraintViolation(_)) => return ErrorKind::Conflict,
        _ => {}
    }
    match err {
        DbErr::RecordNotFound(_) | DbErr::RecordNotUpdated => ErrorKind::NotFound,
        DbErr::RecordNotInserted => ErrorKind::Conflict,
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => ErrorKind::Unavailable,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => match runtime {
            RuntimeErr::SqlxError(e) => classify_sqlx(e),
            RuntimeErr::Internal(_) => ErrorKind::Corrupt,
        },
        DbErr::TryIntoErr { .. }
        | DbErr::ConvertFromU64(_)
        | DbErr::UnpackInsertId
        | DbErr::UpdateGetPrimaryKey
        | DbErr::AttrNotSet(_)
        | DbErr::Custom(_)
        | DbErr::Type(_)
        | DbErr::Json(_)
        | DbErr::Migration(_) => ErrorKind::Corrupt,
    }
}

/// Sorts an sqlx error (from a statement, not from connecting) into an [`ErrorKind`].
pub(crate) fn classify_sqlx(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Database(db) => classify_code(db.code().as_deref().unwrap_or_default()),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        sqlx::Error::Configuration(_) => ErrorKind::Invalid,
        _ => ErrorKind::Corrupt,
    }
}

/// Sorts a database error code: a PostgreSQL SQLSTATE (always five characters) or an SQLite
/// extended result code (a number whose low byte is the primary code).
fn classify_code(code: &str) -> ErrorKind {
    if code.len() == 5 {
        return classify_sqlstate(code);
    }
    match code.parse::<u32>().map(|c| (c, c & 0xff)) {
        // TOOBIG (18), constraint violations other than unique and foreign key (19: NOT NULL,
        // CHECK...; unique and foreign key were sorted by sql_err) and datatype mismatch (20).
        Ok((_, 18..=20)) => ErrorKind::Invalid,
        // BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN: the file is busy or the disk is unwell.
        Ok((_, 5 | 6 | 8 | 10 | 13 | 14)) => ErrorKind::Unavailable,
        _ => ErrorKind::Corrupt,
    }
}

/// Sorts a PostgreSQL SQLSTATE.
fn classify_sqlstate(code: &str) -> ErrorKind {
    match code {
        // Unique and foreign key violations, should sql_err not have caught them.
        "23505" | "23503" => ErrorKind::Conflict,
        // Serialization failure, deadlock, lock not available: retry.
        "40001" | "40P01" | "55P03" => ErrorKind::Unavailable,
        // Other integrity violations (not null, check, exclusion) and data exceptions (value
        // too long, invalid text representation...).
        c if c.starts_with("23") || c.starts_with("22") => ErrorKind::Invalid,
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // cannot connect now, query canceled).
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Corrupt,
    }
}

/// `url` with the password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The password in `url`, if it has one, so that it can be scrubbed from driver messages.
pub(crate) fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, _) = rest[..authority_end].rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://milepost:s3cr%40t@db.internal:5432/catalog?sslmode=require"),
            "postgres://milepost:***@db.internal:5432/catalog?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("sqlite://./data/catalog.db"),
            "sqlite://./data/catalog.db"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(url_password("postgres://u:p@ss@h/db"), Some("p@ss"));
        assert_eq!(url_password("postgres://u@h/db"), None);
    }

    #[test]
    fn classifies_sea_orm_errors() {
        assert_eq!(
            classify(&DbErr::RecordNotFound("drive".into())),
            ErrorKind::NotFound
        );
        assert_eq!(classify(&DbErr::RecordNotInserted), ErrorKind::Conflict);
        assert_eq!(
            classify(&DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)),
            ErrorKind::Unavailable
        );
        assert_eq!(classify(&DbErr::Json("bad".into())), ErrorKind::Corrupt);
        assert_eq!(
            classify(&DbErr::Query(RuntimeErr::SqlxError(
                sqlx::Error::PoolTimedOut
            ))),
            ErrorKind::Unavailable
        );
        assert_eq!(classify_code("40001"), ErrorKind::Unavailable);
        assert_eq!(classify_code("08006"), ErrorKind::Unavailable);
        assert_eq!(classify_code("22001"), ErrorKind::Invalid);
        assert_eq!(classify_code("23502"), ErrorKind::Invalid);
        assert_eq!(classify_code("517"), ErrorKind::Unavailable);
        assert_eq!(classify_code("1299"), ErrorKind::Invalid);
        assert_eq!(classify_code("11"), ErrorKind::Corrupt);
        assert_eq!(classify_code("42P01"), ErrorKind::Corrupt);
    }

    #[test]
    fn not_found_message() {
        let err = DbError::not_found("drive", "gz-004-20261101");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.to_string(), "drive `gz-004-20261101` not found");
    }
}
