//! The node autoscaler: grows Cluster API MachineDeployments when
//! modelfleet pods cannot be scheduled, and removes nodes that hold none of
//! them for a while.
//!
//! ```text
//!   watches (nodes, pods, MachineDeployments, Machines) ──▶ caches
//!                                                              │ every 250 ms
//!   observe ──▶ views (nodePools, nodes, nodeUpdates) ◀────────┘
//!      │  on the replica that runs the scaler only:
//!      ├─▶ scale up:   gather unschedulable pods (1 s quiet, 10 s at most),
//!      │               plan (plan.rs), raise replicas via /scale
//!      └─▶ scale down: idle node → cordon + taint → confirm → mark Machine,
//!                      lower replicas
//! ```
//!
//! Each decision is a Kubernetes event on the pods or node it concerns, a
//! log line, and an entry in its pool's `lastDecisions`.
//!
//! Known limits, said where they matter too: pod affinity, anti-affinity
//! and required node affinity are not weighed (node selectors, taints and
//! resources are); a crash between marking a Machine and lowering the
//! replicas leaves the node cordoned and the Machine marked until the
//! pool's next scale-down removes it.

pub mod plan;
pub mod pools;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use self::plan::{Demand, NodeRoom, PodOnNode, PoolState, Resources, Taint};
use self::pools::{DELETE_MACHINE, DEPLOYMENT_LABEL, MACHINE_ANNOTATION, Pool};
use super::backend::Placement as PlacementHandle;
use super::pod::{INSTANCE_LABEL, MANAGED_BY};
use crate::config::AutoscalerConfig;
use crate::fleet::Fleet;

/// The taint a node gets while it is being emptied for removal.
pub const TAINT_KEY: &str = "modelfleet.io/scale-down";
const TICK: Duration = Duration::from_millis(250);
/// Pending pods are planned again this often even when none is new (a
/// node asked for may never come).
const REPLAN: Duration = Duration::from_secs(10);
/// A replica count asked for counts over an older one seen in the cache
/// for this long, so a slow watch cannot cause a second scale-up.
const ASKED_HOLD: Duration = Duration::from_secs(30);
const DECISIONS_KEPT: usize = 20;
const COMPONENT: &str = "modelfleet-autoscaler";

/// What the autoscaler decided, for `nodePools.lastDecisions`.
#[derive(Debug, Clone)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub kind: DecisionKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    ScaleUp,
    NoScaleUp,
    Cordon,
    ScaleDown,
    ScaleDownCancelled,
}

/// A pool as admins see it.
#[derive(Debug, Clone)]
pub struct PoolView {
    pub pool: Pool,
    pub ready: u32,
    pub coming: u32,
    /// Why it is not managed as it stands (bad annotations), if so.
    pub problem: Option<String>,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Ready,
    NotReady,
    Cordoned,
    BeingRemoved,
}

/// A node as admins see it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    /// `namespace/name` of its pool, when it belongs to one.
    pub pool: Option<String>,
    pub state: NodeState,
    pub capacity: Resources,
    pub allocatable: Resources,
    /// What its pods ask for.
    pub allocated: Resources,
    pub gpu_type: String,
    /// `namespace/name` of the modelfleet pods on it.
    pub modelfleet_pods: Vec<String>,
    /// Since when it has held nothing that keeps it (on the scaler's
    /// replica).
    pub idle_since: Option<DateTime<Utc>>,
}

/// A node's view changed, or the node went.
#[derive(Debug, Clone)]
pub struct NodeUpdate {
    pub at: DateTime<Utc>,
    pub node: NodeView,
    pub removed: bool,
}

#[derive(Default)]
struct Views {
    pools: Vec<PoolView>,
    nodes: BTreeMap<String, NodeView>,
    decisions: HashMap<String, VecDeque<Decision>>,
    last_pass: Option<Duration>,
}

/// What the GraphQL API reads; cheap to clone.
#[derive(Clone)]
pub struct AutoscalerHandle {
    views: Arc<Mutex<Views>>,
    updates: broadcast::Sender<NodeUpdate>,
}

impl AutoscalerHandle {
    fn views(&self) -> std::sync::MutexGuard<'_, Views> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pools(&self) -> Vec<PoolView> {
        let views = self.views();
        let mut pools = views.pools.clone();
        for pool in &mut pools {
            pool.decisions = views
                .decisions
                .get(&pool.pool.id)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default();
        }
        pools
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        self.views().nodes.values().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeUpdate> {
        self.updates.subscribe()
    }

    /// How long the last decision pass took (observing the caches,
    /// planning, deciding; not the API calls that carry decisions out).
    pub fn last_pass(&self) -> Option<Duration> {
        self.views().last_pass
    }

    fn decide(&self, pool: &str, kind: DecisionKind, message: String) {
        let mut views = self.views();
        let list = views.decisions.entry(pool.to_owned()).or_default();
        list.push_front(Decision {
            at: Utc::now(),
            kind,
            message,
        });
        list.truncate(DECISIONS_KEPT);
    }
}

/// The autoscaler: its caches (kept by watches on every replica) and the
/// handle its views are read through.
pub struct Autoscaler {
    config: AutoscalerConfig,
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    deployments: Store<DynamicObject>,
    machines: Store<DynamicObject>,
    handle: AutoscalerHandle,
    events: mpsc::Sender<(String, Event)>,
    placement: PlacementHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps `writer`'s cache of what `api` lists, retrying with back-off.
fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        futures_util::pin_mut!(stream);
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(watch = what, error = %e, "autoscaler watch interrupted");
                }
                Err(_) => {}
                Ok(_) => failing = false,
            }
        }
    })
}

fn follow_dynamic(
    api: Api<DynamicObject>,
    config: watcher::Config,
    resource: kube::api::ApiResource,
    what: &'static str,
) -> (Store<DynamicObject>, tokio::task::JoinHandle<()>) {
    let writer = reflector::store::Writer::new(resource);
    let reader = writer.as_reader();
    (reader, follow(api, config, writer, what))
}

