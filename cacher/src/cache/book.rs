//! [`CacheBook`]: the office cache's bookkeeping (sizes, LRU order, pins) as a pure,
//! synchronous structure without I/O, so that its rules can be stated and tested on their own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ObjectKey;

/// Whether an entry of a [`CacheBook`] is being downloaded or is in the content store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Admitted and downloading: its bytes are reserved but it cannot be evicted or read
    /// as a cached object yet.
    Pending,
    /// In the content store: readable and, when unpinned, evictable.
    Ready,
}

/// Why an object cannot be admitted: even after evicting every unpinned ready entry, it would
/// not fit. The numbers are bytes at the time of the refusal.
///
/// The refusal may be for now only: unpinned downloads in progress (pending entries) cannot be
/// evicted, but once they end they are either ready (evictable) or gone.
/// [`fits_once_downloads_end`](Self::fits_once_downloads_end) says whether that would make
/// room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// The size of the object that does not fit.
    pub incoming: u64,
    /// The capacity of the cache.
    pub capacity: u64,
    /// Bytes held by entries (ready and pending).
    pub used: u64,
    /// Bytes held by pinned entries.
    pub pinned: u64,
    /// Bytes that cannot be evicted now: pinned entries and downloads in progress.
    pub unevictable: u64,
}

impl Full {
    /// Whether the object would fit once the downloads in progress have ended (pins staying
    /// as they are): only pinned bytes are unevictable then, so it fits exactly when
    /// `pinned + incoming <= capacity`. True means the refusal is due to unpinned downloads
    /// in progress, and waiting for them can succeed; false means it cannot fit whatever
    /// they do, short of pins being released.
    pub fn fits_once_downloads_end(&self) -> bool {
        self.pinned.saturating_add(self.incoming) <= self.capacity
    }
}

#[derive(Clone, Debug)]
struct Entry {
    size: u64,
    state: EntryState,
    /// The logical clock value of the last insert, completion or touch.
    last_access: u64,
}

/// The office cache's bookkeeping: which objects it holds (or is downloading), their sizes,
/// their order of last access, and who pins them. No I/O: the caller deletes what
/// [`plan_eviction`](Self::plan_eviction) names, then [`remove`](Self::remove)s it.
///
/// # Invariants
///
/// Checked after every operation by the property tests at the end of this file:
///
/// 1. [`used`](Self::used) is the sum of the sizes of all entries, ready and pending.
/// 2. [`pinned`](Self::pinned) is the sum of the sizes of the entries (ready or pending) that
///    at least one holder pins. Pins may name objects that are not entries (pinned before
///    they are cached, or after their eviction failed): they count once the object is
///    inserted, so pinned bytes are always a subset of the entries' bytes (`pinned <= used`).
/// 3. A holder pins an object at most once; an object is pinned while one holder pins it.
/// 4. The LRU index holds exactly the ready entries, ordered by last access; the clock only
///    moves forward, so no two entries share a last access.
/// 5. [`plan_eviction`](Self::plan_eviction) never names a pinned or pending entry; it names
///    ready entries in LRU order (least recently used first), skipping pinned ones, and stops
///    as soon as the low watermark is reached; it names nothing while
///    `used + incoming <= high watermark`.
/// 6. After a successful plan, `used - evicted + incoming <= capacity`. A plan fails with
///    [`Full`] exactly when `incoming > capacity` or when even evicting every unpinned ready
///    entry leaves `used - evictable + incoming > capacity`.
/// 7. A failed plan's [`Full::fits_once_downloads_end`] is true exactly when the same plan
///    succeeds, pins unchanged, once every pending entry has completed (or once the unpinned
///    ones have been removed instead: a failed download frees what an evictable one would).
/// 8. [`evictable_bytes`](Self::evictable_bytes) is the sum of the sizes of the unpinned ready
///    entries. It is kept up to date by every operation, so that admission (which runs under
///    the cache's lock for every missing object) costs no scan of a cache of millions of
///    entries while it stays under the high watermark.
/// 9. [`committed`](Self::committed) is the sum of the sizes (as their keys give them) of every
///    object at least one holder pins, cached or not: what the pins will occupy once all
///    of them are cached. [`admit_pins`](Self::admit_pins) pins a holder's objects only if
///    `committed` stays at or below the capacity, and changes nothing otherwise; it is the
///    one place reservations are admitted, so pins are counted once, here.
#[derive(Clone, Debug)]
pub struct CacheBook {
    capacity: u64,
    high: u64,
    low: u64,
    clock: u64,
    entries: HashMap<ObjectKey, Entry>,
    /// Ready entries by last access.
    lru: BTreeMap<u64, ObjectKey>,
    holders: HashMap<String, BTreeSet<ObjectKey>>,
    /// How many holders pin each object (present only when > 0).
    pin_counts: HashMap<ObjectKey, usize>,
    used: u64,
    pinned: u64,
    /// Bytes of the unpinned ready entries (invariant 8).
    evictable: u64,
    /// Bytes of every pinned object, cached or not (invariant 9).
    committed: u64,
}

