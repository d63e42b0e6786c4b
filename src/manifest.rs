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
}

impl Manifest {
    /// The data object's key next to a manifest key.
    pub fn object_key(&self, manifest_key: &str) -> String {
        beside(manifest_key, &self.object)
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
