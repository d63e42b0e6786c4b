//! `restore --into-datadir … --start`: start the restored cluster, wait until
//! recovery has reached its target and promoted, and report where it ended.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::RestoreError;
use crate::domain::DatabaseInfo;
use crate::pg::{self, DbUrl};

/// Where recovery ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    pub port: u16,
    /// The last WAL position replayed.
    pub replayed_lsn: String,
    /// The commit time of the last transaction replayed (none when recovery
    /// replayed no transaction).
    pub last_transaction_at: Option<String>,
    /// The server's log (inside the data directory).
    pub log: PathBuf,
    pub seconds: f64,
}

/// What `--start` needs, checked before anything is restored: not root
/// (PostgreSQL refuses to run as root) and a free port.
///
/// # Errors
/// Either is not so.
pub fn preflight(port: u16) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return Err(RestoreError::Physical(
            "--start: PostgreSQL refuses to run as root; run strata as the server's user (e.g. postgres)".into(),
        ));
    }
    port_free(port)
}

fn port_free(port: u16) -> Result<(), RestoreError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        // Something else answering there would be mistaken for the copy.
        return Err(RestoreError::Physical(format!(
            "--port {port}: 127.0.0.1:{port} is already in use"
        )));
    }
    Ok(())
}

/// Starts the cluster in `dir` on `port` (loopback), waits up to `limit` for
/// recovery to promote, and reads where it ended. `url` supplies the
/// credentials (the restored cluster has the source's roles).
///
/// # Errors
/// No `pg_ctl` of the cluster's major version, the server does not start or
/// stops during recovery (the log's last line is given), or `limit` passes.
pub async fn start(
    dir: &Path,
    port: u16,
    url: &DbUrl,
    limit: Duration,
) -> Result<Recovered, RestoreError> {
    let began = Instant::now();
    let failed = |m: String| RestoreError::Physical(m);
    let pg_ctl = pg_ctl_for(dir).await?;
    port_free(port)?;
    let log = dir.join("strata-recovery.log");
    // The port, the loopback address and no Unix socket (the source's socket
    // directory may not exist here, or belong to the running original) go on
    // the command line: the restored copy keeps the source's settings.
    let out = Command::new(&pg_ctl.path)
        .arg("start")
        .arg("--pgdata")
        .arg(dir)
        .arg("--log")
        .arg(&log)
        .arg("--silent")
        .arg("--no-wait")
        .arg("--options")
        .arg(format!("-p {port} -k '' -c listen_addresses=127.0.0.1"))
        .output()
        .await
        .map_err(|e| failed(format!("running {}: {e}", pg_ctl.path.display())))?;
    if !out.status.success() {
        return Err(failed(format!(
            "pg_ctl start failed: {}",
            pg::one_line(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    let local = url.on_loopback(port);
    let deadline = began + limit;
    loop {
        if Instant::now() > deadline {
            return Err(failed(format!(
                "recovery did not finish within {}s; the server is still running (see {})",
                limit.as_secs(),
                log.display()
            )));
        }
        if let Some(done) = promoted(&local).await {
            let (replayed_lsn, last_transaction_at) = done;
            return Ok(Recovered {
                port,
                replayed_lsn,
                last_transaction_at,
                log,
                seconds: began.elapsed().as_secs_f64(),
            });
        }
        if !dir.join("postmaster.pid").exists() && began.elapsed() > Duration::from_secs(2) {
            return Err(failed(format!(
                "the restored server stopped during recovery: {}",
                last_line(&log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pg_ctl` of the major version the data directory `dir` was made with.
async fn pg_ctl_for(dir: &Path) -> Result<pg::Tool, RestoreError> {
    let failed = |m: String| RestoreError::Physical(m);
    let version = std::fs::read_to_string(dir.join("PG_VERSION"))
        .map_err(|e| failed(format!("{}/PG_VERSION: {e}", dir.display())))?;
    let major: u32 = version
        .trim()
        .parse()
        .map_err(|_| failed(format!("{}/PG_VERSION is not a version", dir.display())))?;
    let info = DatabaseInfo {
        name: "postgres".into(),
        server_version: version.trim().to_owned(),
        server_version_num: major * 10_000,
    };
    let pg_ctl = pg::find_tool("pg_ctl", &info)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if pg_ctl.major != major {
        return Err(failed(format!(
            "the data directory needs pg_ctl of PostgreSQL {major}; found {} ({})",
            pg_ctl.version,
            pg_ctl.path.display()
        )));
    }
    Ok(pg_ctl)
}

/// Stops the server running in `dir` at once (`-m immediate`): for copies
/// that are thrown away.
///
/// # Errors
/// `pg_ctl` is missing or fails.
pub async fn stop(dir: &Path) -> Result<(), RestoreError> {
    let pg_ctl = pg_ctl_for(dir).await?;
    let out = Command::new(&pg_ctl.path)
        .arg("stop")
        .arg("--pgdata")
        .arg(dir)
        .args(["--mode", "immediate", "--wait", "--timeout", "60"])
        .output()
        .await
        .map_err(|e| RestoreError::Physical(format!("running {}: {e}", pg_ctl.path.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RestoreError::Physical(format!(
            "pg_ctl stop failed: {}",
            pg::one_line(&String::from_utf8_lossy(&out.stderr))
        )))
    }
}

/// `Some((replayed LSN, last transaction time))` once the server accepts
/// connections and is out of recovery.
async fn promoted(url: &DbUrl) -> Option<(String, Option<String>)> {
    let client = url.connect().await.ok()?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
             to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .ok()?;
    let in_recovery: bool = row.get(0);
    (!in_recovery).then(|| {
        (
            row.get::<_, Option<String>>(1).unwrap_or_default(),
            row.get(2),
        )
    })
}

fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| l.contains("FATAL") || l.contains("PANIC"))
                .or_else(|| t.lines().next_back())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("no log at {}", log.display()))
}
