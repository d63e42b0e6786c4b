//! Config parsing and validation, and the reference file checked against the
//! config types both ways.

use super::raw::*;
use super::*;

/// The field names a struct's `Deserialize` accepts, read from serde itself.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Capture(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("captured")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Capture {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut c = Capture(&[]);
    let _ = T::deserialize(&mut c);
    c.0
}

#[test]
fn the_reference_documents_every_key_the_config_accepts() {
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config-reference.yaml"),
    )
    .unwrap();
    let all = [
        ("", fields::<RawConfig>()),
        ("http", fields::<RawHttp>()),
        ("state", fields::<RawState>()),
        ("encryption", fields::<RawEncryption>()),
        ("alerts", fields::<RawAlerts>()),
        ("alerts.email", fields::<RawEmail>()),
        ("alerts.webhook", fields::<RawWebhook>()),
        ("targets.*", fields::<RawTarget>()),
        ("targets.*.lifecycle[]", fields::<RawLifecycleRule>()),
        ("targets.*.object_lock", fields::<RawObjectLock>()),
        ("jobs.*", fields::<RawJob>()),
        ("jobs.*.retention", fields::<RawRetention>()),
        ("jobs.*.verify", fields::<RawVerify>()),
        ("jobs.*.refresh", fields::<RawRefresh>()),
        ("jobs.*.globals", fields::<RawGlobals>()),
        ("jobs.*.wal", fields::<RawWal>()),
        ("restore", fields::<RawRestore>()),
        ("daemon", fields::<RawDaemon>()),
    ];
    // Every key path the reference has, user-chosen names as `*`.
    fn paths(v: &Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
        const NAMED: [&str; 5] = [
            "targets",
            "jobs",
            "encryption.keys",
            "pricing",
            "targets.*.tags",
        ];
        match v {
            Value::Mapping(map) => {
                for (k, child) in map {
                    let key = k.as_str().unwrap_or_default();
                    let path = if NAMED.contains(&at) {
                        format!("{at}.*")
                    } else if at.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{at}.{key}")
                    };
                    out.insert(path.clone());
                    paths(child, &path, out);
                }
            }
            Value::Sequence(items) => {
                for item in items {
                    paths(item, &format!("{at}[]"), out);
                }
            }
            _ => {}
        }
    }
    let tree: Value = serde_yaml::from_str(&reference).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    paths(&tree, "", &mut documented);
    let mut missing = Vec::new();
    for (at, names) in all {
        assert!(!names.is_empty(), "no fields read for {at}");
        for name in names {
            let path = if at.is_empty() {
                (*name).to_owned()
            } else {
                format!("{at}.{name}")
            };
            if !documented.contains(&path) {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/config-reference.yaml lacks {missing:?}"
    );
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.yaml"), &|name| match name {
        "SET" => Some("from-env".into()),
        "DB" => Some("postgres://u:pw@h/db".into()),
        _ => None,
    })
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("config was accepted"),
    }
}

const MINIMAL: &str = "targets:\n  local: { kind: local, path: /tmp/x }\njobs:\n  app: { database_url: postgres://localhost/app, targets: [local] }\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    let job = c.job("app").unwrap();
    assert_eq!(job.compression, Compression::Gzip(6));
    assert_eq!(job.format, DumpFormat::Plain);
    assert_eq!(job.file_prefix, "app");
    assert_eq!(job.rpo, Duration::from_secs(86_400));
    assert_eq!(c.pricing[&StorageClass::Standard], 0.023);
    assert_eq!(c.timezone, chrono_tz::UTC);
}

