//! A small simulated Kubernetes API server, for modelfleet's tests and
//! benchmarks: no cluster runs on the development machine, so the real
//! kube-rs client talks to this over HTTP on 127.0.0.1.
//!
//! It stays small and honest: it keeps objects as JSON and imitates the
//! API behaviour that kube-rs relies on, nothing more.
//!
//! ```text
//!   kube::Client ──HTTP──▶ axum router ──▶ Store (objects, history, rv)
//!                                           │
//!                                           └─▶ broadcast ──▶ open watches
//! ```
//!
//! What it does, as the API server does:
//! - one global `resourceVersion`, raised by every write and set on every
//!   object it returns;
//! - list (with a list `resourceVersion`), get, create (`409` when the name
//!   is taken; `generateName`), replace (`409` when the `resourceVersion`
//!   it names is not the stored one), delete, and JSON merge patch
//!   (RFC 7386; arrays are replaced whole), in one namespace or, for
//!   lists and watches, across all (`/api/v1/pods`,
//!   `/apis/{group}/{version}/{plural}`);
//! - label selectors of the `k=v`, `k!=v`, `k` and `!k` forms;
//! - field selectors on `spec.nodeName` (pods; an unbound pod's is `""`),
//!   `metadata.name` and `metadata.namespace`, with `=`, `==` and `!=`;
//!   any other field is refused with `400`;
//! - watches as newline-delimited JSON events: everything after the asked
//!   version, then live changes, bookmarks when asked for, closed after
//!   `timeoutSeconds`; a version older than the kept history gets an
//!   in-stream `ERROR` event with a `410 Gone` Status, so the client lists
//!   again;
//! - the `scale` subresource of MachineDeployments (`GET`, `PUT`, merge
//!   `PATCH`), as an `autoscaling/v1` `Scale`;
//! - errors as `Status` objects with the usual reasons.
//!
//! Behind it, [`Cluster`] adds a scheduler, a kubelet that runs each pod as
//! a small Cog model server on its own loopback address, and a simulated
//! Cluster API ([`capi`]) that gives MachineDeployments their Machines and
//! Nodes.
//!
//! Deleting a pod that runs on a node marks it terminating; the kubelet
//! (in [`Cluster`]) stops it and removes it, as a real one does after the
//! containers exit (the simulated ones exit at once on SIGTERM). Deleting
//! a Machine marks it too, as Cluster API's finalizer holds it until its
//! Node is gone.
//!
//! What it does not do: authentication, server-side apply, strategic merge
//! or JSON patches, other subresources (`status`, `eviction`, ...),
//! finalizers other than the Machines', garbage collection by owner (the
//! machine controller does remove a deleted MachineDeployment's Machines),
//! or admission of any kind. The resources it serves are listed in
//! [`Resource::ALL`]: pods, nodes, core and `events.k8s.io` events, leases,
//! and Cluster API's MachineDeployments and Machines.
//!
//! Calls are counted in [`Store::calls`] by method and plural: `LIST pods`,
//! `WATCH pods`, `GET nodes`, `POST events`, `PATCH nodes`, and for the
//! scale subresource `GET machinedeployments/scale`,
//! `PUT machinedeployments/scale` and `PATCH machinedeployments/scale`.

pub mod capi;
pub mod cluster;
mod resources;
mod scale;
mod scheduler;

