//! The management API (`/api/...`), wire-compatible with new-api.
//!
//! Every answer is the envelope `{"success", "message", "data"}`. Business
//! errors are HTTP 200 with `success:false` (as new-api); authentication
//! failures 401, authorization failures 403, malformed input 400 — all with the
//! envelope. [`ApiError`] is the one place that decides this.

pub mod channel;
mod extract;
pub mod log;
pub mod misc;
pub mod option;
pub mod redemption;
pub mod token;
pub mod user;

pub use extract::{Admin, ClientIp, JsonBody, PageQuery, Principal, Root, parse_json};

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::state::SharedState;
use crate::store::{NewLog, StoreError, log_type, now};

/// All management routes.
pub fn router() -> Router<SharedState> {
    Router::new()
        .merge(misc::router())
        .merge(user::router())
        .merge(token::router())
        .merge(option::router())
        .merge(redemption::router())
        .merge(channel::router())
        .merge(log::router())
}

/// Errors a management handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refused request: HTTP 200, `success:false`, the message says why.
    #[error("{0}")]
    Refused(String),
    /// Malformed request (bad JSON, wrong types): HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// No or bad credentials: HTTP 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed: HTTP 403.
    #[error("{0}")]
    Forbidden(String),
    /// Body over the size limit: HTTP 413.
    #[error("{0}")]
    TooLarge(String),
    /// The body did not arrive in time: HTTP 408.
    #[error("{0}")]
    Timeout(String),
    /// Throttled: HTTP 429.
    #[error("{0}")]
    TooManyRequests(String),
    /// A fault on our side: HTTP 500; details go to the log, not the client.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for handlers.
pub type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    /// Shorthand for a refused request.
    pub fn refused(msg: impl Into<String>) -> Self {
        ApiError::Refused(msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Refused(m) => (StatusCode::OK, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Timeout(m) => (StatusCode::REQUEST_TIMEOUT, m),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "management request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error".to_string(),
                )
            }
        };
        (status, Json(json!({"success": false, "message": message}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::refused("record not found"),
            StoreError::Unique(m) => ApiError::refused(format!("already exists: {m}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Key retrievals (`POST /api/token/:id/key`, `/batch/keys`) per user per minute.
pub const KEY_VIEWS_PER_MINUTE: i64 = 30;
/// Login and registration attempts per client IP per minute.
pub const LOGINS_PER_MINUTE: i64 = 20;

/// Throttles a sensitive route: at most `per_minute` hits a minute for
/// `who`, counted across replicas when Redis is configured. When the
/// counters cannot be reached the request passes (a Redis outage must not
/// lock everyone out of the dashboard) and the failure is logged.
pub async fn throttle(
    state: &crate::state::AppState,
    what: &'static str,
    who: &str,
    per_minute: i64,
) -> ApiResult<()> {
    let limit = crate::ratelimit::Limit {
        key: format!("th:{what}:{who}"),
        window: std::time::Duration::from_secs(60),
        max: per_minute,
        measure: crate::ratelimit::Measure::Requests,
        owner: "client",
    };
    match state.limiter.admit(std::slice::from_ref(&limit)).await {
        Ok(None) => Ok(()),
        Ok(Some(r)) => Err(ApiError::TooManyRequests(format!(
            "too many {what} attempts; try again in {} s",
            r.retry_after.as_secs().max(1)
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "throttle unavailable; letting the request through");
            Ok(())
        }
    }
}

/// Turns a unique-key violation into a refusal naming the field, in one line:
/// `store.create_user(&u).await.on_unique("username is already taken")?`.
pub trait OnUnique<T> {
    /// Maps [`StoreError::Unique`] to `ApiError::Refused(msg)`.
    fn on_unique(self, msg: &str) -> Result<T, ApiError>;
}

impl<T> OnUnique<T> for Result<T, StoreError> {
    fn on_unique(self, msg: &str) -> Result<T, ApiError> {
        self.map_err(|e| match e {
            StoreError::Unique(_) => ApiError::refused(msg),
            other => other.into(),
        })
    }
}

/// Success with `data`.
pub fn ok<T: Serialize>(data: T) -> ApiResult {
    let data = serde_json::to_value(data).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({"success": true, "message": "", "data": data})).into_response())
}

/// Success without `data` (as new-api answers create, delete, …).
pub fn ok_empty() -> ApiResult {
    Ok(Json(json!({"success": true, "message": ""})).into_response())
}

/// A page as new-api shapes it.
pub fn page<T: Serialize>(items: Vec<T>, total: i64, q: &PageQuery) -> ApiResult {
    ok(json!({
        "items": items,
        "total": total,
        "page": q.page,
        "page_size": q.page_size,
    }))
}

/// Writes a manage-type ledger row naming who did what to whose data.
pub async fn audit(
    state: &SharedState,
    actor: &Principal,
    target_user_id: i64,
    action: &str,
    content: String,
    detail: Value,
    ip: &str,
) -> ApiResult<()> {
    let mut other = json!({
        "action": action,
        "actor_id": actor.user.id,
        "actor_username": actor.user.username,
        "target_user_id": target_user_id,
    });
    if let (Some(o), Value::Object(d)) = (other.as_object_mut(), detail) {
        o.extend(d);
    }
    let target_name = match state.store.user_by_id(target_user_id).await {
        Ok(u) => u.username,
        Err(_) => String::new(),
    };
    state
        .store
        .insert_log(&NewLog {
            created_at: now(),
            log_type: log_type::MANAGE,
            content,
            user_id: target_user_id,
            username: target_name,
            ip: ip.to_string(),
            other: other.to_string(),
            ..Default::default()
        })
        .await?;
    Ok(())
}
