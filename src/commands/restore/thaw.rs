//! Archived objects (GLACIER, DEEP_ARCHIVE): a restore or verification asks
//! for the thaw and says when the object should be readable, instead of failing
//! with S3's raw `InvalidObjectState`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::RestoreError;
use crate::domain::{StorageClass, ThawTier};
use crate::storage::s3::S3Target;
use crate::storage::{Target, Thaw};

/// How archived (GLACIER, DEEP_ARCHIVE) objects are thawed before reading.
#[derive(Debug, Clone)]
pub struct ThawOptions {
    /// Retrieval tier: `Standard`, `Bulk` or `Expedited` (GLACIER only).
    pub tier: ThawTier,
    /// Days the thawed copy stays readable.
    pub days: i32,
    /// Poll until readable instead of returning [`RestoreError::Thawing`].
    pub wait: bool,
    /// Time between polls (`daemon.thaw_poll`, default 5 minutes).
    pub poll: Duration,
}

impl Default for ThawOptions {
    fn default() -> Self {
        Self {
            tier: ThawTier::Standard,
            days: 3,
            wait: false,
            poll: Duration::from_secs(300),
        }
    }
}

/// Returns once `key` can be read; requests a thaw of an archived object and
/// then waits (`wait`) or says when it should be ready.
///
/// # Errors
/// [`RestoreError::Thawing`] while not readable (without `wait`), or S3 errors.
pub async fn ensure_readable(
    target: &dyn Target,
    key: &str,
    opts: &ThawOptions,
) -> Result<(), RestoreError> {
    let Some(s3) = target.as_s3() else {
        return Ok(());
    };
    let mut requested_at: Option<DateTime<Utc>> = None;
    loop {
        let meta = target.head(key).await?;
        let class = meta.storage_class.clone();
        let state = match meta.thaw {
            Thaw::NotArchived | Thaw::Ready(_) => return Ok(()),
            Thaw::Archived => {
                request_thaw(s3, key, opts).await?;
                requested_at.get_or_insert_with(Utc::now);
                format!(
                    "a {} thaw for {} day(s) was requested now",
                    opts.tier, opts.days
                )
            }
            Thaw::InProgress => "a thaw is in progress".to_owned(),
        };
        let ready_by = requested_at.unwrap_or_else(Utc::now)
            + chrono::Duration::hours(i64::from(
                // S3 names the class of every archived object; GLACIER's times otherwise.
                class
                    .as_ref()
                    .unwrap_or(&StorageClass::Glacier)
                    .thaw_hours(opts.tier),
            ));
        let err = RestoreError::Thawing {
            target: target.name().to_owned(),
            key: key.to_owned(),
            class: class.map(|c| c.to_string()).unwrap_or_default(),
            state,
            ready_by,
        };
        if !opts.wait {
            return Err(err);
        }
        tracing::info!(error = %err, poll_s = opts.poll.as_secs(), "waiting for an archived object to thaw");
        tokio::time::sleep(opts.poll).await;
    }
}

async fn request_thaw(s3: &S3Target, key: &str, opts: &ThawOptions) -> Result<(), RestoreError> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};
    let request = RestoreRequest::builder()
        .days(opts.days)
        .glacier_job_parameters(
            GlacierJobParameters::builder()
                .tier(Tier::from(opts.tier.as_str()))
                .build()
                .expect("tier is set"),
        )
        .build();
    match s3
        .client()
        .restore_object()
        .bucket(&s3.settings().bucket)
        .key(key)
        .restore_request(request)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("RestoreAlreadyInProgress") => Ok(()),
        Err(e) => Err(crate::storage::s3::s3_error(s3.name(), key, e).into()),
    }
}
