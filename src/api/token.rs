//! `/api/token/…`: the API keys a user holds (SPEC §3), and
//! `GET /api/usage/token` for a key to read its own balance.
//!
//! A user sees only their own tokens; root may act on anyone's, and each such
//! act (and each view of another user's full key) writes a manage-type log row.
//! Another user's token id answers exactly as a missing one does, because both
//! go through the same owner-filtered query.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult, ClientIp, JsonBody, PageQuery, Principal, audit, ok, ok_empty, page,
};
use crate::auth::keys;
use crate::auth::limits::{parse_allow_ips, parse_model_limits};
use crate::state::SharedState;
use crate::store::{CreateTokenError, Owner, Token, now, token_status};

/// Routes of this resource.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/token/", get(list).post(create).put(update))
        .route("/api/token", get(list).post(create).put(update))
        .route("/api/token/search", get(search))
        .route("/api/token/batch", post(batch_delete))
        .route("/api/token/batch/keys", post(batch_keys))
        .route("/api/token/{id}", get(get_one).delete(delete_one))
        .route("/api/token/{id}/key", post(full_key))
        .route("/api/usage/token", get(usage))
        .route("/api/usage/token/", get(usage))
}

/// Longest token name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 50;
/// Largest per-key rate limit (requests or tokens per minute).
pub const MAX_RATE_LIMIT: i64 = 1_000_000_000;
/// Most ids one batch call may name.
pub const MAX_BATCH_IDS: usize = 100;

/// A token as the API shows it. `key` is the 48-character body (no `sk-`):
/// masked in lists, in full only where the owner asked for it.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: i64,
    pub user_id: i64,
    pub key: String,
    pub name: String,
    pub status: i64,
    pub created_time: i64,
    pub accessed_time: i64,
    pub expired_time: i64,
    pub remain_quota: i64,
    pub unlimited_quota: bool,
    pub used_quota: i64,
    pub model_limits_enabled: bool,
    pub model_limits: String,
    pub allow_ips: String,
    pub group: String,
    pub rpm_limit: i64,
    pub tpm_limit: i64,
}

impl TokenView {
    fn new(t: &Token, key: String) -> TokenView {
        TokenView {
            id: t.id,
            user_id: t.user_id,
            key,
            name: t.name.clone(),
            status: t.status,
            created_time: t.created_time,
            accessed_time: t.accessed_time,
            expired_time: t.expired_time,
            remain_quota: t.remain_quota,
            unlimited_quota: t.unlimited_quota,
            used_quota: t.used_quota,
            model_limits_enabled: t.model_limits_enabled,
            model_limits: t.model_limits.clone(),
            allow_ips: t.allow_ips.clone(),
            group: t.group.clone(),
            rpm_limit: t.rpm_limit,
            tpm_limit: t.tpm_limit,
        }
    }
}

fn full_key_of(state: &SharedState, t: &Token) -> ApiResult<String> {
    state
        .secrets
        .decrypt(&t.key_cipher)
        .map_err(|e| ApiError::Internal(format!("token {}: {e}", t.id)))
}

fn masked(state: &SharedState, t: &Token) -> ApiResult<TokenView> {
    Ok(TokenView::new(t, keys::mask(&full_key_of(state, t)?)))
}

/// `model_limits` may arrive as the documented string or, leniently, as a
/// JSON array; either way it is kept as text in the form given.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v @ Value::Array(_)) => Ok(Some(v.to_string())),
        Some(_) => Err(serde::de::Error::custom(
            "expected a string (JSON array text or comma-separated list)",
        )),
    }
}

/// Fields of a create or update body. Absent (or null) fields are `None`;
/// unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct TokenBody {
    pub id: Option<i64>,
    pub user_id: Option<i64>,
    pub name: Option<String>,
    pub status: Option<i64>,
    pub remain_quota: Option<i64>,
    pub unlimited_quota: Option<bool>,
    pub expired_time: Option<i64>,
    pub model_limits_enabled: Option<bool>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub model_limits: Option<String>,
    pub allow_ips: Option<String>,
    pub group: Option<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
}

/// Largest `remain_quota`: a billion dollars' worth at the current rate.
fn max_quota(state: &SharedState) -> i64 {
    let q = 1e9 * state.options().quota_per_unit;
    if q >= i64::MAX as f64 / 4.0 {
        i64::MAX / 4
    } else {
        q as i64
    }
}

