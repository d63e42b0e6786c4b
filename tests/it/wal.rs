//! WAL archiving against a real server: a throwaway cluster with
//! `archive_mode = on` whose `archive_command` is `strata wal-push`, archiving
//! to local disk and an S3 bucket (moto) at once; `strata wal-fetch` reading
//! it back as `restore_command` would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Options, give_to_postgres};
use crate::helpers::{Bucket, S3Kind, Setup, bin, files};
use crate::proxy::{Fault, FaultProxy, Rule};

/// A cluster archiving into job `prod` through strata.
pub(crate) struct Archiving {
    pub(crate) setup: Setup,
    pub(crate) bucket: Bucket,
    pub(crate) cluster: Cluster,
    pub(crate) config: PathBuf,
}

pub(crate) fn moto_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
    ]
}

fn targets_yaml(bucket: &Bucket, endpoint: Option<&str>) -> String {
    bucket.yaml("offsite", endpoint)
}

fn job_yaml(port: u16, extra: &str) -> String {
    format!(
        "  prod: {{ kind: physical, database_url: \"postgres://strata_admin@127.0.0.1:{port}/postgres\", targets: [local, offsite], compression: \"zstd:3\"{extra} }}\n"
    )
}

impl Archiving {
    /// The server's `archive_command` runs `strata wal-push`.
    pub(crate) async fn start() -> Self {
        Self::start_with(false, "").await
    }

    /// No `archive_command`: the daemon streams the WAL (`wal: { source:
    /// stream }`, the live segment uploaded every 200 ms).
    pub(crate) async fn streaming() -> Self {
        Self::start_with(true, "").await
    }

    /// `extra` goes into the job's YAML (after a comma); `{dir}` in it is the
    /// test's own directory.
    pub(crate) async fn start_with(stream: bool, extra: &str) -> Self {
        let setup = Setup::new();
        let bucket = Bucket::create(S3Kind::Moto).await;
        let config = setup.path().join("config.yaml");
        let archiving = if stream {
            vec!["wal_level = replica".into(), "archive_mode = off".into()]
        } else {
            vec![
                "wal_level = replica".into(),
                "archive_mode = on".into(),
                format!(
                    "archive_command = '{} -c {} wal-push prod %p'",
                    bin(),
                    config.display()
                ),
            ]
        };
        let cluster = Cluster::start(Options {
            settings: archiving,
            hba: vec![
                "local all all trust".into(),
                "host all all 127.0.0.1/32 trust".into(),
                "host replication all 127.0.0.1/32 trust".into(),
            ],
            env: moto_env(),
            ..Options::default()
        });
        let mut extra = extra.replace("{dir}", &setup.path().display().to_string());
        if stream {
            extra.push_str(&format!(
                ", wal: {{ source: stream, directory: {}, upload_interval: 200ms }}",
                setup.path().join("stream").display()
            ));
        }
        setup.write_config(
            &targets_yaml(&bucket, None),
            &job_yaml(cluster.port, &extra),
        );
        share(setup.path());
        Self {
            setup,
            bucket,
            cluster,
            config,
        }
    }

