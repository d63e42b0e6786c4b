//! Command line: parse arguments, run one command, print a result and map it to an
//! exit status (0 done, 1 failed, 2 bad usage or config, 75 not yet).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

mod exit;
mod report_cmds;
mod restore_cmds;
mod run_cmds;

use exit::Failure;

use crate::app::Strata;
use crate::config::{Config, TargetKind};
use crate::keys::{self, MasterKey};
use crate::pg::DbUrl;
use crate::pipeline::encrypt::Decryptor;

/// strata: PostgreSQL backups to local disk and S3, encrypted, verified.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(
        short,
        long,
        global = true,
        env = "STRATA_CONFIG",
        default_value = "config.yaml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: schedules, HTTP API, metrics (until SIGTERM/SIGINT).
    Run,
    /// Take one backup now; exit 0 only when every target holds it.
    Backup {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// List a job's backups (from manifests).
    List {
        job: String,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a database (created when missing; must be empty).
    Restore(RestoreArgs),
    /// Re-read a backup from every target; optionally restore it into a scratch
    /// database on a server.
    Verify {
        job: String,
        #[arg(long, default_value = "latest")]
        backup: String,
        #[arg(long, env = "STRATA_VERIFY_INTO", hide_env_values = true)]
        restore_into: Option<String>,
        #[command(flatten)]
        thaw: ThawArgs,
        #[arg(long)]
        json: bool,
    },
    /// S3 lifecycle rules: show what buckets have against the config, or apply.
    Lifecycle {
        #[arg(value_enum)]
        action: LifecycleAction,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What stored backups cost per month, and what the retention policy will.
    Cost {
        #[arg(long)]
        json: bool,
    },
    /// 3-2-1, encryption, versioning, lifecycle, locks, RPO, restore tests and
    /// retention: PASS/FAIL with evidence; exit 1 on any FAIL.
    Compliance {
        #[arg(long)]
        json: bool,
    },
    /// Every job at a glance: last good backup against the RPO, size trend,
    /// next run, last restore test and its RTO, targets, cost.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Upcoming scheduled runs: local time, then UTC.
    Next {
        job: String,
        #[arg(long)]
        from: Option<DateTime<chrono::FixedOffset>>,
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Apply the retention policy on every target of a job.
    Prune {
        job: String,
        /// Print the plan, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the plan as JSON: [{"backup_id", "keep", "reasons", …}].
        #[arg(long)]
        json: bool,
        /// Plan as of this time (default: now).
        #[arg(long)]
        now: Option<DateTime<chrono::FixedOffset>>,
        /// Delete now even when the job's deletions need approval.
        #[arg(long)]
        approve: bool,
        /// Also delete manifests strata refuses (forged, unauthenticated where
        /// required, out of bounds), with the files beside them.
        #[arg(long)]
        force: bool,
    },
    /// Alert channels: `strata alert test` sends a test message to each.
    Alert {
        #[arg(value_enum)]
        action: AlertAction,
    },
    /// Validate the configuration and report every problem.
    Check,
    /// Write a new random master key (mode 0600).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Decrypt stdin to stdout with a key file (recovery by hand).
    Decrypt {
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// `restore` arguments.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    job: String,
    /// Backup id, or `latest`.
    #[arg(long, default_value = "latest")]
    backup: String,
    /// Target to read from (default: the job's first target holding it).
    #[arg(long)]
    from: Option<String>,
    /// Destination database URL (or set STRATA_RESTORE_INTO to keep a password
    /// off the command line).
    #[arg(long, env = "STRATA_RESTORE_INTO", hide_env_values = true)]
    into: String,
    /// Replace a non-empty database (restored beside it, then swapped in).
    #[arg(long)]
    replace: bool,
    /// Connections to load with (default: restore.jobs, or the cores).
    #[arg(long)]
    jobs: Option<usize>,
    #[command(flatten)]
    roles: RoleArgs,
    #[command(flatten)]
    thaw: ThawArgs,
    /// The result as JSON on stdout, progress as JSON lines on stderr.
    #[arg(long)]
    json: bool,
}

/// `alert` actions.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AlertAction {
    Test,
}

/// `lifecycle` actions.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LifecycleAction {
    Show,
    Apply,
}

/// How a restore meets another environment's roles and tablespaces.
#[derive(Debug, Clone, clap::Args)]
pub struct RoleArgs {
    /// Objects are owned by the restoring role (ownership statements dropped).
    #[arg(long)]
    no_owner: bool,
    /// Use role NEW wherever the backup names role OLD (owners, grants,
    /// policies, default privileges); repeatable.
    #[arg(long = "role-map", value_name = "OLD=NEW", value_parser = parse_role_map)]
    role_map: Vec<(String, String)>,
    /// Everything into the default tablespace.
    #[arg(long)]
    no_tablespaces: bool,
    /// Create no roles or tablespaces from the backup's globals.
    #[arg(long)]
    no_globals: bool,
    /// Also give roles that already exist the backup's attributes, settings
    /// and memberships (by default they are left alone).
    #[arg(long)]
    update_roles: bool,
}

fn parse_role_map(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => {
            Ok((old.to_owned(), new.to_owned()))
        }
        _ => Err(format!("'{s}' is not OLD=NEW")),
    }
}

impl RoleArgs {
    fn options(&self) -> crate::pg::globals::Options {
        crate::pg::globals::Options {
            role_map: self.role_map.iter().cloned().collect(),
            no_owner: self.no_owner,
            no_tablespaces: self.no_tablespaces,
            no_globals: self.no_globals,
            update_roles: self.update_roles,
        }
    }
}

/// Archive-tier options of `restore` and `verify`.
#[derive(Debug, clap::Args)]
pub struct ThawArgs {
    /// Wait for archived (GLACIER, DEEP_ARCHIVE) objects to thaw, then continue;
    /// without it the command requests the thaw and exits with status 75.
    #[arg(long)]
    wait: bool,
    /// Retrieval tier for archived objects: Standard, Bulk or Expedited.
    #[arg(long, default_value = "Standard")]
    thaw_tier: crate::domain::ThawTier,
    /// Days the thawed copy stays readable.
    #[arg(long, default_value_t = 3)]
    thaw_days: i32,
}

impl ThawArgs {
    /// The options, polling as often as `daemon.thaw_poll` says.
    fn options(&self, config: &Config) -> crate::commands::restore::ThawOptions {
        crate::commands::restore::ThawOptions {
            tier: self.thaw_tier,
            days: self.thaw_days,
            wait: self.wait,
            poll: config.daemon.thaw_poll,
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("strata: {message}");
            ExitCode::from(code)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure(exit::USAGE, e.to_string()))
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serialisable")
    );
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Keygen { out } => {
            keys::generate(&out)?;
            println!(
                "wrote a new key to {} (mode 0600); keep a copy somewhere safe: without it no backup it encrypts can be restored",
                out.display()
            );
            Ok(())
        }
        Command::Decrypt { key_file } => decrypt(&key_file),
        Command::Run => {
            let config = load(&cli.config)?;
            crate::http::run(config).await?;
            Ok(())
        }
        Command::Check => {
            let config = load(&cli.config)?;
            println!(
                "{}: ok ({} job(s), {} target(s))",
                cli.config.display(),
                config.jobs.len(),
                config.targets.len()
            );
            for w in config.warnings() {
                println!("warning: {w}");
            }
            Ok(())
        }
        Command::Next { job, from, count } => {
            let config = load(&cli.config)?;
            let job = config
                .job(&job)
                .ok_or_else(|| Failure(exit::USAGE, format!("unknown job '{job}'")))?;
            let schedule = job.schedule.as_ref().ok_or_else(|| {
                Failure(exit::FAILED, format!("job '{}' has no schedule", job.name))
            })?;
            let start = from.map_or_else(Utc::now, |t| t.with_timezone(&Utc));
            for t in crate::policy::schedule::upcoming(schedule, config.timezone, start, count) {
                println!("{}  {}", t.to_rfc3339(), t.with_timezone(&Utc).to_rfc3339());
            }
            Ok(())
        }
        Command::Backup { job, json } => run_cmds::backup(&cli.config, job, json).await,
        Command::Prune {
            job,
            dry_run,
            json,
            now,
            approve,
            force,
        } => {
            prune(
                &cli.config,
                &job,
                PruneArgs {
                    dry_run,
                    json,
                    now,
                    approve,
                    force,
                },
            )
            .await
        }
        Command::Lifecycle {
            action,
            target,
            json,
        } => lifecycle(&cli.config, action, target.as_deref(), json).await,
        Command::Alert {
            action: AlertAction::Test,
        } => {
            let config = load(&cli.config)?;
            let alerter = crate::alerts::Alerter::from_config(&config.alerts)?;
            if !alerter.has_channels() {
                return Err(Failure(
                    exit::FAILED,
                    "no alert channel is configured (alerts.email, alerts.webhook)".into(),
                ));
            }
            let alert = crate::alerts::Alert::new(
                crate::alerts::Kind::Test,
                None,
                format!("test message from `strata alert test` ({})", cli_actor()),
                "nothing: this checks that alerts reach you",
            );
            let mut failed = 0;
            for (channel, result) in alerter.send_all(&alert, None).await {
                match result {
                    Ok(()) => println!("{channel}: sent"),
                    Err(e) => {
                        failed += 1;
                        println!("{channel}: FAILED: {}", e.message);
                    }
                }
            }
            if failed == 0 {
                Ok(())
            } else {
                Err(Failure(
                    exit::FAILED,
                    format!("{failed} alert channel(s) failed"),
                ))
            }
        }
        Command::Status { json } => status(&cli.config, json).await,
        Command::Cost { json } => report_cmds::cost(&cli.config, json).await,
        Command::Compliance { json } => report_cmds::compliance(&cli.config, json).await,
        Command::List { job, target, json } => {
            restore_cmds::list(&cli.config, job, target, json).await
        }
        Command::Restore(args) => restore_cmds::restore(&cli.config, args).await,
        Command::Verify {
            job,
            backup,
            restore_into,
            thaw,
            json,
        } => restore_cmds::verify(&cli.config, job, backup, restore_into, thaw, json).await,
    }
}

