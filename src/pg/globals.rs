//! Cluster globals of a logical backup: the roles (attributes, memberships,
//! settings, optionally password hashes), the tablespaces the database uses, and
//! the database's own properties (owner, encoding and locale, settings, grants),
//! none of which `pg_dump` of one database carries.
//!
//! They are read with catalog queries a role without superuser can run (only
//! password hashes need one), stored beside the dump as
//! `{backup_id}.globals.sql[.gz|.zst][.enc]`, and turned into a plan for the
//! destination at restore time: missing roles are created (existing ones are
//! never changed unless asked), then the database is created with the source's
//! encoding, locale and owner, and its settings and grants follow the data.
//!
//! The stored file is a SQL script an operator can run by hand with psql (it
//! creates only missing roles and tablespaces); its first line carries the same
//! facts as JSON, which is what strata reads back.

use std::collections::{BTreeMap, BTreeSet};

use postgres_protocol::escape::{escape_identifier as ident, escape_literal as lit};
use serde::{Deserialize, Serialize};

use super::{DbUrl, SourceError};

/// First line of a globals file, followed by the JSON.
pub const HEADER: &str = "-- strata-globals-v1: ";

/// A role and its attributes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub login: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connection_limit: i32,
    pub valid_until: Option<String>,
    /// The password hash (SCRAM or MD5); only with `globals.role_passwords`.
    pub password: Option<String>,
    pub comment: Option<String>,
    /// `name=value` settings of `ALTER ROLE … SET`.
    pub settings: Vec<String>,
}

/// `GRANT role TO member`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Membership {
    pub role: String,
    pub member: String,
    pub admin: bool,
    /// PostgreSQL 16+ grant options.
    pub inherit: Option<bool>,
    pub set: Option<bool>,
}

/// A tablespace the database uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub name: String,
    pub owner: String,
    pub location: String,
    pub options: Vec<String>,
}

/// One privilege on the database (`grantee` `None` is PUBLIC).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub grantee: Option<String>,
    pub privilege: String,
    pub grantable: bool,
}

/// The database's own properties.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `c` (libc), `i` (ICU), `b` (builtin), PostgreSQL 15+.
    pub locale_provider: Option<String>,
    pub locale: Option<String>,
    pub icu_rules: Option<String>,
    pub connection_limit: i32,
    /// Its default tablespace when not `pg_default`.
    pub tablespace: Option<String>,
    /// `ALTER DATABASE … SET` settings.
    pub settings: Vec<String>,
    /// `ALTER ROLE r IN DATABASE … SET`: role → settings.
    pub role_settings: BTreeMap<String, Vec<String>>,
    /// `None`: the default privileges.
    pub grants: Option<Vec<Grant>>,
    pub comment: Option<String>,
}

/// Everything beside the dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Globals {
    pub server_version_num: u32,
    /// The role created by initdb (oid 10): mapped to the destination's own.
    pub bootstrap_superuser: String,
    pub roles: Vec<Role>,
    pub memberships: Vec<Membership>,
    pub tablespaces: Vec<Tablespace>,
    pub database: Database,
    pub passwords_included: bool,
}

fn query_error(url: &DbUrl, what: &str, e: &tokio_postgres::Error) -> SourceError {
    SourceError::Query {
        url: url.to_string(),
        message: format!("reading {what}: {}", super::pg_message(e)),
    }
}

