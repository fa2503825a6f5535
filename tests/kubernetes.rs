//! The simulated Kubernetes API server (`kubesim`) against the real kube-rs
//! client: the behaviours the Kubernetes backend will rely on, each tested
//! through kube's own types, so that a test passing here means kube-rs
//! accepts what the simulator says.
//!
//! Covered: create, get, list with a label selector, merge patch, delete,
//! `409 AlreadyExists` and `404 NotFound` as kube errors, kube-rs's watcher
//! following adds, changes and deletes, and the watcher recovering from a
//! `410 Gone` (a compacted history) without losing a change. Behind the API
//! server: scheduling by cpu, memory, GPUs and taints, with the
//! scheduler's Unschedulable condition and FailedScheduling event; pods
//! running a Cog server on their own loopback address; image pull
//! failures, crash loops and evictions as the kubelet reports them.

#[path = "api/support.rs"]
#[macro_use]
#[allow(dead_code, reason = "shared with the API tests, which use the rest")]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use kubesim::{Cluster, NodeSpec, Resource, Store};
use serde_json::json;

async fn client(url: &str) -> Client {
    let mut config = Config::new(url.parse().expect("the simulator's URL"));
    config.default_namespace = "modelfleet".to_owned();
    Client::try_from(config).expect("a kube client")
}

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": { "containers": [{ "name": "model", "image": "example/model:1" }] },
    }))
    .expect("a pod")
}

#[tokio::test]
async fn kube_reads_and_writes_pods() {
    let store = Store::new();
    let server = store.serve().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&server.url()).await);

    let created = pods
        .create(
            &PostParams::default(),
            &pod("a", &[("app.kubernetes.io/managed-by", "modelfleet")]),
        )
        .await
        .expect("created");
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("modelfleet"));
    pods.create(&PostParams::default(), &pod("b", &[]))
        .await
        .expect("created");

    let taken = pods.create(&PostParams::default(), &pod("a", &[])).await;
    assert!(
        matches!(taken, Err(kube::Error::Api(ref s)) if s.code == 409),
        "{taken:?}"
    );
    let missing = pods.get("nope").await;
    assert!(
        matches!(missing, Err(kube::Error::Api(ref s)) if s.code == 404),
        "{missing:?}"
    );

    let managed = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelfleet"))
        .await
        .expect("listed");
    assert_eq!(managed.items.len(), 1);
    assert!(
        managed
            .metadata
            .resource_version
            .is_some_and(|v| !v.is_empty())
    );

    let patch = json!({ "metadata": { "annotations": { "modelfleet.io/request-id": "r1" } } });
    let patched = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    assert_eq!(
        patched
            .metadata
            .annotations
            .and_then(|a| a.get("modelfleet.io/request-id").cloned()),
        Some("r1".to_owned())
    );
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    pods.delete("a", &DeleteParams::default())
        .await
        .expect("deleted");
    assert!(pods.get_opt("a").await.expect("asked").is_none());
    assert_eq!(store.calls().get("POST pods"), Some(&3));
}

/// Waits for the next event of `stream` for at most ten seconds.
async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch goes on")
}

