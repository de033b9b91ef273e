//! `GET/PUT /api/option/` (root) and the public `GET /api/status` (SPEC §4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestServer, snapshot, spawn};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn options(ts: &TestServer) -> serde_json::Map<String, Value> {
    let r = ts.get(&ts.root(), "/api/option/").await;
    r.ok()
        .as_array()
        .expect("options are a list of {key, value}")
        .iter()
        .map(|o| (o["key"].as_str().unwrap().to_string(), o["value"].clone()))
        .collect()
}

async fn put(ts: &TestServer, key: &str, value: Value) -> common::Resp {
    ts.put(
        &ts.root(),
        "/api/option/",
        json!({"key": key, "value": value}),
    )
    .await
}

#[tokio::test]
async fn status_is_public_with_quota_per_unit() {
    let ts = spawn().await;
    let r = ts.send(ts.anon(Method::GET, "/api/status")).await;
    let d = r.ok().clone();
    assert_eq!(d["quota_per_unit"].as_f64(), Some(500000.0), "{d}");
    assert_eq!(d["system_name"], json!("sluice"));
    assert_eq!(d["version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(d["register_enabled"], json!(true));
    assert_eq!(d["password_login_enabled"], json!(true));
    // Changes show up at once.
    ts.set_option("SystemName", "My Gateway").await;
    ts.set_option("RegisterEnabled", "false").await;
    ts.set_option("QuotaPerUnit", "1000").await;
    let r = ts.send(ts.anon(Method::GET, "/api/status")).await;
    let d = r.ok();
    assert_eq!(d["system_name"], json!("My Gateway"));
    assert_eq!(d["register_enabled"], json!(false));
    assert_eq!(d["quota_per_unit"].as_f64(), Some(1000.0));
    ts.stop().await;
}

#[tokio::test]
async fn status_quota_per_unit_is_an_integer_on_the_wire() {
    // new-api sends `500000`; Go clients decode it into an int, which fails
    // on `500000.0`.
    let ts = spawn().await;
    let text = ts
        .anon(Method::GET, "/api/status")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"quota_per_unit\":500000,") || text.contains("\"quota_per_unit\":500000}"),
        "{text}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn options_are_root_only() {
    let ts = spawn().await;
    let admin = ts.fast_user("admin", 10).await;
    let alice = ts.fast_user("alice", 1).await;
    let before = snapshot(ts.store()).await;
    for c in [&admin, &alice] {
        ts.get(c, "/api/option/").await.error(StatusCode::FORBIDDEN);
        ts.put(
            c,
            "/api/option/",
            json!({"key": "RetryTimes", "value": "3"}),
        )
        .await
        .error(StatusCode::FORBIDDEN);
    }
    ts.send(ts.anon(Method::GET, "/api/option/"))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(before, snapshot(ts.store()).await);
    assert_eq!(options(&ts).await["RetryTimes"], json!("0"));
    ts.stop().await;
}

#[tokio::test]
async fn get_lists_every_option_as_strings_and_put_changes_them() {
    let ts = spawn().await;
    let o = options(&ts).await;
    for k in [
        "ModelRatio",
        "CompletionRatio",
        "GroupRatio",
        "ModelPrice",
        "UserUsableGroups",
        "QuotaPerUnit",
        "RetryTimes",
        "AutomaticDisableChannelEnabled",
        "AutomaticEnableChannelEnabled",
        "RegisterEnabled",
        "PasswordLoginEnabled",
    ] {
        assert!(
            o[k].is_string(),
            "{k} is listed as a string: {:?}",
            o.get(k)
        );
    }
    let cases = [
        ("RetryTimes", json!("3"), "3"),
        ("RetryTimes", json!(4), "4"),
        ("AutomaticDisableChannelEnabled", json!("true"), "true"),
        ("RegisterEnabled", json!(false), "false"),
        ("QuotaPerUnit", json!("250000"), "250000"),
        (
            "ModelRatio",
            json!(r#"{"gpt-5.4":1.25,"m2":0}"#),
            r#"{"gpt-5.4":1.25,"m2":0}"#,
        ),
        (
            "GroupRatio",
            json!(r#"{"default":1,"vip":2}"#),
            r#"{"default":1,"vip":2}"#,
        ),
        (
            "UserUsableGroups",
            json!(r#"{"default":"D","vip":"V"}"#),
            r#"{"default":"D","vip":"V"}"#,
        ),
        (
            "ModelPrice",
            json!(r#"{"dall-e-3":0.04}"#),
            r#"{"dall-e-3":0.04}"#,
        ),
        // Keys sluice does not know are kept verbatim (dashboards store many).
        (
            "SomeDashboardSetting",
            json!("anything at all"),
            "anything at all",
        ),
    ];
    for (k, v, stored) in cases {
        put(&ts, k, v).await.ok();
        assert_eq!(options(&ts).await[k], json!(stored), "{k}");
    }
    // A change is a manage row naming root.
    let rows = ts.manage_logs().await;
    assert!(
        rows.iter()
            .any(|l| l.log.content.contains("root") && l.log.content.contains("ModelRatio"))
    );
    ts.stop().await;
}

#[tokio::test]
async fn bad_values_are_refused_whole() {
    let ts = spawn().await;
    let cases = [
        ("ModelRatio", json!("{not json")),
        ("ModelRatio", json!(r#"{"gpt-5.4":"x"}"#)),
        ("ModelRatio", json!(r#"{"gpt-5.4":1,"bad":-1}"#)),
        ("ModelRatio", json!("[1,2]")),
        ("CompletionRatio", json!(r#"{"a":null}"#)),
        ("ModelPrice", json!("3")),
        ("GroupRatio", json!("{}")),
        ("UserUsableGroups", json!(r#"{"vip":1}"#)),
        ("UserUsableGroups", json!(r#"{"":"empty"}"#)),
        ("QuotaPerUnit", json!("0")),
        ("QuotaPerUnit", json!("-5")),
        ("QuotaPerUnit", json!("lots")),
        ("RetryTimes", json!("11")),
        ("RetryTimes", json!("-1")),
        ("RetryTimes", json!("two")),
        ("RegisterEnabled", json!("yes")),
        ("PasswordLoginEnabled", json!("1")),
        ("AutomaticEnableChannelEnabled", json!("TRUE")),
        ("MaxUserTokens", json!("0")),
    ];
    for (k, v) in cases {
        assert_refused_unchanged!(ts, k, put(&ts, k, v.clone()));
    }
    assert_refused_unchanged!(ts, "value", put(&ts, "RetryTimes", json!(null)));
    assert_refused_unchanged!(ts, "value", put(&ts, "RetryTimes", json!({"n": 1})));
    assert_refused_unchanged!(
        ts,
        "key",
        ts.put(&ts.root(), "/api/option/", json!({"value": "1"}))
    );
    // Wrong JSON types for the envelope fields are a 400 naming the field.
    let r = ts
        .put(&ts.root(), "/api/option/", json!({"key": 5, "value": "1"}))
        .await;
    r.error(StatusCode::BAD_REQUEST);
    assert!(r.message().contains("key"));
    // The running options did not change either.
    let o = options(&ts).await;
    assert_eq!(o["RetryTimes"], json!("0"));
    assert_eq!(o["RegisterEnabled"], json!("true"));
    ts.stop().await;
}

#[tokio::test]
async fn credentials_stored_as_options_are_never_listed() {
    let ts = spawn().await;
    put(&ts, "GitHubClientSecret", json!("very-secret-value"))
        .await
        .ok();
    put(&ts, "SMTPToken", json!("smtp-secret-value")).await.ok();
    let r = ts.get(&ts.root(), "/api/option/").await;
    let text = r.body.to_string();
    assert!(!text.contains("very-secret-value"), "{text}");
    assert!(!text.contains("smtp-secret-value"));
    ts.stop().await;
}
