//! The GraphQL endpoint: schema with depth and complexity limits, the POST handler (auth, body
//! parsing, error codes) and GraphiQL on GET.

mod cluster;
mod dataset_diff;
pub mod datasets;
mod inputs;
mod insights;
pub mod introspection;
mod lineage;
mod mutation;
mod presign;
mod query;
pub mod scalars;
mod search;
pub mod transfers;
mod types;
mod workers;

use std::sync::Arc;

use async_graphql::{MergedObject, Schema, ServerError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{graphql_error_body, ApiError, ApiResult, ErrorCode};

pub use mutation::Mutation;
pub use query::Query;

#[derive(MergedObject, Default, Debug)]
pub struct QueryRoot(
    Query,
    datasets::DatasetQuery,
    dataset_diff::DatasetDiffQuery,
    presign::PresignQuery,
    insights::InsightsQuery,
    transfers::TransferQuery,
    workers::WorkersQuery,
    lineage::LineageQuery,
    cluster::ClusterQuery,
);

#[derive(MergedObject, Default, Debug)]
pub struct MutationRoot(
    Mutation,
    datasets::DatasetMutation,
    transfers::TransferMutation,
);

pub type MilepostSchema = Schema<QueryRoot, MutationRoot, datasets::Subscription>;

/// Most items one page of a connection may ask for.
pub const MAX_PAGE_SIZE: i32 = 500;

/// The same schema with the depth bound of introspection-only operations
/// ([`introspection`]); every other limit is the ordinary one.
#[derive(Clone)]
pub struct IntrospectionSchema(pub MilepostSchema);

impl std::fmt::Debug for IntrospectionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntrospectionSchema")
    }
}

/// The schema every query runs on, with the ordinary limits.
pub fn build_schema(state: Arc<AppState>) -> MilepostSchema {
    let depth = state.config.server.max_query_depth;
    build_schema_with_depth(state, depth)
}

/// The schema introspection-only operations run on ([`introspection::limits_for`]).
pub fn build_introspection_schema(state: Arc<AppState>) -> IntrospectionSchema {
    let depth = introspection::MAX_INTROSPECTION_DEPTH.max(state.config.server.max_query_depth);
    IntrospectionSchema(build_schema_with_depth(state, depth))
}

fn build_schema_with_depth(state: Arc<AppState>, max_depth: usize) -> MilepostSchema {
    let server = &state.config.server;
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        datasets::Subscription,
    )
    .limit_depth(max_depth)
    .limit_complexity(server.max_query_complexity)
    .limit_recursive_depth(64)
    .limit_directives(16)
    .register_output_type::<types::Node>()
    .data(state.clone())
    .finish()
}

pub(crate) fn state<'a>(ctx: &async_graphql::Context<'a>) -> &'a AppState {
    // Inserted by build_schema; every request runs on a schema built there.
    ctx.data_unchecked::<Arc<AppState>>()
}

pub(crate) fn principal<'a>(ctx: &async_graphql::Context<'a>) -> &'a Principal {
    // Inserted by the POST handler before execution.
    ctx.data_unchecked::<Principal>()
}

/// Validates a connection's `first` argument; more than [`MAX_PAGE_SIZE`] is refused rather
/// than served slowly.
pub(crate) fn page_limit(first: Option<i32>) -> ApiResult<u64> {
    let first = first.unwrap_or(20);
    if !(0..=MAX_PAGE_SIZE).contains(&first) {
        return Err(ApiError::bad_input(
            "first",
            format!("expected 0 to {MAX_PAGE_SIZE}, got {first}"),
        ));
    }
    Ok(first as u64)
}

