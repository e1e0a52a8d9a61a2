//! Multipart uploads received by the office (the S3 gateway's CreateMultipartUpload,
//! UploadPart, ListParts, CompleteMultipartUpload, AbortMultipartUpload).
//!
//! Each upload is a directory `<cache root>/multipart/<upload id>/` holding `upload.json`
//! (bucket, key, when it started, the object's metadata given at creation) and one fsynced
//! file per part, named
//! `<part number, 5 digits>.<md5 hex>`: the name carries the part's ETag, so the parts are
//! listed from the directory alone and survive a restart. Completing concatenates the parts
//! into a staging file, which [`WriteBack::commit_put`](super::WriteBack::commit_put)
//! installs; the directory is removed then, or on abort.
//!
//! # Room and expiry
//!
//! The parts of live uploads count against the office cache's capacity: each stored part
//! holds its bytes in the cache ([`OfficeCache::hold`]), admitted like any insert, so a part
//! that does not fit is refused with the cache's `Full` error (the gateway's
//! `InsufficientStorage`, 507) and downloads and writes cannot take the room the parts
//! occupy. A part sent again gives up its old copy's room first. Assembling hands the
//! upload's room over to the staged object, which the content store admits when it is
//! committed; if the completion fails and the upload stays, its parts hold their room again
//! (see [`Assembled`]). Removing an upload releases its room.
//!
//! Uploads started longer ago than the expiry are removed, as by AbortMultipartUpload, when
//! the store opens and then by [`expire_until`](Multipart::expire_until); opening also
//! removes the debris of a crash (an upload directory without `upload.json`, half-written
//! part files) and holds the room of the parts it keeps.
//!
//! (Over 600 lines: the five multipart operations share one on-disk upload state and its crash-recovery rules; split, the invariants would be spread over files.)

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::staging::{self, blocking, BodyChecks};
use super::{multipart_etag, WriteBackError};
use crate::cache::{Held, OfficeCache};
use crate::checksum::Checksum;
use milepost_store::{BoxError, ObjectMetadata, MAX_PARTS, MIN_PART_SIZE};

/// The office's multipart uploads in progress.
pub struct Multipart {
    root: PathBuf,
    cache: Arc<OfficeCache>,
    /// Uploads started longer ago are removed.
    expiry: Duration,
    holds: Arc<Holds>,
}

impl fmt::Debug for Multipart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multipart")
            .field("root", &self.root)
            .field("expiry", &self.expiry)
            .field("uploads", &self.holds.lock().len())
            .finish_non_exhaustive()
    }
}

/// The cache room held by each live upload, by upload id. An upload has an entry from its
/// creation (or the store's opening) until it is removed; a part's hold is added once the
/// part is stored, and never to an upload without an entry (removed meanwhile).
#[derive(Default)]
struct Holds(Mutex<HashMap<String, UploadHolds>>);

