//! The Kubernetes backend at scale, against the simulated cluster.
//!
//! A cluster of 200 nodes (kubesim: API server, scheduler, kubelet), the
//! real server in this process with the Kubernetes backend, and 20 models
//! that may each run `MAX_INSTANCES` pods. `CLIENTS` clients submit 2,000
//! requests over HTTP, as fast as the server takes them, round-robin over
//! the models; each job answers at once (the simulated model server with a
//! `message` only). Run with `cargo bench --bench kubernetes`; SQLite by
//! default, `KUBERNETES_BENCH_DBS=sqlite,postgres` (or `postgres`) adds
//! PostgreSQL, found as the tests find it (`TEST_POSTGRES_URL`).
//!
//! It prints, per database:
//! - submit → pod created (p50, p99, max). A pod serves no request of its
//!   own, so each pod is set against the request it was started for: the
//!   scaler starts one instance per waiting request that no instance is
//!   already coming for, so pods (in the order the scaler decided them)
//!   are matched first come, first served with the requests that were
//!   still waiting when the scaler decided. "Pod created" is when the API
//!   server stored the pod, taken from kubesim's change stream (the pod's
//!   own `creationTimestamp` has whole seconds only).
//! - the steps of a start: scaler decision (the instance row's
//!   `createdAt`) → pod created → running (the simulator's scheduler and
//!   kubelet, on a 20 ms loop) → instance ready (the server saw it run and
//!   its model answer its health check).
//! - submit → job start (p50, p99, max) over every request: `createdAt` →
//!   `jobStartedAt`; how fast jobs went out (the scaler hands them out one
//!   at a time, so the gap between two job starts is what one costs it),
//!   how long they ran, and how many pods were busy at once.
//! - Kubernetes API calls per instance started, by kind, from kubesim's
//!   counters, over the whole life of the server (its start-up lists and
//!   watches included, and the deletes of its shutdown).
//! - CPU time over the run (first submit to last request done), split by
//!   thread: the server (its runtime's threads and its SQLite threads),
//!   the simulator (on a runtime of its own: API server, scheduler,
//!   kubelet and every pod's model server), and the benchmark's clients
//!   (HTTP submits, polling the database for the end). PostgreSQL's own
//!   CPU, in its own processes, is not counted.
//!
//! It panics unless every request succeeded and every pod the server made
//! was seen, so that its figures are of a run that worked.

mod support;

use support::{anonymous_token, gql};

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::{RequestStatus, instance, work_request};
use kubesim::{Change, Cluster, NodeSpec, Resource};
use modelfleet::app::Application;
use modelfleet::config::{BackendKind, Config};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

const NODES: usize = 200;
const MODELS: usize = 20;
const REQUESTS: usize = 2_000;
const MAX_INSTANCES: u32 = 15;
const CLIENTS: usize = 8;
/// The longest a run may take before it is called a failure.
const RUN_LIMIT: Duration = Duration::from_secs(150);
const NAMESPACE: &str = "modelfleet";

fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `p50 … p99 … max …` of durations in microseconds, in milliseconds.
fn spread(mut us: Vec<i64>) -> String {
    us.sort_unstable();
    let ms = |v: i64| v as f64 / 1000.0;
    format!(
        "p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   ({} samples)",
        ms(percentile(&us, 50.0)),
        ms(percentile(&us, 99.0)),
        ms(us.last().copied().unwrap_or(0)),
        us.len()
    )
}

fn micros(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX)
}

/// A runtime of its own, so that the CPU its threads use can be told apart
/// (threads are named after it).
fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        // Idle blocking threads stay, so their CPU is still readable at the
        // end of the run.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("a runtime")
}

/// CPU time from `/proc`, in clock ticks (Linux reports them in USER_HZ,
/// 100 a second, whatever the kernel's own tick).
struct CpuSample {
    /// Per live thread: its name and user + system ticks.
    threads: HashMap<u32, (String, u64)>,
    /// The whole process, exited threads included.
    total: u64,
}

