//! Sorting aws-sdk-s3 errors into [`StoreError`]s.

use std::error::Error;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::{ByteRange, StoreError, StoreErrorKind, Target};

/// The call being made, for error messages.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ctx<'a> {
    pub op: &'static str,
    pub bucket: &'a str,
    pub key: &'a str,
    /// The range asked for, on `get`.
    pub range: Option<ByteRange>,
    /// The ETag pinned with `If-Match`, on `get`.
    pub if_match: Option<&'a str>,
}

impl<'a> Ctx<'a> {
    pub fn new(op: &'static str, bucket: &'a str, key: &'a str) -> Self {
        Self {
            op,
            bucket,
            key,
            range: None,
            if_match: None,
        }
    }

    pub fn target(&self) -> Target {
        Target::new(self.op, self.bucket, self.key)
    }
}

/// Sorts an SDK error: service errors by status and code ([`classify`]), timeouts and
/// connection failures as [`Unavailable`](StoreErrorKind::Unavailable), requests the SDK could
/// not build or send as given as [`Invalid`](StoreErrorKind::Invalid).
pub(super) fn sdk_error<E>(ctx: &Ctx<'_>, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => service_error(
            ctx,
            service.raw().status().as_u16(),
            service.err().code(),
            service.err().message(),
        ),
        SdkError::TimeoutError(_) => StoreError::unavailable(ctx.target(), "timed out"),
        SdkError::DispatchFailure(failure) if failure.is_user() => {
            StoreError::invalid(ctx.target(), format!("cannot send: {}", chain(&err)))
        }
        SdkError::DispatchFailure(_) => StoreError::unavailable(ctx.target(), chain(&err)),
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            StoreError::unavailable(
                ctx.target(),
                format!("unreadable response (http {status}): {}", chain(&err)),
            )
        }
        SdkError::ConstructionFailure(_) => StoreError::invalid(ctx.target(), chain(&err)),
        _ => StoreError::unavailable(ctx.target(), chain(&err)),
    }
}

/// A [`StoreError`] for an error answer of the upstream.
pub(super) fn service_error(
    ctx: &Ctx<'_>,
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
) -> StoreError {
    let target = ctx.target();
    let code_text = match code {
        Some(code) if !code.is_empty() => code.to_owned(),
        _ => format!("http {status}"),
    };
    let with_message = match message {
        Some(message) if !message.is_empty() => format!("{code_text}: {message}"),
        _ => code_text.clone(),
    };
    match classify(status, code) {
        StoreErrorKind::NotFound => StoreError::NotFound {
            target,
            what: match code {
                Some("NoSuchKey") => "no such key".to_owned(),
                Some("NoSuchBucket") => "no such bucket".to_owned(),
                Some("NoSuchUpload") => "no such upload".to_owned(),
                _ => code_text,
            },
        },
        StoreErrorKind::PreconditionFailed => StoreError::PreconditionFailed {
            target,
            detail: match ctx.if_match {
                Some(etag) => format!("the object no longer has etag {etag}"),
                None => with_message,
            },
        },
        StoreErrorKind::InvalidRange => StoreError::InvalidRange {
            target,
            range: ctx.range.unwrap_or(ByteRange::All).to_string(),
        },
        StoreErrorKind::Denied => StoreError::Denied {
            target,
            code: code_text,
        },
        StoreErrorKind::Throttled => StoreError::Throttled {
            target,
            code: code_text,
        },
        StoreErrorKind::Unavailable => StoreError::unavailable(target, with_message),
        StoreErrorKind::Corrupt => StoreError::corrupt(target, with_message),
        StoreErrorKind::Invalid | StoreErrorKind::TooLarge => {
            StoreError::invalid(target, format!("rejected by the upstream: {with_message}"))
        }
    }
}

/// Sorts an S3 error answer by its code, then by its HTTP status.
pub(super) fn classify(status: u16, code: Option<&str>) -> StoreErrorKind {
    let by_code = match code.unwrap_or_default() {
        "NoSuchKey" | "NoSuchBucket" | "NoSuchUpload" | "NoSuchVersion" | "NotFound" => {
            Some(StoreErrorKind::NotFound)
        }
        "PreconditionFailed" => Some(StoreErrorKind::PreconditionFailed),
        "InvalidRange" => Some(StoreErrorKind::InvalidRange),
        "AccessDenied"
        | "AllAccessDisabled"
        | "AccountProblem"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "InvalidSecurity" => Some(StoreErrorKind::Denied),
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "TooManyRequestsException"
        | "RequestThrottled" => Some(StoreErrorKind::Throttled),
        // RequestTimeout: the upload was too slow for S3; IncompleteBody: the body was cut off;
        // OperationAborted: a conflicting operation was in progress. All worth a retry.
        "InternalError" | "ServiceUnavailable" | "RequestTimeout" | "IncompleteBody"
        | "OperationAborted" => Some(StoreErrorKind::Unavailable),
        "BadDigest" => Some(StoreErrorKind::Corrupt),
        _ => None,
    };
    by_code.unwrap_or(match status {
        404 => StoreErrorKind::NotFound,
        412 => StoreErrorKind::PreconditionFailed,
        416 => StoreErrorKind::InvalidRange,
        401 | 403 => StoreErrorKind::Denied,
        429 => StoreErrorKind::Throttled,
        408 | 500..=599 => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Invalid,
    })
}

