//! One backup end to end: snapshot, pg_dump, stream into every target, check
//! pg_dump's exit, complete uploads, write manifests last.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Datelike, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::{Strata, UnknownJob};
use crate::config::{JobConfig, ReadBack};
use crate::domain::DumpFormat;
use crate::domain::RunStatus;
use crate::domain::manifest::{
    EncryptionInfo, FORMAT_VERSION, GlobalsRecord, Layout, Manifest, TargetRecord,
};
use crate::keys::MasterKey;
use crate::pg::{self, PgDump, SourceError};
use crate::pipeline::encrypt::{CryptoError, Encryptor};
use crate::pipeline::progress::Progress;
use crate::pipeline::{self, PipelineError, TargetUpload};
use crate::storage::{StorageError, Target};

mod base;

/// How a run is steered from outside: cancellation (shutdown, deadline) and
/// where its progress goes.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    pub cancel: CancellationToken,
    pub progress: Option<Arc<Progress>>,
}

/// Why a backup did not happen at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    UnknownJob(#[from] UnknownJob),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("encryption failed: {0}")]
    Crypto(#[from] CryptoError),
    #[error("backup {backup_id} and 99 more of the same second already exist on target '{target}'")]
    Exists { backup_id: String, target: String },
    #[error("no target holds the backup: {}", .0.join("; "))]
    NoTarget(Vec<String>),
    #[error("refresh before the backup failed (the database is unchanged): {0}")]
    Refresh(String),
    #[error("the run took longer than its timeout of {} and was cancelled (jobs.*.timeout)", humantime::format_duration(*.0))]
    TimedOut(std::time::Duration),
    #[error("the run panicked: {0}")]
    Panicked(String),
    #[error("{0}")]
    Physical(String),
}

impl RunError {
    /// The run was stopped on purpose (shutdown), not by a fault.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Pipeline(PipelineError::Cancelled))
    }
}

/// A backup that exists on at least one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    pub manifest: Manifest,
    /// Targets that failed, with the reason; empty means complete.
    pub failed: BTreeMap<String, String>,
    pub duration_seconds: f64,
}

