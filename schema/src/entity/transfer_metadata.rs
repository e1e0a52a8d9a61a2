//! `transfers.metadata`: the object metadata of a journaled put (Content-Type and the other
//! representation headers, `x-amz-meta-*`), as JSON text (`milepost_cacher::ObjectMetadata`);
//! null for deletes and for puts without any.
//!
//! The column belongs to the `transfers` table (migration 3) but is mapped by this entity of
//! its own over that table (the id and the column), not by [`super::transfer::Model`]: code
//! that builds `transfer::Model` values field by field (the API's transfer listing and tests)
//! stays as it is, and the journal, the only reader and writer of the column, reads it by id.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transfers")]
pub struct Model {
    /// The transfer's id ([`super::transfer::Model::id`]).
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "Text", nullable)]
    pub metadata: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
