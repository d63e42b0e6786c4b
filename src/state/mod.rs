//! The state database (tokio-postgres): run history, the append-only audit log,
//! schedule claims and per-job locks shared by every daemon and CLI run.
//!
//! Backups never depend on it: when it is unreachable, records wait in an in-memory
//! outbox and are written, in order, once it answers again; `/health` reports it.
//! Locks are PostgreSQL advisory locks on a dedicated connection, so a process that
//! dies releases its locks with its connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::pg::{DbUrl, pg_message};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Key of the advisory lock that serialises migrations across daemons.
const MIGRATION_LOCK: i64 = 0x5354_5241_5441_0001;

/// A state-database failure.
#[derive(Debug, thiserror::Error)]
#[error("state database {url}: {message}")]
pub struct StateError {
    url: String,
    message: String,
}

pub use crate::domain::RunStatus;

/// One backup run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub job: String,
    pub trigger: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub backup_id: Option<String>,
    pub raw_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub error: Option<String>,
    /// Per target: `ok` or the failure.
    pub targets: BTreeMap<String, String>,
    pub host: String,
}

impl RunRecord {
    /// A run that starts now.
    pub fn start(
        job: &str,
        trigger: &str,
        scheduled_for: Option<DateTime<Utc>>,
        started_at: DateTime<Utc>,
        host: &str,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            job: job.to_owned(),
            trigger: trigger.to_owned(),
            scheduled_for,
            started_at,
            finished_at: None,
            status: RunStatus::Running,
            backup_id: None,
            raw_bytes: None,
            stored_bytes: None,
            error: None,
            targets: BTreeMap::new(),
            host: host.to_owned(),
        }
    }
}

/// This process, as recorded in runs and claims: `hostname:pid`.
pub fn host_id() -> String {
    let host = hostname::get().map_or_else(
        |_| "localhost".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    );
    format!("{host}:{}", std::process::id())
}

/// One audit-log entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub job: Option<String>,
    pub run_id: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone)]
enum Pending {
    Run(RunRecord),
    Audit(AuditEntry),
}

/// Records waiting for the database, oldest first; bounded.
#[derive(Default)]
struct Outbox {
    items: std::collections::VecDeque<Pending>,
    dropped: u64,
}

/// Records kept while the database is unreachable, at most.
pub const OUTBOX_LIMIT: usize = 10_000;
/// Longest wait for one state-database operation (connecting included).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection to the state database with an outbox for when it is down.
///
/// Nothing waits for it: [`StateDb::open`] returns at once and connects (and
/// migrates) in the background, writes go to the outbox and a writer task
/// sends them, and every query gives up after [`OP_TIMEOUT`].
pub struct StateDb {
    url: DbUrl,
    client: Mutex<Option<tokio_postgres::Client>>,
    outbox: StdMutex<Outbox>,
    reachable: AtomicBool,
    /// The first attempt to connect has ended (either way).
    tried: AtomicBool,
    wake: Arc<tokio::sync::Notify>,
    locks: locks::LockPool,
    /// Another daemon was seen claiming slots: runs must not go without the
    /// cross-process lock.
    replicas_seen: AtomicBool,
}

/// A per-job lock held on the shared lock connection; dropping it releases
/// the lock (and a dead process releases all of its locks with its connection).
pub use locks::JobLock;

mod locks;
mod queries;

fn lock_key(job: &str) -> String {
    format!("strata:job:{job}")
}

