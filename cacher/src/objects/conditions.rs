//! Conditions of a read or a copy's source on the object's ETag and Last-Modified, evaluated
//! in the order of RFC 9110 section 13.2.2, which is how S3 takes them: `If-Match`, else
//! `If-Unmodified-Since`; then `If-None-Match`, else `If-Modified-Since`. So a true `If-Match`
//! overrides a false `If-Unmodified-Since`, and a false `If-None-Match` (not modified)
//! overrides a true `If-Modified-Since`.
//!
//! Dates compare at whole seconds: that is all an HTTP date carries, and a client sending back
//! the `Last-Modified` it was given must find the object not modified since then.

use chrono::{DateTime, Utc};

use milepost_store::bare_etag;

/// An ETag condition: `*`, or a list of entity tags (quoted or not, `W/` weak or strong; S3
/// compares the opaque values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtagMatch {
    Any,
    Tags(Vec<String>),
}

impl EtagMatch {
    /// Parses an `If-Match` / `If-None-Match` header value. `None` for a value that names
    /// nothing (empty).
    pub fn parse_header(value: &str) -> Option<Self> {
        let value = value.trim();
        if value == "*" {
            return Some(Self::Any);
        }
        let tags: Vec<String> = value
            .split(',')
            .map(|tag| {
                let tag = tag.trim();
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                bare_etag(tag).to_owned()
            })
            .filter(|tag| !tag.is_empty())
            .collect();
        (!tags.is_empty()).then_some(Self::Tags(tags))
    }

    /// Whether the condition names `etag` (bare).
    pub fn matches(&self, etag: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|tag| bare_etag(tag) == etag),
        }
    }

    /// The tags named, none for `*`.
    pub fn tags(&self) -> &[String] {
        match self {
            Self::Any => &[],
            Self::Tags(tags) => tags,
        }
    }
}

/// The conditions of one read (absent ones are `None`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadConditions {
    pub if_match: Option<EtagMatch>,
    pub if_none_match: Option<EtagMatch>,
    pub if_modified_since: Option<DateTime<Utc>>,
    pub if_unmodified_since: Option<DateTime<Utc>>,
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

impl ReadConditions {
    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Evaluates the conditions against the object's `etag` and `last_modified` (unknown: the
    /// date conditions are not evaluated). `same_bytes` says whether an `If-Match` ETag other
    /// than `etag` still names the object's bytes (see `OfficeObjects`' `names_same_bytes`).
    pub fn evaluate(
        &self,
        etag: &str,
        same_bytes: bool,
        last_modified: Option<DateTime<Utc>>,
    ) -> Verdict {
        let last_modified = last_modified.map(whole_seconds);
        let since = |at: &DateTime<Utc>| whole_seconds(*at);
        match &self.if_match {
            Some(condition) => {
                if !condition.matches(etag) && !same_bytes {
                    return Verdict::PreconditionFailed;
                }
            }
            None => {
                if let (Some(at), Some(modified)) = (&self.if_unmodified_since, &last_modified) {
                    if *modified > since(at) {
                        return Verdict::PreconditionFailed;
                    }
                }
            }
        }
        match &self.if_none_match {
            Some(condition) => {
                if condition.matches(etag) {
                    return Verdict::NotModified;
                }
            }
            None => {
                if let (Some(at), Some(modified)) = (&self.if_modified_since, &last_modified) {
                    if *modified <= since(at) {
                        return Verdict::NotModified;
                    }
                }
            }
        }
        Verdict::Proceed
    }
}

/// `at` without its fraction of a second.
fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "0123456789abcdef0123456789abcdef";

    fn at(seconds: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(seconds, nanos).expect("in range")
    }

    fn tag(value: &str) -> EtagMatch {
        EtagMatch::Tags(vec![value.to_owned()])
    }

    #[test]
    fn headers_parse() {
        assert_eq!(EtagMatch::parse_header(" * "), Some(EtagMatch::Any));
        assert_eq!(
            EtagMatch::parse_header("\"a\", W/\"b\""),
            Some(EtagMatch::Tags(vec!["a".into(), "b".into()]))
        );
        assert_eq!(EtagMatch::parse_header(""), None);
    }

    #[test]
    fn dates_compare_at_whole_seconds() {
        let modified = Some(at(1_000, 700_000_000));
        let check = |conditions: ReadConditions| conditions.evaluate(ETAG, false, modified);
        assert_eq!(
            check(ReadConditions {
                if_modified_since: Some(at(1_000, 0)),
                ..ReadConditions::default()
            }),
            Verdict::NotModified
        );
        assert_eq!(
            check(ReadConditions {
                if_modified_since: Some(at(999, 0)),
                ..ReadConditions::default()
            }),
            Verdict::Proceed
        );
        assert_eq!(
            check(ReadConditions {
                if_unmodified_since: Some(at(1_000, 0)),
                ..ReadConditions::default()
            }),
            Verdict::Proceed
        );
        assert_eq!(
            check(ReadConditions {
                if_unmodified_since: Some(at(999, 0)),
                ..ReadConditions::default()
            }),
            Verdict::PreconditionFailed
        );
    }

    #[test]
    fn etag_conditions_override_dates() {
        let modified = Some(at(1_000, 0));
        let earlier = at(999, 0);
        // If-Match true overrides If-Unmodified-Since false.
        let conditions = ReadConditions {
            if_match: Some(tag(ETAG)),
            if_unmodified_since: Some(earlier),
            ..ReadConditions::default()
        };
        assert_eq!(conditions.evaluate(ETAG, false, modified), Verdict::Proceed);
        // If-None-Match false overrides If-Modified-Since true.
        let conditions = ReadConditions {
            if_none_match: Some(tag(ETAG)),
            if_modified_since: Some(earlier),
            ..ReadConditions::default()
        };
        assert_eq!(
            conditions.evaluate(ETAG, false, modified),
            Verdict::NotModified
        );
        // A failed If-Match is 412 before any If-None-Match...
        let conditions = ReadConditions {
            if_match: Some(tag("ffffffffffffffffffffffffffffffff")),
            if_none_match: Some(tag(ETAG)),
            ..ReadConditions::default()
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
        let conditions = ReadConditions {
            if_modified_since: Some(at(999, 0)),
            if_unmodified_since: Some(at(999, 0)),
            ..ReadConditions::default()
        };
        assert_eq!(conditions.evaluate(ETAG, false, None), Verdict::Proceed);
    }
}
