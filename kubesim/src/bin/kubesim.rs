//! Runs the simulated cluster on its own, to try the Kubernetes backend by
//! hand: `cargo run -p kubesim -- [nodes] [cpus] [gib]` starts an API server
//! on 127.0.0.1 with that many nodes (default 2 nodes of 4 CPUs and
//! 16 GiB), prints its URL, and runs until Ctrl-C. Pods' model servers
//! listen on their own 127.x.y.z addresses, as in the tests.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints its URL and its usage"
)]

use kubesim::{Cluster, NodeSpec};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let mut next = |default: u64, what: &str| match args.next() {
        None => default,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: kubesim [nodes] [cpus] [gib]: {what} must be a number");
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
