//! S3 lifecycle rules: what the config wants on a bucket (storage tiers by age,
//! expiry, and cleanup of abandoned multipart uploads, all scoped to the target's
//! prefix), what the bucket has, and putting the wanted rules in place without
//! touching rules that are not strata's.
//!
//! Transitions select backup objects by the tag [`BACKUP_TAG`] so manifests stay
//! in STANDARD: a manifest in GLACIER could not be read, and listing backups reads
//! every manifest. Expiry applies to both, so they go together.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleAndOperator, LifecycleRuleFilter, Tag,
    Transition as SdkTransition, TransitionStorageClass,
};
use serde::Serialize;

use crate::config::{TargetConfig, TargetKind};
use crate::domain::StorageClass;
use crate::storage::s3::{BACKUP_TAG, S3Target, s3_error};
use crate::storage::{StorageError, Target};

/// Days after which an abandoned multipart upload is removed by the bucket itself
/// (the daemon also cleans up at start-up; this covers a daemon that never comes
/// back).
pub const ABORT_INCOMPLETE_DAYS: u32 = 2;

/// One transition of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub days: u32,
    pub storage_class: StorageClass,
}

/// A lifecycle rule in the terms strata compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub enabled: bool,
    pub prefix: String,
    /// Tag filter (`key`, `value`).
    pub tag: Option<(String, String)>,
    pub transitions: Vec<Transition>,
    pub expiration_days: Option<u32>,
    pub abort_incomplete_days: Option<u32>,
}

/// A target's lifecycle: wanted, present, and how they differ.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub target: String,
    pub bucket: String,
    pub wanted: Vec<Rule>,
    pub actual: Vec<Rule>,
    /// Wanted rules the bucket lacks.
    pub missing: Vec<String>,
    /// Wanted rules present with other settings.
    pub differs: Vec<String>,
    /// Rules on the bucket that are not this target's (left alone).
    pub foreign: Vec<String>,
    pub in_sync: bool,
}

impl Status {
    /// One line for `/health` and the compliance report.
    pub fn summary(&self) -> String {
        if self.in_sync {
            format!("{} rule(s) in place", self.wanted.len())
        } else {
            let mut parts = Vec::new();
            if !self.missing.is_empty() {
                parts.push(format!("missing {}", self.missing.join(", ")));
            }
            if !self.differs.is_empty() {
                parts.push(format!("different {}", self.differs.join(", ")));
            }
            format!(
                "drift: {}; run `strata lifecycle apply --target {}`",
                parts.join("; "),
                self.target
            )
        }
    }
}

/// The rules the config wants on `target`'s bucket (empty for local targets).
pub fn wanted(target: &TargetConfig) -> Vec<Rule> {
    let TargetKind::S3 { lifecycle, .. } = &target.kind else {
        return Vec::new();
    };
    let prefix = crate::domain::manifest::target_prefix(&target.prefix);
    let id = |what: &str| format!("strata:{}:{what}", target.prefix);
    let mut rules = Vec::new();
    let transitions: Vec<Transition> = lifecycle
        .iter()
        .filter_map(|r| {
            r.storage_class.as_ref().map(|c| Transition {
                days: r.after_days,
                storage_class: c.clone(),
            })
        })
        .collect();
    if !transitions.is_empty() {
        rules.push(Rule {
            id: id("tiers"),
            enabled: true,
            prefix: prefix.clone(),
            tag: Some((BACKUP_TAG.0.into(), BACKUP_TAG.1.into())),
            transitions,
            expiration_days: None,
            abort_incomplete_days: None,
        });
    }
    if let Some(expire) = lifecycle.iter().find(|r| r.storage_class.is_none()) {
        rules.push(Rule {
            id: id("expire"),
            enabled: true,
            prefix: prefix.clone(),
            tag: None,
            transitions: Vec::new(),
            expiration_days: Some(expire.after_days),
            abort_incomplete_days: None,
        });
    }
    rules.push(Rule {
        id: id("abort-incomplete-uploads"),
        enabled: true,
        prefix,
        tag: None,
        transitions: Vec::new(),
        expiration_days: None,
        abort_incomplete_days: Some(ABORT_INCOMPLETE_DAYS),
    });
    rules
}

