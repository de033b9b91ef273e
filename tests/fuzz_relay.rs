//! Property tests for every request parser and stream scanner of the relay:
//! arbitrary input never panics, every converter's output keeps the shape its
//! dialect demands, and over HTTP every door answers arbitrary bodies with a
//! 4xx in its own error shape (OpenAI `{"error":{…}}`, Anthropic
//! `{"type":"error",…}`, Gemini `{"error":{"code","message","status"}}`).
//!
//! Case counts are modest (64–256) so the file runs in seconds; failures
//! are not persisted to disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use sluice::billing::Usage;
use sluice::relay::convert;
use sluice::relay::providers::{Endpoint, Route, Wire, anthropic, gemini, responses};
use sluice::relay::sse::{Event, Scanner};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------- strategies ----------

/// Field names of the four dialects, so random objects hit real code paths.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "tool_calls",
    "function",
    "arguments",
    "name",
    "id",
    "tool_call_id",
    "tools",
    "tool_choice",
    "parameters",
    "input_schema",
    "input",
    "system",
    "contents",
    "parts",
    "functionCall",
    "function_call",
    "functionResponse",
    "function_response",
    "args",
    "response",
    "inlineData",
    "inline_data",
    "fileData",
    "mimeType",
    "data",
    "fileUri",
    "image_url",
    "url",
    "source",
    "media_type",
    "candidates",
    "finishReason",
    "usageMetadata",
    "usage",
    "choices",
    "delta",
    "index",
    "finish_reason",
    "stop_reason",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "generationConfig",
    "maxOutputTokens",
    "stopSequences",
    "stop",
    "stop_sequences",
    "instructions",
    "call_id",
    "output",
    "properties",
    "items",
    "anyOf",
    "error",
    "message",
    "content_block",
    "partial_json",
    "tool_use_id",
    "is_error",
    "systemInstruction",
    "toolConfig",
    "functionCallingConfig",
    "mode",
    "allowedFunctionNames",
    "functionDeclarations",
    "response_format",
    "json_schema",
    "schema",
    "thought",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "format",
    "detail",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "disable_parallel_tool_use",
    "stream_options",
    "include_usage",
    "n",
];

/// Values with meaning somewhere in the dialects.
const STRINGS: &[&str] = &[
    "",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "model",
    "function",
    "text",
    "tool_use",
    "tool_result",
    "image",
    "thinking",
    "image_url",
    "input_text",
    "input_image",
    "output_text",
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "base64",
    "url",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:",
    "data:x;base64",
    "https://e.x/a.png",
    "STOP",
    "MAX_TOKENS",
    "SAFETY",
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "end_turn",
    "max_tokens",
    "refusal",
    "auto",
    "any",
    "none",
    "required",
    "ANY",
    "NONE",
    "AUTO",
    "object",
    "OBJECT",
    "string",
    "{",
    "{\"q\":1}",
    "[1]",
    "null",
    "text_delta",
    "input_json_delta",
    "message_start",
    "message_delta",
    "message_stop",
    "content_block_start",
    "content_block_delta",
    "json_schema",
    "json_object",
    "web_search",
    "[DONE]",
    "fuzz-model",
    "toolu_1",
    "call_1",
    "functions.x:0",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => (-3i64..200).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        4 => select(STRINGS).prop_map(|s| Value::String(s.into())),
        2 => ".{0,12}".prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(KEYS).prop_map(String::from),
        1 => "[a-zA-Z_]{0,8}",
    ]
}

