//! Backups restored give back the same database, through every target kind.

use chrono::Utc;
use strata::commands::backup;
use strata::commands::restore;
use strata::pg::DbUrl;

use crate::helpers::{Bucket, S3Kind, Setup, TestDb, job};

/// Content chosen to trip up dump and restore: several schemas, quoted and
/// non-ASCII identifiers, bytea, arrays, jsonb, enums, sequences, large objects,
/// partitions, views and materialized views.
const UNUSUAL: &str = r#"
CREATE SCHEMA "Odd ""Schema""";
CREATE SCHEMA données;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE SEQUENCE données.compteur START 42;
CREATE TABLE "Odd ""Schema"""."Table With Spaces" (id serial PRIMARY KEY, "Ünïcødé col" text, payload bytea, tags text[], doc jsonb, m mood);
INSERT INTO "Odd ""Schema"""."Table With Spaces" ("Ünïcødé col", payload, tags, doc, m)
  SELECT 'row ' || g || E' with\ttab and\nnewline and \\ backslash', decode(md5(g::text), 'hex'), ARRAY['a', 'b' || g], jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'x')), (ARRAY['sad','ok','happy']::mood[])[1 + g % 3]
  FROM generate_series(1, 500) g;
CREATE TABLE données.événements (id int, at date NOT NULL, label text) PARTITION BY RANGE (at);
CREATE TABLE données.événements_2024 PARTITION OF données.événements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE données.événements_2025 PARTITION OF données.événements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO données.événements SELECT g, DATE '2024-06-01' + g, 'e' || g FROM generate_series(1, 300) g;
CREATE VIEW données.vue AS SELECT count(*) AS n FROM données.événements;
CREATE MATERIALIZED VIEW données.matérialisée AS SELECT id, label FROM données.événements WHERE id < 10;
CREATE TABLE public.empty_table (x int);
SELECT lo_from_bytea(0, '\xdeadbeef'::bytea);
SELECT setval('données.compteur', 1000);
"#;

async fn backup_and_restore(kind: Option<S3Kind>, format: &str, compression: &str, content: &str) {
    let source = TestDb::create();
    if !content.is_empty() {
        source.exec(content);
    }
    let setup = Setup::new();
    let bucket = match kind {
        Some(k) => Some(Bucket::create(k).await),
        None => None,
    };
    let (targets_yaml, list) = match &bucket {
        Some(b) => (b.yaml("s3", None), "local, s3"),
        None => (String::new(), "local"),
    };
    let extra = format!(", format: {format}, compression: \"{compression}\"");
    let strata = setup
        .strata(
            &targets_yaml,
            &job("app", &source.url(), list, &extra),
            &bucket.iter().collect::<Vec<_>>(),
        )
        .await;
    let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.failed);
    let m = &report.manifest;
    assert_eq!(m.targets.len(), list.split(", ").count());
    if content == UNUSUAL {
        assert_eq!(
            m.tables.get("\"Odd \"\"Schema\"\"\".\"Table With Spaces\""),
            Some(&500),
            "{:?}",
            m.tables
        );
        assert_eq!(m.total_rows(), 500 + 300);
    } else {
        assert!(m.tables.is_empty());
    }

    // Restore from each target; each restore must equal the source.
    let from: Vec<&str> = list.split(", ").collect();
    for t in from {
        let dest = TestDb::reserve();
        let into: DbUrl = dest.url().parse().unwrap();
        let opts = restore::RestoreOptions {
            from: Some(t.into()),
            ..Default::default()
        };
        let r = restore::restore(&strata, "app", &into, &opts)
            .await
            .unwrap();
        assert_eq!(r.backup_id, m.backup_id);
        assert_eq!(
            dest.dump(),
            source.dump(),
            "restore from {t} differs from the source"
        );
    }
    let v = restore::verify(&strata, "app", &m.backup_id, None, chrono::Utc::now())
        .await
        .unwrap();
    assert!(v.ok(), "{v:?}");
}

#[tokio::test]
async fn empty_database_round_trips_through_local_disk() {
    backup_and_restore(None, "plain", "gzip:6", "").await;
}

