//! The key check (SPEC §7), in the spec's order, each failure with its own
//! error: key exists; token enabled; not expired; quota left; client IP
//! allowed; model allowed; user enabled with quota; a channel exists.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::request::Parts;

use super::error::{RelayError, errors};
use crate::auth::{keys, limits, role};
use crate::cache::TokenEntry;
use crate::ledger::Entry;
use crate::state::AppState;
use crate::store::{User, now, token_status, user_status};
use crate::util::client_ip;

/// An authenticated relay caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: Arc<TokenEntry>,
    pub user: Arc<User>,
    /// The group the call is routed and priced in.
    pub group: String,
    pub ip: IpAddr,
    /// `sk-<key>-<channel id>`: a channel pinned by an admin.
    pub pinned: Option<i64>,
}

/// The API key as sent, from whichever header or parameter carries it.
pub fn raw_key(parts: &Parts) -> Option<&str> {
    let h = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(v) = h("authorization") {
        let v = match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => v,
        };
        if !v.is_empty() {
            return Some(v);
        }
    }
    if let Some(v) = h("x-api-key").or_else(|| h("x-goog-api-key")) {
        return Some(v);
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "key")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    })
}

/// Checks the key, token, IP and user (everything but the model, which
/// needs the body, and the channel, which needs the model). `peer` is the
/// TCP peer ([`super::Origin`]); the client's address is read from the
/// forwarding headers only when the peer is a trusted proxy.
pub async fn admit(state: &AppState, parts: &Parts, peer: IpAddr) -> Result<Caller, RelayError> {
    let raw = raw_key(parts).ok_or_else(errors::missing_key)?;
    let (body, pin) = keys::parse_api_key(raw);
    if body.is_empty() || body.len() > 128 {
        return Err(errors::invalid_key());
    }
    let entry = state
        .caches
        .token(&state.store, keys::lookup_hash_bytes(body))
        .await
        .map_err(|e| errors::internal(format!("key lookup failed: {e}")))?
        .ok_or_else(errors::invalid_key)?;
    let t = &entry.token;
    // SPEC §7 order: enabled, then not expired, then quota left — so an
    // exhausted token past its expiry reports the expiry.
    match t.status {
        token_status::ENABLED | token_status::EXHAUSTED => {}
        token_status::EXPIRED => return Err(errors::token_expired()),
        _ => return Err(errors::token_disabled()),
    }
    if t.expired_time != -1 && t.expired_time < now() {
        state
            .ledger
            .record(Entry::TokenStatus {
                id: t.id,
                status: token_status::EXPIRED,
            })
            .await;
        state.caches.invalidate_token(&t.key_hash).await;
        return Err(errors::token_expired());
    }
    if t.status == token_status::EXHAUSTED {
        return Err(errors::token_exhausted());
    }
    if !t.unlimited_quota {
        let left = state
            .bank
            .token_available(&state.store, t.id)
            .await
            .map_err(errors::bank)?;
        if left <= 0 {
            return Err(errors::token_exhausted());
        }
    }
    let ip = client_ip(peer, &parts.headers, &state.config.trusted_proxies);
    if !limits::ip_allowed(&entry.allow_ips, ip) {
        return Err(errors::ip_not_allowed(&ip.to_string()));
    }
    let user = state
        .caches
        .user(&state.store, t.user_id)
        .await
        .map_err(|e| errors::internal(format!("user lookup failed: {e}")))?
        .ok_or_else(errors::invalid_key)?;
    let pinned = match pin {
        Some(p) => {
            if user.role < role::ADMIN {
                return Err(errors::pin_forbidden());
            }
            Some(p.parse::<i64>().map_err(|_| errors::invalid_key())?)
        }
        None => None,
    };
    let group = if t.group.is_empty() {
        user.group.clone()
    } else {
        t.group.clone()
    };
    Ok(Caller {
        token: entry,
        user,
        group,
        ip,
        pinned,
    })
}

/// The model check and the user check, which come after the body is read.
pub async fn admit_model(state: &AppState, c: &Caller, model: &str) -> Result<(), RelayError> {
    if let Some(allowed) = &c.token.models
        && !allowed.contains(model)
    {
        return Err(errors::model_not_allowed(model));
    }
    if c.user.status != user_status::ENABLED {
        return Err(errors::user_disabled());
    }
    let left = state
        .bank
        .user_available(&state.store, c.user.id)
        .await
        .map_err(errors::bank)?;
    if left <= 0 {
        return Err(errors::user_quota());
    }
    if !c.token.token.group.is_empty()
        && !state
            .options()
            .group_selectable(&c.user.group, &c.token.token.group)
    {
        return Err(errors::group_forbidden(&c.token.token.group));
    }
    Ok(())
}
