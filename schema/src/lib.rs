#![doc = include_str!("../README.md")]

mod db;
pub mod egress;
pub mod entity;
pub mod enums;
pub mod error;
pub mod ids;
pub mod migration;

pub use db::{begin_write, connect, migrate, ping};
pub use entity::prelude;
pub use error::{DbError, ErrorKind};
