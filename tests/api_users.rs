//! `/api/user/…` over HTTP (SPEC §1 principals, §4 users), and top-up by
//! redemption code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Caller, Db, Resp, TestServer, snapshot, spawn, spawn_on};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A client with its own cookie jar (a browser).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Resp {
        status,
        body,
        headers,
    }
}

/// Logs in with `client`; returns the response and the raw session cookie.
async fn login(ts: &TestServer, client: &reqwest::Client, user: &str, pw: &str) -> (Resp, String) {
    let r = send(
        client
            .post(ts.url("/api/user/login"))
            .json(&json!({"username": user, "password": pw})),
    )
    .await;
    let cookie = r
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .unwrap_or_default();
    (r, cookie)
}

fn self_with_cookie(ts: &TestServer, cookie: &str, id: Option<&str>) -> reqwest::RequestBuilder {
    let mut rb = ts
        .http
        .get(ts.url("/api/user/self"))
        .header("Cookie", cookie.to_string());
    if let Some(id) = id {
        rb = rb.header("New-Api-User", id);
    }
    rb
}

async fn code(ts: &TestServer, quota: i64) -> String {
    let r = ts
        .post(
            &ts.root(),
            "/api/redemption/",
            json!({"name": "gift", "quota": quota, "count": 1}),
        )
        .await;
    r.ok()[0].as_str().unwrap().to_string()
}

#[tokio::test]
async fn register_login_and_the_register_switch() {
    let ts = spawn().await;
    let r = ts
        .send(
            ts.anon(Method::POST, "/api/user/register")
                .json(&json!({"username": "newbie", "password": "password123"})),
        )
        .await;
    r.ok();
    assert_eq!(r.body, json!({"success": true, "message": ""}));
    let client = browser();
    let (r, cookie) = login(&ts, &client, "newbie", "password123").await;
    let d = r.ok().clone();
    assert_eq!(d["username"], json!("newbie"));
    assert_eq!(d["role"], json!(1));
    assert_eq!(d["status"], json!(1));
    assert_eq!(d["group"], json!("default"));
    assert_eq!(d["display_name"], json!("newbie"));
    assert!(cookie.starts_with("session="), "{cookie}");
    let set_cookie = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    let id = d["id"].as_i64().unwrap();
    let me = send(self_with_cookie(&ts, &cookie, Some(&id.to_string()))).await;
    assert_eq!(me.ok()["username"], json!("newbie"));

    let register = |body: Value| ts.send(ts.anon(Method::POST, "/api/user/register").json(&body));
    assert_refused_unchanged!(
        ts,
        "username",
        register(json!({"username": "newbie", "password": "password123"}))
    );
    assert_refused_unchanged!(
        ts,
        "username",
        register(json!({"username": "x".repeat(21), "password": "password123"}))
    );
    assert_refused_unchanged!(
        ts,
        "username",
        register(json!({"username": "  ", "password": "password123"}))
    );
    assert_refused_unchanged!(
        ts,
        "password",
        register(json!({"username": "shorty", "password": "short"}))
    );
    // Wrong password, unknown user.
    let (r, _) = login(&ts, &client, "newbie", "wrong-password").await;
    r.refused("password");
    let (r, _) = login(&ts, &client, "nobody", "password123").await;
    r.refused("password");

    ts.set_option("RegisterEnabled", "false").await;
    assert_refused_unchanged!(
        ts,
        "registration",
        register(json!({"username": "late", "password": "password123"}))
    );
    ts.set_option("RegisterEnabled", "true").await;
    ts.set_option("PasswordRegisterEnabled", "false").await;
    assert_refused_unchanged!(
        ts,
        "registration",
        register(json!({"username": "late", "password": "password123"}))
    );
    ts.set_option("PasswordRegisterEnabled", "true").await;
    // QuotaForNewUser is granted on registration, with a system log row.
    ts.set_option("QuotaForNewUser", "1234").await;
    register(json!({"username": "late", "password": "password123"}))
        .await
        .ok();
    let late = ts.store().user_by_username("late").await.unwrap();
    assert_eq!(
        (late.quota, late.role, late.group.as_str()),
        (1234, 1, "default")
    );
    let rows = ts
        .store()
        .list_logs(
            &sluice::store::LogFilter {
                user_id: Some(late.id),
                log_type: Some(4),
                ..Default::default()
            },
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(rows.1, 1, "one registration grant row");
    // A role in the body is ignored: registration makes common users.
    register(json!({"username": "sneaky", "password": "password123", "role": 100}))
        .await
        .ok();
    assert_eq!(ts.store().user_by_username("sneaky").await.unwrap().role, 1);

    ts.set_option("PasswordLoginEnabled", "false").await;
    let (r, cookie) = login(&ts, &client, "newbie", "password123").await;
    r.refused("password login");
    assert!(cookie.is_empty(), "no session when login is refused");
    ts.stop().await;
}

#[tokio::test]
async fn access_token_as_bearer_or_bare_with_matching_new_api_user() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let get = |auth: Option<String>, uid: Option<String>| {
        let mut rb = ts.anon(Method::GET, "/api/user/self");
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        if let Some(u) = uid {
            rb = rb.header("New-Api-User", u);
        }
        ts.send(rb)
    };
    let id = alice.id.to_string();
    let r = get(Some(format!("Bearer {}", alice.token)), Some(id.clone())).await;
    assert_eq!(r.ok()["id"], json!(alice.id));
    let r = get(Some(alice.token.clone()), Some(id.clone())).await;
    assert_eq!(r.ok()["id"], json!(alice.id), "bare access token");
    let r = get(Some(format!("bearer {}", alice.token)), Some(id.clone())).await;
    assert_eq!(r.ok()["id"], json!(alice.id));

    get(Some(format!("Bearer {}", alice.token)), None)
        .await
        .error(StatusCode::UNAUTHORIZED);
    get(Some(format!("Bearer {}", alice.token)), Some("1".into()))
        .await
        .error(StatusCode::UNAUTHORIZED);
    get(
        Some(format!("Bearer {}", alice.token)),
        Some("alice".into()),
    )
    .await
    .error(StatusCode::UNAUTHORIZED);
    get(Some(format!("Bearer {}", alice.token)), Some(String::new()))
        .await
        .error(StatusCode::UNAUTHORIZED);
    get(None, Some(id.clone()))
        .await
        .error(StatusCode::UNAUTHORIZED);
    get(Some("Bearer not-a-real-token".into()), Some(id.clone()))
        .await
        .error(StatusCode::UNAUTHORIZED);
    // Root's token with alice's id is a mismatch too.
    get(Some(format!("Bearer {}", ts.root().token)), Some(id))
        .await
        .error(StatusCode::UNAUTHORIZED);
    ts.stop().await;
}

