//! The official `openai` Python SDK against sluice (tests/python/openai_sdk.py):
//! chat (plain and streamed with include_usage), embeddings, models, and the
//! SDK's exception classes for 401/403/429.
//!
//! Needs `$SLUICE_TEST_PYTHON` (a Python with the `openai` package, e.g.
//! `.venv/bin/python`); without it the test is skipped with a printed
//! SKIPPED, except under `CI=true`, where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::relay::{other, quota_sum};
use common::spawn;
use serde_json::{Value, json};
use sluice::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};
use tokio::process::Command;

fn python() -> Option<String> {
    match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SLUICE_TEST_PYTHON must be set in CI");
            }
            eprintln!("SKIPPED: SLUICE_TEST_PYTHON is not set; the openai SDK test did not run");
            None
        }
    }
}

#[tokio::test]
async fn openai_python_sdk_drives_sluice() {
    let Some(py) = python() else { return };
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o,gpt-4o-mini,text-embedding-3-small", 0)
        .await;
    let (u, tid, key_ok) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "sdk", "remain_quota": 100_000, "model_limits_enabled": true,
                   "model_limits": "gpt-4o,text-embedding-3-small"}),
        )
        .await;
    let (dis_id, key_disabled) = ts
        .key(&u, json!({"name": "off", "remain_quota": 100_000}))
        .await;
    ts.put(
        &u,
        "/api/token/?status_only=true",
        json!({"id": dis_id, "status": 2}),
    )
    .await
    .ok();
    let (_, key_exhausted) = ts
        .key(&u, json!({"name": "empty", "remain_quota": 0}))
        .await;
    let key_bad = format!("sk-{}", "x".repeat(48));

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk.py");
    let out = Command::new(&py)
        .arg(script)
        .env("SLUICE_BASE", &ts.base)
        .env("KEY_OK", &key_ok)
        .env("KEY_BAD", &key_bad)
        .env("KEY_DISABLED", &key_disabled)
        .env("KEY_EXHAUSTED", &key_exhausted)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "openai_sdk.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));

    // Chat.
    let chat = &v["chat"];
    assert_eq!(chat["content"], json!("word0 word1 word2 word3 word4 "));
    assert_eq!(chat["finish_reason"], json!("stop"));
    assert_eq!(chat["usage"]["prompt_tokens"], json!(PROMPT_TOKENS));
    assert_eq!(chat["usage"]["completion_tokens"], json!(COMPLETION_TOKENS));
    let chat_rid = chat["request_id"].as_str().unwrap().to_string();
    // Stream with include_usage: the usage arrives in the last chunk.
    let st = &v["stream"];
    assert_eq!(st["text"], json!("word0 word1 word2 word3 word4 "));
    assert_eq!(st["usage"]["prompt_tokens"], json!(PROMPT_TOKENS));
    assert_eq!(st["usage"]["completion_tokens"], json!(COMPLETION_TOKENS));
    assert!(st["chunks"].as_i64().unwrap() >= 7);
    // Embeddings.
    assert_eq!(v["embeddings"]["count"], json!(2));
    assert_eq!(v["embeddings"]["dims"], json!(4));
    assert_eq!(
        v["embeddings"]["usage"]["prompt_tokens"],
        json!(PROMPT_TOKENS)
    );
    // Models: the key's limits narrow what the channel serves.
    assert_eq!(v["models"], json!(["gpt-4o", "text-embedding-3-small"]));

    // Exceptions: the SDK's classes, statuses, and sluice's codes.
    let e = &v["errors"];
    for (name, class, status, typ, code) in [
        (
            "bad_key",
            "AuthenticationError",
            401,
            "invalid_request_error",
            "invalid_api_key",
        ),
        (
            "disabled",
            "PermissionDeniedError",
            403,
            "permission_error",
            "token_disabled",
        ),
        (
            "model_not_allowed",
            "PermissionDeniedError",
            403,
            "permission_error",
            "model_not_allowed",
        ),
        (
            "exhausted",
            "RateLimitError",
            429,
            "insufficient_quota",
            "insufficient_quota",
        ),
    ] {
        assert_eq!(e[name]["class"], json!(class), "{name}: {}", e[name]);
        assert_eq!(e[name]["status"], json!(status), "{name}");
        assert_eq!(e[name]["type"], json!(typ), "{name}");
        assert_eq!(e[name]["code"], json!(code), "{name}");
        let rid = e[name]["request_id"].as_str().unwrap();
        assert!(e[name]["message"].as_str().unwrap().contains(rid), "{name}");
    }

    // The ledger saw exactly the three billed calls, from the SDK.
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        assert_eq!(other(r)["client"], json!("OpenAI/Python"));
    }
    let chat_row = rows
        .iter()
        .find(|r| r["request_id"] == json!(chat_rid))
        .expect("the chat call's row");
    assert_eq!(chat_row["quota"], json!(113));
    assert!(
        rows.iter()
            .any(|r| r["is_stream"] == json!(true) && r["quota"] == json!(113))
    );
    let used = ts.token_of(&u, tid).await["used_quota"].as_i64().unwrap();
    assert_eq!(used, quota_sum(&rows));
    assert_eq!(mock.state.count("ok"), 3);
    ts.stop().await;
}
