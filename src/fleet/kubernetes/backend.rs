//! The Kubernetes backend: one pod per instance, followed by two watches
//! for the whole namespace (pods with modelfleet's label, and events), not
//! by polling.
//!
//! ```text
//!   start ──create pod──▶ API server ──▶ scheduler, kubelet
//!     ▲                        │
//!     │ observed stage         │ watch pods (label managed-by=modelfleet)
//!     └──── pods task ◀────────┤
//!                              │ watch events (about our pods)
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

use super::pod::{INSTANCE_LABEL, MANAGED_BY, PodSettings, pod_name};
use super::status::{Observed, Stage, observe};
use crate::config::KubernetesConfig;
use crate::fleet::backend::{Backend, EventKind, EventLog, Started};
use crate::fleet::cog::{CogClient, Health};
use crate::models::ModelSpec;

/// One pod the backend runs.
struct Tracked {
    pod: String,
    observed: watch::Sender<Option<Observed>>,
    exited: watch::Sender<Option<String>>,
}

pub struct KubernetesBackend {
    pods: Api<Pod>,
    config: KubernetesConfig,
    events: Arc<EventLog>,
    tracked: Arc<Mutex<HashMap<Uuid, Tracked>>>,
    cog: CogClient,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubernetesBackend {
    /// Connects to the cluster (at `api_url`, or as kube-rs infers) and
    /// starts the pod and event watches.
    pub async fn connect(config: &KubernetesConfig, events: Arc<EventLog>) -> anyhow::Result<Self> {
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
        Ok(Self::new(client, config.clone(), events))
    }

    pub fn new(client: Client, config: KubernetesConfig, events: Arc<EventLog>) -> Self {
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        let event_api: Api<Event> = Api::default_namespaced(client);
        let tracked: Arc<Mutex<HashMap<Uuid, Tracked>>> = Arc::default();
        let tasks = vec![
            tokio::spawn(follow_pods(pods.clone(), tracked.clone())),
            tokio::spawn(follow_events(event_api, tracked.clone(), events.clone())),
        ];
        Self {
            pods,
            config,
            events,
            tracked,
            cog: CogClient::new(),
            tasks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Tracked>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the pod and forgets it; used when a start is given up.
    async fn abandon(&self, instance_id: Uuid, pod: &str) {
        let _ = self.pods.delete(pod, &DeleteParams::default()).await;
        self.lock().remove(&instance_id);
    }

    /// Waits until the pod serves, fails for good, or the start times out.
    async fn wait_serving(
        &self,
        instance_id: Uuid,
        mut observed: watch::Receiver<Option<Observed>>,
    ) -> Result<(String, Observed), String> {
        let timeout = Duration::from_secs(self.config.start_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_detail = None;
        let mut last_wait: Option<String> = None;
        loop {
            let seen = observed.borrow_and_update().clone();
            if let Some(seen) = seen {
                if last_detail.as_ref() != Some(&seen.detail) {
                    last_detail = Some(seen.detail.clone());
                    self.events.detail(instance_id, seen.detail.clone()).await;
                }
                match &seen.stage {
                    Stage::Serving { ip } => return Ok((ip.clone(), seen.clone())),
                    Stage::Ended { reason } => return Err(format!("the pod ended: {reason}")),
                    Stage::Troubled { reason, restarts } => {
                        let crashing = matches!(reason.as_str(), "CrashLoopBackOff" | "OOMKilled");
                        // A pull that failed is retried once (its back-off
                        // ends the start); a crash loop gets its restarts;
                        // an invalid image or container config ends it now.
                        let give_up = if crashing {
                            u32::try_from(*restarts).unwrap_or(0) >= self.config.max_restarts
                        } else {
                            reason != "ErrImagePull"
                        };
                        if give_up {
                            return Err(format!("the pod cannot start: {reason}"));
                        }
                        last_wait = Some(reason.clone());
                    }
                    Stage::Waiting { reason } => last_wait = reason.clone(),
                }
            }
            match tokio::time::timeout_at(deadline, observed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the backend stopped".to_owned()),
                Err(_) => {
                    return Err(format!(
                        "not ready within {} s{}",
                        timeout.as_secs(),
                        last_wait
                            .map(|w| format!(" (waiting: {w})"))
                            .unwrap_or_default()
                    ));
                }
            }
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

    async fn start(&self, model: &ModelSpec, instance_id: Uuid) -> Result<Started, String> {
        let Some(settings) = model.kubernetes.as_ref() else {
            return Err(format!("model {} has no kubernetes settings", model.id));
        };
        let settings =
            PodSettings::parse(settings).map_err(|e| format!("bad kubernetes settings: {e:?}"))?;
        let pod = settings.pod(&model.id, instance_id);
        let name = pod_name(&model.id, instance_id);
        let (observed_tx, observed) = watch::channel(None);
        let (exited_tx, exited) = watch::channel(None);
        // Tracked before it exists, so that no watch event about it is lost.
        self.lock().insert(
            instance_id,
            Tracked {
                pod: name.clone(),
                observed: observed_tx,
                exited: exited_tx,
            },
        );
        if let Err(e) = self.pods.create(&PostParams::default(), &pod).await {
            self.lock().remove(&instance_id);
            return Err(format!("the pod was not created: {e}"));
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
        let (ip, seen) = match self.wait_serving(instance_id, observed).await {
            Ok(serving) => serving,
            Err(reason) => {
                self.abandon(instance_id, &name).await;
                return Err(reason);
            }
        };
        let endpoint = format!("http://{ip}:{}", settings.port);
        // The container runs; the model inside may still be setting up.
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.start_timeout_secs);
        loop {
            match self.cog.health(&endpoint).await {
                Ok(Health::Ready) => break,
                Ok(Health::SetupFailed(detail)) => {
                    self.abandon(instance_id, &name).await;
                    return Err(format!("setup failed: {detail}"));
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    self.abandon(instance_id, &name).await;
                    return Err("the model never became ready".to_owned());
                }
            }
        }
        let node = seen.detail["node"].as_str().map(str::to_owned);
        Ok(Started {
            endpoint,
            handle: name,
            node,
            detail: seen.detail,
            exited,
        })
    }

    async fn stop(&self, instance_id: Uuid) {
        let (pod, mut exited) = {
            let tracked = self.lock();
            let Some(t) = tracked.get(&instance_id) else {
                return;
            };
            (t.pod.clone(), t.exited.subscribe())
        };
        let grace = u32::try_from(self.config.stop_grace_secs).unwrap_or(u32::MAX);
        match self
            .pods
            .delete(&pod, &DeleteParams::default().grace_period(grace))
            .await
        {
            Ok(_) => {
                // Gone when the watch says so, or after the grace period.
                let wait = Duration::from_secs(self.config.stop_grace_secs + 5);
                let _ = tokio::time::timeout(wait, exited.wait_for(Option::is_some)).await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                tracing::warn!(instance_id = %instance_id, pod = %pod, error = %e, "cannot delete pod");
            }
        }
        self.lock().remove(&instance_id);
    }

    fn owned(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    async fn end_untracked(&self, tracked: &HashSet<Uuid>) -> usize {
        let selector = format!("{MANAGED_BY}=modelfleet");
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
            let instance = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INSTANCE_LABEL))
                .and_then(|v| Uuid::parse_str(v).ok());
            if instance.is_some_and(|id| tracked.contains(&id) || self.lock().contains_key(&id)) {
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

fn instance_of(pod: &Pod) -> Option<Uuid> {
    pod.metadata
        .labels
        .as_ref()?
        .get(INSTANCE_LABEL)
        .and_then(|v| Uuid::parse_str(v).ok())
}

/// Follows every modelfleet pod in the namespace and tells each tracked
/// instance what its pod is doing.
async fn follow_pods(pods: Api<Pod>, tracked: Arc<Mutex<HashMap<Uuid, Tracked>>>) {
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY}=modelfleet"));
    let mut stream = watcher(pods, config).boxed();
    while let Some(event) = stream.next().await {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
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
        let tracked = tracked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = tracked.get(&id) else { continue };
        let seen = observe(&pod);
        if deleted {
            t.exited
                .send_replace(Some("the pod was deleted".to_owned()));
        } else if let Stage::Ended { reason } = &seen.stage {
            t.exited
                .send_replace(Some(format!("the pod ended: {reason}")));
        }
        t.observed.send_replace(Some(seen));
    }
}

/// Records every Kubernetes event about a tracked pod as an instance event,
/// with the event object as `raw`.
async fn follow_events(
    events: Api<Event>,
    tracked: Arc<Mutex<HashMap<Uuid, Tracked>>>,
    log: Arc<EventLog>,
) {
    let mut stream = watcher(events, watcher::Config::default()).boxed();
    // (uid, count) already recorded: an event seen again, on a relist or
    // unchanged, is not recorded twice.
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
        let instance = {
            let tracked = tracked.lock().unwrap_or_else(|e| e.into_inner());
            tracked
                .iter()
                .find(|(_, t)| t.pod == pod)
                .map(|(id, _)| *id)
        };
        let Some(instance) = instance else { continue };
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
