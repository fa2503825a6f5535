//! After a restart (or a crash, or another server's scaler stepping down):
//! nothing submitted is lost, and nothing started by the earlier scaler is
//! left running untracked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use entity::{InstanceStatus, RequestStatus, instance, work_request};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter};

use uuid::Uuid;

use super::{Fleet, MAX_ATTEMPTS};
use crate::models::ModelSpec;

impl Fleet {
    /// Takes over from the earlier scaler. On a backend whose instances
    /// outlive the server, its active instances are adopted (see
    /// [`Fleet::adopt_instance`]); the rest of its instances are marked
    /// stopped and whatever the backend runs that is not adopted is ended.
    /// Its running requests are re-queued (or failed, if they already had
    /// their retry). Queued requests stay as they are.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<(), DbErr> {
        let mut adopting = Vec::new();
        if self.backend.hands_over() {
            let models: HashMap<String, ModelSpec> = self
                .models
                .list(true)
                .await?
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect();
            let active = instance::Entity::find()
                .filter(instance::Column::Status.is_in([
                    InstanceStatus::Pending,
                    InstanceStatus::Starting,
                    InstanceStatus::Ready,
                    InstanceStatus::Busy,
                ]))
                .filter(instance::Column::Backend.eq(self.backend.name()))
                .all(&self.db)
                .await?;
            for row in active {
                // A model since disabled or removed is not taken over.
                if let Some(model) = models.get(&row.model_id) {
                    adopting.push((model.clone(), row));
                }
            }
        }
        let adopted: HashSet<Uuid> = adopting.iter().map(|(_, row)| row.id).collect();

        let now = Utc::now();
        let stale = instance::Entity::update_many()
            .col_expr(
                instance::Column::Status,
                Expr::value(InstanceStatus::Stopped),
            )
            .col_expr(
                instance::Column::RequestId,
                Expr::value(Option::<Uuid>::None),
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
            .filter(instance::Column::Id.is_not_in(adopted.iter().copied()))
            .exec(&self.db)
            .await?;
        let ended = self.backend.end_untracked(&adopted).await;

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
                "its scaler stopped during the job (a restart or a take-over)",
            )
            .await?;
        }
        tracing::info!(
            instances_closed = stale.rows_affected,
            instances_adopted = adopted.len(),
            untracked_ended = ended,
            requests_requeued = requeued,
            requests_failed = running.len() - requeued,
            "recovered after restart"
        );
        for (model, row) in adopting {
            self.adopt_instance(&model, row);
        }
        Ok(())
    }
}
