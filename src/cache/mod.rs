//! In-process caches for the relay's key check: token by key hash and user by
//! id. A miss loads from the store once (moka's single-flight) and a missing key
//! is remembered briefly, so a flood of bad keys cannot reach the database.
//! Every management write to a token or user invalidates its entry; the TTL is
//! a safety net for writes this process did not see.

pub mod bus;
pub mod redis;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use moka::Expiry;
use moka::future::Cache;

use crate::auth::limits::{parse_allow_ips, parse_model_limits};
use crate::store::{Store, StoreError, Token, User};

/// A token as the relay checks it.
#[derive(Debug)]
pub struct TokenEntry {
    pub token: Token,
    pub allow_ips: Vec<IpNet>,
    /// `Some` when the model whitelist is enabled.
    pub models: Option<HashSet<String>>,
}

impl TokenEntry {
    fn new(token: Token) -> TokenEntry {
        // Stored values were validated on write; anything unparsable now is
        // treated as the strictest reading (no IP, no model allowed).
        let allow_ips = match parse_allow_ips(&token.allow_ips) {
            Ok(v) => v,
            Err(_) => vec![IpNet::from(std::net::IpAddr::from([0, 0, 0, 0])).trunc()],
        };
        let models = token.model_limits_enabled.then(|| {
            parse_model_limits(&token.model_limits)
                .unwrap_or_default()
                .into_iter()
                .collect()
        });
        TokenEntry {
            token,
            allow_ips,
            models,
        }
    }
}

/// How long an entry lives without invalidation.
#[derive(Debug, Clone, Copy)]
pub struct CacheTtl {
    pub positive: Duration,
    pub negative: Duration,
}

impl Default for CacheTtl {
    fn default() -> Self {
        CacheTtl {
            positive: Duration::from_secs(60),
            negative: Duration::from_secs(5),
        }
    }
}

struct Ttl(CacheTtl);

impl Expiry<[u8; 32], Option<Arc<TokenEntry>>> for Ttl {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Option<Arc<TokenEntry>>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(if value.is_some() {
            self.0.positive
        } else {
            self.0.negative
        })
    }
}

/// The relay's caches.
pub struct Caches {
    // foldhash rather than SipHash: the keys are ids and SHA-256 outputs a
    // client cannot steer, and the seed is random per process.
    tokens: Cache<[u8; 32], Option<Arc<TokenEntry>>, foldhash::fast::RandomState>,
    users: Cache<i64, Arc<User>, foldhash::fast::RandomState>,
}

impl Caches {
    /// Empty caches with the given lifetimes.
    pub fn new(ttl: CacheTtl) -> Caches {
        Caches {
            tokens: Cache::builder()
                .max_capacity(200_000)
                .expire_after(Ttl(ttl))
                .build_with_hasher(Default::default()),
            users: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl.positive)
                .build_with_hasher(Default::default()),
        }
    }

    /// The token whose key body hashes to `hash`, or `None` if there is none.
    pub async fn token(
        &self,
        store: &Store,
        hash: [u8; 32],
    ) -> Result<Option<Arc<TokenEntry>>, StoreError> {
        self.tokens
            .try_get_with(hash, async move {
                match store.token_by_key_hash(&hex::encode(hash)).await {
                    Ok(t) => Ok(Some(Arc::new(TokenEntry::new(t)))),
                    Err(StoreError::NotFound) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| StoreError::Db(sqlx::Error::Protocol(e.to_string())))
    }

    /// A user by id, or `None` if deleted.
    pub async fn user(&self, store: &Store, id: i64) -> Result<Option<Arc<User>>, StoreError> {
        if let Some(u) = self.users.get(&id).await {
            return Ok(Some(u));
        }
        match store.user_by_id(id).await {
            Ok(u) => {
                let u = Arc::new(u);
                self.users.insert(id, u.clone()).await;
                Ok(Some(u))
            }
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Drops a token (by the hex hash stored with it).
    pub async fn invalidate_token(&self, key_hash_hex: &str) {
        if let Ok(bytes) = hex::decode(key_hash_hex)
            && let Ok(h) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            self.tokens.invalidate(&h).await;
        }
    }

    /// Drops a user.
    pub async fn invalidate_user(&self, id: i64) {
        self.users.invalidate(&id).await;
    }

    /// Drops everything (used when a replica may have missed invalidations).
    pub fn clear(&self) {
        self.tokens.invalidate_all();
        self.users.invalidate_all();
    }
}
