//! CPU seconds (user + system) from `/proc`, for the benchmarks that report a side's CPU
//! beside its wall time: on two shared cores the sides compete for CPU, and CPU seconds move
//! far less from run to run than wall time does.

use anyhow::{ensure, Context as _};

/// `/proc` counts CPU time in USER_HZ ticks, which is 100 a second on every Linux ABI this
/// runs on (x86_64, arm64), whatever the kernel's own tick rate.
pub const USER_HZ: f64 = 100.0;

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces, so it is
/// cut at its last `)`): index 0 is field 3 of proc(5). `pid` may also be `self` or
/// `thread-self`.
fn stat_fields(pid: &str) -> anyhow::Result<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .with_context(|| format!("/proc/{pid}/stat has no command name: {stat}"))?;
    // Field 3 (the state) is a letter; the fields used here are all numbers.
    Ok(rest
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect())
}

/// User + system CPU seconds of process `pid` so far (fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    own_cpu(&pid.to_string())
}

/// User + system CPU seconds of the calling thread so far: a reader that runs in this
/// process (`/proc/thread-self`, Linux 3.17 and later).
pub fn thread_cpu_seconds() -> anyhow::Result<f64> {
    own_cpu("thread-self")
}

fn own_cpu(pid: &str) -> anyhow::Result<f64> {
    let fields = stat_fields(pid)?;
    ensure!(fields.len() > 12, "/proc/{pid}/stat is short");
    Ok((fields[11] + fields[12]) as f64 / USER_HZ)
}

/// User + system CPU seconds of this process's children that have been waited for (fields 16
/// and 17): a peer tool's whole run once it has been reaped.
pub fn reaped_children_cpu() -> anyhow::Result<f64> {
    let fields = stat_fields("self")?;
    ensure!(fields.len() > 14, "/proc/self/stat is short");
    Ok((fields[13] + fields[14]) as f64 / USER_HZ)
}
