//! Rate limits (SPEC §7: 429 with Retry-After in the caller's dialect): per
//! key `rpm_limit` / `tpm_limit`, per user new-api's
//! `ModelRequestRateLimit*` options (requests failed ones included,
//! successful requests, per-group overrides) and `ModelTokenRateLimitCount`.
//! A refused call reaches no upstream, costs nothing and leaves no row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{Relayed, assert_error, quota_sum};
use common::{Caller, TestServer, spawn};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::mock::Mock;

/// A server with one good channel for `gpt-4o` and one that always fails
/// (400, passed through) for `gpt-bad`.
async fn setup() -> (TestServer, Mock) {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    ts.mock_channel(&mock, "fail-400", "gpt-bad", 0).await;
    ts.option("ModelRatio", r#"{"gpt-4o": 1.25, "gpt-bad": 1}"#)
        .await;
    (ts, mock)
}

async fn call(ts: &TestServer, key: &str) -> Relayed {
    ts.chat(key, "gpt-4o", 5).await
}

/// Asserts an OpenAI-dialect rate-limit refusal naming `what`, with a
/// `Retry-After` within the window, and returns that value.
#[track_caller]
fn assert_limited(r: &Relayed, what: &str, window_secs: u64) -> u64 {
    assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains(what), "{msg:?} does not mention {what:?}");
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=window_secs).contains(&after), "Retry-After {after}");
    // A rate limit passes: SDKs may retry it (unlike an empty balance).
    assert!(r.headers.get("x-should-retry").is_none());
    after
}

#[tokio::test]
async fn key_rpm_limit_refuses_in_every_dialect_and_bills_nothing() {
    let (ts, mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "unlimited_quota": true, "rpm_limit": 3}),
        )
        .await;
    assert_eq!(ts.token_of(&u, tid).await["rpm_limit"], json!(3));
    for _ in 0..3 {
        assert_eq!(call(&ts, &key).await.status, 200);
    }
    assert_limited(&call(&ts, &key).await, "at most 3 requests per minute", 60);
    // Anthropic's shape.
    let r = ts
        .relay(
            &key,
            "/v1/messages",
            json!({"model": "gpt-4o", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["type"], json!("error"));
    assert_eq!(r.json()["error"]["type"], json!("rate_limit_error"));
    assert!(r.headers.contains_key("retry-after"));
    // Gemini's shape.
    let r = ts
        .relay(
            &key,
            "/v1beta/models/gpt-4o:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["error"]["code"], json!(429));
    assert_eq!(r.json()["error"]["status"], json!("RESOURCE_EXHAUSTED"));
    assert!(r.headers.contains_key("retry-after"));
    // Another key of the same user has its own (absent) limit.
    let (_, other) = ts
        .key(&u, json!({"name": "k2", "unlimited_quota": true}))
        .await;
    assert_eq!(call(&ts, &other).await.status, 200);
    // The refused calls reached no upstream and left no row.
    assert_eq!(mock.state.count("ok"), 4);
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 4);
    let t = ts.token_of(&u, tid).await;
    let mine: Vec<Value> = rows
        .into_iter()
        .filter(|r| r["token_id"] == json!(tid))
        .collect();
    assert_eq!(mine.len(), 3);
    assert_eq!(t["used_quota"].as_i64().unwrap(), quota_sum(&mine));
    ts.stop().await;
}

#[tokio::test]
async fn key_tpm_limit_counts_the_tokens_calls_used() {
    let (ts, mock) = setup().await;
    // Each call uses 10 prompt + 5 completion tokens (the mock's usage).
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "unlimited_quota": true, "tpm_limit": 20}),
        )
        .await;
    assert_eq!(call(&ts, &key).await.status, 200); // 15 used
    assert_eq!(call(&ts, &key).await.status, 200); // 15 < 20: admitted
    assert_limited(&call(&ts, &key).await, "at most 20 tokens per minute", 60);
    assert_eq!(mock.state.count("ok"), 2);
    ts.stop().await;
}

async fn set(ts: &TestServer, key: &str, value: &str) {
    ts.option(key, value).await;
}

#[tokio::test]
async fn user_request_limit_counts_failed_calls_across_keys() {
    let (ts, mock) = setup().await;
    set(&ts, "ModelRequestRateLimitEnabled", "true").await;
    set(&ts, "ModelRequestRateLimitCount", "3").await;
    let (u, _, k1) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "a", "unlimited_quota": true}),
        )
        .await;
    let (_, k2) = ts
        .key(&u, json!({"name": "b", "unlimited_quota": true}))
        .await;
    assert_eq!(call(&ts, &k1).await.status, 200);
    // A failed call counts too (new-api: "failures included").
    assert_eq!(ts.chat(&k2, "gpt-bad", 5).await.status, 400);
    assert_eq!(call(&ts, &k2).await.status, 200);
    let r = call(&ts, &k1).await;
    assert_limited(&r, "this user may use at most 3 requests", 60);
    // Another user is not held by alice's count.
    let (_, _, kb) = ts
        .funded(
            "bob",
            1_000_000,
            json!({"name": "b", "unlimited_quota": true}),
        )
        .await;
    assert_eq!(call(&ts, &kb).await.status, 200);
    assert_eq!(mock.state.count("ok"), 3);
    assert_eq!(mock.state.count("fail-400"), 1);
    // Turning the option off lifts the limit at once.
    set(&ts, "ModelRequestRateLimitEnabled", "false").await;
    assert_eq!(call(&ts, &k1).await.status, 200);
    ts.stop().await;
}

