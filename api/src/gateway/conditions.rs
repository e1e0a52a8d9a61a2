//! Preconditions of GetObject, HeadObject and CopyObject's source on the object's ETag and
//! Last-Modified, evaluated in the order of RFC 7232 section 6, which is how S3 takes them:
//! `If-Match`, else `If-Unmodified-Since`; then `If-None-Match`, else `If-Modified-Since`.
//! So a true `If-Match` overrides a false `If-Unmodified-Since`, and a false `If-None-Match`
//! (not modified) overrides a true `If-Modified-Since`.
//!
//! Dates compare at whole seconds: that is all an HTTP date carries, and a client sending back
//! the `Last-Modified` it was given must find the object not modified since then.

use chrono::{DateTime, Utc};
use s3s::dto::{ETagCondition, Timestamp};

/// The conditions of one request (absent ones are `None`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Preconditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

/// What the conditions decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// 412 (for a read and a copy).
    PreconditionFailed,
    /// 304 for a read; a copy answers 412.
    NotModified,
}

impl Preconditions<'_> {
    /// Evaluates the conditions against the object's `etag` and `last_modified` (unknown: the
    /// date conditions are not evaluated). `same_bytes` says whether an `If-Match` ETag other
    /// than `etag` still names the object's bytes (see `Gateway::names_same_bytes`).
    pub fn evaluate(
        &self,
        etag: &str,
        same_bytes: bool,
        last_modified: Option<DateTime<Utc>>,
    ) -> Verdict {
        let last_modified = last_modified.map(whole_seconds);
        match self.if_match {
            Some(condition) => {
                if !super::condition_holds(condition, etag) && !same_bytes {
                    return Verdict::PreconditionFailed;
                }
            }
            None => {
                if let (Some(since), Some(modified)) = (self.if_unmodified_since, &last_modified) {
                    if modified > since {
                        return Verdict::PreconditionFailed;
                    }
                }
            }
        }
        match self.if_none_match {
            Some(condition) => {
                if super::condition_holds(condition, etag) {
                    return Verdict::NotModified;
                }
            }
            None => {
                if let (Some(since), Some(modified)) = (self.if_modified_since, &last_modified) {
                    if modified <= since {
                        return Verdict::NotModified;
                    }
                }
            }
        }
        Verdict::Proceed
    }
}

/// `at` without its fraction of a second.
fn whole_seconds(at: DateTime<Utc>) -> Timestamp {
    let seconds = DateTime::<Utc>::from_timestamp(at.timestamp(), 0).unwrap_or(at);
    Timestamp::from(std::time::SystemTime::from(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;

    const ETAG: &str = "0123456789abcdef0123456789abcdef";

    fn at(seconds: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(seconds, nanos).expect("in range")
    }

    fn date(seconds: i64) -> Timestamp {
        whole_seconds(at(seconds, 0))
    }

    fn tag(value: &str) -> ETagCondition {
        ETagCondition::ETag(ETag::Strong(value.to_owned()))
    }

    #[test]
    fn dates_compare_at_whole_seconds() {
        let modified = Some(at(1_000, 700_000_000));
        let same_second = date(1_000);
        let earlier = date(999);
        let check = |conditions: Preconditions<'_>| conditions.evaluate(ETAG, false, modified);
        assert_eq!(
            check(Preconditions {
                if_modified_since: Some(&same_second),
                ..Preconditions::default()
            }),
            Verdict::NotModified
        );
        assert_eq!(
            check(Preconditions {
                if_modified_since: Some(&earlier),
                ..Preconditions::default()
            }),
            Verdict::Proceed
        );
        assert_eq!(
            check(Preconditions {
                if_unmodified_since: Some(&same_second),
                ..Preconditions::default()
            }),
            Verdict::Proceed
        );
        assert_eq!(
            check(Preconditions {
                if_unmodified_since: Some(&earlier),
                ..Preconditions::default()
            }),
            Verdict::PreconditionFailed
        );
    }

    #[test]
    fn etag_conditions_override_dates() {
        let modified = Some(at(1_000, 0));
        let earlier = date(999);
        let current = tag(ETAG);
        let other = tag("ffffffffffffffffffffffffffffffff");
        // If-Match true overrides If-Unmodified-Since false.
        let conditions = Preconditions {
            if_match: Some(&current),
            if_unmodified_since: Some(&earlier),
            ..Preconditions::default()
        };
        assert_eq!(conditions.evaluate(ETAG, false, modified), Verdict::Proceed);
        // If-None-Match false overrides If-Modified-Since true.
        let conditions = Preconditions {
            if_none_match: Some(&current),
            if_modified_since: Some(&earlier),
            ..Preconditions::default()
        };
        assert_eq!(
            conditions.evaluate(ETAG, false, modified),
            Verdict::NotModified
        );
        // A failed If-Match is 412 before any If-None-Match.
        let conditions = Preconditions {
            if_match: Some(&other),
            if_none_match: Some(&current),
            ..Preconditions::default()
        };
        assert_eq!(
            conditions.evaluate(ETAG, false, modified),
            Verdict::PreconditionFailed
        );
        // ...unless the other ETag still names the same bytes.
        assert_eq!(
            conditions.evaluate(ETAG, true, modified),
            Verdict::NotModified
        );
    }

    #[test]
    fn unknown_dates_are_not_evaluated() {
        let earlier = date(999);
        let conditions = Preconditions {
            if_modified_since: Some(&earlier),
            if_unmodified_since: Some(&earlier),
            ..Preconditions::default()
        };
        assert_eq!(conditions.evaluate(ETAG, false, None), Verdict::Proceed);
    }
}
