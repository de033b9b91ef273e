//! Route, price, reserve, forward with failover, settle (SPEC §5–6).
//!
//! A call holds one reservation across all its attempts; a failed attempt
//! costs nothing. Another channel is tried on a connect error, a timeout, 429,
//! 5xx, or an auth failure of the channel's key — never after the first byte
//! has reached the client (streams commit once their first event arrived).

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::error::{Kind, RelayError, errors};
use super::providers::{self, Wire};
use super::tab::Tab;
use super::upstream::{self, UpstreamError};
use super::{Call, convert, stream};
use crate::billing::Price;
use crate::ledger::Entry;
use crate::routing::ChannelRt;
use crate::state::SharedState;
use crate::store::{NewLog, channel_status, log_type, now};

/// Largest non-streamed upstream body sluice accepts.
pub const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// How one attempt ended.
pub enum Attempt {
    /// Answered (success, or a failure the client should see as is).
    Done(Response),
    /// Failed before anything reached the client; another channel may serve.
    Retry(RelayError),
}

/// Forwards the call and answers in the caller's dialect.
pub async fn forward(state: &SharedState, call: Call) -> Response {
    match run(state, &call).await {
        Ok(r) => r,
        Err(e) => e.into_dialect(call.dialect, &call.request_id),
    }
}

async fn run(state: &SharedState, call: &Call) -> Result<Response, RelayError> {
    let snap = state.routing.load_full();
    let opts = state.options.load_full();
    let group = &call.caller.group;
    if let Some(pin) = call.caller.pinned {
        // A pin chooses the channel, not whether it may serve: a disabled
        // channel stays disabled (its models are not checked, as in new-api,
        // so an admin can probe a model before listing it).
        match snap.channel(pin) {
            None => return Err(errors::no_channel(group, &call.model)),
            Some(ch) if ch.status != channel_status::ENABLED => {
                return Err(errors::channel_disabled(pin));
            }
            Some(_) => {}
        }
    } else if !snap.serves(group, &call.model) {
        return Err(errors::no_channel(group, &call.model));
    }
    let price = Price::of(&opts, &call.model, group)
        .map_err(|e| RelayError::new(Kind::InvalidRequest, "model_price_error", e.to_string()))?;
    let limits = crate::ratelimit::plan(&call.caller, &opts);
    if let Some(refused) = state
        .limiter
        .admit(&limits)
        .await
        .map_err(errors::rate_unavailable)?
    {
        return Err(errors::rate_limited(refused));
    }
    let max_out = call.max_output.unwrap_or(opts.default_output_allowance);
    let amount = price.reserve(call.prompt_upper, max_out, opts.quota_per_unit);
    let t = &call.caller.token.token;
    let reservation = state
        .bank
        .reserve(
            &state.store,
            (!t.unlimited_quota).then_some(t.id),
            call.caller.user.id,
            amount,
        )
        .await
        .map_err(errors::bank)?;
    let mut tab = Tab::new(state.clone(), call, price, reservation, limits);
    let attempts = if call.caller.pinned.is_some() {
        1
    } else {
        1 + opts.retry_times as usize
    };
    let mut last: Option<RelayError> = None;
    for _ in 0..attempts {
        let ch = match call.caller.pinned {
            Some(id) => snap.channel(id).cloned(),
            None => snap.pick_where(group, &call.model, &tab.tried, |c| {
                providers::route(call.endpoint, c.kind).is_some()
            }),
        };
        let Some(ch) = ch else { break };
        tab.tried.push(ch.id);
        // Boxed for the size of `run`'s future (see `relay::serve`).
        match Box::pin(attempt(state, call, &ch, tab)).await {
            Ok(resp) => return Ok(resp),
            Err((e, back)) => {
                tab = back;
                last = Some(e);
            }
        }
    }
    let err = last.unwrap_or_else(|| errors::no_channel(group, &call.model));
    log_failure(state, call, &tab, &err).await;
    Err(err)
}

