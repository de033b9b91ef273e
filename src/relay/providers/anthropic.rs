//! Anthropic Messages (channel type 14, and the `/v1/messages` door): the
//! request, response and stream conversions to and from the hub format
//! (OpenAI Chat Completions).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::tables::{
    AnthropicStreamUsage, Stop, anthropic_usage, anthropic_usage_json, openai_usage_json,
};
use super::{Outbound, header};
use crate::billing::Usage;
use crate::relay::sse::Event;
use crate::routing::ChannelRt;

/// `anthropic-version` sent upstream.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when an OpenAI-style caller gives none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: i64 = 4096;

/// `{base}/v1/messages` with `x-api-key`.
pub fn outbound(ch: &ChannelRt, body: Bytes) -> Result<Outbound, crate::relay::error::RelayError> {
    let url = ch
        .urls
        .as_ref()
        .map(|u| u.messages.clone())
        .ok_or_else(|| {
            crate::relay::error::errors::internal(format!("channel {}: invalid base URL", ch.id))
        })?;
    let mut headers = Vec::with_capacity(2);
    headers.extend(header("x-api-key", ch.pick_key()));
    headers.extend(header("anthropic-version", API_VERSION));
    Ok(Outbound { url, headers, body })
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Text of a string-or-blocks content.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(t) => t.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Anthropic ids must match `^[a-zA-Z0-9_-]+$`; others are mapped the same
/// way on both the tool call and its result.
pub fn safe_id(id: &str) -> String {
    let out: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "toolu_0".into()
    } else {
        out
    }
}

// ---------- requests ----------

