//! Streaming (SPEC §6–7): pass-through, usage from the final chunk, a local
//! count when none comes, billing of broken streams and of clients that
//! leave mid-stream, and no retry once the first byte reached the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::relay::{eventually, other};
use common::{TestServer, spawn};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice::billing::tokens;
use sluice::mock::{Mock, PROMPT_TOKENS, STREAM_CHUNKS};

/// One channel per mock behaviour, each serving its own model, all priced
/// at ratio 1 / completion ratio 2.
async fn setup() -> (TestServer, Mock) {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    let mut ratios = serde_json::Map::new();
    let mut completion = serde_json::Map::new();
    for key in ["ok", "no-usage", "truncate", "stall-600", "fail-500"] {
        let model = format!("m-{key}");
        ts.mock_channel(&mock, key, &model, 0).await;
        ratios.insert(model.clone(), json!(1));
        completion.insert(model, json!(2));
    }
    ts.option("ModelRatio", &Value::Object(ratios).to_string())
        .await;
    ts.option("CompletionRatio", &Value::Object(completion).to_string())
        .await;
    (ts, mock)
}

fn body(model: &str, usage: bool) -> Value {
    let mut b = json!({"model": model, "stream": true, "max_tokens": 50,
        "messages": [{"role": "user", "content": "tell me a story about a lighthouse keeper"}]});
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// The `data:` payloads of an SSE body.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(String::from))
        .collect()
}

/// The text the client received, from the chunks' deltas.
fn delivered_text(text: &str) -> String {
    let mut out = String::new();
    for e in events(text) {
        if let Ok(v) = serde_json::from_str::<Value>(&e)
            && let Some(c) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        {
            out.push_str(c);
        }
    }
    out
}

#[tokio::test]
async fn chunks_pass_through_and_usage_comes_from_the_final_chunk() {
    let (ts, mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts
        .relay(&key, "/v1/chat/completions", body("m-ok", true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert!(r.headers.get("x-request-id").is_some());
    let ev = events(&r.text);
    // role chunk + words + finish + usage + [DONE]
    assert_eq!(ev.len(), STREAM_CHUNKS + 4, "{}", r.text);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], json!(PROMPT_TOKENS));
    assert_eq!(usage["usage"]["completion_tokens"], json!(20));
    assert_eq!(delivered_text(&r.text), "word0 word1 word2 word3 word4 ");
    // The upstream was asked for usage exactly as the client asked.
    assert_eq!(
        mock.state.last().unwrap().body["stream_options"]["include_usage"],
        json!(true)
    );
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["quota"], json!(10 + 20 * 2));
    assert_eq!(rows[0]["is_stream"], json!(true));
    assert_eq!(other(&rows[0])["usage_source"], json!("upstream"));
    assert_eq!(ts.token_of(&u, tid).await["used_quota"], json!(50));
    ts.stop().await;
}

#[tokio::test]
async fn completions_stream_requests_usage_upstream_too() {
    let (ts, mock) = setup().await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts
        .relay(
            &key,
            "/v1/completions",
            json!({"model": "m-ok", "prompt": "once upon", "stream": true, "max_tokens": 7}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("[DONE]"));
    assert!(!r.text.contains("\"usage\""), "{}", r.text);
    assert_eq!(
        mock.state.last().unwrap().body["stream_options"]["include_usage"],
        json!(true)
    );
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows[0]["quota"], json!(10 + 7 * 2));
    assert_eq!(rows[0]["completion_tokens"], json!(7));
    ts.stop().await;
}

