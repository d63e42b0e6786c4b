//! Operations from the command line: `strata alert test` against a real SMTP
//! server and an HTTP receiver, and the development refresh from production.

use std::process::{Command, Output};

use crate::helpers::{Setup, SmtpServer, TestDb, WebhookReceiver, bin, psql};

fn strata(setup: &Setup, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(args)
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
async fn alert_test_reaches_every_channel_and_names_a_failing_one() {
    let smtp = SmtpServer::start();
    let hook = WebhookReceiver::start().await;
    let setup = Setup::new();
    let db = TestDb::create();
    let alerts = format!(
        "alerts:\n  email: {{ smtp_url: \"{}\", from: backups@example.com, to: [ops@example.com, dba@example.com] }}\n  webhook: {{ url: \"{}\" }}\n",
        smtp.url, hook.url
    );
    setup.write_config_with(
        &alerts,
        "",
        &crate::helpers::job("app", &db.url(), "local", ""),
    );
    // strata's CLI is synchronous from the test's point of view: run it on a
    // blocking thread so the in-process receiver keeps answering.
    let run = |args: &'static [&'static str]| {
        let path = setup.path().to_owned();
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .arg("-c")
                .arg(path.join("config.yaml"))
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = run(&["alert", "test"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("email: sent") && text(&out).contains("webhook: sent"));
    let mail = smtp.wait_for("[strata ALERT] test alert").await;
    assert!(
        mail.contains("ops@example.com") && mail.contains("dba@example.com"),
        "{mail}"
    );
    let got = hook.wait_for("test", 1).await;
    assert!(
        got[0]["text"].as_str().unwrap().contains("test alert"),
        "{got:?}"
    );
    assert_eq!(got[0]["resolved"], false);

    // A receiver that is down: the command says which channel failed.
    let config = std::fs::read_to_string(setup.path().join("config.yaml")).unwrap();
    std::fs::write(
        setup.path().join("config.yaml"),
        config.replace(&hook.url, "http://127.0.0.1:9/hook"),
    )
    .unwrap();
    let out = run(&["alert", "test"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("webhook: FAILED"), "{}", text(&out));
    assert!(text(&out).contains("email: sent"), "{}", text(&out));
}

/// A production-shaped source: 600 events with participants.
fn production() -> TestDb {
    let db = TestDb::create();
    db.exec(
        "CREATE TABLE events (id int PRIMARY KEY, name text NOT NULL, starts_at timestamptz NOT NULL);
         CREATE TABLE participants (id serial PRIMARY KEY, event_id int REFERENCES events(id), email text);
         INSERT INTO events SELECT g, 'Event ' || g, now() - (600 - g) * interval '1 day' FROM generate_series(1, 600) g;
         INSERT INTO participants (event_id, email) SELECT g % 600 + 1, 'person' || g || '@example.com' FROM generate_series(1, 3000) g;",
    );
    db
}

const TRIM: &str = r#"[ "DELETE FROM participants WHERE event_id NOT IN (SELECT id FROM events ORDER BY starts_at DESC LIMIT 500)", "DELETE FROM events WHERE id NOT IN (SELECT id FROM events ORDER BY starts_at DESC LIMIT 500)" ]"#;

fn refresh_config(setup: &Setup, prod: &TestDb, dev: &TestDb, trim: &str) {
    let jobs = format!(
        "  prod: {{ database_url: \"{}\", targets: [local], file_prefix: prod }}\n  dev: {{ database_url: \"{}\", targets: [local], file_prefix: dev, refresh: {{ from: prod, trim_sql: {trim}, mask_sql: [ \"UPDATE participants SET email = 'user' || id || '@example.invalid'\" ] }} }}\n",
        prod.url(),
        dev.url()
    );
    setup.write_config("", &jobs);
}

fn leftovers(dev: &TestDb) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '{}\\_strata\\_%'",
            dev.name
        ),
    )
}

