//! The OpenAI relay end to end against the mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::spawn;
use serde_json::json;
use sluice::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};

#[tokio::test]
async fn chat_non_stream_and_stream_are_billed() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let alice = ts.user("alice", 1).await;
    ts.give_quota(&alice, 1_000_000).await;
    let (tid, key) = ts
        .key(&alice, json!({"name": "k", "remain_quota": 100_000}))
        .await;
    let r = ts
        .relay(
            &key,
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.headers.get("x-request-id").is_some());
    assert_eq!(
        r.json()["usage"]["completion_tokens"],
        json!(COMPLETION_TOKENS)
    );
    let r = ts
        .relay(&key, "/v1/chat/completions", json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("[DONE]"));
    assert!(
        !r.text.contains("\"usage\""),
        "usage chunk hidden when not asked: {}",
        r.text
    );
    ts.flush().await;
    // gpt-4o: ratio 1.25, completion 4: (10 + 20*4) * 1.25 = 112.5 → 113 per call
    let per_call = (((PROMPT_TOKENS + COMPLETION_TOKENS * 4) as f64) * 1.25).ceil() as i64;
    let t = ts.get(&alice, &format!("/api/token/{tid}")).await;
    assert_eq!(t.ok()["used_quota"], json!(per_call * 2));
    assert_eq!(t.ok()["remain_quota"], json!(100_000 - per_call * 2));
    let logs = ts.get(&alice, "/api/log/self?type=2").await;
    assert_eq!(logs.ok()["total"], json!(2));
    let stat = ts.get(&alice, "/api/log/self/stat?type=2").await;
    assert_eq!(stat.ok()["quota"], json!(per_call * 2));
    ts.stop().await;
}

/// Upstream connections are kept alive: sequential calls from one client,
/// answered whole, streamed, or refused with an error body, all go over one
/// upstream connection (each is read to its end, then pooled).
#[tokio::test]
async fn upstream_connections_are_kept_and_reused() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let ok = ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let failing = ts.mock_channel(&mock, "fail-400", "gpt-4o-mini", 0).await;
    assert_ne!(ok, failing);
    let alice = ts.user("alice", 1).await;
    ts.give_quota(&alice, 10_000_000).await;
    let (_, key) = ts
        .key(&alice, json!({"name": "k", "remain_quota": 1_000_000}))
        .await;
    let chat = |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..4 {
        let r = ts
            .relay(&key, "/v1/chat/completions", chat("gpt-4o", false))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = ts
            .relay(&key, "/v1/chat/completions", chat("gpt-4o", true))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains("[DONE]"), "{}", r.text);
        let r = ts
            .relay(&key, "/v1/chat/completions", chat("gpt-4o-mini", false))
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
    }
    assert_eq!(
        mock.state.hits.load(std::sync::atomic::Ordering::Relaxed),
        12
    );
    assert_eq!(
        mock.state.connections(),
        1,
        "every call opened a connection"
    );
    ts.stop().await;
}
