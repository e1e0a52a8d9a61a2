#![doc = include_str!("../README.md")]

pub mod cache;
pub mod checksum;
pub mod datasets;
pub mod digest;
pub mod objects;
pub mod reservations;
pub mod transfer_policy;
pub mod trim;
pub mod trimmed;
pub mod writeback;

pub use cache::{
    CacheError, CacheErrorKind, CacheRead, CacheSettings, CacheStatsSnapshot, Durability,
    FetchContext, FetchOutcome, OfficeCache,
};
