//! What a physical job's recovery window asks of the targets it writes to:
//! lifecycle rules that neither expire nor archive-tier what the window needs.

use super::*;

/// How long a physical job needs its base backups readable: the recovery
/// window plus the longest gap between two scheduled base backups (the window's
/// first moment recovers from the newest base backup before it).
fn days_needed(job: &JobConfig, window: Duration, tz: chrono_tz::Tz) -> u32 {
    let interval = job
        .schedule
        .as_ref()
        .map_or(Duration::from_secs(7 * 86_400), |s| {
            let from = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
            let runs = crate::policy::schedule::upcoming(s, tz, from, 400);
            runs.windows(2)
                .filter_map(|w| (w[1] - w[0]).to_std().ok())
                .max()
                .unwrap_or(Duration::from_secs(86_400))
        });
    u32::try_from((window + interval).as_secs().div_ceil(86_400)).unwrap_or(u32::MAX)
}

/// A physical job's base backups and WAL must stay readable as long as its
/// recovery window needs them: a target's lifecycle may not expire them
/// earlier, nor move base backups to an archive tier (a restore would wait
/// hours for a thaw). WAL is never tagged for transitions (it stays in
/// STANDARD until retention deletes it).
pub(super) fn check_physical_lifecycles(
    jobs: &BTreeMap<String, JobConfig>,
    targets: &BTreeMap<String, TargetConfig>,
    tz: chrono_tz::Tz,
    p: &mut Problems,
) {
    for job in jobs.values() {
        let Some(physical) = job.kind.physical() else {
            continue;
        };
        let needed = days_needed(job, physical.recovery_window, tz);
        for name in &job.targets {
            let Some(TargetConfig {
                kind:
                    TargetKind::S3 {
                        settings,
                        lifecycle,
                        ..
                    },
                ..
            }) = targets.get(name)
            else {
                continue;
            };
            if settings
                .storage_class
                .as_ref()
                .is_some_and(StorageClass::is_archive)
            {
                p.add(
                    format!("targets.{name}.storage_class"),
                    format!(
                        "stores new objects in an archive tier, but job '{}' restores its base backups at once (point-in-time recovery); use STANDARD or STANDARD_IA",
                        job.name
                    ),
                );
            }
            for (i, rule) in lifecycle.iter().enumerate() {
                let at = format!("targets.{name}.lifecycle[{i}]");
                match &rule.storage_class {
                    Some(c) if c.is_archive() && rule.after_days < needed => p.add(
                        at,
                        format!(
                            "moves base backups to {c} after {} days, but job '{}' needs them readable for {needed} days (its recovery window plus the time between base backups): a restore would wait for a thaw",
                            rule.after_days, job.name
                        ),
                    ),
                    None if rule.after_days < needed => p.add(
                        at,
                        format!(
                            "expires objects after {} days, but job '{}' needs its base backups and WAL for {needed} days (its recovery window plus the time between base backups)",
                            rule.after_days, job.name
                        ),
                    ),
                    _ => {}
                }
            }
        }
    }
}
