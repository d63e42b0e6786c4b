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

use serde::Deserialize;
use serde_yaml::Value;

use crate::domain::{
    Compression, DEFAULT_CHUNK_SIZE, DumpFormat, LockMode, MAX_CHUNK_SIZE, ObjectLock,
    ServerSideEncryption,
};
use crate::keys::{Keyring, MasterKey};
use crate::pg::DbUrl;
use crate::pipeline::cpu::cores;
use crate::policy::LifecycleRule;
use crate::policy::retention::Retention;
use crate::policy::schedule::CronSchedule;

/// Storage classes strata knows prices and lifecycle transitions for.
pub const STORAGE_CLASSES: [&str; 4] = ["STANDARD", "STANDARD_IA", "GLACIER", "DEEP_ARCHIVE"];
const OTHER_CLASSES: [&str; 5] = [
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "REDUCED_REDUNDANCY",
    "EXPRESS_ONEZONE",
];

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

#[derive(Deserialize)]
struct RawConfig {
    timezone: Option<String>,
    http: Option<RawHttp>,
    state: Option<RawState>,
    encryption: Option<RawEncryption>,
    pricing: Option<BTreeMap<String, f64>>,
    alerts: Option<RawAlerts>,
    restore: Option<RawRestore>,
    daemon: Option<RawDaemon>,
    require_authenticated_manifests: Option<bool>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    jobs: BTreeMap<String, RawJob>,
}

#[derive(Deserialize)]
struct RawRestore {
    jobs: Option<usize>,
}

#[derive(Deserialize)]
struct RawDaemon {
    max_concurrent_runs: Option<usize>,
    shutdown_grace: Option<String>,
    stale_upload_age: Option<String>,
    check_interval: Option<String>,
    thaw_poll: Option<String>,
}

