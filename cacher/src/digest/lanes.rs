//! The MD5 lane scheduler: one thread hashing the messages of every download in progress,
//! up to eight at a time through [`x8::compress8`](super::x8::compress8).
//!
//! A download hands its bytes over as they are written ([`LaneStream::update`]) and asks for
//! the digest at the end ([`LaneStream::finish`]). Each round, the thread takes up to
//! [`ROUND_STREAMS`] streams with at least a block waiting and hashes up to [`ROUND_BLOCKS`]
//! blocks of each, eight abreast; a stream with fewer blocks drops out as its blocks end.
//!
//! The AVX2 kernel does 3.0 GB/s with eight lanes full and 0.4 GB/s with one (OpenSSL: 0.66
//! GB/s a core; the AVX-512 kernel about 15 % more; `cargo run --release -p milepost-cacher
//! --example md5x8_speed`), so a round is
//! only worth running full: bytes wait up to [`GATHER`] for other streams, or
//! [`GATHER_ASKED`] once their digest is asked for. The download waiting for its digest
//! holds no GET permit, so the downloads behind it go on meanwhile and fill the next round.
//! For the 1,000 × 1 MiB dataset of BENCHMARKS.md, hashing this way instead of with OpenSSL
//! took materialization from 3.22 s to 2.52 s.
//!
//! Bytes waiting to be hashed are held (as `Bytes`, shared with the write that landed them)
//! up to [`BUDGET`] in all: beyond it, `update` waits, so a hashing thread falling behind
//! slows the downloads rather than growing memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};

use super::x8::{self, Block, State};

/// Blocks of one stream hashed per round at most (64 KiB): rounds short enough that a new
/// stream joins soon, long enough that picking the streams costs nothing next to hashing.
const ROUND_BLOCKS: usize = 1024;
/// Bytes waiting to be hashed, over all streams, at most.
pub const BUDGET: usize = 64 << 20;
/// Streams hashed per round at most (two groups of eight lanes).
const ROUND_STREAMS: usize = 16;
/// How long bytes wait for seven other streams to have some too (a round of one stream costs
/// as much as a round of eight), unless the budget runs low...
const GATHER: Duration = Duration::from_millis(4);
/// ... or this long when a digest is asked for: the download waits for it, but the ones
/// behind it go on meanwhile (the GET permits are not held), so a little latency buys a
/// fuller round.
const GATHER_ASKED: Duration = Duration::from_millis(1);
/// The unit of the budget's semaphore (bytes per permit).
const PERMIT: usize = 1024;

/// The scheduler; one per process ([`global`]).
#[derive(Debug)]
pub struct Lanes {
    queue: Mutex<Queue>,
    work: Condvar,
    budget: Semaphore,
    /// Set if the hashing thread ever stops (a bug): new streams hash inline instead.
    stopped: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    streams: HashMap<u64, Lane>,
    next_id: u64,
}

#[derive(Debug)]
struct Lane {
    state: State,
    /// Bytes handed over so far (the message's length once finished).
    fed: u64,
    /// The start of the next block, when shorter than a block.
    carry: Vec<u8>,
    /// Bytes handed over and not hashed yet, each with the budget permits it holds.
    pending: VecDeque<(Bytes, u32)>,
    pending_len: usize,
    /// Taken by the hashing thread for the current round.
    busy: bool,
    /// Where the digest goes once everything is hashed.
    finish: Option<oneshot::Sender<[u8; 16]>>,
}

impl Lane {
    fn has_block(&self) -> bool {
        self.carry.len() + self.pending_len >= 64
    }

    fn ready_to_finish(&self) -> bool {
        self.finish.is_some() && !self.has_block() && !self.busy
    }
}

/// The scheduler of this process, started on first use; `None` on a CPU without AVX2, or if
/// its thread has stopped (callers hash with [`Md5`](super::Md5) instead).
pub fn global() -> Option<&'static Arc<Lanes>> {
    started().filter(|lanes| !lanes.stopped.load(Ordering::Acquire))
}