#[tokio::test]
async fn cookie_session_needs_new_api_user_and_logout_ends_it() {
    let ts = spawn().await;
    let alice = ts.user("alice", 1).await;
    let id = alice.id.to_string();
    let b1 = browser();
    let (r, c1) = login(&ts, &b1, "alice", "password123").await;
    r.ok();
    send(self_with_cookie(&ts, &c1, Some(&id))).await.ok();
    send(self_with_cookie(&ts, &c1, None))
        .await
        .error(StatusCode::UNAUTHORIZED);
    send(self_with_cookie(&ts, &c1, Some("1")))
        .await
        .error(StatusCode::UNAUTHORIZED);
    send(self_with_cookie(&ts, &c1, Some("x")))
        .await
        .error(StatusCode::UNAUTHORIZED);
    // A forged cookie naming root is refused.
    send(self_with_cookie(
        &ts,
        &c1.replacen(&format!("={id}."), "=1.", 1),
        Some("1"),
    ))
    .await
    .error(StatusCode::UNAUTHORIZED);

    // Logout as the dashboard does it (cookie + New-Api-User)...
    let r = send(
        b1.get(ts.url("/api/user/logout"))
            .header("New-Api-User", &id),
    )
    .await;
    r.ok();
    let cleared = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // ... and the old cookie, replayed, no longer works.
    send(self_with_cookie(&ts, &c1, Some(&id)))
        .await
        .error(StatusCode::UNAUTHORIZED);

    // Logout with only the cookie (no New-Api-User) ends the session too.
    let b2 = browser();
    let (_, c2) = login(&ts, &b2, "alice", "password123").await;
    send(self_with_cookie(&ts, &c2, Some(&id))).await.ok();
    send(b2.get(ts.url("/api/user/logout"))).await.ok();
    send(self_with_cookie(&ts, &c2, Some(&id)))
        .await
        .error(StatusCode::UNAUTHORIZED);
    // The access token is a separate credential and still works.
    ts.get(&alice, "/api/user/self").await.ok();
    ts.stop().await;
}

