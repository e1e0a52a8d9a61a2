//! Reusable read buffers for the streams that read through a download in progress (complete
//! content files are mapped instead, `stream.rs`).
//!
//! A fresh 1 MiB buffer per chunk costs more than the read it holds: the allocator hands
//! chunks this large back to the kernel, which faults and zeroes new pages for the next one,
//! and `vec![0; n]` zeroes them once more, so every byte was touched three times before it
//! was copied out. Buffers go back to a small pool when the HTTP layer
//! drops the [`Bytes`] it wrote, and the next chunk reuses one whose pages are already
//! mapped. The pool keeps at most [`ChunkPool::new`]'s `keep` idle buffers, so its memory is
//! bounded whatever the number of readers.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Idle buffers of one size, shared by every reader of the cache.
#[derive(Debug)]
pub(super) struct ChunkPool {
    idle: Mutex<Vec<Vec<u8>>>,
    chunk: usize,
    keep: usize,
}

impl ChunkPool {
    /// A pool of `chunk`-byte buffers keeping at most `keep` idle ones.
    pub fn new(chunk: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::with_capacity(keep)),
            chunk,
            keep,
        })
    }

    /// A buffer of `len` bytes (at most the pool's chunk size; more allocates outside the
    /// pool). Its contents are whatever it held last: callers overwrite all of it.
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = (len <= self.chunk)
            .then(|| {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop()
            })
            .flatten();
        let mut buf = reused.unwrap_or_else(|| vec![0; len.max(self.chunk)]);
        buf.truncate(len);
        PooledBuf {
            buf,
            pool: Arc::clone(self),
        }
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.chunk {
            return;
        }
        // Only the tail a short last chunk cut off is zeroed again.
        buf.resize(self.chunk, 0);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep {
            idle.push(buf);
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A buffer taken from a [`ChunkPool`], returned to it when dropped.
#[derive(Debug)]
pub(super) struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<ChunkPool>,
}

impl PooledBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The buffer as `Bytes`; it goes back to the pool once every clone is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkPool;

    #[test]
    fn buffers_come_back_and_are_reused_up_to_the_limit() {
        let pool = ChunkPool::new(16, 2);
        let mut a = pool.take(16);
        a.as_mut_slice().fill(7);
        let a = a.into_bytes();
        let b = pool.take(5).into_bytes();
        let c = pool.take(16).into_bytes();
        assert_eq!((a.len(), b.len(), c.len()), (16, 5, 16));
        let a2 = a.clone();
        drop(a);
        assert_eq!(pool.idle(), 0, "a clone still holds the buffer");
        drop((a2, b, c));
        assert_eq!(pool.idle(), 2, "no more than `keep` idle buffers");

        // A reused buffer has the requested length whatever it held before.
        let short = pool.take(3);
        assert_eq!(short.as_ref().len(), 3);
        let full = pool.take(16);
        assert_eq!(full.as_ref().len(), 16);
    }

    #[test]
    fn oversized_requests_bypass_the_pool() {
        let pool = ChunkPool::new(8, 4);
        let big = pool.take(20);
        assert_eq!(big.as_ref().len(), 20);
        drop(big);
        assert_eq!(pool.idle(), 0);
    }
}
