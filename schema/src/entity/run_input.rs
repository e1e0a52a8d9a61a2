//! `run_inputs`: the `inputs[]` of a run, in order. An input names a catalog entity by id; it is
//! not a foreign key, since a run may be cataloged before its inputs are.

use sea_orm::entity::prelude::*;

use crate::enums::InputKind;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "run_inputs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub run_id: String,
    /// Index in the run's `inputs[]`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i32,
    pub input_id: String,
    pub input_kind: InputKind,
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
