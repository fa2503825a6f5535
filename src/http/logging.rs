//! One log event per HTTP request: method, path (never the query string,
//! which may hold GraphQL variables), status and duration.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

pub async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    if path == "/healthz" || path == "/readyz" {
        // Probes come every few seconds; they would drown everything else.
        tracing::debug!(method = %method, path, status, duration_ms, "http request");
    } else if status >= 500 {
        tracing::warn!(method = %method, path, status, duration_ms, "http request");
    } else {
        tracing::info!(method = %method, path, status, duration_ms, "http request");
    }
    response
}