pub use capi::{NodeShape, PoolSpec};
pub use cluster::{Cluster, NodeSpec, TickTimes};

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// A kind of object the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// The plural used in paths: `pods`.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Resource {
    pub const POD: Resource = Resource::core("pods", "Pod", true);
    pub const EVENT: Resource = Resource::core("events", "Event", true);
    pub const NODE: Resource = Resource::core("nodes", "Node", false);
    pub const LEASE: Resource = Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    };
    /// `events.k8s.io/v1` events, which kube-rs's event recorder writes.
    pub const EVENT_V1: Resource = Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
    };
    /// Cluster API's MachineDeployment: a pool of alike machines, scaled
    /// through its `scale` subresource.
    pub const MACHINE_DEPLOYMENT: Resource =
        Resource::cluster_api("machinedeployments", "MachineDeployment");
    /// Cluster API's Machine: one node's worth of infrastructure.
    pub const MACHINE: Resource = Resource::cluster_api("machines", "Machine");
    pub const ALL: [Resource; 7] = [
        Self::POD,
        Self::EVENT,
        Self::NODE,
        Self::LEASE,
        Self::EVENT_V1,
        Self::MACHINE_DEPLOYMENT,
        Self::MACHINE,
    ];

    const fn core(plural: &'static str, kind: &'static str, namespaced: bool) -> Resource {
        Resource {
            group: "",
            version: "v1",
            plural,
            kind,
            namespaced,
        }
    }

    const fn cluster_api(plural: &'static str, kind: &'static str) -> Resource {
        Resource {
            group: "cluster.x-k8s.io",
            version: "v1beta1",
            plural,
            kind,
            namespaced: true,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn find(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Self::ALL
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }
}

/// Where an object lives: its kind, namespace (empty when cluster-scoped)
/// and name.
type Key = (Resource, String, String);

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// When the store made the change (the objects' own timestamps have
    /// whole seconds only). A watch from "any version" replays the current
    /// state as changes made at that moment.
    pub at: chrono::DateTime<chrono::Utc>,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Changes since `oldest_kept`, oldest first.
    history: VecDeque<Change>,
    /// The first version whose changes are still kept: a watch from an
    /// older version gets `410 Gone`.
    oldest_kept: u64,
    history_limit: usize,
}

/// The simulated API server's state. Cheap to clone; every clone is the
/// same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
    calls: Arc<Mutex<BTreeMap<String, u64>>>,
    gate: Arc<Gate>,
}

