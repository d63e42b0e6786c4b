//! strata: a PostgreSQL backup daemon.
//!
//! The modules are layers; each imports only the ones listed before it
//! (`docs/architecture.md` draws them and the data flow of a backup and a restore):
//!
//! - [`keys`], [`telemetry`]: key files and the keyring; logging set-up.
//! - [`domain`]: what a backup is (manifest, object layout, ids, formats): types
//!   and pure functions, no I/O.
//! - [`pg`]: PostgreSQL: URLs and TLS, client tools, `pg_dump`, globals, quoting.
//! - [`storage`]: targets (local disk, S3) and their uploads.
//! - [`pipeline`]: compression, encryption, the backup and restore streams, progress.
//! - [`policy`]: retention, cost, schedules: pure, given `now`.
//! - [`config`]: `config.yaml` into validated types.
//! - [`metrics`], [`state`], [`alerts`]: Prometheus registry; the state
//!   database; alert channels and their de-duplication.
//! - [`app`], [`catalog`]: config plus live targets; listing and selecting backups.
//! - [`commands`]: backup, restore, verify, refresh, prune, lifecycle, cost,
//!   compliance, status; [`run`]: one backup run's record, audit and guarded
//!   execution, for the daemon and the CLI alike.
//! - [`daemon`]: schedules, periodic checks, alerts; [`http`]: the API;
//!   [`cli`]: arguments, dispatch and output.

pub mod keys;
pub mod telemetry;

pub mod alerts;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod policy;
pub mod run;
pub mod state;
pub mod storage;