/// Reads the globals of the database `client` is connected to.
///
/// # Errors
/// A catalog query failed; with `passwords`, also when the role may not read
/// `pg_authid` (only superusers may).
pub async fn capture(
    url: &DbUrl,
    client: &tokio_postgres::Client,
    server_version_num: u32,
    passwords: bool,
) -> Result<Globals, SourceError> {
    let bootstrap: String = client
        .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
        .await
        .map_err(|e| query_error(url, "the bootstrap superuser", &e))?
        .get(0);
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                    r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                    r.rolvaliduntil::text, shobj_description(r.oid, 'pg_authid'), \
                    coalesce(s.setconfig, '{}')::text[] \
             FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 \
             WHERE r.rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(url, "roles", &e))?;
    let mut roles: Vec<Role> = rows
        .iter()
        .map(|r| Role {
            name: r.get(0),
            superuser: r.get(1),
            inherit: r.get(2),
            createrole: r.get(3),
            createdb: r.get(4),
            login: r.get(5),
            replication: r.get(6),
            bypassrls: r.get(7),
            connection_limit: r.get(8),
            valid_until: r.get(9),
            password: None,
            comment: r.get(10),
            settings: r.get(11),
        })
        .collect();
    if passwords {
        let hashes = client
            .query(
                "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| SourceError::Query {
                url: url.to_string(),
                message: format!(
                    "globals.role_passwords needs a superuser backup role (pg_authid cannot be read): {}",
                    super::pg_message(&e)
                ),
            })?;
        let hashes: BTreeMap<String, String> =
            hashes.iter().map(|r| (r.get(0), r.get(1))).collect();
        for role in &mut roles {
            role.password = hashes.get(&role.name).cloned();
        }
    }
    let grant_options = if server_version_num >= 160_000 {
        "a.inherit_option, a.set_option"
    } else {
        "NULL::bool, NULL::bool"
    };
    let memberships = client
        .query(
            &format!(
                "SELECT r.rolname::text, m.rolname::text, a.admin_option, {grant_options} \
                 FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid \
                 JOIN pg_roles m ON m.oid = a.member \
                 WHERE m.rolname !~ '^pg_' ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(|e| query_error(url, "role memberships", &e))?
        .iter()
        .map(|r| Membership {
            role: r.get(0),
            member: r.get(1),
            admin: r.get(2),
            inherit: r.get(3),
            set: r.get(4),
        })
        .collect();
    let tablespaces = client
        .query(
            "SELECT t.spcname::text, pg_get_userbyid(t.spcowner)::text, pg_tablespace_location(t.oid), \
                    coalesce(t.spcoptions, '{}')::text[] \
             FROM pg_tablespace t \
             WHERE t.spcname NOT IN ('pg_default', 'pg_global') AND t.oid IN ( \
                 SELECT dattablespace FROM pg_database WHERE datname = current_database() \
                 UNION SELECT reltablespace FROM pg_class WHERE reltablespace <> 0) \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(url, "tablespaces", &e))?
        .iter()
        .map(|r| Tablespace {
            name: r.get(0),
            owner: r.get(1),
            location: r.get(2),
            options: r.get(3),
        })
        .collect();
    let database = database(url, client).await?;
    Ok(Globals {
        server_version_num,
        bootstrap_superuser: bootstrap,
        roles,
        memberships,
        tablespaces,
        database,
        passwords_included: passwords,
    })
}

async fn database(url: &DbUrl, client: &tokio_postgres::Client) -> Result<Database, SourceError> {
    // to_jsonb reads the columns each version has (datlocprovider 15+,
    // daticulocale 15-16, datlocale 17+, daticurules 16+).
    let row = client
        .query_one(
            "SELECT to_jsonb(d), pg_get_userbyid(d.datdba)::text, pg_encoding_to_char(d.encoding)::text, \
                    t.spcname::text, shobj_description(d.oid, 'pg_database'), d.datacl IS NULL \
             FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| query_error(url, "the database's properties", &e))?;
    let json: serde_json::Value = row.get(0);
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let tablespace: String = row.get(3);
    let default_acl: bool = row.get(5);
    let settings = client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END, \
                    s.setconfig::text[] \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| query_error(url, "the database's settings", &e))?;
    let mut db_settings = Vec::new();
    let mut role_settings = BTreeMap::new();
    for r in &settings {
        let role: Option<String> = r.get(0);
        let config: Vec<String> = r.get(1);
        match role {
            None => db_settings = config,
            Some(role) => {
                role_settings.insert(role, config);
            }
        }
    }
    let grants = if default_acl {
        None
    } else {
        Some(
            client
                .query(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                            a.privilege_type, a.is_grantable \
                     FROM pg_database d, aclexplode(d.datacl) a \
                     WHERE d.datname = current_database() ORDER BY 1, 2",
                    &[],
                )
                .await
                .map_err(|e| query_error(url, "the database's grants", &e))?
                .iter()
                .map(|r| Grant {
                    grantee: r.get(0),
                    privilege: r.get(1),
                    grantable: r.get(2),
                })
                .collect(),
        )
    };
    Ok(Database {
        name: text("datname").unwrap_or_default(),
        owner: row.get(1),
        encoding: row.get(2),
        collate: text("datcollate").unwrap_or_default(),
        ctype: text("datctype").unwrap_or_default(),
        locale_provider: text("datlocprovider"),
        locale: text("datlocale").or_else(|| text("daticulocale")),
        icu_rules: text("daticurules"),
        connection_limit: json
            .get("datconnlimit")
            .and_then(serde_json::Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(-1),
        tablespace: (tablespace != "pg_default").then_some(tablespace),
        settings: db_settings,
        role_settings,
        grants,
        comment: row.get(4),
    })
}

/// Variables whose values are lists pg_dump quotes element by element.
const LIST_VARIABLES: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// PostgreSQL's `SplitGUCList`: comma-separated, optionally double-quoted.
fn split_guc_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut item = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.next_if_eq(&'"').is_some() {
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                item.push(c);
            }
        }
        out.push(item);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&',').is_none() {
            break;
        }
    }
    out
}

