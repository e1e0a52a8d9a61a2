//! The office's [`ObjectError`]s as S3 XML errors. The code and the status come from the
//! error's kind ([`milepost_cacher::objects::ObjectErrorKind`] chooses both, exhaustively, in
//! one place); the message is the client message (internals stay in the log under the
//! incident id). A 304 carries the object's ETag and Last-Modified, as RFC 9110 section
//! 15.4.5 wants.

use milepost_cacher::objects::ObjectError;
use s3s::dto::{Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode};

/// `err` as the S3 error a client reads.
pub fn object(err: ObjectError) -> S3Error {
    let kind = err.kind();
    let code = S3ErrorCode::from_bytes(kind.s3_code().as_bytes())
        .unwrap_or_else(|| S3ErrorCode::Custom(kind.s3_code().into()));
    let mut s3 = match err.unchanged() {
        Some(_) => S3Error::new(code),
        None => S3Error::with_message(code, err.message().to_owned()),
    };
    if let Ok(status) = http::StatusCode::from_u16(kind.http_status()) {
        s3.set_status_code(status);
    }
    if let Some(unchanged) = err.unchanged() {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&format!("\"{}\"", unchanged.etag)) {
            headers.insert(http::header::ETAG, value);
        }
        if let Some(at) = unchanged.last_modified {
            let at = Timestamp::from(std::time::SystemTime::from(at));
            let mut date = Vec::new();
            if at.format(TimestampFormat::HttpDate, &mut date).is_ok() {
                if let Ok(value) = http::HeaderValue::from_bytes(&date) {
                    headers.insert(http::header::LAST_MODIFIED, value);
                }
            }
        }
        s3.set_headers(headers);
    }
    s3
}
