//! The ledger table: one row per call, top-up, management act or error.

use std::borrow::Cow;

use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::users::FilterArg;
use super::{Dialect, Store, StoreResult, flag};

/// Log types (SPEC §8).
pub mod log_type {
    pub const TOPUP: i64 = 1;
    pub const CONSUME: i64 = 2;
    pub const MANAGE: i64 = 3;
    pub const SYSTEM: i64 = 4;
    pub const ERROR: i64 = 5;
}

/// A log row to insert.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NewLog {
    pub created_at: i64,
    #[serde(rename = "type")]
    pub log_type: i64,
    pub content: String,
    pub user_id: i64,
    pub username: String,
    pub token_id: i64,
    pub token_name: String,
    pub model_name: String,
    pub channel_id: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub quota: i64,
    pub use_time: i64,
    pub is_stream: bool,
    pub ip: String,
    #[serde(rename = "group")]
    pub group: String,
    pub request_id: String,
    /// JSON object text.
    pub other: String,
}

/// A stored log row.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub id: i64,
    pub log: NewLog,
}

/// Filters for log queries; `None` means no filter.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub user_id: Option<i64>,
    pub log_type: Option<i64>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub model_name: Option<String>,
    pub token_name: Option<String>,
    pub token_id: Option<i64>,
    pub username: Option<String>,
    pub channel_id: Option<i64>,
    pub group: Option<String>,
    pub request_id: Option<String>,
}

impl LogFilter {
    fn sql(&self) -> (String, Vec<FilterArg>) {
        let mut w = String::from(" WHERE 1=1");
        let mut a = Vec::new();
        let mut int = |w: &mut String, col: &str, op: &str, v: Option<i64>| {
            if let Some(v) = v {
                w.push_str(&format!(" AND {col} {op} ?"));
                a.push(FilterArg::Int(v));
            }
        };
        int(&mut w, "user_id", "=", self.user_id);
        int(&mut w, "type", "=", self.log_type);
        int(&mut w, "created_at", ">=", self.start);
        int(&mut w, "created_at", "<=", self.end);
        int(&mut w, "token_id", "=", self.token_id);
        int(&mut w, "channel_id", "=", self.channel_id);
        for (col, v) in [
            ("model_name", &self.model_name),
            ("token_name", &self.token_name),
            ("username", &self.username),
            ("group_name", &self.group),
            ("request_id", &self.request_id),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                w.push_str(&format!(" AND {col} = ?"));
                a.push(FilterArg::Text(v.to_string()));
            }
        }
        (w, a)
    }
}

/// Sums over a filter (`/api/log/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStat {
    pub quota: i64,
    pub rpm: i64,
    pub tpm: i64,
}

/// Usage of one model on one day (`/api/data/self`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageBucket {
    pub model_name: String,
    /// Start of the UTC day, Unix seconds.
    pub created_at: i64,
    pub count: i64,
    pub quota: i64,
    pub token_used: i64,
}

const LOG_COLS: &str = "id, created_at, type, content, user_id, username, token_id, token_name, \
    model_name, channel_id, prompt_tokens, completion_tokens, quota, use_time, is_stream, ip, \
    group_name, request_id, other";

fn log_from_row(r: &AnyRow) -> Result<LogRow, sqlx::Error> {
    Ok(LogRow {
        id: r.try_get("id")?,
        log: NewLog {
            created_at: r.try_get("created_at")?,
            log_type: r.try_get("type")?,
            content: r.try_get("content")?,
            user_id: r.try_get("user_id")?,
            username: r.try_get("username")?,
            token_id: r.try_get("token_id")?,
            token_name: r.try_get("token_name")?,
            model_name: r.try_get("model_name")?,
            channel_id: r.try_get("channel_id")?,
            prompt_tokens: r.try_get("prompt_tokens")?,
            completion_tokens: r.try_get("completion_tokens")?,
            quota: r.try_get("quota")?,
            use_time: r.try_get("use_time")?,
            is_stream: flag(r, "is_stream")?,
            ip: r.try_get("ip")?,
            group: r.try_get("group_name")?,
            request_id: r.try_get("request_id")?,
            other: r.try_get("other")?,
        },
    })
}

