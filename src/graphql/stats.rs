//! Admin stats: `stats` and `statsFilterOptions`.

use async_graphql::dataloader::DataLoader;
use async_graphql::{
    Context, ID, InputObject, InputValueError, InputValueResult, Object, Result, Scalar,
    ScalarType, SimpleObject, Value,
};
use chrono::NaiveDate;
use uuid::Uuid;

use super::account::AuthType;
use super::guard::RequirePermission;
use super::models::{Model, ModelLoader};
use crate::auth::Permission;
use crate::error::{ApiError, FieldErrors, absorb};
use crate::models::ModelRegistry;
use crate::stats::{self, Grouping, Period, StatsDimension, StatsService};

/// A calendar date without time, `YYYY-MM-DD`. Checked where it is used,
/// so that a bad one is reported as `BAD_USER_INPUT` naming its field.
#[derive(Debug, Clone)]
pub struct Date(pub String);

#[Scalar(
    name = "Date",
    specified_by_url = "https://www.rfc-editor.org/rfc/rfc3339#section-5.6"
)]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => Ok(Date(s)),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

impl From<NaiveDate> for Date {
    fn from(d: NaiveDate) -> Self {
        Date(d.format("%Y-%m-%d").to_string())
    }
}

/// The date range of a filter, checked.
pub fn period(
    from: Option<&Date>,
    to: Option<&Date>,
    time_zone: Option<&str>,
) -> Result<Period, ApiError> {
    Period::parse(
        from.map(|d| d.0.as_str()),
        to.map(|d| d.0.as_str()),
        time_zone,
    )
}

/// Which requests the figures cover. Every part is optional; an empty list
/// does not narrow.
#[derive(InputObject, Default)]
pub struct StatsFilter {
    /// Only users' requests, or only anonymous ones.
    auth_type: Option<AuthType>,
    /// Users' requests from these users. With `sessionIds` as well, the
    /// requests of either.
    user_ids: Option<Vec<ID>>,
    /// Anonymous requests from these anonymous sessions.
    session_ids: Option<Vec<ID>>,
    model_ids: Option<Vec<String>>,
    /// The first day, inclusive, in `timeZone`.
    from: Option<Date>,
    /// The last day, inclusive, in `timeZone`.
    to: Option<Date>,
    /// An IANA time zone name, such as `Europe/Paris`, for `from`, `to` and
    /// `DAY`. Default `UTC`.
    time_zone: Option<String>,
}

impl StatsFilter {
    fn check(self) -> Result<stats::StatsFilter, ApiError> {
        let mut errors = FieldErrors::new();
        let mut ids = |field: &str, ids: Option<Vec<ID>>| -> Vec<Uuid> {
            let ids = ids.unwrap_or_default();
            let parsed: Vec<Uuid> = ids
                .iter()
                .filter_map(|id| Uuid::parse_str(id).ok())
                .collect();
            if parsed.len() != ids.len() {
                errors.insert(
                    field.to_owned(),
                    vec!["must hold only valid ids".to_owned()],
                );
            }
            parsed
        };
        let user_ids = ids("userIds", self.user_ids);
        let session_ids = ids("sessionIds", self.session_ids);
        let period = absorb(
            &mut errors,
            period(
                self.from.as_ref(),
                self.to.as_ref(),
                self.time_zone.as_deref(),
            ),
        )?;
        let filter = stats::StatsFilter {
            auth_type: self.auth_type.map(Into::into),
            user_ids,
            session_ids,
            model_ids: self.model_ids.unwrap_or_default(),
            period: period.clone().unwrap_or_default(),
        };
        errors.extend(filter.list_errors());
        match period {
            Some(_) if errors.is_empty() => Ok(filter),
            _ => Err(ApiError::BadUserInput(errors)),
        }
    }
}

/// Sum, extremes and mean of one duration over a group's successes, in
/// milliseconds.
#[derive(SimpleObject)]
pub struct Durations {
    total_ms: i64,
    min_ms: i64,
    max_ms: i64,
    avg_ms: f64,
    /// How many successes the figures cover.
    count: i64,
}

impl From<stats::Durations> for Durations {
    fn from(d: stats::Durations) -> Self {
        Durations {
            total_ms: d.total_ms,
            min_ms: d.min_ms,
            max_ms: d.max_ms,
            avg_ms: d.avg_ms(),
            count: d.count,
        }
    }
}

/// The figures of one group. Keys that were not grouped by are null.
pub struct StatsRow(pub stats::StatsRow);