#[derive(Deserialize)]
struct RawHttp {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawState {
    database_url: String,
}

#[derive(Deserialize)]
struct RawEncryption {
    active: String,
    keys: BTreeMap<String, PathBuf>,
    chunk_size: Option<u32>,
}

#[derive(Deserialize)]
struct RawAlerts {
    email: Option<RawEmail>,
    webhook: Option<RawWebhook>,
    size_change_ratio: Option<f64>,
    monthly_cost_usd: Option<f64>,
    repeat_interval: Option<String>,
}

#[derive(Deserialize)]
struct RawEmail {
    smtp_url: String,
    from: String,
    to: Vec<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawWebhook {
    url: String,
}

#[derive(Deserialize)]
struct RawTarget {
    kind: String,
    path: Option<PathBuf>,
    prefix: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    path_style: Option<bool>,
    server_side_encryption: Option<String>,
    storage_class: Option<String>,
    lifecycle: Option<Vec<RawLifecycleRule>>,
    object_lock: Option<RawObjectLock>,
    manage_lifecycle: Option<bool>,
    offsite: Option<bool>,
    tags: Option<BTreeMap<String, String>>,
    part_size_mib: Option<usize>,
    parts_in_flight: Option<usize>,
    request_timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawLifecycleRule {
    after_days: u32,
    storage_class: Option<String>,
    expire: Option<bool>,
}

#[derive(Deserialize)]
struct RawObjectLock {
    mode: String,
    days: u32,
}

#[derive(Deserialize)]
struct RawJob {
    database_url: String,
    schedule: Option<String>,
    file_prefix: Option<String>,
    format: Option<DumpFormat>,
    compression: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
    retention: Option<RawRetention>,
    rpo: Option<String>,
    prune: Option<String>,
    verify: Option<RawVerify>,
    refresh: Option<RawRefresh>,
    globals: Option<RawGlobals>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawGlobals {
    role_passwords: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawRetention {
    daily: Option<u32>,
    weekly: Option<u32>,
    monthly: Option<u32>,
    yearly: Option<u32>,
}

#[derive(Deserialize)]
struct RawVerify {
    restore_test: Option<String>,
    restore_into: Option<String>,
    read_back: Option<String>,
    #[serde(default)]
    sql: Vec<String>,
}

#[derive(Deserialize)]
struct RawRefresh {
    from: String,
    #[serde(default)]
    trim_sql: Vec<String>,
    #[serde(default)]
    mask_sql: Vec<String>,
}

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
    pub stale_upload_age: Duration,
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
            stale_upload_age: Duration::from_secs(6 * 3600),
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
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub timezone: chrono_tz::Tz,
    pub http: Option<HttpConfig>,
    pub state_url: Option<DbUrl>,
    pub encryption: Option<EncryptionConfig>,
    pub pricing: BTreeMap<String, f64>,
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

/// Replaces `${VAR}` and `${VAR:-default}` in every string value of the tree.
fn substitute(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    match v {
        Value::String(s) => match expand(s, env) {
            Ok(out) => *s = out,
            Err(var) => problems.add(
                path,
                format!(
                    "environment variable {var} is not set (use ${{{var}:-default}} for a default)"
                ),
            ),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, &child, env, problems);
            }
        }
        Value::Tagged(t) => substitute(&mut t.value, path, env, problems),
        _ => {}
    }
}

/// Expands one string; `Err(name)` for an unset variable without default.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + len];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (
            env(name).filter(|v| !v.is_empty() || default.is_none()),
            default,
        ) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(name.to_owned()),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_class(class: &str, path: &str, problems: &mut Problems) -> bool {
    if STORAGE_CLASSES.contains(&class) || OTHER_CLASSES.contains(&class) {
        true
    } else {
        problems.add(
            path,
            format!(
                "unknown storage class '{class}' (expected one of {})",
                STORAGE_CLASSES.join(", ")
            ),
        );
        false
    }
}

fn existing_file(path: &Path, at: &str, problems: &mut Problems) {
    if !path.is_file() {
        problems.add(at, format!("file {} does not exist", path.display()));
    }
}

fn db_url(text: &str, at: &str, problems: &mut Problems) -> Option<DbUrl> {
    text.parse::<DbUrl>().map_err(|e| problems.add(at, e)).ok()
}

fn cron(text: &str, at: &str, problems: &mut Problems) -> Option<CronSchedule> {
    CronSchedule::parse(text)
        .map_err(|e| problems.add(at, e))
        .ok()
}

fn validate(raw: RawConfig, path: &Path, p: &mut Problems) -> Option<Config> {
    let timezone = match raw
        .timezone
        .as_deref()
        .unwrap_or("UTC")
        .parse::<chrono_tz::Tz>()
    {
        Ok(tz) => Some(tz),
        Err(_) => {
            p.add(
                "timezone",
                format!(
                    "unknown time zone '{}' (use an IANA name such as America/New_York)",
                    raw.timezone.unwrap_or_default()
                ),
            );
            None
        }
    };
    let http = raw.http.and_then(|h| {
        let listen = h.listen.as_deref().unwrap_or("127.0.0.1:9187");
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|_| p.add("http.listen", format!("'{listen}' is not an address:port")))
            .ok();
        for (key, file) in [
            ("http.token_file", &h.token_file),
            ("http.admin_token_file", &h.admin_token_file),
        ] {
            if let Some(f) = file {
                existing_file(f, key, p);
            }
        }
        Some(HttpConfig {
            listen: listen?,
            token_file: h.token_file,
            admin_token_file: h.admin_token_file,
        })
    });
    let state_url = raw
        .state
        .and_then(|s| db_url(&s.database_url, "state.database_url", p));
    let encryption = raw.encryption.and_then(|e| validate_encryption(e, p));
    let mut pricing: BTreeMap<String, f64> = [
        ("STANDARD", 0.023),
        ("STANDARD_IA", 0.0125),
        ("GLACIER", 0.004),
        ("DEEP_ARCHIVE", 0.00099),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (class, price) in raw.pricing.unwrap_or_default() {
        let at = format!("pricing.{class}");
        if check_class(&class, &at, p) {
            if price.is_finite() && price >= 0.0 {
                pricing.insert(class, price);
            } else {
                p.add(at, "price must be a non-negative number (USD per GB-month)");
            }
        }
    }
    let alerts = raw
        .alerts
        .map_or_else(AlertsConfig::default, |a| validate_alerts(a, p));
    let daemon = validate_daemon(raw.daemon, p);
    let restore_jobs = match raw.restore.and_then(|r| r.jobs) {
        None => cores(),
        Some(n) if (1..=64).contains(&n) => n,
        Some(_) => {
            p.add("restore.jobs", "must be between 1 and 64");
            1
        }
    };
    let mut targets = BTreeMap::new();
    for (name, t) in raw.targets {
        if !valid_name(&name) {
            p.add(
                format!("targets.{name}"),
                "target names use lowercase letters, digits, - and _",
            );
        }
        if let Some(t) = validate_target(&name, t, p) {
            targets.insert(name, t);
        }
    }
    let job_names: Vec<String> = raw.jobs.keys().cloned().collect();
    let mut jobs = BTreeMap::new();
    for (name, j) in raw.jobs {
        if let Some(j) = validate_job(&name, j, &targets, &job_names, p) {
            if j.globals.role_passwords && encryption.is_none() {
                p.add(
                    format!("jobs.{name}.globals.role_passwords"),
                    "password hashes are only stored encrypted; configure encryption",
                );
            }
            jobs.insert(name, j);
        }
    }
    if jobs.is_empty() && p.0.is_empty() {
        p.add("jobs", "no jobs are configured");
    }
    if raw.require_authenticated_manifests == Some(true) && encryption.is_none() {
        p.add(
            "require_authenticated_manifests",
            "manifests are authenticated with the encryption key; configure encryption",
        );
    }
    if let Some(state) = &state_url {
        for job in jobs.values() {
            if state.to_string() == job.database_url.to_string() {
                p.add(
                    "state.database_url",
                    format!(
                        "is the database job '{}' backs up; give the state a database of its own",
                        job.name
                    ),
                );
            }
        }
    }
    Some(Config {
        path: path.to_owned(),
        timezone: timezone?,
        http,
        state_url,
        encryption,
        pricing,
        alerts,
        restore_jobs,
        daemon,
        require_authenticated_manifests: raw.require_authenticated_manifests.unwrap_or(false),
        targets,
        jobs,
    })
}

fn validate_encryption(e: RawEncryption, p: &mut Problems) -> Option<EncryptionConfig> {
    let chunk_size = e.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    if !(1024..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        p.add(
            "encryption.chunk_size",
            format!("must be between 1024 and {MAX_CHUNK_SIZE}"),
        );
    }
    if e.keys.is_empty() {
        p.add(
            "encryption.keys",
            "at least one key is required (create one with `strata keygen --out FILE`)",
        );
    }
    let mut loaded = Vec::new();
    for (id, file) in &e.keys {
        let at = format!("encryption.keys.{id}");
        if id.is_empty() || id.len() > 255 {
            p.add(&at, "key ids are 1 to 255 bytes");
            continue;
        }
        match MasterKey::load(id.clone(), file) {
            Ok(k) => loaded.push(k),
            Err(err) => p.add(&at, err),
        }
    }
    if !e.keys.contains_key(&e.active) {
        p.add(
            "encryption.active",
            format!("'{}' is not one of encryption.keys", e.active),
        );
        return None;
    }
    let keyring = Keyring::new(&e.active, loaded)?;
    Some(EncryptionConfig {
        keyring: std::sync::Arc::new(keyring),
        chunk_size,
    })
}

fn validate_daemon(raw: Option<RawDaemon>, p: &mut Problems) -> DaemonSettings {
    let mut d = DaemonSettings::default();
    let Some(raw) = raw else { return d };
    match raw.max_concurrent_runs {
        None => {}
        Some(n) if (1..=256).contains(&n) => d.max_concurrent_runs = n,
        Some(_) => p.add("daemon.max_concurrent_runs", "must be between 1 and 256"),
    }
    let durations = [
        (
            "shutdown_grace",
            raw.shutdown_grace,
            &mut d.shutdown_grace,
            false,
        ),
        (
            "stale_upload_age",
            raw.stale_upload_age,
            &mut d.stale_upload_age,
            false,
        ),
        (
            "check_interval",
            raw.check_interval,
            &mut d.check_interval,
            true,
        ),
        ("thaw_poll", raw.thaw_poll, &mut d.thaw_poll, true),
    ];
    for (key, text, slot, positive) in durations {
        let Some(text) = text else { continue };
        match humantime::parse_duration(&text) {
            Ok(v) if positive && v.is_zero() => {
                p.add(format!("daemon.{key}"), "must be longer than 0s");
            }
            Ok(v) => *slot = v,
            Err(e) => p.add(
                format!("daemon.{key}"),
                format!("'{text}' is not a duration: {e}"),
            ),
        }
    }
    d
}

fn validate_alerts(a: RawAlerts, p: &mut Problems) -> AlertsConfig {
    let mut out = AlertsConfig::default();
    if let Some(email) = a.email {
        if !(email.smtp_url.starts_with("smtp://") || email.smtp_url.starts_with("smtps://")) {
            p.add(
                "alerts.email.smtp_url",
                "must start with smtp:// or smtps://",
            );
        }
        if email.to.is_empty() {
            p.add("alerts.email.to", "at least one recipient is required");
        }
        for (i, addr) in email.to.iter().chain([&email.from]).enumerate() {
            if !addr.contains('@') {
                let at = if i < email.to.len() {
                    format!("alerts.email.to[{i}]")
                } else {
                    "alerts.email.from".into()
                };
                p.add(at, format!("'{addr}' is not an email address"));
            }
        }
        if let Some(f) = &email.password_file {
            existing_file(f, "alerts.email.password_file", p);
        }
        if let Some(f) = &email.ca_file {
            existing_file(f, "alerts.email.ca_file", p);
            let tls = email.smtp_url.starts_with("smtps://")
                || email.smtp_url.contains("tls=required")
                || email.smtp_url.contains("tls=opportunistic");
            if !tls {
                p.add(
                    "alerts.email.ca_file",
                    "only used with TLS: smtps://, or smtp:// with ?tls=required",
                );
            }
        }
        out.email = Some(EmailConfig {
            smtp_url: email.smtp_url,
            from: email.from,
            to: email.to,
            password_file: email.password_file,
            ca_file: email.ca_file,
        });
    }
    if let Some(w) = a.webhook {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            p.add("alerts.webhook.url", "must be an http:// or https:// URL");
        }
        out.webhook_url = Some(w.url);
    }
    if let Some(r) = a.size_change_ratio {
        if r.is_finite() && r > 0.0 {
            out.size_change_ratio = r;
        } else {
            p.add(
                "alerts.size_change_ratio",
                "must be a positive number (0.5 = 50%)",
            );
        }
    }
    if let Some(c) = a.monthly_cost_usd {
        if c.is_finite() && c >= 0.0 {
            out.monthly_cost_usd = c;
        } else {
            p.add("alerts.monthly_cost_usd", "must be a non-negative number");
        }
    }
    if let Some(r) = a.repeat_interval {
        match humantime::parse_duration(&r) {
            Ok(d) => out.repeat_interval = d,
            Err(e) => p.add("alerts.repeat_interval", format!("'{r}': {e}")),
        }
    }
    out
}

fn validate_target(name: &str, t: RawTarget, p: &mut Problems) -> Option<TargetConfig> {
    let at = |key: &str| format!("targets.{name}.{key}");
    let prefix = t
        .prefix
        .clone()
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned();
    let offsite = t.offsite.unwrap_or(false);
    match t.kind.as_str() {
        "local" => {
            let s3_only = [
                ("bucket", t.bucket.is_some()),
                ("region", t.region.is_some()),
                ("endpoint", t.endpoint.is_some()),
                ("path_style", t.path_style.is_some()),
                ("server_side_encryption", t.server_side_encryption.is_some()),
                ("storage_class", t.storage_class.is_some()),
                ("lifecycle", t.lifecycle.is_some()),
                ("object_lock", t.object_lock.is_some()),
                ("manage_lifecycle", t.manage_lifecycle.is_some()),
                ("tags", t.tags.is_some()),
                ("part_size_mib", t.part_size_mib.is_some()),
                ("parts_in_flight", t.parts_in_flight.is_some()),
                ("request_timeout", t.request_timeout.is_some()),
            ];
            for (key, set) in s3_only {
                if set {
                    p.add(at(key), "only valid for kind: s3");
                }
            }
            let Some(path) = t.path else {
                p.add(at("path"), "required for kind: local");
                return None;
            };
            Some(TargetConfig {
                name: name.to_owned(),
                prefix,
                offsite,
                kind: TargetKind::Local { path },
            })
        }
        "s3" => {
            if t.path.is_some() {
                p.add(at("path"), "only valid for kind: local");
            }
            let Some(bucket) = t.bucket else {
                p.add(at("bucket"), "required for kind: s3");
                return None;
            };
            if !valid_bucket(&bucket) {
                p.add(
                    at("bucket"),
                    format!("'{bucket}' is not a valid S3 bucket name"),
                );
            }
            let mut settings = crate::storage::s3::S3Settings::new(
                bucket,
                t.region.unwrap_or_else(|| "us-east-1".into()),
            );
            settings.endpoint = t.endpoint.filter(|e| !e.is_empty());
            if let Some(e) = &settings.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    p.add(at("endpoint"), format!("'{e}' is not an http(s) URL"));
                }
            }
            // S3-compatible stores (moto, MinIO, Garage) are reached by address,
            // where virtual-hosted names would not resolve.
            settings.path_style = t.path_style.unwrap_or(settings.endpoint.is_some());
            settings.server_side_encryption = match t.server_side_encryption.as_deref() {
                None | Some("AES256") => Some(ServerSideEncryption::S3Managed),
                Some("aws:kms") => Some(ServerSideEncryption::Kms),
                Some("none") => None,
                Some(other) => {
                    p.add(
                        at("server_side_encryption"),
                        format!("'{other}' is not AES256, aws:kms or none"),
                    );
                    None
                }
            };
            if let Some(class) = &t.storage_class {
                check_class(class, &at("storage_class"), p);
            }
            settings.storage_class = t.storage_class;
            settings.tags = t.tags.unwrap_or_default().into_iter().collect();
            if let Some(mib) = t.part_size_mib {
                if (5..=5120).contains(&mib) {
                    settings.part_size = mib * 1024 * 1024;
                } else {
                    p.add(at("part_size_mib"), "must be between 5 and 5120");
                }
            }
            if let Some(text) = &t.request_timeout {
                match humantime::parse_duration(text) {
                    Ok(d) if d >= Duration::from_secs(1) => settings.request_timeout = d,
                    Ok(_) => p.add(at("request_timeout"), "must be at least 1s"),
                    Err(e) => p.add(at("request_timeout"), format!("'{text}': {e}")),
                }
            }
            if let Some(n) = t.parts_in_flight {
                if (1..=64).contains(&n) {
                    settings.parts_in_flight = n;
                } else {
                    p.add(at("parts_in_flight"), "must be between 1 and 64");
                }
            }
            let lifecycle = validate_lifecycle(name, t.lifecycle.unwrap_or_default(), p);
            settings.tag_backups = lifecycle.iter().any(|r| r.storage_class.is_some());
            let object_lock = t.object_lock.and_then(|l| {
                let mode = l.mode.parse::<LockMode>();
                if let Err(e) = &mode {
                    p.add(at("object_lock.mode"), e);
                }
                if l.days == 0 {
                    p.add(at("object_lock.days"), "must be at least 1");
                }
                Some(ObjectLock {
                    mode: mode.ok()?,
                    days: l.days,
                })
            });
            settings.object_lock.clone_from(&object_lock);
            Some(TargetConfig {
                name: name.to_owned(),
                prefix,
                offsite,
                kind: TargetKind::S3 {
                    settings: Box::new(settings),
                    lifecycle,
                    object_lock,
                    manage_lifecycle: t.manage_lifecycle.unwrap_or(false),
                },
            })
        }
        other => {
            p.add(
                at("kind"),
                format!("unknown kind '{other}' (expected local or s3)"),
            );
            None
        }
    }
}

