use super::*;
use chrono::TimeZone;

fn entry(id: &str, at: DateTime<Utc>, stored: u64, ok: Option<bool>) -> Entry {
    let verifications = match ok {
        None => serde_json::json!([]),
        Some(ok) => {
            serde_json::json!([{ "at": at, "kind": "read_back", "target": "local", "ok": ok, "detail": "" }])
        }
    };
    let manifest = serde_json::json!({
        "format_version": 1, "backup_id": id, "job": "app", "started_at": at, "finished_at": at,
        "database": { "name": "app", "server_version": "15.4" }, "pg_dump_version": "15.4",
        "format": "plain", "compression": "gzip:6", "encryption": null, "object": format!("{id}.sql.gz"),
        "raw_bytes": stored * 5, "stored_bytes": stored, "sha256": "00", "tables": {}, "targets": [],
        "verifications": verifications,
    });
    Entry {
        manifest_key: format!("app/{id}.manifest.json"),
        manifest: serde_json::from_value(manifest).unwrap(),
        trust: crate::domain::manifest::Trust::Unsigned,
    }
}

fn ok(entries: Vec<Entry>) -> Listing {
    Ok(crate::catalog::Listing {
        entries,
        refused: Vec::new(),
    })
}

fn config() -> Config {
    Config::parse(
        "timezone: America/New_York\ntargets:\n  local: { kind: local, path: /tmp/x }\n  s3: { kind: s3, bucket: bkt-1 }\n\
jobs:\n  app: { database_url: postgres://h/app, targets: [local, s3], schedule: \"0 3 * * *\", rpo: 24h }\n",
        std::path::Path::new("t.yaml"),
        &|_| None,
    )
    .unwrap()
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, day, hour, 0, 0).unwrap()
}

fn run(per_target: Vec<(&str, Listing)>, now: DateTime<Utc>) -> JobStatus {
    let listings = BTreeMap::from([(
        "app".to_owned(),
        per_target
            .into_iter()
            .map(|(t, l)| (t.to_owned(), l))
            .collect(),
    )]);
    let cost = CostReport::new(Vec::new(), Vec::new());
    report(&config(), now, &listings, &BTreeMap::new(), &cost)
        .jobs
        .remove(0)
}

#[test]
fn a_fresh_backup_on_every_target_is_ok_with_its_trend() {
    let b: Vec<Entry> = (1..=9)
        .map(|d| entry(&format!("b{d}"), at(d, 8), 100 * u64::from(d), None))
        .collect();
    let j = run(vec![("local", ok(b.clone())), ("s3", ok(b))], at(9, 12));
    assert_eq!(j.status, "ok");
    assert_eq!(j.backups, 9);
    assert_eq!(j.last_good.as_ref().unwrap().backup_id, "b9");
    assert_eq!(j.last_good.as_ref().unwrap().age_seconds, 4 * 3600);
    assert_eq!(j.size_trend, vec![300, 400, 500, 600, 700, 800, 900]);
    assert!((j.size_change_ratio.unwrap() - 0.125).abs() < 1e-9);
    // The next 03:00 in New York after 12:00 UTC is the next day's, after
    // the switch to daylight saving time (9 March 2025): 07:00 UTC.
    assert_eq!(j.next_run, Some(at(10, 7)));
    assert!(j.targets.iter().all(|t| t.state == "ok" && t.backups == 9));
}

#[test]
fn stale_degraded_failed_and_empty_jobs_are_named() {
    let good = entry("old", at(1, 8), 100, Some(true));
    let bad = entry("new", at(5, 8), 100, Some(false));
    let j = run(
        vec![
            ("local", ok(vec![good.clone(), bad.clone()])),
            ("s3", ok(vec![good.clone()])),
        ],
        at(5, 9),
    );
    assert_eq!(j.status, "stale", "the newest good backup is four days old");
    assert_eq!(j.last_good.as_ref().unwrap().backup_id, "old");
    assert!(!j.newest.as_ref().unwrap().good);
    assert!(j.text_line_of("s3").contains("missing the newest backup"));
    let j = run(
        vec![
            ("local", ok(vec![good.clone()])),
            ("s3", Err("connection refused".into())),
        ],
        at(1, 9),
    );
    assert_eq!(j.status, "degraded");
    assert!(
        j.text_line_of("s3")
            .contains("cannot be listed: connection refused")
    );
    let j = run(vec![("local", ok(vec![])), ("s3", ok(vec![]))], at(1, 9));
    assert_eq!(j.status, "no backup");
    assert!(j.last_good.is_none());
}