/// `SET name TO value` for one `name=value` setting, quoted as pg_dump does.
pub fn set_clause(setting: &str) -> Option<String> {
    let (name, value) = setting.split_once('=')?;
    let value = if LIST_VARIABLES.contains(&name.to_ascii_lowercase().as_str()) {
        split_guc_list(value)
            .iter()
            .map(|v| lit(v))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        lit(value)
    };
    Some(format!("SET {} TO {value}", ident(name)))
}

impl Role {
    /// The `WITH …` attribute list; `privileged` false leaves out what only a
    /// superuser may give.
    fn attributes(&self, privileged: bool) -> String {
        let flag = |on: bool, name: &str| format!("{}{name}", if on { "" } else { "NO" });
        let mut a = vec![
            flag(self.inherit, "INHERIT"),
            flag(self.createrole, "CREATEROLE"),
            flag(self.createdb, "CREATEDB"),
            flag(self.login, "LOGIN"),
        ];
        if privileged {
            a.insert(0, flag(self.superuser, "SUPERUSER"));
            a.push(flag(self.replication, "REPLICATION"));
            a.push(flag(self.bypassrls, "BYPASSRLS"));
        }
        a.push(format!("CONNECTION LIMIT {}", self.connection_limit));
        if let Some(v) = &self.valid_until {
            a.push(format!("VALID UNTIL {}", lit(v)));
        }
        if let Some(p) = &self.password {
            a.push(format!("PASSWORD {}", lit(p)));
        }
        a.join(" ")
    }

    fn privileged(&self) -> bool {
        self.superuser || self.replication || self.bypassrls
    }
}

/// What the destination server already has.
#[derive(Debug, Clone, Default)]
pub struct Destination {
    pub roles: BTreeSet<String>,
    pub tablespaces: BTreeSet<String>,
    pub bootstrap_superuser: String,
    /// The restoring role is a superuser.
    pub superuser: bool,
    /// The restoring role.
    pub user: String,
    pub server_version_num: u32,
}

/// How the backup's globals meet the destination.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Source role → destination role (`--role-map`).
    pub role_map: BTreeMap<String, String>,
    pub no_owner: bool,
    pub no_tablespaces: bool,
    /// Leave roles and tablespaces alone (`--no-globals`).
    pub no_globals: bool,
    /// Also bring existing roles in line with the backup (`--update-roles`).
    pub update_roles: bool,
}

/// The statements a restore runs, in order, and what it decided.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Source role → destination role for the dump's statements.
    pub role_map: BTreeMap<String, String>,
    /// Roles, memberships (each statement on its own).
    pub before: Vec<String>,
    /// `CREATE TABLESPACE` (each outside a transaction).
    pub tablespaces: Vec<(String, String)>,
    /// Roles this restore creates (dropped again if it fails).
    pub created_roles: Vec<String>,
    /// Options of `CREATE DATABASE` after the name.
    pub create_database: String,
    /// Run on the new database once its data checked out (`{db}` is its name).
    pub after: Vec<String>,
    pub warnings: Vec<String>,
}

