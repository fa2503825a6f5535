//! The parts of a cluster behind the API server: a scheduler that binds
//! pending pods to nodes with room, and a kubelet that runs each bound pod
//! as a small Cog model server on the pod's own loopback address
//! (127.x.y.z), so jobs sent to a pod travel over real HTTP.
//!
//! Both run as one loop every 20 ms over the store, writing status as the
//! real components do (phase, conditions, container states, events). Knobs
//! inject what goes wrong in real clusters: images that cannot be pulled,
//! containers that crash at start, evictions and lost nodes.
//!
//! The model server every pod runs behaves like the `sleepy` example:
//! `seconds` waits, `fail` fails with `message`, anything else succeeds
//! with `message`; like Cog, it runs one prediction at a time and cancels
//! one by id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::{Resource, Server, Store};

/// What one node offers.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
    pub labels: BTreeMap<String, String>,
    /// `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
}

impl NodeSpec {
    /// A node with `cpus` cores and `memory_gib` GiB, no GPU.
    pub fn new(name: &str, cpus: u64, memory_gib: u64) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            cpu_millis: cpus * 1000,
            memory_bytes: memory_gib << 30,
            gpus: 0,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Knobs {
    failing_images: BTreeSet<String>,
    crashing_images: BTreeSet<String>,
}

/// A running pod's model server.
struct Running {
    task: tokio::task::JoinHandle<()>,
}

/// A simulated cluster: the API server, its store, and the loop that
/// schedules and runs pods. Everything stops when it is dropped.
pub struct Cluster {
    pub store: Store,
    server: Server,
    knobs: Arc<Mutex<Knobs>>,
    control: tokio::task::JoinHandle<()>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let store = Store::new();
        let server = store.serve().await;
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let control = tokio::spawn(control_loop(store.clone(), knobs.clone()));
        Cluster {
            store,
            server,
            knobs,
            control,
        }
    }

    /// The API server's address, for a kube client.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Adds a ready node.
    pub fn add_node(&self, spec: &NodeSpec) {
        let mut capacity = json!({
            "cpu": format!("{}m", spec.cpu_millis),
            "memory": spec.memory_bytes.to_string(),
            "pods": "110",
        });
        if spec.gpus > 0 {
            capacity["nvidia.com/gpu"] = json!(spec.gpus.to_string());
        }
        let taints: Vec<Value> = spec
            .taints
            .iter()
            .map(|(key, value, effect)| json!({ "key": key, "value": value, "effect": effect }))
            .collect();
        let mut labels = spec.labels.clone();
        labels.insert("kubernetes.io/hostname".to_owned(), spec.name.clone());
        let node = json!({
            "metadata": { "name": spec.name, "labels": labels },
            "spec": { "taints": taints },
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "conditions": [{ "type": "Ready", "status": "True" }],
            },
        });
        self.store
            .create(Resource::NODE, "", node)
            .expect("a node with a new name");
    }

    /// Pulls of `image` fail from now on (`ErrImagePull`, then
    /// `ImagePullBackOff`).
    pub fn fail_image_pulls(&self, image: &str) {
        self.knobs().failing_images.insert(image.to_owned());
    }

    /// Containers of `image` exit at once, every time (`CrashLoopBackOff`).
    pub fn crash_containers(&self, image: &str) {
        self.knobs().crashing_images.insert(image.to_owned());
    }

    /// Evicts a pod as the kubelet does under node pressure: phase Failed,
    /// reason Evicted, its server stopped.
    pub fn evict(&self, namespace: &str, pod: &str) {
        let _ = self.store.update(Resource::POD, namespace, pod, |p| {
            p["status"]["phase"] = json!("Failed");
            p["status"]["reason"] = json!("Evicted");
            p["status"]["message"] = json!("The node was low on resource: memory.");
            set_condition(p, "Ready", "False", "PodFailed");
        });
    }

    /// The node stops answering: it goes NotReady and its pods fail with
    /// reason NodeLost.
    pub fn lose_node(&self, name: &str) {
        let _ = self.store.update(Resource::NODE, "", name, |n| {
            n["status"]["conditions"] = json!([{ "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown" }]);
        });
        for pod in self.store.list(Resource::POD, None) {
            if pod["spec"]["nodeName"].as_str() == Some(name) {
                let (ns, pod_name) = names(&pod);
                let _ = self.store.update(Resource::POD, &ns, &pod_name, |p| {
                    p["status"]["phase"] = json!("Failed");
                    p["status"]["reason"] = json!("NodeLost");
                    set_condition(p, "Ready", "False", "NodeLost");
                });
            }
        }
    }

    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.control.abort();
    }
}