#[tokio::test]
async fn a_new_access_token_replaces_the_old_one() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let r = ts.get(&alice, "/api/user/token").await;
    let fresh = r.ok().as_str().unwrap().to_string();
    assert!(fresh.len() >= 29 && fresh != alice.token, "{fresh}");
    assert_eq!(
        r.headers.get("cache-control").unwrap().to_str().unwrap(),
        "no-store"
    );
    ts.get(&alice, "/api/user/self")
        .await
        .error(StatusCode::UNAUTHORIZED);
    let renewed = Caller {
        id: alice.id,
        token: fresh.clone(),
    };
    ts.get(&renewed, "/api/user/self").await.ok();
    // Only the hash is stored.
    let snap = snapshot(ts.store()).await.to_string();
    assert!(!snap.contains(&fresh));
    ts.stop().await;
}

#[tokio::test]
async fn a_disabled_user_is_refused_everywhere() {
    let ts = spawn().await;
    let root = ts.root();
    let alice = ts.user("alice", 1).await;
    let b = browser();
    let (_, cookie) = login(&ts, &b, "alice", "password123").await;
    let t = ts.token(&alice, json!({"name": "k"})).await;
    let r = ts
        .post(
            &root,
            "/api/user/manage",
            json!({"id": alice.id, "action": "disable"}),
        )
        .await;
    assert_eq!(r.ok()["status"], json!(2));
    ts.get(&alice, "/api/user/self")
        .await
        .error(StatusCode::FORBIDDEN);
    ts.get(&alice, "/api/token/")
        .await
        .error(StatusCode::FORBIDDEN);
    let r = send(self_with_cookie(&ts, &cookie, Some(&alice.id.to_string()))).await;
    assert!(
        r.status == StatusCode::FORBIDDEN || r.status == StatusCode::UNAUTHORIZED,
        "{r:?}"
    );
    assert_eq!(r.body["success"], json!(false));
    let (r, _) = login(&ts, &browser(), "alice", "password123").await;
    r.refused("disabled");
    // Enabling again restores access.
    ts.post(
        &root,
        "/api/user/manage",
        json!({"id": alice.id, "action": "enable"}),
    )
    .await
    .ok();
    ts.get(&alice, "/api/user/self").await.ok();
    ts.get(&alice, &format!("/api/token/{}", t["id"]))
        .await
        .ok();
    ts.stop().await;
}

#[tokio::test]
async fn self_get_and_update() {
    let ts = spawn().await;
    let alice = ts.user("alice", 1).await;
    let me = ts.get(&alice, "/api/user/self").await;
    let d = me.ok().clone();
    for f in [
        "id",
        "username",
        "display_name",
        "role",
        "status",
        "group",
        "quota",
        "used_quota",
        "request_count",
    ] {
        assert!(d.get(f).is_some(), "self has {f}: {d}");
    }
    for f in [
        "password",
        "password_hash",
        "access_token",
        "access_token_hash",
    ] {
        assert!(
            d.get(f).is_none_or(|v| v.is_null() || v == ""),
            "self leaks {f}: {d}"
        );
    }
    assert_eq!(d["role"], json!(1));

    let r = ts
        .put(
            &alice,
            "/api/user/self",
            json!({"display_name": "Alice A."}),
        )
        .await;
    r.ok();
    assert_eq!(
        ts.get(&alice, "/api/user/self").await.ok()["display_name"],
        json!("Alice A.")
    );
    // Fields a user may not set on themselves are ignored.
    ts.put(
        &alice,
        "/api/user/self",
        json!({"role": 100, "quota": 999999, "status": 1, "group": "vip"}),
    )
    .await
    .ok();
    let d = ts.get(&alice, "/api/user/self").await.ok().clone();
    assert_eq!(d["role"], json!(1));
    assert_eq!(d["quota"], json!(0));
    assert_eq!(d["group"], json!("default"));

    assert_refused_unchanged!(
        ts,
        "display_name",
        ts.put(
            &alice,
            "/api/user/self",
            json!({"display_name": "d".repeat(21)})
        )
    );
    assert_refused_unchanged!(
        ts,
        "username",
        ts.put(&alice, "/api/user/self", json!({"username": "root"}))
    );
    assert_refused_unchanged!(
        ts,
        "original_password",
        ts.put(
            &alice,
            "/api/user/self",
            json!({"password": "new-password-1"})
        )
    );
    assert_refused_unchanged!(
        ts,
        "original_password",
        ts.put(
            &alice,
            "/api/user/self",
            json!({"password": "new-password-1", "original_password": "not-it-at-all"})
        )
    );
    assert_refused_unchanged!(
        ts,
        "password",
        ts.put(
            &alice,
            "/api/user/self",
            json!({"password": "short", "original_password": "password123"})
        )
    );
    ts.put(
        &alice,
        "/api/user/self",
        json!({"password": "new-password-1", "original_password": "password123"}),
    )
    .await
    .ok();
    let (r, _) = login(&ts, &browser(), "alice", "password123").await;
    r.refused("password");
    let (r, _) = login(&ts, &browser(), "alice", "new-password-1").await;
    assert_eq!(r.ok()["id"], json!(alice.id));
    ts.stop().await;
}

