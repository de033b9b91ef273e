//! Change notices: every management write that the relay must obey (a token,
//! a user, a channel, an option) goes through [`changed`], which applies it
//! to this replica at once and, with Redis, publishes it to every other
//! replica (one pub/sub channel; a message names the entity and its id).
//! A replica whose subscription broke resynchronises everything when it is
//! back, so a missed message cannot leave it stale; cache TTLs are the last
//! safety net.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::options::Options;
use crate::routing::Snapshot;
use crate::state::{AppState, SharedState};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A token (its id and the hex lookup hash of its key).
    Token { id: i64, key_hash: String },
    /// A user (quota, status, role, deletion).
    User(i64),
    /// Any channel.
    Channels,
    /// Any option.
    Options,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Token { id, key_hash } => format!("t {id} {key_hash}"),
            Change::User(id) => format!("u {id}"),
            Change::Channels => "c".into(),
            Change::Options => "o".into(),
        }
    }

    fn decode(s: &str) -> Option<Change> {
        let mut p = s.split(' ');
        Some(match p.next()? {
            "t" => Change::Token {
                id: p.next()?.parse().ok()?,
                key_hash: p.next()?.to_string(),
            },
            "u" => Change::User(p.next()?.parse().ok()?),
            "c" => Change::Channels,
            "o" => Change::Options,
            _ => return None,
        })
    }
}

/// Applies a change here and tells the other replicas. Returns once this
/// replica obeys it.
pub async fn changed(state: &AppState, c: Change) {
    apply(state, &c).await;
    // Balances: the local bank re-reads the database; the shared (Redis) one
    // forgets the account once, here, and every replica reseeds it.
    let reloaded = match &c {
        Change::Token { id, .. } => state.bank.reload_token(&state.store, *id).await,
        Change::User(id) => state.bank.reload_user(&state.store, *id).await,
        _ => Ok(()),
    };
    if let Err(e) = reloaded {
        tracing::warn!(error = %e, "could not reload a balance after a change");
    }
    if let Some(r) = &state.redis {
        let msg = c.encode();
        if publish(r, &msg).await.is_err() {
            // Redis is away: keep trying for a while (other replicas resync
            // when their own subscription comes back, and reload every
            // RESYNC_EVERY anyway).
            let r = r.clone();
            state.tracker.spawn(async move {
                let mut delay = Duration::from_millis(100);
                for _ in 0..20 {
                    tokio::time::sleep(delay).await;
                    if publish(&r, &msg).await.is_ok() {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                tracing::warn!(
                    "could not publish a change; other replicas rely on cache TTLs and resyncs"
                );
            });
        }
    }
}

async fn publish(r: &crate::cache::redis::Redis, msg: &str) -> redis::RedisResult<i64> {
    let mut conn = r.conn.clone();
    redis::cmd("PUBLISH")
        .arg(r.key("changes"))
        .arg(msg)
        .query_async(&mut conn)
        .await
}

/// How often a replica with Redis reloads channels and options regardless
/// of messages: the bound on staleness should a message be lost.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Makes this replica obey a change.
async fn apply(state: &AppState, c: &Change) {
    match c {
        Change::Token { key_hash, .. } => state.caches.invalidate_token(key_hash).await,
        Change::User(id) => state.caches.invalidate_user(*id).await,
        Change::Channels => reload_routing(state).await,
        Change::Options => reload_options(state).await,
    }
}

/// Rebuilds the routing snapshot from the database and swaps it in.
pub async fn reload_routing(state: &AppState) {
    match state.store.all_channels().await {
        Ok(chans) => state
            .routing
            .store(Arc::new(Snapshot::build(&chans, &state.secrets))),
        Err(e) => tracing::error!(error = %e, "could not reload channels"),
    }
}

/// Rebuilds the options snapshot from the database and swaps it in.
pub async fn reload_options(state: &AppState) {
    match state.store.load_options().await {
        Ok(stored) => state.options.store(Arc::new(Options::from_stored(stored))),
        Err(e) => tracing::error!(error = %e, "could not reload options"),
    }
}

/// Everything a replica may have missed: caches dropped, snapshots rebuilt.
async fn resync(state: &AppState) {
    state.caches.clear();
    reload_routing(state).await;
    reload_options(state).await;
}

/// Listens for other replicas' changes until `stop`. Reconnects after a
/// failure and resynchronises, since messages sent meanwhile are lost.
pub async fn subscribe(state: SharedState, stop: CancellationToken) {
    let Some(redis) = state.redis.clone() else {
        return;
    };
    let channel = redis.key("changes");
    let mut first = true;
    while !stop.is_cancelled() {
        match redis.client.get_async_pubsub().await {
            Ok(mut ps) => {
                if ps.subscribe(&channel).await.is_ok() {
                    if !first {
                        resync(&state).await;
                    }
                    first = false;
                    let mut msgs = ps.on_message();
                    let mut resync_tick = tokio::time::interval(RESYNC_EVERY);
                    resync_tick.tick().await;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = resync_tick.tick() => {
                                reload_routing(&state).await;
                                reload_options(&state).await;
                            }
                            m = msgs.next() => match m {
                                Some(m) => {
                                    if let Ok(text) = m.get_payload::<String>()
                                        && let Some(c) = Change::decode(&text)
                                    {
                                        apply(&state, &c).await;
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                }
                tracing::warn!("change subscription lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to changes; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for c in [
            Change::Token {
                id: 7,
                key_hash: "ab12".into(),
            },
            Change::User(3),
            Change::Channels,
            Change::Options,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("x"), None);
        assert_eq!(Change::decode("u notanumber"), None);
    }
}
