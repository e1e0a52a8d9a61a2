//! Multipart uploads received by the office (the S3 gateway's CreateMultipartUpload,
//! UploadPart, ListParts, CompleteMultipartUpload, AbortMultipartUpload).
//!
//! Each upload is a directory `<cache root>/multipart/<upload id>/` holding `upload.json`
//! (bucket, key, when it started) and one fsynced file per part, named
//! `<part number, 5 digits>.<md5 hex>`: the name carries the part's ETag, so the parts are
//! listed from the directory alone and survive a restart. Completing concatenates the parts
//! into a staging file, which [`WriteBack::commit_put`](super::WriteBack::commit_put)
//! installs; the directory is removed then, or on abort.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::staging::{self, blocking, BodyChecks};
use super::{multipart_etag, WriteBackError};
use crate::checksum::Checksum;
use crate::upstream::{BoxError, MAX_PARTS, MIN_PART_SIZE};

/// The office's multipart uploads in progress.
#[derive(Debug)]
pub struct Multipart {
    root: PathBuf,
}

/// What an upload is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadInfo {
    pub bucket: String,
    pub key: String,
    pub initiated: DateTime<Utc>,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub number: i32,
    /// MD5 hex, without quotes.
    pub etag: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// A part as [`Multipart::upload_part`] stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    /// MD5 hex, without quotes.
    pub etag: String,
    /// The additional checksum the upload asked for ([`BodyChecks::checksum`]), verified.
    pub checksum: Option<Checksum>,
}

/// A completed upload's bytes, staged and fsynced, ready for
/// [`WriteBack::commit_put`](super::WriteBack::commit_put).
#[derive(Debug)]
pub struct Assembled {
    pub path: PathBuf,
    pub size: u64,
    /// The S3 multipart ETag of the parts.
    pub etag: String,
}

const INFO: &str = "upload.json";

impl Multipart {
    pub(crate) async fn open(root: PathBuf) -> Result<Self, WriteBackError> {
        let dir = root.clone();
        blocking(format!("creating {}", dir.display()), move || {
            std::fs::create_dir_all(dir)
        })
        .await?;
        Ok(Self { root })
    }

