//! Restoring into an environment with other role names or no tablespaces:
//! `--role-map old=new` renames roles where pg_dump names them (owners,
//! grantees, policy roles, default privileges, session authorisation, user
//! mappings), `--no-owner` drops ownership statements, `--no-tablespaces`
//! drops tablespace choices. Role names inside expressions (a policy's `USING`
//! clause comparing `current_user` with a string) are data, and stay as they are.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::script::{Kind, Statement, Tok, Token, tokens};

/// How statements are changed on the way into the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Source role → destination role.
    pub roles: BTreeMap<String, String>,
    pub no_owner: bool,
    pub no_tablespaces: bool,
}

/// Keywords that stand for roles but are not role names.
const ROLE_KEYWORDS: [&str; 5] = [
    "public",
    "current_user",
    "session_user",
    "current_role",
    "group",
];

/// The role a name token stands for: unquoted words fold to lower case,
/// quoted identifiers lose their quotes.
fn role_name(sql: &str, t: &Token) -> Option<String> {
    match t.tok {
        Tok::Word => {
            let w = t.text(sql).to_ascii_lowercase();
            (!ROLE_KEYWORDS.contains(&w.as_str())).then_some(w)
        }
        Tok::Quoted => {
            let inner = t.text(sql);
            Some(inner[1..inner.len() - 1].replace("\"\"", "\""))
        }
        Tok::Str => {
            let inner = t.text(sql);
            Some(inner[1..inner.len() - 1].replace("''", "'"))
        }
        _ => None,
    }
}

impl Rewrite {
    /// Nothing to change.
    pub fn is_identity(&self) -> bool {
        self.roles.is_empty() && !self.no_owner && !self.no_tablespaces
    }

    /// The statement as it should run, or `None` to drop it.
    pub fn apply<'a>(&self, stmt: &'a Statement) -> Option<Cow<'a, str>> {
        if self.is_identity() {
            return Some(Cow::Borrowed(&stmt.sql));
        }
        let sql = stmt.sql.as_str();
        if let Kind::Set { name } = &stmt.kind {
            if self.no_tablespaces && name == "default_tablespace" {
                return Some(Cow::Borrowed("SET default_tablespace = '';"));
            }
            return Some(Cow::Borrowed(sql));
        }
        let t = tokens(sql);
        let word = |i: usize, kw: &str| t.get(i).is_some_and(|x| x.is(sql, kw));
        let session_auth =
            (word(0, "set") || word(0, "reset")) && word(1, "session") && word(2, "authorization");
        let owner_to = word(0, "alter")
            && t.windows(2)
                .any(|w| w[0].is(sql, "owner") && w[1].is(sql, "to"));
        if self.no_owner && (session_auth || owner_to) {
            return None;
        }
        let mut dropped = None;
        if self.no_owner {
            // Default privileges of the old owner become the restoring role's,
            // who now owns the objects: `FOR ROLE …` goes.
            dropped = for_role_clause(sql, &t);
        }
        if let Some((a, b)) = dropped {
            let shorter = format!("{}{}", &sql[..a], &sql[b..]);
            let stmt = Statement {
                kind: stmt.kind.clone(),
                sql: shorter,
            };
            return self.apply(&stmt).map(|c| Cow::Owned(c.into_owned()));
        }
        if self.roles.is_empty() {
            return Some(Cow::Borrowed(sql));
        }
        let spans = role_positions(sql, &t, owner_to, session_auth);
        let mut out = String::with_capacity(sql.len());
        let mut last = 0;
        for tok in spans {
            let Some(name) = role_name(sql, &tok) else {
                continue;
            };
            let Some(new) = self.roles.get(&name) else {
                continue;
            };
            out.push_str(&sql[last..tok.start]);
            if tok.tok == Tok::Str {
                out.push_str(&postgres_protocol::escape::escape_literal(new));
            } else {
                out.push_str(&postgres_protocol::escape::escape_identifier(new));
            }
            last = tok.end;
        }
        if last == 0 {
            return Some(Cow::Borrowed(sql));
        }
        out.push_str(&sql[last..]);
        Some(Cow::Owned(out))
    }
}

/// The byte range of `FOR ROLE a, b ` in `ALTER DEFAULT PRIVILEGES`.
fn for_role_clause(sql: &str, t: &[Token]) -> Option<(usize, usize)> {
    let word = |i: usize, kw: &str| t.get(i).is_some_and(|x| x.is(sql, kw));
    if !(word(0, "alter") && word(1, "default") && word(2, "privileges") && word(3, "for")) {
        return None;
    }
    let end = (5..t.len()).find(|&i| word(i, "in") || word(i, "grant") || word(i, "revoke"))?;
    Some((t[3].start, t[end].start))
}

