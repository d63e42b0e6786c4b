//! `list`, `restore` and `verify`: reading backups back.

use super::*;

/// `strata restore`.
pub(super) async fn restore(config: &std::path::Path, args: RestoreArgs) -> Result<(), Failure> {
    let RestoreArgs {
        job,
        backup,
        from,
        into,
        replace,
        jobs,
        roles,
        thaw,
        json,
        pitr,
    } = args;
    if pitr.into_datadir.is_some() {
        return restore_datadir(config, &job, pitr, from, &thaw, json).await;
    }
    let into: DbUrl = into.unwrap_or_default().parse()?;
    let strata = Strata::build(load(config)?).await;
    let progress = crate::pipeline::progress::Progress::new(format!("restore {job}"), None);
    let reporter = crate::pipeline::progress::Reporter::start(
        progress.clone(),
        crate::pipeline::progress::Display::choose(json),
    );
    let opts = crate::commands::restore::RestoreOptions {
        backup: backup.clone(),
        from,
        replace,
        jobs,
        thaw: thaw.options(strata.config()),
        globals: roles.options(),
        progress: Some(progress),
    };
    let result = crate::commands::restore::restore(&strata, &job, &into, &opts).await;
    reporter.finish().await;
    let detail = match &result {
        Ok(r) => {
            serde_json::json!({ "backup_id": r.backup_id, "into": r.database, "ok": true, "seconds": r.seconds, "roles_created": r.roles_created })
        }
        Err(e) => {
            serde_json::json!({ "backup": backup, "into": into.to_string(), "ok": false, "error": e.to_string() })
        }
    };
    audit_cli(strata.config(), "restore", Some(&job), detail).await;
    let report = result.map_err(Failure::from)?;
    if json {
        print_json(&report);
    } else {
        let t = &report.timings;
        println!(
            "restored {} from {} into {}: {} tables, {} rows, verified, in {:.1} s ({} connections: schema {:.1} s, data {:.1} s, indexes {:.1} s, rest {:.1} s)",
            report.backup_id,
            report.target,
            report.database,
            report.tables,
            report.rows,
            report.seconds,
            report.jobs,
            t.schema,
            t.data,
            t.indexes,
            t.rest
        );
        if !report.roles_created.is_empty() {
            println!("  roles created: {}", report.roles_created.join(", "));
        }
        for w in &report.warnings {
            println!("  note: {w}");
        }
    }
    Ok(())
}

/// `strata verify`.
// Long on purpose: one command's whole path: arguments, progress, the checks, audit, the restore-test record, output, exit status.
pub(super) async fn verify(config: &std::path::Path, args: VerifyArgs) -> Result<(), Failure> {
    let VerifyArgs {
        job,
        backup,
        restore_into,
        restore_test,
        thaw,
        json,
    } = args;
    if restore_test {
        return run_restore_test(config, &job, json).await;
    }
    let server = restore_into.map(|u| u.parse::<DbUrl>()).transpose()?;
    let strata = Strata::build(load(config)?).await;
    // A physical job's base backups are all checked unless one is named.
    let ids = match backup {
        Some(b) => vec![b],
        None if strata.job(&job)?.kind.is_physical() => base_backup_ids(&strata, &job).await,
        None => vec!["latest".to_owned()],
    };
    let progress = crate::pipeline::progress::Progress::new(format!("verify {job}"), None);
    let reporter = crate::pipeline::progress::Reporter::start(
        progress.clone(),
        crate::pipeline::progress::Display::choose(json),
    );
    let mut reports = Vec::new();
    let mut failure = None;
    for id in if ids.is_empty() {
        vec!["latest".to_owned()]
    } else {
        ids
    } {
        let result = crate::commands::restore::verify_with(
            &strata,
            &job,
            &id,
            server.as_ref(),
            &thaw.options(strata.config()),
            Some(progress.clone()),
            chrono::Utc::now(),
        )
        .await;
        let detail = match &result {
            Ok(r) => {
                serde_json::json!({ "backup_id": r.backup_id, "ok": r.ok(), "targets": r.targets, "wal": r.wal, "restore": r.restore })
            }
            Err(e) => serde_json::json!({ "backup": id, "ok": false, "error": e.to_string() }),
        };
        audit_cli(strata.config(), "verify", Some(&job), detail).await;
        // A restore into a scratch database by hand is a restore test too:
        // its measured time goes where the scheduled ones go.
        if let Ok(Some(test)) = result.as_ref().map(|r| r.restore_test.as_ref()) {
            let state = cli_state(strata.config());
            let actor = cli_actor();
            crate::run::record_restore_test(
                state.as_deref(),
                test,
                &actor,
                &crate::state::host_id(),
            )
            .await;
            if let Some(state) = &state {
                sync_state(state).await;
            }
        }
        match result {
            Ok(r) => reports.push(r),
            Err(e) => {
                failure.get_or_insert(Failure::from(e));
            }
        }
    }
    reporter.finish().await;
    if let Some(f) = failure {
        return Err(f);
    }
    if json {
        print_json(&if reports.len() == 1 {
            serde_json::to_value(&reports[0]).unwrap_or_default()
        } else {
            serde_json::to_value(&reports).unwrap_or_default()
        });
    } else {
        print_verify(&reports);
    }
    verdict(&reports)
}

