//! `encoding-type=url` of ListObjects and ListObjectsV2: the keys, prefixes, delimiters and
//! markers of the answer percent-encoded, so that keys XML cannot carry (and keys holding `+`
//! or spaces) reach the client intact. botocore (the AWS CLI, boto3) always asks for it and
//! decodes with `unquote_plus`, so a raw `+` would come back as a space.
//!
//! Every byte of the UTF-8 but the unreserved characters of RFC 3986 and `/` is encoded (a
//! space as `%20`, `+` as `%2B`), which every client's decoder, form-style or not, reads back
//! to the key. The opaque continuation tokens are left as they are, as S3 does.

use s3s::dto::{EncodingType, ListObjectsOutput, ListObjectsV2Output};
use s3s::{s3_error, S3Result};

/// Whether the answer is to be URL-encoded: `url`, or nothing; any other value is refused
/// with InvalidArgument, as S3 does.
pub fn requested(encoding_type: Option<&EncodingType>) -> S3Result<bool> {
    match encoding_type.map(EncodingType::as_str) {
        None => Ok(false),
        Some(value) if value.eq_ignore_ascii_case(EncodingType::URL) => Ok(true),
        Some(value) => Err(s3_error!(
            InvalidArgument,
            "invalid encoding method {value:?} specified in the request (only `url` is supported)"
        )),
    }
}

/// `value` percent-encoded.
pub fn encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn encode_in_place(value: &mut Option<String>) {
    if let Some(value) = value {
        *value = encode(value);
    }
}

/// Encodes the key-valued fields of a ListObjectsV2 answer.
pub fn encode_v2(output: &mut ListObjectsV2Output) {
    encode_in_place(&mut output.prefix);
    encode_in_place(&mut output.delimiter);
    encode_in_place(&mut output.start_after);
    for object in output.contents.iter_mut().flatten() {
        encode_in_place(&mut object.key);
    }
    for prefix in output.common_prefixes.iter_mut().flatten() {
        encode_in_place(&mut prefix.prefix);
    }
}

/// Encodes the key-valued fields of a ListObjects (v1) answer.
///
/// The v1 answer's `Prefix` stays as sent: S3 encodes it in v2 only, and botocore decodes it in
/// v2 only (a `Prefix` of `\n` would come back to a boto3 caller as `%0A`).
pub fn encode_v1(output: &mut ListObjectsOutput) {
    encode_in_place(&mut output.delimiter);
    encode_in_place(&mut output.marker);
    encode_in_place(&mut output.next_marker);
    for object in output.contents.iter_mut().flatten() {
        encode_in_place(&mut object.key);
    }
    for prefix in output.common_prefixes.iter_mut().flatten() {
        encode_in_place(&mut prefix.prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_unreserved_and_slash() {
        assert_eq!(encode("a+b c/d"), "a%2Bb%20c/d");
        assert_eq!(encode("100%.csv"), "100%25.csv");
        assert_eq!(encode("run-1_x.y~z/"), "run-1_x.y~z/");
        assert_eq!(encode("한/\u{1}&<"), "%ED%95%9C/%01%26%3C");
    }

    #[test]
    fn only_url_is_an_encoding() {
        assert!(!requested(None).expect("none"));
        assert!(requested(Some(&EncodingType::from_static(EncodingType::URL))).expect("url"));
        assert!(requested(Some(&EncodingType::from("base64".to_owned()))).is_err());
    }
}
