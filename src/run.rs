//! One backup run, whoever starts it (a schedule, `POST /backups/{job}`,
//! `strata backup`): its record and audit entries in the state database, and
//! the run itself on a task of its own, so a panic becomes a failed run and a
//! run past its deadline is cancelled like a shutdown. Restore tests (scheduled,
//! or `strata verify --restore-into`) run and are recorded the same way; a
//! job's refresh is a step of its run. The daemon adds what only it has on top
//! (slots, health, metrics, alerts); the CLI uses it as it is.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::app::Strata;
use crate::commands::backup::{self, BackupReport, RunControl, RunError};
use crate::domain::RestoreTest;
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

/// How work run by [`on_own_task`] ended.
#[derive(Debug)]
pub enum Ended<T> {
    /// Before its deadline.
    Done(T),
    /// Within its grace after being cancelled at its deadline.
    Late(T),
    /// Cancelled at its deadline and aborted when its grace ran out.
    TimedOut,
    /// It panicked; the panic's message.
    Panicked(String),
}

/// Runs `work` on a task of its own: a panic is caught and reported instead of
/// taking the caller down, and past `timeout` `cancel` is cancelled (as a
/// shutdown would) and the work gets `grace` to stop before it is aborted.
pub async fn on_own_task<T: Send + 'static>(
    job: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    grace: Duration,
    work: impl Future<Output = T> + Send + 'static,
) -> Ended<T> {
    let mut task = tokio::spawn(work);
    let joined = tokio::select! {
        joined = &mut task => joined,
        () = tokio::time::sleep(timeout) => {
            tracing::error!(job, timeout = %humantime::format_duration(timeout), "past its deadline: cancelling it");
            cancel.cancel();
            match tokio::time::timeout(grace, &mut task).await {
                Ok(Ok(done)) => return Ended::Late(done),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    task.abort();
                    return Ended::TimedOut;
                }
            }
        }
    };
    match joined {
        Ok(done) => Ended::Done(done),
        Err(e) => {
            let message = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned())
            } else {
                "the task was cancelled".to_owned()
            };
            tracing::error!(job, error = %message, "a run panicked; it is recorded as failed");
            Ended::Panicked(message)
        }
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
        let run = async move {
            #[cfg(debug_assertions)]
            if std::env::var("STRATA_TEST_PANIC_JOB").is_ok_and(|j| j == name) {
                panic!("injected panic (STRATA_TEST_PANIC_JOB) in a run of {name}");
            }
            backup::run_job(&strata, &name, started_at, &ctl).await
        };
        // A minute to close uploads cleanly after the cancellation.
        let grace = Duration::from_secs(60);
        match on_own_task(&self.record.job, timeout, &cancel, grace, run).await {
            Ended::Done(result) => result,
            // It completed its last step as the deadline passed.
            Ended::Late(Ok(report)) => Ok(report),
            Ended::Late(Err(_)) | Ended::TimedOut => Err(RunError::TimedOut(timeout)),
            Ended::Panicked(message) => Err(RunError::Panicked(message)),
        }
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

