//! Which conversion a call needs between its door and its channel, in one
//! place: the upstream body, the client's body (non-stream), and the stream
//! tap. The conversions themselves live in the provider modules; the hub
//! format is OpenAI Chat Completions.

use bytes::Bytes;
use serde_json::Value;

use super::Call;
use super::error::{Kind, RelayError, errors};
use super::providers::tables;
use super::providers::{Endpoint, Route, Wire, anthropic, gemini, responses};
use super::sse::Event;
use super::stream::{OpenAiTap, Tap};
use super::tab::UsageSource;
use crate::billing::{Usage, tokens};

/// The call as a hub (Chat Completions) request.
pub fn hub_request(call: &Call) -> Result<Value, RelayError> {
    let v: Value = serde_json::from_slice(&call.body)
        .map_err(|e| errors::bad_request(format!("invalid request body: {e}")))?;
    Ok(match call.endpoint {
        Endpoint::Messages => anthropic::request_to_hub(&v),
        Endpoint::GenerateContent => gemini::request_to_hub(&v, &call.model, call.stream),
        Endpoint::Responses => responses::request_to_hub(&v).map_err(errors::bad_request)?,
        _ => {
            let mut v = v;
            if call.stream {
                v["stream_options"] = serde_json::json!({"include_usage": true});
            }
            v
        }
    })
}

