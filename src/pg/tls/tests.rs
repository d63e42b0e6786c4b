use super::*;

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn ssl_parameters_are_split_off_both_url_forms() {
    let (rest, taken) = split_params(
        "postgres://u:p%40w@db:5433/app?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
    )
    .unwrap();
    assert_eq!(rest, "postgres://u:p%40w@db:5433/app?application_name=x");
    assert_eq!(
        taken,
        pairs(&[("sslmode", "verify-full"), ("sslrootcert", "/tmp/ca.pem")])
    );
    let (rest, taken) =
        split_params("host=db  sslmode=require password='a \\'b\\' c' dbname=app").unwrap();
    assert_eq!(rest, "host=db password='a \\'b\\' c' dbname=app");
    assert_eq!(taken, pairs(&[("sslmode", "require")]));
    assert_eq!(
        split_params("postgres://db/app?sslcrl=/x").unwrap_err(),
        "sslcrl is not supported by strata"
    );
    assert!(split_params("host=db password='open").is_err());
}

#[test]
fn settings_follow_libpq() {
    let s = TlsSettings::from_params(&[]).unwrap();
    assert_eq!(s.mode, SslMode::Prefer);
    assert!(!s.required());
    let s = TlsSettings::from_params(&pairs(&[("sslrootcert", "system")])).unwrap();
    assert_eq!(s.mode, SslMode::VerifyFull, "system implies verify-full");
    assert!(
        TlsSettings::from_params(&pairs(&[("sslmode", "require"), ("sslrootcert", "system")]))
            .unwrap_err()
            .contains("requires sslmode=verify-full")
    );
    assert!(
        TlsSettings::from_params(&pairs(&[("sslmode", "verify-any")]))
            .unwrap_err()
            .contains("verify-any")
    );
    assert_eq!(
        TlsSettings::from_params(&pairs(&[("sslrootcert", "/nonexistent/ca.pem")])).unwrap_err(),
        "sslrootcert file /nonexistent/ca.pem does not exist"
    );
    let env = TlsSettings::from_params(&pairs(&[
        ("sslmode", "verify-full"),
        ("sslrootcert", "system"),
    ]))
    .unwrap()
    .libpq_env(15);
    assert_eq!(env[0], ("PGSSLMODE", "verify-full".to_owned()));
    assert!(
        env.iter()
            .any(|(k, v)| *k == "PGSSLROOTCERT" && v != "system"),
        "PostgreSQL 15 tools get a bundle file: {env:?}"
    );
}

#[test]
fn world_readable_keys_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.key");
    std::fs::write(&key, "x").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(check_key_mode(&key).unwrap_err().contains("chmod 600"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    check_key_mode(&key).unwrap();
}