#[tokio::test]
async fn the_watcher_follows_pods_and_survives_a_compacted_history() {
    let store = Store::new();
    let server = store.serve().await;
    let pods: Api<Pod> = Api::default_namespaced(client(&server.url()).await);
    pods.create(&PostParams::default(), &pod("before", &[("app", "m")]))
        .await
        .expect("created");

    // Without bookmarks, the watcher's last version is that of the last
    // pod it saw.
    let config = watcher::Config::default()
        .labels("app=m")
        .disable_bookmarks();
    let mut events = watcher(pods.clone(), config).boxed();
    // The initial list: the pod made before.
    let mut names = Vec::new();
    loop {
        match next(&mut events).await.expect("no watch error") {
            watcher::Event::InitApply(p) => names.push(p.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["before"]);

    // A change, a pod of another app (filtered out), a new one, a delete.
    let patch = json!({ "status": { "phase": "Running" } });
    pods.patch("before", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    pods.create(&PostParams::default(), &pod("other", &[("app", "x")]))
        .await
        .expect("created");
    pods.create(&PostParams::default(), &pod("after", &[("app", "m")]))
        .await
        .expect("created");
    pods.delete("before", &DeleteParams::default())
        .await
        .expect("deleted");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut events).await.expect("no watch error") {
            watcher::Event::Apply(p) => seen.push(format!(
                "apply {} {}",
                p.metadata.name.unwrap_or_default(),
                p.status.and_then(|s| s.phase).unwrap_or_default()
            )),
            watcher::Event::Delete(p) => {
                seen.push(format!("delete {}", p.metadata.name.unwrap_or_default()))
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["apply before Running", "apply after ", "delete before"]
    );

    // Cut off from its watchers, the API server changes a pod and compacts
    // its history. The watcher reconnects from the last version it saw, is
    // told 410 Gone, lists again, and so still sees the change.
    let calls_before = store.calls().get("LIST pods").copied().unwrap_or(0);
    let partition = store.partition();
    store
        .update(Resource::POD, "modelfleet", "after", |p| {
            p["status"] = json!({ "phase": "Failed" })
        })
        .expect("updated");
    store.compact();
    drop(partition);
    let mut phase = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while phase != "Failed" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change after compaction never arrived"
        );
        // The relist's events, or an error the watcher retries after.
        if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = next(&mut events).await
            && p.metadata.name.as_deref() == Some("after")
        {
            phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        }
    }
    assert!(
        store.calls().get("LIST pods").copied().unwrap_or(0) > calls_before,
        "the watcher did not list again: {:?}",
        store.calls()
    );
}

fn model_pod(name: &str, image: &str, cpu: &str, memory: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": "m" } },
        "spec": { "containers": [{
            "name": "model", "image": image, "ports": [{ "containerPort": 5000 }],
            "resources": { "requests": { "cpu": cpu, "memory": memory } },
        }] },
    }))
    .expect("a pod")
}

/// Polls `pods/name` until `check` holds.
async fn until(pods: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pod = pods.get(name).await.expect("the pod");
        if check(&pod) {
            return pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never {what}: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `name` runs.
async fn until_running(pods: &Api<Pod>, name: &str) -> Pod {
    until(pods, name, "ran", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn condition(pod: &Pod, kind: &str) -> Option<(String, Option<String>)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn pods_are_scheduled_where_they_fit_and_serve_cog_on_their_own_address() {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("small", 1, 2));
    let client = client(&cluster.url()).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    pods.create(
        &PostParams::default(),
        &model_pod("fits", "example/model:1", "500m", "1Gi"),
    )
    .await
    .expect("created");
    let running = until_running(&pods, "fits").await;
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("small")
    );
    assert_eq!(
        condition(&running, "Ready").map(|c| c.0).as_deref(),
        Some("True")
    );
    let ip = running.status.and_then(|s| s.pod_ip).expect("a pod IP");
    assert!(ip.starts_with("127."), "{ip}");

    // The pod's model server answers over real HTTP on its own address.
    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(format!("http://{ip}:5000/health-check"))
        .send()
        .await
        .expect("health check")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health["status"], "READY");
    let prediction: serde_json::Value = http
        .post(format!("http://{ip}:5000/predictions"))
        .json(&json!({ "input": { "message": "hi" } }))
        .send()
        .await
        .expect("prediction")
        .json()
        .await
        .expect("JSON");
    assert_eq!(prediction, json!({ "status": "succeeded", "output": "hi" }));

    // Too big for what is left: Unschedulable, with the scheduler's event,
    // until a node with room arrives.
    pods.create(
        &PostParams::default(),
        &model_pod("big", "example/model:1", "2", "1Gi"),
    )
    .await
    .expect("created");
    let pending = until(&pods, "big", "was refused", |p| {
        condition(p, "PodScheduled").is_some()
    })
    .await;
    assert_eq!(
        condition(&pending, "PodScheduled"),
        Some(("False".to_owned(), Some("Unschedulable".to_owned())))
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(client.clone());
    let failed: Vec<_> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.involved_object.name.as_deref() == Some("big")
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    cluster.add_node(&NodeSpec::new("large", 4, 8));
    let bound = until_running(&pods, "big").await;
    assert_eq!(
        bound.spec.and_then(|s| s.node_name).as_deref(),
        Some("large")
    );
}

#[tokio::test]
async fn gpu_nodes_take_only_pods_that_tolerate_them() {
    let cluster = Cluster::start().await;
    let mut gpu = NodeSpec::new("gpu", 8, 32);
    gpu.gpus = 1;
    gpu.taints.push((
        "nvidia.com/gpu".into(),
        "present".into(),
        "NoSchedule".into(),
    ));
    cluster.add_node(&gpu);
    let pods: Api<Pod> = Api::default_namespaced(client(&cluster.url()).await);

    pods.create(
        &PostParams::default(),
        &model_pod("plain", "example/model:1", "1", "1Gi"),
    )
    .await
    .expect("created");
    let refused = until(&pods, "plain", "was refused", |p| {
        condition(p, "PodScheduled").is_some()
    })
    .await;
    assert_eq!(
        condition(&refused, "PodScheduled").map(|c| c.0).as_deref(),
        Some("False")
    );

    let mut wants_gpu = model_pod("gpu-model", "example/model:1", "1", "1Gi");
    let value = serde_json::to_value(&wants_gpu).expect("json");
    let mut value = value;
    value["spec"]["containers"][0]["resources"]["limits"] = json!({ "nvidia.com/gpu": "1" });
    value["spec"]["tolerations"] =
        json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }]);
    wants_gpu = serde_json::from_value(value).expect("a pod");
    pods.create(&PostParams::default(), &wants_gpu)
        .await
        .expect("created");
    until_running(&pods, "gpu-model").await;

    // The node's one GPU is taken.
    let mut second = serde_json::to_value(&wants_gpu).expect("json");
    second["metadata"] = json!({ "name": "gpu-model-2" });
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(second).expect("a pod"),
    )
    .await
    .expect("created");
    let refused = until(&pods, "gpu-model-2", "was refused", |p| {
        condition(p, "PodScheduled").is_some()
    })
    .await;
    assert_eq!(
        condition(&refused, "PodScheduled").map(|c| c.0).as_deref(),
        Some("False")
    );
}

