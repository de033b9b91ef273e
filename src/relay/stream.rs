//! Streaming responses: events pass through as they arrive, never buffered
//! whole. A tap beside the stream reads the usage (or keeps what is needed to
//! count it locally). When the stream ends the tab is settled; when the client
//! goes away first, dropping the body drops the upstream request (cancelling
//! it) and the tab is settled for what was produced.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use memchr::memmem::Finder;
use serde_json::Value;

use super::Call;
use super::error::{Kind, RelayError};
use super::providers::tables;
use super::sse::{Event, Scanner};
use super::tab::{Tab, UsageSource};
use crate::billing::{Usage, tokens};
use crate::state::SharedState;

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

/// Watches (and, for conversions, rewrites) the events of one stream.
pub trait Tap: Send {
    /// Handles one upstream event, pushing what the client should get.
    fn on_event(&mut self, ev: &Event, out: &mut Vec<Bytes>);
    /// Called once at the end of the upstream stream; `complete` tells whether
    /// the upstream ended it properly.
    fn on_end(&mut self, out: &mut Vec<Bytes>);
    /// An event telling the client the stream broke.
    fn error_event(&self, message: &str) -> Bytes;
    /// Usage reported by the upstream, if any arrived.
    fn usage(&self) -> Option<Usage>;
    /// The generated text so far (for a local count).
    fn produced_text(&self) -> String;
    /// Whether the client was already sent an error event (nothing may
    /// follow it).
    fn failed(&self) -> bool {
        false
    }
}

/// OpenAI chunks to an OpenAI client: pass-through. Hides the usage-only
/// chunk when sluice (not the client) asked for it.
pub struct OpenAiTap {
    hide_usage_chunk: bool,
    usage: Option<Usage>,
    /// Data payloads kept until usage arrives (cheap: `Bytes` share memory).
    kept: Vec<Bytes>,
    done: bool,
    /// The upstream sent an error chunk (passed on as is).
    errored: bool,
}

impl OpenAiTap {
    /// A tap; `hide_usage_chunk` when the client did not ask for usage.
    pub fn new(hide_usage_chunk: bool) -> OpenAiTap {
        OpenAiTap {
            hide_usage_chunk,
            usage: None,
            kept: Vec::new(),
            done: false,
            errored: false,
        }
    }
}

impl Tap for OpenAiTap {
    fn on_event(&mut self, ev: &Event, out: &mut Vec<Bytes>) {
        let data = &ev.data[..];
        if data == b"[DONE]" {
            self.done = true;
            out.push(ev.raw.clone());
            return;
        }
        if data.starts_with(b"{\"error\"") {
            self.errored = true;
            out.push(ev.raw.clone());
            return;
        }
        // Built once: a finder's set-up cost more than the search over an event.
        static NO_CHOICES: LazyLock<Finder<'static>> =
            LazyLock::new(|| Finder::new(b"\"choices\":[]"));
        if tables::usage_key_at(data).is_some()
            && let Some(u) = tables::openai_usage(data)
        {
            self.usage = Some(u);
            self.kept.clear();
            if self.hide_usage_chunk && NO_CHOICES.find(data).is_some() {
                return;
            }
        }
        if self.usage.is_none() {
            self.kept.push(ev.data.clone());
        }
        out.push(ev.raw.clone());
    }

    fn on_end(&mut self, out: &mut Vec<Bytes>) {
        if !self.done && !self.errored {
            out.push(self.error_event("the upstream ended the stream early"));
        }
    }

    fn failed(&self) -> bool {
        self.errored
    }

