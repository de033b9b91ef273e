//! API keys ("tokens" in new-api's vocabulary).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::users::FilterArg;
use super::{Store, StoreError, StoreResult, flag, like_contains, map_write_err, now};

/// Token status values (SPEC §3).
pub mod token_status {
    pub const ENABLED: i64 = 1;
    pub const DISABLED: i64 = 2;
    pub const EXPIRED: i64 = 3;
    pub const EXHAUSTED: i64 = 4;
}

/// A token row. The key itself is only here encrypted (`key_cipher`).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: i64,
    pub user_id: i64,
    pub key_hash: String,
    pub key_cipher: String,
    pub status: i64,
    pub name: String,
    pub created_time: i64,
    pub accessed_time: i64,
    pub expired_time: i64,
    pub remain_quota: i64,
    pub unlimited_quota: bool,
    pub used_quota: i64,
    pub request_count: i64,
    pub model_limits_enabled: bool,
    pub model_limits: String,
    pub allow_ips: String,
    pub group: String,
    /// Requests per minute this key may make (0: no limit).
    pub rpm_limit: i64,
    /// Tokens (prompt + completion) per minute this key may use (0: no limit).
    pub tpm_limit: i64,
}

const TOKEN_COLS: &str = "id, user_id, key_hash, key_cipher, status, name, created_time, \
    accessed_time, expired_time, remain_quota, unlimited_quota, used_quota, request_count, \
    model_limits_enabled, model_limits, allow_ips, group_name, rpm_limit, tpm_limit";

fn token_from_row(r: &AnyRow) -> Result<Token, sqlx::Error> {
    Ok(Token {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        key_hash: r.try_get("key_hash")?,
        key_cipher: r.try_get("key_cipher")?,
        status: r.try_get("status")?,
        name: r.try_get("name")?,
        created_time: r.try_get("created_time")?,
        accessed_time: r.try_get("accessed_time")?,
        expired_time: r.try_get("expired_time")?,
        remain_quota: r.try_get("remain_quota")?,
        unlimited_quota: flag(r, "unlimited_quota")?,
        used_quota: r.try_get("used_quota")?,
        request_count: r.try_get("request_count")?,
        model_limits_enabled: flag(r, "model_limits_enabled")?,
        model_limits: r.try_get("model_limits")?,
        allow_ips: r.try_get("allow_ips")?,
        group: r.try_get("group_name")?,
        rpm_limit: r.try_get("rpm_limit")?,
        tpm_limit: r.try_get("tpm_limit")?,
    })
}

/// Why a token insert was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    /// The user already holds the maximum number of tokens.
    #[error("token limit reached")]
    LimitReached(i64),
    /// The user does not exist.
    #[error("user not found")]
    NoUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CreateTokenError {
    fn from(e: sqlx::Error) -> Self {
        CreateTokenError::Store(StoreError::Db(e))
    }
}

/// Which tokens a query may see: one user's, or everyone's (root).
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    User(i64),
    Any,
}

impl Owner {
    fn clause(self) -> (&'static str, Option<i64>) {
        match self {
            Owner::User(id) => (" AND user_id = ?", Some(id)),
            Owner::Any => ("", None),
        }
    }
}

