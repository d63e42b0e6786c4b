//! `status`, `prune` and `lifecycle`: looking after what is stored.

use super::*;
use crate::policy::schedule::SystemClock;

pub(super) async fn status(config: &std::path::Path, json: bool) -> Result<(), Failure> {
    use crate::commands::status::{JobFacts, RestoreTestFact, RunFact};
    let strata = Strata::build(load(config)?).await;
    let config = strata.config();
    let mut listings = std::collections::BTreeMap::new();
    for (name, job) in &config.jobs {
        let mut per = std::collections::BTreeMap::new();
        for t in &job.targets {
            let listed = crate::catalog::list_all(&strata, t, name).await;
            per.insert(t.clone(), listed.map_err(|e| e.to_string()));
        }
        listings.insert(name.clone(), per);
    }
    let mut facts: std::collections::BTreeMap<String, JobFacts> = std::collections::BTreeMap::new();
    for (name, job) in config.jobs.iter().filter(|(_, j)| j.kind.is_physical()) {
        facts.entry(name.clone()).or_default().newest_wal =
            Some(newest_wal(&strata, name, &job.targets).await);
    }
    if let Some(url) = &config.state_url {
        let state = crate::state::StateDb::open(url.clone());
        let wait = std::time::Duration::from_secs(5);
        for name in config.jobs.keys() {
            let f = facts.entry(name.clone()).or_default();
            if let Ok(Ok(Some((at, ok, seconds, error)))) =
                tokio::time::timeout(wait, state.last_restore_test(name)).await
            {
                f.restore_test = Some(RestoreTestFact {
                    at,
                    ok,
                    seconds,
                    error,
                });
            }
            if let Ok(Ok(Some((run_id, status)))) =
                tokio::time::timeout(wait, state.latest_finished(name)).await
            {
                f.last_run = Some(RunFact {
                    run_id,
                    status: status.as_str().to_owned(),
                });
            }
        }
    }
    let inventory = crate::commands::inventory::take(&strata).await;
    let sizes: std::collections::BTreeMap<String, u64> = listings
        .iter()
        .filter_map(|(job, per)| {
            let newest = per
                .values()
                .flatten()
                .flat_map(|l| &l.entries)
                .max_by_key(|e| e.started_at())?;
            Some((job.clone(), newest.manifest.stored_bytes))
        })
        .collect();
    let cost = crate::commands::inventory::cost_report(&strata, &inventory, &sizes);
    let report = crate::commands::status::report(config, Utc::now(), &listings, &facts, &cost);
    if json {
        print_json(&report);
    } else {
        print!("{}", report.text(config.timezone));
    }
    let unhealthy: Vec<&str> = report
        .jobs
        .iter()
        .filter(|j| j.status != "ok")
        .map(|j| j.job.as_str())
        .collect();
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            exit::FAILED,
            format!("job(s) not ok: {}", unhealthy.join(", ")),
        ))
    }
}

/// Options of `strata prune`.
pub(super) struct PruneArgs {
    pub(super) dry_run: bool,
    pub(super) json: bool,
    pub(super) now: Option<DateTime<chrono::FixedOffset>>,
    pub(super) approve: bool,
    pub(super) force: bool,
}

pub(super) async fn prune(
    config: &std::path::Path,
    job: &str,
    args: PruneArgs,
) -> Result<(), Failure> {
    let config = load(config)?;
    let state = config
        .state_url
        .as_ref()
        .map(|url| crate::state::StateDb::open(url.clone()));
    let result = prune_with(config, state.clone(), job, args).await;
    // The deletions were audited: write that before exiting.
    if let Some(s) = &state {
        sync_state(s).await;
    }
    result
}

