//! The mount's directory tree, built from manifests: the root holds one directory per shown
//! dataset version (`name@version`), each holding `<bucket>/<key>`. Inode numbers are
//! indexes into an arena; a version's subtree, once built, never changes (versions are
//! immutable), so `stat` and `readdir` are answered here without asking the server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::remote::{RemoteFile, VersionRef};

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// Longest name a directory entry may have (Linux's NAME_MAX).
const NAME_MAX: usize = 255;

#[derive(Debug)]
pub enum NodeKind {
    Dir(BTreeMap<String, u64>),
    File(Arc<RemoteFile>),
}

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub kind: NodeKind,
}

#[derive(Debug)]
pub struct Tree {
    /// Inode `n` is `nodes[n - 1]`.
    nodes: Vec<Node>,
    /// Each version's directory, built once.
    versions: HashMap<VersionRef, u64>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// A key's path segments, or `None` when it cannot be a path under the mount (empty
/// segments, `.`, `..`, NUL, a name longer than NAME_MAX).
fn segments(key: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = key.split('/').collect();
    let fine = parts.iter().all(|p| {
        !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0') && p.len() <= NAME_MAX
    });
    fine.then_some(parts)
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                parent: ROOT,
                kind: NodeKind::Dir(BTreeMap::new()),
            }],
            versions: HashMap::new(),
        }
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        usize::try_from(ino)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get(i))
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.node(parent)?.kind {
            NodeKind::Dir(children) => children.get(name).copied(),
            NodeKind::File(_) => None,
        }
    }

    /// A directory's entries in name order.
    pub fn children(&self, ino: u64) -> Option<Vec<(String, u64)>> {
        match &self.node(ino)?.kind {
            NodeKind::Dir(children) => {
                Some(children.iter().map(|(n, i)| (n.clone(), *i)).collect())
            }
            NodeKind::File(_) => None,
        }
    }

    pub fn has_version(&self, version: &VersionRef) -> bool {
        self.versions.contains_key(version)
    }

    fn push(&mut self, parent: u64, kind: NodeKind) -> u64 {
        self.nodes.push(Node { parent, kind });
        self.nodes.len() as u64
    }

    /// Builds `version`'s directory from its manifest (not shown until [`Tree::show`] lists
    /// it). Returns the keys left out: those that cannot be paths, and a file whose path an
    /// earlier key already uses as a directory (or the other way round).
    pub fn add_version(&mut self, version: &VersionRef, files: Vec<RemoteFile>) -> Vec<String> {
        if self.versions.contains_key(version) {
            return Vec::new();
        }
        let top = self.push(ROOT, NodeKind::Dir(BTreeMap::new()));
        self.versions.insert(version.clone(), top);
        let mut left_out = Vec::new();
        for file in files {
            let Some(parts) = segments(&file.bucket)
                .filter(|b| b.len() == 1)
                .and_then(|_| segments(&file.key))
            else {
                left_out.push(format!("s3://{}/{}", file.bucket, file.key));
                continue;
            };
            let mut dir = top;
            let mut path = Vec::with_capacity(parts.len() + 1);
            path.push(file.bucket.clone());
            path.extend(parts.iter().map(|p| (*p).to_owned()));
            let (name, dirs) = path
                .split_last()
                .expect("at least the bucket and one segment");
            let mut placed = true;
            for segment in dirs {
                dir = match self.lookup(dir, segment) {
                    Some(child)
                        if matches!(self.nodes[child as usize - 1].kind, NodeKind::Dir(_)) =>
                    {
                        child
                    }
                    Some(_) => {
                        placed = false;
                        break;
                    }
                    None => {
                        let child = self.push(dir, NodeKind::Dir(BTreeMap::new()));
                        self.insert_child(dir, segment, child);
                        child
                    }
                };
            }
            if !placed || self.lookup(dir, name).is_some() {
                left_out.push(format!("s3://{}/{}", file.bucket, file.key));
                continue;
            }
            let child = self.push(dir, NodeKind::File(Arc::new(file)));
            self.insert_child(dir, name, child);
        }
        left_out
    }

    fn insert_child(&mut self, dir: u64, name: &str, child: u64) {
        if let NodeKind::Dir(children) = &mut self.nodes[dir as usize - 1].kind {
            children.insert(name.to_owned(), child);
        }
    }

    /// Makes the root hold exactly `versions` (those already built); returns the names that
    /// were there and are not any more.
    pub fn show(&mut self, versions: &[VersionRef]) -> Vec<String> {
        let wanted: BTreeMap<String, u64> = versions
            .iter()
            .filter_map(|v| self.versions.get(v).map(|ino| (v.dir_name(), *ino)))
            .collect();
        let NodeKind::Dir(children) = &mut self.nodes[0].kind else {
            return Vec::new();
        };
        let removed = children
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        *children = wanted;
        removed
    }

    /// Total bytes of the files the root shows (for `statfs`).
    pub fn shown_bytes(&self) -> u64 {
        let mut total = 0;
        let mut stack: Vec<u64> = self
            .children(ROOT)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        while let Some(ino) = stack.pop() {
            match self.node(ino).map(|n| &n.kind) {
                Some(NodeKind::Dir(children)) => stack.extend(children.values().copied()),
                Some(NodeKind::File(file)) => total += file.size,
                None => {}
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, size: u64) -> RemoteFile {
        RemoteFile {
            bucket: "fleet".into(),
            key: key.into(),
            size,
            etag: format!("etag-{key}"),
        }
    }

    fn v(name: &str, version: i32) -> VersionRef {
        VersionRef {
            dataset: name.into(),
            version,
        }
    }

    fn path(tree: &Tree, names: &[&str]) -> Option<u64> {
        names
            .iter()
            .try_fold(ROOT, |dir, name| tree.lookup(dir, name))
    }

    #[test]
    fn manifests_become_directories_of_bucket_and_key() {
        let mut tree = Tree::new();
        let left = tree.add_version(
            &v("night", 2),
            vec![
                file("drives/d1/log.mcap", 10),
                file("drives/d1/meta.json", 3),
                file("drives/d2/log.mcap", 5),
            ],
        );
        assert!(left.is_empty());
        assert_eq!(tree.children(ROOT), Some(vec![]), "built, not shown yet");
        assert!(tree.show(&[v("night", 2)]).is_empty());
        let d1 = path(&tree, &["night@2", "fleet", "drives", "d1"]).expect("d1");
        let names: Vec<String> = tree
            .children(d1)
            .expect("dir")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["log.mcap", "meta.json"]);
        let log = path(&tree, &["night@2", "fleet", "drives", "d2", "log.mcap"]).expect("log");
        match &tree.node(log).expect("node").kind {
            NodeKind::File(f) => {
                assert_eq!((f.size, f.etag.as_str()), (5, "etag-drives/d2/log.mcap"))
            }
            NodeKind::Dir(_) => panic!("a file"),
        }
        assert_eq!(tree.shown_bytes(), 18);
    }

    #[test]
    fn keys_that_cannot_be_paths_are_left_out() {
        let mut tree = Tree::new();
        let long = "x".repeat(256);
        let left = tree.add_version(
            &v("odd", 1),
            vec![
                file("a/../../etc/passwd", 1),
                file("a//b", 1),
                file("./a", 1),
                file(&long, 1),
                file("dir/file", 1),
                file("dir", 1),
                file("dir/file/below", 1),
                file("fine", 1),
            ],
        );
        assert_eq!(
            left,
            [
                "s3://fleet/a/../../etc/passwd",
                "s3://fleet/a//b",
                "s3://fleet/./a",
                &format!("s3://fleet/{long}"),
                "s3://fleet/dir",
                "s3://fleet/dir/file/below",
            ]
        );
        tree.show(&[v("odd", 1)]);
        assert!(path(&tree, &["odd@1", "fleet", "fine"]).is_some());
        assert!(path(&tree, &["odd@1", "fleet", "dir", "file"]).is_some());
    }

    #[test]
    fn showing_fewer_versions_reports_what_disappeared() {
        let mut tree = Tree::new();
        tree.add_version(&v("a", 1), vec![file("k", 1)]);
        tree.add_version(&v("b", 3), vec![file("k", 1)]);
        tree.show(&[v("a", 1), v("b", 3)]);
        assert_eq!(tree.show(&[v("b", 3)]), ["a@1"]);
        assert_eq!(tree.lookup(ROOT, "a@1"), None);
        assert!(tree.lookup(ROOT, "b@3").is_some());
        // Shown again without rebuilding: the same directory.
        let before = tree.versions[&v("a", 1)];
        tree.show(&[v("a", 1)]);
        assert_eq!(tree.lookup(ROOT, "a@1"), Some(before));
    }
}
