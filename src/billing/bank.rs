//! The quota bank: live balances for tokens and users, reserved before a call
//! is forwarded and settled after it (SPEC §6).
//!
//! For each account the bank knows three numbers:
//! - `db`: the balance as last committed to the database,
//! - `unflushed`: settled charges the ledger writer has not committed yet,
//! - `reserved`: charges of calls in flight.
//!
//! `available = db − unflushed − reserved`. A reservation succeeds only if it
//! fits in `available` (check-and-add under the account's lock), so calls that
//! reserve their worst case can never overspend together. Reservations are
//! never persisted: a crash forgets them, it cannot leak them.
//!
//! Reading `db` from the database (first use, or after an admin change) and
//! the ledger writer's commit-then-update are serialised by [`LocalBank::sync`],
//! so `db` and `unflushed` always describe the same moment. The hot path never
//! takes that lock.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::store::{Store, StoreError};

#[derive(Debug, Default)]
struct Account {
    db: i64,
    unflushed: i64,
    reserved: i64,
}

impl Account {
    fn available(&self) -> i64 {
        self.db
            .saturating_sub(self.unflushed)
            .saturating_sub(self.reserved)
    }
}

/// Keyed by id; foldhash rather than SipHash (two lookups a call).
type Accounts = DashMap<i64, Arc<Mutex<Account>>, foldhash::fast::RandomState>;

/// Which balance refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token's quota is insufficient for this request")]
    Token,
    #[error("the user's quota is insufficient for this request")]
    User,
}

/// Errors from the bank.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared balance store (Redis) did not answer: calls are refused
    /// rather than let replicas spend blind (see docs/deploy.md).
    #[error("balance service unavailable: {0}")]
    Unavailable(String),
}

/// Quota held in the local bank for one call.
#[derive(Debug)]
pub struct LocalReservation {
    token: Option<Arc<Mutex<Account>>>,
    user: Arc<Mutex<Account>>,
    amount: i64,
    settled: bool,
}

impl Drop for LocalReservation {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(t) = &self.token {
                t.lock().reserved -= self.amount;
            }
            self.user.lock().reserved -= self.amount;
        }
    }
}

/// The in-process bank (one replica).
#[derive(Default)]
pub struct LocalBank {
    tokens: Accounts,
    users: Accounts,
    /// Serialises database reads of balances with ledger commits.
    pub sync: tokio::sync::Mutex<()>,
}

/// What a reservation was made in, for the shared (Redis) bank: the
/// account's generation and the replica's holder epoch. Always zero in the
/// local bank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Hold {
    pub generation: u64,
    pub epoch: u64,
}

/// Per-account amounts the ledger writer committed: (id, hold, amount).
#[derive(Debug, Default)]
pub struct Committed {
    pub tokens: Vec<(i64, Hold, i64)>,
    pub users: Vec<(i64, Hold, i64)>,
}

impl LocalBank {
    async fn account(
        &self,
        map: &Accounts,
        id: i64,
        load: impl std::future::Future<Output = Result<i64, StoreError>>,
    ) -> Result<Arc<Mutex<Account>>, StoreError> {
        if let Some(a) = map.get(&id) {
            return Ok(a.clone());
        }
        let _g = self.sync.lock().await;
        if let Some(a) = map.get(&id) {
            return Ok(a.clone());
        }
        let db = load.await?;
        let acct = Arc::new(Mutex::new(Account {
            db,
            ..Account::default()
        }));
        map.insert(id, acct.clone());
        Ok(acct)
    }

    async fn token_account(
        &self,
        store: &Store,
        id: i64,
    ) -> Result<Arc<Mutex<Account>>, StoreError> {
        self.account(&self.tokens, id, store.token_remain(id)).await
    }

    async fn user_account(
        &self,
        store: &Store,
        id: i64,
    ) -> Result<Arc<Mutex<Account>>, StoreError> {
        self.account(&self.users, id, store.user_quota(id)).await
    }

    /// The token's available quota.
    pub async fn token_available(&self, store: &Store, id: i64) -> Result<i64, StoreError> {
        Ok(self.token_account(store, id).await?.lock().available())
    }

    /// The user's available quota.
    pub async fn user_available(&self, store: &Store, id: i64) -> Result<i64, StoreError> {
        Ok(self.user_account(store, id).await?.lock().available())
    }

