//! The channel admin API (SPEC §5): both create shapes, batch mode, list,
//! search, get, update, delete, test, models, key masking and who may do
//! what.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Db, TestServer, spawn, spawn_on};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY_A: &str = "sk-upstreamAAAA1111222233334444";
const KEY_B: &str = "sk-upstreamBBBB5555666677778888";
const KEY_C: &str = "sk-upstreamCCCC9999000011112222";

fn masked(k: &str) -> String {
    let n = k.len();
    format!("{}**********{}", &k[..4], &k[n - 4..])
}

async fn create(ts: &TestServer, body: Value) -> Vec<i64> {
    let r = ts.post(&ts.root(), "/api/channel/", body).await;
    r.ok()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn full(name: &str, key: &str) -> Value {
    json!({
        "type": 1, "name": name, "key": key, "base_url": "https://api.example.com/",
        "models": "gpt-4o, gpt-4o-mini", "model_mapping": "{\"gpt-4o\":\"gpt-4o-2024-08-06\"}",
        "group": "default,vip", "priority": 7, "weight": 3, "status": 1,
        "test_model": "gpt-4o-mini", "other": "{\"region\":\"eu\"}",
    })
}

#[tokio::test]
async fn create_in_both_shapes_and_read_every_field() {
    let ts = spawn().await;
    // one-api: the bare object.
    let ids = create(&ts, full("bare", KEY_A)).await;
    assert_eq!(ids.len(), 1);
    let c = ts.channel_of(ids[0]).await;
    assert_eq!(c["id"], json!(ids[0]));
    assert_eq!(c["type"], json!(1));
    assert_eq!(c["name"], json!("bare"));
    assert_eq!(c["key"], json!(masked(KEY_A)));
    assert_eq!(c["base_url"], json!("https://api.example.com"));
    assert_eq!(c["models"], json!("gpt-4o,gpt-4o-mini"));
    assert_eq!(
        c["model_mapping"],
        json!("{\"gpt-4o\":\"gpt-4o-2024-08-06\"}")
    );
    assert_eq!(c["group"], json!("default,vip"));
    assert_eq!(c["priority"], json!(7));
    assert_eq!(c["weight"], json!(3));
    assert_eq!(c["status"], json!(1));
    assert_eq!(c["test_model"], json!("gpt-4o-mini"));
    assert_eq!(c["response_time"], json!(0));
    assert_eq!(c["used_quota"], json!(0));
    assert_eq!(c["balance"].as_f64(), Some(0.0));
    assert_eq!(c["other"], json!("{\"region\":\"eu\"}"));
    assert!(c["created_time"].as_i64().unwrap() > 0);
    // new-api, single: several keys on lines of ONE channel.
    let two = format!("{KEY_A}\n{KEY_B}");
    let ids = create(
        &ts,
        json!({"mode": "single", "channel": full("single", &two)}),
    )
    .await;
    assert_eq!(ids.len(), 1);
    let c = ts.channel_of(ids[0]).await;
    assert_eq!(c["name"], json!("single"));
    assert_eq!(
        c["key"],
        json!(format!("{}\n{}", masked(KEY_A), masked(KEY_B)))
    );
    // new-api, batch: one channel per key line (blank lines ignored).
    let three = format!("{KEY_A}\n\n{KEY_B}\n{KEY_C}\n");
    let ids = create(
        &ts,
        json!({"mode": "batch", "channel": full("batch", &three)}),
    )
    .await;
    assert_eq!(ids.len(), 3);
    for (id, k) in ids.iter().zip([KEY_A, KEY_B, KEY_C]) {
        let c = ts.channel_of(*id).await;
        assert_eq!(c["key"], json!(masked(k)));
        assert_eq!(c["models"], json!("gpt-4o,gpt-4o-mini"));
        assert_eq!(c["priority"], json!(7));
        // Root reads each full key.
        let r = ts
            .post(&ts.root(), &format!("/api/channel/{id}/key"), json!({}))
            .await;
        assert_eq!(r.ok()["key"], json!(k));
        assert_eq!(r.headers["cache-control"], "no-store");
    }
    // Custom (type 8) needs a base URL; OpenAI (type 1) has a default.
    let r = ts
        .post(
            &ts.root(),
            "/api/channel/",
            json!({"type": 8, "name": "custom", "key": "k", "models": "m"}),
        )
        .await;
    r.refused("base_url");
    let ids = create(
        &ts,
        json!({"type": 8, "name": "custom", "key": "k", "models": "m",
               "base_url": "http://10.0.0.5:8000/v1"}),
    )
    .await;
    assert_eq!(ts.channel_of(ids[0]).await["type"], json!(8));
    let ids = create(
        &ts,
        json!({"type": 1, "name": "official", "key": "k", "models": "m"}),
    )
    .await;
    let c = ts.channel_of(ids[0]).await;
    assert_eq!(c["group"], json!("default"));
    assert_eq!(c["status"], json!(1));
    // Unknown fields newer clients send are ignored.
    let ids = create(
        &ts,
        json!({"mode": "single", "multi_key_mode": "random", "channel":
               {"type": 1, "name": "extra", "key": "k", "models": "m", "auto_groups": []}}),
    )
    .await;
    assert_eq!(ids.len(), 1);
    ts.stop().await;
}

#[tokio::test]
async fn bad_channels_are_refused_whole() {
    let ts = spawn().await;
    let root = ts.root();
    let base = full("x", KEY_A);
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, field) in [
        (with("type", json!(999)), "type"),
        (with("name", json!("  ")), "name"),
        (with("key", json!("")), "key"),
        (with("models", json!("")), "models"),
        (with("model_mapping", json!("not json")), "model_mapping"),
        (with("base_url", json!("ftp://x")), "base_url"),
        (with("weight", json!(-1)), "weight"),
        (with("status", json!(7)), "status"),
        (with("group", json!(" , ")), "group"),
        (json!({"mode": "weird", "channel": base.clone()}), "mode"),
    ] {
        let r = ts.post(&root, "/api/channel/", body).await;
        r.refused(field);
    }
    let r = ts.get(&root, "/api/channel/").await;
    assert_eq!(r.ok()["total"], json!(0), "nothing was written");
    ts.stop().await;
}

