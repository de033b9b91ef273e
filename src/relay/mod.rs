//! The relay API (SPEC §7): what SDKs call.
//!
//! Path of a call: [`gate::admit`] (key, token, IP, user) → read and parse the
//! body (model, stream, max tokens) → [`gate::admit_model`] → [`pipeline`]
//! (route, price, reserve, forward with failover, settle) → response in the
//! caller's dialect. Errors of every step go through [`error::RelayError`].

pub mod anthropic;
pub mod convert;
pub mod error;
pub mod gate;
pub mod gemini;
pub mod openai;
pub mod pipeline;
pub mod providers;
pub mod responses;
pub mod sse;
pub mod stream;
pub mod tab;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use bytes::Bytes;
use tower_http::request_id::RequestId;

use self::error::{Dialect, RelayError, errors};
use self::gate::Caller;
use self::providers::Endpoint;
use crate::state::SharedState;

/// Relay routes, the hot doors among them.
pub fn router() -> Router<SharedState> {
    let mut r = openai::router()
        .merge(anthropic::router())
        .merge(gemini::router());
    for (door, path) in HotDoor::ALL {
        r = r.route(
            path,
            axum::routing::post(
                move |axum::extract::State(s): axum::extract::State<SharedState>,
                      req: axum::extract::Request| {
                    let origin = Origin::of(&req);
                    door.serve(s, req, origin)
                },
            ),
        );
    }
    r
}

/// Who sent a call and the id it was given. The front passes it to a hot
/// door directly; on the router's routes it comes from the request's
/// extensions (`ConnectInfo`, `RequestId`), which the front puts there.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The TCP peer (the client, or the proxy in front of it).
    pub peer: IpAddr,
    pub request_id: String,
}

impl Origin {
    /// The origin the front recorded in a routed request's extensions.
    pub fn of<B>(req: &axum::http::Request<B>) -> Origin {
        Origin {
            peer: peer_in(req.extensions()),
            request_id: request_id_in(req.extensions()),
        }
    }
}

