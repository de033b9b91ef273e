//! Faults (SPEC §5–6, DESIGN "durability"): what the client sees and what
//! the books say when an upstream resets or truncates, when the database
//! goes away under load and comes back, and when Redis does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::proxy::{Proxy, host_port};
use common::relay::{assert_error, eventually, other, quota_sum};
use common::{Db, TestServer, spawn, spawn_with};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a hand-written upstream does once it has read a request.
#[derive(Clone, Copy)]
enum Fault {
    /// Resets the connection (RST) without answering.
    Reset,
    /// Promises a 1000-byte JSON body, sends 40 bytes, closes.
    Truncate,
}

/// An upstream that reads one request per connection, then misbehaves.
async fn faulty_upstream(fault: Fault) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                match fault {
                    Fault::Reset => {
                        // Linger 0: close() sends RST, not FIN.
                        #[allow(deprecated)]
                        let _ = s.set_linger(Some(std::time::Duration::ZERO));
                        drop(s);
                    }
                    Fault::Truncate => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s
                            .write_all(br#"{"id":"x","object":"chat.completion","#)
                            .await;
                        let _ = s.shutdown().await;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// An upstream that resets, or truncates its body, fails over to the next
/// channel (nothing reached the client yet) and is billed once; with no
/// other channel the client gets a 502 and pays nothing.
#[tokio::test]
async fn upstream_reset_and_truncated_body_fail_over_or_cost_nothing() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.option("RetryTimes", "1").await;
    ts.option(
        "ModelRatio",
        r#"{"m-reset": 1, "m-trunc": 1, "m-alone": 1}"#,
    )
    .await;
    let reset = faulty_upstream(Fault::Reset).await;
    let trunc = faulty_upstream(Fault::Truncate).await;
    let mut bad = Vec::new();
    for (name, base, models) in [
        ("reset", &reset, "m-reset,m-alone"),
        ("trunc", &trunc, "m-trunc"),
    ] {
        bad.push(
            ts.channel(
                json!({"type": 1, "name": name, "key": "k", "base_url": base,
                "models": models, "group": "default", "priority": 10}),
            )
            .await,
        );
    }
    let good = ts
        .channel(
            json!({"type": 1, "name": "good", "key": "ok", "base_url": mock.url(),
            "models": "m-reset,m-trunc", "group": "default", "priority": 0}),
        )
        .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    for m in ["m-reset", "m-trunc"] {
        let r = ts.chat(&key, m, 20).await;
        assert_eq!(r.status, 200, "{m}: {}", r.text);
        assert_eq!(r.json()["model"], json!(m));
    }
    // Alone: the reset reaches the client as a 502 in its dialect.
    let r = ts.chat(&key, "m-alone", 20).await;
    assert_error(&r, 502, "upstream_error", "upstream_unreachable");
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 2, "one row per served call");
    for (row, b) in rows.iter().rev().zip(&bad) {
        assert_eq!(row["channel_id"], json!(good));
        assert_eq!(other(row)["tried_channels"], json!([b, good]));
        assert_eq!(row["quota"], json!(30));
    }
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(60));
    assert_eq!(t["remain_quota"], json!(100_000 - 60));
    // The failure is logged (type 5) and costs nothing.
    let errs = ts.all_logs(&u, "/api/log/self?type=5").await;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["quota"], json!(0));
    ts.stop().await;
}

/// PostgreSQL restarts under load: calls keep being served (keys, users and
/// balances are in memory), the ledger writer keeps its batch and retries,
/// and once the database is back every call is in the ledger exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_load_loses_nothing() {
    let Some(pg) = Db::Postgres.service_url() else {
        return;
    };
    let proxy = Proxy::start(&host_port(&pg)).await;
    let ts = spawn_with(Db::Postgres, |c| {
        c.sql_dsn = c.sql_dsn.as_deref().map(|d| proxy.url(d));
    })
    .await
    .unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    ts.option("ModelRatio", r#"{"gpt-4o": 1}"#).await;
    ts.option("CompletionRatio", r#"{"gpt-4o": 1}"#).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(ts.chat(&key, "gpt-4o", 20).await.status, 200);
    ts.flush().await;
    let retries_before = ts.metric("sluice_ledger_commit_retries_total").await;

    proxy.cut();
    let during = futures_util::future::join_all((0..40).map(|_| ts.chat(&key, "gpt-4o", 20))).await;
    for r in &during {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // The writer met the outage (and keeps retrying).
    eventually("a failed ledger commit", || async {
        ts.metric("sluice_ledger_commit_retries_total").await > retries_before
    })
    .await;
    assert!(proxy.refused() > 0);
    proxy.restore();
    ts.flush().await;

    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 41);
    assert_eq!(quota_sum(&rows), 41 * 30);
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(41 * 30));
    assert_eq!(t["remain_quota"], json!(100_000 - 41 * 30));
    assert_eq!(mock.state.count("ok"), 41);
    drop(proxy);
    ts.stop().await;
}