#[tokio::test]
async fn list_search_get_update_delete_sqlite() {
    list_search_get_update_delete(Db::Sqlite).await;
}

#[tokio::test]
async fn list_search_get_update_delete_postgres() {
    list_search_get_update_delete(Db::Postgres).await;
}

#[tokio::test]
async fn list_search_get_update_delete_mysql() {
    list_search_get_update_delete(Db::Mysql).await;
}

async fn list_search_get_update_delete(db: Db) {
    let Some(ts) = spawn_on(db).await else { return };
    let root = ts.root();
    let mut ids = Vec::new();
    for i in 0..12 {
        let mut b = full(&format!("chan-{i:02}"), KEY_A);
        b["priority"] = json!(i % 3);
        if i == 5 {
            b["type"] = json!(8);
            b["name"] = json!("special-one");
            b["base_url"] = json!("http://special.local");
        }
        ids.extend(create(&ts, b).await);
    }
    // List: paginated, highest priority first, keys masked.
    let r = ts.get(&root, "/api/channel/?p=1&page_size=5").await;
    let d = r.ok();
    assert_eq!(d["total"], json!(12));
    let items = d["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let prios: Vec<i64> = items
        .iter()
        .map(|c| c["priority"].as_i64().unwrap())
        .collect();
    assert_eq!(prios, vec![2, 2, 2, 2, 1], "highest priority first");
    assert!(items.iter().all(|c| c["key"] == json!(masked(KEY_A))));
    assert!(
        !r.body.to_string().contains(KEY_A),
        "full keys never listed"
    );
    let r = ts.get(&root, "/api/channel/?p=3&page_size=5").await;
    assert_eq!(r.ok()["items"].as_array().unwrap().len(), 2);
    let r = ts
        .get(&root, "/api/channel/?id_sort=true&page_size=100")
        .await;
    let listed: Vec<i64> = r.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(listed, want);
    // Search by name, by base URL, by id; with a type filter.
    let search = |q: &'static str| {
        let ts = &ts;
        async move {
            ts.get(&ts.root(), &format!("/api/channel/search?{q}"))
                .await
                .ok()
                .clone()
        }
    };
    let r = search("keyword=special").await;
    assert_eq!(r["total"], json!(1));
    assert_eq!(r["items"][0]["id"], json!(ids[5]));
    let r = search("keyword=SPECIAL.LOCAL").await;
    assert_eq!(r["total"], json!(1));
    // chan-00 … chan-09, less the one renamed.
    let r = search("keyword=chan-0").await;
    assert_eq!(r["total"], json!(9));
    let r = search("keyword=chan&type=8").await;
    assert_eq!(r["total"], json!(0));
    let r = search("type=8").await;
    assert_eq!(r["total"], json!(1));
    let r = ts
        .get(&root, &format!("/api/channel/search?keyword={}", ids[7]))
        .await;
    assert!(
        r.ok()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == json!(ids[7]))
    );
    // Status filters: exact, and new-api's enabled / disabled words.
    ts.put(&root, "/api/channel/", json!({"id": ids[0], "status": 2}))
        .await
        .ok();
    ts.put(&root, "/api/channel/", json!({"id": ids[1], "status": 3}))
        .await
        .ok();
    let r = search("status=enabled&page_size=100").await;
    assert_eq!(r["total"], json!(10));
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == json!(1))
    );
    let r = search("status=3").await;
    assert_eq!(r["total"], json!(1));
    assert_eq!(r["items"][0]["id"], json!(ids[1]));
    let r = search("status=disabled").await;
    assert_eq!(r["total"], json!(2), "{r}");
    // Group filter matches a whole element of the comma list.
    ts.put(
        &root,
        "/api/channel/",
        json!({"id": ids[2], "group": "vipx"}),
    )
    .await
    .ok();
    let r = search("group=vip&page_size=100").await;
    assert_eq!(r["total"], json!(11));
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != json!(ids[2]))
    );
    let r = ts.get(&root, "/api/channel/").await;
    assert_eq!(r.ok()["type_counts"], json!({"1": 11, "8": 1}));
    // Update is partial: absent fields keep their value; the key stays
    // unless a new one is given.
    let id = ids[3];
    let before = ts.channel_of(id).await;
    let r = ts
        .put(
            &root,
            "/api/channel/",
            json!({"id": id, "priority": 42, "name": "renamed"}),
        )
        .await;
    let after = r.ok().clone();
    assert_eq!(after["priority"], json!(42));
    assert_eq!(after["name"], json!("renamed"));
    for f in [
        "models",
        "model_mapping",
        "group",
        "weight",
        "base_url",
        "key",
        "test_model",
        "other",
    ] {
        assert_eq!(after[f], before[f], "{f} kept");
    }
    ts.put(
        &root,
        "/api/channel/",
        json!({"id": id, "key": KEY_C, "models": "o3"}),
    )
    .await
    .ok();
    let c = ts.channel_of(id).await;
    assert_eq!(c["key"], json!(masked(KEY_C)));
    assert_eq!(c["models"], json!("o3"));
    ts.put(
        &root,
        "/api/channel/",
        json!({"id": id, "model_mapping": "[1]"}),
    )
    .await
    .refused("model_mapping");
    ts.put(&root, "/api/channel/", json!({"id": 99_999, "name": "x"}))
        .await
        .refused("not found");
    // Delete.
    ts.delete(&root, &format!("/api/channel/{id}")).await.ok();
    ts.get(&root, &format!("/api/channel/{id}"))
        .await
        .refused("not found");
    ts.delete(&root, &format!("/api/channel/{id}"))
        .await
        .refused("not found");
    let r = ts.get(&root, "/api/channel/").await;
    assert_eq!(r.ok()["total"], json!(11));
    // Batch delete, then every disabled channel (ids[0] manual, ids[1] auto).
    let r = ts
        .post(
            &root,
            "/api/channel/batch",
            json!({"ids": [ids[10], ids[11], 99_999]}),
        )
        .await;
    assert_eq!(r.ok(), &json!(2));
    let r = ts.delete(&root, "/api/channel/disabled").await;
    assert_eq!(r.ok(), &json!(2));
    let r = ts.get(&root, "/api/channel/?page_size=100").await;
    assert_eq!(r.ok()["total"], json!(7));
    assert!(
        r.ok()["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == json!(1))
    );
    ts.stop().await;
}

