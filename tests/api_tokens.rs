//! `/api/token/…` over HTTP (SPEC §3) plus the envelope and error rules of
//! SPEC §2 as the token routes show them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Caller, Db, TestServer, snapshot, spawn, spawn_on, spawn_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice::store::{LogRow, now};

fn mask(key: &str) -> String {
    format!("{}**********{}", &key[..4], &key[key.len() - 4..])
}

fn id_of(t: &Value) -> i64 {
    t["id"].as_i64().unwrap()
}

fn key_of(t: &Value) -> String {
    t["key"].as_str().unwrap().to_string()
}

async fn full_key(ts: &TestServer, c: &Caller, id: i64) -> String {
    let r = ts.post(c, &format!("/api/token/{id}/key"), json!({})).await;
    r.ok()["key"].as_str().unwrap().to_string()
}

/// The manage-log rows written after `before` (rows are newest first).
async fn new_manage_logs(ts: &TestServer, before: usize) -> Vec<LogRow> {
    let all = ts.manage_logs().await;
    let n = all.len() - before;
    all.into_iter().take(n).collect()
}

/// Asserts one manage row about `target` naming the root actor.
fn assert_names_root(rows: &[LogRow], target: i64, action: &str) {
    assert_eq!(
        rows.len(),
        1,
        "expected one manage row for {action}: {rows:?}"
    );
    let l = &rows[0].log;
    assert_eq!(l.log_type, 3);
    assert_eq!(l.user_id, target);
    assert!(
        l.content.contains("root"),
        "content names the actor: {}",
        l.content
    );
    let other: Value = serde_json::from_str(&l.other).unwrap();
    assert_eq!(other["actor_id"], json!(1), "{other}");
    assert_eq!(other["actor_username"], json!("root"));
    assert_eq!(other["action"], json!(action));
}

#[tokio::test]
async fn create_applies_defaults_and_returns_full_key() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let r = ts
        .post(&alice, "/api/token/", json!({"name": "  plain  "}))
        .await;
    assert_eq!(r.message(), "");
    let t = r.ok().clone();
    let key = key_of(&t);
    assert_eq!(key.len(), 48);
    assert!(key.chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
    assert!(!key.starts_with("sk-"));
    assert_eq!(t["name"], json!("plain"), "name is trimmed");
    assert_eq!(t["user_id"], json!(alice.id));
    assert_eq!(t["status"], json!(1));
    assert_eq!(t["remain_quota"], json!(0));
    assert_eq!(t["unlimited_quota"], json!(false));
    assert_eq!(t["expired_time"], json!(-1));
    assert_eq!(t["model_limits_enabled"], json!(false));
    assert_eq!(t["model_limits"], json!(""));
    assert_eq!(t["allow_ips"], json!(""));
    assert_eq!(t["group"], json!(""));
    assert_eq!(t["used_quota"], json!(0));
    let created = t["created_time"].as_i64().unwrap();
    assert!((now() - created).abs() < 60);

    // GET shows the same token with the key masked as new-api masks it.
    let got = ts.get(&alice, &format!("/api/token/{}", id_of(&t))).await;
    let g = got.ok();
    assert_eq!(g["key"], json!(mask(&key)));
    for f in [
        "id",
        "user_id",
        "name",
        "status",
        "remain_quota",
        "unlimited_quota",
        "expired_time",
        "model_limits_enabled",
        "model_limits",
        "allow_ips",
        "group",
        "created_time",
    ] {
        assert_eq!(g[f], t[f], "field {f}");
    }
    // Two keys are never the same.
    let t2 = ts.token(&alice, json!({"name": "second"})).await;
    assert_ne!(key_of(&t2), key);
    ts.stop().await;
}

