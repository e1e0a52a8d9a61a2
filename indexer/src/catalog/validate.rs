//! Input validation shared by every way records enter the catalog. Each check names the field
//! (as a GraphQL input path such as `input.scenarios[2].end`) and the rule it broke.

use chrono::{DateTime, Utc};

use crate::error::{CatalogError, CatalogResult};

pub const MAX_ID_LEN: usize = 128;
pub const MAX_TEXT_LEN: usize = 256;
pub const MAX_DESCRIPTION_LEN: usize = 8192;
pub const MAX_TAGS: usize = 64;
pub const MAX_LIST_ITEMS: usize = 10_000;

/// Ids appear in S3 keys (`drives/<date>/<vehicle>/<id>/`), so they are limited to characters
/// that need no escaping anywhere and can never form a path step of their own.
pub fn identifier(field: &str, value: &str) -> CatalogResult<()> {
    if value.is_empty() {
        return Err(CatalogError::bad_input(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(CatalogError::bad_input(
            field,
            format!("at most {MAX_ID_LEN} characters, got {}", value.len()),
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if !value.chars().all(allowed) || value.starts_with('.') {
        return Err(CatalogError::bad_input(
            field,
            format!(
                "only letters, digits and - _ . : are allowed (not starting with .), got {:?}",
                truncate_for_message(value)
            ),
        ));
    }
    Ok(())
}

/// Free text: bounded, no control characters. Empty is refused when `required`.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> CatalogResult<()> {
    if required && value.trim().is_empty() {
        return Err(CatalogError::bad_input(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(CatalogError::bad_input(
            field,
            format!("at most {max} characters, got {chars}"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(CatalogError::bad_input(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn optional_text(field: &str, value: Option<&str>, max: usize) -> CatalogResult<()> {
    value.map_or(Ok(()), |v| text(field, v, max, true))
}

/// Tags are short labels; duplicates are dropped and order kept.
pub fn tags(field: &str, values: Option<&[String]>) -> CatalogResult<Vec<String>> {
    let values = values.unwrap_or_default();
    if values.len() > MAX_TAGS {
        return Err(CatalogError::bad_input(
            field,
            format!("at most {MAX_TAGS} tags, got {}", values.len()),
        ));
    }
    let mut seen = Vec::with_capacity(values.len());
    for (i, tag) in values.iter().enumerate() {
        text(&format!("{field}[{i}]"), tag, 64, true)?;
        let tag = tag.trim().to_owned();
        if !seen.contains(&tag) {
            seen.push(tag);
        }
    }
    Ok(seen)
}

pub fn list_len<T>(field: &str, values: &[T]) -> CatalogResult<()> {
    if values.len() > MAX_LIST_ITEMS {
        return Err(CatalogError::bad_input(
            field,
            format!("at most {MAX_LIST_ITEMS} entries, got {}", values.len()),
        ));
    }
    Ok(())
}

/// `end` must not be before `start`.
pub fn time_order(
    end_field: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    start_field: &str,
) -> CatalogResult<()> {
    if end < start {
        return Err(CatalogError::bad_input(
            end_field,
            format!(
                "{} is before {start_field} {}",
                end.to_rfc3339(),
                start.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// A point in time that must fall within a drive.
pub fn within(
    field: &str,
    at: DateTime<Utc>,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
) -> CatalogResult<()> {
    if at < started || at > ended {
        return Err(CatalogError::bad_input(
            field,
            format!(
                "{} is outside the drive ({} to {})",
                at.to_rfc3339(),
                started.to_rfc3339(),
                ended.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// S3 bucket naming rules (the subset every S3 implementation accepts).
pub fn bucket(field: &str, value: &str) -> CatalogResult<()> {
    let ok = (3..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(CatalogError::bad_input(
            field,
            format!(
                "expected an S3 bucket name (3-63 lowercase letters, digits, - and .), got {:?}",
                truncate_for_message(value)
            ),
        ))
    }
}

/// A key prefix inside a bucket: relative, no `..` steps, ending in `/` (added if missing).
pub fn prefix(field: &str, value: &str) -> CatalogResult<String> {
    text(field, value, 1024, true)?;
    let escapes = value.starts_with('/')
        || value.contains('\\')
        || value.split('/').any(|step| step == ".." || step == ".");
    if escapes {
        return Err(CatalogError::bad_input(
            field,
            format!(
                "expected a relative key prefix without . or .. steps, got {:?}",
                truncate_for_message(value)
            ),
        ));
    }
    Ok(if value.ends_with('/') {
        value.to_owned()
    } else {
        format!("{value}/")
    })
}

pub fn non_negative(field: &str, value: Option<f64>) -> CatalogResult<()> {
    match value {
        Some(v) if !v.is_finite() || v < 0.0 => Err(CatalogError::bad_input(
            field,
            format!("expected a number of zero or more, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// Error messages quote what was sent, but never megabytes of it.
fn truncate_for_message(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.chars().count() <= SHOWN {
        value.to_owned()
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(identifier("id", "drv-2026-11-01_gz-004.a").is_ok());
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "x\0"] {
            let err = identifier("input.id", bad).expect_err(bad);
            assert!(err.to_string().starts_with("input.id:"), "{err}");
        }
        assert!(identifier("id", &"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn huge_text_is_refused_with_its_length_not_echoed() {
        let label = "x".repeat(1 << 20);
        let err = text("input.label", &label, MAX_TEXT_LEN, true).expect_err("too long");
        let message = err.to_string();
        assert!(
            message.contains("1048576") && message.len() < 200,
            "{message}"
        );
    }

    #[test]
    fn prefixes_cannot_escape() {
        assert_eq!(prefix("p", "runs/r1").expect("ok"), "runs/r1/");
        for bad in ["/abs", "a/../b", "..", "a\\b", "./a"] {
            assert!(prefix("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets() {
        assert!(bucket("b", "fleet").is_ok());
        for bad in ["ab", "Fleet", "-fleet", "fleet_1", &"a".repeat(64)] {
            assert!(bucket("b", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_are_deduplicated() {
        let tags = tags("t", Some(&["a".to_owned(), "b".to_owned(), "a".to_owned()])).expect("ok");
        assert_eq!(tags, vec!["a", "b"]);
        assert!(super::tags("t", Some(&[String::new()])).is_err());
    }
}
