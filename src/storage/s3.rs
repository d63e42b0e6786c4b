//! S3 target (aws-sdk-s3): multipart uploads with growing part sizes, a bounded
//! number of parts in flight, the SDK's standard retries with backoff, abort on
//! every failure path, and a size check after completion.
//!
//! Request checksums are computed only when an operation requires them: S3-compatible
//! stores (Garage, older MinIO, moto in some modes) reject the SDK's default CRC
//! trailers, and the backup's own SHA-256 in the manifest covers integrity end to end.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkBody, DateTime as SdkDateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ServerSideEncryption, StorageClass as SdkStorageClass,
};
use bytes::{Bytes, BytesMut};
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinSet;

use super::{ByteStream, Medium, ObjectMeta, PutResult, StorageError, Target, Thaw, Upload};
use crate::domain::StorageClass;

mod upload;

use upload::S3Upload;

/// S3 allows at most this many parts per upload.
const MAX_PARTS: i32 = 10_000;
/// S3's minimum size for every part but the last.
const MIN_PART: usize = 5 * 1024 * 1024;
/// S3's maximum part size.
const MAX_PART: usize = 5 * 1024 * 1024 * 1024;
/// Parts double in size after every this many parts, so ~8 TiB fits in 10,000 parts
/// with an 8 MiB start while small backups keep small parts.
const PARTS_PER_SIZE_STEP: i32 = 1_000;

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub server_side_encryption: Option<crate::domain::ServerSideEncryption>,
    pub storage_class: Option<StorageClass>,
    pub tags: Vec<(String, String)>,
    /// Explicit credentials (access key id, secret); `None` uses the standard AWS
    /// chain. The secret never shows in `Debug`.
    pub credentials: Option<(String, SecretString)>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub max_attempts: u32,
    /// Longest wait for an answer to one request (`request_timeout`).
    pub request_timeout: Duration,
    /// Object Lock retention put on every upload (the bucket must have Object Lock
    /// enabled); uploads then carry the CRC32 checksum S3 requires.
    pub object_lock: Option<crate::domain::ObjectLock>,
    /// Tag backup objects with [`BACKUP_TAG`] so lifecycle transitions move them
    /// and never the manifests (which must stay readable to list backups).
    pub tag_backups: bool,
}

/// The tag lifecycle transition rules select backup objects by.
pub const BACKUP_TAG: (&str, &str) = ("strata-object", "backup");

impl S3Settings {
    /// Defaults for a bucket: 8 MiB parts, 4 in flight, 5 attempts per request.
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: region.into(),
            endpoint: None,
            path_style: false,
            server_side_encryption: Some(crate::domain::ServerSideEncryption::S3Managed),
            storage_class: None,
            tags: Vec::new(),
            credentials: None,
            part_size: 8 * 1024 * 1024,
            parts_in_flight: 4,
            max_attempts: 5,
            request_timeout: Duration::from_secs(120),
            object_lock: None,
            tag_backups: false,
        }
    }
}

impl S3Settings {
    /// Object Lock mode and retain-until date for an upload starting now.
    fn lock(&self) -> (Option<ObjectLockMode>, Option<SdkDateTime>) {
        match &self.object_lock {
            None => (None, None),
            Some(l) => {
                let until = chrono::Utc::now() + chrono::Duration::days(i64::from(l.days));
                (
                    Some(ObjectLockMode::from(l.mode.as_str())),
                    Some(SdkDateTime::from_secs(until.timestamp())),
                )
            }
        }
    }

    /// Tags of an upload: the configured ones, plus [`BACKUP_TAG`] on backup objects
    /// (not manifests or globals) when lifecycle transitions select by it.
    fn tagging_for(&self, key: &str) -> Option<String> {
        if self.tag_backups && crate::domain::manifest::is_archivable(key) {
            let mut tags = self.tags.clone();
            tags.push((BACKUP_TAG.0.into(), BACKUP_TAG.1.into()));
            tagging(&tags)
        } else {
            tagging(&self.tags)
        }
    }

    /// Storage class of an upload: manifests and globals always stay in
    /// STANDARD, where they can be read to list and start restores; backups go
    /// to the configured class.
    fn class_for(&self, key: &str) -> Option<SdkStorageClass> {
        if !crate::domain::manifest::is_archivable(key) {
            None
        } else {
            self.storage_class
                .as_ref()
                .map(|c| SdkStorageClass::from(c.as_str()))
        }
    }

    /// Locked buckets reject uploads without a checksum.
    fn checksum(&self) -> Option<ChecksumAlgorithm> {
        self.object_lock.as_ref().map(|_| ChecksumAlgorithm::Crc32)
    }
}

/// Size of part `n` (1-based) for a given starting size.
pub fn part_size(base: usize, n: i32) -> usize {
    let step = u32::try_from((n - 1) / PARTS_PER_SIZE_STEP).unwrap_or(0);
    base.max(MIN_PART)
        .saturating_mul(1usize << step.min(20))
        .min(MAX_PART)
}

