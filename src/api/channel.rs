//! `/api/channel/…` (admin): upstream channels (SPEC §5).
//!
//! Channel keys are stored encrypted and shown masked to admins; only root
//! gets them in full (`POST /api/channel/:id/key`). Every change rebuilds the
//! routing snapshot.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::token::parse_id;
use super::{Admin, ApiError, ApiResult, ClientIp, JsonBody, PageQuery, Root, audit, ok, ok_empty};
use crate::auth::keys;
use crate::relay::providers::{self, Endpoint};
use crate::routing::{ChannelKind, ChannelRt, parse_mapping, split_list};
use crate::state::SharedState;
use crate::store::{Channel, ChannelFilter, channel_status, now};

/// Routes of this resource.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/channel/", get(list).post(create).put(update))
        .route("/api/channel", get(list).post(create).put(update))
        .route("/api/channel/search", get(search))
        .route("/api/channel/models", get(models))
        .route("/api/channel/models_enabled", get(models_enabled))
        .route("/api/channel/disabled", delete(delete_disabled))
        .route("/api/channel/batch", post(batch_delete))
        .route("/api/channel/test/{id}", get(test))
        .route("/api/channel/{id}", get(get_one).delete(delete_one))
        .route("/api/channel/{id}/key", post(full_key))
}

/// A channel as the API shows it (key masked).
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub id: i64,
    #[serde(rename = "type")]
    pub channel_type: i64,
    pub name: String,
    pub key: String,
    pub base_url: String,
    pub models: String,
    pub model_mapping: String,
    pub group: String,
    pub priority: i64,
    pub weight: i64,
    pub status: i64,
    pub test_model: String,
    pub response_time: i64,
    pub test_time: i64,
    pub used_quota: i64,
    pub request_count: i64,
    pub balance: f64,
    pub balance_updated_time: i64,
    pub created_time: i64,
    pub other: String,
    pub tag: String,
    pub auto_ban: i64,
}

