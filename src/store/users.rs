//! Users.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, StoreResult, like_contains, now};

/// A user row.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub display_name: String,
    pub email: String,
    pub role: i64,
    pub status: i64,
    pub group: String,
    pub quota: i64,
    pub used_quota: i64,
    pub request_count: i64,
    pub auth_version: i64,
    pub created_time: i64,
}

/// User status values.
pub mod user_status {
    pub const ENABLED: i64 = 1;
    pub const DISABLED: i64 = 2;
}

const USER_COLS: &str = "id, username, password_hash, display_name, email, role, status, \
    group_name, quota, used_quota, request_count, auth_version, created_time";

fn user_from_row(r: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        display_name: r.try_get("display_name")?,
        email: r.try_get("email")?,
        role: r.try_get("role")?,
        status: r.try_get("status")?,
        group: r.try_get("group_name")?,
        quota: r.try_get("quota")?,
        used_quota: r.try_get("used_quota")?,
        request_count: r.try_get("request_count")?,
        auth_version: r.try_get("auth_version")?,
        created_time: r.try_get("created_time")?,
    })
}

/// Fields for a new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub display_name: String,
    pub role: i64,
    pub group: String,
    pub quota: i64,
    pub access_token_hash: Option<String>,
}

/// Fields an admin or the user may change; `None` keeps the value.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub password_hash: Option<String>,
    pub email: Option<String>,
    pub group: Option<String>,
    pub quota: Option<i64>,
    pub role: Option<i64>,
    pub status: Option<i64>,
}

impl Store {
    /// Inserts a user and returns its id.
    pub async fn create_user(&self, u: &NewUser) -> StoreResult<i64> {
        let q = self
            .q(&self.insert_sql(
                "INSERT INTO users (username, password_hash, display_name, email, role, status, \
                 group_name, quota, used_quota, request_count, access_token_hash, auth_version, created_time) \
                 VALUES (?, ?, ?, '', ?, 1, ?, ?, 0, 0, ?, 1, ?)",
            ))
            .bind(u.username.clone())
            .bind(u.password_hash.clone())
            .bind(u.display_name.clone())
            .bind(u.role)
            .bind(u.group.clone())
            .bind(u.quota)
            .bind(u.access_token_hash.clone())
            .bind(now());
        self.insert_returning_id(&self.pool, q).await
    }

