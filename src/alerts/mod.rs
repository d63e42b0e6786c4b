//! Alerts that reach people: email (SMTP) and webhook (JSON, Slack-compatible).
//!
//! Each alert has a kind, a job (when it is about one), a cause and what to do.
//! An alert is identified by its key (kind + job + detail); while it stays active
//! it is repeated at most every `alerts.repeat_interval`, and when the condition
//! clears a "resolved" message follows. A failing channel is logged and counted,
//! never a reason for a backup to fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::AlertsConfig;
use crate::metrics::Metrics;
use crate::policy::schedule::Clock;

/// How long one channel may take to deliver one alert. lettre's own 15 s
/// timeout does not cover every stall (seen: a server silent after AUTH over
/// TLS held a send for its 5-minute idle timeout).
pub const SEND_DEADLINE: Duration = Duration::from_secs(30);

pub mod email;
pub mod webhook;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    BackupFailed,
    TargetDegraded,
    SizeAnomaly,
    CostThreshold,
    ComplianceViolation,
    RpoExceeded,
    RestoreTestFailed,
    WalArchiveFailing,
    Test,
}

impl Kind {
    /// The label used in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackupFailed => "backup_failed",
            Self::TargetDegraded => "target_degraded",
            Self::SizeAnomaly => "size_anomaly",
            Self::CostThreshold => "cost_threshold",
            Self::ComplianceViolation => "compliance_violation",
            Self::RpoExceeded => "rpo_exceeded",
            Self::RestoreTestFailed => "restore_test_failed",
            Self::WalArchiveFailing => "wal_archive_failing",
            Self::Test => "test",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::BackupFailed => "backup failed",
            Self::TargetDegraded => "backup target degraded",
            Self::SizeAnomaly => "backup size anomaly",
            Self::CostThreshold => "storage cost above threshold",
            Self::ComplianceViolation => "compliance check failing",
            Self::RpoExceeded => "backup older than RPO",
            Self::RestoreTestFailed => "restore test failed",
            Self::WalArchiveFailing => "WAL archiving failing",
            Self::Test => "test alert",
        }
    }
}

/// One message to operators.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: Kind,
    pub job: Option<String>,
    /// Extra part of the identity (a check name), so two alerts of one kind and
    /// job can be active at once.
    #[serde(skip)]
    pub detail: String,
    pub at: DateTime<Utc>,
    /// What happened and why.
    pub cause: String,
    /// What to do about it.
    pub action: String,
    pub resolved: bool,
    pub host: String,
}

impl Alert {
    /// A new (firing) alert.
    pub fn new(
        kind: Kind,
        job: Option<&str>,
        cause: impl Into<String>,
        action: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            job: job.map(str::to_owned),
            detail: String::new(),
            at: Utc::now(),
            cause: cause.into(),
            action: action.into(),
            resolved: false,
            host: crate::state::host_id(),
        }
    }

    fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind.as_str(),
            self.job.as_deref().unwrap_or("-"),
            self.detail
        )
    }

    /// One-line subject.
    pub fn subject(&self) -> String {
        let state = if self.resolved { "RESOLVED" } else { "ALERT" };
        match &self.job {
            Some(job) => format!("[strata {state}] {}: {job}", self.kind.title()),
            None => format!("[strata {state}] {}", self.kind.title()),
        }
    }

    /// Plain-text body: job, time, cause, what to do.
    pub fn body(&self) -> String {
        let mut out = format!(
            "{}\n\njob:    {}\ntime:   {}\nhost:   {}\ncause:  {}\n",
            self.subject(),
            self.job.as_deref().unwrap_or("-"),
            self.at.to_rfc3339(),
            self.host,
            self.cause
        );
        if !self.resolved {
            out.push_str(&format!("action: {}\n", self.action));
        }
        out
    }
}

/// A channel failed to deliver.
#[derive(Debug, thiserror::Error)]
#[error("alert channel {channel}: {message}")]
pub struct AlertError {
    pub channel: String,
    pub message: String,
}

/// Somewhere alerts go.
#[async_trait]
pub trait Channel: Send + Sync {
    /// `email` or `webhook`.
    fn name(&self) -> &'static str;
    /// Delivers one alert.
    async fn send(&self, alert: &Alert) -> Result<(), AlertError>;
}

/// Every configured channel, with de-duplication of repeats.
pub struct Alerter {
    channels: Vec<Box<dyn Channel>>,
    repeat: Duration,
    /// Active alerts by key: when each was last sent.
    active: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Stamps alerts (and so paces repeats) when set; the daemon's clock.
    clock: Option<Arc<dyn Clock>>,
}

impl Alerter {
    /// Channels from the config (none configured: alerts are only logged).
    ///
    /// # Errors
    /// The SMTP URL or password file cannot be used.
    pub fn from_config(cfg: &AlertsConfig) -> Result<Self, AlertError> {
        let mut channels: Vec<Box<dyn Channel>> = Vec::new();
        if let Some(e) = &cfg.email {
            channels.push(Box::new(email::Email::new(e)?));
        }
        if let Some(url) = &cfg.webhook_url {
            channels.push(Box::new(webhook::Webhook::new(url)));
        }
        Ok(Self::with_channels(channels, cfg.repeat_interval))
    }

    /// An alerter over the given channels.
    pub fn with_channels(channels: Vec<Box<dyn Channel>>, repeat: Duration) -> Self {
        Self {
            channels,
            repeat,
            active: Mutex::default(),
            clock: None,
        }
    }