#[test]
fn the_daemon_section_sets_its_pace_and_refuses_what_cannot_work() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.daemon, DaemonSettings::default());
    assert_eq!(c.daemon.shutdown_grace, Duration::from_secs(300));
    let text = format!(
        "{MINIMAL}daemon: {{ max_concurrent_runs: 3, shutdown_grace: 0s, stale_after: 2h, check_interval: 90s, thaw_poll: 1s }}\n"
    );
    let d = parse(&text).unwrap().daemon;
    assert_eq!(
        d,
        DaemonSettings {
            max_concurrent_runs: 3,
            shutdown_grace: Duration::ZERO,
            stale_after: Duration::from_secs(7200),
            check_interval: Duration::from_secs(90),
            thaw_poll: Duration::from_secs(1),
        }
    );
    let p = problems(&format!(
        "{MINIMAL}daemon: {{ max_concurrent_runs: 0, check_interval: 0s, thaw_poll: soon, shutdown_grace: 5 minutes, colour: red }}\n"
    ));
    let joined = p.join("\n");
    for expected in [
        "daemon.max_concurrent_runs: must be between 1 and 256",
        "daemon.check_interval: must be longer than 0s",
        "daemon.thaw_poll: 'soon' is not a duration",
        "daemon.colour: unknown key",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in\n{joined}"
        );
    }
    // "5 minutes" is a valid humantime duration.
    assert_eq!(p.len(), 4, "{joined}");
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let text = "timezone: Mars/Olympus\nbogus: 1\ntargets:\n  local: { kind: local, path: /tmp/x, colour: red }\n\
jobs:\n  app:\n    database_url: postgres://localhost/app\n    schedule: \"61 3 * * *\"\n    compression: gzip:11\n    targets: [local, nowhere]\n";
    let p = problems(text);
    let joined = p.join("\n");
    for expected in [
        "bogus: unknown key",
        "targets.local.colour: unknown key",
        "timezone: unknown time zone 'Mars/Olympus'",
        "jobs.app.schedule: invalid cron expression",
        "jobs.app.compression: gzip level 11",
        "jobs.app.targets[1]: unknown target 'nowhere'",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in\n{joined}"
        );
    }
    assert_eq!(p.len(), 6, "{joined}");
}

#[test]
fn environment_values_are_substituted_inside_strings() {
    let text = "targets:\n  local: { kind: local, path: \"/b/${SET}/${UNSET:-dflt}\" }\njobs:\n  app: { database_url: \"${DB}\", targets: [local] }\n";
    let c = parse(text).unwrap();
    let TargetKind::Local { path } = &c.targets["local"].kind else {
        panic!()
    };
    assert_eq!(path, Path::new("/b/from-env/dflt"));
    assert_eq!(
        c.job("app").unwrap().database_url.to_string(),
        "postgres://u@h:5432/db"
    );
    let p = problems(
        "targets:\n  local: { kind: local, path: \"${MISSING}\" }\njobs:\n  app: { database_url: postgres://x/y, targets: [local] }\n",
    );
    assert_eq!(
        p,
        vec![
            "targets.local.path: environment variable MISSING is not set (use ${MISSING:-default} for a default)"
        ]
    );
}

#[test]
fn missing_key_files_are_reported() {
    let text =
        format!("encryption: {{ active: k1, keys: {{ k1: /nonexistent/k1.key }} }}\n{MINIMAL}");
    let p = problems(&text);
    assert!(
        p[0].starts_with("encryption.keys.k1: key file /nonexistent/k1.key"),
        "{p:?}"
    );
}

#[test]
fn kind_specific_keys_are_checked() {
    let p = problems(
        "targets:\n  local: { kind: local, path: /x, bucket: b }\n  s3: { kind: s3, bucket: A_B }\n  odd: { kind: ftp }\njobs:\n  app: { database_url: postgres://x/y, targets: [local] }\n",
    );
    let joined = p.join("\n");
    assert!(
        joined.contains("targets.local.bucket: only valid for kind: s3"),
        "{joined}"
    );
    assert!(
        joined.contains("targets.s3.bucket: 'A_B' is not a valid S3 bucket name"),
        "{joined}"
    );
    assert!(
        joined.contains("targets.odd.kind: unknown kind 'ftp'"),
        "{joined}"
    );
}

#[test]
fn path_style_defaults_to_true_only_with_an_endpoint() {
    let c = parse(
        "targets:\n  aws: { kind: s3, bucket: bkt-1 }\n  blank: { kind: s3, bucket: bkt-2, endpoint: \"\" }\n  \
local: { kind: s3, bucket: bkt-3, endpoint: \"http://127.0.0.1:5000\" }\n  \
vhost: { kind: s3, bucket: bkt-4, endpoint: \"https://s3.example.com\", path_style: false }\n\
jobs:\n  app: { database_url: postgres://x/y, targets: [aws] }\n",
    )
    .unwrap();
    let path_style = |name: &str| match &c.targets[name].kind {
        TargetKind::S3 { settings, .. } => settings.path_style,
        _ => panic!("{name} is not s3"),
    };
    assert!(!path_style("aws"));
    assert!(!path_style("blank"));
    assert!(path_style("local"));
    assert!(!path_style("vhost"));
}

#[test]
fn the_state_database_must_not_be_a_backed_up_one() {
    let p = problems(&format!(
        "state: {{ database_url: postgres://localhost/app }}\n{MINIMAL}"
    ));
    assert_eq!(
        p,
        vec![
            "state.database_url: is the database job 'app' backs up; give the state a database of its own"
        ]
    );
}

