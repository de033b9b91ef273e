//! The ledger writer's own SQLite connection, through rusqlite rather than
//! sqlx.
//!
//! Why a second SQLite library: the ledger inserts every call's row, and
//! through sqlx each row's values were first copied into sqlx's arguments
//! (a `String` per text value) on the writer's task, then handed to sqlx's
//! worker thread, bound, stepped, and the statement's bindings cleared one by
//! one after each run. That was ~22 k instructions a row, of which SQLite's
//! own insert is ~10 k. rusqlite binds the queued rows' `&str`s straight
//! into multi-row statements kept prepared (`store::insert_rows_sqlite`):
//! ~16 k a row in all (docs/performance.md, item 20). Both link the same
//! `libsqlite3-sys`, so it is one SQLite.
//!
//! The connection is used on tokio's blocking threads (a few hand-offs a
//! batch, not one per row), and by the ledger writer alone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{StoreError, StoreResult};

/// The ledger's SQLite connection, opened on first use.
#[derive(Clone)]
pub struct SqliteWriter {
    path: Arc<PathBuf>,
    busy_timeout: Duration,
    conn: Arc<Mutex<Option<rusqlite::Connection>>>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteWriter {
    /// A writer for the database file at `path` (opened lazily: the file is
    /// created and migrated through the request pool first).
    pub(crate) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        SqliteWriter {
            path: Arc::new(path),
            busy_timeout,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` with the connection on a blocking thread, opening it first
    /// if needed; `f` is given the open error instead when that fails, so a
    /// caller that moved data into `f` always gets it back.
    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(rusqlite::Result<&mut rusqlite::Connection>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = this.conn.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.take().map_or_else(|| this.open(), Ok) {
                Ok(mut conn) => {
                    let out = f(Ok(&mut conn));
                    *slot = Some(conn);
                    out
                }
                Err(e) => f(Err(e)),
            }
        })
        .await
        .map_err(|_| StoreError::Db(sqlx::Error::WorkerCrashed))
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&*self.path)?;
        conn.busy_timeout(self.busy_timeout)?;
        // WAL is the database's mode already (the request pool sets it);
        // `synchronous` is per connection: NORMAL is durable across process
        // crashes in WAL mode, as on the request pool.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    }

    /// Closes the connection (checkpointing the WAL if it is the last).
    pub async fn close(&self) {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = conn {
            let _ = tokio::task::spawn_blocking(move || drop(conn)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A connection that cannot open hands the error to the caller's
    /// closure (with what it moved in), and a later run opens it.
    #[tokio::test]
    async fn an_open_failure_reaches_the_closure_and_a_later_run_opens() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("not-yet");
        let w = SqliteWriter::new(sub.join("l.db"), Duration::from_secs(1));
        let data = vec![1, 2, 3];
        let (back, opened) = w.run(move |c| (data, c.is_ok())).await.unwrap();
        assert_eq!((back, opened), (vec![1, 2, 3], false));
        std::fs::create_dir(&sub).unwrap();
        let one: i64 = w
            .run(|c| c.unwrap().query_row("SELECT 1", [], |r| r.get(0)).unwrap())
            .await
            .unwrap();
        assert_eq!(one, 1);
        w.close().await;
    }
}
