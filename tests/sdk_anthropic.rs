//! The official `anthropic` Python SDK against sluice's `/v1/messages` door,
//! through an Anthropic channel (pass-through) and an OpenAI channel
//! (converted): messages.create, messages.stream (text and tool use, and the
//! final message the SDK assembles), count_tokens, and the SDK's error
//! classes for 401/403/429.
//!
//! Needs `$SLUICE_TEST_PYTHON` (a Python with `anthropic` installed); without
//! it the test is skipped, except under `CI=true`, where that is a failure.
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
            eprintln!("SKIPPED: SLUICE_TEST_PYTHON is not set; the anthropic SDK test did not run");
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

const VIA_ANTHROPIC: &str = "sdk-claude-via-anthropic";
const VIA_OPENAI: &str = "sdk-claude-via-openai";
const RATE_LIMITED: &str = "sdk-claude-rate-limited";
const MAX_TOKENS: i64 = 16;

fn words() -> String {
    (0..STREAM_CHUNKS).map(|i| format!("word{i} ")).collect()
}

/// A message the SDK parsed: the mock's text answer.
#[track_caller]
fn assert_text_message(m: &Value, model: &str, what: &str) {
    assert_eq!(m["type"], json!("message"), "{what}: {m}");
    assert_eq!(m["role"], json!("assistant"), "{what}: {m}");
    assert_eq!(m["model"], json!(model), "{what}: {m}");
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": words()}]),
        "{what}: {m}"
    );
    assert_eq!(m["stop_reason"], json!("end_turn"), "{what}: {m}");
    assert_eq!(m["stop_sequence"], Value::Null, "{what}: {m}");
    assert_eq!(
        m["usage"]["input_tokens"],
        json!(PROMPT_TOKENS),
        "{what}: {m}"
    );
    assert_eq!(
        m["usage"]["output_tokens"],
        json!(MAX_TOKENS.min(COMPLETION_TOKENS)),
        "{what}: {m}"
    );
    assert!(
        m["id"].as_str().is_some_and(|id| id.starts_with("msg_")),
        "{what}: {m}"
    );
}

/// A message the SDK parsed: the mock's call of the offered tool.
#[track_caller]
fn assert_tool_message(m: &Value, what: &str) {
    assert_eq!(m["stop_reason"], json!("tool_use"), "{what}: {m}");
    let content = m["content"].as_array().unwrap();
    assert_eq!(content.len(), 1, "{what}: {m}");
    let b = &content[0];
    assert_eq!(b["type"], json!("tool_use"), "{what}: {m}");
    assert_eq!(b["name"], json!("lookup"), "{what}: {m}");
    assert_eq!(b["input"], json!({"q": "mock"}), "{what}: {m}");
    let id = b["id"].as_str().unwrap();
    assert!(
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "Anthropic tool ids match ^[a-zA-Z0-9_-]+$: {id}"
    );
}

#[track_caller]
fn assert_error(e: &Value, class: &str, status: u16, typ: &str) {
    assert_eq!(e["class"], json!(class), "{e}");
    assert_eq!(e["status"], json!(status), "{e}");
    assert_eq!(e["body"]["type"], json!("error"), "{e}");
    assert_eq!(e["body"]["error"]["type"], json!(typ), "{e}");
    assert!(
        e["body"]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{e}"
    );
}

