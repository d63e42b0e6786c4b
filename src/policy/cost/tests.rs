use super::*;

fn c(name: &str) -> StorageClass {
    StorageClass::reported(name)
}

fn prices() -> BTreeMap<StorageClass, f64> {
    [
        ("STANDARD", 0.023),
        ("STANDARD_IA", 0.0125),
        ("GLACIER", 0.004),
        ("DEEP_ARCHIVE", 0.00099),
    ]
    .into_iter()
    .map(|(name, p)| (c(name), p))
    .collect()
}

fn rule(after_days: u32, class: Option<&str>) -> LifecycleRule {
    LifecycleRule {
        after_days,
        storage_class: class.map(c),
    }
}

fn strategy_tiers() -> Vec<LifecycleRule> {
    vec![
        rule(30, Some("STANDARD_IA")),
        rule(90, Some("GLACIER")),
        rule(365, Some("DEEP_ARCHIVE")),
        rule(2555, None),
    ]
}

const PROD: Retention = Retention {
    daily: 14,
    weekly: 8,
    monthly: 12,
    yearly: 7,
};

#[test]
fn a_gib_month_costs_the_class_price() {
    assert!((monthly(1 << 30, 0.023) - 0.023).abs() < 1e-12);
    assert!((monthly(100 << 30, 0.00099) - 0.099).abs() < 1e-12);
    let t = price_target(
        "primary",
        [
            (c("STANDARD"), 1 << 30),
            (c("STANDARD"), 1 << 30),
            (c("GLACIER"), 10 << 30),
            (c("LOCAL"), 5 << 30),
        ],
        &prices(),
    );
    assert_eq!(t.classes[&c("STANDARD")].bytes, 2 << 30);
    assert!((t.classes[&c("STANDARD")].usd_monthly - 0.046).abs() < 1e-12);
    assert!((t.classes[&c("GLACIER")].usd_monthly - 0.04).abs() < 1e-12);
    assert_eq!(t.classes[&c("LOCAL")].usd_monthly, 0.0);
    assert!((t.usd_monthly - 0.086).abs() < 1e-12);
}

#[test]
fn lifetimes_follow_the_retention_tiers() {
    let daily_only = lifetimes(
        &Retention {
            daily: 7,
            ..Retention::default()
        },
        None,
    );
    // Deleted when the eighth newer day arrives.
    assert!(daily_only.iter().all(|&l| l == 7), "{daily_only:?}");
    let prod = lifetimes(&PROD, Some(2555));
    // Nightly backups of the first year: most live 14 days, Sundays ~8 weeks,
    // the 1sts ~a year, 1 January until the lifecycle expires it (7 years).
    assert_eq!(
        prod.iter().filter(|&&l| l == 14).count(),
        365 - 52 - 12 + 1 + 1
    );
    assert_eq!(prod[0], 2555);
    assert!(prod.iter().all(|&l| l >= 14));
}

#[test]
fn storage_only_policy_is_size_times_backups_times_price() {
    // Daily 7, no lifecycle: always 7 backups (8 on the day before pruning
    // is not counted: pruning follows each backup) in STANDARD.
    let p = Projection {
        retention: Retention {
            daily: 7,
            ..Retention::default()
        },
        lifecycle: &[],
        backup_bytes: 10 << 30,
        initial_class: &StorageClass::Standard,
        part_bytes: 8 << 20,
    };
    let got = project(&p, &prices());
    assert!((got.backups_held - 7.0).abs() < 1e-9);
    let storage = got.storage_usd_monthly[&c("STANDARD")];
    // 7 backups × 10 GiB × $0.023, × 365/360 for 30-day months.
    assert!(
        (storage - 7.0 * 10.0 * 0.023 * 365.0 / 360.0).abs() < 1e-9,
        "{storage}"
    );
    assert_eq!(got.early_deletion_usd_monthly, 0.0);
    // 1,280 parts + create, complete, manifest and HEAD per nightly backup.
    let requests = (1280.0 + 4.0) * 0.005 / 1000.0 * 365.0 / 12.0;
    assert!((got.requests_usd_monthly - requests).abs() < 1e-9);
}

#[test]
fn early_deletion_is_charged_for_classes_left_too_soon() {
    // Weekly backups live ~8 weeks: 30 days in STANDARD, then ~26 in
    // STANDARD_IA, which bills 30: the rest is an early-deletion charge.
    let tiers = strategy_tiers();
    let p = Projection {
        retention: Retention {
            weekly: 8,
            ..Retention::default()
        },
        lifecycle: &tiers,
        backup_bytes: 1 << 30,
        initial_class: &StorageClass::Standard,
        part_bytes: 8 << 20,
    };
    let got = project(&p, &prices());
    assert!(got.early_deletion_usd_monthly > 0.0);
    assert!(got.storage_usd_monthly.contains_key(&c("STANDARD_IA")));
    assert!(!got.storage_usd_monthly.contains_key(&c("GLACIER")));
}

#[test]
fn the_strategy_worked_example_is_about_2_70_a_month() {
    // The strategy's estimate: ~$2.70/month for a 100 GB database, whose
    // compressed, encrypted backup is about 5 GiB, in one bucket.
    let tiers = strategy_tiers();
    let p = Projection {
        retention: PROD,
        lifecycle: &tiers,
        backup_bytes: 5 << 30,
        initial_class: &StorageClass::Standard,
        part_bytes: 8 << 20,
    };
    let got = project(&p, &prices());
    // 14 + ~6 + ~11 + up to 7 yearly backups held.
    assert!(
        got.backups_held > 37.0 && got.backups_held < 38.0,
        "{}",
        got.backups_held
    );
    assert!((got.usd_monthly - 2.65).abs() < 0.05, "{got:?}");
    // STANDARD holds the young backups and dominates the bill.
    assert!(got.storage_usd_monthly[&c("STANDARD")] > 0.7 * got.usd_monthly);
    let parts: f64 = got.storage_usd_monthly.values().sum::<f64>()
        + got.early_deletion_usd_monthly
        + got.requests_usd_monthly;
    assert!((parts - got.usd_monthly).abs() < 1e-9);
}
