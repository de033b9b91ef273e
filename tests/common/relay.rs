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