impl Globals {
    /// The destination name of a source role.
    fn target_role(&self, opts: &Options, dest: &Destination, name: &str) -> String {
        if let Some(m) = opts.role_map.get(name) {
            return m.clone();
        }
        if name == self.bootstrap_superuser && !dest.bootstrap_superuser.is_empty() {
            return dest.bootstrap_superuser.clone();
        }
        name.to_owned()
    }

    /// Decides what a restore into `dest` does with these globals.
    pub fn plan(&self, dest: &Destination, opts: &Options) -> Plan {
        let mut plan = Plan::default();
        let map = |n: &str| self.target_role(opts, dest, n);
        for role in &self.roles {
            let target = map(&role.name);
            if target != role.name {
                plan.role_map.insert(role.name.clone(), target);
            }
        }
        for (from, to) in &opts.role_map {
            plan.role_map.insert(from.clone(), to.clone());
        }
        let mut exists: BTreeSet<String> = dest.roles.clone();
        if !opts.no_globals {
            self.plan_roles(dest, opts, &map, &mut exists, &mut plan);
            self.plan_tablespaces(dest, opts, &map, &mut plan);
        }
        self.plan_database(dest, opts, &map, &exists, &mut plan);
        plan
    }

    fn plan_roles(
        &self,
        dest: &Destination,
        opts: &Options,
        map: &dyn Fn(&str) -> String,
        exists: &mut BTreeSet<String>,
        plan: &mut Plan,
    ) {
        let mut created = BTreeSet::new();
        let mut without_password = Vec::new();
        for role in &self.roles {
            let name = map(&role.name);
            let privileged = dest.superuser;
            if role.privileged() && !privileged {
                plan.warnings.push(format!(
                    "role {name}: SUPERUSER/REPLICATION/BYPASSRLS left out (the restoring role is not a superuser)"
                ));
            }
            if exists.contains(&name) {
                if opts.update_roles && name != dest.bootstrap_superuser {
                    plan.before.push(format!(
                        "ALTER ROLE {} WITH {}",
                        ident(&name),
                        role.attributes(privileged)
                    ));
                    for s in role.settings.iter().filter_map(|s| set_clause(s)) {
                        plan.before.push(format!("ALTER ROLE {} {s}", ident(&name)));
                    }
                }
                continue;
            }
            plan.before.push(format!(
                "CREATE ROLE {} WITH {}",
                ident(&name),
                role.attributes(privileged)
            ));
            if let Some(c) = &role.comment {
                plan.before
                    .push(format!("COMMENT ON ROLE {} IS {}", ident(&name), lit(c)));
            }
            for s in role.settings.iter().filter_map(|s| set_clause(s)) {
                plan.before.push(format!("ALTER ROLE {} {s}", ident(&name)));
            }
            if role.login && role.password.is_none() {
                without_password.push(name.clone());
            }
            created.insert(name.clone());
            plan.created_roles.push(name.clone());
            exists.insert(name);
        }
        if !without_password.is_empty() {
            plan.warnings.push(format!(
                "login role(s) created without a password (set one with ALTER ROLE … PASSWORD): {}",
                without_password.join(", ")
            ));
        }
        let v16 = dest.server_version_num >= 160_000;
        for m in &self.memberships {
            let (role, member) = (map(&m.role), map(&m.member));
            let granted_role_exists = exists.contains(&role) || m.role.starts_with("pg_");
            if !created.contains(&member) && !opts.update_roles {
                if !dest.roles.is_empty() && granted_role_exists && created.contains(&role) {
                    plan.warnings.push(format!(
                        "existing role {member} was not made a member of {role} (--update-roles does)"
                    ));
                }
                continue;
            }
            if !granted_role_exists {
                plan.warnings.push(format!(
                    "membership of {member} in {role} skipped: no role {role}"
                ));
                continue;
            }
            let options = if v16 {
                format!(
                    " WITH ADMIN {}, INHERIT {}, SET {}",
                    m.admin,
                    m.inherit.unwrap_or(true),
                    m.set.unwrap_or(true)
                )
            } else if m.admin {
                " WITH ADMIN OPTION".to_owned()
            } else {
                String::new()
            };
            plan.before.push(format!(
                "GRANT {} TO {}{options}",
                ident(&role),
                ident(&member)
            ));
        }
    }

