//! The tab of one call: the reservation it holds and what its ledger row will
//! say. Settling turns the reservation into the real charge and queues the
//! row; dropping an unsettled tab refunds (the reservation's own drop).

use std::time::Instant;

use super::Call;
use crate::billing::bank::Reservation;
use crate::billing::{Price, Usage};
use crate::ledger::{Charge, Entry};
use crate::state::SharedState;
use crate::store::{NewLog, log_type, now};

/// Where the usage figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// Reported by the upstream.
    Upstream,
    /// Counted locally (no usage reported, or the client left early).
    Local,
}

impl UsageSource {
    fn as_str(self) -> &'static str {
        match self {
            UsageSource::Upstream => "upstream",
            UsageSource::Local => "local",
        }
    }
}

/// The `other` object of a log row (SPEC §8).
#[derive(Debug)]
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
    model_ratio: Option<f64>,
    completion_ratio: Option<f64>,
    cache_ratio: Option<f64>,
    group_ratio: Option<f64>,
    model_price: Option<f64>,
    cached_tokens: i64,
    usage_source: UsageSource,
    use_time_ms: u128,
    frt_ms: Option<u128>,
    tried_channels: &'a [i64],
    /// Written only when true.
    client_disconnected: bool,
}

/// `other` as JSON text, field by field: through serde, serde_json escaped
/// every constant key byte by byte, ~4 % of a relayed call's instructions.
/// Values go through serde_json only when they need it (floats, strings
/// with characters to escape). `None` fields are left out.
fn other_json(o: &Other<'_>) -> String {
    let mut w = JsonObject::with_capacity(384);
    w.str("request_id", o.request_id);
    w.str("client", o.client);
    w.str("request_path", o.request_path);
    w.int("http_status", o.http_status);
    w.str("dialect", o.dialect);
    w.str("upstream_model", o.upstream_model);
    w.str("channel_name", o.channel_name);
    w.str("mode", o.mode);
    w.float("model_ratio", o.model_ratio);
    w.float("completion_ratio", o.completion_ratio);
    w.float("cache_ratio", o.cache_ratio);
    w.float("group_ratio", o.group_ratio);
    w.float("model_price", o.model_price);
    w.int("cached_tokens", o.cached_tokens);
    w.str("usage_source", o.usage_source.as_str());
    w.int("use_time_ms", o.use_time_ms);
    if let Some(frt) = o.frt_ms {
        w.int("frt_ms", frt);
    }
    w.key("tried_channels");
    w.buf.push(b'[');
    for (i, id) in o.tried_channels.iter().enumerate() {
        if i > 0 {
            w.buf.push(b',');
        }
        w.buf
            .extend_from_slice(itoa::Buffer::new().format(*id).as_bytes());
    }
    w.buf.push(b']');
    if o.client_disconnected {
        w.key("client_disconnected");
        w.buf.extend_from_slice(b"true");
    }
    w.finish()
}

/// `v` as an integer when it is a whole number well inside the range where
/// serde_json writes it as `{n}.0` (not `-0.0`, not in exponent form).
fn whole(v: f64) -> Option<i64> {
    let in_range = v.abs() < 1e9 && v.fract() == 0.0 && (v != 0.0 || v.is_sign_positive());
    in_range.then_some(v as i64)
}

/// A JSON object written into one buffer. Keys are constants that need no
/// escaping.
struct JsonObject {
    buf: Vec<u8>,
}

impl JsonObject {
    fn with_capacity(n: usize) -> JsonObject {
        let mut buf = Vec::with_capacity(n);
        buf.push(b'{');
        JsonObject { buf }
    }

