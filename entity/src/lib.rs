//! sea-orm entities: the database shape of modelfleet.
//!
//! These types mirror the tables made by the `migration` crate and nothing
//! more. The GraphQL layer has its own types; the two change for different
//! reasons.

pub mod enums;
pub mod instance;
pub mod instance_event;
pub mod model;
pub mod session;
pub mod user;
pub mod user_role;
pub mod work_request;

pub use enums::{AuthType, InstanceStatus, RequestStatus};
