//! Command line: parse arguments, run one command, print a result and map it to an
//! exit status (0 done, 1 failed, 2 bad usage or config, 75 not yet).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::app::Strata;
use crate::config::Config;
use crate::keys::{self, MasterKey};
use crate::pipeline::encrypt::Decryptor;
use crate::source::DbUrl;

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
    Restore {
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
        #[arg(long)]
        json: bool,
    },
    /// Re-read a backup from every target; optionally restore it into a scratch
    /// database on a server.
    Verify {
        job: String,
        #[arg(long, default_value = "latest")]
        backup: String,
        #[arg(long, env = "STRATA_VERIFY_INTO", hide_env_values = true)]
        restore_into: Option<String>,
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

/// Failure of a command: message plus exit status.
struct Failure(u8, String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(1, e.to_string())
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
    Config::load(path).map_err(|e| Failure(2, e.to_string()))
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
            crate::daemon::run(config).await?;
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
            Ok(())
        }
        Command::Next { job, from, count } => {
            let config = load(&cli.config)?;
            let job = config
                .job(&job)
                .ok_or_else(|| Failure(2, format!("unknown job '{job}'")))?;
            let schedule = job
                .schedule
                .as_ref()
                .ok_or_else(|| Failure(1, format!("job '{}' has no schedule", job.name)))?;
            let start = from.map_or_else(Utc::now, |t| t.with_timezone(&Utc));
            for t in crate::schedule::upcoming(schedule, config.timezone, start, count) {
                println!("{}  {}", t.to_rfc3339(), t.with_timezone(&Utc).to_rfc3339());
            }
            Ok(())
        }
        Command::Backup { job, json } => {
            let config = load(&cli.config)?;
            let state = match &config.state_url {
                Some(url) => Some(crate::state::StateDb::open(url.clone()).await),
                None => None,
            };
            let strata = Strata::build(config).await;
            strata.job(&job)?;
            // One run per job, whoever starts it: the daemon holds the same lock.
            let _lock = match &state {
                Some(s) => match s.try_lock_job(&job).await {
                    Ok(Some(lock)) => Some(lock),
                    Ok(None) => {
                        return Err(Failure(
                            1,
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
            let mut run = crate::state::RunRecord::start(
                &job,
                "cli",
                None,
                Utc::now(),
                &crate::state::host_id(),
            );
            // Ctrl-C or SIGTERM aborts cleanly: no partial object, no manifest.
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn({
                let cancel = cancel.clone();
                async move {
                    crate::daemon::stop_signal().await;
                    cancel.cancel();
                }
            });
            if let Some(s) = &state {
                s.save_run(&run).await;
            }
            let result = crate::runner::backup(&strata, &job, run.started_at, &cancel).await;
            run.finish(&result, Utc::now());
            if let Some(s) = &state {
                s.save_run(&run).await;
                s.audit(crate::state::AuditEntry {
                    at: Utc::now(),
                    actor,
                    action: "backup".into(),
                    job: Some(job.clone()),
                    run_id: Some(run.id.clone()),
                    detail: serde_json::json!({ "status": run.status.as_str(), "backup_id": run.backup_id, "error": run.error }),
                })
                .await;
            }
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
                    1,
                    format!(
                        "backup {} is degraded: target(s) {} failed; the others hold a valid copy",
                        report.manifest.backup_id,
                        report.failed.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        }
        Command::List { job, target, json } => {
            let strata = Strata::build(load(&cli.config)?).await;
            let job_cfg = strata.job(&job)?;
            let names = match target {
                Some(t) if job_cfg.targets.contains(&t) => vec![t],
                Some(t) => {
                    return Err(Failure(
                        2,
                        format!("target '{t}' is not one of job '{job}''s targets"),
                    ));
                }
                None => job_cfg.targets.clone(),
            };
            let mut rows = Vec::new();
            for name in names {
                let entries =
                    crate::catalog::list(strata.target(&name).as_ref(), strata.prefix(&name), &job)
                        .await?;
                for e in entries {
                    rows.push((name.clone(), e));
                }
            }
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(t, e)| serde_json::json!({"target": t, "key": e.object_key(), "manifest": e.manifest}))
                    .collect();
                print_json(&items);
            } else {
                for (t, e) in &rows {
                    let m = &e.manifest;
                    println!(
                        "{}  {}  {:>10}  {:>10}  {}  {}",
                        m.backup_id,
                        m.started_at.to_rfc3339(),
                        mib(m.raw_bytes),
                        mib(m.stored_bytes),
                        t,
                        e.object_key()
                    );
                }
            }
            Ok(())
        }
        Command::Restore {
            job,
            backup,
            from,
            into,
            replace,
            json,
        } => {
            let into: DbUrl = into.parse()?;
            let strata = Strata::build(load(&cli.config)?).await;
            let result =
                crate::restore::restore(&strata, &job, &backup, from.as_deref(), &into, replace)
                    .await;
            let detail = match &result {
                Ok(r) => {
                    serde_json::json!({ "backup_id": r.backup_id, "into": r.database, "ok": true })
                }
                Err(e) => {
                    serde_json::json!({ "backup": backup, "into": into.to_string(), "ok": false, "error": e.to_string() })
                }
            };
            audit_cli(strata.config(), "restore", &job, detail).await;
            let report = result?;
            if json {
                print_json(&report);
            } else {
                println!(
                    "restored {} from {} into {}: {} tables, {} rows, verified, in {:.1} s",
                    report.backup_id,
                    report.target,
                    report.database,
                    report.tables,
                    report.rows,
                    report.seconds
                );
            }
            Ok(())
        }
        Command::Verify {
            job,
            backup,
            restore_into,
            json,
        } => {
            let server = restore_into.map(|u| u.parse::<DbUrl>()).transpose()?;
            let strata = Strata::build(load(&cli.config)?).await;
            let result = crate::restore::verify(&strata, &job, &backup, server.as_ref()).await;
            let detail = match &result {
                Ok(r) => {
                    serde_json::json!({ "backup_id": r.backup_id, "ok": r.ok(), "targets": r.targets, "restore": r.restore })
                }
                Err(e) => {
                    serde_json::json!({ "backup": backup, "ok": false, "error": e.to_string() })
                }
            };
            audit_cli(strata.config(), "verify", &job, detail).await;
            let report = result?;
            if json {
                print_json(&report);
            } else {
                for (t, r) in &report.targets {
                    println!("{} on {t}: {r}", report.backup_id);
                }
                if let Some(r) = &report.restore {
                    println!("{} restore test: {r}", report.backup_id);
                }
            }
            if report.ok() {
                Ok(())
            } else {
                Err(Failure(
                    1,
                    format!("verification of {} failed", report.backup_id),
                ))
            }
        }
    }
}

/// Records a CLI operation in the state database's audit log, when one is
/// configured (a failure to record is logged, never fatal).
async fn audit_cli(config: &Config, action: &str, job: &str, detail: serde_json::Value) {
    let Some(url) = &config.state_url else { return };
    let state = crate::state::StateDb::open(url.clone()).await;
    state
        .audit(crate::state::AuditEntry {
            at: Utc::now(),
            actor: cli_actor(),
            action: action.into(),
            job: Some(job.to_owned()),
            run_id: None,
            detail,
        })
        .await;
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
