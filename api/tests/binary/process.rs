//! The `milepost` binary as a child process, for the tests that kill, restart or trace it:
//! its command line with the test's config file, `milepost serve` waited for by its banner,
//! and GraphQL calls to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub(crate) const ACCESS_KEY: &str = milepost_testkit::LOOPBACK_ACCESS_KEY;
pub(crate) const SECRET_KEY: &str = milepost_testkit::LOOPBACK_SECRET_KEY;
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn milepost(dir: &Path) -> Command {
    milepost_under(dir, &[])
}

/// The `milepost` binary run by `wrapper` (a tracer's command line), or directly when it is
/// empty.
pub(crate) fn milepost_under(dir: &Path, wrapper: &[&str]) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(env!("CARGO_BIN_EXE_milepost"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_milepost")),
    };
    command
        .current_dir(dir)
        .arg("--config")
        .arg(dir.join("milepost.toml"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE");
    for (name, _) in std::env::vars() {
        if name.starts_with("MILEPOST_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `milepost serve` process; killed if still running when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    /// The S3 gateway's address.
    pub(crate) s3_addr: String,
    log: PathBuf,
    // Kept open: the process may still write to its stdout.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    pub(crate) async fn start(dir: &Path, run: u32) -> Server {
        Self::start_under(dir, run, &[]).await
    }

    /// [`start`](Self::start) under `wrapper` (see [`milepost_under`]).
    pub(crate) async fn start_under(dir: &Path, run: u32, wrapper: &[&str]) -> Server {
        let log = dir.join(format!("serve-{run}.log"));
        let mut child = milepost_under(dir, wrapper)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn milepost serve");
        let stdout = child.stdout.take().expect("stdout");
        let banner = tokio::time::timeout(
            DEADLINE,
            tokio::task::spawn_blocking(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let _ = reader.read_line(&mut line);
                (line, reader)
            }),
        )
        .await;
        let addrs = match &banner {
            Ok(Ok((lines, _))) => {
                let mut lines = lines.lines();
                let http = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("milepost listening on http://"));
                let s3 = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("milepost s3 gateway on http://"));
                http.zip(s3).map(|(a, b)| (a.to_owned(), b.to_owned()))
            }
            _ => None,
        };
        match (addrs, banner) {
            (Some((addr, s3_addr)), Ok(Ok((_, stdout)))) => Server {
                child,
                addr,
                s3_addr,
                log,
                _stdout: stdout,
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "milepost serve did not start; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -KILL`, then reaps the process.
    pub(crate) fn sigkill(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = self.child.wait().expect("wait");
        assert!(!status.success(), "killed: {status}");
    }

    /// `kill -TERM` to the process the wrapper (a tracer) runs, then waits for both to end.
    pub(crate) fn sigterm_wrapped(&mut self) {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("the wrapper's children");
        let traced = children
            .split_whitespace()
            .next()
            .expect("the wrapped process")
            .to_owned();
        self.signal_and_wait(&traced);
    }

    /// `kill -TERM`, then waits for a clean exit.
    pub(crate) fn sigterm(&mut self) {
        let pid = self.child.id().to_string();
        self.signal_and_wait(&pid);
    }

    /// `kill -TERM pid`, then waits for a clean exit of the child.
    pub(crate) fn signal_and_wait(&mut self, pid: &str) {
        let log = self.log.clone();
        sigterm_and_wait(&mut self.child, pid, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
    }
}

/// `kill -TERM pid`, then waits for `child` (the process, or the wrapper running it) to exit
/// cleanly; `log` says what it wrote if it does not.
pub(crate) fn sigterm_and_wait(child: &mut Child, pid: &str, log: impl Fn() -> String) {
    let status = Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}; log:\n{}", log());
            return;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn graphql(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    query: &str,
    variables: Value,
) -> Value {
    let body: Value = client
        .post(format!("http://{}/graphql", server.addr))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(
        body.get("errors").is_none(),
        "{query}: {body}; log:\n{}",
        server.log_text()
    );
    body["data"].clone()
}

/// `milepost token create --name NAME --role engineer --s3` with the config in `dir`: the
/// gateway credentials it prints.
pub(crate) fn s3_token(dir: &Path, name: &str) -> milepost_store::StaticCredentials {
    let created = milepost(dir)
        .args([
            "token", "create", "--name", name, "--role", "engineer", "--s3",
        ])
        .output()
        .expect("token create");
    assert!(created.status.success(), "{created:?}");
    let printed = String::from_utf8_lossy(&created.stdout).into_owned();
    let value = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {printed}"))
            .to_owned()
    };
    milepost_store::StaticCredentials::new(
        value("AWS_ACCESS_KEY_ID"),
        value("AWS_SECRET_ACCESS_KEY"),
    )
}