    /// Holds `amount` from the token (unless `token` is `None`: unlimited) and
    /// from the user, atomically per account; all or nothing.
    pub async fn reserve(
        &self,
        store: &Store,
        token: Option<i64>,
        user: i64,
        amount: i64,
    ) -> Result<LocalReservation, BankError> {
        let amount = amount.max(0);
        let token_acct = match token {
            Some(id) => Some(self.token_account(store, id).await?),
            None => None,
        };
        let user_acct = self.user_account(store, user).await?;
        if let Some(t) = &token_acct {
            let mut a = t.lock();
            if a.available() < amount || a.available() <= 0 {
                return Err(Refusal::Token.into());
            }
            a.reserved += amount;
        }
        {
            let mut u = user_acct.lock();
            if u.available() < amount || u.available() <= 0 {
                drop(u);
                if let Some(t) = &token_acct {
                    t.lock().reserved -= amount;
                }
                return Err(Refusal::User.into());
            }
            u.reserved += amount;
        }
        Ok(LocalReservation {
            token: token_acct,
            user: user_acct,
            amount,
            settled: false,
        })
    }

    /// Replaces the reservation by the real charge (which the ledger writer
    /// will commit). Returns the token's remaining quota, if it is limited.
    pub fn settle(&self, mut r: LocalReservation, charge: i64) -> Option<i64> {
        r.settled = true;
        let charge = charge.max(0);
        let left = r.token.as_ref().map(|t| {
            let mut a = t.lock();
            a.reserved -= r.amount;
            a.unflushed += charge;
            a.available()
        });
        let mut u = r.user.lock();
        u.reserved -= r.amount;
        u.unflushed += charge;
        left
    }

    /// Called by the ledger writer, holding [`LocalBank::sync`], right after
    /// it committed these charges.
    pub fn committed(&self, c: &Committed) {
        for (map, list) in [(&self.tokens, &c.tokens), (&self.users, &c.users)] {
            for (id, _gen, amount) in list {
                if let Some(a) = map.get(id) {
                    let mut a = a.lock();
                    a.db -= amount;
                    a.unflushed -= amount;
                }
            }
        }
    }

