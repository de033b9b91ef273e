//! The HTTP client for upstream calls: hyper's client connections (HTTP/1.1
//! keep-alive, HTTP/2 where TLS negotiates it) over rustls, kept in a small
//! pool per serving thread ("lane").
//!
//! hyper-util's pooled client did the same with more machinery than a relay
//! needs: its checkout, SipHash pool keys, a formatted `Host` per request and
//! a task spawned per HTTP/1 request to put the connection back cost ~7 % of
//! a relayed call's instructions (docs/performance.md). Here an HTTP/1
//! connection goes back to its lane's idle list when its response body ends,
//! and HTTP/2 connections are shared, up to [`MAX_STREAMS`] calls each.
//!
//! One pool per lane: a connection's task runs on the runtime that opened it,
//! so a call made on one serving thread over another thread's connection
//! would hand every request and response across threads.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyDataStream, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::builderstates::WantsSchemes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tower::ServiceExt;

use crate::util::FastMap;

/// Body of an upstream request.
pub type ReqBody = Full<Bytes>;

/// An upstream response.
pub type Response = axum::http::Response<UpstreamBody>;

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

/// HTTP/1 connections left idle longer than this are closed, not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1 connections kept per origin and lane.
const MAX_IDLE: usize = 1024;
/// Calls in flight on one HTTP/2 connection before another is opened. Past
/// the server's own stream limit hyper queues calls on the connection, and
/// LLM calls last seconds to minutes; RFC 9113 asks servers to allow at
/// least 100.
pub const MAX_STREAMS: usize = 100;

thread_local! {
    /// This thread's lane: 0 off the serving threads, 1.. on them.
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as serving thread `lane` (1-based): its upstream
/// calls use that lane's pool.
pub fn enter_lane(lane: usize) {
    LANE.with(|l| l.set(lane));
}

/// Where connections go: scheme and authority (`https`, `api.openai.com`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    authority: Authority,
}

/// An HTTP/1 connection at rest.
struct Idle {
    tx: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// One lane's connections.
#[derive(Default)]
struct Pool {
    /// HTTP/1 connections at rest, per origin, most recently used last.
    idle: FastMap<Origin, Vec<Idle>>,
    /// What is known of each HTTPS origin (plain HTTP never negotiates
    /// HTTP/2 here), and its multiplexed HTTP/2 connections.
    tls: FastMap<Origin, TlsOrigin>,
}

/// An HTTPS origin: HTTP/2 or HTTP/1, as ALPN last chose.
#[derive(Default)]
struct TlsOrigin {
    /// Its HTTP/2 connections.
    shared: Vec<H2>,
    /// Its last connection negotiated HTTP/1: calls open connections
    /// side by side, as each needs its own.
    http1: bool,
    /// Held while a connection to it is being opened, unless it is known to
    /// speak HTTP/1: calls that need one meanwhile wait for that one and
    /// share it, instead of each handshaking a connection of its own.
    opening: Arc<tokio::sync::Mutex<()>>,
}

/// An HTTP/2 connection and the calls in flight on it.
struct H2 {
    tx: http2::SendRequest<ReqBody>,
    streams: Arc<AtomicUsize>,
}

impl H2 {
    /// Counts one more call on the connection until the slot is dropped.
    fn slot(&self) -> Slot {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Slot(self.streams.clone())
    }
}

/// One call's place on an HTTP/2 connection.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// The most recently used idle HTTP/1 connection that is still open.
    fn take(&mut self, origin: &Origin) -> Option<http1::SendRequest<ReqBody>> {
        let list = self.idle.get_mut(origin)?;
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.tx);
            }
        }
        None
    }

    /// Forgets the HTTP/2 connection `slot` is on (it closed under a call).
    fn drop_h2(&mut self, origin: &Origin, slot: &Slot) {
        if let Some(o) = self.tls.get_mut(origin) {
            o.shared.retain(|c| !Arc::ptr_eq(&c.streams, &slot.0));
        }
    }

    /// An open HTTP/2 connection with room for one more call, counted.
    fn h2(&mut self, origin: &Origin) -> Option<(http2::SendRequest<ReqBody>, Slot)> {
        let list = &mut self.tls.get_mut(origin)?.shared;
        list.retain(|c| !c.tx.is_closed());
        let c = list
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < MAX_STREAMS)?;
        Some((c.tx.clone(), c.slot()))
    }

    /// The lock to hold while opening a connection to `origin`, if it may
    /// speak HTTP/2.
    fn opening(&mut self, origin: &Origin) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if !origin.https {
            return None;
        }
        let o = self.tls.entry(origin.clone()).or_default();
        (!o.http1).then(|| o.opening.clone())
    }

    /// Records what a new connection to an HTTPS origin negotiated.
    fn learn(&mut self, origin: &Origin, conn: Option<H2>) {
        let o = self.tls.entry(origin.clone()).or_default();
        o.http1 = conn.is_none();
        o.shared.extend(conn);
    }

    fn put(&mut self, origin: Origin, tx: http1::SendRequest<ReqBody>) {
        if tx.is_closed() {
            return;
        }
        let list = self.idle.entry(origin).or_default();
        // The oldest are first: those past the timeout go (they would not be
        // reused anyway, and their upstream may have closed them already).
        let stale = list
            .iter()
            .take_while(|c| c.since.elapsed() >= IDLE_TIMEOUT)
            .count();
        list.drain(..stale);
        if list.len() < MAX_IDLE {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }
}

