//! Usage and performance figures, computed by the database.
//!
//! Every figure comes from one aggregate statement: the live requests that
//! match the filter, grouped, `UNION ALL` the rollup rows of purged requests
//! that match it, grouped the same way, summed once more. A request is
//! either live or rolled up, never both (the purge moves it in one
//! transaction), so a date range gives the same figures before and after a
//! purge. Percentiles cannot be merged, so they cover a group's live
//! requests only, and SQLite has no percentile function: only PostgreSQL
//! reports them.

pub mod period;
pub mod retention;
mod sql;

use std::collections::BTreeSet;

use async_graphql::Enum;
use chrono::NaiveDate;
use entity::{AuthType, user};
use futures_util::{Stream, StreamExt};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryResult, Statement, StreamTrait,
};
use uuid::Uuid;

pub use period::Period;
use sql::Sql;

use crate::error::ApiError;

/// What the figures can be grouped by.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatsDimension {
    /// The model asked.
    Model,
    /// Signed-in users or anonymous sessions.
    AuthType,
    /// The user (for users) or the anonymous session (for anonymous ones).
    Principal,
    /// The day the request was created, in the filter's time zone.
    Day,
}

impl StatsDimension {
    pub const ALL: [StatsDimension; 4] = [
        StatsDimension::Model,
        StatsDimension::AuthType,
        StatsDimension::Principal,
        StatsDimension::Day,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "MODEL" => Some(StatsDimension::Model),
            "AUTH_TYPE" => Some(StatsDimension::AuthType),
            "PRINCIPAL" => Some(StatsDimension::Principal),
            "DAY" => Some(StatsDimension::Day),
            _ => None,
        }
    }
}

/// The dimensions of one query, each once, in a fixed order.
pub type Grouping = BTreeSet<StatsDimension>;

/// What a query groups by when it does not say: `MODEL`.
pub fn default_grouping() -> Grouping {
    Grouping::from([StatsDimension::Model])
}

/// The most ids a filter may list in one field.
pub const MAX_LISTED: usize = 1000;

/// Finished request statuses, as SQL.
pub(crate) const FINISHED: &str = "('SUCCEEDED', 'FAILED', 'CANCELLED')";

/// `column` for successful requests, null for the rest, as SQL.
pub(crate) fn if_succeeded(column: &str) -> String {
    format!("CASE WHEN status = 'SUCCEEDED' THEN {column} END")
}

/// Which requests count. Empty lists do not narrow.
#[derive(Debug, Clone, Default)]
pub struct StatsFilter {
    pub auth_type: Option<AuthType>,
    /// Users' requests from these users.
    pub user_ids: Vec<Uuid>,
    /// Anonymous requests from these sessions.
    pub session_ids: Vec<Uuid>,
    pub model_ids: Vec<String>,
    pub period: Period,
}

impl StatsFilter {
    /// Lists longer than [`MAX_LISTED`], by field name.
    pub fn list_errors(&self) -> crate::error::FieldErrors {
        let mut errors = crate::error::FieldErrors::new();
        for (field, len) in [
            ("userIds", self.user_ids.len()),
            ("sessionIds", self.session_ids.len()),
            ("modelIds", self.model_ids.len()),
        ] {
            if len > MAX_LISTED {
                errors.insert(
                    field.to_owned(),
                    vec![format!("must list at most {MAX_LISTED} ids, not {len}")],
                );
            }
        }
        errors
    }
}

/// Sum, extremes and count of one duration over a group's successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durations {
    pub total_ms: i64,
    pub min_ms: i64,
    pub max_ms: i64,
    pub count: i64,
}

impl Durations {
    pub fn avg_ms(&self) -> f64 {
        self.total_ms as f64 / self.count as f64
    }
}