fn started() -> Option<&'static Arc<Lanes>> {
    static LANES: OnceLock<Option<Arc<Lanes>>> = OnceLock::new();
    LANES
        .get_or_init(|| {
            if !x8::available() {
                return None;
            }
            let lanes = Arc::new(Lanes {
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
                budget: Semaphore::new(BUDGET / PERMIT),
                stopped: AtomicBool::new(false),
            });
            let worker = Arc::clone(&lanes);
            std::thread::Builder::new()
                .name("milepost-md5x8".into())
                .spawn(move || worker.run())
                .ok()?;
            Some(lanes)
        })
        .as_ref()
}

impl Lanes {
    /// A new message to hash.
    pub fn stream(self: &Arc<Self>) -> LaneStream {
        let mut queue = self.lock();
        let id = queue.next_id;
        queue.next_id += 1;
        queue.streams.insert(
            id,
            Lane {
                state: x8::INITIAL,
                fed: 0,
                carry: Vec::with_capacity(64),
                pending: VecDeque::new(),
                pending_len: 0,
                busy: false,
                finish: None,
            },
        );
        LaneStream {
            lanes: Arc::clone(self),
            id,
            finished: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, permits: u32) {
        self.budget.add_permits(permits as usize);
    }

    /// The hashing thread.
    fn run(&self) {
        let _stop = StopGuard(self);
        let mut queue = self.lock();
        // Since when bytes have been waiting for a round.
        let mut waiting_since: Option<Instant> = None;
        loop {
            let finishing: Vec<u64> = queue
                .streams
                .iter()
                .filter(|(_, lane)| lane.ready_to_finish())
                .map(|(id, _)| *id)
                .collect();
            for id in finishing {
                if let Some(mut lane) = queue.streams.remove(&id) {
                    let (digest, released) = finish(&mut lane);
                    self.release(released);
                    if let Some(done) = lane.finish.take() {
                        let _ = done.send(digest);
                    }
                }
            }
            // Streams whose digest is awaited first, then those with the most waiting.
            let mut ready: Vec<(bool, usize, u64)> = queue
                .streams
                .iter()
                .filter(|(_, lane)| !lane.busy && lane.has_block())
                .map(|(id, lane)| (lane.finish.is_none(), usize::MAX - lane.pending_len, *id))
                .collect();
            if ready.is_empty() {
                waiting_since = None;
                queue = self
                    .work
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let asked = ready.iter().any(|(unasked, _, _)| !unasked);
            let budget_low = self.budget.available_permits() < BUDGET / PERMIT / 2;
            let gather = if asked { GATHER_ASKED } else { GATHER };
            if ready.len() < 8 && !budget_low && since.elapsed() < gather {
                let left = gather.saturating_sub(since.elapsed());
                queue = self
                    .work
                    .wait_timeout(queue, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            waiting_since = None;
            ready.sort_unstable();
            let chosen: Vec<u64> = ready
                .into_iter()
                .take(ROUND_STREAMS)
                .map(|(_, _, id)| id)
                .collect();
            let mut round: Vec<Work> = Vec::with_capacity(chosen.len());
            for id in chosen {
                if let Some(lane) = queue.streams.get_mut(&id) {
                    let (work, released) = take_work(id, lane);
                    self.release(released);
                    round.push(work);
                }
            }
            drop(queue);
            hash_round(&mut round);
            queue = self.lock();
            for work in round {
                // A stream dropped meanwhile is gone from the map: its result goes too.
                if let Some(lane) = queue.streams.get_mut(&work.id) {
                    lane.state = work.state;
                    lane.busy = false;
                }
            }
        }
    }
}

/// Fails every stream if the hashing thread unwinds (a bug), rather than leave their
/// downloads waiting for digests that never come: the senders of their digests are dropped
/// and the budget closed, so `finish` and `update` return errors.
struct StopGuard<'a>(&'a Lanes);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.budget.close();
        self.0.lock().streams.clear();
        tracing::error!("the MD5 lane thread stopped; downloads hash inline from now on");
    }
}

/// One stream's share of a round.
struct Work {
    id: u64,
    state: State,
    /// A block completed from the carry and the next bytes, hashed first.
    first: Option<Block>,
    /// Whole blocks, hashed after `first`.
    body: Bytes,
}

impl Work {
    fn blocks(&self) -> usize {
        usize::from(self.first.is_some()) + self.body.len() / 64
    }

