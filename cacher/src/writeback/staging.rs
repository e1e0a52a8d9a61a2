//! Writing an upload's body to local disk: into a staging file, hashed (MD5) as it lands,
//! checked against the announced length and Content-MD5, then fsynced. Only then may the
//! upload be acknowledged. The file is written through blocking calls of about 1 MiB each,
//! off the async runtime.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use md5::{Digest as _, Md5};

use super::WriteBackError;
use crate::upstream::BoxError;

/// Bytes gathered before one blocking write.
const WRITE_BATCH: usize = 1024 * 1024;

/// A body on local disk, fsynced.
#[derive(Debug)]
pub struct StagedFile {
    pub path: PathBuf,
    pub size: u64,
    /// MD5 of the bytes.
    pub md5: [u8; 16],
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
    result.map(|(size, md5)| StagedFile { path, size, md5 })
}

async fn write_all<St, E>(
    path: &Path,
    bucket: &str,
    key: &str,
    body: St,
    checks: &BodyChecks,
) -> Result<(u64, [u8; 16]), WriteBackError>
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
        hasher: Some(Md5::new()),
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
    let md5: [u8; 16] = writer.hasher.take().unwrap_or_default().finalize().into();
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
    if let Some(file) = writer.file.take() {
        blocking(format!("syncing {}", path.display()), move || {
            file.sync_all()
        })
        .await?;
    }
    Ok((writer.size, md5))
}

/// The staging file and the running hash, moved into each blocking write and back.
struct Writer {
    file: Option<File>,
    hasher: Option<Md5>,
    size: u64,
}

impl Writer {
    async fn write(&mut self, bytes: Bytes, path: &Path) -> Result<(), WriteBackError> {
        let (Some(mut file), Some(mut hasher)) = (self.file.take(), self.hasher.take()) else {
            return Err(WriteBackError::io(
                format!("writing {}", path.display()),
                std::io::Error::other("an earlier write failed"),
            ));
        };
        let len = bytes.len() as u64;
        let (file, hasher) = blocking(format!("writing {}", path.display()), move || {
            hasher.update(&bytes);
            file.write_all(&bytes)?;
            Ok((file, hasher))
        })
        .await?;
        self.file = Some(file);
        self.hasher = Some(hasher);
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
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut hasher = Md5::new();
    for md5 in part_md5s {
        hasher.update(md5);
    }
    format!("{}-{}", hex::encode(hasher.finalize()), part_md5s.len())
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
                md5: None,
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
                    md5: None,
                },
                "announced",
            ),
            (
                BodyChecks {
                    length: Some(5),
                    md5: None,
                },
                "announced",
            ),
            (
                BodyChecks {
                    length: None,
                    md5: Some([0; 16]),
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

    #[test]
    fn multipart_etags_follow_s3() {
        // Two parts "a" and "b": md5(md5("a") ‖ md5("b")) with the part count.
        let a: [u8; 16] = Md5::digest(b"a").into();
        let b: [u8; 16] = Md5::digest(b"b").into();
        let etag = multipart_etag(&[a, b]);
        assert!(etag.ends_with("-2"));
        assert_eq!(etag.len(), 32 + 2);
    }
}
