//! `strata status`: every job at a glance, as `pgbackrest info` does it: the
//! newest good backup and its age against the RPO, how many backups exist and
//! how their size moves, the next scheduled run, the last restore test and the
//! RTO it measured, each target's state, and what storage costs.
//!
//! [`report`] is pure: it takes what was read (listings, cost, state database
//! facts) and `now`, so it is tested with tables of cases.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::Entry;
use crate::config::Config;
use crate::policy::cost::CostReport;

/// Backups shown in the size trend.
pub const TREND: usize = 7;

/// What one target holds of a job, or why it could not be read.
pub type Listing = Result<crate::catalog::Listing, String>;

/// The newest restore test of a job, from the state database.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RestoreTestFact {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// The measured RTO.
    pub seconds: f64,
    pub error: Option<String>,
}

/// The newest finished run of a job, from the state database.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunFact {
    pub run_id: String,
    pub status: String,
}

/// Facts per job that do not come from the targets.
#[derive(Debug, Clone, Default)]
pub struct JobFacts {
    pub restore_test: Option<RestoreTestFact>,
    pub last_run: Option<RunFact>,
    /// Physical jobs: the newest WAL file every target holds (its recovery
    /// point), or why it is not known.
    pub newest_wal: Option<Result<WalFact, String>>,
}

/// The newest archived WAL file of a physical job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WalFact {
    pub file: String,
    pub at: DateTime<Utc>,
}

/// One backup in the status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupLine {
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub age_seconds: i64,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// Every copy's newest check passed.
    pub good: bool,
}

/// One target of one job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetLine {
    pub target: String,
    pub backups: usize,
    pub has_newest: bool,
    /// `ok`, `missing the newest backup`, or why it could not be listed.
    pub state: String,
}

/// One job.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobStatus {
    pub job: String,
    /// `ok`, `stale` (past the RPO), `no backup`, or `degraded` (a target lacks
    /// the newest backup or cannot be read).
    pub status: String,
    pub rpo_seconds: u64,
    /// The recovery point (newest good backup; a physical job's newest
    /// archived WAL) is younger than the RPO.
    pub within_rpo: bool,
    /// Physical jobs: the newest WAL file on every target and its age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_wal: Option<Result<WalFact, String>>,
    pub last_good: Option<BackupLine>,
    pub newest: Option<BackupLine>,
    pub backups: usize,
    pub oldest: Option<DateTime<Utc>>,
    /// Stored size of the newest backup relative to the one before, minus 1.
    pub size_change_ratio: Option<f64>,
    /// Stored sizes of the last backups, oldest first.
    pub size_trend: Vec<u64>,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<RunFact>,
    pub restore_test: Option<RestoreTestFact>,
    pub targets: Vec<TargetLine>,
    /// Steady-state monthly cost of this job's retention on its S3 targets.
    pub projected_usd_monthly: f64,
}

/// The whole status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub at: DateTime<Utc>,
    pub jobs: Vec<JobStatus>,
    /// Cost of what is stored now, per target (local disk is not priced).
    pub target_usd_monthly: BTreeMap<String, f64>,
    pub usd_monthly: f64,
    pub projected_usd_monthly: f64,
}

fn line(e: &Entry, now: DateTime<Utc>) -> BackupLine {
    BackupLine {
        backup_id: e.manifest.backup_id.clone(),
        started_at: e.started_at(),
        age_seconds: (now - e.started_at()).num_seconds().max(0),
        stored_bytes: e.manifest.stored_bytes,
        raw_bytes: e.manifest.raw_bytes,
        good: crate::commands::prune::is_good(&e.manifest),
    }
}