impl Autoscaler {
    /// Starts the watches. Decisions begin with [`Autoscaler::run`].
    pub fn new(client: Client, config: AutoscalerConfig, placement: PlacementHandle) -> Self {
        let (nodes, node_writer) = reflector::store::<Node>();
        let (pods, pod_writer) = reflector::store::<Pod>();
        let deployment_api: Api<DynamicObject> = match &config.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &pools::machine_deployments()),
            None => Api::all_with(client.clone(), &pools::machine_deployments()),
        };
        let machine_api: Api<DynamicObject> = match &config.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &pools::machines()),
            None => Api::all_with(client.clone(), &pools::machines()),
        };
        let mut deployment_watch = watcher::Config::default();
        if let Some(selector) = &config.selector {
            deployment_watch = deployment_watch.labels(selector);
        }
        let (deployments, deployments_task) = follow_dynamic(
            deployment_api,
            deployment_watch,
            pools::machine_deployments(),
            "machinedeployments",
        );
        let (machines, machines_task) = follow_dynamic(
            machine_api,
            watcher::Config::default(),
            pools::machines(),
            "machines",
        );
        let (events, outbox) = mpsc::channel(4096);
        let tasks = vec![
            follow(
                Api::<Node>::all(client.clone()),
                watcher::Config::default(),
                node_writer,
                "nodes",
            ),
            follow(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default(),
                pod_writer,
                "pods",
            ),
            deployments_task,
            machines_task,
            tokio::spawn(post_events(client.clone(), outbox)),
        ];
        Self {
            config,
            client,
            nodes,
            pods,
            deployments,
            machines,
            handle: AutoscalerHandle {
                views: Arc::default(),
                updates: broadcast::channel(1024).0,
            },
            events,
            placement,
            tasks,
        }
    }

    pub fn handle(&self) -> AutoscalerHandle {
        self.handle.clone()
    }

    /// Observes every 250 ms until `shutdown`; decides while `fleet` runs
    /// the scaler.
    pub async fn run(
        self: Arc<Self>,
        fleet: Arc<Fleet>,
        db: DatabaseConnection,
        mut shutdown: watch::Receiver<bool>,
    ) {
        for store in [&self.deployments, &self.machines] {
            let _ = store.wait_until_ready().await;
        }
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        tracing::info!(
            namespace = self.config.namespace.as_deref().unwrap_or("(all)"),
            selector = self.config.selector.as_deref().unwrap_or("(none)"),
            "node autoscaler watching"
        );
        let mut brain = Brain::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let began = std::time::Instant::now();
            let now = Instant::now();
            let seen = self.observe(&brain, now);
            self.publish(&seen, &brain);
            if !fleet.is_leading() {
                brain = Brain::default();
                self.handle.views().last_pass = Some(began.elapsed());
                continue;
            }
            let actions = brain.decide(&self.config, &seen, now);
            self.handle.views().last_pass = Some(began.elapsed());
            if let Err(e) = self.carry_out(&mut brain, &seen, actions, &db).await {
                tracing::warn!(error = %e, "autoscaler pass failed");
            }
        }
    }

    /// Reads the caches into one consistent picture.
    pub fn observe(&self, brain: &Brain, now: Instant) -> Seen {
        observe(
            &self.config,
            &self.nodes.state(),
            &self.pods.state(),
            &self.deployments.state(),
            &self.machines.state(),
            brain,
            now,
        )
    }

    /// Refreshes the views and tells subscribers what changed.
    fn publish(&self, seen: &Seen, brain: &Brain) {
        let at = Utc::now();
        let now = Instant::now();
        let mut fresh: BTreeMap<String, NodeView> = BTreeMap::new();
        for node in &seen.nodes {
            let idle_since = brain
                .idle_since
                .get(&node.name)
                .map(|since| at - chrono::Duration::from_std(now - *since).unwrap_or_default());
            let mut view = node.view();
            view.idle_since = idle_since;
            fresh.insert(node.name.clone(), view);
        }
        let mut views = self.handle.views();
        let mut changes = Vec::new();
        for (name, view) in &fresh {
            let same = views.nodes.get(name).is_some_and(|old| {
                // The idle clock moving is no change.
                let mut old = old.clone();
                old.idle_since = view.idle_since;
                old == *view
            });
            if !same {
                changes.push(NodeUpdate {
                    at,
                    node: view.clone(),
                    removed: false,
                });
            }
        }
        for (name, view) in &views.nodes {
            if !fresh.contains_key(name) {
                changes.push(NodeUpdate {
                    at,
                    node: view.clone(),
                    removed: true,
                });
            }
        }
        views.nodes = fresh;
        let pools = seen
            .pools
            .iter()
            .map(|p| PoolView {
                pool: p.pool.clone(),
                ready: p.ready,
                coming: p.pool.desired.saturating_sub(p.ready),
                problem: None,
                decisions: Vec::new(),
            })
            .chain(seen.problems.iter().map(|(pool, problem)| PoolView {
                pool: pool.clone(),
                ready: 0,
                coming: 0,
                problem: Some(problem.clone()),
                decisions: Vec::new(),
            }))
            .collect();
        views.pools = pools;
        drop(views);
        for change in changes {
            let _ = self.handle.updates.send(change);
        }
    }

    /// Makes the API calls a pass decided on.
    async fn carry_out(
        &self,
        brain: &mut Brain,
        seen: &Seen,
        actions: Actions,
        db: &DatabaseConnection,
    ) -> Result<(), DbErr> {
        for (pool, kind, message) in actions.decisions {
            self.handle.decide(&pool, kind, message);
        }
        for grow in actions.grow {
            self.grow(brain, &grow).await;
        }
        for told in actions.tell {
            self.tell(&told);
        }
        let assigned = if actions.cordon.is_empty() {
            HashSet::new()
        } else {
            assigned_instances(db).await?
        };
        for name in actions.cordon {
            let Some(node) = seen.node(&name) else {
                continue;
            };
            // The cache judged it without the assignment record.
            if let Some(reason) = plan::node_use(node.gpu_node(), &node.pods, &assigned) {
                tracing::info!(node = %name, reason = %reason, "node not cordoned: in use");
                brain.idle_since.remove(&name);
                continue;
            }
            self.cordon(brain, node).await;
        }
        for name in actions.uncordon {
            if let Some(node) = seen.node(&name) {
                self.uncordon(brain, node, "a pending pod fits it").await;
            }
        }
        for name in actions.confirm {
            let Some(node) = seen.node(&name) else {
                brain.cordoned.remove(&name);
                continue;
            };
            self.confirm_removal(brain, seen, node, db).await;
        }
        Ok(())
    }

    async fn grow(&self, brain: &mut Brain, grow: &Grow) {
        let api = self.deployment_api(&grow.namespace);
        let patch = Patch::Merge(json!({ "spec": { "replicas": grow.to } }));
        match api
            .patch_scale(&grow.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                brain
                    .asked
                    .insert(grow.pool.clone(), (grow.to, Instant::now()));
                brain.last_scale_up = Some(Instant::now());
                tracing::info!(
                    pool = %grow.pool,
                    from = grow.from,
                    to = grow.to,
                    max = grow.max,
                    pods = grow.pods.len(),
                    "scale-up triggered"
                );
                self.handle.decide(
                    &grow.pool,
                    DecisionKind::ScaleUp,
                    format!(
                        "{} → {} nodes (max {}) for {} pending pod(s): {}",
                        grow.from,
                        grow.to,
                        grow.max,
                        grow.pods.len(),
                        abbreviate(&grow.pods)
                    ),
                );
                for pod in &grow.pods {
                    self.tell(&Tell {
                        object: pod.clone(),
                        warning: false,
                        reason: "TriggeredScaleUp",
                        message: format!(
                            "pod triggered scale-up: [{} {}->{} (max: {})]",
                            grow.pool, grow.from, grow.to, grow.max
                        ),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(pool = %grow.pool, to = grow.to, error = %e, "scale-up failed");
                self.handle.decide(
                    &grow.pool,
                    DecisionKind::NoScaleUp,
                    format!("raising replicas to {} failed: {e}", grow.to),
                );
            }
        }
    }

    async fn cordon(&self, brain: &mut Brain, node: &NodeFacts) {
        let mut taints: Vec<serde_json::Value> = node.taints.iter().map(taint_json).collect();
        taints.push(json!({ "key": TAINT_KEY, "value": "", "effect": "NoSchedule" }));
        let patch = Patch::Merge(json!({
            "metadata": { "resourceVersion": node.resource_version },
            "spec": { "unschedulable": true, "taints": taints },
        }));
        let idle = brain
            .idle_since
            .get(&node.name)
            .map(|s| s.elapsed().as_secs())
            .unwrap_or(0);
        match Api::<Node>::all(self.client.clone())
            .patch(&node.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                brain.cordoned.insert(node.name.clone(), Instant::now());
                let pool = node.pool.clone().unwrap_or_default();
                let message = format!(
                    "node unneeded (no modelfleet pod for {idle} s): cordoned and tainted {TAINT_KEY}, to be removed in {} s unless a pod lands on it",
                    self.config.scale_down_confirm_secs
                );
                tracing::info!(node = %node.name, pool = %pool, idle_secs = idle, "node cordoned for scale-down");
                self.about_node(node, &pool, DecisionKind::Cordon, "ScaleDown", message);
            }
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "cannot cordon node");
            }
        }
    }

    /// After the confirmation delay: removes the node if still nothing
    /// keeps it, else uncordons it.
    async fn confirm_removal(
        &self,
        brain: &mut Brain,
        seen: &Seen,
        node: &NodeFacts,
        db: &DatabaseConnection,
    ) {
        // Read now, after the pod list below is asked for: a request
        // assigned since the pass began counts.
        let assigned = match assigned_instances(db).await {
            Ok(assigned) => assigned,
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "cannot read assigned requests; node kept cordoned for now");
                return;
            }
        };
        let assigned = &assigned;
        let pool_id = node.pool.clone().unwrap_or_default();
        // Fresh from the API server, not the cache: a pod bound a moment
        // ago counts.
        let fresh = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", node.name)))
            .await;
        let keep = match &fresh {
            Ok(list) => {
                let pods: Vec<PodOnNode> = list.items.iter().map(pod_on_node).collect();
                plan::node_use(node.gpu_node(), &pods, assigned)
            }
            Err(e) => Some(format!("its pods could not be listed: {e}")),
        };
        let pool = seen.pools.iter().find(|p| p.pool.id == pool_id);
        let keep = keep.or_else(|| match pool {
            None => Some("its pool is no longer managed".to_owned()),
            Some(p) if brain.desired(p) <= p.pool.min => Some(format!(
                "its pool {} is at its minimum size ({})",
                pool_id, p.pool.min
            )),
            Some(_) => None,
        });
        let machine = node.machine.clone();
        let keep = keep.or_else(|| {
            machine
                .is_none()
                .then(|| "it has no Machine to delete".to_owned())
        });
        if let Some(reason) = keep {
            self.uncordon(brain, node, &reason).await;
            return;
        }
        let (Some(pool), Some((machine_ns, machine_name))) = (pool, machine) else {
            return;
        };
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Err(e) = self
            .mark_machine(&machine_ns, &machine_name, json!(now))
            .await
        {
            tracing::warn!(node = %node.name, machine = %machine_name, error = %e, "cannot mark machine for deletion");
            return;
        }
        let from = brain.desired(pool);
        let to = from - 1;
        let lowered = self
            .deployment_api(&pool.pool.namespace)
            .patch_scale(
                &pool.pool.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": to } })),
            )
            .await;
        if let Err(e) = &lowered {
            // Unmarked, the Machine is not taken at a later change of the
            // replicas; the node stays cordoned and is confirmed again.
            let _ = self
                .mark_machine(&machine_ns, &machine_name, serde_json::Value::Null)
                .await;
            tracing::warn!(node = %node.name, pool = %pool_id, error = %e, "cannot lower replicas");
            return;
        }
        brain.asked.insert(pool_id.clone(), (to, Instant::now()));
        brain.cordoned.remove(&node.name);
        brain.idle_since.remove(&node.name);
        let message = format!(
            "removing node: Machine {machine_ns}/{machine_name} marked for deletion, pool {pool_id} {from} → {to} nodes (min {})",
            pool.pool.min
        );
        tracing::info!(node = %node.name, pool = %pool_id, machine = %machine_name, from, to, "scale-down: machine marked and replicas lowered");
        self.about_node(
            node,
            &pool_id,
            DecisionKind::ScaleDown,
            "ScaleDown",
            message,
        );
    }

    async fn uncordon(&self, brain: &mut Brain, node: &NodeFacts, reason: &str) {
        let taints: Vec<serde_json::Value> = node
            .taints
            .iter()
            .filter(|t| t.key != TAINT_KEY)
            .map(taint_json)
            .collect();
        let patch = Patch::Merge(json!({
            "metadata": { "resourceVersion": node.resource_version },
            "spec": { "unschedulable": false, "taints": taints },
        }));
        match Api::<Node>::all(self.client.clone())
            .patch(&node.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                brain.cordoned.remove(&node.name);
                brain.idle_since.remove(&node.name);
                let pool = node.pool.clone().unwrap_or_default();
                let message = format!("node kept and uncordoned: {reason}");
                tracing::info!(node = %node.name, pool = %pool, reason = %reason, "scale-down cancelled");
                self.about_node(
                    node,
                    &pool,
                    DecisionKind::ScaleDownCancelled,
                    "ScaleDownCancelled",
                    message,
                );
            }
            Err(e) => {
                tracing::warn!(node = %node.name, error = %e, "cannot uncordon node");
            }
        }
    }

    /// Records a decision about `node` in its pool and as an event on it.
    fn about_node(
        &self,
        node: &NodeFacts,
        pool: &str,
        kind: DecisionKind,
        reason: &'static str,
        message: String,
    ) {
        self.handle
            .decide(pool, kind, format!("{}: {message}", node.name));
        self.tell(&Tell {
            object: node.reference(),
            warning: false,
            reason,
            message,
        });
    }

    /// Sets (a time) or removes (null) the Machine's delete-machine mark.
    async fn mark_machine(
        &self,
        namespace: &str,
        name: &str,
        mark: serde_json::Value,
    ) -> Result<DynamicObject, kube::Error> {
        Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, &pools::machines())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { DELETE_MACHINE: mark } } })),
            )
            .await
    }

    fn deployment_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &pools::machine_deployments(),
        )
    }

    /// Queues a Kubernetes event; also fails a start no node could hold.
    fn tell(&self, told: &Tell) {
        if told.reason == "NotTriggerScaleUp"
            && told.warning
            && let Some(instance) = told.object.instance
        {
            self.placement.cannot_place(instance, &told.message);
        }
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", told.object.name)),
                namespace: Some(told.object.event_namespace()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some(told.object.kind.to_owned()),
                name: Some(told.object.name.clone()),
                namespace: told.object.namespace.clone(),
                uid: told.object.uid.clone(),
                ..Default::default()
            },
            reason: Some(told.reason.to_owned()),
            message: Some(told.message.clone()),
            type_: Some(if told.warning { "Warning" } else { "Normal" }.to_owned()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        if self
            .events
            .try_send((told.object.event_namespace(), event))
            .is_err()
        {
            tracing::debug!(object = %told.object.name, "autoscaler event dropped: too many queued");
        }
    }
}

