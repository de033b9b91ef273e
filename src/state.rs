//! Shared server state handed to every handler.

use std::sync::Arc;

use arc_swap::ArcSwap;

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
    /// Token and user caches for the relay's key check.
    pub caches: Caches,
    /// Live balances.
    pub bank: Arc<QuotaBank>,
    /// Rate-limit counters of the relay.
    pub limiter: crate::ratelimit::Limiter,
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

impl AppState {
    /// The current options.
    pub fn options(&self) -> arc_swap::Guard<Arc<Options>> {
        self.options.load()
    }
}