/// Builds the status from what was read.
// Long on purpose: one section per source it reads (jobs, targets, restore tests, cost), in screen order.
pub fn report(
    config: &Config,
    now: DateTime<Utc>,
    listings: &BTreeMap<String, BTreeMap<String, Listing>>,
    facts: &BTreeMap<String, JobFacts>,
    cost: &CostReport,
) -> Status {
    let mut jobs = Vec::new();
    for (name, job) in &config.jobs {
        let empty = BTreeMap::new();
        let per_target = listings.get(name).unwrap_or(&empty);
        // One entry per backup id, the copy with every verification merged.
        let mut all: BTreeMap<String, Entry> = BTreeMap::new();
        for listing in per_target.values().flatten() {
            for e in &listing.entries {
                all.entry(e.manifest.backup_id.clone())
                    .and_modify(|kept| {
                        kept.manifest
                            .verifications
                            .extend(e.manifest.verifications.iter().cloned());
                    })
                    .or_insert_with(|| e.clone());
            }
        }
        let mut backups: Vec<&Entry> = all.values().collect();
        backups.sort_by_key(|e| e.started_at());
        let newest = backups.last().map(|e| line(e, now));
        let last_good = backups
            .iter()
            .rev()
            .find(|e| crate::commands::prune::is_good(&e.manifest))
            .map(|e| line(e, now));
        let rpo = job.rpo.as_secs();
        let f = facts.get(name).cloned().unwrap_or_default();
        // A physical job recovers to its newest archived WAL, not to its
        // newest base backup.
        let within_rpo = if job.kind.is_physical() {
            matches!(&f.newest_wal, Some(Ok(w)) if (now - w.at).num_seconds() <= rpo as i64)
        } else {
            last_good
                .as_ref()
                .is_some_and(|g| g.age_seconds >= 0 && g.age_seconds as u64 <= rpo)
        };
        let trend: Vec<u64> = backups
            .iter()
            .rev()
            .take(TREND)
            .rev()
            .map(|e| e.manifest.stored_bytes)
            .collect();
        let size_change_ratio = match trend.as_slice() {
            [.., prev, last] if *prev > 0 => Some(*last as f64 / *prev as f64 - 1.0),
            _ => None,
        };
        let newest_id = newest.as_ref().map(|n| n.backup_id.clone());
        let targets: Vec<TargetLine> = job
            .targets
            .iter()
            .map(|t| match per_target.get(t) {
                Some(Ok(listing)) => {
                    let entries = &listing.entries;
                    let has_newest = newest_id
                        .as_ref()
                        .is_none_or(|id| entries.iter().any(|e| &e.manifest.backup_id == id));
                    let forged = listing
                        .refused
                        .iter()
                        .filter(|r| r.error.is_forgery())
                        .count();
                    let state = if forged > 0 {
                        format!("{forged} FORGED manifest(s)")
                    } else if !listing.refused.is_empty() {
                        format!("{} manifest(s) refused", listing.refused.len())
                    } else if has_newest {
                        "ok".into()
                    } else {
                        "missing the newest backup".into()
                    };
                    TargetLine {
                        target: t.clone(),
                        backups: entries.len(),
                        has_newest: has_newest && listing.refused.is_empty(),
                        state,
                    }
                }
                Some(Err(e)) => TargetLine {
                    target: t.clone(),
                    backups: 0,
                    has_newest: false,
                    state: format!("cannot be listed: {e}"),
                },
                None => TargetLine {
                    target: t.clone(),
                    backups: 0,
                    has_newest: false,
                    state: "not read".into(),
                },
            })
            .collect();
        let status = if backups.is_empty() {
            "no backup"
        } else if !within_rpo {
            "stale"
        } else if targets.iter().any(|t| !t.has_newest) {
            "degraded"
        } else {
            "ok"
        };
        jobs.push(JobStatus {
            job: name.clone(),
            status: status.into(),
            rpo_seconds: rpo,
            within_rpo,
            newest_wal: f.newest_wal.clone(),
            last_good,
            newest,
            backups: backups.len(),
            oldest: backups.first().map(|e| e.started_at()),
            size_change_ratio,
            size_trend: trend,
            schedule: job.schedule.as_ref().map(|s| s.as_str().to_owned()),
            next_run: job
                .schedule
                .as_ref()
                .and_then(|s| crate::policy::schedule::next_after(s, config.timezone, now)),
            last_run: f.last_run,
            restore_test: f.restore_test,
            targets,
            projected_usd_monthly: cost
                .projections
                .iter()
                .filter(|p| &p.job == name)
                .map(|p| p.projected.usd_monthly)
                .sum(),
        });
    }
    Status {
        at: now,
        jobs,
        target_usd_monthly: cost
            .targets
            .iter()
            .map(|t| (t.target.clone(), t.usd_monthly))
            .collect(),
        usd_monthly: cost.usd_monthly,
        projected_usd_monthly: cost.projected_usd_monthly,
    }
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", b / 1024.0 / 1024.0 / 1024.0)
    } else {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    }
}

