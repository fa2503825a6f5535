//! Accounts, for administrators.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::RequirePermission;
use super::pagination;
use crate::auth::{AuthService, Permission, Role};
use crate::error::ApiError;

/// An account, as administrators see it.
#[derive(SimpleObject, Debug, Clone)]
pub struct User {
    id: ID,
    username: String,
    email: String,
    roles: Vec<Role>,
    created_at: DateTime<Utc>,
}

fn parse_id(field: &str, id: &ID) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::field(field, "is not a valid id"))
}

#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// Every account, newest first.
    #[graphql(
        guard = "RequirePermission(Permission::ManageUsers)",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, User, EmptyFields, EmptyFields>> {
        let limit = pagination::page_size(first)?;
        let cursor = after.as_deref().map(pagination::decode).transpose()?;
        let mut rows = ctx
            .data_unchecked::<AuthService>()
            .list_users(cursor, limit as u64 + 1)
            .await?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(rows.into_iter().map(|(u, roles)| {
            let cursor = pagination::encode(u.created_at, u.id);
            Edge::new(
                cursor,
                User {
                    id: ID(u.id.to_string()),
                    roles,
                    username: u.username,
                    email: u.email,
                    created_at: u.created_at,
                },
            )
        }));
        Ok(connection)
    }
}

#[derive(Default)]
pub struct UsersMutation;

#[Object]
impl UsersMutation {
    /// Replaces a user's roles; returns the roles now held. Takes effect on
    /// that user's next call.
    #[graphql(guard = "RequirePermission(Permission::ManageUsers)")]
    async fn set_user_roles(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        roles: Vec<Role>,
    ) -> Result<Vec<Role>> {
        let id = parse_id("userId", &user_id)?;
        Ok(ctx
            .data_unchecked::<AuthService>()
            .set_roles(id, &roles)
            .await?)
    }
}
