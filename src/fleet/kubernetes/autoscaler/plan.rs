//! The node autoscaler's arithmetic, apart from any cluster: what a node
//! offers and a pod needs, whether one can ever hold the other, where
//! pending pods would go, and whether a node is still in use.
//!
//! Everything here is a plain function of its inputs, so the decision loop
//! can be tested and measured without an API server.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::Toleration;

/// Amounts of what nodes offer and pods ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory: u64,
    pub gpus: u64,
    pub pods: u64,
}

impl Resources {
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory: self.memory + other.memory,
            gpus: self.gpus + other.gpus,
            pods: self.pods + other.pods,
        }
    }

    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory: self.memory.saturating_sub(other.memory),
            gpus: self.gpus.saturating_sub(other.gpus),
            pods: self.pods.saturating_sub(other.pods),
        }
    }

    /// Whether `need` fits in these.
    pub fn holds(&self, need: &Resources) -> bool {
        need.cpu_millis <= self.cpu_millis
            && need.memory <= self.memory
            && need.gpus <= self.gpus
            && need.pods <= self.pods
    }
}

/// A node taint, as `key=value:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Taint {
    /// `key=value:Effect` or `key:Effect`, as Cluster Autoscaler's
    /// `capacity.cluster-autoscaler.kubernetes.io/taints` writes them.
    pub fn parse(text: &str) -> Option<Taint> {
        let (key_value, effect) = text.trim().rsplit_once(':')?;
        let (key, value) = key_value.split_once('=').unwrap_or((key_value, ""));
        let effect = match effect {
            "NoSchedule" | "PreferNoSchedule" | "NoExecute" => effect,
            _ => return None,
        };
        (!key.is_empty()).then(|| Taint {
            key: key.to_owned(),
            value: value.to_owned(),
            effect: effect.to_owned(),
        })
    }

    /// Whether a pod with `tolerations` may go on a node with this taint.
    pub fn tolerated_by(&self, tolerations: &[Toleration]) -> bool {
        self.effect == "PreferNoSchedule"
            || tolerations.iter().any(|t| {
                let exists = t.operator.as_deref() == Some("Exists");
                let key = match &t.key {
                    None => exists,
                    Some(key) => *key == self.key,
                };
                let value = exists || t.value.as_deref().unwrap_or("") == self.value;
                let effect = t.effect.as_deref().is_none_or(|e| e == self.effect);
                key && value && effect
            })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// What one node of a pool offers to pods.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub allocatable: Resources,
    /// The extended resource its GPUs are (`nvidia.com/gpu`).
    pub gpu_type: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// What a pending pod needs from a node.
#[derive(Debug, Clone)]
pub struct Demand {
    /// `namespace/name`.
    pub pod: String,
    pub needs: Resources,
    /// The GPU resource it asks for, when it asks for one.
    pub gpu_type: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl Demand {
    /// Why a node with these labels, taints and allocatable amounts could
    /// never hold the pod, even empty; `None` when it could.
    pub fn misfit(
        &self,
        labels: &BTreeMap<String, String>,
        taints: &[Taint],
        allocatable: &Resources,
        gpu_type: &str,
    ) -> Option<String> {
        if let Some((key, value)) = self
            .node_selector
            .iter()
            .find(|(k, v)| labels.get(*k) != Some(*v))
        {
            return Some(format!("its nodes lack the label {key}={value}"));
        }
        if let Some(taint) = taints.iter().find(|t| !t.tolerated_by(&self.tolerations)) {
            return Some(format!("the pod does not tolerate its taint {taint}"));
        }
        if self.needs.gpus > 0 && self.gpu_type.as_deref() != Some(gpu_type) {
            return Some(format!(
                "its GPUs are {gpu_type}, the pod asks for {}",
                self.gpu_type.as_deref().unwrap_or("another kind")
            ));
        }
        lack(&self.needs, allocatable).map(|l| format!("{l}, a node has {}", l.has))
    }

    /// Whether the pod fits in `free` room on a node it may go on.
    fn fits(&self, room: &Room) -> bool {
        room.free.holds(&self.needs)
            && (self.needs.gpus == 0 || self.gpu_type.as_deref() == Some(room.gpu_type))
            && self
                .node_selector
                .iter()
                .all(|(k, v)| room.labels.get(k) == Some(v))
            && room
                .taints
                .iter()
                .all(|t| t.tolerated_by(&self.tolerations))
    }

    /// For sorting largest first: GPUs weigh most, then CPU, then memory.
    fn size(&self) -> (u64, u64, u64) {
        (self.needs.gpus, self.needs.cpu_millis, self.needs.memory)
    }
}

/// The first amount `need` asks more of than `has` offers.
struct Lack {
    need: String,
    has: String,
}

impl fmt::Display for Lack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "needs {}", self.need)
    }
}

