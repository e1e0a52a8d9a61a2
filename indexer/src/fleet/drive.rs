//! Drives: ids, sidecars, logs and sensor blobs.

use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};

use super::log::{self, LogCompression, LogSpec, TopicId};
use super::rng::{derive, Det};
use super::{
    inline_json, rfc3339, BlobFormat, ExpectedMcap, FileKind, FleetSpec, GeneratedDrive,
    GeneratedFile, Recipe,
};

struct City {
    name: &'static str,
    code: &'static str,
    routes: &'static [&'static str],
    snow: bool,
}

const CITIES: &[City] = &[
    City {
        name: "guangzhou",
        code: "gz",
        routes: &["tianhe-loop", "baiyun-airport-expressway", "pazhou-urban"],
        snow: false,
    },
    City {
        name: "shenzhen",
        code: "sz",
        routes: &["nanshan-tech-park", "futian-cbd", "binhai-avenue"],
        snow: false,
    },
    City {
        name: "shanghai",
        code: "sh",
        routes: &["pudong-inner-ring", "yanan-elevated", "lingang-highway"],
        snow: false,
    },
    City {
        name: "beijing",
        code: "bj",
        routes: &["third-ring", "yizhuang-demo-zone", "jingcheng-expressway"],
        snow: true,
    },
    City {
        name: "munich",
        code: "mu",
        routes: &["mittlerer-ring", "a9-freising", "schwabing-urban"],
        snow: true,
    },
    City {
        name: "san-francisco",
        code: "sf",
        routes: &["embarcadero", "us-101-south", "mission-district"],
        snow: false,
    },
];

/// Vehicles per city: `<code>-001` ... `<code>-004`.
const VEHICLES_PER_CITY: u64 = 4;

const EXTRA_TAGS: &[&str] = &[
    "rush-hour",
    "construction",
    "tunnel",
    "school-zone",
    "roundabout",
    "bridge",
    "toll-gate",
    "parking-lot",
    "dense-traffic",
];

const EVENTS: &[(&str, &[&str])] = &[
    (
        "disengagement",
        &[
            "planner timeout near construction zone",
            "safety driver disengaged at merge",
            "localization drift",
        ],
    ),
    (
        "hard_brake",
        &[
            "hard brake for cut-in vehicle",
            "hard brake for pedestrian",
            "hard brake at yellow light",
        ],
    ),
    (
        "takeover",
        &[
            "driver takeover in unprotected left turn",
            "driver takeover behind double-parked truck",
        ],
    ),
    (
        "near_miss",
        &["cyclist passed within 0.8 m", "vehicle ran red light"],
    ),
    (
        "lane_departure",
        &[
            "lane departure on worn markings",
            "lane departure in tunnel",
        ],
    ),
];

const SCENARIOS: &[&str] = &[
    "cut-in",
    "pedestrian-crossing",
    "unprotected-left-turn",
    "lane-merge",
    "cyclist-overtake",
    "emergency-vehicle",
    "jaywalker",
    "stalled-vehicle",
    "roundabout-entry",
    "highway-exit",
];

const SCENARIO_TAGS: &[&str] = &[
    "occluded",
    "dense-traffic",
    "vru",
    "high-speed",
    "low-speed",
    "aggressive-agent",
];

const OPERATORS: &[&str] = &[
    "li.wei",
    "chen.jing",
    "m.huber",
    "a.garcia",
    "zhang.min",
    "s.kowalski",
];

/// Shares of a drive's bytes, in percent: logs, camera frames, lidar frames.
const LOG_SHARE: u64 = 72;
const CAMERA_SHARE: u64 = 16;

pub(super) fn plan_drives(spec: &FleetSpec, prefix: &str) -> Vec<GeneratedDrive> {
    let mut ids = BTreeSet::new();
    let mut log_counter = 0u64;
    (0..spec.drives)
        .map(|i| plan_drive(spec, prefix, i as u64, &mut ids, &mut log_counter))
        .collect()
}

