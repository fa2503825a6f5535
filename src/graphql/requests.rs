//! Submitting requests and following one's own.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, Subscription};
use chrono::{DateTime, Utc};
use entity::work_request;
use futures_util::Stream;
use serde_json::Value;
use uuid::Uuid;

use super::guard::{RequireSession, session};
use super::models::{Model, ModelLoader};
use super::pagination;
use crate::auth::Session;
use crate::error::ApiError;
use crate::requests::{RequestFilter, RequestService, Submission};

/// Where a request is in its lifecycle.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<entity::RequestStatus> for RequestStatus {
    fn from(s: entity::RequestStatus) -> Self {
        match s {
            entity::RequestStatus::Queued => RequestStatus::Queued,
            entity::RequestStatus::Running => RequestStatus::Running,
            entity::RequestStatus::Succeeded => RequestStatus::Succeeded,
            entity::RequestStatus::Failed => RequestStatus::Failed,
            entity::RequestStatus::Cancelled => RequestStatus::Cancelled,
        }
    }
}

impl From<RequestStatus> for entity::RequestStatus {
    fn from(s: RequestStatus) -> Self {
        match s {
            RequestStatus::Queued => entity::RequestStatus::Queued,
            RequestStatus::Running => entity::RequestStatus::Running,
            RequestStatus::Succeeded => entity::RequestStatus::Succeeded,
            RequestStatus::Failed => entity::RequestStatus::Failed,
            RequestStatus::Cancelled => entity::RequestStatus::Cancelled,
        }
    }
}

/// One of the caller's requests, with its input and result.
pub struct WorkRequest(pub work_request::Model);

#[Object]
impl WorkRequest {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn model_id(&self) -> &str {
        &self.0.model_id
    }
    async fn model(&self, ctx: &Context<'_>) -> Result<Option<Model>> {
        let loader = ctx.data_unchecked::<DataLoader<ModelLoader>>();
        let model = loader
            .load_one(self.0.model_id.clone())
            .await
            .map_err(|e| ApiError::internal("loading a model", e))?;
        Ok(model.map(Model))
    }
    async fn status(&self) -> RequestStatus {
        self.0.status.into()
    }
    async fn client_request_id(&self) -> Option<&str> {
        self.0.client_request_id.as_deref()
    }
    async fn input(&self) -> Json<Value> {
        Json(self.0.input.clone())
    }
    /// The model's output, once it succeeded.
    async fn output(&self) -> Option<Json<Value>> {
        self.0.output.clone().map(Json)
    }
    /// Why it failed or was cancelled.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// What the model printed while running it.
    async fn logs(&self) -> Option<&str> {
        self.0.logs.as_deref()
    }
    /// How many times it was handed to an instance.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// When it was accepted.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When its input was handed to an instance.
    async fn job_started_at(&self) -> Option<DateTime<Utc>> {
        self.0.job_started_at
    }
    /// When the instance answered.
    async fn job_finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.job_finished_at
    }
    /// When it reached a final status.
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }
    /// `jobStartedAt - createdAt`, in milliseconds.
    async fn queue_time_ms(&self) -> Option<i64> {
        self.0.queue_ms
    }
    /// `jobFinishedAt - jobStartedAt`, in milliseconds.
    async fn job_time_ms(&self) -> Option<i64> {
        self.0.job_ms
    }
    /// `completedAt - createdAt`, in milliseconds.
    async fn total_time_ms(&self) -> Option<i64> {
        self.0.total_ms
    }
}

#[derive(InputObject)]
pub struct SubmitRequestInput {
    model_id: String,
    /// A JSON object: the model's named inputs (Cog's `input`).
    input: Json<Value>,
    /// Makes the call idempotent: the same id from the same caller returns
    /// the request it made first.
    client_request_id: Option<String>,
}

#[derive(InputObject, Default)]
pub struct MyRequestsFilter {
    model_id: Option<String>,
    status: Option<RequestStatus>,
}

fn service<'a>(ctx: &Context<'a>) -> &'a RequestService {
    ctx.data_unchecked::<RequestService>()
}

fn parse_id(id: &ID) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::field("id", "is not a valid id"))
}

