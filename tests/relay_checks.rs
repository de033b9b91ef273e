//! The relay's key checks (SPEC §7): each check with its exact status and
//! OpenAI error type/code, the order they run in, and what they do to the
//! token (expired → status 3, exhausted → status 4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{Relayed, assert_error};
use common::{Caller, Db, TestServer, spawn_on, spawn_with};
use serde_json::{Value, json};
use sluice::mock::Mock;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A server with one good channel serving gpt-4o and gpt-4o-mini.
async fn setup() -> (TestServer, Mock) {
    setup_on(Db::Sqlite).await.unwrap()
}

/// [`setup`] on any database (`None`: not configured, skip).
async fn setup_on(db: Db) -> Option<(TestServer, Mock)> {
    let ts = spawn_on(db).await?;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o,gpt-4o-mini", 0).await;
    Some((ts, mock))
}

async fn call(ts: &TestServer, key: &str) -> Relayed {
    ts.chat(key, "gpt-4o", 5).await
}

async fn set_status(ts: &TestServer, owner: &Caller, tid: i64, status: i64) -> Value {
    ts.put(
        owner,
        "/api/token/?status_only=true",
        json!({"id": tid, "status": status}),
    )
    .await
    .body
}

#[tokio::test]
async fn bad_or_missing_key_is_401() {
    let (ts, mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    // No key at all.
    let r = ts
        .relay_send(
            ts.http
                .post(ts.url("/v1/chat/completions"))
                .json(&json!({"model": "gpt-4o", "messages": []})),
        )
        .await;
    assert_error(&r, 401, "invalid_request_error", "invalid_api_key");
    // A well-formed key that does not exist, with and without `sk-`.
    let fake = format!("sk-{}", "a".repeat(48));
    assert_error(
        &call(&ts, &fake).await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    assert_error(
        &call(&ts, &"b".repeat(48)).await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    // Garbage.
    assert_error(
        &call(&ts, "nonsense").await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    // /v1/models and the billing routes check the key too.
    let r = ts.relay_get(&fake, "/v1/models").await;
    assert_error(&r, 401, "invalid_request_error", "invalid_api_key");
    let r = ts
        .relay_get(&fake, "/v1/dashboard/billing/subscription")
        .await;
    assert_error(&r, 401, "invalid_request_error", "invalid_api_key");
    // The real key works, with or without the prefix; once deleted it is 401.
    assert_eq!(call(&ts, &key).await.status, 200);
    assert_eq!(call(&ts, key.trim_start_matches("sk-")).await.status, 200);
    ts.delete(&u, &format!("/api/token/{tid}")).await.ok();
    assert_error(
        &call(&ts, &key).await,
        401,
        "invalid_request_error",
        "invalid_api_key",
    );
    // Refused calls never reached the upstream.
    assert_eq!(mock.state.count("ok"), 2);
    ts.stop().await;
}

#[tokio::test]
async fn disabled_token_is_403() {
    let (ts, mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(call(&ts, &key).await.status, 200);
    set_status(&ts, &u, tid, 2).await;
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "token_disabled",
    );
    let r = ts.relay_get(&key, "/v1/models").await;
    assert_error(&r, 403, "permission_error", "token_disabled");
    set_status(&ts, &u, tid, 1).await;
    assert_eq!(call(&ts, &key).await.status, 200);
    assert_eq!(mock.state.count("ok"), 2);
    ts.stop().await;
}

#[tokio::test]
async fn expired_token_is_403_and_moves_to_status_3_sqlite() {
    expired_token_is_403_and_moves_to_status_3(Db::Sqlite).await;
}

#[tokio::test]
async fn expired_token_is_403_and_moves_to_status_3_postgres() {
    expired_token_is_403_and_moves_to_status_3(Db::Postgres).await;
}

#[tokio::test]
async fn expired_token_is_403_and_moves_to_status_3_mysql() {
    expired_token_is_403_and_moves_to_status_3(Db::Mysql).await;
}

async fn expired_token_is_403_and_moves_to_status_3(db: Db) {
    let Some((ts, mock)) = setup_on(db).await else {
        return;
    };
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000, "expired_time": now() + 3600}),
        )
        .await;
    assert_eq!(call(&ts, &key).await.status, 200);
    // The expiry passes (an admin moves it into the past).
    ts.put(
        &u,
        "/api/token/",
        json!({"id": tid, "expired_time": now() - 5}),
    )
    .await
    .ok();
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "token_expired",
    );
    ts.flush().await;
    assert_eq!(ts.token_of(&u, tid).await["status"], json!(3));
    // Still expired on the next call (now by status).
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "token_expired",
    );
    assert_eq!(mock.state.count("ok"), 1);
    ts.stop().await;
}