/// Posts queued events one at a time, off the decision loop.
async fn post_events(client: Client, mut outbox: mpsc::Receiver<(String, Event)>) {
    let mut failing = false;
    while let Some((namespace, event)) = outbox.recv().await {
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(namespace = %namespace, error = %e, "cannot post autoscaler events");
            }
            Err(_) => {}
            Ok(_) => failing = false,
        }
    }
}

fn taint_json(t: &Taint) -> serde_json::Value {
    json!({ "key": t.key, "value": t.value, "effect": t.effect })
}

/// The first few names, and how many more.
fn abbreviate(names: &[ObjectRef]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(|n| n.name.as_str()).collect();
    if names.len() > shown.len() {
        format!(
            "{} and {} more",
            shown.join(", "),
            names.len() - shown.len()
        )
    } else {
        shown.join(", ")
    }
}

/// The instances whose requests are assigned (running) on record.
async fn assigned_instances(db: &DatabaseConnection) -> Result<HashSet<String>, DbErr> {
    use entity::work_request::{Column, Entity};
    let ids: Vec<Option<Uuid>> = Entity::find()
        .select_only()
        .column(Column::InstanceId)
        .filter(Column::Status.eq(entity::RequestStatus::Running))
        .filter(Column::InstanceId.is_not_null())
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().flatten().map(|id| id.to_string()).collect())
}