#[tokio::test]
async fn create_with_every_field() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let exp = now() + 86_400;
    let body = json!({
        "name": "Production",
        "remain_quota": 100000,
        "unlimited_quota": true,
        "expired_time": exp,
        "model_limits_enabled": true,
        "model_limits": "[\"gpt-5.4\", \"claude-sonnet-4-6\"]",
        "allow_ips": "203.0.113.10\n10.0.0.0/8",
        "group": "vip",
    });
    let t = ts.token(&alice, body.clone()).await;
    let got = ts.get(&alice, &format!("/api/token/{}", id_of(&t))).await;
    for (k, v) in body.as_object().unwrap() {
        assert_eq!(&t[k], v, "create answer field {k}");
        assert_eq!(&got.ok()[k], v, "stored field {k}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn key_is_stored_only_as_hash_and_ciphertext() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let t = ts.token(&alice, json!({"name": "secret"})).await;
    let key = key_of(&t);
    let row = ts.token_row(id_of(&t)).await;
    for (col, v) in &row {
        if let Some(s) = v.as_str() {
            assert!(!s.contains(&key), "column {col} holds the key body");
            assert!(
                !s.contains(&key[..16]),
                "column {col} holds part of the key"
            );
        }
    }
    assert_eq!(
        row["key_hash"],
        json!(sluice::auth::keys::lookup_hash(&key)),
        "lookup is by SHA-256 of the body"
    );
    let cipher = row["key_cipher"].as_str().unwrap();
    let state = &ts.server.as_ref().unwrap().state;
    assert_eq!(state.secrets.decrypt(cipher).unwrap(), key);
    // No other table holds it either.
    let snap = snapshot(ts.store()).await.to_string();
    assert!(!snap.contains(&key));
    ts.stop().await;
}

#[tokio::test]
async fn list_paginates_with_aliases_newest_first_masked() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    ts.token(&bob, json!({"name": "bobs"})).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(ts.token(&alice, json!({"name": format!("t{i}")})).await);
    }
    let names = |d: &Value| -> Vec<String> {
        d["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ts.get(&alice, "/api/token/").await;
    let d = all.ok();
    assert_eq!(names(d), ["t4", "t3", "t2", "t1", "t0"]);
    assert_eq!(d["total"], json!(5));
    assert_eq!(d["page"], json!(1));
    assert_eq!(d["page_size"], json!(10));
    for (item, t) in d["items"].as_array().unwrap().iter().zip(made.iter().rev()) {
        assert_eq!(item["key"], json!(mask(&key_of(t))));
        assert_eq!(item["id"], t["id"]);
    }
    let p1 = ts.get(&alice, "/api/token/?p=1&size=2").await;
    assert_eq!(names(p1.ok()), ["t4", "t3"]);
    assert_eq!(p1.ok()["page_size"], json!(2));
    assert_eq!(p1.ok()["total"], json!(5));
    let p0 = ts.get(&alice, "/api/token/?p=0&size=2").await;
    assert_eq!(p0.ok()["items"], p1.ok()["items"], "p=0 is the first page");
    assert_eq!(p0.ok()["page"], json!(1));
    let p2 = ts.get(&alice, "/api/token/?p=2&page_size=2").await;
    assert_eq!(names(p2.ok()), ["t2", "t1"]);
    assert_eq!(p2.ok()["page"], json!(2));
    let p3 = ts.get(&alice, "/api/token/?p=3&ps=2").await;
    assert_eq!(names(p3.ok()), ["t0"]);
    let big = ts.get(&alice, "/api/token/?page_size=1000").await;
    assert_eq!(big.ok()["page_size"], json!(100));
    ts.stop().await;
}

#[tokio::test]
async fn search_by_name_and_by_key_substring() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    let a1 = ts.token(&alice, json!({"name": "alpha-one"})).await;
    let a2 = ts.token(&alice, json!({"name": "Alpha-two"})).await;
    let beta = ts.token(&alice, json!({"name": "beta"})).await;
    let bobs = ts.token(&bob, json!({"name": "alpha-bob"})).await;
    let ids = |r: &common::Resp| -> Vec<i64> {
        r.ok()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect()
    };
    let r = ts.get(&alice, "/api/token/search?keyword=alpha").await;
    assert_eq!(ids(&r), [id_of(&a2), id_of(&a1)]);
    assert_eq!(r.ok()["total"], json!(2));
    let r = ts.get(&alice, "/api/token/search?keyword=pha-t").await;
    assert_eq!(ids(&r), [id_of(&a2)]);
    let r = ts
        .get(&alice, "/api/token/search?keyword=alpha&size=1&p=2")
        .await;
    assert_eq!(ids(&r), [id_of(&a1)]);
    assert_eq!(r.ok()["total"], json!(2));

    let bk = key_of(&beta);
    let part = &bk[10..22];
    let r = ts
        .get(&alice, &format!("/api/token/search?token={part}"))
        .await;
    assert_eq!(ids(&r), [id_of(&beta)]);
    assert_eq!(
        r.ok()["items"][0]["key"],
        json!(mask(&bk)),
        "search masks keys"
    );
    let r = ts
        .get(&alice, &format!("/api/token/search?token=sk-{}", &bk[..20]))
        .await;
    assert_eq!(ids(&r), [id_of(&beta)], "sk- is stripped");
    let r = ts
        .get(&alice, &format!("/api/token/search?token=sk-{bk}"))
        .await;
    assert_eq!(ids(&r), [id_of(&beta)], "full key with sk-");
    let r = ts
        .get(
            &alice,
            &format!("/api/token/search?keyword=alpha&token={part}"),
        )
        .await;
    assert_eq!(ids(&r), Vec::<i64>::new(), "both filters apply");
    // Bob's key is not found by alice, by substring or in full.
    let bobk = key_of(&bobs);
    let r = ts
        .get(&alice, &format!("/api/token/search?token={}", &bobk[5..20]))
        .await;
    assert_eq!(r.ok()["total"], json!(0));
    let r = ts
        .get(&alice, &format!("/api/token/search?token={bobk}"))
        .await;
    assert_eq!(r.ok()["total"], json!(0));
    ts.stop().await;
}

