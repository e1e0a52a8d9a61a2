//! MD5 of eight independent messages at once, one per 32-bit lane of AVX2 registers.
//!
//! One MD5 is a chain of 64 dependent steps per block, so a core runs it at a fraction of
//! what it could compute: the steps of eight messages interleave for nearly the time of one.
//! The cache downloads many objects at a time, each verified against its ETag's MD5, which
//! makes eight messages at a time the common case ([`super::lanes`] gathers them).
//!
//! Two kernels share one body: AVX2, and AVX-512 on the same 256-bit vectors, whose
//! `vpternlogd` and `vprold` make each step about six instructions instead of ten; the
//! fastest the CPU runs is chosen once ([`Kernel::best`]).

use std::sync::OnceLock;

/// The MD5 state of one message: its four 32-bit words.
pub type State = [u32; 4];

/// The state MD5 starts from.
pub const INITIAL: State = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// One 64-byte block.
pub type Block = [u8; 64];

/// The instruction sets an 8-lane kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx2,
    /// AVX-512 F and VL: one instruction per round function and per rotation.
    Avx512,
}

impl Kernel {
    /// Whether this CPU runs `self`.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
                Kernel::Avx512 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// The kernels this CPU runs, fastest first.
    pub fn on_this_cpu() -> Vec<Kernel> {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .filter(|kernel| kernel.runs_here())
            .collect()
    }

    /// The fastest kernel this CPU runs, found once.
    pub fn best() -> Option<Kernel> {
        static BEST: OnceLock<Option<Kernel>> = OnceLock::new();
        *BEST.get_or_init(|| Kernel::on_this_cpu().first().copied())
    }
}

/// Whether this CPU runs [`compress8`] (it has AVX2).
pub fn available() -> bool {
    Kernel::best().is_some()
}

/// Compresses `blocks[i]` into `states[i]` for each lane `i` where `blocks[i]` is given;
/// the other lanes' states are left as they are, with the fastest kernel this CPU runs.
/// Callers check [`available`] first; without AVX2 this panics rather than run an
/// instruction the CPU lacks.
pub fn compress8(states: &mut [State; 8], blocks: [Option<&Block>; 8]) {
    let kernel = Kernel::best().expect("compress8 needs AVX2");
    compress8_with(kernel, states, blocks);
}

/// [`compress8`] with `kernel`, which must run here ([`Kernel::runs_here`]; checked, a
/// panic otherwise).
#[allow(unsafe_code)]
pub fn compress8_with(kernel: Kernel, states: &mut [State; 8], blocks: [Option<&Block>; 8]) {
    assert!(
        kernel.runs_here(),
        "this CPU cannot run the {kernel:?} kernel"
    );
    #[cfg(target_arch = "x86_64")]
    match kernel {
        // SAFETY: the CPU has the kernel's instruction sets, checked just above; the
        // functions have no other requirement (they take references, not pointers).
        Kernel::Avx2 => unsafe { avx2::compress8(states, blocks) },
        Kernel::Avx512 => unsafe { avx512::compress8(states, blocks) },
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (states, blocks);
        unreachable!("no kernel runs here");
    }
}

