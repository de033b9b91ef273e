//! Google Gemini (channel type 24, and the `/v1beta/models/…` door): request,
//! response and stream conversions to and from the hub format (OpenAI Chat
//! Completions). Gemini accepts camelCase and snake_case field names; both
//! are read here, camelCase is written.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::anthropic::split_data_url;
use super::tables::{Stop, gemini_usage, gemini_usage_json, openai_usage_json};
use super::{Outbound, header};
use crate::billing::Usage;
use crate::relay::sse::Event;
use crate::routing::ChannelRt;

/// `{base}/v1beta/models/{model}:generateContent` (or
/// `:streamGenerateContent?alt=sse`) with `x-goog-api-key`.
pub fn outbound(
    ch: &ChannelRt,
    upstream_model: &str,
    stream: bool,
    body: Bytes,
) -> Result<Outbound, crate::relay::error::RelayError> {
    let base = ch.base_url.trim_end_matches('/');
    let base = base.strip_suffix("/v1beta").unwrap_or(base);
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    let url = if stream {
        format!("{base}/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/v1beta/models/{model}:generateContent")
    };
    let mut headers = Vec::with_capacity(1);
    headers.extend(header("x-goog-api-key", ch.pick_key()));
    Ok(Outbound {
        url: super::parse_url(&url)?,
        headers,
        body,
    })
}

/// A field under either spelling.
fn get<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The thought signature Google documents for function calls in history
/// that Gemini did not produce (it skips the signature check).
pub const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Deterministic tool-call id for the n-th call of a conversation (Gemini
/// gives none; results are matched by function name).
fn call_id(n: usize) -> String {
    format!("call_{n}")
}

// ---------- requests ----------

/// A Gemini request in hub form.
pub fn request_to_hub(req: &Value, model: &str, stream: bool) -> Value {
    let mut messages = Vec::new();
    if let Some(sys) = get(req, "systemInstruction", "system_instruction") {
        let text: Vec<String> = sys
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("text").and_then(Value::as_str).map(String::from))
            .collect();
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text.join("\n")}));
        }
    }
    let mut calls = 0usize;
    // Function name → ids of calls not yet answered, oldest first.
    let mut pending: Vec<(String, String)> = Vec::new();
    for c in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = match c.get("role").and_then(Value::as_str) {
            Some("model") => "assistant",
            _ => "user",
        };
        let mut parts = Vec::new();
        let mut tool_calls = Vec::new();
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                parts.push(json!({"type": "text", "text": t}));
            } else if let Some(d) = get(p, "inlineData", "inline_data") {
                let mime = get(d, "mimeType", "mime_type")
                    .and_then(Value::as_str)
                    .unwrap_or("image/png");
                parts.push(json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{}", s(d, "data"))}}));
            } else if let Some(d) = get(p, "fileData", "file_data") {
                let uri = get(d, "fileUri", "file_uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                parts.push(json!({"type": "image_url", "image_url": {"url": uri}}));
            } else if let Some(f) = get(p, "functionCall", "function_call") {
                let id = f
                    .get("id")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| call_id(calls));
                calls += 1;
                pending.push((s(f, "name"), id.clone()));
                tool_calls.push(json!({"id": id, "type": "function", "function": {
                    "name": s(f, "name"), "arguments": f.get("args").map(Value::to_string).unwrap_or_else(|| "{}".into())}}));
            } else if let Some(f) = get(p, "functionResponse", "function_response") {
                let name = s(f, "name");
                let id = match f.get("id").and_then(Value::as_str) {
                    Some(id) => id.to_string(),
                    None => match pending.iter().position(|(n, _)| *n == name) {
                        Some(i) => pending.remove(i).1,
                        None => {
                            calls += 1;
                            call_id(calls - 1)
                        }
                    },
                };
                let content = match f.get("response") {
                    Some(Value::String(t)) => t.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
        }
        if role == "assistant" {
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if text.is_empty() && tool_calls.is_empty() {
                continue;
            }
            let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
            if !tool_calls.is_empty() {
                m["tool_calls"] = Value::Array(tool_calls);
            }
            messages.push(m);
        } else if !parts.is_empty() {
            messages.push(json!({"role": "user", "content": parts}));
        }
    }
    let mut hub = Map::new();
    hub.insert("model".into(), json!(model));
    hub.insert("messages".into(), Value::Array(messages));
    if let Some(g) = get(req, "generationConfig", "generation_config") {
        if let Some(m) = get(g, "maxOutputTokens", "max_output_tokens") {
            hub.insert("max_tokens".into(), m.clone());
        }
        if let Some(t) = g.get("temperature") {
            hub.insert("temperature".into(), t.clone());
        }
        if let Some(t) = get(g, "topP", "top_p") {
            hub.insert("top_p".into(), t.clone());
        }
        if let Some(st) = get(g, "stopSequences", "stop_sequences") {
            hub.insert("stop".into(), st.clone());
        }
    }
    let decls: Vec<Value> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            get(t, "functionDeclarations", "function_declarations").and_then(Value::as_array)
        })
        .flatten()
        .map(|d| {
            // `parameters` is Gemini's OpenAPI subset (upper-case type enum);
            // `parametersJsonSchema` is JSON Schema already.
            let parameters = match d.get("parameters") {
                Some(p) => {
                    let mut p = p.clone();
                    schema_to_json_schema(&mut p);
                    p
                }
                None => get(d, "parametersJsonSchema", "parameters_json_schema")
                    .cloned()
                    .unwrap_or(json!({"type": "object", "properties": {}})),
            };
            let mut f = json!({"name": s(d, "name"), "parameters": parameters});
            if let Some(desc) = d.get("description").filter(|x| x.is_string()) {
                f["description"] = desc.clone();
            }
            json!({"type": "function", "function": f})
        })
        .collect();
    if !decls.is_empty() {
        hub.insert("tools".into(), Value::Array(decls));
    }
    if let Some(fc) = get(req, "toolConfig", "tool_config")
        .and_then(|t| get(t, "functionCallingConfig", "function_calling_config"))
    {
        let names =
            get(fc, "allowedFunctionNames", "allowed_function_names").and_then(Value::as_array);
        let choice = match fc.get("mode").and_then(Value::as_str).unwrap_or("AUTO") {
            "NONE" => json!("none"),
            "ANY" => match names.filter(|n| n.len() == 1) {
                Some(n) => json!({"type": "function", "function": {"name": n[0]}}),
                None => json!("required"),
            },
            _ => json!("auto"),
        };
        hub.insert("tool_choice".into(), choice);
    }
    if stream {
        hub.insert("stream".into(), json!(true));
        hub.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(hub)
}

