//! Cron schedules in a time zone.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::CronSchedule;

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
