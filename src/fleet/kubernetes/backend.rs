//! The Kubernetes backend: one pod per instance, followed by two watches
//! for the whole namespace (this server's pods, by label, and events), not
//! by polling.
//!
//! ```text
//!   start ──create pod──▶ API server ──▶ scheduler, kubelet
//!     ▲                        │
//!     │ observed stage         │ watch pods (managed-by, scope labels)
//!     └──── pods task ◀────────┤
//!                              │ watch events (about tracked pods)
//!           events task ◀──────┘──▶ instance events, with the raw event
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use uuid::Uuid;

use super::lease::LeaseLock;
use super::pod::{INSTANCE_LABEL, MANAGED_BY, PodSettings, REQUEST_ANNOTATION, pod_name};
use super::status::{Observed, Stage, observe};
use crate::config::KubernetesConfig;
use crate::fleet::backend::{Backend, EventKind, EventLog, Placed, StartError, Started, scope_tag};
use crate::fleet::cog::{CogClient, Health};
use crate::models::ModelSpec;

/// Names the database a server records instances in: its pods carry it,
/// so two deployments sharing a namespace leave each other's pods alone.
pub const SCOPE_LABEL: &str = "modelfleet.io/scope";

/// A digest of the model's pod settings the pod was made from: a scaler
/// adopts only pods made from the settings it has now.
pub const SETTINGS_ANNOTATION: &str = "modelfleet.io/settings-digest";

