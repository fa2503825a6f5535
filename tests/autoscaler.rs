//! The node autoscaler against the simulated cluster: kubesim's Cluster API
//! MachineDeployments and machine controller, the real server with the
//! Kubernetes backend, and requests that need nodes.

#[path = "api/support.rs"]
#[macro_use]
#[allow(dead_code, reason = "shared with the API tests, which use the rest")]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kubesim::{Cluster, NodeShape, PoolSpec, Resource};
use modelfleet::fleet::kubernetes::{AUTOSCALER_PERMISSIONS, PERMISSIONS};
use serde_json::{Value, json};

const NS: &str = "capi";

/// A pool with Cluster Autoscaler's annotations, `ready` nodes at once.
fn pool(name: &str, shape: NodeShape, ready: u64, min: u64, max: u64) -> PoolSpec {
    let mut spec = PoolSpec::new(NS, name, ready, shape);
    spec.min = Some(min);
    spec.max = Some(max);
    spec.capacity_annotations = true;
    spec.ready_at_once = true;
    spec
}

fn gpu_shape() -> NodeShape {
    let mut shape = NodeShape::new(8, 32);
    shape.gpus = 1;
    shape.taints.push((
        "nvidia.com/gpu".to_owned(),
        "present".to_owned(),
        "NoSchedule".to_owned(),
    ));
    shape
        .labels
        .insert("accelerator".to_owned(), "gpu".to_owned());
    shape
}

/// Timings for a test: scale-down after `unneeded` s idle, confirmed
/// after `confirm` s.
struct Timing {
    unneeded: u64,
    confirm: u64,
    after_add: u64,
}

const SLOW_DOWN: Timing = Timing {
    unneeded: 600,
    confirm: 10,
    after_add: 600,
};

/// A server on `cluster` with the autoscaler and the models given as
/// (id, pod settings, idle timeout s).
async fn server(
    cluster: &Cluster,
    db: support::Db,
    models: &[(&str, Value, u64)],
    timing: Timing,
) -> (support::TestApp, String) {
    let url = cluster.url();
    let models: Vec<_> = models
        .iter()
        .map(|(id, settings, idle)| {
            let settings = settings.clone();
            let idle = *idle;
            support::sleepy(id, move |m| {
                m.local = None;
                m.max_instances = 3;
                m.idle_timeout_secs = idle;
                m.kubernetes = Some(settings);
            })
        })
        .collect();
    let app = support::TestApp::spawn_with(db, move |c| {
        c.kubernetes.backend = modelfleet::config::BackendKind::Kubernetes;
        c.kubernetes.api_url = Some(url);
        c.kubernetes.namespace = Some("modelfleet".to_owned());
        c.kubernetes.start_timeout_secs = 60;
        let a = &mut c.kubernetes.autoscaler;
        a.enabled = true;
        a.scale_down_unneeded_secs = timing.unneeded;
        a.scale_down_confirm_secs = timing.confirm;
        a.scale_down_delay_after_add_secs = timing.after_add;
        a.gather_quiet_ms = 300;
        c.models = models;
    })
    .await;
    let admin = app.admin("root").await;
    (app, admin)
}

fn cpu_model(cpu: &str) -> Value {
    json!({ "image": "example/sleepy:1", "requests": { "cpu": cpu, "memory": "1Gi" } })
}

fn gpu_model(gpus: u32) -> Value {
    json!({
        "image": "example/sleepy:1",
        "requests": { "cpu": "1", "memory": "1Gi", "nvidia.com/gpu": gpus.to_string() },
        "limits": { "nvidia.com/gpu": gpus.to_string() },
        "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
    })
}

fn replicas(cluster: &Cluster, name: &str) -> u64 {
    cluster
        .store
        .get(Resource::MACHINE_DEPLOYMENT, NS, name)
        .and_then(|md| md["spec"]["replicas"].as_u64())
        .unwrap_or(u64::MAX)
}

