//! Runs a pg_dump plain script into a (scratch) database on several connections.
//!
//! The phases follow pg_dump's own order, and each must finish before the
//! next starts:
//!
//! 1. schema (everything before the first data statement), on one connection;
//! 2. data: every `COPY` batch goes to whichever connection is free, so the
//!    tables (and large tables' batches) load side by side; sequence values and
//!    large objects go to the serial connection meanwhile;
//! 3. post-data: runs of index and non-foreign-key constraint statements, and
//!    runs of foreign keys, are spread over the connections, never two at once
//!    on a common table (so they cannot deadlock, as pg_restore arranges it),
//!    largest table first; every other statement runs in order on the serial
//!    connection.
//!
//! Each connection applies the script's `SET`s in effect at the statement it
//! runs. Rows loaded are counted from the server's own `COPY` answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;

use super::rewrite::Rewrite;
use super::script::{Event, Kind, Statement, excerpt};
use crate::pg::DbUrl;
use crate::pipeline::progress::Progress;

/// Serial statements are sent (pipelined) in batches of about this size.
const SQL_BATCH: usize = 1 << 20;
/// Session setting that speeds up loading; nothing persists. More
/// `maintenance_work_mem` / `work_mem` made no index build faster on the bench
/// database (docs/decisions.md), and would take memory the server may not have.
const SESSION: &str = "SET synchronous_commit = off;";

/// Why the script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Connect(crate::pg::SourceError),
    #[error("restoring `{statement}` failed: {message}")]
    Statement {
        statement: String,
        message: String,
        /// The server's SQLSTATE, for callers that react to one (a deadlock).
        code: Option<SqlState>,
    },
    #[error("loading the data of {table} failed: {message}")]
    Copy { table: String, message: String },
    #[error("reading the backup failed: {0}")]
    Input(String),
    #[error("a restore connection stopped unexpectedly: {0}")]
    Worker(String),
}

impl LoadError {
    fn statement(statement: String, e: &tokio_postgres::Error) -> Self {
        Self::Statement {
            statement,
            message: crate::pg::pg_message(e),
            code: e.code().cloned(),
        }
    }
}

/// What was loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rows per table, as the server counted them.
    pub rows: BTreeMap<String, u64>,
    pub statements: u64,
    pub timings: Timings,
}

/// Where a restore's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timings {
    /// Before the first data (schema, on one connection).
    pub schema: f64,
    /// Table data, on every connection.
    pub data: f64,
    /// Index, constraint and foreign-key runs.
    pub indexes: f64,
    /// Everything else after the data (grants, policies, triggers, …).
    pub rest: f64,
}

/// Settings in effect: variable → the `SET` statement that set it.
type Settings = Arc<BTreeMap<String, String>>;

struct Conn {
    client: tokio_postgres::Client,
    applied: HashMap<String, String>,
}

impl Conn {
    async fn open(url: &DbUrl) -> Result<Self, LoadError> {
        let client = url.connect().await.map_err(LoadError::Connect)?;
        client
            .batch_execute(SESSION)
            .await
            .map_err(|e| LoadError::statement(SESSION.into(), &e))?;
        Ok(Self {
            client,
            applied: HashMap::new(),
        })
    }

    /// Brings this session's settings to `wanted`.
    async fn settle(&mut self, wanted: &Settings) -> Result<(), LoadError> {
        let mut sql = String::new();
        for (name, stmt) in wanted.iter() {
            if self.applied.get(name) != Some(stmt) {
                sql.push_str(stmt);
                sql.push('\n');
            }
        }
        if sql.is_empty() {
            return Ok(());
        }
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| LoadError::statement(excerpt(&sql), &e))?;
        for (name, stmt) in wanted.iter() {
            self.applied.insert(name.clone(), stmt.clone());
        }
        Ok(())
    }

    async fn sql(&self, sql: &str) -> Result<(), LoadError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| LoadError::statement(excerpt(sql), &e))
    }

    /// Runs statements in order without waiting for each answer (tokio-postgres
    /// pipelines them), so a long schema costs no round trip per statement;
    /// the first failure is reported with its own statement.
    async fn pipeline(&self, statements: &[String]) -> Result<(), LoadError> {
        let results =
            futures::future::join_all(statements.iter().map(|s| self.client.batch_execute(s)))
                .await;
        for (stmt, result) in statements.iter().zip(results) {
            if let Err(e) = result {
                return Err(LoadError::statement(excerpt(stmt), &e));
            }
        }
        Ok(())
    }

    async fn copy(&self, table: &str, sql: &str, data: Vec<Bytes>) -> Result<u64, LoadError> {
        let fail = |e: tokio_postgres::Error| LoadError::Copy {
            table: table.to_owned(),
            message: crate::pg::pg_message(&e),
        };
        let sink = self.client.copy_in::<_, Bytes>(sql).await.map_err(fail)?;
        futures::pin_mut!(sink);
        for piece in data {
            sink.feed(piece).await.map_err(fail)?;
        }
        sink.as_mut().finish().await.map_err(fail)
    }
}