#[tokio::test]
async fn exhausted_token_is_429_and_moves_to_status_4_sqlite() {
    exhausted_token_is_429_and_moves_to_status_4(Db::Sqlite).await;
}

#[tokio::test]
async fn exhausted_token_is_429_and_moves_to_status_4_postgres() {
    exhausted_token_is_429_and_moves_to_status_4(Db::Postgres).await;
}

#[tokio::test]
async fn exhausted_token_is_429_and_moves_to_status_4_mysql() {
    exhausted_token_is_429_and_moves_to_status_4(Db::Mysql).await;
}

async fn exhausted_token_is_429_and_moves_to_status_4(db: Db) {
    let Some((ts, mock)) = setup_on(db).await else {
        return;
    };
    // A fixed price makes the reservation equal the charge: 0.001 USD = 500.
    ts.option("ModelPrice", r#"{"fixed-m": 0.001}"#).await;
    ts.mock_channel(&mock, "fixed", "fixed-m", 0).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 1000}),
        )
        .await;
    for _ in 0..2 {
        assert_eq!(ts.chat(&key, "fixed-m", 5).await.status, 200);
    }
    let r = ts.chat(&key, "fixed-m", 5).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["remain_quota"], json!(0));
    assert_eq!(t["used_quota"], json!(1000));
    assert_eq!(
        t["status"],
        json!(4),
        "an exhausted token moves to status 4"
    );
    assert_error(
        &call(&ts, &key).await,
        429,
        "insufficient_quota",
        "insufficient_quota",
    );
    assert_eq!(mock.state.count("fixed"), 2);

    // A key created with nothing left is refused the same way.
    let (_, key0) = ts
        .key(&u, json!({"name": "empty", "remain_quota": 0}))
        .await;
    assert_error(
        &call(&ts, &key0).await,
        429,
        "insufficient_quota",
        "insufficient_quota",
    );
    // A key whose balance cannot cover this call's worst case is refused
    // before anything is forwarded.
    let (_, small) = ts
        .key(&u, json!({"name": "small", "remain_quota": 50}))
        .await;
    let r = ts.chat(&small, "gpt-4o", 1000).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
    assert_eq!(mock.state.count("ok"), 0);
    ts.stop().await;
}

#[tokio::test]
async fn ip_not_allowed_is_403_and_forwarded_headers_are_ignored_without_trusted_proxies() {
    let (ts, mock) = setup().await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000, "allow_ips": "10.9.8.7"}),
        )
        .await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "ip_not_allowed",
    );
    for h in ["x-forwarded-for", "x-real-ip"] {
        let r = ts
            .relay_with(
                &key,
                "/v1/chat/completions",
                body.clone(),
                &[(h, "10.9.8.7")],
            )
            .await;
        assert_error(&r, 403, "permission_error", "ip_not_allowed");
    }
    // The socket peer (loopback) is what counts.
    let (_, k2) = ts
        .key(
            &u,
            json!({"name": "k2", "remain_quota": 100_000, "allow_ips": "10.0.0.0/8\n127.0.0.0/8"}),
        )
        .await;
    assert_eq!(call(&ts, &k2).await.status, 200);
    ts.flush().await;
    let rows = ts.consume_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["ip"], json!("127.0.0.1"));
    assert_eq!(mock.state.count("ok"), 1);
    ts.stop().await;
}

