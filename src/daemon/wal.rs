//! Physical jobs: what the daemon watches of WAL archiving. The server's own
//! archiver statistics (`pg_stat_archiver`) say whether `archive_command`
//! (`strata wal-push`) succeeds; for the streaming source, the daemon runs
//! `pg_receivewal` itself and knows what it archived, and the server's
//! replication slot says how much WAL it holds back for strata. The
//! archive's listing says how far back a restore can reach.

use super::*;
use crate::commands::wal::stream::{self, SharedStatus, StreamStatus};
use crate::config::WalSource;

/// `/health` of a physical job's archiving.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WalHealth {
    /// When the server last archived a file through strata.
    pub last_archived: Option<DateTime<Utc>>,
    pub last_archived_wal: Option<String>,
    /// Why archiving does not work (settings, failing archive_command, the
    /// server unreachable); none when it works.
    pub problem: Option<String>,
    /// How far back the worst target can recover to without a gap (seconds).
    pub recovery_window_seconds: Option<f64>,
    /// A gap in the archive, by target.
    pub gaps: BTreeMap<String, String>,
    /// The streaming source: `pg_receivewal` and the segment being written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
    /// The streaming source: WAL the server keeps for strata's slot (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_retained_bytes: Option<i64>,
}

/// The archiver counters as last read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArchiverSeen {
    archived: i64,
    failed: i64,
}

/// One reading of the server's archiver.
struct Archiver {
    wal_level: String,
    archive_mode: String,
    archived: i64,
    failed: i64,
    last_archived: Option<DateTime<Utc>>,
    last_archived_wal: Option<String>,
    last_failed: Option<DateTime<Utc>>,
    last_failed_wal: Option<String>,
}

async fn read_archiver(url: &crate::pg::DbUrl) -> Result<Archiver, String> {
    let probe = async {
        let client = url.connect().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('archive_mode'), \
                 archived_count, failed_count, \
                 extract(epoch FROM last_archived_time)::float8, last_archived_wal, \
                 extract(epoch FROM last_failed_time)::float8, last_failed_wal \
                 FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| crate::pg::pg_message(&e))?;
        let at = |i: usize| {
            row.get::<_, Option<f64>>(i)
                .and_then(|s| DateTime::from_timestamp_micros((s * 1e6) as i64))
        };
        Ok(Archiver {
            wal_level: row.get(0),
            archive_mode: row.get(1),
            archived: row.get(2),
            failed: row.get(3),
            last_archived: at(4),
            last_archived_wal: row.get(5),
            last_failed: at(6),
            last_failed_wal: row.get(7),
        })
    };
    tokio::time::timeout(Duration::from_secs(15), probe)
        .await
        .map_err(|_| "the server did not answer within 15s".to_owned())?
}

/// One reading of a streaming job's slot.
struct SlotReading {
    wal_level: String,
    exists: bool,
    active: bool,
    retained: Option<i64>,
}

async fn read_slot(url: &crate::pg::DbUrl, slot: &str) -> Result<SlotReading, String> {
    let probe = async {
        let client = url.connect().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT current_setting('wal_level'), \
                 (SELECT active FROM pg_replication_slots WHERE slot_name = $1), \
                 (SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| crate::pg::pg_message(&e))?;
        let active: Option<bool> = row.get(1);
        Ok(SlotReading {
            wal_level: row.get(0),
            exists: active.is_some(),
            active: active.unwrap_or(false),
            retained: row.get(2),
        })
    };
    tokio::time::timeout(Duration::from_secs(15), probe)
        .await
        .map_err(|_| "the server did not answer within 15s".to_owned())?
}

