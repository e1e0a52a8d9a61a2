//! MCAP drive logs: a plan (which messages, when, how big, where chunks end) that is cheap to
//! compute, and a renderer that writes the plan with the `mcap` crate.
//!
//! Messages are JSON with `jsonschema` schemas (camera and lidar data base64 in the message,
//! as in the Foxglove JSON schemas), so the logs open in ordinary MCAP tools. Chunks end where
//! the plan says (`chunk_size(None)` plus explicit flushes), so the chunk count is known without
//! rendering; the writer runs single-threaded so that zstd output does not depend on the
//! machine's core count.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Cursor;

use ::mcap::records::{MessageHeader, Metadata};
use ::mcap::{Attachment, Compression, WriteOptions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::rng::{derive, Det};
use super::FleetError;

/// Chunk compression of a generated log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogCompression {
    Zstd,
    Lz4,
    None,
}

impl LogCompression {
    pub const ALL: [Self; 3] = [Self::Zstd, Self::Lz4, Self::None];

    /// The compression string of the log's chunk indexes: `zstd`, `lz4`, or empty.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::None => "",
        }
    }

    fn mcap(self) -> Option<Compression> {
        match self {
            Self::Zstd => Some(Compression::Zstd),
            Self::Lz4 => Some(Compression::Lz4),
            Self::None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    Image(&'static str),
    Points,
    Objects,
    Trajectory,
    Pose,
    VehicleState,
    Log,
}

pub(super) struct TopicDef {
    pub topic: &'static str,
    pub schema_name: &'static str,
    /// Probability that a log has the topic.
    pub presence: f64,
    /// Share of the log's bytes, relative to the other topics of the log.
    share: u64,
    payload: Payload,
}

pub(super) const TOPICS: &[TopicDef] = &[
    TopicDef {
        topic: "/camera/front/image_compressed",
        schema_name: "foxglove.CompressedImage",
        presence: 0.85,
        share: 300,
        payload: Payload::Image("camera_front"),
    },
    TopicDef {
        topic: "/camera/rear/image_compressed",
        schema_name: "foxglove.CompressedImage",
        presence: 0.4,
        share: 150,
        payload: Payload::Image("camera_rear"),
    },
    TopicDef {
        topic: "/lidar/points",
        schema_name: "foxglove.PointCloud",
        presence: 0.75,
        share: 300,
        payload: Payload::Points,
    },
    TopicDef {
        topic: "/perception/objects",
        schema_name: "milepost.PerceptionObjects",
        presence: 0.7,
        share: 90,
        payload: Payload::Objects,
    },
    TopicDef {
        topic: "/planning/trajectory",
        schema_name: "milepost.Trajectory",
        presence: 0.5,
        share: 60,
        payload: Payload::Trajectory,
    },
    TopicDef {
        topic: "/localization/pose",
        schema_name: "foxglove.PoseInFrame",
        presence: 1.0,
        share: 40,
        payload: Payload::Pose,
    },
    TopicDef {
        topic: "/can/vehicle_state",
        schema_name: "milepost.VehicleState",
        presence: 1.0,
        share: 40,
        payload: Payload::VehicleState,
    },
    TopicDef {
        topic: "/diagnostics",
        schema_name: "foxglove.Log",
        presence: 0.6,
        share: 20,
        payload: Payload::Log,
    },
];

/// Index into [`TOPICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TopicId(pub u8);

impl TopicId {
    fn def(self) -> &'static TopicDef {
        &TOPICS[usize::from(self.0) % TOPICS.len()]
    }
}

/// Everything needed to plan and render one log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogSpec {
    pub seed: u64,
    /// Messages have log times in `start_ns..end_ns`.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Approximate message payload bytes.
    pub budget: u64,
    pub compression: LogCompression,
    pub topics: Vec<TopicId>,
    pub drive_id: String,
    pub vehicle: String,
    pub segment: u32,
    /// Whether the log carries a calibration attachment.
    pub calibration: bool,
}

pub(super) struct Planned {
    /// Index into `LogSpec::topics`.
    topic: usize,
    log_time: u64,
    size: u64,
}

pub(super) struct LogPlan {
    pub messages: Vec<Planned>,
    /// Indexes of the messages after which a chunk ends (the last chunk ends with the file).
    chunk_ends: Vec<usize>,
}

