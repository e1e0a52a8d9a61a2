//! The indexer's integration tests, one binary: metadata read from MCAP, Parquet and
//! sidecars, and the search index.

mod mcap_reference;
mod metadata;
mod search;
