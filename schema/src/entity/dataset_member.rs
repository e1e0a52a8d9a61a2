//! `dataset_members`: the objects of a dataset, pinned to the ETag they had when it was built.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dataset_members")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub dataset_id: i64,
    /// Order in the manifest; also the pagination order.
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i64,
    pub bucket: String,
    #[sea_orm(column_type = "Text")]
    pub key: String,
    pub size: i64,
    pub etag: String,
    /// JSON, for a member that is an MCAP log trimmed to a scenario's window: the scenario,
    /// the window, the topics and the file's name in views (`milepost_cacher::datasets::TrimSpec`).
    /// Null for whole objects.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub trim: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::dataset::Entity",
        from = "Column::DatasetId",
        to = "super::dataset::Column::Id",
        on_delete = "Cascade"
    )]
    Dataset,
}

impl Related<super::dataset::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Dataset.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
