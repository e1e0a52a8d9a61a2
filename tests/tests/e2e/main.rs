//! The end-to-end suite: the real `milepost` server, a real S3 server on loopback and a real
//! catalog database (SQLite, or PostgreSQL when `MILEPOST_TEST_DATABASE_URL` is set), driven
//! over HTTP, GraphQL, the S3 protocol and a browser. One test binary, one module per
//! capability; the fixtures come from `milepost-testkit`.

mod catalog_api;
mod dataset_diff;
mod events;
mod faults;
mod gateway;
mod lineage;
mod office_tier;
mod offices;
mod one_fetch_per_byte;
mod pull;
mod ready_by;
mod reserve;
mod scenario_trim;
mod search_feed;
mod sync_search;
mod tooling;
mod transfer_policy;
mod viewer_access;
mod viewer_mcap;
mod warm_reads;
mod web_catalog;
