//! The tab of one call: the reservation it holds and what its ledger row will
//! say. Settling turns the reservation into the real charge and queues the
//! row; dropping an unsettled tab refunds (the reservation's own drop).

use std::time::Instant;

use serde::Serialize;

use super::Call;
use crate::billing::bank::Reservation;
use crate::billing::{Price, Usage};
use crate::ledger::{Charge, Entry};
use crate::state::SharedState;
use crate::store::{NewLog, log_type, now};

/// Where the usage figures came from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported by the upstream.
    Upstream,
    /// Counted locally (no usage reported, or the client left early).
    Local,
}

/// The `other` object of a log row (SPEC §8).
#[derive(Debug, Serialize)]
struct Other<'a> {
    request_id: &'a str,
    client: &'a str,
    request_path: &'a str,
    http_status: u16,
    dialect: &'a str,
    upstream_model: &'a str,
    channel_name: &'a str,
    /// How the call was priced: `ratio`, `fixed` or `free`.
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_price: Option<f64>,
    cached_tokens: i64,
    usage_source: UsageSource,
    use_time_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    frt_ms: Option<u128>,
    tried_channels: &'a [i64],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_disconnected: bool,
}

/// `other` as JSON text, written into a buffer sized for a typical row
/// (~300 bytes), so it is not regrown on the way.
fn other_json(other: &Other<'_>) -> String {
    let mut buf = Vec::with_capacity(384);
    match serde_json::to_writer(&mut buf, other) {
        Ok(()) => String::from_utf8(buf).unwrap_or_else(|_| "{}".into()),
        Err(_) => "{}".into(),
    }
}

/// Settlement state of one call.
pub struct Tab {
    pub state: SharedState,
    reservation: Option<Reservation>,
    pub price: Price,
    token_limited: bool,
    token_id: i64,
    token_name: String,
    user_id: i64,
    username: String,
    group: String,
    model: String,
    ip: String,
    request_id: String,
    request_path: String,
    client: String,
    dialect: &'static str,
    is_stream: bool,
    started: Instant,
    /// Set when an upstream answered.
    pub channel_id: i64,
    pub channel_name: String,
    pub upstream_model: String,
    pub tried: Vec<i64>,
    pub first_response: Option<Instant>,
    pub client_disconnected: bool,
    /// Rate limits that count this call's tokens and success.
    limits: Vec<crate::ratelimit::Limit>,
}

impl Tab {
    /// Opens a tab for `call` holding `reservation`.
    pub fn new(
        state: SharedState,
        call: &Call,
        price: Price,
        reservation: Reservation,
        limits: Vec<crate::ratelimit::Limit>,
    ) -> Tab {
        let t = &call.caller.token.token;
        Tab {
            reservation: Some(reservation),
            price,
            token_limited: !t.unlimited_quota,
            token_id: t.id,
            token_name: t.name.clone(),
            user_id: call.caller.user.id,
            username: call.caller.user.username.clone(),
            group: call.caller.group.clone(),
            model: call.model.clone(),
            ip: crate::util::ip_text(call.caller.ip),
            request_id: call.request_id.clone(),
            request_path: call.path.clone(),
            client: call.client.clone(),
            dialect: call.dialect_name,
            is_stream: call.stream,
            started: call.started,
            channel_id: 0,
            channel_name: String::new(),
            upstream_model: String::new(),
            tried: Vec::new(),
            first_response: None,
            client_disconnected: false,
            limits,
            state,
        }
    }

    /// Converts the reservation into the real charge and builds the entry.
    async fn close(
        &mut self,
        usage: Usage,
        source: UsageSource,
        http_status: u16,
    ) -> Option<Entry> {
        let reservation = self.reservation.take()?;
        let qpu = self.state.options().quota_per_unit;
        let quota = self.price.cost(&usage, qpu);
        let (token_hold, user_hold) = reservation.holds();
        if let Err(e) = self.state.bank.settle(reservation, quota).await {
            // The charge is still recorded; the shared balance catches up when
            // the account is next reseeded.
            tracing::warn!(error = %e, "settling a call's balance failed");
        }
        if !self.limits.is_empty() {
            // Counted before the call is over, so the caller's next call sees it.
            let tokens = usage.prompt_tokens.max(0) + usage.completion_tokens.max(0);
            self.state
                .limiter
                .settled(&self.limits, tokens, http_status < 400)
                .await;
        }
        self.state.metrics.relay_settled.increment(1);
        self.state
            .metrics
            .quota_charged
            .increment(quota.max(0) as u64);
        let elapsed = self.started.elapsed();
        let other = Other {
            request_id: &self.request_id,
            client: &self.client,
            request_path: &self.request_path,
            http_status,
            dialect: self.dialect,
            upstream_model: &self.upstream_model,
            channel_name: &self.channel_name,
            mode: match self.price {
                Price::Ratio { .. } => "ratio",
                Price::Fixed { .. } => "fixed",
                Price::Free => "free",
            },
            model_ratio: match self.price {
                Price::Ratio { model_ratio, .. } => Some(model_ratio),
                _ => None,
            },
            completion_ratio: match self.price {
                Price::Ratio {
                    completion_ratio, ..
                } => Some(completion_ratio),
                _ => None,
            },
            cache_ratio: match self.price {
                Price::Ratio { cache_ratio, .. } => Some(cache_ratio),
                _ => None,
            },
            group_ratio: match self.price {
                Price::Ratio { group_ratio, .. } | Price::Fixed { group_ratio, .. } => {
                    Some(group_ratio)
                }
                Price::Free => None,
            },
            model_price: match self.price {
                Price::Fixed { model_price, .. } => Some(model_price),
                _ => None,
            },
            cached_tokens: usage.cached_tokens,
            usage_source: source,
            use_time_ms: elapsed.as_millis(),
            frt_ms: self
                .first_response
                .map(|f| f.duration_since(self.started).as_millis()),
            tried_channels: &self.tried,
            client_disconnected: self.client_disconnected,
        };
        let log = NewLog {
            created_at: now(),
            log_type: log_type::CONSUME,
            content: String::new(),
            user_id: self.user_id,
            username: std::mem::take(&mut self.username),
            token_id: self.token_id,
            token_name: std::mem::take(&mut self.token_name),
            model_name: std::mem::take(&mut self.model),
            channel_id: self.channel_id,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            quota,
            use_time: elapsed.as_secs() as i64,
            is_stream: self.is_stream,
            ip: std::mem::take(&mut self.ip),
            group: std::mem::take(&mut self.group),
            request_id: self.request_id.clone(),
            other: other_json(&other),
        };
        Some(Entry::Charge(Box::new(Charge {
            log,
            token_id: self.token_id,
            token_limited: self.token_limited,
            user_id: self.user_id,
            channel_id: self.channel_id,
            quota,
            token_hold,
            user_hold,
        })))
    }

    /// Settles and queues the row (waits if the ledger queue is full).
    pub async fn settle(mut self, usage: Usage, source: UsageSource, http_status: u16) {
        if let Some(e) = self.close(usage, source, http_status).await {
            self.state.ledger.record(e).await;
        }
    }

    /// Settles from a context that cannot wait (a dropped stream): the bank
    /// moves now, the row is queued by a tracked task.
    pub fn settle_detached(self, usage: Usage, source: UsageSource, http_status: u16) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let tracker = self.state.tracker.clone();
        tracker.spawn(async move { self.settle(usage, source, http_status).await });
    }

    /// Whether the tab still holds its reservation.
    pub fn is_open(&self) -> bool {
        self.reservation.is_some()
    }
}
