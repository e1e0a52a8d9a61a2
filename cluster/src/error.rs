//! The cluster's one error type.

use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Cluster mode runs on PostgreSQL only (its advisory locks and shared rows).
    #[error("cluster mode needs PostgreSQL: the database is {backend}")]
    NeedsPostgres { backend: String },
    #[error("invalid cluster setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot open the cluster's claim connections: {0}")]
    Connect(#[from] milepost_schema::DbError),
    #[error("{what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: sea_orm::sqlx::Error,
    },
    #[error("{what}: {source}")]
    Db {
        what: String,
        #[source]
        source: DbErr,
    },
}

impl ClusterError {
    pub(crate) fn sql(what: impl Into<String>, source: sea_orm::sqlx::Error) -> Self {
        ClusterError::Sql {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn db(what: impl Into<String>, source: DbErr) -> Self {
        ClusterError::Db {
            what: what.into(),
            source,
        }
    }
}