#[tokio::test]
async fn update_is_partial_status_only_and_never_changes_the_key() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let exp = now() + 3600;
    let t = ts
        .token(
            &alice,
            json!({"name": "orig", "remain_quota": 10, "expired_time": exp,
                   "model_limits_enabled": true, "model_limits": "a,b",
                   "allow_ips": "1.2.3.4", "group": "vip"}),
        )
        .await;
    let id = id_of(&t);
    let key = key_of(&t);
    let hash_before = ts.token_row(id).await["key_hash"].clone();

    let r = ts
        .put(&alice, "/api/token/", json!({"id": id, "name": "renamed"}))
        .await;
    let u = r.ok().clone();
    assert_eq!(u["name"], json!("renamed"));
    assert_eq!(u["key"], json!(mask(&key)), "update answers the masked key");
    for f in [
        "remain_quota",
        "expired_time",
        "model_limits_enabled",
        "model_limits",
        "allow_ips",
        "group",
        "status",
        "unlimited_quota",
        "user_id",
        "created_time",
    ] {
        assert_eq!(u[f], t[f], "absent field {f} keeps its value");
    }
    let r = ts
        .put(
            &alice,
            "/api/token/",
            json!({"id": id, "remain_quota": 99, "unlimited_quota": true, "model_limits": "",
                   "model_limits_enabled": false, "allow_ips": "", "group": "default",
                   "expired_time": -1, "status": 2}),
        )
        .await;
    let u = r.ok().clone();
    assert_eq!(u["name"], json!("renamed"));
    assert_eq!(u["remain_quota"], json!(99));
    assert_eq!(u["unlimited_quota"], json!(true));
    assert_eq!(u["model_limits"], json!(""));
    assert_eq!(u["model_limits_enabled"], json!(false));
    assert_eq!(u["allow_ips"], json!(""));
    assert_eq!(u["group"], json!("default"));
    assert_eq!(u["expired_time"], json!(-1));
    assert_eq!(u["status"], json!(2));

    // status_only: only the status moves, whatever else the body says.
    let r = ts
        .put(
            &alice,
            "/api/token/?status_only=true",
            json!({"id": id, "status": 1, "name": "ignored", "remain_quota": 5}),
        )
        .await;
    let s = r.ok().clone();
    assert_eq!(s["status"], json!(1));
    assert_eq!(s["name"], json!("renamed"));
    assert_eq!(s["remain_quota"], json!(99));
    let got = ts.get(&alice, &format!("/api/token/{id}")).await;
    assert_eq!(got.ok()["name"], json!("renamed"));
    assert_eq!(got.ok()["status"], json!(1));

    // A key in the body is ignored: the key never changes.
    let r = ts
        .put(
            &alice,
            "/api/token/",
            json!({"id": id, "key": "x".repeat(48)}),
        )
        .await;
    r.ok();
    assert_eq!(full_key(&ts, &alice, id).await, key);
    assert_eq!(ts.token_row(id).await["key_hash"], hash_before);

    assert_refused_unchanged!(
        ts,
        "status",
        ts.put(
            &alice,
            "/api/token/?status_only=true",
            json!({"id": id, "name": "x"})
        )
    );
    // Bad status values are refused and change nothing.
    assert_refused_unchanged!(
        ts,
        "status",
        ts.put(&alice, "/api/token/", json!({"id": id, "status": 3}))
    );
    assert_refused_unchanged!(
        ts,
        "id",
        ts.put(&alice, "/api/token/", json!({"name": "no id"}))
    );
    // A refused field refuses the whole update: nothing is half-written.
    assert_refused_unchanged!(
        ts,
        "allow_ips",
        ts.put(
            &alice,
            "/api/token/",
            json!({"id": id, "name": "half", "remain_quota": 1, "allow_ips": "nope"})
        )
    );
    ts.stop().await;
}

#[tokio::test]
async fn delete_and_batch_delete() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    let a = ts.token(&alice, json!({"name": "a"})).await;
    let b = ts.token(&alice, json!({"name": "b"})).await;
    let c = ts.token(&alice, json!({"name": "c"})).await;
    let d = ts.token(&alice, json!({"name": "d"})).await;
    let bobs = ts.token(&bob, json!({"name": "bobs"})).await;

    let r = ts
        .delete(&alice, &format!("/api/token/{}", id_of(&a)))
        .await;
    r.ok();
    ts.get(&alice, &format!("/api/token/{}", id_of(&a)))
        .await
        .refused("not found");
    let r = ts
        .post(
            &alice,
            "/api/token/batch",
            json!({"ids": [id_of(&b), id_of(&c), id_of(&a), 99999, id_of(&bobs)]}),
        )
        .await;
    assert_eq!(r.ok(), &json!(2), "answers the number deleted");
    let list = ts.get(&alice, "/api/token/").await;
    assert_eq!(list.ok()["total"], json!(1));
    assert_eq!(list.ok()["items"][0]["id"], d["id"]);
    // Bob's token survived alice's batch.
    ts.get(&bob, &format!("/api/token/{}", id_of(&bobs)))
        .await
        .ok();

    assert_refused_unchanged!(
        ts,
        "ids",
        ts.post(&alice, "/api/token/batch", json!({"ids": []}))
    );
    assert_refused_unchanged!(ts, "ids", ts.post(&alice, "/api/token/batch", json!({})));
    let many: Vec<i64> = (0..101).map(|i| i + id_of(&d)).collect();
    assert_refused_unchanged!(
        ts,
        "ids",
        ts.post(&alice, "/api/token/batch", json!({"ids": many}))
    );
    ts.stop().await;
}

