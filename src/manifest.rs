//! The manifest: the JSON document written last next to each backup object. A backup
//! exists only once its manifest does; everything else is debris of a failed run.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::pipeline::compress::Compression;
use crate::source::{DatabaseInfo, DumpFormat};

/// Current manifest format.
pub const FORMAT_VERSION: u32 = 1;
/// Suffix of manifest object keys.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Marks the cluster globals beside a dump (`….globals.sql[.gz][.enc]`).
pub const GLOBALS_MARK: &str = ".globals.sql";

/// Whether a key holds backup data that may move to archive storage classes;
/// manifests and globals stay readable in STANDARD (small, and read first).
pub fn is_archivable(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    !name.ends_with(MANIFEST_SUFFIX) && !name.contains(GLOBALS_MARK)
}

/// Encryption parameters of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionInfo {
    pub algorithm: String,
    pub format: String,
    pub key_id: String,
    pub chunk_size: u32,
}

/// Where one target holds the backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRecord {
    pub target: String,
    pub key: String,
    pub version_id: Option<String>,
    pub storage_class: Option<String>,
}

/// A later check of the stored backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

/// The cluster globals stored beside a logical backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GlobalsRecord {
    /// Object file name (same directory as the manifest).
    pub object: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    pub roles: usize,
    pub tablespaces: usize,
    /// Whether role password hashes are included.
    pub passwords: bool,
}

/// Everything needed to trust and restore one backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    pub job: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub database: DatabaseInfo,
    pub pg_dump_version: String,
    pub format: DumpFormat,
    pub compression: Compression,
    pub encryption: Option<EncryptionInfo>,
    /// Object file name (same directory as the manifest).
    pub object: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    pub tables: BTreeMap<String, u64>,
    pub targets: Vec<TargetRecord>,
    #[serde(default)]
    pub verifications: Vec<Verification>,
    /// Roles, tablespaces and database settings (backups before these were
    /// recorded have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<GlobalsRecord>,
}

impl Manifest {
    /// The data object's key next to a manifest key.
    pub fn object_key(&self, manifest_key: &str) -> String {
        beside(manifest_key, &self.object)
    }

    /// The globals object's key next to a manifest key, when there is one.
    pub fn globals_key(&self, manifest_key: &str) -> Option<String> {
        self.globals
            .as_ref()
            .map(|g| beside(manifest_key, &g.object))
    }

    /// Sum of all table row counts.
    pub fn total_rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// Names and keys of one backup, derived from its start time in the job's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub backup_id: String,
    /// Directory part, `{prefix}/{job}/{YYYY}/{MM}/{DD}`, without a trailing slash.
    pub dir: String,
    pub object_name: String,
}

impl Layout {
    /// Builds names per the contract:
    /// `{prefix}/{job}/{YYYY}/{MM}/{DD}/{file_prefix}_backup_{YYYYMMDD}_{HHMMSS}.{ext}`.
    pub fn new<Tz: TimeZone>(
        prefix: &str,
        job: &str,
        file_prefix: &str,
        started: &DateTime<Tz>,
        format: DumpFormat,
        compression: Compression,
        encrypted: bool,
    ) -> Self {
        let backup_id = format!(
            "{file_prefix}_backup_{:04}{:02}{:02}_{:02}{:02}{:02}",
            started.year(),
            started.month(),
            started.day(),
            started.hour(),
            started.minute(),
            started.second()
        );
        let date = format!(
            "{:04}/{:02}/{:02}",
            started.year(),
            started.month(),
            started.day()
        );
        let dir = [prefix, job, &date]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        let mut object_name = format!("{backup_id}.{}", format.extension());
        if let Some(ext) = compression.extension() {
            object_name = format!("{object_name}.{ext}");
        }
        if encrypted {
            object_name.push_str(".enc");
        }
        Self {
            backup_id,
            dir,
            object_name,
        }
    }

    /// Key of the data object.
    pub fn object_key(&self) -> String {
        format!("{}/{}", self.dir, self.object_name)
    }

    /// Key of the manifest.
    pub fn manifest_key(&self) -> String {
        format!("{}/{}{MANIFEST_SUFFIX}", self.dir, self.backup_id)
    }

    /// File name of the cluster globals beside the dump:
    /// `{backup_id}.globals.sql[.gz|.zst][.enc]`.
    pub fn globals_name(&self, compression: Compression, encrypted: bool) -> String {
        let mut name = format!("{}.globals.sql", self.backup_id);
        if let Some(ext) = compression.extension() {
            name = format!("{name}.{ext}");
        }
        if encrypted {
            name.push_str(".enc");
        }
        name
    }

    /// Key of a file in this backup's directory.
    pub fn key_of(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }
}

/// The manifest key next to a data object key.
pub fn manifest_key_beside(object_key: &str, backup_id: &str) -> String {
    beside(object_key, &format!("{backup_id}{MANIFEST_SUFFIX}"))
}

/// The key of `name` in the same directory as `key`.
fn beside(key: &str, name: &str) -> String {
    match key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_owned(),
    }
}

/// The key prefix under which all of strata's objects live on a target with
/// the configured `prefix` (empty: the whole bucket or directory).
pub fn target_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// The prefix under which all of a job's objects live on a target.
pub fn job_prefix(prefix: &str, job: &str) -> String {
    format!("{}{job}/", target_prefix(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_strategy_seed() {
        let tz = chrono_tz::America::New_York;
        let started = tz.with_ymd_and_hms(2025, 1, 1, 3, 0, 0).unwrap();
        let l = Layout::new(
            "database-backups",
            "production",
            "prod",
            &started,
            DumpFormat::Plain,
            Compression::Gzip(6),
            false,
        );
        assert_eq!(
            l.object_key(),
            "database-backups/production/2025/01/01/prod_backup_20250101_030000.sql.gz"
        );
        assert_eq!(
            l.manifest_key(),
            "database-backups/production/2025/01/01/prod_backup_20250101_030000.manifest.json"
        );
        let enc = Layout::new(
            "",
            "development",
            "dev",
            &started,
            DumpFormat::Custom,
            Compression::Zstd(3),
            true,
        );
        assert_eq!(
            enc.object_key(),
            "development/2025/01/01/dev_backup_20250101_030000.dump.zst.enc"
        );
        assert_eq!(enc.backup_id, "dev_backup_20250101_030000");
        assert_eq!(
            enc.key_of(&enc.globals_name(Compression::Zstd(3), true)),
            "development/2025/01/01/dev_backup_20250101_030000.globals.sql.zst.enc"
        );
    }

    #[test]
    fn names_use_local_time_of_the_zone() {
        // 08:00 UTC on 1 July is 04:00 in New York (EDT).
        let utc = Utc.with_ymd_and_hms(2025, 7, 1, 8, 0, 0).unwrap();
        let local = utc.with_timezone(&chrono_tz::America::New_York);
        let l = Layout::new(
            "p",
            "j",
            "dev",
            &local,
            DumpFormat::Plain,
            Compression::None,
            true,
        );
        assert_eq!(
            l.object_key(),
            "p/j/2025/07/01/dev_backup_20250701_040000.sql.enc"
        );
    }
}
