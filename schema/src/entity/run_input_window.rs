//! `run_input_windows`: the time windows of drives a run read (`inputWindows`), in order.
//! A window names its drive by id, not by foreign key: a run may be cataloged before the
//! drive. Windows are half-open, `[start_time, end_time)`, and never empty.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "run_input_windows")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub run_id: String,
    /// Index in the run's `input_windows[]`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i32,
    pub drive_id: String,
    pub start_time: DateTimeUtc,
    pub end_time: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::run::Entity",
        from = "Column::RunId",
        to = "super::run::Column::Id",
        on_delete = "Cascade"
    )]
    Run,
}

impl Related<super::run::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Run.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
