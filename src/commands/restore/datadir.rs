//! Point-in-time recovery of a physical job into a data directory: the newest
//! base backup that ends before the target, checked while it is unpacked,
//! and the recovery settings that make PostgreSQL replay the archived WAL
//! (through `strata wal-fetch`) up to the target and promote.
//!
//! Everything that can be known before writing is checked first: the backup
//! exists for the target, and the archive holds every segment from the base
//! backup's start on, without a gap (a gap would end recovery early and
//! silently). A failure while unpacking leaves no data directory behind.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{RestoreError, open_verified};
use crate::app::Strata;
use crate::catalog::{self, Entry};
use crate::commands::wal;
use crate::domain::wal::{format_lsn, parse_lsn};
use crate::domain::{DumpFormat, manifest::PhysicalRecord};
use crate::storage::Target;

/// How far recovery replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Up to this moment (transactions committed after it are not replayed).
    Time(DateTime<Utc>),
    /// Up to this WAL position.
    Lsn(u64),
    /// Everything the archive holds.
    Latest,
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            Self::Lsn(l) => write!(f, "LSN {}", format_lsn(*l)),
            Self::Latest => f.write_str("the end of the archive"),
        }
    }
}

/// What `restore --into-datadir` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatadirReport {
    pub backup_id: String,
    pub target: String,
    pub data_directory: PathBuf,
    pub base_start_lsn: String,
    pub base_stop_lsn: String,
    pub recovery_target: String,
    /// The newest segment the archive holds on the base backup's timeline.
    pub newest_segment: Option<String>,
    /// Where recovery ended, with `--start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<super::start::Recovered>,
}

/// How `wal-fetch` is called from the restored server.
#[derive(Debug, Clone)]
pub struct FetchCommand {
    /// The strata binary.
    pub program: PathBuf,
    /// The config file (absolute).
    pub config: PathBuf,
}

fn physical(entry: &Entry) -> Option<(&PhysicalRecord, u64, u64)> {
    let p = entry.manifest.physical.as_ref()?;
    (entry.manifest.format == DumpFormat::Base).then_some(())?;
    Some((p, parse_lsn(&p.start_lsn)?, parse_lsn(&p.stop_lsn)?))
}

/// Picks the newest base backup on the job's targets (or `from`) that the
/// target can be reached from.
async fn choose(
    strata: &Strata,
    job: &str,
    to: RecoveryTarget,
    from: Option<&str>,
) -> Result<(std::sync::Arc<dyn Target>, Entry), RestoreError> {
    let cfg = strata.job(job)?;
    let names: Vec<&String> = match from {
        Some(t) if cfg.targets.iter().any(|n| n == t) => {
            cfg.targets.iter().filter(|n| *n == t).collect()
        }
        Some(t) => return Err(RestoreError::UnknownTarget(t.to_owned())),
        None => cfg.targets.iter().collect(),
    };
    let mut best: Option<(std::sync::Arc<dyn Target>, Entry)> = None;
    let mut oldest: Option<DateTime<Utc>> = None;
    for name in &names {
        let Ok(entries) = catalog::list(strata, name, job).await else {
            continue;
        };
        for e in entries {
            let Some((_, _, stop)) = physical(&e) else {
                continue;
            };
            oldest = Some(oldest.map_or(e.manifest.finished_at, |o| o.min(e.manifest.finished_at)));
            let usable = match to {
                RecoveryTarget::Time(t) => e.manifest.finished_at <= t,
                RecoveryTarget::Lsn(l) => stop <= l,
                RecoveryTarget::Latest => true,
            };
            if usable
                && best
                    .as_ref()
                    .is_none_or(|(_, b)| e.started_at() > b.started_at())
            {
                best = Some((strata.target(name), e));
            }
        }
    }
    best.ok_or_else(|| {
        RestoreError::Physical(match oldest {
            None => format!("job '{job}' has no base backup on {}", cfg.targets.join(", ")),
            Some(o) => format!(
                "no base backup of job '{job}' ends before {to}: the oldest ended at {} (the recovery window starts there)",
                o.to_rfc3339()
            ),
        })
    })
}

/// A data directory strata may write into: absent, or empty.
fn check_empty(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(RestoreError::Physical(format!(
                    "{} is not empty; restore into a new or empty directory",
                    dir.display()
                )))
            } else {
                Ok(true)
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RestoreError::Physical(format!("{}: {e}", dir.display()))),
    }
}