/// Runs `job`'s restore test (a logical job's newest readable backup into a
/// scratch database on `verify.restore_into`; a physical job's newest base
/// backup and WAL recovered into a scratch data directory under
/// `verify.scratch_dir`; checked, removed) on a task of its own under the
/// job's `timeout`, as a run is: a panic or the deadline is a failed test
/// whose scratch database or directory is removed all the same. The test is
/// recorded ([`record_restore_test`]). `None` when the job has nowhere to
/// restore to.
pub async fn restore_test(
    strata: Arc<Strata>,
    state: Option<&StateDb>,
    job: &str,
    actor: &str,
    host: &str,
    now: DateTime<Utc>,
) -> Option<RestoreTest> {
    let cfg = strata.config().job(job)?;
    let into = Scratch::for_job(cfg)?;
    let (timeout, sql) = (cfg.timeout, cfg.verify.sql.clone());
    let clock = std::time::Instant::now();
    let work = {
        let (job, into) = (job.to_owned(), into.clone());
        async move {
            #[cfg(debug_assertions)]
            if std::env::var("STRATA_TEST_PANIC_RESTORE_TEST").is_ok_and(|j| j == job) {
                panic!(
                    "injected panic (STRATA_TEST_PANIC_RESTORE_TEST) in a restore test of {job}"
                );
            }
            match &into {
                Scratch::Database(server, name) => {
                    crate::commands::restore::restore_test(&strata, &job, server, name, &sql, now)
                        .await
                }
                Scratch::Directory(dir) => {
                    crate::commands::restore::recovery_test::recovery_test(
                        &strata, &job, dir, &sql, now,
                    )
                    .await
                }
            }
        }
    };
    // Nothing in a restore test watches a cancellation: at the deadline it is
    // aborted at once, and its scratch database dropped below.
    let never = CancellationToken::new();
    let why = match on_own_task(job, timeout, &never, Duration::ZERO, work).await {
        Ended::Done(test) | Ended::Late(test) => Ok(test),
        Ended::TimedOut => Err(format!(
            "the restore test ran past the job's timeout ({})",
            humantime::format_duration(timeout)
        )),
        Ended::Panicked(message) => Err(format!("the restore test panicked: {message}")),
    };
    let test = match why {
        Ok(test) => test,
        Err(error) => {
            into.remove(job).await;
            RestoreTest {
                job: job.to_owned(),
                backup_id: None,
                target: None,
                started_at: now,
                seconds: clock.elapsed().as_secs_f64(),
                ok: false,
                error: Some(error),
                tables: 0,
                rows: 0,
            }
        }
    };
    tracing::info!(
        job,
        ok = test.ok,
        backup_id = test.backup_id.as_deref().unwrap_or("-"),
        seconds = test.seconds,
        error = test.error.as_deref().unwrap_or(""),
        "restore test finished"
    );
    record_restore_test(state, &test, actor, host).await;
    Some(test)
}

/// Where a restore test restores to.
#[derive(Debug, Clone)]
enum Scratch {
    /// A database of this name on this server (logical jobs).
    Database(Box<crate::pg::DbUrl>, String),
    /// This new data directory (physical jobs).
    Directory(std::path::PathBuf),
}

impl Scratch {
    /// A new scratch place for `job`'s restore test: a logical job restores
    /// into a server, a physical one recovers into a data directory.
    fn for_job(job: &crate::config::JobConfig) -> Option<Self> {
        match (&job.verify.restore_into, &job.verify.scratch_dir) {
            (Some(server), _) if !job.kind.is_physical() => Some(Scratch::Database(
                Box::new(server.clone()),
                crate::commands::restore::scratch_name(),
            )),
            (_, Some(dir)) if job.kind.is_physical() => Some(Scratch::Directory(
                dir.join(crate::commands::restore::scratch_name()),
            )),
            _ => None,
        }
    }

    /// Removes what a test that did not end on its own (a panic, its
    /// deadline) left behind.
    async fn remove(&self, job: &str) {
        match self {
            Self::Database(server, scratch) => {
                let dropped = crate::commands::restore::drop_scratch(server, scratch);
                if tokio::time::timeout(Duration::from_secs(10), dropped)
                    .await
                    .is_err()
                {
                    tracing::warn!(job, database = %scratch, "the server did not answer: a restore test's database may be left behind");
                }
            }
            Self::Directory(dir) => {
                crate::commands::restore::recovery_test::remove_scratch(dir).await;
            }
        }
    }
}

/// Records a restore test in the state database (its measured time is the
/// job's RTO in `strata status`) and the audit log (`restore_test`).
pub async fn record_restore_test(
    state: Option<&StateDb>,
    test: &RestoreTest,
    actor: &str,
    host: &str,
) {
    if let Some(state) = state {
        if let Err(e) = state.save_restore_test(test, host).await {
            tracing::warn!(job = %test.job, error = %e, "restore test not recorded in the state database");
        }
    }
    audit(
        state,
        AuditEntry {
            at: test.finished_at(),
            actor: actor.to_owned(),
            action: "restore_test".to_owned(),
            job: Some(test.job.clone()),
            run_id: None,
            detail: serde_json::to_value(test).unwrap_or_default(),
        },
    );
}
