//! sea-orm entities, one module per table. Table names are plural snake_case; see the crate
//! README for what each table holds.

pub mod cache_entry;
pub mod catalog_change;
pub mod cluster_node;
pub mod dataset;
pub mod dataset_member;
pub mod drive;
pub mod drive_event;
pub mod egress_hour;
pub mod egress_ledger;
pub mod egress_minute;
pub mod egress_total;
pub mod object;
pub mod reservation;
pub mod run;
pub mod run_input;
pub mod run_input_window;
pub mod scenario;
pub mod sync_run;
pub mod token;
pub mod transfer;
pub mod transfer_metadata;

/// The entities under their table-ish names: `use milepost_schema::prelude::*;`.
pub mod prelude {
    pub use super::cache_entry::Entity as CacheEntry;
    pub use super::catalog_change::Entity as CatalogChange;
    pub use super::cluster_node::Entity as ClusterNode;
    pub use super::dataset::Entity as Dataset;
    pub use super::dataset_member::Entity as DatasetMember;
    pub use super::drive::Entity as Drive;
    pub use super::drive_event::Entity as DriveEvent;
    pub use super::egress_hour::Entity as EgressHour;
    pub use super::egress_ledger::Entity as EgressLedger;
    pub use super::egress_minute::Entity as EgressMinute;
    pub use super::egress_total::Entity as EgressTotal;
    pub use super::object::Entity as Object;
    pub use super::reservation::Entity as Reservation;
    pub use super::run::Entity as Run;
    pub use super::run_input::Entity as RunInput;
    pub use super::run_input_window::Entity as RunInputWindow;
    pub use super::scenario::Entity as Scenario;
    pub use super::sync_run::Entity as SyncRun;
    pub use super::token::Entity as Token;
    pub use super::transfer::Entity as Transfer;
    pub use super::transfer_metadata::Entity as TransferMetadata;
}
