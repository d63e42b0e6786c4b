//! One backup run inside the daemon: starting it (unless it runs anywhere),
//! queueing for a slot, the cross-process lock, then the bookkeeping after it:
//! metrics, health, alerts, retention.

use super::*;

impl Daemon {
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

    pub(super) async fn start_run(
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
            finished: None,
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
    pub(super) async fn take_lock_late(&self, job: &str, cancel: &CancellationToken) {
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
    pub(super) async fn execute(
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

    pub(super) fn set_queued(&self, job: &str, queued: bool) {
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
    // Long on purpose: the run's bookkeeping in order (metrics, health, record, alerts, retention) before the guard releases the job.
    pub(super) async fn finish_run(
        &self,
        mut guard: RunGuard,
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
                clock: self.clock.as_ref(),
            };
            prune::after_backup(&self.strata, &job, &rec, self.clock.now()).await;
        }
        // Storage, cost and compliance changed: refresh them soon.
        self.recheck.notify_one();
        // Published as finished only as the job is released (retention above
        // still held it): reading "success" means a new run can start.
        guard.finished = Some(run);
        drop(guard);
    }

    /// Alerts (or resolves) backup failure, degraded targets and size anomalies
    /// after a run. Alert delivery never changes the run's outcome.
    // Long on purpose: one raise-or-resolve per alert a run can change (failure, degraded targets, size anomaly).
    pub(super) async fn alert_on_run(
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
}
