//! Validation of `jobs:`: the source, targets, schedule, retention, restore
//! tests, refresh and globals of each job.

use super::raw::*;
use super::validate::{cron, db_url, valid_name};
use super::*;

// Long on purpose: One check per key of a job, in the order of docs/config-reference.yaml.
pub(super) fn validate_job(
    name: &str,
    j: RawJob,
    targets: &BTreeMap<String, TargetConfig>,
    jobs: &[String],
    p: &mut Problems,
) -> Option<JobConfig> {
    let at = |key: &str| format!("jobs.{name}.{key}");
    if !valid_name(name) {
        p.add(
            format!("jobs.{name}"),
            "job names use lowercase letters, digits, - and _",
        );
    }
    let database_url = db_url(&j.database_url, &at("database_url"), p);
    let kind = validate_kind(name, &j, p);
    let schedule = j
        .schedule
        .as_deref()
        .and_then(|s| cron(s, &at("schedule"), p));
    let file_prefix = j.file_prefix.unwrap_or_else(|| name.to_owned());
    if !valid_name(&file_prefix) {
        p.add(at("file_prefix"), "use lowercase letters, digits, - and _");
    }
    let compression = match j
        .compression
        .as_deref()
        .unwrap_or("gzip:6")
        .parse::<Compression>()
    {
        Ok(c) => Some(c),
        Err(e) => {
            p.add(at("compression"), e);
            None
        }
    };
    if j.targets.is_empty() {
        p.add(at("targets"), "at least one target is required");
    }
    for (i, t) in j.targets.iter().enumerate() {
        if !targets.contains_key(t) {
            let known = targets.keys().cloned().collect::<Vec<_>>().join(", ");
            p.add(
                format!("jobs.{name}.targets[{i}]"),
                format!("unknown target '{t}' (known: {known})"),
            );
        }
    }
    // As written, so a physical job with another problem is checked as one.
    let physical = j.kind.as_deref() == Some("physical");
    let r = j.retention.unwrap_or_default();
    let retention = Retention {
        // A physical job's window keeps what recent days need.
        daily: r.daily.unwrap_or(if physical { 0 } else { 7 }),
        weekly: r.weekly.unwrap_or(0),
        monthly: r.monthly.unwrap_or(0),
        yearly: r.yearly.unwrap_or(0),
    };
    if retention == Retention::default() && !physical {
        p.add(at("retention"), "keeps nothing; set at least daily: 1");
    }
    let rpo = match humantime::parse_duration(j.rpo.as_deref().unwrap_or("24h")) {
        Ok(d) if d >= Duration::from_secs(60) => Some(d),
        Ok(_) => {
            p.add(at("rpo"), "must be at least 1m");
            None
        }
        Err(e) => {
            p.add(at("rpo"), format!("'{}': {e}", j.rpo.unwrap_or_default()));
            None
        }
    };
    let timeout = match humantime::parse_duration(j.timeout.as_deref().unwrap_or("12h")) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        Ok(_) => {
            p.add(at("timeout"), "must be at least 1s");
            None
        }
        Err(e) => {
            p.add(
                at("timeout"),
                format!("'{}': {e}", j.timeout.clone().unwrap_or_default()),
            );
            None
        }
    };
    let prune = match j.prune.as_deref().unwrap_or("automatic") {
        "automatic" => Some(PruneMode::Automatic),
        "approval" => Some(PruneMode::Approval),
        other => {
            p.add(
                at("prune"),
                format!("'{other}' is not automatic or approval"),
            );
            None
        }
    };
    let verify = match j.verify {
        None => Some(VerifyConfig {
            restore_test: None,
            restore_into: None,
            read_back: ReadBack::Never,
            scratch_dir: None,
            sql: Vec::new(),
        }),
        Some(v) => {
            let restore_test = v
                .restore_test
                .as_deref()
                .and_then(|s| cron(s, &at("verify.restore_test"), p));
            let restore_into = v
                .restore_into
                .as_deref()
                .filter(|s| !s.is_empty())
                .and_then(|s| db_url(s, &at("verify.restore_into"), p));
            // A logical job's test restores into a server; a physical
            // job's recovers into a scratch data directory.
            let (needed, other) = if physical {
                ("scratch_dir", "restore_into")
            } else {
                ("restore_into", "scratch_dir")
            };
            let has = |key: &str| match key {
                "restore_into" => v.restore_into.as_deref().is_some_and(|s| !s.is_empty()),
                _ => v.scratch_dir.is_some(),
            };
            if restore_test.is_some() && !has(needed) {
                p.add(
                    at(&format!("verify.{needed}")),
                    "required when verify.restore_test is set",
                );
            }
            if has(other) {
                p.add(
                    at(&format!("verify.{other}")),
                    if physical {
                        "a physical job's restore test recovers into verify.scratch_dir, not a server"
                    } else {
                        "only a physical job's restore test uses a scratch data directory"
                    },
                );
            }
            if v.scratch_dir.as_ref().is_some_and(|d| d.is_relative()) {
                p.add(at("verify.scratch_dir"), "must be an absolute path");
            }
            let read_back = match v.read_back.as_deref().unwrap_or("never") {
                "always" => Some(ReadBack::Always),
                "weekly" => Some(ReadBack::Weekly),
                "never" => Some(ReadBack::Never),
                other => {
                    p.add(
                        at("verify.read_back"),
                        format!("'{other}' is not always, weekly or never"),
                    );
                    None
                }
            };
            read_back.map(|read_back| VerifyConfig {
                restore_test,
                restore_into,
                read_back,
                scratch_dir: v.scratch_dir,
                sql: v.sql,
            })
        }
    };
    let refresh = j.refresh.map(|r| {
        if r.from == name {
            p.add(at("refresh.from"), "a job cannot refresh from itself");
        } else if !jobs.contains(&r.from) {
            p.add(at("refresh.from"), format!("unknown job '{}'", r.from));
        }
        RefreshConfig {
            from: r.from,
            trim_sql: r.trim_sql,
            mask_sql: r.mask_sql,
        }
    });
    Some(JobConfig {
        name: name.to_owned(),
        database_url: database_url?,
        schedule,
        file_prefix,
        format: if physical {
            DumpFormat::Base
        } else {
            j.format.unwrap_or(DumpFormat::Plain)
        },
        compression: compression?,
        targets: j.targets,
        retention,
        rpo: rpo?,
        prune: prune?,
        verify: verify?,
        refresh,
        globals: GlobalsConfig {
            role_passwords: j.globals.and_then(|g| g.role_passwords).unwrap_or(false),
        },
        timeout: timeout?,
        kind: kind?,
    })
}

