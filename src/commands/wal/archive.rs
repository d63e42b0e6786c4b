//! What one target's WAL archive holds, read with one listing, and what
//! recovery from a base backup would read of it: the timelines it walks (from
//! the history files) and the first segment it would miss. Restores refuse a
//! gap before writing anything; `verify`, `list`, the daemon's recovery
//! window and base backups (which count only once their WAL is archived) ask
//! the same question.

use std::collections::{BTreeMap, HashMap};

use super::{Archive, WalError};
use crate::app::Strata;
use crate::domain::timeline::{self, Leg, Switch};
use crate::domain::wal::{self, SegmentName, StoredWal, WalFile, format_lsn};
use crate::storage::{ObjectMeta, Target};

/// One target's archive of a job, as listed.
#[derive(Debug, Clone)]
pub struct Listing {
    pub target: String,
    files: BTreeMap<WalFile, ObjectMeta>,
}

impl Listing {
    /// Lists `{prefix}/{job}/wal/` on `target`.
    ///
    /// # Errors
    /// The target cannot be listed.
    pub async fn read(strata: &Strata, job: &str, target: &dyn Target) -> Result<Self, WalError> {
        let archive = Archive::open(strata, job)?;
        let prefix = archive.prefix(target.name());
        let files = target
            .list(&format!("{prefix}{}/", wal::WAL_DIR))
            .await?
            .into_iter()
            .filter_map(|o| Some((StoredWal::parse(&prefix, &o.key)?.file, o)))
            .collect();
        Ok(Self {
            target: target.name().to_owned(),
            files,
        })
    }

    /// Whether the archive holds `file`.
    pub fn contains(&self, file: &WalFile) -> bool {
        self.files.contains_key(file)
    }

    /// How `file` is stored (its key and storage class), if it is.
    pub fn get(&self, file: &WalFile) -> Option<&ObjectMeta> {
        self.files.get(file)
    }

    /// Every file, in WAL order per timeline.
    pub fn files(&self) -> impl Iterator<Item = (&WalFile, &ObjectMeta)> {
        self.files.iter()
    }

    /// The file archived last (by when it was written) and when: the
    /// recovery point of this target.
    pub fn newest_archived(&self) -> Option<(chrono::DateTime<chrono::Utc>, WalFile)> {
        self.files
            .iter()
            .filter_map(|(f, o)| Some((o.modified?, *f)))
            .max()
    }

    /// The newest whole segment on `timeline`.
    pub fn newest_segment(&self, timeline: u32) -> Option<SegmentName> {
        self.files
            .keys()
            .filter_map(|f| match f {
                WalFile::Segment(s) if s.timeline == timeline => Some(*s),
                _ => None,
            })
            .max()
    }

    /// The timeline recovery with `recovery_target_timeline = 'latest'`
    /// ends on, starting from `from`: PostgreSQL looks for the history files
    /// of `from + 1`, `from + 2`, … and takes the last one found in a row.
    pub fn latest_timeline(&self, from: u32) -> u32 {
        let mut t = from;
        while self.contains(&WalFile::History(t + 1)) {
            t += 1;
        }
        t
    }
}

/// A base backup as recovery sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRef {
    pub timeline: u32,
    pub start: u64,
    pub stop: u64,
    pub segment_size: u32,
}

/// How far recovery replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Everything the archive holds.
    Latest,
    /// Up to this position (it must be archived).
    Lsn(u64),
    /// The base backup's own end (restoring it to the moment it ended).
    Consistent,
}

/// What recovery from a base backup would read on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuity {
    pub target: String,
    /// The timeline recovery ends on.
    pub timeline: u32,
    pub legs: Vec<Leg>,
    /// The last segment it reads (when nothing is missing).
    pub newest: Option<SegmentName>,
    /// The first segment it needs and the archive lacks.
    pub missing: Option<SegmentName>,
    /// Needed objects in an archive storage class (they need a thaw first).
    pub archived: Vec<String>,
}

/// The history of `timeline` on `target` (none for timeline 1, nor for one
/// whose history file the archive lacks).
///
/// # Errors
/// The file cannot be read or does not parse.
pub async fn history(
    strata: &Strata,
    job: &str,
    target: &dyn Target,
    timeline: u32,
) -> Result<Vec<Switch>, WalError> {
    if timeline <= 1 {
        return Ok(Vec::new());
    }
    let archive = Archive::open(strata, job)?;
    match super::fetch_from(&archive, target, &WalFile::History(timeline)).await? {
        Some(text) => Ok(timeline::parse_history(
            timeline,
            &String::from_utf8_lossy(&text),
        )?),
        None => Ok(Vec::new()),
    }
}

/// Histories read once per target and timeline.
#[derive(Default)]
pub struct Histories(HashMap<(String, u32), Vec<Switch>>);

impl Histories {
    /// The history of `timeline` on `target`.
    ///
    /// # Errors
    /// See [`history`].
    pub async fn get(
        &mut self,
        strata: &Strata,
        job: &str,
        target: &dyn Target,
        timeline: u32,
    ) -> Result<&[Switch], WalError> {
        let key = (target.name().to_owned(), timeline);
        if !self.0.contains_key(&key) {
            let h = history(strata, job, target, timeline).await?;
            self.0.insert(key.clone(), h);
        }
        Ok(&self.0[&key])
    }
}