/// `'…'` for PostgreSQL's configuration files.
fn conf_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn shell_word(s: &str) -> Result<String, RestoreError> {
    shlex::try_quote(s)
        .map(|w| w.into_owned())
        .map_err(|e| RestoreError::Physical(format!("cannot put '{s}' in restore_command: {e}")))
}

/// The lines strata adds to `postgresql.auto.conf`.
fn recovery_settings(
    job: &str,
    to: RecoveryTarget,
    from: &str,
    fetch: &FetchCommand,
) -> Result<String, RestoreError> {
    let command = [
        shell_word(&fetch.program.to_string_lossy())?,
        "-c".to_owned(),
        shell_word(&fetch.config.to_string_lossy())?,
        "wal-fetch".to_owned(),
        shell_word(job)?,
        "%f".to_owned(),
        "%p".to_owned(),
        "--from".to_owned(),
        shell_word(from)?,
    ]
    .join(" ");
    let mut out = String::from("\n# Added by strata restore --into-datadir\n");
    out.push_str(&format!("restore_command = {}\n", conf_string(&command)));
    match to {
        RecoveryTarget::Time(t) => out.push_str(&format!(
            "recovery_target_time = {}\n",
            conf_string(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        RecoveryTarget::Lsn(l) => out.push_str(&format!(
            "recovery_target_lsn = {}\n",
            conf_string(&format_lsn(l))
        )),
        RecoveryTarget::Latest => {}
    }
    out.push_str("recovery_target_timeline = 'latest'\n");
    out.push_str("recovery_target_action = 'promote'\n");
    // A restored copy must not archive into the job it came from: its new
    // timeline would become "latest" for every later recovery.
    out.push_str("archive_mode = 'off'\n");
    Ok(out)
}

/// Restores `job`'s cluster into `dir` for recovery up to `to`.
///
/// # Errors
/// No base backup for the target, a gap in the archive (named), a directory
/// that is not empty, or a backup that fails its checks while unpacking (the
/// directory is then removed).
pub async fn restore_datadir(
    strata: &Strata,
    job: &str,
    dir: &Path,
    to: RecoveryTarget,
    from: Option<&str>,
    fetch: &FetchCommand,
) -> Result<DatadirReport, RestoreError> {
    let cfg = strata.job(job)?;
    if !cfg.kind.is_physical() {
        return Err(RestoreError::Physical(format!(
            "job '{job}' is not a physical job: restore its dumps with --into URL"
        )));
    }
    if let RecoveryTarget::Time(t) = to {
        if t > Utc::now() {
            return Err(RestoreError::Physical(format!(
                "{} is in the future",
                t.to_rfc3339()
            )));
        }
    }
    let existed = check_empty(dir)?;
    let (target, entry) = choose(strata, job, to, from).await?;
    let (p, start, stop) = physical(&entry).expect("chosen among base backups");
    // Continuity: every segment from the base backup's start to the newest
    // archived one (or to the LSN asked for), before anything is written.
    let newest = wal::newest_segment(strata, job, target.as_ref(), p.timeline)
        .await
        .map_err(|e| RestoreError::Physical(e.to_string()))?;
    let size = u64::from(p.segment_size);
    let end = match (to, &newest) {
        (RecoveryTarget::Lsn(l), _) => l,
        (_, Some(n)) => n.start_lsn(p.segment_size).max(stop),
        (_, None) => stop,
    };
    if let RecoveryTarget::Lsn(l) = to {
        if newest.is_none_or(|n| n.start_lsn(p.segment_size) + size <= l) {
            return Err(RestoreError::Physical(format!(
                "the archive on {} does not reach LSN {} yet (newest segment: {})",
                target.name(),
                format_lsn(l),
                newest.map_or_else(|| "none".to_owned(), |n| n.to_string())
            )));
        }
    }
    if let Some(missing) = wal::first_missing(
        strata,
        job,
        target.as_ref(),
        p.timeline,
        (start, end),
        p.segment_size,
    )
    .await
    .map_err(|e| RestoreError::Physical(e.to_string()))?
    {
        return Err(RestoreError::Physical(format!(
            "WAL segment {missing} is missing from the archive on {} (needed after base backup {}): recovery would stop there; nothing was written",
            target.name(),
            entry.manifest.backup_id
        )));
    }
    let settings = recovery_settings(job, to, target.name(), fetch)?;
    let unpacked = unpack(strata, target.as_ref(), &entry, dir).await;
    let finished = unpacked.and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(dir.join("recovery.signal"), "")?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("postgresql.auto.conf"))?;
        std::io::Write::write_all(&mut conf, settings.as_bytes())
    });
    if let Err(e) = finished {
        remove(dir, existed);
        return Err(match e.downcast::<RestoreError>() {
            Ok(r) => r,
            Err(e) => RestoreError::Physical(format!("writing {}: {e}", dir.display())),
        });
    }
    Ok(DatadirReport {
        backup_id: entry.manifest.backup_id.clone(),
        target: target.name().to_owned(),
        data_directory: dir.to_owned(),
        base_start_lsn: p.start_lsn.clone(),
        base_stop_lsn: p.stop_lsn.clone(),
        recovery_target: to.to_string(),
        newest_segment: newest.map(|n| n.to_string()),
        recovered: None,
    })
}