/// Applies `f` to every sub-schema of a schema object: property schemas
/// (never the property names, which are user data), `items`, and the
/// members of `anyOf`/`oneOf`/`allOf`.
fn for_sub_schemas(o: &mut Map<String, Value>, f: fn(&mut Value)) {
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        props.values_mut().for_each(f);
    }
    for k in ["items", "additionalProperties"] {
        if let Some(x) = o.get_mut(k).filter(|x| x.is_object()) {
            f(x);
        }
    }
    for k in ["anyOf", "any_of", "oneOf", "allOf"] {
        if let Some(Value::Array(a)) = o.get_mut(k) {
            a.iter_mut().for_each(f);
        }
    }
}

/// JSON-Schema keys Gemini's schema subset refuses, removed from every
/// (sub-)schema.
fn clean_schema(v: &mut Value) {
    let Value::Object(o) = v else {
        return;
    };
    for k in [
        "additionalProperties",
        "$schema",
        "$ref",
        "$defs",
        "definitions",
        "strict",
    ] {
        o.remove(k);
    }
    for_sub_schemas(o, clean_schema);
}

/// Gemini's OpenAPI-subset schema as JSON Schema: the type enum is upper
/// case there (`OBJECT`, `STRING`), lower case in JSON Schema.
fn schema_to_json_schema(v: &mut Value) {
    let Value::Object(o) = v else {
        return;
    };
    match o.get_mut("type") {
        Some(Value::String(t)) => *t = t.to_ascii_lowercase(),
        Some(Value::Array(ts)) => {
            for t in ts.iter_mut() {
                if let Value::String(x) = t {
                    *x = x.to_ascii_lowercase();
                }
            }
        }
        _ => {}
    }
    for_sub_schemas(o, schema_to_json_schema);
}

/// An image's media type from its URL's extension (JPEG when unknown).
fn image_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => "image/jpeg",
    }
}