#[test]
fn passwords_do_not_appear_in_problems() {
    let p = problems(
        "targets:\n  local: { kind: local, path: /x }\njobs:\n  app: { database_url: \"postgres://u:hunter2-canary@h/db?nonsense=1\", targets: [local] }\n",
    );
    assert!(!p.join("\n").contains("hunter2"), "{p:?}");
}

#[test]
fn a_physical_job_reads_its_window_and_wal_source() {
    let text = "targets:\n  local: { kind: local, path: /tmp/x }\njobs:\n  cluster: { kind: physical, database_url: postgres://localhost/postgres, targets: [local], schedule: \"0 3 * * 0\", retention: { recovery_window: 14d, weekly: 8 }, wal: { source: stream, directory: /var/lib/strata/wal }, verify: { restore_test: \"0 5 1 * *\", scratch_dir: /var/lib/strata/rt } }\n";
    let c = parse(text).unwrap();
    let job = c.job("cluster").unwrap();
    let p = job.kind.physical().unwrap();
    assert_eq!(p.recovery_window, Duration::from_secs(14 * 86_400));
    assert_eq!(
        p.wal,
        WalSource::Stream {
            slot: "strata_cluster".into(),
            directory: "/var/lib/strata/wal".into(),
            upload_interval: Duration::from_secs(1),
        }
    );
    // The window keeps the recent days: no daily tier unless asked.
    assert_eq!(job.retention.daily, 0);
    assert_eq!(job.format, DumpFormat::Base);
    // Stream without a directory, a restore test without a scratch directory.
    let p = problems(
        "targets:\n  local: { kind: local, path: /tmp/x }\njobs:\n  c: { kind: physical, database_url: postgres://l/p, targets: [local], wal: { source: stream, upload_interval: 0s }, verify: { restore_test: \"0 5 1 * *\", restore_into: postgres://l/p } }\n  d: { kind: physical, database_url: postgres://l/p, targets: [local], wal: { source: ftp, slot: x } }\n",
    )
    .join("\n");
    for expected in [
        "jobs.c.wal.directory: required with source: stream",
        "jobs.c.wal.upload_interval: must be between 100ms and 1h",
        "jobs.c.verify.scratch_dir: required when verify.restore_test is set",
        "jobs.c.verify.restore_into: a physical job's restore test recovers into verify.scratch_dir",
        "jobs.d.wal.source: 'ftp' is not archive_command or stream",
    ] {
        assert!(p.contains(expected), "missing {expected:?} in\n{p}");
    }
}

#[test]
fn lifecycle_rules_cannot_archive_or_expire_what_a_recovery_window_needs() {
    let bucket = |rules: &str| {
        format!(
            "{{ kind: s3, bucket: backups, region: us-east-1, endpoint: \"http://127.0.0.1:9\", lifecycle: [ {rules} ] }}"
        )
    };
    let physical = "jobs:\n  cluster: { kind: physical, database_url: postgres://l/p, targets: [s3], schedule: \"0 3 * * 0\", retention: { recovery_window: 14d } }\n";
    let tiers = bucket(
        "{ after_days: 14, storage_class: STANDARD_IA }, { after_days: 20, storage_class: GLACIER }",
    );
    let p = problems(&format!("targets:\n  s3: {tiers}\n{physical}")).join("\n");
    // 14 days of window + 7 between weekly base backups = 21.
    assert!(
        p.contains("targets.s3.lifecycle[1]: moves base backups to GLACIER after 20 days, but job 'cluster' needs them readable for 21 days"),
        "{p}"
    );
    // STANDARD_IA stays readable: not a problem.
    assert!(!p.contains("lifecycle[0]"), "{p}");
    let expiry = bucket("{ after_days: 15, expire: true }");
    let p = problems(&format!("targets:\n  s3: {expiry}\n{physical}")).join("\n");
    assert!(
        p.contains("targets.s3.lifecycle[0]: expires objects after 15 days, but job 'cluster' needs its base backups and WAL for 21 days"),
        "{p}"
    );
    // Long enough, or a bucket only logical jobs use: fine.
    let enough = bucket(
        "{ after_days: 30, storage_class: STANDARD_IA }, { after_days: 90, storage_class: GLACIER }, { after_days: 2555, expire: true }",
    );
    assert!(parse(&format!("targets:\n  s3: {enough}\n{physical}")).is_ok());
    let logical = "jobs:\n  app: { database_url: postgres://l/p, targets: [s3] }\n";
    assert!(parse(&format!("targets:\n  s3: {tiers}\n{logical}")).is_ok());
}
