//! Progress of long work (backup, restore, verify): bytes done against an
//! estimate, rate, elapsed time, time left, and what is happening now (the
//! table being loaded). The CLI shows it as one updating line on a terminal,
//! as JSON events on stderr with `--json`, and not at all otherwise; the daemon
//! shows a running backup's progress in `/health` and
//! `strata_backup_progress_bytes{job}`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Progress of one operation, updated by the work and read by whoever shows it.
#[derive(Debug)]
pub struct Progress {
    operation: String,
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    detail: Mutex<String>,
}

/// A reading of [`Progress`].
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Snapshot {
    pub operation: String,
    pub bytes: u64,
    /// The estimate (0 when unknown).
    pub total_bytes: u64,
    pub bytes_per_second: f64,
    pub elapsed_seconds: f64,
    pub eta_seconds: Option<f64>,
    pub detail: String,
}

impl Progress {
    /// Starts counting `operation` (e.g. `restore prod_backup_20250101_030000`).
    pub fn new(operation: impl Into<String>, total: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            operation: operation.into(),
            started: Instant::now(),
            total: AtomicU64::new(total.unwrap_or(0)),
            done: AtomicU64::new(0),
            detail: Mutex::new(String::new()),
        })
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the estimate of the whole.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Sets the estimate unless one is known (a caller doing more than this
    /// step set it for the whole).
    pub fn set_total_if_unknown(&self, total: u64) {
        let _ = self
            .total
            .compare_exchange(0, total, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// What is happening now.
    pub fn set_detail(&self, detail: impl Into<String>) {
        *self
            .detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = detail.into();
    }

    /// Bytes done so far.
    pub fn bytes(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        let elapsed = self.started.elapsed().as_secs_f64();
        let bytes = self.bytes();
        let total = self.total.load(Ordering::Relaxed);
        let rate = if elapsed > 0.0 {
            bytes as f64 / elapsed
        } else {
            0.0
        };
        let eta = (total > bytes && rate > 0.0).then(|| (total - bytes) as f64 / rate);
        Snapshot {
            operation: self.operation.clone(),
            bytes,
            total_bytes: total,
            bytes_per_second: rate,
            elapsed_seconds: elapsed,
            eta_seconds: eta,
            detail: self
                .detail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1_048_576.0)
}

impl Snapshot {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        let mut out = format!("{}: {}", self.operation, mib(self.bytes as f64));
        if self.total_bytes > 0 {
            let pct = (self.bytes as f64 / self.total_bytes as f64 * 100.0).min(100.0);
            out.push_str(&format!(
                " of ~{} ({pct:.0}%)",
                mib(self.total_bytes as f64)
            ));
        }
        out.push_str(&format!(
            ", {}/s, {:.0} s",
            mib(self.bytes_per_second),
            self.elapsed_seconds
        ));
        if let Some(eta) = self.eta_seconds {
            out.push_str(&format!(", ~{eta:.0} s left"));
        }
        if !self.detail.is_empty() {
            out.push_str(&format!(" - {}", self.detail));
        }
        out
    }
}

/// How the CLI shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Not a terminal: nothing.
    Quiet,
    /// One line on stderr, redrawn.
    Terminal,
    /// JSON lines on stderr (`--json`).
    Json,
}

impl Display {
    /// `Json` with `--json`, `Terminal` when stderr is one, else `Quiet`.
    pub fn choose(json: bool) -> Self {
        if json {
            Self::Json
        } else if std::io::stderr().is_terminal() {
            Self::Terminal
        } else {
            Self::Quiet
        }
    }
}

/// Shows a [`Progress`] every second until dropped.
pub struct Reporter {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reporter {
    /// Starts showing `progress` as `display` says.
    pub fn start(progress: Arc<Progress>, display: Display) -> Self {
        if display == Display::Quiet {
            return Self {
                stop: None,
                task: None,
            };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => show(&progress.snapshot(), display, false),
                    _ = &mut rx => {
                        show(&progress.snapshot(), display, true);
                        return;
                    }
                }
            }
        });
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Shows the final state and stops.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn show(s: &Snapshot, display: Display, last: bool) {
    let mut err = std::io::stderr().lock();
    match display {
        Display::Quiet => {}
        Display::Terminal => {
            // Carriage return and clear-to-end redraw the same line.
            let _ = write!(err, "\r\x1b[K{}", s.line());
            if last {
                let _ = writeln!(err);
            }
        }
        Display::Json => {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["event"] = serde_json::Value::from(if last { "done" } else { "progress" });
            let _ = writeln!(err, "{v}");
        }
    }
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_how_far_how_fast_and_what() {
        let s = Snapshot {
            operation: "restore b1".into(),
            bytes: 50 << 20,
            total_bytes: 200 << 20,
            bytes_per_second: 10.0 * 1_048_576.0,
            elapsed_seconds: 5.0,
            eta_seconds: Some(15.0),
            detail: "loading public.results".into(),
        };
        assert_eq!(
            s.line(),
            "restore b1: 50.0 MiB of ~200.0 MiB (25%), 10.0 MiB/s, 5 s, ~15 s left - loading public.results"
        );
    }

    #[test]
    fn the_estimate_gives_the_time_left() {
        let p = Progress::new("backup", Some(1000));
        p.add(250);
        p.set_detail("dumping");
        let s = p.snapshot();
        assert_eq!(
            (s.bytes, s.total_bytes, s.detail.as_str()),
            (250, 1000, "dumping")
        );
        assert!(s.eta_seconds.is_some_and(|e| e > 0.0));
        p.add(10_000);
        assert_eq!(
            p.snapshot().eta_seconds,
            None,
            "past the estimate: no time left shown"
        );
    }
}