#[tokio::test]
async fn admins_manage_channels_common_users_get_403_and_only_root_sees_keys() {
    let ts = spawn().await;
    let admin = ts.fast_user("admin1", 10).await;
    let user = ts.fast_user("user1", 1).await;
    // An admin creates, lists, updates, tests and deletes.
    let r = ts
        .post(&admin, "/api/channel/", full("by-admin", KEY_A))
        .await;
    let id = r.ok()["ids"][0].as_i64().unwrap();
    let r = ts.get(&admin, "/api/channel/").await;
    assert_eq!(r.ok()["total"], json!(1));
    let r = ts.get(&admin, &format!("/api/channel/{id}")).await;
    assert_eq!(r.ok()["key"], json!(masked(KEY_A)));
    assert!(!r.body.to_string().contains(KEY_A));
    ts.put(&admin, "/api/channel/", json!({"id": id, "weight": 9}))
        .await
        .ok();
    // The full key: root only.
    ts.post(&admin, &format!("/api/channel/{id}/key"), json!({}))
        .await
        .error(StatusCode::FORBIDDEN);
    let r = ts
        .post(&ts.root(), &format!("/api/channel/{id}/key"), json!({}))
        .await;
    assert_eq!(r.ok()["key"], json!(KEY_A));
    // Viewing a full key is audited.
    let audits = ts.manage_logs().await;
    assert!(
        audits
            .iter()
            .any(|l| l.log.other.contains("channel.key_view"))
    );
    // A common user may do none of it.
    for (m, p) in [
        (reqwest::Method::GET, "/api/channel/".to_string()),
        (reqwest::Method::GET, "/api/channel/search?keyword=a".into()),
        (reqwest::Method::GET, format!("/api/channel/{id}")),
        (reqwest::Method::GET, format!("/api/channel/test/{id}")),
        (reqwest::Method::GET, "/api/channel/models".into()),
        (reqwest::Method::POST, "/api/channel/".into()),
        (reqwest::Method::PUT, "/api/channel/".into()),
        (reqwest::Method::DELETE, format!("/api/channel/{id}")),
        (reqwest::Method::POST, format!("/api/channel/{id}/key")),
    ] {
        let r = ts
            .send(
                ts.req(&user, m.clone(), &p)
                    .json(&json!({"id": id, "name": "x", "key": "k", "models": "m"})),
            )
            .await;
        r.error(StatusCode::FORBIDDEN);
        assert!(!r.body.to_string().contains(KEY_A));
    }
    // Anonymous: 401.
    let r = ts
        .send(ts.anon(reqwest::Method::GET, "/api/channel/"))
        .await;
    r.error(StatusCode::UNAUTHORIZED);
    assert_eq!(ts.channel_of(id).await["weight"], json!(9));
    ts.delete(&admin, &format!("/api/channel/{id}")).await.ok();
    ts.stop().await;
}

