//! Every management route × (anonymous, user, admin, root): who may use it,
//! and that a refused caller changes nothing. Together with `authz.rs`
//! (no cross-user reads or writes on the routes every user may use) this is
//! the access-control half of docs/security.md. Plus the CSRF defences of
//! cookie sessions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Caller, TestServer, snapshot, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Public,
    User,
    Admin,
    Root,
}

/// Ids of real rows for the `{id}` routes.
struct Ids {
    channel: i64,
    redemption: i64,
    token: i64,
    user: i64,
}

fn routes(ids: &Ids) -> Vec<(Method, String, Value, Level)> {
    use Level::*;
    use Method as M;
    let mut v: Vec<(Method, String, Value, Level)> = vec![
        (M::GET, "/api/status".into(), json!(null), Public),
        (M::GET, "/healthz".into(), json!(null), Public),
        (M::GET, "/metrics".into(), json!(null), Public),
        (M::GET, "/api/user/groups".into(), json!(null), Public),
        (M::GET, "/api/user/self".into(), json!(null), User),
        (
            M::PUT,
            "/api/user/self".into(),
            json!({"display_name": "x"}),
            User,
        ),
        (M::GET, "/api/user/token".into(), json!(null), User),
        (M::GET, "/api/user/models".into(), json!(null), User),
        (M::GET, "/api/user/self/groups".into(), json!(null), User),
        (
            M::POST,
            "/api/user/topup".into(),
            json!({"key": "nope"}),
            User,
        ),
        (M::GET, "/api/log/self".into(), json!(null), User),
        (M::GET, "/api/log/self/stat".into(), json!(null), User),
        (M::GET, "/api/data/self".into(), json!(null), User),
        (
            M::GET,
            "/api/token/search?keyword=x".into(),
            json!(null),
            User,
        ),
        (
            M::POST,
            "/api/token/batch".into(),
            json!({"ids": [ids.token]}),
            User,
        ),
        (
            M::POST,
            "/api/token/batch/keys".into(),
            json!({"ids": [ids.token]}),
            User,
        ),
        (
            M::GET,
            format!("/api/token/{}", ids.token),
            json!(null),
            User,
        ),
        (
            M::DELETE,
            format!("/api/token/{}", ids.token),
            json!(null),
            User,
        ),
        (
            M::POST,
            format!("/api/token/{}/key", ids.token),
            json!({}),
            User,
        ),
        (
            M::GET,
            "/api/user/search?keyword=x".into(),
            json!(null),
            Admin,
        ),
        (
            M::POST,
            "/api/user/manage".into(),
            json!({"id": ids.user, "action": "disable"}),
            Admin,
        ),
        (
            M::GET,
            format!("/api/user/{}", ids.user),
            json!(null),
            Admin,
        ),
        (
            M::DELETE,
            format!("/api/user/{}", ids.user),
            json!(null),
            Admin,
        ),
        (
            M::GET,
            "/api/channel/search?keyword=x".into(),
            json!(null),
            Admin,
        ),
        (M::GET, "/api/channel/models".into(), json!(null), Admin),
        (
            M::GET,
            "/api/channel/models_enabled".into(),
            json!(null),
            Admin,
        ),
        (
            M::DELETE,
            "/api/channel/disabled".into(),
            json!(null),
            Admin,
        ),
        (
            M::POST,
            "/api/channel/batch".into(),
            json!({"ids": [ids.channel]}),
            Admin,
        ),
        (
            M::GET,
            format!("/api/channel/test/{}", ids.channel),
            json!(null),
            Admin,
        ),
        (
            M::GET,
            format!("/api/channel/{}", ids.channel),
            json!(null),
            Admin,
        ),
        (
            M::DELETE,
            format!("/api/channel/{}", ids.channel),
            json!(null),
            Admin,
        ),
        (
            M::POST,
            format!("/api/channel/{}/key", ids.channel),
            json!({}),
            Root,
        ),
        (M::GET, "/api/log/stat".into(), json!(null), Admin),
        (
            M::GET,
            "/api/redemption/search?keyword=x".into(),
            json!(null),
            Admin,
        ),
        (
            M::DELETE,
            "/api/redemption/invalid".into(),
            json!(null),
            Admin,
        ),
        (
            M::GET,
            format!("/api/redemption/{}", ids.redemption),
            json!(null),
            Admin,
        ),
        (
            M::DELETE,
            format!("/api/redemption/{}", ids.redemption),
            json!(null),
            Admin,
        ),
    ];
    // Collections, with and without the trailing slash (both are routes).
    for base in ["/api/token", "/api/token/"] {
        v.push((M::GET, base.into(), json!(null), User));
        v.push((M::POST, base.into(), json!({"name": "m"}), User));
        v.push((
            M::PUT,
            base.into(),
            json!({"id": ids.token, "name": "m"}),
            User,
        ));
    }
    for base in ["/api/user", "/api/user/"] {
        v.push((M::GET, base.into(), json!(null), Admin));
        v.push((
            M::POST,
            base.into(),
            json!({"username": format!("made{}", base.len()), "password": "password123"}),
            Admin,
        ));
        v.push((
            M::PUT,
            base.into(),
            json!({"id": ids.user, "quota": 5}),
            Admin,
        ));
    }
    for base in ["/api/channel", "/api/channel/"] {
        v.push((M::GET, base.into(), json!(null), Admin));
        v.push((
            M::POST,
            base.into(),
            json!({"type": 1, "name": "c", "key": "k", "base_url": "http://127.0.0.1:9", "models": "m"}),
            Admin,
        ));
        v.push((
            M::PUT,
            base.into(),
            json!({"id": ids.channel, "name": "c2"}),
            Admin,
        ));
    }
    for base in ["/api/redemption", "/api/redemption/"] {
        v.push((M::GET, base.into(), json!(null), Admin));
        v.push((
            M::POST,
            base.into(),
            json!({"name": "r", "quota": 5, "count": 1}),
            Admin,
        ));
        v.push((
            M::PUT,
            base.into(),
            json!({"id": ids.redemption, "name": "r2"}),
            Admin,
        ));
    }
    for base in ["/api/log", "/api/log/"] {
        v.push((M::GET, base.into(), json!(null), Admin));
        v.push((
            M::DELETE,
            format!("{base}?target_timestamp=1"),
            json!(null),
            Admin,
        ));
    }
    for base in ["/api/data", "/api/data/"] {
        v.push((M::GET, base.into(), json!(null), Admin));
    }
    for base in ["/api/option", "/api/option/"] {
        v.push((M::GET, base.into(), json!(null), Root));
        v.push((
            M::PUT,
            base.into(),
            json!({"key": "SystemName", "value": "x"}),
            Root,
        ));
    }
    v
}

