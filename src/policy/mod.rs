//! Decisions as pure functions of their inputs and `now`: which backups retention
//! keeps, what storage costs, when a schedule is due. Table-tested; no I/O.

pub mod cost;
pub mod retention;
pub mod schedule;

use crate::domain::StorageClass;

/// One lifecycle rule (by object age).
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleRule {
    pub after_days: u32,
    /// `None` means expire (delete).
    pub storage_class: Option<StorageClass>,
}
