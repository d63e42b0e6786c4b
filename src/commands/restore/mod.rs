//! Restore: the backup flow reversed, onto any server.
//!
//! 1. The backup is found (`latest` or an id, on one target or the newest of
//!    all) and, when archived, thawed first.
//! 2. Its cluster globals (roles, memberships, tablespaces, database settings)
//!    are read and checked; roles and tablespaces the destination lacks are
//!    created (existing roles are left alone unless `--update-roles`).
//! 3. A scratch database is created with the source's encoding, locale and
//!    owner, and the dump is loaded into it on several connections
//!    ([`load`]); custom dumps pass through `pg_restore -f -` on the way.
//!    Every byte is checked while streaming (hash, size, every chunk
//!    authenticated), and every table's row count is compared with the
//!    manifest afterwards.
//! 4. Only then are the database's settings and grants applied and the scratch
//!    database renamed into place (an existing one is swapped out with
//!    `--replace`). Any failure drops the scratch database and the roles and
//!    tablespaces this restore created: the destination is as it was.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use postgres_protocol::escape::escape_identifier as ident;
use tokio::io::BufReader;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::app::Strata;
use crate::app::UnknownJob;
use crate::catalog::{self, Entry};
use crate::domain::{DatabaseInfo, DumpFormat};
use crate::pg::globals::{self, Globals};
use crate::pg::{self, DbUrl, SourceError};
use crate::pipeline::progress::Progress;
use crate::pipeline::restore_stream::{self, Expected, VerifyError};
use crate::storage::{StorageError, Target};

pub mod database;
pub mod datadir;
mod feed;
pub mod load;
pub mod recoverable;
pub mod recovery_test;
pub mod rewrite;
pub mod script;
pub mod start;
pub mod thaw;
pub mod untar;
pub mod verify;

use feed::restore_into;

pub use database::{drop_database, swap_in};
pub use thaw::{ThawOptions, ensure_readable};
pub use verify::{
    RestoreTest, VerifyReport, drop_scratch, newest_readable, read_back_new, restore_test,
    scratch_name, verify, verify_with,
};

const COPY_BUF: usize = 1 << 20;

/// Why a restore or verification failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    UnknownJob(#[from] UnknownJob),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("backup verification failed: {0}")]
    Verify(#[from] VerifyError),
    #[error("no backup '{which}' of job '{job}' on {searched}{refused}")]
    NotFound {
        job: String,
        which: String,
        searched: String,
        /// `; refused: …` when manifests were refused on the way, else empty.
        refused: String,
    },
    #[error("target '{0}' is not one of this job's targets")]
    UnknownTarget(String),
    #[error(
        "{0} is a physical base backup, not a dump: restore it into a data directory (strata restore JOB --into-datadir DIR --to …)"
    )]
    BaseBackup(String),
    #[error("{0}")]
    Physical(String),
    #[error(
        "database {0} is not empty ({1} relations); restore into a new or empty database, or pass --replace"
    )]
    NotEmpty(String, i64),
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
    #[error("row counts differ from the manifest: {0}")]
    RowCounts(String),
    #[error("decompressed size {actual} differs from the manifest's raw_bytes {expected}")]
    RawSize { expected: u64, actual: u64 },
    #[error(
        "{key} on target '{target}' is in {class}: {state}; it should be readable by about {ready_by} (UTC); run the same command again then, or add --wait"
    )]
    Thawing {
        target: String,
        key: String,
        class: String,
        state: String,
        ready_by: DateTime<Utc>,
    },
    #[error("the backup's globals ({key}) cannot be used: {message}")]
    Globals { key: String, message: String },
    #[error("creating role(s) on the destination failed at `{statement}`: {message}")]
    Roles { statement: String, message: String },
    #[error(
        "tablespace {name} is missing on the destination and could not be created: {message}; create it (an empty directory owned by the server's user), or restore with --no-tablespaces"
    )]
    Tablespace { name: String, message: String },
    #[error("creating the database failed: {0}")]
    CreateDatabase(String),
    #[error("backup manifest {key} on target '{target}' is refused: {why}; it is never restored")]
    Refused {
        target: String,
        key: String,
        why: String,
    },
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error("{0}")]
    Internal(String),
}

