//! Reading S3 answers: body streams, `Content-Range`, ETags, sizes and dates.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::errors::{chain, Ctx};
use crate::{bare_etag, StoreError, Target};

/// The body of a GET as a stream of exactly `expected` bytes, or an error.
pub(super) fn body_stream(
    target: Target,
    body: ByteStream,
    expected: u64,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    struct State {
        body: ByteStream,
        remaining: u64,
        target: Target,
        done: bool,
    }
    let state = State {
        body,
        remaining: expected,
        target,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        while !st.done {
            let item = match st.body.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) if chunk.len() as u64 > st.remaining => Err(StoreError::corrupt(
                    st.target.clone(),
                    format!("the body is longer than the {expected} bytes announced"),
                )),
                Some(Ok(chunk)) => {
                    st.remaining -= chunk.len() as u64;
                    return Some((Ok(chunk), st));
                }
                Some(Err(err)) => Err(StoreError::unavailable(
                    st.target.clone(),
                    format!("reading the body failed: {}", chain(&err)),
                )),
                None if st.remaining > 0 => Err(StoreError::unavailable(
                    st.target.clone(),
                    format!(
                        "the body ended {} bytes short of the {expected} announced",
                        st.remaining
                    ),
                )),
                None => return None,
            };
            st.done = true;
            return Some((item, st));
        }
        None
    })
    .boxed()
}

/// `bytes START-END/TOTAL` as `(START, END, TOTAL)`, if well-formed and consistent.
pub(super) fn parse_content_range(header: &str) -> Option<(u64, u64, u64)> {
    let spec = header.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total) = (
        start.trim().parse::<u64>().ok()?,
        end.trim().parse::<u64>().ok()?,
        total.trim().parse::<u64>().ok()?,
    );
    (start <= end && end < total).then_some((start, end, total))
}

pub(super) fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

pub(super) fn etag(ctx: &Ctx<'_>, etag: Option<&str>) -> Result<String, StoreError> {
    etag.map(bare_etag)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| StoreError::corrupt(ctx.target(), "the answer has no etag"))
}

pub(super) fn size(ctx: &Ctx<'_>, value: Option<i64>, what: &str) -> Result<u64, StoreError> {
    value
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| StoreError::corrupt(ctx.target(), format!("{what} is missing or negative")))
}

pub(super) fn content_length(ctx: &Ctx<'_>, len: u64) -> Result<i64, StoreError> {
    i64::try_from(len)
        .map_err(|_| StoreError::invalid(ctx.target(), format!("body of {len} bytes is too long")))
}

pub(super) fn to_chrono(time: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    time.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 0-0/10"), Some((0, 0, 10)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9, 10)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes 6-5/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }
}