fn peer_in(ext: &axum::http::Extensions) -> IpAddr {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn request_id_in(ext: &axum::http::Extensions) -> String {
    ext.get::<RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The relay doors SDKs call on every call, which the server serves without
/// axum's router (`server::front`): matching the route, the router's
/// per-request boxes and extension inserts and the layers' futures were
/// ~6 % of a relayed call's instructions. Each is also in [`router`] with
/// the same handler, so any other method on the path still gets its 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotDoor {
    Chat,
    Completions,
    Embeddings,
    Messages,
    Responses,
    /// `/v1beta/models/{model}:{method}` and `/v1/models/{model}:{method}`
    /// ([`gemini::door_segment`]): a path parameter, so not in [`Self::ALL`].
    Gemini,
}

impl HotDoor {
    /// Every hot door with its path (all `POST`).
    pub const ALL: [(HotDoor, &'static str); 5] = [
        (HotDoor::Chat, "/v1/chat/completions"),
        (HotDoor::Completions, "/v1/completions"),
        (HotDoor::Embeddings, "/v1/embeddings"),
        (HotDoor::Messages, "/v1/messages"),
        (HotDoor::Responses, "/v1/responses"),
    ];

    /// The hot door a request is for, if it is for one.
    pub fn of(method: &axum::http::Method, path: &str) -> Option<HotDoor> {
        if method != axum::http::Method::POST {
            return None;
        }
        Self::ALL
            .iter()
            .find(|(_, p)| *p == path)
            .map(|(d, _)| *d)
            .or_else(|| gemini::door_segment(path).map(|_| HotDoor::Gemini))
    }

    /// Serves the call with the door's handler, the one [`router`] routes to.
    pub async fn serve(
        self,
        state: SharedState,
        req: axum::extract::Request,
        origin: Origin,
    ) -> axum::response::Response {
        match self {
            HotDoor::Chat => openai::call(state, req, origin, Endpoint::ChatCompletions).await,
            HotDoor::Completions => openai::call(state, req, origin, Endpoint::Completions).await,
            HotDoor::Embeddings => openai::call(state, req, origin, Endpoint::Embeddings).await,
            HotDoor::Messages => anthropic::messages(state, req, origin).await,
            HotDoor::Responses => responses::responses(state, req, origin).await,
            HotDoor::Gemini => gemini::hot(state, req, origin).await,
        }
    }
}

/// What a door reads from a body before routing.
#[derive(Debug, Clone)]
pub struct Head {
    pub model: String,
    pub stream: bool,
    /// The caller's output cap (× choices), if it set one.
    pub max_output: Option<i64>,
    /// Whether the caller asked for OpenAI's in-stream usage chunk.
    pub wants_stream_usage: bool,
}

/// A door: the endpoint and the dialect its callers speak.
#[derive(Debug, Clone, Copy)]
pub struct Door {
    pub endpoint: Endpoint,
    pub dialect: Dialect,
    /// Name for the log (`openai`, `anthropic`, `gemini`, `responses`).
    pub name: &'static str,
}

/// Runs one relay call through a door: key checks, body, model checks, then
/// the pipeline; every failure answers in the door's dialect.
pub async fn serve(
    state: SharedState,
    req: axum::extract::Request,
    origin: Origin,
    door: Door,
    read_head: impl FnOnce(&Bytes) -> Result<Head, RelayError>,
) -> axum::response::Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let rid = origin.request_id;
    let prepared = async {
        let caller = gate::admit(&state, &parts, origin.peer).await?;
        let body = read_body(body, state.config.max_body_bytes).await?;
        // serde reads a struct from a JSON array too (by position); every
        // door's body is an object.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(errors::bad_request(
                "invalid request body: expected a JSON object",
            ));
        }
        let head = read_head(&body)?;
        gate::admit_model(&state, &caller, &head.model).await?;
        Ok::<Call, RelayError>(Call {
            prompt_upper: prompt_upper_bound(&body),
            caller,
            dialect: door.dialect,
            dialect_name: door.name,
            endpoint: door.endpoint,
            model: head.model,
            stream: head.stream,
            body,
            max_output: head.max_output,
            wants_stream_usage: head.wants_stream_usage,
            request_id: rid.clone(),
            path: parts.uri.path().to_string(),
            client: client_of(&parts),
            started,
        })
    }
    .await;
    match prepared {
        // Boxed, as is each attempt (pipeline::run): rustc lays out a nested
        // future with room for each awaited future beside the others, and
        // unboxed this door's future was 31 KB in the release build, which
        // axum allocates and copies on every call; boxed it is ~3 KB.
        Ok(call) => Box::pin(pipeline::forward(&state, call)).await,
        Err(e) => e.into_dialect(door.dialect, &rid),
    }
}

/// The `model` field, required and non-blank.
pub fn required_model(m: Option<&str>) -> Result<String, RelayError> {
    match m.map(str::trim) {
        None | Some("") => Err(errors::bad_request("model is required")),
        Some(m) if m.len() > 256 => Err(errors::bad_request("model must be at most 256 bytes")),
        Some(m) => Ok(m.to_string()),
    }
}

/// Largest output cap a call may ask for: no model writes more, and a larger
/// figure is a mistake (or an attempt to make the reservation overflow).
pub const MAX_OUTPUT_TOKENS: i64 = 100_000_000;

/// An output cap must be positive and sane when given.
pub fn positive_max(m: Option<i64>) -> Result<Option<i64>, RelayError> {
    match m {
        Some(m) if !(1..=MAX_OUTPUT_TOKENS).contains(&m) => Err(errors::bad_request(format!(
            "max_tokens must be an integer from 1 to {MAX_OUTPUT_TOKENS}"
        ))),
        other => Ok(other),
    }
}

