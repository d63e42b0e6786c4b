//! The daemon: API status codes and auth, health and metrics, the state database
//! (and its absence), replicas sharing it, SIGTERM and SIGKILL mid-backup.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use strata::config::Config;
use strata::daemon::Daemon;
use strata::policy::schedule::{Clock, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Bucket, S3Kind, Setup, TestDb, bin, files, free_port, job, psql};
use crate::proxy::{Fault, FaultProxy, Rule};

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

fn write_token(dir: &Path) -> std::path::PathBuf {
    write_secret(dir, "api-token", TOKEN)
}

fn write_secret(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// How to build an [`App`]; the defaults give one job `app` on the local target,
/// a fresh state database, API tokens and the system clock.
#[derive(Default)]
struct Opts<'a> {
    /// Extra top-level YAML (alerts, …).
    top: &'a str,
    /// Extra lines under `targets:`.
    targets: &'a str,
    /// The job's targets (default `local`).
    job_targets: Option<&'a str>,
    /// Extra keys of the job, starting with ", ".
    job_extra: &'a str,
    /// Buckets whose credentials the S3 targets use.
    buckets: &'a [&'a Bucket],
    /// Another state database URL instead of a fresh one.
    state: Option<String>,
    no_token: bool,
    clock: Option<Arc<dyn Clock>>,
}

/// A clock the test can move ahead of the system's.
#[derive(Default)]
struct AheadClock {
    seconds: std::sync::atomic::AtomicI64,
}

