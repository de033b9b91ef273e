//! The `openai` Python SDK's Responses API against sluice's `/v1/responses`
//! door, through an OpenAI channel and an Anthropic channel (both converted
//! through the hub): `responses.create` plain and streamed, the
//! `responses.stream(...)` helper and its `get_final_response()`, with and
//! without function tools.
//!
//! Needs `$SLUICE_TEST_PYTHON` (a Python with `openai`); without it the test
//! is skipped, except under `CI=true`, where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::spawn;
use serde_json::{Value, json};
use sluice::mock::{COMPLETION_TOKENS, PROMPT_TOKENS, STREAM_CHUNKS};
use tokio::process::Command;

fn python() -> Option<String> {
    match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SLUICE_TEST_PYTHON must be set in CI");
            }
            eprintln!("SKIPPED: SLUICE_TEST_PYTHON is not set; the Responses SDK test did not run");
            None
        }
    }
}

/// Runs a script of tests/python with `env`; returns the JSON report it
/// prints on its last line.
async fn run_script(py: &str, name: &str, env: &[(&str, String)]) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name);
    let mut cmd = Command::new(py);
    cmd.arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("{name} printed no report:\n{stdout}"))
}

const VIA_OPENAI: &str = "sdk-responses-via-openai";
const VIA_ANTHROPIC: &str = "sdk-responses-via-anthropic";
const MAX_TOKENS: i64 = 16;

fn pieces() -> Vec<String> {
    (0..STREAM_CHUNKS).map(|i| format!("word{i} ")).collect()
}

fn words() -> String {
    pieces().concat()
}

fn usage() -> Value {
    let out = MAX_TOKENS.min(COMPLETION_TOKENS);
    json!({"input_tokens": PROMPT_TOKENS, "output_tokens": out,
        "total_tokens": PROMPT_TOKENS + out, "cached_tokens": 0, "reasoning_tokens": 0})
}

/// A Response object as the SDK parsed it: the mock's text answer.
#[track_caller]
fn assert_text_response(r: &Value, model: &str, what: &str) {
    assert_eq!(r["object"], json!("response"), "{what}: {r}");
    assert_eq!(r["model"], json!(model), "{what}: {r}");
    assert_eq!(r["status"], json!("completed"), "{what}: {r}");
    assert_eq!(r["incomplete_details"], Value::Null, "{what}: {r}");
    assert_eq!(r["output_text"], json!(words()), "{what}: {r}");
    assert_eq!(
        r["output"],
        json!([{"type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": words()}], "has_id": true}]),
        "{what}: {r}"
    );
    assert_eq!(r["usage"], usage(), "{what}: {r}");
    for k in ["has_id", "created_at_is_number", "tools_is_list"] {
        assert_eq!(r[k], json!(true), "{what}: {k}: {r}");
    }
}

/// A Response object as the SDK parsed it: the mock's call of the tool.
#[track_caller]
fn assert_tool_response(r: &Value, what: &str) {
    assert_eq!(r["status"], json!("completed"), "{what}: {r}");
    assert_eq!(r["output_text"], json!(""), "{what}: {r}");
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 1, "{what}: {r}");
    let call = &out[0];
    assert_eq!(call["type"], json!("function_call"), "{what}: {r}");
    assert_eq!(call["name"], json!("lookup"), "{what}: {r}");
    assert_eq!(call["status"], json!("completed"), "{what}: {r}");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"q": "mock"}),
        "{what}: {r}"
    );
    assert!(
        call["call_id"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: {r}"
    );
    assert_eq!(call["has_id"], json!(true), "{what}: {r}");
}

#[tokio::test]
async fn openai_sdk_responses_through_openai_and_anthropic_channels() {
    let Some(py) = python() else {
        return;
    };
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let ratios = json!({VIA_OPENAI: 1, VIA_ANTHROPIC: 1}).to_string();
    ts.option("ModelRatio", &ratios).await;
    ts.option("CompletionRatio", &ratios).await;
    for (ty, model) in [(1, VIA_OPENAI), (14, VIA_ANTHROPIC)] {
        ts.channel(
            json!({"type": ty, "name": model, "key": "ok", "base_url": mock.url(),
            "models": model, "group": "default"}),
        )
        .await;
    }
    let (_, _, key) = ts
        .funded(
            "sdk-responses",
            100_000_000,
            json!({"name": "all", "unlimited_quota": true}),
        )
        .await;
    let models = json!({"openai": VIA_OPENAI, "anthropic": VIA_ANTHROPIC});
    let report = run_script(
        &py,
        "responses_sdk.py",
        &[
            ("BASE", ts.base.clone()),
            ("KEY", key),
            ("MODELS", models.to_string()),
        ],
    )
    .await;
    for (channel, model) in [("openai", VIA_OPENAI), ("anthropic", VIA_ANTHROPIC)] {
        let r = &report["channels"][channel];
        let what = |s: &str| format!("{channel} channel, {s}");
        assert_text_response(&r["create"], model, &what("responses.create"));
        assert_tool_response(&r["create_tools"], &what("responses.create with tools"));
        assert_text_response(
            &r["create_tool_result"],
            model,
            &what("responses.create with a function_call_output"),
        );

        // The raw stream: numbered from 0 without gaps, created first,
        // completed last, text in output_text deltas.
        let s = &r["stream"];
        let events = s["events"].as_array().unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e["seq"],
                json!(i),
                "{}: {events:?}",
                what("sequence numbers")
            );
        }
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let mut expected = vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ];
        expected.extend(std::iter::repeat_n(
            "response.output_text.delta",
            STREAM_CHUNKS,
        ));
        expected.extend([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(kinds, expected, "{}", what("stream events"));
        assert_eq!(s["text"], json!(words()), "{}", what("stream text"));
        assert_text_response(&s["completed"], model, &what("response.completed"));

        // The SDK's stream helper accepts the stream and assembles the
        // final response.
        let s = &r["stream_helper"];
        assert_eq!(s["deltas"], json!(pieces()), "{}", what("helper deltas"));
        assert_text_response(&s["final"], model, &what("get_final_response"));

        let s = &r["stream_helper_tools"];
        let kinds: Vec<&str> = s["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"response.function_call_arguments.delta")
                && kinds.contains(&"response.function_call_arguments.done"),
            "{}: {kinds:?}",
            what("helper tool events")
        );
        assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
        assert_tool_response(&s["final"], &what("get_final_response with tools"));
    }

    // What the channels received for the function_call_output round.
    let seen = mock.state.seen.lock().clone();
    let chat = seen
        .iter()
        .find(|s| {
            s.path == "/v1/chat/completions"
                && s.body["messages"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
        })
        .expect("the tool round reached the OpenAI channel");
    assert_eq!(
        chat.body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "look it up"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]),
        "{}",
        chat.body
    );
    let claude = seen
        .iter()
        .find(|s| {
            s.path == "/v1/messages" && s.body["messages"].as_array().is_some_and(|m| m.len() == 3)
        })
        .expect("the tool round reached the Anthropic channel");
    assert_eq!(
        claude.body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "look it up"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "lookup",
                "input": {"q": "x"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "42"}]},
        ]),
        "{}",
        claude.body
    );
    assert_eq!(claude.body["max_tokens"], json!(MAX_TOKENS));

    let e = &report["error"];
    assert_eq!(e["class"], json!("AuthenticationError"), "{e}");
    assert_eq!(e["status"], json!(401), "{e}");
    assert_eq!(e["body"]["code"], json!("invalid_api_key"), "{e}");
    ts.stop().await;
}
