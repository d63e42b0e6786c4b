//! Verification: re-reading stored copies (hash, authentication, size, the
//! globals beside them), restoring into a scratch database, and the scheduled
//! restore tests that measure the real RTO.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

pub use crate::domain::RestoreTest;

use super::thaw::{ThawOptions, ensure_readable};
use super::{RestoreError, RestoreOptions, drop_database, find, open_verified};
use crate::app::Strata;
use crate::catalog::{self, Entry};
use crate::domain::Outcome;
use crate::domain::manifest::{Verification, manifest_key_beside};
use crate::pg::DbUrl;
use crate::pipeline::progress::Progress;
use crate::storage::{StorageError, Target};

/// Outcome of verifying one backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub backup_id: String,
    /// Per target: how reading its copy back went.
    pub targets: Vec<(String, Outcome)>,
    /// Copies (or the restore test) not checked because they are still thawing.
    pub thawing: Vec<(String, String)>,
    /// The scratch restore (with `restore_into`).
    pub restore: Option<Outcome>,
    /// The scratch restore as a restore test (when one ran): its measured RTO.
    pub restore_test: Option<RestoreTest>,
    /// Physical jobs: per target of the job, whether the WAL archive is
    /// gapless from the oldest base backup on to the newest segment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal: Vec<(String, Outcome)>,
}

impl VerifyReport {
    /// Every check passed.
    pub fn ok(&self) -> bool {
        self.targets.iter().all(|(_, r)| r.is_ok())
            && self.wal.iter().all(|(_, r)| r.is_ok())
            && self.restore.as_ref().is_none_or(Outcome::is_ok)
    }
}

/// Re-reads a backup from every target that holds it (hash, authentication,
/// decompressed size) and, with `restore_into`, restores it into a scratch
/// database on that server, checks row counts and drops it. The checks are
/// recorded as made at `now` (the caller's clock).
///
/// # Errors
/// The backup cannot be found; individual check failures are in the report.
pub async fn verify(
    strata: &Strata,
    job: &str,
    which: &str,
    restore_into: Option<&DbUrl>,
    now: DateTime<Utc>,
) -> Result<VerifyReport, RestoreError> {
    verify_with(
        strata,
        job,
        which,
        restore_into,
        &ThawOptions::default(),
        None,
        now,
    )
    .await
}