    fn plan_tablespaces(
        &self,
        dest: &Destination,
        opts: &Options,
        map: &dyn Fn(&str) -> String,
        plan: &mut Plan,
    ) {
        if opts.no_tablespaces {
            return;
        }
        for t in &self.tablespaces {
            if dest.tablespaces.contains(&t.name) {
                continue;
            }
            let owner = if opts.no_owner {
                String::new()
            } else {
                format!(" OWNER {}", ident(&map(&t.owner)))
            };
            let with = if t.options.is_empty() {
                String::new()
            } else {
                format!(" WITH ({})", t.options.join(", "))
            };
            plan.tablespaces.push((
                t.name.clone(),
                format!(
                    "CREATE TABLESPACE {}{owner} LOCATION {}{with}",
                    ident(&t.name),
                    lit(&t.location)
                ),
            ));
        }
    }

    fn plan_database(
        &self,
        dest: &Destination,
        opts: &Options,
        map: &dyn Fn(&str) -> String,
        exists: &BTreeSet<String>,
        plan: &mut Plan,
    ) {
        let d = &self.database;
        let mut create = format!(
            "TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            lit(&d.encoding),
            lit(&d.collate),
            lit(&d.ctype)
        );
        let v15 = dest.server_version_num >= 150_000;
        match (d.locale_provider.as_deref(), &d.locale) {
            (Some("i"), Some(l)) if v15 => {
                create.push_str(&format!(" LOCALE_PROVIDER icu ICU_LOCALE {}", lit(l)));
                if let Some(r) = d.icu_rules.as_ref().filter(|_| dest.server_version_num >= 160_000) {
                    create.push_str(&format!(" ICU_RULES {}", lit(r)));
                }
            }
            (Some("b"), Some(l)) if dest.server_version_num >= 170_000 => {
                create.push_str(&format!(" LOCALE_PROVIDER builtin BUILTIN_LOCALE {}", lit(l)));
            }
            (Some("i" | "b"), _) => plan.warnings.push(format!(
                "the source database used the {} locale provider, which this server lacks; created with libc",
                if d.locale_provider.as_deref() == Some("i") { "ICU" } else { "builtin" }
            )),
            _ => {}
        }
        let owner = map(&d.owner);
        let owner_ok = !opts.no_owner && exists.contains(&owner);
        if owner_ok {
            create.push_str(&format!(" OWNER {}", ident(&owner)));
        } else if !opts.no_owner {
            plan.warnings.push(format!(
                "the database's owner {owner} does not exist here; owned by {} instead",
                dest.user
            ));
        }
        if let Some(ts) = d.tablespace.as_ref().filter(|_| !opts.no_tablespaces) {
            create.push_str(&format!(" TABLESPACE {}", ident(ts)));
        }
        plan.create_database = create;
        let db = "{db}";
        for s in d.settings.iter().filter_map(|s| set_clause(s)) {
            plan.after.push(format!("ALTER DATABASE {db} {s}"));
        }
        for (role, settings) in &d.role_settings {
            let role = map(role);
            if !exists.contains(&role) {
                plan.warnings.push(format!(
                    "settings of role {role} in the database skipped: no role {role}"
                ));
                continue;
            }
            for s in settings.iter().filter_map(|s| set_clause(s)) {
                plan.after
                    .push(format!("ALTER ROLE {} IN DATABASE {db} {s}", ident(&role)));
            }
        }
        if d.connection_limit >= 0 {
            plan.after.push(format!(
                "ALTER DATABASE {db} CONNECTION LIMIT {}",
                d.connection_limit
            ));
        }
        if let Some(grants) = &d.grants {
            plan.after
                .push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"));
            for g in grants {
                let grantee = match &g.grantee {
                    None => "PUBLIC".to_owned(),
                    Some(r) => {
                        let r = map(r);
                        if !exists.contains(&r) {
                            plan.warnings.push(format!(
                                "{} on the database for {r} skipped: no role {r}",
                                g.privilege
                            ));
                            continue;
                        }
                        ident(&r)
                    }
                };
                plan.after.push(format!(
                    "GRANT {} ON DATABASE {db} TO {grantee}{}",
                    g.privilege,
                    if g.grantable {
                        " WITH GRANT OPTION"
                    } else {
                        ""
                    }
                ));
            }
        }
        if let Some(c) = &d.comment {
            plan.after
                .push(format!("COMMENT ON DATABASE {db} IS {}", lit(c)));
        }
    }

