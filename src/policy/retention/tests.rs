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
// Long on purpose: the table of cases is the test.
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