#[tokio::test]
async fn models_and_group_listings_have_new_api_shapes() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    ts.set_option("GroupRatio", r#"{"default":1,"vip":1.5,"partners":0.8}"#)
        .await;
    let models = ts.get(&alice, "/api/user/models").await;
    let list = models.ok().as_array().expect("models is a list");
    assert!(list.iter().all(Value::is_string));

    let r = ts.get(&alice, "/api/user/self/groups").await;
    let g = r.ok().as_object().unwrap().clone();
    let mut keys: Vec<_> = g.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["default", "vip"]);
    assert_eq!(g["vip"]["ratio"].as_f64(), Some(1.5));
    assert_eq!(g["vip"]["desc"], json!("VIP group"));
    assert_eq!(g["default"]["ratio"].as_f64(), Some(1.0));
    assert!(g["default"]["desc"].is_string());

    // A user's own group is theirs to use even when not user-selectable.
    ts.put(
        &ts.root(),
        "/api/user/",
        json!({"id": alice.id, "group": "partners"}),
    )
    .await
    .ok();
    let r = ts.get(&alice, "/api/user/self/groups").await;
    let g = r.ok().as_object().unwrap();
    assert!(g.contains_key("partners"), "{g:?}");
    assert_eq!(g["partners"]["ratio"].as_f64(), Some(0.8));

    // The public listing needs no login and shows the selectable groups only.
    let r = ts.send(ts.anon(Method::GET, "/api/user/groups")).await;
    let g = r.ok().as_object().unwrap();
    let mut keys: Vec<_> = g.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["default", "vip"]);
    assert_eq!(g["vip"]["ratio"].as_f64(), Some(1.5));
    assert!(g["vip"]["desc"].is_string());
    ts.stop().await;
}