#[tokio::test]
async fn image_pull_failures_crash_loops_and_evictions_show_as_kubernetes_reports_them() {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 8, 32));
    cluster.fail_image_pulls("example/missing:1");
    cluster.crash_containers("example/crashing:1");
    let pods: Api<Pod> = Api::default_namespaced(client(&cluster.url()).await);

    pods.create(
        &PostParams::default(),
        &model_pod("pull", "example/missing:1", "1", "1Gi"),
    )
    .await
    .expect("created");
    until(&pods, "pull", "backed off", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await;

    pods.create(
        &PostParams::default(),
        &model_pod("crash", "example/crashing:1", "1", "1Gi"),
    )
    .await
    .expect("created");
    let crashing = until(&pods, "crash", "crash-looped", |p| {
        waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
            && p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c[0].restart_count >= 2)
    })
    .await;
    assert_eq!(
        crashing.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );

    pods.create(
        &PostParams::default(),
        &model_pod("evicted", "example/model:1", "1", "1Gi"),
    )
    .await
    .expect("created");
    let running = until_running(&pods, "evicted").await;
    let ip = running.status.and_then(|s| s.pod_ip).expect("an IP");
    cluster.evict("modelfleet", "evicted");
    let gone = until(&pods, "evicted", "was evicted", |p| {
        p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
    })
    .await;
    assert_eq!(gone.status.and_then(|s| s.phase).as_deref(), Some("Failed"));
    // Its model server is gone with it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reqwest::get(format!("http://{ip}:5000/health-check"))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the evicted pod still serves"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A lost node takes its running pods down with it.
    pods.create(
        &PostParams::default(),
        &model_pod("on-lost-node", "example/model:1", "1", "1Gi"),
    )
    .await
    .expect("created");
    until_running(&pods, "on-lost-node").await;
    cluster.lose_node("node");
    until(&pods, "on-lost-node", "was lost", |p| {
        p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("NodeLost")
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
}

/// A server running its instances on the simulated cluster, with one model
/// (`pods`, the sleepy-like image) and an admin token.
async fn server_on(cluster: &Cluster, db: support::Db, image: &str) -> (support::TestApp, String) {
    let url = cluster.url();
    let image = image.to_owned();
    let app = support::TestApp::spawn_with(db, move |c| {
        c.kubernetes.backend = modelfleet::config::BackendKind::Kubernetes;
        c.kubernetes.api_url = Some(url);
        c.kubernetes.namespace = Some("modelfleet".to_owned());
        c.kubernetes.start_timeout_secs = 20;
        c.models = vec![support::sleepy("pods", |m| {
            m.local = None;
            m.max_instances = 2;
            m.kubernetes = Some(json!({
                "image": image,
                "requests": { "cpu": "1", "memory": "1Gi" },
            }));
        })];
    })
    .await;
    let admin = app.admin("root").await;
    (app, admin)
}

const INSTANCES: &str = "query($f: InstanceFilter) { instances(filter: $f) { nodes { \
    id backend handle node status statusDetail stopReason events(limit: 50) { type reason message raw } } } }";

db_test!(a_request_runs_on_a_pod_and_stopping_deletes_the_pod, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node-a", 4, 16));
    let (app, admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({ "message": "from a pod" })).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["output"], "from a pod");

    // The instance is the pod, labelled and placed.
    let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"] } })).await;
    let instance = body["data"]["instances"]["nodes"][0].clone();
    assert_eq!(instance["backend"], "kubernetes", "{body}");
    assert_eq!(instance["node"], "node-a");
    assert_eq!(instance["statusDetail"]["phase"], "Running");
    let pod_name = instance["handle"].as_str().expect("a pod name").to_owned();
    let pod = cluster.store.get(Resource::POD, "modelfleet", &pod_name).expect("the pod");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/managed-by"], "modelfleet");
    assert_eq!(pod["metadata"]["labels"]["modelfleet.io/instance"], instance["id"]);
    // The scheduler's and kubelet's events, with their raw objects.
    let events = instance["events"].as_array().expect("events");
    let scheduled = events.iter().find(|e| e["reason"] == "Scheduled").expect("a Scheduled event");
    assert_eq!(scheduled["raw"]["involvedObject"]["name"], pod_name.as_str());

    // Stopping deletes the pod with the grace period: it is seen
    // terminating, then gone.
    let pods: Api<Pod> = Api::namespaced(client(&cluster.url()).await, "modelfleet");
    let selector = format!("modelfleet.io/instance={}", instance["id"].as_str().expect("an id"));
    let mut changes = watcher(pods, watcher::Config::default().labels(&selector)).boxed();
    while !matches!(next(&mut changes).await, Ok(watcher::Event::InitDone)) {}
    let stop = "mutation($id: ID!) { stopInstance(id: $id, reason: \"done here\") { alreadyStopped } }";
    let stopped = app.gql_as(&admin, stop, json!({ "id": instance["id"] })).await;
    assert_eq!(stopped["data"]["stopInstance"]["alreadyStopped"], false, "{stopped}");
    let mut grace = None;
    loop {
        match next(&mut changes).await.expect("a change") {
            watcher::Event::Apply(pod) => grace = grace.or(pod.metadata.deletion_grace_period_seconds),
            watcher::Event::Delete(_) => break,
            _ => {}
        }
    }
    assert_eq!(grace, Some(30), "terminating with the stop grace first");
    assert!(cluster.store.get(Resource::POD, "modelfleet", &pod_name).is_none());
});

