//! Pruning: gathers a job's backups from every target, asks [`retention::plan`]
//! what to keep, and deletes the rest — manifest first, so a manifest never points
//! at nothing, and never an object still under Object Lock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::app::Strata;
use crate::app::UnknownJob;
use crate::catalog;
use crate::domain::manifest::Manifest;
use crate::metrics::Metrics;
use crate::policy::retention::{self, Candidate};
use crate::policy::schedule::Clock;
use crate::state::{AuditEntry, RunStatus, StateDb};
use crate::storage::{StorageError, Target};

/// Why pruning could not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{0}")]
    UnknownJob(#[from] UnknownJob),
    #[error("listing backups failed: {0}")]
    Storage(#[from] StorageError),
    #[error(
        "nothing deleted: the latest run of job '{job}' ({run_id}) ended {status}; retention waits for a successful backup"
    )]
    LatestRunNotGood {
        job: String,
        run_id: String,
        status: String,
    },
    #[error(
        "nothing deleted: the state database cannot tell whether the latest run of job '{job}' succeeded: {message}"
    )]
    StateUnknown { job: String, message: String },
    #[error("no deletion plan of job '{0}' waits for approval")]
    NoPendingPlan(String),
}

/// One copy of a backup on one target.
#[derive(Debug, Clone)]
pub struct StoredCopy {
    pub target: String,
    pub manifest_key: String,
    pub object_key: String,
    /// The cluster globals beside the dump, when the backup has them.
    pub globals_key: Option<String>,
    pub version_id: Option<String>,
}

/// A backup as seen across every target of its job.
#[derive(Debug, Clone)]
pub struct Backup {
    pub manifest: Manifest,
    pub copies: Vec<StoredCopy>,
}

/// A line of a plan: the retention decision plus where the backup lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanItem {
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
    pub targets: Vec<String>,
}

/// A job's retention plan at one moment.
#[derive(Debug, Clone)]
pub struct Plan {
    pub job: String,
    pub now: DateTime<Utc>,
    pub items: Vec<PlanItem>,
    /// Physical jobs: where the WAL the kept base backups need begins.
    pub wal_keep: Option<wal::WalKeep>,
    backups: BTreeMap<String, Backup>,
}

impl Plan {
    /// Ids of the backups the plan deletes.
    pub fn deletions(&self) -> BTreeSet<String> {
        self.items
            .iter()
            .filter(|i| !i.keep)
            .map(|i| i.backup_id.clone())
            .collect()
    }
}

/// What deleting did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub deleted: Vec<Deleted>,
    /// Copies left alone because Object Lock still protects them.
    pub locked: Vec<Locked>,
    pub failed: Vec<Failed>,
    /// Physical jobs: WAL files deleted per target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal: Vec<wal::WalPruned>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub backup_id: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Locked {
    pub backup_id: String,
    pub target: String,
    pub retain_until: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub backup_id: String,
    pub target: String,
    pub error: String,
}

/// Whether a backup counts for retention: for every target, the newest check of
/// that target (if any) passed.
pub fn is_good(manifest: &Manifest) -> bool {
    let mut newest: BTreeMap<&str, (DateTime<Utc>, bool)> = BTreeMap::new();
    for v in &manifest.verifications {
        let e = newest.entry(v.target.as_str()).or_insert((v.at, v.ok));
        if v.at >= e.0 {
            *e = (v.at, v.ok);
        }
    }
    newest.values().all(|(_, ok)| *ok)
}

/// Every backup of `job` on every one of its targets, by backup id.
///
/// # Errors
/// Unknown job, or a target cannot be listed (pruning then does nothing: a
/// partial view could make a kept backup look missing).
pub async fn gather(strata: &Strata, job: &str) -> Result<BTreeMap<String, Backup>, PruneError> {
    let cfg = strata.job(job)?;
    let mut backups: BTreeMap<String, Backup> = BTreeMap::new();
    for name in &cfg.targets {
        for entry in catalog::list(strata, name, job).await? {
            let object_key = entry.object_key();
            let version_id = entry
                .manifest
                .targets
                .iter()
                .find(|t| &t.target == name && t.key == object_key)
                .and_then(|t| t.version_id.clone());
            let copy = StoredCopy {
                target: name.clone(),
                globals_key: entry.manifest.globals_key(&entry.manifest_key),
                manifest_key: entry.manifest_key,
                object_key,
                version_id,
            };
            backups
                .entry(entry.manifest.backup_id.clone())
                .and_modify(|b| {
                    // A failed check on any copy makes the backup not good.
                    b.manifest
                        .verifications
                        .extend(entry.manifest.verifications.iter().cloned());
                    b.copies.push(copy.clone());
                })
                .or_insert_with(|| Backup {
                    manifest: entry.manifest.clone(),
                    copies: vec![copy],
                });
        }
    }
    Ok(backups)
}