/// Why [`CacheBook::admit_pins`] refused a holder's objects: pinning them would commit more
/// bytes than the cache holds. The numbers are bytes at the time of the refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overcommitted {
    /// Bytes of the holder's objects that nobody pins yet.
    pub additional: u64,
    /// Bytes every holder pins already, cached or not.
    pub committed: u64,
    /// The capacity of the cache.
    pub capacity: u64,
}

impl CacheBook {
    /// An empty book for `capacity` bytes. Eviction starts above `high_watermark × capacity`
    /// and goes down to `low_watermark × capacity`; both fractions are clamped to `0..=1` and
    /// the low one to at most the high one.
    pub fn new(capacity: u64, high_watermark: f64, low_watermark: f64) -> Self {
        let high = fraction_of(capacity, high_watermark);
        let low = fraction_of(capacity, low_watermark).min(high);
        Self {
            capacity,
            high,
            low,
            clock: 0,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            holders: HashMap::new(),
            pin_counts: HashMap::new(),
            used: 0,
            pinned: 0,
            evictable: 0,
            committed: 0,
        }
    }

    /// The capacity, in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held by entries, ready and pending.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes held by pinned entries, ready and pending.
    pub fn pinned(&self) -> u64 {
        self.pinned
    }

    /// Bytes of every object at least one holder pins, cached or not (invariant 9).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Bytes of `keys` (each counted once) that no holder pins yet: what
    /// [`admit_pins`](Self::admit_pins) would add to [`committed`](Self::committed).
    pub fn additional(&self, keys: &[ObjectKey]) -> u64 {
        let mut seen = BTreeSet::new();
        keys.iter()
            .filter(|k| !self.pin_counts.contains_key(*k) && seen.insert(*k))
            .map(|k| k.size)
            .sum()
    }

    /// `holder` pins `keys` if every pinned object, cached or not, still fits in the cache
    /// with them (invariant 9); otherwise nothing changes and the refusal says by how much.
    /// Objects pinned already (by anyone) need no more room.
    pub fn admit_pins(&mut self, holder: &str, keys: &[ObjectKey]) -> Result<(), Overcommitted> {
        let additional = self.additional(keys);
        if self.committed.saturating_add(additional) > self.capacity {
            return Err(Overcommitted {
                additional,
                committed: self.committed,
                capacity: self.capacity,
            });
        }
        self.pin(holder, keys);
        Ok(())
    }

    /// Bytes of the unpinned ready entries: what eviction could free now.
    pub fn evictable_bytes(&self) -> u64 {
        self.evictable
    }

    /// How many ready entries the book holds.
    pub fn ready_count(&self) -> usize {
        self.lru.len()
    }

    /// The state of `key`'s entry, if it has one.
    pub fn state(&self, key: &ObjectKey) -> Option<EntryState> {
        self.entries.get(key).map(|e| e.state)
    }

    /// Whether `key` has a ready entry.
    pub fn is_ready(&self, key: &ObjectKey) -> bool {
        self.state(key) == Some(EntryState::Ready)
    }

    /// The ready entry of (`bucket`, `key`, `etag`), whatever its size: for entries produced
    /// in the office whose size is only known once they are built. A scan of the ready
    /// entries.
    pub fn find_ready(&self, bucket: &str, key: &str, etag: &str) -> Option<&ObjectKey> {
        self.lru
            .values()
            .find(|k| k.bucket == bucket && k.key == key && k.etag == etag)
    }

    /// Whether at least one holder pins `key`.
    pub fn is_pinned(&self, key: &ObjectKey) -> bool {
        self.pin_counts.contains_key(key)
    }

    /// Adds a ready entry of `size` bytes as the most recently used one (replacing any entry
    /// of `key`). Used when rebuilding the book; admission of a download goes through
    /// [`plan_eviction`](Self::plan_eviction), [`begin`](Self::begin) and
    /// [`complete`](Self::complete).
    pub fn insert(&mut self, key: ObjectKey, size: u64) {
        self.remove(&key);
        self.add(key, size, EntryState::Ready);
    }

