//! The one validation of object keys, applied where a key enters the office (a write through
//! the gateway, a read through `/data` or the gateway, a dataset's object list) and again
//! where a key becomes a file path (views). A key the office accepts can always be laid out as
//! a path under a view (`<bucket>/<key>`) on Linux, so nothing is acknowledged, or downloaded,
//! that cannot be materialized later.

use std::fmt;

/// S3's limit on a key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest file name Linux file systems take, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a key is refused. `Display` says it in words a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    Empty,
    TooLong {
        bytes: usize,
    },
    ControlCharacter,
    Backslash,
    Absolute,
    /// A trailing `/`: a directory marker, which has no file to be in a view.
    DirectoryMarker,
    EmptySegment,
    DotSegment,
    BlankSegment,
    SegmentTooLong {
        bytes: usize,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the key is empty"),
            Self::TooLong { bytes } => {
                write!(f, "the key is {bytes} bytes long; at most {MAX_KEY_BYTES}")
            }
            Self::ControlCharacter => write!(f, "the key contains a control character"),
            Self::Backslash => write!(f, "the key contains a backslash"),
            Self::Absolute => write!(f, "the key starts with `/`"),
            Self::DirectoryMarker => {
                write!(f, "the key ends with `/` (a directory marker, not a file)")
            }
            Self::EmptySegment => write!(f, "the key has an empty path segment (`//`)"),
            Self::DotSegment => write!(f, "the key has a `.` or `..` path segment"),
            Self::BlankSegment => write!(f, "the key has a path segment of only spaces"),
            Self::SegmentTooLong { bytes } => write!(
                f,
                "a path segment of the key is {bytes} bytes long; at most {MAX_SEGMENT_BYTES}"
            ),
        }
    }
}

impl std::error::Error for KeyProblem {}

/// Checks `key` against the office's rules: not empty, at most 1,024 bytes, no control
/// character or backslash, not starting or ending with `/`, and every `/`-separated segment
/// a usable file name (not empty, `.`, `..` or only whitespace; at most 255 bytes).
pub fn check_key(key: &str) -> Result<(), KeyProblem> {
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyProblem::TooLong { bytes: key.len() });
    }
    if key.chars().any(char::is_control) {
        return Err(KeyProblem::ControlCharacter);
    }
    if key.contains('\\') {
        return Err(KeyProblem::Backslash);
    }
    if key.starts_with('/') {
        return Err(KeyProblem::Absolute);
    }
    if key.ends_with('/') {
        return Err(KeyProblem::DirectoryMarker);
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(KeyProblem::EmptySegment),
            "." | ".." => return Err(KeyProblem::DotSegment),
            s if s.chars().all(char::is_whitespace) => return Err(KeyProblem::BlankSegment),
            s if s.len() > MAX_SEGMENT_BYTES => {
                return Err(KeyProblem::SegmentTooLong { bytes: s.len() })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The first pair of keys in `keys` (sorted ascending) where one is a directory of the other
/// (`a` beside `a/b`): no tree of files can hold both.
pub fn file_directory_clash<'a>(sorted_keys: &[&'a str]) -> Option<(&'a str, &'a str)> {
    // In sorted order `a/...` need not follow `a` directly (`a!` sorts between them), so the
    // keys are checked against every earlier key that is a prefix: keep a stack of them.
    let mut stack: Vec<&str> = Vec::new();
    for &key in sorted_keys {
        while let Some(&top) = stack.last() {
            if key.starts_with(top) {
                break;
            }
            stack.pop();
        }
        if let Some(&file) = stack
            .iter()
            .find(|file| key.as_bytes().get(file.len()) == Some(&b'/'))
        {
            return Some((file, key));
        }
        stack.push(key);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_are_accepted() {
        for good in [
            "drives/2026-11-01/gz-004/d1/logs/a.mcap",
            "a..b/c",
            "a b/c d.txt",
            "ünïcödé/文件.mcap",
            "a+b",
            "x",
            &"s".repeat(255),
        ] {
            assert_eq!(check_key(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn keys_that_cannot_be_files_are_refused_with_the_reason() {
        let cases: &[(&str, KeyProblem)] = &[
            ("", KeyProblem::Empty),
            (" ", KeyProblem::BlankSegment),
            ("a/ \t/b", KeyProblem::ControlCharacter),
            ("a/  /b", KeyProblem::BlankSegment),
            ("a\0b", KeyProblem::ControlCharacter),
            ("a\nb", KeyProblem::ControlCharacter),
            ("a\\b", KeyProblem::Backslash),
            ("/etc/passwd", KeyProblem::Absolute),
            ("dir/", KeyProblem::DirectoryMarker),
            ("a//b", KeyProblem::EmptySegment),
            ("a/../b", KeyProblem::DotSegment),
            ("./a", KeyProblem::DotSegment),
            ("..", KeyProblem::DotSegment),
        ];
        for (key, problem) in cases {
            assert_eq!(check_key(key), Err(*problem), "{key:?}");
        }
        let long_segment = format!("a/{}", "s".repeat(256));
        assert_eq!(
            check_key(&long_segment),
            Err(KeyProblem::SegmentTooLong { bytes: 256 })
        );
        let long_key = "abcdefgh/".repeat(114) + "x";
        assert_eq!(
            check_key(&long_key),
            Err(KeyProblem::TooLong { bytes: 1027 })
        );
        assert!(KeyProblem::Backslash.to_string().contains("backslash"));
    }

    #[test]
    fn a_file_beside_a_directory_of_its_name_is_found() {
        assert_eq!(file_directory_clash(&["a", "a/b"]), Some(("a", "a/b")));
        assert_eq!(
            file_directory_clash(&["a", "a!", "a/b"]),
            Some(("a", "a/b"))
        );
        assert_eq!(
            file_directory_clash(&["x/a", "x/a.mcap", "x/a/b"]),
            Some(("x/a", "x/a/b"))
        );
        assert_eq!(file_directory_clash(&["a", "ab", "b/c"]), None);
        assert_eq!(file_directory_clash(&["a/b", "a/c", "ab"]), None);
        assert_eq!(file_directory_clash(&[]), None);
    }
}
