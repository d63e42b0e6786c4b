//! Hostile storage: someone who can write to a target but holds no key edits
//! manifests. Nothing they write is restored, counted or pruned; every
//! command that meets it names it.

use std::process::{Command, Output};

use crate::helpers::{Bucket, S3Kind, Setup, TestDb, bin, files, job};

fn run(config: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_manifest_edited_in_the_bucket_is_refused_everywhere_and_runs_no_sql() {
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g");
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let config = setup.write_config(
        &bucket.yaml("s3", None),
        &job("app", &db.url(), "local, s3", ""),
    );
    let out = run(&config, &["backup", "app", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["manifest"]["backup_id"].as_str().unwrap().to_owned();

    // The backup writer's key (may write, may not delete) rewrites the
    // manifest in the bucket: a table name that would be SQL.
    let client = bucket.client().await;
    let key = bucket
        .keys()
        .await
        .into_iter()
        .find(|k| k.ends_with(".manifest.json"))
        .unwrap();
    let original = client
        .get_object()
        .bucket(&bucket.settings.bucket)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let forged = String::from_utf8(original.to_vec()).unwrap().replace(
        "\"public.t\"",
        "\"public.t\\\"; CREATE TABLE pwned(x int); --\"",
    );
    assert_ne!(forged.as_bytes(), &original[..]);
    client
        .put_object()
        .bucket(&bucket.settings.bucket)
        .key(&key)
        .body(forged.clone().into_bytes().into())
        .send()
        .await
        .unwrap();
    let forged_file = setup.path().join("forged.manifest.json");
    std::fs::write(&forged_file, &forged).unwrap();

    // list names it and fails; the local copy is still fine.
    let out = run(&config, &["list", "app"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("REFUSED  s3") && text(&out).contains("FORGED"),
        "{}",
        text(&out)
    );
    // restore from the bucket: nothing usable there, and the SQL never ran.
    let dest = TestDb::reserve();
    let out = run(
        &config,
        &["restore", "app", "--from", "s3"],
        &[("STRATA_RESTORE_INTO", dest.url())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FORGED"), "{}", text(&out));
    let out = run(
        &config,
        &["restore", "app", "--from", "s3", "--backup", &id],
        &[("STRATA_RESTORE_INTO", dest.url())],
    );
    assert!(
        text(&out).contains("is refused") && text(&out).contains("never restored"),
        "{}",
        text(&out)
    );
    assert!(!dest.exists());
    assert_eq!(
        crate::helpers::psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'strata_r_%strata%'"
        ),
        "0"
    );
    // The default restore takes the authentic local copy and says what it refused.
    let out = run(
        &config,
        &["restore", "app"],
        &[("STRATA_RESTORE_INTO", dest.url())],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("was refused: FORGED"), "{}", text(&out));
    assert_eq!(
        dest.exec("SELECT count(*) FROM pg_tables WHERE tablename = 'pwned'"),
        "0"
    );
    // The compliance report fails on it.
    let out = run(&config, &["compliance"], &[]);
    assert!(text(&out).contains("FAIL manifests"), "{}", text(&out));
    // The independent verifier agrees: forged in the bucket, fine on disk.
    let python = std::env::var("STRATA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/strata_decrypt.py");
    let key_file = setup.path().join("k1.key");
    let out = Command::new(&python)
        .args([verifier, "--verify-manifest"])
        .arg(&key_file)
        .arg(&forged_file)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("FORGED"),
        "{}",
        text(&out)
    );
    let local_manifest = files(&setup.backups())
        .into_iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let out = Command::new(&python)
        .args([verifier, "--verify-manifest"])
        .arg(&key_file)
        .arg(setup.backups().join(local_manifest))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Retention neither counts nor deletes it; --force deletes it.
    let out = run(&config, &["prune", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(bucket.keys().await.contains(&key));
    let out = run(&config, &["prune", "app", "--force"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("deleted refused manifest"),
        "{}",
        text(&out)
    );
    assert!(
        !bucket.keys().await.iter().any(|k| k.contains(&id)),
        "{:?}",
        bucket.keys().await
    );
}

#[test]
fn an_unencrypted_local_manifest_cannot_send_prune_outside_the_target() {
    let db = TestDb::create();
    let setup = Setup::new();
    let backups = setup.backups();
    let config = setup.path().join("plain.yaml");
    std::fs::write(
        &config,
        format!(
            "targets:\n  local: {{ kind: local, path: {}, prefix: database-backups }}\njobs:\n{}",
            backups.display(),
            job("app", &db.url(), "local", ", retention: { daily: 1 }")
        ),
    )
    .unwrap();
    let out = run(&config, &["backup", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // A file outside the target, and a hand-made manifest pointing at it.
    let victim = setup.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let real = files(&backups)
        .into_iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let real_path = backups.join(&real);
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&real_path).unwrap()).unwrap();
    doc["backup_id"] = "app_backup_20200101_000000".into();
    doc["started_at"] = "2020-01-01T00:00:00Z".into();
    doc["object"] = "../../../../../victim.txt".into();
    let crafted = real_path.with_file_name("app_backup_20200101_000000.manifest.json");
    std::fs::write(&crafted, serde_json::to_vec(&doc).unwrap()).unwrap();
    // The crafted backup's own data file, which --force takes with it (by the
    // id in the manifest's key, not by what the manifest says).
    let orphan = real_path.with_file_name("app_backup_20200101_000000.sql.gz");
    std::fs::write(&orphan, "old data").unwrap();
    let neighbour = real_path.with_file_name("app_backup_20200101_000000-2.sql.gz");
    std::fs::write(&neighbour, "another backup's data").unwrap();
    let out = run(&config, &["list", "app"], &[]);
    assert!(
        text(&out).contains("REFUSED") && text(&out).contains("invalid field object"),
        "{}",
        text(&out)
    );
    // Retention keeps one daily backup: the crafted one would be "older".
    for args in [&["prune", "app"][..], &["prune", "app", "--force"]] {
        let out = run(&config, args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious",
            "{args:?}"
        );
    }
    assert!(
        !crafted.exists() && !orphan.exists(),
        "--force removes the refused manifest and the files of its backup id"
    );
    assert!(real_path.exists());
    assert!(
        neighbour.exists(),
        "a file of another backup id is not the refused one's"
    );
}

#[test]
fn manifests_without_a_mac_are_read_with_a_warning_or_refused_when_required() {
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT 1 AS x");
    let setup = Setup::new();
    let config = setup.write_config("", &job("app", &db.url(), "local", ""));
    let out = run(&config, &["backup", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // As a manifest of an older strata looks: no MAC.
    let path = setup.backups().join(
        files(&setup.backups())
            .into_iter()
            .find(|f| f.ends_with(".manifest.json"))
            .unwrap(),
    );
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(doc.get("mac").is_some(), "new manifests are authenticated");
    doc.as_object_mut().unwrap().remove("mac");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = run(&config, &["list", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unauthenticated: no MAC"),
        "{}",
        text(&out)
    );
    let dest = TestDb::reserve();
    let out = run(
        &config,
        &["restore", "app"],
        &[("STRATA_RESTORE_INTO", dest.url())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let strict = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("require_authenticated_manifests: true\n{strict}"),
    )
    .unwrap();
    let out = run(&config, &["list", "app"], &[]);
    assert!(
        text(&out).contains("REFUSED") && text(&out).contains("no MAC"),
        "{}",
        text(&out)
    );
    let dest2 = TestDb::reserve();
    let out = run(
        &config,
        &["restore", "app"],
        &[("STRATA_RESTORE_INTO", dest2.url())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!dest2.exists());
}
