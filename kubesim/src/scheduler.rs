//! The scheduler: binds each pending pod to the first node (by name) with
//! room for it, and marks the others Unschedulable, once, with a
//! `FailedScheduling` event that counts the reasons per node as the real
//! scheduler's does. (Pod affinity preferences are not weighed.)
//!
//! A pod marked Unschedulable is tried again, as in the real scheduler's
//! queue, only once something that could make room has changed (a node
//! came, went or changed; a pod was deleted or finished), or a second
//! after the last try: a cluster with hundreds of such pods and a thousand
//! nodes is not searched through every tick.
//!
//! To stay cheap with tens of thousands of pods, the scheduler keeps what
//! the bound pods use per node from the store's changes, as the real one
//! keeps a cache fed by watches (rebuilt from the store should it fall
//! behind), and looks for pods to place only when the store has changed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::cluster::{event, is_done, names, set_condition};
use crate::resources::Amounts;
use crate::{Change, Resource, Store};

/// How long Unschedulable pods wait to be tried again when nothing that
/// could make room has changed.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

pub(crate) struct Scheduler {
    /// The store's changes, to learn when room may have been made.
    changes: broadcast::Receiver<Change>,
    /// Whether something that could make room changed since the last try
    /// of the Unschedulable pods.
    room_changed: bool,
    last_retry: Instant,
    /// The node and requests of each bound, unfinished pod, by
    /// `(namespace, name)`.
    bound: HashMap<(String, String), (String, Amounts)>,
    /// What those pods use, per node.
    used: HashMap<String, Amounts>,
    /// The store's version when the last look for pods to place began.
    looked_at: u64,
}

/// A node as the scheduler weighs it.
struct Candidate {
    name: String,
    /// Ready, and not cordoned.
    open: bool,
    labels: Map<String, Value>,
    taints: Vec<Value>,
    allocatable: Amounts,
}

/// What makes two pods alike to the scheduler: a pod like one that found
/// no node finds none either in the same pass, since room only shrinks
/// as pods are bound.
#[derive(PartialEq, Eq, Hash)]
struct Likeness {
    asked: Amounts,
    node_selector: String,
    tolerations: String,
}

impl Scheduler {
    pub(crate) fn new(store: &Store) -> Scheduler {
        let mut scheduler = Scheduler {
            changes: store.subscribe(),
            room_changed: true,
            last_retry: Instant::now(),
            bound: HashMap::new(),
            used: HashMap::new(),
            looked_at: 0,
        };
        scheduler.rebuild(store);
        scheduler
    }

    /// One pass: binds what fits, marks what does not.
    pub(crate) fn tick(&mut self, store: &Store) {
        self.notice_changes(store);
        let retry = self.room_changed || self.last_retry.elapsed() >= RETRY_PERIOD;
        let version = store.resource_version();
        if version == self.looked_at && !retry {
            return;
        }
        // Read before looking: a change made meanwhile brings a new look.
        self.looked_at = version;
        let pending = pending_pods(store, retry);
        if retry {
            self.room_changed = false;
            self.last_retry = Instant::now();
        }
        if pending.is_empty() {
            return;
        }
        // Pods bound in this pass count at once; the cache learns of them
        // from their changes, next pass.
        let mut used = self.used.clone();
        let nodes = candidates(store);
        let mut no_room: HashMap<Likeness, String> = HashMap::new();
        for pod in &pending {
            let asked = Amounts::requested_by(pod);
            let likeness = Likeness {
                asked: asked.clone(),
                node_selector: pod["spec"]["nodeSelector"].to_string(),
                tolerations: pod["spec"]["tolerations"].to_string(),
            };
            if let Some(message) = no_room.get(&likeness) {
                mark_unschedulable(store, pod, message);
                continue;
            }
            match place(pod, &asked, &nodes, &used) {
                Ok(node) => {
                    used.entry(node.to_owned()).or_default().add(&asked);
                    bind(store, pod, node);
                }
                Err(message) => {
                    mark_unschedulable(store, pod, &message);
                    no_room.insert(likeness, message);
                }
            }
        }
    }

    /// Reads the changes made since the last pass into the cache, noting
    /// whether any could have made room. Behind by more changes than the
    /// channel keeps, it rebuilds the cache from the store; the changes
    /// still queued then bring it to the same state again, as each change
    /// replaces what the cache knew of its pod.
    fn notice_changes(&mut self, store: &Store) {
        loop {
            match self.changes.try_recv() {
                Ok(change) => {
                    self.room_changed |= makes_room(&change);
                    if change.resource == Resource::POD {
                        let gone = change.kind == "DELETED";
                        self.track(&change.object, gone);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.room_changed = true;
                    self.rebuild(store);
                }
                Err(_) => return,
            }
        }
    }

    /// Forgets what the cache knew of `pod`, then records it if it is bound
    /// and not finished (and not `gone`).
    fn track(&mut self, pod: &Value, gone: bool) {
        let key = names(pod);
        if let Some((node, asked)) = self.bound.remove(&key)
            && let Some(total) = self.used.get_mut(&node)
        {
            total.take(&asked);
        }
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            return;
        };
        if gone || is_done(pod) {
            return;
        }
        let asked = Amounts::requested_by(pod);
        self.used.entry(node.to_owned()).or_default().add(&asked);
        self.bound.insert(key, (node.to_owned(), asked));
    }

