//! Authorization over every token and user route: another user, and an
//! administrator not above the target's role, can neither read nor change the
//! target's data. Each attempt is checked by its answer (another user's id
//! answers exactly like a missing one) and by the database being unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Caller, Resp, TestServer, snapshot, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An id no row has.
const MISSING: i64 = 987_654;

struct Victim {
    who: Caller,
    name: String,
    token_id: i64,
    token_name: String,
    key: String,
}

async fn victim(ts: &TestServer, who: Caller, name: &str) -> Victim {
    let token_name = format!("secret-of-{name}");
    let t = ts
        .token(&who, json!({"name": token_name, "remain_quota": 100}))
        .await;
    Victim {
        who,
        name: name.to_string(),
        token_id: t["id"].as_i64().unwrap(),
        token_name,
        key: t["key"].as_str().unwrap().to_string(),
    }
}

async fn call(
    ts: &TestServer,
    c: &Caller,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut rb = ts.req(c, method, path);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    ts.send(rb).await
}

/// Sends the request built for `target` and for [`MISSING`]; both must answer
/// the same (status and body) and neither may succeed.
async fn same_as_missing(
    ts: &TestServer,
    c: &Caller,
    method: Method,
    make: impl Fn(i64) -> (String, Option<Value>),
    target: i64,
) {
    let (p1, b1) = make(target);
    let (p2, b2) = make(MISSING);
    let r1 = call(ts, c, method.clone(), &p1, b1).await;
    let r2 = call(ts, c, method.clone(), &p2, b2).await;
    assert_eq!(
        (r1.status, &r1.body),
        (r2.status, &r2.body),
        "{method} {p1}: another user's id must answer like a missing one"
    );
    assert_ne!(
        r1.body["success"],
        json!(true),
        "{method} {p1}: {}",
        r1.body
    );
}

fn item_ids(r: &Resp) -> Vec<i64> {
    r.ok()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect()
}

/// Every token route, as `attacker`, against `v`'s token.
async fn attack_tokens(ts: &TestServer, attacker: &Caller, v: &Victim) {
    let before = snapshot(ts.store()).await;
    let vid = v.token_id;
    let uid = v.who.id;

    // Lists and searches never show the victim's token, ?user_id= or not.
    for path in [
        "/api/token/?size=100".to_string(),
        format!("/api/token/?size=100&user_id={uid}"),
        format!("/api/token/search?keyword={}", v.token_name),
        format!("/api/token/search?keyword={}&user_id={uid}", v.token_name),
        format!("/api/token/search?token={}", &v.key[6..30]),
        format!("/api/token/search?token=sk-{}", v.key),
        format!("/api/token/search?token={}&user_id={uid}", v.key),
    ] {
        let r = ts.get(attacker, &path).await;
        let d = r.ok();
        assert!(
            !item_ids(&r).contains(&vid),
            "{path} shows the victim's token"
        );
        for item in d["items"].as_array().unwrap() {
            assert_eq!(item["user_id"], json!(attacker.id), "{path}: {item}");
        }
        assert!(!r.body.to_string().contains(&v.key), "{path} leaks the key");
    }

    same_as_missing(
        ts,
        attacker,
        Method::GET,
        |id| (format!("/api/token/{id}"), None),
        vid,
    )
    .await;
    same_as_missing(
        ts,
        attacker,
        Method::PUT,
        |id| {
            (
                "/api/token/".into(),
                Some(json!({"id": id, "name": "pwned", "remain_quota": 999999, "unlimited_quota": true})),
            )
        },
        vid,
    )
    .await;
    same_as_missing(
        ts,
        attacker,
        Method::PUT,
        |id| {
            (
                "/api/token/?status_only=true".into(),
                Some(json!({"id": id, "status": 2})),
            )
        },
        vid,
    )
    .await;
    same_as_missing(
        ts,
        attacker,
        Method::DELETE,
        |id| (format!("/api/token/{id}"), None),
        vid,
    )
    .await;
    same_as_missing(
        ts,
        attacker,
        Method::POST,
        |id| (format!("/api/token/{id}/key"), Some(json!({}))),
        vid,
    )
    .await;

    // Batch routes answer as if the id were not there.
    let r = ts
        .post(attacker, "/api/token/batch", json!({"ids": [vid]}))
        .await;
    assert_eq!(r.ok(), &json!(0));
    let r = ts
        .post(attacker, "/api/token/batch/keys", json!({"ids": [vid]}))
        .await;
    assert_eq!(r.ok(), &json!({"keys": {}}));
    assert!(!r.body.to_string().contains(&v.key));

    // Creating a token in the victim's name is refused like for a missing user.
    let r1 = ts
        .post(
            attacker,
            "/api/token/",
            json!({"name": "planted", "user_id": uid}),
        )
        .await;
    let r2 = ts
        .post(
            attacker,
            "/api/token/",
            json!({"name": "planted", "user_id": MISSING}),
        )
        .await;
    r1.refused("user_id");
    assert_eq!((r1.status, &r1.body), (r2.status, &r2.body));

    assert_eq!(
        before,
        snapshot(ts.store()).await,
        "{} vs {}",
        attacker.id,
        v.name
    );
    // The victim still has the token, untouched.
    let mine = ts.get(&v.who, &format!("/api/token/{vid}")).await;
    assert_eq!(mine.ok()["name"], json!(v.token_name));
    assert_eq!(mine.ok()["remain_quota"], json!(100));
}

