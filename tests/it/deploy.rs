//! Deployment artifacts checked against what strata really does: the IAM
//! policies in deploy/aws allow every S3 call strata makes in each role (the
//! writer never deletes), seen through a recording proxy in front of moto.

use chrono::Utc;
use serde_json::Value;
use strata::commands::backup;

use crate::helpers::{Bucket, Setup, TestDb, job};
use crate::proxy::FaultProxy;

/// The IAM actions an S3 request (path-style, as recorded) needs.
fn actions(head: &str) -> Vec<&'static str> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |k: &str| {
        query
            .split('&')
            .any(|p| p == k || p.starts_with(&format!("{k}=")))
    };
    // Path-style: /bucket/key; a bucket request may end in a bare slash.
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    let headers = head.to_ascii_lowercase();
    let mut out = match (method, object) {
        ("GET", false) if has("uploads") => vec!["s3:ListBucketMultipartUploads"],
        ("GET", false) if has("versioning") => vec!["s3:GetBucketVersioning"],
        ("GET", false) if has("lifecycle") => vec!["s3:GetLifecycleConfiguration"],
        ("PUT", false) if has("lifecycle") => vec!["s3:PutLifecycleConfiguration"],
        ("GET", false) if has("object-lock") => vec!["s3:GetBucketObjectLockConfiguration"],
        ("GET", false) => vec!["s3:ListBucket"],
        ("HEAD" | "GET", true) => vec!["s3:GetObject"],
        ("POST", true) if has("restore") => vec!["s3:RestoreObject"],
        ("POST" | "PUT", true) => vec!["s3:PutObject"],
        ("DELETE", true) if has("uploadId") => vec!["s3:AbortMultipartUpload"],
        ("DELETE", true) if has("versionId") => vec!["s3:DeleteObjectVersion"],
        ("DELETE", true) => vec!["s3:DeleteObject"],
        _ => panic!("an S3 request this test does not know: {line}"),
    };
    if method == "PUT" || method == "POST" {
        if headers.contains("\r\nx-amz-tagging:") {
            out.push("s3:PutObjectTagging");
        }
        if headers.contains("\r\nx-amz-object-lock-mode:") {
            out.push("s3:PutObjectRetention");
        }
    }
    out
}

/// Every action a policy document allows.
fn allowed(file: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/aws")
        .join(file);
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
    assert_eq!(policy["Version"], "2012-10-17");
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            other => panic!("{file}: Action {other}"),
        })
        .collect()
}

/// Actions of the requests from `from` on, each checked against `policy`.
fn check(requests: &[String], policy: &str) -> Vec<&'static str> {
    let allowed = allowed(policy);
    let mut used: Vec<&'static str> = requests.iter().flat_map(|r| actions(r)).collect();
    used.sort_unstable();
    used.dedup();
    for a in &used {
        assert!(
            allowed.iter().any(|x| x == a),
            "{policy} lacks {a}, which strata calls"
        );
    }
    used
}