impl Holds {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, UploadHolds>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct UploadHolds {
    parts: BTreeMap<i32, PartHold>,
    /// Assemblies whose [`Assembled`] is still alive: the parts' room is the staged
    /// object's meanwhile.
    completing: usize,
}

struct PartHold {
    size: u64,
    /// `None` while the upload is completing.
    held: Option<Held>,
}

/// What an upload is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadInfo {
    pub bucket: String,
    pub key: String,
    pub initiated: DateTime<Utc>,
    /// The metadata CreateMultipartUpload gave the object (Content-Type, `x-amz-meta-*`...),
    /// which the completed object gets. Absent from `upload.json` when empty (and in files
    /// written before it existed).
    #[serde(default, skip_serializing_if = "ObjectMetadata::is_empty")]
    pub metadata: ObjectMetadata,
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
///
/// While it lives, the upload's parts hold no room in the cache: the staged object takes it
/// when it is committed. Dropping it gives the parts their room back unless the upload was
/// [removed](Multipart::remove) first, so the completion must commit, then remove, then
/// let this go (moving the fields out, as callers do, keeps the rest alive until then).
#[derive(Debug)]
pub struct Assembled {
    pub path: PathBuf,
    pub size: u64,
    /// The S3 multipart ETag of the parts.
    pub etag: String,
    /// The object's metadata, as the upload was created with
    /// ([`Multipart::create_with`]): pass it to
    /// [`WriteBack::commit_put_with`](super::WriteBack::commit_put_with).
    pub metadata: ObjectMetadata,
    /// Gives the parts their room back on drop if the upload is still there.
    pub handover: Handover,
}

/// See [`Assembled`].
pub struct Handover {
    upload_id: String,
    cache: Arc<OfficeCache>,
    holds: Arc<Holds>,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("upload_id", &self.upload_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let mut uploads = self.holds.lock();
        let Some(upload) = uploads.get_mut(&self.upload_id) else {
            // Completed and removed: its room is the object's now.
            return;
        };
        upload.completing = upload.completing.saturating_sub(1);
        if upload.completing > 0 {
            return;
        }
        // The completion failed and the parts stay: they are on the disk, whatever room is
        // left.
        for part in upload.parts.values_mut() {
            if part.held.is_none() {
                part.held = Some(self.cache.hold_existing(part.size));
            }
        }
    }
}

/// What opening found under the root.
#[derive(Default)]
struct Found {
    /// Live uploads and their parts.
    kept: Vec<(String, Vec<PartInfo>)>,
    /// Uploads started before the cut-off, removed: id, info, bytes.
    expired: Vec<(String, UploadInfo, u64)>,
    /// Directories that were no upload (a crash while creating one), removed.
    debris: usize,
}

const INFO: &str = "upload.json";

impl Multipart {
    /// Opens the uploads under `root`: removes those started more than `expiry` ago and the
    /// debris of a crash, and holds the room of the parts of the others in `cache`.
    pub(crate) async fn open(
        root: PathBuf,
        cache: Arc<OfficeCache>,
        expiry: Duration,
    ) -> Result<Self, WriteBackError> {
        let dir = root.clone();
        let cutoff = cutoff(Utc::now(), expiry);
        let found = blocking(
            format!("opening the multipart uploads in {}", dir.display()),
            move || open_dir(&dir, cutoff),
        )
        .await?;
        for (upload_id, info, bytes) in &found.expired {
            log_expired(upload_id, info, *bytes);
        }
        let mut uploads = HashMap::new();
        let mut held = 0;
        for (upload_id, parts) in found.kept {
            let mut upload = UploadHolds::default();
            for part in parts {
                held += part.size;
                upload.parts.insert(
                    part.number,
                    PartHold {
                        size: part.size,
                        held: Some(cache.hold_existing(part.size)),
                    },
                );
            }
            uploads.insert(upload_id, upload);
        }
        if !uploads.is_empty() || !found.expired.is_empty() || found.debris > 0 {
            tracing::info!(
                uploads = uploads.len(),
                held_bytes = held,
                expired = found.expired.len(),
                debris = found.debris,
                "multipart uploads opened"
            );
        }
        Ok(Self {
            root,
            cache,
            expiry,
            holds: Arc::new(Holds(Mutex::new(uploads))),
        })
    }

