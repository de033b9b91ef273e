//! Shared server state handed to every handler.

use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Secrets;
use crate::billing::bank::QuotaBank;
use crate::cache::Caches;
use crate::config::Config;
use crate::config::options::Options;
use crate::ledger::Ledger;
use crate::routing::Snapshot;
use crate::store::Store;

/// Everything a handler may need. Cheap to clone through [`SharedState`].
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub secrets: Secrets,
    /// The current options snapshot; replaced whole on change.
    pub options: ArcSwap<Options>,
    /// Unix time the process started.
    pub started_at: i64,
    /// Throttles for sensitive management calls.
    pub limits: Limits,
    /// Token and user caches for the relay's key check.
    pub caches: Caches,
    /// Live balances.
    pub bank: Arc<QuotaBank>,
    /// The ledger queue.
    pub ledger: Ledger,
    /// The routing table; replaced whole when a channel changes.
    pub routing: ArcSwap<Snapshot>,
    /// The pooled upstream client.
    pub http: crate::relay::upstream::Upstream,
    /// Background tasks; shutdown waits for them.
    pub tracker: tokio_util::task::TaskTracker,
    /// Prometheus counters.
    pub metrics: crate::telemetry::Metrics,
    /// Redis, when several replicas share state.
    pub redis: Option<crate::cache::redis::Redis>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Shared handle to [`AppState`].
pub type SharedState = Arc<AppState>;

/// In-process throttles for credential-revealing and credential-guessing
/// routes (key retrieval per user, login per client IP).
pub struct Limits {
    /// `POST /api/token/:id/key` and `/batch/keys`, keyed by user id.
    pub key_view: DefaultKeyedRateLimiter<i64>,
    /// `POST /api/user/login` and `/register`, keyed by client IP.
    pub login: DefaultKeyedRateLimiter<std::net::IpAddr>,
}

/// Key views allowed per user per minute.
pub const KEY_VIEWS_PER_MINUTE: u32 = 30;
/// Login attempts allowed per client IP per minute.
pub const LOGINS_PER_MINUTE: u32 = 20;

impl Default for Limits {
    fn default() -> Self {
        let per_min = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Limits {
            key_view: RateLimiter::keyed(per_min(KEY_VIEWS_PER_MINUTE)),
            login: RateLimiter::keyed(per_min(LOGINS_PER_MINUTE)),
        }
    }
}

impl AppState {
    /// The current options.
    pub fn options(&self) -> arc_swap::Guard<Arc<Options>> {
        self.options.load()
    }
}
