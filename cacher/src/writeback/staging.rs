//! Writing an upload's body to local disk: into a staging file, hashed (MD5, and the additional
//! checksum the client sent, if any) as it lands, checked against the announced length,
//! Content-MD5 and checksum, then fsynced. Only then may the
//! upload be acknowledged. The file is written through blocking calls of about 1 MiB each,
//! off the async runtime.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};

use super::WriteBackError;
use crate::checksum::{Checksum, ChecksumCheck, Hasher as ChecksumHasher};
use crate::digest::Md5;
use milepost_store::BoxError;

/// Bytes gathered before one blocking write.
const WRITE_BATCH: usize = 1024 * 1024;

/// A body on local disk, fsynced.
#[derive(Debug)]
pub struct StagedFile {
    pub path: PathBuf,
    pub size: u64,
    /// MD5 of the bytes.
    pub md5: [u8; 16],
    /// The additional checksum [`BodyChecks::checksum`] asked for, verified.
    pub checksum: Option<Checksum>,
}

impl StagedFile {
    /// The MD5 in lowercase hex: the ETag S3 gives a single-part upload of these bytes.
    pub fn md5_hex(&self) -> String {
        hex::encode(self.md5)
    }
}

/// What the sender announced about a body.
#[derive(Clone, Debug, Default)]
pub struct BodyChecks {
    /// Content-Length: the body must have exactly this many bytes.
    pub length: Option<u64>,
    /// Content-MD5 (the 16 raw bytes): the body must hash to it.
    pub md5: Option<[u8; 16]>,
    /// An additional checksum (`x-amz-checksum-*`, in a header or a trailer): computed as the
    /// body lands, compared once it has ended.
    pub checksum: Option<ChecksumCheck>,
}

/// Writes `body` to `path` (created, must not exist), checks it against `checks`, fsyncs it.
/// On any failure the file is removed and nothing is left behind. `bucket` and `key` name the
/// object in errors.
pub async fn stage<St, E>(
    path: PathBuf,
    bucket: &str,
    key: &str,
    body: St,
    checks: &BodyChecks,
) -> Result<StagedFile, WriteBackError>
where
    St: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    let result = write_all(&path, bucket, key, body, checks).await;
    if result.is_err() {
        remove_quietly(path.clone()).await;
    }
    result.map(|(size, md5, checksum)| StagedFile {
        path,
        size,
        md5,
        checksum,
    })
}

async fn write_all<St, E>(
    path: &Path,
    bucket: &str,
    key: &str,
    body: St,
    checks: &BodyChecks,
) -> Result<(u64, [u8; 16], Option<Checksum>), WriteBackError>
where
    St: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    let file = {
        let path = path.to_owned();
        blocking(format!("creating {}", path.display()), move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        })
        .await?
    };
    let mut writer = Writer {
        file: Some(file),
        hashers: Some(Hashers {
            md5: Md5::new(),
            checksum: checks
                .checksum
                .as_ref()
                .map(|check| ChecksumHasher::new(check.algorithm())),
        }),
        size: 0,
    };
    let mut body = std::pin::pin!(body);
    let mut batch = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| WriteBackError::Body {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            source: err.into(),
        })?;
        if let Some(expected) = checks.length {
            let received = writer.size + batch.len() as u64 + chunk.len() as u64;
            if received > expected {
                return Err(WriteBackError::WrongLength {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    expected,
                    received,
                });
            }
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= WRITE_BATCH {
            writer.write(batch.split().freeze(), path).await?;
        }
    }
    if !batch.is_empty() {
        writer.write(batch.freeze(), path).await?;
    }
    if let Some(expected) = checks.length {
        if writer.size != expected {
            return Err(WriteBackError::WrongLength {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                expected,
                received: writer.size,
            });
        }
    }
    let Some(hashers) = writer.hashers.take() else {
        return Err(WriteBackError::io(
            format!("writing {}", path.display()),
            std::io::Error::other("an earlier write failed"),
        ));
    };
    let md5 = hashers
        .md5
        .finish()
        .map_err(|err| WriteBackError::io(format!("hashing {}", path.display()), err))?;
    if let Some(sent) = checks.md5 {
        if sent != md5 {
            return Err(WriteBackError::BadDigest {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                sent: hex::encode(sent),
                computed: hex::encode(md5),
            });
        }
    }
    // After the body has ended: a trailing checksum has arrived by now.
    let checksum = match (&checks.checksum, hashers.checksum) {
        (Some(check), Some(hasher)) => {
            let computed = hasher.finish();
            check
                .verify(&computed)
                .map_err(|source| WriteBackError::Checksum {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    source,
                })?;
            Some(computed)
        }
        _ => None,
    };
    if let Some(file) = writer.file.take() {
        blocking(format!("syncing {}", path.display()), move || {
            file.sync_all()
        })
        .await?;
    }
    Ok((writer.size, md5, checksum))
}

