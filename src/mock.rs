//! A mock upstream provider, used by the tests and the benchmark alike.
//!
//! It speaks OpenAI's chat, completions, embeddings and models, Anthropic's
//! messages and Gemini's generateContent (JSON and SSE, with tool calls: when
//! the request offers tools, the mock calls the first one with `{"q":"mock"}`
//! unless the last turn already is a tool result).
//! What it does is chosen by the API key it is called with, so each channel
//! of a test can behave differently:
//!
//! | key | behaviour |
//! |---|---|
//! | anything else | answers normally |
//! | `fail-<status>` | answers `<status>` with an OpenAI error body |
//! | `insufficient-quota` | 429 with code `insufficient_quota` |
//! | `slow-<ms>` | waits `<ms>` before answering |
//! | `hang` | never answers |
//! | `garbage` | 200 with a body that is not JSON |
//! | `truncate` | streams two events, then cuts the connection |
//! | `stall-<ms>` | streams one event, then is silent for `<ms>` |
//! | `no-usage` | never reports usage |
//! | `stream-error` | streams the first events, then the provider's mid-stream error event |
//! | `bad-key`, `bad-key-…` | the provider's own answer to an invalid key, quoting it as OpenAI does (Gemini: 400 `API_KEY_INVALID`) |
//!
//! Failures use each provider's own error body and error type for the status
//! (OpenAI `{"error":{message,type,code}}`, Anthropic
//! `{"type":"error","error":{type,message}}`, Gemini
//! `{"error":{code,message,status}}`).
//!
//! Usage is fixed: [`PROMPT_TOKENS`] in, and `min(max_tokens, COMPLETION_TOKENS)`
//! out, so tests can compute exact costs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Prompt tokens every mock answer reports.
pub const PROMPT_TOKENS: i64 = 10;
/// Completion tokens a mock answer reports when `max_tokens` allows.
pub const COMPLETION_TOKENS: i64 = 20;
/// Content chunks in a mock stream.
pub const STREAM_CHUNKS: usize = 5;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub path: String,
    pub body: Value,
    pub headers: HeaderMap,
}

/// Shared mock state: what it has seen.
#[derive(Default)]
pub struct MockState {
    pub seen: Mutex<Vec<Seen>>,
    /// Requests served (cheap counter, also with recording off).
    pub hits: AtomicU64,
    /// Skip recording (benchmarks).
    pub quiet: bool,
    /// Client addresses requests came from: one per upstream connection the
    /// gateway opened (not recorded when quiet).
    pub peers: Mutex<std::collections::HashSet<SocketAddr>>,
}

impl MockState {
    /// Requests seen with `key`.
    pub fn count(&self, key: &str) -> usize {
        self.seen.lock().iter().filter(|s| s.key == key).count()
    }

    /// The last request seen.
    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().last().cloned()
    }

    /// Distinct connections requests arrived on.
    pub fn connections(&self) -> usize {
        self.peers.lock().len()
    }
}

/// A mock listening on a random loopback port.
pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
}

impl Mock {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a mock on `addr` (port 0: any free port) in the background.
pub async fn start(addr: SocketAddr, quiet: bool) -> std::io::Result<Mock> {
    let state = Arc::new(MockState {
        quiet,
        ..MockState::default()
    });
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Mock { addr, state })
}

/// The mock's routes.
pub fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/completions", post(openai_completions))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/models", get(openai_models))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(openai_chat),
        )
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1beta/models/{model_action}", post(gemini_call))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            note_peer,
        ))
        .with_state(state)
}

/// Notes which connection a request came on.
async fn note_peer(
    State(state): State<Arc<MockState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !state.quiet
        && let Some(c) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        state.peers.lock().insert(c.0);
    }
    next.run(req).await
}

