//! `config.yaml` → a validated [`Config`].
//!
//! Loading happens in three passes so that `strata check` can report every problem
//! at once, each with its key path: YAML is parsed into a tree and `${VAR}` /
//! `${VAR:-default}` are replaced inside string values (never in the raw text, so a
//! value cannot inject YAML); the tree is deserialised into raw structs while unknown
//! keys are collected; finally the raw structs are checked and turned into domain
//! types (time zone, cron, storage classes, database URLs, loaded keys).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod jobs;
mod raw;
mod targets;
mod validate;
mod window;

use jobs::validate_job;
use raw::RawConfig;
use targets::{check_class, validate_target};
use validate::{substitute, validate};

use serde::Deserialize;
use serde_yaml::Value;

use crate::domain::{
    Compression, DEFAULT_CHUNK_SIZE, DumpFormat, LockMode, MAX_CHUNK_SIZE, ObjectLock,
    ServerSideEncryption, StorageClass, UnknownStorageClass,
};
use crate::keys::{Keyring, MasterKey};
use crate::pg::DbUrl;
use crate::pipeline::cpu::cores;
use crate::policy::LifecycleRule;
use crate::policy::retention::Retention;
use crate::policy::schedule::CronSchedule;

/// The configuration could not be used; lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// Problems collected while checking, each prefixed with its key path.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.0.push(one_line(&format!("{path}: {msg}")));
    }
}

/// Control characters (a key with a newline in it, say) written as escapes, so
/// every problem stays on its own line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------- raw shapes

// ---------------------------------------------------------------- validated types

/// HTTP API settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
}

/// Alerting settings.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub email: Option<EmailConfig>,
    pub webhook_url: Option<String>,
    pub size_change_ratio: f64,
    pub monthly_cost_usd: f64,
    pub repeat_interval: Duration,
}

/// SMTP alert channel.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub smtp_url: String,
    pub from: String,
    pub to: Vec<String>,
    pub password_file: Option<PathBuf>,
    /// PEM certificate(s) trusted besides the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            email: None,
            webhook_url: None,
            size_change_ratio: 0.5,
            monthly_cost_usd: 10.0,
            repeat_interval: Duration::from_secs(4 * 3600),
        }
    }
}

/// How the daemon paces itself (`daemon:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// Runs at once across all jobs (default: the cores); the rest wait in turn.
    pub max_concurrent_runs: usize,
    /// How long running backups may finish after SIGTERM before they are aborted.
    pub shutdown_grace: Duration,
    /// Partial uploads and staging files older than this are removed at start-up
    /// (longer than any backup takes).
    pub stale_after: Duration,
    /// Time between the periodic storage, cost, lifecycle and compliance checks.
    pub check_interval: Duration,
    /// Time between polls while `--wait` waits for an archived object to thaw.
    pub thaw_poll: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            max_concurrent_runs: cores(),
            shutdown_grace: Duration::from_secs(300),
            stale_after: Duration::from_secs(6 * 3600),
            check_interval: Duration::from_secs(3600),
            thaw_poll: Duration::from_secs(300),
        }
    }
}

/// Encryption settings with loaded keys.
#[derive(Debug)]
pub struct EncryptionConfig {
    pub keyring: std::sync::Arc<Keyring>,
    pub chunk_size: u32,
}

/// Where a target stores objects.
#[derive(Debug, Clone)]
pub enum TargetKind {
    Local {
        path: PathBuf,
    },
    S3 {
        settings: Box<crate::storage::s3::S3Settings>,
        lifecycle: Vec<LifecycleRule>,
        object_lock: Option<ObjectLock>,
        manage_lifecycle: bool,
    },
}

/// A configured target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub prefix: String,
    pub offsite: bool,
    pub kind: TargetKind,
}

/// Whether pruning deletes on its own or waits for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    Automatic,
    Approval,
}

/// When uploads are read back and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    Always,
    Weekly,
    Never,
}

/// Restore-test and read-back settings.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub restore_test: Option<CronSchedule>,
    pub restore_into: Option<DbUrl>,
    pub read_back: ReadBack,
    /// Where a physical job's restore test makes its scratch data directory.
    pub scratch_dir: Option<PathBuf>,
    pub sql: Vec<String>,
}

/// Development refresh settings.
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    pub from: String,
    pub trim_sql: Vec<String>,
    pub mask_sql: Vec<String>,
}

