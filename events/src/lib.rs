#![doc = include_str!("../README.md")]

use std::fmt;
use std::time::Duration;

use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use milepost_store::StaticCredentials;
use serde_json::Value;

/// Messages asked for per receive: SQS's most.
const MAX_MESSAGES: i32 = 10;

/// Where the queue is and how to reach it.
#[derive(Clone, Debug)]
pub struct EventQueueSettings {
    /// `sqs://` followed by the queue URL (`sqs://https://sqs.eu-central-1.amazonaws.com/123456789012/fleet`,
    /// or without the scheme, which is then https).
    pub url: String,
    /// The region requests are signed for.
    pub region: String,
    /// A static key pair; `None` for the standard AWS chain.
    pub credentials: Option<StaticCredentials>,
    /// The longest a receive waits for a message (SQS long polling, at most 20 s).
    pub wait: Duration,
}

/// A failure talking to the queue, or a setting it cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("catalog.events = {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("cannot {action} on the event queue {queue}: {message}")]
    Queue {
        action: &'static str,
        queue: String,
        message: String,
    },
}

/// What happened to an object, as far as the catalog cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectEventKind {
    /// Put, copied, or completed as a multipart upload.
    Created,
    /// Deleted (a delete marker too), or expired by a lifecycle rule.
    Removed,
}

/// One object event of a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    pub bucket: String,
    /// The key, decoded.
    pub key: String,
    pub kind: ObjectEventKind,
}

/// One message received: its events, or why it has none that can be used.
#[derive(Clone)]
pub struct Delivery {
    pub message_id: String,
    pub events: Vec<ObjectEvent>,
    /// Set when the message is not an S3 notification that could be read; it is to be
    /// acknowledged anyway (it would come back forever) and the problem logged.
    pub problem: Option<String>,
    receipt: String,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("events", &self.events)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

/// The SQS queue the catalog bucket's event notifications arrive on.
#[derive(Debug)]
pub struct EventQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    wait_seconds: i32,
}

/// The queue URL of a `catalog.events` setting, and its endpoint (scheme and authority).
pub fn parse_events_url(url: &str) -> Result<(String, String), EventsError> {
    let invalid = |reason: &str| EventsError::Invalid {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("sqs://")
        .ok_or_else(|| invalid("expected sqs:// followed by the queue URL"))?;
    let queue_url = if rest.starts_with("http://") || rest.starts_with("https://") {
        rest.to_owned()
    } else {
        format!("https://{rest}")
    };
    let after_scheme = queue_url.find("://").map_or(0, |i| i + 3);
    let path_start = queue_url[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .ok_or_else(|| invalid("the queue URL has no path (expected .../ACCOUNT/QUEUE)"))?;
    if path_start == after_scheme {
        return Err(invalid("the queue URL has no host"));
    }
    if queue_url[path_start..].trim_matches('/').is_empty() {
        return Err(invalid("the queue URL names no queue"));
    }
    Ok((queue_url.clone(), queue_url[..path_start].to_owned()))
}

impl EventQueue {
    /// A client for the queue `settings` name. Nothing is sent until [`receive`](Self::receive).
    pub fn connect(settings: &EventQueueSettings) -> Result<EventQueue, EventsError> {
        let (queue_url, endpoint) = parse_events_url(&settings.url)?;
        let wait = settings.wait.min(Duration::from_secs(20));
        let (http_client, credentials) =
            milepost_store::aws_client_parts(&settings.region, settings.credentials.as_ref());
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .endpoint_url(endpoint)
            .http_client(http_client)
            .credentials_provider(credentials)
            // The worker's loop retries: a failed receive is simply made again.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(wait + Duration::from_secs(10))
                    .build(),
            )
            .build();
        Ok(EventQueue {
            client: aws_sdk_sqs::Client::from_conf(config),
            queue_url,
            wait_seconds: i32::try_from(wait.as_secs()).unwrap_or(20),
        })
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Waits up to `wait` (`None`: the settings' `wait`) for messages and returns up to ten,
    /// parsed; `Some(Duration::ZERO)` takes only what is waiting already.
    pub async fn receive(&self, wait: Option<Duration>) -> Result<Vec<Delivery>, EventsError> {
        let wait_seconds = wait.map_or(self.wait_seconds, |wait| {
            i32::try_from(wait.as_secs().min(20)).unwrap_or(20)
        });
        let answer = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(MAX_MESSAGES)
            .wait_time_seconds(wait_seconds)
            .send()
            .await
            .map_err(|err| self.failed("receive messages", err))?;
        Ok(answer
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let receipt = message.receipt_handle?;
                let message_id = message.message_id.unwrap_or_default();
                let (events, problem) = match parse_message(message.body.as_deref().unwrap_or("")) {
                    Ok(events) => (events, None),
                    Err(problem) => (Vec::new(), Some(problem)),
                };
                Some(Delivery {
                    message_id,
                    events,
                    problem,
                    receipt,
                })
            })
            .collect())
    }

    /// Deletes `deliveries` from the queue: their events were applied.
    pub async fn acknowledge(&self, deliveries: &[Delivery]) -> Result<(), EventsError> {
        for chunk in deliveries.chunks(MAX_MESSAGES as usize) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, delivery)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&delivery.receipt)
                        .build()
                        .map_err(|err| EventsError::Queue {
                            action: "delete messages",
                            queue: self.queue_url.clone(),
                            message: err.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let answer = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| self.failed("delete messages", err))?;
            if let Some(failed) = answer.failed.first() {
                return Err(EventsError::Queue {
                    action: "delete messages",
                    queue: self.queue_url.clone(),
                    message: format!(
                        "{} of {} not deleted: {} {}",
                        answer.failed.len(),
                        chunk.len(),
                        failed.code,
                        failed.message.as_deref().unwrap_or("")
                    ),
                });
            }
        }
        Ok(())
    }

    fn failed<E, R>(&self, action: &'static str, err: SdkError<E, R>) -> EventsError
    where
        E: std::error::Error + 'static,
        R: fmt::Debug,
    {
        EventsError::Queue {
            action,
            queue: self.queue_url.clone(),
            message: DisplayErrorContext(&err).to_string(),
        }
    }
}

