//! Instances, for administrators: what runs now, its history and events,
//! stopping one, and live updates.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{
    Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject, Subscription,
};
use chrono::{DateTime, Utc};
use entity::{instance, instance_event};
use futures_util::Stream;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::guard::session;
use super::models::{Model, ModelLoader};
use super::{RequirePermission, pagination};
use crate::auth::Permission;
use crate::error::ApiError;
use crate::fleet::board::{ChangeKind, EventRecord, InstanceBoard, InstanceChange, InstanceRecord};
use crate::fleet::{Fleet, StopOutcome};

/// The most events one instance lists at once.
pub const MAX_EVENTS: usize = 500;

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    Pending,
    Starting,
    Ready,
    Busy,
    Stopping,
    Stopped,
    Failed,
}

impl From<entity::InstanceStatus> for InstanceStatus {
    fn from(s: entity::InstanceStatus) -> Self {
        match s {
            entity::InstanceStatus::Pending => InstanceStatus::Pending,
            entity::InstanceStatus::Starting => InstanceStatus::Starting,
            entity::InstanceStatus::Ready => InstanceStatus::Ready,
            entity::InstanceStatus::Busy => InstanceStatus::Busy,
            entity::InstanceStatus::Stopping => InstanceStatus::Stopping,
            entity::InstanceStatus::Stopped => InstanceStatus::Stopped,
            entity::InstanceStatus::Failed => InstanceStatus::Failed,
        }
    }
}

impl From<InstanceStatus> for entity::InstanceStatus {
    fn from(s: InstanceStatus) -> Self {
        match s {
            InstanceStatus::Pending => entity::InstanceStatus::Pending,
            InstanceStatus::Starting => entity::InstanceStatus::Starting,
            InstanceStatus::Ready => entity::InstanceStatus::Ready,
            InstanceStatus::Busy => entity::InstanceStatus::Busy,
            InstanceStatus::Stopping => entity::InstanceStatus::Stopping,
            InstanceStatus::Stopped => entity::InstanceStatus::Stopped,
            InstanceStatus::Failed => entity::InstanceStatus::Failed,
        }
    }
}

/// `Normal` or `Warning`, as Kubernetes events are.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something that happened to an instance.
#[derive(SimpleObject, Debug, Clone)]
pub struct InstanceEvent {
    at: DateTime<Utc>,
    #[graphql(name = "type")]
    kind: EventType,
    reason: String,
    message: String,
    /// The event as the backend gave it (for Kubernetes, the Event object).
    raw: Option<Json<Value>>,
}

impl From<&EventRecord> for InstanceEvent {
    fn from(e: &EventRecord) -> Self {
        InstanceEvent {
            at: e.at,
            kind: if e.kind == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.clone(),
            message: e.message.clone(),
            raw: e.raw.clone().map(Json),
        }
    }
}

/// One running (or once running) copy of a model.
pub struct Instance(pub Arc<InstanceRecord>);

#[Object]
impl Instance {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn model_id(&self) -> &str {
        &self.0.model_id
    }
    async fn model(&self, ctx: &Context<'_>) -> Result<Option<Model>> {
        let model = ctx
            .data_unchecked::<DataLoader<ModelLoader>>()
            .load_one(self.0.model_id.clone())
            .await
            .map_err(|e| ApiError::internal("loading a model", e))?;
        Ok(model.map(Model))
    }
    /// `local` or `kubernetes`.
    async fn backend(&self) -> &str {
        &self.0.backend
    }
    /// The backend's name for it: a process id or a pod name.
    async fn handle(&self) -> Option<&str> {
        self.0.handle.as_deref()
    }
    async fn node(&self) -> Option<&str> {
        self.0.node.as_deref()
    }
    async fn status(&self) -> InstanceStatus {
        self.0.status.into()
    }
    /// The backend's own view: for a process its pid and how it exited;
    /// for a pod its phase, conditions and container states.
    async fn status_detail(&self) -> Option<Json<Value>> {
        self.0.status_detail.clone().map(Json)
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn ready_at(&self) -> Option<DateTime<Utc>> {
        self.0.ready_at
    }
    async fn stopped_at(&self) -> Option<DateTime<Utc>> {
        self.0.stopped_at
    }
    async fn stop_reason(&self) -> Option<&str> {
        self.0.stop_reason.as_deref()
    }
    /// The request it is running now.
    async fn request_id(&self) -> Option<ID> {
        self.0.request_id.map(|id| ID(id.to_string()))
    }
    /// Newest first. Output lines are events too.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] limit: i32,
    ) -> Result<Vec<InstanceEvent>> {
        if !(1..=MAX_EVENTS as i32).contains(&limit) {
            return Err(
                ApiError::field("limit", format!("must be between 1 and {MAX_EVENTS}")).into(),
            );
        }
        let events = ctx
            .data_unchecked::<DataLoader<EventsLoader>>()
            .load_one(self.0.id)
            .await
            .map_err(|e| ApiError::internal("loading instance events", e))?
            .unwrap_or_default();
        Ok(events
            .iter()
            .take(limit as usize)
            .map(InstanceEvent::from)
            .collect())
    }
}

