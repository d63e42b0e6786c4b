use super::*;

fn role(name: &str, login: bool) -> Role {
    Role {
        name: name.into(),
        superuser: false,
        inherit: true,
        createrole: false,
        createdb: false,
        login,
        replication: false,
        bypassrls: false,
        connection_limit: -1,
        valid_until: None,
        password: None,
        comment: None,
        settings: vec![],
    }
}

fn sample() -> Globals {
    let mut admin = role("postgres", true);
    admin.superuser = true;
    let mut app = role("app", true);
    app.settings = vec![
        "search_path=\"$user\", public".into(),
        "work_mem=8MB".into(),
    ];
    Globals {
        server_version_num: 150_000,
        bootstrap_superuser: "postgres".into(),
        roles: vec![admin, app, role("readonly", false)],
        memberships: vec![Membership {
            role: "readonly".into(),
            member: "app".into(),
            admin: false,
            inherit: None,
            set: None,
        }],
        tablespaces: vec![],
        database: Database {
            name: "prod".into(),
            owner: "app".into(),
            encoding: "UTF8".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
            locale_provider: Some("c".into()),
            locale: None,
            icu_rules: None,
            connection_limit: -1,
            tablespace: None,
            settings: vec!["statement_timeout=30s".into()],
            role_settings: BTreeMap::from([("readonly".into(), vec!["work_mem=1MB".into()])]),
            grants: Some(vec![
                Grant {
                    grantee: Some("app".into()),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
                Grant {
                    grantee: Some("readonly".into()),
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
            ]),
            comment: Some("it's prod".into()),
        },
        passwords_included: false,
    }
}

fn fresh() -> Destination {
    Destination {
        roles: BTreeSet::from(["admin".to_owned()]),
        tablespaces: BTreeSet::new(),
        bootstrap_superuser: "admin".into(),
        superuser: true,
        user: "admin".into(),
        server_version_num: 150_000,
    }
}

#[test]
fn a_fresh_server_gets_every_role_and_the_bootstrap_superuser_is_mapped() {
    let plan = sample().plan(&fresh(), &Options::default());
    assert_eq!(
        plan.role_map.get("postgres").map(String::as_str),
        Some("admin")
    );
    assert_eq!(plan.created_roles, vec!["app", "readonly"]);
    assert_eq!(
        plan.before,
        vec![
            "CREATE ROLE \"app\" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1",
            "ALTER ROLE \"app\" SET \"search_path\" TO '$user', 'public'",
            "ALTER ROLE \"app\" SET \"work_mem\" TO '8MB'",
            "CREATE ROLE \"readonly\" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1",
            "GRANT \"readonly\" TO \"app\"",
        ]
    );
    assert!(
        plan.create_database.ends_with("OWNER \"app\""),
        "{}",
        plan.create_database
    );
    assert_eq!(
        plan.after,
        vec![
            "ALTER DATABASE {db} SET \"statement_timeout\" TO '30s'",
            "ALTER ROLE \"readonly\" IN DATABASE {db} SET \"work_mem\" TO '1MB'",
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
            "GRANT CONNECT ON DATABASE {db} TO \"app\"",
            "GRANT CONNECT ON DATABASE {db} TO \"readonly\"",
            "COMMENT ON DATABASE {db} IS 'it''s prod'",
        ]
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("without a password") && w.contains("app"))
    );
}

#[test]
fn existing_roles_are_left_alone_unless_asked() {
    let mut dest = fresh();
    dest.roles.insert("app".into());
    let plan = sample().plan(&dest, &Options::default());
    assert_eq!(plan.created_roles, vec!["readonly"]);
    assert!(!plan.before.iter().any(|s| s.contains("ALTER ROLE \"app\"")));
    assert!(
        !plan.before.iter().any(|s| s.starts_with("GRANT")),
        "{:?}",
        plan.before
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("existing role app was not made a member"))
    );
    let plan = sample().plan(
        &dest,
        &Options {
            update_roles: true,
            ..Options::default()
        },
    );
    assert!(
        plan.before
            .iter()
            .any(|s| s.starts_with("ALTER ROLE \"app\" WITH"))
    );
    assert!(
        plan.before
            .contains(&"GRANT \"readonly\" TO \"app\"".to_owned())
    );
}

#[test]
fn role_map_and_no_owner_reach_the_database_too() {
    let opts = Options {
        role_map: BTreeMap::from([("app".to_owned(), "app_staging".to_owned())]),
        ..Options::default()
    };
    let plan = sample().plan(&fresh(), &opts);
    assert!(plan.before[0].starts_with("CREATE ROLE \"app_staging\""));
    assert!(plan.create_database.ends_with("OWNER \"app_staging\""));
    assert!(
        plan.after
            .contains(&"GRANT CONNECT ON DATABASE {db} TO \"app_staging\"".to_owned())
    );
    let plan = sample().plan(
        &fresh(),
        &Options {
            no_owner: true,
            no_globals: true,
            ..Options::default()
        },
    );
    assert!(!plan.create_database.contains("OWNER"));
    assert!(plan.before.is_empty());
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("CONNECT on the database for app skipped"))
    );
}

#[test]
fn a_non_superuser_cannot_hand_out_superuser() {
    let mut g = sample();
    g.roles[1].superuser = true;
    let mut dest = fresh();
    dest.superuser = false;
    let plan = g.plan(&dest, &Options::default());
    assert!(!plan.before[0].contains("SUPERUSER"), "{}", plan.before[0]);
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.starts_with("role app: SUPERUSER"))
    );
}

#[test]
fn list_settings_are_quoted_per_element() {
    assert_eq!(
        split_guc_list("\"$user\", public,\"a\"\"b\""),
        ["$user", "public", "a\"b"]
    );
    assert_eq!(
        set_clause("search_path=\"$user\", public").as_deref(),
        Some("SET \"search_path\" TO '$user', 'public'")
    );
    assert_eq!(
        set_clause("application_name=it's").as_deref(),
        Some("SET \"application_name\" TO 'it''s'")
    );
}

#[test]
fn the_stored_file_reads_back() {
    let g = sample();
    let text = g.render();
    assert_eq!(Globals::parse(&text).unwrap(), g);
    assert!(
        text.contains("ALTER DATABASE :\"strata_database\" OWNER TO \"app\";"),
        "{text}"
    );
    assert!(Globals::parse("SELECT 1;").is_err());
}