    /// Writes some rows, switches to a new segment and returns the name of
    /// the one just finished.
    pub(crate) fn fill_segment(&self, rows: u32) -> String {
        self.cluster.psql(
            "postgres",
            &format!("CREATE TABLE IF NOT EXISTS t (g int); INSERT INTO t SELECT generate_series(1, {rows})"),
        );
        self.cluster
            .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until the archiver reports `segment` archived.
    pub(crate) fn archived(&self, segment: &str) {
        wait_archived(&self.cluster, segment);
    }

    pub(crate) fn server_log(&self) -> String {
        std::fs::read_to_string(self.cluster.data().parent().unwrap().join("server.log"))
            .unwrap_or_default()
    }

    pub(crate) fn strata(&self, args: &[&str]) -> Output {
        strata_with(&self.config, args)
    }

    /// A base backup as the server's user; it must succeed.
    pub(crate) fn base_backup(&self) {
        let out = self.strata_as_server_user(&["backup", "prod"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// Table `batches` holding batch 1 (`rows` rows), then a base backup.
    pub(crate) fn first_batch_then_base_backup(&self, rows: u32) {
        let sql = |s: &str| self.cluster.psql("postgres", s);
        sql("CREATE TABLE batches (batch int, g int)");
        sql(&format!(
            "INSERT INTO batches SELECT 1, generate_series(1, {rows})"
        ));
        self.base_backup();
    }

    /// As the server's user, who also runs `archive_command`: both write the
    /// same local target, as they would on a real host.
    pub(crate) fn strata_as_server_user(&self, args: &[&str]) -> Output {
        if !crate::cluster::is_root() {
            return self.strata(args);
        }
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", bin(), "-c"])
            .arg(&self.config)
            .args(args)
            .envs(moto_env());
        c.output().unwrap()
    }

    pub(crate) fn wal_files(&self) -> Vec<String> {
        files(&self.setup.backups())
            .into_iter()
            .filter(|f| f.contains("/wal/"))
            .collect()
    }
}

/// Waits until `cluster`'s archiver reports `segment` archived.
pub(crate) fn wait_archived(cluster: &Cluster, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = cluster.psql(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        );
        let last = row.split(' ').next().unwrap_or_default();
        if !last.is_empty() && last >= segment {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{segment} not archived: {row}\n{}",
            std::fs::read_to_string(cluster.data().parent().unwrap().join("server.log"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn strata_with(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .envs(moto_env())
        .output()
        .unwrap()
}

/// The directory and everything in it readable by the server's user (which
/// runs `archive_command`), as a production install would arrange.
fn share(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("backups")).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_postgres(dir);
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn archive_command_puts_every_segment_on_every_target_and_fetch_returns_it_byte_for_byte() {
    let a = Archiving::start().await;
    let first = a.fill_segment(10_000);
    let second = a.fill_segment(10);
    a.archived(&second);
    let stats = a.cluster.psql(
        "postgres",
        "SELECT archived_count >= 2, failed_count FROM pg_stat_archiver",
    );
    assert_eq!(stats, "t|0", "{}", a.server_log());

    // Local disk and S3 hold the same objects, under the contract's layout:
    // {prefix}/{job}/wal/{timeline}/{WAL file name}.zst.enc.
    let local = a.wal_files();
    for seg in [&first, &second] {
        let k = format!("database-backups/prod/wal/00000001/{seg}.zst.enc");
        assert!(local.contains(&k), "{k} not on local disk: {local:?}");
        assert!(a.bucket.keys().await.contains(&k), "{k} not in the bucket");
    }
    // The backup's history file too, beside its segment.
    assert!(
        local.iter().any(|f| f.ends_with(".backup.zst.enc")) || local.len() >= 3,
        "{local:?}"
    );
    assert!(local.contains(&"database-backups/prod/wal/archive.json".to_owned()));

    // Fetched from either target: exactly the server's own segment.
    let original = std::fs::read(a.cluster.data().join("pg_wal").join(&first)).unwrap();
    for from in ["local", "offsite"] {
        let dest = a.setup.path().join(format!("fetched-{from}"));
        let out = a.strata(&[
            "wal-fetch",
            "prod",
            &first,
            dest.to_str().unwrap(),
            "--from",
            from,
        ]);
        assert!(out.status.success(), "{from}: {}", stderr(&out));
        assert!(
            std::fs::read(&dest).unwrap() == original,
            "{from}: content differs"
        );
    }
}

#[tokio::test]
async fn a_second_push_of_the_same_segment_succeeds_and_different_content_is_refused() {
    let a = Archiving::start().await;
    let seg = a.fill_segment(1000);
    a.archived(&seg);
    let before = a.wal_files();
    let bucket_before = a.bucket.keys().await;
    let original = std::fs::read(a.cluster.data().join("pg_wal").join(&seg)).unwrap();
    let dir = a.setup.path().join("by-hand");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(&seg);

    // The archiver retrying after a crash: the same bytes again.
    std::fs::write(&copy, &original).unwrap();
    let out = a.strata(&["wal-push", "prod", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Another server's segment of the same name: refused, nothing overwritten.
    let mut changed = original.clone();
    changed[100_000] ^= 0xFF;
    std::fs::write(&copy, &changed).unwrap();
    let out = a.strata(&["wal-push", "prod", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("split brain"), "{}", stderr(&out));

    // A segment of another cluster (its system identifier differs).
    let mut foreign = original.clone();
    foreign[24] ^= 0x01;
    std::fs::write(&copy, &foreign).unwrap();
    let out = a.strata(&["wal-push", "prod", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to mix two clusters' WAL"),
        "{}",
        stderr(&out)
    );

    // Not WAL, or not what its name says: refused before anything is written.
    let stray = dir.join("notes.txt");
    std::fs::write(&stray, "hello").unwrap();
    let out = a.strata(&["wal-push", "prod", stray.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a WAL file name"),
        "{}",
        stderr(&out)
    );
    let misnamed = dir.join("0000000100000000000000F0");
    std::fs::write(&misnamed, &original).unwrap();
    let out = a.strata(&["wal-push", "prod", misnamed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not what its name says"),
        "{}",
        stderr(&out)
    );

    assert_eq!(a.wal_files(), before);
    assert_eq!(a.bucket.keys().await, bucket_before);
    // And the archived copy is still the original.
    let dest = dir.join("fetched");
    let out = a.strata(&["wal-fetch", "prod", &seg, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == original);
}

#[tokio::test]
async fn wal_fetch_tells_a_missing_file_from_an_archive_it_cannot_read() {
    let a = Archiving::start().await;
    let seg = a.fill_segment(1000);
    a.archived(&seg);
    let dest = a.setup.path().join("RECOVERYXLOG");
    let fetch = |config: &Path, name: &str, from: Option<&str>| {
        let mut args = vec!["wal-fetch", "prod", name, dest.to_str().unwrap()];
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        strata_with(config, &args)
    };

    // Not archived: status 1, so recovery ends there.
    for name in ["0000000100000000000000A0", "00000002.history"] {
        let out = fetch(&a.config, name, None);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not in the archive"),
            "{}",
            stderr(&out)
        );
        assert!(!dest.exists());
    }

    // A damaged copy on local disk: that target fails its checks (126 stops
    // recovery); without --from the S3 copy is used instead.
    let object = a
        .wal_files()
        .into_iter()
        .find(|f| f.contains(&format!("{seg}.")))
        .unwrap();
    let path = a.setup.backups().join(object);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let out = fetch(&a.config, &seg, Some("local"));
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed its checks"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists(), "a damaged segment was handed to recovery");
    let out = fetch(&a.config, &seg, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let original = std::fs::read(a.cluster.data().join("pg_wal").join(&seg)).unwrap();
    assert!(std::fs::read(&dest).unwrap() == original);
    std::fs::remove_file(&dest).unwrap();

    // An archive that does not answer is not "missing": 126.
    let refused = a.setup.path().join("refused.yaml");
    std::fs::write(
        &refused,
        std::fs::read_to_string(&a.config).unwrap().replace(
            a.bucket.settings.endpoint.as_deref().unwrap(),
            &format!("http://127.0.0.1:{}", crate::helpers::free_port()),
        ),
    )
    .unwrap();
    let out = fetch(&refused, &seg, Some("offsite"));
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(!dest.exists());
    // Nor is a job that does not exist, or one that is not physical.
    let out = strata_with(
        &a.config,
        &["wal-fetch", "nope", &seg, dest.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

#[tokio::test]
async fn a_push_killed_mid_upload_leaves_nothing_that_counts() {
    let a = Archiving::start().await;
    let seg = a.fill_segment(1000);
    a.archived(&seg);
    let next = a.fill_segment(50_000);
    a.archived(&next);
    let original = std::fs::read(a.cluster.data().join("pg_wal").join(&next)).unwrap();
    // Forget the segment on S3 only, then push it again through a proxy that
    // holds the upload, and kill the push while it waits.
    let client = a.bucket.client().await;
    let key = a
        .bucket
        .keys()
        .await
        .into_iter()
        .find(|k| k.contains(&format!("{next}.")))
        .unwrap();
    client
        .delete_object()
        .bucket(&a.bucket.settings.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let proxy = FaultProxy::start(a.bucket.settings.endpoint.as_deref().unwrap()).await;
    proxy.add(Rule {
        method: "PUT",
        query_has: "",
        fault: Fault::Delay(120_000),
        times: None,
    });
    let slow = a.setup.path().join("slow.yaml");
    std::fs::write(
        &slow,
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace(a.bucket.settings.endpoint.as_deref().unwrap(), &proxy.url()),
    )
    .unwrap();
    let copy = a.setup.path().join(&next);
    std::fs::write(&copy, &original).unwrap();
    let mut push = Command::new(bin())
        .arg("-c")
        .arg(&slow)
        .args(["wal-push", "prod", copy.to_str().unwrap()])
        .envs(moto_env())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.hits() == 0 {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    push.kill().unwrap();
    push.wait().unwrap();
    assert!(
        !a.bucket
            .keys()
            .await
            .iter()
            .any(|k| k.contains(&format!("{next}."))),
        "a killed push left an object"
    );
    let dest = a.setup.path().join("fetched");
    let out = a.strata(&[
        "wal-fetch",
        "prod",
        &next,
        dest.to_str().unwrap(),
        "--from",
        "offsite",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // The archiver's retry (the same push, reaching S3) completes the copy.
    let out = a.strata(&["wal-push", "prod", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.strata(&[
        "wal-fetch",
        "prod",
        &next,
        dest.to_str().unwrap(),
        "--from",
        "offsite",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == original);
}

#[tokio::test]
async fn a_physical_job_refuses_what_only_logical_jobs_have() {
    let setup = Setup::new();
    let config = setup.write_config(
        "",
        "  prod: { kind: physical, database_url: \"postgres://postgres@127.0.0.1:5432/postgres\", targets: [local], format: custom, refresh: { from: prod }, retention: { recovery_window: 10m } }\n  app: { database_url: \"postgres://postgres@127.0.0.1:5432/postgres\", targets: [local], retention: { recovery_window: 14d }, wal: { source: stream } }\n  str: { kind: physical, database_url: \"postgres://postgres@127.0.0.1:5432/postgres\", targets: [local], wal: { source: stream, slot: \"Bad-Slot\", directory: relative } }\n",
    );
    let out = strata_with(&config, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        "jobs.prod.format: not used by a physical job",
        "jobs.prod.refresh: not used by a physical job",
        "jobs.prod.retention.recovery_window: must be at least 1h",
        "jobs.app.retention.recovery_window: only a physical job",
        "jobs.app.wal: only a physical job",
        "jobs.str.wal.slot: 'Bad-Slot': a replication slot name",
        "jobs.str.wal.directory: must be an absolute path",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // wal-push for a logical job says so, and is an ordinary failure (< 126).
    let config = setup.write_config(
        "",
        "  app: { database_url: \"postgres://postgres@127.0.0.1:5432/postgres\", targets: [local] }\n",
    );
    let wal = setup.path().join("000000010000000000000001");
    std::fs::write(&wal, vec![0u8; 16 << 20]).unwrap();
    let out = strata_with(&config, &["wal-push", "app", wal.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a physical job"),
        "{}",
        stderr(&out)
    );
}

/// Restores `job` into a fresh directory with `to`, starts it and waits until
/// recovery has reached its target and promoted.
pub(crate) fn recover(a: &Archiving, to: &[&str]) -> Cluster {
    let dir = crate::cluster::shared_dir("strata-pitr-");
    let data = dir.path().join("data");
    let mut args = vec!["restore", "prod", "--into-datadir", data.to_str().unwrap()];
    args.extend(to);
    let out = a.strata(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(data.join("recovery.signal").exists());
    let restored = Cluster::adopt(dir, data, &moto_env());
    let deadline = Instant::now() + Duration::from_secs(90);
    while restored.psql("postgres", "SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "recovery did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    restored
}

#[tokio::test]
async fn a_base_backup_and_the_archive_restore_any_moment_after_it() {
    let a = Archiving::start().await;
    let sql = |s: &str| a.cluster.psql("postgres", s);
    a.first_batch_then_base_backup(1000);
    let out = a.strata(&["list", "prod", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = &listed[0]["manifest"];
    assert_eq!(manifest["format"], "base", "{listed}");
    assert!(
        manifest["physical"]["stop_lsn"].as_str().is_some(),
        "{manifest}"
    );
    // The contract's layout: {prefix}/{job}/base/{YYYY}/{MM}/{DD}/{file_prefix}_base_….tar.zst.enc.
    let id = manifest["backup_id"].as_str().unwrap();
    assert!(id.starts_with("prod_base_"), "{id}");
    let day = &id["prod_base_".len()..]["".len()..8];
    let object = format!(
        "database-backups/prod/base/{}/{}/{}/{id}.tar.zst.enc",
        &day[..4],
        &day[4..6],
        &day[6..8]
    );
    assert!(
        files(&a.setup.backups()).contains(&object),
        "{object} not stored: {:?}",
        files(&a.setup.backups())
    );
    // What the server said of the backup: its label and its own manifest.
    let physical = &manifest["physical"];
    assert!(
        physical["backup_label"]
            .as_str()
            .is_some_and(|l| l.contains(&format!("LABEL: strata {id}"))),
        "{physical}"
    );
    let server = &physical["server_manifest"];
    assert!(server["files"].as_u64().unwrap() > 100, "{server}");
    assert_eq!(server["checksum_algorithm"], "CRC32C", "{server}");

    sql("INSERT INTO batches SELECT 2, generate_series(1, 1000)");
    let between = sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    sql("INSERT INTO batches SELECT 3, generate_series(1, 1000)");
    let last = a.fill_segment(1);
    a.archived(&last);
    let counts = "SELECT string_agg(batch || ':' || n, ',' ORDER BY batch) FROM (SELECT batch, count(*) n FROM batches GROUP BY batch) b";

    // Between the second and the third batch: exactly the first two.
    let restored = recover(&a, &["--to-time", &between]);
    assert_eq!(restored.psql("postgres", counts), "1:1000,2:1000");
    drop(restored);
    // Only to the base backup's end: what it held.
    let restored = recover(&a, &["--to", "immediate"]);
    assert_eq!(restored.psql("postgres", counts), "1:1000");
    drop(restored);
    // Everything archived.
    let restored = recover(&a, &["--to", "latest"]);
    assert_eq!(restored.psql("postgres", counts), "1:1000,2:1000,3:1000");
}

#[tokio::test]
async fn a_gap_in_the_archive_or_a_moment_before_every_base_backup_is_refused_before_writing() {
    let a = Archiving::start().await;
    let sql = |s: &str| a.cluster.psql("postgres", s);
    let before = sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    let dir = a.setup.path().join("restored");
    let restore = |to: &[&str]| {
        let mut args = vec![
            "restore",
            "prod",
            "--into-datadir",
            dir.to_str().unwrap(),
            "--from",
            "local",
        ];
        args.extend(to);
        a.strata(&args)
    };
    let out = restore(&["--to", "latest"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no base backup"),
        "{}",
        stderr(&out)
    );

    sql("CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    a.base_backup();
    let out = restore(&["--to-time", &before]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no base backup of job 'prod' ends before"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists());

    // A segment after the base backup lost from local disk: named, nothing written.
    let first = a.fill_segment(1000);
    let second = a.fill_segment(1000);
    a.archived(&second);
    let out = a.strata(&["verify", "prod"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("WAL archive on local: ok"), "{shown}");
    assert!(shown.contains("WAL archive on offsite: ok"), "{shown}");
    let out = a.strata(&["list", "prod"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("to the end of segment {second}")),
        "{shown}"
    );
    let lost = a
        .wal_files()
        .into_iter()
        .find(|f| f.contains(&format!("/{first}.")))
        .unwrap();
    std::fs::remove_file(a.setup.backups().join(&lost)).unwrap();
    let out = restore(&["--to", "latest"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("WAL segment {first} is missing")),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists(), "a refused restore wrote the directory");
    // verify names the gap on the target that has it, and fails.
    let out = a.strata(&["verify", "prod"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!(
            "WAL archive on local: WAL segment {first} is missing"
        )),
        "{shown}"
    );
    assert!(shown.contains("WAL archive on offsite: ok"), "{shown}");
    let out = a.strata(&["list", "prod"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!("GAP: segment {first} is missing")),
        "{shown}"
    );
    // A directory that is not empty is never written into.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("PG_VERSION"), "15").unwrap();
    let out = a.strata(&[
        "restore",
        "prod",
        "--into-datadir",
        dir.to_str().unwrap(),
        "--to",
        "latest",
        "--from",
        "offsite",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
}

/// Stops a server `--start` left running when the test ends.
pub(crate) struct Stopper(pub(crate) PathBuf);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = crate::cluster::pg_command(&crate::cluster::bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&self.0)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test]
async fn start_runs_recovery_to_the_target_and_reports_where_it_ended() {
    let a = Archiving::start().await;
    let sql = |s: &str| a.cluster.psql("postgres", s);
    a.first_batch_then_base_backup(500);
    // Replayed from the archive, not in the base backup.
    sql("INSERT INTO batches SELECT 1, generate_series(501, 1000)");
    let between = sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    sql("INSERT INTO batches SELECT 2, generate_series(1, 500)");
    let last = a.fill_segment(1);
    a.archived(&last);

    let dir = crate::cluster::shared_dir("strata-pitr-");
    give_to_postgres(dir.path());
    let data = dir.path().join("data");
    let port = crate::helpers::free_port();
    let port_arg = port.to_string();
    let args = |data: &Path| {
        vec![
            "restore".to_owned(),
            "prod".into(),
            "--into-datadir".into(),
            data.display().to_string(),
            "--to-time".into(),
            between.clone(),
            "--start".into(),
            "--port".into(),
            port_arg.clone(),
            "--json".into(),
        ]
    };
    let owned = args(&data);
    let argv: Vec<&str> = owned.iter().map(String::as_str).collect();
    if crate::cluster::is_root() {
        let out = a.strata(&argv);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("refuses to run as root"),
            "{}",
            stderr(&out)
        );
        assert!(!data.exists(), "a refused --start wrote the directory");
    }
    let out = a.strata_as_server_user(&argv);
    let _stop = Stopper(data.clone());
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recovered = &report["recovered"];
    assert_eq!(recovered["port"], port, "{report}");
    let lsn = recovered["replayed_lsn"].as_str().unwrap();
    assert!(lsn.contains('/') && lsn != "0/0", "{report}");
    let at = recovered["last_transaction_at"].as_str().unwrap();
    assert!(at < between.as_str(), "{at} is not before {between}");

    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=strata_admin dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), string_agg(DISTINCT batch::text, ','), count(*) FROM batches",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "1");
    assert_eq!(row.get::<_, i64>(2), 1000);

    // The port is taken now (by the copy): refused before anything is written.
    let other = dir.path().join("other");
    let owned = args(&other);
    let argv: Vec<&str> = owned.iter().map(String::as_str).collect();
    let out = a.strata_as_server_user(&argv);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is already in use"),
        "{}",
        stderr(&out)
    );
    assert!(!other.exists());
}

/// `strata run` on the archiving cluster's config, with the API on a free
/// port and the periodic checks every second.
pub(crate) struct Watching {
    child: std::process::Child,
    pub(crate) url: String,
    pub(crate) log: PathBuf,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watching {
    pub(crate) async fn start(a: &Archiving) -> Self {
        Self::start_as(a, false).await
    }

    /// As the server's user, as a production daemon runs (PostgreSQL refuses
    /// to run as root, and restore tests start servers).
    pub(crate) async fn start_as_server_user(a: &Archiving) -> Self {
        Self::start_as(a, true).await
    }

    async fn start_as(a: &Archiving, server_user: bool) -> Self {
        let port = crate::helpers::free_port();
        let config = a.setup.path().join("daemon.yaml");
        let base = std::fs::read_to_string(&a.config).unwrap();
        std::fs::write(
            &config,
            format!(
                "http: {{ listen: \"127.0.0.1:{port}\" }}\ndaemon: {{ check_interval: 1s }}\n{base}"
            ),
        )
        .unwrap();
        let log = a.setup.path().join("daemon.log");
        // setpriv execs strata itself (no parent left to forward signals).
        let mut command = if server_user && crate::cluster::is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                bin(),
            ]);
            c
        } else {
            Command::new(bin())
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .arg("run")
            .envs(moto_env())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub(crate) async fn health(&self) -> (u16, serde_json::Value) {
        match reqwest::get(format!("{}/health", self.url)).await {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    pub(crate) async fn metric(&self, line_start: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(line_start))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    /// Waits until `/health` of job prod satisfies `ok`.
    pub(crate) async fn until(
        &self,
        what: &str,
        ok: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, h) = self.health().await;
            if ok(code, &h["jobs"]["prod"]) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: /health {code} {h}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn the_daemon_reports_archiving_its_failures_and_the_recovery_window() {
    let a = Archiving::start().await;
    a.base_backup();
    let segment = a.fill_segment(100);
    a.archived(&segment);
    let d = Watching::start(&a).await;
    let h = d
        .until("archiving seen", |code, j| {
            code == 200
                && j["wal"]["last_archived_wal"]
                    .as_str()
                    .is_some_and(|w| w >= segment.as_str())
        })
        .await;
    let wal = &h["jobs"]["prod"]["wal"];
    assert!(wal["problem"].is_null(), "{h}");
    assert!(h["jobs"]["prod"]["within_rpo"].as_bool().unwrap(), "{h}");
    let archived = d
        .metric("strata_wal_archived_total{job=\"prod\"}")
        .await
        .unwrap();
    assert!(archived >= 2.0, "{archived}");
    let at = d
        .metric("strata_wal_last_archived_timestamp_seconds{job=\"prod\"}")
        .await
        .unwrap();
    assert!(at > chrono::Utc::now().timestamp() as f64 - 600.0, "{at}");
    d.until("recovery window measured", |_, j| {
        j["wal"]["recovery_window_seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0)
    })
    .await;
    let window = d
        .metric("strata_recovery_window_seconds{job=\"prod\"}")
        .await
        .unwrap();
    assert!(window > 0.0 && window < 3600.0, "{window}");
    // The dashboard's physical-job panels use only what this daemon exports.
    let exported = reqwest::get(format!("{}/metrics", d.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, _) in crate::daemon::dashboard_metrics()
        .into_iter()
        .filter(|(_, physical)| *physical)
    {
        assert!(
            crate::daemon::exports(&exported, &name),
            "the dashboard uses {name}, which a physical job's daemon does not export:\n{exported}"
        );
    }

    // archive_command starts failing: /health says so and turns 503, the counter moves.
    let sql = |s: &str| a.cluster.psql("postgres", s);
    sql("ALTER SYSTEM SET archive_command = 'false'");
    sql("SELECT pg_reload_conf()");
    a.fill_segment(10);
    let h = d
        .until("archive failure seen", |code, j| {
            code == 503
                && j["wal"]["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("archive_command failed"))
        })
        .await;
    assert!(h["status"] == "failing", "{h}");
    let failures = d
        .metric("strata_wal_archive_failures_total{job=\"prod\"}")
        .await
        .unwrap();
    assert!(failures >= 1.0, "{failures}");

    // Fixed: the archiver catches up and the problem clears.
    sql("ALTER SYSTEM RESET archive_command");
    sql("SELECT pg_reload_conf()");
    d.until("archiving works again", |code, j| {
        code == 200 && j["wal"]["problem"].is_null()
    })
    .await;
}

#[tokio::test]
async fn pruning_a_month_later_keeps_what_the_window_needs_and_drops_older_wal() {
    // GFS keeps a daily base backup beyond the window: the first one.
    let a = Archiving::start_with(false, ", retention: { daily: 7 }").await;
    let sql = |s: &str| a.cluster.psql("postgres", s);
    sql("CREATE TABLE batches (batch int, g int)");
    sql("INSERT INTO batches SELECT 1, generate_series(1, 100)");
    let backup = || {
        let out = a.strata_as_server_user(&["backup", "prod"]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    backup();
    let before_second = a.fill_segment(10);
    a.archived(&before_second);
    backup();
    sql("INSERT INTO batches SELECT 2, generate_series(1, 100)");
    let last = a.fill_segment(10);
    a.archived(&last);
    let listed: serde_json::Value = serde_json::from_slice(
        &a.strata(&["list", "prod", "--json", "--target", "local"])
            .stdout,
    )
    .unwrap();
    let ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manifest"]["backup_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    let wal_before = a.wal_files();
    let has =
        |files: &[String], segment: &str| files.iter().any(|f| f.contains(&format!("/{segment}.")));
    assert!(has(&wal_before, &before_second));

    // Fifteen days on, with the 14-day window: the newer base backup anchors
    // the window (whatever GFS decides), and the WAL before the start of the
    // oldest base backup kept goes; the dry run says so and deletes nothing.
    let first_segment = "000000010000000000000001";
    assert!(has(&wal_before, first_segment), "{wal_before:?}");
    let later = (chrono::Utc::now() + chrono::Duration::days(15)).to_rfc3339();
    let out = a.strata(&["prune", "prod", "--dry-run", "--now", &later]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let anchor = shown
        .lines()
        .find(|l| l.contains("recovery window (its first moment"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(anchor.contains(&ids[1]), "{shown}");
    assert!(
        shown.contains(&format!(
            "(the start of {}, where the recovery window begins)",
            ids[1]
        )),
        "{shown}"
    );
    assert_eq!(a.wal_files(), wal_before);
    let out = a.strata(&["prune", "prod", "--now", &later]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WAL file(s) from local"),
        "{}",
        stderr(&out)
    );
    // Gone: what no kept base backup needs (before the first one, and between
    // the first one's end and the second one's start); the first one, if GFS
    // keeps it, keeps its own segment.
    let wal_after = a.wal_files();
    assert!(!has(&wal_after, first_segment), "{wal_after:?}");
    assert!(!has(&wal_after, &before_second), "{wal_after:?}");
    assert!(has(&wal_after, &last));
    let still_listed: serde_json::Value =
        serde_json::from_slice(&a.strata(&["list", "prod", "--json"]).stdout).unwrap();
    let first_kept = still_listed
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["manifest"]["backup_id"] == ids[0].as_str());
    assert!(
        first_kept,
        "GFS keeps the day's first base backup: {still_listed}"
    );
    // It keeps the WAL of its own start..stop (restorable to its end).
    let own = listed[0]["manifest"]["physical"]["backup_label"]
        .as_str()
        .and_then(|l| l.split("(file ").nth(1))
        .map(|f| f[..24].to_owned())
        .unwrap();
    assert!(has(&wal_after, &own), "{own}: {wal_after:?}\n{shown}");

    // What is left restores everything. (verify, at the real time, would
    // rightly report the gap: in today's window it is needed.)
    let restored = recover(&a, &["--to", "latest"]);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM batches"),
        "200"
    );
}

/// A real Prometheus (Debian's package) scraping `daemon` every second with
/// the shipped rules, evaluated every second.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(daemon: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::helpers::free_port();
        let rules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/strata.rules.yml");
        let target = daemon.trim_start_matches("http://");
        // The scrape configuration the README gives (honor_labels keeps
        // strata's job label).
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: strata\n    honor_labels: true\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`, installed by scripts/test)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The alert names firing for job prod.
    async fn firing(&self) -> Vec<String> {
        let Ok(r) = reqwest::get(format!("{}/api/v1/alerts", self.url)).await else {
            return Vec::new();
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        let mut names: Vec<String> = v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing" && a["labels"]["job"] == "prod")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    async fn until(&self, what: &str, ok: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let firing = self.firing().await;
            if ok(&firing) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: firing {firing:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test]
async fn prometheus_with_the_shipped_rules_fires_and_resolves_the_archiving_alerts() {
    let a = Archiving::start().await;
    let d = Watching::start(&a).await;
    // Nothing archived yet: stale.
    d.until("daemon up", |code, j| code != 0 && !j["wal"].is_null())
        .await;
    let p = Prometheus::start(&d.url);
    p.until("stale fires", |f| {
        f.iter().any(|n| n == "StrataWalArchiveStale")
    })
    .await;
    let segment = a.fill_segment(10);
    a.archived(&segment);
    p.until("stale resolves", |f| {
        !f.iter().any(|n| n == "StrataWalArchiveStale")
    })
    .await;

    let sql = |s: &str| a.cluster.psql("postgres", s);
    sql("ALTER SYSTEM SET archive_command = 'false'");
    sql("SELECT pg_reload_conf()");
    a.fill_segment(10);
    p.until("failing fires", |f| {
        f.iter().any(|n| n == "StrataWalArchiveFailing")
    })
    .await;
    sql("ALTER SYSTEM RESET archive_command");
    sql("SELECT pg_reload_conf()");
    p.until("failing resolves", |f| {
        !f.iter().any(|n| n == "StrataWalArchiveFailing")
    })
    .await;
}