    /// Fills the cache afresh from the store.
    fn rebuild(&mut self, store: &Store) {
        self.bound.clear();
        self.used.clear();
        store.each(Resource::POD, |pod| self.track(pod, false));
    }
}

/// A node that came, went or changed, or a pod that was deleted or
/// finished.
fn makes_room(change: &Change) -> bool {
    match change.resource {
        Resource::NODE => true,
        Resource::POD => change.kind == "DELETED" || is_done(&change.object),
        _ => false,
    }
}

/// Copies of the pods to place: the unbound ones not yet tried, and, when
/// `retry`, those marked Unschedulable before.
fn pending_pods(store: &Store, retry: bool) -> Vec<Value> {
    let mut pending = Vec::new();
    store.each(Resource::POD, |pod| {
        if pod["spec"]["nodeName"].is_string() || is_done(pod) {
            return;
        }
        if retry || !is_unschedulable(pod) {
            pending.push(pod.clone());
        }
    });
    pending
}

fn is_unschedulable(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
}

/// Every node, by name.
fn candidates(store: &Store) -> Vec<Candidate> {
    let mut nodes = Vec::new();
    store.each(Resource::NODE, |node| {
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        nodes.push(Candidate {
            name: node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            open: ready && node["spec"]["unschedulable"] != true,
            labels: node["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            taints: node["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            allocatable: Amounts::allocatable(node),
        });
    });
    nodes
}

/// The first node with room for `pod`, or the `FailedScheduling` message
/// that says why there is none.
fn place<'a>(
    pod: &Value,
    asked: &Amounts,
    nodes: &'a [Candidate],
    used: &HashMap<String, Amounts>,
) -> Result<&'a str, String> {
    let nothing = Amounts::default();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes {
        let used = used.get(&node.name).unwrap_or(&nothing);
        match misfit(pod, asked, node, used) {
            None => return Ok(&node.name),
            Some(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        if detail.is_empty() {
            "no nodes".to_owned()
        } else {
            detail.join(", ")
        }
    ))
}

/// Why `pod` cannot go on `node`, or `None` when it fits.
fn misfit(pod: &Value, asked: &Amounts, node: &Candidate, used: &Amounts) -> Option<String> {
    if !node.open {
        return Some("node(s) were not ready or were unschedulable".to_owned());
    }
    if let Some(selector) = pod["spec"]["nodeSelector"].as_object()
        && selector.iter().any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return Some("node(s) didn't match Pod's node affinity/selector".to_owned());
    }
    let tolerations = pod["spec"]["tolerations"].as_array();
    for taint in &node.taints {
        if taint["effect"] == "PreferNoSchedule" {
            continue;
        }
        let tolerated = tolerations
            .into_iter()
            .flatten()
            .any(|t| tolerates(t, taint));
        if !tolerated {
            return Some("node(s) had untolerated taint".to_owned());
        }
    }
    node.allocatable.shortfall(used, asked)
}

fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let t = toleration;
    let key_ok = t["key"].is_null() && t["operator"] == "Exists" || t["key"] == taint["key"];
    let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
    let effect_ok = t["effect"].is_null() || t["effect"] == taint["effect"];
    key_ok && value_ok && effect_ok
}

fn bind(store: &Store, pod: &Value, node: &str) {
    let (ns, name) = names(pod);
    let _ = store.update(Resource::POD, &ns, &name, |p| {
        p["spec"]["nodeName"] = json!(node);
        set_condition(p, "PodScheduled", "True", "");
        p["status"]["phase"] = json!("Pending");
    });
    event(
        store,
        pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
    );
}

/// Marks `pod` Unschedulable with `message`, unless it already is.
fn mark_unschedulable(store: &Store, pod: &Value, message: &str) {
    if is_unschedulable(pod) {
        return;
    }
    let (ns, name) = names(pod);
    let _ = store.update(Resource::POD, &ns, &name, |p| {
        p["status"]["phase"] = json!("Pending");
        set_condition(p, "PodScheduled", "False", "Unschedulable");
        if let Some(c) = p["status"]["conditions"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "PodScheduled"))
        {
            c["message"] = json!(message);
        }
    });
    event(store, pod, "Warning", "FailedScheduling", message);
}
