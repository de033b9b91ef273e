//! The quota bank on Redis, for several replicas (SPEC §6, DESIGN "Many
//! replicas"). Each account is a hash `{db, pending, gen}`:
//! - `db`: the balance as committed to the database,
//! - `pending`: reservations in flight plus settled charges not yet committed,
//! - `gen`: a generation, new each time the account is (re)seeded.
//!
//! `available = db − pending`. Reserve is a Lua check-and-add on both the
//! token and the user, atomic across replicas. Settling replaces the
//! reservation by the charge in `pending`; the ledger writer, after its
//! database commit, moves the charge from `pending` to `db`.
//!
//! A missing account (first use, Redis restarted, or an admin changed the
//! balance: the key is deleted) is seeded from the database with a new
//! generation. Adjustments carrying an older generation touch `db` only, so a
//! reseed can never leak or double a reservation; until the calls in flight at
//! a reseed are flushed, the account may show up to their charges too much.
//! Keys expire after an idle hour, so any drift (a replica killed between its
//! database commit and its Redis update) is bounded in time.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use tokio_util::sync::CancellationToken;

use super::bank::{BankError, Refusal};
use crate::cache::redis::Redis;
use crate::store::{Store, StoreError};

/// Idle lifetime of an account in Redis.
pub const ACCOUNT_TTL_SECS: u64 = 3600;

const SEED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local g = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'db', ARGV[1], 'pending', 0, 'gen', g)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: user, token (when ARGV[3] == '1'). ARGV: amount, ttl, has token.
/// Returns {status, token gen, user gen}: 1 ok, -1 token short, -2 user
/// short, -3 token missing, -4 user missing.
const RESERVE: &str = r"
local function acct(k)
  local v = redis.call('HMGET', k, 'db', 'pending', 'gen')
  if not v[1] then return nil end
  return tonumber(v[1]) - tonumber(v[2]), tonumber(v[3])
end
local amount = tonumber(ARGV[1])
local ta, tg = 0, 0
if ARGV[3] == '1' then
  ta, tg = acct(KEYS[2])
  if not ta then return {-3, 0, 0} end
end
local ua, ug = acct(KEYS[1])
if not ua then return {-4, 0, 0} end
if ARGV[3] == '1' and (ta < amount or ta <= 0) then return {-1, 0, 0} end
if ua < amount or ua <= 0 then return {-2, 0, 0} end
redis.call('HINCRBY', KEYS[1], 'pending', amount)
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[2], 'pending', amount)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {1, tg, ug}
";

/// pending += ARGV[2] if the generation is still ARGV[1].
const ADJUST: &str = r"
if tonumber(redis.call('HGET', KEYS[1], 'gen')) == tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'pending', ARGV[2])
end
return 1
";

/// After a database commit of ARGV[2]: db -= it; pending -= it if the
/// generation is still ARGV[1]. A replay (ARGV[3] == '1', Redis was away
/// when the commit happened) of an older generation does nothing: that
/// account was reseeded after the database commit, which it includes.
const COMMIT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local same = tonumber(redis.call('HGET', KEYS[1], 'gen')) == tonumber(ARGV[1])
  if same or ARGV[3] ~= '1' then
    redis.call('HINCRBY', KEYS[1], 'db', -tonumber(ARGV[2]))
  end
  if same then
    redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(ARGV[2]))
  end
end
return 1
";

/// An account's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acct {
    Token(i64),
    User(i64),
}

/// The Redis bank; cheap to clone (every reservation holds one).
#[derive(Clone)]
pub struct RedisBank(std::sync::Arc<Inner>);

struct Inner {
    redis: Redis,
    seed: Script,
    reserve: Script,
    adjust: Script,
    commit: Script,
    /// Moves Redis did not take (it was unreachable), replayed once it is
    /// back; without them a reservation would stay held for good.
    redo: Mutex<VecDeque<Redo>>,
}

/// A balance move to replay.
#[derive(Debug, Clone, Copy)]
enum Redo {
    Adjust(Acct, u64, i64),
    Commit(Acct, u64, i64),
    Forget(Acct),
}

/// Most moves kept for replay (each is a few bytes); beyond, the oldest are
/// dropped and their accounts heal when next reseeded.
const MAX_REDO: usize = 1_000_000;

fn unavailable(e: redis::RedisError) -> BankError {
    BankError::Unavailable(e.to_string())
}

impl RedisBank {
    /// A bank on `redis`.
    pub fn new(redis: Redis) -> RedisBank {
        RedisBank(std::sync::Arc::new(Inner {
            redis,
            seed: Script::new(SEED),
            reserve: Script::new(RESERVE),
            adjust: Script::new(ADJUST),
            commit: Script::new(COMMIT),
            redo: Mutex::new(VecDeque::new()),
        }))
    }

    fn key(&self, a: Acct) -> String {
        match a {
            Acct::Token(id) => self.0.redis.key(&format!("bal:t:{id}")),
            Acct::User(id) => self.0.redis.key(&format!("bal:u:{id}")),
        }
    }

