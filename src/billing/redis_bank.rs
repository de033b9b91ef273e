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
//!
//! What each replica holds is written down, so a replica that dies cannot
//! leave quota held for good: every replica keeps a lease (a key with a TTL
//! it renews) and a `held` hash of what it added to `pending`, per account and
//! generation. When a lease expires, another replica sweeps the dead one's
//! hash: it takes its holds out of `pending` and leaves a tombstone, so late
//! moves of the swept holder (it was only cut off, not dead) change nothing;
//! such a replica moves on to a new epoch with a fresh hash.
//!
//! Moves Redis cannot take (it is unreachable) are queued and replayed when
//! it is back. The one gap: a replica killed between its database commit and
//! the matching Redis move leaves `db` too high by that batch until the
//! account is next reseeded (keys expire after an idle hour).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use tokio_util::sync::CancellationToken;

use super::bank::{BankError, Hold, Refusal};
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

/// KEYS: user, token, this holder's hash, its tombstone. ARGV: amount, ttl,
/// has token ('1'). Returns {status, token gen, user gen}: 1 ok, -1 token
/// short, -2 user short, -3 token missing, -4 user missing, -5 holder swept.
const RESERVE: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {-5, 0, 0} end
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
redis.call('HINCRBY', KEYS[3], KEYS[1] .. '|' .. ug, amount)
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[2], 'pending', amount)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[3], KEYS[2] .. '|' .. tg, amount)
end
return {1, tg, ug}
";

/// KEYS: account, holder hash, holder tombstone. ARGV: gen, delta.
/// pending += delta if the generation is still ARGV[1], unless the holder
/// was swept (its holds were released already).
const ADJUST: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local f = KEYS[1] .. '|' .. ARGV[1]
if redis.call('HINCRBY', KEYS[2], f, ARGV[2]) == 0 then redis.call('HDEL', KEYS[2], f) end
if tonumber(redis.call('HGET', KEYS[1], 'gen')) == tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'pending', ARGV[2])
end
return 1
";

/// KEYS: account, holder hash, holder tombstone. ARGV: gen, amount, replay.
/// After a database commit of the amount: db -= it; pending -= it if the
/// generation is still ARGV[1] and the holder was not swept. A replay
/// (ARGV[3] == '1': Redis was away when the commit happened) of an older
/// generation does nothing: that account was reseeded after the commit.
const COMMIT: &str = r"
local swept = redis.call('EXISTS', KEYS[3]) == 1
if not swept then
  local f = KEYS[1] .. '|' .. ARGV[1]
  if redis.call('HINCRBY', KEYS[2], f, -tonumber(ARGV[2])) == 0 then redis.call('HDEL', KEYS[2], f) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local same = tonumber(redis.call('HGET', KEYS[1], 'gen')) == tonumber(ARGV[1])
  if same or ARGV[3] ~= '1' then
    redis.call('HINCRBY', KEYS[1], 'db', -tonumber(ARGV[2]))
  end
  if same and not swept then
    redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(ARGV[2]))
  end
end
return 1
";

/// KEYS: a holder's hash, its lease, its tombstone. Unless the lease is
/// alive: releases every hold it lists from `pending`, deletes the hash,
/// leaves the tombstone. Returns the holds released (-1: alive).
const SWEEP: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  local k, g = string.match(h[i], '^(.*)|(%d+)$')
  if k and tonumber(redis.call('HGET', k, 'gen')) == tonumber(g) then
    redis.call('HINCRBY', k, 'pending', -tonumber(h[i + 1]))
  end
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], 1, 'EX', 86400)
return #h / 2
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
    sweep: Script,
    /// This replica's holder id.
    holder: String,
    /// Bumped when this holder finds itself swept.
    epoch: AtomicU64,
    lease: Duration,
    /// Moves Redis did not take (it was unreachable), replayed once it is
    /// back; without them a reservation would stay held.
    redo: Mutex<VecDeque<Redo>>,
}