/// A connection for one request.
enum Conn {
    H1 {
        tx: http1::SendRequest<ReqBody>,
        reused: bool,
    },
    H2 {
        tx: http2::SendRequest<ReqBody>,
        slot: Slot,
        reused: bool,
    },
}

/// The upstream client: one connector (TLS roots loaded once), one pool per
/// lane (index 0: threads that are not serving threads).
#[derive(Clone)]
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pools: Arc<[Mutex<Pool>]>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("pools", &self.pools.len())
            .finish()
    }
}

impl Upstream {
    /// A client with keep-alive pooling, TCP_NODELAY and a connect timeout;
    /// TLS verified against the platform's roots.
    pub fn new(
        connect_timeout: Duration,
        serving_threads: usize,
    ) -> Result<Upstream, UpstreamError> {
        let tls = HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| UpstreamError::Build(format!("TLS roots: {e}")))?;
        Ok(Upstream::build(tls, connect_timeout, serving_threads))
    }

    /// The same client verifying TLS with `tls` (roots of one's own, as
    /// the tests' upstream has); ALPN is set here.
    pub fn with_tls(
        connect_timeout: Duration,
        serving_threads: usize,
        tls: rustls::ClientConfig,
    ) -> Upstream {
        let tls = HttpsConnectorBuilder::new().with_tls_config(tls);
        Upstream::build(tls, connect_timeout, serving_threads)
    }

    fn build(
        tls: HttpsConnectorBuilder<WantsSchemes>,
        connect_timeout: Duration,
        serving_threads: usize,
    ) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = tls
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Upstream {
            connector,
            pools: (0..=serving_threads).map(|_| Mutex::default()).collect(),
        }
    }

    fn lane(&self) -> usize {
        // A lane number beyond the pools (a server with fewer threads in the
        // same process) shares pool 0.
        let lane = LANE.with(Cell::get);
        if lane < self.pools.len() { lane } else { 0 }
    }

    /// POSTs `body` to `uri` with `headers` (plus a JSON content type).
    pub async fn post(
        &self,
        uri: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Response, UpstreamError> {
        let origin = match (uri.scheme(), uri.authority()) {
            (Some(s), Some(a)) if *s == Scheme::HTTP || *s == Scheme::HTTPS => Origin {
                https: *s == Scheme::HTTPS,
                authority: a.clone(),
            },
            _ => return Err(UpstreamError::Build(format!("not an http(s) URL: {uri}"))),
        };
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
        let lane = self.lane();
        loop {
            match self.checkout(lane, &origin).await? {
                Conn::H2 {
                    mut tx,
                    slot,
                    reused,
                } => {
                    // A copy to send again if the server refuses the stream
                    // unprocessed (below); the body is shared, not copied.
                    let again = reused.then(|| copy_request(&req));
                    match tx.try_send_request(req).await {
                        Ok(r) => {
                            return Ok(r.map(|inner| UpstreamBody {
                                inner,
                                back: None,
                                slot: Some(slot),
                            }));
                        }
                        Err(mut e) => {
                            // A shared connection that closed between the
                            // pool's open check and the send (the request
                            // never left), or a server that refused the
                            // stream before processing it: the request goes
                            // again, and the connection leaves the pool
                            // (which bounds this loop).
                            let unsent = e.take_message();
                            let err = e.into_error();
                            let retry = match (unsent, again) {
                                (Some(unsent), Some(_)) => Some(unsent),
                                (None, Some(again)) if unprocessed(&err) => Some(again),
                                _ => None,
                            };
                            let Some(retry) = retry else {
                                return Err(UpstreamError::Request(err.to_string()));
                            };
                            self.pools[lane].lock().drop_h2(&origin, &slot);
                            req = retry;
                        }
                    }
                }
                Conn::H1 { mut tx, reused } => {
                    match tx.try_send_request(origin_form(req, &origin)).await {
                        Ok(r) => {
                            let back = Back {
                                tx,
                                origin,
                                pools: self.pools.clone(),
                                lane,
                            };
                            return Ok(r.map(|inner| UpstreamBody {
                                inner,
                                back: Some(back),
                                slot: None,
                            }));
                        }
                        // A kept connection the upstream closed before it
                        // took the request: the request was not sent, so it
                        // goes again on another connection.
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if reused => req = absolute_form(unsent, &origin)?,
                            _ => return Err(UpstreamError::Request(e.into_error().to_string())),
                        },
                    }
                }
            }
        }
    }

    /// A ready connection to `origin`: a kept one, or a new one.
    async fn checkout(&self, lane: usize, origin: &Origin) -> Result<Conn, UpstreamError> {
        // An HTTP/2 sender is ready exactly when it is open (hyper), which
        // `h2` checks.
        if let Some((tx, slot)) = self.pools[lane].lock().h2(origin) {
            return Ok(Conn::H2 {
                tx,
                slot,
                reused: true,
            });
        }
        loop {
            let kept = self.pools[lane].lock().take(origin);
            let Some(mut tx) = kept else { break };
            // Ready once its task has read the previous response to the end.
            if tx.ready().await.is_ok() {
                return Ok(Conn::H1 { tx, reused: true });
            }
        }
        // Boxed: connecting (TLS, HTTP/2 handshake) is rare and its future
        // is large; inline, it made every call's future ~11 KB bigger, and
        // axum copies a handler's future when it boxes it.
        Box::pin(self.open(lane, origin)).await
    }

    /// A new connection to `origin`, or a share of one another call opened
    /// meanwhile. To an origin that may speak HTTP/2 one connection is
    /// opened at a time: a burst of calls before any connection exists
    /// (ALPN tells the protocol only once connected) would otherwise open
    /// one each. A call waits for at most one other's connection, so a
    /// failing origin does not line its callers' connect timeouts up.
    async fn open(&self, lane: usize, origin: &Origin) -> Result<Conn, UpstreamError> {
        let lock = self.pools[lane].lock().opening(origin);
        let Some(lock) = lock else {
            return self.connect(lane, origin).await;
        };
        let _held = match lock.clone().try_lock_owned() {
            Ok(held) => Some(held),
            Err(_) => {
                drop(lock.lock().await);
                if let Some((tx, slot)) = self.pools[lane].lock().h2(origin) {
                    return Ok(Conn::H2 {
                        tx,
                        slot,
                        reused: true,
                    });
                }
                None
            }
        };
        self.connect(lane, origin).await
    }

    /// Opens a connection; its task runs on this thread's runtime until the
    /// upstream or the pool lets it go (not tracked for shutdown: an idle
    /// connection must not hold the process up).
    async fn connect(&self, lane: usize, origin: &Origin) -> Result<Conn, UpstreamError> {
        let uri = Uri::builder()
            .scheme(if origin.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Build(e.to_string()))?;
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        if io.connected().is_negotiated_h2() {
            let mut h2 = http2::Builder::new(TokioExecutor::new());
            h2.timer(TokioTimer::new());
            let (tx, conn) = h2
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            let conn = H2 {
                tx: tx.clone(),
                streams: Arc::new(AtomicUsize::new(0)),
            };
            let slot = conn.slot();
            self.pools[lane].lock().learn(origin, Some(conn));
            Ok(Conn::H2 {
                tx,
                slot,
                reused: false,
            })
        } else {
            let (tx, conn) = http1::handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            if origin.https {
                self.pools[lane].lock().learn(origin, None);
            }
            Ok(Conn::H1 { tx, reused: false })
        }
    }
}

