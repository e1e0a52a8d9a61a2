//! `milepost reserve --wait`: a progress bar on stderr (bytes, objects, rate, ETA) until the
//! reservation is READY or has failed.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::client::Client;

const POLL: Duration = Duration::from_millis(500);
const BAR_WIDTH: usize = 30;

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// One line of progress: `[#####-----]  42% 1.2 GiB/2.9 GiB  17/40 objects  85.3 MiB/s  ETA 20s`.
pub fn render_line(
    done: u64,
    total: u64,
    objects_done: u64,
    objects_total: u64,
    rate: f64,
) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((fraction * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    let eta = if rate > 0.0 && total > done {
        human_duration((total - done) as f64 / rate)
    } else {
        "-".to_owned()
    };
    format!(
        "[{}{}] {:>3.0}% {}/{}  {objects_done}/{objects_total} objects  {}/s  ETA {eta}",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
        human_bytes(done),
        human_bytes(total),
        human_bytes(rate as u64),
    )
}

pub async fn reserve(
    client: &Client,
    dataset: &str,
    version: Option<i32>,
    ttl: Duration,
    purpose: Option<String>,
    ready_by: Option<chrono::DateTime<chrono::Utc>>,
    wait: bool,
) -> anyhow::Result<()> {
    let ttl_seconds = i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX);
    let data = client
        .query(
            "mutation($input: ReserveDatasetInput!) { reserveDataset(input: $input) { id state expiresAt scheduledStart estimatedReadyAt } }",
            json!({ "input": { "dataset": dataset, "version": version, "ttlSeconds": ttl_seconds,
                "purpose": purpose, "readyBy": ready_by.map(|at| at.to_rfc3339()) } }),
        )
        .await?;
    let reserved = &data["reserveDataset"];
    let id = reserved["id"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "reservation {id} of {dataset}, expires {}",
        reserved["expiresAt"].as_str().unwrap_or("?")
    );
    if let Some(start) = reserved["scheduledStart"].as_str() {
        eprintln!(
            "scheduled: downloads from {start}, estimated READY at {}",
            reserved["estimatedReadyAt"].as_str().unwrap_or("?")
        );
    }
    if !wait {
        println!("{id}");
        return Ok(());
    }
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    loop {
        let data = client
            .query(
                "query($id: ID!) { reservation(id: $id) { state objectsDone objectsTotal bytesDone bytesTotal bytesFromUpstream localPath error } }",
                json!({ "id": id }),
            )
            .await?;
        let r = &data["reservation"];
        let done = r["bytesDone"].as_u64().unwrap_or_default();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        let line = render_line(
            done,
            r["bytesTotal"].as_u64().unwrap_or_default(),
            r["objectsDone"].as_u64().unwrap_or_default(),
            r["objectsTotal"].as_u64().unwrap_or_default(),
            rate,
        );
        let _ = write!(stderr, "\r{line}");
        let _ = stderr.flush();
        match r["state"].as_str().unwrap_or_default() {
            "READY" => {
                eprintln!(
                    "\nREADY in {}; {} from upstream",
                    human_duration(started.elapsed().as_secs_f64()),
                    human_bytes(r["bytesFromUpstream"].as_u64().unwrap_or_default())
                );
                println!("{}", r["localPath"].as_str().unwrap_or_default());
                return Ok(());
            }
            "FAILED" => {
                eprintln!();
                bail!(
                    "reservation {id} failed: {}",
                    r["error"].as_str().unwrap_or("no reason given")
                );
            }
            "RELEASED" | "EXPIRED" => {
                eprintln!();
                bail!(
                    "reservation {id} ended: {}",
                    r["state"].as_str().unwrap_or_default()
                );
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// A catalog sync's progress as `syncStatus` reports it (the fields the line shows).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncLine {
    pub phase: String,
    pub objects_seen: u64,
    pub objects_changed: u64,
    pub objects_per_second: f64,
    pub files_read: u64,
    pub errors: u64,
}

/// The `syncStatus` selection [`SyncLine`] reads.
pub const SYNC_STATUS_QUERY: &str =
    "{ syncStatus { phase objectsSeen objectsChanged objectsPerSecond filesRead errors } }";

impl From<milepost_indexer::sync::SyncStatus> for SyncLine {
    fn from(status: milepost_indexer::sync::SyncStatus) -> Self {
        SyncLine {
            phase: status.phase.as_str().to_owned(),
            objects_seen: status.objects_seen,
            objects_changed: status.objects_changed,
            objects_per_second: status.objects_per_second,
            files_read: status.files_read,
            errors: status.errors,
        }
    }
}

/// One line of a catalog sync's progress: `sync: listing  42000 objects seen, 1203 changed  3100 objects/s  12 files read  0 errors  14s`.
pub fn render_sync_line(status: &SyncLine, elapsed: Duration) -> String {
    format!(
        "sync: {:<8} {} objects seen, {} changed  {:.0} objects/s  {} files read  {} errors  {}",
        status.phase,
        status.objects_seen,
        status.objects_changed,
        status.objects_per_second,
        status.files_read,
        status.errors,
        human_duration(elapsed.as_secs_f64()),
    )
}

/// Shows a catalog sync's progress on stderr until `run` ends: redrawn in place every half
/// second on a terminal, a line every ten seconds otherwise (logs of scheduled syncs).
/// `status` gives the sync's state (`None`: not known this time; nothing is drawn).
pub async fn show_sync_progress<T, Status>(
    mut status: impl FnMut() -> Status,
    run: impl std::future::Future<Output = T>,
) -> T
where
    Status: std::future::Future<Output = Option<SyncLine>>,
{
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        POLL
    } else {
        Duration::from_secs(10)
    };
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(run);
    let mut stderr = std::io::stderr();
    let mut drawn = false;
    loop {
        tokio::select! {
            result = &mut run => {
                if drawn && terminal {
                    let _ = writeln!(stderr);
                }
                return result;
            }
            _ = ticks.tick() => {
                let Some(line) = status().await else { continue };
                let line = render_sync_line(&line, started.elapsed());
                let _ = if terminal { write!(stderr, "\r{line}\x1b[K") } else { writeln!(stderr, "{line}") };
                let _ = stderr.flush();
                drawn = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_line() {
        let line = render_sync_line(
            &SyncLine {
                phase: "listing".into(),
                objects_seen: 42_000,
                objects_changed: 1203,
                objects_per_second: 3100.4,
                files_read: 12,
                errors: 1,
            },
            Duration::from_secs(75),
        );
        assert_eq!(
            line,
            "sync: listing  42000 objects seen, 1203 changed  3100 objects/s  12 files read  1 errors  1m15s"
        );
    }

    #[test]
    fn progress_line() {
        let line = render_line(512 << 20, 1 << 30, 3, 6, (64 << 20) as f64);
        assert!(
            line.starts_with("[###############---------------]  50%"),
            "{line}"
        );
        assert!(line.contains("512.0 MiB/1.0 GiB"), "{line}");
        assert!(line.contains("3/6 objects"), "{line}");
        assert!(line.contains("64.0 MiB/s"), "{line}");
        assert!(line.contains("ETA 8s"), "{line}");
        assert_eq!(human_bytes(999), "999 B");
    }
}