    /// Removes the uploads started longer ago than the expiry (but not one being completed
    /// right now), as AbortMultipartUpload would, with a log line each; returns how many.
    pub async fn expire(&self) -> Result<usize, WriteBackError> {
        let cutoff = cutoff(Utc::now(), self.expiry);
        let root = self.root.clone();
        let old = blocking("listing multipart uploads".to_owned(), move || {
            Ok(read_uploads(&root)?
                .into_iter()
                .filter(|(_, info)| info.initiated < cutoff)
                .collect::<Vec<_>>())
        })
        .await?;
        let mut removed = 0;
        for (upload_id, info) in old {
            if self
                .holds
                .lock()
                .get(&upload_id)
                .is_some_and(|u| u.completing > 0)
            {
                continue;
            }
            let bytes = self.held_bytes(&upload_id);
            match self.remove(&upload_id).await {
                Ok(()) => {
                    log_expired(&upload_id, &info, bytes);
                    removed += 1;
                }
                // Aborted or completed meanwhile.
                Err(WriteBackError::NoSuchUpload { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(removed)
    }

    /// Runs [`expire`](Self::expire) every quarter of the expiry (at least every second, at
    /// most every hour) until `stop`. Opening did the first pass.
    pub async fn expire_until(&self, stop: CancellationToken) {
        let period = (self.expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(err) = self.expire().await {
                tracing::warn!(error = %err, "cannot expire multipart uploads; trying again at the next check");
            }
        }
    }

    /// The bytes of the stored parts of `upload_id`, as held.
    fn held_bytes(&self, upload_id: &str) -> u64 {
        self.holds
            .lock()
            .get(upload_id)
            .map_or(0, |u| u.parts.values().map(|p| p.size).sum())
    }

    /// Makes the holds of `upload_id` match its part files (after a part upload failed half
    /// way, when what is on the disk is not known for sure).
    async fn recount(&self, upload_id: &str) {
        let Ok(dir) = self.dir(upload_id) else {
            return;
        };
        let on_disk = blocking(
            format!("listing the parts of upload {upload_id}"),
            move || list_parts(&dir),
        )
        .await;
        let mut uploads = self.holds.lock();
        let Some(upload) = uploads.get_mut(upload_id) else {
            return;
        };
        let Ok(on_disk) = on_disk else {
            // Gone with its directory, or unreadable: keep what is held.
            return;
        };
        let mut parts = BTreeMap::new();
        for part in on_disk {
            let hold = match upload.parts.remove(&part.number) {
                Some(hold) if hold.size == part.size => hold,
                _ => PartHold {
                    size: part.size,
                    held: (upload.completing == 0).then(|| self.cache.hold_existing(part.size)),
                },
            };
            parts.insert(part.number, hold);
        }
        upload.parts = parts;
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

    /// Starts an upload of `bucket/key` for an object without metadata; returns its id.
    pub async fn create(&self, bucket: &str, key: &str) -> Result<String, WriteBackError> {
        self.create_with(bucket, key, ObjectMetadata::default())
            .await
    }

    /// Starts an upload of `bucket/key` for an object with `metadata` (as CreateMultipartUpload
    /// takes it), kept with the upload and handed on by [`assemble`](Self::assemble); returns
    /// its id.
    pub async fn create_with(
        &self,
        bucket: &str,
        key: &str,
        metadata: ObjectMetadata,
    ) -> Result<String, WriteBackError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let dir = self.root.join(&id);
        let info = serde_json::to_vec(&UploadInfo {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            initiated: Utc::now(),
            metadata,
        })
        .map_err(|err| WriteBackError::io("encoding an upload", std::io::Error::other(err)))?;
        blocking(format!("creating upload {id}"), move || {
            std::fs::create_dir(&dir)?;
            let path = dir.join(INFO);
            std::fs::write(&path, info)?;
            std::fs::File::open(path)?.sync_all()
        })
        .await?;
        self.holds.lock().insert(id.clone(), UploadHolds::default());
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
        let size = staged.size;
        // A part sent again replaces the old copy: the old copy's room is given up first,
        // so that a part needs no room beside its own earlier copy.
        let replaced = self
            .holds
            .lock()
            .get_mut(upload_id)
            .and_then(|u| u.parts.remove(&number))
            .is_some();
        let what = format!("part {number} of multipart upload {upload_id} of s3://{bucket}/{key}");
        let held = match self.cache.hold(&what, size).await {
            Ok(held) => held,
            Err(err) => {
                staging::remove_quietly(staged.path).await;
                if replaced {
                    // The old copy stays: it holds its room again.
                    self.recount(upload_id).await;
                }
                return Err(WriteBackError::Cache(err));
            }
        };
        let name = format!("{number:05}.{etag}");
        let (from, to) = (staged.path, dir.join(&name));
        let stored = blocking(
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
        .await;
        if let Err(err) = stored {
            drop(held);
            self.recount(upload_id).await;
            return Err(err);
        }
        if let Some(upload) = self.holds.lock().get_mut(upload_id) {
            let held = (upload.completing == 0).then_some(held);
            upload.parts.insert(number, PartHold { size, held });
        }
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
            read_uploads(&root)
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
    /// `staging`, fsynced; [`Assembled::metadata`] is the upload's. The upload stays until
    /// [`remove`](Self::remove); its parts' room goes to the staged object meanwhile (see
    /// [`Assembled`]).
    pub async fn assemble(
        &self,
        upload_id: &str,
        parts: &[(i32, String)],
        staging: PathBuf,
    ) -> Result<Assembled, WriteBackError> {
        let info = self.info(upload_id).await?;
        let invalid = |problem: String| WriteBackError::InvalidPart {
            upload_id: upload_id.to_owned(),
            problem,
        };
        if parts.is_empty() {
            return Err(invalid("the completion lists no parts".to_owned()));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(WriteBackError::PartOrder {
                upload_id: upload_id.to_owned(),
            });
        }
        let stored = self.list_parts(upload_id).await?;
        let dir = self.dir(upload_id)?;
        let mut files = Vec::with_capacity(parts.len());
        let mut md5s = Vec::with_capacity(parts.len());
        for (i, (number, etag)) in parts.iter().enumerate() {
            let etag = milepost_store::bare_etag(etag).to_ascii_lowercase();
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
        let etag = multipart_etag(&md5s)
            .map_err(|err| WriteBackError::io(format!("assembling upload {upload_id}"), err))?;
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
                metadata: info.metadata,
                handover: self.hand_over(upload_id),
            }),
            Err(err) => {
                staging::remove_quietly(staging).await;
                Err(err)
            }
        }
    }

    /// Releases the parts' room of `upload_id` for its staged object, until the returned
    /// handover is dropped.
    fn hand_over(&self, upload_id: &str) -> Handover {
        if let Some(upload) = self.holds.lock().get_mut(upload_id) {
            upload.completing += 1;
            for part in upload.parts.values_mut() {
                part.held = None;
            }
        }
        Handover {
            upload_id: upload_id.to_owned(),
            cache: Arc::clone(&self.cache),
            holds: Arc::clone(&self.holds),
        }
    }

    /// Removes an upload and its parts (abort, or after completion), releasing their room.
    /// Removing a missing upload is [`NoSuchUpload`](WriteBackError::NoSuchUpload).
    pub async fn remove(&self, upload_id: &str) -> Result<(), WriteBackError> {
        self.info(upload_id).await?;
        let dir = self.dir(upload_id)?;
        blocking(format!("removing upload {upload_id}"), move || {
            std::fs::remove_dir_all(dir)
        })
        .await?;
        self.holds.lock().remove(upload_id);
        Ok(())
    }
}

/// Uploads started before this are expired.
fn cutoff(now: DateTime<Utc>, expiry: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(expiry)
        .ok()
        .and_then(|expiry| now.checked_sub_signed(expiry))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn log_expired(upload_id: &str, info: &UploadInfo, bytes: u64) {
    tracing::info!(
        upload_id,
        bucket = %info.bucket,
        key = %info.key,
        initiated = %info.initiated,
        bytes,
        "removed a multipart upload older than the expiry (server.s3_multipart_expiry)"
    );
}

/// Every upload under `root` whose `upload.json` is readable.
fn read_uploads(root: &Path) -> std::io::Result<Vec<(String, UploadInfo)>> {
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
}

/// Creates `root` if needed; removes the uploads started before `cutoff`, directories without
/// a readable `upload.json` (a crash while creating an upload: its id was never given out)
/// and half-written part files (a crash while storing a part: never acknowledged); lists the
/// parts of the rest. Nothing else runs on the directory while the store opens.
fn open_dir(root: &Path, cutoff: DateTime<Utc>) -> std::io::Result<Found> {
    std::fs::create_dir_all(root)?;
    let mut found = Found::default();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let upload_id = entry.file_name().to_string_lossy().into_owned();
        let info = std::fs::read(dir.join(INFO))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<UploadInfo>(&bytes).ok());
        let Some(info) = info else {
            std::fs::remove_dir_all(&dir)?;
            found.debris += 1;
            continue;
        };
        for part in std::fs::read_dir(&dir)? {
            let part = part?;
            if part.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(part.path())?;
                found.debris += 1;
            }
        }
        let parts = list_parts(&dir)?;
        if info.initiated < cutoff {
            let bytes = parts.iter().map(|p| p.size).sum();
            std::fs::remove_dir_all(&dir)?;
            found.expired.push((upload_id, info, bytes));
        } else {
            found.kept.push((upload_id, parts));
        }
    }
    Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(root: &Path, id: &str, initiated: DateTime<Utc>, files: &[(&str, usize)]) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).expect("upload dir");
        let info = UploadInfo {
            bucket: "fleet".to_owned(),
            key: format!("k/{id}"),
            initiated,
            metadata: ObjectMetadata::default(),
        };
        std::fs::write(dir.join(INFO), serde_json::to_vec(&info).expect("json")).expect("info");
        for (name, len) in files {
            std::fs::write(dir.join(name), vec![7u8; *len]).expect("part");
        }
    }