fn lack(need: &Resources, has: &Resources) -> Option<Lack> {
    let lack = |need: String, has: String| Lack { need, has };
    if need.gpus > has.gpus {
        Some(lack(plural(need.gpus, "GPU"), has.gpus.to_string()))
    } else if need.cpu_millis > has.cpu_millis {
        Some(lack(
            format!("{} CPU", cpus(need.cpu_millis)),
            cpus(has.cpu_millis),
        ))
    } else if need.memory > has.memory {
        Some(lack(
            format!("{} of memory", gib(need.memory)),
            gib(has.memory),
        ))
    } else if need.pods > has.pods {
        Some(lack(
            "room for a pod".to_owned(),
            format!("room for {}", has.pods),
        ))
    } else {
        None
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn cpus(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{}m", millis)
    }
}

fn gib(bytes: u64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 10.0 || gib.fract() == 0.0 {
        format!("{gib:.0} GiB")
    } else {
        format!("{gib:.1} GiB")
    }
}

/// A node group the autoscaler may grow: its bounds, how many nodes it
/// has been asked for, how many of those are ready, and what a node offers.
#[derive(Debug, Clone)]
pub struct PoolState {
    /// `namespace/name` of its MachineDeployment.
    pub id: String,
    pub min: u32,
    pub max: u32,
    /// The replicas asked for.
    pub desired: u32,
    /// Nodes ready to take pods (GPUs allocatable, not being removed).
    pub ready: u32,
    pub shape: Shape,
}

impl PoolState {
    /// Nodes asked for that cannot take pods yet.
    pub fn coming(&self) -> u32 {
        self.desired.saturating_sub(self.ready)
    }
}

/// Free room on an existing node that takes pods.
#[derive(Debug, Clone)]
pub struct NodeRoom {
    pub name: String,
    pub free: Resources,
    pub allocatable: Resources,
    pub gpu_type: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// Where a pending pod would go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On a node that has room now (the scheduler will find it).
    Existing(String),
    /// On a node of this pool already asked for.
    Coming(String),
    /// On a new node of this pool, asked for by this plan.
    New(String),
    /// Pools could hold it but are at their maximum size.
    AtMax(Vec<String>),
    /// No pool could hold it, but an existing node could once it has
    /// room; with the reasons per pool.
    WaitsForRoom(String),
    /// Nothing could ever hold it.
    Never(String),
}

/// What the autoscaler would do about the pending pods.
#[derive(Debug, Default)]
pub struct ScaleUp {
    /// New nodes per pool.
    pub grow: BTreeMap<String, u32>,
    /// For each pending pod, in the order given.
    pub placements: Vec<Placement>,
}

/// Room a pod may go in while planning.
struct Room<'a> {
    free: Resources,
    gpu_type: &'a str,
    labels: &'a BTreeMap<String, String>,
    taints: &'a [Taint],
    /// `None` for an existing node.
    pool: Option<usize>,
    name: &'a str,
    /// Opened by this plan.
    new: bool,
}

