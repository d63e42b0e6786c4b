//! Retention of a physical job: the base backups the recovery window needs,
//! and the WAL archive from the oldest kept base backup's start on.
//!
//! Every base backup that ended inside the window is kept, and the newest one
//! that ended before the window began (recovery to the window's first moment
//! starts from it). The WAL is kept whole from the start of the oldest of
//! those on; older base backups GFS keeps (weeks, months, years) keep the WAL
//! between their own start and stop, so each still restores to the moment it
//! ended, without seven years of WAL. Nothing is deleted when no good base
//! backup is kept: then nothing the archive holds is known to be unneeded.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Backup, PlanItem, is_good};
use crate::app::Strata;
use crate::domain::manifest::job_prefix;
use crate::domain::wal::{self, StoredWal, WalFile, parse_lsn};
use crate::domain::{DumpFormat, manifest::Manifest};

/// The WAL a plan keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalKeep {
    /// The oldest base backup the window recovers from.
    pub backup_id: String,
    pub timeline: u32,
    /// Its start: every WAL file wholly before it goes, but for `ranges`.
    pub start_lsn: String,
    #[serde(skip)]
    pub start: u64,
    #[serde(skip)]
    pub segment_size: u32,
    /// Older base backups kept by GFS: (timeline, start, stop) of each.
    #[serde(skip)]
    pub ranges: Vec<(u32, u64, u64)>,
}

/// WAL files deleted from one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalPruned {
    pub target: String,
    pub deleted: usize,
    pub errors: Vec<String>,
}

fn base(m: &Manifest) -> Option<(u32, u64, u32)> {
    let p = m.physical.as_ref()?;
    (m.format == DumpFormat::Base).then_some(())?;
    Some((p.timeline, parse_lsn(&p.start_lsn)?, p.segment_size))
}

fn stop(m: &Manifest) -> Option<u64> {
    parse_lsn(&m.physical.as_ref()?.stop_lsn)
}

/// Marks the base backups the window needs as kept (with the reason), then
/// says where the WAL to keep begins.
pub fn keep_window(
    items: &mut [PlanItem],
    backups: &BTreeMap<String, Backup>,
    window: std::time::Duration,
    now: DateTime<Utc>,
) -> Option<WalKeep> {
    let start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let usable = |id: &str| {
        backups
            .get(id)
            .filter(|b| is_good(&b.manifest) && base(&b.manifest).is_some())
            .map(|b| b.manifest.finished_at)
    };
    let anchor = items
        .iter()
        .filter_map(|i| usable(&i.backup_id).map(|f| (f, i.backup_id.clone())))
        .filter(|(f, _)| *f < start)
        .max()
        .map(|(_, id)| id);
    for item in items.iter_mut() {
        let Some(finished) = usable(&item.backup_id) else {
            continue;
        };
        let reason = if finished >= start {
            "recovery window"
        } else if anchor.as_deref() == Some(item.backup_id.as_str()) {
            "recovery window (its first moment recovers from this base backup)"
        } else {
            continue;
        };
        item.keep = true;
        item.reasons.push(reason.into());
    }
    // (finished, timeline, start, stop, segment size, id) of each kept good base backup.
    let kept: Vec<_> = items
        .iter()
        .filter(|i| i.keep)
        .filter_map(|i| {
            let b = backups.get(&i.backup_id)?;
            let (timeline, start, size) = base(&b.manifest)?;
            is_good(&b.manifest).then(|| {
                let end = stop(&b.manifest).unwrap_or(start);
                (
                    b.manifest.finished_at,
                    timeline,
                    start,
                    end,
                    size,
                    i.backup_id.clone(),
                )
            })
        })
        .collect();
    // The window's base backups: the anchor and every newer one.
    let anchor_at = anchor.as_deref().and_then(usable).unwrap_or(start);
    let window = kept
        .iter()
        .filter(|k| k.0 >= anchor_at)
        .min_by_key(|k| k.2)
        .or_else(|| kept.iter().min_by_key(|k| k.2))?;
    Some(WalKeep {
        backup_id: window.5.clone(),
        timeline: window.1,
        start_lsn: wal::format_lsn(window.2),
        start: window.2,
        segment_size: window.4,
        ranges: kept
            .iter()
            .filter(|k| k.2 < window.2)
            .map(|k| (k.1, k.2, k.3))
            .collect(),
    })
}