fn names(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn set_condition(pod: &mut Value, kind: &str, status: &str, reason: &str) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let condition =
        json!({ "type": kind, "status": status, "reason": reason, "lastTransitionTime": now });
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut kept: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c["type"] != kind)
        .collect();
    kept.push(condition);
    pod["status"]["conditions"] = Value::Array(kept);
}

/// CPU in millicores from a quantity (`500m`, `2`, `0.5`).
fn cpu_millis(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => q.parse::<f64>().map(|c| (c * 1000.0) as u64).unwrap_or(0),
    }
}

/// Bytes from a quantity (`512Mi`, `2Gi`, `1G`, `1000`).
fn bytes(q: &str) -> u64 {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (unit, factor) in UNITS {
        if let Some(n) = q.strip_suffix(unit) {
            return n
                .parse::<f64>()
                .map(|n| (n * factor as f64) as u64)
                .unwrap_or(0);
        }
    }
    q.parse().unwrap_or(0)
}

/// What a pod asks for: cpu millicores, memory bytes, GPUs (summed over
/// its containers' requests; a limit stands in for a missing request, as
/// Kubernetes defaults it).
fn requests(pod: &Value) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let resources = &container["resources"];
        let get = |name: &str| {
            resources["requests"][name]
                .as_str()
                .or_else(|| resources["limits"][name].as_str())
                .map(str::to_owned)
        };
        total.0 += get("cpu").map(|q| cpu_millis(&q)).unwrap_or(0);
        total.1 += get("memory").map(|q| bytes(&q)).unwrap_or(0);
        total.2 += get("nvidia.com/gpu")
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
    }
    total
}

fn allocatable(node: &Value) -> (u64, u64, u64) {
    let a = &node["status"]["allocatable"];
    (
        a["cpu"].as_str().map(cpu_millis).unwrap_or(0),
        a["memory"].as_str().map(bytes).unwrap_or(0),
        a["nvidia.com/gpu"]
            .as_str()
            .and_then(|q| q.parse().ok())
            .unwrap_or(0),
    )
}

/// Why `pod` cannot go on `node`, or `None` when it fits in `free`.
fn misfit(pod: &Value, node: &Value, free: (u64, u64, u64)) -> Option<&'static str> {
    if node["status"]["conditions"][0]["status"] != "True" || node["spec"]["unschedulable"] == true
    {
        return Some("node(s) were not ready or were unschedulable");
    }
    let labels = &node["metadata"]["labels"];
    if let Some(selector) = pod["spec"]["nodeSelector"].as_object()
        && selector.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        if taint["effect"] == "PreferNoSchedule" {
            continue;
        }
        let tolerated = tolerations.iter().any(|t| {
            let key_ok =
                t["key"].is_null() && t["operator"] == "Exists" || t["key"] == taint["key"];
            let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
            let effect_ok = t["effect"].is_null() || t["effect"] == taint["effect"];
            key_ok && value_ok && effect_ok
        });
        if !tolerated {
            return Some("node(s) had untolerated taint");
        }
    }
    let (cpu, memory, gpus) = requests(pod);
    if cpu > free.0 {
        return Some("Insufficient cpu");
    }
    if memory > free.1 {
        return Some("Insufficient memory");
    }
    if gpus > free.2 {
        return Some("Insufficient nvidia.com/gpu");
    }
    None
}

fn is_done(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

async fn control_loop(store: Store, knobs: Arc<Mutex<Knobs>>) {
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    let mut next_ip: u32 = 2;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        schedule(&store);
        let knobs = {
            let k = knobs.lock().unwrap_or_else(|e| e.into_inner());
            (k.failing_images.clone(), k.crashing_images.clone())
        };
        run_kubelet(&store, &knobs, &mut running, &mut next_ip).await;
    }
}