/// Removes what the restore wrote (the directory itself when it made it).
fn remove(dir: &Path, existed: bool) {
    if existed {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Streams the base backup's tar into `dir`, then waits for the verdict on
/// the stored bytes (hash, size, every chunk authenticated).
async fn unpack(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    dir: &Path,
) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let (reader, check) = open_verified(strata, target, entry, &entry.object_key(), None)
        .await
        .map_err(std::io::Error::other)?;
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let into = dir.to_owned();
    let unpacked = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(bridge);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(false);
        archive.unpack(&into)
    })
    .await
    .map_err(std::io::Error::other)?;
    let checked = check.await.map_err(std::io::Error::other)?;
    checked.map_err(|e| std::io::Error::other(RestoreError::Verify(e)))?;
    unpacked
}

/// What one target can recover a physical job to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recoverable {
    pub target: String,
    /// The base backup the recovery window starts from: the newest that
    /// ended before the window began, else the oldest (older ones, kept by
    /// GFS, restore to the moment they ended).
    pub oldest_backup: Option<String>,
    pub from: Option<DateTime<Utc>>,
    /// The newest archived segment on the newest base backup's timeline.
    pub newest_segment: Option<String>,
    /// The first segment missing after that base backup's start (a gap).
    pub missing: Option<String>,
}

/// Checks on `target` that the WAL is gapless from the base backup the
/// recovery window starts from to each timeline's newest archived segment.
///
/// # Errors
/// The target cannot be listed.
pub async fn recoverable(
    strata: &Strata,
    job: &str,
    target: &str,
    now: DateTime<Utc>,
) -> Result<Recoverable, RestoreError> {
    let listing_failed = |e: String| RestoreError::Physical(format!("{target}: {e}"));
    let window = match strata.job(job)?.kind {
        crate::config::JobKind::Physical { recovery_window } => recovery_window,
        crate::config::JobKind::Logical => std::time::Duration::ZERO,
    };
    let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let entries = catalog::list(strata, target, job)
        .await
        .map_err(|e| listing_failed(e.to_string()))?;
    let mut bases: Vec<(&Entry, &PhysicalRecord, u64)> = entries
        .iter()
        .filter_map(|e| physical(e).map(|(p, start, _)| (e, p, start)))
        .collect();
    bases.sort_by_key(|(e, _, _)| e.started_at());
    let anchor = bases
        .iter()
        .rposition(|(e, _, _)| e.manifest.finished_at < window_start)
        .unwrap_or(0);
    let bases = bases.get(anchor..).unwrap_or_default();
    let mut report = Recoverable {
        target: target.to_owned(),
        oldest_backup: bases.first().map(|(e, _, _)| e.manifest.backup_id.clone()),
        from: bases.first().map(|(e, _, _)| e.manifest.finished_at),
        newest_segment: None,
        missing: None,
    };
    let t = strata.target(target);
    let mut timelines: Vec<u32> = bases.iter().map(|(_, p, _)| p.timeline).collect();
    timelines.dedup();
    for tl in timelines {
        let Some((_, p, start)) = bases.iter().find(|(_, p, _)| p.timeline == tl) else {
            continue;
        };
        let newest = wal::newest_segment(strata, job, t.as_ref(), tl)
            .await
            .map_err(|e| listing_failed(e.to_string()))?;
        let end = newest.map_or(*start, |n| n.start_lsn(p.segment_size));
        report.newest_segment = newest.map(|n| n.to_string());
        if report.missing.is_none() {
            report.missing =
                wal::first_missing(strata, job, t.as_ref(), tl, (*start, end), p.segment_size)
                    .await
                    .map_err(|e| listing_failed(e.to_string()))?;
        }
    }
    Ok(report)
}
