//! The manifest: the JSON document written last next to each backup object. A backup
//! exists only once its manifest does; everything else is debris of a failed run.
//!
//! Manifests of encrypted jobs carry a MAC: HMAC-SHA256 over the manifest's
//! canonical JSON without its `mac` member (keys sorted, no whitespace), keyed
//! with HKDF-SHA256 of the master key (empty salt, info `strata/v1/manifest`).
//! Someone who can write to a bucket but holds no key cannot make one that
//! strata restores, counts or prunes ([`open`]). Every field is also checked
//! before use: names that become keys or paths, sizes, the format version.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use ring::{hkdf, hmac};
use serde::{Deserialize, Serialize};

use crate::domain::Compression;
use crate::domain::{DatabaseInfo, DumpFormat};
use crate::keys::{Keyring, MasterKey};

/// Current manifest format.
pub const FORMAT_VERSION: u32 = 1;
/// Suffix of manifest object keys.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Marks the cluster globals beside a dump (`….globals.sql[.gz][.enc]`).
pub const GLOBALS_MARK: &str = ".globals.sql";

/// Whether a key holds backup data that may move to archive storage classes;
/// manifests and globals stay readable in STANDARD (small, and read first),
/// and so does a WAL archive (recovery reads it at once).
pub fn is_archivable(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    !name.ends_with(MANIFEST_SUFFIX) && !name.contains(GLOBALS_MARK) && !super::wal::is_wal_key(key)
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
    pub storage_class: Option<super::StorageClass>,
}

/// Where a base backup sits in the WAL, and whose cluster it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhysicalRecord {
    /// `pg_basebackup`'s start point (the checkpoint's redo), as PostgreSQL prints it.
    pub start_lsn: String,
    /// The end point: recovery must replay at least this far to be consistent.
    pub stop_lsn: String,
    pub timeline: u32,
    /// As text: JSON numbers lose precision past 2^53.
    pub system_identifier: String,
    /// The segment size of the cluster.
    pub segment_size: u32,
    /// The backup label as the server archived it (its backup history file:
    /// start and stop positions and times, checkpoint, label).
    #[serde(default)]
    pub backup_label: String,
    /// The server's own manifest of the files (`backup_manifest`, inside the
    /// tar), when the server gave one.
    #[serde(default)]
    pub server_manifest: Option<ServerManifest>,
}

/// What the server's `backup_manifest` says of a base backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerManifest {
    /// Files it lists.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// The checksum algorithm of each file (`CRC32C` by default).
    pub checksum_algorithm: String,
    /// SHA-256 of the manifest itself, as stored in the tar.
    pub sha256: String,
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

/// The authentication of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mac {
    /// `HMAC-SHA256`.
    pub algorithm: String,
    /// The master key the MAC key was derived from.
    pub key_id: String,
    /// Hex of the MAC.
    pub value: String,
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
    /// A physical job's base backup: where in the WAL it starts and ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalRecord>,
    /// Written by [`seal`]; absent on manifests of jobs without encryption and
    /// on those written before manifests were authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
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

/// HKDF `info` of the manifest MAC key.
pub const MAC_INFO: &[u8] = b"strata/v1/manifest";

/// Largest size or count accepted from a manifest (2^53: exact in JSON).
const MAX_NUMBER: u64 = 1 << 53;

/// How far a manifest read from storage can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Its MAC verified with this configured key.
    Authenticated(String),
    /// No MAC (a job without encryption, or written before MACs): fields
    /// validated, contents not authenticated.
    Unsigned,
}

/// Why a manifest read from storage is not used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not valid JSON: {0}")]
    Malformed(String),
    #[error("format_version {0} is not one this strata reads (1); upgrade strata")]
    UnknownVersion(u64),
    #[error("FORGED: its MAC does not verify (it was changed without the key)")]
    Forged,
    #[error("cannot be authenticated: signed with key '{0}', which is not configured")]
    UnknownKey(String),
    #[error("unauthenticated: it has no MAC and require_authenticated_manifests is on")]
    Unsigned,
    #[error("invalid field {field}: {why}")]
    Field { field: String, why: String },
}

impl ManifestError {
    /// The manifest was changed by someone without the key (or cannot be
    /// proven otherwise).
    pub fn is_forgery(&self) -> bool {
        matches!(self, Self::Forged | Self::UnknownKey(_))
    }
}

/// The manifest as canonical JSON: object keys sorted, no whitespace, strings
/// escaped as JSON requires (what `json.dumps(v, sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False)` writes).
pub fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("a string serialises"));
                out.push(b':');
                canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serialises")),
    }
}

fn mac_key(master: &MasterKey) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(master.expose());
    let okm = prk
        .expand(&[MAC_INFO], hmac::HMAC_SHA256)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    hmac::Key::from(okm)
}

fn unsigned_value(m: &Manifest) -> serde_json::Value {
    let mut v = serde_json::to_value(m).expect("a manifest serialises");
    if let Some(map) = v.as_object_mut() {
        map.remove("mac");
    }
    v
}

/// The manifest as stored: with a MAC by `key` when there is one.
pub fn seal(m: &Manifest, key: Option<&MasterKey>) -> Vec<u8> {
    let mut m = m.clone();
    m.mac = key.map(|key| {
        let mut bytes = Vec::new();
        canonical(&unsigned_value(&m), &mut bytes);
        Mac {
            algorithm: "HMAC-SHA256".into(),
            key_id: key.id().to_owned(),
            value: hex::encode(hmac::sign(&mac_key(key), &bytes).as_ref()),
        }
    });
    serde_json::to_vec_pretty(&m).expect("a manifest serialises")
}