fn validate_lifecycle(
    target: &str,
    rules: Vec<RawLifecycleRule>,
    p: &mut Problems,
) -> Vec<LifecycleRule> {
    let mut out = Vec::new();
    let mut last_day = 0;
    let count = rules.len();
    for (i, r) in rules.into_iter().enumerate() {
        let at = format!("targets.{target}.lifecycle[{i}]");
        if i > 0 && r.after_days <= last_day {
            p.add(&at, "after_days must increase from rule to rule");
        }
        last_day = r.after_days;
        match (r.storage_class, r.expire.unwrap_or(false)) {
            (Some(class), false) => {
                check_class(&class, &format!("{at}.storage_class"), p);
                out.push(LifecycleRule {
                    after_days: r.after_days,
                    storage_class: Some(class),
                });
            }
            (None, true) => {
                if i + 1 != count {
                    p.add(&at, "the expire rule must be the last one");
                }
                out.push(LifecycleRule {
                    after_days: r.after_days,
                    storage_class: None,
                });
            }
            _ => p.add(&at, "give either storage_class or expire: true"),
        }
    }
    out
}

fn validate_job(
    name: &str,
    j: RawJob,
    targets: &BTreeMap<String, TargetConfig>,
    jobs: &[String],
    p: &mut Problems,
) -> Option<JobConfig> {
    let at = |key: &str| format!("jobs.{name}.{key}");
    if !valid_name(name) {
        p.add(
            format!("jobs.{name}"),
            "job names use lowercase letters, digits, - and _",
        );
    }
    let database_url = db_url(&j.database_url, &at("database_url"), p);
    let schedule = j
        .schedule
        .as_deref()
        .and_then(|s| cron(s, &at("schedule"), p));
    let file_prefix = j.file_prefix.unwrap_or_else(|| name.to_owned());
    if !valid_name(&file_prefix) {
        p.add(at("file_prefix"), "use lowercase letters, digits, - and _");
    }
    let compression = match j
        .compression
        .as_deref()
        .unwrap_or("gzip:6")
        .parse::<Compression>()
    {
        Ok(c) => Some(c),
        Err(e) => {
            p.add(at("compression"), e);
            None
        }
    };
    if j.targets.is_empty() {
        p.add(at("targets"), "at least one target is required");
    }
    for (i, t) in j.targets.iter().enumerate() {
        if !targets.contains_key(t) {
            let known = targets.keys().cloned().collect::<Vec<_>>().join(", ");
            p.add(
                format!("jobs.{name}.targets[{i}]"),
                format!("unknown target '{t}' (known: {known})"),
            );
        }
    }
    let r = j.retention.unwrap_or_default();
    let retention = Retention {
        daily: r.daily.unwrap_or(7),
        weekly: r.weekly.unwrap_or(0),
        monthly: r.monthly.unwrap_or(0),
        yearly: r.yearly.unwrap_or(0),
    };
    if retention == Retention::default() {
        p.add(at("retention"), "keeps nothing; set at least daily: 1");
    }
    let rpo = match humantime::parse_duration(j.rpo.as_deref().unwrap_or("24h")) {
        Ok(d) if d >= Duration::from_secs(60) => Some(d),
        Ok(_) => {
            p.add(at("rpo"), "must be at least 1m");
            None
        }
        Err(e) => {
            p.add(at("rpo"), format!("'{}': {e}", j.rpo.unwrap_or_default()));
            None
        }
    };
    let timeout = match humantime::parse_duration(j.timeout.as_deref().unwrap_or("12h")) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        Ok(_) => {
            p.add(at("timeout"), "must be at least 1s");
            None
        }
        Err(e) => {
            p.add(
                at("timeout"),
                format!("'{}': {e}", j.timeout.clone().unwrap_or_default()),
            );
            None
        }
    };
    let prune = match j.prune.as_deref().unwrap_or("automatic") {
        "automatic" => Some(PruneMode::Automatic),
        "approval" => Some(PruneMode::Approval),
        other => {
            p.add(
                at("prune"),
                format!("'{other}' is not automatic or approval"),
            );
            None
        }
    };
    let verify = match j.verify {
        None => Some(VerifyConfig {
            restore_test: None,
            restore_into: None,
            read_back: ReadBack::Never,
            sql: Vec::new(),
        }),
        Some(v) => {
            let restore_test = v
                .restore_test
                .as_deref()
                .and_then(|s| cron(s, &at("verify.restore_test"), p));
            let restore_into = v
                .restore_into
                .as_deref()
                .filter(|s| !s.is_empty())
                .and_then(|s| db_url(s, &at("verify.restore_into"), p));
            if restore_test.is_some() && restore_into.is_none() {
                p.add(
                    at("verify.restore_into"),
                    "required when verify.restore_test is set",
                );
            }
            let read_back = match v.read_back.as_deref().unwrap_or("never") {
                "always" => Some(ReadBack::Always),
                "weekly" => Some(ReadBack::Weekly),
                "never" => Some(ReadBack::Never),
                other => {
                    p.add(
                        at("verify.read_back"),
                        format!("'{other}' is not always, weekly or never"),
                    );
                    None
                }
            };
            read_back.map(|read_back| VerifyConfig {
                restore_test,
                restore_into,
                read_back,
                sql: v.sql,
            })
        }
    };
    let refresh = j.refresh.map(|r| {
        if r.from == name {
            p.add(at("refresh.from"), "a job cannot refresh from itself");
        } else if !jobs.contains(&r.from) {
            p.add(at("refresh.from"), format!("unknown job '{}'", r.from));
        }
        RefreshConfig {
            from: r.from,
            trim_sql: r.trim_sql,
            mask_sql: r.mask_sql,
        }
    });
    Some(JobConfig {
        name: name.to_owned(),
        database_url: database_url?,
        schedule,
        file_prefix,
        format: j.format.unwrap_or(DumpFormat::Plain),
        compression: compression?,
        targets: j.targets,
        retention,
        rpo: rpo?,
        prune: prune?,
        verify: verify?,
        refresh,
        globals: GlobalsConfig {
            role_passwords: j.globals.and_then(|g| g.role_passwords).unwrap_or(false),
        },
        timeout: timeout?,
    })
}