impl RestoreError {
    /// "Not yet": an archived object is thawing (exit status 75).
    pub fn is_thawing(&self) -> bool {
        matches!(self, Self::Thawing { .. })
    }
}

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Backup id, or `latest`.
    pub backup: String,
    /// Read from this target (default: the newest copy on any of the job's).
    pub from: Option<String>,
    /// Replace a non-empty destination database.
    pub replace: bool,
    /// Connections to load with (default: `restore.jobs`).
    pub jobs: Option<usize>,
    pub thaw: ThawOptions,
    /// Roles, owners, tablespaces: `--role-map`, `--no-owner`, ….
    pub globals: globals::Options,
    pub progress: Option<Arc<Progress>>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            backup: "latest".into(),
            from: None,
            replace: false,
            jobs: None,
            thaw: ThawOptions::default(),
            globals: globals::Options::default(),
            progress: None,
        }
    }
}

/// Result of a finished restore.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub target: String,
    pub database: String,
    pub tables: usize,
    pub rows: u64,
    pub seconds: f64,
    /// Connections the data was loaded with.
    pub jobs: usize,
    /// Roles this restore created on the destination.
    pub roles_created: Vec<String>,
    /// Tablespaces this restore created on the destination.
    pub tablespaces_created: Vec<String>,
    /// What the operator should know (roles without passwords, skipped grants).
    pub warnings: Vec<String>,
    /// Where the loading time went.
    pub timings: load::Timings,
}

