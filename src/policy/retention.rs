//! GFS (grandfather-father-son) retention as a pure function: [`plan`] takes the
//! policy, the job's backups and `now`, and returns keep/delete decisions with the
//! reasons, without touching any storage.
//!
//! The rules, in the job's time zone:
//! - a period's keeper is its **first** good backup (weeks start on Sunday, so the
//!   keepers are Sunday's, the 1st's and January 1st's backups, as the strategy's
//!   calendar says);
//! - each tier keeps the keepers of the last N periods that contain a good backup, so
//!   gaps of missing days and a clock that jumped forward never shrink what is kept
//!   ("ages" are counted in backups taken, not in wall-clock time);
//! - the union of all tiers is kept, and the newest good backup always is;
//! - backups that are not good (a failed verification) never count for a tier; they
//!   are kept only while they are newer than the newest good backup (they may be all
//!   there is), and so is anything that claims to start after `now`.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// GFS retention counts (0 = that tier keeps nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub backup_id: String,
    /// The manifest's UTC start time (never the name).
    pub started_at: DateTime<Utc>,
    /// Counts toward retention: whole, and no failed verification.
    pub good: bool,
}

/// What to do with one backup, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Tier {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

const TIERS: [Tier; 4] = [Tier::Daily, Tier::Weekly, Tier::Monthly, Tier::Yearly];

impl Tier {
    fn count(self, policy: &Retention) -> usize {
        let n = match self {
            Self::Daily => policy.daily,
            Self::Weekly => policy.weekly,
            Self::Monthly => policy.monthly,
            Self::Yearly => policy.yearly,
        };
        n as usize
    }

    /// First day of the period holding `date`.
    fn start(self, date: NaiveDate) -> NaiveDate {
        match self {
            Self::Daily => date,
            Self::Weekly => date - Days::new(u64::from(date.weekday().num_days_from_sunday())),
            Self::Monthly => date.with_day(1).expect("day 1 exists"),
            Self::Yearly => NaiveDate::from_ymd_opt(date.year(), 1, 1).expect("1 January exists"),
        }
    }

    fn label(self, start: NaiveDate) -> String {
        match self {
            Self::Daily => format!("daily {start}"),
            Self::Weekly => format!("weekly (week of Sunday {start})"),
            Self::Monthly => format!("monthly {}", start.format("%Y-%m")),
            Self::Yearly => format!("yearly {}", start.year()),
        }
    }
}

/// Decides which of `backups` to keep under `policy`, periods taken in `tz`.
/// Decisions come back oldest first; every decision has at least one reason.
pub fn plan(
    policy: &Retention,
    tz: Tz,
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..backups.len()).collect();
    order.sort_by(|&a, &b| {
        (backups[a].started_at, &backups[a].backup_id)
            .cmp(&(backups[b].started_at, &backups[b].backup_id))
    });
    let good: Vec<usize> = order.iter().copied().filter(|&i| backups[i].good).collect();
    let mut keep_reasons: Vec<Vec<String>> = vec![Vec::new(); backups.len()];

    for tier in TIERS {
        let n = tier.count(policy);
        if n == 0 {
            continue;
        }
        // `good` is oldest first, so the first insert per period is its keeper.
        let mut keepers: BTreeMap<NaiveDate, usize> = BTreeMap::new();
        for &i in &good {
            let date = backups[i].started_at.with_timezone(&tz).date_naive();
            keepers.entry(tier.start(date)).or_insert(i);
        }
        for (start, &i) in keepers.iter().rev().take(n) {
            keep_reasons[i].push(tier.label(*start));
        }
    }
    let newest_good = good.last().copied();
    if let Some(i) = newest_good {
        keep_reasons[i].push("newest good backup".into());
    }
    let newest_good_at = newest_good.map(|i| backups[i].started_at);

    order
        .into_iter()
        .map(|i| {
            let b = &backups[i];
            let mut reasons = std::mem::take(&mut keep_reasons[i]);
            if b.started_at > now {
                reasons.push(format!(
                    "starts after now ({}): the clock may be behind",
                    now.to_rfc3339()
                ));
            }
            if !b.good && newest_good_at.is_none_or(|t| b.started_at > t) {
                reasons.push("not good, but newer than the newest good backup".into());
            }
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push(if b.good {
                    "outside every retention tier".into()
                } else {
                    "not good (failed verification) and older than a good backup".into()
                });
            }
            Decision {
                backup_id: b.backup_id.clone(),
                started_at: b.started_at,
                keep,
                reasons,
            }
        })
        .collect()
}

/// Retention slots that should hold a good backup and do not: for each tier, the
/// last N periods that ended before `now`, counted back no further than the
/// period of the job's first good backup. Returns the labels of empty slots.
pub fn missing_slots(
    policy: &Retention,
    tz: Tz,
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<String> {
    let good: Vec<NaiveDate> = backups
        .iter()
        .filter(|b| b.good)
        .map(|b| b.started_at.with_timezone(&tz).date_naive())
        .collect();
    let Some(first) = good.iter().min().copied() else {
        return Vec::new();
    };
    let today = now.with_timezone(&tz).date_naive();
    let mut missing = Vec::new();
    for tier in TIERS {
        let filled: std::collections::BTreeSet<NaiveDate> =
            good.iter().map(|d| tier.start(*d)).collect();
        let oldest = tier.start(first);
        // The current period has not ended yet; start from the one before it.
        let mut period = tier.start(today);
        for _ in 0..tier.count(policy) {
            let Some(previous) = period.pred_opt().map(|d| tier.start(d)) else {
                break;
            };
            period = previous;
            if period < oldest {
                break;
            }
            if !filled.contains(&period) {
                missing.push(tier.label(period));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests;
