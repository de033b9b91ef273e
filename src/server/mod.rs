//! Process wiring: build the state, bootstrap the root user, assemble the
//! router, serve until told to stop, then drain.

mod front;
mod serving;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::request_id::RequestId;

use crate::auth::{AuthError, Secrets, keys, password, role};
use crate::billing::bank::{LocalBank, QuotaBank};
use crate::cache::{CacheTtl, Caches};
use crate::config::Config;
use crate::config::options::Options;
use crate::ledger::{Ledger, LedgerConfig};
use crate::routing::Snapshot;
use crate::state::{AppState, SharedState};
use crate::store::{NewUser, Store, StoreError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("secrets: {0}")]
    Auth(#[from] AuthError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis: {0}")]
    Redis(String),
    #[error("http client: {0}")]
    Http(#[from] crate::relay::upstream::UpstreamError),
}

/// The ledger writer, stopped last at shutdown.
pub struct Writer {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Writer {
    /// Drains the ledger queue and waits for the writer to finish.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Header carrying the request id on every response (and in the log row).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Request ids: time-ordered, unique per process, cheap (no syscall).
struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds {
            prefix: keys::random_alnum(8),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    fn next(&self) -> Option<RequestId> {
        // `{now}{n:012x}{prefix}`, built without the formatter (it was ~2 % of
        // a relayed call's instructions).
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut secs = itoa::Buffer::new();
        let mut counter = [0u8; 16];
        hex::encode_to_slice(n.to_be_bytes(), &mut counter).ok()?;
        let mut id = Vec::with_capacity(40);
        id.extend_from_slice(secs.format(crate::store::now()).as_bytes());
        id.extend_from_slice(&counter[4..]);
        id.extend_from_slice(self.prefix.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .ok()
            .map(RequestId::new)
    }
}

/// Builds the shared state: connects and migrates the store, loads secrets,
/// options and channels, creates the root user on first start, and starts
/// the ledger writer.
pub async fn build_state(config: Config) -> Result<(SharedState, Writer), ServerError> {
    if config
        .sql_dsn
        .as_deref()
        .is_none_or(|d| d.trim().is_empty())
    {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let store = Store::connect(&config.database_url(), config.sql_max_connections).await?;
    store.migrate().await?;
    let secrets = Secrets::load(
        config.secret_key.as_deref(),
        config.session_secret.as_deref(),
        &config.data_dir,
    )?;
    // Replicas with different keys would each fail to read the others' keys
    // (routing would silently lose channels): refuse to start instead.
    for c in store.sample_ciphers().await? {
        if secrets.decrypt(&c).is_err() {
            return Err(AuthError::SecretKey(
                "the stored keys were encrypted with another key: every replica must \
                 run with the same SLUICE_SECRET_KEY (or the data directory's secret.key)"
                    .into(),
            )
            .into());
        }
    }
    bootstrap_root(&store, &config).await?;
    let options = Options::from_stored(store.load_options().await?);
    let routing = Snapshot::build(&store.all_channels().await?, &secrets);
    let redis = match config.redis_url.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(url) => Some(
            crate::cache::redis::Redis::connect(url, &config.redis_prefix)
                .await
                .map_err(|e| ServerError::Redis(e.to_string()))?,
        ),
        None => None,
    };
    let bank = Arc::new(match &redis {
        Some(r) => {
            let b = crate::billing::redis_bank::RedisBank::new(
                r.clone(),
                std::time::Duration::from_millis(config.redis_lease_ms),
            );
            // Lease first, so no hold is ever listed without one.
            b.renew()
                .await
                .map_err(|e| ServerError::Redis(e.to_string()))?;
            QuotaBank::Redis(b)
        }
        None => QuotaBank::Local(LocalBank::default()),
    });
    let writer = Writer {
        stop: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    let metrics = crate::telemetry::Metrics::new();
    let ledger = Ledger::start(
        store.clone(),
        bank.clone(),
        metrics.clone(),
        LedgerConfig {
            window: std::time::Duration::from_millis(config.ledger_window_ms.max(1)),
            max_batch: config.ledger_max_batch,
            ..LedgerConfig::default()
        },
        &writer.tracker,
        writer.stop.clone(),
    );
    let http =
        crate::relay::upstream::Upstream::new(config.upstream_connect(), config.serve_threads())?;
    let tracker = TaskTracker::new();
    let state = Arc::new(AppState {
        config,
        store,
        secrets,
        options: ArcSwap::from_pointee(options),
        started_at: crate::store::now(),
        caches: Caches::new(CacheTtl::default()),
        bank,
        limiter: match &redis {
            Some(r) => crate::ratelimit::Limiter::redis(r.clone()),
            None => crate::ratelimit::Limiter::local(),
        },
        ledger,
        routing: ArcSwap::from_pointee(routing),
        http,
        tracker,
        metrics,
        redis,
        shutdown: CancellationToken::new(),
    });
    if let QuotaBank::Redis(b) = &*state.bank {
        state.tracker.spawn(b.clone().heal(state.shutdown.clone()));
    }
    state.tracker.spawn(crate::cache::bus::subscribe(
        state.clone(),
        state.shutdown.clone(),
    ));
    Ok((state, writer))
}

/// Creates the root user when there are no users. Credentials come from the
/// environment, or are generated and printed once.
async fn bootstrap_root(store: &Store, config: &Config) -> Result<(), ServerError> {
    if store.count_users().await? > 0 {
        return Ok(());
    }
    let given_pw = config
        .initial_root_password
        .clone()
        .filter(|p| !p.is_empty());
    let given_token = config
        .initial_root_access_token
        .clone()
        .filter(|t| !t.is_empty());
    let pw = given_pw.clone().unwrap_or_else(|| keys::random_alnum(20));
    let token = given_token.clone().unwrap_or_else(keys::new_access_token);
    let hash = password::hash(&pw).await?;
    let res = store
        .create_user(&NewUser {
            username: "root".into(),
            password_hash: hash,
            display_name: "Root".into(),
            role: role::ROOT,
            group: "default".into(),
            quota: 0,
            access_token_hash: Some(keys::lookup_hash(&token)),
        })
        .await;
    let id = match res {
        Ok(id) => id,
        // Another replica bootstrapped at the same moment.
        Err(StoreError::Unique(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if given_pw.is_none() || given_token.is_none() {
        // Printed once, to stderr, never to the structured log.
        let mut msg = format!("\n  sluice created the root user (id {id}, username \"root\")\n");
        if given_pw.is_none() {
            msg.push_str(&format!("    password:     {pw}\n"));
        }
        if given_token.is_none() {
            msg.push_str(&format!(
                "    access token: {token}   (send as Authorization: Bearer <token> with New-Api-User: {id})\n"
            ));
        }
        msg.push_str("  Store them now: they are not shown again.\n");
        eprintln!("{msg}");
    }
    Ok(())
}

/// Unknown routes and methods answer in the shape their prefix promises:
/// the management envelope under `/api`, the OpenAI or Gemini error shape
/// under the relay prefixes.
async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path();
    let msg = format!("no route for {method} {path}");
    if path == "/api" || path.starts_with("/api/") {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"success": false, "message": msg})),
        )
            .into_response();
    }
    let dialect = if path.starts_with("/v1beta") {
        crate::relay::error::Dialect::Gemini
    } else {
        crate::relay::error::Dialect::OpenAi
    };
    crate::relay::error::RelayError::new(crate::relay::error::Kind::NotFound, "unknown_url", msg)
        .into_dialect(dialect, "")
}

async fn wrong_method(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    let mut r = no_route(method, uri).await;
    *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// What serves every request: [`front::Front`] (request ids, the body
/// deadline, the relay's hot doors, axum's router for the rest). The body
/// limit layer wraps the router only: it is read by axum's extractors, and
/// the relay reads bodies with its own limit. Layers wrap the whole router
/// rather than each route (`Router::layer`): axum clones a route's boxed
/// service for every request, and each layer applied per route added boxes
/// to that clone (15 allocations a call).
fn app(state: SharedState) -> impl serving::App {
    let max_body = state.config.max_body_bytes;
    let body_deadline =
        std::time::Duration::from_millis(state.config.client_body_timeout_ms.max(1));
    let router = Router::new()
        .merge(crate::api::router())
        .merge(crate::relay::router())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state.clone());
    let router = tower::ServiceBuilder::new()
        .layer(DefaultBodyLimit::max(max_body))
        .service(router);
    front::Front::new(state, router, body_deadline)
}

/// A server running in the background (used by `main` and by tests).
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The shared state (tests read the store through it).
    pub state: SharedState,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), ServerError>>,
    load: serving::Load,
}

impl RunningServer {
    /// Asks the server to stop accepting, finish in-flight requests and flush.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the server to finish after [`RunningServer::shutdown`].
    pub async fn wait(self) -> Result<(), ServerError> {
        self.handle
            .await
            .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Open client connections on each serving thread.
    pub fn open_connections(&self) -> Vec<usize> {
        self.load.get()
    }

    /// A token that is cancelled when the server is told to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Binds and serves in the background: see [`serving`] for the threads.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    let addr = SocketAddr::new(config.bind, config.port);
    let (state, writer) = build_state(config).await?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shutdown = state.shutdown.clone();
    let lanes = serving::Lanes::start(
        state.config.serve_threads(),
        app(state.clone()),
        serving::ConnLimits::from(&state.config),
        shutdown.clone(),
    )?;
    let load = lanes.load();
    let st = state.clone();
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move {
        let lanes = lanes.accept(listener, stop).await;
        // In-flight requests are done; let background work (settlements of
        // dropped streams, channel updates) queue its rows, then drain the
        // ledger, then close the database.
        st.tracker.close();
        st.tracker.wait().await;
        writer.stop().await;
        if let QuotaBank::Redis(b) = &*st.bank {
            b.drain(std::time::Duration::from_secs(3)).await;
        }
        st.store.close().await;
        lanes.release().await;
        Ok(())
    });
    Ok(RunningServer {
        addr,
        state,
        shutdown,
        handle,
        load,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ids are `{unix seconds}{counter as 12 hex digits}{8-char prefix}`:
    /// unique, and ordered by time then by counter.
    #[test]
    fn request_ids_are_seconds_counter_prefix() {
        let ids = RequestIds::new();
        let next = || {
            let id = ids.next().unwrap();
            id.header_value().to_str().unwrap().to_string()
        };
        let (a, b) = (next(), next());
        let secs = crate::store::now().to_string();
        for id in [&a, &b] {
            assert_eq!(id.len(), secs.len() + 12 + 8, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
        assert_eq!(&a[secs.len()..secs.len() + 12], "000000000000");
        assert_eq!(&b[secs.len()..secs.len() + 12], "000000000001");
        assert_eq!(a[secs.len() + 12..], b[secs.len() + 12..]);
        assert!(a < b);
    }
}
