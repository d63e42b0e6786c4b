//! What the daemon checks besides backups: storage, cost, lifecycle and
//! compliance (periodically), the RPO, client tools, start-up clean-up, and the
//! scheduled restore tests.

use super::*;

impl Daemon {
    /// Lifecycle drift (fixed when the target says `manage_lifecycle: true`),
    /// storage bytes and cost, and the compliance checks: metrics and `/health`.
    // Long on purpose: the periodic checks in the order /health shows them, each read, measured and reported in a few lines.
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
                    .with_label_values(&[t.target.as_str(), class.as_str()])
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

    /// Alerts for jobs whose newest good backup is older than their RPO.
    pub async fn check_rpo(&self) {
        let now = self.clock.now();
        let config = self.strata.config();
        for (name, h) in self.health() {
            let Some(job) = config.jobs.get(&name) else {
                continue;
            };
            let rpo = chrono::Duration::from_std(job.rpo).unwrap_or(chrono::Duration::MAX);
            // A physical job's recovery point is its newest archived WAL.
            let newest = if job.kind.is_physical() {
                h.wal.as_ref().and_then(|w| w.last_archived)
            } else {
                h.last_success
            };
            let stale = newest.is_none_or(|t| now - t > rpo);
            if stale && !h.running {
                let what = if job.kind.is_physical() {
                    "the newest archived WAL file was archived"
                } else {
                    "the newest good backup started"
                };
                let cause = match newest {
                    Some(t) => format!(
                        "{what} {} ({} ago), RPO {}",
                        t.to_rfc3339(),
                        crate::policy::schedule::format_age(now - t),
                        humantime::format_duration(job.rpo)
                    ),
                    None if job.kind.is_physical() => {
                        "the server has archived no WAL file through strata yet".into()
                    }
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
        let test = crate::run::restore_test(
            self.strata.clone(),
            self.state.as_deref(),
            job,
            "scheduler",
            &self.host,
            self.clock.now(),
        )
        .await?;
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

    /// At start-up: is there a `pg_dump` at least as new as each job's server? A
    /// job without one is reported (log, `/health` `last_error`, alert) naming both
    /// versions, instead of failing at 03:00. Unreachable servers are skipped:
    /// they may be up by then.
    pub(super) async fn check_tools(&self) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let url = &job.database_url;
            // What each kind of job runs: dumps; base backups, streaming and
            // the recovery of restore tests.
            let tools: &[&str] = match job.kind.physical() {
                None => &["pg_dump"],
                Some(p) => {
                    let stream = matches!(p.wal, crate::config::WalSource::Stream { .. });
                    match (stream, job.verify.scratch_dir.is_some()) {
                        (true, true) => &["pg_basebackup", "pg_receivewal", "pg_ctl"],
                        (true, false) => &["pg_basebackup", "pg_receivewal"],
                        (false, true) => &["pg_basebackup", "pg_ctl"],
                        (false, false) => &["pg_basebackup"],
                    }
                }
            };
            let probe = async {
                let client = url.connect().await?;
                let info = crate::pg::database_info(url, &client).await?;
                for tool in tools {
                    crate::pg::find_tool(tool, &info).await?;
                }
                Ok::<(), crate::pg::SourceError>(())
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
    /// older than `daemon.stale_after` (default 6h, longer than any backup).
    pub(super) async fn cleanup(&self) {
        let age = self.strata.config().daemon.stale_after;
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

    /// A loop per job with `verify.restore_test` and `verify.restore_into`; each
    /// slot is claimed like a backup slot, so replicas run it once.
    pub(super) fn spawn_restore_tests(self: &Arc<Self>) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let Some(schedule) = job.verify.restore_test.clone() else {
                continue;
            };
            if job.verify.restore_into.is_none() && job.verify.scratch_dir.is_none() {
                continue;
            }
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
}
