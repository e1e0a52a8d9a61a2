//! `runs`: a simulation, benchmark or SIL run, read from its `run.json` or registered via the API.

use sea_orm::entity::prelude::*;

use crate::enums::{RecordSource, RunKind, RunStatus};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    /// The sidecar's `run_id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: RunKind,
    pub pipeline: String,
    pub commit: Option<String>,
    pub status: RunStatus,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    /// JSON array of strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub tags: Json,
    /// JSON object, e.g. the mean value per metric from `metrics.parquet`.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metrics: Option<Json>,
    /// JSON object: sidecar fields this schema does not know, kept and searchable.
    #[sea_orm(column_type = "JsonBinary")]
    pub extra: Json,
    /// Bucket holding the run's outputs.
    pub bucket: String,
    /// Key prefix of the run's outputs, e.g. `runs/<id>/`.
    #[sea_orm(column_type = "Text")]
    pub prefix: String,
    pub source: RecordSource,
    /// ETag of the `run.json` this row was read from; `None` when registered via the API.
    pub sidecar_etag: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::run_input::Entity")]
    RunInput,
    #[sea_orm(has_many = "super::object::Entity")]
    Object,
}

impl Related<super::run_input::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RunInput.def()
    }
}

impl Related<super::object::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Object.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