/// An object an event is about.
#[derive(Debug, Clone)]
pub struct ObjectRef {
    kind: &'static str,
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    /// For a modelfleet pod: its instance.
    instance: Option<Uuid>,
}

impl ObjectRef {
    /// Events about cluster-scoped objects (nodes) go to `default`, as
    /// the node controller's do.
    fn event_namespace(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned())
    }
}

/// An event to post.
struct Tell {
    object: ObjectRef,
    warning: bool,
    reason: &'static str,
    message: String,
}

/// A pool raise decided on.
struct Grow {
    pool: String,
    namespace: String,
    name: String,
    from: u32,
    to: u32,
    max: u32,
    pods: Vec<ObjectRef>,
}

/// What a pass decided.
#[derive(Default)]
struct Actions {
    grow: Vec<Grow>,
    /// (pool, kind, message) for decisions that need no API call.
    decisions: Vec<(String, DecisionKind, String)>,
    tell: Vec<Tell>,
    cordon: Vec<String>,
    /// Nodes being emptied that pending pods need.
    uncordon: Vec<String>,
    confirm: Vec<String>,
}

/// A node as one pass sees it.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    name: String,
    uid: Option<String>,
    /// The version its taints were read at: a cordon or uncordon written
    /// from it fails if the node changed since (others' taints are kept).
    resource_version: Option<String>,
    pool: Option<String>,
    machine: Option<(String, String)>,
    ready: bool,
    /// Its GPUs (as many as its pool's nodes have, or its capacity shows)
    /// are allocatable.
    gpus_ready: bool,
    unschedulable: bool,
    tainted_by_us: bool,
    being_removed: bool,
    capacity: Resources,
    allocatable: Resources,
    gpu_type: String,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    used: Resources,
    pods: Vec<PodOnNode>,
    modelfleet_pods: Vec<String>,
}