/// The body to send to a channel of dialect `wire`.
pub fn upstream_body(
    call: &Call,
    wire: Wire,
    route: Route,
    upstream_model: &str,
) -> Result<Bytes, RelayError> {
    if route == Route::Pass {
        return pass_body(call, wire, upstream_model);
    }
    let mut hub = hub_request(call)?;
    let out = match wire {
        Wire::OpenAi => {
            hub["model"] = Value::String(upstream_model.to_string());
            hub
        }
        Wire::Anthropic => anthropic::request_from_hub(&hub, upstream_model),
        Wire::Gemini => gemini::request_from_hub(&hub),
    };
    Ok(Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
}

/// Same dialect: the original bytes, unless the model name must change or
/// (OpenAI streams) the usage chunk must be asked for.
fn pass_body(call: &Call, wire: Wire, upstream_model: &str) -> Result<Bytes, RelayError> {
    // Gemini carries the model in the URL.
    let rename = wire != Wire::Gemini && upstream_model != call.model;
    let ask_usage =
        wire == Wire::OpenAi && call.stream && call.endpoint.streams() && !call.wants_stream_usage;
    if !rename && !ask_usage {
        return Ok(call.body.clone());
    }
    let has_opts = memchr::memmem::find(&call.body, b"\"stream_options\"").is_some();
    if !rename && !has_opts {
        // Cheap splice: insert the field right after the opening brace.
        if let Some(i) = call.body.iter().position(|b| *b == b'{') {
            let mut out = Vec::with_capacity(call.body.len() + 48);
            out.extend_from_slice(&call.body[..=i]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&call.body[i + 1..]);
            return Ok(Bytes::from(out));
        }
    }
    let mut v: Value = serde_json::from_slice(&call.body)
        .map_err(|e| errors::bad_request(format!("invalid JSON body: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        if rename {
            o.insert("model".into(), Value::String(upstream_model.to_string()));
        }
        if ask_usage {
            let so = o
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(so) = so.as_object_mut() {
                so.insert("include_usage".into(), Value::Bool(true));
            }
        }
    }
    Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
}

fn bad_body(wire: Wire) -> RelayError {
    RelayError::new(
        Kind::Upstream,
        "bad_response_body",
        format!("the upstream ({wire:?}) returned a body that is not valid JSON"),
    )
}

/// Turns a successful non-stream upstream body into the client's body and
/// the call's usage. `Err` means the body was unusable (retryable).
pub fn client_body(
    call: &Call,
    wire: Wire,
    route: Route,
    body: &Bytes,
) -> Result<(Bytes, Usage, UsageSource), RelayError> {
    // Hot path: OpenAI to OpenAI. Only `usage` is read; the body goes back
    // as is. Anything unusual takes the full parse below.
    if route == Route::Pass && wire == Wire::OpenAi {
        if let Some(u) = tables::openai_usage_fast(body)
            && (u.prompt_tokens > 0 || u.completion_tokens > 0)
        {
            return Ok((body.clone(), u, UsageSource::Upstream));
        }
        match tables::openai_usage_checked(body) {
            Ok(Some(u)) if u.prompt_tokens > 0 || u.completion_tokens > 0 => {
                return Ok((body.clone(), u, UsageSource::Upstream));
            }
            Ok(_) => {}
            Err(_) => return Err(bad_body(wire)),
        }
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| bad_body(wire))?;
    if route == Route::Pass {
        let reported = match wire {
            Wire::OpenAi => v
                .get("usage")
                .filter(|u| !u.is_null())
                .and_then(|_| tables::openai_usage(body)),
            Wire::Anthropic => v
                .get("usage")
                .filter(|u| u.is_object())
                .map(tables::anthropic_usage),
            Wire::Gemini => v
                .get("usageMetadata")
                .or_else(|| v.get("usage_metadata"))
                .filter(|u| u.is_object())
                .map(tables::gemini_usage),
        };
        let (usage, src) = match reported {
            Some(u) => (u, UsageSource::Upstream),
            None => (
                estimate(call, &to_hub(wire, &v, &call.model)),
                UsageSource::Local,
            ),
        };
        return Ok((body.clone(), usage, src));
    }
    let hub = to_hub(wire, &v, &call.model);
    let (usage, src) = match hub.get("usage").filter(|u| !u.is_null()) {
        Some(u) if has_counts(u) => (
            serde_json::from_value::<tables::OpenAiUsage>(u.clone())
                .map(|u| u.to_usage())
                .unwrap_or_default(),
            UsageSource::Upstream,
        ),
        _ => (estimate(call, &hub), UsageSource::Local),
    };
    let out = match call.endpoint {
        Endpoint::Messages => anthropic::response_from_hub(&hub, &call.model, &usage),
        Endpoint::GenerateContent => gemini::response_from_hub(&hub, &call.model, &usage),
        Endpoint::Responses => {
            responses::response_from_hub(&hub, &call.model, &usage, &call.request_id)
        }
        _ => {
            let mut hub = hub;
            hub["usage"] = tables::openai_usage_json(&usage);
            hub
        }
    };
    Ok((
        Bytes::from(serde_json::to_vec(&out).unwrap_or_default()),
        usage,
        src,
    ))
}

fn has_counts(u: &Value) -> bool {
    u.get("prompt_tokens").and_then(Value::as_i64).unwrap_or(0) > 0
        || u.get("completion_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

/// An upstream response in hub form.
fn to_hub(wire: Wire, v: &Value, model: &str) -> Value {
    match wire {
        Wire::OpenAi => v.clone(),
        Wire::Anthropic => anthropic::response_to_hub(v),
        Wire::Gemini => gemini::response_to_hub(v, model),
    }
}

/// Usage counted locally from the request and a hub response.
pub fn estimate(call: &Call, hub_response: &Value) -> Usage {
    let prompt = hub_request(call)
        .map(|req| tokens::count_prompt(&call.model, &req))
        .unwrap_or(0);
    let mut text = String::new();
    for c in hub_response
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for v in [
            c.pointer("/message/content"),
            c.pointer("/message/tool_calls"),
            c.get("text"),
        ]
        .into_iter()
        .flatten()
        {
            tokens::text_of(v, &mut text);
        }
    }
    Usage {
        prompt_tokens: prompt,
        completion_tokens: tokens::count(&call.model, &text),
        cached_tokens: 0,
    }
}

/// The stream tap for this door and channel.
pub fn tap(call: &Call, wire: Wire, route: Route) -> Box<dyn Tap> {
    tap_for(
        call.endpoint,
        wire,
        route,
        &call.model,
        &call.request_id,
        call.wants_stream_usage,
    )
}

/// The stream tap for a call through door `endpoint` answering as `model`
/// to a channel of dialect `wire` (what [`tap`] builds from a call).
pub fn tap_for(
    endpoint: Endpoint,
    wire: Wire,
    route: Route,
    model: &str,
    request_id: &str,
    wants_stream_usage: bool,
) -> Box<dyn Tap> {
    if route == Route::Pass {
        return match wire {
            Wire::OpenAi => Box::new(OpenAiTap::new(!wants_stream_usage)),
            Wire::Anthropic => Box::new(AnthropicPassTap::default()),
            Wire::Gemini => Box::new(GeminiPassTap::default()),
        };
    }
    let reader = match wire {
        Wire::OpenAi => Reader::OpenAi,
        Wire::Anthropic => Reader::Anthropic(anthropic::ToHub::default()),
        Wire::Gemini => Reader::Gemini(gemini::ToHub::new(model)),
    };
    let writer = match endpoint {
        Endpoint::Messages => Writer::Anthropic(anthropic::FromHub::new(model, request_id)),
        Endpoint::GenerateContent => Writer::Gemini(gemini::FromHub::new(model)),
        Endpoint::Responses => Writer::Responses(responses::FromHub::new(model, request_id)),
        _ => Writer::Chat {
            model: model.to_string(),
            hide_usage: !wants_stream_usage,
        },
    };
    Box::new(ConvertTap {
        reader,
        writer,
        usage: None,
        text: String::new(),
        ended: false,
        failed: false,
    })
}

/// Anthropic to an Anthropic client: pass-through; usage from
/// `message_start` (input) and `message_delta` (cumulative output).
#[derive(Default)]
struct AnthropicPassTap {
    usage: Option<tables::AnthropicStreamUsage>,
    text: String,
    stopped: bool,
    /// The upstream sent an error event (already passed on).
    failed: bool,
}

impl Tap for AnthropicPassTap {
    fn on_event(&mut self, ev: &Event, out: &mut Vec<Bytes>) {
        if self.failed {
            return;
        }
        out.push(ev.raw.clone());
        let name = ev.name.as_deref().unwrap_or("");
        if name == "error" {
            // The upstream's error event ends the stream.
            self.failed = true;
            return;
        }
        if !matches!(
            name,
            "message_start" | "message_delta" | "content_block_delta" | "message_stop"
        ) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&ev.data) else {
            return;
        };
        match name {
            "message_start" => {
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage.get_or_insert_default().merge(u);
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    self.usage.get_or_insert_default().merge(u);
                }
            }
            "content_block_delta" => {
                if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                    self.text.push_str(t);
                } else if let Some(t) = v.pointer("/delta/partial_json").and_then(Value::as_str) {
                    self.text.push_str(t);
                }
            }
            _ => self.stopped = true,
        }
    }

    fn on_end(&mut self, out: &mut Vec<Bytes>) {
        if !self.stopped && !self.failed {
            out.push(self.error_event("the upstream ended the stream early"));
        }
    }

    fn error_event(&self, message: &str) -> Bytes {
        anthropic::FromHub::error(message)
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn usage(&self) -> Option<Usage> {
        // Without message_delta the output count is only the start's stub.
        self.usage.filter(|_| self.stopped).map(|u| u.usage())
    }

    fn produced_text(&self) -> String {
        self.text.clone()
    }
}

/// Gemini to a Gemini client: pass-through; the last `usageMetadata` wins.
#[derive(Default)]
struct GeminiPassTap {
    usage: Option<Usage>,
    text: String,
    finished: bool,
    /// The upstream sent an error chunk (already passed on).
    failed: bool,
}

impl Tap for GeminiPassTap {
    fn on_event(&mut self, ev: &Event, out: &mut Vec<Bytes>) {
        if self.failed {
            return;
        }
        out.push(ev.raw.clone());
        let Ok(v) = serde_json::from_slice::<Value>(&ev.data) else {
            return;
        };
        if v.get("error").is_some() {
            // The upstream's error chunk ends the stream.
            self.failed = true;
            return;
        }
        if let Some(u) = v.get("usageMetadata").or_else(|| v.get("usage_metadata")) {
            self.usage = Some(tables::gemini_usage(u));
        }
        if let Some(c) = v.pointer("/candidates/0") {
            if c.get("finishReason").is_some() || c.get("finish_reason").is_some() {
                self.finished = true;
            }
            for p in c
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    self.text.push_str(t);
                }
            }
        }
    }

    fn on_end(&mut self, out: &mut Vec<Bytes>) {
        if !self.finished && !self.failed {
            out.push(self.error_event("the upstream ended the stream early"));
        }
    }

    fn error_event(&self, message: &str) -> Bytes {
        gemini::FromHub::error(message)
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.filter(|_| self.finished)
    }

    fn produced_text(&self) -> String {
        self.text.clone()
    }
}

