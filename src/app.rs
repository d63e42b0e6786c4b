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
        let mut targets: BTreeMap<String, Arc<dyn Target>> = BTreeMap::new();
        for (name, t) in &config.targets {
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

    /// A configured target; names were validated with the config.
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
