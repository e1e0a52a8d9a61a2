//! When a downloaded object's bytes must be on disk.
//!
//! An object from upstream can always be fetched again, so with [`Durability::Deferred`] (the
//! default) the cache does not wait for the disk before calling it cached: the verified
//! staging file is renamed into the content store at once and the [`Syncer`] fsyncs it in
//! the background, moments later. Waiting would cost about a second per GiB here, the time
//! the disk takes to write what the network brought. What keeps this safe is the **unsynced
//! marker**, `<root>/unsynced`:
//!
//! - Before the first deferred install of a burst, the marker is written and made durable.
//!   It names the kernel's boot id and a time no later than any install it covers.
//! - The syncer fsyncs each installed file; once none has been waiting for [`LINGER`], it
//!   removes the marker.
//! - At start-up ([`read_marker`], then reconciliation): no marker, every entry's bytes are
//!   on disk. A marker of this boot: the process died, not the kernel, and the page cache
//!   still holds every byte written, so the entries installed since its time are fsynced
//!   then. A marker of another boot, or one recording a failed fsync, or one that cannot be
//!   read: the machine went down (or the disk failed) with bytes in flight, so every `ready`
//!   entry installed since its time is dropped, file and row, together with every view that
//!   holds a hard link to one of them (its reservation's view is rebuilt, the objects fetched
//!   again). A miss, never wrong bytes.
//!
//! [`Durability::Immediate`] fsyncs each file before installing it. Office uploads (`dirty`
//! entries, the only copy until written back) are always fsynced first, whatever the setting.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::flight::blocking;
use super::{CacheError, ObjectKey};

/// The marker's file name under the cache root.
pub(crate) const MARKER: &str = "unsynced";
/// Where the marker is written before it is renamed into place.
const MARKER_TEMP: &str = "unsynced.tmp";
/// How long the syncer waits, with nothing left to sync, before it removes the marker: a
/// dataset of small objects installs one every few milliseconds, and writing the marker
/// again for each would cost a journal commit each.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// How far before the marker's time an entry's `created_at` may be and still count as
/// covered by it: rows take their time from the database writer after the install, and a
/// clock stepped back must not hide an unsynced entry. Counting too many only costs
/// fetching them again after a crash.
pub(crate) const CLOCK_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Installed files waiting for the syncer at most (each holds an open file).
pub(crate) const MAX_PENDING: usize = 1024;
/// Where Linux says which boot this is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// When a downloaded object's bytes must be on disk; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Installed at once, fsynced in the background; after an unclean reboot the entries
    /// that may not have reached the disk are dropped and fetched again.
    #[default]
    Deferred,
    /// Fsynced before it is installed: slower for large objects, nothing to recover.
    Immediate,
}

/// This boot's id, or `None` where the kernel does not say (deferred durability then falls
/// back to immediate: without it a crash of the process cannot be told from one of the
/// machine).
pub(crate) fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// What the marker found at start-up says about the entries installed since its time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// No marker: every entry's bytes are on disk.
    Clean,
    /// Only the process stopped: the kernel holds the bytes; fsync the entries since `since`.
    SameBoot { since: DateTime<Utc> },
    /// The bytes of the entries since `since` may be lost: drop them. `why` is for the log.
    Unclean { since: DateTime<Utc>, why: String },
}

impl Recovery {
    /// The earliest `created_at` of the entries this recovery concerns, if any.
    pub fn covers_from(&self) -> Option<DateTime<Utc>> {
        match self {
            Recovery::Clean => None,
            Recovery::SameBoot { since } | Recovery::Unclean { since, .. } => {
                Some(*since - CLOCK_MARGIN)
            }
        }
    }
}

/// The marker's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub boot_id: String,
    pub since: DateTime<Utc>,
    /// An fsync failed: the bytes of some entry may never reach the disk.
    pub fsync_failed: bool,
}

impl Marker {
    fn render(&self) -> String {
        format!(
            "milepost unsynced marker v1\nboot_id {}\nsince {}\nfsync_failed {}\n",
            self.boot_id,
            self.since.to_rfc3339(),
            self.fsync_failed
        )
    }

    fn parse(text: &str) -> Result<Marker, String> {
        let mut lines = text.lines();
        if lines.next() != Some("milepost unsynced marker v1") {
            return Err("unknown header".to_owned());
        }
        let (mut boot_id, mut since, mut fsync_failed) = (None, None, None);
        for line in lines {
            let (field, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("line without a value: {line:?}"))?;
            match field {
                "boot_id" => boot_id = Some(value.to_owned()),
                "since" => {
                    let at = DateTime::parse_from_rfc3339(value)
                        .map_err(|err| format!("since {value:?}: {err}"))?;
                    since = Some(at.with_timezone(&Utc));
                }
                "fsync_failed" => {
                    fsync_failed = Some(
                        value
                            .parse::<bool>()
                            .map_err(|err| format!("fsync_failed {value:?}: {err}"))?,
                    );
                }
                other => return Err(format!("unknown field {other:?}")),
            }
        }
        Ok(Marker {
            boot_id: boot_id.ok_or("no boot_id")?,
            since: since.ok_or("no since")?,
            fsync_failed: fsync_failed.ok_or("no fsync_failed")?,
        })
    }
}