/// Binds every unbound pod to the first node (by name) with room for it;
/// marks the others Unschedulable, once, with a `FailedScheduling` event
/// that counts the reasons per node as the real scheduler's does. (Pod
/// affinity preferences are not weighed.)
fn schedule(store: &Store) {
    // What bound pods use, and copies of the unbound ones only.
    let mut used: HashMap<String, (u64, u64, u64)> = HashMap::new();
    let mut unbound = Vec::new();
    store.each(Resource::POD, |pod| {
        if is_done(pod) {
            return;
        }
        match pod["spec"]["nodeName"].as_str() {
            Some(node) => {
                let r = requests(pod);
                let u = used.entry(node.to_owned()).or_default();
                *u = (u.0 + r.0, u.1 + r.1, u.2 + r.2);
            }
            None => unbound.push(pod.clone()),
        }
    });
    if unbound.is_empty() {
        return;
    }
    let nodes = store.list(Resource::NODE, None);
    for pod in &unbound {
        let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut chosen = None;
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let a = allocatable(node);
            let u = used.get(name).copied().unwrap_or_default();
            let free = (
                a.0.saturating_sub(u.0),
                a.1.saturating_sub(u.1),
                a.2.saturating_sub(u.2),
            );
            match misfit(pod, node, free) {
                None => {
                    chosen = Some(name.to_owned());
                    break;
                }
                Some(reason) => *reasons.entry(reason).or_default() += 1,
            }
        }
        let (ns, name) = names(pod);
        match chosen {
            Some(node) => {
                let r = requests(pod);
                let u = used.entry(node.clone()).or_default();
                *u = (u.0 + r.0, u.1 + r.1, u.2 + r.2);
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
            None => {
                let already = pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable");
                if already {
                    continue;
                }
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                let message = format!(
                    "0/{} nodes are available: {}.",
                    nodes.len(),
                    if detail.is_empty() {
                        "no nodes".to_owned()
                    } else {
                        detail.join(", ")
                    }
                );
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
                event(store, pod, "Warning", "FailedScheduling", &message);
            }
        }
    }
}