impl NodeFacts {
    fn gpu_node(&self) -> bool {
        self.capacity.gpus > 0
    }

    /// Takes pods now.
    fn open(&self) -> bool {
        self.ready && self.gpus_ready && !self.unschedulable && !self.being_removed
    }

    fn state(&self) -> NodeState {
        if self.being_removed {
            NodeState::BeingRemoved
        } else if self.unschedulable || self.tainted_by_us {
            NodeState::Cordoned
        } else if self.ready && self.gpus_ready {
            NodeState::Ready
        } else {
            NodeState::NotReady
        }
    }

    fn view(&self) -> NodeView {
        NodeView {
            name: self.name.clone(),
            pool: self.pool.clone(),
            state: self.state(),
            capacity: self.capacity,
            allocatable: self.allocatable,
            allocated: self.used,
            gpu_type: self.gpu_type.clone(),
            modelfleet_pods: self.modelfleet_pods.clone(),
            idle_since: None,
        }
    }

    fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: "Node",
            name: self.name.clone(),
            namespace: None,
            uid: self.uid.clone(),
            instance: None,
        }
    }
}

/// A modelfleet pod the scheduler could not place.
#[derive(Debug, Clone)]
pub struct PendingPod {
    demand: Demand,
    object: ObjectRef,
}

/// A managed pool as one pass sees it.
#[derive(Debug, Clone)]
pub struct SeenPool {
    pool: Pool,
    /// Nodes that take pods or are cordoned, not being removed.
    ready: u32,
}

/// One consistent picture of the cluster.
#[derive(Debug, Default)]
pub struct Seen {
    pools: Vec<SeenPool>,
    /// MachineDeployments with broken autoscaler settings, and why.
    problems: Vec<(Pool, String)>,
    nodes: Vec<NodeFacts>,
    pending: Vec<PendingPod>,
}

impl Seen {
    fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// How many nodes, pools and pending pods it holds.
    pub fn size(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.pools.len(), self.pending.len())
    }
}

fn is_modelfleet(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == "modelfleet")
}

fn instance_of(pod: &Pod) -> Option<Uuid> {
    pod.metadata
        .labels
        .as_ref()?
        .get(INSTANCE_LABEL)?
        .parse()
        .ok()
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// What a pod asks of a node: its containers' requests (a limit stands in
/// for a missing request, as Kubernetes defaults it), or an init
/// container's when larger; and the GPU resource it names.
fn pod_needs(pod: &Pod) -> (Resources, Option<String>) {
    let mut total = Resources {
        pods: 1,
        ..Default::default()
    };
    let mut gpu_type = None;
    let Some(spec) = pod.spec.as_ref() else {
        return (total, None);
    };
    let mut add = |container: &k8s_openapi::api::core::v1::Container, sum: bool| {
        let Some(resources) = container.resources.as_ref() else {
            return;
        };
        let mut r = Resources::default();
        let mut names: HashSet<&String> = HashSet::new();
        names.extend(resources.requests.iter().flat_map(|m| m.keys()));
        names.extend(resources.limits.iter().flat_map(|m| m.keys()));
        for name in names {
            let q = resources
                .requests
                .as_ref()
                .and_then(|m| m.get(name))
                .or_else(|| resources.limits.as_ref().and_then(|m| m.get(name)));
            let Some(q) = q else { continue };
            match name.as_str() {
                "cpu" => r.cpu_millis = pools::cpu_millis(&q.0).unwrap_or(0),
                "memory" => r.memory = pools::bytes(&q.0).unwrap_or(0),
                other if pools::is_gpu_resource(other) => {
                    r.gpus = q.0.trim().parse().unwrap_or(0);
                    if r.gpus > 0 {
                        gpu_type = Some(other.to_owned());
                    }
                }
                _ => {}
            }
        }
        if sum {
            total = total.plus(r);
        } else {
            total.cpu_millis = total.cpu_millis.max(r.cpu_millis);
            total.memory = total.memory.max(r.memory);
            total.gpus = total.gpus.max(r.gpus);
        }
    };
    for c in &spec.containers {
        add(c, true);
    }
    for c in spec.init_containers.iter().flatten() {
        add(c, false);
    }
    (total, gpu_type)
}

fn pod_on_node(pod: &Pod) -> PodOnNode {
    let owned_by_daemon_set = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    PodOnNode {
        name: pod_key(pod),
        instance: if is_modelfleet(pod) {
            Some(instance_of(pod).map(|i| i.to_string()).unwrap_or_default())
        } else {
            None
        },
        gpus: pod_needs(pod).0.gpus,
        starting: !pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        finished: is_finished(pod),
        daemon_or_mirror: owned_by_daemon_set || mirror,
    }
}

fn unschedulable(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.spec.as_ref().is_none_or(|s| s.node_name.is_none())
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            })
}