/// The body of an 8-lane kernel, over 256-bit vectors of eight 32-bit lanes. The invoking
/// module supplies `f!`, `g!`, `h!`, `i!` (MD5's four round functions) and `rotate!`, the
/// instructions its CPU has, and imports the AVX2 intrinsics named here.
#[cfg(target_arch = "x86_64")]
macro_rules! kernel {
    ($features:literal) => {
        #[target_feature(enable = $features)]
        pub(super) fn compress8(states: &mut [State; 8], blocks: [Option<&Block>; 8]) {
            let l: [&Block; 8] = std::array::from_fn(|i| blocks[i].unwrap_or(&ZERO));
            // The message transposed: m[w] holds word w of every lane's block. (Macros rather
            // than closures: a closure would not run with this function's target feature.)
            let mut m = [_mm256_set1_epi32(0); 16];
            for (w, column) in m.iter_mut().enumerate() {
                *column = _mm256_set_epi32(
                    word(l[7], w),
                    word(l[6], w),
                    word(l[5], w),
                    word(l[4], w),
                    word(l[3], w),
                    word(l[2], w),
                    word(l[1], w),
                    word(l[0], w),
                );
            }
            macro_rules! column {
                ($j:literal) => {
                    _mm256_set_epi32(
                        states[7][$j] as i32,
                        states[6][$j] as i32,
                        states[5][$j] as i32,
                        states[4][$j] as i32,
                        states[3][$j] as i32,
                        states[2][$j] as i32,
                        states[1][$j] as i32,
                        states[0][$j] as i32,
                    )
                };
            }
            let (a0, b0, c0, d0) = (column!(0), column!(1), column!(2), column!(3));
            let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
            macro_rules! step {
                ($fun:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:literal, $r:literal) => {
                    let sum = _mm256_add_epi32(
                        _mm256_add_epi32($a, $fun!($b, $c, $d)),
                        _mm256_add_epi32($m, _mm256_set1_epi32($k as i32)),
                    );
                    $a = _mm256_add_epi32($b, rotate!(sum, $s, $r));
                };
            }
                step!(f, a, b, c, d, m[0], 0xd76aa478u32, 7, 25);
                step!(f, d, a, b, c, m[1], 0xe8c7b756u32, 12, 20);
                step!(f, c, d, a, b, m[2], 0x242070dbu32, 17, 15);
                step!(f, b, c, d, a, m[3], 0xc1bdceeeu32, 22, 10);
                step!(f, a, b, c, d, m[4], 0xf57c0fafu32, 7, 25);
                step!(f, d, a, b, c, m[5], 0x4787c62au32, 12, 20);
                step!(f, c, d, a, b, m[6], 0xa8304613u32, 17, 15);
                step!(f, b, c, d, a, m[7], 0xfd469501u32, 22, 10);
                step!(f, a, b, c, d, m[8], 0x698098d8u32, 7, 25);
                step!(f, d, a, b, c, m[9], 0x8b44f7afu32, 12, 20);
                step!(f, c, d, a, b, m[10], 0xffff5bb1u32, 17, 15);
                step!(f, b, c, d, a, m[11], 0x895cd7beu32, 22, 10);
                step!(f, a, b, c, d, m[12], 0x6b901122u32, 7, 25);
                step!(f, d, a, b, c, m[13], 0xfd987193u32, 12, 20);
                step!(f, c, d, a, b, m[14], 0xa679438eu32, 17, 15);
                step!(f, b, c, d, a, m[15], 0x49b40821u32, 22, 10);
                step!(g, a, b, c, d, m[1], 0xf61e2562u32, 5, 27);
                step!(g, d, a, b, c, m[6], 0xc040b340u32, 9, 23);
                step!(g, c, d, a, b, m[11], 0x265e5a51u32, 14, 18);
                step!(g, b, c, d, a, m[0], 0xe9b6c7aau32, 20, 12);
                step!(g, a, b, c, d, m[5], 0xd62f105du32, 5, 27);
                step!(g, d, a, b, c, m[10], 0x02441453u32, 9, 23);
                step!(g, c, d, a, b, m[15], 0xd8a1e681u32, 14, 18);
                step!(g, b, c, d, a, m[4], 0xe7d3fbc8u32, 20, 12);
                step!(g, a, b, c, d, m[9], 0x21e1cde6u32, 5, 27);
                step!(g, d, a, b, c, m[14], 0xc33707d6u32, 9, 23);
                step!(g, c, d, a, b, m[3], 0xf4d50d87u32, 14, 18);
                step!(g, b, c, d, a, m[8], 0x455a14edu32, 20, 12);
                step!(g, a, b, c, d, m[13], 0xa9e3e905u32, 5, 27);
                step!(g, d, a, b, c, m[2], 0xfcefa3f8u32, 9, 23);
                step!(g, c, d, a, b, m[7], 0x676f02d9u32, 14, 18);
                step!(g, b, c, d, a, m[12], 0x8d2a4c8au32, 20, 12);
                step!(h, a, b, c, d, m[5], 0xfffa3942u32, 4, 28);
                step!(h, d, a, b, c, m[8], 0x8771f681u32, 11, 21);
                step!(h, c, d, a, b, m[11], 0x6d9d6122u32, 16, 16);
                step!(h, b, c, d, a, m[14], 0xfde5380cu32, 23, 9);
                step!(h, a, b, c, d, m[1], 0xa4beea44u32, 4, 28);
                step!(h, d, a, b, c, m[4], 0x4bdecfa9u32, 11, 21);
                step!(h, c, d, a, b, m[7], 0xf6bb4b60u32, 16, 16);
                step!(h, b, c, d, a, m[10], 0xbebfbc70u32, 23, 9);
                step!(h, a, b, c, d, m[13], 0x289b7ec6u32, 4, 28);
                step!(h, d, a, b, c, m[0], 0xeaa127fau32, 11, 21);
                step!(h, c, d, a, b, m[3], 0xd4ef3085u32, 16, 16);
                step!(h, b, c, d, a, m[6], 0x04881d05u32, 23, 9);
                step!(h, a, b, c, d, m[9], 0xd9d4d039u32, 4, 28);
                step!(h, d, a, b, c, m[12], 0xe6db99e5u32, 11, 21);
                step!(h, c, d, a, b, m[15], 0x1fa27cf8u32, 16, 16);
                step!(h, b, c, d, a, m[2], 0xc4ac5665u32, 23, 9);
                step!(i, a, b, c, d, m[0], 0xf4292244u32, 6, 26);
                step!(i, d, a, b, c, m[7], 0x432aff97u32, 10, 22);
                step!(i, c, d, a, b, m[14], 0xab9423a7u32, 15, 17);
                step!(i, b, c, d, a, m[5], 0xfc93a039u32, 21, 11);
                step!(i, a, b, c, d, m[12], 0x655b59c3u32, 6, 26);
                step!(i, d, a, b, c, m[3], 0x8f0ccc92u32, 10, 22);
                step!(i, c, d, a, b, m[10], 0xffeff47du32, 15, 17);
                step!(i, b, c, d, a, m[1], 0x85845dd1u32, 21, 11);
                step!(i, a, b, c, d, m[8], 0x6fa87e4fu32, 6, 26);
                step!(i, d, a, b, c, m[15], 0xfe2ce6e0u32, 10, 22);
                step!(i, c, d, a, b, m[6], 0xa3014314u32, 15, 17);
                step!(i, b, c, d, a, m[13], 0x4e0811a1u32, 21, 11);
                step!(i, a, b, c, d, m[4], 0xf7537e82u32, 6, 26);
                step!(i, d, a, b, c, m[11], 0xbd3af235u32, 10, 22);
                step!(i, c, d, a, b, m[2], 0x2ad7d2bbu32, 15, 17);
                step!(i, b, c, d, a, m[9], 0xeb86d391u32, 21, 11);
            a = _mm256_add_epi32(a, a0);
            b = _mm256_add_epi32(b, b0);
            c = _mm256_add_epi32(c, c0);
            d = _mm256_add_epi32(d, d0);
            macro_rules! store {
                ($lane:literal) => {
                    if blocks[$lane].is_some() {
                        states[$lane] = [
                            _mm256_extract_epi32::<$lane>(a) as u32,
                            _mm256_extract_epi32::<$lane>(b) as u32,
                            _mm256_extract_epi32::<$lane>(c) as u32,
                            _mm256_extract_epi32::<$lane>(d) as u32,
                        ];
                    }
                };
            }
            store!(0);
            store!(1);
            store!(2);
            store!(3);
            store!(4);
            store!(5);
            store!(6);
            store!(7);
        }
    };
}

