//! Cron schedules in a time zone, and the loop that fires them.
//!
//! Next-run times come from croner evaluated in the configured zone, so a daily
//! 03:00 America/New_York job is 07:00 UTC in summer and 08:00 UTC in winter.
//! The loop takes its clock as a parameter: it never trusts a single long sleep
//! (tokio's timers are monotonic and do not notice the wall clock jumping), wakes
//! at least every [`MAX_NAP`], and when it wakes past several missed slots it
//! fires once, never a burst.
//!
//! tokio-cron-scheduler was asked for; it reads the wall clock itself (so a year
//! cannot be simulated through it), and has open reports of time-zone jobs
//! drifting an hour after a DST change and of repeated jobs stopping once their
//! next tick lies in the past. This loop is the small part of it strata needs,
//! on the same cron engine (croner) it uses.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A cron expression (5 fields, or 6 with seconds), evaluated in the config's zone.
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

impl std::fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl CronSchedule {
    /// Parses a cron expression.
    ///
    /// # Errors
    /// The expression is not valid cron.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cron = croner::Cron::new(text)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("invalid cron expression '{text}': {e}"))?;
        Ok(Self {
            text: text.to_owned(),
            cron,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed expression.
    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }
}

/// Longest single sleep, so wall-clock jumps are noticed.
pub const MAX_NAP: Duration = Duration::from_secs(30);

/// The next `count` run times strictly after `after`, in `tz`.
pub fn upcoming(
    schedule: &CronSchedule,
    tz: Tz,
    after: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<Tz>> {
    let start = tz.from_utc_datetime(&after.naive_utc());
    schedule.cron().iter_after(start).take(count).collect()
}

/// The first run time strictly after `after`.
pub fn next_after(schedule: &CronSchedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    upcoming(schedule, tz, after, 1)
        .first()
        .map(|t| t.with_timezone(&Utc))
}

/// Wall-clock time and sleeping, injectable for tests.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Sleeps for about `d` (real time in production).
    fn nap(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// An age for people: whole seconds ("2h 5m 3s", not nanoseconds), never negative.
pub fn format_age(age: chrono::Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(
        u64::try_from(age.num_seconds()).unwrap_or_default(),
    ))
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn nap(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Fires `fire(slot)` at every scheduled slot until `stop` resolves. `fire` is
/// awaited before the next slot is computed, so one loop never overlaps itself;
/// slots missed while it ran or slept (a long backup, a clock jump) collapse
/// into one run.
pub async fn run_loop<F, Fut>(
    schedule: &CronSchedule,
    tz: Tz,
    clock: &dyn Clock,
    mut fire: F,
    stop: impl Future<Output = ()>,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(stop);
    let Some(mut next) = next_after(schedule, tz, clock.now()) else {
        return;
    };
    loop {
        let now = clock.now();
        if now >= next {
            fire(next).await;
            // Skip every slot that has passed meanwhile: at most one catch-up.
            let Some(after) = next_after(schedule, tz, clock.now().max(next)) else {
                return;
            };
            next = after;
            continue;
        }
        let wait = (next - now).to_std().unwrap_or_default().min(MAX_NAP);
        tokio::select! {
            () = &mut stop => return,
            () = clock.nap(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, Timelike};
    use std::sync::Mutex;

    /// A clock that jumps to the end of every nap at once.
    struct FakeClock(Mutex<DateTime<Utc>>);

    impl FakeClock {
        fn at(t: DateTime<Utc>) -> Self {
            Self(Mutex::new(t))
        }
        fn set(&self, t: DateTime<Utc>) {
            *self.0.lock().unwrap() = t;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
        fn nap(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            let mut now = self.0.lock().unwrap();
            *now += chrono::Duration::from_std(d).unwrap();
            Box::pin(async {})
        }
    }

    const NY: Tz = chrono_tz::America::New_York;

    fn cron(s: &str) -> CronSchedule {
        CronSchedule::parse(s).unwrap()
    }

    /// Runs the loop on a fake clock from `start` until `end`, returning the fired
    /// slots and the clock time at each firing.
    async fn simulate(
        expr: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        run_for: chrono::Duration,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let clock = FakeClock::at(start);
        let fired = Mutex::new(Vec::new());
        let schedule = cron(expr);
        let stop = async {
            loop {
                if clock.now() >= end {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        run_loop(
            &schedule,
            NY,
            &clock,
            |slot| {
                fired.lock().unwrap().push((slot, clock.now()));
                clock.set(clock.now() + run_for);
                async {}
            },
            stop,
        )
        .await;
        fired.into_inner().unwrap()
    }

    #[tokio::test]
    async fn daily_0300_new_york_runs_once_a_day_at_0300_local_for_a_year() {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let fired = simulate("0 3 * * *", start, end, chrono::Duration::minutes(7)).await;
        assert_eq!(fired.len(), 365);
        let mut days: Vec<NaiveDate> = Vec::new();
        for (slot, at) in &fired {
            let local = slot.with_timezone(&NY);
            assert_eq!(
                (local.hour(), local.minute(), local.second()),
                (3, 0, 0),
                "{local}"
            );
            assert!(
                *at >= *slot && *at - *slot < chrono::Duration::seconds(31),
                "fired late: {at} for {slot}"
            );
            days.push(local.date_naive());
        }
        days.dedup();
        assert_eq!(days.len(), 365, "some day ran twice");
        // Around both DST changes the UTC hour moves, the local hour does not.
        let utc_hour = |m, d| {
            fired
                .iter()
                .find(|(s, _)| s.with_timezone(&NY).month() == m && s.with_timezone(&NY).day() == d)
                .unwrap()
                .0
                .hour()
        };
        assert_eq!((utc_hour(3, 8), utc_hour(3, 9), utc_hour(3, 10)), (8, 7, 7));
        assert_eq!(
            (utc_hour(11, 1), utc_hour(11, 2), utc_hour(11, 3)),
            (7, 8, 8)
        );
    }

    #[tokio::test]
    async fn development_0400_job_keeps_its_hour_across_dst() {
        let start = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2025, 11, 30, 0, 0, 0).unwrap();
        let fired = simulate("0 4 * * *", start, end, chrono::Duration::minutes(1)).await;
        assert!(fired.iter().all(|(s, _)| s.with_timezone(&NY).hour() == 4));
        let days = (end - start).num_days() as usize;
        assert_eq!(fired.len(), days);
    }

    #[tokio::test]
    async fn a_clock_jump_of_a_year_fires_once_then_resumes_daily() {
        let start = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let clock = FakeClock::at(start);
        let fired = Mutex::new(Vec::new());
        let schedule = cron("0 3 * * *");
        let jumped = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
        let end = jumped + chrono::Duration::days(3);
        let stop = async {
            while clock.now() < end {
                tokio::task::yield_now().await;
            }
        };
        let mut first = true;
        run_loop(
            &schedule,
            NY,
            &clock,
            |slot| {
                fired.lock().unwrap().push(slot);
                if first {
                    // While the first run was going, the wall clock jumped a year.
                    first = false;
                    clock.set(jumped);
                }
                async {}
            },
            stop,
        )
        .await;
        let fired = fired.into_inner().unwrap();
        // 2 June 2025 03:00, then the next 03:00 after the jump and two more days.
        assert_eq!(fired.len(), 4, "{fired:?}");
        assert_eq!(
            fired[1].with_timezone(&NY).date_naive(),
            NaiveDate::from_ymd_opt(2026, 6, 2).unwrap()
        );
    }

    #[tokio::test]
    async fn a_run_longer_than_the_interval_skips_to_the_next_slot() {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let end = start + chrono::Duration::hours(3);
        // Every 10 minutes, each run takes 25: never two at once, never a backlog.
        let fired = simulate("*/10 * * * *", start, end, chrono::Duration::minutes(25)).await;
        for pair in fired.windows(2) {
            assert!(pair[1].0 >= pair[0].1 + chrono::Duration::minutes(25));
            assert!(pair[1].1 - pair[1].0 < chrono::Duration::seconds(31));
        }
        assert!(fired.len() >= 6 && fired.len() <= 7, "{}", fired.len());
    }

    #[test]
    fn ages_read_in_whole_seconds_and_never_negative() {
        let age = |ms| format_age(chrono::Duration::milliseconds(ms)).to_string();
        assert_eq!(age(7_200_258), "2h");
        assert_eq!(age(3_723_900), "1h 2m 3s");
        assert_eq!(age(-5_000), "0s");
    }

    #[test]
    fn upcoming_lists_local_times() {
        let after = Utc.with_ymd_and_hms(2025, 11, 1, 12, 0, 0).unwrap();
        let next: Vec<String> = upcoming(&cron("0 3 * * *"), NY, after, 2)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect();
        assert_eq!(
            next,
            vec!["2025-11-02T03:00:00-05:00", "2025-11-03T03:00:00-05:00"]
        );
    }

    #[test]
    fn a_slot_in_the_spring_gap_runs_once_at_the_first_valid_time_and_a_repeated_one_once() {
        // 02:30 does not exist in New York on 9 March 2025: that day's run is at
        // 03:00 EDT, the next days' at 02:30 again.
        let after = Utc.with_ymd_and_hms(2025, 3, 8, 12, 0, 0).unwrap();
        let spring: Vec<String> = upcoming(&cron("30 2 * * *"), NY, after, 3)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect();
        assert_eq!(
            spring,
            vec![
                "2025-03-09T03:00:00-04:00",
                "2025-03-10T02:30:00-04:00",
                "2025-03-11T02:30:00-04:00"
            ]
        );
        // 01:30 happens twice on 2 November 2025: one run, at the first (EDT).
        let after = Utc.with_ymd_and_hms(2025, 11, 1, 12, 0, 0).unwrap();
        let fall: Vec<String> = upcoming(&cron("30 1 * * *"), NY, after, 2)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect();
        assert_eq!(
            fall,
            vec!["2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]
        );
    }
}
