//! The application: validated config plus the targets built from it, shared by the
//! CLI commands and (later) the daemon.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, JobConfig, TargetKind};
use crate::storage::Target;
use crate::storage::local::LocalTarget;
use crate::storage::s3::S3Target;

/// A job name that is not in the config.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown job '{job}' (configured: {known})")]
pub struct UnknownJob {
    pub job: String,
    pub known: String,
}

/// Config and live target clients.
pub struct Strata {
    config: Arc<Config>,
    targets: BTreeMap<String, Arc<dyn Target>>,
}

impl Strata {
    /// Builds a client for every configured target (no network calls yet).
    pub async fn build(config: Config) -> Self {
        let all: Vec<String> = config.targets.keys().cloned().collect();
        Self::build_with(config, &all).await
    }

    /// Builds clients only for the targets of `job` (none when there is no
    /// such job): `wal-push` and `wal-fetch` run once per WAL file, and an S3
    /// client they do not use still reads the AWS configuration.
    pub async fn build_for_job(config: Config, job: &str) -> Self {
        let names = config
            .job(job)
            .map(|j| j.targets.clone())
            .unwrap_or_default();
        Self::build_with(config, &names).await
    }

    async fn build_with(config: Config, names: &[String]) -> Self {
        let mut targets: BTreeMap<String, Arc<dyn Target>> = BTreeMap::new();
        for (name, t) in config.targets.iter().filter(|(n, _)| names.contains(n)) {
            let target: Arc<dyn Target> = match &t.kind {
                TargetKind::Local { path } => {
                    Arc::new(LocalTarget::new(name.clone(), path.clone()))
                }
                TargetKind::S3 { settings, .. } => {
                    Arc::new(S3Target::new(name.clone(), (**settings).clone()).await)
                }
            };
            targets.insert(name.clone(), target);
        }
        Self {
            config: Arc::new(config),
            targets,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A configured target (names were validated with the config; built by
    /// [`Self::build_for_job`], only that job's).
    pub fn target(&self, name: &str) -> Arc<dyn Target> {
        self.targets[name].clone()
    }

    /// A job by name.
    ///
    /// # Errors
    /// No such job.
    pub fn job(&self, name: &str) -> Result<&JobConfig, UnknownJob> {
        self.config.job(name).ok_or_else(|| UnknownJob {
            job: name.to_owned(),
            known: self
                .config
                .jobs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The key prefix of a target.
    pub fn prefix(&self, target: &str) -> &str {
        &self.config.targets[target].prefix
    }
}
