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

mod plan;

pub use plan::{Destination, Options, Plan};

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
// Long on purpose: one catalog query per kind of global (roles, memberships, tablespaces, settings), in the order a restore applies them.
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

// Long on purpose: one query per database property a restore recreates.
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

#[cfg(test)]
mod tests;
