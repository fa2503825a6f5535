//! The node autoscaler, for administrators: pools, nodes and live node
//! updates. Served by the replica that runs the scaler (which decides),
//! like `instanceUpdates`.

use std::sync::Arc;

use async_graphql::{Context, Enum, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::RequirePermission;
use crate::auth::Permission;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::fleet::kubernetes::autoscaler::{
    self as scaler, AutoscalerHandle, DecisionKind, NodeState, NodeView, PoolView,
};

/// The autoscaler's handle, when this replica may answer for it.
fn autoscaler<'a>(ctx: &Context<'a>) -> Result<&'a AutoscalerHandle, ApiError> {
    let handle = ctx
        .data_opt::<AutoscalerHandle>()
        .ok_or(ApiError::Unavailable(
            "the node autoscaler is not enabled (kubernetes.autoscaler.enabled)",
        ))?;
    if !ctx.data_unchecked::<Arc<Fleet>>().is_leading() {
        return Err(ApiError::Unavailable(
            "this server does not run the scaler; ask the one that does",
        ));
    }
    Ok(handle)
}

/// What one node offers or holds.
#[derive(SimpleObject, Debug, Clone)]
pub struct NodeResources {
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: u64,
    pods: u64,
}

impl From<scaler::plan::Resources> for NodeResources {
    fn from(r: scaler::plan::Resources) -> Self {
        NodeResources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory,
            gpus: r.gpus,
            pods: r.pods,
        }
    }
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "NodeState")]
pub enum NodeStateGql {
    Ready,
    /// Asked for, not ready yet (or its GPUs not allocatable yet).
    NotReady,
    Cordoned,
    BeingRemoved,
}

impl From<NodeState> for NodeStateGql {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Ready => NodeStateGql::Ready,
            NodeState::NotReady => NodeStateGql::NotReady,
            NodeState::Cordoned => NodeStateGql::Cordoned,
            NodeState::BeingRemoved => NodeStateGql::BeingRemoved,
        }
    }
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "NodeDecisionKind")]
pub enum DecisionKindGql {
    ScaleUp,
    NoScaleUp,
    Cordon,
    ScaleDown,
    ScaleDownCancelled,
}

impl From<DecisionKind> for DecisionKindGql {
    fn from(k: DecisionKind) -> Self {
        match k {
            DecisionKind::ScaleUp => DecisionKindGql::ScaleUp,
            DecisionKind::NoScaleUp => DecisionKindGql::NoScaleUp,
            DecisionKind::Cordon => DecisionKindGql::Cordon,
            DecisionKind::ScaleDown => DecisionKindGql::ScaleDown,
            DecisionKind::ScaleDownCancelled => DecisionKindGql::ScaleDownCancelled,
        }
    }
}

/// Something the autoscaler decided about a pool, and why.
#[derive(SimpleObject, Debug, Clone)]
pub struct NodeDecision {
    at: DateTime<Utc>,
    kind: DecisionKindGql,
    reason: String,
}

/// A Cluster API MachineDeployment the autoscaler manages.
pub struct NodePool(PoolView);

#[Object]
impl NodePool {
    /// `namespace/name` of the MachineDeployment.
    async fn id(&self) -> &str {
        &self.0.pool.id
    }
    async fn namespace(&self) -> &str {
        &self.0.pool.namespace
    }
    async fn name(&self) -> &str {
        &self.0.pool.name
    }
    async fn min_size(&self) -> u32 {
        self.0.pool.min
    }
    async fn max_size(&self) -> u32 {
        self.0.pool.max
    }
    /// The replicas asked for.
    async fn desired(&self) -> u32 {
        self.0.pool.desired
    }
    /// Nodes that take pods (or are cordoned), not being removed.
    async fn ready(&self) -> u32 {
        self.0.ready
    }
    /// Nodes asked for that cannot take pods yet.
    async fn coming(&self) -> u32 {
        self.0.coming
    }
    /// What a new node offers; null when nothing says (no node, no
    /// capacity annotations): such a pool is not grown.
    async fn node_capacity(&self) -> Option<NodeResources> {
        self.0.pool.shape.as_ref().map(|s| s.allocatable.into())
    }
    async fn gpu_type(&self) -> Option<&str> {
        self.0.pool.shape.as_ref().map(|s| s.gpu_type.as_str())
    }
    /// `configuration`, `annotations`, `node` or `nothing`.
    async fn capacity_from(&self) -> &str {
        self.0.pool.shape_from
    }
    /// Why the MachineDeployment's autoscaler settings are not usable.
    async fn problem(&self) -> Option<&str> {
        self.0.problem.as_deref()
    }
    /// Newest first, at most 20.
    async fn last_decisions(&self) -> Vec<NodeDecision> {
        self.0
            .decisions
            .iter()
            .map(|d| NodeDecision {
                at: d.at,
                kind: d.kind.into(),
                reason: d.message.clone(),
            })
            .collect()
    }
}

