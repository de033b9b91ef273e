//! Routing (SPEC §5): priority tiers, weighted draw, model mapping, failover
//! on retryable failures up to RetryTimes (billed once, logged against the
//! channel that served), auto-disable and re-enable by a test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{assert_error, eventually, other};
use common::{Db, TestServer, spawn, spawn_with};
use serde_json::json;
use sluice::mock::Mock;

async fn setup() -> (TestServer, Mock) {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    (ts, mock)
}

async fn chan(
    ts: &TestServer,
    mock: &Mock,
    key: &str,
    model: &str,
    priority: i64,
    weight: i64,
) -> i64 {
    ts.channel(
        json!({"type": 1, "name": format!("ch-{key}"), "key": key, "base_url": mock.url(),
        "models": model, "group": "default", "priority": priority, "weight": weight}),
    )
    .await
}

#[tokio::test]
async fn the_highest_priority_tier_serves_first() {
    let (ts, mock) = setup().await;
    chan(&ts, &mock, "low", "gpt-4o", 0, 100).await;
    chan(&ts, &mock, "high", "gpt-4o", 10, 1).await;
    chan(&ts, &mock, "mid", "gpt-4o", 5, 100).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            10_000_000,
            json!({"name": "k", "unlimited_quota": true}),
        )
        .await;
    for _ in 0..20 {
        assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 200);
    }
    assert_eq!(mock.state.count("high"), 20);
    assert_eq!(mock.state.count("mid") + mock.state.count("low"), 0);
    ts.stop().await;
}

#[tokio::test]
async fn weights_shape_the_draw_inside_a_tier() {
    let (ts, mock) = setup().await;
    chan(&ts, &mock, "w1", "gpt-4o", 3, 1).await;
    chan(&ts, &mock, "w3", "gpt-4o", 3, 3).await;
    chan(&ts, &mock, "lower", "gpt-4o", 0, 1000).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            10_000_000,
            json!({"name": "k", "unlimited_quota": true}),
        )
        .await;
    let n = 200;
    for _ in 0..n {
        assert_eq!(ts.chat(&key, "gpt-4o", 1).await.status, 200);
    }
    let w3 = mock.state.count("w3");
    assert_eq!(mock.state.count("w1") + w3, n);
    assert_eq!(mock.state.count("lower"), 0);
    // Expected 150 (σ ≈ 6.1); the bounds are > 6σ away.
    assert!((110..=190).contains(&w3), "w3 served {w3} of {n}");
    ts.stop().await;
}

#[tokio::test]
async fn model_mapping_renames_upstream_and_bills_the_requested_model() {
    let (ts, mock) = setup().await;
    let id = ts
        .channel(
            json!({"type": 1, "name": "mapped", "key": "ok", "base_url": mock.url(),
            "models": "gpt-4o,gpt-4o-mini", "group": "default",
            "model_mapping": "{\"gpt-4o\": \"upstream-4o\"}"}),
        )
        .await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        mock.state.last().unwrap().body["model"],
        json!("upstream-4o")
    );
    // Streams too.
    let r = ts
        .relay(
            &key,
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true,
            "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        mock.state.last().unwrap().body["model"],
        json!("upstream-4o")
    );
    // An unmapped model goes as asked.
    assert_eq!(ts.chat(&key, "gpt-4o-mini", 20).await.status, 200);
    assert_eq!(
        mock.state.last().unwrap().body["model"],
        json!("gpt-4o-mini")
    );
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 3);
    for r in &rows[1..] {
        assert_eq!(r["model_name"], json!("gpt-4o"));
        assert_eq!(other(r)["upstream_model"], json!("upstream-4o"));
        // Billed as gpt-4o (1.25, ×4): (10 + 80) × 1.25 = 112.5 → 113.
        assert_eq!(r["quota"], json!(113));
        assert_eq!(r["channel_id"], json!(id));
    }
    assert_eq!(other(&rows[0])["upstream_model"], json!("gpt-4o-mini"));
    ts.stop().await;
}

