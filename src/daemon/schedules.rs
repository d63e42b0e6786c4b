//! Schedules: each job's next slot on the daemon's clock, claimed once across
//! replicas, and catch-up after the daemon was down.

use super::*;

impl Daemon {
    /// Reads the newest backup of every job from its targets (health, metrics,
    /// catch-up decisions).
    pub(super) async fn load_history(&self) {
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

    pub(super) fn spawn_schedules(self: &Arc<Self>) {
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

    pub(super) fn set_next(&self, job: &str, next: Option<DateTime<Utc>>) {
        if let Some(h) = lock(&self.health).get_mut(job) {
            h.next_run = next;
        }
    }

    /// Runs the slot unless another daemon sharing the state database claimed it.
    /// A free run slot comes first: a daemon that is busy leaves the claim to a
    /// replica that can run it now.
    pub(super) async fn fire(self: &Arc<Self>, job: &str, slot: DateTime<Utc>, trigger: &str) {
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
    pub(super) async fn catch_up(self: &Arc<Self>) {
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
}