const TICKS_PER_SEC: f64 = 100.0;

/// The name and user + system ticks in a `stat` file.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_owned();
    // After the name: state (field 3) … utime (14), stime (15).
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn cpu_sample() -> CpuSample {
    let mut threads = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                threads.insert(tid, stat);
            }
        }
    }
    let total = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |(_, ticks)| ticks);
    CpuSample { threads, total }
}

/// CPU seconds used between two samples, by whom.
struct CpuUse {
    /// The server's runtime threads and its SQLite threads.
    server: f64,
    /// Of `server`, the SQLite threads (sqlx runs each connection on one).
    server_sqlite: f64,
    /// The simulator's runtime: API server, scheduler, kubelet, pods.
    simulator: f64,
    /// The benchmark's clients (its runtime and the main thread).
    bench: f64,
    /// Other threads, and threads that ended meanwhile.
    other: f64,
    /// The whole process.
    total: f64,
}

fn cpu_use(before: &CpuSample, after: &CpuSample) -> CpuUse {
    let main = std::process::id();
    let secs = |t: u64| t as f64 / TICKS_PER_SEC;
    let mut used = CpuUse {
        server: 0.0,
        server_sqlite: 0.0,
        simulator: 0.0,
        bench: 0.0,
        other: 0.0,
        total: secs(after.total.saturating_sub(before.total)),
    };
    for (tid, (name, ticks)) in &after.threads {
        let t = secs(ticks - before.threads.get(tid).map_or(0, |(_, t)| *t).min(*ticks));
        if name.starts_with("sqlx-sqlite") {
            used.server += t;
            used.server_sqlite += t;
        } else if name.starts_with("modelfleet") {
            used.server += t;
        } else if name.starts_with("kubesim") {
            used.simulator += t;
        } else if name.starts_with("bench") || *tid == main {
            used.bench += t;
        } else {
            used.other += t;
        }
    }
    let counted = used.server + used.simulator + used.bench + used.other;
    used.other += (used.total - counted).max(0.0);
    used
}

/// What kubesim's change stream says about one pod.
#[derive(Debug, Default, Clone)]
struct PodTimes {
    instance: Option<Uuid>,
    created: Option<DateTime<Utc>>,
    running: Option<DateTime<Utc>>,
}

/// Notes when each pod is created and running, until `stop`.
async fn follow_pods(
    mut changes: broadcast::Receiver<Change>,
    mut stop: oneshot::Receiver<()>,
) -> HashMap<String, PodTimes> {
    let mut pods: HashMap<String, PodTimes> = HashMap::new();
    let mut note = |change: Change| {
        if change.resource != Resource::POD {
            return;
        }
        let object = &change.object;
        let Some(name) = object["metadata"]["name"].as_str() else {
            return;
        };
        let pod = pods.entry(name.to_owned()).or_default();
        if change.kind == "ADDED" {
            pod.created = Some(change.at);
            pod.instance = object["metadata"]["labels"]["modelfleet.io/instance"]
                .as_str()
                .and_then(|s| s.parse().ok());
        }
        if pod.running.is_none() && object["status"]["podIP"].is_string() {
            pod.running = Some(change.at);
        }
    };
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => note(change),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the benchmark fell {n} changes behind the simulator")
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = &mut stop => {
                while let Ok(change) = changes.try_recv() {
                    note(change);
                }
                break;
            }
        }
    }
    pods
}

fn model_id(i: usize) -> String {
    format!("model-{i:02}")
}

