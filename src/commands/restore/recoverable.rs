//! What each target of a physical job can recover to: the recovery window
//! from the base backup it starts from to the newest archived segment, and
//! whether older base backups still have their own WAL. `list`, `verify`,
//! `compliance` and the daemon's recovery window gauge read it.

use chrono::{DateTime, Utc};

use super::RestoreError;
use super::datadir::base_ref;
use crate::app::Strata;
use crate::catalog::{self, Entry};
use crate::commands::wal::{self, BaseRef, End, Listing, archive::Histories};

/// What one target can recover a physical job to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recoverable {
    pub target: String,
    /// The base backup the recovery window starts from: the newest that
    /// ended before the window began, else the oldest.
    pub oldest_backup: Option<String>,
    pub from: Option<DateTime<Utc>>,
    /// The last segment recovery from it reads (to the newest timeline).
    pub newest_segment: Option<String>,
    /// The timeline recovery ends on.
    pub timeline: Option<u32>,
    /// The first segment missing after that base backup's start (a gap), or
    /// why no recovery path exists.
    pub missing: Option<String>,
    /// Older base backups (kept by GFS; each restores to the moment it
    /// ended): the segment each lacks between its start and stop, if any.
    pub older: Vec<(String, Option<String>)>,
    /// The file archived last here and when (the achieved recovery point).
    pub newest_archived: Option<(DateTime<Utc>, String)>,
}

/// Checks on `target` that the WAL is gapless from the base backup the
/// recovery window starts from to the newest archived segment (along the
/// timelines recovery would walk), and that each older base backup has the
/// WAL of its own start..stop.
///
/// # Errors
/// The target cannot be listed.
// Long on purpose: the window's anchor, then each base backup's continuity, in one pass over one listing.
pub async fn recoverable(
    strata: &Strata,
    job: &str,
    target: &str,
    now: DateTime<Utc>,
) -> Result<Recoverable, RestoreError> {
    let listing_failed = |e: String| RestoreError::Physical(format!("{target}: {e}"));
    let window = strata
        .job(job)?
        .kind
        .physical()
        .map_or(std::time::Duration::ZERO, |p| p.recovery_window);
    let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let entries = catalog::list(strata, target, job)
        .await
        .map_err(|e| listing_failed(e.to_string()))?;
    let mut bases: Vec<(&Entry, BaseRef)> = entries
        .iter()
        .filter_map(|e| base_ref(e).map(|b| (e, b)))
        .collect();
    bases.sort_by_key(|(e, _)| e.started_at());
    let anchor = bases
        .iter()
        .rposition(|(e, _)| e.manifest.finished_at < window_start)
        .unwrap_or(0);
    let t = strata.target(target);
    let listing = Listing::read(strata, job, t.as_ref())
        .await
        .map_err(|e| listing_failed(e.to_string()))?;
    let mut histories = Histories::default();
    let mut report = Recoverable {
        target: target.to_owned(),
        oldest_backup: None,
        from: None,
        newest_segment: None,
        timeline: None,
        missing: None,
        older: Vec::new(),
        newest_archived: listing.newest_archived().map(|(at, f)| (at, f.to_string())),
    };
    for (i, (entry, base)) in bases.iter().enumerate() {
        let id = entry.manifest.backup_id.clone();
        if i < anchor {
            let c = wal::continuity(
                strata,
                job,
                t.as_ref(),
                &listing,
                &mut histories,
                *base,
                End::Consistent,
            )
            .await
            .map_err(|e| listing_failed(e.to_string()))?;
            report.older.push((id, c.missing.map(|m| m.to_string())));
            continue;
        }
        if i > anchor {
            break;
        }
        report.oldest_backup = Some(id);
        report.from = Some(entry.manifest.finished_at);
        match wal::continuity(
            strata,
            job,
            t.as_ref(),
            &listing,
            &mut histories,
            *base,
            End::Latest,
        )
        .await
        {
            Ok(c) => {
                report.timeline = Some(c.timeline);
                report.newest_segment = c.newest.map(|n| n.to_string());
                report.missing = c.missing.map(|m| m.to_string());
            }
            Err(e @ wal::WalError::NoPath(_)) => report.missing = Some(e.to_string()),
            Err(e) => return Err(listing_failed(e.to_string())),
        }
    }
    Ok(report)
}
