//! The OpenAI endpoints (SPEC §7): completions, embeddings, /v1/models (only
//! what the key may use) and the legacy billing dashboard routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{assert_error, other};
use common::spawn;
use serde_json::{Value, json};
use sluice::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn completions_and_embeddings_are_relayed_and_billed() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(
        &mock,
        "ok",
        "gpt-3.5-turbo-instruct,text-embedding-3-large",
        0,
    )
    .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts
        .relay(
            &key,
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "max_tokens": 16}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], json!("text_completion"));
    assert_eq!(
        v["choices"][0]["text"],
        json!("word0 word1 word2 word3 word4 ")
    );
    assert_eq!(mock.state.last().unwrap().path, "/v1/completions");
    let r = ts
        .relay(
            &key,
            "/v1/embeddings",
            json!({"model": "text-embedding-3-large", "input": ["a", "b", "c"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["prompt_tokens"], json!(PROMPT_TOKENS));
    assert_eq!(mock.state.last().unwrap().path, "/v1/embeddings");
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 2);
    // Embeddings: (10 + 0) × 0.065 = 0.65 → 1; no output is reserved or billed.
    assert_eq!(rows[0]["model_name"], json!("text-embedding-3-large"));
    assert_eq!(rows[0]["quota"], json!(1));
    assert_eq!(rows[0]["completion_tokens"], json!(0));
    // Instruct: (10 + 16 × 1.33) × 0.75 = 23.46 → 24.
    assert_eq!(rows[1]["quota"], json!(24));
    assert_eq!(rows[1]["completion_tokens"], json!(16));
    assert_eq!(other(&rows[1])["request_path"], json!("/v1/completions"));
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(25));
    ts.stop().await;
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.channel(
        json!({"type": 1, "name": "a", "key": "ok", "base_url": mock.url(),
        "models": "gpt-4o,gpt-4o-mini", "group": "default"}),
    )
    .await;
    ts.channel(
        json!({"type": 1, "name": "b", "key": "ok", "base_url": mock.url(),
        "models": "o3,gpt-4o", "group": "vip"}),
    )
    .await;
    ts.channel(
        json!({"type": 1, "name": "off", "key": "ok", "base_url": mock.url(),
        "models": "o1", "group": "default", "status": 2}),
    )
    .await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 1000}),
        )
        .await;
    let r = ts.relay_get(&key, "/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], json!("list"));
    assert_eq!(v["data"][0]["object"], json!("model"));
    assert_eq!(ids(&v), vec!["gpt-4o", "gpt-4o-mini"]);
    let (_, vip) = ts
        .key(
            &u,
            json!({"name": "v", "remain_quota": 1000, "group": "vip"}),
        )
        .await;
    assert_eq!(
        ids(&ts.relay_get(&vip, "/v1/models").await.json()),
        vec!["gpt-4o", "o3"]
    );
    let (_, limited) = ts
        .key(
            &u,
            json!({"name": "l", "remain_quota": 1000, "model_limits_enabled": true,
                   "model_limits": "[\"gpt-4o-mini\",\"o3\"]"}),
        )
        .await;
    assert_eq!(
        ids(&ts.relay_get(&limited, "/v1/models").await.json()),
        vec!["gpt-4o-mini"]
    );
    // Retrieve one (OpenAI's `models.retrieve`): only what the key may use.
    let r = ts.relay_get(&limited, "/v1/models/gpt-4o-mini").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["id"], json!("gpt-4o-mini"));
    assert_eq!(r.json()["object"], json!("model"));
    for (k, m) in [
        (&limited, "gpt-4o"),
        (&key, "o3"),
        (&key, "o1"),
        (&key, "nope"),
    ] {
        let r = ts.relay_get(k, &format!("/v1/models/{m}")).await;
        assert_error(&r, 404, "invalid_request_error", "model_not_found");
    }
    let r = ts.relay_get("sk-nobody", "/v1/models/gpt-4o").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        mock.state.hits.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    ts.stop().await;
}

#[tokio::test]
async fn billing_dashboard_answers_for_the_key() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 250_000, "expired_time": 4_102_444_800i64}),
        )
        .await;
    let sub = ts
        .relay_get(&key, "/v1/dashboard/billing/subscription")
        .await;
    assert_eq!(sub.status, 200, "{}", sub.text);
    let s = sub.json();
    assert_eq!(s["object"], json!("billing_subscription"));
    assert_eq!(s["hard_limit_usd"].as_f64(), Some(0.5));
    assert_eq!(s["soft_limit_usd"].as_f64(), Some(0.5));
    assert_eq!(s["access_until"], json!(4_102_444_800i64));
    let usage = ts.relay_get(&key, "/v1/dashboard/billing/usage").await;
    assert_eq!(usage.json()["total_usage"].as_f64(), Some(0.0));
    for _ in 0..4 {
        assert_eq!(ts.chat(&key, "gpt-4o", COMPLETION_TOKENS).await.status, 200);
    }
    ts.flush().await;
    // 4 × 113 = 452 quota = 0.000904 USD = 0.0904 cents.
    let usage = ts.relay_get(&key, "/v1/dashboard/billing/usage").await;
    let cents = usage.json()["total_usage"].as_f64().unwrap();
    assert!((cents - 452.0 / 500_000.0 * 100.0).abs() < 1e-9, "{cents}");
    // Also without the /v1 prefix; an unlimited key shows a large grant.
    let (_, unl) = ts
        .key(&u, json!({"name": "u", "unlimited_quota": true}))
        .await;
    let s = ts
        .relay_get(&unl, "/dashboard/billing/subscription")
        .await
        .json();
    assert!(s["hard_limit_usd"].as_f64().unwrap() >= 1_000_000.0, "{s}");
    let r = ts.relay_get("sk-nope", "/v1/dashboard/billing/usage").await;
    assert_error(&r, 401, "invalid_request_error", "invalid_api_key");
    ts.stop().await;
}

/// new-api's subscription grant is the key's `remain_quota + used_quota`:
/// spending moves quota from one to the other, the grant stays.
#[tokio::test]
async fn billing_subscription_grant_does_not_shrink_as_the_key_spends() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 250_000}),
        )
        .await;
    assert_eq!(grant(&ts, &key).await, 0.5);
    for _ in 0..4 {
        assert_eq!(ts.chat(&key, "gpt-4o", COMPLETION_TOKENS).await.status, 200);
    }
    ts.flush().await;
    assert_eq!(grant(&ts, &key).await, 0.5);
    ts.stop().await;
}

async fn grant(ts: &common::TestServer, key: &str) -> f64 {
    ts.relay_get(key, "/v1/dashboard/billing/subscription")
        .await
        .json()["hard_limit_usd"]
        .as_f64()
        .unwrap()
}

/// Request ids are sluice's own: a client's `x-request-id` is not adopted
/// (it would let clients choose or repeat ledger ids).
#[tokio::test]
async fn request_ids_are_never_taken_from_the_client() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = ts
            .relay_with(
                &key,
                "/v1/chat/completions",
                body.clone(),
                &[("x-request-id", "forged-id")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, "forged-id");
        seen.push(id);
    }
    assert_ne!(seen[0], seen[1]);
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    let mut logged: Vec<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    logged.sort();
    seen.sort();
    assert_eq!(logged, seen);
    ts.stop().await;
}
