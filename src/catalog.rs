//! Finding backups: a backup is whatever has a manifest on a target.

use chrono::{DateTime, Utc};

use crate::manifest::{MANIFEST_SUFFIX, Manifest, job_prefix};
use crate::storage::{StorageError, Target, read_all};

/// One listed backup.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manifest_key: String,
    pub manifest: Manifest,
}

impl Entry {
    /// Key of the data object.
    pub fn object_key(&self) -> String {
        self.manifest.object_key(&self.manifest_key)
    }

    /// When the backup started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.manifest.started_at
    }
}

/// Every backup of `job` on `target`, oldest first (by the manifests' UTC start
/// time, never by name). Unreadable manifests are skipped with a warning.
///
/// # Errors
/// Listing the target failed.
pub async fn list(
    target: &dyn Target,
    prefix: &str,
    job: &str,
) -> Result<Vec<Entry>, StorageError> {
    let objects = target.list(&job_prefix(prefix, job)).await?;
    let mut out = Vec::new();
    for obj in objects
        .into_iter()
        .filter(|o| o.key.ends_with(MANIFEST_SUFFIX))
    {
        let bytes = read_all(target, &obj.key).await?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest) if manifest.job == job => out.push(Entry {
                manifest_key: obj.key,
                manifest,
            }),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target_name = target.name(), key = %obj.key, error = %e, "skipping unreadable manifest")
            }
        }
    }
    out.sort_by_key(Entry::started_at);
    Ok(out)
}

/// The newest backup of `job` on any of its targets (targets that cannot be
/// listed are logged and skipped).
pub async fn newest(strata: &crate::app::Strata, job: &str) -> Option<Entry> {
    let cfg = strata.config().job(job)?;
    let mut newest: Option<Entry> = None;
    for t in &cfg.targets {
        match list(strata.target(t).as_ref(), strata.prefix(t), job).await {
            Ok(entries) => {
                if let Some(e) = entries.into_iter().last() {
                    if newest
                        .as_ref()
                        .is_none_or(|n| e.started_at() > n.started_at())
                    {
                        newest = Some(e);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(job, target_name = %t, error = %e, "cannot list backups");
            }
        }
    }
    newest
}

/// Picks `latest` or a backup id.
pub fn select<'a>(entries: &'a [Entry], which: &str) -> Option<&'a Entry> {
    if which == "latest" {
        entries.last()
    } else {
        entries.iter().find(|e| e.manifest.backup_id == which)
    }
}
