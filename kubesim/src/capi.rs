//! A simulated Cluster API, so that a node autoscaler can be tested: the
//! MachineDeployment and MachineSet controllers and an infrastructure
//! provider in one, simplified. There are no MachineSets: a deployment's
//! Machines belong to it directly, and there are no bootstrap or
//! infrastructure objects.
//!
//! ```text
//!   MachineDeployment ──spec.replicas──▶ Machines ──provisioning delay──▶ Nodes
//!         ▲                                  │
//!         └── status.replicas, readyReplicas ┘
//! ```
//!
//! Each pass of the cluster's control loop:
//! - keeps `spec.replicas` (1 when unset) Machines per deployment that are
//!   not being deleted: it makes the missing ones (`Provisioning`), and
//!   when there are too many, deletes first those annotated
//!   `cluster.x-k8s.io/delete-machine`, then the newest;
//! - gives a Machine its Node once the provisioning delay has passed since
//!   the Machine was made (the Machine goes `Running`, with `nodeRef`);
//! - shows a new node's GPUs in its allocatable only after the GPU delay
//!   (as when the device plugin starts late), though its capacity has them
//!   from the start;
//! - finishes a deletion (its own, or a client's `DELETE`: the Machine is
//!   held as by Cluster API's finalizer) once the deletion delay has passed
//!   since the Machine went `Deleting`: the Node goes, and the pods bound
//!   to it with it, then the Machine;
//! - deletes the Machines of a deployment that is gone, and the Node of a
//!   Machine that is gone;
//! - writes each deployment's `status` when it changes.
//!
//! A deployment annotated `cluster.x-k8s.io/paused` is left alone, and so
//! are its Machines (unless being deleted), as Cluster API does. What a deployment's nodes offer (its [`NodeShape`]) is
//! kept by the simulator, as Cluster API keeps an infrastructure template;
//! for a deployment made through the API it comes from Cluster Autoscaler's
//! capacity annotations (`capacity.cluster-autoscaler.kubernetes.io/cpu`
//! and so on), or else is 2 CPUs and 8 GiB.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::resources::{DEFAULT_MAX_PODS, bytes, cpu_millis, cpu_quantity, memory_quantity};
use crate::{Resource, Store};

/// The label naming a Machine's deployment.
pub const DEPLOYMENT_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// The label (and node annotation) naming the workload cluster.
pub const CLUSTER_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// On a Machine: delete this one first when scaling down (any value).
pub const DELETE_MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/delete-machine";
/// On a Node: the Machine it belongs to.
pub const MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/machine";
/// On a deployment: the controller leaves it alone.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// On a deployment: the autoscaler's bounds.
pub const MIN_SIZE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size";
pub const MAX_SIZE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size";
/// The prefix of Cluster Autoscaler's capacity annotations, which say what
/// a deployment's nodes offer (for scaling up from zero).
pub const CAPACITY_PREFIX: &str = "capacity.cluster-autoscaler.kubernetes.io/";

/// The cluster name when a deployment names none.
const DEFAULT_CLUSTER: &str = "sim";
/// The Machines' finalizer, as Cluster API's.
const MACHINE_FINALIZER: &str = "machine.cluster.x-k8s.io";

/// What a pool's nodes offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShape {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
    /// The GPUs' resource name: `nvidia.com/gpu` unless set.
    pub gpu_resource: String,
    pub labels: BTreeMap<String, String>,
    /// `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
    /// The pods a node takes (its `pods` capacity): 110 unless set.
    pub max_pods: u64,
}

