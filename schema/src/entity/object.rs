//! `objects`: one S3 object seen by a sync (or written through the gateway), with the drive or
//! run it belongs to. The auto-increment id is the stable pagination order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "objects")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub bucket: String,
    #[sea_orm(column_type = "Text")]
    pub key: String,
    pub size: i64,
    pub etag: String,
    pub last_modified: Option<DateTimeUtc>,
    pub drive_id: Option<String>,
    pub run_id: Option<String>,
    /// When a sync found the object gone upstream; the row is kept for history.
    pub deleted_at: Option<DateTimeUtc>,
    /// JSON: MCAP or Parquet summary (topics, counts, time range, schema), filled by the indexer.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::drive::Entity",
        from = "Column::DriveId",
        to = "super::drive::Column::Id",
        on_delete = "SetNull"
    )]
    Drive,
    #[sea_orm(
        belongs_to = "super::run::Entity",
        from = "Column::RunId",
        to = "super::run::Column::Id",
        on_delete = "SetNull"
    )]
    Run,
}

impl Related<super::drive::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Drive.def()
    }
}

impl Related<super::run::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Run.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
