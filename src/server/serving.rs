//! Serving threads ("lanes"): one more than the cores by default
//! (`Config::serve_threads`), each a single-threaded tokio runtime that owns
//! the connections it is given. A request, its upstream call (the lane's own
//! connection pool, `relay::upstream`) and its response stay on one thread:
//! no work-stealing hand-offs and no cross-thread wake-ups per call, which
//! cost ~13 % of the CPU per relayed call on one multi-threaded runtime
//! (docs/performance.md).
//!
//! One acceptor, on the caller's runtime, hands each new connection to the
//! lane with the fewest open connections, so a burst of connections does not
//! all land on whichever thread woke first (connections are long-lived:
//! keep-alive clients stay on their lane).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::Request;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Per-connection limits against slow or oversized clients.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnLimits {
    /// Time a client has to send a request's headers (also an idle
    /// keep-alive connection's limit before its next request).
    header_timeout: Duration,
    /// Largest request head (request line and headers).
    max_header_bytes: usize,
}

impl From<&Config> for ConnLimits {
    fn from(c: &Config) -> Self {
        ConnLimits {
            header_timeout: Duration::from_millis(c.client_header_timeout_ms.max(1)),
            max_header_bytes: c.max_header_bytes.max(8192),
        }
    }
}

type Handoff = (std::net::TcpStream, SocketAddr);

/// What serves the requests of a connection ([`super::app`]): each request
/// with the address of the peer that sent it.
pub(super) trait App: Clone + Send + Sync + 'static {
    /// A request's answer.
    type Future: std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
        + Send
        + 'static;

    /// Serves `req`, which came from `peer`.
    fn serve(&self, req: Request<hyper::body::Incoming>, peer: SocketAddr) -> Self::Future;
}

/// One serving thread, seen from the acceptor.
struct Lane {
    conns: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
    /// Sent when the lane has finished every connection it was given.
    served: oneshot::Receiver<()>,
    /// Sent when the thread has ended.
    ended: oneshot::Receiver<()>,
}

/// The serving threads.
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    release: CancellationToken,
}

/// Open connections per serving thread (for tests and diagnostics).
#[derive(Clone, Debug)]
pub(super) struct Load(Vec<Arc<AtomicUsize>>);

impl Load {
    /// Open connections on each lane, in lane order.
    pub(super) fn get(&self) -> Vec<usize> {
        self.0.iter().map(|o| o.load(Ordering::Relaxed)).collect()
    }
}

/// The serving threads after their connections are done: still up (see
/// [`Lanes::release`]).
pub(super) struct Finished {
    ended: Vec<oneshot::Receiver<()>>,
    release: CancellationToken,
}

impl Lanes {
    /// A view of the lanes' open connections.
    pub(super) fn load(&self) -> Load {
        Load(self.lanes.iter().map(|l| l.open.clone()).collect())
    }