/// The key the caller used (OpenAI Bearer, Azure `api-key`, Anthropic
/// `x-api-key`, Gemini `x-goog-api-key` or `?key=`).
fn key_of(headers: &HeaderMap) -> String {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    h("authorization")
        .map(|v| v.trim_start_matches("Bearer ").to_string())
        .or_else(|| h("api-key"))
        .or_else(|| h("x-api-key"))
        .or_else(|| h("x-goog-api-key"))
        .unwrap_or_default()
}

/// What the key asks the mock to do.
#[derive(Debug, Clone, PartialEq)]
enum Behaviour {
    Normal,
    Fail(StatusCode),
    InsufficientQuota,
    Slow(Duration),
    Hang,
    Garbage,
    Truncate,
    Stall(Duration),
    NoUsage,
    StreamError,
    BadKey(String),
}

fn behaviour(key: &str) -> Behaviour {
    let ms = |s: &str| Duration::from_millis(s.parse().unwrap_or(100));
    if let Some(code) = key.strip_prefix("fail-") {
        return Behaviour::Fail(
            code.parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        );
    }
    if let Some(v) = key.strip_prefix("slow-") {
        return Behaviour::Slow(ms(v));
    }
    if let Some(v) = key.strip_prefix("stall-") {
        return Behaviour::Stall(ms(v));
    }
    match key {
        "insufficient-quota" => Behaviour::InsufficientQuota,
        "hang" => Behaviour::Hang,
        "garbage" => Behaviour::Garbage,
        "truncate" => Behaviour::Truncate,
        "no-usage" => Behaviour::NoUsage,
        "stream-error" => Behaviour::StreamError,
        k if k == "bad-key" || k.starts_with("bad-key-") => Behaviour::BadKey(k.to_string()),
        _ => Behaviour::Normal,
    }
}

fn record(state: &MockState, headers: &HeaderMap, path: &str, body: &Bytes) -> (String, Value) {
    state.hits.fetch_add(1, Ordering::Relaxed);
    let key = key_of(headers);
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if !state.quiet {
        state.seen.lock().push(Seen {
            key: key.clone(),
            path: path.to_string(),
            body: v.clone(),
            headers: headers.clone(),
        });
    }
    (key, v)
}

fn openai_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "mock_error", "code": code}})),
    )
        .into_response()
}

/// Applies the failure behaviours shared by every endpoint; `None` means go
/// on and answer.
async fn pre(b: &Behaviour) -> Option<Response> {
    match b {
        Behaviour::Fail(s) => Some(openai_error(*s, "mock_failure", "mock failure")),
        Behaviour::BadKey(key) => Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(
                    json!({"error": {"message": format!("Incorrect API key provided: {key}."),
                    "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
                ),
            )
                .into_response(),
        ),
        Behaviour::InsufficientQuota => Some(openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "You exceeded your current quota",
        )),
        Behaviour::Slow(d) => {
            tokio::time::sleep(*d).await;
            None
        }
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Behaviour::Garbage => Some((StatusCode::OK, "<html>not json").into_response()),
        _ => None,
    }
}

fn completion_tokens(req: &Value) -> i64 {
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_i64)
        .unwrap_or(COMPLETION_TOKENS);
    max.clamp(0, COMPLETION_TOKENS)
}

fn usage_json(completion: i64) -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    })
}

/// Words of the mock's answer.
fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("word{i} ")).collect()
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The tool the mock calls, if the request offers tools and the last turn
/// is not already a tool result: (name, arguments object).
fn tool_to_call(tool_names: Vec<String>, last_is_result: bool) -> Option<(String, Value)> {
    if last_is_result {
        return None;
    }
    tool_names
        .into_iter()
        .next()
        .map(|n| (n, json!({"q": "mock"})))
}

