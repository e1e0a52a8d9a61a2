//! `milepost transfers`: the write-back queue of a running server, as a header line (rate,
//! limit, what is left, ETA) and a table of transfers in queue order, then the planned
//! downloads (reservations with a deadline) under the download windows.

use serde_json::{json, Value};

use crate::client::Client;
use crate::progress::human_bytes;

const QUERY: &str = r#"query($state: TransferState, $first: Int) {
  transferPolicy { uploadSchedule priorities limitBytesPerSecond nextChangeAt
                   downloadSchedule downloadWindow }
  plannedDownloads(first: $first) {
    id state bytesTotal bytesDone readyBy scheduledStart estimatedReadyAt deadlineWarning
    dataset { name version }
  }
  transfers(state: $state, first: $first) {
    totalCount
    summary { queuedCount queuedBytes uploadingCount uploadingBytes doneCount failedCount
              rateBytesPerSecond limitBytesPerSecond etaSeconds }
    edges { node { id op bucket key size state priority bytesDone attempts error } }
  }
}"#;

/// States `--state` accepts.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StateArg {
    Queued,
    Uploading,
    Done,
    Failed,
    Superseded,
}

impl StateArg {
    fn graphql(self) -> &'static str {
        match self {
            StateArg::Queued => "QUEUED",
            StateArg::Uploading => "UPLOADING",
            StateArg::Done => "DONE",
            StateArg::Failed => "FAILED",
            StateArg::Superseded => "SUPERSEDED",
        }
    }
}

