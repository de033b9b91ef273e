//! The ledger (SPEC §8): one complete row per call, the log APIs with every
//! filter and pagination, stats that reconcile with the rows and with the
//! token's used_quota, per-day data, purge by age, and SIGTERM flushing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{Relayed, other, quota_sum};
use common::{Caller, Db, TestServer, spawn, spawn_on, spawn_with};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice::mock::Mock;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rid(r: &Relayed) -> String {
    r.headers["x-request-id"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn every_call_writes_one_complete_row() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let ch = ts
        .channel(
            json!({"type": 1, "name": "main", "key": "ok", "base_url": mock.url(),
            "models": "gpt-4o,text-embedding-3-small,gpt-3.5-turbo-instruct", "group": "default",
            "model_mapping": "{\"gpt-4o\": \"gpt-4o-2024-08-06\"}"}),
        )
        .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "laptop", "remain_quota": 100_000}),
        )
        .await;
    let ua = [("user-agent", "OpenAI/Python 1.109.1")];
    let chat = json!({"model": "gpt-4o", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]});
    let r1 = ts
        .relay_with(&key, "/v1/chat/completions", chat.clone(), &ua)
        .await;
    assert_eq!(r1.status, 200, "{}", r1.text);
    let mut sb = chat.clone();
    sb["stream"] = json!(true);
    let r2 = ts
        .relay_with(
            &key,
            "/v1/chat/completions",
            sb,
            &[("user-agent", "AsyncOpenAI/Python 1.109.1")],
        )
        .await;
    assert_eq!(r2.status, 200);
    let r3 = ts
        .relay_with(
            &key,
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
            &[("user-agent", "curl/8.0")],
        )
        .await;
    assert_eq!(r3.status, 200, "{}", r3.text);
    let r4 = ts
        .relay(
            &key,
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say", "max_tokens": 3}),
        )
        .await;
    assert_eq!(r4.status, 200, "{}", r4.text);
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 4, "one row per call");
    let by_rid = |r: &Relayed| {
        let id = rid(r);
        rows.iter()
            .find(|row| row["request_id"] == json!(id))
            .unwrap_or_else(|| panic!("no row for request {id}"))
            .clone()
    };
    let row = by_rid(&r1);
    let keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for f in [
        "id",
        "created_at",
        "type",
        "user_id",
        "username",
        "token_id",
        "token_name",
        "model_name",
        "channel",
        "prompt_tokens",
        "completion_tokens",
        "quota",
        "use_time",
        "is_stream",
        "ip",
        "group",
        "content",
        "other",
    ] {
        assert!(keys.contains(&f), "row lacks {f}: {row}");
    }
    assert!((now() - row["created_at"].as_i64().unwrap()).abs() < 60);
    assert_eq!(row["type"], json!(2));
    assert_eq!(row["user_id"], json!(u.id));
    assert_eq!(row["username"], json!("alice"));
    assert_eq!(row["token_id"], json!(tid));
    assert_eq!(row["token_name"], json!("laptop"));
    assert_eq!(row["model_name"], json!("gpt-4o"));
    assert_eq!(row["channel"], json!(ch));
    assert_eq!(row["prompt_tokens"], json!(10));
    assert_eq!(row["completion_tokens"], json!(20));
    assert_eq!(row["quota"], json!(113));
    assert!(row["use_time"].as_i64().unwrap() >= 0);
    assert_eq!(row["is_stream"], json!(false));
    assert_eq!(row["ip"], json!("127.0.0.1"));
    assert_eq!(row["group"], json!("default"));
    let o = other(&row);
    assert_eq!(o["request_id"], json!(rid(&r1)));
    assert_eq!(o["client"], json!("OpenAI/Python"));
    assert_eq!(o["request_path"], json!("/v1/chat/completions"));
    assert_eq!(o["http_status"], json!(200));
    assert_eq!(o["upstream_model"], json!("gpt-4o-2024-08-06"));
    assert_eq!(o["model_ratio"], json!(1.25));
    assert_eq!(o["completion_ratio"], json!(4.0));
    assert_eq!(o["group_ratio"], json!(1.0));

    let row = by_rid(&r2);
    assert_eq!(row["is_stream"], json!(true));
    assert_eq!(other(&row)["client"], json!("AsyncOpenAI/Python"));
    assert_eq!(row["quota"], json!(113));

    let row = by_rid(&r3);
    assert_eq!(row["model_name"], json!("text-embedding-3-small"));
    assert_eq!(row["completion_tokens"], json!(0));
    assert_eq!(other(&row)["request_path"], json!("/v1/embeddings"));
    assert_eq!(other(&row)["client"], json!("curl/8.0"));

    let row = by_rid(&r4);
    assert_eq!(other(&row)["request_path"], json!("/v1/completions"));
    assert_eq!(row["completion_tokens"], json!(3));

    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"].as_i64().unwrap(), quota_sum(&rows));
    ts.stop().await;
}

