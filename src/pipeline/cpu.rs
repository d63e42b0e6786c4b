//! Where the pipeline's CPU work runs: on threads of its own, never on the
//! async workers (which serve `/health` and drive the network) nor on tokio's
//! blocking pool (whose threads tokio reuses for file I/O and DNS, and which
//! would keep the background priority set below). Block compression goes to
//! a pool with a thread per core; long-lived stages (sealing, counting rows,
//! reading a restore) get a thread each. Every such thread runs as
//! SCHED_BATCH at the lowest priority, so PostgreSQL and the API answer first
//! on a saturated machine.

use std::sync::OnceLock;

use tokio::sync::oneshot;

/// The number of cores (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// A CPU stage ended without a result (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the {0} stage stopped unexpectedly (a bug; see the log)")]
pub struct Stopped(pub &'static str);

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores())
            .thread_name(|i| format!("strata-cpu-{i}"))
            .start_handler(|_| background_priority())
            .build()
            .expect("a thread pool can be built")
    })
}

/// Runs `f` on the compression pool; the result (or [`Stopped`] if it
/// panicked) arrives on the returned channel.
pub fn spawn<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, Stopped>> {
    let (tx, rx) = oneshot::channel();
    pool().spawn(move || {
        let _ = tx.send(f());
    });
    async move { rx.await.map_err(|_| Stopped(what)) }
}

/// Runs a long-lived stage on a thread of its own.
pub fn thread<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, Stopped>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("strata-{what}"))
        .spawn(move || {
            background_priority();
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, stage = what, "cannot start a thread");
    }
    async move { rx.await.map_err(|_| Stopped(what)) }
}

/// Puts the calling thread in the background: SCHED_BATCH at the lowest nice
/// value. Lowering one's own priority needs no privilege; a failure only costs
/// responsiveness, so it is logged and ignored.
fn background_priority() {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    ) {
        tracing::debug!(error = ?e, "could not lower the priority of a pipeline thread");
    }
}