/// An Anthropic request in hub form (for an OpenAI-style or Gemini channel).
pub fn request_to_hub(req: &Value) -> Value {
    let mut messages = Vec::new();
    let system = text_of(req.get("system").unwrap_or(&Value::Null));
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = s(m, "role");
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        let Value::Array(blocks) = content else {
            messages.push(json!({"role": role, "content": content}));
            continue;
        };
        if role == "assistant" {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in &blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("tool_use") => calls.push(json!({
                        "id": s(b, "id"), "type": "function",
                        "function": {"name": s(b, "name"),
                            "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into())},
                    })),
                    _ => {}
                }
            }
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
            continue;
        }
        let mut parts = Vec::new();
        for b in &blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("tool_result") => {
                    let mut out = text_of(b.get("content").unwrap_or(&Value::Null));
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        out = format!("Error: {out}");
                    }
                    messages.push(json!({"role": "tool", "tool_call_id": s(b, "tool_use_id"), "content": out}));
                }
                Some("text") => parts.push(json!({"type": "text", "text": s(b, "text")})),
                Some("image") => {
                    let src = b.get("source").cloned().unwrap_or(Value::Null);
                    let url = match src.get("type").and_then(Value::as_str) {
                        Some("base64") => {
                            format!("data:{};base64,{}", s(&src, "media_type"), s(&src, "data"))
                        }
                        _ => s(&src, "url"),
                    };
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                _ => {}
            }
        }
        if !parts.is_empty() {
            messages.push(json!({"role": role, "content": parts}));
        }
    }
    let mut hub = Map::new();
    hub.insert(
        "model".into(),
        req.get("model").cloned().unwrap_or(Value::Null),
    );
    hub.insert("messages".into(), Value::Array(messages));
    if let Some(m) = req.get("max_tokens") {
        hub.insert("max_tokens".into(), m.clone());
    }
    for k in ["temperature", "top_p", "stream"] {
        if let Some(v) = req.get(k) {
            hub.insert(k.into(), v.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences") {
        hub.insert("stop".into(), stop.clone());
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let t: Vec<Value> = tools
            .iter()
            .filter(|t| t.get("input_schema").is_some())
            .map(|t| {
                let mut f = json!({"name": s(t, "name"),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"}))});
                if let Some(d) = t.get("description").filter(|d| d.is_string()) {
                    f["description"] = d.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        if !t.is_empty() {
            hub.insert("tools".into(), Value::Array(t));
        }
    }
    if let Some(tc) = req.get("tool_choice") {
        let v = match tc.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": s(tc, "name")}}),
            _ => json!("auto"),
        };
        hub.insert("tool_choice".into(), v);
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            hub.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        hub.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(hub)
}

/// Parses a data URL into (media type, base64 data).
pub fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

fn hub_parts_to_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(t) if !t.is_empty() => vec![json!({"type": "text", "text": t})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"type": "text", "text": s(p, "text")})),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .or_else(|| p.get("image_url"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Some(match split_data_url(url) {
                        Some((media, data)) => json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
                        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                    })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A hub request for an Anthropic channel.
pub fn request_from_hub(hub: &Value, upstream_model: &str) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in hub
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = s(m, "role");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role.as_str() {
            "system" | "developer" => {
                let t = text_of_hub(content);
                if !t.is_empty() {
                    system.push(t);
                }
            }
            "tool" => {
                let block = json!({"type": "tool_result", "tool_use_id": safe_id(&s(m, "tool_call_id")),
                    "content": text_of_hub(content)});
                // Consecutive tool results share one user turn.
                match messages.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"]
                                .as_array()
                                .is_some_and(|c| c.iter().all(|b| b["type"] == "tool_result")) =>
                    {
                        if let Some(a) = last["content"].as_array_mut() {
                            a.push(block);
                        }
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
            "assistant" => {
                let mut blocks = hub_parts_to_blocks(content);
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let args = c
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": safe_id(&s(c, "id")),
                        "name": c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(),
                        "input": if input.is_object() { input } else { json!({"value": input}) }}));
                }
                if !blocks.is_empty() {
                    messages.push(json!({"role": "assistant", "content": blocks}));
                }
            }
            _ => {
                let blocks = hub_parts_to_blocks(content);
                if !blocks.is_empty() {
                    messages.push(json!({"role": "user", "content": blocks}));
                }
            }
        }
    }
    // One turn per role change: tool results and the user text after them
    // share a user turn (results first), as Anthropic expects.
    let mut merged: Vec<Value> = Vec::with_capacity(messages.len());
    for m in messages {
        match merged.last_mut() {
            Some(last) if last["role"] == m["role"] => {
                if let (Some(a), Value::Array(more)) =
                    (last["content"].as_array_mut(), m["content"].clone())
                {
                    a.extend(more);
                }
            }
            _ => merged.push(m),
        }
    }
    let messages = merged;
    let max = hub
        .get("max_completion_tokens")
        .or_else(|| hub.get("max_tokens"))
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = json!({"model": upstream_model, "max_tokens": max, "messages": messages});
    if !system.is_empty() {
        out["system"] = Value::String(system.join("\n\n"));
    }
    if let Some(t) = hub.get("temperature").and_then(Value::as_f64) {
        out["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if let Some(p) = hub.get("top_p") {
        out["top_p"] = p.clone();
    }
    match hub.get("stop") {
        Some(Value::String(st)) => out["stop_sequences"] = json!([st]),
        Some(Value::Array(a)) => out["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    if hub.get("stream").and_then(Value::as_bool) == Some(true) {
        out["stream"] = json!(true);
    }
    if let Some(tools) = hub.get("tools").and_then(Value::as_array) {
        let t: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut t = json!({"name": s(f, "name"),
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}))});
                if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                    t["description"] = d.clone();
                }
                t
            })
            .collect();
        if !t.is_empty() {
            out["tools"] = Value::Array(t);
        }
    }
    if let Some(tc) = hub.get("tool_choice") {
        let v = match tc {
            Value::String(x) if x == "required" => Some(json!({"type": "any"})),
            Value::String(x) if x == "none" => Some(json!({"type": "none"})),
            Value::String(_) => Some(json!({"type": "auto"})),
            Value::Object(_) => tc
                .pointer("/function/name")
                .and_then(Value::as_str)
                .map(|n| json!({"type": "tool", "name": n})),
            _ => None,
        };
        if let Some(v) = v {
            out["tool_choice"] = v;
        }
    }
    if hub.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false)
        && out.get("tools").is_some()
    {
        let tc = out
            .get("tool_choice")
            .cloned()
            .unwrap_or_else(|| json!({"type": "auto"}));
        if tc["type"] != "none" {
            let mut tc = tc;
            tc["disable_parallel_tool_use"] = Value::Bool(true);
            out["tool_choice"] = tc;
        }
    }
    out
}