/// One group's figures. Keys not grouped by are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub model_id: Option<String>,
    pub auth_type: Option<AuthType>,
    pub principal_id: Option<Uuid>,
    pub day: Option<NaiveDate>,
    pub total_count: i64,
    pub success_count: i64,
    pub fail_count: i64,
    pub cancelled_count: i64,
    pub active_count: i64,
    pub job_time: Option<Durations>,
    pub total_time: Option<Durations>,
    pub queue_time: Option<Durations>,
    /// Over the group's live successes (not the rolled-up ones).
    pub job_p50_ms: Option<f64>,
    pub job_p95_ms: Option<f64>,
    /// How many of the group's requests were purged and are counted from
    /// the rollup.
    pub rolled_up_count: i64,
}

/// A user seen in requests.
#[derive(Debug, Clone, PartialEq)]
pub struct UserOption {
    pub id: Uuid,
    /// `None` when the account no longer exists.
    pub username: Option<String>,
    pub request_count: i64,
}

/// An anonymous session seen in requests.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOption {
    pub id: Uuid,
    pub request_count: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterOptions {
    pub users: Vec<UserOption>,
    pub users_complete: bool,
    pub sessions: Vec<SessionOption>,
    pub sessions_complete: bool,
}

const SUCCEEDED: &str = "'SUCCEEDED'";

#[derive(Clone)]
pub struct StatsService {
    db: DatabaseConnection,
}

impl StatsService {
    pub fn new(db: DatabaseConnection) -> Self {
        StatsService { db }
    }

    /// The one statement behind [`StatsService::stats`], for benchmarks
    /// that run it bare.
    pub fn statement(&self, filter: &StatsFilter, grouping: &Grouping) -> Statement {
        stats_statement(self.db.get_database_backend(), filter, grouping)
    }

    pub async fn stats(
        &self,
        filter: &StatsFilter,
        grouping: &Grouping,
    ) -> Result<Vec<StatsRow>, ApiError> {
        let rows = self
            .db
            .query_all_raw(self.statement(filter, grouping))
            .await?;
        rows.iter()
            .map(|r| decode(r, grouping))
            .collect::<Result<_, _>>()
    }

    /// The same rows as [`StatsService::stats`], read from the database as
    /// they are sent on. The stream owns what it needs.
    pub fn stream(
        &self,
        filter: &StatsFilter,
        grouping: &Grouping,
    ) -> impl Stream<Item = Result<StatsRow, ApiError>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let db = self.db.clone();
        let statement = self.statement(filter, grouping);
        let grouping = grouping.clone();
        tokio::spawn(async move {
            let rows = match db.stream_raw(statement).await {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.send(Err(ApiError::from(e))).await;
                    return;
                }
            };
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let row = row
                    .map_err(ApiError::from)
                    .and_then(|r| decode(&r, &grouping));
                // The client went away: stop reading.
                if tx.send(row).await.is_err() {
                    return;
                }
            }
        });
        // Fused: a caller may poll again after the end.
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|row| (row, rx)) },
        )
        .fuse()
    }

    /// The users and anonymous sessions that appear in requests matching
    /// `filter` (whose own user and session lists are ignored), the most
    /// active first, at most `limit` of each.
    pub async fn filter_options(
        &self,
        filter: &StatsFilter,
        limit: u64,
    ) -> Result<FilterOptions, ApiError> {
        let backend = self.db.get_database_backend();
        let filter = StatsFilter {
            user_ids: Vec::new(),
            session_ids: Vec::new(),
            ..filter.clone()
        };
        let seen = |kind: AuthType| {
            let wanted = filter.auth_type.is_none_or(|a| a == kind);
            let statement = principals_statement(backend, &filter, kind, limit + 1);
            async move {
                if !wanted {
                    return Ok::<_, ApiError>(Vec::new());
                }
                let rows = self.db.query_all_raw(statement).await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<Uuid>("", "principal_id")?,
                            r.try_get::<i64>("", "n")?,
                        ))
                    })
                    .collect()
            }
        };
        let mut users = seen(AuthType::User).await?;
        let mut sessions = seen(AuthType::Anon).await?;
        let users_complete = users.len() as u64 <= limit;
        let sessions_complete = sessions.len() as u64 <= limit;
        users.truncate(limit as usize);
        sessions.truncate(limit as usize);
        let names: std::collections::HashMap<Uuid, String> = user::Entity::find()
            .filter(user::Column::Id.is_in(users.iter().map(|(id, _)| *id)))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|u| (u.id, u.username))
            .collect();
        Ok(FilterOptions {
            users: users
                .into_iter()
                .map(|(id, request_count)| UserOption {
                    id,
                    username: names.get(&id).cloned(),
                    request_count,
                })
                .collect(),
            users_complete,
            sessions: sessions
                .into_iter()
                .map(|(id, request_count)| SessionOption { id, request_count })
                .collect(),
            sessions_complete,
        })
    }
}

