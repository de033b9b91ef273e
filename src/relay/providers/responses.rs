//! OpenAI's Responses API as a door (`/v1/responses`): requests become hub
//! (Chat Completions) requests; hub responses and streams become Responses
//! objects and events. Only function tools convert; built-in tools are
//! refused with a clear error.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::tables::{Stop, responses_usage_json};
use crate::billing::Usage;

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn parts_to_hub(content: &Value) -> Value {
    match content {
        Value::Array(parts) => Value::Array(
            parts
                .iter()
                .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("input_text") | Some("output_text") | Some("text") => {
                        Some(json!({"type": "text", "text": s(p, "text")}))
                    }
                    Some("input_image") => {
                        let url = match p.get("image_url") {
                            Some(Value::String(u)) => u.clone(),
                            Some(o) => o
                                .get("url")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            None => String::new(),
                        };
                        let mut image = json!({"url": url});
                        if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                            image["detail"] = d.clone();
                        }
                        Some(json!({"type": "image_url", "image_url": image}))
                    }
                    _ => None,
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A Responses request in hub form; `Err` names what cannot be converted.
pub fn request_to_hub(req: &Value) -> Result<Value, String> {
    let mut messages: Vec<Value> = Vec::new();
    if let Some(i) = req
        .get("instructions")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
    {
        messages.push(json!({"role": "system", "content": i}));
    }
    match req.get("input") {
        Some(Value::String(t)) => messages.push(json!({"role": "user", "content": t})),
        Some(Value::Array(items)) => {
            for it in items {
                match it.get("type").and_then(Value::as_str) {
                    Some("function_call") => {
                        let call = json!({"id": s(it, "call_id"), "type": "function",
                            "function": {"name": s(it, "name"), "arguments": s(it, "arguments")}});
                        // Consecutive calls belong to one assistant turn.
                        match messages.last_mut() {
                            Some(last) if last["role"] == "assistant" => {
                                if let Some(a) =
                                    last.get_mut("tool_calls").and_then(Value::as_array_mut)
                                {
                                    a.push(call);
                                } else {
                                    last["tool_calls"] = json!([call]);
                                }
                            }
                            _ => messages.push(
                                json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                            ),
                        }
                    }
                    Some("function_call_output") => {
                        let out = match it.get("output") {
                            Some(Value::String(t)) => t.clone(),
                            Some(v) => v.to_string(),
                            None => String::new(),
                        };
                        messages.push(json!({"role": "tool", "tool_call_id": s(it, "call_id"), "content": out}));
                    }
                    Some("reasoning") => {}
                    Some("message") | None => {
                        let role = match it.get("role").and_then(Value::as_str) {
                            Some("developer") | Some("system") => "system",
                            Some("assistant") => "assistant",
                            _ => "user",
                        };
                        let content = parts_to_hub(it.get("content").unwrap_or(&Value::Null));
                        let content = if role == "assistant" {
                            // Assistant history is plain text in the hub.
                            match content {
                                Value::Array(p) => Value::String(
                                    p.iter()
                                        .filter_map(|x| x.get("text").and_then(Value::as_str))
                                        .collect(),
                                ),
                                other => other,
                            }
                        } else {
                            content
                        };
                        messages.push(json!({"role": role, "content": content}));
                    }
                    Some(other) => {
                        return Err(format!("input items of type '{other}' are not supported"));
                    }
                }
            }
        }
        _ => return Err("input is required (a string or a list of items)".into()),
    }
    let mut hub = Map::new();
    hub.insert(
        "model".into(),
        req.get("model").cloned().unwrap_or(Value::Null),
    );
    hub.insert("messages".into(), Value::Array(messages));
    if let Some(m) = req.get("max_output_tokens").filter(|m| !m.is_null()) {
        hub.insert("max_tokens".into(), m.clone());
    }
    for k in ["temperature", "top_p", "parallel_tool_calls", "user"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            hub.insert(k.into(), v.clone());
        }
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for t in tools {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(format!(
                    "tools of type '{}' are not supported; only function tools are",
                    s(t, "type")
                ));
            }
            let mut f = json!({"name": s(t, "name"),
                "parameters": t.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}))});
            for k in ["description", "strict"] {
                if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                    f[k] = v.clone();
                }
            }
            out.push(json!({"type": "function", "function": f}));
        }
        if !out.is_empty() {
            hub.insert("tools".into(), Value::Array(out));
        }
    }
    if let Some(tc) = req.get("tool_choice") {
        let v = match tc {
            Value::Object(_) if tc.get("name").is_some() => {
                json!({"type": "function", "function": {"name": s(tc, "name")}})
            }
            other => other.clone(),
        };
        hub.insert("tool_choice".into(), v);
    }
    // `text.format` holds what Chat calls `response_format` (flat there:
    // `name`/`schema` sit beside `type`).
    if let Some(f) = req.pointer("/text/format") {
        match f.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                hub.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {
                    "name": s(f, "name"), "schema": f.get("schema").cloned().unwrap_or(Value::Null),
                    "strict": f.get("strict").cloned().unwrap_or(Value::Bool(false))}}),
                );
            }
            Some("json_object") => {
                hub.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        hub.insert("stream".into(), json!(true));
        hub.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(hub))
}