/// Arbitrary JSON of bounded depth.
fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(5, 96, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..7)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An object with `type` (or `role`) from `names` beside arbitrary fields.
fn tagged(field: &'static str, names: &'static [&'static str]) -> BoxedStrategy<Value> {
    (
        select(names),
        prop::collection::vec((key(), json_value()), 0..5),
    )
        .prop_map(move |(t, kv)| {
            let mut o: Map<String, Value> = kv.into_iter().collect();
            o.insert(field.into(), Value::String(t.into()));
            Value::Object(o)
        })
        .boxed()
}

/// Requests shaped like each dialect's, arbitrary below the skeleton.
fn shaped_request() -> impl Strategy<Value = Value> {
    let block = tagged(
        "type",
        &[
            "text",
            "image",
            "tool_use",
            "tool_result",
            "thinking",
            "image_url",
            "input_text",
            "input_image",
            "function_call",
            "function_call_output",
            "message",
        ],
    );
    let content = prop_oneof![
        json_value(),
        prop::collection::vec(block.clone(), 0..4).prop_map(Value::Array)
    ];
    let message = (
        select(&["user", "assistant", "system", "developer", "tool", "model"][..]),
        content.clone(),
        json_value(),
    )
        .prop_map(|(role, content, extra)| {
            let mut m = json!({"role": role, "content": content});
            if let Value::Object(o) = extra {
                for (k, v) in o {
                    m.as_object_mut().unwrap().entry(k).or_insert(v);
                }
            }
            m
        });
    let part = prop_oneof![
        json_value().prop_map(|v| json!({"text": v})),
        json_value().prop_map(|v| json!({"functionCall": {"name": "f", "args": v}})),
        json_value().prop_map(|v| json!({"functionResponse": {"name": "f", "response": v}})),
        json_value().prop_map(|v| json!({"inlineData": v})),
        json_value(),
    ];
    let gemini_content = (
        select(&["user", "model", "x"][..]),
        prop::collection::vec(part, 0..4),
    )
        .prop_map(|(role, parts)| json!({"role": role, "parts": parts}));
    prop_oneof![
        (prop::collection::vec(message, 0..5), json_value(), json_value()).prop_map(|(msgs, tools, tc)| {
            json!({"model": "fuzz-model", "messages": msgs, "tools": tools, "tool_choice": tc,
                "system": "s", "max_tokens": 5})
        }),
        (prop::collection::vec(gemini_content, 0..4), json_value(), json_value()).prop_map(|(c, tools, cfg)| {
            json!({"contents": c, "tools": tools, "generationConfig": cfg, "systemInstruction": {"parts": [{"text": "s"}]}})
        }),
        (prop::collection::vec(block, 0..5), json_value()).prop_map(|(items, tools)| {
            json!({"model": "fuzz-model", "input": items, "tools": tools})
        }),
        json_value(),
    ]
}

fn usage() -> impl Strategy<Value = Usage> {
    (0i64..10_000, 0i64..10_000, 0i64..10_000).prop_map(|(p, c, k)| Usage {
        prompt_tokens: p,
        completion_tokens: c,
        cached_tokens: k.min(p),
    })
}

/// SSE-ish bytes: field names, separators and random bytes.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&str] = &[
        "data: ",
        "data:",
        "event: ",
        "event:",
        ": comment",
        "\n",
        "\r",
        "\r\n",
        "\n\n",
        "\r\n\r\n",
        "\r\r",
        "{\"a\":1}",
        "[DONE]",
        "message_start",
        "id: 1",
        "retry: 5",
    ];
    prop::collection::vec(
        prop_oneof![
            3 => select(TOKENS).prop_map(|t| t.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..120,
    )
    .prop_map(|v| v.concat())
}

/// Cut points for feeding bytes in pieces.
fn chunking(bytes: Vec<u8>) -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let n = bytes.len();
    (Just(bytes), prop::collection::vec(0..=n, 0..12)).prop_map(|(b, mut cuts)| {
        cuts.sort_unstable();
        (b, cuts)
    })
}

fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        out.push(&bytes[at..c]);
        at = c;
    }
    out.push(&bytes[at..]);
    out
}

// ---------- the SSE scanner ----------

fn scan(pieces: &[&[u8]]) -> (Vec<Event>, Option<Event>) {
    let mut sc = Scanner::default();
    let mut out = Vec::new();
    for p in pieces {
        sc.feed(p, &mut out).unwrap();
    }
    (out, sc.finish())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any chunking of any bytes gives the same events as the whole input,
    /// and the events' raw bytes are the input, in order.
    #[test]
    fn sse_scanner_is_chunking_invariant((bytes, cuts) in sse_bytes().prop_flat_map(chunking)) {
        let whole = scan(&[&bytes]);
        let split = scan(&pieces(&bytes, &cuts));
        prop_assert_eq!(&whole, &split);
        let consumed: Vec<u8> = whole.0.iter().flat_map(|e| e.raw.to_vec()).collect();
        prop_assert_eq!(&bytes[..consumed.len()], &consumed[..]);
        // What is left is the unterminated tail, returned once by finish().
        let rest = &bytes[consumed.len()..];
        prop_assert_eq!(whole.1.is_some(), rest.iter().any(|c| !c.is_ascii_whitespace()));
    }

    /// Arbitrary bytes (not SSE-shaped at all) never panic either.
    #[test]
    fn sse_scanner_takes_any_bytes((bytes, cuts) in prop::collection::vec(any::<u8>(), 0..600).prop_flat_map(chunking)) {
        let (events, _) = scan(&pieces(&bytes, &cuts));
        for e in events {
            prop_assert!(e.raw.len() >= 2);
        }
    }
}

