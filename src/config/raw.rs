//! The config file's shapes as serde reads them, before validation: every key
//! optional, unknown keys refused by name.

use super::*;

#[derive(Deserialize)]
pub(super) struct RawConfig {
    pub(super) timezone: Option<String>,
    pub(super) http: Option<RawHttp>,
    pub(super) state: Option<RawState>,
    pub(super) encryption: Option<RawEncryption>,
    pub(super) pricing: Option<BTreeMap<String, f64>>,
    pub(super) alerts: Option<RawAlerts>,
    pub(super) restore: Option<RawRestore>,
    pub(super) daemon: Option<RawDaemon>,
    pub(super) require_authenticated_manifests: Option<bool>,
    #[serde(default)]
    pub(super) targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub(super) jobs: BTreeMap<String, RawJob>,
}

#[derive(Deserialize)]
pub(super) struct RawRestore {
    pub(super) jobs: Option<usize>,
}

#[derive(Deserialize)]
pub(super) struct RawDaemon {
    pub(super) max_concurrent_runs: Option<usize>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) stale_after: Option<String>,
    pub(super) check_interval: Option<String>,
    pub(super) thaw_poll: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) admin_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
pub(super) struct RawState {
    pub(super) database_url: String,
}

#[derive(Deserialize)]
pub(super) struct RawEncryption {
    pub(super) active: String,
    pub(super) keys: BTreeMap<String, PathBuf>,
    pub(super) chunk_size: Option<u32>,
}

#[derive(Deserialize)]
pub(super) struct RawAlerts {
    pub(super) email: Option<RawEmail>,
    pub(super) webhook: Option<RawWebhook>,
    pub(super) size_change_ratio: Option<f64>,
    pub(super) monthly_cost_usd: Option<f64>,
    pub(super) repeat_interval: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawEmail {
    pub(super) smtp_url: String,
    pub(super) from: String,
    pub(super) to: Vec<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
pub(super) struct RawWebhook {
    pub(super) url: String,
}

#[derive(Deserialize)]
pub(super) struct RawTarget {
    pub(super) kind: String,
    pub(super) path: Option<PathBuf>,
    pub(super) prefix: Option<String>,
    pub(super) bucket: Option<String>,
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) path_style: Option<bool>,
    pub(super) server_side_encryption: Option<String>,
    pub(super) storage_class: Option<String>,
    pub(super) lifecycle: Option<Vec<RawLifecycleRule>>,
    pub(super) object_lock: Option<RawObjectLock>,
    pub(super) manage_lifecycle: Option<bool>,
    pub(super) offsite: Option<bool>,
    pub(super) tags: Option<BTreeMap<String, String>>,
    pub(super) part_size_mib: Option<usize>,
    pub(super) parts_in_flight: Option<usize>,
    pub(super) request_timeout: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawLifecycleRule {
    pub(super) after_days: u32,
    pub(super) storage_class: Option<String>,
    pub(super) expire: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawObjectLock {
    pub(super) mode: String,
    pub(super) days: u32,
}

#[derive(Deserialize)]
pub(super) struct RawJob {
    pub(super) database_url: String,
    pub(super) schedule: Option<String>,
    pub(super) file_prefix: Option<String>,
    pub(super) format: Option<DumpFormat>,
    pub(super) compression: Option<String>,
    #[serde(default)]
    pub(super) targets: Vec<String>,
    pub(super) retention: Option<RawRetention>,
    pub(super) rpo: Option<String>,
    pub(super) prune: Option<String>,
    pub(super) verify: Option<RawVerify>,
    pub(super) refresh: Option<RawRefresh>,
    pub(super) globals: Option<RawGlobals>,
    pub(super) timeout: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) wal: Option<RawWal>,
}

#[derive(Deserialize)]
pub(super) struct RawWal {
    pub(super) source: Option<String>,
    pub(super) slot: Option<String>,
    pub(super) directory: Option<PathBuf>,
    pub(super) upload_interval: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawGlobals {
    pub(super) role_passwords: Option<bool>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawRetention {
    pub(super) daily: Option<u32>,
    pub(super) weekly: Option<u32>,
    pub(super) monthly: Option<u32>,
    pub(super) yearly: Option<u32>,
    pub(super) recovery_window: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawVerify {
    pub(super) restore_test: Option<String>,
    pub(super) restore_into: Option<String>,
    pub(super) read_back: Option<String>,
    pub(super) scratch_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) sql: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct RawRefresh {
    pub(super) from: String,
    #[serde(default)]
    pub(super) trim_sql: Vec<String>,
    #[serde(default)]
    pub(super) mask_sql: Vec<String>,
}