/// Places the pending pods, largest first: on free room of existing
/// nodes, then on nodes already coming, then on new nodes, opening each
/// in the pool that wastes least for it among those that can hold it and
/// are below their maximum.
pub fn plan_scale_up(pools: &[PoolState], nodes: &[NodeRoom], pending: &[Demand]) -> ScaleUp {
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pending[i].size()));

    let mut rooms: Vec<Room> = nodes
        .iter()
        .map(|n| Room {
            free: n.free,
            gpu_type: &n.gpu_type,
            labels: &n.labels,
            taints: &n.taints,
            pool: None,
            name: &n.name,
            new: false,
        })
        .collect();
    for (i, pool) in pools.iter().enumerate() {
        for _ in 0..pool.coming() {
            rooms.push(pool_room(pool, i, false));
        }
    }
    let mut grown = vec![0u32; pools.len()];
    let mut placements = vec![Placement::Never(String::new()); pending.len()];
    for i in order {
        let demand = &pending[i];
        if let Some(room) = rooms.iter_mut().find(|r| demand.fits(r)) {
            room.free = room.free.minus(demand.needs);
            placements[i] = match room.pool {
                None => Placement::Existing(room.name.to_owned()),
                Some(p) if room.new => Placement::New(pools[p].id.clone()),
                Some(p) => Placement::Coming(pools[p].id.clone()),
            };
            continue;
        }
        let able: Vec<usize> = (0..pools.len())
            .filter(|&p| {
                let s = &pools[p].shape;
                demand
                    .misfit(&s.labels, &s.taints, &s.allocatable, &s.gpu_type)
                    .is_none()
            })
            .collect();
        let open = able
            .iter()
            .copied()
            .filter(|&p| pools[p].desired + grown[p] < pools[p].max)
            .min_by(|&a, &b| {
                waste(&pools[a].shape, &demand.needs)
                    .total_cmp(&waste(&pools[b].shape, &demand.needs))
                    .then_with(|| pools[a].id.cmp(&pools[b].id))
            });
        placements[i] = match open {
            Some(p) => {
                grown[p] += 1;
                let mut room = pool_room(&pools[p], p, true);
                room.free = room.free.minus(demand.needs);
                rooms.push(room);
                Placement::New(pools[p].id.clone())
            }
            None if !able.is_empty() => {
                Placement::AtMax(able.iter().map(|&p| pools[p].id.clone()).collect())
            }
            None => unplaceable(pools, nodes, demand),
        };
    }
    ScaleUp {
        grow: pools
            .iter()
            .zip(grown)
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| (p.id.clone(), n))
            .collect(),
        placements,
    }
}

fn pool_room(pool: &PoolState, index: usize, new: bool) -> Room<'_> {
    Room {
        free: pool.shape.allocatable,
        gpu_type: &pool.shape.gpu_type,
        labels: &pool.shape.labels,
        taints: &pool.shape.taints,
        pool: Some(index),
        name: &pool.id,
        new,
    }
}

/// The share of a new node of `shape` left unused by a pod needing `needs`:
/// CPU and memory count once each, unused GPUs twice (they cost most), so a
/// pod without GPUs goes to a GPU pool only when nothing else holds it.
fn waste(shape: &Shape, needs: &Resources) -> f64 {
    let share = |need: u64, has: u64| {
        if has == 0 {
            0.0
        } else {
            1.0 - need as f64 / has as f64
        }
    };
    let a = &shape.allocatable;
    share(needs.cpu_millis, a.cpu_millis)
        + share(needs.memory, a.memory)
        + 2.0 * share(needs.gpus, a.gpus)
}

/// Why no pool can hold `demand`, and whether it may still wait for room
/// on an existing node.
fn unplaceable(pools: &[PoolState], nodes: &[NodeRoom], demand: &Demand) -> Placement {
    let reason = never_reason(pools, demand);
    // An existing node (of a pool or not) whose whole allocatable would
    // hold it: room may free up there.
    let some_node_could = nodes.iter().any(|n| {
        demand
            .misfit(&n.labels, &n.taints, &n.allocatable, &n.gpu_type)
            .is_none()
    });
    if some_node_could {
        Placement::WaitsForRoom(reason)
    } else {
        Placement::Never(reason)
    }
}