/// Columns the ledger writes, in the order every writer binds them.
macro_rules! log_insert_cols {
    () => {
        "created_at, type, content, user_id, username, token_id, token_name, model_name, \
         channel_id, prompt_tokens, completion_tokens, quota, use_time, is_stream, ip, \
         group_name, request_id, other"
    };
}

const LOG_INSERT_COLS: &str = log_insert_cols!();

const INSERT_LOG: &str = concat!(
    "INSERT INTO logs (",
    log_insert_cols!(),
    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
);

type LogQuery = sqlx::query::Query<'static, Any, sqlx::any::AnyArguments>;

/// A text value as the ledger stores it: PostgreSQL refuses NUL in text
/// (the whole batch would fail, and be retried forever), so every database
/// gets U+FFFD in its place, and a row reads back the same on all three.
/// An upstream's error message or a pinned call's model name can carry one.
fn text(s: &str) -> Cow<'_, str> {
    if memchr::memchr(0, s.as_bytes()).is_some() {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Binds one row's values in `INSERT_LOG` column order.
fn bind_log(q: LogQuery, l: &NewLog) -> LogQuery {
    let t = |s: &str| text(s).into_owned();
    q.bind(l.created_at)
        .bind(l.log_type)
        .bind(t(&l.content))
        .bind(l.user_id)
        .bind(t(&l.username))
        .bind(l.token_id)
        .bind(t(&l.token_name))
        .bind(t(&l.model_name))
        .bind(l.channel_id)
        .bind(l.prompt_tokens)
        .bind(l.completion_tokens)
        .bind(l.quota)
        .bind(l.use_time)
        .bind(l.is_stream as i64)
        .bind(t(&l.ip))
        .bind(t(&l.group))
        .bind(t(&l.request_id))
        .bind(t(&l.other))
}

/// How a database takes the ledger writer's rows, inside its transaction.
pub trait LedgerRows: sqlx::Database {
    /// Inserts `rows` on `conn`.
    fn insert_rows(
        conn: &mut Self::Connection,
        dialect: Dialect,
        rows: &[&NewLog],
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

/// SQLite, on the ledger writer's rusqlite connection ([`super::SqliteWriter`]),
/// inside its transaction: multi-row INSERTs of [`CHUNKS`] sizes, each
/// statement prepared once per batch and run for every chunk of its size,
/// values bound straight from the rows (SQLite copies each once). Per row,
/// single-row statements cost SQLite ~70 % more: every run opens its cursors
/// and seeks the table's and both indexes' ends again.
pub fn insert_rows_sqlite(conn: &rusqlite::Connection, rows: &[&NewLog]) -> rusqlite::Result<()> {
    let mut rest = rows;
    for n in CHUNKS {
        if rest.len() < n {
            continue;
        }
        let mut st = conn.prepare_cached(chunk_insert_sql(n))?;
        while rest.len() >= n {
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut i = 0;
            let mut bind = |v: &dyn rusqlite::ToSql| {
                i += 1;
                st.raw_bind_parameter(i, v)
            };
            for l in chunk {
                bind(&l.created_at)?;
                bind(&l.log_type)?;
                bind(&text(&l.content))?;
                bind(&l.user_id)?;
                bind(&text(&l.username))?;
                bind(&l.token_id)?;
                bind(&text(&l.token_name))?;
                bind(&text(&l.model_name))?;
                bind(&l.channel_id)?;
                bind(&l.prompt_tokens)?;
                bind(&l.completion_tokens)?;
                bind(&l.quota)?;
                bind(&l.use_time)?;
                bind(&l.is_stream)?;
                bind(&text(&l.ip))?;
                bind(&text(&l.group))?;
                bind(&text(&l.request_id))?;
                bind(&text(&l.other))?;
            }
            st.raw_execute()?;
        }
    }
    Ok(())
}

impl LedgerRows for Any {
    async fn insert_rows(
        conn: &mut Self::Connection,
        dialect: Dialect,
        rows: &[&NewLog],
    ) -> StoreResult<()> {
        insert_in_chunks::<Self>(conn, dialect, rows).await
    }
}

/// PostgreSQL: one `COPY … FROM STDIN` for the whole batch. Its bulk insert
/// writes a batch's rows with fewer WAL records and buffer round trips than
/// an INSERT of the same rows, and has no parameters to parse (a 256-row
/// INSERT has 4608).
impl LedgerRows for sqlx::Postgres {
    async fn insert_rows(
        conn: &mut Self::Connection,
        _dialect: Dialect,
        rows: &[&NewLog],
    ) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(rows.len() * 512);
        for l in rows {
            copy_row(&mut data, l);
        }
        let mut copy = conn
            .copy_in_raw(&format!("COPY logs ({LOG_INSERT_COLS}) FROM STDIN"))
            .await?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort(e.to_string()).await;
            return Err(e.into());
        }
        copy.finish().await?;
        Ok(())
    }
}

/// One row in `COPY`'s text format: tab-separated, newline-terminated, with
/// backslash, tab, newline and carriage return escaped.
fn copy_row(out: &mut Vec<u8>, l: &NewLog) {
    let int = |out: &mut Vec<u8>, v: i64| {
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        out.push(b'\t');
    };
    let txt = |out: &mut Vec<u8>, s: &str| {
        for b in text(s).bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
        out.push(b'\t');
    };
    int(out, l.created_at);
    int(out, l.log_type);
    txt(out, &l.content);
    int(out, l.user_id);
    txt(out, &l.username);
    int(out, l.token_id);
    txt(out, &l.token_name);
    txt(out, &l.model_name);
    int(out, l.channel_id);
    int(out, l.prompt_tokens);
    int(out, l.completion_tokens);
    int(out, l.quota);
    int(out, l.use_time);
    int(out, l.is_stream as i64);
    txt(out, &l.ip);
    txt(out, &l.group);
    txt(out, &l.request_id);
    txt(out, &l.other);
    // The last column's tab becomes the row's end.
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
}

/// Rows per multi-row INSERT. Only these few sizes are used, so each has
/// one prepared statement that is reused: preparing a fresh statement for
/// every batch size cost more than inserting the rows.
const CHUNKS: [usize; 4] = [256, 32, 8, 1];

/// The INSERT of `n` rows (`n` one of [`CHUNKS`]; built once each).
fn chunk_insert_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<[String; CHUNKS.len()]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        CHUNKS.map(|n| {
            let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
            format!(
                "INSERT INTO logs ({LOG_INSERT_COLS}) VALUES {}",
                vec![one; n].join(", ")
            )
        })
    });
    CHUNKS
        .iter()
        .position(|c| *c == n)
        .map_or(INSERT_LOG, |i| all[i].as_str())
}