#[tokio::test]
async fn full_key_is_uncached_and_rate_limited_per_user() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    let t = ts.token(&alice, json!({"name": "k"})).await;
    let id = id_of(&t);
    let path = format!("/api/token/{id}/key");
    let first = ts.post(&alice, &path, json!({})).await;
    assert_eq!(first.ok()["key"], json!(key_of(&t)));
    assert_eq!(
        first
            .headers
            .get("cache-control")
            .unwrap()
            .to_str()
            .unwrap(),
        "no-store"
    );
    let bt = ts.token(&bob, json!({"name": "bk"})).await;

    // 30 per minute per user (a window opened by the first view): the 30th
    // passes, the 31st is refused.
    let mut ok = 1;
    let mut limited = None;
    for _ in 0..60 {
        let r = ts.post(&alice, &path, json!({})).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            r.error(StatusCode::TOO_MANY_REQUESTS);
            limited = Some(r);
            break;
        }
        r.ok();
        ok += 1;
    }
    assert!(limited.is_some(), "no 429 after {ok} key views");
    assert_eq!(ok, 30, "{ok} key views passed before the 429");
    // The batch route shares the budget.
    let r = ts
        .post(&alice, "/api/token/batch/keys", json!({"ids": [id]}))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another user has their own budget.
    let r = ts
        .post(&bob, &format!("/api/token/{}/key", id_of(&bt)), json!({}))
        .await;
    assert_eq!(r.ok()["key"], json!(key_of(&bt)));
    ts.stop().await;
}

#[tokio::test]
async fn batch_keys_returns_only_own_full_keys() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    let a = ts.token(&alice, json!({"name": "a"})).await;
    let b = ts.token(&alice, json!({"name": "b"})).await;
    let bobs = ts.token(&bob, json!({"name": "bobs"})).await;
    let r = ts
        .post(
            &alice,
            "/api/token/batch/keys",
            json!({"ids": [id_of(&a), id_of(&b), id_of(&bobs), 4242]}),
        )
        .await;
    assert_eq!(
        r.headers.get("cache-control").unwrap().to_str().unwrap(),
        "no-store"
    );
    let mut want = serde_json::Map::new();
    want.insert(id_of(&a).to_string(), json!(key_of(&a)));
    want.insert(id_of(&b).to_string(), json!(key_of(&b)));
    assert_eq!(r.ok(), &json!({ "keys": want }));
    let hundred: Vec<i64> = (1..=100).collect();
    let r = ts
        .post(&alice, "/api/token/batch/keys", json!({"ids": hundred}))
        .await;
    assert_eq!(r.ok()["keys"].as_object().unwrap().len(), 2);
    let many: Vec<i64> = (1..=101).collect();
    ts.post(&alice, "/api/token/batch/keys", json!({"ids": many}))
        .await
        .refused("ids");
    ts.stop().await;
}

#[tokio::test]
async fn usage_answers_for_an_sk_key() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let exp = now() + 7200;
    let t = ts
        .token(
            &alice,
            json!({"name": "meter", "remain_quota": 1234, "expired_time": exp,
                   "model_limits_enabled": true, "model_limits": "[\"m1\",\"m2\"]"}),
        )
        .await;
    let key = key_of(&t);
    let get = |auth: Option<String>| {
        let mut rb = ts.anon(Method::GET, "/api/usage/token");
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        ts.send(rb)
    };
    let r = get(Some(format!("Bearer sk-{key}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["code"], json!(true), "{}", r.body);
    assert_eq!(r.body["message"], json!("ok"));
    let d = &r.body["data"];
    assert_eq!(d["object"], json!("token_usage"));
    assert_eq!(d["name"], json!("meter"));
    assert_eq!(d["total_granted"], json!(1234));
    assert_eq!(d["total_used"], json!(0));
    assert_eq!(d["total_available"], json!(1234));
    assert_eq!(d["unlimited_quota"], json!(false));
    assert_eq!(d["model_limits_enabled"], json!(true));
    assert_eq!(d["model_limits"], json!({"m1": true, "m2": true}));
    assert_eq!(d["expires_at"], json!(exp));
    // Without the sk- prefix too.
    let r = get(Some(format!("Bearer {key}"))).await;
    assert_eq!(r.body["data"]["name"], json!("meter"));
    // A never-expiring key reports 0, as new-api.
    let t2 = ts.token(&alice, json!({"name": "forever"})).await;
    let r = get(Some(format!("Bearer sk-{}", key_of(&t2)))).await;
    assert_eq!(r.body["data"]["expires_at"], json!(0));
    assert_eq!(r.body["data"]["model_limits"], json!({}));
    // Bad or missing keys.
    get(None).await.error(StatusCode::UNAUTHORIZED);
    get(Some(format!("Bearer sk-{}", "A".repeat(48))))
        .await
        .error(StatusCode::UNAUTHORIZED);
    get(Some(format!("Basic {key}")))
        .await
        .error(StatusCode::UNAUTHORIZED);
    // A management access token is not an API key.
    get(Some(format!("Bearer {}", alice.token)))
        .await
        .error(StatusCode::UNAUTHORIZED);
    ts.stop().await;
}

#[tokio::test]
async fn name_rules() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let create = |name: Value| ts.post(&alice, "/api/token/", json!({ "name": name }));
    assert_refused_unchanged!(ts, "name", create(json!("")));
    assert_refused_unchanged!(ts, "name", create(json!("   \t ")));
    assert_refused_unchanged!(ts, "name", create(json!("x".repeat(51))));
    assert_refused_unchanged!(ts, "name", create(json!("é".repeat(51))));
    assert_refused_unchanged!(ts, "name", ts.post(&alice, "/api/token/", json!({})));
    let r = create(json!("x".repeat(50))).await;
    assert_eq!(r.ok()["name"], json!("x".repeat(50)));
    // 50 characters, more than 50 bytes.
    let multi = "令牌".repeat(25);
    let r = create(json!(multi)).await;
    assert_eq!(r.ok()["name"], json!(multi));
    let r = create(json!(format!("  {}  ", "y".repeat(50)))).await;
    assert_eq!(
        r.ok()["name"],
        json!("y".repeat(50)),
        "length counts after trim"
    );
    let id = id_of(r.ok());
    assert_refused_unchanged!(
        ts,
        "name",
        ts.put(&alice, "/api/token/", json!({"id": id, "name": " "}))
    );
    assert_refused_unchanged!(
        ts,
        "name",
        ts.put(
            &alice,
            "/api/token/",
            json!({"id": id, "name": "z".repeat(51)})
        )
    );
    ts.stop().await;
}

#[tokio::test]
async fn quota_and_expiry_rules() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let create = |b: Value| ts.post(&alice, "/api/token/", b);
    assert_refused_unchanged!(
        ts,
        "remain_quota",
        create(json!({"name": "n", "remain_quota": -1}))
    );
    let r = create(json!({"name": "n", "remain_quota": 0})).await;
    let id = id_of(r.ok());
    assert_refused_unchanged!(
        ts,
        "remain_quota",
        ts.put(&alice, "/api/token/", json!({"id": id, "remain_quota": -5}))
    );
    assert_refused_unchanged!(
        ts,
        "expired_time",
        create(json!({"name": "n", "expired_time": now() - 10}))
    );
    assert_refused_unchanged!(
        ts,
        "expired_time",
        create(json!({"name": "n", "expired_time": 0}))
    );
    assert_refused_unchanged!(
        ts,
        "expired_time",
        create(json!({"name": "n", "expired_time": -2}))
    );
    let future = now() + 100;
    let r = create(json!({"name": "n", "expired_time": future})).await;
    assert_eq!(r.ok()["expired_time"], json!(future));
    let r = create(json!({"name": "n", "expired_time": -1})).await;
    assert_eq!(r.ok()["expired_time"], json!(-1));
    ts.stop().await;
}