fn config(url: &str, api_url: String) -> Config {
    let mut config = Config::default();
    config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.shutdown_grace_secs = 2;
    config.database.url = url.to_owned();
    config.auth.rate_limit_burst = 100_000;
    config.auth.rate_limit_per_minute = 100_000;
    config.kubernetes.backend = BackendKind::Kubernetes;
    config.kubernetes.api_url = Some(api_url);
    config.kubernetes.namespace = Some(NAMESPACE.to_owned());
    config.kubernetes.start_timeout_secs = 60;
    let sleepy = modelfleet::models::example_models()
        .into_iter()
        .find(|m| m.id == "sleepy")
        .expect("the sleepy example");
    config.models = (0..MODELS)
        .map(|i| {
            let mut model = sleepy.clone();
            model.id = model_id(i);
            model.name = Some(model.id.clone());
            model.local = None;
            model.min_instances = 0;
            model.max_instances = MAX_INSTANCES;
            model.kubernetes = Some(json!({
                "image": "example/sleepy:1",
                "requests": { "cpu": "500m", "memory": "512Mi" },
            }));
            model
        })
        .collect();
    config
}

/// Submits every request from `CLIENTS` clients, as fast as they are
/// taken, then waits until none is queued or running.
async fn drive(addr: SocketAddr, db: DatabaseConnection) -> (Duration, Duration) {
    let http = reqwest::Client::new();
    let token = anonymous_token(&http, addr).await;
    let submit = "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { id } }";
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients = (0..CLIENTS).map(|_| {
        let (http, token, next) = (http.clone(), token.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS {
                    break;
                }
                let vars = json!({ "i": { "modelId": model_id(n % MODELS),
                    "input": { "message": format!("request {n}") } } });
                let body = gql(&http, addr, Some(&token), submit, vars).await;
                assert!(
                    body["data"]["submitRequest"]["id"].is_string(),
                    "submit failed: {body}"
                );
            }
        })
    });
    for client in futures_util::future::join_all(clients).await {
        client.expect("a client ran");
    }
    let submitted = started.elapsed();
    loop {
        let open = work_request::Entity::find()
            .filter(
                work_request::Column::Status.is_in([RequestStatus::Queued, RequestStatus::Running]),
            )
            .count(&db)
            .await
            .expect("a count");
        if open == 0 {
            break;
        }
        assert!(
            started.elapsed() < RUN_LIMIT,
            "{open} requests still open after {} s",
            RUN_LIMIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (submitted, started.elapsed())
}

struct Runtimes {
    /// The simulated cluster and its pods.
    sim: tokio::runtime::Runtime,
    /// The server.
    server: tokio::runtime::Runtime,
    /// The benchmark's clients and its watch on the simulator.
    bench: tokio::runtime::Runtime,
}

fn run(rt: &Runtimes, label: &str, url: &str) {
    let cluster = rt.sim.block_on(async {
        let cluster = Cluster::start().await;
        for n in 0..NODES {
            cluster.add_node(&NodeSpec::new(&format!("node-{n:03}"), 4, 16));
        }
        cluster
    });
    let (stop_following, stop) = oneshot::channel();
    let following = rt.bench.spawn(follow_pods(cluster.store.subscribe(), stop));

    let app = rt
        .server
        .block_on(Application::build(config(url, cluster.url())))
        .expect("the server builds");
    let addr = app.local_addr();
    let db = app.state().db.clone();
    let fleet = app.state().fleet.clone();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = rt.server.spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.is_leading() {
        assert!(Instant::now() < deadline, "the scaler never started");
        std::thread::sleep(Duration::from_millis(5));
    }

    let cpu_before = cpu_sample();
    let (submitted, elapsed) = rt.bench.block_on(drive(addr, db.clone()));
    let cpu = cpu_use(&cpu_before, &cpu_sample());

    let (requests, instances) = rt.bench.block_on(async {
        let requests = work_request::Entity::find()
            .all(&db)
            .await
            .expect("the requests");
        let instances = instance::Entity::find()
            .all(&db)
            .await
            .expect("the instances");
        (requests, instances)
    });
    let _ = stop_server.send(());
    rt.server
        .block_on(server)
        .expect("the server task")
        .expect("the server ran");
    let calls = cluster.store.calls();
    let _ = stop_following.send(());
    let pods = rt.bench.block_on(following).expect("the pod follower");
    drop(cluster);

    // Did it work?
    assert_eq!(requests.len(), REQUESTS, "requests recorded");
    let failed: Vec<_> = requests
        .iter()
        .filter(|r| r.status != RequestStatus::Succeeded)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} requests did not succeed; the first: {:?} {:?}",
        failed.len(),
        failed[0].status,
        failed[0].error
    );
    let by_instance: HashMap<Uuid, &PodTimes> = pods
        .values()
        .filter_map(|p| p.instance.map(|id| (id, p)))
        .collect();
    assert_eq!(
        by_instance.len(),
        instances.len(),
        "every instance a pod, every pod an instance"
    );

    // Submit → pod created, first come first served per model.
    let mut to_pod = Vec::new();
    let mut to_decision = Vec::new();
    for m in 0..MODELS {
        let model = model_id(m);
        let mut waiting: Vec<&work_request::Model> =
            requests.iter().filter(|r| r.model_id == model).collect();
        waiting.sort_by_key(|r| (r.created_at, r.id));
        let mut started: Vec<&instance::Model> =
            instances.iter().filter(|i| i.model_id == model).collect();
        started.sort_by_key(|i| (i.created_at, i.id));
        let mut next = 0;
        for instance in started {
            let decided = instance.created_at;
            // Requests dispatched before this decision needed no new pod.
            while waiting
                .get(next)
                .is_some_and(|r| r.job_started_at.is_some_and(|s| s <= decided))
            {
                next += 1;
            }
            let Some(request) = waiting.get(next).filter(|r| r.created_at <= decided) else {
                continue;
            };
            next += 1;
            to_decision.push(micros(request.created_at, decided));
            if let Some(created) = by_instance.get(&instance.id).and_then(|p| p.created) {
                to_pod.push(micros(request.created_at, created));
            }
        }
    }
    let steps = |from: fn(&instance::Model, &PodTimes) -> Option<DateTime<Utc>>,
                 to: fn(&instance::Model, &PodTimes) -> Option<DateTime<Utc>>| {
        instances
            .iter()
            .filter_map(|i| {
                let pod = by_instance.get(&i.id)?;
                Some(micros(from(i, pod)?, to(i, pod)?))
            })
            .collect::<Vec<_>>()
    };
    let decided_to_created = steps(|i, _| Some(i.created_at), |_, p| p.created);
    let created_to_running = steps(|_, p| p.created, |_, p| p.running);
    let running_to_ready = steps(|_, p| p.running, |i, _| i.ready_at);
    let to_start: Vec<i64> = requests
        .iter()
        .filter_map(|r| Some(micros(r.created_at, r.job_started_at?)))
        .collect();
    // How fast requests went out to pods, and how many pods were busy.
    let starts: Vec<DateTime<Utc>> = requests.iter().filter_map(|r| r.job_started_at).collect();
    let dispatching = match (starts.iter().min(), starts.iter().max()) {
        (Some(first), Some(last)) => micros(*first, *last) as f64 / 1e6,
        _ => 0.0,
    };
    // The scaler hands out jobs one after another: the gap between two
    // job starts is what one hand-out costs it.
    let gaps: Vec<i64> = {
        let mut sorted = starts.clone();
        sorted.sort_unstable();
        sorted.windows(2).map(|w| micros(w[0], w[1])).collect()
    };
    let mut edges: Vec<(DateTime<Utc>, i32)> = requests
        .iter()
        .filter_map(|r| Some([(r.job_started_at?, 1), (r.job_finished_at?, -1)]))
        .flatten()
        .collect();
    edges.sort();
    let busiest = edges
        .iter()
        .scan(0, |busy, (_, step)| {
            *busy += step;
            Some(*busy)
        })
        .max()
        .unwrap_or(0);
    let job_times: Vec<i64> = requests
        .iter()
        .filter_map(|r| Some(micros(r.job_started_at?, r.job_finished_at?)))
        .collect();
    let nodes_used = {
        let mut nodes: Vec<&str> = instances.iter().filter_map(|i| i.node.as_deref()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    };

    say(&format!(
        "{label}: {REQUESTS} requests to {MODELS} models (max {MAX_INSTANCES} pods each) on {NODES} nodes: \
         all succeeded in {:.1} s (submitted in {:.1} s, {:.0} a second); {} pods on {nodes_used} nodes",
        elapsed.as_secs_f64(),
        submitted.as_secs_f64(),
        REQUESTS as f64 / submitted.as_secs_f64(),
        instances.len(),
    ));
    say(&format!("  submit → pod created      {}", spread(to_pod)));
    say(&format!("  submit → job start        {}", spread(to_start)));
    say(&format!(
        "  job starts spread over {dispatching:.2} s ({:.0} a second); pods busy at once: \
         {:.1} on average, {busiest} at most, of {}",
        starts.len() as f64 / dispatching.max(1e-3),
        job_times.iter().sum::<i64>() as f64 / 1e6 / dispatching.max(1e-3),
        instances.len()
    ));
    say(&format!(
        "  job start → job end       {}",
        spread(job_times)
    ));
    say(&format!(
        "  job start → next start    {}   (the scaler's cost of handing out one job)",
        spread(gaps)
    ));
    say("  a start, step by step:");
    say(&format!(
        "    submit → scaler decision        {}",
        spread(to_decision)
    ));
    say(&format!(
        "    scaler decision → pod created   {}",
        spread(decided_to_created)
    ));
    say(&format!(
        "    pod created → running (sim)     {}",
        spread(created_to_running)
    ));
    say(&format!(
        "    running → instance ready        {}",
        spread(running_to_ready)
    ));
    let started = instances.len().max(1) as f64;
    say(&format!(
        "  Kubernetes API calls per instance ({} instances started; whole server life):",
        instances.len()
    ));
    for (kind, count) in &calls {
        say(&format!(
            "    {kind:<16} {:>8.2}   ({count} in all)",
            *count as f64 / started
        ));
    }
    let all: u64 = calls.values().sum();
    say(&format!(
        "    {:<16} {:>8.2}   ({all} in all)",
        "every call",
        all as f64 / started
    ));
    let sqlite = if label == "sqlite" {
        format!(" (its SQLite threads {:.2} s)", cpu.server_sqlite)
    } else {
        " (PostgreSQL's own processes not counted)".to_owned()
    };
    say(&format!(
        "  CPU over the run ({:.1} s wall): server {:.2} s{sqlite}, simulator {:.2} s, \
         benchmark clients {:.2} s, other {:.2} s; process {:.2} s",
        elapsed.as_secs_f64(),
        cpu.server,
        cpu.simulator,
        cpu.bench,
        cpu.other,
        cpu.total,
    ));
}

fn main() {
    let rt = Runtimes {
        sim: runtime("kubesim", 2),
        server: runtime("modelfleet", 2),
        bench: runtime("bench", 2),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    say(&format!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    // `KUBERNETES_BENCH_DBS=sqlite,postgres` (or `postgres`) picks the
    // databases; SQLite alone by default.
    let only = std::env::var("KUBERNETES_BENCH_DBS").unwrap_or_else(|_| "sqlite".to_owned());
    if only.contains("sqlite") {
        let dir = tempfile::tempdir().expect("dir");
        let sqlite = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        run(&rt, "sqlite", &sqlite);
    }
    if only.contains("postgres") {
        let postgres = rt
            .bench
            .block_on(support::ScratchDatabase::create("kubernetes"));
        run(&rt, "postgres", &postgres.url);
        rt.bench.block_on(postgres.drop_now());
    }
}
