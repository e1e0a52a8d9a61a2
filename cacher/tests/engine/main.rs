//! The cacher's integration tests, one binary: the upstream store, the office cache, datasets
//! and reservations, and write-back metadata, each over a real S3 server on loopback and a
//! real catalog database (fixtures from `milepost-testkit`).

mod cache;
mod content_contract;
mod reservations;
mod upstream;
mod writeback_metadata;
