//! The pooled HTTP client for upstream calls: hyper-util's connection pool
//! with rustls (the stack reqwest wraps, without reqwest's per-request
//! redirect, retry and URL layers, which cost ~15% of a relayed call's CPU;
//! see docs/decisions.md).
//!
//! One pool per serving thread ("lane"): a connection's task runs on the
//! runtime that opened it, so a call made on one serving thread over another
//! thread's connection would hand every request and response across threads.

use std::cell::Cell;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyDataStream, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Body of an upstream request.
pub type ReqBody = Full<Bytes>;

/// A streamed upstream body.
pub type BodyStream = BodyDataStream<Incoming>;

/// Why an upstream request failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connection failed.
    #[error("could not connect: {0}")]
    Connect(String),
    /// Anything else on the way (reset, protocol error).
    #[error("request failed: {0}")]
    Request(String),
    /// The request could not be built.
    #[error("invalid request: {0}")]
    Build(String),
}

type Pool = Client<HttpsConnector<HttpConnector>, ReqBody>;

thread_local! {
    /// This thread's lane: 0 off the serving threads, 1.. on them.
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as serving thread `lane` (1-based): its upstream
/// calls use that lane's pool.
pub fn enter_lane(lane: usize) {
    LANE.with(|l| l.set(lane));
}

/// The pooled client: one pool per serving thread, one for the rest.
#[derive(Clone, Debug)]
pub struct Upstream {
    serving: std::sync::Arc<[Pool]>,
    other: Pool,
}

impl Upstream {
    /// Clients with keep-alive pooling, TCP_NODELAY and a connect timeout;
    /// TLS verified against the platform's roots.
    pub fn new(
        connect_timeout: Duration,
        serving_threads: usize,
    ) -> Result<Upstream, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // One connector (TLS roots loaded once), one pool per lane.
        let https = HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| UpstreamError::Build(format!("TLS roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let pool = || {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .pool_idle_timeout(Duration::from_secs(90))
                .build(https.clone())
        };
        Ok(Upstream {
            serving: (0..serving_threads).map(|_| pool()).collect(),
            other: pool(),
        })
    }

    fn client(&self) -> &Pool {
        // Lane 0 wraps to an index no thread has.
        let lane = LANE.with(Cell::get).wrapping_sub(1);
        self.serving.get(lane).unwrap_or(&self.other)
    }

    /// POSTs `body` to `uri` with `headers` (plus a JSON content type).
    pub async fn post(
        &self,
        uri: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in headers {
            h.insert(k, v);
        }
        self.client().request(req).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect(e.to_string())
            } else {
                UpstreamError::Request(e.to_string())
            }
        })
    }
}

/// The response body as a stream of data chunks.
pub fn body_stream(resp: Response<Incoming>) -> impl Stream<Item = Result<Bytes, hyper::Error>> {
    BodyDataStream::new(resp.into_body())
}
