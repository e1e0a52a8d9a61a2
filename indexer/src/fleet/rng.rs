//! The fleet's random numbers: ChaCha8 (value-stable across `rand_chacha` releases, unlike
//! `StdRng`), seeded without `seed_from_u64`, and drawn only through `next_u64`/`fill_bytes`
//! with the helpers below, so no `rand` distribution algorithm can change the output.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SplitMix64 step: a well-mixed function of `x`.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed for a sub-stream (`what` names it, `index` numbers it), so that each drive, log, blob
/// and run has its own stream and adding one does not shift the others.
pub(crate) fn derive(seed: u64, what: &str, index: u64) -> u64 {
    let mut h = mix(seed);
    for b in what.bytes() {
        h = mix(h ^ u64::from(b));
    }
    mix(h ^ mix(index))
}

#[derive(Debug, Clone)]
pub(crate) struct Det(ChaCha8Rng);

impl Det {
    pub(crate) fn new(seed: u64) -> Self {
        let mut key = [0u8; 32];
        let mut s = seed;
        for chunk in key.chunks_exact_mut(8) {
            s = mix(s);
            chunk.copy_from_slice(&s.to_le_bytes());
        }
        Self(ChaCha8Rng::from_seed(key))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform-enough in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// In `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// In `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// In `[lo, hi)`.
    pub(crate) fn float(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Index drawn with the given weights (not all zero).
    pub(crate) fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// `k` distinct indices of `0..n`, in increasing order.
    pub(crate) fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut chosen = all[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }

    /// Between `lo` and `hi` (inclusive) distinct indices of `0..n`, in increasing order.
    pub(crate) fn sample_some(&mut self, n: usize, lo: u64, hi: u64) -> Vec<usize> {
        let k = self.range(lo, hi) as usize;
        self.sample(n, k)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }

    /// `n` lowercase hex digits.
    pub(crate) fn hex(&mut self, n: usize) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        (0..n)
            .map(|_| char::from(DIGITS[self.below(16) as usize]))
            .collect()
    }
}