#[tokio::test]
async fn model_limits_are_kept_as_given_and_bad_forms_refused() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    for given in [
        "[\"gpt-5.4\",\"claude-sonnet-4-6\"]",
        "[\"gpt-5.4\", \"claude-sonnet-4-6\"]",
        "gpt-5.4,claude-sonnet-4-6",
        "gpt-5.4, claude-sonnet-4-6",
        "single-model",
    ] {
        let t = ts
            .token(
                &alice,
                json!({"name": "m", "model_limits_enabled": true, "model_limits": given}),
            )
            .await;
        assert_eq!(t["model_limits"], json!(given));
        let got = ts.get(&alice, &format!("/api/token/{}", id_of(&t))).await;
        assert_eq!(got.ok()["model_limits"], json!(given), "returned as given");
    }
    for bad in [
        "[\"a\",",
        "[1,2]",
        "a,,b",
        "[\"a\", \"\"]",
        "{\"a\":true}",
        ",",
    ] {
        assert_refused_unchanged!(
            ts,
            "model_limits",
            ts.post(
                &alice,
                "/api/token/",
                json!({"name": "m", "model_limits": bad})
            )
        );
    }
    let t = ts.token(&alice, json!({"name": "m"})).await;
    assert_refused_unchanged!(
        ts,
        "model_limits",
        ts.put(
            &alice,
            "/api/token/",
            json!({"id": id_of(&t), "model_limits": "x,,y"})
        )
    );
    ts.stop().await;
}

#[tokio::test]
async fn allow_ips_are_validated_entry_by_entry() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    for given in [
        "203.0.113.10",
        "203.0.113.10\n10.0.0.0/8\n::1",
        "1.2.3.4,5.6.7.0/24",
        "2001:db8::/32, 192.168.1.1",
    ] {
        let t = ts
            .token(&alice, json!({"name": "ip", "allow_ips": given}))
            .await;
        assert_eq!(t["allow_ips"], json!(given));
    }
    for bad in [
        "203.0.113.10\nnot-an-ip",
        "1.2.3.4/33",
        "1.2.3.4,999.1.1.1",
        "10.0.0.0/8\n::1\nexample.com",
        "1.2.3",
    ] {
        let r = assert_refused_unchanged!(
            ts,
            "allow_ips",
            ts.post(
                &alice,
                "/api/token/",
                json!({"name": "ip", "allow_ips": bad})
            )
        );
        let culprit = bad.split(['\n', ',']).map(str::trim).next_back().unwrap();
        assert!(
            r.message().contains(culprit),
            "{} names {culprit}",
            r.message()
        );
    }
    ts.stop().await;
}

