//! Command line: parse arguments, run one command, print a result and map it to an
//! exit status (0 done, 1 failed, 2 bad usage or config, 75 not yet).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

mod exit;
mod maintain_cmds;
mod report_cmds;
mod restore_cmds;
mod run_cmds;
mod wal_cmds;

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
    Verify(VerifyArgs),
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
    /// Archive one WAL file of a physical job on every target (PostgreSQL's
    /// `archive_command`: `strata -c CONFIG wal-push JOB %p`). Exit 0 only when
    /// every target holds it; 1 otherwise, and PostgreSQL tries again.
    WalPush { job: String, path: PathBuf },
    /// Fetch one WAL file of a physical job from the archive (PostgreSQL's
    /// `restore_command`: `strata -c CONFIG wal-fetch JOB %f %p`). Exit 1 when
    /// the archive does not hold it (recovery ends there), 126 when the archive
    /// could not be read (PostgreSQL stops recovery instead of ending it early).
    WalFetch {
        job: String,
        name: String,
        dest: PathBuf,
        /// Read only this target.
        #[arg(long)]
        from: Option<String>,
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
    #[arg(
        long,
        env = "STRATA_RESTORE_INTO",
        hide_env_values = true,
        required_unless_present = "into_datadir",
        conflicts_with = "into_datadir"
    )]
    into: Option<String>,
    #[command(flatten)]
    pitr: PitrArgs,
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

/// Point-in-time recovery of a physical job into a data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct PitrArgs {
    /// Restore a physical job's cluster into this new or empty directory, set
    /// up to recover to `--to-time`, `--to-lsn` or `--to latest` (then start it
    /// with `pg_ctl -D DIR start` as the server's user, or pass `--start`).
    #[arg(long, value_name = "DIR")]
    into_datadir: Option<PathBuf>,
    /// Recover up to this moment (RFC 3339).
    #[arg(long, requires = "into_datadir", conflicts_with_all = ["to_lsn", "to"])]
    to_time: Option<DateTime<chrono::FixedOffset>>,
    /// Recover up to this WAL position (as PostgreSQL prints it: 0/3000060).
    #[arg(long, requires = "into_datadir", conflicts_with = "to")]
    to_lsn: Option<String>,
    /// `latest`: replay everything the archive holds; `immediate`: only until
    /// the base backup is consistent (the moment it ended).
    #[arg(long, requires = "into_datadir", value_parser = ["latest", "immediate"])]
    to: Option<String>,
    /// Start the restored server, wait until recovery reached the target and
    /// promoted, and report the recovered position (run as the server's user).
    #[arg(long, requires_all = ["into_datadir", "port"])]
    start: bool,
    /// The port the restored server listens on (127.0.0.1) with `--start`.
    #[arg(long, requires = "start")]
    port: Option<u16>,
    /// `off` (default): the copy does not archive. `preserve`: it keeps the
    /// source's archive settings and, once promoted, archives into the job
    /// (it replaces the source; its new timeline becomes the latest).
    #[arg(long, requires = "into_datadir", value_parser = ["off", "preserve"], default_value = "off")]
    archive_mode: String,
}

/// `strata verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    job: String,
    /// Backup id, or `latest` (default: the newest; every base backup of a
    /// physical job).
    #[arg(long)]
    backup: Option<String>,
    /// Also restore it into a scratch database on this server (logical jobs),
    /// check row counts and drop it.
    #[arg(long, env = "STRATA_VERIFY_INTO", hide_env_values = true)]
    restore_into: Option<String>,
    /// Run the job's configured restore test now (recorded like the
    /// scheduled one); a physical job recovers into `verify.scratch_dir`.
    #[arg(long, conflicts_with_all = ["restore_into", "backup"])]
    restore_test: bool,
    #[command(flatten)]
    thaw: ThawArgs,
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
        Command::WalPush { job, path } => wal_cmds::push(&cli.config, &job, &path).await,
        Command::WalFetch {
            job,
            name,
            dest,
            from,
        } => wal_cmds::fetch(&cli.config, &job, &name, &dest, from.as_deref()).await,
        Command::Run => {
            let config = load(&cli.config)?;
            crate::http::run(config).await?;
            Ok(())
        }
        Command::Check => maintain_cmds::check(&cli.config),
        Command::Next { job, from, count } => maintain_cmds::next(&cli.config, &job, from, count),
        Command::Backup { job, json } => run_cmds::backup(&cli.config, job, json).await,
        Command::Prune {
            job,
            dry_run,
            json,
            now,
            approve,
            force,
        } => {
            maintain_cmds::prune(
                &cli.config,
                &job,
                maintain_cmds::PruneArgs {
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
        } => maintain_cmds::lifecycle(&cli.config, action, target.as_deref(), json).await,
        Command::Alert {
            action: AlertAction::Test,
        } => report_cmds::alert_test(&cli.config).await,
        Command::Status { json } => maintain_cmds::status(&cli.config, json).await,
        Command::Cost { json } => report_cmds::cost(&cli.config, json).await,
        Command::Compliance { json } => report_cmds::compliance(&cli.config, json).await,
        Command::List { job, target, json } => {
            restore_cmds::list(&cli.config, job, target, json).await
        }
        Command::Restore(args) => restore_cmds::restore(&cli.config, args).await,
        Command::Verify(args) => restore_cmds::verify(&cli.config, args).await,
    }
}

/// Records a CLI operation in the state database's audit log, when one is
/// configured (a failure to record is logged, never fatal).
/// The state database of a CLI command (when one is configured).
fn cli_state(config: &Config) -> Option<Arc<crate::state::StateDb>> {
    config.state_url.clone().map(crate::state::StateDb::open)
}

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