/// What both kernels share: the zero block of an idle lane and a word of a block.
#[cfg(target_arch = "x86_64")]
mod shared {
    use super::Block;

    pub(super) const ZERO: Block = [0; 64];

    #[inline(always)]
    pub(super) fn word(block: &Block, i: usize) -> i32 {
        i32::from_le_bytes([
            block[4 * i],
            block[4 * i + 1],
            block[4 * i + 2],
            block[4 * i + 3],
        ])
    }
}

/// AVX2: each round function two or three logic instructions, a rotation three.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        _mm256_add_epi32, _mm256_and_si256, _mm256_extract_epi32, _mm256_or_si256,
        _mm256_set1_epi32, _mm256_set_epi32, _mm256_slli_epi32, _mm256_srli_epi32,
        _mm256_xor_si256,
    };

    use super::shared::{word, ZERO};
    use super::{Block, State};

    macro_rules! f {
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256($d, _mm256_and_si256($b, _mm256_xor_si256($c, $d)))
        };
    }
    macro_rules! g {
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256($c, _mm256_and_si256($d, _mm256_xor_si256($b, $c)))
        };
    }
    macro_rules! h {
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256(_mm256_xor_si256($b, $c), $d)
        };
    }
    macro_rules! i {
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256(
                $c,
                _mm256_or_si256($b, _mm256_xor_si256($d, _mm256_set1_epi32(-1))),
            )
        };
    }
    macro_rules! rotate {
        ($x:expr, $s:literal, $r:literal) => {
            _mm256_or_si256(_mm256_slli_epi32::<$s>($x), _mm256_srli_epi32::<$r>($x))
        };
    }

    kernel!("avx2");
}

