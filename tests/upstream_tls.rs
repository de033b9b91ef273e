//! The upstream client over TLS, against a local server with a certificate
//! of its own: HTTP/2 when ALPN offers it (one connection shared by every
//! call, as real providers are reached), HTTP/1.1 with kept connections when
//! it does not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sluice::relay::upstream::{MAX_STREAMS, Upstream, body_stream};
use tokio::net::TcpListener;

/// A TLS server offering `alpn`, answering every request with what it saw.
struct TlsUpstream {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    connections: Arc<AtomicUsize>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = json!({
        "version": format!("{:?}", req.version()),
        "authority": req.uri().authority().map(|a| a.to_string()).or_else(|| header(HOST)),
        "path": req.uri().path(),
        "content_type": header(hyper::header::CONTENT_TYPE),
        "authorization": header(AUTHORIZATION),
    });
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut seen = seen;
    seen["body"] = Value::String(String::from_utf8(body.to_vec()).unwrap());
    Ok(Response::new(Full::new(Bytes::from(seen.to_string()))))
}

async fn tls_upstream(alpn: &[&[u8]]) -> TlsUpstream {
    tls_upstream_with(alpn, None).await
}

/// With `hold`: at most `MAX_STREAMS` streams per HTTP/2 connection, and
/// every call after the first waits until the barrier's count of them has
/// arrived.
async fn tls_upstream_with(alpn: &[&[u8]], hold: Option<Arc<tokio::sync::Barrier>>) -> TlsUpstream {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let requests = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let hold = hold.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let io = TokioIo::new(tls);
                let held = hold.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let first = requests.fetch_add(1, Ordering::SeqCst) == 0;
                    let held = held.clone().filter(|_| !first);
                    async move {
                        if let Some(b) = held {
                            b.wait().await;
                        }
                        echo(req).await
                    }
                });
                if h2 {
                    let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if hold.is_some() {
                        server.max_concurrent_streams(MAX_STREAMS as u32);
                    }
                    let _ = server.serve_connection(io, svc).await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    TlsUpstream {
        addr,
        cert,
        connections,
    }
}

/// The client, trusting only the server's certificate.
fn client_for(up: &TlsUpstream) -> Upstream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(up.cert.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Upstream::with_tls(Duration::from_secs(5), 0, tls)
}

/// One call; the upstream's account of it.
async fn call(client: &Upstream, up: &TlsUpstream, n: usize) -> Value {
    let uri: Uri = format!("https://127.0.0.1:{}/v1/chat/completions", up.addr.port())
        .parse()
        .unwrap();
    let headers = vec![(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer upstream-key"),
    )];
    let body = Bytes::from(format!(r#"{{"call":{n}}}"#));
    let resp = client.post(uri, headers, body).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut chunks = std::pin::pin!(body_stream(resp));
    let mut text = Vec::new();
    while let Some(chunk) = chunks.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let seen: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(seen["path"], "/v1/chat/completions");
    assert_eq!(seen["authority"], format!("127.0.0.1:{}", up.addr.port()));
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(seen["authorization"], "Bearer upstream-key");
    assert_eq!(seen["body"], format!(r#"{{"call":{n}}}"#));
    seen
}

#[tokio::test]
async fn http2_is_negotiated_and_one_connection_serves_every_call() {
    let up = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let client = client_for(&up);
    for n in 0..3 {
        assert_eq!(call(&client, &up, n).await["version"], "HTTP/2.0");
    }
    // Concurrent calls share the connection as streams.
    let all = futures_util::future::join_all((3..19).map(|n| call(&client, &up, n))).await;
    assert!(all.iter().all(|seen| seen["version"] == "HTTP/2.0"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_burst_before_any_connection_opens_one_http2_connection() {
    // ALPN tells the protocol only once connected: the calls that start
    // while the first connection is being opened wait for it and share it.
    let up = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let client = client_for(&up);
    let all = futures_util::future::join_all((0..16).map(|n| call(&client, &up, n))).await;
    assert!(all.iter().all(|seen| seen["version"] == "HTTP/2.0"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// Polls `f` once: whether it is still pending.
async fn poll_once<F: std::future::Future>(mut f: std::pin::Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx).is_pending())).await
}

#[tokio::test]
async fn a_call_waiting_for_a_connection_whose_opener_left_opens_its_own() {
    let up = tls_upstream(&[b"h2"]).await;
    let client = client_for(&up);
    // The first call starts opening the connection; the second waits for it.
    let mut opener = Box::pin(call(&client, &up, 0));
    assert!(poll_once(opener.as_mut()).await);
    let mut waiter = Box::pin(call(&client, &up, 1));
    assert!(poll_once(waiter.as_mut()).await);
    // The opener's client goes away mid-connect.
    drop(opener);
    let seen = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiting call was left waiting");
    assert_eq!(seen["version"], "HTTP/2.0");
}

#[tokio::test]
async fn a_burst_to_an_https_http1_origin_gets_a_connection_per_call() {
    // Once the first connection says HTTP/1, the calls that waited for it
    // open their own side by side: the server answers none of the eight
    // after the first until all of them are in.
    let calls = 8;
    let up = tls_upstream_with(
        &[b"http/1.1"],
        Some(Arc::new(tokio::sync::Barrier::new(calls - 1))),
    )
    .await;
    let client = client_for(&up);
    let all = futures_util::future::join_all((0..calls).map(|n| call(&client, &up, n)));
    let all = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .unwrap_or_else(|_| panic!("HTTP/1 calls waited for each other"));
    assert!(all.iter().all(|seen| seen["version"] == "HTTP/1.1"));
    assert_eq!(up.connections.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn https_http1_connections_are_kept_between_calls() {
    let up = tls_upstream(&[b"http/1.1"]).await;
    let client = client_for(&up);
    for n in 0..4 {
        assert_eq!(call(&client, &up, n).await["version"], "HTTP/1.1");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let up = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let other = tls_upstream(&[b"h2"]).await;
    // Trusts `other`'s certificate only.
    let client = client_for(&other);
    let uri: Uri = format!("https://127.0.0.1:{}/v1/chat/completions", up.addr.port())
        .parse()
        .unwrap();
    let Err(err) = client
        .post(uri, Vec::new(), Bytes::from_static(b"{}"))
        .await
    else {
        unreachable!("an untrusted certificate was accepted");
    };
    assert!(
        matches!(err, sluice::relay::upstream::UpstreamError::Connect(_)),
        "{err}"
    );
}

#[tokio::test]
async fn a_full_http2_connection_gets_a_second_one() {
    // The server allows MAX_STREAMS streams per connection and, after a
    // first call, answers nobody until MAX_STREAMS + 1 calls are in: on one
    // connection the last of them would wait for a stream forever.
    let calls = MAX_STREAMS + 1;
    let up = tls_upstream_with(&[b"h2"], Some(Arc::new(tokio::sync::Barrier::new(calls)))).await;
    let client = client_for(&up);
    call(&client, &up, 0).await;
    for round in 0..2 {
        let all = futures_util::future::join_all((0..calls).map(|n| call(&client, &up, n)));
        let all = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: calls beyond a connection's streams queued on it")
            });
        assert_eq!(all.len(), calls);
        // The second round finds the slots of the first freed: the same two
        // connections serve it.
        assert_eq!(up.connections.load(Ordering::SeqCst), 2, "round {round}");
    }
}
