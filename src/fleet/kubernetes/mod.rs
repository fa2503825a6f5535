//! The Kubernetes backend's parts: the pod a model's settings make for an
//! instance ([`pod`]), and what a pod's status means for that instance
//! ([`status`]).
//!
//! Not yet built: the backend itself (creating pods through kube-rs,
//! following pods and events with watchers, sending jobs to pod addresses,
//! stopping and adopting pods) and the Lease-based election of the scaler.
//! `kubesim` (the simulated cluster the tests run against) is ready for it.

pub mod pod;
pub mod status;