db_test!(an_unschedulable_pod_shows_why_and_runs_once_a_node_fits, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("tiny", 0, 1));
    let (app, admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({ "message": "waited" })).await;

    // The instance is PENDING, with the scheduler's verdict and its event.
    app.eventually("the instance to show Unschedulable", 30, || async {
        let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"] } })).await;
        let instance = &body["data"]["instances"]["nodes"][0];
        instance["status"] == "PENDING"
            && instance["statusDetail"]["conditions"][0]["reason"] == "Unschedulable"
            && instance["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| e["reason"] == "FailedScheduling" && e["type"] == "WARNING")
            })
    })
    .await;

    // Still PENDING a while later: it has nowhere to go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"] } })).await;
    assert_eq!(body["data"]["instances"]["nodes"][0]["status"], "PENDING", "{body}");

    cluster.add_node(&NodeSpec::new("roomy", 4, 16));
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["output"], "waited", "{done}");
    // Placed, it started and serves.
    let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"] } })).await;
    let instance = &body["data"]["instances"]["nodes"][0];
    assert_eq!(instance["status"], "READY", "{body}");
});

db_test!(an_image_that_cannot_be_pulled_fails_the_requests_with_the_reason, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    cluster.fail_image_pulls("example/missing:1");
    let (app, _admin) = server_on(&cluster, db, "example/missing:1").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({})).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let error = done["error"].as_str().expect("an error");
    assert!(error.contains("ImagePullBackOff"), "{error}");
    // Every attempt's pod was cleaned up.
    app.eventually("no pod left", 30, || async { cluster.store.list(Resource::POD, None).is_empty() })
        .await;
});