async fn openai_chat(
    State(st): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (key, req) = record(&st, &headers, "/v1/chat/completions", &body);
    let b = behaviour(&key);
    if let Some(r) = pre(&b).await {
        return r;
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let completion = completion_tokens(&req);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let names: Vec<String> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            t.pointer("/function/name")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let last_is_result = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    let tool = tool_to_call(names, last_is_result);
    if !stream {
        let (message, finish) = match &tool {
            Some((name, args)) => (
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock0", "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}}]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": words(STREAM_CHUNKS).concat()}),
                "stop",
            ),
        };
        let mut v = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        });
        if b != Behaviour::NoUsage {
            v["usage"] = usage_json(completion);
        }
        return axum::Json(v).into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && b != Behaviour::NoUsage;
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![sse(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    let finish = match &tool {
        Some((name, args)) => {
            events.push(sse(&chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_mock0", "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            )));
            let a = args.to_string();
            let (x, y) = a.split_at(a.len() / 2);
            for part in [x, y] {
                events.push(sse(&chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                    Value::Null,
                )));
            }
            "tool_calls"
        }
        None => {
            for w in words(STREAM_CHUNKS) {
                events.push(sse(&chunk(json!({"content": w}), Value::Null)));
            }
            "stop"
        }
    };
    events.push(sse(&chunk(json!({}), json!(finish))));
    if include_usage {
        events.push(sse(
            &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [], "usage": usage_json(completion)}),
        ));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    if b == Behaviour::StreamError {
        events.truncate(3);
        events.push(sse(
            &json!({"error": {"message": MID_STREAM_ERROR, "type": "server_error",
            "param": null, "code": null}}),
        ));
    }
    stream_events(events, b)
}

/// The message of every mock mid-stream error (`stream-error` key).
pub const MID_STREAM_ERROR: &str = "mock overloaded mid-stream";

fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

async fn anthropic_messages(
    State(st): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (key, req) = record(&st, &headers, "/v1/messages", &body);
    let b = behaviour(&key);
    if let Some(r) = pre_anthropic(&b).await {
        return r;
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let completion = completion_tokens(&req);
    let names: Vec<String> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let last_is_result = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|x| x.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
    let tool = tool_to_call(names, last_is_result);
    let usage = json!({"input_tokens": PROMPT_TOKENS, "output_tokens": completion});
    let stop = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let content = match &tool {
            Some((name, args)) => {
                json!([{"type": "tool_use", "id": "toolu_mock0", "name": name, "input": args}])
            }
            None => json!([{"type": "text", "text": words(STREAM_CHUNKS).concat()}]),
        };
        let mut v = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null});
        if b != Behaviour::NoUsage {
            v["usage"] = usage;
        }
        return axum::Json(v).into_response();
    }
    let mut events = vec![named_event(
        "message_start",
        &json!({"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}),
    )];
    events.push(named_event("ping", &json!({"type": "ping"})));
    match &tool {
        Some((name, args)) => {
            events.push(named_event("content_block_start", &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_mock0", "name": name, "input": {}}})));
            let a = args.to_string();
            let (x, y) = a.split_at(a.len() / 2);
            for part in [x, y] {
                events.push(named_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        }
        None => {
            events.push(named_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for w in words(STREAM_CHUNKS) {
                events.push(named_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}}),
                ));
            }
        }
    }
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    let out_usage = if b == Behaviour::NoUsage {
        json!({})
    } else {
        json!({"output_tokens": completion})
    };
    events.push(named_event(
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": out_usage}),
    ));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    if b == Behaviour::StreamError {
        // message_start, ping, content_block_start, the first delta.
        events.truncate(4);
        events.push(named_event(
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": MID_STREAM_ERROR}}),
        ));
    }
    stream_events(events, b)
}

/// Anthropic's `error.type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Google's `error.status` (google.rpc.Code name) for an HTTP status.
pub fn gemini_error_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// The failure behaviours, with Anthropic-shaped error bodies.
async fn pre_anthropic(b: &Behaviour) -> Option<Response> {
    let err = |s: StatusCode, t: &str| {
        (
            s,
            axum::Json(
                json!({"type": "error", "error": {"type": t, "message": "mock failure"},
                "request_id": "req_mock"}),
            ),
        )
            .into_response()
    };
    match b {
        Behaviour::Fail(s) => Some(err(*s, anthropic_error_type(s.as_u16()))),
        Behaviour::BadKey(_) => Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"type": "error",
                    "error": {"type": "authentication_error", "message": "invalid x-api-key"}})),
            )
                .into_response(),
        ),
        Behaviour::InsufficientQuota => {
            Some(err(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"))
        }
        other => pre(other).await,
    }
}

