use super::*;

#[test]
fn layout_matches_the_strategy_seed() {
    let tz = chrono_tz::America::New_York;
    let started = tz.with_ymd_and_hms(2025, 1, 1, 3, 0, 0).unwrap();
    let l = Layout::new(
        "database-backups",
        "production",
        "prod",
        &started,
        DumpFormat::Plain,
        Compression::Gzip(6),
        false,
    );
    assert_eq!(
        l.object_key(),
        "database-backups/production/2025/01/01/prod_backup_20250101_030000.sql.gz"
    );
    assert_eq!(
        l.manifest_key(),
        "database-backups/production/2025/01/01/prod_backup_20250101_030000.manifest.json"
    );
    let enc = Layout::new(
        "",
        "development",
        "dev",
        &started,
        DumpFormat::Custom,
        Compression::Zstd(3),
        true,
    );
    assert_eq!(
        enc.object_key(),
        "development/2025/01/01/dev_backup_20250101_030000.dump.zst.enc"
    );
    assert_eq!(enc.backup_id, "dev_backup_20250101_030000");
    let second = enc.clone().sequence(2);
    assert_eq!(second.backup_id, "dev_backup_20250101_030000-2");
    assert_eq!(
        second.object_key(),
        "development/2025/01/01/dev_backup_20250101_030000-2.dump.zst.enc"
    );
    assert!(is_archivable(&enc.object_key()));
    assert!(!is_archivable(&enc.manifest_key()));
    assert_eq!(
        enc.key_of(&enc.globals_name(Compression::Zstd(3), true)),
        "development/2025/01/01/dev_backup_20250101_030000.globals.sql.zst.enc"
    );
}

fn sample() -> Manifest {
    let at = Utc.with_ymd_and_hms(2025, 1, 1, 8, 0, 0).unwrap();
    Manifest {
        format_version: FORMAT_VERSION,
        backup_id: "prod_backup_20250101_030000".into(),
        job: "production".into(),
        started_at: at,
        finished_at: at,
        database: DatabaseInfo {
            name: "prod".into(),
            server_version: "15.4".into(),
            server_version_num: 150_004,
        },
        pg_dump_version: "15.4".into(),
        format: DumpFormat::Plain,
        compression: Compression::Gzip(6),
        encryption: None,
        object: "prod_backup_20250101_030000.sql.gz.enc".into(),
        raw_bytes: 100,
        stored_bytes: 50,
        sha256: "ab".repeat(32),
        tables: BTreeMap::from([
            ("public.t".to_owned(), 3),
            ("données.événements".to_owned(), 2),
        ]),
        targets: vec![TargetRecord {
            target: "local".into(),
            key: "p/production/2025/01/01/prod_backup_20250101_030000.sql.gz.enc".into(),
            version_id: None,
            storage_class: None,
        }],
        verifications: Vec::new(),
        globals: None,
        physical: None,
        mac: None,
    }
}

fn ring(ids: &[&str]) -> Keyring {
    let keys = ids
        .iter()
        .enumerate()
        .map(|(n, id)| MasterKey::from_bytes(*id, [u8::try_from(n).unwrap() + 1; 32]))
        .collect();
    Keyring::new(ids[0], keys).unwrap()
}

