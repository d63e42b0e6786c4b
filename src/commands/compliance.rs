//! The compliance report: each control of the backup strategy checked against
//! the config and the real buckets and backups, PASS or FAIL with the evidence.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::app::Strata;
use crate::commands::lifecycle::Status as LifecycleStatus;
use crate::commands::prune;
use crate::config::{Config, TargetKind};
use crate::policy::retention::{self, Candidate};
use crate::storage::StorageError;

/// Restore tests older than this fail the report.
pub const RESTORE_TEST_MAX_AGE_DAYS: i64 = 31;

/// One control.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub check: String,
    pub pass: bool,
    pub evidence: Vec<String>,
}

/// Every control.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pass: bool,
    pub checks: Vec<Check>,
}

fn check(name: &str, results: Vec<(bool, String)>) -> Check {
    Check {
        check: name.to_owned(),
        pass: results.iter().all(|(ok, _)| *ok),
        evidence: results.into_iter().map(|(_, e)| e).collect(),
    }
}

/// Every manifest on every target opens: none forged, none out of bounds.
/// Manifests without a MAC (jobs without encryption, or written before
/// manifests were authenticated) are named but do not fail the check.
pub async fn manifests(strata: &Strata) -> Check {
    let config = strata.config();
    let mut results = Vec::new();
    for (name, job) in &config.jobs {
        for t in &job.targets {
            match crate::catalog::list_all(strata, t, name).await {
                Ok(listing) => {
                    for r in &listing.refused {
                        results.push((
                            false,
                            format!("job {name} on {t}: {}: {}", r.manifest_key, r.error),
                        ));
                    }
                    let unsigned = listing
                        .entries
                        .iter()
                        .filter(|e| e.trust == crate::domain::manifest::Trust::Unsigned)
                        .count();
                    let why = if config.encryption.is_none() {
                        "no encryption keys, so manifests cannot be authenticated"
                    } else {
                        "written before manifests were authenticated"
                    };
                    results.push((
                        true,
                        if unsigned > 0 {
                            format!(
                                "job {name} on {t}: {} manifest(s), {unsigned} without a MAC ({why})",
                                listing.entries.len()
                            )
                        } else {
                            format!(
                                "job {name} on {t}: {} manifest(s), every one authenticated",
                                listing.entries.len()
                            )
                        },
                    ));
                }
                Err(e) => results.push((false, format!("job {name} on {t}: cannot list: {e}"))),
            }
        }
    }
    check("manifests", results)
}

/// 3-2-1: every job writes to at least two targets on two media, one of them
/// offsite (marked `offsite: true`, or an S3 bucket in another region than
/// another of the job's buckets).
pub fn three_two_one(config: &Config) -> Check {
    let mut results = Vec::new();
    for (name, job) in &config.jobs {
        let targets: Vec<_> = job.targets.iter().map(|t| &config.targets[t]).collect();
        let local = targets
            .iter()
            .any(|t| matches!(t.kind, TargetKind::Local { .. }));
        let s3_regions: Vec<&str> = targets
            .iter()
            .filter_map(|t| match &t.kind {
                TargetKind::S3 { settings, .. } => Some(settings.region.as_str()),
                TargetKind::Local { .. } => None,
            })
            .collect();
        let media = usize::from(local) + usize::from(!s3_regions.is_empty());
        let marked = targets.iter().find(|t| t.offsite).map(|t| t.name.clone());
        let regions: std::collections::BTreeSet<&str> = s3_regions.iter().copied().collect();
        let offsite = marked.clone().or_else(|| {
            (regions.len() > 1).then(|| {
                format!(
                    "buckets in {}",
                    regions.iter().copied().collect::<Vec<_>>().join(" and ")
                )
            })
        });
        let ok = targets.len() >= 2 && media >= 2 && offsite.is_some();
        results.push((
            ok,
            format!(
                "job {name}: {} target(s) [{}], {media} medium/media, offsite: {}",
                targets.len(),
                job.targets.join(", "),
                offsite.unwrap_or_else(|| "none".into())
            ),
        ));
    }
    if results.is_empty() {
        results.push((false, "no jobs configured".into()));
    }
    check("3-2-1", results)
}

/// Server-side encryption configured on every S3 target.
pub fn server_side_encryption(config: &Config) -> Check {
    let results: Vec<(bool, String)> = config
        .targets
        .values()
        .filter_map(|t| match &t.kind {
            TargetKind::S3 { settings, .. } => Some(match &settings.server_side_encryption {
                Some(sse) => (true, format!("{}: {sse} on every upload", t.name)),
                None => (false, format!("{}: server_side_encryption is none", t.name)),
            }),
            TargetKind::Local { .. } => None,
        })
        .collect();
    if results.is_empty() {
        return check(
            "server_side_encryption",
            vec![(true, "no S3 target".into())],
        );
    }
    check("server_side_encryption", results)
}

