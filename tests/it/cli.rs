//! The command line as an operator uses it: exit codes, one-line errors, and no
//! secret in any output.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use crate::helpers::{Setup, TestDb, bin, job};

fn strata(setup: &Setup, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(args)
        .env_remove("STRATA_PG_BIN_DIR")
        .output()
        .expect("strata runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn world_readable_or_missing_key_files_stop_every_command() {
    let setup = Setup::new();
    let db = TestDb::create();
    setup.write_config("", &job("app", &db.url(), "local", ""));
    let key = setup.path().join("k1.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [&["check"][..], &["backup", "app"]] {
        let out = strata(&setup, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("readable or writable by group/others (mode 0644)"),
            "{}",
            stderr(&out)
        );
    }
    std::fs::remove_file(&key).unwrap();
    let out = strata(&setup, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("encryption.keys.k1: key file"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
}

#[test]
fn an_unknown_job_is_status_2_in_every_command_that_takes_one() {
    let setup = Setup::new();
    let db = TestDb::create();
    setup.write_config("", &job("app", &db.url(), "local", ""));
    let into = db.url();
    for args in [
        &["backup", "nope"][..],
        &["list", "nope"],
        &["restore", "nope", "--into", &into],
        &["verify", "nope"],
        &["next", "nope"],
        &["prune", "nope", "--dry-run"],
    ] {
        let out = strata(&setup, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("unknown job 'nope'"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn keygen_never_overwrites_a_key() {
    let setup = Setup::new();
    let key = setup.path().join("k1.key");
    let before = std::fs::read(&key).unwrap();
    let out = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn unreachable_server_is_named_and_the_password_is_not() {
    let setup = Setup::new();
    setup.write_config(
        "",
        &job(
            "app",
            "postgres://app:CANARY-db-password@127.0.0.1:9/prod",
            "local",
            "",
        ),
    );
    let out = strata(&setup, &["backup", "app"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect to postgres://app@127.0.0.1:9/prod"),
        "{err}"
    );
    assert!(!err.contains("CANARY"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
}

#[test]
fn pg_dump_older_than_the_server_names_both_versions() {
    let setup = Setup::new();
    let db = TestDb::create();
    setup.write_config("", &job("app", &db.url(), "local", ""));
    let tools = setup.path().join("old-bin");
    std::fs::create_dir(&tools).unwrap();
    let fake = tools.join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(["backup", "app"])
        .env("STRATA_PG_BIN_DIR", &tools)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let server = crate::helpers::psql("postgres", "SHOW server_version");
    let server = server.split_whitespace().next().unwrap();
    assert!(
        err.contains("pg_dump 9.6.24 is older than the server"),
        "{err}"
    );
    assert!(
        err.contains(server),
        "server version {server} missing: {err}"
    );
    assert_eq!(
        crate::helpers::files(&setup.backups()),
        Vec::<String>::new()
    );
}

#[test]
fn backup_list_restore_and_verify_from_the_command_line() {
    let setup = Setup::new();
    let db = TestDb::create();
    let state = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 123) g");
    let top = format!("state: {{ database_url: \"{}\" }}\n", state.url());
    setup.write_config_with(&top, "", &job("app", &db.url(), "local", ""));
    let out = strata(&setup, &["backup", "app", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["manifest"]["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(report["manifest"]["tables"]["public.t"], 123);

    let out = strata(&setup, &["list", "app", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["manifest"]["backup_id"], id.as_str());

    let dest = TestDb::reserve();
    let out = Command::new(bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(["restore", "app", "--backup", &id])
        .env("STRATA_RESTORE_INTO", dest.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dest.exec("SELECT count(*) FROM t"), "123");

    let server = format!("{}/postgres", crate::helpers::PG);
    let out = strata(&setup, &["verify", "app", "--restore-into", &server]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on local: ok") && text.contains("restore test: ok"),
        "{text}"
    );
    // The results are recorded in the manifest.
    let out = strata(&setup, &["list", "app", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = listed[0]["manifest"]["verifications"].as_array().unwrap();
    let kinds: Vec<(&str, bool)> = checks
        .iter()
        .map(|v| (v["kind"].as_str().unwrap(), v["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("read_back", true), ("restore", true)]);
    // Every operation is in the audit log, in order (a backup as the daemon
    // records one: its start and its end; a restore into a scratch database
    // as the daemon records a restore test).
    assert_eq!(
        state.exec("SELECT string_agg(action, ',' ORDER BY id) FROM audit_log"),
        "backup.start,backup.finish,restore,verify,restore_test"
    );
    assert_eq!(
        state.exec("SELECT count(*) FROM restore_tests WHERE ok"),
        "1"
    );
}

#[test]
fn next_lists_runs_in_the_zone_and_in_utc() {
    let setup = Setup::new();
    setup.write_config(
        "",
        &job(
            "app",
            "postgres://x/y",
            "local",
            ", schedule: \"0 3 * * *\"",
        ),
    );
    let out = strata(
        &setup,
        &[
            "next",
            "app",
            "--from",
            "2025-03-08T12:00:00-05:00",
            "--count",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Spring forward on 9 March 2025: 03:00 exists (EDT, UTC-4).
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![
            "2025-03-09T03:00:00-04:00  2025-03-09T07:00:00+00:00",
            "2025-03-10T03:00:00-04:00  2025-03-10T07:00:00+00:00"
        ]
    );
}

#[test]
fn shipped_configurations_pass_check() {
    let setup = Setup::new();
    let root = env!("CARGO_MANIFEST_DIR");
    for token in ["api-token", "admin-token"] {
        std::fs::write(setup.path().join(token), "t").unwrap();
    }
    let out = Command::new(bin())
        .args(["-c", &format!("{root}/config.yaml"), "check"])
        .env("STRATA_KEY_FILE", setup.path().join("k1.key"))
        .env("STRATA_TOKEN_FILE", setup.path().join("api-token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "config.yaml: {}", stderr(&out));
    let keys = setup.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::copy(setup.path().join("k1.key"), keys.join("k1.key")).unwrap();
    let run = |with_urls: bool| {
        let mut cmd = Command::new(bin());
        cmd.args([
            "-c",
            &format!("{root}/deploy/config.production.yaml"),
            "check",
        ])
        .env("STRATA_SECRETS_DIR", setup.path())
        .env("STRATA_KEY_DIR", &keys);
        if with_urls {
            for var in [
                "PROD_DATABASE_URL",
                "PROD_CLUSTER_DATABASE_URL",
                "DEV_DATABASE_URL",
                "STAGING_DATABASE_URL",
                "STRATA_STATE_DATABASE_URL",
            ] {
                cmd.env(
                    var,
                    format!("postgres://strata@db.example/{}", var.to_lowercase()),
                );
            }
        }
        cmd.output().unwrap()
    };
    let out = run(true);
    assert!(
        out.status.success(),
        "deploy/config.production.yaml: {}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 job(s), 3 target(s)"), "{text}");
    // Without the environment, every missing variable is named at once.
    let out = run(false);
    assert_eq!(out.status.code(), Some(2));
    for var in [
        "PROD_DATABASE_URL",
        "PROD_CLUSTER_DATABASE_URL",
        "DEV_DATABASE_URL",
        "STAGING_DATABASE_URL",
        "STRATA_STATE_DATABASE_URL",
    ] {
        assert!(
            stderr(&out).contains(var),
            "{var} not reported: {}",
            stderr(&out)
        );
    }
}

fn password_server() -> String {
    std::env::var("STRATA_TEST_PG_PASSWORD_URL")
        .expect("STRATA_TEST_PG_PASSWORD_URL: run the suite with scripts/test")
}

#[test]
fn wrong_password_is_named_as_the_cause_and_never_shown() {
    let setup = Setup::new();
    let url = password_server().replace("right-password", "CANARY-wrong-password");
    setup.write_config("", &job("app", &url, "local", ""));
    let out = strata(&setup, &["backup", "app"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("password authentication failed for user \"strata_pw\""),
        "{err}"
    );
    assert!(!err.contains("CANARY"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn the_password_reaches_pg_dump_only_through_its_environment() {
    let setup = Setup::new();
    setup.write_config("", &job("app", &password_server(), "local", ""));
    // A wrapper records pg_dump's arguments and whether PGPASSWORD was set, then
    // runs the real pg_dump.
    let real = crate::helpers::psql("postgres", "SELECT 1"); // the local server is up
    assert_eq!(real, "1");
    let pg_dump = String::from_utf8(
        Command::new("bash")
            .args([
                "-c",
                "ls -d /usr/lib/postgresql/*/bin/pg_dump | sort -V | tail -1",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let tools = setup.path().join("bin");
    std::fs::create_dir(&tools).unwrap();
    let log = setup.path().join("argv.log");
    let wrapper = tools.join("pg_dump");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\necho \"args: $*\" >> {log}\necho \"PGPASSWORD set: ${{PGPASSWORD:+yes}}\" >> {log}\nexec {} \"$@\"\n", pg_dump.trim(), log = log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(["backup", "app"])
        .env("STRATA_PG_BIN_DIR", &tools)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert!(
        recorded.contains("args: --no-password --encoding=UTF8 --format=plain --snapshot="),
        "{recorded}"
    );
    assert!(recorded.contains("PGPASSWORD set: yes"), "{recorded}");
    assert!(!recorded.contains("right-password"), "{recorded}");
}

#[tokio::test]
async fn s3_credentials_come_from_the_standard_aws_chain() {
    let setup = Setup::new();
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 5) g");
    let bucket = crate::helpers::Bucket::create(crate::helpers::S3Kind::Garage).await;
    setup.write_config(
        &bucket.yaml("s3", None),
        &job("app", &db.url(), "local, s3", ""),
    );
    let (id, secret) = bucket.settings.credentials.clone().unwrap();
    let run = |secret: &str| {
        Command::new(bin())
            .arg("-c")
            .arg(setup.path().join("config.yaml"))
            .args(["backup", "app"])
            .env("AWS_ACCESS_KEY_ID", &id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    };
    use secrecy::ExposeSecret;
    let out = run(secret.expose_secret());
    assert!(out.status.success(), "{}", stderr(&out));
    // A wrong secret from the environment: the S3 copy fails, local keeps one,
    // the run says which target failed, and the secret is not printed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run("CANARY-wrong-secret");
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("s3: FAILED"), "{text}");
    assert!(text.contains("target(s) s3 failed"), "{text}");
    assert!(!text.contains("CANARY"), "{text}");
}

#[test]
fn the_configuration_reference_is_a_valid_configuration() {
    let setup = Setup::new();
    for token in [
        "api-token",
        "admin-token",
        "smtp-password",
        "mail-ca.pem",
        "db-ca.pem",
    ] {
        std::fs::write(setup.path().join(token), "t").unwrap();
    }
    let out = Command::new(bin())
        .args([
            "-c",
            &format!("{}/docs/config-reference.yaml", env!("CARGO_MANIFEST_DIR")),
            "check",
        ])
        .env("STRATA_SECRETS_DIR", setup.path())
        .env("STRATA_KEY_DIR", setup.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The last JSON progress event on stderr.
fn done_event(out: &Output) -> serde_json::Value {
    stderr(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {}", stderr(out)))
}

#[test]
fn long_commands_report_progress_on_a_terminal_or_as_json_and_stay_quiet_otherwise() {
    let setup = Setup::new();
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g");
    setup.write_config("", &job("app", &db.url(), "local", ""));
    let out = strata(&setup, &["backup", "app", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = done_event(&out);
    assert_eq!(done["operation"], "backup app");
    assert_eq!(done["bytes"], first["manifest"]["raw_bytes"], "{done}");
    assert_eq!(
        done["total_bytes"], 0,
        "no estimate before the first backup"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = strata(&setup, &["backup", "app", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = done_event(&out);
    assert_eq!(
        done["total_bytes"], first["manifest"]["raw_bytes"],
        "the previous backup is the estimate"
    );

    let dest = TestDb::reserve();
    let restore = |json: bool| {
        let mut c = Command::new(bin());
        c.arg("-c")
            .arg(setup.path().join("config.yaml"))
            .args(["restore", "app"])
            .args(json.then_some("--json"))
            .env("STRATA_RESTORE_INTO", dest.url());
        c
    };
    let out = restore(true).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let done = done_event(&out);
    assert_eq!(done["operation"], "restore app");
    assert_eq!(done["bytes"], done["total_bytes"], "{done}");
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    // Not a terminal, no --json: nothing but the result.
    let dest2 = TestDb::reserve();
    let out = restore(false)
        .env("STRATA_RESTORE_INTO", dest2.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "progress written to a pipe");
    // On a terminal (script(1) gives it one): the redrawn line.
    let dest3 = TestDb::reserve();
    let cmd = format!(
        "STRATA_RESTORE_INTO={} {} -c {} restore app",
        dest3.url(),
        bin(),
        setup.path().join("config.yaml").display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("\r\x1b[Krestore app: "), "{shown:?}");
    assert!(shown.contains("MiB of ~"), "{shown:?}");
}

#[test]
fn status_shows_every_job_and_fails_when_one_is_not_ok() {
    let setup = Setup::new();
    let db = TestDb::create();
    let state = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g");
    let top = format!("state: {{ database_url: \"{}\" }}\n", state.url());
    let second = setup.path().join("second");
    let targets = format!("  second: {{ kind: local, path: {} }}\n", second.display());
    setup.write_config_with(
        &top,
        &targets,
        &format!(
            "{}{}",
            job(
                "app",
                &db.url(),
                "local, second",
                ", schedule: \"0 3 * * *\""
            ),
            job("idle", &db.url(), "local", "")
        ),
    );
    let out = strata(&setup, &["backup", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = format!("{}/postgres", crate::helpers::PG);
    let out = strata(&setup, &["verify", "app", "--restore-into", &server]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `idle` has no backup yet: status says so and exits 1.
    let out = strata(&setup, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("job(s) not ok: idle"),
        "{}",
        stderr(&out)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "app")
        .unwrap();
    assert_eq!(app["status"], "ok", "{app}");
    assert_eq!(app["backups"], 1);
    assert!(app["within_rpo"].as_bool().unwrap());
    assert!(app["next_run"].is_string(), "{app}");
    assert_eq!(app["last_run"]["status"], "success");
    assert!(
        app["restore_test"]["seconds"].as_f64().is_some(),
        "the RTO of the restore test: {app}"
    );
    assert_eq!(app["targets"].as_array().unwrap().len(), 2);
    let idle = s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "idle")
        .unwrap();
    assert_eq!(idle["status"], "no backup");
    // The second target loses its copy: the job is degraded, and the screen
    // names the target.
    std::fs::remove_dir_all(&second).unwrap();
    std::fs::create_dir(&second).unwrap();
    let out = strata(&setup, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("job app: degraded"), "{text}");
    assert!(
        text.contains("second missing the newest backup (0)"),
        "{text}"
    );
    assert!(
        text.contains("restore test      ") && text.contains(" ok, RTO "),
        "{text}"
    );
}

#[test]
fn check_warns_that_unencrypted_backups_have_unauthenticated_manifests() {
    let setup = Setup::new();
    let db = TestDb::create();
    setup.write_config("", &job("app", &db.url(), "local", ""));
    let out = strata(&setup, &["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("warning:"),
        "an encrypted config has nothing to warn about: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let plain = |extra: &str| {
        std::fs::write(
            setup.path().join("config.yaml"),
            format!(
                "timezone: UTC\n{extra}targets:\n  local: {{ kind: local, path: {} }}\njobs:\n{}",
                setup.backups().display(),
                job("app", &db.url(), "local", "")
            ),
        )
        .unwrap();
        strata(&setup, &["check"])
    };
    let out = plain("");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: no encryption is configured: the backups of app are stored readable and their manifests are unauthenticated"),
        "{stdout}"
    );
    let out = plain("require_authenticated_manifests: true\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "require_authenticated_manifests: manifests are authenticated with the encryption key; configure encryption"
        ),
        "{}",
        stderr(&out)
    );
}
