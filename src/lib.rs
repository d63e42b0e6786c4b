//! strata: a PostgreSQL backup daemon.
//!
//! A backup streams `pg_dump` through compression ([`pipeline::compress`]) and
//! chunked AES-256-GCM encryption ([`pipeline::encrypt`]) into every target of a job
//! at once ([`storage`]), and exists once its [`manifest`] is written last.
//! [`restore`] reverses the flow and verifies every byte before PostgreSQL commits.
//! [`config`] turns `config.yaml` into validated types; [`cli`] is the command line.

pub mod alerts;
pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod cost;
pub mod daemon;
pub mod inventory;
pub mod keys;
pub mod lifecycle;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod refresh;
pub mod restore;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod source;
pub mod state;
pub mod status;
pub mod storage;
pub mod telemetry;
