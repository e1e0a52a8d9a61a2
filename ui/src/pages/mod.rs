//! One module per page group. Handlers ask the API one GraphQL operation each (plus `me`),
//! deserialize it into a page view-model and render it.

pub mod assets;
pub mod dashboard;
pub mod datasets;
pub mod entities;
pub mod lineage;
pub mod reservations;
pub mod search;
pub mod signin;
pub mod transfers;
pub mod viewers;

use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::layout::api_error;
use crate::session::Session;
use crate::{GraphqlError, UiState};

/// Runs one operation as the session's holder; any error becomes its error page.
pub(crate) async fn fetch<T: DeserializeOwned>(
    ui: &UiState,
    session: &Session,
    query: &str,
    variables: Value,
) -> Result<T, Response> {
    ui.exec
        .execute(&session.token, query, variables)
        .await
        .into_result()
        .map_err(api_error)
}

/// Runs a mutation; errors the user can fix (BAD_INPUT, CONFLICT) come back to be shown next
/// to their field, anything else becomes its error page.
pub(crate) async fn mutate<T: DeserializeOwned>(
    ui: &UiState,
    session: &Session,
    query: &str,
    variables: Value,
) -> Result<Result<T, GraphqlError>, Response> {
    match ui
        .exec
        .execute(&session.token, query, variables)
        .await
        .into_result()
    {
        Ok(value) => Ok(Ok(value)),
        Err(error) if matches!(error.code.as_str(), "BAD_INPUT" | "CONFLICT") => Ok(Err(error)),
        Err(error) => Err(api_error(error)),
    }
}

/// The form field an API error names: `input.include[2]` → `include`, `ttlSeconds` →
/// `ttlSeconds`.
pub(crate) fn field_key(error: &GraphqlError) -> String {
    let field = error.field.as_deref().unwrap_or_default();
    let last = field.rsplit('.').next().unwrap_or(field);
    last.split('[').next().unwrap_or(last).to_owned()
}

/// The message of `error` when it concerns one of `fields`.
pub(crate) fn error_for<'a>(error: Option<&'a GraphqlError>, fields: &[&str]) -> Option<&'a str> {
    let error = error?;
    let key = field_key(error);
    fields
        .iter()
        .any(|f| *f == key)
        .then_some(error.message.as_str())
}