/// Says why no pool's node could hold the pod: one amount when no pool has
/// enough of it ("needs 2 GPUs, the largest node of any pool has 1"), else
/// each pool's reason.
pub fn never_reason(pools: &[PoolState], demand: &Demand) -> String {
    if pools.is_empty() {
        return "no node pool is managed by the autoscaler".to_owned();
    }
    let misfits: Vec<(&PoolState, String)> = pools
        .iter()
        .filter_map(|p| {
            let s = &p.shape;
            demand
                .misfit(&s.labels, &s.taints, &s.allocatable, &s.gpu_type)
                .map(|m| (p, m))
        })
        .collect();
    let largest = |amount: fn(&Resources) -> u64| {
        pools
            .iter()
            .map(|p| amount(&p.shape.allocatable))
            .max()
            .unwrap_or(0)
    };
    let most = Resources {
        cpu_millis: largest(|r| r.cpu_millis),
        memory: largest(|r| r.memory),
        gpus: largest(|r| r.gpus),
        pods: largest(|r| r.pods),
    };
    if let Some(l) = lack(&demand.needs, &most) {
        return format!("{l}, the largest node of any pool has {}", l.has);
    }
    let each: Vec<String> = misfits
        .iter()
        .map(|(p, why)| format!("pool {}: {why}", p.id))
        .collect();
    format!("no node pool can hold it ({})", each.join("; "))
}

/// Why a node must stay: the first pod on it that counts as use.
///
/// A pod counts unless it is finished, a DaemonSet's or a mirror pod. On a
/// node with GPUs, a modelfleet pod counts only if it asks for GPUs, is
/// still starting (its request is on its way) or holds an assigned
/// request: an idle CPU model on a GPU node does not keep the GPUs. A modelfleet pod holding an assigned request always counts;
/// so does any other workload's pod (the autoscaler never evicts others).
pub fn node_use<'a>(
    gpu_node: bool,
    pods: impl IntoIterator<Item = &'a PodOnNode>,
    assigned: &HashSet<String>,
) -> Option<String> {
    for pod in pods {
        if pod.finished || pod.daemon_or_mirror {
            continue;
        }
        if let Some(instance) = &pod.instance {
            if assigned.contains(instance) {
                return Some(format!("pod {} runs an assigned request", pod.name));
            }
            if gpu_node && pod.gpus == 0 && !pod.starting {
                continue;
            }
            return Some(format!("modelfleet pod {}", pod.name));
        }
        return Some(format!("pod {} (not modelfleet's)", pod.name));
    }
    None
}

