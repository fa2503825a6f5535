//! The simulated Kubernetes API server (`kubesim`) against the real kube-rs
//! client: the behaviours the Kubernetes backend will rely on, each tested
//! through kube's own types, so that a test passing here means kube-rs
//! accepts what the simulator says.
//!
//! Covered: create, get, list with a label selector, merge patch, delete,
//! `409 AlreadyExists` and `404 NotFound` as kube errors, kube-rs's watcher
//! following adds, changes and deletes, and the watcher recovering from a
//! `410 Gone` (a compacted history) without losing a change.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use kubesim::{Resource, Store};
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