/// The compliance report at `now`, from every job's backups (`jobs`) and, where
/// the caller has just read them, the targets' lifecycle states (`lifecycle`, by
/// target; any target missing there is read here).
// Long on purpose: One block per compliance check, in the order the report prints them.
pub async fn report(
    strata: &Strata,
    now: DateTime<Utc>,
    jobs: &prune::Jobs,
    lifecycle: &BTreeMap<String, Result<LifecycleStatus, StorageError>>,
) -> Report {
    let config = strata.config();
    let mut checks = vec![three_two_one(config)];

    // Client-side encryption: configured, and the newest backup of every job used it.
    let mut client_side = Vec::new();
    let mut rpo = Vec::new();
    let mut restore_tests = Vec::new();
    let mut slots = Vec::new();
    let mut windows = Vec::new();
    for (name, job) in &config.jobs {
        let backups = match jobs.get(name) {
            Some(Ok(b)) => b,
            None => continue,
            Some(Err(e)) => {
                let why = format!("job {name}: cannot list backups: {e}");
                client_side.push((false, why.clone()));
                rpo.push((false, why.clone()));
                restore_tests.push((false, why.clone()));
                slots.push((false, why));
                continue;
            }
        };
        let newest = backups
            .values()
            .filter(|b| prune::is_good(&b.manifest))
            .max_by_key(|b| b.manifest.started_at);
        match newest {
            Some(b) => {
                let enc = b.manifest.encryption.as_ref();
                client_side.push((
                    enc.is_some(),
                    match enc {
                        Some(e) => format!(
                            "job {name}: newest backup {} is {} with key {}",
                            b.manifest.backup_id, e.algorithm, e.key_id
                        ),
                        None => format!(
                            "job {name}: newest backup {} is not encrypted",
                            b.manifest.backup_id
                        ),
                    },
                ));
                if !job.kind.is_physical() {
                    let age = now - b.manifest.started_at;
                    let limit = Duration::from_std(job.rpo).unwrap_or(Duration::MAX);
                    rpo.push((
                        age <= limit,
                        format!(
                            "job {name}: newest good backup {} is {} old (RPO {})",
                            b.manifest.backup_id,
                            crate::policy::schedule::format_age(age),
                            humantime::format_duration(job.rpo)
                        ),
                    ));
                }
            }
            None => {
                client_side.push((
                    config.encryption.is_some(),
                    format!("job {name}: no backup yet"),
                ));
                if !job.kind.is_physical() {
                    rpo.push((false, format!("job {name}: no good backup")));
                }
            }
        }
        if let Some(p) = job.kind.physical() {
            let (achieved, window) = physical(strata, name, job, p.recovery_window, now).await;
            rpo.extend(achieved);
            windows.extend(window);
        }
        let last_test = backups
            .values()
            .flat_map(|b| b.manifest.verifications.iter())
            .filter(|v| v.kind == "restore" && v.ok)
            .map(|v| v.at)
            .max();
        restore_tests.push(match last_test {
            Some(at) => (
                now - at <= Duration::days(RESTORE_TEST_MAX_AGE_DAYS),
                format!(
                    "job {name}: last successful restore test {}",
                    at.to_rfc3339()
                ),
            ),
            None => (false, format!("job {name}: never")),
        });
        let candidates: Vec<Candidate> = backups
            .values()
            .map(|b| Candidate {
                backup_id: b.manifest.backup_id.clone(),
                started_at: b.manifest.started_at,
                good: prune::is_good(&b.manifest),
            })
            .collect();
        let missing = retention::missing_slots(&job.retention, config.timezone, &candidates, now);
        slots.push(if missing.is_empty() {
            (
                true,
                format!("job {name}: every expected slot holds a good backup"),
            )
        } else {
            (
                false,
                format!("job {name}: empty slots: {}", missing.join(", ")),
            )
        });
    }
    if config.encryption.is_none() {
        client_side.push((false, "no encryption keys configured".into()));
    }
    checks.push(check("client_side_encryption", client_side));
    checks.push(server_side_encryption(config));
    checks.push(manifests(strata).await);

    // Bucket-level controls.
    let mut versioning = Vec::new();
    let mut lifecycles = Vec::new();
    let mut locks = Vec::new();
    for (name, t) in &config.targets {
        let target = strata.target(name);
        let (Some(s3), TargetKind::S3 { object_lock, .. }) = (target.as_s3(), &t.kind) else {
            continue;
        };
        let bucket = &s3.settings().bucket;
        versioning.push(
            match s3
                .client()
                .get_bucket_versioning()
                .bucket(bucket)
                .send()
                .await
            {
                Ok(out) => {
                    let status = out
                        .status()
                        .map_or("never enabled", |s| s.as_str())
                        .to_owned();
                    (
                        status == "Enabled",
                        format!("{name} ({bucket}): versioning {status}"),
                    )
                }
                Err(e) => (
                    false,
                    format!(
                        "{name} ({bucket}): cannot read versioning: {}",
                        crate::storage::s3::s3_error(name, bucket, e)
                    ),
                ),
            },
        );
        let evidence = |status: &Result<LifecycleStatus, StorageError>| match status {
            Ok(s) => (s.in_sync, format!("{name} ({bucket}): {}", s.summary())),
            Err(e) => (false, format!("{name} ({bucket}): {e}")),
        };
        lifecycles.push(match lifecycle.get(name) {
            Some(known) => evidence(known),
            None => evidence(&crate::commands::lifecycle::status(t, s3).await),
        });
        if let Some(lock) = object_lock {
            locks.push(
                match s3.client().get_object_lock_configuration().bucket(bucket).send().await {
                    Ok(out) => {
                        let enabled = out
                            .object_lock_configuration()
                            .and_then(|c| c.object_lock_enabled())
                            .is_some_and(|e| e.as_str() == "Enabled");
                        (
                            enabled,
                            format!(
                                "{name} ({bucket}): Object Lock {}; uploads retained {} days in {} mode",
                                if enabled { "enabled" } else { "not enabled" },
                                lock.days,
                                lock.mode
                            ),
                        )
                    }
                    Err(e) => (false, format!("{name} ({bucket}): Object Lock not readable: {}", crate::storage::s3::s3_error(name, bucket, e))),
                },
            );
        }
    }
    let no_s3 = |v: &mut Vec<(bool, String)>, what: &str| {
        if v.is_empty() {
            v.push((true, what.to_owned()));
        }
    };
    no_s3(&mut versioning, "no S3 target");
    no_s3(&mut lifecycles, "no S3 target");
    no_s3(&mut locks, "no target asks for Object Lock");
    checks.push(check("versioning", versioning));
    checks.push(check("lifecycle", lifecycles));
    checks.push(check("object_lock", locks));
    checks.push(check("rpo", rpo));
    if !windows.is_empty() {
        checks.push(check("recovery_window", windows));
    }
    checks.push(check("restore_test", restore_tests));
    checks.push(check("retention", slots));
    Report {
        pass: checks.iter().all(|c| c.pass),
        checks,
    }
}

