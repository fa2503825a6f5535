//! The scaler changing hands on Kubernetes, against the simulated cluster:
//! the Lease election itself, a restarted server adopting the pods the
//! earlier one left running, and two server processes electing one scaler
//! and failing over when the leader is killed.

#[path = "api/support.rs"]
#[macro_use]
#[allow(dead_code, reason = "shared with the API tests, which use the rest")]
mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::{Client, Config};
use kubesim::{Cluster, NodeSpec, Resource};
use modelfleet::fleet::kubernetes::PERMISSIONS;
use modelfleet::fleet::kubernetes::lease::LeaseLock;
use serde_json::{Value, json};

use support::{TestApp, TestDb};

const NAMESPACE: &str = "modelfleet";

async fn client(url: &str) -> Client {
    let mut config = Config::new(url.parse().expect("the simulator's URL"));
    config.default_namespace = NAMESPACE.to_owned();
    Client::try_from(config).expect("a kube client")
}

fn holder(cluster: &Cluster, name: &str) -> Option<String> {
    let lease = cluster.store.get(Resource::LEASE, NAMESPACE, name)?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn one_replica_holds_the_lease_until_it_lets_go_or_lets_it_run_out() {
    let cluster = Cluster::start().await;
    let client = client(&cluster.url()).await;
    let duration = Duration::from_secs(3);
    let mut a = LeaseLock::new(client.clone(), "scaler", "a", duration);
    let mut b = LeaseLock::new(client.clone(), "scaler", "b", duration);

    assert!(
        a.try_acquire().await.expect("a asks"),
        "a free lease is taken"
    );
    assert!(
        !b.try_acquire().await.expect("b asks"),
        "a held lease is not"
    );
    assert!(a.renew().await, "the holder renews");
    assert!(
        a.try_acquire().await.expect("a asks again"),
        "the holder keeps it"
    );
    assert_eq!(holder(&cluster, "scaler").as_deref(), Some("a"));

    // Released, it is free at once.
    a.release().await;
    assert!(
        b.try_acquire().await.expect("b asks"),
        "a released lease is free"
    );
    let lease = cluster
        .store
        .get(Resource::LEASE, NAMESPACE, "scaler")
        .expect("the lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 3);

    // Not renewed, it holds for its duration and no longer.
    let since = Instant::now();
    let mut a = LeaseLock::new(client.clone(), "scaler", "a", duration);
    while !a.try_acquire().await.expect("a asks") {
        assert!(since.elapsed() < duration * 2, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = since.elapsed();
    assert!(
        waited >= duration - Duration::from_millis(200),
        "taken after {waited:?}"
    );
    // The replica that let it run out finds it lost.
    assert!(!b.renew().await, "a lease taken over cannot be renewed");

    // Two replicas racing for a free lease: exactly one wins.
    a.release().await;
    let mut c = LeaseLock::new(client.clone(), "scaler", "c", duration);
    let mut d = LeaseLock::new(client.clone(), "scaler", "d", duration);
    let (c_won, d_won) = tokio::join!(c.try_acquire(), d.try_acquire());
    let winners = [c_won.expect("c asks"), d_won.expect("d asks")];
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    assert!(cluster.store.calls().contains_key("PUT leases"));
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_steps_down_before_another_may_take_over() {
    use modelfleet::fleet::leader::{Election, Leadership};
    let cluster = Cluster::start().await;
    let client = client(&cluster.url()).await;
    let duration = Duration::from_secs(3);
    let election = Election::Lease(Box::new(LeaseLock::new(
        client.clone(),
        "scaler",
        "a",
        duration,
    )));
    let mut leader = Leadership::try_acquire(&election)
        .await
        .expect("asks")
        .expect("a free lease is taken");
    // Renewed while the API server answers: held past its first deadline.
    tokio::time::sleep(duration).await;
    assert!(leader.still_held().await, "renewed");

    // Cut off, its renewals hang: it lets go by its deadline, two thirds
    // of the duration after its last renewal was sent.
    let partition = cluster.store.partition();
    let cut = Instant::now();
    tokio::time::timeout(duration, leader.expired())
        .await
        .expect("it stepped down before its lease ran out");
    let stepped_down = cut.elapsed();
    assert!(!leader.still_held().await);
    assert!(
        stepped_down <= duration * 2 / 3 + Duration::from_millis(100),
        "{stepped_down:?}"
    );
    drop(partition);

    // Another replica gets the lease only once it has run out: a whole
    // duration after that renewal, so after the leader stepped down.
    let renewed = cluster
        .store
        .get(Resource::LEASE, NAMESPACE, "scaler")
        .expect("the lease")["spec"]["renewTime"]
        .as_str()
        .expect("a renewal")
        .parse::<chrono::DateTime<chrono::Utc>>()
        .expect("a time");
    let mut other = LeaseLock::new(client, "scaler", "b", duration);
    while !other.try_acquire().await.expect("b asks") {
        assert!(cut.elapsed() < duration * 2, "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken_after = (chrono::Utc::now() - renewed).to_std().expect("later");
    assert!(
        taken_after >= duration,
        "taken {taken_after:?} after the last renewal"
    );
    assert!(cut.elapsed() > stepped_down);
    drop(leader);
}

/// Server settings running a `pods` model (at most one instance) on the
/// simulated cluster.
fn on_cluster(config: &mut modelfleet::config::Config, cluster: &Cluster) {
    config.kubernetes.backend = modelfleet::config::BackendKind::Kubernetes;
    config.kubernetes.api_url = Some(cluster.url());
    config.kubernetes.namespace = Some(NAMESPACE.to_owned());
    config.kubernetes.start_timeout_secs = 20;
    config.models = vec![model()];
}

fn model() -> modelfleet::models::ModelConfig {
    support::sleepy("pods", |m| {
        m.local = None;
        m.max_instances = 1;
        m.kubernetes = Some(json!({
            "image": "example/sleepy:1",
            "requests": { "cpu": "1", "memory": "1Gi" },
        }));
    })
}

fn pods(cluster: &Cluster) -> Vec<String> {
    cluster
        .store
        .list(Resource::POD, Some(NAMESPACE))
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn pods_created(cluster: &Cluster) -> u64 {
    cluster.store.calls().get("POST pods").copied().unwrap_or(0)
}

const INSTANCE: &str = "query($id: ID!) { instance(id: $id) { status handle requestId \
    events(limit: 50) { reason } } }";

/// The instance a request ran on.
async fn instance_of(app: &TestApp, request: &str) -> String {
    use sea_orm::EntityTrait;
    let id: uuid::Uuid = request.parse().expect("a request id");
    let row = entity::work_request::Entity::find_by_id(id)
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("the request");
    row.instance_id.expect("an instance").to_string()
}

db_test!(a_restarted_server_adopts_the_pods_it_left_running, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    let (_db, url) = TestDb::create(db).await;
    let mut config = support::test_config(&url);
    on_cluster(&mut config, &cluster);

    let first = TestApp::spawn_over(config.clone()).await;
    let admin = first.admin("root").await;
    let token = first.anonymous().await;
    let warm = first.submit(&token, "pods", json!({ "message": "warm" })).await;
    assert_eq!(first.wait_done(&token, &warm).await["status"], "SUCCEEDED");
    let instance = instance_of(&first, &warm).await;
    let [pod] = pods(&cluster).try_into().expect("one pod");

    // A long job is running when the server shuts down: it goes back to
    // the queue, its attempt given back, and the pod stays.
    let long = first.submit(&token, "pods", json!({ "seconds": 12, "message": "long" })).await;
    first.eventually("the long job to run", 30, || async {
        first.gql_as(&token, support::REQUEST, json!({ "id": long })).await["data"]["request"]["status"] == "RUNNING"
    })
    .await;
    first.stop().await;
    assert_eq!(pods(&cluster), vec![pod.clone()], "the pod outlives its server");
    let created = pods_created(&cluster);

    // A pod of this server's scope that no instance knows is deleted.
    let mut stray = cluster.store.get(Resource::POD, NAMESPACE, &pod).expect("the pod");
    stray["metadata"]["name"] = json!("mf-stray");
    stray["metadata"]["labels"]["modelfleet.io/instance"] = json!(uuid::Uuid::new_v4().to_string());
    cluster.store.create(Resource::POD, NAMESPACE, stray).expect("a stray pod");

    let second = TestApp::spawn_over(config.clone()).await;
    let done = second.wait_done(&token, &long).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["output"], "long");
    assert_eq!(done["attempts"], 1, "{done}");
    // On the same instance and pod: nothing was created anew.
    assert_eq!(instance_of(&second, &long).await, instance);
    assert_eq!(pods_created(&cluster), created, "no pod was created");
    second.eventually("the stray pod to go", 10, || async { pods(&cluster) == vec![pod.clone()] }).await;
    let body = second.gql_as(&admin, INSTANCE, json!({ "id": instance })).await;
    let adopted = &body["data"]["instance"];
    assert_eq!(adopted["status"], "READY", "{body}");
    assert_eq!(adopted["handle"], pod.as_str());
    let reasons: Vec<&str> = adopted["events"].as_array().expect("events").iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"Adopting"), "{reasons:?}");
    // Its annotation names no request once idle.
    let annotated = cluster.store.get(Resource::POD, NAMESPACE, &pod).expect("the pod");
    assert!(annotated["metadata"]["annotations"]["modelfleet.io/request-id"].is_null(), "{annotated}");
    second.stop().await;

    // A server whose model's pod settings changed replaces the pod rather
    // than adopt it.
    let mut changed = config.clone();
    changed.models[0].kubernetes = Some(json!({
        "image": "example/sleepy:2",
        "requests": { "cpu": "1", "memory": "1Gi" },
    }));
    let third = TestApp::spawn_over(changed).await;
    let fresh = third.submit(&token, "pods", json!({ "message": "new settings" })).await;
    assert_eq!(third.wait_done(&token, &fresh).await["output"], "new settings");
    assert_ne!(instance_of(&third, &fresh).await, instance);
    let now = pods(&cluster);
    assert!(!now.contains(&pod), "the old pod went: {now:?}");
    let body = third.gql_as(&admin, "query($id: ID!) { instance(id: $id) { status stopReason } }", json!({ "id": instance })).await;
    let reason = body["data"]["instance"]["stopReason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("earlier settings"), "{body}");
    third.stop().await;

    // The servers made every kind of call the Role grants, and no
    // other (the simulator counts only calls made over HTTP).
    let granted: BTreeSet<(String, String)> = PERMISSIONS
        .iter()
        .flat_map(|(_, resource, verbs)| verbs.iter().map(move |v| (resource.to_string(), v.to_string())))
        .collect();
    let made: BTreeSet<(String, String)> = cluster
        .store
        .calls()
        .keys()
        .map(|call| {
            let (method, resource) = call.split_once(' ').expect("METHOD resource");
            let verb = match method {
                "GET" => "get",
                "LIST" => "list",
                "WATCH" => "watch",
                "POST" => "create",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                other => panic!("unexpected call {other}"),
            };
            (resource.to_owned(), verb.to_owned())
        })
        .collect();
    assert_eq!(made, granted);
});

const BIN: &str = env!("CARGO_BIN_EXE_modelfleet");

/// A server process; killed when dropped.
struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    async fn start(
        name: &str,
        config: &std::path::Path,
        db_url: &str,
        cluster: &Cluster,
    ) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(BIN)
            .args(["--config", config.to_str().expect("utf-8")])
            .env("DATABASE_URL", db_url)
            .env("MODELFLEET_BIND", format!("127.0.0.1:{port}"))
            .env("MODELFLEET_BACKEND", "kubernetes")
            .env("MODELFLEET_KUBERNETES__API_URL", cluster.url())
            .env("MODELFLEET_KUBERNETES__NAMESPACE", NAMESPACE)
            .env("MODELFLEET_KUBERNETES__LEASE_DURATION_SECS", "4")
            .env("MODELFLEET_KUBERNETES__START_TIMEOUT_SECS", "20")
            .env("HOSTNAME", name)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "{name} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Replica { child, base }
    }

    async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = reqwest::Client::new()
            .post(format!("{}/graphql", self.base))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("sent").json().await.expect("json")
    }

    async fn request(&self, token: &str, id: &str) -> Value {
        self.gql(Some(token), support::REQUEST, json!({ "id": id }))
            .await["data"]["request"]
            .clone()
    }

    async fn wait_for(&self, token: &str, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let request = self.request(token, id).await;
            if request["status"] == status {
                return request;
            }
            assert!(
                Instant::now() < deadline,
                "request never {status}: {request}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The one lease in the namespace and its holder.
fn scaler(cluster: &Cluster) -> Option<String> {
    let leases = cluster.store.list(Resource::LEASE, Some(NAMESPACE));
    assert!(leases.len() <= 1, "one lease per database: {leases:?}");
    leases.first()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

async fn until_scaler(cluster: &Cluster, prefix: &str, within: Duration) -> Duration {
    let since = Instant::now();
    while !scaler(cluster).is_some_and(|h| h.starts_with(prefix)) {
        assert!(
            since.elapsed() < within,
            "{prefix} never ran the scaler (holder {:?})",
            scaler(cluster)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

db_test!(two_replicas_elect_one_scaler_and_the_other_takes_over_when_it_dies, db => {
    let cluster = Cluster::start().await;
    cluster.add_node(&NodeSpec::new("node", 4, 16));
    let (_db, url) = TestDb::create(db).await;
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("modelfleet.toml");
    std::fs::write(&config, modelfleet::config::models_toml(&[model()]).expect("toml")).expect("written");

    let mut a = Replica::start("replica-a", &config, &url, &cluster).await;
    until_scaler(&cluster, "replica-a-", Duration::from_secs(30)).await;
    let b = Replica::start("replica-b", &config, &url, &cluster).await;
    let body = b.gql(None, "mutation { startAnonymousSession { token } }", json!({})).await;
    let token = support::token_of(&body, "startAnonymousSession");
    let submit = "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { id } }";
    let send = |input: Value| {
        let b = &b;
        let token = token.clone();
        async move {
            let body = b.gql(Some(&token), submit, json!({ "input": { "modelId": "pods", "input": input } })).await;
            body["data"]["submitRequest"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
        }
    };

    // Submitted through the standby, run by the leader's scaler; the
    // standby never takes the lease from a live leader.
    let warm = send(json!({ "message": "warm" })).await;
    b.wait_for(&token, &warm, "SUCCEEDED").await;
    let [pod] = pods(&cluster).try_into().expect("one pod");
    let long = send(json!({ "seconds": 12, "message": "long" })).await;
    b.wait_for(&token, &long, "RUNNING").await;
    assert!(scaler(&cluster).is_some_and(|h| h.starts_with("replica-a-")));
    let lease = cluster.store.list(Resource::LEASE, Some(NAMESPACE)).remove(0);
    assert_eq!(lease["spec"]["leaseTransitions"], 0, "{lease}");

    // The leader dies mid-job: the standby takes over within the lease
    // period (4 s) and a poll, adopts the pod, cancels the orphaned job
    // there, and runs it again.
    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();
    let took = until_scaler(&cluster, "replica-b-", Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(6), "took over after {took:?}");
    let done = b.wait_for(&token, &long, "SUCCEEDED").await;
    assert_eq!(done["output"], "long");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(pods(&cluster), vec![pod], "the pod was adopted, not replaced");
    assert_eq!(pods_created(&cluster), 1);
    drop(b);
});
