//! What strata asks the state database: schedule claims, replicas, the latest
//! finished run, prune plans and restore tests, one run by id.

use super::*;

impl StateDb {
    /// Claims a scheduled slot; `Ok(false)` when another daemon already did.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn claim(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        run_id: &str,
        host: &str,
    ) -> Result<bool, StateError> {
        let won = self
            .bounded(async {
                let client = self.connected().await?;
                client
                    .execute(
                        "INSERT INTO schedule_claims (job, slot, run_id, claimed_by) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&job, &slot, &run_id, &host],
                    )
                    .await
                    .map_err(|e| self.pg(&e))
            })
            .await?
            == 1;
        if !won {
            self.replicas_seen.store(true, Ordering::Relaxed);
        }
        Ok(won)
    }

    /// Whether another daemon claimed slots in the last two days (read once at
    /// start-up; a conflict on a claim also counts).
    pub async fn look_for_replicas(&self, host: &str) {
        let seen = self
            .bounded(async {
                let client = self.connected().await?;
                let row = client
                    .query_one(
                        "SELECT count(*) FROM schedule_claims WHERE claimed_by <> $1 AND slot > now() - interval '2 days'",
                        &[&host],
                    )
                    .await
                    .map_err(|e| self.pg(&e))?;
                Ok(row.get::<_, i64>(0) > 0)
            })
            .await;
        if let Ok(true) = seen {
            self.replicas_seen.store(true, Ordering::Relaxed);
        }
    }

    /// Status of the job's newest finished run, if any.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn latest_finished(
        &self,
        job: &str,
    ) -> Result<Option<(String, RunStatus)>, StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let row = client
                .query_opt(
                    "SELECT id, status FROM runs WHERE job = $1 AND status <> 'running' ORDER BY started_at DESC LIMIT 1",
                    &[&job],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(row.map(|r| (r.get(0), RunStatus::parse(r.get(1)))))
        })
        .await
    }

    /// Records a deletion plan waiting for approval, superseding older pending
    /// plans of the job; returns its id.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn save_prune_plan(
        &self,
        job: &str,
        by: &str,
        plan: &serde_json::Value,
    ) -> Result<i64, StateError> {
        self.bounded(async {
            let mut client = self.connected().await?;
            let tx = client.transaction().await.map_err(|e| self.pg(&e))?;
            tx.execute(
                "UPDATE prune_plans SET status = 'superseded', decided_at = now() WHERE job = $1 AND status = 'pending'",
                &[&job],
            )
            .await
            .map_err(|e| self.pg(&e))?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO prune_plans (job, created_by, status, plan) VALUES ($1, $2, 'pending', $3) RETURNING id",
                    &[&job, &by, plan],
                )
                .await
                .map_err(|e| self.pg(&e))?
                .get(0);
            tx.commit().await.map_err(|e| self.pg(&e))?;
            Ok(id)
        })
        .await
    }

    /// The job's pending deletion plan: its id and plan.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn pending_prune_plan(
        &self,
        job: &str,
    ) -> Result<Option<(i64, serde_json::Value)>, StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let row = client
                .query_opt(
                    "SELECT id, plan FROM prune_plans WHERE job = $1 AND status = 'pending' ORDER BY id DESC LIMIT 1",
                    &[&job],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
        .await
    }

    /// Marks a pending plan approved; `false` when it was no longer pending
    /// (approved or superseded meanwhile).
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn approve_prune_plan(&self, id: i64, by: &str) -> Result<bool, StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let n = client
                .execute(
                    "UPDATE prune_plans SET status = 'approved', decided_at = now(), decided_by = $2 WHERE id = $1 AND status = 'pending'",
                    &[&id, &by],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(n == 1)
        })
        .await
    }

    /// Records a restore test.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn save_restore_test(
        &self,
        t: &crate::domain::RestoreTest,
        host: &str,
    ) -> Result<(), StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let tables = i32::try_from(t.tables).unwrap_or(i32::MAX);
            let rows = i64::try_from(t.rows).unwrap_or(i64::MAX);
            client
                .execute(
                    "INSERT INTO restore_tests (job, backup_id, target, started_at, seconds, ok, error, tables, rows, host) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[&t.job, &t.backup_id, &t.target, &t.started_at, &t.seconds, &t.ok, &t.error, &tables, &rows, &host],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(())
        })
        .await
    }

    /// The job's newest successful restore test: when it started and how long it took.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn last_restore_test_success(
        &self,
        job: &str,
    ) -> Result<Option<(DateTime<Utc>, f64)>, StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let row = client
                .query_opt(
                    "SELECT started_at, seconds FROM restore_tests WHERE job = $1 AND ok ORDER BY started_at DESC LIMIT 1",
                    &[&job],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
        .await
    }

    /// The newest restore test of `job`, passed or not: when, ok, seconds, error.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn last_restore_test(
        &self,
        job: &str,
    ) -> Result<Option<(DateTime<Utc>, bool, f64, Option<String>)>, StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let row = client
                .query_opt(
                    "SELECT started_at, ok, seconds, error FROM restore_tests WHERE job = $1 ORDER BY started_at DESC LIMIT 1",
                    &[&job],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
        })
        .await
    }

    /// One run by id.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, StateError> {
        self.bounded(async {
            let client = self.connected().await?;
            let row = client
                .query_opt(
                    "SELECT id, job, trigger, scheduled_for, started_at, finished_at, status, backup_id, raw_bytes, stored_bytes, error, targets, host FROM runs WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            Ok(row.map(|r| RunRecord {
                id: r.get(0),
                job: r.get(1),
                trigger: r.get(2),
                scheduled_for: r.get(3),
                started_at: r.get(4),
                finished_at: r.get(5),
                status: RunStatus::parse(r.get(6)),
                backup_id: r.get(7),
                raw_bytes: r.get::<_, Option<i64>>(8).map(|n| n as u64),
                stored_bytes: r.get::<_, Option<i64>>(9).map(|n| n as u64),
                error: r.get(10),
                targets: serde_json::from_value(r.get(11)).unwrap_or_default(),
                host: r.get(12),
            }))
        })
        .await
    }
}