// Long on purpose: the prune modes (dry run, plan for approval, approve, force) share one plan and one output.
pub(super) async fn prune_with(
    config: Config,
    state: Option<Arc<crate::state::StateDb>>,
    job: &str,
    args: PruneArgs,
) -> Result<(), Failure> {
    use crate::commands::prune::{self, Recorder};
    let PruneArgs {
        dry_run,
        json,
        now,
        approve,
        force,
    } = args;
    let strata = Strata::build(config).await;
    let mode = strata.job(job)?.prune;
    let now = now.map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let plan = prune::plan(&strata, job, now).await?;
    if json {
        print_json(&plan.items);
    } else {
        for item in &plan.items {
            println!(
                "{}  {}  {}  [{}]  {}",
                if item.keep { "keep  " } else { "DELETE" },
                item.backup_id,
                item.started_at.to_rfc3339(),
                item.targets.join(","),
                item.reasons.join("; ")
            );
        }
        if let Some(k) = &plan.wal_keep {
            println!(
                "WAL     before {} on timeline {} goes but for what older base backups kept need (the start of {}, where the recovery window begins)",
                k.start_lsn, k.timeline, k.backup_id
            );
        }
    }
    let deletions = plan.deletions();
    if force && !dry_run {
        let actor = cli_actor();
        let rec = Recorder {
            state: state.as_deref(),
            metrics: None,
            actor: &actor,
            clock: &SystemClock,
        };
        let purged = prune::purge_refused(&strata, job, &rec).await?;
        for (target, key, result) in &purged {
            match result {
                Ok(()) => eprintln!("deleted refused manifest {key} from {target}"),
                Err(e) => eprintln!("FAILED to delete refused manifest {key} from {target}: {e}"),
            }
        }
        if purged.iter().any(|(_, _, r)| r.is_err()) {
            return Err(Failure(
                exit::FAILED,
                "some refused manifests could not be deleted".into(),
            ));
        }
    }
    if dry_run || (deletions.is_empty() && plan.wal_keep.is_none()) {
        eprintln!(
            "strata: {} backup(s), {} to delete{}",
            plan.items.len(),
            deletions.len(),
            if dry_run {
                " (dry run: nothing deleted)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    prune::check_latest_run(state.as_deref(), job).await?;
    let actor = cli_actor();
    let rec = Recorder {
        state: state.as_deref(),
        metrics: None,
        actor: &actor,
        clock: &SystemClock,
    };
    if mode == crate::config::PruneMode::Approval && !approve && !deletions.is_empty() {
        return match prune::propose(&rec, &plan).await {
            Some(id) => {
                eprintln!(
                    "strata: {} deletion(s) wait for approval (plan {id}): run `strata prune {job} --approve` or POST /prune/{job}/approve with the admin token",
                    deletions.len()
                );
                Ok(())
            }
            None => Err(Failure(
                exit::FAILED,
                format!(
                    "job '{job}' deletes only with approval and the plan could not be recorded (no reachable state database); nothing deleted; pass --approve to delete now"
                ),
            )),
        };
    }
    let out = prune::execute(&strata, &plan, None, &rec).await;
    for d in &out.deleted {
        eprintln!("deleted {} from {}", d.backup_id, d.target);
    }
    for w in out.wal.iter().filter(|w| w.deleted > 0) {
        eprintln!("deleted {} WAL file(s) from {}", w.deleted, w.target);
    }
    for l in &out.locked {
        eprintln!(
            "kept {} on {}: Object Lock until {}",
            l.backup_id,
            l.target,
            l.retain_until.to_rfc3339()
        );
    }
    for f in &out.failed {
        eprintln!(
            "FAILED to delete {} from {}: {}",
            f.backup_id, f.target, f.error
        );
    }
    if out.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            exit::FAILED,
            format!(
                "{} deletion(s) failed; the manifests of those copies may already be gone (their objects are then unlisted debris)",
                out.failed.len()
            ),
        ))
    }
}

