//! The catalog's change feed (`catalog_changes`): what each node's search index follows.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CatalogChanges::Table)
                    .col(
                        big_integer(CatalogChanges::Id)
                            .auto_increment()
                            .primary_key()
                            .take(),
                    )
                    .col(string(CatalogChanges::Kind))
                    .col(string(CatalogChanges::EntityId))
                    .col(timestamp_with_time_zone(CatalogChanges::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(CatalogChanges::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum CatalogChanges {
    Table,
    Id,
    Kind,
    EntityId,
    CreatedAt,
}