fn pool_nodes(cluster: &Cluster, pool: &str) -> Vec<Value> {
    cluster
        .store
        .list(Resource::NODE, None)
        .into_iter()
        .filter(|n| n["metadata"]["annotations"]["cluster.x-k8s.io/owner-name"] == pool)
        .collect()
}

/// Kubernetes events with `reason`, about any object.
fn events(cluster: &Cluster, reason: &str) -> Vec<Value> {
    cluster
        .store
        .list(Resource::EVENT, None)
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

const POOLS: &str = "{ nodePools { id minSize maxSize desired ready coming capacityFrom \
    nodeCapacity { cpuMillis memoryBytes gpus } lastDecisions { kind reason } } }";
const NODES: &str = "{ nodes { name pool state capacity { cpuMillis gpus } allocated { cpuMillis } modelfleetPods } }";

db_test!(unschedulable_pods_grow_the_right_pool_once, db => {
    let cluster = Cluster::start().await;
    cluster.set_provisioning_delay(Duration::from_secs(1));
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(4, 16), 0, 0, 5)).expect("pool");
    cluster.add_machine_deployment(&pool("gpu", gpu_shape(), 0, 0, 2)).expect("pool");
    let (app, admin) = server(&cluster, db, &[("pods", cpu_model("3"), 300)], SLOW_DOWN).await;
    let token = app.anonymous().await;
    // Two pods of 3 CPUs: two new 4-CPU nodes, not the GPU pool.
    let ids = [
        app.submit(&token, "pods", json!({ "seconds": 1, "message": "a" })).await,
        app.submit(&token, "pods", json!({ "seconds": 1, "message": "b" })).await,
    ];
    for id in &ids {
        let done = app.wait_done(&token, id).await;
        assert_eq!(done["status"], "SUCCEEDED", "{done}");
    }
    let told = || -> Vec<String> {
        cluster.store.list(Resource::EVENT, None).iter()
            .filter(|e| e["source"]["component"] == "modelfleet-autoscaler")
            .map(|e| format!("{}: {}: {}", e["involvedObject"]["name"], e["reason"], e["message"])).collect()
    };
    let instances = app.gql_as(&admin, "{ instances(filter: { includeStopped: true }) { nodes { handle status startedAt events { at reason message } } } }", json!({})).await;
    assert_eq!(replicas(&cluster, "cpu"), 2, "{:?} {instances:?}", told());
    assert_eq!(replicas(&cluster, "gpu"), 0);
    // Once: nothing more is asked while the nodes come or after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&cluster, "cpu"), 2);
    assert_eq!(pool_nodes(&cluster, "cpu").len(), 2);
    let triggered = events(&cluster, "TriggeredScaleUp");
    assert!(!triggered.is_empty(), "a TriggeredScaleUp event on the pods");
    assert!(triggered.iter().all(|e| e["involvedObject"]["kind"] == "Pod"
        && e["message"].as_str().is_some_and(|m| m.contains("capi/cpu"))), "{triggered:?}");

    let body = app.gql_as(&admin, POOLS, json!({})).await;
    let pools = body["data"]["nodePools"].as_array().unwrap_or_else(|| panic!("{body}"));
    let cpu = pools.iter().find(|p| p["id"] == "capi/cpu").expect("the cpu pool");
    assert_eq!((cpu["minSize"].as_u64(), cpu["maxSize"].as_u64()), (Some(0), Some(5)));
    assert_eq!((cpu["desired"].as_u64(), cpu["ready"].as_u64(), cpu["coming"].as_u64()), (Some(2), Some(2), Some(0)), "{cpu}");
    assert_eq!(cpu["nodeCapacity"]["cpuMillis"], 4000);
    let ups: Vec<&Value> = cpu["lastDecisions"].as_array().expect("decisions").iter()
        .filter(|d| d["kind"] == "SCALE_UP").collect();
    assert!(!ups.is_empty(), "{cpu}");
    let gpu = pools.iter().find(|p| p["id"] == "capi/gpu").expect("the gpu pool");
    assert_eq!(gpu["desired"], 0);
    assert_eq!(gpu["nodeCapacity"]["gpus"], 1);

    let body = app.gql_as(&admin, NODES, json!({})).await;
    let nodes = body["data"]["nodes"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(nodes.len(), 2, "{body}");
    for node in nodes {
        assert_eq!(node["pool"], "capi/cpu");
        assert_eq!(node["state"], "READY");
        assert_eq!(node["capacity"]["cpuMillis"], 4000);
        // Each holds one idle model pod of 3 CPUs.
        assert_eq!(node["allocated"]["cpuMillis"], 3000, "{node}");
        assert_eq!(node["modelfleetPods"].as_array().map(Vec::len), Some(1));
    }
});