    /// Starts `n` serving threads for `app` (`Config::serve_threads`, at least one).
    pub(super) fn start<A>(
        n: usize,
        app: A,
        limits: ConnLimits,
        stop: CancellationToken,
    ) -> std::io::Result<Lanes>
    where
        A: App,
    {
        let release = CancellationToken::new();
        let mut lanes = Vec::with_capacity(n);
        for lane in 1..=n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Blocking threads (argon2: ~19 MiB each) exit soon after use,
                // which is when the allocator returns their memory.
                .thread_keep_alive(Duration::from_secs(2))
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (served_tx, served) = oneshot::channel();
            let (ended_tx, ended) = oneshot::channel();
            let open = Arc::new(AtomicUsize::new(0));
            let (app, stop, release, count) =
                (app.clone(), stop.clone(), release.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("sluice-serve-{lane}"))
                .spawn(move || {
                    crate::relay::upstream::enter_lane(lane);
                    rt.block_on(async move {
                        serve_lane(rx, app, limits, stop, count).await;
                        let _ = served_tx.send(());
                        // This runtime holds the I/O of what it opened (pooled
                        // database and Redis connections among it): it stays
                        // up until the ledger is flushed and the store closed.
                        release.cancelled().await;
                    });
                    drop(rt);
                    let _ = ended_tx.send(());
                })?;
            lanes.push(Lane {
                conns: tx,
                open,
                served,
                ended,
            });
        }
        Ok(Lanes { lanes, release })
    }

    /// Accepts connections until `stop`, then waits until every lane has
    /// finished the requests in flight (idle connections are closed).
    pub(super) async fn accept(self, listener: TcpListener, stop: CancellationToken) -> Finished {
        let Lanes { lanes, release } = self;
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a
                        // little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Small writes (stream events) must leave at once: no Nagle delay.
            let _ = tcp.set_nodelay(true);
            let Some(lane) = lanes
                .iter()
                .filter(|l| !l.conns.is_closed())
                .min_by_key(|l| l.open.load(Ordering::Relaxed))
            else {
                tracing::error!("no serving thread is running; stopping");
                break;
            };
            match tcp.into_std() {
                Ok(s) => {
                    lane.open.fetch_add(1, Ordering::Relaxed);
                    let _ = lane.conns.send((s, peer));
                }
                Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
            }
        }
        drop(listener);
        let mut ended = Vec::with_capacity(lanes.len());
        let mut served = Vec::with_capacity(lanes.len());
        for l in lanes {
            // Dropping the sender ends the lane's loop.
            served.push(l.served);
            ended.push(l.ended);
        }
        // A dropped sender (a thread that died) counts as done.
        for rx in served {
            let _ = rx.await;
        }
        Finished { ended, release }
    }
}

impl Finished {
    /// Lets the serving threads end, and waits until they have.
    pub(super) async fn release(self) {
        self.release.cancel();
        for rx in self.ended {
            let _ = rx.await;
        }
    }
}

/// Decrements a lane's open-connection count when its connection ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the connections handed to this lane until the acceptor stops,
/// then lets every request in flight finish.
///
/// hyper's connection builders rather than `axum::serve` for the limits axum
/// does not expose: a header read timeout (slow clients cannot hold
/// connections open forever) and the size of request heads. The protocol is
/// told from the first bytes ([`first_bytes_within`] reads them anyway), so
/// each connection runs hyper's HTTP/1 or HTTP/2 server directly, without
/// hyper-util's auto-detecting wrapper around its reads.
async fn serve_lane<A>(
    mut conns: mpsc::UnboundedReceiver<Handoff>,
    app: A,
    limits: ConnLimits,
    stop: CancellationToken,
    open: Arc<AtomicUsize>,
) where
    A: App,
{
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    while let Some((std_tcp, peer)) = conns.recv().await {
        let guard = Open(open.clone());
        let tcp = match TcpStream::from_std(std_tcp) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a connection over");
                continue;
            }
        };
        let app = app.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        let graceful_watch = graceful.watcher();
        let stopping = stop.clone();
        tokio::spawn(async move {
            let _guard = guard;
            // hyper's header timeout starts once the protocol is known; a
            // client that connects and says nothing must not wait forever.
            // Nor may it hold up a shutdown (the watcher counts it already).
            let proto = tokio::select! {
                p = first_bytes_within(&tcp, limits.header_timeout) => p,
                _ = stopping.cancelled() => None,
            };
            let svc = hyper::service::service_fn(move |req| app.serve(req, peer));
            let io = TokioIo::new(tcp);
            let served = match proto {
                None => return,
                Some(Proto::Http1) => graceful_watch.watch(h1.serve_connection(io, svc)).await,
                Some(Proto::Http2) => graceful_watch.watch(h2.serve_connection(io, svc)).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// The protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    /// It opened with HTTP/2's preface (prior knowledge, h2c).
    Http2,
}

/// Waits until the client has sent enough to tell its protocol (its first
/// bytes, or the whole HTTP/2 preface if it starts like one), at most `limit`.
/// `None` if it closed or stayed silent.
async fn first_bytes_within(tcp: &TcpStream, limit: Duration) -> Option<Proto> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let sniff = async {
        let mut buf = [0u8; 24];
        loop {
            let n = tcp.peek(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            if buf[..n] != PREFACE[..n] {
                return Some(Proto::Http1);
            }
            if n == PREFACE.len() {
                return Some(Proto::Http2);
            }
            // A partial HTTP/2 preface: wait for the rest.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(limit, sniff).await.unwrap_or(None)
}
