//! HTML building blocks. Every page is a `String` built with `write!`; any text that did not
//! come from this crate goes through [`esc`] (element content and attribute values alike, so
//! attributes are always double-quoted) or [`url`] (a path or query component) first.

use std::fmt::{self, Display, Write as _};

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Text escaped for HTML element content and double-quoted attribute values.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, c) in self.0.char_indices() {
            let replacement = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(replacement)?;
            last = i + c.len_utf8();
        }
        f.write_str(&self.0[last..])
    }
}

pub fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

/// Characters left alone in a URL component: RFC 3986's unreserved set.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment or query value, percent-encoded (the result is also safe inside an HTML
/// attribute: it holds no `&`, `<`, `"` or `'`).
pub fn url(component: &str) -> String {
    utf8_percent_encode(component, COMPONENT).to_string()
}

/// A key path (`drives/x/y.mcap`) with its `/` kept.
pub fn url_path(path: &str) -> String {
    path.split('/').map(url).collect::<Vec<_>>().join("/")
}

/// A query string from pairs, empty values left out.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", url(k), url(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Bytes in binary units, three significant digits.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", n.max(0))
    } else if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else if value >= 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

pub fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "0%".to_owned()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

/// A duration in seconds as `1h 02m`, `3m 05s` or `42s`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A `<time>` element showing UTC minutes.
pub fn time(at: &DateTime<Utc>) -> String {
    format!(
        r#"<time datetime="{}">{}</time>"#,
        at.to_rfc3339(),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

pub fn date(at: &DateTime<Utc>) -> String {
    format!(
        r#"<time datetime="{}">{}</time>"#,
        at.to_rfc3339(),
        at.format("%Y-%m-%d")
    )
}

/// Appends formatted text; writing to a `String` cannot fail.
pub fn push(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

/// `w!(out, "...", args)`: `write!` into a String without a Result to ignore.
#[macro_export]
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        $crate::html::push($out, format_args!($($arg)*))
    };
}

/// The error for one form field, if any, as a paragraph referenced by `aria-describedby`.
pub fn field_error(out: &mut String, id: &str, error: Option<&str>) {
    if let Some(message) = error {
        w!(
            out,
            r#"<p class="field-error" id="{}-error" role="alert">{}</p>"#,
            esc(id),
            esc(message)
        );
    }
}

/// `aria-invalid` and `aria-describedby` for a field with an error.
pub fn invalid_attrs(id: &str, error: Option<&str>) -> String {
    match error {
        Some(_) => format!(
            r#" aria-invalid="true" aria-describedby="{}-error""#,
            esc(id)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#).to_string(),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(esc("plain é").to_string(), "plain é");
    }

    #[test]
    fn urls_encode_everything_but_unreserved() {
        assert_eq!(url("city:gz \"a\"&b"), "city%3Agz%20%22a%22%26b");
        assert_eq!(url_path("drives/a b/c.mcap"), "drives/a%20b/c.mcap");
        assert_eq!(query_string(&[("q", "x y"), ("after", "")]), "?q=x%20y");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.00 GiB");
        assert_eq!(duration(3725), "1h 02m");
    }
}
