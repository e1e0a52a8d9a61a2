//! Multipart uploads the office completed recently, so that a retried
//! CompleteMultipartUpload (a client whose first attempt timed out after the office had
//! stored the object) answers 200 with the same ETag, as S3 does, instead of NoSuchUpload.
//!
//! A small bounded map in memory, not a journal: a retry comes within seconds or minutes of
//! the first attempt, and after a restart (or past the bounds) a retry answers NoSuchUpload,
//! which is what it answered before this existed. Entries live [`KEEP_FOR`] and at most
//! [`CAPACITY`] are kept (the oldest go first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a completed upload is remembered.
pub const KEEP_FOR: Duration = Duration::from_secs(60 * 60);

/// How many completed uploads are remembered at most.
pub const CAPACITY: usize = 4096;

/// (bucket, key, upload id).
type Upload = (String, String, String);

/// Recently completed uploads and the ETags they were answered with.
#[derive(Debug, Default)]
pub struct CompletedUploads {
    inner: Mutex<Inner>,
}

/// Invariant: `order` holds each key of `etags` once, oldest first (uploads are completed
/// once, so insertion times ascend along `order`).
#[derive(Debug, Default)]
struct Inner {
    etags: HashMap<Upload, String>,
    order: VecDeque<(Instant, Upload)>,
}

impl CompletedUploads {
    /// Remembers that `upload_id` of `bucket/key` completed as an object of `etag`.
    pub fn insert(&self, bucket: &str, key: &str, upload_id: &str, etag: &str) {
        self.insert_at(Instant::now(), bucket, key, upload_id, etag);
    }

    /// The ETag `upload_id` of `bucket/key` completed with, if it completed recently.
    pub fn get(&self, bucket: &str, key: &str, upload_id: &str) -> Option<String> {
        self.get_at(Instant::now(), bucket, key, upload_id)
    }

    fn insert_at(&self, now: Instant, bucket: &str, key: &str, upload_id: &str, etag: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.expire(now);
        let upload = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
        if inner
            .etags
            .insert(upload.clone(), etag.to_owned())
            .is_some()
        {
            // Completed twice (two concurrent attempts both stored it): keep one entry.
            inner.order.retain(|(_, u)| *u != upload);
        }
        inner.order.push_back((now, upload));
        while inner.order.len() > CAPACITY {
            inner.pop_oldest();
        }
    }

    fn get_at(&self, now: Instant, bucket: &str, key: &str, upload_id: &str) -> Option<String> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.expire(now);
        inner
            .etags
            .get(&(bucket.to_owned(), key.to_owned(), upload_id.to_owned()))
            .cloned()
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= KEEP_FOR)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, upload)) = self.order.pop_front() {
            self.etags.remove(&upload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_bucket_key_and_upload() {
        let completed = CompletedUploads::default();
        completed.insert("b", "k", "u1", "etag-1");
        assert_eq!(completed.get("b", "k", "u1").as_deref(), Some("etag-1"));
        assert_eq!(completed.get("b", "other", "u1"), None);
        assert_eq!(completed.get("other", "k", "u1"), None);
        assert_eq!(completed.get("b", "k", "u2"), None);
    }

    #[test]
    fn forgets_after_keep_for() {
        let completed = CompletedUploads::default();
        let start = Instant::now();
        completed.insert_at(start, "b", "k", "u", "etag");
        let almost = start + KEEP_FOR - Duration::from_secs(1);
        assert!(completed.get_at(almost, "b", "k", "u").is_some());
        assert_eq!(completed.get_at(start + KEEP_FOR, "b", "k", "u"), None);
        let inner = completed.inner.lock().expect("lock");
        assert!(inner.etags.is_empty() && inner.order.is_empty());
    }

    #[test]
    fn keeps_at_most_capacity_oldest_out_first() {
        let completed = CompletedUploads::default();
        let now = Instant::now();
        for i in 0..=CAPACITY {
            completed.insert_at(now, "b", "k", &i.to_string(), "etag");
        }
        assert_eq!(completed.get_at(now, "b", "k", "0"), None);
        assert!(completed.get_at(now, "b", "k", "1").is_some());
        assert!(completed
            .get_at(now, "b", "k", &CAPACITY.to_string())
            .is_some());
        let inner = completed.inner.lock().expect("lock");
        assert_eq!(inner.etags.len(), CAPACITY);
        assert_eq!(inner.order.len(), CAPACITY);
    }

    #[test]
    fn completing_twice_keeps_one_entry() {
        let completed = CompletedUploads::default();
        completed.insert("b", "k", "u", "first");
        completed.insert("b", "k", "u", "second");
        assert_eq!(completed.get("b", "k", "u").as_deref(), Some("second"));
        let inner = completed.inner.lock().expect("lock");
        assert_eq!(inner.order.len(), 1);
    }
}
