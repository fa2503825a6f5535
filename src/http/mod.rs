//! The HTTP surface: routes, request logging and the pieces each route
//! needs.

mod graphql;
mod health;
mod logging;
mod playground;
mod ws;

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::get;

use crate::app::AppState;

/// Every route the server answers.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route(
            "/graphql",
            get(graphql::get)
                .post(graphql::post)
                .layer(DefaultBodyLimit::max(state.config.graphql.max_body_bytes)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
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
