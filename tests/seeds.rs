//! The seed documents' Python examples, replayed as written against a real
//! server (only the host and the credentials substituted, from BASE, TOKEN and
//! USER_ID), then checked against the documented answers and the API.
//!
//! Needs `$SLUICE_TEST_PYTHON` (a Python with `requests`); without it the
//! test is skipped, except under `CI=true`, where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{ROOT_TOKEN, TestServer, spawn};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

fn python() -> Option<String> {
    match std::env::var("SLUICE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SLUICE_TEST_PYTHON must be set in CI");
            }
            eprintln!("SKIPPED: SLUICE_TEST_PYTHON is not set; the seed examples did not run");
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python/seeds")
        .join(name)
}

/// Runs a seed script and returns what it printed, as JSON. The scripts end
/// with `print(response.json())` as the documents do, which prints a Python
/// literal; a second interpreter turns that literal into JSON.
async fn run(py: &str, ts: &TestServer, name: &str) -> Value {
    let out = Command::new(py)
        .arg(script(name))
        .env("BASE", &ts.base)
        .env("TOKEN", ROOT_TOKEN)
        .env("USER_ID", "1")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conv = Command::new(py)
        .args([
            "-c",
            "import ast, json, sys; print(json.dumps(ast.literal_eval(sys.stdin.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = conv.stdin.take().unwrap();
    stdin.write_all(stdout.as_bytes()).await.unwrap();
    drop(stdin);
    let conv = conv.wait_with_output().await.unwrap();
    assert!(conv.status.success(), "{name} printed {stdout}");
    serde_json::from_slice(&conv.stdout).unwrap()
}

/// `json.dumps(["gpt-5.4", "claude-sonnet-4-6"])` as both scripts send it
/// (Python's default separators put a space after the comma); sluice keeps
/// `model_limits` exactly as given.
const SENT_MODEL_LIMITS: &str = r#"["gpt-5.4", "claude-sonnet-4-6"]"#;

#[tokio::test]
async fn seed_examples_create_then_update_token_10() {
    let Some(py) = python() else {
        return;
    };
    let ts = spawn().await;
    let root = ts.root();
    // The update example names token id 10: nine tokens first, so the one the
    // create example makes is id 10.
    for i in 1..=9 {
        let t = ts
            .token(&root, json!({"name": format!("filler-{i}")}))
            .await;
        assert_eq!(t["id"], json!(i), "a fresh database numbers tokens from 1");
    }

    // Create: the documented answer is {"success": true, "message": ""};
    // sluice adds `data`, the token with its full key.
    let created = run(&py, &ts, "create_token.py").await;
    assert_eq!(created["success"], json!(true), "{created}");
    assert_eq!(created["message"], json!(""));
    let data = &created["data"];
    assert_eq!(data["id"], json!(10), "{created}");
    let key = data["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 48);
    // The token really has the given fields.
    let got = ts.get(&root, "/api/token/10").await;
    let t = got.ok().clone();
    let sent = json!({
        "name": "Production",
        "remain_quota": 100000,
        "unlimited_quota": false,
        "expired_time": -1,
        "model_limits_enabled": true,
        "model_limits": SENT_MODEL_LIMITS,
        "allow_ips": "203.0.113.10",
    });
    for (k, v) in sent.as_object().unwrap() {
        assert_eq!(&t[k], v, "created token field {k}");
        assert_eq!(&data[k], v, "create answer field {k}");
    }
    assert_eq!(t["status"], json!(1));
    assert_eq!(t["user_id"], json!(1));

    // Update: the documented answer's data fields.
    let updated = run(&py, &ts, "update_token.py").await;
    assert_eq!(updated["success"], json!(true), "{updated}");
    assert_eq!(updated["message"], json!(""));
    let d = &updated["data"];
    let documented = json!({
        "id": 10,
        "name": "Production-Updated",
        "status": 1,
        "remain_quota": 200000,
        "unlimited_quota": false,
        "model_limits_enabled": true,
        // The document shows the compact form; the script sends Python's
        // json.dumps form, and sluice returns what was given.
        "model_limits": SENT_MODEL_LIMITS,
        "allow_ips": "203.0.113.10",
    });
    for (k, v) in documented.as_object().unwrap() {
        assert_eq!(&d[k], v, "update answer field {k}: {updated}");
    }
    // The document shows "group": "default", the caller's group. Neither
    // example sends a group, and sluice (like new-api) stores and returns the
    // empty group, which SPEC §3 defines as "the user's group".
    assert_eq!(d["group"], json!(""));
    let me = ts.get(&root, "/api/user/self").await;
    assert_eq!(me.ok()["group"], json!("default"));

    // The stored token: updated fields changed, the rest kept, same key.
    let got = ts.get(&root, "/api/token/10").await;
    let t = got.ok();
    for (k, v) in documented.as_object().unwrap() {
        assert_eq!(&t[k], v, "stored field {k}");
    }
    assert_eq!(t["expired_time"], json!(-1));
    let r = ts.post(&root, "/api/token/10/key", json!({})).await;
    assert_eq!(r.ok()["key"], json!(key), "updating never changes the key");
    // The fillers are untouched.
    let r = ts.get(&root, "/api/token/9").await;
    assert_eq!(r.ok()["name"], json!("filler-9"));
    ts.stop().await;
}