impl Daemon {
    /// Starts the streaming source of every job with `wal: { source: stream }`
    /// (until the daemon stops).
    pub(super) fn spawn_streams(&self) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let streaming = job
                .kind
                .physical()
                .is_some_and(|p| matches!(p.wal, WalSource::Stream { .. }));
            if !streaming {
                continue;
            }
            let status = SharedStatus::default();
            lock(&self.streams).insert(name.clone(), status.clone());
            self.tasks.spawn(stream::run(
                self.strata.clone(),
                name.clone(),
                status,
                self.stopping.clone(),
            ));
        }
    }

    /// Reads each physical job's archiving: metrics, `/health`, and the
    /// `wal_archive_failing` alert (raised while the newest attempt failed,
    /// resolved once a file is archived after it). Settings that make
    /// archiving impossible (`wal_level = minimal`, `archive_mode = off`) are
    /// reported the same way.
    pub async fn check_archiving(&self) {
        let config = self.strata.config();
        for (name, job) in &config.jobs {
            let Some(physical) = job.kind.physical() else {
                continue;
            };
            let (reachable, problem) = match &physical.wal {
                WalSource::ArchiveCommand => {
                    let reading = read_archiver(&job.database_url).await;
                    let problem = match &reading {
                        Err(e) => Some(format!("cannot read pg_stat_archiver: {e}")),
                        Ok(a) => self.observe(name, a),
                    };
                    if let (Some(h), Ok(a)) = (lock(&self.health).get_mut(name), &reading) {
                        let wal = h.wal.get_or_insert_with(WalHealth::default);
                        wal.last_archived = a.last_archived;
                        wal.last_archived_wal.clone_from(&a.last_archived_wal);
                    }
                    (reading.is_ok(), problem)
                }
                WalSource::Stream { slot, .. } => {
                    let reading = read_slot(&job.database_url, slot).await;
                    let problem = self.observe_stream(name, slot, &reading);
                    (reading.is_ok(), problem)
                }
            };
            if let Some(h) = lock(&self.health).get_mut(name) {
                h.wal
                    .get_or_insert_with(WalHealth::default)
                    .problem
                    .clone_from(&problem);
            }
            let m = Some(&self.metrics);
            match (reachable, problem) {
                // An unreachable server is the backups' alert, not this one.
                (false, _) => {}
                (true, Some(cause)) => {
                    tracing::error!(job = %name, cause = %cause, "WAL archiving does not work");
                    let alert = Alert::new(
                        Kind::WalArchiveFailing,
                        Some(name),
                        cause,
                        format!(
                            "the server keeps the WAL until archiving works and its disk fills: read the server log (`archive command failed`) or strata's log (streaming), try `strata wal-push {name} PATH` by hand as the server's user, check the targets (`strata status`)"
                        ),
                    );
                    self.alerter.raise(alert, m).await;
                }
                (true, None) => {
                    self.alerter
                        .resolve(
                            Kind::WalArchiveFailing,
                            Some(name),
                            "",
                            "WAL archiving works again".to_owned(),
                            m,
                        )
                        .await;
                }
            }
        }
    }

    /// The streaming source's counters into metrics and `/health`; what is
    /// wrong, if anything.
    fn observe_stream(
        &self,
        job: &str,
        slot: &str,
        reading: &Result<SlotReading, String>,
    ) -> Option<String> {
        let status = lock(&self.streams)
            .get(job)
            .map(|s| lock(s).clone())
            .unwrap_or_default();
        let before = lock(&self.archiver).insert(
            job.to_owned(),
            ArchiverSeen {
                archived: i64::try_from(status.archived).unwrap_or(i64::MAX),
                failed: i64::try_from(status.failures).unwrap_or(i64::MAX),
            },
        );
        let m = &self.metrics;
        let delta = |now: u64, then: Option<i64>| {
            now.saturating_sub(then.map_or(0, |t| u64::try_from(t).unwrap_or(0)))
        };
        m.wal_archived
            .with_label_values(&[job])
            .inc_by(delta(status.archived, before.map(|b| b.archived)));
        m.wal_archive_failures
            .with_label_values(&[job])
            .inc_by(delta(status.failures, before.map(|b| b.failed)));
        // The live segment's upload is the newest point a restore reaches.
        let newest = status.last_archived.max(status.live_uploaded);
        let seconds =
            |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        m.wal_last_archived
            .with_label_values(&[job])
            .set(seconds(newest));
        m.wal_last_failed
            .with_label_values(&[job])
            .set(seconds(status.last_failed));
        if let Some(h) = lock(&self.health).get_mut(job) {
            let wal = h.wal.get_or_insert_with(WalHealth::default);
            wal.last_archived = newest;
            wal.last_archived_wal = status
                .live_segment
                .clone()
                .filter(|_| status.live_uploaded >= status.last_archived)
                .map(|s| format!("{s}.partial"))
                .or_else(|| status.last_archived_wal.clone());
            wal.stream = Some(status.clone());
            wal.slot_retained_bytes = reading.as_ref().ok().and_then(|r| r.retained);
        }
        if let Ok(r) = reading {
            if r.wal_level == "minimal" {
                return Some("wal_level is minimal: the server writes no WAL an archive could recover from; set wal_level = replica and restart it".into());
            }
        }
        if let Some(p) = &status.problem {
            return Some(format!("WAL streaming (pg_receivewal) is not running: {p}"));
        }
        match reading {
            Ok(r) if !r.exists => Some(format!(
                "replication slot '{slot}' does not exist on the server (strata creates it when streaming starts)"
            )),
            Ok(r) if !r.active && !status.receiving => Some(format!(
                "replication slot '{slot}' has no receiver: the server keeps WAL for it until streaming resumes"
            )),
            _ => match (status.last_failed, newest) {
                (Some(f), ok) if ok.is_none_or(|o| f > o) => Some(format!(
                    "streamed WAL could not be archived at {} ({} failures in all); the last success was {}",
                    f.to_rfc3339(),
                    status.failures,
                    ok.map_or_else(|| "never".into(), |o| o.to_rfc3339())
                )),
                _ => None,
            },
        }
    }

    /// Counts the change since the last reading and says what is wrong, if
    /// anything.
    fn observe(&self, job: &str, a: &Archiver) -> Option<String> {
        let before = lock(&self.archiver).insert(
            job.to_owned(),
            ArchiverSeen {
                archived: a.archived,
                failed: a.failed,
            },
        );
        // Counters reset with the server's statistics: then all of it is new.
        let delta = |now: i64, then: Option<i64>| {
            u64::try_from(match then {
                Some(t) if now >= t => now - t,
                _ => now,
            })
            .unwrap_or(0)
        };
        let m = &self.metrics;
        m.wal_archived
            .with_label_values(&[job])
            .inc_by(delta(a.archived, before.map(|b| b.archived)));
        m.wal_archive_failures
            .with_label_values(&[job])
            .inc_by(delta(a.failed, before.map(|b| b.failed)));
        // 0 for "never": an archive that never received anything is stale.
        let seconds =
            |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        m.wal_last_archived
            .with_label_values(&[job])
            .set(seconds(a.last_archived));
        m.wal_last_failed
            .with_label_values(&[job])
            .set(seconds(a.last_failed));
        if a.wal_level == "minimal" {
            return Some("wal_level is minimal: the server writes no WAL an archive could recover from; set wal_level = replica and restart it".into());
        }
        if a.archive_mode == "off" {
            return Some(format!(
                "archive_mode is off: nothing is archived; set archive_mode = on and archive_command = 'strata -c CONFIG wal-push {job} %p', then restart the server"
            ));
        }
        match (a.last_failed, a.last_archived) {
            (Some(f), ok) if ok.is_none_or(|o| f > o) => Some(format!(
                "archive_command failed at {} for {} ({} failures in all); the last success was {}",
                f.to_rfc3339(),
                a.last_failed_wal.as_deref().unwrap_or("?"),
                a.failed,
                ok.map_or_else(|| "never".into(), |o| o.to_rfc3339())
            )),
            _ => None,
        }
    }

    /// The recovery window of each physical job (the worst of its targets)
    /// and any gap: listed with the periodic checks, as it reads the archive.
    pub async fn check_recovery_windows(&self) {
        let now = self.clock.now();
        let config = self.strata.config();
        for (name, job) in config.jobs.iter().filter(|(_, j)| j.kind.is_physical()) {
            let mut window: Option<f64> = None;
            let mut gaps = BTreeMap::new();
            for target in &job.targets {
                let seconds = match crate::commands::restore::recoverable::recoverable(
                    &self.strata,
                    name,
                    target,
                    now,
                )
                .await
                {
                    Ok(r) => {
                        if let Some(m) = &r.missing {
                            gaps.insert(target.clone(), format!("WAL segment {m} is missing"));
                        }
                        match (r.from, r.missing) {
                            (Some(f), None) => (now - f).num_milliseconds() as f64 / 1000.0,
                            _ => 0.0,
                        }
                    }
                    Err(e) => {
                        gaps.insert(target.clone(), e.to_string());
                        0.0
                    }
                };
                window = Some(window.map_or(seconds, |w| w.min(seconds)));
            }
            let seconds = window.unwrap_or(0.0).max(0.0);
            self.metrics
                .recovery_window
                .with_label_values(&[name])
                .set(seconds);
            if let Some(h) = lock(&self.health).get_mut(name) {
                let wal = h.wal.get_or_insert_with(WalHealth::default);
                wal.recovery_window_seconds = Some(seconds);
                wal.gaps = gaps;
            }
        }
    }
}
