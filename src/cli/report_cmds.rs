//! `cost` and `compliance`: reports.

use super::*;

/// `strata cost`.
pub(super) async fn cost(config: &std::path::Path, json: bool) -> Result<(), Failure> {
    let strata = Strata::build(load(config)?).await;
    let inventory = crate::commands::inventory::take(&strata).await;
    let sizes = crate::commands::inventory::newest_sizes(
        &crate::commands::prune::gather_jobs(&strata).await,
    );
    let report = crate::commands::inventory::cost_report(&strata, &inventory, &sizes);
    if json {
        print_json(&report);
    } else {
        for t in &report.targets {
            println!("{}: ${:.2}/month", t.target, t.usd_monthly);
            for (class, c) in &t.classes {
                println!(
                    "  {class:<13} {:>12}  ${:.4}/month",
                    mib(c.bytes),
                    c.usd_monthly
                );
            }
        }
        for p in &report.projections {
            println!(
                "projection {} on {}: {} backups of {} held, ${:.2}/month (storage {}, early deletion ${:.4}, requests ${:.4})",
                p.job,
                p.target,
                p.projected.backups_held.round(),
                mib(p.backup_bytes),
                p.projected.usd_monthly,
                p.projected
                    .storage_usd_monthly
                    .iter()
                    .map(|(c, usd)| format!("{c} ${usd:.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.projected.early_deletion_usd_monthly,
                p.projected.requests_usd_monthly
            );
        }
        println!(
            "total: ${:.2}/month now, ${:.2}/month projected (alert above ${:.2})",
            report.usd_monthly,
            report.projected_usd_monthly,
            strata.config().alerts.monthly_cost_usd
        );
    }
    for (t, e) in &inventory.errors {
        eprintln!("strata: target {t} could not be listed: {e}");
    }
    if inventory.errors.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            exit::FAILED,
            format!(
                "{} target(s) could not be listed; the figures leave them out",
                inventory.errors.len()
            ),
        ))
    }
}

/// `strata compliance`.
pub(super) async fn compliance(config: &std::path::Path, json: bool) -> Result<(), Failure> {
    let strata = Strata::build(load(config)?).await;
    let jobs = crate::commands::prune::gather_jobs(&strata).await;
    let report =
        crate::commands::compliance::report(&strata, Utc::now(), &jobs, &Default::default()).await;
    if json {
        print_json(&report);
    } else {
        for c in &report.checks {
            println!("{} {}", if c.pass { "PASS" } else { "FAIL" }, c.check);
            for e in &c.evidence {
                println!("     {e}");
            }
        }
    }
    if report.pass {
        Ok(())
    } else {
        let failed: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.check.as_str())
            .collect();
        Err(Failure(
            exit::FAILED,
            format!("compliance checks failed: {}", failed.join(", ")),
        ))
    }
}

/// `strata alert test`: one message to every configured channel.
pub(super) async fn alert_test(config: &Path) -> Result<(), Failure> {
    let config = load(config)?;
    let alerter = crate::alerts::Alerter::from_config(&config.alerts)?;
    if !alerter.has_channels() {
        return Err(Failure(
            exit::FAILED,
            "no alert channel is configured (alerts.email, alerts.webhook)".into(),
        ));
    }
    let alert = crate::alerts::Alert::new(
        crate::alerts::Kind::Test,
        None,
        format!("test message from `strata alert test` ({})", cli_actor()),
        "nothing: this checks that alerts reach you",
    );
    let mut failed = 0;
    for (channel, result) in alerter.send_all(&alert, None).await {
        match result {
            Ok(()) => println!("{channel}: sent"),
            Err(e) => {
                failed += 1;
                println!("{channel}: FAILED: {}", e.message);
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure(
            exit::FAILED,
            format!("{failed} alert channel(s) failed"),
        ))
    }
}
