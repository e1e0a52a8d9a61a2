#![doc = include_str!("../README.md")]

#[cfg(feature = "loopback")]
pub mod loopback;
#[cfg(feature = "loopback")]
pub mod testing;
pub mod upstream;

pub use upstream::{
    build_store, list_all, put_stream, upload_file, ByteRange, EgressMeter, EgressSnapshot,
    GetResponse, ListPage, MeteredStore, ObjectMeta, ObjectStore, RetryPolicy, RetryingStore,
    S3Store, StaticCredentials, StoreError, StoreErrorKind, Target, UploadOptions,
    UpstreamSettings,
};