/// Lets a test cut the network between the API server and its watchers.
struct Gate {
    held: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
    /// Raised when every open watch is cut.
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Gate {
    /// Waits while the partition lasts.
    async fn open(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let opened = self.opened.notified();
            if !self.held.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }

    /// Waits while watches are held. False when the watch begun at `epoch`
    /// has been cut meanwhile.
    async fn pass(&self, epoch: u64) -> bool {
        use std::sync::atomic::Ordering;
        loop {
            let opened = self.opened.notified();
            if !self.held.load(Ordering::SeqCst) {
                return *self.epoch.borrow() == epoch;
            }
            opened.await;
        }
    }
}

/// While this lives, watches deliver nothing and every request waits, as
/// across a network partition. Dropping it cuts every watch that was open, so
/// clients reconnect from the last version they saw.
pub struct Partition {
    gate: Arc<Gate>,
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.gate.epoch.send_modify(|e| *e += 1);
        self.gate
            .held
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.gate.opened.notify_waiters();
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Store {
        Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest_kept: 1,
                history_limit: 10_000,
            })),
            changes: broadcast::channel(65_536).0,
            calls: Arc::default(),
            gate: Arc::new(Gate {
                held: false.into(),
                opened: tokio::sync::Notify::new(),
                epoch: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    /// Holds every watch until the returned value is dropped (see
    /// [`Partition`]).
    pub fn partition(&self) -> Partition {
        self.gate
            .held
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Partition {
            gate: self.gate.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: every
        // write is complete before the lock is released.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current global resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Forgets every change kept so far, as etcd compaction does: a watch
    /// from any version before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest_kept = inner.rv + 1;
    }

    /// Every change from now on, as it is made, for a test or benchmark
    /// that follows the store without going through the API (and so
    /// without adding to [`Store::calls`]). A receiver more than 65,536
    /// changes behind is told it lagged.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// API calls made so far, by `METHOD plural` (`GET pods`, `WATCH pods`,
    /// `PATCH machinedeployments/scale`).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, what: String) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    /// The object, as stored.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource, scope(resource, namespace), name.to_owned());
        self.lock().objects.get(&key).cloned()
    }

    /// Every object of a kind (in `namespace`, or all with `None`).
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.lock()
            .of_kind(resource)
            .filter(|((_, ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Shows `visit` every object of a kind, in place, under the store's
    /// lock: for the control loop, which looks at every pod each tick but
    /// copies only the few it acts on. `visit` must not call the store.
    pub fn each(&self, resource: Resource, mut visit: impl FnMut(&Value)) {
        let inner = self.lock();
        for (_, object) in inner.of_kind(resource) {
            visit(object);
        }
    }

    /// Shows `look` the object (or `None`) in place, under the store's lock,
    /// without copying it. `look` must not call the store.
    pub fn peek<T>(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        look: impl FnOnce(Option<&Value>) -> T,
    ) -> T {
        let key = (resource, scope(resource, namespace), name.to_owned());
        look(self.lock().objects.get(&key))
    }

    /// Stores a new object, as `POST` does. `generateName` is honoured.
    pub fn create(
        &self,
        resource: Resource,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let meta = metadata(&mut object);
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => {
                    let suffix = uuid::Uuid::new_v4().simple().to_string();
                    format!("{prefix}{}", &suffix[..5])
                }
                None => return Err(ApiError::invalid("metadata.name: Required value")),
            },
        };
        let ns = scope(resource, namespace);
        let key = (resource, ns.clone(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        meta.insert("name".into(), json!(name));
        if resource.namespaced {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert(
            "creationTimestamp".into(),
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
        let object = inner.commit(&self.changes, key, object, "ADDED");
        Ok(object)
    }

    /// Changes an object with `change`, as a controller or kubelet writing
    /// status does; `MODIFIED` goes to watchers.
    pub fn update(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (resource, scope(resource, namespace), name.to_owned());
        let Some(mut object) = inner.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, name));
        };
        change(&mut object);
        Ok(inner.commit(&self.changes, key, object, "MODIFIED"))
    }

    /// Applies a JSON merge patch (RFC 7386).
    pub fn merge_patch(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        self.update(resource, namespace, name, |object| {
            merge(object, patch);
        })
    }

    /// Replaces an object, as `PUT` does: when the new object names a
    /// `resourceVersion`, it must be the stored one (`409 Conflict`
    /// otherwise), which is how clients update without losing a write.
    pub fn replace(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (resource, scope(resource, namespace), name.to_owned());
        let Some(stored) = inner.objects.get(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        let stored_meta = stored["metadata"].clone();
        let meta = metadata(&mut object);
        if let Some(asked) = meta.get("resourceVersion").and_then(Value::as_str)
            && Some(asked) != stored_meta["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(resource, name));
        }
        if meta.get("name").and_then(Value::as_str) != Some(name) {
            return Err(ApiError::invalid("metadata.name: does not match the path"));
        }
        for kept in ["namespace", "uid", "creationTimestamp"] {
            if let Some(value) = stored_meta.get(kept) {
                meta.insert(kept.into(), value.clone());
            }
        }
        Ok(inner.commit(&self.changes, key, object, "MODIFIED"))
    }

    /// Deletes as the API server does for a client: a pod bound to a node
    /// is only marked (`deletionTimestamp`, `deletionGracePeriodSeconds`,
    /// 30 s unless `grace` says otherwise; watchers get `MODIFIED`) and
    /// stays, holding its node's room, until the kubelet has stopped its
    /// containers and removes it. A Machine is only marked too, whatever
    /// the grace (Cluster API's finalizer holds it): the machine controller
    /// in [`Cluster`] removes its node, then the Machine. Anything else, or
    /// a pod with a grace of 0, goes at once.
    pub fn delete_gracefully(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        grace: Option<u64>,
    ) -> Result<Value, ApiError> {
        let graceful = resource == Resource::MACHINE
            || resource == Resource::POD && grace != Some(0) && {
                let pod = self.get(resource, namespace, name);
                pod.is_some_and(|p| p["spec"]["nodeName"].is_string())
            };
        if !graceful {
            return self.delete(resource, namespace, name);
        }
        self.update(resource, namespace, name, |object| {
            let meta = metadata(object);
            if !meta.contains_key("deletionTimestamp") {
                // When the kubelet may kill it: now plus the grace period.
                // A finalizer's holder does not wait.
                let grace = if resource == Resource::MACHINE {
                    0
                } else {
                    grace.unwrap_or(30)
                };
                let at = chrono::Utc::now() + chrono::Duration::seconds(grace as i64);
                let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                meta.insert("deletionTimestamp".into(), json!(at));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
        })
    }

    /// Removes an object; watchers get `DELETED` with its last state.
    pub fn delete(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (resource, scope(resource, namespace), name.to_owned());
        let Some(object) = inner.objects.remove(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        inner.rv += 1;
        let mut object = object;
        set_rv(&mut object, inner.rv);
        let change = Change {
            rv: inner.rv,
            resource,
            kind: "DELETED",
            object: object.clone(),
            at: chrono::Utc::now(),
        };
        inner.remember(change.clone());
        let _ = self.changes.send(change);
        Ok(object)
    }

    /// The router serving this store.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/{version}/{plural}", get(collection).post(create))
            .route(
                "/api/{version}/{plural}/{name}",
                get(item).delete(item).patch(item).put(item),
            )
            .route(
                "/api/{version}/namespaces/{ns}/{plural}",
                get(collection_ns).post(create_ns),
            )
            .route(
                "/api/{version}/namespaces/{ns}/{plural}/{name}",
                get(item_ns).delete(item_ns).patch(item_ns).put(item_ns),
            )
            .route("/apis/{group}/{version}/{plural}", get(group_collection))
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}",
                get(group_collection_ns).post(group_create_ns),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
                get(group_item_ns)
                    .delete(group_item_ns)
                    .patch(group_item_ns)
                    .put(group_item_ns),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{subresource}",
                get(scale::handle).patch(scale::handle).put(scale::handle),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                |State(store): State<Store>,
                 request: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    store.gate.open().await;
                    next.run(request).await
                },
            ))
            .with_state(self.clone())
    }

    /// Serves the store on 127.0.0.1 at a free port until dropped.
    pub async fn serve(&self) -> Server {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a free port on 127.0.0.1");
        let addr = listener.local_addr().expect("bound address");
        let router = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server { addr, task }
    }
}

impl Inner {
    /// The objects of one kind: keys sort by kind first, so this is one
    /// range of the map, not a walk over every object.
    fn of_kind(&self, resource: Resource) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects
            .range((resource, String::new(), String::new())..)
            .take_while(move |((r, _, _), _)| *r == resource)
    }

    /// Stores `object` at a new version and tells watchers.
    fn commit(
        &mut self,
        changes: &broadcast::Sender<Change>,
        key: Key,
        mut object: Value,
        kind: &'static str,
    ) -> Value {
        self.rv += 1;
        set_rv(&mut object, self.rv);
        let change = Change {
            rv: self.rv,
            resource: key.0,
            kind,
            object: object.clone(),
            at: chrono::Utc::now(),
        };
        self.objects.insert(key, object.clone());
        self.remember(change.clone());
        // Sent under the lock, so that a watch that took its snapshot under
        // the same lock sees every later change exactly once.
        let _ = changes.send(change);
        object
    }

    fn remember(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_kept = dropped.rv + 1;
            }
        }
    }
}