/// The text of a hub content (a string, or the text parts of a list).
fn hub_text(content: &Value) -> String {
    match content {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn hub_parts(content: &Value) -> Vec<Value> {
    match content {
        Value::String(t) if !t.is_empty() => vec![json!({"text": t})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"text": s(p, "text")})),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .or_else(|| p.get("image_url"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Some(match split_data_url(url) {
                        Some((mime, data)) => {
                            json!({"inlineData": {"mimeType": mime, "data": data}})
                        }
                        None => json!({"fileData": {"mimeType": image_mime(url), "fileUri": url}}),
                    })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A hub request for a Gemini channel (the model goes in the URL).
pub fn request_from_hub(hub: &Value) -> Value {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // tool_call_id → function name, for the results.
    let mut names: Vec<(String, String)> = Vec::new();
    for m in hub
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str).unwrap_or("user") {
            "system" | "developer" => system.extend(hub_parts(content)),
            "assistant" => {
                let mut parts = hub_parts(content);
                let mut first_call = true;
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    names.push((s(c, "id"), name.clone()));
                    let args = c
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    let mut part = json!({"functionCall": {"name": name, "args": args}});
                    if first_call {
                        // History not produced by Gemini has no thought
                        // signature; Gemini 3 refuses a call turn without
                        // one unless it carries Google's documented
                        // placeholder (on the turn's first call only).
                        part["thoughtSignature"] = json!(SKIP_THOUGHT_SIGNATURE);
                        first_call = false;
                    }
                    parts.push(part);
                }
                if !parts.is_empty() {
                    contents.push(json!({"role": "model", "parts": parts}));
                }
            }
            "tool" => {
                let id = s(m, "tool_call_id");
                let name = names
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                let text = hub_text(content);
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(v @ Value::Array(_)) => json!({"result": v}),
                    _ => json!({"content": text}),
                };
                let part = json!({"functionResponse": {"name": name, "response": response}});
                // All results of one call turn go in one user turn.
                match contents.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["parts"].as_array().is_some_and(|p| {
                                p.iter().all(|x| x.get("functionResponse").is_some())
                            }) =>
                    {
                        if let Some(p) = last["parts"].as_array_mut() {
                            p.push(part);
                        }
                    }
                    _ => contents.push(json!({"role": "user", "parts": [part]})),
                }
            }
            _ => {
                let parts = hub_parts(content);
                if !parts.is_empty() {
                    contents.push(json!({"role": "user", "parts": parts}));
                }
            }
        }
    }
    let mut out = json!({"contents": contents});
    if !system.is_empty() {
        out["systemInstruction"] = json!({"parts": system});
    }
    let mut config = Map::new();
    if let Some(m) = hub
        .get("max_completion_tokens")
        .or_else(|| hub.get("max_tokens"))
    {
        config.insert("maxOutputTokens".into(), m.clone());
    }
    if let Some(t) = hub.get("temperature") {
        config.insert("temperature".into(), t.clone());
    }
    if let Some(t) = hub.get("top_p") {
        config.insert("topP".into(), t.clone());
    }
    match hub.get("stop") {
        Some(Value::String(st)) => {
            config.insert("stopSequences".into(), json!([st]));
        }
        Some(Value::Array(a)) => {
            config.insert(
                "stopSequences".into(),
                Value::Array(a.iter().take(5).cloned().collect()),
            );
        }
        _ => {}
    }
    // Structured output: JSON mode, with the schema when one is given.
    match hub.pointer("/response_format/type").and_then(Value::as_str) {
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = hub.pointer("/response_format/json_schema/schema") {
                let mut schema = schema.clone();
                clean_schema(&mut schema);
                config.insert("responseSchema".into(), schema);
            }
        }
        _ => {}
    }
    if !config.is_empty() {
        out["generationConfig"] = Value::Object(config);
    }
    let decls: Vec<Value> = hub
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("function"))
        .map(|f| {
            let mut d = json!({"name": s(f, "name")});
            if let Some(desc) = f.get("description").filter(|x| x.is_string()) {
                d["description"] = desc.clone();
            }
            if let Some(p) = f.get("parameters") {
                let mut p = p.clone();
                clean_schema(&mut p);
                if p.get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|o| !o.is_empty())
                {
                    d["parameters"] = p;
                }
            }
            d
        })
        .collect();
    if !decls.is_empty() {
        out["tools"] = json!([{"functionDeclarations": decls}]);
    }
    if let Some(tc) = hub.get("tool_choice") {
        let cfg = match tc {
            Value::String(x) if x == "none" => json!({"mode": "NONE"}),
            Value::String(x) if x == "required" => json!({"mode": "ANY"}),
            Value::Object(_) => {
                json!({"mode": "ANY", "allowedFunctionNames": [tc.pointer("/function/name").cloned().unwrap_or(Value::Null)]})
            }
            _ => json!({"mode": "AUTO"}),
        };
        out["toolConfig"] = json!({"functionCallingConfig": cfg});
    }
    out
}