db_test!(a_gpu_model_grows_the_gpu_pool_and_coming_gpus_count, db => {
    let cluster = Cluster::start().await;
    cluster.set_provisioning_delay(Duration::from_millis(500));
    // The node is Ready a while before its GPU is allocatable: the pod
    // stays unschedulable meanwhile, and must not cause a second node.
    cluster.set_gpu_delay(Duration::from_secs(3));
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(16, 64), 0, 0, 5)).expect("pool");
    cluster.add_machine_deployment(&pool("gpu", gpu_shape(), 0, 0, 3)).expect("pool");
    let (app, _admin) = server(&cluster, db, &[("vision", gpu_model(1), 300)], SLOW_DOWN).await;
    let token = app.anonymous().await;
    let first = app.submit(&token, "vision", json!({ "seconds": 2, "message": "seen" })).await;
    app.eventually("a GPU node asked for", 30, || async { replicas(&cluster, "gpu") == 1 }).await;
    // A second pod while the first node is still coming: the plan puts
    // the first pod on the coming node and asks for one more, not two.
    let second = app.submit(&token, "vision", json!({ "seconds": 2, "message": "also" })).await;
    for id in [&first, &second] {
        let done = app.wait_done(&token, id).await;
        assert_eq!(done["status"], "SUCCEEDED", "{done}");
    }
    assert_eq!(replicas(&cluster, "gpu"), 2);
    assert_eq!(replicas(&cluster, "cpu"), 0);
});

db_test!(a_pod_too_large_for_every_pool_is_explained_and_not_scaled_for, db => {
    let cluster = Cluster::start().await;
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(8, 32), 1, 0, 5)).expect("pool");
    cluster.add_machine_deployment(&pool("gpu", gpu_shape(), 0, 0, 3)).expect("pool");
    let (app, admin) = server(&cluster, db, &[("giant", gpu_model(2), 300)], SLOW_DOWN).await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "giant", json!({})).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let error = done["error"].as_str().expect("an error");
    assert!(
        error.contains("needs 2 GPUs, the largest node of any pool has 1"),
        "{error}"
    );
    assert_eq!(replicas(&cluster, "gpu"), 0);
    assert_eq!(replicas(&cluster, "cpu"), 1);
    let told = events(&cluster, "NotTriggerScaleUp");
    assert!(told.iter().any(|e| e["type"] == "Warning"
        && e["message"].as_str().is_some_and(|m| m.contains("needs 2 GPUs"))), "{told:?}");
    // The instance says why, in its events.
    let query = "{ instances(filter: { modelIds: [\"giant\"], includeStopped: true }) { nodes { status stopReason events { reason message } } } }";
    let body = app.gql_as(&admin, query, json!({})).await;
    let instance = &body["data"]["instances"]["nodes"][0];
    assert_eq!(instance["status"], "FAILED", "{body}");
    assert!(instance["stopReason"].as_str().is_some_and(|r| r.contains("needs 2 GPUs")), "{body}");
    let pools = app.gql_as(&admin, POOLS, json!({})).await;
    assert!(pools.to_string().contains("NO_SCALE_UP"), "{pools}");
});

