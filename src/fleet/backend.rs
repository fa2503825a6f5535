//! What starts instances: the local backend (child processes) and the
//! Kubernetes backend (pods).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use entity::instance_event;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use tokio::sync::watch;
use uuid::Uuid;

use super::board::{EventRecord, InstanceBoard};
use crate::models::ModelSpec;

/// A started instance, ready to take jobs.
pub struct Started {
    /// Base URL of its Cog HTTP API.
    pub endpoint: String,
    /// The backend's name for it: a process id, a pod name.
    pub handle: String,
    /// Where it runs, when the backend knows.
    pub node: Option<String>,
    /// The backend's own view, shown as the instance's `statusDetail`.
    pub detail: serde_json::Value,
    /// Becomes `Some(detail)` when the instance has ended, for whatever
    /// reason.
    pub exited: watch::Receiver<Option<String>>,
}

/// A short tag for the database a server records instances in (its URL
/// and schema): backends mark what they start with it, so servers on other
/// databases leave those instances alone.
pub fn scope_tag(scope: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(scope.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Said once by a backend when an instance being started has a place to
/// run (a node, for a pod): until then the instance shows as `PENDING`,
/// then as `STARTING`.
pub struct Placed(Option<tokio::sync::oneshot::Sender<()>>);

impl Placed {
    pub fn new() -> (Placed, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Placed(Some(tx)), rx)
    }

    /// Says it (the first time only).
    pub fn now(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Why a start failed: the whole story for operators (instance events and
/// logs), and, when the backend has one, a short reason safe to show
/// whoever submitted the waiting requests (`ImagePullBackOff`, say; never a
/// model's own error output).
#[derive(Debug, Clone)]
pub struct StartError {
    pub detail: String,
    pub public: Option<String>,
    /// Trying again cannot help as things are (no node could ever hold the
    /// instance): the waiting requests fail at once with `public`.
    pub hopeless: bool,
}

impl StartError {
    pub fn public(detail: String, public: &str) -> Self {
        Self {
            detail,
            public: Some(public.to_owned()),
            hopeless: false,
        }
    }

    /// A start that cannot succeed as things are, for `reason`.
    pub fn hopeless(reason: &str) -> Self {
        Self {
            detail: reason.to_owned(),
            public: Some(reason.to_owned()),
            hopeless: true,
        }
    }
}

impl From<String> for StartError {
    fn from(detail: String) -> Self {
        Self {
            detail,
            public: None,
            hopeless: false,
        }
    }
}

/// How a backend reports what happens: lifecycle changes, output lines and
/// (on Kubernetes) cluster events go to the [`EventLog`] it is built with;
/// the end of an instance comes through [`Started::exited`].
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `local` or `kubernetes`.
    fn name(&self) -> &'static str;

    /// Starts an instance of `model` and waits until it is ready to serve,
    /// saying `placed` once it has a place to run.
    async fn start(
        &self,
        model: &ModelSpec,
        instance_id: Uuid,
        placed: Placed,
    ) -> Result<Started, StartError>;

    /// Stops an instance: asks it to end, then forces it after a grace
    /// period. Returns when it has ended.
    async fn stop(&self, instance_id: Uuid);

    /// The request an instance runs now (`None` when idle or ending). The
    /// Kubernetes backend notes it on the pod; it must not block.
    fn assigned(&self, _instance_id: Uuid, _request_id: Option<Uuid>) {}

    /// The instances this backend runs now.
    fn owned(&self) -> Vec<Uuid>;

    /// Whether instances outlive the server that started them (pods do,
    /// child processes do not). A scaler that shuts down or loses the
    /// election then leaves them running, released, and the next scaler
    /// adopts them.
    fn hands_over(&self) -> bool {
        false
    }

    /// Takes over an instance that an earlier scaler started and left
    /// running, and returns as [`Backend::start`] does once it answers
    /// (busy with an old job counts: the caller cancels that job), saying
    /// `placed` as `start` does.
    async fn adopt(
        &self,
        model: &ModelSpec,
        instance_id: Uuid,
        placed: Placed,
    ) -> Result<Started, StartError> {
        let _ = (model, instance_id, placed);
        Err(format!("the {} backend cannot adopt instances", self.name()).into())
    }

    /// Forgets an instance without stopping it: it is handed over.
    fn release(&self, _instance_id: Uuid) {}

    /// Ends every instance this backend finds that is not in `tracked`
    /// (left by an earlier run of the server). Returns how many it ended.
    async fn end_untracked(&self, tracked: &HashSet<Uuid>) -> usize;
}

/// `Normal` or `Warning`, as on Kubernetes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        }
    }
}

/// Records instance events in the database and announces them on the
/// board.
#[derive(Clone)]
pub struct EventLog {
    db: DatabaseConnection,
    board: Arc<InstanceBoard>,
}

impl EventLog {
    pub fn new(db: DatabaseConnection, board: Arc<InstanceBoard>) -> Arc<Self> {
        Arc::new(Self { db, board })
    }

    pub async fn record(&self, instance_id: Uuid, kind: EventKind, reason: &str, message: &str) {
        self.record_raw(instance_id, kind, reason, message, None)
            .await;
    }

    /// As [`EventLog::record`], keeping the backend's own record of the
    /// event (a Kubernetes event object) as `raw`.
    pub async fn record_raw(
        &self,
        instance_id: Uuid,
        kind: EventKind,
        reason: &str,
        message: &str,
        raw: Option<serde_json::Value>,
    ) {
        let event = EventRecord {
            at: Utc::now(),
            kind: kind.as_str().to_owned(),
            reason: reason.to_owned(),
            message: message.chars().take(4000).collect(),
            raw: raw.clone(),
        };
        let row = instance_event::ActiveModel {
            instance_id: Set(instance_id),
            at: Set(event.at),
            kind: Set(event.kind.clone()),
            reason: Set(event.reason.clone()),
            message: Set(event.message.clone()),
            raw: Set(raw),
            ..Default::default()
        };
        if let Err(e) = instance_event::Entity::insert(row).exec(&self.db).await {
            tracing::warn!(instance_id = %instance_id, error = %e, "cannot record instance event");
        }
        self.board.event(instance_id, event);
    }

    /// Shows the backend's current view of a starting instance (a pod
    /// waiting to be scheduled, say) as its `statusDetail`.
    pub async fn detail(&self, instance_id: Uuid, detail: serde_json::Value) {
        use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
        let written = entity::instance::Entity::update_many()
            .col_expr(
                entity::instance::Column::StatusDetail,
                Expr::value(detail.clone()),
            )
            .filter(entity::instance::Column::Id.eq(instance_id))
            .exec(&self.db)
            .await;
        if let Err(e) = written {
            tracing::warn!(instance_id = %instance_id, error = %e, "cannot record instance detail");
        }
        self.board
            .update(instance_id, super::board::ChangeKind::Status, |r| {
                r.status_detail = Some(detail)
            });
    }
}
