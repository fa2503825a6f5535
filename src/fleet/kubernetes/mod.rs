//! The Kubernetes backend: one pod per instance ([`backend`]), made from a
//! model's settings ([`pod`]), its status read for the instance
//! ([`status`]).
//!
//! Not yet built: adopting pods after a restart (they are deleted as
//! untracked instead), the instance shown as PENDING (rather than
//! STARTING) while its pod is unschedulable, and the Lease-based election
//! of the scaler. `kubesim` is the simulated cluster
//! the tests run against.

pub mod backend;
pub mod pod;
pub mod status;