/// One S3 bucket (AWS or an S3-compatible store).
#[derive(Debug, Clone)]
pub struct S3Target {
    name: String,
    client: Client,
    settings: Arc<S3Settings>,
}

impl S3Target {
    /// Builds the client. Credentials come from `settings.credentials` or the
    /// standard AWS chain (environment, profile, instance role).
    pub async fn new(name: impl Into<String>, settings: S3Settings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()));
        if let Some((id, secret)) = &settings.credentials {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.expose_secret().to_owned(),
                None,
                None,
                "strata-config",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(settings.request_timeout)
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            name: name.into(),
            client: Client::from_conf(config.build()),
            settings: Arc::new(settings),
        }
    }

    /// The SDK client (lifecycle, versioning and lock calls in later modules).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket's settings.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    fn err<E>(&self, key: &str, e: SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let at = match &self.settings.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => format!("AWS S3 in {}", self.settings.region),
        };
        let where_ = format!("bucket {} at {at}", self.settings.bucket);
        match s3_error(&self.name, key, e) {
            StorageError::S3 {
                target,
                key,
                message,
            } => StorageError::S3 {
                target,
                key,
                message: format!("{message} ({where_})"),
            },
            other => other,
        }
    }
}

impl S3Target {
    /// A PutObject of `key` with the bucket's settings (Object Lock, checksum,
    /// server-side encryption, storage class, tags); the body is the caller's.
    pub(super) fn put_object_request(
        &self,
        key: &str,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let s = &self.settings;
        let (lock_mode, retain_until) = s.lock();
        self.client
            .put_object()
            .bucket(&s.bucket)
            .key(key)
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(retain_until)
            .set_checksum_algorithm(s.checksum())
            .set_server_side_encryption(
                s.server_side_encryption
                    .map(|sse| ServerSideEncryption::from(sse.as_str())),
            )
            .set_storage_class(s.class_for(key))
            .set_tagging(s.tagging_for(key))
    }

    /// After an upload: the object under `key` must have `expected` bytes.
    pub(super) async fn checked(
        &self,
        key: &str,
        expected: u64,
    ) -> Result<PutResult, StorageError> {
        let meta = self.head(key).await?;
        if meta.size != expected {
            return Err(StorageError::SizeMismatch {
                target: self.name.clone(),
                key: key.to_owned(),
                expected,
                actual: meta.size,
            });
        }
        Ok(PutResult {
            size: meta.size,
            version_id: meta.version_id,
            storage_class: meta
                .storage_class
                .or_else(|| self.settings.storage_class.clone())
                .or(Some(StorageClass::Standard)),
        })
    }
}

/// The innermost cause of an error, for "connection refused" rather than a
/// chain of wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    // io::Error prints "Connection refused (os error 111)".
    text.split(" (os error")
        .next()
        .unwrap_or(&text)
        .to_lowercase()
}

/// Turns an SDK error into a [`StorageError`] naming the target and key, with
/// one line of cause: HTTP status and S3 error code, "access denied", "no such
/// bucket", "connection refused", "no answer". The SDK's full error goes to
/// the debug log.
pub(crate) fn s3_error<E>(target: &str, key: &str, e: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(target_name = target, key, error = ?e, "S3 request failed");
    let code = e
        .as_service_error()
        .and_then(|s| s.code().map(str::to_owned));
    let status = e.raw_response().map(|r| r.status().as_u16());
    if code.as_deref() == Some("NoSuchBucket") {
        return StorageError::S3 {
            target: target.to_owned(),
            key: key.to_owned(),
            message: "the bucket does not exist (NoSuchBucket)".into(),
        };
    }
    if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
        return StorageError::NotFound {
            target: target.to_owned(),
            key: key.to_owned(),
        };
    }
    if code.as_deref() == Some("InvalidObjectState") {
        return StorageError::Archived {
            target: target.to_owned(),
            key: key.to_owned(),
            class: "an archive tier".into(),
        };
    }
    let detail = e
        .as_service_error()
        .and_then(|s| s.message().map(str::to_owned));
    let message = match &e {
        SdkError::DispatchFailure(d) => {
            let cause = root_cause(&e);
            if d.is_timeout() {
                format!("no answer (timed out): {cause}")
            } else {
                format!("cannot reach the endpoint: {cause}")
            }
        }
        SdkError::TimeoutError(_) => "no answer within the request timeout".into(),
        SdkError::ResponseError(_) => format!(
            "unreadable response{}: {}",
            status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
            root_cause(&e)
        ),
        SdkError::ConstructionFailure(_) => {
            format!("the request could not be built: {}", root_cause(&e))
        }
        _ => {
            let denied = status == Some(403) || code.as_deref() == Some("AccessDenied");
            let mut m = String::new();
            if denied {
                m.push_str("access denied: ");
            }
            if let Some(st) = status {
                m.push_str(&format!("HTTP {st}"));
            }
            if let Some(c) = &code {
                m.push_str(&format!(" {c}"));
            }
            if let Some(d) = &detail {
                m.push_str(&format!(": {d}"));
            }
            if m.trim().is_empty() {
                root_cause(&e)
            } else {
                m.trim().to_owned()
            }
        }
    };
    StorageError::S3 {
        target: target.to_owned(),
        key: key.to_owned(),
        message,
    }
}

