//! MD5, the digest single-part S3 ETags state, for checking downloads.
//!
//! Every byte the cache takes from upstream is hashed once, so this is on the hot path of
//! materialization: OpenSSL's assembly MD5 does about 640 MB/s a core here against 500 MB/s
//! for the `md-5` crate (measured 2026-12-03, see BENCHMARKS.md), which on a cache bound by
//! CPU is a fifth less time spent hashing. OpenSSL builds that refuse MD5 (FIPS mode) fall
//! back to `md-5`, so the check never depends on how the library was configured.
//!
//! Objects downloaded in one GET (every small object) are hashed faster still, eight at a
//! time on AVX2 or AVX-512 ([`x8`], scheduled by [`lanes`]); [`Md5`] hashes the rest:
//! objects read back from their staging file after a download in parts, every object on
//! CPUs without AVX2, and the write path (office uploads staged, parts and bodies sent upstream, multipart ETags).
//! It is the cacher's one MD5.

use std::fmt;

pub mod lanes;
pub mod x8;

use md5::Digest as _;
use openssl::hash::{Hasher, MessageDigest};

/// An MD5 computation in progress.
pub struct Md5(Engine);

enum Engine {
    OpenSsl(Hasher),
    Soft(md5::Md5),
}

impl fmt::Debug for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let engine = match self.0 {
            Engine::OpenSsl(_) => "openssl",
            Engine::Soft(_) => "md-5",
        };
        f.debug_tuple("Md5").field(&engine).finish()
    }
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5 {
    pub fn new() -> Self {
        match Hasher::new(MessageDigest::md5()) {
            Ok(hasher) => Self(Engine::OpenSsl(hasher)),
            Err(_) => Self(Engine::Soft(md5::Md5::new())),
        }
    }

    /// Adds `data`. OpenSSL only fails here on a broken context, reported as an I/O error
    /// so that the download it checks fails rather than passing unverified.
    pub fn update(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.0 {
            Engine::OpenSsl(hasher) => hasher.update(data).map_err(std::io::Error::other),
            Engine::Soft(hasher) => {
                hasher.update(data);
                Ok(())
            }
        }
    }

    /// The MD5 of `data`, in one call.
    pub fn digest(data: &[u8]) -> std::io::Result<[u8; 16]> {
        let mut md5 = Md5::new();
        md5.update(data)?;
        md5.finish()
    }

    /// The digest of everything added.
    pub fn finish(self) -> std::io::Result<[u8; 16]> {
        match self.0 {
            Engine::OpenSsl(mut hasher) => {
                let digest = hasher.finish().map_err(std::io::Error::other)?;
                <[u8; 16]>::try_from(&digest[..]).map_err(|_| {
                    std::io::Error::other(format!("OpenSSL gave a {}-byte MD5", digest.len()))
                })
            }
            Engine::Soft(hasher) => Ok(hasher.finalize().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use md5::Digest as _;
    use proptest::prelude::*;

    use super::{Engine, Md5};

    #[test]
    fn uses_openssl_here() {
        assert!(matches!(Md5::new().0, Engine::OpenSsl(_)));
    }

    #[test]
    fn known_digests() {
        let empty = Md5::new().finish().expect("digest");
        assert_eq!(hex::encode(empty), "d41d8cd98f00b204e9800998ecf8427e");
        let mut md5 = Md5::new();
        md5.update(b"The quick brown fox jumps over the lazy dog")
            .expect("update");
        assert_eq!(
            hex::encode(md5.finish().expect("digest")),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
    }

    proptest! {
        /// Any split of any input gives the digest `md-5` gives for the whole.
        #[test]
        fn agrees_with_md_5(data in proptest::collection::vec(any::<u8>(), 0..5000), cuts in proptest::collection::vec(0usize..5000, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut md5 = Md5::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                md5.update(&data[from..cut]).expect("update");
                from = cut;
            }
            let expected: [u8; 16] = md5::Md5::digest(&data).into();
            prop_assert_eq!(md5.finish().expect("digest"), expected);
        }
    }
}
