#![doc = include_str!("../README.md")]
// Handlers return a ready `Response` as their error (a redirect to sign in, an error page):
// that is axum's idiom, and these errors are built once per request, not passed around.
#![expect(
    clippy::result_large_err,
    reason = "an early-return Response is the handler's answer"
)]

pub mod html;
mod layout;
mod pages;
mod session;

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use session::SESSION_COOKIE;

/// One error of a GraphQL response, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlError {
    pub message: String,
    /// `extensions.code`: BAD_INPUT, UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, CONFLICT,
    /// UNAVAILABLE or INTERNAL.
    pub code: String,
    /// `extensions.field`: the input the API rejected, when it names one.
    pub field: Option<String>,
}

/// `data` (null when execution did not start) and `errors` of a GraphQL response.
#[derive(Debug, Clone, Default)]
pub struct GraphqlResponse {
    pub data: Value,
    pub errors: Vec<GraphqlError>,
}

impl GraphqlResponse {
    /// Reads a JSON GraphQL response body (`{"data": ..., "errors": [...]}`).
    pub fn from_json(body: Value) -> GraphqlResponse {
        let errors = body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| GraphqlError {
                        message: e["message"].as_str().unwrap_or("error").to_owned(),
                        code: e["extensions"]["code"]
                            .as_str()
                            .unwrap_or("INTERNAL")
                            .to_owned(),
                        field: e["extensions"]["field"].as_str().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default();
        GraphqlResponse {
            data: body.get("data").cloned().unwrap_or(Value::Null),
            errors,
        }
    }

    /// The data as a page's view-model, or the first error when there is one.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, GraphqlError> {
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        serde_json::from_value(self.data).map_err(|err| GraphqlError {
            message: format!("unexpected response shape: {err}"),
            code: "INTERNAL".to_owned(),
            field: None,
        })
    }
}

/// How the web catalog talks to the API: GraphQL operations executed in-process against the
/// same schema as `POST /graphql`, as the holder of `token`, so authentication, roles and
/// validation are exactly the API's.
#[async_trait]
pub trait GraphqlExecutor: Send + Sync + 'static {
    async fn execute(&self, token: &str, query: &str, variables: Value) -> GraphqlResponse;

    /// An object as `GET /data/{bucket}/{key}` serves it to the holder of `token`.
    async fn object(&self, token: &str, bucket: &str, key: &str) -> Response;
}

/// What the pages need to know about the deployment beyond the API.
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    /// The upstream S3 endpoint, for copyable `aws s3` commands (none: AWS's default).
    pub s3_endpoint: Option<String>,
    /// Viewers MCAP logs link to: (name, URL template with `{url}`), from `ui.viewer_urls`.
    pub viewers: Vec<(String, String)>,
    /// The base URL browsers reach the server at (`server.public_url`); none: the `Host`
    /// header of the request.
    pub public_url: Option<String>,
}

impl UiSettings {
    /// The viewers' names, in the order their links are shown.
    pub fn viewer_names(&self) -> Vec<String> {
        self.viewers.iter().map(|(name, _)| name.clone()).collect()
    }
}

pub(crate) struct Ui {
    pub exec: Arc<dyn GraphqlExecutor>,
    pub settings: UiSettings,
    /// Key of the CSRF tokens derived from session tokens; new per process.
    pub csrf_key: [u8; 32],
}

pub(crate) type UiState = Arc<Ui>;

/// The web catalog's routes, to be merged into the server's router.
pub fn router(exec: Arc<dyn GraphqlExecutor>, settings: UiSettings) -> Router {
    let state: UiState = Arc::new(Ui {
        exec,
        settings,
        csrf_key: rand::random(),
    });
    use pages::*;
    Router::new()
        .route("/", get(search::page))
        .route("/signin", get(signin::form).post(signin::submit))
        .route("/signout", post(signin::signout))
        .route("/drives/{id}", get(entities::drive))
        .route("/drives/{id}/tag", post(entities::tag_scenario))
        .route("/runs/{id}", get(entities::run))
        .route("/scenarios/{id}", get(entities::scenario))
        .route("/datasets", get(datasets::list))
        .route("/datasets/{name}", get(datasets::page))
        .route("/files/{bucket}/{*key}", get(datasets::file))
        .route("/open/{viewer}/{bucket}/{*key}", get(viewers::open))
        .route("/presign/{bucket}/{*key}", get(viewers::presigned))
        .route(
            "/new-dataset",
            get(datasets::new_form).post(datasets::new_submit),
        )
        .route("/reserve", post(reservations::reserve))
        .route("/reservations", get(reservations::list))
        .route("/reservations/{id}", get(reservations::page))
        .route("/reservations/{id}/progress", get(reservations::progress))
        .route("/reservations/{id}/extend", post(reservations::extend))
        .route("/reservations/{id}/release", post(reservations::release))
        .route("/cache", get(dashboard::cache))
        .route("/transfers", get(transfers::page))
        .route("/transfers/policy", post(transfers::set_policy))
        .route("/assets/app.css", get(assets::css))
        .route("/assets/app.js", get(assets::js))
        .route("/assets/favicon.svg", get(assets::icon))
        .route("/favicon.ico", get(assets::icon))
        .with_state(state)
}

/// Headers every page carries: no caching of signed-in pages, and a policy that allows only
/// this server's own scripts and styles (no inline script can run even if escaping failed).
pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A 303 to a local path (after a POST, so a reload does not repeat it).
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
