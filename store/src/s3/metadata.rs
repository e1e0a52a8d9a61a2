//! [`ObjectMetadata`] in S3 requests (PutObject, CreateMultipartUpload) and answers
//! (HeadObject, GetObject).

use aws_sdk_s3::config::http::HttpRequest;
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};

use super::errors::Ctx;
use crate::{ObjectMetadata, StoreError};

/// How an object's `Expires` goes out.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Expires {
    Absent,
    /// An HTTP date the SDK's typed header writes back exactly as given.
    Date(DateTime),
    /// Any other string (not a date, or one the SDK would rewrite: a wrong weekday, another
    /// date format), sent as it is: S3 stores and returns the header it was given (which is
    /// why the SDK reads it back as a string), and so must the office.
    Raw(String),
}

impl Expires {
    /// The `Expires` of `metadata`; [`Invalid`](crate::StoreErrorKind::Invalid) for
    /// a value no HTTP header can carry.
    pub(super) fn of(ctx: &Ctx<'_>, metadata: &ObjectMetadata) -> Result<Self, StoreError> {
        let Some(value) = metadata.expires.as_deref() else {
            return Ok(Self::Absent);
        };
        if let Ok(date) = DateTime::from_str(value, DateTimeFormat::HttpDate) {
            if date
                .fmt(DateTimeFormat::HttpDate)
                .is_ok_and(|again| again == value)
            {
                return Ok(Self::Date(date));
            }
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(StoreError::invalid(
                ctx.target(),
                format!(
                    "expires `{}` is not a valid header value",
                    value.escape_debug()
                ),
            ));
        }
        Ok(Self::Raw(value.to_owned()))
    }

    /// For the typed header.
    pub(super) fn date(&self) -> Option<DateTime> {
        match self {
            Self::Date(date) => Some(*date),
            Self::Absent | Self::Raw(_) => None,
        }
    }

    /// For a value that is no HTTP date: sets the header on the request before it is signed.
    pub(super) fn raw(&self) -> Option<impl Fn(&mut HttpRequest) + Send + Sync + 'static> {
        let Self::Raw(value) = self else {
            return None;
        };
        let value = value.clone();
        Some(move |request: &mut HttpRequest| {
            // Checked in `of`: visible ASCII, which a header value always takes.
            if let Err(err) = request.headers_mut().try_insert("expires", value.clone()) {
                tracing::warn!(error = %err, "cannot set the expires header of an upload");
            }
        })
    }
}

/// Sets the standard headers and the user metadata of an [`ObjectMetadata`] (`$metadata`) on
/// a PutObject or CreateMultipartUpload request (`$request`, a fluent builder), `Expires` as
/// [`Expires::date`] of `$expires` (the raw case goes through `customize`).
macro_rules! with_metadata {
    ($request:expr, $metadata:expr, $expires:expr) => {{
        let metadata: &ObjectMetadata = $metadata;
        $request
            .set_content_type(metadata.content_type.clone())
            .set_cache_control(metadata.cache_control.clone())
            .set_content_disposition(metadata.content_disposition.clone())
            .set_content_encoding(metadata.content_encoding.clone())
            .set_content_language(metadata.content_language.clone())
            .set_expires($expires.date())
            .set_metadata((!metadata.user.is_empty()).then(|| {
                metadata
                    .user
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect()
            }))
    }};
}
pub(super) use with_metadata;

/// The [`ObjectMetadata`] of a HeadObject or GetObject answer (`$out`).
macro_rules! object_metadata {
    ($out:expr) => {{
        let out = &$out;
        ObjectMetadata {
            content_type: out.content_type().map(str::to_owned),
            cache_control: out.cache_control().map(str::to_owned),
            content_disposition: out.content_disposition().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            content_language: out.content_language().map(str::to_owned),
            expires: out.expires_string().map(str::to_owned),
            user: out
                .metadata()
                .map(|user| ObjectMetadata::user_from(user.iter()))
                .unwrap_or_default(),
        }
    }};
}
pub(super) use object_metadata;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_goes_out_as_given() {
        let ctx = Ctx::new("put", "b", "k");
        let with = |expires: &str| ObjectMetadata {
            expires: Some(expires.to_owned()),
            ..ObjectMetadata::default()
        };
        assert_eq!(
            Expires::of(&ctx, &ObjectMetadata::default()).expect("none"),
            Expires::Absent
        );
        let date = Expires::of(&ctx, &with("Tue, 01 Dec 2026 16:00:00 GMT")).expect("date");
        let formatted = date
            .date()
            .expect("typed")
            .fmt(DateTimeFormat::HttpDate)
            .expect("format");
        assert_eq!(formatted, "Tue, 01 Dec 2026 16:00:00 GMT");
        assert!(date.raw().is_none());
        // Not a date, or a date the SDK would write otherwise (1 Dec 2026 is a Tuesday; a
        // single-digit day): sent as given.
        for odd in [
            "0",
            "Thu, 01 Dec 2026 16:00:00 GMT",
            "Tue, 1 Dec 2026 16:00:00 GMT",
        ] {
            let raw = Expires::of(&ctx, &with(odd)).expect("raw");
            assert_eq!(raw, Expires::Raw(odd.to_owned()));
            assert!(raw.date().is_none() && raw.raw().is_some());
        }
        let err = Expires::of(&ctx, &with("soon\r\nx-amz-acl: public-read")).expect_err("bad");
        assert_eq!(err.kind(), crate::StoreErrorKind::Invalid);
    }
}