    /// Opening keeps live uploads with their parts, removes those started before the cut-off
    /// (counting their bytes) and the debris of a crash: a directory without `upload.json`
    /// and half-written part files.
    #[test]
    fn opening_removes_expired_uploads_and_crash_debris() {
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        let now = Utc::now();
        let md5 = "0123456789abcdef0123456789abcdef";
        let part = |n: i32| format!("{n:05}.{md5}");
        upload(
            root,
            "aa",
            now - chrono::TimeDelta::days(8),
            &[(&part(1), 10), (&part(2), 5)],
        );
        upload(
            root,
            "bb",
            now - chrono::TimeDelta::days(6),
            &[(&part(1), 3), (".00002.0011223344556677.tmp", 9)],
        );
        std::fs::create_dir(root.join("cc")).expect("a crashed create");

        let found = open_dir(root, cutoff(now, Duration::from_secs(7 * 86_400))).expect("open");
        assert_eq!(found.expired.len(), 1);
        let (id, info, bytes) = &found.expired[0];
        assert_eq!((id.as_str(), info.key.as_str(), *bytes), ("aa", "k/aa", 15));
        assert_eq!(found.kept.len(), 1);
        let (id, parts) = &found.kept[0];
        assert_eq!(id, "bb");
        let parts: Vec<_> = parts.iter().map(|p| (p.number, p.size)).collect();
        assert_eq!(parts, vec![(1, 3)]);
        assert_eq!(
            found.debris, 2,
            "the directory without upload.json and the .tmp file"
        );
        let mut left: Vec<_> = std::fs::read_dir(root)
            .expect("root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["bb"]);
        assert_eq!(std::fs::read_dir(root.join("bb")).expect("bb").count(), 2);
    }

    #[test]
    fn a_huge_expiry_expires_nothing() {
        let now = Utc::now();
        assert_eq!(cutoff(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            cutoff(now, Duration::from_secs(60)),
            now - chrono::TimeDelta::seconds(60)
        );
    }
}
