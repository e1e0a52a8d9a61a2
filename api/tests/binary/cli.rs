//! The real `milepost` binary: `serve` with no config answers `/healthz` and stops cleanly on
//! SIGTERM; `token` verbs; a bad config value refuses to start, naming the key.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn milepost(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_milepost"));
    command
        .current_dir(dir)
        .env_remove("MILEPOST_TEST_DATABASE_URL");
    for (name, _) in std::env::vars() {
        if name.starts_with("MILEPOST_") {
            command.env_remove(name);
        }
    }
    command
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Minimal HTTP/1.1 GET over a plain socket, so this test needs no HTTP client.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn serve_with_no_config_answers_healthz_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The only change from the embedded defaults: a free port, so parallel runs never clash.
    let child = milepost(dir.path())
        .arg("serve")
        .env("MILEPOST_SERVER_LISTEN", "127.0.0.1:0")
        .env("MILEPOST_SERVER_S3_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn milepost serve");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read banner");
    let addr = line
        .trim()
        .strip_prefix("milepost listening on http://")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_owned();

    let response = http_get(&addr, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"database\":\"ok\""), "{response}");
    assert!(
        dir.path().join("milepost-data/catalog.db").exists(),
        "SQLite under ./milepost-data by default"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn token_create_list_and_revoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = milepost(dir.path())
        .args(["token", "create", "--name", "ci-bot", "--role", "pipeline"])
        .output()
        .expect("token create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let secret = String::from_utf8(created.stdout).expect("utf8");
    let secret = secret.trim();
    assert!(secret.starts_with("mp_") && secret.len() > 40, "{secret}");
    assert!(String::from_utf8_lossy(&created.stderr).contains("cannot be shown again"));

    let again = milepost(dir.path())
        .args(["token", "create", "--name", "ci-bot", "--role", "admin"])
        .output()
        .expect("duplicate");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let listed = milepost(dir.path())
        .args(["token", "list"])
        .output()
        .expect("list");
    let table = String::from_utf8(listed.stdout).expect("utf8");
    assert!(
        table.contains("ci-bot") && table.contains("PIPELINE") && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(secret), "list never shows secrets");

    let revoked = milepost(dir.path())
        .args(["token", "revoke", "ci-bot"])
        .output()
        .expect("revoke");
    assert!(revoked.status.success());
    let listed = milepost(dir.path())
        .args(["token", "list"])
        .output()
        .expect("list");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("revoked"));

    let missing = milepost(dir.path())
        .args(["token", "revoke", "nobody"])
        .output()
        .expect("revoke");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"nobody\" not found"));
}

#[test]
fn bad_config_fails_at_startup_naming_key_value_and_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = milepost(dir.path())
        .arg("serve")
        .env("MILEPOST_CACHE_CAPACITY", "a lot")
        .output()
        .expect("serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cache.capacity")
            && stderr.contains("\"a lot\"")
            && stderr.contains("expected a size"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("milepost.toml"),
        "[server]\nlisten = 8080\n",
    )
    .expect("write");
    let output = milepost(dir.path())
        .args(["--config", "milepost.toml", "migrate"])
        .output()
        .expect("migrate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.listen")
            && stderr.contains("8080")
            && stderr.contains("milepost.toml"),
        "{stderr}"
    );

    let output = milepost(dir.path())
        .args(["--config", "missing.toml", "serve"])
        .output()
        .expect("serve");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
}

#[test]
fn transfers_verb_prints_the_queue_and_policy_of_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = milepost(dir.path())
        .args(["token", "create", "--name", "ops", "--role", "viewer"])
        .output()
        .expect("token create");
    assert!(created.status.success());
    let secret = String::from_utf8(created.stdout).expect("utf8");
    let child = milepost(dir.path())
        .arg("serve")
        .env("MILEPOST_SERVER_LISTEN", "127.0.0.1:0")
        .env("MILEPOST_TRANSFER_UPLOAD_SCHEDULE", "* 20MiB")
        .env("MILEPOST_TRANSFER_PRIORITIES", r#"["*.json", "*"]"#)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn milepost serve");
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read banner");
    let server = line
        .trim()
        .strip_prefix("milepost listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_owned();

    let output = milepost(dir.path())
        .args(["transfers", "--server", &server, "--token", secret.trim()])
        .output()
        .expect("transfers");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("rate 0 B/s, limit 20.0 MiB/s; queued 0 (0 B)"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("schedule \"* 20MiB\"") && lines[1].contains("priorities *.json *"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("STATE") && lines[2].contains("ATTEMPTS"),
        "{stdout}"
    );
    assert!(lines.contains(&"0 transfers"), "{stdout}");
    // Then the planned downloads, under the default download windows (always open).
    assert!(
        lines.contains(&"planned downloads: schedule \"* off\", window now unlimited"),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some(&"no planned downloads"), "{stdout}");

    let output = milepost(dir.path())
        .args(["transfers", "--server", &server, "--token", "mp_wrong"])
        .output()
        .expect("transfers");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("UNAUTHENTICATED"));
}

#[test]
fn status_verb_prints_the_background_workers_of_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = milepost(dir.path())
        .args(["token", "create", "--name", "ops", "--role", "viewer"])
        .output()
        .expect("token create");
    assert!(created.status.success());
    let secret = String::from_utf8(created.stdout).expect("utf8");
    let child = milepost(dir.path())
        .arg("serve")
        .env("MILEPOST_SERVER_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn milepost serve");
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read banner");
    let server = line
        .trim()
        .strip_prefix("milepost listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_owned();

    let output = milepost(dir.path())
        .args(["status", "--server", &server, "--token", secret.trim()])
        .output()
        .expect("status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("WORKER") && lines[0].contains("LAST ERROR"),
        "{stdout}"
    );
    for worker in ["uploader", "sync_when_asked", "reservations"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(worker))
            .unwrap_or_else(|| panic!("no {worker} row in {stdout}"));
        assert!(
            [" idle ", " busy "].iter().any(|s| row.contains(s)),
            "{stdout}"
        );
    }
}

#[test]
fn a_bad_transfer_policy_fails_at_startup_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = milepost(dir.path())
        .arg("serve")
        .env(
            "MILEPOST_TRANSFER_UPLOAD_SCHEDULE",
            "Mon-Fri 09:00-18:00 20MiB; Sat 25:00-26:00 1MiB",
        )
        .output()
        .expect("serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("transfer.upload_schedule")
            && stderr.contains("Sat 25:00-26:00 1MiB")
            && stderr.contains("rule 2")
            && stderr.contains("expected a schedule"),
        "{stderr}"
    );
    let output = milepost(dir.path())
        .arg("serve")
        .env("MILEPOST_TRANSFER_PRIORITIES", r#"["*.json", ""]"#)
        .output()
        .expect("serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("transfer.priorities") && stderr.contains("priority 1"),
        "{stderr}"
    );
}
