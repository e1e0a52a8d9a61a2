//! `milepost status`: the background workers of a running server (syncs, reservation
//! upkeep) as a table: state, runs, failures and the last error.

use serde_json::{json, Value};

use crate::client::Client;

const QUERY: &str = "query { workers { name state lastError runs failures } }";

/// Asks the server and prints the workers to stdout.
pub async fn print(client: &Client) -> anyhow::Result<()> {
    let data = client.query(QUERY, json!({})).await?;
    print!("{}", render(&data));
    Ok(())
}

/// The text `milepost status` prints for a response of [`QUERY`].
pub fn render(data: &Value) -> String {
    let workers = data["workers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if workers.is_empty() {
        return "no background workers\n".to_owned();
    }
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    let rows: Vec<[String; 5]> = workers
        .iter()
        .map(|w| {
            [
                text(&w["name"]),
                text(&w["state"]).to_lowercase(),
                w["runs"].as_u64().unwrap_or(0).to_string(),
                w["failures"].as_u64().unwrap_or(0).to_string(),
                text(&w["lastError"]),
            ]
        })
        .collect();
    let header = ["WORKER", "STATE", "RUNS", "FAILURES", "LAST ERROR"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_per_worker() {
        let data = json!({ "workers": [
            { "name": "sync", "state": "FAILED", "lastError": "bucket unreachable", "runs": 12, "failures": 2 },
            { "name": "reservations", "state": "IDLE", "lastError": null, "runs": 40, "failures": 0 },
        ]});
        let text = render(&data);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("WORKER"));
        assert!(lines[1].starts_with("sync "));
        assert!(lines[1].contains("failed"));
        assert!(lines[1].ends_with("bucket unreachable"));
        assert!(lines[2].contains(" idle "));
        assert!(lines[2].ends_with('-'));
        assert_eq!(render(&json!({ "workers": [] })), "no background workers\n");
    }
}
