//! strata: a PostgreSQL backup daemon.
//!
//! A backup streams `pg_dump` through compression ([`pipeline::compress`]) and
//! chunked AES-256-GCM encryption ([`pipeline::encrypt`]) into every target of a job
//! at once ([`storage`]), and exists once its [`manifest`] is written last.
//! [`restore`] reverses the flow and verifies every byte before PostgreSQL commits.
//! [`config`] turns `config.yaml` into validated types; [`cli`] is the command line.

pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod restore;
pub mod runner;
pub mod schedule;
pub mod source;
pub mod state;
pub mod storage;
pub mod telemetry;
