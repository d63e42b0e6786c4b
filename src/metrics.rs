//! Every Prometheus metric strata exports, defined in one place. Labels are
//! low-cardinality: job, target, storage class, result, never a backup id.

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    pub last_success: GaugeVec,
    pub last_duration: GaugeVec,
    pub last_size: GaugeVec,
    pub last_raw: GaugeVec,
    pub size_change_ratio: GaugeVec,
    pub runs: IntCounterVec,
    pub running: IntGaugeVec,
    pub queued: IntGaugeVec,
    pub claims: IntCounterVec,
    pub progress_bytes: GaugeVec,
    pub state_outbox: GaugeVec,
    pub state_outbox_dropped: GaugeVec,
    pub upload_failures: IntCounterVec,
    pub retention_deleted: IntCounterVec,
    pub storage_bytes: GaugeVec,
    pub storage_cost: GaugeVec,
    pub compliance_check: GaugeVec,
    pub restore_test_last_success: GaugeVec,
    pub restore_test_duration: GaugeVec,
    pub wal_archived: IntCounterVec,
    pub wal_archive_failures: IntCounterVec,
    pub wal_last_archived: GaugeVec,
    pub wal_last_failed: GaugeVec,
    pub recovery_window: GaugeVec,
    pub alerts_sent: IntCounterVec,
    pub alerts_suppressed: IntCounterVec,
    pub alert_failures: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    /// Registers every metric.
    // Long on purpose: The registry: one registration per metric, in the order the README lists them.
    pub fn new() -> Self {
        let registry = Registry::new();
        let runs = counter(
            &registry,
            "strata_backup_runs_total",
            "Backup runs by result (success, degraded, failed, aborted).",
            &["job", "result"],
        );
        let running = IntGaugeVec::new(
            Opts::new("strata_backup_running", "1 while a backup of the job runs."),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(running.clone()))
            .expect("unique metric");
        let queued = IntGaugeVec::new(
            Opts::new(
                "strata_backup_queued",
                "1 while a run of the job waits for a free slot (daemon.max_concurrent_runs).",
            ),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queued.clone()))
            .expect("unique metric");
        let upload_failures = counter(
            &registry,
            "strata_target_upload_failures_total",
            "Backups that failed to reach a target.",
            &["target"],
        );
        Self {
            last_success: gauge(
                &registry,
                "strata_backup_last_success_timestamp_seconds",
                "Start time of the newest complete backup (Unix seconds).",
                &["job"],
            ),
            last_duration: gauge(
                &registry,
                "strata_backup_last_duration_seconds",
                "Duration of the last backup run.",
                &["job"],
            ),
            last_size: gauge(
                &registry,
                "strata_backup_last_size_bytes",
                "Stored (compressed, encrypted) size of the last backup.",
                &["job"],
            ),
            last_raw: gauge(
                &registry,
                "strata_backup_last_raw_bytes",
                "Raw dump size of the last backup.",
                &["job"],
            ),
            size_change_ratio: gauge(
                &registry,
                "strata_backup_size_change_ratio",
                "Stored size of the last backup relative to the previous one, minus 1.",
                &["job"],
            ),
            runs,
            running,
            queued,
            claims: counter(
                &registry,
                "strata_schedule_claims_total",
                "Scheduled slots this daemon claimed (won) or found claimed by a replica (lost).",
                &["job", "result"],
            ),
            state_outbox: gauge(
                &registry,
                "strata_state_outbox_records",
                "Runs and audit entries kept in memory until the state database answers.",
                &[],
            ),
            state_outbox_dropped: gauge(
                &registry,
                "strata_state_outbox_dropped_total",
                "Records dropped because the state database stayed unreachable with the outbox full.",
                &[],
            ),
            progress_bytes: gauge(
                &registry,
                "strata_backup_progress_bytes",
                "Raw bytes the running backup of the job has dumped so far (0 when none runs).",
                &["job"],
            ),
            upload_failures,
            retention_deleted: counter(
                &registry,
                "strata_retention_deleted_total",
                "Backup copies deleted by retention.",
                &["job", "target"],
            ),
            storage_bytes: gauge(
                &registry,
                "strata_storage_bytes",
                "Bytes of strata's objects per target and storage class.",
                &["target", "storage_class"],
            ),
            storage_cost: gauge(
                &registry,
                "strata_storage_cost_usd_monthly",
                "Monthly storage cost of a target's objects at the configured prices (USD).",
                &["target"],
            ),
            compliance_check: gauge(
                &registry,
                "strata_compliance_check",
                "1 when a compliance check passes, 0 when it fails.",
                &["check"],
            ),
            restore_test_last_success: gauge(
                &registry,
                "strata_restore_test_last_success_timestamp_seconds",
                "When the newest successful restore test of the job ran (Unix seconds).",
                &["job"],
            ),
            restore_test_duration: gauge(
                &registry,
                "strata_restore_test_duration_seconds",
                "Time the last restore test took to restore and check (the measured RTO).",
                &["job"],
            ),
            wal_archived: counter(
                &registry,
                "strata_wal_archived_total",
                "WAL files the server archived through strata (pg_stat_archiver.archived_count, as seen by the daemon).",
                &["job"],
            ),
            wal_archive_failures: counter(
                &registry,
                "strata_wal_archive_failures_total",
                "Failed archive_command calls (pg_stat_archiver.failed_count, as seen by the daemon).",
                &["job"],
            ),
            wal_last_archived: gauge(
                &registry,
                "strata_wal_last_archived_timestamp_seconds",
                "When the server last archived a WAL file through strata (Unix seconds).",
                &["job"],
            ),
            wal_last_failed: gauge(
                &registry,
                "strata_wal_last_failed_timestamp_seconds",
                "When archive_command last failed for the job's server (Unix seconds; 0: never).",
                &["job"],
            ),
            recovery_window: gauge(
                &registry,
                "strata_recovery_window_seconds",
                "How far back a physical job can be recovered to without a gap, on the worst target (0: not at all).",
                &["job"],
            ),
            alerts_sent: counter(
                &registry,
                "strata_alerts_sent_total",
                "Alerts delivered, by channel and kind.",
                &["channel", "kind"],
            ),
            alerts_suppressed: counter(
                &registry,
                "strata_alerts_suppressed_total",
                "Alerts not sent again because the same one is active (within alerts.repeat_interval).",
                &["kind"],
            ),
            alert_failures: counter(
                &registry,
                "strata_alert_failures_total",
                "Alerts a channel failed to deliver.",
                &["channel"],
            ),
            registry,
        }
    }

    /// Creates the counters of every configured job, target and channel at 0, so
    /// they are exported before anything happens and `increase()` sees the first
    /// failure.
    pub fn init(&self, config: &crate::config::Config) {
        for (job, cfg) in &config.jobs {
            for result in ["success", "degraded", "failed", "aborted"] {
                self.runs.with_label_values(&[job.as_str(), result]);
            }
            self.running.with_label_values(&[job.as_str()]).set(0);
            self.progress_bytes
                .with_label_values(&[job.as_str()])
                .set(0.0);
            if cfg.kind.is_physical() {
                self.wal_archived.with_label_values(&[job.as_str()]);
                self.wal_archive_failures.with_label_values(&[job.as_str()]);
            }
            for target in &cfg.targets {
                self.retention_deleted
                    .with_label_values(&[job.as_str(), target.as_str()]);
            }
        }
        for target in config.targets.keys() {
            self.upload_failures.with_label_values(&[target.as_str()]);
        }
        let channels = [
            ("email", config.alerts.email.is_some()),
            ("webhook", config.alerts.webhook_url.is_some()),
        ];
        for (channel, _) in channels.iter().filter(|(_, on)| *on) {
            self.alert_failures.with_label_values(&[*channel]);
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