/// [`verify`], thawing archived copies as `thaw` says. Copies still thawing are
/// not checked and not recorded; [`VerifyReport::thawing`] lists them. Stored
/// bytes read go to `progress`.
///
/// # Errors
/// See [`verify`].
// Long on purpose: one pass per stored copy, then the optional restore into a scratch database, recorded together.
pub async fn verify_with(
    strata: &Strata,
    job: &str,
    which: &str,
    restore_into: Option<&DbUrl>,
    thaw: &ThawOptions,
    progress: Option<Arc<Progress>>,
    now: DateTime<Utc>,
) -> Result<VerifyReport, RestoreError> {
    let physical = strata.job(job)?.kind.is_physical();
    if physical && restore_into.is_some() {
        return Err(RestoreError::Physical(format!(
            "job '{job}' is physical: --restore-into loads dumps; prove a base backup with `strata restore {job} --into-datadir DIR --to latest --start --port N`"
        )));
    }
    let (_, entry, _) = find(strata, job, which, None).await?;
    if let Some(p) = &progress {
        let reads = entry.manifest.targets.len() + usize::from(restore_into.is_some());
        p.set_total(entry.manifest.stored_bytes * reads as u64);
    }
    let mut targets = Vec::new();
    let mut thawing = Vec::new();
    for record in &entry.manifest.targets {
        if !strata.config().targets.contains_key(&record.target) {
            continue;
        }
        let target = strata.target(&record.target);
        match ensure_readable(target.as_ref(), &record.key, thaw).await {
            Err(e) if e.is_thawing() => {
                thawing.push((record.target.clone(), e.to_string()));
                continue;
            }
            Err(e) => {
                targets.push((record.target.clone(), Outcome::Failed(e.to_string())));
                continue;
            }
            Ok(()) => {}
        }
        if let Some(p) = &progress {
            p.set_detail(format!("reading the copy on {}", record.target));
        }
        let result = read_back(
            strata,
            target.as_ref(),
            &entry,
            &record.key,
            progress.clone(),
        )
        .await;
        targets.push((record.target.clone(), Outcome::of(&result)));
    }
    let mut restore_test = None;
    let restore = match restore_into {
        None => None,
        Some(server) => {
            let started_at = now;
            let clock = Instant::now();
            let scratch = format!(
                "strata_verify_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let dest = server.with_dbname(&scratch);
            let opts = RestoreOptions {
                backup: entry.manifest.backup_id.clone(),
                thaw: thaw.clone(),
                progress: progress.clone(),
                ..RestoreOptions::default()
            };
            let result = super::restore(strata, job, &dest, &opts).await;
            if let Ok(report) = &result {
                clean_up(server, &scratch, report).await;
            }
            if !matches!(&result, Err(e) if e.is_thawing()) {
                restore_test = Some(RestoreTest {
                    job: job.to_owned(),
                    backup_id: Some(entry.manifest.backup_id.clone()),
                    target: result.as_ref().ok().map(|r| r.target.clone()),
                    started_at,
                    seconds: clock.elapsed().as_secs_f64(),
                    ok: result.is_ok(),
                    error: result.as_ref().err().map(ToString::to_string),
                    tables: entry.manifest.tables.len(),
                    rows: entry.manifest.total_rows(),
                });
            }
            match result {
                Err(e) if e.is_thawing() => {
                    thawing.push(("restore".into(), e.to_string()));
                    None
                }
                other => Some(Outcome::of(&other)),
            }
        }
    };
    let wal = if physical {
        wal_continuity(strata, job, now).await?
    } else {
        Vec::new()
    };
    let report = VerifyReport {
        backup_id: entry.manifest.backup_id.clone(),
        restore_test,
        targets,
        thawing,
        restore,
        wal,
    };
    record_verification(strata, &entry, &report, now).await;
    Ok(report)
}

/// Per target of a physical job: the archive is gapless from the base backup
/// the recovery window starts from to the newest segment (along the
/// timelines recovery walks), and every older base backup has the WAL of its
/// own start..stop.
pub async fn wal_continuity(
    strata: &Strata,
    job: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Outcome)>, RestoreError> {
    let mut out = Vec::new();
    for target in &strata.job(job)?.targets {
        let outcome = match super::recoverable::recoverable(strata, job, target, now).await {
            Err(e) => Outcome::Failed(e.to_string()),
            Ok(r) => {
                let mut problems: Vec<String> = r
                    .older
                    .iter()
                    .filter_map(|(id, m)| {
                        m.as_ref().map(|m| {
                            format!("base backup {id} lacks WAL segment {m} of its own start..stop")
                        })
                    })
                    .collect();
                match (&r.missing, &r.oldest_backup) {
                    (Some(m), Some(b)) => problems.insert(
                        0,
                        if crate::domain::wal::WalFile::parse(m).is_ok() {
                            format!(
                                "WAL segment {m} is missing (needed from base backup {b} on): recovery past it is impossible"
                            )
                        } else {
                            format!("recovery from base backup {b}: {m}")
                        },
                    ),
                    (_, None) => problems.insert(0, "no base backup here".into()),
                    (None, Some(_)) => {}
                }
                if problems.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::Failed(problems.join("; "))
                }
            }
        };
        out.push((target.clone(), outcome));
    }
    Ok(out)
}

/// Appends the results to the manifest on every target that holds the backup. A
/// failure to record is logged; it does not change the verdict.
async fn record_verification(
    strata: &Strata,
    entry: &Entry,
    report: &VerifyReport,
    now: DateTime<Utc>,
) {
    let mut results: Vec<Verification> = report
        .targets
        .iter()
        .map(|(target, outcome)| Verification {
            at: now,
            kind: "read_back".into(),
            target: target.clone(),
            ok: outcome.is_ok(),
            detail: outcome.to_string(),
        })
        .collect();
    if let Some(outcome) = &report.restore {
        results.push(Verification {
            at: now,
            kind: "restore".into(),
            target: String::new(),
            ok: outcome.is_ok(),
            detail: outcome.to_string(),
        });
    }
    for record in &entry.manifest.targets {
        if !strata.config().targets.contains_key(&record.target) {
            continue;
        }
        let target = strata.target(&record.target);
        let key = manifest_key_beside(&record.key, &entry.manifest.backup_id);
        let updated = async {
            let bytes = crate::storage::read_all(target.as_ref(), &key).await?;
            let config = strata.config();
            let keys = config.encryption.as_ref().map(|e| e.keyring.as_ref());
            // Only a manifest that opens is rewritten (a forged one stays as
            // found, for the operator to see).
            let (mut manifest, _) =
                crate::domain::manifest::open(&bytes, keys, config.require_authenticated_manifests)
                    .map_err(|e| StorageError::S3 {
                        target: record.target.clone(),
                        key: key.clone(),
                        message: format!("manifest refused: {e}"),
                    })?;
            manifest.verifications.extend(results.iter().cloned());
            let sealed = crate::domain::manifest::seal(&manifest, keys.map(|k| k.active()));
            target.put_small(&key, sealed.into()).await
        }
        .await;
        if let Err(e) = updated {
            tracing::warn!(target_name = %record.target, error = %e, "could not record the verification in the manifest");
        }
    }
}