fn days(n: Option<i32>) -> Option<u32> {
    n.and_then(|d| u32::try_from(d).ok())
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Reads an SDK rule into strata's terms.
pub fn from_sdk(r: &LifecycleRule) -> Rule {
    #[allow(deprecated)]
    let legacy_prefix = r.prefix().map(str::to_owned);
    let filter = r.filter();
    let and = filter.and_then(LifecycleRuleFilter::and);
    let prefix = filter
        .and_then(LifecycleRuleFilter::prefix)
        .or_else(|| and.and_then(LifecycleRuleAndOperator::prefix))
        .map(str::to_owned)
        .or(legacy_prefix)
        .unwrap_or_default();
    let tag = filter
        .and_then(LifecycleRuleFilter::tag)
        .or_else(|| and.and_then(|a| a.tags().first()))
        .map(|t| (t.key().to_owned(), t.value().to_owned()));
    Rule {
        id: r.id().unwrap_or_default().to_owned(),
        enabled: *r.status() == ExpirationStatus::Enabled,
        prefix,
        tag,
        transitions: r
            .transitions()
            .iter()
            .map(|t| Transition {
                days: days(t.days()).unwrap_or(0),
                storage_class: StorageClass::reported(
                    t.storage_class().map_or("", TransitionStorageClass::as_str),
                ),
            })
            .collect(),
        expiration_days: r.expiration().and_then(|e| days(e.days())),
        abort_incomplete_days: r
            .abort_incomplete_multipart_upload()
            .and_then(|a| days(a.days_after_initiation())),
    }
}

/// Builds the SDK rule for `rule`.
pub fn to_sdk(rule: &Rule) -> LifecycleRule {
    let filter = match &rule.tag {
        None => LifecycleRuleFilter::builder()
            .prefix(rule.prefix.clone())
            .build(),
        Some((k, v)) => LifecycleRuleFilter::builder()
            .and(
                LifecycleRuleAndOperator::builder()
                    .prefix(rule.prefix.clone())
                    .tags(Tag::builder().key(k).value(v).build().expect("tag"))
                    .build(),
            )
            .build(),
    };
    let mut b = LifecycleRule::builder()
        .id(rule.id.clone())
        .status(if rule.enabled {
            ExpirationStatus::Enabled
        } else {
            ExpirationStatus::Disabled
        })
        .filter(filter);
    for t in &rule.transitions {
        b = b.transitions(
            SdkTransition::builder()
                .days(to_i32(t.days))
                .storage_class(TransitionStorageClass::from(t.storage_class.as_str()))
                .build(),
        );
    }
    if let Some(d) = rule.expiration_days {
        b = b.expiration(LifecycleExpiration::builder().days(to_i32(d)).build());
    }
    if let Some(d) = rule.abort_incomplete_days {
        b = b.abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(to_i32(d))
                .build(),
        );
    }
    b.build().expect("status is set")
}

/// Compares wanted rules with the bucket's.
pub fn compare(target: &str, bucket: &str, wanted: Vec<Rule>, actual: Vec<Rule>) -> Status {
    let mut missing = Vec::new();
    let mut differs = Vec::new();
    for w in &wanted {
        match actual.iter().find(|a| a.id == w.id) {
            None => missing.push(w.id.clone()),
            Some(a) if a != w => differs.push(w.id.clone()),
            Some(_) => {}
        }
    }
    let foreign = actual
        .iter()
        .filter(|a| !wanted.iter().any(|w| w.id == a.id))
        .map(|a| a.id.clone())
        .collect();
    Status {
        target: target.to_owned(),
        bucket: bucket.to_owned(),
        in_sync: missing.is_empty() && differs.is_empty(),
        wanted,
        actual,
        missing,
        differs,
        foreign,
    }
}

/// The bucket's current rules (none when it has no lifecycle configuration).
///
/// # Errors
/// The bucket cannot be read.
pub async fn fetch(s3: &S3Target) -> Result<Vec<LifecycleRule>, StorageError> {
    let bucket = &s3.settings().bucket;
    match s3
        .client()
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => Ok(out.rules.unwrap_or_default()),
        Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Ok(Vec::new()),
        Err(e) => Err(s3_error(
            s3.name(),
            &format!("bucket {bucket} lifecycle"),
            e,
        )),
    }
}

