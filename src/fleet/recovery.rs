//! After a restart (or a crash): nothing submitted is lost, and nothing
//! started by the earlier run is left running untracked.

use std::collections::HashSet;

use chrono::Utc;
use entity::{InstanceStatus, RequestStatus, instance, work_request};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};

use super::{Fleet, MAX_ATTEMPTS};

impl Fleet {
    /// Marks the earlier run's instances stopped and ends their processes,
    /// then re-queues its running requests (or fails those that already
    /// had their retry). Queued requests stay as they are.
    pub(super) async fn recover(&self) -> Result<(), DbErr> {
        let now = Utc::now();
        let stale = instance::Entity::update_many()
            .col_expr(
                instance::Column::Status,
                Expr::value(InstanceStatus::Stopped),
            )
            .col_expr(
                instance::Column::RequestId,
                Expr::value(Option::<uuid::Uuid>::None),
            )
            .col_expr(instance::Column::StoppedAt, Expr::value(now))
            .col_expr(
                instance::Column::StopReason,
                Expr::value("the server restarted"),
            )
            .filter(
                instance::Column::Status
                    .is_not_in([InstanceStatus::Stopped, InstanceStatus::Failed]),
            )
            .exec(&self.db)
            .await?;
        let ended = self.backend.end_untracked(&HashSet::new()).await;

        let running = work_request::Entity::find()
            .filter(work_request::Column::Status.eq(RequestStatus::Running))
            .all(&self.db)
            .await?;
        let mut requeued = 0;
        for request in &running {
            if request.attempts < MAX_ATTEMPTS {
                requeued += 1;
            }
            self.requeue_or_fail(
                request.id,
                None,
                request.attempts,
                "the server restarted during the job",
            )
            .await?;
        }
        tracing::info!(
            instances_closed = stale.rows_affected,
            processes_ended = ended,
            requests_requeued = requeued,
            requests_failed = running.len() - requeued,
            "recovered after restart"
        );
        Ok(())
    }
}