impl BackupReport {
    /// Every target holds the backup.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// A job's whole run, whoever starts it: the development refresh first (when
/// the job has one), then the backup, then the read-back of what was stored
/// (`verify.read_back`: always, or weekly on Sundays in the job's zone). A copy
/// that fails its read-back makes the run degraded.
///
/// # Errors
/// See [`backup`]; a failed refresh fails the run before anything is dumped.
pub async fn run_job(
    strata: &Strata,
    job_name: &str,
    now: DateTime<Utc>,
    ctl: &RunControl,
) -> Result<BackupReport, RunError> {
    let job = strata.job(job_name)?;
    if job.refresh.is_some() {
        crate::commands::refresh::refresh(strata, job_name)
            .await
            .map_err(|e| RunError::Refresh(e.to_string()))?;
    }
    let mut report = backup(strata, job_name, now, ctl).await?;
    let sunday = now.with_timezone(&strata.config().timezone).weekday() == chrono::Weekday::Sun;
    let read_back = match job.verify.read_back {
        ReadBack::Always => true,
        ReadBack::Weekly => sunday,
        ReadBack::Never => false,
    };
    if read_back {
        for (target, why) in crate::commands::restore::read_back_new(
            strata,
            job_name,
            &report.manifest.backup_id,
            now,
        )
        .await
        {
            report.failed.insert(target, why);
        }
    }
    Ok(report)
}

/// Runs one backup of `job`, named after `now` in the configured time zone.
///
/// # Errors
/// The dump could not be taken or no target holds the result. A backup that
/// reached only some targets is a report with `failed` entries, not an error.
// Long on purpose: the steps of one backup in order, each failure aborting what is open at that point.
#[tracing::instrument(skip_all, fields(job = job_name, backup_id))]
pub async fn backup(
    strata: &Strata,
    job_name: &str,
    now: DateTime<Utc>,
    ctl: &RunControl,
) -> Result<BackupReport, RunError> {
    let cancel = &ctl.cancel;
    let clock = Instant::now();
    let job = strata.job(job_name)?;
    if job.kind.is_physical() {
        return base::base_backup(strata, job, now, ctl).await;
    }
    let config = strata.config();
    let local = now.with_timezone(&config.timezone);
    let encryption = config.encryption.as_ref();
    let plan = plan_layouts(strata, job, &local).await?;
    let backup_id = plan[0].1.backup_id.clone();
    tracing::Span::current().record("backup_id", &backup_id);

    let url = &job.database_url;
    let Snapshot {
        client,
        info,
        tool,
        globals,
        id: snapshot,
    } = open_snapshot(job).await?;

    let mut failed = BTreeMap::new();
    let mut uploads = Vec::new();
    for (target, layout) in &plan {
        match target.start_upload(&layout.object_key()).await {
            Ok(u) => uploads.push((target.name().to_owned(), u)),
            Err(e) => {
                failed.insert(target.name().to_owned(), e.to_string());
            }
        }
    }
    if uploads.is_empty() {
        return Err(RunError::NoTarget(failed.into_values().collect()));
    }
    let encryptor = encryption
        .map(|e| Encryptor::new(e.keyring.active(), e.chunk_size))
        .transpose()?;
    let mut dump = match PgDump::spawn(&tool, url, job.format, Some(&snapshot)) {
        Ok(d) => d,
        Err(e) => {
            abort_all(open_uploads(uploads)).await;
            return Err(e.into());
        }
    };
    let counts = async {
        match job.format {
            DumpFormat::Custom => Some(pg::count_rows(url, &client).await),
            DumpFormat::Plain | DumpFormat::Base => None,
        }
    };
    if let Some(p) = &ctl.progress {
        p.set_detail(format!("dumping {}", info.name));
    }
    let ((streamed, uploads), counts) = tokio::join!(
        pipeline::backup_stream(
            &mut dump,
            job.compression,
            encryptor,
            if job.format == DumpFormat::Plain {
                pipeline::Tap::Rows
            } else {
                pipeline::Tap::Nothing
            },
            uploads,
            cancel,
            ctl.progress.as_deref(),
        ),
        counts
    );
    let streamed = match streamed {
        Ok(stats) => dump.finish().await.map(|_| stats).map_err(RunError::from),
        Err(e) => {
            dump.kill().await;
            Err(e.into())
        }
    };
    // Release the snapshot; the transaction was read-only.
    let _ = client.batch_execute("ROLLBACK").await;
    let tables = match (streamed, counts) {
        (Ok(stats), None) => Ok((stats.tables.clone().unwrap_or_default(), stats)),
        (Ok(stats), Some(Ok(counts))) => Ok((counts, stats)),
        (Ok(_), Some(Err(e))) => Err(e.into()),
        (Err(e), _) => Err(e),
    };
    let (tables, stats) = match tables {
        Ok(t) => t,
        Err(e) => {
            abort_all(uploads).await;
            return Err(e);
        }
    };

    if cancel.is_cancelled() {
        // Stopped (shutdown, deadline) after streaming: nothing is completed.
        abort_all(uploads).await;
        return Err(PipelineError::Cancelled.into());
    }
    if let Some(p) = &ctl.progress {
        p.set_detail("completing the uploads");
    }
    let mut records = complete_uploads(&plan, uploads, &mut failed).await;
    if records.is_empty() {
        return Err(RunError::NoTarget(failed.into_values().collect()));
    }
    let globals = store_globals(
        strata,
        job.compression,
        &plan,
        &globals,
        &mut records,
        &mut failed,
    )
    .await?;
    if records.is_empty() {
        return Err(RunError::NoTarget(failed.into_values().collect()));
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        backup_id: backup_id.clone(),
        job: job.name.clone(),
        started_at: now,
        // On the run's clock (tests move it): started plus the time it took.
        finished_at: now + chrono::Duration::from_std(clock.elapsed()).unwrap_or_default(),
        database: info,
        pg_dump_version: tool.version.clone(),
        format: job.format,
        compression: job.compression,
        encryption: encryption.map(|e| EncryptionInfo {
            algorithm: "AES-256-GCM".into(),
            format: "STRATAE1".into(),
            key_id: e.keyring.active().id().to_owned(),
            chunk_size: e.chunk_size,
        }),
        object: plan[0].1.object_name.clone(),
        raw_bytes: stats.raw_bytes,
        stored_bytes: stats.stored_bytes,
        sha256: stats.sha256.clone(),
        tables,
        targets: records.clone(),
        verifications: Vec::new(),
        globals: Some(globals),
        physical: None,
        mac: None,
    };
    let key = encryption.map(|e| e.keyring.active());
    if write_manifests(&plan, &records, &manifest, key, &mut failed).await == 0 {
        return Err(RunError::NoTarget(failed.into_values().collect()));
    }
    let report = BackupReport {
        manifest,
        failed,
        duration_seconds: clock.elapsed().as_secs_f64(),
    };
    tracing::info!(
        backup_id = %report.manifest.backup_id,
        raw_bytes = report.manifest.raw_bytes,
        stored_bytes = report.manifest.stored_bytes,
        duration_s = report.duration_seconds,
        failed_targets = report.failed.len(),
        "backup finished"
    );
    Ok(report)
}

/// The source as one backup sees it: a connection holding an exported snapshot
/// (idle in its transaction until the dump is done), the server's facts, the
/// `pg_dump` to use, and the cluster globals.
struct Snapshot {
    client: tokio_postgres::Client,
    info: crate::domain::DatabaseInfo,
    tool: pg::Tool,
    globals: crate::pg::globals::Globals,
    id: String,
}

async fn open_snapshot(job: &JobConfig) -> Result<Snapshot, RunError> {
    let url = &job.database_url;
    let client = url.connect().await?;
    // The snapshot connection outlives the dump, idle in its transaction: the
    // server's own statement and idle timeouts (set for applications) must not
    // end it, and a server that stops answering costs at most STATEMENT_LIMIT
    // per query (the run's `timeout` bounds the whole).
    client
        .batch_execute(&format!(
            "SET statement_timeout = '{}s'; SET idle_in_transaction_session_timeout = 0",
            pg::STATEMENT_LIMIT.as_secs()
        ))
        .await
        .map_err(|e| url.query_error(&e))?;
    let info = pg::database_info(url, &client).await?;
    let tool = pg::find_tool("pg_dump", &info).await?;
    // Roles, tablespaces and database settings: before the dump, so a role
    // that may not read them fails the run before anything is written.
    let globals = pg::globals::capture(
        url,
        &client,
        info.server_version_num,
        job.globals.role_passwords,
    )
    .await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| url.query_error(&e))?;
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| url.query_error(&e))?
        .get(0);
    Ok(Snapshot {
        client,
        info,
        tool,
        globals,
        id: snapshot,
    })
}

