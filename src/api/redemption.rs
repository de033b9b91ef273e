//! `/api/redemption/` (admin): codes that add quota once (SPEC §4).

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use serde::Deserialize;

use super::token::parse_id;
use super::{Admin, ApiError, ApiResult, JsonBody, OnUnique, PageQuery, ok, ok_empty, page};
use crate::auth::keys;
use crate::state::SharedState;
use crate::store::{now, redemption_status};

/// Routes of this resource.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/redemption/", get(list).post(create).put(update))
        .route("/api/redemption", get(list).post(create).put(update))
        .route("/api/redemption/search", get(list))
        .route("/api/redemption/invalid", delete(delete_invalid))
        .route("/api/redemption/{id}", get(get_one).delete(delete_one))
}

/// Name length bounds, in characters.
pub const NAME_CHARS: std::ops::RangeInclusive<usize> = 1..=20;
/// Codes per create call.
pub const COUNT: std::ops::RangeInclusive<i64> = 1..=100;

async fn list(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    let (items, total) = state
        .store
        .list_redemptions(q.param("keyword"), q.offset(), q.page_size)
        .await?;
    page(items, total, &q)
}

async fn get_one(State(state): State<SharedState>, _a: Admin, Path(id): Path<String>) -> ApiResult {
    ok(state.store.redemption_by_id(parse_id(&id)?).await?)
}

#[derive(Deserialize)]
struct Body {
    id: Option<i64>,
    name: Option<String>,
    quota: Option<i64>,
    count: Option<i64>,
    expired_time: Option<i64>,
    status: Option<i64>,
}

fn check_name(n: &str) -> ApiResult<String> {
    let n = n.trim();
    if !NAME_CHARS.contains(&n.chars().count()) {
        return Err(ApiError::refused(format!(
            "name must be {} to {} characters",
            NAME_CHARS.start(),
            NAME_CHARS.end()
        )));
    }
    Ok(n.to_string())
}

fn check_quota(q: i64) -> ApiResult<i64> {
    if q <= 0 {
        return Err(ApiError::refused("quota must be a positive integer"));
    }
    Ok(q)
}

fn check_expiry(e: i64) -> ApiResult<i64> {
    if e != 0 && e < now() {
        return Err(ApiError::refused(
            "expired_time must be 0 (never) or in the future",
        ));
    }
    Ok(e)
}

async fn create(
    State(state): State<SharedState>,
    Admin(a): Admin,
    JsonBody(b): JsonBody<Body>,
) -> ApiResult {
    let name = check_name(b.name.as_deref().unwrap_or(""))?;
    let quota = check_quota(b.quota.unwrap_or(0))?;
    let count = b.count.unwrap_or(1);
    if !COUNT.contains(&count) {
        return Err(ApiError::refused(format!(
            "count must be between {} and {}",
            COUNT.start(),
            COUNT.end()
        )));
    }
    let expiry = check_expiry(b.expired_time.unwrap_or(0))?;
    let codes: Vec<String> = (0..count).map(|_| keys::random_alnum(32)).collect();
    state
        .store
        .create_redemptions(a.user.id, &name, quota, expiry, &codes)
        .await
        .on_unique("a generated code collided; try again")?;
    ok(codes)
}

async fn update(
    State(state): State<SharedState>,
    _a: Admin,
    q: PageQuery,
    JsonBody(b): JsonBody<Body>,
) -> ApiResult {
    let Some(id) = b.id.filter(|i| *i > 0) else {
        return Err(ApiError::refused("id is required"));
    };
    let mut r = state.store.redemption_by_id(id).await?;
    let status_only = q
        .param("status_only")
        .is_some_and(|v| v != "false" && v != "0");
    if !status_only {
        if let Some(n) = &b.name {
            r.name = check_name(n)?;
        }
        if let Some(q) = b.quota {
            r.quota = check_quota(q)?;
        }
        if let Some(e) = b.expired_time {
            r.expired_time = check_expiry(e)?;
        }
    }
    if let Some(s) = b.status {
        if s != redemption_status::ENABLED && s != redemption_status::DISABLED {
            return Err(ApiError::refused(
                "status must be 1 (enabled) or 2 (disabled)",
            ));
        }
        if r.status == redemption_status::USED {
            return Err(ApiError::refused("a used code cannot change status"));
        }
        r.status = s;
    }
    state.store.update_redemption(&r).await?;
    ok(r)
}

async fn delete_one(
    State(state): State<SharedState>,
    _a: Admin,
    Path(id): Path<String>,
) -> ApiResult {
    state.store.delete_redemption(parse_id(&id)?).await?;
    ok_empty()
}

async fn delete_invalid(State(state): State<SharedState>, _a: Admin) -> ApiResult {
    ok(state.store.delete_invalid_redemptions().await?)
}