/// The simulated API server, listening until dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn scope(resource: Resource, namespace: &str) -> String {
    if resource.namespaced {
        namespace.to_owned()
    } else {
        String::new()
    }
}

fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let map = object.as_object_mut().expect("an object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("an object")
}

fn set_rv(object: &mut Value, rv: u64) {
    metadata(object).insert("resourceVersion".into(), json!(rv.to_string()));
}

/// RFC 7386: objects merge key by key, `null` removes, anything else
/// replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A refusal, answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn not_found(resource: Resource, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", resource.plural),
        }
    }

    pub fn already_exists(resource: Resource, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", resource.plural),
        }
    }

    pub fn bad_request(message: &str) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.to_owned(),
        }
    }

    /// `409 Conflict`: the write named a `resourceVersion` that is no longer
    /// the stored one.
    pub fn conflict(resource: Resource, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.plural
            ),
        }
    }

    pub fn invalid(message: &str) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: message.to_owned(),
        }
    }

    fn gone(rv: u64) -> ApiError {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {rv}"),
        }
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status())).into_response()
    }
}

/// A label selector: every term must hold.
#[derive(Debug, Default, Clone)]
struct Selector(Vec<(String, Term)>);

#[derive(Debug, Clone)]
enum Term {
    Equals(String),
    NotEquals(String),
    Exists,
    Absent,
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let term = if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_owned(), Term::NotEquals(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim().to_owned(), Term::Equals(v.trim().to_owned()))
            } else if let Some(k) = part.strip_prefix('!') {
                (k.trim().to_owned(), Term::Absent)
            } else if part.contains(' ') || part.contains('(') {
                return Err(ApiError::invalid(&format!(
                    "unsupported label selector term {part:?} (the simulator takes k=v, k!=v, k and !k)"
                )));
            } else {
                (part.to_owned(), Term::Exists)
            };
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|(key, term)| {
            let value = labels.get(key).and_then(Value::as_str);
            match term {
                Term::Equals(v) => value == Some(v.as_str()),
                Term::NotEquals(v) => value != Some(v.as_str()),
                Term::Exists => value.is_some(),
                Term::Absent => value.is_none(),
            }
        })
    }
}