// ---------- request and response converters ----------

const OPENAI_FINISH: &[&str] = &["stop", "length", "tool_calls", "content_filter"];
const ANTHROPIC_STOP: &[&str] = &["end_turn", "max_tokens", "tool_use", "refusal"];
const GEMINI_FINISH: &[&str] = &["STOP", "MAX_TOKENS", "SAFETY"];

proptest! {
    #![proptest_config(config(256))]

    /// Any JSON through each request parser: no panic; the hub request has
    /// a message list; Anthropic and Gemini requests have the turn structure
    /// their APIs require (alternating user/assistant turns with non-empty
    /// content; user/model contents with non-empty parts).
    #[test]
    fn request_converters_take_any_json(req in shaped_request(), stream in any::<bool>()) {
        let hubs = [
            anthropic::request_to_hub(&req),
            gemini::request_to_hub(&req, "m", stream),
        ];
        let from_responses = responses::request_to_hub(&req);
        for hub in hubs.iter().chain(from_responses.iter()).chain([&req]) {
            let a = anthropic::request_from_hub(hub, "claude-up");
            prop_assert_eq!(&a["model"], &json!("claude-up"));
            prop_assert!(a["max_tokens"].is_i64(), "{}", a);
            let msgs = a["messages"].as_array().unwrap();
            for (i, m) in msgs.iter().enumerate() {
                let role = m["role"].as_str().unwrap();
                prop_assert!(role == "user" || role == "assistant", "{}", a);
                prop_assert!(m["content"].as_array().is_some_and(|c| !c.is_empty()), "{}", a);
                if i > 0 {
                    prop_assert_ne!(&msgs[i - 1]["role"], &m["role"], "turns alternate: {}", a);
                }
            }
            let g = gemini::request_from_hub(hub);
            for c in g["contents"].as_array().unwrap() {
                let role = c["role"].as_str().unwrap();
                prop_assert!(role == "user" || role == "model", "{}", g);
                prop_assert!(c["parts"].as_array().is_some_and(|p| !p.is_empty()), "{}", g);
            }
        }
        for hub in &hubs {
            prop_assert!(hub["messages"].is_array(), "{}", hub);
        }
        if let Ok(hub) = &from_responses {
            prop_assert!(hub["messages"].is_array(), "{}", hub);
        }
    }

    /// Any JSON through each response converter: no panic, and the stop
    /// reason is one of the target dialect's.
    #[test]
    fn response_converters_take_any_json(resp in json_value(), u in usage()) {
        for hub in [anthropic::response_to_hub(&resp), gemini::response_to_hub(&resp, "m")] {
            let f = hub["choices"][0]["finish_reason"].as_str().unwrap();
            prop_assert!(OPENAI_FINISH.contains(&f), "{}", hub);
            prop_assert!(hub["usage"]["prompt_tokens"].is_i64());
        }
        for hub in [&resp, &anthropic::response_to_hub(&resp)] {
            let a = anthropic::response_from_hub(hub, "m", &u);
            prop_assert!(ANTHROPIC_STOP.contains(&a["stop_reason"].as_str().unwrap()), "{}", a);
            prop_assert!(a["content"].is_array());
            let g = gemini::response_from_hub(hub, "m", &u);
            let f = g["candidates"][0]["finishReason"].as_str().unwrap();
            prop_assert!(GEMINI_FINISH.contains(&f), "{}", g);
            let r = responses::response_from_hub(hub, "m", &u, "rid");
            let st = r["status"].as_str().unwrap();
            prop_assert!(st == "completed" || st == "incomplete", "{}", r);
            prop_assert!(r["output"].is_array() && r["usage"]["output_tokens_details"].is_object());
        }
    }
}