fn view(state: &SharedState, c: &Channel) -> ChannelView {
    let key = state
        .secrets
        .decrypt(&c.key_cipher)
        .map(|k| {
            k.lines()
                .map(|l| keys::mask(l.trim()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    ChannelView {
        id: c.id,
        channel_type: c.channel_type,
        name: c.name.clone(),
        key,
        base_url: c.base_url.clone(),
        models: c.models.clone(),
        model_mapping: c.model_mapping.clone(),
        group: c.groups.clone(),
        priority: c.priority,
        weight: c.weight,
        status: c.status,
        test_model: c.test_model.clone(),
        response_time: c.response_time,
        test_time: c.test_time,
        used_quota: c.used_quota,
        request_count: c.request_count,
        balance: c.balance,
        balance_updated_time: c.balance_updated_time,
        created_time: c.created_time,
        other: c.other.clone(),
        tag: c.tag.clone(),
        auto_ban: c.auto_ban as i64,
    }
}

/// Rebuilds the routing snapshot here and on every replica.
pub async fn reload_routing(state: &SharedState) {
    crate::cache::bus::changed(state, crate::cache::bus::Change::Channels).await;
}

/// Channel fields in a request; absent fields are `None`.
#[derive(Debug, Default, Deserialize)]
pub struct ChannelBody {
    pub id: Option<i64>,
    #[serde(rename = "type")]
    pub channel_type: Option<i64>,
    pub name: Option<String>,
    pub key: Option<String>,
    pub base_url: Option<String>,
    pub models: Option<String>,
    pub model_mapping: Option<String>,
    pub group: Option<String>,
    pub groups: Option<String>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub status: Option<i64>,
    pub test_model: Option<String>,
    pub other: Option<String>,
    pub tag: Option<String>,
    pub auto_ban: Option<i64>,
}

/// Checks and applies the body's present fields to `c`.
fn apply(c: &mut Channel, b: &ChannelBody, state: &SharedState, creating: bool) -> ApiResult<()> {
    let mut next = c.clone();
    if let Some(t) = b.channel_type {
        if ChannelKind::from_type(t).is_none() {
            return Err(ApiError::refused(format!(
                "type {t} is not supported (OpenAI 1, Azure 3, custom OpenAI-compatible 8, Anthropic 14, Gemini 24)"
            )));
        }
        next.channel_type = t;
    }
    if let Some(n) = &b.name {
        let n = n.trim();
        if n.is_empty() || n.chars().count() > 100 {
            return Err(ApiError::refused("name must be 1 to 100 characters"));
        }
        next.name = n.to_string();
    } else if creating {
        return Err(ApiError::refused("name is required"));
    }
    if let Some(u) = &b.base_url {
        let u = u.trim();
        if !u.is_empty() {
            let parsed = url::Url::parse(u)
                .map_err(|_| ApiError::refused("base_url must be an http(s) URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ApiError::refused("base_url must be an http(s) URL"));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(ApiError::refused(
                    "base_url must not carry a query or fragment",
                ));
            }
        }
        next.base_url = u.trim_end_matches('/').to_string();
    }
    let kind = ChannelKind::from_type(next.channel_type);
    if next.base_url.is_empty() && kind.is_some_and(|k| k.default_base_url().is_none()) {
        return Err(ApiError::refused(
            "base_url is required for this channel type",
        ));
    }
    if let Some(m) = &b.models {
        let list = split_list(m);
        if list.iter().any(|x| x.chars().count() > 255) {
            return Err(ApiError::refused(
                "models: a model name is longer than 255 characters",
            ));
        }
        next.models = list.join(",");
    }
    if creating && next.models.is_empty() {
        return Err(ApiError::refused("models must name at least one model"));
    }
    if let Some(m) = &b.model_mapping {
        parse_mapping(m).map_err(ApiError::Refused)?;
        next.model_mapping = m.trim().to_string();
    }
    if let Some(g) = b.group.as_ref().or(b.groups.as_ref()) {
        let list = split_list(g);
        if list.is_empty() {
            return Err(ApiError::refused("group must name at least one group"));
        }
        next.groups = list.join(",");
    }
    if let Some(p) = b.priority {
        next.priority = p;
    }
    if let Some(w) = b.weight {
        if !(0..=1_000_000).contains(&w) {
            return Err(ApiError::refused("weight must be between 0 and 1000000"));
        }
        next.weight = w;
    }
    if let Some(s) = b.status {
        if ![
            channel_status::ENABLED,
            channel_status::MANUALLY_DISABLED,
            channel_status::AUTO_DISABLED,
        ]
        .contains(&s)
        {
            return Err(ApiError::refused("status must be 1, 2 or 3"));
        }
        next.status = s;
    }
    if let Some(t) = &b.test_model {
        next.test_model = t.trim().to_string();
    }
    if let Some(o) = &b.other {
        next.other = o.trim().to_string();
    }
    if let Some(t) = &b.tag {
        next.tag = t.trim().to_string();
    }
    if let Some(a) = b.auto_ban {
        next.auto_ban = a != 0;
    }
    if let Some(k) = &b.key {
        let k = k.trim();
        if !k.is_empty() {
            let current = if creating {
                String::new()
            } else {
                state.secrets.decrypt(&c.key_cipher).unwrap_or_default()
            };
            let k = unmask_key(k, &current)?;
            next.key_cipher = state.secrets.encrypt(&k);
        } else if creating {
            return Err(ApiError::refused("key is required"));
        }
    } else if creating {
        return Err(ApiError::refused("key is required"));
    }
    *c = next;
    Ok(())
}

/// The key to store for an update. Dashboards and scripts read a channel
/// (keys masked, as [`view`] shows them) and send the object back; a line
/// equal to the masked form of a stored key stands for that key, so such a
/// round trip never replaces a real key by its mask. A masked line that
/// matches no stored key is refused.
fn unmask_key(given: &str, current: &str) -> ApiResult<String> {
    let stored: Vec<&str> = current
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    for line in given.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match stored.iter().find(|s| keys::mask(s) == line) {
            Some(s) => out.push(s.to_string()),
            None if line.contains("****") => {
                return Err(ApiError::refused(
                    "key: a masked key cannot be saved; send the full key (or leave key empty to keep it)",
                ));
            }
            None => out.push(line.to_string()),
        }
    }
    Ok(out.join("\n"))
}

fn blank(now: i64) -> Channel {
    Channel {
        id: 0,
        channel_type: 1,
        name: String::new(),
        key_cipher: String::new(),
        base_url: String::new(),
        models: String::new(),
        model_mapping: String::new(),
        groups: "default".into(),
        priority: 0,
        weight: 0,
        status: channel_status::ENABLED,
        test_model: String::new(),
        response_time: 0,
        test_time: 0,
        used_quota: 0,
        request_count: 0,
        balance: 0.0,
        balance_updated_time: 0,
        created_time: now,
        other: String::new(),
        tag: String::new(),
        auto_ban: true,
    }
}

async fn create(
    State(state): State<SharedState>,
    Admin(a): Admin,
    ClientIp(ip): ClientIp,
    JsonBody(raw): JsonBody<Value>,
) -> ApiResult {
    // new-api sends {"mode": "single"|"batch", "channel": {...}}; one-api the
    // bare channel object.
    let (mode, body) = match raw.get("channel") {
        Some(ch) if ch.is_object() => (
            raw.get("mode")
                .and_then(Value::as_str)
                .unwrap_or("single")
                .to_string(),
            ch.clone(),
        ),
        _ => ("single".to_string(), raw),
    };
    let b: ChannelBody = super::extract::parse_json(body.to_string().as_bytes())?;
    let lines: Vec<String> = match mode.as_str() {
        "single" => vec![b.key.clone().unwrap_or_default()],
        "batch" => b
            .key
            .as_deref()
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        other => {
            return Err(ApiError::refused(format!(
                "mode must be 'single' or 'batch' (got '{other}')"
            )));
        }
    };
    if lines.is_empty() {
        return Err(ApiError::refused("key is required"));
    }
    let mut chans = Vec::with_capacity(lines.len());
    for key in lines {
        let mut c = blank(now());
        let per = ChannelBody {
            key: Some(key),
            ..clone_body(&b)
        };
        apply(&mut c, &per, &state, true)?;
        chans.push(c);
    }
    let ids = state.store.create_channels(&chans).await?;
    reload_routing(&state).await;
    audit(
        &state,
        &a,
        a.user.id,
        "channel.create",
        format!("{} created channel(s) {ids:?}", a.user.username),
        json!({"channel_ids": ids}),
        &ip.to_string(),
    )
    .await?;
    ok(json!({"ids": ids}))
}

fn clone_body(b: &ChannelBody) -> ChannelBody {
    ChannelBody {
        id: b.id,
        channel_type: b.channel_type,
        name: b.name.clone(),
        key: b.key.clone(),
        base_url: b.base_url.clone(),
        models: b.models.clone(),
        model_mapping: b.model_mapping.clone(),
        group: b.group.clone(),
        groups: b.groups.clone(),
        priority: b.priority,
        weight: b.weight,
        status: b.status,
        test_model: b.test_model.clone(),
        other: b.other.clone(),
        tag: b.tag.clone(),
        auto_ban: b.auto_ban,
    }
}

fn filter_of(q: &PageQuery) -> ChannelFilter {
    ChannelFilter {
        keyword: q.param("keyword").map(String::from),
        group: q.param("group").map(String::from),
        model: q.param("model").map(String::from),
        // new-api's words: `enabled` (status 1) and `disabled` (any other);
        // a number filters that exact status.
        status: match q.param("status") {
            Some("enabled") => Some(channel_status::ENABLED),
            Some("disabled") | Some("0") => None,
            Some(s) => s.trim().parse().ok(),
            None => None,
        },
        disabled: matches!(q.param("status"), Some("disabled") | Some("0")),
        channel_type: q.int("type"),
    }
}

async fn list_page(state: &SharedState, q: &PageQuery) -> ApiResult {
    let f = filter_of(q);
    let by_id = q.param("id_sort").is_some_and(|v| v == "true");
    let (items, total) = state
        .store
        .list_channels(&f, by_id, q.offset(), q.page_size)
        .await?;
    let counts: BTreeMap<String, i64> = state
        .store
        .channel_type_counts()
        .await?
        .into_iter()
        .map(|(t, n)| (t.to_string(), n))
        .collect();
    ok(json!({
        "items": items.iter().map(|c| view(state, c)).collect::<Vec<_>>(),
        "total": total,
        "page": q.page,
        "page_size": q.page_size,
        "type_counts": counts,
    }))
}

async fn list(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    list_page(&state, &q).await
}

async fn search(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    list_page(&state, &q).await
}

async fn get_one(State(state): State<SharedState>, _a: Admin, Path(id): Path<String>) -> ApiResult {
    let c = state.store.channel_by_id(parse_id(&id)?).await?;
    ok(view(&state, &c))
}

async fn full_key(
    State(state): State<SharedState>,
    Root(r): Root,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult {
    let c = state.store.channel_by_id(parse_id(&id)?).await?;
    let key = state
        .secrets
        .decrypt(&c.key_cipher)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    audit(
        &state,
        &r,
        r.user.id,
        "channel.key_view",
        format!("{} viewed the key of channel {}", r.user.username, c.id),
        json!({"channel_id": c.id}),
        &ip.to_string(),
    )
    .await?;
    let mut resp = ok(json!({ "key": key }))?;
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

async fn update(
    State(state): State<SharedState>,
    Admin(a): Admin,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<ChannelBody>,
) -> ApiResult {
    let Some(id) = b.id.filter(|i| *i > 0) else {
        return Err(ApiError::refused("id is required"));
    };
    let mut c = state.store.channel_by_id(id).await?;
    apply(&mut c, &b, &state, false)?;
    state.store.update_channel(&c).await?;
    reload_routing(&state).await;
    audit(
        &state,
        &a,
        a.user.id,
        "channel.update",
        format!("{} updated channel {id}", a.user.username),
        json!({"channel_id": id}),
        &ip.to_string(),
    )
    .await?;
    ok(view(&state, &c))
}

async fn delete_one(
    State(state): State<SharedState>,
    _a: Admin,
    Path(id): Path<String>,
) -> ApiResult {
    let n = state.store.delete_channels(&[parse_id(&id)?]).await?;
    if n == 0 {
        return Err(ApiError::refused("record not found"));
    }
    reload_routing(&state).await;
    ok_empty()
}

#[derive(Deserialize)]
struct Ids {
    ids: Option<Vec<i64>>,
}

async fn batch_delete(
    State(state): State<SharedState>,
    _a: Admin,
    JsonBody(b): JsonBody<Ids>,
) -> ApiResult {
    let ids = b.ids.unwrap_or_default();
    if ids.is_empty() || ids.len() > 1000 {
        return Err(ApiError::refused("ids must list 1 to 1000 channel ids"));
    }
    let n = state.store.delete_channels(&ids).await?;
    reload_routing(&state).await;
    ok(n)
}

async fn delete_disabled(State(state): State<SharedState>, _a: Admin) -> ApiResult {
    let n = state.store.delete_disabled_channels().await?;
    reload_routing(&state).await;
    ok(n)
}

/// Models sluice knows (priced) or some channel lists, in OpenAI's shape.
async fn models(State(state): State<SharedState>, _a: Admin) -> ApiResult {
    let o = state.options();
    let mut names: std::collections::BTreeSet<String> = o.model_ratio.keys().cloned().collect();
    names.extend(o.model_price.keys().cloned());
    names.extend(state.routing.load().all_models());
    let data: Vec<Value> = names
        .into_iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    ok(data)
}

async fn models_enabled(State(state): State<SharedState>, _a: Admin) -> ApiResult {
    let groups: Vec<String> = state.options().group_ratio.keys().cloned().collect();
    ok(state
        .routing
        .load()
        .models_for(groups.iter().map(String::as_str)))
}

#[derive(Deserialize)]
struct TestQuery {
    model: Option<String>,
}

/// `GET /api/channel/test/:id`: a tiny chat call; records the response time;
/// a pass re-enables an auto-disabled channel when that option is on.
async fn test(
    State(state): State<SharedState>,
    _a: Admin,
    Path(id): Path<String>,
    Query(tq): Query<TestQuery>,
) -> ApiResult {
    let c = state.store.channel_by_id(parse_id(&id)?).await?;
    let Some(rt) = ChannelRt::from_channel(&c, &state.secrets) else {
        return Err(ApiError::refused("this channel's type is not supported"));
    };
    let model = tq
        .model
        .filter(|m| !m.trim().is_empty())
        .or_else(|| Some(rt.test_model.clone()).filter(|m| !m.is_empty()))
        .or_else(|| rt.models.first().cloned())
        .ok_or_else(|| ApiError::refused("the channel lists no model to test with"))?;
    let upstream_model = rt.upstream_model(&model).to_string();
    let body = json!({
        "model": upstream_model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
    });
    let started = Instant::now();
    let result = run_test(&state, &rt, &upstream_model, body).await;
    let elapsed = started.elapsed();
    let ms = elapsed.as_millis() as i64;
    state.store.record_channel_test(rt.id, ms, now()).await?;
    let secs = elapsed.as_secs_f64();
    match result {
        Ok(()) => {
            if c.status == channel_status::AUTO_DISABLED && state.options().auto_enable_channel {
                state
                    .store
                    .set_channel_status(c.id, channel_status::ENABLED)
                    .await?;
                reload_routing(&state).await;
            }
            Ok(axum::Json(json!({"success": true, "message": "", "time": secs})).into_response())
        }
        Err(msg) => {
            Ok(axum::Json(json!({"success": false, "message": msg, "time": secs})).into_response())
        }
    }
}

async fn run_test(
    state: &SharedState,
    rt: &ChannelRt,
    upstream_model: &str,
    body: Value,
) -> Result<(), String> {
    // The test speaks chat; other dialects get it converted.
    let body = match providers::Wire::of(rt.kind) {
        providers::Wire::OpenAi => body,
        providers::Wire::Anthropic => providers::anthropic::request_from_hub(&body, upstream_model),
        providers::Wire::Gemini => providers::gemini::request_from_hub(&body),
    };
    let out = providers::outbound(
        rt,
        Endpoint::ChatCompletions,
        body.to_string().into(),
        upstream_model,
        false,
    )
    .map_err(|e| e.message)?;
    let resp = tokio::time::timeout(
        state.config.upstream_first_byte(),
        state.http.post(out.url, out.headers, out.body),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = crate::relay::pipeline::read_limited(resp, state.config.upstream_idle(), 1 << 20)
        .await
        .map_err(|e| e.message)?;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(format!(
            "upstream answered {}: {}",
            status.as_u16(),
            text.chars().take(300).collect::<String>()
        ));
    }
    serde_json::from_str::<Value>(&text)
        .map_err(|_| "upstream answered with a body that is not JSON".to_string())?;
    Ok(())
}