    /// Number of users.
    pub async fn count_users(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    /// One user by id.
    pub async fn user_by_id(&self, id: i64) -> StoreResult<User> {
        let row = self
            .q(&format!("SELECT {USER_COLS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(user_from_row(&row)?)
    }

    /// One user by exact username.
    pub async fn user_by_username(&self, username: &str) -> StoreResult<User> {
        let row = self
            .q(&format!("SELECT {USER_COLS} FROM users WHERE username = ?"))
            .bind(username.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(user_from_row(&row)?)
    }

    /// The user owning an access token (by its lookup hash).
    pub async fn user_by_access_token_hash(&self, hash: &str) -> StoreResult<User> {
        let row = self
            .q(&format!(
                "SELECT {USER_COLS} FROM users WHERE access_token_hash = ?"
            ))
            .bind(hash.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(user_from_row(&row)?)
    }

    /// A page of users, newest first; optional keyword (username, display
    /// name, email substring or exact id) and group filter. With
    /// `role_below`, only users whose role is strictly lower are seen (what
    /// an administrator may manage).
    pub async fn list_users(
        &self,
        keyword: Option<&str>,
        group: Option<&str>,
        role_below: Option<i64>,
        offset: i64,
        limit: i64,
    ) -> StoreResult<(Vec<User>, i64)> {
        let mut filter = String::from(" WHERE 1=1");
        let mut args: Vec<FilterArg> = Vec::new();
        if let Some(r) = role_below {
            filter.push_str(" AND role < ?");
            args.push(FilterArg::Int(r));
        }
        if let Some(kw) = keyword.map(str::trim).filter(|k| !k.is_empty()) {
            let pat = like_contains(&kw.to_lowercase());
            filter.push_str(
                " AND (LOWER(username) LIKE ? ESCAPE '!' OR LOWER(display_name) LIKE ? ESCAPE '!' \
                 OR LOWER(email) LIKE ? ESCAPE '!'",
            );
            args.extend([
                FilterArg::Text(pat.clone()),
                FilterArg::Text(pat.clone()),
                FilterArg::Text(pat),
            ]);
            if let Ok(id) = kw.parse::<i64>() {
                filter.push_str(" OR id = ?");
                args.push(FilterArg::Int(id));
            }
            filter.push(')');
        }
        if let Some(g) = group.map(str::trim).filter(|g| !g.is_empty()) {
            filter.push_str(" AND group_name = ?");
            args.push(FilterArg::Text(g.to_string()));
        }
        let mut count_q = self.q(&format!("SELECT COUNT(*) FROM users{filter}"));
        for a in &args {
            count_q = a.bind(count_q);
        }
        let total: i64 = count_q.fetch_one(&self.pool).await?.try_get(0)?;
        let mut q = self.q(&format!(
            "SELECT {USER_COLS} FROM users{filter} ORDER BY id DESC LIMIT ? OFFSET ?"
        ));
        for a in &args {
            q = a.bind(q);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        let users = rows
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((users, total))
    }

    /// Applies a patch. Changing the password, role or status bumps the auth
    /// version, which ends the user's sessions.
    pub async fn update_user(&self, id: i64, p: &UserPatch) -> StoreResult<()> {
        let mut sets: Vec<&str> = Vec::new();
        let mut args: Vec<FilterArg> = Vec::new();
        let mut push = |col: &'static str, a: FilterArg| {
            sets.push(col);
            args.push(a);
        };
        if let Some(v) = &p.username {
            push("username = ?", FilterArg::Text(v.clone()));
        }
        if let Some(v) = &p.display_name {
            push("display_name = ?", FilterArg::Text(v.clone()));
        }
        if let Some(v) = &p.email {
            push("email = ?", FilterArg::Text(v.clone()));
        }
        if let Some(v) = &p.group {
            push("group_name = ?", FilterArg::Text(v.clone()));
        }
        if let Some(v) = p.quota {
            push("quota = ?", FilterArg::Int(v));
        }
        if let Some(v) = &p.password_hash {
            push("password_hash = ?", FilterArg::Text(v.clone()));
        }
        if let Some(v) = p.role {
            push("role = ?", FilterArg::Int(v));
        }
        if let Some(v) = p.status {
            push("status = ?", FilterArg::Int(v));
        }
        if sets.is_empty() {
            return Ok(());
        }
        let revokes = p.password_hash.is_some() || p.role.is_some() || p.status.is_some();
        let mut sql = format!("UPDATE users SET {}", sets.join(", "));
        if revokes {
            sql.push_str(", auth_version = auth_version + 1");
        }
        sql.push_str(" WHERE id = ?");
        let mut q = self.q(&sql);
        for a in &args {
            q = a.bind(q);
        }
        let res = q
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(super::map_write_err)?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Replaces the user's access token hash.
    pub async fn set_access_token_hash(&self, id: i64, hash: &str) -> StoreResult<()> {
        let res = self
            .q("UPDATE users SET access_token_hash = ? WHERE id = ?")
            .bind(hash.to_string())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(super::map_write_err)?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Ends every session of the user.
    pub async fn bump_auth_version(&self, id: i64) -> StoreResult<()> {
        self.q("UPDATE users SET auth_version = auth_version + 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a user with their tokens, in one transaction.
    pub async fn delete_user(&self, id: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        self.q("DELETE FROM tokens WHERE user_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let res = self
            .q("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A bind value for dynamically built filters.
#[derive(Debug, Clone)]
pub(crate) enum FilterArg {
    Int(i64),
    Text(String),
}

impl FilterArg {
    pub(crate) fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        match self {
            FilterArg::Int(i) => q.bind(*i),
            FilterArg::Text(s) => q.bind(s.clone()),
        }
    }
}

impl Store {
    /// A user's stored `quota` (the quota bank seeds from it).
    pub async fn user_quota(&self, id: i64) -> StoreResult<i64> {
        let row = self
            .q("SELECT quota FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.try_get(0)?)
    }
}