db_test!(an_idle_node_is_cordoned_and_removed_after_the_delay, db => {
    let cluster = Cluster::start().await;
    cluster.set_deletion_delay(Duration::from_millis(200));
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(4, 16), 1, 0, 5)).expect("pool");
    let timing = Timing { unneeded: 2, confirm: 1, after_add: 0 };
    let (app, _admin) = server(&cluster, db, &[("pods", cpu_model("1"), 1)], timing).await;
    let node = pool_nodes(&cluster, "cpu")[0]["metadata"]["name"].as_str().expect("a node").to_owned();
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({ "seconds": 3, "message": "ran" })).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["output"], "ran", "{done}");
    // While it ran, the node stayed; the idle timeout (1 s) then stops
    // the pod, and 2 s later the node goes.
    app.eventually("the node to be removed", 30, || async {
        cluster.store.get(Resource::NODE, "", &node).is_none()
    })
    .await;
    assert_eq!(replicas(&cluster, "cpu"), 0);
    let told: Vec<Value> = events(&cluster, "ScaleDown")
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == node.as_str())
        .collect();
    assert!(told.len() >= 2, "a cordon and a removal event: {told:?}");
});

db_test!(a_node_that_gets_a_pod_between_cordon_and_deletion_is_kept, db => {
    let cluster = Cluster::start().await;
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(4, 16), 1, 0, 5)).expect("pool");
    let timing = Timing { unneeded: 1, confirm: 3, after_add: 0 };
    let (app, _admin) = server(&cluster, db, &[("pods", cpu_model("1"), 300)], timing).await;
    let node = pool_nodes(&cluster, "cpu")[0]["metadata"]["name"].as_str().expect("a node").to_owned();
    app.eventually("the idle node to be cordoned", 30, || async {
        cluster.store.get(Resource::NODE, "", &node).is_some_and(|n| n["spec"]["unschedulable"] == true)
    })
    .await;
    let n = cluster.store.get(Resource::NODE, "", &node).expect("the node");
    assert!(n["spec"]["taints"].as_array().is_some_and(|t| t.iter().any(|t| t["key"] == "modelfleet.io/scale-down")), "{n}");
    // Someone's pod lands on it before the removal is confirmed.
    cluster.store.create(Resource::POD, "default", json!({
        "metadata": { "name": "late" },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "x" }] },
    })).expect("a pod");
    app.eventually("the node to be uncordoned", 30, || async {
        cluster.store.get(Resource::NODE, "", &node).is_some_and(|n| {
            n["spec"]["unschedulable"] != true
                && !n["spec"]["taints"].as_array().is_some_and(|t| t.iter().any(|t| t["key"] == "modelfleet.io/scale-down"))
        })
    })
    .await;
    assert_eq!(replicas(&cluster, "cpu"), 1);
    assert!(events(&cluster, "ScaleDownCancelled").iter().any(|e| e["involvedObject"]["name"] == node.as_str()));
    let machines = cluster.store.list(Resource::MACHINE, Some(NS));
    assert!(machines.iter().all(|m| m["metadata"]["annotations"]["cluster.x-k8s.io/delete-machine"].is_null()), "{machines:?}");
    // And it stays.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(cluster.store.get(Resource::NODE, "", &node).is_some());
});