impl NodeShape {
    /// Nodes of `cpus` cores and `memory_gib` GiB, no GPU.
    pub fn new(cpus: u64, memory_gib: u64) -> NodeShape {
        NodeShape {
            cpu_millis: cpus * 1000,
            memory_bytes: memory_gib << 30,
            gpus: 0,
            gpu_resource: "nvidia.com/gpu".to_owned(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            max_pods: DEFAULT_MAX_PODS,
        }
    }

    /// The shape written in a deployment's capacity annotations, if it has
    /// at least the cpu and memory ones.
    fn from_annotations(deployment: &Value) -> Option<NodeShape> {
        let annotations = &deployment["metadata"]["annotations"];
        let get = |key: &str| annotations[format!("{CAPACITY_PREFIX}{key}")].as_str();
        let mut shape = NodeShape::new(0, 0);
        shape.cpu_millis = cpu_millis(get("cpu")?);
        shape.memory_bytes = bytes(get("memory")?);
        shape.gpus = get("gpu-count").and_then(|n| n.parse().ok()).unwrap_or(0);
        if let Some(kind) = get("gpu-type") {
            shape.gpu_resource = kind.to_owned();
        }
        if let Some(n) = get("maxPods").and_then(|n| n.parse().ok()) {
            shape.max_pods = n;
        }
        shape.labels = get("labels").map(parse_labels).unwrap_or_default();
        shape.taints = get("taints").map(parse_taints).unwrap_or_default();
        Some(shape)
    }

    /// Cluster Autoscaler's capacity annotations for this shape.
    fn annotations(&self) -> BTreeMap<String, String> {
        let mut written = BTreeMap::from([
            ("cpu", cpu_quantity(self.cpu_millis)),
            ("memory", memory_quantity(self.memory_bytes)),
            ("maxPods", self.max_pods.to_string()),
        ]);
        if self.gpus > 0 {
            written.insert("gpu-count", self.gpus.to_string());
            written.insert("gpu-type", self.gpu_resource.clone());
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            written.insert("labels", labels.join(","));
        }
        if !self.taints.is_empty() {
            let taints: Vec<String> = self
                .taints
                .iter()
                .map(|(k, v, effect)| format!("{k}={v}:{effect}"))
                .collect();
            written.insert("taints", taints.join(","));
        }
        written
            .into_iter()
            .map(|(key, value)| (format!("{CAPACITY_PREFIX}{key}"), value))
            .collect()
    }

    /// A ready Node of this shape named `name`: its labels (and
    /// `kubernetes.io/hostname`), taints, and capacity, which its
    /// allocatable equals.
    pub(crate) fn node(&self, name: &str) -> Value {
        let mut capacity = json!({
            "cpu": format!("{}m", self.cpu_millis),
            "memory": self.memory_bytes.to_string(),
            "pods": self.max_pods.to_string(),
        });
        if self.gpus > 0 {
            capacity[&self.gpu_resource] = json!(self.gpus.to_string());
        }
        let taints: Vec<Value> = self
            .taints
            .iter()
            .map(|(key, value, effect)| json!({ "key": key, "value": value, "effect": effect }))
            .collect();
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
        json!({
            "metadata": { "name": name, "labels": labels },
            "spec": { "taints": taints },
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "conditions": [{ "type": "Ready", "status": "True" }],
            },
        })
    }
}

/// `k1=v1,k2=v2`.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `k1=v1:NoSchedule,k2:NoExecute`.
fn parse_taints(text: &str) -> Vec<(String, String, String)> {
    text.split(',')
        .filter_map(|taint| taint.rsplit_once(':'))
        .map(|(key_value, effect)| {
            let (key, value) = key_value.split_once('=').unwrap_or((key_value, ""));
            (
                key.trim().to_owned(),
                value.trim().to_owned(),
                effect.trim().to_owned(),
            )
        })
        .collect()
}

