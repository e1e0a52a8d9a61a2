//! `egress_totals`: the egress ledger summed per office and owner (`''` for none) since the
//! office began, written with the raw rows by [`crate::egress::record`]; what `cacheStats`
//! reads. Never pruned.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "egress_totals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub office: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner: String,
    pub hits: i64,
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