db_test!(pool_bounds_hold, db => {
    let cluster = Cluster::start().await;
    cluster.set_deletion_delay(Duration::from_millis(200));
    cluster.set_provisioning_delay(Duration::from_millis(300));
    // Two idle nodes, min 1: one goes, one stays.
    cluster.add_machine_deployment(&pool("idle", NodeShape::new(2, 8), 2, 1, 5)).expect("pool");
    // Three pods that each need a whole node, max 1: one node.
    cluster.add_machine_deployment(&pool("small", NodeShape::new(4, 16), 0, 0, 1)).expect("pool");
    let timing = Timing { unneeded: 1, confirm: 1, after_add: 0 };
    let (app, _admin) = server(&cluster, db, &[("wide", cpu_model("3"), 300)], timing).await;
    let token = app.anonymous().await;
    for _ in 0..3 {
        app.submit(&token, "wide", json!({ "seconds": 30 })).await;
    }
    app.eventually("a pod told the pool is at its max", 30, || async {
        events(&cluster, "NotTriggerScaleUp").iter().any(|e| {
            e["message"].as_str().is_some_and(|m| m.contains("max node group size reached"))
        })
    })
    .await;
    app.eventually("an idle node to go", 30, || async { pool_nodes(&cluster, "idle").len() == 1 }).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(replicas(&cluster, "small"), 1);
    assert_eq!(replicas(&cluster, "idle"), 1);
    assert_eq!(pool_nodes(&cluster, "idle").len(), 1);

    // Growing, cordoning, confirming and telling used every call the
    // autoscaler's ClusterRole grants, and nothing beyond the two roles.
    let grants = |list: &[(&str, &str, &[&str])]| -> BTreeSet<(String, String)> {
        list.iter()
            .flat_map(|(_, resource, verbs)| verbs.iter().map(move |v| (resource.to_string(), v.to_string())))
            .collect()
    };
    let autoscaler = grants(AUTOSCALER_PERMISSIONS);
    let all: BTreeSet<_> = grants(PERMISSIONS).union(&autoscaler).cloned().collect();
    let made: BTreeSet<(String, String)> = cluster.store.calls().keys().map(|call| {
        let (method, resource) = call.split_once(' ').expect("METHOD resource");
        let verb = match method {
            "GET" => "get", "LIST" => "list", "WATCH" => "watch", "POST" => "create",
            "PUT" => "update", "PATCH" => "patch", "DELETE" => "delete",
            other => panic!("unexpected call {other}"),
        };
        (resource.to_owned(), verb.to_owned())
    }).collect();
    assert!(made.is_subset(&all), "calls beyond the roles: {:?}", made.difference(&all).collect::<Vec<_>>());
    assert!(autoscaler.is_subset(&made), "granted, never called: {:?}", autoscaler.difference(&made).collect::<Vec<_>>());
});