/// A MachineDeployment to add with [`crate::Cluster::add_machine_deployment`].
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterName`: `sim` unless set.
    pub cluster_name: String,
    pub replicas: u64,
    /// The autoscaler's bounds, written as the `…-node-group-min-size` and
    /// `…-max-size` annotations when given.
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub shape: NodeShape,
    /// Also write the shape as Cluster Autoscaler's capacity annotations.
    pub capacity_annotations: bool,
    /// Make the first `replicas` Machines and their Nodes at once, ready,
    /// rather than after the provisioning delay.
    pub ready_at_once: bool,
}

impl PoolSpec {
    /// `replicas` nodes of `shape`, made through the controller (after the
    /// provisioning delay), with no bounds and no capacity annotations.
    pub fn new(namespace: &str, name: &str, replicas: u64, shape: NodeShape) -> PoolSpec {
        PoolSpec {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cluster_name: DEFAULT_CLUSTER.to_owned(),
            replicas,
            min: None,
            max: None,
            shape,
            capacity_annotations: false,
            ready_at_once: false,
        }
    }

    /// The MachineDeployment object, paused when its first Machines are to
    /// be made at once (so the controller does not race to make them too).
    pub(crate) fn deployment(&self) -> Value {
        let mut annotations = BTreeMap::new();
        if let Some(min) = self.min {
            annotations.insert(MIN_SIZE_ANNOTATION.to_owned(), min.to_string());
        }
        if let Some(max) = self.max {
            annotations.insert(MAX_SIZE_ANNOTATION.to_owned(), max.to_string());
        }
        if self.capacity_annotations {
            annotations.extend(self.shape.annotations());
        }
        if self.ready_at_once {
            annotations.insert(PAUSED_ANNOTATION.to_owned(), "true".to_owned());
        }
        let labels = json!({ CLUSTER_LABEL: self.cluster_name, DEPLOYMENT_LABEL: self.name });
        json!({
            "metadata": {
                "name": self.name,
                "labels": { CLUSTER_LABEL: self.cluster_name },
                "annotations": annotations,
            },
            "spec": {
                "clusterName": self.cluster_name,
                "replicas": self.replicas,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": { "clusterName": self.cluster_name },
                },
            },
        })
    }
}

/// The shapes the simulator keeps, by deployment `(namespace, name)`.
pub(crate) type Shapes = HashMap<(String, String), NodeShape>;

/// How long the simulated infrastructure takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delays {
    /// From a Machine's making to its Node's.
    pub provisioning: Duration,
    /// From a GPU node's making to its GPUs showing in allocatable.
    pub gpu: Duration,
    /// From a Machine going `Deleting` to its Node and itself going.
    pub deletion: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            provisioning: Duration::from_secs(1),
            gpu: Duration::ZERO,
            deletion: Duration::from_millis(200),
        }
    }
}

/// How many Machines a deployment wants: `spec.replicas`, 1 when unset
/// (as Cluster API's defaulting does).
pub(crate) fn desired_replicas(deployment: &Value) -> u64 {
    deployment["spec"]["replicas"].as_u64().unwrap_or(1)
}

/// A Machine as the controller weighs it.
struct MachineView {
    namespace: String,
    name: String,
    deployment: String,
    deleting: bool,
    phase: String,
    /// Annotated `cluster.x-k8s.io/delete-machine`.
    marked: bool,
    created: String,
}

impl MachineView {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// A Node as the controller weighs it.
struct NodeView {
    ready: bool,
    /// The `(namespace, name)` of its Machine, from its annotations.
    machine: Option<(String, String)>,
}

/// The controller's memory between passes: when things started, so that
/// delays shorter than the objects' whole-second timestamps can be kept.
#[derive(Default)]
pub(crate) struct MachineController {
    /// When each Machine was first seen (made, for the controller's own).
    seen: HashMap<(String, String), Instant>,
    /// When each Machine was first seen `Deleting`.
    deleting: HashMap<(String, String), Instant>,
    /// GPU nodes whose GPUs show in allocatable from the given moment.
    gpus_due: HashMap<String, Instant>,
    /// The store's version when the last pass began, if that pass left
    /// nothing waiting for time to pass: while the version stays, there is
    /// nothing to do.
    quiet_at: Option<u64>,
}

impl MachineController {
    /// One pass over every deployment, Machine and Node.
    pub(crate) fn tick(&mut self, store: &Store, delays: &Delays, shapes: &Shapes) {
        let version = store.resource_version();
        if self.quiet_at == Some(version) {
            return;
        }
        let now = Instant::now();
        let deployments = store.list(Resource::MACHINE_DEPLOYMENT, None);
        let machines = machine_views(store);
        let nodes = node_views(store);
        self.forget_gone(&machines);

        let mut gone_nodes = Vec::new();
        let mut finished = Vec::new();
        // Whether a Machine waits for a delay to pass.
        let mut waiting = false;
        for machine in &machines {
            let deployment = find(&deployments, &machine.namespace, &machine.deployment);
            if machine.deleting {
                waiting = true;
                if self.deletion_done(store, machine, now, delays.deletion) {
                    gone_nodes.push(machine.name.clone());
                    finished.push(machine.key());
                }
            } else if deployment.is_none() {
                start_deleting(store, &machine.namespace, &machine.name);
            } else if deployment.is_some_and(is_paused) {
                continue;
            } else if let Some(deployment) = deployment
                && !nodes.contains_key(&machine.name)
            {
                waiting = true;
                let shape = shape_of(shapes, deployment);
                self.provision(store, machine, deployment, &shape, now, delays);
            } else if machine.phase != "Running" {
                mark_running(store, &machine.namespace, &machine.name);
            }
        }
        gone_nodes.extend(orphan_nodes(&nodes, &machines));
        remove_nodes(store, &gone_nodes);
        for (namespace, name) in finished {
            let _ = store.delete(Resource::MACHINE, &namespace, &name);
        }
        self.release_gpus(store, now);
        for deployment in &deployments {
            if is_paused(deployment) {
                continue;
            }
            self.reconcile(store, deployment, &machines, &nodes, now);
        }
        let quiet = !waiting && self.gpus_due.is_empty();
        self.quiet_at = quiet.then_some(version);
    }

    fn forget_gone(&mut self, machines: &[MachineView]) {
        let present: HashSet<(String, String)> = machines.iter().map(MachineView::key).collect();
        self.seen.retain(|key, _| present.contains(key));
        self.deleting.retain(|key, _| present.contains(key));
    }

    /// Marks a Machine being deleted `Deleting`; true once its deletion
    /// delay has passed.
    fn deletion_done(
        &mut self,
        store: &Store,
        machine: &MachineView,
        now: Instant,
        delay: Duration,
    ) -> bool {
        if machine.phase != "Deleting" {
            let _ = store.update(Resource::MACHINE, &machine.namespace, &machine.name, |m| {
                m["status"]["phase"] = json!("Deleting");
            });
        }
        let since = *self.deleting.entry(machine.key()).or_insert(now);
        now.duration_since(since) >= delay
    }

    /// Makes a Machine's Node once its provisioning delay has passed.
    fn provision(
        &mut self,
        store: &Store,
        machine: &MachineView,
        deployment: &Value,
        shape: &NodeShape,
        now: Instant,
        delays: &Delays,
    ) {
        let since = *self.seen.entry(machine.key()).or_insert(now);
        if now.duration_since(since) < delays.provisioning {
            return;
        }
        let gpus_late = shape.gpus > 0 && !delays.gpu.is_zero();
        if make_node(store, &machine.name, deployment, shape, !gpus_late) {
            if gpus_late {
                self.gpus_due.insert(machine.name.clone(), now + delays.gpu);
            }
            mark_running(store, &machine.namespace, &machine.name);
        }
    }

    /// Shows the GPUs of the nodes whose GPU delay has passed.
    fn release_gpus(&mut self, store: &Store, now: Instant) {
        let due: Vec<String> = self
            .gpus_due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(node, _)| node.clone())
            .collect();
        for node in due {
            self.gpus_due.remove(&node);
            let _ = store.update(Resource::NODE, "", &node, |n| {
                n["status"]["allocatable"] = n["status"]["capacity"].clone();
            });
        }
    }

    /// Keeps a deployment's Machines at its replicas and its status current.
    fn reconcile(
        &mut self,
        store: &Store,
        deployment: &Value,
        machines: &[MachineView],
        nodes: &HashMap<String, NodeView>,
        now: Instant,
    ) {
        let namespace = deployment["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
        let mut live: Vec<&MachineView> = machines
            .iter()
            .filter(|m| m.namespace == namespace && m.deployment == name && !m.deleting)
            .collect();
        let desired = desired_replicas(deployment) as usize;
        let mut made = 0;
        for _ in live.len()..desired {
            if let Some(machine) = make_machine(store, deployment, "Provisioning") {
                self.seen.insert((namespace.to_owned(), machine), now);
                made += 1;
            }
        }
        if live.len() > desired {
            sort_for_deletion(&mut live);
            for victim in live.drain(..live.len() - desired) {
                start_deleting(store, namespace, &victim.name);
            }
        }
        let ready = live
            .iter()
            .filter(|m| nodes.get(&m.name).is_some_and(|n| n.ready))
            .count();
        let owned = machines
            .iter()
            .filter(|m| m.namespace == namespace && m.deployment == name)
            .count();
        let counts = Counts {
            replicas: live.len() + made,
            ready,
            // Those deleted before this pass and in it.
            deleting: owned - live.len(),
        };
        write_status(store, deployment, &counts);
    }
}

fn is_paused(deployment: &Value) -> bool {
    deployment["metadata"]["annotations"][PAUSED_ANNOTATION].is_string()
}

fn find<'a>(deployments: &'a [Value], namespace: &str, name: &str) -> Option<&'a Value> {
    deployments.iter().find(|d| {
        d["metadata"]["namespace"].as_str() == Some(namespace)
            && d["metadata"]["name"].as_str() == Some(name)
    })
}

/// The shape of a deployment's nodes: the simulator's own, else its
/// capacity annotations, else 2 CPUs and 8 GiB.
fn shape_of(shapes: &Shapes, deployment: &Value) -> NodeShape {
    let meta = &deployment["metadata"];
    let key = (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    );
    shapes
        .get(&key)
        .cloned()
        .or_else(|| NodeShape::from_annotations(deployment))
        .unwrap_or_else(|| NodeShape::new(2, 8))
}

/// The Machines that belong to a deployment.
fn machine_views(store: &Store) -> Vec<MachineView> {
    let mut views = Vec::new();
    store.each(Resource::MACHINE, |machine| {
        let meta = &machine["metadata"];
        let Some(deployment) = meta["labels"][DEPLOYMENT_LABEL].as_str() else {
            return;
        };
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        views.push(MachineView {
            namespace: text(&meta["namespace"]),
            name: text(&meta["name"]),
            deployment: deployment.to_owned(),
            deleting: meta["deletionTimestamp"].is_string(),
            phase: text(&machine["status"]["phase"]),
            marked: !meta["annotations"][DELETE_MACHINE_ANNOTATION].is_null(),
            created: text(&meta["creationTimestamp"]),
        });
    });
    views
}

fn node_views(store: &Store) -> HashMap<String, NodeView> {
    let mut views = HashMap::new();
    store.each(Resource::NODE, |node| {
        let meta = &node["metadata"];
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let annotations = &meta["annotations"];
        let machine = annotations[MACHINE_ANNOTATION].as_str().map(|machine| {
            let namespace = annotations["cluster.x-k8s.io/cluster-namespace"]
                .as_str()
                .unwrap_or_default();
            (namespace.to_owned(), machine.to_owned())
        });
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        views.insert(name, NodeView { ready, machine });
    });
    views
}

/// Nodes whose Machine is gone (deleted outright, past its finalizer).
fn orphan_nodes(nodes: &HashMap<String, NodeView>, machines: &[MachineView]) -> Vec<String> {
    let present: HashSet<(&str, &str)> = machines
        .iter()
        .map(|m| (m.namespace.as_str(), m.name.as_str()))
        .collect();
    nodes
        .iter()
        .filter(|(_, node)| {
            node.machine
                .as_ref()
                .is_some_and(|(ns, m)| !present.contains(&(ns.as_str(), m.as_str())))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Deletion order: those annotated `cluster.x-k8s.io/delete-machine`
/// first, then the newest.
fn sort_for_deletion(machines: &mut [&MachineView]) {
    machines.sort_by(|a, b| {
        b.marked
            .cmp(&a.marked)
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| b.name.cmp(&a.name))
    });
}

/// A new Machine of `deployment` in `phase`; its name, or `None` when the
/// store refused it (the next pass tries again).
pub(crate) fn make_machine(store: &Store, deployment: &Value, phase: &str) -> Option<String> {
    // A name already taken is drawn again, as `generateName` would be.
    (0..10).find_map(|_| {
        let owner = deployment["metadata"]["name"].as_str().unwrap_or_default();
        let name = format!("{owner}-{}", random_suffix());
        let machine = machine(deployment, &name, phase);
        let namespace = deployment["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        store.create(Resource::MACHINE, namespace, machine).ok()?;
        Some(name)
    })
}

/// Five random lowercase letters and digits.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let random = uuid::Uuid::new_v4().into_bytes();
    random[..5]
        .iter()
        .map(|byte| char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]))
        .collect()
}

/// The Machine `name` of `deployment`, in `phase`.
fn machine(deployment: &Value, name: &str, phase: &str) -> Value {
    let meta = &deployment["metadata"];
    let owner = meta["name"].as_str().unwrap_or_default();
    let cluster = cluster_name(deployment);
    json!({
        "metadata": {
            "name": name,
            "labels": { DEPLOYMENT_LABEL: owner, CLUSTER_LABEL: cluster },
            "ownerReferences": [{
                "apiVersion": Resource::MACHINE_DEPLOYMENT.api_version(),
                "kind": "MachineDeployment", "name": owner, "uid": meta["uid"],
                "controller": true, "blockOwnerDeletion": true,
            }],
            "finalizers": [MACHINE_FINALIZER],
        },
        "spec": { "clusterName": cluster },
        "status": { "phase": phase },
    })
}

fn cluster_name(deployment: &Value) -> &str {
    deployment["spec"]["clusterName"]
        .as_str()
        .unwrap_or(DEFAULT_CLUSTER)
}

/// The `providerID` that ties a Machine to its Node.
fn provider_id(machine: &str) -> String {
    format!("kubesim://{machine}")
}

/// Makes the Node of Machine `machine` of `deployment`, with its GPUs in
/// allocatable or not yet; false if the store refused it.
pub(crate) fn make_node(
    store: &Store,
    machine: &str,
    deployment: &Value,
    shape: &NodeShape,
    gpus_ready: bool,
) -> bool {
    let meta = &deployment["metadata"];
    let mut node = shape.node(machine);
    node["metadata"]["annotations"] = json!({
        MACHINE_ANNOTATION: machine,
        "cluster.x-k8s.io/cluster-namespace": meta["namespace"],
        CLUSTER_LABEL: cluster_name(deployment),
        "cluster.x-k8s.io/owner-kind": "MachineDeployment",
        "cluster.x-k8s.io/owner-name": meta["name"],
    });
    node["spec"]["providerID"] = json!(provider_id(machine));
    if !gpus_ready && shape.gpus > 0 {
        node["status"]["allocatable"][&shape.gpu_resource] = json!("0");
    }
    store.create(Resource::NODE, "", node).is_ok()
}

/// The Machine's Node is up: `Running`, with its `nodeRef`.
pub(crate) fn mark_running(store: &Store, namespace: &str, name: &str) {
    let node_uid = store
        .peek(Resource::NODE, "", name, |node| {
            node.map(|n| n["metadata"]["uid"].clone())
        })
        .unwrap_or(Value::Null);
    let _ = store.update(Resource::MACHINE, namespace, name, |m| {
        m["spec"]["providerID"] = json!(provider_id(name));
        m["status"]["phase"] = json!("Running");
        m["status"]["nodeRef"] =
            json!({ "apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid });
    });
}

/// Deletes a Machine as its deployment's controller does: marked, and held
/// by its finalizer until its Node is gone.
fn start_deleting(store: &Store, namespace: &str, name: &str) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let _ = store.update(Resource::MACHINE, namespace, name, |m| {
        m["metadata"]["deletionTimestamp"] = json!(now);
        m["status"]["phase"] = json!("Deleting");
    });
}

/// Deletes Nodes, and the pods bound to them, as the pod garbage collector
/// does once a node is gone.
fn remove_nodes(store: &Store, names: &[String]) {
    if names.is_empty() {
        return;
    }
    for name in names {
        let _ = store.delete(Resource::NODE, "", name);
    }
    let gone: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut pods = Vec::new();
    store.each(Resource::POD, |pod| {
        if pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|node| gone.contains(node))
        {
            pods.push(crate::cluster::names(pod));
        }
    });
    for (namespace, name) in pods {
        let _ = store.delete(Resource::POD, &namespace, &name);
    }
}

/// A deployment's Machines, counted for its status.
struct Counts {
    /// Not being deleted.
    replicas: usize,
    /// Not being deleted, with a Ready node.
    ready: usize,
    deleting: usize,
}

/// Writes a deployment's status when it differs from what is stored.
fn write_status(store: &Store, deployment: &Value, counts: &Counts) {
    let desired = desired_replicas(deployment) as usize;
    let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let phase = if counts.deleting > 0 {
        "ScalingDown"
    } else if counts.ready < desired {
        "ScalingUp"
    } else {
        "Running"
    };
    let status = json!({
        "selector": format!("{CLUSTER_LABEL}={},{DEPLOYMENT_LABEL}={name}", cluster_name(deployment)),
        "replicas": counts.replicas,
        "updatedReplicas": counts.replicas,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.ready,
        "unavailableReplicas": counts.replicas.saturating_sub(counts.ready),
        "phase": phase,
    });
    let stored = &deployment["status"];
    let same = status
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| stored[key] == *value);
    if same {
        return;
    }
    let _ = store.update(Resource::MACHINE_DEPLOYMENT, namespace, name, |d| {
        crate::merge(&mut d["status"], &status);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_annotations_say_the_shape_back() {
        let mut shape = NodeShape::new(4, 16);
        shape.gpus = 2;
        shape.max_pods = 58;
        shape.labels.insert("pool".into(), "gpu".into());
        shape.labels.insert("zone".into(), "a".into());
        shape
            .taints
            .push(("gpu".into(), "yes".into(), "NoSchedule".into()));
        shape
            .taints
            .push(("spot".into(), "".into(), "NoExecute".into()));
        let annotations = shape.annotations();
        let at = |key: &str| annotations[&format!("{CAPACITY_PREFIX}{key}")].as_str();
        assert_eq!(at("cpu"), "4");
        assert_eq!(at("memory"), "16Gi");
        assert_eq!(at("gpu-count"), "2");
        assert_eq!(at("gpu-type"), "nvidia.com/gpu");
        assert_eq!(at("maxPods"), "58");
        assert_eq!(at("labels"), "pool=gpu,zone=a");
        assert_eq!(at("taints"), "gpu=yes:NoSchedule,spot=:NoExecute");
        let deployment = json!({ "metadata": { "annotations": annotations } });
        assert_eq!(NodeShape::from_annotations(&deployment), Some(shape));
    }

    #[test]
    fn a_deployment_without_a_shape_gets_the_default() {
        let deployment = json!({ "metadata": { "namespace": "ns", "name": "d" } });
        assert_eq!(shape_of(&Shapes::new(), &deployment), NodeShape::new(2, 8));
        assert!(NodeShape::from_annotations(&deployment).is_none());
    }

    #[test]
    fn marked_machines_go_first_then_the_newest() {
        let machine = |name: &str, marked: bool, created: &str| MachineView {
            namespace: "ns".into(),
            name: name.into(),
            deployment: "d".into(),
            deleting: false,
            phase: "Running".into(),
            marked,
            created: created.into(),
        };
        let old_marked = machine("a", true, "2024-01-01T00:00:00Z");
        let newest = machine("b", false, "2024-01-01T00:00:09Z");
        let old = machine("c", false, "2024-01-01T00:00:01Z");
        let mut order = vec![&old, &newest, &old_marked];
        sort_for_deletion(&mut order);
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