/// A balance move to replay.
#[derive(Debug, Clone, Copy)]
enum Redo {
    Adjust(Acct, Hold, i64),
    Commit(Acct, Hold, i64),
    Forget(Acct),
}

/// Most moves kept for replay (each is a few bytes); beyond, the oldest are
/// dropped and their accounts heal when next reseeded.
const MAX_REDO: usize = 1_000_000;

fn unavailable(e: redis::RedisError) -> BankError {
    BankError::Unavailable(e.to_string())
}

impl RedisBank {
    /// A bank on `redis`; this replica's holds are leased for `lease`.
    pub fn new(redis: Redis, lease: Duration) -> RedisBank {
        RedisBank(std::sync::Arc::new(Inner {
            redis,
            seed: Script::new(SEED),
            reserve: Script::new(RESERVE),
            adjust: Script::new(ADJUST),
            commit: Script::new(COMMIT),
            sweep: Script::new(SWEEP),
            holder: crate::auth::keys::random_alnum(12),
            epoch: AtomicU64::new(0),
            lease: lease.max(Duration::from_millis(500)),
            redo: Mutex::new(VecDeque::new()),
        }))
    }

    fn key(&self, a: Acct) -> String {
        match a {
            Acct::Token(id) => self.0.redis.key(&format!("bal:t:{id}")),
            Acct::User(id) => self.0.redis.key(&format!("bal:u:{id}")),
        }
    }

    fn held_key(&self, holder: &str, epoch: u64) -> String {
        self.0.redis.key(&format!("held:{holder}:{epoch}"))
    }

    fn tomb_key(&self, holder: &str, epoch: u64) -> String {
        self.0.redis.key(&format!("swept:{holder}:{epoch}"))
    }

