//! `scenarios`: a labelled time span of a drive (from the sidecar or tagged via the API).

use sea_orm::entity::prelude::*;

use crate::enums::RecordSource;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scenarios")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub drive_id: String,
    pub label: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub tags: Json,
    pub start_time: DateTimeUtc,
    pub end_time: DateTimeUtc,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub source: RecordSource,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::drive::Entity",
        from = "Column::DriveId",
        to = "super::drive::Column::Id",
        on_delete = "Cascade"
    )]
    Drive,
}

impl Related<super::drive::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Drive.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
