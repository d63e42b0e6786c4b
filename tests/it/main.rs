//! Integration tests against real servers: PostgreSQL on 127.0.0.1:5432 and the moto
//! and Garage S3 servers started by `scripts/test`.

mod cluster;
mod helpers;
mod proxy;

mod anywhere;
mod architecture;
mod cli;
mod conformance;
mod daemon;
mod deploy;
mod failures;
mod fuzzed;
mod hostile;
mod operations;
mod pitr;
mod resilience;
mod retention;
mod roundtrip;
mod tls;
mod wal;
mod walkthrough;