#[tokio::test]
async fn request_id_is_on_every_response_and_in_the_log() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    ts.mock_channel(&mock, "fail-500", "gpt-4o-mini", 0).await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let ok = ts.chat(&key, "gpt-4o", 5).await;
    let failed = ts.chat(&key, "gpt-4o-mini", 5).await;
    assert_eq!(failed.status, 502);
    let responses = [
        ok,
        failed,
        ts.chat("sk-nope", "gpt-4o", 5).await,
        ts.chat(&key, "no-channel-model", 5).await,
        ts.relay_get(&key, "/v1/models").await,
        ts.relay_get(&key, "/v1/dashboard/billing/subscription")
            .await,
        ts.relay_get(&key, "/v1/dashboard/billing/usage").await,
    ];
    let mut ids = std::collections::HashSet::new();
    for r in &responses {
        let id = rid(r);
        assert!(!id.is_empty());
        assert!(ids.insert(id), "request ids are unique");
    }
    // An error names the id in its message too.
    let m = responses[2].json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains(&rid(&responses[2])), "{m}");
    let mgmt = ts.get(&u, "/api/user/self").await;
    assert!(mgmt.headers.get("x-request-id").is_some());
    ts.flush().await;
    for (r, typ) in [(&responses[0], 2), (&responses[1], 5)] {
        let id = rid(r);
        let rows = ts
            .all_logs(&u, &format!("/api/log/self?request_id={id}"))
            .await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["type"], json!(typ));
        assert_eq!(rows[0]["request_id"], json!(id));
        assert_eq!(other(&rows[0])["request_id"], json!(id));
        assert_eq!(other(&rows[0])["http_status"], json!(r.status.as_u16()));
    }
    ts.stop().await;
}

/// What every row of a filtered answer must satisfy.
type Pred = Box<dyn Fn(&Value) -> bool>;