fn age(seconds: i64) -> String {
    crate::policy::schedule::format_age(chrono::Duration::seconds(seconds)).to_string()
}

impl Status {
    /// The text screen.
    // Long on purpose: the status screen line by line, in the order it is printed.
    pub fn text(&self, tz: chrono_tz::Tz) -> String {
        let mut out = String::new();
        for j in &self.jobs {
            out.push_str(&format!("job {}: {}\n", j.job, j.status));
            match &j.last_good {
                Some(g) if j.newest_wal.is_some() => out.push_str(&format!(
                    "    last base backup  {} ({} ago)\n",
                    g.backup_id,
                    age(g.age_seconds)
                )),
                Some(g) => out.push_str(&format!(
                    "    last good backup  {} ({} ago, RPO {}{})\n",
                    g.backup_id,
                    age(g.age_seconds),
                    age(j.rpo_seconds as i64),
                    if j.within_rpo { "" } else { ": EXCEEDED" }
                )),
                None => out.push_str("    last good backup  none\n"),
            }
            match &j.newest_wal {
                Some(Ok(w)) => out.push_str(&format!(
                    "    newest WAL        {} ({} ago, RPO {}{})\n",
                    w.file,
                    age((self.at - w.at).num_seconds().max(0)),
                    age(j.rpo_seconds as i64),
                    if j.within_rpo { "" } else { ": EXCEEDED" }
                )),
                Some(Err(e)) => out.push_str(&format!("    newest WAL        unknown: {e}\n")),
                None => {}
            }
            if let Some(n) = j.newest.as_ref().filter(|n| !n.good) {
                out.push_str(&format!(
                    "    newest backup     {} FAILED its last check\n",
                    n.backup_id
                ));
            }
            if let Some(n) = &j.newest {
                let change = j
                    .size_change_ratio
                    .map(|r| format!(", {:+.0}% on the previous", r * 100.0))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "    backups           {}, oldest {}; newest {} stored ({} raw){change}\n",
                    j.backups,
                    j.oldest
                        .map(|o| o.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default(),
                    size(n.stored_bytes),
                    size(n.raw_bytes),
                ));
                out.push_str(&format!(
                    "    size trend        {}\n",
                    j.size_trend
                        .iter()
                        .map(|b| size(*b))
                        .collect::<Vec<_>>()
                        .join(" → ")
                ));
            }
            match (&j.schedule, j.next_run) {
                (Some(s), Some(next)) => out.push_str(&format!(
                    "    next run          {} ({s})\n",
                    next.with_timezone(&tz).to_rfc3339()
                )),
                _ => out.push_str("    next run          none (no schedule)\n"),
            }
            if let Some(r) = &j.last_run {
                out.push_str(&format!(
                    "    last run          {} ({})\n",
                    r.status, r.run_id
                ));
            }
            match &j.restore_test {
                Some(t) => out.push_str(&format!(
                    "    restore test      {} {}, RTO {}{}\n",
                    t.at.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
                    if t.ok { "ok" } else { "FAILED" },
                    age(t.seconds.round() as i64),
                    t.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
                None => out.push_str("    restore test      none recorded\n"),
            }
            let targets: Vec<String> = j
                .targets
                .iter()
                .map(|t| format!("{} {} ({})", t.target, t.state, t.backups))
                .collect();
            out.push_str(&format!("    targets           {}\n", targets.join(", ")));
            if j.projected_usd_monthly > 0.0 {
                out.push_str(&format!(
                    "    cost              ${:.2}/month projected\n",
                    j.projected_usd_monthly
                ));
            }
        }
        let per: Vec<String> = self
            .target_usd_monthly
            .iter()
            .map(|(t, usd)| format!("{t} ${usd:.2}"))
            .collect();
        out.push_str(&format!(
            "storage: ${:.2}/month now ({}), ${:.2}/month projected\n",
            self.usd_monthly,
            per.join(", "),
            self.projected_usd_monthly
        ));
        out
    }
}

#[cfg(test)]
mod tests;
