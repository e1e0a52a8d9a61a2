//! Sign-in state and request forgery protection.
//!
//! The session is the API token itself, in an `HttpOnly; SameSite=Strict` cookie: the server
//! keeps no session table, revoking the token ends the session, and page scripts cannot read
//! it. Every state-changing form carries a CSRF token derived from the session token with a
//! per-process key (SHA-256 of key and token), checked in constant time, and the request's
//! `Origin` (when the browser sends one) must be this server.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::{html, see_other, UiState};

pub const SESSION_COOKIE: &str = "milepost_session";

/// The signed-in caller: the token to act as, and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub csrf: String,
}

pub fn csrf_for(key: &[u8; 32], token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(b"\0csrf\0");
    hasher.update(token.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// Where to send someone who must sign in first, coming back to `path` afterwards.
pub fn to_signin(path: &str) -> Response {
    see_other(&format!("/signin{}", html::query_string(&[("next", path)])))
}

impl FromRequestParts<UiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState) -> Result<Self, Response> {
        match cookie(&parts.headers, SESSION_COOKIE) {
            Some(token) => Ok(Session {
                csrf: csrf_for(&ui.csrf_key, &token),
                token,
            }),
            None => {
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                Err(to_signin(&path))
            }
        }
    }
}

/// `Set-Cookie` for a new session. `Secure` is left to the TLS-terminating proxy (a plain
/// HTTP office server could not set it); `SameSite=Strict` keeps it off cross-site requests.
pub fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("milepost_session=; Path=/"))
}

pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("milepost_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Parsed `application/x-www-form-urlencoded` fields (a repeated name keeps its last value).
#[derive(Debug, Default)]
pub struct Form(pub HashMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        Form(pairs.into_iter().collect())
    }

    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

/// A request from another site: its `Origin` (or, without one, `Referer`) names another host.
pub fn cross_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|h| h.to_str().ok());
    match (host, origin) {
        // Browsers send `Origin: null` from sandboxed or privacy-sensitive contexts.
        (_, Some("null")) => true,
        (Some(host), Some(origin)) => {
            let authority = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default();
            !authority.eq_ignore_ascii_case(host)
        }
        // Neither header: not a browser form post from another site (they always send Origin).
        (_, None) => false,
        (None, Some(_)) => true,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a state-changing request that is cross-site or lacks this session's CSRF token.
pub fn check_post(session: &Session, headers: &HeaderMap, form: &Form) -> Result<(), Response> {
    if cross_origin(headers)
        || !constant_time_eq(form.get("csrf").as_bytes(), session.csrf.as_bytes())
    {
        return Err(crate::layout::plain_error(
            StatusCode::FORBIDDEN,
            "This form is stale or came from another site. Go back, reload the page and try again.",
        ));
    }
    Ok(())
}

/// A local path to return to after signing in (never another host), else `/`.
///
/// `next` is the value as the server sees it, percent-decoded once from the query or form.
/// It must start with one `/` and hold no `\` and no control character: browsers read `\` as
/// `/` (so `/\evil.test` is `//evil.test`), and drop tab, CR and LF anywhere in a URL (so
/// `/\t/evil.test`, sent as `/%09/evil.test`, is `//evil.test` too), a protocol-relative URL
/// naming another host.
pub fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains(|c: char| c == '\\' || c.is_control());
    if local {
        next
    } else {
        "/"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_depends_on_key_and_token() {
        let a = csrf_for(&[1; 32], "mp_a");
        assert_eq!(a.len(), 32);
        assert_ne!(a, csrf_for(&[2; 32], "mp_a"));
        assert_ne!(a, csrf_for(&[1; 32], "mp_b"));
    }

    #[test]
    fn origins_are_compared_with_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(cross_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_origin(&h));
    }

    #[test]
    fn next_stays_local() {
        for local in [
            "/",
            "/drives/x?y=1",
            "/search?q=cut-in%20left&facet=city:guangzhou",
            "/datasets/a%2Fb",
            "/drives/é",
        ] {
            assert_eq!(safe_next(local), local);
        }
        for hostile in [
            "",
            "//evil.test",
            "//evil.test/",
            "/\\evil.test",
            "\\\\evil.test",
            "/\t/evil.test",
            "/\n/evil.test",
            "/\r\n/evil.test",
            "\t//evil.test",
            "/\u{7f}/evil.test",
            "/\u{85}/evil.test",
            "/x\0",
            "\n",
            "https://evil.test",
            "https:/evil.test",
            "evil.test",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(hostile), "/", "{hostile:?}");
        }
    }

    /// `next` as it arrives in the sign-in form (and, decoded the same way, in the query):
    /// every disguise of another host falls back to `/` once percent-decoded.
    #[test]
    fn next_is_checked_after_percent_decoding() {
        for (raw, expected) in [
            ("%2Fdrives%2Fx%3Fy%3D1", "/drives/x?y=1"),
            ("/%2525", "/%25"),
            ("/%09/evil.test", "/"),
            ("%2F%09%2Fevil.test", "/"),
            ("/%0A/evil.test", "/"),
            ("/%0D%0A/evil.test", "/"),
            ("/%7F/evil.test", "/"),
            ("/%2F/evil.test", "/"),
            ("%2F%2Fevil.test", "/"),
            ("/%5Cevil.test", "/"),
            ("/%5C/evil.test", "/"),
            ("https%3A%2F%2Fevil.test", "/"),
            ("%0A", "/"),
            ("/+/evil.test", "/ /evil.test"),
        ] {
            let form = Form::parse(format!("next={raw}").as_bytes());
            assert_eq!(safe_next(form.get("next")), expected, "next={raw}");
        }
    }
}
