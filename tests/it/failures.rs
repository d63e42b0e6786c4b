//! What strata must survive (docs: reliability.md): each failure ends in a clear
//! error, nothing lost, nothing half-written where it could pass for a backup.

use std::time::Duration;

use chrono::Utc;
use strata::commands::backup::{self, RunError};
use strata::commands::restore::{self, RestoreError, RestoreOptions};
use strata::pg::DbUrl;

use crate::helpers::{Bucket, S3Kind, Setup, TestDb, files, job};
use crate::proxy::{Fault, FaultProxy, Rule};

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
const ACCESS_DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
const INTERNAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>";

/// A database whose uncompressed dump is about `mib` MiB of incompressible text.
pub fn big_db(mib: usize) -> TestDb {
    let db = TestDb::create();
    let rows = mib * 1024 * 1024 / 72;
    db.exec(&format!(
        "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) AS a FROM generate_series(1, {rows}) g"
    ));
    db
}

/// A bucket on moto reached through a fault proxy, and a config using it.
async fn faulty_s3(
    db: &TestDb,
    setup: &Setup,
    extra: &str,
) -> (Bucket, FaultProxy, strata::app::Strata) {
    let bucket = Bucket::create(S3Kind::Moto).await;
    let proxy = FaultProxy::start(bucket.settings.endpoint.as_deref().unwrap()).await;
    let strata = setup
        .strata(
            &bucket.yaml("s3", Some(&proxy.url())),
            &job(
                "app",
                &db.url(),
                "s3",
                &format!(", compression: none{extra}"),
            ),
            &[&bucket],
        )
        .await;
    (bucket, proxy, strata)
}

async fn assert_nothing_stored(bucket: &Bucket) {
    assert_eq!(
        bucket.incomplete_uploads().await,
        0,
        "an incomplete multipart upload remains"
    );
    assert_eq!(
        bucket.keys().await,
        Vec::<String>::new(),
        "objects remain after a failed run"
    );
}

#[tokio::test]
async fn part_uploads_retried_after_slowdown_store_the_same_bytes() {
    let db = big_db(14);
    let setup = Setup::new();
    let (bucket, proxy, strata) = faulty_s3(&db, &setup, "").await;
    proxy.add(Rule {
        method: "PUT",
        query_has: "partNumber=2",
        fault: Fault::Respond(503, SLOW_DOWN),
        times: Some(2),
    });
    proxy.add(Rule {
        method: "PUT",
        query_has: "partNumber=1",
        fault: Fault::Respond(500, INTERNAL),
        times: Some(1),
    });
    let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(proxy.hits(), 3, "the faults were not exercised");
    // The stored object, read directly from the server, hashes to the manifest's value.
    let key = &report.manifest.targets[0].key;
    let body = bucket
        .client()
        .await
        .get_object()
        .bucket(&bucket.settings.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let bytes = body.body.collect().await.unwrap().into_bytes();
    assert_eq!(
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
        report.manifest.sha256
    );
    assert!(
        report.manifest.stored_bytes > 10 * 1024 * 1024,
        "too small to need several parts"
    );
}

async fn part_failure_aborts(fault: Fault, expected: &str) {
    let db = big_db(14);
    let setup = Setup::new();
    let (bucket, proxy, strata) = faulty_s3(&db, &setup, "").await;
    proxy.add(Rule {
        method: "PUT",
        query_has: "partNumber=2",
        fault,
        times: None,
    });
    let err = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(expected), "{err}");
    assert_nothing_stored(&bucket).await;
}

#[tokio::test]
async fn connection_reset_on_every_try_of_a_part_aborts_the_upload() {
    part_failure_aborts(Fault::Reset, "target 's3'").await;
}

#[tokio::test]
async fn permanent_403_on_a_part_aborts_the_upload() {
    part_failure_aborts(Fault::Respond(403, ACCESS_DENIED), "AccessDenied").await;
}

#[tokio::test]
async fn complete_answering_200_with_an_error_body_is_a_failure() {
    let db = big_db(14);
    let setup = Setup::new();
    let (bucket, proxy, strata) = faulty_s3(&db, &setup, "").await;
    proxy.add(Rule {
        method: "POST",
        query_has: "uploadId=",
        fault: Fault::Respond(200, INTERNAL),
        times: None,
    });
    let err = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("InternalError"), "{err}");
    assert_eq!(
        proxy.hits(),
        3,
        "CompleteMultipartUpload is retried like other errors"
    );
    assert_nothing_stored(&bucket).await;
}

#[tokio::test]
async fn object_size_is_checked_after_completion() {
    let db = big_db(14);
    let setup = Setup::new();
    let (bucket, proxy, strata) = faulty_s3(&db, &setup, "").await;
    proxy.add(Rule {
        method: "HEAD",
        query_has: "",
        fault: Fault::RewriteLength(1234),
        times: None,
    });
    let err = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("has 1234 bytes after upload"),
        "{err}"
    );
    assert_nothing_stored(&bucket).await;
}

