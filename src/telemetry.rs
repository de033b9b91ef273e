//! Prometheus metrics (`GET /metrics`). Counters are registered once and the
//! hot path holds their handles, so counting a call is an atomic add.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder (installed once; test binaries start several
/// servers in one process and share it).
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder if needed and returns its handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// The counters the relay and the ledger move.
#[derive(Clone)]
pub struct Metrics {
    /// Calls answered and billed (one ledger row each).
    pub relay_settled: Counter,
    /// Calls that failed after routing (an error row each).
    pub relay_failed: Counter,
    /// Quota charged.
    pub quota_charged: Counter,
    /// Ledger rows committed.
    pub ledger_rows: Counter,
    /// Ledger batches that failed to commit (and were retried).
    pub ledger_retries: Counter,
    /// Entries waiting for the ledger writer.
    pub ledger_queue: Gauge,
}

impl Metrics {
    /// Registers the counters (with the recorder installed first).
    pub fn new() -> Metrics {
        let _ = handle();
        Metrics {
            relay_settled: counter!("sluice_relay_requests_total", "outcome" => "settled"),
            relay_failed: counter!("sluice_relay_requests_total", "outcome" => "failed"),
            quota_charged: counter!("sluice_quota_charged_total"),
            ledger_rows: counter!("sluice_ledger_rows_total"),
            ledger_retries: counter!("sluice_ledger_commit_retries_total"),
            ledger_queue: gauge!("sluice_ledger_queue"),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The text exposition for `GET /metrics`.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}
