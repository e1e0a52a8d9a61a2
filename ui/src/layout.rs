//! The page frame (header, navigation, sign-out), the signed-in principal, and error pages.

use axum::http::{header, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use crate::html::esc;
use crate::session::{clear_cookie, Session};
use crate::{html_response, w, GraphqlError};

/// `me { name role }`, asked by every page: what the caller may do decides what is shown.
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    pub name: String,
    pub role: String,
}

impl Me {
    /// ENGINEER and up may tag, create datasets and reserve.
    pub fn can_write(&self) -> bool {
        matches!(self.role.as_str(), "ENGINEER" | "PIPELINE" | "ADMIN")
    }

    pub fn is_admin(&self) -> bool {
        self.role == "ADMIN"
    }
}

pub const ME: &str = "me { name role }";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Search,
    Datasets,
    Reservations,
    Cache,
    Transfers,
    None,
}

/// A whole page around `body`.
pub fn frame(title: &str, nav: Nav, who: Option<(&Me, &Session)>, body: &str) -> String {
    frame_with_head(title, nav, who, body, "")
}

/// [`page`] with extra elements in `<head>` (trusted markup only).
pub fn frame_with_head(
    title: &str,
    nav: Nav,
    who: Option<(&Me, &Session)>,
    body: &str,
    head: &str,
) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    w!(
        &mut out,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="color-scheme" content="light dark"><title>{} · Milepost</title><link rel="icon" href="/assets/favicon.svg" type="image/svg+xml"><link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js" defer></script>{head}</head><body><a class="skip" href="#main">Skip to content</a><header class="top"><a class="brand" href="/">Milepost</a><nav aria-label="Main"><ul>"##,
        esc(title),
        head = head
    );
    for (item, href, label) in [
        (Nav::Search, "/", "Search"),
        (Nav::Datasets, "/datasets", "Datasets"),
        (Nav::Reservations, "/reservations", "My reservations"),
        (Nav::Cache, "/cache", "Cache"),
        (Nav::Transfers, "/transfers", "Transfers"),
    ] {
        let current = if item == nav {
            r#" aria-current="page""#
        } else {
            ""
        };
        w!(
            &mut out,
            r#"<li><a href="{href}"{current}>{label}</a></li>"#
        );
    }
    out.push_str("</ul></nav>");
    if let Some((me, session)) = who {
        w!(
            &mut out,
            r#"<div class="who"><span id="whoami">{}</span> <span class="role">{}</span><form method="post" action="/signout"><input type="hidden" name="csrf" value="{}"><button type="submit" class="link">Sign out</button></form></div>"#,
            esc(&me.name),
            esc(&me.role),
            esc(&session.csrf)
        );
    }
    w!(
        &mut out,
        r#"</header><main id="main" tabindex="-1">{body}</main></body></html>"#
    );
    out
}

/// An error page for a failure that is not a form field's.
pub fn plain_error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        r#"<h1>{}</h1><p class="error-box" role="alert">{}</p><p><a href="/">Back to search</a></p>"#,
        esc(status.canonical_reason().unwrap_or("Error")),
        esc(message)
    );
    html_response(status, frame("Error", Nav::None, None, &body))
}

pub fn status_of(code: &str) -> StatusCode {
    match code {
        "BAD_INPUT" => StatusCode::BAD_REQUEST,
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" => StatusCode::FORBIDDEN,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "CONFLICT" => StatusCode::CONFLICT,
        "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The page for an API error: an unknown or revoked token ends the session.
pub fn api_error(error: GraphqlError) -> Response {
    if error.code == "UNAUTHENTICATED" {
        let mut response = crate::session::to_signin("/");
        response
            .headers_mut()
            .insert(header::SET_COOKIE, clear_cookie());
        return response;
    }
    plain_error(status_of(&error.code), &error.message)
}

pub fn not_found(what: &str) -> Response {
    plain_error(StatusCode::NOT_FOUND, &format!("{what} does not exist."))
}