async fn gemini_call(
    State(st): State<Arc<MockState>>,
    axum::extract::Path(model_action): axum::extract::Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let mut headers = headers;
    if let Some(k) = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))
        && let Ok(v) = k.parse()
    {
        headers.insert("x-goog-api-key", v);
    }
    let (key, req) = record(
        &st,
        &headers,
        &format!("/v1beta/models/{model_action}"),
        &body,
    );
    let b = behaviour(&key);
    let gerr = |s: StatusCode| {
        (
            s,
            axum::Json(
                json!({"error": {"code": s.as_u16(), "message": "mock failure",
            "status": gemini_error_status(s.as_u16())}}),
            ),
        )
            .into_response()
    };
    match &b {
        Behaviour::Fail(s) => return gerr(*s),
        Behaviour::InsufficientQuota => return gerr(StatusCode::TOO_MANY_REQUESTS),
        Behaviour::BadKey(_) => {
            // Gemini answers a bad key with 400, not 401.
            let msg = "API key not valid. Please pass a valid API key.";
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"code": 400, "message": msg,
                "status": "INVALID_ARGUMENT", "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": msg}]}})))
                .into_response();
        }
        other => {
            if let Some(r) = pre(other).await {
                return r;
            }
        }
    }
    let (model, action) = model_action
        .rsplit_once(':')
        .unwrap_or((model_action.as_str(), ""));
    // Gemini accepts camelCase and snake_case field names alike.
    let either = |v: &Value, a: &str, b: &str| v.get(a).or_else(|| v.get(b)).cloned();
    let max = either(&req, "generationConfig", "generation_config")
        .and_then(|g| either(&g, "maxOutputTokens", "max_output_tokens"))
        .and_then(|m| m.as_i64())
        .unwrap_or(COMPLETION_TOKENS);
    let completion = max.clamp(0, COMPLETION_TOKENS);
    let names: Vec<String> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| either(t, "functionDeclarations", "function_declarations"))
        .filter_map(|d| d.as_array().cloned())
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let last_is_result = req
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|p| {
            p.iter().any(|x| {
                x.get("functionResponse").is_some() || x.get("function_response").is_some()
            })
        });
    let tool = tool_to_call(names, last_is_result);
    let usage = json!({"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": completion,
        "totalTokenCount": PROMPT_TOKENS + completion});
    let part_list = |text: &str| match &tool {
        Some((name, args)) => json!([{"functionCall": {"name": name, "args": args}}]),
        None => json!([{"text": text}]),
    };
    if action != "streamGenerateContent" {
        let mut v = json!({"candidates": [{"content": {"role": "model", "parts": part_list(&words(STREAM_CHUNKS).concat())},
            "finishReason": "STOP", "index": 0}], "modelVersion": model, "responseId": "mock"});
        if b != Behaviour::NoUsage {
            v["usageMetadata"] = usage;
        }
        return axum::Json(v).into_response();
    }
    let mut events = Vec::new();
    let ws = words(STREAM_CHUNKS);
    let n = ws.len();
    for (i, w) in ws.into_iter().enumerate() {
        let last = i + 1 == n;
        let mut c = json!({"candidates": [{"content": {"role": "model", "parts": part_list(&w)}, "index": 0}],
            "modelVersion": model, "responseId": "mock"});
        if last {
            c["candidates"][0]["finishReason"] = json!("STOP");
        }
        if b != Behaviour::NoUsage {
            c["usageMetadata"] = usage.clone();
        }
        events.push(Bytes::from(format!("data: {c}\r\n\r\n")));
        if tool.is_some() {
            // A function call arrives whole, once.
            if let Some(last_event) = events.pop() {
                let mut c2: Value = serde_json::from_slice(&last_event[6..]).unwrap_or(Value::Null);
                c2["candidates"][0]["finishReason"] = json!("STOP");
                events.push(Bytes::from(format!("data: {c2}\r\n\r\n")));
            }
            break;
        }
    }
    if b == Behaviour::StreamError {
        events.truncate(2);
        events.push(Bytes::from(format!(
            "data: {}\r\n\r\n",
            json!({"error": {"code": 503, "message": MID_STREAM_ERROR, "status": "UNAVAILABLE"}})
        )));
    }
    stream_events(events, b)
}

