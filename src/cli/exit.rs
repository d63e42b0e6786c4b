//! The one mapping from a failure to the process's exit status, the same in
//! every command: 0 done, 1 failed, 2 bad usage or config (an unknown job or
//! target included), 75 not yet (an archived object is thawing).

use std::error::Error;

use crate::app::UnknownJob;
use crate::commands::restore::RestoreError;
use crate::config::ConfigError;

/// The command did not do what it was asked.
pub const FAILED: u8 = 1;
/// The command line or the config is wrong; nothing was attempted.
pub const USAGE: u8 = 2;
/// Not yet: an archived object is thawing; run the same command again later
/// (`EX_TEMPFAIL`).
pub const NOT_YET: u8 = 75;
/// `wal-fetch` could not read the archive (or was misconfigured): PostgreSQL
/// stops recovery on any status above 125 instead of taking the file as
/// missing and ending recovery early.
pub const STOP_RECOVERY: u8 = 126;

/// Failure of a command: exit status plus message.
pub struct Failure(pub u8, pub String);

impl<E: Error + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(status_of(&e), e.to_string())
    }
}

/// The exit status for `e`, from the first cause in its chain that decides it.
pub fn status_of(e: &(dyn Error + 'static)) -> u8 {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err.is::<UnknownJob>() || err.is::<ConfigError>() {
            return USAGE;
        }
        if err
            .downcast_ref::<RestoreError>()
            .is_some_and(RestoreError::is_thawing)
        {
            return NOT_YET;
        }
        cause = err.source();
    }
    FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::backup::RunError;
    use crate::commands::prune::PruneError;
    use crate::commands::refresh::RefreshError;

    fn unknown() -> UnknownJob {
        UnknownJob {
            job: "nope".into(),
            known: "app".into(),
        }
    }

    #[test]
    fn an_unknown_job_is_a_usage_error_whichever_command_meets_it() {
        assert_eq!(status_of(&unknown()), USAGE);
        assert_eq!(status_of(&RunError::from(unknown())), USAGE);
        assert_eq!(status_of(&RestoreError::from(unknown())), USAGE);
        assert_eq!(status_of(&RefreshError::from(unknown())), USAGE);
        assert_eq!(status_of(&PruneError::from(unknown())), USAGE);
        // The message is the unknown job's, once.
        let f = Failure::from(RestoreError::from(unknown()));
        assert_eq!(f.1, "unknown job 'nope' (configured: app)");
    }

    #[test]
    fn anything_else_failed() {
        assert_eq!(status_of(&std::io::Error::other("disk")), FAILED);
        assert_eq!(status_of(&RunError::Panicked("x".into())), FAILED);
    }
}
