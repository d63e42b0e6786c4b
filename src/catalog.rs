//! Finding backups: a backup is whatever has a manifest on a target that
//! passes [`manifest::open`]: its MAC verified (or, for jobs without
//! encryption, accepted unsigned), every field in bounds, its keys inside the
//! job's prefix. Manifests that fail are *refused*: never restored, counted or
//! pruned; [`list_all`] reports them so `list`, `verify`, `status` and the
//! compliance report can name them.

use chrono::{DateTime, Utc};

use crate::app::Strata;
use crate::domain::manifest::{
    self, Layout, MANIFEST_SUFFIX, Manifest, ManifestError, Trust, job_prefix,
};
use crate::storage::{StorageError, read_all};

/// One listed backup.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manifest_key: String,
    pub manifest: Manifest,
    pub trust: Trust,
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

/// A manifest that is not used, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    pub manifest_key: String,
    pub error: ManifestError,
}

/// What one target holds of a job.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Usable backups, oldest first (by the manifests' UTC start time).
    pub entries: Vec<Entry>,
    pub refused: Vec<Refused>,
}

/// Every manifest of `job` on target `target`, usable or refused.
///
/// # Errors
/// Listing or reading the target failed.
pub async fn list_all(strata: &Strata, target: &str, job: &str) -> Result<Listing, StorageError> {
    let config = strata.config();
    let t = strata.target(target);
    let prefix = job_prefix(strata.prefix(target), job);
    let keys = config.encryption.as_ref().map(|e| e.keyring.as_ref());
    let require = config.require_authenticated_manifests;
    let mut out = Listing::default();
    for obj in t
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|o| o.key.ends_with(MANIFEST_SUFFIX))
    {
        let bytes = read_all(t.as_ref(), &obj.key).await?;
        let opened = manifest::open(&bytes, keys, require).and_then(|(m, trust)| {
            if m.job != job {
                return Err(ManifestError::Field {
                    field: "job".into(),
                    why: format!("'{}' under the prefix of job '{job}'", m.job),
                });
            }
            // The copy it says is on this target must be where it was found.
            if let Some(own) = m.targets.iter().find(|r| r.target == target) {
                if own.key != m.object_key(&obj.key) {
                    return Err(ManifestError::Field {
                        field: "targets.key".into(),
                        why: "does not match where the manifest is".into(),
                    });
                }
            }
            // Keys of the copies on other targets must be inside their prefixes.
            for r in &m.targets {
                if let Some(tc) = config.targets.get(&r.target) {
                    if !r.key.starts_with(&job_prefix(&tc.prefix, job)) {
                        return Err(ManifestError::Field {
                            field: "targets.key".into(),
                            why: format!("the key on '{}' is outside the job's prefix", r.target),
                        });
                    }
                }
            }
            Ok((m, trust))
        });
        match opened {
            Ok((manifest, trust)) => {
                if trust == Trust::Unsigned && keys.is_some() {
                    tracing::warn!(target_name = target, key = %obj.key, "manifest has no MAC (written before manifests were authenticated): read without authentication");
                }
                out.entries.push(Entry {
                    manifest_key: obj.key,
                    manifest,
                    trust,
                });
            }
            Err(error) => {
                tracing::warn!(target_name = target, key = %obj.key, error = %error, "manifest refused");
                out.refused.push(Refused {
                    manifest_key: obj.key,
                    error,
                });
            }
        }
    }
    // Same start (two backups in one second): the one named after it is newer.
    out.entries.sort_by_key(|e| {
        (
            e.started_at(),
            Layout::sequence_of(&e.manifest.backup_id),
            e.manifest.finished_at,
        )
    });
    Ok(out)
}

/// The usable backups of `job` on `target`, oldest first.
///
/// # Errors
/// Listing or reading the target failed.
pub async fn list(strata: &Strata, target: &str, job: &str) -> Result<Vec<Entry>, StorageError> {
    list_all(strata, target, job).await.map(|l| l.entries)
}

/// The newest usable backup of `job` on any of its targets (targets that
/// cannot be listed are logged and skipped).
pub async fn newest(strata: &Strata, job: &str) -> Option<Entry> {
    let cfg = strata.config().job(job)?;
    let mut newest: Option<Entry> = None;
    for t in &cfg.targets {
        match list(strata, t, job).await {
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