#[tokio::test]
async fn anthropic_sdk_through_anthropic_and_openai_channels() {
    let Some(py) = python() else {
        return;
    };
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let ratios = json!({VIA_ANTHROPIC: 1, VIA_OPENAI: 1, RATE_LIMITED: 1}).to_string();
    ts.option("ModelRatio", &ratios).await;
    ts.option("CompletionRatio", &ratios).await;
    for (ty, key, model) in [
        (14, "ok", VIA_ANTHROPIC),
        (1, "ok", VIA_OPENAI),
        (14, "fail-429", RATE_LIMITED),
    ] {
        ts.channel(
            json!({"type": ty, "name": model, "key": key, "base_url": mock.url(),
            "models": model, "group": "default"}),
        )
        .await;
    }
    let (user, _, key) = ts
        .funded(
            "sdk-anthropic",
            100_000_000,
            json!({"name": "all", "unlimited_quota": true}),
        )
        .await;
    let (_, bad_model_key) = ts
        .key(
            &user,
            json!({"name": "limited", "unlimited_quota": true,
                "model_limits_enabled": true, "model_limits": "some-other-model"}),
        )
        .await;
    let (_, poor_key) = ts
        .key(&user, json!({"name": "poor", "remain_quota": 1}))
        .await;
    let models = json!({"anthropic": VIA_ANTHROPIC, "openai": VIA_OPENAI});
    let report = run_script(
        &py,
        "anthropic_sdk.py",
        &[
            ("BASE", ts.base.clone()),
            ("KEY", key),
            ("MODELS", models.to_string()),
            ("BAD_MODEL_KEY", bad_model_key),
            ("POOR_KEY", poor_key),
            ("RATE_MODEL", RATE_LIMITED.to_string()),
        ],
    )
    .await;

    for (channel, model) in [("anthropic", VIA_ANTHROPIC), ("openai", VIA_OPENAI)] {
        let r = &report["channels"][channel];
        let what = |s: &str| format!("{channel} channel, {s}");
        assert_text_message(&r["create"], model, &what("messages.create"));
        assert_tool_message(&r["create_tools"], &what("messages.create with tools"));
        assert_text_message(
            &r["create_tool_result"],
            model,
            &what("messages.create with a tool result"),
        );

        // Streamed text: the pieces are the mock's chunks, the final
        // message is what the stream carried.
        let s = &r["stream_text"];
        let pieces: Vec<String> = (0..STREAM_CHUNKS).map(|i| format!("word{i} ")).collect();
        assert_eq!(s["pieces"], json!(pieces), "{}", what("text_stream"));
        assert_text_message(&s["final"], model, &what("stream final message"));

        // Streamed tool use: the SDK assembled the input from the JSON deltas.
        let s = &r["stream_tools"];
        assert_tool_message(&s["final"], &what("stream final tool message"));
        let kinds: Vec<&str> = s["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(kinds.first(), Some(&"message_start"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"message_stop"), "{kinds:?}");
        assert!(
            kinds.contains(&"content_block_start")
                && kinds.contains(&"input_json")
                && kinds.contains(&"content_block_stop")
                && kinds.contains(&"message_delta"),
            "{}: {kinds:?}",
            what("stream events")
        );

        let n = r["count_tokens"]["input_tokens"].as_i64().unwrap();
        assert!(n > 0 && n < 100, "{}: {n}", what("count_tokens"));
    }

    // What the OpenAI channel received for the tool loop: the tool result
    // became a `tool` message answering the assistant's call.
    let seen = mock.state.seen.lock().clone();
    let loop_req = seen
        .iter()
        .find(|s| {
            s.path == "/v1/chat/completions"
                && s.body["messages"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
        })
        .expect("the tool loop reached the OpenAI channel");
    let msgs = loop_req.body["messages"].as_array().unwrap();
    assert_eq!(
        msgs[1]["tool_calls"][0]["function"],
        json!({"name": "lookup", "arguments": "{\"q\":\"x\"}"})
    );
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": "toolu_01", "content": "42"})
    );
    // count_tokens is answered by sluice, never forwarded.
    assert!(seen.iter().all(|s| !s.path.contains("count_tokens")));

    let e = &report["errors"];
    assert_error(
        &e["401"],
        "AuthenticationError",
        401,
        "authentication_error",
    );
    assert_error(
        &e["401_stream"],
        "AuthenticationError",
        401,
        "authentication_error",
    );
    assert_error(&e["403"], "PermissionDeniedError", 403, "permission_error");
    assert_error(&e["429_quota"], "RateLimitError", 429, "rate_limit_error");
    assert_error(
        &e["429_upstream"],
        "RateLimitError",
        429,
        "rate_limit_error",
    );
    for k in ["401", "403", "429_quota", "429_upstream"] {
        assert!(
            e[k]["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "the SDK reads the request id from `request-id`: {}",
            e[k]
        );
    }
    ts.stop().await;
}
