//! `tokens`: API bearer tokens (stored hashed) and their optional S3 credentials.

use sea_orm::entity::prelude::*;

use crate::enums::Role;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokens")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    pub role: Role,
    /// SHA-256 of the bearer secret, lowercase hex.
    #[sea_orm(unique)]
    pub secret_hash: String,
    /// S3 access key id for the gateway, when the token has S3 credentials.
    #[sea_orm(unique)]
    pub s3_access_key: Option<String>,
    /// S3 secret key: SigV4 verification needs it in the clear.
    pub s3_secret: Option<String>,
    pub created_at: DateTimeUtc,
    pub last_used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
