//! Sign-up, login, sessions and the viewer.

use std::sync::Arc;

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::guard::{RequireSession, RequireUser, session};
use super::{BearerToken, ClientAddr};
use crate::auth::signup::NewAccount;
use crate::auth::{AuthService, Issued, Permission, Role, Session, SessionEvent};
use crate::error::ApiError;

/// How a session was started.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// Started with `startAnonymousSession`; no account.
    Anon,
    /// Signed in to an account.
    User,
}

impl From<entity::AuthType> for AuthType {
    fn from(t: entity::AuthType) -> Self {
        match t {
            entity::AuthType::Anon => AuthType::Anon,
            entity::AuthType::User => AuthType::User,
        }
    }
}

impl From<AuthType> for entity::AuthType {
    fn from(t: AuthType) -> Self {
        match t {
            AuthType::Anon => entity::AuthType::Anon,
            AuthType::User => entity::AuthType::User,
        }
    }
}

/// The caller, as its session sees it.
#[derive(SimpleObject, Debug, Clone)]
pub struct Viewer {
    /// The user id for `USER` sessions, the session id for `ANON` ones: the
    /// principal that owns what this session submits.
    id: ID,
    session_id: ID,
    auth_type: AuthType,
    /// Null for anonymous sessions.
    username: Option<String>,
    /// Null for anonymous sessions.
    email: Option<String>,
    roles: Vec<Role>,
    /// Everything the roles allow, so that a front end can cache them.
    permissions: Vec<Permission>,
    session_expires_at: DateTime<Utc>,
}

impl From<&Session> for Viewer {
    fn from(s: &Session) -> Self {
        Viewer {
            id: ID(s.principal_id().to_string()),
            session_id: ID(s.id.to_string()),
            auth_type: s.auth_type.into(),
            username: s.user.as_ref().map(|u| u.username.clone()),
            email: s.user.as_ref().map(|u| u.email.clone()),
            roles: s.roles.clone(),
            permissions: s.permissions(),
            session_expires_at: s.expires_at,
        }
    }
}

/// A session token and who it belongs to.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <token>`. Shown only here.
    token: String,
    expires_at: DateTime<Utc>,
    viewer: Viewer,
}

impl From<Issued> for AuthPayload {
    fn from(i: Issued) -> Self {
        AuthPayload {
            token: i.token,
            expires_at: i.session.expires_at,
            viewer: Viewer::from(i.session.as_ref()),
        }
    }
}

#[derive(InputObject)]
pub struct SignupInput {
    /// 3-32 characters: ASCII letters, digits, `_`, `.`, `-`; starts with a
    /// letter; unique without regard to case.
    username: String,
    /// Required; unique without regard to case.
    email: String,
    /// 8-128 characters, not containing the username.
    password: String,
}

#[derive(InputObject)]
pub struct LoginInput {
    /// A username or an email address.
    login: String,
    password: String,
}

#[derive(InputObject)]
pub struct ChangePasswordInput {
    current_password: String,
    /// The sign-up rules apply.
    new_password: String,
}

fn auth<'a>(ctx: &Context<'a>) -> &'a AuthService {
    ctx.data_unchecked::<AuthService>()
}

fn rate_limit(ctx: &Context<'_>) -> Result<(), ApiError> {
    match ctx.data_opt::<ClientAddr>() {
        Some(addr) => auth(ctx).check_rate(addr.0),
        None => Ok(()),
    }
}

#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The caller; null without a session.
    async fn me(&self, ctx: &Context<'_>) -> Option<Viewer> {
        ctx.data_opt::<Arc<Session>>()
            .map(|s| Viewer::from(s.as_ref()))
    }
}

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Creates an account and signs it in. Every broken rule is reported at
    /// once in `extensions.fields`; nothing is stored then.
    async fn signup(&self, ctx: &Context<'_>, input: SignupInput) -> Result<AuthPayload> {
        rate_limit(ctx)?;
        let account = NewAccount {
            username: input.username,
            email: input.email,
            password: input.password,
        };
        Ok(auth(ctx).signup(account).await?.into())
    }

    /// Signs in with a username or email and a password.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        rate_limit(ctx)?;
        Ok(auth(ctx).login(&input.login, &input.password).await?.into())
    }

    /// Starts a session with no account, for submitting requests.
    /// Rate-limited per client address, as sign-up and login are.
    async fn start_anonymous_session(&self, ctx: &Context<'_>) -> Result<AuthPayload> {
        rate_limit(ctx)?;
        Ok(auth(ctx).start_anonymous().await?.into())
    }

    /// Extends the caller's session to a full lifetime from now. The token
    /// stays the same.
    #[graphql(guard = "RequireSession")]
    async fn refresh_session(&self, ctx: &Context<'_>) -> Result<AuthPayload> {
        let current = session(ctx)?;
        let token = ctx
            .data_opt::<BearerToken>()
            .map(|t| t.0.clone())
            .ok_or(ApiError::Unauthenticated)?;
        let session = auth(ctx).refresh(current).await?;
        Ok(Issued { token, session }.into())
    }

    /// Ends the caller's session on every connection at once.
    #[graphql(guard = "RequireSession")]
    async fn logout(&self, ctx: &Context<'_>) -> Result<bool> {
        auth(ctx).logout(session(ctx)?).await?;
        Ok(true)
    }

    /// Changes the caller's password and ends the user's other sessions.
    #[graphql(guard = "RequireUser")]
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> Result<bool> {
        rate_limit(ctx)?;
        auth(ctx)
            .change_password(session(ctx)?, &input.current_password, &input.new_password)
            .await?;
        Ok(true)
    }
}

#[derive(Default)]
pub struct AccountSubscription;

#[Subscription]
impl AccountSubscription {
    /// The caller, now and again after every change to its roles; ends when
    /// the session ends.
    #[graphql(guard = "RequireSession")]
    async fn viewer(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = Viewer>> {
        let auth = auth(ctx).clone();
        let state = ViewerFeed {
            session: session(ctx)?.clone(),
            events: auth.events(),
            auth,
            token: ctx.data_opt::<BearerToken>().map(|t| t.0.clone()),
            started: false,
        };
        Ok(futures_util::stream::unfold(state, ViewerFeed::next))
    }
}

struct ViewerFeed {
    session: Arc<Session>,
    auth: AuthService,
    events: broadcast::Receiver<SessionEvent>,
    token: Option<String>,
    started: bool,
}

impl ViewerFeed {
    async fn next(mut self) -> Option<(Viewer, Self)> {
        if !self.started {
            self.started = true;
            return Some((Viewer::from(self.session.as_ref()), self));
        }
        loop {
            let reload = match self.events.recv().await {
                Ok(SessionEvent::Ended { session_id }) => {
                    if session_id == self.session.id {
                        return None;
                    }
                    false
                }
                Ok(SessionEvent::UserChanged { user_id }) => {
                    Some(user_id) == self.session.user_id()
                }
                // Missed events: look again rather than guess.
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return None,
            };
            if reload {
                let token = self.token.as_deref()?;
                self.session = self.auth.authenticate(token).await.ok()?;
                return Some((Viewer::from(self.session.as_ref()), self));
            }
        }
    }
}
