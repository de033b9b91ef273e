//! The serving threads: connections are spread over them, each serves, and
//! the ledger writer on the background runtime still commits promptly when
//! asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Db;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one keep-alive request on `s` and reads its whole answer.
async fn healthz(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// Each new connection goes to the serving thread with the fewest open
/// ones: six connections on three threads are two each, all of them served,
/// and closing them frees the threads.
#[tokio::test]
async fn connections_are_spread_over_the_serving_threads() {
    let ts = common::spawn_with(Db::Sqlite, |c| c.serve_threads = 3)
        .await
        .unwrap();
    let server = ts.server.as_ref().unwrap();
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        // Answered, so it has been handed to its thread.
        let answer = healthz(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        conns.push(s);
    }
    assert_eq!(server.open_connections(), vec![2, 2, 2]);
    // Still served on the same connections.
    for s in &mut conns {
        assert!(healthz(s).await.starts_with("HTTP/1.1 200"));
    }
    drop(conns);
    // The threads notice the closes on their own time: poll, with a deadline.
    let freed = tokio::time::timeout(Duration::from_secs(30), async {
        while server.open_connections() != vec![0, 0, 0] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "still open: {:?}", server.open_connections());
    ts.stop().await;
}

/// The ledger writer sleeps out its window instead of waking for every row;
/// a flush must cut the window short (tests and shutdown rely on it). With a
/// one-hour window, a flushed call's row is there at once.
#[tokio::test]
async fn a_flush_does_not_wait_out_the_ledger_window() {
    let ts = common::spawn_with(Db::Sqlite, |c| c.ledger_window_ms = 3_600_000)
        .await
        .unwrap();
    let mock = common::relay::mock().await;
    ts.mock_channel(&mock, "ok", "gpt-4o", 0).await;
    let (u, _, key) = ts
        .funded(
            "alice",
            1_000_000,
            json!({"name": "k", "remain_quota": 100_000}),
        )
        .await;
    let r = ts.chat(&key, "gpt-4o", 16).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let flushed = tokio::time::timeout(Duration::from_secs(60), ts.flush()).await;
    assert!(flushed.is_ok(), "the flush waited for the window");
    let rows = ts.all_logs(&u, "/api/log/self?type=2").await;
    assert_eq!(rows.len(), 1);
    ts.stop().await;
}

/// A client that opens with HTTP/2's preface (prior knowledge, no TLS) is
/// served HTTP/2; one that speaks HTTP/1.1 on the same port gets HTTP/1.1.
#[tokio::test]
async fn http2_prior_knowledge_and_http1_share_the_port() {
    let ts = common::spawn_with(Db::Sqlite, |_| {}).await.unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(ts.url("/api/status")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["success"],
        json!(true)
    );
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1.get(ts.url("/api/status")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    ts.stop().await;
}