// ---------- stream converters ----------

/// Parses SSE bytes a writer produced; every event must be complete.
fn written_events(out: &[Bytes]) -> Result<Vec<Event>, TestCaseError> {
    let mut sc = Scanner::default();
    let mut evs = Vec::new();
    for b in out {
        prop_assert!(
            b.ends_with(b"\n\n"),
            "each write is whole events: {:?}",
            String::from_utf8_lossy(b)
        );
        sc.feed(b, &mut evs).unwrap();
    }
    prop_assert!(sc.finish().is_none());
    Ok(evs)
}

fn data_json(e: &Event) -> Result<Value, TestCaseError> {
    serde_json::from_slice(&e.data).map_err(|_| {
        TestCaseError::fail(format!(
            "event data is not JSON: {:?}",
            String::from_utf8_lossy(&e.data)
        ))
    })
}

/// The rules the anthropic SDK's stream accumulator relies on: message_start
/// first; content blocks started with dense indices 0..n in order, deltas
/// and stops only for started blocks; then message_delta and message_stop
/// last — or, instead of the end, one `error` event as the last event (the
/// SDK raises on it before accumulating, so it may also come first).
fn check_anthropic_stream(evs: &[Event]) -> Result<(), TestCaseError> {
    prop_assert!(!evs.is_empty());
    let mut started = 0i64;
    for (i, e) in evs.iter().enumerate() {
        let name = e.name.clone().unwrap_or_default();
        let v = data_json(e)?;
        prop_assert_eq!(&v["type"], &json!(name), "type equals the event name");
        match name.as_str() {
            "message_start" => prop_assert_eq!(i, 0),
            "content_block_start" => {
                prop_assert_eq!(&v["index"], &json!(started));
                started += 1;
            }
            "content_block_delta" | "content_block_stop" => {
                let idx = v["index"].as_i64().unwrap();
                prop_assert!(idx < started, "block {} not started", idx);
            }
            "message_delta" => prop_assert_eq!(i + 2, evs.len()),
            "message_stop" | "error" => prop_assert_eq!(i + 1, evs.len()),
            other => prop_assert!(false, "unexpected event {}", other),
        }
    }
    if evs.len() > 1 {
        prop_assert_eq!(evs[0].name.as_deref(), Some("message_start"));
    }
    Ok(())
}

/// The rules of the Responses stream and the openai SDK's stream helper:
/// sequence numbers 0..n without gaps; response.created first; an item is
/// added before any event names its output_index, a content part before
/// its text deltas; the terminal event (completed / incomplete) last with
/// the whole output — or one `error` event last instead.
fn check_responses_stream(evs: &[Event]) -> Result<(), TestCaseError> {
    prop_assert!(!evs.is_empty());
    let mut items = 0i64;
    let mut parts: Vec<i64> = Vec::new();
    for (i, e) in evs.iter().enumerate() {
        let v = data_json(e)?;
        let name = e.name.clone().unwrap_or_default();
        prop_assert_eq!(&v["type"], &json!(name));
        prop_assert_eq!(&v["sequence_number"], &json!(i));
        if let Some(idx) = v["output_index"].as_i64() {
            if name == "response.output_item.added" {
                prop_assert_eq!(idx, items);
                items += 1;
            } else {
                prop_assert!(idx < items, "output {} not added: {}", idx, name);
            }
        }
        match name.as_str() {
            "response.created" => prop_assert_eq!(i, 0),
            "response.content_part.added" => parts.push(v["output_index"].as_i64().unwrap()),
            "response.output_text.delta" => {
                prop_assert!(parts.contains(&v["output_index"].as_i64().unwrap()))
            }
            "response.completed" | "response.incomplete" => {
                prop_assert_eq!(i + 1, evs.len());
                prop_assert_eq!(
                    v["response"]["output"].as_array().unwrap().len() as i64,
                    items
                );
            }
            "error" => prop_assert_eq!(i + 1, evs.len()),
            _ => {}
        }
    }
    Ok(())
}

