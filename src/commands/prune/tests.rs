use super::*;
use crate::domain::manifest::Verification;

fn check(target: &str, minutes: i64, ok: bool) -> Verification {
    Verification {
        at: DateTime::from_timestamp(1_700_000_000 + minutes * 60, 0).expect("time"),
        kind: "read".into(),
        target: target.into(),
        ok,
        detail: String::new(),
    }
}

fn manifest_with(verifications: Vec<Verification>) -> Manifest {
    let json = serde_json::json!({
        "format_version": 1, "backup_id": "b", "job": "j",
        "started_at": "2025-01-01T08:00:00Z", "finished_at": "2025-01-01T08:01:00Z",
        "database": {"name": "d", "server_version": "15"}, "pg_dump_version": "15",
        "format": "plain", "compression": "none", "encryption": null, "object": "b.sql",
        "raw_bytes": 1, "stored_bytes": 1, "sha256": "00", "tables": {}, "targets": [],
        "verifications": verifications,
    });
    serde_json::from_value(json).expect("manifest")
}

#[test]
fn good_means_the_newest_check_of_every_target_passed() {
    assert!(is_good(&manifest_with(vec![])));
    assert!(is_good(&manifest_with(vec![check("a", 1, true)])));
    assert!(!is_good(&manifest_with(vec![check("a", 1, false)])));
    assert!(is_good(&manifest_with(vec![
        check("a", 1, false),
        check("a", 2, true)
    ])));
    assert!(!is_good(&manifest_with(vec![
        check("a", 2, false),
        check("a", 1, true)
    ])));
    assert!(!is_good(&manifest_with(vec![
        check("a", 1, true),
        check("b", 1, false)
    ])));
}
