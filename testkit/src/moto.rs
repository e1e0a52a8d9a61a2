//! [`MotoServer`]: moto's server on loopback, an S3 and SQS server that also delivers S3 event
//! notifications to its queues, for tests of the catalog's event path. Needs `moto_server` on
//! PATH (`pip install 'moto[server]'`); checks no signatures.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use milepost_store::{S3Store, StaticCredentials, UpstreamSettings};

use crate::garage::{free_port, which};

/// moto's account id: queue URLs and ARNs name it.
const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// A `moto_server` process on `127.0.0.1`, killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    /// `http://127.0.0.1:PORT`: S3 and SQS both.
    pub endpoint: String,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it answers; `None` (after saying why) when
    /// `moto_server` is not installed.
    pub async fn start() -> anyhow::Result<Option<MotoServer>> {
        if !which("moto_server") {
            eprintln!("skipped: moto_server is not installed (pip install 'moto[server]')");
            return Ok(None);
        }
        let port = free_port()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server")?;
        let server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::builder().no_proxy().build()?;
        let started = Instant::now();
        while client
            .get(format!("{}/moto-api/", server.endpoint))
            .send()
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "moto_server did not answer on {} within 30 s",
                    server.endpoint
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Some(server))
    }

    /// Upstream settings for moto's S3 (path style, any key pair).
    pub fn settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            endpoint: Some(self.endpoint.clone()),
            region: REGION.to_owned(),
            force_path_style: true,
            credentials: Some(StaticCredentials::new("moto", "moto-secret")),
            ..UpstreamSettings::default()
        }
    }

    /// A store over moto's S3.
    pub fn store(&self) -> anyhow::Result<S3Store> {
        Ok(S3Store::new(&self.settings())?)
    }

    fn sqs(&self) -> aws_sdk_sqs::Client {
        let (http_client, credentials) = milepost_store::aws_client_parts(
            REGION,
            Some(&StaticCredentials::new("moto", "moto-secret")),
        );
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .http_client(http_client)
            .credentials_provider(credentials)
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Creates the queue `name`; returns its URL.
    pub async fn create_queue(&self, name: &str) -> anyhow::Result<String> {
        let created = self.sqs().create_queue().queue_name(name).send().await?;
        created
            .queue_url
            .context("CreateQueue answered no queue URL")
    }

    /// Sends `body` to the queue at `queue_url`, as any producer could.
    pub async fn send(&self, queue_url: &str, body: &str) -> anyhow::Result<()> {
        self.sqs()
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await?;
        Ok(())
    }

    /// Has S3 notify the queue `queue` of every object created in or removed from `bucket`
    /// (`Some`), or stop notifying (`None`).
    pub async fn notify(&self, bucket: &str, queue: Option<&str>) -> anyhow::Result<()> {
        let configuration = match queue {
            Some(queue) => NotificationConfiguration::builder()
                .queue_configurations(
                    QueueConfiguration::builder()
                        .queue_arn(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"))
                        .events(Event::S3ObjectCreated)
                        .events(Event::S3ObjectRemoved)
                        .build()?,
                )
                .build(),
            None => NotificationConfiguration::builder().build(),
        };
        self.store()?
            .client()
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(configuration)
            .send()
            .await?;
        Ok(())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