/// Gemini's stream: `data:` events only (no event names), each a JSON
/// object; the last one has the finish reason — or is an error chunk
/// whose only key is `error`.
fn check_gemini_stream(evs: &[Event]) -> Result<(), TestCaseError> {
    prop_assert!(!evs.is_empty());
    for (i, e) in evs.iter().enumerate() {
        prop_assert!(e.name.is_none());
        prop_assert!(e.raw.starts_with(b"data: "));
        let v = data_json(e)?;
        if v.get("error").is_some() {
            prop_assert_eq!(v.as_object().unwrap().len(), 1);
            prop_assert_eq!(i + 1, evs.len());
        } else if i + 1 == evs.len() {
            let f = v["candidates"][0]["finishReason"].as_str().unwrap();
            prop_assert!(GEMINI_FINISH.contains(&f));
        }
    }
    Ok(())
}

/// Chat chunks for a Chat client: `data:` JSON chunks, then `[DONE]` — or
/// one error chunk last.
fn check_chat_stream(evs: &[Event]) -> Result<(), TestCaseError> {
    prop_assert!(!evs.is_empty());
    for (i, e) in evs.iter().enumerate() {
        prop_assert!(e.name.is_none());
        let last = i + 1 == evs.len();
        if &e.data[..] == b"[DONE]" {
            prop_assert!(last);
            continue;
        }
        let v = data_json(e)?;
        if v.get("error").is_some() {
            prop_assert!(last);
        } else {
            prop_assert_eq!(&v["object"], &json!("chat.completion.chunk"));
            prop_assert!(v["choices"].is_array());
            prop_assert!(!last, "a finished stream ends with [DONE]");
        }
    }
    Ok(())
}