/// Loads the newest events of many instances in one query.
pub struct EventsLoader(pub DatabaseConnection);

impl Loader<Uuid> for EventsLoader {
    type Value = Vec<EventRecord>;
    type Error = Arc<sea_orm::DbErr>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Vec<EventRecord>>, Self::Error> {
        use instance_event::Column as C;
        use sea_orm::Iterable;
        use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Order, Query, WindowStatement};
        // The newest MAX_EVENTS of each instance, in one query: number each
        // instance's events newest first, keep the first ones.
        let mut window = WindowStatement::partition_by(C::InstanceId);
        window
            .order_by(C::At, Order::Desc)
            .order_by(C::Id, Order::Desc);
        let mut inner = Query::select();
        inner
            .columns(C::iter())
            .expr_window_as(Expr::cust("ROW_NUMBER()"), window, Alias::new("rn"))
            .from(instance_event::Entity)
            .and_where(Expr::col(C::InstanceId).is_in(keys.iter().copied()));
        let mut outer = Query::select();
        outer
            .column(Asterisk)
            .from_subquery(inner, Alias::new("ranked"))
            .and_where(Expr::col(Alias::new("rn")).lte(MAX_EVENTS as i64))
            .order_by(Alias::new("rn"), Order::Asc);
        let statement = self.0.get_database_backend().build(&outer);
        let rows = instance_event::Entity::find()
            .from_raw_sql(statement)
            .all(&self.0)
            .await
            .map_err(Arc::new)?;
        let mut out: HashMap<Uuid, Vec<EventRecord>> = HashMap::new();
        for row in rows {
            let list = out.entry(row.instance_id).or_default();
            if list.len() < MAX_EVENTS {
                list.push(EventRecord::from(row));
            }
        }
        Ok(out)
    }
}

#[derive(InputObject, Default, Clone)]
pub struct InstanceFilter {
    model_ids: Option<Vec<String>>,
    statuses: Option<Vec<InstanceStatus>>,
    /// Started on or after this time.
    started_from: Option<DateTime<Utc>>,
    /// Started on or before this time.
    started_to: Option<DateTime<Utc>>,
    /// Include stopped and failed instances (history). Off by default.
    #[graphql(default)]
    include_stopped: bool,
}

impl InstanceFilter {
    fn matches(&self, r: &InstanceRecord) -> bool {
        let status: InstanceStatus = r.status.into();
        self.model_ids
            .as_ref()
            .is_none_or(|m| m.contains(&r.model_id))
            && self.statuses.as_ref().is_none_or(|s| s.contains(&status))
            && self.started_from.is_none_or(|f| r.created_at >= f)
            && self.started_to.is_none_or(|t| r.created_at <= t)
    }
}

#[derive(Default)]
pub struct InstancesQuery;

