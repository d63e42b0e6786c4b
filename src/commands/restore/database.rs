//! Database administration for restores: names of scratch databases, what the
//! destination server already has, putting a restored database in place, and
//! dropping what a failed restore created.

use std::collections::BTreeSet;

use postgres_protocol::escape::{escape_identifier as ident, escape_literal as lit};

use super::RestoreError;
use crate::pg::DbUrl;
use crate::pg::globals::Destination;

/// PostgreSQL's limit on identifiers, in bytes.
const NAME_MAX: usize = 63;

/// A unique database name derived from `base`: `{base}_{tag}_{8 hex}`, with
/// `base` cut on a character boundary so the whole fits PostgreSQL's 63 bytes.
pub fn derived_name(base: &str, tag: &str) -> String {
    let suffix = format!("_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let room = NAME_MAX.saturating_sub(suffix.len());
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

/// Whether `name` exists on the server `admin` is connected to.
///
/// # Errors
/// The query failed.
pub async fn exists(
    admin: &tokio_postgres::Client,
    url: &DbUrl,
    name: &str,
) -> Result<bool, RestoreError> {
    Ok(admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| url.query_error(&e))?
        .is_some())
}

/// Roles, tablespaces, the bootstrap superuser and the restoring role's rights.
///
/// # Errors
/// The query failed.
pub async fn destination(
    admin: &tokio_postgres::Client,
    url: &DbUrl,
) -> Result<Destination, RestoreError> {
    let row = admin
        .query_one(
            "SELECT (SELECT array_agg(rolname::text) FROM pg_roles), \
                    (SELECT array_agg(spcname::text) FROM pg_tablespace), \
                    (SELECT rolname::text FROM pg_roles WHERE oid = 10), \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    current_user::text, current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| url.query_error(&e))?;
    let set = |v: Option<Vec<String>>| v.unwrap_or_default().into_iter().collect::<BTreeSet<_>>();
    Ok(Destination {
        roles: set(row.get(0)),
        tablespaces: set(row.get(1)),
        bootstrap_superuser: row.get(2),
        superuser: row.get::<_, Option<bool>>(3).unwrap_or(false),
        user: row.get(4),
        server_version_num: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
    })
}

/// Relations in a database (anything there means it is not empty).
///
/// # Errors
/// Cannot connect or query.
pub async fn relation_count(url: &DbUrl) -> Result<i64, RestoreError> {
    let client = url.connect().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
            &[],
        )
        .await
        .map_err(|e| url.query_error(&e))?;
    Ok(row.get(0))
}

/// Puts database `scratch` in place of `name`: connections to `name` are
/// terminated, `name` is renamed aside, `scratch` takes its name, the old one is
/// dropped. `name` need not exist. On failure `scratch` is dropped and `name` is
/// as it was.
///
/// # Errors
/// A rename failed.
pub async fn swap_in(
    admin: &tokio_postgres::Client,
    admin_url: &DbUrl,
    name: &str,
    scratch: &str,
) -> Result<(), RestoreError> {
    let old = derived_name(name, "strata_old");
    let present = exists(admin, admin_url, name).await?;
    let aside = if present {
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid();\
             ALTER DATABASE {} RENAME TO {};",
            lit(name),
            ident(name),
            ident(&old),
        )
    } else {
        String::new()
    };
    let sql = format!(
        "{aside} ALTER DATABASE {} RENAME TO {};",
        ident(scratch),
        ident(name)
    );
    if let Err(e) = admin.batch_execute(&sql).await {
        // Put the original back if it was moved aside before the failure.
        if present {
            let _ = admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(&old),
                    ident(name)
                ))
                .await;
        }
        drop_database(admin, admin_url, scratch).await;
        return Err(admin_url.query_error(&e).into());
    }
    if present {
        drop_database(admin, admin_url, &old).await;
    }
    Ok(())
}

/// Drops a database, logging (not failing) when it cannot.
pub async fn drop_database(admin: &tokio_postgres::Client, url: &DbUrl, name: &str) {
    if let Err(e) = admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(name)
        ))
        .await
    {
        tracing::warn!(database = name, error = %url.query_error(&e), "could not drop database");
    }
}

/// Drops roles and tablespaces a failed restore created (best effort, logged).
pub async fn undo_globals(
    admin: &tokio_postgres::Client,
    url: &DbUrl,
    roles: &[String],
    tablespaces: &[String],
) {
    for t in tablespaces.iter().rev() {
        if let Err(e) = admin
            .batch_execute(&format!("DROP TABLESPACE IF EXISTS {}", ident(t)))
            .await
        {
            tracing::warn!(tablespace = %t, error = %url.query_error(&e), "could not drop a tablespace the failed restore created");
        }
    }
    for r in roles.iter().rev() {
        if let Err(e) = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(r)))
            .await
        {
            tracing::warn!(role = %r, error = %url.query_error(&e), "could not drop a role the failed restore created");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_fit_and_cut_on_character_boundaries() {
        let long = "données_".repeat(10);
        for base in [
            long.as_str(),
            "app",
            "",
            "ééééééééééééééééééééééééééééééééééééééééé",
        ] {
            let name = derived_name(base, "strata");
            assert!(name.len() <= NAME_MAX, "{name} is {} bytes", name.len());
            assert!(name.contains("_strata_"), "{name}");
            assert!(base.starts_with(name.split("_strata_").next().unwrap()));
        }
        assert_ne!(derived_name("app", "x"), derived_name("app", "x"));
    }
}
