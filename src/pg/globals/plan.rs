//! What a restore does with the globals: compare them with the destination
//! server, then create (or, when asked, update) only what it lacks, with names
//! mapped.

use super::*;

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

    // Long on purpose: one decision per role (create, keep, map, update), memberships only once every role exists.
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

    // Long on purpose: one decision per database property (owner, encoding, locale, tablespace, settings), each with its own refusal.
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
