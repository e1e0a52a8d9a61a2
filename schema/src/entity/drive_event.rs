//! `drive_events`: the `events[]` of a drive sidecar, in sidecar order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "drive_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub drive_id: String,
    /// Index in the sidecar's `events[]`.
    pub position: i32,
    pub at: DateTimeUtc,
    pub kind: String,
    pub label: Option<String>,
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
