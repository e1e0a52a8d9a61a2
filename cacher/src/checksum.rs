//! S3's additional checksums: CRC32, CRC32C, CRC64NVME, SHA-1 and SHA-256 of an object or part.
//!
//! A client sends one in `x-amz-checksum-<algorithm>`, as a header before the body or as an
//! aws-chunked trailer after it (announced in `x-amz-trailer`; the AWS SDKs' default). The
//! value is the base64 of the big-endian digest. The write-back path computes the requested
//! algorithm while a body is staged and refuses the body if the value differs
//! ([`ChecksumCheck`], checked in `writeback::staging` before anything is acknowledged).
//!
//! The CRCs come from `crc-fast`, the crate the AWS SDK and s3s compute them with; SHA-1 and
//! SHA-256 from RustCrypto's `sha1` and `sha2`.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;

/// An additional checksum algorithm S3 accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [Self; 5] = [
        Self::Crc32,
        Self::Crc32c,
        Self::Crc64Nvme,
        Self::Sha1,
        Self::Sha256,
    ];

    /// S3's name, as in `x-amz-sdk-checksum-algorithm`: `CRC32`, `CRC32C`, `CRC64NVME`,
    /// `SHA1`, `SHA256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// The header (or trailer) that carries a value: `x-amz-checksum-crc32`, …
    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// The algorithm S3 names `name` (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The algorithm whose value travels in header `header` (any case).
    pub fn from_header(header: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(header.trim()))
    }

    /// Bytes in a digest.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that is not a checksum of its algorithm, or a trailer that never came.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("{header} is not base64")]
    NotBase64 { header: &'static str },
    #[error("{header} has {len} bytes, a {algorithm} has {expected}")]
    WrongLength {
        header: &'static str,
        algorithm: ChecksumAlgorithm,
        len: usize,
        expected: usize,
    },
    #[error("{header} was announced in x-amz-trailer but not sent")]
    MissingTrailer { header: &'static str },
    #[error("the {algorithm} sent ({sent}) does not match the body's ({computed})")]
    Mismatch {
        algorithm: ChecksumAlgorithm,
        sent: Checksum,
        computed: Checksum,
    },
}

impl ChecksumError {
    /// A value that was well formed but is not the body's (S3's `BadDigest`); the others are
    /// malformed requests (`InvalidRequest`).
    pub fn is_mismatch(&self) -> bool {
        matches!(self, Self::Mismatch { .. })
    }
}

/// One algorithm's digest of some bytes. Shown (and sent) as base64.
#[derive(Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: ChecksumAlgorithm,
    digest: Vec<u8>,
}

impl Checksum {
    /// Parses the base64 `value` of a header or trailer carrying `algorithm`.
    pub fn parse(algorithm: ChecksumAlgorithm, value: &str) -> Result<Self, ChecksumError> {
        let header = algorithm.header();
        let digest = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| ChecksumError::NotBase64 { header })?;
        if digest.len() != algorithm.digest_len() {
            return Err(ChecksumError::WrongLength {
                header,
                algorithm,
                len: digest.len(),
                expected: algorithm.digest_len(),
            });
        }
        Ok(Self { algorithm, digest })
    }

    /// The digest of `bytes`.
    pub fn of(algorithm: ChecksumAlgorithm, bytes: &[u8]) -> Self {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// The big-endian digest.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The value as S3 sends it: base64 of the digest.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.digest)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.to_base64())
    }
}

/// Computes one algorithm over bytes fed in pieces.
pub struct Hasher {
    algorithm: ChecksumAlgorithm,
    state: State,
}