/// A pod bound to a node, as far as judging use goes.
#[derive(Debug, Clone)]
pub struct PodOnNode {
    /// `namespace/name`.
    pub name: String,
    /// The modelfleet instance it is, for modelfleet pods.
    pub instance: Option<String>,
    pub gpus: u64,
    /// Not ready yet.
    pub starting: bool,
    pub finished: bool,
    pub daemon_or_mirror: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn shape(cpus: u64, gib: u64, gpus: u64) -> Shape {
        Shape {
            allocatable: Resources {
                cpu_millis: cpus * 1000,
                memory: gib * GIB,
                gpus,
                pods: 110,
            },
            gpu_type: "nvidia.com/gpu".to_owned(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    fn pool(id: &str, shape: Shape, desired: u32, ready: u32, max: u32) -> PoolState {
        PoolState {
            id: id.to_owned(),
            min: 0,
            max,
            desired,
            ready,
            shape,
        }
    }

    fn pod(name: &str, cpus: u64, gib: u64, gpus: u64) -> Demand {
        Demand {
            pod: name.to_owned(),
            needs: Resources {
                cpu_millis: cpus * 1000,
                memory: gib * GIB,
                gpus,
                pods: 1,
            },
            gpu_type: (gpus > 0).then(|| "nvidia.com/gpu".to_owned()),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }

    #[test]
    fn pods_pack_onto_as_few_new_nodes_as_hold_them() {
        let pools = [pool("ns/cpu", shape(4, 16, 0), 0, 0, 10)];
        let pending: Vec<Demand> = (0..5).map(|i| pod(&format!("p{i}"), 2, 4, 0)).collect();
        let plan = plan_scale_up(&pools, &[], &pending);
        assert_eq!(plan.grow, BTreeMap::from([("ns/cpu".to_owned(), 3)]));
        assert!(
            plan.placements
                .iter()
                .all(|p| *p == Placement::New("ns/cpu".to_owned()))
        );
    }

    #[test]
    fn coming_nodes_and_free_room_are_used_before_new_ones() {
        let pools = [pool("ns/cpu", shape(4, 16, 0), 2, 1, 10)];
        let nodes = [NodeRoom {
            name: "n1".to_owned(),
            free: shape(2, 8, 0).allocatable,
            allocatable: shape(4, 16, 0).allocatable,
            gpu_type: "nvidia.com/gpu".to_owned(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }];
        let pending = [pod("a", 2, 4, 0), pod("b", 4, 4, 0), pod("c", 1, 1, 0)];
        let plan = plan_scale_up(&pools, &nodes, &pending);
        // Largest first: b (4 CPUs) fills the coming node, a (2) the free
        // room on n1, and c finds no CPU left on either.
        assert_eq!(plan.placements[0], Placement::Existing("n1".to_owned()));
        assert_eq!(plan.placements[1], Placement::Coming("ns/cpu".to_owned()));
        assert_eq!(plan.placements[2], Placement::New("ns/cpu".to_owned()));
        assert_eq!(plan.grow, BTreeMap::from([("ns/cpu".to_owned(), 1)]));
    }

    #[test]
    fn a_gpu_pod_grows_the_gpu_pool_and_a_cpu_pod_the_cpu_pool() {
        let pools = [
            pool("ns/cpu", shape(8, 32, 0), 1, 1, 10),
            pool("ns/gpu", shape(8, 32, 1), 0, 0, 4),
        ];
        let plan = plan_scale_up(&pools, &[], &[pod("g", 1, 1, 1), pod("c", 8, 8, 0)]);
        assert_eq!(plan.placements[0], Placement::New("ns/gpu".to_owned()));
        // The CPU pool's one ready node has no free room here (no
        // NodeRoom given), and a new GPU node would waste its GPU.
        assert_eq!(plan.placements[1], Placement::New("ns/cpu".to_owned()));
    }

    #[test]
    fn the_pool_wasting_least_is_chosen() {
        let pools = [
            pool("ns/big", shape(32, 128, 0), 0, 0, 10),
            pool("ns/small", shape(4, 16, 0), 0, 0, 10),
        ];
        let plan = plan_scale_up(&pools, &[], &[pod("a", 3, 12, 0)]);
        assert_eq!(plan.grow, BTreeMap::from([("ns/small".to_owned(), 1)]));
    }

    #[test]
    fn pools_never_grow_past_their_maximum() {
        let pools = [pool("ns/cpu", shape(4, 16, 0), 3, 3, 4)];
        let pending: Vec<Demand> = (0..3).map(|i| pod(&format!("p{i}"), 4, 4, 0)).collect();
        let plan = plan_scale_up(&pools, &[], &pending);
        assert_eq!(plan.grow, BTreeMap::from([("ns/cpu".to_owned(), 1)]));
        let at_max = plan
            .placements
            .iter()
            .filter(|p| matches!(p, Placement::AtMax(pools) if pools == &["ns/cpu".to_owned()]))
            .count();
        assert_eq!(at_max, 2);
    }

    #[test]
    fn a_pod_too_large_for_every_pool_says_what_it_lacks() {
        let pools = [
            pool("ns/cpu", shape(8, 32, 0), 1, 1, 10),
            pool("ns/gpu", shape(8, 32, 1), 0, 0, 4),
        ];
        let plan = plan_scale_up(&pools, &[], &[pod("huge", 1, 1, 2)]);
        assert!(plan.grow.is_empty());
        assert_eq!(
            plan.placements[0],
            Placement::Never("needs 2 GPUs, the largest node of any pool has 1".to_owned())
        );
        let plan = plan_scale_up(&pools, &[], &[pod("wide", 1, 64, 0)]);
        assert_eq!(
            plan.placements[0],
            Placement::Never(
                "needs 64 GiB of memory, the largest node of any pool has 32 GiB".to_owned()
            )
        );
    }

    #[test]
    fn labels_and_taints_decide_which_pool_fits() {
        let mut gpu = shape(8, 32, 1);
        gpu.taints
            .push(Taint::parse("nvidia.com/gpu=present:NoSchedule").expect("taint"));
        gpu.labels
            .insert("accelerator".to_owned(), "a100".to_owned());
        let pools = [pool("ns/gpu", gpu, 0, 0, 4)];
        let mut wants = pod("g", 1, 1, 1);
        let plan = plan_scale_up(&pools, &[], std::slice::from_ref(&wants));
        assert_eq!(
            plan.placements[0],
            Placement::Never(
                "no node pool can hold it (pool ns/gpu: the pod does not tolerate its taint nvidia.com/gpu=present:NoSchedule)"
                    .to_owned()
            )
        );
        wants.tolerations.push(Toleration {
            key: Some("nvidia.com/gpu".to_owned()),
            operator: Some("Exists".to_owned()),
            ..Default::default()
        });
        wants
            .node_selector
            .insert("accelerator".to_owned(), "h100".to_owned());
        let plan = plan_scale_up(&pools, &[], std::slice::from_ref(&wants));
        assert!(
            matches!(&plan.placements[0], Placement::Never(r) if r.contains("lack the label accelerator=h100")),
            "{plan:?}"
        );
        wants
            .node_selector
            .insert("accelerator".to_owned(), "a100".to_owned());
        let plan = plan_scale_up(&pools, &[], &[wants]);
        assert_eq!(plan.placements[0], Placement::New("ns/gpu".to_owned()));
    }

    #[test]
    fn taints_parse_as_cluster_autoscaler_writes_them() {
        let t = Taint::parse("dedicated=gpu:NoSchedule").expect("taint");
        assert_eq!((t.key.as_str(), t.value.as_str()), ("dedicated", "gpu"));
        assert_eq!(
            Taint::parse("spot:NoExecute").map(|t| t.to_string()),
            Some("spot:NoExecute".to_owned())
        );
        assert!(Taint::parse("k=v:Sometimes").is_none());
        assert!(Taint::parse("novalue").is_none());
    }

    #[test]
    fn use_of_a_node_counts_gpus_on_gpu_nodes() {
        let on = |name: &str, instance: Option<&str>, gpus: u64| PodOnNode {
            name: name.to_owned(),
            instance: instance.map(str::to_owned),
            gpus,
            starting: false,
            finished: false,
            daemon_or_mirror: false,
        };
        let none = HashSet::new();
        let cpu_model = on("ns/cpu-model", Some("i1"), 0);
        assert!(node_use(false, [&cpu_model], &none).is_some());
        assert_eq!(node_use(true, [&cpu_model], &none), None);
        let busy = HashSet::from(["i1".to_owned()]);
        assert!(node_use(true, [&cpu_model], &busy).is_some());
        let mut daemon = on("kube-system/agent", None, 0);
        daemon.daemon_or_mirror = true;
        assert_eq!(node_use(false, [&daemon], &none), None);
        let other = on("ns/theirs", None, 0);
        assert!(node_use(true, [&other], &none).is_some());
    }
}
