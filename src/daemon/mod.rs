//! The long-running service: schedules, one run per job at a time (in this
//! process and, through the state database, across processes), run bookkeeping
//! (state database, metrics, health, audit), start-up cleanup and graceful stop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::{Alert, Alerter, Kind};
use crate::app::Strata;
use crate::catalog;
use crate::commands::prune;
use crate::commands::restore::RestoreTest;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::schedule::{self, Clock};
use crate::run::Session;
use crate::state::{AuditEntry, JobLock, RunRecord, RunStatus, StateDb};

/// Runs kept in memory for `GET /runs/{id}` when the state database is down.
const RECENT_RUNS: usize = 500;
/// Longest wait for a job's cross-process lock when a run is started.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for one start-up step on one target (clean-up, history).
const STARTUP_STEP: Duration = Duration::from_secs(60);

/// Locks a mutex even when a thread panicked holding it: the daemon's maps
/// stay usable after a panic in one run.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("unknown job '{0}'")]
    UnknownJob(String),
    #[error("a backup of job '{0}' is already running")]
    AlreadyRunning(String),
    #[error("the daemon is stopping")]
    Stopping,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("token file {path}: {message}")]
    Token { path: String, message: String },
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Alerts(#[from] crate::alerts::AlertError),
}

/// What `/health` shows per job, kept in memory so health checks cost nothing.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobHealth {
    pub last_success: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub last_run_id: Option<String>,
    pub last_error: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub running: bool,
    /// Waiting for a free slot (`daemon.max_concurrent_runs`).
    pub queued: bool,
    #[serde(skip)]
    pub last_stored_bytes: Option<u64>,
    /// The newest backup's raw size: the estimate for the next one's progress.
    #[serde(skip)]
    pub last_raw_bytes: Option<u64>,
}

/// Results of the periodic checks (lifecycle drift, storage cost, compliance),
/// shown in `/health` without costing a request anything.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Checks {
    pub checked_at: Option<DateTime<Utc>>,
    /// Per S3 target: rules in place, or the drift.
    pub lifecycle: BTreeMap<String, String>,
    pub usd_monthly: Option<f64>,
    pub projected_usd_monthly: Option<f64>,
    /// Compliance checks that fail.
    pub compliance_failing: Vec<String>,
}

struct Running {
    cancel: CancellationToken,
    progress: Arc<crate::pipeline::progress::Progress>,
    /// Held until the entry goes: the job's cross-process lock.
    lock: Option<JobLock>,
}

/// Releases a job when its run ends however it ends (finished, panicked,
/// cancelled): the entry goes (and with it the cross-process lock), health
/// and metrics stop saying it runs.
struct RunGuard {
    daemon: Arc<Daemon>,
    job: String,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let d = &self.daemon;
        if let Some(h) = lock(&d.health).get_mut(&self.job) {
            h.running = false;
            h.queued = false;
        }
        d.metrics.running.with_label_values(&[&self.job]).set(0);
        d.metrics.queued.with_label_values(&[&self.job]).set(0);
        lock(&d.running).remove(&self.job);
    }
}

/// SHA-256 of a bearer token; compared in constant time.
pub type TokenHash = [u8; 32];

/// The daemon and everything its API and schedules share.
pub struct Daemon {
    pub strata: Arc<Strata>,
    pub state: Option<Arc<StateDb>>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub host: String,
    pub api_token: Option<TokenHash>,
    pub admin_token: Option<TokenHash>,
    pub alerter: Alerter,
    health: Mutex<BTreeMap<String, JobHealth>>,
    restore_tests: Mutex<BTreeMap<String, RestoreTest>>,
    checks: Mutex<Checks>,
    /// Wakes the periodic checks early (after a run changed what is stored).
    recheck: tokio::sync::Notify,
    recent: Mutex<(VecDeque<String>, HashMap<String, RunRecord>)>,
    running: Mutex<HashMap<String, Running>>,
    /// Runs at once across all jobs (`daemon.max_concurrent_runs`); FIFO.
    slots: Arc<tokio::sync::Semaphore>,
    /// Start-up work (clean-up, history) is done and the schedules run.
    started: std::sync::atomic::AtomicBool,
    tasks: TaskTracker,
    /// The main runtime: backups run here even when the API (on its own thread)
    /// starts them.
    runtime: tokio::runtime::Handle,
    stopping: CancellationToken,
}

fn read_token(path: &std::path::Path) -> Result<TokenHash, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |message: String| DaemonError::Token {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "readable by group/others (mode {mode:04o}); run `chmod 600` on it"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    Ok(digest(&SHA256, token.as_bytes())
        .as_ref()
        .try_into()
        .expect("32 bytes"))
}

/// Waits for SIGTERM or SIGINT.
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

