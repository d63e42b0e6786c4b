//! Restores onto another server: a freshly initialised cluster gets the roles,
//! owners, grants, policies and settings back from the S3 copy alone; other
//! environments map role names; failures leave the destination as it was; the
//! parallel restore gives back exactly the source.

use std::path::Path;
use std::process::Command;

use crate::cluster::{ADMIN, Cluster, Options, dump_with};
use crate::helpers::{Bucket, S3Kind, Setup, TestDb, bin, psql, unique};

/// Roles on the shared server, dropped at the end (after the databases).
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        for r in self.0.iter().rev() {
            let _ = Command::new("psql")
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
                .arg(format!("DROP ROLE IF EXISTS \"{r}\""))
                .output();
        }
    }
}

/// A database owned by an application role, read by a read-only role through
/// grants, a row-level-security policy and default privileges, with role and
/// database settings: what a real production database looks like.
struct AppDb {
    owner: String,
    reader: String,
    login: String,
    db: TestDb,
    _roles: Roles,
}

impl AppDb {
    fn create() -> Self {
        let s = unique("");
        let (owner, reader, login) = (
            format!("app_owner_{s}"),
            format!("app_ro_{s}"),
            format!("app_login_{s}"),
        );
        psql(
            "postgres",
            &format!(
                "CREATE ROLE {owner} LOGIN CREATEDB CONNECTION LIMIT 20; \
                 CREATE ROLE {reader} NOLOGIN; COMMENT ON ROLE {reader} IS 'reads the app'; \
                 CREATE ROLE {login} LOGIN IN ROLE {reader}; \
                 ALTER ROLE {owner} SET statement_timeout = '5min'; \
                 ALTER ROLE {reader} SET search_path = \"$user\", app, public"
            ),
        );
        let roles = Roles(vec![login.clone(), reader.clone(), owner.clone()]);
        let db = TestDb::create();
        let name = &db.name;
        psql(
            "postgres",
            &format!(
                "ALTER DATABASE {name} OWNER TO {owner}; \
                 REVOKE ALL ON DATABASE {name} FROM PUBLIC; \
                 GRANT CONNECT ON DATABASE {name} TO {reader}; \
                 ALTER DATABASE {name} SET work_mem = '16MB'; \
                 ALTER ROLE {reader} IN DATABASE {name} SET statement_timeout = '30s'"
            ),
        );
        db.exec(&format!(
            "SET ROLE {owner};
             CREATE SCHEMA app;
             CREATE TABLE app.accounts (id int PRIMARY KEY, tenant text NOT NULL, balance numeric);
             INSERT INTO app.accounts SELECT g, CASE WHEN g % 3 = 0 THEN '{login}' ELSE 'other' END, g * 1.5 FROM generate_series(1, 3000) g;
             CREATE TABLE app.entries (id bigserial PRIMARY KEY, account int REFERENCES app.accounts(id), amount numeric, at timestamptz DEFAULT now());
             INSERT INTO app.entries (account, amount) SELECT 1 + g % 3000, g FROM generate_series(1, 20000) g;
             CREATE INDEX ON app.entries (account);
             CREATE VIEW app.balances AS SELECT tenant, sum(balance) FROM app.accounts GROUP BY tenant;
             CREATE FUNCTION app.total() RETURNS numeric LANGUAGE sql SECURITY DEFINER AS $$ SELECT sum(balance) FROM app.accounts $$;
             ALTER TABLE app.accounts ENABLE ROW LEVEL SECURITY;
             CREATE POLICY tenant_rows ON app.accounts FOR SELECT TO {reader} USING (tenant = current_user);
             GRANT USAGE ON SCHEMA app TO {reader};
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO {reader};
             GRANT EXECUTE ON FUNCTION app.total() TO {reader};
             ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO {reader};"
        ));
        Self {
            owner,
            reader,
            login,
            db,
            _roles: roles,
        }
    }

    fn roles(&self) -> String {
        format!("'{}', '{}', '{}'", self.owner, self.reader, self.login)
    }
}