/// Average payload size of a topic in a log of `budget` bytes.
fn avg_size(payload: Payload, budget: u64) -> u64 {
    match payload {
        Payload::Image(_) => (budget / 48).clamp(2048, 64 * 1024),
        Payload::Points => (budget / 64).clamp(2048, 48 * 1024),
        Payload::Objects => 900,
        Payload::Trajectory => 800,
        Payload::Pose => 230,
        Payload::VehicleState => 170,
        Payload::Log => 180,
    }
}

pub(super) fn plan(spec: &LogSpec) -> LogPlan {
    let mut rng = Det::new(derive(spec.seed, "plan", 0));
    let span = spec.end_ns.saturating_sub(spec.start_ns).max(1);
    let share_total: u64 = spec
        .topics
        .iter()
        .map(|t| t.def().share)
        .sum::<u64>()
        .max(1);
    let mut messages = Vec::new();
    for (ti, topic) in spec.topics.iter().enumerate() {
        let def = topic.def();
        let avg = avg_size(def.payload, spec.budget);
        let count = (spec.budget * def.share / share_total / avg).clamp(4, 200_000);
        let slot = (span / count).max(1);
        for k in 0..count {
            let last = spec.end_ns.saturating_sub(1).max(spec.start_ns);
            let log_time = (spec.start_ns + k * slot + rng.below(slot)).min(last);
            let size = avg * rng.range(75, 125) / 100;
            messages.push(Planned {
                topic: ti,
                log_time,
                size,
            });
        }
    }
    messages.sort_by_key(|m| (m.log_time, m.topic));

    let target = (spec.budget / 24).clamp(8 * 1024, 1024 * 1024);
    let mut chunk_ends = Vec::new();
    let mut acc = 0;
    for (i, m) in messages.iter().enumerate() {
        acc += m.size;
        if acc >= target && i + 1 < messages.len() {
            chunk_ends.push(i);
            acc = 0;
        }
    }
    LogPlan {
        messages,
        chunk_ends,
    }
}

impl LogPlan {
    pub fn expected_topics(&self, spec: &LogSpec) -> Vec<(String, String, u64)> {
        let mut counts = vec![0u64; spec.topics.len()];
        for m in &self.messages {
            counts[m.topic] += 1;
        }
        let mut topics: Vec<(String, String, u64)> = spec
            .topics
            .iter()
            .zip(counts)
            .map(|(t, n)| (t.def().topic.to_owned(), t.def().schema_name.to_owned(), n))
            .collect();
        topics.sort();
        topics
    }

    pub fn start_time_ns(&self) -> u64 {
        self.messages.iter().map(|m| m.log_time).min().unwrap_or(0)
    }

    pub fn end_time_ns(&self) -> u64 {
        self.messages.iter().map(|m| m.log_time).max().unwrap_or(0)
    }

    pub fn chunk_count(&self) -> u64 {
        if self.messages.is_empty() {
            0
        } else {
            self.chunk_ends.len() as u64 + 1
        }
    }

    pub fn payload_bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.size).sum()
    }
}

