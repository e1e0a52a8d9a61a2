//! `drives`: one road-test drive, read from its `drive.json` sidecar or registered via the API.

use sea_orm::entity::prelude::*;

use crate::enums::RecordSource;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "drives")]
pub struct Model {
    /// The sidecar's `drive_id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub vehicle: String,
    pub city: Option<String>,
    pub route: Option<String>,
    pub started_at: DateTimeUtc,
    pub ended_at: DateTimeUtc,
    pub distance_km: Option<f64>,
    pub software_version: Option<String>,
    pub weather: Option<String>,
    /// JSON array of strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub tags: Json,
    /// JSON object: sidecar fields this schema does not know, kept and searchable.
    #[sea_orm(column_type = "JsonBinary")]
    pub extra: Json,
    /// JSON array of MCAP channel topics, filled by the indexer.
    #[sea_orm(column_type = "JsonBinary")]
    pub topics: Json,
    /// Bucket holding the drive's files.
    pub bucket: String,
    /// Key prefix of the drive's files, e.g. `drives/2026-11-01/gz-004/<id>/`.
    #[sea_orm(column_type = "Text")]
    pub prefix: String,
    pub source: RecordSource,
    /// ETag of the `drive.json` this row was read from; `None` when registered via the API.
    pub sidecar_etag: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::drive_event::Entity")]
    DriveEvent,
    #[sea_orm(has_many = "super::scenario::Entity")]
    Scenario,
    #[sea_orm(has_many = "super::object::Entity")]
    Object,
}

impl Related<super::drive_event::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::DriveEvent.def()
    }
}

impl Related<super::scenario::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Scenario.def()
    }
}

impl Related<super::object::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Object.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
