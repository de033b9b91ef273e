//! Persistence: one [`Store`] over SQLite, PostgreSQL or MySQL.
//!
//! All three databases go through sqlx's `Any` driver, so every query is written
//! once. The few places where the dialects differ (placeholders, returning new
//! ids, casting sums, DDL) are answered by [`Dialect`], in this file only. See
//! `docs/decisions.md` for why this is one type rather than a trait with three
//! implementations.

mod channels;
mod logs;
mod options;
mod redemptions;
mod sqlite_writer;
mod tokens;
mod users;

pub use channels::*;
pub use logs::*;
pub use redemptions::*;
pub use sqlite_writer::SqliteWriter;
pub use tokens::*;
pub use users::*;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

/// Errors from the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist (or is not visible to the caller).
    #[error("not found")]
    NotFound,
    /// A unique index refused the write.
    #[error("unique constraint violated: {0}")]
    Unique(String),
    /// Anything else the database said.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// What SQLite said to the ledger writer's own connection.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result alias for the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Maps a write error: unique violations become [`StoreError::Unique`].
pub(crate) fn map_write_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Unique(db.message().to_string());
    }
    StoreError::Db(e)
}

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    fn from_url(url: &str) -> Option<Dialect> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::Mysql),
            _ => None,
        }
    }

    /// Rewrites `?` placeholders into `$1, $2, …` for PostgreSQL.
    pub fn sql(self, q: &str) -> String {
        if self != Dialect::Postgres {
            return q.to_string();
        }
        let mut out = String::with_capacity(q.len() + 8);
        let mut n = 0;
        for c in q.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `SUM(expr)` as a 64-bit integer, 0 when there are no rows.
    pub fn sum_i64(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("COALESCE(SUM({expr}),0)"),
            Dialect::Postgres => format!("CAST(COALESCE(SUM({expr}),0) AS BIGINT)"),
            Dialect::Mysql => format!("CAST(COALESCE(SUM({expr}),0) AS SIGNED)"),
        }
    }

    /// String concatenation (MySQL's `||` is a logical OR).
    pub fn concat(self, parts: &[&str]) -> String {
        match self {
            Dialect::Mysql => format!("CONCAT({})", parts.join(", ")),
            Dialect::Sqlite | Dialect::Postgres => parts.join(" || "),
        }
    }

    /// An integer expression cast to 64 bits (PostgreSQL's arithmetic on
    /// integers otherwise may produce other widths; MySQL's produce decimals).
    pub fn int(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => expr.to_string(),
            Dialect::Postgres => format!("CAST({expr} AS BIGINT)"),
            Dialect::Mysql => format!("CAST({expr} AS SIGNED)"),
        }
    }
}

/// The database: a pool plus its dialect.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// One connection of its own for the ledger writer (see [`Store::ledger_pool`]).
    ledger: LedgerPool,
    dialect: Dialect,
}

/// The ledger writer's connection.
#[derive(Clone, Debug)]
pub enum LedgerPool {
    /// SQLite through rusqlite (see [`SqliteWriter`]).
    Sqlite(SqliteWriter),
    /// PostgreSQL natively, for `COPY` (see [`LedgerRows`]).
    Postgres(sqlx::PgPool),
    /// MySQL through `sqlx::Any`.
    Any(AnyPool),
}

static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static MIGRATE_MYSQL: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