/// Streams events, applying the stream behaviours.
fn stream_events(events: Vec<Bytes>, b: Behaviour) -> Response {
    let body = match b {
        Behaviour::Truncate => {
            let head: Vec<Result<Bytes, std::io::Error>> =
                events.into_iter().take(2).map(Ok).collect();
            // Give hyper time to write the first events before the cut (an
            // immediate error aborts the connection with nothing sent).
            let tail = stream::once(async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err::<Bytes, std::io::Error>(std::io::Error::other("mock cut the stream"))
            });
            Body::from_stream(futures_util::StreamExt::chain(stream::iter(head), tail))
        }
        Behaviour::Stall(d) => {
            let mut it = events.into_iter();
            let first = it.next();
            let rest: Vec<Bytes> = it.collect();
            let s = stream::unfold((first, Some(rest), d), |(first, rest, d)| async move {
                if let Some(f) = first {
                    return Some((Ok::<Bytes, Infallible>(f), (None, rest, d)));
                }
                let rest = rest?;
                tokio::time::sleep(d).await;
                Some((Ok(Bytes::from(rest.concat())), (None, None, d)))
            });
            Body::from_stream(s)
        }
        _ => Body::from_stream(stream::iter(
            events.into_iter().map(Ok::<Bytes, Infallible>),
        )),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn openai_completions(
    State(st): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (key, req) = record(&st, &headers, "/v1/completions", &body);
    let b = behaviour(&key);
    if let Some(r) = pre(&b).await {
        return r;
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let completion = completion_tokens(&req);
    if req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let include_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut events: Vec<Bytes> = words(STREAM_CHUNKS)
            .into_iter()
            .map(|w| {
                sse(
                    &json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
                "choices": [{"index": 0, "text": w, "finish_reason": null}]}),
                )
            })
            .collect();
        if include_usage {
            events.push(sse(
                &json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
                "choices": [], "usage": usage_json(completion)}),
            ));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        return stream_events(events, b);
    }
    let mut v = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": model,
        "choices": [{"index": 0, "text": words(STREAM_CHUNKS).concat(), "finish_reason": "stop"}]});
    if b != Behaviour::NoUsage {
        v["usage"] = usage_json(completion);
    }
    axum::Json(v).into_response()
}

async fn openai_embeddings(
    State(st): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (key, req) = record(&st, &headers, "/v1/embeddings", &body);
    let b = behaviour(&key);
    if let Some(r) = pre(&b).await {
        return r;
    }
    let inputs = match req.get("input") {
        Some(Value::Array(a)) => a.len().max(1),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]}))
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req.get("model").cloned().unwrap_or(Value::Null),
        "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
    }))
    .into_response()
}

async fn openai_models() -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_from_keys() {
        assert_eq!(behaviour("ok"), Behaviour::Normal);
        assert_eq!(
            behaviour("fail-503"),
            Behaviour::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            behaviour("slow-20"),
            Behaviour::Slow(Duration::from_millis(20))
        );
        assert_eq!(behaviour("hang"), Behaviour::Hang);
    }
}
