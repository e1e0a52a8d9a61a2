//! The indexer's integration tests, one binary: metadata read from MCAP, Parquet and
//! sidecars, and the search index.

mod metadata;
mod search;