/// A field selector: every term must hold. The simulator knows the fields
/// its clients select on: `spec.nodeName` (pods only; an unbound pod's is
/// `""`), `metadata.name` and `metadata.namespace`, with `=`, `==` and
/// `!=`.
#[derive(Debug, Default, Clone)]
struct FieldSelector(Vec<FieldTerm>);

#[derive(Debug, Clone)]
struct FieldTerm {
    /// Where the field is: `["spec", "nodeName"]`.
    path: [&'static str; 2],
    equals: bool,
    value: String,
}

impl FieldSelector {
    fn parse(resource: Resource, text: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equals, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(&format!(
                    "invalid field selector term {part:?}"
                )));
            };
            let path = match field.trim() {
                "spec.nodeName" if resource == Resource::POD => ["spec", "nodeName"],
                "metadata.name" => ["metadata", "name"],
                "metadata.namespace" => ["metadata", "namespace"],
                other => {
                    return Err(ApiError::bad_request(&format!(
                        "field label not supported: {other} (the simulator takes spec.nodeName on pods, metadata.name and metadata.namespace)"
                    )));
                }
            };
            terms.push(FieldTerm {
                path,
                equals,
                value: value.trim().to_owned(),
            });
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|term| {
            let [outer, inner] = term.path;
            let value = object[outer][inner].as_str().unwrap_or("");
            (value == term.value) == term.equals
        })
    }
}

type Params = Query<BTreeMap<String, String>>;

