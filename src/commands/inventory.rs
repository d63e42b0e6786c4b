//! What is stored where: bytes per target and storage class, and the newest backup
//! size per job, read from the targets themselves. Feeds `strata cost`, the
//! compliance report and the daemon's storage metrics.

use std::collections::BTreeMap;

use crate::app::Strata;
use crate::config::TargetKind;
use crate::domain::StorageClass;
use crate::policy::cost::{self, CostReport, JobProjection, Projection};
use crate::storage::Medium;

/// Bytes per (target, storage class), plus targets that could not be listed.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub objects: BTreeMap<String, Vec<(StorageClass, u64)>>,
    pub errors: BTreeMap<String, String>,
}

/// Lists every target under its prefix.
pub async fn take(strata: &Strata) -> Inventory {
    let mut inv = Inventory::default();
    for (name, cfg) in &strata.config().targets {
        let target = strata.target(name);
        match target
            .list(&crate::domain::manifest::target_prefix(&cfg.prefix))
            .await
        {
            Ok(objects) => {
                let local = target.medium() == Medium::Local;
                inv.objects.insert(
                    name.clone(),
                    objects
                        .into_iter()
                        .map(|o| {
                            let class = if local {
                                StorageClass::Local
                            } else {
                                o.storage_class.unwrap_or(StorageClass::Standard)
                            };
                            (class, o.size)
                        })
                        .collect(),
                );
            }
            Err(e) => {
                inv.errors.insert(name.clone(), e.to_string());
            }
        }
    }
    inv
}

/// Stored size of each job's newest backup (from its manifests).
pub fn newest_sizes(jobs: &crate::commands::prune::Jobs) -> BTreeMap<String, u64> {
    jobs.iter()
        .filter_map(|(job, backups)| {
            let newest = backups
                .as_ref()
                .ok()?
                .values()
                .max_by_key(|b| b.manifest.started_at)?;
            Some((job.clone(), newest.manifest.stored_bytes))
        })
        .collect()
}

/// The cost report: stored bytes priced per target and class, plus the
/// steady-state projection of every job on every S3 target it writes to.
pub fn cost_report(
    strata: &Strata,
    inventory: &Inventory,
    sizes: &BTreeMap<String, u64>,
) -> CostReport {
    let config = strata.config();
    let targets = inventory
        .objects
        .iter()
        .map(|(name, objects)| cost::price_target(name, objects.iter().cloned(), &config.pricing))
        .collect();
    let mut projections = Vec::new();
    for (job, cfg) in &config.jobs {
        let Some(&bytes) = sizes.get(job) else {
            continue;
        };
        for t in &cfg.targets {
            let TargetKind::S3 {
                settings,
                lifecycle,
                ..
            } = &config.targets[t].kind
            else {
                continue;
            };
            let projection = Projection {
                retention: cfg.retention,
                lifecycle,
                backup_bytes: bytes,
                initial_class: settings
                    .storage_class
                    .as_ref()
                    .unwrap_or(&StorageClass::Standard),
                part_bytes: settings.part_size as u64,
            };
            projections.push(JobProjection {
                job: job.clone(),
                target: t.clone(),
                backup_bytes: bytes,
                projected: cost::project(&projection, &config.pricing),
            });
        }
    }
    CostReport::new(targets, projections)
}