#[tokio::test]
async fn topup_redeems_a_code_once() {
    let ts = spawn().await;
    let alice = ts.fast_user("alice", 1).await;
    let bob = ts.fast_user("bob", 1).await;
    let c = code(&ts, 700).await;
    let r = ts.post(&alice, "/api/user/topup", json!({"key": c})).await;
    assert_eq!(r.ok(), &json!(700));
    assert_eq!(
        ts.get(&alice, "/api/user/self").await.ok()["quota"],
        json!(700)
    );
    let topups = ts
        .store()
        .list_logs(
            &sluice::store::LogFilter {
                log_type: Some(1),
                user_id: Some(alice.id),
                ..Default::default()
            },
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(topups.1, 1, "one top-up row");
    assert_eq!(topups.0[0].log.username, "alice");

    assert_refused_unchanged!(
        ts,
        "used",
        ts.post(&alice, "/api/user/topup", json!({"key": c}))
    );
    assert_refused_unchanged!(
        ts,
        "used",
        ts.post(&bob, "/api/user/topup", json!({"key": c}))
    );
    assert_refused_unchanged!(
        ts,
        "invalid",
        ts.post(&bob, "/api/user/topup", json!({"key": "no-such-code"}))
    );
    assert_refused_unchanged!(ts, "key", ts.post(&bob, "/api/user/topup", json!({})));
    assert_eq!(ts.get(&bob, "/api/user/self").await.ok()["quota"], json!(0));
    ts.stop().await;
}

async fn concurrent_topup(kind: Db) {
    let Some(ts) = spawn_on(kind).await else {
        return;
    };
    const N: usize = 8;
    let mut users = Vec::new();
    for i in 0..N {
        users.push(ts.fast_user(&format!("u{i}"), 1).await);
    }
    let c = code(&ts, 1000).await;
    let mut tasks = Vec::new();
    for u in &users {
        let rb = ts
            .req(u, Method::POST, "/api/user/topup")
            .json(&json!({ "key": c }));
        tasks.push(tokio::spawn(async move { send(rb).await }));
    }
    let mut winners = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if r.success() {
            assert_eq!(r.data(), &json!(1000));
            winners += 1;
        } else {
            assert!(r.message().contains("used"), "{}", r.body);
        }
    }
    assert_eq!(winners, 1, "exactly one of {N} concurrent redemptions wins");
    let mut total = 0;
    for u in &users {
        total += ts.get(u, "/api/user/self").await.ok()["quota"]
            .as_i64()
            .unwrap();
    }
    assert_eq!(total, 1000, "the quota was added once");
    ts.stop().await;
}

#[tokio::test]
async fn concurrent_topup_sqlite() {
    concurrent_topup(Db::Sqlite).await;
}

#[tokio::test]
async fn concurrent_topup_postgres() {
    concurrent_topup(Db::Postgres).await;
}

#[tokio::test]
async fn concurrent_topup_mysql() {
    concurrent_topup(Db::Mysql).await;
}

#[tokio::test]
async fn admin_user_crud() {
    let ts = spawn().await;
    let root = ts.root();
    let r = ts
        .post(
            &root,
            "/api/user/",
            json!({"username": "carol", "password": "password123", "display_name": "Carol",
                   "quota": 50, "group": "vip", "unknown_field": 1}),
        )
        .await;
    let id = r.ok()["id"].as_i64().unwrap();
    let r = ts.get(&root, &format!("/api/user/{id}")).await;
    let u = r.ok().clone();
    assert_eq!(u["username"], json!("carol"));
    assert_eq!(u["display_name"], json!("Carol"));
    assert_eq!(u["quota"], json!(50));
    assert_eq!(u["group"], json!("vip"));
    assert_eq!(u["role"], json!(1));
    assert_eq!(u["status"], json!(1));
    assert!(u.get("password_hash").is_none() && u.get("access_token").is_none());
    // The new user can log in.
    let carol = ts.login_token("carol", "password123", id).await;
    ts.get(&carol, "/api/user/self").await.ok();

    for name in ["dave", "erin"] {
        ts.fast_user(name, 1).await;
    }
    let r = ts.get(&root, "/api/user/?p=1&page_size=2").await;
    let d = r.ok();
    assert_eq!(d["total"], json!(4));
    let names: Vec<_> = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].clone())
        .collect();
    assert_eq!(names, [json!("erin"), json!("dave")], "newest first");
    let r = ts.get(&root, "/api/user/?p=2&ps=2").await;
    let names: Vec<_> = r.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].clone())
        .collect();
    assert_eq!(names, [json!("carol"), json!("root")]);

    let r = ts.get(&root, "/api/user/search?keyword=ro").await;
    assert_eq!(r.ok()["total"], json!(2), "carol and root: {}", r.body);
    let r = ts
        .get(&root, &format!("/api/user/search?keyword={id}"))
        .await;
    assert_eq!(r.ok()["items"][0]["id"], json!(id));
    let r = ts.get(&root, "/api/user/search?group=vip").await;
    assert_eq!(r.ok()["total"], json!(1));

    let r = ts
        .put(
            &root,
            "/api/user/",
            json!({"id": id, "display_name": "C.", "quota": 75, "group": "default"}),
        )
        .await;
    let u = r.ok();
    assert_eq!(u["display_name"], json!("C."));
    assert_eq!(u["quota"], json!(75));
    assert_eq!(u["group"], json!("default"));
    assert_eq!(
        u["username"],
        json!("carol"),
        "absent fields keep their value"
    );
    // Admin password reset: the old password stops working.
    ts.put(
        &root,
        "/api/user/",
        json!({"id": id, "password": "reset-password-9"}),
    )
    .await
    .ok();
    let (r, _) = login(&ts, &browser(), "carol", "password123").await;
    r.refused("password");

    assert_refused_unchanged!(
        ts,
        "quota",
        ts.put(&root, "/api/user/", json!({"id": id, "quota": -1}))
    );
    assert_refused_unchanged!(
        ts,
        "username",
        ts.put(&root, "/api/user/", json!({"id": id, "username": "dave"}))
    );
    assert_refused_unchanged!(
        ts,
        "username",
        ts.post(
            &root,
            "/api/user/",
            json!({"username": "", "password": "password123"})
        )
    );
    assert_refused_unchanged!(
        ts,
        "username",
        ts.post(
            &root,
            "/api/user/",
            json!({"username": "dave", "password": "password123"})
        )
    );
    assert_refused_unchanged!(
        ts,
        "password",
        ts.post(
            &root,
            "/api/user/",
            json!({"username": "fred", "password": "1234"})
        )
    );
    assert_refused_unchanged!(
        ts,
        "role",
        ts.post(
            &root,
            "/api/user/",
            json!({"username": "fred", "password": "password123", "role": 5})
        )
    );
    assert_refused_unchanged!(
        ts,
        "quota",
        ts.post(
            &root,
            "/api/user/",
            json!({"username": "fred", "password": "password123", "quota": -3})
        )
    );

    // Delete takes the user's tokens with it.
    ts.token(&carol, json!({"name": "c"})).await;
    ts.delete(&root, &format!("/api/user/{id}")).await.ok();
    ts.get(&root, &format!("/api/user/{id}"))
        .await
        .refused("not found");
    let r = ts.get(&root, &format!("/api/token/?user_id={id}")).await;
    assert_eq!(r.ok()["total"], json!(0));
    ts.delete(&root, "/api/user/424242").await;
    // Root cannot delete itself.
    let before = snapshot(ts.store()).await;
    let r = ts.delete(&root, "/api/user/1").await;
    assert!(!r.success());
    assert_eq!(before, snapshot(ts.store()).await);
    ts.stop().await;
}

