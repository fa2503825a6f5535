//! The node autoscaler at scale, against the simulated cluster.
//!
//! kubesim (API server, scheduler, kubelet without model servers, and
//! Cluster API's machine controller) holds 1,000 nodes in three
//! MachineDeployments, ready at once and with room to grow:
//!
//! | pool        | nodes | max   | a node                        | its 30 pods                       |
//! | ----------- | ----- | ----- | ----------------------------- | --------------------------------- |
//! | `cpu-small` | 600   | 1,000 | 4 CPU, 16 GiB                 | 1 DaemonSet, 29 × 100m/256Mi      |
//! | `cpu-large` | 300   | 1,000 | 16 CPU, 64 GiB                | 1 DaemonSet, 29 × 250m/1Gi        |
//! | `gpu`       | 100   | 300   | 8 CPU, 32 GiB, 1 GPU, tainted | 1 DaemonSet, 1 × 1 GPU, 28 small  |
//!
//! 30,000 pods in all, bound and running, written straight into the
//! simulator's store; all but the DaemonSet pods are labelled as modelfleet
//! pods. The real server runs in this process (SQLite in a temporary
//! folder, the Kubernetes backend, `kubernetes.autoscaler.enabled`, one
//! model that starts nothing by itself) and becomes the leader, so its
//! autoscaler decides. Then a burst of 300 modelfleet pods arrives that no
//! node has room for: 250 asking 12 CPU and 48 GiB (a `cpu-large` node
//! each) and 50 asking a GPU (a `gpu` node each). New machines take an hour
//! to come, so the pods stay pending while they are measured.
//!
//! It prints:
//! - the decision pass (the autoscaler reading its watch caches, planning
//!   and deciding; not its API calls) with nothing pending and with the
//!   burst pending: p50 and max of the server's own `last_pass()` over
//!   about 20 passes. The aim: under 1 s.
//! - the parts of a pass timed here: `observe` (the caches read into one
//!   picture) and `plan::plan_scale_up` alone, on inputs built as the
//!   cluster is.
//! - first Unschedulable → scale request: from the moment the simulated
//!   scheduler marked the first burst pod `PodScheduled=False/Unschedulable`
//!   to the MachineDeployment's `spec.replicas` change through the scale
//!   subresource, both as kubesim's change stream timed them. The issue's
//!   aim: under 5 s (Cluster Autoscaler's service level is 30 s). Most of
//!   it is the gathering the autoscaler does on purpose: it waits until no
//!   new unschedulable pod has come for `gather_quiet_ms` (1 s).
//! - which pools grew and by how much.
//!
//! It panics unless every burst pod was marked Unschedulable and none
//! bound, the pools grew by what the burst needs (one new node per pod,
//! within the pool's maximum; no more, whether in one scale request or
//! several) and no other pool grew, so that its figures are of a run that
//! worked. A burst asked for in more than one request is said so.
//!
//! Run with `cargo bench --bench autoscaler`. The figures are wall-clock
//! times on a shared machine: the load average is printed first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Toleration;
use kubesim::{Change, Cluster, NodeShape, PoolSpec, Resource};
use modelfleet::app::Application;
use modelfleet::config::{BackendKind, Config};
use modelfleet::fleet::kubernetes::autoscaler::plan::{
    self, Demand, NodeRoom, PoolState, Resources, Shape, Taint,
};
use modelfleet::fleet::kubernetes::autoscaler::{AutoscalerHandle, Brain};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

/// The server's namespace; the modelfleet pods are there too.
const NAMESPACE: &str = "modelfleet";
/// The MachineDeployments' namespace.
const POOL_NAMESPACE: &str = "capi";
const PODS_PER_NODE: usize = 30;
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const INSTANCE: &str = "modelfleet.io/instance";
const GPU: &str = "nvidia.com/gpu";
/// Passes sampled for each figure.
const PASSES: usize = 20;
/// The longest the scale-up may take before the run is called a failure.
const SCALE_UP_LIMIT: Duration = Duration::from_secs(60);

fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// What a pod asks for.
#[derive(Debug, Clone, Copy)]
struct Ask {
    cpu_millis: u64,
    memory_mib: u64,
    gpus: u64,
}