/// Where the backup goes on each target: named after `local`, with `-2`, `-3`, …
/// when two backups start in the same second (a manifest or a data object under
/// the name on any target means it is taken).
async fn plan_layouts(
    strata: &Strata,
    job: &JobConfig,
    local: &DateTime<chrono_tz::Tz>,
) -> Result<Vec<(Arc<dyn Target>, Layout)>, RunError> {
    let config = strata.config();
    let encryption = config.encryption.as_ref();
    let layouts = |sequence: u32| -> Vec<(Arc<dyn Target>, Layout)> {
        job.targets
            .iter()
            .map(|name| {
                let t = &config.targets[name];
                let layout = Layout::new(
                    &t.prefix,
                    &job.name,
                    &job.file_prefix,
                    local,
                    job.format,
                    job.compression,
                    encryption.is_some(),
                )
                .sequence(sequence);
                (strata.target(name), layout)
            })
            .collect()
    };
    let mut sequence = 1;
    loop {
        let plan = layouts(sequence);
        let mut taken = None;
        for (target, layout) in &plan {
            for key in [layout.manifest_key(), layout.object_key()] {
                if target.head(&key).await.is_ok() {
                    taken = Some(target.name().to_owned());
                }
            }
        }
        match taken {
            None => return Ok(plan),
            Some(target) if sequence >= 100 => {
                return Err(RunError::Exists {
                    backup_id: plan[0].1.backup_id.clone(),
                    target,
                });
            }
            Some(_) => sequence += 1,
        }
    }
}

/// Completes every open upload; the targets that hold the object now, and the
/// reasons of those that do not (into `failed`).
async fn complete_uploads(
    plan: &[(Arc<dyn Target>, Layout)],
    uploads: Vec<TargetUpload>,
    failed: &mut BTreeMap<String, String>,
) -> Vec<TargetRecord> {
    let completions =
        futures::future::join_all(uploads.into_iter().map(|(name, upload)| async move {
            match upload {
                Ok(u) => (name, u.complete().await),
                Err(e) => (name, Err(e)),
            }
        }))
        .await;
    let mut records = Vec::new();
    for (name, result) in completions {
        match result {
            Ok(put) => {
                let layout = &plan
                    .iter()
                    .find(|(t, _)| t.name() == name)
                    .expect("planned target")
                    .1;
                records.push(TargetRecord {
                    target: name,
                    key: layout.object_key(),
                    version_id: put.version_id,
                    storage_class: put.storage_class,
                });
            }
            Err(e) => {
                failed.insert(name, e.to_string());
            }
        }
    }
    records
}

