//! The Gemini door (`/v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:countTokens`) through a Gemini channel
//! (pass-through) and an OpenAI channel (converted): over plain REST, and
//! with Google's `google-genai` SDK pointed at sluice.
//!
//! The SDK test needs `$SLUICE_TEST_PYTHON` (a Python with `google-genai`);
//! without it that test is skipped, except under `CI=true`, where that is a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::TestServer;
use common::relay::Relayed;
use serde_json::{Value, json};
use sluice::mock::{COMPLETION_TOKENS, Mock, PROMPT_TOKENS, STREAM_CHUNKS};
use tokio::process::Command;

fn python() -> Option<String> {
    match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SLUICE_TEST_PYTHON must be set in CI");
            }
            eprintln!(
                "SKIPPED: SLUICE_TEST_PYTHON is not set; the google-genai SDK test did not run"
            );
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

const VIA_GEMINI: &str = "sdk-gemini-via-gemini";
const VIA_OPENAI: &str = "sdk-gemini-via-openai";
const FAILING: &str = "sdk-gemini-failing";
const MAX_TOKENS: i64 = 16;

fn words() -> String {
    (0..STREAM_CHUNKS).map(|i| format!("word{i} ")).collect()
}

fn expected_usage() -> Value {
    let out = MAX_TOKENS.min(COMPLETION_TOKENS);
    json!({"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": out,
        "totalTokenCount": PROMPT_TOKENS + out})
}

/// A server with a Gemini channel, an OpenAI channel and a failing Gemini
/// channel on the mock, and a key that may use all of them.
async fn setup() -> (TestServer, Mock, String) {
    let ts = common::spawn().await;
    let mock = common::relay::mock().await;
    let ratios = json!({VIA_GEMINI: 1, VIA_OPENAI: 1, FAILING: 1}).to_string();
    ts.option("ModelRatio", &ratios).await;
    ts.option("CompletionRatio", &ratios).await;
    for (ty, key, model) in [
        (24, "ok", VIA_GEMINI),
        (1, "ok", VIA_OPENAI),
        (24, "fail-503", FAILING),
    ] {
        ts.channel(
            json!({"type": ty, "name": model, "key": key, "base_url": mock.url(),
            "models": model, "group": "default"}),
        )
        .await;
    }
    let (_, _, key) = ts
        .funded(
            "sdk-gemini",
            100_000_000,
            json!({"name": "all", "unlimited_quota": true}),
        )
        .await;
    (ts, mock, key)
}

/// POSTs a Gemini call with the key in `x-goog-api-key`.
async fn gemini(ts: &TestServer, key: &str, path: &str, body: Value) -> Relayed {
    ts.relay_send(
        ts.http
            .post(ts.url(path))
            .header("x-goog-api-key", key)
            .json(&body),
    )
    .await
}