    /// Stamps every alert with `clock`'s time (tests move it).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    fn stamp(&self, alert: &mut Alert) {
        if let Some(clock) = &self.clock {
            alert.at = clock.now();
        }
    }

    /// Sends a firing alert unless the same one was sent within the repeat
    /// interval.
    pub async fn raise(&self, mut alert: Alert, metrics: Option<&Metrics>) {
        self.stamp(&mut alert);
        let key = alert.key();
        {
            let mut active = self
                .active
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(last) = active.get(&key) {
                let since = (alert.at - *last).to_std().unwrap_or_default();
                if since < self.repeat {
                    tracing::debug!(key, "alert still active; not repeated yet");
                    if let Some(m) = metrics {
                        m.alerts_suppressed
                            .with_label_values(&[alert.kind.as_str()])
                            .inc();
                    }
                    return;
                }
            }
            active.insert(key, alert.at);
        }
        tracing::warn!(kind = alert.kind.as_str(), job = alert.job.as_deref().unwrap_or("-"), cause = %alert.cause, "alert");
        self.send_all(&alert, metrics).await;
    }

    /// Sends a resolved message if the alert `kind`/`job`/`detail` is active.
    pub async fn resolve(
        &self,
        kind: Kind,
        job: Option<&str>,
        detail: &str,
        cause: impl Into<String>,
        metrics: Option<&Metrics>,
    ) {
        let mut alert = Alert::new(kind, job, cause, "");
        alert.detail = detail.to_owned();
        alert.resolved = true;
        self.stamp(&mut alert);
        if self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&alert.key())
            .is_none()
        {
            return;
        }
        tracing::info!(
            kind = kind.as_str(),
            job = job.unwrap_or("-"),
            "alert resolved"
        );
        self.send_all(&alert, metrics).await;
    }

    /// Delivers to every channel at once, each within [`SEND_DEADLINE`] (a
    /// server that stops answering mid-session must not hold up the others, nor
    /// the run that raised the alert); returns each channel's outcome.
    pub async fn send_all(
        &self,
        alert: &Alert,
        metrics: Option<&Metrics>,
    ) -> Vec<(&'static str, Result<(), AlertError>)> {
        let sends = self.channels.iter().map(|c| async move {
            let result = tokio::time::timeout(SEND_DEADLINE, c.send(alert))
                .await
                .unwrap_or_else(|_| {
                    Err(AlertError {
                        channel: c.name().into(),
                        message: format!(
                            "no answer within {}",
                            humantime::format_duration(SEND_DEADLINE)
                        ),
                    })
                });
            (c, result)
        });
        let mut out = Vec::new();
        for (c, result) in futures::future::join_all(sends).await {
            match &result {
                Ok(()) => {
                    if let Some(m) = metrics {
                        m.alerts_sent
                            .with_label_values(&[c.name(), alert.kind.as_str()])
                            .inc();
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = c.name(), kind = alert.kind.as_str(), error = %e, "alert not delivered");
                    if let Some(m) = metrics {
                        m.alert_failures.with_label_values(&[c.name()]).inc();
                    }
                }
            }
            out.push((c.name(), result));
        }
        out
    }

    /// Whether any channel is configured.
    pub fn has_channels(&self) -> bool {
        !self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Recorder(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Channel for Recorder {
        fn name(&self) -> &'static str {
            "webhook"
        }
        async fn send(&self, alert: &Alert) -> Result<(), AlertError> {
            self.0.lock().unwrap().push(alert.subject());
            Ok(())
        }
    }

    #[tokio::test]
    async fn repeats_are_held_back_and_recovery_is_announced_once() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let alerter = Alerter::with_channels(
            vec![Box::new(Recorder(sent.clone()))],
            Duration::from_secs(3600),
        );
        let fail = |at: DateTime<Utc>| {
            let mut a = Alert::new(
                Kind::BackupFailed,
                Some("prod"),
                "pg_dump exited 1",
                "check the server",
            );
            a.at = at;
            a
        };
        let t0 = Utc::now();
        alerter.raise(fail(t0), None).await;
        alerter
            .raise(fail(t0 + chrono::Duration::minutes(10)), None)
            .await;
        // Another job's failure is another alert.
        alerter
            .raise(Alert::new(Kind::BackupFailed, Some("dev"), "x", "y"), None)
            .await;
        alerter
            .raise(fail(t0 + chrono::Duration::minutes(61)), None)
            .await;
        alerter
            .resolve(
                Kind::BackupFailed,
                Some("prod"),
                "",
                "backup succeeded",
                None,
            )
            .await;
        alerter
            .resolve(
                Kind::BackupFailed,
                Some("prod"),
                "",
                "backup succeeded",
                None,
            )
            .await;
        assert_eq!(
            *sent.lock().unwrap(),
            [
                "[strata ALERT] backup failed: prod",
                "[strata ALERT] backup failed: dev",
                "[strata ALERT] backup failed: prod",
                "[strata RESOLVED] backup failed: prod",
            ]
        );
    }

    #[test]
    fn the_body_says_job_time_cause_and_action() {
        let a = Alert::new(
            Kind::SizeAnomaly,
            Some("prod"),
            "stored size fell by 80%",
            "compare the row counts",
        );
        let body = a.body();
        for part in [
            "job:    prod",
            "cause:  stored size fell by 80%",
            "action: compare the row counts",
            "time:   ",
        ] {
            assert!(body.contains(part), "{part}: {body}");
        }
    }
}
