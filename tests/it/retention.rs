//! Retention, pruning, lifecycle rules, Object Lock, archive tiers, cost and the
//! compliance report, against real PostgreSQL and moto.

use std::process::{Command, Output};

use chrono::{TimeZone, Utc};
use chrono_tz::America::New_York;
use secrecy::ExposeSecret;
use serde_json::Value;
use strata::app::Strata;
use strata::commands::backup;

use crate::helpers::{Bucket, S3Kind, Setup, TestDb, bin, files, job};

/// A job `app` backing up a small database to local disk and a moto bucket.
struct Scene {
    setup: Setup,
    source: TestDb,
    bucket: Bucket,
    strata: Strata,
}

impl Scene {
    /// `s3_extra` goes into the s3 target's YAML, `job_extra` into the job's.
    async fn new(bucket: Bucket, s3_extra: &str, job_extra: &str, top: &str) -> Self {
        let setup = Setup::new();
        let source = TestDb::create();
        source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g");
        let s3 = bucket
            .yaml("s3", None)
            .replace(" }\n", &format!("{s3_extra} }}\n"));
        let path =
            setup.write_config_with(top, &s3, &job("app", &source.url(), "local, s3", job_extra));
        let mut config = strata::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        for t in config.targets.values_mut() {
            if let strata::config::TargetKind::S3 { settings, .. } = &mut t.kind {
                settings.credentials = bucket.settings.credentials.clone();
            }
        }
        let strata = Strata::build(config).await;
        Self {
            setup,
            source,
            bucket,
            strata,
        }
    }

    /// A real backup that starts at `local` New York time.
    async fn backup_at(&self, y: i32, m: u32, d: u32, h: u32) -> String {
        let at = New_York
            .with_ymd_and_hms(y, m, d, h, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let report = backup::backup(&self.strata, "app", at, &Default::default())
            .await
            .unwrap();
        assert!(report.is_complete(), "{:?}", report.failed);
        report.manifest.backup_id
    }

    /// Nightly backups at 03:00 from `from` to `to` (inclusive, same month/year
    /// ranges only as days of `(year, month)` pairs).
    async fn nightly(&self, days: &[(i32, u32, u32)]) -> Vec<String> {
        let mut ids = Vec::new();
        for &(y, m, d) in days {
            ids.push(self.backup_at(y, m, d, 3).await);
        }
        ids
    }

    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let (id, secret) = self.bucket.settings.credentials.clone().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("-c")
            .arg(self.setup.path().join("config.yaml"))
            .args(args)
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret.expose_secret())
            .env_remove("AWS_PROFILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Backup ids whose manifests are on local disk.
    fn local_ids(&self) -> Vec<String> {
        ids_of(files(&self.setup.backups()))
    }

    async fn s3_ids(&self) -> Vec<String> {
        ids_of(self.bucket.keys().await)
    }
}

fn ids_of(keys: Vec<String>) -> Vec<String> {
    let mut ids: Vec<String> = keys
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".manifest.json"))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// 20 October – 12 November 2025, one backup a night.
fn autumn() -> Vec<(i32, u32, u32)> {
    (20..=31)
        .map(|d| (2025, 10, d))
        .chain((1..=12).map(|d| (2025, 11, d)))
        .collect()
}

const SMALL_GFS: &str = ", retention: { daily: 3, weekly: 2, monthly: 1 }";

/// What SMALL_GFS keeps of autumn(): 10–12 November (daily), Sundays 2 and 9
/// November (weekly), 1 November (monthly).
fn autumn_kept() -> Vec<String> {
    [1, 2, 9, 10, 11, 12]
        .iter()
        .map(|d| format!("app_backup_202511{d:02}_030000"))
        .collect()
}