impl Daemon {
    /// Builds the daemon: target clients, state database (migrated), tokens.
    ///
    /// # Errors
    /// A token file is missing, unreadable or too open.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Self>, DaemonError> {
        let http = config.http.clone();
        let api_token = http
            .as_ref()
            .and_then(|h| h.token_file.as_deref())
            .map(read_token)
            .transpose()?;
        let admin_token = http
            .as_ref()
            .and_then(|h| h.admin_token_file.as_deref())
            .map(read_token)
            .transpose()?;
        // Connects in the background: a state database that does not answer
        // never holds the daemon up.
        let state = config.state_url.clone().map(StateDb::open);
        let max_concurrent_runs = config.daemon.max_concurrent_runs;
        let host = crate::state::host_id();
        let health = config
            .jobs
            .keys()
            .map(|j| (j.clone(), JobHealth::default()))
            .collect();
        let alerter = Alerter::from_config(&config.alerts)?.with_clock(clock.clone());
        let metrics = Metrics::new();
        metrics.init(&config);
        Ok(Arc::new(Self {
            alerter,
            restore_tests: Mutex::default(),
            strata: Arc::new(Strata::build(config).await),
            state,
            metrics,
            clock,
            host,
            api_token,
            admin_token,
            health: Mutex::new(health),
            checks: Mutex::default(),
            recheck: tokio::sync::Notify::new(),
            recent: Mutex::default(),
            running: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent_runs)),
            started: std::sync::atomic::AtomicBool::new(false),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            stopping: CancellationToken::new(),
        }))
    }

    /// Whether the start-up work (clean-up, reading the history) is done.
    pub fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Per-job health, for `/health`.
    pub fn health(&self) -> BTreeMap<String, JobHealth> {
        lock(&self.health).clone()
    }

    /// Progress of the backups running now, by job (a run that finished its
    /// backup and is only pruning or recording shows none).
    pub fn progress(&self) -> BTreeMap<String, crate::pipeline::progress::Snapshot> {
        let health = self.health();
        self.running
            .lock()
            .expect("running")
            .iter()
            .filter(|(job, _)| health.get(*job).is_some_and(|h| h.running))
            .map(|(job, r)| (job.clone(), r.progress.snapshot()))
            .collect()
    }

    /// Sets `strata_backup_progress_bytes` from the running backups (0 for the
    /// others) and the state database's outbox gauges; called before each scrape.
    pub fn update_progress_metrics(&self) {
        if let Some(state) = &self.state {
            let (waiting, dropped) = state.outbox();
            self.metrics
                .state_outbox
                .with_label_values::<&str>(&[])
                .set(waiting as f64);
            self.metrics
                .state_outbox_dropped
                .with_label_values::<&str>(&[])
                .set(dropped as f64);
        }
        let running = self.progress();
        for job in self.strata.config().jobs.keys() {
            let bytes = running.get(job).map_or(0, |s| s.bytes);
            self.metrics
                .progress_bytes
                .with_label_values(&[job])
                .set(bytes as f64);
        }
    }

    /// The latest periodic checks, for `/health`.
    pub fn checks(&self) -> Checks {
        lock(&self.checks).clone()
    }

    /// Lifecycle drift (fixed when the target says `manage_lifecycle: true`),
    /// storage bytes and cost, and the compliance checks: metrics and `/health`.
    pub async fn refresh_checks(&self) {
        let config = self.strata.config();
        let mut lifecycle = BTreeMap::new();
        for (name, t) in &config.targets {
            let target = self.strata.target(name);
            let (
                Some(s3),
                crate::config::TargetKind::S3 {
                    manage_lifecycle, ..
                },
            ) = (target.as_s3(), &t.kind)
            else {
                continue;
            };
            let mut status = crate::commands::lifecycle::status(t, s3).await;
            if *manage_lifecycle && status.as_ref().is_ok_and(|s| !s.in_sync) {
                status = crate::commands::lifecycle::apply(t, s3).await;
                self.audit(
                    "daemon",
                    "lifecycle.apply",
                    None,
                    None,
                    serde_json::json!({ "target": name, "ok": status.is_ok() }),
                )
                .await;
            }
            lifecycle.insert(name.clone(), status);
        }
        // Every manifest and each bucket's lifecycle are read once per refresh.
        let jobs = crate::commands::prune::gather_jobs(&self.strata).await;
        let inventory = crate::commands::inventory::take(&self.strata).await;
        let sizes = crate::commands::inventory::newest_sizes(&jobs);
        let cost = crate::commands::inventory::cost_report(&self.strata, &inventory, &sizes);
        self.metrics.storage_bytes.reset();
        for t in &cost.targets {
            for (class, c) in &t.classes {
                self.metrics
                    .storage_bytes
                    .with_label_values(&[&t.target, class])
                    .set(c.bytes as f64);
            }
            self.metrics
                .storage_cost
                .with_label_values(&[&t.target])
                .set(t.usd_monthly);
        }
        let compliance =
            crate::commands::compliance::report(&self.strata, self.clock.now(), &jobs, &lifecycle)
                .await;
        let lifecycle = lifecycle
            .into_iter()
            .map(|(name, status)| {
                let summary = match status {
                    Ok(s) => s.summary(),
                    Err(e) => format!("cannot read the lifecycle: {e}"),
                };
                (name, summary)
            })
            .collect();
        for c in &compliance.checks {
            self.metrics
                .compliance_check
                .with_label_values(&[&c.check])
                .set(if c.pass { 1.0 } else { 0.0 });
        }
        let m = Some(&self.metrics);
        let threshold = config.alerts.monthly_cost_usd;
        if inventory.errors.is_empty() && cost.usd_monthly > threshold {
            self.alerter
                .raise(
                    Alert::new(
                        Kind::CostThreshold,
                        None,
                        format!("stored backups cost ${:.2}/month, above the ${threshold:.2} threshold (projected steady state ${:.2})", cost.usd_monthly, cost.projected_usd_monthly),
                        "run `strata cost` to see which target and class; check retention, lifecycle rules (`strata lifecycle show`) and backup sizes",
                    ),
                    m,
                )
                .await;
        } else if inventory.errors.is_empty() {
            self.alerter
                .resolve(
                    Kind::CostThreshold,
                    None,
                    "",
                    format!("storage cost ${:.2}/month", cost.usd_monthly),
                    m,
                )
                .await;
        }
        for c in &compliance.checks {
            if c.pass {
                self.alerter
                    .resolve(
                        Kind::ComplianceViolation,
                        None,
                        &c.check,
                        format!("{} passes", c.check),
                        m,
                    )
                    .await;
            } else {
                let mut alert = Alert::new(
                    Kind::ComplianceViolation,
                    None,
                    format!("{} fails: {}", c.check, c.evidence.join("; ")),
                    "run `strata compliance` for the evidence and fix the configuration, bucket or schedule it names",
                );
                alert.detail.clone_from(&c.check);
                self.alerter.raise(alert, m).await;
            }
        }
        let mut checks = lock(&self.checks);
        *checks = Checks {
            checked_at: Some(self.clock.now()),
            lifecycle,
            usd_monthly: inventory.errors.is_empty().then_some(cost.usd_monthly),
            projected_usd_monthly: Some(cost.projected_usd_monthly),
            compliance_failing: compliance
                .checks
                .iter()
                .filter(|c| !c.pass)
                .map(|c| c.check.clone())
                .collect(),
        };
    }

    /// A run from memory or the state database.
    pub async fn run(&self, id: &str) -> Option<RunRecord> {
        if let Some(r) = lock(&self.recent).1.get(id) {
            return Some(r.clone());
        }
        match &self.state {
            Some(state) => state.run(id).await.ok().flatten(),
            None => None,
        }
    }

    fn remember(&self, run: &RunRecord) {
        let mut recent = lock(&self.recent);
        if !recent.1.contains_key(&run.id) {
            recent.0.push_back(run.id.clone());
        }
        recent.1.insert(run.id.clone(), run.clone());
        while recent.0.len() > RECENT_RUNS {
            if let Some(old) = recent.0.pop_front() {
                recent.1.remove(&old);
            }
        }
    }

    /// Appends to the audit log (when a state database is configured) and logs.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        job: Option<&str>,
        run_id: Option<&str>,
        detail: serde_json::Value,
    ) {
        self.audit_now(actor, action, job, run_id, detail);
    }

    fn audit_now(
        &self,
        actor: &str,
        action: &str,
        job: Option<&str>,
        run_id: Option<&str>,
        detail: serde_json::Value,
    ) {
        crate::run::audit(
            self.state.as_deref(),
            AuditEntry {
                at: self.clock.now(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                job: job.map(str::to_owned),
                run_id: run_id.map(str::to_owned),
                detail,
            },
        );
    }

    /// Starts a backup of `job` unless one is running anywhere; returns the run id
    /// at once, the backup goes on in the background (waiting for a free slot
    /// of `daemon.max_concurrent_runs` first).
    ///
    /// # Errors
    /// Unknown job, a run already in progress (here or in another process), or the
    /// daemon is stopping.
    pub async fn trigger(
        self: &Arc<Self>,
        job: &str,
        trigger: &str,
        scheduled_for: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Result<String, TriggerError> {
        self.start_run(job, trigger, scheduled_for, actor, None)
            .await
    }

    async fn start_run(
        self: &Arc<Self>,
        job: &str,
        trigger: &str,
        scheduled_for: Option<DateTime<Utc>>,
        actor: &str,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<String, TriggerError> {
        if self.strata.config().job(job).is_none() {
            return Err(TriggerError::UnknownJob(job.to_owned()));
        }
        if self.stopping.is_cancelled() {
            return Err(TriggerError::Stopping);
        }
        let estimate = lock(&self.health).get(job).and_then(|h| h.last_raw_bytes);
        let progress = crate::pipeline::progress::Progress::new(format!("backup {job}"), estimate);
        let cancel = {
            let mut running = lock(&self.running);
            if running.contains_key(job) {
                return Err(TriggerError::AlreadyRunning(job.to_owned()));
            }
            let cancel = CancellationToken::new();
            running.insert(
                job.to_owned(),
                Running {
                    cancel: cancel.clone(),
                    progress: progress.clone(),
                    lock: None,
                },
            );
            cancel
        };
        // Across processes: the job's advisory lock, on the shared lock
        // connection, asked for at most LOCK_WAIT so an unreachable state
        // database never holds the run up (see `execute` for what happens then).
        let mut needs_lock = false;
        if let Some(state) = &self.state {
            match tokio::time::timeout(LOCK_WAIT, state.try_lock_job(job)).await {
                Ok(Ok(Some(held))) => {
                    if let Some(r) = lock(&self.running).get_mut(job) {
                        r.lock = Some(held);
                    }
                }
                Ok(Ok(None)) => {
                    lock(&self.running).remove(job);
                    return Err(TriggerError::AlreadyRunning(job.to_owned()));
                }
                Ok(Err(_)) | Err(_) => needs_lock = true,
            }
        }
        let run = RunRecord::start(job, trigger, scheduled_for, self.clock.now(), &self.host);
        let id = run.id.clone();
        self.remember(&run);
        if let Some(h) = lock(&self.health).get_mut(job) {
            h.running = true;
        }
        self.metrics.running.with_label_values(&[job]).set(1);
        let me = self.clone();
        let actor = actor.to_owned();
        let guard = RunGuard {
            daemon: self.clone(),
            job: job.to_owned(),
        };
        self.tasks.spawn_on(
            async move {
                me.execute(guard, run, cancel, progress, actor, permit, needs_lock)
                    .await;
            },
            &self.runtime,
        );
        Ok(id)
    }

    /// Takes the job's lock when `start_run` could not: with replicas sharing
    /// the state database the run waits (and says so) until it can; alone, it
    /// goes on without.
    async fn take_lock_late(&self, job: &str, cancel: &CancellationToken) {
        let Some(state) = &self.state else { return };
        let mut said = false;
        loop {
            if let Ok(Some(held)) = state.try_lock_job(job).await {
                if let Some(r) = lock(&self.running).get_mut(job) {
                    r.lock = Some(held);
                }
                return;
            }
            if !state.replicas_seen() {
                tracing::warn!(
                    job,
                    "state database unreachable and no other daemon seen on it: running without the cross-process lock"
                );
                return;
            }
            if !said {
                said = true;
                tracing::warn!(
                    job,
                    "waiting for the state database to take the job's lock (other daemons share it, so the run does not go without)"
                );
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one run's parts, handed over once
    async fn execute(
        self: Arc<Self>,
        guard: RunGuard,
        run: RunRecord,
        cancel: CancellationToken,
        progress: Arc<crate::pipeline::progress::Progress>,
        actor: String,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        needs_lock: bool,
    ) {
        let job = run.job.clone();
        let session = Session::open(self.state.clone(), run, &actor, self.clock.now());
        // A development refresh restores the source job's newest backup: when that
        // job is queued or being backed up right now, wait for it first (before
        // taking a slot, so the two can never wait for each other).
        if let Some(from) = self
            .strata
            .config()
            .job(&job)
            .and_then(|j| j.refresh.as_ref())
            .map(|r| r.from.clone())
        {
            while lock(&self.running).contains_key(&from) && !cancel.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let _permit = match permit {
            Some(p) => Some(p),
            None => {
                self.set_queued(&job, true);
                let p = tokio::select! {
                    p = self.slots.clone().acquire_owned() => p.ok(),
                    () = cancel.cancelled() => None,
                };
                self.set_queued(&job, false);
                p
            }
        };
        if needs_lock {
            self.take_lock_late(&job, &cancel).await;
        }
        let timeout = self
            .strata
            .config()
            .job(&job)
            .map_or(Duration::from_secs(12 * 3600), |j| j.timeout);
        let ctl = crate::commands::backup::RunControl {
            cancel: cancel.clone(),
            progress: Some(progress),
        };
        let result = session.execute(self.strata.clone(), ctl, timeout).await;
        self.finish_run(guard, session, result).await;
    }

    fn set_queued(&self, job: &str, queued: bool) {
        self.metrics
            .queued
            .with_label_values(&[job])
            .set(i64::from(queued));
        if let Some(h) = lock(&self.health).get_mut(job) {
            h.queued = queued;
        }
    }

    /// Bookkeeping after a run: metrics, health, the state database, alerts,
    /// retention; then the guard releases the job.
    async fn finish_run(
        &self,
        guard: RunGuard,
        mut session: Session,
        result: Result<crate::commands::backup::BackupReport, crate::commands::backup::RunError>,
    ) {
        let job = session.record.job.clone();
        let duration = (self.clock.now() - session.record.started_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        session.finish(&self.strata, &result, self.clock.now());
        let run = session.record.clone();
        let m = &self.metrics;
        m.last_duration.with_label_values(&[&job]).set(duration);
        if let Ok(report) = &result {
            for t in report.failed.keys() {
                m.upload_failures.with_label_values(&[t]).inc();
            }
            m.last_size
                .with_label_values(&[&job])
                .set(report.manifest.stored_bytes as f64);
            m.last_raw
                .with_label_values(&[&job])
                .set(report.manifest.raw_bytes as f64);
        }
        m.runs.with_label_values(&[&job, run.status.as_str()]).inc();
        let previous_size;
        {
            let mut health = lock(&self.health);
            let h = health.entry(job.clone()).or_default();
            h.running = false;
            h.last_result = Some(run.status.as_str().to_owned());
            h.last_run_id = Some(run.id.clone());
            h.last_error = run.error.clone();
            previous_size = h.last_stored_bytes;
            if let Ok(report) = &result {
                if let Some(prev) = h.last_stored_bytes.filter(|p| *p > 0) {
                    m.size_change_ratio
                        .with_label_values(&[&job])
                        .set(report.manifest.stored_bytes as f64 / prev as f64 - 1.0);
                }
                h.last_stored_bytes = Some(report.manifest.stored_bytes);
                h.last_raw_bytes = Some(report.manifest.raw_bytes);
                if report.is_complete() {
                    h.last_success = Some(report.manifest.started_at);
                    m.last_success
                        .with_label_values(&[&job])
                        .set(report.manifest.started_at.timestamp() as f64);
                }
            }
        }
        m.running.with_label_values(&[&job]).set(0);
        self.remember(&run);
        // Written now when the database answers; kept for later when not.
        session.sync(Duration::from_secs(5)).await;
        // Alerts go out on their own: a channel that does not answer must not
        // hold the job (its 30 s deadline would) before it is released.
        {
            let me = guard.daemon.clone();
            let run = run.clone();
            let outcome = result
                .as_ref()
                .map(Clone::clone)
                .map_err(ToString::to_string);
            self.tasks.spawn(async move {
                me.alert_on_run(&run, &outcome, previous_size).await;
            });
        }
        // Retention only after a complete backup, still under the job's lock.
        if run.status == RunStatus::Success {
            let rec = prune::Recorder {
                state: self.state.as_deref(),
                metrics: Some(&self.metrics),
                actor: "retention",
            };
            prune::after_backup(&self.strata, &job, &rec, self.clock.now()).await;
        }
        // Storage, cost and compliance changed: refresh them soon.
        self.recheck.notify_one();
        drop(guard);
    }

    /// Alerts (or resolves) backup failure, degraded targets and size anomalies
    /// after a run. Alert delivery never changes the run's outcome.
    async fn alert_on_run(
        &self,
        run: &RunRecord,
        result: &Result<crate::commands::backup::BackupReport, String>,
        previous_size: Option<u64>,
    ) {
        let job = run.job.as_str();
        let m = Some(&self.metrics);
        let a = &self.alerter;
        match result {
            Err(_) if run.status == RunStatus::Aborted => {}
            Err(e) => {
                a.raise(
                    Alert::new(
                        Kind::BackupFailed,
                        Some(job),
                        format!("run {} failed: {e}", run.id),
                        format!("fix the cause above, then start a backup (`strata backup {job}` or POST /backups/{job}); until then the last good backup is older than it should be"),
                    ),
                    m,
                )
                .await;
            }
            Ok(report) => {
                a.resolve(
                    Kind::BackupFailed,
                    Some(job),
                    "",
                    format!("backup {} succeeded", report.manifest.backup_id),
                    m,
                )
                .await;
                a.resolve(
                    Kind::RpoExceeded,
                    Some(job),
                    "",
                    format!("backup {} is fresh", report.manifest.backup_id),
                    m,
                )
                .await;
                if report.is_complete() {
                    a.resolve(
                        Kind::TargetDegraded,
                        Some(job),
                        "",
                        "every target holds the newest backup",
                        m,
                    )
                    .await;
                } else {
                    let failed: Vec<String> = report
                        .failed
                        .iter()
                        .map(|(t, why)| format!("{t}: {why}"))
                        .collect();
                    a.raise(
                        Alert::new(
                            Kind::TargetDegraded,
                            Some(job),
                            format!("backup {} is missing on: {}", report.manifest.backup_id, failed.join("; ")),
                            "check the failed target (credentials, space, network); the other targets hold a valid copy",
                        ),
                        m,
                    )
                    .await;
                }
                let stored = report.manifest.stored_bytes;
                let limit = self.strata.config().alerts.size_change_ratio;
                let anomaly = if report.manifest.raw_bytes == 0 {
                    Some("pg_dump produced 0 bytes".to_owned())
                } else {
                    previous_size.filter(|p| *p > 0).and_then(|prev| {
                        let change = stored as f64 / prev as f64 - 1.0;
                        (change.abs() > limit).then(|| {
                            format!(
                                "stored size {stored} bytes is {:+.0}% against the previous backup's {prev} bytes (limit ±{:.0}%)",
                                change * 100.0,
                                limit * 100.0
                            )
                        })
                    })
                };
                match anomaly {
                    Some(cause) => {
                        a.raise(
                            Alert::new(
                                Kind::SizeAnomaly,
                                Some(job),
                                format!("backup {}: {cause}", report.manifest.backup_id),
                                "compare the manifest's table row counts with the previous backup's; a big drop can mean lost data or a dump of the wrong database",
                            ),
                            m,
                        )
                        .await;
                    }
                    None => {
                        a.resolve(
                            Kind::SizeAnomaly,
                            Some(job),
                            "",
                            "backup size back within the limit",
                            m,
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// Alerts for jobs whose newest good backup is older than their RPO.
    pub async fn check_rpo(&self) {
        let now = self.clock.now();
        let config = self.strata.config();
        for (name, h) in self.health() {
            let Some(job) = config.jobs.get(&name) else {
                continue;
            };
            let rpo = chrono::Duration::from_std(job.rpo).unwrap_or(chrono::Duration::MAX);
            let stale = h.last_success.is_none_or(|t| now - t > rpo);
            if stale && !h.running {
                let cause = match h.last_success {
                    Some(t) => format!(
                        "the newest good backup started {} ({} ago), RPO {}",
                        t.to_rfc3339(),
                        crate::policy::schedule::format_age(now - t),
                        humantime::format_duration(job.rpo)
                    ),
                    None => "no good backup of this job exists".into(),
                };
                self.alerter
                    .raise(
                        Alert::new(Kind::RpoExceeded, Some(&name), cause, format!("check why scheduled backups are not succeeding (`strata next {name}`, the daemon's log), then start one")),
                        Some(&self.metrics),
                    )
                    .await;
            }
        }
    }

    /// Runs the job's restore test now: the newest readable backup restored into
    /// a scratch database on `verify.restore_into`, checked and dropped; recorded,
    /// measured, alerted.
    pub async fn run_restore_test(&self, job: &str) -> Option<RestoreTest> {
        let cfg = self.strata.config().job(job)?;
        let server = cfg.verify.restore_into.as_ref()?;
        let test = crate::commands::restore::restore_test(
            &self.strata,
            job,
            server,
            &cfg.verify.sql,
            self.clock.now(),
        )
        .await;
        tracing::info!(
            job,
            ok = test.ok,
            backup_id = test.backup_id.as_deref().unwrap_or("-"),
            seconds = test.seconds,
            error = test.error.as_deref().unwrap_or(""),
            "restore test finished"
        );
        if let Some(state) = &self.state {
            if let Err(e) = state.save_restore_test(&test, &self.host).await {
                tracing::warn!(job, error = %e, "restore test not recorded in the state database");
            }
        }
        self.audit(
            "scheduler",
            "restore_test",
            Some(job),
            None,
            serde_json::to_value(&test).unwrap_or_default(),
        )
        .await;
        self.metrics
            .restore_test_duration
            .with_label_values(&[job])
            .set(test.seconds);
        let m = Some(&self.metrics);
        if test.ok {
            self.metrics
                .restore_test_last_success
                .with_label_values(&[job])
                .set(test.started_at.timestamp() as f64);
            self.alerter
                .resolve(
                    Kind::RestoreTestFailed,
                    Some(job),
                    "",
                    format!(
                        "restore test of {} passed in {:.1} s",
                        test.backup_id.as_deref().unwrap_or("-"),
                        test.seconds
                    ),
                    m,
                )
                .await;
        } else {
            self.alerter
                .raise(
                    Alert::new(
                        Kind::RestoreTestFailed,
                        Some(job),
                        format!("restore test of {} failed: {}", test.backup_id.as_deref().unwrap_or("no backup"), test.error.as_deref().unwrap_or("unknown")),
                        format!("the newest backup may not restore: run `strata verify {job}` on every target, take a new backup, and find out why before relying on it"),
                    ),
                    m,
                )
                .await;
        }
        self.restore_tests
            .lock()
            .expect("restore tests")
            .insert(job.to_owned(), test.clone());
        Some(test)
    }

    /// The last restore test of each job (this process's, or the state
    /// database's newest success at start-up).
    pub fn restore_tests(&self) -> BTreeMap<String, RestoreTest> {
        lock(&self.restore_tests).clone()
    }

    /// Reads the newest backup of every job from its targets (health, metrics,
    /// catch-up decisions).
    async fn load_history(&self) {
        let config = self.strata.config();
        for name in config.jobs.keys() {
            // A target that does not answer must not hold up the start.
            let newest = match tokio::time::timeout(
                STARTUP_STEP,
                catalog::newest(&self.strata, name),
            )
            .await
            {
                Ok(newest) => newest,
                Err(_) => {
                    tracing::warn!(job = %name, "reading the job's backups took too long at start-up; health will show them after the next run");
                    None
                }
            };
            if let Some(state) = &self.state {
                if let Ok(Some((at, seconds))) = state.last_restore_test_success(name).await {
                    self.metrics
                        .restore_test_last_success
                        .with_label_values(&[name])
                        .set(at.timestamp() as f64);
                    self.metrics
                        .restore_test_duration
                        .with_label_values(&[name])
                        .set(seconds);
                }
            }
            if let Some(e) = newest {
                let mut health = lock(&self.health);
                let h = health.entry(name.clone()).or_default();
                h.last_success = Some(e.started_at());
                h.last_stored_bytes = Some(e.manifest.stored_bytes);
                h.last_raw_bytes = Some(e.manifest.raw_bytes);
                self.metrics
                    .last_success
                    .with_label_values(&[name])
                    .set(e.started_at().timestamp() as f64);
            }
        }
    }

    /// At start-up: is there a `pg_dump` at least as new as each job's server? A
    /// job without one is reported (log, `/health` `last_error`, alert) naming both
    /// versions, instead of failing at 03:00. Unreachable servers are skipped:
    /// they may be up by then.
    async fn check_tools(&self) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let url = &job.database_url;
            let probe = async {
                let client = url.connect().await?;
                let info = crate::pg::database_info(url, &client).await?;
                crate::pg::find_tool("pg_dump", &info).await.map(drop)
            };
            let result = tokio::time::timeout(Duration::from_secs(15), probe).await;
            let Ok(Err(e)) = result else { continue };
            if matches!(
                e,
                crate::pg::SourceError::ToolTooOld { .. }
                    | crate::pg::SourceError::ToolMissing { .. }
            ) {
                tracing::error!(job = %name, error = %e, "backups of this job cannot run");
                if let Some(h) = lock(&self.health).get_mut(name) {
                    h.last_error = Some(e.to_string());
                }
                self.alerter
                    .raise(
                        Alert::new(Kind::BackupFailed, Some(name), e.to_string(), "install the PostgreSQL client tools of the server's major version (or newer) or point STRATA_PG_BIN_DIR at them, then restart strata"),
                        Some(&self.metrics),
                    )
                    .await;
            }
        }
    }

    /// Removes what killed runs left behind: staging files and incomplete uploads
    /// older than `daemon.stale_upload_age` (default 6h, longer than any backup).
    async fn cleanup(&self) {
        let age = self.strata.config().daemon.stale_upload_age;
        let config = self.strata.config();
        for (name, t) in &config.targets {
            let target = self.strata.target(name);
            match tokio::time::timeout(STARTUP_STEP, target.cleanup_stale(&t.prefix, age)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::info!(target_name = %name, removed = n, "removed debris of interrupted runs")
                }
                Ok(Err(e)) => {
                    tracing::warn!(target_name = %name, error = %e, "start-up cleanup failed")
                }
                Err(_) => {
                    tracing::warn!(target_name = %name, "start-up cleanup gave up: the target did not answer in time")
                }
            }
        }
    }

    fn spawn_schedules(self: &Arc<Self>) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let Some(schedule) = job.schedule.clone() else {
                continue;
            };
            let me = self.clone();
            let name = name.clone();
            let tz = config.timezone;
            self.tasks.spawn(async move {
                let next = schedule::next_after(&schedule, tz, me.clock.now());
                me.set_next(&name, next);
                let stop = me.stopping.clone();
                schedule::run_loop(
                    &schedule,
                    tz,
                    me.clock.as_ref(),
                    |slot| {
                        let me = me.clone();
                        let name = name.clone();
                        let schedule = schedule.clone();
                        async move {
                            me.fire(&name, slot, "schedule").await;
                            me.set_next(
                                &name,
                                schedule::next_after(&schedule, tz, me.clock.now().max(slot)),
                            );
                        }
                    },
                    stop.cancelled_owned(),
                )
                .await;
            });
        }
    }

    /// A loop per job with `verify.restore_test` and `verify.restore_into`; each
    /// slot is claimed like a backup slot, so replicas run it once.
    fn spawn_restore_tests(self: &Arc<Self>) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let (Some(schedule), Some(_)) = (
                job.verify.restore_test.clone(),
                job.verify.restore_into.as_ref(),
            ) else {
                continue;
            };
            let me = self.clone();
            let name = name.clone();
            let tz = config.timezone;
            self.tasks.spawn(async move {
                let stop = me.stopping.clone();
                schedule::run_loop(
                    &schedule,
                    tz,
                    me.clock.as_ref(),
                    |slot| {
                        let me = me.clone();
                        let name = name.clone();
                        async move {
                            if let Some(state) = &me.state {
                                let key = format!("restore-test:{name}");
                                if let Ok(false) = state
                                    .claim(&key, slot, &uuid::Uuid::new_v4().to_string(), &me.host)
                                    .await
                                {
                                    return;
                                }
                            }
                            me.run_restore_test(&name).await;
                        }
                    },
                    stop.cancelled_owned(),
                )
                .await;
            });
        }
    }

    fn set_next(&self, job: &str, next: Option<DateTime<Utc>>) {
        if let Some(h) = lock(&self.health).get_mut(job) {
            h.next_run = next;
        }
    }

    /// Runs the slot unless another daemon sharing the state database claimed it.
    /// A free run slot comes first: a daemon that is busy leaves the claim to a
    /// replica that can run it now.
    async fn fire(self: &Arc<Self>, job: &str, slot: DateTime<Utc>, trigger: &str) {
        self.set_queued(job, true);
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            () = self.stopping.cancelled() => None,
        };
        self.set_queued(job, false);
        let Some(permit) = permit else { return };
        if let Some(state) = &self.state {
            match state
                .claim(job, slot, &uuid::Uuid::new_v4().to_string(), &self.host)
                .await
            {
                Ok(true) => {
                    self.metrics.claims.with_label_values(&[job, "won"]).inc();
                }
                Ok(false) => {
                    self.metrics.claims.with_label_values(&[job, "lost"]).inc();
                    tracing::debug!(job, %slot, "slot claimed by another daemon");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job, error = %e, "state database unreachable: running the slot without a claim")
                }
            }
        }
        match self
            .start_run(job, trigger, Some(slot), "scheduler", Some(permit))
            .await
        {
            Ok(id) => tracing::info!(job, run_id = %id, %slot, trigger, "backup started"),
            Err(e) => tracing::warn!(job, %slot, error = %e, "scheduled backup skipped"),
        }
    }

    /// A job whose newest backup is older than its RPO (or that has none) and whose
    /// last scheduled slot passed gets one catch-up run, claimed like that slot.
    async fn catch_up(self: &Arc<Self>) {
        let config = self.strata.config();
        let now = self.clock.now();
        // Jobs refreshed from another job go after it, so they restore its
        // catch-up backup (and wait for it, see `execute`).
        let mut jobs: Vec<_> = config.jobs.iter().collect();
        jobs.sort_by_key(|(_, j)| j.refresh.is_some());
        for (name, job) in jobs {
            let Some(schedule) = &job.schedule else {
                continue;
            };
            let last = self
                .health
                .lock()
                .expect("health")
                .get(name)
                .and_then(|h| h.last_success);
            let rpo = chrono::Duration::from_std(job.rpo).unwrap_or(chrono::Duration::MAX);
            if last.is_some_and(|t| now - t <= rpo) {
                continue;
            }
            // The most recent slot before now (at most a year back), to claim.
            let slot = schedule::upcoming(
                schedule,
                config.timezone,
                now - chrono::Duration::days(366),
                400,
            )
            .into_iter()
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= now)
            .last();
            if let Some(slot) = slot {
                tracing::info!(job = %name, %slot, "past its RPO at start-up: one catch-up run");
                // Each waits for a free slot on its own, oldest job first.
                let me = self.clone();
                let name = name.clone();
                self.tasks
                    .spawn(async move { me.fire(&name, slot, "catch-up").await });
                tokio::task::yield_now().await;
            }
        }
    }

    /// Serves `app` (the HTTP API router) on `listener` and runs the schedules until `stop` resolves;
    /// then lets running backups finish for `daemon.shutdown_grace` (default 5m)
    /// and aborts the rest cleanly.
    ///
    /// # Errors
    /// The HTTP server failed.
    pub async fn run_until_stopped(
        self: Arc<Self>,
        listener: TcpListener,
        app: axum::Router,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        // Start-up work that reads targets and the state database runs in the
        // background: a dependency that never answers must not keep the API or
        // the schedules from starting.
        {
            let me = self.clone();
            self.tasks.spawn(async move {
                // Regular slots need nothing read first.
                me.spawn_schedules();
                if let Some(state) = &me.state {
                    state.look_for_replicas(&me.host).await;
                }
                me.cleanup().await;
                me.load_history().await;
                me.catch_up().await;
                me.started.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("start-up checks done; schedules running");
            });
        }
        {
            // In the background: an unreachable server must not delay start-up.
            let me = self.clone();
            self.tasks.spawn(async move { me.check_tools().await });
        }
        if let Some(state) = self.state.clone() {
            let stopping = self.stopping.clone();
            self.tasks.spawn(async move {
                loop {
                    state.ping().await;
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                }
            });
        }
        {
            let me = self.clone();
            let stopping = self.stopping.clone();
            let every = self.strata.config().daemon.check_interval;
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        () = me.refresh_checks() => {}
                    }
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                        () = me.recheck.notified() => {}
                    }
                }
            });
        }
        {
            let me = self.clone();
            let stopping = self.stopping.clone();
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                    me.check_rpo().await;
                }
            });
        }
        self.spawn_restore_tests();
        // The API runs on a thread and runtime of its own, so `/health` never
        // waits behind the pipeline's tasks on the main runtime's workers.
        let stopping = self.stopping.clone();
        let listener = listener.into_std().map_err(DaemonError::Listen)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("strata-api".into())
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let listener = TcpListener::from_std(listener)?;
                            axum::serve(listener, app)
                                .with_graceful_shutdown(async move {
                                    stop.await;
                                    stopping.cancel();
                                })
                                .await
                        })
                    });
                let _ = done_tx.send(served);
            })
            .map_err(DaemonError::Listen)?;
        let server = async move {
            done_rx
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the API thread ended")))
        };
        tracing::info!(host = %self.host, "strata daemon started");
        // systemd (Type=notify): ready once serving; the watchdog is fed from the
        // runtime itself, so a wedged runtime stops feeding it. No-ops elsewhere.
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "could not notify systemd");
        }
        if let Some(timeout) = sd_notify::watchdog_enabled() {
            let stopping = self.stopping.clone();
            self.tasks.spawn(async move {
                loop {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        () = tokio::time::sleep(timeout / 3) => {}
                    }
                }
            });
        }
        let served = server.await.map_err(DaemonError::Listen);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.stopping.cancel();
        self.tasks.close();
        let grace = self.strata.config().daemon.shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: aborting running backups");
            for r in lock(&self.running).values() {
                r.cancel.cancel();
            }
            let _ = tokio::time::timeout(Duration::from_secs(60), self.tasks.wait()).await;
        }
        if let Some(state) = &self.state {
            if !state.sync(Duration::from_secs(10)).await {
                tracing::warn!(
                    waiting = state.outbox().0,
                    "state database unreachable at exit: the records kept in memory are lost"
                );
            }
        }
        tracing::info!("strata daemon stopped");
        served
    }
}