fn print_verify(reports: &[crate::commands::restore::VerifyReport]) {
    for report in reports {
        for (t, r) in &report.targets {
            println!("{} on {t}: {r}", report.backup_id);
        }
        if let Some(r) = &report.restore {
            println!("{} restore test: {r}", report.backup_id);
        }
        for (t, r) in &report.thawing {
            println!("{} on {t}: not checked: {r}", report.backup_id);
        }
    }
    // The archive is checked once, with the first backup.
    for (t, r) in reports
        .first()
        .map(|r| r.wal.as_slice())
        .unwrap_or_default()
    {
        println!("WAL archive on {t}: {r}");
    }
}

/// Exit status of `verify`: 1 when a check failed or nothing could be checked,
/// 75 when copies are thawing.
fn verdict(reports: &[crate::commands::restore::VerifyReport]) -> Result<(), Failure> {
    if let Some(bad) = reports.iter().find(|r| !r.ok()) {
        return Err(Failure(
            exit::FAILED,
            format!("verification of {} failed", bad.backup_id),
        ));
    }
    if let Some(r) = reports.iter().find(|r| !r.thawing.is_empty()) {
        return Err(Failure(
            exit::NOT_YET,
            format!(
                "{} copy(ies) of {} are thawing; run the same command again later, or add --wait",
                r.thawing.len(),
                r.backup_id
            ),
        ));
    }
    if let Some(r) = reports.iter().find(|r| r.targets.is_empty()) {
        return Err(Failure(
            exit::FAILED,
            format!("no copy of {} could be checked", r.backup_id),
        ));
    }
    Ok(())
}

/// Every base backup id of `job` on any of its targets, oldest first.
async fn base_backup_ids(strata: &Strata, job: &str) -> Vec<String> {
    let mut ids = std::collections::BTreeMap::new();
    for t in strata
        .job(job)
        .map(|j| j.targets.clone())
        .unwrap_or_default()
    {
        if let Ok(entries) = crate::catalog::list(strata, &t, job).await {
            for e in entries {
                ids.insert(e.started_at(), e.manifest.backup_id.clone());
            }
        }
    }
    ids.into_values().collect()
}

