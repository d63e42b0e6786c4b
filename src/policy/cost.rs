//! The storage cost model, pure: what stored bytes cost per month at the configured
//! prices, and what a retention policy will cost in steady state once storage tiers,
//! minimum storage durations and requests are counted.
//!
//! GB-month means 2^30 bytes kept for a month (30 days here). The projection follows
//! one year's worth of nightly backups through their whole life: retention (via
//! [`retention::plan`], pruned nightly as the daemon does) decides when each is
//! deleted, the lifecycle rules decide which class it sits in meanwhile, and every
//! class left (by transition or deletion) before its minimum duration is charged
//! for the rest of it, as S3 does. The year's total divided by twelve is the
//! steady-state monthly cost.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::domain::StorageClass;
use crate::policy::LifecycleRule;
use crate::policy::retention::Retention;
use crate::policy::retention::{self, Candidate};

/// Bytes per GB as S3 bills it.
pub const GIB: f64 = 1_073_741_824.0;
/// Days per billing month in this model.
const MONTH_DAYS: f64 = 30.0;

/// USD per 1,000 PUT/POST/LIST-class requests (AWS us-east-1 list prices); the
/// transitions into a class are priced by [`StorageClass::transition_per_1000`].
const PUT_PER_1000: f64 = 0.005;

/// Sum of dollar amounts; 0.0 (not Rust's -0.0) when there are none.
fn total(amounts: impl Iterator<Item = f64>) -> f64 {
    amounts.fold(0.0, |a, b| a + b)
}

/// Monthly cost of `bytes` at `usd_per_gb_month`.
pub fn monthly(bytes: u64, usd_per_gb_month: f64) -> f64 {
    bytes as f64 / GIB * usd_per_gb_month
}

/// Bytes and cost of one storage class.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassCost {
    pub bytes: u64,
    pub usd_monthly: f64,
}

/// One target's stored bytes by class, priced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCost {
    pub target: String,
    pub classes: BTreeMap<StorageClass, ClassCost>,
    pub usd_monthly: f64,
}

/// Prices the objects of a target: `(storage class, bytes)` pairs. Classes without
/// a price (local disk) cost nothing here.
pub fn price_target(
    target: &str,
    objects: impl IntoIterator<Item = (StorageClass, u64)>,
    prices: &BTreeMap<StorageClass, f64>,
) -> TargetCost {
    let mut classes: BTreeMap<StorageClass, ClassCost> = BTreeMap::new();
    for (class, bytes) in objects {
        classes.entry(class).or_default().bytes += bytes;
    }
    for (class, c) in &mut classes {
        c.usd_monthly = monthly(c.bytes, prices.get(class).copied().unwrap_or(0.0));
    }
    TargetCost {
        target: target.to_owned(),
        usd_monthly: total(classes.values().map(|c| c.usd_monthly)),
        classes,
    }
}

/// What the projection needs to know about one job on one target.
#[derive(Debug, Clone)]
pub struct Projection<'a> {
    pub retention: Retention,
    pub lifecycle: &'a [LifecycleRule],
    /// Size of one stored backup (the newest).
    pub backup_bytes: u64,
    /// Class objects are written in.
    pub initial_class: &'a StorageClass,
    /// Multipart part size, for request counts.
    pub part_bytes: u64,
}

/// Steady-state monthly cost breakdown of a retention policy on one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Projected {
    /// Storage, by class.
    pub storage_usd_monthly: BTreeMap<StorageClass, f64>,
    /// Charges for leaving a class before its minimum duration.
    pub early_deletion_usd_monthly: f64,
    /// Uploads and lifecycle transitions.
    pub requests_usd_monthly: f64,
    pub usd_monthly: f64,
    /// Backups held at a time, on average.
    pub backups_held: f64,
}