/// Applies the body's present fields to `t`, checking each against SPEC §3.
/// `t` is only changed when every field is valid.
fn apply_fields(
    state: &SharedState,
    t: &mut Token,
    b: &TokenBody,
    owner_group: &str,
    creating: bool,
) -> ApiResult<()> {
    let mut next = t.clone();
    if let Some(name) = &b.name {
        let name = name.trim();
        let n = name.chars().count();
        if n == 0 || n > MAX_NAME_CHARS {
            return Err(ApiError::refused(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        next.name = name.to_string();
    } else if creating {
        return Err(ApiError::refused("name is required"));
    }
    if let Some(q) = b.remain_quota {
        if q < 0 {
            return Err(ApiError::refused("remain_quota must not be negative"));
        }
        let max = max_quota(state);
        if q > max {
            return Err(ApiError::refused(format!(
                "remain_quota must be at most {max}"
            )));
        }
        next.remain_quota = q;
    }
    if let Some(u) = b.unlimited_quota {
        next.unlimited_quota = u;
    }
    if let Some(e) = b.expired_time {
        if e != -1 && e <= 0 {
            return Err(ApiError::refused(
                "expired_time must be -1 (never) or a Unix time in seconds",
            ));
        }
        if creating && e != -1 && e <= now() {
            return Err(ApiError::refused(
                "expired_time must be -1 (never) or in the future",
            ));
        }
        next.expired_time = e;
    }
    if let Some(m) = b.model_limits_enabled {
        next.model_limits_enabled = m;
    }
    if let Some(m) = &b.model_limits {
        parse_model_limits(m).map_err(ApiError::Refused)?;
        next.model_limits = m.clone();
    }
    if let Some(ips) = &b.allow_ips {
        parse_allow_ips(ips).map_err(ApiError::Refused)?;
        next.allow_ips = ips.trim().to_string();
    }
    for (field, v, slot) in [
        ("rpm_limit", b.rpm_limit, &mut next.rpm_limit),
        ("tpm_limit", b.tpm_limit, &mut next.tpm_limit),
    ] {
        if let Some(v) = v {
            if !(0..=MAX_RATE_LIMIT).contains(&v) {
                return Err(ApiError::refused(format!(
                    "{field} must be 0 (no limit) to {MAX_RATE_LIMIT}"
                )));
            }
            *slot = v;
        }
    }
    if let Some(g) = &b.group {
        let g = g.trim();
        if !g.is_empty() && !state.options().group_selectable(owner_group, g) {
            return Err(ApiError::refused(format!(
                "group '{g}' is not available to this user"
            )));
        }
        next.group = g.to_string();
    }
    *t = next;
    Ok(())
}

/// Which tokens the caller may touch.
fn scope(p: &Principal) -> Owner {
    if p.is_root() {
        Owner::Any
    } else {
        Owner::User(p.user.id)
    }
}

async fn create(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult {
    // Root may create for another user; everyone else only for themselves.
    let owner = match b.user_id {
        Some(uid) if uid != p.user.id && uid != 0 => {
            if !p.is_root() {
                return Err(ApiError::refused(
                    "user_id: only root may create tokens for another user",
                ));
            }
            state
                .store
                .user_by_id(uid)
                .await
                .map_err(|_| ApiError::refused("user_id: no such user"))?
        }
        _ => p.user.clone(),
    };
    let body = keys::new_key_body();
    let t0 = now();
    let mut t = Token {
        id: 0,
        user_id: owner.id,
        key_hash: keys::lookup_hash(&body),
        key_cipher: state.secrets.encrypt(&body),
        status: token_status::ENABLED,
        name: String::new(),
        created_time: t0,
        accessed_time: t0,
        expired_time: -1,
        remain_quota: 0,
        unlimited_quota: false,
        used_quota: 0,
        request_count: 0,
        model_limits_enabled: false,
        model_limits: String::new(),
        allow_ips: String::new(),
        group: String::new(),
        rpm_limit: 0,
        tpm_limit: 0,
    };
    apply_fields(&state, &mut t, &b, &owner.group, true)?;
    let max = state.options().max_user_tokens;
    t.id = match state.store.create_token(&t, max).await {
        Ok(id) => id,
        Err(CreateTokenError::LimitReached(n)) => {
            return Err(ApiError::refused(format!(
                "token limit reached: a user may hold at most {n} tokens"
            )));
        }
        Err(CreateTokenError::NoUser) => return Err(ApiError::refused("user_id: no such user")),
        Err(CreateTokenError::Store(e)) => return Err(e.into()),
    };
    if owner.id != p.user.id {
        audit(
            &state,
            &p,
            owner.id,
            "token.admin_create",
            format!(
                "{} created token '{}' (id {}) for user {}",
                p.user.username, t.name, t.id, owner.username
            ),
            json!({"token_id": t.id, "token_name": t.name}),
            &ip.to_string(),
        )
        .await?;
    }
    ok(TokenView::new(&t, body))
}

async fn list(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    q: PageQuery,
) -> ApiResult {
    let owner = list_scope(&p, &q);
    let (tokens, total) = state
        .store
        .list_tokens(owner, None, q.offset(), q.page_size)
        .await?;
    let items = tokens
        .iter()
        .map(|t| masked(&state, t))
        .collect::<ApiResult<Vec<_>>>()?;
    audit_foreign_listing(&state, &p, owner, "token.admin_list", "listed", &ip).await?;
    page(items, total, &q)
}

/// Root with `user_id` sees that user's tokens; everyone else (root without
/// `user_id` included, as new-api's "my tokens" page) sees their own.
fn list_scope(p: &Principal, q: &PageQuery) -> Owner {
    match q.int("user_id") {
        Some(uid) if uid > 0 && p.is_root() => Owner::User(uid),
        _ => Owner::User(p.user.id),
    }
}

/// Root listing or searching another user's tokens writes a manage row.
async fn audit_foreign_listing(
    state: &SharedState,
    p: &Principal,
    owner: Owner,
    action: &str,
    verb: &str,
    ip: &std::net::IpAddr,
) -> ApiResult<()> {
    let Owner::User(uid) = owner else {
        return Ok(());
    };
    if uid == p.user.id {
        return Ok(());
    }
    audit(
        state,
        p,
        uid,
        action,
        format!("{} {verb} the tokens of user id {uid}", p.user.username),
        json!({}),
        &ip.to_string(),
    )
    .await
}

async fn search(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    q: PageQuery,
) -> ApiResult {
    let owner = list_scope(&p, &q);
    audit_foreign_listing(&state, &p, owner, "token.admin_search", "searched", &ip).await?;
    let keyword = q.param("keyword");
    let key_part = q
        .param("token")
        .map(|t| t.strip_prefix("sk-").unwrap_or(t).to_string());
    let Some(key_part) = key_part else {
        let (tokens, total) = state
            .store
            .list_tokens(owner, keyword, q.offset(), q.page_size)
            .await?;
        let items = tokens
            .iter()
            .map(|t| masked(&state, t))
            .collect::<ApiResult<Vec<_>>>()?;
        return page(items, total, &q);
    };
    // Keys are stored encrypted, so a key-substring search decrypts the
    // caller's tokens (at most MaxUserTokens for a user) and matches in memory.
    let candidates = if key_part.len() == keys::KEY_BODY_LEN {
        match state
            .store
            .token_by_key_hash(&keys::lookup_hash(&key_part))
            .await
        {
            Ok(t)
                if matches!(owner, Owner::Any)
                    || matches!(owner, Owner::User(u) if u == t.user_id) =>
            {
                vec![t]
            }
            _ => Vec::new(),
        }
    } else {
        state.store.all_tokens(owner, keyword).await?
    };
    let mut hits = Vec::new();
    for t in &candidates {
        let full = full_key_of(&state, t)?;
        if full.contains(key_part.as_str())
            && keyword.is_none_or(|k| t.name.to_lowercase().contains(&k.to_lowercase()))
        {
            hits.push(TokenView::new(t, keys::mask(&full)));
        }
    }
    let total = hits.len() as i64;
    let items: Vec<TokenView> = hits
        .into_iter()
        .skip(q.offset() as usize)
        .take(q.page_size as usize)
        .collect();
    page(items, total, &q)
}

async fn get_one(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let t = state.store.token_by_id(id, scope(&p)).await?;
    let view = masked(&state, &t)?;
    if t.user_id != p.user.id {
        audit(
            &state,
            &p,
            t.user_id,
            "token.admin_get",
            format!(
                "{} viewed token '{}' (id {}) of user id {}",
                p.user.username, t.name, t.id, t.user_id
            ),
            json!({"token_id": t.id, "token_name": t.name}),
            &ip.to_string(),
        )
        .await?;
    }
    ok(view)
}

/// Parses a path id; anything else is refused like a missing record.
pub fn parse_id(s: &str) -> ApiResult<i64> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::refused(format!("invalid id '{s}'")))
}

async fn update(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    q: PageQuery,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult {
    let Some(id) = b.id.filter(|id| *id > 0) else {
        return Err(ApiError::refused("id is required"));
    };
    let current = state.store.token_by_id(id, scope(&p)).await?;
    let status_only = q
        .param("status_only")
        .is_some_and(|v| v != "false" && v != "0");
    let mut next = current.clone();
    if !status_only {
        let owner_group = if current.user_id == p.user.id {
            p.user.group.clone()
        } else {
            state.store.user_by_id(current.user_id).await?.group
        };
        apply_fields(&state, &mut next, &b, &owner_group, false)?;
    }
    if let Some(s) = b.status {
        if s != token_status::ENABLED && s != token_status::DISABLED {
            return Err(ApiError::refused(
                "status must be 1 (enabled) or 2 (disabled)",
            ));
        }
        if s == token_status::ENABLED && current.status != token_status::ENABLED {
            if next.expired_time != -1 && next.expired_time <= now() {
                return Err(ApiError::refused(
                    "cannot enable: the token has expired; set a later expired_time (or -1) first",
                ));
            }
            if !next.unlimited_quota && next.remain_quota <= 0 {
                return Err(ApiError::refused(
                    "cannot enable: the token's quota is exhausted; add remain_quota or make it unlimited first",
                ));
            }
        }
        next.status = s;
    } else if status_only {
        return Err(ApiError::refused("status is required with status_only"));
    }
    let set_remain = !status_only && b.remain_quota.is_some();
    state.store.update_token(&next, set_remain).await?;
    token_changed(&state, &next).await;
    if next.user_id != p.user.id {
        audit(
            &state,
            &p,
            next.user_id,
            "token.admin_update",
            format!(
                "{} updated token '{}' (id {}) of user id {}",
                p.user.username, next.name, next.id, next.user_id
            ),
            json!({"token_id": next.id, "token_name": next.name}),
            &ip.to_string(),
        )
        .await?;
    }
    ok(masked(&state, &next)?)
}

/// Hook for every token write: drops cached copies so the relay obeys it.
async fn token_changed(state: &SharedState, t: &Token) {
    crate::cache::bus::changed(
        state,
        crate::cache::bus::Change::Token {
            id: t.id,
            key_hash: t.key_hash.clone(),
        },
    )
    .await;
}

async fn delete_one(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let deleted = state.store.delete_tokens(&[id], scope(&p)).await?;
    let Some(t) = deleted.first() else {
        return Err(ApiError::refused("record not found"));
    };
    token_changed(&state, t).await;
    if t.user_id != p.user.id {
        audit(
            &state,
            &p,
            t.user_id,
            "token.admin_delete",
            format!(
                "{} deleted token '{}' (id {}) of user id {}",
                p.user.username, t.name, t.id, t.user_id
            ),
            json!({"token_id": t.id, "token_name": t.name}),
            &ip.to_string(),
        )
        .await?;
    }
    ok_empty()
}

#[derive(Deserialize)]
struct Ids {
    ids: Option<Vec<i64>>,
}

fn batch_ids(b: Ids) -> ApiResult<Vec<i64>> {
    let ids = b.ids.unwrap_or_default();
    if ids.is_empty() {
        return Err(ApiError::refused("ids must be a non-empty list"));
    }
    if ids.len() > MAX_BATCH_IDS {
        return Err(ApiError::refused(format!(
            "ids may name at most {MAX_BATCH_IDS} tokens"
        )));
    }
    Ok(ids)
}

async fn batch_delete(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Ids>,
) -> ApiResult {
    let ids = batch_ids(b)?;
    let deleted = state.store.delete_tokens(&ids, scope(&p)).await?;
    for t in &deleted {
        token_changed(&state, t).await;
        if t.user_id != p.user.id {
            audit(
                &state,
                &p,
                t.user_id,
                "token.admin_delete",
                format!(
                    "{} deleted token '{}' (id {}) of user id {}",
                    p.user.username, t.name, t.id, t.user_id
                ),
                json!({"token_id": t.id, "token_name": t.name}),
                &ip.to_string(),
            )
            .await?;
        }
    }
    ok(deleted.len())
}

async fn check_key_view_rate(state: &SharedState, p: &Principal) -> ApiResult<()> {
    super::throttle(
        state,
        "key retrieval",
        &p.user.id.to_string(),
        super::KEY_VIEWS_PER_MINUTE,
    )
    .await
}

/// Full keys must never sit in a shared or browser cache.
fn no_store(resp: axum::response::Response) -> axum::response::Response {
    let mut resp = resp;
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn full_key(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult {
    check_key_view_rate(&state, &p).await?;
    let id = parse_id(&id)?;
    let t = state.store.token_by_id(id, scope(&p)).await?;
    let key = full_key_of(&state, &t)?;
    if t.user_id != p.user.id {
        audit(
            &state,
            &p,
            t.user_id,
            "token.admin_key_view",
            format!(
                "{} viewed the full key of token '{}' (id {}) of user id {}",
                p.user.username, t.name, t.id, t.user_id
            ),
            json!({"token_id": t.id, "token_name": t.name}),
            &ip.to_string(),
        )
        .await?;
    }
    Ok(no_store(ok(json!({ "key": key }))?))
}

async fn batch_keys(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Ids>,
) -> ApiResult {
    check_key_view_rate(&state, &p).await?;
    let ids = batch_ids(b)?;
    let tokens = state.store.tokens_by_ids(&ids, scope(&p)).await?;
    let mut out = serde_json::Map::new();
    for t in &tokens {
        out.insert(t.id.to_string(), Value::String(full_key_of(&state, t)?));
        if t.user_id != p.user.id {
            audit(
                &state,
                &p,
                t.user_id,
                "token.admin_key_view",
                format!(
                    "{} viewed the full key of token '{}' (id {}) of user id {}",
                    p.user.username, t.name, t.id, t.user_id
                ),
                json!({"token_id": t.id, "token_name": t.name}),
                &ip.to_string(),
            )
            .await?;
        }
    }
    Ok(no_store(ok(json!({ "keys": out }))?))
}

/// `GET /api/usage/token` with an `sk-` key: the key's own balance, in
/// new-api's shape (`code: true` rather than `success`).
async fn usage(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult {
    let raw = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if raw.is_empty() {
        return Err(ApiError::Unauthorized("no Authorization header".into()));
    }
    let raw = match raw.split_once(' ') {
        Some((s, rest)) if s.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return Err(ApiError::Unauthorized("invalid Bearer token".into())),
        None => raw,
    };
    let (body, _) = keys::parse_api_key(raw);
    let t = match state
        .store
        .token_by_key_hash(&keys::lookup_hash(body))
        .await
    {
        Ok(t) => t,
        Err(crate::store::StoreError::NotFound) => {
            return Err(ApiError::Unauthorized("invalid token".into()));
        }
        Err(e) => return Err(e.into()),
    };
    if t.status == token_status::DISABLED {
        return Err(ApiError::Unauthorized("this token is disabled".into()));
    }
    let limits: serde_json::Map<String, Value> = parse_model_limits(&t.model_limits)
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m, Value::Bool(true)))
        .collect();
    let expires_at = if t.expired_time == -1 {
        0
    } else {
        t.expired_time
    };
    Ok(axum::Json(json!({
        "code": true,
        "message": "ok",
        "data": {
            "object": "token_usage",
            "name": t.name,
            "total_granted": t.remain_quota.saturating_add(t.used_quota),
            "total_used": t.used_quota,
            "total_available": t.remain_quota,
            "unlimited_quota": t.unlimited_quota,
            "model_limits": limits,
            "model_limits_enabled": t.model_limits_enabled,
            "expires_at": expires_at,
            "status": t.status,
        }
    }))
    .into_response())
}
