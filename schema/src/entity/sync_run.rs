//! `sync_runs`: one catalog sync from S3 and what it found.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_runs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub started_at: DateTimeUtc,
    /// `None` while running (or when the process died during the sync).
    pub finished_at: Option<DateTimeUtc>,
    pub objects_seen: i64,
    pub drives: i64,
    pub runs: i64,
    /// JSON array of strings: malformed sidecars and other non-fatal problems.
    #[sea_orm(column_type = "JsonBinary")]
    pub errors: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
