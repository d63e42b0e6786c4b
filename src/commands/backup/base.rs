//! A physical job's base backup: `pg_basebackup`'s tar of the data directory
//! through the same pipeline as a dump (compressed, encrypted, streamed to every
//! target), with a manifest that says where in the WAL it starts and ends. It
//! counts only once the WAL up to its end is in the archive on every target
//! that holds it, so the manifest is written after that is checked.

use super::*;
use crate::commands::wal;
use crate::domain::DatabaseInfo;
use crate::domain::manifest::PhysicalRecord;

/// Facts about the cluster a base backup needs before it starts.
struct Cluster {
    info: DatabaseInfo,
    system_identifier: u64,
    segment_size: u32,
}

async fn inspect(job: &JobConfig) -> Result<Cluster, RunError> {
    let url = &job.database_url;
    let client = url.connect().await?;
    let info = pg::database_info(url, &client).await?;
    let q = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .map_err(|e| RunError::Source(url.query_error(&e)))
        }
    };
    let settings = q("SELECT current_setting('wal_level'), current_setting('archive_mode'), \
                        (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')), \
                        (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')")
    .await?;
    let (level, mode, spaces, seg): (String, String, i64, i64) = (
        settings.get(0),
        settings.get(1),
        settings.get(2),
        settings.get(3),
    );
    let streamed = job
        .kind
        .physical()
        .is_some_and(|p| matches!(p.wal, crate::config::WalSource::Stream { .. }));
    if level == "minimal" || (mode == "off" && !streamed) {
        return Err(RunError::Physical(format!(
            "the server cannot be backed up physically: wal_level = {level}, archive_mode = {mode} (set wal_level = replica and archive_mode = on, with archive_command = 'strata … wal-push {} %p')",
            job.name
        )));
    }
    if spaces > 0 {
        return Err(RunError::Physical(format!(
            "the cluster has {spaces} tablespace(s) besides pg_default: base backups of clusters with tablespaces are not supported yet"
        )));
    }
    let sysid = q("SELECT system_identifier::text FROM pg_control_system()")
        .await?
        .get::<_, String>(0);
    Ok(Cluster {
        info,
        system_identifier: sysid.parse().unwrap_or_default(),
        segment_size: u32::try_from(seg).unwrap_or(16 << 20),
    })
}

/// Takes one base backup of `job`'s cluster onto every target.
///
/// # Errors
/// The server cannot be backed up physically (named), `pg_basebackup` failed,
/// the WAL it needs is not archived, or no target holds it.
// Long on purpose: the steps of one base backup in order, each failure aborting what is open at that point.
pub(super) async fn base_backup(
    strata: &Strata,
    job: &JobConfig,
    now: DateTime<Utc>,
    ctl: &RunControl,
) -> Result<BackupReport, RunError> {
    let clock = Instant::now();
    let config = strata.config();
    let local = now.with_timezone(&config.timezone);
    let encryption = config.encryption.as_ref();
    let cluster = inspect(job).await?;
    let tool = pg::find_tool("pg_basebackup", &cluster.info).await?;
    let plan = plan_layouts(strata, job, &local).await?;
    let backup_id = plan[0].1.backup_id.clone();
    tracing::Span::current().record("backup_id", &backup_id);
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
    let label = format!("strata {backup_id}");
    // The WAL the tar ends with must stay on the server until it is sent.
    let _slot = hold_wal(&job.database_url).await;
    let prepared = clock.elapsed();
    let mut child = match PgDump::spawn_base_backup(&tool, &job.database_url, &label) {
        Ok(c) => c,
        Err(e) => {
            abort_all(open_uploads(uploads)).await;
            return Err(e.into());
        }
    };
    if let Some(p) = &ctl.progress {
        p.set_detail("copying the data directory");
    }
    let (streamed, uploads) = pipeline::backup_stream(
        &mut child,
        job.compression,
        encryptor,
        pipeline::Tap::BaseFiles,
        uploads,
        &ctl.cancel,
        ctl.progress.as_deref(),
    )
    .await;
    let finished = match streamed {
        Ok(stats) => child
            .finish()
            .await
            .map(|stderr| (stats, stderr))
            .map_err(RunError::from),
        Err(e) => {
            child.kill().await;
            Err(e.into())
        }
    };
    let (stats, _) = match finished {
        Ok(f) => f,
        Err(e) => {
            abort_all(uploads).await;
            return Err(e);
        }
    };
    let facts = match describe(strata, job, &label, &stats).await {
        Ok(f) => f,
        Err(e) => {
            abort_all(uploads).await;
            return Err(e);
        }
    };
    if ctl.cancel.is_cancelled() {
        abort_all(uploads).await;
        return Err(PipelineError::Cancelled.into());
    }
    let streamed = clock.elapsed();
    let mut records = complete_uploads(&plan, uploads, &mut failed).await;
    let completed = clock.elapsed();
    // It counts only where the archive holds its WAL, start to end.
    let base = wal::BaseRef {
        timeline: facts.timeline,
        start: facts.start,
        stop: facts.stop,
        segment_size: cluster.segment_size,
    };
    let mut kept = Vec::new();
    for record in records.drain(..) {
        match wal::covers(strata, &job.name, &record.target, base).await {
            Ok(()) => kept.push(record),
            Err(e) => {
                failed.insert(record.target.clone(), e.to_string());
            }
        }
    }
    let records = kept;
    let covered = clock.elapsed();
    if records.is_empty() {
        return Err(RunError::NoTarget(failed.into_values().collect()));
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        backup_id: backup_id.clone(),
        job: job.name.clone(),
        started_at: now,
        finished_at: now + chrono::Duration::from_std(clock.elapsed()).unwrap_or_default(),
        database: cluster.info,
        pg_dump_version: tool.version.clone(),
        format: DumpFormat::Base,
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
        tables: BTreeMap::new(),
        targets: records.clone(),
        verifications: Vec::new(),
        globals: None,
        physical: Some(PhysicalRecord {
            start_lsn: crate::domain::wal::format_lsn(facts.start),
            stop_lsn: crate::domain::wal::format_lsn(facts.stop),
            timeline: facts.timeline,
            system_identifier: cluster.system_identifier.to_string(),
            segment_size: cluster.segment_size,
            backup_label: facts.label_text,
            server_manifest: facts.server_manifest,
        }),
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
        start_lsn = %crate::domain::wal::format_lsn(facts.start),
        stop_lsn = %crate::domain::wal::format_lsn(facts.stop),
        stored_bytes = report.manifest.stored_bytes,
        duration_s = report.duration_seconds,
        prepared_s = prepared.as_secs_f64(),
        streamed_s = streamed.as_secs_f64(),
        completed_s = completed.as_secs_f64(),
        wal_covered_s = covered.as_secs_f64(),
        "base backup finished"
    );
    Ok(report)
}