impl Ask {
    const fn new(cpu_millis: u64, memory_mib: u64, gpus: u64) -> Ask {
        Ask {
            cpu_millis,
            memory_mib,
            gpus,
        }
    }

    fn requests(&self) -> Value {
        let mut requests = json!({
            "cpu": format!("{}m", self.cpu_millis),
            "memory": format!("{}Mi", self.memory_mib),
        });
        if self.gpus > 0 {
            requests[GPU] = json!(self.gpus.to_string());
        }
        requests
    }

    fn resources(&self) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis,
            memory: self.memory_mib << 20,
            gpus: self.gpus,
            pods: 1,
        }
    }
}

/// The DaemonSet pod every node runs.
const DAEMON: Ask = Ask::new(100, 128, 0);

/// One MachineDeployment and what runs on each of its nodes.
struct Layout {
    name: &'static str,
    nodes: u64,
    max: u64,
    cpus: u64,
    memory_gib: u64,
    gpus: u64,
    /// The modelfleet pods on a node (`PODS_PER_NODE - 1` of them).
    fleet_pods: fn(usize) -> Ask,
}

impl Layout {
    fn id(&self) -> String {
        format!("{POOL_NAMESPACE}/{}", self.name)
    }

    fn tainted(&self) -> bool {
        self.gpus > 0
    }

    fn shape(&self) -> NodeShape {
        let mut shape = NodeShape::new(self.cpus, self.memory_gib);
        shape.gpus = self.gpus;
        if self.tainted() {
            shape
                .taints
                .push((GPU.into(), "present".into(), "NoSchedule".into()));
        }
        shape
    }
}

static POOLS: [Layout; 3] = [
    Layout {
        name: "cpu-small",
        nodes: 600,
        max: 1000,
        cpus: 4,
        memory_gib: 16,
        gpus: 0,
        fleet_pods: |_| Ask::new(100, 256, 0),
    },
    Layout {
        name: "cpu-large",
        nodes: 300,
        max: 1000,
        cpus: 16,
        memory_gib: 64,
        gpus: 0,
        fleet_pods: |_| Ask::new(250, 1024, 0),
    },
    Layout {
        name: "gpu",
        nodes: 100,
        max: 300,
        cpus: 8,
        memory_gib: 32,
        gpus: 1,
        fleet_pods: |k| {
            if k == 0 {
                Ask::new(2000, 8192, 1)
            } else {
                Ask::new(100, 256, 0)
            }
        },
    },
];

/// A kind of pod in the burst: how many, what each asks, whether it
/// tolerates the GPU taint, and the pool each should grow by one node.
struct BurstKind {
    prefix: &'static str,
    count: usize,
    ask: Ask,
    tolerates_gpu: bool,
    grows: &'static str,
}

static BURST: [BurstKind; 2] = [
    BurstKind {
        prefix: "burst-large",
        count: 250,
        ask: Ask::new(12_000, 48 << 10, 0),
        tolerates_gpu: false,
        grows: "cpu-large",
    },
    BurstKind {
        prefix: "burst-gpu",
        count: 50,
        ask: Ask::new(4000, 16 << 10, 1),
        tolerates_gpu: true,
        grows: "gpu",
    },
];

fn burst_size() -> usize {
    BURST.iter().map(|b| b.count).sum()
}

/// New nodes per pool the burst should bring: one a pod, within the
/// pool's maximum.
fn expected_growth() -> BTreeMap<String, u64> {
    let mut growth = BTreeMap::new();
    for kind in &BURST {
        let pool = POOLS
            .iter()
            .find(|p| p.name == kind.grows)
            .expect("a pool of the layout");
        let room = pool.max - pool.nodes;
        growth.insert(pool.id(), (kind.count as u64).min(room));
    }
    growth
}

fn gpu_toleration() -> Value {
    json!([{ "key": GPU, "operator": "Exists", "effect": "NoSchedule" }])
}

