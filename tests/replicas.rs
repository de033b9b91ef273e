//! Several replicas (separate processes of the real binary) on one
//! PostgreSQL or MySQL database plus Redis (SPEC §6, DESIGN "Many
//! replicas"): concurrent calls through all of them against one key never
//! overspend it, every call is billed once (ledger rows = token used_quota =
//! stat), and a change made on one replica is obeyed by the others within a
//! second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::relay::{Relayed, assert_error, quota_sum};
use common::replicas::Cluster;
use common::{Caller, Db, TestServer};
use serde_json::{Value, json};

/// The mock's usage for `slow-20` (10 prompt + 20 completion), ratio 1.
const COST: i64 = 30;
/// How long a change may take to reach every replica.
const OBEYED_WITHIN: Duration = Duration::from_secs(1);

fn body(max_tokens: Option<i64>) -> Value {
    let mut b = json!({"model": "cc", "messages": [{"role": "user", "content": "count"}]});
    if let Some(m) = max_tokens {
        b["max_tokens"] = json!(m);
    }
    b
}

/// Calls replica after replica until `done` says a call shows the change;
/// returns how many calls succeeded before. Fails if that took longer than
/// [`OBEYED_WITHIN`].
async fn until_obeyed(
    ts: &TestServer,
    key: &str,
    b: &Value,
    done: impl Fn(&Relayed) -> bool,
) -> i64 {
    let start = Instant::now();
    let mut ok = 0;
    loop {
        let r = ts.relay(key, "/v1/chat/completions", b.clone()).await;
        if done(&r) {
            return ok;
        }
        if r.status == 200 {
            ok += 1;
        }
        assert!(
            start.elapsed() <= OBEYED_WITHIN,
            "a replica did not obey a change within {OBEYED_WITHIN:?}: {} {}",
            r.status,
            r.text
        );
    }
}

/// Polls `used_quota` until the ledger writers committed `want` (they
/// commit within their batch window); returns the token.
async fn committed(ts: &TestServer, owner: &Caller, tid: i64, want: i64) -> Value {
    let start = Instant::now();
    loop {
        let t = ts.token_of(owner, tid).await;
        if t["used_quota"].as_i64() == Some(want) {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "used_quota stuck at {} (want {want})",
            t["used_quota"]
        );
        tokio::task::yield_now().await;
    }
}