    /// Adds a pending entry of `size` bytes: its bytes count as used, it cannot be evicted.
    /// Returns false (and changes nothing) if `key` already has an entry.
    pub fn begin(&mut self, key: ObjectKey, size: u64) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        self.add(key, size, EntryState::Pending);
        true
    }

    /// Makes `key`'s pending entry ready, as the most recently used one. Returns false if it
    /// has no pending entry.
    pub fn complete(&mut self, key: &ObjectKey) -> bool {
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(key) {
            Some(entry) if entry.state == EntryState::Pending => {
                entry.state = EntryState::Ready;
                entry.last_access = clock;
                if !self.pin_counts.contains_key(key) {
                    self.evictable += entry.size;
                }
                self.lru.insert(clock, key.clone());
                true
            }
            _ => false,
        }
    }

    /// Marks `key` as just used. Returns false if it has no entry.
    pub fn touch(&mut self, key: &ObjectKey) -> bool {
        self.clock += 1;
        let clock = self.clock;
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.state == EntryState::Ready {
            self.lru.remove(&entry.last_access);
            self.lru.insert(clock, key.clone());
        }
        entry.last_access = clock;
        true
    }

    /// Removes `key`'s entry (ready or pending) and returns its size. Pins on `key` stay: the
    /// object is protected again if it comes back.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<u64> {
        let entry = self.entries.remove(key)?;
        let pinned = self.is_pinned(key);
        if entry.state == EntryState::Ready {
            self.lru.remove(&entry.last_access);
            if !pinned {
                self.evictable -= entry.size;
            }
        }
        self.used -= entry.size;
        if pinned {
            self.pinned -= entry.size;
        }
        Some(entry.size)
    }

    /// `holder` pins `keys` (cached or not); pinning twice is the same as once.
    pub fn pin<'a>(&mut self, holder: &str, keys: impl IntoIterator<Item = &'a ObjectKey>) {
        let held = self.holders.entry(holder.to_owned()).or_default();
        for key in keys {
            if !held.insert(key.clone()) {
                continue;
            }
            let count = self.pin_counts.entry(key.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.committed += key.size;
                if let Some(entry) = self.entries.get(key) {
                    self.pinned += entry.size;
                    if entry.state == EntryState::Ready {
                        self.evictable -= entry.size;
                    }
                }
            }
        }
        if held.is_empty() {
            self.holders.remove(holder);
        }
    }

    /// `holder` releases `key` alone; true if it pinned it.
    pub fn unpin(&mut self, holder: &str, key: &ObjectKey) -> bool {
        let Some(held) = self.holders.get_mut(holder) else {
            return false;
        };
        if !held.remove(key) {
            return false;
        }
        if held.is_empty() {
            self.holders.remove(holder);
        }
        if let Some(count) = self.pin_counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.pin_counts.remove(key);
                self.unpinned(key);
            }
        }
        true
    }

    /// `holder` releases every object it pins. Returns them (to pin them again if what they
    /// were released for does not happen).
    pub fn unpin_all(&mut self, holder: &str) -> Vec<ObjectKey> {
        let Some(held) = self.holders.remove(holder) else {
            return Vec::new();
        };
        for key in &held {
            let Some(count) = self.pin_counts.get_mut(key) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.pin_counts.remove(key);
                self.unpinned(key);
            }
        }
        held.into_iter().collect()
    }

    /// Accounts for the last pin on `key` being released.
    fn unpinned(&mut self, key: &ObjectKey) {
        self.committed -= key.size;
        if let Some(entry) = self.entries.get(key) {
            self.pinned -= entry.size;
            if entry.state == EntryState::Ready {
                self.evictable += entry.size;
            }
        }
    }

    /// What to evict before (or after) `incoming` more bytes arrive: nothing while
    /// `used + incoming` stays at or below the high watermark; otherwise unpinned ready entries
    /// in LRU order until `used + incoming` is at or below the low watermark, or as close as
    /// pins allow. Fails with [`Full`] when the object cannot fit even after evicting every
    /// unpinned ready entry; [`Full::fits_once_downloads_end`] tells whether waiting for the
    /// downloads in progress can help. Pure: the caller removes the entries it deletes.
    pub fn plan_eviction(&self, incoming: u64) -> Result<Vec<ObjectKey>, Full> {
        let unevictable = self.used - self.evictable;
        if incoming > self.capacity || unevictable + incoming > self.capacity {
            return Err(Full {
                incoming,
                capacity: self.capacity,
                used: self.used,
                pinned: self.pinned,
                unevictable,
            });
        }
        let mut after = self.used + incoming;
        if after <= self.high {
            return Ok(Vec::new());
        }
        let mut victims = Vec::new();
        for (key, size) in self.evictable() {
            if after <= self.low {
                break;
            }
            victims.push(key.clone());
            after -= size;
        }
        Ok(victims)
    }

    /// Every unpinned ready entry, least recently used first.
    pub fn evictable(&self) -> impl Iterator<Item = (&ObjectKey, u64)> + '_ {
        self.lru.values().filter_map(|key| {
            let entry = &self.entries[key];
            (!self.is_pinned(key)).then_some((key, entry.size))
        })
    }

    fn add(&mut self, key: ObjectKey, size: u64, state: EntryState) {
        self.clock += 1;
        if state == EntryState::Ready {
            self.lru.insert(self.clock, key.clone());
        }
        self.used += size;
        if self.is_pinned(&key) {
            self.pinned += size;
        } else if state == EntryState::Ready {
            self.evictable += size;
        }
        self.entries.insert(
            key,
            Entry {
                size,
                state,
                last_access: self.clock,
            },
        );
    }
}

fn fraction_of(capacity: u64, fraction: f64) -> u64 {
    let fraction = if fraction.is_nan() {
        1.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    // Exact enough: capacities are far below 2^53 bytes in practice; the cast saturates and
    // the result is clamped to the capacity.
    let bytes = (capacity as f64 * fraction) as u64;
    bytes.min(capacity)
}

#[cfg(test)]
mod tests;