/// One unit of parallel work and the tables it locks.
struct Task {
    work: Vec<Work>,
    settings: Settings,
    locks: Vec<String>,
    size: u64,
    /// A foreign key waits until every index and constraint on the table it
    /// references is built.
    after: Option<String>,
}

enum Work {
    Sql(String),
    Copy {
        table: String,
        sql: String,
        data: Vec<Bytes>,
    },
}

struct Finished {
    conn: Conn,
    result: Result<Vec<(String, u64)>, LoadError>,
    task: Task,
}

async fn execute(conn: &mut Conn, task: &mut Task) -> Result<Vec<(String, u64)>, LoadError> {
    conn.settle(&task.settings).await?;
    let mut rows = Vec::new();
    for work in &mut task.work {
        match work {
            Work::Sql(sql) => conn.sql(sql).await?,
            Work::Copy { table, sql, data } => {
                let n = conn.copy(table, sql, std::mem::take(data)).await?;
                rows.push((table.clone(), n));
            }
        }
    }
    Ok(rows)
}

/// Connections doing parallel work.
struct Pool {
    idle: Vec<Conn>,
    running: JoinSet<Finished>,
    held: HashMap<String, usize>,
    /// Tables with an index or constraint (not a foreign key) building now.
    building: HashMap<String, usize>,
    rows: BTreeMap<String, u64>,
    /// Tasks that lost a deadlock: run again alone.
    retry: Vec<Task>,
}

fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

fn is_deadlock(e: &LoadError) -> bool {
    matches!(e, LoadError::Statement { code: Some(code), .. } if *code == SqlState::T_R_DEADLOCK_DETECTED)
}

impl Pool {
    fn spawn(&mut self, mut task: Task) {
        let mut conn = self.idle.pop().expect("an idle connection");
        for l in &task.locks {
            *self.held.entry(l.clone()).or_default() += 1;
            if task.after.is_none() {
                *self.building.entry(l.clone()).or_default() += 1;
            }
        }
        self.running.spawn(async move {
            let result = execute(&mut conn, &mut task).await;
            Finished { conn, result, task }
        });
    }