/// Builds the picture from cached objects.
pub fn observe(
    config: &AutoscalerConfig,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    deployments: &[Arc<DynamicObject>],
    machines: &[Arc<DynamicObject>],
    brain: &Brain,
    now: Instant,
) -> Seen {
    // Machine (namespace, name) → (pool id, being deleted or marked).
    let mut machine_pool: HashMap<(String, String), (String, bool)> = HashMap::new();
    for m in machines {
        let ns = m.metadata.namespace.clone().unwrap_or_default();
        let name = m.metadata.name.clone().unwrap_or_default();
        let Some(deployment) = m
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(DEPLOYMENT_LABEL))
        else {
            continue;
        };
        let going = m.metadata.deletion_timestamp.is_some()
            || m.data["status"]["phase"] == "Deleting"
            || m.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(DELETE_MACHINE));
        machine_pool.insert((ns.clone(), name), (format!("{ns}/{deployment}"), going));
    }
    let mut facts: Vec<NodeFacts> = Vec::with_capacity(nodes.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(nodes.len());
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let annotations = node.metadata.annotations.as_ref();
        let machine = annotations
            .and_then(|a| a.get(MACHINE_ANNOTATION))
            .map(|m| {
                let ns = annotations
                    .and_then(|a| a.get(pools::CLUSTER_NAMESPACE_ANNOTATION))
                    .cloned()
                    .or_else(|| {
                        machine_pool
                            .keys()
                            .find(|(_, n)| n == m)
                            .map(|(ns, _)| ns.clone())
                    })
                    .unwrap_or_default();
                (ns, m.clone())
            });
        let owner = machine.as_ref().and_then(|m| machine_pool.get(m));
        let spec = node.spec.as_ref();
        let taints: Vec<Taint> = pools::node_state(node).taints;
        let (allocatable, gpu_type) = pools::node_resources(node, false);
        let (capacity, _) = pools::node_resources(node, true);
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        index.insert(name.clone(), facts.len());
        facts.push(NodeFacts {
            name,
            uid: node.metadata.uid.clone(),
            resource_version: node.metadata.resource_version.clone(),
            pool: owner.map(|(pool, _)| pool.clone()),
            machine,
            ready,
            gpus_ready: allocatable.gpus >= capacity.gpus,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            tainted_by_us: taints.iter().any(|t| t.key == TAINT_KEY),
            being_removed: owner.is_some_and(|(_, going)| *going),
            capacity,
            allocatable,
            gpu_type,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            used: Resources::default(),
            pods: Vec::new(),
            modelfleet_pods: Vec::new(),
        });
    }
    let mut pending = Vec::new();
    for pod in pods {
        let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
        match bound.and_then(|n| index.get(n)) {
            Some(&i) => {
                let on = pod_on_node(pod);
                let node = &mut facts[i];
                if !on.finished {
                    node.used = node.used.plus(pod_needs(pod).0);
                    if on.instance.is_some() {
                        node.modelfleet_pods.push(on.name.clone());
                    }
                }
                node.pods.push(on);
            }
            None if bound.is_none() && is_modelfleet(pod) && unschedulable(pod) => {
                let (needs, gpu_type) = pod_needs(pod);
                let spec = pod.spec.as_ref();
                pending.push(PendingPod {
                    demand: Demand {
                        pod: pod_key(pod),
                        needs,
                        gpu_type,
                        node_selector: spec
                            .and_then(|s| s.node_selector.clone())
                            .unwrap_or_default(),
                        tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
                    },
                    object: ObjectRef {
                        kind: "Pod",
                        name: pod.metadata.name.clone().unwrap_or_default(),
                        namespace: pod.metadata.namespace.clone(),
                        uid: pod.metadata.uid.clone(),
                        instance: instance_of(pod),
                    },
                });
            }
            None => {}
        }
    }
    let mut seen_pools = Vec::new();
    let mut problems = Vec::new();
    for md in deployments {
        let id = format!(
            "{}/{}",
            md.metadata.namespace.as_deref().unwrap_or_default(),
            md.metadata.name.as_deref().unwrap_or_default()
        );
        // A node taking pods, else any ready one (its shape leaves out
        // the taints of being emptied).
        let of_pool = |n: &&NodeFacts| n.pool.as_deref() == Some(&id);
        let sample = facts
            .iter()
            .position(|n| of_pool(&n) && n.open() && !n.tainted_by_us)
            .or_else(|| {
                facts
                    .iter()
                    .position(|n| of_pool(&n) && n.ready && !n.being_removed)
            })
            .and_then(|i| nodes.get(i))
            .map(|n| n.as_ref());
        match pools::pool_of(md, &config.pools, sample) {
            Ok(Some(mut pool)) => {
                pool.desired = brain.desired_of(&pool.id, pool.desired, now);
                // A new node may show no GPU at all until its device
                // plugin reports: it has its GPUs once it shows the pool's.
                let gpus = pool.shape.as_ref().map_or(0, |s| s.allocatable.gpus);
                for node in facts.iter_mut().filter(|n| n.pool.as_deref() == Some(&id)) {
                    node.gpus_ready = node.allocatable.gpus >= node.capacity.gpus.max(gpus);
                }
                let ready = facts
                    .iter()
                    .filter(|n| {
                        n.pool.as_deref() == Some(&id)
                            && n.ready
                            && n.gpus_ready
                            && !n.being_removed
                    })
                    .count() as u32;
                seen_pools.push(SeenPool { pool, ready });
            }
            Ok(None) => {}
            Err(problem) => {
                let name = md.metadata.name.clone().unwrap_or_default();
                let namespace = md.metadata.namespace.clone().unwrap_or_default();
                problems.push((
                    Pool {
                        id,
                        namespace,
                        name,
                        min: 0,
                        max: 0,
                        desired: md.data["spec"]["replicas"].as_u64().unwrap_or(0) as u32,
                        shape: None,
                        shape_from: "nothing",
                    },
                    problem,
                ));
            }
        }
    }
    // Nodes of deployments that are not pools are nobody's to remove.
    for node in &mut facts {
        if let Some(pool) = &node.pool
            && !seen_pools.iter().any(|p| &p.pool.id == pool)
        {
            node.pool = None;
        }
    }
    Seen {
        pools: seen_pools,
        problems,
        nodes: facts,
        pending,
    }
}

