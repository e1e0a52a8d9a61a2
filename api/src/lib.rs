//! The `milepost` service: configuration, CLI, and the axum server with the GraphQL catalog API,
//! bearer-token auth and Prometheus metrics. See `docs/ARCHITECTURE.md` for the whole map.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod graphql;
pub mod metrics;
pub mod progress;
pub mod selection;
pub mod server;
