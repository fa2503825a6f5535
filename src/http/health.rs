//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::app::AppState;

/// The process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The database answers and every migration is applied.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match crate::db::ready(&state.db).await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(not_ready) => {
            tracing::warn!(reason = %not_ready.detail, "not ready");
            // The detail can name hosts and drivers: it stays in the log.
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": not_ready.summary })),
            )
        }
    }
}

/// Prometheus metrics in the text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
