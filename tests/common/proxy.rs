//! A TCP proxy on loopback that a test can cut and restore, to play a
//! database or Redis going away (a restart: connections dropped, new ones
//! refused) and coming back.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A cuttable TCP proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: AbortHandle,
}

struct Inner {
    target: String,
    up: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
    /// Connections refused while cut.
    refused: AtomicUsize,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`) on a random loopback port.
    pub async fn start(target: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let inner = Arc::new(Inner {
            target: target.to_string(),
            up: AtomicBool::new(true),
            conns: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let i = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = l.accept().await {
                if !i.up.load(Ordering::SeqCst) {
                    i.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let target = i.target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                i.conns.lock().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            inner,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones until [`restore`].
    ///
    /// [`restore`]: Proxy::restore
    pub fn cut(&self) {
        self.inner.up.store(false, Ordering::SeqCst);
        for c in self.inner.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.inner.up.store(true, Ordering::SeqCst);
    }

    /// How many connections were refused while cut.
    pub fn refused(&self) -> usize {
        self.inner.refused.load(Ordering::SeqCst)
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let hp = host_port(url);
        url.replacen(&hp, &self.addr.to_string(), 1)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The `host:port` of a service URL (`scheme://[user@]host:port/...`).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}