    async fn reap(&mut self) -> Result<(), LoadError> {
        let Some(done) = self.running.join_next().await else {
            return Ok(());
        };
        let done = done.map_err(|e| LoadError::Worker(e.to_string()))?;
        for l in &done.task.locks {
            release(&mut self.held, l);
            if done.task.after.is_none() {
                release(&mut self.building, l);
            }
        }
        self.idle.push(done.conn);
        match done.result {
            Ok(rows) => {
                for (t, n) in rows {
                    *self.rows.entry(t).or_default() += n;
                }
                Ok(())
            }
            Err(e) if is_deadlock(&e) && done.task.locks.len() > 1 => {
                tracing::debug!(error = %e, "retrying a statement that lost a deadlock");
                self.retry.push(done.task);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `task` on the next free connection.
    async fn submit(&mut self, task: Task) -> Result<(), LoadError> {
        while self.idle.is_empty() {
            self.reap().await?;
        }
        self.spawn(task);
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), LoadError> {
        while !self.running.is_empty() {
            self.reap().await?;
        }
        Ok(())
    }

    /// Runs tasks, never two on a common table at once and no foreign key
    /// before the indexes of the table it references, largest first; returns
    /// when all are done.
    async fn run_all(&mut self, mut tasks: Vec<Task>) -> Result<(), LoadError> {
        tasks.sort_by_key(|t| std::cmp::Reverse(t.size));
        while !tasks.is_empty() {
            if self.idle.is_empty() {
                self.reap().await?;
                continue;
            }
            let ready = |t: &Task| {
                t.locks.iter().all(|l| !self.held.contains_key(l))
                    && t.after.as_ref().is_none_or(|r| {
                        !self.building.contains_key(r)
                            && !tasks
                                .iter()
                                .any(|p| p.after.is_none() && p.locks.contains(r))
                    })
            };
            let free = tasks.iter().position(ready);
            match free {
                Some(i) => self.spawn(tasks.remove(i)),
                None if self.running.is_empty() => {
                    // Nothing runs and nothing is ready: an index first.
                    let i = tasks.iter().position(|t| t.after.is_none()).unwrap_or(0);
                    self.spawn(tasks.remove(i));
                }
                None => self.reap().await?,
            }
        }
        self.drain().await?;
        while let Some(task) = self.retry.pop() {
            self.submit(task).await?;
            self.drain().await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Schema,
    Data,
    PostData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Indexes,
    ForeignKeys,
}

struct Loader<'a> {
    rewrite: &'a Rewrite,
    progress: &'a Progress,
    serial: Conn,
    pool: Pool,
    settings: Settings,
    /// Serial statements not yet sent, and their size.
    pending: Vec<String>,
    pending_bytes: usize,
    phase: Phase,
    run: Vec<Task>,
    run_kind: Option<RunKind>,
    /// The COPY being read: table, statement, bytes so far, data kept for a
    /// serial COPY.
    copy: Option<(String, String, u64, Option<Vec<Bytes>>)>,
    /// Data bytes per table (to start the largest index builds first).
    sizes: HashMap<String, u64>,
    statements: u64,
    timings: Timings,
    /// When the current phase began.
    phase_started: std::time::Instant,
}

impl Loader<'_> {
    async fn flush(&mut self) -> Result<(), LoadError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let statements = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.serial.settle(&self.settings).await?;
        self.serial.pipeline(&statements).await
    }

    async fn queue_serial(&mut self, sql: String) -> Result<(), LoadError> {
        self.pending_bytes += sql.len();
        self.pending.push(sql);
        if self.pending_bytes >= SQL_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Finishes the parallel run being collected.
    async fn end_run(&mut self) -> Result<(), LoadError> {
        if self.run.is_empty() {
            return Ok(());
        }
        let tasks = std::mem::take(&mut self.run);
        let what = match self.run_kind {
            Some(RunKind::ForeignKeys) => "foreign keys",
            _ => "indexes and constraints",
        };
        self.progress
            .set_detail(format!("building {what} ({} statements)", tasks.len()));
        self.flush().await?;
        let started = std::time::Instant::now();
        self.pool.run_all(tasks).await?;
        self.timings.indexes += started.elapsed().as_secs_f64();
        self.run_kind = None;
        Ok(())
    }

    async fn enter(&mut self, phase: Phase) -> Result<(), LoadError> {
        if self.phase == phase {
            return Ok(());
        }
        // Everything before must be done: flush and wait for the pool.
        self.flush().await?;
        self.pool.drain().await?;
        let spent = self.phase_started.elapsed().as_secs_f64();
        match self.phase {
            Phase::Schema => self.timings.schema += spent,
            Phase::Data => self.timings.data += spent,
            Phase::PostData => {}
        }
        self.phase_started = std::time::Instant::now();
        self.phase = phase;
        Ok(())
    }

    async fn statement(&mut self, stmt: Statement) -> Result<(), LoadError> {
        self.statements += 1;
        let Some(sql) = self.rewrite.apply(&stmt).map(std::borrow::Cow::into_owned) else {
            return Ok(());
        };
        match &stmt.kind {
            Kind::Set { name } => {
                self.flush().await?;
                let mut s = (*self.settings).clone();
                s.insert(name.clone(), sql);
                self.settings = Arc::new(s);
            }
            Kind::Copy { table } => {
                match self.phase {
                    Phase::Schema => self.enter(Phase::Data).await?,
                    Phase::Data => {}
                    Phase::PostData => {
                        self.end_run().await?;
                        self.flush().await?;
                    }
                }
                self.progress.set_detail(format!("loading {table}"));
                let serial = (self.phase == Phase::PostData).then(Vec::new);
                self.copy = Some((table.clone(), sql, 0, serial));
            }
            Kind::SequenceSet | Kind::LargeObjectData => {
                if self.phase == Phase::Schema {
                    self.enter(Phase::Data).await?;
                }
                if self.phase == Phase::PostData {
                    self.end_run().await?;
                }
                self.queue_serial(sql).await?;
            }
            Kind::Index { table } | Kind::Constraint { table } => {
                self.parallel(RunKind::Indexes, sql, vec![table.clone()], None)
                    .await?;
            }
            Kind::ForeignKey { table, references } => {
                let locks = if table == references {
                    vec![table.clone()]
                } else {
                    vec![table.clone(), references.clone()]
                };
                self.parallel(RunKind::ForeignKeys, sql, locks, Some(references.clone()))
                    .await?;
            }
            Kind::Comment if self.phase == Phase::PostData && !self.run.is_empty() => {
                let last = self.run.last_mut().expect("run not empty");
                last.work.push(Work::Sql(sql));
            }
            Kind::Comment | Kind::Other => {
                if self.phase == Phase::Data {
                    self.enter(Phase::PostData).await?;
                }
                self.end_run().await?;
                self.queue_serial(sql).await?;
            }
        }
        Ok(())
    }

    async fn parallel(
        &mut self,
        kind: RunKind,
        sql: String,
        locks: Vec<String>,
        after: Option<String>,
    ) -> Result<(), LoadError> {
        self.enter(Phase::PostData).await?;
        // Foreign keys right after indexes join their run (each waits for the
        // table it references); anything else starts a new run.
        let joins = self.run_kind == Some(kind)
            || (self.run_kind == Some(RunKind::Indexes) && kind == RunKind::ForeignKeys);
        if !joins {
            self.end_run().await?;
            self.flush().await?;
        }
        self.run_kind = Some(kind);
        let size = locks
            .iter()
            .map(|t| self.sizes.get(t).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        self.run.push(Task {
            work: vec![Work::Sql(sql)],
            settings: self.settings.clone(),
            locks,
            size,
            after,
        });
        Ok(())
    }

    async fn data(&mut self, parts: Vec<Bytes>) -> Result<(), LoadError> {
        let Some((table, sql, bytes, serial)) = &mut self.copy else {
            return Err(LoadError::Input("COPY data outside a COPY".into()));
        };
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        *bytes += n;
        *self.sizes.entry(table.clone()).or_default() += n;
        if let Some(kept) = serial {
            kept.extend(parts);
            return Ok(());
        }
        let task = Task {
            work: vec![Work::Copy {
                table: table.clone(),
                sql: sql.clone(),
                data: parts,
            }],
            settings: self.settings.clone(),
            locks: Vec::new(),
            size: n,
            after: None,
        };
        self.pool.submit(task).await
    }

    async fn copy_end(&mut self) -> Result<(), LoadError> {
        let Some((table, sql, _, serial)) = self.copy.take() else {
            return Err(LoadError::Input("end of COPY data outside a COPY".into()));
        };
        if let Some(data) = serial {
            self.serial.settle(&self.settings).await?;
            let n = self.serial.copy(&table, &sql, data).await?;
            *self.pool.rows.entry(table).or_default() += n;
        }
        Ok(())
    }
}

/// What the script reader hands over: events, or why reading stopped.
pub type Input = Result<Vec<Event>, String>;

/// Loads the script arriving on `input` into `dest` with `jobs` connections
/// (plus one for serial work). Returns once everything ran, or at the first
/// failure (the caller drops the scratch database).
///
/// # Errors
/// A connection failed, a statement or COPY failed, or the input did.
pub async fn load(
    dest: &DbUrl,
    mut input: mpsc::Receiver<Input>,
    jobs: usize,
    rewrite: &Rewrite,
    progress: &Progress,
) -> Result<Loaded, LoadError> {
    let mut idle = Vec::new();
    for _ in 0..jobs.max(1) {
        idle.push(Conn::open(dest).await?);
    }
    let mut l = Loader {
        rewrite,
        progress,
        serial: Conn::open(dest).await?,
        pool: Pool {
            idle,
            running: JoinSet::new(),
            held: HashMap::new(),
            building: HashMap::new(),
            rows: BTreeMap::new(),
            retry: Vec::new(),
        },
        settings: Arc::new(BTreeMap::new()),
        pending: Vec::new(),
        pending_bytes: 0,
        phase: Phase::Schema,
        run: Vec::new(),
        run_kind: None,
        copy: None,
        sizes: HashMap::new(),
        statements: 0,
        timings: Timings::default(),
        phase_started: std::time::Instant::now(),
    };
    progress.set_detail("creating the schema");
    while let Some(batch) = input.recv().await {
        for event in batch.map_err(LoadError::Input)? {
            match event {
                Event::Statement(s) => l.statement(s).await?,
                Event::CopyData(parts) => l.data(parts).await?,
                Event::CopyEnd => l.copy_end().await?,
            }
        }
    }
    l.end_run().await?;
    l.flush().await?;
    l.pool.drain().await?;
    let spent = l.phase_started.elapsed().as_secs_f64();
    match l.phase {
        Phase::Schema => l.timings.schema += spent,
        Phase::Data => l.timings.data += spent,
        Phase::PostData => l.timings.rest += (spent - l.timings.indexes).max(0.0),
    }
    tracing::info!(
        schema_s = l.timings.schema,
        data_s = l.timings.data,
        indexes_s = l.timings.indexes,
        rest_s = l.timings.rest,
        jobs,
        "restore loaded"
    );
    Ok(Loaded {
        rows: std::mem::take(&mut l.pool.rows),
        statements: l.statements,
        timings: l.timings,
    })
}