/// Age in days at which each backup of a year of nightly backups is deleted (by
/// retention or the lifecycle's expiry), under `retention`.
fn lifetimes(retention: &Retention, expire_days: Option<u32>) -> Vec<u32> {
    let tz = chrono_tz::UTC;
    let cohort = 365u32;
    let longest = 366 * (retention.yearly.max(1) + 1) + 31 * (retention.monthly + 1);
    let horizon = cohort + expire_days.map_or(longest, |e| e.min(longest) + 1);
    let start = NaiveDate::from_ymd_opt(2001, 1, 1).expect("date");
    let at = |day: u32| {
        tz.from_utc_datetime(
            &(start + chrono::Days::new(u64::from(day)))
                .and_hms_opt(3, 0, 0)
                .expect("time"),
        )
        .with_timezone(&Utc)
    };
    let mut alive: Vec<(u32, Candidate)> = Vec::new();
    let mut deleted_at: Vec<Option<u32>> = vec![None; cohort as usize];
    for day in 0..horizon {
        // Backups go on after the measured year: later ones push it out.
        alive.push((
            day,
            Candidate {
                backup_id: format!("{day:06}"),
                started_at: at(day),
                good: true,
            },
        ));
        let candidates: Vec<Candidate> = alive.iter().map(|(_, c)| c.clone()).collect();
        let now = at(day) + Duration::hours(1);
        let keep: Vec<bool> = retention::plan(retention, tz, &candidates, now)
            .into_iter()
            .map(|d| d.keep)
            .collect();
        // plan() returns oldest first, the order `alive` is in.
        let mut i = 0;
        alive.retain(|(born, _)| {
            let expired = expire_days.is_some_and(|e| day - born >= e);
            let kept = keep[i] && !expired;
            i += 1;
            if !kept && *born < cohort {
                deleted_at[*born as usize] = Some(day - born);
            }
            kept
        });
    }
    deleted_at
        .into_iter()
        .map(|d| d.unwrap_or(horizon))
        .collect()
}

/// Steady-state monthly cost of a policy on one target.
pub fn project(p: &Projection<'_>, prices: &BTreeMap<StorageClass, f64>) -> Projected {
    let expire = p
        .lifecycle
        .iter()
        .find(|r| r.storage_class.is_none())
        .map(|r| r.after_days);
    let transitions: Vec<(u32, &StorageClass)> = p
        .lifecycle
        .iter()
        .filter_map(|r| r.storage_class.as_ref().map(|c| (r.after_days, c)))
        .collect();
    let gb = p.backup_bytes as f64 / GIB;
    let price = |class: &StorageClass| prices.get(class).copied().unwrap_or(0.0);
    let mut out = Projected::default();
    let mut year_storage: BTreeMap<StorageClass, f64> = BTreeMap::new();
    let mut year_early = 0.0;
    let mut year_requests = 0.0;
    let mut held_days = 0.0;
    let parts = (p.backup_bytes.div_ceil(p.part_bytes.max(1))).max(1) as f64;
    for life in lifetimes(&p.retention, expire) {
        held_days += f64::from(life);
        // Uploads: create + parts + complete, the manifest, and a HEAD.
        year_requests += (parts + 4.0) * PUT_PER_1000 / 1000.0;
        // Walk the classes the backup passes through before it is deleted.
        let mut class = p.initial_class;
        let mut since = 0u32;
        for &(after, next) in &transitions {
            if after >= life {
                break;
            }
            let days = after - since;
            *year_storage.entry(class.clone()).or_default() +=
                gb * price(class) * f64::from(days) / MONTH_DAYS;
            year_early += gb * price(class) * f64::from(class.minimum_days().saturating_sub(days))
                / MONTH_DAYS;
            year_requests += next.transition_per_1000() / 1000.0;
            class = next;
            since = after;
        }
        let days = life - since;
        *year_storage.entry(class.clone()).or_default() +=
            gb * price(class) * f64::from(days) / MONTH_DAYS;
        year_early +=
            gb * price(class) * f64::from(class.minimum_days().saturating_sub(days)) / MONTH_DAYS;
    }
    out.storage_usd_monthly = year_storage
        .into_iter()
        .map(|(c, usd)| (c, usd / 12.0))
        .collect();
    out.early_deletion_usd_monthly = year_early / 12.0;
    out.requests_usd_monthly = year_requests / 12.0;
    out.usd_monthly = total(out.storage_usd_monthly.values().copied())
        + out.early_deletion_usd_monthly
        + out.requests_usd_monthly;
    out.backups_held = held_days / 365.0;
    out
}

/// One job's projection on one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobProjection {
    pub job: String,
    pub target: String,
    pub backup_bytes: u64,
    #[serde(flatten)]
    pub projected: Projected,
}

/// `strata cost`: what is stored now and what the policy will cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub targets: Vec<TargetCost>,
    pub usd_monthly: f64,
    pub projected_usd_monthly: f64,
    pub projections: Vec<JobProjection>,
}

impl CostReport {
    /// Builds the report from priced targets and per-job projections.
    pub fn new(targets: Vec<TargetCost>, projections: Vec<JobProjection>) -> Self {
        Self {
            usd_monthly: total(targets.iter().map(|t| t.usd_monthly)),
            projected_usd_monthly: total(projections.iter().map(|p| p.projected.usd_monthly)),
            targets,
            projections,
        }
    }
}

#[cfg(test)]
mod tests;