#[tokio::test]
async fn prune_keeps_exactly_the_gfs_set_on_every_target() {
    let scene = Scene::new(Bucket::create(S3Kind::Moto).await, "", SMALL_GFS, "").await;
    let all = scene.nightly(&autumn()).await;
    assert_eq!(scene.local_ids(), all);

    // A dry run prints the plan and deletes nothing.
    let out = scene.cli(
        &[
            "prune",
            "app",
            "--dry-run",
            "--json",
            "--now",
            "2025-11-12T12:00:00Z",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan = json(&out);
    let items = plan.as_array().unwrap();
    assert_eq!(items.len(), all.len());
    for item in items {
        assert!(item["backup_id"].is_string() && item["keep"].is_boolean());
        assert!(!item["reasons"].as_array().unwrap().is_empty(), "{item}");
    }
    let kept: Vec<String> = items
        .iter()
        .filter(|i| i["keep"] == true)
        .map(|i| i["backup_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kept, autumn_kept());
    let sunday = items
        .iter()
        .find(|i| i["backup_id"] == "app_backup_20251102_030000")
        .unwrap();
    assert_eq!(sunday["reasons"][0], "weekly (week of Sunday 2025-11-02)");
    assert_eq!(scene.local_ids(), all, "a dry run deleted something");
    assert_eq!(scene.s3_ids().await, all);

    // The real run deletes the rest from both targets, manifest and object.
    let out = scene.cli(&["prune", "app", "--now", "2025-11-12T12:00:00Z"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("deleted app_backup_20251020_030000 from s3"));
    assert_eq!(scene.local_ids(), autumn_kept());
    assert_eq!(scene.s3_ids().await, autumn_kept());
    // No object or globals file is left without its manifest, and none the
    // other way round.
    assert_eq!(files(&scene.setup.backups()).len(), 3 * autumn_kept().len());
    assert_eq!(scene.bucket.keys().await.len(), 3 * autumn_kept().len());

    // What is left restores.
    let dest = TestDb::reserve();
    let out = scene.cli(&["restore", "app", "--into", &dest.url()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dest.dump(), scene.source.dump());

    // A clock a year ahead changes nothing: the plan counts backups, not days.
    let out = scene.cli(
        &["prune", "app", "--json", "--now", "2026-11-12T12:00:00Z"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["keep"] == true)
    );
    assert_eq!(scene.local_ids(), autumn_kept());
}

#[tokio::test]
async fn nothing_is_deleted_while_the_latest_run_failed() {
    let state = TestDb::create();
    let top = format!("state: {{ database_url: \"{}\" }}\n", state.url());
    let scene = Scene::new(Bucket::create(S3Kind::Moto).await, "", SMALL_GFS, &top).await;
    let all = scene.nightly(&autumn()).await;
    // The next backup fails: its database is gone.
    crate::helpers::psql(
        "postgres",
        &format!("DROP DATABASE {} WITH (FORCE)", scene.source.name),
    );
    let out = scene.cli(&["backup", "app"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = scene.cli(&["prune", "app", "--now", "2025-11-12T12:00:00Z"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("nothing deleted: the latest run of job 'app'")
            && text(&out).contains("ended failed"),
        "{}",
        text(&out)
    );
    assert_eq!(scene.local_ids(), all);
    assert_eq!(scene.s3_ids().await, all);
    // Once a backup succeeds again, retention goes ahead.
    crate::helpers::psql(
        "postgres",
        &format!("CREATE DATABASE {}", scene.source.name),
    );
    scene.source.exec("CREATE TABLE t AS SELECT 1 AS g");
    let out = scene.cli(&["backup", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = scene.cli(&["prune", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let left = scene.local_ids();
    assert!(left.len() < all.len(), "{left:?}");
    assert_eq!(scene.s3_ids().await, left);
    let audited = crate::helpers::psql(
        &state.name,
        "SELECT count(*) FROM audit_log WHERE action = 'delete' AND detail->>'result' = 'deleted'",
    );
    assert_eq!(audited, (2 * (all.len() + 1 - left.len())).to_string());
}

#[tokio::test]
async fn object_lock_is_never_bypassed_and_locked_copies_are_reported() {
    let bucket = Bucket::create_locked().await;
    let scene = Scene::new(
        bucket,
        ", object_lock: { mode: GOVERNANCE, days: 1 }",
        &format!("{SMALL_GFS}, compression: none"),
        "",
    )
    .await;
    let all = scene.nightly(&autumn()[..6]).await;
    // A multipart upload to the locked bucket too (> 5 MiB: parts carry CRC32).
    scene.source.exec(
        "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) AS a FROM generate_series(1, 100000) g",
    );
    let newest = scene.backup_at(2025, 10, 26, 3).await;
    let client = scene.bucket.client().await;
    let head = |key: String| {
        let client = client.clone();
        let bucket = scene.bucket.settings.bucket.clone();
        async move {
            client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
        }
    };
    let dir = "database-backups/app/2025/10";
    // moto ignores lock headers on CreateMultipartUpload (AWS applies them), so
    // the lock is checked on a single-request upload; the multipart one shows
    // that checksummed parts were accepted by a lock-enabled bucket.
    let big = head(format!("{dir}/26/{newest}.sql.enc")).await;
    assert!(big.content_length().unwrap() > 5 << 20);
    let small = head(format!("{dir}/20/{}.sql.enc", all[0])).await;
    assert_eq!(
        small.object_lock_mode().map(|m| m.as_str()),
        Some("GOVERNANCE")
    );
    let until = small.object_lock_retain_until_date().unwrap().secs();
    assert!(
        until > Utc::now().timestamp() + 23 * 3600,
        "retain-until {until}"
    );

    let out = scene.cli(&["prune", "app", "--now", "2025-10-27T12:00:00Z"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("kept app_backup_20251021_030000 on s3: Object Lock until"),
        "{t}"
    );
    // Local copies go (21–23 October); every S3 copy stays whole, manifest included.
    let kept: Vec<String> = [20, 24, 25, 26]
        .iter()
        .map(|d| format!("app_backup_202510{d}_030000"))
        .collect();
    assert_eq!(scene.local_ids(), kept);
    let mut expected = all.clone();
    expected.push(newest);
    assert_eq!(scene.s3_ids().await, expected);
}

#[tokio::test]
async fn lifecycle_apply_puts_the_tiers_on_the_bucket_and_keeps_other_rules() {
    let tiers = ", lifecycle: [ { after_days: 30, storage_class: STANDARD_IA }, { after_days: 90, storage_class: GLACIER }, { after_days: 365, storage_class: DEEP_ARCHIVE }, { after_days: 2555, expire: true } ]";
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter,
    };
    let scene = Scene::new(Bucket::create(S3Kind::Moto).await, tiers, "", "").await;
    let client = scene.bucket.client().await;
    let bucket = scene.bucket.settings.bucket.clone();
    // Someone else's rule, which strata must leave alone.
    client
        .put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(
                    LifecycleRule::builder()
                        .id("logs-cleanup")
                        .status(ExpirationStatus::Enabled)
                        .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
                        .expiration(LifecycleExpiration::builder().days(7).build())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let out = scene.cli(&["lifecycle", "show", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = json(&out);
    assert_eq!(shown[0]["in_sync"], false);
    assert_eq!(shown[0]["missing"].as_array().unwrap().len(), 3);
    assert_eq!(shown[0]["foreign"][0], "logs-cleanup");

    let out = scene.cli(&["lifecycle", "apply", "--target", "s3"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = scene.cli(&["lifecycle", "show", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = json(&out);
    assert_eq!(shown[0]["in_sync"], true, "{shown}");
    let rules = client
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = rules.rules().iter().filter_map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [
            "logs-cleanup",
            "strata:database-backups:tiers",
            "strata:database-backups:expire",
            "strata:database-backups:abort-incomplete-uploads"
        ]
    );
    let tiers = &rules.rules()[1];
    let classes: Vec<(i32, &str)> = tiers
        .transitions()
        .iter()
        .map(|t| (t.days().unwrap(), t.storage_class().unwrap().as_str()))
        .collect();
    assert_eq!(
        classes,
        [(30, "STANDARD_IA"), (90, "GLACIER"), (365, "DEEP_ARCHIVE")]
    );

    // Backups carry the tag the tier rule selects; manifests do not (they must
    // stay readable in STANDARD).
    let id = scene.backup_at(2025, 11, 1, 3).await;
    let tags = |key: String| {
        let client = client.clone();
        let bucket = bucket.clone();
        async move {
            client
                .get_object_tagging()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .tag_set()
                .iter()
                .map(|t| format!("{}={}", t.key(), t.value()))
                .collect::<Vec<_>>()
        }
    };
    let dir = "database-backups/app/2025/11/01";
    assert_eq!(
        tags(format!("{dir}/{id}.sql.gz.enc")).await,
        ["strata-object=backup"]
    );
    assert!(tags(format!("{dir}/{id}.manifest.json")).await.is_empty());
    // Local targets have no lifecycle.
    let out = scene.cli(&["lifecycle", "show", "--target", "local"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn archived_backups_are_thawed_first_restore_says_not_yet_with_75() {
    let scene = Scene::new(
        Bucket::create(S3Kind::Moto).await,
        ", storage_class: GLACIER",
        "",
        "daemon: { thaw_poll: 1s }\n",
    )
    .await;
    let id = scene.backup_at(2025, 11, 1, 3).await;
    // The manifest stays readable, so listing works.
    let out = scene.cli(&["list", "app", "--target", "s3"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&id));

    let dest = TestDb::reserve();
    let into = dest.url();
    let restore = || scene.cli(&["restore", "app", "--from", "s3", "--into", &into], &[]);
    let out = restore();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("is in GLACIER") && t.contains("Standard thaw"),
        "{t}"
    );
    assert!(t.contains("readable by about"), "{t}");
    assert!(
        !dest.exists(),
        "a database was created before the data was readable"
    );
    // moto thaws at once: the next attempt restores.
    let out = restore();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dest.dump(), scene.source.dump());

    // A fresh archived backup with --wait: one command requests, waits, restores.
    let id2 = scene.backup_at(2025, 11, 2, 3).await;
    let dest2 = TestDb::reserve();
    let out = scene.cli(
        &[
            "restore",
            "app",
            "--from",
            "s3",
            "--backup",
            &id2,
            "--into",
            &dest2.url(),
            "--wait",
            "--thaw-tier",
            "Bulk",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dest2.dump(), scene.source.dump());

    // verify: the local copy is checked, the archived one is thawed first.
    let id3 = scene.backup_at(2025, 11, 3, 3).await;
    let out = scene.cli(&["verify", "app", "--backup", &id3], &[]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{id3} on local: ok")),
        "{}",
        text(&out)
    );
    let out = scene.cli(&["verify", "app", "--backup", &id3], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{id3} on s3: ok")),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn cost_prices_what_the_targets_hold_and_projects_the_policy() {
    let scene = Scene::new(
        Bucket::create(S3Kind::Moto).await,
        ", storage_class: STANDARD_IA, lifecycle: [ { after_days: 30, storage_class: GLACIER } ]",
        ", retention: { daily: 14, weekly: 8, monthly: 12, yearly: 7 }",
        "",
    )
    .await;
    scene.nightly(&autumn()[..3]).await;
    let out = scene.cli(&["cost", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&out);
    let targets = report["targets"].as_array().unwrap();
    let s3 = targets.iter().find(|t| t["target"] == "s3").unwrap();
    // Backups in STANDARD_IA, manifests in STANDARD, priced per 2^30 bytes.
    let ia = s3["classes"]["STANDARD_IA"]["bytes"].as_u64().unwrap();
    let standard = s3["classes"]["STANDARD"]["bytes"].as_u64().unwrap();
    let listed: u64 = scene
        .bucket
        .client()
        .await
        .list_objects_v2()
        .bucket(&scene.bucket.settings.bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.size().unwrap() as u64)
        .sum();
    assert_eq!(ia + standard, listed);
    let usd = ia as f64 / 1_073_741_824.0 * 0.0125 + standard as f64 / 1_073_741_824.0 * 0.023;
    assert!((s3["usd_monthly"].as_f64().unwrap() - usd).abs() < 1e-12);
    let local = targets.iter().find(|t| t["target"] == "local").unwrap();
    assert_eq!(local["usd_monthly"], 0.0);
    assert!(local["classes"]["LOCAL"]["bytes"].as_u64().unwrap() > 0);
    assert!((report["usd_monthly"].as_f64().unwrap() - usd).abs() < 1e-12);
    assert!(report["projected_usd_monthly"].as_f64().unwrap() > 0.0);
    let p = &report["projections"][0];
    assert_eq!(p["target"], "s3");
    // STANDARD_IA for 30 days then GLACIER, 90 days minimum: Sunday backups
    // deleted at ~8 weeks pay early-deletion charges.
    assert!(
        p["early_deletion_usd_monthly"].as_f64().unwrap() > 0.0,
        "{p}"
    );
    assert!(
        p["storage_usd_monthly"]["GLACIER"].as_f64().unwrap() > 0.0,
        "{p}"
    );
}

#[tokio::test]
async fn compliance_passes_a_strategy_setup_and_names_each_failure() {
    let tiers = ", offsite: true, lifecycle: [ { after_days: 30, storage_class: STANDARD_IA }, { after_days: 2555, expire: true } ]";
    let bucket = Bucket::create(S3Kind::Moto).await;
    bucket
        .client()
        .await
        .put_bucket_versioning()
        .bucket(&bucket.settings.bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let scene = Scene::new(bucket, tiers, "", "").await;
    let run = |args: &[&str]| scene.cli(args, &[]);

    // Before any backup, lifecycle, RPO and restore tests fail.
    let out = run(&["compliance", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failing = |report: &Value| -> Vec<String> {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["pass"] == false)
            .map(|c| c["check"].as_str().unwrap().to_owned())
            .collect()
    };
    let report = json(&out);
    assert_eq!(
        failing(&report),
        ["lifecycle", "rpo", "restore_test"],
        "{report}"
    );

    assert!(run(&["lifecycle", "apply"]).status.success());
    assert!(run(&["backup", "app"]).status.success());
    let staging = TestDb::reserve();
    let out = run(&["verify", "app", "--restore-into", &staging.url()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["compliance"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    for check in [
        "3-2-1",
        "client_side_encryption",
        "server_side_encryption",
        "versioning",
        "lifecycle",
        "object_lock",
        "rpo",
        "restore_test",
        "retention",
    ] {
        assert!(t.contains(&format!("PASS {check}\n")), "{check}: {t}");
    }
    assert!(t.contains("offsite: s3"), "{t}");

    // A single target is not 3-2-1.
    let config = std::fs::read_to_string(scene.setup.path().join("config.yaml")).unwrap();
    std::fs::write(
        scene.setup.path().join("config.yaml"),
        config.replace("targets: [local, s3]", "targets: [local]"),
    )
    .unwrap();
    let out = run(&["compliance", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(failing(&report), ["3-2-1"]);
    assert!(
        report["checks"][0]["evidence"][0]
            .as_str()
            .unwrap()
            .contains("1 target(s) [local], 1 medium/media, offsite: none")
    );
}

#[tokio::test]
async fn approval_jobs_delete_from_the_cli_only_with_approve() {
    let scene = Scene::new(
        Bucket::create(S3Kind::Moto).await,
        "",
        &format!("{SMALL_GFS}, prune: approval"),
        "",
    )
    .await;
    let all = scene.nightly(&autumn()).await;
    // Without a state database the plan cannot be recorded: nothing is deleted
    // and the command says how to go ahead.
    let out = scene.cli(&["prune", "app", "--now", "2025-11-12T12:00:00Z"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("pass --approve to delete now"),
        "{}",
        text(&out)
    );
    assert_eq!(scene.local_ids(), all);
    let out = scene.cli(
        &["prune", "app", "--approve", "--now", "2025-11-12T12:00:00Z"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(scene.local_ids(), autumn_kept());
    assert_eq!(scene.s3_ids().await, autumn_kept());
}