/// What the deciding replica remembers between passes.
#[derive(Default)]
pub struct Brain {
    /// Pending pod → when first seen unschedulable.
    seen: HashMap<String, Instant>,
    /// Pending pods already planned for.
    planned: HashSet<String>,
    last_new: Option<Instant>,
    last_plan: Option<Instant>,
    /// Pod → the last thing told about it.
    told: HashMap<String, String>,
    /// Pool → replicas asked for, and when.
    asked: HashMap<String, (u32, Instant)>,
    last_scale_up: Option<Instant>,
    idle_since: HashMap<String, Instant>,
    /// Node → when it was cordoned for removal.
    cordoned: HashMap<String, Instant>,
}

impl Brain {
    /// The replicas of `pool`: those cached, or those last asked for while
    /// the cache may not show them yet.
    fn desired_of(&self, pool: &str, cached: u32, now: Instant) -> u32 {
        match self.asked.get(pool) {
            Some((asked, at)) if now.duration_since(*at) < ASKED_HOLD => *asked,
            _ => cached,
        }
    }

    /// The pool's replicas as of now: what this replica last asked for
    /// (a removal earlier in the same pass included), else the cache's.
    fn desired(&self, pool: &SeenPool) -> u32 {
        self.desired_of(&pool.pool.id, pool.pool.desired, Instant::now())
    }

    /// Decides a pass: what to grow, what to tell, what to cordon and
    /// which cordoned nodes to confirm.
    fn decide(&mut self, config: &AutoscalerConfig, seen: &Seen, now: Instant) -> Actions {
        let mut actions = Actions::default();
        self.scale_up(config, seen, now, &mut actions);
        self.scale_down(config, seen, now, &mut actions);
        actions
    }

    fn scale_up(
        &mut self,
        config: &AutoscalerConfig,
        seen: &Seen,
        now: Instant,
        actions: &mut Actions,
    ) {
        let keys: HashSet<&str> = seen.pending.iter().map(|p| p.demand.pod.as_str()).collect();
        self.seen.retain(|k, _| keys.contains(k.as_str()));
        self.planned.retain(|k| keys.contains(k.as_str()));
        self.told.retain(|k, _| keys.contains(k.as_str()));
        for key in &keys {
            if !self.seen.contains_key(*key) {
                self.seen.insert((*key).to_owned(), now);
                self.last_new = Some(now);
            }
        }
        let oldest_unplanned = self
            .seen
            .iter()
            .filter(|(k, _)| !self.planned.contains(*k))
            .map(|(_, at)| *at)
            .min();
        let gathered = oldest_unplanned.is_some_and(|oldest| {
            let quiet = self.last_new.is_none_or(|l| {
                now.duration_since(l).as_millis() >= u128::from(config.gather_quiet_ms)
            });
            quiet || now.duration_since(oldest).as_millis() >= u128::from(config.gather_max_ms)
        });
        // Pods already planned for are planned again now and then (a node
        // asked for may never come); new ones wait for the gathering.
        let replan = !keys.is_empty()
            && oldest_unplanned.is_none()
            && self
                .last_plan
                .is_some_and(|at| now.duration_since(at) >= REPLAN);
        if !(gathered || replan) {
            return;
        }
        self.last_plan = Some(now);
        self.planned.extend(keys.iter().map(|k| (*k).to_owned()));

        let states: Vec<PoolState> = seen
            .pools
            .iter()
            .filter_map(|p| {
                Some(PoolState {
                    id: p.pool.id.clone(),
                    min: p.pool.min,
                    max: p.pool.max,
                    desired: p.pool.desired,
                    ready: p.ready,
                    shape: p.pool.shape.clone()?,
                })
            })
            .collect();
        // Open nodes first, then those being emptied: a pending pod that
        // fits one of those takes it back rather than growing a pool.
        let emptying =
            |n: &&NodeFacts| n.tainted_by_us && !n.being_removed && n.ready && n.gpus_ready;
        let rooms: Vec<NodeRoom> = seen
            .nodes
            .iter()
            .filter(|n| n.open())
            .chain(seen.nodes.iter().filter(emptying))
            .map(|n| NodeRoom {
                name: n.name.clone(),
                free: n.allocatable.minus(n.used),
                allocatable: n.allocatable,
                gpu_type: n.gpu_type.clone(),
                labels: n.labels.clone(),
                taints: n
                    .taints
                    .iter()
                    .filter(|t| t.key != TAINT_KEY)
                    .cloned()
                    .collect(),
            })
            .collect();
        let demands: Vec<Demand> = seen.pending.iter().map(|p| p.demand.clone()).collect();
        let mut plan = plan::plan_scale_up(&states, &rooms, &demands);
        // A pool nothing describes yet may hold what no other can: no pod
        // is given up for good while one exists.
        let shapeless: Vec<&str> = seen
            .pools
            .iter()
            .filter(|p| p.pool.shape.is_none())
            .map(|p| p.pool.id.as_str())
            .collect();
        if !shapeless.is_empty() {
            for placement in &mut plan.placements {
                if let plan::Placement::Never(reason) = placement {
                    *placement = plan::Placement::WaitsForRoom(format!(
                        "{reason} (pools {} have no ready node and no capacity annotations to judge by)",
                        shapeless.join(", ")
                    ));
                }
            }
        }

        let mut grows: BTreeMap<String, Grow> = BTreeMap::new();
        for (pool_id, n) in &plan.grow {
            let Some(p) = seen.pools.iter().find(|p| &p.pool.id == pool_id) else {
                continue;
            };
            grows.insert(
                pool_id.clone(),
                Grow {
                    pool: pool_id.clone(),
                    namespace: p.pool.namespace.clone(),
                    name: p.pool.name.clone(),
                    from: p.pool.desired,
                    to: (p.pool.desired + n).min(p.pool.max),
                    max: p.pool.max,
                    pods: Vec::new(),
                },
            );
        }
        for (pending, placement) in seen.pending.iter().zip(plan.placements) {
            let key = &pending.demand.pod;
            let (warning, message) = match placement {
                plan::Placement::New(pool) => {
                    if let Some(grow) = grows.get_mut(&pool) {
                        grow.pods.push(pending.object.clone());
                    }
                    continue;
                }
                plan::Placement::Existing(node) => {
                    if seen.node(&node).is_some_and(|n| n.tainted_by_us)
                        && !actions.uncordon.contains(&node)
                    {
                        actions.uncordon.push(node);
                    }
                    continue;
                }
                plan::Placement::Coming(pool) => (
                    false,
                    format!("pod waits for a node of pool {pool} already asked for"),
                ),
                plan::Placement::AtMax(pools) => {
                    let message = format!(
                        "pod didn't trigger scale-up: max node group size reached ({})",
                        pools.join(", ")
                    );
                    if self.told.get(key) != Some(&message) {
                        tracing::info!(pod = %key, pools = %pools.join(","), "scale-up not triggered: pools at their maximum");
                        for pool in pools {
                            actions.decisions.push((
                                pool,
                                DecisionKind::NoScaleUp,
                                format!("{key}: at the maximum size, not grown for it"),
                            ));
                        }
                    }
                    (false, message)
                }
                plan::Placement::WaitsForRoom(reason) => (
                    false,
                    format!(
                        "pod didn't trigger scale-up: {reason}; it waits for room on the existing nodes"
                    ),
                ),
                plan::Placement::Never(reason) => {
                    let message = format!("pod didn't trigger scale-up: {reason}");
                    if self.told.get(key) != Some(&message) {
                        tracing::warn!(pod = %key, reason = %reason, "scale-up not triggered: no node could hold the pod");
                        for pool in &seen.pools {
                            actions.decisions.push((
                                pool.pool.id.clone(),
                                DecisionKind::NoScaleUp,
                                format!("{key}: no pool can hold it: {reason}"),
                            ));
                        }
                    }
                    (true, message)
                }
            };
            if self.told.get(key) == Some(&message) {
                continue;
            }
            self.told.insert(key.clone(), message.clone());
            actions.tell.push(Tell {
                object: pending.object.clone(),
                warning,
                reason: if message.starts_with("pod waits") {
                    "WaitingForNode"
                } else {
                    "NotTriggerScaleUp"
                },
                message,
            });
        }
        for grow in grows.into_values() {
            if grow.to > grow.from {
                for pod in &grow.pods {
                    self.told.insert(
                        format!(
                            "{}/{}",
                            pod.namespace.as_deref().unwrap_or_default(),
                            pod.name
                        ),
                        format!("scaled up {}", grow.pool),
                    );
                }
                actions.grow.push(grow);
            }
        }
    }