/// Starts bound pods, reports image and crash failures, and stops the
/// servers of pods that are gone or done.
async fn run_kubelet(
    store: &Store,
    (failing, crashing): &(BTreeSet<String>, BTreeSet<String>),
    running: &mut HashMap<(String, String), Running>,
    next_ip: &mut u32,
) {
    // Terminating pods: their containers exit at once on SIGTERM, and the
    // object goes.
    let mut terminating = Vec::new();
    store.each(Resource::POD, |pod| {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            terminating.push(names(pod));
        }
    });
    for (ns, name) in terminating {
        if let Some(server) = running.remove(&(ns.clone(), name.clone())) {
            server.task.abort();
        }
        let _ = store.delete(Resource::POD, &ns, &name);
    }
    // The pods still live, and copies of the bound ones not started yet.
    let mut live: BTreeSet<(String, String)> = BTreeSet::new();
    let mut to_start = Vec::new();
    store.each(Resource::POD, |pod| {
        if is_done(pod) {
            return;
        }
        let key = names(pod);
        if pod["spec"]["nodeName"].is_string() && !running.contains_key(&key) {
            to_start.push(pod.clone());
        }
        live.insert(key);
    });
    running.retain(|key, server| {
        let keep = live.contains(key);
        if !keep {
            server.task.abort();
        }
        keep
    });
    for pod in &to_start {
        let key = names(pod);
        let container = &pod["spec"]["containers"][0];
        let image = container["image"].as_str().unwrap_or_default();
        let (ns, name) = key.clone();
        if failing.contains(image) {
            let waiting =
                pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str();
            let (reason, message) = match waiting {
                None => (
                    "ErrImagePull",
                    format!("Failed to pull image \"{image}\": not found"),
                ),
                Some("ErrImagePull") => (
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{image}\""),
                ),
                Some(_) => continue,
            };
            let _ = store.update(Resource::POD, &ns, &name, |p| {
                p["status"]["containerStatuses"] = json!([{
                    "name": container["name"], "image": image, "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": reason, "message": message } },
                }]);
            });
            event(
                store,
                pod,
                "Warning",
                if reason == "ErrImagePull" {
                    "Failed"
                } else {
                    "BackOff"
                },
                &message,
            );
            continue;
        }
        if crashing.contains(image) {
            let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0);
            if restarts >= 5 {
                continue;
            }
            let _ = store.update(Resource::POD, &ns, &name, |p| {
                p["status"]["containerStatuses"] = json!([{
                    "name": container["name"], "image": image, "ready": false, "restartCount": restarts + 1,
                    "state": { "waiting": { "reason": "CrashLoopBackOff",
                        "message": format!("back-off restarting failed container {}", container["name"].as_str().unwrap_or_default()) } },
                    "lastState": { "terminated": { "exitCode": 1, "reason": "Error" } },
                }]);
                // A container that started at least once makes the pod
                // Running, ready or not.
                p["status"]["phase"] = json!("Running");
                set_condition(p, "Ready", "False", "ContainersNotReady");
            });
            event(
                store,
                pod,
                "Warning",
                "BackOff",
                "Back-off restarting failed container",
            );
            continue;
        }
        let port = container["ports"][0]["containerPort"]
            .as_u64()
            .unwrap_or(5000) as u16;
        let ip = loopback(*next_ip);
        *next_ip += 1;
        let Ok(listener) = tokio::net::TcpListener::bind(SocketAddr::from((ip, port))).await else {
            continue;
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, model_server()).await;
        });
        running.insert(key, Running { task });
        let _ = store.update(Resource::POD, &ns, &name, |p| {
            p["status"]["phase"] = json!("Running");
            p["status"]["podIP"] = json!(ip.to_string());
            p["status"]["startTime"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            p["status"]["containerStatuses"] = json!([{
                "name": container["name"], "image": image, "ready": true, "restartCount": 0,
                "state": { "running": { "startedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true) } },
            }]);
            set_condition(p, "Ready", "True", "");
        });
        event(store, pod, "Normal", "Started", "Started container");
    }
}

/// The `n`th address of 127.0.0.0/8 past 127.0.0.1.
fn loopback(n: u32) -> Ipv4Addr {
    let [_, a, b, c] = n.to_be_bytes();
    Ipv4Addr::new(127, a, b, c)
}

/// Records a Kubernetes event about `pod`.
fn event(store: &Store, pod: &Value, kind: &str, reason: &str, message: &str) {
    let (ns, name) = names(pod);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let _ = store.create(
        Resource::EVENT,
        &ns,
        json!({
            "metadata": { "generateName": format!("{name}.") },
            "involvedObject": {
                "kind": "Pod", "namespace": ns, "name": name,
                "uid": pod["metadata"]["uid"], "apiVersion": "v1",
            },
            "type": kind, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": { "component": if reason == "Scheduled" || reason == "FailedScheduling" { "default-scheduler" } else { "kubelet" } },
        }),
    );
}

/// The prediction a model server is running: its id, and how to cancel it.
type Prediction = Arc<Mutex<Option<(String, Arc<tokio::sync::Notify>)>>>;

/// A model server speaking Cog's HTTP API, like the `sleepy` example, and
/// as Cog does: one prediction at a time (`409` while busy, `BUSY` on the
/// health check), cancelled by id, and run to its end even when the client
/// goes away.
fn model_server() -> axum::Router {
    let running = Prediction::default();
    let health = running.clone();
    let cancels = running.clone();
    axum::Router::new()
        .route(
            "/health-check",
            get(move || {
                let busy = lock(&health).is_some();
                async move { Json(json!({ "status": if busy { "BUSY" } else { "READY" } })) }
            }),
        )
        .route(
            "/predictions",
            post(move |Json(body): Json<Value>| predict(running.clone(), body)),
        )
        .route(
            "/predictions/{id}/cancel",
            post(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let found = match lock(&cancels).as_ref() {
                        Some((running, cancel)) if *running == id => {
                            cancel.notify_one();
                            true
                        }
                        _ => false,
                    };
                    async move {
                        let code = if found {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::NOT_FOUND
                        };
                        (code, Json(json!({})))
                    }
                },
            ),
        )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn predict(running: Prediction, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let cancel = Arc::new(tokio::sync::Notify::new());
    {
        let mut slot = lock(&running);
        if slot.is_some() {
            let busy = json!({ "detail": "Already running a prediction" });
            return (axum::http::StatusCode::CONFLICT, Json(busy)).into_response();
        }
        *slot = Some((id, cancel.clone()));
    }
    // Its own task: the prediction goes on if the client disconnects.
    let work = tokio::spawn(async move {
        let input = &body["input"];
        let seconds = input["seconds"].as_f64().unwrap_or(0.0).max(0.0);
        let finished = tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(seconds.min(3600.0))) => true,
            () = cancel.notified() => false,
        };
        *lock(&running) = None;
        let message = input["message"].as_str().unwrap_or("done");
        if !finished {
            json!({ "status": "canceled" })
        } else if input["fail"] == true {
            json!({ "status": "failed", "error": message })
        } else {
            json!({ "status": "succeeded", "output": message })
        }
    });
    match work.await {
        Ok(answer) => Json(answer).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(cpu_millis("500m"), 500);
        assert_eq!(cpu_millis("2"), 2000);
        assert_eq!(cpu_millis("0.25"), 250);
        assert_eq!(bytes("512Mi"), 512 << 20);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1000"), 1000);
        assert_eq!(loopback(2), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(loopback(300), Ipv4Addr::new(127, 0, 1, 44));
    }
}