/// The response object skeleton every Responses answer shares.
fn skeleton(id: &str, model: &str, created: i64, status: &str) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
        "model": model, "output": [], "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "store": false, "temperature": 1.0,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "truncation": "disabled", "usage": null, "user": null, "metadata": {},
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, args: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "call_id": call_id, "name": name, "arguments": args, "status": status})
}

fn finish(resp: &mut Value, stop: Stop, usage: &Usage) {
    if stop == Stop::Length || stop == Stop::ContentFilter {
        resp["status"] = json!("incomplete");
        resp["incomplete_details"] = json!({"reason": if stop == Stop::Length { "max_output_tokens" } else { "content_filter" }});
    } else {
        resp["status"] = json!("completed");
    }
    resp["usage"] = responses_usage_json(usage);
}

/// A hub response as a Responses object.
pub fn response_from_hub(hub: &Value, model: &str, usage: &Usage, request_id: &str) -> Value {
    let id = format!("resp_{request_id}");
    let mut resp = skeleton(&id, model, crate::store::now(), "completed");
    let msg = hub
        .pointer("/choices/0/message")
        .cloned()
        .unwrap_or(Value::Null);
    let mut output = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&format!("msg_{request_id}"), t, "completed"));
    }
    for (i, c) in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        output.push(call_item(
            &format!("fc_{request_id}_{i}"),
            &s(c, "id"),
            c.pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            c.pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}"),
            "completed",
        ));
    }
    resp["output"] = Value::Array(output);
    let stop = Stop::from_openai(
        hub.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop"),
    );
    finish(&mut resp, stop, usage);
    resp
}

/// Writes hub chunks as a Responses event stream.
pub struct FromHub {
    id: String,
    model: String,
    rid: String,
    created: i64,
    seq: u64,
    started: bool,
    /// Output items so far (finished ones are final).
    output: Vec<Value>,
    /// The open message item: (output index, text so far).
    text: Option<(usize, String)>,
    /// Open tool calls: (hub index, output index, item id, call id, name, args).
    calls: Vec<(i64, usize, String, String, String, String)>,
    stop: Stop,
    usage: Usage,
    finished: bool,
}

impl FromHub {
    /// A writer answering as `model`.
    pub fn new(model: &str, request_id: &str) -> FromHub {
        FromHub {
            id: format!("resp_{request_id}"),
            model: model.to_string(),
            rid: request_id.to_string(),
            created: crate::store::now(),
            seq: 0,
            started: false,
            output: Vec::new(),
            text: None,
            calls: Vec::new(),
            stop: Stop::Stop,
            usage: Usage::default(),
            finished: false,
        }
    }

    fn emit(&mut self, out: &mut Vec<Bytes>, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let snap = skeleton(&self.id, &self.model, self.created, "in_progress");
        self.emit(out, "response.created", json!({"response": snap.clone()}));
        self.emit(out, "response.in_progress", json!({"response": snap}));
    }