/// The `data:` payloads of a Gemini SSE body; asserts the framing the
/// google-genai parser needs (`data: ` with a space, no `event:` lines, no
/// `[DONE]`).
#[track_caller]
fn sse_payloads(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for ev in text.split("\n\n").map(|e| e.trim_matches(['\r', '\n'])) {
        if ev.is_empty() {
            continue;
        }
        for line in ev.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let data = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("only `data: ` lines in a Gemini stream: {line:?}"));
            assert_ne!(data, "[DONE]", "Gemini streams have no [DONE]");
            out.push(serde_json::from_str(data).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn gemini_rest_through_gemini_and_openai_channels() {
    let (ts, mock, key) = setup().await;
    let hello = json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
        "generationConfig": {"maxOutputTokens": MAX_TOKENS},
    });
    for model in [VIA_GEMINI, VIA_OPENAI] {
        // generateContent
        let r = gemini(
            &ts,
            &key,
            &format!("/v1beta/models/{model}:generateContent"),
            hello.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        let v = r.json();
        assert_eq!(
            v["candidates"][0]["content"],
            json!({"role": "model", "parts": [{"text": words()}]}),
            "{model}: {v}"
        );
        assert_eq!(v["candidates"][0]["finishReason"], json!("STOP"), "{v}");
        let u = &v["usageMetadata"];
        for (k, want) in expected_usage().as_object().unwrap() {
            assert_eq!(&u[k], want, "{model}: usageMetadata.{k}: {v}");
        }

        // streamGenerateContent?alt=sse
        let r = gemini(
            &ts,
            &key,
            &format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
            hello.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let chunks = sse_payloads(&r.text);
        let text: String = chunks
            .iter()
            .flat_map(|c| {
                c["candidates"][0]["content"]["parts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|p| p["text"].as_str().map(String::from))
            .collect();
        assert_eq!(text, words(), "{model}: {}", r.text);
        let last = chunks.last().unwrap();
        assert_eq!(
            last["candidates"][0]["finishReason"],
            json!("STOP"),
            "{model}: {}",
            r.text
        );
        for (k, want) in expected_usage().as_object().unwrap() {
            assert_eq!(
                &last["usageMetadata"][k], want,
                "{model}: last chunk usageMetadata.{k}: {}",
                r.text
            );
        }
        for c in &chunks[..chunks.len() - 1] {
            assert!(
                c["candidates"][0].get("finishReason").is_none(),
                "finishReason only on the last chunk: {}",
                r.text
            );
        }

        // Without alt=sse the stream is one JSON array of the same chunks.
        let r = gemini(
            &ts,
            &key,
            &format!("/v1beta/models/{model}:streamGenerateContent"),
            hello.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{model}"
        );
        let array: Vec<Value> = serde_json::from_str(&r.text)
            .unwrap_or_else(|_| panic!("{model}: not a JSON array: {}", r.text));
        assert_eq!(array, chunks, "{model}: the array holds the SSE chunks");

        // Function calling, camelCase and snake_case alike, key in ?key=.
        let tools = json!({
            "contents": [{"role": "user", "parts": [{"text": "look it up"}]}],
            "tools": [{"function_declarations": [{"name": "lookup",
                "parameters": {"type": "OBJECT", "properties": {"q": {"type": "STRING"}}, "required": ["q"]}}]}],
            "generation_config": {"max_output_tokens": MAX_TOKENS},
        });
        let r = ts
            .relay_send(
                ts.http
                    .post(ts.url(&format!("/v1beta/models/{model}:generateContent?key={key}")))
                    .json(&tools),
            )
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        let v = r.json();
        assert_eq!(
            v["candidates"][0]["content"]["parts"],
            json!([{"functionCall": {"name": "lookup", "args": {"q": "mock"}}}]),
            "{model}: {v}"
        );
        assert_eq!(v["candidates"][0]["finishReason"], json!("STOP"), "{v}");

        // countTokens is answered by sluice.
        let r = gemini(
            &ts,
            &key,
            &format!("/v1beta/models/{model}:countTokens"),
            json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        let n = r.json()["totalTokens"].as_i64().unwrap();
        assert!(n > 0 && n < 50, "{n}");
        let r = gemini(
            &ts,
            &key,
            &format!("/v1beta/models/{model}:countTokens"),
            json!({"generateContentRequest": {"model": format!("models/{model}"),
                "contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}}),
        )
        .await;
        assert_eq!(r.json()["totalTokens"].as_i64(), Some(n), "{}", r.text);
    }

    // The OpenAI channel got an OpenAI request: the schema in JSON Schema's
    // lowercase types (Gemini's OpenAPI enum is upper case).
    let seen = mock.state.seen.lock().clone();
    let tool_req = seen
        .iter()
        .find(|s| s.path == "/v1/chat/completions" && s.body.get("tools").is_some())
        .expect("the tool call reached the OpenAI channel");
    assert_eq!(
        tool_req.body["tools"][0],
        json!({"type": "function", "function": {"name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}),
        "{}",
        tool_req.body
    );
    assert_eq!(tool_req.body["max_tokens"], json!(MAX_TOKENS));
    assert!(seen.iter().all(|s| !s.path.contains("countTokens")));

    // An upstream failure reaches the caller as a Gemini error.
    let r = gemini(
        &ts,
        &key,
        &format!("/v1beta/models/{FAILING}:generateContent"),
        hello.clone(),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], json!(502), "{v}");
    assert!(v["error"]["status"].is_string(), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("503"),
        "{v}"
    );
    // The array form wraps the error too.
    let r = gemini(
        &ts,
        &key,
        &format!("/v1beta/models/{FAILING}:streamGenerateContent"),
        hello.clone(),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text);
    let v = r.json();
    assert_eq!(v[0]["error"]["code"], json!(502), "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    ts.stop().await;
}

#[tokio::test]
async fn google_genai_sdk_through_gemini_and_openai_channels() {
    let Some(py) = python() else {
        return;
    };
    let (ts, mock, key) = setup().await;
    let models = json!({"gemini": VIA_GEMINI, "openai": VIA_OPENAI});
    let report = run_script(
        &py,
        "gemini_sdk.py",
        &[
            ("BASE", ts.base.clone()),
            ("KEY", key),
            ("MODELS", models.to_string()),
            ("ERROR_MODEL", FAILING.to_string()),
        ],
    )
    .await;
    let out = MAX_TOKENS.min(COMPLETION_TOKENS);
    let usage = json!({"prompt": PROMPT_TOKENS, "candidates": out, "total": PROMPT_TOKENS + out});
    for channel in ["gemini", "openai"] {
        let r = &report["channels"][channel];
        assert_eq!(
            r["generate"],
            json!({"text": words(), "role": "model", "finish_reason": "STOP",
                "function_calls": [], "usage": usage}),
            "{channel}: generate_content"
        );
        let chunks = r["stream"].as_array().unwrap();
        let text: String = chunks.iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(text, words(), "{channel}: {chunks:?}");
        let last = chunks.last().unwrap();
        assert_eq!(
            last["finish_reason"],
            json!("STOP"),
            "{channel}: {chunks:?}"
        );
        assert_eq!(last["usage"], usage, "{channel}: {chunks:?}");

        let g = &r["generate_tools"];
        assert_eq!(
            g["function_calls"],
            json!([{"name": "lookup", "args": {"q": "mock"}}]),
            "{channel}: {g}"
        );
        assert_eq!(g["finish_reason"], json!("STOP"), "{channel}: {g}");
        let calls: Vec<&Value> = r["stream_tools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["function_calls"].as_array().unwrap())
            .collect();
        assert_eq!(
            calls,
            vec![&json!({"name": "lookup", "args": {"q": "mock"}})],
            "{channel}: {}",
            r["stream_tools"]
        );
        assert_eq!(
            r["generate_tool_result"]["text"],
            json!(words()),
            "{channel}: {}",
            r["generate_tool_result"]
        );
        let n = r["count_tokens"]["total_tokens"].as_i64().unwrap();
        assert!(n > 0 && n < 50, "{channel}: {n}");
    }
    // The function response went to the OpenAI channel as a tool message
    // answering the model's call.
    let seen = mock.state.seen.lock().clone();
    let loop_req = seen
        .iter()
        .find(|s| {
            s.path == "/v1/chat/completions"
                && s.body["messages"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
        })
        .expect("the function response reached the OpenAI channel");
    let msgs = loop_req.body["messages"].as_array().unwrap();
    let call = &msgs[1]["tool_calls"][0];
    assert_eq!(
        call["function"],
        json!({"name": "lookup", "arguments": "{\"q\":\"x\"}"}),
        "{}",
        loop_req.body
    );
    assert_eq!(msgs[2]["role"], json!("tool"));
    assert_eq!(msgs[2]["tool_call_id"], call["id"]);
    assert_eq!(msgs[2]["content"], json!("{\"answer\":42}"));

    let e = &report["errors"];
    for k in ["bad_key", "bad_key_stream"] {
        assert_eq!(e[k]["class"], json!("ClientError"), "{k}: {}", e[k]);
        assert_eq!(e[k]["code"], json!(401), "{k}: {}", e[k]);
        assert_eq!(e[k]["status"], json!("UNAUTHENTICATED"), "{k}: {}", e[k]);
    }
    assert_eq!(e["upstream_503"]["class"], json!("ServerError"), "{}", e);
    assert_eq!(e["upstream_503"]["code"], json!(502), "{}", e);
    ts.stop().await;
}
