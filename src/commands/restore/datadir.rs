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

use super::{RestoreError, ThawOptions, ensure_readable, open_verified, open_verified_packed};
use crate::app::Strata;
use crate::catalog::{self, Entry};
use crate::commands::wal::{self, BaseRef, End, Listing, archive::Histories};
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
    /// Only as far as the base backup needs to be consistent (the moment it
    /// ended; PostgreSQL's `recovery_target = 'immediate'`).
    Immediate,
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            Self::Lsn(l) => write!(f, "LSN {}", format_lsn(*l)),
            Self::Latest => f.write_str("the end of the archive"),
            Self::Immediate => f.write_str("the end of the base backup (consistency)"),
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
    /// The timelines recovery walks (`1 → 2 at 0/3000158`).
    pub timelines: String,
    /// The last segment recovery will read.
    pub newest_segment: Option<String>,
    /// Where recovery ended, with `--start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<super::start::Recovered>,
}

/// How a data directory is restored.
#[derive(Debug, Clone)]
pub struct DatadirOptions<'a> {
    pub to: RecoveryTarget,
    /// Read only from this target.
    pub from: Option<&'a str>,
    pub fetch: &'a FetchCommand,
    pub thaw: &'a ThawOptions,
    /// Keep the source's archiving settings: the restored server takes the
    /// source's place and archives into the job after it promotes (a new
    /// timeline). Otherwise `archive_mode` is off in the copy.
    pub preserve_archiving: bool,
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

/// The base backup as recovery sees it.
pub fn base_ref(entry: &Entry) -> Option<BaseRef> {
    let (p, start, stop) = physical(entry)?;
    Some(BaseRef {
        timeline: p.timeline,
        start,
        stop,
        segment_size: p.segment_size,
    })
}

/// The base backup chosen for a recovery, where it is read from, and what
/// recovery will read after it.
struct Chosen {
    target: std::sync::Arc<dyn Target>,
    entry: Entry,
    base: BaseRef,
    continuity: wal::Continuity,
}

/// Picks the newest base backup on the job's targets (or `from`) that the
/// recovery target can be reached from: it ended before the target, and the
/// timeline recovery ends on descends from it. Among targets holding it,
/// the first (in the job's order) whose archive has no gap wins.
async fn choose(
    strata: &Strata,
    job: &str,
    to: RecoveryTarget,
    from: Option<&str>,
) -> Result<Chosen, RestoreError> {
    let cfg = strata.job(job)?;
    let names: Vec<&String> = match from {
        Some(t) if cfg.targets.iter().any(|n| n == t) => {
            cfg.targets.iter().filter(|n| *n == t).collect()
        }
        Some(t) => return Err(RestoreError::UnknownTarget(t.to_owned())),
        None => cfg.targets.iter().collect(),
    };
    let mut search = Search {
        oldest: None,
        problems: Vec::new(),
        best: None,
        histories: Histories::default(),
    };
    for name in &names {
        search.on_target(strata, job, name, to).await;
    }
    let Search {
        oldest,
        problems,
        best,
        ..
    } = search;
    best.ok_or_else(|| {
        RestoreError::Physical(if !problems.is_empty() {
            format!(
                "no base backup of job '{job}' can recover to {to}: {}; restore --from another target, or choose a moment before the gap; nothing was written",
                problems.join("; ")
            )
        } else {
            match oldest {
                None => format!(
                    "job '{job}' has no base backup on {}",
                    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                ),
                Some(o) => format!(
                    "no base backup of job '{job}' ends before {to}: the oldest ended at {} (the recovery window starts there)",
                    o.to_rfc3339()
                ),
            }
        })
    })
}

/// The search for the base backup a recovery starts from, across targets.
struct Search {
    /// When the oldest base backup seen ended.
    oldest: Option<DateTime<Utc>>,
    /// Why base backups were passed over.
    problems: Vec<String>,
    best: Option<Chosen>,
    histories: Histories,
}

