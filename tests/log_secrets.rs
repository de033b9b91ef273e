//! No secret in any log line: the real binary, at `debug` and at `trace`,
//! through logins, key creation and retrieval, relayed calls (good, bad and
//! refused keys, an upstream that quotes the key it was given) and channel
//! management; then its whole output is searched for every secret it saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::replicas::Cluster;
use common::{Db, ROOT_PASSWORD, ROOT_TOKEN};
use serde_json::json;

/// A channel key long enough to be recognisable anywhere.
const CHANNEL_KEY: &str = "chan-secret-Zq8v3Lw0Rt6Yp1Nx";

async fn run_at(level: &str) {
    let mut c = Cluster::alone(Db::Sqlite).await.unwrap();
    c.env.push(("LOG_LEVEL".into(), level.into()));
    let mock = common::relay::mock().await;
    c.start().await;
    let ts = c.ts(0);
    let root = ts.root();
    // Channels: a good one, and one whose upstream quotes the key back.
    ts.channel(
        json!({"type": 1, "name": "good", "key": CHANNEL_KEY, "base_url": mock.url(),
        "models": "m", "group": "default"}),
    )
    .await;
    ts.channel(
        json!({"type": 1, "name": "echo", "key": "bad-key-upstreamSecret0123456789",
        "base_url": mock.url(), "models": "m-echo", "group": "default"}),
    )
    .await;
    ts.option("ModelRatio", r#"{"m": 1, "m-echo": 1}"#).await;
    let r = ts.post(&root, "/api/channel/1/key", json!({})).await;
    assert_eq!(r.ok()["key"], json!(CHANNEL_KEY));
    // A user registers, logs in (cookie), gets an access token.
    let password = "user-Passw0rd-Kq2m9";
    let r = ts
        .anon(reqwest::Method::POST, "/api/user/register")
        .json(&json!({"username": "carol", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let users = ts.get(&root, "/api/user/search?keyword=carol").await;
    let id = users.ok()["items"][0]["id"].as_i64().unwrap();
    let carol = ts.login_token("carol", password, id).await;
    ts.give_quota(&carol, 1_000_000).await;
    // A wrong password, too.
    let _ = ts
        .anon(reqwest::Method::POST, "/api/user/login")
        .json(&json!({"username": "carol", "password": "wrong-Passw0rd-zz9"}))
        .send()
        .await
        .unwrap();
    // Keys: created, retrieved in full, used, refused.
    let t = ts
        .token(&carol, json!({"name": "k", "remain_quota": 100_000}))
        .await;
    let tid = t["id"].as_i64().unwrap();
    let full = ts
        .post(&carol, &format!("/api/token/{tid}/key"), json!({}))
        .await
        .ok()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("sk-{full}");
    assert_eq!(ts.chat(&key, "m", 5).await.status, 200);
    let r = ts.chat(&key, "m-echo", 5).await;
    assert!(!r.text.contains("upstreamSecret0123456789"), "{}", r.text);
    let wrong = "sk-wrongKey0000111122223333444455556666777788889999";
    assert_eq!(ts.chat(wrong, "m", 5).await.status, 401);
    let r = ts
        .http
        .get(ts.url("/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.term_all().await;

    let printed = c.replicas[0].printed();
    assert!(printed.contains("sluice is listening"), "{printed}");
    for secret in [
        ROOT_PASSWORD,
        ROOT_TOKEN,
        password,
        "wrong-Passw0rd-zz9",
        carol.token.as_str(),
        full.as_str(),
        &full[..24],
        CHANNEL_KEY,
        "upstreamSecret0123456789",
        &wrong[3..],
    ] {
        assert!(
            !printed.contains(secret),
            "LOG_LEVEL={level}: a secret ({}…) is in the output:\n{}",
            &secret[..6],
            printed
                .lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_at_debug() {
    run_at("debug").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_at_trace() {
    run_at("trace").await;
}
