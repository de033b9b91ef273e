//! Public and cross-resource bits: `/api/status`, `/healthz`, and the hooks
//! other resources call when shared state changes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::{ApiResult, ok};
use crate::state::SharedState;

/// Routes of this module.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// `GET /api/status`: public facts a dashboard needs before login.
async fn status(State(state): State<SharedState>) -> ApiResult {
    let o = state.options();
    ok(json!({
        "system_name": o.system_name,
        "version": env!("CARGO_PKG_VERSION"),
        "start_time": state.started_at,
        // An integer on the wire when whole: Go clients decode it into an int.
        "quota_per_unit": if o.quota_per_unit.fract() == 0.0 && o.quota_per_unit < 9.0e15 {
            json!(o.quota_per_unit as i64)
        } else {
            json!(o.quota_per_unit)
        },
        "display_in_currency": true,
        "quota_display_type": "USD",
        "register_enabled": o.register_enabled,
        "password_login_enabled": o.password_login_enabled,
        "self_use_mode_enabled": o.self_use_mode,
        "email_verification": false,
        "github_oauth": false,
        "oidc_enabled": false,
        "wechat_login": false,
        "turnstile_check": false,
        "setup": true,
    }))
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(),
    )
}

/// `GET /healthz`: 200 when the database answers, 503 otherwise.
async fn healthz(State(state): State<SharedState>) -> impl IntoResponse {
    if state.store.ping().await {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

/// Models reachable through enabled channels serving any of `groups`.
pub fn models_for_groups<'a>(
    state: &SharedState,
    groups: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    state.routing.load().models_for(groups.map(String::as_str))
}

/// Called after any write to a user (quota, status, role, deletion): the
/// relay must see it before the write's response returns.
pub async fn user_changed(state: &SharedState, user_id: i64) {
    crate::cache::bus::changed(state, crate::cache::bus::Change::User(user_id)).await;
}
