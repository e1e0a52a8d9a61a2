//! A small GraphQL client for the CLI verbs that talk to a running server
//! (`--server URL`, `--token` or `MILEPOST_TOKEN`).

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    endpoint: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Client> {
        let server = server.trim_end_matches('/');
        let server = if server.starts_with("http://") || server.starts_with("https://") {
            server.to_owned()
        } else {
            format!("http://{server}")
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            endpoint: format!("{server}/graphql"),
            base: server,
            token,
            http,
        })
    }

    /// The server's URL (scheme and authority), without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Runs one GraphQL operation; any error in the response fails with its code and message.
    pub async fn query(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach {} (is `milepost serve` running?)",
                self.endpoint
            )
        })?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| {
            format!(
                "{} answered {status} with a body that is not JSON",
                self.endpoint
            )
        })?;
        if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["extensions"]["code"].as_str().unwrap_or("ERROR"),
                        e["message"].as_str().unwrap_or("(no message)")
                    )
                })
                .collect();
            bail!("{}", lines.join("; "));
        }
        Ok(body["data"].clone())
    }
}
