//! Rate limits: every rule about how often a key or a user may call, and the
//! counters behind them (in-process for one replica, in Redis for several).
//!
//! Rules (all off by default):
//! - per key, the token fields `rpm_limit` / `tpm_limit` (sluice's own;
//!   new-api has none): requests and tokens per minute;
//! - per user, new-api's options `ModelRequestRateLimit*`: requests per
//!   `DurationMinutes` failed ones included (`Count`), successful requests
//!   (`SuccessCount`), both overridable per group (`Group`), plus sluice's
//!   `ModelTokenRateLimitCount`: tokens per the same window.
//!
//! Counters are fixed windows that open at their first hit (so no boundary is
//! shared by every client). A call is admitted when every counter is below
//! its limit; requests are counted at admission, tokens and successes once
//! the call settled — so calls in flight may pass a token limit by what they
//! use, as with any provider's TPM. A refusal carries the time until the
//! blocking window closes (`Retry-After`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Script;

use crate::cache::redis::Redis;
use crate::config::options::Options;
use crate::relay::gate::Caller;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Requests, counted when admitted.
    Requests,
    /// Successful requests, counted after they settled.
    Successes,
    /// Tokens (prompt + completion), counted after the call settled.
    Tokens,
}

/// One limit a call is held to.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Counter name (without the deployment prefix).
    pub key: String,
    pub window: Duration,
    pub max: i64,
    pub measure: Measure,
    /// Whose limit: `"key"` or `"user"`, for the message.
    pub owner: &'static str,
}

impl Limit {
    /// The refusal message, naming the limit.
    pub fn describe(&self) -> String {
        let what = match self.measure {
            Measure::Requests if self.owner == "user" => "requests (failed ones included)",
            Measure::Requests => "requests",
            Measure::Successes => "successful requests",
            Measure::Tokens => "tokens",
        };
        let mins = self.window.as_secs() / 60;
        let per = if mins == 1 {
            "minute".to_string()
        } else {
            format!("{mins} minutes")
        };
        format!(
            "rate limit reached: this {} may use at most {} {what} per {per}",
            self.owner, self.max
        )
    }
}

/// Every limit that applies to a call by `caller` (empty when none).
pub fn plan(caller: &Caller, opts: &Options) -> Vec<Limit> {
    let mut out = Vec::new();
    let t = &caller.token.token;
    let minute = Duration::from_secs(60);
    if t.rpm_limit > 0 {
        out.push(Limit {
            key: format!("rl:k:{}:r", t.id),
            window: minute,
            max: t.rpm_limit,
            measure: Measure::Requests,
            owner: "key",
        });
    }
    if t.tpm_limit > 0 {
        out.push(Limit {
            key: format!("rl:k:{}:t", t.id),
            window: minute,
            max: t.tpm_limit,
            measure: Measure::Tokens,
            owner: "key",
        });
    }
    let r = &opts.user_rate;
    if r.enabled {
        let (total, success) = r
            .groups
            .get(&caller.group)
            .copied()
            .unwrap_or((r.total, r.success));
        let window = Duration::from_secs(60 * r.minutes.max(1) as u64);
        let uid = caller.user.id;
        for (max, measure, tag) in [
            (total, Measure::Requests, "r"),
            (success, Measure::Successes, "s"),
            (r.tokens, Measure::Tokens, "t"),
        ] {
            if max > 0 {
                out.push(Limit {
                    key: format!("rl:u:{uid}:{tag}"),
                    window,
                    max,
                    measure,
                    owner: "user",
                });
            }
        }
    }
    out
}

/// A refused call: which limit, and how long until it lets calls through.
#[derive(Debug, Clone)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after: Duration,
}

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit counters unavailable: {0}")]
pub struct Unavailable(pub String);

/// The counters.
pub enum Limiter {
    Local(Mutex<HashMap<String, Window>>),
    Redis(Box<RedisLimiter>),
}

