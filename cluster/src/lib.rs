//! Membership of an office cluster on PostgreSQL: see the crate README.
//!
//! - [`ClusterNode`] (`node.rs`): this node's row, heartbeat and lease.
//! - [`Claim`] (`claim.rs`): one node at a time for a named piece of work (an object's
//!   download), released when done or when the node dies.
//! - [`status`] (`status.rs`): what the cluster is doing, for operators.

mod claim;
mod error;
mod node;
mod status;

pub use claim::Claim;
pub use error::ClusterError;
pub use node::{ClusterNode, ClusterSettings, LIVE_NODES};
pub use status::{office_usage, status, ClusterStatus, NodeStatus, OfficeUsage};
