//! The streaming WAL source (`wal: { source: stream }`), for servers whose
//! `archive_command` strata cannot set (strata in another container, a managed
//! server that offers replication but no shell).
//!
//! The daemon keeps `pg_receivewal` running over a physical replication slot
//! (created when missing, so the server keeps the WAL while strata is away)
//! into the job's `directory`, restarting it with backoff when it exits (a
//! server restart, a network cut). Every `upload_interval` the directory is
//! swept: finished segments and history files go to every target exactly as
//! `wal-push` sends them (and are then removed, but for the newest segment,
//! which tells `pg_receivewal` where to resume); the segment still being
//! written goes up as `{segment}.partial`, replaced each time it grew, so a
//! committed transaction is in the archive within about `upload_interval`.
//! `wal-fetch` serves that `.partial` for the last segment of a timeline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use super::{Archive, WalError, check_content};
use crate::app::Strata;
use crate::config::WalSource;
use crate::domain::wal::WalFile;

/// Longest pause between two attempts to start `pg_receivewal`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the streaming source of one job is doing, for `/health` and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamStatus {
    /// `pg_receivewal` is running.
    pub receiving: bool,
    /// Why it is not (the server's or the tool's last words), if it is not.
    pub problem: Option<String>,
    /// Times it was started again after it stopped.
    pub restarts: u64,
    /// Files archived since the daemon started.
    pub archived: u64,
    /// Failed attempts to archive one.
    pub failures: u64,
    pub last_archived: Option<DateTime<Utc>>,
    pub last_archived_wal: Option<String>,
    pub last_failed: Option<DateTime<Utc>>,
    /// The live end of the archive: the segment being written, as last uploaded.
    pub live_segment: Option<String>,
    pub live_uploaded: Option<DateTime<Utc>>,
}

/// Shared between the streaming task and the daemon.
pub type SharedStatus = Arc<Mutex<StreamStatus>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut StreamStatus)) {
    f(&mut status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner));
}

/// Streams `job`'s WAL until `cancel`, then archives what arrived (the
/// segment being written included) and returns.
pub async fn run(
    strata: Arc<Strata>,
    job: String,
    status: SharedStatus,
    cancel: CancellationToken,
) {
    let Some(WalSource::Stream {
        slot,
        directory,
        upload_interval,
    }) = strata
        .job(&job)
        .ok()
        .and_then(|j| j.kind.physical())
        .map(|p| p.wal.clone())
    else {
        return;
    };
    if let Err(e) = prepare(&directory) {
        tracing::error!(job = %job, error = %e, "the streaming directory cannot be used");
        update(&status, |s| s.problem = Some(e));
        return;
    }
    let receiver = {
        let receiver = Receiver {
            strata: strata.clone(),
            job: job.clone(),
            slot,
            dir: directory.clone(),
            status: status.clone(),
            cancel: cancel.clone(),
        };
        tokio::spawn(async move { receiver.supervise().await })
    };
    let mut sweeper = Sweeper::default();
    loop {
        sweeper.sweep(&strata, &job, &directory, &status).await;
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(upload_interval) => {}
        }
    }
    let _ = receiver.await;
    // What arrived before pg_receivewal stopped, the live segment included.
    sweeper.sweep(&strata, &job, &directory, &status).await;
}

