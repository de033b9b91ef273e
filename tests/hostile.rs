//! Hostile input: oversized bodies and headers, slow clients, invalid UTF-8,
//! deeply nested JSON, absurd numbers. Each gets a clear answer in the
//! caller's dialect (or the connection is closed), nothing is billed or
//! changed, and the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::relay::assert_error;
use common::{Db, TestServer, snapshot, spawn_with};
use serde_json::{Value, json};
use sluice::mock::Mock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup(adjust: impl FnOnce(&mut sluice::config::Config)) -> (TestServer, Mock, String) {
    let ts = spawn_with(Db::Sqlite, adjust).await.unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 500_000}),
        )
        .await;
    (ts, mock, key)
}

/// Sends raw bytes on a fresh connection, then reads until the server
/// closes it (or 10 s pass, which fails the test). Returns what was read.
async fn raw(ts: &TestServer, parts: &[&[u8]]) -> String {
    let addr = ts.base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    for p in parts {
        s.write_all(p).await.unwrap();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept a stalled connection open");
    String::from_utf8_lossy(&out).into_owned()
}

/// The server still answers a normal call.
async fn still_serving(ts: &TestServer, key: &str) {
    let r = ts.chat(key, "gpt-4o", 5).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn oversized_bodies_get_413_and_change_nothing() {
    let (ts, mock, key) = setup(|c| c.max_body_bytes = 4096).await;
    let big = "x".repeat(10_000);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": big}]});
    let r = ts.relay(&key, "/v1/chat/completions", body.clone()).await;
    assert_error(&r, 413, "invalid_request_error", "request_too_large");
    let r = ts
        .relay(
            &key,
            "/v1/messages",
            json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["type"], json!("error"));
    let before = snapshot(ts.store()).await;
    let r = ts
        .post(&ts.root(), "/api/token/", json!({"name": big}))
        .await;
    r.error(reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(snapshot(ts.store()).await, before);
    assert_eq!(mock.state.count("ok"), 0);
    still_serving(&ts, &key).await;
    ts.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let (ts, _mock, key) = setup(|c| c.max_header_bytes = 16 * 1024).await;
    let r = ts
        .http
        .get(ts.url("/api/status"))
        .header("x-junk", "a".repeat(32 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    still_serving(&ts, &key).await;
    ts.stop().await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let (ts, _mock, key) = setup(|c| c.client_header_timeout_ms = 300).await;
    // After a request, an idle keep-alive connection.
    let out = raw(&ts, &[b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // A head that never ends.
    let out = raw(&ts, &[b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"]).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
    // A connection that says nothing at all.
    let out = raw(&ts, &[]).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
    still_serving(&ts, &key).await;
    ts.stop().await;
}

#[tokio::test]
async fn slow_bodies_get_408_in_the_callers_dialect() {
    let (ts, mock, key) = setup(|c| c.client_body_timeout_ms = 300).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n"
    );
    let out = raw(&ts, &[head.as_bytes(), b"{\"model\": \"gpt"]).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // Chunked: the JSON is inside the chunk framing.
        let start = body.find('{').unwrap();
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    });
    assert_eq!(v["error"]["code"], json!("request_timeout"), "{out}");
    // The management API too.
    let head = format!(
        "POST /api/token/ HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         new-api-user: 1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
        common::ROOT_TOKEN
    );
    let before = snapshot(ts.store()).await;
    let out = raw(&ts, &[head.as_bytes(), b"{\"name\": "]).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"success\":false"), "{out}");
    assert_eq!(snapshot(ts.store()).await, before);
    assert_eq!(mock.state.count("ok"), 0);
    still_serving(&ts, &key).await;
    ts.stop().await;
}

/// POSTs raw bytes as a JSON body.
async fn post_bytes(ts: &TestServer, key: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let r = ts
        .http
        .post(ts.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("new-api-user", "1")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn invalid_utf8_and_deep_nesting_are_clear_400s() {
    let (ts, mock, key) = setup(|_| {}).await;
    let bad_utf8 = b"{\"model\": \"gpt-4o\xff\xfe\", \"messages\": []}".to_vec();
    let deep = |inner: &str| {
        let depth = 100_000;
        format!(
            "{{\"model\": \"gpt-4o\", {inner}: {}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    };
    let (status, text) = post_bytes(&ts, &key, "/v1/chat/completions", bad_utf8.clone()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid request body"), "{text}");
    // Nesting: where sluice reads the body (a conversion, Gemini's door) it
    // refuses past serde_json's depth limit of 128; a body passed through
    // unchanged is skipped over without recursion and left to the upstream.
    for (path, body) in [
        ("/v1/messages", deep("\"messages\"")),
        ("/v1/responses", deep("\"input\"")),
        (
            "/v1beta/models/gpt-4o:generateContent",
            deep("\"contents\""),
        ),
    ] {
        let (status, text) = post_bytes(&ts, &key, path, body).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("recursion limit"), "{path}: {text}");
    }
    let (status, text) = post_bytes(&ts, &key, "/v1/chat/completions", deep("\"messages\"")).await;
    assert!(status < 500, "{text}");
    let before = snapshot(ts.store()).await;
    let bad_name = b"{\"name\": \"k\xff\xfe\"}".to_vec();
    for body in [bad_name, deep("\"name\"")] {
        let (status, text) = post_bytes(&ts, common::ROOT_TOKEN, "/api/token/", body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("\"success\":false"), "{text}");
    }
    assert_eq!(snapshot(ts.store()).await, before);
    assert_eq!(mock.state.count("ok"), 1, "only the passed-through body");
    still_serving(&ts, &key).await;
    ts.stop().await;
}

#[tokio::test]
async fn absurd_numbers_are_refused_before_anything_is_held() {
    let (ts, mock, key) = setup(|_| {}).await;
    let before = snapshot(ts.store()).await;
    let chat = |extra: &str| {
        format!(
            "{{\"model\": \"gpt-4o\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], {extra}}}"
        )
        .into_bytes()
    };
    for extra in [
        "\"max_tokens\": 9223372036854775807",
        "\"max_tokens\": 9223372036854775808",
        "\"max_tokens\": 1e30",
        "\"max_tokens\": -1",
        "\"max_tokens\": 0",
        "\"max_tokens\": 1.5",
        "\"max_tokens\": \"5\"",
        "\"max_completion_tokens\": 100000001",
        "\"n\": 0",
        "\"n\": -3",
        "\"n\": 129",
        "\"n\": 18446744073709551616",
    ] {
        let (status, text) = post_bytes(&ts, &key, "/v1/chat/completions", chat(extra)).await;
        assert_eq!(status, 400, "{extra}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["error"]["type"],
            json!("invalid_request_error"),
            "{extra}"
        );
    }
    for (path, body) in [
        (
            "/v1/messages",
            json!({"model": "gpt-4o", "max_tokens": -5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt-4o", "max_tokens": 1_000_000_000_000i64, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1beta/models/gpt-4o:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                   "generationConfig": {"maxOutputTokens": -1}}),
        ),
        (
            "/v1beta/models/gpt-4o:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                   "generationConfig": {"candidateCount": 1000}}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 0}),
        ),
    ] {
        let r = ts.relay(&key, path, body.clone()).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text);
    }
    // Management fields: overflowing, negative, wrong-typed.
    let root = ts.root();
    for body in [
        json!({"name": "a", "remain_quota": 1e30}),
        json!({"name": "a", "remain_quota": -1}),
        json!({"name": "a", "expired_time": 1e20}),
        json!({"name": "a", "expired_time": -7}),
        json!({"name": "a", "rpm_limit": -1}),
        json!({"name": "a", "unlimited_quota": "yes"}),
    ] {
        let r = ts.post(&root, "/api/token/", body.clone()).await;
        assert!(!r.success(), "{body} accepted: {}", r.body);
        assert!(!r.message().is_empty());
    }
    let (status, text) = post_bytes(
        &ts,
        common::ROOT_TOKEN,
        "/api/token/",
        b"{\"name\": \"a\", \"remain_quota\": 9223372036854775808}".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("remain_quota"), "{text}");
    for q in [json!(-1), json!(1e30), json!("lots")] {
        let r = ts
            .put(&root, "/api/user/", json!({"id": 1, "quota": q}))
            .await;
        assert!(!r.success(), "quota {q} accepted: {}", r.body);
    }
    // Pages: any numbers are clamped, never an error or a crash.
    for q in [
        "p=-5&page_size=-1",
        "p=99999999999999999999&page_size=1000000",
        "p=x",
    ] {
        let r = ts.get(&root, &format!("/api/token/?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
    }
    assert_eq!(snapshot(ts.store()).await, before);
    assert_eq!(mock.state.count("ok"), 0);
    still_serving(&ts, &key).await;
    ts.stop().await;
}

/// Connections that never send a byte, and idle keep-alive ones, do not
/// hold up a shutdown (they would otherwise wait out the header timeout).
#[tokio::test]
async fn silent_and_idle_connections_do_not_delay_a_shutdown() {
    let (ts, _mock, key) = setup(|c| c.client_header_timeout_ms = 600_000).await;
    still_serving(&ts, &key).await; // leaves an idle keep-alive connection
    let addr = ts.base.trim_start_matches("http://").to_string();
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), ts.stop()).await;
    assert!(stopped.is_ok(), "the server waited on silent connections");
    drop(silent);
}
