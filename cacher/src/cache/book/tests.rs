//! Unit and property tests of [`CacheBook`]: random operation sequences checked against a
//! naive model (vectors scanned on every question) and against the written invariants.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::{CacheBook, EntryState, Full};
use crate::cache::ObjectKey;

/// The sizes of the keys the tests use: key `i` has size `SIZES[i]`.
const SIZES: [u64; 8] = [1, 3, 5, 10, 20, 40, 7, 0];
const HOLDERS: [&str; 3] = ["r-1", "r-2", "r-3"];

fn key(i: usize) -> ObjectKey {
    ObjectKey {
        bucket: "fleet".into(),
        key: format!("k{i}"),
        etag: format!("e{i}"),
        size: SIZES[i],
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(usize),
    /// Plans eviction for the key, removes the victims and begins it, as admission does.
    Admit(usize),
    Complete(usize),
    Touch(usize),
    Remove(usize),
    Pin(usize, Vec<usize>),
    /// Pins the keys for the holder only if every pin, cached or not, still fits.
    AdmitPins(usize, Vec<usize>),
    UnpinAll(usize),
    /// One holder releases one key.
    Unpin(usize, usize),
    /// Plans eviction with nothing incoming and removes the victims, as after an insert.
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..SIZES.len();
    let h = 0..HOLDERS.len();
    prop_oneof![
        1 => k.clone().prop_map(Op::Insert),
        3 => k.clone().prop_map(Op::Admit),
        2 => k.clone().prop_map(Op::Complete),
        1 => k.clone().prop_map(Op::Touch),
        1 => k.clone().prop_map(Op::Remove),
        1 => (h.clone(), prop::collection::vec(k.clone(), 0..4)).prop_map(|(h, ks)| Op::Pin(h, ks)),
        1 => (h.clone(), prop::collection::vec(k.clone(), 0..5)).prop_map(|(h, ks)| Op::AdmitPins(h, ks)),
        1 => h.clone().prop_map(Op::UnpinAll),
        1 => (h, k).prop_map(|(h, k)| Op::Unpin(h, k)),
        1 => Just(Op::Evict),
    ]
}

/// The naive model: a list of entries and a set of (holder, key) pins.
#[derive(Debug, Default)]
struct Model {
    capacity: u64,
    high: u64,
    low: u64,
    clock: u64,
    /// (key index, state, last access)
    entries: Vec<(usize, EntryState, u64)>,
    pins: BTreeSet<(usize, usize)>,
}

impl Model {
    fn find(&self, k: usize) -> Option<usize> {
        self.entries.iter().position(|(i, _, _)| *i == k)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn pinned_key(&self, k: usize) -> bool {
        self.pins.iter().any(|(_, i)| *i == k)
    }

    /// Bytes of every pinned key, cached or not, each once.
    fn committed(&self) -> u64 {
        let keys: BTreeSet<usize> = self.pins.iter().map(|(_, k)| *k).collect();
        keys.iter().map(|k| SIZES[*k]).sum()
    }

    fn used(&self) -> u64 {
        self.entries.iter().map(|(i, _, _)| SIZES[*i]).sum()
    }

    fn pinned(&self) -> u64 {
        self.entries
            .iter()
            .filter(|(i, _, _)| self.pinned_key(*i))
            .map(|(i, _, _)| SIZES[*i])
            .sum()
    }

    /// Unpinned ready entries, least recently used first.
    fn evictable(&self) -> Vec<usize> {
        let mut ready: Vec<_> = self
            .entries
            .iter()
            .filter(|(i, s, _)| *s == EntryState::Ready && !self.pinned_key(*i))
            .map(|(i, _, last)| (*last, *i))
            .collect();
        ready.sort_unstable();
        ready.into_iter().map(|(_, i)| i).collect()
    }

    fn plan(&self, incoming: u64) -> Option<Vec<usize>> {
        let evictable = self.evictable();
        let freeable: u64 = evictable.iter().map(|i| SIZES[*i]).sum();
        if incoming > self.capacity || self.used() - freeable + incoming > self.capacity {
            return None;
        }
        let mut after = self.used() + incoming;
        let mut victims = Vec::new();
        if after > self.high {
            for i in evictable {
                if after <= self.low {
                    break;
                }
                after -= SIZES[i];
                victims.push(i);
            }
        }
        Some(victims)
    }

    fn remove(&mut self, k: usize) {
        if let Some(pos) = self.find(k) {
            self.entries.remove(pos);
        }
    }
}

fn indexes(keys: &[ObjectKey]) -> Vec<usize> {
    keys.iter()
        .map(|k| (0..SIZES.len()).find(|i| key(*i) == *k).expect("known key"))
        .collect()
}

fn apply(book: &mut CacheBook, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Insert(k) => {
            book.insert(key(*k), SIZES[*k]);
            model.remove(*k);
            let now = model.tick();
            model.entries.push((*k, EntryState::Ready, now));
        }
        Op::Admit(k) => {
            if model.find(*k).is_some() {
                return Ok(());
            }
            let plan = book.plan_eviction(SIZES[*k]);
            match (plan, model.plan(SIZES[*k])) {
                (Ok(victims), Some(expected)) => {
                    prop_assert_eq!(indexes(&victims), expected.clone());
                    let freed: u64 = expected.iter().map(|i| SIZES[*i]).sum();
                    prop_assert!(model.used() - freed + SIZES[*k] <= model.capacity);
                    for victim in &victims {
                        prop_assert!(book.remove(victim).is_some());
                    }
                    for i in expected {
                        model.remove(i);
                    }
                    prop_assert!(book.begin(key(*k), SIZES[*k]));
                    let now = model.tick();
                    model.entries.push((*k, EntryState::Pending, now));
                }
                (Err(full), None) => {
                    prop_assert_eq!(full.incoming, SIZES[*k]);
                    prop_assert_eq!(full.used, model.used());
                    prop_assert_eq!(full.pinned, model.pinned());
                    check_waiting(book, model, &full)?;
                }
                (got, want) => prop_assert!(false, "plan {got:?}, model {want:?}"),
            }
        }
        Op::Complete(k) => {
            let now = model.tick();
            let expected = match model.find(*k) {
                Some(pos) if model.entries[pos].1 == EntryState::Pending => {
                    model.entries[pos] = (*k, EntryState::Ready, now);
                    true
                }
                _ => false,
            };
            prop_assert_eq!(book.complete(&key(*k)), expected);
        }
        Op::Touch(k) => {
            let now = model.tick();
            let expected = match model.find(*k) {
                Some(pos) => {
                    model.entries[pos].2 = now;
                    true
                }
                None => false,
            };
            prop_assert_eq!(book.touch(&key(*k)), expected);
        }
        Op::Remove(k) => {
            let expected = model.find(*k).map(|_| SIZES[*k]);
            prop_assert_eq!(book.remove(&key(*k)), expected);
            model.remove(*k);
        }
        Op::Pin(h, ks) => {
            let keys: Vec<_> = ks.iter().map(|k| key(*k)).collect();
            book.pin(HOLDERS[*h], &keys);
            model.pins.extend(ks.iter().map(|k| (*h, *k)));
        }
        Op::AdmitPins(h, ks) => {
            let keys: Vec<_> = ks.iter().map(|k| key(*k)).collect();
            let new: BTreeSet<usize> = ks
                .iter()
                .copied()
                .filter(|k| !model.pinned_key(*k))
                .collect();
            let additional: u64 = new.iter().map(|k| SIZES[*k]).sum();
            let committed = model.committed();
            match book.admit_pins(HOLDERS[*h], &keys) {
                Ok(()) => {
                    prop_assert!(committed + additional <= model.capacity);
                    model.pins.extend(ks.iter().map(|k| (*h, *k)));
                }
                Err(refused) => {
                    prop_assert!(committed + additional > model.capacity);
                    prop_assert_eq!(refused.additional, additional);
                    prop_assert_eq!(refused.committed, committed);
                }
            }
        }
        Op::UnpinAll(h) => {
            let expected: BTreeSet<ObjectKey> = model
                .pins
                .iter()
                .filter(|(i, _)| i == h)
                .map(|(_, k)| key(*k))
                .collect();
            let released: BTreeSet<ObjectKey> = book.unpin_all(HOLDERS[*h]).into_iter().collect();
            prop_assert_eq!(released, expected);
            model.pins.retain(|(i, _)| i != h);
        }
        Op::Unpin(h, k) => {
            let expected = model.pins.contains(&(*h, *k));
            prop_assert_eq!(book.unpin(HOLDERS[*h], &key(*k)), expected);
            model.pins.retain(|pin| pin != &(*h, *k));
        }
        Op::Evict => match (book.plan_eviction(0), model.plan(0)) {
            (Ok(victims), Some(expected)) => {
                prop_assert_eq!(indexes(&victims), expected.clone());
                for victim in &victims {
                    book.remove(victim);
                }
                for i in expected {
                    model.remove(i);
                }
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "plan {got:?}, model {want:?}"),
        },
    }
    Ok(())
}

/// The invariants of the [`CacheBook`] documentation, and agreement with the model.
fn check(book: &CacheBook, model: &Model, probe: u64) -> Result<(), TestCaseError> {
    // 1 and 2: used and pinned bytes.
    prop_assert_eq!(book.used(), model.used());
    prop_assert_eq!(book.pinned(), model.pinned());
    prop_assert!(book.pinned() <= book.used());
    // 9: committed bytes, cached or not.
    prop_assert_eq!(book.committed(), model.committed());
    // 3: pins per key.
    for k in 0..SIZES.len() {
        prop_assert_eq!(book.is_pinned(&key(k)), model.pinned_key(k));
        let state = model.find(k).map(|pos| model.entries[pos].1);
        prop_assert_eq!(book.state(&key(k)), state);
    }
    // 4: the LRU index is the ready entries in order of last access.
    let ready = model
        .entries
        .iter()
        .filter(|(_, s, _)| *s == EntryState::Ready)
        .count();
    prop_assert_eq!(book.ready_count(), ready);
    let evictable: Vec<_> = book.evictable().map(|(k, _)| k.clone()).collect();
    prop_assert_eq!(indexes(&evictable), model.evictable());
    // 8: the running count of evictable bytes.
    let evictable_bytes: u64 = book.evictable().map(|(_, size)| size).sum();
    prop_assert_eq!(book.evictable_bytes(), evictable_bytes);
    // 5 and 6: plans never name pinned or pending entries, follow LRU order, and fit.
    for incoming in [0, probe] {
        match book.plan_eviction(incoming) {
            Ok(victims) => {
                let expected = model.plan(incoming);
                prop_assert_eq!(Some(indexes(&victims)), expected);
                let mut last_seen = 0;
                let mut freed = 0;
                for victim in &victims {
                    prop_assert!(!book.is_pinned(victim));
                    prop_assert_eq!(book.state(victim), Some(EntryState::Ready));
                    let pos = model.evictable().iter().position(|i| key(*i) == *victim);
                    let pos = pos.expect("victim is evictable");
                    prop_assert!(pos >= last_seen, "victims in LRU order");
                    last_seen = pos;
                    freed += victim.size;
                }
                prop_assert!(book.used() - freed + incoming <= book.capacity());
                if book.used() + incoming <= model.high {
                    prop_assert!(victims.is_empty());
                }
            }
            Err(full) => {
                prop_assert!(model.plan(incoming).is_none());
                prop_assert!(
                    incoming > book.capacity() || full.unevictable + incoming > book.capacity()
                );
                check_waiting(book, model, &full)?;
            }
        }
    }
    Ok(())
}

/// 7: a refusal says that waiting for the downloads in progress helps exactly when, pins
/// unchanged, the same plan succeeds once they have ended: all completed, or the unpinned
/// ones failed (removed) and the pinned ones completed.
fn check_waiting(book: &CacheBook, model: &Model, full: &Full) -> Result<(), TestCaseError> {
    let pending: Vec<usize> = model
        .entries
        .iter()
        .filter(|(_, s, _)| *s == EntryState::Pending)
        .map(|(i, _, _)| *i)
        .collect();
    for unpinned_fail in [false, true] {
        let mut after = book.clone();
        for &k in &pending {
            if unpinned_fail && !after.is_pinned(&key(k)) {
                prop_assert!(after.remove(&key(k)).is_some());
            } else {
                prop_assert!(after.complete(&key(k)));
            }
        }
        prop_assert_eq!(
            after.plan_eviction(full.incoming).is_ok(),
            full.fits_once_downloads_end(),
            "{:?}, unpinned downloads failing: {}",
            full,
            unpinned_fail
        );
    }
    // Waiting can only help when there are unpinned downloads to wait for.
    if full.fits_once_downloads_end() {
        prop_assert!(pending.iter().any(|k| !model.pinned_key(*k)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_keep_the_invariants(
        capacity in 0u64..120,
        high in 0.5f64..=1.0,
        low_ratio in 0.0f64..=1.0,
        probe in 0u64..60,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let low = high * low_ratio;
        let mut book = CacheBook::new(capacity, high, low);
        let mut model = Model {
            capacity,
            high: super::fraction_of(capacity, high),
            low: super::fraction_of(capacity, low).min(super::fraction_of(capacity, high)),
            ..Model::default()
        };
        for op in &ops {
            apply(&mut book, &mut model, op)?;
            check(&book, &model, probe)?;
        }
    }
}

#[test]
fn eviction_goes_from_the_high_to_the_low_watermark_in_lru_order() {
    let key = |name: &str, size| ObjectKey {
        bucket: "b".into(),
        key: name.into(),
        etag: "e".into(),
        size,
    };
    let mut book = CacheBook::new(100, 0.9, 0.5);
    for name in ["a", "b", "c", "d"] {
        book.insert(key(name, 20), 20);
    }
    book.touch(&key("a", 20)); // order now: b, c, d, a
    book.pin("r-1", &[key("b", 20)]);
    assert_eq!(book.plan_eviction(10), Ok(vec![]), "90 <= high watermark");
    // 80 + 20 = 100 > 90: evict down to 50 in LRU order, skipping pinned b.
    assert_eq!(
        book.plan_eviction(20),
        Ok(vec![key("c", 20), key("d", 20), key("a", 20)])
    );
    assert_eq!(
        book.plan_eviction(5),
        Ok(vec![]),
        "85: below the high watermark"
    );
    book.pin("r-2", &[key("c", 20), key("d", 20), key("a", 20)]);
    assert_eq!(
        book.plan_eviction(30),
        Err(Full {
            incoming: 30,
            capacity: 100,
            used: 80,
            pinned: 80,
            unevictable: 80,
        })
    );
    assert_eq!(book.unpin_all("r-2").len(), 3);
    assert_eq!(book.pinned(), 20);
    assert!(book.plan_eviction(101).is_err(), "larger than the capacity");
}

#[test]
fn refusals_due_to_unpinned_downloads_say_that_waiting_helps() {
    let key = |name: &str, size| ObjectKey {
        bucket: "b".into(),
        key: name.into(),
        etag: "e".into(),
        size,
    };
    // The reported case: 8 MiB (here 8 units), four unpinned 1-unit read-throughs and a
    // pinned 3-unit object downloading; another pinned 3-unit object arrives.
    let mut book = CacheBook::new(8, 1.0, 1.0);
    let reads: Vec<_> = (0..4).map(|i| key(&format!("read-{i}"), 1)).collect();
    let (a1, a2) = (key("a1", 3), key("a2", 3));
    book.pin("res", [&a1, &a2]);
    for read in &reads {
        assert!(book.begin(read.clone(), 1));
    }
    assert!(book.begin(a1.clone(), 3));
    let full = book.plan_eviction(3).expect_err("7 unevictable + 3 > 8");
    assert_eq!(
        full,
        Full {
            incoming: 3,
            capacity: 8,
            used: 7,
            pinned: 3,
            unevictable: 7,
        }
    );
    assert!(full.fits_once_downloads_end(), "3 pinned + 3 <= 8");
    // Too large next to the pinned bytes: waiting cannot help.
    assert!(!book
        .plan_eviction(6)
        .expect_err("full")
        .fits_once_downloads_end());
    assert!(!book
        .plan_eviction(9)
        .expect_err("full")
        .fits_once_downloads_end());

    // One read ends: still in the way, still worth waiting.
    assert!(book.complete(&reads[0]));
    let full = book.plan_eviction(3).expect_err("6 unevictable + 3 > 8");
    assert!(full.fits_once_downloads_end());
    // Another one fails: now it fits, evicting the finished read.
    assert_eq!(book.remove(&reads[1]), Some(1));
    assert_eq!(book.plan_eviction(3), Ok(vec![reads[0].clone()]));

    // Pinned downloads are not worth waiting for: they stay unevictable.
    let mut pinned = CacheBook::new(8, 1.0, 1.0);
    pinned.pin("res", [&a1]);
    assert!(pinned.begin(a1.clone(), 3));
    assert!(pinned.begin(key("b", 3), 3));
    pinned.pin("other", [&key("b", 3)]);
    let full = pinned.plan_eviction(3).expect_err("6 pinned + 3 > 8");
    assert!(!full.fits_once_downloads_end());
}

#[test]
fn pins_on_absent_objects_protect_them_once_they_land() {
    let k = ObjectKey {
        bucket: "b".into(),
        key: "later".into(),
        etag: "e".into(),
        size: 10,
    };
    let mut book = CacheBook::new(10, 1.0, 0.0);
    book.pin("r-1", [&k]);
    assert_eq!(book.pinned(), 0);
    assert!(book.begin(k.clone(), 10));
    assert_eq!(book.pinned(), 10);
    assert!(book.complete(&k));
    assert_eq!(book.evictable().count(), 0);
    assert!(book.plan_eviction(1).is_err());
    book.unpin_all("r-1");
    assert_eq!(book.plan_eviction(1), Ok(vec![k]));
}