/// `strata verify JOB --restore-test`: the job's configured restore test,
/// now, recorded and audited as the scheduled one is.
async fn run_restore_test(config: &std::path::Path, job: &str, json: bool) -> Result<(), Failure> {
    let strata = std::sync::Arc::new(Strata::build(load(config)?).await);
    strata.job(job)?;
    let state = cli_state(strata.config());
    let actor = cli_actor();
    let test = crate::run::restore_test(
        strata.clone(),
        state.as_deref(),
        job,
        &actor,
        &crate::state::host_id(),
        chrono::Utc::now(),
    )
    .await
    .ok_or_else(|| {
        Failure(
            exit::USAGE,
            format!("job '{job}' has no restore test set up: set verify.restore_into (logical jobs) or verify.scratch_dir (physical jobs)"),
        )
    })?;
    if let Some(state) = &state {
        sync_state(state).await;
    }
    if json {
        print_json(&test);
    } else {
        println!(
            "restore test of {job}: {} from {} {} in {:.1} s ({} tables, {} rows){}",
            test.backup_id.as_deref().unwrap_or("-"),
            test.target.as_deref().unwrap_or("-"),
            if test.ok {
                "restored and checked"
            } else {
                "FAILED"
            },
            test.seconds,
            test.tables,
            test.rows,
            test.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    if test.ok {
        Ok(())
    } else {
        Err(Failure(
            exit::FAILED,
            format!(
                "the restore test of {job} failed: {}",
                test.error.as_deref().unwrap_or("?")
            ),
        ))
    }
}

/// `strata list`.
pub(super) async fn list(
    config: &std::path::Path,
    job: String,
    target: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let strata = Strata::build(load(config)?).await;
    let job_cfg = strata.job(&job)?;
    let names = match target {
        Some(t) if job_cfg.targets.contains(&t) => vec![t],
        Some(t) => {
            return Err(Failure(
                exit::USAGE,
                format!("target '{t}' is not one of job '{job}''s targets"),
            ));
        }
        None => job_cfg.targets.clone(),
    };
    let mut rows = Vec::new();
    let mut refused = Vec::new();
    for name in names {
        let listing = crate::catalog::list_all(&strata, &name, &job).await?;
        for e in listing.entries {
            rows.push((name.clone(), e));
        }
        for r in listing.refused {
            refused.push((name.clone(), r));
        }
    }
    if json {
        let mut items: Vec<_> = rows
            .iter()
            .map(|(t, e)| serde_json::json!({"target": t, "key": e.object_key(), "manifest": e.manifest, "trust": trust_word(&e.trust)}))
            .collect();
        items.extend(refused.iter().map(|(t, r)| {
            serde_json::json!({"target": t, "manifest_key": r.manifest_key, "trust": if r.error.is_forgery() { "forged" } else { "refused" }, "error": r.error.to_string()})
        }));
        print_json(&items);
    } else {
        for (t, e) in &rows {
            let m = &e.manifest;
            println!(
                "{}  {}  {:>10}  {:>10}  {}  {}{}",
                m.backup_id,
                m.started_at.to_rfc3339(),
                mib(m.raw_bytes),
                mib(m.stored_bytes),
                t,
                e.object_key(),
                if e.trust == crate::domain::manifest::Trust::Unsigned
                    && strata.config().encryption.is_some()
                {
                    "  (unauthenticated: no MAC)"
                } else {
                    ""
                }
            );
        }
        for (t, r) in &refused {
            println!("REFUSED  {t}  {}: {}", r.manifest_key, r.error);
        }
        if job_cfg.kind.is_physical() {
            let targets: std::collections::BTreeSet<&String> =
                rows.iter().map(|(t, _)| t).collect();
            for t in targets {
                print_recoverable(&strata, &job, t).await;
            }
        }
    }
    if refused.iter().any(|(_, r)| r.error.is_forgery()) {
        return Err(Failure(
            exit::FAILED,
            format!(
                "{} manifest(s) of job '{job}' are forged or cannot be authenticated; they are never restored, counted or pruned (see above)",
                refused.iter().filter(|(_, r)| r.error.is_forgery()).count()
            ),
        ));
    }
    Ok(())
}

/// One line for a physical job's target: the moments it can recover to.
async fn print_recoverable(strata: &Strata, job: &str, target: &str) {
    match crate::commands::restore::recoverable::recoverable(strata, job, target, Utc::now()).await
    {
        Err(e) => println!("recoverable on {target}: unknown ({e})"),
        Ok(r) => println!(
            "recoverable on {target}: from {} (end of base backup {}) to the end of segment {}{}",
            r.from.map_or_else(|| "-".into(), |f| f.to_rfc3339()),
            r.oldest_backup.as_deref().unwrap_or("-"),
            r.newest_segment.as_deref().unwrap_or("-"),
            r.missing
                .map(|m| format!("; GAP: segment {m} is missing, nothing after it is recoverable"))
                .unwrap_or_default()
        ),
    }
}

/// `strata restore JOB --into-datadir DIR --to… [--start --port N]`.
async fn restore_datadir(
    config: &std::path::Path,
    job: &str,
    pitr: PitrArgs,
    from: Option<String>,
    thaw: &ThawArgs,
    json: bool,
) -> Result<(), Failure> {
    use crate::commands::restore::datadir::FetchCommand;
    let PitrArgs {
        into_datadir,
        to_time,
        to_lsn,
        to,
        start,
        port,
        archive_mode,
    } = pitr;
    let dir = into_datadir.unwrap_or_default();
    let target = recovery_target(to_time, to_lsn, to)?;
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p).map_err(|e| Failure(exit::FAILED, format!("{}: {e}", p.display())))
    };
    let fetch = FetchCommand {
        program: std::env::current_exe()
            .map_err(|e| Failure(exit::FAILED, format!("cannot find the strata binary: {e}")))?,
        config: absolute(config)?,
    };
    let strata = Strata::build(load(config)?).await;
    let dir = absolute(&dir)?;
    let port = port.filter(|_| start);
    if let Some(port) = port {
        crate::commands::restore::start::preflight(port)?;
    }
    let thaw = thaw.options(strata.config());
    let opts = crate::commands::restore::datadir::DatadirOptions {
        to: target,
        from: from.as_deref(),
        fetch: &fetch,
        thaw: &thaw,
        preserve_archiving: archive_mode == "preserve",
    };
    let mut report =
        crate::commands::restore::datadir::restore_datadir(&strata, job, &dir, &opts).await?;
    if let Some(port) = port {
        let cfg = strata.job(job)?;
        report.recovered = Some(
            crate::commands::restore::start::start(&dir, port, &cfg.database_url, cfg.timeout)
                .await?,
        );
    }
    audit_cli(
        strata.config(),
        "restore.datadir",
        Some(job),
        serde_json::to_value(&report).unwrap_or_default(),
    )
    .await;
    if json {
        print_json(&report);
    } else {
        print_datadir(&report);
    }
    Ok(())
}