/// Where a base backup starts and ends in the WAL, and what it says of itself.
struct Facts {
    timeline: u32,
    start: u64,
    stop: u64,
    label_text: String,
    server_manifest: Option<crate::domain::manifest::ServerManifest>,
}

/// The base backup's WAL range from the server's `backup_manifest` in the
/// tar, else from the backup history file the server archived (servers that
/// give no manifest; only `archive_command` archives that file).
async fn describe(
    strata: &Strata,
    job: &JobConfig,
    label: &str,
    stats: &pipeline::StreamStats,
) -> Result<Facts, RunError> {
    use crate::domain::base_backup;
    let files = stats.base_files.clone().unwrap_or_default();
    let label_text = files
        .backup_label
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if !label_text.is_empty() && base_backup::label_of(&label_text) != Some(label) {
        return Err(RunError::Physical(format!(
            "the tar's backup_label is not this backup's ({label}): {}",
            crate::pg::one_line(&label_text)
        )));
    }
    if let Some(bytes) = &files.backup_manifest {
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
        let (summary, ranges) = base_backup::parse_server_manifest(bytes, &sha)
            .map_err(|e| RunError::Physical(format!("the server's backup_manifest: {e}")))?;
        let (first, last) = (ranges[0], ranges[ranges.len() - 1]);
        return Ok(Facts {
            timeline: first.timeline,
            start: first.start,
            stop: last.end,
            label_text,
            server_manifest: Some(summary),
        });
    }
    let (points, text) = wal::backup_history(strata, &job.name, label)
        .await
        .map_err(|e| RunError::Physical(e.to_string()))?;
    Ok(Facts {
        timeline: points.timeline,
        start: points.start,
        stop: points.stop,
        label_text: if label_text.is_empty() {
            text
        } else {
            label_text
        },
        server_manifest: None,
    })
}

/// A temporary replication slot that keeps the server's WAL from now on (the
/// base backup's tar ends with the WAL from its start, fetched last; a long
/// backup on a busy server could otherwise find it recycled). The server drops
/// the slot when this connection ends, whatever happens to strata. `None`
/// when it cannot be made (no free slot): the backup goes on without it.
async fn hold_wal(url: &crate::pg::DbUrl) -> Option<tokio_postgres::Client> {
    let client = url.connect().await.ok()?;
    let name = format!(
        "strata_base_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    match client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true, true)",
            &[&name],
        )
        .await
    {
        Ok(_) => Some(client),
        Err(e) => {
            tracing::warn!(error = %crate::pg::pg_message(&e), "no temporary replication slot: a long base backup on a busy server may find its WAL recycled");
            None
        }
    }
}