impl Search {
    /// Looks at `name`'s base backups, newest first, for one newer than the
    /// best so far whose WAL reaches `to`.
    async fn on_target(&mut self, strata: &Strata, job: &str, name: &str, to: RecoveryTarget) {
        let target = strata.target(name);
        let (entries, listing) = match (
            catalog::list(strata, name, job).await,
            Listing::read(strata, job, target.as_ref()).await,
        ) {
            (Ok(e), Ok(l)) => (e, l),
            (Err(e), _) => return self.problems.push(format!("{name}: {e}")),
            (_, Err(e)) => return self.problems.push(format!("{name}: {e}")),
        };
        let mut bases: Vec<(Entry, BaseRef)> = entries
            .into_iter()
            .filter_map(|e| base_ref(&e).map(|b| (e, b)))
            .collect();
        bases.sort_by_key(|(e, _)| std::cmp::Reverse(e.started_at()));
        if let Some(f) = bases.iter().map(|(e, _)| e.manifest.finished_at).min() {
            self.oldest = Some(self.oldest.map_or(f, |o| o.min(f)));
        }
        // A moment before a newer base backup on the same timeline ended is
        // before that backup's stop: the WAL after it is not needed.
        let stops: Vec<(DateTime<Utc>, u32, u64)> = bases
            .iter()
            .map(|(e, b)| (e.manifest.finished_at, b.timeline, b.stop))
            .collect();
        for (entry, base) in bases {
            let (usable, end) = match to {
                RecoveryTarget::Time(t) => (
                    entry.manifest.finished_at <= t,
                    stops
                        .iter()
                        .filter(|(f, tl, _)| *f > t && *tl == base.timeline)
                        .map(|(_, _, stop)| *stop)
                        .min()
                        .map_or(End::Latest, End::Lsn),
                ),
                RecoveryTarget::Lsn(l) => (base.stop <= l, End::Lsn(l)),
                RecoveryTarget::Immediate => (true, End::Consistent),
                RecoveryTarget::Latest => (true, End::Latest),
            };
            let newer = self
                .best
                .as_ref()
                .is_none_or(|b| b.entry.started_at() < entry.started_at());
            if !usable || !newer {
                continue;
            }
            let id = entry.manifest.backup_id.clone();
            let continuity = match wal::continuity(
                strata,
                job,
                target.as_ref(),
                &listing,
                &mut self.histories,
                base,
                end,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.problems.push(format!("{name}: base backup {id}: {e}"));
                    continue;
                }
            };
            if let Some(gap) = continuity.gap(&id) {
                // Older base backups on this target need the same WAL.
                self.problems.push(gap);
                return;
            }
            self.best = Some(Chosen {
                target: target.clone(),
                entry,
                base,
                continuity,
            });
            return;
        }
    }
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
    preserve_archiving: bool,
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
        RecoveryTarget::Immediate => out.push_str("recovery_target = 'immediate'\n"),
        RecoveryTarget::Latest => {}
    }
    out.push_str("recovery_target_timeline = 'latest'\n");
    out.push_str("recovery_target_action = 'promote'\n");
    // A restored copy must not archive into the job it came from: its new
    // timeline would become "latest" for every later recovery. Unless it
    // takes the source's place (`--archive-mode preserve`).
    if !preserve_archiving {
        out.push_str("archive_mode = 'off'\n");
    }
    Ok(out)
}