/// Where the rows come from: live requests or the rollup of purged ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Live,
    Rollup,
}

impl Source {
    fn table(self) -> &'static str {
        match self {
            Source::Live => "work_requests",
            Source::Rollup => "request_rollups",
        }
    }
}

/// ` WHERE …` for the filter, on either source.
fn push_where(sql: &mut Sql, filter: &StatsFilter, source: Source) {
    sql.push(" WHERE 1 = 1");
    let period = &filter.period;
    match source {
        Source::Live => {
            if let Some(start) = period.start() {
                sql.push(" AND created_at >= ").bind(start);
            }
            if let Some(end) = period.end() {
                sql.push(" AND created_at < ").bind(end);
            }
        }
        // Slots are quarter hours, and every day in use today starts on
        // one, so a local day is a whole number of slots.
        Source::Rollup => {
            if let Some(start) = period.start() {
                sql.push(" AND slot_start >= ").bind(start.timestamp());
            }
            if let Some(end) = period.end() {
                sql.push(" AND slot_start < ").bind(end.timestamp());
            }
        }
    }
    if !filter.model_ids.is_empty() {
        sql.push(" AND model_id IN ").bind_list(&filter.model_ids);
    }
    if let Some(auth_type) = filter.auth_type {
        sql.push(" AND auth_type = ").bind(auth_type.to_value());
    }
    let lists = [
        (AuthType::User, &filter.user_ids),
        (AuthType::Anon, &filter.session_ids),
    ];
    let lists: Vec<_> = lists
        .into_iter()
        .filter(|(_, ids)| !ids.is_empty())
        .collect();
    if !lists.is_empty() {
        sql.push(" AND (");
        for (i, (kind, ids)) in lists.into_iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(auth_type = ")
                .bind(kind.to_value())
                .push(" AND principal_id IN ")
                .bind_list(ids)
                .push(")");
        }
        sql.push(")");
    }
}

/// The key expressions of one source, each aliased `k_…`.
fn keys(sql: &Sql, offsets: &period::Offsets, grouping: &Grouping, source: Source) -> Vec<String> {
    grouping
        .iter()
        .map(|d| match d {
            StatsDimension::Model => "model_id AS k_model".to_owned(),
            StatsDimension::AuthType => "auth_type AS k_auth".to_owned(),
            StatsDimension::Principal => "principal_id AS k_principal".to_owned(),
            StatsDimension::Day => {
                let epoch = match source {
                    Source::Live => sql.epoch("created_at"),
                    Source::Rollup => "slot_start".to_owned(),
                };
                let offset = offsets.sql(&epoch);
                format!("({epoch} + {offset}) / 86400 AS k_day")
            }
        })
        .collect()
}