    fn key(&mut self, k: &'static str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &'static str, v: &str) {
        self.key(k);
        // A fold without an early exit, which the compiler vectorises: the
        // byte-by-byte `all` was ~40 % of writing the object.
        let plain = !v.bytes().fold(false, |esc, b| {
            esc | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.buf.push(b'"');
            self.buf.extend_from_slice(v.as_bytes());
            self.buf.push(b'"');
        } else {
            self.serde(v);
        }
    }

    fn int(&mut self, k: &'static str, v: impl itoa::Integer) {
        self.key(k);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    fn float(&mut self, k: &'static str, v: Option<f64>) {
        if let Some(v) = v {
            self.key(k);
            match whole(v) {
                // Ratios are mostly whole numbers: written as serde_json
                // writes them (`1.0`) without its float formatter.
                Some(n) => {
                    self.buf
                        .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    self.buf.extend_from_slice(b".0");
                }
                None => self.serde(&v),
            }
        }
    }

    fn serde(&mut self, v: &(impl serde::Serialize + ?Sized)) {
        // Writing a string or a float into a Vec cannot fail.
        if serde_json::to_writer(&mut self.buf, v).is_err() {
            self.buf.extend_from_slice(b"null");
        }
    }

    fn finish(mut self) -> String {
        self.buf.push(b'}');
        // Only whole UTF-8 strings and ASCII went in.
        String::from_utf8(self.buf).unwrap_or_else(|_| "{}".into())
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
        let other = other_json(&other);
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
            request_id: std::mem::take(&mut self.request_id),
            other,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn other<'a>(strings: &'a str, tried: &'a [i64]) -> Other<'a> {
        Other {
            request_id: "20261202134700123456789abcdef",
            client: strings,
            request_path: "/v1/chat/completions",
            http_status: 200,
            dialect: "openai",
            upstream_model: strings,
            channel_name: "mock",
            mode: "ratio",
            model_ratio: Some(2.5),
            completion_ratio: Some(0.1),
            cache_ratio: None,
            group_ratio: Some(1.0),
            model_price: None,
            cached_tokens: 7,
            usage_source: UsageSource::Local,
            use_time_ms: 1234,
            frt_ms: None,
            tried_channels: tried,
            client_disconnected: false,
        }
    }

    #[test]
    fn other_is_the_json_object_of_its_fields() {
        let text = other_json(&other("openai-python/1.0", &[3, 12]));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "request_id": "20261202134700123456789abcdef",
                "client": "openai-python/1.0",
                "request_path": "/v1/chat/completions",
                "http_status": 200,
                "dialect": "openai",
                "upstream_model": "openai-python/1.0",
                "channel_name": "mock",
                "mode": "ratio",
                "model_ratio": 2.5,
                "completion_ratio": 0.1,
                "group_ratio": 1.0,
                "cached_tokens": 7,
                "usage_source": "local",
                "use_time_ms": 1234,
                "tried_channels": [3, 12],
            })
        );
        // Compact, as serde_json writes it, in the fields' order.
        assert!(!text.contains(char::is_whitespace), "{text}");
        assert!(text.starts_with(r#"{"request_id":"#), "{text}");
    }

    #[test]
    fn whole_floats_are_written_as_serde_json_writes_them() {
        let values = [
            0.0,
            -0.0,
            1.0,
            2.0,
            -3.0,
            10.0,
            100.0,
            123_456_789.0,
            999_999_999.0,
            1e9,
            1e15,
            1e16,
            1e300,
            0.5,
            0.1,
            2.5,
            -7.25,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NAN,
        ];
        for v in values {
            let mut w = JsonObject::with_capacity(16);
            w.float("x", Some(v));
            let ours = w.finish();
            let theirs = format!(r#"{{"x":{}}}"#, serde_json::to_string(&v).unwrap());
            assert_eq!(ours, theirs, "{v:?}");
        }
        assert_eq!(whole(1.0), Some(1));
        assert_eq!(whole(0.5), None);
        assert_eq!(whole(-0.0), None);
    }

    #[test]
    fn other_escapes_what_json_requires_and_writes_optional_fields() {
        let awkward = "a \"quoted\" \\ back\nslash \u{1} tab\t é 模型 \u{7f}";
        let mut o = other(awkward, &[]);
        o.frt_ms = Some(56);
        o.client_disconnected = true;
        o.model_ratio = Some(f64::NAN);
        o.model_price = Some(0.002);
        let text = other_json(&o);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["client"], awkward);
        assert_eq!(v["upstream_model"], awkward);
        assert_eq!(v["frt_ms"], 56);
        assert_eq!(v["client_disconnected"], true);
        assert_eq!(v["model_ratio"], Value::Null);
        assert_eq!(v["model_price"], 0.002);
        assert_eq!(v["tried_channels"], json!([]));
        assert!(v.get("cache_ratio").is_none());
    }
}
