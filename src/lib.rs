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
//! - [`metrics`], [`state`]: Prometheus registry; the state database.
//! - [`app`], [`catalog`]: config plus live targets; listing and selecting backups.
//! - [`commands`]: backup, restore, verify, refresh, prune, lifecycle, cost,
//!   compliance, status.
//! - [`daemon`]: schedules, periodic checks, alerts; [`http`]: the API;
//!   [`cli`]: arguments, dispatch and output.

pub mod keys;
pub mod telemetry;

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
pub mod state;
pub mod storage;