fn text_of_hub(content: &Value) -> String {
    match content {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

// ---------- responses ----------

/// An Anthropic response in hub form.
pub fn response_to_hub(r: &Value) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in r
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({"id": s(b, "id"), "type": "function",
                "function": {"name": s(b, "name"), "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into())}})),
            _ => {}
        }
    }
    let stop = Stop::from_anthropic(
        r.get("stop_reason")
            .and_then(Value::as_str)
            .unwrap_or("end_turn"),
    );
    let usage = anthropic_usage(r.get("usage").unwrap_or(&Value::Null));
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": s(r, "id"), "object": "chat.completion", "created": crate::store::now(),
        "model": r.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": stop.openai()}],
        "usage": openai_usage_json(&usage),
    })
}

/// A hub response for an Anthropic caller.
pub fn response_from_hub(hub: &Value, model: &str, usage: &Usage) -> Value {
    let msg = hub
        .pointer("/choices/0/message")
        .cloned()
        .unwrap_or(Value::Null);
    let mut content = hub_parts_to_blocks(msg.get("content").unwrap_or(&Value::Null));
    for c in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(json!({"type": "tool_use", "id": safe_id(&s(c, "id")),
            "name": c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(),
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))}));
    }
    let stop = Stop::from_openai(
        hub.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop"),
    );
    json!({
        "id": format!("msg_{}", s(hub, "id").trim_start_matches("chatcmpl-")),
        "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop.anthropic(), "stop_sequence": Value::Null,
        "usage": anthropic_usage_json(usage),
    })
}

// ---------- streams ----------

/// Reads an Anthropic stream into hub chunks.
#[derive(Default)]
pub struct ToHub {
    id: String,
    model: String,
    created: i64,
    usage: AnthropicStreamUsage,
    /// Content block index → tool call index.
    tools: Vec<(i64, usize)>,
    next_tool: usize,
    stopped: bool,
}

impl ToHub {
    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    /// Whether the stream's `message_stop` was read.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Hub chunks for one Anthropic event; `Err` carries an upstream error.
    pub fn event(&mut self, ev: &Event, out: &mut Vec<Value>) -> Result<(), String> {
        let Ok(v) = serde_json::from_slice::<Value>(&ev.data) else {
            return Ok(());
        };
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let m = v.get("message").cloned().unwrap_or(Value::Null);
                self.id = s(&m, "id");
                self.model = s(&m, "model");
                self.created = crate::store::now();
                if let Some(u) = m.get("usage") {
                    self.usage.merge(u);
                }
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
            "content_block_start" => {
                let b = v.get("content_block").cloned().unwrap_or(Value::Null);
                if b.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let idx = self.next_tool;
                    self.next_tool += 1;
                    self.tools
                        .push((v.get("index").and_then(Value::as_i64).unwrap_or(0), idx));
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": idx, "id": s(&b, "id"), "type": "function",
                        "function": {"name": s(&b, "name"), "arguments": ""}}]}),
                        Value::Null,
                    ));
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").cloned().unwrap_or(Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        out.push(self.chunk(json!({"content": s(&d, "text")}), Value::Null))
                    }
                    Some("input_json_delta") => {
                        let block = v.get("index").and_then(Value::as_i64).unwrap_or(0);
                        let empty = d
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .is_empty();
                        if let Some((_, idx)) = self
                            .tools
                            .iter()
                            .find(|(b, _)| *b == block)
                            .filter(|_| !empty)
                        {
                            out.push(self.chunk(json!({"tool_calls": [{"index": idx, "function": {"arguments": s(&d, "partial_json")}}]}), Value::Null));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    self.usage.merge(u);
                }
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(self.chunk(json!({}), json!(Stop::from_anthropic(r).openai())));
                }
            }
            "message_stop" => {
                self.stopped = true;
                out.push(
                    json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": openai_usage_json(&self.usage.usage())}),
                );
            }
            "error" => {
                return Err(v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream stream error")
                    .to_string());
            }
            _ => {}
        }
        Ok(())
    }
}