/// One counter's open window (in-process).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    ends: Instant,
    count: i64,
}

/// Counters in Redis, shared by every replica.
pub struct RedisLimiter {
    redis: Redis,
    admit: Script,
    add: Script,
}

/// KEYS: counters. ARGV: per counter, window ms and max; then per counter,
/// 1 if the request is counted now. Returns 0 (admitted, requests counted)
/// or {index, ms until the blocking window closes}.
const ADMIT: &str = r"
local n = #KEYS
local worst, wait = 0, 0
for i = 1, n do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  if c >= tonumber(ARGV[2*i]) then
    local t = redis.call('PTTL', KEYS[i])
    if t < 0 then t = tonumber(ARGV[2*i-1]) end
    if t >= wait then worst, wait = i, t end
  end
end
if worst > 0 then return {worst, wait} end
for i = 1, n do
  if ARGV[2*n+i] == '1' then
    redis.call('INCR', KEYS[i])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2*i-1]) end
  end
end
return 0
";

/// KEYS: counters. ARGV: per counter, window ms and amount.
const ADD: &str = r"
for i = 1, #KEYS do
  local amount = tonumber(ARGV[2*i])
  if amount > 0 then
    redis.call('INCRBY', KEYS[i], amount)
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2*i-1]) end
  end
end
return 0
";

impl Limiter {
    /// In-process counters.
    pub fn local() -> Limiter {
        Limiter::Local(Mutex::new(HashMap::new()))
    }

    /// Counters in Redis.
    pub fn redis(redis: Redis) -> Limiter {
        Limiter::Redis(Box::new(RedisLimiter {
            redis,
            admit: Script::new(ADMIT),
            add: Script::new(ADD),
        }))
    }