/// AVX-512 (VL, on the same 256-bit vectors): each round function one `vpternlogd`, a
/// rotation one `vprold`, so a step is about six instructions instead of ten.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        _mm256_add_epi32, _mm256_extract_epi32, _mm256_rol_epi32, _mm256_set1_epi32,
        _mm256_set_epi32, _mm256_ternarylogic_epi32,
    };

    use super::shared::{word, ZERO};
    use super::{Block, State};

    // The immediates are the functions' truth tables, bit (b << 2 | c << 1 | d).
    macro_rules! f {
        // (b & c) | (!b & d): b ? c : d
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0xca>($b, $c, $d)
        };
    }
    macro_rules! g {
        // (b & d) | (c & !d): d ? b : c
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0xe4>($b, $c, $d)
        };
    }
    macro_rules! h {
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0x96>($b, $c, $d)
        };
    }
    macro_rules! i {
        // c ^ (b | !d)
        ($b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0x39>($b, $c, $d)
        };
    }
    macro_rules! rotate {
        ($x:expr, $s:literal, $r:literal) => {
            _mm256_rol_epi32::<$s>($x)
        };
    }

    kernel!("avx2,avx512f,avx512vl");
}

/// The MD5 of `data` through lane 0 of `kernel`, padding included (for tests and as the
/// reference the lane scheduler's finishing follows).
#[cfg(test)]
pub fn digest_one(kernel: Kernel, data: &[u8]) -> [u8; 16] {
    let mut states = [INITIAL; 8];
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let block: &Block = block.try_into().expect("64 bytes");
        compress8_with(
            kernel,
            &mut states,
            [Some(block), None, None, None, None, None, None, None],
        );
    }
    for block in padding(blocks.remainder(), data.len() as u64) {
        compress8_with(
            kernel,
            &mut states,
            [Some(&block), None, None, None, None, None, None, None],
        );
    }
    to_digest(&states[0])
}

/// The last one or two blocks of a message of `total` bytes whose last `tail.len()` (< 64)
/// bytes are `tail`: the tail, 0x80, zeros and the length in bits.
pub fn padding(tail: &[u8], total: u64) -> Vec<Block> {
    debug_assert!(tail.len() < 64);
    let mut bytes = tail.to_vec();
    bytes.push(0x80);
    while bytes.len() % 64 != 56 {
        bytes.push(0);
    }
    bytes.extend_from_slice(&total.wrapping_mul(8).to_le_bytes());
    bytes
        .chunks_exact(64)
        .map(|b| b.try_into().expect("64 bytes"))
        .collect()
}

/// The digest a final state gives.
pub fn to_digest(state: &State) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in state.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use md5::Digest as _;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_digests() {
        let kernels = Kernel::on_this_cpu();
        if kernels.is_empty() {
            eprintln!("no AVX2 here: nothing to test");
        }
        for kernel in kernels {
            assert_eq!(
                hex::encode(digest_one(kernel, b"")),
                "d41d8cd98f00b204e9800998ecf8427e",
                "{kernel:?}"
            );
            assert_eq!(
                hex::encode(digest_one(
                    kernel,
                    b"The quick brown fox jumps over the lazy dog"
                )),
                "9e107d9d372bb6826bd81d3542a419d6",
                "{kernel:?}"
            );
        }
    }

    proptest! {
        /// Eight messages of different lengths, lanes dropping out as theirs end: each
        /// lane's digest is `md-5`'s, with every kernel this CPU runs.
        #[test]
        fn each_lane_agrees_with_md_5(messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 8)) {
            let padded: Vec<Vec<Block>> = messages
                .iter()
                .map(|m| {
                    let mut blocks: Vec<Block> = m.chunks_exact(64).map(|b| b.try_into().expect("64")).collect();
                    blocks.extend(padding(&m[m.len() / 64 * 64..], m.len() as u64));
                    blocks
                })
                .collect();
            let longest = padded.iter().map(Vec::len).max().unwrap_or(0);
            for kernel in Kernel::on_this_cpu() {
                let mut states = [INITIAL; 8];
                for j in 0..longest {
                    let blocks: [Option<&Block>; 8] = std::array::from_fn(|lane| padded[lane].get(j));
                    compress8_with(kernel, &mut states, blocks);
                }
                for (lane, message) in messages.iter().enumerate() {
                    let expected: [u8; 16] = md5::Md5::digest(message).into();
                    prop_assert_eq!(to_digest(&states[lane]), expected, "{:?} lane {}", kernel, lane);
                }
            }
        }
    }
}
