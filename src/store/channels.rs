//! Upstream channels. The channel's key(s) are stored encrypted (`key_cipher`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::users::FilterArg;
use super::{Store, StoreError, StoreResult, flag, like_contains, map_write_err};

/// Channel status values (SPEC §5).
pub mod channel_status {
    pub const ENABLED: i64 = 1;
    pub const MANUALLY_DISABLED: i64 = 2;
    pub const AUTO_DISABLED: i64 = 3;
}

/// A channel row.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub id: i64,
    pub channel_type: i64,
    pub name: String,
    pub key_cipher: String,
    pub base_url: String,
    pub models: String,
    pub model_mapping: String,
    pub groups: String,
    pub priority: i64,
    pub weight: i64,
    pub status: i64,
    pub test_model: String,
    pub response_time: i64,
    pub test_time: i64,
    pub used_quota: i64,
    pub request_count: i64,
    pub balance: f64,
    pub balance_updated_time: i64,
    pub created_time: i64,
    pub other: String,
    pub tag: String,
    pub auto_ban: bool,
}

const COLS: &str = "id, type, name, key_cipher, base_url, models, model_mapping, group_names, \
    priority, weight, status, test_model, response_time, test_time, used_quota, request_count, \
    balance, balance_updated_time, created_time, other, tag, auto_ban";

fn from_row(r: &AnyRow) -> Result<Channel, sqlx::Error> {
    Ok(Channel {
        id: r.try_get("id")?,
        channel_type: r.try_get("type")?,
        name: r.try_get("name")?,
        key_cipher: r.try_get("key_cipher")?,
        base_url: r.try_get("base_url")?,
        models: r.try_get("models")?,
        model_mapping: r.try_get("model_mapping")?,
        groups: r.try_get("group_names")?,
        priority: r.try_get("priority")?,
        weight: r.try_get("weight")?,
        status: r.try_get("status")?,
        test_model: r.try_get("test_model")?,
        response_time: r.try_get("response_time")?,
        test_time: r.try_get("test_time")?,
        used_quota: r.try_get("used_quota")?,
        request_count: r.try_get("request_count")?,
        balance: r.try_get("balance")?,
        balance_updated_time: r.try_get("balance_updated_time")?,
        created_time: r.try_get("created_time")?,
        other: r.try_get("other")?,
        tag: r.try_get("tag")?,
        auto_ban: flag(r, "auto_ban")?,
    })
}

/// Filters for channel lists.
#[derive(Debug, Clone, Default)]
pub struct ChannelFilter {
    /// Name or base URL substring, or exact id.
    pub keyword: Option<String>,
    /// A group the channel serves.
    pub group: Option<String>,
    /// A model name substring.
    pub model: Option<String>,
    pub status: Option<i64>,
    /// Only channels that are not enabled (manually or auto-disabled).
    pub disabled: bool,
    pub channel_type: Option<i64>,
}

impl ChannelFilter {
    fn sql(&self, dialect: super::Dialect) -> (String, Vec<FilterArg>) {
        let mut w = String::from(" WHERE 1=1");
        let mut a = Vec::new();
        if let Some(kw) = self.keyword.as_deref().filter(|k| !k.is_empty()) {
            let pat = like_contains(&kw.to_lowercase());
            w.push_str(" AND (LOWER(name) LIKE ? ESCAPE '!' OR LOWER(base_url) LIKE ? ESCAPE '!'");
            a.push(FilterArg::Text(pat.clone()));
            a.push(FilterArg::Text(pat));
            if let Ok(id) = kw.parse::<i64>() {
                w.push_str(" OR id = ?");
                a.push(FilterArg::Int(id));
            }
            w.push(')');
        }
        if let Some(g) = self.group.as_deref().filter(|g| !g.is_empty()) {
            // Groups are a comma list; match a whole element.
            w.push_str(&format!(
                " AND {} LIKE ? ESCAPE '!'",
                dialect.concat(&["','", "group_names", "','"])
            ));
            a.push(FilterArg::Text(like_contains(&format!(",{g},"))));
        }
        if let Some(m) = self.model.as_deref().filter(|m| !m.is_empty()) {
            w.push_str(" AND models LIKE ? ESCAPE '!'");
            a.push(FilterArg::Text(like_contains(m)));
        }
        if let Some(s) = self.status {
            w.push_str(" AND status = ?");
            a.push(FilterArg::Int(s));
        }
        if self.disabled {
            w.push_str(" AND status <> ?");
            a.push(FilterArg::Int(channel_status::ENABLED));
        }
        if let Some(t) = self.channel_type {
            w.push_str(" AND type = ?");
            a.push(FilterArg::Int(t));
        }
        (w, a)
    }
}

