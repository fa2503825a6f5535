//! The parts of a cluster behind the API server: a scheduler that binds
//! pending pods to nodes with room, a kubelet that runs each bound pod as a
//! small Cog model server on the pod's own loopback address (127.x.y.z), so
//! jobs sent to a pod travel over real HTTP, and a simulated Cluster API
//! that turns MachineDeployments into Machines and Nodes (see
//! [`crate::capi`]).
//!
//! All run as one loop every 20 ms over the store, writing status as the
//! real components do (phase, conditions, container states, events). Knobs
//! inject what goes wrong in real clusters: images that cannot be pulled,
//! containers that crash at start, evictions and lost nodes; and set how
//! long machines take to come and go.
//!
//! The model server every pod runs behaves like the `sleepy` example:
//! `seconds` waits, `fail` fails with `message`, anything else succeeds
//! with `message`; like Cog, it runs one prediction at a time and cancels
//! one by id. For a cluster of tens of thousands of pods, the servers can
//! be turned off ([`Cluster::set_pod_servers`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::capi::{Delays, MachineController, NodeShape, PAUSED_ANNOTATION, PoolSpec, Shapes};
use crate::resources::DEFAULT_MAX_PODS;
use crate::scheduler::Scheduler;
use crate::{ApiError, Resource, Server, Store};

/// What one node offers.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// `nvidia.com/gpu`s.
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

    fn shape(&self) -> NodeShape {
        NodeShape {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            gpus: self.gpus,
            gpu_resource: "nvidia.com/gpu".to_owned(),
            labels: self.labels.clone(),
            taints: self.taints.clone(),
            max_pods: DEFAULT_MAX_PODS,
        }
    }
}

/// What the control loop reads at the start of each pass.
#[derive(Clone)]
struct Knobs {
    failing_images: BTreeSet<String>,
    crashing_images: BTreeSet<String>,
    /// Whether the kubelet runs a model server per pod.
    pod_servers: bool,
    delays: Delays,
    /// The node shapes of the deployments added through the cluster.
    shapes: Shapes,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            failing_images: BTreeSet::new(),
            crashing_images: BTreeSet::new(),
            pod_servers: true,
            delays: Delays::default(),
            shapes: Shapes::new(),
        }
    }
}

/// A running pod's model server.
struct Running {
    task: tokio::task::JoinHandle<()>,
}

/// How long the control loop's passes take (scheduler, kubelet and machine
/// controller together), since the start or the last
/// [`Cluster::reset_tick_times`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TickTimes {
    pub ticks: u64,
    pub last: Duration,
    pub max: Duration,
    pub total: Duration,
}

impl TickTimes {
    fn add(&mut self, took: Duration) {
        self.ticks += 1;
        self.last = took;
        self.max = self.max.max(took);
        self.total += took;
    }

    /// The mean pass, or zero before the first.
    pub fn mean(&self) -> Duration {
        match u32::try_from(self.ticks) {
            Ok(n) if n > 0 => self.total / n,
            _ => Duration::ZERO,
        }
    }
}

