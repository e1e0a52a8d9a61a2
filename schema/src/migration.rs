//! Schema migrations, portable between SQLite and PostgreSQL (sea-orm-migration's schema
//! builder; raw SQL only where the backends spell a query differently: m20261208_000001's
//! fold of the ledger). Applied by [`crate::migrate`]; each migration is frozen once
//! released: change the schema with a new migration, never by editing an old one.

use sea_orm_migration::prelude::*;

mod m20261125_000001_catalog;
mod m20261125_000002_scenario_trims;
mod m20261125_000003_object_metadata;
mod m20261206_000001_reservation_schedule;
mod m20261206_000002_run_input_windows;
mod m20261207_000001_catalog_changes;
mod m20261207_000002_cluster;
mod m20261208_000001_egress_aggregates;

/// All migrations of the catalog, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_catalog::Migration),
            Box::new(m20261125_000002_scenario_trims::Migration),
            Box::new(m20261125_000003_object_metadata::Migration),
            Box::new(m20261206_000001_reservation_schedule::Migration),
            Box::new(m20261206_000002_run_input_windows::Migration),
            Box::new(m20261207_000001_catalog_changes::Migration),
            Box::new(m20261207_000002_cluster::Migration),
            Box::new(m20261208_000001_egress_aggregates::Migration),
        ]
    }
}
