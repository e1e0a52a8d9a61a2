//! The values exchanged with an [`ObjectStore`](super::ObjectStore).

use std::fmt;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::error::{StoreError, Target};
use super::metadata::ObjectMetadata;

/// The metadata of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The size of the whole object, in bytes.
    pub size: u64,
    /// The ETag, without surrounding quotes. Empty only in a listing whose server omitted it;
    /// [`head`](super::ObjectStore::head) then gives it.
    pub etag: String,
    /// When the object was last written, if the server said.
    pub last_modified: Option<DateTime<Utc>>,
    /// Content-Type and the other headers S3 keeps with the object, and its user metadata:
    /// filled by [`head`](super::ObjectStore::head) and [`get`](super::ObjectStore::get),
    /// empty in listings (S3 lists none of it).
    pub metadata: ObjectMetadata,
}

/// One page of a listing; see [`ObjectStore::list_page`](super::ObjectStore::list_page).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects of this page, in lexicographic order of keys. An object's `etag` is empty
    /// when the server omitted it from the listing.
    pub objects: Vec<ObjectMeta>,
    /// The continuation token of the next page, `None` on the last page.
    pub next: Option<String>,
}

/// One page of a listing grouped by a delimiter; see
/// [`ObjectStore::list_delimited`](super::ObjectStore::list_delimited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DelimitedPage {
    /// The objects directly under the prefix (no delimiter after it), in key order.
    pub objects: Vec<ObjectMeta>,
    /// The common prefixes (the prefix, up to and including the next delimiter), in order.
    pub prefixes: Vec<String>,
    /// The continuation token of the next page, `None` on the last page.
    pub next: Option<String>,
}

/// Which bytes of an object to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteRange {
    /// The whole object.
    All,
    /// From this offset to the end.
    From(u64),
    /// From `start` to `end_inclusive`, both included; an end past the object's end is clamped.
    Bounded {
        /// The first byte.
        start: u64,
        /// The last byte (included).
        end_inclusive: u64,
    },
    /// The last this many bytes (all of the object if it is shorter).
    Suffix(u64),
}

impl ByteRange {
    /// The HTTP `Range` header value (`bytes=0-99`, `bytes=100-`, `bytes=-100`), or `None`
    /// for [`All`](Self::All).
    pub fn to_header(&self) -> Option<String> {
        match *self {
            Self::All => None,
            Self::From(start) => Some(format!("bytes={start}-")),
            Self::Bounded {
                start,
                end_inclusive,
            } => Some(format!("bytes={start}-{end_inclusive}")),
            Self::Suffix(len) => Some(format!("bytes=-{len}")),
        }
    }

    /// Whether the range can never be satisfied, whatever the object: a bounded range with
    /// `start > end_inclusive`, or an empty suffix.
    pub fn is_empty(&self) -> bool {
        match *self {
            Self::All | Self::From(_) => false,
            Self::Bounded {
                start,
                end_inclusive,
            } => start > end_inclusive,
            Self::Suffix(len) => len == 0,
        }
    }

