//! The simulated Cluster API and what a node autoscaler needs of the API
//! server, through the real kube-rs client where a client would call.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client, Config};
use kubesim::{Cluster, NodeShape, PoolSpec, Resource};
use serde_json::{Value, json};

const NS: &str = "pools";

async fn client(cluster: &Cluster) -> Client {
    let config = Config::new(cluster.url().parse().expect("the simulator's URL"));
    Client::try_from(config).expect("a kube client")
}

fn deployments(client: Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "MachineDeployment");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "machinedeployments");
    Api::namespaced_with(client, namespace, &resource)
}

fn machines(client: Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "machines");
    Api::namespaced_with(client, NS, &resource)
}

/// Waits up to 10 s for `check` to give a value.
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Machines of deployment `name`, not being deleted.
fn live_machines(cluster: &Cluster, name: &str) -> Vec<Value> {
    cluster
        .store
        .list(Resource::MACHINE, Some(NS))
        .into_iter()
        .filter(|m| m["metadata"]["labels"]["cluster.x-k8s.io/deployment-name"] == name)
        .filter(|m| m["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn node(cluster: &Cluster, name: &str) -> Option<Value> {
    cluster.store.get(Resource::NODE, "", name)
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A pod asking for `cpu` and `gpus`, tolerating every taint.
fn pod(name: &str, cpu: &str, gpus: u64, node: Option<&str>) -> Value {
    let mut requests = json!({ "cpu": cpu, "memory": "1Gi" });
    if gpus > 0 {
        requests["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let mut pod = json!({
        "metadata": { "name": name, "labels": { "app": "test" } },
        "spec": {
            "containers": [{ "name": "main", "image": "model", "resources": { "requests": requests } }],
            "tolerations": [{ "operator": "Exists" }],
        },
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

fn cpu_pool(name: &str, replicas: u64) -> PoolSpec {
    let mut pool = PoolSpec::new(NS, name, replicas, NodeShape::new(4, 16));
    pool.ready_at_once = true;
    pool
}

#[tokio::test]
async fn the_scale_subresource_reads_and_writes_replicas() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster
        .add_machine_deployment(&cpu_pool("cpu", 1))
        .expect("added");
    let api = deployments(client(&cluster).await, NS);
    until("status.replicas", || {
        let md = cluster.store.get(Resource::MACHINE_DEPLOYMENT, NS, "cpu")?;
        (md["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;

    let scale = api.get_scale("cpu").await.expect("the scale");
    let spec = scale.spec.clone().expect("a spec");
    let status = scale.status.clone().expect("a status");
    assert_eq!((spec.replicas, status.replicas), (Some(1), 1));
    assert_eq!(
        status.selector.as_deref(),
        Some("cluster.x-k8s.io/cluster-name=sim,cluster.x-k8s.io/deployment-name=cpu")
    );

    // A merge patch sets spec.replicas and nothing else; watchers see it.
    let mut changes = cluster.store.subscribe();
    let patch = Patch::Merge(json!({ "spec": { "replicas": 3 } }));
    let patched = api
        .patch_scale("cpu", &PatchParams::default(), &patch)
        .await
        .expect("patched");
    assert_eq!(patched.spec.and_then(|s| s.replicas), Some(3));
    let stored = cluster
        .store
        .get(Resource::MACHINE_DEPLOYMENT, NS, "cpu")
        .expect("stored");
    assert_eq!(stored["spec"]["replicas"], 3);
    assert_eq!(
        patched.metadata.resource_version.as_deref(),
        stored["metadata"]["resourceVersion"].as_str()
    );
    let modified = changes.recv().await.expect("a change");
    assert_eq!(
        (modified.resource, modified.kind),
        (Resource::MACHINE_DEPLOYMENT, "MODIFIED")
    );

    // A replace must name the current version: the old scale's is stale.
    let mut stale = scale.clone();
    stale.spec = Some(k8s_openapi::api::autoscaling::v1::ScaleSpec { replicas: Some(5) });
    let refused = api
        .replace_scale("cpu", &PostParams::default(), &stale)
        .await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 409),
        "{refused:?}"
    );
    let mut fresh: Scale = api.get_scale("cpu").await.expect("the scale");
    fresh.spec = Some(k8s_openapi::api::autoscaling::v1::ScaleSpec { replicas: Some(2) });
    let replaced = api
        .replace_scale("cpu", &PostParams::default(), &fresh)
        .await
        .expect("replaced");
    assert_eq!(replaced.spec.and_then(|s| s.replicas), Some(2));

    let negative = Patch::Merge(json!({ "spec": { "replicas": -1 } }));
    let refused = api
        .patch_scale("cpu", &PatchParams::default(), &negative)
        .await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 422),
        "{refused:?}"
    );
    let missing = api.get_scale("nope").await;
    assert!(matches!(missing, Err(kube::Error::Api(ref s)) if s.code == 404));

    let calls = cluster.store.calls();
    assert_eq!(calls.get("GET machinedeployments/scale"), Some(&3));
    assert_eq!(calls.get("PATCH machinedeployments/scale"), Some(&2));
    assert_eq!(calls.get("PUT machinedeployments/scale"), Some(&2));
}

#[tokio::test]
async fn raising_replicas_makes_machines_then_ready_nodes_of_the_pools_shape() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster.set_provisioning_delay(Duration::from_millis(200));
    let mut shape = NodeShape::new(8, 32);
    shape.max_pods = 58;
    shape.labels.insert("pool".into(), "batch".into());
    shape
        .taints
        .push(("dedicated".into(), "batch".into(), "NoSchedule".into()));
    let mut pool = PoolSpec::new(NS, "batch", 0, shape);
    pool.min = Some(0);
    pool.max = Some(5);
    pool.capacity_annotations = true;
    pool.cluster_name = "prod".into();
    let added = cluster.add_machine_deployment(&pool).expect("added");
    let annotations = &added["metadata"]["annotations"];
    assert_eq!(
        annotations["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"],
        "5"
    );
    assert_eq!(
        annotations["capacity.cluster-autoscaler.kubernetes.io/cpu"],
        "8"
    );
    assert_eq!(
        annotations["capacity.cluster-autoscaler.kubernetes.io/memory"],
        "32Gi"
    );
    assert_eq!(
        annotations["capacity.cluster-autoscaler.kubernetes.io/taints"],
        "dedicated=batch:NoSchedule"
    );

    let api = deployments(client(&cluster).await, NS);
    let asked = Instant::now();
    api.patch_scale(
        "batch",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
    )
    .await
    .expect("scaled");
    let made = until("two machines", || {
        let live = live_machines(&cluster, "batch");
        (live.len() == 2).then_some(live)
    })
    .await;
    let names: Vec<String> = made.iter().map(name_of).collect();
    for name in &names {
        assert!(name.starts_with("batch-") && name.len() == "batch-".len() + 5);
    }
    let nodes = until("both nodes", || {
        names
            .iter()
            .map(|n| node(&cluster, n))
            .collect::<Option<Vec<_>>>()
    })
    .await;
    assert!(asked.elapsed() >= Duration::from_millis(200));

    let node = &nodes[0];
    let name = name_of(node);
    let annotations = &node["metadata"]["annotations"];
    assert_eq!(annotations["cluster.x-k8s.io/machine"], name.as_str());
    assert_eq!(annotations["cluster.x-k8s.io/cluster-namespace"], NS);
    assert_eq!(annotations["cluster.x-k8s.io/cluster-name"], "prod");
    assert_eq!(
        annotations["cluster.x-k8s.io/owner-kind"],
        "MachineDeployment"
    );
    assert_eq!(annotations["cluster.x-k8s.io/owner-name"], "batch");
    assert_eq!(node["metadata"]["labels"]["pool"], "batch");
    assert_eq!(
        node["spec"]["taints"],
        json!([{ "key": "dedicated", "value": "batch", "effect": "NoSchedule" }])
    );
    let capacity = json!({ "cpu": "8000m", "memory": (32u64 << 30).to_string(), "pods": "58" });
    assert_eq!(node["status"]["capacity"], capacity);
    assert_eq!(node["status"]["allocatable"], capacity);
    assert_eq!(node["status"]["conditions"][0]["status"], "True");

    let machine = until("a running machine", || {
        let m = cluster.store.get(Resource::MACHINE, NS, &name)?;
        (m["status"]["phase"] == "Running").then_some(m)
    })
    .await;
    assert_eq!(machine["status"]["nodeRef"]["name"], name.as_str());
    assert_eq!(machine["status"]["nodeRef"]["kind"], "Node");
    assert_eq!(machine["spec"]["clusterName"], "prod");
    assert_eq!(
        machine["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"],
        "prod"
    );
    assert_eq!(machine["metadata"]["ownerReferences"][0]["name"], "batch");
    assert_eq!(
        machine["metadata"]["ownerReferences"][0]["uid"],
        added["metadata"]["uid"]
    );

    until("ready replicas in the status", || {
        let md = cluster
            .store
            .get(Resource::MACHINE_DEPLOYMENT, NS, "batch")?;
        let status = &md["status"];
        (status["replicas"] == 2
            && status["readyReplicas"] == 2
            && status["availableReplicas"] == 2)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_gpu_node_offers_its_gpus_only_after_the_gpu_delay() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster.set_provisioning_delay(Duration::from_millis(50));
    cluster.set_gpu_delay(Duration::from_secs(1));
    let mut shape = NodeShape::new(8, 64);
    shape.gpus = 2;
    cluster
        .add_machine_deployment(&PoolSpec::new(NS, "gpu", 1, shape))
        .expect("added");
    cluster
        .store
        .create(Resource::POD, NS, pod("trainer", "1", 1, None))
        .expect("created");

    let name = until("the gpu node", || {
        let machine = live_machines(&cluster, "gpu").pop()?;
        let name = name_of(&machine);
        node(&cluster, &name).map(|_| name)
    })
    .await;
    let first = node(&cluster, &name).expect("the node");
    let seen = Instant::now();
    assert_eq!(first["status"]["conditions"][0]["status"], "True");
    assert_eq!(first["status"]["capacity"]["nvidia.com/gpu"], "2");
    assert_eq!(first["status"]["allocatable"]["nvidia.com/gpu"], "0");

    let bound = until("the gpu pod bound", || {
        let p = cluster.store.get(Resource::POD, NS, "trainer")?;
        p["spec"]["nodeName"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(bound, name);
    let ready = node(&cluster, &name).expect("the node");
    assert_eq!(ready["status"]["allocatable"]["nvidia.com/gpu"], "2");
    // Bound only once the GPUs showed, a second after the node came.
    assert!(
        seen.elapsed() >= Duration::from_millis(700),
        "{:?}",
        seen.elapsed()
    );
}

#[tokio::test]
async fn lowering_replicas_deletes_the_marked_machine_with_its_node_and_pods() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster
        .add_machine_deployment(&cpu_pool("cpu", 3))
        .expect("added");
    let names: Vec<String> = live_machines(&cluster, "cpu").iter().map(name_of).collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| node(&cluster, n).is_some()));
    let (doomed, kept) = (&names[1], &names[0]);
    for (pod_name, node_name) in [("on-doomed", doomed), ("on-kept", kept)] {
        cluster
            .store
            .create(Resource::POD, NS, pod(pod_name, "100m", 0, Some(node_name)))
            .expect("created");
    }
    let client = client(&cluster).await;
    machines(client.clone())
        .patch(
            doomed,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "cluster.x-k8s.io/delete-machine": "" } } })),
        )
        .await
        .expect("annotated");

    let mut changes = cluster.store.subscribe();
    deployments(client, NS)
        .patch_scale(
            "cpu",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .expect("scaled");
    until("the marked machine gone", || {
        cluster
            .store
            .get(Resource::MACHINE, NS, doomed)
            .is_none()
            .then_some(())
    })
    .await;
    assert!(node(&cluster, doomed).is_none());
    assert!(cluster.store.get(Resource::POD, NS, "on-doomed").is_none());
    assert!(cluster.store.get(Resource::POD, NS, "on-kept").is_some());
    let left: Vec<String> = live_machines(&cluster, "cpu").iter().map(name_of).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(doomed));
    assert!(left.iter().all(|n| node(&cluster, n).is_some()));

    // It went Deleting first, then its node, then itself.
    let mut seen = Vec::new();
    while let Ok(change) = changes.try_recv() {
        if name_of(&change.object) == *doomed {
            seen.push((
                change.resource,
                change.kind,
                change.object["status"]["phase"].clone(),
            ));
        }
    }
    assert!(
        seen.contains(&(Resource::MACHINE, "MODIFIED", json!("Deleting"))),
        "{seen:?}"
    );
    let node_gone = seen
        .iter()
        .position(|c| c.0 == Resource::NODE && c.1 == "DELETED");
    let machine_gone = seen
        .iter()
        .position(|c| c.0 == Resource::MACHINE && c.1 == "DELETED");
    assert!(node_gone.is_some() && node_gone < machine_gone, "{seen:?}");

    until("the status counts two", || {
        let md = cluster.store.get(Resource::MACHINE_DEPLOYMENT, NS, "cpu")?;
        (md["status"]["replicas"] == 2 && md["status"]["readyReplicas"] == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_machine_deleted_through_the_api_takes_its_node_and_is_replaced() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster.set_provisioning_delay(Duration::from_millis(50));
    cluster
        .add_machine_deployment(&cpu_pool("cpu", 2))
        .expect("added");
    let doomed = name_of(&live_machines(&cluster, "cpu")[0]);
    machines(client(&cluster).await)
        .delete(&doomed, &DeleteParams::default())
        .await
        .expect("deleted");
    until("the machine and its node gone", || {
        let gone = cluster.store.get(Resource::MACHINE, NS, &doomed).is_none()
            && node(&cluster, &doomed).is_none();
        gone.then_some(())
    })
    .await;
    until("a replacement with its node", || {
        let live = live_machines(&cluster, "cpu");
        let all_up = live.iter().all(|m| node(&cluster, &name_of(m)).is_some());
        (live.len() == 2 && all_up).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unschedulable_pod_is_placed_once_a_fitting_node_comes() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster.set_provisioning_delay(Duration::from_millis(100));
    cluster
        .add_machine_deployment(&cpu_pool("small", 1))
        .expect("added");
    let mut big = PoolSpec::new(NS, "big", 0, NodeShape::new(16, 64));
    big.max = Some(3);
    cluster.add_machine_deployment(&big).expect("added");
    cluster
        .store
        .create(Resource::POD, NS, pod("large", "12", 0, None))
        .expect("created");
    let message = until("the pod marked unschedulable", || {
        let p = cluster.store.get(Resource::POD, NS, "large")?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "Unschedulable")?
            .clone();
        Some(c["message"].clone())
    })
    .await;
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");

    deployments(client(&cluster).await, NS)
        .patch_scale(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await
        .expect("scaled");
    let bound = until("the pod bound", || {
        let p = cluster.store.get(Resource::POD, NS, "large")?;
        let node = p["spec"]["nodeName"].as_str()?.to_owned();
        (p["status"]["phase"] == "Running").then_some(node)
    })
    .await;
    assert!(bound.starts_with("big-"), "{bound}");
}

#[tokio::test]
async fn an_autoscaler_can_list_watch_patch_and_record_as_it_needs() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    cluster
        .add_machine_deployment(&cpu_pool("cpu", 2))
        .expect("added");
    let mut other = cpu_pool("cpu", 1);
    other.namespace = "elsewhere".into();
    cluster.add_machine_deployment(&other).expect("added");
    let node_names: Vec<String> = live_machines(&cluster, "cpu").iter().map(name_of).collect();
    // Pods bound directly, as a DaemonSet's and a mirror pod are.
    let mut daemon = pod("daemon", "100m", 0, Some(&node_names[0]));
    daemon["metadata"]["ownerReferences"] =
        json!([{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u" }]);
    let mut mirror = pod("mirror", "100m", 0, Some(&node_names[1]));
    mirror["metadata"]["annotations"] = json!({ "kubernetes.io/config.mirror": "x" });
    for (ns, p) in [("kube-system", daemon), ("default", mirror)] {
        cluster.store.create(Resource::POD, ns, p).expect("created");
    }
    until("both running with an address", || {
        let running = cluster
            .store
            .list(Resource::POD, None)
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .count();
        (running == 2).then_some(())
    })
    .await;

    let client = client(&cluster).await;
    // Deployments across namespaces.
    let gvk = GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "MachineDeployment");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "machinedeployments");
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("listed")
            .items
            .len(),
        2
    );

    // Pods across namespaces, by node and by label.
    let pods: Api<Pod> = Api::all(client.clone());
    let on_first = ListParams::default().fields(&format!("spec.nodeName={}", node_names[0]));
    let listed = pods.list(&on_first).await.expect("listed");
    let listed: Vec<String> = listed
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(listed, ["daemon"]);
    let labelled = pods
        .list(
            &ListParams::default()
                .labels("app=test")
                .fields("spec.nodeName!="),
        )
        .await
        .expect("listed");
    assert_eq!(labelled.items.len(), 2);
    let unsupported = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await;
    assert!(matches!(unsupported, Err(kube::Error::Api(ref s)) if s.code == 400));
    let watched = pods
        .watch(
            &kube::api::WatchParams::default().fields(&format!("spec.nodeName={}", node_names[1])),
            "0",
        )
        .await;
    let first = futures_first(watched.expect("a watch")).await;
    assert_eq!(first.as_deref(), Some("mirror"));

    // Cordoning and tainting a node.
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({ "spec": { "unschedulable": true,
        "taints": [{ "key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule" }] } });
    nodes
        .patch(
            &node_names[0],
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patched");
    let cordoned = node(&cluster, &node_names[0]).expect("the node");
    assert_eq!(cordoned["spec"]["unschedulable"], true);
    assert_eq!(
        cordoned["spec"]["taints"][0]["key"],
        "ToBeDeletedByClusterAutoscaler"
    );

    // Its own events, in any namespace.
    let events: Api<Event> = Api::namespaced(client, "kube-system");
    let event: Event = serde_json::from_value(json!({
        "metadata": { "generateName": "autoscaler." },
        "involvedObject": { "kind": "Node", "name": node_names[0] },
        "reason": "ScaleDown", "message": "removing node", "type": "Normal",
    }))
    .expect("an event");
    events
        .create(&PostParams::default(), &event)
        .await
        .expect("created");
}

/// The name of the first object a watch reports.
async fn futures_first(
    events: impl futures_util::Stream<Item = kube::Result<kube::api::WatchEvent<Pod>>>,
) -> Option<String> {
    use futures_util::StreamExt;
    let mut events = std::pin::pin!(events);
    match events.next().await? {
        Ok(kube::api::WatchEvent::Added(pod)) => pod.metadata.name,
        _ => None,
    }
}

/// The control loop's cost at the size of the autoscaler benchmark: 1,000
/// nodes in 3 MachineDeployments, 29,500 bound pods and 500 that fit
/// nowhere. Prints the figures; run with
/// `cargo test -p kubesim --release --test cluster_api -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; takes a while"]
async fn tick_time_at_benchmark_size() {
    let cluster = Cluster::start().await;
    cluster.set_pod_servers(false);
    let mut gpu = NodeShape::new(16, 128);
    gpu.gpus = 4;
    gpu.taints.push((
        "nvidia.com/gpu".into(),
        "present".into(),
        "NoSchedule".into(),
    ));
    for (name, replicas, shape) in [
        ("general", 600, NodeShape::new(8, 32)),
        ("large", 300, NodeShape::new(32, 128)),
        ("gpu", 100, gpu),
    ] {
        let mut pool = PoolSpec::new(NS, name, replicas, shape);
        pool.ready_at_once = true;
        cluster.add_machine_deployment(&pool).expect("added");
    }
    let nodes: Vec<String> = cluster
        .store
        .list(Resource::NODE, None)
        .iter()
        .map(name_of)
        .collect();
    assert_eq!(nodes.len(), 1000);
    let placing = Instant::now();
    for i in 0..29_500 {
        let node = &nodes[i % nodes.len()];
        let mut p = pod(&format!("bound-{i}"), "100m", 0, Some(node));
        p["spec"]["tolerations"] = json!([]);
        cluster.store.create(Resource::POD, NS, p).expect("created");
    }
    for i in 0..500 {
        let p = pod(&format!("huge-{i}"), "64", 0, None);
        cluster.store.create(Resource::POD, NS, p).expect("created");
    }
    let created = placing.elapsed();
    until_long("every bound pod running", || {
        let mut running = 0;
        cluster.store.each(Resource::POD, |p| {
            if p["status"]["phase"] == "Running" {
                running += 1;
            }
        });
        running == 29_500
    })
    .await;
    say(&format!(
        "created 30,000 pods in {created:?}; all bound ones running after {:?}",
        placing.elapsed()
    ));

    cluster.reset_tick_times();
    tokio::time::sleep(Duration::from_secs(3)).await;
    report("settled (3 s)", cluster.tick_times());

    // Pods come and go, so the Unschedulable ones are tried again.
    cluster.reset_tick_times();
    for i in 0..30 {
        cluster
            .store
            .delete(Resource::POD, NS, &format!("bound-{i}"))
            .expect("deleted");
        let p = pod(&format!("new-{i}"), "100m", 0, None);
        cluster.store.create(Resource::POD, NS, p).expect("created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report(
        "a pod deleted and one created every 100 ms (3 s)",
        cluster.tick_times(),
    );
}

async fn until_long(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(what: &str, times: kubesim::TickTimes) {
    say(&format!(
        "{what}: {} ticks, mean {:?}, max {:?}",
        times.ticks,
        times.mean(),
        times.max
    ));
}

#[expect(clippy::print_stdout, reason = "the measurement is the output")]
fn say(line: &str) {
    println!("{line}");
}