    /// Re-reads a token's balance after an admin change.
    pub async fn reload_token(&self, store: &Store, id: i64) -> Result<(), StoreError> {
        let _g = self.sync.lock().await;
        let Some(a) = self.tokens.get(&id).map(|a| a.clone()) else {
            return Ok(());
        };
        match store.token_remain(id).await {
            Ok(db) => a.lock().db = db,
            Err(StoreError::NotFound) => a.lock().db = 0,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Re-reads a user's balance after an admin change or a top-up.
    pub async fn reload_user(&self, store: &Store, id: i64) -> Result<(), StoreError> {
        let _g = self.sync.lock().await;
        let Some(a) = self.users.get(&id).map(|a| a.clone()) else {
            return Ok(());
        };
        match store.user_quota(id).await {
            Ok(db) => a.lock().db = db,
            Err(StoreError::NotFound) => a.lock().db = 0,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// The quota bank: in-process for one replica, on Redis for several.
pub enum QuotaBank {
    Local(LocalBank),
    Redis(super::redis_bank::RedisBank),
}

/// Quota held for one call. Settle it with [`QuotaBank::settle`]; dropping it
/// unsettled refunds everything (a cancelled call costs nothing).
pub enum Reservation {
    Local(LocalReservation),
    Redis(Box<RedisReservation>),
}

/// Quota held in Redis for one call.
pub struct RedisReservation {
    bank: super::redis_bank::RedisBank,
    token: Option<(i64, Hold)>,
    user: (i64, Hold),
    amount: i64,
    settled: bool,
}

impl Drop for RedisReservation {
    fn drop(&mut self) {
        if self.settled || self.amount == 0 {
            return;
        }
        // Refunds are a Redis round trip; they leave on the runtime.
        let (bank, token, user, amount) = (self.bank.clone(), self.token, self.user, self.amount);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                use super::redis_bank::Acct;
                if let Some((id, g)) = token {
                    bank.adjust(Acct::Token(id), g, -amount).await;
                }
                bank.adjust(Acct::User(user.0), user.1, -amount).await;
            });
        }
    }
}

impl Reservation {
    /// The holds (token, user) it was made in; zero in the local bank.
    pub fn holds(&self) -> (Hold, Hold) {
        match self {
            Reservation::Local(_) => (Hold::default(), Hold::default()),
            Reservation::Redis(r) => (r.token.map(|t| t.1).unwrap_or_default(), r.user.1),
        }
    }
}

impl QuotaBank {
    /// The token's available quota.
    pub async fn token_available(&self, store: &Store, id: i64) -> Result<i64, BankError> {
        match self {
            QuotaBank::Local(b) => Ok(b.token_available(store, id).await?),
            QuotaBank::Redis(b) => b.available(store, super::redis_bank::Acct::Token(id)).await,
        }
    }

    /// The user's available quota.
    pub async fn user_available(&self, store: &Store, id: i64) -> Result<i64, BankError> {
        match self {
            QuotaBank::Local(b) => Ok(b.user_available(store, id).await?),
            QuotaBank::Redis(b) => b.available(store, super::redis_bank::Acct::User(id)).await,
        }
    }

    /// Holds `amount` from the token (unless `token` is `None`: unlimited)
    /// and from the user, all or nothing.
    pub async fn reserve(
        &self,
        store: &Store,
        token: Option<i64>,
        user: i64,
        amount: i64,
    ) -> Result<Reservation, BankError> {
        let amount = amount.max(0);
        match self {
            QuotaBank::Local(b) => Ok(Reservation::Local(
                b.reserve(store, token, user, amount).await?,
            )),
            QuotaBank::Redis(b) => {
                let (th, uh) = b.reserve(store, token, user, amount).await?;
                Ok(Reservation::Redis(Box::new(RedisReservation {
                    bank: b.clone(),
                    token: token.map(|t| (t, th)),
                    user: (user, uh),
                    amount,
                    settled: false,
                })))
            }
        }
    }

    /// Replaces the reservation by the real charge (which the ledger writer
    /// will commit).
    pub async fn settle(&self, r: Reservation, charge: i64) -> Result<(), BankError> {
        let charge = charge.max(0);
        match (self, r) {
            (QuotaBank::Local(b), Reservation::Local(r)) => {
                b.settle(r, charge);
                Ok(())
            }
            (QuotaBank::Redis(b), Reservation::Redis(mut r)) => {
                use super::redis_bank::Acct;
                r.settled = true;
                let delta = charge - r.amount;
                if let Some((id, g)) = r.token {
                    b.adjust(Acct::Token(id), g, delta).await;
                }
                b.adjust(Acct::User(r.user.0), r.user.1, delta).await;
                Ok(())
            }
            // A reservation always comes from the bank that settles it.
            _ => Ok(()),
        }
    }

    /// Taken by the ledger writer around its database commit (the local bank
    /// must not read balances between the commit and [`QuotaBank::committed`]).
    pub async fn commit_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self {
            QuotaBank::Local(b) => Some(b.sync.lock().await),
            QuotaBank::Redis(_) => None,
        }
    }

    /// Called by the ledger writer right after it committed these charges.
    pub async fn committed(&self, c: &Committed) {
        match self {
            QuotaBank::Local(b) => b.committed(c),
            QuotaBank::Redis(b) => {
                use super::redis_bank::Acct;
                for (id, g, amount) in &c.tokens {
                    b.committed(Acct::Token(*id), *g, *amount).await;
                }
                for (id, g, amount) in &c.users {
                    b.committed(Acct::User(*id), *g, *amount).await;
                }
            }
        }
    }

    /// Re-reads a token's balance after an admin change.
    pub async fn reload_token(&self, store: &Store, id: i64) -> Result<(), BankError> {
        match self {
            QuotaBank::Local(b) => Ok(b.reload_token(store, id).await?),
            QuotaBank::Redis(b) => {
                b.forget(super::redis_bank::Acct::Token(id)).await;
                Ok(())
            }
        }
    }

    /// Re-reads a user's balance after an admin change or a top-up.
    pub async fn reload_user(&self, store: &Store, id: i64) -> Result<(), BankError> {
        match self {
            QuotaBank::Local(b) => Ok(b.reload_user(store, id).await?),
            QuotaBank::Redis(b) => {
                b.forget(super::redis_bank::Acct::User(id)).await;
                Ok(())
            }
        }
    }
}