/// `kind` and what only one kind may use: a physical job copies the cluster,
/// so dump settings, refreshes and separate globals mean nothing for it.
fn validate_kind(name: &str, j: &RawJob, p: &mut Problems) -> Option<JobKind> {
    let at = |key: &str| format!("jobs.{name}.{key}");
    let window = j
        .retention
        .as_ref()
        .and_then(|r| r.recovery_window.as_deref());
    match j.kind.as_deref().unwrap_or("logical") {
        "logical" => {
            if j.format == Some(DumpFormat::Base) {
                p.add(
                    at("format"),
                    "base is what physical jobs write (kind: physical); use plain or custom",
                );
            }
            if window.is_some() {
                p.add(
                    at("retention.recovery_window"),
                    "only a physical job (kind: physical) has a recovery window",
                );
            }
            if j.wal.is_some() {
                p.add(
                    at("wal"),
                    "only a physical job (kind: physical) archives WAL",
                );
            }
            Some(JobKind::Logical)
        }
        "physical" => {
            for (key, set) in [
                ("format", j.format.is_some()),
                ("refresh", j.refresh.is_some()),
                ("globals", j.globals.is_some()),
            ] {
                if set {
                    p.add(at(key), "not used by a physical job (kind: physical)");
                }
            }
            let text = window.unwrap_or("14d");
            let recovery_window = match humantime::parse_duration(text) {
                Ok(d) if d >= Duration::from_secs(3600) => Some(d),
                Ok(_) => {
                    p.add(at("retention.recovery_window"), "must be at least 1h");
                    None
                }
                Err(e) => {
                    p.add(at("retention.recovery_window"), format!("'{text}': {e}"));
                    None
                }
            };
            let wal = validate_wal(name, j.wal.as_ref(), p);
            Some(JobKind::Physical(PhysicalSettings {
                recovery_window: recovery_window?,
                wal: wal?,
            }))
        }
        other => {
            p.add(at("kind"), format!("'{other}' is not logical or physical"));
            None
        }
    }
}

/// `wal:` of a physical job: `archive_command` (the default) or `stream`.
fn validate_wal(name: &str, raw: Option<&RawWal>, p: &mut Problems) -> Option<WalSource> {
    let at = |key: &str| format!("jobs.{name}.wal.{key}");
    let Some(raw) = raw else {
        return Some(WalSource::ArchiveCommand);
    };
    match raw.source.as_deref().unwrap_or("archive_command") {
        "archive_command" => {
            for (key, set) in [
                ("slot", raw.slot.is_some()),
                ("directory", raw.directory.is_some()),
                ("upload_interval", raw.upload_interval.is_some()),
            ] {
                if set {
                    p.add(at(key), "only used with source: stream");
                }
            }
            Some(WalSource::ArchiveCommand)
        }
        "stream" => {
            // Slot names: lower-case letters, digits and underscores, at most 63 bytes.
            let slot = raw
                .slot
                .clone()
                .unwrap_or_else(|| format!("strata_{}", name.replace('-', "_")));
            let slot_ok = !slot.is_empty()
                && slot.len() <= 63
                && slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !slot_ok {
                p.add(
                    at("slot"),
                    format!("'{slot}': a replication slot name is 1 to 63 lower-case letters, digits and _"),
                );
            }
            let directory = match &raw.directory {
                None => {
                    p.add(
                        at("directory"),
                        "required with source: stream (where pg_receivewal writes before strata archives it)",
                    );
                    None
                }
                Some(d) if d.is_relative() => {
                    p.add(at("directory"), "must be an absolute path");
                    None
                }
                Some(d) => Some(d.clone()),
            };
            let text = raw.upload_interval.as_deref().unwrap_or("1s");
            let upload_interval = match humantime::parse_duration(text) {
                Ok(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(3600) => {
                    Some(d)
                }
                Ok(_) => {
                    p.add(at("upload_interval"), "must be between 100ms and 1h");
                    None
                }
                Err(e) => {
                    p.add(at("upload_interval"), format!("'{text}': {e}"));
                    None
                }
            };
            slot_ok.then_some(())?;
            Some(WalSource::Stream {
                slot,
                directory: directory?,
                upload_interval: upload_interval?,
            })
        }
        other => {
            p.add(
                at("source"),
                format!("'{other}' is not archive_command or stream"),
            );
            None
        }
    }
}