/// `--to-time`, `--to-lsn` or `--to latest|immediate`, exactly one.
fn recovery_target(
    to_time: Option<DateTime<chrono::FixedOffset>>,
    to_lsn: Option<String>,
    to: Option<String>,
) -> Result<crate::commands::restore::datadir::RecoveryTarget, Failure> {
    use crate::commands::restore::datadir::RecoveryTarget;
    Ok(match (to_time, to_lsn, to) {
        (Some(t), None, None) => RecoveryTarget::Time(t.with_timezone(&Utc)),
        (None, Some(l), None) => {
            RecoveryTarget::Lsn(crate::domain::wal::parse_lsn(&l).ok_or_else(|| {
                Failure(
                    exit::USAGE,
                    format!("--to-lsn: '{l}' is not an LSN such as 0/3000060"),
                )
            })?)
        }
        (None, None, Some(t)) if t == "immediate" => RecoveryTarget::Immediate,
        (None, None, Some(_)) => RecoveryTarget::Latest,
        _ => {
            return Err(Failure(
                exit::USAGE,
                "--into-datadir needs one of --to-time, --to-lsn, --to latest or --to immediate"
                    .into(),
            ));
        }
    })
}

/// What `restore --into-datadir` did, for people.
fn print_datadir(report: &crate::commands::restore::datadir::DatadirReport) {
    if let Some(r) = &report.recovered {
        println!(
            "restored base backup {} from {} into {}; recovered to {} (last transaction {}) and promoted in {:.1}s; the server runs on 127.0.0.1:{} (log: {})",
            report.backup_id,
            report.target,
            report.data_directory.display(),
            r.replayed_lsn,
            r.last_transaction_at.as_deref().unwrap_or("-"),
            r.seconds,
            r.port,
            r.log.display()
        );
    } else {
        println!(
            "restored base backup {} from {} into {} (WAL {} to {}, timelines {}); recovery replays the archive up to {} and promotes: start it with `pg_ctl -D {} start` as the server's user",
            report.backup_id,
            report.target,
            report.data_directory.display(),
            report.base_start_lsn,
            report.newest_segment.as_deref().unwrap_or("-"),
            report.timelines,
            report.recovery_target,
            report.data_directory.display()
        );
    }
}
