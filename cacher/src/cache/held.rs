//! Bytes the office keeps on the cache disk outside the content store that must count against
//! its capacity: the S3 gateway's multipart parts until their upload completes, is aborted or
//! expires.
//!
//! A hold is an entry of the [`CacheBook`](super::CacheBook) that is never completed (so it
//! is never readable, listed or evicted) and is pinned by [`HELD_HOLDER`], under a key no
//! object can have. The book's invariants hold unchanged: held bytes are used, pinned and
//! unevictable, and an admission refused because of them fails with `Full` at once
//! (waiting for downloads to end cannot free them). They show in `used_bytes` and
//! `pinned_bytes`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::{CacheError, Inner, ObjectKey, OfficeCache};

/// The holder that pins held bytes.
pub const HELD_HOLDER: &str = "held";

/// Not a bucket name S3 allows (they start with a letter or a digit): no object shares a
/// hold's key.
const HELD_BUCKET: &str = ".held";

/// Distinct keys for holds, across every cache of the process.
static NEXT_HOLD: AtomicU64 = AtomicU64::new(1);

/// Bytes held in an [`OfficeCache`] until this is dropped.
pub struct Held {
    inner: Arc<Inner>,
    key: ObjectKey,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("size", &self.key.size)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// The bytes held.
    pub fn size(&self) -> u64 {
        self.key.size
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        {
            let mut state = self.inner.lock();
            state.book.remove(&self.key);
            state.book.unpin(HELD_HOLDER, &self.key);
        }
        // Admissions waiting for room look again.
        self.inner.downloads_ended.send_replace(());
    }
}

fn held_key(size: u64) -> ObjectKey {
    let n = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
    ObjectKey::new(HELD_BUCKET, n.to_string(), "held", size)
}

impl OfficeCache {
    /// Holds `size` bytes about to be written outside the content store (`what` names them
    /// in errors): admitted like an insert, so unpinned entries are evicted to make room,
    /// and when only downloads in progress are in the way this waits for them. Errors:
    /// [`Full`](super::CacheErrorKind::Full) when the bytes cannot fit even after evicting
    /// every unpinned entry.
    pub async fn hold(&self, what: &str, size: u64) -> Result<Held, CacheError> {
        let inner = &self.inner;
        let key = held_key(size);
        let victims = loop {
            let mut wait: watch::Receiver<()> = {
                let mut state = inner.lock();
                match state.book.plan_eviction(size) {
                    Ok(planned) => {
                        let victims = inner.take_victims(&mut state, planned);
                        state.book.pin(HELD_HOLDER, [&key]);
                        state.book.begin(key.clone(), size);
                        break victims;
                    }
                    // Only unpinned downloads in progress are in the way.
                    Err(full) if full.fits_once_downloads_end() => {
                        inner.downloads_ended.subscribe()
                    }
                    Err(full) => {
                        return Err(CacheError::Full {
                            object: what.to_owned(),
                            needed: size,
                            capacity: full.capacity,
                            used: full.used,
                            pinned: full.pinned,
                            unevictable: full.unevictable,
                        })
                    }
                }
            };
            let _ = wait.changed().await;
        };
        let held = Held {
            inner: Arc::clone(inner),
            key,
        };
        // In a task of its own: a caller dropped half-way never leaves the victims' gates
        // behind.
        let deleting = Arc::clone(inner);
        let task = inner
            .tasks
            .spawn(async move { deleting.delete_victims(victims).await });
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "evicting to make room for held bytes failed");
        }
        Ok(held)
    }

    /// Holds `size` bytes that are on the disk already (found at start-up), whatever room is
    /// left: the used bytes may exceed the capacity until entries are released or evicted.
    pub fn hold_existing(&self, size: u64) -> Held {
        let key = held_key(size);
        {
            let mut state = self.inner.lock();
            state.book.pin(HELD_HOLDER, [&key]);
            state.book.begin(key.clone(), size);
        }
        Held {
            inner: Arc::clone(&self.inner),
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheBook;

    /// What a hold does to the book, without the service around it: its bytes are used,
    /// pinned and unevictable; an object that would fit beside nothing else is refused
    /// beside it, for good (waiting for downloads cannot help); releasing it frees the room.
    #[test]
    fn a_hold_is_a_pinned_pending_entry() {
        let mut book = CacheBook::new(100, 0.95, 0.85);
        let object = ObjectKey::new("fleet", "a", "e", 30);
        book.insert(object.clone(), 30);
        let key = held_key(60);
        book.pin(HELD_HOLDER, [&key]);
        assert!(book.begin(key.clone(), 60));
        assert_eq!(
            (book.used(), book.pinned(), book.evictable_bytes()),
            (90, 60, 30)
        );
        // 50 more: evicting the object leaves 60 + 50 > 100.
        let full = book.plan_eviction(50).expect_err("no room beside the hold");
        assert!(!full.fits_once_downloads_end());
        // 40 fits once the object is evicted.
        assert_eq!(book.plan_eviction(40).expect("fits"), vec![object]);
        book.remove(&key);
        book.unpin(HELD_HOLDER, &key);
        assert_eq!(
            (book.used(), book.pinned(), book.evictable_bytes()),
            (30, 0, 30)
        );
        assert!(book.plan_eviction(50).expect("fits").is_empty());
    }
}