#[tokio::test]
async fn group_must_be_own_or_user_selectable() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    // Defaults: UserUsableGroups is {"default", "vip"}; alice is in "default".
    for g in ["default", "vip", ""] {
        let t = ts.token(&alice, json!({"name": "g", "group": g})).await;
        assert_eq!(t["group"], json!(g));
    }
    assert_refused_unchanged!(
        ts,
        "group",
        ts.post(&alice, "/api/token/", json!({"name": "g", "group": "svip"}))
    );
    ts.set_option(
        "UserUsableGroups",
        r#"{"default":"Default","svip":"Super"}"#,
    )
    .await;
    let t = ts
        .token(&alice, json!({"name": "g", "group": "svip"}))
        .await;
    assert_eq!(t["group"], json!("svip"));
    assert_refused_unchanged!(
        ts,
        "group",
        ts.post(&alice, "/api/token/", json!({"name": "g", "group": "vip"}))
    );
    assert_refused_unchanged!(
        ts,
        "group",
        ts.put(
            &alice,
            "/api/token/",
            json!({"id": id_of(&t), "group": "vip"})
        )
    );
    // A user's own group is always allowed, listed or not.
    ts.put(
        &ts.root(),
        "/api/user/",
        json!({"id": alice.id, "group": "partners"}),
    )
    .await
    .ok();
    let t = ts
        .token(&alice, json!({"name": "g", "group": "partners"}))
        .await;
    assert_eq!(t["group"], json!("partners"));
    ts.stop().await;
}

#[tokio::test]
async fn re_enabling_an_expired_or_exhausted_token_is_refused() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    // Expired: the system marked it 3 after its expiry passed.
    let t = ts
        .token(
            &alice,
            json!({"name": "exp", "remain_quota": 10, "expired_time": now() + 1000}),
        )
        .await;
    let id = id_of(&t);
    ts.put(
        &alice,
        "/api/token/",
        json!({"id": id, "expired_time": now() - 5}),
    )
    .await
    .ok();
    ts.store().set_token_status(id, 3).await.unwrap();
    let r = assert_refused_unchanged!(
        ts,
        "expired",
        ts.put(&alice, "/api/token/", json!({"id": id, "status": 1}))
    );
    assert!(r.message().contains("expired_time"), "{}", r.message());
    assert_refused_unchanged!(
        ts,
        "expired",
        ts.put(
            &alice,
            "/api/token/?status_only=true",
            json!({"id": id, "status": 1})
        )
    );
    // Disabled by the user with a past expiry: same refusal.
    ts.store().set_token_status(id, 2).await.unwrap();
    assert_refused_unchanged!(
        ts,
        "expired",
        ts.put(&alice, "/api/token/", json!({"id": id, "status": 1}))
    );
    // Moving the expiry forward in the same request makes it allowed.
    let r = ts
        .put(
            &alice,
            "/api/token/",
            json!({"id": id, "status": 1, "expired_time": -1}),
        )
        .await;
    assert_eq!(r.ok()["status"], json!(1));

    // Exhausted and not unlimited.
    let t = ts
        .token(&alice, json!({"name": "ex", "remain_quota": 0}))
        .await;
    let id = id_of(&t);
    ts.store().set_token_status(id, 4).await.unwrap();
    assert_refused_unchanged!(
        ts,
        "exhausted",
        ts.put(&alice, "/api/token/", json!({"id": id, "status": 1}))
    );
    let r = ts
        .put(
            &alice,
            "/api/token/",
            json!({"id": id, "status": 1, "remain_quota": 50}),
        )
        .await;
    assert_eq!(r.ok()["status"], json!(1));
    // Exhausted but unlimited may be enabled.
    let t = ts
        .token(
            &alice,
            json!({"name": "unl", "remain_quota": 0, "unlimited_quota": true}),
        )
        .await;
    ts.store().set_token_status(id_of(&t), 4).await.unwrap();
    let r = ts
        .put(
            &alice,
            "/api/token/?status_only=true",
            json!({"id": id_of(&t), "status": 1}),
        )
        .await;
    assert_eq!(r.ok()["status"], json!(1));
    ts.stop().await;
}

#[tokio::test]
async fn per_user_token_cap() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    ts.set_option("MaxUserTokens", "3").await;
    for i in 0..3 {
        ts.token(&alice, json!({"name": format!("t{i}")})).await;
    }
    assert_refused_unchanged!(
        ts,
        "limit",
        ts.post(&alice, "/api/token/", json!({"name": "one too many"}))
    );
    // The cap is per user.
    ts.token(&bob, json!({"name": "bobs"})).await;
    // Deleting one makes room again.
    let list = ts.get(&alice, "/api/token/").await;
    let first = list.ok()["items"][0]["id"].as_i64().unwrap();
    ts.delete(&alice, &format!("/api/token/{first}")).await.ok();
    ts.token(&alice, json!({"name": "again"})).await;
    ts.stop().await;
}

