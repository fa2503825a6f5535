//! The fleet: model instances and the scaler that runs requests on them.
//!
//! ```text
//!  submitRequest ──▶ work_requests (QUEUED) ──┐
//!                                             ▼  notify
//!   ┌──────────────────────── scaler (one task) ─────────────────────────┐
//!   │ per model: hand queued requests to idle READY instances, oldest    │
//!   │ first; start instances for the rest (within min..max); stop        │
//!   │ instances idle past the idle timeout (never below min)             │
//!   └──────┬───────────────────────────────┬─────────────────────────────┘
//!          ▼ start/stop                    ▼ one job per instance
//!      Backend (local processes)       Cog POST /predictions
//! ```
//!
//! The database is the record (requests, instances, events); the live map in
//! [`Fleet`] is what the scaler decides with. Job results and instance
//! changes wake the scaler at once; a one-second tick catches the rest
//! (idle timeouts).

pub mod backend;
pub mod board;
pub mod cog;
pub mod kubernetes;
pub mod leader;
pub mod local;
mod recovery;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{InstanceStatus, RequestStatus, instance, work_request};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, sea_query::Expr,
};
use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};
use uuid::Uuid;

use self::backend::{Backend, EventKind, EventLog, Placed};
use self::board::{ChangeKind, InstanceBoard, InstanceRecord};
use self::cog::{CogClient, CogError};
use self::leader::{Election, Leadership};
use crate::metrics::Metrics;
use crate::models::{ModelRegistry, ModelSpec};

/// A request changed status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestChange {
    pub id: Uuid,
    pub status: RequestStatus,
}

/// Consecutive failed starts after which a model's queued requests fail
/// with the start error instead of waiting for an instance that never comes.
pub const START_FAILURE_LIMIT: u32 = 3;
/// How often a request may be dispatched: once, plus one retry after its
/// instance died under it.
pub const MAX_ATTEMPTS: i32 = 2;
/// How often a scaler whose instances outlive servers looks for ones that
/// no scaler tracks.
const UNTRACKED_SWEEP: Duration = Duration::from_secs(60);
/// How long an instance may wait to be placed before, with no request
/// waiting for it, it is given up.
const UNPLACED_GRACE: Duration = Duration::from_secs(5);
/// How long an instance gets to drop a cancelled or timed-out job before it
/// is replaced.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

pub struct Fleet {
    db: DatabaseConnection,
    models: ModelRegistry,
    backend: Arc<dyn Backend>,
    events: Arc<EventLog>,
    board: Arc<InstanceBoard>,
    cog: CogClient,
    metrics: Arc<Metrics>,
    wake: Notify,
    changes: broadcast::Sender<RequestChange>,
    state: Mutex<State>,
    /// Names this server run on the instances it starts.
    run_id: String,
    /// Set while this server holds the scaler lock.
    leading: std::sync::atomic::AtomicBool,
    /// Raised each time this server takes the scaler lock and each time it
    /// lets it go: work begun in an earlier term (a start, a job) records
    /// nothing and leaves what follows to the shutdown or the next scaler.
    term: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    instances: HashMap<Uuid, Live>,
    /// Per model: consecutive failed starts.
    start_failures: HashMap<String, StartFailures>,
    /// Per running request: signalled to cancel it.
    cancels: HashMap<Uuid, Arc<Notify>>,
}

/// What `stop_by_admin` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    Stopping,
    /// It had stopped (or was stopping) already; nothing was done.
    AlreadyStopped,
    /// This server does not run the scaler, so it cannot stop instances.
    NotHere,
}

/// How a job ended, as recorded on its request.
struct Ending {
    status: RequestStatus,
    output: Option<Value>,
    error: Option<String>,
    logs: Option<String>,
    job_finished_at: Option<DateTime<Utc>>,
}

impl Ending {
    /// A job that ended without an answer from the model.
    fn without_output(status: RequestStatus, reason: String, finished_at: DateTime<Utc>) -> Self {
        Ending {
            status,
            output: None,
            error: Some(reason),
            logs: None,
            job_finished_at: Some(finished_at),
        }
    }
}

/// Consecutive failed starts of one model.
#[derive(Clone)]
struct StartFailures {
    count: u32,
    last: tokio::time::Instant,
    /// Why the last start failed, when the backend gave a reason fit for
    /// the requests' owners.
    reason: Option<String>,
    /// The last start said trying again cannot help as things are.
    hopeless: bool,
}

impl StartFailures {
    /// How long to wait before the next start: doubling from 1 s, at most a
    /// minute.
    fn backoff(&self) -> Duration {
        Duration::from_secs(1u64 << self.count.saturating_sub(1).min(6))
            .min(Duration::from_secs(60))
    }
}

/// Where an instance being brought up comes from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    New,
    /// Left running by an earlier scaler, with the request it was running
    /// then (since put back in the queue).
    Adopted {
        running: Option<Uuid>,
    },
}

/// An instance as the scaler sees it.
struct Live {
    model_id: String,
    status: InstanceStatus,
    endpoint: Option<String>,
    request: Option<Uuid>,
    idle_since: tokio::time::Instant,
    exited: Option<watch::Receiver<Option<String>>>,
}

impl Live {
    /// A new instance of `model_id`, not placed yet.
    fn pending(model_id: &str) -> Live {
        Live {
            model_id: model_id.to_owned(),
            status: InstanceStatus::Pending,
            endpoint: None,
            request: None,
            idle_since: tokio::time::Instant::now(),
            exited: None,
        }
    }

    /// Counts toward the model's instances.
    fn active(&self) -> bool {
        matches!(
            self.status,
            InstanceStatus::Pending
                | InstanceStatus::Starting
                | InstanceStatus::Ready
                | InstanceStatus::Busy
        )
    }
}

