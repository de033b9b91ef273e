//! `/api/option/` (root): new-api's key/value settings (SPEC §4).
//!
//! A value is validated before anything is written; a refused value changes
//! nothing. After a write the in-memory snapshot is rebuilt and swapped whole.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ClientIp, JsonBody, Root, audit, ok, ok_empty};
use crate::config::options::validate;
use crate::state::SharedState;

/// Routes of this resource.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/option/", get(list).put(update))
        .route("/api/option", get(list).put(update))
}

/// Options whose names mark them as credentials are never sent out.
fn is_secret(key: &str) -> bool {
    ["Token", "Secret", "Key", "secret", "api_key"]
        .iter()
        .any(|s| key.ends_with(s))
}

async fn list(State(state): State<SharedState>, _r: Root) -> ApiResult {
    let o = state.options();
    let items: Vec<Value> = o
        .raw
        .iter()
        .filter(|(k, _)| !is_secret(k))
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    ok(items)
}

#[derive(Deserialize)]
struct Put {
    key: Option<String>,
    value: Option<Value>,
}

async fn update(
    State(state): State<SharedState>,
    Root(r): Root,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Put>,
) -> ApiResult {
    let key = b.key.unwrap_or_default();
    let value = match b.value {
        Some(Value::String(s)) => s,
        Some(Value::Bool(v)) => v.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(ApiError::refused("value is required")),
        Some(_) => {
            return Err(ApiError::refused(
                "value must be a string (JSON-valued options are JSON text in the string)",
            ));
        }
    };
    validate(&key, &value).map_err(ApiError::Refused)?;
    state.store.put_option(&key, &value).await?;
    reload(&state).await?;
    audit(
        &state,
        &r,
        r.user.id,
        "option.update",
        format!("{} set option {key}", r.user.username),
        json!({"key": key}),
        &ip.to_string(),
    )
    .await?;
    ok_empty()
}

/// Rebuilds the options snapshot here and on every replica.
pub async fn reload(state: &SharedState) -> ApiResult<()> {
    crate::cache::bus::changed(state, crate::cache::bus::Change::Options).await;
    Ok(())
}
