//! Point-in-time recovery beyond `archive_command`: the daemon's streaming
//! source (`pg_receivewal` over a slot), timeline switches, and restore tests
//! of physical jobs, against real throwaway clusters.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::wal::{Archiving, Watching, recover, stderr, wait_archived};

/// `strata restore prod --into-datadir DIR --to TO --from FROM` (not started).
fn restore_into(
    a: &Archiving,
    dir: &std::path::Path,
    to: &str,
    from: &str,
) -> std::process::Output {
    a.strata(&[
        "restore",
        "prod",
        "--into-datadir",
        dir.to_str().unwrap(),
        "--to",
        to,
        "--from",
        from,
    ])
}

fn at(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

const COUNTS: &str = "SELECT coalesce(string_agg(batch || ':' || n, ',' ORDER BY batch), '') FROM (SELECT batch, count(*) n FROM batches GROUP BY batch) b";

#[tokio::test]
async fn streaming_archives_each_commit_within_seconds_and_survives_a_server_restart() {
    let a = Archiving::streaming().await;
    let sql = |s: &str| a.cluster.psql("postgres", s);
    let d = Watching::start(&a).await;
    d.until("pg_receivewal running", |_, j| {
        j["wal"]["stream"]["receiving"] == true
    })
    .await;
    // strata made the slot, so the server keeps what strata has not streamed.
    assert_eq!(
        sql(
            "SELECT slot_type || ' ' || active FROM pg_replication_slots WHERE slot_name = 'strata_prod'"
        ),
        "physical true"
    );
    let out = a.strata(&["backup", "prod"]);
    assert!(out.status.success(), "{}", stderr(&out));

    sql("CREATE TABLE batches (batch int, g int)");
    sql("INSERT INTO batches SELECT 1, generate_series(1, 1000)");
    let committed = Utc::now();
    let began = Instant::now();
    d.until("the first batch streamed", |_, j| {
        at(&j["wal"]["stream"]["live_uploaded"]).is_some_and(|t| t > committed)
    })
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the live segment took {:?} to reach the archive",
        began.elapsed()
    );
    // Recoverable from the archive alone, without a segment switch.
    let restored = recover(&a, &["--to", "latest"]);
    assert_eq!(restored.psql("postgres", COUNTS), "1:1000");
    drop(restored);

    // The server restarts: pg_receivewal loses its connection, strata starts
    // it again, and what is committed afterwards is archived as well.
    a.cluster.restart();
    sql("INSERT INTO batches SELECT 2, generate_series(1, 1000)");
    let committed = Utc::now();
    let h = d
        .until("streaming resumed after the restart", |_, j| {
            let s = &j["wal"]["stream"];
            s["receiving"] == true && at(&s["live_uploaded"]).is_some_and(|t| t > committed)
        })
        .await;
    assert!(
        h["jobs"]["prod"]["wal"]["stream"]["restarts"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{h}"
    );
    // Finished segments go up whole (and leave the streaming directory).
    let segment = a.fill_segment(10);
    d.until("a finished segment archived", |_, j| {
        j["wal"]["stream"]["last_archived_wal"]
            .as_str()
            .is_some_and(|w| w >= segment.as_str())
    })
    .await;
    assert!(
        a.wal_files().contains(&format!(
            "database-backups/prod/wal/00000001/{segment}.zst.enc"
        )),
        "{:?}",
        a.wal_files()
    );
    let archived = d
        .metric("strata_wal_archived_total{job=\"prod\"}")
        .await
        .unwrap_or_default();
    assert!(archived >= 1.0, "{archived}");
    let restored = recover(&a, &["--to", "latest"]);
    assert_eq!(restored.psql("postgres", COUNTS), "1:1000,2:1000");
}

#[tokio::test]
async fn after_a_takeover_on_a_new_timeline_latest_follows_it() {
    let a = Archiving::start().await;
    let sql = |s: &str| a.cluster.psql("postgres", s);
    a.first_batch_then_base_backup(1000);
    sql("INSERT INTO batches SELECT 2, generate_series(1, 1000)");
    let segment = a.fill_segment(1);
    a.archived(&segment);

    // The primary is lost; its copy takes its place and archives into the job
    // on a new timeline.
    a.cluster.stop();
    let primary = recover(&a, &["--to", "latest", "--archive-mode", "preserve"]);
    let timeline = "SELECT timeline_id FROM pg_control_checkpoint()";
    primary.psql("postgres", "CHECKPOINT");
    assert_eq!(primary.psql("postgres", timeline), "2");
    primary.psql(
        "postgres",
        "INSERT INTO batches SELECT 3, generate_series(1, 1000)",
    );
    let middle = primary.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    primary.psql("postgres", "CREATE TABLE marker (x int)");
    let next = primary.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(
        middle.starts_with("00000002") && next > middle,
        "{middle} {next}"
    );
    wait_archived(&primary, &next);
    assert!(
        a.wal_files()
            .contains(&"database-backups/prod/wal/00000002/00000002.history.zst.enc".to_owned()),
        "{:?}",
        a.wal_files()
    );

    // --to latest walks from the base backup on timeline 1 onto timeline 2.
    let out = a.strata(&["verify", "prod"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let again = recover(&a, &["--to", "latest"]);
    assert_eq!(again.psql("postgres", COUNTS), "1:1000,2:1000,3:1000");
    again.psql("postgres", "CHECKPOINT");
    assert_eq!(again.psql("postgres", timeline), "3");
    drop(again);
    let out = a.strata(&["list", "prod"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("to the end of segment {next}")),
        "{shown}"
    );

    // A gap on the new timeline is found before anything is written.
    let lost = format!("database-backups/prod/wal/00000002/{middle}.zst.enc");
    std::fs::remove_file(a.setup.backups().join(&lost)).unwrap();
    let dir = a.setup.path().join("refused");
    let out = restore_into(&a, &dir, "latest", "local");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("WAL segment {middle} is missing")),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists());
    // The other target still has it all.
    let out = a.strata(&["verify", "prod"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "WAL archive on local: WAL segment {middle} is missing"
        )),
        "{shown}"
    );
    assert!(shown.contains("WAL archive on offsite: ok"), "{shown}");
}

