//! `catalog_changes`: the change feed of the catalog. Every write of a drive, run or scenario
//! appends a row naming what changed, in the same transaction; each node's search index
//! follows the feed in `id` order (`milepost_indexer::feed`), so that a record registered at
//! one node is searchable at every node. Rows are appended under one lock per database
//! (`feed::append`), so that ids commit in order and a follower never skips one.

use sea_orm::entity::prelude::*;

use crate::enums::InputKind;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "catalog_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `drive`, `run` or `scenario`.
    pub kind: InputKind,
    pub entity_id: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
