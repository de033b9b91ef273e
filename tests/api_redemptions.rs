//! `/api/redemption/` (admin): codes that add quota once (SPEC §4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestServer, snapshot, spawn};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::store::now;

async fn create(ts: &TestServer, body: Value) -> Vec<String> {
    let r = ts.post(&ts.root(), "/api/redemption/", body).await;
    r.ok()
        .as_array()
        .expect("create answers the list of codes")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// The stored code row with this code text, from the list.
async fn find(ts: &TestServer, code: &str) -> Value {
    let r = ts.get(&ts.root(), "/api/redemption/?page_size=100").await;
    r.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == json!(code))
        .cloned()
        .unwrap_or_else(|| panic!("code {code} is not listed"))
}

#[tokio::test]
async fn create_answers_the_codes_and_validates_fields() {
    let ts = spawn().await;
    let codes = create(&ts, json!({"name": "launch", "quota": 5000, "count": 3})).await;
    assert_eq!(codes.len(), 3);
    let mut uniq = codes.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "codes are distinct");
    for c in &codes {
        assert!(
            c.len() >= 16 && c.chars().all(|ch| ch.is_ascii_alphanumeric()),
            "{c}"
        );
        let row = find(&ts, c).await;
        assert_eq!(row["name"], json!("launch"));
        assert_eq!(row["quota"], json!(5000));
        assert_eq!(row["status"], json!(1));
        assert_eq!(row["user_id"], json!(1), "creator");
    }
    let hundred = create(
        &ts,
        json!({"name": "x".repeat(20), "quota": 1, "count": 100}),
    )
    .await;
    assert_eq!(hundred.len(), 100);
    let multi = create(
        &ts,
        json!({"name": "兑换码".repeat(6), "quota": 1, "count": 1}),
    )
    .await;
    assert_eq!(
        find(&ts, &multi[0]).await["name"],
        json!("兑换码".repeat(6))
    );

    let root = ts.root();
    for (field, body) in [
        ("name", json!({"name": "", "quota": 1, "count": 1})),
        ("name", json!({"name": "   ", "quota": 1, "count": 1})),
        (
            "name",
            json!({"name": "x".repeat(21), "quota": 1, "count": 1}),
        ),
        (
            "name",
            json!({"name": "码".repeat(21), "quota": 1, "count": 1}),
        ),
        ("name", json!({"quota": 1, "count": 1})),
        ("count", json!({"name": "n", "quota": 1, "count": 0})),
        ("count", json!({"name": "n", "quota": 1, "count": 101})),
        ("count", json!({"name": "n", "quota": 1, "count": -1})),
        ("quota", json!({"name": "n", "quota": 0, "count": 1})),
        ("quota", json!({"name": "n", "quota": -10, "count": 1})),
        (
            "expired_time",
            json!({"name": "n", "quota": 1, "count": 1, "expired_time": now() - 10}),
        ),
    ] {
        assert_refused_unchanged!(ts, field, ts.post(&root, "/api/redemption/", body));
    }
    let r = ts
        .post(
            &root,
            "/api/redemption/",
            json!({"name": "n", "quota": "lots", "count": 1}),
        )
        .await;
    r.error(StatusCode::BAD_REQUEST);
    assert!(r.message().contains("quota"));
    ts.stop().await;
}

#[tokio::test]
async fn admins_only() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let admin = ts.fast_user("admin", 10).await;
    let codes = create(&ts, json!({"name": "r", "quota": 10, "count": 1})).await;
    let id = find(&ts, &codes[0]).await["id"].as_i64().unwrap();
    let before = snapshot(ts.store()).await;
    ts.get(&alice, "/api/redemption/")
        .await
        .error(StatusCode::FORBIDDEN);
    ts.get(&alice, &format!("/api/redemption/{id}"))
        .await
        .error(StatusCode::FORBIDDEN);
    ts.get(&alice, "/api/redemption/search?keyword=r")
        .await
        .error(StatusCode::FORBIDDEN);
    ts.post(
        &alice,
        "/api/redemption/",
        json!({"name": "m", "quota": 1, "count": 1}),
    )
    .await
    .error(StatusCode::FORBIDDEN);
    ts.put(&alice, "/api/redemption/", json!({"id": id, "status": 2}))
        .await
        .error(StatusCode::FORBIDDEN);
    ts.delete(&alice, &format!("/api/redemption/{id}"))
        .await
        .error(StatusCode::FORBIDDEN);
    assert_eq!(before, snapshot(ts.store()).await);
    // An admin may.
    let r = ts
        .post(
            &admin,
            "/api/redemption/",
            json!({"name": "by-admin", "quota": 1, "count": 2}),
        )
        .await;
    assert_eq!(r.ok().as_array().unwrap().len(), 2);
    ts.get(&admin, &format!("/api/redemption/{id}")).await.ok();
    ts.stop().await;
}

