//! A single-node Garage server on loopback for the benchmarks (`bench_cacher`,
//! `bench_gateway`), and the small process helpers they share.
//!
//! Needs `garage` on PATH (`cargo install garage --locked --version 2.5.0`). The server runs
//! with `db_engine = "sqlite"`, replication 1, no compression and region `us-east-1`, has one
//! layout node, one bucket and one key allowed to read, write and own it; it is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use milepost_store::{S3Store, StaticCredentials, UpstreamSettings};
use rand::RngCore as _;

/// Runs `command` with no stdin; its stdout, or an error with both outputs when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A TCP port free on 127.0.0.1 now (another process may take it before it is used).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `tool` is on PATH.
pub fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A single-node Garage server, stopped on drop.
#[derive(Debug)]
pub struct Garage {
    child: Child,
    config: PathBuf,
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    /// The one bucket, created at start.
    pub bucket: String,
    /// The key allowed to read, write and own the bucket.
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Starts Garage with its config, metadata and data under `dir`, and creates `bucket` and
    /// a key for it.
    pub fn start(dir: &Path, bucket: &str) -> anyhow::Result<Garage> {
        std::fs::create_dir_all(dir)?;
        let (s3, rpc, admin) = (free_port()?, free_port()?, free_port()?);
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                dir = dir.display(),
                secret = hex::encode(secret),
            ),
        )?;
        let log = std::fs::File::create(dir.join("garage.log"))?;
        let child = Command::new("garage")
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting garage")?;
        let mut garage = Garage {
            child,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: bucket.to_owned(),
            key_id: String::new(),
            secret: String::new(),
        };
        // `node id` can answer from the key file before the server listens for RPC, which
        // the layout commands need: wait for `status`, which goes through RPC.
        let ready = (0..100).any(|_| {
            let ok = garage.cli(&["status"]).is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        if !ready {
            bail!(
                "garage did not answer `status` within 10 s (see {})",
                dir.join("garage.log").display()
            );
        }
        let node = garage.cli(&["node", "id", "-q"])?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "100G", &node])?;
        garage.cli(&["layout", "apply", "--version", "1"])?;
        garage.cli(&["bucket", "create", bucket])?;
        let key = garage.cli(&["key", "create", "bench-key"])?;
        let field = |name: &str| {
            key.lines()
                .find_map(|line| line.trim().strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_owned())
                .with_context(|| format!("no {name:?} in `garage key create` output: {key}"))
        };
        garage.key_id = field("Key ID")?;
        garage.secret = field("Secret key")?;
        garage.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            bucket,
            "--key",
            "bench-key",
        ])?;
        Ok(garage)
    }

    /// The server's process id (for CPU accounting by the benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `garage -c CONFIG ARGS...`; its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .args(args))
    }

    /// Gives `command` the bucket key as the standard AWS environment (and region us-east-1).
    pub fn aws_env(&self, command: &mut Command) {
        command
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env_remove("AWS_PROFILE");
    }

    /// Upstream settings of this server with the bucket key (path-style).
    pub fn settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            force_path_style: true,
            credentials: Some(StaticCredentials::new(&self.key_id, &self.secret)),
            ..UpstreamSettings::default()
        }
    }

    /// An aws-sdk-s3 client of this server with the bucket key (path-style).
    pub fn store(&self) -> anyhow::Result<S3Store> {
        Ok(S3Store::new(&self.settings())?)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
