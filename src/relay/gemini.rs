//! The Gemini dialect in: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (`?alt=sse`) and `:countTokens`, key in
//! `x-goog-api-key` or `?key=`.

use std::borrow::Cow;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::error::{Dialect, RelayError, errors};
use super::providers::{Endpoint, gemini};
use super::{Door, Head, Origin, gate, read_body, serve};
use crate::billing::tokens;
use crate::state::SharedState;

/// Routes of the Gemini dialect.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/v1beta/models/{model_action}", post(dispatch))
        // GET is OpenAI's model retrieve, which shares the path.
        .route(
            "/v1/models/{model_action}",
            post(dispatch).get(super::openai::retrieve_model),
        )
}

/// `models/{model}:{action}` through the router (the front sends `POST`s
/// straight to [`hot`]; other methods and odd paths come here).
async fn dispatch(
    State(state): State<SharedState>,
    Path(model_action): Path<String>,
    req: Request,
) -> Response {
    let origin = Origin::of(&req);
    call(state, req, origin, &model_action).await
}

/// The `{model}:{action}` segment of a Gemini door's path
/// (`/v1beta/models/…` or `/v1/models/…`), percent-decoded as axum's
/// `Path` decodes it; `None` for any other path, and for a segment that
/// does not decode to UTF-8 (the router answers those as before).
pub fn door_segment(path: &str) -> Option<Cow<'_, str>> {
    let seg = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    if seg.is_empty() || seg.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(seg).decode_utf8().ok()
}

/// The Gemini door as a hot door ([`super::HotDoor`]): the same handler as
/// the router's route, with the segment read from the path.
pub async fn hot(state: SharedState, req: Request, origin: Origin) -> Response {
    let seg = door_segment(req.uri().path()).map(Cow::into_owned);
    match seg {
        Some(seg) => call(state, req, origin, &seg).await,
        // `HotDoor::of` checked the path; kept total all the same.
        None => no_method(&origin),
    }
}

/// The answer to a segment without `{model}:{method}`.
fn no_method(origin: &Origin) -> Response {
    errors::bad_request("expected models/{model}:{method}")
        .into_dialect(Dialect::Gemini, &origin.request_id)
}

/// Serves `models/{model}:{action}`: the model and the method share one
/// segment.
async fn call(state: SharedState, req: Request, origin: Origin, model_action: &str) -> Response {
    let Some((model, action)) = model_action.rsplit_once(':') else {
        return no_method(&origin);
    };
    let model = model.trim().to_string();
    let door = Door {
        endpoint: Endpoint::GenerateContent,
        dialect: Dialect::Gemini,
        name: "gemini",
    };
    match action {
        "generateContent" => serve(state, req, origin, door, |b| read_head(b, model, false)).await,
        "streamGenerateContent" => {
            // Without `alt=sse` Google streams one JSON array instead of SSE.
            let sse = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            let resp = serve(state, req, origin, door, |b| read_head(b, model, true)).await;
            if sse { resp } else { json_array(resp) }
        }
        "countTokens" => count_tokens(state, req, origin, model).await,
        other => RelayError::new(
            super::error::Kind::NotFound,
            "unknown_method",
            format!("unknown method '{other}'"),
        )
        .into_dialect(Dialect::Gemini, &origin.request_id),
    }
}

/// Most candidates one call may ask for (Gemini's own limit).
pub const MAX_CANDIDATES: i64 = 8;

fn read_head(body: &[u8], model: String, stream: bool) -> Result<Head, RelayError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
    if model.is_empty() {
        return Err(errors::bad_request("model is required in the path"));
    }
    let cfg = v
        .get("generationConfig")
        .or_else(|| v.get("generation_config"));
    // An integer field of generationConfig (either spelling); present but
    // not an integer is an error, not a default.
    let int = |camel: &str, snake: &str| -> Result<Option<i64>, RelayError> {
        match cfg.and_then(|c| c.get(camel).or_else(|| c.get(snake))) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                errors::bad_request(format!("generationConfig.{camel} must be an integer"))
            }),
        }
    };
    let max = int("maxOutputTokens", "max_output_tokens")?;
    let n = int("candidateCount", "candidate_count")?.unwrap_or(1);
    if !(1..=MAX_CANDIDATES).contains(&n) {
        return Err(errors::bad_request(format!(
            "generationConfig.candidateCount must be between 1 and {MAX_CANDIDATES}"
        )));
    }
    Ok(Head {
        model,
        stream,
        max_output: super::positive_max(max)?.map(|m| m.saturating_mul(n)),
        wants_stream_usage: true,
    })
}

/// Counted locally (tiktoken): no upstream call, no charge.
async fn count_tokens(state: SharedState, req: Request, origin: Origin, model: String) -> Response {
    let (parts, body) = req.into_parts();
    let rid = origin.request_id;
    let result = async {
        let caller = gate::admit(&state, &parts, origin.peer).await?;
        let body = read_body(body, state.config.max_body_bytes).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
        gate::admit_model(&state, &caller, &model).await?;
        let inner = v
            .get("generateContentRequest")
            .or_else(|| v.get("generate_content_request"))
            .unwrap_or(&v);
        let hub = gemini::request_to_hub(inner, &model, false);
        let n = tokio::task::spawn_blocking(move || tokens::count_prompt(&model, &hub))
            .await
            .map_err(|e| errors::internal(e.to_string()))?;
        Ok::<_, RelayError>(n)
    }
    .await;
    match result {
        Ok(n) => axum::Json(json!({"totalTokens": n})).into_response(),
        Err(e) => e.into_dialect(Dialect::Gemini, &rid),
    }
}

/// A Gemini answer in the array form of `:streamGenerateContent` (no
/// `alt=sse`): the chunks as the elements of one JSON array, written as
/// they arrive; an error body is wrapped the same way (`[{"error":…}]`).
fn json_array(resp: Response) -> Response {
    use futures_util::StreamExt;

    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let is_sse = parts.status == axum::http::StatusCode::OK;
    struct State {
        body: axum::body::BodyDataStream,
        scanner: super::sse::Scanner,
        /// Elements written so far.
        written: usize,
        is_sse: bool,
        /// A non-stream body read so far.
        whole: Vec<u8>,
        done: bool,
    }
    impl State {
        fn element(&mut self, data: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(if self.written == 0 { b"[" } else { b",\r\n" });
            out.extend_from_slice(data);
            self.written += 1;
        }
    }
    let state = State {
        body: body.into_data_stream(),
        scanner: super::sse::Scanner::default(),
        written: 0,
        is_sse,
        whole: Vec::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let mut out = Vec::new();
            match st.body.next().await {
                Some(Ok(chunk)) if st.is_sse => {
                    let mut events = Vec::new();
                    if st.scanner.feed(&chunk, &mut events).is_err() {
                        st.done = true;
                    }
                    for e in events.iter().filter(|e| !e.data.is_empty()) {
                        st.element(&e.data, &mut out);
                    }
                }
                Some(Ok(chunk)) => st.whole.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), st));
                }
                None => {
                    st.done = true;
                    if st.is_sse {
                        if let Some(e) = st.scanner.finish().filter(|e| !e.data.is_empty()) {
                            st.element(&e.data, &mut out);
                        }
                    } else {
                        let whole = std::mem::take(&mut st.whole);
                        st.element(&whole, &mut out);
                    }
                    if st.written == 0 {
                        out.push(b'[');
                    }
                    out.push(b']');
                }
            }
            if !out.is_empty() {
                return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(out)), st));
            }
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}