/// The directory exists and is the daemon's alone.
fn prepare(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// `pg_receivewal` of one job, kept running.
struct Receiver {
    strata: Arc<Strata>,
    job: String,
    slot: String,
    dir: PathBuf,
    status: SharedStatus,
    cancel: CancellationToken,
}

impl Receiver {
    /// Keeps `pg_receivewal` running until `cancel`.
    async fn supervise(&self) {
        let (job, status, cancel) = (self.job.as_str(), &self.status, &self.cancel);
        let mut backoff = Duration::from_secs(1);
        let mut first = true;
        while !cancel.is_cancelled() {
            if !first {
                update(status, |s| s.restarts += 1);
            }
            first = false;
            let began = std::time::Instant::now();
            let why = match self.receive().await {
                Ok(()) => return,
                Err(e) => e,
            };
            update(status, |s| {
                s.receiving = false;
                s.problem = Some(why.clone());
            });
            tracing::error!(job, error = %why, retry_in_s = backoff.as_secs(), "WAL streaming stopped");
            // A receiver that ran a while failed anew: start over quickly.
            if began.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Creates the slot when missing, then runs `pg_receivewal` until it exits
    /// (`Err` with its last words) or `cancel` (`Ok`).
    async fn receive(&self) -> Result<(), String> {
        let (strata, job, slot, dir) = (
            &self.strata,
            self.job.as_str(),
            self.slot.as_str(),
            self.dir.as_path(),
        );
        let (status, cancel) = (&self.status, &self.cancel);
        let url = &strata.job(job).map_err(|e| e.to_string())?.database_url;
        let info = {
            let client = url.connect().await.map_err(|e| e.to_string())?;
            let info = crate::pg::database_info(url, &client)
                .await
                .map_err(|e| e.to_string())?;
            ensure_slot(url, &client, slot).await?;
            info
        };
        let tool = crate::pg::find_tool("pg_receivewal", &info)
            .await
            .map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(&tool.path)
            .arg("--directory")
            .arg(dir)
            .args([
                "--slot",
                slot,
                "--synchronous",
                "--no-loop",
                "--no-password",
            ])
            .envs(url.libpq_env(tool.major))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", tool.path.display()))?;
        let stderr = child.stderr.take().map(|err| {
            tokio::spawn(async move {
                let mut last = std::collections::VecDeque::new();
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(line = %line, "pg_receivewal");
                    last.push_back(line);
                    if last.len() > 3 {
                        last.pop_front();
                    }
                }
                Vec::from(last).join(" | ")
            })
        });
        update(status, |s| {
            s.receiving = true;
            s.problem = None;
        });
        tracing::info!(job, slot, directory = %dir.display(), "WAL streaming started");
        tokio::select! {
            exited = child.wait() => {
                let said = match stderr {
                    Some(h) => h.await.unwrap_or_default(),
                    None => String::new(),
                };
                Err(format!(
                    "pg_receivewal exited ({}): {}",
                    exited.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    if said.is_empty() { "no output".into() } else { said }
                ))
            }
            () = cancel.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                update(status, |s| s.receiving = false);
                Ok(())
            }
        }
    }
}

/// Creates the physical replication slot `slot` unless it exists; refuses a
/// logical slot of that name.
async fn ensure_slot(
    url: &crate::pg::DbUrl,
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<(), String> {
    let rows = client
        .query(
            "SELECT slot_type FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| url.query_error(&e).to_string())?;
    match rows.first().map(|r| r.get::<_, String>(0)) {
        Some(t) if t == "physical" => Ok(()),
        Some(t) => Err(format!(
            "replication slot '{slot}' exists but is {t}; name another in wal.slot"
        )),
        None => {
            client
                .execute(
                    "SELECT pg_create_physical_replication_slot($1, true)",
                    &[&slot],
                )
                .await
                .map_err(|e| {
                    format!(
                        "creating replication slot '{slot}' (the role needs REPLICATION): {}",
                        crate::pg::pg_message(&e)
                    )
                })?;
            tracing::info!(
                slot,
                "replication slot created: the server keeps WAL until strata has streamed it"
            );
            Ok(())
        }
    }
}

/// What the sweeps remember: the segments archived (kept locally only as the
/// resume point) and the live segment as last uploaded.
#[derive(Default)]
struct Sweeper {
    archived: BTreeSet<String>,
    live: Option<(String, SystemTime, u64)>,
    /// Targets whose archive identity was checked (once, not at every upload
    /// of the live segment).
    claimed: BTreeSet<String>,
}

/// A file `pg_receivewal` left in the directory.
struct Found {
    path: PathBuf,
    file: WalFile,
    modified: SystemTime,
    len: u64,
}

fn list(dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let file = WalFile::parse(&name).ok()?;
            let meta = e.metadata().ok()?;
            Some(Found {
                path: e.path(),
                file,
                modified: meta.modified().ok()?,
                len: meta.len(),
            })
        })
        .collect();
    // History files first: recovery reads them before the new timeline.
    found.sort_by_key(|f| (!matches!(f.file, WalFile::History(_)), f.file.segment()));
    found
}

impl Sweeper {
    async fn sweep(&mut self, strata: &Strata, job: &str, dir: &Path, status: &SharedStatus) {
        let files = list(dir);
        let newest_whole = files
            .iter()
            .filter_map(|f| match f.file {
                WalFile::Segment(s) => Some(s),
                _ => None,
            })
            .max();
        let newest_any = files.iter().filter_map(|f| f.file.segment()).max();
        for f in &files {
            let name = f.file.to_string();
            let result = match f.file {
                WalFile::Segment(s) if self.archived.contains(&name) => {
                    if Some(s) < newest_whole {
                        remove(&f.path);
                    }
                    continue;
                }
                WalFile::Segment(_) | WalFile::History(_) => self.archive(strata, job, f).await,
                // The segment being written: up as `.partial` when it grew.
                WalFile::Partial(s) if Some(s) == newest_any => {
                    match self.live_upload(strata, job, f).await {
                        Ok(false) => continue,
                        other => other.map(|_| ()),
                    }
                }
                // A timeline's last segment, left when the server switched.
                WalFile::Partial(_) => self.final_partial(strata, job, f).await,
                WalFile::BackupLabel(..) => continue,
            };
            let now = Utc::now();
            match result {
                Ok(()) => update(status, |st| {
                    if !matches!(f.file, WalFile::Partial(_)) {
                        st.archived += 1;
                        st.last_archived = Some(now);
                        st.last_archived_wal = Some(name.clone());
                    } else {
                        st.live_segment = Some(name.clone());
                        st.live_uploaded = Some(now);
                    }
                }),
                Err(e) => {
                    tracing::error!(job, file = %name, error = %e, "streamed WAL not archived; retrying at the next sweep");
                    update(status, |st| {
                        st.failures += 1;
                        st.last_failed = Some(now);
                    });
                }
            }
        }
    }

    /// A finished segment or a history file: archived like `wal-push` does
    /// (every target, never overwriting), then its live `.partial` copies go.
    async fn archive(&mut self, strata: &Strata, job: &str, f: &Found) -> Result<(), WalError> {
        super::push(strata, job, &f.path).await?;
        match f.file {
            WalFile::Segment(s) => {
                let archive = Archive::open(strata, job)?;
                for t in &strata.job(job)?.targets {
                    let target = strata.target(t);
                    let key = archive.key(t, &WalFile::Partial(s));
                    if let Err(e) = target.delete(&key).await {
                        tracing::warn!(job, key, error = %e, "a live .partial copy was not removed");
                    }
                }
                self.archived.insert(f.file.to_string());
                if self
                    .live
                    .as_ref()
                    .is_some_and(|(n, ..)| *n == s.to_string())
                {
                    self.live = None;
                }
            }
            _ => remove(&f.path),
        }
        Ok(())
    }

    /// The live segment, uploaded again when it changed since the last sweep.
    /// `Ok(false)` when there was nothing new.
    async fn live_upload(
        &mut self,
        strata: &Strata,
        job: &str,
        f: &Found,
    ) -> Result<bool, WalError> {
        let Some(s) = f.file.segment() else {
            return Ok(false);
        };
        let seen = (s.to_string(), f.modified, f.len);
        if self.live.as_ref() == Some(&seen) {
            return Ok(false);
        }
        let plain = std::fs::read(&f.path).map_err(|source| WalError::Read {
            path: f.path.clone(),
            source,
        })?;
        // A segment file just created holds no page header yet.
        if check_content(&f.file, &plain).is_err() {
            return Ok(false);
        }
        self.replace(strata, job, &f.file, &plain).await?;
        self.live = Some(seen);
        Ok(true)
    }

    /// A `.partial` that will not grow any more: stored for good, then removed.
    async fn final_partial(
        &mut self,
        strata: &Strata,
        job: &str,
        f: &Found,
    ) -> Result<(), WalError> {
        let plain = std::fs::read(&f.path).map_err(|source| WalError::Read {
            path: f.path.clone(),
            source,
        })?;
        check_content(&f.file, &plain)?;
        self.replace(strata, job, &f.file, &plain).await?;
        remove(&f.path);
        Ok(())
    }

    /// Writes `file` to every target, replacing the copy there (only the live
    /// `.partial` of a segment is ever replaced).
    async fn replace(
        &mut self,
        strata: &Strata,
        job: &str,
        file: &WalFile,
        plain: &[u8],
    ) -> Result<(), WalError> {
        let archive = Archive::open(strata, job)?;
        let identity = check_content(file, plain)?;
        let sealed = Bytes::from(archive.seal(plain)?);
        let mut failed = Vec::new();
        for t in &strata.job(job)?.targets {
            let target = strata.target(t);
            let claimed = self.claimed.contains(t);
            let written = async {
                if let (Some(mine), false) = (identity, claimed) {
                    archive
                        .claim(target.as_ref(), &file.to_string(), mine)
                        .await?;
                }
                target
                    .put_small(&archive.key(t, file), sealed.clone())
                    .await?;
                Ok::<(), WalError>(())
            };
            match written.await {
                Ok(()) if identity.is_some() => {
                    self.claimed.insert(t.clone());
                }
                Ok(()) => {}
                Err(e) => failed.push(format!("{t}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(WalError::Targets(format!(
                "{file} is not on every target: {}",
                failed.join("; ")
            )))
        }
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "an archived file was not removed from the streaming directory");
    }
}