// ---------- responses ----------

fn candidate_to_hub(c: &Value, first_call: usize) -> (String, Vec<Value>, Option<Stop>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in c
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(f) = get(p, "functionCall", "function_call") {
            let id = f
                .get("id")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| call_id(first_call + calls.len()));
            calls.push(json!({"id": id, "type": "function", "function": {
                "name": s(f, "name"), "arguments": f.get("args").map(Value::to_string).unwrap_or_else(|| "{}".into())}}));
        }
    }
    let stop = get(c, "finishReason", "finish_reason")
        .and_then(Value::as_str)
        .map(|r| {
            if calls.is_empty() {
                Stop::from_gemini(r)
            } else {
                Stop::ToolCalls
            }
        });
    (text, calls, stop)
}

/// A Gemini response in hub form.
pub fn response_to_hub(r: &Value, model: &str) -> Value {
    let c = r.pointer("/candidates/0").cloned().unwrap_or(Value::Null);
    let (text, calls, stop) = candidate_to_hub(&c, 0);
    let stop = match stop {
        Some(s) => s,
        // No candidate at all: the prompt was blocked.
        None if c.is_null() => Stop::ContentFilter,
        None => Stop::Stop,
    };
    let usage = gemini_usage(get(r, "usageMetadata", "usage_metadata").unwrap_or(&Value::Null));
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": format!("chatcmpl-{}", s(r, "responseId")), "object": "chat.completion", "created": crate::store::now(),
        "model": model, "choices": [{"index": 0, "message": message, "finish_reason": stop.openai()}],
        "usage": openai_usage_json(&usage),
    })
}