fn settings_digest(settings: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    // serde_json's maps are sorted, so equal settings print the same.
    Sha256::digest(settings.to_string().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One pod the backend runs.
struct Tracked {
    /// Tells this tracking of the instance from a later one (after it was
    /// released and adopted again): a start or adoption acts only on its
    /// own.
    generation: u64,
    pod: String,
    /// The create call returned: a relist without the pod means it is gone.
    created: bool,
    /// Container restarts when the pod first served; more mean it died
    /// and restarted in place.
    served_restarts: Option<i32>,
    last_detail: Option<serde_json::Value>,
    observed: watch::Sender<Option<Observed>>,
    /// The instance has ended: its pod failed, was deleted, or restarted.
    exited: watch::Sender<Option<String>>,
    /// The pod object is gone from the API server.
    gone: watch::Sender<bool>,
    /// The request it runs, for the pod's annotation.
    request: watch::Sender<Option<Uuid>>,
    /// Set by the node autoscaler when no node could ever hold the pod.
    unplaceable: watch::Sender<Option<String>>,
}

type Tracking = Arc<Mutex<HashMap<Uuid, Tracked>>>;

fn lock(tracked: &Tracking) -> std::sync::MutexGuard<'_, HashMap<Uuid, Tracked>> {
    tracked.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct KubernetesBackend {
    client: Client,
    pods: Api<Pod>,
    config: KubernetesConfig,
    scope: String,
    events: Arc<EventLog>,
    tracked: Tracking,
    generations: std::sync::atomic::AtomicU64,
    cog: CogClient,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubernetesBackend {
    /// Connects to the cluster (at `api_url`, or as kube-rs infers) and
    /// starts the pod and event watches. `scope` names the database this
    /// server records instances in (as for the local backend).
    pub async fn connect(
        config: &KubernetesConfig,
        scope: &str,
        events: Arc<EventLog>,
    ) -> anyhow::Result<Self> {
        let mut kube_config = match &config.api_url {
            Some(url) => kube::Config::new(url.parse()?),
            None => kube::Config::infer()
                .await
                .map_err(|e| anyhow::anyhow!("no Kubernetes credentials found: {e}"))?,
        };
        if let Some(namespace) = &config.namespace {
            kube_config.default_namespace = namespace.clone();
        }
        let client = Client::try_from(kube_config)?;
        Ok(Self::new(client, config.clone(), scope, events))
    }

    pub fn new(
        client: Client,
        config: KubernetesConfig,
        scope: &str,
        events: Arc<EventLog>,
    ) -> Self {
        let scope = scope_tag(scope);
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        let event_api: Api<Event> = Api::default_namespaced(client.clone());
        let tracked: Tracking = Arc::default();
        let selector = format!("{MANAGED_BY}=modelfleet,{SCOPE_LABEL}={scope}");
        let tasks = vec![
            tokio::spawn(follow_pods(
                pods.clone(),
                selector,
                tracked.clone(),
                events.clone(),
            )),
            tokio::spawn(follow_events(event_api, tracked.clone(), events.clone())),
        ];
        Self {
            client,
            pods,
            config,
            scope,
            events,
            tracked,
            generations: std::sync::atomic::AtomicU64::new(0),
            cog: CogClient::new(),
            tasks,
        }
    }

    /// The client it talks to the cluster with.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A handle through which the node autoscaler tells starting pods
    /// that no node could ever hold them.
    pub fn placement(&self) -> Placement {
        Placement(self.tracked.clone())
    }

    /// This server's side of the scaler's election: a Lease named after
    /// the database (so that deployments sharing a namespace elect apart),
    /// held as the host name (the pod's name in a cluster) and a random
    /// suffix.
    pub fn lease(&self) -> LeaseLock {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "modelfleet".to_owned());
        let suffix = Uuid::new_v4().simple().to_string();
        LeaseLock::new(
            self.client.clone(),
            &format!("modelfleet-scaler-{}", self.scope),
            &format!("{host}-{}", &suffix[..8]),
            Duration::from_secs(self.config.lease_duration_secs),
        )
    }

    /// Starts following the pod of an instance, before it exists (so that
    /// no watch event about it is lost) or, when adopting, as it is.
    fn track(
        &self,
        instance_id: Uuid,
        pod: &str,
        created: bool,
    ) -> (watch::Receiver<Option<Observed>>, u64) {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (observed_tx, observed) = watch::channel(None);
        let tracked = Tracked {
            generation,
            pod: pod.to_owned(),
            created,
            served_restarts: None,
            last_detail: None,
            observed: observed_tx,
            exited: watch::channel(None).0,
            gone: watch::channel(false).0,
            request: watch::channel(None).0,
            unplaceable: watch::channel(None).0,
        };
        if created {
            self.annotate_from(&tracked);
        }
        lock(&self.tracked).insert(instance_id, tracked);
        (observed, generation)
    }

    /// Forgets the instance if `generation` is still its current tracking;
    /// true when it was.
    fn untrack(&self, instance_id: Uuid, generation: u64) -> bool {
        let mut tracked = lock(&self.tracked);
        let current = tracked
            .get(&instance_id)
            .is_some_and(|t| t.generation == generation);
        if current {
            tracked.remove(&instance_id);
        }
        current
    }

    /// Starts the task keeping the pod's request annotation.
    fn annotate_from(&self, tracked: &Tracked) {
        tokio::spawn(annotate(
            self.pods.clone(),
            tracked.pod.clone(),
            tracked.request.subscribe(),
        ));
    }

    /// What `start` and `adopt` return: the instance's end comes through
    /// `exited`.
    fn started(
        &self,
        instance_id: Uuid,
        generation: u64,
        pod: String,
        endpoint: String,
        seen: Observed,
    ) -> Result<Started, StartError> {
        let exited = lock(&self.tracked)
            .get(&instance_id)
            .filter(|t| t.generation == generation)
            .map(|t| t.exited.subscribe())
            .ok_or_else(|| StartError::from("stopped while starting".to_owned()))?;
        let node = seen.detail["node"].as_str().map(str::to_owned);
        Ok(Started {
            endpoint,
            handle: pod,
            node,
            detail: seen.detail,
            exited,
        })
    }

    fn selector(&self) -> String {
        format!("{MANAGED_BY}=modelfleet,{SCOPE_LABEL}={}", self.scope)
    }

    /// Deletes the pod and forgets it; used when a start is given up. A pod
    /// no longer tracked was stopped or handed over meanwhile, and is left
    /// to whoever did that.
    async fn abandon(&self, instance_id: Uuid, generation: u64, pod: &str) {
        if !self.untrack(instance_id, generation) {
            return;
        }
        match self.pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            // Left for the next start-up's sweep of untracked pods.
            Err(e) => {
                tracing::warn!(instance_id = %instance_id, pod = %pod, error = %e, "cannot delete pod");
            }
        }
    }

    /// Waits until the pod runs and its model answers READY, the pod fails
    /// for good, or the start times out: one deadline for scheduling, pull,
    /// container start and the model's setup. `busy_serves`: a model busy
    /// with a job counts as serving (an adopted pod may be).
    async fn wait_serving(
        &self,
        instance_id: Uuid,
        port: u16,
        mut observed: watch::Receiver<Option<Observed>>,
        busy_serves: bool,
        mut placed: Placed,
    ) -> Result<(String, Observed), StartError> {
        let timeout = Duration::from_secs(self.config.start_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_detail = None;
        let mut last_wait: Option<String> = None;
        let mut unplaceable = lock(&self.tracked)
            .get(&instance_id)
            .map(|t| t.unplaceable.subscribe())
            .ok_or_else(|| StartError::from("stopped while starting".to_owned()))?;
        loop {
            if let Some(reason) = unplaceable.borrow_and_update().clone() {
                return Err(StartError::hopeless(&reason));
            }
            let seen = observed.borrow_and_update().clone();
            let mut serving = None;
            if let Some(seen) = seen {
                if last_detail.as_ref() != Some(&seen.detail) {
                    last_detail = Some(seen.detail.clone());
                    self.events.detail(instance_id, seen.detail.clone()).await;
                }
                if !seen.detail["node"].is_null() {
                    placed.now();
                }
                match &seen.stage {
                    Stage::Serving { ip } => serving = Some((ip.clone(), seen.clone())),
                    Stage::Ended { reason } => {
                        return Err(StartError::public(
                            format!("the pod ended: {reason}"),
                            reason,
                        ));
                    }
                    Stage::Troubled { reason, restarts } => {
                        if self.gives_up(reason, *restarts) {
                            let detail = format!("the pod cannot start: {reason}");
                            return Err(StartError::public(detail, reason));
                        }
                        last_wait = Some(reason.clone());
                    }
                    Stage::Waiting { reason } => last_wait.clone_from(reason),
                }
            }
            // A running container may still be setting its model up: ask
            // the model, and keep watching the pod meanwhile.
            if let Some((ip, seen)) = serving {
                let endpoint = format!("http://{ip}:{port}");
                match self.cog.health(&endpoint).await {
                    Ok(Health::Ready) => return Ok((endpoint, seen)),
                    Ok(Health::Busy) if busy_serves => return Ok((endpoint, seen)),
                    // The model's own words stay with the operators.
                    Ok(Health::SetupFailed(detail)) => {
                        return Err(format!("the model's setup failed: {detail}").into());
                    }
                    _ => last_wait = Some("the model's setup".to_owned()),
                }
            }
            tokio::select! {
                changed = observed.changed() => {
                    if changed.is_err() {
                        return Err("the backend stopped".to_owned().into());
                    }
                }
                Ok(()) = unplaceable.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let waiting = last_wait.unwrap_or_else(|| "the pod".to_owned());
                let detail = format!(
                    "not ready within {} s (waiting for: {waiting})",
                    timeout.as_secs()
                );
                return Err(StartError::public(detail.clone(), &detail));
            }
        }
    }

    /// A pull that failed is retried once (its back-off ends the start); a
    /// crash loop gets `max_restarts`; an invalid image or container
    /// configuration ends it at once.
    fn gives_up(&self, reason: &str, restarts: i32) -> bool {
        if matches!(reason, "CrashLoopBackOff" | "OOMKilled") {
            u32::try_from(restarts).unwrap_or(0) >= self.config.max_restarts
        } else {
            reason != "ErrImagePull"
        }
    }
}

/// See [`KubernetesBackend::placement`].
#[derive(Clone)]
pub struct Placement(Tracking);

impl Placement {
    /// No node could ever hold `instance_id`'s pod, for `reason`: its
    /// start fails with that reason. True when the instance was starting.
    pub fn cannot_place(&self, instance_id: Uuid, reason: &str) -> bool {
        match lock(&self.0).get(&instance_id) {
            Some(t) => {
                t.unplaceable.send_replace(Some(reason.to_owned()));
                true
            }
            None => false,
        }
    }
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait::async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn start(
        &self,
        model: &ModelSpec,
        instance_id: Uuid,
        placed: Placed,
    ) -> Result<Started, StartError> {
        let Some(raw) = model.kubernetes.as_ref() else {
            return Err(format!("model {} has no kubernetes settings", model.id).into());
        };
        let settings =
            PodSettings::parse(raw).map_err(|e| format!("bad kubernetes settings: {e:?}"))?;
        let mut pod = settings.pod(&model.id, instance_id);
        if let Some(labels) = pod.metadata.labels.as_mut() {
            labels.insert(SCOPE_LABEL.to_owned(), self.scope.clone());
        }
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(SETTINGS_ANNOTATION.to_owned(), settings_digest(raw));
        let name = pod_name(&model.id, instance_id);
        let (observed, generation) = self.track(instance_id, &name, false);
        match self.pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                if let Some(t) = lock(&self.tracked).get_mut(&instance_id)
                    && t.generation == generation
                {
                    t.created = true;
                    self.annotate_from(t);
                }
            }
            Err(e) => {
                // A refusal created nothing; a lost answer may have.
                if !matches!(&e, kube::Error::Api(s) if s.code < 500) {
                    let _ = self.pods.delete(&name, &DeleteParams::default()).await;
                }
                self.untrack(instance_id, generation);
                return Err(format!("the pod was not created: {e}").into());
            }
        }
        tracing::info!(instance_id = %instance_id, model_id = %model.id, pod = %name, "pod created");
        self.events
            .record(
                instance_id,
                EventKind::Normal,
                "PodCreated",
                &format!("pod {name}"),
            )
            .await;
        let (endpoint, seen) = match self
            .wait_serving(instance_id, settings.port, observed, false, placed)
            .await
        {
            Ok(serving) => serving,
            Err(reason) => {
                self.abandon(instance_id, generation, &name).await;
                return Err(reason);
            }
        };
        self.started(instance_id, generation, name, endpoint, seen)
    }

    fn hands_over(&self) -> bool {
        true
    }

    async fn adopt(
        &self,
        model: &ModelSpec,
        instance_id: Uuid,
        placed: Placed,
    ) -> Result<Started, StartError> {
        let Some(raw) = model.kubernetes.as_ref() else {
            return Err(format!("model {} has no kubernetes settings", model.id).into());
        };
        let settings =
            PodSettings::parse(raw).map_err(|e| format!("bad kubernetes settings: {e:?}"))?;
        let name = pod_name(&model.id, instance_id);
        let (observed, generation) = self.track(instance_id, &name, true);
        // Listed by its instance label (a `get` would need one more verb).
        let listed = self
            .pods
            .list(&ListParams::default().labels(&format!("{INSTANCE_LABEL}={instance_id}")))
            .await;
        let pod = match listed {
            Ok(list) => list
                .items
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some(name.as_str())),
            Err(e) => {
                self.untrack(instance_id, generation);
                return Err(format!("cannot read its pod: {e}").into());
            }
        };
        let Some(pod) = pod else {
            self.untrack(instance_id, generation);
            return Err("its pod is gone".to_owned().into());
        };
        let digest = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SETTINGS_ANNOTATION));
        if digest != Some(&settings_digest(raw)) {
            // Made from settings since changed: replaced, not adopted.
            self.abandon(instance_id, generation, &name).await;
            return Err("its pod was made from the model's earlier settings"
                .to_owned()
                .into());
        }
        if let Some(t) = lock(&self.tracked).get_mut(&instance_id)
            && t.generation == generation
        {
            // A watch event may have brought a newer state already.
            let seen = observe(&pod);
            t.observed.send_if_modified(|current| {
                current.is_none().then(|| *current = Some(seen)).is_some()
            });
            // The earlier scaler's assignment is over.
            let annotated = pod
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(REQUEST_ANNOTATION));
            if annotated {
                // The annotation task writes whatever value is newest when
                // it wakes: going through nil and back makes it write
                // "none" in order with later assignments.
                t.request.send_replace(Some(Uuid::nil()));
                t.request.send_replace(None);
            }
        }
        tracing::info!(instance_id = %instance_id, model_id = %model.id, pod = %name, "adopting pod");
        let (endpoint, seen) = match self
            .wait_serving(instance_id, settings.port, observed, true, placed)
            .await
        {
            Ok(serving) => serving,
            Err(reason) => {
                self.abandon(instance_id, generation, &name).await;
                return Err(reason);
            }
        };
        self.started(instance_id, generation, name, endpoint, seen)
    }

    fn release(&self, instance_id: Uuid) {
        lock(&self.tracked).remove(&instance_id);
    }

    async fn stop(&self, instance_id: Uuid) {
        let (pod, mut gone) = {
            let tracked = lock(&self.tracked);
            let Some(t) = tracked.get(&instance_id) else {
                return;
            };
            (t.pod.clone(), t.gone.subscribe())
        };
        let grace = u32::try_from(self.config.stop_grace_secs).unwrap_or(u32::MAX);
        match self
            .pods
            .delete(&pod, &DeleteParams::default().grace_period(grace))
            .await
        {
            Ok(_) => {
                // Over when the pod object is gone (a terminating pod still
                // holds its node's resources), or after the grace period.
                let wait = Duration::from_secs(self.config.stop_grace_secs + 5);
                let _ = tokio::time::timeout(wait, gone.wait_for(|g| *g)).await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                tracing::warn!(instance_id = %instance_id, pod = %pod, error = %e, "cannot delete pod");
            }
        }
        lock(&self.tracked).remove(&instance_id);
    }

    fn assigned(&self, instance_id: Uuid, request_id: Option<Uuid>) {
        if let Some(t) = lock(&self.tracked).get(&instance_id) {
            t.request.send_if_modified(|current| {
                let changed = *current != request_id;
                *current = request_id;
                changed
            });
        }
    }

    fn owned(&self) -> Vec<Uuid> {
        lock(&self.tracked).keys().copied().collect()
    }

    async fn end_untracked(&self, tracked: &HashSet<Uuid>) -> usize {
        let selector = self.selector();
        let listed = match self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list modelfleet pods");
                return 0;
            }
        };
        let mut ended = 0;
        for pod in listed {
            let known = instance_of(&pod)
                .is_some_and(|id| tracked.contains(&id) || lock(&self.tracked).contains_key(&id));
            if known {
                continue;
            }
            if let Some(name) = pod.metadata.name
                && self
                    .pods
                    .delete(&name, &DeleteParams::default())
                    .await
                    .is_ok()
            {
                tracing::info!(pod = %name, "untracked pod deleted");
                ended += 1;
            }
        }
        ended
    }
}