/// A simulated cluster: the API server, its store, and the loop that
/// schedules and runs pods and provisions machines. Everything stops when
/// it is dropped.
pub struct Cluster {
    pub store: Store,
    server: Server,
    knobs: Arc<Mutex<Knobs>>,
    times: Arc<Mutex<TickTimes>>,
    control: tokio::task::JoinHandle<()>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let store = Store::new();
        let server = store.serve().await;
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let times = Arc::new(Mutex::new(TickTimes::default()));
        let control = tokio::spawn(control_loop(store.clone(), knobs.clone(), times.clone()));
        Cluster {
            store,
            server,
            knobs,
            times,
            control,
        }
    }

    /// The API server's address, for a kube client.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Adds a ready node.
    pub fn add_node(&self, spec: &NodeSpec) {
        self.store
            .create(Resource::NODE, "", spec.shape().node(&spec.name))
            .expect("a node with a new name");
    }

    /// Adds a Cluster API MachineDeployment whose nodes have `pool.shape`,
    /// and returns it as stored. Its Machines and Nodes come through the
    /// machine controller, after the provisioning delay, unless
    /// `pool.ready_at_once`: then the first `pool.replicas` are made here,
    /// Running and Ready.
    pub fn add_machine_deployment(&self, pool: &PoolSpec) -> Result<Value, ApiError> {
        let key = (pool.namespace.clone(), pool.name.clone());
        self.knobs().shapes.insert(key, pool.shape.clone());
        let deployment = self.store.create(
            Resource::MACHINE_DEPLOYMENT,
            &pool.namespace,
            pool.deployment(),
        )?;
        if !pool.ready_at_once {
            return Ok(deployment);
        }
        for _ in 0..pool.replicas {
            let machine = crate::capi::make_machine(&self.store, &deployment, "Provisioning")
                .ok_or_else(|| ApiError::invalid("a machine name was taken; try again"))?;
            crate::capi::make_node(&self.store, &machine, &deployment, &pool.shape, true);
            crate::capi::mark_running(&self.store, &pool.namespace, &machine);
        }
        // Unpaused, the controller takes over.
        let unpause = json!({ "metadata": { "annotations": { PAUSED_ANNOTATION: null } } });
        self.store.merge_patch(
            Resource::MACHINE_DEPLOYMENT,
            &pool.namespace,
            &pool.name,
            &unpause,
        )
    }

    /// How long a new Machine takes to get its Node (1 s by default).
    pub fn set_provisioning_delay(&self, delay: Duration) {
        self.knobs().delays.provisioning = delay;
    }

    /// How long a new GPU node shows 0 allocatable GPUs, as while its
    /// device plugin starts (0 by default: at once).
    pub fn set_gpu_delay(&self, delay: Duration) {
        self.knobs().delays.gpu = delay;
    }

    /// How long a Machine stays `Deleting` before its Node (with the pods
    /// on it) and then the Machine go (200 ms by default).
    pub fn set_deletion_delay(&self, delay: Duration) {
        self.knobs().delays.deletion = delay;
    }

    /// Whether the kubelet runs a model server for each pod it starts (on
    /// by default). Off, a started pod still goes Running and Ready with a
    /// loopback address, but nothing listens there: for clusters of tens of
    /// thousands of pods.
    pub fn set_pod_servers(&self, on: bool) {
        self.knobs().pod_servers = on;
    }

    /// How long the control loop's passes have taken.
    pub fn tick_times(&self) -> TickTimes {
        *lock(&self.times)
    }

    /// Starts counting [`Cluster::tick_times`] afresh.
    pub fn reset_tick_times(&self) {
        *lock(&self.times) = TickTimes::default();
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
        lock(&self.knobs)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.control.abort();
    }
}