/// A physical job's achieved RPO (how old the newest WAL file is that every
/// target holds) and its recovery window on each target (how far back a
/// restore reaches without a gap; a window still filling up since the first
/// base backup passes, and says so).
async fn physical(
    strata: &Strata,
    name: &str,
    job: &crate::config::JobConfig,
    window: std::time::Duration,
    now: DateTime<Utc>,
) -> (Vec<(bool, String)>, Vec<(bool, String)>) {
    use crate::commands::restore::recoverable::recoverable;
    let wanted = Duration::from_std(window).unwrap_or(Duration::MAX);
    let limit = Duration::from_std(job.rpo).unwrap_or(Duration::MAX);
    let mut rpo = Vec::new();
    let mut windows = Vec::new();
    for t in &job.targets {
        let recovered = recoverable(strata, name, t, now).await;
        rpo.push(match &recovered {
            Err(e) => (false, format!("job {name} on {t}: {e}")),
            Ok(r) => match &r.newest_archived {
                None => (false, format!("job {name} on {t}: no WAL archived")),
                Some((at, file)) => {
                    let age = now - *at;
                    (
                        age <= limit,
                        format!(
                            "job {name} on {t}: newest archived WAL {file} is {} old (achieved RPO; allowed {})",
                            crate::policy::schedule::format_age(age),
                            humantime::format_duration(job.rpo)
                        ),
                    )
                }
            },
        });
        windows.push(match recovered {
            Err(e) => (false, format!("job {name} on {t}: {e}")),
            Ok(r) => match (r.from, &r.missing) {
                (_, Some(m)) => (
                    false,
                    format!("job {name} on {t}: a gap ({m}): nothing after it is recoverable"),
                ),
                (None, None) => (false, format!("job {name} on {t}: no base backup")),
                (Some(from), None) => {
                    let reach = now - from;
                    let filling = r.older.is_empty() && reach < wanted;
                    (
                        reach >= wanted || filling,
                        format!(
                            "job {name} on {t}: any moment since {} is restorable ({} of {}{})",
                            from.to_rfc3339(),
                            crate::policy::schedule::format_age(reach),
                            humantime::format_duration(window),
                            if filling {
                                ", filling up since the first base backup"
                            } else {
                                ""
                            }
                        ),
                    )
                }
            },
        });
    }
    (rpo, windows)
}
