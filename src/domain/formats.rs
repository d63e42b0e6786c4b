//! Value types of a backup that every layer shares: how its dump is made and
//! compressed, what it was taken from, the encryption format's limits.

use std::fmt;

use chrono::{DateTime, Utc};
use std::str::FromStr;

/// What the dump is compressed with before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip(u32),
    Zstd(i32),
}

/// A compression setting that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompressionParseError {
    #[error("unknown compression '{0}' (expected gzip:N, zstd:N or none)")]
    Unknown(String),
    #[error("gzip level {0} is out of range 1..=9")]
    GzipLevel(String),
    #[error("zstd level {0} is out of range 1..=19")]
    ZstdLevel(String),
}

impl FromStr for Compression {
    type Err = CompressionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, level) = s.split_once(':').unwrap_or((s, ""));
        match name {
            "none" if level.is_empty() => Ok(Self::None),
            "gzip" => {
                let level = if level.is_empty() { "6" } else { level };
                match level.parse::<u32>() {
                    Ok(n @ 1..=9) => Ok(Self::Gzip(n)),
                    _ => Err(CompressionParseError::GzipLevel(level.to_owned())),
                }
            }
            "zstd" => {
                let level = if level.is_empty() { "3" } else { level };
                match level.parse::<i32>() {
                    Ok(n @ 1..=19) => Ok(Self::Zstd(n)),
                    _ => Err(CompressionParseError::ZstdLevel(level.to_owned())),
                }
            }
            _ => Err(CompressionParseError::Unknown(s.to_owned())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Gzip(n) => write!(f, "gzip:{n}"),
            Self::Zstd(n) => write!(f, "zstd:{n}"),
        }
    }
}

impl serde::Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Compression {
    /// File-name extension added by this compression (`gz`, `zst`), if any.
    pub fn extension(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Gzip(_) => Some("gz"),
            Self::Zstd(_) => Some("zst"),
        }
    }
}

/// What a backup's object holds: pg_dump output, or a physical job's base
/// backup (`pg_basebackup`'s tar of the data directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    Plain,
    Custom,
    Base,
}

impl DumpFormat {
    /// File-name extension before compression and encryption.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Plain => "sql",
            Self::Custom => "dump",
            Self::Base => "tar",
        }
    }
}

/// Facts about the source database, recorded in the manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DatabaseInfo {
    pub name: String,
    pub server_version: String,
    #[serde(skip)]
    pub server_version_num: u32,
}

impl DatabaseInfo {
    /// Major version (15 for 15.4; 9 for 9.6).
    pub fn major(&self) -> u32 {
        self.server_version_num / 10_000
    }
}

/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 65_536;
/// Largest chunk size a reader accepts (bounds its memory).
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// Object Lock retention put on new uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody can delete before the retain-until date, not even the root user.
    Compliance,
}

impl LockMode {
    /// The name S3 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "GOVERNANCE" => Ok(Self::Governance),
            "COMPLIANCE" => Ok(Self::Compliance),
            _ => Err(format!("'{s}' is not GOVERNANCE or COMPLIANCE")),
        }
    }
}

/// Outcome of a restore test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreTest {
    pub job: String,
    pub backup_id: Option<String>,
    pub target: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Time to restore and check it: the real RTO of this backup.
    pub seconds: f64,
    pub ok: bool,
    pub error: Option<String>,
    pub tables: usize,
    pub rows: u64,
}

impl RestoreTest {
    /// A test of `job` starting at `started_at`, not (yet) passed.
    pub fn new(job: &str, started_at: DateTime<Utc>) -> Self {
        Self {
            job: job.to_owned(),
            backup_id: None,
            target: None,
            started_at,
            seconds: 0.0,
            ok: false,
            error: None,
            tables: 0,
            rows: 0,
        }
    }

    /// When the test ended, on the clock it started on.
    pub fn finished_at(&self) -> DateTime<Utc> {
        self.started_at + chrono::Duration::milliseconds((self.seconds * 1000.0) as i64)
    }
}

/// Outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Success,
    Degraded,
    Failed,
    Aborted,
}

impl RunStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }

    /// Reads a stored name; anything unknown counts as failed.
    pub fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "success" => Self::Success,
            "degraded" => Self::Degraded,
            "aborted" => Self::Aborted,
            _ => Self::Failed,
        }
    }
}

/// The result of one check (a copy read back, a scratch restore): shown and
/// serialised as `ok` or as the failure's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(String),
}

impl Outcome {
    /// From a check's result, keeping the error's message.
    pub fn of<T, E: fmt::Display>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(e) => Self::Failed(e.to_string()),
        }
    }

    /// The check passed.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Server-side encryption S3 applies to every upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3 (`AES256`): keys managed by S3.
    S3Managed,
    /// SSE-KMS (`aws:kms`) with the bucket's default KMS key.
    Kms,
}

impl ServerSideEncryption {
    /// The header value S3 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S3Managed => "AES256",
            Self::Kms => "aws:kms",
        }
    }
}

impl fmt::Display for ServerSideEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How fast (and how dearly) an archived object is thawed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawTier {
    Standard,
    Bulk,
    /// GLACIER only.
    Expedited,
}

impl FromStr for ThawTier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Standard" => Ok(Self::Standard),
            "Bulk" => Ok(Self::Bulk),
            "Expedited" => Ok(Self::Expedited),
            _ => Err(format!("'{s}' is not Standard, Bulk or Expedited")),
        }
    }
}

impl ThawTier {
    /// The name S3 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "Standard",
            Self::Bulk => "Bulk",
            Self::Expedited => "Expedited",
        }
    }
}

impl fmt::Display for ThawTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