/// Writes the sealed manifest (last) beside every stored object; an object whose
/// manifest cannot be written is debris and removed. Returns how many were written.
async fn write_manifests(
    plan: &[(Arc<dyn Target>, Layout)],
    records: &[TargetRecord],
    manifest: &Manifest,
    key: Option<&MasterKey>,
    failed: &mut BTreeMap<String, String>,
) -> usize {
    let json = bytes::Bytes::from(crate::domain::manifest::seal(manifest, key));
    let mut written = 0;
    for record in records {
        let (target, layout) = plan
            .iter()
            .find(|(t, _)| t.name() == record.target)
            .expect("planned target");
        match target.put_small(&layout.manifest_key(), json.clone()).await {
            Ok(_) => written += 1,
            Err(e) => {
                // Without a manifest the object is debris; remove it now.
                let _ = target.delete(&layout.object_key()).await;
                failed.insert(record.target.clone(), e.to_string());
            }
        }
    }
    written
}

/// Writes the cluster globals beside the dump on every target that holds it;
/// a target that cannot take them loses its copy (removed) and is reported.
async fn store_globals(
    strata: &Strata,
    compression: crate::domain::Compression,
    plan: &[(Arc<dyn Target>, Layout)],
    globals: &pg::globals::Globals,
    records: &mut Vec<TargetRecord>,
    failed: &mut BTreeMap<String, String>,
) -> Result<GlobalsRecord, RunError> {
    let encryptor = strata
        .config()
        .encryption
        .as_ref()
        .map(|e| Encryptor::new(e.keyring.active(), e.chunk_size))
        .transpose()?;
    let name = plan[0].1.globals_name(compression, encryptor.is_some());
    let sealed = pipeline::small::seal(globals.render().as_bytes(), compression, encryptor)?;
    let stored_bytes = sealed.bytes.len() as u64;
    let data = bytes::Bytes::from(sealed.bytes);
    let mut kept = Vec::new();
    for record in records.drain(..) {
        let (target, layout) = plan
            .iter()
            .find(|(t, _)| t.name() == record.target)
            .expect("planned target");
        match target.put_small(&layout.key_of(&name), data.clone()).await {
            Ok(_) => kept.push(record),
            Err(e) => {
                // Without its globals the copy is incomplete; remove it.
                let _ = target.delete(&layout.object_key()).await;
                failed.insert(record.target.clone(), format!("storing the globals: {e}"));
            }
        }
    }
    *records = kept;
    Ok(GlobalsRecord {
        object: name,
        raw_bytes: sealed.raw_bytes,
        stored_bytes,
        sha256: sealed.sha256,
        roles: globals.roles.len(),
        tablespaces: globals.tablespaces.len(),
        passwords: globals.passwords_included,
    })
}

fn open_uploads(uploads: Vec<(String, Box<dyn crate::storage::Upload>)>) -> Vec<TargetUpload> {
    uploads.into_iter().map(|(n, u)| (n, Ok(u))).collect()
}

/// Aborts every upload still open.
async fn abort_all(uploads: Vec<TargetUpload>) {
    for (name, upload) in uploads {
        if let Ok(u) = upload {
            if let Err(e) = u.abort().await {
                tracing::warn!(target_name = %name, error = %e, "abort failed; start-up cleanup will retry");
            }
        }
    }
}

impl From<StorageError> for RunError {
    fn from(e: StorageError) -> Self {
        Self::NoTarget(vec![e.to_string()])
    }
}

impl crate::state::RunRecord {
    /// Records how the backup ended.
    pub fn finish(&mut self, result: &Result<BackupReport, RunError>, at: DateTime<Utc>) {
        self.finished_at = Some(at);
        match result {
            Ok(report) => {
                let m = &report.manifest;
                self.status = if report.is_complete() {
                    RunStatus::Success
                } else {
                    RunStatus::Degraded
                };
                self.backup_id = Some(m.backup_id.clone());
                self.raw_bytes = Some(m.raw_bytes);
                self.stored_bytes = Some(m.stored_bytes);
                for t in &m.targets {
                    self.targets.insert(t.target.clone(), "ok".into());
                }
                for (t, why) in &report.failed {
                    self.targets.insert(t.clone(), why.clone());
                }
                if !report.is_complete() {
                    let failed: Vec<&str> = report.failed.keys().map(String::as_str).collect();
                    self.error = Some(format!("target(s) failed: {}", failed.join(", ")));
                }
            }
            Err(e) => {
                self.status = if e.is_cancelled() {
                    RunStatus::Aborted
                } else {
                    RunStatus::Failed
                };
                self.error = Some(e.to_string());
            }
        }
    }
}