/// Keeps the pod's request annotation current, in order, latest value
/// first when changes come faster than patches; ends with the instance.
async fn annotate(pods: Api<Pod>, pod: String, mut request: watch::Receiver<Option<Uuid>>) {
    use kube::api::{Patch, PatchParams};
    while request.changed().await.is_ok() {
        let value = request.borrow_and_update().map(|id| id.to_string());
        let patch =
            serde_json::json!({ "metadata": { "annotations": { REQUEST_ANNOTATION: value } } });
        if let Err(e) = pods
            .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(pod = %pod, error = %e, "cannot annotate pod");
        }
    }
}

fn instance_of(pod: &Pod) -> Option<Uuid> {
    pod.metadata
        .labels
        .as_ref()?
        .get(INSTANCE_LABEL)
        .and_then(|v| Uuid::parse_str(v).ok())
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn last_termination(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.last_state.as_ref()?.terminated.as_ref()?.reason.clone())
}

/// Follows every pod of this server in the namespace and tells each
/// tracked instance what its pod is doing.
async fn follow_pods(pods: Api<Pod>, selector: String, tracked: Tracking, log: Arc<EventLog>) {
    let config = watcher::Config::default().labels(&selector);
    let mut stream = watcher(pods, config).boxed();
    // Pods seen by a relist in progress: those missing from it were
    // deleted while the watch was down (a relist sends no Delete).
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(pod)) => (pod, false),
            Ok(watcher::Event::InitApply(pod)) => {
                if let (Some(seen), Some(name)) = (relisted.as_mut(), pod.metadata.name.clone()) {
                    seen.insert(name);
                }
                (pod, false)
            }
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let seen = relisted.take().unwrap_or_default();
                let tracked = lock(&tracked);
                for t in tracked
                    .values()
                    .filter(|t| t.created && !seen.contains(&t.pod))
                {
                    t.exited
                        .send_replace(Some("the pod was deleted".to_owned()));
                    t.gone.send_replace(true);
                }
                continue;
            }
            Err(e) => {
                // The watcher retries by itself; say so once per failure.
                tracing::warn!(error = %e, "pod watch interrupted");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(id) = instance_of(&pod) else {
            continue;
        };
        let seen = observe(&pod);
        let detail = {
            let mut tracked = lock(&tracked);
            let Some(t) = tracked.get_mut(&id) else {
                continue;
            };
            let restarts = restart_count(&pod);
            if deleted {
                t.exited
                    .send_replace(Some("the pod was deleted".to_owned()));
                t.gone.send_replace(true);
            } else if let Stage::Ended { reason } = &seen.stage {
                t.exited
                    .send_replace(Some(format!("the pod ended: {reason}")));
            } else if let Some(at_start) = t.served_restarts {
                // Once serving, a container that died (and restarted in
                // place) has lost whatever job it ran.
                if restarts > at_start || matches!(seen.stage, Stage::Troubled { .. }) {
                    let why =
                        last_termination(&pod).unwrap_or_else(|| "no reason given".to_owned());
                    t.exited
                        .send_replace(Some(format!("the container restarted ({why})")));
                }
            } else if matches!(seen.stage, Stage::Serving { .. }) {
                t.served_restarts = Some(restarts);
            }
            t.observed.send_replace(Some(seen.clone()));
            // Serving instances show their pod as it changes; starting ones
            // are shown by their start.
            let changed =
                t.served_restarts.is_some() && t.last_detail.as_ref() != Some(&seen.detail);
            if changed {
                t.last_detail = Some(seen.detail.clone());
            }
            changed.then_some(seen.detail)
        };
        if let Some(detail) = detail {
            log.detail(id, detail).await;
        }
    }
}

