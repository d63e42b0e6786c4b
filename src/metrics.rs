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
    pub upload_failures: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let runs = IntCounterVec::new(
            Opts::new(
                "strata_backup_runs_total",
                "Backup runs by result (success, degraded, failed, aborted).",
            ),
            &["job", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(runs.clone()))
            .expect("unique metric");
        let running = IntGaugeVec::new(
            Opts::new("strata_backup_running", "1 while a backup of the job runs."),
            &["job"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(running.clone()))
            .expect("unique metric");
        let upload_failures = IntCounterVec::new(
            Opts::new(
                "strata_target_upload_failures_total",
                "Backups that failed to reach a target.",
            ),
            &["target"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upload_failures.clone()))
            .expect("unique metric");
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
            upload_failures,
            registry,
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
