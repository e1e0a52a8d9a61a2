//! The default content store: read-only files `objects/<xx>/<sha256>` under the cache root.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{ContentStore, InstallKind, Opened};
use crate::cache::durability::Syncer;
use crate::cache::flight::{blocking, remove_quietly};
use crate::cache::layout::Layout;
use crate::cache::{CacheError, ObjectKey};

/// Content files on the node's disk; see the [module documentation](super).
#[derive(Debug)]
pub(in crate::cache) struct DiskContent {
    root: PathBuf,
    /// Fsyncs installed downloads behind them ([`Durability::Deferred`](crate::cache::Durability)); `None`: each is
    /// fsynced before its install.
    syncer: Option<Arc<Syncer>>,
}

impl DiskContent {
    pub fn new(root: PathBuf, syncer: Option<Arc<Syncer>>) -> Self {
        Self { root, syncer }
    }

    fn path(&self, object: &ObjectKey) -> PathBuf {
        self.root.join(Layout::content_relative(object))
    }
}

#[async_trait::async_trait]
impl ContentStore for DiskContent {
    fn describe(&self) -> String {
        format!("{}/objects", self.root.display())
    }

    fn local_path(&self, object: &ObjectKey) -> Option<PathBuf> {
        Some(self.path(object))
    }

    fn flushes_behind(&self) -> bool {
        // Immediate durability fsyncs before the install, deferred right behind it: either
        // way the bytes go to disk now, and flushed as they land they do not all wait for
        // one `fsync` at the end.
        true
    }

    fn follows_downloads(&self) -> bool {
        // A rename of the staging file: nothing to overlap.
        false
    }

    async fn install_stream(
        &self,
        object: &ObjectKey,
        _body: futures::stream::BoxStream<'static, Result<Bytes, CacheError>>,
    ) -> Result<(), CacheError> {
        Err(CacheError::io(
            format!("installing {object}"),
            std::io::Error::other("the disk content store installs staging files, not streams"),
        ))
    }

    async fn install(
        &self,
        object: &ObjectKey,
        file: &Arc<File>,
        staging: &Path,
        kind: InstallKind,
    ) -> Result<(), CacheError> {
        let sync_first = match (&self.syncer, kind) {
            (Some(syncer), InstallKind::Download) => {
                !syncer.installing(object, Arc::clone(file)).await?
            }
            _ => true,
        };
        let durable_name = kind == InstallKind::Upload;
        let file = Arc::clone(file);
        let (staging, content) = (staging.to_owned(), self.path(object));
        blocking(
            format!("installing {object} in the content store"),
            move || {
                if sync_first {
                    file.sync_all()?;
                }
                // Views are hard links to this file: read-only, so writing through a view
                // cannot change the bytes every other reader of this version sees.
                let mut permissions = file.metadata()?.permissions();
                permissions.set_readonly(true);
                std::fs::set_permissions(&staging, permissions)?;
                // A download's rename is not made durable on its own (no directory fsync,
                // which costs a journal commit per object): the bytes are, and a rename lost
                // to a power cut leaves the file in staging, removed at start-up, while
                // reconciliation drops the entry whose content file is missing. A miss, never
                // wrong bytes. An office upload has no other copy: its name is made durable
                // too.
                let parent = content.parent().unwrap_or(Path::new("."));
                match std::fs::rename(&staging, &content) {
                    // The fan-out directories are made at start-up; one removed since comes
                    // back.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(parent)?;
                        std::fs::rename(&staging, &content)?;
                    }
                    other => other?,
                }
                if durable_name {
                    File::open(parent)?.sync_all()?;
                }
                Ok(())
            },
        )
        .await
    }

    async fn open(
        &self,
        object: &ObjectKey,
        _start: u64,
        _end_exclusive: u64,
    ) -> Result<Opened, CacheError> {
        let path = self.path(object);
        match tokio::task::spawn_blocking(move || File::open(path)).await {
            Ok(Ok(file)) => Ok(Opened::File(Arc::new(file))),
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(CacheError::NotCached {
                    object: object.to_string(),
                })
            }
            Ok(Err(err)) => Err(CacheError::io(
                format!("opening the content file of {object}"),
                err,
            )),
            Err(join) => Err(CacheError::io(
                format!("opening the content file of {object}"),
                std::io::Error::other(join),
            )),
        }
    }

    async fn read_at(
        &self,
        object: &ObjectKey,
        start: u64,
        len: usize,
    ) -> Result<Option<Bytes>, CacheError> {
        let path = self.path(object);
        blocking(format!("reading the cached bytes of {object}"), move || {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            };
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, start)?;
            Ok(Some(Bytes::from(buf)))
        })
        .await
    }

    async fn make_durable(&self, object: &ObjectKey) -> Result<(), CacheError> {
        // Perhaps a download whose file and name are not on disk yet (deferred durability).
        let content = self.path(object);
        blocking(format!("making {object} durable"), move || {
            File::open(&content)?.sync_all()?;
            let parent = content.parent().unwrap_or(Path::new("."));
            File::open(parent)?.sync_all()
        })
        .await
    }

    async fn alias(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), CacheError> {
        // A hard link: one file on disk under both names.
        let (from, to_path) = (self.path(from), self.path(to));
        blocking(format!("linking the cache entry of {to}"), move || {
            if let Some(dir) = to_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            match std::fs::hard_link(from, to_path) {
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn same_content(&self, a: &ObjectKey, b: &ObjectKey) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (
            tokio::fs::metadata(self.path(a)).await,
            tokio::fs::metadata(self.path(b)).await,
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    async fn remove(&self, object: &ObjectKey) {
        remove_quietly(self.path(object)).await;
    }

    async fn shutdown(&self) {
        if let Some(syncer) = &self.syncer {
            syncer.finish().await;
        }
    }
}