#[cfg(test)]
mod tests {
    /// The field names a struct's `Deserialize` accepts, read from serde itself.
    fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Capture(&'static [&'static str]);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("captured")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Capture {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0 = fields;
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }
        let mut c = Capture(&[]);
        let _ = T::deserialize(&mut c);
        c.0
    }

    #[test]
    fn the_reference_documents_every_key_the_config_accepts() {
        let reference = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config-reference.yaml"),
        )
        .unwrap();
        let all = [
            ("", fields::<RawConfig>()),
            ("http", fields::<RawHttp>()),
            ("state", fields::<RawState>()),
            ("encryption", fields::<RawEncryption>()),
            ("alerts", fields::<RawAlerts>()),
            ("alerts.email", fields::<RawEmail>()),
            ("alerts.webhook", fields::<RawWebhook>()),
            ("targets.*", fields::<RawTarget>()),
            ("targets.*.lifecycle[]", fields::<RawLifecycleRule>()),
            ("targets.*.object_lock", fields::<RawObjectLock>()),
            ("jobs.*", fields::<RawJob>()),
            ("jobs.*.retention", fields::<RawRetention>()),
            ("jobs.*.verify", fields::<RawVerify>()),
            ("jobs.*.refresh", fields::<RawRefresh>()),
            ("jobs.*.globals", fields::<RawGlobals>()),
            ("restore", fields::<RawRestore>()),
            ("daemon", fields::<RawDaemon>()),
        ];
        // Every key path the reference has, user-chosen names as `*`.
        fn paths(v: &Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
            const NAMED: [&str; 5] = [
                "targets",
                "jobs",
                "encryption.keys",
                "pricing",
                "targets.*.tags",
            ];
            match v {
                Value::Mapping(map) => {
                    for (k, child) in map {
                        let key = k.as_str().unwrap_or_default();
                        let path = if NAMED.contains(&at) {
                            format!("{at}.*")
                        } else if at.is_empty() {
                            key.to_owned()
                        } else {
                            format!("{at}.{key}")
                        };
                        out.insert(path.clone());
                        paths(child, &path, out);
                    }
                }
                Value::Sequence(items) => {
                    for item in items {
                        paths(item, &format!("{at}[]"), out);
                    }
                }
                _ => {}
            }
        }
        let tree: Value = serde_yaml::from_str(&reference).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        paths(&tree, "", &mut documented);
        let mut missing = Vec::new();
        for (at, names) in all {
            assert!(!names.is_empty(), "no fields read for {at}");
            for name in names {
                let path = if at.is_empty() {
                    (*name).to_owned()
                } else {
                    format!("{at}.{name}")
                };
                if !documented.contains(&path) {
                    missing.push(path);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/config-reference.yaml lacks {missing:?}"
        );
    }

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"), &|name| match name {
            "SET" => Some("from-env".into()),
            "DB" => Some("postgres://u:pw@h/db".into()),
            _ => None,
        })
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("config was accepted"),
        }
    }

    const MINIMAL: &str = "targets:\n  local: { kind: local, path: /tmp/x }\njobs:\n  app: { database_url: postgres://localhost/app, targets: [local] }\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        let job = c.job("app").unwrap();
        assert_eq!(job.compression, Compression::Gzip(6));
        assert_eq!(job.format, DumpFormat::Plain);
        assert_eq!(job.file_prefix, "app");
        assert_eq!(job.rpo, Duration::from_secs(86_400));
        assert_eq!(c.pricing["STANDARD"], 0.023);
        assert_eq!(c.timezone, chrono_tz::UTC);
    }

    #[test]
    fn the_daemon_section_sets_its_pace_and_refuses_what_cannot_work() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.daemon, DaemonSettings::default());
        assert_eq!(c.daemon.shutdown_grace, Duration::from_secs(300));
        let text = format!(
            "{MINIMAL}daemon: {{ max_concurrent_runs: 3, shutdown_grace: 0s, stale_upload_age: 2h, check_interval: 90s, thaw_poll: 1s }}\n"
        );
        let d = parse(&text).unwrap().daemon;
        assert_eq!(
            d,
            DaemonSettings {
                max_concurrent_runs: 3,
                shutdown_grace: Duration::ZERO,
                stale_upload_age: Duration::from_secs(7200),
                check_interval: Duration::from_secs(90),
                thaw_poll: Duration::from_secs(1),
            }
        );
        let p = problems(&format!(
            "{MINIMAL}daemon: {{ max_concurrent_runs: 0, check_interval: 0s, thaw_poll: soon, shutdown_grace: 5 minutes, colour: red }}\n"
        ));
        let joined = p.join("\n");
        for expected in [
            "daemon.max_concurrent_runs: must be between 1 and 256",
            "daemon.check_interval: must be longer than 0s",
            "daemon.thaw_poll: 'soon' is not a duration",
            "daemon.colour: unknown key",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in\n{joined}"
            );
        }
        // "5 minutes" is a valid humantime duration.
        assert_eq!(p.len(), 4, "{joined}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let text = "timezone: Mars/Olympus\nbogus: 1\ntargets:\n  local: { kind: local, path: /tmp/x, colour: red }\n\
jobs:\n  app:\n    database_url: postgres://localhost/app\n    schedule: \"61 3 * * *\"\n    compression: gzip:11\n    targets: [local, nowhere]\n";
        let p = problems(text);
        let joined = p.join("\n");
        for expected in [
            "bogus: unknown key",
            "targets.local.colour: unknown key",
            "timezone: unknown time zone 'Mars/Olympus'",
            "jobs.app.schedule: invalid cron expression",
            "jobs.app.compression: gzip level 11",
            "jobs.app.targets[1]: unknown target 'nowhere'",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in\n{joined}"
            );
        }
        assert_eq!(p.len(), 6, "{joined}");
    }

    #[test]
    fn environment_values_are_substituted_inside_strings() {
        let text = "targets:\n  local: { kind: local, path: \"/b/${SET}/${UNSET:-dflt}\" }\njobs:\n  app: { database_url: \"${DB}\", targets: [local] }\n";
        let c = parse(text).unwrap();
        let TargetKind::Local { path } = &c.targets["local"].kind else {
            panic!()
        };
        assert_eq!(path, Path::new("/b/from-env/dflt"));
        assert_eq!(
            c.job("app").unwrap().database_url.to_string(),
            "postgres://u@h:5432/db"
        );
        let p = problems(
            "targets:\n  local: { kind: local, path: \"${MISSING}\" }\njobs:\n  app: { database_url: postgres://x/y, targets: [local] }\n",
        );
        assert_eq!(
            p,
            vec![
                "targets.local.path: environment variable MISSING is not set (use ${MISSING:-default} for a default)"
            ]
        );
    }

    #[test]
    fn missing_key_files_are_reported() {
        let text =
            format!("encryption: {{ active: k1, keys: {{ k1: /nonexistent/k1.key }} }}\n{MINIMAL}");
        let p = problems(&text);
        assert!(
            p[0].starts_with("encryption.keys.k1: key file /nonexistent/k1.key"),
            "{p:?}"
        );
    }

    #[test]
    fn kind_specific_keys_are_checked() {
        let p = problems(
            "targets:\n  local: { kind: local, path: /x, bucket: b }\n  s3: { kind: s3, bucket: A_B }\n  odd: { kind: ftp }\njobs:\n  app: { database_url: postgres://x/y, targets: [local] }\n",
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("targets.local.bucket: only valid for kind: s3"),
            "{joined}"
        );
        assert!(
            joined.contains("targets.s3.bucket: 'A_B' is not a valid S3 bucket name"),
            "{joined}"
        );
        assert!(
            joined.contains("targets.odd.kind: unknown kind 'ftp'"),
            "{joined}"
        );
    }

    #[test]
    fn path_style_defaults_to_true_only_with_an_endpoint() {
        let c = parse(
            "targets:\n  aws: { kind: s3, bucket: bkt-1 }\n  blank: { kind: s3, bucket: bkt-2, endpoint: \"\" }\n  \
local: { kind: s3, bucket: bkt-3, endpoint: \"http://127.0.0.1:5000\" }\n  \
vhost: { kind: s3, bucket: bkt-4, endpoint: \"https://s3.example.com\", path_style: false }\n\
jobs:\n  app: { database_url: postgres://x/y, targets: [aws] }\n",
        )
        .unwrap();
        let path_style = |name: &str| match &c.targets[name].kind {
            TargetKind::S3 { settings, .. } => settings.path_style,
            _ => panic!("{name} is not s3"),
        };
        assert!(!path_style("aws"));
        assert!(!path_style("blank"));
        assert!(path_style("local"));
        assert!(!path_style("vhost"));
    }

    #[test]
    fn the_state_database_must_not_be_a_backed_up_one() {
        let p = problems(&format!(
            "state: {{ database_url: postgres://localhost/app }}\n{MINIMAL}"
        ));
        assert_eq!(
            p,
            vec![
                "state.database_url: is the database job 'app' backs up; give the state a database of its own"
            ]
        );
    }

    #[test]
    fn passwords_do_not_appear_in_problems() {
        let p = problems(
            "targets:\n  local: { kind: local, path: /x }\njobs:\n  app: { database_url: \"postgres://u:hunter2-canary@h/db?nonsense=1\", targets: [local] }\n",
        );
        assert!(!p.join("\n").contains("hunter2"), "{p:?}");
    }
}
