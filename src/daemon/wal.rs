//! Physical jobs: what the daemon watches of WAL archiving. The server's own
//! archiver statistics (`pg_stat_archiver`) say whether `archive_command`
//! (`strata wal-push`) succeeds; the archive's listing says how far back a
//! restore can reach.

use super::*;

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

impl Daemon {
    /// Reads each physical job's archiver: metrics, `/health`, and the
    /// `wal_archive_failing` alert (raised while the newest attempt failed,
    /// resolved once a file is archived after it). Settings that make
    /// archiving impossible (`wal_level = minimal`, `archive_mode = off`) are
    /// reported the same way.
    pub async fn check_archiving(&self) {
        let config = self.strata.config();
        for (name, job) in config.jobs.iter().filter(|(_, j)| j.kind.is_physical()) {
            let reading = read_archiver(&job.database_url).await;
            let problem = match &reading {
                Err(e) => Some(format!("cannot read pg_stat_archiver: {e}")),
                Ok(a) => self.observe(name, a),
            };
            if let Some(h) = lock(&self.health).get_mut(name) {
                let wal = h.wal.get_or_insert_with(WalHealth::default);
                if let Ok(a) = &reading {
                    wal.last_archived = a.last_archived;
                    wal.last_archived_wal.clone_from(&a.last_archived_wal);
                }
                wal.problem.clone_from(&problem);
            }
            let m = Some(&self.metrics);
            match (&reading, problem) {
                // An unreachable server is the backups' alert, not this one.
                (Err(_), _) => {}
                (Ok(_), Some(cause)) => {
                    tracing::error!(job = %name, cause = %cause, "WAL archiving does not work");
                    let alert = Alert::new(
                        Kind::WalArchiveFailing,
                        Some(name),
                        cause,
                        format!(
                            "the server keeps the WAL until archiving works and its disk fills: read the server log for `archive command failed`, try `strata wal-push {name} PATH` by hand as the server's user, check the targets (`strata status`)"
                        ),
                    );
                    self.alerter.raise(alert, m).await;
                }
                (Ok(_), None) => {
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
                let seconds = match crate::commands::restore::datadir::recoverable(
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