    /// The file stored beside the dump: the JSON line, then SQL for psql.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{HEADER}{}\n",
            serde_json::to_string(self).expect("globals serialise")
        );
        out.push_str(&format!(
            "--\n-- Roles, memberships and tablespaces of the cluster database {} came from, and the\n\
             -- database's own settings. `psql -v strata_database=NAME -f FILE` creates the roles and\n\
             -- tablespaces that are missing (existing roles are not changed) and, with the variable set,\n\
             -- applies the settings to database NAME after its dump was restored.\n--\n\n",
            self.database.name
        ));
        out.push_str("CREATE TEMP TABLE strata_created (name text);\n");
        for r in &self.roles {
            let name = lit(&r.name);
            out.push_str(&format!(
                "DO $strata$ BEGIN\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN\n    CREATE ROLE {} WITH {};\n",
                ident(&r.name),
                r.attributes(true)
            ));
            for s in r.settings.iter().filter_map(|s| set_clause(s)) {
                out.push_str(&format!("    ALTER ROLE {} {s};\n", ident(&r.name)));
            }
            out.push_str(&format!(
                "    INSERT INTO strata_created VALUES ({name});\n  END IF;\nEND $strata$;\n"
            ));
        }
        for m in &self.memberships {
            out.push_str(&format!(
                "DO $strata$ BEGIN\n  IF EXISTS (SELECT FROM strata_created WHERE name = {}) THEN\n    GRANT {} TO {}{};\n  END IF;\nEND $strata$;\n",
                lit(&m.member),
                ident(&m.role),
                ident(&m.member),
                if m.admin { " WITH ADMIN OPTION" } else { "" }
            ));
        }
        for t in &self.tablespaces {
            out.push_str(&format!(
                "-- tablespace {} was at {} (CREATE TABLESPACE cannot run in a DO block):\n-- CREATE TABLESPACE {} OWNER {} LOCATION {};\n",
                t.name,
                t.location,
                ident(&t.name),
                ident(&t.owner),
                lit(&t.location)
            ));
        }
        // Every role exists where this script is run to the end.
        let dest = Destination {
            roles: self.roles.iter().map(|r| r.name.clone()).collect(),
            bootstrap_superuser: self.bootstrap_superuser.clone(),
            superuser: true,
            server_version_num: self.server_version_num,
            ..Destination::default()
        };
        let plan = self.plan(
            &dest,
            &Options {
                no_globals: true,
                ..Options::default()
            },
        );
        out.push_str("\\if :{?strata_database}\n");
        if !self.database.owner.is_empty() {
            out.push_str(&format!(
                "ALTER DATABASE :\"strata_database\" OWNER TO {};\n",
                ident(&self.database.owner)
            ));
        }
        for s in &plan.after {
            out.push_str(&s.replace("{db}", ":\"strata_database\""));
            out.push_str(";\n");
        }
        out.push_str("\\endif\n");
        out
    }

    /// Reads a stored globals file back.
    ///
    /// # Errors
    /// The first line is not a strata globals header with valid JSON.
    pub fn parse(text: &str) -> Result<Self, String> {
        let first = text.lines().next().unwrap_or_default();
        let json = first
            .strip_prefix(HEADER)
            .ok_or("not a strata globals file (no header line)")?;
        serde_json::from_str(json).map_err(|e| format!("globals header: {e}"))
    }
}

#[cfg(test)]
mod tests {
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
}