/// Asks the server and prints the queue to stdout.
pub async fn print(client: &Client, state: Option<StateArg>, first: i32) -> anyhow::Result<()> {
    let data = client
        .query(
            QUERY,
            json!({ "state": state.map(StateArg::graphql), "first": first }),
        )
        .await?;
    print!("{}", render(&data));
    Ok(())
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes_of(value: &Value) -> String {
    human_bytes(value.as_u64().unwrap_or(0))
}

/// The text `milepost transfers` prints for a response of [`QUERY`].
pub fn render(data: &Value) -> String {
    let policy = &data["transferPolicy"];
    let list = &data["transfers"];
    let s = &list["summary"];
    let limit = match s["limitBytesPerSecond"].as_u64() {
        Some(limit) => format!("{}/s", human_bytes(limit)),
        None => "unlimited".to_owned(),
    };
    let eta = match s["etaSeconds"].as_f64() {
        Some(seconds) => human_duration(seconds),
        None => "-".to_owned(),
    };
    let mut out = format!(
        "rate {}/s, limit {limit}; queued {} ({}), uploading {} ({} left), failed {}; ETA {eta}\n",
        human_bytes(s["rateBytesPerSecond"].as_f64().unwrap_or(0.0) as u64),
        s["queuedCount"],
        bytes_of(&s["queuedBytes"]),
        s["uploadingCount"],
        bytes_of(&s["uploadingBytes"]),
        s["failedCount"],
    );
    let next = policy["nextChangeAt"]
        .as_str()
        .map(|at| format!(", next change at {at}"))
        .unwrap_or_default();
    out.push_str(&format!(
        "schedule \"{}\"{next}; priorities {}\n",
        policy["uploadSchedule"].as_str().unwrap_or_default(),
        policy["priorities"]
            .as_array()
            .map(|p| p
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
    ));
    out.push_str(&format!(
        "{:>8} {:<9} {:>8} {:>10} {:>10} {:>8}  KEY\n",
        "ID", "STATE", "PRIORITY", "SIZE", "DONE", "ATTEMPTS"
    ));
    let edges = list["edges"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for edge in edges {
        let t = &edge["node"];
        let key = format!(
            "{}s3://{}/{}",
            if t["op"] == "DELETE" { "delete " } else { "" },
            t["bucket"].as_str().unwrap_or_default(),
            t["key"].as_str().unwrap_or_default()
        );
        out.push_str(&format!(
            "{:>8} {:<9} {:>8} {:>10} {:>10} {:>8}  {key}\n",
            t["id"].as_str().unwrap_or("-"),
            t["state"].as_str().unwrap_or("-").to_lowercase(),
            t["priority"],
            bytes_of(&t["size"]),
            bytes_of(&t["bytesDone"]),
            t["attempts"],
        ));
        if let Some(error) = t["error"].as_str() {
            out.push_str(&format!("{:>8} error: {error}\n", ""));
        }
    }
    let total = list["totalCount"].as_u64().unwrap_or(0);
    if total as usize > edges.len() {
        out.push_str(&format!(
            "{} of {total} transfers shown (--first N for more)\n",
            edges.len()
        ));
    } else {
        out.push_str(&format!("{total} transfers\n"));
    }
    if let Some(planned) = data["plannedDownloads"].as_array() {
        out.push_str(&render_planned(policy, planned));
    }
    out
}

/// The planned downloads section: the download windows, then one row per reservation with a
/// deadline not READY yet.
fn render_planned(policy: &Value, planned: &[Value]) -> String {
    let mut out = format!(
        "planned downloads: schedule \"{}\", window now {}\n",
        policy["downloadSchedule"].as_str().unwrap_or("* off"),
        policy["downloadWindow"].as_str().unwrap_or("-"),
    );
    if planned.is_empty() {
        out.push_str("no planned downloads\n");
        return out;
    }
    out.push_str(&format!(
        "{:<16} {:<13} {:>10} {:>10} {:<20} {:<20} {:<20}  DATASET\n",
        "RESERVATION", "STATE", "SIZE", "DONE", "START", "READY BY", "ESTIMATE"
    ));
    let time = |value: &Value| value.as_str().map_or("-".to_owned(), short_time);
    for r in planned {
        out.push_str(&format!(
            "{:<16} {:<13} {:>10} {:>10} {:<20} {:<20} {:<20}  {}@{}\n",
            r["id"].as_str().unwrap_or("-"),
            r["state"].as_str().unwrap_or("-").to_lowercase(),
            bytes_of(&r["bytesTotal"]),
            bytes_of(&r["bytesDone"]),
            time(&r["scheduledStart"]),
            time(&r["readyBy"]),
            time(&r["estimatedReadyAt"]),
            r["dataset"]["name"].as_str().unwrap_or("-"),
            r["dataset"]["version"],
        ));
        if let Some(warning) = r["deadlineWarning"].as_str() {
            out.push_str(&format!("{:>16} at risk: {warning}\n", ""));
        }
    }
    out
}

/// `2026-12-07T02:00:00Z` → `2026-12-07 02:00:00Z`: the table's times, in UTC as served.
fn short_time(at: &str) -> String {
    let at = at.replacen('T', " ", 1);
    match at.strip_suffix("+00:00") {
        Some(utc) => format!("{utc}Z"),
        None => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_table() {
        let data = json!({
            "transferPolicy": {
                "uploadSchedule": "Mon-Fri 09:00-18:00 20MiB; * off",
                "priorities": ["*.json", "*"],
                "limitBytesPerSecond": 20971520,
                "nextChangeAt": "2026-11-25T10:00:00+00:00"
            },
            "transfers": {
                "totalCount": 3,
                "summary": {
                    "queuedCount": 1, "queuedBytes": 1073741824, "uploadingCount": 1,
                    "uploadingBytes": 10485760, "doneCount": 0, "failedCount": 1,
                    "rateBytesPerSecond": 20971520.0, "limitBytesPerSecond": 20971520,
                    "etaSeconds": 51.7
                },
                "edges": [
                    { "node": { "id": "7", "op": "PUT", "bucket": "fleet", "key": "runs/r/run.json",
                      "size": 20971520, "state": "UPLOADING", "priority": 0,
                      "bytesDone": 10485760, "attempts": 1, "error": null } },
                    { "node": { "id": "9", "op": "DELETE", "bucket": "fleet", "key": "x.mcap",
                      "size": 0, "state": "FAILED", "priority": 1, "bytesDone": 0,
                      "attempts": 5, "error": "access denied" } }
                ]
            }
        });
        let text = render(&data);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "rate 20.0 MiB/s, limit 20.0 MiB/s; queued 1 (1.0 GiB), uploading 1 (10.0 MiB left), failed 1; ETA 52s"
        );
        assert!(
            lines[1].contains("Mon-Fri 09:00-18:00 20MiB; * off") && lines[1].contains("*.json *")
        );
        assert!(lines[2].contains("PRIORITY") && lines[2].ends_with("KEY"));
        assert!(lines[3].contains("uploading") && lines[3].ends_with("s3://fleet/runs/r/run.json"));
        assert!(lines[4].contains("failed") && lines[4].ends_with("delete s3://fleet/x.mcap"));
        assert!(lines[5].contains("error: access denied"));
        assert_eq!(lines[6], "2 of 3 transfers shown (--first N for more)");
    }

    #[test]
    fn planned_downloads_table() {
        let data = json!({
            "transferPolicy": { "uploadSchedule": "* off", "priorities": [], "limitBytesPerSecond": null,
                "nextChangeAt": null, "downloadSchedule": "Mon-Fri 20:00-06:00 50MiB", "downloadWindow": "closed" },
            "transfers": { "totalCount": 0, "edges": [], "summary": {
                "queuedCount": 0, "queuedBytes": 0, "uploadingCount": 0, "uploadingBytes": 0,
                "doneCount": 0, "failedCount": 0, "rateBytesPerSecond": 0.0,
                "limitBytesPerSecond": null, "etaSeconds": 0.0 } },
            "plannedDownloads": [
                { "id": "res_a", "state": "PENDING", "bytesTotal": 2147483648u64, "bytesDone": 0,
                  "readyBy": "2026-12-08T02:00:00+00:00", "scheduledStart": "2026-12-07T20:00:00+00:00",
                  "estimatedReadyAt": "2026-12-07T20:00:41+00:00", "deadlineWarning": null,
                  "dataset": { "name": "nightly", "version": 3 } },
                { "id": "res_b", "state": "MATERIALIZING", "bytesTotal": 1024, "bytesDone": 512,
                  "readyBy": "2026-12-07T21:00:00Z", "scheduledStart": "2026-12-07T20:00:00Z",
                  "estimatedReadyAt": "2026-12-07T22:00:00Z", "deadlineWarning": "estimated READY at 22:00",
                  "dataset": { "name": "late", "version": 1 } }
            ]
        });
        let text = render(&data);
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("planned downloads:"))
            .expect(&text);
        assert!(lines[at].contains("\"Mon-Fri 20:00-06:00 50MiB\", window now closed"));
        assert!(lines[at + 1].starts_with("RESERVATION") && lines[at + 1].ends_with("DATASET"));
        assert!(lines[at + 2].starts_with("res_a") && lines[at + 2].contains("pending"));
        assert!(
            lines[at + 2].contains("2.0 GiB") && lines[at + 2].contains("2026-12-07 20:00:00Z")
        );
        assert!(lines[at + 2].ends_with("nightly@3"), "{}", lines[at + 2]);
        assert!(lines[at + 3].ends_with("late@1"));
        assert!(lines[at + 4].contains("at risk: estimated READY at 22:00"));
    }

    #[test]
    fn unlimited_and_idle() {
        let data = json!({
            "transferPolicy": { "uploadSchedule": "* off", "priorities": [], "limitBytesPerSecond": null, "nextChangeAt": null },
            "transfers": { "totalCount": 0, "edges": [], "summary": {
                "queuedCount": 0, "queuedBytes": 0, "uploadingCount": 0, "uploadingBytes": 0,
                "doneCount": 0, "failedCount": 0, "rateBytesPerSecond": 0.0,
                "limitBytesPerSecond": null, "etaSeconds": 0.0 } }
        });
        let text = render(&data);
        assert!(text.starts_with("rate 0 B/s, limit unlimited;"), "{text}");
        assert!(
            text.contains("ETA 0s") && text.ends_with("0 transfers\n"),
            "{text}"
        );
    }
}