/// Every job's backups (see [`gather`]), by job: one read of every manifest for
/// the daemon's periodic checks, the compliance report and the cost figures.
pub type Jobs = BTreeMap<String, Result<BTreeMap<String, Backup>, PruneError>>;

/// [`gather`] for every configured job.
pub async fn gather_jobs(strata: &Strata) -> Jobs {
    let mut out = BTreeMap::new();
    for job in strata.config().jobs.keys() {
        out.insert(job.clone(), gather(strata, job).await);
    }
    out
}

/// The retention plan of `job` at `now`.
///
/// # Errors
/// See [`gather`].
pub async fn plan(strata: &Strata, job: &str, now: DateTime<Utc>) -> Result<Plan, PruneError> {
    let backups = gather(strata, job).await?;
    let cfg = strata.job(job)?;
    let candidates: Vec<Candidate> = backups
        .values()
        .map(|b| Candidate {
            backup_id: b.manifest.backup_id.clone(),
            started_at: b.manifest.started_at,
            good: is_good(&b.manifest),
        })
        .collect();
    let mut items: Vec<PlanItem> =
        retention::plan(&cfg.retention, strata.config().timezone, &candidates, now)
            .into_iter()
            .map(|d| PlanItem {
                targets: backups[&d.backup_id]
                    .copies
                    .iter()
                    .map(|c| c.target.clone())
                    .collect(),
                backup_id: d.backup_id,
                started_at: d.started_at,
                keep: d.keep,
                reasons: d.reasons,
            })
            .collect();
    let wal_keep = cfg
        .kind
        .physical()
        .and_then(|p| wal::keep_window(&mut items, &backups, p.recovery_window, now));
    Ok(Plan {
        job: job.to_owned(),
        now,
        items,
        wal_keep,
        backups,
    })
}

