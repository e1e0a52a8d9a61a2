//! [`LoopbackUpstream`]: the upstream S3 of a test, a real S3 server on loopback.

use std::path::Path;
use std::sync::Arc;

use milepost_indexer::fleet::{self, Fleet, FleetSpec};
use milepost_store::loopback::LoopbackS3;
use milepost_store::{EgressMeter, ObjectStore, UpstreamSettings};

use crate::FaultProxy;

/// Access key of every loopback S3 server the kit starts.
pub const LOOPBACK_ACCESS_KEY: &str = "test-key";
/// Its secret.
pub const LOOPBACK_SECRET_KEY: &str = "test-secret";

/// A real S3 server on loopback (s3s-fs over a temporary directory) with one bucket, and a
/// store that talks to it directly (not through any office): the upstream of a test.
#[derive(Debug)]
pub struct LoopbackUpstream {
    pub s3: LoopbackS3,
    /// The upstream itself, for seeding and for checking what reached S3.
    pub store: Arc<dyn ObjectStore>,
    /// The bucket created at start.
    pub bucket: String,
    /// The temporary directory it serves, removed on drop; `None` for [`start_in`]
    /// (Self::start_in), whose directory belongs to the caller.
    _dir: Option<tempfile::TempDir>,
}

impl LoopbackUpstream {
    /// Starts the server over a temporary directory and creates `bucket`.
    pub async fn start(bucket: &str) -> LoopbackUpstream {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut upstream = Self::start_in(dir.path(), bucket)
            .await
            .expect("loopback s3");
        upstream._dir = Some(dir);
        upstream
    }

    /// Starts the server over `dir` (kept after it stops: benchmarks reuse a seeded world
    /// across runs) and creates `bucket` unless it exists.
    pub async fn start_in(dir: &Path, bucket: &str) -> anyhow::Result<LoopbackUpstream> {
        let s3 = LoopbackS3::start(
            dir,
            ([127, 0, 0, 1], 0).into(),
            LOOPBACK_ACCESS_KEY,
            LOOPBACK_SECRET_KEY,
        )
        .await?;
        let store = milepost_store::build_store(&s3.settings(), Arc::new(EgressMeter::default()))?;
        store.ensure_bucket(bucket).await?;
        Ok(LoopbackUpstream {
            s3,
            store,
            bucket: bucket.to_owned(),
            _dir: None,
        })
    }

    /// Settings for a server (or client) of this upstream.
    pub fn settings(&self) -> UpstreamSettings {
        self.s3.settings()
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.s3.endpoint()
    }

    /// Starts a [`FaultProxy`] in front of this server.
    pub async fn fault_proxy(&self) -> FaultProxy {
        FaultProxy::start(&self.endpoint())
            .await
            .expect("fault proxy")
    }

    /// Settings for a client that reaches this server through `proxy`.
    pub fn settings_via(&self, proxy: &FaultProxy) -> UpstreamSettings {
        UpstreamSettings {
            endpoint: Some(proxy.endpoint()),
            ..self.settings()
        }
    }

    /// Generates the synthetic fleet of `spec` and uploads every file of it into the bucket.
    pub async fn seed(&self, spec: &FleetSpec) -> Fleet {
        let fleet = fleet::generate(spec);
        milepost_api::demo::seed_fleet(&self.store, &self.bucket, &fleet)
            .await
            .expect("fleet seeded into the loopback bucket");
        fleet
    }
}
