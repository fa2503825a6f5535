//! Node pools as Cluster API describes them, found the way Cluster
//! Autoscaler's Cluster API provider finds them: a MachineDeployment with
//! both size annotations is a pool; its capacity annotations (or, better,
//! one of its nodes) say what a node offers; a node names its Machine, and
//! a Machine its MachineDeployment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::plan::{Resources, Shape, Taint};
use crate::config::PoolOverride;

pub const MIN_SIZE: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size";
pub const MAX_SIZE: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size";
const CAPACITY: &str = "capacity.cluster-autoscaler.kubernetes.io/";
/// On a node: the name of its Machine.
pub const MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/machine";
/// On a node: the namespace of its Machine.
pub const CLUSTER_NAMESPACE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-namespace";
/// On a Machine: its MachineDeployment.
pub const DEPLOYMENT_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// On a Machine: remove this one first when the replicas go down.
pub const DELETE_MACHINE: &str = "cluster.x-k8s.io/delete-machine";
pub const DEFAULT_GPU_TYPE: &str = "nvidia.com/gpu";
const DEFAULT_MAX_PODS: u64 = 110;

pub fn machine_deployments() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "MachineDeployment"),
        "machinedeployments",
    )
}

pub fn machines() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine"),
        "machines",
    )
}

/// A MachineDeployment the autoscaler manages.
#[derive(Debug, Clone)]
pub struct Pool {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// `spec.replicas`.
    pub desired: u32,
    /// What a new node offers; `None` when nothing says (no node, no
    /// capacity annotations, no override): such a pool is never grown.
    pub shape: Option<Shape>,
    /// Where the shape came from: `configuration`, `annotations`, `node`.
    pub shape_from: &'static str,
}

/// Reads a MachineDeployment as a pool: `Ok(None)` when it is not one
/// (neither size annotation), `Err` when its annotations are wrong.
/// `overrides` (from configuration) win over annotations, which win over
/// what `sample` (one of its ready nodes, if any) shows.
pub fn pool_of(
    md: &DynamicObject,
    overrides: &[PoolOverride],
    sample: Option<&Node>,
) -> Result<Option<Pool>, String> {
    let namespace = md.metadata.namespace.clone().unwrap_or_default();
    let name = md.metadata.name.clone().unwrap_or_default();
    let id = format!("{namespace}/{name}");
    let over = overrides
        .iter()
        .find(|o| o.name == name && o.namespace.as_deref().is_none_or(|n| n == namespace));
    let annotations = md.metadata.annotations.clone().unwrap_or_default();
    let size = |key: &str, given: Option<u32>| -> Result<Option<u32>, String> {
        match given {
            Some(n) => Ok(Some(n)),
            None => annotations
                .get(key)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("annotation {key}: `{v}` is not a whole number"))
                })
                .transpose(),
        }
    };
    let min = size(MIN_SIZE, over.and_then(|o| o.min_size))?;
    let max = size(MAX_SIZE, over.and_then(|o| o.max_size))?;
    let (min, max) = match (min, max) {
        (None, None) if over.is_none() => return Ok(None),
        (Some(min), Some(max)) => (min, max),
        _ => return Err(format!("needs both {MIN_SIZE} and {MAX_SIZE}")),
    };
    if min > max {
        return Err(format!("min size {min} is above max size {max}"));
    }
    let desired = md.data["spec"]["replicas"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1);
    let (shape, shape_from) = shape_of(&annotations, over, sample)?;
    Ok(Some(Pool {
        id,
        namespace,
        name,
        min,
        max,
        desired,
        shape,
        shape_from,
    }))
}