impl Store {
    /// Inserts channels in one transaction; returns their ids.
    pub async fn create_channels(&self, chans: &[Channel]) -> StoreResult<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(chans.len());
        for c in chans {
            let q = self
                .q(&self.insert_sql(
                    "INSERT INTO channels (type, name, key_cipher, base_url, models, model_mapping, \
                     group_names, priority, weight, status, test_model, response_time, test_time, \
                     used_quota, request_count, balance, balance_updated_time, created_time, other, \
                     tag, auto_ban) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0, 0, ?, ?, ?, ?)",
                ))
                .bind(c.channel_type)
                .bind(c.name.clone())
                .bind(c.key_cipher.clone())
                .bind(c.base_url.clone())
                .bind(c.models.clone())
                .bind(c.model_mapping.clone())
                .bind(c.groups.clone())
                .bind(c.priority)
                .bind(c.weight)
                .bind(c.status)
                .bind(c.test_model.clone())
                .bind(c.created_time)
                .bind(c.other.clone())
                .bind(c.tag.clone())
                .bind(c.auto_ban as i64);
            ids.push(self.insert_returning_id(&mut *tx, q).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Every channel (the routing snapshot is built from this).
    pub async fn all_channels(&self) -> StoreResult<Vec<Channel>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM channels ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?)
    }

    /// A page of channels, highest priority first (or by id, newest first).
    pub async fn list_channels(
        &self,
        f: &ChannelFilter,
        by_id: bool,
        offset: i64,
        limit: i64,
    ) -> StoreResult<(Vec<Channel>, i64)> {
        let (w, args) = f.sql(self.dialect);
        let mut cq = self.q(&format!("SELECT COUNT(*) FROM channels{w}"));
        for a in &args {
            cq = a.bind(cq);
        }
        let total: i64 = cq.fetch_one(&self.pool).await?.try_get(0)?;
        let order = if by_id {
            "id DESC"
        } else {
            "priority DESC, id DESC"
        };
        let mut q = self.q(&format!(
            "SELECT {COLS} FROM channels{w} ORDER BY {order} LIMIT ? OFFSET ?"
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

    /// Channel counts per type (for new-api's `type_counts`).
    pub async fn channel_type_counts(&self) -> StoreResult<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT type, COUNT(*) FROM channels GROUP BY type")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// One channel.
    pub async fn channel_by_id(&self, id: i64) -> StoreResult<Channel> {
        let row = self
            .q(&format!("SELECT {COLS} FROM channels WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(from_row(&row)?)
    }

    /// Writes every editable field.
    pub async fn update_channel(&self, c: &Channel) -> StoreResult<()> {
        let res = self
            .q(
                "UPDATE channels SET type = ?, name = ?, key_cipher = ?, base_url = ?, models = ?, \
                model_mapping = ?, group_names = ?, priority = ?, weight = ?, status = ?, \
                test_model = ?, other = ?, tag = ?, auto_ban = ? WHERE id = ?",
            )
            .bind(c.channel_type)
            .bind(c.name.clone())
            .bind(c.key_cipher.clone())
            .bind(c.base_url.clone())
            .bind(c.models.clone())
            .bind(c.model_mapping.clone())
            .bind(c.groups.clone())
            .bind(c.priority)
            .bind(c.weight)
            .bind(c.status)
            .bind(c.test_model.clone())
            .bind(c.other.clone())
            .bind(c.tag.clone())
            .bind(c.auto_ban as i64)
            .bind(c.id)
            .execute(&self.pool)
            .await
            .map_err(map_write_err)?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Sets a channel's status; returns whether a row changed.
    pub async fn set_channel_status(&self, id: i64, status: i64) -> StoreResult<bool> {
        let res = self
            .q("UPDATE channels SET status = ? WHERE id = ? AND status <> ?")
            .bind(status)
            .bind(id)
            .bind(status)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Records a test: response time in milliseconds and when.
    pub async fn record_channel_test(&self, id: i64, ms: i64, at: i64) -> StoreResult<()> {
        self.q("UPDATE channels SET response_time = ?, test_time = ? WHERE id = ?")
            .bind(ms)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes channels by id; returns how many.
    pub async fn delete_channels(&self, ids: &[i64]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let marks = vec!["?"; ids.len()].join(",");
        let mut q = self.q(&format!("DELETE FROM channels WHERE id IN ({marks})"));
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    /// Deletes every disabled channel; returns how many.
    pub async fn delete_disabled_channels(&self) -> StoreResult<u64> {
        Ok(sqlx::query("DELETE FROM channels WHERE status <> 1")
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
