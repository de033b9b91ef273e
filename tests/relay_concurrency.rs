//! Concurrency (SPEC §6): 50 concurrent calls with max_tokens against a key
//! whose quota covers only some of them. The key never goes below zero, the
//! refused calls get 429, and the ledger rows, the token's used_quota and
//! the stat agree — on SQLite, PostgreSQL and MySQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{assert_error, quota_sum};
use common::{Db, spawn_on};
use serde_json::json;

const CALLS: usize = 50;

async fn concurrent_calls_never_overspend(db: Db) {
    let Some(ts) = spawn_on(db).await else {
        return;
    };
    let mock = common::relay::mock().await;
    // slow-20: calls overlap, so reservations are held at the same time.
    ts.mock_channel(&mock, "slow-20", "cc", 0).await;
    ts.option("ModelRatio", r#"{"cc": 1}"#).await;
    ts.option("CompletionRatio", r#"{"cc": 1}"#).await;
    let body = json!({"model": "cc", "max_tokens": 20,
        "messages": [{"role": "user", "content": "count"}]});
    let worst = serde_json::to_vec(&body).unwrap().len() as i64 + 20;
    let cost = 10 + 20; // the mock's usage, ratio 1
    // Enough for 12 worst cases; at most quota / cost calls can ever succeed.
    let quota = 12 * worst;
    let (u, tid, key) = ts
        .funded(
            "alice",
            100_000_000,
            json!({"name": "k", "remain_quota": quota}),
        )
        .await;
    let calls = (0..CALLS).map(|_| ts.relay(&key, "/v1/chat/completions", body.clone()));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count() as i64;
    for r in results.iter().filter(|r| r.status != 200) {
        assert_error(r, 429, "insufficient_quota", "insufficient_quota");
    }
    let refused = CALLS as i64 - ok;
    assert!(ok >= 12, "12 worst cases fit at once: only {ok} succeeded");
    assert!(ok <= quota / cost, "{ok} calls cannot fit in {quota}");
    assert!(refused > 0, "the quota covers only some calls");
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    let remain = t["remain_quota"].as_i64().unwrap();
    let used = t["used_quota"].as_i64().unwrap();
    assert!(remain >= 0, "the key went below zero: {remain}");
    assert_eq!(used, ok * cost);
    assert_eq!(remain, quota - used);
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len() as i64, ok);
    assert_eq!(quota_sum(&rows), used);
    let stat = ts.get(&u, "/api/log/self/stat?type=2").await;
    assert_eq!(stat.ok()["quota"].as_i64().unwrap(), used);
    let stat = ts.get(&u, "/api/log/self/stat?token_name=k").await;
    assert_eq!(stat.ok()["quota"].as_i64().unwrap(), used);
    let user = ts.user_of(u.id).await;
    assert_eq!(user["used_quota"].as_i64().unwrap(), used);
    assert_eq!(user["request_count"].as_i64().unwrap(), ok);
    assert_eq!(ts.token_row(tid).await["request_count"], json!(ok));
    assert_eq!(mock.state.count("slow-20") as i64, ok);
    // Spend what is left one call at a time: the key ends at exactly what
    // no worst case fits in, never below zero.
    let mut more = 0;
    loop {
        let r = ts.relay(&key, "/v1/chat/completions", body.clone()).await;
        if r.status != 200 {
            assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
            break;
        }
        more += 1;
        assert!(more < 1000);
    }
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    let remain = t["remain_quota"].as_i64().unwrap();
    assert!((0..worst).contains(&remain), "{remain}");
    assert_eq!(remain, quota - (ok + more) * cost);
    ts.stop().await;
}

#[tokio::test]
async fn concurrent_calls_never_overspend_sqlite() {
    concurrent_calls_never_overspend(Db::Sqlite).await;
}

#[tokio::test]
async fn concurrent_calls_never_overspend_postgres() {
    concurrent_calls_never_overspend(Db::Postgres).await;
}

#[tokio::test]
async fn concurrent_calls_never_overspend_mysql() {
    concurrent_calls_never_overspend(Db::Mysql).await;
}

/// The same with an unlimited key: the user's balance is the limit, and it
/// never goes below zero either.
#[tokio::test]
async fn concurrent_calls_never_overspend_the_user() {
    let ts = spawn_on(Db::Sqlite).await.unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "slow-20", "cc", 0).await;
    ts.option("ModelRatio", r#"{"cc": 1}"#).await;
    ts.option("CompletionRatio", r#"{"cc": 1}"#).await;
    let body = json!({"model": "cc", "max_tokens": 20,
        "messages": [{"role": "user", "content": "count"}]});
    let worst = serde_json::to_vec(&body).unwrap().len() as i64 + 20;
    let quota = 9 * worst;
    let (u, tid, key) = ts
        .funded("bob", quota, json!({"name": "k", "unlimited_quota": true}))
        .await;
    let calls = (0..CALLS).map(|_| ts.relay(&key, "/v1/chat/completions", body.clone()));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count() as i64;
    for r in results.iter().filter(|r| r.status != 200) {
        assert_error(r, 429, "insufficient_quota", "insufficient_user_quota");
    }
    assert!(ok >= 9 && ok < CALLS as i64, "{ok}");
    ts.flush().await;
    let user = ts.user_of(u.id).await;
    assert_eq!(user["used_quota"].as_i64().unwrap(), ok * 30);
    assert_eq!(user["quota"].as_i64().unwrap(), quota - ok * 30);
    assert!(user["quota"].as_i64().unwrap() >= 0);
    assert_eq!(
        ts.token_of(&u, tid).await["used_quota"].as_i64().unwrap(),
        ok * 30
    );
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(quota_sum(&rows), ok * 30);
    ts.stop().await;
}

/// Without max_tokens a call holds only DefaultOutputAllowance, so calls in
/// flight together may overspend — but never by more than what they
/// produced beyond their holds (SPEC §6).
#[tokio::test]
async fn calls_without_max_tokens_overspend_at_most_their_excess() {
    let ts = spawn_on(Db::Sqlite).await.unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "slow-20", "cc", 0).await;
    ts.option("ModelRatio", r#"{"cc": 1}"#).await;
    // Each call reports 10 + 20 tokens: 10 + 20 × 10 = 210 units.
    ts.option("CompletionRatio", r#"{"cc": 10}"#).await;
    ts.option("DefaultOutputAllowance", "1").await;
    let body = json!({"model": "cc", "messages": [{"role": "user", "content": "count"}]});
    let hold = serde_json::to_vec(&body).unwrap().len() as i64 + 10;
    let cost = 210;
    assert!(hold < cost);
    let quota = 4 * hold;
    let (u, tid, key) = ts
        .funded(
            "carol",
            100_000_000,
            json!({"name": "k", "remain_quota": quota}),
        )
        .await;
    let calls = (0..CALLS).map(|_| ts.relay(&key, "/v1/chat/completions", body.clone()));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count() as i64;
    for r in results.iter().filter(|r| r.status != 200) {
        assert_error(r, 429, "insufficient_quota", "insufficient_quota");
    }
    assert!(ok >= 1 && ok < CALLS as i64, "{ok}");
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    let remain = t["remain_quota"].as_i64().unwrap();
    assert_eq!(t["used_quota"].as_i64().unwrap(), ok * cost);
    assert_eq!(remain, quota - ok * cost);
    // Every admitted call fitted its hold when admitted, so the overspend is
    // bounded by the calls' excess over their holds.
    assert!(
        -remain <= ok * (cost - hold),
        "overspent {} with {ok} calls",
        -remain
    );
    // What is left (if anything) no longer covers a hold: refused.
    let r = ts.relay(&key, "/v1/chat/completions", body).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
    ts.stop().await;
}
