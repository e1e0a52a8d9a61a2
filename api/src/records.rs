//! Records shared through S3. `registerDrive`, `registerRun` and `tagScenario` change the
//! office catalog, then write the record as the sidecar the indexer reads
//! (`<drive prefix>drive.json`, `<run prefix>run.json`, design.md's layout) through the
//! office store, that is through the write-back path: the office sees it at once and S3 gets
//! it in the background, so another office rebuilds the same records on its next sync.
//! (`createDataset` writes its manifest the same way, in the cacher.)
//!
//! The sidecar is rebuilt from the catalog rows, so it always holds the whole record: a
//! scenario tagged in the office lands in its drive's sidecar next to the ones read from S3,
//! and fields the catalog keeps without a column (`extra`) are written back unchanged.
//!
//! Rewrites of one sidecar are serialized ([`SidecarLocks`]): each holds the sidecar's lock
//! from reading the rows to the write being journaled. The catalog change is committed before
//! its rewrite starts, so whichever rewrite takes the lock last reads every change committed
//! by the others, and its write, journaled last, is the one the office serves and S3 keeps
//! (write-back: last acknowledged write wins). Without the lock, a rewrite that read the rows
//! before another call's change could be journaled after that call's, dropping the change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use milepost_indexer::catalog;
use milepost_schema::entity::{drive, run};
use sea_orm::DatabaseConnection;
use serde_json::{json, Map, Value};
use tokio::sync::OwnedMutexGuard;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// The largest sidecar written (the indexer refuses larger ones).
const MAX_SIDECAR: usize = 4 << 20;

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `extra` first, then the record's own fields over it: unknown fields survive a rewrite
/// but never shadow a known one.
fn merged(extra: &Value, fields: Value) -> Value {
    let mut out: Map<String, Value> = extra.as_object().cloned().unwrap_or_default();
    if let Value::Object(fields) = fields {
        out.extend(fields);
    }
    Value::Object(out)
}

async fn put(app: &AppState, bucket: &str, key: String, record: &Value) -> ApiResult<()> {
    let mut body = serde_json::to_vec_pretty(record)
        .map_err(|err| ApiError::Unavailable(format!("cannot encode {key}: {err}")))?;
    body.push(b'\n');
    if body.len() > MAX_SIDECAR {
        return Err(ApiError::bad_input(
            "input",
            format!(
                "the record would be {} bytes as {key}; at most {MAX_SIDECAR}",
                body.len()
            ),
        ));
    }
    app.store
        .put(bucket, &key, body.into())
        .await
        .map_err(|err| {
            tracing::error!(bucket, key, error = %err, "cannot write a record through the office");
            ApiError::Unavailable(format!(
                "the record is in the office catalog but could not be written to s3://{bucket}/{key}; try again"
            ))
        })?;
    Ok(())
}

/// One async lock per sidecar object (bucket, key), taken by [`write_drive`] and
/// [`write_run`]. An entry lives only while some rewrite holds or waits for its lock: the map
/// never holds more entries than rewrites in flight.
#[derive(Debug, Default)]
pub struct SidecarLocks {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

#[derive(Debug)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Rewrites holding or waiting for `lock`; the entry goes when the last one is done.
    users: usize,
}

impl SidecarLocks {
    /// Waits until no other rewrite holds the sidecar `bucket/key` (waiters get it in arrival
    /// order) and holds it until the guard is dropped.
    pub async fn lock(&self, bucket: &str, key: &str) -> SidecarGuard<'_> {
        let user = User::join(self, (bucket.to_owned(), key.to_owned()));
        let lock = user.lock.clone().lock_owned().await;
        SidecarGuard {
            _lock: lock,
            _user: user,
        }
    }

    /// Sidecars that some rewrite holds or waits for.
    pub fn in_use(&self) -> usize {
        self.entries().len()
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<(String, String), Entry>> {
        // Every change under this mutex is a single insert, count or removal, so the map is
        // consistent even if a holder panicked.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A rewrite's claim on an entry, from before it waits for the lock (a rewrite cancelled while
/// waiting gives it back too) until after it has released it.
#[derive(Debug)]
struct User<'a> {
    locks: &'a SidecarLocks,
    key: (String, String),
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> User<'a> {
    fn join(locks: &'a SidecarLocks, key: (String, String)) -> User<'a> {
        let mut entries = locks.entries();
        let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
            lock: Arc::default(),
            users: 0,
        });
        entry.users += 1;
        let lock = entry.lock.clone();
        drop(entries);
        User { locks, key, lock }
    }
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let mut entries = self.locks.entries();
        if let Some(entry) = entries.get_mut(&self.key) {
            entry.users -= 1;
            if entry.users == 0 {
                entries.remove(&self.key);
            }
        }
    }
}

/// Holds one sidecar's lock; see [`SidecarLocks::lock`].
#[derive(Debug)]
pub struct SidecarGuard<'a> {
    // Fields drop in declaration order: the lock is released before the claim on its entry,
    // so an entry is never removed while its lock is held.
    _lock: OwnedMutexGuard<()>,
    _user: User<'a>,
}

async fn find_drive(db: &DatabaseConnection, drive_id: &str) -> ApiResult<drive::Model> {
    catalog::get_drive(db, drive_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("drive {drive_id}")))
}