impl Store {
    /// Connects to `url` (creating the SQLite file if needed). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url).ok_or_else(|| {
            StoreError::Db(sqlx::Error::Configuration(
                "SQL_DSN must start with postgres://, mysql:// or sqlite://".into(),
            ))
        })?;
        let is_sqlite = dialect == Dialect::Sqlite;
        let options = || {
            AnyPoolOptions::new()
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if is_sqlite {
                            // 8 KiB pages for a new file (set before WAL mode
                            // fixes the size; a no-op on an existing one): a
                            // 4 KiB page holds a few ledger rows, and its splits
                            // were 13 % of SQLite's work per row (item 25 of
                            // docs/performance.md).
                            conn.execute("PRAGMA page_size=8192").await?;
                            // WAL lets readers run beside the single writer; NORMAL
                            // sync is durable across process crashes in WAL mode.
                            conn.execute("PRAGMA journal_mode=WAL").await?;
                            conn.execute("PRAGMA synchronous=NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout=10000").await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = options()
            .max_connections(max_connections.max(1))
            .connect(url)
            .await?;
        // Opened on first commit, on the runtime the writer runs on.
        let ledger = if is_sqlite {
            LedgerPool::Sqlite(SqliteWriter::new(
                url.parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .get_filename()
                    .to_path_buf(),
                Duration::from_secs(10),
            ))
        } else if dialect == Dialect::Postgres {
            LedgerPool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(10))
                    .max_connections(1)
                    .min_connections(0)
                    .connect_lazy(url)?,
            )
        } else {
            LedgerPool::Any(
                options()
                    .max_connections(1)
                    .min_connections(0)
                    .connect_lazy(url)?,
            )
        };
        Ok(Store {
            pool,
            ledger,
            dialect,
        })
    }

    /// Applies the embedded schema migrations for this dialect.
    pub async fn migrate(&self) -> StoreResult<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &MIGRATE_SQLITE,
            Dialect::Postgres => &MIGRATE_POSTGRES,
            Dialect::Mysql => &MIGRATE_MYSQL,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The dialect of the connected database.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The underlying pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The ledger writer's own connection. Its batches never wait for a
    /// connection behind request traffic, and only its page cache holds the
    /// log table's pages: with SQLite, every pooled connection that took a
    /// turn at writing the ledger kept ~2 MB of them (its own page cache, on
    /// its own thread's heap).
    pub fn ledger_pool(&self) -> &LedgerPool {
        &self.ledger
    }

    /// Closes the pools, waiting for connections to be returned.
    pub async fn close(&self) {
        match &self.ledger {
            LedgerPool::Sqlite(p) => p.close().await,
            LedgerPool::Postgres(p) => p.close().await,
            LedgerPool::Any(p) => p.close().await,
        }
        self.pool.close().await;
    }

    /// A query with placeholders rewritten for the dialect.
    pub(crate) fn q(
        &self,
        sql: &str,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        sqlx::query(AssertSqlSafe(self.dialect.sql(sql)))
    }

    /// Runs an INSERT and returns the new row's id.
    pub(crate) async fn insert_returning_id<'c, E>(
        &self,
        exec: E,
        query: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> StoreResult<i64>
    where
        E: Executor<'c, Database = sqlx::Any>,
    {
        // Through the Any driver only MySQL reports a last-insert id; the
        // others' INSERTs carry RETURNING id (see `insert_sql`).
        if self.dialect != Dialect::Mysql {
            let row = query.fetch_one(exec).await.map_err(map_write_err)?;
            Ok(row.try_get::<i64, _>(0)?)
        } else {
            let res = query.execute(exec).await.map_err(map_write_err)?;
            res.last_insert_id()
                .ok_or_else(|| StoreError::Db(sqlx::Error::Protocol("no insert id".into())))
        }
    }

    /// `INSERT` text with `RETURNING id` where the dialect needs it.
    pub(crate) fn insert_sql(&self, sql: &str) -> String {
        if self.dialect != Dialect::Mysql {
            format!("{sql} RETURNING id")
        } else {
            sql.to_string()
        }
    }

    /// The newest stored token and channel key ciphertexts (at most one
    /// each), to check at start that this server holds the key that
    /// encrypted them.
    pub async fn sample_ciphers(&self) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for table in ["tokens", "channels"] {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT key_cipher FROM {table} ORDER BY id DESC LIMIT 1"
            )))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                let c: String = r.try_get(0)?;
                if !c.is_empty() {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Reads an integer column as a bool (flags are stored as 0/1 integers on every
/// database; see `docs/decisions.md`).
pub(crate) fn flag(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// Escapes a user string for `LIKE … ESCAPE '!'` and wraps it in `%…%`.
pub(crate) fn like_contains(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        assert_eq!(
            Dialect::Postgres.sql("a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(Dialect::Mysql.sql("a = ?"), "a = ?");
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like_contains("a_b%c!"), "%a!_b!%c!!%");
    }
}
