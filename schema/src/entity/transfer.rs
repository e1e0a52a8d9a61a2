//! `transfers`: the write-back journal of uploads (and deletes) from the office to S3. The
//! auto-increment id is the journal order.

use sea_orm::entity::prelude::*;

use crate::enums::{TransferOp, TransferState};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transfers")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub op: TransferOp,
    pub bucket: String,
    #[sea_orm(column_type = "Text")]
    pub key: String,
    pub size: i64,
    pub etag: Option<String>,
    /// The staged file, relative to the cache root, until it is uploaded.
    #[sea_orm(column_type = "Text", nullable)]
    pub staging_path: Option<String>,
    pub state: TransferState,
    /// Lower uploads first (the index of the first matching priority glob).
    pub priority: i32,
    pub bytes_done: i64,
    pub attempts: i32,
    pub enqueued_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
