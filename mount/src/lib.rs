//! `milepost mount MOUNTPOINT`: an office's reservations (or one dataset version) as a
//! read-only filesystem on a workstation.
//!
//! - [`tree`]: directories and sizes from the manifests, so `find` and `stat` never ask the
//!   server; the root lists `name@version` for each dataset version shown.
//! - [`blocks`]: bytes in 256 KiB blocks, fetched once through `/data` with ranges, kept in
//!   memory and in a verified, bounded cache on the workstation's disk.
//! - [`fs`]: the FUSE filesystem (fuser), with read-ahead for sequential readers.
//! - [`remote`]: what all of that needs from the office, implemented by the `milepost`
//!   binary over GraphQL and `/data`; transient faults are retried, never an `EIO`.
//!
//! [`run`] mounts, keeps the root in step with the caller's reservations (an expired one
//! disappears), and unmounts when its shutdown future resolves (SIGINT/SIGTERM in the CLI).

pub mod blocks;
pub mod fs;
pub mod remote;
pub mod tree;

use std::future::Future;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

pub use blocks::{BlockCache, BlockSettings, BLOCK_SIZE};
pub use remote::{Remote, RemoteError, RemoteFile, Shown, VersionRef};
use tree::{Tree, ROOT};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub blocks: BlockSettings,
    /// How often the list of shown versions is read again.
    pub refresh: Duration,
    /// Let users other than the one mounting read the files.
    pub allow_other: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}: not a directory to mount on")]
    NotADirectory(PathBuf),
    #[error("cannot read what to mount from the server: {0}")]
    Remote(#[from] RemoteError),
    #[error("cannot open the block cache in {dir}: {source}")]
    Cache {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot mount on {mountpoint} (is /dev/fuse there and fusermount3 installed?): {source}"
    )]
    Mount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
}

/// What [`run`] reports once mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub versions: Vec<String>,
}

/// What the mount did, reported when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountReport {
    pub fetched_bytes: u64,
    pub fetched_blocks: u64,
    pub disk_hits: u64,
    pub memory_hits: u64,
}

/// Shows the versions of `shown` that have not expired; returns what the root lost.
fn show_unexpired(tree: &RwLock<Tree>, shown: &[Shown]) -> Vec<String> {
    let now = SystemTime::now();
    let versions: Vec<VersionRef> = shown
        .iter()
        .filter(|s| s.expires_at.is_none_or(|at| at > now))
        .map(|s| s.version.clone())
        .collect();
    tree.write()
        .unwrap_or_else(|e| e.into_inner())
        .show(&versions)
}

/// Reads the versions to show into `shown` and builds the ones not seen yet; returns what
/// the root lost. When the server cannot be asked, `shown` stays as it was.
async fn refresh(
    remote: &dyn Remote,
    tree: &RwLock<Tree>,
    shown: &mut Vec<Shown>,
) -> Result<Vec<String>, RemoteError> {
    let now = SystemTime::now();
    let fresh: Vec<Shown> = remote
        .shown()
        .await?
        .into_iter()
        .filter(|s| s.expires_at.is_none_or(|at| at > now))
        .collect();
    for s in &fresh {
        let known = tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has_version(&s.version);
        if !known {
            let files = remote.manifest(&s.version).await?;
            let left_out = tree
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .add_version(&s.version, files);
            for key in left_out {
                tracing::warn!(dataset = %s.version.dir_name(), %key, "not shown: the key cannot be a path under the mount");
            }
        }
    }
    *shown = fresh;
    Ok(show_unexpired(tree, shown))
}

/// What the kernel reads ahead of a sequential reader of the mount, in KiB. Its default for a
/// FUSE mount (128 KiB) splits a reader's 1 MiB `read` into eight requests; at 4 MiB the
/// kernel sends requests of up to 1 MiB (the FUSE maximum) and keeps several in flight.
const KERNEL_READ_AHEAD_KB: u32 = 4096;

/// Sets the mount's read-ahead through sysfs, where permitted (root); elsewhere the kernel's
/// default stays, which is slower for large sequential reads but otherwise the same.
fn raise_kernel_read_ahead(mountpoint: &std::path::Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    // The Linux encoding of a device number (glibc's gnu_dev_major and gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(err) = std::fs::write(&path, KERNEL_READ_AHEAD_KB.to_string()) {
        tracing::debug!(%err, %path, "cannot raise the kernel's read-ahead for the mount");
    }
}

/// Mounts at `options.mountpoint`, tells `mounted`, serves until `shutdown` resolves, then
/// unmounts.
pub async fn run(
    options: MountOptions,
    remote: Arc<dyn Remote>,
    shutdown: impl Future<Output = ()>,
    mounted: impl FnOnce(&Mounted),
) -> Result<MountReport, MountError> {
    let meta = std::fs::metadata(&options.mountpoint)
        .ok()
        .filter(|m| m.is_dir())
        .ok_or_else(|| MountError::NotADirectory(options.mountpoint.clone()))?;
    let tree = Arc::new(RwLock::new(Tree::new()));
    let mut shown = Vec::new();
    refresh(remote.as_ref(), &tree, &mut shown).await?;
    let blocks = Arc::new(
        BlockCache::open(Arc::clone(&remote), &options.blocks).map_err(|source| {
            MountError::Cache {
                dir: options.blocks.disk_dir.clone().unwrap_or_default(),
                source,
            }
        })?,
    );
    let fs = fs::MilepostFs::new(
        Arc::clone(&tree),
        Arc::clone(&blocks),
        tokio::runtime::Handle::current(),
        meta.uid(),
        meta.gid(),
    );
    let mut mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("milepost".into()),
        fuser::MountOption::Subtype("milepost".into()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
    ];
    if options.allow_other {
        mount_options.push(fuser::MountOption::AllowOther);
    }
    let mountpoint = options.mountpoint.clone();
    let session =
        tokio::task::spawn_blocking(move || fuser::spawn_mount2(fs, &mountpoint, &mount_options))
            .await
            .map_err(|e| MountError::Mount {
                mountpoint: options.mountpoint.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| MountError::Mount {
                mountpoint: options.mountpoint.clone(),
                source,
            })?;
    let notifier = session.notifier();
    raise_kernel_read_ahead(&options.mountpoint);
    mounted(&Mounted {
        versions: tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .children(ROOT)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
    });

    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(options.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        // While the server cannot be asked, the mount keeps what it shows, except
        // reservations whose expiry has passed.
        let removed = refresh(remote.as_ref(), &tree, &mut shown)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "cannot refresh the reservations; keeping what is shown");
                show_unexpired(&tree, &shown)
            });
        for name in removed {
            tracing::info!(%name, "no longer reserved; removed from the mount");
            // The kernel forgets the entry now rather than after its TTL.
            if let Err(err) = notifier.inval_entry(ROOT, name.as_ref()) {
                tracing::debug!(%err, %name, "cannot invalidate the entry");
            }
        }
    }
    // Dropping the session unmounts (lazily if a file is still open) and ends its thread.
    tokio::task::spawn_blocking(move || drop(session))
        .await
        .map_err(|e| MountError::Mount {
            mountpoint: options.mountpoint.clone(),
            source: std::io::Error::other(e),
        })?;
    // Blocks fetched last are kept for the next mount.
    blocks.settle().await;
    let stats = &blocks.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(MountReport {
        fetched_bytes: load(&stats.fetched_bytes),
        fetched_blocks: load(&stats.fetched_blocks),
        disk_hits: load(&stats.disk_hits),
        memory_hits: load(&stats.memory_hits),
    })
}