/// Refuses deletions unless the job's newest finished run succeeded (no state
/// database configured: nothing to check).
///
/// # Errors
/// The latest run did not succeed, or the state database cannot say.
pub async fn check_latest_run(state: Option<&StateDb>, job: &str) -> Result<(), PruneError> {
    let Some(state) = state else { return Ok(()) };
    match state.latest_finished(job).await {
        Ok(None | Some((_, RunStatus::Success))) => Ok(()),
        Ok(Some((run_id, status))) => Err(PruneError::LatestRunNotGood {
            job: job.to_owned(),
            run_id,
            status: status.as_str().to_owned(),
        }),
        Err(e) => Err(PruneError::StateUnknown {
            job: job.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// Who is pruning and where it is recorded.
pub struct Recorder<'a> {
    pub state: Option<&'a StateDb>,
    pub metrics: Option<&'a Metrics>,
    pub actor: &'a str,
    /// Stamps the audit entries (the daemon's clock, which tests move).
    pub clock: &'a dyn Clock,
}

/// Deletes the plan's `only` backups (all its deletions when `None`) from every
/// target that holds them. Each copy: Object Lock checked first (locked copies are
/// reported, never forced), then the manifest deleted, then the object (its exact
/// version on versioned buckets). Each deletion is audited and counted.
pub async fn execute(
    strata: &Strata,
    plan: &Plan,
    only: Option<&BTreeSet<String>>,
    rec: &Recorder<'_>,
) -> Outcome {
    let mut out = Outcome::default();
    for id in plan.deletions() {
        if only.is_some_and(|o| !o.contains(&id)) {
            continue;
        }
        let backup = &plan.backups[&id];
        for copy in &backup.copies {
            let target = strata.target(&copy.target);
            match delete_copy(target.as_ref(), copy, plan.now).await {
                Ok(None) => {
                    tracing::info!(job = %plan.job, backup_id = %id, target_name = %copy.target, "retention deleted a backup");
                    if let Some(m) = rec.metrics {
                        m.retention_deleted
                            .with_label_values(&[&plan.job, &copy.target])
                            .inc();
                    }
                    record(
                        rec,
                        &plan.job,
                        "delete",
                        json_detail(&id, copy, "deleted", None),
                    )
                    .await;
                    out.deleted.push(Deleted {
                        backup_id: id.clone(),
                        target: copy.target.clone(),
                    });
                }
                Ok(Some(until)) => {
                    tracing::info!(job = %plan.job, backup_id = %id, target_name = %copy.target, retain_until = %until, "retention left a locked backup");
                    out.locked.push(Locked {
                        backup_id: id.clone(),
                        target: copy.target.clone(),
                        retain_until: until,
                    });
                }
                Err(e) => {
                    tracing::warn!(job = %plan.job, backup_id = %id, target_name = %copy.target, error = %e, "retention could not delete a backup");
                    record(
                        rec,
                        &plan.job,
                        "delete",
                        json_detail(&id, copy, "failed", Some(&e.to_string())),
                    )
                    .await;
                    out.failed.push(Failed {
                        backup_id: id.clone(),
                        target: copy.target.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
    if let Some(keep) = &plan.wal_keep {
        out.wal = wal::prune_wal(strata, &plan.job, keep).await;
        for w in &out.wal {
            if w.deleted > 0 || !w.errors.is_empty() {
                let detail = serde_json::json!({ "target": w.target, "wal_before": keep.start_lsn, "base_backup": keep.backup_id, "deleted": w.deleted, "errors": w.errors });
                record(rec, &plan.job, "delete_wal", detail).await;
            }
            out.failed.extend(w.errors.iter().map(|e| Failed {
                backup_id: "wal".into(),
                target: w.target.clone(),
                error: e.clone(),
            }));
        }
    }
    out
}

fn json_detail(
    id: &str,
    copy: &StoredCopy,
    result: &str,
    error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "backup_id": id,
        "target": copy.target,
        "key": copy.object_key,
        "result": result,
        "error": error,
    })
}

async fn record(rec: &Recorder<'_>, job: &str, action: &str, detail: serde_json::Value) {
    if let Some(state) = rec.state {
        state.audit(AuditEntry {
            at: rec.clock.now(),
            actor: rec.actor.to_owned(),
            action: action.into(),
            job: Some(job.to_owned()),
            run_id: None,
            detail,
        });
    }
}

/// Deletes one copy; `Ok(Some(until))` when Object Lock protects it.
async fn delete_copy(
    target: &dyn crate::storage::Target,
    copy: &StoredCopy,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StorageError> {
    if target.as_s3().is_some() {
        match target.head(&copy.object_key).await {
            Ok(meta) => {
                if let Some(until) = meta.retain_until.filter(|u| *u > now.max(Utc::now())) {
                    return Ok(Some(until));
                }
            }
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    target.delete(&copy.manifest_key).await?;
    target
        .delete_version(&copy.object_key, copy.version_id.as_deref())
        .await?;
    if let Some(key) = &copy.globals_key {
        target.delete(key).await?;
    }
    Ok(None)
}

/// Files beside a refused manifest that go with it: every object in its
/// directory named `{backup id}.…`, the id taken from the manifest's own key
/// (which strata listed), never from its untrusted content.
async fn beside_refused(target: &dyn Target, manifest_key: &str) -> Vec<String> {
    let Some((dir, file)) = manifest_key.rsplit_once('/') else {
        return Vec::new();
    };
    let Some(id) = file.strip_suffix(crate::domain::manifest::MANIFEST_SUFFIX) else {
        return Vec::new();
    };
    let prefix = format!("{dir}/{id}.");
    target
        .list(&prefix)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| {
            k != manifest_key
                && k.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
        })
        .collect()
}

/// `prune --force`: deletes the manifests of `job` that are refused (forged,
/// unauthenticated where required, or out of bounds) on every target, with
/// every file of the same backup id beside each.
/// Every deletion is audited. Returns (target, key, outcome) per manifest.
pub async fn purge_refused(
    strata: &Strata,
    job: &str,
    rec: &Recorder<'_>,
) -> Result<Vec<(String, String, Result<(), String>)>, PruneError> {
    let cfg = strata.job(job)?;
    let mut out = Vec::new();
    for name in &cfg.targets {
        let target = strata.target(name);
        for refused in catalog::list_all(strata, name, job).await?.refused {
            let key = refused.manifest_key;
            let beside = beside_refused(target.as_ref(), &key).await;
            let mut result = target.delete(&key).await.map_err(|e| e.to_string());
            if result.is_ok() {
                for other in beside {
                    if let Err(e) = target.delete(&other).await {
                        result = Err(e.to_string());
                    }
                }
            }
            record(
                rec,
                job,
                "delete.refused",
                serde_json::json!({ "target": name, "key": key, "why": refused.error.to_string(), "ok": result.is_ok(), "error": result.as_ref().err() }),
            )
            .await;
            out.push((name.clone(), key, result));
        }
    }
    Ok(out)
}

/// Runs retention for a job after one of its backups succeeded: deletes at once
/// (`prune: automatic`) or records the plan for approval. Failures are logged;
/// they never fail the backup. `now` is the daemon's clock.
pub async fn after_backup(strata: &Strata, job: &str, rec: &Recorder<'_>, now: DateTime<Utc>) {
    let plan = match plan(strata, job, now).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(job, error = %e, "retention skipped");
            return;
        }
    };
    if plan.deletions().is_empty() && plan.wal_keep.is_none() {
        return;
    }
    let approval = strata
        .job(job)
        .is_ok_and(|j| j.prune == crate::config::PruneMode::Approval);
    // WAL below the oldest kept base backup needs no approval: nothing kept
    // can use it.
    if approval && !plan.deletions().is_empty() {
        propose(rec, &plan).await;
    } else {
        let out = execute(strata, &plan, None, rec).await;
        tracing::info!(
            job,
            deleted = out.deleted.len(),
            locked = out.locked.len(),
            failed = out.failed.len(),
            "retention done"
        );
    }
}

/// Records a plan that waits for approval (and audits it); returns its id.
pub async fn propose(rec: &Recorder<'_>, plan: &Plan) -> Option<i64> {
    let value = serde_json::to_value(&plan.items).expect("serialisable");
    let Some(state) = rec.state else {
        tracing::warn!(job = %plan.job, "prune: approval needs a state database to record the plan; nothing deleted");
        return None;
    };
    match state.save_prune_plan(&plan.job, rec.actor, &value).await {
        Ok(id) => {
            let deletions: Vec<String> = plan.deletions().into_iter().collect();
            tracing::info!(job = %plan.job, plan_id = id, deletions = deletions.len(), "retention plan waits for approval");
            record(
                rec,
                &plan.job,
                "prune-plan",
                serde_json::json!({ "plan_id": id, "delete": deletions }),
            )
            .await;
            Some(id)
        }
        Err(e) => {
            tracing::warn!(job = %plan.job, error = %e, "could not record the retention plan; nothing deleted");
            None
        }
    }
}

/// Carries out the job's pending plan: only backups that both the recorded plan
/// and a fresh plan delete, so an approval can never remove what retention now
/// needs (a newer failure, a backup that became the newest good one).
///
/// # Errors
/// No pending plan, or the checks of [`check_latest_run`] and [`plan`] fail.
pub async fn approve(
    strata: &Strata,
    job: &str,
    state: &StateDb,
    rec: &Recorder<'_>,
    now: DateTime<Utc>,
) -> Result<(i64, Outcome), PruneError> {
    strata.job(job)?;
    let (id, recorded) = state
        .pending_prune_plan(job)
        .await
        .map_err(|e| PruneError::StateUnknown {
            job: job.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| PruneError::NoPendingPlan(job.to_owned()))?;
    check_latest_run(Some(state), job).await?;
    let recorded: Vec<PlanItem> = serde_json::from_value(recorded).unwrap_or_default();
    let approved: BTreeSet<String> = recorded
        .into_iter()
        .filter(|i| !i.keep)
        .map(|i| i.backup_id)
        .collect();
    let fresh = plan(strata, job, now).await?;
    if !state
        .approve_prune_plan(id, rec.actor)
        .await
        .map_err(|e| PruneError::StateUnknown {
            job: job.to_owned(),
            message: e.to_string(),
        })?
    {
        return Err(PruneError::NoPendingPlan(job.to_owned()));
    }
    record(
        rec,
        job,
        "prune-approve",
        serde_json::json!({ "plan_id": id }),
    )
    .await;
    let out = execute(strata, &fresh, Some(&approved), rec).await;
    Ok((id, out))
}

#[cfg(test)]
mod refused_tests {
    use super::beside_refused;
    use crate::storage::local::LocalTarget;

    #[tokio::test]
    async fn the_files_of_a_refused_manifests_backup_id_go_with_it_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("p/app/2025/01/01");
        std::fs::create_dir_all(&day).unwrap();
        for name in [
            "app_backup_20250101_030000.manifest.json",
            "app_backup_20250101_030000.sql.gz.enc",
            "app_backup_20250101_030000.globals.sql.gz.enc",
            "app_backup_20250101_030000-2.sql.gz.enc",
            "app_backup_20250101_0300.sql.gz",
        ] {
            std::fs::write(day.join(name), "x").unwrap();
        }
        std::fs::write(dir.path().join("p/app/victim"), "x").unwrap();
        let target = LocalTarget::new("local", dir.path());
        let mut got = beside_refused(
            &target,
            "p/app/2025/01/01/app_backup_20250101_030000.manifest.json",
        )
        .await;
        got.sort();
        assert_eq!(
            got,
            vec![
                "p/app/2025/01/01/app_backup_20250101_030000.globals.sql.gz.enc",
                "p/app/2025/01/01/app_backup_20250101_030000.sql.gz.enc",
            ]
        );
        assert!(
            beside_refused(&target, "no-directory.manifest.json")
                .await
                .is_empty()
        );
        assert!(
            beside_refused(&target, "p/app/2025/01/01/not-a-manifest")
                .await
                .is_empty()
        );
    }
}

#[cfg(test)]
mod tests;
pub mod wal;