#[derive(Default)]
pub struct RequestsQuery;

#[Object]
impl RequestsQuery {
    /// One of the caller's requests; `NOT_FOUND` for anyone else's.
    #[graphql(guard = "RequireSession")]
    async fn request(&self, ctx: &Context<'_>, id: ID) -> Result<WorkRequest> {
        let id = parse_id(&id)?;
        Ok(WorkRequest(service(ctx).get_own(session(ctx)?, id).await?))
    }

    /// The caller's requests, newest first.
    #[graphql(
        guard = "RequireSession",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn my_requests(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<MyRequestsFilter>,
    ) -> Result<Connection<String, WorkRequest, EmptyFields, EmptyFields>> {
        let limit = pagination::page_size(first)?;
        let cursor = after.as_deref().map(pagination::decode).transpose()?;
        let filter = filter.unwrap_or_default();
        let filter = RequestFilter {
            model_id: filter.model_id,
            status: filter.status.map(Into::into),
        };
        let mut rows = service(ctx)
            .list_own(session(ctx)?, &filter, cursor, limit as u64 + 1)
            .await?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|r| Edge::new(pagination::encode(r.created_at, r.id), WorkRequest(r))),
        );
        Ok(connection)
    }
}

#[derive(Default)]
pub struct RequestsMutation;

#[Object]
impl RequestsMutation {
    /// Queues a request to a model. Any session may submit.
    #[graphql(guard = "RequireSession")]
    async fn submit_request(
        &self,
        ctx: &Context<'_>,
        input: SubmitRequestInput,
    ) -> Result<WorkRequest> {
        let submission = Submission {
            model_id: input.model_id,
            input: input.input.0,
            client_request_id: input.client_request_id,
        };
        Ok(WorkRequest(
            service(ctx).submit(session(ctx)?, submission).await?,
        ))
    }

    /// Cancels one of the caller's requests: at once when queued, on its
    /// instance when running. A finished request is returned as it is.
    #[graphql(guard = "RequireSession")]
    async fn cancel_request(&self, ctx: &Context<'_>, id: ID) -> Result<WorkRequest> {
        let id = parse_id(&id)?;
        Ok(WorkRequest(service(ctx).cancel(session(ctx)?, id).await?))
    }
}

#[derive(Default)]
pub struct RequestsSubscription;

#[Subscription]
impl RequestsSubscription {
    /// The caller's request now and after every status change, until it
    /// ends.
    #[graphql(guard = "RequireSession")]
    async fn request_updates(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl Stream<Item = WorkRequest>> {
        let id = parse_id(&id)?;
        let service = service(ctx).clone();
        let session: Arc<Session> = session(ctx)?.clone();
        // Listen before reading, so that no change falls in between.
        let changes = service.fleet().changes();
        let first = service.get_own(&session, id).await?;
        let state = Feed {
            id,
            service,
            session,
            changes,
            next: Some(first),
            last: None,
        };
        Ok(futures_util::stream::unfold(state, Feed::step))
    }
}

struct Feed {
    id: Uuid,
    service: RequestService,
    session: Arc<Session>,
    changes: tokio::sync::broadcast::Receiver<crate::fleet::RequestChange>,
    next: Option<work_request::Model>,
    last: Option<entity::RequestStatus>,
}

fn is_final(status: entity::RequestStatus) -> bool {
    !matches!(
        status,
        entity::RequestStatus::Queued | entity::RequestStatus::Running
    )
}

impl Feed {
    async fn step(mut self) -> Option<(WorkRequest, Self)> {
        if self.last.is_some_and(is_final) {
            return None;
        }
        if let Some(request) = self.next.take() {
            self.last = Some(request.status);
            return Some((WorkRequest(request), self));
        }
        loop {
            match self.changes.recv().await {
                Ok(change) if change.id == self.id => {}
                Ok(_) => continue,
                // Missed some: read the request again.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
            let request = self.service.get_own(&self.session, self.id).await.ok()?;
            if Some(request.status) != self.last {
                self.last = Some(request.status);
                return Some((WorkRequest(request), self));
            }
        }
    }
}
