//! `wal-push` and `wal-fetch`: called by PostgreSQL once per WAL file, so they
//! load only the config and the job's targets, print nothing on success, and
//! say what went wrong in one line on stderr (PostgreSQL's log) otherwise.

use super::*;

pub(super) async fn push(config: &Path, job: &str, path: &Path) -> Result<(), Failure> {
    let strata = Strata::build_for_job(load(config)?, job).await;
    let pushed = crate::commands::wal::push(&strata, job, path).await?;
    for (target, p) in pushed {
        tracing::debug!(job, target_name = %target, file = %path.display(), outcome = ?p, "archived");
    }
    Ok(())
}

pub(super) async fn fetch(
    config: &Path,
    job: &str,
    name: &str,
    dest: &Path,
    from: Option<&str>,
) -> Result<(), Failure> {
    // Whatever goes wrong before the archive answers "not there" must stop
    // recovery, never end it: a bad config included.
    let stop = |message: String| Failure(exit::STOP_RECOVERY, message);
    let config = load(config).map_err(|f| stop(f.1))?;
    let strata = Strata::build_for_job(config, job).await;
    match crate::commands::wal::fetch(&strata, job, name, dest, from).await {
        Ok(target) => {
            tracing::debug!(job, file = name, target_name = %target, "fetched");
            Ok(())
        }
        Err(e) if e.is_not_found() => Err(Failure(exit::FAILED, e.to_string())),
        Err(e) => Err(stop(e.to_string())),
    }
}
