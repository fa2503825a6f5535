//! Runs the simulated cluster on its own, to try the Kubernetes backend by
//! hand: `cargo run -p kubesim -- [nodes] [cpus] [gib]` starts an API server
//! on 127.0.0.1 with that many nodes (default 2 nodes of 4 CPUs and
//! 16 GiB), prints its URL, and runs until Ctrl-C. Pods' model servers
//! listen on their own 127.x.y.z addresses, as in the tests.
//!
//! `cargo run -p kubesim -- --pools` starts instead two Cluster API
//! MachineDeployments in namespace `default`, to try a node autoscaler
//! against: `cpu` (1 ready node of 4 CPUs and 16 GiB, 1 to 10) and `gpu`
//! (no node yet; 8 CPUs, 32 GiB, 1 `nvidia.com/gpu`, tainted
//! `nvidia.com/gpu=present:NoSchedule`; 0 to 4), both with Cluster
//! Autoscaler's capacity annotations.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints its URL and its usage"
)]

use kubesim::{Cluster, NodeShape, NodeSpec, PoolSpec};

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--pools") {
        let cluster = Cluster::start().await;
        add_pools(&cluster);
        println!("{}", cluster.url());
        println!("MachineDeployments default/cpu and default/gpu; Ctrl-C ends it");
        let _ = tokio::signal::ctrl_c().await;
        return;
    }
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let mut next = |default: u64, what: &str| match args.next() {
        None => default,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!(
                "usage: kubesim [nodes] [cpus] [gib] | kubesim --pools: {what} must be a number"
            );
            std::process::exit(2);
        }
    };
    let (nodes, cpus, gib) = (next(2, "nodes"), next(4, "cpus"), next(16, "gib"));
    let cluster = Cluster::start().await;
    for i in 0..nodes {
        cluster.add_node(&NodeSpec::new(&format!("node-{i}"), cpus, gib));
    }
    println!("{}", cluster.url());
    println!("{nodes} nodes of {cpus} CPUs and {gib} GiB; Ctrl-C ends it");
    let _ = tokio::signal::ctrl_c().await;
}

/// A CPU pool with one ready node and an empty GPU pool.
fn add_pools(cluster: &Cluster) {
    let mut cpu = PoolSpec::new("default", "cpu", 1, NodeShape::new(4, 16));
    cpu.min = Some(1);
    cpu.max = Some(10);
    cpu.capacity_annotations = true;
    cpu.ready_at_once = true;
    let mut shape = NodeShape::new(8, 32);
    shape.gpus = 1;
    shape.taints.push((
        "nvidia.com/gpu".to_owned(),
        "present".to_owned(),
        "NoSchedule".to_owned(),
    ));
    let mut gpu = PoolSpec::new("default", "gpu", 0, shape);
    gpu.min = Some(0);
    gpu.max = Some(4);
    gpu.capacity_annotations = true;
    for pool in [cpu, gpu] {
        if let Err(e) = cluster.add_machine_deployment(&pool) {
            eprintln!(
                "could not add MachineDeployment {}: {}",
                pool.name, e.message
            );
            std::process::exit(1);
        }
    }
}
