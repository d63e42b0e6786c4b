//! What strata does, one module per command; the CLI and the daemon call the
//! same functions.

pub mod backup;
pub mod compliance;
pub mod inventory;
pub mod lifecycle;
pub mod prune;
pub mod refresh;
pub mod restore;
pub mod status;
pub mod wal;
