use super::*;

#[test]
fn versions_parse() {
    assert_eq!(
        parse_version("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)\n"),
        Some(("15.19".into(), 15))
    );
    assert_eq!(
        parse_version("psql (PostgreSQL) 9.6.24"),
        Some(("9.6.24".into(), 9))
    );
    assert_eq!(
        parse_version("pg_dump (PostgreSQL) 17beta1"),
        Some(("17beta1".into(), 17))
    );
    assert_eq!(parse_version("garbage"), None);
}

#[test]
fn urls_never_show_passwords() {
    let url: DbUrl = "postgres://app:s3cr3t-canary@db.example:6543/prod"
        .parse()
        .unwrap();
    assert_eq!(url.to_string(), "postgres://app@db.example:6543/prod");
    assert!(!format!("{url:?}").contains("s3cr3t"));
    let env = url.libpq_env(15);
    assert!(env.contains(&("PGPASSWORD", "s3cr3t-canary".into())));
    assert_eq!(
        url.with_dbname("other").to_string(),
        "postgres://app@db.example:6543/other"
    );
    let err = "postgres://app:s3cr3t-canary@db/x?bogus=1"
        .parse::<DbUrl>()
        .unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}