/// The object events of one SQS message body: an S3 event notification (`Records[]`), the
/// same wrapped by SNS (`"Type": "Notification"`, the notification in `Message`), or an
/// EventBridge event of S3 (`"source": "aws.s3"`). S3's test event, and records of other
/// event types (restores, tagging, replication), give no events. Anything else is an error
/// naming what was wrong.
pub fn parse_message(body: &str) -> Result<Vec<ObjectEvent>, String> {
    let value: Value =
        serde_json::from_str(body).map_err(|err| format!("not JSON ({err}): {}", excerpt(body)))?;
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| "an SNS notification without a Message".to_owned())?;
        return parse_message(inner);
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if value.get("source").and_then(Value::as_str) == Some("aws.s3") {
        return eventbridge_event(&value).map(|event| event.into_iter().collect());
    }
    let records = value
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("not an S3 event notification: {}", excerpt(body)))?;
    let mut events = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let name = record
            .get("eventName")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("Records[{i}] has no eventName"))?;
        let Some(kind) = kind_of(name) else {
            continue;
        };
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(record, |v, step| v.get(step))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("Records[{i}] has no {}", path.join(".")))
        };
        let bucket = field(&["s3", "bucket", "name"])?.to_owned();
        let key = decode_key(field(&["s3", "object", "key"])?)
            .map_err(|err| format!("Records[{i}]: {err}"))?;
        events.push(ObjectEvent { bucket, key, kind });
    }
    Ok(events)
}

/// `ObjectCreated:*` and `ObjectRemoved:*` / `LifecycleExpiration:*`; other event types
/// (restores, tagging, ACLs, replication) change nothing the catalog keeps.
fn kind_of(event_name: &str) -> Option<ObjectEventKind> {
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    if name.starts_with("ObjectCreated:") {
        Some(ObjectEventKind::Created)
    } else if name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:") {
        Some(ObjectEventKind::Removed)
    } else {
        None
    }
}

/// An EventBridge S3 event: `detail-type` "Object Created" or "Object Deleted", the key in
/// `detail.object.key` (not form-encoded).
fn eventbridge_event(value: &Value) -> Result<Option<ObjectEvent>, String> {
    let kind = match value.get("detail-type").and_then(Value::as_str) {
        Some("Object Created") => ObjectEventKind::Created,
        Some("Object Deleted") => ObjectEventKind::Removed,
        _ => return Ok(None),
    };
    let detail = value
        .get("detail")
        .ok_or_else(|| "an EventBridge event without detail".to_owned())?;
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(detail, |v, step| v.get(step))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("an EventBridge event without detail.{}", path.join(".")))
    };
    Ok(Some(ObjectEvent {
        bucket: text(&["bucket", "name"])?,
        key: text(&["object", "key"])?,
        kind,
    }))
}