    fn error_event(&self, message: &str) -> Bytes {
        let v = serde_json::json!({"error": {
            "message": message, "type": "upstream_error", "code": "stream_interrupted"
        }});
        Bytes::from(format!("data: {v}\n\n"))
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn produced_text(&self) -> String {
        let mut text = String::new();
        for d in &self.kept {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(choices) = v.get("choices").and_then(Value::as_array)
            {
                for c in choices {
                    for part in [
                        c.pointer("/delta/content"),
                        c.pointer("/delta/tool_calls"),
                        c.get("text"),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        tokens::append_text(part, &mut text);
                    }
                }
            }
        }
        text
    }
}

/// Joins pieces into one buffer (one piece is returned as is).
fn concat(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut out = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    out.freeze()
}

/// Everything the stream needs after the handler returned.
struct Relay {
    upstream: Upstream,
    scanner: Scanner,
    queue: VecDeque<Event>,
    tap: Box<dyn Tap>,
    tab: Option<Tab>,
    request_body: Bytes,
    model: String,
    idle: Duration,
    /// Fires after `idle` without upstream data (re-armed lazily).
    deadline: Pin<Box<tokio::time::Sleep>>,
    armed: std::time::Instant,
    eof: bool,
}

impl Relay {
    /// The next bytes for the client, or `None` at the end.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        let mut buf = Vec::new();
        loop {
            // What one upstream read produced leaves in one write: as soon as
            // it arrived, without a write (and a syscall) per event.
            while let Some(ev) = self.queue.pop_front() {
                self.tap.on_event(&ev, &mut buf);
            }
            if self.eof && self.tab.is_some() {
                self.tap.on_end(&mut buf);
                self.settle(StatusCode::OK, false).await;
            }
            if !buf.is_empty() {
                return Some(concat(buf));
            }
            if self.eof {
                return None;
            }
            let next = tokio::select! {
                biased;
                n = self.upstream.next() => Some(n),
                _ = &mut self.deadline => None,
            };
            match next {
                Some(Some(Ok(chunk))) => {
                    // Re-arm the idle timer only now and then: re-registering
                    // a timer per chunk cost more than the chunk's relay.
                    if self.armed.elapsed() > self.idle / 8 {
                        self.armed = std::time::Instant::now();
                        self.deadline
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.idle);
                    }
                    let mut events = Vec::new();
                    let mut fed = self.scanner.feed_bytes(chunk, &mut events);
                    // Take whatever else has already arrived, so it leaves
                    // in the same write.
                    while fed.is_ok() {
                        match self.upstream.next().now_or_never() {
                            Some(Some(Ok(more))) => {
                                fed = self.scanner.feed_bytes(more, &mut events)
                            }
                            _ => break,
                        }
                    }
                    if fed.is_err() {
                        return self.break_off("the upstream sent an oversized event").await;
                    }
                    self.queue.extend(events);
                }
                Some(None) => {
                    self.queue.extend(self.scanner.finish());
                    self.eof = true;
                }
                Some(Some(Err(_))) => {
                    return self
                        .break_off("the upstream connection failed mid-stream")
                        .await;
                }
                None => {
                    return self.break_off("the upstream stopped sending").await;
                }
            }
        }
    }

    /// Ends a broken stream: settle for what was produced, tell the client.
    async fn break_off(&mut self, why: &str) -> Option<Bytes> {
        self.eof = true;
        self.queue.clear();
        let ev = (!self.tap.failed()).then(|| self.tap.error_event(why));
        self.settle(StatusCode::BAD_GATEWAY, false).await;
        // After an error already sent, the stream just ends.
        ev
    }

    fn usage(&self) -> (Usage, UsageSource) {
        match self.tap.usage() {
            Some(u) => (u, UsageSource::Upstream),
            None => (
                local_usage(&self.model, &self.request_body, &self.tap.produced_text()),
                UsageSource::Local,
            ),
        }
    }

    async fn settle(&mut self, status: StatusCode, disconnected: bool) {
        if let Some(mut tab) = self.tab.take() {
            tab.client_disconnected = disconnected;
            let (u, src) = self.usage();
            tab.settle(u, src, status.as_u16()).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client left before the end: bill what was produced.
        if let Some(mut tab) = self.tab.take() {
            tab.client_disconnected = true;
            let (u, src) = self.usage();
            tab.settle_detached(u, src, 499);
        }
    }
}

/// Counts a call locally: the request's prompt and the produced text.
pub fn local_usage(model: &str, request: &[u8], produced: &str) -> Usage {
    let prompt = serde_json::from_slice::<Value>(request)
        .map(|v| tokens::count_prompt(model, &v))
        .unwrap_or(0);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: tokens::count(model, produced),
        cached_tokens: 0,
    }
}

/// Waits for the upstream's first event (so a failure before it can still be
/// retried elsewhere), then answers with a body that streams the rest.
pub async fn start(
    state: &SharedState,
    call: &Call,
    tab: Tab,
    resp: super::upstream::Response,
) -> Result<Response, (RelayError, Tab)> {
    let tap: Box<dyn Tap> = Box::new(OpenAiTap::new(!call.wants_stream_usage));
    start_with(state, call, tab, resp, tap).await
}

/// [`start`] with a given tap (dialect conversions bring their own).
pub async fn start_with(
    state: &SharedState,
    call: &Call,
    tab: Tab,
    resp: super::upstream::Response,
    tap: Box<dyn Tap>,
) -> Result<Response, (RelayError, Tab)> {
    let idle = state.config.upstream_idle();
    let mut upstream: Upstream = Box::pin(super::upstream::body_stream(resp));
    let mut scanner = Scanner::default();
    let mut events = Vec::new();
    let mut eof = false;
    while events.is_empty() && !eof {
        match tokio::time::timeout(idle, upstream.next()).await {
            Err(_) => {
                return Err((
                    RelayError::new(
                        Kind::Timeout,
                        "upstream_timeout",
                        "the upstream sent no stream event in time",
                    ),
                    tab,
                ));
            }
            Ok(Some(Err(e))) => {
                return Err((
                    RelayError::new(
                        Kind::Upstream,
                        "upstream_read_failed",
                        format!("reading the upstream stream failed: {e}"),
                    ),
                    tab,
                ));
            }
            Ok(None) => {
                events.extend(scanner.finish());
                eof = true;
            }
            Ok(Some(Ok(chunk))) => {
                if scanner.feed(&chunk, &mut events).is_err() {
                    return Err((
                        RelayError::new(
                            Kind::Upstream,
                            "bad_response_body",
                            "the upstream sent an oversized event",
                        ),
                        tab,
                    ));
                }
            }
        }
    }
    if events.is_empty() {
        return Err((
            RelayError::new(
                Kind::Upstream,
                "empty_response",
                "the upstream sent an empty stream",
            ),
            tab,
        ));
    }
    let relay = Relay {
        upstream,
        scanner,
        queue: events.into(),
        tap,
        tab: Some(tab),
        request_body: call.body.clone(),
        model: call.model.clone(),
        idle,
        deadline: Box::pin(tokio::time::sleep(idle)),
        armed: std::time::Instant::now(),
        eof,
    };
    let body = futures_util::stream::unfold(relay, |mut r| async move {
        r.next_bytes()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), r))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