    fn dir(&self, upload_id: &str) -> Result<PathBuf, WriteBackError> {
        // Ids are ours (hex); anything else cannot name an upload.
        if upload_id.is_empty()
            || upload_id.len() > 64
            || !upload_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(WriteBackError::NoSuchUpload {
                upload_id: upload_id.to_owned(),
            });
        }
        Ok(self.root.join(upload_id))
    }

    /// Starts an upload of `bucket/key`; returns its id.
    pub async fn create(&self, bucket: &str, key: &str) -> Result<String, WriteBackError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let dir = self.root.join(&id);
        let info = serde_json::to_vec(&UploadInfo {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            initiated: Utc::now(),
        })
        .map_err(|err| WriteBackError::io("encoding an upload", std::io::Error::other(err)))?;
        blocking(format!("creating upload {id}"), move || {
            std::fs::create_dir(&dir)?;
            let path = dir.join(INFO);
            std::fs::write(&path, info)?;
            std::fs::File::open(path)?.sync_all()
        })
        .await?;
        Ok(id)
    }

    /// What upload `upload_id` is for; [`NoSuchUpload`](WriteBackError::NoSuchUpload) if it
    /// does not exist.
    pub async fn info(&self, upload_id: &str) -> Result<UploadInfo, WriteBackError> {
        let path = self.dir(upload_id)?.join(INFO);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                WriteBackError::io(
                    format!("reading upload {upload_id}"),
                    std::io::Error::other(err),
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(WriteBackError::NoSuchUpload {
                    upload_id: upload_id.to_owned(),
                })
            }
            Err(err) => Err(WriteBackError::io(
                format!("reading upload {upload_id}"),
                err,
            )),
        }
    }

    /// Stores part `number` of an upload of `bucket/key` (replacing an earlier upload of that
    /// number), checked against `checks` (length, Content-MD5, additional checksum); returns
    /// its ETag (MD5 hex) and verified checksum. A part that fails a check is not kept.
    pub async fn upload_part<St, E>(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        number: i32,
        body: St,
        checks: &BodyChecks,
    ) -> Result<StoredPart, WriteBackError>
    where
        St: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BoxError>,
    {
        if !(1..=MAX_PARTS as i32).contains(&number) {
            return Err(WriteBackError::InvalidPart {
                upload_id: upload_id.to_owned(),
                problem: format!("part number {number} is outside 1..={MAX_PARTS}"),
            });
        }
        let info = self.info(upload_id).await?;
        if info.bucket != bucket || info.key != key {
            return Err(WriteBackError::NoSuchUpload {
                upload_id: upload_id.to_owned(),
            });
        }
        let dir = self.dir(upload_id)?;
        let temp = dir.join(format!(
            ".{number:05}.{}.tmp",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let staged = staging::stage(temp, bucket, key, body, checks).await?;
        let etag = staged.md5_hex();
        let checksum = staged.checksum;
        let name = format!("{number:05}.{etag}");
        let (from, to) = (staged.path, dir.join(&name));
        blocking(
            format!("storing part {number} of upload {upload_id}"),
            move || {
                // Another upload of the same number is replaced.
                let prefix = format!("{number:05}.");
                for entry in std::fs::read_dir(to.parent().unwrap_or(Path::new(".")))? {
                    let entry = entry?;
                    let file = entry.file_name().to_string_lossy().into_owned();
                    if file.starts_with(&prefix) && file != name {
                        std::fs::remove_file(entry.path())?;
                    }
                }
                std::fs::rename(from, &to)
            },
        )
        .await?;
        Ok(StoredPart { etag, checksum })
    }

    /// The parts of an upload, by number.
    pub async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, WriteBackError> {
        self.info(upload_id).await?;
        let dir = self.dir(upload_id)?;
        blocking(
            format!("listing the parts of upload {upload_id}"),
            move || list_parts(&dir),
        )
        .await
    }

    /// Uploads in progress for `bucket` whose keys start with `prefix`.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, UploadInfo)>, WriteBackError> {
        let root = self.root.clone();
        let all = blocking("listing multipart uploads".to_owned(), move || {
            let mut uploads = Vec::new();
            for entry in std::fs::read_dir(root)? {
                let entry = entry?;
                let Ok(bytes) = std::fs::read(entry.path().join(INFO)) else {
                    continue;
                };
                if let Ok(info) = serde_json::from_slice::<UploadInfo>(&bytes) {
                    uploads.push((entry.file_name().to_string_lossy().into_owned(), info));
                }
            }
            Ok(uploads)
        })
        .await?;
        let mut uploads: Vec<_> = all
            .into_iter()
            .filter(|(_, info)| info.bucket == bucket && info.key.starts_with(prefix))
            .collect();
        uploads.sort_by(|a, b| (&a.1.key, &a.1.initiated).cmp(&(&b.1.key, &b.1.initiated)));
        Ok(uploads)
    }

    /// Concatenates the named parts (ascending numbers, ETags as returned by
    /// [`upload_part`](Self::upload_part); every part but the last at least 5 MiB) into
    /// `staging`, fsynced. The upload stays until [`remove`](Self::remove).
    pub async fn assemble(
        &self,
        upload_id: &str,
        parts: &[(i32, String)],
        staging: PathBuf,
    ) -> Result<Assembled, WriteBackError> {
        self.info(upload_id).await?;
        let invalid = |problem: String| WriteBackError::InvalidPart {
            upload_id: upload_id.to_owned(),
            problem,
        };
        if parts.is_empty() {
            return Err(invalid("the completion lists no parts".to_owned()));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(invalid(
                "parts must be listed in ascending order of part number".to_owned(),
            ));
        }
        let stored = self.list_parts(upload_id).await?;
        let dir = self.dir(upload_id)?;
        let mut files = Vec::with_capacity(parts.len());
        let mut md5s = Vec::with_capacity(parts.len());
        for (i, (number, etag)) in parts.iter().enumerate() {
            let etag = crate::upstream::bare_etag(etag).to_ascii_lowercase();
            let Some(part) = stored.iter().find(|p| p.number == *number) else {
                return Err(invalid(format!("part {number} was not uploaded")));
            };
            if part.etag != etag {
                return Err(invalid(format!(
                    "part {number} has ETag {}, not {etag}",
                    part.etag
                )));
            }
            if i + 1 < parts.len() && part.size < MIN_PART_SIZE as u64 {
                return Err(WriteBackError::PartTooSmall {
                    upload_id: upload_id.to_owned(),
                    part: *number,
                    size: part.size,
                    min: MIN_PART_SIZE as u64,
                });
            }
            let mut md5 = [0u8; 16];
            hex::decode_to_slice(&part.etag, &mut md5)
                .map_err(|_| invalid(format!("part {number} has a malformed ETag")))?;
            md5s.push(md5);
            files.push(dir.join(format!("{number:05}.{}", part.etag)));
        }
        let etag = multipart_etag(&md5s);
        let target = staging.clone();
        let size = blocking(format!("assembling upload {upload_id}"), move || {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)?;
            let mut size = 0;
            for file in files {
                let mut part = std::fs::File::open(file)?;
                size += std::io::copy(&mut part, &mut out)?;
            }
            out.sync_all()?;
            Ok(size)
        })
        .await;
        match size {
            Ok(size) => Ok(Assembled {
                path: staging,
                size,
                etag,
            }),
            Err(err) => {
                staging::remove_quietly(staging).await;
                Err(err)
            }
        }
    }

    /// Removes an upload and its parts (abort, or after completion). Removing a missing upload
    /// is [`NoSuchUpload`](WriteBackError::NoSuchUpload).
    pub async fn remove(&self, upload_id: &str) -> Result<(), WriteBackError> {
        self.info(upload_id).await?;
        let dir = self.dir(upload_id)?;
        blocking(format!("removing upload {upload_id}"), move || {
            std::fs::remove_dir_all(dir)
        })
        .await
    }
}

fn list_parts(dir: &Path) -> std::io::Result<Vec<PartInfo>> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((number, etag)) = name.split_once('.') else {
            continue;
        };
        let (Ok(number), true) = (number.parse::<i32>(), etag.len() == 32) else {
            continue;
        };
        let meta = entry.metadata()?;
        parts.push(PartInfo {
            number,
            etag: etag.to_owned(),
            size: meta.len(),
            last_modified: meta.modified().ok().map(DateTime::<Utc>::from),
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}