#[tokio::test]
async fn channel_test_records_response_time_and_models_are_listed() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let slow = ts
        .channel(
            json!({"type": 1, "name": "slow", "key": "slow-40", "base_url": mock.url(),
            "models": "gpt-4o,custom-model", "test_model": "custom-model",
            "model_mapping": "{\"custom-model\": \"upstream-custom\"}"}),
        )
        .await;
    let broken = ts
        .channel(
            json!({"type": 8, "name": "broken", "key": "fail-500", "base_url": mock.url(),
            "models": "other-model"}),
        )
        .await;
    let r = ts
        .get(&ts.root(), &format!("/api/channel/test/{slow}"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["success"], json!(true), "{}", r.body);
    assert!(r.body["time"].as_f64().unwrap() >= 0.04);
    // It sent a tiny request with the test model, mapped.
    let seen = mock.state.last().unwrap();
    assert_eq!(seen.key, "slow-40");
    assert_eq!(seen.body["model"], json!("upstream-custom"));
    let c = ts.channel_of(slow).await;
    assert!(c["response_time"].as_i64().unwrap() >= 40, "{c}");
    assert!(c["test_time"].as_i64().unwrap() > 0);
    // ?model= overrides the test model.
    let r = ts
        .get(
            &ts.root(),
            &format!("/api/channel/test/{slow}?model=gpt-4o"),
        )
        .await;
    assert_eq!(r.body["success"], json!(true));
    assert_eq!(mock.state.last().unwrap().body["model"], json!("gpt-4o"));
    // A failing channel: success false with the upstream's word, time kept.
    let r = ts
        .get(&ts.root(), &format!("/api/channel/test/{broken}"))
        .await;
    assert_eq!(r.body["success"], json!(false));
    assert!(
        r.body["message"].as_str().unwrap().contains("500"),
        "{}",
        r.body
    );
    assert!(ts.channel_of(broken).await["test_time"].as_i64().unwrap() > 0);
    ts.get(&ts.root(), "/api/channel/test/424242")
        .await
        .refused("not found");
    // Models: every model a channel lists, plus the priced ones.
    let r = ts.get(&ts.root(), "/api/channel/models").await;
    let names: Vec<String> = r
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    for m in [
        "gpt-4o",
        "custom-model",
        "other-model",
        "gpt-4o-mini",
        "claude-sonnet-4-6",
    ] {
        assert!(names.contains(&m.to_string()), "{m} missing from {names:?}");
    }
    ts.stop().await;
}