#[tokio::test]
async fn trusted_proxies_govern_forwarded_for_and_real_ip() {
    let ts = spawn_with(Db::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
    .unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000, "allow_ips": "10.9.8.7"}),
        )
        .await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let go = |h: &'static str, v: &'static str| {
        let ts = &ts;
        let body = body.clone();
        let key = key.clone();
        async move {
            ts.relay_with(&key, "/v1/chat/completions", body, &[(h, v)])
                .await
        }
    };
    // From the trusted proxy, the forwarded client address is believed.
    assert_eq!(go("x-forwarded-for", "10.9.8.7").await.status, 200);
    assert_eq!(go("x-real-ip", "10.9.8.7").await.status, 200);
    // The right-most untrusted hop is the client; anything left of it is
    // whatever the client claimed.
    let r = go("x-forwarded-for", "10.9.8.7, 6.6.6.6").await;
    assert_error(&r, 403, "permission_error", "ip_not_allowed");
    assert!(r.text.contains("6.6.6.6"), "{}", r.text);
    assert_eq!(go("x-forwarded-for", "6.6.6.6, 10.9.8.7").await.status, 200);
    // Without a header the proxy itself is the client.
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "ip_not_allowed",
    );
    ts.flush().await;
    let rows = ts.consume_rows().await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r["ip"] == json!("10.9.8.7")),
        "{rows:?}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn model_not_allowed_is_403() {
    let (ts, mock) = setup().await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000,
                   "model_limits_enabled": true, "model_limits": "gpt-4o-mini"}),
        )
        .await;
    let r = call(&ts, &key).await;
    assert_error(&r, 403, "permission_error", "model_not_allowed");
    assert!(r.text.contains("gpt-4o"), "{}", r.text);
    assert_eq!(ts.chat(&key, "gpt-4o-mini", 5).await.status, 200);
    // The JSON-array form of the list behaves the same.
    let (_, k2) = ts
        .key(
            &u,
            json!({"name": "k2", "remain_quota": 100_000,
                   "model_limits_enabled": true, "model_limits": "[\"gpt-4o\"]"}),
        )
        .await;
    assert_eq!(call(&ts, &k2).await.status, 200);
    let r = ts.chat(&k2, "gpt-4o-mini", 5).await;
    assert_error(&r, 403, "permission_error", "model_not_allowed");
    // A list that is not enabled limits nothing.
    let (_, k3) = ts
        .key(
            &u,
            json!({"name": "k3", "remain_quota": 100_000,
                   "model_limits_enabled": false, "model_limits": "gpt-4o-mini"}),
        )
        .await;
    assert_eq!(call(&ts, &k3).await.status, 200);
    assert_eq!(mock.state.count("ok"), 3);
    ts.stop().await;
}

#[tokio::test]
async fn disabled_user_is_403_and_user_without_quota_is_429() {
    let (ts, mock) = setup().await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(call(&ts, &key).await.status, 200);
    ts.post(
        &ts.root(),
        "/api/user/manage",
        json!({"id": u.id, "action": "disable"}),
    )
    .await
    .ok();
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "user_disabled",
    );
    ts.post(
        &ts.root(),
        "/api/user/manage",
        json!({"id": u.id, "action": "enable"}),
    )
    .await
    .ok();
    assert_eq!(call(&ts, &key).await.status, 200);
    // The token has quota, its user has none.
    ts.give_quota(&u, 0).await;
    let r = call(&ts, &key).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_user_quota");
    // The user can cover only part of this call's worst case.
    ts.give_quota(&u, 100).await;
    let r = ts.chat(&key, "gpt-4o", 1000).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_user_quota");
    assert_eq!(mock.state.count("ok"), 2);
    ts.stop().await;
}