async fn concurrent_cap(kind: Db) {
    let Some(ts) = spawn_on(kind).await else {
        return;
    };
    let alice = ts.fast_user("alice", 1).await;
    const CAP: usize = 4;
    const N: usize = 16;
    ts.set_option("MaxUserTokens", &CAP.to_string()).await;
    let mut tasks = Vec::new();
    for i in 0..N {
        let rb = ts
            .req(&alice, Method::POST, "/api/token/")
            .json(&json!({"name": format!("c{i}")}));
        tasks.push(tokio::spawn(async move {
            let r = rb.send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["success"] == json!(true) {
            created += 1;
        } else {
            assert!(
                body["message"].as_str().unwrap().contains("limit"),
                "{body}"
            );
        }
    }
    let list = ts.get(&alice, "/api/token/?size=100").await;
    let total = list.ok()["total"].as_i64().unwrap() as usize;
    assert_eq!(total, created);
    assert_eq!(created, CAP, "{N} parallel creates against cap {CAP}");
    ts.stop().await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_cap_sqlite() {
    concurrent_cap(Db::Sqlite).await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_cap_postgres() {
    concurrent_cap(Db::Postgres).await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_cap_mysql() {
    concurrent_cap(Db::Mysql).await;
}

#[tokio::test]
async fn root_acts_on_another_users_tokens_and_each_act_is_logged() {
    let ts = spawn().await;
    let root = ts.root();
    let alice = ts.fast_user("alice", 1).await;
    let own = ts.token(&root, json!({"name": "roots own"})).await;

    // Create for alice.
    let n = ts.manage_logs().await.len();
    let t = ts
        .token(&root, json!({"name": "for-alice", "user_id": alice.id}))
        .await;
    assert_eq!(t["user_id"], json!(alice.id));
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_create",
    );
    let id = id_of(&t);
    let seen = ts.get(&alice, &format!("/api/token/{id}")).await;
    assert_eq!(seen.ok()["name"], json!("for-alice"));
    // Creating for oneself by id writes no manage row.
    let n = ts.manage_logs().await.len();
    ts.token(&root, json!({"name": "self", "user_id": 1})).await;
    assert_eq!(ts.manage_logs().await.len(), n);
    // Creating for a user that does not exist is refused.
    assert_refused_unchanged!(
        ts,
        "user_id",
        ts.post(
            &root,
            "/api/token/",
            json!({"name": "x", "user_id": 424242})
        )
    );

    // Root's own list holds only root's tokens; ?user_id= shows alice's.
    let n = ts.manage_logs().await.len();
    let mine = ts.get(&root, "/api/token/").await;
    assert_eq!(mine.ok()["total"], json!(2), "{}", mine.body);
    assert!(
        mine.ok()["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["user_id"] == json!(1))
    );
    assert_eq!(ts.manage_logs().await.len(), n, "own list writes no row");
    let theirs = ts
        .get(&root, &format!("/api/token/?user_id={}", alice.id))
        .await;
    assert_eq!(theirs.ok()["total"], json!(1));
    assert_eq!(theirs.ok()["items"][0]["id"], json!(id));
    assert_eq!(theirs.ok()["items"][0]["key"], json!(mask(&key_of(&t))));
    assert_names_root(&new_manage_logs(&ts, n).await, alice.id, "token.admin_list");

    let n = ts.manage_logs().await.len();
    let found = ts
        .get(
            &root,
            &format!("/api/token/search?keyword=alice&user_id={}", alice.id),
        )
        .await;
    assert_eq!(found.ok()["total"], json!(1));
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_search",
    );

    let n = ts.manage_logs().await.len();
    let r = ts
        .put(&root, "/api/token/", json!({"id": id, "remain_quota": 777}))
        .await;
    assert_eq!(r.ok()["remain_quota"], json!(777));
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_update",
    );

    let n = ts.manage_logs().await.len();
    assert_eq!(full_key(&ts, &root, id).await, key_of(&t));
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_key_view",
    );

    let n = ts.manage_logs().await.len();
    let r = ts
        .post(
            &root,
            "/api/token/batch/keys",
            json!({"ids": [id, id_of(&own)]}),
        )
        .await;
    assert_eq!(r.ok()["keys"][id.to_string()], json!(key_of(&t)));
    assert_eq!(r.ok()["keys"][id_of(&own).to_string()], json!(key_of(&own)));
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_key_view",
    );

    // Viewing one's own full key writes nothing.
    let n = ts.manage_logs().await.len();
    full_key(&ts, &root, id_of(&own)).await;
    assert_eq!(ts.manage_logs().await.len(), n);

    let n = ts.manage_logs().await.len();
    ts.delete(&root, &format!("/api/token/{id}")).await.ok();
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_delete",
    );
    ts.get(&alice, &format!("/api/token/{id}"))
        .await
        .refused("not found");

    let t2 = ts
        .token(&root, json!({"name": "for-alice-2", "user_id": alice.id}))
        .await;
    let n = ts.manage_logs().await.len();
    let r = ts
        .post(&root, "/api/token/batch", json!({"ids": [id_of(&t2)]}))
        .await;
    assert_eq!(r.ok(), &json!(1));
    assert_names_root(
        &new_manage_logs(&ts, n).await,
        alice.id,
        "token.admin_delete",
    );
    ts.stop().await;
}

#[tokio::test]
async fn only_root_names_another_owner() {
    let ts = spawn().await;
    let admin = ts.fast_user("admin", 10).await;
    let alice = ts.fast_user("alice", 1).await;
    assert_refused_unchanged!(
        ts,
        "user_id",
        ts.post(
            &admin,
            "/api/token/",
            json!({"name": "x", "user_id": alice.id})
        )
    );
    // ?user_id= from a non-root caller is ignored: they see their own.
    ts.token(&alice, json!({"name": "alices"})).await;
    let r = ts
        .get(&admin, &format!("/api/token/?user_id={}", alice.id))
        .await;
    assert_eq!(r.ok()["total"], json!(0));
    let r = ts
        .get(
            &admin,
            &format!("/api/token/search?keyword=alices&user_id={}", alice.id),
        )
        .await;
    assert_eq!(r.ok()["total"], json!(0));
    ts.stop().await;
}

#[tokio::test]
async fn malformed_json_and_wrong_types_answer_400_naming_the_field() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let before = snapshot(ts.store()).await;
    let r = ts
        .send(
            ts.req(&alice, Method::POST, "/api/token/")
                .header("Content-Type", "application/json")
                .body("{\"name\": \"x\","),
        )
        .await;
    r.error(StatusCode::BAD_REQUEST);
    for (field, value) in [
        ("remain_quota", json!("abc")),
        ("name", json!(12)),
        ("unlimited_quota", json!("yes")),
        ("expired_time", json!(1.5)),
        ("model_limits", json!(7)),
        ("allow_ips", json!(["1.2.3.4"])),
    ] {
        let mut body = json!({"name": "typed"});
        body[field] = value;
        let r = ts.post(&alice, "/api/token/", body).await;
        r.error(StatusCode::BAD_REQUEST);
        assert!(r.message().contains(field), "{} names {field}", r.message());
    }
    let r = ts
        .put(&alice, "/api/token/", json!({"id": "one", "name": "x"}))
        .await;
    r.error(StatusCode::BAD_REQUEST);
    assert!(r.message().contains("id"));
    let r = ts
        .post(&alice, "/api/token/batch", json!({"ids": "1,2"}))
        .await;
    r.error(StatusCode::BAD_REQUEST);
    assert!(r.message().contains("ids"));
    assert_eq!(before, snapshot(ts.store()).await);
    // Odd query strings still answer with the envelope, never plain text.
    let t = ts.token(&alice, json!({"name": "q"})).await;
    for q in [
        "?status_only=1&status_only=true",
        "?p=1&p=2&size=a",
        "?status_only=%FF",
    ] {
        let r = ts
            .put(
                &alice,
                &format!("/api/token/{q}"),
                json!({"id": id_of(&t), "status": 2}),
            )
            .await;
        assert!(
            r.body["success"].is_boolean(),
            "PUT {q}: {} {}",
            r.status,
            r.body
        );
        let r = ts.get(&alice, &format!("/api/token/{q}")).await;
        assert!(
            r.body["success"].is_boolean(),
            "GET {q}: {} {}",
            r.status,
            r.body
        );
    }
    ts.stop().await;
}

