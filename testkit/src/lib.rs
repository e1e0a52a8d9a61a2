#![doc = include_str!("../README.md")]

mod app;
pub mod browser;
mod database;
pub mod fault_proxy;
pub mod garage;
mod loopback;
pub mod moto;
pub mod tcp_proxy;
pub mod trimlogs;

pub use app::{assert_refused, error_codes, first_error, graphql_data, TestApp, TestAppBuilder};
pub use database::{
    postgres_server_url, replace_database, Backend, TestDatabase, DATABASE_URL_VARIABLE,
};
pub use fault_proxy::{Fault, FaultProxy, SeenRequest};
pub use loopback::{LoopbackUpstream, LOOPBACK_ACCESS_KEY, LOOPBACK_SECRET_KEY};
pub use moto::MotoServer;
pub use tcp_proxy::TcpProxy;
