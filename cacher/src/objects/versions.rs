//! Upstream's answers about which version of an object is current, reused for a short window.
//!
//! An object outside the catalog has no row naming its version, so resolving it asks S3 (a
//! HEAD). A workstation mount's random reads, a viewer's ranged reads and an S3 client's
//! ranged GETs ask for the same object many times a second, and each HEAD is a round trip
//! to the cloud (and, here on loopback, about a third of the office's CPU per ranged read).
//! An answer therefore stands for `window` (`upstream.version_ttl`): a version changed in S3
//! behind the office's back is served at most that long after the change, always as itself
//! (its own ETag and bytes; cache entries are keyed by ETag), as the catalog's rows are
//! between syncs.
//!
//! The office's own writes never wait for the window: [`WriteBack`] marks every key it
//! installs a version of, and an answer remembered before the latest mark of its key (its
//! stripe of keys) is not used.
//!
//! [`WriteBack`]: crate::writeback::WriteBack

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Resolved;

/// Answers kept at most; beyond, expired ones are dropped first, then all.
const MOST_REMEMBERED: usize = 65_536;

/// An upstream answer and when it was asked for.
#[derive(Debug)]
struct Remembered {
    resolved: Resolved,
    asked_at: Instant,
    /// The key's write mark when the HEAD was sent.
    mark: u64,
}

/// Recent upstream answers by (bucket, key); see the module documentation.
#[derive(Debug)]
pub(super) struct KnownVersions {
    window: Duration,
    known: Mutex<HashMap<(String, String), Remembered>>,
}

impl KnownVersions {
    /// Answers stand for `window`; a zero window asks upstream on every read.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            known: Mutex::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Remembered>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version upstream named for `bucket/key` within the window, if no office write of
    /// the key was marked since (`mark` is the key's mark now).
    pub fn get(&self, bucket: &str, key: &str, mark: u64) -> Option<Resolved> {
        if self.window.is_zero() {
            return None;
        }
        let known = self.known();
        let remembered = known.get(&(bucket.to_owned(), key.to_owned()))?;
        (remembered.mark == mark && remembered.asked_at.elapsed() < self.window)
            .then(|| remembered.resolved.clone())
    }

    /// Remembers upstream's answer to a HEAD sent at `asked_at`, when the key's mark was
    /// `mark`.
    pub fn remember(&self, resolved: &Resolved, asked_at: Instant, mark: u64) {
        if self.window.is_zero() {
            return;
        }
        let mut known = self.known();
        if known.len() >= MOST_REMEMBERED {
            known.retain(|_, r| r.asked_at.elapsed() < self.window);
            if known.len() >= MOST_REMEMBERED {
                known.clear();
            }
        }
        let id = (resolved.object.bucket.clone(), resolved.object.key.clone());
        match known.get(&id) {
            // A slower HEAD sent earlier does not replace a newer answer.
            Some(newer) if newer.asked_at > asked_at => {}
            _ => {
                known.insert(
                    id,
                    Remembered {
                        resolved: resolved.clone(),
                        asked_at,
                        mark,
                    },
                );
            }
        }
    }

    /// Forgets `bucket/key`: reading the version it names failed (S3 may have a new one).
    pub fn forget(&self, bucket: &str, key: &str) {
        self.known().remove(&(bucket.to_owned(), key.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectKey;
    use milepost_store::ObjectMetadata;

    fn resolved(etag: &str) -> Resolved {
        Resolved {
            object: ObjectKey::new("b", "k", etag, 10),
            last_modified: None,
            metadata: ObjectMetadata::default(),
        }
    }

    #[test]
    fn an_answer_stands_for_its_window_unless_the_key_was_written() {
        let known = KnownVersions::new(Duration::from_secs(60));
        assert_eq!(known.get("b", "k", 0), None);
        known.remember(&resolved("e1"), Instant::now(), 3);
        assert_eq!(known.get("b", "k", 3), Some(resolved("e1")));
        // The office wrote the key since: ask again.
        assert_eq!(known.get("b", "k", 4), None);
        known.forget("b", "k");
        assert_eq!(known.get("b", "k", 3), None);
    }

    #[test]
    fn an_older_answer_does_not_replace_a_newer_one_and_windows_end() {
        let known = KnownVersions::new(Duration::from_millis(50));
        let earlier = Instant::now();
        known.remember(&resolved("new"), Instant::now(), 0);
        known.remember(&resolved("old"), earlier, 0);
        assert_eq!(known.get("b", "k", 0), Some(resolved("new")));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(known.get("b", "k", 0), None);

        let never = KnownVersions::new(Duration::ZERO);
        never.remember(&resolved("e"), Instant::now(), 0);
        assert_eq!(never.get("b", "k", 0), None);
    }
}
