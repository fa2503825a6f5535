//! Field guards. A caller with no session gets `UNAUTHENTICATED`; a session
//! that lacks what a field needs gets `FORBIDDEN` (admin fields) or
//! `UNAUTHENTICATED` (fields for signed-in users, asked by an anonymous
//! session).

use std::sync::Arc;

use async_graphql::{Context, Guard, Result};
use entity::AuthType;

use crate::auth::{Permission, Session};
use crate::error::ApiError;

/// The calling session, or `UNAUTHENTICATED`.
pub fn session<'a>(ctx: &Context<'a>) -> Result<&'a Arc<Session>, ApiError> {
    ctx.data_opt::<Arc<Session>>()
        .ok_or(ApiError::Unauthenticated)
}

/// Any session, anonymous or signed in.
pub struct RequireSession;

impl Guard for RequireSession {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        session(ctx)?;
        Ok(())
    }
}

/// A signed-in user's session.
pub struct RequireUser;

impl Guard for RequireUser {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        match session(ctx)?.auth_type {
            AuthType::User => Ok(()),
            AuthType::Anon => Err(ApiError::Unauthenticated.into()),
        }
    }
}

/// A session whose roles grant the permission.
pub struct RequirePermission(pub Permission);

impl Guard for RequirePermission {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        if session(ctx)?.has(self.0) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(self.0.as_str()).into())
        }
    }
}