/// Writes hub chunks as an Anthropic stream.
pub struct FromHub {
    model: String,
    id: String,
    started: bool,
    /// Index of the open content block and whether it is text.
    open: Option<(usize, bool)>,
    next_block: usize,
    /// Hub tool index → content block index.
    tools: Vec<(i64, usize)>,
    stop: Stop,
    usage: Usage,
    finished: bool,
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl FromHub {
    /// A writer answering as `model`.
    pub fn new(model: &str, request_id: &str) -> FromHub {
        FromHub {
            model: model.to_string(),
            id: format!("msg_{request_id}"),
            started: false,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            stop: Stop::Stop,
            usage: Usage::default(),
            finished: false,
        }
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if !self.started {
            self.started = true;
            out.push(event("message_start", &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [], "model": self.model,
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}})));
        }
    }

    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        if let Some((i, _)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            ));
        }
    }

    /// Events for one hub chunk.
    pub fn chunk(&mut self, c: &Value, out: &mut Vec<Bytes>) {
        self.start(out);
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            self.usage = serde_json::from_value::<super::tables::OpenAiUsage>(u.clone())
                .map(|u| u.to_usage())
                .unwrap_or_default();
        }
        for ch in c
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = ch.get("delta").cloned().unwrap_or(Value::Null);
            if let Some(t) = d
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                if !matches!(self.open, Some((_, true))) {
                    self.close_block(out);
                    let i = self.next_block;
                    self.next_block += 1;
                    self.open = Some((i, true));
                    out.push(event(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": i,
                        "content_block": {"type": "text", "text": ""}}),
                    ));
                }
                if let Some((i, _)) = self.open {
                    out.push(event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": t}}),
                    ));
                }
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ti = tc.get("index").and_then(Value::as_i64).unwrap_or(0);
                let block = match self.tools.iter().find(|(t, _)| *t == ti) {
                    Some((_, b)) => *b,
                    None => {
                        self.close_block(out);
                        let b = self.next_block;
                        self.next_block += 1;
                        self.tools.push((ti, b));
                        self.open = Some((b, false));
                        out.push(event("content_block_start", &json!({"type": "content_block_start", "index": b,
                            "content_block": {"type": "tool_use", "id": safe_id(&s(tc, "id")),
                            "name": tc.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(), "input": {}}})));
                        b
                    }
                };
                if let Some(a) = tc
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    out.push(event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": a}}),
                    ));
                }
            }
            if let Some(f) = ch.get("finish_reason").and_then(Value::as_str) {
                self.stop = Stop::from_openai(f);
            }
        }
    }

    /// Closing events.
    pub fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start(out);
        self.close_block(out);
        let mut usage = anthropic_usage_json(&self.usage);
        if let Some(o) = usage.as_object_mut() {
            o.retain(|k, _| k != "cache_creation_input_tokens");
        }
        out.push(event("message_delta", &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop.anthropic(), "stop_sequence": null}, "usage": usage})));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
    }

    /// An error event.
    pub fn error(message: &str) -> Bytes {
        event(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_keeps_system_tools_and_results() {
        let a = json!({
            "model": "claude-x", "max_tokens": 100, "system": "be brief",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "thanks"}]},
            ],
            "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        });
        let hub = request_to_hub(&a);
        assert_eq!(
            hub["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            hub["messages"][2]["tool_calls"][0]["function"]["arguments"],
            json!("{\"city\":\"Paris\"}")
        );
        assert_eq!(
            hub["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"})
        );
        assert_eq!(hub["tool_choice"], json!("required"));
        let back = request_from_hub(&hub, "claude-up");
        assert_eq!(back["model"], json!("claude-up"));
        assert_eq!(back["system"], json!("be brief"));
        assert_eq!(
            back["messages"][1]["content"][1]["input"],
            json!({"city": "Paris"})
        );
        assert_eq!(
            back["messages"][2]["content"][0]["type"],
            json!("tool_result")
        );
        assert_eq!(back["tool_choice"], json!({"type": "any"}));
    }

    #[test]
    fn ids_are_sanitised_identically() {
        assert_eq!(safe_id("functions.Bash:0"), "functions_Bash_0");
        assert_eq!(safe_id("call_abc"), "call_abc");
    }
}
