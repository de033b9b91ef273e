//! Relay test helpers: a mock upstream, channels pointing at it, keys that
//! call through sluice.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::mock::{self, Mock};

use super::{Caller, TestServer};

/// Starts a recording mock upstream on a random loopback port.
pub async fn mock() -> Mock {
    mock::start("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap()
}

/// A response from the relay.
#[derive(Debug)]
pub struct Relayed {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Relayed {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    /// OpenAI `error.code`.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl TestServer {
    /// Creates a channel (as root) and returns its id.
    pub async fn channel(&self, body: Value) -> i64 {
        let r = self.post(&self.root(), "/api/channel/", body).await;
        r.ok()["ids"][0].as_i64().unwrap()
    }

    /// An OpenAI channel on the mock with `key`, serving `models`.
    pub async fn mock_channel(&self, mock: &Mock, key: &str, models: &str, priority: i64) -> i64 {
        self.channel(json!({
            "type": 1, "name": format!("mock-{key}"), "key": key, "base_url": mock.url(),
            "models": models, "group": "default", "priority": priority, "weight": 1,
        }))
        .await
    }

    /// Sets an option as root.
    pub async fn option(&self, key: &str, value: &str) {
        self.put(
            &self.root(),
            "/api/option/",
            json!({"key": key, "value": value}),
        )
        .await
        .ok();
    }

    /// Gives `user` quota (as root).
    pub async fn give_quota(&self, user: &Caller, quota: i64) {
        self.put(
            &self.root(),
            "/api/user/",
            json!({"id": user.id, "quota": quota}),
        )
        .await
        .ok();
    }

    /// Creates a key for `user` and returns `sk-…`.
    pub async fn key(&self, user: &Caller, body: Value) -> (i64, String) {
        let t = self.token(user, body).await;
        (
            t["id"].as_i64().unwrap(),
            format!("sk-{}", t["key"].as_str().unwrap()),
        )
    }

    /// POSTs to a relay path with a key.
    pub async fn relay(&self, key: &str, path: &str, body: Value) -> Relayed {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        Relayed {
            status: r.status(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    /// Waits until every ledger row queued so far is committed.
    pub async fn flush(&self) {
        self.server.as_ref().unwrap().state.ledger.flush().await;
    }
}

/// Headers of a relay request: `(name, value)` pairs.
pub type Headers<'a> = &'a [(&'a str, &'a str)];

impl TestServer {
    /// Sends a built relay request and reads the whole answer.
    pub async fn relay_send(&self, rb: reqwest::RequestBuilder) -> Relayed {
        let r = rb.send().await.unwrap();
        Relayed {
            status: r.status(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    /// POSTs to a relay path with a key and extra headers.
    pub async fn relay_with(
        &self,
        key: &str,
        path: &str,
        body: Value,
        headers: Headers<'_>,
    ) -> Relayed {
        let mut rb = self.http.post(self.url(path)).bearer_auth(key).json(&body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.relay_send(rb).await
    }

    /// GETs a relay path with a key.
    pub async fn relay_get(&self, key: &str, path: &str) -> Relayed {
        self.relay_send(self.http.get(self.url(path)).bearer_auth(key))
            .await
    }

    /// A chat call for `model` capped at `max_tokens`.
    pub async fn chat(&self, key: &str, model: &str, max_tokens: i64) -> Relayed {
        self.relay(
            key,
            "/v1/chat/completions",
            json!({"model": model, "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
    }

    /// A user (fast, no password) with `quota`, and a key for it.
    pub async fn funded(&self, name: &str, quota: i64, token: Value) -> (Caller, i64, String) {
        let u = self.fast_user(name, 1).await;
        self.give_quota(&u, quota).await;
        let (tid, key) = self.key(&u, token).await;
        (u, tid, key)
    }

    /// A token as its owner sees it.
    pub async fn token_of(&self, owner: &Caller, id: i64) -> Value {
        self.get(owner, &format!("/api/token/{id}"))
            .await
            .ok()
            .clone()
    }

    /// A user as root sees it.
    pub async fn user_of(&self, id: i64) -> Value {
        self.get(&self.root(), &format!("/api/user/{id}"))
            .await
            .ok()
            .clone()
    }

    /// A channel as root sees it.
    pub async fn channel_of(&self, id: i64) -> Value {
        self.get(&self.root(), &format!("/api/channel/{id}"))
            .await
            .ok()
            .clone()
    }

    /// Every row of a paginated log query (`path` carries the filters), read
    /// page by page, with `caller`'s credentials.
    pub async fn all_logs(&self, caller: &Caller, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        for p in 1.. {
            let r = self
                .get(caller, &format!("{path}{sep}p={p}&page_size=7"))
                .await;
            let d = r.ok();
            let items = d["items"].as_array().unwrap().clone();
            let total = d["total"].as_i64().unwrap();
            assert!(items.len() <= 7);
            let done = items.is_empty();
            out.extend(items);
            if done || out.len() as i64 >= total {
                assert_eq!(out.len() as i64, total, "pages add up to total for {path}");
                break;
            }
        }
        out
    }

    /// How many rows a log query (`path` carries the filters) matches, from
    /// its `total`: for polling while rows may still arrive. `all_logs`
    /// checks that pages add up to the total, which a ledger commit between
    /// the endpoint's page query and count query breaks.
    pub async fn logs_total(&self, caller: &Caller, path: &str) -> i64 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self.get(caller, &format!("{path}{sep}page_size=1")).await;
        r.ok()["total"].as_i64().unwrap()
    }

    /// Consume rows (type 2) of the whole ledger, newest first (root view).
    pub async fn consume_rows(&self) -> Vec<Value> {
        self.all_logs(&self.root(), "/api/log/?type=2").await
    }

    /// Stops the server (draining) but keeps its database and data dir, so a
    /// test can look at what was committed.
    pub async fn stop_keep(mut self) -> (super::TestDb, tempfile::TempDir, sluice::config::Config) {
        let s = self.server.take().unwrap();
        let config = s.state.config.clone();
        s.shutdown();
        s.wait().await.unwrap();
        (self.db, self.dir, config)
    }
}

/// The `other` JSON text of a log row, parsed.
pub fn other(row: &Value) -> Value {
    serde_json::from_str(row["other"].as_str().unwrap()).unwrap()
}

/// Sum of `quota` over rows.
pub fn quota_sum(rows: &[Value]) -> i64 {
    rows.iter().map(|r| r["quota"].as_i64().unwrap()).sum()
}

/// Waits for a condition only a background task can make true (an
/// auto-disable, a dropped stream's settlement), polling with a deadline.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if f().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A relay error's OpenAI shape: (status, error.type, error.code).
#[track_caller]
pub fn assert_error(r: &Relayed, status: u16, typ: &str, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["type"], json!(typ), "{}", r.text);
    assert_eq!(v["error"]["code"], json!(code), "{}", r.text);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
    assert!(
        r.headers.get("x-request-id").is_some(),
        "request id header on errors too"
    );
}