#[test]
fn development_is_refreshed_trimmed_and_masked_before_its_backup() {
    let setup = Setup::new();
    let prod = production();
    let dev = TestDb::create();
    dev.exec("CREATE TABLE stale_dev_only (x int)");
    refresh_config(&setup, &prod, &dev, TRIM);
    let out = strata(&setup, &["backup", "prod"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = strata(&setup, &["backup", "dev", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // The development database is production's newest backup, minimised.
    assert_eq!(dev.exec("SELECT count(*) FROM events"), "500");
    assert_eq!(dev.exec("SELECT min(id) FROM events"), "101");
    assert_eq!(
        dev.exec("SELECT count(*) FROM participants WHERE email LIKE '%@example.com'"),
        "0"
    );
    assert_eq!(
        dev.exec("SELECT count(*) FROM pg_tables WHERE tablename = 'stale_dev_only'"),
        "0"
    );
    assert_eq!(leftovers(&dev), "0");
    // …and its own backup holds exactly that.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["manifest"]["tables"]["public.events"], 500,
        "{report}"
    );
    assert_eq!(
        prod.exec("SELECT count(*) FROM events"),
        "600",
        "production was touched"
    );
}

#[test]
fn a_failing_trim_leaves_the_development_database_as_it_was() {
    let setup = Setup::new();
    let prod = production();
    let dev = TestDb::create();
    dev.exec("CREATE TABLE stale_dev_only (x int); INSERT INTO stale_dev_only VALUES (7)");
    refresh_config(
        &setup,
        &prod,
        &dev,
        r#"[ "DELETE FROM participants WHERE event_id < 50", "DELETE FROM no_such_table" ]"#,
    );
    assert!(strata(&setup, &["backup", "prod"]).status.success());
    let out = strata(&setup, &["backup", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("refresh before the backup failed"), "{t}");
    assert!(
        t.contains("refresh.trim_sql[1]") && t.contains("no_such_table"),
        "{t}"
    );
    assert_eq!(dev.exec("SELECT x FROM stale_dev_only"), "7");
    assert_eq!(
        dev.exec("SELECT count(*) FROM pg_tables WHERE tablename = 'events'"),
        "0"
    );
    assert_eq!(leftovers(&dev), "0");
    // No backup of the job was taken.
    assert!(
        !crate::helpers::files(&setup.backups())
            .iter()
            .any(|f| f.contains("/dev/")),
        "{:?}",
        crate::helpers::files(&setup.backups())
    );
}

#[test]
fn read_back_always_checks_every_copy_right_after_the_upload() {
    let setup = Setup::new();
    let db = TestDb::create();
    db.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 50) g");
    setup.write_config(
        "",
        &crate::helpers::job("app", &db.url(), "local", ", verify: { read_back: always }"),
    );
    let out = strata(&setup, &["backup", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = strata(&setup, &["list", "app", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = listed[0]["manifest"]["verifications"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0]["kind"], "read_back");
    assert_eq!(checks[0]["target"], "local");
    assert_eq!(checks[0]["ok"], true);
}

#[tokio::test]
async fn email_goes_over_starttls_or_smtps_with_auth_verified_against_the_configured_ca() {
    for mode in ["starttls", "smtps"] {
        let smtp = SmtpServer::start_tls(mode, "alerts@example.com", "CANARY-smtp-secret", false);
        let setup = Setup::new();
        let db = TestDb::create();
        let password = setup.path().join("smtp-password");
        std::fs::write(&password, "CANARY-smtp-secret\n").unwrap();
        // The user in the URL is percent-encoded; strata decodes it.
        let url = match mode {
            "starttls" => format!("smtp://alerts%40example.com@{}?tls=required", smtp.url),
            _ => format!("smtps://alerts%40example.com@{}", smtp.url),
        };
        let write = |ca: Option<&std::path::Path>, password: &std::path::Path| {
            let ca_line = ca.map_or_else(String::new, |p| format!("ca_file: {}, ", p.display()));
            setup.write_config_with(
                &format!(
                    "alerts:\n  email: {{ smtp_url: \"{url}\", password_file: {}, {ca_line}from: backups@example.com, to: [ops@example.com] }}\n",
                    password.display()
                ),
                "",
                &crate::helpers::job("app", &db.url(), "local", ""),
            );
        };

        // Trusting the server's CA: delivered, authenticated as the URL's user.
        write(Some(&smtp.ca_file()), &password);
        let out = strata(&setup, &["alert", "test"]);
        assert!(out.status.success(), "{mode}: {}", text(&out));
        assert!(text(&out).contains("email: sent"), "{mode}: {}", text(&out));
        let mail = smtp.wait_for("[strata ALERT] test alert").await;
        assert!(mail.contains("AUTH alerts@example.com"), "{mode}: {mail}");

        // `alert test` when the email cannot go: exit 1, the channel named.
        let refused = || {
            let out = strata(&setup, &["alert", "test"]);
            assert_eq!(out.status.code(), Some(1), "{mode}: {}", text(&out));
            assert!(
                text(&out).contains("email: FAILED"),
                "{mode}: {}",
                text(&out)
            );
            text(&out)
        };

        // Without the CA the certificate is not trusted: nothing is sent.
        write(None, &password);
        let out = refused();
        assert!(
            out.to_lowercase().contains("certificate") || out.contains("UnknownIssuer"),
            "{mode}: {out}"
        );

        // A wrong password is refused, and never printed.
        let wrong = setup.path().join("wrong-password");
        std::fs::write(&wrong, "CANARY-wrong").unwrap();
        write(Some(&smtp.ca_file()), &wrong);
        let out = refused();
        assert!(!out.contains("CANARY"), "{mode}: {out}");
        assert_eq!(smtp.received().matches("AUTH ").count(), 1, "{mode}");
    }
}

#[tokio::test]
async fn a_mail_server_that_stops_answering_cannot_hold_up_the_other_channels() {
    let smtp = SmtpServer::start_tls("starttls", "alerts", "right", true);
    let hook = WebhookReceiver::start().await;
    let setup = Setup::new();
    let db = TestDb::create();
    let password = setup.path().join("smtp-password");
    std::fs::write(&password, "wrong").unwrap();
    setup.write_config_with(
        &format!(
            "alerts:\n  email: {{ smtp_url: \"smtp://alerts@{}?tls=required\", password_file: {}, ca_file: {}, from: backups@example.com, to: [ops@example.com] }}\n  webhook: {{ url: \"{}\" }}\n",
            smtp.url,
            password.display(),
            smtp.ca_file().display(),
            hook.url
        ),
        "",
        &crate::helpers::job("app", &db.url(), "local", ""),
    );
    let path = setup.path().join("config.yaml");
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .arg("-c")
            .arg(path)
            .args(["alert", "test"])
            .output()
            .unwrap()
    });
    // The webhook does not wait for the stalled mail server.
    let got = hook.wait_for("test", 1).await;
    assert_eq!(got[0]["resolved"], false);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the webhook waited for email"
    );
    let out = out.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("email: FAILED") && text(&out).contains("no answer within 30s"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("webhook: sent"), "{}", text(&out));
    // Cut off by strata's deadline, not by the server's 5-minute idle timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn long_non_ascii_database_names_survive_replace_refresh_and_restore_tests() {
    // 59 bytes, a two-byte character across byte 40 (where names used to be cut).
    let name = format!("{}{}", "d".repeat(39), "é".repeat(10));
    assert!(!name.is_char_boundary(40) && name.len() == 59);
    let quoted = format!("\"{name}\"");
    psql("postgres", &format!("DROP DATABASE IF EXISTS {quoted}"));
    psql("postgres", &format!("CREATE DATABASE {quoted}"));
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            let _ = std::process::Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                ])
                .arg(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.0
                ))
                .output();
        }
    }
    let _guard = Drop_(name.clone());
    let encoded: String =
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).collect();
    let url = format!("{}/{encoded}", crate::helpers::PG);
    let setup = Setup::new();
    let prod = production();
    let jobs = format!(
        "  prod: {{ database_url: \"{}\", targets: [local], file_prefix: prod }}\n  dev: {{ database_url: \"{url}\", targets: [local], file_prefix: dev, refresh: {{ from: prod, trim_sql: {TRIM} }} }}\n",
        prod.url(),
    );
    setup.write_config("", &jobs);
    let out = strata(&setup, &["backup", "prod"]);
    assert!(out.status.success(), "{}", text(&out));
    // The refresh restores beside the long name and swaps it in.
    let out = strata(&setup, &["backup", "dev"]);
    assert!(out.status.success(), "{}", text(&out));
    let in_dev = |sql: &str| psql(&name, sql);
    assert_eq!(in_dev("SELECT count(*) FROM events"), "500");
    // restore --replace into it (not empty now).
    let out = std::process::Command::new(crate::helpers::bin())
        .arg("-c")
        .arg(setup.path().join("config.yaml"))
        .args(["restore", "prod", "--replace"])
        .env("STRATA_RESTORE_INTO", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(in_dev("SELECT count(*) FROM events"), "600");
    // A restore test of the job whose database has the long name.
    let server = format!("{}/postgres", crate::helpers::PG);
    let out = strata(&setup, &["verify", "dev", "--restore-into", &server]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restore test: ok"));
    let left = psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '{}%' AND datname <> '{name}'",
            &name[..39]
        ),
    );
    assert_eq!(left, "0", "a scratch or old database was left behind");
}