fn error_response(
    state: &AppState,
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response {
    state.metrics.record_graphql_error(code.as_str());
    (status, Json(graphql_error_body(code, message))).into_response()
}

pub async fn graphql_post(
    State(app): State<Arc<AppState>>,
    State(schema): State<MilepostSchema>,
    State(introspection_schema): State<IntrospectionSchema>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let state = &*app;
    let principal = match state.authenticate(&headers).await {
        Ok(principal) => principal,
        Err(err) => {
            return error_response(
                state,
                err.code().http_status(),
                err.code(),
                &err.client_message(),
            )
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "request body is larger than the {} this server accepts (server.max_body_size)",
                    state.config.server.max_body_size
                )
            } else {
                format!("cannot read request body: {}", rejection.body_text())
            };
            return error_response(state, rejection.status(), ErrorCode::BadInput, &message);
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            let message = format!(
                "request body is not a GraphQL request ({{\"query\": ..., \"variables\": ...}}): {err}"
            );
            return error_response(
                state,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadInput,
                &message,
            );
        }
    };
    let schema = match introspection::limits_for(&request.query) {
        Ok(introspection::Limits::Ordinary) => &schema,
        Ok(introspection::Limits::Introspection) => &introspection_schema.0,
        Err(message) => {
            let mut response =
                async_graphql::Response::from_errors(vec![ServerError::new(message, None)]);
            for error in &mut response.errors {
                let code = ensure_code(error);
                state.metrics.record_graphql_error(code);
            }
            return Json(response).into_response();
        }
    };
    let mut response = schema.execute(request.data(principal)).await;
    for error in &mut response.errors {
        let code = ensure_code(error);
        state.metrics.record_graphql_error(code);
    }
    Json(response).into_response()
}

/// Errors raised before execution (syntax, validation, depth and complexity limits, variable
/// types) come from async-graphql without a code; they are all the client's to fix.
pub(crate) fn ensure_code(error: &mut ServerError) -> &'static str {
    let existing = error
        .extensions
        .as_ref()
        .and_then(|ext| ext.get("code"))
        .and_then(|value| match value {
            async_graphql::Value::String(code) => Some(code.clone()),
            _ => None,
        });
    match existing {
        Some(code) => [
            ErrorCode::BadInput,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ]
        .into_iter()
        .map(ErrorCode::as_str)
        .find(|known| *known == code)
        .unwrap_or("INTERNAL"),
        None => {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", ErrorCode::BadInput.as_str());
            ErrorCode::BadInput.as_str()
        }
    }
}

/// `GET /graphql/schema.graphql`: the schema in SDL, for code generators and clients that
/// read a schema file. Callers authenticate as for queries.
pub async fn graphql_sdl(
    State(app): State<Arc<AppState>>,
    State(schema): State<MilepostSchema>,
    headers: HeaderMap,
) -> Response {
    if let Err(err) = app.authenticate(&headers).await {
        return error_response(
            &app,
            err.code().http_status(),
            err.code(),
            &err.client_message(),
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        schema.sdl(),
    )
        .into_response()
}

pub async fn graphiql() -> Html<String> {
    Html(
        async_graphql::http::GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Milepost GraphQL")
            .finish(),
    )
}

/// Subscriptions over WebSocket (`graphql-transport-ws`, and the older `graphql-ws`). The
/// token comes from the upgrade request's `Authorization` header or, for browsers that cannot
/// set headers on a WebSocket, from `connection_init`'s payload (`{"Authorization": "Bearer
/// ..."}`).
pub async fn graphql_ws(
    State(app): State<Arc<AppState>>,
    State(schema): State<MilepostSchema>,
    headers: HeaderMap,
    protocol: async_graphql_axum::GraphQLProtocol,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let from_header = app
        .authenticate(&headers)
        .await
        .ok()
        .filter(|p| !p.anonymous);
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            async_graphql_axum::GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload: serde_json::Value| async move {
                    let principal = match from_header {
                        Some(principal) => principal,
                        None => {
                            let mut headers = HeaderMap::new();
                            let token = payload
                                .get("Authorization")
                                .or_else(|| payload.get("authorization"))
                                .and_then(|v| v.as_str());
                            if let Some(value) = token.and_then(|t| t.parse().ok()) {
                                headers.insert(axum::http::header::AUTHORIZATION, value);
                            }
                            app.authenticate(&headers)
                                .await
                                .map_err(|err| async_graphql::Error::new(err.client_message()))?
                        }
                    };
                    let mut data = async_graphql::Data::default();
                    data.insert(principal);
                    Ok(data)
                })
                .serve()
        })
}
