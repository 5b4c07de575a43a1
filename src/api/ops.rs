//! Operations endpoints: `/metrics` (OpenMetrics text), `/healthz` (liveness) and `/readyz`
//! (the store takes writes and the metadata store answers). None of them needs a login.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        app.services.core.metrics().encode(),
    )
        .into_response()
}

/// Liveness: the process answers HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 when the store works, else 503 with the reason as JSON.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.services.admin.ready().await {
        Ok(()) => axum::Json(json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "unavailable", "reason": reason })),
            )
                .into_response()
        }
    }
}