async fn send(
    ts: &TestServer,
    who: Option<&Caller>,
    m: &Method,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let mut rb = match who {
        Some(c) => ts.req(c, m.clone(), path),
        None => ts.anon(m.clone(), path),
    };
    if !body.is_null() {
        rb = rb.json(body);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn every_route_admits_exactly_its_level() {
    let ts = spawn().await;
    let root = ts.root();
    let admin = ts.fast_user("admin", 10).await;
    let user = ts.fast_user("user", 1).await;
    let target = ts.fast_user("target", 1).await;
    let channel = ts
        .post(
            &root,
            "/api/channel/",
            json!({"type": 1, "name": "c", "key": "secret-channel-key", "base_url": "http://127.0.0.1:9", "models": "m"}),
        )
        .await
        .ok()["ids"][0]
        .as_i64()
        .unwrap();
    let redemption = ts
        .post(
            &root,
            "/api/redemption/",
            json!({"name": "r", "quota": 5, "count": 1}),
        )
        .await;
    redemption.ok();
    let redemption = ts.get(&root, "/api/redemption/").await.ok()["items"][0]["id"]
        .as_i64()
        .unwrap();
    let token = ts.token(&root, json!({"name": "root-token"})).await["id"]
        .as_i64()
        .unwrap();
    let ids = Ids {
        channel,
        redemption,
        token,
        user: target.id,
    };
    let table = routes(&ids);
    let mut callers = [
        ("anonymous", None, Level::Public),
        ("user", Some(user.clone()), Level::User),
        ("admin", Some(admin.clone()), Level::Admin),
        ("root", Some(root.clone()), Level::Root),
    ];

    // Refused first: nothing may change.
    let before = snapshot(ts.store()).await;
    let mut refused = 0;
    for (m, path, body, need) in &table {
        for (name, who, level) in &callers {
            if level >= need {
                continue;
            }
            let (status, v) = send(&ts, who.as_ref(), m, path, body).await;
            let want = if who.is_none() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(status, want, "{name} {m} {path}: {v}");
            assert_eq!(v["success"], json!(false), "{name} {m} {path}: {v}");
            refused += 1;
        }
    }
    assert_eq!(
        snapshot(ts.store()).await,
        before,
        "a refused call changed data"
    );
    assert!(refused > 100, "{refused}");

    // Then allowed: never an authorization failure. (The user's token
    // routes act on the user's own rows, so root's token id is simply
    // not found for them; authz.rs covers that side.)
    for (m, path, body, need) in &table {
        for (name, who, level) in callers.iter_mut() {
            if *level < *need {
                continue;
            }
            let (status, v) = send(&ts, who.as_ref(), m, path, body).await;
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{name} {m} {path}: {status} {v}"
            );
            // A new access token replaces the caller's.
            if path == "/api/user/token"
                && let (Some(c), Some(t)) = (who.as_mut(), v["data"].as_str())
            {
                c.token = t.to_string();
            }
        }
    }
    ts.stop().await;
}

/// Cookie sessions and CSRF: the cookie is HttpOnly and SameSite=Strict, a
/// request carrying only the cookie (what a cross-site form or image can
/// send) is refused for want of the New-Api-User header, and no CORS grant
/// lets another origin add that header.
#[tokio::test]
async fn cookie_sessions_resist_cross_site_requests() {
    let ts = spawn().await;
    let alice = ts.user("alice", 1).await;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let r = browser
        .post(ts.url("/api/user/login"))
        .json(&json!({"username": "alice", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let before = snapshot(ts.store()).await;
    // A cross-site form post: the cookie, form encoding, no custom header.
    let r = browser
        .post(ts.url("/api/token/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body("name=stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = browser
        .put(ts.url("/api/user/self"))
        .header("origin", "https://evil.example")
        .json(&json!({"password": "hijacked-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(snapshot(ts.store()).await, before);
    // A preflight from another origin is not granted.
    let r = ts
        .http
        .request(Method::OPTIONS, ts.url("/api/token/"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "new-api-user")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers()
    );
    // The same browser with the header (the dashboard, same origin) works.
    let r = browser
        .get(ts.url("/api/user/self"))
        .header("New-Api-User", alice.id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    ts.stop().await;
}
