//! The database side: connection settings (the password travels to child processes
//! only through their environment, never on a command line), PostgreSQL client tool
//! discovery with version checks, and `pg_dump` as an owned child process whose exit
//! status decides whether the bytes it streamed are a backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::domain::{DatabaseInfo, DumpFormat};

pub mod copy_counter;
pub mod globals;
pub mod tls;

/// Longest wait for a connection when the URL names no `connect_timeout`.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest one metadata query or row count of strata's may take on a
/// source (a `count(*)` of a billion-row table stays well inside it).
pub const STATEMENT_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Keep at most this much of a child's stderr for error messages.
const STDERR_CAP: usize = 64 * 1024;

/// Database-side failures; none of them carries a password.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("query on {url} failed: {message}")]
    Query { url: String, message: String },
    #[error("{tool} not found (looked in {searched}); install the PostgreSQL client tools")]
    ToolMissing { tool: String, searched: String },
    #[error(
        "{tool} {tool_version} is older than the server {server_version}; install the PostgreSQL {server_major} client tools (e.g. postgresql-client-{server_major}) or point STRATA_PG_BIN_DIR at them"
    )]
    ToolTooOld {
        tool: String,
        tool_version: String,
        server_version: String,
        server_major: u32,
    },
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("reading {tool} output failed: {source}")]
    Read {
        tool: String,
        source: std::io::Error,
    },
}

/// A PostgreSQL connection URL. `Debug` and `Display` never show the password.
/// TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) mean what
/// they mean to libpq, for strata's connections and its child processes alike.
#[derive(Clone)]
pub struct DbUrl {
    config: tokio_postgres::Config,
    tls: tls::TlsSettings,
    shown: String,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl FromStr for DbUrl {
    type Err = SourceError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (rest, ssl) = tls::split_params(url).map_err(SourceError::BadUrl)?;
        let tls = tls::TlsSettings::from_params(&ssl).map_err(SourceError::BadUrl)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // tokio-postgres errors name the bad part, never the value.
            SourceError::BadUrl(e.to_string())
        })?;
        if config.get_dbname().is_none() {
            return Err(SourceError::BadUrl("no database name in the URL".into()));
        }
        config.ssl_mode(match tls.mode {
            tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            tls::SslMode::Allow | tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let shown = describe(&config, &tls);
        Ok(Self { config, tls, shown })
    }
}

fn describe(c: &tokio_postgres::Config, tls: &tls::TlsSettings) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let ssl = match tls.mode {
        tls::SslMode::Prefer => String::new(),
        mode => format!("?sslmode={}", mode.as_str()),
    };
    format!(
        "postgres://{user}{host}:{port}/{}{ssl}",
        c.get_dbname().unwrap_or_default()
    )
}

impl DbUrl {
    /// The database name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, db: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(db);
        Self {
            shown: describe(&config, &self.tls),
            tls: self.tls.clone(),
            config,
        }
    }

    /// The same role and password on 127.0.0.1:`port`, database `postgres`,
    /// TLS if offered: a restored copy of this server, started locally (its
    /// certificate names the original host, not the loopback address).
    pub fn on_loopback(&self, port: u16) -> Self {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).dbname("postgres");
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(pw) = self.config.get_password() {
            config.password(pw);
        }
        config.connect_timeout(std::time::Duration::from_secs(5));
        config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
        let tls = tls::TlsSettings::default();
        Self {
            shown: describe(&config, &tls),
            tls,
            config,
        }
    }

    /// The TLS settings.
    pub fn tls(&self) -> &tls::TlsSettings {
        &self.tls
    }

    /// The role strata connects as (libpq's default: the OS user).
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// libpq environment for a child process (`pg_dump`, `pg_basebackup`) of
    /// PostgreSQL major version `tool_major`: the password goes here, never into
    /// arguments; the TLS settings are the URL's.
    pub fn libpq_env(&self, tool_major: u32) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let mut env = vec![
            ("PGDATABASE", self.dbname().to_owned()),
            ("PGAPPNAME", "strata".to_owned()),
        ];
        match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
            Some(tokio_postgres::config::Host::Unix(p)) => {
                env.push(("PGHOST", p.display().to_string()))
            }
            None => {}
        }
        if let Some(port) = c.get_ports().first() {
            env.push(("PGPORT", port.to_string()));
        }
        if let Some(user) = c.get_user() {
            env.push(("PGUSER", user.to_owned()));
        }
        if let Some(pw) = c.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
        }
        // pg_dump, pg_restore and psql give up on a server that never answers
        // as strata's own connections do.
        let t = c.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
        env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string()));
        if let Some(o) = c.get_options() {
            env.push(("PGOPTIONS", o.to_owned()));
        }
        env.extend(self.tls.libpq_env(tool_major));
        env
    }

    /// Opens a connection; its driver task runs in the background.
    ///
    /// # Errors
    /// The server is unreachable or refuses the login.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, SourceError> {
        // A server that accepts the connection and never answers must not
        // hold anything up: the whole handshake is bounded (the URL's
        // connect_timeout, else 30 s).
        let limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        match tokio::time::timeout(limit, self.connect_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(SourceError::Connect {
                url: self.shown.clone(),
                message: format!(
                    "no answer within {}s (the server accepts connections but does not respond)",
                    limit.as_secs()
                ),
            }),
        }
    }

    async fn connect_unbounded(&self) -> Result<tokio_postgres::Client, SourceError> {
        let failed = |message: String| SourceError::Connect {
            url: self.shown.clone(),
            message,
        };
        if self.tls.mode == tls::SslMode::Disable {
            let (client, conn) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| failed(pg_message(&e)))?;
            tokio::spawn(drive(conn));
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            self.tls.client_config().map_err(failed)?,
        );
        let (client, conn) = self
            .config
            .connect(tls)
            .await
            .map_err(|e| failed(pg_message(&e)))?;
        tokio::spawn(drive(conn));
        Ok(client)
    }

    /// Maps a query error on this database to a [`SourceError`].
    pub fn query_error(&self, e: &tokio_postgres::Error) -> SourceError {
        SourceError::Query {
            url: self.shown.clone(),
            message: pg_message(e),
        }
    }
}