pub(super) fn render(spec: &LogSpec) -> Result<Bytes, FleetError> {
    let what = format!("mcap log {} of drive {}", spec.segment, spec.drive_id);
    let fail = |err: ::mcap::McapError| FleetError::new(what.clone(), err);
    let plan = plan(spec);
    let options = WriteOptions::new()
        .compression(spec.compression.mcap())
        .chunk_size(None)
        .use_chunks(true)
        .compression_threads(0)
        .profile("")
        .library("milepost-fleet");
    let capacity = plan.payload_bytes() as usize + 64 * 1024;
    let mut w = options
        .create(Cursor::new(Vec::with_capacity(capacity)))
        .map_err(fail)?;

    // Metadata and attachments go before the first chunk, so they do not split one.
    let drive = BTreeMap::from([
        ("drive_id".to_owned(), spec.drive_id.clone()),
        ("vehicle".to_owned(), spec.vehicle.clone()),
        ("segment".to_owned(), spec.segment.to_string()),
    ]);
    w.write_metadata(&Metadata {
        name: "drive".into(),
        metadata: drive,
    })
    .map_err(fail)?;
    if spec.calibration {
        let data = format!(
            "{{\"vehicle\": \"{}\", \"camera_front\": {{\"fx\": 1266.4, \"fy\": 1266.4, \"cx\": 816.3, \"cy\": 491.5}}, \"lidar_to_base\": [1.52, 0.0, 1.84]}}\n",
            spec.vehicle
        );
        w.attach(&Attachment {
            log_time: spec.start_ns,
            create_time: spec.start_ns,
            name: "calibration.json".into(),
            media_type: "application/json".into(),
            data: Cow::Owned(data.into_bytes()),
        })
        .map_err(fail)?;
    }

    let mut schema_ids: BTreeMap<&str, u16> = BTreeMap::new();
    let mut channel_ids = Vec::with_capacity(spec.topics.len());
    for topic in &spec.topics {
        let def = topic.def();
        let schema_id = match schema_ids.get(def.schema_name) {
            Some(&id) => id,
            None => {
                let id = w
                    .add_schema(
                        def.schema_name,
                        "jsonschema",
                        json_schema(def.payload).as_bytes(),
                    )
                    .map_err(fail)?;
                schema_ids.insert(def.schema_name, id);
                id
            }
        };
        let metadata = BTreeMap::from([("frame_id".to_owned(), frame_id(def.payload).to_owned())]);
        channel_ids.push(
            w.add_channel(schema_id, def.topic, "json", &metadata)
                .map_err(fail)?,
        );
    }

    let mut rng = Det::new(derive(spec.seed, "payload", 0));
    let mut sequences = vec![0u32; spec.topics.len()];
    let mut chunk_ends = plan.chunk_ends.iter().copied().peekable();
    let mut payload = String::new();
    for (i, m) in plan.messages.iter().enumerate() {
        sequences[m.topic] += 1;
        let def = spec.topics[m.topic].def();
        payload.clear();
        write_payload(&mut payload, def.payload, &mut rng, m.log_time, m.size);
        let latency = rng.below(5_000_000);
        let header = MessageHeader {
            channel_id: channel_ids[m.topic],
            sequence: sequences[m.topic],
            log_time: m.log_time,
            publish_time: m.log_time.saturating_sub(latency).max(spec.start_ns),
        };
        w.write_to_known_channel(&header, payload.as_bytes())
            .map_err(fail)?;
        if chunk_ends.peek() == Some(&i) {
            w.flush().map_err(fail)?;
            chunk_ends.next();
        }
    }
    w.finish().map_err(fail)?;
    Ok(Bytes::from(w.into_inner().into_inner()))
}

fn frame_id(payload: Payload) -> &'static str {
    match payload {
        Payload::Image(frame) => frame,
        Payload::Points => "lidar_top",
        Payload::Objects | Payload::Trajectory | Payload::VehicleState | Payload::Log => {
            "base_link"
        }
        Payload::Pose => "map",
    }
}

const TIME_SCHEMA: &str =
    r#"{"type":"object","properties":{"sec":{"type":"integer"},"nsec":{"type":"integer"}}}"#;

