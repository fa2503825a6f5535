//! Who is calling: the session, its user and what they may do.

use chrono::{DateTime, Utc};
use entity::AuthType;
use uuid::Uuid;

/// A role a user can hold. Roles are stored by name.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: stats, every request, instances, models and users.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "ADMIN" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn permissions(self) -> &'static [Permission] {
        match self {
            Role::Admin => &[
                Permission::ViewStats,
                Permission::ViewAllRequests,
                Permission::ManageInstances,
                Permission::ManageModels,
                Permission::ManageUsers,
            ],
        }
    }
}

/// Something a role allows.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    ViewStats,
    ViewAllRequests,
    ManageInstances,
    ManageModels,
    ManageUsers,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ViewStats => "VIEW_STATS",
            Permission::ViewAllRequests => "VIEW_ALL_REQUESTS",
            Permission::ManageInstances => "MANAGE_INSTANCES",
            Permission::ManageModels => "MANAGE_MODELS",
            Permission::ManageUsers => "MANAGE_USERS",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub id: Uuid,
    pub username: String,
    pub email: String,
}

/// An authenticated session, as cached in memory.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    /// The stored digest of the token; the cache key.
    pub token_digest: String,
    pub auth_type: AuthType,
    pub user: Option<UserInfo>,
    pub roles: Vec<Role>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Session {
    /// Who owns what this session submits: the user for `USER` sessions,
    /// the session itself for `ANON` ones.
    pub fn principal_id(&self) -> Uuid {
        self.user.as_ref().map_or(self.id, |u| u.id)
    }

    pub fn user_id(&self) -> Option<Uuid> {
        self.user.as_ref().map(|u| u.id)
    }

    pub fn permissions(&self) -> Vec<Permission> {
        let mut all: Vec<Permission> = self
            .roles
            .iter()
            .flat_map(|r| r.permissions().iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.roles
            .iter()
            .any(|r| r.permissions().contains(&permission))
    }
}

/// Announced when a session or its user changes, so that open WebSocket
/// connections and subscriptions can follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session is gone (logout, password change).
    Ended { session_id: Uuid },
    /// The user's roles changed.
    UserChanged { user_id: Uuid },
}
