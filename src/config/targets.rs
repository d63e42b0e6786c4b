//! Validation of `targets:`: local paths, buckets and their S3 settings,
//! lifecycle rules and Object Lock.

use super::raw::*;
use super::*;

pub(super) fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The class named at `path`, or a problem there.
pub(super) fn check_class(
    class: &str,
    path: &str,
    problems: &mut Problems,
) -> Option<StorageClass> {
    class
        .parse()
        .map_err(|e: UnknownStorageClass| problems.add(path, e.to_string()))
        .ok()
}

// Long on purpose: One check per key of a target, in the order of docs/config-reference.yaml.
pub(super) fn validate_target(name: &str, t: RawTarget, p: &mut Problems) -> Option<TargetConfig> {
    let at = |key: &str| format!("targets.{name}.{key}");
    let prefix = t
        .prefix
        .clone()
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned();
    let offsite = t.offsite.unwrap_or(false);
    match t.kind.as_str() {
        "local" => {
            let s3_only = [
                ("bucket", t.bucket.is_some()),
                ("region", t.region.is_some()),
                ("endpoint", t.endpoint.is_some()),
                ("path_style", t.path_style.is_some()),
                ("server_side_encryption", t.server_side_encryption.is_some()),
                ("storage_class", t.storage_class.is_some()),
                ("lifecycle", t.lifecycle.is_some()),
                ("object_lock", t.object_lock.is_some()),
                ("manage_lifecycle", t.manage_lifecycle.is_some()),
                ("tags", t.tags.is_some()),
                ("part_size_mib", t.part_size_mib.is_some()),
                ("parts_in_flight", t.parts_in_flight.is_some()),
                ("request_timeout", t.request_timeout.is_some()),
            ];
            for (key, set) in s3_only {
                if set {
                    p.add(at(key), "only valid for kind: s3");
                }
            }
            let Some(path) = t.path else {
                p.add(at("path"), "required for kind: local");
                return None;
            };
            Some(TargetConfig {
                name: name.to_owned(),
                prefix,
                offsite,
                kind: TargetKind::Local { path },
            })
        }
        "s3" => {
            if t.path.is_some() {
                p.add(at("path"), "only valid for kind: local");
            }
            let Some(bucket) = t.bucket else {
                p.add(at("bucket"), "required for kind: s3");
                return None;
            };
            if !valid_bucket(&bucket) {
                p.add(
                    at("bucket"),
                    format!("'{bucket}' is not a valid S3 bucket name"),
                );
            }
            let mut settings = crate::storage::s3::S3Settings::new(
                bucket,
                t.region.unwrap_or_else(|| "us-east-1".into()),
            );
            settings.endpoint = t.endpoint.filter(|e| !e.is_empty());
            if let Some(e) = &settings.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    p.add(at("endpoint"), format!("'{e}' is not an http(s) URL"));
                }
            }
            // S3-compatible stores (moto, MinIO, Garage) are reached by address,
            // where virtual-hosted names would not resolve.
            settings.path_style = t.path_style.unwrap_or(settings.endpoint.is_some());
            settings.server_side_encryption = match t.server_side_encryption.as_deref() {
                None | Some("AES256") => Some(ServerSideEncryption::S3Managed),
                Some("aws:kms") => Some(ServerSideEncryption::Kms),
                Some("none") => None,
                Some(other) => {
                    p.add(
                        at("server_side_encryption"),
                        format!("'{other}' is not AES256, aws:kms or none"),
                    );
                    None
                }
            };
            settings.storage_class = t
                .storage_class
                .and_then(|class| check_class(&class, &at("storage_class"), p));
            settings.tags = t.tags.unwrap_or_default().into_iter().collect();
            if let Some(mib) = t.part_size_mib {
                if (5..=5120).contains(&mib) {
                    settings.part_size = mib * 1024 * 1024;
                } else {
                    p.add(at("part_size_mib"), "must be between 5 and 5120");
                }
            }
            if let Some(text) = &t.request_timeout {
                match humantime::parse_duration(text) {
                    Ok(d) if d >= Duration::from_secs(1) => settings.request_timeout = d,
                    Ok(_) => p.add(at("request_timeout"), "must be at least 1s"),
                    Err(e) => p.add(at("request_timeout"), format!("'{text}': {e}")),
                }
            }
            if let Some(n) = t.parts_in_flight {
                if (1..=64).contains(&n) {
                    settings.parts_in_flight = n;
                } else {
                    p.add(at("parts_in_flight"), "must be between 1 and 64");
                }
            }
            let lifecycle = validate_lifecycle(name, t.lifecycle.unwrap_or_default(), p);
            settings.tag_backups = lifecycle.iter().any(|r| r.storage_class.is_some());
            let object_lock = t.object_lock.and_then(|l| {
                let mode = l.mode.parse::<LockMode>();
                if let Err(e) = &mode {
                    p.add(at("object_lock.mode"), e);
                }
                if l.days == 0 {
                    p.add(at("object_lock.days"), "must be at least 1");
                }
                Some(ObjectLock {
                    mode: mode.ok()?,
                    days: l.days,
                })
            });
            settings.object_lock.clone_from(&object_lock);
            Some(TargetConfig {
                name: name.to_owned(),
                prefix,
                offsite,
                kind: TargetKind::S3 {
                    settings: Box::new(settings),
                    lifecycle,
                    object_lock,
                    manage_lifecycle: t.manage_lifecycle.unwrap_or(false),
                },
            })
        }
        other => {
            p.add(
                at("kind"),
                format!("unknown kind '{other}' (expected local or s3)"),
            );
            None
        }
    }
}

pub(super) fn validate_lifecycle(
    target: &str,
    rules: Vec<RawLifecycleRule>,
    p: &mut Problems,
) -> Vec<LifecycleRule> {
    let mut out = Vec::new();
    let mut last_day = 0;
    let count = rules.len();
    for (i, r) in rules.into_iter().enumerate() {
        let at = format!("targets.{target}.lifecycle[{i}]");
        if i > 0 && r.after_days <= last_day {
            p.add(&at, "after_days must increase from rule to rule");
        }
        last_day = r.after_days;
        match (r.storage_class, r.expire.unwrap_or(false)) {
            (Some(class), false) => {
                if let Some(class) = check_class(&class, &format!("{at}.storage_class"), p) {
                    out.push(LifecycleRule {
                        after_days: r.after_days,
                        storage_class: Some(class),
                    });
                }
            }
            (None, true) => {
                if i + 1 != count {
                    p.add(&at, "the expire rule must be the last one");
                }
                out.push(LifecycleRule {
                    after_days: r.after_days,
                    storage_class: None,
                });
            }
            _ => p.add(&at, "give either storage_class or expire: true"),
        }
    }
    out
}