fn json_schema(payload: Payload) -> String {
    let body = match payload {
        Payload::Image(_) => {
            r#""frame_id":{"type":"string"},"format":{"type":"string"},"data":{"type":"string","contentEncoding":"base64"}"#
        }
        Payload::Points => {
            r#""frame_id":{"type":"string"},"point_stride":{"type":"integer"},"fields":{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"offset":{"type":"integer"},"type":{"type":"integer"}}}},"data":{"type":"string","contentEncoding":"base64"}"#
        }
        Payload::Objects => {
            r#""objects":{"type":"array","items":{"type":"object","properties":{"id":{"type":"integer"},"class":{"type":"string"},"x":{"type":"number"},"y":{"type":"number"},"vx":{"type":"number"},"vy":{"type":"number"},"confidence":{"type":"number"}}}}"#
        }
        Payload::Trajectory => {
            r#""points":{"type":"array","items":{"type":"object","properties":{"t":{"type":"number"},"x":{"type":"number"},"y":{"type":"number"},"v":{"type":"number"}}}}"#
        }
        Payload::Pose => {
            r#""frame_id":{"type":"string"},"pose":{"type":"object","properties":{"position":{"type":"object"},"orientation":{"type":"object"}}}"#
        }
        Payload::VehicleState => {
            r#""speed_mps":{"type":"number"},"steering_deg":{"type":"number"},"throttle":{"type":"number"},"brake":{"type":"number"},"gear":{"type":"string"}"#
        }
        Payload::Log => {
            r#""level":{"type":"integer"},"message":{"type":"string"},"name":{"type":"string"},"file":{"type":"string"},"line":{"type":"integer"}"#
        }
    };
    format!(r#"{{"type":"object","properties":{{"timestamp":{TIME_SCHEMA},{body}}}}}"#)
}

const CLASSES: &[&str] = &["car", "truck", "bus", "pedestrian", "cyclist", "motorcycle"];
const LOG_LINES: &[&str] = &[
    "planner cycle overran budget",
    "lidar packet loss above threshold",
    "gnss fix degraded to float",
    "perception tracker reset",
    "can bus heartbeat late",
    "camera exposure adjusted",
];

/// Appends a JSON message of about `size` bytes to `out` (writes to a String cannot fail).
fn write_payload(out: &mut String, payload: Payload, rng: &mut Det, log_time: u64, size: u64) {
    let (sec, nsec) = (log_time / 1_000_000_000, log_time % 1_000_000_000);
    let _ = write!(out, r#"{{"timestamp":{{"sec":{sec},"nsec":{nsec}}},"#);
    match payload {
        Payload::Image(frame) => {
            let raw = (size * 3 / 4).saturating_sub(96).max(16) as usize;
            let mut data = vec![0u8; raw];
            rng.fill(&mut data);
            data[..4].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
            let _ = write!(out, r#""frame_id":"{frame}","format":"jpeg","data":""#);
            base64(out, &data);
            out.push_str("\"}");
        }
        Payload::Points => {
            let raw = ((size * 3 / 4).saturating_sub(256).max(16) / 16 * 16) as usize;
            let mut data = vec![0u8; raw];
            rng.fill(&mut data);
            out.push_str(
                r#""frame_id":"lidar_top","point_stride":16,"fields":[{"name":"x","offset":0,"type":7},{"name":"y","offset":4,"type":7},{"name":"z","offset":8,"type":7},{"name":"intensity","offset":12,"type":7}],"data":""#,
            );
            base64(out, &data);
            out.push_str("\"}");
        }
        Payload::Objects => {
            out.push_str(r#""objects":["#);
            let n = (size / 110).max(1);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    r#"{{"id":{},"class":"{}","x":{:.2},"y":{:.2},"vx":{:.2},"vy":{:.2},"confidence":{:.3}}}"#,
                    rng.below(500),
                    rng.pick(CLASSES),
                    rng.float(-80.0, 80.0),
                    rng.float(-20.0, 20.0),
                    rng.float(-15.0, 15.0),
                    rng.float(-3.0, 3.0),
                    rng.float(0.3, 1.0)
                );
            }
            out.push_str("]}");
        }
        Payload::Trajectory => {
            out.push_str(r#""points":["#);
            let n = (size / 48).max(2);
            let (mut x, mut y, v) = (0.0f64, 0.0f64, rng.float(0.0, 25.0));
            let heading = rng.float(-0.2, 0.2);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                let t = i as f64 * 0.1;
                let _ = write!(out, r#"{{"t":{t:.1},"x":{x:.2},"y":{y:.2},"v":{v:.2}}}"#);
                x += v * 0.1 * heading.cos();
                y += v * 0.1 * heading.sin();
            }
            out.push_str("]}");
        }
        Payload::Pose => {
            let yaw = rng.float(-std::f64::consts::PI, std::f64::consts::PI);
            let _ = write!(
                out,
                r#""frame_id":"map","pose":{{"position":{{"x":{:.3},"y":{:.3},"z":{:.3}}},"orientation":{{"x":0.0,"y":0.0,"z":{:.6},"w":{:.6}}}}}}}"#,
                rng.float(-5000.0, 5000.0),
                rng.float(-5000.0, 5000.0),
                rng.float(0.0, 40.0),
                (yaw / 2.0).sin(),
                (yaw / 2.0).cos()
            );
        }
        Payload::VehicleState => {
            let _ = write!(
                out,
                r#""speed_mps":{:.2},"steering_deg":{:.2},"throttle":{:.3},"brake":{:.3},"gear":"D"}}"#,
                rng.float(0.0, 30.0),
                rng.float(-30.0, 30.0),
                rng.float(0.0, 1.0),
                rng.float(0.0, 0.4)
            );
        }
        Payload::Log => {
            let _ = write!(
                out,
                r#""level":{},"message":"{}","name":"{}","file":"{}.cc","line":{}}}"#,
                rng.range(1, 4),
                rng.pick(LOG_LINES),
                ["planner", "perception", "localization", "control"][rng.below(4) as usize],
                ["main", "node", "pipeline"][rng.below(3) as usize],
                rng.range(10, 2000)
            );
        }
    }
}

/// Standard base64 with padding.
fn base64(out: &mut String, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(char::from(ALPHABET[(n >> 18) as usize & 63]));
        out.push(char::from(ALPHABET[(n >> 12) as usize & 63]));
        out.push(if chunk.len() > 1 {
            char::from(ALPHABET[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            char::from(ALPHABET[n as usize & 63])
        } else {
            '='
        });
    }
}
