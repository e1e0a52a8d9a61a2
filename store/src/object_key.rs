//! [`ObjectKey`]: the identity of one version of one object, and [`LocalCopies`], what an
//! office holds of such versions without asking upstream.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

/// One version of one object: what the cache stores and what a dataset's manifest lists.
/// Two versions of a key (different ETags) are different objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The ETag, without quotes.
    pub etag: String,
    /// The size in bytes, as listed; a download that finds another size fails verification.
    pub size: u64,
}

impl ObjectKey {
    /// An object key.
    pub fn new(
        bucket: impl Into<String>,
        key: impl Into<String>,
        etag: impl Into<String>,
        size: u64,
    ) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            etag: etag.into(),
            size,
        }
    }
}

impl fmt::Display for ObjectKey {
    /// `s3://bucket/key`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Versions of objects the office already holds whole (its cache), read without a request to
/// upstream. The catalog's sync reads footers through it, so that what the office downloaded
/// or wrote is not fetched (and paid for) again.
#[async_trait]
pub trait LocalCopies: Send + Sync + fmt::Debug {
    /// Bytes `start..end_exclusive` of `object`, if the office holds that version whole;
    /// `Ok(None)` when it does not. An error means the office's copy could not be read (the
    /// caller reads upstream instead).
    async fn read_local(
        &self,
        object: &ObjectKey,
        start: u64,
        end_exclusive: u64,
    ) -> Result<Option<Bytes>, crate::BoxError>;
}