/// Finds `which` (`latest` or an id) of `job`, on `from` or the first of the job's
/// targets holding the newest match. Manifests refused on the way (forged,
/// out of bounds) are never chosen; they are returned as notes, and asking
/// for one by id is an error naming why.
///
/// # Errors
/// Unknown job or target, listing failures on every target, no such backup,
/// or the one asked for is refused.
pub async fn find(
    strata: &Strata,
    job: &str,
    which: &str,
    from: Option<&str>,
) -> Result<(Arc<dyn Target>, Entry, Vec<String>), RestoreError> {
    let job = strata.job(job)?;
    let names: Vec<String> = match from {
        Some(t) if job.targets.iter().any(|n| n == t) => vec![t.to_owned()],
        Some(t) => return Err(RestoreError::UnknownTarget(t.to_owned())),
        None => job.targets.clone(),
    };
    let mut best: Option<(Arc<dyn Target>, Entry)> = None;
    let mut last_err = None;
    let mut notes = Vec::new();
    let asked = format!("/{which}{}", crate::domain::manifest::MANIFEST_SUFFIX);
    for name in &names {
        let target = strata.target(name);
        match catalog::list_all(strata, name, &job.name).await {
            Ok(listing) => {
                for r in &listing.refused {
                    if r.manifest_key.ends_with(&asked) {
                        return Err(RestoreError::Refused {
                            target: name.clone(),
                            key: r.manifest_key.clone(),
                            why: r.error.to_string(),
                        });
                    }
                    notes.push(format!(
                        "manifest {} on {name} was refused: {}",
                        r.manifest_key, r.error
                    ));
                }
                if let Some(e) = catalog::select(&listing.entries, which) {
                    if best
                        .as_ref()
                        .is_none_or(|(_, b)| e.started_at() > b.started_at())
                    {
                        best = Some((target, e.clone()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target_name = %name, error = %e, "cannot list target");
                last_err = Some(e);
            }
        }
    }
    match (best, last_err) {
        (Some((t, e)), _) => Ok((t, e, notes)),
        (None, Some(e)) if names.len() == 1 => Err(e.into()),
        (None, _) => Err(RestoreError::NotFound {
            job: job.name.clone(),
            which: which.to_owned(),
            searched: names.join(", "),
            refused: if notes.is_empty() {
                String::new()
            } else {
                format!("; {}", notes.join("; "))
            },
        }),
    }
}

/// Reads and checks the globals stored beside a backup copy.
///
/// # Errors
/// The object is missing, thawing, fails its checks or does not parse.
pub async fn read_globals(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    manifest_key: &str,
    thaw: &ThawOptions,
) -> Result<Globals, RestoreError> {
    let (Some(record), Some(key)) = (
        entry.manifest.globals.as_ref(),
        entry.manifest.globals_key(manifest_key),
    ) else {
        return Err(RestoreError::Internal("the backup has no globals".into()));
    };
    ensure_readable(target, &key, thaw).await?;
    let stored = crate::storage::read_all(target, &key).await?;
    let keys = strata
        .config()
        .encryption
        .as_ref()
        .map(|e| e.keyring.clone())
        .filter(|_| entry.manifest.encryption.is_some());
    if entry.manifest.encryption.is_some() && keys.is_none() {
        return Err(VerifyError::NoKeys.into());
    }
    let plain = crate::pipeline::small::open(
        &stored,
        record.stored_bytes,
        &record.sha256,
        record.raw_bytes,
        entry.manifest.compression,
        keys.as_ref(),
    )?;
    let fail = |message: String| RestoreError::Globals {
        key: key.clone(),
        message,
    };
    let text = String::from_utf8(plain).map_err(|_| fail("not UTF-8".into()))?;
    Globals::parse(&text).map_err(fail)
}

/// Restores a backup of `job` into `into` (see the module's steps).
///
/// # Errors
/// Anything that stops the restore; the destination is then as it was.
// Long on purpose: the steps of one restore in order (find, thaw, globals, load into a scratch database, check, swap), each failure undoing what is open at that point.
#[tracing::instrument(skip_all, fields(job, backup = %opts.backup, into = %into))]
pub async fn restore(
    strata: &Strata,
    job: &str,
    into: &DbUrl,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let clock = Instant::now();
    let (target, entry, notes) = find(strata, job, &opts.backup, opts.from.as_deref()).await?;
    // Before touching any database: an archived object cannot be read yet.
    ensure_readable(target.as_ref(), &entry.object_key(), &opts.thaw).await?;
    let globals = match &entry.manifest.globals {
        Some(_) => Some(
            read_globals(
                strata,
                target.as_ref(),
                &entry,
                &entry.manifest_key,
                &opts.thaw,
            )
            .await?,
        ),
        None => None,
    };
    let admin_url = into.with_dbname("postgres");
    let admin = admin_url.connect().await?;
    let name = into.dbname().to_owned();
    if database::exists(&admin, &admin_url, &name).await? {
        let relations = database::relation_count(into).await?;
        if relations > 0 && !opts.replace {
            return Err(RestoreError::NotEmpty(into.to_string(), relations));
        }
    }
    let dest = database::destination(&admin, &admin_url).await?;
    let plan = match &globals {
        Some(g) => g.plan(&dest, &opts.globals),
        None => globals::Plan {
            role_map: opts.globals.role_map.clone(),
            create_database: "TEMPLATE template0".into(),
            warnings: vec!["the backup predates stored globals: roles, owners' existence and database settings are not restored".into()],
            ..globals::Plan::default()
        },
    };
    let scratch = database::derived_name(&name, "strata");
    let mut created_tablespaces = Vec::new();
    let result = async {
        create_globals(&admin, &plan, &mut created_tablespaces).await?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} WITH {}",
                ident(&scratch),
                plan.create_database
            ))
            .await
            .map_err(|e| RestoreError::CreateDatabase(pg::pg_message(&e)))?;
        let rewrite = rewrite::Rewrite {
            roles: plan.role_map.clone(),
            no_owner: opts.globals.no_owner,
            no_tablespaces: opts.globals.no_tablespaces,
        };
        let jobs = opts.jobs.unwrap_or(strata.config().restore_jobs).max(1);
        let scratch_url = into.with_dbname(&scratch);
        let progress = opts.progress.clone().unwrap_or_else(|| {
            Progress::new(format!("restore {}", entry.manifest.backup_id), None)
        });
        progress.set_total_if_unknown(entry.manifest.stored_bytes);
        let loaded = restore_into(
            strata,
            target.as_ref(),
            &entry,
            &scratch_url,
            &rewrite,
            jobs,
            &progress,
        )
        .await?;
        check_counts(&entry, &loaded.rows)?;
        progress.set_detail("applying the database's settings");
        for stmt in &plan.after {
            let sql = stmt.replace("{db}", &ident(&scratch));
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| RestoreError::Roles {
                    statement: sql.clone(),
                    message: pg::pg_message(&e),
                })?;
        }
        swap_in(&admin, &admin_url, &name, &scratch).await?;
        Ok::<(usize, load::Timings), RestoreError>((jobs, loaded.timings))
    }
    .await;
    let (jobs, timings) = match result {
        Ok(done) => done,
        Err(e) => {
            drop_database(&admin, &admin_url, &scratch).await;
            database::undo_globals(
                &admin,
                &admin_url,
                &plan.created_roles,
                &created_tablespaces,
            )
            .await;
            return Err(e);
        }
    };
    let mut warnings = notes;
    warnings.extend(plan.warnings.iter().cloned());
    for w in &warnings {
        tracing::warn!(warning = %w, "restore");
    }
    Ok(RestoreReport {
        backup_id: entry.manifest.backup_id.clone(),
        target: target.name().to_owned(),
        database: into.to_string(),
        tables: entry.manifest.tables.len(),
        rows: entry.manifest.total_rows(),
        seconds: clock.elapsed().as_secs_f64(),
        jobs,
        roles_created: plan.created_roles.clone(),
        tablespaces_created: created_tablespaces,
        warnings,
        timings,
    })
}

