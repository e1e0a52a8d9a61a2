//! `reservations`: a dataset reserved into the office cache for a while, with its progress.

use sea_orm::entity::prelude::*;

use crate::enums::ReservationState;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reservations")]
pub struct Model {
    /// From [`new_id("res")`](crate::ids::new_id).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub dataset_id: i64,
    /// Name of the token that reserved it.
    pub owner: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub purpose: Option<String>,
    pub state: ReservationState,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub objects_total: i64,
    pub objects_done: i64,
    pub bytes_total: i64,
    pub bytes_done: i64,
    /// Egress this reservation caused; 0 when everything was already cached.
    pub bytes_from_upstream: i64,
    /// Directory of the materialized view, once ready.
    #[sea_orm(column_type = "Text", nullable)]
    pub local_path: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    /// JSON array of strings: how it was materialized, when that differs from what was asked
    /// (a log materialized whole for want of a chunk index, a window without messages).
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub notes: Option<Json>,
    /// When the client needs it ready (`readyBy`); null when asked for now.
    pub ready_by: Option<DateTimeUtc>,
    /// The first minute of the download schedule at which its materialization may start, as
    /// planned at admission; null when asked for now.
    pub scheduled_start: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::dataset::Entity",
        from = "Column::DatasetId",
        to = "super::dataset::Column::Id"
    )]
    Dataset,
}

impl Related<super::dataset::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Dataset.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