/// A modelfleet pod bound to `node` and running, as the kubelet leaves
/// one (so the simulated kubelet has nothing to do for it).
fn running_pod(name: &str, node: &str, ask: Ask, labels: Value, extra: Value) -> Value {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut pod = json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "model", "image": "example/model:1",
                "resources": { "requests": ask.requests() } }],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "startTime": now,
            "conditions": [
                { "type": "PodScheduled", "status": "True" },
                { "type": "Ready", "status": "True" },
            ],
            "containerStatuses": [{ "name": "model", "image": "example/model:1",
                "ready": true, "restartCount": 0, "state": { "running": { "startedAt": now } } }],
        },
    });
    kubesim::merge(&mut pod, &extra);
    pod
}

fn fleet_labels() -> Value {
    json!({ MANAGED_BY: "modelfleet", INSTANCE: Uuid::new_v4().to_string() })
}

/// The pools, their nodes and 30,000 running pods. Returns the node
/// names per pool.
fn populate(cluster: &Cluster) -> BTreeMap<&'static str, Vec<String>> {
    for layout in &POOLS {
        let mut pool = PoolSpec::new(POOL_NAMESPACE, layout.name, layout.nodes, layout.shape());
        pool.min = Some(1);
        pool.max = Some(layout.max);
        pool.capacity_annotations = true;
        pool.ready_at_once = true;
        cluster
            .add_machine_deployment(&pool)
            .expect("a MachineDeployment");
    }
    let mut nodes: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for node in cluster.store.list(Resource::NODE, None) {
        let pool = node["metadata"]["annotations"]["cluster.x-k8s.io/owner-name"]
            .as_str()
            .and_then(|owner| POOLS.iter().find(|p| p.name == owner))
            .expect("a node of one of the pools");
        let name = node["metadata"]["name"].as_str().expect("a name");
        nodes.entry(pool.name).or_default().push(name.to_owned());
    }
    let mut n = 0;
    for layout in &POOLS {
        let names = &nodes[layout.name];
        assert_eq!(names.len() as u64, layout.nodes, "nodes of {}", layout.name);
        for node in names {
            let daemon = running_pod(
                &format!("node-agent-{node}"),
                node,
                DAEMON,
                json!({ "app": "node-agent" }),
                json!({
                    "metadata": { "ownerReferences": [{ "apiVersion": "apps/v1",
                        "kind": "DaemonSet", "name": "node-agent", "uid": Uuid::new_v4().to_string(),
                        "controller": true }] },
                    "spec": { "tolerations": [{ "operator": "Exists" }] },
                }),
            );
            cluster
                .store
                .create(Resource::POD, "kube-system", daemon)
                .expect("a DaemonSet pod");
            for k in 0..PODS_PER_NODE - 1 {
                let extra = if layout.tainted() {
                    json!({ "spec": { "tolerations": gpu_toleration() } })
                } else {
                    json!({})
                };
                let pod = running_pod(
                    &format!("fleet-{n:05}"),
                    node,
                    (layout.fleet_pods)(k),
                    fleet_labels(),
                    extra,
                );
                cluster
                    .store
                    .create(Resource::POD, NAMESPACE, pod)
                    .expect("a modelfleet pod");
                n += 1;
            }
        }
    }
    nodes
}

fn config(db_url: &str, api_url: String) -> Config {
    let mut config = Config::default();
    config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.shutdown_grace_secs = 2;
    config.database.url = db_url.to_owned();
    config.kubernetes.backend = BackendKind::Kubernetes;
    config.kubernetes.api_url = Some(api_url);
    config.kubernetes.namespace = Some(NAMESPACE.to_owned());
    config.kubernetes.autoscaler.enabled = true;
    // No node is removed during the run: the benchmark measures scale-up.
    config.kubernetes.autoscaler.scale_down_unneeded_secs = 3600;
    // One model that runs nothing until asked (and nothing asks).
    let mut model = modelfleet::models::example_models()
        .into_iter()
        .find(|m| m.id == "sleepy")
        .expect("the sleepy example");
    model.local = None;
    model.min_instances = 0;
    model.kubernetes = Some(json!({
        "image": "example/sleepy:1",
        "requests": { "cpu": "500m", "memory": "512Mi" },
    }));
    config.models = vec![model];
    config
}

