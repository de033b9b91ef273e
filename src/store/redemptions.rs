//! Redemption codes: admin-made codes that add quota to a user once.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::logs::NewLog;
use super::users::FilterArg;
use super::{Store, StoreError, StoreResult, like_contains, map_write_err, now};

/// Redemption status values.
pub mod redemption_status {
    pub const ENABLED: i64 = 1;
    pub const DISABLED: i64 = 2;
    pub const USED: i64 = 3;
}

/// A redemption code row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Redemption {
    pub id: i64,
    pub user_id: i64,
    #[serde(rename = "key")]
    pub code: String,
    pub status: i64,
    pub name: String,
    pub quota: i64,
    pub created_time: i64,
    pub redeemed_time: i64,
    pub used_user_id: i64,
    pub expired_time: i64,
}

const COLS: &str = "id, user_id, code, status, name, quota, created_time, redeemed_time, used_user_id, expired_time";

fn from_row(r: &AnyRow) -> Result<Redemption, sqlx::Error> {
    Ok(Redemption {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        code: r.try_get("code")?,
        status: r.try_get("status")?,
        name: r.try_get("name")?,
        quota: r.try_get("quota")?,
        created_time: r.try_get("created_time")?,
        redeemed_time: r.try_get("redeemed_time")?,
        used_user_id: r.try_get("used_user_id")?,
        expired_time: r.try_get("expired_time")?,
    })
}

/// Why a code could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("invalid redemption code")]
    Invalid,
    #[error("this redemption code has already been used")]
    Used,
    #[error("this redemption code is disabled")]
    Disabled,
    #[error("this redemption code has expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RedeemError {
    fn from(e: sqlx::Error) -> Self {
        RedeemError::Store(StoreError::Db(e))
    }
}

impl Store {
    /// Inserts `codes` in one transaction (all or none).
    pub async fn create_redemptions(
        &self,
        creator: i64,
        name: &str,
        quota: i64,
        expired_time: i64,
        codes: &[String],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let t = now();
        for code in codes {
            self.q(
                "INSERT INTO redemptions (user_id, code, status, name, quota, created_time, \
                    redeemed_time, used_user_id, expired_time) VALUES (?, ?, 1, ?, ?, ?, 0, 0, ?)",
            )
            .bind(creator)
            .bind(code.clone())
            .bind(name.to_string())
            .bind(quota)
            .bind(t)
            .bind(expired_time)
            .execute(&mut *tx)
            .await
            .map_err(map_write_err)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A page of codes, newest first; `keyword` matches the name (substring)
    /// or the exact id.
    pub async fn list_redemptions(
        &self,
        keyword: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> StoreResult<(Vec<Redemption>, i64)> {
        let mut filter = String::from(" WHERE 1=1");
        let mut args = Vec::new();
        if let Some(kw) = keyword.map(str::trim).filter(|k| !k.is_empty()) {
            filter.push_str(" AND (LOWER(name) LIKE ? ESCAPE '!'");
            args.push(FilterArg::Text(like_contains(&kw.to_lowercase())));
            if let Ok(id) = kw.parse::<i64>() {
                filter.push_str(" OR id = ?");
                args.push(FilterArg::Int(id));
            }
            filter.push(')');
        }
        let mut cq = self.q(&format!("SELECT COUNT(*) FROM redemptions{filter}"));
        for a in &args {
            cq = a.bind(cq);
        }
        let total: i64 = cq.fetch_one(&self.pool).await?.try_get(0)?;
        let mut q = self.q(&format!(
            "SELECT {COLS} FROM redemptions{filter} ORDER BY id DESC LIMIT ? OFFSET ?"
        ));
        for a in &args {
            q = a.bind(q);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok((
            rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?,
            total,
        ))
    }

    /// One code by id.
    pub async fn redemption_by_id(&self, id: i64) -> StoreResult<Redemption> {
        let row = self
            .q(&format!("SELECT {COLS} FROM redemptions WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(from_row(&row)?)
    }

    /// Writes name, quota, status and expiry.
    pub async fn update_redemption(&self, r: &Redemption) -> StoreResult<()> {
        let res = self
            .q("UPDATE redemptions SET name = ?, quota = ?, status = ?, expired_time = ? WHERE id = ?")
            .bind(r.name.clone())
            .bind(r.quota)
            .bind(r.status)
            .bind(r.expired_time)
            .bind(r.id)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes one code.
    pub async fn delete_redemption(&self, id: i64) -> StoreResult<()> {
        let res = self
            .q("DELETE FROM redemptions WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes used, disabled and expired codes; returns how many.
    pub async fn delete_invalid_redemptions(&self) -> StoreResult<u64> {
        let res = self
            .q("DELETE FROM redemptions WHERE status <> 1 OR (expired_time <> 0 AND expired_time < ?)")
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }

    /// Redeems a code for a user: marks it used, adds its quota to the user and
    /// writes the top-up log row, all in one transaction. The conditional
    /// UPDATE makes a code redeemable exactly once under any concurrency.
    pub async fn redeem(
        &self,
        code: &str,
        user_id: i64,
        make_log: impl FnOnce(&Redemption) -> NewLog,
    ) -> Result<i64, RedeemError> {
        let t = now();
        let mut tx = self.pool.begin().await?;
        let claimed = self
            .q(
                "UPDATE redemptions SET status = 3, redeemed_time = ?, used_user_id = ? \
                WHERE code = ? AND status = 1 AND (expired_time = 0 OR expired_time >= ?)",
            )
            .bind(t)
            .bind(user_id)
            .bind(code.to_string())
            .bind(t)
            .execute(&mut *tx)
            .await?;
        let row = self
            .q(&format!("SELECT {COLS} FROM redemptions WHERE code = ?"))
            .bind(code.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(RedeemError::Invalid);
        };
        let r = from_row(&row)?;
        if claimed.rows_affected() == 0 {
            return Err(match r.status {
                redemption_status::USED => RedeemError::Used,
                redemption_status::DISABLED => RedeemError::Disabled,
                _ => RedeemError::Expired,
            });
        }
        self.q("UPDATE users SET quota = quota + ? WHERE id = ?")
            .bind(r.quota)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        self.insert_log_in(&mut tx, &make_log(&r)).await?;
        tx.commit().await?;
        Ok(r.quota)
    }
}