#[tokio::test]
async fn manage_actions_follow_role_rules() {
    let ts = spawn().await;
    let root = ts.root();
    let admin = ts.fast_user("admin", 10).await;
    let admin2 = ts.fast_user("admin2", 10).await;
    let alice = ts.fast_user("alice", 1).await;
    let manage = |c: &Caller, id: i64, action: &str| {
        let rb = ts
            .req(c, Method::POST, "/api/user/manage")
            .json(&json!({"id": id, "action": action}));
        ts.send(rb)
    };
    let forbidden = |r: Resp| r.error(StatusCode::FORBIDDEN);
    // What a missing id answers; a user the actor may not manage answers the same.
    let missing = manage(&admin, 424242, "disable").await;
    missing.refused("not found");
    let like_missing = |r: Resp| {
        assert_eq!((r.status, &r.body), (missing.status, &missing.body));
    };

    // An admin manages common users: disable, enable.
    let r = manage(&admin, alice.id, "disable").await;
    assert_eq!(r.ok(), &json!({"role": 1, "status": 2}));
    let r = manage(&admin, alice.id, "enable").await;
    assert_eq!(r.ok(), &json!({"role": 1, "status": 1}));
    // ...but never promotes (only root changes admins)...
    let before = snapshot(ts.store()).await;
    forbidden(manage(&admin, alice.id, "promote").await);
    // ...and never acts on an equal or higher role.
    for action in ["disable", "enable", "delete", "promote", "demote"] {
        like_missing(manage(&admin, admin2.id, action).await);
        like_missing(manage(&admin, 1, action).await);
        manage(&admin, admin.id, action)
            .await
            .refused("own account");
    }
    let missing_get = ts.get(&admin, "/api/user/424242").await;
    missing_get.refused("not found");
    for id in [admin2.id, 1] {
        let r = ts.get(&admin, &format!("/api/user/{id}")).await;
        assert_eq!((r.status, &r.body), (missing_get.status, &missing_get.body));
        let r = ts.delete(&admin, &format!("/api/user/{id}")).await;
        let m = ts.delete(&admin, "/api/user/424242").await;
        assert_eq!((r.status, &r.body), (m.status, &m.body));
        let r = ts
            .put(&admin, "/api/user/", json!({"id": id, "quota": 1}))
            .await;
        let m = ts
            .put(&admin, "/api/user/", json!({"id": 424242, "quota": 1}))
            .await;
        assert_eq!((r.status, &r.body), (m.status, &m.body));
        m.refused("not found");
    }
    // An admin reads their own record by id.
    let r = ts.get(&admin, &format!("/api/user/{}", admin.id)).await;
    assert_eq!(r.ok()["id"], json!(admin.id));
    // Admins see only the users they may manage.
    let r = ts.get(&admin, "/api/user/?page_size=100").await;
    let ids: Vec<i64> = r.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [alice.id]);
    assert_eq!(r.ok()["total"], json!(1));
    let r = ts.get(&admin, "/api/user/search?keyword=admin").await;
    assert_eq!(r.ok()["total"], json!(0));
    assert_eq!(before, snapshot(ts.store()).await);
    // Admins create only common users.
    assert_refused_unchanged!(
        ts,
        "role",
        ts.post(
            &admin,
            "/api/user/",
            json!({"username": "x2", "password": "password123", "role": 10})
        )
    );
    // Common users reach no admin route.
    for r in [
        ts.get(&alice, "/api/user/").await,
        ts.get(&alice, "/api/user/search?keyword=a").await,
        ts.get(&alice, &format!("/api/user/{}", alice.id)).await,
        manage(&alice, alice.id, "enable").await,
    ] {
        forbidden(r);
    }
    assert_refused_unchanged!(ts, "action", manage(&admin, alice.id, "explode"));
    assert_refused_unchanged!(ts, "already", manage(&admin, alice.id, "demote"));

    // Root promotes and demotes.
    let r = manage(&root, alice.id, "promote").await;
    assert_eq!(r.ok(), &json!({"role": 10, "status": 1}));
    assert_refused_unchanged!(ts, "already", manage(&root, alice.id, "promote"));
    // Now an admin, alice is out of the other admin's reach.
    like_missing(manage(&admin, alice.id, "disable").await);
    let r = manage(&root, alice.id, "demote").await;
    assert_eq!(r.ok(), &json!({"role": 1, "status": 1}));
    let r = manage(&root, admin2.id, "demote").await;
    assert_eq!(r.ok()["role"], json!(1));
    // Root is never acted on, not even by root.
    assert_refused_unchanged!(ts, "own account", manage(&root, 1, "disable"));
    assert_refused_unchanged!(ts, "own account", manage(&root, 1, "delete"));
    // Delete by manage.
    manage(&admin, alice.id, "delete").await.ok();
    ts.get(&root, &format!("/api/user/{}", alice.id))
        .await
        .refused("not found");
    // Every act names the actor in the ledger.
    let rows = ts.manage_logs().await;
    assert!(rows.iter().any(|l| l.log.content.contains("admin")
        && l.log.content.contains("alice")
        && l.log.user_id == alice.id));
    ts.stop().await;
}

/// Login attempts are throttled per client IP (20 a minute), wrong and
/// right passwords alike, so a password cannot be guessed at speed.
#[tokio::test]
async fn login_attempts_are_throttled_per_client_ip() {
    let ts = spawn().await;
    // One attempt: the login inside `user`.
    ts.user("alice", 1).await;
    let client = reqwest::Client::new();
    for i in 2..=20 {
        let (r, _) = login(&ts, &client, "alice", "wrong-password").await;
        assert_eq!(r.status, StatusCode::OK, "attempt {i}: {}", r.body);
        assert!(!r.body["success"].as_bool().unwrap());
    }
    let (r, cookie) = login(&ts, &client, "alice", "password123").await;
    r.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.message().contains("too many login attempts"),
        "{}",
        r.body
    );
    assert!(cookie.is_empty(), "a throttled login set a session");
    // Registration shares the budget.
    let r = send(
        client
            .post(ts.url("/api/user/register"))
            .json(&json!({"username": "mallory", "password": "password123"})),
    )
    .await;
    r.error(StatusCode::TOO_MANY_REQUESTS);
    ts.stop().await;
}