db_test!(an_evicted_pod_gives_its_job_back_to_the_queue, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    let (app, admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({ "seconds": 3, "message": "survived" })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let busy = loop {
        let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "statuses": ["BUSY"] } })).await;
        let first = body["data"]["instances"]["nodes"][0].clone();
        if first.is_object() {
            break first;
        }
        assert!(tokio::time::Instant::now() < deadline, "no busy instance: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pod = busy["handle"].as_str().expect("a pod").to_owned();
    cluster.evict("modelfleet", &pod);

    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let body = app
        .gql_as(&admin, "query($id: ID!) { instance(id: $id) { status stopReason } }", json!({ "id": busy["id"] }))
        .await;
    let reason = body["data"]["instance"]["stopReason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("Evicted"), "{body}");
});

db_test!(a_crash_looping_pod_fails_the_requests_with_the_reason, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    cluster.crash_containers("example/crashing:1");
    let (app, _admin) = server_on(&cluster, db, "example/crashing:1").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({})).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let error = done["error"].as_str().expect("an error");
    assert!(error.contains("CrashLoopBackOff"), "{error}");
});

db_test!(a_pod_deleted_while_the_watch_was_down_still_ends_its_instance, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    let (app, admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let token = app.anonymous().await;
    let first = app.submit(&token, "pods", json!({ "message": "one" })).await;
    assert_eq!(app.wait_done(&token, &first).await["status"], "SUCCEEDED");
    let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"] } })).await;
    let instance = body["data"]["instances"]["nodes"][0].clone();
    let pod = instance["handle"].as_str().expect("a pod").to_owned();

    // Cut off from the server, the pod goes and the history with it: the
    // watch resumes into a 410, lists again, and finds the pod missing.
    let partition = cluster.store.partition();
    cluster.store.delete(Resource::POD, "modelfleet", &pod).expect("deleted");
    cluster.store.compact();
    drop(partition);
    app.eventually("the instance to end", 30, || async {
        let body = app
            .gql_as(&admin, "query($id: ID!) { instance(id: $id) { status } }", json!({ "id": instance["id"] }))
            .await;
        matches!(body["data"]["instance"]["status"].as_str(), Some("FAILED" | "STOPPED"))
    })
    .await;
    // A new request gets a new pod.
    let second = app.submit(&token, "pods", json!({ "message": "two" })).await;
    let done = app.wait_done(&token, &second).await;
    assert_eq!(done["output"], "two", "{done}");
});

db_test!(pods_carry_their_request_and_max_instances_hold, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 16, 64));
    // At most two instances (see `server_on`).
    let (app, _admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let token = app.anonymous().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit(&token, "pods", json!({ "seconds": 1, "message": format!("r{i}") })).await);
    }
    // While they run, each busy pod names its request; never more than two pods.
    let mut most_pods = 0;
    let mut annotated = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pods = cluster.store.list(Resource::POD, Some("modelfleet"));
        most_pods = most_pods.max(pods.len());
        for pod in &pods {
            if let Some(request) = pod["metadata"]["annotations"]["modelfleet.io/request-id"].as_str() {
                annotated.insert(request.to_owned());
            }
        }
        let mut all_done = true;
        for id in &ids {
            let body = app.gql_as(&token, support::REQUEST, json!({ "id": id })).await;
            all_done &= body["data"]["request"]["status"] == "SUCCEEDED";
        }
        if all_done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "requests not done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most_pods <= 2, "{most_pods} pods at once");
    assert!(annotated.len() >= 3, "requests seen on pods: {annotated:?}");
    assert!(annotated.iter().all(|r| ids.contains(r)), "{annotated:?}");
    // Idle again: no pod names a request.
    app.eventually("the annotations to be cleared", 10, || async {
        cluster
            .store
            .list(Resource::POD, Some("modelfleet"))
            .iter()
            .all(|p| p["metadata"]["annotations"]["modelfleet.io/request-id"].is_null())
    })
    .await;
});