enum Reader {
    OpenAi,
    Anthropic(anthropic::ToHub),
    Gemini(gemini::ToHub),
}

enum Writer {
    Chat { model: String, hide_usage: bool },
    Anthropic(anthropic::FromHub),
    Gemini(gemini::FromHub),
    Responses(responses::FromHub),
}

impl Writer {
    fn chunk(&mut self, c: &Value, out: &mut Vec<Bytes>) {
        match self {
            Writer::Chat { model, hide_usage } => {
                let usage_only = c
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.is_empty());
                if usage_only && *hide_usage {
                    return;
                }
                let mut c = c.clone();
                c["model"] = Value::String(model.clone());
                out.push(Bytes::from(format!("data: {c}\n\n")));
            }
            Writer::Anthropic(w) => w.chunk(c, out),
            Writer::Gemini(w) => w.chunk(c, out),
            Writer::Responses(w) => w.chunk(c, out),
        }
    }

    fn end(&mut self, out: &mut Vec<Bytes>) {
        match self {
            Writer::Chat { .. } => out.push(Bytes::from_static(b"data: [DONE]\n\n")),
            Writer::Anthropic(w) => w.end(out),
            Writer::Gemini(w) => w.end(out),
            Writer::Responses(w) => w.end(out),
        }
    }

    fn error(&mut self, message: &str) -> Bytes {
        match self {
            Writer::Chat { .. } => {
                let v = serde_json::json!({"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted"}});
                Bytes::from(format!("data: {v}\n\n"))
            }
            Writer::Anthropic(_) => anthropic::FromHub::error(message),
            Writer::Gemini(_) => gemini::FromHub::error(message),
            Writer::Responses(w) => w.error(message),
        }
    }
}