fn shape_of(
    annotations: &BTreeMap<String, String>,
    over: Option<&PoolOverride>,
    sample: Option<&Node>,
) -> Result<(Option<Shape>, &'static str), String> {
    let note = |key: &str| annotations.get(&format!("{CAPACITY}{key}")).cloned();
    let bad = |key: &str, value: &str| format!("capacity {key}: `{value}` is not a quantity");
    let cpu = match over.and_then(|o| o.cpu.clone()).or_else(|| note("cpu")) {
        Some(q) => Some(cpu_millis(&q).ok_or_else(|| bad("cpu", &q))?),
        None => None,
    };
    let memory = match over
        .and_then(|o| o.memory.clone())
        .or_else(|| note("memory"))
    {
        Some(q) => Some(bytes(&q).ok_or_else(|| bad("memory", &q))?),
        None => None,
    };
    let gpus = match over.and_then(|o| o.gpu_count).map(|n| n.to_string()) {
        Some(n) => Some(n),
        None => note("gpu-count"),
    }
    .map(|q| q.trim().parse::<u64>().map_err(|_| bad("gpu-count", &q)))
    .transpose()?;
    let max_pods = match over.and_then(|o| o.max_pods).map(|n| n.to_string()) {
        Some(n) => Some(n),
        None => note("maxPods"),
    }
    .map(|q| q.trim().parse::<u64>().map_err(|_| bad("maxPods", &q)))
    .transpose()?;
    let gpu_type = over
        .and_then(|o| o.gpu_type.clone())
        .or_else(|| note("gpu-type"));
    let labels = match over.and_then(|o| o.labels.clone()) {
        Some(labels) => Some(labels),
        None => note("labels").map(|l| parse_labels(&l)).transpose()?,
    };
    let taints = match over.and_then(|o| o.taints.clone()) {
        Some(taints) => Some(taints),
        None => note("taints").map(|t| t.split(',').map(str::to_owned).collect()),
    }
    .map(|list| {
        list.iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| Taint::parse(t).ok_or_else(|| format!("taint `{t}` is not key=value:Effect")))
            .collect::<Result<Vec<_>, _>>()
    })
    .transpose()?;

    let from_config = over.is_some_and(|o| o.cpu.is_some() && o.memory.is_some());
    if let (Some(cpu), Some(memory)) = (cpu, memory) {
        let gpu_type = gpu_type.unwrap_or_else(|| DEFAULT_GPU_TYPE.to_owned());
        let shape = Shape {
            allocatable: Resources {
                cpu_millis: cpu,
                memory,
                gpus: gpus.unwrap_or(0),
                pods: max_pods.unwrap_or(DEFAULT_MAX_PODS),
            },
            gpu_type,
            labels: labels.unwrap_or_default(),
            taints: taints.unwrap_or_default(),
        };
        let from = if from_config {
            "configuration"
        } else {
            "annotations"
        };
        return Ok((Some(shape), from));
    }
    // What a node of the pool shows, with any given part on top.
    let Some(node) = sample else {
        return Ok((None, "nothing"));
    };
    let mut shape = node_shape(node);
    if let Some(n) = gpus {
        shape.allocatable.gpus = n;
    }
    if let Some(n) = max_pods {
        shape.allocatable.pods = n;
    }
    if let Some(t) = gpu_type {
        shape.gpu_type = t;
    }
    if let Some(l) = labels {
        shape.labels.extend(l);
    }
    if let Some(t) = taints {
        shape.taints = t;
    }
    Ok((Some(shape), "node"))
}

/// What `node` offers when empty: its allocatable amounts (GPUs from its
/// capacity, since a new node's device plugin may not have reported yet),
/// labels and taints.
pub fn node_shape(node: &Node) -> Shape {
    let mut shape = node_state(node);
    // What belongs to this node, not to its kind: its name, and the taints
    // of its condition or of being emptied.
    shape.labels.remove("kubernetes.io/hostname");
    shape
        .taints
        .retain(|t| !t.key.starts_with("node.kubernetes.io/") && t.key != super::TAINT_KEY);
    shape
}

/// A node's allocatable amounts, labels and taints as they are now.
pub fn node_state(node: &Node) -> Shape {
    let (allocatable, gpu_type) = node_resources(node, true);
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .map(|t| Taint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: t.effect.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Shape {
        allocatable,
        gpu_type,
        labels,
        taints,
    }
}

/// A node's allocatable amounts and GPU resource name; with `gpus_from_capacity`
/// the GPU count is its capacity rather than its allocatable.
pub fn node_resources(node: &Node, gpus_from_capacity: bool) -> (Resources, String) {
    let status = node.status.as_ref();
    let allocatable = status.and_then(|s| s.allocatable.as_ref());
    let capacity = status.and_then(|s| s.capacity.as_ref());
    let get = |name: &str| {
        allocatable
            .and_then(|a| a.get(name))
            .or_else(|| capacity.and_then(|c| c.get(name)))
            .map(|q| q.0.as_str())
    };
    let gpu_source = if gpus_from_capacity {
        capacity
    } else {
        allocatable
    };
    let (gpu_type, gpus) = gpu_source
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| is_gpu_resource(k))
                .map(|(k, v)| (k.clone(), v.0.trim().parse::<u64>().unwrap_or(0)))
        })
        .unwrap_or_else(|| (DEFAULT_GPU_TYPE.to_owned(), 0));
    (
        Resources {
            cpu_millis: get("cpu").and_then(cpu_millis).unwrap_or(0),
            memory: get("memory").and_then(bytes).unwrap_or(0),
            gpus,
            pods: get("pods")
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(DEFAULT_MAX_PODS),
        },
        gpu_type,
    )
}

/// `nvidia.com/gpu`, `amd.com/gpu`, `gpu.intel.com/i915`: extended
/// resources that are GPUs.
pub fn is_gpu_resource(name: &str) -> bool {
    name.contains('/') && name.contains("gpu") || name.starts_with("gpu.")
}

/// `k1=v1,k2=v2`.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("capacity labels: `{l}` is not key=value"))
        })
        .collect()
}

/// CPU in millicores from a quantity (`500m`, `2`, `1.5`).
pub fn cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q
            .parse::<f64>()
            .ok()
            .filter(|c| *c >= 0.0)
            .map(|c| (c * 1000.0).round() as u64),
    }
}

