#![doc = include_str!("../README.md")]
pub mod catalog;
pub mod documents;
pub mod error;
pub mod feed;
pub mod fleet;
pub mod lineage;
pub mod metadata;
pub mod search;
pub mod sync;

pub use catalog::Catalog;