#[tokio::test]
async fn no_channel_is_503() {
    let (ts, mock) = setup().await;
    ts.option(
        "ModelRatio",
        r#"{"gpt-4o": 1.25, "vip-only": 1, "off-model": 1}"#,
    )
    .await;
    let vip = ts
        .channel(
            json!({"type": 1, "name": "vip", "key": "ok", "base_url": mock.url(),
                        "models": "vip-only", "group": "vip"}),
        )
        .await;
    let off = ts
        .channel(
            json!({"type": 1, "name": "off", "key": "ok", "base_url": mock.url(),
                        "models": "off-model", "group": "default", "status": 2}),
        )
        .await;
    assert!(vip > 0 && off > 0);
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    for model in ["no-such-model", "vip-only", "off-model"] {
        let r = ts.chat(&key, model, 5).await;
        assert_error(&r, 503, "service_unavailable_error", "no_available_channel");
        assert!(r.text.contains(model), "{}", r.text);
    }
    assert_eq!(mock.state.count("ok"), 0);
    ts.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_502_and_timeouts_504() {
    let ts = spawn_with(Db::Sqlite, |c| c.upstream_first_byte_timeout_ms = 300)
        .await
        .unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "fail-500", "m-500", 0).await;
    ts.mock_channel(&mock, "fail-503", "m-503", 0).await;
    ts.mock_channel(&mock, "garbage", "m-garbage", 0).await;
    ts.mock_channel(&mock, "hang", "m-hang", 0).await;
    ts.option(
        "ModelRatio",
        r#"{"m-500": 1, "m-503": 1, "m-garbage": 1, "m-hang": 1}"#,
    )
    .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_error(
        &ts.chat(&key, "m-500", 5).await,
        502,
        "upstream_error",
        "bad_response_status_code",
    );
    assert_error(
        &ts.chat(&key, "m-503", 5).await,
        502,
        "upstream_error",
        "bad_response_status_code",
    );
    assert_error(
        &ts.chat(&key, "m-garbage", 5).await,
        502,
        "upstream_error",
        "bad_response_body",
    );
    assert_error(
        &ts.chat(&key, "m-hang", 5).await,
        504,
        "upstream_error",
        "upstream_timeout",
    );
    // Failed calls cost nothing and leave error rows.
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(0));
    assert_eq!(t["remain_quota"], json!(100_000));
    let errors = ts.all_logs(&u, "/api/log/self?type=5").await;
    assert_eq!(errors.len(), 4);
    assert_eq!(common::relay::quota_sum(&errors), 0);
    assert!(ts.all_logs(&u, "/api/log/self?type=2").await.is_empty());
    ts.stop().await;
}

