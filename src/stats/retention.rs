//! The retention task: folds requests that finished more than
//! `retention.requests_days` ago into the stats rollup and deletes them, and
//! deletes finished instances (with their events) older than
//! `retention.instance_history_days`.
//!
//! Work goes in batches of `retention.batch_size` rows, one short
//! transaction each. Every transaction first updates the task's row in
//! `maintenance`: on PostgreSQL that row lock, on SQLite the write lock the
//! update takes, makes replicas running the same purge take turns, so no
//! request is rolled up twice. Requests still queued or running are never
//! purged, however old.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait, Value,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::sql::Sql;
use crate::config::RetentionConfig;

/// What one run deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub requests: u64,
    pub instances: u64,
    pub instance_events: u64,
}

/// A quarter hour, the rollup's slot.
pub const SLOT_SECS: i64 = 900;

const FINISHED_INSTANCE: &str = "('STOPPED', 'FAILED')";

#[derive(Clone)]
pub struct Retention {
    db: DatabaseConnection,
    config: RetentionConfig,
}

impl Retention {
    pub fn new(db: DatabaseConnection, config: RetentionConfig) -> Self {
        Retention { db, config }
    }

    /// Purges on start, then every `retention.interval_secs`, until
    /// shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let started = Instant::now();
            match self.run_once(Utc::now()).await {
                Ok(report) if report == PurgeReport::default() => {
                    tracing::debug!("retention purge found nothing to delete");
                }
                Ok(report) => tracing::info!(
                    requests = report.requests,
                    instances = report.instances,
                    instance_events = report.instance_events,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention purge deleted old rows"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention purge failed; it runs again at the next interval")
                }
            }
        }
    }

    /// One full purge as of `now`.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<PurgeReport, DbErr> {
        let mut report = PurgeReport::default();
        let batch = u64::from(self.config.batch_size);
        if self.config.requests_days > 0 {
            let cutoff = now - TimeDelta::days(i64::from(self.config.requests_days));
            loop {
                let n = self.purge_requests(now, cutoff).await?;
                report.requests += n;
                if n < batch {
                    break;
                }
                // Let waiting writers in between batches.
                tokio::task::yield_now().await;
            }
        }
        if self.config.instance_history_days > 0 {
            let cutoff = now - TimeDelta::days(i64::from(self.config.instance_history_days));
            loop {
                let (events, instances) = self.purge_instances(now, cutoff).await?;
                report.instance_events += events;
                report.instances += instances;
                if events < batch && instances < batch {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(report)
    }

    /// Rolls up and deletes up to one batch of finished requests created
    /// before `cutoff`. Returns how many.
    async fn purge_requests(
        &self,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await?;
        claim(&txn, "requests", now).await?;
        let mut select = Sql::new(backend);
        select
            // Aged from completion, so a request that waited long still
            // keeps its output for the whole retention.
            .push("SELECT id FROM work_requests WHERE (completed_at < ")
            .bind(cutoff)
            .push(" OR (completed_at IS NULL AND created_at < ")
            .bind(cutoff)
            .push("))")
            // No order: any old finished rows will do, and sorting them for
            // each batch would cost more than the batch.
            .push(&format!(" AND status IN {} LIMIT ", super::FINISHED))
            .bind(i64::from(self.config.batch_size));
        let ids = txn
            .query_all_raw(select.build())
            .await?
            .iter()
            .map(|r| r.try_get::<Uuid>("", "id"))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        txn.execute_raw(rollup_statement(backend, &ids)).await?;
        let mut delete = Sql::new(backend);
        delete
            .push("DELETE FROM work_requests WHERE id IN ")
            .bind_list(&ids);
        let deleted = txn.execute_raw(delete.build()).await?.rows_affected();
        finish(&txn, "requests", now, deleted).await?;
        txn.commit().await?;
        Ok(deleted)
    }

    /// Deletes up to one batch of events of finished instances that ended
    /// before `cutoff`, then, once they have none left, up to one batch of
    /// the instances. Returns `(events, instances)` deleted.
    async fn purge_instances(
        &self,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<(u64, u64), DbErr> {
        let backend = self.db.get_database_backend();
        let batch = i64::from(self.config.batch_size);
        let txn = self.db.begin().await?;
        claim(&txn, "instances", now).await?;
        let old = format!(
            "SELECT id FROM instances WHERE status IN {FINISHED_INSTANCE} AND stopped_at < "
        );
        let mut events = Sql::new(backend);
        events
            .push("DELETE FROM instance_events WHERE id IN (SELECT e.id FROM instance_events e WHERE e.instance_id IN (")
            .push(&old)
            .bind(cutoff)
            .push(") LIMIT ")
            .bind(batch)
            .push(")");
        let events = txn.execute_raw(events.build()).await?.rows_affected();
        let mut instances = 0;
        if events < batch as u64 {
            let mut delete = Sql::new(backend);
            delete
                .push("DELETE FROM instances WHERE id IN (")
                .push(&old)
                .bind(cutoff)
                .push(" LIMIT ")
                .bind(batch)
                .push(")");
            instances = txn.execute_raw(delete.build()).await?.rows_affected();
        }
        finish(&txn, "instances", now, events + instances).await?;
        txn.commit().await?;
        Ok((events, instances))
    }
}

/// Takes the task's turn: the first write of the transaction.
async fn claim(txn: &DatabaseTransaction, task: &str, now: DateTime<Utc>) -> Result<(), DbErr> {
    let mut sql = Sql::new(txn.get_database_backend());
    sql.push("UPDATE maintenance SET last_started_at = ")
        .bind(now)
        .push(" WHERE task = ")
        .bind(task);
    let claimed = txn.execute_raw(sql.build()).await?.rows_affected();
    if claimed != 1 {
        // Without the row the purges of several replicas would not take
        // turns; the migration makes it.
        return Err(DbErr::Custom(format!(
            "the maintenance row of task {task:?} is missing"
        )));
    }
    Ok(())
}

async fn finish(
    txn: &DatabaseTransaction,
    task: &str,
    now: DateTime<Utc>,
    rows: u64,
) -> Result<(), DbErr> {
    let mut sql = Sql::new(txn.get_database_backend());
    sql.push("UPDATE maintenance SET last_finished_at = ")
        .bind(now)
        .push(", rows_purged = rows_purged + ")
        .bind(Value::BigInt(Some(rows as i64)))
        .push(" WHERE task = ")
        .bind(task);
    txn.execute_raw(sql.build()).await?;
    Ok(())
}

/// Adds the requests `ids` to their rollup slots, merging with what the
/// slots hold.
fn rollup_statement(backend: sea_orm::DbBackend, ids: &[Uuid]) -> sea_orm::Statement {
    let mut sql = Sql::new(backend);
    let epoch = sql.epoch("created_at");
    let ok = super::if_succeeded;
    let count = |status: &str| format!("SUM(CASE WHEN status = '{status}' THEN 1 ELSE 0 END)");
    let mut columns: Vec<String> = [
        "slot_start",
        "model_id",
        "auth_type",
        "principal_id",
        "total_count",
        "success_count",
        "failed_count",
        "cancelled_count",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut values = vec![
        format!("({epoch} / {SLOT_SECS}) * {SLOT_SECS}"),
        "model_id".to_owned(),
        "auth_type".to_owned(),
        "principal_id".to_owned(),
        "COUNT(*)".to_owned(),
        count("SUCCEEDED"),
        count("FAILED"),
        count("CANCELLED"),
    ];
    let mut updates: Vec<String> = [
        "total_count",
        "success_count",
        "failed_count",
        "cancelled_count",
    ]
    .iter()
    .map(|c| format!("{c} = request_rollups.{c} + excluded.{c}"))
    .collect();
    for name in ["job_ms", "total_ms", "queue_ms"] {
        let v = ok(name);
        values.extend([
            format!("COALESCE(SUM({v}), 0)"),
            format!("MIN({v})"),
            format!("MAX({v})"),
            format!("COUNT({v})"),
        ]);
        let [sum, min, max, n] = [
            format!("{name}_sum"),
            format!("{name}_min"),
            format!("{name}_max"),
            format!("{name}_count"),
        ];
        updates.push(format!("{sum} = request_rollups.{sum} + excluded.{sum}"));
        updates.push(format!(
            "{min} = {}",
            sql.least(
                &format!("request_rollups.{min}"),
                &format!("excluded.{min}")
            )
        ));
        updates.push(format!(
            "{max} = {}",
            sql.greatest(
                &format!("request_rollups.{max}"),
                &format!("excluded.{max}")
            )
        ));
        updates.push(format!("{n} = request_rollups.{n} + excluded.{n}"));
        columns.extend([sum, min, max, n]);
    }
    sql.push(&format!(
        "INSERT INTO request_rollups ({}) SELECT {} FROM work_requests WHERE id IN ",
        columns.join(", "),
        values.join(", ")
    ))
    .bind_list(ids)
    .push(&format!(
        " GROUP BY 1, 2, 3, 4 ON CONFLICT (slot_start, model_id, auth_type, principal_id) DO UPDATE SET {}",
        updates.join(", ")
    ));
    sql.build()
}