/// A hub response for a Gemini caller.
pub fn response_from_hub(hub: &Value, model: &str, usage: &Usage) -> Value {
    let msg = hub
        .pointer("/choices/0/message")
        .cloned()
        .unwrap_or(Value::Null);
    let mut parts = hub_parts(msg.get("content").unwrap_or(&Value::Null));
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
        parts.push(json!({"functionCall": {"name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "args": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))}}));
    }
    let stop = Stop::from_openai(
        hub.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop"),
    );
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": stop.gemini(), "index": 0}],
        "usageMetadata": gemini_usage_json(usage),
        "modelVersion": model,
    })
}

// ---------- streams ----------

/// Reads a Gemini stream into hub chunks.
#[derive(Default)]
pub struct ToHub {
    model: String,
    created: i64,
    started: bool,
    calls: usize,
    stop: Option<Stop>,
    usage: Usage,
}

impl ToHub {
    /// A reader; chunks name `model`.
    pub fn new(model: &str) -> ToHub {
        ToHub {
            model: model.to_string(),
            created: crate::store::now(),
            ..ToHub::default()
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-gemini", "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    /// Whether a chunk with a `finishReason` was read (a Gemini stream has
    /// no other end marker).
    pub fn finished(&self) -> bool {
        self.stop.is_some()
    }

    /// Hub chunks for one Gemini event; `Err` carries an upstream error.
    pub fn event(&mut self, ev: &Event, out: &mut Vec<Value>) -> Result<(), String> {
        let Ok(v) = serde_json::from_slice::<Value>(&ev.data) else {
            return Ok(());
        };
        if let Some(e) = v.get("error") {
            return Err(e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream stream error")
                .to_string());
        }
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
        if let Some(u) = get(&v, "usageMetadata", "usage_metadata") {
            self.usage = gemini_usage(u);
        }
        if let Some(c) = v.pointer("/candidates/0") {
            let (text, calls, stop) = candidate_to_hub(c, self.calls);
            if !text.is_empty() {
                out.push(self.chunk(json!({"content": text}), Value::Null));
            }
            for (i, call) in calls.iter().enumerate() {
                let mut call = call.clone();
                call["index"] = json!(self.calls + i);
                out.push(self.chunk(json!({"tool_calls": [call]}), Value::Null));
            }
            self.calls += calls.len();
            if let Some(s) = stop {
                self.stop = Some(if self.calls > 0 { Stop::ToolCalls } else { s });
            }
        }
        Ok(())
    }

    /// The closing chunks (Gemini streams just end).
    pub fn end(&mut self, out: &mut Vec<Value>) {
        let stop = self.stop.unwrap_or(if self.calls > 0 {
            Stop::ToolCalls
        } else {
            Stop::Stop
        });
        out.push(self.chunk(json!({}), json!(stop.openai())));
        out.push(
            json!({"id": "chatcmpl-gemini", "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [], "usage": openai_usage_json(&self.usage)}),
        );
    }
}

/// Writes hub chunks as a Gemini SSE stream.
pub struct FromHub {
    model: String,
    /// Tool calls being assembled: (hub index, name, arguments).
    calls: Vec<(i64, String, String)>,
    stop: Stop,
    usage: Usage,
    finished: bool,
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl FromHub {
    /// A writer answering as `model`.
    pub fn new(model: &str) -> FromHub {
        FromHub {
            model: model.to_string(),
            calls: Vec::new(),
            stop: Stop::Stop,
            usage: Usage::default(),
            finished: false,
        }
    }

    /// Events for one hub chunk.
    pub fn chunk(&mut self, c: &Value, out: &mut Vec<Bytes>) {
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
                out.push(data(&json!({"candidates": [{"content": {"role": "model", "parts": [{"text": t}]}, "index": 0}],
                    "modelVersion": self.model})));
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = tc.get("index").and_then(Value::as_i64).unwrap_or(0);
                let name = tc.pointer("/function/name").and_then(Value::as_str);
                let args = tc
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match self.calls.iter_mut().find(|c| c.0 == i) {
                    Some(c) => c.2.push_str(args),
                    None => {
                        self.calls
                            .push((i, name.unwrap_or_default().to_string(), args.to_string()))
                    }
                }
            }
            if let Some(f) = ch.get("finish_reason").and_then(Value::as_str) {
                self.stop = Stop::from_openai(f);
            }
        }
    }

    /// The closing chunk: function calls (whole, as Gemini sends them), the
    /// finish reason and the usage.
    pub fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let parts: Vec<Value> = self
            .calls
            .iter()
            .map(|(_, name, args)| {
                json!({"functionCall": {"name": name,
                "args": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))}})
            })
            .collect();
        let mut cand = json!({"finishReason": self.stop.gemini(), "index": 0});
        if !parts.is_empty() {
            cand["content"] = json!({"role": "model", "parts": parts});
        }
        out.push(data(
            &json!({"candidates": [cand], "usageMetadata": gemini_usage_json(&self.usage),
            "modelVersion": self.model}),
        ));
    }

    /// An error event (the SDK raises on a chunk whose first key is `error`).
    pub fn error(message: &str) -> Bytes {
        data(&json!({"error": {"code": 502, "message": message, "status": "INTERNAL"}}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_matches_results_by_name() {
        let g = json!({
            "system_instruction": {"parts": [{"text": "terse"}]},
            "contents": [
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get", "response": {"t": 21}}}]},
            ],
            "tools": [{"functionDeclarations": [{"name": "get", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}]}],
            "generationConfig": {"maxOutputTokens": 50},
        });
        let hub = request_to_hub(&g, "gemini-x", false);
        assert_eq!(hub["messages"][0]["role"], json!("system"));
        assert_eq!(hub["messages"][2]["tool_calls"][0]["id"], json!("call_0"));
        assert_eq!(hub["messages"][3]["tool_call_id"], json!("call_0"));
        assert_eq!(hub["max_tokens"], json!(50));
        let back = request_from_hub(&hub);
        assert_eq!(
            back["contents"][1]["parts"][0]["functionCall"]["args"],
            json!({"city": "Paris"})
        );
        assert_eq!(
            back["contents"][2]["parts"][0]["functionResponse"]["name"],
            json!("get")
        );
        assert_eq!(
            back["contents"][2]["parts"][0]["functionResponse"]["response"],
            json!({"t": 21})
        );
        assert!(
            back["tools"][0]["functionDeclarations"][0]["parameters"]
                .get("additionalProperties")
                .is_none()
        );
        assert_eq!(back["generationConfig"]["maxOutputTokens"], json!(50));
    }
}