/// Redis for one test: its URL, a cuttable proxy in front of it and a key
/// prefix of the test's own; `None` (skip) when Redis is not configured.
async fn redis_behind_proxy() -> Option<(String, Proxy, String)> {
    let url = common::replicas::redis_url()?;
    let proxy = Proxy::start(&host_port(&url)).await;
    let prefix = format!("sluice_t_fault_{}:", sluice::auth::keys::random_alnum(10));
    Some((url, proxy, prefix))
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A field of a shared balance (0 when absent).
async fn balance_field(conn: &redis::aio::MultiplexedConnection, key: &str, f: &str) -> i64 {
    let v: Option<i64> = redis::cmd("HGET")
        .arg(key)
        .arg(f)
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    v.unwrap_or(0)
}

/// Deletes the test's Redis keys.
async fn delete_prefix(conn: &redis::aio::MultiplexedConnection, prefix: &str) {
    let mut conn = conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Starts a call in the background; resolves to its status and body.
fn call_in_background(
    ts: &TestServer,
    key: &str,
    model: &str,
) -> tokio::task::JoinHandle<(u16, String)> {
    let (http, url, key) = (
        ts.http.clone(),
        ts.url("/v1/chat/completions"),
        key.to_string(),
    );
    let body = json!({"model": model, "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]});
    tokio::spawn(async move {
        let r = http
            .post(url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// Redis down is refused, not guessed at (docs/decisions.md): with the
/// shared balances unreachable a call gets 503 `balance_unavailable` and
/// reaches no upstream. When Redis is back calls flow again, and a call
/// that was in flight during the outage is settled once Redis returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_calls_and_recovers() {
    let Some((redis_url, proxy, prefix)) = redis_behind_proxy().await else {
        return;
    };
    let ts = spawn_with(Db::Postgres, |c| {
        c.redis_url = Some(proxy.url(&redis_url));
        c.redis_prefix = prefix.clone();
    })
    .await;
    let Some(ts) = ts else { return };
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    ts.mock_channel(&mock, "slow-400", "gpt-slow", 0).await;
    ts.option("ModelRatio", r#"{"gpt-4o": 1, "gpt-slow": 1}"#)
        .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(ts.chat(&key, "gpt-4o", 20).await.status, 200);

    // A call in flight when Redis goes away.
    let inflight = call_in_background(&ts, &key, "gpt-slow");
    eventually("the slow call to reach the upstream", || async {
        mock.state.count("slow-400") == 1
    })
    .await;
    proxy.cut();
    let r = ts.chat(&key, "gpt-4o", 20).await;
    assert_error(&r, 503, "service_unavailable_error", "balance_unavailable");
    // The call in flight still completes for its client.
    assert_eq!(inflight.await.unwrap().0, 200);
    assert_eq!(mock.state.count("ok"), 1);

    proxy.restore();
    eventually("calls to flow again", || async {
        ts.chat(&key, "gpt-4o", 20).await.status == 200
    })
    .await;
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    let served = mock.state.count("ok") + 1;
    assert_eq!(rows.len(), served);
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"].as_i64().unwrap(), quota_sum(&rows));
    // The shared balance heals: nothing stays held for the call that was
    // in flight, and it agrees with the database.
    let conn = redis_conn(&redis_url).await;
    let acct_key = format!("{prefix}bal:t:{tid}");
    eventually("the shared balance to heal", || async {
        let remain = ts.token_of(&u, tid).await["remain_quota"].as_i64().unwrap();
        balance_field(&conn, &acct_key, "pending").await == 0
            && balance_field(&conn, &acct_key, "db").await == remain
    })
    .await;
    delete_prefix(&conn, &prefix).await;
    drop(proxy);
    ts.stop().await;
}

/// A replica cut off from Redis longer than its lease is presumed dead: another
/// replica releases its holds. When it comes back, the moves it queued for
/// the swept holds change nothing (a tombstone says so), so nothing is
/// released twice; it goes on under a new epoch and the books agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_past_its_lease_is_swept_once() {
    let Some((redis_url, proxy, prefix)) = redis_behind_proxy().await else {
        return;
    };
    let Some(a) = spawn_with(Db::Postgres, |c| {
        c.redis_url = Some(proxy.url(&redis_url));
        c.redis_prefix = prefix.clone();
        c.redis_lease_ms = 600;
        // Replicas share the key that encrypts channel keys.
        c.secret_key = Some("sweep-test-secret".into());
    })
    .await
    else {
        return;
    };
    let dsn = a.db.dsn.clone();
    let b = spawn_with(Db::Postgres, |c| {
        c.sql_dsn = dsn.clone();
        c.redis_url = Some(redis_url.clone());
        c.redis_prefix = prefix.clone();
        c.redis_lease_ms = 600;
        c.secret_key = Some("sweep-test-secret".into());
    })
    .await
    .unwrap();
    let mock = common::relay::mock().await;
    a.mock_channel(&mock, "slow-3000", "gpt-slow", 0).await;
    a.option("ModelRatio", r#"{"gpt-slow": 1}"#).await;
    a.option("CompletionRatio", r#"{"gpt-slow": 1}"#).await;
    let (u, tid, key) = a
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let inflight = call_in_background(&a, &key, "gpt-slow");
    eventually("the call to reach the upstream", || async {
        mock.state.count("slow-3000") == 1
    })
    .await;
    let conn = redis_conn(&redis_url).await;
    let acct = format!("{prefix}bal:t:{tid}");
    let field = |f: &'static str| balance_field(&conn, &acct, f);
    assert!(field("pending").await > 0, "the call holds quota");
    proxy.cut();
    // B releases A's hold once A's lease has expired.
    eventually("the cut-off replica's hold to be released", || async {
        field("pending").await == 0
    })
    .await;
    // The call still completes for its client; A queues its moves.
    let (status, text) = inflight.await.unwrap();
    assert_eq!(status, 200, "{text}");
    proxy.restore();
    a.flush().await;
    let t = a.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(30));
    assert_eq!(t["remain_quota"], json!(100_000 - 30));
    eventually("A's queued moves to be replayed", || async {
        match &*a.server.as_ref().unwrap().state.bank {
            sluice::billing::bank::QuotaBank::Redis(bk) => bk.pending_replays() == 0,
            _ => true,
        }
    })
    .await;
    assert_eq!(field("pending").await, 0, "released twice, or not at all");
    assert_eq!(field("db").await, 100_000 - 30);
    // A holds again, under its new epoch, and B sees the same balance.
    a.mock_channel(&mock, "ok", "gpt-ok", 0).await;
    a.option("ModelRatio", r#"{"gpt-slow": 1, "gpt-ok": 1}"#)
        .await;
    eventually("A to serve again", || async {
        a.chat(&key, "gpt-ok", 20).await.status == 200
    })
    .await;
    eventually("B to see the new channel", || async {
        b.chat(&key, "gpt-ok", 20).await.status == 200
    })
    .await;
    delete_prefix(&conn, &prefix).await;
    drop(proxy);
    b.stop().await;
    a.stop().await;
}

/// Per-phase timeouts, the idle phase: an upstream that goes silent in the
/// middle of a stream for longer than `UPSTREAM_IDLE_TIMEOUT_MS` is cut. The
/// client gets what was produced and an error event (no `[DONE]`), and pays
/// for what it received, counted locally. (Connect and first-byte timeouts:
/// `relay_routing.rs`, `failover_on_429_connect_error_and_timeout`.)
#[tokio::test]
async fn an_upstream_silent_mid_stream_is_cut_at_the_idle_timeout() {
    let ts = spawn_with(Db::Sqlite, |c| c.upstream_idle_timeout_ms = 300)
        .await
        .unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "stall-10000", "m-stall", 0).await;
    ts.option("ModelRatio", r#"{"m-stall": 1}"#).await;
    ts.option("CompletionRatio", r#"{"m-stall": 1}"#).await;
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
            "/v1/chat/completions",
            json!({"model": "m-stall", "stream": true, "max_tokens": 20,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.text.contains("[DONE]"), "{}", r.text);
    let last = r
        .text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .last()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped sending"),
        "{last}"
    );
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(other(&rows[0])["usage_source"], json!("local"));
    assert_eq!(other(&rows[0])["http_status"], json!(502));
    let charged = rows[0]["quota"].as_i64().unwrap();
    assert!(charged > 0);
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(charged));
    ts.stop().await;
}
