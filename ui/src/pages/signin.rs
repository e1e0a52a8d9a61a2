//! Sign-in with an API token, and sign-out.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use crate::html::{esc, field_error, invalid_attrs};
use crate::layout::{frame, plain_error, Me, Nav};
use crate::session::{
    check_post, clear_cookie, cross_origin, safe_next, session_cookie, Form, Session,
};
use crate::{html_response, see_other, w, UiState};

#[derive(Debug, Deserialize)]
pub struct Next {
    #[serde(default)]
    next: String,
}

fn render(next: &str, error: Option<&str>) -> String {
    let mut body = String::new();
    w!(
        &mut body,
        r#"<section class="signin"><h1>Sign in</h1><p>Paste an API token. An administrator creates one with <code>milepost token create --name you --role engineer</code>.</p><form method="post" action="/signin"><input type="hidden" name="next" value="{}"><label for="token">Token</label><input id="token" name="token" type="password" autocomplete="current-password" required spellcheck="false"{}>"#,
        esc(safe_next(next)),
        invalid_attrs("token", error)
    );
    field_error(&mut body, "token", error);
    body.push_str(r#"<button type="submit">Sign in</button></form></section>"#);
    frame("Sign in", Nav::None, None, &body)
}

pub async fn form(Query(next): Query<Next>) -> Response {
    html_response(StatusCode::OK, render(&next.next, None))
}

pub async fn submit(State(ui): State<UiState>, headers: HeaderMap, body: Bytes) -> Response {
    // No session to derive a CSRF token from yet; a cross-site sign-in is refused by origin.
    if cross_origin(&headers) {
        return plain_error(
            StatusCode::FORBIDDEN,
            "Sign in from this server's own page.",
        );
    }
    let form = Form::parse(&body);
    let token = form.get("token").trim();
    let next = form.get("next");
    if token.is_empty() {
        return html_response(StatusCode::BAD_REQUEST, render(next, Some("enter a token")));
    }
    let response = ui
        .exec
        .execute(token, &format!("{{ {} }}", crate::layout::ME), json!({}))
        .await;
    match response.into_result::<serde_json::Value>() {
        Ok(data) if serde_json::from_value::<Me>(data["me"].clone()).is_ok() => {
            let mut response = see_other(safe_next(next));
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session_cookie(token));
            response
        }
        Ok(_) => html_response(
            StatusCode::BAD_REQUEST,
            render(
                next,
                Some("the server could not say who this token belongs to"),
            ),
        ),
        Err(error) => {
            let message = if error.code == "UNAUTHENTICATED" {
                "this token is unknown or revoked".to_owned()
            } else {
                error.message
            };
            html_response(StatusCode::BAD_REQUEST, render(next, Some(&message)))
        }
    }
}

pub async fn signout(session: Session, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = check_post(&session, &headers, &Form::parse(&body)) {
        return refused;
    }
    let mut response = see_other("/signin");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie());
    response
}