/// Multi-row INSERTs of [`CHUNKS`] sizes, through `sqlx::Any` (MySQL).
/// Values are bound by reference: each is copied once, into the arguments.
async fn insert_in_chunks<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    rows: &[&NewLog],
) -> StoreResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut rest = rows;
    while !rest.is_empty() {
        let n = CHUNKS.into_iter().find(|c| *c <= rest.len()).unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut q = sqlx::query::<DB>(AssertSqlSafe(dialect.sql(chunk_insert_sql(n))));
        for l in chunk {
            q = q
                .bind(l.created_at)
                .bind(l.log_type)
                .bind(text(&l.content).as_ref())
                .bind(l.user_id)
                .bind(text(&l.username).as_ref())
                .bind(l.token_id)
                .bind(text(&l.token_name).as_ref())
                .bind(text(&l.model_name).as_ref())
                .bind(l.channel_id)
                .bind(l.prompt_tokens)
                .bind(l.completion_tokens)
                .bind(l.quota)
                .bind(l.use_time)
                .bind(l.is_stream as i64)
                .bind(text(&l.ip).as_ref())
                .bind(text(&l.group).as_ref())
                .bind(text(&l.request_id).as_ref())
                .bind(text(&l.other).as_ref());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    fn insert_log_query(&self, l: &NewLog) -> LogQuery {
        bind_log(self.q(INSERT_LOG), l)
    }

    /// Inserts one log row on its own.
    pub async fn insert_log(&self, l: &NewLog) -> StoreResult<()> {
        self.insert_log_query(l).execute(&self.pool).await?;
        Ok(())
    }

    /// Inserts one log row inside a caller's transaction.
    pub async fn insert_log_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        l: &NewLog,
    ) -> StoreResult<()> {
        self.insert_log_query(l).execute(&mut **tx).await?;
        Ok(())
    }

    /// A page of log rows, newest first.
    pub async fn list_logs(
        &self,
        f: &LogFilter,
        offset: i64,
        limit: i64,
    ) -> StoreResult<(Vec<LogRow>, i64)> {
        let (w, args) = f.sql();
        let mut cq = self.q(&format!("SELECT COUNT(*) FROM logs{w}"));
        for a in &args {
            cq = a.bind(cq);
        }
        let total: i64 = cq.fetch_one(&self.pool).await?.try_get(0)?;
        let mut q = self.q(&format!(
            "SELECT {LOG_COLS} FROM logs{w} ORDER BY id DESC LIMIT ? OFFSET ?"
        ));
        for a in &args {
            q = a.bind(q);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        Ok((
            rows.iter()
                .map(log_from_row)
                .collect::<Result<Vec<_>, _>>()?,
            total,
        ))
    }

    /// Quota summed over the filter; requests and tokens in the last 60
    /// seconds (as new-api) over the same filter.
    pub async fn log_stat(&self, f: &LogFilter, now: i64) -> StoreResult<LogStat> {
        let (w, args) = f.sql();
        let mut q = self.q(&format!(
            "SELECT {} FROM logs{w}",
            self.dialect.sum_i64("quota")
        ));
        for a in &args {
            q = a.bind(q);
        }
        let quota: i64 = q.fetch_one(&self.pool).await?.try_get(0)?;
        let mut recent = f.clone();
        recent.start = Some(recent.start.map_or(now - 60, |s| s.max(now - 60)));
        let (w, args) = recent.sql();
        let mut q = self.q(&format!(
            "SELECT COUNT(*), {} FROM logs{w}",
            self.dialect.sum_i64("prompt_tokens + completion_tokens")
        ));
        for a in &args {
            q = a.bind(q);
        }
        let row = q.fetch_one(&self.pool).await?;
        Ok(LogStat {
            quota,
            rpm: row.try_get(0)?,
            tpm: row.try_get(1)?,
        })
    }

    /// Consumption per UTC day and model.
    pub async fn usage_buckets(&self, f: &LogFilter) -> StoreResult<Vec<UsageBucket>> {
        let (w, args) = f.sql();
        let day = self.dialect.int("created_at - (created_at % 86400)");
        let mut q = self.q(&format!(
            "SELECT model_name, {day} AS day, COUNT(*) AS n, {} AS quota, {} AS tokens \
             FROM logs{w} GROUP BY model_name, {day} ORDER BY day, model_name",
            self.dialect.sum_i64("quota"),
            self.dialect.sum_i64("prompt_tokens + completion_tokens"),
        ));
        for a in &args {
            q = a.bind(q);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(UsageBucket {
                    model_name: r.try_get("model_name")?,
                    created_at: r.try_get("day")?,
                    count: r.try_get("n")?,
                    quota: r.try_get("quota")?,
                    token_used: r.try_get("tokens")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Deletes rows older than `before`; returns how many.
    pub async fn purge_logs(&self, before: i64) -> StoreResult<u64> {
        let res = self
            .q("DELETE FROM logs WHERE created_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }
}