async fn read_back(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    object_key: &str,
    progress: Option<Arc<Progress>>,
) -> Result<(), RestoreError> {
    if entry.manifest.globals.is_some() {
        let key = manifest_key_beside(object_key, &entry.manifest.backup_id);
        super::read_globals(strata, target, entry, &key, &ThawOptions::default()).await?;
    }
    let (reader, check) = open_verified(strata, target, entry, object_key, progress).await?;
    // Decompression happens inside the reader: on a thread of its own.
    let mut from = tokio_util::io::SyncIoBridge::new(reader);
    let copied = crate::pipeline::cpu::thread("read-back", move || {
        std::io::copy(&mut from, &mut std::io::sink())
    })
    .await
    .map_err(|e| RestoreError::Internal(e.to_string()))?;
    check
        .await
        .map_err(|e| RestoreError::Internal(format!("the verification task failed: {e}")))??;
    let n = copied.map_err(|e| RestoreError::Tool {
        tool: "decompress".into(),
        message: e.to_string(),
    })?;
    if n != entry.manifest.raw_bytes {
        return Err(RestoreError::RawSize {
            expected: entry.manifest.raw_bytes,
            actual: n,
        });
    }
    Ok(())
}

/// The newest backup of `job` that can be read right now (not in an archive tier
/// or already thawed), and the target to read it from.
///
/// # Errors
/// No target can be listed, or nothing readable is found.
pub async fn newest_readable(
    strata: &Strata,
    job: &str,
) -> Result<(Arc<dyn Target>, Entry), RestoreError> {
    let cfg = strata.job(job)?;
    let mut all: Vec<(Arc<dyn Target>, Entry)> = Vec::new();
    for name in &cfg.targets {
        let target = strata.target(name);
        match catalog::list(strata, name, job).await {
            Ok(entries) => all.extend(entries.into_iter().map(|e| (target.clone(), e))),
            Err(e) => tracing::warn!(target_name = %name, error = %e, "cannot list target"),
        }
    }
    // Newest first; at equal times local disk (listed first) wins.
    all.sort_by_key(|e| std::cmp::Reverse(e.1.started_at()));
    for (target, entry) in all {
        if target.as_s3().is_some() {
            match target.head(&entry.object_key()).await {
                Ok(meta) if meta.thaw.readable() => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(target_name = target.name(), error = %e, "skipping an unreadable copy");
                    continue;
                }
            }
        }
        return Ok((target, entry));
    }
    Err(RestoreError::NotFound {
        job: job.to_owned(),
        which: "readable backup".into(),
        searched: cfg.targets.join(", "),
        refused: String::new(),
    })
}