/// A failing channel, then a good one: the call succeeds, is billed once,
/// and the log names the channel that served it.
#[tokio::test]
async fn failover_to_the_next_channel_bills_once_and_logs_the_server() {
    let (ts, mock) = setup().await;
    ts.option("RetryTimes", "2").await;
    let bad = chan(&ts, &mock, "fail-500", "gpt-4o", 10, 1).await;
    let good = chan(&ts, &mock, "ok", "gpt-4o", 0, 1).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(mock.state.count("fail-500"), 1);
    assert_eq!(mock.state.count("ok"), 1);
    ts.flush().await;
    assert!(
        ts.all_logs(&u, "/api/log/self?type=5").await.is_empty(),
        "the failed attempt leaves no error row"
    );
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1, "one row for the call: {rows:?}");
    assert_eq!(rows[0]["type"], json!(2));
    assert_eq!(rows[0]["channel_id"], json!(good));
    assert_eq!(rows[0]["channel"], json!(good));
    assert_eq!(rows[0]["quota"], json!(113));
    let o = other(&rows[0]);
    assert_eq!(o["tried_channels"], json!([bad, good]));
    assert_eq!(o["channel_name"], json!("ch-ok"));
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(113));
    assert_eq!(ts.channel_of(good).await["used_quota"], json!(113));
    assert_eq!(ts.channel_of(bad).await["used_quota"], json!(0));
    assert_eq!(ts.channel_of(bad).await["status"], json!(1));
    ts.stop().await;
}

#[tokio::test]
async fn failover_on_429_connect_error_and_timeout() {
    let ts = spawn_with(Db::Sqlite, |c| c.upstream_first_byte_timeout_ms = 300)
        .await
        .unwrap();
    let mock = common::relay::mock().await;
    ts.option("RetryTimes", "1").await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut bad = Vec::new();
    for (model, key, base) in [
        ("m-429", "fail-429", mock.url()),
        ("m-conn", "whatever", dead),
        ("m-hang", "hang", mock.url()),
        ("m-503", "fail-503", mock.url()),
    ] {
        bad.push(
            ts.channel(json!({"type": 1, "name": key, "key": key, "base_url": base,
                "models": model, "group": "default", "priority": 10}))
                .await,
        );
    }
    let good = ts
        .channel(
            json!({"type": 1, "name": "good", "key": "ok", "base_url": mock.url(),
            "models": "m-429,m-conn,m-hang,m-503", "group": "default", "priority": 0}),
        )
        .await;
    ts.option(
        "ModelRatio",
        r#"{"m-429": 1, "m-conn": 1, "m-hang": 1, "m-503": 1}"#,
    )
    .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    for m in ["m-429", "m-conn", "m-hang", "m-503"] {
        let r = ts.chat(&key, m, 20).await;
        assert_eq!(r.status, 200, "{m}: {}", r.text);
    }
    assert_eq!(mock.state.count("ok"), 4);
    ts.flush().await;
    assert!(ts.all_logs(&u, "/api/log/self?type=5").await.is_empty());
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 4);
    for (r, b) in rows.iter().rev().zip(&bad) {
        assert_eq!(r["type"], json!(2));
        assert_eq!(r["channel_id"], json!(good));
        assert_eq!(other(r)["tried_channels"], json!([b, good]));
        assert_eq!(r["quota"], json!(30));
    }
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(120));
    ts.stop().await;
}

#[tokio::test]
async fn retries_stop_at_retry_times_and_cost_nothing() {
    let (ts, mock) = setup().await;
    for k in ["fail-500", "fail-502", "fail-503", "fail-504"] {
        chan(&ts, &mock, k, "gpt-4o", 0, 1).await;
    }
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let total = |m: &Mock| {
        ["fail-500", "fail-502", "fail-503", "fail-504"]
            .iter()
            .map(|k| m.state.count(k))
            .sum::<usize>()
    };
    // RetryTimes 0 (the default): one attempt.
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert!(r.status == 502 || r.status == 504, "{}", r.text);
    assert_eq!(total(&mock), 1);
    // RetryTimes 2: three attempts, on three different channels.
    ts.option("RetryTimes", "2").await;
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert!(r.status == 502 || r.status == 504, "{}", r.text);
    assert_eq!(total(&mock), 4);
    // RetryTimes 10 with four channels: each tried once, then it stops.
    ts.option("RetryTimes", "10").await;
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert!(r.status == 502 || r.status == 504, "{}", r.text);
    assert_eq!(total(&mock), 8);
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(0));
    assert_eq!(t["remain_quota"], json!(100_000));
    assert!(ts.all_logs(&u, "/api/log/self?type=2").await.is_empty());
    let rows = ts.all_logs(&u, "/api/log/self?type=5").await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["quota"] == json!(0)));
    assert_eq!(
        other(&rows[0])["tried_channels"].as_array().unwrap().len(),
        4
    );
    ts.stop().await;
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let (ts, mock) = setup().await;
    ts.option("RetryTimes", "3").await;
    chan(&ts, &mock, "fail-400", "gpt-4o", 10, 1).await;
    chan(&ts, &mock, "ok", "gpt-4o", 0, 1).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(mock.state.count("ok"), 0);
    ts.stop().await;
}

