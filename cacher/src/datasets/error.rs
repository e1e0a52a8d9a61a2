//! The errors of dataset creation and reading: [`DatasetError`] and what a caller can do about
//! it ([`DatasetErrorKind`]).

use milepost_schema::{DbError, ErrorKind as DbErrorKind};

use milepost_store::{StoreError, StoreErrorKind};

/// What a caller can do about a [`DatasetError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetErrorKind {
    /// The input is wrong; [`DatasetError::field`] names the field when there is one.
    Invalid,
    /// The dataset (or its manifest) does not exist.
    NotFound,
    /// The write lost a race it could not resolve by retrying.
    Conflict,
    /// The database or the object store cannot be reached or is busy; retrying later may
    /// succeed.
    Unavailable,
    /// Stored data is not what it should be (an unreadable manifest, an inconsistent row), or a
    /// bug: not the caller's fault, and retrying will not help.
    Corrupt,
}

/// An error of [`crate::datasets`]. Branch on [`kind`](Self::kind). Messages are lowercase and
/// name what was rejected; [`Db`](Self::Db) and [`Store`](Self::Store) messages are for logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A field of the input was rejected.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (GraphQL spelling): `name`, `objects`, `description`.
        field: &'static str,
        /// What is wrong, naming the value.
        message: String,
    },
    /// No dataset with that name (and version).
    #[error("dataset `{name}`{} not found", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound {
        /// The name looked up.
        name: String,
        /// The version looked up, `None` for the latest.
        version: Option<i32>,
    },
    /// Another creator kept taking the next version of this name.
    #[error("dataset `{name}`: could not claim a new version after {attempts} attempts (concurrent creations of the same name)")]
    VersionRace {
        /// The name.
        name: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A manifest could not be encoded or decoded.
    #[error("manifest {what}: {reason}")]
    Manifest {
        /// Which manifest, or `encode` / `decode`.
        what: String,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// Reading a manifest from the object store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Writing a new dataset's manifest failed: the manifest bucket is missing or forbidden,
    /// or the store is unreachable. The deployment's problem, not the caller's.
    #[error("cannot write the dataset manifest: {0}")]
    WriteManifest(#[source] StoreError),
}

impl From<sea_orm::DbErr> for DatasetError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Db(DbError::from(err))
    }
}

impl DatasetError {
    /// What the caller can do about it.
    pub fn kind(&self) -> DatasetErrorKind {
        match self {
            Self::Invalid { .. } => DatasetErrorKind::Invalid,
            Self::NotFound { .. } => DatasetErrorKind::NotFound,
            Self::VersionRace { .. } => DatasetErrorKind::Conflict,
            Self::Manifest { .. } => DatasetErrorKind::Corrupt,
            Self::Db(err) => match err.kind() {
                DbErrorKind::NotFound => DatasetErrorKind::NotFound,
                DbErrorKind::Conflict => DatasetErrorKind::Conflict,
                DbErrorKind::Unavailable => DatasetErrorKind::Unavailable,
                DbErrorKind::Corrupt | DbErrorKind::Invalid => DatasetErrorKind::Corrupt,
            },
            Self::Store(err) => match err.kind() {
                StoreErrorKind::NotFound => DatasetErrorKind::NotFound,
                StoreErrorKind::Corrupt => DatasetErrorKind::Corrupt,
                _ => DatasetErrorKind::Unavailable,
            },
            Self::WriteManifest(_) => DatasetErrorKind::Unavailable,
        }
    }

    /// The rejected field, for [`Invalid`](DatasetErrorKind::Invalid) errors.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}