#[Object]
impl InstancesQuery {
    /// Instances, newest first: the active ones, or with `includeStopped`
    /// their history too.
    #[graphql(
        guard = "RequirePermission(Permission::ManageInstances)",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn instances(
        &self,
        ctx: &Context<'_>,
        filter: Option<InstanceFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Instance, EmptyFields, EmptyFields>> {
        let limit = pagination::page_size(first)?;
        let filter = filter.unwrap_or_default();
        let mut query = instance::Entity::find()
            .order_by_desc(instance::Column::CreatedAt)
            .order_by_desc(instance::Column::Id)
            .limit(limit as u64 + 1);
        if let Some(models) = &filter.model_ids {
            query = query.filter(instance::Column::ModelId.is_in(models.iter().cloned()));
        }
        if let Some(statuses) = &filter.statuses {
            let statuses: Vec<entity::InstanceStatus> =
                statuses.iter().map(|s| (*s).into()).collect();
            query = query.filter(instance::Column::Status.is_in(statuses));
        } else if !filter.include_stopped {
            query = query.filter(instance::Column::Status.is_not_in([
                entity::InstanceStatus::Stopped,
                entity::InstanceStatus::Failed,
            ]));
        }
        if let Some(from) = filter.started_from {
            query = query.filter(instance::Column::CreatedAt.gte(from));
        }
        if let Some(to) = filter.started_to {
            query = query.filter(instance::Column::CreatedAt.lte(to));
        }
        if let Some(after) = &after {
            let (at, id) = pagination::decode(after)?;
            query = query.filter(
                Condition::any()
                    .add(instance::Column::CreatedAt.lt(at))
                    .add(
                        Condition::all()
                            .add(instance::Column::CreatedAt.eq(at))
                            .add(instance::Column::Id.lt(id)),
                    ),
            );
        }
        let db = ctx.data_unchecked::<DatabaseConnection>();
        let mut rows = query.all(db).await.map_err(ApiError::from)?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(rows.into_iter().map(|row| {
            let cursor = pagination::encode(row.created_at, row.id);
            Edge::new(cursor, Instance(Arc::new(InstanceRecord::from(row))))
        }));
        Ok(connection)
    }

    /// One instance, active or not.
    #[graphql(guard = "RequirePermission(Permission::ManageInstances)")]
    async fn instance(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Instance>> {
        let id = Uuid::parse_str(&id).map_err(|_| ApiError::field("id", "is not a valid id"))?;
        let db = ctx.data_unchecked::<DatabaseConnection>();
        let row = instance::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(ApiError::from)?;
        Ok(row.map(|r| Instance(Arc::new(InstanceRecord::from(r)))))
    }
}

/// What `stopInstance` did.
#[derive(SimpleObject)]
pub struct StopInstancePayload {
    instance: Instance,
    /// True when the instance had already stopped (or was stopping), so
    /// nothing was done.
    already_stopped: bool,
    message: String,
}

#[derive(Default)]
pub struct InstancesMutation;

#[Object]
impl InstancesMutation {
    /// Stops an instance through its backend. A job it was running goes
    /// back to the queue (or fails, if it already went back once) with the
    /// reason; a replacement starts only if queued work needs one.
    #[graphql(guard = "RequirePermission(Permission::ManageInstances)")]
    async fn stop_instance(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: Option<String>,
    ) -> Result<StopInstancePayload> {
        let id = Uuid::parse_str(&id).map_err(|_| ApiError::field("id", "is not a valid id"))?;
        let reason = reason.unwrap_or_else(|| "no reason given".to_owned());
        if reason.chars().count() > 500 {
            return Err(ApiError::field("reason", "must be at most 500 characters long").into());
        }
        if reason.contains('\0') {
            return Err(ApiError::field("reason", "must not contain NUL characters").into());
        }
        let who = session(ctx)?
            .user
            .as_ref()
            .map_or_else(|| "an administrator".to_owned(), |u| u.username.clone());
        let db = ctx.data_unchecked::<DatabaseConnection>();
        if instance::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(ApiError::NotFound("instance").into());
        }
        let fleet = ctx.data_unchecked::<Arc<Fleet>>();
        let outcome = fleet
            .stop_by_admin(id, &who, &reason)
            .await
            .map_err(ApiError::from)?;
        let stopped = match outcome {
            StopOutcome::Stopping => true,
            StopOutcome::AlreadyStopped => false,
            StopOutcome::NotHere => {
                return Err(ApiError::Unavailable(
                    "this server does not run the scaler; ask the one that does",
                )
                .into());
            }
        };
        let row = instance::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("instance"))?;
        let record = ctx
            .data_unchecked::<Arc<InstanceBoard>>()
            .get(id)
            .unwrap_or_else(|| Arc::new(InstanceRecord::from(row)));
        Ok(StopInstancePayload {
            instance: Instance(record),
            already_stopped: !stopped,
            message: if stopped {
                "stopping".to_owned()
            } else {
                "the instance had already stopped; nothing was done".to_owned()
            },
        })
    }
}

/// What changed about an instance.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceChangeKind {
    Created,
    Status,
    Event,
    Assigned,
    Stopped,
    /// This subscriber fell behind and missed changes: re-query
    /// `instances` to catch up. `instance` is null.
    Resync,
}

/// One change to an instance, as it happened.
#[derive(SimpleObject)]
pub struct InstanceUpdate {
    kind: InstanceChangeKind,
    /// When the change happened on the server.
    at: DateTime<Utc>,
    instance: Option<Instance>,
    /// The new event, for `EVENT`.
    event: Option<InstanceEvent>,
    /// For `RESYNC`: how many changes were missed.
    missed: Option<u64>,
}

#[derive(Default)]
pub struct InstancesSubscription;