/// Bytes from a quantity (`512Mi`, `16Gi`, `1G`, `128974848`, `1e9`).
pub fn bytes(q: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("m", 1e-3),
        ("", 1.0),
    ];
    let q = q.trim();
    UNITS.iter().find_map(|(unit, factor)| {
        let number = q.strip_suffix(unit)?;
        let n: f64 = number.parse().ok()?;
        (n >= 0.0).then(|| (n * factor).ceil() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(annotations: &[(&str, &str)], replicas: u64) -> DynamicObject {
        let mut md = DynamicObject::new("workers", &machine_deployments()).within("capi");
        md.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        md.data = serde_json::json!({ "spec": { "replicas": replicas } });
        md
    }

    #[test]
    fn a_pool_is_read_from_cluster_autoscaler_annotations() {
        let pool = pool_of(
            &md(
                &[
                    (MIN_SIZE, "1"),
                    (MAX_SIZE, "5"),
                    ("capacity.cluster-autoscaler.kubernetes.io/cpu", "8"),
                    ("capacity.cluster-autoscaler.kubernetes.io/memory", "32Gi"),
                    ("capacity.cluster-autoscaler.kubernetes.io/gpu-count", "2"),
                    (
                        "capacity.cluster-autoscaler.kubernetes.io/gpu-type",
                        "nvidia.com/gpu",
                    ),
                    ("capacity.cluster-autoscaler.kubernetes.io/maxPods", "50"),
                    (
                        "capacity.cluster-autoscaler.kubernetes.io/labels",
                        "tier=gpu,zone=a",
                    ),
                    (
                        "capacity.cluster-autoscaler.kubernetes.io/taints",
                        "gpu=true:NoSchedule",
                    ),
                ],
                2,
            ),
            &[],
            None,
        )
        .expect("valid")
        .expect("a pool");
        assert_eq!(pool.id, "capi/workers");
        assert_eq!((pool.min, pool.max, pool.desired), (1, 5, 2));
        let shape = pool.shape.expect("a shape");
        assert_eq!(
            shape.allocatable,
            Resources {
                cpu_millis: 8000,
                memory: 32 << 30,
                gpus: 2,
                pods: 50
            }
        );
        assert_eq!(shape.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(shape.taints[0].to_string(), "gpu=true:NoSchedule");
        assert_eq!(pool.shape_from, "annotations");
    }

    #[test]
    fn deployments_without_size_annotations_are_left_alone_and_bad_ones_named() {
        assert!(pool_of(&md(&[], 1), &[], None).expect("valid").is_none());
        let err = pool_of(&md(&[(MIN_SIZE, "1")], 1), &[], None).expect_err("half");
        assert!(err.contains(MAX_SIZE), "{err}");
        let err = pool_of(&md(&[(MIN_SIZE, "3"), (MAX_SIZE, "2")], 1), &[], None)
            .expect_err("min above max");
        assert!(err.contains("above"), "{err}");
        let err = pool_of(&md(&[(MIN_SIZE, "x"), (MAX_SIZE, "2")], 1), &[], None)
            .expect_err("not a number");
        assert!(err.contains(MIN_SIZE), "{err}");
    }

    #[test]
    fn configuration_overrides_annotations() {
        let over = PoolOverride {
            name: "workers".to_owned(),
            namespace: Some("capi".to_owned()),
            max_size: Some(9),
            cpu: Some("4".to_owned()),
            memory: Some("8Gi".to_owned()),
            ..Default::default()
        };
        let pool = pool_of(
            &md(
                &[
                    (MIN_SIZE, "0"),
                    (MAX_SIZE, "3"),
                    ("capacity.cluster-autoscaler.kubernetes.io/cpu", "16"),
                ],
                0,
            ),
            &[over],
            None,
        )
        .expect("valid")
        .expect("a pool");
        assert_eq!((pool.min, pool.max), (0, 9));
        let shape = pool.shape.expect("a shape");
        assert_eq!(shape.allocatable.cpu_millis, 4000);
        assert_eq!(pool.shape_from, "configuration");
    }

    #[test]
    fn a_pool_without_capacity_takes_its_nodes_shape_or_none() {
        let bare = md(&[(MIN_SIZE, "0"), (MAX_SIZE, "3")], 0);
        let pool = pool_of(&bare, &[], None).expect("valid").expect("a pool");
        assert!(pool.shape.is_none());
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "n1", "labels": { "tier": "cpu" } },
            "status": {
                "capacity": { "cpu": "4", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "1" },
                "allocatable": { "cpu": "3900m", "memory": "15Gi", "pods": "110", "nvidia.com/gpu": "0" },
            },
        }))
        .expect("a node");
        let pool = pool_of(&bare, &[], Some(&node))
            .expect("valid")
            .expect("a pool");
        let shape = pool.shape.expect("a shape");
        assert_eq!(shape.allocatable.cpu_millis, 3900);
        assert_eq!(shape.allocatable.gpus, 1, "GPUs from capacity");
        assert_eq!(shape.labels.get("tier").map(String::as_str), Some("cpu"));
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(bytes("16Gi"), Some(16 << 30));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("128974848"), Some(128_974_848));
        assert_eq!(bytes("lots"), None);
    }
}