#[Object]
impl StatsRow {
    /// Grouped by `MODEL`: the model's id.
    async fn model_id(&self) -> Option<&str> {
        self.0.model_id.as_deref()
    }
    /// Grouped by `MODEL`: the model, unless it no longer exists.
    async fn model(&self, ctx: &Context<'_>) -> Result<Option<Model>> {
        let Some(id) = &self.0.model_id else {
            return Ok(None);
        };
        let loader = ctx.data_unchecked::<DataLoader<ModelLoader>>();
        let model = loader
            .load_one(id.clone())
            .await
            .map_err(|e| ApiError::internal("loading a model", e))?;
        Ok(model.map(Model))
    }
    /// Grouped by `AUTH_TYPE`.
    async fn auth_type(&self) -> Option<AuthType> {
        self.0.auth_type.map(Into::into)
    }
    /// Grouped by `PRINCIPAL`: the user id for users' requests, the session
    /// id for anonymous ones (`authType` tells which when grouped by it too).
    async fn principal_id(&self) -> Option<ID> {
        self.0.principal_id.map(|id| ID(id.to_string()))
    }
    /// Grouped by `DAY`: the day, in the filter's time zone.
    async fn day(&self) -> Option<Date> {
        self.0.day.map(Into::into)
    }
    async fn total_count(&self) -> i64 {
        self.0.total_count
    }
    async fn success_count(&self) -> i64 {
        self.0.success_count
    }
    async fn fail_count(&self) -> i64 {
        self.0.fail_count
    }
    async fn cancelled_count(&self) -> i64 {
        self.0.cancelled_count
    }
    /// Queued or running now.
    async fn active_count(&self) -> i64 {
        self.0.active_count
    }
    /// `jobFinishedAt - jobStartedAt` over successes; null without any.
    async fn job_time(&self) -> Option<Durations> {
        self.0.job_time.map(Into::into)
    }
    /// `completedAt - createdAt` over successes; null without any.
    async fn total_time(&self) -> Option<Durations> {
        self.0.total_time.map(Into::into)
    }
    /// `jobStartedAt - createdAt` over successes; null without any.
    async fn queue_time(&self) -> Option<Durations> {
        self.0.queue_time.map(Into::into)
    }
    /// Median job time of the group's live successes: purged requests
    /// (`rolledUpCount`) keep no single times, so they are not covered.
    /// Null on SQLite, which has no percentile function, and when no live
    /// success is left.
    async fn job_time_p50_ms(&self) -> Option<f64> {
        self.0.job_p50_ms
    }
    /// 95th percentile of job time of successes; null as `jobTimeP50Ms`.
    async fn job_time_p95_ms(&self) -> Option<f64> {
        self.0.job_p95_ms
    }
    /// How many of the group's requests are past the retention period and
    /// counted from the rollup (see `retention.requests_days`).
    async fn rolled_up_count(&self) -> i64 {
        self.0.rolled_up_count
    }
}

/// A user seen in requests.
#[derive(SimpleObject)]
pub struct UserOption {
    id: ID,
    /// Null when the account no longer exists.
    username: Option<String>,
    request_count: i64,
}

/// An anonymous session seen in requests.
#[derive(SimpleObject)]
pub struct AnonymousSessionOption {
    id: ID,
    request_count: i64,
}

/// What a stats filter can choose from.
#[derive(SimpleObject)]
pub struct StatsFilterOptions {
    /// Every model, disabled ones included.
    models: Vec<Model>,
    auth_types: Vec<AuthType>,
    /// Users with requests matching the filter, the most active first.
    users: Vec<UserOption>,
    /// False when there were more users than `limit`.
    users_complete: bool,
    /// Anonymous sessions with requests matching the filter, the most
    /// active first.
    anonymous_sessions: Vec<AnonymousSessionOption>,
    /// False when there were more sessions than `limit`.
    anonymous_sessions_complete: bool,
}

fn service<'a>(ctx: &Context<'a>) -> &'a StatsService {
    ctx.data_unchecked::<StatsService>()
}

/// `MODEL` when not given; each dimension once.
pub fn grouping(group_by: Option<Vec<StatsDimension>>) -> Grouping {
    group_by.map_or_else(stats::default_grouping, |dims| dims.into_iter().collect())
}

#[derive(Default)]
pub struct StatsQuery;

#[Object]
impl StatsQuery {
    /// Request counts and durations per group (per model by default), over
    /// live requests and the rollup of purged ones alike. An empty
    /// `groupBy` gives one row for everything. Groups with no request are
    /// left out; rows are sorted by their keys.
    #[graphql(guard = "RequirePermission(Permission::ViewStats)")]
    async fn stats(
        &self,
        ctx: &Context<'_>,
        filter: Option<StatsFilter>,
        group_by: Option<Vec<StatsDimension>>,
    ) -> Result<Vec<StatsRow>> {
        let filter = filter.unwrap_or_default().check()?;
        let rows = service(ctx).stats(&filter, &grouping(group_by)).await?;
        Ok(rows.into_iter().map(StatsRow).collect())
    }

    /// The choices for a stats filter. Users and anonymous sessions are
    /// those with requests matching `filter` (its own `userIds` and
    /// `sessionIds` aside), at most `limit` of each (default 500, at most
    /// 5000).
    #[graphql(guard = "RequirePermission(Permission::ViewStats)")]
    async fn stats_filter_options(
        &self,
        ctx: &Context<'_>,
        filter: Option<StatsFilter>,
        limit: Option<i32>,
    ) -> Result<StatsFilterOptions> {
        let limit = limit.unwrap_or(500);
        if !(1..=5000).contains(&limit) {
            return Err(ApiError::field("limit", "must be between 1 and 5000").into());
        }
        let filter = filter.unwrap_or_default().check()?;
        let options = service(ctx).filter_options(&filter, limit as u64).await?;
        let models = ctx
            .data_unchecked::<ModelRegistry>()
            .list(true)
            .await
            .map_err(ApiError::from)?;
        Ok(StatsFilterOptions {
            models: models.into_iter().map(Model).collect(),
            auth_types: vec![AuthType::User, AuthType::Anon],
            users: options
                .users
                .into_iter()
                .map(|u| UserOption {
                    id: ID(u.id.to_string()),
                    username: u.username,
                    request_count: u.request_count,
                })
                .collect(),
            users_complete: options.users_complete,
            anonymous_sessions: options
                .sessions
                .into_iter()
                .map(|s| AnonymousSessionOption {
                    id: ID(s.id.to_string()),
                    request_count: s.request_count,
                })
                .collect(),
            anonymous_sessions_complete: options.sessions_complete,
        })
    }
}