#[Subscription]
impl InstancesSubscription {
    /// Every change to an instance matching the filter, as it happens.
    /// `includeStopped` does not apply here: stops are changes.
    #[graphql(guard = "RequirePermission(Permission::ManageInstances)")]
    async fn instance_updates(
        &self,
        ctx: &Context<'_>,
        filter: Option<InstanceFilter>,
    ) -> Result<impl Stream<Item = InstanceUpdate>> {
        if !ctx.data_unchecked::<Arc<Fleet>>().is_leading() {
            // Changes are seen only where the scaler runs.
            return Err(ApiError::Unavailable(
                "this server does not run the scaler; subscribe on the one that does",
            )
            .into());
        }
        let filter = filter.unwrap_or_default();
        let changes = ctx.data_unchecked::<Arc<InstanceBoard>>().subscribe();
        Ok(updates(changes, filter))
    }
}

/// The updates a subscriber with `filter` receives from `changes`: the
/// matching changes, and a `RESYNC` whenever it fell behind.
fn updates(
    changes: tokio::sync::broadcast::Receiver<InstanceChange>,
    filter: InstanceFilter,
) -> impl Stream<Item = InstanceUpdate> {
    futures_util::stream::unfold((changes, filter), |(mut changes, filter)| async move {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    // Before or after: a watcher of BUSY instances also sees
                    // one go READY.
                    let matches = filter.matches(&change.instance)
                        || change
                            .previous
                            .as_deref()
                            .is_some_and(|p| filter.matches(p));
                    if matches {
                        return Some((update_of(change), (changes, filter)));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let update = InstanceUpdate {
                        kind: InstanceChangeKind::Resync,
                        at: Utc::now(),
                        instance: None,
                        event: None,
                        missed: Some(missed),
                    };
                    return Some((update, (changes, filter)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

fn update_of(change: InstanceChange) -> InstanceUpdate {
    InstanceUpdate {
        kind: match change.kind {
            ChangeKind::Created => InstanceChangeKind::Created,
            ChangeKind::Status => InstanceChangeKind::Status,
            ChangeKind::Event => InstanceChangeKind::Event,
            ChangeKind::Assigned => InstanceChangeKind::Assigned,
            ChangeKind::Stopped => InstanceChangeKind::Stopped,
        },
        at: change.at,
        event: change.event.as_deref().map(InstanceEvent::from),
        instance: Some(Instance(change.instance)),
        missed: None,
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::fleet::board::CHANGE_BUFFER;

    fn record(model: &str) -> InstanceRecord {
        InstanceRecord {
            id: Uuid::now_v7(),
            model_id: model.to_owned(),
            backend: "local".to_owned(),
            handle: None,
            node: None,
            status: entity::InstanceStatus::Pending,
            status_detail: None,
            request_id: None,
            created_at: Utc::now(),
            ready_at: None,
            stopped_at: None,
            stop_reason: None,
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_requery_and_goes_on() {
        let board = InstanceBoard::default();
        let stream = updates(board.subscribe(), InstanceFilter::default());
        futures_util::pin_mut!(stream);
        // Nobody reads while more changes than the buffer holds go by; the
        // board never waits for the subscriber.
        for _ in 0..CHANGE_BUFFER + 10 {
            board.created(record("m"));
        }
        let first = stream.next().await.expect("an update");
        assert_eq!(first.kind, InstanceChangeKind::Resync);
        assert_eq!(first.missed, Some(10));
        let next = stream.next().await.expect("an update");
        assert_eq!(next.kind, InstanceChangeKind::Created);
    }

    #[tokio::test]
    async fn filters_match_before_or_after_a_change() {
        let board = InstanceBoard::default();
        let filter = InstanceFilter {
            model_ids: Some(vec!["watched".to_owned()]),
            statuses: Some(vec![InstanceStatus::Busy]),
            ..Default::default()
        };
        let stream = updates(board.subscribe(), filter);
        futures_util::pin_mut!(stream);
        let other = record("other");
        let watched = record("watched");
        let id = watched.id;
        board.created(other.clone());
        board.created(watched);
        board.update(other.id, ChangeKind::Status, |r| {
            r.status = entity::InstanceStatus::Busy
        });
        board.update(id, ChangeKind::Status, |r| {
            r.status = entity::InstanceStatus::Ready
        });
        board.update(id, ChangeKind::Assigned, |r| {
            r.status = entity::InstanceStatus::Busy
        });
        board.update(id, ChangeKind::Status, |r| {
            r.status = entity::InstanceStatus::Ready
        });
        let a = stream.next().await.expect("update");
        let b = stream.next().await.expect("update");
        assert_eq!(a.kind, InstanceChangeKind::Assigned);
        assert_eq!(b.kind, InstanceChangeKind::Status);
        assert!(a.instance.is_some_and(|i| i.0.id == id));
        assert!(
            b.instance
                .is_some_and(|i| i.0.status == entity::InstanceStatus::Ready)
        );
    }
}
