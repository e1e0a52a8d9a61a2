#![doc = include_str!("../README.md")]

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod graphql;
pub mod metrics;
pub mod progress;
pub mod records;
pub mod selection;
pub mod server;
pub mod transfers;
pub mod web;