pub(crate) fn names(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

pub(crate) fn set_condition(pod: &mut Value, kind: &str, status: &str, reason: &str) {
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

pub(crate) fn is_done(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// The loop behind the API server: every 20 ms, the scheduler, the kubelet
/// and the machine controller each make one pass.
async fn control_loop(store: Store, knobs: Arc<Mutex<Knobs>>, times: Arc<Mutex<TickTimes>>) {
    let mut scheduler = Scheduler::new(&store);
    let mut machines = MachineController::default();
    let mut kubelet = Kubelet::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let knobs = lock(&knobs).clone();
        scheduler.tick(&store);
        kubelet.tick(&store, &knobs).await;
        machines.tick(&store, &knobs.delays, &knobs.shapes);
        lock(&times).add(started.elapsed());
    }
}

/// The kubelet's memory between passes.
#[derive(Default)]
struct Kubelet {
    /// The model servers of running pods, by `(namespace, name)`.
    running: HashMap<(String, String), Running>,
    /// How many pod addresses were handed out: the next is that many past
    /// 127.0.0.2.
    addresses_given: u32,
    /// The store's version when the last look at the pods began: while it
    /// stays, there is nothing new to do.
    looked_at: u64,
}

impl Kubelet {
    /// Removes terminating pods, stops the servers of pods gone or done,
    /// and starts bound pods (or reports why they cannot start).
    async fn tick(&mut self, store: &Store, knobs: &Knobs) {
        let version = store.resource_version();
        if version == self.looked_at {
            return;
        }
        // Read before looking: a change made meanwhile brings a new look.
        self.looked_at = version;
        let (terminating, to_start) = self.pods_to_act_on(store);
        for key in terminating {
            // Their containers exit at once on SIGTERM, and the object goes.
            if let Some(server) = self.running.remove(&key) {
                server.task.abort();
            }
            let _ = store.delete(Resource::POD, &key.0, &key.1);
        }
        self.stop_servers_of_gone_pods(store);
        for pod in &to_start {
            let image = pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            if knobs.failing_images.contains(image) {
                fail_pull(store, pod);
            } else if knobs.crashing_images.contains(image) {
                crash(store, pod);
            } else {
                self.start(store, pod, knobs.pod_servers).await;
            }
        }
    }

    /// The terminating pods, and copies of the bound ones not started yet.
    /// A pod whose container is ready is left alone, so a pass over a
    /// settled cluster copies nothing.
    fn pods_to_act_on(&self, store: &Store) -> (Vec<(String, String)>, Vec<Value>) {
        let mut terminating = Vec::new();
        let mut to_start = Vec::new();
        store.each(Resource::POD, |pod| {
            if pod["metadata"]["deletionTimestamp"].is_string() {
                terminating.push(names(pod));
            } else if pod["spec"]["nodeName"].is_string()
                && !is_done(pod)
                && pod["status"]["containerStatuses"][0]["ready"] != true
                && !self.running.contains_key(&names(pod))
            {
                to_start.push(pod.clone());
            }
        });
        (terminating, to_start)
    }

    fn stop_servers_of_gone_pods(&mut self, store: &Store) {
        self.running.retain(|(ns, name), server| {
            let live = store.peek(Resource::POD, ns, name, |pod| {
                pod.is_some_and(|p| !is_done(p))
            });
            if !live {
                server.task.abort();
            }
            live
        });
    }

    /// Starts a pod: its model server on its own loopback address when
    /// `serve`, else only an address that nothing listens on. Either way
    /// the pod goes Running and Ready.
    async fn start(&mut self, store: &Store, pod: &Value, serve: bool) {
        let container = &pod["spec"]["containers"][0];
        let ip = loopback(2 + self.addresses_given);
        self.addresses_given += 1;
        let key = names(pod);
        if serve {
            let port = container["ports"][0]["containerPort"]
                .as_u64()
                .unwrap_or(5000) as u16;
            let Ok(listener) = tokio::net::TcpListener::bind(SocketAddr::from((ip, port))).await
            else {
                return;
            };
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, model_server()).await;
            });
            self.running.insert(key.clone(), Running { task });
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let _ = store.update(Resource::POD, &key.0, &key.1, |p| {
            p["status"]["phase"] = json!("Running");
            p["status"]["podIP"] = json!(ip.to_string());
            p["status"]["startTime"] = json!(now);
            p["status"]["containerStatuses"] = json!([{
                "name": container["name"], "image": container["image"], "ready": true, "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            }]);
            set_condition(p, "Ready", "True", "");
        });
        event(store, pod, "Normal", "Started", "Started container");
    }
}

/// A pull of the pod's image fails: `ErrImagePull`, then `ImagePullBackOff`.
fn fail_pull(store: &Store, pod: &Value) {
    let (ns, name) = names(pod);
    let container = &pod["spec"]["containers"][0];
    let image = container["image"].as_str().unwrap_or_default();
    let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str();
    let (reason, message) = match waiting {
        None => (
            "ErrImagePull",
            format!("Failed to pull image \"{image}\": not found"),
        ),
        Some("ErrImagePull") => (
            "ImagePullBackOff",
            format!("Back-off pulling image \"{image}\""),
        ),
        Some(_) => return,
    };
    let _ = store.update(Resource::POD, &ns, &name, |p| {
        p["status"]["containerStatuses"] = json!([{
            "name": container["name"], "image": image, "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": reason, "message": message } },
        }]);
    });
    let kind = if reason == "ErrImagePull" {
        "Failed"
    } else {
        "BackOff"
    };
    event(store, pod, "Warning", kind, &message);
}

/// The pod's container exits at once: `CrashLoopBackOff`, five restarts.
fn crash(store: &Store, pod: &Value) {
    let (ns, name) = names(pod);
    let container = &pod["spec"]["containers"][0];
    let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0);
    if restarts >= 5 {
        return;
    }
    let _ = store.update(Resource::POD, &ns, &name, |p| {
        p["status"]["containerStatuses"] = json!([{
            "name": container["name"], "image": container["image"], "ready": false, "restartCount": restarts + 1,
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
}

/// The `n`th address of 127.0.0.0/8 past 127.0.0.1.
fn loopback(n: u32) -> Ipv4Addr {
    let [_, a, b, c] = n.to_be_bytes();
    Ipv4Addr::new(127, a, b, c)
}

/// Records a Kubernetes event about `pod`.
pub(crate) fn event(store: &Store, pod: &Value, kind: &str, reason: &str, message: &str) {
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
    fn pod_addresses_count_up_from_127_0_0_2() {
        assert_eq!(loopback(2), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(loopback(300), Ipv4Addr::new(127, 0, 1, 44));
    }
}
