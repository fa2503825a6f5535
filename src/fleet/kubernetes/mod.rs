//! The Kubernetes backend: one pod per instance ([`backend`]), made from a
//! model's settings ([`pod`]), its status read for the instance
//! ([`status`]); the scaler's election through a Lease ([`lease`]).
//! `kubesim` is the simulated cluster the tests run against.

pub mod autoscaler;
pub mod backend;
pub mod lease;
pub mod pod;
pub mod status;

/// Every call the server makes to the Kubernetes API, as RBAC names it:
/// (API group, resource, verbs). The Role in `deploy/` grants exactly
/// these; tests check the Role against this list and the calls seen by the
/// simulated API server against it.
pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["create", "delete", "list", "patch", "watch"]),
    ("", "events", &["list", "watch"]),
    (
        "coordination.k8s.io",
        "leases",
        &["create", "get", "update"],
    ),
];

/// The calls the node autoscaler adds, cluster-wide (a ClusterRole in
/// `deploy/autoscaler/rbac.yaml`, checked against this list by tests).
pub const AUTOSCALER_PERMISSIONS: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["list", "patch", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("", "events", &["create"]),
    ("cluster.x-k8s.io", "machinedeployments", &["list", "watch"]),
    ("cluster.x-k8s.io", "machinedeployments/scale", &["patch"]),
    ("cluster.x-k8s.io", "machines", &["list", "patch", "watch"]),
];
