//! Accounts, sessions, roles and permissions.
//!
//! ```text
//!  Authorization: Bearer mf_...      ┌─────────────┐ miss/expiry  ┌──────────┐
//!  ─────────────────────────────────▶│ session     │─────────────▶│ sessions │
//!        digest (SHA-256)            │ cache (moka)│◀─────────────│ users    │
//!                                    └─────────────┘   fill       └──────────┘
//!                                      ▲ invalidate: logout, role change,
//!                                        password change
//! ```

pub mod password;
mod principal;
mod service;
pub mod signup;
pub mod token;

pub use principal::{Permission, Role, Session, SessionEvent, UserInfo};
pub use service::{AuthService, Issued};
