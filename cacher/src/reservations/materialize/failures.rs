//! What a client reads about a failed materialization: each failed object and why, without
//! paths or internals (those are logged), and which failures stop the other fetches.

use crate::cache::{CacheError, CacheErrorKind, ObjectKey};

/// How many failed objects a reservation's `error` names before "and N more".
pub const MAX_NAMED_FAILURES: usize = 10;

/// Whether `err` means the cache is shutting down (not the object's fault).
pub(super) fn is_interrupted(err: &CacheError) -> bool {
    match err {
        CacheError::Interrupted { .. } => true,
        CacheError::Shared(inner) => is_interrupted(inner),
        _ => false,
    }
}

/// What a client reads about a failed object: no paths, no internals (logged instead).
fn describe_failure(object: &ObjectKey, err: &CacheError) -> String {
    let why = match err.kind() {
        CacheErrorKind::PreconditionFailed => format!(
            "changed upstream since the manifest was frozen (the manifest has etag {})",
            object.etag
        ),
        CacheErrorKind::NotFound => "no longer exists upstream".to_owned(),
        CacheErrorKind::Corrupt => {
            "the downloaded bytes failed verification (size or checksum)".to_owned()
        }
        CacheErrorKind::Full => err.to_string(),
        CacheErrorKind::Upstream => {
            "the upstream store failed (unavailable, throttled or denied) after retries".to_owned()
        }
        CacheErrorKind::InvalidRange | CacheErrorKind::Invalid => err.to_string(),
        CacheErrorKind::Io => "the office cache's disk or database failed".to_owned(),
    };
    format!("{object}: {why}")
}

/// Failures that say nothing about the other objects: keep going to name them all. Others
/// (cache full, disk, upstream down) stop new fetches.
pub(super) fn is_object_specific(kind: CacheErrorKind) -> bool {
    matches!(
        kind,
        CacheErrorKind::PreconditionFailed
            | CacheErrorKind::NotFound
            | CacheErrorKind::Corrupt
            | CacheErrorKind::InvalidRange
            | CacheErrorKind::Invalid
    )
}

pub(super) fn failure_message(
    total: usize,
    failures: &[(ObjectKey, CacheError)],
    skipped: usize,
) -> String {
    let mut message = format!(
        "{} of {total} objects could not be materialized: ",
        failures.len()
    );
    let named: Vec<String> = failures
        .iter()
        .take(MAX_NAMED_FAILURES)
        .map(|(object, err)| describe_failure(object, err))
        .collect();
    message.push_str(&named.join("; "));
    if failures.len() > MAX_NAMED_FAILURES {
        message.push_str(&format!(
            "; and {} more",
            failures.len() - MAX_NAMED_FAILURES
        ));
    }
    if skipped > 0 {
        message.push_str(&format!(
            " ({skipped} objects were not attempted after that failure)"
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, size: u64) -> ObjectKey {
        ObjectKey::new("b", name, "e", size)
    }

    #[test]
    fn failure_messages_name_at_most_ten_objects() {
        let failures: Vec<_> = (0..13)
            .map(|i| {
                (
                    key(&format!("k{i}"), 1),
                    CacheError::NotCached {
                        object: format!("s3://b/k{i}"),
                    },
                )
            })
            .collect();
        let message = failure_message(20, &failures, 2);
        assert!(
            message.starts_with(
                "13 of 20 objects could not be materialized: s3://b/k0: no longer exists upstream"
            ),
            "{message}"
        );
        assert!(message.contains("s3://b/k9"), "{message}");
        assert!(!message.contains("s3://b/k10"), "{message}");
        assert!(message.contains("and 3 more"), "{message}");
        assert!(
            message.contains("2 objects were not attempted"),
            "{message}"
        );
    }
}
