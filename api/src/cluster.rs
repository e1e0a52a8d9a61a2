//! `milepost cluster status`: the office cluster as its database sees it (any host that
//! reaches the database can ask; no node needs to answer).

use anyhow::Context as _;

use crate::app::redact_url;
use crate::config::Config;
use crate::progress::human_bytes;

/// Prints the cluster's nodes, the work each holds and the office tier's usage.
pub async fn print_status(config: &Config, json: bool) -> anyhow::Result<()> {
    let url = config.database_url();
    let db = milepost_schema::connect(&url)
        .await
        .with_context(|| format!("cannot open the catalog database ({})", redact_url(&url)))?;
    milepost_schema::migrate(&db)
        .await
        .context("cannot migrate the catalog database")?;
    let status = milepost_cluster::status(&db)
        .await
        .context("cannot read the cluster's status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if status.nodes.is_empty() {
        println!("no node has joined the office cluster (is [cluster] enabled on the nodes?)");
    } else {
        println!(
            "{:<28} {:<22} {:<6} {:>10} {:>8} {:>13}",
            "NODE", "ADDRESS", "STATE", "HEARTBEAT", "UPLOADS", "RESERVATIONS"
        );
        for node in &status.nodes {
            println!(
                "{:<28} {:<22} {:<6} {:>9.1}s {:>8} {:>13}",
                node.node_id,
                node.address,
                if node.alive { "alive" } else { "gone" },
                node.heartbeat_age_ms as f64 / 1000.0,
                node.uploads_held,
                node.reservations_held,
            );
        }
    }
    println!(
        "office tier: {} entries, {} ({} not yet in S3)",
        status.cached_entries,
        human_bytes(u64::try_from(status.cached_bytes).unwrap_or(0)),
        human_bytes(u64::try_from(status.dirty_bytes).unwrap_or(0)),
    );
    println!(
        "uploads queued: {}; waiting to be taken over from nodes that are gone: {} uploads, {} reservations",
        status.uploads_queued, status.uploads_orphaned, status.reservations_orphaned
    );
    Ok(())
}