async fn collection(s: State<Store>, Path((v, p)): Path<(String, String)>, q: Params) -> Response {
    list_or_watch(s, "", &v, &p, None, q).await
}
async fn collection_ns(
    s: State<Store>,
    Path((v, ns, p)): Path<(String, String, String)>,
    q: Params,
) -> Response {
    list_or_watch(s, "", &v, &p, Some(ns), q).await
}
async fn group_collection(
    s: State<Store>,
    Path((g, v, p)): Path<(String, String, String)>,
    q: Params,
) -> Response {
    list_or_watch(s, &g, &v, &p, None, q).await
}
async fn group_collection_ns(
    s: State<Store>,
    Path((g, v, ns, p)): Path<(String, String, String, String)>,
    q: Params,
) -> Response {
    list_or_watch(s, &g, &v, &p, Some(ns), q).await
}
async fn create(s: State<Store>, Path((v, p)): Path<(String, String)>, body: Bytes) -> Response {
    create_in(s, "", &v, &p, "", body)
}
async fn create_ns(
    s: State<Store>,
    Path((v, ns, p)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    create_in(s, "", &v, &p, &ns, body)
}
async fn group_create_ns(
    s: State<Store>,
    Path((g, v, ns, p)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    create_in(s, &g, &v, &p, &ns, body)
}
async fn item(
    s: State<Store>,
    method: Method,
    headers: HeaderMap,
    Path((v, p, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    one(s, method, headers, "", &v, &p, "", &name, body)
}
async fn item_ns(
    s: State<Store>,
    method: Method,
    headers: HeaderMap,
    Path((v, ns, p, name)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    one(s, method, headers, "", &v, &p, &ns, &name, body)
}
async fn group_item_ns(
    s: State<Store>,
    method: Method,
    headers: HeaderMap,
    Path((g, v, ns, p, name)): Path<(String, String, String, String, String)>,
    body: Bytes,
) -> Response {
    one(s, method, headers, &g, &v, &p, &ns, &name, body)
}

fn resource(group: &str, version: &str, plural: &str) -> Result<Resource, ApiError> {
    Resource::find(group, version, plural).ok_or(ApiError {
        code: 404,
        reason: "NotFound",
        message: format!(
            "the server could not find the requested resource ({group}/{version} {plural})"
        ),
    })
}

fn create_in(
    State(store): State<Store>,
    group: &str,
    version: &str,
    plural: &str,
    ns: &str,
    body: Bytes,
) -> Response {
    let result = resource(group, version, plural).and_then(|r| {
        store.count(format!("POST {plural}"));
        let object = json_body(&body)?;
        store
            .create(r, ns, object)
            .map(|o| (StatusCode::CREATED, axum::Json(with_type(r, o))))
    });
    match result {
        Ok(created) => created.into_response(),
        Err(e) => e.into_response(),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one handler body for three route shapes"
)]
fn one(
    State(store): State<Store>,
    method: Method,
    headers: HeaderMap,
    group: &str,
    version: &str,
    plural: &str,
    ns: &str,
    name: &str,
    body: Bytes,
) -> Response {
    let result = resource(group, version, plural).and_then(|r| {
        store.count(format!("{method} {plural}"));
        match method {
            Method::GET => store
                .get(r, ns, name)
                .ok_or_else(|| ApiError::not_found(r, name)),
            Method::DELETE => {
                // DeleteOptions, when the client sends them.
                let grace = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|o| o["gracePeriodSeconds"].as_u64());
                store.delete_gracefully(r, ns, name, grace)
            }
            Method::PUT => json_body(&body).and_then(|object| store.replace(r, ns, name, object)),
            Method::PATCH => {
                let patch = merge_patch_body(&headers, &body)?;
                store.merge_patch(r, ns, name, &patch)
            }
            _ => Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: method.to_string(),
            }),
        }
        .map(|o| with_type(r, o))
    });
    match result {
        Ok(object) => axum::Json(object).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A request's body as JSON (`400 Bad Request` when it is not).
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError {
        code: 400,
        reason: "BadRequest",
        message: e.to_string(),
    })
}

/// A `PATCH` request's body: a JSON merge patch, the only kind taken
/// (`415 Unsupported Media Type` for the others).
fn merge_patch_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !kind.starts_with("application/merge-patch+json") {
        return Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the simulator takes merge patches only, not {kind:?}"),
        });
    }
    json_body(body)
}

/// Objects go out with their `apiVersion` and `kind`.
fn with_type(resource: Resource, mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(resource.api_version()));
        map.insert("kind".into(), json!(resource.kind));
    }
    object
}