/// Arbitrary upstream events: mostly JSON (arbitrary, or tagged with the
/// dialect's event types), sometimes not JSON at all.
fn upstream_event() -> impl Strategy<Value = (Option<String>, Vec<u8>)> {
    const NAMES: &[&str] = &[
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ];
    let data = prop_oneof![
        4 => json_value().prop_map(|v| v.to_string().into_bytes()),
        4 => tagged("type", NAMES).prop_map(|v| v.to_string().into_bytes()),
        1 => Just(b"[DONE]".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ];
    (prop::option::of(select(NAMES).prop_map(String::from)), data)
}

fn event_of(name: Option<String>, data: Vec<u8>) -> Event {
    let mut raw = Vec::new();
    if let Some(n) = &name {
        raw.extend_from_slice(format!("event: {n}\n").as_bytes());
    }
    raw.extend_from_slice(b"data: ");
    raw.extend_from_slice(&data);
    raw.extend_from_slice(b"\n\n");
    Event {
        raw: Bytes::from(raw),
        name,
        data: Bytes::from(data),
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary events into the upstream readers (Anthropic, Gemini →
    /// hub): no panic, every hub chunk is a chunk with a choices list and
    /// tool call indices, finish reasons from OpenAI's list.
    #[test]
    fn stream_readers_take_any_events(events in prop::collection::vec(upstream_event(), 0..24)) {
        let mut a = anthropic::ToHub::default();
        let mut g = gemini::ToHub::new("m");
        let mut chunks = Vec::new();
        for (name, data) in events {
            let ev = event_of(name, data);
            let _ = a.event(&ev, &mut chunks);
            let _ = g.event(&ev, &mut chunks);
        }
        g.end(&mut chunks);
        for c in &chunks {
            prop_assert_eq!(&c["object"], &json!("chat.completion.chunk"));
            for ch in c["choices"].as_array().unwrap() {
                if let Some(f) = ch["finish_reason"].as_str() {
                    prop_assert!(OPENAI_FINISH.contains(&f));
                }
                for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    prop_assert!(tc["index"].is_u64());
                }
            }
        }
    }

    /// Arbitrary hub chunks into the client writers (hub → Anthropic,
    /// Gemini, Responses): no panic, and the stream keeps its dialect's
    /// rules, whatever came in.
    #[test]
    fn stream_writers_take_any_chunks(chunks in prop::collection::vec(json_value(), 0..16), fail in any::<bool>()) {
        let mut a = anthropic::FromHub::new("m", "rid");
        let mut g = gemini::FromHub::new("m");
        let mut r = responses::FromHub::new("m", "rid");
        let (mut oa, mut og, mut or) = (Vec::new(), Vec::new(), Vec::new());
        for c in &chunks {
            a.chunk(c, &mut oa);
            g.chunk(c, &mut og);
            r.chunk(c, &mut or);
        }
        if fail {
            oa.push(anthropic::FromHub::error("boom"));
            og.push(gemini::FromHub::error("boom"));
            or.push(r.error("boom"));
        } else {
            a.end(&mut oa);
            g.end(&mut og);
            r.end(&mut or);
        }
        check_anthropic_stream(&written_events(&oa)?)?;
        check_gemini_stream(&written_events(&og)?)?;
        check_responses_stream(&written_events(&or)?)?;
    }
}

/// The converting taps of the relay, door × upstream dialect.
const CONVERSIONS: &[(Endpoint, Wire)] = &[
    (Endpoint::ChatCompletions, Wire::Anthropic),
    (Endpoint::ChatCompletions, Wire::Gemini),
    (Endpoint::Messages, Wire::OpenAi),
    (Endpoint::Messages, Wire::Gemini),
    (Endpoint::GenerateContent, Wire::OpenAi),
    (Endpoint::GenerateContent, Wire::Anthropic),
    (Endpoint::Responses, Wire::OpenAi),
    (Endpoint::Responses, Wire::Anthropic),
    (Endpoint::Responses, Wire::Gemini),
];

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary upstream bytes, in arbitrary pieces, through every
    /// converting tap: no panic, and the client's stream follows its
    /// dialect's rules (ending properly, or with one error event last).
    #[test]
    fn converting_taps_keep_the_client_dialect(
        events in prop::collection::vec(upstream_event(), 0..16),
        tail in sse_bytes(),
        cuts in prop::collection::vec(0usize..4096, 0..8),
        which in 0..CONVERSIONS.len(),
        wants_usage in any::<bool>(),
    ) {
        let (door, wire) = CONVERSIONS[which];
        let mut bytes: Vec<u8> = events.into_iter().flat_map(|(n, d)| event_of(n, d).raw.to_vec()).collect();
        bytes.extend(tail);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut tap = convert::tap_for(door, wire, Route::Convert, "m", "rid", wants_usage);
        let mut sc = Scanner::default();
        let mut out = Vec::new();
        let mut evs = Vec::new();
        for p in pieces(&bytes, &cuts) {
            sc.feed(p, &mut evs).unwrap();
            for e in evs.drain(..) {
                tap.on_event(&e, &mut out);
            }
        }
        if let Some(e) = sc.finish() {
            tap.on_event(&e, &mut out);
        }
        tap.on_end(&mut out);
        let written = written_events(&out)?;
        match door {
            Endpoint::Messages => check_anthropic_stream(&written)?,
            Endpoint::GenerateContent => check_gemini_stream(&written)?,
            Endpoint::Responses => check_responses_stream(&written)?,
            _ => check_chat_stream(&written)?,
        }
        let _ = tap.usage();
        let _ = tap.produced_text();
    }
}

// ---------- the doors over HTTP ----------

/// The doors: (name, path).
const DOORS: &[(&str, &str)] = &[
    ("openai", "/v1/chat/completions"),
    ("anthropic", "/v1/messages"),
    ("gemini", "/v1beta/models/m:generateContent"),
    ("responses", "/v1/responses"),
];

/// A body's error shape per door; `Err` says what is wrong.
fn door_error_shape(door: &str, status: u16, body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| format!("not JSON: {}", String::from_utf8_lossy(body)))?;
    let nonempty = |x: &Value| x.as_str().is_some_and(|s| !s.is_empty());
    let ok = match door {
        "openai" | "responses" => {
            let e = &v["error"];
            nonempty(&e["message"]) && nonempty(&e["type"]) && e.get("code").is_some()
        }
        "anthropic" => {
            v["type"] == "error"
                && nonempty(&v["error"]["type"])
                && nonempty(&v["error"]["message"])
        }
        "gemini" => {
            let e = &v["error"];
            e["code"] == json!(status) && nonempty(&e["message"]) && nonempty(&e["status"])
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("not the {door} error shape: {v}"))
    }
}

/// Bodies for the doors: raw bytes, arbitrary JSON, dialect-shaped JSON.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        shaped_request().prop_map(|v| v.to_string().into_bytes()),
    ]
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    ts: common::TestServer,
    limited_key: String,
    key: String,
}