    fn block(&self, j: usize) -> Option<&Block> {
        let j = match (&self.first, j) {
            (Some(first), 0) => return Some(first),
            (Some(_), j) => j - 1,
            (None, j) => j,
        };
        self.body.get(j * 64..(j + 1) * 64)?.try_into().ok()
    }
}

/// Takes up to [`ROUND_BLOCKS`] whole blocks of `lane`'s waiting bytes for a round (the
/// lane has at least one); returns them and the budget permits of the bytes used up.
fn take_work(id: u64, lane: &mut Lane) -> (Work, u32) {
    lane.busy = true;
    let mut released = 0;
    // Complete the carry into a block first.
    let mut first = None;
    if !lane.carry.is_empty() || lane.pending.front().is_some_and(|(b, _)| b.len() < 64) {
        while lane.carry.len() < 64 {
            let Some((front, permits)) = lane.pending.front_mut() else {
                break;
            };
            let need = 64 - lane.carry.len();
            let take = need.min(front.len());
            lane.carry.extend_from_slice(&front.split_to(take));
            lane.pending_len -= take;
            if front.is_empty() {
                released += *permits;
                lane.pending.pop_front();
            }
        }
        if let Ok(block) = <Block>::try_from(&lane.carry[..]) {
            first = Some(block);
            lane.carry.clear();
        }
    }
    let mut body = Bytes::new();
    if let Some((front, permits)) = lane.pending.front_mut() {
        let whole = (front.len() / 64).min(ROUND_BLOCKS - usize::from(first.is_some()));
        body = front.split_to(whole * 64);
        lane.pending_len -= body.len();
        if front.is_empty() {
            released += *permits;
            lane.pending.pop_front();
        }
    }
    let work = Work {
        id,
        state: lane.state,
        first,
        body,
    };
    (work, released)
}

/// Hashes every stream's blocks of a round, eight lanes abreast.
fn hash_round(round: &mut [Work]) {
    for group in round.chunks_mut(8) {
        let longest = group.iter().map(Work::blocks).max().unwrap_or(0);
        let mut states = [x8::INITIAL; 8];
        for (slot, work) in states.iter_mut().zip(group.iter()) {
            *slot = work.state;
        }
        for j in 0..longest {
            let blocks: [Option<&Block>; 8] =
                std::array::from_fn(|lane| group.get(lane).and_then(|w| w.block(j)));
            x8::compress8(&mut states, blocks);
        }
        for (work, state) in group.iter_mut().zip(states) {
            work.state = state;
        }
    }
}

/// The digest of a lane whose bytes are all hashed but less than a block, and the budget
/// permits those held.
fn finish(lane: &mut Lane) -> ([u8; 16], u32) {
    let mut released = 0;
    for (bytes, permits) in lane.pending.drain(..) {
        lane.carry.extend_from_slice(&bytes);
        released += permits;
    }
    lane.pending_len = 0;
    let mut states = [lane.state; 8];
    for block in x8::padding(&lane.carry, lane.fed) {
        x8::compress8(
            &mut states,
            [Some(&block), None, None, None, None, None, None, None],
        );
    }
    (x8::to_digest(&states[0]), released)
}

/// One message being hashed by the [`Lanes`]. Dropping it unfinished drops its bytes.
#[derive(Debug)]
pub struct LaneStream {
    lanes: Arc<Lanes>,
    id: u64,
    finished: bool,
}

impl LaneStream {
    /// Adds `data` to the message, waiting while the bytes waiting over all streams are at
    /// the budget.
    pub async fn update(&self, data: Bytes) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let permits =
            u32::try_from(data.len().div_ceil(PERMIT).min(BUDGET / PERMIT)).unwrap_or(u32::MAX);
        self.lanes
            .budget
            .acquire_many(permits)
            .await
            .map_err(std::io::Error::other)?
            .forget();
        let mut queue = self.lanes.lock();
        let Some(lane) = queue.streams.get_mut(&self.id) else {
            drop(queue);
            self.lanes.release(permits);
            return Err(std::io::Error::other("the MD5 stream is gone"));
        };
        lane.fed += data.len() as u64;
        lane.pending_len += data.len();
        lane.pending.push_back((data, permits));
        let wake = lane.has_block();
        drop(queue);
        if wake {
            self.lanes.work.notify_one();
        }
        Ok(())
    }

