//! `cache_entries`: one object version held in the office content store, keyed by
//! (bucket, key, etag).

use sea_orm::entity::prelude::*;

use crate::enums::CacheEntryState;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cache_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub bucket: String,
    #[sea_orm(column_type = "Text")]
    pub key: String,
    pub etag: String,
    pub size: i64,
    /// File path relative to the cache root.
    #[sea_orm(column_type = "Text")]
    pub path: String,
    pub state: CacheEntryState,
    pub last_access: DateTimeUtc,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