/// What a logical backup keeps of the cluster besides the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalsConfig {
    /// Role password hashes too (needs a superuser backup role and encryption).
    pub role_passwords: bool,
}

/// A backup job.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub name: String,
    pub database_url: DbUrl,
    pub schedule: Option<CronSchedule>,
    pub file_prefix: String,
    pub format: DumpFormat,
    pub compression: Compression,
    pub targets: Vec<String>,
    pub retention: Retention,
    pub rpo: Duration,
    pub prune: PruneMode,
    pub verify: VerifyConfig,
    pub refresh: Option<RefreshConfig>,
    pub globals: GlobalsConfig,
    /// A run longer than this is cancelled like a shutdown (default 12h).
    pub timeout: Duration,
    /// What the job backs up: a database (`logical`, the default) or the whole
    /// cluster with its write-ahead log (`physical`).
    pub kind: JobKind,
}

/// What a job backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// One database with `pg_dump`.
    Logical,
    /// The cluster: base backups and the archived WAL between them, so any
    /// moment of the last `recovery_window` can be restored.
    Physical(PhysicalSettings),
}

impl JobKind {
    pub fn is_physical(&self) -> bool {
        matches!(self, Self::Physical { .. })
    }

    /// A physical job's settings.
    pub fn physical(&self) -> Option<&PhysicalSettings> {
        match self {
            Self::Physical(p) => Some(p),
            Self::Logical => None,
        }
    }
}

/// What only a physical job has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalSettings {
    /// Any moment this far back stays restorable (`retention.recovery_window`).
    pub recovery_window: Duration,
    /// Where the WAL comes from (`wal:`).
    pub wal: WalSource,
}

/// How a physical job's WAL reaches the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSource {
    /// The server's `archive_command` runs `strata wal-push` for each file.
    ArchiveCommand,
    /// The daemon streams it with `pg_receivewal` over a replication slot
    /// into `directory`, archives each finished segment and, every
    /// `upload_interval`, the segment still being written.
    Stream {
        slot: String,
        directory: PathBuf,
        upload_interval: Duration,
    },
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub timezone: chrono_tz::Tz,
    pub http: Option<HttpConfig>,
    pub state_url: Option<DbUrl>,
    pub encryption: Option<EncryptionConfig>,
    pub pricing: BTreeMap<StorageClass, f64>,
    pub alerts: AlertsConfig,
    /// Connections a restore loads with (`restore.jobs`, default: the cores).
    pub restore_jobs: usize,
    /// The `daemon:` section.
    pub daemon: DaemonSettings,
    /// Refuse manifests without a MAC (those written before manifests were
    /// authenticated) instead of reading them with a warning.
    pub require_authenticated_manifests: bool,
    pub targets: BTreeMap<String, TargetConfig>,
    pub jobs: BTreeMap<String, JobConfig>,
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// The file cannot be read, or any problem in it (all of them are listed).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Validates config text; `env` supplies `${VAR}` values.
    ///
    /// # Errors
    /// Every problem found, with key paths.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let mut problems = Problems::default();
        let mut tree: Value = serde_yaml::from_str(text)
            .map_err(|e| invalid(vec![one_line(&format!("not valid YAML: {e}"))]))?;
        if tree.is_null() {
            return Err(invalid(vec!["the file is empty".into()]));
        }
        substitute(&mut tree, "", env, &mut problems);
        let mut unknown = Vec::new();
        let raw: Result<RawConfig, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(tree, &mut |p: serde_ignored::Path<'_>| {
                // serde_ignored writes `?` for an Option it passed through.
                unknown.push(p.to_string().replace(".?", ""));
            }),
        );
        for key in unknown {
            problems.add(key, "unknown key");
        }
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                let at = e.path().to_string();
                problems.add(
                    if at == "." { "(top level)".into() } else { at },
                    e.into_inner(),
                );
                return Err(invalid(problems.0));
            }
        };
        let config = validate(raw, path, &mut problems);
        if problems.0.is_empty() {
            Ok(config.expect("no problems means a config"))
        } else {
            Err(invalid(problems.0))
        }
    }

    /// A job by name.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.get(name)
    }

    /// What is allowed but weakens the backups (`strata check` prints these,
    /// the daemon logs them at start-up).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.encryption.is_none() {
            let jobs: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            out.push(format!(
                "no encryption is configured: the backups of {} are stored readable and their manifests are unauthenticated (anyone who can write a target can alter them unnoticed)",
                jobs.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
