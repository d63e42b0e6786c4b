//! Where backups are stored: a small [`Target`] trait with multipart uploads as
//! their own object ([`Upload`]), implemented for local disk and S3.
//!
//! Every implementation keeps one promise: an object is whole under its final key
//! or absent. Partial data lives under staging names (local) or as incomplete
//! multipart uploads (S3), and [`Target::cleanup_stale`] removes what a killed run
//! left behind.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::domain::StorageClass;

pub mod local;
pub mod s3;

/// Storage failures, each naming the target and the key or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("target '{target}': {key}: {source}")]
    Io {
        target: String,
        key: String,
        source: std::io::Error,
    },
    #[error("target '{target}': {key}: {message}")]
    S3 {
        target: String,
        key: String,
        message: String,
    },
    #[error("target '{target}': {key} not found")]
    NotFound { target: String, key: String },
    #[error(
        "target '{target}': {key} has {actual} bytes after upload, expected {expected}; the upload is not trusted"
    )]
    SizeMismatch {
        target: String,
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "target '{target}': {key} is in storage class {class} and must be restored (thawed) before it can be read"
    )]
    Archived {
        target: String,
        key: String,
        class: String,
    },
}

impl StorageError {
    /// A storage task that panicked or was cancelled, as an error of its target
    /// rather than a panic of the caller (a run must outlive its helpers).
    pub fn task_failed(target: &str, key: &str, e: tokio::task::JoinError) -> Self {
        StorageError::Io {
            target: target.to_owned(),
            key: key.to_owned(),
            source: std::io::Error::other(format!("storage task failed: {e}")),
        }
    }
}

/// What a completed upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub size: u64,
    pub version_id: Option<String>,
    pub storage_class: Option<StorageClass>,
}

/// An object as listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub storage_class: Option<StorageClass>,
    /// Set by versioned buckets on `head`; `None` elsewhere.
    pub version_id: Option<String>,
    /// Object Lock retain-until date (`head` on S3 only).
    pub retain_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Thaw state of an archived object (`head` on S3 only).
    pub thaw: Thaw,
    /// When it was written (listings).
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Whether an object in an archive storage class can be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Thaw {
    /// Readable as it is (not archived).
    #[default]
    NotArchived,
    /// Archived and no restore requested.
    Archived,
    /// A restore request is being processed.
    InProgress,
    /// A temporary copy is readable until the given time (when S3 said so).
    Ready(Option<String>),
}

impl Thaw {
    /// Parses S3's `x-amz-restore` header for an object in `class`.
    pub fn from_header(class: Option<&StorageClass>, header: Option<&str>) -> Self {
        let archived = class.is_some_and(StorageClass::is_archive);
        match header {
            Some(h) if h.contains("ongoing-request=\"true\"") => Self::InProgress,
            Some(h) if h.contains("ongoing-request=\"false\"") => Self::Ready(
                h.split_once("expiry-date=\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(date, _)| date.to_owned()),
            ),
            _ if archived => Self::Archived,
            _ => Self::NotArchived,
        }
    }

    /// Whether the object can be read now.
    pub fn readable(&self) -> bool {
        matches!(self, Self::NotArchived | Self::Ready(_))
    }
}

/// A stream of stored bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Kind of medium, for the 3-2-1 rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    Local,
    S3,
}

/// One place backups are written to.
#[async_trait]
pub trait Target: Send + Sync {
    /// The configured name (e.g. `local`, `primary`).
    fn name(&self) -> &str;
    /// The medium (local disk, object storage).
    fn medium(&self) -> Medium;
    /// Starts writing `key`. Nothing is visible under `key` until `complete`.
    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError>;
    /// Writes a small object (a manifest) in one request, atomically.
    async fn put_small(&self, key: &str, data: Bytes) -> Result<PutResult, StorageError>;
    /// Writes a small object under `key` only if no object holds it yet, in
    /// one atomic step where the store allows it: what one writer archived is
    /// never replaced by another's. `Ok(None)` when `key` was taken.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<Option<PutResult>, StorageError>;
    /// Reads a whole object as a stream.
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError>;
    /// Metadata of one object, or `NotFound`.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError>;
    /// Every object whose key starts with `prefix` (a string prefix, as on S3).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// Deletes one object (absent objects are not an error).
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Deletes one version of an object for good (on versioned buckets a plain
    /// delete only hides it); `None` is a plain delete.
    async fn delete_version(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StorageError> {
        let _ = version_id;
        self.delete(key).await
    }
    /// The S3 client behind this target, for bucket-level operations (lifecycle,
    /// versioning, Object Lock, thawing archived objects).
    fn as_s3(&self) -> Option<&s3::S3Target> {
        None
    }
    /// Removes staging files and incomplete uploads under `prefix` older than `age`,
    /// returning how many were removed.
    async fn cleanup_stale(&self, prefix: &str, age: Duration) -> Result<usize, StorageError>;
}

/// An upload in progress: data goes in with `put_part`, and it ends with exactly one
/// of `complete` or `abort`.
#[async_trait]
pub trait Upload: Send {
    /// Appends data (any size; the upload buffers into parts itself).
    async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError>;
    /// Makes the object visible under its key and checks its size.
    async fn complete(self: Box<Self>) -> Result<PutResult, StorageError>;
    /// Discards everything written so far.
    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

/// Reads a whole object into memory (manifests; never backups).
///
/// # Errors
/// Any read failure.
pub async fn read_all(target: &dyn Target, key: &str) -> Result<Vec<u8>, StorageError> {
    use futures::TryStreamExt;
    let mut stream = target.get(key).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