/// S3 notifications carry keys form-encoded: `+` for a space, `%XX` for other bytes.
fn decode_key(encoded: &str) -> Result<String, String> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| format!("the key {encoded:?} does not decode to UTF-8"))
}

fn excerpt(body: &str) -> String {
    let mut cut = body.len().min(120);
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}", &body[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(bucket: &str, key: &str) -> ObjectEvent {
        ObjectEvent {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            kind: ObjectEventKind::Created,
        }
    }

    #[test]
    fn s3_notifications_are_read_with_their_keys_decoded() {
        // AWS keeps slashes and writes spaces as `+`; moto encodes slashes too.
        let body = r#"{"Records":[
            {"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"fleet"},"object":{"key":"drives/a+b/x%2By%C3%A9.json","size":2}}},
            {"eventName":"ObjectRemoved:DeleteMarkerCreated","s3":{"bucket":{"name":"fleet"},"object":{"key":"drives%2Fold%2Flog.mcap"}}},
            {"eventName":"ObjectRestore:Completed","s3":{"bucket":{"name":"fleet"},"object":{"key":"cold"}}},
            {"eventName":"LifecycleExpiration:Delete","s3":{"bucket":{"name":"fleet"},"object":{"key":"runs/r1/run.json"}}}
        ]}"#;
        let events = parse_message(body).expect("parsed");
        assert_eq!(
            events,
            [
                created("fleet", "drives/a b/x+yé.json"),
                ObjectEvent {
                    bucket: "fleet".to_owned(),
                    key: "drives/old/log.mcap".to_owned(),
                    kind: ObjectEventKind::Removed,
                },
                ObjectEvent {
                    bucket: "fleet".to_owned(),
                    key: "runs/r1/run.json".to_owned(),
                    kind: ObjectEventKind::Removed,
                },
            ]
        );
    }

    #[test]
    fn test_events_sns_envelopes_and_eventbridge_events_are_understood() {
        assert_eq!(
            parse_message(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"fleet"}"#),
            Ok(Vec::new())
        );
        let inner = r#"{"Records":[{"eventName":"ObjectCreated:CompleteMultipartUpload","s3":{"bucket":{"name":"fleet"},"object":{"key":"drives/d/cam.mcap"}}}]}"#;
        let sns = serde_json::json!({ "Type": "Notification", "Message": inner }).to_string();
        assert_eq!(
            parse_message(&sns),
            Ok(vec![created("fleet", "drives/d/cam.mcap")])
        );
        let bridge = r#"{"source":"aws.s3","detail-type":"Object Created","detail":{"bucket":{"name":"fleet"},"object":{"key":"drives/d e/x.json"}}}"#;
        assert_eq!(
            parse_message(bridge),
            Ok(vec![created("fleet", "drives/d e/x.json")])
        );
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let err = parse_message("hello").expect_err("not JSON");
        assert!(err.contains("not JSON"), "{err}");
        let err = parse_message(r#"{"foo":1}"#).expect_err("no records");
        assert!(err.contains("not an S3 event notification"), "{err}");
        let err = parse_message(
            r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"}}}]}"#,
        )
        .expect_err("no key");
        assert!(err.contains("Records[0] has no s3.object.key"), "{err}");
        let err = parse_message(r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%FF"}}}]}"#)
            .expect_err("not UTF-8");
        assert!(err.contains("does not decode to UTF-8"), "{err}");
    }

    #[test]
    fn events_urls_name_a_queue() {
        assert_eq!(
            parse_events_url("sqs://http://127.0.0.1:5055/123456789012/events").expect("valid"),
            (
                "http://127.0.0.1:5055/123456789012/events".to_owned(),
                "http://127.0.0.1:5055".to_owned()
            )
        );
        assert_eq!(
            parse_events_url("sqs://sqs.eu-central-1.amazonaws.com/123456789012/fleet")
                .expect("valid")
                .1,
            "https://sqs.eu-central-1.amazonaws.com"
        );
        for bad in [
            "http://x/1/q",
            "sqs://",
            "sqs://host",
            "sqs://host/",
            "sqs:///1/q",
        ] {
            let err = parse_events_url(bad).expect_err(bad).to_string();
            assert!(err.contains("catalog.events"), "{bad}: {err}");
        }
    }
}
