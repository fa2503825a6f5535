//! The authentication service: sign-up, login, sessions and roles.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use entity::{AuthType, session, user, user_role};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::future::Cache;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::principal::{Role, Session, SessionEvent, UserInfo};
use super::signup::{self, NewAccount};
use super::{password, token};
use crate::config::AuthConfig;
use crate::error::{ApiError, FieldErrors};

/// A freshly issued (or refreshed) session and its token.
pub struct Issued {
    pub token: String,
    pub session: Arc<Session>,
}

/// Sign-up, login and session lookups. Cheap to clone.
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    config: AuthConfig,
    cache: Cache<String, Arc<Session>>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    events: broadcast::Sender<SessionEvent>,
    /// Hash verified when a login names no account, so that a wrong
    /// username costs as long as a wrong password.
    dummy_hash: String,
    session_db_reads: AtomicU64,
    password_verifications: AtomicU64,
    /// Bumped by every change that invalidates cached sessions (logout,
    /// role or password change). A lookup that raced with such a change
    /// drops what it just cached, so a stale entry cannot outlive the
    /// invalidation.
    epoch: AtomicU64,
}

impl AuthService {
    pub async fn new(db: DatabaseConnection, config: AuthConfig) -> anyhow::Result<Self> {
        let cache = Cache::builder()
            .max_capacity(config.session_cache_capacity)
            .time_to_live(Duration::from_secs(config.session_cache_ttl_secs))
            .support_invalidation_closures()
            .build();
        let per_minute = NonZeroU32::new(config.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst));
        let (events, _) = broadcast::channel(1024);
        let dummy_hash = password::hash(token::generate()).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                config,
                cache,
                limiter,
                events,
                dummy_hash,
                session_db_reads: AtomicU64::new(0),
                password_verifications: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        })
    }

    /// Session and user changes, for WebSocket connections to follow.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    /// How many session lookups went to the database (cache misses).
    pub fn session_db_reads(&self) -> u64 {
        self.inner.session_db_reads.load(Ordering::Relaxed)
    }

    /// How many login attempts verified a password hash. Every attempt
    /// does, whether or not the account exists: that is what makes a wrong
    /// username cost as much as a wrong password.
    pub fn password_verifications(&self) -> u64 {
        self.inner.password_verifications.load(Ordering::Relaxed)
    }

    /// Drops every cached session; the next lookup of each reads the
    /// database. For operators and tests: sessions stay valid.
    pub fn clear_cache(&self) {
        self.inner.cache.invalidate_all();
    }

    /// Counts one sign-up or login attempt from `addr`.
    pub fn check_rate(&self, addr: IpAddr) -> Result<(), ApiError> {
        self.inner.limiter.check_key(&addr).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // The address itself is personal data; the event is what matters.
            tracing::warn!("sign-up/login rate limit exceeded");
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            }
        })
    }

    fn lifetime(&self, auth_type: AuthType) -> TimeDelta {
        let secs = match auth_type {
            AuthType::User => self.inner.config.session_lifetime_secs,
            AuthType::Anon => self.inner.config.anonymous_session_lifetime_secs,
        };
        TimeDelta::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
    }

    /// Resolves a bearer token to its session, extending the session when
    /// more than half its lifetime has passed.
    pub async fn authenticate(&self, bearer: &str) -> Result<Arc<Session>, ApiError> {
        let digest = token::digest(bearer).ok_or(ApiError::InvalidToken)?;
        let now = Utc::now();
        if let Some(cached) = self.inner.cache.get(&digest).await
            && cached.expires_at > now
        {
            return self.slide(cached, now).await;
        }
        self.inner.session_db_reads.fetch_add(1, Ordering::Relaxed);
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let row = session::Entity::find()
            .filter(session::Column::TokenHash.eq(digest.as_str()))
            .one(&self.inner.db)
            .await?;
        let Some(row) = row else {
            self.inner.cache.invalidate(&digest).await;
            return Err(ApiError::InvalidToken);
        };
        if row.expires_at <= now {
            self.inner.cache.invalidate(&digest).await;
            return Err(ApiError::SessionExpired);
        }
        let session = Arc::new(self.load(row).await?);
        self.cache_unless_changed(digest, session.clone(), epoch)
            .await;
        self.slide(session, now).await
    }

    async fn slide(
        &self,
        session: Arc<Session>,
        now: DateTime<Utc>,
    ) -> Result<Arc<Session>, ApiError> {
        let lifetime = self.lifetime(session.auth_type);
        if session.expires_at - now >= lifetime / 2 {
            return Ok(session);
        }
        self.extend(&session, now).await
    }

    /// Caches a session read from the database, unless an invalidation
    /// happened since the read began (`epoch` was read before it).
    async fn cache_unless_changed(&self, digest: String, session: Arc<Session>, epoch: u64) {
        self.inner.cache.insert(digest.clone(), session).await;
        if self.inner.epoch.load(Ordering::SeqCst) != epoch {
            self.inner.cache.invalidate(&digest).await;
        }
    }

    /// Marks cached sessions stale before they are invalidated.
    fn bump_epoch(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
    }

    async fn extend(
        &self,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<Arc<Session>, ApiError> {
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let expires_at = now + self.lifetime(session.auth_type);
        let updated = session::Entity::update_many()
            .col_expr(session::Column::ExpiresAt, expires_at.into())
            .col_expr(session::Column::LastSeenAt, now.into())
            .filter(session::Column::Id.eq(session.id))
            .exec(&self.inner.db)
            .await?;
        if updated.rows_affected == 0 {
            // Ended by someone else (another replica's logout) meanwhile.
            self.inner.cache.invalidate(&session.token_digest).await;
            return Err(ApiError::InvalidToken);
        }
        let extended = Arc::new(Session {
            expires_at,
            ..session.clone()
        });
        self.cache_unless_changed(session.token_digest.clone(), extended.clone(), epoch)
            .await;
        tracing::debug!(session_id = %session.id, expires_at = %expires_at, "session extended");
        Ok(extended)
    }

    /// Builds the cached form of a session row: its user and roles.
    async fn load(&self, row: session::Model) -> Result<Session, ApiError> {
        let (user, roles) = match row.user_id {
            Some(user_id) => {
                let user = user::Entity::find_by_id(user_id)
                    .one(&self.inner.db)
                    .await?
                    .ok_or(ApiError::InvalidToken)?;
                let roles = self.roles_of(user_id).await?;
                (Some(user_info(&user)), roles)
            }
            None => (None, Vec::new()),
        };
        Ok(Session {
            id: row.id,
            token_digest: row.token_hash,
            auth_type: row.auth_type,
            user,
            roles,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }

    async fn roles_of(&self, user_id: Uuid) -> Result<Vec<Role>, ApiError> {
        let rows = user_role::Entity::find()
            .filter(user_role::Column::UserId.eq(user_id))
            .order_by_asc(user_role::Column::Role)
            .all(&self.inner.db)
            .await?;
        Ok(rows.iter().filter_map(|r| Role::parse(&r.role)).collect())
    }

    /// Opens a session for `user` (or an anonymous one) and caches it.
    async fn open(&self, user: Option<(UserInfo, Vec<Role>)>) -> Result<Issued, ApiError> {
        let token = token::generate();
        let digest = token::digest(&token).ok_or(ApiError::Internal)?;
        let now = Utc::now();
        let auth_type = if user.is_some() {
            AuthType::User
        } else {
            AuthType::Anon
        };
        let (user, roles) = user.map_or((None, Vec::new()), |(u, r)| (Some(u), r));
        let session = Session {
            id: Uuid::now_v7(),
            token_digest: digest.clone(),
            auth_type,
            user,
            roles,
            created_at: now,
            expires_at: now + self.lifetime(auth_type),
        };
        session::Entity::insert(session::ActiveModel {
            id: Set(session.id),
            token_hash: Set(digest.clone()),
            auth_type: Set(auth_type),
            user_id: Set(session.user_id()),
            created_at: Set(now),
            expires_at: Set(session.expires_at),
            last_seen_at: Set(now),
        })
        .exec(&self.inner.db)
        .await?;
        let session = Arc::new(session);
        self.inner.cache.insert(digest, session.clone()).await;
        tracing::info!(session_id = %session.id, auth_type = ?auth_type, user_id = ?session.user_id(), "session started");
        Ok(Issued { token, session })
    }

    pub async fn start_anonymous(&self) -> Result<Issued, ApiError> {
        self.open(None).await
    }

    /// Creates an account after checking every rule, reporting all failures
    /// at once. Nothing is stored when any rule fails.
    pub async fn create_user(
        &self,
        account: NewAccount,
        roles: &[Role],
    ) -> Result<UserInfo, ApiError> {
        let mut fields = account.check();
        let username_key = account.username_key();
        let email_key = account.email_key();
        if !fields.contains_key("username") && self.username_taken(&username_key).await? {
            push(&mut fields, "username", "is already taken");
        }
        if !fields.contains_key("email") && self.email_taken(&email_key).await? {
            push(&mut fields, "email", "is already registered");
        }
        if !fields.is_empty() {
            return Err(ApiError::BadUserInput(fields));
        }
        let hash = password::hash(account.password)
            .await
            .map_err(|e| ApiError::internal("password hashing", e))?;
        let now = Utc::now();
        let id = Uuid::now_v7();
        let txn = self.inner.db.begin().await?;
        let inserted = user::Entity::insert(user::ActiveModel {
            id: Set(id),
            username: Set(account.username.clone()),
            username_key: Set(username_key.clone()),
            email: Set(account.email.clone()),
            email_key: Set(email_key),
            password_hash: Set(hash),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec(&txn)
        .await;
        if let Err(e) = inserted {
            // Lost a race with a sign-up of the same name or email.
            if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
                let field = if self.username_taken(&username_key).await? {
                    ("username", "is already taken")
                } else {
                    ("email", "is already registered")
                };
                return Err(ApiError::field(field.0, field.1));
            }
            return Err(e.into());
        }
        for role in roles {
            insert_role(&txn, id, *role, now).await?;
        }
        txn.commit().await?;
        tracing::info!(user_id = %id, roles = ?roles, "user created");
        Ok(UserInfo {
            id,
            username: account.username,
            email: account.email,
        })
    }

    async fn username_taken(&self, key: &str) -> Result<bool, ApiError> {
        Ok(user::Entity::find()
            .filter(user::Column::UsernameKey.eq(key))
            .one(&self.inner.db)
            .await?
            .is_some())
    }

    async fn email_taken(&self, key: &str) -> Result<bool, ApiError> {
        Ok(user::Entity::find()
            .filter(user::Column::EmailKey.eq(key))
            .one(&self.inner.db)
            .await?
            .is_some())
    }

    /// Creates an account and signs it in.
    pub async fn signup(&self, account: NewAccount) -> Result<Issued, ApiError> {
        let user = self.create_user(account, &[]).await?;
        self.open(Some((user, Vec::new()))).await
    }

    /// Signs in with a username or an email. Unknown accounts and wrong
    /// passwords cost the same and give the same error.
    pub async fn login(&self, login: &str, password: &str) -> Result<Issued, ApiError> {
        if password.chars().count() > password::MAX_LEN {
            return Err(ApiError::field(
                "password",
                "must be at most 128 characters long",
            ));
        }
        let filter = if login.contains('@') {
            user::Column::EmailKey.eq(signup::email_key(login))
        } else {
            user::Column::UsernameKey.eq(signup::username_key(login))
        };
        let found = user::Entity::find()
            .filter(filter)
            .one(&self.inner.db)
            .await?;
        let phc = found.as_ref().map_or_else(
            || self.inner.dummy_hash.clone(),
            |u| u.password_hash.clone(),
        );
        self.inner
            .password_verifications
            .fetch_add(1, Ordering::Relaxed);
        let matches = password::verify(password.to_owned(), phc)
            .await
            .map_err(|e| ApiError::internal("password verification", e))?;
        let user = match found {
            Some(user) if matches => user,
            _ => {
                tracing::info!("login refused");
                return Err(ApiError::InvalidCredentials);
            }
        };
        let roles = self.roles_of(user.id).await?;
        self.open(Some((user_info(&user), roles))).await
    }

    /// Extends a session to a full lifetime from now.
    pub async fn refresh(&self, session: &Session) -> Result<Arc<Session>, ApiError> {
        self.extend(session, Utc::now()).await
    }

    /// Ends a session everywhere at once.
    pub async fn logout(&self, session: &Session) -> Result<(), ApiError> {
        session::Entity::delete_by_id(session.id)
            .exec(&self.inner.db)
            .await?;
        self.bump_epoch();
        self.inner.cache.invalidate(&session.token_digest).await;
        let _no_listeners = self.inner.events.send(SessionEvent::Ended {
            session_id: session.id,
        });
        tracing::info!(session_id = %session.id, "session ended by logout");
        Ok(())
    }

    /// Changes the caller's password and ends the user's other sessions.
    pub async fn change_password(
        &self,
        session: &Session,
        current: &str,
        new: &str,
    ) -> Result<(), ApiError> {
        let Some(user) = &session.user else {
            return Err(ApiError::Unauthenticated);
        };
        let row = user::Entity::find_by_id(user.id)
            .one(&self.inner.db)
            .await?
            .ok_or(ApiError::NotFound("user"))?;
        let rules = NewAccount {
            username: row.username.clone(),
            email: row.email.clone(),
            password: new.to_owned(),
        };
        if let Some(messages) = rules.check().remove("password") {
            let mut fields = FieldErrors::new();
            fields.insert("newPassword".to_owned(), messages);
            return Err(ApiError::BadUserInput(fields));
        }
        if current.chars().count() > password::MAX_LEN
            || !password::verify(current.to_owned(), row.password_hash.clone())
                .await
                .map_err(|e| ApiError::internal("password verification", e))?
        {
            return Err(ApiError::field(
                "currentPassword",
                "is not the current password",
            ));
        }
        let hash = password::hash(new.to_owned())
            .await
            .map_err(|e| ApiError::internal("password hashing", e))?;
        let txn = self.inner.db.begin().await?;
        user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, hash.into())
            .col_expr(user::Column::UpdatedAt, Utc::now().into())
            .filter(user::Column::Id.eq(user.id))
            .exec(&txn)
            .await?;
        let others = session::Entity::find()
            .filter(session::Column::UserId.eq(user.id))
            .filter(session::Column::Id.ne(session.id))
            .all(&txn)
            .await?;
        session::Entity::delete_many()
            .filter(session::Column::UserId.eq(user.id))
            .filter(session::Column::Id.ne(session.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        self.bump_epoch();
        for other in &others {
            self.inner.cache.invalidate(&other.token_hash).await;
            let _no_listeners = self.inner.events.send(SessionEvent::Ended {
                session_id: other.id,
            });
        }
        tracing::info!(user_id = %user.id, sessions_ended = others.len(), "password changed");
        Ok(())
    }

    /// Replaces a user's roles. Cached sessions of that user are dropped so
    /// that the change holds on the next call.
    pub async fn set_roles(&self, user_id: Uuid, roles: &[Role]) -> Result<Vec<Role>, ApiError> {
        let txn = self.inner.db.begin().await?;
        user::Entity::find_by_id(user_id)
            .one(&txn)
            .await?
            .ok_or(ApiError::NotFound("user"))?;
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(user_id))
            .exec(&txn)
            .await?;
        let now = Utc::now();
        for role in roles {
            insert_role(&txn, user_id, *role, now).await?;
        }
        txn.commit().await?;
        self.user_changed(user_id);
        tracing::info!(user_id = %user_id, roles = ?roles, "roles changed");
        self.roles_of(user_id).await
    }

    /// Grants one role to the user named `username`.
    pub async fn grant_role(&self, username: &str, role: Role) -> Result<UserInfo, ApiError> {
        let user = user::Entity::find()
            .filter(user::Column::UsernameKey.eq(signup::username_key(username)))
            .one(&self.inner.db)
            .await?
            .ok_or(ApiError::NotFound("user"))?;
        insert_role(&self.inner.db, user.id, role, Utc::now()).await?;
        self.user_changed(user.id);
        tracing::info!(user_id = %user.id, role = role.as_str(), "role granted");
        Ok(user_info(&user))
    }

    fn user_changed(&self, user_id: Uuid) {
        self.bump_epoch();
        // Invalidation closures only fail when the cache was built without
        // support for them, which `new` always enables.
        let _ = self
            .inner
            .cache
            .invalidate_entries_if(move |_, s| s.user_id() == Some(user_id));
        let _no_listeners = self
            .inner
            .events
            .send(SessionEvent::UserChanged { user_id });
    }

    /// Periodic upkeep: forgets rate-limit state of quiet addresses and
    /// deletes sessions that expired more than 30 days ago (younger expired
    /// sessions are kept so their tokens still answer `SESSION_EXPIRED`).
    pub async fn housekeeping(&self) -> Result<(), ApiError> {
        self.inner.limiter.retain_recent();
        let cutoff = Utc::now() - TimeDelta::days(30);
        let deleted = session::Entity::delete_many()
            .filter(session::Column::ExpiresAt.lt(cutoff))
            .exec(&self.inner.db)
            .await?;
        if deleted.rows_affected > 0 {
            tracing::info!(
                sessions_deleted = deleted.rows_affected,
                "expired sessions deleted"
            );
        }
        Ok(())
    }

    /// The stand-in hash verified for unknown accounts.
    pub fn stand_in_hash(&self) -> &str {
        &self.inner.dummy_hash
    }

    /// A page of accounts with their roles, newest first, after the
    /// `(created_at, id)` of `after`; one more than `limit` when there are
    /// more.
    pub async fn list_users(
        &self,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u64,
    ) -> Result<Vec<(user::Model, Vec<Role>)>, ApiError> {
        let mut query = user::Entity::find()
            .order_by_desc(user::Column::CreatedAt)
            .order_by_desc(user::Column::Id)
            .limit(limit);
        if let Some((at, id)) = after {
            query = query.filter(
                Condition::any().add(user::Column::CreatedAt.lt(at)).add(
                    Condition::all()
                        .add(user::Column::CreatedAt.eq(at))
                        .add(user::Column::Id.lt(id)),
                ),
            );
        }
        let users = query.all(&self.inner.db).await?;
        // One query for every row's roles.
        let ids: Vec<Uuid> = users.iter().map(|u| u.id).collect();
        let mut roles: std::collections::HashMap<Uuid, Vec<Role>> =
            std::collections::HashMap::new();
        for r in user_role::Entity::find()
            .filter(user_role::Column::UserId.is_in(ids))
            .order_by_asc(user_role::Column::Role)
            .all(&self.inner.db)
            .await?
        {
            if let Some(role) = Role::parse(&r.role) {
                roles.entry(r.user_id).or_default().push(role);
            }
        }
        Ok(users
            .into_iter()
            .map(|u| {
                let held = roles.remove(&u.id).unwrap_or_default();
                (u, held)
            })
            .collect())
    }
}

fn push(fields: &mut FieldErrors, field: &str, message: &str) {
    fields
        .entry(field.to_owned())
        .or_default()
        .push(message.to_owned());
}

fn user_info(user: &user::Model) -> UserInfo {
    UserInfo {
        id: user.id,
        username: user.username.clone(),
        email: user.email.clone(),
    }
}

async fn insert_role<C: sea_orm::ConnectionTrait>(
    db: &C,
    user_id: Uuid,
    role: Role,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    user_role::Entity::insert(user_role::ActiveModel {
        user_id: Set(user_id),
        role: Set(role.as_str().to_owned()),
        granted_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([user_role::Column::UserId, user_role::Column::Role])
            .do_nothing()
            .to_owned(),
    )
    .try_insert()
    .exec(db)
    .await?;
    Ok(())
}
