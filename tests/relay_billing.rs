//! Billing (SPEC §6): exact costs by the formula, group ratios, fixed
//! prices, the shipped defaults, self-use mode, reservations (worst case,
//! default allowance), settlement to the reported usage, refunds, and the
//! counters of user, token and channel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{assert_error, other};
use common::{TestServer, spawn};
use serde_json::{Value, json};
use sluice::mock::{COMPLETION_TOKENS, Mock, PROMPT_TOKENS};

/// `ceil((p + c × cr) × mr × gr)` computed independently of sluice.
fn formula(p: i64, c: i64, cr: f64, mr: f64, gr: f64) -> i64 {
    // Work in exact decimals: every ratio used below has at most 4 decimals.
    let scale = 10_000i128;
    let q = |x: f64| (x * scale as f64).round() as i128;
    let tokens = p as i128 * scale + c as i128 * q(cr); // × 1e4
    let num = tokens * q(mr) * q(gr); // × 1e12
    let den = scale * scale * scale;
    ((num + den - 1) / den) as i64
}

async fn setup() -> (TestServer, Mock) {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.channel(json!({"type": 1, "name": "main", "key": "ok", "base_url": mock.url(),
        "models": "bill-m,img-m,free-m,gpt-4o-mini,gemini-2.5-flash,text-embedding-3-small,mystery-x",
        "group": "default,vip,svip"}))
        .await;
    (ts, mock)
}

fn chat_body(max_tokens: i64, stream: bool, usage: bool) -> Value {
    let mut b = json!({"model": "bill-m", "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": "what does this cost?"}]});
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

#[test]
fn the_reference_formula_itself() {
    assert_eq!(formula(10, 7, 3.0, 0.3, 1.0), 10); // 9.3
    assert_eq!(formula(10, 20, 3.0, 0.3, 1.0), 21); // exactly 21
    assert_eq!(formula(10, 20, 4.0, 1.25, 1.0), 113); // 112.5
}