async fn status(config: &std::path::Path, json: bool) -> Result<(), Failure> {
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
    let mut facts = std::collections::BTreeMap::new();
    if let Some(url) = &config.state_url {
        let state = crate::state::StateDb::open(url.clone());
        let wait = std::time::Duration::from_secs(5);
        for name in config.jobs.keys() {
            let mut f = JobFacts::default();
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
            facts.insert(name.clone(), f);
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
struct PruneArgs {
    dry_run: bool,
    json: bool,
    now: Option<DateTime<chrono::FixedOffset>>,
    approve: bool,
    force: bool,
}

async fn prune(config: &std::path::Path, job: &str, args: PruneArgs) -> Result<(), Failure> {
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

async fn prune_with(
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
    }
    let deletions = plan.deletions();
    if force && !dry_run {
        let actor = cli_actor();
        let rec = Recorder {
            state: state.as_deref(),
            metrics: None,
            actor: &actor,
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
    if dry_run || deletions.is_empty() {
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
    };
    if mode == crate::config::PruneMode::Approval && !approve {
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

async fn lifecycle(
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

fn describe_rule(r: &crate::commands::lifecycle::Rule) -> String {
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

/// Records a CLI operation in the state database's audit log, when one is
/// configured (a failure to record is logged, never fatal).
async fn audit_cli(config: &Config, action: &str, job: Option<&str>, detail: serde_json::Value) {
    let Some(url) = &config.state_url else { return };
    let state = crate::state::StateDb::open(url.clone());
    state.audit(crate::state::AuditEntry {
        at: Utc::now(),
        actor: cli_actor(),
        action: action.into(),
        job: job.map(str::to_owned),
        run_id: None,
        detail,
    });
    sync_state(&state).await;
}

/// Before a command exits: writes what it recorded, or says it could not (the
/// state database did not answer within 15 s).
async fn sync_state(state: &crate::state::StateDb) {
    if !state.sync(std::time::Duration::from_secs(15)).await {
        tracing::warn!(
            waiting = state.outbox().0,
            "the state database did not answer: this command's run and audit records are not stored"
        );
    }
}

fn trust_word(t: &crate::domain::manifest::Trust) -> &'static str {
    match t {
        crate::domain::manifest::Trust::Authenticated(_) => "authenticated",
        crate::domain::manifest::Trust::Unsigned => "unsigned",
    }
}

fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// stdin → stdout; only authenticated plaintext is written, and a bad or truncated
/// stream ends with a non-zero exit (use `set -o pipefail`).
fn decrypt(key_file: &std::path::Path) -> Result<(), Failure> {
    let key = Arc::new(MasterKey::load("cli", key_file)?);
    let mut dec = Decryptor::with_key(key);
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(1 << 20);
    loop {
        let n = input.read(&mut buf)?;
        out.clear();
        if n == 0 {
            dec.finish(&mut out)?;
            output.write_all(&out)?;
            output.flush()?;
            return Ok(());
        }
        dec.update(&buf[..n], &mut out)?;
        output.write_all(&out)?;
    }
}