/// A cluster node.
pub struct ClusterNode(NodeView);

#[Object(name = "Node")]
impl ClusterNode {
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// `namespace/name` of its pool, when the autoscaler manages it.
    async fn pool(&self) -> Option<&str> {
        self.0.pool.as_deref()
    }
    async fn state(&self) -> NodeStateGql {
        self.0.state.into()
    }
    async fn capacity(&self) -> NodeResources {
        self.0.capacity.into()
    }
    async fn allocatable(&self) -> NodeResources {
        self.0.allocatable.into()
    }
    /// What the pods on it ask for.
    async fn allocated(&self) -> NodeResources {
        self.0.allocated.into()
    }
    /// `namespace/name` of the modelfleet pods on it.
    async fn modelfleet_pods(&self) -> &[String] {
        &self.0.modelfleet_pods
    }
    /// Since when nothing has kept it (a managed node only).
    async fn idle_since(&self) -> Option<DateTime<Utc>> {
        self.0.idle_since
    }
}

#[derive(Default)]
pub struct NodesQuery;

#[Object]
impl NodesQuery {
    /// The node pools the autoscaler manages (and MachineDeployments whose
    /// autoscaler annotations are broken, with the problem).
    #[graphql(guard = "RequirePermission(Permission::ManageInstances)")]
    async fn node_pools(&self, ctx: &Context<'_>) -> Result<Vec<NodePool>> {
        Ok(autoscaler(ctx)?.pools().into_iter().map(NodePool).collect())
    }

    /// Every node of the cluster, by name.
    #[graphql(guard = "RequirePermission(Permission::ManageInstances)")]
    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<ClusterNode>> {
        Ok(autoscaler(ctx)?
            .nodes()
            .into_iter()
            .map(ClusterNode)
            .collect())
    }
}

/// A node changed (state, pods, allocation) or went.
#[derive(SimpleObject)]
pub struct NodeUpdate {
    at: DateTime<Utc>,
    node: Option<ClusterNode>,
    /// The node is gone from the cluster.
    removed: bool,
    /// Set when the subscriber fell behind: how many updates it missed
    /// (ask `nodes` again).
    missed: Option<u64>,
}

#[derive(Default)]
pub struct NodesSubscription;

#[Subscription]
impl NodesSubscription {
    /// Every change to a node, as the autoscaler sees it.
    #[graphql(guard = "RequirePermission(Permission::ManageInstances)")]
    async fn node_updates(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = NodeUpdate>> {
        let changes = autoscaler(ctx)?.subscribe();
        Ok(futures_util::stream::unfold(
            changes,
            |mut changes| async move {
                let update = match changes.recv().await {
                    Ok(u) => NodeUpdate {
                        at: u.at,
                        node: Some(ClusterNode(u.node)),
                        removed: u.removed,
                        missed: None,
                    },
                    Err(RecvError::Lagged(missed)) => NodeUpdate {
                        at: Utc::now(),
                        node: None,
                        removed: false,
                        missed: Some(missed),
                    },
                    Err(RecvError::Closed) => return None,
                };
                Some((update, changes))
            },
        ))
    }
}