/// Runs a connection's I/O until it closes.
async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "database connection closed");
    }
}

/// One line for a tokio-postgres error: the server's message when there is one.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

/// Reads the database name and server version.
///
/// # Errors
/// The query failed.
pub async fn database_info(
    url: &DbUrl,
    client: &tokio_postgres::Client,
) -> Result<DatabaseInfo, SourceError> {
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| url.query_error(&e))?;
    Ok(DatabaseInfo {
        name: row.get(0),
        server_version: row.get(1),
        server_version_num: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
    })
}

/// A PostgreSQL client program with its version.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    pub version: String,
    pub major: u32,
}

fn parse_version(output: &str) -> Option<(String, u32)> {
    // "pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"
    let version = output.split_whitespace().nth(2)?.to_owned();
    let major = version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()?;
    Some((version, major))
}

async fn tool_version(path: &Path) -> Option<(String, u32)> {
    let out = Command::new(path).arg("--version").output().await.ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// Finds `name` (pg_dump, psql, pg_restore) of at least the server's major version:
/// `$STRATA_PG_BIN_DIR` if set, else the oldest suitable one among `PATH` and
/// `/usr/lib/postgresql/*/bin` (a matching major avoids SQL that older servers
/// reject).
///
/// # Errors
/// No such tool, or only older ones.
pub async fn find_tool(name: &str, server: &DatabaseInfo) -> Result<Tool, SourceError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("STRATA_PG_BIN_DIR") {
        candidates.push(Path::new(&dir).join(name));
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
        }
        if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
            candidates.extend(dirs.flatten().map(|d| d.path().join("bin").join(name)));
        }
    }
    let searched = candidates
        .iter()
        .map(|p| p.parent().unwrap_or(p).display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut found = Vec::new();
    for path in candidates.into_iter().filter(|p| p.is_file()) {
        if let Some((version, major)) = tool_version(&path).await {
            found.push(Tool {
                path,
                version,
                major,
            });
        }
    }
    if let Some(best) = found
        .iter()
        .filter(|t| t.major >= server.major())
        .min_by_key(|t| t.major)
    {
        return Ok(best.clone());
    }
    match found.into_iter().max_by_key(|t| t.major) {
        Some(newest) => Err(SourceError::ToolTooOld {
            tool: name.to_owned(),
            tool_version: newest.version,
            server_version: server.server_version.clone(),
            server_major: server.major(),
        }),
        None => Err(SourceError::ToolMissing {
            tool: name.to_owned(),
            searched,
        }),
    }
}