db_test!(a_model_saved_through_the_api_keeps_its_pod_settings_and_runs_on_a_pod, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    let (app, admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let upsert = "mutation($input: ModelInput!) { upsertModel(input: $input) { id kubernetes } }";
    let model = |kubernetes: serde_json::Value| json!({ "input": {
        "id": "api-pods", "maxInstances": 1, "kubernetes": kubernetes,
    } });

    // Broken settings name every broken rule and save nothing.
    let body = app
        .gql_as(&admin, upsert, model(json!({ "image": "", "requests": { "cpu": "lots" } })))
        .await;
    assert_eq!(support::code(&body), "BAD_USER_INPUT", "{body}");
    let fields = &body["errors"][0]["extensions"]["fields"];
    for field in ["kubernetes.image", "kubernetes.requests"] {
        assert!(fields[field].is_array(), "{field}: {body}");
    }
    // On this backend an enabled model cannot go without them.
    let body = app
        .gql_as(&admin, upsert, json!({ "input": { "id": "api-pods", "local": {
            "command": ["python", "-m", "cog.server.http"], "workdir": "/tmp" } } }))
        .await;
    assert!(body["errors"][0]["extensions"]["fields"]["kubernetes"].is_array(), "{body}");
    let listed = app.gql_as(&admin, "{ models(includeDisabled: true) { id } }", json!({})).await;
    assert!(!listed.to_string().contains("api-pods"), "nothing was saved: {listed}");

    let settings = json!({ "image": "example/sleepy:1", "requests": { "cpu": "1", "memory": "1Gi" } });
    let body = app.gql_as(&admin, upsert, model(settings.clone())).await;
    assert_eq!(body["data"]["upsertModel"]["kubernetes"], settings, "{body}");
    let body = app.gql_as(&admin, "{ model(id: \"api-pods\") { kubernetes } }", json!({})).await;
    assert_eq!(body["data"]["model"]["kubernetes"], settings, "read back: {body}");
    // Only admins see them.
    let token = app.anonymous().await;
    let body = app.gql_as(&token, "{ model(id: \"api-pods\") { kubernetes } }", json!({})).await;
    assert_eq!(support::code(&body), "FORBIDDEN", "{body}");

    let id = app.submit(&token, "api-pods", json!({ "message": "saved by the API" })).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["output"], "saved by the API", "{done}");
    assert!(
        cluster
            .store
            .list(Resource::POD, Some("modelfleet"))
            .iter()
            .any(|p| p["metadata"]["labels"]["modelfleet.io/model"] == "api-pods"),
        "the model ran on a pod of its own"
    );
});

db_test!(a_pod_that_never_fits_is_given_up_once_no_request_waits_for_it, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("tiny", 0, 1));
    let (app, admin) = server_on(&cluster, db, "example/sleepy:1").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({ "message": "never" })).await;
    app.eventually("a PENDING instance", 30, || async {
        let body = app.gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"] } })).await;
        body["data"]["instances"]["nodes"][0]["status"] == "PENDING"
    })
    .await;
    let body = app
        .gql_as(&token, "mutation($id: ID!) { cancelRequest(id: $id) { status } }", json!({ "id": id }))
        .await;
    assert_eq!(body["data"]["cancelRequest"]["status"], "CANCELLED", "{body}");

    // Nothing waits for it: within its grace (5 s) and a pass, it stops and
    // its pod goes.
    app.eventually("the unplaced instance to stop", 20, || async {
        let body = app
            .gql_as(&admin, INSTANCES, json!({ "f": { "modelIds": ["pods"], "statuses": ["STOPPED"] } }))
            .await;
        body["data"]["instances"]["nodes"][0]["stopReason"]
            .as_str()
            .is_some_and(|r| r.contains("not placed"))
    })
    .await;
    app.eventually("its pod to go", 10, || async {
        cluster.store.list(Resource::POD, Some("modelfleet")).is_empty()
    })
    .await;
});
