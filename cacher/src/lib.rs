#![doc = include_str!("../README.md")]

pub mod cache;
pub mod checksum;
pub mod datasets;
pub mod digest;
#[cfg(feature = "loopback")]
pub mod loopback;
pub mod objects;
pub mod reservations;
pub mod transfer_policy;
pub mod trim;
pub mod trimmed;
pub mod upstream;
pub mod writeback;

pub use cache::{
    CacheError, CacheErrorKind, CacheRead, CacheSettings, CacheStatsSnapshot, Durability,
    FetchContext, FetchOutcome, ObjectKey, OfficeCache,
};
pub use upstream::{
    build_store, list_all, put_stream, put_stream_with, upload_file, upload_file_with, ByteRange,
    DelimitedPage, EgressMeter, EgressSnapshot, GetResponse, ListPage, MeteredStore, ObjectMeta,
    ObjectMetadata, ObjectStore, RetryPolicy, RetryingStore, S3Store, StaticCredentials,
    StoreError, StoreErrorKind, Target, UploadOptions, UpstreamSettings,
};