/// Writes `marker` under `root` durably: a temporary file, fsynced, renamed into place, then
/// the directory fsynced, so that after a power cut the marker is there or the install it
/// announces never happened.
pub(crate) fn write_marker(root: &Path, marker: &Marker) -> io::Result<()> {
    let temp = root.join(MARKER_TEMP);
    let mut file = File::create(&temp)?;
    file.write_all(marker.render().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, root.join(MARKER))?;
    File::open(root)?.sync_all()
}

/// Removes the marker. Not made durable: a marker that comes back after a power cut only
/// makes the next start-up fetch recent entries again.
pub(crate) fn remove_marker(root: &Path) -> io::Result<()> {
    match std::fs::remove_file(root.join(MARKER)) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Reads the marker under `root` and says what it means for this boot (`boot_id`, `None`
/// where unknown).
pub(crate) fn read_marker(root: &Path, boot_id: Option<&str>) -> io::Result<Recovery> {
    let _ = std::fs::remove_file(root.join(MARKER_TEMP));
    let text = match std::fs::read_to_string(root.join(MARKER)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Recovery::Clean),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => String::new(),
        Err(err) => return Err(err),
    };
    Ok(match Marker::parse(&text) {
        Err(reason) => Recovery::Unclean {
            since: DateTime::<Utc>::MIN_UTC + CLOCK_MARGIN,
            why: format!("the unsynced marker cannot be read ({reason}), so every entry counts"),
        },
        Ok(marker) if marker.fsync_failed => Recovery::Unclean {
            since: marker.since,
            why: "an fsync failed in the last run".to_owned(),
        },
        Ok(marker) if Some(marker.boot_id.as_str()) == boot_id => Recovery::SameBoot {
            since: marker.since,
        },
        Ok(marker) => Recovery::Unclean {
            since: marker.since,
            why: match boot_id {
                Some(now) => format!(
                    "the machine restarted (boot {} then, {now} now)",
                    marker.boot_id
                ),
                None => "this boot's id is unknown".to_owned(),
            },
        },
    })
}

/// The background fsync of installed files; see the [module docs](self).
pub(crate) struct Syncer {
    root: PathBuf,
    boot_id: String,
    /// Held while the marker is written, so that no install proceeds before it is durable.
    state: tokio::sync::Mutex<SyncState>,
    wake: Notify,
    /// Ends the run loop once nothing is left to sync.
    finish: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct SyncState {
    /// The marker is on disk.
    marker: bool,
    /// The time the marker on disk gives.
    since: Option<DateTime<Utc>>,
    /// An fsync failed in this run: the marker stays, saying so.
    failed: bool,
    /// Installed, not yet fsynced.
    pending: Vec<(ObjectKey, Arc<File>)>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Syncer {
    /// Starts the syncer of the cache at `root`, in boot `boot_id`. Start-up recovery must be
    /// done: the marker is absent.
    pub fn start(root: PathBuf, boot_id: String) -> Arc<Syncer> {
        let syncer = Arc::new(Syncer {
            root,
            boot_id,
            state: tokio::sync::Mutex::new(SyncState::default()),
            wake: Notify::new(),
            finish: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(Arc::clone(&syncer).run());
        *syncer.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        syncer
    }

    /// Asks to install `file`, holding `object`'s verified bytes, without an fsync: `true`
    /// once the marker is durable and the file queued for the syncer; `false` when
    /// [`MAX_PENDING`] files wait already, and the caller must fsync it itself (the disk is
    /// behind: installs wait for it rather than holding ever more open files).
    pub async fn installing(
        &self,
        object: &ObjectKey,
        file: Arc<File>,
    ) -> Result<bool, CacheError> {
        let mut state = self.state.lock().await;
        if state.pending.len() >= MAX_PENDING {
            return Ok(false);
        }
        if !state.marker {
            let root = self.root.clone();
            let marker = Marker {
                boot_id: self.boot_id.clone(),
                since: Utc::now(),
                fsync_failed: false,
            };
            let since = marker.since;
            blocking(
                format!("writing the unsynced marker in {}", self.root.display()),
                move || write_marker(&root, &marker),
            )
            .await?;
            state.marker = true;
            state.since = Some(since);
        }
        state.pending.push((object.clone(), file));
        drop(state);
        self.wake.notify_one();
        Ok(true)
    }

    /// Fsyncs what is left, removes the marker and stops. Installs after this are not synced.
    pub async fn finish(&self) {
        self.finish.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "the cache syncer failed");
            }
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let batch = std::mem::take(&mut self.state.lock().await.pending);
            if !batch.is_empty() {
                self.sync(batch).await;
                continue;
            }
            let finishing = self.finish.is_cancelled();
            if !finishing {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    () = tokio::time::sleep(LINGER) => {}
                    () = self.finish.cancelled() => continue,
                }
            }
            let mut state = self.state.lock().await;
            if state.pending.is_empty() && state.marker && !state.failed {
                match remove_marker(&self.root) {
                    Ok(()) => {
                        state.marker = false;
                        state.since = None;
                    }
                    Err(err) => tracing::warn!(
                        root = %self.root.display(),
                        error = %err,
                        "cannot remove the unsynced marker (the next start-up fetches recent entries again)"
                    ),
                }
            }
            if finishing && state.pending.is_empty() {
                return;
            }
            drop(state);
            if !finishing {
                // Idle with the marker gone (or kept after a failure): sleep until an install.
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = self.finish.cancelled() => {}
                }
            }
        }
    }

    /// Fsyncs `batch`; a failure is logged and recorded in the marker, so that the next
    /// start-up drops the entries it may concern.
    async fn sync(&self, batch: Vec<(ObjectKey, Arc<File>)>) {
        let failures = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .filter_map(|(object, file)| file.sync_data().err().map(|err| (object, err)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "the cache's fsync task failed");
            Vec::new()
        });
        if failures.is_empty() {
            return;
        }
        for (object, err) in &failures {
            tracing::error!(object = %object, error = %err, "cannot fsync a cache entry; it is dropped at the next start-up");
        }
        let mut state = self.state.lock().await;
        if state.failed {
            return;
        }
        state.failed = true;
        let (root, marker) = (
            self.root.clone(),
            Marker {
                boot_id: self.boot_id.clone(),
                // Every entry installed while the marker stood: the others were synced
                // before it was written.
                since: state.since.unwrap_or_else(Utc::now),
                fsync_failed: true,
            },
        );
        let written = blocking(
            format!("recording a failed fsync in {}", self.root.display()),
            move || write_marker(&root, &marker),
        )
        .await;
        if let Err(err) = written {
            tracing::error!(error = %err, "cannot record a failed fsync in the unsynced marker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(boot: &str, failed: bool) -> Marker {
        Marker {
            boot_id: boot.to_owned(),
            since: DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
                .expect("test step")
                .with_timezone(&Utc),
            fsync_failed: failed,
        }
    }

    #[test]
    fn a_marker_reads_back_as_written() {
        let m = marker("0b1c", false);
        assert_eq!(Marker::parse(&m.render()), Ok(m));
    }

    #[test]
    fn the_marker_tells_a_crash_of_the_process_from_one_of_the_machine() {
        let dir = tempfile::tempdir().expect("test step");
        assert_eq!(
            read_marker(dir.path(), Some("a")).expect("test step"),
            Recovery::Clean
        );

        let m = marker("a", false);
        write_marker(dir.path(), &m).expect("test step");
        assert_eq!(
            read_marker(dir.path(), Some("a")).expect("test step"),
            Recovery::SameBoot { since: m.since }
        );
        let other = read_marker(dir.path(), Some("b")).expect("test step");
        assert!(
            matches!(&other, Recovery::Unclean { since, why } if *since == m.since && why.contains("restarted")),
            "{other:?}"
        );
        assert!(matches!(
            read_marker(dir.path(), None).expect("test step"),
            Recovery::Unclean { .. }
        ));

        write_marker(dir.path(), &marker("a", true)).expect("test step");
        assert!(matches!(
            read_marker(dir.path(), Some("a")).expect("test step"),
            Recovery::Unclean { .. }
        ));

        remove_marker(dir.path()).expect("test step");
        remove_marker(dir.path()).expect("test step");
        assert_eq!(
            read_marker(dir.path(), Some("a")).expect("test step"),
            Recovery::Clean
        );
    }

    #[test]
    fn an_unreadable_marker_counts_every_entry() {
        let dir = tempfile::tempdir().expect("test step");
        std::fs::write(dir.path().join(MARKER), "garbage\n").expect("test step");
        let recovery = read_marker(dir.path(), Some("a")).expect("test step");
        let from = recovery.covers_from().expect("test step");
        assert!(from < DateTime::parse_from_rfc3339("1971-01-01T00:00:00Z").expect("test step"));
        assert!(matches!(recovery, Recovery::Unclean { .. }));
    }

    #[test]
    fn the_recovery_window_opens_before_the_marker() {
        let m = marker("a", false);
        let from = Recovery::SameBoot { since: m.since }
            .covers_from()
            .expect("test step");
        assert_eq!(m.since - from, CLOCK_MARGIN);
    }
}