    fn close_text(&mut self, out: &mut Vec<Bytes>) {
        let Some((idx, text)) = self.text.take() else {
            return;
        };
        let item_id = format!("msg_{}", self.rid);
        self.emit(out, "response.output_text.done", json!({"item_id": item_id, "output_index": idx, "content_index": 0, "text": text, "logprobs": []}));
        self.emit(
            out,
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": idx, "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
        );
        let item = message_item(&item_id, &text, "completed");
        self.output[idx] = item.clone();
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": idx, "item": item}),
        );
    }

    fn close_calls(&mut self, out: &mut Vec<Bytes>) {
        for (_, idx, item_id, call_id, name, args) in std::mem::take(&mut self.calls) {
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": idx, "arguments": args}),
            );
            let item = call_item(&item_id, &call_id, &name, &args, "completed");
            self.output[idx] = item.clone();
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": idx, "item": item}),
            );
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
                if self.text.is_none() {
                    self.close_calls(out);
                    let idx = self.output.len();
                    let item_id = format!("msg_{}", self.rid);
                    let item = json!({"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
                    self.output.push(item.clone());
                    self.emit(
                        out,
                        "response.output_item.added",
                        json!({"output_index": idx, "item": item}),
                    );
                    self.emit(out, "response.content_part.added", json!({"item_id": item_id, "output_index": idx, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
                    self.text = Some((idx, String::new()));
                }
                let item_id = format!("msg_{}", self.rid);
                if let Some((idx, text)) = self.text.as_mut() {
                    text.push_str(t);
                    let idx = *idx;
                    self.emit(out, "response.output_text.delta", json!({"item_id": item_id, "output_index": idx, "content_index": 0, "delta": t, "logprobs": []}));
                }
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let hi = tc.get("index").and_then(Value::as_i64).unwrap_or(0);
                let args = tc
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if !self.calls.iter().any(|c| c.0 == hi) {
                    self.close_text(out);
                    let idx = self.output.len();
                    let item_id = format!("fc_{}_{hi}", self.rid);
                    let call_id = s(tc, "id");
                    let name = tc
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let item = call_item(&item_id, &call_id, &name, "", "in_progress");
                    self.output.push(item.clone());
                    self.emit(
                        out,
                        "response.output_item.added",
                        json!({"output_index": idx, "item": item}),
                    );
                    self.calls
                        .push((hi, idx, item_id, call_id, name, String::new()));
                }
                if !args.is_empty() {
                    let Some(pos) = self.calls.iter().position(|c| c.0 == hi) else {
                        continue;
                    };
                    self.calls[pos].5.push_str(&args);
                    let (idx, item_id) = (self.calls[pos].1, self.calls[pos].2.clone());
                    self.emit(
                        out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": idx, "delta": args}),
                    );
                }
            }
            if let Some(f) = ch.get("finish_reason").and_then(Value::as_str) {
                self.stop = Stop::from_openai(f);
            }
        }
    }

    /// Closing events: open items done, then the terminal event with the
    /// whole output and usage.
    pub fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start(out);
        self.close_text(out);
        self.close_calls(out);
        let mut resp = skeleton(&self.id, &self.model, self.created, "completed");
        resp["output"] = Value::Array(self.output.clone());
        finish(&mut resp, self.stop, &self.usage);
        let kind = if resp["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, kind, json!({"response": resp}));
    }

    /// An error event (the stream's last), after `response.created` when
    /// nothing was written yet (the SDK's stream helper wants that first).
    pub fn error(&mut self, message: &str) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        out.push(self.error_event(message));
        self.seq += 1;
        self.finished = true;
        Bytes::from(out.concat())
    }

    /// The error event that would come next, numbered after the events
    /// already written.
    pub fn error_event(&self, message: &str) -> Bytes {
        let data = json!({"type": "error", "code": "server_error", "message": message,
            "param": null, "sequence_number": self.seq});
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_messages() {
        let r = json!({"model": "m", "instructions": "sys", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ], "max_output_tokens": 9, "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]});
        let hub = request_to_hub(&r).unwrap();
        assert_eq!(hub["messages"][0]["role"], json!("system"));
        assert_eq!(hub["messages"][1]["content"][0]["text"], json!("hi"));
        assert_eq!(hub["messages"][2]["tool_calls"][0]["id"], json!("c1"));
        assert_eq!(hub["messages"][3]["role"], json!("tool"));
        assert_eq!(hub["max_tokens"], json!(9));
        assert!(
            request_to_hub(&json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}))
                .is_err()
        );
    }

    #[test]
    fn stream_events_are_ordered_and_numbered() {
        let mut w = FromHub::new("m", "r1");
        let mut out = Vec::new();
        w.chunk(
            &json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            &mut out,
        );
        w.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}), &mut out);
        w.chunk(
            &json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
            &mut out,
        );
        w.end(&mut out);
        let text: String = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let order = [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ];
        let mut at = 0;
        for name in order {
            let i = text[at..]
                .find(&format!("event: {name}\n"))
                .unwrap_or_else(|| panic!("{name} missing"));
            at += i;
        }
        assert!(text.contains("\"sequence_number\":8"));
        assert!(text.contains("\"output_tokens\":2"));
    }
}
