//! Object metadata on the write-back journal: `transfers.metadata` keeps, for a put, the
//! Content-Type, the other representation headers and the `x-amz-meta-*` user metadata the
//! client wrote (JSON text, `milepost_cacher::ObjectMetadata`), so that the office serves them
//! and the uploader gives them to S3. Null for deletes and for puts without any.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Transfers::Table)
                    .add_column(text_null(Transfers::Metadata))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Transfers::Table)
                    .drop_column(Transfers::Metadata)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Transfers {
    Table,
    Metadata,
}
