//! The one error type at the API edge.
//!
//! Every error a client sees carries a stable `extensions.code`. Internal
//! causes are logged once, where they are turned into [`ApiError::Internal`],
//! and never sent to the client.

use std::collections::BTreeMap;

use async_graphql::ErrorExtensions;

/// Messages per input field, as sent in `extensions.fields`.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Deliberately not `Display`: async-graphql turns any `Display` type into an
/// error without extensions, and every error here must carry its code. The
/// conversion below is the only way into a GraphQL error.
#[derive(Debug, Clone)]
pub enum ApiError {
    Unauthenticated,
    SessionExpired,
    InvalidToken,
    InvalidCredentials,
    Forbidden(&'static str),
    BadUserInput(FieldErrors),
    NotFound(&'static str),
    RateLimited {
        retry_after_secs: u64,
    },
    /// This server cannot do it now (another one runs the scaler).
    Unavailable(&'static str),
    Internal,
}

impl ApiError {
    /// The stable `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated | ApiError::InvalidToken => "UNAUTHENTICATED",
            ApiError::SessionExpired => "SESSION_EXPIRED",
            ApiError::InvalidCredentials => "INVALID_CREDENTIALS",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::BadUserInput(_) => "BAD_USER_INPUT",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Unavailable(_) => "UNAVAILABLE",
            ApiError::Internal => "INTERNAL",
        }
    }

    /// A bad-input error for one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut fields = FieldErrors::new();
        fields.insert(field.to_owned(), vec![message.into()]);
        ApiError::BadUserInput(fields)
    }

    /// Logs an internal failure and hides it from the client.
    pub fn internal(context: &'static str, error: impl std::fmt::Display) -> Self {
        tracing::error!(context, error = %error, "internal error");
        ApiError::Internal
    }

    /// The client-facing message, with field details folded in for clients
    /// that only show `message`.
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated => "authentication required".to_owned(),
            ApiError::SessionExpired => {
                "the session has expired; sign in again or start a new session".to_owned()
            }
            ApiError::InvalidToken => "the bearer token is malformed or unknown".to_owned(),
            ApiError::InvalidCredentials => "invalid login or password".to_owned(),
            ApiError::Forbidden(permission) => format!("this needs the {permission} permission"),
            ApiError::BadUserInput(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .flat_map(|(field, msgs)| msgs.iter().map(move |m| format!("{field} {m}")))
                    .collect();
                format!("invalid input: {}", parts.join("; "))
            }
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::RateLimited { retry_after_secs } => {
                format!("too many attempts from this address; retry in {retry_after_secs} s")
            }
            ApiError::Unavailable(why) => (*why).to_owned(),
            ApiError::Internal => "internal error".to_owned(),
        }
    }
}

/// Moves a bad-input error's fields into `errors`, so that several checks
/// report together; other errors pass through.
pub fn absorb<T>(
    errors: &mut FieldErrors,
    result: Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ApiError::BadUserInput(fields)) => {
            for (field, messages) in fields {
                errors.entry(field).or_default().extend(messages);
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::internal("database", e)
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.message()).extend_with(|_, ext| {
            ext.set("code", self.code());
            match self {
                ApiError::BadUserInput(fields) => {
                    let map: async_graphql::indexmap::IndexMap<
                        async_graphql::Name,
                        async_graphql::Value,
                    > = fields
                        .iter()
                        .map(|(k, v)| {
                            let list = v.iter().map(|m| async_graphql::Value::from(m.as_str()));
                            (
                                async_graphql::Name::new(k),
                                async_graphql::Value::List(list.collect()),
                            )
                        })
                        .collect();
                    ext.set("fields", async_graphql::Value::Object(map));
                }
                ApiError::RateLimited { retry_after_secs } => {
                    ext.set("retryAfterSeconds", *retry_after_secs);
                }
                _ => {}
            }
        })
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        e.extend()
    }
}
