//! The HTTP surface: routes, request logging and the pieces each route
//! needs.

mod console;
mod graphql;
mod health;
mod logging;
mod playground;
mod stats_csv;
mod ws;

use std::net::{IpAddr, SocketAddr};

use async_graphql::ErrorExtensions;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::error::ApiError;

/// Every route the server answers.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route(
            "/graphql",
            get(graphql::get)
                .post(graphql::post)
                .layer(DefaultBodyLimit::max(state.config.graphql.max_body_bytes)),
        )
        .route("/api/stats.csv", get(stats_csv::download))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
    if state.config.server.console {
        router = router
            .route("/", get(console::to_console))
            .route("/console", get(console::to_console))
            .route("/console/", get(console::page))
            .route("/console/assets/{*path}", get(console::asset))
            .route("/console/{*page}", get(console::page));
    }
    if state.config.graphql.playground {
        router = router
            .route("/graphiql", get(playground::page))
            .route("/graphiql/assets/{name}", get(playground::asset));
    }
    router
        .layer(axum::middleware::from_fn(logging::log_request))
        .with_state(state)
}

/// The client's address: the peer, or with `server.trust_forwarded_for` the
/// last `X-Forwarded-For` entry (the one the trusted proxy added; earlier
/// entries are whatever the client sent).
fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if state.config.server.trust_forwarded_for
        && let Some(forwarded) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return forwarded;
    }
    peer.ip()
}

/// An API error outside GraphQL execution, in the GraphQL response shape
/// (`errors[0].extensions.code`, and `fields` for bad input), with the HTTP
/// status that fits it.
pub fn api_error(e: ApiError) -> Response {
    let status = match e {
        ApiError::Unauthenticated
        | ApiError::InvalidToken
        | ApiError::SessionExpired
        | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::BadUserInput(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unavailable(_) | ApiError::Internal => StatusCode::SERVICE_UNAVAILABLE,
    };
    // Built by hand: the error belongs to no place in a document, so it
    // carries no `locations`.
    let mut error = async_graphql::ServerError::new(e.message(), None);
    error.extensions = e.extend().extensions;
    let body = async_graphql::Response::from_errors(vec![error]);
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
