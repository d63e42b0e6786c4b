//! The long-running service: schedules, one run per job at a time (in this
//! process and, through the state database, across processes), run bookkeeping
//! (state database, metrics, health, audit), start-up cleanup and graceful stop.

mod checks;
mod runs;
mod schedules;
mod wal;

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
    /// Physical jobs: the server's archiver and the archive's recoverable range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<wal::WalHealth>,
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
/// cancelled): health and metrics stop saying it runs, the entry goes (and
/// with it the cross-process lock), and only then is the finished record
/// published, so a client that reads the run as finished finds the job idle
/// and can start the next run at once.
struct RunGuard {
    daemon: Arc<Daemon>,
    job: String,
    finished: Option<RunRecord>,
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
        let released = lock(&d.running).remove(&self.job);
        drop(released);
        if let Some(run) = self.finished.take() {
            d.remember(&run);
        }
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
    /// Physical jobs: the archiver counters seen last (to count the change).
    archiver: Mutex<BTreeMap<String, wal::ArchiverSeen>>,
    /// Physical jobs streaming their WAL: how each stream is doing.
    streams: Mutex<BTreeMap<String, crate::commands::wal::stream::SharedStatus>>,
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
            archiver: Mutex::default(),
            streams: Mutex::default(),
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

    /// Serves `app` (the HTTP API router) on `listener` and runs the schedules until `stop` resolves;
    /// then lets running backups finish for `daemon.shutdown_grace` (default 5m)
    /// and aborts the rest cleanly.
    ///
    /// # Errors
    /// The HTTP server failed.
    // Long on purpose: The daemon's tasks, started in order: start-up work, pings, periodic checks, the API thread, systemd, then the graceful stop.
    pub async fn run_until_stopped(
        self: Arc<Self>,
        listener: TcpListener,
        app: axum::Router,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        // Streaming WAL waits for nothing: every second of it is the RPO.
        self.spawn_streams();
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
            self.tasks.spawn(async move {
                me.check_tools().await;
                me.check_archiving().await;
            });
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
                        () = async {
                            me.refresh_checks().await;
                            me.check_recovery_windows().await;
                        } => {}
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
            // Every minute, or more often when the periodic checks are.
            let every = self
                .strata
                .config()
                .daemon
                .check_interval
                .min(Duration::from_secs(60));
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    me.check_archiving().await;
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
