//! The README's walk-through, run as written: from a checkout to a daemon whose
//! backups land on local disk and in an S3 bucket (moto here), a restore from the
//! bucket, an ad-hoc backup through the API and a clean stop. The README's
//! `sh bucket` block (a throwaway moto for newcomers) is not run; this test
//! provides the same variables for a bucket of its own.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{Bucket, S3Kind, TestDb, bin, files, free_port};

/// The fenced blocks of `text` whose info string is exactly "sh {tag}".
fn blocks(text: &str, tag: &str) -> Vec<String> {
    let fence = format!("```sh {tag}");
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() == fence {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            out.push(body.join("\n"));
        }
    }
    out
}

fn copy_executable(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn the_readme_walkthrough_backs_up_to_disk_and_a_bucket_and_restores_from_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let [bucket_block] = &blocks(&readme, "bucket")[..] else {
        panic!("README.md needs exactly one ```sh bucket block")
    };
    let [walkthrough] = &blocks(&readme, "walkthrough")[..] else {
        panic!("README.md needs exactly one ```sh walkthrough block")
    };

    // What the bucket step hands on is what this test provides below.
    let exported: BTreeSet<&str> = bucket_block
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .flat_map(|l| l.split_whitespace().take_while(|w| !w.starts_with('#')))
        .filter_map(|assignment| assignment.split_once('=').map(|(name, _)| name))
        .collect();
    assert_eq!(
        exported,
        BTreeSet::from([
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "STRATA_S3_BUCKET",
            "STRATA_S3_ENDPOINT"
        ]),
        "the README's bucket step exports other variables than this test provides"
    );

    // A copy of what the walk-through touches, so its ./var is this test's own.
    let dir = tempfile::tempdir().unwrap();
    for script in ["scripts/start", "scripts/postgres.sh"] {
        copy_executable(&repo.join(script), &dir.path().join(script));
    }
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::copy(
        repo.join("deploy/config.local-s3.yaml"),
        dir.path().join("deploy/config.local-s3.yaml"),
    )
    .unwrap();

    let bucket = Bucket::create(S3Kind::Moto).await;
    let source = TestDb::create();
    source.exec(
        "CREATE TABLE events (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO events SELECT g, 'event ' || g FROM generate_series(1, 2000) g;",
    );
    let state = TestDb::create();
    // The walk-through restores into this fixed name; dropped before and after.
    let restored = TestDb {
        name: "walkthrough_restored".into(),
    };
    crate::helpers::psql("postgres", "DROP DATABASE IF EXISTS walkthrough_restored");

    let port = free_port();
    let script = walkthrough.replace("localhost:9187", &format!("127.0.0.1:{port}"));
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
        ))
        .current_dir(dir.path())
        .env_remove("STRATA_CONFIG")
        .env_remove("STRATA_LOG_FORMAT")
        .env("STRATA_BIN", bin())
        .env("STRATA_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", source.url())
        .env("STRATA_STATE_DATABASE_URL", state.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env(
            "STRATA_S3_ENDPOINT",
            bucket.settings.endpoint.as_deref().unwrap(),
        )
        .env("STRATA_S3_BUCKET", &bucket.settings.bucket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id().unwrap();
    let out = match tokio::time::timeout(Duration::from_secs(240), child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // The daemon is in the script's process group: take it down too.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{group}")])
                .status();
            panic!("the walk-through did not finish within 4 minutes");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walk-through failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // Two backups (the start-up one and the API's), each with its manifest, on
    // disk and in the bucket; the daemon finished the second before it exited.
    let local = files(&dir.path().join("var/backups"));
    let in_bucket = bucket.keys().await;
    for (place, names) in [("disk", &local), ("bucket", &in_bucket)] {
        let count = |suffix: &str| names.iter().filter(|n| n.ends_with(suffix)).count();
        assert_eq!(
            count(".sql.gz.enc") - count(".globals.sql.gz.enc"),
            2,
            "backups on {place}: {names:?}"
        );
        assert_eq!(
            count(".globals.sql.gz.enc"),
            2,
            "roles and settings beside each backup on {place}: {names:?}"
        );
        assert_eq!(
            count(".manifest.json"),
            2,
            "manifests on {place}: {names:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| n.contains("database-backups/local/") && !n.contains(".strata-partial-")),
            "{place}: {names:?}"
        );
    }
    // `list` printed the start-up backup once per target.
    let first = in_bucket
        .iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .min()
        .unwrap();
    let id = Path::new(first)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".manifest.json")
        .to_string();
    let listed = stdout.lines().filter(|l| l.starts_with(&id)).count();
    assert_eq!(listed, 2, "{stdout}");

    // The restore from the bucket is the source database.
    assert_eq!(restored.exec("SELECT count(*) FROM events"), "2000");
    assert_eq!(restored.dump(), source.dump());
    // The key and token the walk-through made are private.
    for secret in ["var/keys/local.key", "var/api-token"] {
        let mode = std::fs::metadata(dir.path().join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is readable by others");
    }
}

/// A Debian PostgreSQL cluster made for one test, removed at the end.
struct DebianCluster {
    version: String,
    name: String,
}

impl Drop for DebianCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .output();
    }
}

#[tokio::test]
async fn the_quick_start_starts_an_installed_but_stopped_postgresql() {
    let version = String::from_utf8(
        Command::new("bash")
            .args(["-c", "ls /usr/lib/postgresql | sort -V | tail -1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let port = free_port();
    let cluster = DebianCluster {
        version,
        name: crate::helpers::unique("strata_qs_"),
    };
    // Created, not started: what a machine with PostgreSQL installed but down has.
    let out = Command::new("pg_createcluster")
        .args([
            &cluster.version,
            &cluster.name,
            "-p",
            &port.to_string(),
            "--",
            "--auth=trust",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ready = || {
        Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .unwrap()
            .success()
    };
    assert!(
        !ready(),
        "the cluster should be down before the quick start"
    );

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for script in ["scripts/start", "scripts/postgres.sh"] {
        copy_executable(&repo.join(script), &dir.path().join(script));
    }
    std::fs::copy(repo.join("config.yaml"), dir.path().join("config.yaml")).unwrap();
    let out = Command::new(dir.path().join("scripts/start"))
        .args(["list", "local"])
        .current_dir(dir.path())
        .env_remove("STRATA_CONFIG")
        .env("STRATA_BIN", bin())
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        )
        .env(
            "STRATA_STATE_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/strata_state"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/start failed: {stderr}");
    assert!(
        stderr.contains(&format!(
            "starting PostgreSQL cluster {} {}",
            cluster.version, cluster.name
        )),
        "{stderr}"
    );
    assert!(ready(), "the quick start did not start PostgreSQL");
    let exists = Command::new("psql")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "strata_state",
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exists.stdout).trim(),
        "1",
        "the state database was not created"
    );
}