/// Every change is obeyed by the relay at once (routing snapshot rebuilt).
#[tokio::test]
async fn changes_reach_routing_immediately() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let id = ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 200);
    assert_eq!(ts.chat(&key, "gpt-4o-mini", 5).await.status, 503);
    ts.put(
        &ts.root(),
        "/api/channel/",
        json!({"id": id, "models": "gpt-4o,gpt-4o-mini"}),
    )
    .await
    .ok();
    assert_eq!(ts.chat(&key, "gpt-4o-mini", 5).await.status, 200);
    ts.put(&ts.root(), "/api/channel/", json!({"id": id, "status": 2}))
        .await
        .ok();
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 503);
    ts.put(
        &ts.root(),
        "/api/channel/",
        json!({"id": id, "status": 1, "group": "vip"}),
    )
    .await
    .ok();
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 503);
    ts.put(
        &ts.root(),
        "/api/channel/",
        json!({"id": id, "group": "vip,default", "key": "ok2"}),
    )
    .await
    .ok();
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 200);
    assert_eq!(mock.state.last().unwrap().key, "ok2");
    ts.delete(&ts.root(), &format!("/api/channel/{id}"))
        .await
        .ok();
    assert_eq!(ts.chat(&key, "gpt-4o", 5).await.status, 503);
    ts.stop().await;
}

async fn full_key(ts: &TestServer, id: i64) -> String {
    ts.post(&ts.root(), &format!("/api/channel/{id}/key"), json!({}))
        .await
        .ok()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A dashboard reads a channel (keys masked) and sends the object back with
/// one field changed: the stored keys must survive the round trip.
#[tokio::test]
async fn an_update_that_sends_back_the_masked_key_keeps_the_real_key() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let two = format!("{KEY_A}\n{KEY_B}");
    let mut body = full("round-trip", &two);
    body["base_url"] = json!(mock.url());
    let id = create(&ts, body).await[0];
    let mut c = ts.channel_of(id).await;
    c["weight"] = json!(11);
    let r = ts.put(&ts.root(), "/api/channel/", c.clone()).await;
    assert_eq!(r.ok()["weight"], json!(11));
    assert_eq!(full_key(&ts, id).await, two);
    // One line replaced, the other sent back masked.
    c["key"] = json!(format!("{}\n{KEY_C}", masked(KEY_A)));
    ts.put(&ts.root(), "/api/channel/", c.clone()).await.ok();
    assert_eq!(full_key(&ts, id).await, format!("{KEY_A}\n{KEY_C}"));
    // A mask that stands for no stored key is refused, nothing changes.
    c["key"] = json!(masked(KEY_B));
    ts.put(&ts.root(), "/api/channel/", c.clone())
        .await
        .refused("key");
    assert_eq!(full_key(&ts, id).await, format!("{KEY_A}\n{KEY_C}"));
    // The relay uses the real keys.
    let (_, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(ts.chat(&key, "gpt-4o-mini", 5).await.status, 200);
        let k = mock.state.last().unwrap().key;
        assert!(k == KEY_A || k == KEY_C, "{k}");
    }
    ts.stop().await;
}