/// Roles, memberships and database-level settings as one comparable text.
fn globals_of(run: &dyn Fn(&str, &str) -> String, db: &str, roles: &str) -> String {
    let queries = [
        format!(
            "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolconnlimit, \
                    shobj_description(oid, 'pg_authid'), \
                    (SELECT setconfig FROM pg_db_role_setting WHERE setrole = r.oid AND setdatabase = 0) \
             FROM pg_roles r WHERE rolname IN ({roles}) ORDER BY 1"
        ),
        format!(
            "SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a \
             JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
             WHERE m.rolname IN ({roles}) ORDER BY 1, 2"
        ),
        format!(
            "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datconnlimit \
             FROM pg_database d WHERE datname = '{db}'"
        ),
        format!(
            "SELECT coalesce(pg_get_userbyid(a.grantee), 'PUBLIC'), a.privilege_type, a.is_grantable \
             FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = '{db}' ORDER BY 1, 2"
        ),
        format!(
            "SELECT coalesce(pg_get_userbyid(NULLIF(s.setrole, 0)), '-'), s.setconfig FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{db}' ORDER BY 1"
        ),
    ];
    queries
        .iter()
        .map(|q| run("postgres", q))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The fenced block of `text` tagged `sh {tag}`.
fn block(text: &str, tag: &str) -> String {
    let fence = format!("```sh {tag}");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() == fence {
            return lines
                .take_while(|l| *l != "```")
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    panic!("no ```sh {tag} block")
}

fn config(setup: &Setup, bucket: &Bucket, url: &str) -> std::path::PathBuf {
    setup.write_config(
        &bucket.yaml("primary", None),
        &format!(
            "  production: {{ database_url: \"{url}\", targets: [local, primary], file_prefix: prod }}\n"
        ),
    )
}

fn strata(config: &Path, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
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

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn the_runbooks_fresh_server_procedure_brings_back_roles_owners_and_grants() {
    let app = AppDb::create();
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let config = config(&setup, &bucket, &app.db.url());
    let out = strata(&config, &["backup", "production"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The server and its local disk are gone: only the bucket is left.
    std::fs::remove_dir_all(setup.backups()).unwrap();
    let fresh = Cluster::start(Options::default());

    let runbook =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md"))
            .unwrap();
    let procedure = block(&runbook, "fresh-server");
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin(), work.path().join("strata")).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{procedure}"))
        .current_dir(work.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                work.path().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("STRATA_CONFIG", &config)
        .env("NEW_ADMIN", ADMIN)
        .env("NEW_HOST", "127.0.0.1")
        .env("NEW_PORT", fresh.port.to_string())
        .env("DATABASE", &app.db.name)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        out.status.success(),
        "the runbook's procedure failed:\n{said}"
    );
    assert!(
        said.contains(&app.owner) && said.contains(&app.reader),
        "{said}"
    );
    assert!(said.contains("without a password"), "{said}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("restore.json")).unwrap()).unwrap();
    assert_eq!(report["rows"], 23_000, "{report}");
    assert!(
        report["seconds"].as_f64().unwrap() > 0.0,
        "the RTO is recorded"
    );

    // Owners, grants, policies, default privileges and data compare equal.
    let source = dump_with(&["-h", "127.0.0.1", "-U", "postgres"], &app.db.name);
    assert!(source.contains(&format!("OWNER TO {}", app.owner)));
    assert!(source.contains("CREATE POLICY tenant_rows"));
    assert_eq!(fresh.dump(&app.db.name), source);
    // So do the roles, memberships and the database's own settings and grants.
    let on_main = |db: &str, sql: &str| psql(db, sql);
    let on_fresh = |db: &str, sql: &str| fresh.psql(db, sql);
    assert_eq!(
        globals_of(&on_fresh, &app.db.name, &app.roles()),
        globals_of(&on_main, &app.db.name, &app.roles())
    );
    // The read-only login sees only its tenant's rows, through its membership.
    let mine = fresh.psql(
        &app.db.name,
        &format!("SET ROLE {}; SELECT count(*) FROM app.accounts", app.login),
    );
    assert_eq!(mine, "1000");
    // The old server's bootstrap superuser became the new one's.
    assert_eq!(
        fresh.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'"
        ),
        "0"
    );
}

#[tokio::test]
async fn other_environments_map_role_names_or_take_ownership() {
    let app = AppDb::create();
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let config = config(&setup, &bucket, &app.db.url());
    let out = strata(&config, &["backup", "production"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let staging = Cluster::start(Options::default());
    staging.psql("postgres", "CREATE ROLE stg_owner; CREATE ROLE stg_ro");
    let into = staging.url(ADMIN, "mapped", "");
    let owner_map = format!("{}=stg_owner", app.owner);
    let reader_map = format!("{}=stg_ro", app.reader);
    let out = strata(
        &config,
        &[
            "restore",
            "production",
            "--no-globals",
            "--role-map",
            &owner_map,
            "--role-map",
            &reader_map,
        ],
        &[("STRATA_RESTORE_INTO", into)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let owner = |db: &str| {
        staging.psql(
            db,
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'app' AND tablename = 'accounts'",
        )
    };
    assert_eq!(owner("mapped"), "stg_owner");
    assert_eq!(
        staging.psql(
            "mapped",
            "SELECT array_to_string(polroles::regrole[], ',') FROM pg_policy"
        ),
        "stg_ro"
    );
    assert_eq!(
        staging.psql(
            "mapped",
            "SELECT has_table_privilege('stg_ro', 'app.entries', 'SELECT')"
        ),
        "t"
    );
    assert_eq!(
        staging.psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mapped'"
        ),
        "stg_owner"
    );
    // No role of the source was created.
    assert_eq!(
        staging.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_roles WHERE rolname IN ({})",
                app.roles()
            )
        ),
        "0"
    );

    // --no-owner: the restoring role owns everything; grants to a role that
    // does not exist here stop the restore, and nothing is left of it.
    let out = strata(
        &config,
        &["restore", "production", "--no-globals", "--no-owner"],
        &[("STRATA_RESTORE_INTO", staging.url(ADMIN, "unowned", ""))],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&app.reader) && said.contains("does not exist"),
        "{said}"
    );
    assert_eq!(
        staging.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'unowned%'"
        ),
        "0",
        "a failed restore left a database behind"
    );
    let out = strata(
        &config,
        &[
            "restore",
            "production",
            "--no-globals",
            "--no-owner",
            "--role-map",
            &reader_map,
        ],
        &[("STRATA_RESTORE_INTO", staging.url(ADMIN, "unowned", ""))],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(owner("unowned"), ADMIN);
}

#[tokio::test]
async fn a_failed_restore_takes_back_the_roles_it_created() {
    let app = AppDb::create();
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let config = config(&setup, &bucket, &app.db.url());
    let out = strata(&config, &["backup", "production"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The local copy is damaged in the middle: the restore fails while loading.
    let object = crate::helpers::files(&setup.backups())
        .into_iter()
        .find(|f| f.ends_with(".sql.gz.enc") && !f.contains(".globals."))
        .unwrap();
    let path = setup.backups().join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let fresh = Cluster::start(Options::default());
    let before = fresh.psql(
        "postgres",
        "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles",
    );
    let out = strata(
        &config,
        &["restore", "production", "--from", "local"],
        &[("STRATA_RESTORE_INTO", fresh.url(ADMIN, &app.db.name, ""))],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("does not authenticate"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fresh.psql(
            "postgres",
            "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles"
        ),
        before,
        "the roles the failed restore created are still there"
    );
    assert_eq!(
        fresh.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"),
        "0"
    );
    // The intact copy in the bucket restores.
    let out = strata(
        &config,
        &["restore", "production", "--from", "primary"],
        &[("STRATA_RESTORE_INTO", fresh.url(ADMIN, &app.db.name, ""))],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn the_parallel_restore_gives_back_exactly_the_source() {
    let source = TestDb::create();
    // A table larger than one COPY batch (loaded on several connections), a
    // partitioned one, foreign keys between them, indexes of several kinds.
    source.exec(
        "CREATE TABLE big (id bigint PRIMARY KEY, k int NOT NULL, payload text);
         INSERT INTO big SELECT g, g % 997, repeat(md5(g::text), 3) FROM generate_series(1, 200000) g;
         CREATE INDEX big_k ON big (k) WHERE k > 10;
         CREATE UNIQUE INDEX big_payload ON big (md5(payload), id);
         CREATE TABLE parent (id int PRIMARY KEY, big_id bigint REFERENCES big(id));
         INSERT INTO parent SELECT g, g FROM generate_series(1, 5000) g;
         CREATE TABLE child (id int, parent_id int REFERENCES parent(id), at date NOT NULL, CHECK (id > 0)) PARTITION BY RANGE (at);
         CREATE TABLE child_a PARTITION OF child FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE child_b PARTITION OF child FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO child SELECT g, 1 + g % 5000, DATE '2024-03-01' + (g % 500) FROM generate_series(1, 30000) g;
         CREATE INDEX ON child (parent_id);
         ALTER TABLE child ADD PRIMARY KEY (id, at);
         CREATE TABLE self_ref (id int PRIMARY KEY, up int REFERENCES self_ref(id));
         INSERT INTO self_ref VALUES (1, NULL), (2, 1), (3, 2);
         CREATE SEQUENCE s START 7; SELECT setval('s', 700);",
    );
    let setup = Setup::new();
    let strata = setup
        .strata(
            "",
            &crate::helpers::job("app", &source.url(), "local", ", format: plain"),
            &[],
        )
        .await;
    let report =
        strata::commands::backup::backup(&strata, "app", chrono::Utc::now(), &Default::default())
            .await
            .unwrap();
    assert!(report.manifest.raw_bytes > 2 * strata::commands::restore::script::COPY_BATCH as u64);
    let dest = TestDb::reserve();
    let opts = strata::commands::restore::RestoreOptions {
        jobs: Some(3),
        ..Default::default()
    };
    let r = strata::commands::restore::restore(&strata, "app", &dest.url().parse().unwrap(), &opts)
        .await
        .unwrap();
    assert_eq!(r.jobs, 3);
    // Schema equal; every table's rows equal (row order inside the large
    // table may differ: its batches load side by side).
    let schema = |db: &str| dump_with(&["-h", "127.0.0.1", "-U", "postgres", "--schema-only"], db);
    assert_eq!(schema(&dest.name), schema(&source.name));
    for (table, key) in [
        ("big", "id"),
        ("parent", "id"),
        ("child", "id, at"),
        ("self_ref", "id"),
    ] {
        let digest =
            format!("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY {key})) FROM {table} t");
        assert_eq!(dest.exec(&digest), source.exec(&digest), "{table}");
    }
    assert_eq!(dest.exec("SELECT last_value FROM s"), "700");
    // The constraints are real: a violating row is refused.
    let bad = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &dest.name,
            "-c",
        ])
        .arg("INSERT INTO parent VALUES (99999, 424242424)")
        .output()
        .unwrap();
    assert!(!bad.status.success(), "the foreign key was not restored");
}

#[tokio::test]
async fn a_missing_tablespace_is_named_and_no_tablespaces_restores_anyway() {
    // A tablespace on the shared server, in a directory of this test's.
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("ts");
    std::fs::create_dir(&location).unwrap();
    let _ = Command::new("chown")
        .arg("postgres")
        .arg(&location)
        .status();
    let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
    let ts = unique("strata_ts_");
    psql(
        "postgres",
        &format!("CREATE TABLESPACE {ts} LOCATION '{}'", location.display()),
    );
    struct DropTs(String);
    impl Drop for DropTs {
        fn drop(&mut self) {
            let _ = Command::new("psql")
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
                .arg(format!("DROP TABLESPACE IF EXISTS {}", self.0))
                .output();
        }
    }
    let _ts = DropTs(ts.clone());
    let source = TestDb::create();
    source.exec(&format!(
        "CREATE TABLE fast (id int PRIMARY KEY USING INDEX TABLESPACE {ts}, v text) TABLESPACE {ts};
         INSERT INTO fast SELECT g, 'v' FROM generate_series(1, 100) g;"
    ));
    let setup = Setup::new();
    let config = setup.write_config("", &crate::helpers::job("app", &source.url(), "local", ""));
    let out = strata(&config, &["backup", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let fresh = Cluster::start(Options::default());
    // The same location is the shared server's: the new one cannot use it.
    let out = strata(
        &config,
        &["restore", "app"],
        &[("STRATA_RESTORE_INTO", fresh.url(ADMIN, "app", ""))],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!("tablespace {ts} is missing")) && said.contains("--no-tablespaces"),
        "{said}"
    );
    assert_eq!(
        fresh.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'app%'"
        ),
        "0"
    );
    let out = strata(
        &config,
        &["restore", "app", "--no-tablespaces"],
        &[("STRATA_RESTORE_INTO", fresh.url(ADMIN, "app", ""))],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fresh.psql("app", "SELECT count(*) FROM fast"), "100");
    assert_eq!(
        fresh.psql("app", "SELECT count(*) FROM pg_class WHERE reltablespace <> 0 AND relname IN ('fast', 'fast_pkey')"),
        "0"
    );
}

#[tokio::test]
async fn a_restore_test_on_another_server_leaves_nothing_behind() {
    let app = AppDb::create();
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let config = config(&setup, &bucket, &app.db.url());
    let out = strata(&config, &["backup", "production"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let staging = Cluster::start(Options::default());
    let roles = || {
        staging.psql(
            "postgres",
            "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles",
        )
    };
    let before = roles();
    let out = strata(
        &config,
        &[
            "verify",
            "production",
            "--restore-into",
            &staging.url(ADMIN, "postgres", ""),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("restore test: ok"), "{}", text(&out));
    assert_eq!(
        roles(),
        before,
        "the scratch restore's roles were left on the server"
    );
    assert_eq!(
        staging.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'strata_%'"
        ),
        "0"
    );
}

#[tokio::test]
async fn a_backup_role_without_superuser_takes_the_globals_and_passwords_need_one() {
    let app = AppDb::create();
    let setup = Setup::new();
    // The application's owner role backs its own database up: no superuser.
    let url = format!("postgres://{}@127.0.0.1:5432/{}", app.owner, app.db.name);
    let config = setup.write_config("", &crate::helpers::job("app", &url, "local", ""));
    let out = strata(&config, &["backup", "app", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let globals = &report["manifest"]["globals"];
    assert!(globals["roles"].as_u64().unwrap() >= 3, "{globals}");
    assert_eq!(globals["passwords"], false);
    // Password hashes need a superuser: the run fails before dumping, saying so.
    let config = setup.write_config(
        "",
        &crate::helpers::job("app", &url, "local", ", globals: { role_passwords: true }"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = strata(&config, &["backup", "app"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("globals.role_passwords needs a superuser"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn role_passwords_come_back_when_the_job_stores_them() {
    let app = AppDb::create();
    psql(
        "postgres",
        &format!("ALTER ROLE {} PASSWORD 'the-app-secret'", app.owner),
    );
    let setup = Setup::new();
    let config = setup.write_config(
        "",
        &crate::helpers::job(
            "app",
            &app.db.url(),
            "local",
            ", globals: { role_passwords: true }",
        ),
    );
    let out = strata(&config, &["backup", "app"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The hash is in the encrypted globals file, never in the clear.
    for f in crate::helpers::files(&setup.backups()) {
        let bytes = std::fs::read(setup.backups().join(&f)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("SCRAM-SHA-256$"),
            "{f} holds a password hash in the clear"
        );
    }
    let fresh = Cluster::start(Options::default());
    let out = strata(
        &config,
        &["restore", "app"],
        &[("STRATA_RESTORE_INTO", fresh.url(ADMIN, "app", ""))],
    );
    assert!(out.status.success(), "{}", text(&out));
    let note = text(&out)
        .lines()
        .find(|l| l.contains("without a password"))
        .unwrap_or_default()
        .to_owned();
    assert!(!note.contains(&app.owner), "{note}");
    let hash = format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
        app.owner
    );
    assert_eq!(fresh.psql("postgres", &hash), psql("postgres", &hash));
}