impl StateDb {
    /// Starts connecting and migrating in the background; the value works at
    /// once and keeps records in memory until the database answers.
    pub fn open(url: DbUrl) -> Arc<Self> {
        let db = Arc::new(Self {
            locks: locks::LockPool::start(url.clone()),
            url,
            client: Mutex::new(None),
            outbox: StdMutex::new(Outbox::default()),
            reachable: AtomicBool::new(false),
            tried: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
            replicas_seen: AtomicBool::new(false),
        });
        let writer = Arc::downgrade(&db);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                let Some(db) = writer.upgrade() else { return };
                let tried = db.bounded(db.ensure()).await;
                db.tried.store(true, Ordering::Relaxed);
                match tried {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(error = %e, "state database unreachable; runs and audit entries are kept in memory until it answers");
                    }
                    Err(_) => {}
                }
                let wake = db.wake.clone();
                drop(db);
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        db
    }

    fn err(&self, message: impl Into<String>) -> StateError {
        StateError {
            url: self.url.to_string(),
            message: message.into(),
        }
    }

    fn pg(&self, e: &tokio_postgres::Error) -> StateError {
        self.err(pg_message(e))
    }

    /// Whether the last attempt to reach the database worked.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Whether a first attempt to connect has ended (before it, the database
    /// is neither reachable nor known to be unreachable).
    pub fn tried(&self) -> bool {
        self.tried.load(Ordering::Relaxed)
    }

    /// Whether another daemon shares this database (seen claiming slots).
    pub fn replicas_seen(&self) -> bool {
        self.replicas_seen.load(Ordering::Relaxed)
    }

    /// Records waiting to be written, and how many were dropped because the
    /// outbox was full.
    pub fn outbox(&self) -> (usize, u64) {
        let o = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        (o.items.len(), o.dropped)
    }

    /// Runs one operation within [`OP_TIMEOUT`]; a database that does not
    /// answer counts as unreachable and its connection is dropped.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(result) => result,
            Err(_) => {
                self.reachable.store(false, Ordering::Relaxed);
                if let Ok(mut guard) = self.client.try_lock() {
                    *guard = None;
                }
                Err(self.err(format!("no answer within {}s", OP_TIMEOUT.as_secs())))
            }
        }
    }

    /// Connects (and migrates) if not connected; then writes the outbox.
    ///
    /// # Errors
    /// The database cannot be reached or migrated.
    pub async fn ensure(&self) -> Result<(), StateError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *guard = None;
            let connected = self.connect_and_migrate().await;
            if connected.is_err() {
                self.reachable.store(false, Ordering::Relaxed);
            }
            // Reachable again only once the outbox below is written, so `/health`
            // never says "ok" while runs kept in memory are still missing.
            *guard = Some(connected?);
        }
        let client = guard.as_ref().expect("connected");
        loop {
            let next = self
                .outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .items
                .front()
                .cloned();
            let Some(item) = next else { break };
            let written = match &item {
                Pending::Run(run) => write_run(client, run).await,
                Pending::Audit(entry) => write_audit(client, entry).await,
            };
            if let Err(e) = written {
                self.reachable.store(false, Ordering::Relaxed);
                *guard = None;
                return Err(self.pg(&e));
            }
            self.outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .items
                .pop_front();
        }
        self.reachable.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn connect_and_migrate(&self) -> Result<tokio_postgres::Client, StateError> {
        let mut client = self
            .url
            .connect()
            .await
            .map_err(|e| self.err(e.to_string()))?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.pg(&e))?;
        let migrated = embedded::migrations::runner().run_async(&mut client).await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        migrated.map_err(|e| self.err(format!("migration failed: {e}")))?;
        Ok(client)
    }

    /// The connection, after [`ensure`](Self::ensure), held until the guard drops.
    async fn connected(&self) -> Result<MappedMutexGuard<'_, tokio_postgres::Client>, StateError> {
        self.ensure().await?;
        MutexGuard::try_map(self.client.lock().await, Option::as_mut)
            .map_err(|_| self.err("not connected"))
    }

    /// Checks the connection now (for `/health`).
    pub async fn ping(&self) -> bool {
        let ok = self
            .bounded(async {
                self.ensure().await?;
                let guard = self.client.lock().await;
                match guard.as_ref() {
                    Some(c) => c.simple_query("SELECT 1").await.map_err(|e| self.pg(&e)),
                    None => Err(self.err("not connected")),
                }
            })
            .await
            .is_ok();
        self.reachable.store(ok, Ordering::Relaxed);
        ok
    }

    fn enqueue(&self, item: Pending) {
        let mut o = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        // A run saved again (started, then finished) replaces its older record.
        if let Pending::Run(run) = &item {
            o.items
                .retain(|p| !matches!(p, Pending::Run(r) if r.id == run.id));
        }
        o.items.push_back(item);
        if o.items.len() > OUTBOX_LIMIT {
            o.items.pop_front();
            o.dropped += 1;
            if o.dropped == 1 || o.dropped % 1000 == 0 {
                tracing::warn!(
                    dropped = o.dropped,
                    limit = OUTBOX_LIMIT,
                    "state database unreachable too long: the oldest records kept in memory are dropped"
                );
            }
        }
        drop(o);
        self.wake.notify_one();
    }

    /// Stores (inserts or updates) a run; never waits for the database (the
    /// writer task sends it, see [`StateDb::sync`]).
    pub fn save_run(&self, run: &RunRecord) {
        self.enqueue(Pending::Run(run.clone()));
    }

    /// Appends to the audit log; never waits for the database.
    pub fn audit(&self, entry: AuditEntry) {
        self.enqueue(Pending::Audit(entry));
    }

    /// Waits up to `within` for the records kept so far to be written; `false`
    /// when some are still waiting (the writer goes on trying).
    pub async fn sync(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.ensure())
            .await
            .is_ok_and(|r| r.is_ok())
            && self.outbox().0 == 0
    }

    /// Takes the job's lock if nobody holds it, on the shared lock connection.
    /// Fails at once when the database is known to be unreachable.
    ///
    /// # Errors
    /// The database is unreachable or does not answer within [`OP_TIMEOUT`].
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<JobLock>, StateError> {
        self.locks
            .try_lock(&lock_key(job))
            .await
            .map_err(|m| self.err(m))
    }
}

async fn write_run(
    client: &tokio_postgres::Client,
    run: &RunRecord,
) -> Result<u64, tokio_postgres::Error> {
    let targets = serde_json::to_value(&run.targets).expect("serialisable");
    let raw = run.raw_bytes.map(|n| n as i64);
    let stored = run.stored_bytes.map(|n| n as i64);
    client
        .execute(
            "INSERT INTO runs (id, job, trigger, scheduled_for, started_at, finished_at, status, backup_id, raw_bytes, stored_bytes, error, targets, host) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET finished_at = EXCLUDED.finished_at, status = EXCLUDED.status, \
               backup_id = EXCLUDED.backup_id, raw_bytes = EXCLUDED.raw_bytes, stored_bytes = EXCLUDED.stored_bytes, \
               error = EXCLUDED.error, targets = EXCLUDED.targets",
            &[
                &run.id,
                &run.job,
                &run.trigger,
                &run.scheduled_for,
                &run.started_at,
                &run.finished_at,
                &run.status.as_str(),
                &run.backup_id,
                &raw,
                &stored,
                &run.error,
                &targets,
                &run.host,
            ],
        )
        .await
}

async fn write_audit(
    client: &tokio_postgres::Client,
    e: &AuditEntry,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO audit_log (at, actor, action, job, run_id, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&e.at, &e.actor, &e.action, &e.job, &e.run_id, &e.detail],
        )
        .await
}
