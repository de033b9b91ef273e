//! The OpenAI dialect in: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`, and the legacy billing dashboard routes.

use std::borrow::Cow;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::error::{Dialect, RelayError, errors};
use super::providers::Endpoint;
use super::{Door, Head, Origin, gate, positive_max, request_id, required_model, serve};
use crate::state::SharedState;

/// Routes of the OpenAI dialect (its call doors are [`super::HotDoor`]s).
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/dashboard/billing/subscription", get(subscription))
        .route("/dashboard/billing/subscription", get(subscription))
        .route("/v1/dashboard/billing/usage", get(usage))
        .route("/dashboard/billing/usage", get(usage))
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The fields routing and billing need; everything else passes untouched.
#[derive(Deserialize)]
struct OpenAiHead<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// Most choices one call may ask for.
pub const MAX_N: i64 = 128;

/// A call through one of the OpenAI doors (chat, completions, embeddings).
pub(super) async fn call(
    state: SharedState,
    req: Request,
    origin: Origin,
    ep: Endpoint,
) -> Response {
    let door = Door {
        endpoint: ep,
        dialect: Dialect::OpenAi,
        name: "openai",
    };
    serve(state, req, origin, door, |body| read_head(body, ep)).await
}

/// Reads an OpenAI body's model, stream flag and output cap (× n).
fn read_head(body: &[u8], ep: Endpoint) -> Result<Head, RelayError> {
    let head: OpenAiHead = serde_json::from_slice(body)
        .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
    let model = required_model(head.model.as_deref())?;
    let n = head.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(errors::bad_request(format!(
            "n must be between 1 and {MAX_N}"
        )));
    }
    let max = positive_max(head.max_completion_tokens.or(head.max_tokens))?;
    Ok(Head {
        model,
        stream: head.stream.unwrap_or(false) && ep.streams(),
        max_output: match ep {
            Endpoint::Embeddings => Some(0),
            _ => max.map(|m| m.saturating_mul(n)),
        },
        wants_stream_usage: head
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// `GET /v1/models`: what this key may call.
async fn models(State(state): State<SharedState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let rid = request_id(&parts);
    match callable_models(&state, &parts).await {
        Ok(list) => {
            let data: Vec<_> = list.into_iter().map(model_object).collect();
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => e.into_dialect(Dialect::OpenAi, &rid),
    }
}

/// `GET /v1/models/{model}` (OpenAI's retrieve): the model if this key may
/// call it, 404 otherwise.
pub async fn retrieve_model(
    State(state): State<SharedState>,
    axum::extract::Path(model): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    let rid = request_id(&parts);
    match callable_models(&state, &parts).await {
        Ok(list) if list.contains(&model) => axum::Json(model_object(model)).into_response(),
        Ok(_) => RelayError::new(
            super::error::Kind::NotFound,
            "model_not_found",
            format!("the model '{model}' does not exist or this key may not use it"),
        )
        .into_dialect(Dialect::OpenAi, &rid),
        Err(e) => e.into_dialect(Dialect::OpenAi, &rid),
    }
}

fn model_object(id: String) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"})
}

/// Models the key's group is served and its whitelist allows.
async fn callable_models(
    state: &SharedState,
    parts: &axum::http::request::Parts,
) -> Result<Vec<String>, RelayError> {
    let caller = gate::admit(state, parts, super::peer(parts)).await?;
    let snap = state.routing.load();
    Ok(snap
        .models_for([caller.group.as_str()])
        .into_iter()
        .filter(|m| {
            caller
                .token
                .models
                .as_ref()
                .is_none_or(|allowed| allowed.contains(m))
        })
        .collect())
}

/// Quota shown in USD as the legacy dashboard expects (unlimited: a large
/// number).
fn usd(state: &SharedState, quota: i64) -> f64 {
    quota as f64 / state.options().quota_per_unit
}

/// `GET /v1/dashboard/billing/subscription`: the key's grant, in USD.
async fn subscription(State(state): State<SharedState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let rid = request_id(&parts);
    let caller = match gate::admit(&state, &parts, super::peer(&parts)).await {
        Ok(c) => c,
        Err(e) => return e.into_dialect(Dialect::OpenAi, &rid),
    };
    // The stored row, not the cached one: used_quota moves with every call.
    let t = match state
        .store
        .token_by_id(caller.token.token.id, crate::store::Owner::Any)
        .await
    {
        Ok(t) => t,
        Err(e) => return errors::internal(e.to_string()).into_dialect(Dialect::OpenAi, &rid),
    };
    // Every charge moves remain and used by the same amount, so their sum is
    // the grant.
    let limit = if t.unlimited_quota {
        100_000_000.0
    } else {
        usd(&state, t.remain_quota.max(0) + t.used_quota)
    };
    let access_until = if t.expired_time > 0 {
        t.expired_time
    } else {
        0
    };
    axum::Json(json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "access_until": access_until,
    }))
    .into_response()
}

/// `GET /v1/dashboard/billing/usage`: the key's spend, in US cents.
async fn usage(State(state): State<SharedState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let rid = request_id(&parts);
    let caller = match gate::admit(&state, &parts, super::peer(&parts)).await {
        Ok(c) => c,
        Err(e) => return e.into_dialect(Dialect::OpenAi, &rid),
    };
    let used = match state
        .store
        .token_by_id(caller.token.token.id, crate::store::Owner::Any)
        .await
    {
        Ok(t) => t.used_quota,
        Err(_) => caller.token.token.used_quota,
    };
    axum::Json(json!({"object": "list", "total_usage": usd(&state, used) * 100.0})).into_response()
}
