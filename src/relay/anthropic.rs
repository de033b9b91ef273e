//! The Anthropic dialect in: `POST /v1/messages` (key in `x-api-key` or
//! Bearer; `anthropic-version` accepted and not required) and
//! `POST /v1/messages/count_tokens`.

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::error::{Dialect, RelayError, errors};
use super::providers::{Endpoint, anthropic};
use super::{Door, Head, Origin, gate, positive_max, read_body, request_id, required_model, serve};
use crate::billing::tokens;
use crate::state::SharedState;

/// Routes of the Anthropic dialect (`/v1/messages` is a [`super::HotDoor`]).
pub fn router() -> Router<SharedState> {
    Router::new().route("/v1/messages/count_tokens", post(count_tokens))
}

#[derive(Deserialize)]
struct AnthropicHead<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<i64>,
}

fn read_head(body: &[u8]) -> Result<Head, RelayError> {
    let h: AnthropicHead = serde_json::from_slice(body)
        .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
    Ok(Head {
        model: required_model(h.model.as_deref())?,
        stream: h.stream.unwrap_or(false),
        max_output: positive_max(h.max_tokens)?,
        wants_stream_usage: true,
    })
}

pub(super) async fn messages(state: SharedState, req: Request, origin: Origin) -> Response {
    let door = Door {
        endpoint: Endpoint::Messages,
        dialect: Dialect::Anthropic,
        name: "anthropic",
    };
    let rid = origin.request_id.clone();
    with_request_id(
        serve(state, req, origin, door, |b| read_head(b)).await,
        &rid,
    )
}

fn request_id_of(req: &Request) -> String {
    req.extensions()
        .get::<tower_http::request_id::RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Anthropic's API names the request id `request-id` (the SDK reads it into
/// `request_id` of its errors and messages); sluice's own `x-request-id`
/// stays too.
fn with_request_id(mut resp: Response, rid: &str) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(rid)
        && !rid.is_empty()
    {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

/// Counted locally (tiktoken) from the request as the hub sees it: no
/// upstream call, no charge.
async fn count_tokens(State(state): State<SharedState>, req: Request) -> Response {
    let rid = request_id_of(&req);
    with_request_id(count_tokens_inner(state, req).await, &rid)
}

async fn count_tokens_inner(state: SharedState, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let rid = request_id(&parts);
    let result = async {
        let caller = gate::admit(&state, &parts, super::peer(&parts)).await?;
        let body = read_body(body, state.config.max_body_bytes).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
        let model = required_model(v.get("model").and_then(|m| m.as_str()))?;
        gate::admit_model(&state, &caller, &model).await?;
        let hub = anthropic::request_to_hub(&v);
        let n = tokio::task::spawn_blocking(move || tokens::count_prompt(&model, &hub))
            .await
            .map_err(|e| errors::internal(e.to_string()))?;
        Ok::<_, RelayError>(n)
    }
    .await;
    match result {
        Ok(n) => axum::Json(json!({"input_tokens": n})).into_response(),
        Err(e) => e.into_dialect(Dialect::Anthropic, &rid),
    }
}