/// The tokens of `sql` that name roles.
fn role_positions(sql: &str, t: &[Token], owner_to: bool, session_auth: bool) -> Vec<Token> {
    let word = |i: usize, kw: &str| t.get(i).is_some_and(|x| x.is(sql, kw));
    let mut out = Vec::new();
    if session_auth {
        out.extend(t.get(3).copied());
        return out;
    }
    if owner_to {
        if let Some(i) = t
            .windows(2)
            .position(|w| w[0].is(sql, "owner") && w[1].is(sql, "to"))
        {
            out.extend(t.get(i + 2).copied());
        }
        return out;
    }
    // CREATE USER MAPPING FOR role SERVER …
    if word(0, "create") && word(1, "user") && word(2, "mapping") && word(3, "for") {
        out.extend(t.get(4).copied());
        return out;
    }
    let mut i = 0;
    // ALTER DEFAULT PRIVILEGES FOR ROLE a, b [IN SCHEMA s] GRANT … TO …
    if word(0, "alter") && word(1, "default") && word(2, "privileges") {
        i = 3;
        if word(i, "for") && (word(i + 1, "role") || word(i + 1, "user")) {
            i += 2;
            i = names_until(sql, t, i, &["in", "grant", "revoke"], &mut out);
        }
        while i < t.len() && !(t[i].is(sql, "grant") || t[i].is(sql, "revoke")) {
            i += 1;
        }
    }
    if word(i, "grant") || word(i, "revoke") {
        let to = if word(i, "grant") { "to" } else { "from" };
        let mut depth = 0i32;
        let mut j = i + 1;
        while j < t.len() {
            match t[j].tok {
                Tok::Punct(b'(') => depth += 1,
                Tok::Punct(b')') => depth -= 1,
                _ if depth == 0 && t[j].is(sql, to) => break,
                _ => {}
            }
            j += 1;
        }
        let j = names_until(
            sql,
            t,
            j + 1,
            &["with", "granted", "cascade", "restrict"],
            &mut out,
        );
        if word(j, "granted") && word(j + 1, "by") {
            out.extend(t.get(j + 2).copied());
        }
        return out;
    }
    // CREATE POLICY p ON t [AS …] [FOR …] TO a, b [USING (…)] [WITH CHECK (…)]
    if word(0, "create") && word(1, "policy") {
        if let Some(to) = t.iter().position(|x| x.is(sql, "to")) {
            names_until(sql, t, to + 1, &["using", "with"], &mut out);
        }
    }
    out
}

/// Collects name tokens from `i` until one of `stop` (or the end); returns
/// the index of the stop token.
fn names_until(sql: &str, t: &[Token], mut i: usize, stop: &[&str], out: &mut Vec<Token>) -> usize {
    while let Some(x) = t.get(i) {
        if stop.iter().any(|s| x.is(sql, s)) || x.tok == Tok::Punct(b';') {
            break;
        }
        if x.is_name() {
            out.push(*x);
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::restore::script::classify;

    fn stmt(sql: &str) -> Statement {
        Statement {
            sql: sql.to_owned(),
            kind: classify(sql),
        }
    }

    fn mapped() -> Rewrite {
        Rewrite {
            roles: BTreeMap::from([
                ("app".to_owned(), "app_staging".to_owned()),
                ("Read Only".to_owned(), "ro".to_owned()),
            ]),
            ..Rewrite::default()
        }
    }

    fn run(r: &Rewrite, sql: &str) -> Option<String> {
        r.apply(&stmt(sql)).map(Cow::into_owned)
    }

    #[test]
    fn roles_are_renamed_where_pg_dump_names_them() {
        let r = mapped();
        let cases = [
            (
                "ALTER TABLE public.t OWNER TO app;",
                "ALTER TABLE public.t OWNER TO \"app_staging\";",
            ),
            (
                "GRANT SELECT,INSERT ON TABLE public.app TO \"Read Only\";",
                "GRANT SELECT,INSERT ON TABLE public.app TO \"ro\";",
            ),
            (
                "GRANT SELECT(app) ON TABLE public.t TO app WITH GRANT OPTION;",
                "GRANT SELECT(app) ON TABLE public.t TO \"app_staging\" WITH GRANT OPTION;",
            ),
            (
                "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
                "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
            ),
            (
                "REVOKE ALL ON FUNCTION public.f(app integer) FROM app;",
                "REVOKE ALL ON FUNCTION public.f(app integer) FROM \"app_staging\";",
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES  TO \"Read Only\";",
                "ALTER DEFAULT PRIVILEGES FOR ROLE \"app_staging\" IN SCHEMA public GRANT SELECT ON TABLES  TO \"ro\";",
            ),
            (
                "CREATE POLICY p ON public.t TO app, other USING ((owner = 'app'::text));",
                "CREATE POLICY p ON public.t TO \"app_staging\", other USING ((owner = 'app'::text));",
            ),
            (
                "SET SESSION AUTHORIZATION 'app';",
                "SET SESSION AUTHORIZATION 'app_staging';",
            ),
            (
                "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'x');",
                "CREATE USER MAPPING FOR \"app_staging\" SERVER s OPTIONS (user 'x');",
            ),
            (
                "CREATE TABLE public.app (app int);",
                "CREATE TABLE public.app (app int);",
            ),
            (
                "ALTER SEQUENCE public.s OWNED BY public.app.id;",
                "ALTER SEQUENCE public.s OWNED BY public.app.id;",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(run(&r, input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn no_owner_and_no_tablespaces_drop_what_they_name() {
        let r = Rewrite {
            no_owner: true,
            no_tablespaces: true,
            ..Rewrite::default()
        };
        assert_eq!(run(&r, "ALTER TABLE public.t OWNER TO app;"), None);
        assert_eq!(run(&r, "ALTER LARGE OBJECT 16397 OWNER TO app;"), None);
        assert_eq!(run(&r, "SET SESSION AUTHORIZATION 'app';"), None);
        assert_eq!(run(&r, "RESET SESSION AUTHORIZATION;"), None);
        assert_eq!(
            run(&r, "SET default_tablespace = fast_ssd;").as_deref(),
            Some("SET default_tablespace = '';")
        );
        assert_eq!(
            run(&r, "GRANT SELECT ON TABLE public.t TO app;").as_deref(),
            Some("GRANT SELECT ON TABLE public.t TO app;")
        );
        assert_eq!(
            run(
                &r,
                "ALTER DEFAULT PRIVILEGES FOR ROLE app, \"x y\" IN SCHEMA s GRANT SELECT ON TABLES  TO ro;"
            )
            .as_deref(),
            Some("ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES  TO ro;")
        );
        assert!(Rewrite::default().is_identity());
    }
}
