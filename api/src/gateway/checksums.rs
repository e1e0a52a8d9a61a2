//! The additional checksums of a PutObject or UploadPart (`x-amz-checksum-crc32`, `-crc32c`,
//! `-crc64nvme`, `-sha1`, `-sha256`): which one the office must check the body against, and
//! the one it returns.
//!
//! s3s (0.14) parses the headers into the input's `checksum_*` fields, decodes aws-chunked
//! bodies and hands over their trailers ([`TrailingHeaders`], readable once the body has
//! ended), but verifies none of them. The write-back path does, while it stages the body
//! ([`BodyChecks::checksum`](milepost_cacher::writeback::BodyChecks::checksum)): a mismatch is
//! `BadDigest`, a malformed value `InvalidRequest`, as in S3, and nothing is kept.

use std::sync::Arc;

use http::HeaderMap;
use milepost_cacher::checksum::{Checksum, ChecksumAlgorithm, ChecksumCheck};
use s3s::dto::{PutObjectInput, PutObjectOutput, UploadPartInput, UploadPartOutput};
use s3s::{s3_error, S3Result, TrailingHeaders};

/// An operation input with S3's checksum headers.
pub(super) trait SentChecksums {
    /// The value of each algorithm's header, if sent.
    fn sent(&self) -> [(ChecksumAlgorithm, Option<&str>); 5];
}

/// An operation output that reports the checksum of what was stored.
pub(super) trait WithChecksum {
    fn with_checksum(self, checksum: Option<&Checksum>) -> Self;
}

/// An output with only the checksum of what was stored (none if none was asked for), the
/// base of an operation's output.
pub(super) fn reported<O: WithChecksum + Default>(checksum: Option<&Checksum>) -> O {
    O::default().with_checksum(checksum)
}

macro_rules! checksum_fields {
    ($input:ty, $output:ty) => {
        impl SentChecksums for $input {
            fn sent(&self) -> [(ChecksumAlgorithm, Option<&str>); 5] {
                [
                    (ChecksumAlgorithm::Crc32, self.checksum_crc32.as_deref()),
                    (ChecksumAlgorithm::Crc32c, self.checksum_crc32c.as_deref()),
                    (
                        ChecksumAlgorithm::Crc64Nvme,
                        self.checksum_crc64nvme.as_deref(),
                    ),
                    (ChecksumAlgorithm::Sha1, self.checksum_sha1.as_deref()),
                    (ChecksumAlgorithm::Sha256, self.checksum_sha256.as_deref()),
                ]
            }
        }

        impl WithChecksum for $output {
            fn with_checksum(mut self, checksum: Option<&Checksum>) -> Self {
                let Some(checksum) = checksum else {
                    return self;
                };
                let value = Some(checksum.to_base64());
                match checksum.algorithm() {
                    ChecksumAlgorithm::Crc32 => self.checksum_crc32 = value,
                    ChecksumAlgorithm::Crc32c => self.checksum_crc32c = value,
                    ChecksumAlgorithm::Crc64Nvme => self.checksum_crc64nvme = value,
                    ChecksumAlgorithm::Sha1 => self.checksum_sha1 = value,
                    ChecksumAlgorithm::Sha256 => self.checksum_sha256 = value,
                }
                self
            }
        }
    };
}

checksum_fields!(PutObjectInput, PutObjectOutput);
checksum_fields!(UploadPartInput, UploadPartOutput);