/// Everything but RFC 3986's unreserved characters is escaped in a tag set.
const TAG_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn urlencode(s: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(s, TAG_ESCAPED)
}

fn tagging(tags: &[(String, String)]) -> Option<String> {
    (!tags.is_empty()).then(|| {
        tags.iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

#[async_trait]
impl Target for S3Target {
    fn name(&self) -> &str {
        &self.name
    }

    fn medium(&self) -> Medium {
        Medium::S3
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        Ok(Box::new(S3Upload {
            target: self.clone(),
            key: key.to_owned(),
            upload_id: None,
            buf: BytesMut::with_capacity(part_size(self.settings.part_size, 1)),
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            total: 0,
        }))
    }

    async fn put_small(&self, key: &str, data: Bytes) -> Result<PutResult, StorageError> {
        let mut upload = self.start_upload(key).await?;
        upload.put_part(data).await?;
        upload.complete().await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<Option<PutResult>, StorageError> {
        let size = data.len() as u64;
        // `If-None-Match: *` makes the store refuse a key that is taken (AWS
        // and moto do; stores that ignore it leave only the caller's listing
        // before the write to guard against a concurrent writer).
        match self
            .put_object_request(key)
            .if_none_match("*")
            .body(SdkBody::from(data))
            .send()
            .await
        {
            Ok(_) => self.checked(key, size).await.map(Some),
            Err(e)
                if e.raw_response().map(|r| r.status().as_u16()) == Some(412)
                    || e.as_service_error()
                        .and_then(|s| s.code())
                        .is_some_and(|c| c == "PreconditionFailed") =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err(key, e))?;
        let name = self.name.clone();
        let key = key.to_owned();
        let stream = futures::stream::unfold(Some(out.body), move |body| {
            let name = name.clone();
            let key = key.clone();
            async move {
                let mut body = body?;
                match body.try_next().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), Some(body))),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(StorageError::S3 {
                            target: name,
                            key,
                            message: format!("reading the object failed: {e}"),
                        }),
                        None,
                    )),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err(key, e))?;
        let storage_class = out
            .storage_class
            .map(|c| StorageClass::reported(c.as_str()));
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: u64::try_from(out.content_length.unwrap_or(0)).unwrap_or(0),
            thaw: Thaw::from_header(storage_class.as_ref(), out.restore.as_deref()),
            storage_class,
            version_id: out.version_id.filter(|v| v != "null"),
            retain_until: out
                .object_lock_retain_until_date
                .and_then(|d| chrono::DateTime::from_timestamp(d.secs(), d.subsec_nanos())),
            modified: out
                .last_modified
                .and_then(|d| chrono::DateTime::from_timestamp(d.secs(), d.subsec_nanos())),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err(prefix, e))?;
            for obj in page.contents.unwrap_or_default() {
                out.push(ObjectMeta {
                    key: obj.key.unwrap_or_default(),
                    size: u64::try_from(obj.size.unwrap_or(0)).unwrap_or(0),
                    storage_class: obj
                        .storage_class
                        .map(|c| StorageClass::reported(c.as_str())),
                    modified: obj
                        .last_modified
                        .and_then(|d| chrono::DateTime::from_timestamp(d.secs(), d.subsec_nanos())),
                    ..ObjectMeta::default()
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err(key, e))
            .map(drop)
    }

    async fn delete_version(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.err(key, e))
            .map(drop)
    }

    fn as_s3(&self) -> Option<&S3Target> {
        Some(self)
    }

    async fn cleanup_stale(&self, prefix: &str, age: Duration) -> Result<usize, StorageError> {
        let cutoff = std::time::SystemTime::now() - age;
        let mut removed = 0;
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.settings.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.err(prefix, e))?;
            for upload in page.uploads() {
                let started = upload
                    .initiated
                    .and_then(|t| std::time::SystemTime::try_from(t).ok());
                if started.is_some_and(|t| t > cutoff) {
                    continue;
                }
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| self.err(key, e))?;
                removed += 1;
            }
            if page.is_truncated != Some(true) {
                return Ok(removed);
            }
            key_marker = page.next_key_marker;
            id_marker = page.next_upload_id_marker;
        }
    }
}

#[cfg(test)]
mod tests;