fn positions(n: usize) -> String {
    (1..=n)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figures of one duration column over successes, in a live branch.
fn live_durations(name: &str, column: &str) -> String {
    let ok = if_succeeded(column);
    format!(
        "SUM({ok}) AS {name}_sum, MIN({ok}) AS {name}_min, MAX({ok}) AS {name}_max, \
         COUNT({ok}) AS {name}_n"
    )
}

fn rollup_durations(name: &str) -> String {
    format!(
        "SUM({name}_ms_sum) AS {name}_sum, MIN({name}_ms_min) AS {name}_min, \
         MAX({name}_ms_max) AS {name}_max, SUM({name}_ms_count) AS {name}_n"
    )
}

fn outer_durations(name: &str) -> String {
    format!(
        "CAST(SUM({name}_sum) AS BIGINT) AS {name}_sum, MIN({name}_min) AS {name}_min, \
         MAX({name}_max) AS {name}_max, CAST(SUM({name}_n) AS BIGINT) AS {name}_n"
    )
}

const DURATIONS: [(&str, &str); 3] = [
    ("job", "job_ms"),
    ("total", "total_ms"),
    ("queue", "queue_ms"),
];

fn stats_statement(
    backend: sea_orm::DbBackend,
    filter: &StatsFilter,
    grouping: &Grouping,
) -> Statement {
    let mut sql = Sql::new(backend);
    let n = grouping.len();
    let group_by = if n == 0 {
        String::new()
    } else {
        format!(" GROUP BY {}", positions(n))
    };
    let count = |status: &str| format!("SUM(CASE WHEN status {status} THEN 1 ELSE 0 END)");
    let percentile = |p: f64| {
        if sql.is_postgres() {
            format!(
                "percentile_cont({p}) WITHIN GROUP (ORDER BY job_ms) \
                 FILTER (WHERE status = {SUCCEEDED})"
            )
        } else {
            "CAST(NULL AS DOUBLE PRECISION)".to_owned()
        }
    };

    // Only DAY needs the zone's offsets.
    let offsets = if grouping.contains(&StatsDimension::Day) {
        filter.period.offsets()
    } else {
        period::Offsets(Vec::new())
    };
    let mut live: Vec<String> = keys(&sql, &offsets, grouping, Source::Live);
    live.extend([
        "COUNT(*) AS total_count".to_owned(),
        format!("{} AS success_count", count(&format!("= {SUCCEEDED}"))),
        format!("{} AS fail_count", count("= 'FAILED'")),
        format!("{} AS cancelled_count", count("= 'CANCELLED'")),
        format!("{} AS active_count", count("IN ('QUEUED', 'RUNNING')")),
    ]);
    live.extend(
        DURATIONS
            .iter()
            .map(|(name, col)| live_durations(name, col)),
    );
    live.extend([
        "0 AS rolled".to_owned(),
        format!("{} AS job_p50", percentile(0.5)),
        format!("{} AS job_p95", percentile(0.95)),
    ]);

    let mut rolled: Vec<String> = keys(&sql, &offsets, grouping, Source::Rollup);
    rolled.extend([
        "SUM(total_count) AS total_count".to_owned(),
        "SUM(success_count) AS success_count".to_owned(),
        "SUM(failed_count) AS fail_count".to_owned(),
        "SUM(cancelled_count) AS cancelled_count".to_owned(),
        "0 AS active_count".to_owned(),
    ]);
    rolled.extend(DURATIONS.iter().map(|(name, _)| rollup_durations(name)));
    rolled.extend([
        "SUM(total_count) AS rolled".to_owned(),
        "CAST(NULL AS DOUBLE PRECISION) AS job_p50".to_owned(),
        "CAST(NULL AS DOUBLE PRECISION) AS job_p95".to_owned(),
    ]);

    let mut outer: Vec<String> = grouping
        .iter()
        .map(|d| match d {
            StatsDimension::Model => "k_model",
            StatsDimension::AuthType => "k_auth",
            StatsDimension::Principal => "k_principal",
            StatsDimension::Day => "k_day",
        })
        .map(str::to_owned)
        .collect();
    for column in [
        "total_count",
        "success_count",
        "fail_count",
        "cancelled_count",
        "active_count",
        "rolled",
    ] {
        outer.push(format!("CAST(SUM({column}) AS BIGINT) AS {column}"));
    }
    outer.extend(DURATIONS.iter().map(|(name, _)| outer_durations(name)));
    outer.extend([
        "MAX(job_p50) AS job_p50".to_owned(),
        "MAX(job_p95) AS job_p95".to_owned(),
    ]);

    sql.push("SELECT ")
        .push(&outer.join(", "))
        .push(" FROM (SELECT ")
        .push(&live.join(", "))
        .push(" FROM ")
        .push(Source::Live.table());
    push_where(&mut sql, filter, Source::Live);
    sql.push(&group_by)
        .push(" UNION ALL SELECT ")
        .push(&rolled.join(", "))
        .push(" FROM ")
        .push(Source::Rollup.table());
    push_where(&mut sql, filter, Source::Rollup);
    sql.push(&group_by)
        .push(") t")
        .push(&group_by)
        .push(" HAVING SUM(total_count) > 0");
    if n > 0 {
        sql.push(&format!(" ORDER BY {}", positions(n)));
    }
    sql.build()
}

fn principals_statement(
    backend: sea_orm::DbBackend,
    filter: &StatsFilter,
    kind: AuthType,
    limit: u64,
) -> Statement {
    let mut sql = Sql::new(backend);
    sql.push(
        "SELECT principal_id, CAST(SUM(n) AS BIGINT) AS n FROM \
         (SELECT principal_id, COUNT(*) AS n FROM work_requests",
    );
    push_where(&mut sql, filter, Source::Live);
    sql.push(" AND auth_type = ").bind(kind.to_value()).push(
        " GROUP BY principal_id UNION ALL \
             SELECT principal_id, SUM(total_count) AS n FROM request_rollups",
    );
    push_where(&mut sql, filter, Source::Rollup);
    sql.push(" AND auth_type = ")
        .bind(kind.to_value())
        .push(" GROUP BY principal_id) t GROUP BY principal_id ORDER BY SUM(n) DESC, principal_id LIMIT ")
        .bind(limit as i64);
    sql.build()
}

fn decode(row: &QueryResult, grouping: &Grouping) -> Result<StatsRow, ApiError> {
    let has = |d| grouping.contains(&d);
    let durations = |name: &str| -> Result<Option<Durations>, ApiError> {
        let count: i64 = row
            .try_get::<Option<i64>>("", &format!("{name}_n"))?
            .unwrap_or(0);
        if count == 0 {
            return Ok(None);
        }
        Ok(Some(Durations {
            total_ms: row.try_get("", &format!("{name}_sum"))?,
            min_ms: row.try_get("", &format!("{name}_min"))?,
            max_ms: row.try_get("", &format!("{name}_max"))?,
            count,
        }))
    };
    let auth_type = if has(StatsDimension::AuthType) {
        let value: String = row.try_get("", "k_auth")?;
        Some(AuthType::try_from_value(&value).map_err(|e| ApiError::internal("reading stats", e))?)
    } else {
        None
    };
    let day = if has(StatsDimension::Day) {
        let n: i64 = row.try_get("", "k_day")?;
        Some(
            period::day_from_number(n)
                .ok_or_else(|| ApiError::internal("reading stats", "day out of range"))?,
        )
    } else {
        None
    };
    let rolled_up_count: i64 = row.try_get("", "rolled")?;
    let percentile = |name: &str| -> Result<Option<f64>, ApiError> { Ok(row.try_get("", name)?) };
    Ok(StatsRow {
        model_id: if has(StatsDimension::Model) {
            Some(row.try_get("", "k_model")?)
        } else {
            None
        },
        auth_type,
        principal_id: if has(StatsDimension::Principal) {
            Some(row.try_get("", "k_principal")?)
        } else {
            None
        },
        day,
        total_count: row.try_get("", "total_count")?,
        success_count: row.try_get("", "success_count")?,
        fail_count: row.try_get("", "fail_count")?,
        cancelled_count: row.try_get("", "cancelled_count")?,
        active_count: row.try_get("", "active_count")?,
        job_time: durations("job")?,
        total_time: durations("total")?,
        queue_time: durations("queue")?,
        job_p50_ms: percentile("job_p50")?,
        job_p95_ms: percentile("job_p95")?,
        rolled_up_count,
    })
}