#[tokio::test]
async fn unusual_content_round_trips_plain_gzip_through_local_and_moto() {
    backup_and_restore(Some(S3Kind::Moto), "plain", "gzip:6", UNUSUAL).await;
}

#[tokio::test]
async fn unusual_content_round_trips_custom_zstd_through_local_and_garage() {
    backup_and_restore(Some(S3Kind::Garage), "custom", "zstd:3", UNUSUAL).await;
}

#[tokio::test]
async fn unusual_content_round_trips_uncompressed() {
    backup_and_restore(None, "plain", "none", UNUSUAL).await;
}

#[tokio::test]
async fn empty_database_round_trips_custom_through_garage() {
    backup_and_restore(Some(S3Kind::Garage), "custom", "gzip:1", "").await;
}

#[tokio::test]
async fn stored_objects_are_standard_gzip_after_decryption() {
    // Recovery by hand: strata decrypt | gunzip must give the plain dump.
    let source = TestDb::create();
    source.exec("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g");
    let setup = Setup::new();
    let strata = setup
        .strata("", &job("app", &source.url(), "local", ""), &[])
        .await;
    let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap();
    let object = setup.backups().join(&report.manifest.targets[0].key);
    let script = format!(
        "set -o pipefail; {} decrypt --key-file {} < {} | gunzip | grep -c '^[0-9]'",
        crate::helpers::bin(),
        setup.path().join("k1.key").display(),
        object.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "50000");
    // The independent Python decryptor of docs/format.md reads it too.
    let python = std::env::var("STRATA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "set -o pipefail; {python} docs/strata_decrypt.py {} < {} | gunzip | grep -c '^[0-9]'",
        setup.path().join("k1.key").display(),
        object.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "50000");
}

#[tokio::test]
async fn s3_objects_carry_encryption_storage_class_and_tags() {
    let source = TestDb::create();
    source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g");
    let setup = Setup::new();
    let bucket = Bucket::create(S3Kind::Moto).await;
    let targets = bucket
        .yaml("s3", None)
        .replace("part_size_mib: 5", "part_size_mib: 5, storage_class: STANDARD_IA, tags: { owner: dba, \"data class\": restricted }");
    let strata = setup
        .strata(&targets, &job("app", &source.url(), "s3", ""), &[&bucket])
        .await;
    let report = backup::backup(&strata, "app", Utc::now(), &Default::default())
        .await
        .unwrap();
    let record = &report.manifest.targets[0];
    assert_eq!(
        record.storage_class.as_ref().map(|c| c.as_str()),
        Some("STANDARD_IA")
    );
    let client = bucket.client().await;
    let head = client
        .head_object()
        .bucket(&bucket.settings.bucket)
        .key(&record.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    assert_eq!(
        head.storage_class().map(|s| s.as_str()),
        Some("STANDARD_IA")
    );
    let tags = client
        .get_object_tagging()
        .bucket(&bucket.settings.bucket)
        .key(&record.key)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<(String, String)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            ("data class".into(), "restricted".into()),
            ("owner".into(), "dba".into())
        ]
    );
}

#[tokio::test]
async fn two_backups_in_the_same_second_get_distinct_ids_and_both_restore() {
    let source = TestDb::create();
    source.exec("CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g");
    let setup = Setup::new();
    let strata = setup
        .strata("", &job("app", &source.url(), "local", ""), &[])
        .await;
    let now = Utc::now();
    let first = backup::backup(&strata, "app", now, &Default::default())
        .await
        .unwrap();
    source.exec("INSERT INTO t VALUES (11)");
    let second = backup::backup(&strata, "app", now, &Default::default())
        .await
        .unwrap();
    let (a, b) = (&first.manifest.backup_id, &second.manifest.backup_id);
    assert_eq!(b, &format!("{a}-2"));
    for (id, rows) in [(a, "10"), (b, "11"), (&"latest".to_owned(), "11")] {
        let dest = TestDb::reserve();
        let opts = restore::RestoreOptions {
            backup: id.clone(),
            ..Default::default()
        };
        restore::restore(&strata, "app", &dest.url().parse().unwrap(), &opts)
            .await
            .unwrap();
        assert_eq!(dest.exec("SELECT count(*) FROM t"), rows, "{id}");
    }
}