#[tokio::test]
async fn user_success_limit_counts_only_successes_and_its_window() {
    let (ts, mock) = setup().await;
    set(&ts, "ModelRequestRateLimitEnabled", "true").await;
    set(&ts, "ModelRequestRateLimitDurationMinutes", "5").await;
    set(&ts, "ModelRequestRateLimitSuccessCount", "2").await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "a", "unlimited_quota": true}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(ts.chat(&key, "gpt-bad", 5).await.status, 400);
    }
    assert_eq!(call(&ts, &key).await.status, 200);
    assert_eq!(call(&ts, &key).await.status, 200);
    let r = call(&ts, &key).await;
    assert_limited(&r, "at most 2 successful requests per 5 minutes", 300);
    assert_eq!(mock.state.count("fail-400"), 3);
    ts.stop().await;
}

#[tokio::test]
async fn group_overrides_and_user_token_limit() {
    let (ts, mock) = setup().await;
    set(&ts, "ModelRequestRateLimitEnabled", "true").await;
    set(&ts, "ModelRequestRateLimitCount", "100").await;
    set(&ts, "ModelRequestRateLimitGroup", r#"{"vip": [1, 0]}"#).await;
    // The vip channel.
    ts.channel(
        json!({"type": 1, "name": "vip", "key": "ok", "base_url": mock.url(),
        "models": "gpt-4o", "group": "vip"}),
    )
    .await;
    let (u, _, plain) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "a", "unlimited_quota": true}),
        )
        .await;
    let (_, vip) = ts
        .key(
            &u,
            json!({"name": "v", "unlimited_quota": true, "group": "vip"}),
        )
        .await;
    assert_eq!(call(&ts, &vip).await.status, 200);
    assert_limited(&call(&ts, &vip).await, "at most 1 requests", 60);
    assert_eq!(call(&ts, &plain).await.status, 200);
    // Tokens per user: 15 per call, at most 40 → three calls fit (the third
    // starts at 30 < 40), the fourth is refused (45 ≥ 40).
    set(&ts, "ModelTokenRateLimitCount", "40").await;
    let (_, _, kb) = ts
        .funded(
            "bob",
            1_000_000,
            json!({"name": "b", "unlimited_quota": true}),
        )
        .await;
    assert_eq!(call(&ts, &kb).await.status, 200);
    assert_eq!(call(&ts, &kb).await.status, 200);
    assert_eq!(call(&ts, &kb).await.status, 200);
    assert_limited(
        &call(&ts, &kb).await,
        "this user may use at most 40 tokens",
        60,
    );
    ts.stop().await;
}

#[tokio::test]
async fn bad_limits_are_refused_and_change_nothing() {
    let (ts, _mock) = setup().await;
    let alice: Caller = ts.fast_user("alice", 1).await;
    let t = ts.token(&alice, json!({"name": "k", "rpm_limit": 5})).await;
    let id = t["id"].as_i64().unwrap();
    for body in [
        json!({"id": id, "rpm_limit": -1}),
        json!({"id": id, "tpm_limit": 1_000_000_001i64}),
        json!({"id": id, "rpm_limit": "ten"}),
    ] {
        let r = ts.put(&alice, "/api/token/", body.clone()).await;
        assert!(!r.success(), "{body} was accepted: {}", r.body);
        assert_eq!(ts.token_of(&alice, id).await["rpm_limit"], json!(5));
        assert_eq!(ts.token_of(&alice, id).await["tpm_limit"], json!(0));
    }
    let r = ts
        .post(&alice, "/api/token/", json!({"name": "x", "tpm_limit": -5}))
        .await;
    r.refused("tpm_limit");
    // Options are validated whole, too.
    for (k, v) in [
        ("ModelRequestRateLimitGroup", r#"{"vip": [1]}"#),
        ("ModelRequestRateLimitGroup", r#"{"vip": [1, -2]}"#),
        ("ModelRequestRateLimitDurationMinutes", "0"),
        ("ModelRequestRateLimitCount", "many"),
        ("ModelTokenRateLimitCount", "-1"),
    ] {
        let r = ts
            .put(&ts.root(), "/api/option/", json!({"key": k, "value": v}))
            .await;
        r.refused(k);
    }
    let opts = ts.get(&ts.root(), "/api/option/").await;
    let find = |k: &str| {
        opts.ok()
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == json!(k))
            .map(|o| o["value"].clone())
    };
    assert_eq!(find("ModelRequestRateLimitGroup"), Some(json!("{}")));
    assert_eq!(
        find("ModelRequestRateLimitDurationMinutes"),
        Some(json!("1"))
    );
    ts.stop().await;
}
