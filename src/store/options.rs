//! Stored option values (`GET/PUT /api/option/`).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Dialect, Store, StoreResult, map_write_err};

impl Store {
    /// Every stored option.
    pub async fn load_options(&self) -> StoreResult<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT opt_key, opt_value FROM options")
            .fetch_all(&self.pool)
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(r.try_get("opt_key")?, r.try_get("opt_value")?);
        }
        Ok(out)
    }

    /// Inserts or replaces one option.
    pub async fn put_option(&self, key: &str, value: &str) -> StoreResult<()> {
        let sql = match self.dialect {
            Dialect::Mysql => {
                "INSERT INTO options (opt_key, opt_value) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE opt_value = VALUES(opt_value)"
            }
            Dialect::Sqlite | Dialect::Postgres => {
                "INSERT INTO options (opt_key, opt_value) VALUES (?, ?) \
                 ON CONFLICT (opt_key) DO UPDATE SET opt_value = excluded.opt_value"
            }
        };
        self.q(sql)
            .bind(key.to_string())
            .bind(value.to_string())
            .execute(&self.pool)
            .await
            .map_err(map_write_err)?;
        Ok(())
    }
}
