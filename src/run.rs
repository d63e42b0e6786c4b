//! One backup run, whoever starts it (a schedule, `POST /backups/{job}`,
//! `strata backup`): its record and audit entries in the state database, and
//! the run itself on a task of its own, so a panic becomes a failed run and a
//! run past its deadline is cancelled like a shutdown. The daemon adds what only
//! it has on top (slots, health, metrics, alerts); the CLI uses it as it is.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::app::Strata;
use crate::commands::backup::{self, BackupReport, RunControl, RunError};
use crate::pipeline::PipelineError;
use crate::state::{AuditEntry, RunRecord, StateDb};

/// Appends to the audit log (when there is a state database) and logs the entry;
/// never waits for the database.
pub fn audit(state: Option<&StateDb>, entry: AuditEntry) {
    tracing::info!(
        actor = %entry.actor,
        action = %entry.action,
        job = entry.job.as_deref(),
        run_id = entry.run_id.as_deref(),
        detail = %entry.detail,
        "audit"
    );
    if let Some(state) = state {
        state.audit(entry);
    }
}

/// A run from its start to its recorded end.
pub struct Session {
    state: Option<Arc<StateDb>>,
    actor: String,
    /// The run as recorded so far.
    pub record: RunRecord,
}

impl Session {
    /// Records the start of a run of `job` (`backup.start` in the audit log).
    pub fn open(
        state: Option<Arc<StateDb>>,
        record: RunRecord,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Self {
        let session = Self {
            state,
            actor: actor.to_owned(),
            record,
        };
        let detail = serde_json::json!({ "trigger": session.record.trigger });
        session.save("backup.start", detail, now);
        session
    }

    /// Appends an entry about this run to the audit log.
    pub fn audit(&self, action: &str, detail: Value, now: DateTime<Utc>) {
        audit(
            self.state.as_deref(),
            AuditEntry {
                at: now,
                actor: self.actor.clone(),
                action: action.to_owned(),
                job: Some(self.record.job.clone()),
                run_id: Some(self.record.id.clone()),
                detail,
            },
        );
    }

    fn save(&self, action: &str, detail: Value, now: DateTime<Utc>) {
        if let Some(state) = &self.state {
            state.save_run(&self.record);
        }
        self.audit(action, detail, now);
    }

    /// Runs the job (refresh, backup, read-back) on a task of its own: a panic
    /// becomes [`RunError::Panicked`], and past `timeout` the run is cancelled
    /// like a shutdown and fails with [`RunError::TimedOut`].
    ///
    /// # Errors
    /// What the run failed with.
    pub async fn execute(
        &self,
        strata: Arc<Strata>,
        ctl: RunControl,
        timeout: Duration,
    ) -> Result<BackupReport, RunError> {
        if ctl.cancel.is_cancelled() {
            return Err(RunError::Pipeline(PipelineError::Cancelled));
        }
        let cancel = ctl.cancel.clone();
        let name = self.record.job.clone();
        let started_at = self.record.started_at;
        let mut task = tokio::spawn(async move {
            #[cfg(debug_assertions)]
            if std::env::var("STRATA_TEST_PANIC_JOB").is_ok_and(|j| j == name) {
                panic!("injected panic (STRATA_TEST_PANIC_JOB) in a run of {name}");
            }
            backup::run_job(&strata, &name, started_at, &ctl).await
        });
        let job = self.record.job.as_str();
        let joined = tokio::select! {
            joined = &mut task => joined,
            () = tokio::time::sleep(timeout) => {
                tracing::error!(job, timeout = %humantime::format_duration(timeout), "run past its deadline: cancelling it");
                cancel.cancel();
                match tokio::time::timeout(Duration::from_secs(60), &mut task).await {
                    // It completed its last step as the deadline passed.
                    Ok(Ok(Ok(report))) => return Ok(report),
                    Ok(_) => {}
                    Err(_) => task.abort(),
                }
                return Err(RunError::TimedOut(timeout));
            }
        };
        joined.unwrap_or_else(|e| {
            let message = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned())
            } else {
                "the run's task was cancelled".to_owned()
            };
            tracing::error!(job, error = %message, "a run panicked; it is recorded as failed");
            Err(RunError::Panicked(message))
        })
    }

    /// Records how the run ended (`backup.finish`; a `refresh` entry first for a
    /// job refreshed before its backup) and logs it.
    pub fn finish(
        &mut self,
        strata: &Strata,
        result: &Result<BackupReport, RunError>,
        now: DateTime<Utc>,
    ) {
        let job = self.record.job.clone();
        if let Some(r) = strata.config().job(&job).and_then(|j| j.refresh.as_ref()) {
            let error = match result {
                Err(RunError::Refresh(e)) => Some(e.clone()),
                _ => None,
            };
            let detail =
                serde_json::json!({ "from": r.from, "ok": error.is_none(), "error": error });
            self.audit("refresh", detail, now);
        }
        self.record.finish(result, now);
        let run = &self.record;
        tracing::info!(
            job = %job,
            run_id = %run.id,
            status = run.status.as_str(),
            backup_id = run.backup_id.as_deref().unwrap_or("-"),
            raw_bytes = run.raw_bytes.unwrap_or(0),
            stored_bytes = run.stored_bytes.unwrap_or(0),
            duration_s = (now - run.started_at).to_std().unwrap_or_default().as_secs_f64(),
            error = run.error.as_deref().unwrap_or(""),
            "backup run finished"
        );
        let detail = serde_json::json!({
            "status": run.status.as_str(),
            "backup_id": run.backup_id,
            "error": run.error,
        });
        self.save("backup.finish", detail, now);
    }

    /// Waits (at most `within`) until the state database holds what this run
    /// recorded; says so when it does not.
    pub async fn sync(&self, within: Duration) {
        if let Some(state) = &self.state {
            if !state.sync(within).await {
                tracing::warn!(
                    waiting = state.outbox().0,
                    "the state database did not answer: the run's records wait in memory"
                );
            }
        }
    }
}