/// Everything known about a call before it is forwarded.
pub struct Call {
    pub caller: Caller,
    /// The caller's dialect (error shape, response format).
    pub dialect: Dialect,
    /// Dialect name for the log (`openai`, `anthropic`, `gemini`, `responses`).
    pub dialect_name: &'static str,
    pub endpoint: Endpoint,
    /// The model the caller asked for (billing and routing use this name).
    pub model: String,
    pub stream: bool,
    /// The body as received.
    pub body: Bytes,
    /// An upper bound on prompt tokens (for the reservation).
    pub prompt_upper: i64,
    /// Output tokens the caller capped the call at (× n), if it did.
    pub max_output: Option<i64>,
    /// Whether the caller itself asked for the in-stream usage chunk.
    pub wants_stream_usage: bool,
    pub request_id: String,
    pub path: String,
    /// The caller's SDK (first product token of its User-Agent).
    pub client: String,
    pub started: Instant,
}

/// The request id the front put on a routed request.
pub fn request_id(parts: &Parts) -> String {
    request_id_in(&parts.extensions)
}

/// The TCP peer the front put on a routed request.
pub fn peer(parts: &Parts) -> IpAddr {
    peer_in(&parts.extensions)
}

/// The caller's SDK, from its User-Agent (`OpenAI/Python 1.2.3` → `OpenAI/Python`).
pub fn client_of(parts: &Parts) -> String {
    parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split_whitespace().next())
        .map(|s| s.chars().take(64).collect())
        .unwrap_or_default()
}

/// Reads a request body up to `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, RelayError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            RelayError::new(
                error::Kind::TooLarge,
                "request_too_large",
                format!("request body exceeds {limit} bytes"),
            )
        } else if crate::util::is_body_timeout(&e) {
            let mut err = errors::bad_request("the request body was not received in time");
            err.code = "request_timeout";
            err.status = Some(axum::http::StatusCode::REQUEST_TIMEOUT);
            err
        } else {
            errors::bad_request(format!("could not read the request body: {e}"))
        }
    })
}

/// An upper bound on the prompt's tokens, without tokenizing: every token is
/// at least one byte of the body, except inline (data: URL) images, which
/// count as a fixed allowance instead of their base64 length.
pub fn prompt_upper_bound(body: &[u8]) -> i64 {
    const IMAGE_TOKENS: i64 = 2_000;
    let mut total = body.len() as i64;
    // Built once: a finder's set-up cost more than the search over a body.
    static DATA_URL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"data:"));
    let mut at = 0;
    while let Some(i) = DATA_URL.find(&body[at..]) {
        let start = at + i + 1;
        let len = memchr::memchr(b'"', &body[start..]).unwrap_or(body.len() - start);
        total = total - len as i64 + IMAGE_TOKENS;
        at = start + len;
    }
    total.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every relayed call allocates and copies its door's future: kept small
    /// by boxing the pipeline. (The test build lays futures out tighter than
    /// the release build: 3.0 KB boxed, 6.1 KB unboxed, against 3.3 KB and
    /// 31 KB in release.)
    #[tokio::test]
    async fn a_relay_call_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let (state, _writer) = crate::server::build_state(config).await.unwrap();
        let door = Door {
            endpoint: Endpoint::ChatCompletions,
            dialect: Dialect::OpenAi,
            name: "openai",
        };
        let req = axum::extract::Request::new(axum::body::Body::empty());
        let origin = Origin::of(&req);
        let fut = serve(state, req, origin, door, |_| {
            Err(errors::bad_request("unused"))
        });
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 4 * 1024, "a relay call's future is {size} bytes");
    }

    #[test]
    fn prompt_bound_counts_bytes_but_not_inline_images() {
        let text = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
        assert_eq!(prompt_upper_bound(text), text.len() as i64);
        let img = format!(
            r#"{{"messages":[{{"content":[{{"image_url":{{"url":"data:image/png;base64,{}"}}}}]}}]}}"#,
            "A".repeat(100_000)
        );
        let b = prompt_upper_bound(img.as_bytes());
        assert!(b < 3_000, "{b}");
    }
}