/// The same request again (its body is reference-counted bytes).
fn copy_request(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The server closed the stream before processing it, which RFC 9113 says
/// makes the request safe to send again: it refused the stream
/// (`REFUSED_STREAM`, §8.7), or said in a GOAWAY that it would not process
/// streams past the last it named (§6.8; h2 gives exactly those streams a
/// GOAWAY error of the server's).
fn unprocessed(err: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(err).and_then(|c| c.downcast_ref::<h2::Error>())
    else {
        return false;
    };
    h2.is_remote()
        && (h2.is_go_away() || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// An HTTP/1 request as it goes on the wire: the path alone in the request
/// line, the authority in `Host` (without a default port, as browsers and
/// curl send it).
fn origin_form(mut req: Request<ReqBody>, origin: &Origin) -> Request<ReqBody> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| axum::http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    if !req.headers().contains_key(header::HOST) {
        let a = &origin.authority;
        let default_port = matches!(
            (origin.https, a.port_u16()),
            (true, Some(443)) | (false, Some(80))
        );
        let host = if default_port || a.as_str().contains('@') {
            match a.port_u16() {
                Some(p) if !default_port => format!("{}:{p}", a.host()),
                _ => a.host().to_string(),
            }
        } else {
            a.as_str().to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

/// Back from [`origin_form`], for a retry on a connection of either kind.
fn absolute_form(
    mut req: Request<ReqBody>,
    origin: &Origin,
) -> Result<Request<ReqBody>, UpstreamError> {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if origin.https {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(origin.authority.clone());
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Build(e.to_string()))?;
    req.headers_mut().remove(header::HOST);
    Ok(req)
}

/// An HTTP/1 connection on loan to a response body.
struct Back {
    tx: http1::SendRequest<ReqBody>,
    origin: Origin,
    pools: Arc<[Mutex<Pool>]>,
    lane: usize,
}

/// An upstream response body. An HTTP/1 connection goes back to its lane's
/// pool when the body has been read to its end; a body dropped before its
/// end takes the connection with it (hyper closes it). An HTTP/2 call's
/// slot is freed at the end too.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<Back>,
    slot: Option<Slot>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(b) = this.back.take() {
                    b.pools[b.lane].lock().put(b.origin, b.tx);
                }
                this.slot = None;
            }
            Poll::Ready(Some(Err(_))) => {
                this.back = None;
                this.slot = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body as a stream of data chunks.
pub fn body_stream(resp: Response) -> impl Stream<Item = Result<Bytes, hyper::Error>> {
    BodyDataStream::new(resp.into_body())
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// How the scripted HTTP/2 server turns calls away.
    #[derive(Clone, Copy)]
    enum Refusal {
        /// `RST_STREAM REFUSED_STREAM` on the first stream.
        Reset,
        /// Once streams 1 and 3 are in, a GOAWAY naming 1 as the last it
        /// processes, and an answer on 1.
        GoAway,
    }

    /// One HTTP/2 frame: length, type, flags, stream id, payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// A server whose first connection speaks HTTP/2 frame by frame (so the
    /// test decides exactly which streams it refuses) and whose later ones
    /// answer HTTP/1 with "answered again".
    async fn scripted_h2(refusal: Refusal) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                tcp.read_exact(&mut preface).await.unwrap();
                tcp.write_all(&frame(4, 0, 0, &[])).await.unwrap();
                let mut streams = Vec::new();
                loop {
                    let mut head = [0u8; 9];
                    if tcp.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    tcp.read_exact(&mut payload).await.unwrap();
                    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                    match head[3] {
                        4 if head[4] & 1 == 0 => tcp.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
                        1 => streams.push(stream),
                        _ => continue,
                    }
                    match refusal {
                        Refusal::Reset if streams == [1] => {
                            tcp.write_all(&frame(3, 0, 1, &7u32.to_be_bytes()))
                                .await
                                .unwrap();
                        }
                        Refusal::GoAway if streams == [1, 3] => {
                            let mut goaway = 1u32.to_be_bytes().to_vec();
                            goaway.extend(0u32.to_be_bytes());
                            tcp.write_all(&frame(7, 0, 0, &goaway)).await.unwrap();
                            // `:status: 200` (HPACK static index 8), then the body.
                            tcp.write_all(&frame(1, 4, 1, &[0x88])).await.unwrap();
                            tcp.write_all(&frame(0, 1, 1, b"first")).await.unwrap();
                        }
                        _ => {}
                    }
                }
            });
            let app = axum::Router::new()
                .route("/v1/x", axum::routing::post(|| async { "answered again" }));
            axum::serve(listener, app).await.unwrap();
        });
        addr
    }

    /// A client for `http://{addr}/v1/x`, with the URL and its origin.
    fn client(addr: std::net::SocketAddr) -> (Upstream, Uri, Origin) {
        let up = Upstream::new(Duration::from_secs(5), 0).unwrap();
        let uri: Uri = format!("http://{addr}/v1/x").parse().unwrap();
        let origin = Origin {
            https: false,
            authority: uri.authority().unwrap().clone(),
        };
        (up, uri, origin)
    }

    /// Puts an HTTP/2 connection in `up`'s pool for `origin`.
    fn keep(up: &Upstream, origin: &Origin, tx: http2::SendRequest<ReqBody>) {
        up.pools[0]
            .lock()
            .tls
            .entry(origin.clone())
            .or_default()
            .shared
            .push(H2 {
                tx,
                streams: Arc::new(AtomicUsize::new(0)),
            });
    }

    /// A client whose pool holds an HTTP/2 connection to `addr`.
    async fn pooled_h2(addr: std::net::SocketAddr) -> (Upstream, Uri, Origin) {
        let (up, uri, origin) = client(addr);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        keep(&up, &origin, tx);
        (up, uri, origin)
    }

    /// A 200 response's body.
    async fn text(resp: Response) -> Bytes {
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_stream_the_server_refused_goes_again_on_another_connection() {
        let addr = scripted_h2(Refusal::Reset).await;
        let (up, uri, origin) = pooled_h2(addr).await;
        let resp = up.post(uri, Vec::new(), Bytes::from_static(b"{}")).await;
        assert_eq!(&text(resp.unwrap()).await[..], b"answered again");
        assert!(up.pools[0].lock().tls[&origin].shared.is_empty());
    }

    #[tokio::test]
    async fn a_stream_past_a_goaway_goes_again_and_the_one_before_it_is_answered() {
        let addr = scripted_h2(Refusal::GoAway).await;
        let (up, uri, origin) = pooled_h2(addr).await;
        let (first, second) = tokio::join!(
            up.post(uri.clone(), Vec::new(), Bytes::from_static(b"{}")),
            up.post(uri, Vec::new(), Bytes::from_static(b"{}")),
        );
        assert_eq!(&text(first.unwrap()).await[..], b"first");
        assert_eq!(&text(second.unwrap()).await[..], b"answered again");
        assert!(up.pools[0].lock().tls[&origin].shared.is_empty());
    }

    /// A request queued on a kept HTTP/2 connection that closes before
    /// taking it goes again on another connection instead of failing.
    #[tokio::test]
    async fn a_call_a_closing_http2_connection_never_took_goes_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/v1/x", axum::routing::post(|| async { "answered" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (up, uri, origin) = client(addr);
        // A connection whose dispatch task is held here, not run: it takes
        // no request, and dropping it closes the connection with whatever
        // was queued on it still unsent.
        let (io, _peer) = tokio::io::duplex(1 << 16);
        let (tx, dispatch) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
        keep(&up, &origin, tx);

        let call = up.post(uri, Vec::new(), Bytes::from_static(b"{}"));
        tokio::pin!(call);
        // One poll: the call takes the kept connection (open, with room) and
        // queues its request there.
        let pending = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending()));
        assert!(pending.await);
        assert_eq!(
            up.pools[0].lock().tls[&origin].shared[0]
                .streams
                .load(Ordering::Relaxed),
            1
        );

        drop(dispatch);
        assert_eq!(&text(call.await.unwrap()).await[..], b"answered");
        assert!(up.pools[0].lock().tls[&origin].shared.is_empty());
    }
}