impl JobStatus {
    fn text_line_of(&self, target: &str) -> String {
        self.targets
            .iter()
            .find(|t| t.target == target)
            .map(|t| t.state.clone())
            .unwrap_or_default()
    }
}

#[test]
fn the_screen_shows_every_part() {
    let b = vec![entry("b1", at(1, 8), 1 << 30, None)];
    let listings = BTreeMap::from([(
        "app".to_owned(),
        BTreeMap::from([
            ("local".to_owned(), ok(b.clone())),
            ("s3".to_owned(), ok(b)),
        ]),
    )]);
    let facts = BTreeMap::from([(
        "app".to_owned(),
        JobFacts {
            restore_test: Some(RestoreTestFact {
                at: at(1, 10),
                ok: true,
                seconds: 754.0,
                error: None,
            }),
            last_run: Some(RunFact {
                run_id: "r1".into(),
                status: "success".into(),
            }),
            newest_wal: None,
        },
    )]);
    let cost = CostReport::new(Vec::new(), Vec::new());
    let s = report(&config(), at(1, 9), &listings, &facts, &cost);
    let text = s.text(chrono_tz::America::New_York);
    for part in [
        "job app: ok",
        "last good backup  b1 (1h ago, RPO 1day)",
        "1.0 GiB stored (5.0 GiB raw)",
        "next run          2025-03-02T03:00:00-05:00 (0 3 * * *)",
        "restore test      2025-03-01 05:00 ok, RTO 12m 34s",
        "last run          success (r1)",
        "targets           local ok (1), s3 ok (1)",
    ] {
        assert!(text.contains(part), "missing {part:?} in\n{text}");
    }
}

#[test]
fn a_physical_job_is_judged_by_its_newest_archived_wal() {
    let config = Config::parse(
        "timezone: UTC\ntargets:\n  local: { kind: local, path: /tmp/x }\n\
jobs:\n  app: { kind: physical, database_url: postgres://h/postgres, targets: [local], schedule: \"0 3 * * 0\", rpo: 1h }\n",
        std::path::Path::new("t.yaml"),
        &|_| None,
    )
    .unwrap();
    // A base backup three days old: a physical job's recovery point is its WAL.
    let listings = BTreeMap::from([(
        "app".to_owned(),
        BTreeMap::from([(
            "local".to_owned(),
            ok(vec![entry("b1", at(1, 3), 1 << 30, None)]),
        )]),
    )]);
    let cost = CostReport::new(Vec::new(), Vec::new());
    let with_wal = |minutes: i64| {
        let facts = BTreeMap::from([(
            "app".to_owned(),
            JobFacts {
                newest_wal: Some(Ok(WalFact {
                    file: "000000010000000000000042".into(),
                    at: at(4, 3) - chrono::Duration::minutes(minutes),
                })),
                ..JobFacts::default()
            },
        )]);
        report(&config, at(4, 3), &listings, &facts, &cost)
    };
    let fresh = with_wal(5);
    assert_eq!(fresh.jobs[0].status, "ok");
    let text = fresh.text(chrono_tz::UTC);
    assert!(
        text.contains("newest WAL        000000010000000000000042 (5m ago, RPO 1h)"),
        "{text}"
    );
    assert!(text.contains("last base backup  b1 (3days ago)"), "{text}");
    let stale = with_wal(90);
    assert_eq!(stale.jobs[0].status, "stale");
    assert!(stale.text(chrono_tz::UTC).contains("RPO 1h: EXCEEDED"));
    // No WAL known: not within the RPO whatever the base backups say.
    let none = report(&config, at(1, 4), &listings, &BTreeMap::new(), &cost);
    assert_eq!(none.jobs[0].status, "stale");
}
