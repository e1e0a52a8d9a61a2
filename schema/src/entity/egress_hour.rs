//! `egress_hours`: the egress ledger summed per office and hour (Unix seconds ÷ 3600), catalog
//! sync left out, written with the raw rows by [`crate::egress::record`]; what `cacheHistory`
//! reads for stretches of whole hours (a 30-day history is 720 rows, not 43,200 minutes).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "egress_hours")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub office: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub hour: i64,
    pub hits: i64,
    pub misses: i64,
    pub bytes_served: i64,
    pub bytes_from_upstream: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