/// The lifecycle status of one S3 target.
///
/// # Errors
/// The bucket cannot be read.
pub async fn status(target: &TargetConfig, s3: &S3Target) -> Result<Status, StorageError> {
    let actual = fetch(s3).await?;
    Ok(compare(
        &target.name,
        &s3.settings().bucket,
        wanted(target),
        actual.iter().map(from_sdk).collect(),
    ))
}

/// Puts the wanted rules on the bucket, keeping every rule that is not this
/// target's; returns the status afterwards.
///
/// # Errors
/// The bucket cannot be read or written.
pub async fn apply(target: &TargetConfig, s3: &S3Target) -> Result<Status, StorageError> {
    let wanted = wanted(target);
    let mut rules: Vec<LifecycleRule> = fetch(s3)
        .await?
        .into_iter()
        .filter(|r| !wanted.iter().any(|w| Some(w.id.as_str()) == r.id()))
        .collect();
    rules.extend(wanted.iter().map(to_sdk));
    let bucket = &s3.settings().bucket;
    s3.client()
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .set_rules(Some(rules))
                .build()
                .expect("rules are set"),
        )
        .send()
        .await
        .map_err(|e| s3_error(&target.name, &format!("bucket {bucket} lifecycle"), e))?;
    status(target, s3).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LifecycleRule as Tier;
    use crate::storage::s3::S3Settings;

    fn target(prefix: &str, lifecycle: Vec<Tier>) -> TargetConfig {
        TargetConfig {
            name: "primary".into(),
            prefix: prefix.into(),
            offsite: false,
            kind: TargetKind::S3 {
                settings: Box::new(S3Settings::new("b", "us-east-1")),
                lifecycle,
                object_lock: None,
                manage_lifecycle: false,
            },
        }
    }

    fn strategy() -> Vec<Tier> {
        [
            (30, Some("STANDARD_IA")),
            (90, Some("GLACIER")),
            (365, Some("DEEP_ARCHIVE")),
            (2555, None),
        ]
        .into_iter()
        .map(|(d, c)| Tier {
            after_days: d,
            storage_class: c.map(StorageClass::reported),
        })
        .collect()
    }

    #[test]
    fn the_strategy_becomes_three_rules_scoped_to_the_prefix() {
        let rules = wanted(&target("database-backups", strategy()));
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "strata:database-backups:tiers",
                "strata:database-backups:expire",
                "strata:database-backups:abort-incomplete-uploads"
            ]
        );
        assert!(rules.iter().all(|r| r.prefix == "database-backups/"));
        assert_eq!(
            rules[0].tag,
            Some(("strata-object".into(), "backup".into()))
        );
        assert_eq!(
            rules[0]
                .transitions
                .iter()
                .map(|t| t.days)
                .collect::<Vec<_>>(),
            [30, 90, 365]
        );
        assert_eq!(rules[0].expiration_days, None);
        assert_eq!(rules[1].tag, None, "expiry takes manifests too");
        assert_eq!(rules[1].expiration_days, Some(2555));
        assert_eq!(rules[2].abort_incomplete_days, Some(ABORT_INCOMPLETE_DAYS));
    }

    #[test]
    fn without_tiers_only_the_upload_cleanup_is_wanted() {
        let rules = wanted(&target("", Vec::new()));
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].id, "strata::abort-incomplete-uploads");
        assert_eq!(rules[0].prefix, "");
    }

    #[test]
    fn rules_survive_the_sdk_round_trip() {
        for r in wanted(&target("p", strategy())) {
            assert_eq!(from_sdk(&to_sdk(&r)), r);
        }
    }

    #[test]
    fn compare_names_missing_different_and_foreign_rules() {
        let want = wanted(&target("p", strategy()));
        let mut have = want.clone();
        have.remove(1);
        have[0].transitions[0].days = 45;
        let mut other = want[1].clone();
        other.id = "someone-else".into();
        have.push(other);
        let s = compare("primary", "b", want, have);
        assert!(!s.in_sync);
        assert_eq!(s.missing, ["strata:p:expire"]);
        assert_eq!(s.differs, ["strata:p:tiers"]);
        assert_eq!(s.foreign, ["someone-else"]);
        assert!(
            s.summary()
                .contains("strata lifecycle apply --target primary")
        );
    }
}