/// Walks what recovery from `base` to `end` reads on `target` (whose archive
/// is `listing`), on the timeline PostgreSQL would end on.
///
/// # Errors
/// A history file cannot be read, or the newest timeline did not descend from
/// the base backup ([`WalError::NoPath`]).
pub async fn continuity(
    strata: &Strata,
    job: &str,
    target: &dyn Target,
    listing: &Listing,
    histories: &mut Histories,
    base: BaseRef,
    end: End,
) -> Result<Continuity, WalError> {
    let final_timeline = match end {
        End::Consistent => base.timeline,
        End::Latest | End::Lsn(_) => listing.latest_timeline(base.timeline),
    };
    let history = histories
        .get(strata, job, target, final_timeline)
        .await?
        .to_vec();
    let legs = timeline::path(base.timeline, base.start, final_timeline, &history)?;
    let end_lsn = match end {
        End::Consistent => base.stop,
        End::Lsn(l) => l,
        End::Latest => legs
            .iter()
            .filter_map(|l| {
                let newest = listing.newest_segment(l.timeline)?;
                let at = newest.start_lsn(base.segment_size);
                // A parent's segments past the branch are another history.
                l.ends.is_none_or(|e| at < e).then_some(at)
            })
            .max()
            .unwrap_or(base.stop)
            .max(base.stop),
    };
    let live_end = matches!(end, End::Latest);
    let walked = timeline::walk(
        &legs,
        (base.start, end_lsn),
        base.segment_size,
        |s, last| {
            listing.contains(&WalFile::Segment(s))
                || (last && live_end && listing.contains(&WalFile::Partial(s)))
        },
    );
    let (newest, missing, read) = match walked {
        Ok(read) => (read.last().copied(), None, read),
        Err(m) => (None, Some(m), Vec::new()),
    };
    let archived = read
        .iter()
        .filter_map(|s| {
            let meta = listing
                .get(&WalFile::Segment(*s))
                .or_else(|| listing.get(&WalFile::Partial(*s)))?;
            meta.storage_class
                .as_ref()
                .is_some_and(|c| c.is_archive())
                .then(|| meta.key.clone())
        })
        .collect();
    Ok(Continuity {
        target: target.name().to_owned(),
        timeline: final_timeline,
        legs,
        newest,
        missing,
        archived,
    })
}

/// Waits (up to two minutes, for the archiver to catch up) until `target`
/// holds every segment of a base backup between its start and stop. Only
/// those few segments are looked for (not the whole archive, every 100 ms).
///
/// # Errors
/// A segment is still missing then (named), or the target cannot be listed.
pub async fn covers(
    strata: &Strata,
    job: &str,
    target: &str,
    base: BaseRef,
) -> Result<(), WalError> {
    let archive = Archive::open(strata, job)?;
    let t = strata.target(target);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let size = u64::from(base.segment_size);
    let mut needed: Vec<SegmentName> = (base.start / size..=base.stop.max(base.start) / size)
        .map(|n| SegmentName::from_number(base.timeline, n, base.segment_size))
        .collect();
    while let Some(&next) = needed.first() {
        if !archive
            .copies(t.as_ref(), &WalFile::Segment(next))
            .await?
            .is_empty()
        {
            needed.remove(0);
            continue;
        }
        if std::time::Instant::now() >= deadline {
            return Err(WalError::Targets(format!(
                "the base backup needs WAL segment {next}, which is not archived on {target}: check the job's WAL source (archive_command `strata wal-push {job} %p`, or the daemon's streaming) and pg_stat_archiver"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The start and end of the base backup labelled `label`, from the backup
/// history file the server archived when it ended (the first target of the
/// job that holds it; the newest files are read first), with that file's text.
///
/// # Errors
/// No target holds such a file, or one could not be read.
pub async fn backup_history(
    strata: &Strata,
    job: &str,
    label: &str,
) -> Result<(crate::pg::BaseBackupPoints, String), WalError> {
    let archive = Archive::open(strata, job)?;
    let cfg = strata.job(job)?;
    let mut errors = Vec::new();
    for t in &cfg.targets {
        let target = strata.target(t);
        let listing = match Listing::read(strata, job, target.as_ref()).await {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{t}: {e}"));
                continue;
            }
        };
        let labels: Vec<&WalFile> = listing
            .files()
            .map(|(f, _)| f)
            .filter(|f| matches!(f, WalFile::BackupLabel(..)))
            .collect();
        for file in labels.iter().rev() {
            match super::fetch_from(&archive, target.as_ref(), file).await {
                Ok(Some(text)) => {
                    let text = String::from_utf8_lossy(&text).into_owned();
                    if let Some(p) = crate::pg::BaseBackupPoints::parse(&text) {
                        if p.label == label {
                            return Ok((p, text));
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{t}: {e}")),
            }
        }
    }
    Err(WalError::Targets(format!(
        "the archive holds no backup history file for '{label}' (the server writes one when a base backup ends and archives it){}",
        if errors.is_empty() {
            String::new()
        } else {
            format!(": {}", errors.join("; "))
        }
    )))
}

impl Continuity {
    /// One line on what is missing, for errors and reports.
    pub fn gap(&self, backup_id: &str) -> Option<String> {
        self.missing.map(|m| {
            format!(
                "WAL segment {m} is missing from the archive on {} (needed after base backup {backup_id}, on the way to timeline {})",
                self.target, self.timeline
            )
        })
    }

    /// The recovery path as text (`1 → 2 at 0/3000158 → 3 at …`).
    pub fn path_text(&self) -> String {
        self.legs
            .iter()
            .map(|l| {
                if l.begins == 0 {
                    l.timeline.to_string()
                } else {
                    format!("{} at {}", l.timeline, format_lsn(l.begins))
                }
            })
            .collect::<Vec<_>>()
            .join(" → ")
    }
}
