//! `backup`: one run of a job from the command line, recorded like the daemon's.

use super::*;

/// `strata backup`.
// Long on purpose: the CLI's run in order: session, progress, the run, its record, output and exit status.
pub(super) async fn backup(
    config: &std::path::Path,
    job: String,
    json: bool,
) -> Result<(), Failure> {
    let config = load(config)?;
    let state = config
        .state_url
        .as_ref()
        .map(|url| crate::state::StateDb::open(url.clone()));
    let strata = Strata::build(config).await;
    strata.job(&job)?;
    // One run per job, whoever starts it: the daemon holds the same lock.
    let _lock = match &state {
        Some(s) => match s.try_lock_job(&job).await {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                return Err(Failure(
                    exit::FAILED,
                    format!(
                        "a backup of job '{job}' is already running (another strata process holds its lock)"
                    ),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "state database unreachable: running without the cross-process lock");
                None
            }
        },
        None => None,
    };
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let record =
        crate::state::RunRecord::start(&job, "cli", None, Utc::now(), &crate::state::host_id());
    let mut session = crate::run::Session::open(state.clone(), record, &actor, Utc::now());
    // Ctrl-C or SIGTERM aborts cleanly: no partial object, no manifest.
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            crate::daemon::stop_signal().await;
            cancel.cancel();
        }
    });
    // The previous backup's size is the estimate.
    let estimate = crate::catalog::newest(&strata, &job)
        .await
        .map(|e| e.manifest.raw_bytes);
    let progress = crate::pipeline::progress::Progress::new(format!("backup {job}"), estimate);
    let reporter = crate::pipeline::progress::Reporter::start(
        progress.clone(),
        crate::pipeline::progress::Display::choose(json),
    );
    let ctl = crate::commands::backup::RunControl {
        cancel,
        progress: Some(progress),
    };
    let timeout = strata.job(&job)?.timeout;
    let strata = std::sync::Arc::new(strata);
    let result = session.execute(strata.clone(), ctl, timeout).await;
    reporter.finish().await;
    session.finish(&strata, &result, Utc::now());
    session.sync(std::time::Duration::from_secs(15)).await;
    let report = result?;
    if json {
        print_json(&report);
    } else {
        let m = &report.manifest;
        println!(
            "backup {} of job {}: {} raw -> {} stored in {:.1} s",
            m.backup_id,
            m.job,
            mib(m.raw_bytes),
            mib(m.stored_bytes),
            report.duration_seconds
        );
        for t in &m.targets {
            if !report.failed.contains_key(&t.target) {
                println!("  {}: ok ({})", t.target, t.key);
            }
        }
        for (t, why) in &report.failed {
            println!("  {t}: FAILED: {why}");
        }
    }
    if report.is_complete() {
        Ok(())
    } else {
        Err(Failure(
            exit::FAILED,
            format!(
                "backup {} is degraded: target(s) {} failed; the others hold a valid copy",
                report.manifest.backup_id,
                report.failed.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    }
}