db_test!(a_node_whose_pod_holds_an_assigned_request_is_never_removed, db => {
    let cluster = Cluster::start().await;
    cluster.set_deletion_delay(Duration::from_millis(200));
    cluster.add_machine_deployment(&pool("gpu", gpu_shape(), 1, 0, 3)).expect("pool");
    // A model without GPUs that runs on the GPU node: on a GPU node, only
    // GPU pods and assigned requests keep it. While a request runs, the
    // node must stay.
    let settings = json!({
        "image": "example/sleepy:1",
        "requests": { "cpu": "1", "memory": "1Gi" },
        "node_selector": { "accelerator": "gpu" },
        "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
    });
    let timing = Timing { unneeded: 1, confirm: 1, after_add: 0 };
    let (app, _admin) = server(&cluster, db, &[("cpu-on-gpu", settings, 300)], timing).await;
    let node = pool_nodes(&cluster, "gpu")[0]["metadata"]["name"].as_str().expect("a node").to_owned();
    let token = app.anonymous().await;
    let id = app.submit(&token, "cpu-on-gpu", json!({ "seconds": 6, "message": "kept" })).await;
    app.eventually("the request to run", 60, || async {
        let body = app.gql_as(&token, support::REQUEST, json!({ "id": id })).await;
        body["data"]["request"]["status"] == "RUNNING"
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let n = cluster.store.get(Resource::NODE, "", &node).expect("the node stays");
        assert_ne!(n["spec"]["unschedulable"], true, "cordoned while a request ran: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["output"], "kept", "{done}");
    // Idle again, its CPU pod does not keep the GPU node.
    app.eventually("the node to be removed", 30, || async {
        cluster.store.get(Resource::NODE, "", &node).is_none()
    })
    .await;
});

db_test!(node_queries_and_updates_are_for_admins_only, db => {
    let cluster = Cluster::start().await;
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(4, 16), 1, 0, 5)).expect("pool");
    let (app, admin) = server(&cluster, db, &[("pods", cpu_model("1"), 300)], SLOW_DOWN).await;
    let anonymous = app.anonymous().await;
    let user = app.signup("plain").await;
    for query in [POOLS, NODES] {
        let body = app.gql(query, json!({})).await;
        assert_eq!(support::code(&body), "UNAUTHENTICATED", "{body}");
        for token in [&anonymous, &user] {
            let body = app.gql_as(token, query, json!({})).await;
            assert_eq!(support::code(&body), "FORBIDDEN", "{body}");
            assert!(body["data"].is_null(), "{body}");
        }
    }
    // The subscription: refused for a user, served to an admin.
    let subscribe = |id: &str| json!({ "id": id, "type": "subscribe", "payload": {
        "query": "subscription { nodeUpdates { removed node { name state } } }" } });
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": user } })).await;
    let ack = ws.next_json().await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.send(subscribe("1")).await;
    let refused = ws.next_json().await;
    assert!(refused.to_string().contains("FORBIDDEN"), "{refused}");

    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": admin } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(subscribe("2")).await;
    ws.sync().await;
    // A new node appears: the admin hears of it.
    cluster.store.update(Resource::MACHINE_DEPLOYMENT, NS, "cpu", |md| md["spec"]["replicas"] = json!(2)).expect("scaled");
    let update = ws.next_json().await;
    assert_eq!(update["type"], "next", "{update}");
    assert!(update["payload"]["data"]["nodeUpdates"]["node"]["name"].is_string(), "{update}");
});

db_test!(several_idle_nodes_of_a_pool_all_go, db => {
    let cluster = Cluster::start().await;
    cluster.set_deletion_delay(Duration::from_millis(200));
    cluster.add_machine_deployment(&pool("cpu", NodeShape::new(4, 16), 3, 0, 5)).expect("pool");
    let timing = Timing { unneeded: 1, confirm: 1, after_add: 0 };
    let (app, _admin) = server(&cluster, db, &[("pods", cpu_model("1"), 300)], timing).await;
    // Confirmed in one pass, each removal lowers the replicas by one more.
    app.eventually("every idle node to go", 30, || async {
        pool_nodes(&cluster, "cpu").is_empty()
    })
    .await;
    assert_eq!(replicas(&cluster, "cpu"), 0);
    // The machine controller removes each Machine after its node.
    app.eventually("every Machine to go", 30, || async {
        cluster.store.list(Resource::MACHINE, Some(NS)).is_empty()
    })
    .await;
});

db_test!(a_pending_pod_takes_back_a_node_being_emptied, db => {
    let cluster = Cluster::start().await;
    cluster.set_provisioning_delay(Duration::from_millis(300));
    // No capacity annotations: the pool's only node is its description,
    // and it is being emptied.
    let mut spec = pool("cpu", NodeShape::new(4, 16), 1, 0, 5);
    spec.capacity_annotations = false;
    cluster.add_machine_deployment(&spec).expect("pool");
    let timing = Timing { unneeded: 1, confirm: 60, after_add: 0 };
    let (app, _admin) = server(&cluster, db, &[("pods", cpu_model("1"), 300)], timing).await;
    let node = pool_nodes(&cluster, "cpu")[0]["metadata"]["name"].as_str().expect("a node").to_owned();
    app.eventually("the node to be cordoned", 30, || async {
        cluster.store.get(Resource::NODE, "", &node).is_some_and(|n| n["spec"]["unschedulable"] == true)
    })
    .await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "pods", json!({ "message": "placed" })).await;
    let done = app.wait_done(&token, &id).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    // The pod took the node back: uncordoned, and no node added.
    let n = cluster.store.get(Resource::NODE, "", &node).expect("the node stays");
    assert_ne!(n["spec"]["unschedulable"], true, "{n}");
    assert_eq!(replicas(&cluster, "cpu"), 1);
    assert!(events(&cluster, "ScaleDownCancelled").iter().any(|e| {
        e["message"].as_str().is_some_and(|m| m.contains("a pending pod fits it"))
    }));
});
