//! Every principal's requests, for administrators: `requests(filter, first,
//! after)`.
//!
//! Its node type, [`RequestSummary`], has no input, output, error or logs
//! fields at all, so no query can reach a request's private data through
//! it, and the database is not even asked for those columns.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};
use entity::AuthType as EntityAuthType;
use uuid::Uuid;

use super::account::AuthType;
use super::guard::RequirePermission;
use super::models::{Model, ModelLoader};
use super::pagination;
use super::requests::RequestStatus;
use super::stats::{Date, period};
use crate::auth::Permission;
use crate::error::{ApiError, FieldErrors, absorb};
use crate::requests::{AllRequestsFilter, RequestService, RequestSummaryRow};

pub struct RequestSummary(pub RequestSummaryRow);

/// A request as administrators see it: who, which model, status and every
/// timestamp. It has no input, output, error or logs.
#[Object]
impl RequestSummary {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn model_id(&self) -> &str {
        &self.0.model_id
    }
    /// The model, unless it no longer exists.
    async fn model(&self, ctx: &Context<'_>) -> Result<Option<Model>> {
        let model = ctx
            .data_unchecked::<DataLoader<ModelLoader>>()
            .load_one(self.0.model_id.clone())
            .await
            .map_err(|e| ApiError::internal("loading a model", e))?;
        Ok(model.map(Model))
    }
    /// Whether a signed-in user or an anonymous session submitted it.
    async fn auth_type(&self) -> AuthType {
        self.0.auth_type.into()
    }
    /// The user who submitted it; null for anonymous requests.
    async fn user_id(&self) -> Option<ID> {
        (self.0.auth_type == EntityAuthType::User).then(|| ID(self.0.principal_id.to_string()))
    }
    /// The session it was submitted with. For anonymous requests, the
    /// anonymous session that owns it; for users' requests, the login
    /// session the user submitted it from (one of possibly many for that
    /// user; the `sessionId` filter selects anonymous sessions only).
    async fn session_id(&self) -> ID {
        ID(self.0.session_id.to_string())
    }
    async fn status(&self) -> RequestStatus {
        self.0.status.into()
    }
    /// `status` is `SUCCEEDED`.
    async fn succeeded(&self) -> bool {
        self.0.status == entity::RequestStatus::Succeeded
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
    /// The instance that ran it last, if one did.
    async fn instance_id(&self) -> Option<ID> {
        self.0.instance_id.map(|id| ID(id.to_string()))
    }
}

/// Which requests `requests` lists. Every part is optional and narrows the
/// list, except `userId` and `sessionId`, which together select the
/// requests of either (as in `StatsFilter`).
#[derive(InputObject, Default)]
pub struct RequestsFilter {
    /// Requests of this user (signed in).
    user_id: Option<ID>,
    /// Requests of this anonymous session.
    session_id: Option<ID>,
    model_id: Option<String>,
    status: Option<RequestStatus>,
    /// Only users' requests, or only anonymous ones.
    auth_type: Option<AuthType>,
    /// The first day of `createdAt`, inclusive, in `timeZone`.
    from: Option<Date>,
    /// The last day of `createdAt`, inclusive, in `timeZone`.
    to: Option<Date>,
    /// An IANA time zone name, such as `Europe/Paris`, for `from` and `to`.
    /// Default `UTC`.
    time_zone: Option<String>,
}

impl RequestsFilter {
    /// Checks every field, reporting all bad ones at once.
    fn check(self) -> Result<AllRequestsFilter, ApiError> {
        let mut errors = FieldErrors::new();
        let mut id = |field: &str, id: Option<ID>| -> Option<Uuid> {
            let id = id?;
            let parsed = Uuid::parse_str(&id).ok();
            if parsed.is_none() {
                errors.insert(field.to_owned(), vec!["is not a valid id".to_owned()]);
            }
            parsed
        };
        let user_id = id("userId", self.user_id);
        let session_id = id("sessionId", self.session_id);
        let period = absorb(
            &mut errors,
            period(
                self.from.as_ref(),
                self.to.as_ref(),
                self.time_zone.as_deref(),
            ),
        )?;
        match period {
            Some(period) if errors.is_empty() => Ok(AllRequestsFilter {
                user_id,
                session_id,
                model_id: self.model_id,
                status: self.status.map(Into::into),
                auth_type: self.auth_type.map(Into::into),
                created_from: period.start(),
                created_before: period.end(),
            }),
            _ => Err(ApiError::BadUserInput(errors)),
        }
    }
}

#[derive(Default)]
pub struct AllRequestsQuery;

#[Object]
impl AllRequestsQuery {
    /// Every principal's requests, newest first, without their input,
    /// output, error or logs. Cursors stay valid while new requests arrive.
    #[graphql(
        guard = "RequirePermission(Permission::ViewAllRequests)",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn requests(
        &self,
        ctx: &Context<'_>,
        filter: Option<RequestsFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, RequestSummary, EmptyFields, EmptyFields>> {
        let mut errors = FieldErrors::new();
        let limit = absorb(&mut errors, pagination::page_size(first))?;
        let cursor = absorb(
            &mut errors,
            after.as_deref().map(pagination::decode).transpose(),
        )?;
        let filter = absorb(&mut errors, filter.unwrap_or_default().check())?;
        let (Some(limit), Some(cursor), Some(filter)) = (limit, cursor, filter) else {
            return Err(ApiError::BadUserInput(errors).into());
        };
        let mut rows = ctx
            .data_unchecked::<RequestService>()
            .list_all(&filter, cursor, limit as u64 + 1)
            .await?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|r| Edge::new(pagination::encode(r.created_at, r.id), RequestSummary(r))),
        );
        Ok(connection)
    }
}
