//! The web catalog's way into the API: GraphQL executed in-process against the same schema
//! as `POST /graphql`, with the caller authenticated from the session's token exactly as a
//! bearer token is, and objects served by the same handler as `GET /data`.

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use milepost_ui::{GraphqlError, GraphqlExecutor, GraphqlResponse};
use serde_json::Value;

use std::sync::Arc;

use crate::app::AppState;
use crate::graphql::{ensure_code, MilepostSchema};

pub struct InProcess {
    pub app: Arc<AppState>,
    pub schema: MilepostSchema,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

#[async_trait]
impl GraphqlExecutor for InProcess {
    async fn execute(&self, token: &str, query: &str, variables: Value) -> GraphqlResponse {
        let app = &self.app;
        let principal = match app.authenticate(&bearer(token)).await {
            // Without a usable header `authenticate` may fall back to anonymous reads; the
            // web catalog always acts as a signed-in token holder.
            Ok(principal) if !principal.anonymous => principal,
            Ok(_) => {
                return GraphqlResponse {
                    data: Value::Null,
                    errors: vec![GraphqlError {
                        message: "malformed token".to_owned(),
                        code: "UNAUTHENTICATED".to_owned(),
                        field: None,
                    }],
                }
            }
            Err(err) => {
                return GraphqlResponse {
                    data: Value::Null,
                    errors: vec![GraphqlError {
                        message: err.client_message(),
                        code: err.code().as_str().to_owned(),
                        field: None,
                    }],
                }
            }
        };
        let request = async_graphql::Request::new(query)
            .variables(async_graphql::Variables::from_json(variables))
            .data(principal);
        let mut response = self.schema.execute(request).await;
        for error in &mut response.errors {
            let code = ensure_code(error);
            app.metrics.record_graphql_error(code);
        }
        match serde_json::to_value(&response) {
            Ok(body) => GraphqlResponse::from_json(body),
            Err(err) => {
                tracing::error!(error = %err, "cannot encode a GraphQL response for the web catalog");
                GraphqlResponse {
                    data: Value::Null,
                    errors: vec![GraphqlError {
                        message: "internal error".to_owned(),
                        code: "INTERNAL".to_owned(),
                        field: None,
                    }],
                }
            }
        }
    }

    async fn object(&self, token: &str, bucket: &str, key: &str) -> Response {
        crate::data::serve_object(
            State(self.app.clone()),
            Method::GET,
            bearer(token),
            axum::extract::RawQuery(None),
            Path((bucket.to_owned(), key.to_owned())),
        )
        .await
    }
}
