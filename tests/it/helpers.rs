//! Shared test set-up: databases on the real local PostgreSQL, buckets on the real
//! moto and Garage servers started by scripts/test, configs with fresh keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_s3::Client;
use strata::app::Strata;
use strata::config::Config;
use strata::storage::s3::{S3Settings, S3Target};

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test, which starts moto and Garage")
    })
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Runs SQL with psql against `db`, panicking with psql's error on failure.
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn db_exists(name: &str) -> bool {
    psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    ) == "1"
}

/// A uniquely named database, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> Self {
        let name = unique("strata_t_");
        psql("postgres", &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    /// A name for a database that does not exist yet (dropped at the end too).
    pub fn reserve() -> Self {
        Self {
            name: unique("strata_r_"),
        }
    }

    pub fn url(&self) -> String {
        format!("{PG}/{}", self.name)
    }

    pub fn exec(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }

    /// Waits (30 s at most) until `sql` returns `expected`: for rows a daemon
    /// writes in the background (its state database outbox).
    pub async fn wait_for(&self, sql: &str, expected: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = self.exec(sql);
            if got == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{sql}` gave {got:?}, not {expected:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// pg_dump of the database, for comparing a restore with its source.
    pub fn dump(&self) -> String {
        let out = Command::new("pg_dump")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "--no-owner",
                "-d",
                &self.name,
            ])
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump writes a random \restrict key into every dump; the rest must match.
        String::from_utf8(out.stdout)
            .expect("utf-8 dump")
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn exists(&self) -> bool {
        db_exists(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Which S3 server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    Moto,
    Garage,
}

/// A fresh bucket on a real S3 server, with the settings to reach it.
pub struct Bucket {
    pub settings: S3Settings,
}

impl Bucket {
    pub async fn create(kind: S3Kind) -> Self {
        let name = unique("strata-t-");
        let mut settings = match kind {
            S3Kind::Moto => {
                let mut s = S3Settings::new(&name, "us-east-1");
                s.endpoint = Some(env("STRATA_TEST_MOTO"));
                s.credentials = Some(("testing".into(), "testing".into()));
                s
            }
            S3Kind::Garage => {
                let mut s = S3Settings::new(&name, "garage");
                s.endpoint = Some(env("STRATA_TEST_GARAGE"));
                s.credentials = Some((
                    env("STRATA_TEST_GARAGE_KEY_ID"),
                    env("STRATA_TEST_GARAGE_SECRET").into(),
                ));
                // Garage implements SSE-C only, not SSE-S3 headers.
                s.server_side_encryption = None;
                s
            }
        };
        settings.path_style = true;
        settings.max_attempts = 3;
        settings.part_size = 5 * 1024 * 1024;
        let target = S3Target::new("setup", settings.clone()).await;
        target
            .client()
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("create bucket");
        Self { settings }
    }

    /// A moto bucket created with Object Lock enabled (and so versioned).
    pub async fn create_locked() -> Self {
        let name = unique("strata-l-");
        let mut s = S3Settings::new(&name, "us-east-1");
        s.endpoint = Some(env("STRATA_TEST_MOTO"));
        s.credentials = Some(("testing".into(), "testing".into()));
        s.path_style = true;
        s.max_attempts = 3;
        s.part_size = 5 * 1024 * 1024;
        S3Target::new("setup", s.clone())
            .await
            .client()
            .create_bucket()
            .bucket(&name)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .expect("create locked bucket");
        Self { settings: s }
    }

    pub async fn target(&self, name: &str) -> S3Target {
        S3Target::new(name, self.settings.clone()).await
    }

    pub async fn client(&self) -> Client {
        self.target("client").await.client().clone()
    }

    /// Incomplete multipart uploads left in the bucket.
    pub async fn incomplete_uploads(&self) -> usize {
        let out = self
            .client()
            .await
            .list_multipart_uploads()
            .bucket(&self.settings.bucket)
            .send()
            .await
            .expect("list uploads");
        out.uploads().len()
    }

    /// Every object key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let out = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .send()
            .await
            .expect("list");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// YAML for an s3 target pointing at this bucket (credentials via env in the
    /// CLI, so they are given here only for the library).
    pub fn yaml(&self, name: &str, endpoint: Option<&str>) -> String {
        let s = &self.settings;
        let sse = if s.server_side_encryption.is_some() {
            "AES256"
        } else {
            "none"
        };
        format!(
            "  {name}: {{ kind: s3, bucket: {}, region: {}, endpoint: \"{}\", path_style: true, prefix: database-backups, server_side_encryption: {sse}, part_size_mib: 5 }}\n",
            s.bucket,
            s.region,
            endpoint.map_or_else(|| s.endpoint.clone().unwrap_or_default(), str::to_owned)
        )
    }
}

/// A working directory with a key file and a config.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        strata::keys::generate(&dir.path().join("k1.key")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// Writes config.yaml with `targets_yaml` (lines under `targets:`) and one job.
    pub fn write_config(&self, targets_yaml: &str, job_yaml: &str) -> PathBuf {
        self.write_config_with("", targets_yaml, job_yaml)
    }

    /// Like `write_config`, with extra top-level YAML (http, state, …).
    pub fn write_config_with(&self, top: &str, targets_yaml: &str, job_yaml: &str) -> PathBuf {
        let text = format!(
            "timezone: America/New_York\n{top}encryption:\n  active: k1\n  keys: {{ k1: {} }}\ntargets:\n  local: {{ kind: local, path: {}, prefix: database-backups }}\n{targets_yaml}jobs:\n{job_yaml}",
            self.path().join("k1.key").display(),
            self.backups().display()
        );
        let path = self.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub async fn strata(&self, targets_yaml: &str, job_yaml: &str, buckets: &[&Bucket]) -> Strata {
        let path = self.write_config(targets_yaml, job_yaml);
        let mut config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // Tests give each bucket's credentials directly instead of the AWS chain.
        for t in config.targets.values_mut() {
            if let strata::config::TargetKind::S3 { settings, .. } = &mut t.kind {
                if let Some(b) = buckets
                    .iter()
                    .find(|b| b.settings.bucket == settings.bucket)
                {
                    settings.credentials = b.settings.credentials.clone();
                    settings.max_attempts = 3;
                }
            }
        }
        Strata::build(config).await
    }
}

/// A one-line job definition.
pub fn job(name: &str, url: &str, targets: &str, extra: &str) -> String {
    format!(
        "  {name}: {{ database_url: \"{url}\", targets: [{targets}], file_prefix: {name}{extra} }}\n"
    )
}

/// Files under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A loopback port nobody listens on at the moment, for a server a test starts. Chosen below the kernel's ephemeral
/// range (32768-60999 here): a port the kernel hands out for port 0 can be
/// taken by any outgoing connection before the server binds it (a daemon then
/// "never answered"); these are only ever taken by another test's choice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts at its own place in 15000-31999.
    let seed = std::process::id() % 1700 * 10;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(15_000 + (seed + n) % 17_000).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Path of the built strata binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// An HTTP server on loopback that records every JSON body POSTed to it.
pub struct WebhookReceiver {
    pub url: String,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        use axum::routing::post;
        let bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
        let app = axum::Router::new().route(
            "/hook",
            post({
                let bodies = bodies.clone();
                move |axum::Json(v): axum::Json<serde_json::Value>| {
                    let bodies = bodies.clone();
                    async move {
                        bodies.lock().unwrap().push(v);
                        "ok"
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, bodies }
    }

    /// Bodies of kind `kind` received so far.
    pub fn of_kind(&self, kind: &str) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Waits up to 30 s for `n` bodies of `kind`.
    pub async fn wait_for(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = self.of_kind(kind);
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} {kind} alert(s), expected {n}: {:?}",
                got.len(),
                self.bodies.lock().unwrap()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// A real SMTP server on loopback (aiosmtpd from the test venv) whose received
/// messages are written to a file.
pub struct SmtpServer {
    /// `smtp://host:port` of a plain server; `host:port` of a TLS one (the
    /// test adds the scheme and the user).
    pub url: String,
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        let port = free_port();
        let python = std::env::var("STRATA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(python)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Debugging",
                "-l",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd runs (scripts/test installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            url: format!("smtp://127.0.0.1:{port}"),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn received(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 30 s for `needle` in the received mail.
    pub async fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = self.received();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no mail containing {needle:?}: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl SmtpServer {
    /// An SMTP server that demands TLS (`starttls`: STARTTLS required; `smtps`:
    /// TLS from the start) with a certificate from a throwaway CA (written to
    /// [`SmtpServer::ca_file`]), and AUTH with `user`/`password`.
    /// With `stall`, a failed AUTH is never answered.
    pub fn start_tls(mode: &str, user: &str, password: &str, stall: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let python = std::env::var("STRATA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/smtp_tls_server.py"
            ))
            .arg(dir.path())
            .arg(port.to_string())
            .args([mode, user, password])
            .args(stall.then_some("stall"))
            .stderr(std::fs::File::create(dir.path().join("server.err")).unwrap())
            .spawn()
            .expect("python with aiosmtpd runs (scripts/test installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !dir.path().join("ready").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS SMTP server did not start: {}",
                std::fs::read_to_string(dir.path().join("server.err")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            url: format!("127.0.0.1:{port}"),
            child,
            log: dir.path().join("mail.log"),
            _dir: dir,
        }
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server that accepts every connection and never says a word.
pub struct Silent {
    pub port: u16,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        Self { port }
    }
}