#[tokio::test]
async fn without_upstream_usage_the_stream_is_counted_locally() {
    let (ts, _mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let b = body("m-no-usage", true);
    let r = ts.relay(&key, "/v1/chat/completions", b.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains("\"usage\""));
    let text = delivered_text(&r.text);
    assert_eq!(text, "word0 word1 word2 word3 word4 ");
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(other(row)["usage_source"], json!("local"));
    // The local count: the prompt's messages and the text actually produced.
    let prompt = tokens::count_prompt("m-no-usage", &b);
    let completion = tokens::count("m-no-usage", &text);
    assert!(completion >= STREAM_CHUNKS as i64, "{completion}");
    assert_eq!(row["prompt_tokens"], json!(prompt));
    assert_eq!(row["completion_tokens"], json!(completion));
    assert_eq!(row["quota"], json!(prompt + 2 * completion));
    assert_eq!(
        ts.token_of(&u, tid).await["used_quota"],
        json!(prompt + 2 * completion)
    );
    ts.stop().await;
}

#[tokio::test]
async fn without_upstream_usage_a_plain_call_is_counted_locally() {
    let (ts, _mock) = setup().await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let mut nb = body("m-no-usage", false);
    nb["stream"] = json!(false);
    let r = ts.relay(&key, "/v1/chat/completions", nb.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(other(&rows[0])["usage_source"], json!("local"));
    assert_eq!(
        rows[0]["completion_tokens"],
        json!(tokens::count("m-no-usage", &text))
    );
    assert_eq!(
        rows[0]["prompt_tokens"],
        json!(tokens::count_prompt("m-no-usage", &nb))
    );
    ts.stop().await;
}

/// What a hand-written upstream does after its events.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Closes the connection mid-body (no terminating chunk).
    Cut,
    /// Stays silent with the connection open until the other side closes
    /// it; then fires the notifier.
    Hang,
}

/// An upstream written by hand, so the bytes are on the wire before the
/// cut (or the silence): answers 200 and sends the role chunk plus one
/// chunk per word, then does `then`. Returns its base URL and a notifier
/// fired when sluice closes a hanging connection.
async fn scripted_upstream(
    words: &'static [&'static str],
    then: Then,
) -> (String, std::sync::Arc<tokio::sync::Notify>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let closed = std::sync::Arc::new(tokio::sync::Notify::new());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let notify = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let notify = notify.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                // Read the head, then the body by its content-length.
                let head_end = loop {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                let mut deltas = vec![json!({"role": "assistant", "content": ""})];
                deltas.extend(words.iter().map(|w| json!({"content": w})));
                for delta in deltas {
                    let ev = format!(
                        "data: {}\n\n",
                        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
                    );
                    out.push_str(&format!("{:x}\r\n{ev}\r\n", ev.len()));
                }
                let _ = s.write_all(out.as_bytes()).await;
                let _ = s.flush().await;
                match then {
                    Then::Cut => {
                        let _ = s.shutdown().await;
                    }
                    Then::Hang => {
                        // Wait for sluice to hang up.
                        while s.read(&mut tmp).await.is_ok_and(|n| n > 0) {}
                        notify.notify_one();
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), closed)
}

#[tokio::test]
async fn a_stream_cut_by_the_upstream_is_billed_for_what_was_produced() {
    let (ts, mock) = setup().await;
    ts.option("RetryTimes", "3").await;
    ts.option("ModelRatio", r#"{"m-cut": 1}"#).await;
    ts.option("CompletionRatio", r#"{"m-cut": 2}"#).await;
    let (cut, _) = scripted_upstream(&["lighthouse keeper "], Then::Cut).await;
    ts.channel(
        json!({"type": 1, "name": "cut", "key": "cut", "base_url": cut,
        "models": "m-cut", "group": "default", "priority": 5}),
    )
    .await;
    // A good channel for the same model, lower priority: never tried once
    // bytes reached the client.
    ts.channel(
        json!({"type": 1, "name": "backup", "key": "backup", "base_url": mock.url(),
        "models": "m-cut", "group": "default", "priority": 0}),
    )
    .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let b = body("m-cut", false);
    let r = ts.relay(&key, "/v1/chat/completions", b.clone()).await;
    assert_eq!(r.status, 200);
    let ev = events(&r.text);
    // The two upstream events, then sluice's error event; no [DONE].
    assert_eq!(ev.len(), 3, "{}", r.text);
    assert!(!r.text.contains("[DONE]"), "{}", r.text);
    let last: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"],
        json!("stream_interrupted"),
        "{}",
        r.text
    );
    assert_eq!(
        mock.state.count("backup"),
        0,
        "no retry after the first byte"
    );
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let o = other(row);
    assert_eq!(o["usage_source"], json!("local"));
    assert_eq!(o["http_status"], json!(502));
    let text = delivered_text(&r.text);
    assert_eq!(text, "lighthouse keeper ");
    let prompt = tokens::count_prompt("m-cut", &b);
    let completion = tokens::count("m-cut", &text);
    assert!(completion > 0);
    assert_eq!(row["prompt_tokens"], json!(prompt));
    assert_eq!(row["completion_tokens"], json!(completion));
    assert_eq!(row["quota"], json!(prompt + 2 * completion));
    assert_eq!(
        ts.token_of(&u, tid).await["used_quota"],
        json!(prompt + 2 * completion)
    );
    ts.stop().await;
}

#[tokio::test]
async fn a_stream_failing_before_its_first_byte_fails_over() {
    let (ts, mock) = setup().await;
    ts.option("RetryTimes", "1").await;
    ts.channel(
        json!({"type": 1, "name": "backup", "key": "ok", "base_url": mock.url(),
        "models": "m-fail-500", "group": "default", "priority": -1}),
    )
    .await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts
        .relay(&key, "/v1/chat/completions", body("m-fail-500", true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("[DONE]"));
    assert_eq!(mock.state.count("fail-500"), 1);
    assert_eq!(mock.state.count("ok"), 1);
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["quota"], json!(50));
    ts.stop().await;
}

/// A client that goes away after the first chunk pays for what was
/// produced: the upstream stalls, the client drops the response.
#[tokio::test]
async fn a_client_leaving_mid_stream_pays_for_what_was_produced() {
    let (ts, _mock) = setup().await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let b = body("m-stall-600", true);
    let resp = ts
        .http
        .post(ts.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut s = resp.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    drop(s);
    // The settlement runs when the server notices; wait for its row.
    eventually("the dropped stream's ledger row", || async {
        ts.flush().await;
        ts.logs_total(&u, &format!("/api/log/self?type=2&request_id={rid}"))
            .await
            > 0
    })
    .await;
    ts.flush().await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let o = other(row);
    assert_eq!(o["client_disconnected"], json!(true));
    assert_eq!(o["usage_source"], json!("local"));
    assert_eq!(o["request_id"], json!(rid));
    // What was produced: the prompt, and no words yet (the first chunk
    // carries only the role).
    let prompt = tokens::count_prompt("m-stall-600", &b);
    assert_eq!(row["prompt_tokens"], json!(prompt));
    assert_eq!(row["completion_tokens"], json!(0));
    assert_eq!(row["quota"], json!(prompt));
    assert!(prompt > 0);
    let t = ts.token_of(&u, tid).await;
    assert_eq!(t["used_quota"], json!(prompt));
    assert_eq!(t["remain_quota"], json!(100_000 - prompt));
    ts.stop().await;
}

/// The upstream has produced three words and then goes silent; the client
/// leaves. sluice must notice, hang up on the upstream (cancelling it) and
/// bill the three words — without waiting for the upstream's idle timeout.
#[tokio::test]
async fn a_client_leaving_a_silent_stream_cancels_the_upstream_and_pays_what_was_produced() {
    let (ts, _mock) = setup().await;
    ts.option("ModelRatio", r#"{"m-silent": 1}"#).await;
    ts.option("CompletionRatio", r#"{"m-silent": 2}"#).await;
    // One content chunk (several would meet the separator bug the fixed
    // test above names).
    let (url, closed) = scripted_upstream(&["alpha beta gamma "], Then::Hang).await;
    ts.channel(
        json!({"type": 1, "name": "silent", "key": "k", "base_url": url,
        "models": "m-silent", "group": "default"}),
    )
    .await;
    let (u, tid, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let b = body("m-silent", false);
    let resp = ts
        .http
        .post(ts.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("gamma") {
        got.extend_from_slice(&s.next().await.unwrap().unwrap());
    }
    drop(s);
    // The upstream connection is closed by sluice.
    tokio::time::timeout(std::time::Duration::from_secs(10), closed.notified())
        .await
        .expect("sluice hung up on the upstream after the client left");
    eventually("the dropped stream's ledger row", || async {
        ts.flush().await;
        ts.logs_total(&u, "/api/log/self?type=2").await > 0
    })
    .await;
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    let row = &rows[0];
    assert_eq!(other(row)["client_disconnected"], json!(true));
    let prompt = tokens::count_prompt("m-silent", &b);
    let completion = tokens::count("m-silent", "alpha beta gamma ");
    assert_eq!(row["prompt_tokens"], json!(prompt));
    assert_eq!(row["completion_tokens"], json!(completion));
    assert_eq!(row["quota"], json!(prompt + 2 * completion));
    assert_eq!(
        ts.token_of(&u, tid).await["used_quota"],
        json!(prompt + 2 * completion)
    );
    ts.stop().await;
}

/// The mock's `truncate` key should stream two events and then cut the
/// connection, so the relay's mid-stream break can be tested with it (the
/// tests above use a hand-written upstream instead).
#[tokio::test]
async fn mock_truncate_sends_two_events_before_cutting() {
    let mock = common::relay::mock().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .bearer_auth("truncate")
        .json(&json!({"model": "m", "stream": true, "messages": []}))
        .send()
        .await
        .expect("the mock answers a status line before cutting");
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = s.next().await {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(events(&String::from_utf8_lossy(&got)).len(), 2);
}