    fn scale_down(
        &mut self,
        config: &AutoscalerConfig,
        seen: &Seen,
        now: Instant,
        actions: &mut Actions,
    ) {
        let unneeded = Duration::from_secs(config.scale_down_unneeded_secs);
        let confirm = Duration::from_secs(config.scale_down_confirm_secs);
        let after_add = Duration::from_secs(config.scale_down_delay_after_add_secs);
        let names: HashSet<&str> = seen.nodes.iter().map(|n| n.name.as_str()).collect();
        self.idle_since.retain(|n, _| names.contains(n.as_str()));
        self.cordoned.retain(|n, _| names.contains(n.as_str()));
        let recently_grown = self
            .last_scale_up
            .is_some_and(|at| now.duration_since(at) < after_add);
        // Per pool: nodes it keeps once the removals under way are done.
        let mut keeping: HashMap<&str, u32> = seen
            .pools
            .iter()
            .map(|p| (p.pool.id.as_str(), p.pool.desired))
            .collect();
        for node in &seen.nodes {
            if node.tainted_by_us
                && !node.being_removed
                && let Some(k) = node.pool.as_deref().and_then(|p| keeping.get_mut(p))
            {
                *k = k.saturating_sub(1);
            }
        }
        for node in &seen.nodes {
            let Some(pool_id) = node.pool.as_deref() else {
                continue;
            };
            if node.being_removed {
                self.idle_since.remove(&node.name);
                self.cordoned.remove(&node.name);
                continue;
            }
            if node.tainted_by_us && actions.uncordon.contains(&node.name) {
                continue;
            }
            if node.tainted_by_us {
                // Ours, from this pass or an earlier scaler's.
                let since = *self.cordoned.entry(node.name.clone()).or_insert(now);
                if now.duration_since(since) >= confirm {
                    actions.confirm.push(node.name.clone());
                }
                continue;
            }
            if !node.ready || node.unschedulable {
                self.idle_since.remove(&node.name);
                continue;
            }
            if plan::node_use(node.gpu_node(), &node.pods, &HashSet::new()).is_some() {
                self.idle_since.remove(&node.name);
                continue;
            }
            let since = *self.idle_since.entry(node.name.clone()).or_insert(now);
            if now.duration_since(since) < unneeded || recently_grown {
                continue;
            }
            let (Some(keep), Some(pool)) = (
                keeping.get_mut(pool_id),
                seen.pools.iter().find(|p| p.pool.id == pool_id),
            ) else {
                continue;
            };
            if *keep <= pool.pool.min {
                continue;
            }
            *keep -= 1;
            actions.cordon.push(node.name.clone());
        }
    }
}