/// Rows and stats under a filter, for the admin and the self views.
struct World {
    ts: TestServer,
    alice: Caller,
    bob: Caller,
    c1: i64,
    c2: i64,
    /// Request id of one of alice's streamed calls.
    one_rid: String,
    tids: Vec<(Caller, i64, &'static str)>,
    _mock: Mock,
}

async fn world(db: Db) -> Option<World> {
    let ts = spawn_on(db).await?;
    let mock = common::relay::mock().await;
    let c1 = ts
        .channel(
            json!({"type": 1, "name": "c1", "key": "ok", "base_url": mock.url(),
            "models": "gpt-4o", "group": "default,vip"}),
        )
        .await;
    let c2 = ts
        .channel(
            json!({"type": 8, "name": "c2", "key": "ok2", "base_url": mock.url(),
            "models": "gpt-4o-mini", "group": "default,vip"}),
        )
        .await;
    ts.mock_channel(&mock, "fail-500", "o3", 0).await;
    ts.option("GroupRatio", r#"{"default": 1, "vip": 2}"#).await;
    let (alice, ka, key_a) = ts
        .funded(
            "alice",
            10_000_000,
            json!({"name": "ka", "remain_quota": 1_000_000}),
        )
        .await;
    let (kb, key_b) = ts
        .key(&alice, json!({"name": "kb", "remain_quota": 1_000_000}))
        .await;
    let (bob, kc, key_c) = ts
        .funded(
            "bob",
            10_000_000,
            json!({"name": "kc", "remain_quota": 1_000_000, "group": "vip"}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(ts.chat(&key_a, "gpt-4o", 20).await.status, 200);
    }
    let mut one_rid = String::new();
    for _ in 0..2 {
        let r = ts
            .relay(
                &key_a,
                "/v1/chat/completions",
                json!({"model": "gpt-4o-mini",
                "stream": true, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
        assert_eq!(r.status, 200);
        one_rid = rid(&r);
    }
    for _ in 0..2 {
        assert_eq!(ts.chat(&key_b, "gpt-4o-mini", 5).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(ts.chat(&key_c, "gpt-4o", 20).await.status, 200);
    }
    assert_eq!(ts.chat(&key_a, "o3", 20).await.status, 502);
    ts.flush().await;
    let tids = vec![
        (alice.clone(), ka, "ka"),
        (alice.clone(), kb, "kb"),
        (bob.clone(), kc, "kc"),
    ];
    Some(World {
        ts,
        alice,
        bob,
        c1,
        c2,
        one_rid,
        tids,
        _mock: mock,
    })
}

/// Reads rows (all pages) and the stat for `query` on `base` (`/api/log/`
/// or `/api/log/self`), checks their quotas agree, and returns the rows.
async fn rows_and_stat(ts: &TestServer, who: &Caller, base: &str, query: &str) -> Vec<Value> {
    let rows = ts.all_logs(who, &format!("{base}?{query}")).await;
    let stat_path = format!(
        "{}stat?{query}",
        base.trim_end_matches('/').to_string() + "/"
    );
    let stat = ts.get(who, &stat_path).await;
    let s = stat.ok();
    assert_eq!(
        s["quota"].as_i64().unwrap(),
        quota_sum(&rows),
        "rows and stat disagree for {base}?{query}"
    );
    assert!(s.get("rpm").is_some() && s.get("tpm").is_some(), "{s}");
    rows
}

#[tokio::test]
async fn log_filters_pagination_and_stats_reconcile_sqlite() {
    log_filters_pagination_and_stats_reconcile(Db::Sqlite).await;
}

#[tokio::test]
async fn log_filters_pagination_and_stats_reconcile_postgres() {
    log_filters_pagination_and_stats_reconcile(Db::Postgres).await;
}

#[tokio::test]
async fn log_filters_pagination_and_stats_reconcile_mysql() {
    log_filters_pagination_and_stats_reconcile(Db::Mysql).await;
}

async fn log_filters_pagination_and_stats_reconcile(db: Db) {
    let Some(w) = world(db).await else { return };
    let ts = &w.ts;
    let root = ts.root();
    let t = now();
    let admin = "/api/log/";
    let cases: Vec<(String, usize, Pred)> = vec![
        ("type=2".into(), 9, Box::new(|r| r["type"] == json!(2))),
        ("type=5".into(), 1, Box::new(|r| r["type"] == json!(5))),
        (
            "type=2&model_name=gpt-4o".into(),
            5,
            Box::new(|r| r["model_name"] == json!("gpt-4o")),
        ),
        (
            "model_name=gpt-4o-mini".into(),
            4,
            Box::new(|r| r["model_name"] == json!("gpt-4o-mini")),
        ),
        (
            "token_name=ka".into(),
            6,
            Box::new(|r| r["token_name"] == json!("ka")),
        ),
        (
            "type=2&username=alice".into(),
            7,
            Box::new(|r| r["username"] == json!("alice")),
        ),
        (
            format!("channel={}", w.c2),
            4,
            Box::new(move |r| r["channel"] == json!(w.c2)),
        ),
        (
            format!("channel={}&token_name=kb", w.c2),
            2,
            Box::new(|r| r["token_name"] == json!("kb")),
        ),
        (
            "group=vip".into(),
            2,
            Box::new(|r| r["group"] == json!("vip")),
        ),
        (
            format!("request_id={}", w.one_rid),
            1,
            Box::new(|r| r["is_stream"] == json!(true)),
        ),
        (
            format!(
                "type=2&start_timestamp={}&end_timestamp={}",
                t - 600,
                t + 600
            ),
            9,
            Box::new(|r| r["type"] == json!(2)),
        ),
        (
            format!("start_timestamp={}", t + 600),
            0,
            Box::new(|_| true),
        ),
        (format!("end_timestamp={}", t - 600), 0, Box::new(|_| true)),
    ];
    for (q, n, pred) in &cases {
        let rows = rows_and_stat(ts, &root, admin, q).await;
        assert_eq!(rows.len(), *n, "admin ?{q}: {rows:?}");
        assert!(rows.iter().all(pred), "admin ?{q}");
    }
    // The same filters on the self view see only the caller's rows.
    let self_cases: Vec<(String, usize)> = vec![
        ("type=2".into(), 7),
        ("type=5".into(), 1),
        ("type=2&model_name=gpt-4o".into(), 3),
        ("token_name=kb".into(), 2),
        ("type=2&username=alice".into(), 7),
        ("username=bob".into(), 0),
        (format!("channel={}", w.c1), 3),
        (format!("type=2&channel={}", w.c2), 4),
        ("group=vip".into(), 0),
        ("group=default&type=2".into(), 7),
        (format!("request_id={}", w.one_rid), 1),
        (format!("type=2&start_timestamp={}", t - 600), 7),
        (format!("end_timestamp={}", t - 600), 0),
    ];
    for (q, n) in &self_cases {
        let rows = rows_and_stat(ts, &w.alice, "/api/log/self", q).await;
        assert_eq!(rows.len(), *n, "self ?{q}: {rows:?}");
        assert!(rows.iter().all(|r| r["user_id"] == json!(w.alice.id)));
    }
    // rpm / tpm: requests and tokens of the last minute under the filter.
    let st = ts.get(&w.alice, "/api/log/self/stat?type=2").await;
    assert_eq!(st.ok()["rpm"], json!(7));
    // 3 × (10 + 20) + 2 × (10 + 10) + 2 × (10 + 5)
    assert_eq!(st.ok()["tpm"], json!(160));
    let st = ts.get(&root, "/api/log/stat?type=2").await;
    assert_eq!(st.ok()["rpm"], json!(9));
    assert_eq!(st.ok()["tpm"], json!(220));
    let st = ts
        .get(&root, "/api/log/stat?type=2&model_name=gpt-4o")
        .await;
    assert_eq!(st.ok()["rpm"], json!(5));
    assert_eq!(st.ok()["quota"], json!(3 * 113 + 2 * 225));
    let bob_rows = rows_and_stat(ts, &w.bob, "/api/log/self", "type=2").await;
    assert_eq!(bob_rows.len(), 2);
    // vip: (10 + 20 × 4) × 1.25 × 2 = 225.
    assert!(bob_rows.iter().all(|r| r["quota"] == json!(225)));
    // Each key over its life: rows = stat = used_quota.
    for (owner, tid, name) in &w.tids {
        let rows = rows_and_stat(ts, owner, "/api/log/self", &format!("token_name={name}")).await;
        let used = ts.token_of(owner, *tid).await["used_quota"]
            .as_i64()
            .unwrap();
        assert_eq!(quota_sum(&rows), used, "token {name}");
        assert!(used > 0);
    }
    // Pagination: newest first, pages do not overlap, p=0 is the first page.
    let p1 = ts.get(&root, "/api/log/?type=2&p=1&page_size=4").await;
    let p1 = p1.ok().clone();
    assert_eq!(p1["total"], json!(9));
    assert_eq!(p1["page"], json!(1));
    assert_eq!(p1["page_size"], json!(4));
    let ids1: Vec<i64> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids1.len(), 4);
    assert!(
        ids1.windows(2).all(|w| w[0] > w[1]),
        "newest first: {ids1:?}"
    );
    let p3 = ts.get(&root, "/api/log/?type=2&p=3&ps=4").await;
    assert_eq!(p3.ok()["items"].as_array().unwrap().len(), 1);
    let p0 = ts.get(&root, "/api/log/?type=2&p=0&size=4").await;
    let ids0: Vec<i64> = p0.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids0, ids1);
    let far = ts.get(&root, "/api/log/?type=2&p=50&page_size=4").await;
    assert!(far.ok()["items"].as_array().unwrap().is_empty());
    assert_eq!(far.ok()["total"], json!(9));
    w.ts.stop().await;
}

#[tokio::test]
async fn common_users_cannot_read_the_whole_ledger() {
    let w = world(Db::Sqlite).await.unwrap();
    let ts = &w.ts;
    for path in ["/api/log/", "/api/log/stat", "/api/data/"] {
        ts.get(&w.alice, path)
            .await
            .error(reqwest::StatusCode::FORBIDDEN);
    }
    ts.delete(
        &w.alice,
        &format!("/api/log/?target_timestamp={}", now() + 10),
    )
    .await
    .error(reqwest::StatusCode::FORBIDDEN);
    // The self view never shows another user's rows, whatever the filter.
    let rows = ts
        .all_logs(&w.alice, "/api/log/self?username=bob&token_name=kc")
        .await;
    assert!(rows.is_empty());
    w.ts.stop().await;
}

#[tokio::test]
async fn data_self_is_per_day_and_model_sqlite() {
    data_self_is_per_day_and_model(Db::Sqlite).await;
}

#[tokio::test]
async fn data_self_is_per_day_and_model_postgres() {
    data_self_is_per_day_and_model(Db::Postgres).await;
}

#[tokio::test]
async fn data_self_is_per_day_and_model_mysql() {
    data_self_is_per_day_and_model(Db::Mysql).await;
}

async fn data_self_is_per_day_and_model(db: Db) {
    let Some(w) = world(db).await else { return };
    let ts = &w.ts;
    let d = ts.get(&w.alice, "/api/data/self").await;
    let buckets = d.ok().as_array().unwrap().clone();
    let day = now() - now() % 86_400;
    let find = |m: &str| {
        buckets
            .iter()
            .find(|b| b["model_name"] == json!(m))
            .unwrap_or_else(|| panic!("no bucket for {m}: {buckets:?}"))
            .clone()
    };
    let g = find("gpt-4o");
    assert_eq!(g["count"], json!(3));
    assert_eq!(g["quota"], json!(3 * 113));
    assert_eq!(g["token_used"], json!(3 * 30));
    assert_eq!(g["created_at"], json!(day));
    let m = find("gpt-4o-mini");
    assert_eq!(m["count"], json!(4));
    let rows = ts
        .all_logs(&w.alice, "/api/log/self?type=2&model_name=gpt-4o-mini")
        .await;
    assert_eq!(m["quota"].as_i64().unwrap(), quota_sum(&rows));
    // Failed calls (type 5) are not consumption.
    assert!(buckets.iter().all(|b| b["model_name"] != json!("o3")));
    assert_eq!(buckets.len(), 2);
    let all: i64 = buckets.iter().map(|b| b["quota"].as_i64().unwrap()).sum();
    let stat = ts.get(&w.alice, "/api/log/self/stat?type=2").await;
    assert_eq!(stat.ok()["quota"].as_i64().unwrap(), all);
    // Bob's view shows only his.
    let b = ts.get(&w.bob, "/api/data/self").await;
    let bb = b.ok().as_array().unwrap().clone();
    assert_eq!(bb.len(), 1);
    assert_eq!(bb[0]["count"], json!(2));
    // A window that ended before the calls is empty.
    let old = ts
        .get(
            &w.alice,
            &format!(
                "/api/data/self?start_timestamp={}&end_timestamp={}",
                now() - 5 * 86_400,
                now() - 4 * 86_400
            ),
        )
        .await;
    assert!(old.ok().as_array().unwrap().is_empty());
    w.ts.stop().await;
}

#[tokio::test]
async fn old_logs_are_purged_by_age() {
    let w = world(Db::Sqlite).await.unwrap();
    let ts = &w.ts;
    let old_at = now() - 40 * 86_400;
    for i in 0..3 {
        ts.store()
            .insert_log(&sluice::store::NewLog {
                created_at: old_at + i,
                log_type: 2,
                user_id: w.alice.id,
                username: "alice".into(),
                model_name: "gpt-4o".into(),
                quota: 7,
                other: "{}".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let root = ts.root();
    let before = ts.all_logs(&root, "/api/log/").await.len();
    let r = ts
        .delete(
            &root,
            &format!("/api/log/?target_timestamp={}", now() - 30 * 86_400),
        )
        .await;
    assert_eq!(r.ok(), &json!(3));
    let after = ts.all_logs(&root, "/api/log/").await;
    assert_eq!(after.len(), before - 3);
    assert!(
        after
            .iter()
            .all(|r| r["created_at"].as_i64().unwrap() > old_at + 10)
    );
    // Nothing younger than the target goes.
    let r = ts
        .delete(
            &root,
            &format!("/api/log/?target_timestamp={}", now() - 86_400),
        )
        .await;
    assert_eq!(r.ok(), &json!(0));
    ts.delete(&root, "/api/log/")
        .await
        .refused("target_timestamp");
    w.ts.stop().await;
}

/// SIGTERM: in-flight calls are drained (a stream still running finishes)
/// and every queued row is committed before exit. The ledger window is long,
/// so nothing is committed until the shutdown drains the queue — which must
/// not wait the window out.
#[tokio::test]
async fn shutdown_flushes_the_queue() {
    let ts = spawn_with(Db::Sqlite, |c| c.ledger_window_ms = 60_000)
        .await
        .unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    for i in 0..12 {
        let stream = i % 3 == 0;
        let r = ts
            .relay(
                &key,
                "/v1/chat/completions",
                json!({"model": "gpt-4o", "stream": stream,
                "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let consumed = sluice::store::LogFilter {
        log_type: Some(2),
        ..Default::default()
    };
    let (queued, n) = ts.store().list_logs(&consumed, 0, 100).await.unwrap();
    assert_eq!((queued.len(), n), (0, 0), "still in the ledger queue");
    // One call still streaming when the stop comes: it is drained, not cut.
    ts.mock_channel(&mock, "stall-300", "gpt-4o-mini", 0).await;
    let resp = ts
        .http
        .post(ts.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(
            &json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let rest = tokio::spawn(async move {
        let mut text = Vec::new();
        while let Some(chunk) = body.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(text).unwrap()
    });
    let owner = u.clone();
    let (db, dir, config) = ts.stop_keep().await;
    let rest = rest.await.unwrap();
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    // The same data directory, opened directly.
    let store = sluice::store::Store::connect(&config.database_url(), 2)
        .await
        .unwrap();
    let (rows, n) = store.list_logs(&consumed, 0, 100).await.unwrap();
    assert_eq!(n, 13);
    // gpt-4o-mini: (10 + 20 × 4) × 0.075 = 6.75 → 7
    let total = 12 * 113 + 7;
    let sum: i64 = rows.iter().map(|r| r.log.quota).sum();
    assert_eq!(sum, total);
    assert_eq!(store.token_remain(tid).await.unwrap(), 100_000 - total);
    store.close().await;
    // And a new server on it sees the same ledger and balances.
    let server = sluice::server::start(config).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .bearer_auth(&owner.token)
            .header("New-Api-User", owner.id.to_string())
            .send()
    };
    let t: Value = get(&format!("/api/token/{tid}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["data"]["used_quota"], json!(total));
    let st: Value = get("/api/log/self/stat?type=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["data"]["quota"], json!(total));
    server.shutdown();
    server.wait().await.unwrap();
    db.drop_db().await;
    drop(dir);
}

/// Text the ledger cannot take as is: a NUL (PostgreSQL refuses it in text;
/// unhandled, the batch failed and was retried forever) and the characters
/// PostgreSQL's COPY escapes. A pinned admin call may name any model, so the
/// row's model name carries all of them; it is stored with U+FFFD for the
/// NUL and the rest verbatim, and the ledger goes on committing.
#[tokio::test]
async fn awkward_text_is_stored_on_sqlite() {
    awkward_text_is_stored(Db::Sqlite).await;
}

#[tokio::test]
async fn awkward_text_is_stored_on_postgres() {
    awkward_text_is_stored(Db::Postgres).await;
}

#[tokio::test]
async fn awkward_text_is_stored_on_mysql() {
    awkward_text_is_stored(Db::Mysql).await;
}

async fn awkward_text_is_stored(db: Db) {
    let Some(ts) = spawn_on(db).await else { return };
    let mock = common::relay::mock().await;
    let ch = ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    ts.set_option("SelfUseModeEnabled", "true").await;
    let admin = ts.fast_user("boss", 10).await;
    ts.give_quota(&admin, 1_000_000).await;
    let (_, key) = ts
        .key(&admin, json!({"name": "k", "unlimited_quota": true}))
        .await;
    let model = "m\u{0}x\ty\\z\nw\r'\"q";
    let r = ts
        .relay(
            &format!("{key}-{ch}"),
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = ts.chat(&key, "gpt-4o", 5).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let flushed = tokio::time::timeout(std::time::Duration::from_secs(30), ts.flush()).await;
    assert!(flushed.is_ok(), "the ledger is stuck on the batch");
    let rows = ts.all_logs(&admin, "/api/log/self?type=2").await;
    let mut names: Vec<&str> = rows
        .iter()
        .map(|r| r["model_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["gpt-4o", "m\u{FFFD}x\ty\\z\nw\r'\"q"]);
    ts.stop().await;
}