#[tokio::test]
async fn pg_dump_killed_mid_stream_fails_the_run_and_leaves_nothing() {
    let db = big_db(60);
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let proxy = FaultProxy::start(bucket.settings.endpoint.as_deref().unwrap()).await;
    // Slow parts: pg_dump blocks on its full pipe while its COPY is running.
    proxy.add(Rule {
        method: "PUT",
        query_has: "partNumber=",
        fault: Fault::Delay(1500),
        times: None,
    });
    let targets = bucket
        .yaml("s3", Some(&proxy.url()))
        .replace("part_size_mib: 5", "part_size_mib: 5, parts_in_flight: 1");
    let strata = setup
        .strata(
            &targets,
            &job("app", &db.url(), "local, s3", ", compression: none"),
            &[&bucket],
        )
        .await;
    let killer = {
        let name = db.name.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..200 {
                let killed = crate::helpers::psql(
                    "postgres",
                    &format!(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}' AND application_name = 'strata' AND query LIKE 'COPY%'"
                    ),
                );
                if killed != "0" {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let err = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap_err();
    assert!(
        killer.await.unwrap(),
        "pg_dump's backend was never seen in COPY"
    );
    assert!(matches!(err, RunError::Source(_)), "{err}");
    assert!(err.to_string().contains("pg_dump failed"), "{err}");
    assert_nothing_stored(&bucket).await;
    assert_eq!(
        files(&setup.backups()),
        Vec::<String>::new(),
        "local staging or final files remain"
    );
}

#[tokio::test]
async fn full_local_disk_fails_without_a_partial_file() {
    let db = big_db(4);
    let setup = Setup::new();
    let mount = setup.backups();
    std::fs::create_dir_all(&mount).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount)
        .status()
        .expect("mount runs");
    assert!(
        status.success(),
        "this test mounts a 1 MiB tmpfs and needs root"
    );
    let strata = setup
        .strata(
            "",
            &job("app", &db.url(), "local", ", compression: none"),
            &[],
        )
        .await;
    let err = backup::backup(&strata, "app", Utc::now(), &Default::default()).await;
    let left = files(&mount);
    let _ = std::process::Command::new("umount").arg(&mount).status();
    let err = err.unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(left, Vec::<String>::new());
}

#[tokio::test]
async fn one_target_down_keeps_the_others_and_reports_degraded() {
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    // Nothing listens on port 9 of loopback.
    let strata = setup
        .strata(
            &bucket.yaml("s3", Some("http://127.0.0.1:9")),
            &job("app", &db.url(), "local, s3", ""),
            &[&bucket],
        )
        .await;
    let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap();
    assert!(!report.is_complete());
    assert_eq!(report.failed.keys().collect::<Vec<_>>(), vec!["s3"]);
    assert_eq!(
        report
            .manifest
            .targets
            .iter()
            .map(|t| t.target.as_str())
            .collect::<Vec<_>>(),
        vec!["local"]
    );
    let stored = files(&setup.backups());
    assert_eq!(
        stored.len(),
        3,
        "object, globals and manifest expected: {stored:?}"
    );
    assert!(stored.iter().any(|f| f.ends_with(".manifest.json")));
    assert!(stored.iter().any(|f| f.ends_with(".globals.sql.gz.enc")));
    // The local copy restores.
    let dest = TestDb::reserve();
    restore::restore(
        &strata,
        "app",
        &dest.url().parse().unwrap(),
        &RestoreOptions {
            from: Some("local".into()),
            ..RestoreOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dest.exec("SELECT count(*) FROM t"), "1000");
}

/// Restores the newest backup of `app` into `dest` (which must be empty or absent).
async fn restore_latest(
    strata: &strata::app::Strata,
    dest: &TestDb,
) -> Result<restore::RestoreReport, RestoreError> {
    restore::restore(
        strata,
        "app",
        &dest.url().parse().unwrap(),
        &RestoreOptions::default(),
    )
    .await
}

/// Backs up a small database to local disk and returns what restore needs.
async fn local_backup(
    setup: &Setup,
) -> (
    TestDb,
    strata::app::Strata,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g");
    let strata = setup
        .strata("", &job("app", &db.url(), "local", ""), &[])
        .await;
    let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap();
    let object = setup.backups().join(&report.manifest.targets[0].key);
    let manifest = object.with_file_name(format!("{}.manifest.json", report.manifest.backup_id));
    (db, strata, object, manifest)
}

#[tokio::test]
async fn tampered_or_truncated_objects_never_reach_the_database() {
    let setup = Setup::new();
    let (_db, strata, object, _) = local_backup(&setup).await;
    let original = std::fs::read(&object).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bit flip", flipped),
        ("truncated", original[..original.len() - 100].to_vec()),
        (
            "garbage appended",
            [original.clone(), b"junk".to_vec()].concat(),
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(&object, &bytes).unwrap();
        let dest = TestDb::reserve();
        let err = restore_latest(&strata, &dest).await.unwrap_err();
        assert!(matches!(err, RestoreError::Verify(_)), "{what}: {err}");
        assert!(!dest.exists(), "{what}: a partial database was left behind");
        let v = restore::verify(&strata, "app", "latest", None, chrono::Utc::now())
            .await
            .unwrap();
        assert!(!v.ok(), "{what}: verify passed a damaged object");
    }
}

#[tokio::test]
async fn row_count_mismatch_rolls_the_restore_back() {
    let setup = Setup::new();
    let (_db, strata, _, manifest) = local_backup(&setup).await;
    // A manifest that disagrees with its dump yet is authentic (signed with
    // the key, as a bug in strata itself would write it).
    let keys = strata.config().encryption.as_ref().unwrap().keyring.clone();
    let (mut m, _) =
        strata::domain::manifest::open(&std::fs::read(&manifest).unwrap(), Some(&keys), true)
            .unwrap();
    *m.tables.get_mut("public.t").unwrap() = 20001;
    std::fs::write(
        &manifest,
        strata::domain::manifest::seal(&m, Some(keys.active())),
    )
    .unwrap();
    // An existing empty database stays empty: the single transaction rolled back.
    let dest = TestDb::create();
    let err = restore_latest(&strata, &dest).await.unwrap_err();
    assert!(matches!(err, RestoreError::RowCounts(_)), "{err}");
    assert!(err.to_string().contains("public.t has 20000 rows"), "{err}");
    assert_eq!(
        dest.exec("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
}

#[tokio::test]
async fn restore_refuses_a_non_empty_database_unless_replacing() {
    let setup = Setup::new();
    let (_db, strata, _, _) = local_backup(&setup).await;
    let dest = TestDb::create();
    dest.exec("CREATE TABLE precious (x int); INSERT INTO precious VALUES (1)");
    let into: DbUrl = dest.url().parse().unwrap();
    let err = restore::restore(&strata, "app", &into, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::NotEmpty(..)), "{err}");
    assert_eq!(dest.exec("SELECT count(*) FROM precious"), "1");
    let replace = RestoreOptions {
        replace: true,
        ..RestoreOptions::default()
    };
    restore::restore(&strata, "app", &into, &replace)
        .await
        .unwrap();
    assert_eq!(dest.exec("SELECT count(*) FROM t"), "20000");
    assert_eq!(
        dest.exec("SELECT count(*) FROM pg_tables WHERE tablename = 'precious'"),
        "0"
    );
}

#[test]
fn s3_failures_are_one_line_naming_the_cause() {
    let db = TestDb::create();
    let setup = Setup::new();
    let dead = format!("http://127.0.0.1:{}", crate::helpers::free_port());
    let moto = std::env::var("STRATA_TEST_MOTO").unwrap();
    let targets = format!(
        "  refused: {{ kind: s3, bucket: strata-t-nowhere, region: us-east-1, endpoint: \"{dead}\", server_side_encryption: none }}\n  \
missing: {{ kind: s3, bucket: strata-t-no-such-bucket-{}, region: us-east-1, endpoint: \"{moto}\" }}\n",
        crate::helpers::unique("")
    );
    setup.write_config(
        &targets,
        &job("app", &db.url(), "local, refused, missing", ""),
    );
    let out = std::process::Command::new(crate::helpers::bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(["backup", "app"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let refused = text
        .lines()
        .find(|l| l.contains("refused: FAILED"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        refused.contains("connection refused") && refused.contains(&dead),
        "{refused}"
    );
    assert!(
        !refused.contains("ConnectorError") && refused.len() < 300,
        "{refused}"
    );
    let missing = text
        .lines()
        .find(|l| l.contains("missing: FAILED"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        missing.contains("the bucket does not exist (NoSuchBucket)"),
        "{missing}"
    );
    assert!(!missing.contains("not found"), "{missing}");
}

/// Production servers often set short statement and idle-in-transaction
/// timeouts for applications. strata's snapshot connection sits idle in its
/// transaction for the whole dump and counts rows afterwards: the database's
/// settings must not end it (before, the snapshot was gone by the time pg_dump
/// imported it).
#[tokio::test]
async fn a_database_with_short_statement_and_idle_timeouts_is_backed_up_and_restored() {
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g");
    db.exec(&format!(
        "ALTER DATABASE {0} SET statement_timeout = '1ms'; ALTER DATABASE {0} SET idle_in_transaction_session_timeout = '1ms'",
        db.name
    ));
    let setup = Setup::new();
    for format in ["plain", "custom"] {
        let strata = setup
            .strata(
                "",
                &job("app", &db.url(), "local", &format!(", format: {format}")),
                &[],
            )
            .await;
        let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(report.manifest.tables["public.t"], 200_000, "{format}");
        let dest = TestDb::reserve();
        restore_latest(&strata, &dest)
            .await
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(
            dest.exec("SET statement_timeout = 0; SELECT count(*) FROM t"),
            "200000"
        );
    }
}