    /// The digest of everything added, once the hashing thread has got to it.
    pub async fn finish(mut self) -> std::io::Result<[u8; 16]> {
        let (done, digest) = oneshot::channel();
        {
            let mut queue = self.lanes.lock();
            let Some(lane) = queue.streams.get_mut(&self.id) else {
                return Err(std::io::Error::other("the MD5 stream is gone"));
            };
            lane.finish = Some(done);
        }
        self.finished = true;
        self.lanes.work.notify_one();
        digest
            .await
            .map_err(|_| std::io::Error::other("the MD5 thread stopped"))
    }
}

impl Drop for LaneStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let lane = self.lanes.lock().streams.remove(&self.id);
        if let Some(lane) = lane {
            let permits: u32 = lane.pending.iter().map(|(_, p)| *p).sum();
            self.lanes.release(permits);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use md5::Digest as _;
    use proptest::prelude::*;

    use super::global;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Streams fed concurrently in pieces of any size get `md-5`'s digests.
        #[test]
        fn concurrent_streams_get_their_own_digests(
            messages in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20_000), proptest::collection::vec(1usize..3000, 1..8)),
                1..20,
            )
        ) {
            let Some(lanes) = global() else { return Ok(()) };
            let results = runtime().block_on(async {
                let tasks: Vec<_> = messages
                    .iter()
                    .cloned()
                    .map(|(data, sizes)| {
                        let stream = lanes.stream();
                        tokio::spawn(async move {
                            let data = Bytes::from(data);
                            let mut at = 0;
                            let mut i = 0;
                            while at < data.len() {
                                let len = sizes[i % sizes.len()].min(data.len() - at);
                                stream.update(data.slice(at..at + len)).await.expect("update");
                                at += len;
                                i += 1;
                                if i % 3 == 0 {
                                    tokio::task::yield_now().await;
                                }
                            }
                            stream.finish().await.expect("finish")
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for task in tasks {
                    out.push(task.await.expect("task"));
                }
                out
            });
            for ((data, _), digest) in messages.iter().zip(results) {
                let expected: [u8; 16] = md5::Md5::digest(data).into();
                prop_assert_eq!(digest, expected);
            }
        }
    }

    #[test]
    fn dropped_streams_give_their_budget_back() {
        let Some(lanes) = global() else { return };
        runtime().block_on(async {
            for _ in 0..4 {
                let stream = lanes.stream();
                stream
                    .update(Bytes::from(vec![7u8; super::BUDGET / 2]))
                    .await
                    .expect("update");
                drop(stream);
            }
            // Were the dropped streams' bytes still counted, this would wait for ever.
            let stream = lanes.stream();
            let data = vec![1u8; super::BUDGET / 2 + 5];
            stream
                .update(Bytes::from(data.clone()))
                .await
                .expect("update");
            let expected: [u8; 16] = md5::Md5::digest(&data).into();
            assert_eq!(stream.finish().await.expect("finish"), expected);
        });
    }
}