/// Restores the newest readable backup of `job` into a fresh, uniquely named
/// database on `server`, checks every table's row count against the manifest,
/// runs the `sql` assertions (each must succeed, and when it returns a row its
/// first column must not be false), records the result in the backup's
/// manifests, and drops the database. `scratch` names the database (from
/// [`scratch_name`]); `started_at` is the caller's clock.
pub async fn restore_test(
    strata: &Strata,
    job: &str,
    server: &DbUrl,
    scratch: &str,
    sql: &[String],
    started_at: DateTime<Utc>,
) -> RestoreTest {
    let clock = Instant::now();
    let mut test = RestoreTest::new(job, started_at);
    let (target, entry) = match newest_readable(strata, job).await {
        Ok(found) => found,
        Err(e) => {
            test.error = Some(e.to_string());
            return test;
        }
    };
    test.backup_id = Some(entry.manifest.backup_id.clone());
    test.target = Some(target.name().to_owned());
    test.tables = entry.manifest.tables.len();
    test.rows = entry.manifest.total_rows();
    let dest = server.with_dbname(scratch);
    let opts = RestoreOptions {
        backup: entry.manifest.backup_id.clone(),
        from: Some(target.name().to_owned()),
        ..RestoreOptions::default()
    };
    let restored = super::restore(strata, job, &dest, &opts).await;
    let result = match &restored {
        Ok(_) => run_assertions(&dest, sql).await,
        Err(_) => Ok(()),
    };
    test.seconds = clock.elapsed().as_secs_f64();
    let result = match restored {
        Ok(report) => {
            clean_up(server, scratch, &report).await;
            result
        }
        Err(e) => Err(e),
    };
    test.ok = result.is_ok();
    test.error = result.err().map(|e| e.to_string());
    record_verification(strata, &entry, &restore_report(&test), test.finished_at()).await;
    test
}

/// A restore test's verdict as a verification of the backup it restored.
fn restore_report(test: &RestoreTest) -> VerifyReport {
    VerifyReport {
        backup_id: test.backup_id.clone().unwrap_or_default(),
        targets: Vec::new(),
        thawing: Vec::new(),
        restore: Some(test.error.clone().map_or(Outcome::Ok, Outcome::Failed)),
        restore_test: None,
        wal: Vec::new(),
    }
}

/// Records a restore test's verdict in the manifests of the backup it
/// restored (the compliance report reads restore tests from there).
pub(super) async fn record_restore(strata: &Strata, test: &RestoreTest) {
    let Some(id) = &test.backup_id else { return };
    let Ok((_, entry, _)) = find(strata, &test.job, id, None).await else {
        return;
    };
    record_verification(strata, &entry, &restore_report(test), test.finished_at()).await;
}

/// A fresh, unique name for a restore test's database.
pub fn scratch_name() -> String {
    format!(
        "strata_restore_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Drops `scratch` and the restore's own scratch database beside it (named
/// after it), for a restore test that did not end on its own (a panic, its
/// deadline). Best effort: logged when the server cannot be reached.
pub async fn drop_scratch(server: &DbUrl, scratch: &str) {
    let admin_url = server.with_dbname("postgres");
    let Ok(admin) = admin_url.connect().await else {
        tracing::warn!(
            database = scratch,
            "could not reach the server to drop a restore test's database"
        );
        return;
    };
    let names = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&scratch],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in names {
        drop_database(&admin, &admin_url, &name).await;
    }
}

/// Drops a scratch restore and the roles and tablespaces it created, so a
/// verification leaves the server as it found it.
async fn clean_up(server: &DbUrl, scratch: &str, report: &super::RestoreReport) {
    let admin_url = server.with_dbname("postgres");
    if let Ok(admin) = admin_url.connect().await {
        drop_database(&admin, &admin_url, scratch).await;
        super::database::undo_globals(
            &admin,
            &admin_url,
            &report.roles_created,
            &report.tablespaces_created,
        )
        .await;
    }
}

pub(super) async fn run_assertions(dest: &DbUrl, sql: &[String]) -> Result<(), RestoreError> {
    if sql.is_empty() {
        return Ok(());
    }
    let client = dest.connect().await?;
    for (i, stmt) in sql.iter().enumerate() {
        let fail = |message: String| RestoreError::Tool {
            tool: format!("verify.sql[{i}]"),
            message,
        };
        let rows = client
            .simple_query(stmt)
            .await
            .map_err(|e| fail(dest.query_error(&e).to_string()))?;
        let first = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        });
        if let Some(Some(v)) = first {
            if v == "f" || v == "false" {
                return Err(fail(format!("assertion returned false: {stmt}")));
            }
        }
    }
    Ok(())
}

/// Re-reads a just-written backup from every target that holds it (hash,
/// decryption, size) and records the checks in its manifests; returns the
/// targets whose copy failed, with the reason.
pub async fn read_back_new(
    strata: &Strata,
    job: &str,
    backup_id: &str,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    match verify(strata, job, backup_id, None, now).await {
        Ok(report) => report
            .targets
            .into_iter()
            .filter(|(_, r)| !r.is_ok())
            .map(|(t, r)| (t, format!("read-back failed: {r}")))
            .collect(),
        Err(e) => vec![("*".into(), format!("read-back failed: {e}"))],
    }
}