/// One server for every case: a key limited to a model no body names, so
/// every body is refused (400 unreadable, 403 model); and a key for three
/// channels (OpenAI, Anthropic, Gemini) on the mock.
fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ts, limited_key, key) = rt.block_on(async {
        let ts = common::spawn().await;
        let mock = common::relay::mock().await;
        ts.option("SelfUseModeEnabled", "true").await;
        for (ty, model) in [
            (1, "fuzz-openai"),
            (14, "fuzz-anthropic"),
            (24, "fuzz-gemini"),
        ] {
            ts.channel(
                json!({"type": ty, "name": model, "key": "ok", "base_url": mock.url(),
                "models": model, "group": "default"}),
            )
            .await;
        }
        let (u, _, key) = ts
            .funded(
                "fuzz",
                1_000_000_000,
                json!({"name": "all", "unlimited_quota": true}),
            )
            .await;
        let (_, limited) = ts
            .key(
                &u,
                json!({"name": "limited", "unlimited_quota": true,
                "model_limits_enabled": true, "model_limits": "the-only-allowed-model"}),
            )
            .await;
        // The mock lives as long as the runtime.
        std::mem::forget(mock);
        (ts, limited, key)
    });
    Fixture {
        rt,
        ts,
        limited_key,
        key,
    }
}

async fn post(
    ts: &common::TestServer,
    key: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>, bool), String> {
    let r = ts
        .http
        .post(ts.url(path))
        .bearer_auth(key)
        .header("x-api-key", key)
        .header("x-goog-api-key", key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("no answer (a panic?): {e}"))?;
    let status = r.status().as_u16();
    let sse = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("body cut (a panic?): {e}"))?;
    Ok((status, bytes.to_vec(), sse))
}

#[test]
fn doors_refuse_arbitrary_bodies_in_their_dialect() {
    let f = fixture();
    let mut runner = TestRunner::new(config(256));
    let ran = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&(select(DOORS), body()), |((door, path), body)| {
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, bytes, _) =
            f.rt.block_on(post(&f.ts, &f.limited_key, path, body))
                .map_err(TestCaseError::fail)?;
        prop_assert!(
            (400..500).contains(&status),
            "{} door answered {}: {}",
            door,
            status,
            String::from_utf8_lossy(&bytes)
        );
        door_error_shape(door, status, &bytes).map_err(TestCaseError::fail)?;
        Ok(())
    });
    let Fixture { rt, ts, .. } = f;
    rt.block_on(ts.stop());
    result.unwrap();
    let ran = ran.into_inner();
    eprintln!("{ran} bodies sent");
    assert!(ran >= 96, "{ran}");
}

#[test]
fn admitted_arbitrary_bodies_never_break_a_door() {
    let f = fixture();
    let mut runner = TestRunner::new(config(96));
    const CHANNELS: &[&str] = &["fuzz-openai", "fuzz-anthropic", "fuzz-gemini"];
    let strategy = (select(DOORS), select(CHANNELS), shaped_request());
    let ran = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |((door, path), model, mut req)| {
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The model the key may use, where the door reads it.
        let path = if door == "gemini" {
            path.replace("/m:", &format!("/{model}:"))
        } else {
            if let Some(o) = req.as_object_mut() {
                o.insert("model".into(), json!(model));
            }
            path.to_string()
        };
        let (status, bytes, sse) =
            f.rt.block_on(post(&f.ts, &f.key, &path, req.to_string().into_bytes()))
                .map_err(TestCaseError::fail)?;
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(
            status == 200 || (400..500).contains(&status),
            "{} door via {} answered {}: {}",
            door,
            model,
            status,
            text
        );
        if status == 200 && !sse {
            prop_assert!(serde_json::from_slice::<Value>(&bytes).is_ok(), "{}", text);
        }
        if status != 200 {
            door_error_shape(door, status, &bytes).map_err(TestCaseError::fail)?;
        }
        Ok(())
    });
    let Fixture { rt, ts, .. } = f;
    rt.block_on(ts.stop());
    result.unwrap();
    let ran = ran.into_inner();
    eprintln!("{ran} bodies sent");
    assert!(ran >= 96, "{ran}");
}