/// Two failing checks at once: the one earlier in SPEC §7's order answers.
#[tokio::test]
async fn checks_run_in_spec_order() {
    let (ts, mock) = setup().await;
    let (u, _, _) = ts.funded("alice", 1_000_000, json!({"name": "base"})).await;
    let mk = |body: Value| {
        let ts = &ts;
        let u = u.clone();
        async move { ts.key(&u, body).await }
    };
    // disabled + expired + exhausted + IP + model: disabled first.
    let (tid, k) = mk(
        json!({"name": "a", "remain_quota": 0, "expired_time": now() + 3600,
        "allow_ips": "10.0.0.1", "model_limits_enabled": true, "model_limits": "x"}),
    )
    .await;
    set_status(&ts, &u, tid, 2).await;
    ts.put(
        &u,
        "/api/token/",
        json!({"id": tid, "expired_time": now() - 5}),
    )
    .await
    .ok();
    assert_error(
        &call(&ts, &k).await,
        403,
        "permission_error",
        "token_disabled",
    );
    // expired + exhausted + IP + model: expired.
    let (tid, k) = mk(
        json!({"name": "b", "remain_quota": 0, "expired_time": now() + 3600,
        "allow_ips": "10.0.0.1", "model_limits_enabled": true, "model_limits": "x"}),
    )
    .await;
    ts.put(
        &u,
        "/api/token/",
        json!({"id": tid, "expired_time": now() - 5}),
    )
    .await
    .ok();
    assert_error(
        &call(&ts, &k).await,
        403,
        "permission_error",
        "token_expired",
    );
    // exhausted + IP + model: quota.
    let (_, k) = mk(json!({"name": "c", "remain_quota": 0,
        "allow_ips": "10.0.0.1", "model_limits_enabled": true, "model_limits": "x"}))
    .await;
    assert_error(
        &call(&ts, &k).await,
        429,
        "insufficient_quota",
        "insufficient_quota",
    );
    // IP + model: IP.
    let (_, k) = mk(json!({"name": "d", "remain_quota": 1000,
        "allow_ips": "10.0.0.1", "model_limits_enabled": true, "model_limits": "x"}))
    .await;
    assert_error(
        &call(&ts, &k).await,
        403,
        "permission_error",
        "ip_not_allowed",
    );
    // model + user disabled + no channel: model.
    let (_, k_model) = mk(json!({"name": "e", "remain_quota": 1000,
        "model_limits_enabled": true, "model_limits": "x"}))
    .await;
    let (_, k_plain) = mk(json!({"name": "f", "remain_quota": 100_000})).await;
    ts.post(
        &ts.root(),
        "/api/user/manage",
        json!({"id": u.id, "action": "disable"}),
    )
    .await
    .ok();
    assert_error(
        &call(&ts, &k_model).await,
        403,
        "permission_error",
        "model_not_allowed",
    );
    // user disabled + no channel: user.
    let r = ts.chat(&k_plain, "no-such-model", 5).await;
    assert_error(&r, 403, "permission_error", "user_disabled");
    ts.post(
        &ts.root(),
        "/api/user/manage",
        json!({"id": u.id, "action": "enable"}),
    )
    .await
    .ok();
    // user without quota + no channel: user quota.
    ts.give_quota(&u, 0).await;
    let r = ts.chat(&k_plain, "no-such-model", 5).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_user_quota");
    ts.give_quota(&u, 1_000_000).await;
    // Only the channel is missing.
    let r = ts.chat(&k_plain, "no-such-model", 5).await;
    assert_error(&r, 503, "service_unavailable_error", "no_available_channel");
    assert_eq!(mock.state.count("ok"), 0);
    ts.stop().await;
}

/// A token the system marked exhausted (status 4) whose expiry has also
/// passed: "not expired" comes before "quota left" in SPEC §7.
#[tokio::test]
async fn expiry_is_checked_before_an_exhausted_status() {
    let (ts, mock) = setup().await;
    ts.option("ModelPrice", r#"{"fixed-m": 0.001}"#).await;
    ts.mock_channel(&mock, "fixed", "fixed-m", 0).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 500, "expired_time": now() + 3600}),
        )
        .await;
    assert_eq!(ts.chat(&key, "fixed-m", 5).await.status, 200);
    ts.flush().await;
    assert_eq!(ts.token_of(&u, tid).await["status"], json!(4));
    ts.put(
        &u,
        "/api/token/",
        json!({"id": tid, "expired_time": now() - 5}),
    )
    .await
    .ok();
    assert_error(
        &call(&ts, &key).await,
        403,
        "permission_error",
        "token_expired",
    );
    ts.stop().await;
}

/// A body must be a JSON object: an array is not read by position (serde
/// would otherwise take `["gpt-4o"]` as `{"model": "gpt-4o"}`).
#[tokio::test]
async fn array_bodies_are_refused_at_every_door() {
    let (ts, mock) = setup().await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "unlimited_quota": true}),
        )
        .await;
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
        "/v1beta/models/gpt-4o:generateContent",
    ] {
        let r = ts.relay(&key, path, json!(["gpt-4o", false, 5])).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(
            r.text.contains("expected a JSON object"),
            "{path}: {}",
            r.text
        );
    }
    assert_eq!(mock.state.count("ok"), 0);
    ts.stop().await;
}
