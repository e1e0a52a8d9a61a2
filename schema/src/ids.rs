//! Generated ids and opaque pagination cursors.
//!
//! Catalog entities (drives, scenarios, runs) keep the ids their sidecars or clients give them;
//! ids this service invents (reservations, for instance) come from [`new_id`]. Cursors are
//! opaque to clients: base64url of `kind:position`, where the position is the row's stable
//! order (an auto-increment id, a member position), so a cursor of one list is refused by
//! another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng as _;

/// Lowercase RFC 4648 base32 alphabet.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Random characters in a generated id: 20 base32 characters, 100 bits.
const RANDOM_CHARS: usize = 20;

/// A new random id: `prefix`, an underscore, then 20 lowercase base32 characters (100 random
/// bits), e.g. `new_id("res")` → `res_k3v9q2m7xw4h8t6p1c5z`. A trailing underscore on the
/// prefix is not doubled.
pub fn new_id(prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('_');
    let mut bytes = [0u8; RANDOM_CHARS];
    rand::rng().fill(&mut bytes[..]);
    let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_CHARS);
    id.push_str(prefix);
    id.push('_');
    // 256 is a multiple of 32, so the low five bits of a uniform byte are uniform.
    id.extend(
        bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)])),
    );
    id
}

/// An opaque cursor for the row at `position` in a list of `kind` (e.g. `obj`).
pub fn encode_cursor(kind: &str, position: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

/// The position in a cursor made by [`encode_cursor`] for the same `kind`; `None` when the
/// cursor is malformed or belongs to another kind of list.
pub fn decode_cursor(kind: &str, cursor: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim_end_matches('=')).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let (found_kind, position) = text.split_once(':')?;
    if found_kind != kind || position.starts_with('+') {
        return None;
    }
    position.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_have_prefix_and_random_base32_tail() {
        let id = new_id("res");
        let tail = id.strip_prefix("res_").expect("prefix and underscore");
        assert_eq!(tail.len(), RANDOM_CHARS);
        assert!(tail.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
        assert!(new_id("res_").starts_with("res_") && !new_id("res_").starts_with("res__"));
        let many: HashSet<_> = (0..1000).map(|_| new_id("x")).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn cursors_round_trip_per_kind() {
        for position in [0, 1, 123, -5, i64::MAX, i64::MIN] {
            let cursor = encode_cursor("obj", position);
            assert!(cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode_cursor("obj", &cursor), Some(position));
            assert_eq!(decode_cursor("res", &cursor), None);
        }
        assert_eq!(encode_cursor("obj", 123), "b2JqOjEyMw");
    }

    #[test]
    fn invalid_cursors_are_none() {
        for bad in ["", "!!!", "b2Jq", "b2JqOg", "b2JqOjEyMw!", "b2JqOisx"] {
            assert_eq!(decode_cursor("obj", bad), None, "{bad}");
        }
        // Base64 of `obj:12x`, `obj:` and `obj:+1`.
        assert_eq!(
            decode_cursor("obj", &URL_SAFE_NO_PAD.encode("obj:12x")),
            None
        );
        assert_eq!(decode_cursor("obj", &URL_SAFE_NO_PAD.encode("obj:")), None);
        assert_eq!(
            decode_cursor("obj", &URL_SAFE_NO_PAD.encode("obj:+1")),
            None
        );
    }
}