/// Restores `job`'s cluster into `dir` for recovery up to `to`.
///
/// # Errors
/// No base backup for the target, a gap in the archive (named), a directory
/// that is not empty, an archived object still thawing, or a backup that fails
/// its checks while unpacking (the directory is then removed).
// Long on purpose: the checks before writing, then the writing, in order.
pub async fn restore_datadir(
    strata: &Strata,
    job: &str,
    dir: &Path,
    opts: &DatadirOptions<'_>,
) -> Result<DatadirReport, RestoreError> {
    let (to, from) = (opts.to, opts.from);
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
    let Chosen {
        target,
        entry,
        base,
        continuity,
    } = choose(strata, job, to, from).await?;
    if let RecoveryTarget::Lsn(l) = to {
        let reaches = continuity
            .newest
            .is_some_and(|n| n.start_lsn(base.segment_size) + u64::from(base.segment_size) > l);
        if !reaches {
            return Err(RestoreError::Physical(format!(
                "the archive on {} does not reach LSN {} yet (newest segment: {})",
                target.name(),
                format_lsn(l),
                continuity
                    .newest
                    .map_or_else(|| "none".to_owned(), |n| n.to_string())
            )));
        }
    }
    // Archived objects: request every thaw at once, so one wait covers all.
    let mut thawing = None;
    for key in std::iter::once(entry.object_key()).chain(continuity.archived.iter().cloned()) {
        match ensure_readable(target.as_ref(), &key, opts.thaw).await {
            Ok(()) => {}
            Err(e) if e.is_thawing() => {
                thawing.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = thawing {
        return Err(e);
    }
    let settings = recovery_settings(job, to, target.name(), opts.fetch, opts.preserve_archiving)?;
    let recorded = entry
        .manifest
        .physical
        .as_ref()
        .and_then(|p| p.server_manifest.as_ref())
        .map(|m| m.sha256.clone());
    let unpacked = match unpack(strata, target.as_ref(), &entry, dir).await {
        // The manifest the backup recorded (authenticated with the manifest).
        Ok(files)
            if recorded.as_ref().is_some_and(|sha| {
                files.manifest.as_deref().is_none_or(|m| {
                    hex::encode(ring::digest::digest(&ring::digest::SHA256, m)) != *sha
                })
            }) =>
        {
            Err(std::io::Error::other(RestoreError::Physical(format!(
                "base backup {}: the tar's backup_manifest is not the one recorded when it was taken",
                entry.manifest.backup_id
            ))))
        }
        // The files against the server's own manifest, before recovery uses them.
        Ok(files) => match files
            .manifest
            .as_deref()
            .map(|m| super::untar::matches_manifest(&files, m))
        {
            Some(Ok(true)) | None => Ok(()),
            Some(Ok(false)) => check_files(dir, &entry.manifest.database)
                .await
                .map_err(std::io::Error::other),
            Some(Err(why)) => Err(std::io::Error::other(RestoreError::Physical(format!(
                "base backup {}: {why}; nothing was started",
                entry.manifest.backup_id
            )))),
        },
        Err(e) => Err(e),
    };
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
        base_start_lsn: format_lsn(base.start),
        base_stop_lsn: format_lsn(base.stop),
        recovery_target: to.to_string(),
        timelines: continuity.path_text(),
        newest_segment: continuity.newest.map(|n| n.to_string()),
        recovered: None,
    })
}

/// Checks every unpacked file against the server's own `backup_manifest`
/// with `pg_verifybackup`, for a manifest whose checksums are not CRC-32C.
///
/// # Errors
/// A file differs, is missing or is extra (named), or no `pg_verifybackup`.
async fn check_files(dir: &Path, server: &crate::domain::DatabaseInfo) -> Result<(), RestoreError> {
    let tool = crate::pg::find_tool("pg_verifybackup", server)
        .await
        .map_err(|e| RestoreError::Physical(e.to_string()))?;
    let out = tokio::process::Command::new(&tool.path)
        .args(["--no-parse-wal", "--quiet"])
        .arg(dir)
        .output()
        .await
        .map_err(|e| RestoreError::Physical(format!("running {}: {e}", tool.path.display())))?;
    if out.status.success() {
        return Ok(());
    }
    Err(RestoreError::Physical(format!(
        "the unpacked files do not match the server's backup_manifest: {}",
        crate::pg::one_line(&String::from_utf8_lossy(&out.stderr))
    )))
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

/// Streams the base backup's tar into `dir` (each file checksummed and
/// flushed), then waits for the verdict on the stored bytes (hash, size,
/// every chunk authenticated).
async fn unpack(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    dir: &Path,
) -> Result<super::untar::Unpacked, std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let into = dir.to_owned();
    // strata's zstd streams decode on every core, frame by frame.
    let (unpacked, check) = if matches!(
        entry.manifest.compression,
        crate::domain::Compression::Zstd(_)
    ) {
        let (reader, check) = open_verified_packed(strata, target, entry, &entry.object_key())
            .await
            .map_err(std::io::Error::other)?;
        let frames =
            crate::pipeline::frames::ZstdFrames::new(tokio_util::io::SyncIoBridge::new(reader));
        let unpacked = tokio::task::spawn_blocking(move || {
            super::untar::unpack(std::io::BufReader::with_capacity(1 << 20, frames), &into)
        });
        (unpacked, check)
    } else {
        let (reader, check) = open_verified(strata, target, entry, &entry.object_key(), None)
            .await
            .map_err(std::io::Error::other)?;
        let bridge =
            std::io::BufReader::with_capacity(1 << 20, tokio_util::io::SyncIoBridge::new(reader));
        let unpacked = tokio::task::spawn_blocking(move || super::untar::unpack(bridge, &into));
        (unpacked, check)
    };
    let unpacked = unpacked.await.map_err(std::io::Error::other)?;
    let checked = check.await.map_err(std::io::Error::other)?;
    checked.map_err(|e| std::io::Error::other(RestoreError::Verify(e)))?;
    unpacked
}