pub(super) async fn lifecycle(
    config: &std::path::Path,
    action: LifecycleAction,
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let strata = Strata::build(load(config)?).await;
    let config = strata.config();
    if let Some(t) = only {
        match config.targets.get(t).map(|c| &c.kind) {
            Some(TargetKind::S3 { .. }) => {}
            Some(TargetKind::Local { .. }) => {
                return Err(Failure(
                    exit::USAGE,
                    format!("target '{t}' is local disk: it has no lifecycle rules"),
                ));
            }
            None => return Err(Failure(exit::USAGE, format!("unknown target '{t}'"))),
        }
    }
    let mut statuses = Vec::new();
    let mut errors = Vec::new();
    for (name, t) in &config.targets {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let target = strata.target(name);
        let Some(s3) = target.as_s3() else { continue };
        let result = match action {
            LifecycleAction::Show => crate::commands::lifecycle::status(t, s3).await,
            LifecycleAction::Apply => crate::commands::lifecycle::apply(t, s3).await,
        };
        match result {
            Ok(s) => statuses.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if matches!(action, LifecycleAction::Apply) {
        audit_cli(config, "lifecycle.apply", None, serde_json::json!({ "targets": statuses.iter().map(|s| &s.target).collect::<Vec<_>>(), "errors": errors })).await;
    }
    if json {
        print_json(&statuses);
    } else {
        for s in &statuses {
            println!("{} (bucket {}): {}", s.target, s.bucket, s.summary());
            for r in &s.wanted {
                let state = if s.missing.contains(&r.id) {
                    "MISSING"
                } else if s.differs.contains(&r.id) {
                    "DIFFERS"
                } else {
                    "ok"
                };
                println!("  {state:<7} {}", describe_rule(r));
            }
            for id in &s.foreign {
                println!("  other   {id} (not strata's; left alone)");
            }
        }
    }
    if let Some(e) = errors.first() {
        return Err(Failure(exit::FAILED, e.clone()));
    }
    if matches!(action, LifecycleAction::Show) && statuses.iter().any(|s| !s.in_sync) {
        return Err(Failure(
            exit::FAILED,
            "lifecycle rules differ from the config; run `strata lifecycle apply`".into(),
        ));
    }
    Ok(())
}

pub(super) fn describe_rule(r: &crate::commands::lifecycle::Rule) -> String {
    let mut parts = vec![format!("{} on '{}'", r.id, r.prefix)];
    if let Some((k, v)) = &r.tag {
        parts.push(format!("tagged {k}={v}"));
    }
    for t in &r.transitions {
        parts.push(format!("{} after {} d", t.storage_class, t.days));
    }
    if let Some(d) = r.expiration_days {
        parts.push(format!("delete after {d} d"));
    }
    if let Some(d) = r.abort_incomplete_days {
        parts.push(format!("abort incomplete uploads after {d} d"));
    }
    parts.join(", ")
}

/// `strata check`: the config is valid; its warnings.
pub(super) fn check(path: &Path) -> Result<(), Failure> {
    let config = load(path)?;
    println!(
        "{}: ok ({} job(s), {} target(s))",
        path.display(),
        config.jobs.len(),
        config.targets.len()
    );
    for w in config.warnings() {
        println!("warning: {w}");
    }
    Ok(())
}

/// `strata next`: the job's upcoming runs, local time then UTC.
pub(super) fn next(
    path: &Path,
    job: &str,
    from: Option<DateTime<chrono::FixedOffset>>,
    count: usize,
) -> Result<(), Failure> {
    let config = load(path)?;
    let job = config
        .job(job)
        .ok_or_else(|| Failure(exit::USAGE, format!("unknown job '{job}'")))?;
    let schedule = job
        .schedule
        .as_ref()
        .ok_or_else(|| Failure(exit::FAILED, format!("job '{}' has no schedule", job.name)))?;
    let start = from.map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    for t in crate::policy::schedule::upcoming(schedule, config.timezone, start, count) {
        println!("{}  {}", t.to_rfc3339(), t.with_timezone(&Utc).to_rfc3339());
    }
    Ok(())
}

/// The newest WAL file every target of a physical job holds (the oldest of
/// each target's newest): the point a restore from any of them reaches.
async fn newest_wal(
    strata: &Strata,
    job: &str,
    targets: &[String],
) -> Result<crate::commands::status::WalFact, String> {
    let mut worst: Option<crate::commands::status::WalFact> = None;
    for t in targets {
        let target = strata.target(t);
        let listing = crate::commands::wal::Listing::read(strata, job, target.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let (at, file) = listing
            .newest_archived()
            .ok_or_else(|| format!("no WAL archived on {t}"))?;
        if worst.as_ref().is_none_or(|w| at < w.at) {
            worst = Some(crate::commands::status::WalFact {
                file: file.to_string(),
                at,
            });
        }
    }
    worst.ok_or_else(|| "no target".into())
}
