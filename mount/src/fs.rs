//! The FUSE filesystem: metadata from the [`Tree`], bytes from the [`BlockCache`]. fuser calls
//! these methods on its session thread; a read is answered from a task on the tokio runtime,
//! so that one slow block never holds up `stat`, `readdir` or other readers.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::blocks::{object_id, BlockCache, BLOCK_SIZE, SPAN_BLOCKS};
use crate::remote::{RemoteError, RemoteFile};
use crate::tree::{NodeKind, Tree, ROOT};

/// How long the kernel may keep the root's entries: short, so that a new or expired
/// reservation shows within a second (removals are also invalidated at once).
const ROOT_TTL: Duration = Duration::from_secs(1);
/// Everything below a version directory is immutable.
const VERSION_TTL: Duration = Duration::from_secs(3600);

/// How far ahead of a sequential reader blocks are fetched: the rest of its span and the four
/// spans after it (16 MiB), so that each GET fetches a whole span while the reader drains
/// those before.
const READ_AHEAD_SPANS: u64 = 4;

/// An open file and where its reader is going.
#[derive(Debug)]
struct OpenFile {
    file: Arc<RemoteFile>,
    object: Arc<str>,
    /// Where the last read ended.
    next_offset: u64,
    /// Reads in a row that continued where the previous one ended.
    sequential: u32,
}

pub struct MilepostFs {
    tree: Arc<RwLock<Tree>>,
    blocks: Arc<BlockCache>,
    runtime: tokio::runtime::Handle,
    open: Mutex<HashMap<u64, OpenFile>>,
    next_handle: AtomicU64,
    uid: u32,
    gid: u32,
    /// The time every entry shows (the mount's start; the data has no better one to give).
    mounted_at: SystemTime,
}

impl std::fmt::Debug for MilepostFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilepostFs").finish_non_exhaustive()
    }
}

/// The errno a failed read answers with: a transient fault is retried before it gets here
/// (only a fault that outlasted `--retry-for`), the others say what they are.
fn errno(err: &RemoteError) -> i32 {
    match err {
        RemoteError::Transient(_) => libc::EIO,
        RemoteError::Permanent(reason)
            if reason.starts_with("403") || reason.starts_with("401") =>
        {
            libc::EACCES
        }
        RemoteError::Permanent(reason) if reason.starts_with("404") => libc::ENOENT,
        RemoteError::Permanent(_) => libc::EIO,
    }
}

impl MilepostFs {
    pub fn new(
        tree: Arc<RwLock<Tree>>,
        blocks: Arc<BlockCache>,
        runtime: tokio::runtime::Handle,
        uid: u32,
        gid: u32,
    ) -> MilepostFs {
        MilepostFs {
            tree,
            blocks,
            runtime,
            open: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    fn attr(&self, tree: &Tree, ino: u64) -> Option<(FileAttr, Duration)> {
        let node = tree.node(ino)?;
        let (kind, size, perm, nlink) = match &node.kind {
            NodeKind::Dir(children) => (FileType::Directory, 0, 0o555, 2 + children.len() as u32),
            NodeKind::File(file) => (FileType::RegularFile, file.size, 0o444, 1),
        };
        let ttl = if ino == ROOT || node.parent == ROOT {
            ROOT_TTL
        } else {
            VERSION_TTL
        };
        Some((
            FileAttr {
                ino,
                size,
                blocks: size.div_ceil(512),
                atime: self.mounted_at,
                mtime: self.mounted_at,
                ctime: self.mounted_at,
                crtime: self.mounted_at,
                kind,
                perm,
                nlink,
                uid: self.uid,
                gid: self.gid,
                rdev: 0,
                blksize: BLOCK_SIZE as u32,
                flags: 0,
            },
            ttl,
        ))
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenFile>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for MilepostFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Let the kernel read ahead as far as it offers; our own read-ahead goes further.
        let _ = config
            .set_max_readahead(u32::MAX)
            .or_else(|max| config.set_max_readahead(max));
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let tree = self.tree();
        let found = name
            .to_str()
            .and_then(|name| tree.lookup(parent, name))
            .and_then(|ino| self.attr(&tree, ino));
        match found {
            Some((attr, ttl)) => reply.entry(&ttl, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(&self.tree(), ino) {
            Some((attr, ttl)) => reply.attr(&ttl, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        let file = match self.tree().node(ino).map(|n| &n.kind) {
            Some(NodeKind::File(file)) => Arc::clone(file),
            Some(NodeKind::Dir(_)) => return reply.error(libc::EISDIR),
            None => return reply.error(libc::ENOENT),
        };
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let object = object_id(&file);
        self.handles().insert(
            handle,
            OpenFile {
                file,
                object,
                next_offset: 0,
                sequential: 0,
            },
        );
        // The bytes of an inode never change: the kernel may keep them across opens.
        reply.opened(handle, fuser::consts::FOPEN_KEEP_CACHE);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let (file, object, ahead) = {
            let mut handles = self.handles();
            let Some(open) = handles.get_mut(&fh) else {
                return reply.error(libc::EBADF);
            };
            // Sequential when it starts where the last read ended or in the same block (the
            // kernel's own read-ahead sends a few reads at once, slightly out of order).
            let near = offset == open.next_offset
                || offset / BLOCK_SIZE == open.next_offset / BLOCK_SIZE
                || offset / BLOCK_SIZE == open.next_offset / BLOCK_SIZE + 1;
            open.sequential = if near {
                open.sequential.saturating_add(1)
            } else {
                0
            };
            open.next_offset = offset + u64::from(size);
            let ahead = (open.sequential >= 2).then_some(offset / BLOCK_SIZE + 1);
            (Arc::clone(&open.file), Arc::clone(&open.object), ahead)
        };
        let blocks = Arc::clone(&self.blocks);
        if let Some(next) = ahead {
            // read_ahead spawns its fetches; it needs the runtime's context on this thread.
            let _entered = self.runtime.enter();
            let until = (next / SPAN_BLOCKS + 1 + READ_AHEAD_SPANS) * SPAN_BLOCKS;
            blocks.read_ahead(&file, &object, next, until - next);
        }
        if let Some(bytes) = blocks.read_now(&file, &object, offset, u64::from(size)) {
            return reply.data(&bytes);
        }
        self.runtime.spawn(async move {
            match blocks.read(&file, &object, offset, u64::from(size)).await {
                Ok(bytes) => reply.data(&bytes),
                Err(err) => {
                    tracing::error!(key = %file.key, offset, %err, "read failed");
                    reply.error(errno(&err));
                }
            }
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles().remove(&fh);
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.tree();
        let Some(children) = tree.children(ino) else {
            return reply.error(libc::ENOTDIR);
        };
        let parent = tree.node(ino).map_or(ROOT, |n| n.parent);
        let entries = [
            (ino, FileType::Directory, ".".to_owned()),
            (parent, FileType::Directory, "..".to_owned()),
        ]
        .into_iter()
        .chain(children.into_iter().map(|(name, child)| {
            let kind = match tree.node(child).map(|n| &n.kind) {
                Some(NodeKind::File(_)) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            (child, kind, name)
        }));
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (child, kind, name)) in entries.enumerate().skip(skip) {
            // The offset given is the one to resume after this entry.
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let bytes = self.tree().shown_bytes();
        let blocks = bytes.div_ceil(BLOCK_SIZE);
        reply.statfs(
            blocks,
            0,
            0,
            0,
            0,
            BLOCK_SIZE as u32,
            255,
            BLOCK_SIZE as u32,
        );
    }
}