/// The check the client asked for: a value in a header, a value in an aws-chunked trailer
/// (announced in `x-amz-trailer`), or only an algorithm (`x-amz-sdk-checksum-algorithm`), which
/// the office computes and returns. As S3: more than one value, a malformed value or a
/// trailer without an aws-chunked body is `InvalidRequest`; a value of another algorithm than
/// the one named is `BadDigest`.
pub(super) fn requested(
    input: &impl SentChecksums,
    headers: &HeaderMap,
    trailers: Option<&TrailingHeaders>,
) -> S3Result<Option<ChecksumCheck>> {
    let named =
        match headers
            .get("x-amz-sdk-checksum-algorithm")
            .or_else(|| headers.get("x-amz-checksum-algorithm"))
        {
            None => None,
            Some(value) => {
                let value = value.to_str().unwrap_or_default();
                Some(ChecksumAlgorithm::from_name(value).ok_or_else(|| {
                    s3_error!(InvalidRequest, "unknown checksum algorithm {value:?}")
                })?)
            }
        };
    let sent: Vec<(ChecksumAlgorithm, &str)> = input
        .sent()
        .into_iter()
        .filter_map(|(algorithm, value)| value.map(|v| (algorithm, v)))
        .collect();
    let trailing: Vec<ChecksumAlgorithm> = headers
        .get_all("x-amz-trailer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(ChecksumAlgorithm::from_header)
        .collect();
    if sent.len() + trailing.len() > 1 {
        return Err(s3_error!(
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        ));
    }
    let check = match (sent.first(), trailing.first()) {
        (Some(&(algorithm, value)), _) => {
            let sent = Checksum::parse(algorithm, value)
                .map_err(|err| s3_error!(InvalidRequest, "{err}"))?;
            ChecksumCheck::sent(sent)
        }
        (None, Some(&algorithm)) => {
            let Some(trailers) = trailers.cloned() else {
                return Err(s3_error!(
                    InvalidRequest,
                    "x-amz-trailer announces {} but the body is not aws-chunked with trailers",
                    algorithm.header()
                ));
            };
            let read = move || {
                trailers
                    .read(|map| {
                        map.get(algorithm.header())
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                    .flatten()
            };
            ChecksumCheck::trailer(algorithm, Arc::new(read))
        }
        (None, None) => return Ok(named.map(ChecksumCheck::compute)),
    };
    if let Some(named) = named.filter(|named| *named != check.algorithm()) {
        return Err(s3_error!(
            BadDigest,
            "x-amz-sdk-checksum-algorithm is {named} but the checksum sent is {}",
            check.algorithm()
        ));
    }
    Ok(Some(check))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(sha256: Option<&str>, crc32: Option<&str>) -> PutObjectInput {
        let mut input = PutObjectInput::builder()
            .bucket("b".to_owned())
            .key("k".to_owned())
            .build()
            .expect("input");
        input.checksum_sha256 = sha256.map(str::to_owned);
        input.checksum_crc32 = crc32.map(str::to_owned);
        input
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn code(result: S3Result<Option<ChecksumCheck>>) -> String {
        result.expect_err("refused").code().as_str().to_owned()
    }

    #[test]
    fn one_value_in_a_header_or_a_trailer() {
        let check = requested(&put(None, Some("y/Q5Jg==")), &HeaderMap::new(), None)
            .expect("ok")
            .expect("a check");
        assert_eq!(check.algorithm(), ChecksumAlgorithm::Crc32);

        assert!(requested(&put(None, None), &HeaderMap::new(), None)
            .expect("ok")
            .is_none());

        // Named only: computed and returned.
        let check = requested(
            &put(None, None),
            &headers(&[("x-amz-sdk-checksum-algorithm", "crc32c")]),
            None,
        )
        .expect("ok")
        .expect("a check");
        assert_eq!(check.algorithm(), ChecksumAlgorithm::Crc32c);
    }

    #[test]
    fn bad_requests_get_s3_codes() {
        // Two values.
        assert_eq!(
            code(requested(
                &put(
                    Some("FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiU="),
                    Some("y/Q5Jg==")
                ),
                &HeaderMap::new(),
                None
            )),
            "InvalidRequest"
        );
        // A header and a trailer.
        assert_eq!(
            code(requested(
                &put(None, Some("y/Q5Jg==")),
                &headers(&[("x-amz-trailer", "x-amz-checksum-crc32c")]),
                None
            )),
            "InvalidRequest"
        );
        // Malformed.
        assert_eq!(
            code(requested(
                &put(Some("y/Q5Jg=="), None),
                &HeaderMap::new(),
                None
            )),
            "InvalidRequest"
        );
        // A trailer on a body that cannot carry one.
        assert_eq!(
            code(requested(
                &put(None, None),
                &headers(&[("x-amz-trailer", "x-amz-checksum-crc32")]),
                None
            )),
            "InvalidRequest"
        );
        // Another algorithm than the one named.
        assert_eq!(
            code(requested(
                &put(None, Some("y/Q5Jg==")),
                &headers(&[("x-amz-sdk-checksum-algorithm", "SHA256")]),
                None
            )),
            "BadDigest"
        );
        assert_eq!(
            code(requested(
                &put(None, None),
                &headers(&[("x-amz-sdk-checksum-algorithm", "MD4")]),
                None
            )),
            "InvalidRequest"
        );
    }

    #[test]
    fn outputs_report_the_stored_checksum() {
        let sum = Checksum::of(ChecksumAlgorithm::Sha1, b"123456789");
        let out = PutObjectOutput::default().with_checksum(Some(&sum));
        assert_eq!(
            out.checksum_sha1.as_deref(),
            Some("98O8HYCOBHMq32eZZczDTKeuNEE=")
        );
        assert!(out.checksum_crc32.is_none());
        let out = UploadPartOutput::default().with_checksum(None);
        assert!(out.checksum_sha1.is_none());
    }
}