/// A runtime of its own, its threads named after it.
fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Waits until `check` holds, or panics after `limit`.
fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !check() {
        assert!(
            began.elapsed() < limit,
            "{what}: not so after {} s",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    began.elapsed()
}

/// The next `count` decision passes the server makes, each with when its
/// time was read: `last_pass()` read every few milliseconds, a new value
/// being a new pass.
fn passes(handle: &AutoscalerHandle, count: usize) -> Vec<(DateTime<Utc>, Duration)> {
    let mut seen = Vec::with_capacity(count);
    let mut last = handle.last_pass();
    let began = Instant::now();
    while seen.len() < count {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the autoscaler stopped making passes"
        );
        std::thread::sleep(Duration::from_millis(5));
        let now = handle.last_pass();
        if now != last {
            if let Some(took) = now {
                seen.push((Utc::now(), took));
            }
            last = now;
        }
    }
    seen
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `p50 … max … (n)` in milliseconds.
fn spread(mut times: Vec<Duration>) -> String {
    if times.is_empty() {
        return "no samples".to_owned();
    }
    times.sort_unstable();
    format!(
        "p50 {:>7.1} ms   max {:>7.1} ms   ({} passes)",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    )
}

fn chrono_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// A `spec.replicas` change of a MachineDeployment.
#[derive(Debug, Clone)]
struct ScaleRequest {
    pool: String,
    from: u64,
    to: u64,
    at: DateTime<Utc>,
}

/// What kubesim's change stream said about the burst.
#[derive(Debug, Default)]
struct Timeline {
    first_created: Option<DateTime<Utc>>,
    last_created: Option<DateTime<Utc>>,
    first_unschedulable: Option<DateTime<Utc>>,
    last_unschedulable: Option<DateTime<Utc>>,
    unschedulable: HashSet<String>,
    /// Burst pods the scheduler bound (there should be none).
    bound: Vec<String>,
    replicas: HashMap<String, u64>,
    scale_requests: Vec<ScaleRequest>,
}

impl Timeline {
    fn note(&mut self, change: &Change) {
        let object = &change.object;
        let meta = &object["metadata"];
        let name = meta["name"].as_str().unwrap_or_default();
        if change.resource == Resource::POD && name.starts_with("burst-") {
            if change.kind == "ADDED" {
                if self.first_created.is_none() {
                    self.first_created = Some(change.at);
                }
                self.last_created = Some(change.at);
            }
            if object["spec"]["nodeName"].is_string() {
                self.bound.push(name.to_owned());
            }
            let unschedulable = object["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "PodScheduled"
                        && c["status"] == "False"
                        && c["reason"] == "Unschedulable"
                });
            if unschedulable && self.unschedulable.insert(name.to_owned()) {
                if self.first_unschedulable.is_none() {
                    self.first_unschedulable = Some(change.at);
                }
                self.last_unschedulable = Some(change.at);
            }
        }
        if change.resource == Resource::MACHINE_DEPLOYMENT
            && let Some(to) = object["spec"]["replicas"].as_u64()
        {
            let pool = format!("{}/{name}", meta["namespace"].as_str().unwrap_or_default());
            let from = self.replicas.insert(pool.clone(), to);
            if let Some(from) = from
                && from != to
            {
                self.scale_requests.push(ScaleRequest {
                    pool,
                    from,
                    to,
                    at: change.at,
                });
            }
        }
    }
}

/// Notes the burst's changes into `timeline` until `stop`.
async fn follow(
    mut changes: broadcast::Receiver<Change>,
    timeline: Arc<Mutex<Timeline>>,
    mut stop: oneshot::Receiver<()>,
) {
    let note = |change: Change| {
        timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(&change);
    };
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => note(change),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the benchmark fell {n} changes behind the simulator")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = &mut stop => return,
        }
    }
}

/// The burst's pods, unbound, straight into the store.
fn create_burst(cluster: &Cluster) {
    for kind in &BURST {
        for i in 0..kind.count {
            let mut pod = json!({
                "metadata": { "name": format!("{}-{i:03}", kind.prefix), "labels": fleet_labels() },
                "spec": { "containers": [{ "name": "model", "image": "example/model:1",
                    "resources": { "requests": kind.ask.requests() } }] },
            });
            if kind.tolerates_gpu {
                pod["spec"]["tolerations"] = gpu_toleration();
            }
            cluster
                .store
                .create(Resource::POD, NAMESPACE, pod)
                .expect("a burst pod");
        }
    }
}