/// Every admin user route, as `attacker` (a common user, or an admin not
/// above the victim), against `v`.
async fn attack_user_admin_routes(
    ts: &TestServer,
    attacker: &Caller,
    attacker_is_admin: bool,
    v: &Victim,
) {
    let before = snapshot(ts.store()).await;
    let uid = v.who.id;
    if attacker_is_admin {
        let r = ts.get(attacker, "/api/user/?page_size=100").await;
        assert!(!item_ids(&r).contains(&uid), "list shows {}", v.name);
        let r = ts
            .get(attacker, &format!("/api/user/search?keyword={}", v.name))
            .await;
        assert!(!item_ids(&r).contains(&uid), "search shows {}", v.name);
        let r = ts
            .get(attacker, &format!("/api/user/search?keyword={uid}"))
            .await;
        assert!(!item_ids(&r).contains(&uid), "id search shows {}", v.name);
        same_as_missing(
            ts,
            attacker,
            Method::GET,
            |id| (format!("/api/user/{id}"), None),
            uid,
        )
        .await;
        same_as_missing(
            ts,
            attacker,
            Method::PUT,
            |id| {
                (
                    "/api/user/".into(),
                    Some(json!({"id": id, "quota": 999999, "display_name": "pwned", "password": "pwned-password"})),
                )
            },
            uid,
        )
        .await;
        same_as_missing(
            ts,
            attacker,
            Method::DELETE,
            |id| (format!("/api/user/{id}"), None),
            uid,
        )
        .await;
        for action in ["disable", "enable", "delete", "promote", "demote"] {
            same_as_missing(
                ts,
                attacker,
                Method::POST,
                |id| {
                    (
                        "/api/user/manage".into(),
                        Some(json!({"id": id, "action": action})),
                    )
                },
                uid,
            )
            .await;
        }
    } else {
        let forbidden = |r: Resp| r.error(StatusCode::FORBIDDEN);
        forbidden(ts.get(attacker, "/api/user/").await);
        forbidden(
            ts.get(attacker, &format!("/api/user/search?keyword={}", v.name))
                .await,
        );
        forbidden(ts.get(attacker, &format!("/api/user/{uid}")).await);
        forbidden(
            ts.put(attacker, "/api/user/", json!({"id": uid, "quota": 999999}))
                .await,
        );
        forbidden(ts.delete(attacker, &format!("/api/user/{uid}")).await);
        forbidden(
            ts.post(
                attacker,
                "/api/user/",
                json!({"username": "sneaky", "password": "password123"}),
            )
            .await,
        );
        for action in ["disable", "enable", "delete", "promote", "demote"] {
            forbidden(
                ts.post(
                    attacker,
                    "/api/user/manage",
                    json!({"id": uid, "action": action}),
                )
                .await,
            );
        }
    }
    assert_eq!(
        before,
        snapshot(ts.store()).await,
        "{} vs {}",
        attacker.id,
        v.name
    );
}