#[tokio::test]
async fn iam_policies_allow_every_s3_call_strata_makes_and_the_writer_never_deletes() {
    let bucket = Bucket::create_locked().await;
    let proxy = FaultProxy::start(bucket.settings.endpoint.as_deref().unwrap()).await;
    let setup = Setup::new();
    let source = TestDb::create();
    // Over one 5 MiB part once stored, so the upload is multipart.
    source.exec(
        "CREATE TABLE big AS SELECT g, md5(random()::text) || md5(random()::text) AS a FROM generate_series(1, 100000) g",
    );
    let s3 = bucket.yaml("s3", Some(&proxy.url())).replace(
        " }\n",
        ", tags: { owner: dba }, object_lock: { mode: GOVERNANCE, days: 1 }, lifecycle: [ { after_days: 30, storage_class: STANDARD_IA } ] }\n",
    );
    let strata = setup
        .strata(
            &s3,
            &job(
                "app",
                &source.url(),
                "local, s3",
                ", compression: none, verify: { read_back: always }, retention: { daily: 1 }",
            ),
            &[&bucket],
        )
        .await;

    // The writer: backups with read-back, and the start-up clean-up.
    for _ in 0..3 {
        let r = backup::run_job(&strata, "app", Utc::now(), &Default::default())
            .await
            .unwrap();
        assert!(r.is_complete(), "{:?}", r.failed);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    strata
        .target("s3")
        .cleanup_stale("database-backups/", std::time::Duration::ZERO)
        .await
        .unwrap();
    let writer = proxy.requests();
    let used = check(&writer, "writer-policy.json");
    for needed in [
        "s3:PutObject",
        "s3:GetObject",
        "s3:PutObjectTagging",
        "s3:PutObjectRetention",
        "s3:ListBucketMultipartUploads",
    ] {
        assert!(
            used.contains(&needed),
            "the backup never needed {needed}? {used:?}"
        );
    }
    assert!(
        !allowed("writer-policy.json")
            .iter()
            .any(|a| a.starts_with("s3:Delete")),
        "the writer may delete"
    );

    // The restorer: a restore reads only.
    let dest = TestDb::reserve();
    strata::commands::restore::restore(
        &strata,
        "app",
        &dest.url().parse().unwrap(),
        &strata::commands::restore::RestoreOptions {
            from: Some("s3".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    check(&proxy.requests()[writer.len()..], "restorer-policy.json");

    // The admin: lifecycle, compliance and pruning (which deletes).
    let before = proxy.requests().len();
    let t = &strata.config().targets["s3"];
    strata::commands::lifecycle::apply(t, strata.target("s3").as_s3().unwrap())
        .await
        .unwrap();
    let jobs = strata::commands::prune::gather_jobs(&strata).await;
    strata::commands::compliance::report(&strata, Utc::now(), &jobs, &Default::default()).await;
    let plan = strata::commands::prune::plan(&strata, "app", Utc::now())
        .await
        .unwrap();
    assert!(!plan.deletions().is_empty());
    let rec = strata::commands::prune::Recorder {
        state: None,
        metrics: None,
        actor: "test",
        clock: &strata::policy::schedule::SystemClock,
    };
    strata::commands::prune::execute(&strata, &plan, None, &rec).await;
    let used = check(&proxy.requests()[before..], "admin-policy.json");
    assert!(
        used.contains(&"s3:DeleteObject") || used.contains(&"s3:DeleteObjectVersion"),
        "{used:?}"
    );

    // The bucket policy is valid JSON and denies plain HTTP.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/aws/bucket-policy.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        policy["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"],
        "false"
    );
}

#[test]
fn the_shipped_lifecycle_json_is_what_strata_puts_on_the_production_buckets() {
    let setup = Setup::new();
    for token in ["api-token", "admin-token"] {
        std::fs::write(setup.path().join(token), "t").unwrap();
    }
    let keys = setup.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::copy(setup.path().join("k1.key"), keys.join("k1.key")).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("deploy/config.production.yaml");
    let (secrets, key_dir) = (
        setup.path().display().to_string(),
        keys.display().to_string(),
    );
    let env = move |name: &str| match name {
        "STRATA_SECRETS_DIR" => Some(secrets.clone()),
        "STRATA_KEY_DIR" => Some(key_dir.clone()),
        n if n.ends_with("DATABASE_URL") => {
            Some(format!("postgres://strata@db.example/{}", n.to_lowercase()))
        }
        _ => None,
    };
    let config =
        strata::config::Config::parse(&std::fs::read_to_string(&path).unwrap(), &path, &env)
            .unwrap_or_else(|e| panic!("{e}"));
    let primary = strata::commands::lifecycle::wanted(&config.targets["primary"]);
    assert_eq!(
        primary,
        strata::commands::lifecycle::wanted(&config.targets["offsite"])
    );
    let expected = serde_json::to_string_pretty(&primary).unwrap();
    let shipped = std::fs::read_to_string(root.join("deploy/aws/lifecycle.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&shipped).unwrap(),
        serde_json::from_str::<Value>(&expected).unwrap(),
        "deploy/aws/lifecycle.json should be:\n{expected}"
    );
}
