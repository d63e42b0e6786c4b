//! A TLS-only PostgreSQL (`hostnossl … reject`): backups, restores and the
//! state database work over TLS with libpq's `sslmode`, and every way a TLS
//! setting can be wrong is refused naming the cause.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use strata::pg::DbUrl;

use crate::cluster::{ADMIN, Cluster, Options, TestCa};
use crate::helpers::{Setup, bin};

fn tls_only() -> Cluster {
    Cluster::start(Options {
        tls: Some("strata test CA"),
        hba: vec![
            "hostssl all certuser 127.0.0.1/32 cert".into(),
            "hostssl all all 127.0.0.1/32 trust".into(),
            "hostnossl all all 0.0.0.0/0 reject".into(),
        ],
        ..Options::default()
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn connect_error(url: &str) -> String {
    let url: DbUrl = url.parse().unwrap();
    match url.connect().await {
        Ok(_) => panic!("{url} connected"),
        Err(e) => e.to_string(),
    }
}

async fn ssl_in_use(url: &str) -> bool {
    let url: DbUrl = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    let client = url.connect().await.unwrap_or_else(|e| panic!("{e}"));
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_tls_only_server_is_backed_up_restored_and_holds_the_state_database() {
    let pg = tls_only();
    for db in ["app", "strata_state", "restored"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    }
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
    );
    let setup = Setup::new();
    let ca = setup.path().join("db-ca.pem");
    pg.ca.as_ref().unwrap().write(&ca);
    let tls = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let url = |db: &str| format!("postgres://{ADMIN}@localhost:{}/{db}?{tls}", pg.port);
    let top = format!("state: {{ database_url: \"{}\" }}\n", url("strata_state"));
    let config = setup.write_config_with(
        &top,
        "",
        &crate::helpers::job("app", &url("app"), "local", ""),
    );
    let out = Command::new(bin())
        .arg("-c")
        .arg(&config)
        .args(["backup", "app"])
        .output()
        .unwrap();
    assert!(out.status.success(), "backup over TLS: {}", stderr(&out));
    // The run was recorded in the state database on the same TLS-only server.
    assert_eq!(
        pg.psql(
            "strata_state",
            "SELECT count(*) FROM runs WHERE job = 'app' AND status = 'success'"
        ),
        "1"
    );
    // The restore connects over TLS too (the server refuses anything else).
    let out = Command::new(bin())
        .arg("-c")
        .arg(&config)
        .args(["restore", "app", "--replace"])
        .env("STRATA_RESTORE_INTO", url("restored"))
        .output()
        .unwrap();
    assert!(out.status.success(), "restore over TLS: {}", stderr(&out));
    assert_eq!(pg.dump("restored"), pg.dump("app"));
    assert!(ssl_in_use(&url("app")).await);
}

#[tokio::test]
async fn every_wrong_tls_setting_is_refused_naming_the_cause() {
    let pg = tls_only();
    let setup = Setup::new();
    let ca = setup.path().join("ca.pem");
    pg.ca.as_ref().unwrap().write(&ca);
    let ca = ca.display();
    let at = |host: &str, params: &str| {
        format!("postgres://{ADMIN}@{host}:{}/postgres?{params}", pg.port)
    };

    // Without TLS the server's pg_hba.conf says no.
    let e = connect_error(&at("localhost", "sslmode=disable")).await;
    assert!(
        e.contains("no encryption") && e.contains("pg_hba.conf"),
        "{e}"
    );
    // verify-full checks the name: the certificate is for localhost only.
    let e = connect_error(&at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        e.contains("certificate") && e.contains("127.0.0.1") && e.contains("localhost"),
        "{e}"
    );
    // verify-ca checks the chain but not the name.
    assert!(
        ssl_in_use(&at(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await
    );
    // Another CA's root: the chain does not verify.
    let other = setup.path().join("other-ca.pem");
    TestCa::new("someone else").write(&other);
    let e = connect_error(&at(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
    ))
    .await;
    assert!(
        e.contains("certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );
    // verify-full without any root certificate says which file it looked for.
    let e = connect_error(&at("localhost", "sslmode=verify-full")).await;
    assert!(e.contains("root.crt") && e.contains("sslrootcert"), "{e}");
    // require and the default prefer encrypt without checking the certificate.
    assert!(ssl_in_use(&at("127.0.0.1", "sslmode=require")).await);
    assert!(ssl_in_use(&at("127.0.0.1", "")).await);
    // A missing root file is caught when the URL is read (`strata check`).
    let e = "postgres://x@h/db?sslrootcert=/nonexistent/ca.pem"
        .parse::<DbUrl>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/ca.pem does not exist"), "{e}");

    // A client certificate logs in as its common name; a key others can read
    // is refused as libpq refuses it.
    pg.psql("postgres", "CREATE ROLE certuser LOGIN");
    let (cert, key) = pg.ca.as_ref().unwrap().issue("certuser", &[]);
    let cert_file = setup.path().join("client.crt");
    let key_file = setup.path().join("client.key");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client_url = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        pg.port,
        cert_file.display(),
        key_file.display()
    );
    let url: DbUrl = client_url.parse().unwrap();
    let client = url.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "certuser");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = connect_error(&client_url).await;
    assert!(e.contains("chmod 600"), "{e}");
    // Without the certificate the cert line of pg_hba.conf refuses the user.
    let e = connect_error(&format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        pg.port
    ))
    .await;
    assert!(e.contains("certificate"), "{e}");
}