async fn find_run(db: &DatabaseConnection, run_id: &str) -> ApiResult<run::Model> {
    catalog::get_run(db, run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {run_id}")))
}

/// Writes the drive's sidecar from the catalog. The caller's change to the drive is committed
/// already; the rows are read under the sidecar's lock, so the last rewrite holds every change.
pub async fn write_drive(app: &AppState, drive_id: &str) -> ApiResult<()> {
    let mut drive = find_drive(&app.db, drive_id).await?;
    loop {
        let key = format!("{}drive.json", drive.prefix);
        let _rewrite = app.sidecar_locks.lock(&drive.bucket, &key).await;
        let current = find_drive(&app.db, drive_id).await?;
        if (&current.bucket, &current.prefix) == (&drive.bucket, &drive.prefix) {
            let record = drive_record(&app.db, current).await?;
            return put(app, &drive.bucket, key, &record).await;
        }
        // Re-registered under another prefix before the lock was taken: lock its sidecar now.
        drive = current;
    }
}

/// The drive's sidecar as the catalog has it.
async fn drive_record(db: &DatabaseConnection, drive: drive::Model) -> ApiResult<Value> {
    let events: Vec<Value> = catalog::drive_events(db, &drive.id)
        .await?
        .into_iter()
        .map(|e| json!({ "at": rfc3339(e.at), "kind": e.kind, "label": e.label }))
        .collect();
    let scenarios: Vec<Value> = catalog::drive_scenarios(db, &drive.id)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "label": s.label,
                "start": rfc3339(s.start_time),
                "end": rfc3339(s.end_time),
                "tags": s.tags,
            })
        })
        .collect();
    Ok(merged(
        &drive.extra,
        json!({
            "drive_id": drive.id,
            "vehicle": drive.vehicle,
            "city": drive.city,
            "route": drive.route,
            "started_at": rfc3339(drive.started_at),
            "ended_at": rfc3339(drive.ended_at),
            "distance_km": drive.distance_km,
            "software_version": drive.software_version,
            "weather": drive.weather,
            "tags": drive.tags,
            "events": events,
            "scenarios": scenarios,
        }),
    ))
}

/// Writes the run's sidecar from the catalog, as [`write_drive`] does.
pub async fn write_run(app: &AppState, run_id: &str) -> ApiResult<()> {
    let mut run = find_run(&app.db, run_id).await?;
    loop {
        let key = format!("{}run.json", run.prefix);
        let _rewrite = app.sidecar_locks.lock(&run.bucket, &key).await;
        let current = find_run(&app.db, run_id).await?;
        if (&current.bucket, &current.prefix) == (&run.bucket, &run.prefix) {
            let record = run_record(&app.db, current).await?;
            return put(app, &run.bucket, key, &record).await;
        }
        run = current;
    }
}

/// The run's sidecar as the catalog has it.
async fn run_record(db: &DatabaseConnection, run: run::Model) -> ApiResult<Value> {
    let inputs: Vec<String> = catalog::run_inputs(db, &run.id)
        .await?
        .into_iter()
        .map(|i| i.input_id)
        .collect();
    let input_windows: Vec<Value> = catalog::run_windows(db, &run.id)
        .await?
        .into_iter()
        .map(|w| {
            json!({
                "drive_id": w.drive_id,
                "start": rfc3339(w.start_time),
                "end": rfc3339(w.end_time),
            })
        })
        .collect();
    let mut record = merged(
        &run.extra,
        json!({
            "run_id": run.id,
            "kind": run.kind.as_str(),
            "pipeline": run.pipeline,
            "commit": run.commit,
            "status": run.status.as_str(),
            "started_at": run.started_at.map(rfc3339),
            "finished_at": run.finished_at.map(rfc3339),
            "inputs": inputs,
            "tags": run.tags,
        }),
    );
    // Only when there are some: a run without windows keeps the sidecar it always had.
    if let (false, Value::Object(fields)) = (input_windows.is_empty(), &mut record) {
        fields.insert("input_windows".to_owned(), Value::Array(input_windows));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_rewrite_of_a_sidecar_at_a_time_and_no_idle_entries() {
        let locks = SidecarLocks::default();
        let first = locks.lock("fleet", "drives/a/drive.json").await;
        // Another sidecar is independent.
        let other = locks.lock("fleet", "drives/b/drive.json").await;
        assert_eq!(locks.in_use(), 2);
        drop(other);
        assert_eq!(locks.in_use(), 1, "a released sidecar leaves no entry");

        // The same sidecar waits for the holder.
        let mut second = Box::pin(locks.lock("fleet", "drives/a/drive.json"));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), second.as_mut())
                .await
                .is_err(),
            "a second rewrite of one sidecar waits"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the lock passes on when released");
        assert_eq!(locks.in_use(), 1);
        drop(second);
        assert_eq!(locks.in_use(), 0);

        // A waiter given up on (a cancelled request) gives its claim back.
        let held = locks.lock("fleet", "runs/r/run.json").await;
        let waiter = locks.lock("fleet", "runs/r/run.json");
        assert!(tokio::time::timeout(Duration::from_millis(20), waiter)
            .await
            .is_err());
        drop(held);
        assert_eq!(locks.in_use(), 0);
    }
}
