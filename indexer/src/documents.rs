//! Turns catalog rows into search documents. Scenarios inherit their drive's vehicle, city,
//! weather and software, so "cut-in in rain in guangzhou" finds the scenarios themselves.

use milepost_schema::entity::{drive, drive_event, run, scenario};

use crate::search::{EntityKind, SearchDocument};

pub(crate) fn string_list(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Unknown sidecar fields as "key value" strings, so they are searchable as free text.
fn extra_text(extra: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(prefix, v, out)),
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => out.push(format!("{prefix} {s}")),
            other => out.push(format!("{prefix} {other}")),
        }
    }
    let mut out = Vec::new();
    walk("", extra, &mut out);
    out
}

pub fn drive_document(
    drive: &drive::Model,
    events: &[drive_event::Model],
    scenarios: &[scenario::Model],
    total_bytes: i64,
) -> SearchDocument {
    let mut labels: Vec<String> = Vec::new();
    for event in events {
        labels.push(event.kind.clone());
        labels.extend(event.label.clone());
    }
    labels.extend(scenarios.iter().map(|s| s.label.clone()));
    labels.sort();
    labels.dedup();
    SearchDocument {
        kind: EntityKind::Drive,
        id: drive.id.clone(),
        title: format!(
            "{} {} {}",
            drive.vehicle,
            drive.city.as_deref().unwrap_or_default(),
            drive.started_at.format("%Y-%m-%d")
        ),
        vehicle: Some(drive.vehicle.clone()),
        city: drive.city.clone(),
        route: drive.route.clone(),
        weather: drive.weather.clone(),
        software: drive.software_version.clone(),
        pipeline: None,
        commit: None,
        status: None,
        tags: string_list(&drive.tags),
        labels,
        topics: string_list(&drive.topics),
        description: None,
        extra_text: extra_text(&drive.extra),
        time: Some(drive.started_at),
        drive_id: None,
        size_bytes: Some(total_bytes),
    }
}

pub fn scenario_document(scenario: &scenario::Model, drive: &drive::Model) -> SearchDocument {
    SearchDocument {
        kind: EntityKind::Scenario,
        id: scenario.id.clone(),
        title: scenario.label.clone(),
        vehicle: Some(drive.vehicle.clone()),
        city: drive.city.clone(),
        route: drive.route.clone(),
        weather: drive.weather.clone(),
        software: drive.software_version.clone(),
        pipeline: None,
        commit: None,
        status: None,
        tags: string_list(&scenario.tags),
        labels: vec![scenario.label.clone()],
        topics: string_list(&drive.topics),
        description: scenario.description.clone(),
        extra_text: Vec::new(),
        time: Some(scenario.start_time),
        drive_id: Some(drive.id.clone()),
        size_bytes: None,
    }
}

pub fn run_document(run: &run::Model, total_bytes: i64) -> SearchDocument {
    SearchDocument {
        kind: EntityKind::Run,
        id: run.id.clone(),
        title: format!("{} run {}", run.kind.as_str(), run.pipeline),
        vehicle: None,
        city: None,
        route: None,
        weather: None,
        software: None,
        pipeline: Some(run.pipeline.clone()),
        commit: run.commit.clone(),
        status: Some(run.status.as_str().to_owned()),
        tags: string_list(&run.tags),
        labels: vec![run.kind.as_str().to_owned()],
        topics: Vec::new(),
        description: None,
        extra_text: extra_text(&run.extra),
        time: run.started_at,
        drive_id: None,
        size_bytes: Some(total_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::extra_text;

    #[test]
    fn unknown_fields_become_searchable_text() {
        let extra = serde_json::json!({ "operator": "li wei", "rig": { "rev": 3, "lidar": ["hesai"] }, "none": null });
        let mut text = extra_text(&extra);
        text.sort();
        assert_eq!(
            text,
            vec!["operator li wei", "rig.lidar hesai", "rig.rev 3"]
        );
    }
}
