//! The restore test of a physical job: the newest base backup and the WAL
//! after it recovered into a scratch data directory (under
//! `verify.scratch_dir`) on a free loopback port, up to the end of the
//! archive, promoted, checked with the job's `verify.sql`, then stopped and
//! removed. Its measured time is the job's real RTO.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::datadir::{DatadirOptions, FetchCommand, RecoveryTarget, restore_datadir};
use super::{RestoreError, RestoreTest, ThawOptions, start};
use crate::app::Strata;

/// A free port on 127.0.0.1 (the kernel's choice, released at once).
fn free_port() -> Result<u16, RestoreError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| RestoreError::Physical(format!("no free port on 127.0.0.1: {e}")))
}

/// Recovers `job` into `scratch` (a new directory), checks it and removes it.
/// `started_at` is the caller's clock.
pub async fn recovery_test(
    strata: &Strata,
    job: &str,
    scratch: &Path,
    sql: &[String],
    started_at: DateTime<Utc>,
) -> RestoreTest {
    let clock = Instant::now();
    let mut test = RestoreTest::new(job, started_at);
    let data = scratch.join("data");
    let result = recover_and_check(strata, job, &data, sql, &mut test).await;
    test.seconds = clock.elapsed().as_secs_f64();
    remove_scratch(scratch).await;
    test.ok = result.is_ok();
    test.error = result.err().map(|e| e.to_string());
    super::verify::record_restore(strata, &test).await;
    test
}

async fn recover_and_check(
    strata: &Strata,
    job: &str,
    data: &Path,
    sql: &[String],
    test: &mut RestoreTest,
) -> Result<(), RestoreError> {
    let cfg = strata.job(job)?;
    let port = free_port()?;
    start::preflight(port)?;
    let fetch = FetchCommand {
        program: std::env::current_exe()
            .map_err(|e| RestoreError::Physical(format!("cannot find the strata binary: {e}")))?,
        config: std::path::absolute(&strata.config().path)
            .map_err(|e| RestoreError::Physical(format!("the config's path: {e}")))?,
    };
    let thaw = ThawOptions::default();
    let opts = DatadirOptions {
        to: RecoveryTarget::Latest,
        from: None,
        fetch: &fetch,
        thaw: &thaw,
        preserve_archiving: false,
    };
    let report = restore_datadir(strata, job, data, &opts).await?;
    test.backup_id = Some(report.backup_id.clone());
    test.target = Some(report.target.clone());
    let recovered = start::start(data, port, &cfg.database_url, cfg.timeout).await?;
    tracing::info!(job, backup_id = %report.backup_id, lsn = %recovered.replayed_lsn, seconds = recovered.seconds, "restore test: recovered and promoted");
    let url = cfg.database_url.on_loopback(port);
    let client = url.connect().await?;
    let row = client
        .query_one(
            "SELECT count(*)::bigint, coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables",
            &[],
        )
        .await
        .map_err(|e| url.query_error(&e))?;
    test.tables = usize::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    test.rows = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
    drop(client);
    super::verify::run_assertions(&url, sql).await
}

/// Stops a server left running in `scratch` (if any) and removes it all.
/// Best effort: what cannot be removed is logged.
pub async fn remove_scratch(scratch: &Path) {
    let data = scratch.join("data");
    if data.join("postmaster.pid").exists() {
        if let Err(e) = start::stop(&data).await {
            tracing::warn!(directory = %data.display(), error = %e, "a restore test's server did not stop");
        }
    }
    if let Err(e) = tokio::fs::remove_dir_all(scratch).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(directory = %scratch.display(), error = %e, "a restore test's scratch directory was not removed");
        }
    }
}
