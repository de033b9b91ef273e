//! OpenAI's Responses API in: `POST /v1/responses`, plain and streamed. The
//! call goes to any channel through the hub format (see
//! `providers/responses.rs`); errors are OpenAI-shaped.

use axum::extract::Request;
use axum::response::Response;
use serde::Deserialize;

use super::error::{Dialect, RelayError, errors};
use super::providers::Endpoint;
use super::{Door, Head, Origin, positive_max, required_model, serve};
use crate::state::SharedState;

#[derive(Deserialize)]
struct ResponsesHead<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<i64>,
    #[serde(default)]
    previous_response_id: Option<String>,
}

fn read_head(body: &[u8]) -> Result<Head, RelayError> {
    let h: ResponsesHead = serde_json::from_slice(body)
        .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
    if h.previous_response_id.is_some() {
        return Err(errors::bad_request(
            "previous_response_id is not supported: sluice does not store responses; send the full input",
        ));
    }
    // Validate the conversion up front: a bad tool type is the caller's error.
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
    super::providers::responses::request_to_hub(&v).map_err(errors::bad_request)?;
    Ok(Head {
        model: required_model(h.model.as_deref())?,
        stream: h.stream.unwrap_or(false),
        max_output: positive_max(h.max_output_tokens)?,
        wants_stream_usage: true,
    })
}

pub(super) async fn responses(state: SharedState, req: Request, origin: Origin) -> Response {
    let door = Door {
        endpoint: Endpoint::Responses,
        dialect: Dialect::OpenAi,
        name: "responses",
    };
    serve(state, req, origin, door, |b| read_head(b)).await
}