#[test]
fn sealed_manifests_open_authenticated_and_edits_are_forgeries() {
    let keys = ring(&["k1"]);
    let bytes = seal(&sample(), Some(keys.active()));
    let (m, trust) = open(&bytes, Some(&keys), true).unwrap();
    assert_eq!(trust, Trust::Authenticated("k1".into()));
    assert_eq!(m.tables, sample().tables);
    // Any edit without the key: a table name, a size, a removed field.
    let text = String::from_utf8(bytes.clone()).unwrap();
    for edited in [
        // (the name as JSON escapes it: `public.t"; CREATE TABLE pwned(x int); --`)
        text.replace("public.t", "public.t\\\"; CREATE TABLE pwned(x int); --"),
        text.replace("\"raw_bytes\": 100", "\"raw_bytes\": 101"),
        text.replace("\"pg_dump_version\": \"15.4\",", ""),
    ] {
        assert_ne!(edited, text);
        assert_eq!(
            open(edited.as_bytes(), Some(&keys), false).unwrap_err(),
            ManifestError::Forged,
            "{edited}"
        );
    }
    // Re-indenting changes nothing: the MAC is over canonical JSON.
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let compact = serde_json::to_vec(&v).unwrap();
    assert!(open(&compact, Some(&keys), true).is_ok());
    // A key that is not configured cannot vouch for it.
    let other = ring(&["k2"]);
    assert_eq!(
        open(&bytes, Some(&other), false).unwrap_err(),
        ManifestError::UnknownKey("k1".into())
    );
    // Rotation: an older configured key still verifies.
    let rotated = ring(&["k2", "k1"]);
    let old = seal(&sample(), Some(rotated.get("k1").unwrap()));
    assert!(open(&old, Some(&rotated), true).is_ok());
}

#[test]
fn manifests_without_a_mac_are_read_only_when_allowed() {
    let keys = ring(&["k1"]);
    let bytes = seal(&sample(), None);
    assert_eq!(open(&bytes, Some(&keys), false).unwrap().1, Trust::Unsigned);
    assert_eq!(
        open(&bytes, Some(&keys), true).unwrap_err(),
        ManifestError::Unsigned
    );
    assert_eq!(open(&bytes, None, true).unwrap().1, Trust::Unsigned);
}

#[test]
fn fields_that_become_keys_paths_or_sizes_are_checked_even_unsigned() {
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "object",
            Box::new(|m| m.object = "../../../etc/passwd".into()),
        ),
        (
            "object",
            Box::new(|m| m.object = "other_backup.sql.gz".into()),
        ),
        ("backup_id", Box::new(|m| m.backup_id = "a/b".into())),
        (
            "targets[0].key",
            Box::new(|m| m.targets[0].key = "/etc/shadow".into()),
        ),
        (
            "targets[0].key",
            Box::new(|m| m.targets[0].key = "p/../../x".into()),
        ),
        ("raw_bytes", Box::new(|m| m.raw_bytes = u64::MAX)),
        ("sha256", Box::new(|m| m.sha256 = "zz".into())),
        (
            "tables",
            Box::new(|m| {
                m.tables.insert("x\0y".into(), 1);
            }),
        ),
    ];
    for (name, edit) in cases {
        let mut m = sample();
        edit(&mut m);
        match open(&seal(&m, None), None, false) {
            Err(ManifestError::Field { field, .. }) => assert_eq!(field, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
    v["format_version"] = 2.into();
    assert_eq!(
        open(&serde_json::to_vec(&v).unwrap(), None, false).unwrap_err(),
        ManifestError::UnknownVersion(2)
    );
}

#[test]
fn canonical_json_sorts_keys_and_drops_whitespace() {
    let v = serde_json::json!({"b": [1, {"z": "é\n", "a": null}], "a": true});
    let mut out = Vec::new();
    canonical(&v, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"a\":true,\"b\":[1,{\"a\":null,\"z\":\"é\\n\"}]}"
    );
}

#[test]
fn names_use_local_time_of_the_zone() {
    // 08:00 UTC on 1 July is 04:00 in New York (EDT).
    let utc = Utc.with_ymd_and_hms(2025, 7, 1, 8, 0, 0).unwrap();
    let local = utc.with_timezone(&chrono_tz::America::New_York);
    let l = Layout::new(
        "p",
        "j",
        "dev",
        &local,
        DumpFormat::Plain,
        Compression::None,
        true,
    );
    assert_eq!(
        l.object_key(),
        "p/j/2025/07/01/dev_backup_20250701_040000.sql.enc"
    );
}