    /// The inclusive byte positions this range selects in an object of `size` bytes, or `None`
    /// when it is not satisfiable (HTTP semantics: see
    /// [`ObjectStore::get`](super::ObjectStore::get)).
    pub fn resolve(&self, size: u64) -> Option<(u64, u64)> {
        if size == 0 || self.is_empty() {
            return None;
        }
        let last = size - 1;
        match *self {
            Self::All => Some((0, last)),
            Self::From(start) => (start <= last).then_some((start, last)),
            Self::Bounded {
                start,
                end_inclusive,
            } => (start <= last).then_some((start, end_inclusive.min(last))),
            Self::Suffix(len) => Some((size - len.min(size), last)),
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_header() {
            Some(header) => f.write_str(&header),
            None => f.write_str("bytes=0-"),
        }
    }
}

/// The answer to [`ObjectStore::get`](super::ObjectStore::get): metadata and a body stream.
pub struct GetResponse {
    /// The whole object's metadata (`size` is the object's size, not the range's).
    pub meta: ObjectMeta,
    /// The inclusive byte positions the body carries; `None` when it is the whole object sent
    /// without a `Content-Range` (see [`ObjectStore::get`](super::ObjectStore::get)).
    pub range: Option<(u64, u64)>,
    /// The bytes: exactly those of `range` (or the whole object), or an error.
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl GetResponse {
    /// How many bytes the body carries.
    pub fn content_length(&self) -> u64 {
        match self.range {
            Some((start, end)) => end - start + 1,
            None => self.meta.size,
        }
    }

    /// Reads the whole body into memory, for small reads (sidecars, footers). Fails with
    /// [`TooLarge`](super::StoreErrorKind::TooLarge) if it is longer than `max_bytes`,
    /// without reading it when the length is known in advance.
    pub async fn collect(self, max_bytes: usize) -> Result<Bytes, StoreError> {
        let too_large = |meta: &ObjectMeta| StoreError::TooLarge {
            target: Target::new("get", &meta.bucket, &meta.key),
            limit: max_bytes,
        };
        let expected = self.content_length();
        if expected > max_bytes as u64 {
            return Err(too_large(&self.meta));
        }
        // `expected <= max_bytes`, so it fits in usize.
        let mut buf = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(max_bytes));
        let mut body = self.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if buf.len() + chunk.len() > max_bytes {
                return Err(too_large(&self.meta));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

impl fmt::Debug for GetResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResponse")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        assert_eq!(ByteRange::All.to_header(), None);
        assert_eq!(ByteRange::From(0).to_header().as_deref(), Some("bytes=0-"));
        assert_eq!(
            ByteRange::From(1024).to_header().as_deref(),
            Some("bytes=1024-")
        );
        assert_eq!(
            ByteRange::Bounded {
                start: 0,
                end_inclusive: 0
            }
            .to_header()
            .as_deref(),
            Some("bytes=0-0")
        );
        assert_eq!(
            ByteRange::Bounded {
                start: 10,
                end_inclusive: 19
            }
            .to_header()
            .as_deref(),
            Some("bytes=10-19")
        );
        assert_eq!(
            ByteRange::Suffix(8).to_header().as_deref(),
            Some("bytes=-8")
        );
        assert_eq!(ByteRange::Suffix(8).to_string(), "bytes=-8");
    }

    #[test]
    fn ranges_resolve_like_http() {
        let size = 100;
        assert_eq!(ByteRange::All.resolve(size), Some((0, 99)));
        assert_eq!(ByteRange::From(99).resolve(size), Some((99, 99)));
        assert_eq!(ByteRange::From(100).resolve(size), None);
        let bounded = |start, end_inclusive| ByteRange::Bounded {
            start,
            end_inclusive,
        };
        assert_eq!(bounded(0, 0).resolve(size), Some((0, 0)));
        assert_eq!(bounded(90, 500).resolve(size), Some((90, 99)));
        assert_eq!(bounded(5, 4).resolve(size), None);
        assert_eq!(bounded(100, 200).resolve(size), None);
        assert_eq!(ByteRange::Suffix(1).resolve(size), Some((99, 99)));
        assert_eq!(ByteRange::Suffix(1000).resolve(size), Some((0, 99)));
        assert_eq!(ByteRange::Suffix(0).resolve(size), None);
        assert_eq!(ByteRange::All.resolve(0), None);
        assert!(bounded(5, 4).is_empty());
        assert!(ByteRange::Suffix(0).is_empty());
        assert!(!ByteRange::From(0).is_empty());
    }

    fn response(chunks: Vec<&'static [u8]>, range: Option<(u64, u64)>, size: u64) -> GetResponse {
        GetResponse {
            meta: ObjectMeta {
                bucket: "b".into(),
                key: "k".into(),
                size,
                etag: "e".into(),
                last_modified: None,
                metadata: ObjectMetadata::default(),
            },
            range,
            body: futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))))
                .boxed(),
        }
    }

    #[tokio::test]
    async fn collect_concatenates_within_the_limit() {
        let got = response(vec![b"ab", b"cd"], None, 4)
            .collect(4)
            .await
            .expect("collect");
        assert_eq!(&got[..], b"abcd");
    }

    #[tokio::test]
    async fn collect_refuses_bodies_over_the_limit() {
        // Known in advance from the metadata.
        let err = response(vec![b"abcd"], None, 4)
            .collect(3)
            .await
            .expect_err("too large");
        assert_eq!(err.kind(), super::super::StoreErrorKind::TooLarge);
        // Only noticed while reading (the server sent more than announced).
        let err = response(vec![b"ab", b"cd"], Some((0, 1)), 4)
            .collect(3)
            .await
            .expect_err("too large");
        assert_eq!(err.kind(), super::super::StoreErrorKind::TooLarge);
    }
}
