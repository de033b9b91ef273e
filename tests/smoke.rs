//! The whole management flow once on each database: start, migrate, root,
//! users, tokens, options, redemption.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Db, spawn_on};
use serde_json::json;

async fn flow(kind: Db) {
    let Some(ts) = spawn_on(kind).await else {
        return;
    };
    let root = ts.root();
    let alice = ts.user("alice", 1).await;
    let t = ts
        .token(
            &alice,
            json!({"name": "a1", "remain_quota": 1000, "model_limits": "x,y"}),
        )
        .await;
    assert_eq!(t["key"].as_str().unwrap().len(), 48);
    let id = t["id"].as_i64().unwrap();
    let list = ts.get(&alice, "/api/token/?p=1&size=10").await;
    assert_eq!(list.ok()["total"], json!(1));
    let upd = ts
        .put(&alice, "/api/token/", json!({"id": id, "name": "renamed"}))
        .await;
    assert_eq!(upd.ok()["name"], json!("renamed"));
    assert_eq!(upd.ok()["model_limits"], json!("x,y"));
    ts.put(
        &root,
        "/api/option/",
        json!({"key": "RetryTimes", "value": "2"}),
    )
    .await
    .ok();
    let codes = ts
        .post(
            &root,
            "/api/redemption/",
            json!({"name": "gift", "quota": 500, "count": 2}),
        )
        .await;
    let code = codes.ok()[0].as_str().unwrap().to_string();
    let r = ts
        .post(&alice, "/api/user/topup", json!({"key": code}))
        .await;
    assert_eq!(r.ok(), &json!(500));
    let me = ts.get(&alice, "/api/user/self").await;
    assert_eq!(me.ok()["quota"], json!(500));
    let logs = ts
        .store()
        .list_logs(&Default::default(), 0, 100)
        .await
        .unwrap();
    assert!(logs.1 >= 1);
    ts.stop().await;
}

#[tokio::test]
async fn flow_sqlite() {
    flow(Db::Sqlite).await;
}

#[tokio::test]
async fn flow_postgres() {
    flow(Db::Postgres).await;
}

#[tokio::test]
async fn flow_mysql() {
    flow(Db::Mysql).await;
}

/// A server whose secret key is not the one the stored keys were encrypted
/// with (a replica started with another SLUICE_SECRET_KEY) refuses to start
/// rather than silently losing every channel and key view.
#[tokio::test]
async fn a_server_with_another_secret_key_refuses_to_start() {
    let ts = common::spawn_with(Db::Sqlite, |c| c.secret_key = Some("first-secret".into()))
        .await
        .unwrap();
    let alice = ts.user("alice", 1).await;
    ts.token(&alice, json!({"name": "k"})).await;
    let mut config = ts.server.as_ref().unwrap().state.config.clone();
    config.secret_key = Some("second-secret".into());
    let err = match sluice::server::start(config.clone()).await {
        Ok(_) => panic!("a server with another key started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("SLUICE_SECRET_KEY"), "{err}");
    // The right key starts (beside the first, on the same database).
    config.secret_key = Some("first-secret".into());
    let other = sluice::server::start(config).await.unwrap();
    other.shutdown();
    other.wait().await.unwrap();
    ts.stop().await;
}