#[tokio::test]
async fn oversized_body_answers_413() {
    let ts = spawn_with(Db::Sqlite, |c| c.max_body_bytes = 2048)
        .await
        .unwrap();
    let alice = ts.fast_user("alice", 1).await;
    let before = snapshot(ts.store()).await;
    let r = ts
        .post(
            &alice,
            "/api/token/",
            json!({"name": "big", "allow_ips": "1.2.3.4\n".repeat(1000)}),
        )
        .await;
    r.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(before, snapshot(ts.store()).await);
    // Under the limit still works.
    ts.token(&alice, json!({"name": "small"})).await;
    ts.stop().await;
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let t = ts
        .token(
            &alice,
            json!({"name": "newer client", "cross_group_retry": true,
                   "auto_groups": ["a", "b"], "mj_mode": {"x": 1}, "key": "ignored"}),
        )
        .await;
    assert_eq!(t["name"], json!("newer client"));
    assert_ne!(t["key"], json!("ignored"));
    let r = ts
        .put(
            &alice,
            "/api/token/",
            json!({"id": id_of(&t), "name": "still", "cross_group_retry": false, "used_quota": 5,
                   "user_id": 1, "created_time": 7}),
        )
        .await;
    assert_eq!(r.ok()["name"], json!("still"));
    assert_eq!(
        r.ok()["used_quota"],
        json!(0),
        "used_quota is not user-settable"
    );
    assert_eq!(
        r.ok()["user_id"],
        json!(alice.id),
        "a token never changes owner"
    );
    assert_eq!(r.ok()["created_time"], t["created_time"]);
    ts.stop().await;
}

#[tokio::test]
async fn another_users_id_answers_like_a_missing_one() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    let t = ts.token(&bob, json!({"name": "bobs"})).await;
    let theirs = id_of(&t);
    let missing = theirs + 1000;
    let before = snapshot(ts.store()).await;
    for (method, path, body) in [
        (Method::GET, "/api/token/{}", None),
        (Method::DELETE, "/api/token/{}", None),
        (Method::POST, "/api/token/{}/key", Some(json!({}))),
        (
            Method::PUT,
            "/api/token/",
            Some(json!({"id": "{}", "name": "mine now"})),
        ),
        (
            Method::PUT,
            "/api/token/?status_only=true",
            Some(json!({"id": "{}", "status": 2})),
        ),
    ] {
        let mut answers = Vec::new();
        for id in [theirs, missing] {
            let path = path.replace("{}", &id.to_string());
            let mut rb = ts.req(&alice, method.clone(), &path);
            if let Some(b) = &body {
                let mut b = b.clone();
                if b.get("id").is_some() {
                    b["id"] = json!(id);
                }
                rb = rb.json(&b);
            }
            let r = ts.send(rb).await;
            answers.push((r.status, r.body));
        }
        assert_eq!(answers[0], answers[1], "{method} {path}");
        assert_eq!(answers[0].1["success"], json!(false));
    }
    assert_eq!(before, snapshot(ts.store()).await);
    ts.stop().await;
}