/// Upstream dialect → hub chunks → the client's dialect, event by event.
/// An upstream error ends the client's stream: one error event in the
/// client's dialect, nothing after it (no closing events that would make a
/// broken answer look complete).
struct ConvertTap {
    reader: Reader,
    writer: Writer,
    usage: Option<Usage>,
    text: String,
    /// The upstream ended its stream properly.
    ended: bool,
    /// An error event went to the client: the stream is over.
    failed: bool,
}

impl ConvertTap {
    fn write(&mut self, chunks: Vec<Value>, out: &mut Vec<Bytes>) {
        for c in chunks {
            if let Some(u) = c.get("usage").filter(|u| !u.is_null())
                && let Ok(u) = serde_json::from_value::<tables::OpenAiUsage>(u.clone())
            {
                self.usage = Some(u.to_usage());
            }
            for ch in c
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for v in [
                    ch.pointer("/delta/content"),
                    ch.pointer("/delta/tool_calls"),
                ]
                .into_iter()
                .flatten()
                {
                    tokens::text_of(v, &mut self.text);
                }
            }
            self.writer.chunk(&c, out);
        }
    }
}

impl Tap for ConvertTap {
    fn on_event(&mut self, ev: &Event, out: &mut Vec<Bytes>) {
        if self.failed {
            return;
        }
        let mut chunks = Vec::new();
        let res = match &mut self.reader {
            Reader::OpenAi => {
                if &ev.data[..] == b"[DONE]" {
                    self.ended = true;
                    Ok(())
                } else {
                    match serde_json::from_slice::<Value>(&ev.data) {
                        Ok(v) if v.get("error").is_some() => Err(v
                            .pointer("/error/message")
                            .and_then(Value::as_str)
                            .unwrap_or("upstream stream error")
                            .to_string()),
                        Ok(v) => {
                            chunks.push(v);
                            Ok(())
                        }
                        Err(_) => Ok(()),
                    }
                }
            }
            Reader::Anthropic(r) => {
                let res = r.event(ev, &mut chunks);
                self.ended = r.stopped();
                res
            }
            Reader::Gemini(r) => r.event(ev, &mut chunks),
        };
        self.write(chunks, out);
        if let Err(msg) = res {
            out.push(self.writer.error(&msg));
            self.failed = true;
        }
    }

    fn on_end(&mut self, out: &mut Vec<Bytes>) {
        if self.failed {
            return;
        }
        let mut chunks = Vec::new();
        if let Reader::Gemini(r) = &mut self.reader {
            // A Gemini stream simply ends; the chunk with a finishReason
            // tells a complete one.
            self.ended = r.finished();
            if self.ended {
                r.end(&mut chunks);
            }
        }
        if !self.ended {
            out.push(self.writer.error("the upstream ended the stream early"));
            self.failed = true;
            return;
        }
        self.write(chunks, out);
        self.writer.end(out);
    }

    fn error_event(&self, message: &str) -> Bytes {
        // A broken stream ends here; the writer's own error form is used.
        match &self.writer {
            Writer::Anthropic(_) => anthropic::FromHub::error(message),
            Writer::Gemini(_) => gemini::FromHub::error(message),
            Writer::Responses(w) => w.error_event(message),
            Writer::Chat { .. } => {
                let v = serde_json::json!({"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted"}});
                Bytes::from(format!("data: {v}\n\n"))
            }
        }
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
            .filter(|u| u.prompt_tokens > 0 || u.completion_tokens > 0)
    }

    fn produced_text(&self) -> String {
        self.text.clone()
    }
}