    /// Admits a call held to `limits` (counting it as a request), or says
    /// which limit refuses it.
    pub async fn admit(&self, limits: &[Limit]) -> Result<Option<Refused>, Unavailable> {
        if limits.is_empty() {
            return Ok(None);
        }
        match self {
            Limiter::Local(m) => Ok(admit_local(&mut m.lock(), limits, Instant::now())),
            Limiter::Redis(r) => {
                let mut inv = r.admit.prepare_invoke();
                for l in limits {
                    inv.key(r.redis.key(&l.key));
                }
                for l in limits {
                    inv.arg(l.window.as_millis() as u64).arg(l.max);
                }
                for l in limits {
                    inv.arg(if l.measure == Measure::Requests {
                        "1"
                    } else {
                        "0"
                    });
                }
                let mut conn = r.redis.conn.clone();
                let v: redis::Value = inv
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| Unavailable(e.to_string()))?;
                match v {
                    redis::Value::Array(items) if items.len() == 2 => {
                        let num = |v: &redis::Value| match v {
                            redis::Value::Int(n) => *n,
                            _ => 0,
                        };
                        let i = (num(&items[0]) - 1).max(0) as usize;
                        let Some(limit) = limits.get(i).or(limits.first()).cloned() else {
                            return Ok(None);
                        };
                        Ok(Some(Refused {
                            limit,
                            retry_after: Duration::from_millis(num(&items[1]).max(1) as u64),
                        }))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// Counts what a settled call used: its tokens, and one success.
    pub async fn settled(&self, limits: &[Limit], tokens: i64, success: bool) {
        let amount = |l: &Limit| match l.measure {
            Measure::Requests => 0,
            Measure::Successes => i64::from(success),
            Measure::Tokens => tokens.max(0),
        };
        match self {
            Limiter::Local(m) => {
                let now = Instant::now();
                let mut m = m.lock();
                for l in limits {
                    add_local(&mut m, l, amount(l), now);
                }
            }
            Limiter::Redis(r) => {
                let mut inv = r.add.prepare_invoke();
                for l in limits {
                    inv.key(r.redis.key(&l.key));
                }
                for l in limits {
                    inv.arg(l.window.as_millis() as u64).arg(amount(l));
                }
                let mut conn = r.redis.conn.clone();
                if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
                    tracing::warn!(error = %e, "could not count a call against its rate limits");
                }
            }
        }
    }
}

/// The current count of a counter (0 once its window closed).
fn current(m: &HashMap<String, Window>, key: &str, now: Instant) -> Option<Window> {
    m.get(key).copied().filter(|w| w.ends > now)
}

fn admit_local(m: &mut HashMap<String, Window>, limits: &[Limit], now: Instant) -> Option<Refused> {
    let mut worst: Option<Refused> = None;
    for l in limits {
        if let Some(w) = current(m, &l.key, now)
            && w.count >= l.max
        {
            let wait = w.ends - now;
            if worst.as_ref().is_none_or(|r| wait >= r.retry_after) {
                worst = Some(Refused {
                    limit: l.clone(),
                    retry_after: wait,
                });
            }
        }
    }
    if worst.is_some() {
        return worst;
    }
    for l in limits.iter().filter(|l| l.measure == Measure::Requests) {
        add_local(m, l, 1, now);
    }
    None
}

fn add_local(m: &mut HashMap<String, Window>, l: &Limit, amount: i64, now: Instant) {
    if amount <= 0 {
        return;
    }
    // Closed windows are dropped now and then, so the map stays as small as
    // the set of recently active counters.
    if m.len() >= 4096 && m.len().is_power_of_two() {
        m.retain(|_, w| w.ends > now);
    }
    match m.get_mut(&l.key) {
        Some(w) if w.ends > now => w.count = w.count.saturating_add(amount),
        _ => {
            m.insert(
                l.key.clone(),
                Window {
                    ends: now + l.window,
                    count: amount,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: &str, max: i64, measure: Measure) -> Limit {
        Limit {
            key: key.into(),
            window: Duration::from_secs(60),
            max,
            measure,
            owner: "key",
        }
    }

    #[test]
    fn requests_are_counted_at_admission_and_refused_past_the_limit() {
        let mut m = HashMap::new();
        let now = Instant::now();
        let l = [limit("r", 2, Measure::Requests)];
        assert!(admit_local(&mut m, &l, now).is_none());
        assert!(admit_local(&mut m, &l, now).is_none());
        let r = admit_local(&mut m, &l, now + Duration::from_secs(10)).unwrap();
        assert_eq!(r.retry_after, Duration::from_secs(50));
        // The window closes a minute after its first hit.
        assert!(admit_local(&mut m, &l, now + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_refusal_counts_nothing() {
        let mut m = HashMap::new();
        let now = Instant::now();
        let l = [
            limit("r", 5, Measure::Requests),
            limit("t", 10, Measure::Tokens),
        ];
        assert!(admit_local(&mut m, &l, now).is_none());
        add_local(&mut m, &l[1], 10, now);
        assert!(admit_local(&mut m, &l, now).is_some());
        assert_eq!(m["r"].count, 1);
    }

    #[test]
    fn tokens_refuse_once_the_window_holds_the_limit() {
        let mut m = HashMap::new();
        let now = Instant::now();
        let l = [limit("t", 50, Measure::Tokens)];
        assert!(admit_local(&mut m, &l, now).is_none());
        add_local(&mut m, &l[0], 30, now);
        assert!(admit_local(&mut m, &l, now).is_none());
        add_local(&mut m, &l[0], 30, now);
        assert!(admit_local(&mut m, &l, now).is_some());
    }

    #[test]
    fn messages_name_the_limit() {
        let mut l = limit("x", 3, Measure::Requests);
        assert_eq!(
            l.describe(),
            "rate limit reached: this key may use at most 3 requests per minute"
        );
        l.owner = "user";
        l.window = Duration::from_secs(300);
        l.measure = Measure::Successes;
        assert_eq!(
            l.describe(),
            "rate limit reached: this user may use at most 3 successful requests per 5 minutes"
        );
    }
}
