//! What changed between two versions of a dataset: members added, removed and changed, with
//! their bytes.
//!
//! A member is identified by where it appears in a view: its bucket and its view key (the
//! object's key, or a trimmed log's file name). The same identity with another ETag, size or
//! trim window is a change. Bytes are what the member weighs in the office (a trimmed log's
//! planned size), so the figures say what a reservation of the new version may have to
//! fetch beside what the old one already brought.

use std::collections::BTreeMap;

use super::ManifestEntry;

/// A member whose identity is in both versions with different contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedMember {
    /// As the older version froze it.
    pub from: ManifestEntry,
    /// As the newer version froze it.
    pub to: ManifestEntry,
}

/// The difference between two versions' members, each list in (bucket, view key) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetDiff {
    /// In the newer version only.
    pub added: Vec<ManifestEntry>,
    /// In the older version only.
    pub removed: Vec<ManifestEntry>,
    /// In both, with another ETag, size or trim.
    pub changed: Vec<ChangedMember>,
    /// In both, identical.
    pub unchanged_count: u64,
    /// Their bytes.
    pub unchanged_bytes: u64,
}

impl DatasetDiff {
    /// Bytes of the added members.
    pub fn added_bytes(&self) -> u64 {
        self.added.iter().map(ManifestEntry::planned_bytes).sum()
    }

    /// Bytes of the removed members.
    pub fn removed_bytes(&self) -> u64 {
        self.removed.iter().map(ManifestEntry::planned_bytes).sum()
    }

    /// Bytes of the changed members, as the newer version has them.
    pub fn changed_bytes(&self) -> u64 {
        self.changed.iter().map(|c| c.to.planned_bytes()).sum()
    }
}

/// The difference from the members `from` to the members `to`.
pub fn diff(from: &[ManifestEntry], to: &[ManifestEntry]) -> DatasetDiff {
    let identity = |e: &ManifestEntry| (e.bucket.clone(), e.view_key().to_owned());
    let mut older: BTreeMap<(String, String), &ManifestEntry> =
        from.iter().map(|e| (identity(e), e)).collect();
    let mut out = DatasetDiff::default();
    let mut newer: Vec<(&ManifestEntry, (String, String))> =
        to.iter().map(|e| (e, identity(e))).collect();
    newer.sort_by(|a, b| a.1.cmp(&b.1));
    for (entry, id) in newer {
        match older.remove(&id) {
            None => out.added.push(entry.clone()),
            Some(old) if old == entry => {
                out.unchanged_count += 1;
                out.unchanged_bytes += entry.planned_bytes();
            }
            Some(old) => out.changed.push(ChangedMember {
                from: old.clone(),
                to: entry.clone(),
            }),
        }
    }
    out.removed = older.into_values().cloned().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64, etag: &str) -> ManifestEntry {
        ManifestEntry {
            bucket: "fleet".into(),
            key: key.into(),
            size,
            etag: etag.into(),
            trim: None,
        }
    }

    #[test]
    fn added_removed_changed_and_unchanged() {
        let v1 = vec![
            entry("a", 1, "e1"),
            entry("b", 2, "e2"),
            entry("c", 3, "e3"),
            entry("d", 4, "e4"),
        ];
        let v2 = vec![
            entry("e", 50, "e5"),
            entry("a", 1, "e1"),
            entry("c", 30, "e3b"),
            entry("d", 4, "e4"),
            entry("f", 60, "e6"),
        ];
        let d = diff(&v1, &v2);
        assert_eq!(d.added, vec![entry("e", 50, "e5"), entry("f", 60, "e6")]);
        assert_eq!(d.removed, vec![entry("b", 2, "e2")]);
        assert_eq!(
            d.changed,
            vec![ChangedMember {
                from: entry("c", 3, "e3"),
                to: entry("c", 30, "e3b"),
            }]
        );
        assert_eq!((d.unchanged_count, d.unchanged_bytes), (2, 5));
        assert_eq!(
            (d.added_bytes(), d.removed_bytes(), d.changed_bytes()),
            (110, 2, 30)
        );
        // Backwards, everything swaps.
        let back = diff(&v2, &v1);
        assert_eq!(back.added, d.removed);
        assert_eq!(back.removed, d.added);
        assert_eq!(back.changed.len(), 1);
        assert_eq!(diff(&v1, &v1).unchanged_count, 4);
    }
}