/// Creates the roles, memberships and tablespaces the plan names.
async fn create_globals(
    admin: &tokio_postgres::Client,
    plan: &globals::Plan,
    created_tablespaces: &mut Vec<String>,
) -> Result<(), RestoreError> {
    for stmt in &plan.before {
        admin
            .batch_execute(stmt)
            .await
            .map_err(|e| RestoreError::Roles {
                statement: script::excerpt(stmt),
                message: pg::pg_message(&e),
            })?;
    }
    for (name, stmt) in &plan.tablespaces {
        admin
            .batch_execute(stmt)
            .await
            .map_err(|e| RestoreError::Tablespace {
                name: name.clone(),
                message: pg::pg_message(&e),
            })?;
        created_tablespaces.push(name.clone());
    }
    Ok(())
}

/// Every table's row count as loaded must equal the manifest's.
fn check_counts(entry: &Entry, rows: &BTreeMap<String, u64>) -> Result<(), RestoreError> {
    let wrong: Vec<String> = entry
        .manifest
        .tables
        .iter()
        .filter_map(|(table, expected)| {
            let got = rows.get(table).copied().unwrap_or(0);
            (got != *expected)
                .then(|| format!("{table} has {got} rows, the manifest says {expected}"))
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(RestoreError::RowCounts(wrong.join("; ")))
    }
}

/// The stored object as verified plaintext, plus the task that says whether every
/// byte checked out (hash, size, authentication).
pub(crate) async fn open_verified(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    object_key: &str,
    progress: Option<Arc<Progress>>,
) -> Result<
    (
        BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
        tokio::task::JoinHandle<Result<(), VerifyError>>,
    ),
    RestoreError,
> {
    let opened = open_stored(strata, target, object_key, expected(entry), progress).await?;
    Ok((
        BufReader::with_capacity(COPY_BUF, opened.reader),
        opened.check,
    ))
}

/// Reads `object_key` from `target` as `expected` says (keys from the config).
async fn open_stored(
    strata: &Strata,
    target: &dyn Target,
    object_key: &str,
    expected: Expected,
    progress: Option<Arc<Progress>>,
) -> Result<restore_stream::Opened, RestoreError> {
    let stream = target.get(object_key).await?;
    let keys = strata
        .config()
        .encryption
        .as_ref()
        .map(|e| e.keyring.clone());
    Ok(restore_stream::open(stream, expected, keys, progress)?)
}

/// [`open_verified`] without the decompression: the reader yields the
/// decrypted, still compressed stream (for a decoder of the caller's own).
pub(crate) async fn open_verified_packed(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    object_key: &str,
) -> Result<
    (
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        tokio::task::JoinHandle<Result<(), VerifyError>>,
    ),
    RestoreError,
> {
    let expected = Expected {
        compression: crate::domain::Compression::None,
        ..expected(entry)
    };
    let opened = open_stored(strata, target, object_key, expected, None).await?;
    Ok((opened.reader, opened.check))
}

fn expected(entry: &Entry) -> Expected {
    Expected {
        stored_bytes: entry.manifest.stored_bytes,
        sha256: entry.manifest.sha256.clone(),
        encrypted: entry.manifest.encryption.is_some(),
        compression: entry.manifest.compression,
    }
}