#[tokio::test]
async fn list_search_get_update_delete() {
    let ts = spawn().await;
    let root = ts.root();
    let alice = ts.fast_user("alice", 1).await;
    create(&ts, json!({"name": "spring", "quota": 100, "count": 2})).await;
    let summer = create(&ts, json!({"name": "summer", "quota": 200, "count": 1})).await;
    let r = ts.get(&root, "/api/redemption/?p=1&page_size=2").await;
    let d = r.ok();
    assert_eq!(d["total"], json!(3));
    assert_eq!(d["items"].as_array().unwrap().len(), 2);
    assert_eq!(d["items"][0]["name"], json!("summer"), "newest first");
    let r = ts.get(&root, "/api/redemption/?p=2&size=2").await;
    assert_eq!(r.ok()["items"][0]["name"], json!("spring"));

    let r = ts.get(&root, "/api/redemption/search?keyword=spr").await;
    assert_eq!(r.ok()["total"], json!(2));
    let row = find(&ts, &summer[0]).await;
    let id = row["id"].as_i64().unwrap();
    let r = ts
        .get(&root, &format!("/api/redemption/search?keyword={id}"))
        .await;
    assert_eq!(r.ok()["items"][0]["id"], json!(id));

    let r = ts.get(&root, &format!("/api/redemption/{id}")).await;
    assert_eq!(r.ok()["key"], json!(summer[0]));
    assert_eq!(r.ok()["quota"], json!(200));

    // Update: rename and re-price; absent fields keep their value.
    let r = ts
        .put(
            &root,
            "/api/redemption/",
            json!({"id": id, "name": "summer-2", "quota": 250}),
        )
        .await;
    assert_eq!(r.ok()["name"], json!("summer-2"));
    assert_eq!(r.ok()["quota"], json!(250));
    assert_eq!(r.ok()["status"], json!(1));
    assert_refused_unchanged!(
        ts,
        "name",
        ts.put(
            &root,
            "/api/redemption/",
            json!({"id": id, "name": "n".repeat(21)})
        )
    );
    assert_refused_unchanged!(
        ts,
        "quota",
        ts.put(&root, "/api/redemption/", json!({"id": id, "quota": 0}))
    );
    assert_refused_unchanged!(
        ts,
        "status",
        ts.put(&root, "/api/redemption/", json!({"id": id, "status": 3}))
    );

    // Disable: the code cannot be redeemed; enable again: it can.
    let r = ts
        .put(
            &root,
            "/api/redemption/?status_only=true",
            json!({"id": id, "status": 2, "name": "ignored"}),
        )
        .await;
    assert_eq!(r.ok()["status"], json!(2));
    assert_eq!(r.ok()["name"], json!("summer-2"));
    assert_refused_unchanged!(
        ts,
        "disabled",
        ts.post(&alice, "/api/user/topup", json!({"key": summer[0]}))
    );
    // status_only=false is a normal update.
    let r = ts
        .put(
            &root,
            "/api/redemption/?status_only=false",
            json!({"id": id, "status": 1, "name": "summer-3"}),
        )
        .await;
    assert_eq!(r.ok()["status"], json!(1));
    assert_eq!(r.ok()["name"], json!("summer-3"));
    let r = ts
        .post(&alice, "/api/user/topup", json!({"key": summer[0]}))
        .await;
    assert_eq!(r.ok(), &json!(250));
    let used = ts.get(&root, &format!("/api/redemption/{id}")).await;
    assert_eq!(used.ok()["status"], json!(3));
    assert_eq!(used.ok()["used_user_id"], json!(alice.id));
    // A used code stays used.
    assert_refused_unchanged!(
        ts,
        "used",
        ts.put(&root, "/api/redemption/", json!({"id": id, "status": 1}))
    );

    ts.delete(&root, &format!("/api/redemption/{id}"))
        .await
        .ok();
    ts.get(&root, &format!("/api/redemption/{id}"))
        .await
        .refused("not found");
    ts.delete(&root, &format!("/api/redemption/{id}"))
        .await
        .refused("not found");
    let r = ts.get(&root, "/api/redemption/").await;
    assert_eq!(r.ok()["total"], json!(2));
    ts.stop().await;
}

#[tokio::test]
async fn expired_codes_cannot_be_redeemed() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let codes = create(
        &ts,
        json!({"name": "soon", "quota": 9, "count": 1, "expired_time": now() + 3600}),
    )
    .await;
    let id = find(&ts, &codes[0]).await["id"].as_i64().unwrap();
    // Move the expiry into the past directly (the API refuses past expiries).
    let mut r = ts.store().redemption_by_id(id).await.unwrap();
    r.expired_time = now() - 1;
    ts.store().update_redemption(&r).await.unwrap();
    assert_refused_unchanged!(
        ts,
        "expired",
        ts.post(&alice, "/api/user/topup", json!({"key": codes[0]}))
    );
    ts.stop().await;
}
