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
mod tests {
    use super::*;
    use chrono::{Duration, NaiveTime, TimeZone};
    use chrono_tz::America::New_York;

    const PROD: Retention = Retention {
        daily: 14,
        weekly: 8,
        monthly: 12,
        yearly: 7,
    };
    const DEV: Retention = Retention {
        daily: 7,
        weekly: 4,
        monthly: 0,
        yearly: 0,
    };

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        New_York
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .earliest()
            .expect("local time exists")
            .with_timezone(&Utc)
    }

    fn backup(t: DateTime<Utc>) -> Candidate {
        let local = t.with_timezone(&New_York);
        Candidate {
            backup_id: format!("prod_backup_{}", local.format("%Y%m%d_%H%M%S")),
            started_at: t,
            good: true,
        }
    }

    /// One good backup a day at 03:00 New York, `from` to `to` inclusive.
    fn daily(from: NaiveDate, to: NaiveDate) -> Vec<Candidate> {
        from.iter_days()
            .take_while(|d| *d <= to)
            .map(|d| {
                let local = d.and_time(NaiveTime::from_hms_opt(3, 0, 0).expect("time"));
                backup(
                    New_York
                        .from_local_datetime(&local)
                        .earliest()
                        .expect("03:00 exists every day in New York")
                        .with_timezone(&Utc),
                )
            })
            .collect()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("date")
    }

    fn kept_dates(decisions: &[Decision]) -> Vec<NaiveDate> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.started_at.with_timezone(&New_York).date_naive())
            .collect()
    }

    fn kept_ids(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.backup_id.as_str())
            .collect()
    }

    #[test]
    fn production_calendar_keeps_sundays_firsts_and_new_years() {
        let history = daily(date(2023, 1, 1), date(2025, 12, 31));
        let now = at(2025, 12, 31, 12, 0);
        let decisions = plan(&PROD, New_York, &history, now);
        assert_eq!(decisions.len(), history.len());
        let kept = kept_dates(&decisions);

        let mut expected: Vec<NaiveDate> = Vec::new();
        // daily 14: 18..=31 December
        expected.extend((18..=31).map(|d| date(2025, 12, d)));
        // weekly 8: the last eight Sundays
        let mut sunday = date(2025, 12, 28);
        for _ in 0..8 {
            expected.push(sunday);
            sunday = sunday - Days::new(7);
        }
        // monthly 12: the 1st of every month of 2025
        expected.extend((1..=12).map(|m| date(2025, m, 1)));
        // yearly 7: every 1 January there is a backup for
        expected.extend([date(2023, 1, 1), date(2024, 1, 1)]);
        expected.sort();
        expected.dedup();
        assert_eq!(kept, expected);

        for d in &decisions {
            assert!(!d.reasons.is_empty(), "{d:?} has no reason");
        }
        let jan1 = decisions
            .iter()
            .find(|d| d.backup_id == "prod_backup_20250101_030000")
            .expect("1 January 2025");
        assert_eq!(jan1.reasons, ["monthly 2025-01", "yearly 2025"]);
        let newest = decisions.last().expect("newest");
        assert!(newest.reasons.contains(&"newest good backup".to_owned()));
    }

    #[test]
    fn development_keeps_a_week_of_days_and_four_sundays() {
        let history = daily(date(2025, 10, 1), date(2025, 11, 30));
        let decisions = plan(&DEV, New_York, &history, at(2025, 11, 30, 5, 0));
        assert_eq!(
            kept_dates(&decisions),
            [
                date(2025, 11, 9),
                date(2025, 11, 16),
                date(2025, 11, 23),
                date(2025, 11, 24),
                date(2025, 11, 25),
                date(2025, 11, 26),
                date(2025, 11, 27),
                date(2025, 11, 28),
                date(2025, 11, 29),
                date(2025, 11, 30),
            ]
        );
    }

    /// Table of small histories: (case, policy, backups as (local time, good), now,
    /// expected kept backup ids).
    #[test]
    fn table() {
        type Row = (
            &'static str,
            Retention,
            Vec<(DateTime<Utc>, bool)>,
            DateTime<Utc>,
            Vec<&'static str>,
        );
        let weekly1 = Retention {
            weekly: 1,
            ..Retention::default()
        };
        let daily2 = Retention {
            daily: 2,
            ..Retention::default()
        };
        let monthly2 = Retention {
            monthly: 2,
            ..Retention::default()
        };
        let rows: Vec<Row> = vec![
            (
                "a day's keeper is its first backup, the newest is kept too",
                daily2,
                vec![
                    (at(2025, 6, 1, 3, 0), true),
                    (at(2025, 6, 2, 3, 0), true),
                    (at(2025, 6, 2, 15, 0), true),
                    (at(2025, 6, 3, 3, 0), true),
                    (at(2025, 6, 3, 9, 0), true),
                ],
                at(2025, 6, 3, 10, 0),
                vec![
                    "prod_backup_20250602_030000",
                    "prod_backup_20250603_030000",
                    "prod_backup_20250603_090000",
                ],
            ),
            (
                "gaps: the last N days that have a backup, however old",
                daily2,
                vec![
                    (at(2025, 1, 1, 3, 0), true),
                    (at(2025, 1, 20, 3, 0), true),
                    (at(2025, 3, 1, 3, 0), true),
                ],
                at(2025, 6, 1, 3, 0),
                vec!["prod_backup_20250120_030000", "prod_backup_20250301_030000"],
            ),
            (
                "a failed Sunday does not count: the week's keeper is Monday's",
                weekly1,
                vec![
                    (at(2025, 6, 1, 3, 0), false),
                    (at(2025, 6, 2, 3, 0), true),
                    (at(2025, 6, 3, 3, 0), true),
                ],
                at(2025, 6, 3, 4, 0),
                vec!["prod_backup_20250602_030000", "prod_backup_20250603_030000"],
            ),
            (
                "a failed backup newer than every good one is kept, older ones go",
                daily2,
                vec![
                    (at(2025, 6, 1, 3, 0), false),
                    (at(2025, 6, 2, 3, 0), true),
                    (at(2025, 6, 3, 3, 0), false),
                ],
                at(2025, 6, 3, 4, 0),
                vec!["prod_backup_20250602_030000", "prod_backup_20250603_030000"],
            ),
            (
                "no tier at all still keeps the newest good backup",
                Retention::default(),
                vec![(at(2025, 6, 1, 3, 0), true), (at(2025, 6, 2, 3, 0), true)],
                at(2025, 6, 2, 4, 0),
                vec!["prod_backup_20250602_030000"],
            ),
            (
                "only failed backups: nothing is deleted",
                daily2,
                vec![(at(2025, 6, 1, 3, 0), false), (at(2025, 6, 2, 3, 0), false)],
                at(2025, 6, 2, 4, 0),
                vec!["prod_backup_20250601_030000", "prod_backup_20250602_030000"],
            ),
            (
                "fall back: Saturday 22:30 EDT is Sunday in UTC but not the week's first",
                weekly1,
                vec![
                    (at(2025, 11, 1, 22, 30), true),
                    (at(2025, 11, 2, 3, 0), true),
                    (at(2025, 11, 3, 3, 0), true),
                ],
                at(2025, 11, 3, 4, 0),
                vec!["prod_backup_20251102_030000", "prod_backup_20251103_030000"],
            ),
            (
                "fall back: days are local, 22:30 EST on 2 November is not 3 November",
                daily2,
                vec![
                    (at(2025, 11, 2, 3, 0), true),
                    (at(2025, 11, 2, 22, 30), true),
                    (at(2025, 11, 3, 20, 0), true),
                ],
                at(2025, 11, 3, 21, 0),
                vec!["prod_backup_20251102_030000", "prod_backup_20251103_200000"],
            ),
            (
                "spring forward: 00:30 EST on Sunday 9 March is the week's first",
                weekly1,
                vec![
                    (at(2025, 3, 8, 23, 0), true),
                    (at(2025, 3, 9, 0, 30), true),
                    (at(2025, 3, 9, 3, 0), true),
                    (at(2025, 3, 10, 3, 0), true),
                ],
                at(2025, 3, 10, 4, 0),
                vec!["prod_backup_20250309_003000", "prod_backup_20250310_030000"],
            ),
            (
                "leap day: 29 February is a day, the 1st keeps February",
                Retention {
                    daily: 1,
                    monthly: 2,
                    ..Retention::default()
                },
                vec![
                    (at(2024, 1, 31, 3, 0), true),
                    (at(2024, 2, 1, 3, 0), true),
                    (at(2024, 2, 28, 3, 0), true),
                    (at(2024, 2, 29, 3, 0), true),
                ],
                at(2024, 2, 29, 4, 0),
                vec![
                    "prod_backup_20240131_030000",
                    "prod_backup_20240201_030000",
                    "prod_backup_20240229_030000",
                ],
            ),
            (
                "a month's keeper is its first good backup even when the 1st is missing",
                monthly2,
                vec![
                    (at(2025, 4, 3, 3, 0), true),
                    (at(2025, 4, 9, 3, 0), true),
                    (at(2025, 5, 2, 3, 0), true),
                    (at(2025, 5, 3, 3, 0), true),
                ],
                at(2025, 5, 3, 4, 0),
                vec![
                    "prod_backup_20250403_030000",
                    "prod_backup_20250502_030000",
                    "prod_backup_20250503_030000",
                ],
            ),
            (
                "a backup that starts after now is kept (clock behind)",
                Retention {
                    daily: 1,
                    ..Retention::default()
                },
                vec![
                    (at(2025, 6, 1, 3, 0), true),
                    (at(2025, 6, 2, 3, 0), true),
                    (at(2025, 6, 3, 3, 0), true),
                    (at(2025, 6, 4, 3, 0), false),
                ],
                at(2025, 6, 1, 4, 0),
                vec![
                    "prod_backup_20250602_030000",
                    "prod_backup_20250603_030000",
                    "prod_backup_20250604_030000",
                ],
            ),
        ];
        for (case, policy, history, now, expected) in rows {
            let backups: Vec<Candidate> = history
                .into_iter()
                .map(|(t, good)| Candidate { good, ..backup(t) })
                .collect();
            let decisions = plan(&policy, New_York, &backups, now);
            assert_eq!(kept_ids(&decisions), expected, "{case}");
        }
    }

    #[test]
    fn a_clock_a_year_ahead_deletes_nothing_more() {
        let history = daily(date(2025, 1, 1), date(2025, 6, 30));
        let now = at(2025, 6, 30, 4, 0);
        let today = plan(&PROD, New_York, &history, now);
        let year_later = plan(&PROD, New_York, &history, now + Duration::days(366));
        assert_eq!(kept_ids(&today), kept_ids(&year_later));
        // 14 days, six Sundays before them, and the 1st of January to May.
        assert_eq!(kept_ids(&today).len(), 14 + 6 + 5);
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut history = daily(date(2025, 1, 1), date(2025, 3, 31));
        let now = at(2025, 3, 31, 4, 0);
        let sorted = plan(&PROD, New_York, &history, now);
        history.reverse();
        history.swap(3, 40);
        assert_eq!(plan(&PROD, New_York, &history, now), sorted);
    }

    /// Three simulated years of nightly backups, pruned after each one: what
    /// survives is exactly what one plan over the whole history keeps, and the
    /// keepers of closed periods are never deleted early.
    #[test]
    fn pruning_every_night_for_three_years_matches_one_plan() {
        let all = daily(date(2023, 1, 1), date(2025, 12, 31));
        let mut survivors: Vec<Candidate> = Vec::new();
        for b in &all {
            survivors.push(b.clone());
            let now = b.started_at + Duration::minutes(30);
            let decisions = plan(&PROD, New_York, &survivors, now);
            let keep: Vec<&str> = kept_ids(&decisions);
            survivors.retain(|s| keep.contains(&s.backup_id.as_str()));
            assert!(
                survivors.len() <= 14 + 8 + 12 + 7,
                "{} kept",
                survivors.len()
            );
        }
        let end = all.last().expect("history").started_at + Duration::minutes(30);
        let once = plan(&PROD, New_York, &all, end);
        let survivor_ids: Vec<&str> = survivors.iter().map(|s| s.backup_id.as_str()).collect();
        assert_eq!(survivor_ids, kept_ids(&once));
    }

    #[test]
    fn missing_slots_name_the_empty_periods_only() {
        let mut history = daily(date(2025, 10, 1), date(2025, 11, 30));
        let now = at(2025, 12, 1, 2, 0);
        assert!(missing_slots(&PROD, New_York, &history, now).is_empty());
        // Lose 29 November, Sunday 23 November and the whole week of 9 November;
        // 16 November fails verification.
        let lost = |id: &str| {
            id.contains("20251129")
                || id.contains("20251123")
                || (9..=15).any(|d| id.contains(&format!("202511{d:02}")))
        };
        history.retain(|b| !lost(&b.backup_id));
        for b in &mut history {
            if b.backup_id.contains("20251116") {
                b.good = false;
            }
        }
        let missing = missing_slots(&PROD, New_York, &history, now);
        // Daily slots are 17–30 November (1 December has not ended); the week of
        // 16 November is filled by Monday's backup; only the week of 9 November
        // has no good backup at all.
        assert_eq!(
            missing,
            [
                "daily 2025-11-29",
                "daily 2025-11-23",
                "weekly (week of Sunday 2025-11-09)"
            ]
        );
        // Slots before the first backup are not expected.
        assert!(missing_slots(&PROD, New_York, &[], now).is_empty());
    }
}