/// The staging file and the running hashes, moved into each blocking write and back.
struct Writer {
    file: Option<File>,
    hashers: Option<Hashers>,
    size: u64,
}

struct Hashers {
    md5: Md5,
    checksum: Option<ChecksumHasher>,
}

impl Writer {
    async fn write(&mut self, bytes: Bytes, path: &Path) -> Result<(), WriteBackError> {
        let (Some(mut file), Some(mut hashers)) = (self.file.take(), self.hashers.take()) else {
            return Err(WriteBackError::io(
                format!("writing {}", path.display()),
                std::io::Error::other("an earlier write failed"),
            ));
        };
        let len = bytes.len() as u64;
        let (file, hashers) = blocking(format!("writing {}", path.display()), move || {
            hashers.md5.update(&bytes)?;
            if let Some(checksum) = &mut hashers.checksum {
                checksum.update(&bytes);
            }
            file.write_all(&bytes)?;
            Ok((file, hashers))
        })
        .await?;
        self.file = Some(file);
        self.hashers = Some(hashers);
        self.size += len;
        Ok(())
    }
}

/// Runs blocking file work off the runtime; `what` names it in errors.
pub(crate) async fn blocking<T, F>(what: String, op: F) -> Result<T, WriteBackError>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result.map_err(|err| WriteBackError::io(what, err)),
        Err(join) => Err(WriteBackError::io(what, std::io::Error::other(join))),
    }
}

/// Removes a file, ignoring a missing one and logging other failures (a left-over staging
/// file is removed at the next start-up anyway).
pub(crate) async fn remove_quietly(path: PathBuf) {
    let shown = path.display().to_string();
    if let Err(err) = tokio::fs::remove_file(path).await {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %shown, error = %err, "cannot remove a staging file");
        }
    }
}

