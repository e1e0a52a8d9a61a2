//! The errors of the reservation service: [`ReservationError`] and what a caller can do about
//! it ([`ReservationErrorKind`]).

use milepost_schema::enums::ReservationState;
use milepost_schema::{DbError, ErrorKind as DbErrorKind};

use crate::datasets::{DatasetError, DatasetErrorKind};

/// What a caller can do about a [`ReservationError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationErrorKind {
    /// The input is wrong; [`ReservationError::field`] names the field.
    Invalid,
    /// The reservation does not exist.
    NotFound,
    /// Only its owner or an admin may do that.
    Forbidden,
    /// The reservation's state does not allow it, or the cache has no room for it now.
    Conflict,
    /// The database (or the service, shutting down) is unavailable; retrying may succeed.
    Unavailable,
    /// A bug or broken stored data.
    Internal,
}

/// An error of [`Reservations`]. Branch on [`kind`](Self::kind). Messages of
/// [`Invalid`](Self::Invalid), [`NotFound`](Self::NotFound), [`Forbidden`](Self::Forbidden),
/// [`NotActive`](Self::NotActive) and [`NoRoom`](Self::NoRoom) are for clients; the others
/// are for logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReservationError {
    /// A field of the input was rejected.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (GraphQL spelling): `ttlSeconds`, `purpose`, `after`, `dataset`.
        field: &'static str,
        /// What is wrong, naming the value.
        message: String,
    },
    /// No reservation with this id.
    #[error("reservation `{id}` not found")]
    NotFound {
        /// The id looked up.
        id: String,
    },
    /// Not the owner, not an admin.
    #[error("reservation `{id}` belongs to `{owner}`: only its owner or an admin may {action} it")]
    Forbidden {
        /// The reservation.
        id: String,
        /// Its owner.
        owner: String,
        /// `release`, `extend`.
        action: &'static str,
    },
    /// The reservation is in a final state.
    #[error("reservation `{id}` is {state}: it cannot be {action}")]
    NotActive {
        /// The reservation.
        id: String,
        /// Its state.
        state: ReservationState,
        /// `extended`.
        action: &'static str,
    },
    /// The cache cannot hold the dataset next to what live reservations pin.
    #[error("{0}")]
    NoRoom(String),
    /// The service is shutting down.
    #[error("the reservation service is shutting down")]
    ShuttingDown,
    /// The database failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// Reading the dataset failed.
    #[error("{0}")]
    Dataset(#[from] DatasetError),
}

impl From<sea_orm::DbErr> for ReservationError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Db(DbError::from(err))
    }
}

impl ReservationError {
    /// What the caller can do about it.
    pub fn kind(&self) -> ReservationErrorKind {
        match self {
            Self::Invalid { .. } => ReservationErrorKind::Invalid,
            Self::NotFound { .. } => ReservationErrorKind::NotFound,
            Self::Forbidden { .. } => ReservationErrorKind::Forbidden,
            Self::NotActive { .. } | Self::NoRoom(_) => ReservationErrorKind::Conflict,
            Self::ShuttingDown => ReservationErrorKind::Unavailable,
            Self::Db(err) => match err.kind() {
                DbErrorKind::NotFound => ReservationErrorKind::NotFound,
                DbErrorKind::Conflict => ReservationErrorKind::Conflict,
                DbErrorKind::Unavailable => ReservationErrorKind::Unavailable,
                DbErrorKind::Corrupt | DbErrorKind::Invalid => ReservationErrorKind::Internal,
            },
            Self::Dataset(err) => match err.kind() {
                DatasetErrorKind::Unavailable => ReservationErrorKind::Unavailable,
                DatasetErrorKind::NotFound => ReservationErrorKind::NotFound,
                DatasetErrorKind::Conflict => ReservationErrorKind::Conflict,
                DatasetErrorKind::Invalid | DatasetErrorKind::Corrupt => {
                    ReservationErrorKind::Internal
                }
            },
        }
    }

    /// The rejected field, for [`Invalid`](ReservationErrorKind::Invalid) errors.
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
