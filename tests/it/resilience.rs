//! Bad days for the daemon: a state database that accepts connections and
//! never answers, a run that panics, a run past its deadline, forty jobs due
//! at once on a server with few connections, replicas sharing the work.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::cluster::{ADMIN, Cluster, Options};
use crate::daemon::{Proc, TOKEN, run_id_of};
use crate::helpers::{Bucket, S3Kind, Setup, Silent, TestDb, WebhookReceiver, files, job};
use crate::proxy::{Fault, FaultProxy, Rule};

async fn post(url: &str, job: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/backups/{job}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

async fn run_of(url: &str, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/runs/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn finished(url: &str, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = run_of(url, id).await;
        if r["status"] != "running" {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn health(url: &str) -> Value {
    reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_state_database_that_never_answers_does_not_stop_the_daemon_or_its_backups() {
    let silent = Silent::start().await;
    let setup = Setup::new();
    let source = TestDb::create();
    source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let bucket = Bucket::create(S3Kind::Moto).await;
    let top = format!(
        "state: {{ database_url: \"postgres://strata@127.0.0.1:{}/strata\" }}\n",
        silent.port
    );
    let (id, secret) = bucket.settings.credentials.clone().unwrap();
    use secrecy::ExposeSecret;
    let started = Instant::now();
    let daemon = Proc::spawn(
        &setup,
        "hung",
        &top,
        &bucket.yaml("s3", None),
        &job("app", &source.url(), "local, s3", ""),
        &[
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", secret.expose_secret()),
        ],
    );
    daemon.ready().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "/health took {:?}",
        started.elapsed()
    );
    let r = post(&daemon.url, "app").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run_id = run_id_of(r).await;
    let run = finished(&daemon.url, &run_id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run}");
    // On every target, each with its manifest.
    let on_disk = files(&setup.backups());
    assert!(
        on_disk.iter().any(|f| f.ends_with(".manifest.json")),
        "{on_disk:?}"
    );
    assert!(
        bucket
            .keys()
            .await
            .iter()
            .any(|k| k.ends_with(".manifest.json"))
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = health(&daemon.url).await;
        if h["state_db"] == "unreachable" {
            assert!(h["state_outbox"]["waiting"].as_u64().unwrap() > 0, "{h}");
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("running without the cross-process lock"),
        "{log}"
    );
}

#[tokio::test]
async fn a_run_that_panics_is_recorded_failed_alerted_and_releases_the_job() {
    let setup = Setup::new();
    let source = TestDb::create();
    let state = TestDb::create();
    let hook = WebhookReceiver::start().await;
    let top = format!(
        "state: {{ database_url: \"{}\" }}\nalerts: {{ webhook: {{ url: \"{}\" }} }}\n",
        state.url(),
        hook.url
    );
    let job_yaml = job("panicky", &source.url(), "local", "");
    let daemon = Proc::spawn(
        &setup,
        "p",
        &top,
        "",
        &job_yaml,
        &[("STRATA_TEST_PANIC_JOB", "panicky")],
    );
    daemon.ready().await;
    for attempt in 0..2 {
        let r = post(&daemon.url, "panicky").await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "attempt {attempt}: the job stayed marked running"
        );
        let run = finished(&daemon.url, &run_id_of(r).await, Duration::from_secs(30)).await;
        assert_eq!(run["status"], "failed");
        assert!(
            run["error"]
                .as_str()
                .unwrap()
                .contains("the run panicked: injected panic"),
            "{run}"
        );
    }
    let alerts = hook.wait_for("backup_failed", 1).await;
    assert!(
        alerts[0]["text"].as_str().unwrap().contains("panicked"),
        "{alerts:?}"
    );
    let h = health(&daemon.url).await;
    assert_eq!(h["jobs"]["panicky"]["running"], false, "{h}");
    // The cross-process lock was released: the CLI (another process) runs it.
    // (The release reaches the state database a moment after the job is
    // free in the daemon: the CLI may be refused until then, not after.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = std::process::Command::new(crate::helpers::bin())
            .arg("-c")
            .arg(setup.path().join("p.yaml"))
            .args(["backup", "panicky"])
            .output()
            .unwrap();
        let refused = String::from_utf8_lossy(&out.stderr).contains("is already running");
        if !refused || Instant::now() >= deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while state
        .exec("SELECT count(*) FROM runs WHERE status = 'failed' AND error LIKE '%panicked%'")
        != "2"
    {
        assert!(
            Instant::now() < deadline,
            "the failed runs were not recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_run_past_its_timeout_is_cancelled_cleanly_and_fails() {
    let setup = Setup::new();
    let source = crate::failures::big_db(24);
    let bucket = Bucket::create(S3Kind::Moto).await;
    let proxy = FaultProxy::start(bucket.settings.endpoint.as_deref().unwrap()).await;
    // Every part waits 2 s and one is in flight at a time: the stream is
    // still going when the 2 s deadline passes.
    proxy.add(Rule {
        method: "PUT",
        query_has: "partNumber=",
        fault: Fault::Delay(2000),
        times: None,
    });
    let (id, secret) = bucket.settings.credentials.clone().unwrap();
    use secrecy::ExposeSecret;
    let daemon = Proc::spawn(
        &setup,
        "t",
        "",
        &bucket
            .yaml("s3", Some(&proxy.url()))
            .replace("part_size_mib: 5", "part_size_mib: 5, parts_in_flight: 1"),
        &job(
            "app",
            &source.url(),
            "s3",
            ", timeout: 2s, compression: none",
        ),
        &[
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", secret.expose_secret()),
        ],
    );
    daemon.ready().await;
    let r = post(&daemon.url, "app").await;
    let run = finished(&daemon.url, &run_id_of(r).await, Duration::from_secs(90)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("longer than its timeout of 2s"),
        "{run}"
    );
    assert_eq!(
        bucket.incomplete_uploads().await,
        0,
        "the cancelled upload was not aborted"
    );
    assert!(
        !bucket
            .keys()
            .await
            .iter()
            .any(|k| k.ends_with(".manifest.json"))
    );
    // The job is free again.
    assert_eq!(
        post(&daemon.url, "app").await.status(),
        StatusCode::ACCEPTED
    );
}

/// Forty jobs backing up databases of a server with `max_connections = 30`
/// that also holds the state database.
struct Fleet {
    pg: Cluster,
    setup: Setup,
    jobs: String,
}

impl Fleet {
    fn new(n: usize) -> Self {
        let pg = Cluster::start(Options {
            settings: vec!["max_connections = 30".into()],
            ..Options::default()
        });
        pg.psql("postgres", "CREATE DATABASE strata_state");
        let mut jobs = String::new();
        for i in 0..n {
            let db = format!("app{i}");
            pg.psql("postgres", &format!("CREATE DATABASE {db}"));
            pg.psql(
                &db,
                &format!(
                    "CREATE TABLE t AS SELECT g FROM generate_series(1, {}) g",
                    100 + i
                ),
            );
            // Due at start-up: scheduled daily, no backup yet, so one catch-up each.
            jobs.push_str(&job(
                &format!("job{i:02}"),
                &pg.url(ADMIN, &db, ""),
                "local",
                ", schedule: \"0 3 * * *\", rpo: 1h, prune: approval",
            ));
        }
        Self {
            pg,
            setup: Setup::new(),
            jobs,
        }
    }

    fn top(&self) -> String {
        format!(
            "state: {{ database_url: \"{}\" }}\ndaemon: {{ max_concurrent_runs: 2 }}\n",
            self.pg.url(ADMIN, "strata_state", "")
        )
    }

    fn count(&self, sql: &str) -> usize {
        self.pg.psql("strata_state", sql).parse().unwrap()
    }

    async fn wait_for_runs(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count("SELECT count(*) FROM runs WHERE status <> 'running'") < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} runs finished",
                self.count("SELECT count(*) FROM runs WHERE status <> 'running'")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn forty_jobs_due_at_once_all_succeed_on_a_server_with_thirty_connections() {
    let fleet = Fleet::new(40);
    let daemon = Proc::spawn(&fleet.setup, "fleet", &fleet.top(), "", &fleet.jobs, &[]);
    daemon.state_ready().await;
    fleet.wait_for_runs(40, Duration::from_secs(240)).await;
    assert_eq!(
        fleet.count("SELECT count(*) FROM runs WHERE status = 'success'"),
        40,
        "{}",
        fleet.pg.psql(
            "strata_state",
            "SELECT job, status, error FROM runs WHERE status <> 'success'"
        )
    );
    assert_eq!(fleet.count("SELECT count(DISTINCT job) FROM runs"), 40);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains("without the cross-process lock"), "{log}");
    assert!(!log.contains("too many clients"), "{log}");
    // Runs queued for a slot instead of starting all at once.
    let most = fleet.count(
        "SELECT max(c) FROM (SELECT (SELECT count(*) FROM runs r2 WHERE r2.started_at <= r.started_at AND r2.finished_at > r.started_at) AS c FROM runs r) x",
    );
    assert!(
        most <= 2,
        "{most} runs overlapped with max_concurrent_runs: 2"
    );
}

#[tokio::test]
async fn two_replicas_share_forty_due_jobs_and_no_slot_runs_twice() {
    let fleet = Fleet::new(40);
    let replicas: Vec<Proc> = (0..2)
        .map(|i| {
            Proc::spawn(
                &fleet.setup,
                &format!("rep{i}"),
                &fleet.top(),
                "",
                &fleet.jobs,
                &[],
            )
        })
        .collect();
    for r in &replicas {
        r.state_ready().await;
    }
    fleet.wait_for_runs(40, Duration::from_secs(240)).await;
    assert_eq!(
        fleet.count("SELECT count(*) FROM runs"),
        40,
        "a slot ran twice"
    );
    assert_eq!(
        fleet.count("SELECT count(*) FROM runs WHERE status = 'success'"),
        40
    );
    assert_eq!(fleet.count("SELECT count(*) FROM schedule_claims"), 40);
    // Both replicas took part.
    let per_host = fleet.pg.psql("strata_state", "SELECT string_agg(n::text, ',' ORDER BY n) FROM (SELECT count(*) AS n FROM runs GROUP BY host) h");
    let counts: Vec<usize> = per_host.split(',').map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts.len(), 2, "one replica ran everything: {per_host}");
    assert!(counts.iter().all(|n| *n >= 5), "{per_host}");
}

#[tokio::test]
async fn an_s3_endpoint_and_a_webhook_that_never_answer_cost_only_their_own_target_and_alert() {
    let silent = Silent::start().await;
    let setup = Setup::new();
    let source = TestDb::create();
    source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let endpoint = format!("http://127.0.0.1:{}", silent.port);
    let targets = format!(
        "  s3: {{ kind: s3, bucket: strata-t-silent, region: us-east-1, endpoint: \"{endpoint}\", server_side_encryption: none, request_timeout: 2s }}\n"
    );
    let top = format!("alerts: {{ webhook: {{ url: \"{endpoint}/hook\" }} }}\n");
    let started = Instant::now();
    let daemon = Proc::spawn(
        &setup,
        "silent",
        &top,
        &targets,
        &job("app", &source.url(), "local, s3", ""),
        &[("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y")],
    );
    daemon.ready().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "/health took {:?}",
        started.elapsed()
    );
    let r = post(&daemon.url, "app").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run = finished(&daemon.url, &run_id_of(r).await, Duration::from_secs(120)).await;
    assert_eq!(run["status"], "degraded", "{run}");
    assert_eq!(run["targets"]["local"], "ok", "{run}");
    assert!(
        run["targets"]["s3"].as_str().unwrap().contains("no answer"),
        "{run}"
    );
    // The job is free at once, whatever the webhook does.
    let again = post(&daemon.url, "app").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
}