impl Store {
    /// Inserts a token unless the owner already holds `max_tokens`. The owner's
    /// row is locked first, so concurrent creates cannot pass the cap together.
    pub async fn create_token(&self, t: &Token, max_tokens: i64) -> Result<i64, CreateTokenError> {
        let mut tx = self.pool.begin().await?;
        // A no-op write takes the user's row lock (PostgreSQL, MySQL) or the
        // database write lock (SQLite) until commit.
        let locked = self
            .q("UPDATE users SET auth_version = auth_version WHERE id = ?")
            .bind(t.user_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(CreateTokenError::NoUser);
        }
        let count: i64 = self
            .q("SELECT COUNT(*) FROM tokens WHERE user_id = ?")
            .bind(t.user_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if count >= max_tokens {
            return Err(CreateTokenError::LimitReached(max_tokens));
        }
        let q = self
            .q(&self.insert_sql(
                "INSERT INTO tokens (user_id, key_hash, key_cipher, status, name, created_time, \
                 accessed_time, expired_time, remain_quota, unlimited_quota, used_quota, request_count, \
                 model_limits_enabled, model_limits, allow_ips, group_name, rpm_limit, tpm_limit) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(t.user_id)
            .bind(t.key_hash.clone())
            .bind(t.key_cipher.clone())
            .bind(t.status)
            .bind(t.name.clone())
            .bind(t.created_time)
            .bind(t.accessed_time)
            .bind(t.expired_time)
            .bind(t.remain_quota)
            .bind(t.unlimited_quota as i64)
            .bind(t.model_limits_enabled as i64)
            .bind(t.model_limits.clone())
            .bind(t.allow_ips.clone())
            .bind(t.group.clone())
            .bind(t.rpm_limit)
            .bind(t.tpm_limit);
        let id = self.insert_returning_id(&mut *tx, q).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// One token visible to `owner`.
    pub async fn token_by_id(&self, id: i64, owner: Owner) -> StoreResult<Token> {
        let (clause, uid) = owner.clause();
        let mut q = self
            .q(&format!(
                "SELECT {TOKEN_COLS} FROM tokens WHERE id = ?{clause}"
            ))
            .bind(id);
        if let Some(uid) = uid {
            q = q.bind(uid);
        }
        let row = q
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(token_from_row(&row)?)
    }

    /// The token whose key hashes to `hash`.
    pub async fn token_by_key_hash(&self, hash: &str) -> StoreResult<Token> {
        let row = self
            .q(&format!(
                "SELECT {TOKEN_COLS} FROM tokens WHERE key_hash = ?"
            ))
            .bind(hash.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(token_from_row(&row)?)
    }

    /// Tokens visible to `owner` among `ids`.
    pub async fn tokens_by_ids(&self, ids: &[i64], owner: Owner) -> StoreResult<Vec<Token>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (clause, uid) = owner.clause();
        let marks = vec!["?"; ids.len()].join(",");
        let mut q = self.q(&format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE id IN ({marks}){clause} ORDER BY id"
        ));
        for id in ids {
            q = q.bind(*id);
        }
        if let Some(uid) = uid {
            q = q.bind(uid);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// A page of tokens, newest first, optionally filtered by a name
    /// substring (case-insensitive).
    pub async fn list_tokens(
        &self,
        owner: Owner,
        name_contains: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> StoreResult<(Vec<Token>, i64)> {
        let mut filter = String::from(" WHERE 1=1");
        let mut args = Vec::new();
        if let Owner::User(uid) = owner {
            filter.push_str(" AND user_id = ?");
            args.push(FilterArg::Int(uid));
        }
        if let Some(n) = name_contains.filter(|n| !n.is_empty()) {
            filter.push_str(" AND LOWER(name) LIKE ? ESCAPE '!'");
            args.push(FilterArg::Text(like_contains(&n.to_lowercase())));
        }
        let mut cq = self.q(&format!("SELECT COUNT(*) FROM tokens{filter}"));
        for a in &args {
            cq = a.bind(cq);
        }
        let total: i64 = cq.fetch_one(&self.pool).await?.try_get(0)?;
        let mut q = self.q(&format!(
            "SELECT {TOKEN_COLS} FROM tokens{filter} ORDER BY id DESC LIMIT ? OFFSET ?"
        ));
        for a in &args {
            q = a.bind(q);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        let tokens = rows
            .iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((tokens, total))
    }

    /// Every token visible to `owner` whose name contains `name_contains`,
    /// newest first (for key-substring search, which must decrypt to match).
    pub async fn all_tokens(
        &self,
        owner: Owner,
        name_contains: Option<&str>,
    ) -> StoreResult<Vec<Token>> {
        let (tokens, _) = self
            .list_tokens(owner, name_contains, 0, i64::MAX / 2)
            .await?;
        Ok(tokens)
    }

    /// Writes the user-editable fields and the status of a token.
    pub async fn update_token(&self, t: &Token, set_remain: bool) -> StoreResult<()> {
        // remain_quota is written only when the caller sets it: the ledger
        // writer moves it concurrently, and writing back a value read earlier
        // would undo its charges.
        let sql = if set_remain {
            "UPDATE tokens SET name = ?, status = ?, expired_time = ?, unlimited_quota = ?, \
            model_limits_enabled = ?, model_limits = ?, allow_ips = ?, group_name = ?, \
            rpm_limit = ?, tpm_limit = ?, remain_quota = ? WHERE id = ?"
        } else {
            "UPDATE tokens SET name = ?, status = ?, expired_time = ?, unlimited_quota = ?, \
            model_limits_enabled = ?, model_limits = ?, allow_ips = ?, group_name = ?, \
            rpm_limit = ?, tpm_limit = ? WHERE id = ?"
        };
        let mut q = self
            .q(sql)
            .bind(t.name.clone())
            .bind(t.status)
            .bind(t.expired_time)
            .bind(t.unlimited_quota as i64)
            .bind(t.model_limits_enabled as i64)
            .bind(t.model_limits.clone())
            .bind(t.allow_ips.clone())
            .bind(t.group.clone())
            .bind(t.rpm_limit)
            .bind(t.tpm_limit);
        if set_remain {
            q = q.bind(t.remain_quota);
        }
        let res = q
            .bind(t.id)
            .execute(&self.pool)
            .await
            .map_err(map_write_err)?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Sets a token's status (the system's expired/exhausted transitions).
    pub async fn set_token_status(&self, id: i64, status: i64) -> StoreResult<()> {
        self.q("UPDATE tokens SET status = ? WHERE id = ?")
            .bind(status)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes the tokens among `ids` visible to `owner`; returns those deleted.
    pub async fn delete_tokens(&self, ids: &[i64], owner: Owner) -> StoreResult<Vec<Token>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let (clause, uid) = owner.clause();
        let marks = vec!["?"; ids.len()].join(",");
        let mut sel = self.q(&format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE id IN ({marks}){clause}"
        ));
        let mut del = self.q(&format!("DELETE FROM tokens WHERE id IN ({marks}){clause}"));
        for id in ids {
            sel = sel.bind(*id);
            del = del.bind(*id);
        }
        if let Some(uid) = uid {
            sel = sel.bind(uid);
            del = del.bind(uid);
        }
        let rows = sel.fetch_all(&mut *tx).await?;
        del.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Touches `accessed_time` (best effort, batched by callers).
    pub async fn touch_token(&self, id: i64) -> StoreResult<()> {
        self.q("UPDATE tokens SET accessed_time = ? WHERE id = ?")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// A token's stored `remain_quota` (the quota bank seeds from it).
    pub async fn token_remain(&self, id: i64) -> StoreResult<i64> {
        let row = self
            .q("SELECT remain_quota FROM tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.try_get(0)?)
    }
}
