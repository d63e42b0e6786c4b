//! The development refresh: the newest backup of another job (production) is
//! restored into a new database beside the job's own, trimmed (data
//! minimisation) and masked, and only then swapped in place of the job's
//! database. Any failure drops the new database and leaves the old one as it was.

use std::time::Instant;

use serde::Serialize;

use crate::app::Strata;
use crate::app::UnknownJob;
use crate::commands::restore::{self, RestoreError, RestoreOptions};
use crate::pg::SourceError;

/// Why a refresh did not happen; the job's database is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("{0}")]
    UnknownJob(#[from] UnknownJob),
    #[error("job '{0}' has no refresh settings")]
    NotConfigured(String),
    #[error("restoring the newest backup of '{from}' failed: {source}")]
    Restore { from: String, source: RestoreError },
    #[error("{step}[{index}] failed: {message}")]
    Sql {
        step: &'static str,
        index: usize,
        message: String,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("swapping the refreshed database in failed: {0}")]
    Swap(RestoreError),
}

/// A finished refresh.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    pub from: String,
    pub backup_id: String,
    pub database: String,
    pub seconds: f64,
}

/// Refreshes `job`'s database from the newest backup of its `refresh.from` job.
///
/// # Errors
/// Any step failed; the job's database is then untouched.
#[tracing::instrument(skip_all, fields(job))]
pub async fn refresh(strata: &Strata, job: &str) -> Result<RefreshReport, RefreshError> {
    let clock = Instant::now();
    let cfg = strata.job(job)?;
    let r = cfg
        .refresh
        .as_ref()
        .ok_or_else(|| RefreshError::NotConfigured(job.to_owned()))?;
    let dest = &cfg.database_url;
    let name = dest.dbname().to_owned();
    let scratch = restore::database::derived_name(&name, "strata_refresh");
    let scratch_url = dest.with_dbname(&scratch);
    let restored = restore::restore(strata, &r.from, &scratch_url, &RestoreOptions::default())
        .await
        .map_err(|source| RefreshError::Restore {
            from: r.from.clone(),
            source,
        })?;
    let admin_url = dest.with_dbname("postgres");
    let admin = admin_url.connect().await?;
    let minimised = async {
        let client = scratch_url.connect().await?;
        let steps = r
            .trim_sql
            .iter()
            .enumerate()
            .map(|(i, s)| ("refresh.trim_sql", i, s))
            .chain(
                r.mask_sql
                    .iter()
                    .enumerate()
                    .map(|(i, s)| ("refresh.mask_sql", i, s)),
            );
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| scratch_url.query_error(&e))?;
        for (step, index, sql) in steps {
            if let Err(e) = client.batch_execute(sql).await {
                return Err(RefreshError::Sql {
                    step,
                    index,
                    message: scratch_url.query_error(&e).to_string(),
                });
            }
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| scratch_url.query_error(&e))?;
        Ok(())
    }
    .await;
    if let Err(e) = minimised {
        restore::drop_database(&admin, &admin_url, &scratch).await;
        return Err(e);
    }
    restore::swap_in(&admin, &admin_url, &name, &scratch)
        .await
        .map_err(RefreshError::Swap)?;
    tracing::info!(job, from = %r.from, backup_id = %restored.backup_id, "development database refreshed");
    Ok(RefreshReport {
        from: r.from.clone(),
        backup_id: restored.backup_id,
        database: dest.to_string(),
        seconds: clock.elapsed().as_secs_f64(),
    })
}
