//! `datasets`: a named, versioned, immutable list of objects with its manifest in S3.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "datasets")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    /// 1 for the first dataset of a name, then one more per new version.
    pub version: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub created_at: DateTimeUtc,
    /// Name of the token that created it.
    pub created_by: String,
    /// Where the Parquet manifest (bucket, key, size, etag per row) is.
    pub manifest_bucket: String,
    #[sea_orm(column_type = "Text")]
    pub manifest_key: String,
    pub object_count: i64,
    pub total_bytes: i64,
    /// JSON: how it was built (query, entity ids or objects, include globs).
    #[sea_orm(column_type = "JsonBinary")]
    pub selection: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::dataset_member::Entity")]
    DatasetMember,
    #[sea_orm(has_many = "super::reservation::Entity")]
    Reservation,
}

impl Related<super::dataset_member::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::DatasetMember.def()
    }
}

impl Related<super::reservation::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Reservation.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