/// Whether a WAL file named `name` lies wholly before `keep` (and so no kept
/// base backup needs it). Timeline history files are always kept: they are
/// tiny and recovery to a later timeline reads them all.
fn unneeded(file: &WalFile, keep: &WalKeep) -> bool {
    let size = u64::from(keep.segment_size);
    let segment = match file {
        WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupLabel(s, _) => *s,
        WalFile::History(_) => return false,
    };
    let begins = segment.start_lsn(keep.segment_size);
    let ends = begins + size;
    let needed_by_older = keep
        .ranges
        .iter()
        .any(|&(tl, from, to)| segment.timeline == tl && ends > from && begins <= to);
    segment.timeline <= keep.timeline && ends <= keep.start && !needed_by_older
}

/// Deletes on every target of `job` the WAL files wholly before `keep`.
pub async fn prune_wal(strata: &Strata, job: &str, keep: &WalKeep) -> Vec<WalPruned> {
    let mut out = Vec::new();
    let Ok(cfg) = strata.job(job) else {
        return out;
    };
    for name in &cfg.targets {
        let target = strata.target(name);
        let prefix = job_prefix(strata.prefix(name), job);
        let dir = format!("{prefix}{}/", wal::WAL_DIR);
        let mut done = WalPruned {
            target: name.clone(),
            ..WalPruned::default()
        };
        match target.list(&dir).await {
            Err(e) => done.errors.push(e.to_string()),
            Ok(objects) => {
                for o in objects {
                    let Some(stored) = StoredWal::parse(&prefix, &o.key) else {
                        continue;
                    };
                    if !unneeded(&stored.file, keep) {
                        continue;
                    }
                    match target.delete(&o.key).await {
                        Ok(()) => done.deleted += 1,
                        Err(e) => done.errors.push(format!("{}: {e}", o.key)),
                    }
                }
            }
        }
        if done.deleted > 0 || !done.errors.is_empty() {
            tracing::info!(job = %job, target_name = %name, deleted = done.deleted, errors = done.errors.len(), before = %keep.start_lsn, "retention pruned the WAL archive");
        }
        out.push(done);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(start: &str) -> WalKeep {
        WalKeep {
            backup_id: "b".into(),
            timeline: 2,
            start_lsn: start.into(),
            start: parse_lsn(start).unwrap(),
            segment_size: 16 << 20,
            ranges: vec![(
                2,
                parse_lsn("0/2000028").unwrap(),
                parse_lsn("0/2000100").unwrap(),
            )],
        }
    }

    #[test]
    fn only_files_wholly_before_the_oldest_kept_start_go() {
        let k = keep("0/5000028");
        let unneeded =
            |name: &str, k: &WalKeep| WalFile::parse(name).is_ok_and(|f| unneeded(&f, k));
        // Segment 4 ends at 0/5000000: before the start.
        assert!(unneeded("000000020000000000000004", &k));
        // Segment 5 holds the start.
        assert!(!unneeded("000000020000000000000005", &k));
        assert!(!unneeded("000000020000000000000006", &k));
        // An older timeline's files before the start go too; a newer one's stay.
        assert!(unneeded("000000010000000000000003.partial", &k));
        assert!(!unneeded("000000030000000000000001", &k));
        // An older base backup kept by GFS keeps its own segments only.
        assert!(!unneeded("000000020000000000000002", &k));
        assert!(!unneeded("000000020000000000000002.00000028.backup", &k));
        assert!(unneeded("000000020000000000000003", &k));
        assert!(!unneeded("00000002.history", &k));
        assert!(!unneeded("archive.json", &k));
    }
}