/// Routes about "self" act on the caller only: a body or header naming the
/// victim changes nothing of the victim's.
async fn attack_self_routes(ts: &TestServer, attacker: &Caller, v: &Victim) {
    let uid = v.who.id;
    let victim_before = format!("{:?}", ts.store().user_by_id(uid).await.unwrap());

    // New-Api-User naming the victim with the attacker's credential: 401, on
    // every route, and nothing changes.
    let before = snapshot(ts.store()).await;
    for (method, path, body) in [
        (Method::GET, "/api/user/self", None),
        (
            Method::PUT,
            "/api/user/self",
            Some(json!({"display_name": "pwned"})),
        ),
        (Method::GET, "/api/user/token", None),
        (Method::GET, "/api/user/models", None),
        (Method::GET, "/api/user/self/groups", None),
        (Method::POST, "/api/user/topup", Some(json!({"key": "x"}))),
        (Method::GET, "/api/token/", None),
        (
            Method::POST,
            "/api/token/",
            Some(json!({"name": "planted"})),
        ),
        (
            Method::PUT,
            "/api/token/",
            Some(json!({"id": v.token_id, "name": "pwned"})),
        ),
        (Method::DELETE, "/api/token/{}", None),
        (Method::POST, "/api/token/{}/key", Some(json!({}))),
    ] {
        let path = path.replace("{}", &v.token_id.to_string());
        let mut rb = ts
            .http
            .request(method.clone(), ts.url(&path))
            .header("Authorization", format!("Bearer {}", attacker.token))
            .header("New-Api-User", uid.to_string());
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        ts.send(rb).await.error(StatusCode::UNAUTHORIZED);
    }
    assert_eq!(before, snapshot(ts.store()).await);

    // Logging out with the victim's id in the header ends nothing of theirs.
    let r = ts
        .send(
            ts.http
                .get(ts.url("/api/user/logout"))
                .header("Authorization", format!("Bearer {}", attacker.token))
                .header("New-Api-User", uid.to_string()),
        )
        .await;
    r.ok();
    // Taking the victim's username is refused.
    let r = ts
        .put(attacker, "/api/user/self", json!({"username": v.name}))
        .await;
    r.refused("username");

    // GET self answers the caller, never the victim.
    let me = ts.get(attacker, "/api/user/self").await;
    assert_eq!(me.ok()["id"], json!(attacker.id));
    // PUT self with the victim's id in the body changes the caller only.
    ts.put(
        attacker,
        "/api/user/self",
        json!({"id": uid, "display_name": "changed"}),
    )
    .await
    .ok();
    // A top-up naming the victim credits the caller.
    let code = ts
        .post(
            &ts.root(),
            "/api/redemption/",
            json!({"name": "c", "quota": 5, "count": 1}),
        )
        .await
        .ok()[0]
        .clone();
    let r = ts
        .post(
            attacker,
            "/api/user/topup",
            json!({"key": code, "user_id": uid, "id": uid}),
        )
        .await;
    assert_eq!(r.ok(), &json!(5));
    assert_eq!(
        format!("{:?}", ts.store().user_by_id(uid).await.unwrap()),
        victim_before,
        "the victim's row changed"
    );
}

#[tokio::test]
async fn other_users_cannot_read_or_change_anyones_tokens() {
    let ts = spawn().await;
    let alice = victim(&ts, ts.fast_user("alice", 1).await, "alice").await;
    let ada = victim(&ts, ts.fast_user("ada", 10).await, "ada").await;
    let root = victim(&ts, ts.root(), "root").await;
    let bob = ts.fast_user("bob", 1).await;
    let eve = ts.fast_user("eve", 10).await;
    ts.token(&bob, json!({"name": "bobs own"})).await;
    ts.token(&eve, json!({"name": "eves own"})).await;
    for v in [&alice, &ada, &root] {
        attack_tokens(&ts, &bob, v).await;
        // An admin is no root: other users' tokens are out of reach too.
        attack_tokens(&ts, &eve, v).await;
    }
    // Sanity: root, and only root, does reach another user's token.
    let r = ts
        .get(&ts.root(), &format!("/api/token/{}", alice.token_id))
        .await;
    assert_eq!(r.ok()["name"], json!(alice.token_name));
    ts.stop().await;
}

#[tokio::test]
async fn user_routes_protect_equal_and_higher_roles() {
    let ts = spawn().await;
    let alice = victim(&ts, ts.fast_user("alice", 1).await, "alice").await;
    let ada = victim(&ts, ts.fast_user("ada", 10).await, "ada").await;
    let root = victim(&ts, ts.root(), "root").await;
    let bob = ts.fast_user("bob", 1).await;
    let eve = ts.fast_user("eve", 10).await;
    for v in [&alice, &ada, &root] {
        attack_user_admin_routes(&ts, &bob, false, v).await;
    }
    for v in [&ada, &root] {
        attack_user_admin_routes(&ts, &eve, true, v).await;
    }
    // Sanity: the admin does manage a common user.
    let r = ts.get(&eve, &format!("/api/user/{}", alice.who.id)).await;
    assert_eq!(r.ok()["username"], json!("alice"));
    ts.stop().await;
}

#[tokio::test]
async fn self_routes_act_only_on_the_caller() {
    let ts = spawn().await;
    let alice = victim(&ts, ts.fast_user("alice", 1).await, "alice").await;
    let ada = victim(&ts, ts.fast_user("ada", 10).await, "ada").await;
    let root = victim(&ts, ts.root(), "root").await;
    let bob = ts.fast_user("bob", 1).await;
    let eve = ts.fast_user("eve", 10).await;
    for v in [&alice, &ada, &root] {
        attack_self_routes(&ts, &bob, v).await;
    }
    for v in [&alice, &ada, &root] {
        attack_self_routes(&ts, &eve, v).await;
    }
    ts.stop().await;
}