/// Waits until `n` channels were auto-disabled. Disabling runs in the
/// background: status, then routing, then the system (type 4) ledger row;
/// once the row is there the routing snapshot has dropped the channel.
async fn wait_auto_disabled(ts: &TestServer, n: usize) {
    eventually("auto-disable", || async {
        ts.flush().await;
        ts.logs_total(&ts.root(), "/api/log/?type=4").await >= n as i64
    })
    .await;
}

async fn status_of(ts: &TestServer, id: i64) -> i64 {
    ts.channel_of(id).await["status"].as_i64().unwrap()
}

#[tokio::test]
async fn refused_keys_auto_disable_channels_when_enabled() {
    let (ts, mock) = setup().await;
    ts.option("RetryTimes", "1").await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    // Off (the default): a refused key leaves the channel alone.
    let c401 = chan(&ts, &mock, "fail-401", "m-a", 0, 1).await;
    ts.option("ModelRatio", r#"{"m-a": 1, "m-b": 1, "m-c": 1, "m-d": 1}"#)
        .await;
    let r = ts.chat(&key, "m-a", 5).await;
    assert_eq!(r.status, 502, "{}", r.text);
    ts.flush().await;
    assert_eq!(status_of(&ts, c401).await, 1);
    // On: 401, 403 and "insufficient quota" disable; a 500 does not.
    ts.option("AutomaticDisableChannelEnabled", "true").await;
    let c403 = chan(&ts, &mock, "fail-403", "m-b", 0, 1).await;
    let cq = chan(&ts, &mock, "insufficient-quota", "m-c", 0, 1).await;
    let c500 = chan(&ts, &mock, "fail-500", "m-d", 0, 1).await;
    for m in ["m-a", "m-b", "m-c", "m-d"] {
        let r = ts.chat(&key, m, 5).await;
        assert!(
            r.status.is_server_error() || r.status == 429,
            "{m}: {}",
            r.text
        );
    }
    wait_auto_disabled(&ts, 3).await;
    for id in [c401, c403, cq] {
        assert_eq!(status_of(&ts, id).await, 3);
    }
    assert_eq!(status_of(&ts, c500).await, 1);
    // A disabled channel is no longer routed to.
    let seen = mock.state.count("fail-401");
    let r = ts.chat(&key, "m-a", 5).await;
    assert_error(&r, 503, "service_unavailable_error", "no_available_channel");
    assert_eq!(mock.state.count("fail-401"), seen);
    // The disabling is written to the ledger as a system row.
    ts.flush().await;
    let sys = ts.all_logs(&ts.root(), "/api/log/?type=4").await;
    assert_eq!(sys.len(), 3, "{sys:?}");
    assert!(sys.iter().any(|r| {
        r["channel"] == json!(cq)
            && r["content"]
                .as_str()
                .unwrap()
                .contains("insufficient quota")
    }));
    ts.stop().await;
}

#[tokio::test]
async fn auto_disable_falls_over_to_a_healthy_channel() {
    let (ts, mock) = setup().await;
    ts.option("RetryTimes", "1").await;
    ts.option("AutomaticDisableChannelEnabled", "true").await;
    let bad = chan(&ts, &mock, "fail-401", "gpt-4o", 10, 1).await;
    let good = chan(&ts, &mock, "ok", "gpt-4o", 0, 1).await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(ts.chat(&key, "gpt-4o", 20).await.status, 200);
    wait_auto_disabled(&ts, 1).await;
    assert_eq!(status_of(&ts, bad).await, 3);
    assert_eq!(ts.chat(&key, "gpt-4o", 20).await.status, 200);
    assert_eq!(mock.state.count("fail-401"), 1);
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert!(rows.iter().all(|r| r["channel_id"] == json!(good)));
    ts.stop().await;
}

#[tokio::test]
async fn a_passing_test_re_enables_an_auto_disabled_channel_when_enabled() {
    let (ts, mock) = setup().await;
    ts.option("AutomaticDisableChannelEnabled", "true").await;
    let id = chan(&ts, &mock, "fail-401", "gpt-4o", 0, 1).await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 502);
    wait_auto_disabled(&ts, 1).await;
    assert_eq!(status_of(&ts, id).await, 3);
    // A failing test leaves it disabled.
    let t = ts.get(&ts.root(), &format!("/api/channel/test/{id}")).await;
    assert_eq!(t.body["success"], json!(false), "{}", t.body);
    assert_eq!(status_of(&ts, id).await, 3);
    // The key is fixed; with AutomaticEnableChannelEnabled off a passing
    // test does not re-enable.
    ts.put(&ts.root(), "/api/channel/", json!({"id": id, "key": "ok"}))
        .await
        .ok();
    let t = ts.get(&ts.root(), &format!("/api/channel/test/{id}")).await;
    assert_eq!(t.body["success"], json!(true), "{}", t.body);
    assert_eq!(status_of(&ts, id).await, 3);
    assert_error(
        &ts.chat(&key, "gpt-4o", 5).await,
        503,
        "service_unavailable_error",
        "no_available_channel",
    );
    // On: the passing test re-enables and routing uses it again.
    ts.option("AutomaticEnableChannelEnabled", "true").await;
    let t = ts.get(&ts.root(), &format!("/api/channel/test/{id}")).await;
    assert_eq!(t.body["success"], json!(true), "{}", t.body);
    assert_eq!(status_of(&ts, id).await, 1);
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 200);
    // A manually disabled channel is not re-enabled by a test.
    ts.put(&ts.root(), "/api/channel/", json!({"id": id, "status": 2}))
        .await
        .ok();
    let t = ts.get(&ts.root(), &format!("/api/channel/test/{id}")).await;
    assert_eq!(t.body["success"], json!(true), "{}", t.body);
    assert_eq!(status_of(&ts, id).await, 2);
    ts.stop().await;
}

