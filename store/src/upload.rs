//! Helpers over any [`ObjectStore`]: whole listings and streaming uploads.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio_util::io::ReaderStream;

use super::{BoxError, ObjectMeta, ObjectMetadata, ObjectStore, StoreError, Target};

/// The default part size of multipart uploads, and the size above which [`put_stream`]
/// switches to multipart: 16 MiB.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// The smallest part S3 accepts (but for the last one): 5 MiB.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// The most parts of one multipart upload S3 accepts.
pub const MAX_PARTS: usize = 10_000;

/// How [`put_stream`] and [`upload_file`] upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadOptions {
    /// The size of each part (the last may be smaller), raised to [`MIN_PART_SIZE`] if below.
    /// A body no longer than this is sent with one `put` instead. [`upload_file`] raises it
    /// further when the file would need more than [`MAX_PARTS`] parts.
    pub part_size: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// Every object of `bucket` under `prefix`, following [`ListPage::next`] from page to page.
/// Fails with [`Corrupt`](super::StoreErrorKind::Corrupt) if the store hands back the token it
/// was given (it would loop forever).
///
/// [`ListPage::next`]: super::ListPage::next
pub async fn list_all(
    store: &(impl ObjectStore + ?Sized),
    bucket: &str,
    prefix: &str,
) -> Result<Vec<ObjectMeta>, StoreError> {
    let mut objects = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let page = store
            .list_page(bucket, prefix, continuation.clone())
            .await?;
        objects.extend(page.objects);
        match page.next {
            None => return Ok(objects),
            Some(next) if Some(&next) == continuation.as_ref() => {
                return Err(StoreError::corrupt(
                    Target::new("list", bucket, prefix),
                    format!("the listing repeats continuation token `{next}`"),
                ));
            }
            Some(next) => continuation = Some(next),
        }
    }
}

/// Uploads `body` to `key`, holding at most one part (plus one chunk) in memory: a single
/// `put` when the body is no longer than [`UploadOptions::part_size`], else a multipart
/// upload, part after part, that is aborted if anything fails (a part, the body stream, the
/// completion). Returns the new object's metadata.
///
/// Errors from `body` become [`StoreError::Body`] (kind
/// [`Invalid`](super::StoreErrorKind::Invalid)). A body needing more than [`MAX_PARTS`] parts
/// fails with [`Invalid`](super::StoreErrorKind::Invalid). If the returned future is dropped
/// mid-way, the incomplete upload stays on the server until a lifecycle rule removes it.
pub async fn put_stream<St, E>(
    store: &(impl ObjectStore + ?Sized),
    bucket: &str,
    key: &str,
    body: St,
    options: &UploadOptions,
) -> Result<ObjectMeta, StoreError>
where
    St: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    put_stream_with(
        store,
        bucket,
        key,
        body,
        options,
        &ObjectMetadata::default(),
    )
    .await
}

/// [`put_stream`] of an object with `metadata` (given to
/// [`put_with`](ObjectStore::put_with) or
/// [`create_multipart_with`](ObjectStore::create_multipart_with), whichever the size calls for).
pub async fn put_stream_with<St, E>(
    store: &(impl ObjectStore + ?Sized),
    bucket: &str,
    key: &str,
    body: St,
    options: &UploadOptions,
    metadata: &ObjectMetadata,
) -> Result<ObjectMeta, StoreError>
where
    St: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    let part_size = options.part_size.max(MIN_PART_SIZE);
    let mut parts = Parts {
        body: Box::pin(body),
        pending: BytesMut::new(),
        part_size,
        target: Target::new("put", bucket, key),
    };
    let (first, last) = parts.next_part().await?;
    if last {
        return store.put_with(bucket, key, first, metadata).await;
    }

    let upload_id = store.create_multipart_with(bucket, key, metadata).await?;
    match upload_parts(store, bucket, key, &upload_id, first, &mut parts).await {
        Ok(etags) => match store
            .complete_multipart(bucket, key, &upload_id, etags)
            .await
        {
            Ok(meta) => Ok(meta),
            Err(err) => {
                abort(store, bucket, key, &upload_id).await;
                Err(err)
            }
        },
        Err(err) => {
            abort(store, bucket, key, &upload_id).await;
            Err(err)
        }
    }
}

/// Uploads the file at `path` to `key` with [`put_stream`], raising the part size if the file
/// would need more than [`MAX_PARTS`] parts. The file must not change while it is uploaded.
/// A file that cannot be opened or read fails with [`StoreError::Body`].
pub async fn upload_file(
    store: &(impl ObjectStore + ?Sized),
    bucket: &str,
    key: &str,
    path: &Path,
    options: &UploadOptions,
) -> Result<ObjectMeta, StoreError> {
    upload_file_with(
        store,
        bucket,
        key,
        path,
        options,
        &ObjectMetadata::default(),
    )
    .await
}