/// One try on one channel. On a retryable failure the tab comes back.
async fn attempt(
    state: &SharedState,
    call: &Call,
    ch: &Arc<ChannelRt>,
    mut tab: Tab,
) -> Result<Response, (RelayError, Tab)> {
    let upstream_model = ch.upstream_model(&call.model).to_string();
    let wire = Wire::of(ch.kind);
    let Some(route) = providers::route(call.endpoint, ch.kind) else {
        return Err((
            errors::internal(format!(
                "channel #{} cannot serve {}",
                ch.id,
                call.endpoint.name()
            )),
            tab,
        ));
    };
    let body = match convert::upstream_body(call, wire, route, &upstream_model) {
        Ok(b) => b,
        Err(e) => return Ok(e.into_dialect(call.dialect, &call.request_id)),
    };
    let out = match providers::outbound(ch, call.endpoint, body, &upstream_model, call.stream) {
        Ok(o) => o,
        Err(e) => return Err((e, tab)),
    };
    let timeouts = &state.config;
    let sent = tokio::time::timeout(
        timeouts.upstream_first_byte(),
        state.http.post(out.url, out.headers, out.body),
    )
    .await;
    let resp = match sent {
        Err(_) => return Err((upstream_timeout(ch), tab)),
        Ok(Err(e)) => return Err((upstream_unreachable(ch, &e), tab)),
        Ok(Ok(r)) => r,
    };
    tab.first_response = Some(Instant::now());
    let mut status = resp.status();
    if !status.is_success() {
        let body = read_limited(resp, timeouts.upstream_idle(), 64 * 1024)
            .await
            .unwrap_or_default();
        // Gemini refuses a bad key with 400 INVALID_ARGUMENT: it is the
        // channel's failure, not the caller's.
        if status == StatusCode::BAD_REQUEST
            && memchr::memmem::find(&body, b"API_KEY_INVALID").is_some()
        {
            status = StatusCode::UNAUTHORIZED;
        }
        let err = upstream_error(status, &body, ch);
        maybe_auto_disable(state, ch, status, &body);
        return if retryable(status) {
            Err((err, tab))
        } else {
            // The client's own mistake (400, 404, …): no other channel would
            // answer differently. Refund and pass the upstream's word on.
            log_failure(state, call, &tab, &err).await;
            Ok(err.into_dialect(call.dialect, &call.request_id))
        };
    }
    tab.channel_id = ch.id;
    tab.channel_name = ch.name.clone();
    tab.upstream_model = upstream_model;
    if call.stream {
        let tap = convert::tap(call, wire, route);
        return stream::start_with(state, call, tab, resp, tap).await;
    }
    let bytes = match read_limited(resp, timeouts.upstream_idle(), MAX_UPSTREAM_BODY).await {
        Ok(b) => b,
        Err(e) => return Err((e, tab)),
    };
    let (client, usage, source) = match convert::client_body(call, wire, route, &bytes) {
        Ok(x) => x,
        Err(e) => return Err((e, tab)),
    };
    tab.settle(usage, source, status.as_u16()).await;
    let mut r = (status, client).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Reads a body with an idle timeout between chunks and a size cap.
pub async fn read_limited(
    resp: upstream::Response,
    idle: std::time::Duration,
    max: usize,
) -> Result<Bytes, RelayError> {
    let mut s = std::pin::pin!(upstream::body_stream(resp));
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, s.next()).await {
            Err(_) => {
                return Err(RelayError::new(
                    Kind::Timeout,
                    "upstream_timeout",
                    "the upstream stopped sending its response",
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(RelayError::new(
                    Kind::Upstream,
                    "upstream_read_failed",
                    format!("reading the upstream response failed: {e}"),
                ));
            }
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > max {
                    return Err(RelayError::new(
                        Kind::Upstream,
                        "upstream_response_too_large",
                        "the upstream response is too large",
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::PAYMENT_REQUIRED
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

fn upstream_timeout(ch: &ChannelRt) -> RelayError {
    RelayError::new(
        Kind::Timeout,
        "upstream_timeout",
        format!("channel #{} did not answer in time", ch.id),
    )
}

fn upstream_unreachable(ch: &ChannelRt, e: &UpstreamError) -> RelayError {
    let what = match e {
        UpstreamError::Connect(_) => "could not connect",
        _ => "request failed",
    };
    RelayError::new(
        Kind::Upstream,
        "upstream_unreachable",
        format!("channel #{}: {what}", ch.id),
    )
}

/// The upstream's own message, if its body has one.
fn upstream_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.get("error"))?;
    Some(match m {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Maps an upstream failure to what the client sees. Upstreams quote the
/// key they were given in some errors ("Incorrect API key provided: …"):
/// the channel's keys, and anything shaped like a key, are masked first.
fn upstream_error(status: StatusCode, body: &[u8], ch: &ChannelRt) -> RelayError {
    let detail = upstream_message(body)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let detail = crate::auth::keys::redact(&detail, &ch.keys);
    let msg = format!("upstream error {}: {detail}", status.as_u16());
    match status.as_u16() {
        429 => {
            let mut e = RelayError::new(Kind::RateLimited, "upstream_rate_limited", msg);
            e.retry_after = Some(1);
            e
        }
        401..=403 => RelayError::new(Kind::Upstream, "upstream_auth_failed", msg),
        408 | 504 => RelayError::new(Kind::Timeout, "upstream_timeout", msg),
        s if s >= 500 => RelayError::new(Kind::Upstream, "bad_response_status_code", msg),
        404 => {
            let mut e = RelayError::new(Kind::NotFound, "upstream_not_found", msg);
            e.status = Some(status);
            e
        }
        _ => {
            let mut e = RelayError::new(Kind::InvalidRequest, "upstream_invalid_request", msg);
            e.status = Some(status);
            e
        }
    }
}

/// Auto-disables a channel whose key is refused or out of credit, when the
/// option is on (SPEC §5). Runs in the background.
fn maybe_auto_disable(state: &SharedState, ch: &ChannelRt, status: StatusCode, body: &[u8]) {
    if !state.options().auto_disable_channel || !ch.auto_ban {
        return;
    }
    let out_of_credit = memchr::memmem::find(body, b"insufficient_quota").is_some()
        || memchr::memmem::find(body, b"insufficient quota").is_some();
    let key_refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if !(key_refused || out_of_credit) {
        return;
    }
    let reason = format!(
        "channel #{} ({}) auto-disabled: upstream answered {}{}",
        ch.id,
        ch.name,
        status.as_u16(),
        if out_of_credit {
            " (insufficient quota)"
        } else {
            ""
        }
    );
    let id = ch.id;
    let st = state.clone();
    state.tracker.spawn(async move {
        match st
            .store
            .set_channel_status(id, channel_status::AUTO_DISABLED)
            .await
        {
            Ok(true) => {
                tracing::warn!("{reason}");
                crate::api::channel::reload_routing(&st).await;
                st.ledger
                    .record(Entry::Log(Box::new(NewLog {
                        created_at: now(),
                        log_type: log_type::SYSTEM,
                        content: reason,
                        channel_id: id,
                        other: "{}".into(),
                        ..Default::default()
                    })))
                    .await;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, channel = id, "auto-disable failed"),
        }
    });
}

/// An error row (type 5) for a call that failed after routing.
async fn log_failure(state: &SharedState, call: &Call, tab: &Tab, err: &RelayError) {
    state.metrics.relay_failed.increment(1);
    let t = &call.caller.token.token;
    let other = serde_json::json!({
        "request_id": call.request_id,
        "client": call.client,
        "request_path": call.path,
        "http_status": err.status().as_u16(),
        "dialect": call.dialect_name,
        "error_code": err.code,
        "tried_channels": tab.tried,
    });
    state
        .ledger
        .record(Entry::Log(Box::new(NewLog {
            created_at: now(),
            log_type: log_type::ERROR,
            content: err.message.clone(),
            user_id: call.caller.user.id,
            username: call.caller.user.username.clone(),
            token_id: t.id,
            token_name: t.name.clone(),
            model_name: call.model.clone(),
            channel_id: tab.tried.last().copied().unwrap_or(0),
            is_stream: call.stream,
            ip: crate::util::ip_text(call.caller.ip),
            group: call.caller.group.clone(),
            request_id: call.request_id.clone(),
            other: other.to_string(),
            ..Default::default()
        })))
        .await;
}