/// The directories under `dir` (a restore test's scratch parent).
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_physical_restore_test_recovers_into_a_scratch_directory_checks_it_and_removes_it() {
    let a = Archiving::start_with(
        false,
        ", verify: { restore_test: \"* * * * * *\", scratch_dir: {dir}/scratch, sql: [ \"SELECT count(*) = 1000 FROM batches\" ] }",
    )
    .await;
    let scratch = a.setup.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    crate::cluster::give_to_postgres(&scratch);
    let sql = |s: &str| a.cluster.psql("postgres", s);
    a.base_backup();
    sql("CREATE TABLE batches (batch int, g int)");
    sql("INSERT INTO batches SELECT 1, generate_series(1, 1000)");
    let segment = a.fill_segment(1);
    a.archived(&segment);

    // By hand: recovered to the end of the archive, checked, removed.
    let out = a.strata_as_server_user(&["verify", "prod", "--restore-test"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}{}", stderr(&out));
    assert!(shown.contains("restored and checked"), "{shown}");
    assert!(leftovers(&scratch).is_empty(), "{:?}", leftovers(&scratch));

    // The compliance report: the achieved RPO from the newest archived WAL,
    // the recovery window (filling up since the first base backup), the test.
    let out = a.strata(&["compliance", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
    };
    for (name, says) in [
        ("rpo", "achieved RPO"),
        ("recovery_window", "filling up since the first base backup"),
        ("restore_test", "last successful restore test"),
    ] {
        let c = check(name);
        assert_eq!(c["pass"], true, "{c}");
        assert!(c["evidence"].to_string().contains(says), "{c}");
    }

    // An assertion that does not hold fails the test, and still leaves nothing.
    let failing = a.setup.path().join("failing.yaml");
    std::fs::write(
        &failing,
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace("= 1000", "= 5"),
    )
    .unwrap();
    crate::cluster::give_to_postgres(&failing);
    let mut c = std::process::Command::new("setpriv");
    if crate::cluster::is_root() {
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
    }
    let out = c
        .arg(crate::helpers::bin())
        .arg("-c")
        .arg(&failing)
        .args(["verify", "prod", "--restore-test"])
        .envs(crate::wal::moto_env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("assertion returned false"),
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&scratch).is_empty(), "{:?}", leftovers(&scratch));
    let running = std::process::Command::new("pgrep")
        .args(["-f", &scratch.display().to_string()])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "a restore test's server still runs"
    );

    // The daemon runs it on its schedule and reports the measured RTO.
    let d = Watching::start_as_server_user(&a).await;
    let h = d
        .until("a scheduled restore test", |_, j| {
            j["restore_test"]["ok"] == true
        })
        .await;
    let seconds = h["jobs"]["prod"]["restore_test"]["seconds"]
        .as_f64()
        .unwrap();
    assert!(seconds > 0.0, "{h}");
    let rto = d
        .metric("strata_restore_test_duration_seconds{job=\"prod\"}")
        .await
        .unwrap_or_default();
    assert!(rto > 0.0, "{rto}");
}

#[tokio::test]
async fn an_archived_base_backup_is_thawed_first_and_the_restore_says_not_yet() {
    let a = Archiving::start().await;
    a.first_batch_then_base_backup(1000);
    // The base backup in the bucket has gone to GLACIER (an old one GFS kept).
    let key = a
        .bucket
        .keys()
        .await
        .into_iter()
        .find(|k| k.contains("/base/") && k.ends_with(".tar.zst.enc"))
        .unwrap();
    let bucket = &a.bucket.settings.bucket;
    a.bucket
        .client()
        .await
        .copy_object()
        .bucket(bucket)
        .key(&key)
        .copy_source(format!("{bucket}/{key}"))
        .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
        .send()
        .await
        .unwrap();
    let dir = a.setup.path().join("thawing");
    let out = restore_into(&a, &dir, "immediate", "offsite");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("GLACIER"), "{}", stderr(&out));
    assert!(
        !dir.exists(),
        "a directory was written before the backup was readable"
    );
    // moto thaws at once: the next attempt restores.
    let restored = recover(&a, &["--to", "immediate", "--from", "offsite"]);
    assert_eq!(restored.psql("postgres", COUNTS), "1:1000");
}