#[tokio::test]
async fn a_channel_with_several_keys_uses_them_all() {
    let (ts, mock) = setup().await;
    let id = ts
        .channel(
            json!({"type": 1, "name": "multi", "key": "key-one\nkey-two\n\nkey-three",
            "base_url": mock.url(), "models": "gpt-4o", "group": "default"}),
        )
        .await;
    let (_, _, key) = ts
        .funded(
            "alice",
            10_000_000,
            json!({"name": "k", "unlimited_quota": true}),
        )
        .await;
    for _ in 0..60 {
        assert_eq!(ts.chat(&key, "gpt-4o", 1).await.status, 200);
    }
    let counts: Vec<usize> = ["key-one", "key-two", "key-three"]
        .iter()
        .map(|k| mock.state.count(k))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 60);
    // Uniform: each expected 20 (σ ≈ 3.7; the bounds are > 4.5σ away).
    assert!(counts.iter().all(|c| (3..=40).contains(c)), "{counts:?}");
    ts.flush().await;
    assert_eq!(ts.channel_of(id).await["request_count"], json!(60));
    ts.stop().await;
}

/// `sk-<key>-<channel id>` (SPEC §5): an admin's key may pin a channel, which
/// then serves even a model it does not list; a disabled or unknown channel
/// is refused; a plain user's pin is refused.
#[tokio::test]
async fn an_admin_key_pins_a_channel_a_user_key_cannot() {
    let (ts, mock) = setup().await;
    chan(&ts, &mock, "first", "gpt-4o", 10, 1).await;
    let second = chan(&ts, &mock, "second", "gpt-4o-mini", 0, 1).await;
    let admin = ts.fast_user("boss", 10).await;
    ts.give_quota(&admin, 10_000_000).await;
    let (_, key) = ts
        .key(&admin, json!({"name": "k", "unlimited_quota": true}))
        .await;
    let pinned = format!("{key}-{second}");
    for _ in 0..5 {
        let r = ts.chat(&pinned, "gpt-4o", 5).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(mock.state.count("second"), 5);
    assert_eq!(mock.state.count("first"), 0);
    ts.flush().await;
    let rows = ts.all_logs(&admin, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["channel_id"] == json!(second)));

    assert_error(
        &ts.chat(&format!("{key}-99999"), "gpt-4o", 5).await,
        503,
        "service_unavailable_error",
        "no_available_channel",
    );
    ts.put(
        &ts.root(),
        "/api/channel/",
        json!({"id": second, "status": 2}),
    )
    .await
    .ok();
    assert_error(
        &ts.chat(&pinned, "gpt-4o", 5).await,
        403,
        "permission_error",
        "channel_disabled",
    );
    assert_eq!(
        mock.state.count("second"),
        5,
        "a disabled channel is not called"
    );

    let (_, _, user_key) = ts
        .funded(
            "alice",
            10_000_000,
            json!({"name": "k", "unlimited_quota": true}),
        )
        .await;
    assert_error(
        &ts.chat(&format!("{user_key}-{second}"), "gpt-4o", 5).await,
        403,
        "permission_error",
        "channel_pin_forbidden",
    );
    // Unpinned, the same user key is served by routing as usual.
    assert_eq!(ts.chat(&user_key, "gpt-4o", 5).await.status, 200);
    assert_eq!(mock.state.count("first"), 1);
    ts.stop().await;
}