/// The multipart ETag S3 gives an object assembled from parts with these MD5s:
/// `hex(md5(md5_1 ‖ … ‖ md5_n))-n`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> std::io::Result<String> {
    let mut hasher = Md5::new();
    for md5 in part_md5s {
        hasher.update(md5)?;
    }
    Ok(format!(
        "{}-{}",
        hex::encode(hasher.finish()?),
        part_md5s.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn stages_and_hashes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        let staged = stage(
            path.clone(),
            "b",
            "k",
            chunks(&[b"hello ", b"world"]),
            &BodyChecks {
                length: Some(11),
                ..BodyChecks::default()
            },
        )
        .await
        .expect("staged");
        assert_eq!(staged.size, 11);
        assert_eq!(staged.md5_hex(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(std::fs::read(path).expect("read"), b"hello world");
    }

    #[tokio::test]
    async fn short_long_and_mismatched_bodies_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (checks, what) in [
            (
                BodyChecks {
                    length: Some(12),
                    ..BodyChecks::default()
                },
                "announced",
            ),
            (
                BodyChecks {
                    length: Some(5),
                    ..BodyChecks::default()
                },
                "announced",
            ),
            (
                BodyChecks {
                    length: None,
                    md5: Some([0; 16]),
                    ..BodyChecks::default()
                },
                "Content-MD5",
            ),
        ] {
            let path = dir.path().join("x");
            let err = stage(
                path.clone(),
                "b",
                "k",
                chunks(&[b"hello ", b"world"]),
                &checks,
            )
            .await
            .expect_err("refused");
            assert!(err.to_string().contains(what), "{err}");
            assert_eq!(err.kind(), super::super::WriteBackErrorKind::Invalid);
            assert!(!path.exists(), "nothing left behind");
        }
    }

    fn crc32_check(check: ChecksumCheck) -> BodyChecks {
        BodyChecks {
            checksum: Some(check),
            ..BodyChecks::default()
        }
    }

    #[tokio::test]
    async fn additional_checksums_are_verified_before_the_file_is_kept() {
        use crate::checksum::{ChecksumAlgorithm, ChecksumError};
        use std::sync::Arc;

        let dir = tempfile::tempdir().expect("tempdir");
        let right = Checksum::of(ChecksumAlgorithm::Crc32, b"hello world");
        let wrong = Checksum::of(ChecksumAlgorithm::Crc32, b"hello");

        // Sent in a header: the right value is kept and reported.
        let path = dir.path().join("right");
        let staged = stage(
            path.clone(),
            "b",
            "k",
            chunks(&[b"hello ", b"world"]),
            &crc32_check(ChecksumCheck::sent(right.clone())),
        )
        .await
        .expect("staged");
        assert_eq!(staged.checksum, Some(right.clone()));
        assert!(path.exists());

        // A trailer is read once the body has ended: the stream sets it on its last item.
        let trailer: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let set = Arc::clone(&trailer);
        let body = chunks(&[b"hello ", b"world"]).chain(futures::stream::once(async move {
            *set.lock().expect("lock") = Some("DUoRhQ==".to_owned()); // CRC32 of "hello world"
            Ok(Bytes::new())
        }));
        let read = Arc::clone(&trailer);
        let path = dir.path().join("trailer");
        let staged = stage(
            path.clone(),
            "b",
            "k",
            body,
            &crc32_check(ChecksumCheck::trailer(
                ChecksumAlgorithm::Crc32,
                Arc::new(move || read.lock().expect("lock").clone()),
            )),
        )
        .await
        .expect("staged with a trailer");
        assert_eq!(staged.checksum, Some(right.clone()));

        // A wrong value, a wrong trailer, a missing trailer: refused, nothing left behind.
        for (check, mismatch) in [
            (ChecksumCheck::sent(wrong.clone()), true),
            (
                ChecksumCheck::trailer(
                    ChecksumAlgorithm::Crc32,
                    Arc::new(move || Some(wrong.to_base64())),
                ),
                true,
            ),
            (
                ChecksumCheck::trailer(ChecksumAlgorithm::Crc32, Arc::new(|| None)),
                false,
            ),
        ] {
            let path = dir.path().join("refused");
            let err = stage(
                path.clone(),
                "b",
                "k",
                chunks(&[b"hello ", b"world"]),
                &crc32_check(check),
            )
            .await
            .expect_err("refused");
            let WriteBackError::Checksum { source, .. } = &err else {
                panic!("not a checksum error: {err}");
            };
            assert_eq!(source.is_mismatch(), mismatch, "{err}");
            if !mismatch {
                assert!(matches!(source, ChecksumError::MissingTrailer { .. }));
            }
            assert_eq!(err.kind(), super::super::WriteBackErrorKind::Invalid);
            assert!(!path.exists(), "nothing left behind");
        }
    }

    #[test]
    fn multipart_etags_follow_s3() {
        // Two parts "a" and "b": md5(md5("a") ‖ md5("b")) with the part count.
        let a = Md5::digest(b"a").expect("md5");
        let b = Md5::digest(b"b").expect("md5");
        let etag = multipart_etag(&[a, b]).expect("etag");
        assert_eq!(etag, "96e024ba2074fe77e8e965ba43a704be-2");
    }
}