async fn list_or_watch(
    State(store): State<Store>,
    group: &str,
    version: &str,
    plural: &str,
    ns: Option<String>,
    Query(params): Params,
) -> Response {
    let r = match resource(group, version, plural) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let param = |name: &str| params.get(name).map(String::as_str).unwrap_or("");
    let selectors = Selector::parse(param("labelSelector"))
        .and_then(|labels| Ok((labels, FieldSelector::parse(r, param("fieldSelector"))?)));
    let (selector, fields) = match selectors {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let ns = ns.filter(|_| r.namespaced);
    let matches = {
        let ns = ns.clone();
        move |resource: Resource, object: &Value| {
            resource == r
                && ns
                    .as_deref()
                    .is_none_or(|n| object["metadata"]["namespace"].as_str() == Some(n))
                && selector.matches(object)
                && fields.matches(object)
        }
    };
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        store.count(format!("LIST {plural}"));
        let inner = store.lock();
        let items: Vec<Value> = inner
            .of_kind(r)
            .filter(|((res, _, _), o)| matches(*res, o))
            .map(|(_, o)| with_type(r, o.clone()))
            .collect();
        let list = json!({
            "apiVersion": r.api_version(), "kind": format!("{}List", r.kind),
            "metadata": { "resourceVersion": inner.rv.to_string() },
            "items": items,
        });
        return axum::Json(list).into_response();
    }

    // A watch asked for during a partition waits for it to end.
    let epoch = loop {
        let epoch = *store.gate.epoch.borrow();
        if store.gate.pass(epoch).await {
            break epoch;
        }
    };
    store.count(format!("WATCH {plural}"));
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");

    // The snapshot and the subscription under one lock: nothing between
    // them is lost or seen twice.
    let (backlog, mut live, gone, snapshot_rv) = {
        let inner = store.lock();
        let snapshot_rv = inner.rv;
        let live = store.changes.subscribe();
        if from == 0 {
            // "Any version": the current state as ADDED events.
            let now = chrono::Utc::now();
            let backlog: Vec<Change> = inner
                .of_kind(r)
                .filter(|((res, _, _), o)| matches(*res, o))
                .map(|((res, _, _), o)| Change {
                    rv: inner.rv,
                    resource: *res,
                    kind: "ADDED",
                    object: o.clone(),
                    at: now,
                })
                .collect();
            (backlog, live, None, snapshot_rv)
        } else if from + 1 < inner.oldest_kept {
            (Vec::new(), live, Some(ApiError::gone(from)), snapshot_rv)
        } else {
            let backlog = inner
                .history
                .iter()
                .filter(|c| c.rv > from && matches(c.resource, &c.object))
                .cloned()
                .collect();
            (backlog, live, None, snapshot_rv)
        }
    };
    let mut last_rv = from;
    let body = async_stream::stream! {
        if let Some(gone) = gone {
            yield Ok::<Bytes, std::io::Error>(line(&json!({ "type": "ERROR", "object": gone.status() })));
            return;
        }
        for change in backlog {
            if !store.gate.pass(epoch).await {
                return;
            }
            last_rv = last_rv.max(change.rv);
            yield Ok(line(&event(r, change)));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick(), if bookmarks => {
                    if !store.gate.pass(epoch).await {
                        break;
                    }
                    // Only what this watch has delivered: a bookmark past a change
                    // still queued would let a resumed watch skip it.
                    let rv = last_rv.max(snapshot_rv);
                    yield Ok(line(&json!({ "type": "BOOKMARK", "object": {
                        "apiVersion": r.api_version(), "kind": r.kind,
                        "metadata": { "resourceVersion": rv.to_string() } } })));
                }
                change = live.recv() => match change {
                    Ok(change) if change.rv > last_rv && matches(change.resource, &change.object) => {
                        if !store.gate.pass(epoch).await {
                            break;
                        }
                        last_rv = change.rv;
                        yield Ok(line(&event(r, change)));
                    }
                    Ok(_) => {}
                    // A watcher this far behind is told to start over, as
                    // the API server does.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        yield Ok(line(&json!({ "type": "ERROR", "object": ApiError::gone(last_rv).status() })));
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn event(r: Resource, change: Change) -> Value {
    json!({ "type": change.kind, "object": with_type(r, change.object) })
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({ "a": "b", "c": { "d": "e", "f": "g" } });
        merge(&mut doc, &json!({ "a": "z", "c": { "f": null } }));
        assert_eq!(doc, json!({ "a": "z", "c": { "d": "e" } }));
        let mut doc = json!({ "a": [1, 2] });
        merge(&mut doc, &json!({ "a": [3] }));
        assert_eq!(doc, json!({ "a": [3] }));
    }

    #[test]
    fn selectors_take_the_simple_forms() {
        let pod = json!({ "metadata": { "labels": { "app": "x", "tier": "web" } } });
        for (text, expected) in [
            ("app=x", true),
            ("app==x,tier=web", true),
            ("app!=x", false),
            ("tier", true),
            ("!tier", false),
            ("missing", false),
            ("", true),
        ] {
            assert_eq!(
                Selector::parse(text).expect("valid").matches(&pod),
                expected,
                "{text}"
            );
        }
        assert!(Selector::parse("app in (x,y)").is_err());
    }

    #[test]
    fn a_subscriber_sees_each_change_with_when_it_was_made() {
        let store = Store::new();
        store
            .create(
                Resource::POD,
                "ns",
                json!({ "metadata": { "name": "old" } }),
            )
            .expect("created");
        let mut changes = store.subscribe();
        let before = chrono::Utc::now();
        store
            .create(Resource::POD, "ns", json!({ "metadata": { "name": "p" } }))
            .expect("created");
        store.delete(Resource::POD, "ns", "p").expect("deleted");
        let after = chrono::Utc::now();

        let added = changes.try_recv().expect("the create");
        assert_eq!(
            (added.kind, added.object["metadata"]["name"].as_str()),
            ("ADDED", Some("p"))
        );
        let deleted = changes.try_recv().expect("the delete");
        assert_eq!(deleted.kind, "DELETED");
        assert!(before <= added.at && added.at <= deleted.at && deleted.at <= after);
        // Only what came after subscribing, and no API call counted.
        assert!(changes.try_recv().is_err());
        assert!(store.calls().is_empty());
    }

    #[test]
    fn every_write_raises_the_version() {
        let store = Store::new();
        let pod = store
            .create(Resource::POD, "ns", json!({ "metadata": { "name": "p" } }))
            .expect("created");
        let first: u64 = pod["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("rv");
        assert!(
            store
                .create(Resource::POD, "ns", json!({ "metadata": { "name": "p" } }))
                .is_err()
        );
        let patched = store
            .merge_patch(
                Resource::POD,
                "ns",
                "p",
                &json!({ "metadata": { "labels": { "a": "b" } } }),
            )
            .expect("patched");
        let second: u64 = patched["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("rv");
        assert!(second > first);
        assert_eq!(store.list(Resource::POD, Some("ns")).len(), 1);
        store.delete(Resource::POD, "ns", "p").expect("deleted");
        assert!(store.get(Resource::POD, "ns", "p").is_none());
    }

    #[test]
    fn a_replace_must_name_the_stored_version() {
        let store = Store::new();
        let lease = store
            .create(
                Resource::LEASE,
                "ns",
                json!({ "metadata": { "name": "l" }, "spec": {} }),
            )
            .expect("created");
        let mut mine = lease.clone();
        mine["spec"]["holderIdentity"] = json!("a");
        let written = store
            .replace(Resource::LEASE, "ns", "l", mine)
            .expect("replaced");
        assert_eq!(written["spec"]["holderIdentity"], "a");
        assert_eq!(written["metadata"]["uid"], lease["metadata"]["uid"]);
        // A second writer still holding the first version loses.
        let mut theirs = lease;
        theirs["spec"]["holderIdentity"] = json!("b");
        let refused = store
            .replace(Resource::LEASE, "ns", "l", theirs.clone())
            .expect_err("a stale version is refused");
        assert_eq!(refused.code, 409);
        // Without a version, the write is unconditional.
        theirs["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("resourceVersion");
        let forced = store
            .replace(Resource::LEASE, "ns", "l", theirs)
            .expect("replaced");
        assert_eq!(forced["spec"]["holderIdentity"], "b");
    }
}