/// [`upload_file`] of an object with `metadata`, as [`put_stream_with`].
pub async fn upload_file_with(
    store: &(impl ObjectStore + ?Sized),
    bucket: &str,
    key: &str,
    path: &Path,
    options: &UploadOptions,
    metadata: &ObjectMetadata,
) -> Result<ObjectMeta, StoreError> {
    let body_error = |source: std::io::Error| StoreError::Body {
        target: Target::new("put", bucket, key),
        source: format!("{}: {source}", path.display()).into(),
    };
    let file = tokio::fs::File::open(path).await.map_err(body_error)?;
    let len = file.metadata().await.map_err(body_error)?.len();
    let needed = usize::try_from(len.div_ceil(MAX_PARTS as u64)).unwrap_or(usize::MAX);
    let options = UploadOptions {
        part_size: options.part_size.max(needed),
    };
    let stream = ReaderStream::with_capacity(file, 1024 * 1024);
    put_stream_with(store, bucket, key, stream, &options, metadata).await
}

/// Uploads `first` and every following part; returns the `(part number, etag)` list.
async fn upload_parts<St, E>(
    store: &(impl ObjectStore + ?Sized),
    bucket: &str,
    key: &str,
    upload_id: &str,
    first: Bytes,
    parts: &mut Parts<St>,
) -> Result<Vec<(i32, String)>, StoreError>
where
    St: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    let mut etags = Vec::new();
    let mut part = first;
    let mut number: i32 = 1;
    loop {
        let etag = store
            .upload_part(bucket, key, upload_id, number, part)
            .await?;
        etags.push((number, etag));
        let (next, last) = parts.next_part().await?;
        if next.is_empty() && last {
            return Ok(etags);
        }
        if etags.len() >= MAX_PARTS {
            return Err(StoreError::invalid(
                Target::new("upload_part", bucket, key),
                format!(
                    "the body needs more than {MAX_PARTS} parts of {} bytes",
                    parts.part_size
                ),
            ));
        }
        number += 1;
        part = next;
        if last {
            let etag = store
                .upload_part(bucket, key, upload_id, number, part)
                .await?;
            etags.push((number, etag));
            return Ok(etags);
        }
    }
}

async fn abort(store: &(impl ObjectStore + ?Sized), bucket: &str, key: &str, upload_id: &str) {
    if let Err(err) = store.abort_multipart(bucket, key, upload_id).await {
        tracing::warn!(bucket, key, upload_id, error = %err, "aborting a failed multipart upload failed");
    }
}

/// Cuts a byte stream into parts of `part_size` bytes.
struct Parts<St> {
    body: std::pin::Pin<Box<St>>,
    /// Bytes read but not yet handed out.
    pending: BytesMut,
    part_size: usize,
    target: Target,
}

impl<St, E> Parts<St>
where
    St: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
{
    /// The next part and whether it is the last one. A part is only handed out as not-last
    /// once a byte beyond it has been read, so a body of exactly `part_size` bytes is one
    /// last part.
    async fn next_part(&mut self) -> Result<(Bytes, bool), StoreError> {
        while self.pending.len() <= self.part_size {
            match self.body.next().await {
                Some(Ok(chunk)) => self.pending.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    return Err(StoreError::Body {
                        target: self.target.clone(),
                        source: err.into(),
                    })
                }
                None => return Ok((self.pending.split().freeze(), true)),
            }
        }
        Ok((self.pending.split_to(self.part_size).freeze(), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(
        chunks: Vec<usize>,
        part_size: usize,
    ) -> Parts<impl Stream<Item = Result<Bytes, std::io::Error>>> {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|n| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; n]))),
        );
        Parts {
            body: Box::pin(stream),
            pending: BytesMut::new(),
            part_size,
            target: Target::new("put", "b", "k"),
        }
    }

    async fn sizes(
        mut parts: Parts<impl Stream<Item = Result<Bytes, std::io::Error>>>,
    ) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        loop {
            let (part, last) = parts.next_part().await.expect("part");
            out.push((part.len(), last));
            if last {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn bodies_are_cut_into_parts() {
        assert_eq!(
            sizes(parts_of(vec![3, 3, 3], 4)).await,
            [(4, false), (4, false), (1, true)]
        );
        // Exactly one part: a single put, not a multipart upload of one part.
        assert_eq!(sizes(parts_of(vec![2, 2], 4)).await, [(4, true)]);
        assert_eq!(sizes(parts_of(vec![8], 4)).await, [(4, false), (4, true)]);
        assert_eq!(sizes(parts_of(vec![], 4)).await, [(0, true)]);
        assert_eq!(
            sizes(parts_of(vec![10, 0, 1], 4)).await,
            [(4, false), (4, false), (3, true)]
        );
    }
}