impl AheadClock {
    fn advance(&self, d: Duration) {
        self.seconds.fetch_add(
            i64::try_from(d.as_secs()).unwrap(),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

impl Clock for AheadClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + chrono::Duration::seconds(self.seconds.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn nap(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// An in-process daemon on a free port with a fresh state database.
struct App {
    daemon: Arc<Daemon>,
    url: String,
    http: reqwest::Client,
    state: Option<TestDb>,
    source: TestDb,
    setup: Setup,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl App {
    async fn spawn(job_extra: &str, state: Option<String>, token: bool) -> Self {
        Self::spawn_with("", job_extra, state, token).await
    }

    /// Like `spawn`, with extra top-level YAML (alerts, …).
    async fn spawn_with(
        top_extra: &str,
        job_extra: &str,
        state: Option<String>,
        token: bool,
    ) -> Self {
        Self::spawn_opts(Opts {
            top: top_extra,
            job_extra,
            state,
            no_token: !token,
            ..Opts::default()
        })
        .await
    }

    async fn spawn_opts(o: Opts<'_>) -> Self {
        let setup = Setup::new();
        let source = TestDb::create();
        source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
        let state_db = if o.state.is_none() {
            Some(TestDb::create())
        } else {
            None
        };
        let state_url = o.state.unwrap_or_else(|| state_db.as_ref().unwrap().url());
        let token_line = if o.no_token {
            String::new()
        } else {
            format!(
                ", token_file: {}, admin_token_file: {}",
                write_token(setup.path()).display(),
                write_secret(setup.path(), "admin-token", ADMIN_TOKEN).display()
            )
        };
        let top = format!(
            "http: {{ listen: \"127.0.0.1:0\"{token_line} }}\nstate: {{ database_url: \"{state_url}\" }}\n{}",
            o.top
        );
        let job_targets = o.job_targets.unwrap_or("local");
        let path = setup.write_config_with(
            &top,
            o.targets,
            &job("app", &source.url(), job_targets, o.job_extra),
        );
        let mut config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // Buckets' credentials given directly instead of the AWS chain.
        for t in config.targets.values_mut() {
            if let strata::config::TargetKind::S3 { settings, .. } = &mut t.kind
                && let Some(b) = o
                    .buckets
                    .iter()
                    .find(|b| b.settings.bucket == settings.bucket)
            {
                settings.credentials = b.settings.credentials.clone();
            }
        }
        let clock = o.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let daemon = Daemon::build(config, clock).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(
            daemon
                .clone()
                .run_until_stopped(
                    listener,
                    strata::http::router(daemon.clone()),
                    stop.clone().cancelled_owned(),
                )
                .map_unit(),
        );
        // Start-up work runs in the background: wait for it (and for a state
        // database that exists to be connected) so tests start from a settled
        // daemon.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.started()
            || (state_db.is_some() && daemon.state.as_ref().is_some_and(|s| !s.reachable()))
        {
            assert!(
                Instant::now() < deadline,
                "the daemon's start-up did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            daemon,
            url,
            http: reqwest::Client::new(),
            state: state_db,
            source,
            setup,
            stop,
            handle,
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    async fn health(&self) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}/health", self.url))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Waits for a run to leave `running` and returns it.
    async fn finished(&self, run_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r: Value = self
                .get(&format!("/runs/{run_id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if r["status"] != "running" {
                return r;
            }
            assert!(Instant::now() < deadline, "run {run_id} did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs a backup of `app` (202 expected) and returns the run once finished.
    async fn backup_now(&self) -> Value {
        let r = self.post("/backups/app").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let run_id = run_id_of(r).await;
        self.finished(&run_id).await
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.unwrap();
    }
}

pub(crate) async fn run_id_of(r: reqwest::Response) -> String {
    r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// How many manifests (backups) are under `dir`.
fn manifest_names(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .collect()
}

fn manifests(dir: &Path) -> usize {
    files(dir)
        .iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .count()
}

trait MapUnit {
    fn map_unit(self) -> impl std::future::Future<Output = ()> + Send;
}

impl<F: std::future::Future<Output = Result<(), strata::daemon::DaemonError>> + Send> MapUnit
    for F
{
    async fn map_unit(self) {
        self.await.unwrap();
    }
}

#[tokio::test]
async fn bearer_token_is_required_and_checked() {
    let app = App::spawn("", None, true).await;
    let url = format!("{}/backups/app", app.url);
    let c = &app.http;
    for req in [
        c.post(&url),
        c.post(&url).bearer_auth("wrong-token-0123456789abcdef"),
        c.post(&url).bearer_auth(&TOKEN[..TOKEN.len() - 1]),
        c.post(&url).bearer_auth(format!("{TOKEN}x")),
        c.post(&url)
            .header("Authorization", format!("Basic {TOKEN}")),
        c.get(&url),
        c.get(format!("{}/runs/whatever", app.url)),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    assert_eq!(app.backup_now().await["status"], "success");
    // The audit log names the caller by token fingerprint, never the token.
    let state = app.state.as_ref().unwrap();
    let actors = state
        .exec("SELECT string_agg(DISTINCT actor, ',') FROM audit_log WHERE actor LIKE 'api:%'");
    assert!(actors.starts_with("api:") && actors.len() == 12, "{actors}");
    assert_eq!(state.exec(&format!("SELECT count(*) FROM audit_log WHERE detail::text LIKE '%{TOKEN}%' OR actor LIKE '%{TOKEN}%'")), "0");
    // The audit log is append-only.
    let out = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &state.name,
            "-c",
            "DELETE FROM audit_log",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit_log is append-only"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_api_is_disabled_without_a_token_file() {
    let app = App::spawn("", None, false).await;
    let r = app
        .http
        .post(format!("{}/backups/app", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.http
            .get(format!("{}/metrics", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_leave_the_daemon_working() {
    let app = App::spawn("", None, true).await;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (app.post("/backups/nope"), StatusCode::NOT_FOUND),
        (app.get("/backups/nope"), StatusCode::NOT_FOUND),
        (
            app.post("/backups/app").body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.post("/backups/app").body("[1, 2]"),
            StatusCode::BAD_REQUEST,
        ),
        (app.get("/runs/no-such-run"), StatusCode::NOT_FOUND),
        (app.get("/no/such/endpoint"), StatusCode::NOT_FOUND),
    ];
    for (req, status) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status == StatusCode::PAYLOAD_TOO_LARGE || body["error"].is_string(),
            "{body}"
        );
    }
    // A huge body is refused once the limit is passed, without reading the rest
    // (a client that kept writing would see the connection closed under it).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "POST /backups/app HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // Twice the limit, of the announced megabyte: the server answers and stops.
        conn.write_all(&[b'x'; 32 * 1024]).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = conn.read(&mut answer).await.unwrap();
        let status = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    }
    let r = app
        .post("/backups/app")
        .body("{\"reason\": \"before the migration\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run_id = run_id_of(r).await;
    assert_eq!(app.finished(&run_id).await["status"], "success");
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_triggers_start_exactly_one_run() {
    let app = App::spawn(", compression: \"gzip:9\"", None, true).await;
    app.source
        .exec("CREATE TABLE more AS SELECT g, md5(g::text) FROM generate_series(1, 300000) g");
    let posts = (0..6).map(|_| app.post("/backups/app").send());
    let responses = futures::future::join_all(posts).await;
    let statuses: Vec<StatusCode> = responses
        .iter()
        .map(|r| r.as_ref().unwrap().status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        5,
        "{statuses:?}"
    );
    // A second process (the CLI) is refused as well while the run goes on.
    let accepted = responses
        .into_iter()
        .map(Result::unwrap)
        .find(|r| r.status() == StatusCode::ACCEPTED)
        .unwrap();
    let run_id = run_id_of(accepted).await;
    assert_eq!(app.finished(&run_id).await["status"], "success");
    let state = app.state.as_ref().unwrap();
    assert_eq!(state.exec("SELECT count(*) FROM runs"), "1");
    assert_eq!(manifests(&app.setup.backups()), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn health_is_503_past_rpo_and_200_after_a_backup_and_metrics_move() {
    let app = App::spawn(", rpo: 1h", None, true).await;
    let (status, body) = app.health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["jobs"]["app"]["within_rpo"], false);
    assert_eq!(body["state_db"], "ok");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Counters exist at 0 from the start, so `increase()` sees the first change.
    assert!(metrics.contains("strata_backup_runs_total{job=\"app\",result=\"success\"} 0"));
    assert!(metrics.contains("strata_target_upload_failures_total{target=\"local\"} 0"));

    let r = app.post("/backups/app").send().await.unwrap();
    let run_id = run_id_of(r).await;
    let run = app.finished(&run_id).await;
    assert_eq!(run["status"], "success");
    assert!(
        run["backup_id"]
            .as_str()
            .unwrap()
            .starts_with("app_backup_")
    );
    let (status, body) = app.health().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"]["app"]["last_result"], "success");
    assert!(body["jobs"]["app"]["age_seconds"].as_i64().unwrap() < 60);

    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "strata_backup_last_success_timestamp_seconds{job=\"app\"}",
        "strata_backup_last_duration_seconds{job=\"app\"}",
        "strata_backup_last_size_bytes{job=\"app\"}",
        "strata_backup_last_raw_bytes{job=\"app\"}",
        "strata_backup_runs_total{job=\"app\",result=\"success\"} 1",
        "strata_backup_running{job=\"app\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    // A second backup moves the counters and yields a size-change ratio.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app.post("/backups/app").send().await.unwrap();
    let run_id = run_id_of(r).await;
    app.finished(&run_id).await;
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strata_backup_runs_total{job=\"app\",result=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_backup_size_change_ratio{job=\"app\"}"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn without_the_state_database_backups_still_run_and_health_says_so() {
    let app = App::spawn(
        "",
        Some("postgres://postgres@127.0.0.1:9/strata_state".into()),
        true,
    )
    .await;
    let (status, body) = app.health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["state_db"], "unreachable");
    assert_eq!(app.backup_now().await["status"], "success");
    assert_eq!(manifests(&app.setup.backups()), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn runs_kept_while_the_state_database_was_down_are_written_when_it_returns() {
    let state_db = TestDb::reserve(); // does not exist yet
    let app = App::spawn("", Some(state_db.url()), true).await;
    let r = app.post("/backups/app").send().await.unwrap();
    let run_id = run_id_of(r).await;
    assert_eq!(app.finished(&run_id).await["status"], "success");
    psql("postgres", &format!("CREATE DATABASE {}", state_db.name));
    // The daemon reconnects within its 10 s health ping and flushes its outbox.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = app.health().await;
        if body["state_db"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "state database never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        state_db.exec(&format!("SELECT status FROM runs WHERE id = '{run_id}'")),
        "success"
    );
    assert_eq!(
        state_db.exec("SELECT count(*) FROM audit_log WHERE action LIKE 'backup.%'"),
        "2"
    );
    app.shutdown().await;
}

/// A `strata run` process.
/// A `strata run` process on a free port.
pub(crate) struct Proc {
    child: Child,
    pub(crate) url: String,
    pub(crate) log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub(crate) fn spawn(
        setup: &Setup,
        name: &str,
        top_extra: &str,
        targets: &str,
        job_yaml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let token = write_token(setup.path());
        let top = format!(
            "http: {{ listen: \"127.0.0.1:{port}\", token_file: {} }}\n{top_extra}",
            token.display()
        );
        let config = setup.write_config_with(&top, targets, job_yaml);
        let named = setup.path().join(format!("{name}.yaml"));
        std::fs::rename(config, &named).unwrap();
        let log_path = setup.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(bin())
            .arg("-c")
            .arg(&named)
            .arg("run")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log_path,
        }
    }

    pub(crate) async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/health", self.url)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon at {} never answered: {}",
                self.url,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the daemon's start-up work (clean-up of stale uploads,
    /// history, catch-up) is done: `/health` stops saying `starting`.
    pub(crate) async fn started(&self) {
        self.health_until("start-up ended", |h| h["starting"] == false)
            .await;
    }

    /// Waits until the daemon says its state database is `ok` (connected,
    /// migrated, caught up), so the test can read the state tables.
    pub(crate) async fn state_ready(&self) {
        self.health_until("state database ok", |h| h["state_db"] == "ok")
            .await;
    }

    /// Waits (30 s at most) until `/health` satisfies `done`.
    async fn health_until(&self, what: &str, done: impl Fn(&Value) -> bool) {
        self.ready().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = reqwest::get(format!("{}/health", self.url)).await.unwrap();
            let body: Value = r.json().await.unwrap();
            if done(&body) {
                return;
            }
            assert!(Instant::now() < deadline, "never {what}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit without blocking the runtime (the fault
    /// proxy runs on it).
    pub(crate) async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn replicas_sharing_a_state_database_run_each_slot_once() {
    let setup = Setup::new();
    let source = TestDb::create();
    source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g");
    let state = TestDb::create();
    let top = format!("state: {{ database_url: \"{}\" }}\n", state.url());
    // Approval keeps retention from deleting the same-day backups counted below.
    let job_yaml = job(
        "app",
        &source.url(),
        "local",
        ", schedule: \"*/2 * * * * *\", rpo: 1h, prune: approval",
    );
    let replicas: Vec<Proc> = (0..3)
        .map(|i| Proc::spawn(&setup, &format!("r{i}"), &top, "", &job_yaml, &[]))
        .collect();
    for r in &replicas {
        r.state_ready().await;
    }
    // Until five slots were claimed (one every 2 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while state
        .exec("SELECT count(*) FROM schedule_claims")
        .parse::<u32>()
        .unwrap()
        < 5
    {
        assert!(
            Instant::now() < deadline,
            "fewer than 5 slots claimed in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // They competed: some replica found a slot already claimed by another.
    let mut lost = 0u64;
    for r in &replicas {
        let text = reqwest::get(format!("{}/metrics", r.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        lost += text
            .lines()
            .filter(|l| {
                l.starts_with("strata_schedule_claims_total{") && l.contains("result=\"lost\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    assert!(
        lost > 0,
        "no replica ever lost a claim: they did not compete"
    );
    for r in &replicas {
        r.signal("-TERM");
    }
    for mut r in replicas {
        assert!(r.wait(Duration::from_secs(30)).await.success());
    }
    let slots = state.exec("SELECT count(*) FROM schedule_claims");
    let runs = state.exec("SELECT count(*) FROM runs");
    let doubled = state.exec("SELECT count(*) FROM (SELECT scheduled_for FROM runs GROUP BY scheduled_for HAVING count(*) > 1) d");
    let hosts = state.exec("SELECT count(DISTINCT host) FROM runs");
    assert_eq!(doubled, "0", "a slot ran twice");
    assert!(
        slots.parse::<u32>().unwrap() >= 4,
        "only {slots} slots in 9 s"
    );
    assert!(
        runs == slots || runs.parse::<u32>().unwrap() + 1 == slots.parse::<u32>().unwrap(),
        "{runs} runs for {slots} slots"
    );
    let manifests = manifests(&setup.backups());
    assert_eq!(
        manifests.to_string(),
        state.exec("SELECT count(*) FROM runs WHERE status = 'success'")
    );
    assert!(hosts.parse::<u32>().unwrap() >= 1, "no run recorded");
}

/// A `strata run` process in the middle of a backup: a 40 MiB database going to
/// local disk and to a moto bucket behind a proxy that delays every part, started
/// through the API; returns once the multipart upload exists.
struct MidUpload {
    setup: Setup,
    source: TestDb,
    state: TestDb,
    bucket: Bucket,
    _proxy: FaultProxy,
    env: Vec<(&'static str, String)>,
    daemon: Proc,
    run_id: String,
}

impl MidUpload {
    /// A daemon whose backup is mid-upload; `daemon_section` is added to its config.
    async fn start(daemon_section: &str) -> Self {
        use secrecy::ExposeSecret;
        let setup = Setup::new();
        let source = crate::failures::big_db(40);
        let state = TestDb::create();
        let bucket = Bucket::create(S3Kind::Moto).await;
        let proxy = FaultProxy::start(bucket.settings.endpoint.as_deref().unwrap()).await;
        proxy.add(Rule {
            method: "PUT",
            query_has: "partNumber=",
            fault: Fault::Delay(2000),
            times: None,
        });
        let targets = bucket
            .yaml("s3", Some(&proxy.url()))
            .replace("part_size_mib: 5", "part_size_mib: 5, parts_in_flight: 1");
        let top = format!(
            "state: {{ database_url: \"{}\" }}\n{daemon_section}",
            state.url()
        );
        let (id, secret) = bucket.settings.credentials.clone().unwrap();
        let env = vec![
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret.expose_secret().to_owned()),
        ];
        let daemon = Proc::spawn(
            &setup,
            "d",
            &top,
            &targets,
            &Self::job(&source),
            &Self::env_of(&env),
        );
        daemon.ready().await;
        let run_id = post_backup(&daemon.url).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while bucket.incomplete_uploads().await == 0 {
            assert!(Instant::now() < deadline, "the upload never started");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            setup,
            source,
            state,
            bucket,
            _proxy: proxy,
            env,
            daemon,
            run_id,
        }
    }

    fn job(source: &TestDb) -> String {
        job("app", &source.url(), "local, s3", ", compression: none")
    }

    fn env_of<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Runs `strata backup app` with the daemon's config and environment.
    async fn cli_backup(&self, extra: &[(&str, &str)]) -> std::process::Output {
        tokio::process::Command::new(bin())
            .arg("-c")
            .arg(self.setup.path().join("d.yaml"))
            .args(["backup", "app"])
            .envs(Self::env_of(&self.env))
            .envs(extra.iter().copied())
            .output()
            .await
            .unwrap()
    }
}

async fn post_backup(url: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{url}/backups/app"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    run_id_of(r).await
}

#[tokio::test]
async fn sigterm_mid_backup_aborts_cleanly_and_records_the_run() {
    let mut mid = MidUpload::start("daemon: { shutdown_grace: 0s }\n").await;
    mid.daemon.signal("-TERM");
    let log = mid.daemon.log.clone();
    let status = mid.daemon.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        mid.bucket.incomplete_uploads().await,
        0,
        "an incomplete multipart upload was left; log:\n{log}"
    );
    assert_eq!(mid.bucket.keys().await, Vec::<String>::new());
    assert_eq!(files(&mid.setup.backups()), Vec::<String>::new());
    assert_eq!(
        mid.state.exec(&format!(
            "SELECT status FROM runs WHERE id = '{}'",
            mid.run_id
        )),
        "aborted"
    );
}

#[tokio::test]
async fn after_sigkill_mid_upload_the_next_start_cleans_up_and_backs_up() {
    let mut mid = MidUpload::start("").await;
    mid.daemon.signal("-KILL");
    mid.daemon.wait(Duration::from_secs(10)).await;
    assert!(mid.bucket.incomplete_uploads().await > 0);
    assert!(
        files(&mid.setup.backups())
            .iter()
            .any(|f| f.contains(".strata-partial-")),
        "no staging file left by the kill"
    );

    // Restart (straight to moto this time) with debris older than 0 s treated as
    // stale, on the same state database: the killed process's job lock died with
    // its connection, so the backup below is not refused.
    let env = MidUpload::env_of(&mid.env);
    let top = format!(
        "state: {{ database_url: \"{}\" }}\ndaemon: {{ stale_after: 0s }}\n",
        mid.state.url()
    );
    let mut d = Proc::spawn(
        &mid.setup,
        "d2",
        &top,
        &mid.bucket.yaml("s3", None),
        &MidUpload::job(&mid.source),
        &env,
    );
    d.started().await;
    assert_eq!(
        mid.bucket.incomplete_uploads().await,
        0,
        "stale upload not cleaned at start-up"
    );
    assert!(
        !files(&mid.setup.backups())
            .iter()
            .any(|f| f.contains(".strata-partial-")),
        "staging file not cleaned"
    );
    let run_id = post_backup(&d.url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let run: Value = reqwest::Client::new()
            .get(format!("{}/runs/{run_id}", d.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if run["status"] != "running" {
            break run;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run["status"], "success", "{run}");
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn the_cli_is_refused_while_the_daemon_runs_the_same_job() {
    let mut mid = MidUpload::start("daemon: { shutdown_grace: 0s }\n").await;
    let cli = mid.cli_backup(&[]).await;
    assert_eq!(cli.status.code(), Some(1));
    let err = String::from_utf8_lossy(&cli.stderr);
    assert!(
        err.contains("a backup of job 'app' is already running"),
        "{err}"
    );
    mid.daemon.signal("-TERM");
    assert!(mid.daemon.wait(Duration::from_secs(60)).await.success());
    // Once the daemon is gone, the CLI runs, and its run is recorded and audited
    // as the daemon's are.
    let cli = mid.cli_backup(&[("USER", "alice")]).await;
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        mid.state
            .exec("SELECT status FROM runs WHERE trigger = 'cli'"),
        "success"
    );
    assert_eq!(
        mid.state.exec(
            "SELECT string_agg(action, ',' ORDER BY id) FROM audit_log WHERE actor = 'cli:alice'"
        ),
        "backup.start,backup.finish"
    );
}

impl App {
    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `/metrics` shows `line` (alert deliveries are counted when
    /// the channel has answered, after the receiver already holds the message).
    async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = self.metrics().await;
            if metrics.contains(line) {
                return;
            }
            assert!(Instant::now() < deadline, "no `{line}` in:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `dir` holds `n` manifests.
    async fn wait_for_manifests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while manifests(&self.setup.backups()) != n {
            assert!(
                Instant::now() < deadline,
                "{} manifests, expected {n}",
                manifests(&self.setup.backups())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn retention_after_a_run_counts_days_on_the_daemons_clock() {
    let clock = Arc::new(AheadClock::default());
    let app = App::spawn_opts(Opts {
        job_extra: ", retention: { daily: 2 }",
        clock: Some(clock.clone()),
        ..Opts::default()
    })
    .await;
    // One backup a day for four days of the daemon's clock (seconds of real time).
    let mut ids = Vec::new();
    for day in 0..4 {
        if day > 0 {
            clock.advance(Duration::from_secs(24 * 3600));
        }
        let run = app.backup_now().await;
        assert_eq!(run["status"], "success", "{run}");
        ids.push(run["backup_id"].as_str().unwrap().to_owned());
    }
    // daily: 2 keeps the last two days; on the system clock all four would be
    // "in the future" and kept.
    app.wait_for_manifests(2).await;
    let left = manifest_names(&app.setup.backups());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            left.iter().any(|m| m.contains(id.as_str())),
            i >= 2,
            "{id} (day {i}) in {left:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn retention_runs_after_each_backup_and_storage_is_measured() {
    let app = App::spawn(", retention: { daily: 1 }", None, true).await;
    for _ in 0..3 {
        assert_eq!(app.backup_now().await["status"], "success");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // daily: 1 keeps the day's first backup and the newest: the middle one goes.
    app.wait_for_manifests(2).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("strata_retention_deleted_total{job=\"app\",target=\"local\"} 1"),
        "{metrics}"
    );
    let state = app.state.as_ref().unwrap();
    state
        .wait_for(
            "SELECT count(*) FROM audit_log WHERE action = 'delete' AND actor = 'retention'",
            "1",
        )
        .await;

    app.daemon.refresh_checks().await;
    let metrics = app.metrics().await;
    let stored: u64 = files(&app.setup.backups())
        .iter()
        .map(|f| {
            std::fs::metadata(app.setup.backups().join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        metrics.contains(&format!(
            "strata_storage_bytes{{storage_class=\"LOCAL\",target=\"local\"}} {stored}"
        )),
        "{stored}: {metrics}"
    );
    assert!(metrics.contains("strata_storage_cost_usd_monthly{target=\"local\"} 0"));
    // One local target is not 3-2-1; backups are recent and encrypted.
    assert!(
        metrics.contains("strata_compliance_check{check=\"3-2-1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_compliance_check{check=\"rpo\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("strata_compliance_check{check=\"client_side_encryption\"} 1"));
    let (status, body) = app.health().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["storage"]["usd_monthly"], 0.0);
    assert_eq!(body["storage"]["over_threshold"], false);
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("compliance checks failing: 3-2-1"),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn approval_jobs_delete_only_after_the_admin_approves() {
    let app = App::spawn(", retention: { daily: 1 }, prune: approval", None, true).await;
    for _ in 0..3 {
        assert_eq!(app.backup_now().await["status"], "success");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let state = app.state.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.exec("SELECT count(*) FROM prune_plans WHERE status = 'pending'") != "1" {
        assert!(Instant::now() < deadline, "no pending plan");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        manifests(&app.setup.backups()),
        3,
        "deleted without approval"
    );

    let approve = |token: &str| {
        app.http
            .post(format!("{}/prune/app/approve", app.url))
            .bearer_auth(token)
            .send()
    };
    // The ordinary API token cannot approve deletions.
    assert_eq!(
        approve(TOKEN).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(manifests(&app.setup.backups()), 3);
    let r = approve(ADMIN_TOKEN).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deleted"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(manifests(&app.setup.backups()), 2);
    // Approved once: nothing is pending any more.
    assert_eq!(
        approve(ADMIN_TOKEN).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        state.exec("SELECT status || ' ' || decided_by FROM prune_plans ORDER BY id DESC LIMIT 1"),
        format!("approved admin:{}", &sha256_hex(ADMIN_TOKEN)[..8])
    );
    app.shutdown().await;
}

fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

#[tokio::test]
async fn failures_and_size_anomalies_reach_email_and_webhook_and_recovery_is_announced() {
    let smtp = crate::helpers::SmtpServer::start();
    let hook = crate::helpers::WebhookReceiver::start().await;
    let alerts = format!(
        "alerts:\n  email: {{ smtp_url: \"{}\", from: backups@example.com, to: [ops@example.com] }}\n  webhook: {{ url: \"{}\" }}\n  size_change_ratio: 0.5\n",
        smtp.url, hook.url
    );
    let app = App::spawn_with(&alerts, ", rpo: 1h", None, true).await;
    assert_eq!(app.backup_now().await["status"], "success");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Ten times the data: the stored size jumps far beyond ±50%.
    app.source
        .exec("INSERT INTO t SELECT g FROM generate_series(1, 200000) g");
    assert_eq!(app.backup_now().await["status"], "success");
    let anomaly = hook.wait_for("size_anomaly", 1).await;
    assert_eq!(anomaly[0]["job"], "app");
    let cause = anomaly[0]["cause"].as_str().unwrap();
    assert!(cause.contains("against the previous backup"), "{cause}");
    assert!(anomaly[0]["text"].as_str().unwrap().contains("action:"));
    smtp.wait_for("[strata ALERT] backup size anomaly: app")
        .await;

    // The database disappears: the next backup fails, both channels hear it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    psql(
        "postgres",
        &format!("DROP DATABASE {} WITH (FORCE)", app.source.name),
    );
    let run = app.backup_now().await;
    assert_eq!(run["status"], "failed");
    let failed = hook.wait_for("backup_failed", 1).await;
    assert!(
        failed[0]["cause"]
            .as_str()
            .unwrap()
            .contains(run["id"].as_str().unwrap())
    );
    assert!(
        failed[0]["cause"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{failed:?}"
    );
    smtp.wait_for("[strata ALERT] backup failed: app").await;
    // A second failure within the repeat interval is not sent again: the
    // alerter says it held it back, and nothing more arrived.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.backup_now().await["status"], "failed");
    app.wait_for_metric("strata_alerts_suppressed_total{kind=\"backup_failed\"} 1")
        .await;
    assert_eq!(hook.of_kind("backup_failed").len(), 1);

    // Recovery sends one resolved message.
    psql("postgres", &format!("CREATE DATABASE {}", app.source.name));
    app.source
        .exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    assert_eq!(app.backup_now().await["status"], "success");
    let all = hook.wait_for("backup_failed", 2).await;
    assert_eq!(all[1]["resolved"], true);
    smtp.wait_for("[strata RESOLVED] backup failed: app").await;
    app.wait_for_metric("strata_alerts_sent_total{channel=\"webhook\",kind=\"backup_failed\"} 2")
        .await;
    app.wait_for_metric("strata_alerts_sent_total{channel=\"email\",kind=\"size_anomaly\"} 1")
        .await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_alert_channel_never_fails_a_backup() {
    let alerts = "alerts:\n  webhook: { url: \"http://127.0.0.1:9/hook\" }\n";
    let app = App::spawn_with(alerts, "", None, true).await;
    assert_eq!(app.backup_now().await["status"], "success");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (Compliance alerts at start-up may already have failed to go out.)
    let failures = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("strata_alert_failures_total{channel=\"webhook\"} "))
            .map_or(0, |v| v.parse().unwrap())
    };
    let before = failures(&app.metrics().await);
    app.source
        .exec("INSERT INTO t SELECT g FROM generate_series(1, 200000) g");
    // An anomaly alert fires and cannot be delivered; the backup still succeeds.
    assert_eq!(app.backup_now().await["status"], "success");
    let deadline = Instant::now() + Duration::from_secs(30);
    while failures(&app.metrics().await) <= before {
        assert!(Instant::now() < deadline, "{}", app.metrics().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

fn scratch_databases() -> String {
    psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'strata\\_restore\\_test\\_%'",
    )
}

#[tokio::test]
async fn restore_tests_measure_the_rto_and_catch_a_tampered_backup() {
    let hook = crate::helpers::WebhookReceiver::start().await;
    let alerts = format!("alerts:\n  webhook: {{ url: \"{}\" }}\n", hook.url);
    let verify = format!(
        ", verify: {{ restore_test: \"0 5 1 * *\", restore_into: \"{}/postgres\", sql: [ \"SELECT count(*) = 1000 FROM t\" ] }}",
        crate::helpers::PG
    );
    let app = App::spawn_with(&alerts, &verify, None, true).await;
    let backup = app.backup_now().await;
    let before = scratch_databases();

    let test = app.daemon.run_restore_test("app").await.unwrap();
    assert!(test.ok, "{test:?}");
    assert_eq!(test.backup_id.as_deref(), backup["backup_id"].as_str());
    assert!(test.seconds > 0.0);
    assert_eq!(test.rows, 1000);
    assert_eq!(scratch_databases(), before, "scratch database left behind");
    let metrics = app.metrics().await;
    assert!(metrics.contains("strata_restore_test_last_success_timestamp_seconds{job=\"app\"}"));
    assert!(metrics.contains("strata_restore_test_duration_seconds{job=\"app\"}"));
    let (_, health) = app.health().await;
    assert_eq!(
        health["jobs"]["app"]["restore_test"]["ok"], true,
        "{health}"
    );

    // One flipped byte in the stored object: the restore test fails, says why,
    // alerts, and records it.
    let object = files(&app.setup.backups())
        .into_iter()
        .find(|f| f.ends_with(".enc"))
        .unwrap();
    let path = app.setup.backups().join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let test = app.daemon.run_restore_test("app").await.unwrap();
    assert!(!test.ok);
    let error = test.error.clone().unwrap();
    assert!(error.contains("verification failed"), "{error}");
    assert_eq!(scratch_databases(), before, "scratch database left behind");
    let alert = hook.wait_for("restore_test_failed", 1).await;
    assert!(alert[0]["cause"].as_str().unwrap().contains(&error));
    let state = app.state.as_ref().unwrap();
    assert_eq!(
        state.exec("SELECT string_agg(ok::text, ',' ORDER BY id) FROM restore_tests"),
        "true,false"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_restore_test_past_the_jobs_timeout_fails_is_recorded_and_alerted() {
    // The restore server accepts connections and never answers: only the run's
    // deadline (the job's `timeout`, far below the 30 s connect timeout) ends it.
    let silent = crate::helpers::Silent::start().await;
    let hook = crate::helpers::WebhookReceiver::start().await;
    let alerts = format!("alerts:\n  webhook: {{ url: \"{}\" }}\n", hook.url);
    let verify = format!(
        ", timeout: 5s, verify: {{ restore_test: \"0 5 1 * *\", restore_into: \"postgres://postgres@127.0.0.1:{}/postgres\" }}",
        silent.port
    );
    let app = App::spawn_with(&alerts, &verify, None, true).await;
    app.backup_now().await;
    let test = app.daemon.run_restore_test("app").await.unwrap();
    assert!(!test.ok, "{test:?}");
    let error = test.error.clone().unwrap();
    assert!(error.contains("past the job's timeout (5s)"), "{error}");
    let alert = hook.wait_for("restore_test_failed", 1).await;
    assert!(alert[0]["cause"].as_str().unwrap().contains(&error));
    let state = app.state.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.exec("SELECT count(*) FROM audit_log WHERE action = 'restore_test' AND job = 'app'")
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the restore test was not audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        state.exec("SELECT string_agg(ok::text, ',') FROM restore_tests"),
        "false"
    );
    app.shutdown().await;
}

/// `strata_…` metric names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("strata_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The metrics the shipped Grafana dashboard queries, and whether each
/// exists only for physical jobs (checked by the physical daemon's test).
pub(crate) fn dashboard_metrics() -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/grafana/strata-dashboard.json"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("valid JSON");
    let mut used: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .flat_map(|t| metric_names(t["expr"].as_str().unwrap()))
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 12, "{used:?}");
    used.into_iter()
        .map(|m| {
            let physical = m.starts_with("strata_wal_") || m.starts_with("strata_recovery_window");
            (m, physical)
        })
        .collect()
}

/// Whether the Prometheus text `exported` has a sample of `name`.
pub(crate) fn exports(exported: &str, name: &str) -> bool {
    exported.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|r| r.starts_with(['{', ' ']))
    })
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_metrics_the_daemon_exports() {
    let used: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|(_, physical)| !physical)
        .map(|(m, _)| m)
        .collect();
    // A daemon that has backed up, measured storage, run a restore test and
    // sent an alert (the failing 3-2-1 check of a single local target).
    let hook = crate::helpers::WebhookReceiver::start().await;
    let alerts = format!("alerts:\n  webhook: {{ url: \"{}\" }}\n", hook.url);
    let verify = format!(
        ", verify: {{ restore_test: \"0 5 1 * *\", restore_into: \"{}/postgres\" }}",
        crate::helpers::PG
    );
    let app = App::spawn_with(&alerts, &verify, None, true).await;
    // Two backups: the size change ratio needs a previous one.
    app.backup_now().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.backup_now().await;
    app.daemon.refresh_checks().await;
    assert!(app.daemon.run_restore_test("app").await.unwrap().ok);
    hook.wait_for("compliance_violation", 1).await;
    app.wait_for_metric(
        "strata_alerts_sent_total{channel=\"webhook\",kind=\"compliance_violation\"}",
    )
    .await;
    let exported = app.metrics().await;
    for name in &used {
        assert!(
            exports(&exported, name),
            "the dashboard uses {name}, which the daemon does not export:\n{exported}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn systemd_hears_ready_then_the_watchdog_then_stopping() {
    let setup = Setup::new();
    let source = TestDb::create();
    let socket_path = setup.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut daemon = Proc::spawn(
        &setup,
        "notify",
        "",
        "",
        &job("app", &source.url(), "local", ", rpo: 1h"),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    let receive = move |n: usize| {
        let socket = socket.try_clone().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 512];
            (0..n)
                .map(|_| {
                    let len = socket.recv(&mut buf).expect("a notification in time");
                    String::from_utf8_lossy(&buf[..len]).into_owned()
                })
                .collect::<Vec<_>>()
        })
    };
    let first = receive(3).await.unwrap();
    assert_eq!(first[0].trim(), "READY=1", "{first:?}");
    // 600 ms watchdog: fed every 200 ms.
    assert!(
        first[1..].iter().all(|m| m.trim() == "WATCHDOG=1"),
        "{first:?}"
    );
    // Serving by the time it said so.
    assert!(reqwest::get(format!("{}/health", daemon.url)).await.is_ok());
    daemon.signal("-TERM");
    // Watchdog pings may still arrive before it (a loaded machine stops slowly).
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !rest.iter().any(|m: &String| m.trim() == "STOPPING=1") {
        rest.extend(receive(1).await.unwrap());
    }
    assert!(rest.iter().any(|m| m.trim() == "STOPPING=1"), "{rest:?}");
    assert!(daemon.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn at_start_up_a_pg_dump_older_than_the_server_is_named_with_both_versions() {
    let setup = Setup::new();
    let source = TestDb::create();
    let tools = setup.path().join("old-tools");
    std::fs::create_dir(&tools).unwrap();
    let fake = tools.join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = Proc::spawn(
        &setup,
        "old",
        "",
        "",
        &job("app", &source.url(), "local", ", rpo: 1h"),
        &[("STRATA_PG_BIN_DIR", tools.to_str().unwrap())],
    );
    daemon.ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health: Value = reqwest::get(format!("{}/health", daemon.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let error = health["jobs"]["app"]["last_error"]
            .as_str()
            .unwrap_or_default();
        if error.contains("pg_dump 9.6.24 is older than the server") {
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("backups of this job cannot run"), "{log}");
    daemon.signal("-TERM");
    assert!(daemon.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn the_daemon_fixes_lifecycle_drift_and_alerts_on_cost_and_a_missed_rpo() {
    let hook = crate::helpers::WebhookReceiver::start().await;
    let bucket = Bucket::create(S3Kind::Moto).await;
    let clock = Arc::new(AheadClock::default());
    let targets = format!(
        "  s3: {{ kind: s3, bucket: {}, endpoint: \"{}\", prefix: database-backups, manage_lifecycle: true, \
         lifecycle: [{{ after_days: 30, storage_class: STANDARD_IA }}, {{ after_days: 2555, expire: true }}] }}\n",
        bucket.settings.bucket,
        bucket.settings.endpoint.as_deref().unwrap()
    );
    let alerts = format!(
        "alerts:\n  webhook: {{ url: \"{}\" }}\n  monthly_cost_usd: 0\n",
        hook.url
    );
    let app = App::spawn_opts(Opts {
        top: &alerts,
        targets: &targets,
        job_targets: Some("local, s3"),
        job_extra: ", rpo: 1h",
        buckets: &[&bucket],
        clock: Some(clock.clone()),
        ..Opts::default()
    })
    .await;

    // The start-up checks find the bucket without rules and put the configured
    // ones on it (manage_lifecycle), audited.
    let client = bucket.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        if let Ok(out) = client
            .get_bucket_lifecycle_configuration()
            .bucket(&bucket.settings.bucket)
            .send()
            .await
        {
            break out.rules().to_vec();
        }
        assert!(Instant::now() < deadline, "no lifecycle rules were applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let transition = rules
        .iter()
        .flat_map(|r| r.transitions())
        .find(|t| t.days() == Some(30))
        .unwrap_or_else(|| panic!("no 30-day transition in {rules:?}"));
    assert_eq!(
        transition.storage_class().map(|c| c.as_str()),
        Some("STANDARD_IA")
    );
    assert!(
        rules
            .iter()
            .any(|r| r.expiration().and_then(|e| e.days()) == Some(2555)),
        "{rules:?}"
    );
    let state = app.state.as_ref().unwrap();
    state
        .wait_for(
            "SELECT count(*) > 0 FROM audit_log WHERE action = 'lifecycle.apply'",
            "t",
        )
        .await;

    // No good backup yet: past the RPO.
    app.daemon.check_rpo().await;
    let rpo = hook.wait_for("rpo_exceeded", 1).await;
    assert_eq!(rpo[0]["job"], "app");
    let cause = rpo[0]["cause"].as_str().unwrap();
    assert!(cause.contains("no good backup"), "{cause}");

    // A backup clears it with one resolved message.
    assert_eq!(app.backup_now().await["status"], "success");
    let rpo = hook.wait_for("rpo_exceeded", 2).await;
    assert_eq!(rpo[1]["resolved"], true, "{rpo:?}");

    // Whatever the bucket now holds costs more than a threshold of $0.
    app.daemon.refresh_checks().await;
    let cost = hook.wait_for("cost_threshold", 1).await;
    let cause = cost[0]["cause"].as_str().unwrap();
    assert!(
        cause.contains("/month, above the $0.00 threshold"),
        "{cause}"
    );
    assert_eq!(cost[0]["resolved"], false);

    // Two hours on, nothing newer: the 1 h RPO is missed again.
    clock.advance(Duration::from_secs(2 * 3600));
    app.daemon.check_rpo().await;
    let rpo = hook.wait_for("rpo_exceeded", 3).await;
    let cause = rpo[2]["cause"].as_str().unwrap();
    assert!(cause.contains("(2h ago), RPO 1h"), "{cause}");
    assert_eq!(rpo[2]["resolved"], false);
    app.shutdown().await;
}

#[tokio::test]
async fn a_running_backup_shows_its_progress_in_health_and_metrics() {
    let bucket = Bucket::create(S3Kind::Moto).await;
    let proxy = FaultProxy::start(bucket.settings.endpoint.as_deref().unwrap()).await;
    // The first upload request waits: the backup is running, its dump done.
    proxy.add(Rule {
        method: "PUT",
        query_has: "",
        fault: Fault::Delay(3000),
        times: Some(1),
    });
    let targets = bucket.yaml("s3", Some(&proxy.url()));
    let app = App::spawn_opts(Opts {
        targets: &targets,
        job_targets: Some("local, s3"),
        buckets: &[&bucket],
        ..Opts::default()
    })
    .await;
    let r = app.post("/backups/app").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run_id = run_id_of(r).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (progress, metric) = loop {
        let (_, h) = app.health().await;
        let p = h["jobs"]["app"]["progress"].clone();
        if p["bytes"].as_u64().unwrap_or(0) > 0 {
            let metrics = app
                .http
                .get(format!("{}/metrics", app.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            break (p, metrics);
        }
        assert!(
            Instant::now() < deadline,
            "no progress seen while the backup ran: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(progress["operation"], "backup app");
    let detail = progress["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("dumping") || detail == "completing the uploads",
        "{progress}"
    );
    let line = metric
        .lines()
        .find(|l| l.starts_with("strata_backup_progress_bytes{job=\"app\"}"))
        .unwrap_or_else(|| panic!("no progress metric in\n{metric}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 0.0, "{line}");
    let run = app.finished(&run_id).await;
    assert_eq!(run["status"], "success", "{run}");
    // Done: no progress in /health, the gauge back at 0.
    let (_, h) = app.health().await;
    assert!(h["jobs"]["app"]["progress"].is_null(), "{h}");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strata_backup_progress_bytes{job=\"app\"} 0"),
        "{metrics}"
    );
    app.shutdown().await;
}