impl Fleet {
    pub fn new(
        db: DatabaseConnection,
        models: ModelRegistry,
        backend: Arc<dyn Backend>,
        events: Arc<EventLog>,
        board: Arc<InstanceBoard>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        Arc::new(Self {
            db,
            models,
            backend,
            events,
            board,
            cog: CogClient::new(),
            metrics,
            wake: Notify::new(),
            changes,
            state: Mutex::new(State::default()),
            run_id: Uuid::now_v7().to_string(),
            leading: std::sync::atomic::AtomicBool::new(false),
            term: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Request status changes, for `requestUpdates`.
    pub fn changes(&self) -> broadcast::Receiver<RequestChange> {
        self.changes.subscribe()
    }

    /// Wakes the scaler now (a request arrived, a job ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn announce(&self, id: Uuid, status: RequestStatus) {
        let _no_listeners = self.changes.send(RequestChange { id, status });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops an instance at an administrator's request. A job it runs goes
    /// back to the queue (or fails, if it already went back once) with the
    /// reason. Returns `false` when the instance had already stopped (or is
    /// stopping), changing nothing.
    pub async fn stop_by_admin(
        self: &Arc<Self>,
        id: Uuid,
        who: &str,
        reason: &str,
    ) -> Result<StopOutcome, DbErr> {
        if !self.is_leading() {
            return Ok(StopOutcome::NotHere);
        }
        // Take the instance out of service and its job off it at once, so
        // that neither the scaler nor the job's end can slip in between.
        let request = {
            let mut state = self.lock();
            let request = match state.instances.get_mut(&id) {
                Some(live) if live.active() => {
                    live.status = InstanceStatus::Stopping;
                    live.request.take()
                }
                _ => return Ok(StopOutcome::AlreadyStopped),
            };
            if let Some(request) = request {
                state.cancels.remove(&request);
            }
            request
        };
        self.events
            .record(
                id,
                EventKind::Normal,
                "StopRequested",
                &format!("stop asked by {who}: {reason}"),
            )
            .await;
        tracing::info!(instance_id = %id, by = who, reason, "instance stop requested");
        if let Some(request_id) = request {
            let attempts = work_request::Entity::find_by_id(request_id)
                .one(&self.db)
                .await?
                .map_or(MAX_ATTEMPTS, |r| r.attempts);
            let why = format!("its instance was stopped by an administrator: {reason}");
            self.requeue_or_fail(request_id, Some(id), attempts, &why)
                .await?;
        }
        self.stop_instance(id, &format!("stopped by {who}: {reason}"))
            .await;
        self.wake();
        Ok(StopOutcome::Stopping)
    }

    fn term(&self) -> u64 {
        self.term.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this server runs the scaler now.
    pub fn is_leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a request that reached a final status outside a job.
    pub(crate) fn count_final(&self, model_id: &str, status: RequestStatus) {
        self.metrics.request_finished(model_id, status);
    }

    /// Asks a running request to stop; true when it was running here.
    pub fn cancel_running(&self, request_id: Uuid) -> bool {
        match self.lock().cancels.get(&request_id) {
            Some(cancel) => {
                cancel.notify_one();
                true
            }
            None => false,
        }
    }

    /// Runs the scaler until `shutdown` turns true, then puts running
    /// requests back in the queue and stops every instance (or, on a
    /// backend whose instances outlive the server, hands them over to the
    /// next scaler).
    ///
    /// Only one server per database runs the scaler: this one waits for the
    /// lock first (see [`leader`]). Losing the lock (its connection broke,
    /// its lease ran out) ends this server's part the same way and waits
    /// for the lock again.
    pub async fn run(self: Arc<Self>, election: Election, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stop = shutdown.clone();
            let Some(mut leadership) = Leadership::acquire(&election, || *stop.borrow()).await
            else {
                return;
            };
            tracing::info!("running the scaler");
            self.term.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.leading
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.recover().await {
                tracing::error!(error = %e, "recovery after restart failed");
            }
            let mut last_sweep = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let lost = loop {
                tokio::select! {
                    () = self.wake.notified() => {}
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => break false,
                    () = leadership.expired() => {}
                }
                if *shutdown.borrow() {
                    break false;
                }
                if !leadership.still_held().await {
                    break true;
                }
                if let Err(e) = self.reconcile().await {
                    tracing::warn!(error = %e, "scaler pass failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                if self.backend.hands_over() && last_sweep.elapsed() >= UNTRACKED_SWEEP {
                    // Pods an earlier scaler created after this one took
                    // over (its start was still in flight) belong to no
                    // instance: end them.
                    last_sweep = tokio::time::Instant::now();
                    let tracked = self.lock().instances.keys().copied().collect();
                    let ended = self.backend.end_untracked(&tracked).await;
                    if ended > 0 {
                        tracing::warn!(ended, "ended instances that no scaler tracked");
                    }
                }
            };
            self.leading
                .store(false, std::sync::atomic::Ordering::Relaxed);
            // Work begun in this term writes nothing from here on.
            self.term.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.shutdown(!lost).await;
            leadership.release().await;
            if !lost {
                return;
            }
            tracing::error!(
                "lost the scaler lock; let go of this server's instances and waiting to take over again"
            );
        }
    }

    /// One pass over every model.
    async fn reconcile(self: &Arc<Self>) -> Result<(), DbErr> {
        let models = self.models.list(true).await?;
        let mut queue_depths = Vec::with_capacity(models.len());
        for model in &models {
            let queued = self.reconcile_model(model).await?;
            queue_depths.push((model.id.clone(), queued));
        }
        self.metrics.set_queue_depths(&queue_depths);
        let counts: Vec<(String, InstanceStatus)> = self
            .lock()
            .instances
            .values()
            .map(|l| (l.model_id.clone(), l.status))
            .collect();
        self.metrics.set_instances(&counts);
        Ok(())
    }

    /// Dispatches, starts and stops for one model. Returns the number of
    /// requests left waiting.
    async fn reconcile_model(self: &Arc<Self>, model: &ModelSpec) -> Result<u64, DbErr> {
        // Idle ready instances, longest idle first.
        let mut idle: Vec<(Uuid, String, tokio::time::Instant)> = self
            .lock()
            .instances
            .iter()
            .filter(|(_, l)| l.model_id == model.id && l.status == InstanceStatus::Ready)
            .filter_map(|(id, l)| l.endpoint.clone().map(|e| (*id, e, l.idle_since)))
            .collect();
        idle.sort_by_key(|(_, _, since)| *since);

        let queued_count = self.queued(&model.id).count(&self.db).await?;
        let mut dispatched = 0u64;
        if !idle.is_empty() && queued_count > 0 {
            let oldest = self
                .queued(&model.id)
                .order_by_asc(work_request::Column::CreatedAt)
                .order_by_asc(work_request::Column::Id)
                .limit(idle.len() as u64)
                .all(&self.db)
                .await?;
            for (request, (instance_id, endpoint, _)) in oldest.into_iter().zip(idle.drain(..)) {
                if self.dispatch(model, request, instance_id, endpoint).await? {
                    dispatched += 1;
                }
            }
        }
        let waiting = queued_count.saturating_sub(dispatched);

        // Start what the waiting requests need, within min and max.
        let (active, stopping, coming) = {
            let state = self.lock();
            let mine = state.instances.values().filter(|l| l.model_id == model.id);
            let active = mine.clone().filter(|l| l.active()).count() as u64;
            // A stopping instance still holds its resources until it ends.
            let stopping = mine
                .clone()
                .filter(|l| l.status == InstanceStatus::Stopping)
                .count() as u64;
            // Ready ones too: those left idle by the dispatch above, and
            // any that became ready since it looked.
            let coming = mine
                .filter(|l| {
                    matches!(
                        l.status,
                        InstanceStatus::Pending | InstanceStatus::Starting | InstanceStatus::Ready
                    )
                })
                .count() as u64;
            (active, stopping, coming)
        };
        let min = if model.enabled {
            u64::from(model.min_instances)
        } else {
            0
        };
        let max = u64::from(model.max_instances);
        let failures = self.lock().start_failures.get(&model.id).cloned();
        if let Some(failures) = failures {
            let cooling = tokio::time::Instant::now() < failures.last + failures.backoff();
            if (failures.count >= START_FAILURE_LIMIT || failures.hopeless)
                && cooling
                && active == 0
            {
                // Starting keeps failing: fail the waiting requests rather
                // than keep them forever. One more start is tried when the
                // back-off ends; a success clears all this.
                if waiting > 0 {
                    let why = match &failures.reason {
                        Some(reason) => format!("the last: {reason}"),
                        None => "the instance events say why".to_owned(),
                    };
                    let reason = match &failures.reason {
                        Some(reason) if failures.hopeless => {
                            format!("no instance of model `{}` can run: {reason}", model.id)
                        }
                        _ => format!(
                            "no instance of model `{}` could start ({} attempts in a row failed; {why})",
                            model.id, failures.count
                        ),
                    };
                    self.fail_queued(&model.id, &reason).await?;
                }
                return Ok(0);
            }
            if cooling {
                return Ok(waiting);
            }
        }
        let wanted = waiting.saturating_sub(coming);
        let to_start = wanted
            .max(min.saturating_sub(active))
            .min(max.saturating_sub(active + stopping));
        for _ in 0..to_start {
            self.start_instance(model).await?;
        }

        // Stop instances idle past the timeout, never below min, and not
        // while requests wait.
        if waiting == 0 {
            let timeout = Duration::from_millis(model.idle_timeout_ms.max(0) as u64);
            let now = tokio::time::Instant::now();
            let mut active = active + to_start;
            let expired: Vec<Uuid> = idle
                .iter()
                .filter(|(_, _, since)| now.duration_since(*since) >= timeout)
                .map(|(id, _, _)| *id)
                .collect();
            for id in expired {
                if active <= min {
                    break;
                }
                let reason = format!("idle for {} s", timeout.as_secs());
                self.stop_instance(id, &reason).await;
                active -= 1;
            }
            // Instances still not placed (a pod no node has room for) that
            // no request waits for any more are given up, newest first,
            // never below min.
            let mut unplaced: Vec<(Uuid, tokio::time::Instant)> = self
                .lock()
                .instances
                .iter()
                .filter(|(_, l)| l.model_id == model.id && l.status == InstanceStatus::Pending)
                .filter(|(_, l)| now.duration_since(l.idle_since) >= UNPLACED_GRACE)
                .map(|(id, l)| (*id, l.idle_since))
                .collect();
            unplaced.sort_by_key(|(_, since)| std::cmp::Reverse(*since));
            for (id, _) in unplaced {
                if active <= min {
                    break;
                }
                self.stop_instance(id, "not placed, and no request waits for it")
                    .await;
                active -= 1;
            }
        }
        Ok(waiting)
    }

    fn queued(&self, model_id: &str) -> sea_orm::Select<work_request::Entity> {
        work_request::Entity::find()
            .filter(work_request::Column::ModelId.eq(model_id))
            .filter(work_request::Column::Status.eq(RequestStatus::Queued))
    }

    /// Claims a queued request for an idle instance and starts its job.
    async fn dispatch(
        self: &Arc<Self>,
        model: &ModelSpec,
        request: work_request::Model,
        instance_id: Uuid,
        endpoint: String,
    ) -> Result<bool, DbErr> {
        // Reserve the instance first, under the lock: it must still be
        // ready, and a cancel arriving from here on finds the job's signal.
        let cancel = Arc::new(Notify::new());
        let exited = {
            let mut state = self.lock();
            let Some(live) = state.instances.get_mut(&instance_id) else {
                return Ok(false);
            };
            if live.status != InstanceStatus::Ready {
                return Ok(false);
            }
            live.status = InstanceStatus::Busy;
            live.request = Some(request.id);
            let exited = live.exited.clone();
            state.cancels.insert(request.id, cancel.clone());
            exited
        };
        // Claimed below; announced once the claim holds.
        let now = Utc::now();
        let queue_ms = (now - request.created_at).num_milliseconds().max(0);
        let claimed = work_request::Entity::update_many()
            .col_expr(
                work_request::Column::Status,
                Expr::value(RequestStatus::Running),
            )
            .col_expr(work_request::Column::InstanceId, Expr::value(instance_id))
            .col_expr(work_request::Column::JobStartedAt, Expr::value(now))
            .col_expr(work_request::Column::QueueMs, Expr::value(queue_ms))
            .col_expr(work_request::Column::Attempts, attempts_plus(1))
            .filter(work_request::Column::Id.eq(request.id))
            .filter(work_request::Column::Status.eq(RequestStatus::Queued))
            .exec(&self.db)
            .await;
        if !matches!(&claimed, Ok(c) if c.rows_affected == 1) {
            // Cancelled or taken meanwhile, or the write failed: release the
            // instance.
            let mut state = self.lock();
            state.cancels.remove(&request.id);
            if let Some(live) = state.instances.get_mut(&instance_id)
                && live.status == InstanceStatus::Busy
            {
                live.status = InstanceStatus::Ready;
                live.request = None;
            }
            return claimed.map(|_| false);
        }
        {
            let state = self.lock();
            if state
                .instances
                .get(&instance_id)
                .is_some_and(|l| l.request == Some(request.id))
            {
                self.publish_status(instance_id, InstanceStatus::Busy, Some(request.id), None);
            }
        }
        // The instance's record and event are written by the job's task,
        // off the scaler's path: it claims the next request meanwhile.
        self.announce(request.id, RequestStatus::Running);
        self.metrics.observe_queue(&model.id, queue_ms);
        let fleet = self.clone();
        let model = model.clone();
        tokio::spawn(async move {
            fleet
                .run_job(model, request, instance_id, endpoint, now, cancel, exited)
                .await;
        });
        Ok(true)
    }

    /// Runs one job on one instance and records how it ended.
    #[expect(clippy::too_many_arguments, reason = "one job's whole context")]
    async fn run_job(
        self: Arc<Self>,
        model: ModelSpec,
        request: work_request::Model,
        instance_id: Uuid,
        endpoint: String,
        started_at: DateTime<Utc>,
        cancel: Arc<Notify>,
        exited: Option<watch::Receiver<Option<String>>>,
    ) {
        enum Outcome {
            Done(cog::Prediction),
            Failed(CogError),
            TimedOut,
            Cancelled,
            Died(String),
        }
        let term = self.term();
        // Only over READY: a stop that came first is not overwritten.
        let busy = instance::Entity::update_many()
            .col_expr(instance::Column::Status, Expr::value(InstanceStatus::Busy))
            .col_expr(instance::Column::RequestId, Expr::value(request.id))
            .filter(instance::Column::Id.eq(instance_id))
            .filter(instance::Column::Status.eq(InstanceStatus::Ready))
            .exec(&self.db)
            .await;
        if let Err(e) = busy {
            tracing::warn!(instance_id = %instance_id, error = %e, "cannot record instance status");
        }
        self.events
            .record(
                instance_id,
                EventKind::Normal,
                "Assigned",
                &format!("request {}", request.id),
            )
            .await;
        let id = request.id.to_string();
        let timeout = Duration::from_millis(model.request_timeout_ms.max(0) as u64);
        let mut exited = exited;
        let died = async {
            match exited.as_mut() {
                Some(rx) => match rx.wait_for(Option::is_some).await {
                    Ok(v) => v.clone().unwrap_or_default(),
                    Err(_) => "the instance is gone".to_owned(),
                },
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            r = self.cog.predict(&endpoint, &id, &request.input) => match r {
                Ok(p) => Outcome::Done(p),
                Err(e) => Outcome::Failed(e),
            },
            () = tokio::time::sleep(timeout) => Outcome::TimedOut,
            () = cancel.notified() => Outcome::Cancelled,
            detail = died => Outcome::Died(detail),
        };
        self.lock().cancels.remove(&request.id);
        let finished_at = Utc::now();
        let job_ms = (finished_at - started_at).num_milliseconds().max(0);

        // A transport error while the process is gone is a death too.
        let outcome = match outcome {
            Outcome::Failed(CogError::Transport(e)) => {
                // A broken connection is a death when the process ends with
                // it: give the exit a moment to be seen.
                let gone = match exited.as_mut() {
                    Some(rx) => {
                        tokio::time::timeout(Duration::from_secs(1), rx.wait_for(Option::is_some))
                            .await
                            .ok()
                            .and_then(|r| r.ok().and_then(|v| v.clone()))
                    }
                    None => None,
                };
                match gone {
                    Some(detail) => Outcome::Died(detail),
                    None => Outcome::Failed(CogError::Transport(e)),
                }
            }
            other => other,
        };

        let interrupted = matches!(outcome, Outcome::TimedOut | Outcome::Cancelled);
        let ending = match outcome {
            Outcome::Done(p) => Ok(Ending {
                status: if p.succeeded {
                    RequestStatus::Succeeded
                } else {
                    RequestStatus::Failed
                },
                output: p.output,
                error: p.error,
                logs: p.logs,
                job_finished_at: Some(finished_at),
            }),
            Outcome::Failed(e) => {
                // The detail is for administrators, in the instance events.
                let detail = format!("{e:?}");
                self.events
                    .record(instance_id, EventKind::Warning, "JobError", &detail)
                    .await;
                Ok(Ending::without_output(
                    RequestStatus::Failed,
                    e.to_string(),
                    finished_at,
                ))
            }
            Outcome::TimedOut => {
                self.cog.cancel(&endpoint, &id).await;
                let reason = format!("timed out after {} s", timeout.as_secs());
                Ok(Ending::without_output(
                    RequestStatus::Failed,
                    reason,
                    finished_at,
                ))
            }
            Outcome::Cancelled => {
                self.cog.cancel(&endpoint, &id).await;
                let reason = "cancelled".to_owned();
                Ok(Ending::without_output(
                    RequestStatus::Cancelled,
                    reason,
                    finished_at,
                ))
            }
            Outcome::Died(detail) => Err(format!("the instance ended during the job: {detail}")),
        };
        if self.term() != term {
            // This scaler's term ended meanwhile: the shutdown, or the next
            // scaler's recovery, settles the request.
            return;
        }
        let result = match ending {
            Ok(ending) => {
                let status = ending.status;
                self.finish(&request, instance_id, ending)
                    .await
                    .map(|done| Some(done.then_some(status)))
            }
            Err(reason) => self
                .requeue_or_fail(request.id, Some(instance_id), request.attempts + 1, &reason)
                .await
                .map(|()| None),
        };
        match result {
            Ok(Some(Some(status))) => {
                self.metrics.observe_job(&model.id, job_ms);
                if status == RequestStatus::Succeeded {
                    let total_ms = (finished_at - request.created_at).num_milliseconds().max(0);
                    self.metrics.observe_total(&model.id, total_ms);
                }
                if interrupted && !self.wait_idle(&endpoint).await {
                    // The model ignored the cancel: replace the instance
                    // rather than leave it busy with work nobody wants.
                    self.stop_instance(instance_id, "it kept running a cancelled job")
                        .await;
                } else {
                    self.instance_idle(instance_id).await;
                }
            }
            Ok(Some(None)) => {
                // The request was settled elsewhere meanwhile (its instance
                // stopped, the request put back): an instance still marked
                // as running it is free again.
                let still = self.lock().instances.get(&instance_id).is_some_and(|l| {
                    l.status == InstanceStatus::Busy && l.request == Some(request.id)
                });
                if still {
                    self.instance_idle(instance_id).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(request_id = %request.id, error = %e, "cannot record a job's end");
                // Do not leave the instance busy forever: replace it. The
                // request is settled by recovery on the next restart at the
                // latest.
                self.stop_instance(instance_id, "its job's end could not be recorded")
                    .await;
            }
        }
        self.wake();
    }

    /// After a cancel: waits for the instance to say it is idle again.
    async fn wait_idle(&self, endpoint: &str) -> bool {
        let deadline = tokio::time::Instant::now() + CANCEL_GRACE;
        while tokio::time::Instant::now() < deadline {
            if let Ok(cog::Health::Ready) = self.cog.health(endpoint).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Records a request's final status with its job times, if it is still
    /// running on `instance_id`.
    async fn finish(
        &self,
        request: &work_request::Model,
        instance_id: Uuid,
        ending: Ending,
    ) -> Result<bool, DbErr> {
        let Ending {
            status,
            output,
            error,
            logs,
            job_finished_at,
        } = ending;
        // PostgreSQL cannot store NUL characters; whatever a model says is
        // kept without them.
        let output = output.map(without_nul);
        let error = error.map(|e| e.replace('\0', ""));
        let logs = logs.map(|l| l.replace('\0', ""));
        let now = Utc::now();
        let current = work_request::Entity::find_by_id(request.id)
            .one(&self.db)
            .await?;
        let Some(current) = current else {
            return Ok(false);
        };
        let job_ms = match (current.job_started_at, job_finished_at) {
            (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0)),
            _ => None,
        };
        let total_ms = (now - current.created_at).num_milliseconds().max(0);
        let done = work_request::Entity::update_many()
            .col_expr(work_request::Column::Status, Expr::value(status))
            .col_expr(work_request::Column::Output, Expr::value(output))
            .col_expr(work_request::Column::Error, Expr::value(error))
            .col_expr(work_request::Column::Logs, Expr::value(logs))
            .col_expr(
                work_request::Column::JobFinishedAt,
                Expr::value(job_finished_at),
            )
            .col_expr(work_request::Column::CompletedAt, Expr::value(now))
            .col_expr(work_request::Column::JobMs, Expr::value(job_ms))
            .col_expr(work_request::Column::TotalMs, Expr::value(total_ms))
            .filter(work_request::Column::Id.eq(request.id))
            .filter(work_request::Column::Status.eq(RequestStatus::Running))
            .filter(work_request::Column::InstanceId.eq(instance_id))
            .exec(&self.db)
            .await?;
        if done.rows_affected == 0 {
            // Settled elsewhere meanwhile (re-queued by a stop).
            return Ok(false);
        }
        tracing::info!(request_id = %request.id, model_id = %request.model_id, status = ?status, job_ms, total_ms, "request finished");
        self.announce(request.id, status);
        self.metrics.request_finished(&request.model_id, status);
        Ok(true)
    }

    /// Puts a running request back in the queue, or fails it when it already
    /// went back once.
    ///
    /// `instance`, when given, is the instance the job ran on: the change
    /// applies only while the request is still running there, so a late
    /// report about an old attempt cannot touch a newer one.
    pub(crate) async fn requeue_or_fail(
        &self,
        id: Uuid,
        instance: Option<Uuid>,
        attempts: i32,
        reason: &str,
    ) -> Result<(), DbErr> {
        if attempts < MAX_ATTEMPTS {
            let done = still_running(back_to_queue(), id, instance)
                .exec(&self.db)
                .await?;
            if done.rows_affected == 0 {
                return Ok(());
            }
            tracing::warn!(request_id = %id, reason, "request re-queued");
            self.announce(id, RequestStatus::Queued);
        } else {
            let now = Utc::now();
            let row = work_request::Entity::find_by_id(id).one(&self.db).await?;
            let total_ms = row
                .as_ref()
                .map(|r| (now - r.created_at).num_milliseconds().max(0));
            let model = row.map(|r| r.model_id);
            let failed = work_request::Entity::update_many()
                .col_expr(
                    work_request::Column::Status,
                    Expr::value(RequestStatus::Failed),
                )
                .col_expr(work_request::Column::Error, Expr::value(reason.to_owned()))
                .col_expr(work_request::Column::CompletedAt, Expr::value(now))
                .col_expr(work_request::Column::TotalMs, Expr::value(total_ms));
            let done = still_running(failed, id, instance).exec(&self.db).await?;
            if done.rows_affected == 0 {
                return Ok(());
            }
            tracing::warn!(request_id = %id, reason, "request failed after its retry");
            self.announce(id, RequestStatus::Failed);
            if let Some(model) = model {
                self.metrics.request_finished(&model, RequestStatus::Failed);
            }
        }
        Ok(())
    }

    /// Fails every queued request of a model with `reason`.
    async fn fail_queued(&self, model_id: &str, reason: &str) -> Result<(), DbErr> {
        let ids: Vec<Uuid> = self
            .queued(model_id)
            .select_only()
            .column(work_request::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        let now = Utc::now();
        for id in ids {
            let done = work_request::Entity::update_many()
                .col_expr(
                    work_request::Column::Status,
                    Expr::value(RequestStatus::Failed),
                )
                .col_expr(work_request::Column::Error, Expr::value(reason.to_owned()))
                .col_expr(work_request::Column::CompletedAt, Expr::value(now))
                .filter(work_request::Column::Id.eq(id))
                .filter(work_request::Column::Status.eq(RequestStatus::Queued))
                .exec(&self.db)
                .await?;
            if done.rows_affected > 0 {
                self.announce(id, RequestStatus::Failed);
                self.metrics
                    .request_finished(model_id, RequestStatus::Failed);
            }
        }
        tracing::warn!(
            model_id,
            reason,
            "queued requests failed: instances keep failing to start"
        );
        Ok(())
    }

    /// Records an instance and starts it in the background.
    async fn start_instance(self: &Arc<Self>, model: &ModelSpec) -> Result<(), DbErr> {
        let id = Uuid::now_v7();
        let now = Utc::now();
        instance::Entity::insert(instance::ActiveModel {
            id: Set(id),
            model_id: Set(model.id.clone()),
            backend: Set(self.backend.name().to_owned()),
            handle: Set(None),
            node: Set(None),
            status: Set(InstanceStatus::Pending),
            status_detail: Set(None),
            request_id: Set(None),
            owner: Set(Some(self.run_id.clone())),
            created_at: Set(now),
            ready_at: Set(None),
            idle_since: Set(None),
            stopped_at: Set(None),
            stop_reason: Set(None),
        })
        .exec(&self.db)
        .await?;
        self.lock().instances.insert(id, Live::pending(&model.id));
        self.board.created(InstanceRecord {
            id,
            model_id: model.id.clone(),
            backend: self.backend.name().to_owned(),
            handle: None,
            node: None,
            status: InstanceStatus::Pending,
            status_detail: None,
            request_id: None,
            created_at: now,
            ready_at: None,
            stopped_at: None,
            stop_reason: None,
        });
        tracing::info!(instance_id = %id, model_id = %model.id, "instance starting");
        let fleet = self.clone();
        let model = model.clone();
        tokio::spawn(async move { fleet.bring_up(model, id, Origin::New).await });
        Ok(())
    }

    /// Takes over an instance an earlier scaler left running (see
    /// [`Backend::hands_over`]); it serves once the backend has found it and
    /// any job it still ran is cancelled.
    pub(super) fn adopt_instance(self: &Arc<Self>, model: &ModelSpec, row: instance::Model) {
        let id = row.id;
        let running = row.request_id;
        self.lock().instances.insert(id, Live::pending(&model.id));
        self.board.created(board::InstanceRecord::from(row));
        tracing::info!(instance_id = %id, model_id = %model.id, "adopting instance");
        let fleet = self.clone();
        let model = model.clone();
        tokio::spawn(async move { fleet.bring_up(model, id, Origin::Adopted { running }).await });
    }

    /// Ends an instance whose start (or adoption) finished when it was no
    /// longer wanted, unless it outlives the term it was begun in and that
    /// term has ended: then it is the next scaler's to adopt or sweep.
    async fn discard(&self, id: Uuid, term: u64) {
        if self.term() == term || !self.backend.hands_over() {
            self.backend.stop(id).await;
        }
    }

    /// An instance is PENDING until the backend has placed it (a pod bound
    /// to a node), then STARTING.
    async fn starting_when_placed(&self, id: Uuid, placed: tokio::sync::oneshot::Receiver<()>) {
        if placed.await.is_err() {
            return;
        }
        let pending = match self.lock().instances.get_mut(&id) {
            Some(live) if live.status == InstanceStatus::Pending => {
                live.status = InstanceStatus::Starting;
                true
            }
            _ => false,
        };
        if pending {
            self.set_instance(id, InstanceStatus::Starting, None, None)
                .await;
        }
    }

    async fn bring_up(self: Arc<Self>, model: ModelSpec, id: Uuid, origin: Origin) {
        let term = self.term();
        let result = match origin {
            Origin::New => {
                self.events
                    .record(id, EventKind::Normal, "Starting", "starting the instance")
                    .await;
                let (placed, on_placed) = Placed::new();
                let (started, ()) = tokio::join!(
                    self.backend.start(&model, id, placed),
                    self.starting_when_placed(id, on_placed)
                );
                started
            }
            Origin::Adopted { running } => {
                self.set_instance(id, InstanceStatus::Pending, None, None)
                    .await;
                self.events
                    .record(
                        id,
                        EventKind::Normal,
                        "Adopting",
                        "taking over from an earlier scaler",
                    )
                    .await;
                let (placed, on_placed) = Placed::new();
                let (adopted, ()) = tokio::join!(
                    self.backend.adopt(&model, id, placed),
                    self.starting_when_placed(id, on_placed)
                );
                match adopted {
                    Ok(started) => match running {
                        // Its job went back to the queue: cancel it there.
                        Some(request) => {
                            self.cog
                                .cancel(&started.endpoint, &request.to_string())
                                .await;
                            if self.wait_idle(&started.endpoint).await {
                                Ok(started)
                            } else {
                                self.discard(id, term).await;
                                Err("it kept running a job from before the restart"
                                    .to_owned()
                                    .into())
                            }
                        }
                        None => Ok(started),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        if self.term() != term {
            // This scaler's term ended meanwhile. An instance that outlives
            // it is the next scaler's (adopted or swept); any other ends.
            if result.is_ok() {
                self.discard(id, term).await;
            }
            return;
        }
        match result {
            Ok(started) => {
                let now = Utc::now();
                let starting = {
                    let mut state = self.lock();
                    state.start_failures.remove(&model.id);
                    state.instances.get(&id).is_some_and(|l| {
                        matches!(l.status, InstanceStatus::Pending | InstanceStatus::Starting)
                    })
                };
                if !starting {
                    self.discard(id, term).await;
                    return;
                }
                // Recorded before the scaler can see it ready, so that a first
                // assignment's write always lands after this one.
                let detail = started.detail.clone();
                let written = instance::Entity::update_many()
                    .col_expr(instance::Column::Status, Expr::value(InstanceStatus::Ready))
                    .col_expr(
                        instance::Column::Handle,
                        Expr::value(started.handle.clone()),
                    )
                    .col_expr(instance::Column::Node, Expr::value(started.node.clone()))
                    .col_expr(instance::Column::ReadyAt, Expr::value(now))
                    .col_expr(instance::Column::IdleSince, Expr::value(now))
                    .col_expr(instance::Column::StatusDetail, Expr::value(detail.clone()))
                    .filter(instance::Column::Id.eq(id))
                    .exec(&self.db)
                    .await;
                if let Err(e) = written {
                    tracing::warn!(instance_id = %id, error = %e, "cannot record instance ready");
                }
                let ready = {
                    let mut state = self.lock();
                    match state.instances.get_mut(&id) {
                        Some(live)
                            if matches!(
                                live.status,
                                InstanceStatus::Pending | InstanceStatus::Starting
                            ) =>
                        {
                            live.status = InstanceStatus::Ready;
                            live.endpoint = Some(started.endpoint.clone());
                            live.idle_since = tokio::time::Instant::now();
                            live.exited = Some(started.exited.clone());
                            self.board.update(id, ChangeKind::Status, |r| {
                                r.status = InstanceStatus::Ready;
                                r.handle = Some(started.handle.clone());
                                r.node = started.node.clone();
                                r.ready_at = Some(now);
                                r.status_detail = Some(detail);
                            });
                            true
                        }
                        _ => false,
                    }
                };
                if !ready {
                    // Stopped (or handed over) while its readiness was being
                    // recorded.
                    self.discard(id, term).await;
                    return;
                }
                self.events
                    .record(
                        id,
                        EventKind::Normal,
                        "Ready",
                        &format!("serving at {}", started.endpoint),
                    )
                    .await;
                tracing::info!(instance_id = %id, model_id = %model.id, handle = %started.handle, "instance ready");
                let fleet = self.clone();
                let mut exited = started.exited;
                tokio::spawn(async move {
                    let detail = match exited.wait_for(Option::is_some).await {
                        Ok(v) => v.clone().unwrap_or_default(),
                        Err(_) => "ended".to_owned(),
                    };
                    fleet.on_exit(id, &detail).await;
                });
            }
            Err(failure) => {
                let reason = failure.detail;
                let stopped_meanwhile = self
                    .lock()
                    .instances
                    .get(&id)
                    .is_none_or(|l| l.status == InstanceStatus::Stopping);
                if stopped_meanwhile {
                    // Stopped (or handed over) while starting: the stop
                    // records the end; this is no failure of the model.
                    self.wake();
                    return;
                }
                if let Origin::Adopted { .. } = origin {
                    // Gone (or given up) after the scaler changed hands: no
                    // failure of the model's start either.
                    let reason = format!("after the scaler changed hands: {reason}");
                    self.events
                        .record(id, EventKind::Normal, "NotAdopted", &reason)
                        .await;
                    self.set_stopped(id, InstanceStatus::Stopped, &reason).await;
                    self.lock().instances.remove(&id);
                    tracing::info!(instance_id = %id, model_id = %model.id, reason = %reason, "instance not adopted");
                    self.wake();
                    return;
                }
                {
                    let mut state = self.lock();
                    let entry =
                        state
                            .start_failures
                            .entry(model.id.clone())
                            .or_insert(StartFailures {
                                count: 0,
                                last: tokio::time::Instant::now(),
                                reason: None,
                                hopeless: false,
                            });
                    entry.count += 1;
                    entry.last = tokio::time::Instant::now();
                    entry.reason = failure.public;
                    entry.hopeless = failure.hopeless;
                    if let Some(live) = state.instances.get_mut(&id) {
                        live.status = InstanceStatus::Failed;
                    }
                }
                self.events
                    .record(id, EventKind::Warning, "StartFailed", &reason)
                    .await;
                self.set_stopped(id, InstanceStatus::Failed, &reason).await;
                self.lock().instances.remove(&id);
                tracing::warn!(instance_id = %id, model_id = %model.id, reason = %reason, "instance failed to start");
            }
        }
        self.wake();
    }

    /// The instance's process ended. Expected when it was being stopped;
    /// otherwise it failed, and a job on it is handled by its job task.
    async fn on_exit(self: &Arc<Self>, id: Uuid, detail: &str) {
        let status = self.lock().instances.get(&id).map(|l| l.status);
        match status {
            Some(InstanceStatus::Stopping) | None => {}
            Some(_) => {
                self.set_status(id, InstanceStatus::Failed);
                let reason = format!("ended unexpectedly: {detail}");
                self.events
                    .record(id, EventKind::Warning, "Died", &reason)
                    .await;
                self.set_stopped(id, InstanceStatus::Failed, &reason).await;
                tracing::warn!(instance_id = %id, reason = %reason, "instance ended unexpectedly");
                // Let a job task on it see the death before forgetting it.
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.lock().instances.remove(&id);
                self.backend.stop(id).await;
                self.wake();
            }
        }
    }

    /// Stops an instance through the backend.
    async fn stop_instance(self: &Arc<Self>, id: Uuid, reason: &str) {
        self.set_status(id, InstanceStatus::Stopping);
        self.set_instance(id, InstanceStatus::Stopping, None, None)
            .await;
        self.events
            .record(id, EventKind::Normal, "Stopping", reason)
            .await;
        tracing::info!(instance_id = %id, reason, "instance stopping");
        let fleet = self.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            fleet.backend.stop(id).await;
            fleet
                .set_stopped(id, InstanceStatus::Stopped, &reason)
                .await;
            fleet.lock().instances.remove(&id);
            fleet.wake();
        });
    }

    /// A job ended and the instance is free. Recorded before the scaler
    /// can see it as ready, so that a new assignment's write always lands
    /// after this one.
    async fn instance_idle(&self, id: Uuid) {
        let busy = self
            .lock()
            .instances
            .get(&id)
            .is_some_and(|l| l.status == InstanceStatus::Busy);
        if !busy {
            return;
        }
        self.write_instance(id, InstanceStatus::Ready, None, None)
            .await;
        let mut state = self.lock();
        if let Some(live) = state.instances.get_mut(&id)
            && live.status == InstanceStatus::Busy
        {
            live.status = InstanceStatus::Ready;
            live.request = None;
            live.idle_since = tokio::time::Instant::now();
            self.publish_status(id, InstanceStatus::Ready, None, None);
        }
    }

    fn set_status(&self, id: Uuid, status: InstanceStatus) {
        if let Some(live) = self.lock().instances.get_mut(&id) {
            live.status = status;
        }
    }

    /// Announces a status change (with the assigned request, if any), then
    /// records it.
    async fn set_instance(
        &self,
        id: Uuid,
        status: InstanceStatus,
        request: Option<Uuid>,
        detail: Option<Value>,
    ) {
        self.publish_status(id, status, request, detail.clone());
        self.write_instance(id, status, request, detail).await;
    }

    /// The board's side of a status change.
    fn publish_status(
        &self,
        id: Uuid,
        status: InstanceStatus,
        request: Option<Uuid>,
        detail: Option<Value>,
    ) {
        let kind = if request.is_some() {
            ChangeKind::Assigned
        } else {
            ChangeKind::Status
        };
        self.backend.assigned(id, request);
        self.board.update(id, kind, |r| {
            r.status = status;
            r.request_id = request;
            if detail.is_some() {
                r.status_detail = detail;
            }
        });
    }

    /// The database's side of a status change.
    async fn write_instance(
        &self,
        id: Uuid,
        status: InstanceStatus,
        request: Option<Uuid>,
        detail: Option<Value>,
    ) {
        let mut update = instance::Entity::update_many()
            .col_expr(instance::Column::Status, Expr::value(status))
            .col_expr(instance::Column::RequestId, Expr::value(request));
        if status == InstanceStatus::Ready {
            update = update.col_expr(instance::Column::IdleSince, Expr::value(Utc::now()));
        }
        if detail.is_some() {
            update = update.col_expr(instance::Column::StatusDetail, Expr::value(detail));
        }
        if let Err(e) = update
            .filter(instance::Column::Id.eq(id))
            .exec(&self.db)
            .await
        {
            tracing::warn!(instance_id = %id, error = %e, "cannot record instance status");
        }
    }

    /// Records that an instance has ended, how and why, and announces it.
    async fn set_stopped(&self, id: Uuid, status: InstanceStatus, reason: &str) {
        let now = Utc::now();
        let exit = self
            .lock()
            .instances
            .get(&id)
            .and_then(|l| l.exited.as_ref().and_then(|rx| rx.borrow().clone()));
        let detail = self.board.get(id).map(|r| {
            let mut detail = r
                .status_detail
                .clone()
                .unwrap_or_else(|| serde_json::json!({}));
            if let (Some(map), Some(exit)) = (detail.as_object_mut(), &exit) {
                map.insert("exit".to_owned(), Value::from(exit.clone()));
            }
            detail
        });
        let mut update = instance::Entity::update_many()
            .col_expr(instance::Column::Status, Expr::value(status))
            .col_expr(
                instance::Column::RequestId,
                Expr::value(Option::<Uuid>::None),
            )
            .col_expr(instance::Column::StoppedAt, Expr::value(now))
            .col_expr(instance::Column::StopReason, Expr::value(reason.to_owned()));
        if detail.is_some() {
            update = update.col_expr(instance::Column::StatusDetail, Expr::value(detail.clone()));
        }
        let result = update
            .filter(instance::Column::Id.eq(id))
            .exec(&self.db)
            .await;
        if let Err(e) = result {
            tracing::warn!(instance_id = %id, error = %e, "cannot record instance stop");
        }
        self.board.update(id, ChangeKind::Stopped, |r| {
            r.status = status;
            r.request_id = None;
            r.stopped_at = Some(now);
            r.stop_reason = Some(reason.to_owned());
            if detail.is_some() {
                r.status_detail = detail;
            }
        });
    }

    /// On shutdown: running jobs go back to the queue (a restart picks them
    /// up) and every instance is stopped, or handed over when the backend's
    /// instances outlive the server.
    async fn shutdown(self: &Arc<Self>, graceful: bool) {
        if self.backend.hands_over() {
            self.hand_over(graceful).await;
            return;
        }
        let (ids, running): (Vec<Uuid>, Vec<(Uuid, Uuid)>) = {
            let state = self.lock();
            (
                state.instances.keys().copied().collect(),
                state
                    .instances
                    .iter()
                    .filter_map(|(id, l)| l.request.map(|r| (r, *id)))
                    .collect(),
            )
        };
        for (request, instance) in running {
            // Not the job's fault: its attempt is given back.
            let requeued = back_to_queue()
                .col_expr(work_request::Column::Attempts, attempts_plus(-1))
                .filter(work_request::Column::Id.eq(request))
                .filter(work_request::Column::Status.eq(RequestStatus::Running))
                .filter(work_request::Column::InstanceId.eq(instance))
                .exec(&self.db)
                .await;
            if let Err(e) = requeued {
                tracing::error!(request_id = %request, error = %e, "cannot put a running request back in the queue");
            }
        }
        let stops = ids.into_iter().map(|id| {
            let fleet = self.clone();
            async move {
                fleet.set_status(id, InstanceStatus::Stopping);
                fleet.backend.stop(id).await;
                fleet
                    .set_stopped(id, InstanceStatus::Stopped, "server shut down")
                    .await;
                fleet.lock().instances.remove(&id);
            }
        });
        futures_util::future::join_all(stops).await;
        // Anything the backend still runs that the scaler lost track of.
        for id in self.backend.owned() {
            self.backend.stop(id).await;
        }
        tracing::info!("all instances stopped");
    }
}

impl Fleet {
    /// Leaves every instance running for the next scaler, which adopts
    /// them: their records stay as they are (a busy one keeps its request,
    /// so that the next scaler cancels that job before using it), and the
    /// backend forgets the instances. On a `graceful` shutdown, still
    /// holding the lock, running jobs also go back to the queue with their
    /// attempt given back and are cancelled; after the lock was lost the
    /// next scaler may be running already, so nothing is written and its
    /// recovery does that. An instance being stopped is stopped still.
    async fn hand_over(self: &Arc<Self>, graceful: bool) {
        let live: Vec<(Uuid, Live)> = {
            let mut state = self.lock();
            state.cancels.clear();
            state.instances.drain().collect()
        };
        let mut requeued = 0;
        let mut cancels = Vec::new();
        for (id, l) in &live {
            if l.status != InstanceStatus::Stopping {
                self.backend.release(*id);
            }
            if !graceful {
                continue;
            }
            if let Some(request) = l.request {
                let done = back_to_queue()
                    .col_expr(work_request::Column::Attempts, attempts_plus(-1))
                    .filter(work_request::Column::Id.eq(request))
                    .filter(work_request::Column::Status.eq(RequestStatus::Running))
                    .filter(work_request::Column::InstanceId.eq(*id))
                    .exec(&self.db)
                    .await;
                match done {
                    Ok(r) if r.rows_affected > 0 => {
                        requeued += 1;
                        self.announce(request, RequestStatus::Queued);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(request_id = %request, error = %e, "cannot put a running request back in the queue");
                    }
                }
                if let Some(endpoint) = l.endpoint.clone() {
                    let cog = self.cog.clone();
                    cancels.push(async move { cog.cancel(&endpoint, &request.to_string()).await });
                }
            }
        }
        futures_util::future::join_all(cancels).await;
        tracing::info!(
            instances = live.len(),
            requests_requeued = requeued,
            "instances handed over to the next scaler"
        );
    }
}

/// An update that puts a request back in the queue, as if never
/// dispatched; callers add their filters.
fn back_to_queue() -> sea_orm::UpdateMany<work_request::Entity> {
    work_request::Entity::update_many()
        .col_expr(
            work_request::Column::Status,
            Expr::value(RequestStatus::Queued),
        )
        .col_expr(
            work_request::Column::InstanceId,
            Expr::value(Option::<Uuid>::None),
        )
        .col_expr(
            work_request::Column::JobStartedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            work_request::Column::QueueMs,
            Expr::value(Option::<i64>::None),
        )
}

/// Narrows an update to request `id` while it is still running (on
/// `instance`, when given).
fn still_running(
    update: sea_orm::UpdateMany<work_request::Entity>,
    id: Uuid,
    instance: Option<Uuid>,
) -> sea_orm::UpdateMany<work_request::Entity> {
    update
        .filter(work_request::Column::Id.eq(id))
        .filter(work_request::Column::Status.eq(RequestStatus::Running))
        .apply_if(instance, |q, v| {
            q.filter(work_request::Column::InstanceId.eq(v))
        })
}

/// `attempts + n`, in SQL.
fn attempts_plus(n: i32) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::ExprTrait;
    Expr::col(work_request::Column::Attempts).add(n)
}

/// The JSON value with every NUL character removed from its strings.
fn without_nul(value: Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "")),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.replace('\0', ""), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}