    fn lease_key(&self, holder: &str) -> String {
        self.0.redis.key(&format!("lease:{holder}"))
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
    /// Returns the holds (token, user).
    pub async fn reserve(
        &self,
        store: &Store,
        token: Option<i64>,
        user: i64,
        amount: i64,
    ) -> Result<(Hold, Hold), BankError> {
        let mut conn = self.0.redis.conn.clone();
        let tkey = token.map(|t| self.key(Acct::Token(t))).unwrap_or_default();
        for _ in 0..4 {
            let epoch = self.0.epoch.load(Ordering::Acquire);
            let (status, tg, ug): (i64, u64, u64) = self
                .0
                .reserve
                .key(self.key(Acct::User(user)))
                .key(&tkey)
                .key(self.held_key(&self.0.holder, epoch))
                .key(self.tomb_key(&self.0.holder, epoch))
                .arg(amount)
                .arg(ACCOUNT_TTL_SECS)
                .arg(if token.is_some() { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match status {
                1 => {
                    return Ok((
                        Hold {
                            generation: tg,
                            epoch,
                        },
                        Hold {
                            generation: ug,
                            epoch,
                        },
                    ));
                }
                -1 => return Err(Refusal::Token.into()),
                -2 => return Err(Refusal::User.into()),
                -3 => {
                    if let Some(t) = token {
                        self.seed_from(store, Acct::Token(t)).await?;
                    }
                }
                -4 => self.seed_from(store, Acct::User(user)).await?,
                _ => self.next_epoch(epoch),
            }
        }
        Err(BankError::Unavailable(
            "accounts could not be seeded".into(),
        ))
    }

    /// This holder was swept in `seen`: hold under a fresh epoch from now on.
    fn next_epoch(&self, seen: u64) {
        if self
            .0
            .epoch
            .compare_exchange(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                epoch = seen + 1,
                "this replica's lease had expired and its holds were released; holding under a new epoch"
            );
        }
    }

    /// `pending += delta` for a hold. If Redis cannot take it now, it is
    /// replayed later.
    pub async fn adjust(&self, a: Acct, hold: Hold, delta: i64) {
        if delta != 0 && self.run(Redo::Adjust(a, hold, delta), false).await.is_err() {
            self.later(Redo::Adjust(a, hold, delta));
        }
    }

    /// After the ledger committed `amount` for a hold. If Redis cannot take
    /// it now, it is replayed later.
    pub async fn committed(&self, a: Acct, hold: Hold, amount: i64) {
        if amount != 0
            && self
                .run(Redo::Commit(a, hold, amount), false)
                .await
                .is_err()
        {
            self.later(Redo::Commit(a, hold, amount));
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
        let holder = &self.0.holder;
        let res = match op {
            Redo::Adjust(a, h, delta) => {
                self.0
                    .adjust
                    .key(self.key(a))
                    .key(self.held_key(holder, h.epoch))
                    .key(self.tomb_key(holder, h.epoch))
                    .arg(h.generation)
                    .arg(delta)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
            Redo::Commit(a, h, amount) => {
                self.0
                    .commit
                    .key(self.key(a))
                    .key(self.held_key(holder, h.epoch))
                    .key(self.tomb_key(holder, h.epoch))
                    .arg(h.generation)
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

    /// Renews this replica's lease; moves to a new epoch if it was swept.
    pub async fn renew(&self) -> Result<(), BankError> {
        let mut conn = self.0.redis.conn.clone();
        let epoch = self.0.epoch.load(Ordering::Acquire);
        let (_, swept): ((), bool) = redis::pipe()
            .cmd("SET")
            .arg(self.lease_key(&self.0.holder))
            .arg(epoch)
            .arg("PX")
            .arg(self.0.lease.as_millis() as u64)
            .cmd("EXISTS")
            .arg(self.tomb_key(&self.0.holder, epoch))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if swept {
            self.next_epoch(epoch);
        }
        Ok(())
    }

    /// Releases the holds of every holder whose lease expired. Returns how
    /// many holds were released.
    pub async fn sweep(&self) -> Result<i64, BankError> {
        let mut conn = self.0.redis.conn.clone();
        let pattern = self.0.redis.key("held:*");
        let prefix = self.0.redis.key("held:");
        let mut cursor: u64 = 0;
        let mut released = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for k in keys {
                let Some((holder, epoch)) = k
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.rsplit_once(':'))
                    .and_then(|(h, e)| Some((h.to_string(), e.parse::<u64>().ok()?)))
                else {
                    continue;
                };
                if holder == self.0.holder {
                    continue;
                }
                let n: i64 = self
                    .0
                    .sweep
                    .key(&k)
                    .key(self.lease_key(&holder))
                    .key(self.tomb_key(&holder, epoch))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                if n >= 0 {
                    tracing::warn!(
                        holder,
                        holds = n,
                        "released the holds of a replica whose lease expired"
                    );
                    released += n;
                }
            }
            if next == 0 {
                return Ok(released);
            }
            cursor = next;
        }
    }

    /// Until `stop`: renews the lease, replays queued moves, and now and
    /// then sweeps the holds of replicas that died.
    pub async fn heal(self, stop: CancellationToken) {
        let tick = (self.0.lease / 6).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut n: u64 = 0;
        loop {
            if let Err(e) = self.renew().await {
                tracing::debug!(error = %e, "lease not renewed");
            }
            if self.pending_replays() > 0 && self.replay().await {
                tracing::info!("redis back: queued balance moves replayed");
            }
            if n.is_multiple_of(3)
                && let Err(e) = self.sweep().await
            {
                tracing::debug!(error = %e, "sweep failed");
            }
            n += 1;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// At shutdown: replays what is queued (trying for up to `patience`),
    /// then gives up the lease. Holds still listed (none after a clean
    /// drain) are released by the next sweep of another replica.
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
        let mut conn = self.0.redis.conn.clone();
        let epoch = self.0.epoch.load(Ordering::Acquire);
        let held = self.held_key(&self.0.holder, epoch);
        let left: redis::RedisResult<i64> =
            redis::cmd("HLEN").arg(&held).query_async(&mut conn).await;
        if let Ok(0) = left {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(&held).query_async(&mut conn).await;
        }
        let _: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(self.lease_key(&self.0.holder))
            .query_async(&mut conn)
            .await;
    }
}
