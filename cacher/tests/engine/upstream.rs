//! The upstream store over a real S3 protocol server on loopback (s3s-fs via `LoopbackS3`),
//! through aws-sdk-s3 and the full decorator stack of `build_store`: the conformance suite
//! (`conformance`) and failure handling through `FaultProxy` (`faults`).
//!
//! s3s-fs ignores `If-Match` on GET: the tests here check that the header is sent and that
//! the store refuses an answer with another ETag; the server-side precondition is to be
//! verified against Garage in the end-to-end suite.

mod conformance;
mod faults;

use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use milepost_store::{build_store, ByteRange, EgressMeter, ObjectStore};
use milepost_testkit::{FaultProxy, LoopbackUpstream};
use rand::RngCore;

const BUCKET: &str = "conformance";
const MIB: usize = 1024 * 1024;

/// A loopback S3 with two stores built by `build_store`: `store` talks to it directly,
/// `faulty` through a `FaultProxy`. Each store has its own meter.
struct TestS3 {
    /// Scratch space for local files.
    dir: tempfile::TempDir,
    server: LoopbackUpstream,
    proxy: FaultProxy,
    store: Arc<dyn ObjectStore>,
    faulty: Arc<dyn ObjectStore>,
    faulty_meter: Arc<EgressMeter>,
}

impl TestS3 {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = LoopbackUpstream::start(BUCKET).await;
        let proxy = server.fault_proxy().await;
        let store = server.store.clone();
        let faulty_meter = EgressMeter::new();
        let faulty = build_store(&server.settings_via(&proxy), Arc::clone(&faulty_meter))
            .expect("faulty store");
        Self {
            dir,
            server,
            proxy,
            store,
            faulty,
            faulty_meter,
        }
    }

    /// Files s3s-fs keeps for multipart uploads in progress.
    fn upload_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.server.s3.root())
            .expect("root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect()
    }
}

fn random_bytes(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    Bytes::from(data)
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn read_all(
    store: &dyn ObjectStore,
    key: &str,
    range: ByteRange,
) -> (Bytes, Option<(u64, u64)>, u64) {
    let response = store.get(BUCKET, key, range, None).await.expect("get");
    let (range, size) = (response.range, response.meta.size);
    let body = response.collect(usize::MAX).await.expect("body");
    (body, range, size)
}