enum State {
    Crc(crc_fast::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        use crc_fast::CrcAlgorithm;
        use sha2::Digest as _;
        let state = match algorithm {
            ChecksumAlgorithm::Crc32 => {
                State::Crc(crc_fast::Digest::new(CrcAlgorithm::Crc32IsoHdlc))
            }
            ChecksumAlgorithm::Crc32c => {
                State::Crc(crc_fast::Digest::new(CrcAlgorithm::Crc32Iscsi))
            }
            ChecksumAlgorithm::Crc64Nvme => {
                State::Crc(crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme))
            }
            ChecksumAlgorithm::Sha1 => State::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
        };
        Self { algorithm, state }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match &mut self.state {
            State::Crc(crc) => crc.update(bytes),
            State::Sha1(sha) => sha.update(bytes),
            State::Sha256(sha) => sha.update(bytes),
        }
    }

    pub fn finish(self) -> Checksum {
        use sha2::Digest as _;
        let digest = match self.state {
            // `finalize` gives the CRC in the low bits of a u64.
            State::Crc(crc) if self.algorithm.digest_len() == 4 => {
                (crc.finalize() as u32).to_be_bytes().to_vec()
            }
            State::Crc(crc) => crc.finalize().to_be_bytes().to_vec(),
            State::Sha1(sha) => sha.finalize().to_vec(),
            State::Sha256(sha) => sha.finalize().to_vec(),
        };
        Checksum {
            algorithm: self.algorithm,
            digest,
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Reads a trailer once the body has ended: its raw value, `None` if it was not sent.
pub type TrailerReader = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The checksum a body must have, and where the client's value comes from.
#[derive(Clone)]
pub struct ChecksumCheck {
    algorithm: ChecksumAlgorithm,
    expected: Expected,
}

#[derive(Clone)]
enum Expected {
    /// Named (`x-amz-sdk-checksum-algorithm`) without a value: computed, nothing to compare.
    Nothing,
    /// Sent before the body, in a header.
    Sent(Checksum),
    /// Sent after the body, in an aws-chunked trailer.
    Trailer(TrailerReader),
}

impl ChecksumCheck {
    /// The body must have `sent`.
    pub fn sent(sent: Checksum) -> Self {
        Self {
            algorithm: sent.algorithm,
            expected: Expected::Sent(sent),
        }
    }

    /// The body must have the `algorithm` value that `read` returns once the body has ended.
    pub fn trailer(algorithm: ChecksumAlgorithm, read: TrailerReader) -> Self {
        Self {
            algorithm,
            expected: Expected::Trailer(read),
        }
    }

    /// Computes `algorithm` (to report it) without a value to compare with.
    pub fn compute(algorithm: ChecksumAlgorithm) -> Self {
        Self {
            algorithm,
            expected: Expected::Nothing,
        }
    }

    pub fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// Checks `computed` (of this check's algorithm) against the client's value, read now from
    /// the trailer if it comes in one.
    pub fn verify(&self, computed: &Checksum) -> Result<(), ChecksumError> {
        let sent = match &self.expected {
            Expected::Nothing => return Ok(()),
            Expected::Sent(sent) => sent.clone(),
            Expected::Trailer(read) => {
                let header = self.algorithm.header();
                let value = read().ok_or(ChecksumError::MissingTrailer { header })?;
                Checksum::parse(self.algorithm, &value)?
            }
        };
        if sent == *computed {
            Ok(())
        } else {
            Err(ChecksumError::Mismatch {
                algorithm: self.algorithm,
                sent,
                computed: computed.clone(),
            })
        }
    }
}

impl fmt::Debug for ChecksumCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected = match &self.expected {
            Expected::Nothing => "nothing".to_owned(),
            Expected::Sent(sent) => sent.to_base64(),
            Expected::Trailer(_) => "trailer".to_owned(),
        };
        f.debug_struct("ChecksumCheck")
            .field("algorithm", &self.algorithm)
            .field("expected", &expected)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC catalogue's check values (of `123456789`) and digests computed outside this
    /// code base (Python's zlib and hashlib).
    #[test]
    fn digests_match_published_check_values() {
        let check = b"123456789";
        for (algorithm, hex) in [
            (ChecksumAlgorithm::Crc32, "cbf43926"),
            (ChecksumAlgorithm::Crc32c, "e3069283"),
            (ChecksumAlgorithm::Crc64Nvme, "ae8b14860a799888"),
            (
                ChecksumAlgorithm::Sha1,
                "f7c3bc1d808e04732adf679965ccc34ca7ae3441",
            ),
            (
                ChecksumAlgorithm::Sha256,
                "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
            ),
        ] {
            assert_eq!(
                hex::encode(Checksum::of(algorithm, check).digest()),
                hex,
                "{algorithm}"
            );
        }
        assert_eq!(
            Checksum::of(ChecksumAlgorithm::Crc32, check).to_base64(),
            "y/Q5Jg=="
        );
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for algorithm in ChecksumAlgorithm::ALL {
            let mut hasher = Hasher::new(algorithm);
            for piece in bytes.chunks(4093) {
                hasher.update(piece);
            }
            assert_eq!(
                hasher.finish(),
                Checksum::of(algorithm, &bytes),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn values_parse_and_round_trip() {
        for algorithm in ChecksumAlgorithm::ALL {
            let sum = Checksum::of(algorithm, b"x");
            assert_eq!(
                Checksum::parse(algorithm, &sum.to_base64()),
                Ok(sum.clone())
            );
            assert_eq!(
                ChecksumAlgorithm::from_header(algorithm.header()),
                Some(algorithm)
            );
            assert_eq!(
                ChecksumAlgorithm::from_name(&algorithm.name().to_lowercase()),
                Some(algorithm)
            );
        }
        assert!(matches!(
            Checksum::parse(ChecksumAlgorithm::Sha256, "y/Q5Jg=="),
            Err(ChecksumError::WrongLength { len: 4, .. })
        ));
        assert!(matches!(
            Checksum::parse(ChecksumAlgorithm::Crc32, "not base64!"),
            Err(ChecksumError::NotBase64 { .. })
        ));
    }

    #[test]
    fn checks_compare_sent_and_trailing_values() {
        let computed = Checksum::of(ChecksumAlgorithm::Crc32, b"123456789");
        let other = Checksum::of(ChecksumAlgorithm::Crc32, b"12345678");
        assert_eq!(
            ChecksumCheck::sent(computed.clone()).verify(&computed),
            Ok(())
        );
        let err = ChecksumCheck::sent(other.clone())
            .verify(&computed)
            .expect_err("mismatch");
        assert!(err.is_mismatch(), "{err}");

        let trailer = |value: Option<String>| {
            ChecksumCheck::trailer(ChecksumAlgorithm::Crc32, Arc::new(move || value.clone()))
        };
        assert_eq!(
            trailer(Some("y/Q5Jg==".to_owned())).verify(&computed),
            Ok(())
        );
        assert!(trailer(Some(other.to_base64()))
            .verify(&computed)
            .expect_err("wrong trailer")
            .is_mismatch());
        assert_eq!(
            trailer(None).verify(&computed),
            Err(ChecksumError::MissingTrailer {
                header: "x-amz-checksum-crc32"
            })
        );
        assert!(matches!(
            trailer(Some("!!".to_owned())).verify(&computed),
            Err(ChecksumError::NotBase64 { .. })
        ));
        assert_eq!(
            ChecksumCheck::compute(ChecksumAlgorithm::Crc32).verify(&computed),
            Ok(())
        );
    }
}
