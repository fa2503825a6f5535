//! Work requests: submitting, cancelling and reading one's own, and for
//! administrators a summary of everyone's.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{AuthType, RequestStatus, work_request};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, DerivePartialModel, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr,
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

/// Narrows the admin listing of every request. Every part that is set
/// narrows, except that `user_id` and `session_id` together select the
/// requests of either.
#[derive(Debug, Clone, Default)]
pub struct AllRequestsFilter {
    /// `USER` requests of this user.
    pub user_id: Option<Uuid>,
    /// `ANON` requests of this anonymous session.
    pub session_id: Option<Uuid>,
    pub model_id: Option<String>,
    pub status: Option<RequestStatus>,
    pub auth_type: Option<AuthType>,
    /// Created at or after this instant.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub created_before: Option<DateTime<Utc>>,
}

/// A request without its input, output, error or logs: only the columns the
/// admin listing shows are read, since input and output can be large.
#[derive(Debug, Clone, PartialEq, DerivePartialModel)]
#[sea_orm(entity = "work_request::Entity")]
pub struct RequestSummaryRow {
    pub id: Uuid,
    pub model_id: String,
    pub auth_type: AuthType,
    pub principal_id: Uuid,
    pub session_id: Uuid,
    pub status: RequestStatus,
    pub attempts: i32,
    pub instance_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub job_started_at: Option<DateTime<Utc>>,
    pub job_finished_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub queue_ms: Option<i64>,
    pub job_ms: Option<i64>,
    pub total_ms: Option<i64>,
}

/// Rows after the `(created_at, id)` cursor, in the newest-first order.
fn older_than((at, id): (DateTime<Utc>, Uuid)) -> Condition {
    Condition::any()
        .add(work_request::Column::CreatedAt.lt(at))
        .add(
            Condition::all()
                .add(work_request::Column::CreatedAt.eq(at))
                .add(work_request::Column::Id.lt(id)),
        )
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
        if let Some(cursor) = after {
            query = query.filter(older_than(cursor));
        }
        Ok(query.all(&self.db).await?)
    }

    /// Everyone's requests, newest first, after the `(created_at, id)`
    /// cursor; `limit` rows at most. For administrators: callers check the
    /// permission.
    pub async fn list_all(
        &self,
        filter: &AllRequestsFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u64,
    ) -> Result<Vec<RequestSummaryRow>, ApiError> {
        use work_request::Column as C;
        let principal = |auth: AuthType, id: Uuid| {
            Condition::all()
                .add(C::AuthType.eq(auth))
                .add(C::PrincipalId.eq(id))
        };
        let mut owners = Condition::any();
        if let Some(user) = filter.user_id {
            owners = owners.add(principal(AuthType::User, user));
        }
        if let Some(session) = filter.session_id {
            owners = owners.add(principal(AuthType::Anon, session));
        }
        let mut query = work_request::Entity::find()
            .order_by_desc(C::CreatedAt)
            .order_by_desc(C::Id)
            .limit(limit);
        // An empty `any` is false in SQL; no principal asked means all.
        if !owners.is_empty() {
            query = query.filter(owners);
        }
        if let Some(model) = &filter.model_id {
            query = query.filter(C::ModelId.eq(model.as_str()));
        }
        if let Some(status) = filter.status {
            query = query.filter(C::Status.eq(status));
        }
        if let Some(auth) = filter.auth_type {
            query = query.filter(C::AuthType.eq(auth));
        }
        if let Some(from) = filter.created_from {
            query = query.filter(C::CreatedAt.gte(from));
        }
        if let Some(before) = filter.created_before {
            query = query.filter(C::CreatedAt.lt(before));
        }
        if let Some(cursor) = after {
            query = query.filter(older_than(cursor));
        }
        Ok(query
            .into_partial_model::<RequestSummaryRow>()
            .all(&self.db)
            .await?)
    }
}