#[tokio::test]
async fn plain_calls_cost_exactly_the_formula_and_move_every_counter() {
    let (ts, _mock) = setup().await;
    ts.option("ModelRatio", r#"{"bill-m": 0.3}"#).await;
    ts.option("CompletionRatio", r#"{"bill-m": 3}"#).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let mut total = 0;
    for max in [7, 20, 1, 13] {
        let r = ts
            .relay(&key, "/v1/chat/completions", chat_body(max, false, false))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        total += formula(PROMPT_TOKENS, max.min(COMPLETION_TOKENS), 3.0, 0.3, 1.0);
    }
    // 9.3→10, 21, 3.9→4, 14.7→15
    assert_eq!(total, 10 + 21 + 4 + 15);
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(total));
    assert_eq!(t["remain_quota"], json!(100_000 - total));
    let row = ts.token_row(tid).await;
    assert_eq!(row["request_count"], json!(4));
    let user = ts.user_of(u.id).await;
    assert_eq!(user["used_quota"], json!(total));
    assert_eq!(user["quota"], json!(1_000_000 - total));
    assert_eq!(user["request_count"], json!(4));
    let ch = ts.channel_of(1).await;
    assert_eq!(ch["used_quota"], json!(total));
    assert_eq!(ch["request_count"], json!(4));
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    let quotas: Vec<i64> = rows.iter().map(|r| r["quota"].as_i64().unwrap()).collect();
    assert_eq!(quotas, vec![15, 4, 21, 10], "newest first");
    let o = other(&rows[0]);
    assert_eq!(o["model_ratio"], json!(0.3));
    assert_eq!(o["completion_ratio"], json!(3.0));
    assert_eq!(o["group_ratio"], json!(1.0));
    ts.stop().await;
}

#[tokio::test]
async fn streams_cost_exactly_the_formula() {
    let (ts, mock) = setup().await;
    ts.option("ModelRatio", r#"{"bill-m": 0.3}"#).await;
    ts.option("CompletionRatio", r#"{"bill-m": 3}"#).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    // The client asks for usage: it gets the usage chunk.
    let r = ts
        .relay(&key, "/v1/chat/completions", chat_body(5, true, true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("\"usage\""), "{}", r.text);
    // It does not: sluice asks upstream anyway and hides the chunk.
    let r = ts
        .relay(&key, "/v1/chat/completions", chat_body(5, true, false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains("\"usage\""), "{}", r.text);
    let seen = mock.state.last().unwrap();
    assert_eq!(seen.body["stream_options"]["include_usage"], json!(true));
    ts.flush().await;
    let per = formula(PROMPT_TOKENS, 5, 3.0, 0.3, 1.0); // 7.5 → 8
    assert_eq!(per, 8);
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(2 * per));
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["quota"], json!(per));
        assert_eq!(r["is_stream"], json!(true));
        assert_eq!(r["prompt_tokens"], json!(PROMPT_TOKENS));
        assert_eq!(r["completion_tokens"], json!(5));
        assert_eq!(other(r)["usage_source"], json!("upstream"));
    }
    ts.stop().await;
}

#[tokio::test]
async fn group_ratio_applies_to_token_and_user_groups() {
    let (ts, _mock) = setup().await;
    ts.option("ModelRatio", r#"{"bill-m": 0.3}"#).await;
    ts.option("CompletionRatio", r#"{"bill-m": 3}"#).await;
    ts.option("GroupRatio", r#"{"default": 1, "vip": 1.5, "svip": 0.5}"#)
        .await;
    // A token put in group vip (user-selectable) by a default user.
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000, "group": "vip"}),
        )
        .await;
    let r = ts
        .relay(&key, "/v1/chat/completions", chat_body(7, false, false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A user in group svip, token without a group.
    let bob = ts.fast_user("bob", 1).await;
    ts.give_quota(&bob, 1_000_000).await;
    ts.put(
        &ts.root(),
        "/api/user/",
        json!({"id": bob.id, "group": "svip"}),
    )
    .await
    .ok();
    let (btid, bkey) = ts
        .key(&bob, json!({"name": "b", "remain_quota": 100_000}))
        .await;
    let r = ts
        .relay(&bkey, "/v1/chat/completions", chat_body(7, false, false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    ts.flush().await;
    let vip = formula(PROMPT_TOKENS, 7, 3.0, 0.3, 1.5); // 13.95 → 14
    let svip = formula(PROMPT_TOKENS, 7, 3.0, 0.3, 0.5); // 4.65 → 5
    assert_eq!((vip, svip), (14, 5));
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(vip));
    assert_eq!(ts.token_of(&bob, btid).await["used_quota"], json!(svip));
    let a = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(a[0]["group"], json!("vip"));
    assert_eq!(other(&a[0])["group_ratio"], json!(1.5));
    let b = ts.all_logs(&bob, "/api/log/self?type=2").await;
    assert_eq!(b[0]["group"], json!("svip"));
    assert_eq!(b[0]["quota"], json!(svip));
    ts.stop().await;
}

#[tokio::test]
async fn fixed_model_price_costs_price_times_unit_times_group() {
    let (ts, _mock) = setup().await;
    // A fixed price wins over a ratio for the same model.
    ts.option("ModelRatio", r#"{"bill-m": 1, "img-m": 50}"#)
        .await;
    ts.option("ModelPrice", r#"{"img-m": 0.02}"#).await;
    ts.option("GroupRatio", r#"{"default": 1, "vip": 1.5}"#)
        .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let (vtid, vkey) = ts
        .key(
            &u,
            json!({"name": "v", "remain_quota": 100_000, "group": "vip"}),
        )
        .await;
    for k in [&key, &vkey] {
        let r = ts.chat(k, "img-m", 20).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    ts.flush().await;
    // 0.02 USD × 500 000 per USD = 10 000; × 1.5 in vip.
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(10_000));
    assert_eq!(ts.token_of(&u, vtid).await["used_quota"], json!(15_000));
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(other(&rows[0])["model_price"], json!(0.02));
    assert_eq!(other(&rows[0])["mode"], json!("fixed"));
    // Quota turns into money with quota_per_unit from /api/status.
    let st = ts.send(ts.anon(reqwest::Method::GET, "/api/status")).await;
    assert_eq!(st.ok()["quota_per_unit"].as_f64(), Some(500_000.0));
    ts.stop().await;
}

#[tokio::test]
async fn shipped_default_ratios_price_well_known_models() {
    let (ts, _mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    assert_eq!(ts.chat(&key, "gpt-4o-mini", 100).await.status, 200);
    assert_eq!(ts.chat(&key, "gemini-2.5-flash", 100).await.status, 200);
    let r = ts
        .relay(
            &key,
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hello"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    ts.flush().await;
    let mini = formula(PROMPT_TOKENS, COMPLETION_TOKENS, 4.0, 0.075, 1.0); // 6.75 → 7
    let flash = formula(PROMPT_TOKENS, COMPLETION_TOKENS, 8.33, 0.15, 1.0); // 26.49 → 27
    let emb = formula(PROMPT_TOKENS, 0, 1.0, 0.01, 1.0); // 0.1 → 1
    assert_eq!((mini, flash, emb), (7, 27, 1));
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    let by_model = |m: &str| {
        rows.iter().find(|r| r["model_name"] == json!(m)).unwrap()["quota"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(by_model("gpt-4o-mini"), mini);
    assert_eq!(by_model("gemini-2.5-flash"), flash);
    assert_eq!(by_model("text-embedding-3-small"), emb);
    assert_eq!(
        ts.token_of(&u, tid).await["used_quota"],
        json!(mini + flash + emb)
    );
    ts.stop().await;
}

#[tokio::test]
async fn unpriced_model_is_refused_by_name_unless_self_use_mode() {
    let (ts, mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts.chat(&key, "mystery-x", 5).await;
    assert!(r.status.is_client_error(), "{}", r.text);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("'mystery-x'"), "{msg}");
    assert!(msg.contains("ratio") && msg.contains("price"), "{msg}");
    assert_eq!(
        mock.state.count("ok"),
        0,
        "an unpriced call is never forwarded"
    );
    ts.option("SelfUseModeEnabled", "true").await;
    let r = ts.chat(&key, "mystery-x", 5).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Priced models still cost their price in self-use mode.
    assert_eq!(ts.chat(&key, "gpt-4o-mini", 20).await.status, 200);
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["model_name"], json!("mystery-x"));
    assert_eq!(rows[1]["quota"], json!(0));
    assert_eq!(rows[0]["quota"], json!(7));
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(7));
    ts.stop().await;
}

/// The reservation is the worst case: prompt upper bound (the body's bytes)
/// plus `max_tokens` (or DefaultOutputAllowance); settling charges the usage.
#[tokio::test]
async fn reservation_is_the_worst_case_and_settles_to_usage() {
    let (ts, mock) = setup().await;
    ts.option("ModelRatio", r#"{"bill-m": 1}"#).await;
    ts.option("CompletionRatio", r#"{"bill-m": 1}"#).await;
    let body = chat_body(100, false, false);
    let bytes = serde_json::to_vec(&body).unwrap().len() as i64;
    let worst = bytes + 100;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": worst}),
        )
        .await;
    // Exactly covered: admitted; charged the usage (10 + 20), not the hold.
    let r = ts.relay(&key, "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    ts.flush().await;
    let left = worst - 30;
    assert_eq!(ts.token_of(&u, tid).await["remain_quota"], json!(left));
    // Now the same worst case no longer fits: refused, nothing forwarded.
    let r = ts.relay(&key, "/v1/chat/completions", body.clone()).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
    assert_eq!(mock.state.count("ok"), 1);
    // Without max_tokens the default output allowance is held.
    let no_max = json!({"model": "bill-m", "messages": [{"role": "user", "content": "x"}]});
    let nb = serde_json::to_vec(&no_max).unwrap().len() as i64;
    ts.option("DefaultOutputAllowance", &(left - nb + 1).to_string())
        .await;
    let r = ts.relay(&key, "/v1/chat/completions", no_max.clone()).await;
    assert_error(&r, 429, "insufficient_quota", "insufficient_quota");
    ts.option("DefaultOutputAllowance", &(left - nb).to_string())
        .await;
    let r = ts.relay(&key, "/v1/chat/completions", no_max.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["remain_quota"], json!(left - 30));
    assert_eq!(t["used_quota"], json!(60));
    ts.stop().await;
}

#[tokio::test]
async fn failed_calls_are_refunded_in_full() {
    let (ts, mock) = setup().await;
    ts.option("ModelRatio", r#"{"bill-m": 1, "bad-m": 1}"#)
        .await;
    ts.mock_channel(&mock, "fail-500", "bad-m", 0).await;
    let body = chat_body(100, false, false);
    let bytes = serde_json::to_vec(&body).unwrap().len() as i64;
    // The key covers exactly one worst case.
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": bytes + 100}),
        )
        .await;
    let mut bad = body.clone();
    bad["model"] = json!("bad-m");
    for _ in 0..3 {
        let r = ts.relay(&key, "/v1/chat/completions", bad.clone()).await;
        assert_eq!(r.status, 502, "{}", r.text);
        let mut s = bad.clone();
        s["stream"] = json!(true);
        let r = ts.relay(&key, "/v1/chat/completions", s).await;
        assert_eq!(r.status, 502, "{}", r.text);
    }
    // Each failure gave its hold back: the full worst case still fits.
    let r = ts.relay(&key, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(30));
    let user = ts.user_of(u.id).await;
    assert_eq!(user["used_quota"], json!(30));
    assert_eq!(user["quota"], json!(1_000_000 - 30));
    assert_eq!(
        user["request_count"],
        json!(1),
        "failed calls are not counted"
    );
    ts.stop().await;
}

#[tokio::test]
async fn unlimited_token_charges_the_user_only() {
    let (ts, _mock) = setup().await;
    ts.option("ModelRatio", r#"{"bill-m": 1}"#).await;
    ts.option("CompletionRatio", r#"{"bill-m": 2}"#).await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            10_000,
            json!({"name": "k", "remain_quota": 0, "unlimited_quota": true}),
        )
        .await;
    let r = ts
        .relay(&key, "/v1/chat/completions", chat_body(20, false, false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    ts.flush().await;
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(50));
    assert_eq!(t["remain_quota"], json!(0));
    assert_eq!(
        t["status"],
        json!(1),
        "an unlimited token is never exhausted"
    );
    assert_eq!(ts.user_of(u.id).await["quota"], json!(10_000 - 50));
    ts.stop().await;
}