fn plan_drive(
    spec: &FleetSpec,
    prefix: &str,
    index: u64,
    ids: &mut BTreeSet<String>,
    log_counter: &mut u64,
) -> GeneratedDrive {
    let drive_seed = derive(spec.seed, "drive", index);
    let mut rng = Det::new(drive_seed);

    let city = rng.pick(CITIES);
    let vehicle = format!("{}-{:03}", city.code, rng.range(1, VEHICLES_PER_CITY));
    let weather = {
        let w = ["clear", "rain", "fog", "night", "snow"][rng.weighted(&[40, 22, 10, 20, 8])];
        if w == "snow" && !city.snow {
            "clear"
        } else {
            w
        }
    };
    let software_version = format!("av-3.{}.{}", rng.range(12, 14), rng.range(0, 5));
    let route = format!("{}-{}", city.code, rng.pick(city.routes));
    let highway = rng.chance(0.4);

    // Start: a day in the 120 days from 2025-06-02, daytime or night by weather.
    let day = NaiveDate::from_ymd_opt(2025, 6, 2)
        .unwrap_or_default()
        .checked_add_days(chrono::Days::new(rng.below(120)))
        .unwrap_or_default();
    let hour = if weather == "night" {
        rng.range(19, 23)
    } else {
        rng.range(6, 18)
    };
    let start_secs = hour * 3600 + rng.below(3600);
    let mut started_at =
        Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default()) + secs(start_secs);
    let duration = secs(rng.range(20 * 60, 90 * 60));
    // Unique id: bump the start by a second until it is.
    let mut id = drive_id(&vehicle, started_at);
    while ids.contains(&id) {
        started_at += secs(1);
        id = drive_id(&vehicle, started_at);
    }
    ids.insert(id.clone());
    let ended_at = started_at + duration;
    let duration_s = duration.num_seconds().max(1) as u64;

    let speed_kmh = if highway {
        rng.float(55.0, 85.0)
    } else {
        rng.float(18.0, 32.0)
    };
    let distance_km = (speed_kmh * duration_s as f64 / 3600.0 * 10.0).round() / 10.0;

    let mut tags = BTreeSet::new();
    tags.insert(if highway { "highway" } else { "urban" });
    for t in rng.sample_some(EXTRA_TAGS.len(), 1, 3) {
        tags.insert(EXTRA_TAGS[t]);
    }
    match weather {
        "night" => {
            tags.insert("night");
        }
        "rain" => {
            tags.insert("wet-road");
        }
        "fog" => {
            tags.insert("low-visibility");
        }
        "snow" => {
            tags.insert("winter");
        }
        _ => {}
    }

    let mut events: Vec<(u64, &str, &str)> = (0..rng.below(6))
        .map(|_| {
            let at = rng.below(duration_s);
            let (kind, labels) = rng.pick(EVENTS);
            (at, *kind, *rng.pick(labels))
        })
        .collect();
    events.sort();
    let events: Vec<Value> = events
        .into_iter()
        .map(|(at, kind, label)| {
            json!({ "at": rfc3339(started_at + secs(at)), "kind": kind, "label": label })
        })
        .collect();

    let mut scenarios: Vec<(u64, u64, &str, Vec<&str>)> = rng
        .sample_some(SCENARIOS.len(), 1, 4)
        .into_iter()
        .map(|s| {
            let len = rng.range(8, 90);
            let start = rng.below(duration_s.saturating_sub(len).max(1));
            let mut stags: Vec<&str> = rng
                .sample_some(SCENARIO_TAGS.len(), 0, 2)
                .into_iter()
                .map(|t| SCENARIO_TAGS[t])
                .collect();
            if weather != "clear" {
                stags.push(weather);
            }
            (start, start + len, SCENARIOS[s], stags)
        })
        .collect();
    scenarios.sort();
    let scenarios: Vec<Value> = scenarios
        .into_iter()
        .map(|(start, end, label, stags)| {
            json!({
                "label": label,
                "start": rfc3339(started_at + secs(start)),
                "end": rfc3339(started_at + secs(end)),
                "tags": stags,
            })
        })
        .collect();

    let mut sidecar = json!({
        "drive_id": id,
        "vehicle": vehicle,
        "city": city.name,
        "route": route,
        "started_at": rfc3339(started_at),
        "ended_at": rfc3339(ended_at),
        "distance_km": distance_km,
        "software_version": software_version,
        "weather": weather,
        "tags": tags.iter().collect::<Vec<_>>(),
        "events": events,
        "scenarios": scenarios,
        // Not in the contract: kept and searchable.
        "operator": rng.pick(OPERATORS),
        "hardware_rev": format!("hw-r{}", rng.range(3, 5)),
    });
    if rng.chance(0.3) {
        sidecar["calibration_id"] = json!(format!("cal-{}", rng.hex(8)));
    }

    let date = started_at.format("%Y-%m-%d");
    let prefix = format!("{prefix}{date}/{vehicle}/{id}/");
    let mut files = vec![GeneratedFile {
        key: format!("{prefix}drive.json"),
        size_hint: 0,
        kind: FileKind::Sidecar,
        recipe: Recipe::Inline(inline_json(&sidecar)),
    }];
    if let Some(file) = files.first_mut() {
        if let Recipe::Inline(bytes) = &file.recipe {
            file.size_hint = bytes.len() as u64;
        }
    }

    // Payload budget of this drive, ±30% around drive_bytes.
    let budget = spec.drive_bytes * rng.range(70, 130) / 100;

    // Logs: consecutive segments of the drive, 1-3 of them, sized by weight.
    let log_count = rng.range(1, 3) as usize;
    let weights: Vec<u64> = (0..log_count).map(|_| rng.range(1, 3)).collect();
    let total_weight: u64 = weights.iter().sum();
    let start_ns = unix_ns(started_at);
    let span_ns = duration_s * 1_000_000_000;
    let mut expected = Vec::with_capacity(log_count);
    let mut acc = 0u64;
    for (k, w) in weights.iter().enumerate() {
        let seg_start = start_ns + span_ns * acc / total_weight;
        acc += w;
        let seg_end = start_ns + span_ns * acc / total_weight;
        let compression = LogCompression::ALL
            [((spec.seed.wrapping_add(*log_counter)) % LogCompression::ALL.len() as u64) as usize];
        *log_counter += 1;
        let topics = choose_topics(&mut rng);
        let log_spec = LogSpec {
            seed: derive(drive_seed, "log", k as u64),
            start_ns: seg_start,
            end_ns: seg_end,
            budget: budget * LOG_SHARE / 100 * w / total_weight,
            compression,
            topics,
            drive_id: id.clone(),
            vehicle: vehicle.clone(),
            segment: k as u32,
            calibration: k == 0,
        };
        let plan = log::plan(&log_spec);
        let key = format!("{prefix}logs/{id}_{k}.mcap");
        expected.push(ExpectedMcap {
            key: key.clone(),
            topics: plan.expected_topics(&log_spec),
            message_count: plan.messages.len() as u64,
            start_time_ns: plan.start_time_ns(),
            end_time_ns: plan.end_time_ns(),
            chunk_count: plan.chunk_count(),
            compression,
        });
        files.push(GeneratedFile {
            key,
            size_hint: plan.payload_bytes() + 4096,
            kind: FileKind::Mcap,
            recipe: Recipe::Mcap(Box::new(log_spec)),
        });
    }

    // Camera and lidar frames: a few sampled frames of a 10 Hz sensor.
    let frames_total = duration_s * 10;
    for (kind, dir, ext, share, format) in [
        (
            FileKind::Camera,
            "camera/front",
            "jpg",
            CAMERA_SHARE,
            BlobFormat::Jpeg,
        ),
        (
            FileKind::Lidar,
            "lidar",
            "bin",
            100 - LOG_SHARE - CAMERA_SHARE,
            BlobFormat::Points,
        ),
    ] {
        let part = budget * share / 100;
        let frame_size = (spec.drive_bytes / 40).clamp(8 * 1024, 256 * 1024);
        let count = (part / frame_size).clamp(2, 24);
        let step = (frames_total / count).max(1);
        let what = if kind == FileKind::Camera {
            "camera"
        } else {
            "lidar"
        };
        for f in 0..count {
            let frame = f * step + rng.below(step);
            let len = part / count * rng.range(80, 120) / 100;
            let len = if format == BlobFormat::Points {
                len / 16 * 16
            } else {
                len
            };
            files.push(GeneratedFile {
                key: format!("{prefix}{dir}/{frame:06}.{ext}"),
                size_hint: len,
                kind,
                recipe: Recipe::Blob {
                    seed: derive(drive_seed, what, f),
                    len,
                    format,
                },
            });
        }
    }

    GeneratedDrive {
        id,
        vehicle,
        city: city.name.to_owned(),
        weather: weather.to_owned(),
        software_version,
        started_at,
        ended_at,
        prefix,
        sidecar,
        files,
        expected,
    }
}

/// Topics of one log: vehicle state and pose always, the rest by chance.
fn choose_topics(rng: &mut Det) -> Vec<TopicId> {
    let mut topics = Vec::new();
    for (i, def) in log::TOPICS.iter().enumerate() {
        if rng.chance(def.presence) {
            topics.push(TopicId(i as u8));
        }
    }
    topics
}

fn drive_id(vehicle: &str, started_at: DateTime<Utc>) -> String {
    format!("{vehicle}-{}", started_at.format("%Y%m%d-%H%M%S"))
}

fn secs(s: u64) -> Duration {
    Duration::seconds(s as i64)
}

pub(super) fn unix_ns(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// Random bytes of `len`, shaped like the format.
pub(super) fn render_blob(seed: u64, len: u64, format: BlobFormat) -> Bytes {
    let mut rng = Det::new(seed);
    let mut data = vec![0u8; len as usize];
    rng.fill(&mut data);
    if format == BlobFormat::Jpeg && data.len() >= 24 {
        // SOI, APP0 "JFIF", ..., EOI.
        data[..11].copy_from_slice(&[
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
        ]);
        let n = data.len();
        data[n - 2..].copy_from_slice(&[0xFF, 0xD9]);
    }
    Bytes::from(data)
}