    async fn seed_from(&self, store: &Store, a: Acct) -> Result<(), BankError> {
        let db = match a {
            Acct::Token(id) => store.token_remain(id).await,
            Acct::User(id) => store.user_quota(id).await,
        };
        let db = match db {
            Ok(v) => v,
            Err(StoreError::NotFound) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut conn = self.0.redis.conn.clone();
        self.0
            .seed
            .key(self.key(a))
            .key(self.0.redis.key("bal:gen"))
            .arg(db)
            .arg(ACCOUNT_TTL_SECS)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// An account's available quota (seeding it if needed).
    pub async fn available(&self, store: &Store, a: Acct) -> Result<i64, BankError> {
        let mut conn = self.0.redis.conn.clone();
        for _ in 0..2 {
            let v: (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                .arg(self.key(a))
                .arg("db")
                .arg("pending")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if let (Some(db), Some(pending)) = v {
                return Ok(db - pending);
            }
            self.seed_from(store, a).await?;
        }
        Err(BankError::Unavailable("account could not be seeded".into()))
    }

    /// Holds `amount` on the token (if limited) and the user, atomically.
    /// Returns the accounts' generations.
    pub async fn reserve(
        &self,
        store: &Store,
        token: Option<i64>,
        user: i64,
        amount: i64,
    ) -> Result<(u64, u64), BankError> {
        let mut conn = self.0.redis.conn.clone();
        let tkey = token.map(|t| self.key(Acct::Token(t))).unwrap_or_default();
        for _ in 0..3 {
            let (status, tg, ug): (i64, u64, u64) = self
                .0
                .reserve
                .key(self.key(Acct::User(user)))
                .key(&tkey)
                .arg(amount)
                .arg(ACCOUNT_TTL_SECS)
                .arg(if token.is_some() { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match status {
                1 => return Ok((tg, ug)),
                -1 => return Err(Refusal::Token.into()),
                -2 => return Err(Refusal::User.into()),
                -3 => {
                    if let Some(t) = token {
                        self.seed_from(store, Acct::Token(t)).await?;
                    }
                }
                _ => self.seed_from(store, Acct::User(user)).await?,
            }
        }
        Err(BankError::Unavailable(
            "accounts could not be seeded".into(),
        ))
    }

    /// `pending += delta` on an account of generation `gen`. If Redis cannot
    /// take it now, it is replayed later.
    pub async fn adjust(&self, a: Acct, gen_: u64, delta: i64) {
        if delta != 0 && self.run(Redo::Adjust(a, gen_, delta), false).await.is_err() {
            self.later(Redo::Adjust(a, gen_, delta));
        }
    }

    /// After the ledger committed `amount` for an account of generation
    /// `gen`. If Redis cannot take it now, it is replayed later.
    pub async fn committed(&self, a: Acct, gen_: u64, amount: i64) {
        if amount != 0
            && self
                .run(Redo::Commit(a, gen_, amount), false)
                .await
                .is_err()
        {
            self.later(Redo::Commit(a, gen_, amount));
        }
    }

    /// Forgets an account (an admin changed its balance): the next use
    /// reseeds it from the database. If Redis cannot take it now, it is
    /// replayed later.
    pub async fn forget(&self, a: Acct) {
        if self.run(Redo::Forget(a), false).await.is_err() {
            self.later(Redo::Forget(a));
        }
    }

    async fn run(&self, op: Redo, replay: bool) -> Result<(), BankError> {
        let mut conn = self.0.redis.conn.clone();
        let res = match op {
            Redo::Adjust(a, g, delta) => {
                self.0
                    .adjust
                    .key(self.key(a))
                    .arg(g)
                    .arg(delta)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
            Redo::Commit(a, g, amount) => {
                self.0
                    .commit
                    .key(self.key(a))
                    .arg(g)
                    .arg(amount)
                    .arg(if replay { "1" } else { "0" })
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
            Redo::Forget(a) => {
                redis::cmd("DEL")
                    .arg(self.key(a))
                    .query_async::<i64>(&mut conn)
                    .await
            }
        };
        res.map(|_| ()).map_err(unavailable)
    }

    fn later(&self, op: Redo) {
        let mut q = self.0.redo.lock();
        if q.len() >= MAX_REDO {
            q.pop_front();
        }
        q.push_back(op);
        if q.len() == 1 || q.len().is_power_of_two() {
            tracing::warn!(
                queued = q.len(),
                "redis unreachable: balance moves queued for replay"
            );
        }
    }

    /// Moves waiting for replay.
    pub fn pending_replays(&self) -> usize {
        self.0.redo.lock().len()
    }

    /// Replays queued moves in order until one fails. Returns whether the
    /// queue is empty.
    pub async fn replay(&self) -> bool {
        loop {
            let Some(op) = self.0.redo.lock().pop_front() else {
                return true;
            };
            if self.run(op, true).await.is_err() {
                self.0.redo.lock().push_front(op);
                return false;
            }
        }
    }

    /// Replays queued moves every 200 ms until `stop`.
    pub async fn heal(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if self.pending_replays() > 0 && self.replay().await {
                tracing::info!("redis back: queued balance moves replayed");
            }
        }
    }

    /// At shutdown: tries for up to `patience` to replay what is queued.
    pub async fn drain(&self, patience: Duration) {
        let until = tokio::time::Instant::now() + patience;
        while !self.replay().await {
            if tokio::time::Instant::now() >= until {
                tracing::error!(
                    moves = self.pending_replays(),
                    "redis unreachable at shutdown: balance moves not replayed; their accounts heal when reseeded"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
