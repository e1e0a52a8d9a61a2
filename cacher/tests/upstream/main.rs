//! The upstream store over a real S3 protocol server on loopback (s3s-fs via `LoopbackS3`),
//! through aws-sdk-s3 and the full decorator stack of `build_store`: the conformance suite
//! (`conformance`) and failure handling through `FaultProxy` (`faults`).
//!
//! s3s-fs ignores `If-Match` on GET: the tests here check that the header is sent and that
//! the store refuses an answer with another ETag; the server-side precondition is to be
//! verified against Garage in the end-to-end suite.

mod conformance;
mod faults;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use milepost_cacher::loopback::LoopbackS3;
use milepost_cacher::testing::FaultProxy;
use milepost_cacher::upstream::{
    build_store, ByteRange, EgressMeter, ObjectStore, UpstreamSettings,
};
use rand::RngCore;

const BUCKET: &str = "conformance";
const MIB: usize = 1024 * 1024;

/// A loopback S3 with two stores built by `build_store`: `store` talks to it directly,
/// `faulty` through a `FaultProxy`. Each store has its own meter.
struct TestS3 {
    dir: tempfile::TempDir,
    server: LoopbackS3,
    proxy: FaultProxy,
    store: Arc<dyn ObjectStore>,
    faulty: Arc<dyn ObjectStore>,
    faulty_meter: Arc<EgressMeter>,
}

impl TestS3 {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = LoopbackS3::start(dir.path(), addr, "AKIDMILEPOSTTEST", "test-secret-key")
            .await
            .expect("loopback s3");
        let proxy = FaultProxy::start(&server.endpoint())
            .await
            .expect("fault proxy");
        let store = build_store(&server.settings(), EgressMeter::new()).expect("store");
        let faulty_meter = EgressMeter::new();
        let proxied = UpstreamSettings {
            endpoint: Some(proxy.endpoint()),
            ..server.settings()
        };
        let faulty = build_store(&proxied, Arc::clone(&faulty_meter)).expect("faulty store");
        store.ensure_bucket(BUCKET).await.expect("bucket");
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
        std::fs::read_dir(self.server.root())
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
