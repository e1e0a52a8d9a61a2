//! The office's objects, one place for every door an object enters or leaves by (`/data`,
//! the S3 gateway, datasets, views): which keys the office accepts ([`key`]), which buckets it
//! serves ([`ServedBuckets`], the authorization boundary for objects), how every failure is
//! named ([`ObjectError`]), and the one object API the doors are adapters over
//! ([`OfficeObjects`]: resolve, conditions, ranges, read through the cache, write back).

mod completed;
pub mod conditions;
pub mod error;
pub mod key;
pub mod listing;
pub mod office;
mod versions;

pub use conditions::{EtagMatch, ReadConditions, Verdict};
pub use error::{ObjectError, ObjectErrorKind, Subject, Unchanged};
pub use key::{check_key, file_directory_clash, KeyProblem};
pub use listing::{Listed, Resume};
pub use office::{
    parse_range_header, CopySource, IncomingBody, ListRequest, ObjectBody, ObjectHead, ObjectRead,
    OfficeObjects, ReadRequest, Resolved, Written, DEFAULT_VERSION_WINDOW,
};

/// The buckets this office serves: the only ones any client may read or write through it
/// (`/data`, the S3 gateway, dataset creation, the web catalog's links). Everything else is
/// "not found" and costs no upstream request, whatever the service's own S3 credentials
/// could reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedBuckets(Vec<String>);

impl ServedBuckets {
    /// `buckets` in configuration order (the first is listed first).
    pub fn new(buckets: Vec<String>) -> Self {
        Self(buckets)
    }

    /// Whether `bucket` is served.
    pub fn serves(&self, bucket: &str) -> bool {
        self.0.iter().any(|b| b == bucket)
    }

    /// The served buckets, in configuration order.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}