/// Captures a child's stderr in the background (bounded).
pub fn capture_stderr(stderr: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut stderr = stderr;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > STDERR_CAP {
                buf.drain(..buf.len() - STDERR_CAP);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Turns captured stderr into one line for an error message.
pub fn one_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "no error output".into();
    }
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Checks a finished child's status together with its stderr.
///
/// # Errors
/// A non-zero exit or death by signal.
pub fn check_status(tool: &str, status: ExitStatus, stderr: &str) -> Result<(), SourceError> {
    if status.success() {
        return Ok(());
    }
    Err(SourceError::Failed {
        tool: tool.to_owned(),
        status: status.to_string(),
        stderr: one_line(stderr),
    })
}

/// A running `pg_dump`: read its stdout, then [`PgDump::finish`] decides.
pub struct PgDump {
    /// `pg_dump`, or `pg_basebackup` for a physical job.
    name: &'static str,
    child: Child,
    stdout: ChildStdout,
    stderr: JoinHandle<String>,
}

impl PgDump {
    /// Starts pg_dump on `url` in `format`, inside `snapshot` when given.
    ///
    /// # Errors
    /// The program could not be started.
    pub fn spawn(
        tool: &Tool,
        url: &DbUrl,
        format: DumpFormat,
        snapshot: Option<&str>,
    ) -> Result<Self, SourceError> {
        let mut cmd = Command::new(&tool.path);
        // UTF-8 whatever the database's encoding, so the restore can read the
        // script's statements as text.
        cmd.args(["--no-password", "--encoding=UTF8"]);
        match format {
            DumpFormat::Plain => cmd.arg("--format=plain"),
            // strata compresses the stream itself.
            DumpFormat::Custom => cmd.args(["--format=custom", "--compress=0"]),
            DumpFormat::Base => return Self::spawn_base_backup(tool, url, "strata"),
        };
        if let Some(s) = snapshot {
            cmd.arg(format!("--snapshot={s}"));
        }
        cmd.envs(url.libpq_env(tool.major))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| SourceError::Spawn {
            tool: "pg_dump".into(),
            source,
        })?;
        Ok(Self::wrap("pg_dump", child))
    }

    fn wrap(name: &'static str, mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = capture_stderr(child.stderr.take().expect("piped stderr"));
        Self {
            name,
            child,
            stdout,
            stderr,
        }
    }

    /// Starts `pg_basebackup` writing the data directory as one tar to stdout,
    /// after a fast checkpoint, with the WAL from its start to its end in the
    /// tar (`--wal-method=fetch`: the copy is consistent on its own, and the
    /// server does not wait, in one-second steps, for the archiver). `label`
    /// names it in the backup history file ([`BaseBackupPoints`]).
    ///
    /// # Errors
    /// The program could not be started.
    pub fn spawn_base_backup(tool: &Tool, url: &DbUrl, label: &str) -> Result<Self, SourceError> {
        let mut cmd = Command::new(&tool.path);
        cmd.args([
            "--no-password",
            "--pgdata=-",
            "--format=tar",
            "--wal-method=fetch",
            "--checkpoint=fast",
        ])
        .arg(format!("--label={label}"))
        .envs(url.libpq_env(tool.major))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| SourceError::Spawn {
            tool: "pg_basebackup".into(),
            source,
        })?;
        Ok(Self::wrap("pg_basebackup", child))
    }

    /// Fills `buf` (up to its capacity) from pg_dump's stdout; 0 at the end.
    ///
    /// # Errors
    /// Reading the pipe failed.
    pub async fn read(&mut self, buf: &mut bytes::BytesMut) -> Result<usize, SourceError> {
        let start = buf.len();
        while buf.len() < buf.capacity() {
            let n = self
                .stdout
                .read_buf(buf)
                .await
                .map_err(|source| SourceError::Read {
                    tool: self.name.into(),
                    source,
                })?;
            if n == 0 {
                break;
            }
        }
        Ok(buf.len() - start)
    }

    /// Waits for the child to exit and fails on anything but success, even when
    /// every byte streamed fine. Returns what it wrote on stderr.
    ///
    /// # Errors
    /// Non-zero exit or a signal, with the child's last error lines.
    pub async fn finish(mut self) -> Result<String, SourceError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| SourceError::Spawn {
                tool: self.name.into(),
                source,
            })?;
        let stderr = self.stderr.await.unwrap_or_default();
        check_status(self.name, status, &stderr).map(|()| stderr)
    }

    /// Stops pg_dump at once (a failed or cancelled run).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Where a base backup starts and ends in the WAL, from the backup history
/// file (`….backup`) the server archives when the backup ends:
/// "START WAL LOCATION: 0/2000028 (file …)", "STOP WAL LOCATION: …",
/// "START TIMELINE: 1", "LABEL: …".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupPoints {
    pub start: u64,
    pub timeline: u32,
    pub stop: u64,
    pub label: String,
}

impl BaseBackupPoints {
    /// Reads a backup history file.
    pub fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_owned()))
        };
        let lsn =
            |name: &str| crate::domain::wal::parse_lsn(field(name)?.split_whitespace().next()?);
        Some(Self {
            start: lsn("START WAL LOCATION:")?,
            stop: lsn("STOP WAL LOCATION:")?,
            timeline: field("START TIMELINE:")?.parse().ok()?,
            label: field("LABEL:")?,
        })
    }
}

/// Row counts of every user table in the current snapshot (custom-format dumps,
/// whose stream strata does not parse).
///
/// # Errors
/// A query failed.
pub async fn count_rows(
    url: &DbUrl,
    client: &tokio_postgres::Client,
) -> Result<BTreeMap<String, u64>, SourceError> {
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname !~ '^pg_(toast|temp)' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e')",
            &[],
        )
        .await
        .map_err(|e| url.query_error(&e))?;
    let mut counts = BTreeMap::new();
    for row in rows {
        let name: String = row.get(0);
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM ONLY {name}"), &[])
            .await
            .map_err(|e| url.query_error(&e))?
            .get(0);
        counts.insert(name, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests;