/// Records every Kubernetes event about a tracked pod as an instance event,
/// with the event object as `raw`.
async fn follow_events(events: Api<Event>, tracked: Tracking, log: Arc<EventLog>) {
    let mut stream = watcher(events, watcher::Config::default()).boxed();
    // (uid, count) already recorded: an event seen again, on a relist or
    // unchanged, is not recorded twice. Cleared when it grows large, at
    // the cost of a few repeats.
    let mut seen: HashSet<(String, i32)> = HashSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => e,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "event watch interrupted");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if event.involved_object.kind.as_deref() != Some("Pod") {
            continue;
        }
        let Some(pod) = event.involved_object.name.as_deref() else {
            continue;
        };
        let instance = lock(&tracked)
            .iter()
            .find(|(_, t)| t.pod == pod)
            .map(|(id, _)| *id);
        let Some(instance) = instance else {
            continue;
        };
        if seen.len() > 100_000 {
            seen.clear();
        }
        let key = (
            event.metadata.uid.clone().unwrap_or_default(),
            event.count.unwrap_or(1),
        );
        if !seen.insert(key) {
            continue;
        }
        let kind = if event.type_.as_deref() == Some("Warning") {
            EventKind::Warning
        } else {
            EventKind::Normal
        };
        let raw = serde_json::to_value(&event).ok();
        log.record_raw(
            instance,
            kind,
            event.reason.as_deref().unwrap_or("Event"),
            event.message.as_deref().unwrap_or_default(),
            raw,
        )
        .await;
    }
}
