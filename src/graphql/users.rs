//! Accounts, for administrators.

use std::collections::HashMap;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{user, user_role};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
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
        let db = ctx.data_unchecked::<AuthService>().db();
        let mut query = user::Entity::find()
            .order_by_desc(user::Column::CreatedAt)
            .order_by_desc(user::Column::Id)
            .limit(limit as u64 + 1);
        if let Some(after) = &after {
            let (at, id) = pagination::decode(after)?;
            query = query.filter(
                Condition::any().add(user::Column::CreatedAt.lt(at)).add(
                    Condition::all()
                        .add(user::Column::CreatedAt.eq(at))
                        .add(user::Column::Id.lt(id)),
                ),
            );
        }
        let mut rows = query.all(db).await.map_err(ApiError::from)?;
        let has_next = rows.len() > limit;
        rows.truncate(limit);
        // One query for every row's roles.
        let ids: Vec<Uuid> = rows.iter().map(|u| u.id).collect();
        let mut roles: HashMap<Uuid, Vec<Role>> = HashMap::new();
        for r in user_role::Entity::find()
            .filter(user_role::Column::UserId.is_in(ids))
            .order_by_asc(user_role::Column::Role)
            .all(db)
            .await
            .map_err(ApiError::from)?
        {
            if let Some(role) = Role::parse(&r.role) {
                roles.entry(r.user_id).or_default().push(role);
            }
        }
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(rows.into_iter().map(|u| {
            let cursor = pagination::encode(u.created_at, u.id);
            Edge::new(
                cursor,
                User {
                    id: ID(u.id.to_string()),
                    roles: roles.remove(&u.id).unwrap_or_default(),
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