/// `err` and its sources, joined with `: ` (the SDK's top-level texts, such as "dispatch
/// failure", say little on their own).
pub(super) fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their source's text; do not say it twice.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    #[test]
    fn answers_are_sorted_by_code_then_status() {
        use StoreErrorKind::*;
        let cases: &[(u16, Option<&str>, StoreErrorKind)] = &[
            (404, Some("NoSuchKey"), NotFound),
            (404, Some("NoSuchBucket"), NotFound),
            (404, Some("NoSuchUpload"), NotFound),
            (404, None, NotFound), // HEAD answers carry no body, hence no code
            (412, Some("PreconditionFailed"), PreconditionFailed),
            (412, None, PreconditionFailed),
            (416, Some("InvalidRange"), InvalidRange),
            (416, None, InvalidRange),
            (403, Some("AccessDenied"), Denied),
            (403, Some("SignatureDoesNotMatch"), Denied),
            (403, Some("InvalidAccessKeyId"), Denied),
            (403, None, Denied),
            (503, Some("SlowDown"), Throttled),
            (429, None, Throttled),
            (400, Some("ThrottlingException"), Throttled),
            (503, None, Unavailable),
            (503, Some("ServiceUnavailable"), Unavailable),
            (500, Some("InternalError"), Unavailable),
            (502, None, Unavailable),
            (400, Some("RequestTimeout"), Unavailable),
            (400, Some("BadDigest"), Corrupt),
            (400, Some("InvalidArgument"), Invalid),
            (400, Some("EntityTooSmall"), Invalid),
            (409, Some("BucketNotEmpty"), Invalid),
            (301, Some("PermanentRedirect"), Invalid),
        ];
        for &(status, code, kind) in cases {
            assert_eq!(classify(status, code), kind, "{status} {code:?}");
        }
    }

    fn service(status: u16, code: &str) -> SdkError<GetObjectError, HttpResponse> {
        let err = GetObjectError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("The specified key does not exist.")
                .build(),
        );
        let raw = HttpResponse::new(status.try_into().expect("status"), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn sdk_errors_become_store_errors_naming_the_call() {
        let mut ctx = Ctx::new("get", "fleet", "drives/a.mcap");
        ctx.range = Some(ByteRange::From(10));
        ctx.if_match = Some("abc");

        let err = sdk_error(&ctx, service(404, "NoSuchKey"));
        assert_eq!(err.kind(), StoreErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "get s3://fleet/drives/a.mcap: not found (no such key)"
        );

        let err = sdk_error(&ctx, service(416, "InvalidRange"));
        assert_eq!(err.kind(), StoreErrorKind::InvalidRange);
        assert!(err.to_string().contains("bytes=10-"), "{err}");

        let err = sdk_error(&ctx, service(412, "PreconditionFailed"));
        assert_eq!(err.kind(), StoreErrorKind::PreconditionFailed);
        assert!(err.to_string().contains("abc"), "{err}");

        let err = sdk_error(&ctx, service(503, "SlowDown"));
        assert_eq!(err.kind(), StoreErrorKind::Throttled);
        assert!(err.is_retryable());

        let err: SdkError<GetObjectError, HttpResponse> = SdkError::timeout_error("too slow");
        assert_eq!(sdk_error(&ctx, err).kind(), StoreErrorKind::Unavailable);

        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let err: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(reset.into()));
        let err = sdk_error(&ctx, err);
        assert_eq!(err.kind(), StoreErrorKind::Unavailable);
        assert!(err.to_string().contains("connection reset"), "{err}");

        let err: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::user("bad uri".into()));
        assert_eq!(sdk_error(&ctx, err).kind(), StoreErrorKind::Invalid);

        let err: SdkError<GetObjectError, HttpResponse> =
            SdkError::construction_failure("missing key");
        assert_eq!(sdk_error(&ctx, err).kind(), StoreErrorKind::Invalid);
    }
}