async fn replicas_share_one_balance(db: Db, n: usize, with_max_tokens: bool) {
    let Some(mut c) = Cluster::new(db).await else {
        return;
    };
    let mock = common::relay::mock().await;
    // The first replica creates the schema; the configuration is in place
    // before the others start, so every replica routes and prices alike.
    c.start().await;
    let a = c.ts(0);
    // slow-20: calls overlap, so reservations are held at the same time.
    a.mock_channel(&mock, "slow-20", "cc", 0).await;
    a.option("ModelRatio", r#"{"cc": 1}"#).await;
    a.option("CompletionRatio", r#"{"cc": 1}"#).await;
    // Without max_tokens the reservation uses the default allowance, here
    // exactly what the mock produces.
    a.option("DefaultOutputAllowance", "20").await;
    let alice = a.user("alice", 1).await;
    a.give_quota(&alice, 100_000_000).await;
    let b = body(with_max_tokens.then_some(20));
    let worst = serde_json::to_vec(&b).unwrap().len() as i64 + 20;
    let quota = 12 * worst;
    let (tid, key) = a
        .key(&alice, json!({"name": "k", "remain_quota": quota}))
        .await;
    c.start_n(n - 1).await;
    let a = c.ts(0);

    // 1. Concurrent calls spread over every replica.
    let calls = (0..60).map(|i| c.ts(i % n).relay(&key, "/v1/chat/completions", b.clone()));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count() as i64;
    for r in results.iter().filter(|r| r.status != 200) {
        assert_error(r, 429, "insufficient_quota", "insufficient_quota");
    }
    assert!(ok >= 12, "12 worst cases fit at once: only {ok} succeeded");
    assert!(ok <= quota / COST, "{ok} calls cannot fit in {quota}");
    assert!(ok < 60, "the quota covers only some calls");
    let t = committed(a, &alice, tid, ok * COST).await;
    assert_eq!(t["remain_quota"].as_i64().unwrap(), quota - ok * COST);

    // 2. Spend the rest one call at a time, round robin: the shared balance
    // ends at what no worst case fits in, never below zero.
    let mut more = 0;
    for i in 0.. {
        let r = c
            .ts(i % n)
            .relay(&key, "/v1/chat/completions", b.clone())
            .await;
        if r.status != 200 {
            assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
            break;
        }
        more += 1;
        assert!(more < 1000);
    }
    let spent = (ok + more) * COST;
    let t = committed(a, &alice, tid, spent).await;
    let remain = t["remain_quota"].as_i64().unwrap();
    assert_eq!(remain, quota - spent);
    assert!((0..worst).contains(&remain), "{remain}");

    // 3. More quota given on the last replica is usable on every other one
    // within a second (and enabled again if it had run dry).
    let last = c.ts(n - 1);
    let topped = 10 * worst;
    last.put(
        &alice,
        "/api/token/",
        json!({"id": tid, "name": "k", "remain_quota": topped}),
    )
    .await
    .ok();
    if t["status"] != json!(1) {
        last.put(
            &alice,
            "/api/token/?status_only=true",
            json!({"id": tid, "status": 1}),
        )
        .await
        .ok();
    }
    let mut after_topup = 0;
    for i in 0..n - 1 {
        // The first call that succeeds shows the change.
        after_topup += 1 + until_obeyed(c.ts(i), &key, &b, |r| r.status == 200).await;
    }

    // Every replica now holds the token in its cache.
    let r = last.relay(&key, "/v1/chat/completions", b.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    after_topup += 1;

    // 4. A disable on the first replica is refused by every other within a
    // second.
    a.put(
        &alice,
        "/api/token/?status_only=true",
        json!({"id": tid, "status": 2}),
    )
    .await
    .ok();
    for i in 1..n {
        after_topup += until_obeyed(c.ts(i), &key, &b, |r| r.status == 403).await;
        let r = c.ts(i).relay(&key, "/v1/chat/completions", b.clone()).await;
        assert_error(&r, 403, "permission_error", "token_disabled");
    }

    // 5. Stop every replica (each drains its ledger), then check the books
    // through a fresh one.
    c.term_all().await;
    let total = ok + more + after_topup;
    let v = c.start().await;
    let check = c.ts(v);
    let t = check.token_of(&alice, tid).await;
    assert_eq!(t["used_quota"].as_i64().unwrap(), total * COST);
    assert_eq!(
        t["remain_quota"].as_i64().unwrap(),
        topped - after_topup * COST
    );
    let rows = check.all_logs(&alice, "/api/log/self?type=2").await;
    assert_eq!(rows.len() as i64, total);
    assert_eq!(quota_sum(&rows), total * COST);
    let stat = check.get(&alice, "/api/log/self/stat?type=2").await;
    assert_eq!(stat.ok()["quota"].as_i64().unwrap(), total * COST);
    let user = check.get(&alice, "/api/user/self").await;
    assert_eq!(user.ok()["used_quota"].as_i64().unwrap(), total * COST);
    assert_eq!(user.ok()["request_count"].as_i64().unwrap(), total);
    assert_eq!(mock.state.count("slow-20") as i64, total);
    // The shared balance in Redis, if still there, agrees with the database
    // and holds nothing in flight.
    let mut conn = c.redis().await;
    let acct: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("{}bal:t:{tid}", c.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !acct.is_empty() {
        assert_eq!(acct["pending"], 0, "{acct:?}");
        assert_eq!(acct["db"], t["remain_quota"].as_i64().unwrap(), "{acct:?}");
    }
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres() {
    replicas_share_one_balance(Db::Postgres, 2, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres() {
    replicas_share_one_balance(Db::Postgres, 3, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_mysql() {
    replicas_share_one_balance(Db::Mysql, 2, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_mysql() {
    replicas_share_one_balance(Db::Mysql, 3, true).await;
}

/// Calls without max_tokens reserve the default output allowance; when the
/// output fits in it the key is never overspent either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_without_max_tokens() {
    replicas_share_one_balance(Db::Postgres, 3, false).await;
}

/// A user, a channel and an option changed on one replica are obeyed by the
/// other within a second (pub/sub), although both had them cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_replica() {
    let Some(mut c) = Cluster::new(Db::Postgres).await else {
        return;
    };
    let mock = common::relay::mock().await;
    c.start().await;
    let a = c.ts(0);
    let ch = a.mock_channel(&mock, "ok", "cc", 0).await;
    a.option("ModelRatio", r#"{"cc": 1}"#).await;
    let bob = a.user("bob", 1).await;
    a.give_quota(&bob, 100_000_000).await;
    let (_, key) = a
        .key(&bob, json!({"name": "k", "unlimited_quota": true}))
        .await;
    c.start().await;
    let (a, b) = (c.ts(0), c.ts(1));
    let call = body(Some(5));
    let r = b.relay(&key, "/v1/chat/completions", call.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // An option: the model loses its price.
    a.option("ModelRatio", r#"{"other": 1}"#).await;
    until_obeyed(b, &key, &call, |r| {
        r.status == 400 && r.text.contains("has no ratio or price")
    })
    .await;
    a.option("ModelRatio", r#"{"cc": 1}"#).await;
    until_obeyed(b, &key, &call, |r| r.status == 200).await;

    // A channel: disabled, nothing serves the model.
    let root = a.root();
    a.put(&root, "/api/channel/", json!({"id": ch, "status": 2}))
        .await
        .ok();
    until_obeyed(b, &key, &call, |r| r.status == 503).await;
    let r = b.relay(&key, "/v1/chat/completions", call.clone()).await;
    assert_error(&r, 503, "service_unavailable_error", "no_available_channel");
    a.put(&root, "/api/channel/", json!({"id": ch, "status": 1}))
        .await
        .ok();
    until_obeyed(b, &key, &call, |r| r.status == 200).await;

    // A user: disabled by an admin.
    a.post(
        &root,
        "/api/user/manage",
        json!({"id": bob.id, "action": "disable"}),
    )
    .await
    .ok();
    until_obeyed(b, &key, &call, |r| r.status == 403).await;
    let r = b.relay(&key, "/v1/chat/completions", call.clone()).await;
    assert_error(&r, 403, "permission_error", "user_disabled");
    c.finish().await;
}

/// Rate limits are counted once for all replicas (Redis): a key allowed 5
/// requests a minute gets exactly 5 through, however its calls are spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_replicas() {
    let Some(mut c) = Cluster::new(Db::Mysql).await else {
        return;
    };
    let mock = common::relay::mock().await;
    c.start().await;
    let a = c.ts(0);
    a.mock_channel(&mock, "ok", "cc", 0).await;
    a.option("ModelRatio", r#"{"cc": 1}"#).await;
    let carol = a.user("carol", 1).await;
    a.give_quota(&carol, 100_000_000).await;
    let (_, key) = a
        .key(
            &carol,
            json!({"name": "k", "unlimited_quota": true, "rpm_limit": 5}),
        )
        .await;
    let (_, tkey) = a
        .key(
            &carol,
            json!({"name": "t", "unlimited_quota": true, "tpm_limit": 40}),
        )
        .await;
    c.start_n(2).await;
    let b = body(Some(5));
    let calls = (0..12).map(|i| c.ts(i % 3).relay(&key, "/v1/chat/completions", b.clone()));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 5, "exactly the limit gets through");
    for r in results.iter().filter(|r| r.status != 200) {
        assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded");
        assert!(r.headers.contains_key("retry-after"));
    }
    // Tokens: 15 a call, counted wherever the call ran: three fit in 40.
    for i in 0..3 {
        let r = c
            .ts(i)
            .relay(&tkey, "/v1/chat/completions", b.clone())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = c
        .ts(1)
        .relay(&tkey, "/v1/chat/completions", b.clone())
        .await;
    assert_error(&r, 429, "rate_limit_error", "rate_limit_exceeded");
    assert_eq!(mock.state.count("ok"), 8);
    c.finish().await;
}

/// Login throttling counts attempts on every replica together: spreading a
/// password guess over replicas gains nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_is_shared_by_replicas() {
    let Some(mut c) = Cluster::new(Db::Postgres).await else {
        return;
    };
    c.start_n(2).await;
    let attempt = |i: usize| {
        let ts = c.ts(i % 2);
        ts.http
            .post(ts.url("/api/user/login"))
            .json(&json!({"username": "root", "password": "guess"}))
            .send()
    };
    for i in 0..20 {
        let r = attempt(i).await.unwrap();
        assert_eq!(r.status(), 200, "attempt {i}");
    }
    for i in 0..2 {
        let r = attempt(i).await.unwrap();
        assert_eq!(r.status(), 429, "replica {i} let a 21st attempt through");
    }
    c.finish().await;
}