/// `plan::plan_scale_up`'s inputs as the cluster stands with the burst
/// pending: the pools, every node's free room, the burst's demands.
fn plan_inputs(
    nodes: &BTreeMap<&'static str, Vec<String>>,
) -> (Vec<PoolState>, Vec<NodeRoom>, Vec<Demand>) {
    let taints = |layout: &Layout| {
        if layout.tainted() {
            vec![Taint {
                key: GPU.to_owned(),
                value: "present".to_owned(),
                effect: "NoSchedule".to_owned(),
            }]
        } else {
            Vec::new()
        }
    };
    let allocatable = |layout: &Layout| Resources {
        cpu_millis: layout.cpus * 1000,
        memory: layout.memory_gib << 30,
        gpus: layout.gpus,
        pods: 110,
    };
    let pools = POOLS
        .iter()
        .map(|layout| PoolState {
            id: layout.id(),
            min: 1,
            max: layout.max as u32,
            desired: layout.nodes as u32,
            ready: layout.nodes as u32,
            shape: Shape {
                allocatable: allocatable(layout),
                gpu_type: GPU.to_owned(),
                labels: BTreeMap::new(),
                taints: taints(layout),
            },
        })
        .collect();
    let mut rooms = Vec::new();
    for layout in &POOLS {
        let used = (0..PODS_PER_NODE - 1)
            .map(|k| (layout.fleet_pods)(k).resources())
            .fold(DAEMON.resources(), Resources::plus);
        for name in &nodes[layout.name] {
            rooms.push(NodeRoom {
                name: name.clone(),
                free: allocatable(layout).minus(used),
                allocatable: allocatable(layout),
                gpu_type: GPU.to_owned(),
                labels: BTreeMap::from([("kubernetes.io/hostname".to_owned(), name.clone())]),
                taints: taints(layout),
            });
        }
    }
    let mut demands = Vec::new();
    for kind in &BURST {
        for i in 0..kind.count {
            demands.push(Demand {
                pod: format!("{NAMESPACE}/{}-{i:03}", kind.prefix),
                needs: kind.ask.resources(),
                gpu_type: (kind.ask.gpus > 0).then(|| GPU.to_owned()),
                node_selector: BTreeMap::new(),
                tolerations: if kind.tolerates_gpu {
                    vec![Toleration {
                        key: Some(GPU.to_owned()),
                        operator: Some("Exists".to_owned()),
                        effect: Some("NoSchedule".to_owned()),
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
            });
        }
    }
    (pools, rooms, demands)
}

fn main() {
    let sim = runtime("kubesim", 2);
    let server_rt = runtime("modelfleet", 2);
    let bench = runtime("bench", 1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    say(&format!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));

    let cluster = sim.block_on(async {
        let cluster = Cluster::start().await;
        cluster.set_pod_servers(false);
        // New machines stay coming, so the burst stays pending while it
        // is measured.
        cluster.set_provisioning_delay(Duration::from_secs(3600));
        cluster
    });
    let began = Instant::now();
    let nodes = populate(&cluster);
    let node_count: usize = nodes.values().map(Vec::len).sum();
    let fleet_pods = POOLS.iter().map(|p| p.nodes as usize).sum::<usize>() * (PODS_PER_NODE - 1);
    let mut pod_count = 0;
    cluster.store.each(Resource::POD, |_| pod_count += 1);
    say(&format!(
        "cluster: {node_count} nodes in {} pools, {pod_count} running pods ({fleet_pods} of them \
         modelfleet's), written in {:.1} s",
        POOLS.len(),
        began.elapsed().as_secs_f64()
    ));

    let dir = tempfile::tempdir().expect("a temporary folder");
    let db_url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let config = config(&db_url, cluster.url());
    let settings = config.kubernetes.autoscaler.clone();
    let app = server_rt
        .block_on(Application::build(config))
        .expect("the server builds");
    let fleet = app.state().fleet.clone();
    let autoscaler = app
        .state()
        .autoscaler
        .clone()
        .expect("the autoscaler is enabled");
    let handle = autoscaler.handle();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = server_rt.spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    until("the server leads", Duration::from_secs(60), || {
        fleet.is_leading()
    });
    until(
        "the autoscaler's caches hold every node and pod",
        Duration::from_secs(300),
        || {
            let views = handle.nodes();
            views.len() == node_count
                && views.iter().map(|n| n.modelfleet_pods.len()).sum::<usize>() == fleet_pods
                && handle.pools().len() == POOLS.len()
        },
    );
    say(&format!(
        "server leading, autoscaler caches full {:.1} s after start",
        started.elapsed().as_secs_f64()
    ));
    say(&format!(
        "gathering: {} ms quiet, {} ms at most; a pass every 250 ms",
        settings.gather_quiet_ms, settings.gather_max_ms
    ));

    // Nothing pending.
    let idle = passes(&handle, PASSES);
    say(&format!(
        "decision pass, nothing pending:      {}",
        spread(idle.iter().map(|(_, d)| *d).collect())
    ));
    let observe_idle: Vec<Duration> = (0..PASSES / 2)
        .map(|_| {
            let began = Instant::now();
            let seen = autoscaler.observe(&Brain::default(), tokio::time::Instant::now());
            let took = began.elapsed();
            assert_eq!(seen.size(), (node_count, POOLS.len(), 0));
            took
        })
        .collect();
    say(&format!(
        "  of which observe (timed here):     {}",
        spread(observe_idle)
    ));

    // The burst.
    let timeline = Arc::new(Mutex::new(Timeline {
        replicas: POOLS.iter().map(|p| (p.id(), p.nodes)).collect(),
        ..Timeline::default()
    }));
    let (stop_following, stop) = oneshot::channel();
    let following = bench.spawn(follow(cluster.store.subscribe(), timeline.clone(), stop));
    let burst_began = Instant::now();
    create_burst(&cluster);
    let burst_written = burst_began.elapsed();
    let pending = passes(&handle, PASSES);
    let expected = expected_growth();
    until("the scale-up", SCALE_UP_LIMIT, || {
        let timeline = timeline.lock().unwrap_or_else(|e| e.into_inner());
        expected
            .keys()
            .all(|pool| timeline.scale_requests.iter().any(|r| &r.pool == pool))
    });
    // Time for a second scale-up, should one wrongly come.
    let after = passes(&handle, 8);
    let observe_pending: Vec<Duration> = (0..PASSES / 2)
        .map(|_| {
            let began = Instant::now();
            let seen = autoscaler.observe(&Brain::default(), tokio::time::Instant::now());
            let took = began.elapsed();
            assert_eq!(seen.size(), (node_count, POOLS.len(), burst_size()));
            took
        })
        .collect();
    let (pools_in, rooms, demands) = plan_inputs(&nodes);
    let mut plan_times = Vec::new();
    for _ in 0..PASSES {
        let began = Instant::now();
        let planned = plan::plan_scale_up(&pools_in, &rooms, &demands);
        plan_times.push(began.elapsed());
        let grow: BTreeMap<String, u64> = planned
            .grow
            .iter()
            .map(|(pool, n)| (pool.clone(), u64::from(*n)))
            .collect();
        assert_eq!(grow, expected, "plan_scale_up alone plans the growth");
    }
    let _ = stop_following.send(());
    bench.block_on(following).expect("the follower");
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    let pool_views = handle.pools();
    let calls = cluster.store.calls();

    let _ = stop_server.send(());
    server_rt
        .block_on(server)
        .expect("the server task")
        .expect("the server ran");
    drop(cluster);

    let first_unschedulable = timeline.first_unschedulable.expect("an Unschedulable pod");
    let last_unschedulable = timeline.last_unschedulable.expect("an Unschedulable pod");
    let first_created = timeline.first_created.expect("a burst pod");
    let last_created = timeline.last_created.expect("a burst pod");
    let first_request = timeline
        .scale_requests
        .iter()
        .map(|r| r.at)
        .min()
        .expect("a scale request");
    let last_request = timeline
        .scale_requests
        .iter()
        .map(|r| r.at)
        .max()
        .expect("a scale request");
    let (gathering, after_request): (Vec<_>, Vec<_>) = pending
        .iter()
        .chain(&after)
        .partition(|(read, _)| *read < first_request);

    say(&format!(
        "burst: {} pods that fit no node ({}), written in {:.1} ms",
        burst_size(),
        BURST
            .iter()
            .map(|b| format!(
                "{} × {}m CPU/{} GiB/{} GPU",
                b.count,
                b.ask.cpu_millis,
                b.ask.memory_mib >> 10,
                b.ask.gpus
            ))
            .collect::<Vec<_>>()
            .join(", "),
        ms(burst_written)
    ));
    say(&format!(
        "  first → last pod created (store)          {:>8.1} ms",
        chrono_ms(first_created, last_created)
    ));
    say(&format!(
        "  first pod created → first Unschedulable   {:>8.1} ms; all {} Unschedulable after {:.1} ms",
        chrono_ms(first_created, first_unschedulable),
        timeline.unschedulable.len(),
        chrono_ms(first_created, last_unschedulable),
    ));
    say(&format!(
        "  first Unschedulable → first scale request {:>8.1} ms   (aim: under 5,000 ms)",
        chrono_ms(first_unschedulable, first_request)
    ));
    say(&format!(
        "  last Unschedulable → first scale request  {:>8.1} ms   (gathering waits {} ms quiet)",
        chrono_ms(last_unschedulable, first_request),
        settings.gather_quiet_ms
    ));
    say(&format!(
        "  first Unschedulable → last scale request  {:>8.1} ms   (the whole burst asked for)",
        chrono_ms(first_unschedulable, last_request)
    ));
    for request in &timeline.scale_requests {
        let layout = POOLS
            .iter()
            .find(|p| p.id() == request.pool)
            .expect("a pool of the layout");
        say(&format!(
            "  scale request {} +{} at first Unschedulable + {:.1} ms",
            request.pool,
            request.to - request.from,
            chrono_ms(first_unschedulable, request.at)
        ));
        let view = pool_views.iter().find(|v| v.pool.id == request.pool);
        say(&format!(
            "  {} grew {} → {} (+{}, max {}); now {} ready, {} coming",
            request.pool,
            request.from,
            request.to,
            request.to - request.from,
            layout.max,
            view.map_or(0, |v| v.ready),
            view.map_or(0, |v| v.coming),
        ));
    }
    if timeline.scale_requests.len() > expected.len() {
        say(&format!(
            "  NB: the burst was asked for in {} scale requests, not {}: the autoscaler \
             planned before every burst pod was seen",
            timeline.scale_requests.len(),
            expected.len()
        ));
    }
    say(&format!(
        "  scale requests made: {} (PATCH machinedeployments/scale {})",
        timeline.scale_requests.len(),
        calls
            .get("PATCH machinedeployments/scale")
            .copied()
            .unwrap_or(0)
    ));
    say(&format!(
        "decision pass, {} pending, gathering: {}",
        burst_size(),
        spread(gathering.iter().map(|(_, d)| *d).collect())
    ));
    say(&format!(
        "decision pass, {} pending, after:     {}",
        burst_size(),
        spread(after_request.iter().map(|(_, d)| *d).collect())
    ));
    say(&format!(
        "  of which observe (timed here):     {}",
        spread(observe_pending)
    ));
    say(&format!(
        "plan::plan_scale_up alone ({} pools, {} nodes, {} pods): {}",
        pools_in.len(),
        rooms.len(),
        demands.len(),
        spread(plan_times)
    ));

    // Did it work?
    assert!(
        timeline.bound.is_empty(),
        "burst pods were bound: {:?}",
        timeline.bound
    );
    assert_eq!(
        timeline.unschedulable.len(),
        burst_size(),
        "every burst pod marked Unschedulable"
    );
    let mut grown: BTreeMap<String, u64> = BTreeMap::new();
    for request in &timeline.scale_requests {
        let layout = POOLS
            .iter()
            .find(|p| p.id() == request.pool)
            .expect("a pool of the layout");
        assert!(
            request.to > request.from,
            "{} lowered: {} → {}",
            request.pool,
            request.from,
            request.to
        );
        assert!(request.to <= layout.max, "{} past its max", request.pool);
        *grown.entry(request.pool.clone()).or_default() += request.to - request.from;
    }
    assert_eq!(
        grown, expected,
        "pools grown by what the burst needs: {:?}",
        timeline.scale_requests
    );
}
