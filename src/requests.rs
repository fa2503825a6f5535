//! Work requests: submitting, cancelling and reading one's own.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{RequestStatus, work_request};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr,
};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Session;
use crate::error::{ApiError, FieldErrors};
use crate::fleet::Fleet;
use crate::models::ModelRegistry;

/// The longest client request id accepted.
pub const MAX_CLIENT_REQUEST_ID: usize = 200;

/// What a caller submits.
pub struct Submission {
    pub model_id: String,
    pub input: Value,
    pub client_request_id: Option<String>,
}

/// Narrows `myRequests`.
#[derive(Default)]
pub struct RequestFilter {
    pub model_id: Option<String>,
    pub status: Option<RequestStatus>,
}

#[derive(Clone)]
pub struct RequestService {
    db: DatabaseConnection,
    models: ModelRegistry,
    fleet: Arc<Fleet>,
}

impl RequestService {
    pub fn new(db: DatabaseConnection, models: ModelRegistry, fleet: Arc<Fleet>) -> Self {
        Self { db, models, fleet }
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// Queues a request. With a client request id already used by the same
    /// principal, returns that request instead (the call is idempotent).
    pub async fn submit(
        &self,
        session: &Session,
        submission: Submission,
    ) -> Result<work_request::Model, ApiError> {
        let mut errors = FieldErrors::new();
        let mut fail = |field: &str, message: String| {
            errors.entry(field.to_owned()).or_default().push(message)
        };
        let model = self.models.get(&submission.model_id).await?;
        match &model {
            None => fail(
                "modelId",
                format!("no model named `{}`", submission.model_id),
            ),
            Some(m) if !m.enabled => fail("modelId", format!("model `{}` is disabled", m.id)),
            Some(_) => {}
        }
        if !submission.input.is_object() {
            fail("input", "must be a JSON object".to_owned());
        } else if submission.input.to_string().contains("\\u0000") {
            // PostgreSQL cannot store it; SQLite could. Refuse it on both.
            fail(
                "input",
                "must not contain NUL characters (\\u0000)".to_owned(),
            );
        }
        if let Some(m) = &model {
            let size = serde_json::to_vec(&submission.input).map_or(usize::MAX, |v| v.len());
            if size as u64 > m.max_input_bytes.max(0) as u64 {
                fail(
                    "input",
                    format!(
                        "is {size} bytes; model `{}` takes at most {}",
                        m.id, m.max_input_bytes
                    ),
                );
            }
        }
        if let Some(id) = &submission.client_request_id
            && (id.is_empty() || id.chars().count() > MAX_CLIENT_REQUEST_ID)
        {
            fail(
                "clientRequestId",
                format!("must be 1 to {MAX_CLIENT_REQUEST_ID} characters long"),
            );
        }
        if !errors.is_empty() {
            return Err(ApiError::BadUserInput(errors));
        }
        let principal = session.principal_id();
        if let Some(existing) = self
            .by_client_id(principal, submission.client_request_id.as_deref())
            .await?
        {
            return Ok(existing);
        }
        let row = work_request::ActiveModel {
            id: Set(Uuid::now_v7()),
            model_id: Set(submission.model_id.clone()),
            auth_type: Set(session.auth_type),
            principal_id: Set(principal),
            session_id: Set(session.id),
            client_request_id: Set(submission.client_request_id.clone()),
            status: Set(RequestStatus::Queued),
            input: Set(submission.input),
            output: Set(None),
            error: Set(None),
            logs: Set(None),
            attempts: Set(0),
            instance_id: Set(None),
            created_at: Set(Utc::now()),
            job_started_at: Set(None),
            job_finished_at: Set(None),
            completed_at: Set(None),
            queue_ms: Set(None),
            job_ms: Set(None),
            total_ms: Set(None),
        };
        let inserted = work_request::Entity::insert(row)
            .exec_with_returning(&self.db)
            .await;
        let request = match inserted {
            Ok(r) => r,
            // The same client id, submitted twice at once.
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return self
                    .by_client_id(principal, submission.client_request_id.as_deref())
                    .await?
                    .ok_or(ApiError::Internal);
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(request_id = %request.id, model_id = %request.model_id, auth_type = ?request.auth_type, "request queued");
        self.fleet.announce(request.id, RequestStatus::Queued);
        self.fleet.wake();
        Ok(request)
    }

    async fn by_client_id(
        &self,
        principal: Uuid,
        id: Option<&str>,
    ) -> Result<Option<work_request::Model>, ApiError> {
        let Some(id) = id else { return Ok(None) };
        Ok(work_request::Entity::find()
            .filter(work_request::Column::PrincipalId.eq(principal))
            .filter(work_request::Column::ClientRequestId.eq(id))
            .one(&self.db)
            .await?)
    }

    /// The caller's request, or `NOT_FOUND` (also for others' requests, so
    /// that their ids reveal nothing).
    pub async fn get_own(
        &self,
        session: &Session,
        id: Uuid,
    ) -> Result<work_request::Model, ApiError> {
        work_request::Entity::find_by_id(id)
            .filter(work_request::Column::PrincipalId.eq(session.principal_id()))
            .one(&self.db)
            .await?
            .ok_or(ApiError::NotFound("request"))
    }

    /// Cancels the caller's request: a queued one at once, a running one on
    /// its instance. Finished requests are returned unchanged.
    pub async fn cancel(
        &self,
        session: &Session,
        id: Uuid,
    ) -> Result<work_request::Model, ApiError> {
        let request = self.get_own(session, id).await?;
        match request.status {
            RequestStatus::Queued => {
                let now = Utc::now();
                let total_ms = (now - request.created_at).num_milliseconds().max(0);
                let done = work_request::Entity::update_many()
                    .col_expr(
                        work_request::Column::Status,
                        Expr::value(RequestStatus::Cancelled),
                    )
                    .col_expr(work_request::Column::Error, Expr::value("cancelled"))
                    .col_expr(work_request::Column::CompletedAt, Expr::value(now))
                    .col_expr(work_request::Column::TotalMs, Expr::value(total_ms))
                    .filter(work_request::Column::Id.eq(id))
                    .filter(work_request::Column::Status.eq(RequestStatus::Queued))
                    .exec(&self.db)
                    .await?;
                if done.rows_affected > 0 {
                    tracing::info!(request_id = %id, "request cancelled while queued");
                    self.fleet.announce(id, RequestStatus::Cancelled);
                    self.fleet
                        .count_final(&request.model_id, RequestStatus::Cancelled);
                    return self.get_own(session, id).await;
                }
            }
            RequestStatus::Running => {}
            _ => return Ok(request),
        }
        // Running (or dispatched meanwhile): cancel it where it runs, and
        // wait briefly for the job to record its end, so that the answer
        // says what happened. Listen before asking, or the end may be missed.
        let mut changes = self.fleet.changes();
        self.fleet.cancel_running(id);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match changes.recv().await {
                    Ok(c) if c.id == id && c.status != RequestStatus::Running => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    _ => {}
                }
            }
        })
        .await;
        self.get_own(session, id).await
    }

    /// The caller's requests, newest first, after the `(created_at, id)`
    /// cursor; `limit` rows at most.
    pub async fn list_own(
        &self,
        session: &Session,
        filter: &RequestFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u64,
    ) -> Result<Vec<work_request::Model>, ApiError> {
        let mut query = work_request::Entity::find()
            .filter(work_request::Column::PrincipalId.eq(session.principal_id()))
            .order_by_desc(work_request::Column::CreatedAt)
            .order_by_desc(work_request::Column::Id)
            .limit(limit);
        if let Some(model) = &filter.model_id {
            query = query.filter(work_request::Column::ModelId.eq(model.as_str()));
        }
        if let Some(status) = filter.status {
            query = query.filter(work_request::Column::Status.eq(status));
        }
        if let Some((at, id)) = after {
            query = query.filter(
                Condition::any()
                    .add(work_request::Column::CreatedAt.lt(at))
                    .add(
                        Condition::all()
                            .add(work_request::Column::CreatedAt.eq(at))
                            .add(work_request::Column::Id.lt(id)),
                    ),
            );
        }
        Ok(query.all(&self.db).await?)
    }
}
