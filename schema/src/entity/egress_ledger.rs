//! `egress_ledger`: one row per object served or fetched, for egress and hit-ratio reports.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "egress_ledger")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub recorded_at: DateTimeUtc,
    /// The deployment's `office` name.
    pub office: String,
    pub bucket: String,
    #[sea_orm(column_type = "Text")]
    pub key: String,
    /// Dataset name, when served for a reservation.
    pub dataset: Option<String>,
    /// Token name, when known.
    pub owner: Option<String>,
    pub bytes_from_upstream: i64,
    pub bytes_served: i64,
    pub cache_hit: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