/// Reads a manifest from storage: parsed, its MAC checked against `keys`
/// (refused when missing and `require`), every field validated.
///
/// # Errors
/// Anything that makes it unusable; [`ManifestError::is_forgery`] for changes
/// made without the key.
pub fn open(
    bytes: &[u8],
    keys: Option<&Keyring>,
    require: bool,
) -> Result<(Manifest, Trust), ManifestError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
    match value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(1) => {}
        Some(v) => return Err(ManifestError::UnknownVersion(v)),
        None => return Err(field("format_version", "missing or not a number")),
    }
    let mac = value
        .as_object_mut()
        .and_then(|m| m.remove("mac"))
        .map(serde_json::from_value::<Mac>)
        .transpose()
        .map_err(|e| field("mac", &e.to_string()))?;
    let trust = match (mac, keys) {
        (Some(mac), Some(keys)) => {
            let key = keys
                .get(&mac.key_id)
                .ok_or_else(|| ManifestError::UnknownKey(mac.key_id.clone()))?;
            let tag = hex::decode(&mac.value).map_err(|_| ManifestError::Forged)?;
            let mut canon = Vec::new();
            canonical(&value, &mut canon);
            if mac.algorithm != "HMAC-SHA256" {
                return Err(ManifestError::Forged);
            }
            hmac::verify(&mac_key(key), &canon, &tag).map_err(|_| ManifestError::Forged)?;
            Trust::Authenticated(mac.key_id)
        }
        // Keys are configured: a missing MAC is tolerated only when allowed.
        (None, Some(_)) if require => return Err(ManifestError::Unsigned),
        (_, _) => Trust::Unsigned,
    };
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| ManifestError::Malformed(e.to_string()))?;
    validate(&manifest)?;
    Ok((manifest, trust))
}

fn field(name: &str, why: &str) -> ManifestError {
    ManifestError::Field {
        field: name.to_owned(),
        why: why.to_owned(),
    }
}

/// A name strata itself makes: lowercase letters, digits, `-`, `_`, `.` (no `..`).
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains("..")
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A key within a bucket or directory: relative, no `..` segment, no NUL.
pub fn safe_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key.contains('\0')
        && !key.contains('\\')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Checks every field that becomes a key, a path, a name or a size.
///
/// # Errors
/// The first field that is out of bounds.
pub fn validate(m: &Manifest) -> Result<(), ManifestError> {
    if !plain_name(&m.backup_id) || m.backup_id.contains('.') {
        return Err(field("backup_id", "not a strata backup id"));
    }
    if !plain_name(&m.job) || m.job.contains('.') {
        return Err(field("job", "not a job name"));
    }
    let own_file = |name: &str, what: &str| {
        if plain_name(name) && name.starts_with(&format!("{}.", m.backup_id)) {
            Ok(())
        } else {
            Err(field(
                what,
                "must be a file name beside the manifest, starting with the backup id",
            ))
        }
    };
    own_file(&m.object, "object")?;
    if let Some(g) = &m.globals {
        own_file(&g.object, "globals.object")?;
        if g.raw_bytes > MAX_NUMBER || g.stored_bytes > MAX_NUMBER {
            return Err(field("globals", "size out of range"));
        }
    }
    for (name, n) in [("raw_bytes", m.raw_bytes), ("stored_bytes", m.stored_bytes)] {
        if n > MAX_NUMBER {
            return Err(field(name, "out of range"));
        }
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(field("sha256", "not a SHA-256 in hex"));
    }
    if let Some(e) = &m.encryption {
        if e.algorithm != "AES-256-GCM" || e.format != "STRATAE1" {
            return Err(field("encryption", "unknown algorithm or format"));
        }
        if !(1024..=crate::domain::MAX_CHUNK_SIZE).contains(&e.chunk_size) {
            return Err(field("encryption.chunk_size", "out of range"));
        }
    }
    for (table, rows) in &m.tables {
        if table.is_empty() || table.len() > 1000 || table.contains('\0') {
            return Err(field(
                "tables",
                "a table name is empty, too long or has NUL",
            ));
        }
        if *rows > MAX_NUMBER {
            return Err(field("tables", "a row count is out of range"));
        }
    }
    for (i, t) in m.targets.iter().enumerate() {
        if !safe_key(&t.key) {
            return Err(field(
                &format!("targets[{i}].key"),
                "not a relative key inside the target",
            ));
        }
    }
    Ok(())
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
        // Physical base backups: `{prefix}/{job}/base/{YYYY}/…/{file_prefix}_base_…`.
        let (kind, sub) = if format == DumpFormat::Base {
            ("base", "base")
        } else {
            ("backup", "")
        };
        let backup_id = format!(
            "{file_prefix}_{kind}_{:04}{:02}{:02}_{:02}{:02}{:02}",
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
        let dir = [prefix, job, sub, &date]
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

    /// Which of the backups started in one second `backup_id` names: `n` for an
    /// id ending in `-n` ([`Self::sequence`]), else 1.
    pub fn sequence_of(backup_id: &str) -> u32 {
        backup_id
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .filter(|n| *n >= 2)
            .unwrap_or(1)
    }

    /// The `n`th backup started in the same second (`n` ≥ 2 appends `-n` to
    /// the id; 1 leaves it as it is).
    #[must_use]
    pub fn sequence(mut self, n: u32) -> Self {
        if n > 1 {
            let id = format!("{}-{n}", self.backup_id);
            self.object_name = self.object_name.replacen(&self.backup_id, &id, 1);
            self.backup_id = id;
        }
        self
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
mod tests;
